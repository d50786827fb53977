/* http_server.c -- HTTP/1.1 connections of one worker: accept, read, parse,
 * enforce the limits, run each request as a Lua task, write the responses.
 *
 * One request per connection is handled at a time (pipelined requests wait in
 * the input buffer, their responses leave in order). A request whose handler
 * finishes without waiting is answered inside the read callback, so a burst of
 * pipelined requests costs one read and one write. A handler that waits on I/O
 * stops reading on its connection until it has answered. */
#include "http_server.h"

#include <errno.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "http_parser.h"
#include "nv_limits.h"
#include "log.h"
#include "lua_core.h"
#include "runtime.h"

#define NV_HTTP_READ_CHUNK_BYTES (16 * 1024)   /* room made before each read */
#define NV_HTTP_OUT_KEEP_BYTES (64 * 1024)     /* larger output buffers are freed once written */
#define NV_HTTP_LINGER_MS 1000                 /* reading and dropping input after an error response */
#define NV_HTTP_REQUEST_ID_MAX 200             /* longest X-Request-ID we adopt */
#define NV_HTTP_TICK_MS_MIN 5

typedef enum conn_state {
    CONN_IDLE = 0,     /* between requests */
    CONN_HEAD = 1,     /* reading a request head */
    CONN_BODY = 2,     /* reading a request body */
    CONN_HANDLING = 3, /* its task runs */
    CONN_LINGER = 4,   /* error answered, write side shut, draining input before close */
    CONN_CLOSED = 5,   /* fd closed; the struct waits for its task to finish */
} conn_state;

typedef struct nv_conn nv_conn;

struct nv_conn {
    nv_http_server *srv;
    int fd;
    conn_state state;
    struct event *rev;         /* EV_READ|EV_PERSIST; timeouts are checked by the server's sweep */
    struct event *wev;         /* added while output waits for the socket */
    struct event *deadline_ev; /* handler deadline, armed when a task waits */
    nv_buf in, out;
    size_t out_off;            /* bytes of out already written */
    nv_http_request_head head;
    const char *head_base;     /* in.data when head was parsed: its pointers point there */
    nv_http_chunked chunked;
    nv_buf body;               /* decoded chunked body */
    const char *body_ptr;
    size_t body_len;
    size_t req_bytes;          /* input bytes of the current request, dropped once answered */
    uint64_t seq;              /* requests seen: a stale request handle fails its check */
    uint64_t req_start_us;
    uint64_t last_active_us;
    uint64_t linger_until_us;
    nv_task task;
    unsigned task_active : 1;
    unsigned in_dispatch : 1;  /* the task runs inside conn_process */
    unsigned responded : 1;    /* answered (maybe by the deadline) before the task ended */
    unsigned close_after_write : 1;
    unsigned reading : 1;      /* rev is added */
    char request_id[NV_HTTP_REQUEST_ID_MAX + 1];
    char trace_id[33];
    nv_conn *prev, *next;
};

struct nv_http_server {
    struct event_base *base;
    int fd;
    struct event *accept_ev;
    const nv_config *cfg;
    nv_metrics *metrics;
    int worker;
    int conns;
    nv_conn *list;
    struct event *sweep_ev;    /* every tick: checks the timeouts of every connection */
    size_t in_max;
    int draining;
    time_t date_sec;
    char date[40];
};

static void conn_process(nv_conn *c);
static void conn_flush(nv_conn *c);
static void conn_close(nv_conn *c);

/* ---- responses ---- */

static const char *status_text(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 400 ? "OK" : "Error";
    }
}

static const char *http_date(nv_http_server *s) {
    time_t now = time(NULL);
    if (now != s->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_sec = now;
    }
    return s->date;
}

#define OUT_LIT(c, s) nv_buf_append(&(c)->out, (s), sizeof(s) - 1, NV_HTTP_WRITE_BYTES_MAX)

