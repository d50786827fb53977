/* process.c -- child processes for specs and operations scripts: posix_spawn
 * (no fork of a process holding Lua states and connections), stdout and stderr
 * on a non-blocking pipe or /dev/null, reaped without blocking the loop. */
#include "process.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nv.h"

#define NV_PROCESS_ARGS_MAX 256 /* argv and env entries of one spawn */

extern char **environ;

/* Reads a Lua array of strings at idx into out[] (NULL-terminated). */
static int string_array(lua_State *L, int idx, const char **out, int max) {
    int n = (int)lua_objlen(L, idx);
    if (n >= max) luaL_error(L, "more than %d entries", max - 1);
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        out[i] = lua_tostring(L, -1);
        if (out[i] == NULL) luaL_error(L, "entry %d is not a string", i + 1);
        lua_pop(L, 1); /* the string stays alive: the table holds it */
    }
    out[n] = NULL;
    return n;
}

/* spawn(argv, env_or_nil, output) -> pid, fd | nil, err
 * output: "pipe" (stdout and stderr to a non-blocking pipe whose read end is
 * returned), "null", or "inherit". env nil: this process's environment. */
static int proc_spawn(lua_State *L) {
    const char *argv[NV_PROCESS_ARGS_MAX], *envp[NV_PROCESS_ARGS_MAX];
    luaL_checktype(L, 1, LUA_TTABLE);
    if (string_array(L, 1, argv, NV_PROCESS_ARGS_MAX) < 1) return luaL_argerror(L, 1, "empty argv");
    int has_env = lua_type(L, 2) == LUA_TTABLE;
    if (has_env) string_array(L, 2, envp, NV_PROCESS_ARGS_MAX);
    const char *output = luaL_optstring(L, 3, "inherit");

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int pipefd[2] = {-1, -1};
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc != 0) goto err_nofa;
    rc = posix_spawnattr_init(&attr);
    if (rc != 0) goto err_noattr;
    if (strcmp(output, "pipe") == 0) {
        if (pipe2(pipefd, O_CLOEXEC) != 0) {
            rc = errno;
            goto err;
        }
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDERR_FILENO);
    } else if (strcmp(output, "null") == 0) {
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    }
    /* The child starts with default signal dispositions (we ignore SIGPIPE)
     * and an empty mask, in its own process group so a spec can stop it and
     * every worker it forks. */
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE), sigaddset(&defaults, SIGHUP), sigaddset(&defaults, SIGTERM),
        sigaddset(&defaults, SIGINT), sigaddset(&defaults, SIGCHLD);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                        POSIX_SPAWN_SETPGROUP);
    pid_t pid;
    rc = posix_spawnp(&pid, argv[0], &fa, &attr, (char *const *)argv,
                      has_env ? (char *const *)envp : environ);
    if (rc != 0) goto err;
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    lua_pushinteger(L, pid);
    if (pipefd[0] >= 0) {
        close(pipefd[1]);
        fcntl(pipefd[0], F_SETFL, fcntl(pipefd[0], F_GETFL) | O_NONBLOCK);
        lua_pushinteger(L, pipefd[0]);
        return 2;
    }
    return 1;
err:
    posix_spawnattr_destroy(&attr);
err_noattr:
    posix_spawn_file_actions_destroy(&fa);
err_nofa:
    if (pipefd[0] >= 0) close(pipefd[0]), close(pipefd[1]);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot start %s: %s", argv[0], strerror(rc));
    return 2;
}

/* reap(pid) -> nil (still running) | "exit", code | "signal", signo */
static int proc_reap(lua_State *L) {
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == 0) return 0;
    if (r < 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    if (WIFEXITED(status)) {
        lua_pushliteral(L, "exit");
        lua_pushinteger(L, WEXITSTATUS(status));
    } else {
        lua_pushliteral(L, "signal");
        lua_pushinteger(L, WTERMSIG(status));
    }
    return 2;
}

/* kill(pid, signame) -> true | nil, err. Only pids we were given: the caller
 * passes the pid of a process it started. A negative pid is its group. */
static int proc_kill(lua_State *L) {
    static const char *const names[] = {"TERM", "KILL", "HUP", "INT", "STOP", "CONT", "USR1", NULL};
    static const int sigs[] = {SIGTERM, SIGKILL, SIGHUP, SIGINT, SIGSTOP, SIGCONT, SIGUSR1};
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int which = luaL_checkoption(L, 2, "TERM", names);
    luaL_argcheck(L, pid != 0 && pid != -1, 1, "refusing to signal every process");
    if (kill(pid, sigs[which]) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* read(fd, max) -> data | "" (would block) | nil (end of file or error), err */
static int proc_read(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, max > 0 && max <= 1 << 20, 2, "max must be in [1, 1 MiB]");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    char buf[LUAL_BUFFERSIZE];
    size_t want = (size_t)max < sizeof buf ? (size_t)max : sizeof buf;
    ssize_t n = read(fd, buf, want);
    if (n > 0) {
        lua_pushlstring(L, buf, (size_t)n);
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, n == 0 ? "closed" : strerror(errno));
    return 2;
}

static int proc_close(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    lua_pushboolean(L, close(fd) == 0);
    return 1;
}

int luaopen_nuvion_process_c(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"spawn", proc_spawn}, {"reap", proc_reap}, {"kill", proc_kill},
        {"read", proc_read},   {"close", proc_close}, {NULL, NULL},
    };
    lua_createtable(L, 0, (int)NV_ARRAY_LEN(fns));
    luaL_register(L, NULL, fns);
    return 1;
}
