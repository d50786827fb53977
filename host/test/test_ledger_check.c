/* test_ledger_check.c -- the ledger engine against TigerBeetle's results: every code, chains, holds, retries, random batches. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_check.h"
#include "nv_limits.h"
#include "test.h"

/* The case tables start from a base transfer and override one field: that is their point. */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Winitializer-overrides"
#else
#pragma GCC diagnostic ignored "-Woverride-init"
#endif

#define S_NS 1000000000ull
#define MAX NV_LEDGER_U128_MAX
#define HALF ((nv_u128)1 << 127)
#define TR(name) NV_LEDGER_TR_##name
#define AR(name) NV_LEDGER_AR_##name

/* ---- a tiny database: what the posting layer will keep in Postgres ------------------ */

#define DB_ACCOUNTS_MAX 64
#define DB_TRANSFERS_MAX 200000
#define DB_FAILED_MAX 200000

typedef struct db {
    nv_ledger_account acc[DB_ACCOUNTS_MAX];
    int acc_n;
    nv_ledger_transfer *tr;
    uint8_t *status;
    int tr_n;
    nv_u128 *failed;
    int failed_n;
    uint64_t now; /* ns: the last timestamp handed out */
} db;

static db *db_new(void)
{
    db *d = calloc(1, sizeof(*d));
    d->tr = calloc(DB_TRANSFERS_MAX, sizeof(nv_ledger_transfer));
    d->status = calloc(DB_TRANSFERS_MAX, 1);
    d->failed = calloc(DB_FAILED_MAX, sizeof(nv_u128));
    d->now = 10 * S_NS;
    return d;
}

static void db_free(db *d)
{
    free(d->tr);
    free(d->status);
    free(d->failed);
    free(d);
}

static nv_ledger_account *db_acc(db *d, nv_u128 id)
{
    for (int i = 0; i < d->acc_n; i++)
        if (d->acc[i].id == id) return &d->acc[i];
    return NULL;
}

/* Linear scans: the test's database is small and plain on purpose. */
static int db_tr(db *d, nv_u128 id)
{
    for (int i = d->tr_n - 1; i >= 0; i--)
        if (d->tr[i].id == id) return i;
    return -1;
}

static int db_failed(db *d, nv_u128 id)
{
    for (int i = 0; i < d->failed_n; i++)
        if (d->failed[i] == id) return 1;
    return 0;
}

static nv_ledger_account account(nv_u128 id, uint32_t ledger, uint16_t flags)
{
    nv_ledger_account a = { .id = id, .ledger = ledger, .code = 1, .flags = flags, .timestamp = 1 };
    return a;
}

static void db_add_account(db *d, nv_ledger_account a)
{
    d->acc[d->acc_n++] = a;
}

static void db_add_transfer(db *d, nv_ledger_transfer t, nv_ledger_pending_status s)
{
    d->tr[d->tr_n] = t;
    d->status[d->tr_n++] = (uint8_t)s;
}

static nv_ledger_transfer transfer(nv_u128 id, nv_u128 dr, nv_u128 cr, nv_u128 amount, uint16_t flags)
{
    nv_ledger_transfer t = { .id = id, .debit_account_id = dr, .credit_account_id = cr, .amount = amount,
                             .ledger = 1, .code = 1, .flags = flags };
    return t;
}

static nv_ledger_transfer resolve(nv_u128 id, nv_u128 pending_id, nv_u128 amount, uint16_t flag)
{
    nv_ledger_transfer t = { .id = id, .pending_id = pending_id, .amount = amount, .flags = flag };
    return t;
}

typedef struct run_out {
    uint32_t rows, accounts, pendings, failed;
    int err;
} run_out;

static int db_load(db *d, nv_ledger_state *st, const nv_ledger_transfer *batch, uint32_t n)
{
    nv_u128 ids[4 * NV_LEDGER_BATCH_TRANSFERS_MAX];
    uint32_t k = nv_ledger_transfer_ids_needed(batch, n, ids);
    for (uint32_t i = 0; i < k; i++) {
        int e = db_tr(d, ids[i]);
        if (e >= 0 && nv_ledger_state_add_transfer(st, &d->tr[e], d->status[e]) != NV_OK) return NV_ERR;
        if (db_failed(d, ids[i]) && nv_ledger_state_add_failed_id(st, ids[i]) != NV_OK) return NV_ERR;
    }
    k = nv_ledger_account_ids_needed(st, batch, n, ids);
    for (uint32_t i = 0; i < k; i++) {
        if (i > 0 && !(ids[i - 1] < ids[i])) return NV_ERR; /* sorted, distinct: the lock order */
        nv_ledger_account *a = db_acc(d, ids[i]);
        if (a != NULL && nv_ledger_state_add_account(st, a) != NV_OK) return NV_ERR;
    }
    return NV_OK;
}

static int same_account(const nv_ledger_account *x, const nv_ledger_account *y)
{
    return x->id == y->id && x->debits_pending == y->debits_pending && x->debits_posted == y->debits_posted &&
           x->credits_pending == y->credits_pending && x->credits_posted == y->credits_posted &&
           x->flags == y->flags && x->ledger == y->ledger;
}

/* Writes the effects back, checking each "before" against what the database holds. */
static int db_write(db *d, nv_ledger_state *st, run_out *o)
{
    const nv_ledger_new_transfer *rows;
    const nv_ledger_account_change *ch;
    const nv_ledger_pending_change *pc;
    const nv_u128 *failed;
    o->rows = nv_ledger_new_transfers(st, &rows);
    for (uint32_t i = 0; i < o->rows; i++)
        db_add_transfer(d, rows[i].transfer, rows[i].status);
    o->accounts = nv_ledger_account_changes(st, &ch);
    for (uint32_t i = 0; i < o->accounts; i++) {
        nv_ledger_account *a = db_acc(d, ch[i].after.id);
        if (ch[i].created) {
            if (a != NULL) return NV_ERR;
            db_add_account(d, ch[i].after);
            continue;
        }
        if (a == NULL || !same_account(a, &ch[i].before)) return NV_ERR;
        *a = ch[i].after;
    }
    o->pendings = nv_ledger_pending_changes(st, &pc);
    for (uint32_t i = 0; i < o->pendings; i++) {
        int e = db_tr(d, pc[i].pending_id);
        if (e < 0 || d->status[e] != pc[i].before) return NV_ERR;
        d->status[e] = (uint8_t)pc[i].after;
    }
    o->failed = nv_ledger_failed_ids(st, &failed);
    for (uint32_t i = 0; i < o->failed; i++) d->failed[d->failed_n++] = failed[i];
    return NV_OK;
}

/* One batch through the whole cycle: collect, load, check, write. */
static run_out db_run(db *d, const nv_ledger_transfer *batch, uint32_t n, nv_ledger_result *results)
{
    run_out o = { 0 };
    nv_ledger_state *st = nv_ledger_state_new(n);
    o.err = st == NULL || db_load(d, st, batch, n) != NV_OK ||
            nv_ledger_create_transfers(st, batch, n, d->now, results) != NV_OK || db_write(d, st, &o) != NV_OK;
    d->now += n;
    nv_ledger_state_free(st);
    return o;
}

static run_out db_run_accounts(db *d, const nv_ledger_account *batch, uint32_t n, nv_ledger_account_result *results)
{
    run_out o = { 0 };
    nv_ledger_state *st = nv_ledger_state_new(n);
    o.err = st == NULL;
    for (uint32_t i = 0; !o.err && i < n; i++) {
        nv_ledger_account *a = db_acc(d, batch[i].id);
        if (a != NULL && nv_ledger_state_add_account(st, a) != NV_OK) o.err = 1;
    }
    if (!o.err) o.err = nv_ledger_create_accounts(st, batch, n, d->now, results) != NV_OK || db_write(d, st, &o) != NV_OK;
    d->now += n;
    nv_ledger_state_free(st);
    return o;
}

/* ---- every create_transfers code ---------------------------------------------------- */

