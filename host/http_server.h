/* http_server.h -- the HTTP/1.1 server of a worker: connections on the loop,
 * requests handed to Lua tasks. */
#ifndef NV_HTTP_SERVER_H
#define NV_HTTP_SERVER_H

#include <event2/event.h>
#include <lua.h>

#include "config.h"
#include "metrics.h"

typedef struct nv_http_server nv_http_server;

nv_http_server *nv_http_server_new(struct event_base *base, int listen_fd, const nv_config *cfg,
                                   nv_metrics *metrics, int worker);
/* SIGTERM: stop accepting, close idle connections, let the busy ones finish
 * (their responses carry "Connection: close"). */
void nv_http_server_drain(nv_http_server *s);
int nv_http_server_connections(const nv_http_server *s);
void nv_http_server_free(nv_http_server *s);

/* Lua functions for the request object (registered into nuvion.core). */
int nv_http_lua_headers(lua_State *L);
int nv_http_lua_body(lua_State *L);
int nv_http_lua_ids(lua_State *L);

#endif
