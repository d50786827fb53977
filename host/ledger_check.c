/* ledger_check.c -- decides each event of a ledger batch in TigerBeetle's order of precedence and gathers its effects. */
#include "ledger_check.h"

#include <stdlib.h>
#include <string.h>

#include "nv_limits.h"

#define NS_PER_S 1000000000ull
#define NONE UINT32_MAX

_Static_assert(NV_LEDGER_TR_ok == 0 && NV_LEDGER_AR_ok == 0, "ok is 0 in both result sets");
_Static_assert(NV_LEDGER_TR_linked_event_failed == (int)NV_LEDGER_AR_linked_event_failed &&
                   NV_LEDGER_TR_linked_event_chain_open == (int)NV_LEDGER_AR_linked_event_chain_open,
               "the chain codes have the same number in both result sets");
_Static_assert(NV_LEDGER_BATCH_TRANSFERS_MAX * NV_LEDGER_ACCOUNTS_PER_EVENT < (1 << 28),
               "table sizes fit in 32 bits with room for the load factor");

/* An open-addressing index of 128-bit keys to entry numbers; entries are appended, never moved;
 * a rolled-back entry stays as a tombstone (dead) so probing runs past it. */
typedef struct ledger_index {
    uint32_t *slots; /* entry + 1; 0 is empty */
    uint32_t mask;
    nv_u128 *keys;
    uint8_t *dead;
    uint32_t count, cap;
} ledger_index;

/* What an applied event did, to take it back when its chain fails: the debit account's
 * debits and the credit account's credits always move by the same amounts. */
typedef struct ledger_undo {
    uint32_t dr, cr;        /* account entries */
    uint32_t row;           /* the transfer or account entry it added */
    uint32_t hold;          /* the hold it resolved, or NONE */
    nv_u128 pending_add, pending_sub, posted_add;
    int8_t dr_closed, cr_closed; /* +1: it closed the account, -1: it reopened it */
    uint8_t hold_status;    /* status of the hold before */
} ledger_undo;

struct nv_ledger_state {
    uint32_t batch_max;
    int checked;       /* one check per reset */
    uint64_t ts_loaded_max;
    ledger_index acc_ix;
    nv_ledger_account *acc, *acc_before;
    uint8_t *acc_created;
    ledger_index tr_ix;
    nv_ledger_transfer *tr;
    nv_ledger_balance *tr_after; /* per entry: debit then credit account counters after it */
    uint8_t *tr_status, *tr_status_before, *tr_new;
    ledger_index failed_ix;
    nv_u128 *failed_new;
    uint32_t failed_new_n;
    ledger_undo *undo;
    nv_ledger_new_transfer *out_rows;
    uint32_t out_rows_n;
    nv_ledger_account_change *out_acc;
    uint32_t out_acc_n;
    nv_ledger_pending_change *out_pend;
    uint32_t out_pend_n;
};

/* ---- names ---------------------------------------------------------------------------- */

#define NV_LEDGER_NAME_(name) #name,
static const char *const transfer_names[] = { NV_LEDGER_TRANSFER_RESULTS(NV_LEDGER_NAME_) };
static const char *const account_names[] = { NV_LEDGER_ACCOUNT_RESULTS(NV_LEDGER_NAME_) };

const char *nv_ledger_result_name(nv_ledger_result r)
{
    return (unsigned)r < NV_ARRAY_LEN(transfer_names) ? transfer_names[r] : "?";
}

const char *nv_ledger_account_result_name(nv_ledger_account_result r)
{
    return (unsigned)r < NV_ARRAY_LEN(account_names) ? account_names[r] : "?";
}

int nv_ledger_result_is_transient(nv_ledger_result r)
{
    switch (r) {
    case NV_LEDGER_TR_debit_account_not_found:
    case NV_LEDGER_TR_credit_account_not_found:
    case NV_LEDGER_TR_pending_transfer_not_found:
    case NV_LEDGER_TR_debit_account_already_closed:
    case NV_LEDGER_TR_credit_account_already_closed:
    case NV_LEDGER_TR_exceeds_credits:
    case NV_LEDGER_TR_exceeds_debits:
        return 1;
    default:
        return 0;
    }
}

/* ---- 128-bit helpers ---------------------------------------------------------------- */

static int add_overflows(nv_u128 a, nv_u128 b) { return a + b < a; }

static nv_u128 min_u128(nv_u128 a, nv_u128 b) { return a < b ? a : b; }

nv_u128 nv_ledger_delta(nv_u128 before, nv_u128 after, int *negative)
{
    *negative = after < before;
    return after >= before ? after - before : before - after;
}

char *nv_ledger_u128_str(nv_u128 v, char buf[40])
{
    char tmp[40];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v != 0);
    nv_assert(n <= 39);
    for (int i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    buf[n] = '\0';
    return buf;
}

static int cmp_u128(const void *a, const void *b)
{
    nv_u128 x = *(const nv_u128 *)a, y = *(const nv_u128 *)b;
    return x < y ? -1 : x > y;
}

/* ---- the index ------------------------------------------------------------------------ */

