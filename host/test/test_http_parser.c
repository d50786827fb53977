/* test_http_parser.c -- unit tests of the HTTP/1.1 request-head parser and the chunked body decoder. */
#include <stdlib.h>

#include "http_parser.h"
#include "test.h"

#define LIMIT NV_HTTP_HEADER_BYTES_DEFAULT
#define OK NV_OK
#define AGAIN NV_AGAIN
#define E400 NV_HTTP_PARSE_BAD_REQUEST
#define E413 NV_HTTP_CHUNKED_TOO_LARGE
#define E414 NV_HTTP_PARSE_URI_TOO_LONG
#define E431 NV_HTTP_PARSE_HEADERS_TOO_LARGE
#define E501 NV_HTTP_PARSE_NOT_IMPLEMENTED
#define E505 NV_HTTP_PARSE_VERSION

static nv_http_request_head head; /* 2.4 KB: one, not one per test frame */

/* A heap copy of exactly n bytes, so AddressSanitizer sees any read past the end. */
static char *dup_exact(const char *s, size_t n)
{
    char *p = malloc(n > 0 ? n : 1);
    if (p == NULL) abort();
    memcpy(p, s, n);
    return p;
}

/* Parses s[0..n) from an exact-size heap copy; *copy keeps it alive for the pointers in h. */
static int parse_n(const char *s, size_t n, size_t max, nv_http_request_head *h, char **copy)
{
    *copy = dup_exact(s, n);
    return nv_http_parse_head(*copy, n, max, h);
}

/* Same fields, pointers compared as offsets into their own buffers. */
#define OFF(h, f, buf) ((h)->f - (buf))
static int heads_equal(const nv_http_request_head *a, const char *ab, const nv_http_request_head *b, const char *bb)
{
    if (OFF(a, method, ab) != OFF(b, method, bb) || a->method_len != b->method_len) return 0;
    if (OFF(a, target, ab) != OFF(b, target, bb) || a->target_len != b->target_len) return 0;
    if (OFF(a, path, ab) != OFF(b, path, bb) || a->path_len != b->path_len) return 0;
    if (OFF(a, query, ab) != OFF(b, query, bb) || a->query_len != b->query_len) return 0;
    if (a->version_minor != b->version_minor || a->headers_len != b->headers_len) return 0;
    if (a->head_bytes != b->head_bytes || a->content_length != b->content_length) return 0;
    if (a->chunked != b->chunked || a->keep_alive != b->keep_alive) return 0;
    if (a->expect_continue != b->expect_continue) return 0;
    for (uint32_t i = 0; i < a->headers_len; i++) {
        const nv_http_header *x = &a->headers[i], *y = &b->headers[i];
        if (OFF(x, name, ab) != OFF(y, name, bb) || x->name_len != y->name_len) return 0;
        if (OFF(x, value, ab) != OFF(y, value, bb) || x->value_len != y->value_len) return 0;
    }
    return 1;
}

/* Every prefix of s[0..n) gives AGAIN, or the error the whole gives; the whole gives want and,
 * on OK, the same head as a longer buffer with trailing bytes. Returns the whole's result. */
static int check_every_prefix(const char *s, size_t n, size_t max, int want)
{
    static nv_http_request_head whole, part;
    char *wb, *pb;
    int rc = parse_n(s, n, max, &whole, &wb);
    CHECK_INT_EQ(rc, want);
    for (size_t k = 0; k < n; k++) {
        int prc = parse_n(s, k, max, &part, &pb);
        if (rc == OK) {
            if (k < whole.head_bytes) {
                if (prc != AGAIN) printf("  prefix %zu of \"%.*s\": %d (%s)\n", k, (int)n, s, prc, part.error);
                CHECK_INT_EQ(prc, AGAIN);
            }
        } else if (prc != AGAIN) {
            if (prc != rc) printf("  prefix %zu of \"%.*s\": %d (%s)\n", k, (int)n, s, prc, part.error);
            CHECK_INT_EQ(prc, rc);
        }
        free(pb);
    }
    if (rc == OK) { /* bytes after the head (a body, the next request) change nothing */
        char *longer = malloc(n + 7);
        if (longer == NULL) abort();
        memcpy(longer, s, n);
        memcpy(longer + n, "GET / H", 7);
        CHECK_INT_EQ(nv_http_parse_head(longer, n + 7, max, &part), OK);
        CHECK(heads_equal(&whole, wb, &part, longer));
        free(longer);
    }
    free(wb);
    return rc;
}

