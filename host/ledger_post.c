/* ledger_post.c -- the ledger's posting layer (ledger_post.h).
 *
 * A batch is one transaction in two round trips on one connection:
 *   load:  BEGIN; lock the accounts in id order (SELECT ... ORDER BY id FOR NO KEY UPDATE); then, under
 *          those locks, read the transfers and failed ids the events name and the due holds on
 *          their accounts -- one pipeline;
 *   check: ledger_check.c decides every event in order, in memory, with exact 128-bit sums;
 *   write: every new transfer, hold, status, account counter, failed id and history row as one
 *          multi-row statement each (unnest of arrays), then COMMIT -- one pipeline.
 * Every batch locks in ascending id order in one statement, so batches of any worker never
 * deadlock on accounts. A conflict (two workers inserting one id, a hold that appeared between
 * two statements) rolls the batch back and runs it again, at most NV_LEDGER_POST_RETRIES times;
 * any other failure fails every call of the batch with nothing applied. */
#include "ledger_post.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "log.h"
#include "nv_limits.h"

/* ---- SQL ------------------------------------------------------------------------------ */

#define ACCOUNT_COLS                                                                            \
    "id, debits_pending, debits_posted, credits_pending, credits_posted, user_data_128, "      \
    "user_data_64, user_data_32, ledger, code, flags, timestamp"
#define ACCOUNT_NCOLS 12
#define TRANSFER_COLS                                                                           \
    "t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data_128, " \
    "t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, t.flags, t.timestamp, "       \
    "coalesce(h.status, 0)"
#define TRANSFER_NCOLS 14

static const char SQL_BEGIN[] = "BEGIN";
/* Joins of a batch's few rows with big tables (UPDATE ... FROM unnest(...)) go through the
 * primary key: without this the planner may hash the whole accounts table for 500 rows. The
 * statements are prepared once per connection (parsed once), but planned for each batch with
 * its own arrays: a generic plan guesses their sizes and may scan where a batch needs lookups. */
static const char SQL_PLAN[] =
    "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true), "
    "set_config('plan_cache_mode', 'force_custom_plan', true)";
static const char SQL_COMMIT[] = "COMMIT";
static const char SQL_ROLLBACK[] = "ROLLBACK";

/* $1 the batch's accounts, $2 the holds its posts and voids name: their accounts too. */
/* The locks return each row's ctid: the write updates the rows it locked by ctid (a TID scan),
 * not by a second index lookup of every id. A row locked in this transaction keeps its ctid. */
static const char SQL_LOCK_FOR_TRANSFERS[] =
    "SELECT " ACCOUNT_COLS ", ctid FROM ledger_accounts WHERE id IN ("
    "SELECT unnest($1::numeric[]) "
    "UNION SELECT debit_account_id FROM ledger_holds WHERE id = ANY($2::numeric[]) "
    "UNION SELECT credit_account_id FROM ledger_holds WHERE id = ANY($2::numeric[])) "
    "ORDER BY id FOR NO KEY UPDATE";
static const char SQL_LOCK_ACCOUNTS[] =
    "SELECT " ACCOUNT_COLS ", ctid FROM ledger_accounts WHERE id = ANY($1::numeric[]) ORDER BY id FOR NO KEY UPDATE";
static const char SQL_TRANSFERS[] =
    "SELECT " TRANSFER_COLS " FROM ledger_transfers t LEFT JOIN ledger_holds h ON h.id = t.id "
    "WHERE t.id = ANY($1::numeric[])";
static const char SQL_FAILED[] = "SELECT id FROM ledger_failed_transfers WHERE id = ANY($1::numeric[])";
/* Holds past their deadline whose two accounts the batch locks: they expire in this batch. */
static const char SQL_DUE_ON_ACCOUNTS[] =
    "SELECT " TRANSFER_COLS " FROM ledger_holds h JOIN ledger_transfers t ON t.id = h.id "
    "WHERE h.status = 1 AND h.expires_at <= $2::bigint AND h.debit_account_id = ANY($1::numeric[]) "
    "AND h.credit_account_id = ANY($1::numeric[]) ORDER BY h.expires_at LIMIT $3::int";
/* The sweep: the accounts of the first due holds, then those holds. */
static const char SQL_LOCK_DUE[] =
    "SELECT " ACCOUNT_COLS ", ctid FROM ledger_accounts WHERE id IN ("
    "SELECT unnest(ARRAY[debit_account_id, credit_account_id]) FROM ("
    "SELECT debit_account_id, credit_account_id FROM ledger_holds WHERE status = 1 AND expires_at <= $1::bigint "
    "ORDER BY expires_at LIMIT $2::int) d) ORDER BY id FOR NO KEY UPDATE";
static const char SQL_DUE[] =
    "SELECT " TRANSFER_COLS " FROM ledger_holds h JOIN ledger_transfers t ON t.id = h.id "
    "WHERE h.status = 1 AND h.expires_at <= $1::bigint ORDER BY h.expires_at LIMIT $2::int";

static const char SQL_INSERT_TRANSFERS[] =
    "INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, pending_id, "
    "user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags, timestamp) "
    "SELECT * FROM unnest($1::numeric[], $2::numeric[], $3::numeric[], $4::numeric[], $5::numeric[], "
    "$6::numeric[], $7::numeric[], $8::bigint[], $9::bigint[], $10::bigint[], $11::int[], $12::int[], "
    "$13::bigint[])";
static const char SQL_INSERT_HOLDS[] =
    "INSERT INTO ledger_holds (id, debit_account_id, credit_account_id, status, expires_at) "
    "SELECT * FROM unnest($1::numeric[], $2::numeric[], $3::numeric[], $4::smallint[], $5::bigint[])";
static const char SQL_UPDATE_HOLDS[] =
    "UPDATE ledger_holds h SET status = u.status FROM unnest($1::numeric[], $2::smallint[]) AS u(id, status) "
    "WHERE h.id = u.id";
/* By ctid and id; the count must be every changed account, or the division fails the
 * transaction: counters are never left behind their transfers. */
static const char SQL_UPDATE_ACCOUNTS[] =
    "WITH u AS (UPDATE ledger_accounts a SET debits_pending = u.dp, debits_posted = u.dpo, "
    "credits_pending = u.cp, credits_posted = u.cpo, flags = u.flags FROM unnest($1::tid[], "
    "$2::numeric[], $3::numeric[], $4::numeric[], $5::numeric[], $6::numeric[], $7::int[]) "
    "AS u(t, id, dp, dpo, cp, cpo, flags) WHERE a.ctid = u.t AND a.id = u.id RETURNING 1) "
    "SELECT 1 / (count(*) = $8::int)::int FROM u";
