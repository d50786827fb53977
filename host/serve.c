/* serve.c -- `nuvion serve <service>`: binds the port once per worker with
 * SO_REUSEPORT, forks the workers, respawns one that dies, forwards SIGHUP
 * (reload) and SIGTERM (drain) to them. Each worker runs its own loop. */
#include "serve.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "http_server.h"
#include "nv_limits.h"
#include "log.h"
#include "lua_core.h"
#include "metrics.h"
#include "runtime.h"

#define NV_LISTEN_BACKLOG 4096            /* per worker socket; capped by net.core.somaxconn */
#define NV_DRAIN_POLL_MS 20               /* how often a draining worker checks it is idle */
#define NV_SUPERVISOR_KILL_MS 25000       /* SIGKILL for a worker still alive this long after SIGTERM */

typedef struct worker_slot {
    pid_t pid;
    int fd;              /* its listening socket, kept by the supervisor for respawns */
    uint64_t started_ms; /* to tell a crash loop from an occasional crash */
    int crashes;         /* consecutive quick deaths */
} worker_slot;

static uint64_t now_ms(void) { return nv_rt_now_us() / 1000; }

static int listen_socket(int port, int *bound_port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        goto err;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) goto err;
    if (listen(fd, NV_LISTEN_BACKLOG) != 0) goto err;
    socklen_t len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) goto err;
    *bound_port = ntohs(addr.sin_port);
    return fd;
err:
    close(fd);
    return -1;
}

/* ---- worker ---- */

static void worker_on_signal(evutil_socket_t sig, short what, void *arg) {
    NV_UNUSED(what), NV_UNUSED(arg);
    nv_rt *rt = nv_rt_get();
    if (sig == SIGHUP) {
        if (rt->stopping) return;
        nv_logf(NV_LOG_INFO, "SIGHUP: loading a new generation");
        nv_gen_spawn();
        return;
    }
    if (rt->stopping) return;
    rt->stopping = 1;
    nv_logf(NV_LOG_INFO, "SIGTERM: draining %d connections", nv_http_server_connections(rt->http));
    nv_http_server_drain(rt->http);
    for (nv_gen *g = rt->gens; g != NULL; g = g->next) nv_lua_core_retire(g);
}

static void worker_drain_tick(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_rt *rt = nv_rt_get();
    uint64_t *deadline_ms = arg;
    nv_metrics_worker(rt->metrics, rt->worker, nv_http_server_connections(rt->http),
                      nv_gen_memory_bytes());
    if (!rt->stopping) return;
    if (*deadline_ms == 0) *deadline_ms = now_ms() + (uint64_t)rt->config.shutdown_grace_ms;
    if (nv_http_server_connections(rt->http) == 0 && rt->drain_holds == 0) {
        nv_logf(NV_LOG_INFO, "drained, exiting");
        event_base_loopexit(rt->base, NULL);
    } else if (now_ms() >= *deadline_ms) {
        if (rt->drain_holds > 0)
            nv_logf(NV_LOG_WARN, "drain deadline passed with %d queue workers still closing",
                    rt->drain_holds);
        nv_logf(NV_LOG_WARN, "drain deadline passed with %d connections open, exiting",
                nv_http_server_connections(rt->http));
        event_base_loopexit(rt->base, NULL);
    }
}

static int worker_main(const char *service, int index, int fd, nv_metrics *metrics) {
    nv_rt *rt = nv_rt_get();
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the supervisor */
    if (nv_rt_init(NV_MODE_SERVE, service, index) != NV_OK) return 1;
    rt->metrics = metrics;
    rt->http = nv_http_server_new(rt->base, fd, &rt->config, metrics, index);
    if (rt->http == NULL) return 1;
    struct event *sig[3];
    int sigs[3] = {SIGHUP, SIGTERM, SIGINT};
    for (int i = 0; i < 3; i++) {
        sig[i] = evsignal_new(rt->base, sigs[i], worker_on_signal, NULL);
        if (sig[i] == NULL || evsignal_add(sig[i], NULL) != 0) return 1;
    }
    uint64_t deadline_ms = 0;
    struct event *tick = event_new(rt->base, -1, EV_PERSIST, worker_drain_tick, &deadline_ms);
    struct timeval tv = {0, NV_DRAIN_POLL_MS * 1000};
    if (tick == NULL || event_add(tick, &tv) != 0) return 1;

    if (nv_gen_spawn() != NV_OK || rt->gen == NULL) {
        /* The first generation must load synchronously enough to serve; a boot
         * that waits on I/O finishes in the loop, and requests are accepted
         * only once it has (the server checks rt->gen). */
        if (rt->gens == NULL) {
            nv_log_flush();
            return 1;
        }
    }
    nv_rt_loop();
    for (int i = 0; i < 3; i++) event_free(sig[i]);
    event_free(tick);
    nv_http_server_free(rt->http);
    nv_gen_close_all();
    event_base_free(rt->base);
    nv_log_flush();
    return 0;
}

static pid_t spawn_worker(const char *service, int index, worker_slot *slots, int n,
                          nv_metrics *metrics, const sigset_t *orig_mask) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    sigprocmask(SIG_SETMASK, orig_mask, NULL);
    for (int i = 0; i < n; i++)
        if (i != index - 1) close(slots[i].fd);
    int rc = worker_main(service, index, slots[index - 1].fd, metrics);
    nv_metrics_free(metrics);
    exit(rc); /* not _exit: flushes, and lets LeakSanitizer check the worker too */
}

