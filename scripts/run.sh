#!/usr/bin/env bash
# run.sh -- what `make run` runs: a local Postgres and one Redis per service under var/run (the
# database is kept between runs), a database and a role per service (scripts/services.sh
# provision), the release phase (migrations: bin/nuvion migrate --all), then the six
# services under foreman, each with its own DATABASE_URL and REDIS_URL (Procfile.dev). Ctrl-C
# stops the services, then Postgres and Redis.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=$PWD/var/run
BASE=${RUN_PORT:-5000}
SERVICES=(core acquiring payout account_issuing card_issuing blockchain)

trap 'scripts/services.sh stop "$DIR"' EXIT
scripts/services.sh start "$DIR" "${#SERVICES[@]}"
scripts/services.sh provision "$DIR"
# shellcheck disable=SC1091
. "$DIR/env"
# A local run uses the development defaults of docs/auth.md (API key pepper, signing key
# keyring, service keys) unless real ones are given; the services check tokens against core.
export NUVION_ENV=${NUVION_ENV:-development}
# Webhooks to local receivers (http://127.0.0.1:...): the SSRF guard's test-mode allowance, for
# local runs only (docs/webhooks.md); a deployment leaves it unset.
export NUVION_WEBHOOKS_ALLOW_PRIVATE=${NUVION_WEBHOOKS_ALLOW_PRIVATE:-1}
export NUVION_AUTH_JWKS_URL=${NUVION_AUTH_JWKS_URL:-http://127.0.0.1:$BASE/.well-known/jwks.json}
# The KYC simulator calls core back when a check completes (the poller stays the fallback).
export NUVION_KYC_CALLBACK_URL=${NUVION_KYC_CALLBACK_URL:-http://127.0.0.1:$BASE/v1/providers/kyc/events}

bin/nuvion migrate --all # the release phase, as the Procfile's release runs it

echo "Nuvion: the six services (foreman, Procfile.dev), Ctrl-C stops them all"
i=0
for svc in "${SERVICES[@]}"; do
    printf '  %-16s -> http://127.0.0.1:%d  (GET /health)\n' "$svc" $((BASE + 100 * i))
    i=$((i + 1))
done
echo "  postgres         -> 127.0.0.1:$NUVION_TEST_PG_PORT (a database and a role per service)"
echo "  redis            -> 127.0.0.1: $NUVION_TEST_REDIS_PORTS (one per service)"
echo "  first partner and key: . var/run/env && NUVION_ENV=development bin/nuvion run lua/bin/bootstrap.lua"
foreman start -f Procfile.dev -d . -p "$BASE"
