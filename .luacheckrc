-- .luacheckrc -- luacheck settings (`make lint`, and a step of `make test`).
-- Lua runs in LuaJIT inside bin/nuvion: std = "luajit" allows LuaJIT's globals (bit, jit, ...)
-- and nothing else, so code under lua/ can neither set nor read a global of its own.
std = "luajit"
cache = false
codes = true
max_line_length = 120

-- Specs run inside the host under busted (describe, it, assert, spy, ...).
files["spec/"] = { std = "+busted" }

-- Benchmarks are scripts run by `bin/nuvion run` (or luajit); same rules as lua/.
files["bench/"] = { std = "luajit" }

-- Redis scripts of nuvion.queue: Redis's Lua 5.1, each fragment run after scripts/lib.lua,
-- whose locals (rcall, emit, K_*, ...) are the fragments' globals; lib.lua's locals are used
-- there, not in lib.lua itself.
local queue_lib = { "redis", "KEYS", "ARGV", "rcall", "PREFIX", "K_WAIT", "K_ACTIVE", "K_PAUSED",
  "K_PRIORITIZED", "K_DELAYED", "K_COMPLETED", "K_FAILED", "K_STALLED", "K_STALLED_CHECK", "K_META",
  "K_ID", "K_PC", "K_MARKER", "K_EVENTS", "meta", "max_events", "emit", "target_list", "base_marker",
  "delay_marker", "delayed_score", "add_prioritized", "enqueue_ready", "promote_delayed",
  "remove_job_keys", "remove_job", "trim_finished", "release_dedup", "remove_lock", "take" }
files["lua/lib/nuvion/queue/scripts/"] = { std = "lua51", read_globals = queue_lib }
files["lua/lib/nuvion/queue/scripts/lib.lua"] = { std = "lua51", read_globals = { "redis", "KEYS", "ARGV" },
  ignore = { "211" } }