/* Accounts and transfers the table's cases meet. */
static db *fixture(void)
{
    db *d = db_new();
    nv_ledger_account a;
    a = account(1, 1, 0), a.debits_pending = 100, db_add_account(d, a); /* holds 200 and 203 */
    a = account(2, 1, 0), a.credits_pending = 100, db_add_account(d, a);
    db_add_account(d, account(3, 2, 0));
    a = account(4, 1, NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS);
    a.credits_posted = 100;
    db_add_account(d, a);
    a = account(5, 1, NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS);
    a.debits_posted = 100;
    db_add_account(d, a);
    db_add_account(d, account(6, 1, NV_LEDGER_ACCOUNT_CLOSED));
    a = account(8, 1, 0), a.debits_pending = MAX, db_add_account(d, a);
    a = account(9, 1, 0), a.credits_pending = MAX, db_add_account(d, a);
    a = account(10, 1, 0), a.debits_posted = MAX, db_add_account(d, a);
    a = account(11, 1, 0), a.credits_posted = MAX, db_add_account(d, a);
    a = account(12, 1, 0), a.debits_pending = HALF, a.debits_posted = HALF - 1, db_add_account(d, a);
    a = account(13, 1, 0), a.credits_pending = HALF, a.credits_posted = HALF - 1, db_add_account(d, a);
    nv_ledger_transfer t = transfer(100, 1, 2, 10, 0);
    t.timestamp = 2;
    db_add_transfer(d, t, NV_LEDGER_PENDING_NONE);
    nv_ledger_pending_status st[] = { NV_LEDGER_PENDING_PENDING, NV_LEDGER_PENDING_POSTED, NV_LEDGER_PENDING_VOIDED,
                                      NV_LEDGER_PENDING_PENDING, NV_LEDGER_PENDING_EXPIRED };
    for (int i = 0; i < 5; i++) {
        t = transfer(200 + i, 1, 2, 50, NV_LEDGER_TRANSFER_PENDING);
        t.timestamp = 3 + i;
        t.timeout_s = i == 3 ? 1 : 0; /* 203 timed out at 1 s: now is 10 s */
        db_add_transfer(d, t, st[i]);
    }
    d->failed[d->failed_n++] = 999;
    return d;
}

typedef struct tr_case {
    const char *what;
    nv_ledger_transfer t;
    nv_ledger_result want;
} tr_case;

#define BASE .id = 1000, .debit_account_id = 1, .credit_account_id = 2, .amount = 5, .ledger = 1, .code = 1
#define POST(...) { .id = 1000, .flags = NV_LEDGER_TRANSFER_POST_PENDING, __VA_ARGS__ }
#define F_(f) NV_LEDGER_TRANSFER_##f

static const tr_case tr_cases[] = {
    { "plain", { BASE }, TR(ok) },
    { "timestamp", { BASE, .timestamp = 1 }, TR(timestamp_must_be_zero) },
    { "reserved flag", { BASE, .flags = 1u << 8 }, TR(reserved_flag) },
    { "id 0", { BASE, .id = 0 }, TR(id_must_not_be_zero) },
    { "id max", { BASE, .id = MAX }, TR(id_must_not_be_int_max) },
    { "exists flags", { BASE, .id = 100, .flags = F_(PENDING) }, TR(exists_with_different_flags) },
    { "exists pending_id", { BASE, .id = 100, .pending_id = 5 }, TR(exists_with_different_pending_id) },
    { "exists timeout", { BASE, .id = 100, .timeout_s = 1 }, TR(exists_with_different_timeout) },
    { "exists dr", { BASE, .id = 100, .debit_account_id = 4 }, TR(exists_with_different_debit_account_id) },
    { "exists cr", { BASE, .id = 100, .credit_account_id = 4 }, TR(exists_with_different_credit_account_id) },
    { "exists amount", { BASE, .id = 100, .amount = 11 }, TR(exists_with_different_amount) },
    { "exists ud128", { BASE, .id = 100, .amount = 10, .user_data_128 = 1 }, TR(exists_with_different_user_data_128) },
    { "exists ud64", { BASE, .id = 100, .amount = 10, .user_data_64 = 1 }, TR(exists_with_different_user_data_64) },
    { "exists ud32", { BASE, .id = 100, .amount = 10, .user_data_32 = 1 }, TR(exists_with_different_user_data_32) },
    { "exists ledger", { BASE, .id = 100, .amount = 10, .ledger = 2 }, TR(exists_with_different_ledger) },
    { "exists code", { BASE, .id = 100, .amount = 10, .code = 2 }, TR(exists_with_different_code) },
    { "exists", { BASE, .id = 100, .amount = 10 }, TR(exists) },
    { "failed before", { BASE, .id = 999 }, TR(id_already_failed) },
    { "pending+post", { BASE, .flags = F_(PENDING) | F_(POST_PENDING) }, TR(flags_are_mutually_exclusive) },
    { "post+void", POST(.pending_id = 200, .flags = F_(POST_PENDING) | F_(VOID_PENDING)), TR(flags_are_mutually_exclusive) },
    { "balancing+void", POST(.pending_id = 200, .flags = F_(VOID_PENDING) | F_(BALANCING_DEBIT)), TR(flags_are_mutually_exclusive) },
    { "closing+post", POST(.pending_id = 200, .flags = F_(POST_PENDING) | F_(CLOSING_CREDIT)), TR(flags_are_mutually_exclusive) },
    { "dr 0", { BASE, .debit_account_id = 0 }, TR(debit_account_id_must_not_be_zero) },
    { "dr max", { BASE, .debit_account_id = MAX }, TR(debit_account_id_must_not_be_int_max) },
    { "cr 0", { BASE, .credit_account_id = 0 }, TR(credit_account_id_must_not_be_zero) },
    { "cr max", { BASE, .credit_account_id = MAX }, TR(credit_account_id_must_not_be_int_max) },
    { "same accounts", { BASE, .credit_account_id = 1 }, TR(accounts_must_be_different) },
    { "pending_id set", { BASE, .pending_id = 5 }, TR(pending_id_must_be_zero) },
    { "post no pending_id", POST(.pending_id = 0), TR(pending_id_must_not_be_zero) },
    { "post pending_id max", POST(.pending_id = MAX), TR(pending_id_must_not_be_int_max) },
    { "post itself", POST(.pending_id = 1000), TR(pending_id_must_be_different) },
    { "timeout not pending", { BASE, .timeout_s = 1 }, TR(timeout_reserved_for_pending_transfer) },
    { "post with timeout", POST(.pending_id = 200, .timeout_s = 1), TR(timeout_reserved_for_pending_transfer) },
    { "closing not pending", { BASE, .flags = F_(CLOSING_DEBIT) }, TR(closing_transfer_must_be_pending) },
    { "amount 0", { BASE, .amount = 0 }, TR(amount_must_not_be_zero) },
    { "ledger 0", { BASE, .ledger = 0 }, TR(ledger_must_not_be_zero) },
    { "code 0", { BASE, .code = 0 }, TR(code_must_not_be_zero) },
    { "no dr", { BASE, .debit_account_id = 77 }, TR(debit_account_not_found) },
    { "no cr", { BASE, .credit_account_id = 77 }, TR(credit_account_not_found) },
    { "ledgers", { BASE, .credit_account_id = 3 }, TR(accounts_must_have_the_same_ledger) },
    { "ledger of transfer", { BASE, .ledger = 2 }, TR(transfer_must_have_the_same_ledger_as_accounts) },
    { "no hold", POST(.pending_id = 555), TR(pending_transfer_not_found) },
    { "not a hold", POST(.pending_id = 100), TR(pending_transfer_not_pending) },
    { "hold dr", POST(.pending_id = 200, .debit_account_id = 4), TR(pending_transfer_has_different_debit_account_id) },
    { "hold cr", POST(.pending_id = 200, .credit_account_id = 4), TR(pending_transfer_has_different_credit_account_id) },
    { "hold ledger", POST(.pending_id = 200, .ledger = 2), TR(pending_transfer_has_different_ledger) },
    { "hold code", POST(.pending_id = 200, .code = 2), TR(pending_transfer_has_different_code) },
    { "post too much", POST(.pending_id = 200, .amount = 51), TR(exceeds_pending_transfer_amount) },
    { "void less", { .id = 1000, .pending_id = 200, .amount = 49, .flags = F_(VOID_PENDING) }, TR(pending_transfer_has_different_amount) },
    { "posted", POST(.pending_id = 201), TR(pending_transfer_already_posted) },
    { "voided", { .id = 1000, .pending_id = 202, .flags = F_(VOID_PENDING) }, TR(pending_transfer_already_voided) },
    { "timed out now", POST(.pending_id = 203), TR(pending_transfer_expired) },
    { "expired before", POST(.pending_id = 204), TR(pending_transfer_expired) },
    { "dr closed", { BASE, .debit_account_id = 6 }, TR(debit_account_already_closed) },
    { "cr closed", { BASE, .credit_account_id = 6 }, TR(credit_account_already_closed) },
    { "dp max", { BASE, .debit_account_id = 8, .flags = F_(PENDING) }, TR(overflows_debits_pending) },
    { "cp max", { BASE, .credit_account_id = 9, .flags = F_(PENDING) }, TR(overflows_credits_pending) },
    { "dpo max", { BASE, .debit_account_id = 10 }, TR(overflows_debits_posted) },
    { "cpo max", { BASE, .credit_account_id = 11 }, TR(overflows_credits_posted) },
    { "debits", { BASE, .debit_account_id = 12, .amount = 1 }, TR(overflows_debits) },
    { "credits", { BASE, .credit_account_id = 13, .amount = 1 }, TR(overflows_credits) },
    { "over credits", { BASE, .debit_account_id = 4, .amount = 101 }, TR(exceeds_credits) },
    { "over debits", { BASE, .credit_account_id = 5, .amount = 101 }, TR(exceeds_debits) },
};

