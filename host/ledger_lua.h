/* ledger_lua.h -- the nuvion.ledger_c Lua module (ledger_lua.c): the posting layer for Lua. */
#ifndef NV_LEDGER_LUA_H
#define NV_LEDGER_LUA_H

#include <lua.h>

int luaopen_nuvion_ledger_c(lua_State *L);

#endif
