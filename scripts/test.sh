#!/usr/bin/env bash
# test.sh -- every test step of `make test`, in order, each bounded in time; sums their counts.
#
# Steps: C unit tests (release, then ASan+UBSan), luacheck, the busted specs on the release
# binary, the host-tier specs again on the ASan binary, and `make fuzz-smoke` when the Makefile
# has it. Every step runs even when an earlier one failed. Each step's own count is read from its
# output (C tests: "N passed, N failed"; busted: "N successes / N failures / N errors / N pending";
# fuzz-smoke: one "fuzz <name>:" line per target, "FAIL fuzz <name>" per failed one). A step that
# ends without its summary (crash, sanitizer abort, time-out) counts as 1 failed, and so does one
# whose exit status says it failed while its summary says it did not (say, a leak report at exit).
# The very last line is always "N passed, N failed"; the exit status is 1 when anything failed.
#
# `make test` builds everything first; run alone, this script expects bin/ and build/ to exist.
# Environment: TEST_STEP_TIMEOUT_S (default 600) bounds each step but fuzz-smoke, whose bound
# grows with the number of fuzz targets.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
MAKE=${MAKE:-make}

STEP_TIMEOUT_S=${TEST_STEP_TIMEOUT_S:-600}
CTEST_TIMEOUT_S=120           # one C test binary
LINT_TIMEOUT_S=120
KILL_AFTER_S=10               # SIGKILL this long after the SIGTERM of a time-out