static void test_every_transfer_code_alone(void)
{
    int reached[NV_LEDGER_TR_COUNT_] = { 0 };
    for (size_t i = 0; i < NV_ARRAY_LEN(tr_cases); i++) {
        db *d = fixture();
        nv_ledger_result r = TR(ok);
        run_out o = db_run(d, &tr_cases[i].t, 1, &r);
        CHECK(!o.err);
        if (r != tr_cases[i].want)
            printf("  case \"%s\": got %s, want %s\n", tr_cases[i].what, nv_ledger_result_name(r),
                   nv_ledger_result_name(tr_cases[i].want));
        CHECK_INT_EQ(r, tr_cases[i].want);
        CHECK_INT_EQ(o.rows, r == TR(ok) ? 1 : 0);
        CHECK_INT_EQ(o.failed, nv_ledger_result_is_transient(r) ? 1 : 0);
        reached[r] = 1;
        db_free(d);
    }
    /* the chain codes and overflows_timeout need more than one event or another clock */
    db *d = fixture();
    nv_ledger_transfer chain[2] = { { BASE, .flags = F_(LINKED) }, { BASE, .id = 1001, .debit_account_id = 0 } };
    nv_ledger_result r[2];
    CHECK(!db_run(d, chain, 2, r).err);
    CHECK_INT_EQ(r[0], TR(linked_event_failed));
    reached[r[0]] = 1;
    chain[1].flags = F_(LINKED);
    chain[1].debit_account_id = 1;
    CHECK(!db_run(d, chain, 2, r).err);
    CHECK_INT_EQ(r[1], TR(linked_event_chain_open));
    reached[r[1]] = 1;
    d->now = UINT64_MAX - 100 * S_NS;
    nv_ledger_transfer t = { BASE, .flags = F_(PENDING), .timeout_s = 101 };
    CHECK(!db_run(d, &t, 1, r).err);
    CHECK_INT_EQ(r[0], TR(overflows_timeout));
    reached[r[0]] = 1;
    db_free(d);
    for (int c = 0; c < NV_LEDGER_TR_COUNT_; c++) {
        if (!reached[c]) printf("  not reached: %s\n", nv_ledger_result_name(c));
        CHECK(reached[c]);
    }
}

/* A case's code is the one of highest precedence: a transfer breaking two rules reports the first. */
static void test_precedence_pairs(void)
{
    db *d = fixture();
    nv_ledger_transfer t = { BASE, .id = 0, .amount = 0, .ledger = 0 };
    nv_ledger_result r;
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(id_must_not_be_zero));
    t = (nv_ledger_transfer){ BASE, .id = 100, .debit_account_id = 77, .amount = 10 };
    db_run(d, &t, 1, &r); /* a duplicate is judged before its accounts */
    CHECK_INT_EQ(r, TR(exists_with_different_debit_account_id));
    t = (nv_ledger_transfer){ BASE, .amount = 0, .ledger = 0, .debit_account_id = 77 };
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(amount_must_not_be_zero));
    t = (nv_ledger_transfer){ BASE, .id = 1001, .debit_account_id = 6, .amount = MAX, .credit_account_id = 11 };
    db_run(d, &t, 1, &r); /* closed before overflow */
    CHECK_INT_EQ(r, TR(debit_account_already_closed));
    t = (nv_ledger_transfer){ BASE, .id = 1002, .debit_account_id = 4, .credit_account_id = 11, .amount = 101 };
    db_run(d, &t, 1, &r); /* overflow before limits */
    CHECK_INT_EQ(r, TR(overflows_credits_posted));
    db_free(d);
}

static void test_result_names(void)
{
    CHECK(strcmp(nv_ledger_result_name(TR(ok)), "ok") == 0);
    CHECK(strcmp(nv_ledger_result_name(TR(exceeds_debits)), "exceeds_debits") == 0);
    CHECK(strcmp(nv_ledger_result_name(TR(pending_transfer_expired)), "pending_transfer_expired") == 0);
    CHECK(strcmp(nv_ledger_result_name(NV_LEDGER_TR_COUNT_), "?") == 0);
    CHECK(strcmp(nv_ledger_account_result_name(AR(code_must_not_be_zero)), "code_must_not_be_zero") == 0);
    CHECK(strcmp(nv_ledger_account_result_name(NV_LEDGER_AR_COUNT_), "?") == 0);
    char buf[40];
    CHECK(strcmp(nv_ledger_u128_str(MAX, buf), "340282366920938463463374607431768211455") == 0);
    CHECK(strcmp(nv_ledger_u128_str(0, buf), "0") == 0);
    int neg;
    CHECK(nv_ledger_delta(5, 3, &neg) == 2 && neg == 1);
    CHECK(nv_ledger_delta(3, MAX, &neg) == MAX - 3 && neg == 0);
}

/* ---- every create_accounts code ------------------------------------------------------ */

