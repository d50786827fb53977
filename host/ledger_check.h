/* ledger_check.h -- the ledger's in-memory validation engine: TigerBeetle's results and effects for one batch, no I/O. */
#ifndef NV_LEDGER_CHECK_H
#define NV_LEDGER_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "nv.h"

/* Ids and amounts: exact 128-bit integers (numeric(38,0) in SQL). */
typedef unsigned __int128 nv_u128;
#define NV_LEDGER_U128_MAX (~(nv_u128)0) /* 2^128-1: reserved as an id, the largest amount */

/* Account flags. */
#define NV_LEDGER_ACCOUNT_LINKED (1u << 0)                        /* this and the next commit or fail together */
#define NV_LEDGER_ACCOUNT_DEBITS_MUST_NOT_EXCEED_CREDITS (1u << 1) /* dp + dpo <= cpo */
#define NV_LEDGER_ACCOUNT_CREDITS_MUST_NOT_EXCEED_DEBITS (1u << 2) /* cp + cpo <= dpo */
#define NV_LEDGER_ACCOUNT_HISTORY (1u << 3)                       /* keep per-transfer balances (posting layer) */
#define NV_LEDGER_ACCOUNT_CLOSED (1u << 5)                        /* set by a closing hold; only voids touch it */
#define NV_LEDGER_ACCOUNT_FLAGS_KNOWN 0x2fu                       /* bit 4 (imported) is not supported: reserved */

/* Transfer flags. */
#define NV_LEDGER_TRANSFER_LINKED (1u << 0)          /* this and the next commit or fail together */
#define NV_LEDGER_TRANSFER_PENDING (1u << 1)         /* a hold, posted or voided later, or expiring */
#define NV_LEDGER_TRANSFER_POST_PENDING (1u << 2)    /* post the hold pending_id (all or less) */
#define NV_LEDGER_TRANSFER_VOID_PENDING (1u << 3)    /* release the hold pending_id */
#define NV_LEDGER_TRANSFER_BALANCING_DEBIT (1u << 4) /* move at most amount: what the debit side allows */
#define NV_LEDGER_TRANSFER_BALANCING_CREDIT (1u << 5) /* move at most amount: what the credit side allows */
#define NV_LEDGER_TRANSFER_CLOSING_DEBIT (1u << 6)   /* pending; closes the debit account */
#define NV_LEDGER_TRANSFER_CLOSING_CREDIT (1u << 7)  /* pending; closes the credit account */
#define NV_LEDGER_TRANSFER_FLAGS_KNOWN 0xffu         /* bit 8 (imported) and up are reserved */

typedef struct nv_ledger_account {
    nv_u128 id;
    nv_u128 debits_pending, debits_posted, credits_pending, credits_posted;
    nv_u128 user_data_128;
    uint64_t user_data_64;
    uint32_t user_data_32;
    uint32_t ledger; /* the asset */
    uint16_t code;   /* the kind of account */
    uint16_t flags;  /* NV_LEDGER_ACCOUNT_* */
    uint64_t timestamp; /* ns; assigned by the engine, 0 on input */
} nv_ledger_account;

typedef struct nv_ledger_transfer {
    nv_u128 id;
    nv_u128 debit_account_id, credit_account_id;
    nv_u128 amount;
    nv_u128 pending_id; /* the hold a post or void resolves */
    nv_u128 user_data_128;
    uint64_t user_data_64;
    uint32_t user_data_32;
    uint32_t timeout_s; /* pending only: seconds from the hold's timestamp; 0 never expires */
    uint32_t ledger;
    uint16_t code;
    uint16_t flags;     /* NV_LEDGER_TRANSFER_* */
    uint64_t timestamp; /* ns; assigned by the engine, 0 on input */
} nv_ledger_transfer;

/* The state of a stored pending transfer (NONE for any other transfer). */
typedef enum nv_ledger_pending_status {
    NV_LEDGER_PENDING_NONE = 0,
    NV_LEDGER_PENDING_PENDING,
    NV_LEDGER_PENDING_POSTED,
    NV_LEDGER_PENDING_VOIDED,
    NV_LEDGER_PENDING_EXPIRED,
} nv_ledger_pending_status;

/* create_transfers results, numbered in TigerBeetle's order of precedence (a lower number wins
 * when several apply; "ok" and the chain codes aside). Our numbers, not TigerBeetle's wire ones. */
