/* json.c -- nuvion.json: decode with yajl callbacks, encode into a reused buffer, integers exact. */
#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <yajl/yajl_parse.h>

#include "nv_limits.h"
#include "nv.h"

/* Bounds of this module that no operator tunes (those are in limits.h). */
#define NV_JSON_INT_DIGITS_MAX 39         /* 128-bit money, numeric(38,0), fits in 39 digits */
#define NV_JSON_EXACT_MAX 9007199254740992ULL /* 2^53: above it a double loses integers */
#define NV_JSON_ENC_KEEP_BYTES (1024 * 1024) /* encode buffer kept between calls; a bigger one is freed */
#define NV_JSON_ENC_BYTES_MAX (1024L * 1024 * 1024) /* encode output; LuaJIT strings stop below 2 GB */
#define NV_JSON_BYTES_OPT_MAX (1024L * 1024 * 1024) /* opts.bytes ceiling: yajl 2.1 sizes in unsigned int */
#define NV_JSON_ERR_BYTES 320             /* an error text, the JSONPath cut to fit */
#define NV_JSON_PATH_BYTES_MAX 200        /* JSONPath kept in an error text before "..." */
#define NV_JSON_NUM_STACK_BYTES 64        /* shorter number literals convert without malloc */
#define NV_JSON_ECHO_BYTES_MAX 40         /* bad json.int input quoted in the error */
#define NV_JSON_LUA_TCDATA 10             /* lua_type() of LuaJIT cdata; lua.h has no name for it */
#define NV_JSON_BATCH_MAX 32              /* members decode stacks before it makes their table */
#define NV_JSON_BATCH_STACK_MAX 2048      /* stack slots in use past which containers skip batching */

/* Decode's stack use: batching stops at NV_JSON_BATCH_STACK_MAX slots, a
 * last batch adds a key and a value per member, and every level past it
 * holds its table and a pending key. All must fit in the slots LuaJIT lets a
 * C function use. */
_Static_assert(NV_JSON_BATCH_STACK_MAX + 2 * NV_JSON_BATCH_MAX + 2 * NV_JSON_DEPTH_MAX + 16 < LUAI_MAXCSTACK,
               "JSON depth exceeds the Lua C stack");
_Static_assert(NV_JSON_DEPTH_DEFAULT <= NV_JSON_DEPTH_MAX, "default depth above the maximum");
_Static_assert(NV_JSON_BYTES_DEFAULT <= NV_JSON_BYTES_OPT_MAX, "default size above the maximum");

/* Upvalues shared by the module's functions: all the state of one lua_State. */
enum {
    UV_STATE = 1, /* nv_json_state userdata: encode buffer and scratch */
    UV_ARRAY_MT,  /* json.array_mt */
    UV_OBJECT_MT, /* json.object_mt */
    UV_INT_MT,    /* json.int_mt */
    UV_CDATA,     /* Lua helper: tostring of an int64_t/uint64_t cdata, else nil */
    UV_BODY       /* decode and encode only: their protected body */
};
#define NV_JSON_UV_SHARED UV_CDATA

typedef struct nv_json_key {
    const char *s; /* a key string of the table being encoded (kept alive by it) */
    size_t len;
} nv_json_key;

typedef struct nv_json_state {
    char *buf; /* encode output, reused so the hot path does not allocate */
    size_t len;
    size_t cap;
    nv_json_key *keys; /* sort_keys scratch: one segment per open object */
    size_t keys_len;
    size_t keys_cap;
    int busy; /* an encode runs on this state; a re-entrant one (from a __gc) takes its own */
} nv_json_state;

/* One step of a JSONPath, kept per open container so an error can name it. */
typedef struct nv_json_step {
    const char *key; /* object member name, NULL for an array element */
    size_t n;        /* key length, or the element's 0-based index */
} nv_json_step;

typedef struct nv_json_enc {
    lua_State *L;
    nv_json_state *st;
    const void *array_mt;
    const void *object_mt;
    const void *int_mt;
    int cdata_fn; /* stack slot of the cdata helper */
    int depth;    /* containers open */
    int depth_max;
    int sort_keys;
    char err[NV_JSON_ERR_BYTES];
    nv_json_step path[NV_JSON_DEPTH_MAX + 1];
} nv_json_enc;

typedef struct nv_json_dec {
    lua_State *L;
    yajl_handle h;
    const unsigned char *text;
    size_t text_len;
    int depth; /* containers open */
    int depth_max;
    int array_mt;  /* stack slots of the metatables while the body runs */
    int int_mt;
    int finishing; /* in yajl_complete_parse, whose offsets restart at 0 */
    int limit;     /* our error is a limit ("JSON ... at byte N"), not a syntax error */
    size_t err_at; /* 1-based offset of our error when we know it better than yajl */
    const char *err; /* our reason when a callback stopped yajl, else NULL */
    char err_buf[96];
    char *num_buf; /* scratch for number literals too long for the stack */
    size_t num_cap;
    /* Per open container. A container starts as a batch: its members wait
     * on the stack above base, so that its table is made at the right size
     * (growing a table rehashes it: 18% of decode time in bench/json). */
    int base[NV_JSON_DEPTH_MAX + 1];       /* stack top when it opened */
    uint32_t count[NV_JSON_DEPTH_MAX + 1]; /* members so far */
    unsigned char is_array[NV_JSON_DEPTH_MAX + 1];
    unsigned char made[NV_JSON_DEPTH_MAX + 1]; /* its table exists, at base + 1 */
} nv_json_dec;

/* ---- UTF-8 and integer text ------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlong form, no
 * surrogate, nothing above U+10FFFF), or 0. yajl only checks the shape of
 * a sequence, so decode runs this too and both directions agree. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2 || c > 0xF4) return 0;
    if (c < 0xE0) return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && s[1] > 0x9F) return 0; /* UTF-16 surrogate */
        return 3;
    }
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
        return 0;
    if (c == 0xF0 && s[1] < 0x90) return 0; /* overlong */
    if (c == 0xF4 && s[1] > 0x8F) return 0; /* above U+10FFFF */
    return 4;
}