static char *fmt_u64(char *end, uint64_t v) {
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

/* Appends one header line from Lua (name, value), refusing CR/LF injection. */
static int append_lua_header(nv_conn *c, const char *k, size_t kl, const char *v, size_t vl) {
    for (size_t i = 0; i < kl; i++)
        if (k[i] == '\r' || k[i] == '\n' || k[i] == ':' || k[i] == ' ') return NV_ERR;
    for (size_t i = 0; i < vl; i++)
        if (v[i] == '\r' || v[i] == '\n') return NV_ERR;
    int rc = nv_buf_append(&c->out, k, kl, NV_HTTP_WRITE_BYTES_MAX);
    rc |= OUT_LIT(c, ": ");
    rc |= nv_buf_append(&c->out, v, vl, NV_HTTP_WRITE_BYTES_MAX);
    rc |= OUT_LIT(c, "\r\n");
    return rc ? NV_ERR : NV_OK;
}

static void access_log(nv_conn *c, int status, const char *route, size_t route_len, size_t bytes) {
    uint64_t dur_us = nv_rt_now_us() - c->req_start_us;
    nv_metrics_request(c->srv->metrics, route, route_len, status, dur_us);
    if (!c->srv->cfg->access_log) return;
    char scratch[1024];
    nv_buf extra = {0};
    size_t max = NV_LOG_LINE_BYTES_MAX / 2;
    nv_buf_reserve(&extra, 512, max);
    nv_buf_append(&extra, "\"method\":\"", 10, max);
    nv_log_escape(&extra, c->head.method, c->head.method_len, max);
    nv_buf_append(&extra, "\",\"path\":\"", 10, max);
    nv_log_escape(&extra, c->head.path, c->head.path_len > 512 ? 512 : c->head.path_len, max);
    nv_buf_append(&extra, "\",\"route\":\"", 11, max);
    nv_log_escape(&extra, route, route_len, max);
    int n = snprintf(scratch, sizeof scratch, "\",\"status\":%d,\"duration_ms\":%.3f,\"bytes\":%zu",
                     status, (double)dur_us / 1000.0, bytes);
    nv_buf_append(&extra, scratch, (size_t)n, max);
    nv_log_line(status >= 500 ? NV_LOG_ERROR : NV_LOG_INFO, "request", 7, c->request_id,
                c->trace_id, extra.data, extra.len);
    nv_buf_free(&extra);
}

/* Response head bytes besides the content type, the request id and extra
 * headers: status line, Date, the header names and CRLFs (checked below). */
#define NV_HTTP_HEAD_FIXED_BYTES 256

static inline char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}
#define PUT_LIT(p, s) put((p), (s), sizeof(s) - 1)

/* Writes one whole response into the output buffer: one reservation, then
 * plain copies. headers_idx > 0 names a Lua table of extra headers on L. */
static void conn_respond(nv_conn *c, int status, const char *ctype, size_t ctype_len,
                         const char *body, size_t body_len, lua_State *L, int headers_idx,
                         const char *route, size_t route_len) {
    nv_assert(!c->responded);
    c->responded = 1;
    if (!c->head.keep_alive || c->srv->draining) c->close_after_write = 1;
    int no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
    int head_method = c->head.method_len == 4 && memcmp(c->head.method, "HEAD", 4) == 0;
    size_t id_len = strlen(c->request_id);
    size_t send_len = no_body || head_method ? 0 : body_len;
    if (nv_buf_reserve(&c->out, NV_HTTP_HEAD_FIXED_BYTES + ctype_len + id_len + send_len,
                       NV_HTTP_WRITE_BYTES_MAX) != NV_OK) {
        c->close_after_write = 1; /* larger than the output bound: the client gets a closed connection */
        nv_logf(NV_LOG_ERROR, "response of %zu bytes exceeds the output limit", body_len);
        access_log(c, status, route, route_len, body_len);
        return;
    }
    size_t start_len = c->out.len; /* an offset: appends below may move the buffer */
    char *start = c->out.data + start_len, *p = start;
    const char *text = status_text(status);
    char num[24];
    char *n = fmt_u64(num + sizeof num, (uint64_t)status);
    p = PUT_LIT(p, "HTTP/1.1 ");
    p = put(p, n, (size_t)(num + sizeof num - n));
    *p++ = ' ';
    p = put(p, text, strlen(text));
    p = PUT_LIT(p, "\r\nDate: ");
    p = put(p, http_date(c->srv), 29);
    if (!no_body) {
        p = PUT_LIT(p, "\r\nContent-Type: ");
        p = put(p, ctype, ctype_len);
        p = PUT_LIT(p, "\r\nContent-Length: ");
        n = fmt_u64(num + sizeof num, body_len);
        p = put(p, n, (size_t)(num + sizeof num - n));
    }
    p = PUT_LIT(p, "\r\nX-Request-ID: ");
    p = put(p, c->request_id, id_len);
    p = PUT_LIT(p, "\r\n");
    if (c->close_after_write) p = PUT_LIT(p, "Connection: close\r\n");
    else if (c->head.version_minor == 0) p = PUT_LIT(p, "Connection: keep-alive\r\n");
    c->out.len += (size_t)(p - start);
    nv_assert(c->out.len <= c->out.cap);
    int rc = NV_OK;
    if (L != NULL && headers_idx > 0 && lua_type(L, headers_idx) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, headers_idx) != 0) {
            size_t kl, vl;
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kl) : NULL;
            const char *v = lua_isstring(L, -1) ? lua_tolstring(L, -1, &vl) : NULL;
            if (k == NULL || v == NULL || append_lua_header(c, k, kl, v, vl) != NV_OK)
                nv_logf(NV_LOG_WARN, "dropped an invalid response header");
            lua_pop(L, 1);
        }
    }
    rc |= OUT_LIT(c, "\r\n");
    if (send_len > 0) rc |= nv_buf_append(&c->out, body, send_len, NV_HTTP_WRITE_BYTES_MAX);
    if (rc != NV_OK) {
        c->out.len = start_len;
        c->close_after_write = 1;
        nv_logf(NV_LOG_ERROR, "response of %zu bytes exceeds the output limit", body_len);
    }
    access_log(c, status, route, route_len, body_len);
}

