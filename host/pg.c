/* pg.c -- libpq connection pool on the event loop; one pool per worker and database.
 *
 * A task's query is packed into one request (pg_types.c), sent on an idle connection or queued
 * (FIFO, bounded, with a deadline) until one frees up or a new one has connected. Connections
 * are driven by libpq's asynchronous API from libevent events: PQconnectPoll while connecting
 * (after evdns resolved a host name: libpq's own lookup would block), then PQsend*, PQflush on
 * writable, PQconsumeInput + PQisBusy/PQgetResult on readable, in single-row mode so that rows
 * are copied into a bounded buffer as they come (a huge result is an error, not an OOM).
 *
 * Wake-ups happen only in event callbacks, each callback wakes at most one task and touches
 * nothing after it (the woken task may release, reuse or free what the callback was using).
 * Work done inside a Lua call (a release handing the connection to the next waiter, a failed
 * connect) never wakes anyone synchronously: a failure is reported on the next loop turn. */
#include "pg.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg_internal.h"

#define POOL_MT "nuvion.pg_pool"

typedef struct pool_handle {
    nv_pg_pool *pool;
} pool_handle;

/* This worker's pools and the resolver they share. */
static struct {
    nv_pg_pool *pools;
    int npools;
    struct evdns_base *dns;
} pgw;

static void conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void pool_conn_ready(nv_pg_pool *p, nv_pg_conn *c);
static void pool_maybe_connect(nv_pg_pool *p);
static nv_pg_req *wait_pop(nv_pg_pool *p);

static void copy_msg(char *dst, size_t cap, const char *src) {
    snprintf(dst, cap, "%s", src != NULL && src[0] ? src : "unknown error");
    size_t n = strlen(dst);
    while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == ' ')) dst[--n] = '\0';
    for (size_t i = 0; i < n; i++) /* libpq's messages span lines: one line for logs */
        if (dst[i] == '\n' || dst[i] == '\t') dst[i] = ' ';
}

static struct timeval ms_tv(int64_t ms) {
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* ---- connections: set-up and teardown ---- */

static nv_pg_conn *conn_new(nv_pg_pool *p) {
    int slot = 0;
    for (int i = 1; i <= p->cfg.max; i++)
        if (p->conns[i] == NULL) { slot = i; break; }
    if (slot == 0) return NULL;
    nv_pg_conn *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    struct event_base *base = nv_rt_get()->base;
    c->pool = p;
    c->slot = slot;
    c->tev = event_new(base, -1, 0, conn_timer_cb, c);
    c->wev = event_new(base, -1, 0, conn_write_cb, c);
    c->rev = event_new(base, -1, 0, conn_read_cb, c);
    if (c->tev == NULL || c->wev == NULL || c->rev == NULL) {
        if (c->tev) event_free(c->tev);
        if (c->wev) event_free(c->wev);
        if (c->rev) event_free(c->rev);
        free(c);
        return NULL;
    }
    p->conns[slot] = c;
    p->nconns++;
    return c;
}

/* Closes the libpq side (socket, events); the struct stays. */
static void conn_close(nv_pg_conn *c) {
    if (c->dns != NULL) {
        struct evdns_getaddrinfo_request *d = c->dns;
        c->dns = NULL;
        evdns_getaddrinfo_cancel(d); /* its callback sees EVUTIL_EAI_CANCEL and returns */
    }
    event_del(c->rev);
    event_del(c->wev);
    event_del(c->tev);
    if (c->pg != NULL) PQfinish(c->pg);
    c->pg = NULL;
    c->busy = 0;
    c->preparing = 0;
}

static void conn_free(nv_pg_conn *c) {
    nv_pg_pool *p = c->pool;
    conn_close(c);
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->tev);
    nv_pg_req_free(c->req);
    nv_buf_free(&c->rows);
    if (c->cache != NULL) {
        for (int i = 0; i < NV_PG_STMT_CACHE_SLOTS; i++) free(c->cache[i].sql);
        free(c->cache);
    }
    nv_assert(p->conns[c->slot] == c);
    p->conns[c->slot] = NULL;
    p->nconns--;
    free(c);
}

static void idle_remove(nv_pg_pool *p, nv_pg_conn *c) {
    for (nv_pg_conn **pp = &p->idle; *pp != NULL; pp = &(*pp)->next_idle) {
        if (*pp == c) {
            *pp = c->next_idle;
            c->next_idle = NULL;
            p->nidle--;
            return;
        }
    }
}

/* ---- connecting ---- */

/* Connecting failed: reported from the timer callback on the next turn, so that no task is
 * woken inside a Lua call that happened to start this connection. */
