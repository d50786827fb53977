/* test_json.c -- unit tests of the nuvion.json module (json.c), driven from C and small Lua chunks. */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "json.h"
#include "nv.h"
#include "test.h"

/* Helpers a chunk can use: expect(got, want) returns true, or false and
 * what differed; enc() and dec_err() return the text or the error. */
static const char prelude[] =
    "json = require 'nuvion.json'\n"
    "function expect(got, want)\n"
    "  if got == want then return true end\n"
    "  return false, string.format('got %q, want %q', tostring(got), tostring(want))\n"
    "end\n"
    "function enc(v, o) local s, e = json.encode(v, o) if s == nil then return e end return s end\n"
    "function canon(v) return enc(v, { sort_keys = true }) end\n"
    "function dec_err(s, o) local v, e = json.decode(s, o) if v ~= nil then return 'decoded' end return e end\n"
    "function raises(f, ...) local ok, e = pcall(f, ...) return not ok, e end\n";

static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        printf("luaL_newstate failed\n");
        exit(1);
    }
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_nuvion_json);
    lua_setfield(L, -2, "nuvion.json");
    lua_settop(L, 0);
    if (luaL_dostring(L, prelude) != 0) {
        printf("prelude failed: %s\n", lua_tostring(L, -1));
        exit(1);
    }
    return L;
}

/* Runs a chunk that must return true; prints the reason when it does not. */
static int lua_true(lua_State *L, const char *chunk)
{
    int ok;
    lua_settop(L, 0);
    if (luaL_dostring(L, chunk) != 0) {
        printf("    lua error: %s\n", lua_tostring(L, -1));
        lua_settop(L, 0);
        return 0;
    }
    ok = lua_toboolean(L, 1);
    if (!ok) printf("    %s\n", lua_gettop(L) >= 2 ? lua_tostring(L, 2) : "returned false");
    lua_settop(L, 0);
    return ok;
}

#define CHECK_LUA(L, chunk) CHECK(lua_true((L), (chunk)))

/* json.decode(text [, {depth = depth}]) from C; leaves value and error at
 * stack slots 1 and 2; returns whether it decoded. depth 0: no opts. */
static int c_decode(lua_State *L, const char *text, size_t len, int depth)
{
    lua_settop(L, 0);
    lua_getglobal(L, "json");
    lua_getfield(L, -1, "decode");
    lua_remove(L, 1);
    lua_pushlstring(L, text, len);
    if (depth > 0) {
        lua_createtable(L, 0, 1);
        lua_pushinteger(L, depth);
        lua_setfield(L, -2, "depth");
    }
    if (lua_pcall(L, depth > 0 ? 2 : 1, 2, 0) != 0) {
        printf("    decode raised: %s\n", lua_tostring(L, -1));
        lua_settop(L, 0);
        lua_pushnil(L);
        lua_pushstring(L, "raised");
        return 0;
    }
    return !lua_isnil(L, 1);
}

/* The error text of decoding text, "" when it decoded. */
static const char *c_decode_err(lua_State *L, const char *text, size_t len, int depth)
{
    if (c_decode(L, text, len, depth)) return "";
    return lua_tostring(L, 2);
}

#define CHECK_DECODE_ERR_N(L, text, len, depth, want)                          \
    do {                                                                       \
        const char *e_ = c_decode_err((L), (text), (len), (depth));            \
        CHECK_MEM_EQ(e_, strlen(e_), (want));                                  \
    } while (0)

#define CHECK_DECODE_ERR(L, lit_text, want) CHECK_DECODE_ERR_N(L, lit_text, sizeof(lit_text) - 1, 0, want)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- types ------------------------------------------------------------ */

static void test_decode_every_type(void)
{
    static const char doc[] =
        "{\"n\":null,\"t\":true,\"f\":false,\"i\":42,\"d\":-1.5e3,\"s\":\"x\",\"a\":[1,\"b\"],\"o\":{\"k\":\"v\"}}";
    lua_State *L = new_state();
    size_t n;
    const char *s;
    CHECK(c_decode(L, doc, sizeof doc - 1, 0));
    CHECK(lua_type(L, 1) == LUA_TTABLE);
    lua_getfield(L, 1, "n");
    CHECK(lua_type(L, -1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL);
    lua_getfield(L, 1, "t");
    CHECK(lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1));
    lua_getfield(L, 1, "f");
    CHECK(lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1));
    lua_getfield(L, 1, "i");
    CHECK(lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 42.0);
    lua_getfield(L, 1, "d");
    CHECK(lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == -1500.0);
    lua_getfield(L, 1, "s");
    s = lua_tolstring(L, -1, &n);
    CHECK_MEM_EQ(s, n, "x");
    lua_getfield(L, 1, "a");
    CHECK(lua_type(L, -1) == LUA_TTABLE && lua_objlen(L, -1) == 2);
    CHECK(lua_getmetatable(L, -1));
    lua_getfield(L, 1, "o");
    CHECK(lua_type(L, -1) == LUA_TTABLE && !lua_getmetatable(L, -1));
    CHECK_LUA(L, "local v = json.decode('{\"a\":[1],\"o\":{}}')\n"
                 "return getmetatable(v.a) == json.array_mt and getmetatable(v) == nil\n"
                 "  and getmetatable(v.o) == nil");
    CHECK_LUA(L, "return expect(json.decode('\"top\"'), 'top')");
    CHECK_LUA(L, "return expect(json.decode(' 7 '), 7)");
    CHECK_LUA(L, "return expect(json.decode('false'), false)");
    lua_close(L);
}

