/* http_parser.c -- parses an HTTP/1.1 request head in one pass over the connection's buffer, and decodes chunked bodies. */
#include "http_parser.h"

#include <string.h>

/* Character classes, one bit each, looked up in one table so each byte costs one load. */
#define CC_TCHAR 0x01  /* token (RFC 9110 5.6.2): method, header name */
#define CC_TARGET 0x02 /* request-target: visible ASCII except '#' (a fragment is never sent) */
#define CC_VALUE 0x04  /* field-value: HTAB, SP, VCHAR, obs-text; never CR, LF, NUL, other CTL or DEL */
#define CC_HOST 0x08   /* Host value: reg-name, IP-literal and port characters (RFC 3986 3.2.2) */

static const uint8_t cc_table[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  4,  0,  0,  0,  0,  0,  0, /* 0x00 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, /* 0x10 */
     4, 15,  6,  5, 15, 15, 15, 15, 14, 14, 15, 15, 14, 15, 15,  6, /* 0x20 */
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 14, 14,  6, 14,  6,  6, /* 0x30 */
     6, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, /* 0x40 */
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 14,  6, 14,  7, 15, /* 0x50 */
     7, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, /* 0x60 */
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,  6,  7,  6, 15,  0, /* 0x70 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0x80 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0x90 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0xa0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0xb0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0xc0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0xd0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0xe0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4, /* 0xf0 */
};

#define IS(c, cls) (cc_table[(uint8_t)(c)] & (cls))
#define IS_WS(c) ((c) == ' ' || (c) == '\t')

#define STR_(x) #x
#define STR(x) STR_(x)

/* Word-at-a-time scanning (SWAR): 8 bytes per step where a table loop does one. The tests are
 * exact as booleans; a word that fails one goes to the byte loop, which finds the byte. */
#define SWAR_ONES 0x0101010101010101ULL
#define SWAR_HIGH 0x8080808080808080ULL
#define SWAR_HAS_ZERO(x) (((x) - SWAR_ONES) & ~(x) & SWAR_HIGH)
#define SWAR_HAS_LESS(x, n) (((x) - SWAR_ONES * (n)) & ~(x) & SWAR_HIGH) /* some byte < n, n <= 128 */
#define SWAR_HAS_BYTE(x, b) SWAR_HAS_ZERO((x) ^ (SWAR_ONES * (b)))

static inline uint64_t load64(const char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof(x)); /* one unaligned load; byte order does not matter to the tests */
    return x;
}

/* First byte in [p, end) that is not a field-value byte (CC_VALUE). HTAB stops the word loop
 * (it is < 0x20) and the byte loop takes it. */
static const char *skip_value(const char *p, const char *end)
{
    while (end - p >= 8) {
        uint64_t x = load64(p);
        if (SWAR_HAS_LESS(x, 0x20) | SWAR_HAS_BYTE(x, 0x7f)) break;
        p += 8;
    }
    while (p < end && IS(*p, CC_VALUE)) p++;
    return p;
}

/* First byte in [p, end) that is not a request-target byte (CC_TARGET). */
static const char *skip_target(const char *p, const char *end)
{
    while (end - p >= 8) {
        uint64_t x = load64(p);
        if (SWAR_HAS_LESS(x, 0x21) | SWAR_HAS_BYTE(x, 0x7f) | SWAR_HAS_BYTE(x, '#') | (x & SWAR_HIGH)) break;
        p += 8;
    }
    while (p < end && IS(*p, CC_TARGET)) p++;
    return p;
}

/* Bytes of the request line checked while the head is incomplete: enough to refuse a TLS
 * handshake or binary junk at once, few enough that a client trickling a long head one byte per
 * packet costs a constant per call on top of the memchr scan. */
#define EARLY_CHECK_BYTES 256

/* What the head's headers said, gathered while parsing and judged once they are all known, so
 * the verdict does not depend on their order. */
typedef struct head_facts { /* bytes, not bit-fields: no read-modify-write on the hot path */
    uint8_t host_seen;
    uint8_t te_seen;
    uint8_t te_chunked;
    uint8_t conn_close;
    uint8_t conn_keep_alive;
    uint8_t expect_continue;
} head_facts;

