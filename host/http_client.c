/* http_client.c -- nuvion.http_c: outbound HTTP/1.1 and HTTPS on the worker's loop, with
 * evdns, an optional CONNECT proxy, TLS verification and a keep-alive pool per origin.
 *
 * A request is a Lua userdata (so a closing state frees what its requests hold) that walks
 * DNS -> connect -> [proxy CONNECT] -> [TLS] -> send -> head -> body, then wakes its task.
 * Idle connections live in one per-worker pool keyed by scheme, host, port, proxy and TLS
 * settings, so a connection made with `verify = false` never serves a verified request. */
#include "http_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http_response.h"
#include "nv_limits.h"
#include "runtime.h"

#define HC_REQ_MT "nuvion.http_c.request"
#define HC_SENTINEL "nuvion.http_c.sentinel"
#define HC_KEY_BYTES (NV_HTTP_CLIENT_HOST_BYTES_MAX * 3 + 64) /* origin + proxy + pinned address + context */
#define HC_ERR_BYTES 256
#define HC_PULL_BYTES (64 * 1024) /* raw chunked bytes decoded per step */
#define HC_WAIT 2                 /* read_head: the head is incomplete, wait for bytes */

_Static_assert(NV_HTTP_CLIENT_HEADER_BYTES_MAX <= NV_HTTP_HEADER_BYTES_MAX, "head lengths are uint32_t");
_Static_assert(NV_HTTP_CLIENT_IDLE_PER_ORIGIN_MAX <= NV_HTTP_CLIENT_IDLE_MAX, "per-origin bound within total");

typedef struct hc_conn hc_conn;
struct hc_conn {
    struct bufferevent *bev;
    hc_conn *prev, *next;     /* idle list, while pooled */
    char key[HC_KEY_BYTES];
};

typedef enum hc_phase {
    HC_DNS = 1,       /* waiting for evdns */
    HC_CONNECT,       /* TCP connect, to the origin or the proxy */
    HC_PROXY,         /* CONNECT sent to the proxy, waiting for its answer */
    HC_TLS,           /* TLS handshake (over TCP, or inside the tunnel) */
    HC_HEAD,          /* request sent (or being sent), reading the response head */
    HC_BODY,          /* reading the body */
    HC_DONE,
} hc_phase;

typedef struct hc_req hc_req;
struct hc_req {
    nv_task *task;
    int ref;                  /* registry ref to this userdata while its task waits */
    unsigned waiting : 1;     /* the task yielded on this request */
    unsigned finished : 1;    /* the outcome is known (results in the fields below) */
    unsigned released : 1;    /* I/O stopped, conn and timer gone */
    unsigned tls : 1, verify : 1, head_request : 1, idempotent : 1;
    unsigned reused : 1, retried : 1, got_bytes : 1, ok : 1, reusable : 1;
    unsigned resolve_only : 1; /* answer the host's addresses, connect nowhere */
    hc_phase phase;
    char host[NV_HTTP_CLIENT_HOST_BYTES_MAX + 1];
    char pin[NV_HTTP_CLIENT_HOST_BYTES_MAX + 1]; /* an IP literal to connect to instead of resolving host, or "" */
    int port;
    char proxy_host[NV_HTTP_CLIENT_HOST_BYTES_MAX + 1]; /* "" when direct */
    int proxy_port;
    SSL_CTX *ctx;             /* owned by the context cache */
    char key[HC_KEY_BYTES];
    char *data;               /* the request bytes, kept for one retry */
    size_t data_len;
    struct event *timer;
    uint64_t deadline_us, connect_deadline_us;
    struct evdns_getaddrinfo_request *dns;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    hc_conn *conn;
    int raw_fd;               /* our socket until TLS or the tunnel takes it over, or -1 */
    size_t max_header_bytes, max_body_bytes;
    char *head;               /* copy of the response head; h points into it */
    nv_http_response_head h;
    nv_http_body_kind kind;
    int64_t remaining;        /* Content-Length bytes still to read */
    nv_http_chunked chunked;
    char *body;
    size_t body_len, body_cap;
    char err[HC_ERR_BYTES];
    hc_req *prev, *next;      /* live (unreleased) requests of this worker */
};

/* Per-worker state: the loop is the worker's, so is everything here. */
static struct {
    int states;               /* Lua states that opened the module */
    struct evdns_base *dns;
    SSL_CTX *ctx_system, *ctx_noverify;
    struct { char path[NV_PATH_BYTES_MAX]; SSL_CTX *ctx; } ca[NV_HTTP_CLIENT_CA_FILES_MAX];
    hc_conn *idle;            /* most recently pooled first */
    int idle_len;
    hc_req *live;
    int live_len;
    uint64_t connects, reuses, retries;
} hc;

static void req_step_connect(hc_req *r);
static void req_resolve(hc_req *r);
static void req_send(hc_req *r);
static void req_finish(hc_req *r, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- TLS contexts ---- */

static SSL_CTX *ctx_new(int verify, const char *ca_file) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) return NULL;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) goto err;
    if (verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        int rc = ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                                 : SSL_CTX_set_default_verify_paths(ctx);
        if (rc != 1) goto err;
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
err:
    SSL_CTX_free(ctx);
    return NULL;
}

/* The cached context for these settings. A CA file is read once per worker (a small blocking
 * read, accepted: it happens on the first request that names it, like loading a module). */
