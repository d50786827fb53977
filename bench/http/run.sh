#!/usr/bin/env bash
# run.sh -- HTTP bench: nuvion against nginx + lua-nginx-module on the same route, measured by
# the same wrk in the same run, then nuvion under load while its code is reloaded 20 times.
#
#   bench/http/run.sh            (make bench runs it; needs bin/nuvion, nginx-light,
#                                 libnginx-mod-http-lua and wrk, which `make deps` installs)
#
# Everything listens on loopback ports found free at start; every run is bounded in time; what
# the script starts it stops by pid (EXIT trap). The tables are printed and saved to
# bench/results/latest.txt. Exit status 1 when a server failed to start or the reload run saw
# errors.
#
# Each server and worker count is measured BENCH_ROUNDS times, the rounds interleaved (nuvion,
# nginx, nuvion, nginx, ...), and the best round by req/s is reported: on a shared machine the
# least disturbed round is the closest to the servers' own cost; every round's req/s is printed.
#
# Environment: NUVION_BIN (default bin/nuvion), BENCH_DURATION_S (each measured run, default 10),
# BENCH_ROUNDS (default 3), BENCH_RELOAD_S (the reload run, default 20), BENCH_RELOADS (SIGHUPs
# sent, one a second, default 20).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 2
ROOT=$PWD

BIN=${NUVION_BIN:-bin/nuvion}
APP=bench/http/app
TEMPLATE=bench/http/nginx.conf.template
OUT=bench/results/latest.txt
DURATION_S=${BENCH_DURATION_S:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP_S=2
RELOAD_S=${BENCH_RELOAD_S:-20}
RELOADS=${BENCH_RELOADS:-20}
START_WAIT_S=10      # a server must answer within this
STOP_WAIT_S=30       # then SIGKILL (nuvion drains for up to 20 s, nginx's TERM is immediate)
BODY='{"ok":true}'   # what both servers answer, byte for byte

# Load: at 1 worker, one core for the server and one for wrk (pinned, when there are two).
# At 2 workers nothing is pinned: the servers' 2 workers and wrk's 2 threads share both cores.
LOAD_1=(-t1 -c50)
LOAD_2=(-t2 -c100)
if [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0)
    PIN_WRK=(taskset -c 1)
else
    PIN_SERVER=()
    PIN_WRK=()
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nuvion-bench.XXXXXX") || exit 2
SERVER_PID=""
FAILED=0

say() { printf '%s\n' "$*" >&2; }

# Stops a process we started: SIGTERM, then SIGKILL after STOP_WAIT_S.
stop_pid() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

cleanup() {
    stop_pid "$SERVER_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'say "run.sh: interrupted"; exit 130' INT TERM

# shellcheck source=scripts/lib.sh
. scripts/lib.sh # free_port

# Waits until GET /hello answers the expected body; fails if the server died or took too long.
wait_ready() {
    local port=$1 pid=$2 name=$3 body i
    for ((i = 0; i < START_WAIT_S * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "run.sh: $name exited during start"
            return 1
        fi
        body=$(curl -s -m 1 "http://127.0.0.1:$port/hello" 2>/dev/null)
        if [ "$body" = "$BODY" ]; then return 0; fi
        sleep 0.1
    done
    say "run.sh: $name did not answer $BODY on :$port within ${START_WAIT_S} s (got: ${body:-nothing})"
    return 1
}

# start_nuvion WORKERS PORT PIN... -- sets SERVER_PID.
start_nuvion() {
    local workers=$1 port=$2
    shift 2
    PORT=$port WEB_CONCURRENCY=$workers NUVION_ACCESS_LOG=0 \
        "$@" "$BIN" serve "$APP" >"$WORK/nuvion-$workers.log" 2>&1 &
    SERVER_PID=$!
    if ! wait_ready "$port" "$SERVER_PID" "nuvion ($workers workers)"; then
        tail -n 20 "$WORK/nuvion-$workers.log" >&2
        return 1
    fi
}

# start_nginx WORKERS PORT PIN... -- sets SERVER_PID (the master's).
start_nginx() {
    local workers=$1 port=$2 prefix
    shift 2
    prefix="$WORK/nginx-$workers"
    mkdir -p "$prefix/logs"
    sed -e "s|@PREFIX@|$prefix|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$workers|g" \
        "$TEMPLATE" >"$prefix/nginx.conf"
    "$@" nginx -p "$prefix" -c "$prefix/nginx.conf" >"$prefix/stdout.log" 2>&1 &
    SERVER_PID=$!
    if ! wait_ready "$port" "$SERVER_PID" "nginx ($workers workers)"; then
        cat "$prefix/stdout.log" "$prefix/error.log" >&2 2>/dev/null
        return 1
    fi
}

# wrk_run OUTFILE DURATION_S ARGS... -- the measured run, bounded.
wrk_run() {
    local out=$1 secs=$2
    shift 2
    timeout -k 5 $((secs + 30)) "${PIN_WRK[@]}" wrk "$@" -d"${secs}s" --latency >"$out" 2>&1
}

# Latency as wrk prints it (812.00us, 1.23ms, 2.00s) -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n = n * 60000;
        else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n }'
}

# Reads a wrk report: RPS, P50_MS, P99_MS, REQUESTS, NON2XX, SOCKERR ("connect 0, read 0, ...").
parse_wrk() {
    local f=$1
    RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
    P50_MS=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$f")")
    P99_MS=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$f")")
    REQUESTS=$(awk '/ requests in / { print $1 }' "$f")
    NON2XX=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$f")
    NON2XX=${NON2XX:-0}
    SOCKERR=$(sed -n 's/^ *Socket errors: //p' "$f")
    SOCKERR=${SOCKERR:-connect 0, read 0, write 0, timeout 0}
    RPS=${RPS:-0}
    REQUESTS=${REQUESTS:-0}
}