static inline uint8_t ascii_lower(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c | 0x20) : c;
}

/* s[0..n) equals lit[0..n), a lower-case literal, ignoring ASCII case. */
static int eq_nocase(const char *s, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ascii_lower((uint8_t)s[i]) != (uint8_t)lit[i]) return 0;
    return 1;
}

static int fail(nv_http_request_head *h, int err, const char *why)
{
    h->error = why;
    return err;
}

/* ---- request line ---------------------------------------------------------------------- */

/* "HTTP/1.x" then CRLF or LF, at p within [p, end). Same contract as parse_request_line. */
static int parse_version(const char *p, const char *end, nv_http_request_head *h, const char **next)
{
    static const char pattern[] = "HTTP/d.d"; /* 'd': any digit, judged 400 or 505 below */
    size_t avail = (size_t)(end - p);

    if (avail >= 10 && memcmp(p, "HTTP/1.1\r\n", 10) == 0) { /* the usual case */
        h->version_minor = 1;
        *next = p + 10;
        return NV_OK;
    }
    for (size_t i = 0; i < 8 && i < avail; i++) {
        int ok = pattern[i] == 'd' ? (p[i] >= '0' && p[i] <= '9') : p[i] == pattern[i];
        if (!ok) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "malformed HTTP version");
    }
    if (avail < 9) return NV_AGAIN;
    const char *e = p + 8;
    if (*e == '\r') {
        if (avail == 9) return NV_AGAIN;
        if (e[1] != '\n') return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "CR without LF after the request line");
        e += 2;
    } else if (*e == '\n') {
        e += 1;
    } else {
        return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "malformed HTTP version");
    }
    if (p[5] != '1' || p[7] > '1') return fail(h, NV_HTTP_PARSE_VERSION, "HTTP version not supported");
    h->version_minor = p[7] - '0';
    *next = e;
    return NV_OK;
}

/* Checks the request-target h->target and splits it into path and query. */
static int split_target(nv_http_request_head *h)
{
    if (h->target[0] == '*') {
        /* asterisk-form: the whole target, and only for OPTIONS (RFC 9112 3.2.4) */
        if (h->target_len != 1 || h->method_len != 7 || memcmp(h->method, "OPTIONS", 7) != 0)
            return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "'*' request-target is only for OPTIONS");
    }
    const char *q = memchr(h->target, '?', h->target_len);
    h->path = h->target;
    if (q == NULL) {
        h->path_len = h->target_len;
        h->query = h->target + h->target_len;
        h->query_len = 0;
    } else {
        h->path_len = (uint32_t)(q - h->target);
        h->query = q + 1;
        h->query_len = h->target_len - h->path_len - 1;
    }
    return NV_OK;
}

/* Parses the request line at p within [p, end). NV_OK: *next is the first byte after its line
 * end. NV_AGAIN: [p, end) is a valid beginning of a request line. Otherwise an error, h->error set.
 * Used on the complete head, on the first bytes of an incomplete one, and to tell 414 from 400. */
static int parse_request_line(const char *p, const char *end, nv_http_request_head *h, const char **next)
{
    const char *start = p;
    while (p < end && IS(*p, CC_TCHAR)) p++;
    if (p == end) return NV_AGAIN;
    if (p == start) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "missing method");
    if (*p != ' ') return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "invalid character in method");
    h->method = start;
    h->method_len = (uint32_t)(p - start);

    start = ++p;
    if (p == end) return NV_AGAIN;
    if (*p != '/' && *p != '*')
        return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "request-target must start with '/' (origin-form)");
    p = skip_target(p, end);
    if (p == end) return NV_AGAIN;
    if (*p != ' ') {
        return fail(h, NV_HTTP_PARSE_BAD_REQUEST, (*p == '\r' || *p == '\n')
                    ? "missing HTTP version" : "invalid character in request-target");
    }
    h->target = start;
    h->target_len = (uint32_t)(p - start);
    int rc = split_target(h);
    if (rc != NV_OK) return rc;
    return parse_version(p + 1, end, h, next);
}

