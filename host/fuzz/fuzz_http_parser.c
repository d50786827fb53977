/* fuzz_http_parser.c -- libFuzzer target: the request-head parser and the chunked decoder on hostile bytes, checking their invariants. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parser.h"

/* Small head limits, chosen by the input's size, so inputs of a few hundred bytes reach the
 * 414 and 431 paths while the seeds (under 256 bytes) still parse under the larger ones. */
static const size_t fuzz_head_limits[] = { 1024, 512, 160, 64 };
#define FUZZ_BODY_BYTES_MAX 512          /* out_max of the chunked decoder ranges 0..this */
#define FUZZ_PIECE_BYTES_MAX 17          /* pieces of 1..this bytes fed to the decoder */
#define FUZZ_PREFIXES 3                  /* prefixes re-parsed per input */

/* An invariant of the parser broke: say which and crash, so libFuzzer keeps the input. */
#define REQUIRE(cond)                                                              \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                               \
        }                                                                          \
    } while (0)

/* p[0..n) lies inside buf[0..len); compared as integers, never as out-of-range pointers. */
static int inside(const char *p, size_t n, const char *buf, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)buf;
    return p != NULL && a >= b && n <= len && a - b <= len - n;
}

static int is_tchar(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* A tiny deterministic generator seeded by the input, for split points and piece sizes. */
static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static char *dup_exact(const uint8_t *p, size_t n)
{
    char *d = malloc(n > 0 ? n : 1);
    REQUIRE(d != NULL);
    if (n > 0) memcpy(d, p, n);
    return d;
}

static void check_header(const nv_http_header *hd, const char *buf, size_t head_bytes)
{
    REQUIRE(inside(hd->name, hd->name_len, buf, head_bytes) && hd->name_len > 0);
    REQUIRE(inside(hd->value, hd->value_len, buf, head_bytes));
    for (uint32_t j = 0; j < hd->name_len; j++) REQUIRE(is_tchar((uint8_t)hd->name[j]));
    for (uint32_t j = 0; j < hd->value_len; j++) {
        uint8_t c = (uint8_t)hd->value[j];
        REQUIRE(c == '\t' || (c >= 0x20 && c != 0x7f));
    }
    if (hd->value_len > 0) {
        REQUIRE(hd->value[0] != ' ' && hd->value[0] != '\t');
        REQUIRE(hd->value[hd->value_len - 1] != ' ' && hd->value[hd->value_len - 1] != '\t');
    }
}

/* What NV_OK promises about h, parsed from buf[0..len) with the given limit. */
static void check_head(const nv_http_request_head *h, const char *buf, size_t len, size_t limit)
{
    size_t n = h->head_bytes;
    REQUIRE(h->error == NULL);
    REQUIRE(n > 0 && n <= len && n <= limit);
    REQUIRE(buf[n - 1] == '\n');
    REQUIRE(inside(h->method, h->method_len, buf, n) && h->method_len > 0);
    for (uint32_t i = 0; i < h->method_len; i++) REQUIRE(is_tchar((uint8_t)h->method[i]));
    REQUIRE(inside(h->target, h->target_len, buf, n) && h->target_len > 0);
    REQUIRE(h->target[0] == '/' || (h->target[0] == '*' && h->target_len == 1));
    for (uint32_t i = 0; i < h->target_len; i++)
        REQUIRE((uint8_t)h->target[i] > 0x20 && (uint8_t)h->target[i] < 0x7f && h->target[i] != '#');
    REQUIRE(h->path == h->target && h->path_len <= h->target_len);
    REQUIRE(inside(h->query, h->query_len, buf, n));
    if (h->path_len < h->target_len) {
        REQUIRE(h->target[h->path_len] == '?' && h->query == h->target + h->path_len + 1);
        REQUIRE(h->path_len + 1 + h->query_len == h->target_len);
    } else {
        REQUIRE(h->query_len == 0 && memchr(h->target, '?', h->target_len) == NULL);
    }
    REQUIRE(h->version_minor == 0 || h->version_minor == 1);
    REQUIRE(h->headers_len <= NV_HTTP_HEADERS_MAX);
    for (uint32_t i = 0; i < h->headers_len; i++) check_header(&h->headers[i], buf, n);
    REQUIRE(h->content_length >= -1);
    REQUIRE(!h->chunked || (h->content_length == -1 && h->version_minor == 1));
    REQUIRE(!h->expect_continue || h->version_minor == 1);
    REQUIRE(h->version_minor == 0 || nv_http_header_find(h, "host", 4) != NULL);
    REQUIRE(nv_http_header_find(h, "Content-Length", 14) != NULL || h->content_length == -1);
}

/* Two heads parsed from different buffers holding the same bytes: the same fields. */
static void check_same_head(const nv_http_request_head *a, const char *ab, const nv_http_request_head *b, const char *bb)
{
    REQUIRE(a->head_bytes == b->head_bytes && a->headers_len == b->headers_len);
    REQUIRE(a->method - ab == b->method - bb && a->method_len == b->method_len);
    REQUIRE(a->query - ab == b->query - bb && a->query_len == b->query_len && a->path_len == b->path_len);
    REQUIRE(a->content_length == b->content_length && a->chunked == b->chunked);
    REQUIRE(a->keep_alive == b->keep_alive && a->expect_continue == b->expect_continue);
    for (uint32_t i = 0; i < a->headers_len; i++) {
        REQUIRE(a->headers[i].name - ab == b->headers[i].name - bb);
        REQUIRE(a->headers[i].value - ab == b->headers[i].value - bb);
        REQUIRE(a->headers[i].value_len == b->headers[i].value_len);
    }
}

/* A prefix of the input is either still incomplete, or says what the whole said. */
static void check_prefix(const uint8_t *data, size_t k, size_t limit, int rc, const nv_http_request_head *whole,
                         nv_http_request_head *part)
{
    char *copy = dup_exact(data, k);
    int prc = nv_http_parse_head(copy, k, limit, part);
    if (rc == NV_OK && k >= whole->head_bytes) {
        REQUIRE(prc == NV_OK);
        check_same_head(whole, (const char *)data, part, copy);
    } else if (rc == NV_OK || rc == NV_AGAIN) {
        REQUIRE(prc == NV_AGAIN);
    } else {
        REQUIRE(prc == NV_AGAIN || prc == rc);
        REQUIRE(prc == rc || k < limit);
    }
    free(copy);
}

static void check_parse_head(const uint8_t *data, size_t size, size_t limit, nv_http_request_head *h,
                             nv_http_request_head *part, uint32_t *seed, size_t *body_at)
{
    int rc = nv_http_parse_head((const char *)data, size, limit, h);
    *body_at = 0;
    if (rc == NV_OK) {
        check_head(h, (const char *)data, size, limit);
        *body_at = h->head_bytes;
    } else if (rc == NV_AGAIN) {
        REQUIRE(size < limit && h->error == NULL);
    }
    if (rc != NV_OK) { /* what the server logs after an error: absent, or inside this buffer */
        const char *buf = (const char *)data;
        REQUIRE(h->method == NULL ? h->method_len == 0 : inside(h->method, h->method_len, buf, size));
        REQUIRE(h->target == NULL ? h->target_len == 0 : inside(h->target, h->target_len, buf, size));
        REQUIRE(h->path == NULL ? h->path_len == 0 : inside(h->path, h->path_len, buf, size));
        REQUIRE(h->query == NULL ? h->query_len == 0 : inside(h->query, h->query_len, buf, size));
    }
    if (rc < 0) {
        REQUIRE(h->error != NULL && h->error[0] != '\0');
        int status = nv_http_parse_status(rc);
        REQUIRE(status == 400 || status == 414 || status == 431 || status == 501 || status == 505);
    }
    for (int i = 0; i < FUZZ_PREFIXES; i++) check_prefix(data, next_rand(seed) % (size + 1), limit, rc, h, part);
}

typedef struct chunked_run {
    int rc;
    size_t consumed, out_len;
} chunked_run;

/* Feeds in[0..len) in pieces of at most piece_max bytes (random sizes when 0), each from an
 * exact-size copy, into out[0..out_max), checking the decoder's promises on every call. */
static chunked_run feed(const uint8_t *in, size_t len, size_t piece_max, uint32_t *seed, char *out, size_t out_max)
{
    nv_http_chunked c;
    chunked_run r = { NV_AGAIN, 0, 0 };
    nv_http_chunked_init(&c);
    for (size_t off = 0; off < len && r.rc == NV_AGAIN;) {
        size_t n = piece_max != 0 ? piece_max : 1 + next_rand(seed) % FUZZ_PIECE_BYTES_MAX;
        if (n > len - off) n = len - off;
        char *piece = dup_exact(in + off, n);
        size_t used = (size_t)-1, before = r.out_len;
        r.rc = nv_http_chunked_feed(&c, piece, n, &used, out, out_max, &r.out_len);
        free(piece);
        REQUIRE(used <= n && r.out_len >= before && r.out_len <= out_max);
        REQUIRE(r.out_len - before <= used);
        REQUIRE(r.rc != NV_AGAIN || used == n);
        REQUIRE(r.rc == NV_AGAIN || r.rc == NV_OK || r.rc == NV_HTTP_PARSE_BAD_REQUEST ||
                r.rc == NV_HTTP_CHUNKED_TOO_LARGE);
        REQUIRE((r.rc < 0) == (c.error != NULL));
        r.consumed += used;
        off += n;
    }
    if (r.rc == NV_OK) { /* the last bytes consumed are the LF ending the body */
        REQUIRE(r.consumed >= 5 && in[r.consumed - 1] == '\n');
        size_t used = 1;
        REQUIRE(nv_http_chunked_feed(&c, (const char *)in, len, &used, out, out_max, &r.out_len) == NV_OK);
        REQUIRE(used == 0);
    }
    return r;
}

static void check_chunked(const uint8_t *in, size_t len, size_t out_max, uint32_t *seed)
{
    char *whole_out = malloc(out_max > 0 ? out_max : 1); /* exact size: a write past it is caught */
    char *split_out = malloc(out_max > 0 ? out_max : 1);
    REQUIRE(whole_out != NULL && split_out != NULL);
    chunked_run whole = feed(in, len, len > 0 ? len : 1, seed, whole_out, out_max);
    chunked_run split = feed(in, len, 0, seed, split_out, out_max);
    REQUIRE(whole.rc == split.rc && whole.consumed == split.consumed && whole.out_len == split.out_len);
    REQUIRE(memcmp(whole_out, split_out, whole.out_len) == 0);
    free(whole_out);
    free(split_out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    nv_http_request_head *h = malloc(sizeof(*h)), *part = malloc(sizeof(*part));
    REQUIRE(h != NULL && part != NULL);
    uint32_t seed = 2166136261u; /* FNV-1a of the input: the same input, the same splits */
    for (size_t i = 0; i < size; i++) seed = (seed ^ data[i]) * 16777619u;
    seed |= 1;

    size_t limit = fuzz_head_limits[size % NV_ARRAY_LEN(fuzz_head_limits)];
    size_t body_at;
    check_parse_head(data, size, limit, h, part, &seed, &body_at);
    /* after a head, the rest is its body; otherwise the whole input is tried as one */
    check_chunked(data + body_at, size - body_at, next_rand(&seed) % (FUZZ_BODY_BYTES_MAX + 1), &seed);
    free(h);
    free(part);
    return 0;
}
