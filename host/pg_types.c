/* pg_types.c -- values between Lua and Postgres: parameters packed into one request block,
 * results turned into Lua tables by column type (docs/pg.md has the mapping). */
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_internal.h"

/* Type OIDs (src/include/catalog/pg_type.dat); stable across Postgres versions. */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_TEXT 25
#define OID_OID 26
#define OID_JSON 114
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_BPCHAR 1042
#define OID_VARCHAR 1043
#define OID_DATE 1082
#define OID_TIMESTAMP 1114
#define OID_TIMESTAMPTZ 1184
#define OID_NUMERIC 1700
#define OID_UUID 2950
#define OID_JSONB 3802

#define EXACT_MAX 9007199254740992ULL /* 2^53: doubles hold every integer up to here */
#define JSON_INT_DIGITS_MAX 39       /* json.int's bound (docs/json.md) */

/* One parameter while a call is read: a pointer into a Lua string (kept alive by the stack or
 * a statement table), or text written into the scratch buffer (by offset: it may move). */
typedef struct pack_param {
    const char *p;
    size_t len;
    size_t off;
    unsigned in_text : 1;
    unsigned is_null : 1;
    unsigned binary : 1;
} pack_param;

typedef struct pack_stmt {
    const char *sql;
    size_t sql_len;
    int first; /* index of its first parameter in scratch.params */
    int nparams;
    int typed;
} pack_stmt;

/* Reused between calls; one call at a time (the busy flag refuses re-entry from a __gc). */
static struct {
    pack_param *params;
    size_t params_cap;
    pack_stmt stmts[NV_PG_PIPELINE_STATEMENTS_MAX];
    nv_buf text;
    int busy;
} scratch;

void nv_pg_types_release(void) {
    free(scratch.params);
    scratch.params = NULL;
    scratch.params_cap = 0;
    nv_buf_free(&scratch.text);
}

/* ---- parameters ---- */

/* Integral numbers print with all their digits (never 1e+20), others with the fewest digits
 * that read back to the same double. */
static size_t fmt_number(char *out, size_t cap, double d) {
    int n;
    if (isnan(d)) return (size_t)snprintf(out, cap, "NaN");
    if (isinf(d)) return (size_t)snprintf(out, cap, d > 0 ? "Infinity" : "-Infinity");
    if (d == floor(d)) {
        if (d > -9007199254740992.0 && d < 9007199254740992.0 && cap >= 24) { /* the common case, no printf */
            char tmp[24];
            size_t k = 0, len = 0;
            uint64_t u = d < 0 ? (uint64_t)(-d) : (uint64_t)d;
            do tmp[k++] = (char)('0' + u % 10), u /= 10; while (u != 0);
            if (d < 0) out[len++] = '-';
            while (k > 0) out[len++] = tmp[--k];
            out[len] = '\0';
            return len;
        }
        n = snprintf(out, cap, "%.0f", d);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            n = snprintf(out, cap, "%.*g", prec, d);
            if (strtod(out, NULL) == d) break;
        }
    }
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static void text_put(lua_State *L, pack_param *pp, const char *s, size_t n) {
    pp->off = scratch.text.len;
    pp->len = n;
    pp->in_text = 1;
    if (nv_buf_append(&scratch.text, s, n, NV_PG_REQUEST_BYTES_MAX) != NV_OK)
        luaL_error(L, "pg: parameters exceed %d bytes", (int)NV_PG_REQUEST_BYTES_MAX);
}

/* A table parameter: json.int, pg.bytea, or any other table as JSON text. */
static void param_table(lua_State *L, int uv, int idx, pack_param *pp, int n, int *typed) {
    if (lua_getmetatable(L, idx)) {
        lua_rawgeti(L, uv, NV_PG_UV_INT_MT);
        int is_int = lua_rawequal(L, -1, -2);
        lua_pop(L, 1);
        lua_rawgeti(L, uv, NV_PG_UV_BYTEA_MT);
        int is_bytea = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (is_int || is_bytea) {
            lua_rawgeti(L, idx, 1);
            if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "pg: parameter %d is malformed", n);
            pp->p = lua_tolstring(L, -1, &pp->len); /* the table holds the string */
            lua_pop(L, 1);
            if (is_bytea) pp->binary = 1, *typed = 1;
            return;
        }
    }
    lua_rawgeti(L, uv, NV_PG_UV_ENCODE);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 2);
    if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "pg: parameter %d: %s", n, lua_tostring(L, -1) ? lua_tostring(L, -1) : "cannot encode");
    size_t len;
    const char *s = lua_tolstring(L, -2, &len);
    text_put(L, pp, s, len);
    lua_pop(L, 2);
}

