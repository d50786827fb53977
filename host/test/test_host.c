/* test_host.c -- unit tests of the host's small internals: the bounded buffer,
 * configuration parsing, log escaping, and the shared metrics table. */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "nv_limits.h"
#include "log.h"
#include "metrics.h"
#include "test.h"

static void buf_grows_up_to_its_bound(void) {
    nv_buf b = {0};
    CHECK_INT_EQ(nv_buf_append(&b, "hello", 5, 8), NV_OK);
    CHECK_INT_EQ(nv_buf_append(&b, "abc", 3, 8), NV_OK);
    CHECK_MEM_EQ(b.data, b.len, "helloabc");
    CHECK_INT_EQ(nv_buf_append(&b, "x", 1, 8), NV_ERR); /* one past the bound */
    CHECK_INT_EQ(b.len, 8);
    nv_buf_consume(&b, 5);
    CHECK_MEM_EQ(b.data, b.len, "abc");
    nv_buf_consume(&b, 3);
    CHECK_INT_EQ(b.len, 0);
    nv_buf_free(&b);
    CHECK(b.data == NULL);
}

static void buf_refuses_overflowing_sizes(void) {
    nv_buf b = {0};
    CHECK_INT_EQ(nv_buf_reserve(&b, SIZE_MAX, 1024), NV_ERR);
    CHECK_INT_EQ(nv_buf_reserve(&b, 1024, 1024), NV_OK);
    b.len = 1000;
    CHECK_INT_EQ(nv_buf_reserve(&b, SIZE_MAX - 10, SIZE_MAX), NV_ERR);
    nv_buf_free(&b);
}

static void config_reads_defaults_and_rejects_bad_values(void) {
    char err[256];
    int64_t v;
    unsetenv("NV_TEST_KEY");
    CHECK_INT_EQ(nv_config_int("NV_TEST_KEY", 7, 1, 10, &v, err, sizeof err), NV_OK);
    CHECK_INT_EQ(v, 7);
    setenv("NV_TEST_KEY", "10", 1);
    CHECK_INT_EQ(nv_config_int("NV_TEST_KEY", 7, 1, 10, &v, err, sizeof err), NV_OK);
    CHECK_INT_EQ(v, 10);
    setenv("NV_TEST_KEY", "11", 1);
    CHECK_INT_EQ(nv_config_int("NV_TEST_KEY", 7, 1, 10, &v, err, sizeof err), NV_ERR);
    CHECK(strstr(err, "NV_TEST_KEY: 11 is outside [1, 10]") != NULL);
    setenv("NV_TEST_KEY", "12abc", 1);
    CHECK_INT_EQ(nv_config_int("NV_TEST_KEY", 7, 1, 10, &v, err, sizeof err), NV_ERR);
    CHECK(strstr(err, "is not an integer") != NULL);
    setenv("NV_TEST_KEY", "99999999999999999999999", 1);
    CHECK_INT_EQ(nv_config_int("NV_TEST_KEY", 7, 1, 10, &v, err, sizeof err), NV_ERR);
    unsetenv("NV_TEST_KEY");
}

static void config_load_names_the_bad_key(void) {
    nv_config c;
    char err[256];
    setenv("NUVION_HTTP_BODY_BYTES", "-1", 1);
    CHECK_INT_EQ(nv_config_load(&c, err, sizeof err), NV_ERR);
    CHECK(strncmp(err, "NUVION_HTTP_BODY_BYTES:", 23) == 0);
    unsetenv("NUVION_HTTP_BODY_BYTES");
    CHECK_INT_EQ(nv_config_load(&c, err, sizeof err), NV_OK);
    CHECK_INT_EQ(c.body_bytes_max, NV_HTTP_BODY_BYTES_DEFAULT);
    CHECK_INT_EQ(c.shutdown_grace_ms, NV_SHUTDOWN_GRACE_MS_DEFAULT);
    CHECK(c.workers >= 1 && c.workers <= NV_WORKERS_MAX);
}