static void test_typical_get(void)
{
    static const char req[] =
        "GET /v1/payments/pay_123?expand=customer&limit=10 HTTP/1.1\r\n"
        "Host: api.nuvion.dev\r\n"
        "User-Agent: curl/8.4.0\r\n"
        "Accept: */*\r\n"
        "Authorization: Bearer sk_test_abc\r\n"
        "X-Request-Id:   \t 42 \t \r\n"
        "\r\n";
    char *b;
    CHECK_INT_EQ(parse_n(req, sizeof(req) - 1, LIMIT, &head, &b), OK);
    CHECK(head.error == NULL);
    CHECK_MEM_EQ(head.method, head.method_len, "GET");
    CHECK_MEM_EQ(head.target, head.target_len, "/v1/payments/pay_123?expand=customer&limit=10");
    CHECK_MEM_EQ(head.path, head.path_len, "/v1/payments/pay_123");
    CHECK_MEM_EQ(head.query, head.query_len, "expand=customer&limit=10");
    CHECK_INT_EQ(head.version_minor, 1);
    CHECK_INT_EQ(head.headers_len, 5);
    CHECK_MEM_EQ(head.headers[0].name, head.headers[0].name_len, "Host");
    CHECK_MEM_EQ(head.headers[0].value, head.headers[0].value_len, "api.nuvion.dev");
    CHECK_MEM_EQ(head.headers[2].value, head.headers[2].value_len, "*/*");
    CHECK_MEM_EQ(head.headers[4].name, head.headers[4].name_len, "X-Request-Id");
    CHECK_MEM_EQ(head.headers[4].value, head.headers[4].value_len, "42");
    CHECK_INT_EQ(head.head_bytes, sizeof(req) - 1);
    CHECK_INT_EQ(head.content_length, -1);
    CHECK(!head.chunked && head.keep_alive && !head.expect_continue);
    free(b);
}

static void test_target_split(void)
{
    static const struct { const char *target, *path, *query; } cases[] = {
        { "/", "/", "" },
        { "/a/b", "/a/b", "" },
        { "/a?", "/a", "" },
        { "/a?b=1", "/a", "b=1" },
        { "/?a?b", "/", "a?b" },
        { "/%20x?q=%3F", "/%20x", "q=%3F" },
        { "//x//", "//x//", "" },
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        char req[256];
        int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", cases[i].target);
        char *b;
        CHECK_INT_EQ(parse_n(req, (size_t)n, LIMIT, &head, &b), OK);
        CHECK_MEM_EQ(head.target, head.target_len, cases[i].target);
        CHECK_MEM_EQ(head.path, head.path_len, cases[i].path);
        CHECK_MEM_EQ(head.query, head.query_len, cases[i].query);
        CHECK(head.query >= b && head.query <= b + n); /* inside the buffer even when empty */
        free(b);
    }
}

/* One request and what parsing it must give: rc, and a word of h->error when it fails. */
typedef struct head_case {
    const char *req;
    size_t len; /* 0: strlen(req); set when req holds a NUL */
    int rc;
    const char *why;
} head_case;

static void run_head_cases(const head_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = cases[i].len != 0 ? cases[i].len : strlen(cases[i].req);
        int rc = check_every_prefix(cases[i].req, len, LIMIT, cases[i].rc);
        if (rc != cases[i].rc) printf("  case %zu: \"%s\"\n", i, cases[i].req);
        if (cases[i].why != NULL) {
            char *b;
            parse_n(cases[i].req, len, LIMIT, &head, &b);
            CHECK(head.error != NULL && strstr(head.error, cases[i].why) != NULL);
            if (head.error == NULL || strstr(head.error, cases[i].why) == NULL)
                printf("  case %zu: error \"%s\", want \"%s\"\n", i, head.error, cases[i].why);
            free(b);
        }
    }
}

