-- workers.lua -- core's queue workers (docs/queue.md: `bin/nuvion work core`, or
-- NUVION_WORKERS_IN_WEB=1 inside the web process): the outbox relay, outbox events turned into
-- partners' webhook deliveries, and the deliveries themselves (hooks.lua).
return require("hooks").workers()