static SSL_CTX *ctx_get(int verify, const char *ca_file, const char **why) {
    *why = NULL;
    if (!verify) {
        if (hc.ctx_noverify == NULL) hc.ctx_noverify = ctx_new(0, NULL);
        if (hc.ctx_noverify == NULL) *why = "cannot create a TLS context";
        return hc.ctx_noverify;
    }
    if (ca_file == NULL) {
        if (hc.ctx_system == NULL) hc.ctx_system = ctx_new(1, NULL);
        if (hc.ctx_system == NULL) *why = "cannot load the system CA certificates";
        return hc.ctx_system;
    }
    int free_slot = -1;
    for (int i = 0; i < NV_HTTP_CLIENT_CA_FILES_MAX; i++) {
        if (hc.ca[i].ctx == NULL) {
            if (free_slot < 0) free_slot = i;
        } else if (strcmp(hc.ca[i].path, ca_file) == 0) {
            return hc.ca[i].ctx;
        }
    }
    if (free_slot < 0) {
        *why = "too many distinct ca_file paths";
        return NULL;
    }
    if (strlen(ca_file) >= NV_PATH_BYTES_MAX) {
        *why = "ca_file path too long";
        return NULL;
    }
    SSL_CTX *ctx = ctx_new(1, ca_file);
    if (ctx == NULL) {
        ERR_clear_error();
        *why = "cannot load ca_file";
        return NULL;
    }
    snprintf(hc.ca[free_slot].path, sizeof hc.ca[free_slot].path, "%s", ca_file);
    hc.ca[free_slot].ctx = ctx;
    return ctx;
}

static int is_ip_literal(const char *host) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* A configured SSL for r: SNI for names (RFC 6066 forbids IPs there), peer name check. */
static SSL *ssl_new(hc_req *r) {
    SSL *ssl = SSL_new(r->ctx);
    if (ssl == NULL) return NULL;
    int ip = is_ip_literal(r->host);
    if (!ip && SSL_set_tlsext_host_name(ssl, r->host) != 1) goto err;
    if (r->verify) {
        if (ip) {
            if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), r->host) != 1) goto err;
        } else {
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            if (SSL_set1_host(ssl, r->host) != 1) goto err;
        }
    }
    return ssl;
err:
    SSL_free(ssl);
    return NULL;
}

/* ---- connections and the idle pool ---- */

static void conn_free(hc_conn *c) {
    bufferevent_free(c->bev); /* closes the socket and frees the SSL (BEV_OPT_CLOSE_ON_FREE) */
    free(c);
}

static void pool_unlink(hc_conn *c) {
    if (c->prev != NULL) c->prev->next = c->next;
    else hc.idle = c->next;
    if (c->next != NULL) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    hc.idle_len--;
    nv_assert(hc.idle_len >= 0);
}

/* An idle connection that becomes readable was closed by the server (or sent junk): drop it. */
static void idle_read_cb(struct bufferevent *bev, void *arg) {
    NV_UNUSED(bev);
    hc_conn *c = arg;
    pool_unlink(c);
    conn_free(c);
}

static void idle_event_cb(struct bufferevent *bev, short what, void *arg) {
    NV_UNUSED(bev), NV_UNUSED(what);
    hc_conn *c = arg;
    pool_unlink(c);
    conn_free(c);
}

static void pool_put(hc_conn *c) {
    int same = 0;
    for (hc_conn *p = hc.idle; p != NULL; p = p->next) /* bounded by NV_HTTP_CLIENT_IDLE_MAX */
        if (strcmp(p->key, c->key) == 0) same++;
    if (same >= NV_HTTP_CLIENT_IDLE_PER_ORIGIN_MAX || hc.idle_len >= NV_HTTP_CLIENT_IDLE_MAX) {
        conn_free(c);
        return;
    }
    struct timeval idle = {.tv_sec = NV_HTTP_CLIENT_IDLE_MS / 1000,
                           .tv_usec = (NV_HTTP_CLIENT_IDLE_MS % 1000) * 1000};
    bufferevent_setcb(c->bev, idle_read_cb, NULL, idle_event_cb, c);
    if (bufferevent_set_timeouts(c->bev, &idle, NULL) != 0 || bufferevent_enable(c->bev, EV_READ) != 0) {
        conn_free(c);
        return;
    }
    c->prev = NULL;
    c->next = hc.idle;
    if (hc.idle != NULL) hc.idle->prev = c;
    hc.idle = c;
    hc.idle_len++;
}

static hc_conn *pool_take(const char *key) {
    for (hc_conn *c = hc.idle; c != NULL; c = c->next) {
        if (strcmp(c->key, key) != 0) continue;
        pool_unlink(c);
        return c;
    }
    return NULL;
}

/* ---- request lifetime ---- */

static void live_unlink(hc_req *r) {
    if (r->prev != NULL) r->prev->next = r->next;
    else hc.live = r->next;
    if (r->next != NULL) r->next->prev = r->prev;
    r->prev = r->next = NULL;
    hc.live_len--;
}

static void conn_drop(hc_req *r) {
    if (r->conn != NULL) {
        conn_free(r->conn);
        r->conn = NULL;
    }
    if (r->raw_fd >= 0) {
        close(r->raw_fd);
        r->raw_fd = -1;
    }
}

/* Stops every piece of I/O of r; the connection goes back to the pool when keep_conn. */
static void req_release(hc_req *r, int keep_conn) {
    if (r->released) return;
    r->released = 1;
    if (r->dns != NULL) {
        struct evdns_getaddrinfo_request *d = r->dns;
        r->dns = NULL;
        evdns_getaddrinfo_cancel(d); /* calls dns_cb with EVUTIL_EAI_CANCEL, which returns at once */
    }
    if (r->timer != NULL) {
        event_free(r->timer);
        r->timer = NULL;
    }
    if (keep_conn && r->conn != NULL && r->raw_fd < 0) {
        pool_put(r->conn);
        r->conn = NULL;
    }
    conn_drop(r);
    live_unlink(r);
}