static void conn_fail(nv_pg_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_fail(nv_pg_conn *c, const char *fmt, ...) {
    nv_pg_pool *p = c->pool;
    char msg[NV_PG_ERROR_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    copy_msg(p->conn_err, sizeof p->conn_err, msg);
    conn_close(c);
    c->state = NV_PG_CONN_FAILED;
    event_active(c->tev, EV_TIMEOUT, 1);
}

static void conn_poll_wait(nv_pg_conn *c, short what) {
    event_del(c->rev);
    event_assign(c->rev, nv_rt_get()->base, PQsocket(c->pg), what, conn_read_cb, c);
    event_add(c->rev, NULL);
}

static void notice_cb(void *arg, const PGresult *res) {
    NV_UNUSED(arg);
    if (nv_log_enabled(NV_LOG_DEBUG))
        nv_logf(NV_LOG_DEBUG, "pg notice: %s", PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
}

/* Starts libpq on the parsed URL, with hostaddr (if any) and our startup options. */
static void conn_connect(nv_pg_conn *c, const char *hostaddr) {
    nv_pg_pool *p = c->pool;
    const char *kw[64], *val[64];
    int n = 0;
    kw[n] = "gssencmode", val[n++] = "disable"; /* GSSAPI probing reads files and may stall */
    kw[n] = "fallback_application_name", val[n++] = "nuvion";
    for (PQconninfoOption *o = p->conninfo; o->keyword != NULL && n < 56; o++) {
        if (o->val == NULL || strcmp(o->keyword, "options") == 0 || strcmp(o->keyword, "client_encoding") == 0)
            continue;
        if (hostaddr != NULL && strcmp(o->keyword, "hostaddr") == 0) continue;
        kw[n] = o->keyword, val[n++] = o->val;
    }
    if (hostaddr != NULL) kw[n] = "hostaddr", val[n++] = hostaddr;
    kw[n] = "options", val[n++] = p->options;
    kw[n] = "client_encoding", val[n++] = "UTF8"; /* Lua strings and JSON are UTF-8 */
    kw[n] = NULL, val[n] = NULL;
    c->pg = PQconnectStartParams(kw, val, 0);
    if (c->pg == NULL) {
        conn_fail(c, "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_fail(c, "%s", PQerrorMessage(c->pg));
        return;
    }
    PQsetNoticeReceiver(c->pg, notice_cb, c);
    c->state = NV_PG_CONN_CONNECTING;
    conn_poll_wait(c, EV_WRITE); /* as libpq asks: first wait as if POLLING_WRITING */
}

static void conn_resolved(int rc, struct evutil_addrinfo *ai, void *arg) {
    nv_pg_conn *c = arg;
    if (rc == EVUTIL_EAI_CANCEL) return; /* the connection is being closed */
    c->dns = NULL;
    if (rc != 0 || ai == NULL) {
        conn_fail(c, "cannot resolve host \"%s\": %s", c->pool->resolve, evutil_gai_strerror(rc));
        return;
    }
    char addr[INET6_ADDRSTRLEN] = "";
    if (ai->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, addr, sizeof addr);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, addr, sizeof addr);
    evutil_freeaddrinfo(ai);
    conn_connect(c, addr);
}

static struct evdns_base *dns_base(void) {
    if (pgw.dns != NULL) return pgw.dns;
    pgw.dns = evdns_base_new(nv_rt_get()->base,
                             EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    return pgw.dns;
}

/* A new connection for the pool: resolve the host if it must be, then connect. */
static void conn_start(nv_pg_pool *p) {
    nv_pg_conn *c = conn_new(p);
    if (c == NULL) return;
    p->nconnecting++;
    struct timeval tv = ms_tv(p->cfg.connect_timeout_ms);
    event_add(c->tev, &tv);
    if (p->resolve == NULL) {
        conn_connect(c, p->hostaddr);
        return;
    }
    struct evdns_base *dns = dns_base();
    if (dns == NULL) {
        conn_fail(c, "cannot start the DNS resolver");
        return;
    }
    struct evutil_addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->state = NV_PG_CONN_RESOLVING;
    /* The callback may run before this returns (a name in /etc/hosts): it sets c->dns NULL. */
    struct evdns_getaddrinfo_request *d = evdns_getaddrinfo(dns, p->resolve, NULL, &hints, conn_resolved, c);
    if (c->state == NV_PG_CONN_RESOLVING) c->dns = d;
}

static void conn_connected(nv_pg_conn *c) {
    nv_pg_pool *p = c->pool;
    event_del(c->tev);
    p->nconnecting--;
    if (PQsetnonblocking(c->pg, 1) != 0) {
        p->nconnecting++;
        conn_fail(c, "cannot make the connection non-blocking");
        return;
    }
    event_del(c->rev);
    event_assign(c->rev, nv_rt_get()->base, PQsocket(c->pg), EV_READ | EV_PERSIST, conn_read_cb, c);
    event_add(c->rev, NULL);
    pool_conn_ready(p, c);
}

static void conn_poll(nv_pg_conn *c) {
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING: conn_poll_wait(c, EV_READ); return;
    case PGRES_POLLING_WRITING: conn_poll_wait(c, EV_WRITE); return;
    case PGRES_POLLING_OK: conn_connected(c); return;
    default: conn_fail(c, "%s", PQerrorMessage(c->pg)); return;
    }
}

/* ---- the statement cache (prepared statements per connection) ---- */

static uint64_t sql_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

/* The slot holding sql, or the empty slot where it would go. NULL: no cache. */
static nv_pg_cached *cache_slot(nv_pg_conn *c, const char *sql, size_t len, uint64_t h) {
    if (c->cache == NULL) {
        c->cache = calloc(NV_PG_STMT_CACHE_SLOTS, sizeof *c->cache);
        if (c->cache == NULL) return NULL;
    }
    for (uint32_t i = 0; i < NV_PG_STMT_CACHE_SLOTS; i++) {
        nv_pg_cached *e = &c->cache[(h + i) & (NV_PG_STMT_CACHE_SLOTS - 1)];
        if (e->sql == NULL) return e;
        if (e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0) return e;
    }
    return NULL;
}

static void cache_clear(nv_pg_conn *c) {
    if (c->cache == NULL) return;
    for (int i = 0; i < NV_PG_STMT_CACHE_SLOTS; i++) free(c->cache[i].sql);
    memset(c->cache, 0, NV_PG_STMT_CACHE_SLOTS * sizeof *c->cache);
    c->cache_len = 0;
}

static void stmt_name(char *out, size_t cap, uint32_t id) { snprintf(out, cap, "nv_%u", id); }

/* ---- sending ---- */

static int conn_flush(nv_pg_conn *c) {
    int rc = PQflush(c->pg);
    if (rc < 0) return NV_ERR;
    if (rc > 0) {
        event_assign(c->wev, nv_rt_get()->base, PQsocket(c->pg), EV_WRITE, conn_write_cb, c);
        event_add(c->wev, NULL);
    }
    return NV_OK;
}

static int send_params(nv_pg_conn *c, const nv_pg_stmt *s) {
    return PQsendQueryParams(c->pg, s->sql, s->nparams, s->types, s->values, s->lengths, s->formats, 0);
}

/* One statement, through the cache when it may: a known one runs by name; a new one is
 * prepared first (one more round trip, once per connection), then run (conn_on_null). */
static int send_one(nv_pg_conn *c, nv_pg_req *r) {
    nv_pg_stmt *s = &r->stmts[0];
    char name[32];
    c->exec_id = 0;
    if (c->pool->cfg.prepare && !s->typed) {
        size_t len = strlen(s->sql);
        uint64_t h = sql_hash(s->sql, len);
        nv_pg_cached *e = cache_slot(c, s->sql, len, h);
        if (e != NULL && e->sql != NULL) {
            stmt_name(name, sizeof name, e->id);
            c->exec_id = e->id;
            if (!PQsendQueryPrepared(c->pg, name, s->nparams, s->values, s->lengths, s->formats, 0)) return 0;
            PQsetSingleRowMode(c->pg);
            return 1;
        }
        if (e != NULL && c->cache_len < NV_PG_STMT_CACHE_MAX) {
            c->prep_id = ++c->cache_seq;
            stmt_name(name, sizeof name, c->prep_id);
            c->preparing = 1;
            return PQsendPrepare(c->pg, name, s->sql, s->nparams, NULL);
        }
    }
    if (!send_params(c, s)) return 0;
    PQsetSingleRowMode(c->pg);
    return 1;
}

/* The cached name of statement i of a pipeline, or a new one it is prepared under here (its
 * Parse goes first, in the same round trip; it is cached once the server accepted it). 0: run
 * it unnamed (no cache, a typed statement, a full cache, or the same text already being
 * prepared by an earlier statement of this request). */
static uint32_t pipeline_name(nv_pg_conn *c, nv_pg_req *r, int i, int *fresh) {
    nv_pg_stmt *s = &r->stmts[i];
    *fresh = 0;
    if (!c->pool->cfg.prepare || s->typed) return 0;
    size_t len = strlen(s->sql);
    nv_pg_cached *e = cache_slot(c, s->sql, len, sql_hash(s->sql, len));
    if (e == NULL) return 0;
    if (e->sql != NULL) return e->id;
    int pending = 0;
    for (int j = 0; j < i; j++) {
        if (r->outs[j].prep_id == 0) continue;
        pending++;
        if (strcmp(r->stmts[j].sql, s->sql) == 0) return 0;
    }
    if (c->cache_len + pending >= NV_PG_STMT_CACHE_MAX) return 0;
    *fresh = 1;
    return ++c->cache_seq;
}

static int send_pipeline(nv_pg_conn *c, nv_pg_req *r) {
    if (!PQenterPipelineMode(c->pg)) return 0;
    for (int i = 0; i < r->nstmts; i++) {
        nv_pg_stmt *s = &r->stmts[i];
        nv_pg_out *o = &r->outs[i];
        int fresh;
        uint32_t id = pipeline_name(c, r, i, &fresh);
        if (id == 0) {
            if (!send_params(c, s)) return 0;
        } else {
            char name[32];
            stmt_name(name, sizeof name, id);
            if (fresh) {
                if (!PQsendPrepare(c->pg, name, s->sql, s->nparams, NULL)) return 0;
                o->prep_id = id, o->prep_wait = 1;
            }
            if (!PQsendQueryPrepared(c->pg, name, s->nparams, s->values, s->lengths, s->formats, 0)) return 0;
            o->named = 1;
        }
        if ((r->flags & NV_PG_REQ_SYNC_EACH) || i == r->nstmts - 1) {
            if (!PQpipelineSync(c->pg)) return 0;
            r->syncs_sent++;
        }
    }
    PQsetSingleRowMode(c->pg);
    return 1;
}

/* The Parse of statement o (prepared in its pipeline) ended: a name the server accepted goes
 * into the cache (a slot taken meanwhile, or a full cache: it stays unused on the server). */
static void pipeline_prepared(nv_pg_conn *c, nv_pg_stmt *s, nv_pg_out *o) {
    o->prep_wait = 0;
    if (!o->prep_ok) return;
    size_t len = strlen(s->sql);
    uint64_t h = sql_hash(s->sql, len);
    nv_pg_cached *e = cache_slot(c, s->sql, len, h);
    if (e == NULL || e->sql != NULL || c->cache_len >= NV_PG_STMT_CACHE_MAX) return;
    char *copy = malloc(len + 1);
    if (copy == NULL) return;
    memcpy(copy, s->sql, len + 1);
    e->sql = copy, e->len = len, e->hash = h, e->id = o->prep_id;
    c->cache_len++;
}

/* Starts r on c (leased). NV_ERR: the connection is unusable (its message is in r). */
static int conn_send(nv_pg_conn *c, nv_pg_req *r) {
    nv_assert(c->state == NV_PG_CONN_LEASED && !c->busy && c->req == NULL);
    c->req = r;
    c->busy = 1;
    c->rows.len = 0;
    int ok = (r->flags & NV_PG_REQ_PIPELINE) ? send_pipeline(c, r) : send_one(c, r);
    if (!ok || conn_flush(c) != NV_OK) {
        copy_msg(r->fail_msg, sizeof r->fail_msg, PQerrorMessage(c->pg));
        c->req = NULL;
        c->busy = 0;
        return NV_ERR;
    }
    struct timeval tv = ms_tv(r->timeout_ms);
    event_add(c->tev, &tv);
    return NV_OK;
}

/* ---- receiving ---- */

static void wake_with_lease(nv_pg_conn *c) {
    if (c->req->done != NULL) {
        c->req->done(c->req->done_arg, c, c->req);
        return;
    }
    nv_task *t = c->req->task;
    lua_pushinteger(t->co, c->slot);
    lua_pushnumber(t->co, (lua_Number)c->lease);
    nv_task_wake(t, 2);
}

/* The connection died under its request: the task gets "connection_lost" (with the server's
 * SQLSTATE when it said why, e.g. 57P01 for pg_terminate_backend). Wakes the task. */
static void conn_lost_as(nv_pg_conn *c, const char *why, nv_pg_fail fail) {
    nv_pg_req *r = c->req;
    r->fail = fail;
    for (int i = r->nstmts - 1; i >= 0 && r->fail_code[0] == '\0'; i--) {
        const char *code = r->outs[i].res ? PQresultErrorField(r->outs[i].res, PG_DIAG_SQLSTATE) : NULL;
        const char *msg = r->outs[i].res ? PQresultErrorField(r->outs[i].res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        if (code != NULL && msg != NULL) {
            snprintf(r->fail_code, sizeof r->fail_code, "%s", code);
            why = msg;
        }
    }
    copy_msg(r->fail_msg, sizeof r->fail_msg, why);
    nv_logf(NV_LOG_WARN, "pg: connection %d to %s lost: %s", c->slot, c->pool->desc, r->fail_msg);
    conn_close(c);
    c->state = NV_PG_CONN_DEAD;
    wake_with_lease(c);
}

static void conn_lost(nv_pg_conn *c, const char *why) { conn_lost_as(c, why, NV_PG_FAIL_LOST); }

/* r failed before it reached a connection: its task gets 0, failure; a C caller its done. */
static void req_fail(nv_pg_req *r, nv_pg_fail f) {
    if (r->done != NULL) {
        r->fail = f;
        r->done(r->done_arg, NULL, r);
        return;
    }
    nv_task *t = r->task;
    nv_pg_req_free(r);
    lua_pushinteger(t->co, 0);
    lua_pushinteger(t->co, f);
    nv_task_wake(t, 2);
}

static void conn_done(nv_pg_conn *c) {
    nv_pg_req *r = c->req;
    event_del(c->tev);
    c->busy = 0;
    if ((r->flags & NV_PG_REQ_PIPELINE) && !PQexitPipelineMode(c->pg)) c->broken = 1;
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pg));
        return;
    }
    /* A cached plan that no longer fits (DDL) or a statement someone deallocated: forget it. */
    for (int i = 0; i < r->nstmts; i++) {
        int named = (r->flags & NV_PG_REQ_PIPELINE) ? r->outs[i].named : c->exec_id != 0;
        const char *code = r->outs[i].res ? PQresultErrorField(r->outs[i].res, PG_DIAG_SQLSTATE) : NULL;
        if (named && code != NULL && (strcmp(code, "0A000") == 0 || strcmp(code, "26000") == 0)) {
            cache_clear(c);
            break;
        }
    }
    wake_with_lease(c);
}

/* Copies the rows of res into c->rows, within the request's bounds. */
static void conn_add_rows(nv_pg_conn *c, nv_pg_out *o, const PGresult *res) {
    nv_pg_req *r = c->req;
    nv_pg_cfg *cfg = &c->pool->cfg;
    int n = PQntuples(res), nf = PQnfields(res);
    if (o->fail != NV_PG_FAIL_NONE) return;
    if (o->nrows == 0) o->rows_off = c->rows.len, o->nfields = nf;
    for (int i = 0; i < n; i++) {
        size_t need = 0;
        for (int f = 0; f < nf; f++) need += 5 + (size_t)PQgetlength(res, i, f);
        if (r->rows_total + 1 > cfg->rows_max || r->bytes_total + need > (size_t)cfg->bytes_max ||
            nv_buf_reserve(&c->rows, need, (size_t)cfg->bytes_max + 1024) != NV_OK) {
            o->fail = NV_PG_FAIL_TOO_LARGE; /* the rest of the result is read and dropped */
            return;
        }
        for (int f = 0; f < nf; f++) {
            int32_t len = PQgetisnull(res, i, f) ? -1 : PQgetlength(res, i, f);
            memcpy(c->rows.data + c->rows.len, &len, 4);
            c->rows.len += 4;
            if (len < 0) continue;
            memcpy(c->rows.data + c->rows.len, PQgetvalue(res, i, f), (size_t)len);
            c->rows.len += (size_t)len;
            c->rows.data[c->rows.len++] = '\0';
        }
        o->nrows++;
        r->rows_total++;
        r->bytes_total += need;
    }
}

/* The end of one statement's results. Returns 1 when the request is complete. */
static int conn_on_null(nv_pg_conn *c) {
    nv_pg_req *r = c->req;
    if (c->preparing) {
        c->preparing = 0;
        if (r->outs[0].res != NULL) return 1; /* the prepare failed: that is the statement's error */
        nv_pg_stmt *s = &r->stmts[0];
        size_t len = strlen(s->sql);
        uint64_t h = sql_hash(s->sql, len);
        nv_pg_cached *e = cache_slot(c, s->sql, len, h);
        char *copy = malloc(len + 1);
        if (e != NULL && e->sql == NULL && copy != NULL) {
            memcpy(copy, s->sql, len + 1);
            e->sql = copy, e->len = len, e->hash = h, e->id = c->prep_id;
            c->cache_len++;
        } else {
            free(copy);
        }
        char name[32];
        stmt_name(name, sizeof name, c->prep_id);
        c->exec_id = c->prep_id;
        if (!PQsendQueryPrepared(c->pg, name, s->nparams, s->values, s->lengths, s->formats, 0) ||
            conn_flush(c) != NV_OK)
            return -1;
        PQsetSingleRowMode(c->pg);
        return 0;
    }
    if (!(r->flags & NV_PG_REQ_PIPELINE)) return 1;
    if (r->cur < r->nstmts && r->outs[r->cur].prep_wait) {
        pipeline_prepared(c, &r->stmts[r->cur], &r->outs[r->cur]);
        PQsetSingleRowMode(c->pg);
        return 0;
    }
    if (r->cur_open) r->cur++, r->cur_open = 0;
    PQsetSingleRowMode(c->pg);
    return 0;
}

/* One result. Returns 1 when the request is complete, 0 to go on, -1 when the connection
 * cannot go on (COPY). */
static int conn_on_result(nv_pg_conn *c, PGresult *res) {
    nv_pg_req *r = c->req;
    if (res == NULL) return conn_on_null(c);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_PIPELINE_SYNC) {
        PQclear(res);
        r->syncs_seen++;
        if (r->cur_open) r->cur++, r->cur_open = 0;
        if (r->syncs_seen == r->syncs_sent) return 1;
        PQsetSingleRowMode(c->pg);
        return 0;
    }
    if (r->cur >= r->nstmts) { /* more results than statements: libpq broke its contract */
        PQclear(res);
        return -1;
    }
    nv_pg_out *o = &r->outs[r->cur];
    if (o->prep_wait) { /* the result of its Parse: an error is the statement's error */
        if (st == PGRES_COMMAND_OK) o->prep_ok = 1;
        if (st == PGRES_FATAL_ERROR && o->res == NULL) {
            o->res = res;
            return 0;
        }
        PQclear(res);
        return 0;
    }
    /* after a failed Parse its execution is only "aborted": keep the Parse's error */
    if (st == PGRES_PIPELINE_ABORTED && o->res != NULL && PQresultStatus(o->res) == PGRES_FATAL_ERROR) {
        r->cur_open = 1;
        PQclear(res);
        return 0;
    }
    r->cur_open = 1;
    if (c->preparing && st == PGRES_COMMAND_OK) {
        PQclear(res);
        return 0;
    }
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
        o->fail = NV_PG_FAIL_UNSUPPORTED;
        PQclear(res);
        return -1;
    }
    if (st == PGRES_SINGLE_TUPLE || (st == PGRES_TUPLES_OK && PQntuples(res) > 0)) conn_add_rows(c, o, res);
    if (st == PGRES_SINGLE_TUPLE) {
        PQclear(res);
        return 0;
    }
    if (st == PGRES_FATAL_ERROR) o->nrows = 0;
    PQclear(o->res);
    o->res = res;
    return 0;
}