static size_t utf8_invalid_from(const unsigned char *s, size_t n, size_t i)
{
    while (i < n) {
        size_t m = utf8_seq_len(s + i, n - i);
        if (m == 0) return i;
        i += m;
    }
    return n;
}

/* Index of the first byte of an invalid sequence, or n when s is valid.
 * Inline: most strings are short and ASCII, settled in a word or two. */
static inline size_t utf8_invalid_at(const unsigned char *s, size_t n)
{
    size_t i = 0;
    uint64_t w;
    for (; n - i >= 8; i += 8) {
        memcpy(&w, s + i, 8);
        if ((w & 0x8080808080808080ULL) != 0) return utf8_invalid_from(s, n, i);
    }
    for (; i < n; i++)
        if (s[i] >= 0x80) return utf8_invalid_from(s, n, i);
    return n;
}

/* Is s the text of a json.int: an optional '-', then "0" or a non-zero digit
 * and more digits, at most NV_JSON_INT_DIGITS_MAX of them; "-0" is refused so
 * that equal values have equal digits. */
static int int_text_ok(const char *s, size_t n)
{
    size_t i = (n > 0 && s[0] == '-') ? 1 : 0;
    size_t digits = n - i;
    if (digits == 0 || digits > NV_JSON_INT_DIGITS_MAX) return 0;
    if (s[i] == '0' && (digits > 1 || i == 1)) return 0;
    for (; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

/* Writes v in decimal at out (room for 21 bytes); returns the length. */
static size_t fmt_ll(char *out, long long v)
{
    char tmp[24];
    size_t n = 0, len = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0) out[len++] = '-';
    while (n > 0) out[len++] = tmp[--n];
    return len;
}

/* Writes an integral d as exact digits at out (room for 48 bytes); returns
 * the length, or 0 when d is not integral or needs more than 39 digits. */
static size_t fmt_integral(char *out, double d)
{
    int n;
    if (!isfinite(d) || d != floor(d)) return 0;
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0) return fmt_ll(out, (long long)d);
    if (fabs(d) >= 1e39) return 0;
    n = snprintf(out, 48, "%.0f", d);
    return n > 0 && n < 48 ? (size_t)n : 0;
}

/* ---- the state userdata ---------------------------------------------- */

static int state_gc(lua_State *L)
{
    nv_json_state *st = lua_touserdata(L, 1);
    free(st->buf);
    free(st->keys);
    memset(st, 0, sizeof *st);
    return 0;
}

/* After a call: a buffer that grew for one huge document is not kept. */
static void state_trim(nv_json_state *st)
{
    if (st->cap > NV_JSON_ENC_KEEP_BYTES) {
        free(st->buf);
        st->buf = NULL;
        st->cap = 0;
    }
    if (st->keys_cap * sizeof(nv_json_key) > NV_JSON_ENC_KEEP_BYTES) {
        free(st->keys);
        st->keys = NULL;
        st->keys_cap = 0;
    }
    st->len = 0;
    st->keys_len = 0;
    st->busy = 0;
}

/* ---- encode: errors and the buffer ----------------------------------- */

typedef struct nv_json_text {
    char *p;
    size_t len;
    size_t cap; /* includes the NUL */
} nv_json_text;

static void text_put(nv_json_text *t, const char *s, size_t n)
{
    size_t room = t->cap - 1 - t->len;
    if (n > room) n = room;
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static int key_is_name(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || (s[0] >= '0' && s[0] <= '9')) return 0;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return 1;
}

/* Appends one step of a JSONPath: .name, ["other key"] or [index]. Bytes
 * that would garble a log line are escaped; so is any byte of a key that is
 * not valid UTF-8 (the error may be about that very key). */
static void path_step(nv_json_text *t, const nv_json_step *st)
{
    char tmp[32];
    size_t i;
    int raw_utf8;
    if (st->key == NULL) {
        text_put(t, tmp, (size_t)snprintf(tmp, sizeof tmp, "[%zu]", st->n));
        return;
    }
    if (key_is_name(st->key, st->n)) {
        text_put(t, ".", 1);
        text_put(t, st->key, st->n);
        return;
    }
    raw_utf8 = utf8_invalid_at((const unsigned char *)st->key, st->n) == st->n;
    text_put(t, "[\"", 2);
    for (i = 0; i < st->n && t->len + 1 < t->cap; i++) {
        unsigned char c = (unsigned char)st->key[i];
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            text_put(t, tmp, 2);
        } else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !raw_utf8)) {
            text_put(t, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", c));
        } else {
            text_put(t, (const char *)&c, 1);
        }
    }
    text_put(t, "\"]", 2);
}