static void req_free_buffers(hc_req *r) {
    free(r->data), r->data = NULL;
    free(r->head), r->head = NULL;
    free(r->body), r->body = NULL;
    r->body_len = r->body_cap = 0;
}

/* Pushes the outcome: status, headers (lower-case names, repeats joined by ", "), body; or
 * nil, err. Header names are lowered in r->head, which r owns. */
static int req_push(lua_State *L, hc_req *r) {
    if (!r->ok) {
        lua_pushnil(L);
        lua_pushstring(L, r->err);
        return 2;
    }
    lua_pushinteger(L, r->h.status);
    lua_createtable(L, 0, (int)r->h.headers_len);
    for (uint32_t i = 0; i < r->h.headers_len; i++) {
        nv_http_header *hd = &r->h.headers[i];
        char *name = (char *)hd->name; /* points into r->head, our copy */
        for (uint32_t j = 0; j < hd->name_len; j++)
            if (name[j] >= 'A' && name[j] <= 'Z') name[j] = (char)(name[j] | 0x20);
        lua_pushlstring(L, name, hd->name_len);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isstring(L, -1)) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, hd->value, hd->value_len);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, hd->value, hd->value_len);
        }
        lua_rawset(L, -3);
    }
    lua_pushlstring(L, r->body != NULL ? r->body : "", r->body_len);
    return 3;
}

/* The outcome is known: stop I/O, then wake the task (last: it may reuse the connection, start
 * another request, or end the state's last task). */
static void req_finish(hc_req *r, int ok, const char *fmt, ...) {
    if (r->finished) return;
    r->finished = 1;
    r->ok = ok ? 1 : 0;
    if (!ok) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, sizeof r->err, fmt, ap);
        va_end(ap);
    }
    r->phase = HC_DONE;
    req_release(r, ok && r->reusable);
    if (!r->waiting) return; /* finished before the task yielded: hc_request pushes */
    nv_task *t = r->task;
    lua_State *co = t->co;
    if (!lua_checkstack(co, 8)) {
        r->ok = 0;
        snprintf(r->err, sizeof r->err, "out of memory");
    }
    int n = req_push(co, r);
    req_free_buffers(r);
    luaL_unref(co, LUA_REGISTRYINDEX, r->ref);
    r->ref = LUA_NOREF;
    nv_task_wake(t, n);
}

/* An errno as a lower-case message: "connection refused". */
static void errno_text(int e, char *out, size_t n) {
    snprintf(out, n, "%s", e != 0 ? evutil_socket_error_to_string(e) : "connection failed");
    if (out[0] >= 'A' && out[0] <= 'Z') out[0] = (char)(out[0] | 0x20);
}

/* ---- timer ---- */

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    hc_req *r = arg;
    int connecting = r->phase == HC_DNS || r->phase == HC_CONNECT || r->phase == HC_PROXY || r->phase == HC_TLS;
    req_finish(r, 0, connecting && r->connect_deadline_us < r->deadline_us ? "connect timeout" : "timeout");
}

static void timer_arm(hc_req *r, uint64_t deadline_us) {
    uint64_t now = nv_rt_now_us();
    uint64_t us = deadline_us > now ? deadline_us - now : 0;
    struct timeval tv = {.tv_sec = (time_t)(us / 1000000), .tv_usec = (suseconds_t)(us % 1000000)};
    if (event_add(r->timer, &tv) != 0) req_finish(r, 0, "cannot arm the request timer");
}

/* ---- response reading ---- */

/* Makes room for `more` body bytes, never past max_body_bytes. Returns the room there is. */
static size_t body_reserve(hc_req *r, size_t more) {
    size_t want = r->body_len + more;
    if (want > r->max_body_bytes) want = r->max_body_bytes;
    if (want > r->body_cap) {
        size_t cap = r->body_cap < 4096 ? 4096 : r->body_cap;
        while (cap < want) cap = cap > SIZE_MAX / 2 ? want : cap * 2;
        if (cap > r->max_body_bytes) cap = r->max_body_bytes;
        char *b = realloc(r->body, cap > 0 ? cap : 1);
        if (b == NULL) return r->body_cap - r->body_len;
        r->body = b;
        r->body_cap = cap;
    }
    return want - r->body_len;
}

/* Reusable only when both directions are at a message boundary: nothing unread after the body,
 * and nothing of the request left unsent (a server may answer early, say 413, mid-upload). */
static void body_done(hc_req *r) {
    struct evbuffer *in = bufferevent_get_input(r->conn->bev);
    struct evbuffer *out = bufferevent_get_output(r->conn->bev);
    r->reusable = r->h.keep_alive && r->kind != NV_HTTP_BODY_CLOSE && evbuffer_get_length(in) == 0 &&
                  evbuffer_get_length(out) == 0;
    req_finish(r, 1, NULL);
}

/* req_finish with an error, for functions that return NV_ERR. */
static int fail_err(hc_req *r, const char *why) {
    req_finish(r, 0, "%s", why);
    return NV_ERR;
}

/* Parses the head at the start of in. Returns NV_OK (body phase set up), HC_WAIT (more bytes
 * needed), NV_AGAIN (a 1xx was skipped: call again) or NV_ERR (finished with an error). */