static void test_every_account_code(void)
{
    struct { nv_ledger_account a; nv_ledger_account_result want; } cases[] = {
        { { .id = 50, .ledger = 1, .code = 1 }, AR(ok) },
        { { .id = 50, .ledger = 1, .code = 1, .timestamp = 1 }, AR(timestamp_must_be_zero) },
        { { .id = 50, .ledger = 1, .code = 1, .flags = 1u << 4 }, AR(reserved_flag) },
        { { .id = 0, .ledger = 1, .code = 1 }, AR(id_must_not_be_zero) },
        { { .id = MAX, .ledger = 1, .code = 1 }, AR(id_must_not_be_int_max) },
        { { .id = 1, .ledger = 1, .code = 1, .flags = NV_LEDGER_ACCOUNT_HISTORY }, AR(exists_with_different_flags) },
        { { .id = 1, .ledger = 1, .code = 1, .user_data_128 = 1 }, AR(exists_with_different_user_data_128) },
        { { .id = 1, .ledger = 1, .code = 1, .user_data_64 = 1 }, AR(exists_with_different_user_data_64) },
        { { .id = 1, .ledger = 1, .code = 1, .user_data_32 = 1 }, AR(exists_with_different_user_data_32) },
        { { .id = 1, .ledger = 2, .code = 1 }, AR(exists_with_different_ledger) },
        { { .id = 1, .ledger = 1, .code = 2 }, AR(exists_with_different_code) },
        { { .id = 1, .ledger = 1, .code = 1 }, AR(exists) },
        { { .id = 50, .ledger = 1, .code = 1, .flags = 6 }, AR(flags_are_mutually_exclusive) },
        { { .id = 50, .ledger = 1, .code = 1, .debits_pending = 1 }, AR(debits_pending_must_be_zero) },
        { { .id = 50, .ledger = 1, .code = 1, .debits_posted = 1 }, AR(debits_posted_must_be_zero) },
        { { .id = 50, .ledger = 1, .code = 1, .credits_pending = 1 }, AR(credits_pending_must_be_zero) },
        { { .id = 50, .ledger = 1, .code = 1, .credits_posted = 1 }, AR(credits_posted_must_be_zero) },
        { { .id = 50, .ledger = 0, .code = 1 }, AR(ledger_must_not_be_zero) },
        { { .id = 50, .ledger = 1, .code = 0 }, AR(code_must_not_be_zero) },
    };
    int reached[NV_LEDGER_AR_COUNT_] = { 0 };
    for (size_t i = 0; i < NV_ARRAY_LEN(cases); i++) {
        db *d = db_new();
        nv_ledger_account a = account(1, 1, 0);
        a.timestamp = 1;
        db_add_account(d, a);
        nv_ledger_account_result r;
        run_out o = db_run_accounts(d, &cases[i].a, 1, &r);
        CHECK(!o.err);
        if (r != cases[i].want) printf("  account case %zu: got %s\n", i, nv_ledger_account_result_name(r));
        CHECK_INT_EQ(r, cases[i].want);
        CHECK_INT_EQ(o.accounts, r == AR(ok) ? 1 : 0);
        reached[r] = 1;
        db_free(d);
    }
    /* chains: a failure rolls back the accounts created before it; an open chain fails */
    db *d = db_new();
    nv_ledger_account b[3] = { { .id = 60, .ledger = 1, .code = 1, .flags = NV_LEDGER_ACCOUNT_LINKED },
                               { .id = 61, .ledger = 1, .code = 1, .flags = NV_LEDGER_ACCOUNT_LINKED },
                               { .id = 62, .ledger = 0, .code = 1 } };
    nv_ledger_account_result r[3];
    run_out o = db_run_accounts(d, b, 3, r);
    CHECK(!o.err && o.accounts == 0 && d->acc_n == 0);
    CHECK(r[0] == AR(linked_event_failed) && r[1] == AR(linked_event_failed) && r[2] == AR(ledger_must_not_be_zero));
    reached[r[0]] = 1;
    b[2].ledger = 1;
    b[2].flags = NV_LEDGER_ACCOUNT_LINKED;
    o = db_run_accounts(d, b, 3, r);
    CHECK(r[0] == AR(linked_event_failed) && r[2] == AR(linked_event_chain_open) && d->acc_n == 0);
    reached[r[2]] = 1;
    b[2].flags = 0;
    o = db_run_accounts(d, b, 3, r);
    CHECK(r[0] == AR(ok) && r[1] == AR(ok) && r[2] == AR(ok) && d->acc_n == 3);
    CHECK(d->acc[0].timestamp < d->acc[1].timestamp && d->acc[1].timestamp < d->acc[2].timestamp);
    db_free(d);
    for (int c = 0; c < NV_LEDGER_AR_COUNT_; c++) {
        if (!reached[c]) printf("  not reached: %s\n", nv_ledger_account_result_name(c));
        CHECK(reached[c]);
    }
}

/* ---- chains ------------------------------------------------------------------------- */

static db *two_accounts(uint16_t flags1)
{
    db *d = db_new();
    nv_ledger_account a = account(1, 1, flags1);
    a.credits_posted = 100;
    db_add_account(d, a);
    a = account(2, 1, 0);
    a.debits_posted = 100;
    db_add_account(d, a);
    db_add_account(d, account(3, 1, 0));
    return d;
}

static void test_chain_success(void)
{
    db *d = two_accounts(NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS);
    nv_ledger_transfer b[3] = { transfer(10, 1, 2, 30, F_(LINKED)), transfer(11, 1, 3, 30, F_(LINKED)),
                                transfer(12, 1, 2, 40, 0) };
    nv_ledger_result r[3];
    run_out o = db_run(d, b, 3, r);
    CHECK(!o.err && r[0] == TR(ok) && r[1] == TR(ok) && r[2] == TR(ok) && o.rows == 3);
    CHECK(db_acc(d, 1)->debits_posted == 100);
    CHECK(d->tr[0].timestamp + 1 == d->tr[1].timestamp && d->tr[1].timestamp + 1 == d->tr[2].timestamp);
    db_free(d);
}

static void test_chain_failure_rolls_back(void)
{
    db *d = two_accounts(NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS);
    /* before | chain of three whose middle overdraws | after: the chain leaves no trace */
    nv_ledger_transfer b[5] = { transfer(9, 1, 3, 10, 0), transfer(10, 1, 2, 30, F_(LINKED)),
                                transfer(11, 1, 3, 61, F_(LINKED)), transfer(12, 1, 2, 1, 0),
                                transfer(13, 1, 3, 90, 0) };
    nv_ledger_result r[5];
    run_out o = db_run(d, b, 5, r);
    CHECK(!o.err);
    CHECK_INT_EQ(r[0], TR(ok));
    CHECK_INT_EQ(r[1], TR(linked_event_failed));
    CHECK_INT_EQ(r[2], TR(exceeds_credits));
    CHECK_INT_EQ(r[3], TR(linked_event_failed));
    CHECK_INT_EQ(r[4], TR(ok)); /* fits only because the chain's 30 was taken back */
    CHECK_INT_EQ(o.rows, 2);
    CHECK(db_acc(d, 1)->debits_posted == 100 && db_acc(d, 2)->credits_posted == 0);
    CHECK(db_acc(d, 3)->credits_posted == 100);
    /* the failed event's id is remembered (transient); the rolled-back ones are not */
    CHECK(o.failed == 1 && db_failed(d, 11) && !db_failed(d, 10));
    /* a rolled-back id is free again in the same batch and the next one */
    nv_ledger_transfer again = transfer(10, 3, 2, 5, 0);
    CHECK(!db_run(d, &again, 1, r).err && r[0] == TR(ok));
    db_free(d);
}

static void test_chain_open_and_holds_in_chain(void)
{
    db *d = two_accounts(0);
    nv_ledger_transfer b[3] = { transfer(10, 1, 2, 5, 0), transfer(11, 1, 2, 5, F_(LINKED)),
                                transfer(12, 1, 2, 5, F_(LINKED)) };
    nv_ledger_result r[3];
    run_out o = db_run(d, b, 3, r);
    CHECK(r[0] == TR(ok) && r[1] == TR(linked_event_failed) && r[2] == TR(linked_event_chain_open));
    CHECK(o.rows == 1 && o.failed == 0);
    /* a broken chain left open: the last event still says the chain was open */
    nv_ledger_transfer e[3] = { transfer(13, 1, 2, 5, F_(LINKED)), transfer(14, 1, 1, 5, F_(LINKED)),
                                transfer(15, 1, 2, 5, F_(LINKED)) };
    o = db_run(d, e, 3, r);
    CHECK(r[0] == TR(linked_event_failed) && r[1] == TR(accounts_must_be_different) && r[2] == TR(linked_event_chain_open));
    CHECK(o.rows == 0);
    /* a chain that holds then posts the hold, then fails: the hold and the post both go */
    nv_ledger_transfer c[3] = { transfer(20, 1, 3, 50, F_(LINKED) | F_(PENDING)),
                                resolve(21, 20, 20, F_(LINKED) | F_(POST_PENDING)), transfer(22, 1, 1, 5, 0) };
    o = db_run(d, c, 3, r);
    CHECK(r[0] == TR(linked_event_failed) && r[1] == TR(linked_event_failed) && r[2] == TR(accounts_must_be_different));
    CHECK(o.rows == 0 && o.accounts == 0 && db_tr(d, 20) < 0);
    c[2] = transfer(22, 1, 2, 5, 0);
    o = db_run(d, c, 3, r);
    CHECK(r[0] == TR(ok) && r[1] == TR(ok) && r[2] == TR(ok));
    CHECK(db_acc(d, 1)->debits_pending == 0 && db_acc(d, 1)->debits_posted == 5 + 20 + 5);
    CHECK(db_acc(d, 3)->credits_posted == 20 && d->status[db_tr(d, 20)] == NV_LEDGER_PENDING_POSTED);
    db_free(d);
}

/* ---- holds: post, void, expiry ---------------------------------------------------- */

static void hold(db *d, nv_u128 id, nv_u128 amount, uint32_t timeout_s)
{
    nv_ledger_transfer t = transfer(id, 1, 2, amount, F_(PENDING));
    t.timeout_s = timeout_s;
    nv_ledger_result r;
    CHECK(!db_run(d, &t, 1, &r).err);
    CHECK_INT_EQ(r, TR(ok));
}

