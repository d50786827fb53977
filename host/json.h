/* json.h -- the nuvion.json Lua module: JSON text <-> Lua values, exact for money. */
#ifndef NV_JSON_H
#define NV_JSON_H

#include <lua.h>

/* Lua representation of each JSON type (decode produces it, encode accepts it):
 *
 *   JSON              Lua
 *   ----------------  ---------------------------------------------------------
 *   null              json.null: a light userdata holding NULL (as cjson.null)
 *   true / false      boolean
 *   integer, |n|<=2^53  number (exact in a double)
 *   integer, |n|>2^53   json.int: the table { "<digits>" } (an optional '-' then
 *                     1 to 39 digits) with metatable json.int_mt; never rounded
 *                     through a double. More than 39 digits is a decode error
 *                     (money is 128-bit: numeric(38,0) fits).
 *   fraction/exponent number, from strtod; beyond the double range: error
 *   string            string, valid UTF-8 (invalid UTF-8 is an error both ways)
 *   array             table 1..n with metatable json.array_mt, so that an
 *                     empty [] encodes back as []
 *   object            table with string keys, no metatable; duplicate keys:
 *                     the last one wins
 *
 * Encode also takes: a table with json.object_mt (always an object); a plain
 * table with keys exactly 1..n (array) or only string keys (object); an empty
 * plain table ({}); a number that is integral with |n| < 2^63 (printed as an
 * integer); LuaJIT int64_t/uint64_t cdata (printed as integers). Anything else
 * (functions, mixed or sparse keys, NaN, inf, nesting past the depth limit,
 * which is where cycles end) makes encode return nil and an error naming the
 * JSONPath of the value, e.g. "cannot encode function at $.payment.callback".
 *
 * Module functions: decode, encode, int, is_int, array, object; fields null,
 * int_mt, array_mt, object_mt. docs/json.md has the details. */

/* Opens the module and leaves its table on the stack; the host registers it
 * as package.preload["nuvion.json"]. All its state lives in upvalues, one set
 * per lua_State. */
int luaopen_nuvion_json(lua_State *L);

#endif