static int read_head(hc_req *r, struct evbuffer *in) {
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < r->max_header_bytes ? avail : r->max_header_bytes;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    if (p == NULL && n > 0) return fail_err(r, "out of memory");
    int rc = nv_http_response_parse(p != NULL ? p : "", n, r->max_header_bytes, &r->h);
    if (rc == NV_AGAIN) return HC_WAIT;
    if (rc == NV_HTTP_RESPONSE_TOO_LARGE) return fail_err(r, "response too large");
    if (rc != NV_OK) return req_finish(r, 0, "bad response: %s", r->h.error), NV_ERR;
    if (r->h.status < 200) {
        if (r->h.status == 101) return fail_err(r, "bad response: unexpected 101");
        evbuffer_drain(in, r->h.head_bytes); /* 100 Continue and friends: the real answer follows */
        return NV_AGAIN;
    }
    size_t hb = r->h.head_bytes;
    r->head = malloc(hb);
    if (r->head == NULL) return fail_err(r, "out of memory");
    if (evbuffer_remove(in, r->head, hb) != (int)hb) return fail_err(r, "cannot read the response head");
    rc = nv_http_response_parse(r->head, hb, r->max_header_bytes, &r->h); /* pointers into our copy */
    nv_assert(rc == NV_OK && r->h.head_bytes == hb);
    r->kind = nv_http_response_body_kind(&r->h, r->head_request);
    r->phase = HC_BODY;
    if (r->kind == NV_HTTP_BODY_LENGTH) {
        if ((uint64_t)r->h.content_length > r->max_body_bytes) return fail_err(r, "response too large");
        r->remaining = r->h.content_length;
        if (body_reserve(r, (size_t)r->remaining) < (size_t)r->remaining) return fail_err(r, "out of memory");
    } else if (r->kind == NV_HTTP_BODY_CHUNKED) {
        nv_http_chunked_init(&r->chunked);
    }
    return NV_OK;
}

/* Moves body bytes out of in. Returns NV_OK when the body is complete, NV_AGAIN for more. */
static int read_body(hc_req *r, struct evbuffer *in) {
    size_t avail = evbuffer_get_length(in);
    switch (r->kind) {
    case NV_HTTP_BODY_NONE:
        return NV_OK;
    case NV_HTTP_BODY_LENGTH: {
        size_t take = (uint64_t)r->remaining < avail ? (size_t)r->remaining : avail;
        if (take > 0 && evbuffer_remove(in, r->body + r->body_len, take) != (int)take) return NV_ERR;
        r->body_len += take;
        r->remaining -= (int64_t)take;
        return r->remaining == 0 ? NV_OK : NV_AGAIN;
    }
    case NV_HTTP_BODY_CHUNKED: {
        size_t n = avail < HC_PULL_BYTES ? avail : HC_PULL_BYTES;
        if (n == 0) return NV_AGAIN;
        const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
        if (p == NULL) return NV_ERR;
        /* One call writes at most the n raw bytes it reads, so room for n is all the memory it
         * needs; out_max is the limit itself, since the decoder judges each chunk-size line
         * against it before the chunk's bytes arrive. */
        size_t room = body_reserve(r, n);
        if (room < n && r->body_len + room < r->max_body_bytes) return NV_ERR;
        size_t used = 0;
        int rc = nv_http_chunked_feed(&r->chunked, p, n, &used, r->body, r->max_body_bytes, &r->body_len);
        evbuffer_drain(in, used);
        if (rc == NV_HTTP_CHUNKED_TOO_LARGE) return NV_HTTP_RESPONSE_TOO_LARGE;
        if (rc != NV_OK && rc != NV_AGAIN) return NV_HTTP_RESPONSE_BAD;
        return rc;
    }
    case NV_HTTP_BODY_CLOSE: {
        if (r->body_len + avail > r->max_body_bytes) return NV_HTTP_RESPONSE_TOO_LARGE;
        if (body_reserve(r, avail) < avail) return NV_ERR;
        if (avail > 0 && evbuffer_remove(in, r->body + r->body_len, avail) != (int)avail) return NV_ERR;
        r->body_len += avail;
        return NV_AGAIN; /* complete only at EOF */
    }
    }
    return NV_ERR;
}

static void proxy_answer(hc_req *r, struct evbuffer *in);

