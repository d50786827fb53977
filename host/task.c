/* task.c -- runs Lua functions as tasks: one coroutine each, reused from a
 * per-generation pool, suspended while a primitive waits on the loop.
 *
 * Every coroutine runs the trampoline (gen.c):
 *
 *   local function loop(fn, ...) return loop(yield(DONE, xpcall(fn, traceback, ...))) end
 *
 * so a finished function yields DONE and its results instead of returning,
 * and the same coroutine takes the next function on its next resume. A
 * primitive yields nothing: that yield means "waiting". */
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "runtime.h"

/* Its address marks the trampoline's "function finished" yield. */
static const char task_done_marker = 0;

void *nv_task_done_marker(void);
void *nv_task_done_marker(void) { return (void *)&task_done_marker; }

int nv_task_prepare(nv_task *t, nv_gen *g) {
    nv_assert(g != NULL && g->L != NULL);
    t->gen = g;
    t->waiting = 0;
    if (g->pool_len > 0) {
        g->pool_len--;
        t->co = g->pool_cos[g->pool_len];
        t->co_ref = g->pool_refs[g->pool_len];
        t->fresh = 0;
        nv_assert(lua_gettop(t->co) == 0);
    } else {
        lua_State *L = g->L;
        if (!lua_checkstack(L, 2)) return NV_ERR;
        t->co = lua_newthread(L);
        t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        if (t->co_ref == LUA_REFNIL || t->co_ref == LUA_NOREF) return NV_ERR;
        lua_rawgeti(t->co, LUA_REGISTRYINDEX, g->trampoline_ref);
        t->fresh = 1;
    }
    g->tasks++;
    return NV_OK;
}

/* Gives the coroutine back to its generation's pool (or to the GC when the pool
 * is full or the coroutine can no longer be trusted). */
static void task_release(nv_task *t, int reusable) {
    nv_gen *g = t->gen;
    lua_settop(t->co, 0);
    if (reusable && g->state != NV_GEN_RETIRING && g->pool_len < NV_LUA_COROUTINE_POOL_MAX) {
        g->pool_cos[g->pool_len] = t->co;
        g->pool_refs[g->pool_len] = t->co_ref;
        g->pool_len++;
    } else {
        luaL_unref(g->L, LUA_REGISTRYINDEX, t->co_ref);
    }
    t->co = NULL;
    t->co_ref = LUA_NOREF;
    nv_assert(g->tasks > 0);
    g->tasks--;
    if (g->state == NV_GEN_RETIRING && g->tasks == 0 && g->timers == 0) nv_gen_schedule_gc();
}

/* Paces the collector to a floor: while the heap is small, the pause grows so
 * that a cycle starts after about NV_LUA_GC_FLOOR_BYTES of new allocation
 * instead of after the heap doubles; a large heap keeps Lua's default. The GC
 * still runs inside long tasks (unlike stopping it), only less often. */
static void gen_pace_gc(nv_gen *g) {
    size_t heap = g->mem_bytes > 0 ? g->mem_bytes : 1;
    size_t want = 100 * (heap + NV_LUA_GC_FLOOR_BYTES) / heap;
    int pause = want > NV_LUA_GC_PAUSE_MAX ? NV_LUA_GC_PAUSE_MAX
              : want < NV_LUA_GC_PAUSE_MIN ? NV_LUA_GC_PAUSE_MIN : (int)want;
    /* Only a change of a quarter or more is worth the call. */
    if (pause * 4 < g->gc_pause * 3 || pause * 4 > g->gc_pause * 5) {
        lua_gc(g->L, LUA_GCSETPAUSE, pause);
        g->gc_pause = pause;
    }
}

static int task_resume(nv_task *t, int nargs) {
    nv_rt *rt = nv_rt_get();
    nv_task *prev = rt->current;
    nv_gen *g = t->gen;
    int enforced = g->mem_enforced;
    rt->current = t;
    g->mem_enforced = 1; /* an allocation over the cap fails inside the task, as an error */
    int rc = lua_resume(t->co, nargs);
    g->mem_enforced = enforced;
    rt->current = prev;
    /* A task that ran the state close to its cap (or over it) leaves garbage
     * the incremental collector would take a while to find: collect it now,
     * so the next request does not fail for the last one's sins. */
    if (g->mem_bytes > g->mem_bytes_max / 10 * 9) lua_gc(g->L, LUA_GCCOLLECT, 0);
    gen_pace_gc(g);

    if (rc == LUA_YIELD) {
        int n = lua_gettop(t->co);
        if (n >= 2 && lua_touserdata(t->co, 1) == &task_done_marker) {
            int ok = lua_toboolean(t->co, 2);
            t->on_result(t, ok, n - 2);
            task_release(t, 1);
            if (t->on_finish != NULL) t->on_finish(t);
            return NV_OK;
        }
        if (t->waiting) return NV_AGAIN;
        /* A bare coroutine.yield() in task code: nothing would ever wake it. */
        lua_settop(t->co, 0);
        lua_pushliteral(t->co, "coroutine.yield() called outside a nested coroutine: "
                               "tasks wait only through host primitives");
    }
    /* The trampoline itself died (error outside xpcall, or the yield above):
     * lay its stack out as a failed result, [nil, false, error]. */
    lua_State *co = t->co;
    if (lua_gettop(co) == 0) lua_pushliteral(co, "task failed");
    lua_replace(co, 1);
    lua_settop(co, 1);
    lua_pushnil(co);
    lua_pushboolean(co, 0);
    lua_insert(co, 1);
    lua_insert(co, 1);
    t->on_result(t, 0, 1);
    task_release(t, 0);
    if (t->on_finish != NULL) t->on_finish(t);
    return NV_OK;
}

int nv_task_run(nv_task *t) {
    nv_assert(t->co != NULL);
    int nargs = lua_gettop(t->co) - (t->fresh ? 1 : 0);
    nv_assert(nargs >= 1); /* at least the function */
    t->fresh = 0;
    return task_resume(t, nargs);
}

int nv_task_wake(nv_task *t, int nres) {
    nv_assert(t->co != NULL && t->waiting);
    t->waiting = 0;
    return task_resume(t, nres);
}

nv_task *nv_task_of(lua_State *L) {
    nv_task *t = nv_rt_get()->current;
    return t != NULL && t->co == L ? t : NULL;
}

int nv_task_yield(lua_State *L) {
    nv_task *t = nv_task_of(L);
    nv_assert(t != NULL);
    t->waiting = 1;
    return lua_yield(L, 0);
}
