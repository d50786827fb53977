/* metrics.h -- request counters and latency histograms shared by the workers
 * of one server, rendered in Prometheus text format 0.0.4. */
#ifndef NV_METRICS_H
#define NV_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct nv_metrics nv_metrics;

/* Maps a region shared with the workers forked later (MAP_SHARED). */
nv_metrics *nv_metrics_create(int workers);
/* Unmaps the tables and frees the handle (each process frees its own copy). */
void nv_metrics_free(nv_metrics *m);
/* One answered request. Routes beyond NV_METRICS_SERIES_MAX are counted under
 * route="other" so a scan of random paths cannot grow memory. */
void nv_metrics_request(nv_metrics *m, const char *route, size_t route_len, int status,
                        uint64_t duration_us);
/* A worker's gauges: open connections and Lua memory. */
void nv_metrics_worker(nv_metrics *m, int worker, int64_t connections, size_t lua_bytes);
int nv_metrics_render(nv_metrics *m, const char *service, nv_buf *out, size_t max);

#endif
