/* lua_core.h -- the nuvion.core Lua module: sleep, timers, spawn, clock, logs. */
#ifndef NV_LUA_CORE_H
#define NV_LUA_CORE_H

#include <lua.h>

#include "runtime.h"

int luaopen_nuvion_core(lua_State *L);

/* A retiring generation: its repeating timers are cancelled (one-shot timers
 * still fire on it, and keep it open until they have). */
void nv_lua_core_retire(nv_gen *g);

/* The state is about to close (the process exits): frees every timer. */
void nv_lua_core_close(nv_gen *g);

/* Frees what a task struct owns outside Lua (its sleep timer). */
void nv_task_dispose(nv_task *t);

#endif
