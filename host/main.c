/* main.c -- the command line of bin/nuvion: serve, work, run, spec, migrate, version. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "nv_limits.h"
#include "runtime.h"
#include "serve.h"

#define NV_VERSION "0.1.0"

static void usage(FILE *out) {
    fprintf(out,
            "usage: nuvion serve <service | path/to/app>   serve HTTP on $PORT\n"
            "       nuvion work <service | path/to/app>    run the service's queue workers\n"
            "       nuvion run <file.lua> [args...]         run a script on the event loop\n"
            "       nuvion spec [busted options...]         run the busted specs in the host\n"
            "       nuvion migrate <database> | --all       apply sql/<database>/ migrations\n"
            "       nuvion version\n");
}

/* work: SIGTERM and SIGINT only set rt->stopping; the workers see it through
 * core.stopping(), finish or release their jobs, and the script returns. */
static void work_on_signal(evutil_socket_t sig, short what, void *arg) {
    NV_UNUSED(what), NV_UNUSED(arg);
    nv_rt *rt = nv_rt_get();
    if (rt->stopping) return;
    rt->stopping = 1;
    nv_logf(NV_LOG_INFO, "%s: stopping the queue workers", sig == SIGINT ? "SIGINT" : "SIGTERM");
}

/* run, spec, migrate and work: one Lua state, one main task; the exit status is
 * the script's. builtin names a script of lua/bin/ run instead of argv[0]
 * (argv[0] stays the command's name). service (work only) is the service whose
 * folder goes on the Lua path; its process catches SIGTERM instead of dying. */
static int run_script(nv_mode mode, int argc, char **argv, const char *builtin,
                      const char *service) {
    nv_rt *rt = nv_rt_get();
    static char script[NV_PATH_BYTES_MAX + 64];
    struct event *sig[2] = {NULL, NULL};
    if (nv_rt_init(mode, service, 0) != NV_OK) return 1;
    if (service != NULL) {
        int sigs[2] = {SIGTERM, SIGINT};
        for (int i = 0; i < 2; i++) {
            sig[i] = evsignal_new(rt->base, sigs[i], work_on_signal, NULL);
            if (sig[i] == NULL || evsignal_add(sig[i], NULL) != 0) return 1;
        }
    }
    if (builtin != NULL) {
        int n = snprintf(script, sizeof script, "%s/lua/bin/%s", rt->root, builtin);
        if (n < 0 || (size_t)n >= sizeof script) return 1;
        argv[0] = script;
        if (service == NULL) { /* logs name the command ("migrate"), or work's service */
            snprintf(rt->service, sizeof rt->service, "%s", argv[-1]);
            nv_log_setup(rt->service, 0, rt->config.log_debug);
        }
    }
    rt->argc = argc;
    rt->argv = argv;
    int rc = 1;
    if (nv_gen_spawn() == NV_OK) {
        nv_rt_loop();
        rc = rt->exit_code;
    } else if (rt->exit_code != 0) {
        rc = rt->exit_code;
    }
    /* Closing the state frees what Lua objects hold in C, so LeakSanitizer
     * reports only what the host itself lost. */
    nv_gen_close_all();
    for (int i = 0; i < 2; i++)
        if (sig[i] != NULL) event_free(sig[i]);
    if (rt->gc_ev != NULL) event_free(rt->gc_ev);
    event_base_free(rt->base);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); /* a peer that went away is an EPIPE, not a dead worker */
    atexit(nv_log_flush);
    nv_rt *rt = nv_rt_get();
    char err[512];
    if (nv_config_load(&rt->config, err, sizeof err) != NV_OK) {
        fprintf(stderr, "nuvion: bad configuration: %s\n", err);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0 && argc == 3) return nv_serve(argv[2]);
    if (strcmp(cmd, "work") == 0 && argc == 3)
        return run_script(NV_MODE_RUN, argc - 1, argv + 1, "work.lua", argv[2]);
    if (strcmp(cmd, "run") == 0 && argc >= 3)
        return run_script(NV_MODE_RUN, argc - 2, argv + 2, NULL, NULL);
    if (strcmp(cmd, "spec") == 0) return run_script(NV_MODE_SPEC, argc - 1, argv + 1, NULL, NULL);
    if (strcmp(cmd, "migrate") == 0)
        return run_script(NV_MODE_RUN, argc - 1, argv + 1, "migrate.lua", NULL);
    if (strcmp(cmd, "version") == 0) {
        printf("nuvion %s\n", NV_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
