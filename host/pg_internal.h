/* pg_internal.h -- the layout shared by pg.c (pools, connections, the Lua module) and
 * pg_types.c (values between Lua and Postgres). Nothing outside host/pg*.c includes it. */
#ifndef NV_PG_INTERNAL_H
#define NV_PG_INTERNAL_H

#include <event2/dns.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <lua.h>
#include <stdint.h>

#include "buf.h"
#include "nv.h"
#include "nv_limits.h"
#include "runtime.h"

/* Why a request (or one of its statements) failed on our side rather than in Postgres. */
typedef enum nv_pg_fail {
    NV_PG_FAIL_NONE = 0,
    NV_PG_FAIL_POOL_TIMEOUT = 1, /* no connection freed up within pool_timeout_ms */
    NV_PG_FAIL_QUEUE_FULL = 2,   /* the wait queue is at its bound */
    NV_PG_FAIL_CONNECT = 3,      /* a new connection failed (pool->conn_err says why) */
    NV_PG_FAIL_LOST = 4,         /* the connection died under the request */
    NV_PG_FAIL_TIMEOUT = 5,      /* no answer within the query timeout: connection closed */
    NV_PG_FAIL_TOO_LARGE = 6,    /* result over rows_max or bytes_max */
    NV_PG_FAIL_UNSUPPORTED = 7,  /* COPY: not taken by this API */
} nv_pg_fail;

/* Upvalue slots of the module's shared table (set by setup() from pg.lua). */
enum {
    NV_PG_UV_ENCODE = 1, /* json.encode */
    NV_PG_UV_DECODE,     /* json.decode */
    NV_PG_UV_INT_MT,     /* json.int_mt */
    NV_PG_UV_BYTEA_MT,   /* pg.bytea's metatable */
    NV_PG_UV_ERROR_MT,   /* metatable of error objects */
    NV_PG_UV_NAMES,      /* SQLSTATE -> condition name */
    NV_PG_UV_PUSH,       /* the protected result builder (a C function) */
    NV_PG_UV_COUNT = NV_PG_UV_PUSH,
};

#define NV_PG_REQ_PIPELINE 1u  /* pipeline mode: every statement in one round trip */
#define NV_PG_REQ_SYNC_EACH 2u /* pipeline: a Sync after each statement, so each commits alone */

typedef struct nv_pg_stmt {
    const char *sql;
    int nparams;
    int typed;             /* a parameter has a type (bytea): not through the statement cache */
    const char **values;   /* NULL: SQL NULL */
    int *lengths;
    int *formats;          /* 0 text, 1 binary (bytea) */
    Oid *types;            /* 0: inferred by the server */
} nv_pg_stmt;

/* One statement's outcome. */
typedef struct nv_pg_out {
    PGresult *res;   /* its last result: the tag and columns, or the error; NULL if none came */
    size_t rows_off; /* its first row in conn->rows */
    uint32_t nrows;
    int nfields;
    nv_pg_fail fail; /* TOO_LARGE, UNSUPPORTED */
    /* A pipeline's statement through the statement cache: prepared in this very pipeline
     * (its Parse's result comes first, then its own), or run by a cached name. */
    uint32_t prep_id;  /* the name being prepared here, 0 when none */
    uint8_t prep_wait; /* the Parse's result has not ended yet */
    uint8_t prep_ok;   /* the Parse succeeded: cache it once its result ends */
    uint8_t named;     /* runs a prepared statement (a cached one or prep_id) */
} nv_pg_out;

typedef struct nv_pg_req nv_pg_req;
typedef struct nv_pg_conn nv_pg_conn;
/* A C caller's completion (instead of a task): c is NULL when r never reached a connection
 * (r->fail says why; the callee frees r), else r is c->req and the callee ends with
 * nv_pg_finish(c, ...). Called exactly once, from the loop. */