static void read_cb(struct bufferevent *bev, void *arg) {
    hc_req *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (evbuffer_get_length(in) > 0) r->got_bytes = 1;
    if (r->phase == HC_PROXY) {
        proxy_answer(r, in);
        return;
    }
    /* Bounded: each turn either consumes a head or body bytes, or returns. */
    for (int i = 0; i < NV_HTTP_CLIENT_READS_PER_EVENT_MAX; i++) {
        if (r->phase == HC_HEAD) {
            int rc = read_head(r, in);
            if (rc == NV_ERR || rc == HC_WAIT) return;
            if (rc == NV_AGAIN) continue;
        }
        if (r->phase != HC_BODY) return;
        int rc = read_body(r, in);
        if (rc == NV_OK) {
            body_done(r);
            return;
        }
        if (rc == NV_HTTP_RESPONSE_TOO_LARGE) return req_finish(r, 0, "response too large");
        if (rc == NV_HTTP_RESPONSE_BAD)
            return req_finish(r, 0, "bad response: %s", r->chunked.error ? r->chunked.error : "bad chunked body");
        if (rc == NV_ERR) return req_finish(r, 0, "out of memory");
        if (evbuffer_get_length(in) == 0) return;
    }
    /* Turns used up with bytes left: carry on next turn of the loop, after others had theirs. */
    bufferevent_trigger(bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* ---- events: connected, closed, failed ---- */

/* Why a connection or handshake failed, without any request data. */
static void failure_text(hc_req *r, struct bufferevent *bev, int e, char *out, size_t n) {
    SSL *ssl = r->tls ? bufferevent_openssl_get_ssl(bev) : NULL;
    if (ssl != NULL) {
        long vr = SSL_get_verify_result(ssl);
        if (r->verify && vr != X509_V_OK) {
            snprintf(out, n, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
            ERR_clear_error(); /* the queue is per thread: leave nothing for the next OpenSSL caller */
            return;
        }
        unsigned long oe = bufferevent_get_openssl_error(bev);
        if (oe != 0) {
            char buf[160];
            ERR_error_string_n(oe, buf, sizeof buf);
            snprintf(out, n, "tls handshake failed: %s", buf);
            ERR_clear_error();
            return;
        }
    }
    errno_text(e, out, n);
}

/* A pooled connection the server closed while we sent: retry once on a fresh connection when
 * the method is idempotent and no byte of an answer came back. */
static int try_retry(hc_req *r) {
    if (!r->reused || r->retried || !r->idempotent || r->got_bytes || r->phase != HC_HEAD) return 0;
    r->retried = 1;
    r->reused = 0;
    hc.retries++;
    conn_drop(r);
    req_resolve(r);
    return 1;
}

static void upgrade(hc_req *r);

static void connected(hc_req *r) {
    if (r->phase == HC_CONNECT && r->raw_fd >= 0 && r->proxy_host[0] == '\0') return upgrade(r);
    if (r->phase == HC_CONNECT && r->proxy_host[0] != '\0') {
        char line[HC_KEY_BYTES + 64];
        int n = snprintf(line, sizeof line, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n", r->host, r->port,
                         r->host, r->port);
        r->phase = HC_PROXY;
        if (bufferevent_write(r->conn->bev, line, (size_t)n) != 0) req_finish(r, 0, "proxy: cannot write");
        return;
    }
    req_send(r);
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
    hc_req *r = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (what & BEV_EVENT_CONNECTED) {
        connected(r);
        return;
    }
    if (r->phase == HC_HEAD && try_retry(r)) return;
    char why[HC_ERR_BYTES];
    if (r->phase == HC_CONNECT || r->phase == HC_TLS) {
        if ((what & BEV_EVENT_EOF) && r->phase == HC_TLS)
            return req_finish(r, 0, "connection closed during the TLS handshake");
        failure_text(r, bev, (what & BEV_EVENT_EOF) ? ECONNRESET : e, why, sizeof why);
        return req_finish(r, 0, "%s", why);
    }
    if (r->phase == HC_PROXY) return req_finish(r, 0, "proxy closed the connection");
    if (what & BEV_EVENT_EOF) {
        if (r->phase == HC_BODY) {
            /* Drain what arrived with the EOF (bounded: each turn takes up to HC_PULL_BYTES), then judge. */
            struct evbuffer *in = bufferevent_get_input(bev);
            int rc = read_body(r, in);
            for (int i = 0; i < NV_HTTP_CLIENT_READS_PER_EVENT_MAX; i++) {
                if (rc != NV_AGAIN || evbuffer_get_length(in) == 0) break;
                rc = read_body(r, in);
            }
            if (rc == NV_HTTP_RESPONSE_TOO_LARGE) return req_finish(r, 0, "response too large");
            if (r->kind == NV_HTTP_BODY_CLOSE && rc == NV_AGAIN) return body_done(r);
            if (rc == NV_OK) return body_done(r);
            return req_finish(r, 0, "connection closed before the end of the body");
        }
        return req_finish(r, 0, "connection closed before the response");
    }
    failure_text(r, bev, e, why, sizeof why);
    req_finish(r, 0, "%s", why);
}

/* ---- the steps ---- */

static void req_send(hc_req *r) {
    r->phase = HC_HEAD;
    r->got_bytes = 0;
    timer_arm(r, r->deadline_us);
    if (r->finished) return;
    struct bufferevent *bev = r->conn->bev;
    bufferevent_setcb(bev, read_cb, NULL, event_cb, r);
    if (bufferevent_set_timeouts(bev, NULL, NULL) != 0 || bufferevent_write(bev, r->data, r->data_len) != 0 ||
        bufferevent_enable(bev, EV_READ | EV_WRITE) != 0)
        req_finish(r, 0, "cannot write the request");
}

/* The TCP connection (direct, or the proxy's tunnel) is up on r->raw_fd: hand the socket to the
 * bufferevent that speaks the request, TLS or plain. */
static void upgrade(hc_req *r) {
    struct event_base *base = nv_rt_get()->base;
    struct bufferevent *bev;
    SSL *ssl = NULL;
    if (r->tls) {
        ssl = ssl_new(r);
        if (ssl == NULL) return req_finish(r, 0, "cannot create a TLS session");
        bev = bufferevent_openssl_socket_new(base, r->raw_fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                             BEV_OPT_CLOSE_ON_FREE);
    } else {
        bev = bufferevent_socket_new(base, r->raw_fd, BEV_OPT_CLOSE_ON_FREE);
    }
    if (bev == NULL) {
        SSL_free(ssl);
        return req_finish(r, 0, "out of memory");
    }
    bufferevent_free(r->conn->bev); /* made without BEV_OPT_CLOSE_ON_FREE: the socket stays */
    r->conn->bev = bev;
    r->raw_fd = -1; /* the new bufferevent owns it */
    if (!r->tls) return req_send(r);
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    r->phase = HC_TLS;
    bufferevent_setcb(bev, read_cb, NULL, event_cb, r);
    if (bufferevent_enable(bev, EV_READ | EV_WRITE) != 0) req_finish(r, 0, "cannot start the TLS handshake");
}

/* The proxy answered the CONNECT: on 2xx the socket becomes the tunnel. */
static void proxy_answer(hc_req *r, struct evbuffer *in) {
    size_t avail = evbuffer_get_length(in);
    size_t n = avail < r->max_header_bytes ? avail : r->max_header_bytes;
    const char *p = (const char *)evbuffer_pullup(in, (ev_ssize_t)n);
    nv_http_response_head *h = &r->h;
    int rc = nv_http_response_parse(p != NULL ? p : "", n, r->max_header_bytes, h);
    if (rc == NV_AGAIN) return;
    if (rc != NV_OK) return req_finish(r, 0, "proxy: bad CONNECT answer");
    if (h->status < 200 || h->status > 299) return req_finish(r, 0, "proxy refused CONNECT: %d", h->status);
    if (avail != h->head_bytes) return req_finish(r, 0, "proxy: data after the CONNECT answer");
    upgrade(r);
}

/* A plain bufferevent over a socket of our own when TLS or a proxy will take the socket over
 * once TCP is up (so a refused connect reads "connection refused", not a TLS failure); else a
 * bufferevent that owns its socket. */
static struct bufferevent *bev_for(hc_req *r) {
    struct event_base *base = nv_rt_get()->base;
    if (!r->tls && r->proxy_host[0] == '\0') return bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    int fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    struct bufferevent *bev = bufferevent_socket_new(base, fd, 0);
    if (bev == NULL) close(fd);
    else r->raw_fd = fd;
    return bev;
}

/* TCP connect to r->addr (the origin, or the proxy). */
static void req_step_connect(hc_req *r) {
    r->phase = HC_CONNECT;
    hc_conn *c = calloc(1, sizeof *c);
    if (c == NULL) return req_finish(r, 0, "out of memory");
    snprintf(c->key, sizeof c->key, "%s", r->key);
    c->bev = bev_for(r);
    if (c->bev == NULL) {
        free(c);
        return req_finish(r, 0, "cannot create a connection");
    }
    r->conn = c;
    hc.connects++;
    bufferevent_setcb(c->bev, read_cb, NULL, event_cb, r);
    if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) != 0 ||
        bufferevent_socket_connect(c->bev, (struct sockaddr *)&r->addr, (int)r->addr_len) != 0) {
        char why[HC_ERR_BYTES];
        errno_text(EVUTIL_SOCKET_ERROR(), why, sizeof why);
        return req_finish(r, 0, "%s", why);
    }
}

/* Copies ai (with the port) into r->addr. */
static void set_addr(hc_req *r, const struct sockaddr *sa, socklen_t len, int port) {
    memcpy(&r->addr, sa, len);
    r->addr_len = len;
    if (sa->sa_family == AF_INET) ((struct sockaddr_in *)&r->addr)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)&r->addr)->sin6_port = htons((uint16_t)port);
}

