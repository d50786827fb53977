/* http_response.c -- parses the head of an HTTP/1.1 response for the client, strictly, in one pass. */
#include "http_response.h"

#include <string.h>

static int fail(nv_http_response_head *h, int err, const char *why) {
    h->error = why;
    return err;
}

static int is_tchar(uint8_t c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* field-value bytes: HTAB, SP, VCHAR, obs-text. */
static int is_vchar(uint8_t c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c | 0x20) : c; }

static int eq_nocase(const char *s, size_t n, const char *lit) {
    if (n != strlen(lit)) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((uint8_t)s[i]) != (uint8_t)lit[i]) return 0;
    return 1;
}

/* The line starting at p ends at *eol (its CR or LF), the next line starts at *next.
 * Returns 0 at a bare CR (refused), 1 otherwise. The caller knows an LF exists before end. */
static int line_end(const char *p, const char *end, const char **eol, const char **next) {
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    nv_assert(lf != NULL);
    const char *e = (lf > p && lf[-1] == '\r') ? lf - 1 : lf;
    if (memchr(p, '\r', (size_t)(e - p)) != NULL) return 0;
    *eol = e;
    *next = lf + 1;
    return 1;
}

/* "HTTP/1.x SP 3DIGIT [SP reason]". */
static int parse_status_line(const char *p, const char *eol, nv_http_response_head *h) {
    size_t n = (size_t)(eol - p);
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
        return fail(h, NV_HTTP_RESPONSE_BAD, "bad status line");
    h->version_minor = p[7] - '0';
    for (int i = 9; i < 12; i++)
        if (p[i] < '0' || p[i] > '9') return fail(h, NV_HTTP_RESPONSE_BAD, "bad status code");
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (h->status < 100 || h->status > 599) return fail(h, NV_HTTP_RESPONSE_BAD, "bad status code");
    if (n > 12) {
        if (p[12] != ' ') return fail(h, NV_HTTP_RESPONSE_BAD, "bad status line");
        for (size_t i = 13; i < n; i++)
            if (!is_vchar((uint8_t)p[i])) return fail(h, NV_HTTP_RESPONSE_BAD, "bad reason phrase");
        h->reason = p + 13;
        h->reason_len = (uint32_t)(n - 13);
    } else {
        h->reason = eol;
        h->reason_len = 0;
    }
    return NV_OK;
}

/* Content-Length value: digits only, at most 18 of them (no overflow). */
static int parse_length(const char *v, uint32_t n, int64_t *out) {
    if (n == 0 || n > 18) return 0;
    int64_t x = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return 0;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 1;
}

/* Does the comma-separated list v contain token tok (case-insensitive)? Sets *last to whether it
 * is the last element. */
static int list_has(const char *v, uint32_t n, const char *tok, int *last) {
    int found = 0;
    uint32_t i = 0;
    while (i <= n) {
        uint32_t j = i;
        while (j < n && v[j] != ',') j++;
        uint32_t a = i, b = j;
        while (a < b && (v[a] == ' ' || v[a] == '\t')) a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t')) b--;
        int hit = eq_nocase(v + a, b - a, tok);
        if (hit) found = 1;
        if (last != NULL) *last = hit;
        i = j + 1;
    }
    return found;
}

/* Reads one header line [p, eol) into h. */
static int parse_header(const char *p, const char *eol, nv_http_response_head *h, int *conn_close,
                        int *conn_keep_alive, int *te_seen) {
    const char *c = p;
    while (c < eol && is_tchar((uint8_t)*c)) c++;
    if (c == p || c == eol || *c != ':') return fail(h, NV_HTTP_RESPONSE_BAD, "bad header line");
    const char *v = c + 1, *ve = eol;
    while (v < ve && (*v == ' ' || *v == '\t')) v++;
    while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
    for (const char *q = v; q < ve; q++)
        if (!is_vchar((uint8_t)*q)) return fail(h, NV_HTTP_RESPONSE_BAD, "bad header value");
    if (h->headers_len >= NV_HTTP_CLIENT_HEADERS_MAX)
        return fail(h, NV_HTTP_RESPONSE_TOO_LARGE, "too many headers");
    nv_http_header *hd = &h->headers[h->headers_len++];
    hd->name = p, hd->name_len = (uint32_t)(c - p);
    hd->value = v, hd->value_len = (uint32_t)(ve - v);

    if (eq_nocase(hd->name, hd->name_len, "content-length")) {
        int64_t len;
        if (!parse_length(hd->value, hd->value_len, &len))
            return fail(h, NV_HTTP_RESPONSE_BAD, "bad content-length");
        if (h->content_length >= 0 && h->content_length != len)
            return fail(h, NV_HTTP_RESPONSE_BAD, "conflicting content-length");
        h->content_length = len;
    } else if (eq_nocase(hd->name, hd->name_len, "transfer-encoding")) {
        int last = 0;
        if (*te_seen) return fail(h, NV_HTTP_RESPONSE_BAD, "transfer-encoding repeated");
        *te_seen = 1;
        if (!list_has(hd->value, hd->value_len, "chunked", &last) || !last)
            return fail(h, NV_HTTP_RESPONSE_BAD, "transfer-encoding without final chunked");
        h->chunked = 1;
    } else if (eq_nocase(hd->name, hd->name_len, "connection")) {
        if (list_has(hd->value, hd->value_len, "close", NULL)) *conn_close = 1;
        if (list_has(hd->value, hd->value_len, "keep-alive", NULL)) *conn_keep_alive = 1;
    }
    return NV_OK;
}