typedef void (*nv_pg_done_fn)(void *arg, nv_pg_conn *c, nv_pg_req *r);
struct nv_pg_req {
    nv_pg_req *next; /* the pool's wait queue (FIFO) */
    nv_task *task;   /* waits for the outcome (NULL when done is set) */
    nv_pg_done_fn done;
    void *done_arg;
    uint64_t deadline_us;
    int64_t timeout_ms;
    unsigned flags;  /* NV_PG_REQ_* */
    int nstmts;
    int cur;         /* statement whose results are being read */
    int cur_open;    /* a result of statement cur has come */
    int syncs_sent;
    int syncs_seen;
    int64_t rows_total;
    size_t bytes_total;
    nv_pg_fail fail;                 /* the request as a whole: LOST, TIMEOUT */
    char fail_code[6];               /* SQLSTATE the server gave with it, or "" */
    char fail_msg[NV_PG_ERROR_BYTES];
    nv_pg_stmt *stmts;
    nv_pg_out *outs;
};

typedef enum nv_pg_conn_state {
    NV_PG_CONN_RESOLVING = 1, /* evdns looks the host up */
    NV_PG_CONN_CONNECTING,    /* PQconnectPoll steps */
    NV_PG_CONN_IDLE,          /* in the pool's idle list */
    NV_PG_CONN_LEASED,        /* held by a task: a request in flight, or a transaction between two */
    NV_PG_CONN_FAILED,        /* connecting failed; the timer event reports it on the next turn */
    NV_PG_CONN_DEAD,          /* closed while leased: freed when its task releases it */
} nv_pg_conn_state;

typedef struct nv_pg_cached {
    uint64_t hash;
    char *sql; /* NULL: empty slot */
    size_t len;
    uint32_t id;
} nv_pg_cached;

#define NV_PG_STMT_CACHE_SLOTS (NV_PG_STMT_CACHE_MAX * 2) /* open addressing, at most half full */
_Static_assert((NV_PG_STMT_CACHE_SLOTS & (NV_PG_STMT_CACHE_SLOTS - 1)) == 0, "cache slots: a power of 2");

typedef struct nv_pg_pool nv_pg_pool;
struct nv_pg_conn {
    nv_pg_pool *pool;
    PGconn *pg;
    int slot;           /* index in pool->conns, from 1: the handle Lua holds, with lease */
    nv_pg_conn_state state;
    int busy;           /* req is in flight: not all its results are read */
    int preparing;      /* statement 0 is being prepared; it runs once that is done */
    uint32_t prep_id;   /* the name being prepared */
    uint32_t exec_id;   /* the cached statement req runs, 0 for an unnamed one */
    int broken;         /* usable results, but close it on release */
    uint64_t lease;     /* changes at every lease: a stale handle is refused */
    struct event *rev;  /* connecting: one step; then persistent read */
    struct event *wev;  /* write, while PQflush has data left */
    struct event *tev;  /* connect timeout, query timeout, a deferred failure */
    struct evdns_getaddrinfo_request *dns;
    nv_pg_req *req;     /* in flight, or finished and not yet taken */
    nv_buf rows;        /* rows of req: per field a 4-byte length (-1: NULL), the bytes, a NUL */
    nv_pg_cached *cache; /* NV_PG_STMT_CACHE_SLOTS, allocated on first use */
    int cache_len;
    uint32_t cache_seq;
    nv_pg_conn *next_idle;
};

typedef struct nv_pg_cfg {
    int max;
    int queue_max;
    int64_t pool_timeout_ms;
    int64_t connect_timeout_ms;
    int64_t query_timeout_ms;
    int64_t statement_timeout_ms;
    int64_t rows_max;
    int64_t bytes_max;
    int prepare; /* cache prepared statements per connection */
} nv_pg_cfg;