/* ---- header fields --------------------------------------------------------------------- */

static int on_content_length(const nv_http_header *hd, nv_http_request_head *h)
{
    if (hd->value_len == 0) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "empty Content-Length");
    int64_t v = 0;
    for (uint32_t i = 0; i < hd->value_len; i++) {
        unsigned d = (unsigned)(uint8_t)hd->value[i] - '0';
        if (d > 9) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "Content-Length is not a decimal number");
        if (v > (INT64_MAX - (int64_t)d) / 10)
            return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "Content-Length too large");
        v = v * 10 + (int64_t)d;
    }
    if (h->content_length >= 0 && h->content_length != v)
        return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "several Content-Length headers with different values");
    h->content_length = v;
    return NV_OK;
}

/* Connection: a comma-separated list of tokens; we care about two (RFC 9112 9.3, 9.6). */
static void on_connection(const nv_http_header *hd, head_facts *f)
{
    const char *p = hd->value, *end = hd->value + hd->value_len;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *a = p, *b = comma != NULL ? comma : end;
        while (a < b && IS_WS(*a)) a++;
        while (b > a && IS_WS(b[-1])) b--;
        if (b - a == 5 && eq_nocase(a, "close", 5)) f->conn_close = 1;
        if (b - a == 10 && eq_nocase(a, "keep-alive", 10)) f->conn_keep_alive = 1;
        p = comma != NULL ? comma + 1 : end;
    }
}

static int on_host(const nv_http_header *hd, nv_http_request_head *h, head_facts *f)
{
    if (f->host_seen) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "several Host headers");
    f->host_seen = 1;
    for (uint32_t i = 0; i < hd->value_len; i++)
        if (!IS(hd->value[i], CC_HOST)) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "invalid character in Host");
    return NV_OK;
}

/* Notes what a header means for framing and the connection; other headers cost one switch. */
static int apply_header(const nv_http_header *hd, nv_http_request_head *h, head_facts *f)
{
    const char *n = hd->name, *v = hd->value;
    switch (hd->name_len) {
    case 4:
        if (eq_nocase(n, "host", 4)) return on_host(hd, h, f);
        break;
    case 6:
        if (eq_nocase(n, "expect", 6) && hd->value_len == 12 && eq_nocase(v, "100-continue", 12))
            f->expect_continue = 1;
        break;
    case 10:
        if (eq_nocase(n, "connection", 10)) on_connection(hd, f);
        break;
    case 14:
        if (eq_nocase(n, "content-length", 14)) return on_content_length(hd, h);
        break;
    case 17:
        if (eq_nocase(n, "transfer-encoding", 17)) {
            /* two would combine to "chunked, chunked" or worse: refused rather than guessed */
            if (f->te_seen) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "several Transfer-Encoding headers");
            f->te_seen = 1;
            f->te_chunked = hd->value_len == 7 && eq_nocase(v, "chunked", 7);
        }
        break;
    default:
        break;
    }
    return NV_OK;
}

/* Parses one header line at *pp within [*pp, end) into hd and moves *pp past its line end. */
static int parse_header_line(const char **pp, const char *end, nv_http_request_head *h, nv_http_header *hd)
{
    const char *p = *pp, *name = p;
    while (p < end && IS(*p, CC_TCHAR)) p++;
    if (p == end || *p != ':') {
        if (p < end && IS_WS(*p)) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "whitespace before the colon of a header");
        if (p < end && *p == '\r' && (end - p < 2 || p[1] != '\n'))
            return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "CR without LF in a header");
        if (p == end || *p == '\r' || *p == '\n') return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "header line without a colon");
        return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "invalid character in header name");
    }
    if (p == name) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "empty header name");
    hd->name = name;
    hd->name_len = (uint32_t)(p - name);

    p++;
    while (p < end && IS_WS(*p)) p++;
    const char *value = p;
    p = skip_value(p, end);
    const char *value_end = p;
    if (p < end && *p == '\n') {
        p += 1;
    } else if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
        p += 2;
    } else {
        return fail(h, NV_HTTP_PARSE_BAD_REQUEST, (p < end && *p == '\r')
                    ? "CR without LF in a header" : "invalid character in header value");
    }
    while (value_end > value && IS_WS(value_end[-1])) value_end--;
    hd->value = value;
    hd->value_len = (uint32_t)(value_end - value);
    *pp = p;
    return NV_OK;
}