static uint32_t hash_u128(nv_u128 k)
{
    uint64_t x = (uint64_t)k ^ ((uint64_t)(k >> 64) * 0x9e3779b97f4a7c15ull);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* The live entry with this key, or NONE. */
static uint32_t ix_find(const ledger_index *ix, nv_u128 key)
{
    for (uint32_t h = hash_u128(key) & ix->mask, probes = 0; probes <= ix->mask; probes++) {
        uint32_t e = ix->slots[h];
        if (e == 0) return NONE;
        if (ix->keys[e - 1] == key && !ix->dead[e - 1]) return e - 1;
        h = (h + 1) & ix->mask;
    }
    return NONE; /* unreachable: the table is at most half full */
}

/* Appends an entry for key (not already live); NONE when full. */
static uint32_t ix_add(ledger_index *ix, nv_u128 key)
{
    if (ix->count == ix->cap) return NONE;
    nv_assert(ix_find(ix, key) == NONE);
    uint32_t h = hash_u128(key) & ix->mask;
    while (ix->slots[h] != 0) h = (h + 1) & ix->mask;
    uint32_t e = ix->count++;
    ix->keys[e] = key;
    ix->dead[e] = 0;
    ix->slots[h] = e + 1;
    return e;
}

static void ix_clear(ledger_index *ix)
{
    memset(ix->slots, 0, ((size_t)ix->mask + 1) * sizeof(uint32_t));
    ix->count = 0;
}

/* ---- the arena ------------------------------------------------------------------------ */

typedef struct arena {
    char *base;
    size_t used;
} arena;

/* Carves n bytes, 16-aligned; with base NULL it only counts. */
static void *carve(arena *a, size_t n)
{
    size_t at = (a->used + 15) & ~(size_t)15;
    a->used = at + n;
    return a->base != NULL ? a->base + at : NULL;
}

static void ix_carve(arena *a, ledger_index *ix, uint32_t cap)
{
    uint32_t size = 16;
    while (size < 2 * cap) size *= 2; /* at most half full: probes stay short */
    ix->mask = size - 1;
    ix->cap = cap;
    ix->slots = carve(a, (size_t)size * sizeof(uint32_t));
    ix->keys = carve(a, (size_t)cap * sizeof(nv_u128));
    ix->dead = carve(a, cap);
}

static void state_carve(arena *a, nv_ledger_state *st, uint32_t n)
{
    uint32_t accs = n * NV_LEDGER_ACCOUNTS_PER_EVENT, trs = n * NV_LEDGER_TRANSFERS_PER_EVENT;
    ix_carve(a, &st->acc_ix, accs);
    st->acc = carve(a, accs * sizeof(nv_ledger_account));
    st->acc_before = carve(a, accs * sizeof(nv_ledger_account));
    st->acc_created = carve(a, accs);
    ix_carve(a, &st->tr_ix, trs);
    st->tr = carve(a, trs * sizeof(nv_ledger_transfer));
    st->tr_after = carve(a, 2 * trs * sizeof(nv_ledger_balance));
    st->tr_status = carve(a, trs);
    st->tr_status_before = carve(a, trs);
    st->tr_new = carve(a, trs);
    ix_carve(a, &st->failed_ix, n * NV_LEDGER_FAILED_IDS_PER_EVENT);
    st->failed_new = carve(a, n * sizeof(nv_u128));
    st->undo = carve(a, n * sizeof(ledger_undo));
    st->out_rows = carve(a, n * sizeof(nv_ledger_new_transfer));
    st->out_acc = carve(a, accs * sizeof(nv_ledger_account_change));
    st->out_pend = carve(a, trs * sizeof(nv_ledger_pending_change)); /* every loaded hold may expire */
}

nv_ledger_state *nv_ledger_state_new(uint32_t batch_max)
{
    if (batch_max == 0 || batch_max > NV_LEDGER_BATCH_TRANSFERS_MAX) return NULL;
    nv_ledger_state probe;
    arena a = { NULL, sizeof(nv_ledger_state) };
    state_carve(&a, &probe, batch_max);
    size_t bytes = (a.used + 15) & ~(size_t)15;
    char *base = aligned_alloc(16, bytes);
    if (base == NULL) return NULL;
    nv_ledger_state *st = (nv_ledger_state *)base;
    memset(st, 0, sizeof(*st));
    a = (arena){ base, sizeof(nv_ledger_state) };
    state_carve(&a, st, batch_max);
    st->batch_max = batch_max;
    nv_ledger_state_reset(st);
    return st;
}

void nv_ledger_state_free(nv_ledger_state *st) { free(st); }

void nv_ledger_state_reset(nv_ledger_state *st)
{
    ix_clear(&st->acc_ix);
    ix_clear(&st->tr_ix);
    ix_clear(&st->failed_ix);
    st->failed_new_n = 0;
    st->out_rows_n = st->out_acc_n = st->out_pend_n = 0;
    st->ts_loaded_max = 0;
    st->checked = 0;
}

/* ---- loading ------------------------------------------------------------------------ */

int nv_ledger_state_add_account(nv_ledger_state *st, const nv_ledger_account *a)
{
    if (st->checked || a->id == 0 || a->id == NV_LEDGER_U128_MAX) return NV_ERR;
    if (add_overflows(a->debits_pending, a->debits_posted)) return NV_ERR;
    if (add_overflows(a->credits_pending, a->credits_posted)) return NV_ERR;
    if (ix_find(&st->acc_ix, a->id) != NONE) return NV_ERR;
    uint32_t e = ix_add(&st->acc_ix, a->id);
    if (e == NONE) return NV_ERR;
    st->acc[e] = *a;
    st->acc_before[e] = *a;
    st->acc_created[e] = 0;
    if (a->timestamp > st->ts_loaded_max) st->ts_loaded_max = a->timestamp;
    return NV_OK;
}

int nv_ledger_state_add_transfer(nv_ledger_state *st, const nv_ledger_transfer *t,
                                 nv_ledger_pending_status status)
{
    int hold = (t->flags & NV_LEDGER_TRANSFER_PENDING) != 0;
    if (st->checked || t->id == 0 || t->id == NV_LEDGER_U128_MAX) return NV_ERR;
    if (hold != (status != NV_LEDGER_PENDING_NONE) || status > NV_LEDGER_PENDING_EXPIRED) return NV_ERR;
    if (ix_find(&st->tr_ix, t->id) != NONE) return NV_ERR;
    /* the last batch_max entries are for the rows the check adds */
    if (st->tr_ix.count >= st->tr_ix.cap - st->batch_max) return NV_ERR;
    uint32_t e = ix_add(&st->tr_ix, t->id);
    if (e == NONE) return NV_ERR;
    st->tr[e] = *t;
    st->tr_status[e] = st->tr_status_before[e] = (uint8_t)status;
    st->tr_new[e] = 0;
    if (t->timestamp > st->ts_loaded_max) st->ts_loaded_max = t->timestamp;
    return NV_OK;
}

int nv_ledger_state_add_failed_id(nv_ledger_state *st, nv_u128 id)
{
    if (st->checked) return NV_ERR;
    if (ix_find(&st->failed_ix, id) != NONE) return NV_OK;
    /* the last batch_max entries are for the ids the check adds */
    if (st->failed_ix.count >= st->failed_ix.cap - st->batch_max) return NV_ERR;
    return ix_add(&st->failed_ix, id) == NONE ? NV_ERR : NV_OK;
}

/* ---- what a batch needs ------------------------------------------------------------- */

/* Sorts ids[0..n), drops duplicates, 0 and 2^128-1; returns the count kept. */
static uint32_t ids_normalise(nv_u128 *ids, uint32_t n)
{
    qsort(ids, n, sizeof(nv_u128), cmp_u128);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (ids[i] == 0 || ids[i] == NV_LEDGER_U128_MAX) continue;
        if (k > 0 && ids[k - 1] == ids[i]) continue;
        ids[k++] = ids[i];
    }
    return k;
}