struct nv_pg_pool {
    nv_pg_pool *next;           /* this worker's pools */
    char *key;                  /* URL + options: holds the password, never logged */
    char desc[256];             /* "host:port/dbname" for logs and errors */
    PQconninfoOption *conninfo; /* the URL, parsed */
    char *hostaddr;             /* what libpq connects to (literals, localhost), or NULL */
    char *resolve;              /* a host name evdns must look up first, or NULL */
    char *options;              /* startup options: ours and the URL's */
    int refs;                   /* Lua handles, over every generation */
    nv_pg_cfg cfg;
    nv_pg_conn *conns[NV_PG_POOL_SIZE_MAX + 1];
    int nconns;
    int nconnecting;
    nv_pg_conn *idle;
    int nidle;
    nv_pg_req *wait_head;
    nv_pg_req *wait_tail;
    int nwait;
    struct event *wait_ev; /* the first waiter's deadline */
    uint64_t lease_seq;
    char conn_err[NV_PG_ERROR_BYTES];
};

/* pg.c: for C callers on the loop (host/ledger_post.c). */
/* The pool behind a nuvion.pg pool handle at idx (raises on anything else). */
nv_pg_pool *nv_pg_pool_of(lua_State *L, int idx);
/* Keeps p alive without a Lua handle; unref may destroy it. */
void nv_pg_pool_ref(nv_pg_pool *p);
void nv_pg_pool_unref(nv_pg_pool *p);
/* Sends r on held (a connection this caller kept from an earlier request), else on any
 * connection of p (queued when none is free). NV_OK: done(arg, ...) runs later, once. NV_ERR:
 * r is freed; the queue is full, or held is unusable (it is then closed: finish it). */
int nv_pg_submit(nv_pg_pool *p, nv_pg_conn *held, nv_pg_req *r, nv_pg_done_fn done, void *arg);
/* The caller is done with c's request: frees it; release 1 gives c back to the pool (closed
 * when it is inside a transaction or broken), 0 keeps it for the next nv_pg_submit. */
void nv_pg_finish(nv_pg_conn *c, int release);
/* Forgets r for good: off the wait queue, or its connection closed (the server rolls back an
 * open transaction). done never runs. For a caller that goes away with requests in flight. */
void nv_pg_abandon(nv_pg_pool *p, nv_pg_req *r);
/* Row i of statement o as field pointers: vals[f] (NUL-terminated text, NULL for SQL NULL)
 * and lens[f]. Rows are walked in order: pass the cursor back (start at o->rows_off). */
size_t nv_pg_row(const nv_pg_conn *c, const nv_pg_out *o, size_t cursor, const char **vals, int32_t *lens);

/* pg_types.c */
/* A request of nstmts statements, statement i with nparams[i] text parameters, zeroed, one
 * allocation (freed by nv_pg_req_free). The caller sets stmts[i].sql and values[k] (lengths
 * are not used for text); both stay the caller's memory until the request is finished. */
nv_pg_req *nv_pg_req_alloc(int nstmts, const int *nparams);
/* Packs the statement at stack index sql_idx (SQL then params up to the top) into a request.
 * Raises on a caller's bug (bad parameter), before anything is allocated. */
nv_pg_req *nv_pg_pack_args(lua_State *L, int uv, int sql_idx);
/* Packs a list of statement tables { sql, p1, ..., n = nparams } at list_idx. */
nv_pg_req *nv_pg_pack_list(lua_State *L, int uv, int list_idx);
void nv_pg_req_free(nv_pg_req *r);
/* Pushes the outcome of a finished request: rows | nil, err (one statement) or
 * results, first_err (pipeline). Raises only on memory errors. */
int nv_pg_push_outcome(lua_State *L, int uv, nv_pg_pool *p, nv_pg_conn *c, nv_pg_req *r);
/* Pushes the error object of a pool-level failure. */
void nv_pg_push_pool_error(lua_State *L, int uv, nv_pg_pool *p, nv_pg_fail f);
/* Frees the scratch memory of packing (when the last pool goes). */
void nv_pg_types_release(void);

#endif
