/* fuzz_json.c -- libFuzzer target: whatever decodes must encode, and re-encode to the same bytes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "json.h"

#define FUZZ_DEPTH 16          /* small: deep inputs test the limit, not the fuzzer's patience */
#define FUZZ_GC_EVERY_RUNS 256 /* full collections keep LuaJIT's heap near its live size */

/* One Lua state for the whole run, as libFuzzer calls us millions of times;
 * stack slots 1..2 hold json.decode and json.encode. */
static lua_State *fuzz_L;

/* The Lua heap on malloc, not LuaJIT's mmap arena: LeakSanitizer then sees
 * the pointers it holds (to json's kept encode buffer) and ASan its bytes. */
static void *fuzz_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}

static void fuzz_init(void)
{
    fuzz_L = lua_newstate(fuzz_alloc, NULL);
    if (fuzz_L == NULL) fuzz_L = luaL_newstate(); /* a non-GC64 LuaJIT refuses custom allocators */
    if (fuzz_L == NULL) abort();
    luaL_openlibs(fuzz_L);
    lua_pushcfunction(fuzz_L, luaopen_nuvion_json);
    lua_call(fuzz_L, 0, 1);
    lua_getfield(fuzz_L, 1, "decode");
    lua_getfield(fuzz_L, 1, "encode");
    lua_remove(fuzz_L, 1);
}

/* decode(text, {depth = FUZZ_DEPTH}): leaves the value or nil on top. */
static int fuzz_decode(lua_State *L, const char *text, size_t len)
{
    lua_pushvalue(L, 1);
    lua_pushlstring(L, text, len);
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, FUZZ_DEPTH);
    lua_setfield(L, -2, "depth");
    if (lua_pcall(L, 2, 2, 0) != 0) {
        fprintf(stderr, "decode raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    if (lua_isnil(L, -2) && !lua_isstring(L, -1)) {
        fprintf(stderr, "decode failed without an error text\n");
        abort();
    }
    lua_pop(L, 1);
    return !lua_isnil(L, -1);
}

/* encode(value on top, {sort_keys = true}): the canonical text, or abort:
 * every decoded value must encode. Replaces the value with the text. */
static void fuzz_encode(lua_State *L)
{
    lua_pushvalue(L, 2);
    lua_insert(L, -2);
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "sort_keys");
    if (lua_pcall(L, 2, 2, 0) != 0) {
        fprintf(stderr, "encode raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    if (!lua_isstring(L, -2)) {
        fprintf(stderr, "a decoded value failed to encode: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_pop(L, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    lua_State *L;
    size_t n1, n2;
    const char *s1, *s2;
    if (fuzz_L == NULL) fuzz_init();
    L = fuzz_L;
    if (fuzz_decode(L, (const char *)data, size)) {
        fuzz_encode(L);
        s1 = lua_tolstring(L, -1, &n1);
        if (!fuzz_decode(L, s1, n1)) {
            fprintf(stderr, "encode output does not decode: %.*s\n", (int)n1, s1);
            abort();
        }
        fuzz_encode(L);
        s2 = lua_tolstring(L, -1, &n2);
        if (n1 != n2 || memcmp(s1, s2, n1) != 0) {
            fprintf(stderr, "unstable round trip:\n%.*s\n%.*s\n", (int)n1, s1, (int)n2, s2);
            abort();
        }
    }
    lua_settop(L, 2);
    if (++runs % FUZZ_GC_EVERY_RUNS == 0) lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