uint32_t nv_ledger_transfer_ids_needed(const nv_ledger_transfer *batch, uint32_t n, nv_u128 *out)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        out[k++] = batch[i].id;
        out[k++] = batch[i].pending_id;
    }
    return ids_normalise(out, k);
}

uint32_t nv_ledger_account_ids_needed(const nv_ledger_state *st, const nv_ledger_transfer *batch,
                                      uint32_t n, nv_u128 *out)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        out[k++] = batch[i].debit_account_id;
        out[k++] = batch[i].credit_account_id;
        if (batch[i].pending_id == 0) continue;
        uint32_t h = ix_find(&st->tr_ix, batch[i].pending_id);
        if (h == NONE) continue;
        out[k++] = st->tr[h].debit_account_id;
        out[k++] = st->tr[h].credit_account_id;
    }
    return ids_normalise(out, k);
}

/* ---- holds ------------------------------------------------------------------------------ */

/* A closing hold that ends unposted reopens its account; 1 when it did. */
static int reopen(nv_ledger_account *a, int closing)
{
    if (!closing || !(a->flags & NV_LEDGER_ACCOUNT_CLOSED)) return 0;
    a->flags &= (uint16_t)~NV_LEDGER_ACCOUNT_CLOSED;
    return 1;
}

static int hold_expired_at(const nv_ledger_transfer *p, uint64_t ts)
{
    uint64_t timeout_ns = (uint64_t)p->timeout_s * NS_PER_S;
    if (p->timeout_s == 0) return 0;
    /* overflows_timeout keeps our holds' deadlines in range; a loaded row past it never expires */
    if (timeout_ns > UINT64_MAX - p->timestamp) return 0;
    return p->timestamp + timeout_ns <= ts;
}

/* The hold in entry h stops counting: its pending amounts go back, a closing hold reopens. */
static void hold_expire(nv_ledger_state *st, uint32_t h)
{
    const nv_ledger_transfer *p = &st->tr[h];
    uint32_t dr = ix_find(&st->acc_ix, p->debit_account_id);
    uint32_t cr = ix_find(&st->acc_ix, p->credit_account_id);
    nv_assert(st->tr_status[h] == NV_LEDGER_PENDING_PENDING && dr != NONE && cr != NONE);
    nv_assert(st->acc[dr].debits_pending >= p->amount && st->acc[cr].credits_pending >= p->amount);
    st->acc[dr].debits_pending -= p->amount;
    st->acc[cr].credits_pending -= p->amount;
    reopen(&st->acc[dr], p->flags & NV_LEDGER_TRANSFER_CLOSING_DEBIT);
    reopen(&st->acc[cr], p->flags & NV_LEDGER_TRANSFER_CLOSING_CREDIT);
    st->tr_status[h] = NV_LEDGER_PENDING_EXPIRED;
}

/* Before the first event: holds a post or void of the batch names must have their accounts
 * loaded; every loaded hold whose accounts are loaded and whose time is up expires. */
static int holds_prepare(nv_ledger_state *st, const nv_ledger_transfer *batch, uint32_t n, uint64_t now)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t h = batch[i].pending_id != 0 ? ix_find(&st->tr_ix, batch[i].pending_id) : NONE;
        if (h == NONE || !(st->tr[h].flags & NV_LEDGER_TRANSFER_PENDING)) continue;
        if (ix_find(&st->acc_ix, st->tr[h].debit_account_id) == NONE) return NV_ERR;
        if (ix_find(&st->acc_ix, st->tr[h].credit_account_id) == NONE) return NV_ERR;
    }
    for (uint32_t h = 0; h < st->tr_ix.count; h++) {
        if (st->tr_status[h] != NV_LEDGER_PENDING_PENDING || !hold_expired_at(&st->tr[h], now)) continue;
        if (ix_find(&st->acc_ix, st->tr[h].debit_account_id) == NONE) continue;
        if (ix_find(&st->acc_ix, st->tr[h].credit_account_id) == NONE) continue;
        hold_expire(st, h);
    }
    return NV_OK;
}

/* ---- applying and taking back -------------------------------------------------------- */

static void apply(nv_ledger_state *st, const ledger_undo *u)
{
    nv_ledger_account *dr = &st->acc[u->dr], *cr = &st->acc[u->cr];
    nv_assert(dr->debits_pending >= u->pending_sub && cr->credits_pending >= u->pending_sub);
    dr->debits_pending = dr->debits_pending - u->pending_sub + u->pending_add;
    cr->credits_pending = cr->credits_pending - u->pending_sub + u->pending_add;
    dr->debits_posted += u->posted_add;
    cr->credits_posted += u->posted_add;
    nv_assert(!add_overflows(dr->debits_pending, dr->debits_posted));
    nv_assert(!add_overflows(cr->credits_pending, cr->credits_posted));
}