static const char SQL_INSERT_ACCOUNTS[] =
    "INSERT INTO ledger_accounts (" ACCOUNT_COLS ") SELECT * FROM unnest($1::numeric[], $2::numeric[], "
    "$3::numeric[], $4::numeric[], $5::numeric[], $6::numeric[], $7::numeric[], $8::bigint[], $9::bigint[], "
    "$10::int[], $11::int[], $12::bigint[])";
static const char SQL_INSERT_FAILED[] =
    "INSERT INTO ledger_failed_transfers (id, result, timestamp) "
    "SELECT * FROM unnest($1::numeric[], $2::text[], $3::bigint[]) ON CONFLICT (id) DO NOTHING";
static const char SQL_INSERT_BALANCES[] =
    "INSERT INTO ledger_account_balances (account_id, timestamp, transfer_id, debits_pending, "
    "debits_posted, credits_pending, credits_posted) SELECT * FROM unnest($1::numeric[], $2::bigint[], "
    "$3::numeric[], $4::numeric[], $5::numeric[], $6::numeric[], $7::numeric[])";

#define LP_CTID_BYTES 32 /* "(4294967295,65535)" and its NUL, with room */
#define LP_STMTS_MAX 10  /* statements of one pipeline: the write has at most 9 */
#define LP_PARAMS_MAX 48 /* parameters of one pipeline: the write's sum */

/* ---- the engine ----------------------------------------------------------------------- */

typedef enum lp_kind { LP_TRANSFERS = 0, LP_ACCOUNTS = 1, LP_SWEEP = 2 } lp_kind;
typedef enum lp_step { LP_IDLE = 0, LP_LOAD, LP_WRITE, LP_ROLLBACK } lp_step;

typedef struct lp_slot {
    nv_ledger_engine *eng;
    lp_step step;
    lp_kind kind;
    int attempts;
    int then_retry;          /* after the rollback: run the batch again (else fail it) */
    nv_ledger_call_status fail_status;
    char fail_msg[200];
    nv_ledger_state *st;
    nv_ledger_transfer *tr;  /* the batch's events, batch_max */
    nv_ledger_account *acc;
    int *results;
    uint32_t n;
    nv_ledger_call *calls, **calls_tail;
    nv_pg_conn *conn;        /* held through the transaction */
    nv_pg_req *req;          /* in flight (for abandon) */
    nv_buf text;             /* the parameters' text of the request being built */
    int text_err;            /* the text hit its bound or memory: the request is not sent */
    size_t param_off[LP_PARAMS_MAX];
    int nparams;
    nv_u128 *ids;            /* scratch: 4 * batch_max ids */
    nv_ledger_account *locked; /* the accounts loaded, by id: flags for history rows */
    char (*ctids)[LP_CTID_BYTES]; /* their ctids, as Postgres wrote them ("(12,3)") */
    uint32_t nlocked;
    uint64_t now;
} lp_slot;

struct nv_ledger_engine {
    nv_pg_pool *pool;
    nv_ledger_cfg cfg;
    nv_ledger_call *q_head[2], *q_tail[2];
    uint32_t q_events;
    lp_slot slots[NV_LEDGER_POST_INFLIGHT_MAX];
    struct event *gather_ev;
    struct event *sweep_ev;
    int gather_armed;
    uint64_t last_ts; /* timestamps of this engine only grow */
    nv_ledger_stats stats;
};

static void slot_run(lp_slot *s);
static void slot_done(lp_slot *s);
static void dispatch(nv_ledger_engine *e);

static uint64_t realtime_ns(void) {
    struct timespec ts;
    nv_assert(clock_gettime(CLOCK_REALTIME, &ts) == 0);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- numbers as text ------------------------------------------------------------------ */

int nv_ledger_parse_u128(const char *s, size_t len, nv_u128 *out) {
    if (len == 0 || len > 39) return NV_ERR;
    size_t head = len > 19 ? len - 19 : 0; /* the last 19 digits fit a uint64_t */
    nv_u128 v = 0;
    for (size_t i = 0; i < head; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9) return NV_ERR;
        v = v * 10 + d; /* at most 20 digits here: no overflow */
    }
    uint64_t lo = 0;
    for (size_t i = head; i < len; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9) return NV_ERR;
        lo = lo * 10 + d;
    }
    if (head == 0) {
        *out = lo;
        return NV_OK;
    }
    static const uint64_t P19 = 10000000000000000000u;
    if (v > (NV_LEDGER_U128_MAX - lo) / P19) return NV_ERR;
    *out = v * P19 + lo;
    return NV_OK;
}

