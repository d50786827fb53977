/* nv_limits.h -- every bound of the host in one place, with its unit and reason.
 * Each limit that an operator may change has an environment key, read by
 * config.c with the min and max given here. */
#ifndef NV_LIMITS_H
#define NV_LIMITS_H

/* HTTP server */
#define NV_HTTP_HEADER_BYTES_DEFAULT (16 * 1024)   /* request line + headers; nginx uses 8-32 KB */
#define NV_HTTP_HEADER_BYTES_MIN 1024
#define NV_HTTP_HEADER_BYTES_MAX (1024 * 1024)
#define NV_HTTP_HEADERS_MAX 100                    /* header lines in one request */
#define NV_HTTP_BODY_BYTES_DEFAULT (1024 * 1024)   /* largest API request we accept */
#define NV_HTTP_BODY_BYTES_MIN 0
#define NV_HTTP_BODY_BYTES_MAX (64 * 1024 * 1024)
#define NV_HTTP_CONNECTIONS_DEFAULT 10000          /* open connections per worker */
#define NV_HTTP_CONNECTIONS_MIN 1
#define NV_HTTP_CONNECTIONS_MAX 1000000
#define NV_HTTP_READ_TIMEOUT_MS_DEFAULT 10000      /* a started request must arrive within this */
#define NV_HTTP_READ_TIMEOUT_MS_MIN 10
#define NV_HTTP_READ_TIMEOUT_MS_MAX 3600000
#define NV_HTTP_KEEPALIVE_MS_DEFAULT 75000         /* idle keep-alive connection lifetime (nginx: 75 s) */
#define NV_HTTP_KEEPALIVE_MS_MIN 10
#define NV_HTTP_KEEPALIVE_MS_MAX 3600000
#define NV_HTTP_HANDLER_MS_DEFAULT 15000           /* Heroku's router gives up at 30 s; answer 504 well before */
#define NV_HTTP_HANDLER_MS_MIN 10
#define NV_HTTP_HANDLER_MS_MAX 600000
#define NV_HTTP_WRITE_BYTES_MAX (64 * 1024 * 1024) /* pending output per connection before we drop it */
#define NV_HTTP_ACCEPT_BATCH_MAX 64                /* accepts per readable event, so one listener cannot starve others */
/* Chunked bodies: no setting changes these; each stops a body that grows the
 * work without growing the data. */
#define NV_HTTP_CHUNK_SIZE_DIGITS_MAX 16          /* hex digits of a chunk-size: 64 bits, so no overflow */
#define NV_HTTP_CHUNK_EXT_BYTES_MAX (16 * 1024)   /* chunk-extension bytes summed over one body */
#define NV_HTTP_CHUNK_TRAILER_BYTES_MAX (16 * 1024) /* trailer section of one body, as a head's default */
#define NV_HTTP_PIPELINE_BATCH_MAX 64              /* pipelined requests served per read before yielding to the loop */

/* Processes */
#define NV_WORKERS_MAX 256                         /* WEB_CONCURRENCY upper bound */
#define NV_SHUTDOWN_GRACE_MS_DEFAULT 20000         /* drain time after SIGTERM; Heroku kills at 30 s, we promise 25 s */
#define NV_SHUTDOWN_GRACE_MS_MIN 0
#define NV_SHUTDOWN_GRACE_MS_MAX 25000
#define NV_RESPAWN_BACKOFF_MS_MAX 5000             /* a worker that keeps crashing is restarted at most this slowly */
#define NV_DRAIN_HOLDS_MAX 65536                   /* core.drain_hold(): Lua work (queue workers) a draining worker waits for */

/* Lua */
#define NV_LUA_MEMORY_BYTES_DEFAULT (1024L * 1024 * 1024) /* per Lua state */
#define NV_LUA_MEMORY_BYTES_MIN (16L * 1024 * 1024)
#define NV_LUA_MEMORY_BYTES_MAX (64L * 1024 * 1024 * 1024)
#define NV_LUA_MEMORY_HEADROOM_BYTES (8L * 1024 * 1024) /* over the cap, for the host's own calls
                                                          outside Lua code: a Lua OOM must never
                                                          become a panic in C */