/* resolve_only: the answer is the addresses as text, comma-separated, in the body. */
static void resolved_text(hc_req *r, const char *text) {
    size_t n = strlen(text);
    r->body = malloc(n + 1);
    if (r->body == NULL) return req_finish(r, 0, "out of memory");
    memcpy(r->body, text, n + 1);
    r->body_len = n;
    req_finish(r, 1, NULL);
}

static void resolved_list(hc_req *r, struct evutil_addrinfo *res) {
    char list[NV_HTTP_CLIENT_RESOLVED_MAX * (INET6_ADDRSTRLEN + 1) + 1];
    size_t len = 0;
    int count = 0;
    list[0] = '\0';
    for (struct evutil_addrinfo *a = res; a != NULL && count < NV_HTTP_CLIENT_RESOLVED_MAX; a = a->ai_next) {
        char ip[INET6_ADDRSTRLEN];
        const void *src = a->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                        : a->ai_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr
                        : NULL;
        if (src == NULL || inet_ntop(a->ai_family, src, ip, sizeof ip) == NULL) continue;
        int w = snprintf(list + len, sizeof list - len, "%s%s", count > 0 ? "," : "", ip);
        if (w < 0 || (size_t)w >= sizeof list - len) break;
        len += (size_t)w;
        count++;
    }
    evutil_freeaddrinfo(res);
    if (count == 0) return req_finish(r, 0, "dns: no usable address for %s", r->host);
    resolved_text(r, list);
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg) {
    if (result == EVUTIL_EAI_CANCEL) return; /* req_release cancelled it; r may be going away */
    hc_req *r = arg;
    r->dns = NULL;
    const char *name = r->proxy_host[0] != '\0' ? r->proxy_host : r->host;
    int port = r->proxy_host[0] != '\0' ? r->proxy_port : r->port;
    if (result != 0 || res == NULL) {
        if (res != NULL) evutil_freeaddrinfo(res);
        if (strcasecmp(name, "localhost") == 0) { /* RFC 6761: loopback, even without a hosts entry */
            if (r->resolve_only) return resolved_text(r, "127.0.0.1");
            struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            set_addr(r, (struct sockaddr *)&lo, sizeof lo, port);
            return req_step_connect(r);
        }
        return req_finish(r, 0, "dns: cannot resolve %s: %s", name, evutil_gai_strerror(result));
    }
    if (r->resolve_only) return resolved_list(r, res);
    struct evutil_addrinfo *pick = res;
    for (struct evutil_addrinfo *a = res; a != NULL; a = a->ai_next) /* IPv4 first: loopback setups */
        if (a->ai_family == AF_INET) { pick = a; break; }
    if (pick->ai_addrlen > sizeof r->addr || (pick->ai_family != AF_INET && pick->ai_family != AF_INET6)) {
        evutil_freeaddrinfo(res);
        return req_finish(r, 0, "dns: no usable address for %s", name);
    }
    set_addr(r, pick->ai_addr, (socklen_t)pick->ai_addrlen, port);
    evutil_freeaddrinfo(res);
    req_step_connect(r);
}

