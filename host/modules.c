/* modules.c -- the C modules every Lua state can require, by name. */
#include "modules.h"

#include "crypto.h"
#include "http_client.h"
#include "json.h"
#include "ledger_lua.h"
#include "pg.h"
#include "process.h"
#include "redis.h"
#include "lua_core.h"

/* Each primitive module adds its line here (and its header above). */
const nv_module nv_modules[] = {
    {"nuvion.core", luaopen_nuvion_core},
    {"nuvion.json", luaopen_nuvion_json},
    {"nuvion.process_c", luaopen_nuvion_process_c},
    {"nuvion.crypto_c", luaopen_nuvion_crypto_c},
    {"nuvion.http_c", luaopen_nuvion_http_c},
    {"nuvion.redis_c", luaopen_nuvion_redis_c},
    {"nuvion.pg_c", luaopen_nuvion_pg_c},
    {"nuvion.ledger_c", luaopen_nuvion_ledger_c},
    {NULL, NULL},
};