static void test_post_void_expiry_matrix(void)
{
    /* for each state of a hold (pending, posted, voided, timed out, expired) x (post, void) */
    const nv_ledger_result want[5][2] = {
        { TR(ok), TR(ok) },
        { TR(pending_transfer_already_posted), TR(pending_transfer_already_posted) },
        { TR(pending_transfer_already_voided), TR(pending_transfer_already_voided) },
        { TR(pending_transfer_expired), TR(pending_transfer_expired) },
        { TR(pending_transfer_expired), TR(pending_transfer_expired) },
    };
    for (int s = 0; s < 5; s++) {
        for (int op = 0; op < 2; op++) {
            db *d = two_accounts(0);
            hold(d, 7, 40, s >= 3 ? 2 : 0);
            nv_ledger_result r;
            if (s == 1 || s == 2) {
                nv_ledger_transfer first = resolve(8, 7, 0, s == 1 ? F_(POST_PENDING) : F_(VOID_PENDING));
                db_run(d, &first, 1, &r);
                CHECK_INT_EQ(r, TR(ok));
            }
            d->now += 3 * S_NS; /* past the 2 s timeout */
            if (s == 4) { /* a batch that loads the hold expires it */
                nv_ledger_transfer other = resolve(9, 7, 0, F_(POST_PENDING));
                db_run(d, &other, 1, &r);
                CHECK(r == TR(pending_transfer_expired) && d->status[db_tr(d, 7)] == NV_LEDGER_PENDING_EXPIRED);
            }
            nv_ledger_transfer t = resolve(10, 7, 0, op == 0 ? F_(POST_PENDING) : F_(VOID_PENDING));
            run_out o = db_run(d, &t, 1, &r);
            if (r != want[s][op]) printf("  state %d op %d: %s\n", s, op, nv_ledger_result_name(r));
            CHECK_INT_EQ(r, want[s][op]);
            CHECK(db_acc(d, 1)->debits_pending == 0 && db_acc(d, 2)->credits_pending == 0);
            nv_u128 posted = (s == 0 && op == 0) || s == 1 ? 40 : 0;
            CHECK(db_acc(d, 1)->debits_posted == posted && db_acc(d, 2)->credits_posted == posted);
            CHECK_INT_EQ(o.rows, r == TR(ok));
            db_free(d);
        }
    }
}

/* One event may load two holds that both expire: more status changes than events (fuzz). */
static void test_more_expiries_than_events(void)
{
    db *d = two_accounts(0);
    hold(d, 7, 10, 1);
    hold(d, 8, 10, 1);
    d->now += 2 * S_NS;
    nv_ledger_transfer t = resolve(8, 7, 0, F_(POST_PENDING));
    nv_ledger_result r;
    run_out o = db_run(d, &t, 1, &r);
    CHECK(!o.err && r == TR(exists_with_different_flags) && o.pendings == 2 && o.rows == 0);
    CHECK(db_acc(d, 1)->debits_pending == 0 && db_acc(d, 2)->credits_pending == 0);
    db_free(d);
}

static void test_partial_post_and_amounts(void)
{
    db *d = two_accounts(0);
    hold(d, 7, 40, 0);
    hold(d, 8, 40, 0);
    nv_ledger_result r;
    nv_ledger_transfer t = resolve(10, 7, 15, F_(POST_PENDING));
    t.user_data_64 = 9;
    run_out o = db_run(d, &t, 1, &r);
    CHECK(r == TR(ok) && o.rows == 1 && o.pendings == 1);
    const nv_ledger_transfer *row = &d->tr[db_tr(d, 10)];
    CHECK(row->amount == 15 && row->debit_account_id == 1 && row->credit_account_id == 2 && row->ledger == 1);
    CHECK(row->user_data_64 == 9 && row->code == 1);
    /* the other 25 went back: pending only holds hold 8 */
    CHECK(db_acc(d, 1)->debits_pending == 40 && db_acc(d, 1)->debits_posted == 15);
    CHECK(db_acc(d, 2)->credits_pending == 40 && db_acc(d, 2)->credits_posted == 15);
    /* amount 0 posts the whole hold; a void's amount is 0 or the whole hold */
    t = resolve(11, 8, 0, F_(POST_PENDING));
    db_run(d, &t, 1, &r);
    CHECK(r == TR(ok) && d->tr[db_tr(d, 11)].amount == 40);
    hold(d, 9, 40, 0);
    t = resolve(12, 9, 40, F_(VOID_PENDING));
    db_run(d, &t, 1, &r);
    CHECK(r == TR(ok) && d->tr[db_tr(d, 12)].amount == 40 && db_acc(d, 1)->debits_pending == 0);
    /* the retry of the partial post is "exists"; with another amount it is not */
    t = resolve(10, 7, 15, F_(POST_PENDING));
    t.user_data_64 = 9;
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(exists));
    t.amount = 16;
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(exists_with_different_amount));
    /* a post of 0 retried as 0 is "exists" too (0 means the hold's amount) */
    t = resolve(11, 8, 0, F_(POST_PENDING));
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(exists));
    /* user data: zero on the retry means "the hold's", so it differs from a row that had its own */
    t = resolve(10, 7, 15, F_(POST_PENDING));
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(exists_with_different_user_data_64)); /* the post had user_data_64 = 9 */
    t.user_data_64 = 9;
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(exists));
    db_free(d);
}

static void test_hold_timeout_in_batch_and_counts(void)
{
    db *d = two_accounts(NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS);
    hold(d, 7, 100, 1); /* reserves all of account 1's credit */
    nv_ledger_transfer t = transfer(20, 1, 3, 1, 0);
    nv_ledger_result r;
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(exceeds_credits)); /* the hold counts while it lives */
    d->now += 2 * S_NS;
    t.id = 21;
    run_out o = db_run(d, &t, 1, &r);
    /* a batch whose accounts carry the hold sees it expire only when it loads it: the posting
     * layer loads a batch's live holds on its accounts (see docs/ledger.md); here it does not */
    CHECK_INT_EQ(r, TR(exceeds_credits));
    /* loading the hold (a void of it in the same batch) releases it first */
    nv_ledger_transfer b[2] = { resolve(22, 7, 0, F_(VOID_PENDING)), transfer(23, 1, 3, 100, 0) };
    nv_ledger_result rb[2];
    o = db_run(d, b, 2, rb);
    CHECK(rb[0] == TR(pending_transfer_expired) && rb[1] == TR(ok) && o.pendings == 1);
    CHECK(db_acc(d, 1)->debits_pending == 0 && db_acc(d, 1)->debits_posted == 100);
    db_free(d);
}

/* ---- balancing, closing, overflow at the edge ------------------------------------ */

static void test_balancing_exact_limits(void)
{
    db *d = two_accounts(NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS);
    nv_ledger_transfer b[4] = { transfer(10, 1, 3, 60, 0), transfer(11, 1, 3, 1000, F_(BALANCING_DEBIT)),
                                transfer(12, 1, 3, 5, F_(BALANCING_DEBIT)), transfer(13, 1, 3, 1, 0) };
    nv_ledger_result r[4];
    run_out o = db_run(d, b, 4, r);
    CHECK(r[0] == TR(ok) && r[1] == TR(ok) && r[2] == TR(ok) && r[3] == TR(exceeds_credits));
    CHECK(d->tr[db_tr(d, 11)].amount == 40 && d->tr[db_tr(d, 12)].amount == 0 && o.rows == 3);
    CHECK(db_acc(d, 1)->debits_posted == 100);
    /* retrying a balancing transfer with its upper bound: exists (the stored amount is smaller) */
    nv_ledger_transfer t = transfer(11, 1, 3, 1000, F_(BALANCING_DEBIT));
    db_run(d, &t, 1, r);
    CHECK_INT_EQ(r[0], TR(exists));
    t.amount = 39;
    db_run(d, &t, 1, r);
    CHECK_INT_EQ(r[0], TR(exists_with_different_amount));
    /* balancing_credit against a credits_must_not_exceed_debits account: account 2 has dpo 100 */
    nv_ledger_account *a2 = db_acc(d, 2);
    a2->flags = NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS;
    t = transfer(30, 3, 2, 500, F_(BALANCING_CREDIT) | F_(PENDING));
    db_run(d, &t, 1, r);
    CHECK(r[0] == TR(ok) && d->tr[db_tr(d, 30)].amount == 100 && db_acc(d, 2)->credits_pending == 100);
    db_free(d);
}