static void test_request_line(void)
{
    static const head_case cases[] = {
        { "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.0\r\n\r\n", 0, OK, NULL },
        { "PATCH /x HTTP/1.1\r\nHost: a\r\n\r\n", 0, OK, NULL },
        { "M-SEARCH! /x HTTP/1.1\r\nHost: a\r\n\r\n", 0, OK, NULL },
        { "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0, OK, NULL },
        { "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, OK, NULL },
        { "\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.1\nHost: a\n\n", 0, OK, NULL },
        { "GET / HTTP/1.1\r\nHost: a\n\r\n", 0, OK, NULL },
        { " GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "missing method" },
        { "\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "missing method" },
        { "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "method" },
        { "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "method" },
        { "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "origin-form" },
        { "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "origin-form" },
        { "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "origin-form" },
        { "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "OPTIONS" },
        { "OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "OPTIONS" },
        { "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "version" },
        { "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "request-target" },
        { "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "request-target" },
        { "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "request-target" },
        { "GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n", 0, E400, "request-target" },
        { "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 28, E400, "request-target" },
        { "GET /\r\n\r\n", 0, E400, "missing HTTP version" },
        { "GET / \r\n\r\n", 0, E400, "version" },
        { "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 0, E505, NULL },
        { "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 0, E505, NULL },
        { "GET / HTTP/0.9\r\nHost: a\r\n\r\n", 0, E505, NULL },
        { "GET / HTTP/9.9\n\n", 0, E505, NULL },
        { "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 0, E400, "version" },
        { "GET / http/1.1\r\nHost: a\r\n\r\n", 0, E400, "version" },
        { "GET / HTTP/1.10\r\nHost: a\r\n\r\n", 0, E400, "version" },
        { "GET / HTTP/11.1\r\nHost: a\r\n\r\n", 0, E400, "version" },
        { "GET / HTTP/1\r\nHost: a\r\n\r\n", 0, E400, "version" },
        { "GET / HTTP/2\r\nHost: a\r\n\r\n", 0, E400, "version" },
        { "GET / HTTP/1.1\rHost: a\r\n\r\n", 0, E400, "CR without LF" },
        { "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", 0, E400, "missing method" },
    };
    run_head_cases(cases, NV_ARRAY_LEN(cases));
}

static void test_header_syntax(void)
{
    static const head_case cases[] = {
        { "GET / HTTP/1.1\r\nHost: a\r\nX:\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\t!\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 0, E400, "whitespace before the colon" },
        { "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 0, E400, "whitespace before the colon" },
        { "GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 0, E400, "whitespace before the colon" },
        { "GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 0, E400, "empty header name" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX-Y\r\n\r\n", 0, E400, "without a colon" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", 0, E400, "header name" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX\xff: b\r\n\r\n", 0, E400, "header name" },
        { "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 0, E400, "folding" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 0, E400, "folding" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", 0, E400, "folding" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 35, E400, "header value" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 0, E400, "header value" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: a\x1b[0m\r\n\r\n", 0, E400, "header value" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 0, E400, "CR without LF" },
        { "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n", 0, E400, "CR without LF" },
        { "GET / HTTP/1.1\r\nHost: a\r\n\rX: a\r\n\r\n", 0, E400, "CR without LF" },
    };
    run_head_cases(cases, NV_ARRAY_LEN(cases));

    char *b;
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX: \t a  b \t\r\nY:\r\nZ:\t\r\n\r\n";
    CHECK_INT_EQ(parse_n(req, sizeof(req) - 1, LIMIT, &head, &b), OK);
    CHECK_INT_EQ(head.headers_len, 4);
    CHECK_MEM_EQ(head.headers[1].value, head.headers[1].value_len, "a  b");
    CHECK_MEM_EQ(head.headers[2].value, head.headers[2].value_len, "");
    CHECK_MEM_EQ(head.headers[3].value, head.headers[3].value_len, "");
    for (uint32_t i = 0; i < head.headers_len; i++)
        CHECK(head.headers[i].value >= b && head.headers[i].value <= b + head.head_bytes);
    free(b);
}

/* Parses "POST / HTTP/1.1" with Host and the given extra header lines; returns the rc. */
static int parse_with(const char *version, const char *lines, nv_http_request_head *h)
{
    static char req[1024];
    int n = snprintf(req, sizeof(req), "POST / HTTP/%s\r\nHost: a\r\n%s\r\n", version, lines);
    nv_assert(n > 0 && (size_t)n < sizeof(req));
    return check_every_prefix(req, (size_t)n, LIMIT, nv_http_parse_head(req, (size_t)n, LIMIT, h));
}

static void test_content_length(void)
{
    static const struct { const char *lines; int rc; int64_t value; } cases[] = {
        { "Content-Length: 0\r\n", OK, 0 },
        { "Content-Length: 42\r\n", OK, 42 },
        { "content-LENGTH:  007 \r\n", OK, 7 },
        { "Content-Length: 9223372036854775807\r\n", OK, INT64_MAX },
        { "Content-Length: 5\r\nContent-Length: 5\r\n", OK, 5 },
        { "", OK, -1 },
        { "Content-Length:\r\n", E400, 0 },
        { "Content-Length: +1\r\n", E400, 0 },
        { "Content-Length: -1\r\n", E400, 0 },
        { "Content-Length: 1 2\r\n", E400, 0 },
        { "Content-Length: 1,1\r\n", E400, 0 },
        { "Content-Length: 0x10\r\n", E400, 0 },
        { "Content-Length: 9223372036854775808\r\n", E400, 0 },
        { "Content-Length: 99999999999999999999999\r\n", E400, 0 },
        { "Content-Length: 5\r\nContent-Length: 6\r\n", E400, 0 },
        { "Content-Length: 5\r\nX: y\r\ncontent-length: 05\r\n", OK, 5 },
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        int rc = parse_with("1.1", cases[i].lines, &head);
        CHECK_INT_EQ(rc, cases[i].rc);
        if (rc == OK) CHECK_INT_EQ(head.content_length, cases[i].value);
        if (rc != cases[i].rc) printf("  case %zu: %s\n", i, cases[i].lines);
    }
}

static void test_transfer_encoding(void)
{
    static const struct { const char *version, *lines; int rc; } cases[] = {
        { "1.1", "Transfer-Encoding: chunked\r\n", OK },
        { "1.1", "transfer-encoding:  CHUNKED \r\n", OK },
        { "1.1", "Transfer-Encoding: Chunked\r\n", OK },
        { "1.1", "Transfer-Encoding: gzip\r\n", E501 },
        { "1.1", "Transfer-Encoding: gzip, chunked\r\n", E501 },
        { "1.1", "Transfer-Encoding: chunked, chunked\r\n", E501 },
        { "1.1", "Transfer-Encoding: chunked;q=1\r\n", E501 },
        { "1.1", "Transfer-Encoding:\r\n", E501 },
        { "1.1", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", E400 },
        { "1.1", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", E400 },
        { "1.1", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", E400 },
        { "1.1", "Content-Length: 5\r\nTransfer-Encoding: gzip\r\n", E400 },
        { "1.0", "Transfer-Encoding: chunked\r\n", E400 },
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        int rc = parse_with(cases[i].version, cases[i].lines, &head);
        CHECK_INT_EQ(rc, cases[i].rc);
        if (rc == OK) CHECK(head.chunked && head.content_length == -1);
        if (rc != cases[i].rc) printf("  case %zu: %s\n", i, cases[i].lines);
    }
}

static void test_connection_and_expect(void)
{
    static const struct { const char *version, *lines; int keep_alive, expect; } cases[] = {
        { "1.1", "", 1, 0 },
        { "1.1", "Connection: close\r\n", 0, 0 },
        { "1.1", "connection: CLOSE\r\n", 0, 0 },
        { "1.1", "Connection: keep-alive, close\r\n", 0, 0 },
        { "1.1", "Connection: upgrade,,  close  ,x\r\n", 0, 0 },
        { "1.1", "Connection: keep-alive\r\nConnection: close\r\n", 0, 0 },
        { "1.1", "Connection: closed\r\n", 1, 0 },
        { "1.1", "Connection: upgrade\r\n", 1, 0 },
        { "1.0", "", 0, 0 },
        { "1.0", "Connection: keep-alive\r\n", 1, 0 },
        { "1.0", "Connection: Keep-Alive\r\n", 1, 0 },
        { "1.0", "Connection: foo , keep-alive\r\n", 1, 0 },
        { "1.0", "Connection: keep-alive, close\r\n", 0, 0 },
        { "1.1", "Expect: 100-continue\r\n", 1, 1 },
        { "1.1", "expect: 100-Continue\r\n", 1, 1 },
        { "1.1", "Expect: 200-ok\r\n", 1, 0 },
        { "1.0", "Expect: 100-continue\r\n", 0, 0 },
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        CHECK_INT_EQ(parse_with(cases[i].version, cases[i].lines, &head), OK);
        CHECK_INT_EQ(head.keep_alive, cases[i].keep_alive);
        CHECK_INT_EQ(head.expect_continue, cases[i].expect);
    }
}

static void test_host(void)
{
    static const head_case cases[] = {
        { "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.1\r\nHost:\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.1\r\nhost: api.nuvion.dev:443\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.0\r\nHost: a\r\n\r\n", 0, OK, NULL },
        { "GET / HTTP/1.1\r\nX: a\r\n\r\n", 0, E400, "missing Host" },
        { "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 0, E400, "several Host" },
        { "GET / HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n", 0, E400, "several Host" },
        { "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 0, E400, "Host" },
        { "GET / HTTP/1.1\r\nHost: evil.com/x\r\n\r\n", 0, E400, "Host" },
        { "GET / HTTP/1.1\r\nHost: u@evil.com\r\n\r\n", 0, E400, "Host" },
    };
    run_head_cases(cases, NV_ARRAY_LEN(cases));
}

static void test_header_find(void)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX-Key: 1\r\nx-key: 2\r\nIdempotency-Key: k\r\n\r\n";
    CHECK_INT_EQ(nv_http_parse_head(req, sizeof(req) - 1, LIMIT, &head), OK);
    const nv_http_header *hd = nv_http_header_find(&head, "x-KEY", 5);
    CHECK(hd != NULL && hd == &head.headers[1]);
    hd = nv_http_header_find(&head, "idempotency-key", 15);
    CHECK(hd != NULL && hd->value_len == 1 && hd->value[0] == 'k');
    CHECK(nv_http_header_find(&head, "X-Ke", 4) == NULL);
    CHECK(nv_http_header_find(&head, "X-Keys", 6) == NULL);
    CHECK(nv_http_header_find(&head, "Absent", 6) == NULL);
}

/* Writes "GET /" + target filler + headers so that the whole head is exactly `bytes` long.
 * headers: header lines besides Host. Returns the length of the request line with its CRLF. */
static size_t build_head(char *out, size_t bytes, unsigned headers)
{
    size_t n = 0;
    for (unsigned i = 0; i < headers; i++) n += (size_t)sprintf(out + n, "X-%u: v\r\n", i);
    char tail[8192];
    nv_assert(n < sizeof(tail));
    memcpy(tail, out, n);
    static const char fixed[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t fill = bytes - n - (sizeof(fixed) - 1);
    size_t p = 0;
    p += (size_t)sprintf(out, "GET /");
    memset(out + p, 'a', fill);
    p += fill;
    p += (size_t)sprintf(out + p, " HTTP/1.1\r\n");
    size_t line = p;
    p += (size_t)sprintf(out + p, "Host: a\r\n");
    memcpy(out + p, tail, n);
    p += n;
    memcpy(out + p, "\r\n", 2);
    p += 2;
    nv_assert(p == bytes);
    return line;
}

static void test_limits(void)
{
    static char buf[4096];
    char *b;
    const size_t max = 1024;

    /* the head exactly at the limit: accepted; one byte more: 431 */
    build_head(buf, max, 10);
    CHECK_INT_EQ(parse_n(buf, max, max, &head, &b), OK);
    CHECK_INT_EQ(head.head_bytes, max);
    free(b);
    CHECK_INT_EQ(parse_n(buf, max - 1, max, &head, &b), AGAIN);
    free(b);
    build_head(buf, max + 1, 10);
    CHECK_INT_EQ(parse_n(buf, max, max, &head, &b), E431); /* len == limit, not complete */
    free(b);
    CHECK_INT_EQ(parse_n(buf, max + 1, max, &head, &b), E431);
    free(b);
    CHECK_INT_EQ(parse_n(buf, max - 1, max, &head, &b), AGAIN);
    free(b);

    /* the request line alone at the limit: 431 for the head; past it: 414 */
    size_t line = build_head(buf, max + 200, 0);
    CHECK(line > max);
    CHECK_INT_EQ(parse_n(buf, max, max, &head, &b), E414);
    free(b);
    CHECK_INT_EQ(parse_n(buf, max + 200, max, &head, &b), E414);
    free(b);
    line = build_head(buf, max + 100, 0);
    CHECK_INT_EQ(parse_n(buf, line, line, &head, &b), E431); /* line fits exactly, headers do not */
    free(b);
    CHECK_INT_EQ(parse_n(buf, line, line - 1, &head, &b), E414); /* its LF is one past */
    free(b);
    buf[20] = '\x01'; /* a bad byte in an over-long line is a 400, not a 414 */
    CHECK_INT_EQ(parse_n(buf, max, max, &head, &b), E400);
    free(b);

    /* headers: exactly NV_HTTP_HEADERS_MAX (Host is one) fit; one more is 431 */
    build_head(buf, 2000, NV_HTTP_HEADERS_MAX - 1);
    CHECK_INT_EQ(parse_n(buf, 2000, LIMIT, &head, &b), OK);
    CHECK_INT_EQ(head.headers_len, NV_HTTP_HEADERS_MAX);
    free(b);
    build_head(buf, 2000, NV_HTTP_HEADERS_MAX);
    CHECK_INT_EQ(check_every_prefix(buf, 2000, LIMIT, E431), E431);
    CHECK_INT_EQ(nv_http_parse_head(buf, 2000, LIMIT, &head), E431);
    CHECK(head.error != NULL && strstr(head.error, "header fields") != NULL);

    /* nothing yet; empty lines filling the limit */
    CHECK_INT_EQ(nv_http_parse_head(NULL, 0, LIMIT, &head), AGAIN);
    memset(buf, '\n', 64);
    CHECK_INT_EQ(nv_http_parse_head(buf, 64, 64, &head), E431);
    CHECK_INT_EQ(nv_http_parse_head(buf, 63, 64, &head), AGAIN);
}

static void test_pipelined(void)
{
    static const char two[] =
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        "GET /b?x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        "GET /c HTT";
    size_t len = sizeof(two) - 1;
    char *b;
    CHECK_INT_EQ(parse_n(two, len, LIMIT, &head, &b), OK);
    CHECK_MEM_EQ(head.path, head.path_len, "/a");
    CHECK_INT_EQ(head.content_length, 5);
    size_t off = head.head_bytes + 5;
    CHECK_MEM_EQ(b + head.head_bytes, 5, "hello");
    CHECK_INT_EQ(nv_http_parse_head(b + off, len - off, LIMIT, &head), OK);
    CHECK_MEM_EQ(head.path, head.path_len, "/b");
    CHECK_MEM_EQ(head.query, head.query_len, "x");
    CHECK(!head.keep_alive);
    off += head.head_bytes;
    CHECK_INT_EQ(nv_http_parse_head(b + off, len - off, LIMIT, &head), AGAIN);
    free(b);

    /* two heads back to back with no body, the second after a stray CRLF */
    static const char back[] = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK_INT_EQ(nv_http_parse_head(back, sizeof(back) - 1, LIMIT, &head), OK);
    CHECK_MEM_EQ(head.path, head.path_len, "/1");
    off = head.head_bytes;
    CHECK_INT_EQ(nv_http_parse_head(back + off, sizeof(back) - 1 - off, LIMIT, &head), OK);
    CHECK_MEM_EQ(head.path, head.path_len, "/2");
    CHECK_INT_EQ(off + head.head_bytes, sizeof(back) - 1);
}

/* A failed parse must not leave the previous request's pointers behind: the server logs
 * method and path after an error, and the old bytes may have moved. */
static void test_error_resets_request_line(void)
{
    static const char ok[] = "POST /old?q HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char bad_method[] = " GET / HTTP/1.1\r\n\r\n";
    static const char bad_target[] = "GET /x\x01 HTTP/1.1\r\n\r\n";
    CHECK_INT_EQ(nv_http_parse_head(ok, sizeof(ok) - 1, LIMIT, &head), OK);
    CHECK_INT_EQ(nv_http_parse_head(bad_method, sizeof(bad_method) - 1, LIMIT, &head), E400);
    CHECK(head.method == NULL && head.method_len == 0 && head.path == NULL && head.query == NULL);
    CHECK(head.target == NULL && head.target_len == 0 && head.headers_len == 0);
    CHECK_INT_EQ(nv_http_parse_head(ok, sizeof(ok) - 1, LIMIT, &head), OK);
    CHECK_INT_EQ(nv_http_parse_head(bad_target, sizeof(bad_target) - 1, LIMIT, &head), E400);
    CHECK_MEM_EQ(head.method, head.method_len, "GET");
    CHECK(head.path == NULL && head.target == NULL);
    CHECK_INT_EQ(nv_http_parse_head(ok, sizeof(ok) - 1, LIMIT, &head), OK);
    CHECK_INT_EQ(nv_http_parse_head("GE", 2, LIMIT, &head), AGAIN);
    CHECK(head.method == NULL && head.path == NULL && head.error == NULL);
}

static void test_status_and_message(void)
{
    static const struct { int err, status; } cases[] = {
        { E400, 400 }, { E413, 413 }, { E414, 414 }, { E431, 431 }, { E501, 501 }, { E505, 505 },
        { NV_ERR, 500 },
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        CHECK_INT_EQ(nv_http_parse_status(cases[i].err), cases[i].status);
        const char *m = nv_http_parse_message(cases[i].err);
        CHECK(m != NULL && m[0] != '\0');
    }
    CHECK(strcmp(nv_http_parse_message(E414), nv_http_parse_message(E431)) != 0);
}

/* ---- chunked ------------------------------------------------------------------------------ */

#define OUT_MAX 4096

typedef struct chunked_result {
    int rc;
    size_t consumed, out_len;
    char out[OUT_MAX];
} chunked_result;

/* Feeds in[0..len) as pieces of at most `piece` bytes, from exact-size heap copies. */
static void feed_pieces(const char *in, size_t len, size_t piece, size_t out_max, chunked_result *r)
{
    nv_http_chunked c;
    nv_http_chunked_init(&c);
    r->rc = AGAIN;
    r->consumed = r->out_len = 0;
    for (size_t off = 0; off < len && r->rc == AGAIN;) {
        size_t n = len - off < piece ? len - off : piece, used;
        char *copy = dup_exact(in + off, n);
        r->rc = nv_http_chunked_feed(&c, copy, n, &used, r->out, out_max, &r->out_len);
        free(copy);
        if (r->rc == AGAIN) CHECK_INT_EQ(used, n);
        CHECK(used <= n);
        r->consumed += used;
        off += n;
    }
}

/* Whole, byte by byte, and split in two at every point: the same result each time. */
static void check_chunked(const char *in, size_t len, size_t out_max, int rc, const char *body, size_t consumed)
{
    static chunked_result whole, part;
    feed_pieces(in, len, len > 0 ? len : 1, out_max, &whole);
    CHECK_INT_EQ(whole.rc, rc);
    if (body != NULL) CHECK_MEM_EQ(whole.out, whole.out_len, body);
    CHECK_INT_EQ(whole.consumed, consumed);
    feed_pieces(in, len, 1, out_max, &part);
    CHECK(part.rc == whole.rc && part.consumed == whole.consumed && part.out_len == whole.out_len);
    CHECK(memcmp(part.out, whole.out, whole.out_len) == 0);
    for (size_t k = 1; k < len; k++) {
        /* first piece k bytes, the rest in one */
        nv_http_chunked c;
        nv_http_chunked_init(&c);
        size_t used1 = 0, used2 = 0, out_len = 0;
        char *a = dup_exact(in, k), *b = dup_exact(in + k, len - k);
        int r = nv_http_chunked_feed(&c, a, k, &used1, part.out, out_max, &out_len);
        if (r == AGAIN) r = nv_http_chunked_feed(&c, b, len - k, &used2, part.out, out_max, &out_len);
        CHECK(r == whole.rc && used1 + used2 == whole.consumed && out_len == whole.out_len);
        CHECK(memcmp(part.out, whole.out, whole.out_len) == 0);
        free(a);
        free(b);
    }
}

static void test_chunked_valid(void)
{
#define C(s) s, sizeof(s) - 1
    check_chunked(C("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), OUT_MAX, OK, "hello world", 26);
    check_chunked(C("0\r\n\r\n"), OUT_MAX, OK, "", 5);
    check_chunked(C("0\r\n\r\nGET / HTTP/1.1\r\n"), OUT_MAX, OK, "", 5);
    check_chunked(C("a\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n"), OUT_MAX, OK,
                  "0123456789abcdefghij", 35);
    check_chunked(C("0000000000000001\r\nx\r\n0\r\n\r\n"), OUT_MAX, OK, "x", 26);
    /* extensions, with and without values and whitespace, skipped */
    check_chunked(C("5;name=value\r\nhello\r\n1 ; a ; b=\"q s\"\r\n!\r\n0;last\r\n\r\n"), OUT_MAX, OK,
                  "hello!", 51);
    /* trailers are checked and dropped */
    check_chunked(C("3\r\nabc\r\n0\r\nX-Sum: 1\r\nY:\r\n\r\nNEXT"), OUT_MAX, OK, "abc", 27);
    /* exactly out_max decoded bytes fit */
    check_chunked(C("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), 5, OK, "abcde", 20);
    /* not finished yet */
    check_chunked(C("5\r\nhel"), OUT_MAX, AGAIN, "hel", 6);
    check_chunked(C("5\r\nhello\r\n0\r\nX: y\r\n"), OUT_MAX, AGAIN, "hello", 19);
}

static void test_chunked_invalid(void)
{
    check_chunked(C("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"), 5, E413, "abc", 10); /* stops at the size line's LF */
    check_chunked(C("6\r\nabcdef\r\n0\r\n\r\n"), 5, E413, "", 2);
    check_chunked(C("FFFFFFFFFFFFFFFF\r\n"), OUT_MAX, E413, "", 17);
    check_chunked(C("10000000000000000\r\n"), OUT_MAX, E400, "", 16); /* 17 digits */
    check_chunked(C("00000000000000001\r\n"), OUT_MAX, E400, "", 16);
    check_chunked(C("g\r\n"), OUT_MAX, E400, "", 0);
    check_chunked(C("\r\n0\r\n\r\n"), OUT_MAX, E400, "", 0);
    check_chunked(C("-1\r\n"), OUT_MAX, E400, "", 0);
    check_chunked(C("+1\r\n"), OUT_MAX, E400, "", 0);
    check_chunked(C("0x5\r\nhello\r\n"), OUT_MAX, E400, "", 1);
    check_chunked(C("5 \r\nhello\r\n0\r\n\r\n"), OUT_MAX, E400, "", 2);
    check_chunked(C("5\nhello\r\n0\r\n\r\n"), OUT_MAX, E400, "", 1);
    check_chunked(C("5\r\rhello\r\n0\r\n\r\n"), OUT_MAX, E400, "", 2);
    check_chunked(C("5\r\nhelloX\r\n0\r\n\r\n"), OUT_MAX, E400, "hello", 8);
    check_chunked(C("5\r\nhello\n0\r\n\r\n"), OUT_MAX, E400, "hello", 8);
    check_chunked(C("5\r\nhello\r\r0\r\n\r\n"), OUT_MAX, E400, "hello", 9);
    check_chunked(C("5;a\nb\r\nhello\r\n0\r\n\r\n"), OUT_MAX, E400, "", 3);
    check_chunked(C("5;a\0b\r\nhello\r\n0\r\n\r\n"), OUT_MAX, E400, "", 3);
    check_chunked(C("0\r\n X: y\r\n\r\n"), OUT_MAX, E400, "", 3);
    check_chunked(C("0\r\nX : y\r\n\r\n"), OUT_MAX, E400, "", 4);
    check_chunked(C("0\r\nX\r\n\r\n"), OUT_MAX, E400, "", 4);
    check_chunked(C("0\r\nX: a\x01\r\n\r\n"), OUT_MAX, E400, "", 7);
    check_chunked(C("0\r\nX: y\n\r\n"), OUT_MAX, E400, "", 7);
    check_chunked(C("0\r\n\n"), OUT_MAX, E400, "", 3);
    check_chunked(C("0\r\n\rX"), OUT_MAX, E400, "", 4);
}

static void test_chunked_bounds_and_state(void)
{
    static char buf[2 * NV_HTTP_CHUNK_TRAILER_BYTES_MAX + 64];
    chunked_result *r = malloc(sizeof(*r));
    if (r == NULL) abort();

    /* chunk extensions: up to NV_HTTP_CHUNK_EXT_BYTES_MAX bytes over the body */
    size_t n = 0;
    buf[n++] = '1';
    memset(buf + n, 'e', NV_HTTP_CHUNK_EXT_BYTES_MAX);
    buf[n] = ';';
    n += NV_HTTP_CHUNK_EXT_BYTES_MAX;
    memcpy(buf + n, "\r\nx\r\n0\r\n\r\n", 10);
    feed_pieces(buf, n + 10, 1000, OUT_MAX, r);
    CHECK_INT_EQ(r->rc, OK);
    memcpy(buf + n, "e\r\nx\r\n0\r\n\r\n", 11);
    feed_pieces(buf, n + 11, 1000, OUT_MAX, r);
    CHECK_INT_EQ(r->rc, E400);
    CHECK_INT_EQ(r->consumed, n);

    /* trailer section: NV_HTTP_CHUNK_TRAILER_BYTES_MAX bytes, counting its final CRLF */
    memcpy(buf, "0\r\nX: ", 6);
    size_t fill = NV_HTTP_CHUNK_TRAILER_BYTES_MAX - 3 - 2 - 2;
    memset(buf + 6, 'v', fill);
    memcpy(buf + 6 + fill, "\r\n\r\n", 4);
    feed_pieces(buf, 10 + fill, 777, OUT_MAX, r);
    CHECK_INT_EQ(r->rc, OK);
    CHECK_INT_EQ(r->consumed, 10 + fill);
    memset(buf + 6, 'v', fill + 1);
    memcpy(buf + 7 + fill, "\r\n\r\n", 4);
    feed_pieces(buf, 11 + fill, 777, OUT_MAX, r);
    CHECK_INT_EQ(r->rc, E400);

    /* after OK: OK again, nothing consumed; after an error: the same error */
    nv_http_chunked c;
    size_t used, out_len = 0;
    nv_http_chunked_init(&c);
    CHECK_INT_EQ(nv_http_chunked_feed(&c, NULL, 0, &used, r->out, OUT_MAX, &out_len), AGAIN);
    CHECK_INT_EQ(nv_http_chunked_feed(&c, "0\r\n\r\n0\r\n", 8, &used, r->out, OUT_MAX, &out_len), OK);
    CHECK_INT_EQ(used, 5);
    CHECK(c.error == NULL);
    CHECK_INT_EQ(nv_http_chunked_feed(&c, "0\r\n", 3, &used, r->out, OUT_MAX, &out_len), OK);
    CHECK_INT_EQ(used, 0);
    nv_http_chunked_init(&c);
    CHECK_INT_EQ(nv_http_chunked_feed(&c, "z", 1, &used, r->out, OUT_MAX, &out_len), E400);
    CHECK(c.error != NULL);
    CHECK_INT_EQ(nv_http_chunked_feed(&c, "0\r\n\r\n", 5, &used, r->out, OUT_MAX, &out_len), E400);
    CHECK_INT_EQ(used, 0);
    /* out_len counts what was already in out: the limit is on the total */
    nv_http_chunked_init(&c);
    out_len = 3;
    CHECK_INT_EQ(nv_http_chunked_feed(&c, "3\r\nabc\r\n", 8, &used, r->out, 5, &out_len), E413);
    CHECK_INT_EQ(out_len, 3);
    free(r);
}

int main(void)
{
    TEST_RUN(test_typical_get);
    TEST_RUN(test_target_split);
    TEST_RUN(test_request_line);
    TEST_RUN(test_header_syntax);
    TEST_RUN(test_content_length);
    TEST_RUN(test_transfer_encoding);
    TEST_RUN(test_connection_and_expect);
    TEST_RUN(test_host);
    TEST_RUN(test_header_find);
    TEST_RUN(test_limits);
    TEST_RUN(test_pipelined);
    TEST_RUN(test_error_resets_request_line);
    TEST_RUN(test_status_and_message);
    TEST_RUN(test_chunked_valid);
    TEST_RUN(test_chunked_invalid);
    TEST_RUN(test_chunked_bounds_and_state);
    return TEST_DONE();
}