#define NV_LUA_GC_FLOOR_BYTES (1L * 1024 * 1024)   /* garbage a small state may gather before a GC
                                                     cycle. A cycle walks the whole live heap: at
                                                     Lua's default pause a 200 KB state cycled every
                                                     ~400 requests. Measured (wrk, 1 pinned worker):
                                                     1 MiB keeps req/s and gives the lowest p99;
                                                     16 MiB saved instructions but lost p99 to cache
                                                     misses on a heap that no longer fits in L2 */
#define NV_LUA_GC_PAUSE_MIN 200                    /* Lua's default: heap may double between cycles */
#define NV_LUA_GC_PAUSE_MAX 10000                  /* at most 100x the live heap */
#define NV_LUA_COROUTINE_POOL_MAX 1024             /* idle coroutines kept for reuse per state */
#define NV_LUA_GENERATIONS_MAX 8                   /* states alive at once in one worker (1 serving + draining) */

/* Logs */
#define NV_LOG_LINE_BYTES_MAX (16 * 1024)          /* longer messages are cut, marked "truncated" */
#define NV_LOG_BUFFER_BYTES (256 * 1024)           /* flushed each loop turn, or when full */

/* Metrics (shared memory between the workers of one server) */
#define NV_METRICS_SERIES_MAX 1024                 /* distinct (route, status) pairs */
#define NV_METRICS_ROUTE_BYTES_MAX 96              /* route label length */

/* JSON */
#define NV_JSON_DEPTH_DEFAULT 128                  /* nesting depth accepted by decode and encode */
#define NV_JSON_DEPTH_MAX 1000
#define NV_JSON_BYTES_DEFAULT (16 * 1024 * 1024)   /* largest document decode accepts */

/* Paths */
#define NV_PATH_BYTES_MAX 4096                     /* root and service folders (PATH_MAX) */

/* Timers */
#define NV_TIMERS_MAX 100000                       /* live timers per state */

/* HTTP client */
#define NV_HTTP_CLIENT_HEADERS_MAX 100                    /* header lines in one response */
#define NV_HTTP_CLIENT_HEADER_BYTES_DEFAULT (64 * 1024)   /* response status line + headers */
#define NV_HTTP_CLIENT_HEADER_BYTES_MAX (1024 * 1024)
#define NV_HTTP_CLIENT_BODY_BYTES_DEFAULT (8 * 1024 * 1024) /* provider APIs answer in KB; 8 MB is generous */
#define NV_HTTP_CLIENT_BODY_BYTES_MAX (256 * 1024 * 1024)   /* max_body_bytes may not ask for more */
#define NV_HTTP_CLIENT_REQUEST_BYTES_MAX (64 * 1024 * 1024) /* request head + body we send */
#define NV_HTTP_CLIENT_TIMEOUT_MS_DEFAULT 10000           /* whole request; below the server's 15 s handler limit */
#define NV_HTTP_CLIENT_CONNECT_TIMEOUT_MS_DEFAULT 3000    /* DNS + TCP + proxy + TLS */
#define NV_HTTP_CLIENT_TIMEOUT_MS_MAX 600000              /* longer calls belong in a queue */
#define NV_HTTP_CLIENT_IDLE_PER_ORIGIN_MAX 16             /* pooled idle connections per origin */
#define NV_HTTP_CLIENT_IDLE_MAX 256                       /* pooled idle connections per worker */
#define NV_HTTP_CLIENT_IDLE_MS 30000                      /* below the 60-75 s keep-alive of common servers */
#define NV_HTTP_CLIENT_REQUESTS_MAX 10000                 /* requests in flight per worker */
#define NV_HTTP_CLIENT_HOST_BYTES_MAX 255                 /* DNS name length (RFC 1035) */
#define NV_HTTP_CLIENT_CA_FILES_MAX 8                     /* distinct ca_file paths with a cached TLS context */
#define NV_HTTP_CLIENT_READS_PER_EVENT_MAX 64             /* parse steps per read callback */
#define NV_HTTP_CLIENT_DNS_TIMEOUT_S "2"                  /* evdns per-try timeout; the request timeout bounds it too */
#define NV_HTTP_CLIENT_DNS_ATTEMPTS "2"                   /* evdns tries per nameserver */