/* Parses the header lines from p up to and including the first empty line, which must come
 * before end; *head_end is set to the byte after it. */
static int parse_headers(const char *p, const char *end, nv_http_request_head *h, head_facts *f,
                         const char **head_end)
{
    while (p < end) { /* each turn consumes a line; at most NV_HTTP_HEADERS_MAX + 1 turns */
        if (*p == '\n' || (*p == '\r' && end - p >= 2 && p[1] == '\n')) {
            *head_end = p + (*p == '\r' ? 2 : 1);
            return NV_OK;
        }
        if (IS_WS(*p)) return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "obsolete line folding (line starts with whitespace)");
        if (h->headers_len == NV_HTTP_HEADERS_MAX)
            return fail(h, NV_HTTP_PARSE_HEADERS_TOO_LARGE, "more than " STR(NV_HTTP_HEADERS_MAX) " header fields");
        nv_http_header *hd = &h->headers[h->headers_len];
        int rc = parse_header_line(&p, end, h, hd);
        if (rc != NV_OK) return rc;
        h->headers_len++;
        rc = apply_header(hd, h, f);
        if (rc != NV_OK) return rc;
    }
    nv_assert(0 && "the caller saw an empty line before end");
    return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "unterminated head");
}

/* Judges what the headers said together: framing, then the host, then the connection. */
static int judge_headers(nv_http_request_head *h, const head_facts *f)
{
    if (f->te_seen) {
        if (h->content_length >= 0)
            return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "both Content-Length and Transfer-Encoding");
        if (h->version_minor == 0)
            return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request");
        if (!f->te_chunked)
            return fail(h, NV_HTTP_PARSE_NOT_IMPLEMENTED, "Transfer-Encoding other than chunked");
        h->chunked = 1;
    }
    if (h->version_minor == 1 && !f->host_seen)
        return fail(h, NV_HTTP_PARSE_BAD_REQUEST, "missing Host header");
    h->keep_alive = !f->conn_close && (h->version_minor == 1 || f->conn_keep_alive);
    h->expect_continue = f->expect_continue && h->version_minor == 1;
    return NV_OK;
}

/* ---- the head -------------------------------------------------------------------------- */

/* Skips the empty lines a client may send before the request line (RFC 9112 2.2). */
static const char *skip_empty_lines(const char *p, const char *end)
{
    for (;;) { /* bounded: each turn moves p towards end */
        if (p < end && *p == '\n') {
            p += 1;
        } else if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
            p += 2;
        } else {
            return p;
        }
    }
}

/* The first byte after the empty line that ends the head in [p, end), or NULL when there is none
 * yet. p must not start with an empty line. memchr does the scanning, many bytes per cycle. */
static const char *find_head_end(const char *p, const char *end)
{
    while (p < end) { /* bounded: p moves past a '\n' each turn */
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        if (lf == NULL) return NULL;
        p = lf + 1;
        if (p < end && *p == '\n') return p + 1;
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') return p + 2;
    }
    return NULL;
}

/* [p, end) ends with an empty line: the usual case of a whole head and nothing after it, where
 * the full parse may run at once and find the first empty line itself. */
static int ends_with_empty_line(const char *p, const char *end)
{
    if (end - p < 2 || end[-1] != '\n') return 0;
    return end[-2] == '\n' || (end - p >= 3 && end[-2] == '\r' && end[-3] == '\n');
}

