/* pg.h -- the nuvion.pg_c Lua module: Postgres through libpq's asynchronous API on the event
 * loop, one pool per worker and database URL (lua/lib/nuvion/pg.lua is its Lua face; docs/pg.md). */
#ifndef NV_PG_H
#define NV_PG_H

#include <lua.h>

/* Opens the module: pool(), query(), run(), take() ... (pg.lua documents each). */
int luaopen_nuvion_pg_c(lua_State *L);

#endif