/* ---- supervisor ---- */

static void signal_workers(worker_slot *slots, int n, int sig) {
    for (int i = 0; i < n; i++)
        if (slots[i].pid > 0) kill(slots[i].pid, sig);
}

static int live_workers(worker_slot *slots, int n) {
    int live = 0;
    for (int i = 0; i < n; i++) live += slots[i].pid > 0;
    return live;
}

/* Reaps dead workers; a dead worker's slot is marked for respawn. */
static void reap(worker_slot *slots, int n, int stopping) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < n; i++) {
            if (slots[i].pid != pid) continue;
            slots[i].pid = 0;
            if (stopping) break;
            int quick = now_ms() - slots[i].started_ms < 1000;
            slots[i].crashes = quick ? slots[i].crashes + 1 : 0;
            if (WIFSIGNALED(status))
                nv_logf(NV_LOG_ERROR, "worker %d (pid %d) killed by signal %d, respawning", i + 1,
                        (int)pid, WTERMSIG(status));
            else
                nv_logf(NV_LOG_ERROR, "worker %d (pid %d) exited with %d, respawning", i + 1,
                        (int)pid, WEXITSTATUS(status));
            break;
        }
    }
}

int nv_serve(const char *service) {
    nv_rt *rt = nv_rt_get();
    nv_log_setup(service, 0, rt->config.log_debug);
    int n = rt->config.workers;
    worker_slot slots[NV_WORKERS_MAX];
    memset(slots, 0, sizeof slots);
    int port = rt->config.port;
    for (int i = 0; i < n; i++) {
        int bound = 0;
        slots[i].fd = listen_socket(port, &bound);
        if (slots[i].fd < 0) {
            nv_logf(NV_LOG_ERROR, "cannot listen on port %d: %s", port, strerror(errno));
            nv_log_flush();
            return 1;
        }
        port = bound; /* PORT=0: every worker shares the port the kernel chose first */
    }
    nv_metrics *metrics = nv_metrics_create(n);
    if (metrics == NULL) {
        nv_logf(NV_LOG_ERROR, "cannot map the metrics region");
        nv_log_flush();
        return 1;
    }
    sigset_t mask, orig;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD), sigaddset(&mask, SIGHUP), sigaddset(&mask, SIGTERM),
        sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, &orig);

    nv_logf(NV_LOG_INFO, "listening on http://0.0.0.0:%d with %d workers", port, n);
    nv_log_flush();
    for (int i = 0; i < n; i++) {
        slots[i].pid = spawn_worker(service, i + 1, slots, n, metrics, &orig);
        slots[i].started_ms = now_ms();
    }

    int stopping = 0;
    uint64_t kill_at_ms = 0;
    /* NUVION_EXIT_WITH_PARENT=1 (set by the spec helper): a server whose
     * starter died (a test run cut by a timeout) stops instead of lingering. */
    const char *watch = getenv("NUVION_EXIT_WITH_PARENT");
    pid_t parent = watch != NULL && strcmp(watch, "1") == 0 ? getppid() : 0;
    for (;;) {
        struct timespec wait = {0, 100 * 1000 * 1000};
        siginfo_t info;
        int sig = sigtimedwait(&mask, &info, &wait);
        if (sig == SIGHUP && !stopping) {
            nv_logf(NV_LOG_INFO, "SIGHUP: reloading %d workers", live_workers(slots, n));
            signal_workers(slots, n, SIGHUP);
        } else if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
            stopping = 1;
            kill_at_ms = now_ms() + NV_SUPERVISOR_KILL_MS;
            nv_logf(NV_LOG_INFO, "SIGTERM: stopping %d workers", live_workers(slots, n));
            signal_workers(slots, n, SIGTERM);
        }
        if (parent != 0 && getppid() != parent && !stopping) {
            stopping = 1;
            kill_at_ms = now_ms() + NV_SUPERVISOR_KILL_MS;
            nv_logf(NV_LOG_WARN, "parent %d exited: stopping %d workers", (int)parent,
                    live_workers(slots, n));
            signal_workers(slots, n, SIGTERM);
        }
        reap(slots, n, stopping);
        if (stopping) {
            if (live_workers(slots, n) == 0) break;
            if (now_ms() >= kill_at_ms) signal_workers(slots, n, SIGKILL);
        } else {
            for (int i = 0; i < n; i++) {
                if (slots[i].pid != 0) continue;
                /* back off a crash loop: 0, 100, 200, 400 ms ... up to the cap */
                uint64_t backoff = slots[i].crashes == 0 ? 0 : 100u << (slots[i].crashes - 1);
                if (backoff > NV_RESPAWN_BACKOFF_MS_MAX || slots[i].crashes > 16)
                    backoff = NV_RESPAWN_BACKOFF_MS_MAX;
                if (now_ms() - slots[i].started_ms < backoff) continue;
                slots[i].pid = spawn_worker(service, i + 1, slots, n, metrics, &orig);
                slots[i].started_ms = now_ms();
            }
        }
        nv_log_flush();
    }
    nv_logf(NV_LOG_INFO, "stopped");
    nv_log_flush();
    for (int i = 0; i < n; i++) close(slots[i].fd);
    nv_metrics_free(metrics);
    return 0;
}
