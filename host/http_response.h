/* http_response.h -- HTTP/1.1 response-head parser for the client: stateless, zero-copy, no allocation. */
#ifndef NV_HTTP_RESPONSE_H
#define NV_HTTP_RESPONSE_H

#include <stddef.h>
#include <stdint.h>

#include "http_parser.h" /* nv_http_header; the chunked decoder serves responses too */
#include "nv.h"
#include "nv_limits.h"

/* Every pointer points into the parsed buffer, valid as long as the buffer is. */
typedef struct nv_http_response_head {
    int version_minor;            /* HTTP/1.<minor>: 0 or 1 */
    int status;                   /* 100..599 */
    const char *reason; uint32_t reason_len;
    nv_http_header headers[NV_HTTP_CLIENT_HEADERS_MAX];
    uint32_t headers_len;
    size_t head_bytes;            /* status line + headers + empty line */
    int64_t content_length;       /* -1 when absent */
    unsigned chunked : 1;         /* Transfer-Encoding: chunked (last coding) */
    unsigned keep_alive : 1;      /* the server lets the connection be reused */
    const char *error;            /* on an error: a fixed text; NULL on NV_OK */
} nv_http_response_head;

#define NV_HTTP_RESPONSE_BAD       (-502) /* malformed status line or header */
#define NV_HTTP_RESPONSE_TOO_LARGE (-413) /* head over the limit, or too many headers */

/* How the body of a parsed response is framed (RFC 9112 6.3). */
typedef enum nv_http_body_kind {
    NV_HTTP_BODY_NONE = 1,    /* HEAD, 1xx, 204, 304: no body whatever the headers say */
    NV_HTTP_BODY_LENGTH = 2,  /* Content-Length bytes */
    NV_HTTP_BODY_CHUNKED = 3, /* chunked coding, decoded by nv_http_chunked_feed */
    NV_HTTP_BODY_CLOSE = 4,   /* until the server closes: the connection is not reusable */
} nv_http_body_kind;

/* Parses the response head in buf[0..len). NV_OK: complete (h filled, h->head_bytes set);
 * NV_AGAIN: more bytes needed (and len < head_bytes_max); else an NV_HTTP_RESPONSE_* error with
 * h->error set. Never reads past buf+len. Stricter than RFC 9112 where leniency lets a response
 * be read two ways: CRLF or bare LF line ends only, no obs-fold, no whitespace before a colon, no
 * control characters in values, Content-Length digits only and repeated only with the same
 * value, Content-Length together with Transfer-Encoding refused, a Transfer-Encoding whose last
 * coding is not chunked refused. */
int nv_http_response_parse(const char *buf, size_t len, size_t head_bytes_max, nv_http_response_head *h);

/* The body framing of h, answering a request with method HEAD or not. */
nv_http_body_kind nv_http_response_body_kind(const nv_http_response_head *h, int head_request);

/* Case-insensitive header lookup; NULL when absent. */
const nv_http_header *nv_http_response_header(const nv_http_response_head *h, const char *name, size_t name_len);

#endif