#define NV_LEDGER_TRANSFER_RESULTS(X)                                                      \
    X(ok) X(linked_event_failed) X(linked_event_chain_open) X(timestamp_must_be_zero)      \
    X(reserved_flag) X(id_must_not_be_zero) X(id_must_not_be_int_max)                     \
    X(exists_with_different_flags) X(exists_with_different_pending_id)                    \
    X(exists_with_different_timeout) X(exists_with_different_debit_account_id)            \
    X(exists_with_different_credit_account_id) X(exists_with_different_amount)            \
    X(exists_with_different_user_data_128) X(exists_with_different_user_data_64)          \
    X(exists_with_different_user_data_32) X(exists_with_different_ledger)                 \
    X(exists_with_different_code) X(exists) X(id_already_failed)                          \
    X(flags_are_mutually_exclusive) X(debit_account_id_must_not_be_zero)                  \
    X(debit_account_id_must_not_be_int_max) X(credit_account_id_must_not_be_zero)         \
    X(credit_account_id_must_not_be_int_max) X(accounts_must_be_different)                \
    X(pending_id_must_be_zero) X(pending_id_must_not_be_zero)                             \
    X(pending_id_must_not_be_int_max) X(pending_id_must_be_different)                     \
    X(timeout_reserved_for_pending_transfer) X(closing_transfer_must_be_pending)          \
    X(amount_must_not_be_zero) X(ledger_must_not_be_zero) X(code_must_not_be_zero)        \
    X(debit_account_not_found) X(credit_account_not_found)                                \
    X(accounts_must_have_the_same_ledger) X(transfer_must_have_the_same_ledger_as_accounts) \
    X(pending_transfer_not_found) X(pending_transfer_not_pending)                          \
    X(pending_transfer_has_different_debit_account_id)                                    \
    X(pending_transfer_has_different_credit_account_id)                                   \
    X(pending_transfer_has_different_ledger) X(pending_transfer_has_different_code)       \
    X(exceeds_pending_transfer_amount) X(pending_transfer_has_different_amount)           \
    X(pending_transfer_already_posted) X(pending_transfer_already_voided)                 \
    X(pending_transfer_expired) X(debit_account_already_closed)                           \
    X(credit_account_already_closed) X(overflows_debits_pending)                          \
    X(overflows_credits_pending) X(overflows_debits_posted) X(overflows_credits_posted)   \
    X(overflows_debits) X(overflows_credits) X(overflows_timeout) X(exceeds_credits)      \
    X(exceeds_debits)

#define NV_LEDGER_ENUM_T_(name) NV_LEDGER_TR_##name,
typedef enum nv_ledger_result { NV_LEDGER_TRANSFER_RESULTS(NV_LEDGER_ENUM_T_) NV_LEDGER_TR_COUNT_ } nv_ledger_result;

/* create_accounts results, in the same way. */
#define NV_LEDGER_ACCOUNT_RESULTS(X)                                                       \
    X(ok) X(linked_event_failed) X(linked_event_chain_open) X(timestamp_must_be_zero)      \
    X(reserved_flag) X(id_must_not_be_zero) X(id_must_not_be_int_max)                     \
    X(exists_with_different_flags) X(exists_with_different_user_data_128)                 \
    X(exists_with_different_user_data_64) X(exists_with_different_user_data_32)           \
    X(exists_with_different_ledger) X(exists_with_different_code) X(exists)               \
    X(flags_are_mutually_exclusive) X(debits_pending_must_be_zero)                        \
    X(debits_posted_must_be_zero) X(credits_pending_must_be_zero)                         \
    X(credits_posted_must_be_zero) X(ledger_must_not_be_zero) X(code_must_not_be_zero)

#define NV_LEDGER_ENUM_A_(name) NV_LEDGER_AR_##name,
typedef enum nv_ledger_account_result {
    NV_LEDGER_ACCOUNT_RESULTS(NV_LEDGER_ENUM_A_) NV_LEDGER_AR_COUNT_
} nv_ledger_account_result;

/* "exceeds_credits" for a code; "?" out of range. */
const char *nv_ledger_result_name(nv_ledger_result r);
const char *nv_ledger_account_result_name(nv_ledger_account_result r);

/* Failures TigerBeetle 0.16 calls transient: they depend on state that may change, so a retry
 * might pass; the id is remembered and a retry gets id_already_failed. The others depend on the
 * body or on what never changes (overflows count as permanent: 2^128 is not reached in practice). */
int nv_ledger_result_is_transient(nv_ledger_result r);

/* One batch's working set: the accounts and transfers it touches, sized by the batch. */
typedef struct nv_ledger_state nv_ledger_state;

/* Effects, read after a check. */
typedef struct nv_ledger_account_change {
    nv_ledger_account before; /* as loaded (all zero counters for a new account) */
    nv_ledger_account after;  /* to write: the four counters and the closed flag may differ */
    int created;              /* 1: a new account (create_accounts) to insert */
} nv_ledger_account_change;

/* An account's four counters at one moment (for history rows). */
typedef struct nv_ledger_balance {
    nv_u128 debits_pending, debits_posted, credits_pending, credits_posted;
} nv_ledger_balance;