/* Digits of a uint64_t, zero-padded to width (0: none). Returns the length. */
static size_t u64_digits(uint64_t w, char *out, size_t width) {
    char tmp[20];
    size_t n = 0;
    do tmp[n++] = (char)('0' + w % 10), w /= 10;
    while (w != 0);
    while (n < width) tmp[n++] = '0';
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* Digits of v: at most two 128-bit divisions, the rest in 64 bits. Returns the length written
 * at out (room for 40). */
static size_t u128_digits(nv_u128 v, char *out) {
    static const uint64_t P19 = 10000000000000000000u;
    if (v <= UINT64_MAX) return u64_digits((uint64_t)v, out, 0);
    nv_u128 q = v / P19;
    uint64_t low = (uint64_t)(v - q * P19);
    size_t n;
    if (q <= UINT64_MAX) {
        n = u64_digits((uint64_t)q, out, 0);
    } else {
        nv_u128 q2 = q / P19; /* at most 3: 2^128 < 4 * 10^38 */
        n = u64_digits((uint64_t)q2, out, 0);
        n += u64_digits((uint64_t)(q - q2 * P19), out + n, 19);
    }
    return n + u64_digits(low, out + n, 19);
}

/* ---- building parameters: arrays as text ('{1,2,3}') ---------------------------------- */

static int text_reserve(lp_slot *s, size_t n) {
    if (nv_buf_reserve(&s->text, n, (size_t)NV_PG_REQUEST_BYTES_MAX) == NV_OK) return NV_OK;
    s->text_err = 1;
    return NV_ERR;
}

static void arr_begin(lp_slot *s) {
    nv_assert(s->nparams < LP_PARAMS_MAX);
    s->param_off[s->nparams++] = s->text.len;
    if (text_reserve(s, 1) == NV_OK) s->text.data[s->text.len++] = '{';
}

static void arr_u128(lp_slot *s, nv_u128 v) {
    if (text_reserve(s, 41) != NV_OK) return;
    s->text.len += u128_digits(v, s->text.data + s->text.len);
    s->text.data[s->text.len++] = ',';
}

static void arr_str(lp_slot *s, const char *v) {
    size_t n = strlen(v);
    if (text_reserve(s, n + 1) != NV_OK) return;
    memcpy(s->text.data + s->text.len, v, n);
    s->text.len += n;
    s->text.data[s->text.len++] = ',';
}

/* A quoted element ("(12,3)": a ctid holds a comma). */
static void arr_quoted(lp_slot *s, const char *v) {
    size_t n = strlen(v);
    if (text_reserve(s, n + 3) != NV_OK) return;
    s->text.data[s->text.len++] = '"';
    memcpy(s->text.data + s->text.len, v, n);
    s->text.len += n;
    s->text.data[s->text.len++] = '"';
    s->text.data[s->text.len++] = ',';
}

static void arr_end(lp_slot *s) {
    if (text_reserve(s, 2) != NV_OK) return;
    if (s->text.len > 0 && s->text.data[s->text.len - 1] == ',') s->text.len--;
    s->text.data[s->text.len++] = '}';
    s->text.data[s->text.len++] = '\0';
}

/* A plain value parameter. */
static void param_u64(lp_slot *s, uint64_t v) {
    nv_assert(s->nparams < LP_PARAMS_MAX);
    s->param_off[s->nparams++] = s->text.len;
    if (text_reserve(s, 22) != NV_OK) return;
    s->text.len += u128_digits(v, s->text.data + s->text.len);
    s->text.data[s->text.len++] = '\0';
}

typedef struct lp_pipe {
    const char *sql[LP_STMTS_MAX];
    int nparams[LP_STMTS_MAX];
    int nstmts;
} lp_pipe;

static void pipe_add(lp_pipe *p, const char *sql, int nparams) {
    nv_assert(p->nstmts < LP_STMTS_MAX);
    p->sql[p->nstmts] = sql;
    p->nparams[p->nstmts++] = nparams;
}

/* ---- failing and finishing -------------------------------------------------------------- */

static int is_conflict(const char *code) {
    return code != NULL && (strcmp(code, "23505") == 0 /* unique_violation: an id inserted twice */ ||
                            strcmp(code, "40001") == 0 /* serialization_failure */ ||
                            strcmp(code, "40P01") == 0 /* deadlock_detected */);
}

static void rollback_done(void *arg, nv_pg_conn *c, nv_pg_req *r);

/* The transaction failed (or a check refused its state): roll back, then retry or fail. */
static void slot_abort(lp_slot *s, int retry, nv_ledger_call_status status, const char *msg) {
    s->then_retry = retry && s->attempts < NV_LEDGER_POST_RETRIES;
    s->fail_status = status;
    snprintf(s->fail_msg, sizeof s->fail_msg, "%s", msg);
    if (s->conn == NULL) {
        rollback_done(s, NULL, NULL);
        return;
    }
    int zero = 0;
    nv_pg_req *r = nv_pg_req_alloc(1, &zero);
    if (r == NULL) {
        nv_pg_finish(s->conn, 1); /* inside a transaction: the pool closes it */
        s->conn = NULL;
        rollback_done(s, NULL, NULL);
        return;
    }
    r->stmts[0].sql = SQL_ROLLBACK;
    r->timeout_ms = s->eng->cfg.timeout_ms;
    s->step = LP_ROLLBACK;
    s->req = r;
    if (nv_pg_submit(s->eng->pool, s->conn, r, rollback_done, s) != NV_OK) {
        s->req = NULL;
        nv_pg_finish(s->conn, 1);
        s->conn = NULL;
        rollback_done(s, NULL, NULL);
    }
}

static void rollback_done(void *arg, nv_pg_conn *c, nv_pg_req *r) {
    lp_slot *s = arg;
    nv_assert(r == NULL || c != NULL); /* a held connection's request always has it */
    s->req = NULL;
    if (c != NULL) nv_pg_finish(c, 1);
    s->conn = NULL;
    if (s->then_retry) {
        s->attempts++;
        s->eng->stats.retries++;
        slot_run(s);
        return;
    }
    slot_done(s);
}

/* Wakes every call of the batch, each with its results or the batch's failure. */
static void slot_done(lp_slot *s) {
    nv_ledger_engine *e = s->eng;
    nv_ledger_call *calls = s->calls;
    int ok = s->fail_status == NV_LEDGER_CALL_OK;
    if (!ok) {
        e->stats.failed_batches++;
        nv_logf(NV_LOG_WARN, "ledger: a batch of %u events failed: %s", s->n, s->fail_msg);
    } else if (s->kind != LP_SWEEP) {
        e->stats.batches++;
        e->stats.events += s->n;
    }
    s->calls = NULL, s->calls_tail = &s->calls;
    s->step = LP_IDLE;
    s->n = 0;
    /* the slot is free before any task runs: a woken task may submit again */
    nv_ledger_call *c = calls;
    while (c != NULL) {
        nv_ledger_call *next = c->next;
        c->next = NULL;
        if (ok) {
            memcpy(c->results, s->results + c->first, c->n_run * sizeof(int));
        } else {
            c->status = s->fail_status;
            snprintf(c->message, sizeof c->message, "%s", s->fail_msg);
        }
        nv_task *t = c->task;
        lua_pushlightuserdata(t->co, c);
        nv_task_wake(t, 1);
        c = next;
    }
    dispatch(e);
}

/* ---- reading rows ----------------------------------------------------------------------- */

static int field_u128(const char *v, int32_t len, nv_u128 *out) {
    return v != NULL && nv_ledger_parse_u128(v, (size_t)len, out) == NV_OK ? NV_OK : NV_ERR;
}

static int field_u64(const char *v, int32_t len, uint64_t max, uint64_t *out) {
    nv_u128 x;
    if (field_u128(v, len, &x) != NV_OK || x > max) return NV_ERR;
    *out = (uint64_t)x;
    return NV_OK;
}

static int row_account(const char **v, const int32_t *l, nv_ledger_account *a) {
    uint64_t u64, u32, ledger, code, flags, ts;
    memset(a, 0, sizeof *a);
    if (field_u128(v[0], l[0], &a->id) || field_u128(v[1], l[1], &a->debits_pending) ||
        field_u128(v[2], l[2], &a->debits_posted) || field_u128(v[3], l[3], &a->credits_pending) ||
        field_u128(v[4], l[4], &a->credits_posted) || field_u128(v[5], l[5], &a->user_data_128) ||
        field_u64(v[6], l[6], UINT64_MAX, &u64) || field_u64(v[7], l[7], UINT32_MAX, &u32) ||
        field_u64(v[8], l[8], UINT32_MAX, &ledger) || field_u64(v[9], l[9], UINT16_MAX, &code) ||
        field_u64(v[10], l[10], UINT16_MAX, &flags) || field_u64(v[11], l[11], UINT64_MAX, &ts))
        return NV_ERR;
    a->user_data_64 = u64, a->user_data_32 = (uint32_t)u32, a->ledger = (uint32_t)ledger;
    a->code = (uint16_t)code, a->flags = (uint16_t)flags, a->timestamp = ts;
    return NV_OK;
}

static int row_transfer(const char **v, const int32_t *l, nv_ledger_transfer *t, nv_ledger_pending_status *status) {
    uint64_t u64, u32, timeout, ledger, code, flags, ts, st;
    memset(t, 0, sizeof *t);
    if (field_u128(v[0], l[0], &t->id) || field_u128(v[1], l[1], &t->debit_account_id) ||
        field_u128(v[2], l[2], &t->credit_account_id) || field_u128(v[3], l[3], &t->amount) ||
        field_u128(v[4], l[4], &t->pending_id) || field_u128(v[5], l[5], &t->user_data_128) ||
        field_u64(v[6], l[6], UINT64_MAX, &u64) || field_u64(v[7], l[7], UINT32_MAX, &u32) ||
        field_u64(v[8], l[8], UINT32_MAX, &timeout) || field_u64(v[9], l[9], UINT32_MAX, &ledger) ||
        field_u64(v[10], l[10], UINT16_MAX, &code) || field_u64(v[11], l[11], UINT16_MAX, &flags) ||
        field_u64(v[12], l[12], UINT64_MAX, &ts) || field_u64(v[13], l[13], NV_LEDGER_PENDING_EXPIRED, &st))
        return NV_ERR;
    t->user_data_64 = u64, t->user_data_32 = (uint32_t)u32, t->timeout_s = (uint32_t)timeout;
    t->ledger = (uint32_t)ledger, t->code = (uint16_t)code, t->flags = (uint16_t)flags, t->timestamp = ts;
    *status = (nv_ledger_pending_status)st;
    return NV_OK;
}

/* The first error of a finished pipeline: 0 none; else fills msg and says whether it is a
 * conflict worth a retry. Statements after the failed one are only "aborted". */
static int pipe_error(const nv_pg_req *r, char *msg, size_t cap, int *conflict) {
    *conflict = 0;
    if (r->fail != NV_PG_FAIL_NONE) {
        snprintf(msg, cap, "database: %.150s",
                 r->fail_msg[0] ? r->fail_msg
                 : r->fail == NV_PG_FAIL_TIMEOUT ? "no answer within timeout_ms: the connection was closed"
                                                 : "connection lost");
        return 1;
    }
    for (int i = 0; i < r->nstmts; i++) {
        const PGresult *res = r->outs[i].res;
        if (res == NULL || PQresultStatus(res) != PGRES_FATAL_ERROR) continue;
        const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        *conflict = is_conflict(code);
        snprintf(msg, cap, "database: %s (%s)", m != NULL ? m : "error", code != NULL ? code : "?");
        return 1;
    }
    for (int i = 0; i < r->nstmts; i++)
        if (r->outs[i].res != NULL && PQresultStatus(r->outs[i].res) == PGRES_PIPELINE_ABORTED) {
            snprintf(msg, cap, "database: the pipeline was aborted");
            return 1;
        }
    return 0;
}

static int cmp_account_id(const void *a, const void *b) {
    nv_u128 x = ((const nv_ledger_account *)a)->id, y = ((const nv_ledger_account *)b)->id;
    return x < y ? -1 : x > y;
}

static const nv_ledger_account *locked_find(const lp_slot *s, nv_u128 id) {
    nv_ledger_account key;
    key.id = id;
    return bsearch(&key, s->locked, s->nlocked, sizeof key, cmp_account_id);
}

/* ---- the write pipeline ------------------------------------------------------------------ */

static void write_done(void *arg, nv_pg_conn *c, nv_pg_req *r);

static void build_transfer_writes(lp_slot *s, lp_pipe *p) {
    const nv_ledger_new_transfer *rows;
    uint32_t n = nv_ledger_new_transfers(s->st, &rows);
    if (n > 0) {
        for (int col = 0; col < 13; col++) {
            arr_begin(s);
            for (uint32_t i = 0; i < n; i++) {
                const nv_ledger_transfer *t = &rows[i].transfer;
                nv_u128 v = 0;
                switch (col) {
                case 0: v = t->id; break;
                case 1: v = t->debit_account_id; break;
                case 2: v = t->credit_account_id; break;
                case 3: v = t->amount; break;
                case 4: v = t->pending_id; break;
                case 5: v = t->user_data_128; break;
                case 6: v = t->user_data_64; break;
                case 7: v = t->user_data_32; break;
                case 8: v = t->timeout_s; break;
                case 9: v = t->ledger; break;
                case 10: v = t->code; break;
                case 11: v = t->flags; break;
                default: v = t->timestamp; break;
                }
                arr_u128(s, v);
            }
            arr_end(s);
        }
        pipe_add(p, SQL_INSERT_TRANSFERS, 13);
        /* holds: their state row */
        uint32_t holds = 0;
        for (uint32_t i = 0; i < n; i++) holds += rows[i].status != NV_LEDGER_PENDING_NONE;
        if (holds > 0) {
            for (int col = 0; col < 5; col++) {
                arr_begin(s);
                for (uint32_t i = 0; i < n; i++) {
                    const nv_ledger_transfer *t = &rows[i].transfer;
                    if (rows[i].status == NV_LEDGER_PENDING_NONE) continue;
                    if (col == 0) arr_u128(s, t->id);
                    else if (col == 1) arr_u128(s, t->debit_account_id);
                    else if (col == 2) arr_u128(s, t->credit_account_id);
                    else if (col == 3) arr_u128(s, (nv_u128)rows[i].status);
                    else if (t->timeout_s == 0) arr_str(s, "NULL");
                    else arr_u128(s, t->timestamp + (uint64_t)t->timeout_s * 1000000000u);
                }
                arr_end(s);
            }
            pipe_add(p, SQL_INSERT_HOLDS, 5);
        }
        /* history: the counters after each transfer, for accounts with the flag */
        uint32_t hist = 0;
        for (uint32_t i = 0; i < n; i++)
            for (int side = 0; side < 2; side++) {
                const nv_ledger_account *a = locked_find(s, side ? rows[i].transfer.credit_account_id
                                                                 : rows[i].transfer.debit_account_id);
                hist += a != NULL && (a->flags & NV_LEDGER_ACCOUNT_HISTORY);
            }
        if (hist > 0) {
            for (int col = 0; col < 7; col++) {
                arr_begin(s);
                for (uint32_t i = 0; i < n; i++)
                    for (int side = 0; side < 2; side++) {
                        const nv_ledger_transfer *t = &rows[i].transfer;
                        nv_u128 id = side ? t->credit_account_id : t->debit_account_id;
                        const nv_ledger_account *a = locked_find(s, id);
                        if (a == NULL || !(a->flags & NV_LEDGER_ACCOUNT_HISTORY)) continue;
                        const nv_ledger_balance *b = side ? &rows[i].credit_after : &rows[i].debit_after;
                        nv_u128 v = col == 0   ? id
                                    : col == 1 ? (nv_u128)t->timestamp
                                    : col == 2 ? t->id
                                    : col == 3 ? b->debits_pending
                                    : col == 4 ? b->debits_posted
                                    : col == 5 ? b->credits_pending
                                               : b->credits_posted;
                        arr_u128(s, v);
                    }
                arr_end(s);
            }
            pipe_add(p, SQL_INSERT_BALANCES, 7);
        }
    }
    const nv_ledger_pending_change *pend;
    uint32_t np = nv_ledger_pending_changes(s->st, &pend);
    if (np > 0) {
        arr_begin(s);
        for (uint32_t i = 0; i < np; i++) arr_u128(s, pend[i].pending_id);
        arr_end(s);
        arr_begin(s);
        for (uint32_t i = 0; i < np; i++) arr_u128(s, (nv_u128)pend[i].after);
        arr_end(s);
        pipe_add(p, SQL_UPDATE_HOLDS, 2);
    }
    if (s->kind == LP_TRANSFERS) {
        uint32_t nf = 0;
        for (uint32_t i = 0; i < s->n; i++) nf += nv_ledger_result_is_transient((nv_ledger_result)s->results[i]);
        if (nf > 0) {
            arr_begin(s);
            for (uint32_t i = 0; i < s->n; i++)
                if (nv_ledger_result_is_transient((nv_ledger_result)s->results[i])) arr_u128(s, s->tr[i].id);
            arr_end(s);
            arr_begin(s);
            for (uint32_t i = 0; i < s->n; i++)
                if (nv_ledger_result_is_transient((nv_ledger_result)s->results[i]))
                    arr_str(s, nv_ledger_result_name((nv_ledger_result)s->results[i]));
            arr_end(s);
            arr_begin(s);
            for (uint32_t i = 0; i < s->n; i++)
                if (nv_ledger_result_is_transient((nv_ledger_result)s->results[i]))
                    arr_u128(s, s->now + 1 + i);
            arr_end(s);
            pipe_add(p, SQL_INSERT_FAILED, 3);
        }
    }
}

static void build_account_writes(lp_slot *s, lp_pipe *p) {
    const nv_ledger_account_change *ch;
    uint32_t n = nv_ledger_account_changes(s->st, &ch);
    uint32_t created = 0, changed = 0;
    for (uint32_t i = 0; i < n; i++) created += ch[i].created, changed += !ch[i].created;
    if (changed > 0) {
        arr_begin(s);
        for (uint32_t i = 0; i < n; i++) {
            if (ch[i].created) continue;
            const nv_ledger_account *a = locked_find(s, ch[i].after.id);
            nv_assert(a != NULL); /* a changed account was loaded, so locked */
            arr_quoted(s, s->ctids[a - s->locked]);
        }
        arr_end(s);
        for (int col = 0; col < 6; col++) {
            arr_begin(s);
            for (uint32_t i = 0; i < n; i++) {
                if (ch[i].created) continue;
                const nv_ledger_account *a = &ch[i].after;
                nv_u128 v = col == 0   ? a->id
                            : col == 1 ? a->debits_pending
                            : col == 2 ? a->debits_posted
                            : col == 3 ? a->credits_pending
                            : col == 4 ? a->credits_posted
                                       : (nv_u128)a->flags;
                arr_u128(s, v);
            }
            arr_end(s);
        }
        param_u64(s, changed);
        pipe_add(p, SQL_UPDATE_ACCOUNTS, 8);
    }
    if (created > 0) {
        for (int col = 0; col < ACCOUNT_NCOLS; col++) {
            arr_begin(s);
            for (uint32_t i = 0; i < n; i++) {
                if (!ch[i].created) continue;
                const nv_ledger_account *a = &ch[i].after;
                nv_u128 v;
                switch (col) {
                case 0: v = a->id; break;
                case 1: v = a->debits_pending; break;
                case 2: v = a->debits_posted; break;
                case 3: v = a->credits_pending; break;
                case 4: v = a->credits_posted; break;
                case 5: v = a->user_data_128; break;
                case 6: v = a->user_data_64; break;
                case 7: v = a->user_data_32; break;
                case 8: v = a->ledger; break;
                case 9: v = a->code; break;
                case 10: v = a->flags; break;
                default: v = a->timestamp; break;
                }
                arr_u128(s, v);
            }
            arr_end(s);
        }
        pipe_add(p, SQL_INSERT_ACCOUNTS, ACCOUNT_NCOLS);
    }
}

/* Turns the built text and statements into a request and sends it on the held connection. */
static int pipe_send(lp_slot *s, lp_pipe *p, nv_pg_conn *held, nv_pg_done_fn done) {
    if (s->text_err) return NV_ERR;
    nv_pg_req *r = nv_pg_req_alloc(p->nstmts, p->nparams);
    if (r == NULL) return NV_ERR;
    for (int i = 0, k = 0; i < p->nstmts; i++) {
        r->stmts[i].sql = p->sql[i];
        for (int j = 0; j < p->nparams[i]; j++, k++) r->stmts[i].values[j] = s->text.data + s->param_off[k];
    }
    if (p->nstmts > 1) r->flags = NV_PG_REQ_PIPELINE;
    r->timeout_ms = s->eng->cfg.timeout_ms;
    s->req = r;
    if (nv_pg_submit(s->eng->pool, held, r, done, s) != NV_OK) {
        s->req = NULL;
        return NV_ERR;
    }
    return NV_OK;
}

/* Parses the load's rows into the engine state; NV_ERR on a row the engine refuses. */
static int load_rows(lp_slot *s, nv_pg_conn *c, nv_pg_req *r, int lock_stmt, int first_tr_stmt) {
    const char *v[TRANSFER_NCOLS];
    int32_t l[TRANSFER_NCOLS];
    const nv_pg_out *o = &r->outs[lock_stmt];
    size_t cur = o->rows_off;
    s->nlocked = 0;
    uint64_t ts_max = 0;
    for (uint32_t i = 0; i < o->nrows; i++) {
        nv_assert(o->nfields == ACCOUNT_NCOLS + 1);
        cur = nv_pg_row(c, o, cur, v, l);
        nv_ledger_account a;
        if (s->nlocked >= 4 * s->eng->cfg.batch_max) return NV_ERR;
        if (row_account(v, l, &a) != NV_OK || nv_ledger_state_add_account(s->st, &a) != NV_OK) return NV_ERR;
        if (v[ACCOUNT_NCOLS] == NULL || l[ACCOUNT_NCOLS] >= LP_CTID_BYTES) return NV_ERR;
        memcpy(s->ctids[s->nlocked], v[ACCOUNT_NCOLS], (size_t)l[ACCOUNT_NCOLS] + 1);
        s->locked[s->nlocked++] = a; /* in id order: ORDER BY id */
        if (a.timestamp > ts_max) ts_max = a.timestamp;
    }
    for (int k = first_tr_stmt; k < r->nstmts; k++) {
        o = &r->outs[k];
        if (o->nrows == 0) continue;
        cur = o->rows_off;
        int due = k != first_tr_stmt || s->kind == LP_SWEEP; /* due holds may already be loaded */
        if (o->nfields == 1) { /* failed ids */
            for (uint32_t i = 0; i < o->nrows; i++) {
                cur = nv_pg_row(c, o, cur, v, l);
                nv_u128 id;
                if (field_u128(v[0], l[0], &id) != NV_OK || nv_ledger_state_add_failed_id(s->st, id) != NV_OK)
                    return NV_ERR;
            }
            continue;
        }
        nv_assert(o->nfields == TRANSFER_NCOLS);
        for (uint32_t i = 0; i < o->nrows; i++) {
            cur = nv_pg_row(c, o, cur, v, l);
            nv_ledger_transfer t;
            nv_ledger_pending_status st;
            if (row_transfer(v, l, &t, &st) != NV_OK) return NV_ERR;
            if (t.timestamp > ts_max) ts_max = t.timestamp;
            if (nv_ledger_state_add_transfer(s->st, &t, st) != NV_OK && !due) return NV_ERR;
        }
    }
    /* now: the clock, never below what is loaded nor below this engine's last batch */
    uint64_t now = realtime_ns();
    if (now < ts_max) now = ts_max;
    if (now < s->eng->last_ts) now = s->eng->last_ts;
    s->now = now;
    s->eng->last_ts = now + s->n + 1;
    return NV_OK;
}

static void load_done(void *arg, nv_pg_conn *c, nv_pg_req *r) {
    lp_slot *s = arg;
    s->req = NULL;
    if (c == NULL) { /* no connection: nothing started */
        snprintf(s->fail_msg, sizeof s->fail_msg, "database: %s",
                 r->fail == NV_PG_FAIL_POOL_TIMEOUT ? "no free connection in time" : "cannot connect");
        nv_pg_req_free(r);
        s->fail_status = NV_LEDGER_CALL_UNAVAILABLE;
        slot_done(s);
        return;
    }
    s->conn = c;
    char msg[200];
    int conflict;
    if (pipe_error(r, msg, sizeof msg, &conflict)) {
        nv_pg_finish(c, 0);
        slot_abort(s, conflict, NV_LEDGER_CALL_UNAVAILABLE, msg);
        return;
    }
    int rc = load_rows(s, c, r, 2, 3); /* 0 BEGIN, 1 plan, 2 the lock, 3.. transfers, failed ids, due holds */
    if (rc == NV_OK) {
        if (s->kind == LP_TRANSFERS)
            rc = nv_ledger_create_transfers(s->st, s->tr, s->n, s->now, (nv_ledger_result *)s->results);
        else if (s->kind == LP_ACCOUNTS)
            rc = nv_ledger_create_accounts(s->st, s->acc, s->n, s->now, (nv_ledger_account_result *)s->results);
        else
            rc = nv_ledger_expire(s->st, s->now);
    }
    nv_pg_finish(c, 0);
    if (rc != NV_OK) { /* a hold whose accounts were not locked (it appeared between two reads) */
        slot_abort(s, 1, NV_LEDGER_CALL_UNAVAILABLE, "ledger: the batch's state changed while it loaded");
        return;
    }
    /* write */
    lp_pipe p = { .nstmts = 0 };
    s->text.len = 0, s->nparams = 0, s->text_err = 0;
    build_account_writes(s, &p);
    if (s->kind != LP_ACCOUNTS) build_transfer_writes(s, &p);
    pipe_add(&p, SQL_COMMIT, 0);
    s->step = LP_WRITE;
    if (pipe_send(s, &p, c, write_done) != NV_OK) {
        slot_abort(s, 0, NV_LEDGER_CALL_UNAVAILABLE, "ledger: cannot send the batch (memory or connection)");
        return;
    }
}

static void write_done(void *arg, nv_pg_conn *c, nv_pg_req *r) {
    lp_slot *s = arg;
    s->req = NULL;
    nv_assert(c != NULL && c == s->conn);
    char msg[200];
    int conflict;
    if (r->fail != NV_PG_FAIL_NONE) { /* COMMIT was sent: it may have happened */
        snprintf(msg, sizeof msg, "database: %.120s; the batch may have committed",
                 r->fail_msg[0] ? r->fail_msg : "no answer");
        nv_pg_finish(c, 1);
        s->conn = NULL;
        s->fail_status = NV_LEDGER_CALL_TIMEOUT;
        snprintf(s->fail_msg, sizeof s->fail_msg, "%s", msg);
        slot_done(s);
        return;
    }
    if (pipe_error(r, msg, sizeof msg, &conflict)) {
        nv_pg_finish(c, 0);
        slot_abort(s, conflict, NV_LEDGER_CALL_UNAVAILABLE, msg);
        return;
    }
    /* COMMIT answered: a transaction that failed earlier answers ROLLBACK to it */
    const char *tag = r->outs[r->nstmts - 1].res ? PQcmdStatus(r->outs[r->nstmts - 1].res) : "";
    if (strcmp(tag, "COMMIT") != 0) {
        nv_pg_finish(c, 1);
        s->conn = NULL;
        s->fail_status = NV_LEDGER_CALL_UNAVAILABLE;
        snprintf(s->fail_msg, sizeof s->fail_msg, "database: the commit answered '%s'", tag);
        slot_done(s);
        return;
    }
    nv_pg_finish(c, 1);
    s->conn = NULL;
    const nv_ledger_pending_change *pend;
    uint32_t np = nv_ledger_pending_changes(s->st, &pend);
    for (uint32_t i = 0; i < np; i++) s->eng->stats.expired += pend[i].after == NV_LEDGER_PENDING_EXPIRED;
    if (s->kind == LP_SWEEP) s->eng->stats.sweeps++;
    s->fail_status = NV_LEDGER_CALL_OK;
    slot_done(s);
}

/* ---- the load pipeline -------------------------------------------------------------------- */

static void build_transfer_load(lp_slot *s, lp_pipe *p) {
    uint32_t n = s->n;
    nv_u128 *ids = s->ids;
    /* $1 accounts, $2 pending ids */
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) ids[k++] = s->tr[i].debit_account_id, ids[k++] = s->tr[i].credit_account_id;
    arr_begin(s);
    for (uint32_t i = 0; i < k; i++)
        if (ids[i] != 0 && ids[i] != NV_LEDGER_U128_MAX) arr_u128(s, ids[i]);
    arr_end(s);
    uint32_t pending = 0;
    for (uint32_t i = 0; i < n; i++) pending += s->tr[i].pending_id != 0 && s->tr[i].pending_id != NV_LEDGER_U128_MAX;
    if (pending > 0) {
        arr_begin(s);
        for (uint32_t i = 0; i < n; i++)
            if (s->tr[i].pending_id != 0 && s->tr[i].pending_id != NV_LEDGER_U128_MAX) arr_u128(s, s->tr[i].pending_id);
        arr_end(s);
        pipe_add(p, SQL_LOCK_FOR_TRANSFERS, 2);
    } else {
        pipe_add(p, SQL_LOCK_ACCOUNTS, 1); /* no post or void: no hold's accounts to add */
    }
    /* transfers: ids and pending ids */
    k = nv_ledger_transfer_ids_needed(s->tr, n, ids);
    arr_begin(s);
    for (uint32_t i = 0; i < k; i++) arr_u128(s, ids[i]);
    arr_end(s);
    pipe_add(p, SQL_TRANSFERS, 1);
    arr_begin(s);
    for (uint32_t i = 0; i < n; i++)
        if (s->tr[i].id != 0 && s->tr[i].id != NV_LEDGER_U128_MAX) arr_u128(s, s->tr[i].id);
    arr_end(s);
    pipe_add(p, SQL_FAILED, 1);
    /* due holds on the batch's accounts: as many as the state has room for */
    arr_begin(s);
    for (uint32_t i = 0; i < n; i++) {
        if (s->tr[i].debit_account_id != 0) arr_u128(s, s->tr[i].debit_account_id);
        if (s->tr[i].credit_account_id != 0) arr_u128(s, s->tr[i].credit_account_id);
    }
    arr_end(s);
    param_u64(s, realtime_ns());
    param_u64(s, n);
    pipe_add(p, SQL_DUE_ON_ACCOUNTS, 3);
}