# CPU ticks (user + system) used so far by a process and its children (nginx's workers,
# nuvion's workers): the server's own cost of a run, whoever else loads the machine.
CLK_TCK=$(getconf CLK_TCK)
tree_cpu_ticks() {
    local pid=$1 total=0 p
    for p in "$pid" $(pgrep -P "$pid"); do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# start_evhttp WORKERS PORT PIN... -- the probe of evhttp (1 worker only), sets SERVER_PID.
start_evhttp() {
    local port=$2
    shift 2
    if [ ! -x "$WORK/evhttp_probe" ]; then
        cc -O2 -o "$WORK/evhttp_probe" bench/http/evhttp_probe.c \
            $(pkg-config --cflags --libs luajit libevent) || return 1
    fi
    "$@" "$WORK/evhttp_probe" "$port" >"$WORK/evhttp.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$port" "$SERVER_PID" "evhttp probe"
}

# measure SERVER WORKERS ROUND -- starts the server, warms it up, measures, stops it. Keeps
# the round with the most req/s in RPS_/P50_/P99_/NOTE_<server>_<workers>, and every round's
# req/s in ALL_<server>_<workers>.
measure() {
    local server=$1 workers=$2 round=$3 port load pin=() key best
    port=$(free_port) || { say "run.sh: no free port"; return 1; }
    if [ "$workers" = 1 ]; then
        load=("${LOAD_1[@]}")
        pin=("${PIN_SERVER[@]}")
    else
        load=("${LOAD_2[@]}")
    fi
    say "round $round/$ROUNDS: $server, $workers worker(s), wrk ${load[*]} -d${DURATION_S}s on :$port"
    "start_$server" "$workers" "$port" "${pin[@]}" || return 1
    wrk_run "$WORK/warmup.txt" "$WARMUP_S" "${load[@]}" "http://127.0.0.1:$port/hello"
    local cpu0 cpu1
    cpu0=$(tree_cpu_ticks "$SERVER_PID")
    wrk_run "$WORK/wrk.txt" "$DURATION_S" "${load[@]}" "http://127.0.0.1:$port/hello"
    cpu1=$(tree_cpu_ticks "$SERVER_PID")
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    parse_wrk "$WORK/wrk.txt"
    CPU_S=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
    EFF=$(awk -v r="$REQUESTS" -v c="$CPU_S" 'BEGIN { if (c > 0) printf "%.0f", r / c; else print 0 }')
    key="${server}_${workers}"
    best="RPS_$key"
    printf -v "ALL_$key" '%s' "$(eval echo "\${ALL_$key:-}") $(printf '%.0f' "$RPS")"
    if awk -v a="$RPS" -v b="${!best:-0}" 'BEGIN { exit !(a > b) }'; then
        printf -v "RPS_$key" '%s' "$RPS"
        printf -v "P50_$key" '%s' "$P50_MS"
        printf -v "P99_$key" '%s' "$P99_MS"
        printf -v "CPU_$key" '%s' "$CPU_S"
        printf -v "EFF_$key" '%s' "$EFF"
    fi
    if [ "$NON2XX" != 0 ] || [ "$SOCKERR" != "connect 0, read 0, write 0, timeout 0" ]; then
        printf -v "NOTE_$key" '%s' "$(eval echo "\${NOTE_$key:-}")round $round: non-2xx $NON2XX, socket errors $SOCKERR; "
    fi
}

# Percentage of CPU time the whole machine spent busy over one second (before we start).
cpu_busy_pct() {
    local a b
    a=($(sed -n 's/^cpu  //p' /proc/stat))
    sleep 1
    b=($(sed -n 's/^cpu  //p' /proc/stat))
    awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); total = 0
        for (i = 1; i <= n; i++) total += y[i] - x[i]
        idle = (y[4] - x[4]) + (y[5] - x[5])
        printf "%.0f", (total > 0 ? 100 * (total - idle) / total : 0) }'
}