static void log_escape_keeps_json_valid(void) {
    nv_buf b = {0};
    const char in[] = "a\"b\\c\nd\te\x01\x1f/\xc3\xa9";
    CHECK_INT_EQ(nv_log_escape(&b, in, sizeof in - 1, 1024), NV_OK);
    CHECK_MEM_EQ(b.data, b.len, "a\\\"b\\\\c\\nd\\te\\u0001\\u001f/\xc3\xa9");
    b.len = 0;
    CHECK_INT_EQ(nv_log_escape(&b, "\"\"\"\"", 4, 6), NV_ERR); /* bounded */
    nv_buf_free(&b);
}

static int count_of(const char *text, const char *series) {
    const char *p = strstr(text, series);
    if (p == NULL) return -1;
    return atoi(p + strlen(series));
}

static void metrics_count_by_route_and_status(void) {
    nv_metrics *m = nv_metrics_create(2);
    CHECK(m != NULL);
    for (int i = 0; i < 3; i++) nv_metrics_request(m, "/v1/x", 5, 200, 700);
    nv_metrics_request(m, "/v1/x", 5, 404, 20000000);
    nv_metrics_worker(m, 2, 7, 4096);
    nv_buf out = {0};
    CHECK_INT_EQ(nv_metrics_render(m, "core", &out, 1 << 20), NV_OK);
    nv_buf_append(&out, "", 1, 1 << 21);
    CHECK_INT_EQ(count_of(out.data, "nuvion_http_requests_total{service=\"core\",route=\"/v1/x\",status=\"200\"} "), 3);
    CHECK_INT_EQ(count_of(out.data, "nuvion_http_requests_total{service=\"core\",route=\"/v1/x\",status=\"404\"} "), 1);
    /* 700 us falls in the 1 ms bucket, not the 0.5 ms one; 20 s only in +Inf */
    CHECK_INT_EQ(count_of(out.data, "route=\"/v1/x\",status=\"200\",le=\"0.0005\"} "), 0);
    CHECK_INT_EQ(count_of(out.data, "route=\"/v1/x\",status=\"200\",le=\"0.001\"} "), 3);
    CHECK_INT_EQ(count_of(out.data, "route=\"/v1/x\",status=\"404\",le=\"10\"} "), 0);
    CHECK_INT_EQ(count_of(out.data, "route=\"/v1/x\",status=\"404\",le=\"+Inf\"} "), 1);
    CHECK_INT_EQ(count_of(out.data, "nuvion_http_open_connections{service=\"core\",worker=\"2\"} "), 7);
    CHECK_INT_EQ(count_of(out.data, "nuvion_lua_memory_bytes{service=\"core\",worker=\"2\"} "), 4096);
    nv_buf_free(&out);
    nv_metrics_free(m);
}

static void metrics_table_is_bounded(void) {
    nv_metrics *m = nv_metrics_create(1);
    char route[32];
    for (int i = 0; i < NV_METRICS_SERIES_MAX + 50; i++) {
        int n = snprintf(route, sizeof route, "/r/%d", i);
        nv_metrics_request(m, route, (size_t)n, 200, 1);
    }
    /* The table is full: later routes land in route="other" when a slot is
     * left for it, and nothing crashes or grows. */
    nv_buf out = {0};
    CHECK_INT_EQ(nv_metrics_render(m, "core", &out, 64 << 20), NV_OK);
    nv_buf_free(&out);
    char longroute[NV_METRICS_ROUTE_BYTES_MAX + 10];
    memset(longroute, 'a', sizeof longroute);
    nv_metrics_request(m, longroute, sizeof longroute, 200, 1); /* too long: counted as "other" */
    nv_metrics_free(m);
}

int main(void) {
    TEST_RUN(buf_grows_up_to_its_bound);
    TEST_RUN(buf_refuses_overflowing_sizes);
    TEST_RUN(config_reads_defaults_and_rejects_bad_values);
    TEST_RUN(config_load_names_the_bad_key);
    TEST_RUN(log_escape_keeps_json_valid);
    TEST_RUN(metrics_count_by_route_and_status);
    TEST_RUN(metrics_table_is_bounded);
    return TEST_DONE();
}
