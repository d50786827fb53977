/* gen.c -- generations of Lua states: each is built from the files on disk,
 * serves new work once its boot task succeeds, and is closed after a newer one
 * replaced it and its last task finished (live reload without a dropped request). */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "lua_core.h"
#include "modules.h"
#include "runtime.h"

void *nv_task_done_marker(void);

/* Counts every byte a state holds, and refuses growth past its cap: a state
 * that leaks or a request that builds a huge table gets "not enough memory"
 * in its own coroutine, and the worker keeps serving. The memory itself comes
 * from LuaJIT's own allocator (a dlmalloc arena per state: measured ~10% fewer
 * instructions per request than glibc's malloc under the GC's free bursts). */
static void *gen_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    nv_gen *g = ud;
    if (ptr == NULL) osize = 0;
    if (nsize > osize) {
        size_t cap = g->mem_bytes_max + (g->mem_enforced ? 0 : NV_LUA_MEMORY_HEADROOM_BYTES);
        if (g->mem_bytes + (nsize - osize) > cap) return NULL;
    }
    void *p = g->inner_alloc(g->inner_ud, ptr, osize, nsize);
    if (p == NULL && nsize > 0) return NULL;
    nv_assert(g->mem_bytes + nsize >= osize);
    g->mem_bytes = g->mem_bytes - osize + nsize;
    return p;
}

/* Creates the state with LuaJIT's allocator, then routes it through gen_alloc. */
static lua_State *gen_newstate(nv_gen *g) {
    lua_State *L = luaL_newstate();
    if (L == NULL) return NULL;
    g->inner_alloc = lua_getallocf(L, &g->inner_ud);
    g->mem_bytes = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    lua_setallocf(L, gen_alloc, g);
    return L;
}

/* Gives the state back its own allocator first: LuaJIT destroys its arena on
 * close only when it sees its own allocator. */
static void gen_lua_close(nv_gen *g) {
    lua_setallocf(g->L, g->inner_alloc, g->inner_ud);
    lua_close(g->L);
    g->L = NULL;
}

static int gen_panic(lua_State *L) {
    nv_logf(NV_LOG_ERROR, "lua panic: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    nv_log_flush();
    abort();
}

static const char trampoline_src[] =
    "local DONE, yield, xpcall, traceback = ...\n"
    "local function loop(fn, ...)\n"
    "  return loop(yield(DONE, xpcall(fn, traceback, ...)))\n"
    "end\n"
    "return loop\n";

/* run and spec: os.exit flushes Lua's stdout first (busted ends with it; a
 * sanitizer's exit-time report must not swallow the summary line). */
static const char flush_exit_src[] =
    "local exit, stdout, stderr = os.exit, io.stdout, io.stderr\n"
    "os.exit = function(...) stdout:flush() stderr:flush() return exit(...) end\n";

/* Blocking process APIs would freeze every request of the worker. */
static const char sandbox_src[] =
    "local function refused(name) return function() error(name .. ' blocks the event loop"
    " and is disabled in services', 2) end end\n"
    "os.execute = refused('os.execute')\n"
    "io.popen = refused('io.popen')\n"
    "io.read = refused('io.read')\n"
    "os.exit = refused('os.exit')\n";

static int gen_setup_paths(lua_State *L, nv_rt *rt) {
    char path[16384];
    int n = snprintf(path, sizeof path,
                     "%s/lua/lib/?.lua;%s/lua/lib/?/init.lua;%s/?.lua;%s/?/init.lua;"
                     "%s/?.lua;%s/?/init.lua;",
                     rt->root, rt->root, rt->service_dir, rt->service_dir, rt->root, rt->root);
    if (n < 0 || (size_t)n >= sizeof path) return NV_ERR;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushstring(L, path);
    lua_insert(L, -2);
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    for (const nv_module *m = nv_modules; m->name != NULL; m++) {
        lua_pushcfunction(L, m->open);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 2);
    return NV_OK;
}

/* Runs a small chunk at state creation; these cannot yield. */
static int gen_dostring(lua_State *L, const char *src, const char *name, int nargs, int nres) {
    if (luaL_loadbuffer(L, src, strlen(src), name) != 0) return NV_ERR;
    lua_insert(L, -(nargs + 1));
    return lua_pcall(L, nargs, nres, 0) == 0 ? NV_OK : NV_ERR;
}

static int gen_setup(nv_gen *g, nv_rt *rt, char *err, size_t err_len) {
    lua_State *L = g->L;
    luaL_openlibs(L);
    if (gen_setup_paths(L, rt) != NV_OK) {
        snprintf(err, err_len, "root path too long");
        return NV_ERR;
    }
    lua_pushlightuserdata(L, nv_task_done_marker());
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, "yield");
    lua_remove(L, -2);
    lua_getglobal(L, "xpcall");
    lua_getglobal(L, "debug");
    lua_getfield(L, -1, "traceback");
    lua_remove(L, -2);
    if (gen_dostring(L, trampoline_src, "=trampoline", 4, 1) != NV_OK) goto lua_err;
    g->trampoline_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    g->timers_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    /* require in Lua, so a module may yield at its top level (Kong's lesson). */
    char file[8192];
    snprintf(file, sizeof file, "%s/lua/lib/nuvion/require.lua", rt->root);
    if (luaL_loadfile(L, file) != 0 || lua_pcall(L, 0, 1, 0) != 0) goto lua_err;
    lua_setglobal(L, "require");
    if (rt->mode == NV_MODE_SERVE && gen_dostring(L, sandbox_src, "=sandbox", 0, 0) != NV_OK)
        goto lua_err;
    if (rt->mode != NV_MODE_SERVE && gen_dostring(L, flush_exit_src, "=exit", 0, 0) != NV_OK)
        goto lua_err;
    return NV_OK;
lua_err:
    snprintf(err, err_len, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "state set-up failed");
    return NV_ERR;
}

