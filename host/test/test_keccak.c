/* test_keccak.c -- unit tests of keccak.c: published Keccak-256 vectors, the 136-byte rate boundary, chunking. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keccak.h"
#include "nv.h"
#include "test.h"

static void to_hex(const uint8_t *d, char out[2 * NV_KECCAK256_BYTES + 1])
{
    for (int i = 0; i < NV_KECCAK256_BYTES; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

static void check_digest(const void *in, size_t len, const char *want)
{
    uint8_t d[NV_KECCAK256_BYTES];
    char h[2 * NV_KECCAK256_BYTES + 1];
    nv_keccak256(in, len, d);
    to_hex(d, h);
    CHECK_MEM_EQ(h, strlen(h), want);
}

static void test_published_vectors(void)
{
    /* The empty string and "abc" (Keccak team, Ethereum's yellow paper tooling). */
    check_digest("", 0, "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");
    check_digest("abc", 3, "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45");
    const char *fox = "The quick brown fox jumps over the lazy dog";
    check_digest(fox, strlen(fox), "4d741b6f1eb29cb2a9b9911c82f56fa8d73b04959d3d9d222895df6c0b28aa15");
    /* Solidity's function selectors are the first 4 bytes: transfer(address,uint256) = a9059cbb. */
    const char *sel = "transfer(address,uint256)";
    uint8_t d[NV_KECCAK256_BYTES];
    nv_keccak256(sel, strlen(sel), d);
    CHECK(d[0] == 0xa9 && d[1] == 0x05 && d[2] == 0x9c && d[3] == 0xbb);
}

/* Lengths around one and two blocks of the 136-byte rate: the padding lands
 * on the last byte (135: 0x01 and 0x80 together as 0x81), fills a block
 * exactly (136: a whole block of padding follows), or spills (137). Values
 * from js-sha3 0.9.3, an independent implementation. */
static void test_rate_boundary(void)
{
    static const struct {
        size_t n;
        const char *want;
    } cases[] = {
        {135, "34367dc248bbd832f4e3e69dfaac2f92638bd0bbd18f2912ba4ef454919cf446"},
        {136, "a6c4d403279fe3e0af03729caada8374b5ca54d8065329a3ebcaeb4b60aa386e"},
        {137, "d869f639c7046b4929fc92a4d988a8b22c55fbadb802c0c66ebcd484f1915f39"},
        {271, "132f47effd6c8b1b299efa53fe68aece77ec8ae4eb2e294f668eec94f76001e1"},
        {272, "cf7fcd4f705ee749930d19ca84561a9bf62516bd90a471545fa2f49fdc7e63c8"},
        {273, "5a7b8187d2778e614097fac3097573de1fee4d972304d3360796a857029bb176"},
        {1000, "b6a4ac1f51884d71f30fa397a5e155de3099e11fc0edef5d08b646e621e19de9"},
    };
    char buf[1000];
    memset(buf, 'a', sizeof(buf));
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) check_digest(buf, cases[i].n, cases[i].want);
}

static void test_chunking_matches_one_shot(void)
{
    uint8_t in[300], one[NV_KECCAK256_BYTES], inc[NV_KECCAK256_BYTES];
    for (int i = 0; i < 300; i++) in[i] = (uint8_t)i;
    check_digest(in, sizeof(in), "a679e749a6af300c36e7ff2255d220864eab27b382f9cfdc5aa4d13563ba36ff");
    static const size_t steps[] = {1, 3, 64, 135, 136, 137, 299};
    for (size_t len = 0; len <= sizeof(in); len += 23) {
        nv_keccak256(in, len, one);
        for (size_t s = 0; s < NV_ARRAY_LEN(steps); s++) {
            nv_keccak k;
            nv_keccak256_init(&k);
            for (size_t off = 0; off < len; off += steps[s])
                nv_keccak256_update(&k, in + off, len - off < steps[s] ? len - off : steps[s]);
            nv_keccak256_update(&k, in, 0); /* an empty update changes nothing */
            nv_keccak256_final(&k, inc);
            CHECK(memcmp(one, inc, sizeof(one)) == 0);
        }
    }
}

static void test_final_wipes_state(void)
{
    nv_keccak k, zero;
    uint8_t d[NV_KECCAK256_BYTES];
    memset(&zero, 0, sizeof(zero));
    nv_keccak256_init(&k);
    nv_keccak256_update(&k, "secret key material", 19);
    nv_keccak256_final(&k, d);
    CHECK(memcmp(&k, &zero, sizeof(k)) == 0);
}

int main(void)
{
    TEST_RUN(test_published_vectors);
    TEST_RUN(test_rate_boundary);
    TEST_RUN(test_chunking_matches_one_shot);
    TEST_RUN(test_final_wipes_state);
    return TEST_DONE();
}