/* Records "<reason> at <JSONPath of the first `steps` steps>"; returns NV_ERR. */
static int enc_fail(nv_json_enc *e, int steps, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int enc_fail(nv_json_enc *e, int steps, const char *fmt, ...)
{
    nv_json_text t = {e->err, 0, NV_JSON_PATH_BYTES_MAX};
    va_list ap;
    int n, i;
    va_start(ap, fmt);
    n = vsnprintf(e->err, sizeof e->err - NV_JSON_PATH_BYTES_MAX - 8, fmt, ap);
    va_end(ap);
    nv_assert(n > 0 && (size_t)n < sizeof e->err - NV_JSON_PATH_BYTES_MAX - 8);
    t.len = (size_t)n;
    t.cap = t.len + NV_JSON_PATH_BYTES_MAX;
    text_put(&t, " at $", 5);
    for (i = 1; i <= steps && t.len + 1 < t.cap; i++) path_step(&t, &e->path[i]);
    if (t.len + 1 >= t.cap) {
        t.cap += 4;
        text_put(&t, "...", 3);
    }
    return NV_ERR;
}

static int enc_grow(nv_json_enc *e, size_t need)
{
    nv_json_state *st = e->st;
    size_t cap = st->cap ? st->cap : 4096;
    char *p;
    if (need > (size_t)NV_JSON_ENC_BYTES_MAX - st->len)
        return enc_fail(e, e->depth, "encoded JSON exceeds %ld bytes", NV_JSON_ENC_BYTES_MAX);
    while (cap - st->len < need) cap *= 2;
    p = realloc(st->buf, cap);
    if (p == NULL) return enc_fail(e, e->depth, "out of memory (%zu bytes)", cap);
    st->buf = p;
    st->cap = cap;
    return NV_OK;
}

static inline int enc_reserve(nv_json_enc *e, size_t need)
{
    if (e->st->cap - e->st->len >= need) return NV_OK;
    return enc_grow(e, need);
}

static inline int enc_put(nv_json_enc *e, const char *s, size_t n)
{
    if (enc_reserve(e, n) != NV_OK) return NV_ERR;
    memcpy(e->st->buf + e->st->len, s, n);
    e->st->len += n;
    return NV_OK;
}

static inline int enc_putc(nv_json_enc *e, char c)
{
    if (enc_reserve(e, 1) != NV_OK) return NV_ERR;
    e->st->buf[e->st->len++] = c;
    return NV_OK;
}

/* ---- encode: scalars ------------------------------------------------- */

/* 0: copy as is; 1: escape; 2: start of a multi-byte UTF-8 sequence. */
static const unsigned char nv_json_str_class[256] = {
    [0x00 ... 0x1f] = 1, ['"'] = 1, ['\\'] = 1, [0x80 ... 0xff] = 2,
};

static size_t put_escape(char *out, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    out[0] = '\\';
    switch (c) {
    case '"': out[1] = '"'; return 2;
    case '\\': out[1] = '\\'; return 2;
    case '\n': out[1] = 'n'; return 2;
    case '\r': out[1] = 'r'; return 2;
    case '\t': out[1] = 't'; return 2;
    case '\b': out[1] = 'b'; return 2;
    case '\f': out[1] = 'f'; return 2;
    default: break;
    }
    memcpy(out + 1, "u00", 3);
    out[4] = hex[c >> 4];
    out[5] = hex[c & 0xf];
    return 6;
}

/* Copies runs of plain bytes in one memcpy; only escapes re-check room. */
static int enc_string(nv_json_enc *e, const unsigned char *s, size_t n, const char *what)
{
    nv_json_state *st = e->st;
    size_t i = 0, run = 0;
    if (enc_reserve(e, n + 2) != NV_OK) return NV_ERR;
    st->buf[st->len++] = '"';
    while (i < n) {
        unsigned char cls = nv_json_str_class[s[i]];
        if (cls == 0) {
            i++;
        } else if (cls == 2) {
            size_t m = utf8_seq_len(s + i, n - i);
            if (m == 0) return enc_fail(e, e->depth, "invalid UTF-8 in %s", what);
            i += m;
        } else {
            memcpy(st->buf + st->len, s + run, i - run);
            st->len += i - run;
            if (enc_reserve(e, 6 + (n - i)) != NV_OK) return NV_ERR;
            st->len += put_escape(st->buf + st->len, s[i]);
            run = ++i;
        }
    }
    memcpy(st->buf + st->len, s + run, n - run);
    st->len += n - run;
    st->buf[st->len++] = '"';
    return NV_OK;
}

/* Integral numbers print as integers (never 1e+20, never 1.0) so amounts in
 * minor units stay readable and exact; others take the first of %.14g to
 * %.17g that reads back to the same double (most stop at %.14g). */
static int enc_number(nv_json_enc *e, double d)
{
    char *out;
    size_t n;
    if (isnan(d)) return enc_fail(e, e->depth, "cannot encode NaN");
    if (isinf(d)) return enc_fail(e, e->depth, "cannot encode %s", d > 0 ? "inf" : "-inf");
    if (enc_reserve(e, 48) != NV_OK) return NV_ERR;
    out = e->st->buf + e->st->len;
    n = fmt_integral(out, d);
    if (n == 0) {
        int k = 0, prec;
        for (prec = 14; prec <= 17; prec++) {
            k = snprintf(out, 48, "%.*g", prec, d);
            if (prec == 17 || strtod(out, NULL) == d) break;
        }
        nv_assert(k > 0 && k < 48);
        n = (size_t)k;
    }
    e->st->len += n;
    return NV_OK;
}

static int enc_json_int(nv_json_enc *e, int idx)
{
    lua_State *L = e->L;
    const char *s = NULL;
    size_t n = 0;
    int rc;
    lua_rawgeti(L, idx, 1);
    if (lua_type(L, -1) == LUA_TSTRING) s = lua_tolstring(L, -1, &n);
    if (s == NULL || !int_text_ok(s, n))
        rc = enc_fail(e, e->depth, "invalid json.int");
    else
        rc = enc_put(e, s, n);
    lua_pop(L, 1);
    return rc;
}

/* int64_t/uint64_t cdata print as integers: tostring gives "-5LL", "5ULL". */
static int enc_cdata(nv_json_enc *e, int idx)
{
    lua_State *L = e->L;
    const char *s;
    size_t n = 0;
    int rc;
    lua_pushvalue(L, e->cdata_fn);
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (s != NULL && n > 3 && memcmp(s + n - 3, "ULL", 3) == 0)
        n -= 3;
    else if (s != NULL && n > 2 && memcmp(s + n - 2, "LL", 2) == 0)
        n -= 2;
    else
        s = NULL;
    if (s == NULL || !int_text_ok(s, n))
        rc = enc_fail(e, e->depth, "cannot encode cdata");
    else
        rc = enc_put(e, s, n);
    lua_pop(L, 1);
    return rc;
}

/* ---- encode: tables -------------------------------------------------- */

static int enc_value(nv_json_enc *e, int idx);

/* Elements 1..n; a nil among them is a hole, refused. */
static int enc_array(nv_json_enc *e, int idx, size_t n)
{
    lua_State *L = e->L;
    size_t i;
    if (enc_putc(e, '[') != NV_OK) return NV_ERR;
    for (i = 1; i <= n; i++) {
        int rc;
        e->path[e->depth].key = NULL;
        e->path[e->depth].n = i - 1;
        if (i > 1 && enc_putc(e, ',') != NV_OK) return NV_ERR;
        lua_rawgeti(L, idx, (int)i);
        if (lua_isnil(L, -1)) return enc_fail(e, e->depth, "cannot encode nil (a hole in an array)");
        rc = enc_value(e, lua_gettop(L));
        lua_pop(L, 1);
        if (rc != NV_OK) return rc;
    }
    return enc_putc(e, ']');
}

/* One member: "key":value, the value on top of the stack, its key below. */
static int enc_member(nv_json_enc *e, const char *k, size_t kn, int first)
{
    e->path[e->depth].key = k;
    e->path[e->depth].n = kn;
    if (!first && enc_putc(e, ',') != NV_OK) return NV_ERR;
    if (enc_string(e, (const unsigned char *)k, kn, "object key") != NV_OK) return NV_ERR;
    if (enc_putc(e, ':') != NV_OK) return NV_ERR;
    return enc_value(e, lua_gettop(e->L));
}

static int enc_key_fail(nv_json_enc *e, int plain, int key_type)
{
    if (plain && (key_type == LUA_TSTRING || key_type == LUA_TNUMBER))
        return enc_fail(e, e->depth - 1, "cannot encode table with mixed keys");
    if (plain)
        return enc_fail(e, e->depth - 1, "cannot encode table key of type %s", lua_typename(e->L, key_type));
    return enc_fail(e, e->depth - 1, "cannot encode object key of type %s",
                    lua_typename(e->L, key_type));
}

static int key_cmp(const void *a, const void *b)
{
    const nv_json_key *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c != 0) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

static int keys_push(nv_json_enc *e, const char *s, size_t len)
{
    nv_json_state *st = e->st;
    if (st->keys_len == st->keys_cap) {
        size_t cap = st->keys_cap ? st->keys_cap * 2 : 64;
        nv_json_key *k = realloc(st->keys, cap * sizeof *k);
        if (k == NULL) return enc_fail(e, e->depth - 1, "out of memory (%zu keys)", cap);
        st->keys = k;
        st->keys_cap = cap;
    }
    st->keys[st->keys_len].s = s;
    st->keys[st->keys_len].len = len;
    st->keys_len++;
    return NV_OK;
}

/* sort_keys: members in byte order of their keys, for canonical text
 * (signatures, idempotency hashes, round-trip tests). Costs a sort. */
static int enc_object_sorted(nv_json_enc *e, int idx, int plain)
{
    lua_State *L = e->L;
    size_t base = e->st->keys_len, i, n;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t kn;
        const char *k;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) return enc_key_fail(e, plain, lua_type(L, -1));
        k = lua_tolstring(L, -1, &kn);
        if (keys_push(e, k, kn) != NV_OK) return NV_ERR;
    }
    n = e->st->keys_len - base;
    qsort(e->st->keys + base, n, sizeof(nv_json_key), key_cmp);
    if (enc_putc(e, '{') != NV_OK) return NV_ERR;
    for (i = 0; i < n; i++) {
        nv_json_key k = e->st->keys[base + i];
        int rc;
        lua_pushlstring(L, k.s, k.len);
        lua_rawget(L, idx);
        rc = enc_member(e, k.s, k.len, i == 0);
        lua_pop(L, 1);
        if (rc != NV_OK) return rc;
    }
    e->st->keys_len = base;
    return enc_putc(e, '}');
}