/* Crypto */
#define NV_CRYPTO_AEAD_BYTES_MAX (64 * 1024 * 1024) /* AES-GCM plaintext or AAD: the largest HTTP body */
#define NV_CRYPTO_HMAC_KEY_BYTES_MAX (64 * 1024)    /* HMAC key: any real secret is far shorter */
#define NV_CRYPTO_RANDOM_BYTES_MAX (1024 * 1024)    /* one random() call: keys and ids, not bulk data */
#define NV_CRYPTO_PEM_BYTES_MAX (64 * 1024)         /* a PEM or DER public key: certificates are smaller */
#define NV_CRYPTO_MASTER_KEYS_MAX 32                /* NUVION_MASTER_KEYS entries: rotations kept live */
#define NV_CRYPTO_KEY_ID_BYTES_MAX 32               /* master key id, [A-Za-z0-9_-] */

/* Redis */
#define NV_REDIS_PENDING_MAX 16384                 /* commands waiting for replies on one connection:
                                                      beyond, "too many pending commands" (a stalled
                                                      Redis must not grow a queue without end) */
#define NV_REDIS_PIPELINE_COMMANDS_MAX 10000       /* commands in one explicit pipeline */
#define NV_REDIS_ARGS_MAX (1024 * 1024)            /* arguments of one command (Redis allows more; an
                                                      MSET that large belongs in batches) */
#define NV_REDIS_ARGS_INLINE 32                    /* arguments formatted without a heap array */
#define NV_REDIS_REPLY_BYTES_MAX (64 * 1024 * 1024) /* one reply on the wire: a bigger one drops the
                                                      connection with an error instead of an OOM */
#define NV_REDIS_READ_BYTES_MAX (256 * 1024)       /* bytes read per read callback (libevent's default
                                                      16 KB halves the throughput of pipelines) */
#define NV_REDIS_WRITE_BYTES_MAX (256 * 1024)      /* bytes written per write callback */
#define NV_REDIS_READ_CHUNKS_MAX 64                /* buffer chunks fed to the reader per callback */
#define NV_REDIS_FEED_BYTES (16 * 1024)            /* bytes fed to hiredis's reader at once: it moves
                                                      its unread bytes down after every KB of replies */
#define NV_REDIS_CONNECT_TIMEOUT_MS_DEFAULT 5000   /* DNS + TCP + TLS + AUTH/SELECT */
#define NV_REDIS_TIMEOUT_MS_DEFAULT 5000           /* per command; a request has 15 s in all */
#define NV_REDIS_TIMEOUT_MS_MAX 3600000            /* an hour: longer waits belong in a queue */
#define NV_REDIS_BLOCKING_CONNS_MAX 16             /* dedicated connections for blocking commands, per client */
#define NV_REDIS_BLOCKING_MARGIN_MS 5000           /* client-side wait past a blocking command's own timeout */
#define NV_REDIS_HOST_BYTES_MAX 255                /* DNS name length (RFC 1035) */
#define NV_REDIS_SCRIPTS_MAX 1024                  /* SHA-1s cached per client before the cache starts over */
#define NV_REDIS_CLIENTS_MAX 64                    /* clients (URL + options) redis.connect keeps per worker */

