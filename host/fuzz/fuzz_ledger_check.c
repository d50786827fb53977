/* fuzz_ledger_check.c -- libFuzzer target: batches of transfers chosen by the input, checked for the ledger's invariants after each. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger_check.h"

#define FUZZ_ACCOUNTS 6          /* accounts 1..6; 6 is alone on ledger 2 */
#define FUZZ_BATCH_MAX 16        /* events per batch */
#define FUZZ_BATCHES_MAX 48      /* batches per input */
#define FUZZ_ROWS_MAX (FUZZ_BATCH_MAX * FUZZ_BATCHES_MAX)
#define FUZZ_EVENT_BYTES 6       /* input bytes that make one event */
#define S_NS 1000000000ull

/* An invariant broke: say which and crash, so libFuzzer keeps the input. */
#define REQUIRE(cond)                                                              \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                               \
        }                                                                          \
    } while (0)

/* The posting layer's database, as plain arrays. */
typedef struct world {
    nv_ledger_account acc[FUZZ_ACCOUNTS];
    nv_ledger_transfer tr[FUZZ_ROWS_MAX];
    uint8_t status[FUZZ_ROWS_MAX];
    int tr_n;
    nv_u128 failed[FUZZ_ROWS_MAX];
    int failed_n;
    uint64_t now;
} world;

static world w;

static int find_tr(nv_u128 id)
{
    for (int i = 0; i < w.tr_n; i++)
        if (w.tr[i].id == id) return i;
    return -1;
}

static int is_failed(nv_u128 id)
{
    for (int i = 0; i < w.failed_n; i++)
        if (w.failed[i] == id) return 1;
    return 0;
}

static void load(nv_ledger_state *st, const nv_ledger_transfer *b, uint32_t n)
{
    nv_u128 ids[4 * FUZZ_BATCH_MAX];
    uint32_t k = nv_ledger_transfer_ids_needed(b, n, ids);
    REQUIRE(k <= 2 * n);
    for (uint32_t i = 0; i < k; i++) {
        REQUIRE(i == 0 || ids[i - 1] < ids[i]);
        int e = find_tr(ids[i]);
        if (e >= 0) REQUIRE(nv_ledger_state_add_transfer(st, &w.tr[e], w.status[e]) == NV_OK);
        if (is_failed(ids[i])) REQUIRE(nv_ledger_state_add_failed_id(st, ids[i]) == NV_OK);
    }
    k = nv_ledger_account_ids_needed(st, b, n, ids);
    REQUIRE(k <= 4 * n);
    for (uint32_t i = 0; i < k; i++) {
        REQUIRE(i == 0 || ids[i - 1] < ids[i]);
        if (ids[i] >= 1 && ids[i] <= FUZZ_ACCOUNTS) REQUIRE(nv_ledger_state_add_account(st, &w.acc[ids[i] - 1]) == NV_OK);
    }
}

/* Writes the effects back, each "before" matching what the world holds; returns new rows. */
static uint32_t store(nv_ledger_state *st, uint64_t ts_first)
{
    const nv_ledger_new_transfer *rows;
    const nv_ledger_account_change *ch;
    const nv_ledger_pending_change *pc;
    const nv_u128 *failed;
    uint32_t n = nv_ledger_new_transfers(st, &rows);
    for (uint32_t i = 0; i < n; i++) {
        REQUIRE(find_tr(rows[i].transfer.id) < 0 && w.tr_n < FUZZ_ROWS_MAX);
        REQUIRE(rows[i].transfer.timestamp >= ts_first && (i == 0 || rows[i - 1].transfer.timestamp < rows[i].transfer.timestamp));
        w.tr[w.tr_n] = rows[i].transfer;
        w.status[w.tr_n++] = (uint8_t)rows[i].status;
    }
    uint32_t m = nv_ledger_account_changes(st, &ch);
    for (uint32_t i = 0; i < m; i++) {
        nv_u128 id = ch[i].after.id;
        REQUIRE(!ch[i].created && id >= 1 && id <= FUZZ_ACCOUNTS && (i == 0 || ch[i - 1].after.id < id));
        nv_ledger_account *a = &w.acc[id - 1];
        REQUIRE(a->debits_pending == ch[i].before.debits_pending && a->debits_posted == ch[i].before.debits_posted);
        REQUIRE(a->credits_pending == ch[i].before.credits_pending && a->credits_posted == ch[i].before.credits_posted);
        *a = ch[i].after;
    }
    m = nv_ledger_pending_changes(st, &pc);
    for (uint32_t i = 0; i < m; i++) {
        int e = find_tr(pc[i].pending_id);
        REQUIRE(e >= 0 && w.status[e] == pc[i].before && pc[i].before == NV_LEDGER_PENDING_PENDING);
        w.status[e] = (uint8_t)pc[i].after;
    }
    m = nv_ledger_failed_ids(st, &failed);
    for (uint32_t i = 0; i < m && w.failed_n < FUZZ_ROWS_MAX; i++) w.failed[w.failed_n++] = failed[i];
    return n;
}