static void build_account_load(lp_slot *s, lp_pipe *p) {
    arr_begin(s);
    for (uint32_t i = 0; i < s->n; i++)
        if (s->acc[i].id != 0 && s->acc[i].id != NV_LEDGER_U128_MAX) arr_u128(s, s->acc[i].id);
    arr_end(s);
    pipe_add(p, SQL_LOCK_ACCOUNTS, 1);
}

static void build_sweep_load(lp_slot *s, lp_pipe *p) {
    uint64_t now = realtime_ns();
    uint32_t limit = s->eng->cfg.batch_max; /* each brings 1 transfer, 2 accounts: the state has room */
    param_u64(s, now);
    param_u64(s, limit);
    pipe_add(p, SQL_LOCK_DUE, 2);
    param_u64(s, now);
    param_u64(s, limit);
    pipe_add(p, SQL_DUE, 2);
}

/* Starts (or restarts) the slot's batch: a fresh state, then the load round trip. */
static void slot_run(lp_slot *s) {
    nv_ledger_state_reset(s->st);
    lp_pipe p = { .nstmts = 0 };
    s->text.len = 0, s->nparams = 0, s->text_err = 0;
    pipe_add(&p, SQL_BEGIN, 0);
    pipe_add(&p, SQL_PLAN, 0);
    if (s->kind == LP_TRANSFERS) build_transfer_load(s, &p);
    else if (s->kind == LP_ACCOUNTS) build_account_load(s, &p);
    else build_sweep_load(s, &p);
    s->step = LP_LOAD;
    s->fail_status = NV_LEDGER_CALL_OK;
    if (pipe_send(s, &p, NULL, load_done) != NV_OK) {
        s->fail_status = NV_LEDGER_CALL_UNAVAILABLE;
        snprintf(s->fail_msg, sizeof s->fail_msg, "ledger: the database's wait queue is full");
        slot_done(s);
    }
}

