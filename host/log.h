/* log.h -- structured logs: one JSON object a line on stdout. */
#ifndef NV_LOG_H
#define NV_LOG_H

#include <stddef.h>

#include "buf.h"

typedef enum nv_log_level {
    NV_LOG_DEBUG = 0,
    NV_LOG_INFO = 1,
    NV_LOG_WARN = 2,
    NV_LOG_ERROR = 3,
} nv_log_level;

/* Names every line of this process: the service and the worker index (0 for
 * the supervisor and for `run`). */
void nv_log_setup(const char *service, int worker, int debug);

/* Whether lines of this level are written (debug lines only with NUVION_LOG_LEVEL=debug). */
int nv_log_enabled(nv_log_level level);

/* One line. request_id and trace_id may be NULL; `extra` holds further members
 * already encoded as JSON ("\"k\":1,\"s\":\"v\""), without braces, or NULL. */
void nv_log_line(nv_log_level level, const char *msg, size_t msg_len, const char *request_id,
                 const char *trace_id, const char *extra, size_t extra_len);

/* printf-style line without request context, for the host's own events. */
void nv_logf(nv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Lines are gathered and written once per turn of the loop (or when the
 * buffer fills); the loop calls this after every turn, and exit paths too. */
void nv_log_flush(void);

/* Appends s as the inside of a JSON string: quotes, backslashes and control
 * characters escaped, bytes >= 0x80 copied (callers hand us UTF-8 or bytes that
 * are only ever shown to operators). Returns NV_ERR when max is reached. */
int nv_log_escape(nv_buf *b, const char *s, size_t len, size_t max);

#endif