/* Members in lua_next order; every key must be a string. */
static int enc_object(nv_json_enc *e, int idx, int plain)
{
    lua_State *L = e->L;
    int first = 1;
    if (e->sort_keys) return enc_object_sorted(e, idx, plain);
    if (enc_putc(e, '{') != NV_OK) return NV_ERR;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        size_t kn;
        const char *k;
        int rc;
        if (lua_type(L, -2) != LUA_TSTRING) return enc_key_fail(e, plain, lua_type(L, -2));
        k = lua_tolstring(L, -2, &kn);
        rc = enc_member(e, k, kn, first);
        lua_pop(L, 1);
        if (rc != NV_OK) return rc;
        first = 0;
    }
    return enc_putc(e, '}');
}

/* A plain table is an array when its keys are exactly 1..n: counted in one
 * pass, as a hole or an extra key would otherwise go unnoticed. */
static int plain_array_len(nv_json_enc *e, int idx, size_t *n_out)
{
    lua_State *L = e->L;
    size_t count = 0;
    double max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        double k;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER) return enc_key_fail(e, 1, lua_type(L, -1));
        k = lua_tonumber(L, -1);
        if (k < 1 || k != floor(k) || k > (double)INT32_MAX)
            return enc_fail(e, e->depth - 1, "cannot encode sparse array");
        if (k > max) max = k;
        count++;
    }
    if ((double)count != max) return enc_fail(e, e->depth - 1, "cannot encode sparse array");
    *n_out = count;
    return NV_OK;
}

/* json.array_mt: keys 1..n checked all the same, as #t alone would drop
 * what follows a hole ({1, nil, 3} may have #t == 1). */
static int enc_marked_array(nv_json_enc *e, int idx)
{
    size_t n = 0;
    if (plain_array_len(e, idx, &n) != NV_OK) return NV_ERR;
    return enc_array(e, idx, n);
}