/* ---- gathering -------------------------------------------------------------------------- */

static lp_slot *slot_free(nv_ledger_engine *e) {
    for (int i = 0; i < e->cfg.inflight; i++)
        if (e->slots[i].step == LP_IDLE) return &e->slots[i];
    return NULL;
}

static int slots_free(const nv_ledger_engine *e) {
    int n = 0;
    for (int i = 0; i < e->cfg.inflight; i++) n += e->slots[i].step == LP_IDLE;
    return n;
}

/* Fills free slots from the queues: calls in order, whole, up to batch_max events a batch. What
 * waits is shared out among the free slots, so that while one batch commits the next is already
 * at the database, and the calls woken by the first can form a third. */
static void dispatch(nv_ledger_engine *e) {
    lp_slot *s;
    while ((e->q_head[LP_TRANSFERS] != NULL || e->q_head[LP_ACCOUNTS] != NULL) && (s = slot_free(e)) != NULL) {
        lp_kind kind = e->q_head[LP_TRANSFERS] != NULL ? LP_TRANSFERS : LP_ACCOUNTS;
        uint32_t share = (e->q_events + (uint32_t)slots_free(e) - 1) / (uint32_t)slots_free(e);
        s->kind = kind;
        s->attempts = 0;
        s->n = 0;
        nv_ledger_call *c;
        while ((c = e->q_head[kind]) != NULL && s->n < share && s->n + c->n_run <= e->cfg.batch_max) {
            e->q_head[kind] = c->next;
            if (e->q_head[kind] == NULL) e->q_tail[kind] = NULL;
            c->next = NULL;
            e->q_events -= c->n_run;
            c->first = s->n;
            if (kind == LP_TRANSFERS) memcpy(s->tr + s->n, c->tr, c->n_run * sizeof *c->tr);
            else memcpy(s->acc + s->n, c->acc, c->n_run * sizeof *c->acc);
            s->n += c->n_run;
            *s->calls_tail = c;
            s->calls_tail = &c->next;
        }
        nv_assert(s->n > 0);
        slot_run(s);
    }
}

