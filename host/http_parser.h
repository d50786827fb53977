/* http_parser.h -- HTTP/1.1 request-head parser and chunked body decoder: stateless, zero-copy, no allocation. */
#ifndef NV_HTTP_PARSER_H
#define NV_HTTP_PARSER_H

#include <stddef.h>
#include <stdint.h>

#include "nv.h"
#include "nv_limits.h" /* NV_HTTP_HEADERS_MAX, NV_HTTP_HEADER_BYTES_MAX */

/* Every length below is a uint32_t: the largest head we may be asked to parse must fit. */
_Static_assert(NV_HTTP_HEADER_BYTES_MAX <= UINT32_MAX, "head lengths are uint32_t");

typedef struct nv_http_header {
    const char *name;  uint32_t name_len;
    const char *value; uint32_t value_len;   /* leading/trailing spaces and tabs trimmed */
} nv_http_header;

/* Every pointer points into the parsed buffer (never NULL after NV_OK), so it stays valid as long
 * as the buffer does and may go to Lua as (ptr, len) without a copy. Each call resets the request
 * line's pointers first: after NV_AGAIN or an error, those not reached yet are NULL with length 0,
 * never left over from the previous request. */
typedef struct nv_http_request_head {
    const char *method; uint32_t method_len;
    const char *target; uint32_t target_len;  /* the whole request-target as sent */
    const char *path;   uint32_t path_len;    /* target up to '?' (or whole) */
    const char *query;  uint32_t query_len;   /* after '?', without it; query_len 0 if none (then
                                               * query points at the end of the target) */
    int version_minor;                        /* HTTP/1.<minor>: 0 or 1 */
    nv_http_header headers[NV_HTTP_HEADERS_MAX];
    uint32_t headers_len;
    size_t head_bytes;        /* bytes of request line + headers + final CRLF CRLF, consumed */
    int64_t content_length;   /* -1 when absent */
    unsigned chunked : 1;     /* Transfer-Encoding: chunked */
    unsigned keep_alive : 1;  /* HTTP/1.1 without "Connection: close", or 1.0 with "Connection: keep-alive" */
    unsigned expect_continue : 1; /* "Expect: 100-continue" (HTTP/1.1 only, RFC 9110 10.1.1) */
    const char *error;        /* on an error: a fixed text saying what was wrong; NULL on NV_OK */
} nv_http_request_head;

/* Parse errors: negative; each maps to an HTTP status and a fixed message. */
#define NV_HTTP_PARSE_BAD_REQUEST      (-400)  /* malformed request line or header */
#define NV_HTTP_PARSE_URI_TOO_LONG     (-414)
#define NV_HTTP_PARSE_HEADERS_TOO_LARGE (-431) /* head larger than the limit, or more than NV_HTTP_HEADERS_MAX headers */
#define NV_HTTP_PARSE_NOT_IMPLEMENTED  (-501)  /* a Transfer-Encoding other than chunked */
#define NV_HTTP_PARSE_VERSION          (-505)  /* not HTTP/1.0 or HTTP/1.1 */
#define NV_HTTP_CHUNKED_TOO_LARGE      (-413)  /* decoded chunked body larger than the caller's out_max */

/* Parses the request head in buf[0..len). Returns NV_OK when the head is complete (h filled,
 * h->head_bytes set), NV_AGAIN when more bytes are needed (and len < head_bytes_max), or an
 * NV_HTTP_PARSE_* error with h->error set. Never reads past buf+len. Stateless: call it again from
 * the start of the buffer when more bytes arrive; the AGAIN path is a memchr scan for the empty
 * line plus a check of the first bytes of the request line, so garbage is refused at once.
 * head_bytes_max must be at most NV_HTTP_HEADER_BYTES_MAX.
 *
 * What it accepts, and why where it is stricter than RFC 9112:
 * - empty lines (CRLF or LF) before the request line are skipped (RFC 9112 2.2) and counted in
 *   head_bytes;
 * - line ends are CRLF, or a bare LF as nginx tolerates; a CR not followed by LF is refused;
 * - the request line is method SP target SP version with single spaces;
 * - the target is origin-form ('/'...) or "*" for OPTIONS. absolute-form and authority-form are
 *   refused (400): our clients talk to us, not to a proxy, and an absolute target would be a second
 *   source of the host beside the Host header. Bytes allowed: visible ASCII except '#'; no
 *   percent-decoding or dot-segment removal happens here;
 * - obs-fold, whitespace before the colon and control characters in values are refused;
 * - HTTP/1.1 needs exactly one Host header (RFC 9112 3.2), whose value holds only host and port
 *   characters; HTTP/1.0 may have none, never two;
 * - Content-Length is digits only; repeated with the same value is fine, different values are
 *   not; Content-Length together with Transfer-Encoding is refused (request smuggling), as is
 *   Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1) or sent twice. */
int nv_http_parse_head(const char *buf, size_t len, size_t head_bytes_max, nv_http_request_head *h);

/* NV_HTTP_PARSE_BAD_REQUEST -> 400, ..., NV_HTTP_CHUNKED_TOO_LARGE -> 413; anything else -> 500. */
int nv_http_parse_status(int err);
/* A fixed text per error code, for the response body when h->error is not at hand. */
const char *nv_http_parse_message(int err);

/* Case-insensitive header lookup; NULL when absent. The first of several is returned. */
const nv_http_header *nv_http_header_find(const nv_http_request_head *h, const char *name, size_t name_len);

/* Incremental decoder of a chunked request body (RFC 9112 7.1). The layout is public so the caller
 * can embed it; only the functions below touch the fields. */
typedef struct nv_http_chunked {
    uint64_t chunk_left;       /* data bytes still to come in the current chunk */
    uint32_t state;            /* private state of the decoder */
    uint32_t size_digits;      /* hex digits read in the current chunk-size */
    uint32_t ext_bytes;        /* chunk-extension bytes so far, over the whole body */
    uint32_t trailer_bytes;    /* trailer-section bytes so far */
    int err;                   /* the error returned, repeated on later calls (0 before one) */
    const char *error;         /* what was wrong, a fixed text; NULL before an error */
} nv_http_chunked;

void nv_http_chunked_init(nv_http_chunked *c);
/* Consumes raw input in[0..len), appending decoded body bytes to out (out_len is in/out: bytes
 * already in out; never writes past out_max). Sets *consumed to the raw bytes used: all of len on
 * NV_AGAIN (the decoder keeps what it needs), up to the end of the body on NV_OK (what follows is
 * the next request), up to the offending byte on an error. Returns NV_OK when the terminating zero
 * chunk and any trailers have been consumed, NV_AGAIN when more input is needed,
 * NV_HTTP_PARSE_BAD_REQUEST for bad framing, or NV_HTTP_CHUNKED_TOO_LARGE when the decoded body
 * would exceed out_max. Chunk extensions are skipped, trailers are checked and dropped. Framing is
 * strict, CRLF only: lenient chunk parsing (bare LF, whitespace after the size) is how bodies get
 * smuggled past a proxy that reads them differently. Errors are sticky; after NV_OK further calls
 * return NV_OK consuming nothing. */
int nv_http_chunked_feed(nv_http_chunked *c, const char *in, size_t len, size_t *consumed,
                         char *out, size_t out_max, size_t *out_len);

#endif
