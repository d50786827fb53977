#!/usr/bin/env bash
# bench/ledger/run.sh -- the ledger (nuvion.ledger, posting in batches from C) against one
# transfer per transaction in plain SQL through pgbench, and against the ceiling of COPY, on the
# same Postgres in the same run (fsync and synchronous_commit on, as the server is configured:
# the header prints them). Prints one table and writes it to bench/results/ledger.txt.
#
# Three scenarios, each on databases of their own created for it (sql/ledger/ applied, accounts
# 1..N, no flags): (a) N = 100,000, uniform random pairs; (b) N = 10 hot accounts (every transfer
# between two of them); (c) N = 2, one hot pair (either way). 256 concurrent submitters:
#   ours:     2 processes of bench/ledger/load.lua (bin/nuvion run) x 128 tasks, each task
#             submitting one single-phase transfer at a time (lg:transfer) in a loop; latency per
#             transfer from the call to its result; only "ok" counts, anything else is an error.
#   pgbench:  -c 256 -j 2 -M prepared (fewer clients if max_connections does not allow 256), the
#             script below: BEGIN; SELECT ... WHERE id IN (a, b) ORDER BY id FOR UPDATE; INSERT
#             the transfer; UPDATE the debit account; UPDATE the credit account; COMMIT; on the
#             same tables (ledger_accounts, ledger_transfers of sql/ledger/: numeric(39,0)
#             columns, their checks, primary keys and triggers). Latency from its per-transaction
#             log (-l): one run of 5 + WARMUP + SECONDS s, the transactions that ended in its last
#             SECONDS s counted (its 256 connections take a second or two to open).
# Both: WARMUP s of warm-up, then SECONDS s measured. Ceiling: COPY of as many transfer rows as
# ours posted in (a) (warm-up included; 1,000,000 when (a) did not run) from a file into a bare
# table of ledger_transfers' columns (numeric(39,0) and the same types, no constraint, no index),
# and, for information, into the same with a primary key on id.
#
# Environment: BENCH_QUICK=1 (1 s warm-up, 3 s runs, COPY of at most 200,000 rows: a smoke run),
# BENCH_LEDGER_SECONDS, BENCH_LEDGER_WARMUP_S, BENCH_LEDGER_COPY_ROWS, BENCH_LEDGER_SCENARIOS
# (default "a b c"); BENCH_LEDGER_BATCH_MAX / _BATCH_WAIT_US / _INFLIGHT pass to ledger.open.
# Uses NUVION_TEST_DATABASE_URL (a superuser URL; scripts/bench.sh starts the servers), else
# starts its own with scripts/services.sh. About 2 minutes (BENCH_QUICK=1: under 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [ "${BENCH_QUICK:-0}" = 1 ]; then
    def_seconds=3 def_warmup=1 def_copy_max=200000
else
    def_seconds=10 def_warmup=2 def_copy_max=""
fi
SECONDS_RUN=${BENCH_LEDGER_SECONDS:-$def_seconds}
WARMUP_S=${BENCH_LEDGER_WARMUP_S:-$def_warmup}
COPY_ROWS=${BENCH_LEDGER_COPY_ROWS:-}
SCENARIOS=${BENCH_LEDGER_SCENARIOS:-a b c}
PROCS=2
TASKS=128
CLIENTS=$((PROCS * TASKS))
COPY_DEFAULT=1000000
GOAL_TPS=50000
GOAL_RATIO=20
GOAL_P99_MS=50
LOAD_SLACK_S=60 # a load process gets WARMUP + SECONDS + this before it is killed
PG_CONNECT_S=5  # pgbench runs this much longer than ours: its 256 connections (TLS, SCRAM) come first
OUT=bench/results/ledger.txt
DB_PREFIX=nuvion_bench_ledger

PGBENCH=$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)
PSQL=$(command -v psql || echo /usr/lib/postgresql/15/bin/psql)
[ -x "$PGBENCH" ] || { echo "bench/ledger: pgbench not found (Debian: postgresql-contrib)"; exit 1; }
[ -x "$PSQL" ] || { echo "bench/ledger: psql not found"; exit 1; }
[ -x bin/nuvion ] || { echo "bench/ledger: bin/nuvion not built (make)"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nuvion-bench-ledger.XXXXXX")
OWN=""
PIDS=()
# shellcheck disable=SC2317 # run by the trap
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [ -n "${SUPER_URL:-}" ] && [ -z "$OWN" ]; then
        for db in $(psql_super -qtAc "SELECT datname FROM pg_database WHERE datname LIKE '${DB_PREFIX}_%'" 2>/dev/null); do
            psql_super -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
        done
    fi
    [ -n "$OWN" ] && scripts/services.sh stop "$WORK/services" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "bench/ledger: $*" >&2; }