static void transfer_undo(nv_ledger_state *st, uint32_t i)
{
    const ledger_undo *u = &st->undo[i];
    nv_ledger_account *dr = &st->acc[u->dr], *cr = &st->acc[u->cr];
    dr->debits_posted -= u->posted_add;
    cr->credits_posted -= u->posted_add;
    dr->debits_pending = dr->debits_pending - u->pending_add + u->pending_sub;
    cr->credits_pending = cr->credits_pending - u->pending_add + u->pending_sub;
    /* only the closed bits this event moved: an expiry since then keeps its own */
    if (u->dr_closed > 0) dr->flags &= (uint16_t)~NV_LEDGER_ACCOUNT_CLOSED;
    if (u->dr_closed < 0) dr->flags |= NV_LEDGER_ACCOUNT_CLOSED;
    if (u->cr_closed > 0) cr->flags &= (uint16_t)~NV_LEDGER_ACCOUNT_CLOSED;
    if (u->cr_closed < 0) cr->flags |= NV_LEDGER_ACCOUNT_CLOSED;
    if (u->hold != NONE) st->tr_status[u->hold] = u->hold_status;
    st->tr_ix.dead[u->row] = 1;
}

static void account_undo(nv_ledger_state *st, uint32_t i) { st->acc_ix.dead[st->undo[i].row] = 1; }

/* Adds the row of an accepted transfer; the tables are sized so it always fits. */
static uint32_t row_add(nv_ledger_state *st, const nv_ledger_transfer *row, uint8_t status)
{
    uint32_t e = ix_add(&st->tr_ix, row->id);
    nv_assert(e != NONE);
    st->tr[e] = *row;
    st->tr_status[e] = st->tr_status_before[e] = status;
    st->tr_new[e] = 1;
    return e;
}

static nv_ledger_balance balance_of(const nv_ledger_account *a)
{
    return (nv_ledger_balance){ a->debits_pending, a->debits_posted, a->credits_pending, a->credits_posted };
}

/* The counters of both accounts right after the row in entry e was applied. */
static void row_snapshot(nv_ledger_state *st, uint32_t e, uint32_t dr, uint32_t cr)
{
    st->tr_after[2 * e] = balance_of(&st->acc[dr]);
    st->tr_after[2 * e + 1] = balance_of(&st->acc[cr]);
}

/* ---- create_transfers: the checks ---------------------------------------------------- */

#define R(name) NV_LEDGER_TR_##name
#define TF(t, f) (((t)->flags & NV_LEDGER_TRANSFER_##f) != 0)

static int is_post_or_void(const nv_ledger_transfer *t) { return TF(t, POST_PENDING) || TF(t, VOID_PENDING); }

/* What a post or void moves: amount 0 means the hold's whole amount. */
static nv_u128 resolve_amount(const nv_ledger_transfer *t, const nv_ledger_transfer *p)
{
    return t->amount != 0 ? t->amount : p->amount;
}

/* A post or void with this id exists: compare the fields the event gave (zero means "as
 * the hold"), in the order of precedence. */
static nv_ledger_result exists_post_void(const nv_ledger_state *st, const nv_ledger_transfer *t,
                                         const nv_ledger_transfer *e)
{
    if (t->pending_id != e->pending_id) return R(exists_with_different_pending_id);
    if (t->timeout_s != e->timeout_s) return R(exists_with_different_timeout);
    if (t->debit_account_id != 0 && t->debit_account_id != e->debit_account_id)
        return R(exists_with_different_debit_account_id);
    if (t->credit_account_id != 0 && t->credit_account_id != e->credit_account_id)
        return R(exists_with_different_credit_account_id);
    /* The row was built from the hold, which is loaded (it is this event's pending_id); a
     * caller that left it out gets the row itself as the hold: zero fields then match. */
    uint32_t h = ix_find(&st->tr_ix, e->pending_id);
    const nv_ledger_transfer *p = h != NONE ? &st->tr[h] : e;
    if (resolve_amount(t, p) != e->amount) return R(exists_with_different_amount);
    /* zero user data meant "the hold's": the retry matches only if the row took the hold's */
    if ((t->user_data_128 != 0 ? t->user_data_128 : p->user_data_128) != e->user_data_128)
        return R(exists_with_different_user_data_128);
    if ((t->user_data_64 != 0 ? t->user_data_64 : p->user_data_64) != e->user_data_64)
        return R(exists_with_different_user_data_64);
    if ((t->user_data_32 != 0 ? t->user_data_32 : p->user_data_32) != e->user_data_32)
        return R(exists_with_different_user_data_32);
    if (t->ledger != 0 && t->ledger != e->ledger) return R(exists_with_different_ledger);
    if (t->code != 0 && t->code != e->code) return R(exists_with_different_code);
    return R(exists);
}

static nv_ledger_result exists_transfer(const nv_ledger_state *st, const nv_ledger_transfer *t,
                                        const nv_ledger_transfer *e)
{
    /* the flags change the meaning of the other fields: compared first */
    if (t->flags != e->flags) return R(exists_with_different_flags);
    if (is_post_or_void(t)) return exists_post_void(st, t, e);
    if (t->pending_id != e->pending_id) return R(exists_with_different_pending_id);
    if (t->timeout_s != e->timeout_s) return R(exists_with_different_timeout);
    if (t->debit_account_id != e->debit_account_id) return R(exists_with_different_debit_account_id);
    if (t->credit_account_id != e->credit_account_id) return R(exists_with_different_credit_account_id);
    /* a balancing transfer's amount is an upper bound: the stored one may be smaller */
    int balancing = TF(t, BALANCING_DEBIT) || TF(t, BALANCING_CREDIT);
    if (balancing ? t->amount < e->amount : t->amount != e->amount) return R(exists_with_different_amount);
    if (t->user_data_128 != e->user_data_128) return R(exists_with_different_user_data_128);
    if (t->user_data_64 != e->user_data_64) return R(exists_with_different_user_data_64);
    if (t->user_data_32 != e->user_data_32) return R(exists_with_different_user_data_32);
    if (t->ledger != e->ledger) return R(exists_with_different_ledger);
    if (t->code != e->code) return R(exists_with_different_code);
    return R(exists);
}

