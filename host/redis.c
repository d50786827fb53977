/* redis.c -- Redis connections on the event loop: our own libevent connection
 * (plain or OpenSSL), hiredis's reader and formatter, a FIFO of waiting tasks
 * that makes concurrent commands one pipelined write. One userdata per connection.
 *
 * Lifetime: the connection lives in its Lua userdata. While commands wait on it,
 * a registry reference pins it, so a collection cannot free it under a reply;
 * the pin is dropped only at the end of an outermost callback (c->depth == 0).
 * lua_close (a worker exiting) runs __gc regardless: it frees the libevent and
 * hiredis objects and never touches the tasks, whose states are closing too. */
#include "redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "nv_limits.h"
#include "runtime.h"

#define RD_MT "nuvion.redis.conn"
#define RD_STR2(x) #x
#define RD_STR(x) RD_STR2(x)

_Static_assert(NV_REDIS_PIPELINE_COMMANDS_MAX <= NV_REDIS_PENDING_MAX,
               "a pipeline must fit in the pending bound");

typedef enum rd_state {
    RD_DOWN = 0,       /* no connection: the next command opens one */
    RD_CONNECTING = 1, /* TCP (and TLS) handshake in progress; commands queue */
    RD_UP = 2,         /* connected */
} rd_state;

typedef enum rd_kind {
    RD_CALL = 1,     /* one command, one task */
    RD_PIPELINE = 2, /* n commands, one task, one table of replies */
    RD_HELLO = 3,    /* AUTH or SELECT sent on connect: no task; an error drops the connection */
} rd_kind;

typedef struct rd_waiter {
    nv_task *task;          /* NULL for RD_HELLO */
    uint64_t deadline_us;   /* 0: no deadline */
    uint32_t count;         /* replies this waiter takes */
    uint32_t got;           /* replies received so far (pipeline) */
    rd_kind kind;
    redisReply **replies;   /* pipeline: count slots */
} rd_waiter;

/* A bounded FIFO of waiters, grown by doubling up to NV_REDIS_PENDING_MAX. */
typedef struct rd_fifo {
    rd_waiter *w;
    uint32_t cap, head, len;
} rd_fifo;

/* Settings shared by a connection and its clones (refcounted). */
typedef struct rd_cfg {
    int refs;
    char host[NV_REDIS_HOST_BYTES_MAX + 1];
    char tls_name[NV_REDIS_HOST_BYTES_MAX + 1]; /* the name the certificate must carry: host
                                                    unless opts.server_name says otherwise */
    int tls_name_is_ip;        /* tls_name is an address: matched against IP SANs, no SNI */
    int port;
    int db;
    char *username;            /* NULL: AUTH password alone */
    char *password;            /* NULL: no AUTH */
    int tls;
    int verify;                /* 1: peer and name verified (default) */
    SSL_CTX *ssl_ctx;          /* tls only */
    struct sockaddr_storage addr; /* when the host is a literal address (or localhost) */
    socklen_t addr_len;        /* 0: resolve host with evdns */
    int has_dns;               /* holds a reference to the worker's resolver */
    int64_t connect_timeout_ms;
    int64_t timeout_ms;        /* per command; 0: none */
} rd_cfg;

typedef struct rd_conn {
    rd_cfg *cfg;
    nv_gen *gen;
    int self_ref;              /* LUA_NOREF, or the pin while commands wait */
    int conv_ref;              /* registry: the reply converter, run under lua_pcall */
    int depth;                 /* callbacks of this connection on the C stack */
    int blocking_ok;           /* a dedicated connection (clone(true)): blocking commands allowed */
    rd_state state;
    uint64_t epoch;            /* bumped on every drop: a callback that woke tasks checks it */
    struct bufferevent *bev;
    redisReader *reader;
    struct event *timer_ev;
    uint64_t timer_at_us;      /* when timer_ev fires; 0: not armed */
    uint64_t connect_deadline_us;
    uint64_t fed_bytes;        /* fed to the reader since connect */
    uint64_t reply_start;      /* fed_bytes where the reply being read starts */
    uint32_t pending;          /* commands sent or queued and not answered */
    char drop_err[256];        /* why the connection was last dropped */
    rd_fifo fifo;
    uint64_t n_commands, n_writes, n_replies, n_connects;
} rd_conn;

/* ---- the resolver: one evdns base per worker, shared by the configs that need it ---- */

static struct evdns_base *rd_dns;
static int rd_dns_refs;

static struct evdns_base *rd_dns_get(void) {
    if (rd_dns == NULL) {
        rd_dns = evdns_base_new(nv_rt_get()->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
        if (rd_dns == NULL) return NULL;
    }
    rd_dns_refs++;
    return rd_dns;
}

static void rd_dns_put(void) {
    nv_assert(rd_dns_refs > 0);
    if (--rd_dns_refs == 0) {
        evdns_base_free(rd_dns, 0);
        rd_dns = NULL;
    }
}

/* ---- settings ---- */

static void rd_cfg_put(rd_cfg *cfg) {
    if (cfg == NULL || --cfg->refs > 0) return;
    if (cfg->ssl_ctx != NULL) SSL_CTX_free(cfg->ssl_ctx);
    if (cfg->has_dns) rd_dns_put();
    if (cfg->password != NULL) OPENSSL_cleanse(cfg->password, strlen(cfg->password));
    free(cfg->password);
    free(cfg->username);
    free(cfg);
}

/* Literal IPv4/IPv6 addresses and "localhost" need no resolver. */
static void rd_cfg_addr(rd_cfg *cfg) {
    struct sockaddr_in *a4 = (struct sockaddr_in *)&cfg->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&cfg->addr;
    const char *h = strcmp(cfg->host, "localhost") == 0 ? "127.0.0.1" : cfg->host;
    memset(&cfg->addr, 0, sizeof cfg->addr);
    cfg->addr_len = 0;
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
        cfg->addr_len = sizeof *a4;
    } else if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg->port);
        cfg->addr_len = sizeof *a6;
    }
    unsigned char buf[sizeof(struct in6_addr)];
    cfg->tls_name_is_ip = inet_pton(AF_INET, cfg->tls_name, buf) == 1 || inet_pton(AF_INET6, cfg->tls_name, buf) == 1;
}