/* An error answered by the host itself, in the API's error shape. */
static void conn_error(nv_conn *c, int status, const char *type, const char *code,
                       const char *message, int close) {
    char body[1024];
    nv_buf esc = {0};
    nv_log_escape(&esc, message, strlen(message), 512);
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"type\":\"%s\",\"code\":\"%s\",\"message\":\"%.*s\","
                     "\"request_id\":\"%s\"}}",
                     type, code, (int)esc.len, esc.data ? esc.data : "", c->request_id);
    nv_buf_free(&esc);
    if (n < 0 || (size_t)n >= sizeof body) n = 0;
    if (close) c->close_after_write = 1;
    conn_respond(c, status, "application/json", 16, body, (size_t)n, NULL, 0, "host", 4);
}

/* ---- request ids ---- */

static int is_hex(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f'))) return 0;
    return 1;
}

static void conn_set_ids(nv_conn *c) {
    const nv_http_header *h = nv_http_header_find(&c->head, "x-request-id", 12);
    int ok = h != NULL && h->value_len > 0 && h->value_len <= NV_HTTP_REQUEST_ID_MAX;
    for (uint32_t i = 0; ok && i < h->value_len; i++) {
        char ch = h->value[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '-' || ch == '_' || ch == '.' || ch == ':';
    }
    if (ok) {
        memcpy(c->request_id, h->value, h->value_len);
        c->request_id[h->value_len] = '\0';
    } else {
        nv_rt_random_hex(c->request_id, 16);
    }
    /* W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags> */
    h = nv_http_header_find(&c->head, "traceparent", 11);
    if (h != NULL && h->value_len >= 55 && h->value[2] == '-' && h->value[35] == '-' &&
        is_hex(h->value + 3, 32) && memcmp(h->value + 3, "00000000000000000000000000000000", 32) != 0) {
        memcpy(c->trace_id, h->value + 3, 32);
        c->trace_id[32] = '\0';
    } else {
        nv_rt_random_hex(c->trace_id, 16);
    }
}

/* ---- tasks ---- */

static void conn_task_result(nv_task *t, int ok, int nres) {
    nv_conn *c = t->owner;
    lua_State *co = t->co;
    if (c->responded || c->state == CONN_CLOSED) return; /* answered 504, or the client left */
    if (!ok) {
        const char *msg = lua_tostring(co, 3);
        nv_log_line(NV_LOG_ERROR, msg ? msg : "handler error (not a string)",
                    msg ? strlen(msg) : 28, c->request_id, c->trace_id, "\"event\":\"handler_error\"", 23);
        conn_error(c, 500, "api_error", "internal_error",
                   "The server failed to handle this request; quote the request_id when reporting it.", 0);
        return;
    }
    int status = nres >= 1 ? (int)lua_tointeger(co, 3) : 0;
    size_t body_len = 0, ctype_len = 0, route_len = 0;
    const char *body = nres >= 2 ? lua_tolstring(co, 4, &body_len) : NULL;
    const char *ctype = nres >= 3 ? lua_tolstring(co, 5, &ctype_len) : NULL;
    const char *route = nres >= 4 ? lua_tolstring(co, 6, &route_len) : NULL;
    if (status < 100 || status > 599 || (body == NULL && nres >= 2 && !lua_isnil(co, 4))) {
        nv_log_line(NV_LOG_ERROR, "handler returned an invalid response", 36, c->request_id,
                    c->trace_id, NULL, 0);
        conn_error(c, 500, "api_error", "internal_error", "The handler returned an invalid response.", 0);
        return;
    }
    if (body == NULL) body = "", body_len = 0;
    if (ctype == NULL) ctype = "application/json", ctype_len = 16;
    if (route == NULL) route = "unmatched", route_len = 9;
    conn_respond(c, status, ctype, ctype_len, body, body_len, co, nres >= 5 ? 7 : 0, route, route_len);
}

static void conn_request_done(nv_conn *c) {
    nv_assert(c->req_bytes <= c->in.len);
    nv_buf_consume(&c->in, c->req_bytes);
    c->req_bytes = 0;
    c->body.len = 0;
    nv_buf_shrink(&c->body, NV_HTTP_OUT_KEEP_BYTES);
    c->state = CONN_IDLE;
    c->last_active_us = nv_rt_now_us();
}

static void conn_free(nv_conn *c) {
    nv_http_server *s = c->srv;
    nv_assert(!c->task_active);
    if (c->prev) c->prev->next = c->next;
    else s->list = c->next;
    if (c->next) c->next->prev = c->prev;
    s->conns--;
    event_free(c->rev);
    if (c->wev) event_free(c->wev);
    if (c->deadline_ev) event_free(c->deadline_ev);
    nv_task_dispose(&c->task);
    nv_buf_free(&c->in);
    nv_buf_free(&c->out);
    nv_buf_free(&c->body);
    free(c);
}

static void conn_task_finish(nv_task *t) {
    nv_conn *c = t->owner;
    c->task_active = 0;
    if (c->deadline_ev) event_del(c->deadline_ev);
    if (c->state == CONN_CLOSED) {
        conn_free(c);
        return;
    }
    conn_request_done(c);
    if (c->in_dispatch) return; /* conn_process goes on with the next request */
    /* The answer came after a wait: read and serve again. */
    if (!c->close_after_write && !c->reading) {
        event_add(c->rev, NULL);
        c->reading = 1;
    }
    conn_process(c);
    conn_flush(c);
}

static void conn_deadline_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_conn *c = arg;
    if (!c->task_active || c->responded || c->state == CONN_CLOSED) return;
    nv_log_line(NV_LOG_WARN, "handler deadline passed; answering 504, the task goes on", 56,
                c->request_id, c->trace_id, NULL, 0);
    conn_error(c, 504, "api_error", "handler_timeout",
               "The request took longer than the server's deadline.", 1);
    conn_flush(c);
}

