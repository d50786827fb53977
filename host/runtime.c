/* runtime.c -- the per-worker runtime: event loop, root folder, randomness, clock. */
#include "runtime.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static nv_rt rt_instance;

nv_rt *nv_rt_get(void) { return &rt_instance; }

/* The checkout holding lua/: $NUVION_ROOT, else the folder above bin/nuvion. */
static int rt_find_root(nv_rt *rt) {
    const char *env = getenv("NUVION_ROOT");
    char exe[PATH_MAX];
    if (env != NULL && *env != '\0') {
        if (realpath(env, rt->root) == NULL) return NV_ERR;
        return NV_OK;
    }
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return NV_ERR;
    exe[n] = '\0';
    char *bin = dirname(exe);  /* .../bin */
    char *top = dirname(bin);  /* ... */
    snprintf(rt->root, sizeof rt->root, "%s", top);
    return NV_OK;
}

static int rt_find_service(nv_rt *rt, const char *arg) {
    struct stat st;
    if (arg == NULL) return NV_OK;
    if (strchr(arg, '/') != NULL) {
        if (realpath(arg, rt->service_dir) == NULL) return NV_ERR;
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", rt->service_dir);
        snprintf(rt->service, sizeof rt->service, "%s", basename(copy));
    } else {
        for (const char *p = arg; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return NV_ERR;
        snprintf(rt->service, sizeof rt->service, "%s", arg);
        int n = snprintf(rt->service_dir, sizeof rt->service_dir, "%s/lua/services/%s", rt->root, arg);
        if (n < 0 || (size_t)n >= sizeof rt->service_dir) return NV_ERR;
    }
    if (stat(rt->service_dir, &st) != 0 || !S_ISDIR(st.st_mode)) return NV_ERR;
    return NV_OK;
}

int nv_rt_init(nv_mode mode, const char *service_arg, int worker) {
    nv_rt *rt = &rt_instance;
    rt->mode = mode;
    rt->worker = worker;
    if (rt_find_root(rt) != NV_OK) {
        fprintf(stderr, "nuvion: cannot find the root folder (set NUVION_ROOT)\n");
        return NV_ERR;
    }
    if (rt_find_service(rt, service_arg) != NV_OK) {
        fprintf(stderr, "nuvion: no service \"%s\" (looked in %s/lua/services/)\n", service_arg,
                rt->root);
        return NV_ERR;
    }
    if (service_arg == NULL) snprintf(rt->service, sizeof rt->service, "%s",
                                      mode == NV_MODE_SPEC ? "spec" : "run");
    if (mode != NV_MODE_SERVE && service_arg == NULL)
        memcpy(rt->service_dir, rt->root, sizeof rt->service_dir);
    if (getrandom(rt->rand_state, sizeof rt->rand_state, 0) != sizeof rt->rand_state) {
        fprintf(stderr, "nuvion: getrandom failed: %s\n", strerror(errno));
        return NV_ERR;
    }
    rt->rand_state[0] |= 1;
    struct event_config *cfg = event_config_new();
    if (cfg == NULL) return NV_ERR;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK); /* one thread per worker */
    rt->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (rt->base == NULL) return NV_ERR;
    nv_log_setup(rt->service, worker, rt->config.log_debug);
    return NV_OK;
}

void nv_rt_loop(void) {
    nv_rt *rt = &rt_instance;
    for (;;) {
        int rc = event_base_loop(rt->base, EVLOOP_ONCE);
        nv_log_flush();
        if (rc != 0 || event_base_got_exit(rt->base) || event_base_got_break(rt->base)) break;
    }
    nv_log_flush();
}

/* xorshift128+: request and trace ids need to be unique, not secret. */
uint64_t nv_rt_random(void) {
    uint64_t *s = rt_instance.rand_state;
    uint64_t x = s[0], y = s[1];
    s[0] = y;
    x ^= x << 23;
    s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return s[1] + y;
}

/* Two hex characters per byte value: a table lookup per byte instead of two
 * shifts and two lookups per nibble (ids are made for every request). */
static const char hex_pairs[256][2] = {
#define P(x) {"0123456789abcdef"[(x) >> 4], "0123456789abcdef"[(x)&15]}
#define P16(h) P(h + 0), P(h + 1), P(h + 2), P(h + 3), P(h + 4), P(h + 5), P(h + 6), P(h + 7), \
               P(h + 8), P(h + 9), P(h + 10), P(h + 11), P(h + 12), P(h + 13), P(h + 14), P(h + 15)
    P16(0x00), P16(0x10), P16(0x20), P16(0x30), P16(0x40), P16(0x50), P16(0x60), P16(0x70),
    P16(0x80), P16(0x90), P16(0xa0), P16(0xb0), P16(0xc0), P16(0xd0), P16(0xe0), P16(0xf0),
#undef P16
#undef P
};

void nv_rt_random_hex(char *out, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = nv_rt_random();
        size_t m = n - i < 8 ? n - i : 8;
        char *o = out + 2 * i;
        for (size_t j = 0; j < m; j++, r >>= 8) {
            o[2 * j] = hex_pairs[r & 0xff][0];
            o[2 * j + 1] = hex_pairs[r & 0xff][1];
        }
    }
    out[2 * n] = '\0';
}

uint64_t nv_rt_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