/* SSL may hold decrypted bytes the socket will not signal again: look again next turn. */
static void conn_recheck_ssl(nv_pg_conn *c) {
    if (!PQsslInUse(c->pg)) return;
    SSL *ssl = PQsslStruct(c->pg, "OpenSSL");
    if (ssl != NULL && SSL_pending(ssl) > 0) event_active(c->rev, EV_READ, 0);
}

/* Reads what has come for the request in flight; wakes its task when it is complete. */
static void conn_drain(nv_pg_conn *c) {
    for (int i = 0; i < NV_PG_ROWS_PER_TURN; i++) {
        if (PQisBusy(c->pg)) {
            if (PQstatus(c->pg) == CONNECTION_BAD) conn_lost(c, PQerrorMessage(c->pg));
            else conn_recheck_ssl(c);
            return;
        }
        int rc = conn_on_result(c, PQgetResult(c->pg));
        if (rc > 0) {
            conn_done(c);
            return;
        }
        if (rc < 0) { /* COPY (or a protocol surprise): the connection cannot be reused */
            nv_pg_req *r = c->req;
            int copy = r->cur < r->nstmts && r->outs[r->cur].fail == NV_PG_FAIL_UNSUPPORTED;
            conn_lost_as(c, copy ? "COPY is not supported" : PQerrorMessage(c->pg),
                         copy ? NV_PG_FAIL_UNSUPPORTED : NV_PG_FAIL_LOST);
            return;
        }
    }
    event_active(c->rev, EV_READ, 0); /* more to read: after the loop's other events */
}

