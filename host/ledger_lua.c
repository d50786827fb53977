/* ledger_lua.c -- the nuvion.ledger_c Lua module: events from Lua tables into the posting layer
 * (ledger_post.c), results back as names. lua/lib/nuvion/ledger.lua is its Lua face;
 * docs/ledger_api.md documents the calls. */
#include "ledger_lua.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_post.h"
#include "nv_limits.h"

#define ENGINE_MT "nuvion.ledger_engine"

typedef struct engine_handle {
    nv_ledger_engine *e;
} engine_handle;

/* ---- values --------------------------------------------------------------------------- */

/* Raises "ledger: event 3: amount must be ..." naming the event and field. */
static int bad(lua_State *L, uint32_t ev, const char *field, const char *what) {
    return luaL_error(L, "ledger: event %d: %s %s", (int)ev, field, what);
}

/* An unsigned integer field up to max: a Lua integer number (exact: below 2^53), a string of
 * digits, or a json.int ({ "<digits>" }). nil is 0. */
static nv_u128 field_uint(lua_State *L, int t, uint32_t ev, const char *field, nv_u128 max) {
    lua_getfield(L, t, field);
    nv_u128 v = 0;
    int type = lua_type(L, -1);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (type == LUA_TNUMBER) {
        double d = lua_tonumber(L, -1);
        if (!(d >= 0) || d != floor(d) || d > 9007199254740992.0)
            bad(L, ev, field, "must be a whole number from 0 to 2^53 (a string of digits or a json.int above)");
        v = (nv_u128)(uint64_t)d;
    } else {
        if (type == LUA_TTABLE) { /* json.int */
            lua_rawgeti(L, -1, 1);
            lua_replace(L, -2);
        }
        size_t len;
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (s == NULL) bad(L, ev, field, "must be an integer (number, string of digits or json.int)");
        if (nv_ledger_parse_u128(s, len, &v) != NV_OK)
            bad(L, ev, field, "must be a string of decimal digits from 0 to 2^128-1");
    }
    lua_pop(L, 1);
    if (v > max) {
        char m[80];
        char digits[40];
        snprintf(m, sizeof m, "must be at most %s", nv_ledger_u128_str(max, digits));
        bad(L, ev, field, m);
    }
    return v;
}

typedef struct flag_name {
    const char *name;
    uint16_t bit;
} flag_name;

static const flag_name account_flags[] = {
    {"linked", NV_LEDGER_ACCOUNT_LINKED},
    {"debits_must_not_exceed_credits", NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS},
    {"credits_must_not_exceed_debits", NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS},
    {"history", NV_LEDGER_ACCOUNT_HISTORY},
    {"closed", NV_LEDGER_ACCOUNT_CLOSED},
    {NULL, 0},
};

static const flag_name transfer_flags[] = {
    {"linked", NV_LEDGER_TRANSFER_LINKED},
    {"pending", NV_LEDGER_TRANSFER_PENDING},
    {"post_pending_transfer", NV_LEDGER_TRANSFER_POST_PENDING},
    {"void_pending_transfer", NV_LEDGER_TRANSFER_VOID_PENDING},
    {"balancing_debit", NV_LEDGER_TRANSFER_BALANCING_DEBIT},
    {"balancing_credit", NV_LEDGER_TRANSFER_BALANCING_CREDIT},
    {"closing_debit", NV_LEDGER_TRANSFER_CLOSING_DEBIT},
    {"closing_credit", NV_LEDGER_TRANSFER_CLOSING_CREDIT},
    {NULL, 0},
};

/* flags: an integer (TigerBeetle's bits), or a list of names; and `name = true` on the event. */
static uint16_t field_flags(lua_State *L, int t, uint32_t ev, const flag_name *names) {
    uint16_t flags = 0;
    lua_getfield(L, t, "flags");
    if (lua_istable(L, -1)) {
        int n = (int)lua_objlen(L, -1);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            const char *s = lua_tostring(L, -1);
            const flag_name *f = names;
            while (s != NULL && f->name != NULL && strcmp(f->name, s) != 0) f++;
            if (s == NULL || f->name == NULL) {
                char m[96];
                snprintf(m, sizeof m, "has an unknown flag '%s'", s != NULL ? s : "?");
                bad(L, ev, "flags", m);
            }
            flags |= f->bit;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    } else {
        lua_pop(L, 1);
        flags = (uint16_t)field_uint(L, t, ev, "flags", UINT16_MAX);
    }
    for (const flag_name *f = names; f->name != NULL; f++) {
        lua_getfield(L, t, f->name);
        if (lua_toboolean(L, -1)) flags |= f->bit;
        lua_pop(L, 1);
    }
    return flags;
}