static void test_encode_every_type(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc(true), 'true')");
    CHECK_LUA(L, "return expect(enc(false), 'false')");
    CHECK_LUA(L, "return expect(enc(json.null), 'null')");
    CHECK_LUA(L, "return expect(enc(42), '42')");
    CHECK_LUA(L, "return expect(enc(-1.5), '-1.5')");
    CHECK_LUA(L, "return expect(enc('x'), '\"x\"')");
    CHECK_LUA(L, "return expect(enc({1, 'b', true}), '[1,\"b\",true]')");
    CHECK_LUA(L, "return expect(enc({k = 'v'}), '{\"k\":\"v\"}')");
    CHECK_LUA(L, "return expect(enc({a = {b = {c = json.null}}}), '{\"a\":{\"b\":{\"c\":null}}}')");
    CHECK_LUA(L, "return expect(enc(json.int('123456789012345678901234567890')), '123456789012345678901234567890')");
    CHECK_LUA(L, "return expect(canon({b = 1, a = 2, c = {z = 1, y = 2}}), '{\"a\":2,\"b\":1,\"c\":{\"y\":2,\"z\":1}}')");
    lua_close(L);
}

static void test_round_trips(void)
{
    static const char *const docs[] = {
        "{\"amount\":129900,\"currency\":\"eur\",\"id\":\"pi_1\",\"items\":[{\"q\":2,\"sku\":\"A\"},{\"q\":1,\"sku\":\"B\"}]}",
        "[[],{},[[]],[{}],null,true,false,0,-1,0.5,\"\"]",
        "{\"a\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\",\"b\":\"\\\"\\\\\\n\\t\\u0001/\"}",
        "[9007199254740992,9007199254740993,-9007199254740993,170141183460469231731687303715884105727]",
        "[0.1,1e+300,-2.5e-07,0.3333333333333333,1.7976931348623157e+308]",
        "\"just a string\"",
        "-12",
    };
    lua_State *L = new_state();
    size_t i;
    for (i = 0; i < NV_ARRAY_LEN(docs); i++) {
        size_t n;
        const char *s;
        CHECK(c_decode(L, docs[i], strlen(docs[i]), 0));
        lua_getglobal(L, "canon");
        lua_pushvalue(L, 1);
        lua_call(L, 1, 1);
        s = lua_tolstring(L, -1, &n);
        CHECK_MEM_EQ(s, n, docs[i]);
    }
    lua_close(L);
}

/* ---- numbers ---------------------------------------------------------- */

static void test_int_2p53_boundary(void)
{
    lua_State *L = new_state();
    CHECK(c_decode(L, "9007199254740992", 16, 0));
    CHECK(lua_type(L, 1) == LUA_TNUMBER && lua_tonumber(L, 1) == 9007199254740992.0);
    CHECK(c_decode(L, "-9007199254740992", 17, 0));
    CHECK(lua_type(L, 1) == LUA_TNUMBER && lua_tonumber(L, 1) == -9007199254740992.0);
    CHECK(c_decode(L, "9007199254740993", 16, 0));
    CHECK(lua_type(L, 1) == LUA_TTABLE); /* a double would round it to ...992 */
    CHECK_LUA(L, "local v = json.decode('9007199254740993')\n"
                 "return json.is_int(v) and tostring(v) == '9007199254740993' and enc(v) == '9007199254740993'");
    CHECK_LUA(L, "local v = json.decode('-9007199254740993')\n"
                 "return json.is_int(v) and expect(enc(v), '-9007199254740993')");
    CHECK_LUA(L, "return expect(enc(json.decode('[9007199254740993]')), '[9007199254740993]')");
    CHECK_LUA(L, "return type(json.decode('1000000000000000')) == 'number'"); /* 16 digits, small */
    lua_close(L);
}

