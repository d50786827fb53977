#!/usr/bin/env bash
# bench/pg/run.sh -- nuvion.pg against pgbench on the same Postgres, in the same run:
# 64 clients running SELECT $1::int for 10 s each. pgbench: -c 64 -j 2 -M prepared with the
# script `\set x random(1,1000)` / `SELECT :x::int;` (-n: no vacuum, no tables needed).
# nuvion: bench/pg/load.lua, prepared statements from its per-connection cache, as 2 workers of
# 32 tasks (pgbench's 2 threads; WEB_CONCURRENCY = cores) and as 1 worker of 64 tasks.
# Rounds alternate; the best of each counts. About 60 s in all.
# Uses NUVION_TEST_DATABASE_URL (scripts/bench.sh starts the servers), else starts its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROUNDS=${BENCH_PG_ROUNDS:-2}
SECONDS_RUN=${BENCH_PG_SECONDS:-8}
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

# Two processes of load.lua at once (2 workers, as WEB_CONCURRENCY=2 on this machine): the
# sum of their queries/s.
two_workers() {
    local half=$((CLIENTS / 2)) a b
    BENCH_PG_TASKS=$half BENCH_PG_SECONDS=$SECONDS_RUN bin/nuvion run bench/pg/load.lua >"$WORK/w1" &
    local pid=$!
    BENCH_PG_TASKS=$half BENCH_PG_SECONDS=$SECONDS_RUN bin/nuvion run bench/pg/load.lua >"$WORK/w2"
    wait "$pid"
    a=$(sed -n 's/^qps \([0-9]*\) errors 0$/\1/p' "$WORK/w1")
    b=$(sed -n 's/^qps \([0-9]*\) errors 0$/\1/p' "$WORK/w2")
    if [ -n "$a" ] && [ -n "$b" ]; then echo $((a + b)); else echo 0; fi
}

best_pg=0
best_two=0
best_one=0
rounds_pg=""
rounds_two=""
rounds_one=""
for ((i = 1; i <= ROUNDS; i++)); do
    tps=$("$PGBENCH" -n -c "$CLIENTS" -j 2 -M prepared -T "$SECONDS_RUN" -f "$WORK/select.sql" \
          "$NUVION_TEST_DATABASE_URL" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\) (without initial.*/\1/p')
    tps=${tps%.*}
    tps=${tps:-0}
    rounds_pg="$rounds_pg $tps"
    [ "$tps" -gt "$best_pg" ] && best_pg=$tps
    two=$(two_workers)
    rounds_two="$rounds_two $two"
    [ "$two" -gt "$best_two" ] && best_two=$two
    one=$(BENCH_PG_TASKS=$CLIENTS BENCH_PG_SECONDS=$SECONDS_RUN bin/nuvion run bench/pg/load.lua |
          sed -n 's/^qps \([0-9]*\) errors 0$/\1/p')
    one=${one:-0}
    rounds_one="$rounds_one $one"
    [ "$one" -gt "$best_one" ] && best_one=$one
done

ratio() { awk -v a="$1" -v b="$best_pg" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
r_two=$(ratio "$best_two")
r_one=$(ratio "$best_one")
met=$(awk -v r="$r_two" -v g="$GOAL" 'BEGIN { print (r >= g) ? "met" : "not met" }')
echo "machine: $(nproc) cores; Postgres $(psql "$NUVION_TEST_DATABASE_URL" -qtAc 'SHOW server_version' 2>/dev/null || echo '?'), same server for all"
echo "SELECT \$1::int, $CLIENTS clients in all, ${SECONDS_RUN} s per run, best of $ROUNDS rounds (pgbench, nuvion x2, nuvion x1 in turn)"
echo "TLS on every connection (sslmode=prefer, the server has a certificate); prepared statements on both sides"
echo
echo "client                                           | queries/s | ratio vs pgbench"
echo "-------------------------------------------------|-----------|-----------------"
printf "pgbench -c 64 -j 2 -M prepared (2 threads)       | %9d | 1.00\n" "$best_pg"
printf "nuvion.pg, 2 workers x 32 tasks (pool of 32 each)| %9d | %s\n" "$best_two" "$r_two"
printf "nuvion.pg, 1 worker x 64 tasks (pool of 64)      | %9d | %s\n" "$best_one" "$r_one"
echo
echo "rounds: pgbench:$rounds_pg; nuvion x2:$rounds_two; nuvion x1:$rounds_one"
echo "goal: >= $GOAL x pgbench queries/s with as many threads (2 workers vs -j 2): $r_two, $met"
echo "(1 worker: $r_one; one thread against 64 busy backends on $(nproc) cores gets a smaller share of the CPU)"
[ "$best_two" -gt 0 ] && [ "$best_one" -gt 0 ] && [ "$best_pg" -gt 0 ]
