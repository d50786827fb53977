/* lua_core.c -- nuvion.core: the primitives every Lua task uses to wait and to
 * schedule work on the loop (sleep, one-shot and repeating timers, spawn), the
 * clock, and log lines tagged with the running request. */
#include "lua_core.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "http_server.h"
#include "nv_limits.h"
#include "log.h"

#define NV_SLEEP_MS_MAX (24LL * 3600 * 1000) /* a day: longer waits belong in a queue */

typedef struct nv_timer {
    struct event *ev;
    nv_gen *gen;
    int id;            /* key in the generation's timers table */
    int fn_ref;        /* registry: { fn, arg1, ..., n = nargs } */
    int64_t every_ms;  /* 0: one-shot */
    int running;       /* its task has not finished (repeating ticks do not overlap) */
    int cancelled;
    nv_task task;
} nv_timer;

void nv_task_dispose(nv_task *t) {
    if (t->wait_ev != NULL) {
        event_free(t->wait_ev);
        t->wait_ev = NULL;
    }
}

static int64_t check_ms(lua_State *L, int idx, int64_t max) {
    lua_Number ms = luaL_checknumber(L, idx);
    if (!(ms >= 0) || ms > (lua_Number)max)
        luaL_argerror(L, idx, lua_pushfstring(L, "milliseconds must be in [0, %d]", (int)max));
    return (int64_t)ms;
}

static struct timeval ms_to_tv(int64_t ms) {
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* ---- sleep ---- */

static void sleep_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_task *t = arg;
    nv_task_wake(t, 0);
}

static int core_sleep(lua_State *L) {
    int64_t ms = check_ms(L, 1, NV_SLEEP_MS_MAX);
    nv_task *t = nv_task_of(L);
    if (t == NULL) return luaL_error(L, "sleep() must be called from a task, not a nested coroutine");
    if (t->wait_ev == NULL) {
        t->wait_ev = event_new(nv_rt_get()->base, -1, 0, sleep_cb, t);
        if (t->wait_ev == NULL) return luaL_error(L, "sleep(): out of memory");
    } else if (event_assign(t->wait_ev, nv_rt_get()->base, -1, 0, sleep_cb, t) != 0) {
        return luaL_error(L, "sleep(): cannot arm timer");
    }
    struct timeval tv = ms_to_tv(ms);
    /* The loop's cached time may be a turn old: a sleep must never end early. */
    event_base_update_cache_time(nv_rt_get()->base);
    if (event_add(t->wait_ev, &tv) != 0) return luaL_error(L, "sleep(): cannot arm timer");
    return nv_task_yield(L);
}

/* ---- waiting on a file descriptor ---- */

static void fd_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd);
    nv_task *t = arg;
    lua_pushboolean(t->co, (what & EV_TIMEOUT) == 0);
    nv_task_wake(t, 1);
}

/* wait_fd(fd, "r" | "w", timeout_ms) -> true when ready, false on timeout.
 * The building block of Lua-side sockets and pipes: the caller tries the
 * non-blocking call first and waits here only on EAGAIN. */
static int core_wait_fd(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    const char *mode = luaL_checkstring(L, 2);
    int64_t ms = check_ms(L, 3, NV_SLEEP_MS_MAX);
    short what = mode[0] == 'w' ? EV_WRITE : EV_READ;
    nv_task *t = nv_task_of(L);
    if (t == NULL) return luaL_error(L, "wait_fd() must be called from a task, not a nested coroutine");
    if (fd < 0) return luaL_argerror(L, 1, "bad file descriptor");
    struct event_base *base = nv_rt_get()->base;
    if (t->wait_ev == NULL) {
        t->wait_ev = event_new(base, fd, what, fd_cb, t);
        if (t->wait_ev == NULL) return luaL_error(L, "wait_fd(): out of memory");
    } else if (event_assign(t->wait_ev, base, fd, what, fd_cb, t) != 0) {
        return luaL_error(L, "wait_fd(): cannot arm event");
    }
    struct timeval tv = ms_to_tv(ms);
    if (event_add(t->wait_ev, &tv) != 0) return luaL_error(L, "wait_fd(): cannot arm event");
    return nv_task_yield(L);
}

/* ---- timers ---- */

static void timer_free(nv_timer *tm) {
    nv_gen *g = tm->gen;
    lua_State *L = g->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->timers_ref);
    lua_pushnil(L);
    lua_rawseti(L, -2, tm->id);
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, tm->fn_ref);
    g->timers_live--;
    event_free(tm->ev);
    nv_task_dispose(&tm->task);
    free(tm);
    if (g->state == NV_GEN_RETIRING && g->tasks == 0 && g->timers == 0) nv_gen_schedule_gc();
}

static void timer_result(nv_task *t, int ok, int nres) {
    NV_UNUSED(nres);
    if (ok) return;
    const char *msg = lua_tostring(t->co, 3);
    nv_logf(NV_LOG_ERROR, "timer failed: %s", msg ? msg : "(error object is not a string)");
}

