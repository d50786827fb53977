#!/usr/bin/env bash
# bench/pg/run.sh -- nuvion.pg against pgbench on the same Postgres, in the same run:
# 64 clients running SELECT $1::int for 10 s each. pgbench: -c 64 -j 2 -M prepared with the
# script `\set x random(1,1000)` / `SELECT :x::int;` (-n: no vacuum, no tables needed).
# nuvion: bench/pg/load.lua, 64 tasks in one worker (one thread) on a pool of 64 connections,
# prepared statements from its per-connection cache. Rounds alternate; the best of each counts.
# Uses NUVION_TEST_DATABASE_URL (scripts/bench.sh starts the servers), else starts its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROUNDS=${BENCH_PG_ROUNDS:-2}
SECONDS_RUN=${BENCH_PG_SECONDS:-10}
CLIENTS=64
GOAL=0.9

PGBENCH=$(command -v pgbench || echo /usr/lib/postgresql/15/bin/pgbench)
[ -x "$PGBENCH" ] || { echo "bench/pg: pgbench not found (Debian: postgresql-contrib)"; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nuvion-bench-pg.XXXXXX")
OWN=""
cleanup() {
    [ -n "$OWN" ] && scripts/services.sh stop "$WORK/services" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
if [ -z "${NUVION_TEST_DATABASE_URL:-}" ]; then
    scripts/services.sh start "$WORK/services" 0 >/dev/null
    OWN=1
    # shellcheck disable=SC1091
    . "$WORK/services/env"
fi
printf '\\set x random(1,1000)\nSELECT :x::int;\n' >"$WORK/select.sql"

best_pgbench=0
best_nuvion=0
pg_rounds=""
nv_rounds=""
for ((i = 1; i <= ROUNDS; i++)); do
    tps=$("$PGBENCH" -n -c "$CLIENTS" -j 2 -M prepared -T "$SECONDS_RUN" -f "$WORK/select.sql" \
          "$NUVION_TEST_DATABASE_URL" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\) (without initial.*/\1/p')
    tps=${tps%.*}
    pg_rounds="$pg_rounds ${tps:-0}"
    [ "${tps:-0}" -gt "$best_pgbench" ] && best_pgbench=$tps
    qps=$(BENCH_PG_TASKS=$CLIENTS BENCH_PG_SECONDS=$SECONDS_RUN bin/nuvion run bench/pg/load.lua |
          sed -n 's/^qps \([0-9]*\) errors 0$/\1/p')
    nv_rounds="$nv_rounds ${qps:-0}"
    [ "${qps:-0}" -gt "$best_nuvion" ] && best_nuvion=$qps
done

ratio=$(awk -v a="$best_nuvion" -v b="$best_pgbench" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
met=$(awk -v r="$ratio" -v g="$GOAL" 'BEGIN { print (r >= g) ? "met" : "not met" }')
echo "machine: $(nproc) cores; Postgres $(psql "$NUVION_TEST_DATABASE_URL" -qtAc 'SHOW server_version' 2>/dev/null || echo '?'), same server for both"
echo "SELECT \$1::int, $CLIENTS clients, ${SECONDS_RUN} s per round, best of $ROUNDS alternating rounds"
echo
echo "client                                        | queries/s | ratio"
echo "----------------------------------------------|-----------|------"
printf "nuvion.pg (1 worker, 64 tasks, pool of 64)    | %9d | %s\n" "$best_nuvion" "$ratio"
printf "pgbench -c 64 -j 2 -M prepared (2 threads)    | %9d | 1.00\n" "$best_pgbench"
echo
echo "rounds: nuvion:$nv_rounds; pgbench:$pg_rounds"
echo "goal: >= $GOAL x pgbench queries/s: $ratio, $met"
[ "$best_nuvion" -gt 0 ] && [ "$best_pgbench" -gt 0 ]
