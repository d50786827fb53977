/* ledger_post.h -- the ledger's posting layer: gathers the events that tasks submit into batches,
 * runs each batch in one Postgres transaction (lock, load, check in memory, write, commit) and
 * wakes every task with its own results. docs/ledger.md says what a batch does and why. */
#ifndef NV_LEDGER_POST_H
#define NV_LEDGER_POST_H

#include <stdint.h>

#include "ledger_check.h"
#include "pg_internal.h"
#include "runtime.h"

typedef struct nv_ledger_cfg {
    uint32_t batch_max;     /* events of one batch, 1..NV_LEDGER_BATCH_TRANSFERS_MAX */
    uint32_t batch_wait_us; /* how long a first event may wait for more, 0..NV_LEDGER_POST_WAIT_US_MAX */
    int inflight;           /* batches in flight, 1..NV_LEDGER_POST_INFLIGHT_MAX */
    uint32_t queue_max;     /* events waiting, past it ledger_overloaded */
    int64_t timeout_ms;     /* one round trip of a batch */
    int64_t sweep_ms;       /* expiry sweep period, 0: none */
} nv_ledger_cfg;

/* How a call ended as a whole: OK means it has one result per event. */
typedef enum nv_ledger_call_status {
    NV_LEDGER_CALL_OK = 0,
    NV_LEDGER_CALL_UNAVAILABLE, /* nothing applied: the database failed or refused the batch */
    NV_LEDGER_CALL_OVERLOADED,  /* not queued: queue_max events wait already */
    NV_LEDGER_CALL_TIMEOUT,     /* the commit's answer was lost: applied or not, a retry tells */
} nv_ledger_call_status;

/* One task's create_accounts or create_transfers: events in, results out. */
typedef struct nv_ledger_call nv_ledger_call;
struct nv_ledger_call {
    nv_ledger_call *next;
    nv_task *task;         /* woken with the call (a light userdata) when it ends */
    int accounts;          /* 1: create_accounts, 0: create_transfers */
    uint32_t n;            /* events */
    uint32_t n_run;        /* the first n_run go to the engine; the rest are an open chain */
    uint32_t first;        /* where its events sit in the batch */
    int open_chain;        /* its last event was linked: swapped for an empty event (ledger_lua.c) */
    nv_ledger_transfer *tr; /* n events (accounts == 0) */
    nv_ledger_account *acc; /* n events (accounts == 1) */
    int *results;          /* n results (nv_ledger_result or nv_ledger_account_result) */
    nv_ledger_call_status status;
    char message[200];     /* why, when status is not OK */
};

typedef struct nv_ledger_engine nv_ledger_engine;

/* An engine posting through pool p (kept alive until the engine is freed). NULL: no memory. */
nv_ledger_engine *nv_ledger_engine_new(nv_pg_pool *p, const nv_ledger_cfg *cfg);
/* Gives up: batches in flight are abandoned (their connections closed, so the server rolls back
 * what did not commit), queued calls freed, no task woken. For a generation that ends. */
void nv_ledger_engine_free(nv_ledger_engine *e);

/* A call of n events (1..NV_LEDGER_POST_CALL_EVENTS_MAX), zeroed, one allocation; free() it. */
nv_ledger_call *nv_ledger_call_new(int accounts, uint32_t n);
/* Queues c (its n_run events, 1..batch_max). NV_OK: c->task is woken when it ends. NV_ERR: not
 * queued, c->status says why. */
int nv_ledger_engine_submit(nv_ledger_engine *e, nv_ledger_call *c);

typedef struct nv_ledger_stats {
    uint64_t batches, events, retries, failed_batches, sweeps, expired;
    uint32_t queued, inflight;
} nv_ledger_stats;
void nv_ledger_engine_stats(const nv_ledger_engine *e, nv_ledger_stats *out);

/* Decimal text to a 128-bit value: digits only, at most 2^128-1. NV_ERR otherwise. */
int nv_ledger_parse_u128(const char *s, size_t len, nv_u128 *out);

#endif