static void test_closing_and_reopening(void)
{
    db *d = two_accounts(0);
    nv_ledger_transfer c = transfer(10, 1, 2, 0, F_(PENDING) | F_(CLOSING_DEBIT));
    nv_ledger_result r;
    db_run(d, &c, 1, &r);
    CHECK_INT_EQ(r, TR(amount_must_not_be_zero)); /* version 0.15 rule; see docs/ledger.md */
    c.amount = 1;
    db_run(d, &c, 1, &r);
    CHECK(r == TR(ok) && (db_acc(d, 1)->flags & NV_LEDGER_ACCOUNT_CLOSED));
    nv_ledger_transfer t = transfer(11, 1, 3, 1, 0);
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(debit_account_already_closed));
    t = transfer(12, 3, 1, 1, 0);
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(credit_account_already_closed));
    /* voiding the closing hold reopens; a chain that voids then fails keeps it closed */
    nv_ledger_transfer b[2] = { resolve(13, 10, 0, F_(VOID_PENDING) | F_(LINKED)), transfer(14, 1, 1, 1, 0) };
    nv_ledger_result rb[2];
    db_run(d, b, 2, rb);
    CHECK(rb[0] == TR(linked_event_failed) && (db_acc(d, 1)->flags & NV_LEDGER_ACCOUNT_CLOSED));
    nv_ledger_transfer v = resolve(15, 10, 0, F_(VOID_PENDING));
    db_run(d, &v, 1, &r);
    CHECK(r == TR(ok) && !(db_acc(d, 1)->flags & NV_LEDGER_ACCOUNT_CLOSED));
    t = transfer(16, 1, 3, 1, 0);
    db_run(d, &t, 1, &r);
    CHECK_INT_EQ(r, TR(ok));
    /* a closing hold cannot be posted (the account is closed): it closes for good if it has no
     * timeout, unless voided */
    c = transfer(17, 1, 2, 1, F_(PENDING) | F_(CLOSING_DEBIT) | F_(CLOSING_CREDIT));
    db_run(d, &c, 1, &r);
    nv_ledger_transfer p = resolve(18, 17, 0, F_(POST_PENDING));
    db_run(d, &p, 1, &r);
    CHECK(r == TR(debit_account_already_closed) && (db_acc(d, 1)->flags & NV_LEDGER_ACCOUNT_CLOSED) &&
          (db_acc(d, 2)->flags & NV_LEDGER_ACCOUNT_CLOSED));
    /* a void of another hold on a closed account is allowed; a post of it is not */
    nv_ledger_transfer other = transfer(30, 3, 2, 1, F_(PENDING)), pv = resolve(31, 30, 0, F_(VOID_PENDING));
    db_run(d, &other, 1, &r);
    CHECK_INT_EQ(r, TR(credit_account_already_closed));
    db_add_transfer(d, (nv_ledger_transfer){ .id = 32, .debit_account_id = 3, .credit_account_id = 2, .amount = 1,
                                             .ledger = 1, .code = 1, .flags = F_(PENDING), .timestamp = 5 },
                    NV_LEDGER_PENDING_PENDING);
    db_acc(d, 3)->debits_pending += 1, db_acc(d, 2)->credits_pending += 1; /* a hold from before the closing */
    p = resolve(33, 32, 0, F_(POST_PENDING));
    db_run(d, &p, 1, &r);
    CHECK_INT_EQ(r, TR(credit_account_already_closed));
    pv.pending_id = 32;
    db_run(d, &pv, 1, &r);
    CHECK(r == TR(ok) && db_acc(d, 2)->credits_pending == 1);
    /* an expired closing hold reopens */
    db_add_account(d, account(20, 1, 0));
    c = transfer(19, 20, 3, 1, F_(PENDING) | F_(CLOSING_DEBIT));
    c.timeout_s = 1;
    db_run(d, &c, 1, &r);
    CHECK(r == TR(ok) && (db_acc(d, 20)->flags & NV_LEDGER_ACCOUNT_CLOSED));
    d->now += 2 * S_NS;
    p = resolve(21, 19, 0, F_(POST_PENDING));
    db_run(d, &p, 1, &r);
    CHECK(r == TR(pending_transfer_expired) && !(db_acc(d, 20)->flags & NV_LEDGER_ACCOUNT_CLOSED));
    db_free(d);
}

static void test_overflow_edge(void)
{
    db *d = db_new();
    db_add_account(d, account(1, 1, 0));
    db_add_account(d, account(2, 1, 0));
    nv_ledger_transfer b[3] = { transfer(10, 1, 2, MAX - 1, 0), transfer(11, 1, 2, 1, F_(PENDING)),
                                transfer(12, 1, 2, 1, 0) };
    nv_ledger_result r[3];
    run_out o = db_run(d, b, 3, r);
    /* MAX - 1 posted plus 1 pending is exactly 2^128-1 in all: fits; one more does not */
    CHECK(r[0] == TR(ok) && r[1] == TR(ok) && r[2] == TR(overflows_debits) && o.rows == 2);
    CHECK(db_acc(d, 1)->debits_posted + db_acc(d, 1)->debits_pending == MAX);
    nv_ledger_transfer p = resolve(13, 11, 0, F_(POST_PENDING));
    db_run(d, &p, 1, r);
    CHECK(r[0] == TR(ok) && db_acc(d, 1)->debits_posted == MAX && db_acc(d, 2)->credits_posted == MAX);
    db_free(d);
}

/* ---- idempotency ------------------------------------------------------------------- */

static void test_idempotent_retries(void)
{
    db *d = two_accounts(NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS);
    nv_ledger_transfer b[3] = { transfer(10, 1, 2, 60, 0), transfer(11, 1, 2, 60, 0), transfer(12, 1, 7, 1, 0) };
    nv_ledger_result r[3];
    run_out o = db_run(d, b, 3, r);
    CHECK(r[0] == TR(ok) && r[1] == TR(exceeds_credits) && r[2] == TR(credit_account_not_found));
    CHECK(o.failed == 2);
    /* money arrives and account 7 opens: the retry must still fail, never turn into a success */
    db_acc(d, 1)->credits_posted += 1000;
    db_add_account(d, account(7, 1, 0));
    o = db_run(d, b, 3, r);
    CHECK(r[0] == TR(exists) && r[1] == TR(id_already_failed) && r[2] == TR(id_already_failed));
    CHECK(o.rows == 0 && o.accounts == 0 && o.failed == 0);
    b[0].amount = 61;
    db_run(d, b, 1, r);
    CHECK_INT_EQ(r[0], TR(exists_with_different_amount));
    /* permanent failures are not remembered: the same body fails the same way */
    nv_ledger_transfer bad = transfer(13, 1, 1, 1, 0);
    o = db_run(d, &bad, 1, r);
    CHECK(r[0] == TR(accounts_must_be_different) && o.failed == 0 && !db_failed(d, 13));
    /* the same id twice in one batch: the second is judged against the first */
    nv_ledger_transfer twice[2] = { transfer(14, 1, 2, 5, 0), transfer(14, 1, 2, 5, 0) };
    db_run(d, twice, 2, r);
    CHECK(r[0] == TR(ok) && r[1] == TR(exists));
    twice[0].id = twice[1].id = 15;
    twice[0].credit_account_id = 99;
    o = db_run(d, twice, 2, r);
    CHECK_INT_EQ(r[0], TR(credit_account_not_found));
    CHECK_INT_EQ(r[1], TR(id_already_failed));
    db_free(d);
}

/* ---- the interface's edges ------------------------------------------------------------ */

