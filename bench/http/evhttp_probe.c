/* evhttp_probe.c -- the road not taken, kept to measure it: libevent's evhttp
 * answering GET /hello from a Lua function run in a fresh coroutine per
 * request, as nuvion does. bench/http/run.sh builds it and runs it beside
 * nuvion and nginx+lua, so the choice of our own parser over evhttp stays a
 * measured one. Not part of the host. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>

static lua_State *L;
static int handler_ref;

static void on_request(struct evhttp_request *req, void *arg) {
    (void)arg;
    lua_State *co = lua_newthread(L);
    lua_rawgeti(co, LUA_REGISTRYINDEX, handler_ref);
    if (lua_resume(co, 0) != 0) {
        evhttp_send_error(req, 500, "lua error");
        lua_pop(L, 1);
        return;
    }
    size_t len;
    const char *body = lua_tolstring(co, -1, &len);
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
    lua_pop(L, 1); /* the coroutine: collected later */
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 8080;
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, "return function() return '{\"ok\":true}' end") != 0) return 1;
    handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    if (base == NULL || http == NULL || evhttp_bind_socket(http, "127.0.0.1", (unsigned short)port) != 0) {
        fprintf(stderr, "evhttp_probe: cannot listen on %d\n", port);
        return 1;
    }
    evhttp_set_gencb(http, on_request, NULL);
    event_base_dispatch(base);
    return 0;
}