static int rd_cfg_tls(rd_cfg *cfg, const char *ca_file, char *err, size_t err_len) {
    cfg->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (cfg->ssl_ctx == NULL) goto ssl_err;
    if (SSL_CTX_set_min_proto_version(cfg->ssl_ctx, TLS1_2_VERSION) != 1) goto ssl_err;
    if (!cfg->verify) {
        SSL_CTX_set_verify(cfg->ssl_ctx, SSL_VERIFY_NONE, NULL);
        return NV_OK;
    }
    SSL_CTX_set_verify(cfg->ssl_ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(cfg->ssl_ctx, ca_file, NULL) != 1) {
            snprintf(err, err_len, "tls: cannot load the CA file %s", ca_file);
            ERR_clear_error();
            return NV_ERR;
        }
    } else if (SSL_CTX_set_default_verify_paths(cfg->ssl_ctx) != 1) {
        goto ssl_err;
    }
    return NV_OK;
ssl_err:
    snprintf(err, err_len, "tls: cannot set up the context: %s",
             ERR_reason_error_string(ERR_peek_last_error()) ? ERR_reason_error_string(ERR_peek_last_error())
                                                            : "unknown error");
    ERR_clear_error();
    return NV_ERR;
}

static int64_t rd_opt_int(lua_State *L, int idx, const char *key, int64_t def, int64_t min,
                          int64_t max) {
    lua_getfield(L, idx, key);
    int64_t v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1)) luaL_error(L, "redis: %s must be a number", key);
        lua_Number n = lua_tonumber(L, -1);
        if (!(n >= (lua_Number)min && n <= (lua_Number)max) || n != (lua_Number)(int64_t)n)
            luaL_error(L, "redis: %s must be an integer in [%d, %d]", key, (int)min, (int)max);
        v = (int64_t)n;
    }
    lua_pop(L, 1);
    return v;
}

static const char *rd_opt_str(lua_State *L, int idx, const char *key) {
    lua_getfield(L, idx, key);
    const char *s = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
    if (!lua_isnil(L, -1) && (s == NULL || lua_type(L, -1) != LUA_TSTRING))
        luaL_error(L, "redis: %s must be a string", key);
    lua_pop(L, 1); /* the table keeps the string alive */
    return s;
}