static struct evdns_base *dns_base(void) {
    if (hc.dns != NULL) return hc.dns;
    /* DISABLE_WHEN_INACTIVE: an idle resolver must not keep the loop alive. */
    hc.dns = evdns_base_new(nv_rt_get()->base,
                            EVDNS_BASE_INITIALIZE_NAMESERVERS | EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (hc.dns == NULL) return NULL;
    if (evdns_base_set_option(hc.dns, "timeout:", NV_HTTP_CLIENT_DNS_TIMEOUT_S) != 0 ||
        evdns_base_set_option(hc.dns, "attempts:", NV_HTTP_CLIENT_DNS_ATTEMPTS) != 0) {
        evdns_base_free(hc.dns, 0);
        hc.dns = NULL;
    }
    return hc.dns;
}

/* The address (a literal, or evdns), then connect. */
static void req_resolve(hc_req *r) {
    r->phase = HC_DNS;
    const char *name = r->proxy_host[0] != '\0' ? r->proxy_host : r->pin[0] != '\0' ? r->pin : r->host;
    int port = r->proxy_host[0] != '\0' ? r->proxy_port : r->port;
    struct sockaddr_in in4 = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    if (r->resolve_only) {
        name = r->host;
        if (inet_pton(AF_INET, name, &in4.sin_addr) == 1 || inet_pton(AF_INET6, name, &in6.sin6_addr) == 1)
            return resolved_text(r, name);
    }
    if (inet_pton(AF_INET, name, &in4.sin_addr) == 1) {
        set_addr(r, (struct sockaddr *)&in4, sizeof in4, port);
        return req_step_connect(r);
    }
    if (inet_pton(AF_INET6, name, &in6.sin6_addr) == 1) {
        set_addr(r, (struct sockaddr *)&in6, sizeof in6, port);
        return req_step_connect(r);
    }
    struct evdns_base *dns = dns_base();
    if (dns == NULL) return req_finish(r, 0, "dns: cannot start the resolver");
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                                    .ai_protocol = IPPROTO_TCP};
    /* May call dns_cb before it returns (hosts file, cache): dns_cb then sets r->dns to NULL
     * and so does the return value. */
    r->dns = evdns_getaddrinfo(dns, name, NULL, &hints, dns_cb, r);
}

/* First step: a pooled connection, else a new one. */
static void req_start(hc_req *r) {
    timer_arm(r, r->connect_deadline_us);
    if (r->finished) return;
    hc_conn *c = r->resolve_only ? NULL : pool_take(r->key);
    if (c == NULL) return req_resolve(r);
    hc.reuses++;
    r->conn = c;
    r->reused = 1;
    req_send(r);
}

/* ---- Lua ---- */

static const char *opt_string(lua_State *L, const char *k, size_t *len) {
    lua_getfield(L, 1, k);
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1); /* the string stays alive: the options table holds it */
    return s;
}

static lua_Integer opt_int(lua_State *L, const char *k, lua_Integer def, lua_Integer min, lua_Integer max) {
    lua_getfield(L, 1, k);
    lua_Integer v = lua_isnil(L, -1) ? def : lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (v < min || v > max) luaL_error(L, "%s must be in [%d, %d]", k, (int)min, (int)max);
    return v;
}

