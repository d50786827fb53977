/* test.h -- the smallest test framework that does the job: each check is
 * counted, a failed one prints where and why, main() ends with the one line
 * "N passed, N failed" that scripts/test.sh sums over every test binary. */
#ifndef NV_TEST_H
#define NV_TEST_H

#include <stdio.h>
#include <string.h>

/* Line-buffered, so a test binary that aborts (a sanitizer report) keeps the
 * verdicts printed before it. */
__attribute__((constructor)) static void nv_test_line_buffered(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

static int nv_test_passed;
static int nv_test_failed;
static const char *nv_test_current = "";

/* A test case: a function; TEST_RUN prints its verdict. A case passes when
 * none of its checks failed. */
#define TEST_RUN(fn)                                                        \
    do {                                                                    \
        int failed_before_ = nv_test_failed_checks;                         \
        nv_test_current = #fn;                                              \
        fn();                                                               \
        if (nv_test_failed_checks == failed_before_) {                      \
            nv_test_passed++;                                               \
            printf("ok - %s\n", #fn);                                       \
        } else {                                                            \
            nv_test_failed++;                                               \
            printf("not ok - %s\n", #fn);                                   \
        }                                                                   \
    } while (0)

static int nv_test_failed_checks;

#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            nv_test_failed_checks++;                                        \
            printf("  %s: %s:%d: CHECK(%s) failed\n", nv_test_current,       \
                   __FILE__, __LINE__, #cond);                              \
        }                                                                   \
    } while (0)

#define CHECK_INT_EQ(a, b)                                                  \
    do {                                                                    \
        long long a_ = (long long)(a), b_ = (long long)(b);                 \
        if (a_ != b_) {                                                     \
            nv_test_failed_checks++;                                        \
            printf("  %s: %s:%d: %s == %s failed (%lld != %lld)\n",          \
                   nv_test_current, __FILE__, __LINE__, #a, #b, a_, b_);    \
        }                                                                   \
    } while (0)

#define CHECK_MEM_EQ(p, n, lit)                                             \
    do {                                                                    \
        size_t n_ = (size_t)(n);                                            \
        if (n_ != strlen(lit) || memcmp((p), (lit), n_) != 0) {             \
            nv_test_failed_checks++;                                        \
            printf("  %s: %s:%d: \"%.*s\" != \"%s\"\n", nv_test_current,     \
                   __FILE__, __LINE__, (int)n_, (const char *)(p), (lit));  \
        }                                                                   \
    } while (0)

#define TEST_DONE()                                                         \
    (printf("%d passed, %d failed\n", nv_test_passed, nv_test_failed),      \
     nv_test_failed == 0 ? 0 : 1)

#endif