static void test_interface_edges(void)
{
    CHECK(nv_ledger_state_new(0) == NULL);
    CHECK(nv_ledger_state_new(NV_LEDGER_BATCH_TRANSFERS_MAX + 1) == NULL);
    nv_ledger_state *st = nv_ledger_state_new(2);
    nv_ledger_account a = account(1, 1, 0);
    a.timestamp = 50;
    CHECK(nv_ledger_state_add_account(st, &a) == NV_OK);
    CHECK(nv_ledger_state_add_account(st, &a) == NV_ERR); /* duplicate */
    nv_ledger_account bad = account(2, 1, 0);
    bad.debits_pending = MAX, bad.debits_posted = 1;
    CHECK(nv_ledger_state_add_account(st, &bad) == NV_ERR); /* sums overflow: corrupt */
    nv_ledger_transfer t = transfer(5, 1, 2, 1, 0);
    CHECK(nv_ledger_state_add_transfer(st, &t, NV_LEDGER_PENDING_PENDING) == NV_ERR); /* not a hold */
    nv_ledger_result r[3];
    CHECK(nv_ledger_create_transfers(st, &t, 1, 49, r) == NV_ERR); /* clock behind the data */
    CHECK(nv_ledger_create_transfers(st, &t, 3, 100, r) == NV_ERR); /* above batch_max */
    CHECK(nv_ledger_create_transfers(st, &t, 1, UINT64_MAX, r) == NV_ERR); /* timestamps overflow */
    CHECK(nv_ledger_create_transfers(st, &t, 1, 100, r) == NV_OK);
    CHECK(nv_ledger_create_transfers(st, &t, 1, 200, r) == NV_ERR); /* once per reset */
    nv_ledger_state_reset(st);
    CHECK(nv_ledger_create_transfers(st, &t, 1, 200, r) == NV_OK && r[0] == TR(debit_account_not_found));
    nv_ledger_state_free(st);
    /* ids needed: distinct, sorted, without 0 and 2^128-1 */
    nv_ledger_transfer b[3] = { transfer(9, 3, 1, 1, 0), resolve(4, 9, 0, F_(POST_PENDING)), transfer(MAX, 0, 2, 1, 0) };
    nv_u128 ids[12];
    uint32_t k = nv_ledger_transfer_ids_needed(b, 3, ids);
    CHECK(k == 2 && ids[0] == 4 && ids[1] == 9);
    /* a post with a hold not loaded whose accounts are missing is the caller's error */
    st = nv_ledger_state_new(3);
    nv_ledger_transfer h = transfer(9, 3, 1, 1, F_(PENDING));
    h.timestamp = 1;
    CHECK(nv_ledger_state_add_transfer(st, &h, NV_LEDGER_PENDING_PENDING) == NV_OK);
    k = nv_ledger_account_ids_needed(st, b, 3, ids);
    CHECK(k == 3 && ids[0] == 1 && ids[1] == 2 && ids[2] == 3);
    CHECK(nv_ledger_create_transfers(st, b, 3, 100, r) == NV_ERR);
    nv_ledger_state_free(st);
    /* loading stops where the room for what the check adds begins */
    st = nv_ledger_state_new(1);
    for (int i = 0; i < 3; i++) {
        nv_ledger_transfer x = transfer(100 + i, 1, 2, 1, 0);
        CHECK_INT_EQ(nv_ledger_state_add_transfer(st, &x, NV_LEDGER_PENDING_NONE), i < 2 ? NV_OK : NV_ERR);
        CHECK_INT_EQ(nv_ledger_state_add_failed_id(st, 200 + i), i < 2 ? NV_OK : NV_ERR);
    }
    for (int i = 0; i < 4; i++) {
        nv_ledger_account x = account(300 + i, 1, 0);
        CHECK(nv_ledger_state_add_account(st, &x) == NV_OK);
    }
    nv_ledger_account fresh = { .id = 400, .ledger = 1, .code = 1 };
    nv_ledger_account_result ar;
    CHECK(nv_ledger_create_accounts(st, &fresh, 1, 100, &ar) == NV_ERR); /* no room for the new one */
    nv_ledger_state_free(st);
    /* a full batch of the largest size fits its tables */
    st = nv_ledger_state_new(NV_LEDGER_BATCH_TRANSFERS_MAX);
    CHECK(st != NULL);
    nv_ledger_state_free(st);
}

/* ---- randomized batches ---------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint32_t below(uint32_t n) { return (uint32_t)(rnd() % n); }

#define RND_ACCOUNTS 6
static const uint16_t rnd_flags[RND_ACCOUNTS] = { 0, 0, NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS,
                                                  NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS,
                                                  NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS, 0 };

static nv_u128 rnd_amount(void)
{
    switch (below(100)) {
    case 0: case 1: case 2: return 0;
    case 3: return MAX - below(3);
    case 4: return HALF + below(3);
    default: return 1 + below(100);
    }
}

static nv_u128 rnd_account(void)
{
    return below(40) == 0 ? RND_ACCOUNTS : 1 + below(RND_ACCOUNTS - 1); /* the last is alone on ledger 2 */
}

/* A recent hold's id most of the time, else any id: some posts hit non-holds or nothing. */
static nv_u128 rnd_pending_id(db *d, uint32_t id_space)
{
    for (int tries = 0; tries < 8 && d->tr_n > 0; tries++) {
        int e = d->tr_n - 1 - (int)below(d->tr_n < 64 ? (uint32_t)d->tr_n : 64);
        if ((d->tr[e].flags & F_(PENDING)) || below(8) == 0) return d->tr[e].id;
    }
    return 1 + below(id_space);
}

static nv_ledger_transfer rnd_transfer(db *d, uint32_t id_space)
{
    nv_ledger_transfer t = transfer(1 + below(id_space), rnd_account(), rnd_account(), rnd_amount(), 0);
    t.ledger = 1 + (below(30) == 0);
    uint32_t kind = below(10);
    if (kind <= 2) {
        t.flags = F_(PENDING);
        t.timeout_s = below(3);
        if (below(50) == 0) { /* closing holds time out, so accounts reopen */
            t.flags |= below(2) ? F_(CLOSING_DEBIT) : F_(CLOSING_CREDIT);
            t.timeout_s = 1;
        }
    } else if (kind <= 5) {
        t = resolve(t.id, rnd_pending_id(d, id_space), below(3) == 0 ? 0 : rnd_amount(),
                    below(2) ? F_(POST_PENDING) : F_(VOID_PENDING));
    } else if (kind == 6) {
        t.flags = below(2) ? F_(BALANCING_DEBIT) : F_(BALANCING_CREDIT);
    }
    if (below(8) == 0) t.flags |= F_(LINKED);
    if (below(200) == 0) t.flags |= F_(POST_PENDING); /* now and then a bad combination */
    return t;
}

/* Per ledger, debits equal credits; every account within its flags; the counters equal the
 * sum of the transfers; closed exactly when a live closing hold or a posted one says so. */
static int db_invariants(db *d)
{
    for (uint32_t ledger = 1; ledger <= 2; ledger++) {
        nv_u128 dp = 0, cp = 0, dpo = 0, cpo = 0;
        for (int i = 0; i < d->acc_n; i++) {
            const nv_ledger_account *a = &d->acc[i];
            if (a->ledger != ledger) continue;
            dp += a->debits_pending, cp += a->credits_pending, dpo += a->debits_posted, cpo += a->credits_posted;
        }
        if (dp != cp || dpo != cpo) return 0;
    }
    for (int i = 0; i < d->acc_n; i++) {
        const nv_ledger_account *a = &d->acc[i];
        if ((a->flags & NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS) &&
            a->debits_pending + a->debits_posted > a->credits_posted)
            return 0;
        if ((a->flags & NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS) &&
            a->credits_pending + a->credits_posted > a->debits_posted)
            return 0;
        nv_u128 sums[4] = { 0 };
        for (int e = 0; e < d->tr_n; e++) {
            const nv_ledger_transfer *t = &d->tr[e];
            int live = d->status[e] == NV_LEDGER_PENDING_PENDING;
            int posted = !(t->flags & F_(PENDING)) && !(t->flags & F_(VOID_PENDING));
            if (t->debit_account_id == a->id) sums[0] += live ? t->amount : 0, sums[1] += posted ? t->amount : 0;
            if (t->credit_account_id == a->id) sums[2] += live ? t->amount : 0, sums[3] += posted ? t->amount : 0;
        }
        if (sums[0] != a->debits_pending || sums[1] != a->debits_posted) return 0;
        if (sums[2] != a->credits_pending || sums[3] != a->credits_posted) return 0;
    }
    return 1;
}

static int count_status(db *d, nv_ledger_pending_status s)
{
    int n = 0;
    for (int i = 0; i < d->tr_n; i++) n += d->status[i] == s;
    return n;
}

static int any_overflow(const nv_ledger_result *r, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (r[i] >= TR(overflows_debits_pending) && r[i] <= TR(overflows_timeout)) return 1;
    return 0;
}

