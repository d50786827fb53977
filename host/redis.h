/* redis.h -- nuvion.redis_c: Redis connections on the event loop (plain or TLS),
 * hiredis's RESP reader and command formatter, automatic pipelining. */
#ifndef NV_REDIS_H
#define NV_REDIS_H

#include <lua.h>

/* The Lua module (lua/lib/nuvion/redis.lua wraps it):
 *
 *   c.new(cfg)                  -> conn | nil, err     cfg: host, port, db, username,
 *                                  password, tls, ca_file, verify, connect_timeout_ms,
 *                                  timeout_ms (no I/O: the first command connects)
 *   conn:clone(blocking)        -> a new connection with the same settings (and TLS context);
 *                                  blocking: true allows blocking commands (BLPOP, XREAD BLOCK...),
 *                                  which others refuse (they would hold up the shared connection)
 *   conn:call(timeout_ms, cmd, ...) -> reply | nil, err       (waits; timeout_ms nil: the
 *                                  connection's, 0: none)
 *   conn:pipeline(timeout_ms, { {cmd, ...}, ... }) -> { reply, ... } | nil, err   (waits)
 *   conn:close()                -> drops the connection; waiters get "connection closed"
 *   conn:stats()                -> { commands, writes, replies, connects, pending }
 *   c.sha1_hex(s)               -> the 40 hex digits of SHA-1(s)
 *   c.limits                    -> { pending_max, pipeline_max, reply_bytes_max, ... }
 *
 * Reply mapping: status -> string; integer -> number when |n| <= 2^53, else a
 * string of its digits; bulk -> string; nil -> nil (json.null inside a table);
 * array -> table 1..n; an error reply -> nil, "TEXT" at the top of a call and
 * { err = "TEXT" } inside a table (pipeline results, EXEC). */
int luaopen_nuvion_redis_c(lua_State *L);

#endif