/* No empty line yet in the first min(len, head_bytes_max) bytes: wait, or say why not. */
static int head_incomplete(const char *start, const char *lim, int at_limit, nv_http_request_head *h)
{
    const char *next;
    if (!at_limit) {
        if (lim - start == 1 && *start == '\r') return NV_AGAIN; /* maybe the CR of an empty line */
        const char *check_end = lim - start > EARLY_CHECK_BYTES ? start + EARLY_CHECK_BYTES : lim;
        int rc = parse_request_line(start, check_end, h, &next);
        return rc == NV_OK ? NV_AGAIN : rc;
    }
    if (start == lim) return fail(h, NV_HTTP_PARSE_HEADERS_TOO_LARGE, "empty lines fill the head limit");
    int rc = parse_request_line(start, lim, h, &next);
    if (rc == NV_AGAIN) return fail(h, NV_HTTP_PARSE_URI_TOO_LONG, "request line longer than the head limit");
    if (rc == NV_OK) return fail(h, NV_HTTP_PARSE_HEADERS_TOO_LARGE, "request head larger than the limit");
    return rc;
}

int nv_http_parse_head(const char *buf, size_t len, size_t head_bytes_max, nv_http_request_head *h)
{
    nv_assert(h != NULL && head_bytes_max <= NV_HTTP_HEADER_BYTES_MAX);
    /* Reset what an error may leave unset: a pointer kept from the previous request on this
     * connection could point into bytes the server has since moved or freed. */
    h->method = h->target = h->path = h->query = NULL;
    h->method_len = h->target_len = h->path_len = h->query_len = 0;
    h->version_minor = 0;
    h->error = NULL;
    h->headers_len = 0;
    h->head_bytes = 0;
    h->content_length = -1;
    h->chunked = h->keep_alive = h->expect_continue = 0;
    if (len == 0) /* buf may be NULL; nothing to look at */
        return head_bytes_max > 0 ? NV_AGAIN : fail(h, NV_HTTP_PARSE_HEADERS_TOO_LARGE, "head limit is 0");
    nv_assert(buf != NULL);

    const char *lim = buf + (len < head_bytes_max ? len : head_bytes_max);
    const char *start = skip_empty_lines(buf, lim);
    const char *end = ends_with_empty_line(start, lim) ? lim : find_head_end(start, lim);
    if (end == NULL) return head_incomplete(start, lim, len >= head_bytes_max, h);

    /* An empty line lies before end: every line below ends before it, so nothing returns AGAIN. */
    const char *p = start, *head_end = end; /* both set by the parse */
    int rc = parse_request_line(start, end, h, &p);
    if (rc != NV_OK) {
        nv_assert(rc != NV_AGAIN);
        return rc;
    }
    head_facts f = { 0 };
    rc = parse_headers(p, end, h, &f, &head_end);
    if (rc != NV_OK) return rc;
    nv_assert(head_end <= end && (end == lim || head_end == end));
    rc = judge_headers(h, &f);
    if (rc != NV_OK) return rc;
    h->head_bytes = (size_t)(head_end - buf);
    nv_assert(h->head_bytes <= len && h->head_bytes <= head_bytes_max);
    return NV_OK;
}

int nv_http_parse_status(int err)
{
    switch (err) {
    case NV_HTTP_PARSE_BAD_REQUEST: return 400;
    case NV_HTTP_CHUNKED_TOO_LARGE: return 413;
    case NV_HTTP_PARSE_URI_TOO_LONG: return 414;
    case NV_HTTP_PARSE_HEADERS_TOO_LARGE: return 431;
    case NV_HTTP_PARSE_NOT_IMPLEMENTED: return 501;
    case NV_HTTP_PARSE_VERSION: return 505;
    default: return 500; /* not a parse error: a bug of the caller */
    }
}

const char *nv_http_parse_message(int err)
{
    switch (err) {
    case NV_HTTP_PARSE_BAD_REQUEST: return "malformed request";
    case NV_HTTP_CHUNKED_TOO_LARGE: return "request body too large";
    case NV_HTTP_PARSE_URI_TOO_LONG: return "request line too long";
    case NV_HTTP_PARSE_HEADERS_TOO_LARGE: return "request header fields too large";
    case NV_HTTP_PARSE_NOT_IMPLEMENTED: return "transfer-encoding not implemented";
    case NV_HTTP_PARSE_VERSION: return "http version not supported";
    default: return "internal error";
    }
}