typedef struct nv_ledger_new_transfer {
    nv_ledger_transfer transfer;
    nv_ledger_pending_status status; /* a hold may be posted or voided in its own batch */
    nv_ledger_balance debit_after;   /* the debit account's counters right after this transfer */
    nv_ledger_balance credit_after;  /* the credit account's */
} nv_ledger_new_transfer;

typedef struct nv_ledger_pending_change {
    nv_u128 pending_id;
    nv_ledger_pending_status before, after; /* PENDING -> POSTED, VOIDED or EXPIRED */
} nv_ledger_pending_change;

/* batch_max events per check, at most NV_LEDGER_BATCH_TRANSFERS_MAX. One allocation; NULL on
 * a bad size or no memory. */
nv_ledger_state *nv_ledger_state_new(uint32_t batch_max);
void nv_ledger_state_free(nv_ledger_state *st);
/* Forgets everything loaded and every effect, to start the next batch. */
void nv_ledger_state_reset(nv_ledger_state *st);

/* (1) What a batch needs, distinct, sorted ascending (lock in this order), zero and 2^128-1
 * left out. out must hold 2 * n ids. Transfer ids: each id and pending_id. */
uint32_t nv_ledger_transfer_ids_needed(const nv_ledger_transfer *batch, uint32_t n, nv_u128 *out);
/* Account ids: debit and credit ids of the batch, and those of each loaded hold that a
 * pending_id of the batch names (so load the transfers first). out must hold 4 * n ids. */
uint32_t nv_ledger_account_ids_needed(const nv_ledger_state *st, const nv_ledger_transfer *batch,
                                      uint32_t n, nv_u128 *out);

/* (2) Load what exists. NV_ERR when full, on a duplicate id, or on a row that breaks an
 * invariant (counters whose sums overflow, a pending status on a non-pending transfer).
 * Room: 4 * batch_max accounts (3 * batch_max before create_accounts of batch_max), 2 *
 * batch_max transfers and 2 * batch_max failed ids; the rest is for what the check adds. */
int nv_ledger_state_add_account(nv_ledger_state *st, const nv_ledger_account *a);
int nv_ledger_state_add_transfer(nv_ledger_state *st, const nv_ledger_transfer *t,
                                 nv_ledger_pending_status status);
/* An id of the batch that failed transiently before (the caller's record of failures). */
int nv_ledger_state_add_failed_id(nv_ledger_state *st, nv_u128 id);

/* (3) Check. Event i gets timestamp now_ns + 1 + i. results[i] for each event. NV_ERR (and
 * nothing checked) when n is 0 or above batch_max, when the state holds a timestamp >= now_ns
 * + 1 (the clock went back), or when now_ns + n overflows. One check per state until reset. */
int nv_ledger_create_transfers(nv_ledger_state *st, const nv_ledger_transfer *batch, uint32_t n,
                               uint64_t now_ns, nv_ledger_result *results);
int nv_ledger_create_accounts(nv_ledger_state *st, const nv_ledger_account *batch, uint32_t n,
                              uint64_t now_ns, nv_ledger_account_result *results);

/* Expiry alone, no event: every loaded hold still pending whose deadline is at or before now_ns
 * (and whose two accounts are loaded) expires. For a sweep of due holds; one check per state. */
int nv_ledger_expire(nv_ledger_state *st, uint64_t now_ns);

/* (4) Effects of the last check. Pointers stay valid until reset or free. */
/* New transfer rows in batch order, with timestamps; a post or void carries the accounts,
 * ledger and code of its hold and the amount it moved. */
uint32_t nv_ledger_new_transfers(const nv_ledger_state *st, const nv_ledger_new_transfer **rows);
/* Accounts whose counters or closed flag changed, or that were created, sorted by id. */
uint32_t nv_ledger_account_changes(const nv_ledger_state *st, const nv_ledger_account_change **out);
/* Stored holds whose status changed (posted, voided, expired), sorted by id. */
uint32_t nv_ledger_pending_changes(const nv_ledger_state *st, const nv_ledger_pending_change **out);
/* Ids that failed transiently in this batch: to remember, so retries get id_already_failed. */
uint32_t nv_ledger_failed_ids(const nv_ledger_state *st, const nv_u128 **ids);

/* Signed difference after - before of a counter, as the posting layer may write it
 * ("+ delta"): the magnitude and a sign (1 when negative). */
nv_u128 nv_ledger_delta(nv_u128 before, nv_u128 after, int *negative);

/* Digits of v into buf (40 bytes are enough); returns buf. For logs and SQL parameters. */
char *nv_ledger_u128_str(nv_u128 v, char buf[40]);

#endif