/* With DBG set in the environment: the batch that broke an invariant, then stop. */
static void dump_batch(int round, const nv_ledger_transfer *b, const nv_ledger_result *r, uint32_t n)
{
    if (getenv("DBG") == NULL) return;
    printf("round %d:\n", round);
    for (uint32_t i = 0; i < n; i++)
        printf("  id=%llu dr=%llu cr=%llu amount=%llu pending_id=%llu flags=%x timeout=%u -> %s\n",
               (unsigned long long)b[i].id, (unsigned long long)b[i].debit_account_id,
               (unsigned long long)b[i].credit_account_id, (unsigned long long)b[i].amount,
               (unsigned long long)b[i].pending_id, b[i].flags, b[i].timeout_s, nv_ledger_result_name(r[i]));
    abort();
}

static void test_random_batches(void)
{
    db *d = db_new();
    for (int i = 0; i < RND_ACCOUNTS; i++) db_add_account(d, account(1 + i, 1 + (i == 5), rnd_flags[i]));
    nv_ledger_transfer batch[16];
    nv_ledger_result r[16], r2[16];
    int bad_inv = 0, bad_retry = 0, ok_events = 0, errors = 0, hist[NV_LEDGER_TR_COUNT_] = { 0 };
    for (int round = 0; round < 3000 && d->tr_n < DB_TRANSFERS_MAX - 64; round++) {
        uint32_t n = 1 + below(16);
        for (uint32_t i = 0; i < n; i++) batch[i] = rnd_transfer(d, 40000);
        /* money in for the limited accounts now and then, from the unlimited one */
        if (below(2) == 0) batch[0] = transfer(1 + below(40000), 1 + below(2), 3 + below(3), 50 + below(500), 0);
        run_out o = db_run(d, batch, n, r);
        errors += o.err;
        for (uint32_t i = 0; i < n; i++) ok_events += r[i] == TR(ok), hist[r[i]]++;
        if (!db_invariants(d)) bad_inv++, dump_batch(round, batch, r, n);
        d->now += below(1500) * 1000000ull; /* up to 1.5 s: holds of 1-2 s expire along the way */
        /* the same batch again: nothing new, and no event turns into a success */
        uint64_t before = d->now;
        run_out o2 = db_run(d, batch, n, r2);
        errors += o2.err;
        /* overflows are permanent but not remembered (as TigerBeetle): their retry may pass */
        if (!any_overflow(r, n)) {
            for (uint32_t i = 0; i < n; i++) bad_retry += r2[i] == TR(ok);
            if (o2.rows != 0 || (o2.pendings == 0 && o2.accounts != 0)) bad_retry++;
        }
        if (!db_invariants(d)) bad_inv++;
        CHECK(d->now == before + n);
    }
    printf("  random: %d transfers stored, %d ok events, %d failed ids, %d holds expired\n", d->tr_n, ok_events,
           d->failed_n, count_status(d, NV_LEDGER_PENDING_EXPIRED));
    for (int c = 0; getenv("DBG") && c < NV_LEDGER_TR_COUNT_; c++)
        if (hist[c]) printf("  %s %d\n", nv_ledger_result_name(c), hist[c]);
    CHECK_INT_EQ(errors, 0);
    CHECK_INT_EQ(bad_inv, 0);
    CHECK_INT_EQ(bad_retry, 0);
    CHECK(ok_events > 5000);
    db_free(d);
}

/* ---- what the posting layer reads: expiry alone, balances after each row ---------- */

static void test_expire_alone(void)
{
    nv_ledger_state *st = nv_ledger_state_new(4);
    nv_ledger_account a = account(1, 1, 0), b = account(2, 1, 0);
    a.debits_pending = 30, b.credits_pending = 30;
    CHECK(nv_ledger_state_add_account(st, &a) == NV_OK && nv_ledger_state_add_account(st, &b) == NV_OK);
    nv_ledger_transfer h = transfer(9, 1, 2, 30, F_(PENDING));
    h.timeout_s = 1, h.timestamp = 5 * S_NS;
    CHECK(nv_ledger_state_add_transfer(st, &h, NV_LEDGER_PENDING_PENDING) == NV_OK);
    CHECK(nv_ledger_expire(st, 5 * S_NS - 1) == NV_ERR); /* below what is loaded: the clock went back */
    nv_ledger_state_reset(st);
    CHECK(nv_ledger_state_add_account(st, &a) == NV_OK && nv_ledger_state_add_account(st, &b) == NV_OK);
    CHECK(nv_ledger_state_add_transfer(st, &h, NV_LEDGER_PENDING_PENDING) == NV_OK);
    CHECK(nv_ledger_expire(st, 6 * S_NS - 1) == NV_OK); /* not yet due */
    const nv_ledger_pending_change *pc;
    const nv_ledger_account_change *ac;
    CHECK_INT_EQ(nv_ledger_pending_changes(st, &pc), 0);
    CHECK(nv_ledger_expire(st, 7 * S_NS) == NV_ERR); /* one check per state */
    nv_ledger_state_reset(st);
    CHECK(nv_ledger_state_add_account(st, &a) == NV_OK && nv_ledger_state_add_account(st, &b) == NV_OK);
    CHECK(nv_ledger_state_add_transfer(st, &h, NV_LEDGER_PENDING_PENDING) == NV_OK);
    CHECK(nv_ledger_expire(st, 6 * S_NS) == NV_OK); /* due at exactly timestamp + timeout */
    CHECK_INT_EQ(nv_ledger_pending_changes(st, &pc), 1);
    CHECK(pc[0].pending_id == 9 && pc[0].after == NV_LEDGER_PENDING_EXPIRED);
    CHECK_INT_EQ(nv_ledger_account_changes(st, &ac), 2);
    CHECK(ac[0].after.debits_pending == 0 && ac[1].after.credits_pending == 0);
    const nv_ledger_new_transfer *rows;
    CHECK_INT_EQ(nv_ledger_new_transfers(st, &rows), 0);
    nv_ledger_state_free(st);
}

static void test_balances_after_each_row(void)
{
    nv_ledger_state *st = nv_ledger_state_new(4);
    nv_ledger_account a = account(1, 1, 0), b = account(2, 1, 0);
    CHECK(nv_ledger_state_add_account(st, &a) == NV_OK && nv_ledger_state_add_account(st, &b) == NV_OK);
    nv_ledger_transfer batch[4] = { transfer(10, 1, 2, 5, 0), transfer(11, 2, 1, 3, F_(PENDING)),
                                    transfer(12, 1, 2, 7, F_(LINKED)), transfer(13, 1, 1, 1, 0) };
    nv_ledger_result r[4];
    CHECK(nv_ledger_create_transfers(st, batch, 4, 100, r) == NV_OK);
    CHECK(r[0] == TR(ok) && r[1] == TR(ok) && r[2] == TR(linked_event_failed) && r[3] == TR(accounts_must_be_different));
    const nv_ledger_new_transfer *rows;
    CHECK_INT_EQ(nv_ledger_new_transfers(st, &rows), 2); /* the rolled-back chain left no row */
    CHECK(rows[0].debit_after.debits_posted == 5 && rows[0].credit_after.credits_posted == 5);
    CHECK(rows[0].credit_after.debits_pending == 0);
    /* the second row sees the first: account 2 has 5 posted in, 3 pending out */
    CHECK(rows[1].debit_after.credits_posted == 5 && rows[1].debit_after.debits_pending == 3);
    CHECK(rows[1].credit_after.debits_posted == 5 && rows[1].credit_after.credits_pending == 3);
    CHECK(rows[1].transfer.timestamp == 102);
    nv_ledger_state_free(st);
}

int main(void)
{
    TEST_RUN(test_every_transfer_code_alone);
    TEST_RUN(test_precedence_pairs);
    TEST_RUN(test_result_names);
    TEST_RUN(test_every_account_code);
    TEST_RUN(test_chain_success);
    TEST_RUN(test_chain_failure_rolls_back);
    TEST_RUN(test_chain_open_and_holds_in_chain);
    TEST_RUN(test_post_void_expiry_matrix);
    TEST_RUN(test_more_expiries_than_events);
    TEST_RUN(test_partial_post_and_amounts);
    TEST_RUN(test_hold_timeout_in_batch_and_counts);
    TEST_RUN(test_balancing_exact_limits);
    TEST_RUN(test_closing_and_reopening);
    TEST_RUN(test_overflow_edge);
    TEST_RUN(test_idempotent_retries);
    TEST_RUN(test_interface_edges);
    TEST_RUN(test_random_batches);
    TEST_RUN(test_expire_alone);
    TEST_RUN(test_balances_after_each_row);
    return TEST_DONE();
}
