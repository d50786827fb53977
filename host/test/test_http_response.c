/* test_http_response.c -- unit tests of the client's response-head parser and body framing. */
#include <stdlib.h>
#include <string.h>

#include "http_response.h"
#include "test.h"

static nv_http_response_head h;

static int parse(const char *s) { return nv_http_response_parse(s, strlen(s), 4096, &h); }

static void test_typical(void) {
    const char *s = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    CHECK_INT_EQ(parse(s), NV_OK);
    CHECK_INT_EQ(h.status, 200);
    CHECK_INT_EQ(h.version_minor, 1);
    CHECK_MEM_EQ(h.reason, h.reason_len, "OK");
    CHECK_INT_EQ(h.headers_len, 2);
    CHECK_MEM_EQ(h.headers[0].name, h.headers[0].name_len, "Content-Type");
    CHECK_MEM_EQ(h.headers[0].value, h.headers[0].value_len, "application/json");
    CHECK_INT_EQ(h.content_length, 2);
    CHECK_INT_EQ(h.head_bytes, strlen(s) - 2);
    CHECK(h.keep_alive);
    CHECK(!h.chunked);
    CHECK(h.error == NULL);
    CHECK_INT_EQ(nv_http_response_body_kind(&h, 0), NV_HTTP_BODY_LENGTH);
    const nv_http_header *ct = nv_http_response_header(&h, "content-type", 12);
    CHECK(ct != NULL && ct == &h.headers[0]);
    CHECK(nv_http_response_header(&h, "x-none", 6) == NULL);
}

static void test_incomplete(void) {
    const char *s = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    for (size_t n = 0; n < strlen(s); n++) CHECK_INT_EQ(nv_http_response_parse(s, n, 4096, &h), NV_AGAIN);
    CHECK_INT_EQ(nv_http_response_parse(s, strlen(s), 4096, &h), NV_OK);
}

static void test_status_line(void) {
    CHECK_INT_EQ(parse("HTTP/1.0 404 Not Found\r\n\r\n"), NV_OK);
    CHECK_INT_EQ(h.status, 404);
    CHECK_INT_EQ(h.version_minor, 0);
    CHECK(!h.keep_alive);
    CHECK_INT_EQ(parse("HTTP/1.1 204\r\n\r\n"), NV_OK); /* no reason phrase */
    CHECK_INT_EQ(h.reason_len, 0);
    CHECK_INT_EQ(parse("HTTP/1.1 200 \r\n\r\n"), NV_OK); /* empty reason phrase */
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\n\n"), NV_OK);     /* bare LF */
    static const char *const bad[] = {
        "HTTP/2.0 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 x\r\n\r\n", "HTTP/1.1 600 x\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n", "HTTP/1.1 200 O\rK\r\n\r\n", "HTTP/1.1 2x0 OK\r\n\r\n",
        "SSH-2.0-OpenSSH\r\n\r\n", "HTTP/1.1 200 OK\x01\r\n\r\n",
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(bad); i++) {
        int rc = parse(bad[i]);
        CHECK_INT_EQ(rc, NV_HTTP_RESPONSE_BAD);
        if (rc != NV_HTTP_RESPONSE_BAD) printf("  accepted: %s\n", bad[i]);
        CHECK(h.error != NULL);
    }
    /* Garbage is refused before its end arrives. */
    CHECK_INT_EQ(nv_http_response_parse("\x16\x03\x01", 3, 4096, &h), NV_HTTP_RESPONSE_BAD);
}

static void test_headers(void) {
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nX-A:   padded \t\r\nX-Empty:\r\n\r\n"), NV_OK);
    CHECK_MEM_EQ(h.headers[0].value, h.headers[0].value_len, "padded");
    CHECK_INT_EQ(h.headers[1].value_len, 0);
    static const char *const bad[] = {
        "HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n",       /* space before colon */
        "HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\n\r\n",  /* obs-fold */
        "HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: v\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: b\x7f\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX-A: b\rc\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX(A): b\r\n\r\n",
    };
    for (size_t i = 0; i < NV_ARRAY_LEN(bad); i++) CHECK_INT_EQ(parse(bad[i]), NV_HTTP_RESPONSE_BAD);
}