static int rd_opt_bool(lua_State *L, int idx, const char *key, int def) {
    lua_getfield(L, idx, key);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* ---- the FIFO of waiters ---- */

static rd_waiter *rd_fifo_push(rd_fifo *f) {
    if (f->len == f->cap) {
        uint32_t cap = f->cap == 0 ? 16 : f->cap * 2;
        if (cap > NV_REDIS_PENDING_MAX) cap = NV_REDIS_PENDING_MAX;
        if (cap == f->cap) return NULL;
        rd_waiter *w = malloc(sizeof *w * cap);
        if (w == NULL) return NULL;
        for (uint32_t i = 0; i < f->len; i++) w[i] = f->w[(f->head + i) % f->cap];
        free(f->w);
        f->w = w;
        f->cap = cap;
        f->head = 0;
    }
    rd_waiter *w = &f->w[(f->head + f->len) % f->cap];
    f->len++;
    memset(w, 0, sizeof *w);
    return w;
}

static rd_waiter *rd_fifo_head(rd_fifo *f) { return f->len > 0 ? &f->w[f->head] : NULL; }

static void rd_fifo_pop(rd_fifo *f) {
    nv_assert(f->len > 0);
    f->head = (f->head + 1) % f->cap;
    f->len--;
}

static void rd_waiter_free(rd_waiter *w) {
    if (w->replies == NULL) return;
    for (uint32_t i = 0; i < w->got; i++) freeReplyObject(w->replies[i]);
    free(w->replies);
    w->replies = NULL;
}

/* ---- pins ---- */

static void rd_pin(rd_conn *c, lua_State *L, int idx) {
    if (c->self_ref != LUA_NOREF) return;
    lua_pushvalue(L, idx);
    c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Drops the pin when nothing waits; only outside this connection's callbacks:
 * the next collection may free c. */
static void rd_unpin_if_idle(rd_conn *c) {
    if (c->depth > 0 || c->fifo.len > 0 || c->self_ref == LUA_NOREF) return;
    int ref = c->self_ref;
    c->self_ref = LUA_NOREF;
    luaL_unref(c->gen->L, LUA_REGISTRYINDEX, ref);
}

/* ---- delivering results to tasks ---- */

/* Converts one reply onto L's stack (recursive for arrays; hiredis 0.14 nests
 * at most 7 levels). Runs under lua_pcall: a failed allocation is an error. */
static void rd_push_reply(lua_State *L, redisReply *r, int nested) {
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        lua_pushlstring(L, r->str, r->len);
        return;
    case REDIS_REPLY_INTEGER:
        if (r->integer <= (1LL << 53) && r->integer >= -(1LL << 53)) {
            lua_pushnumber(L, (lua_Number)r->integer);
        } else {
            char digits[32];
            int n = snprintf(digits, sizeof digits, "%lld", r->integer);
            lua_pushlstring(L, digits, (size_t)n);
        }
        return;
    case REDIS_REPLY_NIL:
        if (nested) lua_pushlightuserdata(L, NULL); /* json.null */
        else lua_pushnil(L);
        return;
    case REDIS_REPLY_ERROR:
        lua_createtable(L, 0, 1);
        lua_pushlstring(L, r->str, r->len);
        lua_setfield(L, -2, "err");
        return;
    case REDIS_REPLY_ARRAY:
        luaL_checkstack(L, 4, "redis reply nesting");
        lua_createtable(L, (int)r->elements, 0);
        for (size_t i = 0; i < r->elements; i++) {
            rd_push_reply(L, r->element[i], 1);
            lua_rawseti(L, -2, (int)i + 1);
        }
        return;
    default:
        lua_pushnil(L);
        return;
    }
}

/* conv(waiter) -> value | nil, err: the top-level shape of a result. */
static int rd_conv(lua_State *L) {
    rd_waiter *w = lua_touserdata(L, 1);
    if (w->kind == RD_CALL) {
        redisReply *r = w->replies[0];
        if (r->type == REDIS_REPLY_ERROR) {
            lua_pushnil(L);
            lua_pushlstring(L, r->str, r->len);
            return 2;
        }
        rd_push_reply(L, r, 0);
        return 1;
    }
    lua_createtable(L, (int)w->count, 0);
    for (uint32_t i = 0; i < w->count; i++) {
        rd_push_reply(L, w->replies[i], 1);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

/* Wakes w's task with its converted replies, then frees them. The conversion
 * runs on the generation's main thread under lua_pcall (the task is suspended),
 * and its results move to the task: no Lua error can escape into the loop. */
static void rd_deliver(rd_conn *c, rd_waiter *w) {
    lua_State *L = c->gen->L;
    nv_task *t = w->task;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->conv_ref);
    lua_pushlightuserdata(L, w);
    int nres;
    if (lua_pcall(L, 1, LUA_MULTRET, 0) == 0) {
        nres = lua_gettop(L) - top;
    } else {
        lua_pushnil(L);
        lua_insert(L, -2);
        nres = 2;
    }
    rd_waiter_free(w);
    lua_xmove(L, t->co, nres);
    nv_task_wake(t, nres);
}

static void rd_fail(nv_task *t, const char *err) {
    lua_pushnil(t->co);
    lua_pushstring(t->co, err);
    nv_task_wake(t, 2);
}

/* ---- connection ---- */

static void rd_arm_timer(rd_conn *c, uint64_t at_us) {
    if (at_us == 0 || (c->timer_at_us != 0 && c->timer_at_us <= at_us)) return;
    uint64_t now = nv_rt_now_us();
    uint64_t wait = at_us > now ? at_us - now : 0;
    struct timeval tv = {.tv_sec = (time_t)(wait / 1000000), .tv_usec = (suseconds_t)(wait % 1000000)};
    if (event_add(c->timer_ev, &tv) == 0) c->timer_at_us = at_us;
}

/* Drops the connection and fails every waiter: those past their deadline with
 * "timeout" when timed_out, the others with err. Waking a task may queue new
 * commands: they go to a fresh FIFO and a new connection. */
static void rd_drop(rd_conn *c, const char *err, int timed_out) {
    c->epoch++;
    snprintf(c->drop_err, sizeof c->drop_err, "%s", err);
    if (c->bev != NULL) bufferevent_free(c->bev);
    c->bev = NULL;
    if (c->reader != NULL) redisReaderFree(c->reader);
    c->reader = NULL;
    c->state = RD_DOWN;
    c->pending = 0;
    rd_fifo old = c->fifo;
    memset(&c->fifo, 0, sizeof c->fifo);
    uint64_t now = nv_rt_now_us();
    c->depth++;
    for (uint32_t i = 0; i < old.len; i++) {
        rd_waiter w = old.w[(old.head + i) % old.cap];
        rd_waiter_free(&w);
        if (w.task == NULL) continue;
        int expired = timed_out && w.deadline_us != 0 && w.deadline_us <= now;
        rd_fail(w.task, expired ? "timeout" : err);
    }
    c->depth--;
    free(old.w);
}

/* rd_drop from a Lua call (close, a failed queueing): the error pushes onto
 * the other waiters' stacks are the host's own, with the headroom over the
 * state's memory cap that callbacks have (an allocation failing there would
 * raise on a coroutine that has no protected frame). */
static void rd_drop_in_lua(rd_conn *c, const char *err) {
    int enforced = c->gen->mem_enforced;
    c->gen->mem_enforced = 0;
    c->depth++;
    rd_drop(c, err, 0);
    c->depth--;
    c->gen->mem_enforced = enforced;
}

/* The text of a failed connect: TLS verification, TLS, DNS or socket error. */
static void rd_connect_error(rd_conn *c, char *out, size_t out_len) {
    int dns = bufferevent_socket_get_dns_error(c->bev);
    if (dns != 0) {
        snprintf(out, out_len, "connect: cannot resolve %s: %s", c->cfg->host, evutil_gai_strerror(dns));
        return;
    }
    if (c->cfg->tls) {
        SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
        long vr = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
        unsigned long e = bufferevent_get_openssl_error(c->bev);
        if (vr != X509_V_OK) {
            snprintf(out, out_len, "tls: certificate verify failed: %s", X509_verify_cert_error_string(vr));
            ERR_clear_error();
            return;
        }
        if (e != 0) {
            char buf[256];
            ERR_error_string_n(e, buf, sizeof buf);
            snprintf(out, out_len, "tls: %s", buf);
            ERR_clear_error();
            return;
        }
    }
    int se = EVUTIL_SOCKET_ERROR();
    snprintf(out, out_len, "connect: %s", se != 0 ? evutil_socket_error_to_string(se) : "connection closed");
}

static void rd_event_cb(struct bufferevent *bev, short what, void *arg) {
    NV_UNUSED(bev);
    rd_conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->state = RD_UP;
        c->connect_deadline_us = 0;
        int one = 1;
        evutil_socket_t fd = bufferevent_getfd(c->bev);
        if (fd >= 0) (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) return;
    char err[512];
    if (c->state == RD_CONNECTING) rd_connect_error(c, err, sizeof err);
    else snprintf(err, sizeof err, "connection lost");
    c->depth++;
    rd_drop(c, err, 0);
    c->depth--;
    rd_unpin_if_idle(c);
}

/* One reply off the reader, to the head waiter. */
static void rd_reply(rd_conn *c, redisReply *r) {
    rd_waiter *w = rd_fifo_head(&c->fifo);
    c->n_replies++;
    if (w == NULL) {
        freeReplyObject(r);
        rd_drop(c, "protocol error: a reply nobody asked for", 0);
        return;
    }
    if (w->kind == RD_HELLO) {
        rd_fifo_pop(&c->fifo);
        c->pending--;
        if (r->type == REDIS_REPLY_ERROR) {
            char err[256];
            snprintf(err, sizeof err, "connect: %.*s", (int)(r->len > 200 ? 200 : r->len), r->str);
            freeReplyObject(r);
            rd_drop(c, err, 0);
            return;
        }
        freeReplyObject(r);
        return;
    }
    w->replies[w->got++] = r;
    c->pending--;
    if (w->got < w->count) return;
    rd_waiter done = *w;
    rd_fifo_pop(&c->fifo);
    rd_deliver(c, &done);
}

/* Feeds one slice to the reader and hands out every reply it completes.
 * Returns NV_ERR when the connection was dropped (by an error or by a woken
 * task): c->bev and c->reader are then gone or new. */
static int rd_feed(rd_conn *c, const char *data, size_t len) {
    uint64_t epoch = c->epoch;
    if (redisReaderFeed(c->reader, data, len) != REDIS_OK) {
        rd_drop(c, "out of memory reading a reply", 0);
        return NV_ERR;
    }
    c->fed_bytes += len;
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            char err[192];
            snprintf(err, sizeof err, "protocol error: %s", c->reader->errstr);
            rd_drop(c, err, 0);
            return NV_ERR;
        }
        if (reply == NULL) return NV_OK;
        c->reply_start = c->fed_bytes - (c->reader->len - c->reader->pos);
        rd_reply(c, reply);
        if (c->epoch != epoch) return NV_ERR;
    }
}

