/* metrics.c -- counters in shared memory: each worker writes its own table
 * (one writer, no cache line bouncing between cores), any worker renders
 * /metrics for the whole server by merging the tables. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "nv_limits.h"
#include "log.h"
#include "nv.h"

/* Upper bounds of the latency buckets, in microseconds (+Inf is implied). */
static const uint64_t bucket_us[] = {500,    1000,   2500,    5000,    10000,   25000,  50000,
                                     100000, 250000, 500000, 1000000, 2500000, 10000000};
#define NV_METRICS_BUCKETS (sizeof bucket_us / sizeof bucket_us[0])

typedef struct series {
    uint32_t used;    /* 0: free; set last, after route and status, with release order */
    uint32_t hash;
    uint32_t status;
    uint32_t route_len;
    char route[NV_METRICS_ROUTE_BYTES_MAX];
    uint64_t count;
    uint64_t sum_us;
    uint64_t buckets[NV_METRICS_BUCKETS]; /* non-cumulative; render sums them */
} series;

typedef struct table {
    int64_t connections;
    int64_t lua_bytes;
    series s[NV_METRICS_SERIES_MAX];
} table;

/* The handle is private memory (each worker has its copy after fork, with its
 * own `self`); the tables are one shared mapping. Table 0 belongs to the
 * supervisor and to `run`, table w to worker w. */
struct nv_metrics {
    int workers;
    int self;  /* the table this process writes: set after fork by nv_metrics_worker */
    table *t;  /* workers + 1 tables, MAP_SHARED */
};

nv_metrics *nv_metrics_create(int workers) {
    nv_assert(workers >= 1 && workers <= NV_WORKERS_MAX);
    nv_metrics *m = calloc(1, sizeof *m);
    if (m == NULL) return NULL;
    size_t size = (size_t)(workers + 1) * sizeof(table);
    m->t = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m->t == MAP_FAILED) {
        free(m);
        return NULL;
    }
    memset(m->t, 0, size);
    m->workers = workers;
    return m;
}

void nv_metrics_free(nv_metrics *m) {
    if (m == NULL) return;
    munmap(m->t, (size_t)(m->workers + 1) * sizeof(table));
    free(m);
}

static uint32_t hash(const char *p, size_t n, int status) {
    uint32_t h = 2166136261u ^ (uint32_t)status;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

/* Finds the series of (route, status) in t; claims a free slot when create is
 * set (only the table's own writer creates). */
static series *find(table *t, const char *route, size_t len, int status, int create) {
    uint32_t h = hash(route, len, status);
    for (uint32_t probe = 0; probe < NV_METRICS_SERIES_MAX; probe++) {
        series *s = &t->s[(h + probe) % NV_METRICS_SERIES_MAX];
        if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE)) {
            if (!create) return NULL;
            s->hash = h;
            s->status = (uint32_t)status;
            s->route_len = (uint32_t)len;
            memcpy(s->route, route, len);
            __atomic_store_n(&s->used, 1, __ATOMIC_RELEASE); /* readers see it whole */
            return s;
        }
        if (s->hash == h && s->status == (uint32_t)status && s->route_len == len &&
            memcmp(s->route, route, len) == 0)
            return s;
    }
    return NULL;
}

void nv_metrics_request(nv_metrics *m, const char *route, size_t route_len, int status,
                        uint64_t duration_us) {
    if (m == NULL) return;
    if (route_len >= NV_METRICS_ROUTE_BYTES_MAX) route = "other", route_len = 5;
    table *t = &m->t[m->self];
    series *s = find(t, route, route_len, status, 1);
    if (s == NULL) s = find(t, "other", 5, status, 1);
    if (s == NULL) return; /* table full even for "other": counted nowhere, never a crash */
    size_t b = 0;
    while (b < NV_METRICS_BUCKETS && duration_us > bucket_us[b]) b++;
    /* One writer per table: plain adds published with relaxed stores (a reader
     * may see a request in count before its bucket, never a torn value). */
    __atomic_store_n(&s->count, s->count + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&s->sum_us, s->sum_us + duration_us, __ATOMIC_RELAXED);
    if (b < NV_METRICS_BUCKETS) __atomic_store_n(&s->buckets[b], s->buckets[b] + 1, __ATOMIC_RELAXED);
}

void nv_metrics_worker(nv_metrics *m, int worker, int64_t connections, size_t lua_bytes) {
    if (m == NULL || worker < 0 || worker > m->workers) return;
    m->self = worker; /* this process's private copy of the header, after fork */
    __atomic_store_n(&m->t[worker].connections, connections, __ATOMIC_RELAXED);
    __atomic_store_n(&m->t[worker].lua_bytes, (int64_t)lua_bytes, __ATOMIC_RELAXED);
}

static int put(nv_buf *out, size_t max, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int put(nv_buf *out, size_t max, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line) return NV_ERR;
    return nv_buf_append(out, line, (size_t)n, max);
}

/* The sums of one (route, status) over every table; first is the table where
 * it was met first, so each series is rendered once. */