# The comparison table, with the goal and whether each worker count meets it. Beside req/s,
# the server's CPU seconds in the measured run and requests per server CPU-second: when wrk is
# the bottleneck (one core for it, one for the server), req/s measures wrk, and req per CPU-s
# is the figure that tells the servers apart.
compare_table() {
    local w met
    printf '%-11s | %7s | %9s | %9s | %9s | %7s | %11s | %s\n' server workers req/s p50 p99 "cpu s" \
        "req/cpu-s" "ratio req/s, req/cpu-s (vs nginx+lua)"
    printf '%s\n' "------------|---------|-----------|-----------|-----------|---------|-------------|-------------------------------------"
    for w in 1 2; do
        local ng="RPS_nginx_$w" nge="EFF_nginx_$w" servers=(nuvion nginx)
        [ "$w" = 1 ] && servers+=(evhttp)
        for s in "${servers[@]}"; do
            local r="RPS_${s}_$w" p50="P50_${s}_$w" p99="P99_${s}_$w" c="CPU_${s}_$w" e="EFF_${s}_$w" label=$s
            [ "$s" = nginx ] && label="nginx+lua"
            [ "$s" = evhttp ] && label="evhttp+lua"
            printf '%-11s | %7s | %9.0f | %6s ms | %6s ms | %7s | %11s | %s\n' "$label" "$w" "${!r:-0}" \
                "${!p50:-n/a}" "${!p99:-n/a}" "${!c:-n/a}" "${!e:-n/a}" \
                "$(awk -v a="${!r:-0}" -v b="${!ng:-0}" -v ea="${!e:-0}" -v eb="${!nge:-0}" \
                    'BEGIN { if (b > 0 && eb > 0) printf "%.2fx, %.2fx", a / b, ea / eb; else print "n/a" }')"
        done
    done
    echo
    echo "goal: >= 1.2x nginx+lua req/s with p99 no worse"
    for w in 1 2; do
        local a="RPS_nuvion_$w" b="RPS_nginx_$w" pa="P99_nuvion_$w" pb="P99_nginx_$w"
        local ea="EFF_nuvion_$w" eb="EFF_nginx_$w"
        met=$(awk -v a="${!a:-0}" -v b="${!b:-0}" -v pa="${!pa:-0}" -v pb="${!pb:-0}" \
                  -v ea="${!ea:-0}" -v eb="${!eb:-0}" 'BEGIN {
            if (b <= 0 || eb <= 0) { print "n/a"; exit }
            printf "%.2fx req/s (%.2fx req per server cpu-s), p99 %.3f vs %.3f ms: %s", a / b, ea / eb, pa, pb,
                   (a >= 1.2 * b && pa <= pb) ? "met" : "not met" }')
        echo "  $w worker(s): $met"
    done
    for w in 1 2; do
        for s in nuvion nginx evhttp; do
            local n="NOTE_${s}_$w"
            [ -n "${!n:-}" ] && echo "  warning: $s, $w worker(s): ${!n}"
        done
    done
    echo
    echo "req/s of every round (the best is in the table):"
    for w in 1 2; do
        for s in nuvion nginx evhttp; do
            local all="ALL_${s}_$w"
            [ -n "${!all:-}" ] && printf '  %-10s %s worker(s):%s\n' "$s" "$w" "${!all:-}"
        done
    done
    echo
    echo "wrk ${LOAD_1[*]} -d${DURATION_S}s --latency at 1 worker$([ ${#PIN_SERVER[@]} -gt 0 ] &&
        echo " (server pinned to CPU 0, wrk to CPU 1)"),"
    echo "wrk ${LOAD_2[*]} -d${DURATION_S}s --latency at 2 workers (nothing pinned); ${WARMUP_S} s warm-up before"
    echo "each run; best of $ROUNDS interleaved rounds. GET /hello on loopback, body $BODY (11 bytes,"
    echo "Content-Length) from both. Access logs off on both (NUVION_ACCESS_LOG=0, nginx access_log off);"
    echo "nginx keepalive_requests unlimited, as nuvion. evhttp+lua: bench/http/evhttp_probe.c, libevent's"
    echo "evhttp calling the same Lua handler in a fresh coroutine per request (the design not taken)."
    echo "cpu s: user+system seconds of the server's processes during the measured run."
}

