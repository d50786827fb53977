/* config.c -- reads the host's settings from the environment, twelve-factor style. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nv_limits.h"
#include "nv.h"

int nv_config_int(const char *key, int64_t def, int64_t min, int64_t max, int64_t *out,
                  char *err, size_t err_len) {
    const char *s = getenv(key);
    if (s == NULL || *s == '\0') {
        *out = def;
        return NV_OK;
    }
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') {
        snprintf(err, err_len, "%s: \"%s\" is not an integer", key, s);
        return NV_ERR;
    }
    if (v < min || v > max) {
        snprintf(err, err_len, "%s: %lld is outside [%lld, %lld]", key, v, (long long)min,
                 (long long)max);
        return NV_ERR;
    }
    *out = v;
    return NV_OK;
}

int nv_config_load(nv_config *c, char *err, size_t err_len) {
    int64_t v;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    if (cores > NV_WORKERS_MAX) cores = NV_WORKERS_MAX;

    if (nv_config_int("PORT", 8080, 0, 65535, &v, err, err_len) != NV_OK) return NV_ERR;
    c->port = (int)v;
    if (nv_config_int("WEB_CONCURRENCY", cores, 1, NV_WORKERS_MAX, &v, err, err_len) != NV_OK)
        return NV_ERR;
    c->workers = (int)v;

#define NV_CONFIG_KEY(field, key, name)                                                    \
    if (nv_config_int(key, name##_DEFAULT, name##_MIN, name##_MAX, &c->field, err,          \
                      err_len) != NV_OK)                                                   \
        return NV_ERR;
    NV_CONFIG_KEY(header_bytes_max, "NUVION_HTTP_HEADER_BYTES", NV_HTTP_HEADER_BYTES)
    NV_CONFIG_KEY(body_bytes_max, "NUVION_HTTP_BODY_BYTES", NV_HTTP_BODY_BYTES)
    NV_CONFIG_KEY(connections_max, "NUVION_HTTP_CONNECTIONS", NV_HTTP_CONNECTIONS)
    NV_CONFIG_KEY(read_timeout_ms, "NUVION_HTTP_READ_TIMEOUT_MS", NV_HTTP_READ_TIMEOUT_MS)
    NV_CONFIG_KEY(keepalive_ms, "NUVION_HTTP_KEEPALIVE_MS", NV_HTTP_KEEPALIVE_MS)
    NV_CONFIG_KEY(handler_timeout_ms, "NUVION_HTTP_HANDLER_TIMEOUT_MS", NV_HTTP_HANDLER_MS)
    NV_CONFIG_KEY(lua_memory_bytes, "NUVION_LUA_MEMORY_BYTES", NV_LUA_MEMORY_BYTES)
    NV_CONFIG_KEY(shutdown_grace_ms, "NUVION_SHUTDOWN_GRACE_MS", NV_SHUTDOWN_GRACE_MS)
#undef NV_CONFIG_KEY

    if (nv_config_int("NUVION_ACCESS_LOG", 1, 0, 1, &v, err, err_len) != NV_OK) return NV_ERR;
    c->access_log = (int)v;
    const char *lvl = getenv("NUVION_LOG_LEVEL");
    c->log_debug = lvl != NULL && strcmp(lvl, "debug") == 0;
    return NV_OK;
}