static void read_transfer(lua_State *L, int t, uint32_t ev, nv_ledger_transfer *x) {
    if (!lua_istable(L, t)) luaL_error(L, "ledger: event %d must be a table", (int)ev);
    x->id = field_uint(L, t, ev, "id", NV_LEDGER_U128_MAX);
    x->debit_account_id = field_uint(L, t, ev, "debit_account_id", NV_LEDGER_U128_MAX);
    x->credit_account_id = field_uint(L, t, ev, "credit_account_id", NV_LEDGER_U128_MAX);
    x->amount = field_uint(L, t, ev, "amount", NV_LEDGER_U128_MAX);
    x->pending_id = field_uint(L, t, ev, "pending_id", NV_LEDGER_U128_MAX);
    x->user_data_128 = field_uint(L, t, ev, "user_data_128", NV_LEDGER_U128_MAX);
    x->user_data_64 = (uint64_t)field_uint(L, t, ev, "user_data_64", UINT64_MAX);
    x->user_data_32 = (uint32_t)field_uint(L, t, ev, "user_data_32", UINT32_MAX);
    x->timeout_s = (uint32_t)field_uint(L, t, ev, "timeout", UINT32_MAX);
    x->ledger = (uint32_t)field_uint(L, t, ev, "ledger", UINT32_MAX);
    x->code = (uint16_t)field_uint(L, t, ev, "code", UINT16_MAX);
    x->flags = field_flags(L, t, ev, transfer_flags);
    x->timestamp = (uint64_t)field_uint(L, t, ev, "timestamp", UINT64_MAX);
}

static void read_account(lua_State *L, int t, uint32_t ev, nv_ledger_account *x) {
    if (!lua_istable(L, t)) luaL_error(L, "ledger: event %d must be a table", (int)ev);
    x->id = field_uint(L, t, ev, "id", NV_LEDGER_U128_MAX);
    x->debits_pending = field_uint(L, t, ev, "debits_pending", NV_LEDGER_U128_MAX);
    x->debits_posted = field_uint(L, t, ev, "debits_posted", NV_LEDGER_U128_MAX);
    x->credits_pending = field_uint(L, t, ev, "credits_pending", NV_LEDGER_U128_MAX);
    x->credits_posted = field_uint(L, t, ev, "credits_posted", NV_LEDGER_U128_MAX);
    x->user_data_128 = field_uint(L, t, ev, "user_data_128", NV_LEDGER_U128_MAX);
    x->user_data_64 = (uint64_t)field_uint(L, t, ev, "user_data_64", UINT64_MAX);
    x->user_data_32 = (uint32_t)field_uint(L, t, ev, "user_data_32", UINT32_MAX);
    x->ledger = (uint32_t)field_uint(L, t, ev, "ledger", UINT32_MAX);
    x->code = (uint16_t)field_uint(L, t, ev, "code", UINT16_MAX);
    x->flags = field_flags(L, t, ev, account_flags);
    x->timestamp = (uint64_t)field_uint(L, t, ev, "timestamp", UINT64_MAX);
}

/* ---- calls ------------------------------------------------------------------------------ */

static engine_handle *check_engine(lua_State *L) {
    engine_handle *h = luaL_checkudata(L, 1, ENGINE_MT);
    if (h->e == NULL) luaL_error(L, "ledger: engine is closed");
    return h;
}

/* A chain left open at the end of the call must not run into the next call's events in the
 * batch. As TigerBeetle answers the last chain of a batch: the last event gets
 * linked_event_chain_open; the chain before it runs, and fails as a whole (an event that fails
 * its own check keeps its code, the others get linked_event_failed). The last event is swapped
 * for an empty one (id 0, no flags: it fails id_must_not_be_zero and closes the chain); take()
 * writes chain_open over its result. A lone open event never reaches the engine. */
static void cut_open_chain(nv_ledger_call *c, int accounts) {
    uint32_t n = c->n;
    int linked_bit = accounts ? NV_LEDGER_ACCOUNT_LINKED : NV_LEDGER_TRANSFER_LINKED;
    int last_linked = accounts ? (c->acc[n - 1].flags & linked_bit) : (c->tr[n - 1].flags & linked_bit);
    if (!last_linked) return;
    int prev_linked = n >= 2 && (accounts ? (c->acc[n - 2].flags & linked_bit) : (c->tr[n - 2].flags & linked_bit));
    c->results[n - 1] = NV_LEDGER_TR_linked_event_chain_open;
    _Static_assert((int)NV_LEDGER_TR_linked_event_chain_open == (int)NV_LEDGER_AR_linked_event_chain_open,
                   "the chain codes are the same in both result sets");
    if (!prev_linked) { /* alone: nothing to run */
        c->n_run = n - 1;
        return;
    }
    if (accounts) memset(&c->acc[n - 1], 0, sizeof c->acc[n - 1]);
    else memset(&c->tr[n - 1], 0, sizeof c->tr[n - 1]);
    c->open_chain = 1;
}

