/* log.c -- writes structured log lines to stdout, batched once per loop turn. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "nv_limits.h"
#include "nv.h"

/* Per-process log state: this is part of the per-worker runtime. */
static struct {
    char service[64];
    int worker;
    int debug;
    nv_buf out;
    time_t ts_second;  /* second that ts_prefix shows */
    char ts_prefix[32]; /* "2026-11-24T10:02:51" */
} lg = {.service = "nuvion"};

static const char *level_names[] = {"debug", "info", "warn", "error"};

void nv_log_setup(const char *service, int worker, int debug) {
    snprintf(lg.service, sizeof lg.service, "%s", service);
    lg.worker = worker;
    lg.debug = debug;
}

int nv_log_enabled(nv_log_level level) { return level != NV_LOG_DEBUG || lg.debug; }

int nv_log_escape(nv_buf *b, const char *s, size_t len, size_t max) {
    static const char hex[] = "0123456789abcdef";
    if (nv_buf_reserve(b, len + 2, max) != NV_OK) return NV_ERR;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            if ((b->len == b->cap || b->len >= max) && nv_buf_reserve(b, 1, max) != NV_OK)
                return NV_ERR;
            b->data[b->len++] = (char)c;
            continue;
        }
        char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        size_t n = 6;
        if (c == '"' || c == '\\') esc[1] = (char)c, n = 2;
        else if (c == '\n') esc[1] = 'n', n = 2;
        else if (c == '\t') esc[1] = 't', n = 2;
        else if (c == '\r') esc[1] = 'r', n = 2;
        if (nv_buf_append(b, esc, n, max) != NV_OK) return NV_ERR;
    }
    return NV_OK;
}

static void append_ts(nv_buf *b) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != lg.ts_second) {
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        strftime(lg.ts_prefix, sizeof lg.ts_prefix, "%Y-%m-%dT%H:%M:%S", &tm);
        lg.ts_second = tv.tv_sec;
    }
    char ts[48];
    int n = snprintf(ts, sizeof ts, "{\"ts\":\"%s.%03ldZ\"", lg.ts_prefix, (long)tv.tv_usec / 1000);
    nv_buf_append(b, ts, (size_t)n, NV_LOG_BUFFER_BYTES);
}

#define LIT(b, s) nv_buf_append((b), (s), sizeof(s) - 1, NV_LOG_BUFFER_BYTES)

void nv_log_line(nv_log_level level, const char *msg, size_t msg_len, const char *request_id,
                 const char *trace_id, const char *extra, size_t extra_len) {
    if (!nv_log_enabled(level)) return;
    nv_assert(level >= NV_LOG_DEBUG && level <= NV_LOG_ERROR);
    if (lg.out.len > NV_LOG_BUFFER_BYTES - NV_LOG_LINE_BYTES_MAX - 512) nv_log_flush();

    nv_buf *b = &lg.out;
    size_t start = b->len;
    int truncated = 0;
    if (msg_len > NV_LOG_LINE_BYTES_MAX / 2) msg_len = NV_LOG_LINE_BYTES_MAX / 2, truncated = 1;
    if (extra_len > NV_LOG_LINE_BYTES_MAX / 2) extra = NULL, extra_len = 0, truncated = 1;

    append_ts(b);
    LIT(b, ",\"level\":\"");
    nv_buf_append(b, level_names[level], strlen(level_names[level]), NV_LOG_BUFFER_BYTES);
    LIT(b, "\",\"msg\":\"");
    nv_log_escape(b, msg, msg_len, NV_LOG_BUFFER_BYTES);
    LIT(b, "\",\"service\":\"");
    nv_log_escape(b, lg.service, strlen(lg.service), NV_LOG_BUFFER_BYTES);
    char worker[32];
    int n = snprintf(worker, sizeof worker, "\",\"worker\":%d,\"pid\":%d", lg.worker, (int)getpid());
    nv_buf_append(b, worker, (size_t)n, NV_LOG_BUFFER_BYTES);
    if (request_id != NULL) {
        LIT(b, ",\"request_id\":\"");
        nv_log_escape(b, request_id, strlen(request_id), NV_LOG_BUFFER_BYTES);
        LIT(b, "\"");
    }
    if (trace_id != NULL) {
        LIT(b, ",\"trace_id\":\"");
        nv_log_escape(b, trace_id, strlen(trace_id), NV_LOG_BUFFER_BYTES);
        LIT(b, "\"");
    }
    if (truncated) LIT(b, ",\"truncated\":true");
    if (extra != NULL && extra_len > 0) {
        LIT(b, ",");
        nv_buf_append(b, extra, extra_len, NV_LOG_BUFFER_BYTES);
    }
    if (LIT(b, "}\n") != NV_OK) b->len = start; /* no room even after a flush: drop, never block */
}

void nv_logf(nv_log_level level, const char *fmt, ...) {
    if (!nv_log_enabled(level)) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    nv_log_line(level, msg, (size_t)n, NULL, NULL, NULL, 0);
}

void nv_log_flush(void) {
    size_t off = 0;
    while (off < lg.out.len) {
        ssize_t w = write(STDOUT_FILENO, lg.out.data + off, lg.out.len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break; /* stdout gone: logs are lost, serving goes on */
        off += (size_t)w;
    }
    lg.out.len = 0;
    nv_buf_shrink(&lg.out, NV_LOG_BUFFER_BYTES);
}