/* Reads the value at idx as parameter n (1-based, for messages). */
static void param_read(lua_State *L, int uv, int idx, pack_param *pp, int n, int *typed) {
    char num[64];
    size_t len;
    memset(pp, 0, sizeof *pp);
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        pp->is_null = 1;
        return;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) != NULL) luaL_error(L, "pg: parameter %d is a light userdata", n);
        pp->is_null = 1; /* json.null */
        return;
    case LUA_TBOOLEAN:
        pp->p = lua_toboolean(L, idx) ? "true" : "false";
        pp->len = strlen(pp->p);
        return;
    case LUA_TNUMBER:
        len = fmt_number(num, sizeof num, lua_tonumber(L, idx));
        text_put(L, pp, num, len);
        return;
    case LUA_TSTRING:
        pp->p = lua_tolstring(L, idx, &pp->len);
        if (memchr(pp->p, '\0', pp->len) != NULL)
            luaL_error(L, "pg: parameter %d holds a NUL byte: send binary data as pg.bytea(s)", n);
        return;
    case LUA_TTABLE:
        param_table(L, uv, idx, pp, n, typed);
        return;
    case 10: /* LuaJIT cdata: int64_t/uint64_t print as integers through json.encode */
        param_table(L, uv, idx, pp, n, typed);
        return;
    default:
        luaL_error(L, "pg: parameter %d: cannot send a %s", n, luaL_typename(L, idx));
    }
}

static pack_param *params_reserve(lua_State *L, size_t n) {
    if (n <= scratch.params_cap) return scratch.params;
    size_t cap = scratch.params_cap ? scratch.params_cap : 64;
    while (cap < n) cap *= 2;
    pack_param *p = realloc(scratch.params, cap * sizeof *p);
    if (p == NULL) luaL_error(L, "pg: out of memory");
    scratch.params = p;
    scratch.params_cap = cap;
    return p;
}

static void stmt_sql(lua_State *L, int idx, pack_stmt *s) {
    if (lua_type(L, idx) != LUA_TSTRING) luaL_error(L, "pg: SQL must be a string, got %s", luaL_typename(L, idx));
    s->sql = lua_tolstring(L, idx, &s->sql_len);
    if (memchr(s->sql, '\0', s->sql_len) != NULL) luaL_error(L, "pg: SQL holds a NUL byte");
}

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* Copies what scratch holds into one block: the request, its statements and outcomes, the
 * parameter arrays, then every byte of SQL and parameters. Raises nothing. */
static nv_pg_req *pack_build(int nstmts, int nparams) {
    size_t head = align8(sizeof(nv_pg_req)) + align8(nstmts * sizeof(nv_pg_stmt)) +
                  align8(nstmts * sizeof(nv_pg_out));
    size_t arrays = align8(nparams * sizeof(char *)) + align8(nparams * sizeof(int)) * 2 +
                    align8(nparams * sizeof(Oid));
    size_t bytes = 0;
    for (int i = 0; i < nstmts; i++) bytes += scratch.stmts[i].sql_len + 1;
    for (int i = 0; i < nparams; i++) bytes += scratch.params[i].len + 1;
    char *block = malloc(head + arrays + bytes);
    if (block == NULL) return NULL;
    nv_pg_req *r = (nv_pg_req *)block;
    memset(r, 0, sizeof *r);
    char *at = block + align8(sizeof(nv_pg_req));
    r->stmts = (nv_pg_stmt *)at, at += align8(nstmts * sizeof(nv_pg_stmt));
    r->outs = (nv_pg_out *)at, at += align8(nstmts * sizeof(nv_pg_out));
    memset(r->outs, 0, nstmts * sizeof(nv_pg_out));
    const char **values = (const char **)at;
    at += align8(nparams * sizeof(char *));
    int *lengths = (int *)at;
    at += align8(nparams * sizeof(int));
    int *formats = (int *)at;
    at += align8(nparams * sizeof(int));
    Oid *types = (Oid *)at;
    at += align8(nparams * sizeof(Oid));
    r->nstmts = nstmts;
    for (int i = 0; i < nstmts; i++) {
        pack_stmt *ps = &scratch.stmts[i];
        nv_pg_stmt *s = &r->stmts[i];
        memcpy(at, ps->sql, ps->sql_len);
        at[ps->sql_len] = '\0';
        s->sql = at, at += ps->sql_len + 1;
        s->nparams = ps->nparams, s->typed = ps->typed;
        s->values = values + ps->first, s->lengths = lengths + ps->first;
        s->formats = formats + ps->first, s->types = types + ps->first;
    }
    for (int i = 0; i < nparams; i++) {
        pack_param *pp = &scratch.params[i];
        const char *src = pp->in_text ? scratch.text.data + pp->off : pp->p;
        if (pp->len > 0) memcpy(at, src, pp->len);
        at[pp->len] = '\0';
        values[i] = pp->is_null ? NULL : at;
        lengths[i] = (int)pp->len;
        formats[i] = pp->binary;
        types[i] = pp->binary ? OID_BYTEA : 0;
        at += pp->len + 1;
    }
    return r;
}