if [ -z "${NUVION_TEST_DATABASE_URL:-}" ]; then
    scripts/services.sh start "$WORK/services" 1 >/dev/null
    OWN=1
    # shellcheck disable=SC1091
    . "$WORK/services/env"
fi
SUPER_URL=$NUVION_TEST_DATABASE_URL
BASE_URL=${SUPER_URL%%\?*}
BASE_URL=${BASE_URL%/*}
QUERY=""
case "$SUPER_URL" in *\?*) QUERY="?${SUPER_URL#*\?}" ;; esac
db_url() { echo "$BASE_URL/$1$QUERY"; }
psql_super() { "$PSQL" -X -v ON_ERROR_STOP=1 "$SUPER_URL" "$@"; }
psql_db() { local db=$1; shift; "$PSQL" -X -v ON_ERROR_STOP=1 "$(db_url "$db")" "$@"; }

fresh_db() { # fresh_db NAME: (re)created, sql/ledger/ applied
    psql_super -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1
    psql_super -qc "CREATE DATABASE $1" >/dev/null
    bin/nuvion migrate ledger --url "$(db_url "$1")" >"$WORK/migrate.log" 2>&1 ||
        { cat "$WORK/migrate.log" >&2; return 1; }
}
drop_db() { psql_super -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true; }

setting() { psql_super -qtAc "SHOW $1"; }
SYNC=$(setting synchronous_commit)
FSYNC=$(setting fsync)
MAXCONN=$(setting max_connections)
RESERVED=$(setting superuser_reserved_connections)
INUSE=$(psql_super -qtAc "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
PG_VERSION=$(setting server_version)
# pgbench's clients, and the ledger's connections (2 processes x at most 16) beside them at times
PG_CLIENTS=$((MAXCONN - RESERVED - INUSE - 2 * 16))
[ "$PG_CLIENTS" -gt "$CLIENTS" ] && PG_CLIENTS=$CLIENTS

declare -A ACCOUNTS=([a]=100000 [b]=10 [c]=2)
declare -A LABEL=([a]="(a) 100,000 accounts, uniform" [b]="(b) 10 hot accounts" [c]="(c) 1 hot pair")
declare -A O_TPS O_P50 O_P99 O_ERR O_WHAT O_CHECK O_BATCHES O_EVENTS O_RETRIES B_TPS B_P50 B_P99 B_ERR B_CONNECT
status=0
ROWS_A=""

# ours SCENARIO: sets O_*[SCENARIO]; 1 when the ledger could not run at all.
ours() {
    local s=$1 n=${ACCOUNTS[$1]} db="${DB_PREFIX}_ours_$1" i url files=() line
    fresh_db "$db" || return 1
    url=$(db_url "$db")
    NUVION_LEDGER_DATABASE_URL=$url bin/nuvion run bench/ledger/load.lua accounts "$n" \
        >"$WORK/accounts.out" 2>"$WORK/accounts.err" ||
        { log "ours ($s): accounts: $(head -n 2 "$WORK/accounts.err")"; drop_db "$db"; return 1; }
    PIDS=()
    for ((i = 1; i <= PROCS; i++)); do
        NUVION_LEDGER_DATABASE_URL=$url BENCH_LEDGER_TASKS=$TASKS BENCH_LEDGER_SECONDS=$SECONDS_RUN \
            BENCH_LEDGER_WARMUP_S=$WARMUP_S \
            timeout -k 5 $((WARMUP_S + SECONDS_RUN + LOAD_SLACK_S)) \
            bin/nuvion run bench/ledger/load.lua run "$n" "$i" >"$WORK/ours_$s.$i" 2>"$WORK/ours_$s.$i.err" &
        PIDS+=($!)
        files+=("$WORK/ours_$s.$i")
    done
    for i in "${!PIDS[@]}"; do wait "${PIDS[$i]}" || log "ours ($s): process $((i + 1)) exited with $?"; done
    PIDS=()
    for i in "${files[@]}"; do [ -s "$i.err" ] && log "ours ($s): $(basename "$i") stderr: $(head -n 3 "$i.err")"; done
    if ! line=$(bin/nuvion run bench/ledger/merge.lua "${files[@]}" 2>"$WORK/merge.err"); then
        log "ours ($s): $(cat "$WORK/merge.err")"
        drop_db "$db"
        return 1
    fi
    read -r "O_TPS[$s]" "O_P50[$s]" "O_P99[$s]" _ "O_ERR[$s]" "O_BATCHES[$s]" "O_EVENTS[$s]" "O_RETRIES[$s]" \
        "O_WHAT[$s]" <<<"$line"
    # Money conserved: every account's counters against the transfers posted.
    O_CHECK[$s]=$(psql_db "$db" -qtAc "
        SELECT CASE WHEN (SELECT sum(debits_posted) FROM ledger_accounts)
                       = (SELECT sum(credits_posted) FROM ledger_accounts)
                     AND (SELECT sum(debits_posted) FROM ledger_accounts)
                       = (SELECT coalesce(sum(amount), 0) FROM ledger_transfers)
                     AND (SELECT sum(debits_pending) + sum(credits_pending) FROM ledger_accounts) = 0
               THEN 'ok' ELSE 'MISMATCH' END || ' ' || (SELECT count(*) FROM ledger_transfers)")
    [ "$s" = a ] && ROWS_A=${O_CHECK[$s]#* }
    O_CHECK[$s]=${O_CHECK[$s]% *}
    drop_db "$db"
    return 0
}

cat >"$WORK/transfer.sql" <<'SQL'
\set a random(1, :naccounts)
\set b random(1, :naccounts - 1)
\set b CASE WHEN :b >= :a THEN :b + 1 ELSE :b END
\set n :n + 1
\set amt random(1, 100)
BEGIN;
SELECT id FROM ledger_accounts WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, pending_id, user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags, timestamp) VALUES (:base + :client_id * 1000000000000 + :n, :a, :b, :amt, 0, 0, 0, 0, 0, 1, 1, 0, (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint);
UPDATE ledger_accounts SET debits_posted = debits_posted + :amt WHERE id = :a;
UPDATE ledger_accounts SET credits_posted = credits_posted + :amt WHERE id = :b;
COMMIT;
SQL

# baseline SCENARIO: sets B_*[SCENARIO]. One pgbench run of PG_CONNECT_S + WARMUP + SECONDS
# seconds; its per-transaction log (-l) gives the figures of the transactions that ended in its
# last SECONDS (ours count the same way), the rest was connecting and warm-up.
baseline() {
    local s=$1 n=${ACCOUNTS[$1]} db="${DB_PREFIX}_base_$1" url out aborted stats
    fresh_db "$db" || return 1
    url=$(db_url "$db")
    mkdir -p "$WORK/pgblog"
    psql_db "$db" -qc "INSERT INTO ledger_accounts SELECT g, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1
                       FROM generate_series(1, $n) g" -c "VACUUM ANALYZE" >/dev/null
    out=$("$PGBENCH" -n -c "$PG_CLIENTS" -j 2 -M prepared -T $((PG_CONNECT_S + WARMUP_S + SECONDS_RUN)) \
          -D naccounts="$n" -D n=0 -D base=1000000000000000 -l --log-prefix="$WORK/pgblog/$s" \
          -f "$WORK/transfer.sql" "$url" 2>&1) || true
    echo "$out" >"$WORK/pgb_$s.out"
    aborted=$(echo "$out" | grep -c 'aborted' || true)
    B_CONNECT[$s]=$(echo "$out" | sed -n 's/^initial connection time = \([0-9.]*\) ms.*/\1/p')
    # log lines: client transaction_no latency_us|failed script_no epoch_s epoch_us
    cat "$WORK"/pgblog/"$s".* 2>/dev/null | awk '{ printf "%d.%06d %s\n", $5, $6, $3 }' >"$WORK/pgb_$s.all"
    stats=$(awk -v secs="$SECONDS_RUN" '
        NR == FNR { if ($1 + 0 > tmax) tmax = $1 + 0; next }
        $1 + 0 > tmax - secs { if ($2 ~ /^[0-9]+$/) print $2; else print "E" }' \
        "$WORK/pgb_$s.all" "$WORK/pgb_$s.all" | sort -n | awk -v secs="$SECONDS_RUN" '
        /^E/ { e++; next }
        { v[++n] = $1 }
        END {
            if (n == 0) { printf "0 0 0 %d\n", e; exit }
            i50 = int(n * 0.50 + 0.999999); i99 = int(n * 0.99 + 0.999999)
            printf "%d %.2f %.2f %d\n", n / secs + 0.5, v[i50] / 1000, v[i99] / 1000, e }')
    read -r "B_TPS[$s]" "B_P50[$s]" "B_P99[$s]" "B_ERR[$s]" <<<"$stats"
    B_ERR[$s]=$((B_ERR[$s] + aborted))
    [ "${B_TPS[$s]}" -gt 0 ] || log "pgbench ($s): $(tail -n 5 "$WORK/pgb_$s.out")"
    rm -f "$WORK"/pgblog/"$s".* "$WORK/pgb_$s.all"
    drop_db "$db"
}

# copy_ceiling ROWS: sets COPY_BARE_RPS, COPY_PK_RPS
copy_ceiling() {
    local rows=$1 db="${DB_PREFIX}_copy" ms
    awk -v n="$rows" 'BEGIN {
        srand(42); ts = 1700000000000000000
        for (i = 1; i <= n; i++) {
            a = int(rand() * 100000) + 1; b = int(rand() * 99999) + 1; if (b >= a) b++
            printf "9%02d%02d%024d\t%d\t%d\t%d\t0\t0\t0\t0\t0\t1\t1\t0\t%d\n", 1, 6, i, a, b, int(rand() * 100) + 1, ts + i
        } }' >"$WORK/copy.tsv"
    psql_super -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
    psql_super -qc "CREATE DATABASE $db" >/dev/null
    local cols="id numeric(39,0), debit_account_id numeric(39,0), credit_account_id numeric(39,0),
        amount numeric(39,0), pending_id numeric(39,0), user_data_128 numeric(39,0), user_data_64 numeric(20,0),
        user_data_32 bigint, timeout bigint, ledger bigint, code integer, flags integer, timestamp bigint"
    psql_db "$db" -qc "CREATE TABLE bare ($cols)" -c "CREATE TABLE with_pk ($cols, PRIMARY KEY (id))" -c CHECKPOINT >/dev/null
    copy_ms() {
        psql_db "$db" -c '\timing on' -c "\\copy $1 FROM '$WORK/copy.tsv'" |
            sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
    }
    ms=$(copy_ms bare)
    COPY_BARE_RPS=$(awk -v r="$rows" -v ms="$ms" 'BEGIN { printf "%d", (ms > 0 ? r / (ms / 1000) : 0) }')
    ms=$(copy_ms with_pk)
    COPY_PK_RPS=$(awk -v r="$rows" -v ms="$ms" 'BEGIN { printf "%d", (ms > 0 ? r / (ms / 1000) : 0) }')
    rm -f "$WORK/copy.tsv"
    drop_db "$db"
}

