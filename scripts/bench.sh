#!/usr/bin/env bash
# bench.sh -- what `make bench` runs: bench/http/run.sh first (it starts bench/results/latest.txt
# afresh), then every other bench/<name>/run.sh or bench/<name>/run.lua (run by bin/nuvion run),
# each appending its table to bench/results/latest.txt. A throwaway Postgres and Redis
# (scripts/services.sh) are up for the benches that need them, their URLs exported as
# NUVION_TEST_*, and stopped on every exit path. Exit status 1 when any bench failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
OUT=bench/results/latest.txt
SERVICES_DIR=$PWD/var/bench
status=0

trap 'scripts/services.sh stop "$SERVICES_DIR" >/dev/null 2>&1 || true' EXIT
rm -rf "$SERVICES_DIR"
if scripts/services.sh start "$SERVICES_DIR" 1 >/dev/null; then
    # shellcheck disable=SC1091
    . "$SERVICES_DIR/env"
else
    echo "bench.sh: Postgres/Redis did not start: the benches that need them will fail" >&2
fi

bench/http/run.sh || status=1
for dir in bench/*/; do
    name=$(basename "$dir")
    [ "$name" = http ] || [ "$name" = results ] && continue
    # the results file keeps the tables, not the JSON log lines the runs print beside them
    tmp=$(mktemp)
    if [ -x "$dir/run.sh" ]; then
        printf '\n== %s: %s\n' "$(echo "$name" | tr a-z A-Z)" "$dir"run.sh | tee -a "$OUT"
        "$dir/run.sh" | tee "$tmp" || status=1
    elif [ -f "$dir/run.lua" ]; then
        printf '\n== %s: bin/nuvion run %srun.lua\n' "$(echo "$name" | tr a-z A-Z)" "$dir" | tee -a "$OUT"
        bin/nuvion run "$dir/run.lua" | tee "$tmp" || status=1
    fi
    grep -v '^{"ts":' "$tmp" >> "$OUT" || true
    rm -f "$tmp"
done
exit "$status"