const nv_http_header *nv_http_header_find(const nv_http_request_head *h, const char *name, size_t name_len)
{
    for (uint32_t i = 0; i < h->headers_len; i++) {
        const nv_http_header *hd = &h->headers[i];
        if (hd->name_len != name_len) continue;
        size_t j = 0;
        while (j < name_len && ascii_lower((uint8_t)hd->name[j]) == ascii_lower((uint8_t)name[j])) j++;
        if (j == name_len) return hd;
    }
    return NULL;
}

/* ---- chunked body ---------------------------------------------------------------------- */

enum chunked_state {
    CH_SIZE_FIRST,    /* first hex digit of a chunk-size */
    CH_SIZE,          /* more digits, or what ends the size: BWS, ';' or CR */
    CH_SIZE_WS,       /* BWS between the size and ';' */
    CH_EXT,           /* chunk-extension bytes up to CR, skipped */
    CH_SIZE_LF,       /* LF ending the size line */
    CH_DATA,          /* chunk_left data bytes */
    CH_DATA_CR,       /* CR after the data */
    CH_DATA_LF,       /* LF after the data */
    CH_TRAILER_LINE,  /* start of a trailer line, or CR of the final empty line */
    CH_TRAILER_NAME,  /* field-name of a trailer, up to ':' */
    CH_TRAILER_VALUE, /* field-value of a trailer, up to CR */
    CH_TRAILER_LF,    /* LF ending a trailer line */
    CH_END_LF,        /* LF ending the body */
    CH_DONE,
    CH_ERROR
};

void nv_http_chunked_init(nv_http_chunked *c)
{
    memset(c, 0, sizeof(*c));
    c->state = CH_SIZE_FIRST;
}

static int chunked_fail(nv_http_chunked *c, int err, const char *why)
{
    c->state = CH_ERROR;
    c->err = err;
    c->error = why;
    return err;
}

static int hex_value(uint8_t ch)
{
    if ((unsigned)(ch - '0') < 10) return ch - '0';
    ch |= 0x20;
    if ((unsigned)(ch - 'a') < 6) return ch - 'a' + 10;
    return -1;
}

/* One byte of a size line. room: bytes left in the caller's output. */
static int chunked_size_step(nv_http_chunked *c, uint8_t ch, size_t room)
{
    int d = hex_value(ch);
    switch (c->state) {
    case CH_SIZE_FIRST:
        if (d < 0) return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "chunk size is not hexadecimal");
        c->chunk_left = (uint64_t)d;
        c->size_digits = 1;
        c->state = CH_SIZE;
        return NV_AGAIN;
    case CH_SIZE:
        if (d >= 0) {
            if (++c->size_digits > NV_HTTP_CHUNK_SIZE_DIGITS_MAX)
                return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "chunk size longer than " STR(NV_HTTP_CHUNK_SIZE_DIGITS_MAX) " hex digits");
            c->chunk_left = (c->chunk_left << 4) | (uint64_t)d;
            return NV_AGAIN;
        }
        if (ch == '\r') { c->state = CH_SIZE_LF; return NV_AGAIN; }
        if (ch != ';' && !IS_WS(ch)) return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "invalid character in chunk size");
        c->state = ch == ';' ? CH_EXT : CH_SIZE_WS;
        break;
    case CH_SIZE_WS:
        if (ch != ';' && !IS_WS(ch)) return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "whitespace after a chunk size without an extension");
        if (ch == ';') c->state = CH_EXT;
        break;
    case CH_EXT:
        if (ch == '\r') { c->state = CH_SIZE_LF; return NV_AGAIN; }
        if (!IS(ch, CC_VALUE)) return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "invalid character in chunk extension");
        break;
    default: /* CH_SIZE_LF */
        if (ch != '\n') return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "CR without LF after a chunk size");
        if (c->chunk_left == 0) { c->state = CH_TRAILER_LINE; return NV_AGAIN; }
        if (c->chunk_left > room) return chunked_fail(c, NV_HTTP_CHUNKED_TOO_LARGE, "chunked body larger than the limit");
        c->state = CH_DATA;
        return NV_AGAIN;
    }
    /* only extension bytes (BWS, ';' and what follows) get here */
    if (++c->ext_bytes > NV_HTTP_CHUNK_EXT_BYTES_MAX)
        return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "chunk extensions larger than " STR(NV_HTTP_CHUNK_EXT_BYTES_MAX) " bytes");
    return NV_AGAIN;
}