/* An idle connection (or one a transaction holds between queries) became readable: a notice,
 * a notification, or the server closing it. */
static void conn_check_idle(nv_pg_conn *c) {
    nv_pg_pool *p = c->pool;
    int ok = PQconsumeInput(c->pg);
    PGnotify *n;
    while ((n = PQnotifies(c->pg)) != NULL) PQfreemem(n);
    if (ok && PQstatus(c->pg) != CONNECTION_BAD) return;
    nv_logf(NV_LOG_INFO, "pg: idle connection %d to %s closed by the server", c->slot, p->desc);
    if (c->state == NV_PG_CONN_IDLE) {
        idle_remove(p, c);
        conn_free(c);
        pool_maybe_connect(p);
        return;
    }
    conn_close(c);
    c->state = NV_PG_CONN_DEAD; /* its transaction learns it at its next query */
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_pg_conn *c = arg;
    if (c->state == NV_PG_CONN_CONNECTING) {
        conn_poll(c);
        return;
    }
    if (c->pg == NULL) return;
    if (!c->busy) {
        conn_check_idle(c);
        return;
    }
    if (!PQconsumeInput(c->pg)) {
        conn_lost(c, PQerrorMessage(c->pg));
        return;
    }
    conn_drain(c);
}

static void conn_write_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_pg_conn *c = arg;
    if (c->pg == NULL || !c->busy) return;
    if (conn_flush(c) != NV_OK) conn_lost(c, PQerrorMessage(c->pg));
}