/* Σ debits = Σ credits per ledger, limits kept, counters equal to the transfers' sums. */
static void check_world(void)
{
    nv_u128 sum[2][4] = { { 0 } };
    for (int i = 0; i < FUZZ_ACCOUNTS; i++) {
        const nv_ledger_account *a = &w.acc[i];
        nv_u128 *s = sum[a->ledger - 1];
        s[0] += a->debits_pending, s[1] += a->credits_pending, s[2] += a->debits_posted, s[3] += a->credits_posted;
        if (a->flags & NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS)
            REQUIRE(a->debits_pending + a->debits_posted <= a->credits_posted);
        if (a->flags & NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS)
            REQUIRE(a->credits_pending + a->credits_posted <= a->debits_posted);
        nv_u128 t[4] = { 0 };
        for (int e = 0; e < w.tr_n; e++) {
            const nv_ledger_transfer *x = &w.tr[e];
            nv_u128 live = w.status[e] == NV_LEDGER_PENDING_PENDING ? x->amount : 0;
            nv_u128 posted = (x->flags & (NV_LEDGER_TRANSFER_PENDING | NV_LEDGER_TRANSFER_VOID_PENDING)) ? 0 : x->amount;
            if (x->debit_account_id == a->id) t[0] += live, t[2] += posted;
            if (x->credit_account_id == a->id) t[1] += live, t[3] += posted;
        }
        REQUIRE(t[0] == a->debits_pending && t[1] == a->credits_pending);
        REQUIRE(t[2] == a->debits_posted && t[3] == a->credits_posted);
    }
    for (int l = 0; l < 2; l++) REQUIRE(sum[l][0] == sum[l][1] && sum[l][2] == sum[l][3]);
}

static nv_u128 amount_of(uint8_t b)
{
    switch (b >> 5) {
    case 0: return b & 1 ? 0 : ~(nv_u128)0 - (b & 3);
    case 1: return ((nv_u128)1 << 127) + (b & 7);
    default: return b & 31;
    }
}

static nv_ledger_transfer event_of(const uint8_t *p)
{
    nv_ledger_transfer t = { 0 };
    t.id = 1 + (p[0] & 63);
    t.flags = (uint16_t)(p[1] | ((p[5] & 0x80) << 1)); /* every flag, bit 8 (reserved) now and then */
    t.debit_account_id = p[2] & 7; /* 0 and 7 are ids without an account */
    t.credit_account_id = p[2] >> 5;
    t.amount = amount_of(p[3]);
    t.ledger = 1 + ((p[5] >> 4) & 1);
    t.code = (p[5] & 8) ? 0 : 1;
    t.timeout_s = p[5] & 3;
    if (t.flags & (NV_LEDGER_TRANSFER_POST_PENDING | NV_LEDGER_TRANSFER_VOID_PENDING)) {
        /* mostly a stored transfer's id, else any small id */
        t.pending_id = w.tr_n > 0 && (p[4] & 1) ? w.tr[(p[4] >> 1) % w.tr_n].id : 1 + (p[4] & 63);
        if (p[5] & 4) t.debit_account_id = t.credit_account_id = 0, t.ledger = 0, t.code = 0;
    }
    return t;
}

/* Runs a batch; with retry set, checks that no event succeeds again. Returns whether an
 * event overflowed: overflows are permanent but not remembered (as TigerBeetle), so a retry
 * of such a batch may pass and is not checked. */
static int run_batch(const nv_ledger_transfer *b, uint32_t n, int retry)
{
    nv_ledger_state *st = nv_ledger_state_new(n);
    REQUIRE(st != NULL);
    load(st, b, n);
    nv_ledger_result r[FUZZ_BATCH_MAX];
    REQUIRE(nv_ledger_create_transfers(st, b, n, w.now, r) == NV_OK);
    uint32_t ok = 0;
    int overflow = 0;
    for (uint32_t i = 0; i < n; i++) {
        REQUIRE((unsigned)r[i] < NV_LEDGER_TR_COUNT_);
        ok += r[i] == NV_LEDGER_TR_ok;
        overflow |= r[i] >= NV_LEDGER_TR_overflows_debits_pending && r[i] <= NV_LEDGER_TR_overflows_timeout;
        REQUIRE(!retry || r[i] != NV_LEDGER_TR_ok); /* a retry never turns into a success */
    }
    REQUIRE(store(st, w.now + 1) == ok);
    w.now += n;
    nv_ledger_state_free(st);
    check_world();
    return overflow;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    memset(&w, 0, sizeof(w));
    w.now = 10 * S_NS;
    for (int i = 0; i < FUZZ_ACCOUNTS; i++) {
        w.acc[i] = (nv_ledger_account){ .id = (nv_u128)(i + 1), .ledger = i == 5 ? 2 : 1, .code = 1, .timestamp = 1 };
        if (size > 0) w.acc[i].flags = (uint16_t)((data[0] >> i) & 1 ? (i & 1 ? 2 : 4) : 0);
    }
    size_t at = size > 0 ? 1 : 0;
    for (int batch = 0; batch < FUZZ_BATCHES_MAX && at + 1 < size; batch++) {
        uint32_t n = 1 + data[at] % FUZZ_BATCH_MAX;
        uint64_t advance_ms = (uint64_t)data[at + 1] * 10;
        at += 2;
        nv_ledger_transfer b[FUZZ_BATCH_MAX];
        uint32_t k = 0;
        for (; k < n && at + FUZZ_EVENT_BYTES <= size; k++, at += FUZZ_EVENT_BYTES) b[k] = event_of(data + at);
        if (k == 0) break;
        int overflow = run_batch(b, k, 0);
        run_batch(b, k, !overflow); /* the same batch again */
        w.now += advance_ms * 1000000ull;
    }
    return 0;
}