static int opt_bool(lua_State *L, const char *k) {
    lua_getfield(L, 1, k);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static void copy_host(lua_State *L, const char *k, char *out, int required) {
    size_t n = 0;
    const char *s = opt_string(L, k, &n);
    if (s == NULL) {
        if (required) luaL_error(L, "%s is required", k);
        out[0] = '\0';
        return;
    }
    if (n == 0 || n > NV_HTTP_CLIENT_HOST_BYTES_MAX || memchr(s, '\0', n) != NULL) luaL_error(L, "bad %s", k);
    memcpy(out, s, n + 1);
}

/* Reads the options into r; raises on a caller's bug. */
static void req_options(lua_State *L, hc_req *r) {
    size_t n = 0;
    const char *scheme = opt_string(L, "scheme", NULL);
    if (scheme == NULL || (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
        luaL_error(L, "scheme must be http or https");
    r->tls = scheme[4] == 's';
    copy_host(L, "host", r->host, 1);
    r->port = (int)opt_int(L, "port", r->tls ? 443 : 80, 1, 65535);
    copy_host(L, "proxy_host", r->proxy_host, 0);
    copy_host(L, "pin", r->pin, 0);
    if (r->pin[0] != '\0') {
        struct in6_addr probe;
        if (inet_pton(AF_INET, r->pin, &probe) != 1 && inet_pton(AF_INET6, r->pin, &probe) != 1)
            luaL_error(L, "pin must be an IP address");
    }
    r->resolve_only = opt_bool(L, "resolve_only");
    r->proxy_port = (int)opt_int(L, "proxy_port", 3128, 1, 65535);
    const char *data = opt_string(L, "data", &n);
    if (data == NULL || n == 0 || n > NV_HTTP_CLIENT_REQUEST_BYTES_MAX)
        luaL_error(L, "data must be the request bytes");
    r->data_len = n;
    r->head_request = opt_bool(L, "head");
    r->idempotent = opt_bool(L, "idempotent");
    r->verify = !opt_bool(L, "insecure");
    int64_t timeout_ms = opt_int(L, "timeout_ms", NV_HTTP_CLIENT_TIMEOUT_MS_DEFAULT, 1,
                                 NV_HTTP_CLIENT_TIMEOUT_MS_MAX);
    int64_t connect_ms = opt_int(L, "connect_timeout_ms", NV_HTTP_CLIENT_CONNECT_TIMEOUT_MS_DEFAULT, 1,
                                 NV_HTTP_CLIENT_TIMEOUT_MS_MAX);
    r->max_body_bytes = (size_t)opt_int(L, "max_body_bytes", NV_HTTP_CLIENT_BODY_BYTES_DEFAULT, 0,
                                        NV_HTTP_CLIENT_BODY_BYTES_MAX);
    r->max_header_bytes = (size_t)opt_int(L, "max_header_bytes", NV_HTTP_CLIENT_HEADER_BYTES_DEFAULT, 64,
                                          NV_HTTP_CLIENT_HEADER_BYTES_MAX);
    uint64_t now = nv_rt_now_us();
    r->deadline_us = now + (uint64_t)timeout_ms * 1000;
    r->connect_deadline_us = now + (uint64_t)connect_ms * 1000;
    if (r->connect_deadline_us > r->deadline_us) r->connect_deadline_us = r->deadline_us;
}

static int req_gc(lua_State *L) {
    hc_req *r = luaL_checkudata(L, 1, HC_REQ_MT);
    req_release(r, 0);
    req_free_buffers(r);
    return 0;
}

/* request(opts) -> status, headers, body | nil, err. opts: scheme, host, port, data (the
 * request bytes), head, idempotent, insecure, timeout_ms, connect_timeout_ms, max_body_bytes,
 * max_header_bytes, ca_file, proxy_host, proxy_port. nuvion.http builds them. */
static int hc_request(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    nv_task *t = nv_task_of(L);
    if (t == NULL) return luaL_error(L, "http.request() must be called from a task, not a nested coroutine");
    lua_settop(L, 1);
    hc_req *r = lua_newuserdata(L, sizeof *r);
    memset(r, 0, sizeof *r);
    r->released = 1; /* nothing to release until it is live */
    r->raw_fd = -1;
    r->ref = LUA_NOREF;
    luaL_getmetatable(L, HC_REQ_MT);
    lua_setmetatable(L, -2);
    req_options(L, r);
    const char *why = NULL;
    if (r->tls) {
        r->ctx = ctx_get(r->verify, r->verify ? opt_string(L, "ca_file", NULL) : NULL, &why);
        if (r->ctx == NULL) return lua_pushnil(L), lua_pushstring(L, why), 2;
    }
    if (hc.live_len >= NV_HTTP_CLIENT_REQUESTS_MAX)
        return lua_pushnil(L), lua_pushliteral(L, "too many requests in flight"), 2;
    /* The context pointer stands for verify and ca_file: one context per setting. */
    snprintf(r->key, sizeof r->key, "%s|%s|%d|%s|%d|%s|%p", r->tls ? "https" : "http", r->host, r->port,
             r->proxy_host, r->proxy_port, r->pin, (void *)r->ctx);
    r->data = malloc(r->data_len);
    r->timer = event_new(nv_rt_get()->base, -1, 0, timer_cb, r);
    if (r->data == NULL || r->timer == NULL) {
        if (r->timer != NULL) event_free(r->timer), r->timer = NULL;
        return luaL_error(L, "http.request(): out of memory");
    }
    memcpy(r->data, opt_string(L, "data", NULL), r->data_len);
    r->task = t;
    r->released = 0;
    r->next = hc.live;
    if (hc.live != NULL) hc.live->prev = r;
    hc.live = r;
    hc.live_len++;

    req_start(r);
    if (r->finished) {
        int n = req_push(L, r);
        req_free_buffers(r);
        return n;
    }
    lua_pushvalue(L, 2);
    r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    r->waiting = 1;
    return nv_task_yield(L);
}

static int hc_stats(lua_State *L) {
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, hc.idle_len), lua_setfield(L, -2, "idle");
    lua_pushinteger(L, hc.live_len), lua_setfield(L, -2, "in_flight");
    lua_pushnumber(L, (lua_Number)hc.connects), lua_setfield(L, -2, "connects");
    lua_pushnumber(L, (lua_Number)hc.reuses), lua_setfield(L, -2, "reuses");
    lua_pushnumber(L, (lua_Number)hc.retries), lua_setfield(L, -2, "retries");
    return 1;
}

/* The last state of the worker closes: nothing may outlive it (the loop goes next). */
static void hc_shutdown(void) {
    while (hc.live != NULL) req_release(hc.live, 0); /* each call unlinks one */
    while (hc.idle != NULL) {
        hc_conn *c = hc.idle;
        pool_unlink(c);
        conn_free(c);
    }
    if (hc.dns != NULL) evdns_base_free(hc.dns, 0), hc.dns = NULL;
    SSL_CTX_free(hc.ctx_system), hc.ctx_system = NULL;
    SSL_CTX_free(hc.ctx_noverify), hc.ctx_noverify = NULL;
    for (int i = 0; i < NV_HTTP_CLIENT_CA_FILES_MAX; i++) SSL_CTX_free(hc.ca[i].ctx), hc.ca[i].ctx = NULL;
}

static int sentinel_gc(lua_State *L) {
    NV_UNUSED(L);
    nv_assert(hc.states > 0);
    if (--hc.states == 0) hc_shutdown();
    return 0;
}

int luaopen_nuvion_http_c(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"request", hc_request},
        {"stats", hc_stats},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, HC_REQ_MT)) {
        lua_pushcfunction(L, req_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    /* One sentinel per state: its __gc runs when the state closes. */
    lua_getfield(L, LUA_REGISTRYINDEX, HC_SENTINEL);
    if (lua_isnil(L, -1)) {
        lua_newuserdata(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, sentinel_gc);
        lua_setfield(L, -2, "__gc");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, HC_SENTINEL);
        hc.states++;
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, (int)NV_ARRAY_LEN(fns));
    luaL_register(L, NULL, fns);
    return 1;
}