/* A table without json.array_mt or json.object_mt: its first key decides. */
static int enc_plain(nv_json_enc *e, int idx)
{
    lua_State *L = e->L;
    int kt;
    size_t n = 0;
    lua_pushnil(L);
    if (lua_next(L, idx) == 0) return enc_put(e, "{}", 2);
    kt = lua_type(L, -2);
    lua_pop(L, 2);
    if (kt == LUA_TSTRING) return enc_object(e, idx, 1);
    if (kt != LUA_TNUMBER) return enc_key_fail(e, 1, kt);
    if (plain_array_len(e, idx, &n) != NV_OK) return NV_ERR;
    return enc_array(e, idx, n);
}

static int enc_table(nv_json_enc *e, int idx)
{
    lua_State *L = e->L;
    const void *mt = NULL;
    int rc;
    if (lua_getmetatable(L, idx)) {
        mt = lua_topointer(L, -1);
        lua_pop(L, 1);
    }
    if (mt != NULL && mt == e->int_mt) return enc_json_int(e, idx);
    if (e->depth >= e->depth_max) return enc_fail(e, e->depth, "nested deeper than %d levels", e->depth_max);
    if (!lua_checkstack(L, 4)) return enc_fail(e, e->depth, "out of Lua stack");
    e->depth++;
    if (mt != NULL && mt == e->array_mt)
        rc = enc_marked_array(e, idx);
    else if (mt != NULL && mt == e->object_mt)
        rc = enc_object(e, idx, 0);
    else
        rc = enc_plain(e, idx);
    e->depth--;
    return rc;
}

static int enc_value(nv_json_enc *e, int idx)
{
    lua_State *L = e->L;
    size_t n;
    const char *s;
    int t = lua_type(L, idx);
    switch (t) {
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &n);
        return enc_string(e, (const unsigned char *)s, n, "string");
    case LUA_TNUMBER:
        return enc_number(e, lua_tonumber(L, idx));
    case LUA_TTABLE:
        return enc_table(e, idx);
    case LUA_TBOOLEAN:
        return lua_toboolean(L, idx) ? enc_put(e, "true", 4) : enc_put(e, "false", 5);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) return enc_put(e, "null", 4);
        break;
    case NV_JSON_LUA_TCDATA:
        return enc_cdata(e, idx);
    default:
        break;
    }
    return enc_fail(e, e->depth, "cannot encode %s", lua_typename(L, t));
}

/* Runs under lua_pcall: 1 = the value, 2 = the nv_json_enc. A Lua error
 * (out of memory) unwinds to json_encode, which still resets the state. */
static int json_encode_body(lua_State *L)
{
    nv_json_enc *e = lua_touserdata(L, 2);
    e->L = L;
    e->array_mt = lua_topointer(L, lua_upvalueindex(UV_ARRAY_MT));
    e->object_mt = lua_topointer(L, lua_upvalueindex(UV_OBJECT_MT));
    e->int_mt = lua_topointer(L, lua_upvalueindex(UV_INT_MT));
    lua_pushvalue(L, lua_upvalueindex(UV_CDATA));
    e->cdata_fn = lua_gettop(L);
    if (enc_value(e, 1) != NV_OK) {
        lua_pushnil(L);
        lua_pushstring(L, e->err);
        return 2;
    }
    nv_assert(e->depth == 0);
    lua_pushlstring(L, e->st->buf, e->st->len);
    return 1;
}

/* ---- options --------------------------------------------------------- */

/* A caller's bug (a bad option) raises, naming the key and its range. */
static long opt_long(lua_State *L, const char *key, long lo, long hi, long def)
{
    double v;
    if (lua_isnoneornil(L, 2)) return def;
    lua_getfield(L, 2, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    v = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || v != floor(v) || v < (double)lo || v > (double)hi)
        return luaL_error(L, "opts.%s must be an integer from %d to %d", key, (int)lo, (int)hi);
    lua_pop(L, 1);
    return (long)v;
}

static void opt_check(lua_State *L)
{
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
}

/* ---- encode entry ---------------------------------------------------- */

/* json.encode(v [, opts]) -> string | nil, err. opts: depth, sort_keys. */
static int json_encode(lua_State *L)
{
    nv_json_enc e;
    nv_json_state *st = lua_touserdata(L, lua_upvalueindex(UV_STATE));
    int base, status;
    opt_check(L);
    e.depth_max = (int)opt_long(L, "depth", 1, NV_JSON_DEPTH_MAX, NV_JSON_DEPTH_DEFAULT);
    e.sort_keys = 0;
    if (!lua_isnoneornil(L, 2)) {
        lua_getfield(L, 2, "sort_keys");
        e.sort_keys = lua_toboolean(L, -1);
    }
    lua_settop(L, 1);
    if (st->busy) { /* re-entered from a finalizer: use a fresh state */
        st = lua_newuserdata(L, sizeof *st);
        memset(st, 0, sizeof *st);
        lua_getmetatable(L, lua_upvalueindex(UV_STATE));
        lua_setmetatable(L, -2);
    }
    e.st = st;
    e.depth = 0;
    st->busy = 1;
    base = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(UV_BODY));
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, &e);
    status = lua_pcall(L, 2, LUA_MULTRET, 0);
    state_trim(st);
    if (status != 0) return lua_error(L);
    return lua_gettop(L) - base;
}

/* ---- decode: callbacks ----------------------------------------------- */

/* Stops yajl with our own reason; the offset is added once yajl returns. */
static int dec_fail(nv_json_dec *d, int limit, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int dec_fail(nv_json_dec *d, int limit, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err_buf, sizeof d->err_buf, fmt, ap);
    va_end(ap);
    d->err = d->err_buf;
    d->limit = limit;
    return 0;
}

/* Makes the table of the batch at `depth` from the members on the stack
 * above its base (values, or key and value pairs), room for `extra` more;
 * leaves it at base + 1, on top. */