static void conn_dispatch(nv_conn *c) {
    nv_rt *rt = nv_rt_get();
    nv_http_server *s = c->srv;
    c->seq++;
    c->responded = 0;
    if (c->head.path_len == 8 && memcmp(c->head.path, "/metrics", 8) == 0 &&
        c->head.method_len == 3 && memcmp(c->head.method, "GET", 3) == 0) {
        nv_buf text = {0};
        nv_metrics_worker(s->metrics, s->worker, s->conns, nv_gen_memory_bytes());
        if (nv_metrics_render(s->metrics, rt->service, &text, NV_HTTP_WRITE_BYTES_MAX) == NV_OK)
            conn_respond(c, 200, "text/plain; version=0.0.4", 25, text.data, text.len, NULL, 0,
                         "/metrics", 8);
        else
            conn_error(c, 500, "api_error", "internal_error", "metrics could not be rendered", 0);
        nv_buf_free(&text);
        conn_request_done(c);
        return;
    }
    nv_gen *g = rt->gen;
    if (g == NULL || nv_task_prepare(&c->task, g) != NV_OK) {
        conn_error(c, 503, "api_error", "service_unavailable",
                   g == NULL ? "The service is starting." : "The service cannot take this request now.", 0);
        conn_request_done(c);
        return;
    }
    nv_task *t = &c->task;
    t->on_result = conn_task_result;
    t->on_finish = conn_task_finish;
    t->owner = c;
    t->request_id = c->request_id;
    t->trace_id = c->trace_id;
    lua_State *co = t->co;
    lua_rawgeti(co, LUA_REGISTRYINDEX, g->entry_ref);
    lua_pushlstring(co, c->head.method, c->head.method_len);
    lua_pushlstring(co, c->head.path, c->head.path_len);
    if (c->head.query_len > 0) lua_pushlstring(co, c->head.query, c->head.query_len);
    else lua_pushnil(co);
    lua_pushlightuserdata(co, c);
    lua_pushnumber(co, (lua_Number)c->seq);
    c->state = CONN_HANDLING;
    c->task_active = 1;
    c->in_dispatch = 1;
    int rc = nv_task_run(t);
    c->in_dispatch = 0;
    if (rc == NV_AGAIN && c->task_active) {
        if (c->reading) {
            event_del(c->rev);
            c->reading = 0;
        }
        if (c->deadline_ev == NULL) c->deadline_ev = evtimer_new(s->base, conn_deadline_cb, c);
        struct timeval tv = {s->cfg->handler_timeout_ms / 1000, (s->cfg->handler_timeout_ms % 1000) * 1000};
        if (c->deadline_ev != NULL) evtimer_add(c->deadline_ev, &tv);
    }
}