/* Nothing is allocated before every parameter has been read, so a raise leaks nothing. */
static nv_pg_req *pack_end(lua_State *L, int nstmts, int nparams) {
    size_t total = 0;
    for (int i = 0; i < nstmts; i++) total += scratch.stmts[i].sql_len;
    for (int i = 0; i < nparams; i++) total += scratch.params[i].len;
    if (total > (size_t)NV_PG_REQUEST_BYTES_MAX)
        luaL_error(L, "pg: SQL and parameters exceed %d bytes", (int)NV_PG_REQUEST_BYTES_MAX);
    nv_pg_req *r = pack_build(nstmts, nparams);
    nv_buf_shrink(&scratch.text, 1024 * 1024);
    if (r == NULL) luaL_error(L, "pg: out of memory");
    return r;
}

nv_pg_req *nv_pg_pack_args(lua_State *L, int uv, int sql_idx) {
    int n = lua_gettop(L) - sql_idx;
    if (n > NV_PG_PARAMS_MAX) luaL_error(L, "pg: %d parameters (at most %d)", n, NV_PG_PARAMS_MAX);
    scratch.text.len = 0;
    pack_stmt *s = &scratch.stmts[0];
    stmt_sql(L, sql_idx, s);
    s->first = 0, s->nparams = n, s->typed = 0;
    pack_param *pp = params_reserve(L, (size_t)(n > 0 ? n : 1));
    for (int i = 0; i < n; i++) param_read(L, uv, sql_idx + 1 + i, &pp[i], i + 1, &s->typed);
    return pack_end(L, 1, n);
}