static void dec_make(nv_json_dec *d, int depth, int extra)
{
    lua_State *L = d->L;
    int base = d->base[depth], n = lua_gettop(L) - base, i;
    d->made[depth] = 1;
    if (d->is_array[depth]) { /* under its values, then each popped into place */
        lua_createtable(L, n + extra, 0);
        lua_insert(L, base + 1);
        for (i = n; i >= 1; i--) lua_rawseti(L, base + 1, i);
        return;
    }
    lua_createtable(L, 0, n / 2 + extra);
    for (i = 1; i < n; i += 2) { /* in document order: the last duplicate key wins */
        lua_pushvalue(L, base + i);
        lua_pushvalue(L, base + i + 1);
        lua_rawset(L, -3);
    }
    if (n > 0) {
        lua_replace(L, base + 1);
        lua_settop(L, base + 1);
    }
}

/* Stores the value on top of the stack into the open container. */
static inline int dec_put(nv_json_dec *d)
{
    int depth = d->depth;
    if (depth == 0) return 1; /* the document itself: stays on the stack */
    if (!d->made[depth]) {
        if (++d->count[depth] == NV_JSON_BATCH_MAX) dec_make(d, depth, NV_JSON_BATCH_MAX);
    } else if (d->is_array[depth]) {
        lua_rawseti(d->L, -2, (int)++d->count[depth]);
    } else {
        lua_rawset(d->L, -3);
    }
    return 1;
}

static int dec_null(void *ctx)
{
    nv_json_dec *d = ctx;
    lua_pushlightuserdata(d->L, NULL);
    return dec_put(d);
}

static int dec_boolean(void *ctx, int v)
{
    nv_json_dec *d = ctx;
    lua_pushboolean(d->L, v);
    return dec_put(d);
}

/* An integer literal: a number when a double holds it exactly, else a
 * json.int carrying the digits. */
static int dec_integer(nv_json_dec *d, const char *s, size_t n)
{
    lua_State *L = d->L;
    size_t neg = s[0] == '-', digits = n - neg, i;
    if (digits <= 16) {
        uint64_t v = 0;
        for (i = neg; i < n; i++) v = v * 10 + (uint64_t)(s[i] - '0');
        if (v <= NV_JSON_EXACT_MAX) {
            lua_pushnumber(L, neg ? -(double)v : (double)v);
            return dec_put(d);
        }
    }
    if (digits > NV_JSON_INT_DIGITS_MAX)
        return dec_fail(d, 1, "integer of %zu digits exceeds %d digits", digits, NV_JSON_INT_DIGITS_MAX);
    lua_createtable(L, 1, 0);
    lua_pushlstring(L, s, n);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, d->int_mt);
    lua_setmetatable(L, -2);
    return dec_put(d);
}

static int dec_double(nv_json_dec *d, const char *s, size_t n)
{
    char stack_buf[NV_JSON_NUM_STACK_BYTES];
    char *buf = stack_buf;
    double v;
    if (n >= sizeof stack_buf) {
        if (n >= d->num_cap) {
            char *p = realloc(d->num_buf, n + 1);
            if (p == NULL) return dec_fail(d, 1, "out of memory (number of %zu bytes)", n);
            d->num_buf = p;
            d->num_cap = n + 1;
        }
        buf = d->num_buf;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    v = strtod(buf, NULL);
    if (isinf(v)) return dec_fail(d, 1, "number out of range");
    lua_pushnumber(d->L, v);
    return dec_put(d);
}

/* yajl hands over the literal as written (the lexer checked its grammar). */
static int dec_number(void *ctx, const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '.' || s[i] == 'e' || s[i] == 'E') return dec_double(ctx, s, n);
    return dec_integer(ctx, s, n);
}

/* yajl checked the shape of UTF-8; this refuses overlong forms, surrogates
 * (also those made by a lone \udc00 escape) and code points past U+10FFFF. */
static int dec_utf8_ok(nv_json_dec *d, const unsigned char *s, size_t n)
{
    size_t bad = utf8_invalid_at(s, n);
    uintptr_t p = (uintptr_t)s, text = (uintptr_t)d->text;
    if (bad == n) return 1;
    if (p >= text && p < text + d->text_len) d->err_at = (size_t)(p - text) + bad + 1;
    return dec_fail(d, 0, "invalid UTF-8 in string");
}

static int dec_string(void *ctx, const unsigned char *s, size_t n)
{
    nv_json_dec *d = ctx;
    if (!dec_utf8_ok(d, s, n)) return 0;
    lua_pushlstring(d->L, (const char *)s, n);
    return dec_put(d);
}

static int dec_key(void *ctx, const unsigned char *s, size_t n)
{
    nv_json_dec *d = ctx;
    if (!dec_utf8_ok(d, s, n)) return 0;
    lua_pushlstring(d->L, (const char *)s, n);
    return 1;
}

/* The depth limit is enforced here, before yajl pushes the level: a
 * 100,000-deep document stops at level depth_max + 1, in constant memory. */
static int dec_open(nv_json_dec *d, int is_array)
{
    lua_State *L = d->L;
    int depth = d->depth + 1, top = lua_gettop(L);
    if (depth > d->depth_max) return dec_fail(d, 1, "nested deeper than %d levels", d->depth_max);
    if (!lua_checkstack(L, 2 * NV_JSON_BATCH_MAX + 4)) return dec_fail(d, 1, "out of Lua stack");
    d->depth = depth;
    d->base[depth] = top;
    d->count[depth] = 0;
    d->is_array[depth] = (unsigned char)is_array;
    d->made[depth] = 0;
    if (top - d->int_mt > NV_JSON_BATCH_STACK_MAX) dec_make(d, depth, 0);
    return 1;
}

static int dec_start_map(void *ctx)
{
    return dec_open(ctx, 0);
}

static int dec_start_array(void *ctx)
{
    return dec_open(ctx, 1);
}

static int dec_close(nv_json_dec *d)
{
    if (!d->made[d->depth]) dec_make(d, d->depth, 0);
    if (d->is_array[d->depth]) {
        lua_pushvalue(d->L, d->array_mt);
        lua_setmetatable(d->L, -2);
    }
    d->depth--;
    return dec_put(d);
}

