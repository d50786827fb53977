/* runtime.h -- the per-worker runtime: the event loop, the Lua generations and
 * the tasks (coroutines) that run on them. One per process; nothing else in
 * the host is global. */
#ifndef NV_RUNTIME_H
#define NV_RUNTIME_H

#include <event2/event.h>
#include <lua.h>
#include <stdint.h>

#include "config.h"
#include "nv_limits.h"
#include "nv.h"

typedef struct nv_gen nv_gen;
typedef struct nv_task nv_task;
typedef struct nv_metrics nv_metrics;
typedef struct nv_http_server nv_http_server;

typedef enum nv_mode {
    NV_MODE_SERVE = 1, /* bin/nuvion serve: HTTP workers */
    NV_MODE_RUN = 2,   /* bin/nuvion run: one script */
    NV_MODE_SPEC = 3,  /* bin/nuvion spec: busted */
} nv_mode;

typedef enum nv_gen_state {
    NV_GEN_LOADING = 1,  /* its boot task runs; not serving yet */
    NV_GEN_SERVING = 2,  /* new work goes to it */
    NV_GEN_RETIRING = 3, /* replaced: finishes its tasks, then closes */
} nv_gen_state;

/* A generation: one lua_State built from the files on disk. */
struct nv_gen {
    lua_State *L;
    uint64_t id;
    nv_gen_state state;
    int tasks;            /* tasks alive on this state; it closes at 0 once retiring */
    int timers;           /* one-shot timers still to fire: they keep a retiring state alive */
    int timers_live;      /* timers of any kind not yet freed, bounded by NV_TIMERS_MAX */
    size_t mem_bytes;     /* bytes allocated by this state */
    size_t mem_bytes_max; /* allocation beyond this fails with "not enough memory" */
    int mem_enforced;     /* 1 while Lua code runs: the host's own pushes get headroom */
    int gc_pause;         /* the GC pause set last (gen_pace_gc) */
    lua_Alloc inner_alloc; /* LuaJIT's own allocator, which gen_alloc wraps */
    void *inner_ud;
    int trampoline_ref;   /* registry: function run by every fresh coroutine */
    int entry_ref;        /* registry: function called per HTTP request (serve mode) */
    int timers_ref;       /* registry: table of live timers (so retiring cancels them) */
    int pool_len;         /* idle coroutines ready for reuse */
    int pool_refs[NV_LUA_COROUTINE_POOL_MAX];
    lua_State *pool_cos[NV_LUA_COROUTINE_POOL_MAX];
    nv_gen *next;
};

/* Called with the results of a task's function on t->co: ok = 1 and nres values
 * at stack index 3 .. 2+nres, or ok = 0 and the error (with traceback) at 3. */
typedef void (*nv_task_result_fn)(nv_task *t, int ok, int nres);
/* Called once the task's coroutine is released (the task struct may be reused). */
typedef void (*nv_task_finish_fn)(nv_task *t);

struct nv_task {
    nv_gen *gen;
    lua_State *co;
    int co_ref;
    int fresh;                    /* co has not run yet: the trampoline is on its stack */
    unsigned waiting : 1;         /* a primitive yielded it and will wake it */
    nv_task_result_fn on_result;
    nv_task_finish_fn on_finish;  /* may be NULL */
    void *owner;                  /* the connection, timer... that started it */
    const char *request_id;       /* for log lines written while it runs; may be NULL */
    const char *trace_id;
    struct event *wait_ev;        /* timer used by sleep(); made on first use */
};

typedef struct nv_rt {
    struct event_base *base;
    nv_config config;
    nv_mode mode;
    int worker;                /* 1..WEB_CONCURRENCY in serve mode, 0 otherwise */
    char root[NV_PATH_BYTES_MAX]; /* the checkout: lua/, spec/ ... are under it */
    char service[256];         /* service name (or the app folder's base name) */
    char service_dir[NV_PATH_BYTES_MAX]; /* folder holding the service init.lua */
    nv_gen *gen;               /* the generation new work goes to (NULL before the first loads) */
    nv_gen *gens;              /* every live generation, newest first */
    int gens_len;
    uint64_t gen_seq;
    nv_task *current;          /* the task whose coroutine is running now */
    uint64_t rand_state[2];    /* xorshift128+ for request ids; seeded from the CSPRNG */
    nv_metrics *metrics;
    nv_http_server *http;
    struct event *gc_ev;       /* closes retired generations outside any Lua call */
    int exit_code;             /* run/spec mode: the script's status */
    int stopping;              /* SIGTERM received: drain */
    int drain_holds;           /* Lua work (queue workers) a draining serve worker waits for */
    const char *spec_args_json;/* unused placeholder for future modes */
    int argc;                  /* run/spec: the script's arguments */
    char **argv;
} nv_rt;

/* The runtime of this process. */
nv_rt *nv_rt_get(void);

/* Sets up the loop and the runtime fields; finds the root. */
int nv_rt_init(nv_mode mode, const char *service_arg, int worker);
/* Runs the loop until it is stopped or has nothing left; flushes logs every turn. */
void nv_rt_loop(void);
uint64_t nv_rt_random(void);
/* Writes 2*n lowercase hex characters of fresh randomness and a NUL into out. */
void nv_rt_random_hex(char *out, size_t n);
/* Monotonic clock in microseconds. */
uint64_t nv_rt_now_us(void);

/* ---- generations (gen.c) ---- */

/* Builds a new lua_State from the files on disk and starts its boot task; the
 * generation starts serving when the boot task succeeds (nv_gen_activate). */
int nv_gen_spawn(void);
/* Makes g the serving generation and retires the previous one. */
void nv_gen_activate(nv_gen *g);
/* Closes retiring generations that have no task left; safe from any callback. */
void nv_gen_schedule_gc(void);
void nv_gen_close_all(void);
/* Lua memory of every live generation, in bytes. */
size_t nv_gen_memory_bytes(void);

/* ---- tasks (task.c) ---- */

/* Takes a coroutine of g for t. The caller then pushes the function to run
 * and its arguments on t->co and calls nv_task_run. */
int nv_task_prepare(nv_task *t, nv_gen *g);
/* Runs t until it finishes (NV_OK: on_result and on_finish were called) or
 * waits on a primitive (NV_AGAIN). */
int nv_task_run(nv_task *t);
/* A primitive's completion: the results are pushed on t->co; resumes t.
 * Returns as nv_task_run. */
int nv_task_wake(nv_task *t, int nres);
/* The running task of L, or NULL when L is not a task's own coroutine. */
nv_task *nv_task_of(lua_State *L);
/* For primitives: `return nv_task_yield(L);` after arranging the wake-up. */
int nv_task_yield(lua_State *L);

#endif