/* Reads what arrived, in slices of NV_REDIS_FEED_BYTES: hiredis 0.14 moves its
 * unread buffer down after every KB of replies, so a small buffer keeps that
 * copy small. A reply past NV_REDIS_REPLY_BYTES_MAX drops the connection. */
static void rd_read_cb(struct bufferevent *bev, void *arg) {
    rd_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    c->depth++;
    if (c->fed_bytes + evbuffer_get_length(in) - c->reply_start > NV_REDIS_REPLY_BYTES_MAX) {
        char err[128];
        snprintf(err, sizeof err, "reply exceeds %d bytes", NV_REDIS_REPLY_BYTES_MAX);
        rd_drop(c, err, 0);
        goto out;
    }
    struct evbuffer_iovec v[NV_REDIS_READ_CHUNKS_MAX];
    int nv = evbuffer_peek(in, -1, NULL, v, NV_REDIS_READ_CHUNKS_MAX);
    if (nv > NV_REDIS_READ_CHUNKS_MAX) nv = NV_REDIS_READ_CHUNKS_MAX;
    for (int i = 0; i < nv; i++) {
        const char *p = v[i].iov_base;
        size_t left = v[i].iov_len;
        while (left > 0) {
            size_t n = left < NV_REDIS_FEED_BYTES ? left : NV_REDIS_FEED_BYTES;
            if (rd_feed(c, p, n) != NV_OK) goto out; /* dropped: `in` is not ours any more */
            p += n, left -= n;
        }
        if (evbuffer_drain(in, v[i].iov_len) != 0) {
            rd_drop(c, "connection lost", 0);
            goto out;
        }
    }
    /* Chunks left (more than NV_REDIS_READ_CHUNKS_MAX): read again next turn. */
    if (evbuffer_get_length(in) > 0) bufferevent_trigger(bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
out:
    c->depth--;
    rd_unpin_if_idle(c);
}

static void rd_timer_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    rd_conn *c = arg;
    uint64_t now = nv_rt_now_us(), next = 0;
    int expired = 0;
    c->timer_at_us = 0;
    if (c->state == RD_CONNECTING && c->connect_deadline_us != 0) {
        if (c->connect_deadline_us <= now) {
            c->depth++;
            rd_drop(c, "connect timeout", 0);
            c->depth--;
            rd_unpin_if_idle(c);
            return;
        }
        next = c->connect_deadline_us;
    }
    for (uint32_t i = 0; i < c->fifo.len; i++) {
        uint64_t d = c->fifo.w[(c->fifo.head + i) % c->fifo.cap].deadline_us;
        if (d == 0) continue;
        if (d <= now) expired = 1;
        if (next == 0 || d < next) next = d;
    }
    if (expired) {
        /* The reply order is fixed: a late reply would hold up every command
         * behind it, so the connection goes and the next command reconnects. */
        c->depth++;
        rd_drop(c, "connection lost", 1);
        c->depth--;
        rd_unpin_if_idle(c);
        return;
    }
    rd_arm_timer(c, next);
}

/* Queues one formatted command (AUTH/SELECT on connect: kind RD_HELLO). */
static int rd_send_raw(rd_conn *c, const char *cmd, size_t len) {
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) == 0) c->n_writes++;
    return evbuffer_add(out, cmd, len) == 0 ? NV_OK : NV_ERR;
}

static int rd_hello(rd_conn *c, int argc, const char **argv, uint64_t deadline_us) {
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, NULL);
    if (len < 0) return NV_ERR;
    int rc = rd_send_raw(c, cmd, (size_t)len);
    if (cmd != NULL) OPENSSL_cleanse(cmd, (size_t)len); /* may hold the password */
    free(cmd);
    rd_waiter *w = rc == NV_OK ? rd_fifo_push(&c->fifo) : NULL;
    if (w == NULL) return NV_ERR;
    w->kind = RD_HELLO;
    w->count = 1;
    w->deadline_us = deadline_us;
    c->pending++;
    return NV_OK;
}

