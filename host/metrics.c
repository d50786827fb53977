/* metrics.c -- counters in shared memory: workers add with atomics, any
 * worker renders /metrics for the whole server. */
#include "metrics.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "limits.h"
#include "log.h"
#include "nv.h"

/* Upper bounds of the latency buckets, in microseconds (+Inf is implied). */
static const uint64_t bucket_us[] = {500,    1000,   2500,    5000,    10000,   25000,  50000,
                                     100000, 250000, 500000, 1000000, 2500000, 10000000};
#define NV_METRICS_BUCKETS (sizeof bucket_us / sizeof bucket_us[0])

typedef struct series {
    uint32_t used;    /* 0: free; set last, after route and status, with release order */
    uint32_t status;
    uint32_t route_len;
    char route[NV_METRICS_ROUTE_BYTES_MAX];
    uint64_t count;
    uint64_t sum_us;
    uint64_t buckets[NV_METRICS_BUCKETS]; /* non-cumulative; render sums them */
} series;

struct nv_metrics {
    int workers;
    int lock; /* guards claiming a free series; increments need no lock */
    struct {
        int64_t connections;
        int64_t lua_bytes;
    } worker[NV_WORKERS_MAX + 1];
    series s[NV_METRICS_SERIES_MAX];
};

nv_metrics *nv_metrics_create(int workers) {
    nv_metrics *m = mmap(NULL, sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    memset(m, 0, sizeof *m);
    m->workers = workers;
    return m;
}

static uint32_t hash(const char *p, size_t n, int status) {
    uint32_t h = 2166136261u ^ (uint32_t)status;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

static series *find(nv_metrics *m, const char *route, size_t len, int status) {
    uint32_t h = hash(route, len, status);
    for (uint32_t probe = 0; probe < NV_METRICS_SERIES_MAX; probe++) {
        series *s = &m->s[(h + probe) % NV_METRICS_SERIES_MAX];
        if (__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) {
            if (s->status == (uint32_t)status && s->route_len == len && memcmp(s->route, route, len) == 0)
                return s;
            continue;
        }
        /* Claim it under the lock: another worker may be claiming the same slot. */
        while (__atomic_exchange_n(&m->lock, 1, __ATOMIC_ACQUIRE)) {
        }
        if (!s->used) {
            s->status = (uint32_t)status;
            s->route_len = (uint32_t)len;
            memcpy(s->route, route, len);
            __atomic_store_n(&s->used, 1, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&m->lock, 0, __ATOMIC_RELEASE);
        if (s->status == (uint32_t)status && s->route_len == len && memcmp(s->route, route, len) == 0)
            return s;
    }
    return NULL;
}

void nv_metrics_request(nv_metrics *m, const char *route, size_t route_len, int status,
                        uint64_t duration_us) {
    if (m == NULL) return;
    if (route_len >= NV_METRICS_ROUTE_BYTES_MAX) route = "other", route_len = 5;
    series *s = find(m, route, route_len, status);
    if (s == NULL) s = find(m, "other", 5, status);
    if (s == NULL) return; /* table full even for "other": counted nowhere, never a crash */
    size_t b = 0;
    while (b < NV_METRICS_BUCKETS && duration_us > bucket_us[b]) b++;
    __atomic_fetch_add(&s->count, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&s->sum_us, duration_us, __ATOMIC_RELAXED);
    if (b < NV_METRICS_BUCKETS) __atomic_fetch_add(&s->buckets[b], 1, __ATOMIC_RELAXED);
}

void nv_metrics_worker(nv_metrics *m, int worker, int64_t connections, size_t lua_bytes) {
    if (m == NULL || worker < 0 || worker > NV_WORKERS_MAX) return;
    __atomic_store_n(&m->worker[worker].connections, connections, __ATOMIC_RELAXED);
    __atomic_store_n(&m->worker[worker].lua_bytes, (int64_t)lua_bytes, __ATOMIC_RELAXED);
}

static int put(nv_buf *out, size_t max, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
#include <stdarg.h>
static int put(nv_buf *out, size_t max, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line) return NV_ERR;
    return nv_buf_append(out, line, (size_t)n, max);
}

int nv_metrics_render(nv_metrics *m, const char *service, nv_buf *out, size_t max) {
    int rc = NV_OK;
    rc |= put(out, max, "# HELP nuvion_http_requests_total HTTP requests answered.\n"
                        "# TYPE nuvion_http_requests_total counter\n");
    for (size_t i = 0; i < NV_METRICS_SERIES_MAX; i++) {
        series *s = &m->s[i];
        if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) continue;
        rc |= put(out, max, "nuvion_http_requests_total{service=\"%s\",route=\"%.*s\",status=\"%u\"} %llu\n",
                  service, (int)s->route_len, s->route, s->status,
                  (unsigned long long)__atomic_load_n(&s->count, __ATOMIC_RELAXED));
    }
    rc |= put(out, max, "# HELP nuvion_http_request_duration_seconds Time from a complete request to its response.\n"
                        "# TYPE nuvion_http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < NV_METRICS_SERIES_MAX; i++) {
        series *s = &m->s[i];
        if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) continue;
        uint64_t cum = 0;
        for (size_t b = 0; b < NV_METRICS_BUCKETS; b++) {
            cum += __atomic_load_n(&s->buckets[b], __ATOMIC_RELAXED);
            rc |= put(out, max,
                      "nuvion_http_request_duration_seconds_bucket{service=\"%s\",route=\"%.*s\",status=\"%u\",le=\"%g\"} %llu\n",
                      service, (int)s->route_len, s->route, s->status, (double)bucket_us[b] / 1e6,
                      (unsigned long long)cum);
        }
        uint64_t count = __atomic_load_n(&s->count, __ATOMIC_RELAXED);
        rc |= put(out, max,
                  "nuvion_http_request_duration_seconds_bucket{service=\"%s\",route=\"%.*s\",status=\"%u\",le=\"+Inf\"} %llu\n"
                  "nuvion_http_request_duration_seconds_sum{service=\"%s\",route=\"%.*s\",status=\"%u\"} %.6f\n"
                  "nuvion_http_request_duration_seconds_count{service=\"%s\",route=\"%.*s\",status=\"%u\"} %llu\n",
                  service, (int)s->route_len, s->route, s->status, (unsigned long long)count,
                  service, (int)s->route_len, s->route, s->status,
                  (double)__atomic_load_n(&s->sum_us, __ATOMIC_RELAXED) / 1e6,
                  service, (int)s->route_len, s->route, s->status, (unsigned long long)count);
    }
    rc |= put(out, max, "# HELP nuvion_http_open_connections Open client connections per worker.\n"
                        "# TYPE nuvion_http_open_connections gauge\n");
    for (int w = 1; w <= m->workers; w++)
        rc |= put(out, max, "nuvion_http_open_connections{service=\"%s\",worker=\"%d\"} %lld\n", service,
                  w, (long long)__atomic_load_n(&m->worker[w].connections, __ATOMIC_RELAXED));
    rc |= put(out, max, "# HELP nuvion_lua_memory_bytes Bytes held by the Lua states of each worker.\n"
                        "# TYPE nuvion_lua_memory_bytes gauge\n");
    for (int w = 1; w <= m->workers; w++)
        rc |= put(out, max, "nuvion_lua_memory_bytes{service=\"%s\",worker=\"%d\"} %lld\n", service, w,
                  (long long)__atomic_load_n(&m->worker[w].lua_bytes, __ATOMIC_RELAXED));
    return rc == NV_OK ? NV_OK : NV_ERR;
}