static int dec_end_map(void *ctx)
{
    return dec_close(ctx);
}

static int dec_end_array(void *ctx)
{
    return dec_close(ctx);
}

static const yajl_callbacks nv_json_callbacks = {
    .yajl_null = dec_null,
    .yajl_boolean = dec_boolean,
    .yajl_number = dec_number,
    .yajl_string = dec_string,
    .yajl_start_map = dec_start_map,
    .yajl_map_key = dec_key,
    .yajl_end_map = dec_end_map,
    .yajl_start_array = dec_start_array,
    .yajl_end_array = dec_end_array,
};

/* ---- decode: errors and entry ---------------------------------------- */

/* yajl's reason without its "lexical error: " prefix and ".\n" suffix; the
 * common ones reworded. */
static void yajl_reason(nv_json_dec *d, char *out, size_t cap)
{
    unsigned char *m = yajl_get_error(d->h, 0, d->text, d->text_len);
    const char *r = m ? (const char *)m : "unknown error";
    const char *colon = strstr(r, ": ");
    size_t n;
    if (colon != NULL) r = colon + 2;
    n = strlen(r);
    while (n > 0 && (r[n - 1] == '\n' || r[n - 1] == '.')) n--;
    if (n == 28 && memcmp(r, "invalid bytes in UTF8 string", n) == 0)
        r = "invalid UTF-8 in string", n = strlen(r);
    else if (n == 16 && memcmp(r, "trailing garbage", n) == 0)
        r = "trailing data after the document", n = strlen(r);
    else if (n == 13 && memcmp(r, "premature EOF", n) == 0)
        r = "unexpected end of input", n = strlen(r);
    snprintf(out, cap, "%.*s", (int)n, r);
    if (m != NULL) yajl_free_error(d->h, m);
}

static int dec_error(nv_json_dec *d)
{
    char reason[128], msg[256];
    size_t at = d->finishing ? d->text_len : yajl_get_bytes_consumed(d->h);
    if (d->err != NULL && d->err_at != 0) at = d->err_at;
    if (d->err == NULL) {
        yajl_reason(d, reason, sizeof reason);
        snprintf(msg, sizeof msg, "invalid JSON at byte %zu: %s", at, reason);
    } else if (d->limit) {
        snprintf(msg, sizeof msg, "JSON %s at byte %zu", d->err, at);
    } else {
        snprintf(msg, sizeof msg, "invalid JSON at byte %zu: %s", at, d->err);
    }
    lua_pushnil(d->L);
    lua_pushstring(d->L, msg);
    return 2;
}

/* Runs under lua_pcall: 1 = the nv_json_dec. A Lua error raised inside a
 * callback (out of memory) unwinds through yajl to json_decode, which frees
 * the handle: yajl keeps no state of ours outside it. */
static int json_decode_body(lua_State *L)
{
    nv_json_dec *d = lua_touserdata(L, 1);
    yajl_status s;
    d->L = L;
    lua_pushvalue(L, lua_upvalueindex(UV_ARRAY_MT));
    d->array_mt = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(UV_INT_MT));
    d->int_mt = lua_gettop(L);
    s = yajl_parse(d->h, d->text, d->text_len);
    if (s == yajl_status_ok) {
        d->finishing = 1;
        s = yajl_complete_parse(d->h);
    }
    if (s != yajl_status_ok) return dec_error(d);
    nv_assert(d->depth == 0 && lua_gettop(L) == d->int_mt + 1);
    return 1;
}

/* json.decode(s [, opts]) -> value | nil, err. opts: depth, bytes. */
static int json_decode(lua_State *L)
{
    nv_json_dec d;
    size_t len;
    const char *s;
    long bytes_max;
    int base, status;
    if (lua_type(L, 1) != LUA_TSTRING) return luaL_typerror(L, 1, "string");
    s = lua_tolstring(L, 1, &len);
    opt_check(L);
    d.depth_max = (int)opt_long(L, "depth", 1, NV_JSON_DEPTH_MAX, NV_JSON_DEPTH_DEFAULT);
    bytes_max = opt_long(L, "bytes", 0, NV_JSON_BYTES_OPT_MAX, NV_JSON_BYTES_DEFAULT);
    if (len > (size_t)bytes_max) {
        char msg[128];
        snprintf(msg, sizeof msg, "JSON document of %zu bytes exceeds the %ld-byte limit", len, bytes_max);
        lua_pushnil(L);
        lua_pushstring(L, msg);
        return 2;
    }
    d.text = (const unsigned char *)s;
    d.text_len = len;
    d.depth = 0;
    d.finishing = 0;
    d.err = NULL;
    d.err_at = 0;
    d.num_buf = NULL;
    d.num_cap = 0;
    d.h = yajl_alloc(&nv_json_callbacks, NULL, &d);
    if (d.h == NULL) return luaL_error(L, "not enough memory");
    base = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(UV_BODY));
    lua_pushlightuserdata(L, &d);
    status = lua_pcall(L, 1, LUA_MULTRET, 0);
    yajl_free(d.h);
    free(d.num_buf);
    if (status != 0) return lua_error(L);
    return lua_gettop(L) - base;
}

/* ---- json.int, json.null, arrays and objects ------------------------- */

static void push_json_int(lua_State *L, const char *s, size_t n, int mt)
{
    lua_createtable(L, 1, 0);
    lua_pushlstring(L, s, n);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, mt);
    lua_setmetatable(L, -2);
}

static int is_json_int(lua_State *L, int idx, int mt)
{
    int yes;
    if (!lua_getmetatable(L, idx)) return 0;
    yes = lua_rawequal(L, -1, mt);
    lua_pop(L, 1);
    return yes;
}