static int flags_exclusive(const nv_ledger_transfer *t)
{
    int resolving = is_post_or_void(t);
    if (TF(t, POST_PENDING) && TF(t, VOID_PENDING)) return 1;
    if (TF(t, PENDING) && resolving) return 1;
    if ((TF(t, BALANCING_DEBIT) || TF(t, BALANCING_CREDIT)) && resolving) return 1;
    if ((TF(t, CLOSING_DEBIT) || TF(t, CLOSING_CREDIT)) && resolving) return 1;
    return 0;
}

/* Every check that needs no account: ids, duplicates, flags, fields. */
static nv_ledger_result check_head(const nv_ledger_state *st, const nv_ledger_transfer *t)
{
    if (t->timestamp != 0) return R(timestamp_must_be_zero);
    if (t->flags & ~NV_LEDGER_TRANSFER_FLAGS_KNOWN) return R(reserved_flag);
    if (t->id == 0) return R(id_must_not_be_zero);
    if (t->id == NV_LEDGER_U128_MAX) return R(id_must_not_be_int_max);
    uint32_t e = ix_find(&st->tr_ix, t->id);
    if (e != NONE) return exists_transfer(st, t, &st->tr[e]);
    if (ix_find(&st->failed_ix, t->id) != NONE) return R(id_already_failed);
    if (flags_exclusive(t)) return R(flags_are_mutually_exclusive);
    return R(ok);
}

static nv_ledger_result check_fields(const nv_ledger_transfer *t)
{
    if (!is_post_or_void(t)) {
        if (t->debit_account_id == 0) return R(debit_account_id_must_not_be_zero);
        if (t->debit_account_id == NV_LEDGER_U128_MAX) return R(debit_account_id_must_not_be_int_max);
        if (t->credit_account_id == 0) return R(credit_account_id_must_not_be_zero);
        if (t->credit_account_id == NV_LEDGER_U128_MAX) return R(credit_account_id_must_not_be_int_max);
        if (t->credit_account_id == t->debit_account_id) return R(accounts_must_be_different);
        if (t->pending_id != 0) return R(pending_id_must_be_zero);
    } else {
        if (t->pending_id == 0) return R(pending_id_must_not_be_zero);
        if (t->pending_id == NV_LEDGER_U128_MAX) return R(pending_id_must_not_be_int_max);
        if (t->pending_id == t->id) return R(pending_id_must_be_different);
    }
    if (!TF(t, PENDING) && t->timeout_s != 0) return R(timeout_reserved_for_pending_transfer);
    if (!TF(t, PENDING) && (TF(t, CLOSING_DEBIT) || TF(t, CLOSING_CREDIT))) return R(closing_transfer_must_be_pending);
    if (is_post_or_void(t)) return R(ok);
    if (t->amount == 0) return R(amount_must_not_be_zero);
    if (t->ledger == 0) return R(ledger_must_not_be_zero);
    if (t->code == 0) return R(code_must_not_be_zero);
    return R(ok);
}

/* The hold a post or void names, checked against the event; *h is its entry. */
static nv_ledger_result check_hold(nv_ledger_state *st, const nv_ledger_transfer *t, uint64_t ts, uint32_t *h)
{
    *h = ix_find(&st->tr_ix, t->pending_id);
    if (*h == NONE) return R(pending_transfer_not_found);
    const nv_ledger_transfer *p = &st->tr[*h];
    if (!(p->flags & NV_LEDGER_TRANSFER_PENDING)) return R(pending_transfer_not_pending);
    if (t->debit_account_id != 0 && t->debit_account_id != p->debit_account_id)
        return R(pending_transfer_has_different_debit_account_id);
    if (t->credit_account_id != 0 && t->credit_account_id != p->credit_account_id)
        return R(pending_transfer_has_different_credit_account_id);
    if (t->ledger != 0 && t->ledger != p->ledger) return R(pending_transfer_has_different_ledger);
    if (t->code != 0 && t->code != p->code) return R(pending_transfer_has_different_code);
    nv_u128 amount = resolve_amount(t, p);
    if (amount > p->amount) return R(exceeds_pending_transfer_amount);
    if (TF(t, VOID_PENDING) && amount < p->amount) return R(pending_transfer_has_different_amount);
    switch (st->tr_status[*h]) {
    case NV_LEDGER_PENDING_POSTED: return R(pending_transfer_already_posted);
    case NV_LEDGER_PENDING_VOIDED: return R(pending_transfer_already_voided);
    case NV_LEDGER_PENDING_EXPIRED: return R(pending_transfer_expired);
    default: break;
    }
    nv_assert(st->tr_status[*h] == NV_LEDGER_PENDING_PENDING);
    if (hold_expired_at(p, ts)) {
        hold_expire(st, *h); /* an effect of time, not of this event: never rolled back */
        return R(pending_transfer_expired);
    }
    return R(ok);
}