/* One byte of the trailer section; NV_OK on the LF that ends the body. */
static int chunked_trailer_step(nv_http_chunked *c, uint8_t ch)
{
    if (++c->trailer_bytes > NV_HTTP_CHUNK_TRAILER_BYTES_MAX)
        return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "trailer section larger than " STR(NV_HTTP_CHUNK_TRAILER_BYTES_MAX) " bytes");
    switch (c->state) {
    case CH_TRAILER_LINE:
        if (ch == '\r') { c->state = CH_END_LF; return NV_AGAIN; }
        if (!IS(ch, CC_TCHAR)) return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "invalid trailer line");
        c->state = CH_TRAILER_NAME;
        return NV_AGAIN;
    case CH_TRAILER_NAME:
        if (ch == ':') { c->state = CH_TRAILER_VALUE; return NV_AGAIN; }
        if (!IS(ch, CC_TCHAR)) return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "invalid character in trailer name");
        return NV_AGAIN;
    case CH_TRAILER_VALUE:
        if (ch == '\r') { c->state = CH_TRAILER_LF; return NV_AGAIN; }
        if (!IS(ch, CC_VALUE)) return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "invalid character in trailer value");
        return NV_AGAIN;
    case CH_TRAILER_LF:
        if (ch != '\n') return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "CR without LF in a trailer");
        c->state = CH_TRAILER_LINE;
        return NV_AGAIN;
    default: /* CH_END_LF */
        if (ch != '\n') return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "CR without LF at the end of the body");
        c->state = CH_DONE;
        return NV_OK;
    }
}

/* One byte outside chunk data. */
static int chunked_step(nv_http_chunked *c, uint8_t ch, size_t room)
{
    switch (c->state) {
    case CH_DATA_CR:
        if (ch != '\r') return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "missing CRLF after chunk data");
        c->state = CH_DATA_LF;
        return NV_AGAIN;
    case CH_DATA_LF:
        if (ch != '\n') return chunked_fail(c, NV_HTTP_PARSE_BAD_REQUEST, "CR without LF after chunk data");
        c->state = CH_SIZE_FIRST;
        return NV_AGAIN;
    case CH_SIZE_FIRST: case CH_SIZE: case CH_SIZE_WS: case CH_EXT: case CH_SIZE_LF:
        return chunked_size_step(c, ch, room);
    default:
        nv_assert(c->state >= CH_TRAILER_LINE && c->state <= CH_END_LF);
        return chunked_trailer_step(c, ch);
    }
}

int nv_http_chunked_feed(nv_http_chunked *c, const char *in, size_t len, size_t *consumed,
                         char *out, size_t out_max, size_t *out_len)
{
    nv_assert(*out_len <= out_max);
    *consumed = 0;
    if (c->state == CH_DONE) return NV_OK;
    if (c->state == CH_ERROR) return c->err;
    if (len == 0) return NV_AGAIN; /* in may be NULL */

    const char *p = in, *end = in + len;
    while (p < end) { /* bounded: each turn consumes at least one byte */
        if (c->state == CH_DATA) {
            size_t n = (size_t)(end - p);
            if (c->chunk_left < n) n = (size_t)c->chunk_left;
            if (n > out_max - *out_len) { /* out_max shrank since the size line: still refuse */
                *consumed = (size_t)(p - in);
                return chunked_fail(c, NV_HTTP_CHUNKED_TOO_LARGE, "chunked body larger than the limit");
            }
            memcpy(out + *out_len, p, n);
            *out_len += n;
            p += n;
            c->chunk_left -= n;
            if (c->chunk_left == 0) c->state = CH_DATA_CR;
            continue;
        }
        int rc = chunked_step(c, (uint8_t)*p, out_max - *out_len);
        if (rc == NV_AGAIN) {
            p++;
            continue;
        }
        *consumed = (size_t)(p - in) + (rc == NV_OK);
        return rc;
    }
    *consumed = len;
    return NV_AGAIN;
}
