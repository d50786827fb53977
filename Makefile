# Nuvion -- build, run, test and bench. `make run` and `make test` do all the
# set-up on a fresh Debian 12 machine (as root: packages are installed with apt).

SHELL := /bin/bash
.DEFAULT_GOAL := all

# Debian packages the build, the local run, the tests and the benchmarks need.
DEB_PACKAGES := build-essential pkg-config clang libclang-rt-14-dev \
	libluajit2-5.1-dev luajit2 libevent-dev libpq-dev libhiredis-dev libyajl-dev \
	libssl-dev libsecp256k1-dev lua-busted lua-check lua-cjson \
	postgresql redis-server ruby-foreman nginx-light libnginx-mod-http-lua wrk \
	curl procps

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
	$(CC) $(CFLAGS_REL) -Ihost -o $@ $< $(LIBOBJ_REL) $(LDLIBS)

build/asan/test/%: host/test/%.c host/test/test.h $(LIBOBJ_ASAN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ASAN) -Ihost -o $@ $< $(LIBOBJ_ASAN) $(LDLIBS)

ctest: deps $(TESTS_REL)
ctest-asan: deps $(TESTS_ASAN)

clean:
	rm -rf build bin