static void gather_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_ledger_engine *e = arg;
    e->gather_armed = 0;
    dispatch(e);
}

static void sweep_cb(evutil_socket_t fd, short what, void *arg) {
    NV_UNUSED(fd), NV_UNUSED(what);
    nv_ledger_engine *e = arg;
    lp_slot *s = slot_free(e);
    if (s == NULL) return; /* busy: due holds on busy accounts expire in their batches */
    s->kind = LP_SWEEP;
    s->attempts = 0;
    s->n = 0;
    slot_run(s);
}

int nv_ledger_engine_submit(nv_ledger_engine *e, nv_ledger_call *c) {
    nv_assert(c->n_run >= 1 && c->n_run <= c->n && c->task != NULL);
    if (c->n_run > e->cfg.batch_max) {
        c->status = NV_LEDGER_CALL_OVERLOADED;
        snprintf(c->message, sizeof c->message, "%u events in one call: at most %u", c->n_run, e->cfg.batch_max);
        return NV_ERR;
    }
    if (e->q_events + c->n_run > e->cfg.queue_max) {
        c->status = NV_LEDGER_CALL_OVERLOADED;
        snprintf(c->message, sizeof c->message, "%u events wait already (queue_max)", e->q_events);
        return NV_ERR;
    }
    int kind = c->accounts ? LP_ACCOUNTS : LP_TRANSFERS;
    c->next = NULL;
    if (e->q_tail[kind] != NULL) e->q_tail[kind]->next = c;
    else e->q_head[kind] = c;
    e->q_tail[kind] = c;
    e->q_events += c->n_run;
    if (!e->gather_armed) {
        struct timeval tv = { 0, (suseconds_t)e->cfg.batch_wait_us };
        e->gather_armed = 1;
        event_add(e->gather_ev, &tv);
    }
    return NV_OK;
}