static void timer_finish(nv_task *t) {
    nv_timer *tm = t->owner;
    tm->running = 0;
    if (tm->every_ms == 0 || tm->cancelled) timer_free(tm);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_timer *tm = arg;
    nv_gen *g = tm->gen;
    if (tm->every_ms == 0) g->timers--;
    if (tm->running) return; /* a repeating tick still running: skip this one */
    nv_task *t = &tm->task;
    if (nv_task_prepare(t, g) != NV_OK) {
        nv_logf(NV_LOG_ERROR, "timer: cannot start a task");
        if (tm->every_ms == 0) timer_free(tm);
        return;
    }
    t->on_result = timer_result;
    t->on_finish = timer_finish;
    t->owner = tm;
    tm->running = 1;
    lua_State *co = t->co;
    lua_rawgeti(co, LUA_REGISTRYINDEX, tm->fn_ref);
    lua_getfield(co, -1, "n");
    int n = (int)lua_tointeger(co, -1);
    lua_pop(co, 1);
    luaL_checkstack(co, n + 2, "timer arguments");
    for (int i = 1; i <= n + 1; i++) lua_rawgeti(co, -i, i);
    lua_remove(co, -(n + 2));
    nv_task_run(t);
}

static nv_gen *gen_of_task(lua_State *L) {
    nv_task *t = nv_rt_get()->current;
    if (t == NULL) luaL_error(L, "timers need a running task");
    return t->gen;
}

static int timer_start(lua_State *L, int repeat) {
    int64_t ms = check_ms(L, 1, NV_SLEEP_MS_MAX);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    nv_rt *rt = nv_rt_get();
    nv_gen *g = gen_of_task(L);
    if (repeat && ms == 0) return luaL_argerror(L, 1, "interval must be at least 1 ms");

    if (g->timers_live >= NV_TIMERS_MAX) return luaL_error(L, "too many timers (limit %d)", NV_TIMERS_MAX);

    nv_timer *tm = calloc(1, sizeof *tm);
    if (tm == NULL) return luaL_error(L, "timer: out of memory");
    tm->gen = g;
    tm->every_ms = repeat ? ms : 0;
    tm->ev = event_new(rt->base, -1, repeat ? EV_PERSIST : 0, timer_cb, tm);
    if (tm->ev == NULL) {
        free(tm);
        return luaL_error(L, "timer: out of memory");
    }
    int nargs = lua_gettop(L) - 2;
    lua_createtable(L, nargs + 1, 1);
    for (int i = 0; i <= nargs; i++) {
        lua_pushvalue(L, 2 + i);
        lua_rawseti(L, -2, i + 1);
    }
    lua_pushinteger(L, nargs);
    lua_setfield(L, -2, "n");
    tm->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->timers_ref);
    tm->id = (int)lua_objlen(L, -1) + 1;
    lua_pushlightuserdata(L, tm);
    lua_rawseti(L, -2, tm->id);
    lua_pop(L, 1);
    struct timeval tv = ms_to_tv(ms);
    event_base_update_cache_time(rt->base);
    event_add(tm->ev, &tv);
    if (!repeat) g->timers++;
    g->timers_live++;
    lua_pushinteger(L, tm->id);
    return 1;
}

static int core_timer_at(lua_State *L) { return timer_start(L, 0); }
static int core_timer_every(lua_State *L) { return timer_start(L, 1); }

static void timer_cancel(nv_timer *tm) {
    if (tm->cancelled) return;
    if (tm->every_ms == 0 && event_pending(tm->ev, EV_TIMEOUT, NULL)) tm->gen->timers--;
    event_del(tm->ev);
    tm->cancelled = 1;
    if (!tm->running) timer_free(tm);
}

static int core_timer_cancel(lua_State *L) {
    int id = (int)luaL_checkinteger(L, 1);
    nv_gen *g = gen_of_task(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->timers_ref);
    lua_rawgeti(L, -1, id);
    nv_timer *tm = lua_touserdata(L, -1);
    lua_pop(L, 2);
    if (tm == NULL || tm->cancelled) {
        lua_pushboolean(L, 0);
        return 1;
    }
    timer_cancel(tm);
    lua_pushboolean(L, 1);
    return 1;
}

/* Calls fn on every live timer of g. The ids have holes (freed timers), so
 * this walks the table with lua_next, not up to its length; fn may free the
 * timer (clearing an existing field is allowed during a traversal). */
static void each_timer(nv_gen *g, void (*fn)(nv_gen *g, nv_timer *tm)) {
    lua_State *L = g->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->timers_ref);
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        nv_timer *tm = lua_touserdata(L, -1);
        lua_pop(L, 1);
        if (tm != NULL) fn(g, tm);
    }
    lua_pop(L, 1);
}

static void retire_timer(nv_gen *g, nv_timer *tm) {
    NV_UNUSED(g);
    if (tm->every_ms > 0) timer_cancel(tm);
}