/* A userdata that frees a call when collected, unless disarmed: a parse that raises (a
 * caller's bug) must not leak the call. */
#define GUARD_MT "nuvion.ledger_call_guard"

static int l_guard_gc(lua_State *L) {
    nv_ledger_call **g = luaL_checkudata(L, 1, GUARD_MT);
    free(*g);
    *g = NULL;
    return 0;
}

/* submit(engine, list) -> call (light userdata) now or after the yield */
static int submit(lua_State *L, int accounts) {
    engine_handle *h = check_engine(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    nv_task *t = nv_task_of(L);
    if (t == NULL) return luaL_error(L, "ledger: calls must run in a task, not in a nested coroutine");
    size_t n = lua_objlen(L, 2);
    if (n < 1 || n > NV_LEDGER_POST_CALL_EVENTS_MAX)
        return luaL_error(L, "ledger: a call has from 1 to %d events, not %d", NV_LEDGER_POST_CALL_EVENTS_MAX, (int)n);
    nv_ledger_call **g = lua_newuserdata(L, sizeof *g);
    *g = NULL;
    luaL_getmetatable(L, GUARD_MT);
    lua_setmetatable(L, -2);
    nv_ledger_call *c = *g = nv_ledger_call_new(accounts, (uint32_t)n);
    if (c == NULL) return luaL_error(L, "ledger: out of memory");
    for (uint32_t i = 0; i < (uint32_t)n; i++) {
        lua_rawgeti(L, 2, (int)i + 1);
        int top = lua_gettop(L);
        if (accounts) read_account(L, top, i + 1, &c->acc[i]);
        else read_transfer(L, top, i + 1, &c->tr[i]);
        lua_pop(L, 1);
    }
    *g = NULL; /* parsed: the call is the engine's or the caller's from here */
    lua_pop(L, 1);
    cut_open_chain(c, accounts);
    c->task = t;
    lua_pushlightuserdata(L, c);
    if (c->n_run == 0) return 1;                             /* nothing for the engine: known */
    if (nv_ledger_engine_submit(h->e, c) != NV_OK) return 1; /* refused: status says why */
    lua_pop(L, 1);
    return nv_task_yield(L);
}

static int l_transfers(lua_State *L) { return submit(L, 0); }
static int l_accounts(lua_State *L) { return submit(L, 1); }

static const char *status_code(nv_ledger_call_status s) {
    switch (s) {
    case NV_LEDGER_CALL_OVERLOADED: return "ledger_overloaded";
    case NV_LEDGER_CALL_TIMEOUT: return "ledger_timeout";
    default: return "ledger_unavailable";
    }
}

/* take(call) -> { result names } | nil, code, message. Frees the call. */
static int l_take(lua_State *L) {
    nv_ledger_call *c = lua_touserdata(L, 1);
    luaL_argcheck(L, c != NULL, 1, "a call");
    if (c->status != NV_LEDGER_CALL_OK) {
        lua_pushnil(L);
        lua_pushstring(L, status_code(c->status));
        lua_pushstring(L, c->message);
        free(c);
        return 3;
    }
    /* build the table protected from leaks: copy what we need first */
    uint32_t n = c->n;
    int accounts = c->accounts;
    int stack_res[64];
    int *res = n <= 64 ? stack_res : malloc(n * sizeof(int));
    if (res == NULL) {
        free(c);
        return luaL_error(L, "ledger: out of memory");
    }
    memcpy(res, c->results, n * sizeof(int));
    if (c->open_chain) res[n - 1] = NV_LEDGER_TR_linked_event_chain_open;
    free(c);
    lua_createtable(L, (int)n, 0);
    for (uint32_t i = 0; i < n; i++) {
        const char *name = accounts ? nv_ledger_account_result_name((nv_ledger_account_result)res[i])
                                    : nv_ledger_result_name((nv_ledger_result)res[i]);
        lua_pushstring(L, name);
        lua_rawseti(L, -2, (int)i + 1);
    }
    if (res != stack_res) free(res);
    return 1;
}

static int l_stats(lua_State *L) {
    engine_handle *h = check_engine(L);
    nv_ledger_stats s;
    nv_ledger_engine_stats(h->e, &s);
    lua_createtable(L, 0, 8);
    lua_pushnumber(L, (lua_Number)s.batches), lua_setfield(L, -2, "batches");
    lua_pushnumber(L, (lua_Number)s.events), lua_setfield(L, -2, "events");
    lua_pushnumber(L, (lua_Number)s.retries), lua_setfield(L, -2, "retries");
    lua_pushnumber(L, (lua_Number)s.failed_batches), lua_setfield(L, -2, "failed_batches");
    lua_pushnumber(L, (lua_Number)s.sweeps), lua_setfield(L, -2, "sweeps");
    lua_pushnumber(L, (lua_Number)s.expired), lua_setfield(L, -2, "expired");
    lua_pushinteger(L, (lua_Integer)s.queued), lua_setfield(L, -2, "queued");
    lua_pushinteger(L, (lua_Integer)s.inflight), lua_setfield(L, -2, "inflight");
    return 1;
}

static int64_t opt_int(lua_State *L, int t, const char *k, int64_t def, int64_t lo, int64_t hi) {
    lua_getfield(L, t, k);
    int64_t v = def;
    if (!lua_isnil(L, -1)) {
        if (!lua_isnumber(L, -1)) luaL_error(L, "ledger.open: %s must be a number", k);
        double d = lua_tonumber(L, -1);
        if (d != floor(d) || d < (double)lo || d > (double)hi)
            luaL_error(L, "ledger.open: %s must be a whole number from %lld to %lld", k, (long long)lo, (long long)hi);
        v = (int64_t)d;
    }
    lua_pop(L, 1);
    return v;
}

/* new(pool, opts) -> engine, batch_max */
static int l_new(lua_State *L) {
    nv_pg_pool *p = nv_pg_pool_of(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    nv_ledger_cfg cfg;
    cfg.batch_max = (uint32_t)opt_int(L, 2, "batch_max", NV_LEDGER_POST_BATCH_DEFAULT, 1, NV_LEDGER_BATCH_TRANSFERS_MAX);
    cfg.batch_wait_us = (uint32_t)opt_int(L, 2, "batch_wait_us", 0, 0, NV_LEDGER_POST_WAIT_US_MAX);
    cfg.inflight = (int)opt_int(L, 2, "inflight", NV_LEDGER_POST_INFLIGHT_DEFAULT, 1, NV_LEDGER_POST_INFLIGHT_MAX);
    cfg.queue_max = (uint32_t)opt_int(L, 2, "queue_max", NV_LEDGER_POST_QUEUE_DEFAULT, 1, NV_LEDGER_POST_QUEUE_MAX);
    cfg.timeout_ms = opt_int(L, 2, "timeout_ms", NV_LEDGER_POST_TIMEOUT_MS_DEFAULT, 1, NV_LEDGER_POST_TIMEOUT_MS_MAX);
    cfg.sweep_ms = opt_int(L, 2, "sweep_ms", NV_LEDGER_POST_SWEEP_MS_DEFAULT, 0, NV_LEDGER_POST_SWEEP_MS_MAX);
    engine_handle *h = lua_newuserdata(L, sizeof *h);
    h->e = NULL;
    luaL_getmetatable(L, ENGINE_MT);
    lua_setmetatable(L, -2);
    h->e = nv_ledger_engine_new(p, &cfg);
    if (h->e == NULL) return luaL_error(L, "ledger.open: out of memory");
    lua_pushinteger(L, (lua_Integer)cfg.batch_max);
    return 2;
}

static int l_gc(lua_State *L) {
    engine_handle *h = luaL_checkudata(L, 1, ENGINE_MT);
    nv_ledger_engine_free(h->e);
    h->e = NULL;
    return 0;
}

/* transfer_results() / account_results() -> the result names, in order of precedence */
static int l_transfer_results(lua_State *L) {
    lua_createtable(L, NV_LEDGER_TR_COUNT_, 0);
    for (int i = 0; i < NV_LEDGER_TR_COUNT_; i++) {
        lua_pushstring(L, nv_ledger_result_name((nv_ledger_result)i));
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int l_account_results(lua_State *L) {
    lua_createtable(L, NV_LEDGER_AR_COUNT_, 0);
    for (int i = 0; i < NV_LEDGER_AR_COUNT_; i++) {
        lua_pushstring(L, nv_ledger_account_result_name((nv_ledger_account_result)i));
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

int luaopen_nuvion_ledger_c(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"create_transfers", l_transfers},
        {"create_accounts", l_accounts},
        {"stats", l_stats},
        {NULL, NULL},
    };
    static const luaL_Reg funcs[] = {
        {"new", l_new},
        {"take", l_take},
        {"transfer_results", l_transfer_results},
        {"account_results", l_account_results},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, GUARD_MT)) {
        lua_pushcfunction(L, l_guard_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, ENGINE_MT)) {
        lua_pushcfunction(L, l_gc);
        lua_setfield(L, -2, "__gc");
        lua_newtable(L);
        luaL_register(L, NULL, methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    luaL_register(L, NULL, funcs);
    return 1;
}