/* Connect timeout, query timeout, or a connect failure reported a turn later. */
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_pg_conn *c = arg;
    nv_pg_pool *p = c->pool;
    if (c->state == NV_PG_CONN_RESOLVING || c->state == NV_PG_CONN_CONNECTING) {
        conn_fail(c, "no connection within %lld ms", (long long)p->cfg.connect_timeout_ms);
        return;
    }
    if (c->state == NV_PG_CONN_FAILED) {
        nv_logf(NV_LOG_WARN, "pg: cannot connect to %s: %s", p->desc, p->conn_err);
        p->nconnecting--;
        conn_free(c);
        nv_pg_req *r = wait_pop(p); /* first: the others may get a new connection, not this one */
        pool_maybe_connect(p);
        if (r == NULL) return;
        req_fail(r, NV_PG_FAIL_CONNECT);
        return;
    }
    if (c->busy) {
        c->req->fail = NV_PG_FAIL_TIMEOUT;
        nv_logf(NV_LOG_WARN, "pg: no answer on connection %d to %s within %lld ms: closing it", c->slot,
                p->desc, (long long)c->req->timeout_ms);
        conn_close(c);
        c->state = NV_PG_CONN_DEAD;
        wake_with_lease(c);
    }
}

/* ---- the pool: waiters, hand-off, release ---- */

static void wait_arm(nv_pg_pool *p) {
    if (p->wait_head == NULL) {
        event_del(p->wait_ev);
        return;
    }
    uint64_t now = nv_rt_now_us(), at = p->wait_head->deadline_us;
    int64_t ms = at > now ? (int64_t)((at - now + 999) / 1000) : 0;
    struct timeval tv = ms_tv(ms);
    event_add(p->wait_ev, &tv);
}

static nv_pg_req *wait_pop(nv_pg_pool *p) {
    nv_pg_req *r = p->wait_head;
    if (r == NULL) return NULL;
    p->wait_head = r->next;
    if (p->wait_head == NULL) p->wait_tail = NULL;
    r->next = NULL;
    p->nwait--;
    wait_arm(p);
    return r;
}

static void wait_push(nv_pg_pool *p, nv_pg_req *r, int at_head) {
    if (at_head) {
        r->next = p->wait_head;
        p->wait_head = r;
        if (p->wait_tail == NULL) p->wait_tail = r;
    } else {
        r->next = NULL;
        if (p->wait_tail != NULL) p->wait_tail->next = r;
        else p->wait_head = r;
        p->wait_tail = r;
    }
    p->nwait++;
    if (p->wait_head == r) wait_arm(p);
}

/* The first waiter's deadline passed: it gets "pool_timeout". */
static void wait_timer_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_pg_pool *p = arg;
    nv_pg_req *r = p->wait_head;
    if (r == NULL) return;
    if (r->deadline_us > nv_rt_now_us()) {
        wait_arm(p);
        return;
    }
    wait_pop(p);
    req_fail(r, NV_PG_FAIL_POOL_TIMEOUT);
}

/* Opens connections while waiters outnumber the ones being opened, up to max. */
static void pool_maybe_connect(nv_pg_pool *p) {
    for (int i = 0; i < NV_PG_POOL_SIZE_MAX && p->nwait > p->nconnecting && p->nconns < p->cfg.max; i++) {
        int before = p->nconns;
        conn_start(p);
        if (p->nconns == before) return; /* out of memory: the waiters time out */
    }
}

static void conn_lease(nv_pg_pool *p, nv_pg_conn *c) {
    c->state = NV_PG_CONN_LEASED;
    c->lease = ++p->lease_seq;
}

/* c is usable and nobody holds it: the first waiter gets it, else it goes idle. Never wakes
 * a task: the waiter's request is sent, and it wakes when its results are in. */
static void pool_conn_ready(nv_pg_pool *p, nv_pg_conn *c) {
    nv_pg_req *r;
    while ((r = wait_pop(p)) != NULL) {
        conn_lease(p, c);
        if (conn_send(c, r) == NV_OK) return;
        /* The connection died between two uses: the request goes back first in line. */
        wait_push(p, r, 1);
        conn_free(c);
        pool_maybe_connect(p);
        return;
    }
    c->state = NV_PG_CONN_IDLE;
    c->lease = 0;
    c->next_idle = p->idle;
    p->idle = c;
    p->nidle++;
}

/* The task is done with c. A connection left inside a transaction (a query ran BEGIN) or
 * marked broken is closed rather than handed to someone else. */
static void pool_release(nv_pg_pool *p, nv_pg_conn *c) {
    nv_assert(c->state == NV_PG_CONN_LEASED || c->state == NV_PG_CONN_DEAD);
    nv_pg_req_free(c->req);
    c->req = NULL;
    c->rows.len = 0;
    nv_buf_shrink(&c->rows, 1024 * 1024); /* a result that grew it past 1 MiB does not stay */
    if (c->state == NV_PG_CONN_LEASED && (c->broken || PQtransactionStatus(c->pg) != PQTRANS_IDLE)) {
        nv_logf(NV_LOG_WARN, "pg: connection %d to %s released %s: closing it", c->slot, p->desc,
                c->broken ? "after a pipeline error" : "inside a transaction");
        c->state = NV_PG_CONN_DEAD;
    }
    if (c->state == NV_PG_CONN_DEAD) {
        conn_free(c);
        pool_maybe_connect(p);
        return;
    }
    pool_conn_ready(p, c);
}