/* Postgres (pg.c): per pool, i.e. per worker and database URL; each has a pg.pool option
 * (opts.<name>) checked against MIN and MAX, the error naming the option. */
#define NV_PG_POOL_SIZE_DEFAULT 10                 /* connections; x WEB_CONCURRENCY x dynos must stay under the server's max_connections */
#define NV_PG_POOL_SIZE_MIN 1
#define NV_PG_POOL_SIZE_MAX 256
#define NV_PG_QUEUE_DEFAULT 1000                   /* tasks waiting for a connection; one more gets "pool_queue_full" */
#define NV_PG_QUEUE_MIN 0
#define NV_PG_QUEUE_MAX 100000
#define NV_PG_POOL_TIMEOUT_MS_DEFAULT 5000         /* wait for a free connection before "pool_timeout" */
#define NV_PG_POOL_TIMEOUT_MS_MIN 1
#define NV_PG_POOL_TIMEOUT_MS_MAX 600000
#define NV_PG_CONNECT_TIMEOUT_MS_DEFAULT 5000      /* DNS + TCP + TLS + auth of one new connection */
#define NV_PG_CONNECT_TIMEOUT_MS_MIN 10
#define NV_PG_CONNECT_TIMEOUT_MS_MAX 600000
#define NV_PG_QUERY_TIMEOUT_MS_DEFAULT 30000       /* client side: no answer by then and the connection is closed
                                                      (the server may be unreachable); statement_timeout is the server's */
#define NV_PG_QUERY_TIMEOUT_MS_MIN 1
#define NV_PG_QUERY_TIMEOUT_MS_MAX 3600000
#define NV_PG_STATEMENT_TIMEOUT_MS_DEFAULT 0       /* 0: the server's setting; else sent at connect */
#define NV_PG_STATEMENT_TIMEOUT_MS_MAX 3600000
#define NV_PG_RESULT_ROWS_DEFAULT 100000           /* rows of one request (all its statements) before "result_too_large" */
#define NV_PG_RESULT_ROWS_MIN 1
#define NV_PG_RESULT_ROWS_MAX 10000000
#define NV_PG_RESULT_BYTES_DEFAULT (64L * 1024 * 1024) /* result text of one request: bounds the worker's memory, not only Lua's */
#define NV_PG_RESULT_BYTES_MIN 1024
#define NV_PG_RESULT_BYTES_MAX (1024L * 1024 * 1024)
/* No option changes these. */
#define NV_PG_PARAMS_MAX 65535                     /* parameters of one statement: the protocol's 16-bit count */
#define NV_PG_PIPELINE_STATEMENTS_MAX 1000         /* statements of one pipeline */
#define NV_PG_REQUEST_BYTES_MAX (64L * 1024 * 1024) /* SQL + parameters of one request, as sent */
#define NV_PG_POOLS_MAX 64                         /* distinct pools (URL + options) per worker */
#define NV_PG_STMT_CACHE_MAX 256                   /* prepared statements per connection; past it, unnamed ones */
#define NV_PG_ROWS_PER_TURN 1024                   /* results read per readable event, so one big result cannot starve the loop */
#define NV_PG_ERROR_BYTES 512                      /* a connection error's text, as kept for its waiter */
#define NV_PG_RETRY_BACKOFF_MS_MAX 200             /* pool:tx retries sleep at most this long */

/* Ledger (ledger_check.c) */
#define NV_LEDGER_BATCH_TRANSFERS_MAX 8189         /* events of one check: TigerBeetle's batch of 8189 transfers */
#define NV_LEDGER_ACCOUNTS_PER_EVENT 4             /* accounts one transfer may touch: its two and its hold's two */
#define NV_LEDGER_TRANSFERS_PER_EVENT 3            /* transfer rows one event may bring: its id, its pending_id, the row it adds */
#define NV_LEDGER_FAILED_IDS_PER_EVENT 3           /* failed ids per event: its id and pending_id loaded, one added */

#endif
