/* process.h -- the nuvion.process_c Lua module: start, reap and signal child processes. */
#ifndef NV_PROCESS_H
#define NV_PROCESS_H

#include <lua.h>

int luaopen_nuvion_process_c(lua_State *L);

#endif