/* The parameter count of a statement table: its field n, else its length minus the SQL. */
static int table_nparams(lua_State *L, int t, int k) {
    lua_getfield(L, t, "n");
    int n;
    if (lua_isnil(L, -1)) {
        n = (int)lua_objlen(L, t) - 1;
    } else {
        if (!lua_isnumber(L, -1)) luaL_error(L, "pg: statement %d: n must be a number", k);
        n = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    if (n < 0 || n > NV_PG_PARAMS_MAX) luaL_error(L, "pg: statement %d: %d parameters (at most %d)", k, n, NV_PG_PARAMS_MAX);
    return n;
}

nv_pg_req *nv_pg_pack_list(lua_State *L, int uv, int list) {
    luaL_checktype(L, list, LUA_TTABLE);
    int nstmts = (int)lua_objlen(L, list);
    if (nstmts < 1 || nstmts > NV_PG_PIPELINE_STATEMENTS_MAX)
        luaL_error(L, "pg: %d statements (from 1 to %d)", nstmts, NV_PG_PIPELINE_STATEMENTS_MAX);
    scratch.text.len = 0;
    int total = 0;
    for (int k = 0; k < nstmts; k++) {
        lua_rawgeti(L, list, k + 1);
        int t = lua_gettop(L);
        if (!lua_istable(L, t)) luaL_error(L, "pg: statement %d must be a table { sql, params... }", k + 1);
        pack_stmt *s = &scratch.stmts[k];
        lua_rawgeti(L, t, 1);
        stmt_sql(L, -1, s);
        lua_pop(L, 1); /* the statement table holds the string */
        s->nparams = table_nparams(L, t, k + 1);
        s->first = total, s->typed = 0;
        if ((size_t)total + (size_t)s->nparams > (size_t)NV_PG_PARAMS_MAX * 16)
            luaL_error(L, "pg: too many parameters in one pipeline");
        pack_param *pp = params_reserve(L, (size_t)(total + s->nparams + 1));
        for (int i = 0; i < s->nparams; i++) {
            lua_rawgeti(L, t, i + 2);
            param_read(L, uv, lua_gettop(L), &pp[total + i], i + 1, &s->typed);
            lua_pop(L, 1); /* the statement table holds it (a converted value is in scratch.text) */
        }
        total += s->nparams;
        lua_pop(L, 1);
    }
    return pack_end(L, nstmts, total);
}

nv_pg_req *nv_pg_req_alloc(int nstmts, const int *nparams) {
    nv_assert(nstmts >= 1 && nstmts <= NV_PG_PIPELINE_STATEMENTS_MAX);
    int total = 0;
    for (int i = 0; i < nstmts; i++) {
        nv_assert(nparams[i] >= 0 && nparams[i] <= NV_PG_PARAMS_MAX);
        total += nparams[i];
    }
    size_t head = align8(sizeof(nv_pg_req)) + align8(nstmts * sizeof(nv_pg_stmt)) +
                  align8(nstmts * sizeof(nv_pg_out));
    size_t arrays = align8(total * sizeof(char *)) + align8(total * sizeof(int)) * 2 +
                    align8(total * sizeof(Oid));
    char *block = calloc(1, head + arrays);
    if (block == NULL) return NULL;
    nv_pg_req *r = (nv_pg_req *)block;
    char *at = block + align8(sizeof(nv_pg_req));
    r->stmts = (nv_pg_stmt *)at, at += align8(nstmts * sizeof(nv_pg_stmt));
    r->outs = (nv_pg_out *)at, at += align8(nstmts * sizeof(nv_pg_out));
    const char **values = (const char **)at;
    at += align8(total * sizeof(char *));
    int *lengths = (int *)at;
    at += align8(total * sizeof(int));
    int *formats = (int *)at;
    at += align8(total * sizeof(int));
    Oid *types = (Oid *)at;
    r->nstmts = nstmts;
    for (int i = 0, first = 0; i < nstmts; i++) {
        nv_pg_stmt *st = &r->stmts[i];
        st->nparams = nparams[i];
        st->values = values + first, st->lengths = lengths + first;
        st->formats = formats + first, st->types = types + first;
        first += nparams[i];
    }
    return r;
}

void nv_pg_req_free(nv_pg_req *r) {
    if (r == NULL) return;
    for (int i = 0; i < r->nstmts; i++) PQclear(r->outs[i].res);
    free(r);
}

/* ---- results ---- */

static const char *type_name(Oid t) {
    switch (t) {
    case OID_BOOL: return "bool";
    case OID_BYTEA: return "bytea";
    case OID_INT8: return "int8";
    case OID_INT2: return "int2";
    case OID_INT4: return "int4";
    case OID_TEXT: return "text";
    case OID_OID: return "oid";
    case OID_JSON: return "json";
    case OID_FLOAT4: return "float4";
    case OID_FLOAT8: return "float8";
    case OID_BPCHAR: return "bpchar";
    case OID_VARCHAR: return "varchar";
    case OID_DATE: return "date";
    case OID_TIMESTAMP: return "timestamp";
    case OID_TIMESTAMPTZ: return "timestamptz";
    case OID_NUMERIC: return "numeric";
    case OID_UUID: return "uuid";
    case OID_JSONB: return "jsonb";
    default: return NULL;
    }
}

/* Digits as a number when a double holds them exactly, else a json.int (at most 39 digits),
 * else the text itself. */
static void push_integer_text(lua_State *L, int uv, const char *s, size_t len) {
    size_t neg = s[0] == '-', digits = len - neg;
    if (digits <= 16) {
        uint64_t v = 0;
        for (size_t i = neg; i < len; i++) v = v * 10 + (uint64_t)(s[i] - '0');
        if (v <= EXACT_MAX) {
            lua_pushnumber(L, neg ? -(double)v : (double)v);
            return;
        }
    }
    if (digits > JSON_INT_DIGITS_MAX) {
        lua_pushlstring(L, s, len);
        return;
    }
    lua_createtable(L, 1, 0);
    lua_pushlstring(L, s, len);
    lua_rawseti(L, -2, 1);
    lua_rawgeti(L, uv, NV_PG_UV_INT_MT);
    lua_setmetatable(L, -2);
}

/* numeric: integral text (no '.', not NaN/Infinity) is an integer; the rest stays a string. */
static void push_numeric(lua_State *L, int uv, const char *s, size_t len) {
    size_t i = s[0] == '-' ? 1 : 0;
    if (i == len) goto text;
    for (; i < len; i++)
        if (s[i] < '0' || s[i] > '9') goto text;
    push_integer_text(L, uv, s, len);
    return;
text:
    lua_pushlstring(L, s, len);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* bytea in hex output ("\x0102"; bytea_output=hex is set at connect): the raw bytes. */
static void push_bytea(lua_State *L, const char *s, size_t len) {
    if (len < 2 || s[0] != '\\' || s[1] != 'x' || (len & 1)) {
        lua_pushlstring(L, s, len);
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 2; i + 1 < len; i += 2)
        luaL_addchar(&b, (char)(hexval(s[i]) << 4 | hexval(s[i + 1])));
    luaL_pushresult(&b);
}

/* "2024-01-02 03:04:05.5+00" (DateStyle ISO) -> "2024-01-02T03:04:05.5Z"; "+05:30" kept,
 * "+05" -> "+05:00". infinity and BC dates stay as Postgres writes them. */
static void push_timestamp(lua_State *L, const char *s, size_t len, int tz) {
    char out[64];
    if (len < 19 || len > 40 || s[10] != ' ' || memchr(s, 'B', len) != NULL) {
        lua_pushlstring(L, s, len);
        return;
    }
    memcpy(out, s, len);
    out[10] = 'T';
    size_t n = len;
    if (tz && n >= 3 && (out[n - 3] == '+' || out[n - 3] == '-')) {
        if (out[n - 3] == '+' && out[n - 2] == '0' && out[n - 1] == '0') {
            n -= 3;
            out[n++] = 'Z';
        } else {
            out[n++] = ':', out[n++] = '0', out[n++] = '0';
        }
    }
    lua_pushlstring(L, out, n);
}

/* One field; returns NV_ERR with an error message pushed when json cannot be decoded. */
static int push_field(lua_State *L, int uv, Oid type, const char *s, size_t len) {
    switch (type) {
    case OID_BOOL: lua_pushboolean(L, s[0] == 't'); return NV_OK;
    case OID_INT2: case OID_INT4: case OID_OID: case OID_INT8:
        push_integer_text(L, uv, s, len);
        return NV_OK;
    case OID_FLOAT4: case OID_FLOAT8: lua_pushnumber(L, strtod(s, NULL)); return NV_OK;
    case OID_NUMERIC: push_numeric(L, uv, s, len); return NV_OK;
    case OID_BYTEA: push_bytea(L, s, len); return NV_OK;
    case OID_TIMESTAMPTZ: push_timestamp(L, s, len, 1); return NV_OK;
    case OID_TIMESTAMP: push_timestamp(L, s, len, 0); return NV_OK;
    case OID_JSON: case OID_JSONB:
        lua_rawgeti(L, uv, NV_PG_UV_DECODE);
        lua_pushlstring(L, s, len);
        lua_call(L, 1, 2);
        if (lua_isnil(L, -2)) {
            lua_remove(L, -2);
            return NV_ERR;
        }
        lua_pop(L, 1);
        return NV_OK;
    default: lua_pushlstring(L, s, len); return NV_OK;
    }
}

/* Sets t[k] = v for a string v (skipped when NULL). */
static void set_str(lua_State *L, const char *k, const char *v) {
    if (v == NULL || v[0] == '\0') return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

/* Looks name up by SQLSTATE, then by its class ("23505" -> "23000"). Leaves it on the stack. */
static void push_name_of(lua_State *L, int uv, const char *code) {
    char cls[6];
    lua_rawgeti(L, uv, NV_PG_UV_NAMES);
    lua_getfield(L, -1, code);
    if (lua_isnil(L, -1) && strlen(code) == 5) {
        lua_pop(L, 1);
        memcpy(cls, code, 2);
        memcpy(cls + 2, "000", 4);
        lua_getfield(L, -1, cls);
    }
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "postgres_error");
    }
    lua_remove(L, -2);
}

/* Pushes { name, code, message, ... } with the error metatable. name NULL: from code. */
static void push_error(lua_State *L, int uv, const char *name, const char *code, const char *msg,
                       const PGresult *res) {
    lua_createtable(L, 0, 8);
    if (res != NULL) {
        code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        if (primary != NULL) msg = primary;
        set_str(L, "detail", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
        set_str(L, "hint", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
        set_str(L, "constraint", PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME));
        set_str(L, "table", PQresultErrorField(res, PG_DIAG_TABLE_NAME));
        set_str(L, "column", PQresultErrorField(res, PG_DIAG_COLUMN_NAME));
        set_str(L, "schema", PQresultErrorField(res, PG_DIAG_SCHEMA_NAME));
        set_str(L, "datatype", PQresultErrorField(res, PG_DIAG_DATATYPE_NAME));
        set_str(L, "severity", PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED));
        const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
        if (pos != NULL) lua_pushnumber(L, atof(pos)), lua_setfield(L, -2, "position");
        if (msg == NULL) msg = PQresultErrorMessage(res);
    }
    if (code != NULL && code[0] != '\0') {
        set_str(L, "code", code);
        if (name == NULL) push_name_of(L, uv, code), lua_setfield(L, -2, "name");
    }
    if (name != NULL) lua_pushstring(L, name), lua_setfield(L, -2, "name");
    lua_getfield(L, -1, "name");
    if (lua_isnil(L, -1)) lua_pushliteral(L, "postgres_error"), lua_setfield(L, -3, "name");
    lua_pop(L, 1);
    set_str(L, "message", msg != NULL ? msg : "unknown error");
    lua_rawgeti(L, uv, NV_PG_UV_ERROR_MT);
    lua_setmetatable(L, -2);
}

void nv_pg_push_pool_error(lua_State *L, int uv, nv_pg_pool *p, nv_pg_fail f) {
    char msg[NV_PG_ERROR_BYTES + 300];
    switch (f) {
    case NV_PG_FAIL_POOL_TIMEOUT:
        snprintf(msg, sizeof msg, "no free connection to %s within %lld ms (pool of %d)", p->desc,
                 (long long)p->cfg.pool_timeout_ms, p->cfg.max);
        push_error(L, uv, "pool_timeout", NULL, msg, NULL);
        return;
    case NV_PG_FAIL_QUEUE_FULL:
        snprintf(msg, sizeof msg, "%d tasks already wait for a connection to %s", p->nwait, p->desc);
        push_error(L, uv, "pool_queue_full", NULL, msg, NULL);
        return;
    default:
        snprintf(msg, sizeof msg, "cannot connect to %s: %s", p->desc, p->conn_err);
        push_error(L, uv, "connect_failed", "08001", msg, NULL);
        return;
    }
}

static int push_fail(lua_State *L, int uv, nv_pg_pool *p, nv_pg_req *r, nv_pg_fail f) {
    char msg[NV_PG_ERROR_BYTES + 100];
    lua_pushnil(L);
    switch (f) {
    case NV_PG_FAIL_LOST:
        snprintf(msg, sizeof msg, "connection lost: %s", r->fail_msg);
        push_error(L, uv, "connection_lost", r->fail_code[0] ? r->fail_code : "08006", msg, NULL);
        break;
    case NV_PG_FAIL_TIMEOUT:
        snprintf(msg, sizeof msg, "no answer from %s within %lld ms: the connection was closed", p->desc,
                 (long long)r->timeout_ms);
        push_error(L, uv, "query_timeout", NULL, msg, NULL);
        break;
    case NV_PG_FAIL_TOO_LARGE:
        snprintf(msg, sizeof msg, "result over %lld rows or %lld bytes (pool options rows_max, bytes_max)",
                 (long long)p->cfg.rows_max, (long long)p->cfg.bytes_max);
        push_error(L, uv, "result_too_large", "54000", msg, NULL);
        break;
    default:
        push_error(L, uv, "unsupported_result", "0A000", "COPY is not supported by nuvion.pg", NULL);
        break;
    }
    return 2;
}

/* columns = { names }, types = { type names }: the order of the columns, for NULLs (nil). */
static void push_columns(lua_State *L, const PGresult *res, int nf, int names) {
    char oid[16];
    lua_createtable(L, nf, 0);
    lua_createtable(L, nf, 0);
    for (int i = 0; i < nf; i++) {
        lua_pushvalue(L, names + i);
        lua_rawseti(L, -3, i + 1);
        const char *tn = type_name(PQftype(res, i));
        if (tn == NULL) snprintf(oid, sizeof oid, "%u", PQftype(res, i)), tn = oid;
        lua_pushstring(L, tn);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -3, "types");
    lua_setfield(L, -2, "columns");
}

/* Pushes rows (a table) for a successful statement, or nil, err. Returns the count pushed. */
static int push_rows(lua_State *L, int uv, nv_pg_conn *c, nv_pg_out *o) {
    const PGresult *res = o->res;
    int nf = res != NULL ? PQnfields(res) : 0;
    luaL_checkstack(L, nf + 8, "pg: too many columns");
    int names = lua_gettop(L) + 1;
    for (int i = 0; i < nf; i++) lua_pushstring(L, PQfname(res, i));
    lua_createtable(L, (int)o->nrows, 4);
    int rows = lua_gettop(L);
    const char *at = c->rows.data + o->rows_off;
    for (uint32_t r = 0; r < o->nrows; r++) {
        lua_createtable(L, 0, o->nfields);
        for (int f = 0; f < o->nfields; f++) {
            int32_t len;
            memcpy(&len, at, 4);
            at += 4;
            if (len < 0) continue; /* NULL: the field is absent (nil) */
            if (f < nf) lua_pushvalue(L, names + f);
            else lua_pushfstring(L, "?column%d?", f + 1);
            if (push_field(L, uv, f < nf ? PQftype(res, f) : 0, at, (size_t)len) != NV_OK) {
                char msg[300];
                snprintf(msg, sizeof msg, "column %s: %s", f < nf ? PQfname(res, f) : "?", lua_tostring(L, -1));
                lua_settop(L, names - 1);
                lua_pushnil(L);
                push_error(L, uv, "bad_result", NULL, msg, NULL);
                return 2;
            }
            lua_rawset(L, -3);
            at += len + 1;
        }
        lua_rawseti(L, rows, (int)r + 1);
    }
    const char *tuples = res != NULL ? PQcmdTuples((PGresult *)res) : "";
    lua_pushnumber(L, tuples[0] ? atof(tuples) : 0);
    lua_setfield(L, rows, "affected");
    const char *tag = res != NULL ? PQcmdStatus((PGresult *)res) : "";
    size_t tag_len = strcspn(tag, " ");
    lua_pushlstring(L, tag, tag_len);
    lua_setfield(L, rows, "command");
    push_columns(L, res, nf, names);
    if (rows != names) { /* move rows down over the column names */
        lua_replace(L, names);
        lua_settop(L, names);
    }
    return 1;
}

/* One statement's outcome: rows, or nil and its error. */
static int push_out(lua_State *L, int uv, nv_pg_pool *p, nv_pg_conn *c, nv_pg_req *r, nv_pg_out *o) {
    if (o->fail != NV_PG_FAIL_NONE) return push_fail(L, uv, p, r, o->fail);
    ExecStatusType st = o->res != NULL ? PQresultStatus(o->res) : PGRES_FATAL_ERROR;
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
    case PGRES_SINGLE_TUPLE:
        return push_rows(L, uv, c, o);
    case PGRES_PIPELINE_ABORTED:
        lua_pushnil(L);
        push_error(L, uv, "pipeline_aborted", NULL, "not run: an earlier statement of the pipeline failed", NULL);
        return 2;
    default:
        lua_pushnil(L);
        if (o->res == NULL) push_error(L, uv, "connection_lost", "08006", "no result", NULL);
        else push_error(L, uv, NULL, NULL, NULL, o->res);
        return 2;
    }
}

int nv_pg_push_outcome(lua_State *L, int uv, nv_pg_pool *p, nv_pg_conn *c, nv_pg_req *r) {
    if (r->fail != NV_PG_FAIL_NONE) return push_fail(L, uv, p, r, r->fail);
    if (!(r->flags & NV_PG_REQ_PIPELINE)) return push_out(L, uv, p, c, r, &r->outs[0]);
    lua_createtable(L, r->nstmts, 0);
    int list = lua_gettop(L);
    lua_pushnil(L); /* the first error */
    for (int i = 0; i < r->nstmts; i++) {
        int n = push_out(L, uv, p, c, r, &r->outs[i]);
        if (n == 2) {
            lua_pushnumber(L, i + 1);
            lua_setfield(L, -2, "index");
            lua_remove(L, -2); /* the nil */
            if (lua_isnil(L, list + 1)) lua_pushvalue(L, -1), lua_replace(L, list + 1);
        }
        lua_rawseti(L, list, i + 1);
    }
    return 2;
}