static nv_ledger_result post_or_void(nv_ledger_state *st, const nv_ledger_transfer *t, uint64_t ts,
                                     ledger_undo *u)
{
    uint32_t h;
    nv_ledger_result r = check_hold(st, t, ts, &h);
    if (r != R(ok)) return r;
    const nv_ledger_transfer p = st->tr[h];
    int post = TF(t, POST_PENDING);
    uint32_t dr = ix_find(&st->acc_ix, p.debit_account_id), cr = ix_find(&st->acc_ix, p.credit_account_id);
    nv_assert(dr != NONE && cr != NONE); /* holds_prepare made sure */
    /* As TigerBeetle: the only movement on a closed account is a void (it only releases), so
     * a closing hold can be voided or expire, never posted: one without timeout closes for good. */
    if (post && (st->acc[dr].flags & NV_LEDGER_ACCOUNT_CLOSED)) return R(debit_account_already_closed);
    if (post && (st->acc[cr].flags & NV_LEDGER_ACCOUNT_CLOSED)) return R(credit_account_already_closed);
    nv_u128 amount = post ? resolve_amount(t, &p) : p.amount;
    if (add_overflows(st->acc[dr].debits_posted, amount)) return R(overflows_debits_posted);
    if (add_overflows(st->acc[cr].credits_posted, amount)) return R(overflows_credits_posted);
    *u = (ledger_undo){ .dr = dr, .cr = cr, .hold = h, .pending_sub = p.amount, .posted_add = post ? amount : 0,
                        .hold_status = st->tr_status[h] };
    apply(st, u);
    if (!post) {
        u->dr_closed = (int8_t)-reopen(&st->acc[dr], p.flags & NV_LEDGER_TRANSFER_CLOSING_DEBIT);
        u->cr_closed = (int8_t)-reopen(&st->acc[cr], p.flags & NV_LEDGER_TRANSFER_CLOSING_CREDIT);
    }
    st->tr_status[h] = post ? NV_LEDGER_PENDING_POSTED : NV_LEDGER_PENDING_VOIDED;
    nv_ledger_transfer row = *t;
    row.debit_account_id = p.debit_account_id;
    row.credit_account_id = p.credit_account_id;
    row.amount = amount;
    row.ledger = p.ledger;
    row.code = p.code;
    if (row.user_data_128 == 0) row.user_data_128 = p.user_data_128;
    if (row.user_data_64 == 0) row.user_data_64 = p.user_data_64;
    if (row.user_data_32 == 0) row.user_data_32 = p.user_data_32;
    row.timestamp = ts;
    u->row = row_add(st, &row, NV_LEDGER_PENDING_NONE);
    row_snapshot(st, u->row, dr, cr);
    return R(ok);
}

/* The accounts of a single-phase or pending transfer: found, same ledger, open. */
static nv_ledger_result check_accounts(const nv_ledger_state *st, const nv_ledger_transfer *t, uint32_t *dr,
                                       uint32_t *cr)
{
    *dr = ix_find(&st->acc_ix, t->debit_account_id);
    if (*dr == NONE) return R(debit_account_not_found);
    *cr = ix_find(&st->acc_ix, t->credit_account_id);
    if (*cr == NONE) return R(credit_account_not_found);
    const nv_ledger_account *d = &st->acc[*dr], *c = &st->acc[*cr];
    if (d->ledger != c->ledger) return R(accounts_must_have_the_same_ledger);
    if (t->ledger != d->ledger) return R(transfer_must_have_the_same_ledger_as_accounts);
    if (d->flags & NV_LEDGER_ACCOUNT_CLOSED) return R(debit_account_already_closed);
    if (c->flags & NV_LEDGER_ACCOUNT_CLOSED) return R(credit_account_already_closed);
    return R(ok);
}

/* A balancing transfer moves what the limit leaves, at most its amount (possibly 0). */
static nv_u128 balance_amount(const nv_ledger_transfer *t, const nv_ledger_account *d, const nv_ledger_account *c)
{
    nv_u128 amount = t->amount;
    if (TF(t, BALANCING_DEBIT)) {
        nv_u128 used = d->debits_pending + d->debits_posted;
        amount = min_u128(amount, d->credits_posted > used ? d->credits_posted - used : 0);
    }
    if (TF(t, BALANCING_CREDIT)) {
        nv_u128 used = c->credits_pending + c->credits_posted;
        amount = min_u128(amount, c->debits_posted > used ? c->debits_posted - used : 0);
    }
    return amount;
}

static nv_ledger_result check_sums(const nv_ledger_transfer *t, const nv_ledger_account *d,
                                   const nv_ledger_account *c, nv_u128 amount, uint64_t ts)
{
    if (TF(t, PENDING) && add_overflows(d->debits_pending, amount)) return R(overflows_debits_pending);
    if (TF(t, PENDING) && add_overflows(c->credits_pending, amount)) return R(overflows_credits_pending);
    if (add_overflows(d->debits_posted, amount)) return R(overflows_debits_posted);
    if (add_overflows(c->credits_posted, amount)) return R(overflows_credits_posted);
    /* the account invariant: pending + posted never overflows, so a post always fits */
    if (add_overflows(d->debits_pending + d->debits_posted, amount)) return R(overflows_debits);
    if (add_overflows(c->credits_pending + c->credits_posted, amount)) return R(overflows_credits);
    /* 63 bits, as TigerBeetle (its timestamps keep the top bit as a tombstone) */
    if (TF(t, PENDING) && (ts > (uint64_t)INT64_MAX || (uint64_t)t->timeout_s * NS_PER_S > (uint64_t)INT64_MAX - ts))
        return R(overflows_timeout);
    if ((d->flags & NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS) &&
        d->debits_pending + d->debits_posted + amount > d->credits_posted)
        return R(exceeds_credits);
    if ((c->flags & NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS) &&
        c->credits_pending + c->credits_posted + amount > c->debits_posted)
        return R(exceeds_debits);
    return R(ok);
}

