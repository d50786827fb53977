#!/usr/bin/env bash
# wallets.sh -- wallet-to-wallet transfers over HTTP against core with 2 workers, with wrk.
# Needs the environment of scripts/services.sh start+provision (var/dev/env) and migrations:
#   . var/dev/env && bin/nuvion migrate --all && bench/core/wallets.sh [seconds] [connections]
# Starts core on a free port, makes a test key (bootstrap --new-key), PAIRS wallet pairs funded
# through the test helper, runs wrk (2 threads, each on its own pair), checks the ledger sums,
# stops core (by its pid). AUTH=token authenticates with an access token instead of the key.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
DURATION=${1:-10}
CONNS=${2:-32}
PORT=${PORT:-$(( 20000 + RANDOM % 10000 ))}
export NUVION_ENV=development NUVION_CORE_RATE_PER_S=1000000 NUVION_CORE_RATE_BURST=1000000

LOG=$(mktemp)
PORT=$PORT WEB_CONCURRENCY=2 bin/nuvion serve core >"$LOG" 2>&1 &
SRV=$!
trap 'kill "$SRV" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 100); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 0.1; done

SECRET=$(bin/nuvion run lua/bin/bootstrap.lua --new-key 2>&1 | grep -oE 'sk_test_[0-9A-Za-z]{43}' | head -1)
[ -n "$SECRET" ] || { echo "wallets.sh: no key from bootstrap" >&2; exit 1; }
post() { curl -sf "localhost:$PORT$1" -H "Authorization: Bearer $SECRET" -H 'Content-Type: application/json' -d "$2"; }

WALLETS=""
for _ in 1 2; do
    a=$(post /v1/wallets '{"currency":"USD"}' | jq -r .id)
    b=$(post /v1/wallets '{"currency":"USD"}' | jq -r .id)
    post "/v1/test_helpers/wallets/$a/fund" '{"amount":100000000}' >/dev/null
    WALLETS="$WALLETS $a,$b"
done
# AUTH=token: an access token (checked locally, no key lookup in the database) instead of the key
BEARER=$SECRET
if [ "${AUTH:-key}" = token ]; then
    BEARER=$(curl -sf "localhost:$PORT/v1/oauth/token" -u "$SECRET:" -d grant_type=client_credentials | jq -r .access_token)
fi
SECRET=$BEARER
export SECRET WALLETS

echo "POST /v1/transfers (${AUTH:-key}), wrk -t2 -c$CONNS -d${DURATION}s, core with 2 workers, load: $(cut -d' ' -f1-3 /proc/loadavg)"
wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -s bench/core/wallets_wrk.lua "http://127.0.0.1:$PORT" \
    | grep -E 'Requests/sec|50%|99%|Non-2xx|requests in|Socket errors'
moved=0
for pair in $WALLETS; do
    a=${pair%,*}; b=${pair#*,}
    av=$(curl -sf "localhost:$PORT/v1/wallets/$a" -H "Authorization: Bearer $SECRET" | jq .balance.available)
    bv=$(curl -sf "localhost:$PORT/v1/wallets/$b" -H "Authorization: Bearer $SECRET" | jq .balance.available)
    [ $((av + bv)) -eq 100000000 ] || { echo "wallets.sh: pair $pair sums to $((av + bv))" >&2; exit 1; }
    moved=$((moved + bv))
done
echo "ledger: $moved units moved in the wallets, every pair sums to its funding"
