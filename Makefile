# Nuvion -- build, run, test and bench. `make run` and `make test` do all the
# set-up on a fresh Debian 12 machine (as root: packages are installed with apt).

SHELL := /bin/bash
.DEFAULT_GOAL := all

# Debian packages the build, the local run, the tests and the benchmarks need.
DEB_PACKAGES := build-essential pkg-config clang libclang-rt-14-dev \
	libluajit2-5.1-dev luajit2 libevent-dev libpq-dev libhiredis-dev libyajl-dev \
	libssl-dev libsecp256k1-dev lua-busted lua-check lua-cjson \
	postgresql redis-server ruby-foreman nginx-light libnginx-mod-http-lua wrk \
	curl procps openssl redis-tools postgresql-contrib util-linux passwd lua-filesystem

PKGS := luajit libevent libevent_openssl libpq hiredis yajl openssl libsecp256k1

CC ?= cc
BASE_CFLAGS = -std=gnu11 -g -Wall -Wextra -Werror -fno-omit-frame-pointer \
	-D_GNU_SOURCE $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS_REL = -O2 $(BASE_CFLAGS)
CFLAGS_ASAN = -O1 $(BASE_CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=undefined
# --export-dynamic: Lua reaches the host's nv_ffi_* functions through ffi.C.
LDLIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -ldl -Wl,--export-dynamic

HOST_SRCS := $(wildcard host/*.c)
HOST_HDRS := $(wildcard host/*.h)
LIB_SRCS := $(filter-out host/main.c,$(HOST_SRCS))
TEST_SRCS := $(wildcard host/test/test_*.c)

OBJ_REL := $(HOST_SRCS:host/%.c=build/rel/%.o)
OBJ_ASAN := $(HOST_SRCS:host/%.c=build/asan/%.o)
LIBOBJ_REL := $(LIB_SRCS:host/%.c=build/rel/%.o)
LIBOBJ_ASAN := $(LIB_SRCS:host/%.c=build/asan/%.o)
TESTS_REL := $(TEST_SRCS:host/test/%.c=build/rel/test/%)
TESTS_ASAN := $(TEST_SRCS:host/test/%.c=build/asan/test/%)

.PHONY: all deps asan ctest ctest-asan clean

all: deps bin/nuvion

# Installs what is missing, once (the stamp remembers the package list).
deps: build/.deps
build/.deps: Makefile
	@mkdir -p build
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)"; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q $$missing; \
	fi
	@touch $@

bin/nuvion: $(OBJ_REL) | build/.deps
	@mkdir -p bin
	$(CC) $(CFLAGS_REL) -o $@ $(OBJ_REL) $(LDLIBS)

bin/nuvion-asan: $(OBJ_ASAN) | build/.deps
	@mkdir -p bin
	$(CC) $(CFLAGS_ASAN) -o $@ $(OBJ_ASAN) $(LDLIBS)

asan: deps bin/nuvion-asan $(TESTS_ASAN)

build/rel/%.o: host/%.c $(HOST_HDRS) | build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_REL) -c -o $@ $<

build/asan/%.o: host/%.c $(HOST_HDRS) | build/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ASAN) -c -o $@ $<

build/rel/test/%: host/test/%.c host/test/test.h $(LIBOBJ_REL)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_REL) -iquote host -o $@ $< $(LIBOBJ_REL) $(LDLIBS)

build/asan/test/%: host/test/%.c host/test/test.h $(LIBOBJ_ASAN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ASAN) -iquote host -o $@ $< $(LIBOBJ_ASAN) $(LDLIBS)

ctest: deps $(TESTS_REL)
ctest-asan: deps $(TESTS_ASAN)

# ---- test, lint, run, bench ---------------------------------------------------------------
# `make test` builds the release and ASan hosts and both sets of C tests, then scripts/test.sh
# runs every step (C tests, luacheck, specs, host specs under ASan, fuzz-smoke), each bounded
# in time, and ends with the line "N passed, N failed".
# `make run` starts the six services of Procfile.dev with foreman; foreman gives each
# PORT = RUN_PORT + 100 * its position in the file (core 5000, acquiring 5100, ...).
RUN_PORT ?= 5000
LUA_DIRS := lua spec bench
# The specs also need lyaml: spec/openapi.lua reads docs/openapi.yaml.
DEB_PACKAGES += lua-yaml

# Node with the npm packages pinned in node/package-lock.json (bullmq 5, @bull-board/api and its
# Express adapter): the peers the queue interop specs and bench/queue run against. Debian 12's
# nodejs is 18 (bullmq 5 needs >= 12.22, express 5 >= 18); Debian's npm is a package of its own,
# installed only when no npm is on the PATH (NodeSource's nodejs brings one). `npm ci` reinstalls
# when package.json or the lock change; install scripts are skipped (msgpackr falls back to JS).
DEB_PACKAGES += nodejs
NODE_STAMP := node/node_modules/.installed

.PHONY: node
node: $(NODE_STAMP)
$(NODE_STAMP): node/package.json node/package-lock.json | build/.deps
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm; } || { echo "npm is missing"; exit 1; }
	cd node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: test lint run bench

test: deps bin/nuvion bin/nuvion-asan $(TESTS_REL) $(TESTS_ASAN) $(NODE_STAMP)
	@scripts/test.sh

lint: deps
	luacheck $(LUA_DIRS)

run: deps bin/nuvion
	@RUN_PORT=$(RUN_PORT) scripts/run.sh

# The HTTP bench writes its tables to bench/results/latest.txt; the JSON table is added to it.
# The JSON bench runs even when the HTTP one failed (a reload run with errors); make fails then.
bench: deps bin/nuvion $(NODE_STAMP)
	@scripts/bench.sh

clean:
	rm -rf build bin

# ---- fuzzing (libFuzzer) ------------------------------------------------------------------
# `make fuzz` runs every host/fuzz/fuzz_<name>.c for FUZZ_SECONDS (120 s) each, `make fuzz-smoke`
# for 10 s each (FUZZ_SECONDS=n on the command line overrides both); either fails when any target
# finds a crash, a leak or a hang. Every host/*.c but main.c is built apart with coverage and
# sanitizers into one archive that each target links, so a target pulls in only the modules it
# calls (and a module it does not call cannot break its link). Seeds in host/fuzz/corpus/<name>/
# are copied into a scratch corpus build/fuzz/corpus/<name>/, so the repository is never written;
# crashing inputs and logs land in build/fuzz/artifacts/<name>/ and build/fuzz/<name>.log.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 120
# One input running longer than this is a hang, reported as a failure.
FUZZ_TIMEOUT_S ?= 25
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS = -std=gnu11 -g -O1 -Wall -Wextra -fno-omit-frame-pointer -D_GNU_SOURCE \
	$(shell pkg-config --cflags $(PKGS) 2>/dev/null) $(FUZZ_SAN)
# host/ for the targets' "module.h" includes only: as -Ihost it would also answer <limits.h>
# (from luaconf.h, runtime.c, ...) with a header of ours.
FUZZ_INCLUDES := -iquote host
FUZZ_SRCS := $(wildcard host/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:host/fuzz/%.c=build/fuzz/%)
FUZZ_LIBOBJ := $(LIB_SRCS:host/%.c=build/fuzz/obj/%.o)
FUZZ_LIB := build/fuzz/libnuvion-fuzz.a

# Static pattern rules: their files are explicit targets, kept between runs (not intermediates).
$(FUZZ_LIBOBJ): build/fuzz/obj/%.o: host/%.c $(HOST_HDRS) | build/.deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_LIB): $(FUZZ_LIBOBJ)
	rm -f $@
	ar rcs $@ $^

$(FUZZ_BINS): build/fuzz/%: host/fuzz/%.c $(FUZZ_LIB) $(HOST_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_INCLUDES) -fsanitize=fuzzer -o $@ $< $(FUZZ_LIB) $(LDLIBS)

# Runs every fuzzer in turn, all of them even after a failure, then fails if one did.
define fuzz_run
	@status=0; for bin in $(FUZZ_BINS); do \
	  name=$${bin#build/fuzz/fuzz_}; \
	  corpus=build/fuzz/corpus/$$name; artifacts=build/fuzz/artifacts/$$name/; log=build/fuzz/$$name.log; \
	  mkdir -p $$corpus $$artifacts; \
	  if [ -d host/fuzz/corpus/$$name ]; then cp -R host/fuzz/corpus/$$name/. $$corpus/; fi; \
	  echo "fuzz $$name: $(FUZZ_SECONDS) s, corpus $$corpus"; \
	  if $$bin -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT_S) -print_final_stats=1 \
	       -artifact_prefix=$$artifacts $$corpus >$$log 2>&1; then \
	    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' $$log; \
	  else \
	    tail -n 40 $$log; echo "FAIL fuzz $$name: see $$log and $$artifacts"; status=1; \
	  fi; \
	done; exit $$status
endef

fuzz: deps $(FUZZ_BINS)
	$(fuzz_run)

fuzz-smoke: FUZZ_SECONDS = 10
fuzz-smoke: deps $(FUZZ_BINS)
	$(fuzz_run)

.PHONY: fuzz fuzz-smoke