# The sanitizers stop at the first error, so a failure cannot scroll by unnoticed.
ASAN_ENV=(ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nuvion-test.XXXXXX") || exit 2
CHILD=""       # the step running now (a `timeout` process), for the signal trap
TAILER=""      # the tail that shows its output as it comes

passed_total=0
failed_total=0
report=()      # one line per step, printed before the totals

# --- services the specs need -------------------------------------------------------------------
# A throwaway Postgres and a Redis per service (scripts/services.sh: free loopback ports, data
# under var/test, Postgres as an unprivileged user), a database and a role per service, their
# URLs exported to every step (NUVION_TEST_*, NUVION_<SERVICE>_*_URL); stop_services stops them
# by pid on every exit path (the EXIT trap below).
SERVICES_DIR=$ROOT/var/test
start_services() {
    header "services"
    rm -rf "$SERVICES_DIR"
    if ! scripts/services.sh start "$SERVICES_DIR" 6 || ! scripts/services.sh provision "$SERVICES_DIR"; then
        echo "test.sh: Postgres/Redis did not start: the specs that need them will fail"
        return 0
    fi
    # shellcheck disable=SC1091
    . "$SERVICES_DIR/env"
    # the release phase, as in production: every sql/<database>/ (the ledger's schema included)
    bin/nuvion migrate --all || echo "test.sh: migrations failed: the specs that need them will fail"
}
stop_services() { scripts/services.sh stop "$SERVICES_DIR" || true; }

cleanup() {
    [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null
    [ -n "$TAILER" ] && kill -TERM "$TAILER" 2>/dev/null
    stop_services
    rm -rf "$WORK"
}
trap cleanup EXIT
# On Ctrl-C or a TERM, stop the running step (timeout relays the signal to its process group).
trap 'echo "test.sh: interrupted" >&2; exit 130' INT TERM

# --- running a step ----------------------------------------------------------------------------

# run LOG TIMEOUT_S CMD... -- runs CMD with its output shown and kept in LOG; sets RC.
# The command runs in the background (timeout puts it in its own process group, so a time-out
# kills the servers a spec started too) and `wait` keeps this script responsive to signals.
run() {
    local log=$1 limit=$2
    shift 2
    : >"$log"
    timeout -k "$KILL_AFTER_S" "$limit" "$@" >"$log" 2>&1 </dev/null &
    CHILD=$!
    tail -n +1 -s 0.2 -f --pid="$CHILD" "$log" &
    TAILER=$!
    wait "$CHILD"
    RC=$?
    wait "$TAILER"
    CHILD=""
    TAILER=""
    if [ "$RC" = 124 ] || [ "$RC" = 137 ]; then
        echo "test.sh: timed out after ${limit} s: $*"
    fi
}

# record NAME PASSED FAILED NOTE -- adds a step's counts to the totals and the report.
record() {
    passed_total=$((passed_total + $2))
    failed_total=$((failed_total + $3))
    report+=("$(printf '%-44s %6d passed %6d failed  %s' "$1" "$2" "$3" "$4")")
}

# settle NAME PASSED FAILED HAVE_SUMMARY -- records a step, counting a missing summary or an
# exit status that contradicts the summary as 1 more failure.
settle() {
    local name=$1 p=$2 f=$3 have=$4 note=""
    if [ "$have" = 0 ]; then
        f=$((f + 1))
        note="no summary (exit $RC): counted as 1 failed"
    elif [ "$RC" != 0 ] && [ "$f" = 0 ]; then
        f=1
        note="summary clean but exit $RC: counted as 1 failed"
    elif [ "$RC" != 0 ]; then
        note="exit $RC"
    fi
    record "$name" "$p" "$f" "$note"
}

header() {
    printf '\n=== %s\n' "$1"
}

# --- the steps ---------------------------------------------------------------------------------

# A C test binary ends with "N passed, N failed".
ctest_step() {
    local kind=$1 bin=$2 name log p=0 f=0 have=0 line
    name="c $kind $(basename "$bin")"
    header "$name"
    log="$WORK/$(basename "$bin").$kind.log"
    if [ ! -x "$bin" ]; then
        echo "test.sh: $bin is missing (did it build?)"
        RC=127
        settle "$name" 0 0 0
        return
    fi
    run "$log" "$CTEST_TIMEOUT_S" env "${ASAN_ENV[@]}" "$bin"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
    if [ -n "$line" ]; then
        have=1
        p=${line%% passed*}
        f=${line#*, }
        f=${f%% failed*}
    fi
    settle "$name" "$p" "$f" "$have"
}

step_ctests() {
    local src name
    for kind in rel asan; do
        for src in host/test/test_*.c; do
            [ -e "$src" ] || continue
            name=$(basename "$src" .c)
            ctest_step "$kind" "build/$kind/test/$name"
        done
    done
}

# luacheck is one check: passed when it reports nothing.
step_luacheck() {
    local name="luacheck lua/ spec/ bench/" dirs=() d
    header "$name"
    for d in lua spec bench; do [ -d "$d" ] && dirs+=("$d"); done
    run "$WORK/luacheck.log" "$LINT_TIMEOUT_S" luacheck --no-color "${dirs[@]}"
    if [ "$RC" = 0 ]; then
        record "$name" 1 0 ""
    else
        record "$name" 0 1 "exit $RC"
    fi
}

# busted's summary: "3 successes / 1 failure / 0 errors / 2 pending : 0.5 seconds".
# passed = successes; failed = failures + errors (an error is a spec that could not run).
busted_step() {
    local name=$1 log=$2
    shift 2
    local line p=0 f=0 e=0 have=0
    header "$name"
    run "$log" "$STEP_TIMEOUT_S" "$@"
    line=$(sed 's/\x1b\[[0-9;]*m//g' "$log" |
           grep -E '^[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors? / [0-9]+ pending' |
           tail -n 1)
    if [ -n "$line" ]; then
        have=1
        read -r p f e <<<"$(echo "$line" | awk -F' / ' '{ split($1, a, " "); split($2, b, " ");
                                                           split($3, c, " "); print a[1], b[1], c[1] }')"
        f=$((f + e))
    fi
    settle "$name" "$p" "$f" "$have"
}

step_specs() {
    busted_step "busted spec/ (bin/nuvion)" "$WORK/spec.log" bin/nuvion spec
}

# The host tier again under ASan+UBSan: the spec runner and every server or script the specs
# start (spec/helpers.lua spawns $NUVION_BIN, which inherits these options) are the sanitized
# build, with leak checking on everywhere: `run` and `spec` close their Lua state before they
# exit and workers close theirs as they drain, so a leak reported is the host's. A sanitizer
# report in a server's output fails the spec that started it (spec/helpers.lua).
step_specs_asan() {
    local name="busted spec/02-host (bin/nuvion-asan)"
    if [ ! -d spec/02-host ]; then
        header "$name"
        echo "test.sh: spec/02-host does not exist: skipped"
        report+=("$(printf '%-44s %s' "$name" "skipped (no spec/02-host)")")
        return
    fi
    busted_step "$name" "$WORK/spec-asan.log" \
        env "${ASAN_ENV[@]}" NUVION_BIN="$ROOT/bin/nuvion-asan" bin/nuvion-asan spec spec/02-host
}

# `make fuzz-smoke` prints "fuzz <name>: ..." as each target starts and "FAIL fuzz <name>: ..."
# when one fails; each target counts as one check.
step_fuzz_smoke() {
    local name="make fuzz-smoke" targets limit started failed_n
    if ! grep -qE '^fuzz-smoke:' Makefile; then
        header "$name"
        echo "test.sh: the Makefile has no fuzz-smoke target: skipped"
        report+=("$(printf '%-44s %s' "$name" "skipped (no target)")")
        return
    fi
    header "$name"
    targets=$(find host/fuzz -maxdepth 1 -name 'fuzz_*.c' 2>/dev/null | wc -l)
    limit=$((300 + 30 * targets)) # the build, then 10 s of fuzzing per target
    run "$WORK/fuzz.log" "$limit" "$MAKE" --no-print-directory fuzz-smoke
    started=$(grep -cE '^fuzz [A-Za-z0-9_]+: ' "$WORK/fuzz.log")
    failed_n=$(grep -cE '^FAIL fuzz ' "$WORK/fuzz.log")
    if [ "$started" = 0 ] && [ "$RC" = 0 ]; then
        record "$name" 0 0 "no fuzz targets"
        return
    fi
    # A build failure or a time-out fails with no FAIL line: the target it stopped in (if any)
    # is not counted as passed, and settle counts the step as one failure.
    local done_n=$((started - failed_n))
    if [ "$RC" != 0 ] && [ "$failed_n" = 0 ] && [ "$done_n" -gt 0 ]; then
        done_n=$((done_n - 1))
    fi
    settle "$name" "$done_n" "$failed_n" 1
}

# --- main --------------------------------------------------------------------------------------

start_services
step_ctests
step_luacheck
step_specs
step_specs_asan
step_fuzz_smoke

header "summary"
printf '%s\n' "${report[@]}"
echo "${passed_total} passed, ${failed_total} failed"
[ "$failed_total" = 0 ]
