/* http_client.h -- nuvion.http_c: the non-blocking HTTP(S) client primitive behind nuvion.http. */
#ifndef NV_HTTP_CLIENT_H
#define NV_HTTP_CLIENT_H

#include <lua.h>

/* Opens nuvion.http_c: request(opts) -> status, headers, body | nil, err; stats() -> table. */
int luaopen_nuvion_http_c(lua_State *L);

#endif