int nv_http_response_parse(const char *buf, size_t len, size_t head_bytes_max, nv_http_response_head *h) {
    h->error = NULL;
    h->headers_len = 0;
    h->head_bytes = 0;
    h->content_length = -1;
    h->chunked = 0;
    h->keep_alive = 0;
    h->status = 0;
    h->reason = NULL, h->reason_len = 0;

    size_t scan = len < head_bytes_max ? len : head_bytes_max;
    /* The head ends at the first empty line: "\n\r\n" or "\n\n". */
    const char *end = NULL;
    for (const char *q = buf; q < buf + scan;) {
        const char *lf = memchr(q, '\n', (size_t)(buf + scan - q));
        if (lf == NULL) break;
        const char *nx = lf + 1;
        if (nx < buf + scan && *nx == '\n') { end = nx + 1; break; }
        if (nx + 1 < buf + scan && nx[0] == '\r' && nx[1] == '\n') { end = nx + 2; break; }
        q = nx;
    }
    if (len > 0 && memcmp(buf, "HTTP/1.", len < 7 ? len : 7) != 0)
        return fail(h, NV_HTTP_RESPONSE_BAD, "not an HTTP/1.x response");
    if (end == NULL) {
        if (len >= head_bytes_max) return fail(h, NV_HTTP_RESPONSE_TOO_LARGE, "response head too large");
        return NV_AGAIN;
    }

    const char *eol, *next;
    if (!line_end(buf, end, &eol, &next)) return fail(h, NV_HTTP_RESPONSE_BAD, "bare CR");
    int rc = parse_status_line(buf, eol, h);
    if (rc != NV_OK) return rc;

    int conn_close = 0, conn_keep_alive = 0, te_seen = 0;
    const char *p = next;
    /* Bounded: each turn consumes one line of a head at most head_bytes_max long. */
    while (p < end) {
        if (!line_end(p, end, &eol, &next)) return fail(h, NV_HTTP_RESPONSE_BAD, "bare CR");
        if (eol == p) break; /* the empty line */
        if (*p == ' ' || *p == '\t') return fail(h, NV_HTTP_RESPONSE_BAD, "obsolete line folding");
        rc = parse_header(p, eol, h, &conn_close, &conn_keep_alive, &te_seen);
        if (rc != NV_OK) return rc;
        p = next;
    }
    if (h->chunked && h->content_length >= 0)
        return fail(h, NV_HTTP_RESPONSE_BAD, "both content-length and transfer-encoding");
    h->keep_alive = h->version_minor == 1 ? !conn_close : (conn_keep_alive && !conn_close);
    h->head_bytes = (size_t)(end - buf);
    return NV_OK;
}

nv_http_body_kind nv_http_response_body_kind(const nv_http_response_head *h, int head_request) {
    if (head_request || h->status < 200 || h->status == 204 || h->status == 304) return NV_HTTP_BODY_NONE;
    if (h->chunked) return NV_HTTP_BODY_CHUNKED;
    if (h->content_length >= 0) return NV_HTTP_BODY_LENGTH;
    return NV_HTTP_BODY_CLOSE;
}

const nv_http_header *nv_http_response_header(const nv_http_response_head *h, const char *name, size_t name_len) {
    for (uint32_t i = 0; i < h->headers_len; i++) {
        const nv_http_header *hd = &h->headers[i];
        if (hd->name_len != name_len) continue;
        size_t j = 0;
        while (j < name_len && lower((uint8_t)hd->name[j]) == lower((uint8_t)name[j])) j++;
        if (j == name_len) return hd;
    }
    return NULL;
}