static void test_int_39_digits(void)
{
    static const char pos[] = "123456789012345678901234567890123456789";
    static const char neg[] = "-999999999999999999999999999999999999999";
    lua_State *L = new_state();
    size_t n;
    const char *s;
    CHECK(c_decode(L, pos, sizeof pos - 1, 0));
    lua_rawgeti(L, 1, 1);
    s = lua_tolstring(L, -1, &n);
    CHECK_MEM_EQ(s, n, pos);
    CHECK(c_decode(L, neg, sizeof neg - 1, 0));
    lua_rawgeti(L, 1, 1);
    s = lua_tolstring(L, -1, &n);
    CHECK_MEM_EQ(s, n, neg);
    CHECK_LUA(L, "local s = '{\"max\":-999999999999999999999999999999999999999}'\n"
                 "return expect(enc(json.decode(s)), s)");
    CHECK_DECODE_ERR(L, "1234567890123456789012345678901234567890",
                     "JSON integer of 40 digits exceeds 39 digits at byte 40");
    CHECK_DECODE_ERR(L, "[-1234567890123456789012345678901234567890]",
                     "JSON integer of 40 digits exceeds 39 digits at byte 42");
    lua_close(L);
}

static void test_json_int_api(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "local a = json.int('123456789012345678901234567890')\n"
                 "return json.is_int(a) and getmetatable(a) == json.int_mt and a[1] == '123456789012345678901234567890'");
    CHECK_LUA(L, "return expect(tostring(json.int('-42')), '-42')");
    CHECK_LUA(L, "return json.int('9007199254740993') == json.decode('9007199254740993')");
    CHECK_LUA(L, "return json.int('1') ~= json.int('2')");
    CHECK_LUA(L, "return expect(tostring(json.int(2^60)), '1152921504606846976')");
    CHECK_LUA(L, "return expect(tostring(json.int(-7)), '-7')");
    CHECK_LUA(L, "return expect(tostring(json.int(0)), '0')");
    CHECK_LUA(L, "local a = json.int('5') return json.int(a) == a");
    CHECK_LUA(L, "return expect(json.int_mt.__name, 'json.int')");
    CHECK_LUA(L, "return not json.is_int(5) and not json.is_int('5') and not json.is_int({})");
    CHECK_LUA(L, "for _, bad in ipairs({'', '-', '01', '-0', '1.5', '1e3', ' 1', 'abc', '+1',\n"
                 "    string.rep('9', 40)}) do\n"
                 "  if not raises(json.int, bad) then return false, 'accepted ' .. bad end\n"
                 "end\n"
                 "for _, bad in ipairs({1.5, 0/0, 1/0, 1e40}) do\n"
                 "  if not raises(json.int, bad) then return false, 'accepted ' .. tostring(bad) end\n"
                 "end\n"
                 "return raises(json.int, true) and raises(json.int, nil) and raises(json.int, {})");
    CHECK_LUA(L, "local ok, e = pcall(json.int, '12a')\n"
                 "return not ok and e:find('got \"12a\"', 1, true) ~= nil, e");
    CHECK_LUA(L, "local v = json.int('12') v[1] = '1x' return expect(enc({v}), 'invalid json.int at $[0]')");
    lua_close(L);
}

static void test_number_forms(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(json.decode('1E2'), 100)");
    CHECK_LUA(L, "return expect(json.decode('-0'), 0)");
    CHECK_LUA(L, "return expect(json.decode('0.5'), 0.5)");
    CHECK_LUA(L, "return expect(json.decode('1e-400'), 0)"); /* underflow rounds to 0 */
    CHECK_LUA(L, "return expect(json.decode('0.' .. string.rep('0', 300) .. '1'), 1e-301)");
    CHECK_DECODE_ERR(L, "1e999", "JSON number out of range at byte 5");
    CHECK_DECODE_ERR(L, "[-1e999]", "JSON number out of range at byte 7");
    CHECK_DECODE_ERR(L, "01", "invalid JSON at byte 2: trailing data after the document");
    CHECK_DECODE_ERR(L, "[1.]", "invalid JSON at byte 3: malformed number, a digit is required after the decimal point");
    lua_close(L);
}

static void test_encode_numbers(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc(1e20), '100000000000000000000')");
    CHECK_LUA(L, "return expect(enc(2^53), '9007199254740992')");
    CHECK_LUA(L, "return expect(enc(2^63), '9223372036854775808')");
    CHECK_LUA(L, "return expect(enc(-2^63), '-9223372036854775808')");
    CHECK_LUA(L, "return expect(enc(1e15), '1000000000000000')");
    CHECK_LUA(L, "return expect(enc(100.0), '100')");
    CHECK_LUA(L, "return expect(enc(-0.0), '0')");
    CHECK_LUA(L, "return expect(enc(0.1), '0.1')");
    CHECK_LUA(L, "return expect(enc(1/3), '0.3333333333333333')");
    CHECK_LUA(L, "return expect(enc(0.1 + 0.2), '0.30000000000000004')");
    CHECK_LUA(L, "return expect(enc(1e300), '1e+300')");
    CHECK_LUA(L, "return expect(enc(1e39), '1e+39')");
    CHECK_LUA(L, "return expect(enc(123.456), '123.456')");
    lua_close(L);
}