typedef struct merged {
    uint64_t count, sum_us, buckets[NV_METRICS_BUCKETS];
} merged;

static int seen_before(nv_metrics *m, int upto, const series *s) {
    for (int w = 0; w < upto; w++)
        if (find(&m->t[w], s->route, s->route_len, (int)s->status, 0) != NULL) return 1;
    return 0;
}

static void merge(nv_metrics *m, const series *s, merged *out) {
    memset(out, 0, sizeof *out);
    for (int w = 0; w <= m->workers; w++) {
        series *x = find(&m->t[w], s->route, s->route_len, (int)s->status, 0);
        if (x == NULL) continue;
        out->count += __atomic_load_n(&x->count, __ATOMIC_RELAXED);
        out->sum_us += __atomic_load_n(&x->sum_us, __ATOMIC_RELAXED);
        for (size_t b = 0; b < NV_METRICS_BUCKETS; b++)
            out->buckets[b] += __atomic_load_n(&x->buckets[b], __ATOMIC_RELAXED);
    }
}

/* Calls fn once per (route, status) of the whole server, with its sums. */
typedef int (*series_fn)(const series *s, const merged *v, const char *service, nv_buf *out,
                         size_t max);

static int each_series(nv_metrics *m, series_fn fn, const char *service, nv_buf *out, size_t max) {
    int rc = NV_OK;
    merged v;
    for (int w = 0; w <= m->workers; w++) {
        for (size_t i = 0; i < NV_METRICS_SERIES_MAX; i++) {
            series *s = &m->t[w].s[i];
            if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE) || seen_before(m, w, s)) continue;
            merge(m, s, &v);
            rc |= fn(s, &v, service, out, max);
        }
    }
    return rc;
}

static int put_count(const series *s, const merged *v, const char *service, nv_buf *out, size_t max) {
    return put(out, max, "nuvion_http_requests_total{service=\"%s\",route=\"%.*s\",status=\"%u\"} %llu\n",
               service, (int)s->route_len, s->route, s->status, (unsigned long long)v->count);
}

static int put_histogram(const series *s, const merged *v, const char *service, nv_buf *out,
                         size_t max) {
    int rc = NV_OK;
    uint64_t cum = 0;
    for (size_t b = 0; b < NV_METRICS_BUCKETS; b++) {
        cum += v->buckets[b];
        rc |= put(out, max,
                  "nuvion_http_request_duration_seconds_bucket{service=\"%s\",route=\"%.*s\",status=\"%u\",le=\"%g\"} %llu\n",
                  service, (int)s->route_len, s->route, s->status, (double)bucket_us[b] / 1e6,
                  (unsigned long long)cum);
    }
    rc |= put(out, max,
              "nuvion_http_request_duration_seconds_bucket{service=\"%s\",route=\"%.*s\",status=\"%u\",le=\"+Inf\"} %llu\n"
              "nuvion_http_request_duration_seconds_sum{service=\"%s\",route=\"%.*s\",status=\"%u\"} %.6f\n"
              "nuvion_http_request_duration_seconds_count{service=\"%s\",route=\"%.*s\",status=\"%u\"} %llu\n",
              service, (int)s->route_len, s->route, s->status, (unsigned long long)v->count,
              service, (int)s->route_len, s->route, s->status, (double)v->sum_us / 1e6,
              service, (int)s->route_len, s->route, s->status, (unsigned long long)v->count);
    return rc;
}

int nv_metrics_render(nv_metrics *m, const char *service, nv_buf *out, size_t max) {
    int rc = NV_OK;
    rc |= put(out, max, "# HELP nuvion_http_requests_total HTTP requests answered.\n"
                        "# TYPE nuvion_http_requests_total counter\n");
    rc |= each_series(m, put_count, service, out, max);
    rc |= put(out, max, "# HELP nuvion_http_request_duration_seconds Time from a complete request to its response.\n"
                        "# TYPE nuvion_http_request_duration_seconds histogram\n");
    rc |= each_series(m, put_histogram, service, out, max);
    rc |= put(out, max, "# HELP nuvion_http_open_connections Open client connections per worker.\n"
                        "# TYPE nuvion_http_open_connections gauge\n");
    for (int w = 1; w <= m->workers; w++)
        rc |= put(out, max, "nuvion_http_open_connections{service=\"%s\",worker=\"%d\"} %lld\n", service,
                  w, (long long)__atomic_load_n(&m->t[w].connections, __ATOMIC_RELAXED));
    rc |= put(out, max, "# HELP nuvion_lua_memory_bytes Bytes held by the Lua states of each worker.\n"
                        "# TYPE nuvion_lua_memory_bytes gauge\n");
    for (int w = 1; w <= m->workers; w++)
        rc |= put(out, max, "nuvion_lua_memory_bytes{service=\"%s\",worker=\"%d\"} %lld\n", service, w,
                  (long long)__atomic_load_n(&m->t[w].lua_bytes, __ATOMIC_RELAXED));
    return rc == NV_OK ? NV_OK : NV_ERR;
}