static nv_ledger_result single_or_hold(nv_ledger_state *st, const nv_ledger_transfer *t, uint64_t ts,
                                       ledger_undo *u)
{
    uint32_t dr, cr;
    nv_ledger_result r = check_accounts(st, t, &dr, &cr);
    if (r != R(ok)) return r;
    nv_ledger_account *d = &st->acc[dr], *c = &st->acc[cr];
    nv_u128 amount = balance_amount(t, d, c);
    r = check_sums(t, d, c, amount, ts);
    if (r != R(ok)) return r;
    int hold = TF(t, PENDING);
    *u = (ledger_undo){ .dr = dr, .cr = cr, .hold = NONE, .pending_add = hold ? amount : 0,
                        .posted_add = hold ? 0 : amount,
                        .dr_closed = TF(t, CLOSING_DEBIT), .cr_closed = TF(t, CLOSING_CREDIT) };
    apply(st, u);
    if (TF(t, CLOSING_DEBIT)) d->flags |= NV_LEDGER_ACCOUNT_CLOSED; /* open: check_accounts */
    if (TF(t, CLOSING_CREDIT)) c->flags |= NV_LEDGER_ACCOUNT_CLOSED;
    nv_ledger_transfer row = *t;
    row.amount = amount;
    row.timestamp = ts;
    u->row = row_add(st, &row, hold ? NV_LEDGER_PENDING_PENDING : NV_LEDGER_PENDING_NONE);
    row_snapshot(st, u->row, dr, cr);
    return R(ok);
}

static nv_ledger_result create_transfer(nv_ledger_state *st, const nv_ledger_transfer *t, uint64_t ts,
                                        ledger_undo *u)
{
    nv_ledger_result r = check_head(st, t);
    if (r == R(ok)) r = check_fields(t);
    if (r != R(ok)) return r;
    return is_post_or_void(t) ? post_or_void(st, t, ts, u) : single_or_hold(st, t, ts, u);
}

/* ---- create_accounts: the checks ----------------------------------------------------- */

#define A(name) NV_LEDGER_AR_##name

static nv_ledger_account_result exists_account(const nv_ledger_account *a, const nv_ledger_account *e)
{
    if (a->flags != e->flags) return A(exists_with_different_flags);
    if (a->user_data_128 != e->user_data_128) return A(exists_with_different_user_data_128);
    if (a->user_data_64 != e->user_data_64) return A(exists_with_different_user_data_64);
    if (a->user_data_32 != e->user_data_32) return A(exists_with_different_user_data_32);
    if (a->ledger != e->ledger) return A(exists_with_different_ledger);
    if (a->code != e->code) return A(exists_with_different_code);
    return A(exists);
}

static nv_ledger_account_result create_account(nv_ledger_state *st, const nv_ledger_account *a, uint64_t ts,
                                               ledger_undo *u)
{
    if (a->timestamp != 0) return A(timestamp_must_be_zero);
    if (a->flags & ~NV_LEDGER_ACCOUNT_FLAGS_KNOWN) return A(reserved_flag);
    if (a->id == 0) return A(id_must_not_be_zero);
    if (a->id == NV_LEDGER_U128_MAX) return A(id_must_not_be_int_max);
    uint32_t e = ix_find(&st->acc_ix, a->id);
    if (e != NONE) return exists_account(a, &st->acc[e]);
    if ((a->flags & NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS) &&
        (a->flags & NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS))
        return A(flags_are_mutually_exclusive);
    if (a->debits_pending != 0) return A(debits_pending_must_be_zero);
    if (a->debits_posted != 0) return A(debits_posted_must_be_zero);
    if (a->credits_pending != 0) return A(credits_pending_must_be_zero);
    if (a->credits_posted != 0) return A(credits_posted_must_be_zero);
    if (a->ledger == 0) return A(ledger_must_not_be_zero);
    if (a->code == 0) return A(code_must_not_be_zero);
    e = ix_add(&st->acc_ix, a->id);
    nv_assert(e != NONE); /* sized for batch_max new accounts */
    st->acc[e] = *a;
    st->acc[e].timestamp = ts;
    memset(&st->acc_before[e], 0, sizeof(nv_ledger_account));
    st->acc_created[e] = 1;
    u->row = e;
    return A(ok);
}

/* ---- chains -------------------------------------------------------------------------- */

typedef struct chain_ops {
    int (*run)(nv_ledger_state *st, const void *batch, uint32_t i, uint64_t ts);
    void (*undo)(nv_ledger_state *st, uint32_t i);
    int (*linked)(const void *batch, uint32_t i);
} chain_ops;

/* Takes back the applied events first..last-1, newest first, and marks them failed. */
static void chain_rollback(nv_ledger_state *st, const chain_ops *ops, uint32_t first, uint32_t last, int *codes)
{
    for (uint32_t i = last; i > first; i--) {
        if (codes[i - 1] == 0) ops->undo(st, i - 1);
        codes[i - 1] = R(linked_event_failed);
    }
}

/* TigerBeetle's loop: a chain runs from a linked event to the first event without the flag;
 * the first failure takes back the chain so far; every later event of it fails unrun. */
static void chain_run(nv_ledger_state *st, const chain_ops *ops, const void *batch, uint32_t n, uint64_t now,
                      int *codes)
{
    uint32_t chain = NONE;
    int broken = 0;
    for (uint32_t i = 0; i < n; i++) {
        int linked = ops->linked(batch, i);
        if (linked && chain == NONE) chain = i;
        int r;
        /* as TigerBeetle: the open chain's code wins even over a chain already broken */
        if (linked && i == n - 1) r = R(linked_event_chain_open);
        else if (broken) r = R(linked_event_failed);
        else r = ops->run(st, batch, i, now + 1 + i);
        codes[i] = r;
        if (r != 0 && chain != NONE && !broken) {
            broken = 1;
            chain_rollback(st, ops, chain, i, codes);
        }
        if (!linked) {
            chain = NONE;
            broken = 0;
        }
    }
}

static int transfer_run(nv_ledger_state *st, const void *batch, uint32_t i, uint64_t ts)
{
    const nv_ledger_transfer *t = (const nv_ledger_transfer *)batch + i;
    nv_ledger_result r = create_transfer(st, t, ts, &st->undo[i]);
    if (nv_ledger_result_is_transient(r) && ix_find(&st->failed_ix, t->id) == NONE) {
        uint32_t e = ix_add(&st->failed_ix, t->id);
        nv_assert(e != NONE); /* sized for one new id per event */
        st->failed_new[st->failed_new_n++] = t->id;
    }
    return (int)r;
}

