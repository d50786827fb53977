#!/usr/bin/env bash
# bench/core/run.sh -- what `make bench` runs for core (scripts/bench.sh): the token bench
# (bench/core/tokens.lua), then core over HTTP with wrk:
#   POST /v1/customers   an individual with every PII field (validation, Idempotency-Key claimed
#                        and its response stored, sealed insert, state change, outbox, audit),
#                        a new Idempotency-Key per request (bench/core/customers_wrk.lua)
#   POST /v1/transfers   1 unit between funded wallet pairs, each wrk thread on its own pair, no
#                        key (bench/core/wallets_wrk.lua); afterwards every pair must still sum to
#                        its funding in the ledger
# Core runs with 2 workers (WEB_CONCURRENCY=2) on a free port, wrk with 2 threads; both share the
# machine's cores with Postgres (fsync and synchronous_commit on) and Redis.
#
# Core needs its own database, role and Redis: this script starts its own throwaway servers
# (scripts/services.sh start DIR 6 + provision, under var/bench-core), applies the migrations
# (bin/nuvion migrate --all), runs with NUVION_ENV=development (the public development secrets,
# docs/auth.md) and a test key from lua/bin/bootstrap.lua --new-key; it stops core and the
# servers (by pid) on every exit path.
#
# Prints one table: req/s, p50, p99, errors (non-2xx and socket errors) and goals met / not met
# (then the CPU each request cost core's processes and Postgres's, from /proc, measured run)
# (issue 6: >= 5,000 customers/s, >= 10,000 transfers/s, p99 <= 20 ms). Exit status 1 when a
# run had errors, the ledger check failed or something did not start; a missed goal is reported
# in the table, not in the status.
# Environment: BENCH_CORE_SECONDS (measured seconds per route, default 10), BENCH_CORE_WARMUP_S
# (default 2), BENCH_CORE_CONNS (wrk connections, default 32), BENCH_CORE_SKIP_TOKENS=1.
# About 45 s in all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

SECONDS_RUN=${BENCH_CORE_SECONDS:-10}
WARMUP_S=${BENCH_CORE_WARMUP_S:-2}
CONNS=${BENCH_CORE_CONNS:-32}
GOAL_CUSTOMERS=5000
GOAL_TRANSFERS=10000
GOAL_P99_MS=20
DIR=$PWD/var/bench-core
status=0

if [ "${BENCH_CORE_SKIP_TOKENS:-0}" != 1 ]; then
    echo "-- token verification: bin/nuvion run bench/core/tokens.lua"
    bin/nuvion run bench/core/tokens.lua || status=1
    echo
fi

command -v wrk >/dev/null || { echo "bench/core: wrk not found (make deps)"; exit 1; }
command -v jq >/dev/null || { echo "bench/core: jq not found"; exit 1; }

SRV=""
LOG=$(mktemp)
cleanup() {
    if [ -n "$SRV" ]; then kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true; fi
    scripts/services.sh stop "$DIR" >/dev/null 2>&1 || true
    rm -f "$LOG"
}
trap cleanup EXIT

# A free port may still be taken by a socket in TIME-WAIT when Postgres binds it: try again.
started=""
for _ in 1 2 3 4 5; do
    scripts/services.sh stop "$DIR" >/dev/null 2>&1 || true
    rm -rf "$DIR"
    if scripts/services.sh start "$DIR" 6 >/dev/null 2>&1; then started=1; break; fi
done
[ -n "$started" ] || { echo "bench/core: Postgres/Redis did not start"; exit 1; }
scripts/services.sh provision "$DIR" >/dev/null || { echo "bench/core: provision failed"; exit 1; }
# shellcheck disable=SC1091
. "$DIR/env"
export NUVION_ENV=development NUVION_CORE_RATE_PER_S=1000000 NUVION_CORE_RATE_BURST=1000000
bin/nuvion migrate --all >/dev/null 2>&1 || { echo "bench/core: migrations failed"; exit 1; }

PORT=$(free_port)
PORT=$PORT WEB_CONCURRENCY=2 bin/nuvion serve core >"$LOG" 2>&1 &
SRV=$!
for _ in $(seq 1 100); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.1; done
curl -sf "localhost:$PORT/health" >/dev/null || { echo "bench/core: core did not start"; tail -5 "$LOG"; exit 1; }

SECRET=$(bin/nuvion run lua/bin/bootstrap.lua --new-key 2>&1 | grep -oE 'sk_test_[0-9A-Za-z]{43}' | head -1)
[ -n "$SECRET" ] || { echo "bench/core: no key from bootstrap"; exit 1; }
post() { curl -sf "localhost:$PORT$1" -H "Authorization: Bearer $SECRET" -H 'Content-Type: application/json' -d "$2"; }

FUNDING=100000000
WALLETS=""
for _ in 1 2; do
    a=$(post /v1/wallets '{"currency":"USD"}' | jq -r .id)
    b=$(post /v1/wallets '{"currency":"USD"}' | jq -r .id)
    post "/v1/test_helpers/wallets/$a/fund" "{\"amount\":$FUNDING}" >/dev/null ||
        { echo "bench/core: funding failed"; exit 1; }
    WALLETS="$WALLETS $a,$b"
done
export SECRET WALLETS

# ms VALUE: wrk's latency (850.00us, 12.31ms, 1.02s) in ms
ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n = n * 60000;
        else if (v ~ /s$/) n = n * 1000
        printf "%.2f", n }'
}