START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
for s in $SCENARIOS; do
    log "scenario $s: ours"
    if ! ours "$s"; then
        O_TPS[$s]=""
        status=1
    fi
    log "scenario $s: pgbench"
    baseline "$s" || { B_TPS[$s]=0; status=1; }
done
if [ -z "$COPY_ROWS" ]; then COPY_ROWS=${ROWS_A:-$COPY_DEFAULT}; fi
[ "$COPY_ROWS" -gt 0 ] 2>/dev/null || COPY_ROWS=$COPY_DEFAULT
if [ -n "$def_copy_max" ] && [ "$COPY_ROWS" -gt "$def_copy_max" ]; then COPY_ROWS=$def_copy_max; fi
log "COPY of $COPY_ROWS rows"
copy_ceiling "$COPY_ROWS"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b + 0 <= 0) print "-"; else printf "%.1f", a / b }'; }
verdict() { if [ "$1" = 1 ]; then echo met; else echo "not met"; fi; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { print (a != "" && a != "-" && a + 0 >= b + 0) ? 1 : 0 }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { print (a != "" && a != "-" && a + 0 <= b + 0) ? 1 : 0 }'; }

report() {
    local s
    echo "ledger bench, $START, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "machine: $(nproc) cores (load average at the start: $LOADAVG); Postgres $PG_VERSION, same server for all;" \
         "fsync=$FSYNC synchronous_commit=$SYNC"
    echo "$CLIENTS submitters for ours: $PROCS processes x $TASKS tasks, one lg:transfer at a time each;" \
         "pgbench -c $PG_CLIENTS -j 2 -M prepared, one transfer per transaction (sorted FOR UPDATE, insert, 2 updates)"
    echo "${WARMUP_S} s warm-up, then ${SECONDS_RUN} s measured per run; latency per transfer, submit to result (ms);" \
         "the same URL for both (TLS when the server offers it, sslmode=prefer)"
    echo
    echo "scenario                      | ours tr/s |  p50 ms |  p99 ms | errors | pgbench tr/s |  p50 ms |  p99 ms | errors | ours/pgbench"
    echo "------------------------------|-----------|---------|---------|--------|--------------|---------|---------|--------|-------------"
    for s in $SCENARIOS; do
        if [ -n "${O_TPS[$s]:-}" ]; then
            printf "%-29s | %9s | %7s | %7s | %6s | %12s | %7s | %7s | %6s | %sx\n" "${LABEL[$s]}" \
                "${O_TPS[$s]}" "${O_P50[$s]}" "${O_P99[$s]}" "${O_ERR[$s]}" \
                "${B_TPS[$s]:-0}" "${B_P50[$s]:--}" "${B_P99[$s]:--}" "${B_ERR[$s]:--}" \
                "$(ratio "${O_TPS[$s]}" "${B_TPS[$s]:-0}")"
        else
            printf "%-29s | %9s | %7s | %7s | %6s | %12s | %7s | %7s | %6s | %s\n" "${LABEL[$s]}" \
                "not run" "-" "-" "-" "${B_TPS[$s]:-0}" "${B_P50[$s]:--}" "${B_P99[$s]:--}" "${B_ERR[$s]:--}" "-"
        fi
    done
    echo
    for s in $SCENARIOS; do
        [ -n "${O_TPS[$s]:-}" ] || continue
        echo "ours ${LABEL[$s]}: money check ${O_CHECK[$s]}; errors: ${O_WHAT[$s]};" \
             "${O_BATCHES[$s]} batches, $(awk -v e="${O_EVENTS[$s]}" -v b="${O_BATCHES[$s]}" \
             'BEGIN { printf "%.1f", (b > 0 ? e / b : 0) }') events a batch, ${O_RETRIES[$s]} retries"
    done
    printf "pgbench: one run of %d s per scenario (%d s for its connections, warm-up, then the last %d s counted, from its -l log);" \
        $((PG_CONNECT_S + WARMUP_S + SECONDS_RUN)) "$PG_CONNECT_S" "$SECONDS_RUN"
    printf " initial connection time:"
    for s in $SCENARIOS; do printf " (%s) %s ms" "$s" "${B_CONNECT[$s]:-?}"; done
    echo
    echo "ceiling: COPY of $COPY_ROWS transfer rows from a file (psql \\copy) into a bare table of ledger_transfers' columns:"
    printf "  no constraint, no index:   %9d rows/s; ours (a) / COPY = %s\n" "$COPY_BARE_RPS" \
        "$(awk -v a="${O_TPS[a]:-}" -v b="$COPY_BARE_RPS" 'BEGIN { if (a == "" || b <= 0) print "-"; else printf "%.2f", a / b }')"
    printf "  primary key on id (info):  %9d rows/s\n" "$COPY_PK_RPS"
    echo
    echo "goals:"
    local v
    for s in a b; do
        case " $SCENARIOS " in *" $s "*) ;; *) continue ;; esac
        v=$(ge "${O_TPS[$s]:-}" "$GOAL_TPS")
        echo "  ${LABEL[$s]}: >= $GOAL_TPS transfers/s: ${O_TPS[$s]:-not run}, $(verdict "$v")"
    done
    for s in b c; do
        case " $SCENARIOS " in *" $s "*) ;; *) continue ;; esac
        local r
        r=$(ratio "${O_TPS[$s]:-}" "${B_TPS[$s]:-0}")
        v=$(ge "$r" "$GOAL_RATIO")
        echo "  ${LABEL[$s]}: >= ${GOAL_RATIO}x pgbench: ${r}x, $(verdict "$v")"
    done
    for s in $SCENARIOS; do
        v=$(le "${O_P99[$s]:-}" "$GOAL_P99_MS")
        echo "  ${LABEL[$s]}: p99 <= $GOAL_P99_MS ms: ${O_P99[$s]:--} ms, $(verdict "$v")"
    done
}
report | tee "$OUT"

for s in $SCENARIOS; do
    [ -n "${O_TPS[$s]:-}" ] || continue
    [ "${O_ERR[$s]}" = 0 ] && [ "${O_CHECK[$s]}" = ok ] || status=1
done
exit "$status"