/* ---- reading requests ---- */

/* Returns 1 when the whole body is in, 0 when more input is needed or the
 * request was answered with an error. */
static int conn_read_body(nv_conn *c) {
    nv_http_server *s = c->srv;
    size_t hb = c->head.head_bytes;
    size_t body_max = (size_t)s->cfg->body_bytes_max;
    if (!c->head.chunked) {
        size_t cl = c->head.content_length > 0 ? (size_t)c->head.content_length : 0;
        if (c->in.len - hb < cl) return 0;
        c->body_ptr = c->in.data + hb;
        c->body_len = cl;
        c->req_bytes = hb + cl;
        return 1;
    }
    size_t raw = c->in.len - hb, consumed = 0;
    size_t room = body_max - c->body.len < raw ? body_max - c->body.len : raw;
    if (nv_buf_reserve(&c->body, room, body_max > 0 ? body_max : 1) != NV_OK) {
        conn_error(c, 500, "api_error", "internal_error", "out of memory reading the body", 1);
        return 0;
    }
    size_t out_max = c->body.cap < body_max ? c->body.cap : body_max;
    int rc = nv_http_chunked_feed(&c->chunked, c->in.data + hb, raw, &consumed, c->body.data,
                                  out_max, &c->body.len);
    if (rc == NV_HTTP_CHUNKED_TOO_LARGE || (rc == NV_AGAIN && c->body.len >= body_max && consumed < raw)) {
        conn_error(c, 413, "invalid_request_error", "request_too_large",
                   "The request body is larger than the server accepts.", 1);
        return 0;
    }
    if (rc != NV_OK && rc != NV_AGAIN) {
        conn_error(c, 400, "invalid_request_error", "bad_request",
                   c->chunked.error != NULL ? c->chunked.error : "malformed chunked body", 1);
        return 0;
    }
    /* Drop the raw chunks decoded so far; the head stays where its pointers point. */
    memmove(c->in.data + hb, c->in.data + hb + consumed, raw - consumed);
    c->in.len -= consumed;
    if (rc == NV_AGAIN) return 0;
    c->body_ptr = c->body.data;
    c->body_len = c->body.len;
    c->req_bytes = hb;
    return 1;
}

static int conn_read_head(nv_conn *c) {
    nv_http_server *s = c->srv;
    int rc = nv_http_parse_head(c->in.data, c->in.len, (size_t)s->cfg->header_bytes_max, &c->head);
    if (rc == NV_AGAIN) return 0;
    c->head_base = c->in.data;
    if (rc != NV_OK) {
        int status = nv_http_parse_status(rc);
        nv_rt_random_hex(c->request_id, 16);
        nv_rt_random_hex(c->trace_id, 16);
        c->head.keep_alive = 0;
        if (c->head.method == NULL) c->head.method = "", c->head.method_len = 0;
        if (c->head.path == NULL) c->head.path = "", c->head.path_len = 0;
        conn_error(c, status, "invalid_request_error",
                   status == 431 ? "request_header_fields_too_large"
                   : status == 414 ? "uri_too_long"
                   : status == 501 ? "not_implemented"
                   : status == 505 ? "http_version_not_supported" : "bad_request",
                   c->head.error != NULL ? c->head.error : nv_http_parse_message(rc), 1);
        return 0;
    }
    conn_set_ids(c);
    if (c->head.content_length > s->cfg->body_bytes_max) {
        conn_error(c, 413, "invalid_request_error", "request_too_large",
                   "The request body is larger than the server accepts.", 1);
        return 0;
    }
    if (c->head.chunked) {
        nv_http_chunked_init(&c->chunked);
        c->body.len = 0;
    }
    int has_body = c->head.chunked || c->head.content_length > 0;
    if (c->head.expect_continue && has_body && c->in.len == c->head.head_bytes)
        OUT_LIT(c, "HTTP/1.1 100 Continue\r\n\r\n");
    return 1;
}