/* The process is exiting: a running tick is abandoned with its state. */
static void close_timer(nv_gen *g, nv_timer *tm) {
    if (tm->running) g->tasks--;
    tm->running = 0;
    tm->cancelled = 1;
    if (tm->every_ms == 0 && event_pending(tm->ev, EV_TIMEOUT, NULL)) g->timers--;
    event_del(tm->ev);
    timer_free(tm);
}

void nv_lua_core_retire(nv_gen *g) { each_timer(g, retire_timer); }

void nv_lua_core_close(nv_gen *g) { each_timer(g, close_timer); }

/* ---- clock, logs, context ---- */

static int core_now(lua_State *L) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (lua_Number)tv.tv_sec + (lua_Number)tv.tv_usec / 1e6);
    return 1;
}

static int core_monotonic_ms(lua_State *L) {
    lua_pushnumber(L, (lua_Number)nv_rt_now_us() / 1000.0);
    return 1;
}

static int core_log(lua_State *L) {
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    int level = luaL_checkoption(L, 1, NULL, levels);
    if (!nv_log_enabled((nv_log_level)level)) return 0;
    size_t msg_len, extra_len = 0;
    const char *msg = luaL_checklstring(L, 2, &msg_len);
    const char *extra = luaL_optlstring(L, 3, NULL, &extra_len);
    nv_task *t = nv_rt_get()->current;
    nv_log_line((nv_log_level)level, msg, msg_len, t ? t->request_id : NULL,
                t ? t->trace_id : NULL, extra, extra_len);
    return 0;
}

static int core_context(lua_State *L) {
    nv_rt *rt = nv_rt_get();
    nv_task *t = rt->current;
    lua_createtable(L, 0, 6);
    if (t != NULL && t->request_id) lua_pushstring(L, t->request_id), lua_setfield(L, -2, "request_id");
    if (t != NULL && t->trace_id) lua_pushstring(L, t->trace_id), lua_setfield(L, -2, "trace_id");
    lua_pushinteger(L, rt->worker), lua_setfield(L, -2, "worker");
    lua_pushinteger(L, (lua_Integer)getpid()), lua_setfield(L, -2, "pid");
    if (t != NULL) lua_pushnumber(L, (lua_Number)t->gen->id), lua_setfield(L, -2, "generation");
    lua_pushstring(L, rt->service), lua_setfield(L, -2, "service");
    lua_pushstring(L, rt->root), lua_setfield(L, -2, "root");
    return 1;
}

/* stopping() -> true once the process got SIGTERM (serve, work) or when the
 * running task's generation is retiring (a reload replaced it): long-running
 * Lua work (queue workers) stops taking new work then. */
static int core_stopping(lua_State *L) {
    nv_rt *rt = nv_rt_get();
    nv_task *t = nv_task_of(L);
    int retiring = t != NULL && t->gen->state == NV_GEN_RETIRING;
    lua_pushboolean(L, rt->stopping || retiring);
    return 1;
}

/* drain_hold(1 | -1): a draining serve worker exits only once every hold is
 * released (or its grace deadline passed), so queue jobs in flight finish. */
static int core_drain_hold(lua_State *L) {
    nv_rt *rt = nv_rt_get();
    lua_Integer delta = luaL_checkinteger(L, 1);
    luaL_argcheck(L, delta == 1 || delta == -1, 1, "must be 1 or -1");
    if (delta < 0 && rt->drain_holds == 0) return luaL_error(L, "drain_hold(-1) without a hold");
    if (delta > 0 && rt->drain_holds >= NV_DRAIN_HOLDS_MAX)
        return luaL_error(L, "drain_hold: more than %d holds", NV_DRAIN_HOLDS_MAX);
    rt->drain_holds += (int)delta;
    nv_assert(rt->drain_holds >= 0 && rt->drain_holds <= NV_DRAIN_HOLDS_MAX);
    lua_pushinteger(L, rt->drain_holds);
    return 1;
}

static int core_random_hex(lua_State *L) {
    lua_Integer n = luaL_optinteger(L, 1, 8);
    luaL_argcheck(L, n > 0 && n <= 64, 1, "bytes must be in [1, 64]");
    char out[129];
    nv_rt_random_hex(out, (size_t)n);
    lua_pushlstring(L, out, (size_t)n * 2);
    return 1;
}

int luaopen_nuvion_core(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"sleep", core_sleep},
        {"timer_at", core_timer_at},
        {"timer_every", core_timer_every},
        {"timer_cancel", core_timer_cancel},
        {"now", core_now},
        {"monotonic_ms", core_monotonic_ms},
        {"log", core_log},
        {"context", core_context},
        {"random_hex", core_random_hex},
        {"wait_fd", core_wait_fd},
        {"stopping", core_stopping},
        {"drain_hold", core_drain_hold},
        {"req_headers", nv_http_lua_headers},
        {"req_body", nv_http_lua_body},
        {"req_ids", nv_http_lua_ids},
        {NULL, NULL},
    };
    lua_createtable(L, 0, (int)NV_ARRAY_LEN(fns));
    luaL_register(L, NULL, fns);
    return 1;
}
