/* test_ledger_post.c -- the posting layer's number parsing: every edge of 128 bits. */
#include <string.h>

#include "ledger_post.h"
#include "test.h"

static int parses(const char *s, nv_u128 *v) { return nv_ledger_parse_u128(s, strlen(s), v) == NV_OK; }

static void test_parse_edges(void)
{
    nv_u128 v;
    CHECK(parses("0", &v) && v == 0);
    CHECK(parses("9", &v) && v == 9);
    CHECK(parses("18446744073709551615", &v) && v == UINT64_MAX);
    CHECK(parses("18446744073709551616", &v) && v == (nv_u128)UINT64_MAX + 1);
    CHECK(parses("10000000000000000000", &v) && v == (nv_u128)10000000000000000000u);
    CHECK(parses("340282366920938463463374607431768211455", &v) && v == NV_LEDGER_U128_MAX);
    CHECK(parses("0000000000000000000000000000000000000000", &v) == 0); /* 40 digits */
    CHECK(parses("000000000000000000000000000000000000001", &v) && v == 1); /* 39 digits */
    CHECK(!parses("340282366920938463463374607431768211456", &v));
    CHECK(!parses("999999999999999999999999999999999999999", &v));
    CHECK(!parses("", &v));
    CHECK(!parses("-1", &v));
    CHECK(!parses("1a", &v));
    CHECK(!parses("12345678901234567890x", &v));
    CHECK(!parses(" 1", &v));
    char buf[40];
    /* every power of ten round-trips through nv_ledger_u128_str */
    nv_u128 p = 1;
    for (int i = 0; i < 39; i++, p *= 10) {
        CHECK(parses(nv_ledger_u128_str(p, buf), &v) && v == p);
        CHECK(parses(nv_ledger_u128_str(p - 1, buf), &v) && v == p - 1);
    }
}

int main(void)
{
    TEST_RUN(test_parse_edges);
    return TEST_DONE();
}