static void conn_process(nv_conn *c) {
    for (int i = 0; i < NV_HTTP_PIPELINE_BATCH_MAX; i++) {
        if (c->state == CONN_HANDLING || c->state >= CONN_LINGER || c->close_after_write) return;
        if (c->state == CONN_IDLE) {
            if (c->in.len == 0) return;
            c->state = CONN_HEAD;
            c->req_start_us = nv_rt_now_us();
            c->responded = 0;
        }
        if (c->state == CONN_HEAD) {
            if (!conn_read_head(c)) return;
            c->state = CONN_BODY;
        }
        nv_assert(c->state == CONN_BODY);
        if (!conn_read_body(c)) return;
        if (c->in.data != c->head_base) {
            /* The buffer grew while the body arrived: point the head at its new
             * place (the head bytes did not move within the buffer). */
            int rc = nv_http_parse_head(c->in.data, c->head.head_bytes, c->head.head_bytes, &c->head);
            nv_assert(rc == NV_OK);
            NV_UNUSED(rc);
            c->head_base = c->in.data;
            if (!c->head.chunked) c->body_ptr = c->in.data + c->head.head_bytes;
        }
        conn_dispatch(c);
    }
    /* Batch used up with requests still buffered: come back next turn. */
    if (c->state == CONN_IDLE && c->in.len > 0) event_active(c->rev, EV_READ, 0);
}

/* ---- sockets ---- */

static void conn_close(nv_conn *c) {
    if (c->state == CONN_CLOSED) return;
    if (c->reading) event_del(c->rev);
    c->reading = 0;
    if (c->wev) event_del(c->wev);
    close(c->fd);
    c->fd = -1;
    c->state = CONN_CLOSED;
    if (!c->task_active) conn_free(c);
}

/* After an error answer: stop writing, drop what the client still sends for a
 * moment so it reads our answer instead of a reset, then close. */
static void conn_linger(nv_conn *c) {
    if (c->task_active) {
        conn_close(c);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    c->state = CONN_LINGER;
    c->linger_until_us = nv_rt_now_us() + NV_HTTP_LINGER_MS * 1000;
    if (!c->reading) {
        event_add(c->rev, NULL);
        c->reading = 1;
    }
}

static void conn_flush(nv_conn *c) {
    if (c->state == CONN_CLOSED) return;
    while (c->out_off < c->out.len) {
        ssize_t w = write(c->fd, c->out.data + c->out_off, c->out.len - c->out_off);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* Back-pressure: stop reading until the client takes its answers. */
            if (c->reading) event_del(c->rev), c->reading = 0;
            event_add(c->wev, NULL);
            return;
        }
        conn_close(c);
        return;
    }
    c->out.len = c->out_off = 0;
    nv_buf_shrink(&c->out, NV_HTTP_OUT_KEEP_BYTES);
    if (c->close_after_write && c->state != CONN_LINGER) {
        conn_linger(c);
        return;
    }
    if (!c->reading && c->state != CONN_HANDLING) {
        event_add(c->rev, NULL);
        c->reading = 1;
        if (c->in.len > 0) event_active(c->rev, EV_READ, 0);
    }
}

static void conn_write_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    conn_flush(arg);
}