# ticks PID: CPU clock ticks (user + system) of PID and its children and grandchildren
ticks() {
    local pids="$1" c
    for c in $(pgrep -P "$1" || true); do pids="$pids $c $(pgrep -P "$c" | tr '\n' ' ')"; done
    for c in $pids; do awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || true; done |
        awk '{ s += $1 } END { print s + 0 }'
}
HZ=$(getconf CLK_TCK)
PG_PID=$(head -1 "$DIR/pg/postmaster.pid")

# run NAME SCRIPT: a warm-up, then the measured run; sets R_RPS R_P50 R_P99 R_ERR R_N and
# R_CORE_MS R_PG_MS (CPU ms per request of core's processes and of Postgres's, measured run)
run() {
    local script=$2 out c0 p0 c1 p1
    wrk -t2 -c"$CONNS" -d"${WARMUP_S}s" -s "$script" "http://127.0.0.1:$PORT" >/dev/null 2>&1 || true
    c0=$(ticks "$SRV"); p0=$(ticks "$PG_PID")
    out=$(timeout $((SECONDS_RUN + 30)) wrk -t2 -c"$CONNS" -d"${SECONDS_RUN}s" --latency -s "$script" \
        "http://127.0.0.1:$PORT" 2>/dev/null) || { echo "bench/core: wrk failed ($1)"; status=1; }
    c1=$(ticks "$SRV"); p1=$(ticks "$PG_PID")
    R_RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    R_P50=$(ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    R_P99=$(ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    R_N=$(awk '/requests in/ { print $1 }' <<<"$out")
    R_ERR=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(",", ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    R_CORE_MS=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="${R_N:-0}" 'BEGIN { printf "%.3f", (n > 0 ? t * 1000 / hz / n : 0) }')
    R_PG_MS=$(awk -v t=$((p1 - p0)) -v hz="$HZ" -v n="${R_N:-0}" 'BEGIN { printf "%.3f", (n > 0 ? t * 1000 / hz / n : 0) }')
    [ -n "$R_RPS" ] || { R_RPS=0; status=1; }
    [ "$R_ERR" = 0 ] || status=1
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
run customers bench/core/customers_wrk.lua
C=("$R_RPS" "$R_P50" "$R_P99" "$R_ERR" "$R_N" "$R_CORE_MS" "$R_PG_MS")
run transfers bench/core/wallets_wrk.lua
T=("$R_RPS" "$R_P50" "$R_P99" "$R_ERR" "$R_N" "$R_CORE_MS" "$R_PG_MS")

moved=0
check=ok
for pair in $WALLETS; do
    a=${pair%,*}; b=${pair#*,}
    av=$(curl -sf "localhost:$PORT/v1/wallets/$a" -H "Authorization: Bearer $SECRET" | jq .balance.available)
    bv=$(curl -sf "localhost:$PORT/v1/wallets/$b" -H "Authorization: Bearer $SECRET" | jq .balance.available)
    if [ $((av + bv)) -ne "$FUNDING" ]; then check="pair $pair sums to $((av + bv))"; status=1; fi
    moved=$((moved + bv))
done
if [ "$moved" -lt "${T[4]:-0}" ]; then check="$moved units moved, fewer than the ${T[4]} answers"; status=1; fi

verdict() { # rps goal p99 errors
    awk -v r="$1" -v g="$2" -v p="$3" -v gp="$GOAL_P99_MS" -v e="$4" 'BEGIN {
        m = ""
        if (r + 0 < g + 0) m = m "req/s"
        if (p + 0 > gp + 0) m = m (m == "" ? "" : ", ") "p99"
        if (e + 0 > 0) m = m (m == "" ? "" : ", ") "errors"
        print (m == "" ? "met" : "NOT MET (" m ")") }'
}

echo "-- core over HTTP: core with 2 workers, wrk -t2 -c$CONNS, ${WARMUP_S} s warm-up + ${SECONDS_RUN} s per route," \
     "load before: $LOAD_BEFORE"
printf '%-32s | %8s | %8s | %8s | %6s | %-22s | %s\n' route "req/s" "p50 ms" "p99 ms" errors goal result
printf '%s\n' "---------------------------------|----------|----------|----------|--------|------------------------|----------"
printf '%-32s | %8s | %8s | %8s | %6s | %-22s | %s\n' "POST /v1/customers" "${C[0]}" "${C[1]}" "${C[2]}" "${C[3]}" \
    ">= $GOAL_CUSTOMERS/s, p99 <= $GOAL_P99_MS" "$(verdict "${C[0]}" "$GOAL_CUSTOMERS" "${C[2]}" "${C[3]}")"
printf '%-32s | %8s | %8s | %8s | %6s | %-22s | %s\n' "POST /v1/transfers (wallets)" "${T[0]}" "${T[1]}" "${T[2]}" "${T[3]}" \
    ">= $GOAL_TRANSFERS/s, p99 <= $GOAL_P99_MS" "$(verdict "${T[0]}" "$GOAL_TRANSFERS" "${T[2]}" "${T[3]}")"
echo "ledger check: $check ($moved units moved in ${T[4]:-0} transfers answered in the measured run and the warm-up)"
echo "cpu per request (measured run, $(nproc) cores shared by wrk, core, Postgres and Redis):" \
     "customers: core ${C[5]} ms, Postgres ${C[6]} ms; transfers: core ${T[5]} ms, Postgres ${T[6]} ms"
exit "$status"