/* Raises with the start of the bad text, its unprintable bytes as '?'. */
static int int_bad_text(lua_State *L, const char *s, size_t n)
{
    char echo[NV_JSON_ECHO_BYTES_MAX + 1];
    size_t i, k = n < NV_JSON_ECHO_BYTES_MAX ? n : NV_JSON_ECHO_BYTES_MAX;
    for (i = 0; i < k; i++) echo[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    echo[k] = '\0';
    return luaL_error(L, "json.int expects an optional '-' and up to %d digits without leading zero, got \"%s%s\"",
                      NV_JSON_INT_DIGITS_MAX, echo, n > k ? "..." : "");
}

/* json.int(s_or_number) -> json.int; a caller's bad value raises. */
static int json_int(lua_State *L)
{
    char tmp[48];
    const char *s = tmp;
    size_t n;
    int mt = lua_upvalueindex(UV_INT_MT);
    switch (lua_type(L, 1)) {
    case LUA_TNUMBER:
        n = fmt_integral(tmp, lua_tonumber(L, 1));
        if (n == 0 || !int_text_ok(tmp, n))
            return luaL_error(L, "json.int expects an integral number of at most %d digits", NV_JSON_INT_DIGITS_MAX);
        break;
    case LUA_TSTRING:
        s = lua_tolstring(L, 1, &n);
        if (!int_text_ok(s, n)) return int_bad_text(L, s, n);
        break;
    case LUA_TTABLE:
        if (is_json_int(L, 1, mt)) {
            lua_settop(L, 1);
            return 1;
        }
        /* fall through */
    default:
        return luaL_typerror(L, 1, "string or number");
    }
    push_json_int(L, s, n, mt);
    return 1;
}

static int json_is_int(lua_State *L)
{
    lua_pushboolean(L, is_json_int(L, 1, lua_upvalueindex(UV_INT_MT)));
    return 1;
}

static int int_tostring(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_rawgeti(L, 1, 1);
    if (lua_type(L, -1) != LUA_TSTRING) lua_pushliteral(L, "json.int(invalid)");
    return 1;
}

static int int_eq(lua_State *L)
{
    lua_rawgeti(L, 1, 1);
    lua_rawgeti(L, 2, 1);
    lua_pushboolean(L, lua_type(L, -1) == LUA_TSTRING && lua_rawequal(L, -1, -2));
    return 1;
}

/* json.array(t) / json.object(t): mark t (or a new table) and return it. */
static int set_mt(lua_State *L, int uv)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_newtable(L);
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_pushvalue(L, lua_upvalueindex(uv));
    lua_setmetatable(L, 1);
    return 1;
}

static int json_array(lua_State *L)
{
    return set_mt(L, UV_ARRAY_MT);
}

static int json_object(lua_State *L)
{
    return set_mt(L, UV_OBJECT_MT);
}

/* ---- luaopen --------------------------------------------------------- */

/* Prints int64_t/uint64_t cdata only: ffi.istype runs no user code, unlike
 * tostring on a struct with a __tostring metamethod. */
static const char nv_json_cdata_lua[] =
    "local ok, ffi = pcall(require, 'ffi')\n"
    "if not ok then return function() return nil end end\n"
    "local istype, tostring = ffi.istype, tostring\n"
    "local i64, u64 = ffi.typeof('int64_t'), ffi.typeof('uint64_t')\n"
    "return function(v)\n"
    "  if istype(i64, v) or istype(u64, v) then return tostring(v) end\n"
    "  return nil\n"
    "end\n";

static void push_mt(lua_State *L, const char *name)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
}

static void push_upvalues(lua_State *L, int base)
{
    int i;
    for (i = 1; i <= NV_JSON_UV_SHARED; i++) lua_pushvalue(L, base + i);
}

/* Registers module[name]; with a body, fn gets it as its last upvalue. */
static void set_fn(lua_State *L, int base, const char *name, lua_CFunction fn, lua_CFunction body)
{
    int nup = NV_JSON_UV_SHARED;
    push_upvalues(L, base);
    if (body != NULL) {
        push_upvalues(L, base);
        lua_pushcclosure(L, body, NV_JSON_UV_SHARED);
        nup++;
    }
    lua_pushcclosure(L, fn, nup);
    lua_setfield(L, base, name);
}

static void push_upvalue_values(lua_State *L)
{
    nv_json_state *st = lua_newuserdata(L, sizeof *st); /* UV_STATE */
    memset(st, 0, sizeof *st);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    push_mt(L, "json.array");  /* UV_ARRAY_MT */
    push_mt(L, "json.object"); /* UV_OBJECT_MT */
    push_mt(L, "json.int");    /* UV_INT_MT */
    lua_pushcfunction(L, int_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, int_eq);
    lua_setfield(L, -2, "__eq");
    if (luaL_loadbuffer(L, nv_json_cdata_lua, sizeof nv_json_cdata_lua - 1, "=nuvion.json") != 0)
        lua_error(L);
    lua_call(L, 0, 1); /* UV_CDATA */
}

int luaopen_nuvion_json(lua_State *L)
{
    int base;
    lua_createtable(L, 0, 12);
    base = lua_gettop(L);
    push_upvalue_values(L);
    nv_assert(lua_gettop(L) == base + NV_JSON_UV_SHARED);
    set_fn(L, base, "decode", json_decode, json_decode_body);
    set_fn(L, base, "encode", json_encode, json_encode_body);
    set_fn(L, base, "int", json_int, NULL);
    set_fn(L, base, "is_int", json_is_int, NULL);
    set_fn(L, base, "array", json_array, NULL);
    set_fn(L, base, "object", json_object, NULL);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, base, "null");
    lua_pushvalue(L, base + UV_ARRAY_MT);
    lua_setfield(L, base, "array_mt");
    lua_pushvalue(L, base + UV_OBJECT_MT);
    lua_setfield(L, base, "object_mt");
    lua_pushvalue(L, base + UV_INT_MT);
    lua_setfield(L, base, "int_mt");
    lua_settop(L, base);
    return 1;
}