static void conn_timeouts(nv_conn *c, uint64_t now) {
    const nv_config *cfg = c->srv->cfg;
    if (c->state == CONN_LINGER) {
        if (now >= c->linger_until_us) conn_close(c);
    } else if (c->state == CONN_IDLE && c->in.len == 0) {
        if (now - c->last_active_us >= (uint64_t)cfg->keepalive_ms * 1000 || c->srv->draining)
            conn_close(c);
    } else if ((c->state == CONN_HEAD || c->state == CONN_BODY || c->state == CONN_IDLE) &&
               now - c->req_start_us >= (uint64_t)cfg->read_timeout_ms * 1000) {
        if (c->state == CONN_IDLE) c->req_start_us = now;
        conn_set_ids(c);
        c->head.keep_alive = 0;
        if (c->head.method == NULL || c->state == CONN_HEAD)
            c->head.method = "", c->head.method_len = 0, c->head.path = "", c->head.path_len = 0;
        conn_error(c, 408, "invalid_request_error", "request_timeout",
                   "The request was not received in time.", 1);
        conn_flush(c);
    }
}

/* One timer per server instead of one per connection: a persistent read
 * event with a timeout is re-armed by libevent on every read, which costs more
 * than walking every connection a few times a second. Bounded by the
 * connection limit. */
static void sweep_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_http_server *s = arg;
    uint64_t now = nv_rt_now_us();
    nv_conn *c = s->list;
    while (c != NULL) {
        nv_conn *next = c->next; /* conn_timeouts may free c */
        conn_timeouts(c, now);
        c = next;
    }
}

static void conn_read_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(what);
    nv_conn *c = arg;
    uint64_t now = nv_rt_now_us();
    if (c->state == CONN_LINGER) {
        char sink[4096];
        ssize_t r = read(fd, sink, sizeof sink);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) || now >= c->linger_until_us)
            conn_close(c);
        return;
    }
    if (nv_buf_reserve(&c->in, NV_HTTP_READ_CHUNK_BYTES, c->srv->in_max) != NV_OK &&
        c->in.len == c->in.cap) {
        /* Buffer at its bound: the parser or body reader will answer 431 or 413. */
        conn_process(c);
        conn_flush(c);
        return;
    }
    ssize_t r = read(fd, c->in.data + c->in.len, c->in.cap - c->in.len);
    if (r == 0) {
        conn_close(c);
        return;
    }
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_close(c);
            return;
        }
    } else {
        c->in.len += (size_t)r;
    }
    if ((c->state == CONN_HEAD || c->state == CONN_BODY) &&
        now - c->req_start_us >= (uint64_t)c->srv->cfg->read_timeout_ms * 1000) {
        conn_timeouts(c, now); /* a client trickling bytes must still finish in time */
        return;
    }
    conn_process(c);
    conn_flush(c);
}

/* ---- accepting ---- */

#define NV_HTTP_REFUSE_BODY                                                                      \
    "{\"error\":{\"type\":\"api_error\",\"code\":\"too_many_connections\","                   \
    "\"message\":\"The server has too many open connections.\"}}"