static SSL *rd_ssl_new(rd_cfg *cfg) {
    SSL *ssl = SSL_new(cfg->ssl_ctx);
    if (ssl == NULL) return NULL;
    if (!cfg->verify) return ssl;
    const char *name = cfg->tls_name;
    int ok = cfg->tls_name_is_ip
                 ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1
                 : SSL_set1_host(ssl, name) == 1 && SSL_set_tlsext_host_name(ssl, name) == 1;
    if (!ok) {
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

/* Starts a connection and queues AUTH and SELECT ahead of any command. */
static int rd_open(rd_conn *c, char *err, size_t err_len) {
    rd_cfg *cfg = c->cfg;
    struct event_base *base = nv_rt_get()->base;
    ERR_clear_error();
    c->reader = redisReaderCreate();
    if (c->reader == NULL) goto oom;
    if (cfg->tls) {
        SSL *ssl = rd_ssl_new(cfg);
        if (ssl == NULL) {
            snprintf(err, err_len, "tls: cannot set up the session for %s", cfg->host);
            goto fail;
        }
        c->bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE);
        if (c->bev == NULL) SSL_free(ssl);
        else bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    } else {
        c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    }
    if (c->bev == NULL) goto oom;
    bufferevent_setcb(c->bev, rd_read_cb, NULL, rd_event_cb, c);
    if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) != 0) goto oom;
    (void)bufferevent_set_max_single_read(c->bev, NV_REDIS_READ_BYTES_MAX);
    (void)bufferevent_set_max_single_write(c->bev, NV_REDIS_WRITE_BYTES_MAX);
    c->state = RD_CONNECTING;
    c->fed_bytes = c->reply_start = 0;
    c->n_connects++;
    uint64_t deadline = nv_rt_now_us() + (uint64_t)cfg->connect_timeout_ms * 1000;
    c->connect_deadline_us = deadline;
    uint64_t epoch = c->epoch;
    int rc = cfg->addr_len != 0
                 ? bufferevent_socket_connect(c->bev, (struct sockaddr *)&cfg->addr, (int)cfg->addr_len)
                 : bufferevent_socket_connect_hostname(c->bev, rd_dns, AF_UNSPEC, cfg->host, cfg->port);
    if (c->epoch != epoch) {
        /* libevent reported a failure from inside the call (an answer from
         * /etc/hosts comes back at once): the connection is already gone. */
        snprintf(err, err_len, "%s", c->drop_err);
        return NV_ERR;
    }
    if (rc != 0) {
        snprintf(err, err_len, "connect: cannot connect to %s:%d", cfg->host, cfg->port);
        goto fail;
    }
    if (cfg->password != NULL) {
        const char *argv[3] = {"AUTH", cfg->username ? cfg->username : cfg->password, cfg->password};
        if (rd_hello(c, cfg->username ? 3 : 2, argv, deadline) != NV_OK) goto oom;
    }
    if (cfg->db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", cfg->db);
        const char *argv[2] = {"SELECT", db};
        if (rd_hello(c, 2, argv, deadline) != NV_OK) goto oom;
    }
    rd_arm_timer(c, deadline);
    return NV_OK;
oom:
    snprintf(err, err_len, "connect: out of memory");
fail:
    /* Nothing waits yet (the FIFO was empty: rd_open runs only when DOWN). */
    rd_drop(c, err, 0);
    return NV_ERR;
}

/* ---- formatting commands from Lua values ---- */

typedef struct rd_args {
    const char *argv[NV_REDIS_ARGS_INLINE];
    size_t lens[NV_REDIS_ARGS_INLINE];
    char nums[NV_REDIS_ARGS_INLINE][32];
} rd_args;

/* Commands that change the state of the connection they run on. Other tasks'
 * commands share it (automatic pipelining), so these are refused: MULTI ...
 * EXEC goes in one explicit pipeline, whose commands are written together. */
static const char *const rd_refused_any[] = {
    "SELECT", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
    "MONITOR", "QUIT", "RESET", "HELLO", "AUTH", NULL,
};
static const char *const rd_refused_call[] = {"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", NULL};

/* Commands that block the connection until data comes: on the shared
 * connection they would hold up every task's command behind them. */
static const char *const rd_blocking[] = {
    "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "WAIT", "WAITAOF", NULL,
};

static int rd_name_is(const char *const *list, const char *name, size_t len) {
    for (const char *const *p = list; *p != NULL; p++)
        if (strlen(*p) == len && strncasecmp(*p, name, len) == 0) return 1;
    return 0;
}

/* The i-th (0-based) argument when it is a string, else NULL. */
static const char *rd_arg_str(lua_State *L, int first, int table_idx, int i, size_t *len) {
    const char *s = NULL;
    if (table_idx != 0) {
        lua_rawgeti(L, table_idx, i + 1);
        if (lua_type(L, -1) == LUA_TSTRING) s = lua_tolstring(L, -1, len);
        lua_pop(L, 1); /* the table keeps the string alive */
    } else if (lua_type(L, first + i) == LUA_TSTRING) {
        s = lua_tolstring(L, first + i, len);
    }
    return s;
}

/* XREAD and XREADGROUP block when given BLOCK (before STREAMS). */
static int rd_is_blocking(lua_State *L, int first, int n, int table_idx, const char *name, size_t len) {
    if (rd_name_is(rd_blocking, name, len)) return 1;
    if (!((len == 5 && strncasecmp(name, "XREAD", 5) == 0) || (len == 10 && strncasecmp(name, "XREADGROUP", 10) == 0)))
        return 0;
    for (int i = 1; i < n; i++) {
        size_t alen = 0;
        const char *a = rd_arg_str(L, first, table_idx, i, &alen);
        if (a == NULL) continue;
        if (alen == 5 && strncasecmp(a, "BLOCK", 5) == 0) return 1;
        if (alen == 7 && strncasecmp(a, "STREAMS", 7) == 0) return 0;
    }
    return 0;
}

static const char *rd_refused(const char *name, size_t len, int in_pipeline) {
    for (const char *const *p = rd_refused_any; *p != NULL; p++)
        if (strlen(*p) == len && strncasecmp(*p, name, len) == 0) return *p;
    for (const char *const *p = rd_refused_call; !in_pipeline && *p != NULL; p++)
        if (strlen(*p) == len && strncasecmp(*p, name, len) == 0) return *p;
    return NULL;
}

/* Checks that every value of t[1..n] (or the stack from idx on when t == 0) is
 * a string or a number, and that the command keeps the connection's state;
 * raises otherwise. Returns the count. */