static void test_framing(void) {
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), NV_OK);
    CHECK(h.chunked);
    CHECK_INT_EQ(nv_http_response_body_kind(&h, 0), NV_HTTP_BODY_CHUNKED);
    CHECK_INT_EQ(nv_http_response_body_kind(&h, 1), NV_HTTP_BODY_NONE); /* HEAD */
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), NV_HTTP_RESPONSE_BAD);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
                 NV_HTTP_RESPONSE_BAD);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
                 NV_HTTP_RESPONSE_BAD);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"), NV_OK);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), NV_HTTP_RESPONSE_BAD);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), NV_HTTP_RESPONSE_BAD);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n"), NV_HTTP_RESPONSE_BAD);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n"), NV_HTTP_RESPONSE_BAD);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\n\r\n"), NV_OK);
    CHECK_INT_EQ(nv_http_response_body_kind(&h, 0), NV_HTTP_BODY_CLOSE);
    static const int no_body[] = {100, 101, 199, 204, 304};
    for (size_t i = 0; i < NV_ARRAY_LEN(no_body); i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "HTTP/1.1 %d x\r\nContent-Length: 5\r\n\r\n", no_body[i]);
        CHECK_INT_EQ(parse(buf), NV_OK);
        CHECK_INT_EQ(nv_http_response_body_kind(&h, 0), NV_HTTP_BODY_NONE);
    }
}

static void test_connection(void) {
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n"), NV_OK);
    CHECK(!h.keep_alive);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\n\r\n"), NV_OK);
    CHECK(!h.keep_alive);
    CHECK_INT_EQ(parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"), NV_OK);
    CHECK(h.keep_alive);
    CHECK_INT_EQ(parse("HTTP/1.1 200 OK\r\nConnection: closed\r\n\r\n"), NV_OK); /* not the token */
    CHECK(h.keep_alive);
}

static void test_limits(void) {
    char big[600];
    memset(big, 'a', sizeof big);
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    CHECK_INT_EQ(nv_http_response_parse(big, sizeof big, 512, &h), NV_HTTP_RESPONSE_TOO_LARGE);
    CHECK_INT_EQ(nv_http_response_parse(big, 300, 512, &h), NV_AGAIN);
    /* A head that ends just past the limit is too large; one that ends at it is fine. */
    const char *s = "HTTP/1.1 200 OK\r\n\r\n";
    CHECK_INT_EQ(nv_http_response_parse(s, strlen(s), strlen(s), &h), NV_OK);
    CHECK_INT_EQ(nv_http_response_parse(s, strlen(s), strlen(s) - 1, &h), NV_HTTP_RESPONSE_TOO_LARGE);
    /* Header count. */
    size_t cap = 64 + (NV_HTTP_CLIENT_HEADERS_MAX + 1) * 8;
    char *many = malloc(cap);
    CHECK(many != NULL);
    if (many == NULL) return;
    size_t n = (size_t)snprintf(many, cap, "HTTP/1.1 200 OK\r\n");
    for (int i = 0; i < NV_HTTP_CLIENT_HEADERS_MAX + 1; i++) n += (size_t)snprintf(many + n, cap - n, "A: b\r\n");
    n += (size_t)snprintf(many + n, cap - n, "\r\n");
    CHECK_INT_EQ(nv_http_response_parse(many, n, cap, &h), NV_HTTP_RESPONSE_TOO_LARGE);
    CHECK_INT_EQ(nv_http_response_parse(many, n - 8, cap, &h), NV_AGAIN);
    free(many);
}

static void test_chunked_body(void) {
    /* The request decoder serves responses too: one check that it does here. */
    const char *body = "5\r\nhello\r\n0\r\n\r\nNEXT";
    nv_http_chunked c;
    nv_http_chunked_init(&c);
    char out[16];
    size_t out_len = 0, used = 0;
    CHECK_INT_EQ(nv_http_chunked_feed(&c, body, strlen(body), &used, out, sizeof out, &out_len), NV_OK);
    CHECK_MEM_EQ(out, out_len, "hello");
    CHECK_INT_EQ(used, strlen(body) - 4);
}

int main(void) {
    TEST_RUN(test_typical);
    TEST_RUN(test_incomplete);
    TEST_RUN(test_status_line);
    TEST_RUN(test_headers);
    TEST_RUN(test_framing);
    TEST_RUN(test_connection);
    TEST_RUN(test_limits);
    TEST_RUN(test_chunked_body);
    return TEST_DONE();
}