static void refuse_connection(int fd) {
    static const char resp[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Content-Length: 114\r\nConnection: close\r\nRetry-After: 1\r\n\r\n" NV_HTTP_REFUSE_BODY;
    _Static_assert(sizeof(NV_HTTP_REFUSE_BODY) - 1 == 114, "Content-Length of the 503 body");
    ssize_t w = write(fd, resp, sizeof resp - 1);
    NV_UNUSED(w);
    close(fd);
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg) {
    NV_UNUSED(what);
    nv_http_server *s = arg;
    for (int i = 0; i < NV_HTTP_ACCEPT_BATCH_MAX; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                nv_logf(NV_LOG_ERROR, "accept: %s", strerror(errno));
            return;
        }
        if (s->conns >= s->cfg->connections_max) {
            refuse_connection(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        nv_conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->srv = s;
        c->fd = fd;
        c->rev = event_new(s->base, fd, EV_READ | EV_PERSIST, conn_read_cb, c);
        c->wev = event_new(s->base, fd, EV_WRITE, conn_write_cb, c);
        if (c->rev == NULL || c->wev == NULL || event_add(c->rev, NULL) != 0) {
            if (c->rev) event_free(c->rev);
            if (c->wev) event_free(c->wev);
            free(c);
            close(fd);
            continue;
        }
        c->reading = 1;
        c->last_active_us = nv_rt_now_us();
        c->req_start_us = c->last_active_us;
        c->next = s->list;
        if (s->list) s->list->prev = c;
        s->list = c;
        s->conns++;
    }
}

nv_http_server *nv_http_server_new(struct event_base *base, int listen_fd, const nv_config *cfg,
                                   nv_metrics *metrics, int worker) {
    nv_http_server *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->base = base;
    s->fd = listen_fd;
    s->cfg = cfg;
    s->metrics = metrics;
    s->worker = worker;
    s->in_max = (size_t)cfg->header_bytes_max + (size_t)cfg->body_bytes_max + NV_HTTP_READ_CHUNK_BYTES;
    int64_t tick = cfg->read_timeout_ms < cfg->keepalive_ms ? cfg->read_timeout_ms : cfg->keepalive_ms;
    tick /= 2;
    if (tick > NV_HTTP_LINGER_MS / 2) tick = NV_HTTP_LINGER_MS / 2;
    if (tick < NV_HTTP_TICK_MS_MIN) tick = NV_HTTP_TICK_MS_MIN;
    struct timeval tv = {tick / 1000, (tick % 1000) * 1000};
    s->sweep_ev = event_new(base, -1, EV_PERSIST, sweep_cb, s);
    s->accept_ev = event_new(base, listen_fd, EV_READ | EV_PERSIST, accept_cb, s);
    if (s->sweep_ev == NULL || s->accept_ev == NULL || event_add(s->accept_ev, NULL) != 0 ||
        event_add(s->sweep_ev, &tv) != 0) {
        if (s->accept_ev) event_free(s->accept_ev);
        if (s->sweep_ev) event_free(s->sweep_ev);
        free(s);
        return NULL;
    }
    return s;
}

void nv_http_server_drain(nv_http_server *s) {
    if (s->draining) return;
    s->draining = 1;
    accept_cb(s->fd, EV_READ, s); /* take what the kernel already queued for us */
    event_del(s->accept_ev);
    close(s->fd);
    s->fd = -1;
    nv_conn *c = s->list;
    while (c != NULL) {
        nv_conn *next = c->next;
        if (c->state == CONN_IDLE && c->in.len == 0 && c->out.len == 0) conn_close(c);
        c = next;
    }
}

int nv_http_server_connections(const nv_http_server *s) { return s ? s->conns : 0; }

void nv_http_server_free(nv_http_server *s) {
    if (s == NULL) return;
    while (s->list != NULL) {
        nv_conn *c = s->list;
        c->task_active = 0; /* the states close right after: tasks end with them */
        if (c->state != CONN_CLOSED) close(c->fd);
        conn_free(c);
    }
    event_free(s->accept_ev);
    event_free(s->sweep_ev);
    if (s->fd >= 0) close(s->fd);
    free(s);
}

/* ---- the request object's lazy parts, for Lua ---- */

/* The connection of a request handle, checked: only the request's own task may
 * read it, and only while the request is current. */
static nv_conn *lua_conn(lua_State *L) {
    void *p = lua_touserdata(L, 1);
    lua_Number seq = luaL_checknumber(L, 2);
    nv_task *t = nv_rt_get()->current;
    if (p == NULL || t == NULL || t->owner != p || t->on_result != conn_task_result)
        luaL_error(L, "request data can only be read by the request's own task");
    nv_conn *c = p;
    if ((lua_Number)c->seq != seq || c->state != CONN_HANDLING)
        luaL_error(L, "this request has already been answered");
    return c;
}

int nv_http_lua_headers(lua_State *L) {
    nv_conn *c = lua_conn(L);
    lua_createtable(L, 0, (int)c->head.headers_len);
    char name[256];
    for (uint32_t i = 0; i < c->head.headers_len; i++) {
        const nv_http_header *h = &c->head.headers[i];
        size_t n = h->name_len < sizeof name ? h->name_len : sizeof name;
        for (size_t j = 0; j < n; j++) {
            char ch = h->name[j];
            name[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        lua_pushlstring(L, name, n);
        lua_rawget(L, -2);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, name, n);
            lua_pushlstring(L, h->value, h->value_len);
        } else {
            /* repeated header: values joined by ", " (RFC 9110 5.3) */
            lua_pushlstring(L, name, n);
            lua_insert(L, -2);
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value, h->value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    return 1;
}

/* request_id, trace_id: read on first use, most handlers never ask. */
int nv_http_lua_ids(lua_State *L) {
    nv_conn *c = lua_conn(L);
    lua_pushstring(L, c->request_id);
    lua_pushstring(L, c->trace_id);
    return 2;
}

int nv_http_lua_body(lua_State *L) {
    nv_conn *c = lua_conn(L);
    lua_pushlstring(L, c->body_ptr ? c->body_ptr : "", c->body_len);
    return 1;
}