static int rd_check_args(lua_State *L, rd_conn *c, int first, int n, int table_idx, int cmd_no) {
    if (n < 1) luaL_error(L, "redis: a command needs at least its name");
    if (n > NV_REDIS_ARGS_MAX) luaL_error(L, "redis: more than %d arguments", NV_REDIS_ARGS_MAX);
    for (int i = 0; i < n; i++) {
        int type;
        lua_Number x = 0;
        if (table_idx != 0) {
            lua_rawgeti(L, table_idx, i + 1);
            type = lua_type(L, -1);
            if (type == LUA_TNUMBER) x = lua_tonumber(L, -1);
            lua_pop(L, 1);
        } else {
            type = lua_type(L, first + i);
            if (type == LUA_TNUMBER) x = lua_tonumber(L, first + i);
        }
        if (type == LUA_TNUMBER && !isfinite(x)) luaL_error(L, "redis: argument %d is not a finite number", i + 1);
        if (type != LUA_TSTRING && type != LUA_TNUMBER) {
            if (cmd_no > 0)
                luaL_error(L, "redis: command %d, argument %d is a %s (strings and numbers only)", cmd_no,
                           i + 1, lua_typename(L, type));
            luaL_error(L, "redis: argument %d is a %s (strings and numbers only)", i + 1,
                       lua_typename(L, type));
        }
    }
    size_t len = 0;
    const char *name = rd_arg_str(L, first, table_idx, 0, &len);
    if (name == NULL) luaL_error(L, "redis: the command name must be a string");
    const char *refused = len <= 12 ? rd_refused(name, len, cmd_no > 0) : NULL;
    if (refused != NULL)
        luaL_error(L, "redis: %s would change the state of a shared connection%s", refused,
                   cmd_no > 0 ? "" : " (MULTI ... EXEC go in one r:pipeline)");
    if (!c->blocking_ok && rd_is_blocking(L, first, n, table_idx, name, len))
        luaL_error(L, "redis: %s blocks the shared connection: use r:blocking()", name);
    return n;
}

/* Integral numbers print as integers (1e15 is "1000000000000000", not "1e+15"). */
static size_t rd_number(lua_Number x, char *buf, size_t len) {
    int n;
    if (x > -9.2e18 && x < 9.2e18 && x == (lua_Number)(long long)x) n = snprintf(buf, len, "%lld", (long long)x);
    else n = snprintf(buf, len, "%.17g", x);
    return n > 0 ? (size_t)n : 0;
}

/* Formats one command (already checked) into out; no Lua error past the check. */
static int rd_format(lua_State *L, int first, int n, int table_idx, struct evbuffer *out) {
    rd_args inl;
    const char **argv = inl.argv;
    size_t *lens = inl.lens;
    char (*nums)[32] = inl.nums;
    void *heap = NULL;
    if (n > NV_REDIS_ARGS_INLINE) {
        heap = malloc((sizeof *argv + sizeof *lens + 32) * (size_t)n);
        if (heap == NULL) return NV_ERR;
        argv = heap;
        lens = (size_t *)(argv + n);
        nums = (char (*)[32])(lens + n);
    }
    for (int i = 0; i < n; i++) {
        int idx = first + i;
        if (table_idx != 0) {
            lua_rawgeti(L, table_idx, i + 1); /* the table keeps a string alive once popped */
            idx = lua_gettop(L);
        }
        if (lua_type(L, idx) == LUA_TNUMBER) {
            lens[i] = rd_number(lua_tonumber(L, idx), nums[i], 32);
            argv[i] = nums[i];
        } else {
            argv[i] = lua_tolstring(L, idx, &lens[i]);
        }
        if (table_idx != 0) lua_pop(L, 1);
    }
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, n, argv, lens);
    int rc = len >= 0 && evbuffer_add(out, cmd, (size_t)len) == 0 ? NV_OK : NV_ERR;
    free(cmd);
    free(heap);
    return rc;
}

/* ---- Lua API ---- */

static rd_conn *rd_check(lua_State *L) { return luaL_checkudata(L, 1, RD_MT); }

static uint64_t rd_deadline(lua_State *L, rd_conn *c, int idx) {
    int64_t ms = c->cfg->timeout_ms;
    if (!lua_isnil(L, idx)) {
        lua_Number n = luaL_checknumber(L, idx);
        if (!(n >= 0 && n <= NV_REDIS_TIMEOUT_MS_MAX))
            luaL_argerror(L, idx, "timeout_ms must be in [0, " RD_STR(NV_REDIS_TIMEOUT_MS_MAX) "]");
        ms = (int64_t)n;
    }
    return ms == 0 ? 0 : nv_rt_now_us() + (uint64_t)ms * 1000;
}

