#!/usr/bin/env bash
# services.sh -- throwaway Postgres and Redis servers for tests and local runs, under a folder
# of ours, on free loopback ports, run as the unprivileged user `nuvion` (Postgres refuses root).
#
#   scripts/services.sh start DIR [REDIS_COUNT]   start (initdb on first use); writes DIR/env
#   scripts/services.sh stop DIR                  stop what DIR/*.pid names (by pid)
#   scripts/services.sh provision DIR             a database and a role per service (below)
#
# DIR/env holds shell exports:
#   NUVION_TEST_PG_HOST, NUVION_TEST_PG_PORT
#   NUVION_TEST_DATABASE_URL   postgres://nuvion:nuvion@127.0.0.1:PORT/nuvion_test (a superuser)
#   NUVION_TEST_PG_SSL_URL     the same with sslmode=require (the server has a self-signed cert)
#   NUVION_TEST_REDIS_URL      redis://127.0.0.1:PORT/0 (the first Redis)
#   NUVION_TEST_REDIS_PORTS    every Redis port, space separated
# Redis runs with maxmemory-policy noeviction and no persistence.
#
# provision (after start, with one Redis per service) gives each service its own database and
# login role, which alone may connect to it (CONNECT revoked from PUBLIC), and its own Redis;
# the ledger has its own database, owned by core's role. It appends to DIR/env, per service
# (CORE, ACQUIRING, ...):  NUVION_<SERVICE>_DATABASE_URL  NUVION_<SERVICE>_REDIS_URL
# and NUVION_LEDGER_DATABASE_URL (loopback, sslmode=disable). Passwords are random, kept in
# DIR/passwords (mode 600).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
RUN_USER=nuvion
START_WAIT_S=30

die() { echo "services.sh: $*" >&2; exit 1; }

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

as_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u "$RUN_USER" -- "$@"; else "$@"; fi
}

ensure_user() {
    [ "$(id -u)" = 0 ] || { RUN_USER=$(id -un); return 0; }
    id "$RUN_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
}

# Where Postgres keeps its data and socket: DIR itself when the unprivileged user can reach it,
# else (a checkout under /root, say) a folder of its own under /tmp, named in DIR/pg.home.
pg_home() {
    local dir=$1 home
    if [ -f "$dir/pg.home" ]; then cat "$dir/pg.home"; return 0; fi
    if [ "$(id -u)" != 0 ] || runuser -u "$RUN_USER" -- test -w "$dir" 2>/dev/null; then
        home=$dir
    else
        home=$(mktemp -d /tmp/nuvion-pg.XXXXXX)
        chown "$RUN_USER" "$home"
        chmod 700 "$home"
    fi
    echo "$home" >"$dir/pg.home"
    echo "$home"
}

start_pg() {
    local dir port=$2 data
    dir=$(pg_home "$1")
    data="$dir/pg"
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        chown "$RUN_USER" "$dir" "$data"
        chmod 700 "$data"
        printf 'nuvion\n' >"$dir/pg.pw"
        chown "$RUN_USER" "$dir/pg.pw"
        as_user "$PG_BIN/initdb" -D "$data" -U nuvion --pwfile="$dir/pg.pw" -A scram-sha-256 \
            --auth-local=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        # A self-signed certificate, so specs can connect with sslmode=require.
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=127.0.0.1" \
            -keyout "$data/server.key" -out "$data/server.crt" >/dev/null 2>&1
        chown "$RUN_USER" "$data/server.key" "$data/server.crt"
        chmod 600 "$data/server.key"
        cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
ssl = on
fsync = on
synchronous_commit = on
max_connections = 300
shared_buffers = 128MB
CONF
    fi
    sed -i "s/^port = .*//" "$data/postgresql.conf"
    echo "port = $port" >>"$data/postgresql.conf"
    as_user "$PG_BIN/pg_ctl" -D "$data" -l "$dir/pg.log" -w -t "$START_WAIT_S" start >/dev/null ||
        { tail -n 20 "$dir/pg.log" >&2; die "postgres did not start"; }
    head -n 1 "$data/postmaster.pid" >"$1/pg.pid"
    as_user "$PG_BIN/psql" -h "$dir" -p "$port" -U nuvion -d postgres -qtAc \
        "SELECT 1 FROM pg_database WHERE datname = 'nuvion_test'" | grep -q 1 ||
        as_user "$PG_BIN/createdb" -h "$dir" -p "$port" -U nuvion nuvion_test
}

start_redis() {
    local dir=$1 port=$2 n=$3 home
    home=$(pg_home "$dir")
    mkdir -p "$home/redis-$n"
    chown "$RUN_USER" "$home/redis-$n"
    as_user redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --maxmemory-policy noeviction --dir "$home/redis-$n" --daemonize yes \
        --pidfile "$home/redis-$n/redis.pid" --logfile "$home/redis-$n/redis.log" >/dev/null
    local i
    for ((i = 0; i < START_WAIT_S * 10; i++)); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
        grep -q "Address already in use" "$home/redis-$n/redis.log" 2>/dev/null && break
        sleep 0.1
    done
    if ! redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
        echo "services.sh: redis on $port did not start" >&2
        : >"$home/redis-$n/redis.log" # the next try reads its own log
        return 1
    fi
    cat "$home/redis-$n/redis.pid" >"$dir/redis-$n.pid"
}

# A port taken between free_port and the bind fails the start: another port is tried.
REDIS_START_TRIES=5

