/* fuzz_http_response.c -- libFuzzer target: the client's response-head parser on hostile bytes,
 * checking its invariants. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_response.h"

/* Head limits picked by the input's size, so short inputs reach the "too large" paths too. */
static const size_t fuzz_head_limits[] = { 4096, 512, 128, 48 };

#define REQUIRE(cond)                                                                      \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);  \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* p[0..n) lies inside buf[0..len); compared as integers, never as out-of-range pointers. */
static int inside(const char *p, size_t n, const char *buf, size_t len) {
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)buf;
    return p != NULL && a >= b && n <= len && a - b <= len - n;
}

static void check_ok(const nv_http_response_head *h, const char *buf, size_t len, size_t limit) {
    size_t n = h->head_bytes;
    REQUIRE(h->error == NULL);
    REQUIRE(n >= 10 && n <= len && n <= limit);
    REQUIRE(buf[n - 1] == '\n');
    REQUIRE(memcmp(buf, "HTTP/1.", 7) == 0);
    REQUIRE(h->status >= 100 && h->status <= 599);
    REQUIRE(h->version_minor == 0 || h->version_minor == 1);
    REQUIRE(h->reason_len == 0 || inside(h->reason, h->reason_len, buf, n));
    REQUIRE(h->headers_len <= NV_HTTP_CLIENT_HEADERS_MAX);
    REQUIRE(!(h->chunked && h->content_length >= 0));
    REQUIRE(h->content_length >= -1);
    for (uint32_t i = 0; i < h->headers_len; i++) {
        const nv_http_header *hd = &h->headers[i];
        REQUIRE(hd->name_len > 0 && inside(hd->name, hd->name_len, buf, n));
        REQUIRE(inside(hd->value, hd->value_len, buf, n));
        REQUIRE(memchr(hd->name, ':', hd->name_len) == NULL);
        for (uint32_t j = 0; j < hd->value_len; j++) {
            uint8_t c = (uint8_t)hd->value[j];
            REQUIRE(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        REQUIRE(nv_http_response_header(h, hd->name, hd->name_len) != NULL);
    }
    nv_http_body_kind k = nv_http_response_body_kind(h, 0);
    REQUIRE(k >= NV_HTTP_BODY_NONE && k <= NV_HTTP_BODY_CLOSE);
    REQUIRE(nv_http_response_body_kind(h, 1) == NV_HTTP_BODY_NONE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nv_http_response_head *h = malloc(sizeof *h), *part = malloc(sizeof *part);
    REQUIRE(h != NULL && part != NULL);
    /* An exact-size copy, so ASan sees any read past the end. */
    char *buf = malloc(size > 0 ? size : 1);
    REQUIRE(buf != NULL);
    if (size > 0) memcpy(buf, data, size);
    size_t limit = fuzz_head_limits[size % (sizeof fuzz_head_limits / sizeof fuzz_head_limits[0])];

    int rc = nv_http_response_parse(buf, size, limit, h);
    REQUIRE(rc == NV_OK || rc == NV_AGAIN || rc == NV_HTTP_RESPONSE_BAD || rc == NV_HTTP_RESPONSE_TOO_LARGE);
    REQUIRE((rc == NV_OK || rc == NV_AGAIN) == (h->error == NULL));
    if (rc == NV_AGAIN) REQUIRE(size < limit);
    if (rc == NV_OK) {
        check_ok(h, buf, size, limit);
        /* The head alone parses the same; any shorter prefix is incomplete. */
        size_t n = h->head_bytes;
        REQUIRE(nv_http_response_parse(buf, n, limit, part) == NV_OK);
        REQUIRE(part->head_bytes == n && part->status == h->status && part->headers_len == h->headers_len);
        REQUIRE(part->content_length == h->content_length && part->chunked == h->chunked);
        REQUIRE(part->keep_alive == h->keep_alive);
        size_t cut = (size_t)data[0] % n;
        REQUIRE(nv_http_response_parse(buf, cut, limit, part) == NV_AGAIN);
        /* The rest is the body: feed it to the chunked decoder when the head says so. */
        if (h->chunked) {
            nv_http_chunked c;
            nv_http_chunked_init(&c);
            char out[256];
            size_t out_len = 0, used = 0;
            int brc = nv_http_chunked_feed(&c, buf + n, size - n, &used, out, sizeof out, &out_len);
            REQUIRE(used <= size - n && out_len <= sizeof out);
            REQUIRE(brc == NV_OK || brc == NV_AGAIN || brc < 0);
        }
    }
    free(buf);
    free(h);
    free(part);
    return 0;
}