/* An expected failure of call or pipeline: nil, err to the caller. */
static int rd_submit_fail(lua_State *L, rd_conn *c, struct evbuffer *cmds, const char *err) {
    evbuffer_free(cmds);
    rd_unpin_if_idle(c);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

/* Common tail of call and pipeline: connect if needed, queue the bytes and
 * the waiter, yield. `cmds` is freed here. The pin comes first: it is the one
 * step that may raise (out of memory), and nothing is queued yet. */
static int rd_submit(lua_State *L, rd_conn *c, nv_task *t, struct evbuffer *cmds, uint32_t count,
                     rd_kind kind, uint64_t deadline) {
    char err[512];
    rd_pin(c, L, 1);
    if (c->pending + count > NV_REDIS_PENDING_MAX) return rd_submit_fail(L, c, cmds, "too many pending commands");
    if (c->state == RD_DOWN && rd_open(c, err, sizeof err) != NV_OK) return rd_submit_fail(L, c, cmds, err);
    redisReply **replies = malloc(sizeof *replies * count);
    if (replies == NULL) return rd_submit_fail(L, c, cmds, "out of memory");
    rd_waiter *w = rd_fifo_push(&c->fifo);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    if (evbuffer_get_length(out) == 0) c->n_writes++;
    if (w == NULL || evbuffer_add_buffer(out, cmds) != 0) {
        /* Part of a command may be queued: the connection cannot be trusted. */
        if (w != NULL) c->fifo.len--;
        free(replies);
        rd_drop_in_lua(c, "connection lost");
        return rd_submit_fail(L, c, cmds, "out of memory queueing a command");
    }
    evbuffer_free(cmds);
    w->task = t;
    w->kind = kind;
    w->count = count;
    w->replies = replies;
    w->deadline_us = deadline;
    c->pending += count;
    c->n_commands += count;
    rd_arm_timer(c, deadline);
    return nv_task_yield(L);
}

/* conn:call(timeout_ms, cmd, ...) */
static int rd_lua_call(lua_State *L) {
    rd_conn *c = rd_check(L);
    nv_task *t = nv_task_of(L);
    if (t == NULL) return luaL_error(L, "redis: call() must be called from a task, not a nested coroutine");
    uint64_t deadline = rd_deadline(L, c, 2);
    int n = rd_check_args(L, c, 3, lua_gettop(L) - 2, 0, 0);
    struct evbuffer *cmds = evbuffer_new();
    if (cmds == NULL || rd_format(L, 3, n, 0, cmds) != NV_OK) {
        if (cmds != NULL) evbuffer_free(cmds);
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory formatting a command");
        return 2;
    }
    return rd_submit(L, c, t, cmds, 1, RD_CALL, deadline);
}

/* conn:pipeline(timeout_ms, { {cmd, ...}, ... }) */
static int rd_lua_pipeline(lua_State *L) {
    rd_conn *c = rd_check(L);
    nv_task *t = nv_task_of(L);
    if (t == NULL) return luaL_error(L, "redis: pipeline() must be called from a task, not a nested coroutine");
    uint64_t deadline = rd_deadline(L, c, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    int count = (int)lua_objlen(L, 3);
    if (count < 1) return luaL_argerror(L, 3, "an empty pipeline");
    if (count > NV_REDIS_PIPELINE_COMMANDS_MAX)
        return luaL_error(L, "redis: a pipeline of more than %d commands", NV_REDIS_PIPELINE_COMMANDS_MAX);
    luaL_checkstack(L, 4, "redis pipeline");
    for (int i = 1; i <= count; i++) {
        lua_rawgeti(L, 3, i);
        if (lua_type(L, -1) != LUA_TTABLE) luaL_error(L, "redis: pipeline entry %d is not a table", i);
        rd_check_args(L, c, 0, (int)lua_objlen(L, -1), lua_gettop(L), i);
        lua_pop(L, 1);
    }
    struct evbuffer *cmds = evbuffer_new();
    int ok = cmds != NULL;
    for (int i = 1; ok && i <= count; i++) {
        lua_rawgeti(L, 3, i);
        ok = rd_format(L, 0, (int)lua_objlen(L, -1), lua_gettop(L), cmds) == NV_OK;
        lua_pop(L, 1);
    }
    if (!ok) {
        if (cmds != NULL) evbuffer_free(cmds);
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory formatting a pipeline");
        return 2;
    }
    return rd_submit(L, c, t, cmds, (uint32_t)count, RD_PIPELINE, deadline);
}

static int rd_lua_close(lua_State *L) {
    rd_conn *c = rd_check(L);
    if (c->state != RD_DOWN || c->fifo.len > 0) rd_drop_in_lua(c, "connection closed");
    rd_unpin_if_idle(c);
    return 0;
}

static int rd_lua_stats(lua_State *L) {
    rd_conn *c = rd_check(L);
    lua_createtable(L, 0, 6);
    lua_pushnumber(L, (lua_Number)c->n_commands), lua_setfield(L, -2, "commands");
    lua_pushnumber(L, (lua_Number)c->n_writes), lua_setfield(L, -2, "writes");
    lua_pushnumber(L, (lua_Number)c->n_replies), lua_setfield(L, -2, "replies");
    lua_pushnumber(L, (lua_Number)c->n_connects), lua_setfield(L, -2, "connects");
    lua_pushnumber(L, (lua_Number)c->pending), lua_setfield(L, -2, "pending");
    lua_pushboolean(L, c->state == RD_UP), lua_setfield(L, -2, "connected");
    return 1;
}

static int rd_lua_gc(lua_State *L) {
    rd_conn *c = lua_touserdata(L, 1);
    /* Waiters can only be left when the state itself closes: their tasks go with it. */
    for (uint32_t i = 0; i < c->fifo.len; i++) rd_waiter_free(&c->fifo.w[(c->fifo.head + i) % c->fifo.cap]);
    free(c->fifo.w);
    memset(&c->fifo, 0, sizeof c->fifo);
    if (c->bev != NULL) bufferevent_free(c->bev);
    if (c->reader != NULL) redisReaderFree(c->reader);
    if (c->timer_ev != NULL) event_free(c->timer_ev);
    c->bev = NULL, c->reader = NULL, c->timer_ev = NULL;
    if (c->conv_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, c->conv_ref);
    c->conv_ref = LUA_NOREF;
    rd_cfg_put(c->cfg);
    c->cfg = NULL;
    return 0;
}

/* A fresh userdata, its settings still to be given (c->cfg). */
static rd_conn *rd_conn_new(lua_State *L) {
    nv_task *t = nv_rt_get()->current;
    nv_assert(t != NULL);
    rd_conn *c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->self_ref = LUA_NOREF;
    c->conv_ref = LUA_NOREF;
    c->gen = t->gen;
    luaL_getmetatable(L, RD_MT);
    lua_setmetatable(L, -2);
    c->timer_ev = event_new(nv_rt_get()->base, -1, 0, rd_timer_cb, c);
    if (c->timer_ev == NULL) luaL_error(L, "redis: out of memory");
    lua_getfield(L, LUA_REGISTRYINDEX, "nuvion.redis.conv");
    c->conv_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return c;
}

static int rd_lua_clone(lua_State *L) {
    rd_conn *c = rd_check(L);
    if (nv_rt_get()->current == NULL) return luaL_error(L, "redis: connections are made from a task");
    int blocking_ok = lua_toboolean(L, 2);
    rd_conn *copy = rd_conn_new(L);
    copy->cfg = c->cfg;
    copy->blocking_ok = blocking_ok;
    c->cfg->refs++;
    return 1;
}

/* The options of c.new, read (and checked: a bad one raises) before anything
 * is allocated. The strings belong to the options table. */
typedef struct rd_opts {
    const char *host, *username, *password, *ca_file, *server_name;
    int port, db, tls, verify;
    int64_t connect_timeout_ms, timeout_ms;
} rd_opts;

static void rd_opts_read(lua_State *L, rd_opts *o) {
    o->host = rd_opt_str(L, 1, "host");
    if (o->host == NULL || o->host[0] == '\0' || strlen(o->host) > NV_REDIS_HOST_BYTES_MAX)
        luaL_error(L, "redis: host must be a name or address of 1 to %d bytes", NV_REDIS_HOST_BYTES_MAX);
    o->port = (int)rd_opt_int(L, 1, "port", 6379, 1, 65535);
    o->db = (int)rd_opt_int(L, 1, "db", 0, 0, 1000000);
    o->tls = rd_opt_bool(L, 1, "tls", 0);
    o->verify = rd_opt_bool(L, 1, "verify", 1);
    o->connect_timeout_ms = rd_opt_int(L, 1, "connect_timeout_ms", NV_REDIS_CONNECT_TIMEOUT_MS_DEFAULT, 1,
                                       NV_REDIS_TIMEOUT_MS_MAX);
    o->timeout_ms = rd_opt_int(L, 1, "timeout_ms", NV_REDIS_TIMEOUT_MS_DEFAULT, 0, NV_REDIS_TIMEOUT_MS_MAX);
    o->username = rd_opt_str(L, 1, "username");
    o->password = rd_opt_str(L, 1, "password");
    o->ca_file = rd_opt_str(L, 1, "ca_file");
    o->server_name = rd_opt_str(L, 1, "server_name");
    if (o->server_name != NULL && (o->server_name[0] == '\0' || strlen(o->server_name) > NV_REDIS_HOST_BYTES_MAX))
        luaL_error(L, "redis: server_name must be a name or address of 1 to %d bytes", NV_REDIS_HOST_BYTES_MAX);
}

static int rd_cfg_fill(rd_cfg *cfg, const rd_opts *o, char *err, size_t err_len) {
    memcpy(cfg->host, o->host, strlen(o->host) + 1);
    const char *tls_name = o->server_name != NULL ? o->server_name : o->host;
    memcpy(cfg->tls_name, tls_name, strlen(tls_name) + 1);
    cfg->port = o->port, cfg->db = o->db, cfg->tls = o->tls, cfg->verify = o->verify;
    cfg->connect_timeout_ms = o->connect_timeout_ms, cfg->timeout_ms = o->timeout_ms;
    if (o->username != NULL && o->username[0] != '\0' && (cfg->username = strdup(o->username)) == NULL)
        goto oom;
    if (o->password != NULL && (cfg->password = strdup(o->password)) == NULL) goto oom;
    rd_cfg_addr(cfg);
    if (cfg->addr_len == 0) {
        if (rd_dns_get() == NULL) {
            snprintf(err, err_len, "redis: cannot start the DNS resolver");
            return NV_ERR;
        }
        cfg->has_dns = 1;
    }
    if (cfg->tls && rd_cfg_tls(cfg, o->ca_file, err, err_len) != NV_OK) return NV_ERR;
    return NV_OK;
oom:
    snprintf(err, err_len, "redis: out of memory");
    return NV_ERR;
}

/* c.new(cfg) -> conn | nil, err */
static int rd_lua_new(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    if (nv_rt_get()->current == NULL) return luaL_error(L, "redis: connections are made from a task");
    rd_opts o;
    rd_opts_read(L, &o);
    char err[512];
    rd_conn *c = rd_conn_new(L); /* first: it may raise, and nothing is allocated yet */
    rd_cfg *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL) return luaL_error(L, "redis: out of memory");
    cfg->refs = 1;
    if (rd_cfg_fill(cfg, &o, err, sizeof err) != NV_OK) {
        rd_cfg_put(cfg);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    c->cfg = cfg;
    return 1;
}

static int rd_lua_sha1_hex(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(s, len, md, &md_len, EVP_sha1(), NULL) != 1 || md_len != 20)
        return luaL_error(L, "redis: sha1 failed");
    static const char hex[] = "0123456789abcdef";
    char out[40];
    for (int i = 0; i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    lua_pushlstring(L, out, sizeof out);
    return 1;
}

int luaopen_nuvion_redis_c(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"call", rd_lua_call},   {"pipeline", rd_lua_pipeline}, {"close", rd_lua_close},
        {"stats", rd_lua_stats}, {"clone", rd_lua_clone},       {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"new", rd_lua_new},
        {"sha1_hex", rd_lua_sha1_hex},
        {NULL, NULL},
    };
    lua_pushcfunction(L, rd_conv);
    lua_setfield(L, LUA_REGISTRYINDEX, "nuvion.redis.conv");
    if (luaL_newmetatable(L, RD_MT)) {
        lua_pushcfunction(L, rd_lua_gc);
        lua_setfield(L, -2, "__gc");
        lua_createtable(L, 0, (int)NV_ARRAY_LEN(methods));
        luaL_register(L, NULL, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, (int)NV_ARRAY_LEN(fns) + 1);
    luaL_register(L, NULL, fns);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, NV_REDIS_PENDING_MAX), lua_setfield(L, -2, "pending_max");
    lua_pushinteger(L, NV_REDIS_PIPELINE_COMMANDS_MAX), lua_setfield(L, -2, "pipeline_max");
    lua_pushinteger(L, NV_REDIS_REPLY_BYTES_MAX), lua_setfield(L, -2, "reply_bytes_max");
    lua_pushinteger(L, NV_REDIS_BLOCKING_CONNS_MAX), lua_setfield(L, -2, "blocking_conns_max");
    lua_pushinteger(L, NV_REDIS_TIMEOUT_MS_DEFAULT), lua_setfield(L, -2, "timeout_ms_default");
    lua_pushinteger(L, NV_REDIS_SCRIPTS_MAX), lua_setfield(L, -2, "scripts_max");
    lua_pushinteger(L, NV_REDIS_CLIENTS_MAX), lua_setfield(L, -2, "clients_max");
    lua_pushinteger(L, NV_REDIS_BLOCKING_MARGIN_MS), lua_setfield(L, -2, "blocking_margin_ms");
    lua_setfield(L, -2, "limits");
    return 1;
}