/* ---- life ------------------------------------------------------------------------------- */

nv_ledger_call *nv_ledger_call_new(int accounts, uint32_t n) {
    nv_assert(n >= 1 && n <= NV_LEDGER_POST_CALL_EVENTS_MAX);
    size_t ev = accounts ? sizeof(nv_ledger_account) : sizeof(nv_ledger_transfer);
    size_t head = (sizeof(nv_ledger_call) + 15) & ~(size_t)15;
    char *block = calloc(1, head + n * ev + n * sizeof(int));
    if (block == NULL) return NULL;
    nv_ledger_call *c = (nv_ledger_call *)block;
    c->accounts = accounts;
    c->n = c->n_run = n;
    if (accounts) c->acc = (nv_ledger_account *)(block + head);
    else c->tr = (nv_ledger_transfer *)(block + head);
    c->results = (int *)(block + head + n * ev);
    return c;
}

static void slot_free_mem(lp_slot *s) {
    nv_ledger_state_free(s->st);
    free(s->tr), free(s->acc), free(s->results), free(s->ids), free(s->locked), free(s->ctids);
    nv_buf_free(&s->text);
}

nv_ledger_engine *nv_ledger_engine_new(nv_pg_pool *p, const nv_ledger_cfg *cfg) {
    nv_assert(cfg->batch_max >= 1 && cfg->batch_max <= NV_LEDGER_BATCH_TRANSFERS_MAX);
    nv_assert(cfg->inflight >= 1 && cfg->inflight <= NV_LEDGER_POST_INFLIGHT_MAX);
    nv_ledger_engine *e = calloc(1, sizeof *e);
    if (e == NULL) return NULL;
    e->pool = p;
    e->cfg = *cfg;
    int ok = 1;
    uint32_t b = cfg->batch_max;
    for (int i = 0; i < cfg->inflight; i++) {
        lp_slot *s = &e->slots[i];
        s->eng = e;
        s->calls_tail = &s->calls;
        s->st = nv_ledger_state_new(b);
        s->tr = malloc(b * sizeof *s->tr);
        s->acc = malloc(b * sizeof *s->acc);
        s->results = malloc(b * sizeof *s->results);
        s->ids = malloc(4 * (size_t)b * sizeof *s->ids);
        s->locked = malloc(4 * (size_t)b * sizeof *s->locked);
        s->ctids = malloc(4 * (size_t)b * sizeof *s->ctids);
        ok = ok && s->st && s->tr && s->acc && s->results && s->ids && s->locked && s->ctids;
    }
    struct event_base *base = nv_rt_get()->base;
    e->gather_ev = event_new(base, -1, 0, gather_cb, e);
    e->sweep_ev = event_new(base, -1, EV_PERSIST, sweep_cb, e);
    if (!ok || e->gather_ev == NULL || e->sweep_ev == NULL) {
        nv_ledger_engine_free(e);
        return NULL;
    }
    if (cfg->sweep_ms > 0) {
        struct timeval tv = { (time_t)(cfg->sweep_ms / 1000), (suseconds_t)(cfg->sweep_ms % 1000) * 1000 };
        event_add(e->sweep_ev, &tv);
    }
    nv_pg_pool_ref(p);
    return e;
}