static void test_nan_inf_refused(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc({amount = 0/0}), 'cannot encode NaN at $.amount')");
    CHECK_LUA(L, "return expect(enc({amount = 1/0}), 'cannot encode inf at $.amount')");
    CHECK_LUA(L, "return expect(enc({1, -1/0}), 'cannot encode -inf at $[1]')");
    CHECK_LUA(L, "return select('#', json.encode(0/0)) == 2 and json.encode(0/0) == nil");
    lua_close(L);
}

static void test_cdata_int64(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc(require('ffi').new('int64_t', -5)), '-5')");
    CHECK_LUA(L, "return expect(enc(0x7fffffffffffffffLL), '9223372036854775807')");
    CHECK_LUA(L, "return expect(enc(-0x8000000000000000LL), '-9223372036854775808')");
    CHECK_LUA(L, "return expect(enc(18446744073709551615ULL), '18446744073709551615')");
    CHECK_LUA(L, "return expect(canon({id = 42ULL, n = {0LL}}), '{\"id\":42,\"n\":[0]}')");
    CHECK_LUA(L, "return expect(enc({x = require('ffi').new('int32_t', 5)}), 'cannot encode cdata at $.x')");
    CHECK_LUA(L, "return expect(enc({p = require('ffi').new('char[4]')}), 'cannot encode cdata at $.p')");
    lua_close(L);
}

/* ---- containers ------------------------------------------------------- */

static void test_empty_array_vs_object(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc(json.decode('[]')), '[]')");
    CHECK_LUA(L, "return expect(enc(json.decode('{}')), '{}')");
    CHECK_LUA(L, "return expect(enc(json.decode('{\"a\":[],\"b\":{},\"c\":[[]]}'), {sort_keys = true}),\n"
                 "  '{\"a\":[],\"b\":{},\"c\":[[]]}')");
    CHECK_LUA(L, "return expect(enc({}), '{}')");
    CHECK_LUA(L, "return expect(enc(json.array({})), '[]')");
    CHECK_LUA(L, "return expect(enc(json.array()), '[]')");
    CHECK_LUA(L, "return expect(enc(json.object({})), '{}')");
    CHECK_LUA(L, "local t = {} return json.array(t) == t and getmetatable(t) == json.array_mt");
    CHECK_LUA(L, "local t = {} return json.object(t) == t and getmetatable(t) == json.object_mt");
    CHECK_LUA(L, "return raises(json.array, 5) and raises(json.object, 'x')");
    lua_close(L);
}

static void test_null(void)
{
    lua_State *L = new_state();
    CHECK(c_decode(L, "null", 4, 0));
    CHECK(lua_type(L, 1) == LUA_TLIGHTUSERDATA && lua_touserdata(L, 1) == NULL);
    CHECK_LUA(L, "return json.decode('null') == json.null");
    CHECK_LUA(L, "local v = json.decode('[null,null,null]') return #v == 3 and v[2] == json.null");
    CHECK_LUA(L, "local v = json.decode('{\"a\":null}') return v.a == json.null");
    CHECK_LUA(L, "return expect(enc({json.null, 1}), '[null,1]')");
    lua_close(L);
}

static void test_duplicate_keys_last_wins(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(json.decode('{\"a\":1,\"b\":2,\"a\":3}').a, 3)");
    /* also once the object has more members than decode batches */
    CHECK_LUA(L, "local p = {} for i = 1, 100 do p[#p + 1] = '\"k' .. (i % 7) .. '\":' .. i end\n"
                 "local v = json.decode('{' .. table.concat(p, ',') .. '}')\n"
                 "return v.k0 == 98 and v.k1 == 99 and v.k2 == 100 and v.k6 == 97");
    lua_close(L);
}

static void test_large_containers(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "local a, o = {}, {} for i = 1, 5000 do a[i] = i o['k' .. i] = {i} end\n"
                 "local s = canon({a = a, o = o})\n"
                 "local v = assert(json.decode(s))\n"
                 "return #v.a == 5000 and v.a[4999] == 4999 and v.o.k77[1] == 77 and canon(v) == s");
    lua_close(L);
}