# nuvion with 2 workers under wrk while the supervisor gets SIGHUP once a second.
reload_run() {
    local port pid sent=0 gens wrk_pid i
    local PIN_WRK=() # the servers' 2 workers and wrk's 2 threads share both cores
    port=$(free_port) || { say "run.sh: no free port"; return 1; }
    say "reload run: nuvion, 2 workers, wrk ${LOAD_2[*]} -d${RELOAD_S}s, $RELOADS SIGHUPs"
    start_nuvion 2 "$port" || return 1
    pid=$SERVER_PID
    wrk_run "$WORK/wrk-reload.txt" "$RELOAD_S" "${LOAD_2[@]}" "http://127.0.0.1:$port/hello" &
    wrk_pid=$!
    sleep 0.5
    for ((i = 0; i < RELOADS; i++)); do
        kill -0 "$wrk_pid" 2>/dev/null || break
        kill -HUP "$pid" && sent=$((sent + 1))
        sleep 1
    done
    wait "$wrk_pid"
    sleep 0.5 # the last reload's "serving" lines
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    # Generation 1 is the one each worker boots with; every later one is a reload.
    gens=$(grep -cE '"generation ([2-9]|[1-9][0-9]+) serving"' "$WORK/nuvion-2.log")
    parse_wrk "$WORK/wrk-reload.txt"
    local ok=0
    [ "$NON2XX" = 0 ] && [ "$SOCKERR" = "connect 0, read 0, write 0, timeout 0" ] && ok=1
    echo "reload under load: nuvion, 2 workers, wrk ${LOAD_2[*]} -d${RELOAD_S}s, SIGHUP to the supervisor once a second"
    printf '  %-28s %s\n' "SIGHUPs sent:" "$sent"
    printf '  %-28s %s (of %s expected: 2 workers x %s)\n' "new generations serving:" "$gens" \
        $((2 * sent)) "$sent"
    printf '  %-28s %s\n' "total requests:" "$REQUESTS"
    printf '  %-28s %s\n' "req/s:" "$RPS"
    printf '  %-28s %s ms / %s ms\n' "p50 / p99:" "$P50_MS" "$P99_MS"
    printf '  %-28s %s\n' "non-2xx/3xx responses:" "$NON2XX"
    printf '  %-28s %s\n' "socket errors:" "$SOCKERR"
    if [ "$ok" = 1 ]; then
        echo "  result: PASS (no failed request, no socket error)"
    else
        echo "  result: FAIL (a request failed or a socket erred during reloads)"
        FAILED=1
    fi
}

# --- main ----------------------------------------------------------------------------------------

for tool in wrk nginx curl taskset timeout; do
    command -v "$tool" >/dev/null || { say "run.sh: $tool is missing (make deps installs it)"; exit 2; }
done
[ -x "$BIN" ] || { say "run.sh: $BIN is missing (make builds it)"; exit 2; }

{
    echo "== HTTP: bench/http/run.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "peers: $("$BIN" version), $(nginx -v 2>&1 | sed 's/^nginx version: //') + lua-nginx-module" \
         "$(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null), $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
    # Both servers share the machine with whatever else runs: a busy machine makes noisy figures.
    busy=$(cpu_busy_pct)
    echo "cpu busy in the second before the start: ${busy}%"
    [ "$busy" -gt 10 ] && echo "warning: the machine was busy before the start: figures are noisy"
} >"$WORK/head.txt"

for ((round = 1; round <= ROUNDS; round++)); do
    for w in 1 2; do
        measure nuvion "$w" "$round" || FAILED=1
        measure nginx "$w" "$round" || FAILED=1
        [ "$w" = 1 ] && { measure evhttp 1 "$round" || FAILED=1; }
    done
done
compare_table >"$WORK/compare.txt"
reload_run >"$WORK/reload.txt" || FAILED=1

mkdir -p "$(dirname "$OUT")"
{
    cat "$WORK/head.txt"
    echo
    cat "$WORK/compare.txt"
    echo
    cat "$WORK/reload.txt"
} | tee "$OUT"
exit "$FAILED"
