/* config.h -- settings read from the environment, each with a min, max and default. */
#ifndef NV_CONFIG_H
#define NV_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef struct nv_config {
    int port;                   /* PORT */
    int workers;                /* WEB_CONCURRENCY, default: cores */
    int64_t header_bytes_max;   /* NUVION_HTTP_HEADER_BYTES */
    int64_t body_bytes_max;     /* NUVION_HTTP_BODY_BYTES */
    int64_t connections_max;    /* NUVION_HTTP_CONNECTIONS */
    int64_t read_timeout_ms;    /* NUVION_HTTP_READ_TIMEOUT_MS */
    int64_t keepalive_ms;       /* NUVION_HTTP_KEEPALIVE_MS */
    int64_t handler_timeout_ms; /* NUVION_HTTP_HANDLER_TIMEOUT_MS */
    int64_t lua_memory_bytes;   /* NUVION_LUA_MEMORY_BYTES */
    int64_t shutdown_grace_ms;  /* NUVION_SHUTDOWN_GRACE_MS */
    int access_log;             /* NUVION_ACCESS_LOG: 1 (default) or 0 */
    int log_debug;              /* NUVION_LOG_LEVEL=debug */
} nv_config;

/* Reads every key. On a bad value writes "KEY: reason" into err and returns
 * NV_ERR: a misconfigured process must refuse to start, not guess. */
int nv_config_load(nv_config *c, char *err, size_t err_len);

/* One integer key: default when unset, error when not an integer in [min, max]. */
int nv_config_int(const char *key, int64_t def, int64_t min, int64_t max, int64_t *out,
                  char *err, size_t err_len);

#endif