static void pool_destroy(nv_pg_pool *p) {
    for (nv_pg_pool **pp = &pgw.pools; *pp != NULL; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    pgw.npools--;
    for (int i = 1; i <= NV_PG_POOL_SIZE_MAX; i++)
        if (p->conns[i] != NULL) conn_free(p->conns[i]);
    nv_pg_req *r;
    while ((r = p->wait_head) != NULL) { /* only at exit: a waiting task holds a handle */
        p->wait_head = r->next;
        nv_pg_req_free(r);
    }
    event_free(p->wait_ev);
    PQconninfoFree(p->conninfo);
    free(p->hostaddr);
    free(p->resolve);
    free(p->options);
    free(p->key);
    free(p);
    if (pgw.npools == 0) {
        if (pgw.dns != NULL) evdns_base_free(pgw.dns, 0), pgw.dns = NULL;
        nv_pg_types_release();
    }
}

/* ---- pools: creation from a URL ---- */

static const char *conninfo_get(PQconninfoOption *o, const char *kw) {
    for (; o->keyword != NULL; o++)
        if (strcmp(o->keyword, kw) == 0) return o->val;
    return NULL;
}

static int is_ip_literal(const char *h) {
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* How libpq will reach the host(s): hostaddr given, literals, unix sockets and "localhost"
 * need no lookup (localhost is 127.0.0.1); a single other name is resolved with evdns. Several
 * hosts with names would need several lookups: refused, with the way out in the message. */
static int pool_plan_hosts(lua_State *L, nv_pg_pool *p) {
    const char *host = conninfo_get(p->conninfo, "host");
    if (conninfo_get(p->conninfo, "hostaddr") != NULL) return NV_OK;
    if (host == NULL || host[0] == '\0') host = getenv("PGHOST"); /* libpq would use it */
    if (host == NULL || host[0] == '\0') return NV_OK;            /* the default unix socket */
    if (strchr(host, ',') == NULL) {
        if (host[0] == '/' || host[0] == '@' || is_ip_literal(host)) return NV_OK;
        if (strcmp(host, "localhost") == 0) {
            p->hostaddr = strdup("127.0.0.1");
            return p->hostaddr != NULL ? NV_OK : NV_ERR;
        }
        if (strlen(host) > 253) return luaL_error(L, "pg.pool: host name too long");
        p->resolve = strdup(host);
        return p->resolve != NULL ? NV_OK : NV_ERR;
    }
    char addrs[1024] = "", one[256];
    const char *s = host;
    while (*s) {
        size_t n = strcspn(s, ",");
        if (n >= sizeof one) return luaL_error(L, "pg.pool: host name too long");
        memcpy(one, s, n), one[n] = '\0';
        const char *a = strcmp(one, "localhost") == 0 ? "127.0.0.1" : (one[0] == '/' ? "" : one);
        if (a[0] != '\0' && !is_ip_literal(a))
            return luaL_error(L, "pg.pool: several hosts in the URL and \"%s\" is a name: give addresses "
                                 "(hostaddr=) so that no lookup blocks", one);
        if (strlen(addrs) + strlen(a) + 2 >= sizeof addrs) return luaL_error(L, "pg.pool: too many hosts");
        if (s != host) strcat(addrs, ",");
        strcat(addrs, a);
        s += n + (s[n] == ',');
    }
    p->hostaddr = strdup(addrs);
    return p->hostaddr != NULL ? NV_OK : NV_ERR;
}

/* Startup options: UTC by default (the URL may say otherwise), then what the conversions rely
 * on (ISO dates, hex bytea) and the pool's statement timeout. */
static int pool_plan_options(nv_pg_pool *p) {
    const char *url_opts = conninfo_get(p->conninfo, "options");
    char st[64] = "";
    if (p->cfg.statement_timeout_ms > 0)
        snprintf(st, sizeof st, " -c statement_timeout=%lld", (long long)p->cfg.statement_timeout_ms);
    size_t n = (url_opts ? strlen(url_opts) : 0) + 128;
    p->options = malloc(n);
    if (p->options == NULL) return NV_ERR;
    snprintf(p->options, n, "-c TimeZone=UTC %s -c DateStyle=ISO,MDY -c bytea_output=hex%s",
             url_opts ? url_opts : "", st);
    return NV_OK;
}

static void pool_describe(nv_pg_pool *p) {
    const char *host = conninfo_get(p->conninfo, "host");
    const char *port = conninfo_get(p->conninfo, "port");
    const char *db = conninfo_get(p->conninfo, "dbname");
    if (host == NULL) host = conninfo_get(p->conninfo, "hostaddr");
    snprintf(p->desc, sizeof p->desc, "%.100s:%.20s/%.100s", host ? host : "(socket)", port ? port : "5432",
             db ? db : "");
}

static int64_t opt_int(lua_State *L, int t, const char *k, int64_t def, int64_t lo, int64_t hi) {
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    lua_Number v = lua_tonumber(L, -1);
    if (!lua_isnumber(L, -1) || v != (lua_Number)(int64_t)v || v < (lua_Number)lo || v > (lua_Number)hi)
        luaL_error(L, "pg.pool: opts.%s must be an integer from %lld to %lld", k, (long long)lo, (long long)hi);
    lua_pop(L, 1);
    return (int64_t)v;
}

/* Reads opts (raises on a bad one, before anything is allocated); connect_timeout_ms -1: not
 * given, the URL's connect_timeout (seconds) or the default applies (pool_url_timeout). */
static void pool_read_cfg(lua_State *L, int t, nv_pg_cfg *c) {
    int64_t ct = -1;
    c->max = (int)opt_int(L, t, "max", NV_PG_POOL_SIZE_DEFAULT, NV_PG_POOL_SIZE_MIN, NV_PG_POOL_SIZE_MAX);
    c->queue_max = (int)opt_int(L, t, "queue", NV_PG_QUEUE_DEFAULT, NV_PG_QUEUE_MIN, NV_PG_QUEUE_MAX);
    c->pool_timeout_ms = opt_int(L, t, "pool_timeout_ms", NV_PG_POOL_TIMEOUT_MS_DEFAULT,
                                 NV_PG_POOL_TIMEOUT_MS_MIN, NV_PG_POOL_TIMEOUT_MS_MAX);
    c->connect_timeout_ms = opt_int(L, t, "connect_timeout_ms", ct, NV_PG_CONNECT_TIMEOUT_MS_MIN,
                                    NV_PG_CONNECT_TIMEOUT_MS_MAX);
    c->query_timeout_ms = opt_int(L, t, "query_timeout_ms", NV_PG_QUERY_TIMEOUT_MS_DEFAULT,
                                  NV_PG_QUERY_TIMEOUT_MS_MIN, NV_PG_QUERY_TIMEOUT_MS_MAX);
    c->statement_timeout_ms = opt_int(L, t, "statement_timeout_ms", NV_PG_STATEMENT_TIMEOUT_MS_DEFAULT, 0,
                                      NV_PG_STATEMENT_TIMEOUT_MS_MAX);
    c->rows_max = opt_int(L, t, "rows_max", NV_PG_RESULT_ROWS_DEFAULT, NV_PG_RESULT_ROWS_MIN, NV_PG_RESULT_ROWS_MAX);
    c->bytes_max = opt_int(L, t, "bytes_max", NV_PG_RESULT_BYTES_DEFAULT, NV_PG_RESULT_BYTES_MIN,
                           NV_PG_RESULT_BYTES_MAX);
    lua_getfield(L, t, "prepare");
    c->prepare = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
    lua_pop(L, 1);
}

static void pool_url_timeout(nv_pg_cfg *c, PQconninfoOption *ci) {
    if (c->connect_timeout_ms >= 0) return;
    const char *url_ct = conninfo_get(ci, "connect_timeout");
    int64_t s = url_ct != NULL ? atoll(url_ct) : 0;
    c->connect_timeout_ms = NV_PG_CONNECT_TIMEOUT_MS_DEFAULT;
    if (s > 0) c->connect_timeout_ms = s * 1000 < NV_PG_CONNECT_TIMEOUT_MS_MAX ? s * 1000 : NV_PG_CONNECT_TIMEOUT_MS_MAX;
}

/* pool(key, url, opts) -> handle. The same key in this worker (any generation) shares the pool. */
static int l_pool(lua_State *L) {
    size_t key_len;
    const char *key = luaL_checklstring(L, 1, &key_len);
    const char *url = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    nv_pg_pool *p = pgw.pools;
    while (p != NULL && strcmp(p->key, key) != 0) p = p->next;
    pool_handle *h = lua_newuserdata(L, sizeof *h);
    h->pool = NULL;
    luaL_getmetatable(L, POOL_MT);
    lua_setmetatable(L, -2);
    if (p == NULL) {
        if (pgw.npools >= NV_PG_POOLS_MAX)
            return luaL_error(L, "pg.pool: %d pools in this worker already (URL + options)", NV_PG_POOLS_MAX);
        nv_pg_cfg cfg;
        pool_read_cfg(L, 3, &cfg);
        char *perr = NULL;
        PQconninfoOption *ci = PQconninfoParse(url, &perr);
        if (perr != NULL) PQfreemem(perr); /* its text may quote the URL, password included */
        if (ci == NULL) return luaL_error(L, "pg.pool: cannot parse the database URL (not shown: it may hold a password)");
        pool_url_timeout(&cfg, ci);
        p = calloc(1, sizeof *p);
        if (p == NULL) {
            PQconninfoFree(ci);
            return luaL_error(L, "pg.pool: out of memory");
        }
        p->conninfo = ci;
        p->cfg = cfg;
        p->next = pgw.pools, pgw.pools = p, pgw.npools++;
        p->refs = 1;
        h->pool = p; /* from here a raise frees it through __gc */
        p->key = strdup(key);
        p->wait_ev = event_new(nv_rt_get()->base, -1, 0, wait_timer_cb, p);
        pool_describe(p);
        if (p->key == NULL || p->wait_ev == NULL || pool_plan_options(p) != NV_OK || pool_plan_hosts(L, p) != NV_OK)
            return luaL_error(L, "pg.pool: out of memory");
        return 1;
    }
    p->refs++;
    h->pool = p;
    return 1;
}

static int l_pool_gc(lua_State *L) {
    pool_handle *h = luaL_checkudata(L, 1, POOL_MT);
    nv_pg_pool *p = h->pool;
    h->pool = NULL;
    if (p != NULL && --p->refs == 0) pool_destroy(p);
    return 0;
}

/* ---- Lua calls ---- */

static nv_pg_pool *check_pool(lua_State *L) {
    pool_handle *h = luaL_checkudata(L, 1, POOL_MT);
    if (h->pool == NULL) luaL_error(L, "pg: pool is closed");
    return h->pool;
}

static nv_pg_conn *check_lease(lua_State *L, nv_pg_pool *p, int slot_idx) {
    lua_Integer slot = luaL_checkinteger(L, slot_idx);
    lua_Number lease = luaL_checknumber(L, slot_idx + 1);
    nv_pg_conn *c = slot >= 1 && slot <= p->cfg.max ? p->conns[slot] : NULL;
    if (c == NULL || (lua_Number)c->lease != lease ||
        (c->state != NV_PG_CONN_LEASED && c->state != NV_PG_CONN_DEAD))
        luaL_error(L, "pg: this connection handle is no longer valid (transaction finished?)");
    return c;
}

static nv_task *check_task(lua_State *L) {
    nv_task *t = nv_task_of(L);
    if (t == NULL) luaL_error(L, "pg: queries must run in a task, not in a nested coroutine");
    return t;
}

/* Sends r for task t: on the held connection (slot != 0), else on an idle one, else queued.
 * Returns what the Lua call returns: slot, lease (now, or after the yield), or 0, failure. */
static int submit(lua_State *L, nv_pg_pool *p, nv_task *t, nv_pg_conn *held, nv_pg_req *r) {
    r->task = t;
    if (held != NULL) {
        if (held->state == NV_PG_CONN_DEAD || conn_send(held, r) != NV_OK) {
            r->fail = NV_PG_FAIL_LOST;
            if (held->state == NV_PG_CONN_DEAD && r->fail_msg[0] == '\0')
                copy_msg(r->fail_msg, sizeof r->fail_msg, "the connection was lost earlier in this transaction");
            conn_close(held);
            held->state = NV_PG_CONN_DEAD;
            held->req = r;
            lua_pushinteger(L, held->slot);
            lua_pushnumber(L, (lua_Number)held->lease);
            return 2;
        }
        return nv_task_yield(L);
    }
    nv_pg_conn *c;
    while ((c = p->idle) != NULL) {
        idle_remove(p, c);
        conn_lease(p, c);
        if (conn_send(c, r) == NV_OK) return nv_task_yield(L);
        r->fail_msg[0] = '\0';
        conn_free(c); /* closed by the server while idle: try the next one */
    }
    if (p->nwait >= p->cfg.queue_max) {
        nv_pg_req_free(r);
        lua_pushinteger(L, 0);
        lua_pushinteger(L, NV_PG_FAIL_QUEUE_FULL);
        return 2;
    }
    r->deadline_us = nv_rt_now_us() + (uint64_t)p->cfg.pool_timeout_ms * 1000;
    wait_push(p, r, 0);
    pool_maybe_connect(p);
    return nv_task_yield(L);
}

/* query(pool, slot, lease, sql, ...) -> slot, lease | 0, failure. slot 0: any connection. */
static int l_query(lua_State *L) {
    nv_pg_pool *p = check_pool(L);
    nv_task *t = check_task(L);
    nv_pg_conn *held = luaL_checkinteger(L, 2) != 0 ? check_lease(L, p, 2) : NULL;
    nv_pg_req *r = nv_pg_pack_args(L, lua_upvalueindex(1), 4);
    r->timeout_ms = p->cfg.query_timeout_ms;
    return submit(L, p, t, held, r);
}

/* run(pool, slot, lease, flags, timeout_ms, list) -> as query; list: { { sql, p1, ... }, ... } */
static int l_run(lua_State *L) {
    nv_pg_pool *p = check_pool(L);
    nv_task *t = check_task(L);
    nv_pg_conn *held = luaL_checkinteger(L, 2) != 0 ? check_lease(L, p, 2) : NULL;
    unsigned flags = (unsigned)luaL_checkinteger(L, 4);
    lua_Integer timeout_ms = luaL_optinteger(L, 5, 0);
    if (timeout_ms < 0 || timeout_ms > NV_PG_QUERY_TIMEOUT_MS_MAX)
        return luaL_error(L, "pg: timeout_ms must be from 1 to %d", NV_PG_QUERY_TIMEOUT_MS_MAX);
    nv_pg_req *r = nv_pg_pack_list(L, lua_upvalueindex(1), 6);
    r->flags = flags & (NV_PG_REQ_PIPELINE | NV_PG_REQ_SYNC_EACH);
    if (r->nstmts > 1) r->flags |= NV_PG_REQ_PIPELINE;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : p->cfg.query_timeout_ms;
    return submit(L, p, t, held, r);
}

/* The protected part of take: builds the Lua values (may raise on memory). */
static int take_push(lua_State *L) {
    nv_pg_conn *c = lua_touserdata(L, 1);
    int uv = 2;
    lua_settop(L, 2);
    return nv_pg_push_outcome(L, uv, c->pool, c, c->req);
}

/* take(pool, slot, lease, release) -> rows | nil, err | results, first_err */
static int l_take(lua_State *L) {
    nv_pg_pool *p = check_pool(L);
    nv_pg_conn *c = check_lease(L, p, 2);
    int release = lua_toboolean(L, 4);
    if (c->busy || c->req == NULL) return luaL_error(L, "pg: no finished query on this connection");
    /* The handle stays at 1: `return c_take(ud, ...)` is a tail call, so nothing else may
     * hold the pool, and a GC step while the rows are built must not finalize it. */
    lua_settop(L, 1);
    lua_rawgeti(L, lua_upvalueindex(1), NV_PG_UV_PUSH);
    lua_pushlightuserdata(L, c);
    lua_pushvalue(L, lua_upvalueindex(1));
    int rc = lua_pcall(L, 2, LUA_MULTRET, 0);
    nv_pg_req_free(c->req);
    c->req = NULL;
    if (release) pool_release(p, c);
    if (rc != 0) return lua_error(L);
    return lua_gettop(L) - 1;
}

/* release(pool, slot, lease): gives a held connection back without a query. */
static int l_release(lua_State *L) {
    nv_pg_pool *p = check_pool(L);
    nv_pg_conn *c = check_lease(L, p, 2);
    if (c->busy) return luaL_error(L, "pg: a query is still running on this connection");
    pool_release(p, c);
    return 0;
}

/* pool_error(pool, failure) -> err, for a 0, failure answer of query/run. */
static int l_pool_error(lua_State *L) {
    nv_pg_pool *p = check_pool(L);
    nv_pg_push_pool_error(L, lua_upvalueindex(1), p, (nv_pg_fail)luaL_checkinteger(L, 2));
    return 1;
}

/* txstatus(pool, slot, lease) -> "idle" | "intrans" | "inerror" | "active" | "unknown" */
static int l_txstatus(lua_State *L) {
    nv_pg_pool *p = check_pool(L);
    nv_pg_conn *c = check_lease(L, p, 2);
    static const char *const names[] = {"idle", "active", "intrans", "inerror", "unknown"};
    PGTransactionStatusType st = c->pg != NULL ? PQtransactionStatus(c->pg) : PQTRANS_UNKNOWN;
    lua_pushstring(L, names[st <= PQTRANS_UNKNOWN ? st : PQTRANS_UNKNOWN]);
    return 1;
}

/* stats(pool) -> { max, open, idle, leased, connecting, waiting } */
static int l_stats(lua_State *L) {
    nv_pg_pool *p = check_pool(L);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, p->cfg.max), lua_setfield(L, -2, "max");
    lua_pushinteger(L, p->nconns), lua_setfield(L, -2, "open");
    lua_pushinteger(L, p->nidle), lua_setfield(L, -2, "idle");
    lua_pushinteger(L, p->nconns - p->nidle - p->nconnecting), lua_setfield(L, -2, "leased");
    lua_pushinteger(L, p->nconnecting), lua_setfield(L, -2, "connecting");
    lua_pushinteger(L, p->nwait), lua_setfield(L, -2, "waiting");
    lua_pushstring(L, p->desc), lua_setfield(L, -2, "target");
    return 1;
}

/* setup(encode, decode, int_mt, bytea_mt, error_mt, names): pg.lua's shared values. */
static int l_setup(lua_State *L) {
    for (int i = 1; i <= NV_PG_UV_NAMES; i++) {
        lua_pushvalue(L, i);
        lua_rawseti(L, lua_upvalueindex(1), i);
    }
    return 0;
}

/* ---- C callers on the loop (host/ledger_post.c) ---- */

nv_pg_pool *nv_pg_pool_of(lua_State *L, int idx) {
    pool_handle *h = luaL_checkudata(L, idx, POOL_MT);
    if (h->pool == NULL) luaL_error(L, "pg: pool is closed");
    return h->pool;
}

void nv_pg_pool_ref(nv_pg_pool *p) { p->refs++; }

void nv_pg_pool_unref(nv_pg_pool *p) {
    nv_assert(p->refs > 0);
    if (--p->refs == 0) pool_destroy(p);
}

int nv_pg_submit(nv_pg_pool *p, nv_pg_conn *held, nv_pg_req *r, nv_pg_done_fn done, void *arg) {
    nv_assert(done != NULL);
    r->task = NULL, r->done = done, r->done_arg = arg;
    if (r->timeout_ms <= 0) r->timeout_ms = p->cfg.query_timeout_ms;
    if (held != NULL) {
        nv_assert(held->pool == p && held->req == NULL);
        if (held->state == NV_PG_CONN_DEAD || conn_send(held, r) != NV_OK) {
            conn_close(held);
            held->state = NV_PG_CONN_DEAD;
            nv_pg_req_free(r);
            return NV_ERR;
        }
        return NV_OK;
    }
    nv_pg_conn *c;
    while ((c = p->idle) != NULL) {
        idle_remove(p, c);
        conn_lease(p, c);
        if (conn_send(c, r) == NV_OK) return NV_OK;
        r->fail_msg[0] = '\0';
        conn_free(c);
    }
    if (p->nwait >= p->cfg.queue_max) {
        nv_pg_req_free(r);
        return NV_ERR;
    }
    r->deadline_us = nv_rt_now_us() + (uint64_t)p->cfg.pool_timeout_ms * 1000;
    wait_push(p, r, 0);
    pool_maybe_connect(p);
    return NV_OK;
}

void nv_pg_finish(nv_pg_conn *c, int release) {
    nv_assert(!c->busy);
    nv_pg_req_free(c->req);
    c->req = NULL;
    if (release) pool_release(c->pool, c);
}

void nv_pg_abandon(nv_pg_pool *p, nv_pg_req *r) {
    nv_pg_conn *c = NULL;
    for (int i = 1; i <= NV_PG_POOL_SIZE_MAX && c == NULL; i++)
        if (p->conns[i] != NULL && p->conns[i]->req == r) c = p->conns[i];
    if (c == NULL) { /* still waiting for a connection */
        nv_pg_req **pp = &p->wait_head, *prev = NULL;
        while (*pp != NULL && *pp != r) prev = *pp, pp = &(*pp)->next;
        nv_assert(*pp == r);
        *pp = r->next;
        if (p->wait_tail == r) p->wait_tail = prev;
        p->nwait--;
        wait_arm(p);
        nv_pg_req_free(r);
        return;
    }
    event_del(c->tev);
    c->busy = 0;
    conn_close(c);
    c->state = NV_PG_CONN_DEAD;
    pool_release(p, c); /* frees r and the dead connection */
}

size_t nv_pg_row(const nv_pg_conn *c, const nv_pg_out *o, size_t cursor, const char **vals, int32_t *lens) {
    for (int f = 0; f < o->nfields; f++) {
        int32_t len;
        nv_assert(cursor + 4 <= c->rows.len);
        memcpy(&len, c->rows.data + cursor, 4);
        cursor += 4;
        lens[f] = len;
        vals[f] = len < 0 ? NULL : c->rows.data + cursor;
        if (len >= 0) cursor += (size_t)len + 1;
    }
    return cursor;
}

int luaopen_nuvion_pg_c(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"setup", l_setup}, {"pool", l_pool}, {"query", l_query}, {"run", l_run},
        {"take", l_take}, {"release", l_release}, {"pool_error", l_pool_error},
        {"txstatus", l_txstatus}, {"stats", l_stats}, {NULL, NULL},
    };
    if (luaL_newmetatable(L, POOL_MT)) {
        lua_pushcfunction(L, l_pool_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, (int)NV_ARRAY_LEN(fns));
    lua_createtable(L, NV_PG_UV_COUNT, 0); /* the shared upvalue */
    lua_pushcfunction(L, take_push);
    lua_rawseti(L, -2, NV_PG_UV_PUSH);
    luaL_setfuncs(L, fns, 1);
    lua_pushinteger(L, NV_PG_REQ_PIPELINE), lua_setfield(L, -2, "PIPELINE");
    lua_pushinteger(L, NV_PG_REQ_SYNC_EACH), lua_setfield(L, -2, "SYNC_EACH");
    lua_pushinteger(L, NV_PG_FAIL_POOL_TIMEOUT), lua_setfield(L, -2, "FAIL_POOL_TIMEOUT");
    return 1;
}