cmd_start() {
    local dir=$1 count=${2:-1} pg_port ports=() i p
    ensure_user
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chown "$RUN_USER" "$dir" 2>/dev/null || true
    pg_port=$(free_port) || die "no free port"
    start_pg "$dir" "$pg_port"
    for ((i = 1; i <= count; i++)); do
        local try started=0
        for ((try = 1; try <= REDIS_START_TRIES; try++)); do
            p=$(free_port) || die "no free port"
            if start_redis "$dir" "$p" "$i"; then
                started=1
                break
            fi
        done
        [ "$started" = 1 ] || die "redis $i did not start on $REDIS_START_TRIES ports"
        ports+=("$p")
    done
    cat >"$dir/env" <<ENV
export NUVION_TEST_PG_HOST=127.0.0.1
export NUVION_TEST_PG_PORT=$pg_port
export NUVION_TEST_PG_SOCKET_DIR=$(cat "$dir/pg.home")
export NUVION_TEST_DATABASE_URL=postgres://nuvion:nuvion@127.0.0.1:$pg_port/nuvion_test
export NUVION_TEST_PG_SSL_URL=postgres://nuvion:nuvion@127.0.0.1:$pg_port/nuvion_test?sslmode=require
export NUVION_TEST_REDIS_URL=redis://127.0.0.1:${ports[0]}/0
export NUVION_TEST_REDIS_PORTS="${ports[*]}"
ENV
    echo "services.sh: postgres on 127.0.0.1:$pg_port, redis on ${ports[*]} (env in $dir/env)"
}

stop_pid_file() {
    local f=$1 pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

cmd_stop() {
    local dir=$1 f
    [ -d "$dir" ] || return 0
    for f in "$dir"/redis-*.pid; do stop_pid_file "$f"; done
    # Postgres: a fast shutdown (SIGINT to the postmaster) ends every session.
    if [ -f "$dir/pg.pid" ]; then
        local pid
        pid=$(cat "$dir/pg.pid")
        kill -INT "$pid" 2>/dev/null || true
        stop_pid_file "$dir/pg.pid"
    fi
    # A home of its own under /tmp goes with the servers (DIR itself is the caller's).
    if [ -f "$dir/pg.home" ] && [ "$(cat "$dir/pg.home")" != "$dir" ]; then
        case "$(cat "$dir/pg.home")" in /tmp/nuvion-pg.*) rm -rf "$(cat "$dir/pg.home")" ;; esac
        rm -f "$dir/pg.home"
    fi
}

SERVICES=(core acquiring payout account_issuing card_issuing blockchain)

cmd_provision() {
    local dir=$1 svc db role pw url port i=0
    [ -f "$dir/env" ] || die "provision: $dir/env missing (start first)"
    # shellcheck disable=SC1091
    . "$dir/env"
    local ports=($NUVION_TEST_REDIS_PORTS)
    [ "${#ports[@]}" -ge "${#SERVICES[@]}" ] || die "provision: needs ${#SERVICES[@]} Redis servers"
    touch "$dir/passwords"
    chmod 600 "$dir/passwords"
    local sql=""
    for svc in "${SERVICES[@]}" ledger; do
        db=$svc
        role=$svc
        [ "$svc" = ledger ] && role=core
        if ! grep -q "^$role " "$dir/passwords"; then
            echo "$role $(openssl rand -hex 24)" >>"$dir/passwords"
        fi
        pw=$(awk -v r="$role" '$1 == r { print $2 }' "$dir/passwords")
        sql+="DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN PASSWORD '$pw';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $db OWNER $role' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\\gexec
REVOKE CONNECT, TEMPORARY ON DATABASE $db FROM PUBLIC;
GRANT CONNECT ON DATABASE $db TO $role;
"
    done
    printf '%s' "$sql" | as_user "$PG_BIN/psql" -q -v ON_ERROR_STOP=1 -h "$(cat "$dir/pg.home")" \
        -p "$NUVION_TEST_PG_PORT" -U nuvion -d postgres >"$dir/provision.log" 2>&1 ||
        { cat "$dir/provision.log" >&2; die "provision failed"; }
    sed -i '/^export NUVION_[A-Z_]*_\(DATABASE\|REDIS\)_URL=/{/NUVION_TEST_/!d}' "$dir/env"
    {
        for svc in "${SERVICES[@]}" ledger; do
            role=$svc
            [ "$svc" = ledger ] && role=core
            pw=$(awk -v r="$role" '$1 == r { print $2 }' "$dir/passwords")
            # loopback to a server on this machine: TLS would protect nothing and cost each
            # query a record layer on both ends (a remote database keeps sslmode=verify-full)
            url="postgres://$role:$pw@127.0.0.1:$NUVION_TEST_PG_PORT/$svc?sslmode=disable"
            echo "export NUVION_$(echo "$svc" | tr a-z A-Z)_DATABASE_URL=$url"
            if [ "$svc" != ledger ]; then
                echo "export NUVION_$(echo "$svc" | tr a-z A-Z)_REDIS_URL=redis://127.0.0.1:${ports[$i]}/0"
                i=$((i + 1))
            fi
        done
    } >>"$dir/env"
    echo "services.sh: provisioned ${SERVICES[*]} and ledger (env in $dir/env)"
}

case "${1:-}" in
start) [ $# -ge 2 ] || die "usage: services.sh start DIR [REDIS_COUNT]"; cmd_start "$2" "${3:-1}" ;;
stop) [ $# -ge 2 ] || die "usage: services.sh stop DIR"; cmd_stop "$2" ;;
provision) [ $# -ge 2 ] || die "usage: services.sh provision DIR"; cmd_provision "$2" ;;
*) die "usage: services.sh start|stop DIR" ;;
esac