static int transfer_linked(const void *batch, uint32_t i)
{
    return (((const nv_ledger_transfer *)batch)[i].flags & NV_LEDGER_TRANSFER_LINKED) != 0;
}

static int account_run(nv_ledger_state *st, const void *batch, uint32_t i, uint64_t ts)
{
    return (int)create_account(st, (const nv_ledger_account *)batch + i, ts, &st->undo[i]);
}

static int account_linked(const void *batch, uint32_t i)
{
    return (((const nv_ledger_account *)batch)[i].flags & NV_LEDGER_ACCOUNT_LINKED) != 0;
}

/* ---- effects ------------------------------------------------------------------------- */

static int cmp_change(const void *a, const void *b)
{
    return cmp_u128(&((const nv_ledger_account_change *)a)->after.id, &((const nv_ledger_account_change *)b)->after.id);
}

static int cmp_pending(const void *a, const void *b)
{
    return cmp_u128(&((const nv_ledger_pending_change *)a)->pending_id,
                    &((const nv_ledger_pending_change *)b)->pending_id);
}

static int account_changed(const nv_ledger_account *x, const nv_ledger_account *y)
{
    return x->debits_pending != y->debits_pending || x->debits_posted != y->debits_posted ||
           x->credits_pending != y->credits_pending || x->credits_posted != y->credits_posted ||
           ((x->flags ^ y->flags) & NV_LEDGER_ACCOUNT_CLOSED) != 0;
}

static void effects_gather(nv_ledger_state *st)
{
    for (uint32_t e = 0; e < st->tr_ix.count; e++) {
        if (st->tr_ix.dead[e]) continue;
        if (st->tr_new[e])
            st->out_rows[st->out_rows_n++] = (nv_ledger_new_transfer){
                st->tr[e], (nv_ledger_pending_status)st->tr_status[e], st->tr_after[2 * e], st->tr_after[2 * e + 1] };
        else if (st->tr_status[e] != st->tr_status_before[e])
            st->out_pend[st->out_pend_n++] = (nv_ledger_pending_change){
                st->tr[e].id, (nv_ledger_pending_status)st->tr_status_before[e],
                (nv_ledger_pending_status)st->tr_status[e] };
    }
    for (uint32_t e = 0; e < st->acc_ix.count; e++) {
        if (st->acc_ix.dead[e]) continue;
        if (!st->acc_created[e] && !account_changed(&st->acc_before[e], &st->acc[e])) continue;
        st->out_acc[st->out_acc_n++] = (nv_ledger_account_change){ st->acc_before[e], st->acc[e], st->acc_created[e] };
    }
    qsort(st->out_acc, st->out_acc_n, sizeof(st->out_acc[0]), cmp_change);
    qsort(st->out_pend, st->out_pend_n, sizeof(st->out_pend[0]), cmp_pending);
}

/* New rows come out in batch order because each event appends at most one entry. */
static int check_begin(nv_ledger_state *st, uint32_t n, uint64_t now)
{
    if (st->checked || n == 0 || n > st->batch_max) return NV_ERR;
    if (now < st->ts_loaded_max || now > UINT64_MAX - n) return NV_ERR;
    return NV_OK;
}

int nv_ledger_create_transfers(nv_ledger_state *st, const nv_ledger_transfer *batch, uint32_t n,
                               uint64_t now_ns, nv_ledger_result *results)
{
    if (check_begin(st, n, now_ns) != NV_OK) return NV_ERR;
    if (holds_prepare(st, batch, n, now_ns) != NV_OK) return NV_ERR;
    st->checked = 1;
    static const chain_ops ops = { transfer_run, transfer_undo, transfer_linked };
    _Static_assert(sizeof(nv_ledger_result) == sizeof(int), "results are written as int");
    chain_run(st, &ops, batch, n, now_ns, (int *)results);
    effects_gather(st);
    return NV_OK;
}

int nv_ledger_expire(nv_ledger_state *st, uint64_t now_ns)
{
    if (st->checked || now_ns < st->ts_loaded_max) return NV_ERR;
    if (holds_prepare(st, NULL, 0, now_ns) != NV_OK) return NV_ERR;
    st->checked = 1;
    effects_gather(st);
    return NV_OK;
}

int nv_ledger_create_accounts(nv_ledger_state *st, const nv_ledger_account *batch, uint32_t n,
                              uint64_t now_ns, nv_ledger_account_result *results)
{
    if (check_begin(st, n, now_ns) != NV_OK) return NV_ERR;
    if (st->acc_ix.count > st->acc_ix.cap - n) return NV_ERR; /* room for n new accounts */
    st->checked = 1;
    static const chain_ops ops = { account_run, account_undo, account_linked };
    _Static_assert(sizeof(nv_ledger_account_result) == sizeof(int), "results are written as int");
    chain_run(st, &ops, batch, n, now_ns, (int *)results);
    effects_gather(st);
    return NV_OK;
}

uint32_t nv_ledger_new_transfers(const nv_ledger_state *st, const nv_ledger_new_transfer **rows)
{
    *rows = st->out_rows;
    return st->out_rows_n;
}

uint32_t nv_ledger_account_changes(const nv_ledger_state *st, const nv_ledger_account_change **out)
{
    *out = st->out_acc;
    return st->out_acc_n;
}

uint32_t nv_ledger_pending_changes(const nv_ledger_state *st, const nv_ledger_pending_change **out)
{
    *out = st->out_pend;
    return st->out_pend_n;
}

uint32_t nv_ledger_failed_ids(const nv_ledger_state *st, const nv_u128 **ids)
{
    *ids = st->failed_new;
    return st->failed_new_n;
}