void nv_ledger_engine_free(nv_ledger_engine *e) {
    if (e == NULL) return;
    int refd = e->gather_ev != NULL && e->sweep_ev != NULL; /* new() took the pool only when complete */
    for (int i = 0; i < NV_LEDGER_POST_INFLIGHT_MAX; i++) {
        lp_slot *s = &e->slots[i];
        if (s->req != NULL) nv_pg_abandon(e->pool, s->req);
        else if (s->conn != NULL) nv_pg_finish(s->conn, 1);
        for (nv_ledger_call *c = s->calls, *next; c != NULL; c = next) next = c->next, free(c);
        slot_free_mem(s);
    }
    for (int k = 0; k < 2; k++)
        for (nv_ledger_call *c = e->q_head[k], *next; c != NULL; c = next) next = c->next, free(c);
    if (e->gather_ev != NULL) event_free(e->gather_ev);
    if (e->sweep_ev != NULL) event_free(e->sweep_ev);
    if (refd && e->pool != NULL) nv_pg_pool_unref(e->pool);
    free(e);
}

void nv_ledger_engine_stats(const nv_ledger_engine *e, nv_ledger_stats *out) {
    *out = e->stats;
    out->queued = e->q_events;
    out->inflight = (uint32_t)(e->cfg.inflight - slots_free(e));
}