static void gen_close(nv_gen *g) {
    nv_rt *rt = nv_rt_get();
    nv_assert(g->tasks == 0 && g->timers == 0);
    for (nv_gen **pp = &rt->gens; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    rt->gens_len--;
    if (rt->gen == g) rt->gen = NULL;
    nv_logf(NV_LOG_INFO, "generation %llu closed", (unsigned long long)g->id);
    gen_lua_close(g);
    free(g);
}

/* The boot task's result: the request entry (serve) or the script's status. */
static void gen_boot_result(nv_task *t, int ok, int nres) {
    nv_gen *g = t->gen;
    nv_rt *rt = nv_rt_get();
    lua_State *co = t->co;
    if (!ok) {
        const char *msg = lua_tostring(co, 3);
        if (rt->mode == NV_MODE_SERVE) {
            nv_logf(NV_LOG_ERROR, "generation %llu failed to load, %s: %s",
                    (unsigned long long)g->id,
                    rt->gen != NULL ? "the previous one keeps serving" : "nothing to serve",
                    msg ? msg : "(error object is not a string)");
        } else {
            fprintf(stderr, "%s\n", msg ? msg : "(error object is not a string)");
            rt->exit_code = 1;
        }
        g->state = NV_GEN_RETIRING;
        return;
    }
    if (rt->mode == NV_MODE_SERVE) {
        if (nres < 1 || lua_type(co, 3) != LUA_TFUNCTION) {
            nv_logf(NV_LOG_ERROR, "generation %llu: nuvion.server.boot returned no handler",
                    (unsigned long long)g->id);
            g->state = NV_GEN_RETIRING;
            return;
        }
        lua_pushvalue(co, 3);
        lua_xmove(co, g->L, 1);
        g->entry_ref = luaL_ref(g->L, LUA_REGISTRYINDEX);
        nv_gen_activate(g);
        return;
    }
    rt->exit_code = nres >= 1 && lua_isnumber(co, 3) ? (int)lua_tointeger(co, 3) : 0;
}

static void gen_boot_finish(nv_task *t) {
    nv_rt *rt = nv_rt_get();
    nv_gen *g = t->gen;
    nv_task_dispose(t);
    free(t);
    if (g->state == NV_GEN_RETIRING && g->tasks == 0 && g->timers == 0) nv_gen_schedule_gc();
    if (rt->mode != NV_MODE_SERVE) event_base_loopexit(rt->base, NULL);
}

/* Pushes the boot function and its arguments on co; returns the count pushed. */
static int gen_push_boot(nv_rt *rt, lua_State *co, char *err, size_t err_len) {
    if (rt->mode == NV_MODE_SERVE) {
        lua_getglobal(co, "require");
        lua_pushliteral(co, "nuvion.server");
        if (lua_pcall(co, 1, 1, 0) != 0) goto err;
        lua_getfield(co, -1, "boot");
        lua_remove(co, -2);
        lua_pushstring(co, rt->service_dir);
        lua_pushstring(co, rt->service);
        return 3;
    }
    if (rt->mode == NV_MODE_RUN) {
        if (luaL_loadfile(co, rt->argv[0]) != 0) goto err;
    } else {
        static const char spec_src[] = "require('busted.runner')({ standalone = false })";
        if (luaL_loadbuffer(co, spec_src, sizeof spec_src - 1, "=spec") != 0) goto err;
    }
    /* arg[0] is the script, arg[1..] its arguments, as with lua(1). */
    lua_createtable(co, rt->argc, 1);
    for (int i = 0; i < rt->argc; i++) {
        lua_pushstring(co, rt->argv[i]);
        lua_rawseti(co, -2, i);
    }
    lua_setglobal(co, "arg");
    for (int i = 1; i < rt->argc; i++) lua_pushstring(co, rt->argv[i]);
    return rt->argc > 0 ? rt->argc : 1;
err:
    snprintf(err, err_len, "%s", lua_tostring(co, -1) ? lua_tostring(co, -1) : "load failed");
    return -1;
}

int nv_gen_spawn(void) {
    nv_rt *rt = nv_rt_get();
    char err[4096] = "";
    if (rt->gens_len >= NV_LUA_GENERATIONS_MAX) {
        nv_logf(NV_LOG_ERROR, "reload refused: %d generations are still draining",
                rt->gens_len);
        return NV_ERR;
    }
    nv_gen *g = calloc(1, sizeof *g);
    if (g == NULL) return NV_ERR;
    g->id = ++rt->gen_seq;
    g->state = NV_GEN_LOADING;
    g->mem_bytes_max = (size_t)rt->config.lua_memory_bytes;
    g->entry_ref = LUA_NOREF;
    g->L = gen_newstate(g);
    if (g->L == NULL) {
        free(g);
        nv_logf(NV_LOG_ERROR, "cannot create a Lua state");
        return NV_ERR;
    }
    lua_atpanic(g->L, gen_panic);
    g->next = rt->gens;
    rt->gens = g;
    rt->gens_len++;
    if (gen_setup(g, rt, err, sizeof err) != NV_OK) goto fail;

    nv_task *t = calloc(1, sizeof *t);
    if (t == NULL || nv_task_prepare(t, g) != NV_OK) {
        free(t);
        snprintf(err, sizeof err, "cannot start the boot task");
        goto fail;
    }
    t->on_result = gen_boot_result;
    t->on_finish = gen_boot_finish;
    if (gen_push_boot(rt, t->co, err, sizeof err) < 0) {
        /* Run a function that raises err, so the task ends through its normal path. */
        lua_settop(t->co, 1);
        lua_getglobal(t->co, "error");
        lua_pushstring(t->co, err);
        lua_pushinteger(t->co, 0);
    }
    nv_task_run(t);
    return NV_OK;
fail:
    nv_logf(NV_LOG_ERROR, "generation %llu failed to load: %s", (unsigned long long)g->id, err);
    if (rt->mode != NV_MODE_SERVE) {
        fprintf(stderr, "%s\n", err);
        rt->exit_code = 1;
    }
    gen_close(g);
    return NV_ERR;
}

void nv_gen_activate(nv_gen *g) {
    nv_rt *rt = nv_rt_get();
    nv_gen *old = rt->gen;
    g->state = NV_GEN_SERVING;
    rt->gen = g;
    nv_logf(NV_LOG_INFO, "generation %llu serving", (unsigned long long)g->id);
    if (old == NULL) return;
    old->state = NV_GEN_RETIRING;
    nv_lua_core_retire(old); /* repeating timers stop; the new state starts its own */
    if (old->tasks == 0 && old->timers == 0) nv_gen_schedule_gc();
}

static void gen_gc_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what), NV_UNUSED(arg);
    nv_rt *rt = nv_rt_get();
    nv_gen *g = rt->gens;
    while (g != NULL) {
        nv_gen *next = g->next;
        if (g->state == NV_GEN_RETIRING && g->tasks == 0 && g->timers == 0) gen_close(g);
        g = next;
    }
}

void nv_gen_schedule_gc(void) {
    nv_rt *rt = nv_rt_get();
    if (rt->gc_ev == NULL) {
        rt->gc_ev = event_new(rt->base, -1, 0, gen_gc_cb, NULL);
        if (rt->gc_ev == NULL) return;
    }
    event_active(rt->gc_ev, 0, 0);
}

void nv_gen_close_all(void) {
    nv_rt *rt = nv_rt_get();
    while (rt->gens != NULL) {
        nv_gen *g = rt->gens;
        rt->gens = g->next;
        nv_lua_core_close(g);
        gen_lua_close(g);
        free(g);
    }
    rt->gens_len = 0;
    rt->gen = NULL;
}

size_t nv_gen_memory_bytes(void) {
    size_t n = 0;
    for (nv_gen *g = nv_rt_get()->gens; g != NULL; g = g->next) n += g->mem_bytes;
    return n;
}