static void test_mixed_and_sparse_refused(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc({1, 2, x = 3}), 'cannot encode table with mixed keys at $')");
    CHECK_LUA(L, "return expect(enc({a = {b = {[1] = 1, [3] = 3}}}), 'cannot encode sparse array at $.a.b')");
    CHECK_LUA(L, "return expect(enc({[0] = 1}), 'cannot encode sparse array at $')");
    CHECK_LUA(L, "return expect(enc({[1.5] = 1}), 'cannot encode sparse array at $')");
    CHECK_LUA(L, "return expect(enc({a = {[true] = 1}}), 'cannot encode table key of type boolean at $.a')");
    CHECK_LUA(L, "return expect(enc(json.object({[1] = 'x'})), 'cannot encode object key of type number at $')");
    CHECK_LUA(L, "return expect(enc({list = json.array({1, nil, 3})}), 'cannot encode sparse array at $.list')");
    CHECK_LUA(L, "local t = json.array({1, 2}) t[4] = 4 return expect(enc({t}), 'cannot encode sparse array at $[0]')");
    CHECK_LUA(L, "return expect(enc(json.array({1, x = 2})), 'cannot encode table with mixed keys at $')");
    CHECK_LUA(L, "return expect(enc({items = {{}, {f = print}}}), 'cannot encode function at $.items[1].f')");
    CHECK_LUA(L, "return expect(enc({['a b'] = {f = print}}), 'cannot encode function at $[\"a b\"].f')");
    CHECK_LUA(L, "return expect(enc({[1] = 'a', [2] = 'b'}), '[\"a\",\"b\"]')");
    lua_close(L);
}

static void test_unencodable_values(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc({payment = {callback = print}}), 'cannot encode function at $.payment.callback')");
    CHECK_LUA(L, "return expect(enc(io.stdout), 'cannot encode userdata at $')");
    CHECK_LUA(L, "return expect(enc({co = coroutine.create(print)}), 'cannot encode thread at $.co')");
    CHECK_LUA(L, "return expect(enc(nil), 'cannot encode nil at $')");
    CHECK_LUA(L, "local v, e = json.encode(print) return v == nil and type(e) == 'string'");
    lua_close(L);
}

static void test_cycles_and_encode_depth(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "local t = {} t.a = t local e = enc(t)\n"
                 "return e:sub(1, 46) == 'nested deeper than 128 levels at $.a.a.a.a.a.a' and e:sub(-3) == '...', e");
    CHECK_LUA(L, "local t = {} local c = t for i = 1, 127 do c[1] = {} c = c[1] end\n"
                 "return expect(#enc(t), 256)"); /* 128 levels: accepted */
    CHECK_LUA(L, "local t = {} local c = t for i = 1, 128 do c[1] = {} c = c[1] end\n"
                 "return expect(enc(t):sub(1, 40), 'nested deeper than 128 levels at $[0][0]')");
    CHECK_LUA(L, "return expect(enc({{{}}}, {depth = 2}), 'nested deeper than 2 levels at $[0][0]')");
    CHECK_LUA(L, "return raises(json.encode, 1, {depth = 1001}) and raises(json.encode, 1, {depth = 0})\n"
                 "  and raises(json.encode, 1, 'x')");
    lua_close(L);
}

/* ---- strings ---------------------------------------------------------- */

static void test_invalid_utf8_decode(void)
{
    lua_State *L = new_state();
    CHECK_DECODE_ERR(L, "{\"name\":\"abcdefg\xff\"}", "invalid JSON at byte 17: invalid UTF-8 in string");
    CHECK_DECODE_ERR(L, "{\"name\":\"abcdefg\xc0\x80\"}", "invalid JSON at byte 17: invalid UTF-8 in string");
    CHECK_DECODE_ERR(L, "\"\xed\xa0\x80\"", "invalid JSON at byte 2: invalid UTF-8 in string");     /* surrogate */
    CHECK_DECODE_ERR(L, "\"\xf4\x90\x80\x80\"", "invalid JSON at byte 2: invalid UTF-8 in string"); /* > U+10FFFF */
    CHECK_DECODE_ERR(L, "\"\xe0\x80\xaf\"", "invalid JSON at byte 2: invalid UTF-8 in string");     /* overlong */
    CHECK_DECODE_ERR(L, "\"\xe2\x82\"", "invalid JSON at byte 4: invalid UTF-8 in string");         /* cut short */
    CHECK_DECODE_ERR(L, "{\"k\xff\":1}", "invalid JSON at byte 4: invalid UTF-8 in string");
    CHECK_LUA(L, "return expect(json.decode('\"caf\\195\\169 \\226\\130\\172 \\240\\159\\152\\128\"'),\n"
                 "  'caf\\195\\169 \\226\\130\\172 \\240\\159\\152\\128')");
    lua_close(L);
}

static void test_invalid_utf8_encode(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(enc({name = 'ab\\255'}), 'invalid UTF-8 in string at $.name')");
    CHECK_LUA(L, "return expect(enc({'\\237\\160\\128'}), 'invalid UTF-8 in string at $[0]')");
    CHECK_LUA(L, "return expect(enc({'\\192\\128'}), 'invalid UTF-8 in string at $[0]')");
    CHECK_LUA(L, "return expect(enc({['k\\255'] = 1}), 'invalid UTF-8 in object key at $[\"k\\\\xff\"]')");
    CHECK_LUA(L, "return expect(enc('\\244\\143\\191\\191'), '\"\\244\\143\\191\\191\"')"); /* U+10FFFF */
    lua_close(L);
}

static void test_escapes(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(json.decode([[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20ac\"]]),\n"
                 "  '\"\\\\/\\b\\f\\n\\r\\tA\\195\\169\\226\\130\\172')");
    CHECK_LUA(L, "return expect(enc('\"\\\\/\\b\\f\\n\\r\\t'), [[\"\\\"\\\\/\\b\\f\\n\\r\\t\"]])");
    CHECK_LUA(L, "return expect(enc('\\1\\31\\127'), [[\"\\u0001\\u001f\x7f\"]])");
    CHECK_LUA(L, "return expect(enc('a\\0b'), [[\"a\\u0000b\"]])");
    CHECK_LUA(L, "return expect(json.decode([[\"a\\u0000b\"]]), 'a\\0b')");
    CHECK_DECODE_ERR(L, "\"\\x\"", "invalid JSON at byte 2: inside a string, '\\' occurs before a character which it may not");
    CHECK_DECODE_ERR(L, "\"a\x01\"", "invalid JSON at byte 2: invalid character inside string");
    lua_close(L);
}

static void test_surrogate_pairs(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(json.decode([[\"\\ud83d\\ude00\"]]), '\\240\\159\\152\\128')"); /* U+1F600 */
    CHECK_LUA(L, "return expect(json.decode([[\"\\udbff\\udfff\"]]), '\\244\\143\\191\\191')"); /* U+10FFFF */
    CHECK_LUA(L, "return expect(enc(json.decode([[\"\\ud834\\udd1e\"]])), '\"\\240\\157\\132\\158\"')");
    /* A lone low surrogate would decode to invalid UTF-8: refused. */
    CHECK_DECODE_ERR(L, "\"\\udc00\"", "invalid JSON at byte 8: invalid UTF-8 in string");
    /* yajl 2.1 turns a lone high surrogate into '?', as documented. */
    CHECK_LUA(L, "return expect(json.decode([[\"\\ud800\"]]), '?')");
    lua_close(L);
}

/* ---- limits and errors ------------------------------------------------ */

static void test_depth_limit(void)
{
    char doc[2 * 130 + 1];
    lua_State *L = new_state();
    memset(doc, '[', 128);
    memset(doc + 128, ']', 128);
    CHECK(c_decode(L, doc, 256, 0));
    memset(doc, '[', 129);
    memset(doc + 129, ']', 129);
    CHECK_DECODE_ERR_N(L, doc, 258, 0, "JSON nested deeper than 128 levels at byte 129");
    CHECK(c_decode(L, "[[[[[]]]]]", 10, 5));
    CHECK_DECODE_ERR_N(L, "[[[[[[]]]]]]", 12, 5, "JSON nested deeper than 5 levels at byte 6");
    CHECK(c_decode(L, "{\"a\":{\"a\":{}}}", 14, 3));
    CHECK_DECODE_ERR_N(L, "{\"a\":{\"a\":{\"a\":{}}}}", 20, 3, "JSON nested deeper than 3 levels at byte 16");
    CHECK_LUA(L, "local s = string.rep('[', 1000) .. string.rep(']', 1000)\n"
                 "return json.decode(s, {depth = 1000}) ~= nil and json.decode(s) == nil");
    CHECK_LUA(L, "return raises(json.decode, '1', {depth = 1001}) and raises(json.decode, '1', {depth = 0})\n"
                 "  and raises(json.decode, '1', {depth = 1.5}) and raises(json.decode, '1', {depth = 'x'})");
    lua_close(L);
}

static void test_deep_100k_rejected_fast(void)
{
    enum { DEEP = 100000 };
    static const char obj[] = "{\"a\":";
    char *doc = malloc(DEEP * (sizeof obj - 1) + 1);
    lua_State *L = new_state();
    double t0;
    size_t i;
    CHECK(doc != NULL);
    if (doc == NULL) return;
    memset(doc, '[', DEEP);
    t0 = now_s();
    CHECK_DECODE_ERR_N(L, doc, DEEP, 0, "JSON nested deeper than 128 levels at byte 129");
    for (i = 0; i < DEEP; i++) memcpy(doc + i * (sizeof obj - 1), obj, sizeof obj - 1);
    CHECK_DECODE_ERR_N(L, doc, DEEP * (sizeof obj - 1), 0, "JSON nested deeper than 128 levels at byte 641");
    CHECK(now_s() - t0 < 0.5); /* it stops at level 129: microseconds, even under ASan */
    free(doc);
    lua_close(L);
}

static void test_size_limit(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "return expect(dec_err('[1,2,3,4,5]', {bytes = 10}), 'JSON document of 11 bytes exceeds the 10-byte limit')");
    CHECK_LUA(L, "return json.decode('[1,2,3,4,5]', {bytes = 11}) ~= nil");
    CHECK_LUA(L, "local s = '\"' .. string.rep('a', 16 * 1024 * 1024 - 1) .. '\"'\n"
                 "return expect(dec_err(s), 'JSON document of 16777217 bytes exceeds the 16777216-byte limit')");
    CHECK_LUA(L, "local s = '\"' .. string.rep('a', 16 * 1024 * 1024 - 2) .. '\"'\n"
                 "return #json.decode(s) == 16 * 1024 * 1024 - 2");
    CHECK_LUA(L, "return raises(json.decode, '1', {bytes = -1})");
    lua_close(L);
}

static void test_trailing_garbage(void)
{
    lua_State *L = new_state();
    CHECK_DECODE_ERR(L, "[1] x", "invalid JSON at byte 5: trailing data after the document");
    CHECK_DECODE_ERR(L, "{} {}", "invalid JSON at byte 4: trailing data after the document");
    CHECK_DECODE_ERR(L, "[1]]", "invalid JSON at byte 4: trailing data after the document");
    CHECK_DECODE_ERR(L, "1 2", "invalid JSON at byte 3: trailing data after the document");
    CHECK(c_decode(L, "[1] \n\t ", 7, 0));
    lua_close(L);
}

static void test_truncated_input(void)
{
    lua_State *L = new_state();
    CHECK_DECODE_ERR(L, "[1,2", "invalid JSON at byte 4: unexpected end of input");
    CHECK_DECODE_ERR(L, "{\"a\":", "invalid JSON at byte 5: unexpected end of input");
    CHECK_DECODE_ERR(L, "\"abc", "invalid JSON at byte 4: unexpected end of input");
    CHECK_DECODE_ERR(L, "", "invalid JSON at byte 0: unexpected end of input");
    CHECK_DECODE_ERR(L, "   ", "invalid JSON at byte 3: unexpected end of input");
    CHECK_DECODE_ERR(L, "tru", "invalid JSON at byte 3: invalid string in json text");
    CHECK_DECODE_ERR(L, "-", "invalid JSON at byte 1: malformed number, a digit is required after the minus sign");
    lua_close(L);
}

static void test_error_offsets(void)
{
    lua_State *L = new_state();
    CHECK_DECODE_ERR(L, "[1,x]", "invalid JSON at byte 4: invalid char in json text");
    CHECK_DECODE_ERR(L, "{\"a\" 1}", "invalid JSON at byte 6: object key and value must be separated by a colon (':')");
    CHECK_DECODE_ERR(L, "{\"a\":1,}", "invalid JSON at byte 8: invalid object key (must be a string)");
    CHECK_DECODE_ERR(L, "[1,]", "invalid JSON at byte 4: unallowed token at this point in JSON text");
    CHECK_DECODE_ERR(L, "{1:2}", "invalid JSON at byte 2: invalid object key (must be a string)");
    CHECK_DECODE_ERR(L, "[1, // c]", "invalid JSON at byte 4: probable comment found in input text, comments are not enabled");
    CHECK_LUA(L, "return select('#', json.decode('[')) == 2");
    CHECK_LUA(L, "return raises(json.decode, nil) and raises(json.decode, 5) and raises(json.decode, '1', 'x')");
    lua_close(L);
}

/* ---- state ------------------------------------------------------------ */

static void test_buffer_reuse(void)
{
    lua_State *L = new_state();
    /* a 2 MB document grows the buffer past the 1 MB kept: freed after */
    CHECK_LUA(L, "local big = string.rep('x', 2 * 1024 * 1024)\n"
                 "return #enc({big}) == #big + 4 and expect(enc({1}), '[1]')");
    CHECK_LUA(L, "for i = 1, 1000 do if enc({i, 'a'}) ~= '[' .. i .. ',\"a\"]' then return false end end\n"
                 "return true");
    /* an error leaves the buffer ready for the next call */
    CHECK_LUA(L, "enc({1, 2, print}) return expect(enc({3}), '[3]')");
    lua_close(L);
}

/* A finalizer that encodes while an encode runs gets its own buffer. */
static void test_reentrant_encode_from_gc(void)
{
    lua_State *L = new_state();
    CHECK_LUA(L, "local bad = 0\n"
                 "local function gc() if enc({inner = {1, 2, 3}}) ~= '{\"inner\":[1,2,3]}' then bad = bad + 1 end end\n"
                 "collectgarbage('setpause', 0) collectgarbage('setstepmul', 1000)\n"
                 "local doc = {} for i = 1, 200 do doc['key' .. i] = {i, 'v' .. i} end\n"
                 "local want = canon(doc)\n"
                 "for round = 1, 200 do\n"
                 "  for i = 1, 20 do local p = newproxy(true) getmetatable(p).__gc = gc end\n"
                 "  if canon(doc) ~= want then return false, 'outer result damaged' end\n"
                 "end\n"
                 "collectgarbage() collectgarbage('setpause', 200) collectgarbage('setstepmul', 200)\n"
                 "return expect(bad, 0)");
    lua_close(L);
}

/* A Lua heap with a ceiling, to raise "not enough memory" inside decode's
 * callbacks and encode: run under ASan, a leaked yajl handle would show. */
typedef struct budget {
    size_t used;
    size_t limit;
} budget;

static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    budget *b = ud;
    size_t old = ptr != NULL ? osize : 0;
    void *p;
    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    if (nsize > old && b->used + (nsize - old) > b->limit) return NULL;
    p = realloc(ptr, nsize);
    if (p != NULL) b->used = b->used - old + nsize;
    return p;
}

static void test_out_of_memory_inside_calls(void)
{
    budget b = {0, 256 * 1024 * 1024};
    lua_State *L = lua_newstate(budget_alloc, &b);
    if (L == NULL) { /* a non-GC64 LuaJIT takes no custom allocator: nothing to test */
        printf("  skipped: lua_newstate refused a custom allocator\n");
        return;
    }
    luaL_openlibs(L);
    lua_pushcfunction(L, luaopen_nuvion_json);
    lua_call(L, 0, 1);
    lua_setglobal(L, "json");
    CHECK_LUA(L, "local p = {} for i = 1, 20000 do p[i] = '\"s' .. i .. '\"' end\n"
                 "doc = '[' .. table.concat(p, ',') .. ']'\n"
                 "big = {} for i = 1, 20000 do big[i] = 't' .. i end\n"
                 "collectgarbage() return true");
    b.limit = b.used + 64 * 1024; /* room to start, not to finish */
    CHECK_LUA(L, "local ok, e = pcall(json.decode, doc)\n"
                 "return not ok and e == 'not enough memory', tostring(e):sub(1, 60)");
    b.limit = 256 * 1024 * 1024;
    lua_gc(L, LUA_GCCOLLECT, 0);
    b.limit = b.used + 16 * 1024; /* less than the 160 KB result string */
    CHECK_LUA(L, "local ok, e = pcall(json.encode, big)\n"
                 "return not ok and e == 'not enough memory', tostring(e):sub(1, 60)");
    b.limit = 256 * 1024 * 1024;
    CHECK_LUA(L, "local v = assert(json.decode(doc)) return #v == 20000 and #json.encode(big) == #doc");
    lua_close(L);
    CHECK_INT_EQ(b.used, 0);
}

int main(void)
{
    TEST_RUN(test_decode_every_type);
    TEST_RUN(test_encode_every_type);
    TEST_RUN(test_round_trips);
    TEST_RUN(test_int_2p53_boundary);
    TEST_RUN(test_int_39_digits);
    TEST_RUN(test_json_int_api);
    TEST_RUN(test_number_forms);
    TEST_RUN(test_encode_numbers);
    TEST_RUN(test_nan_inf_refused);
    TEST_RUN(test_cdata_int64);
    TEST_RUN(test_empty_array_vs_object);
    TEST_RUN(test_null);
    TEST_RUN(test_duplicate_keys_last_wins);
    TEST_RUN(test_large_containers);
    TEST_RUN(test_mixed_and_sparse_refused);
    TEST_RUN(test_unencodable_values);
    TEST_RUN(test_cycles_and_encode_depth);
    TEST_RUN(test_invalid_utf8_decode);
    TEST_RUN(test_invalid_utf8_encode);
    TEST_RUN(test_escapes);
    TEST_RUN(test_surrogate_pairs);
    TEST_RUN(test_depth_limit);
    TEST_RUN(test_deep_100k_rejected_fast);
    TEST_RUN(test_size_limit);
    TEST_RUN(test_trailing_garbage);
    TEST_RUN(test_truncated_input);
    TEST_RUN(test_error_offsets);
    TEST_RUN(test_buffer_reuse);
    TEST_RUN(test_reentrant_encode_from_gc);
    TEST_RUN(test_out_of_memory_inside_calls);
    return TEST_DONE();
}
