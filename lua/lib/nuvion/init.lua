-- nuvion -- the host's primitives for Lua code: waiting, timers, clock.
--
--   local nuvion = require "nuvion"
--   nuvion.sleep(50)                         -- yields this task for 50 ms
--   local id = nuvion.timer.at(1000, fn, a)  -- fn(a) in its own task in 1 s
--   nuvion.timer.every(5000, fn)             -- every 5 s; ticks never overlap
--   nuvion.timer.cancel(id)
--   nuvion.spawn(fn, ...)                    -- fn(...) in a new task, next turn of the loop
local core = require "nuvion.core"

local _M = {
  sleep = core.sleep,
  now = core.now,                   -- unix time, seconds with microseconds
  monotonic_ms = core.monotonic_ms, -- for durations
  context = core.context,           -- { request_id, trace_id, worker, pid, generation, service }
  random_hex = core.random_hex,     -- ids that must be unique, not secret
}

_M.timer = {
  at = core.timer_at,
  every = core.timer_every,
  cancel = core.timer_cancel,
}

function _M.spawn(fn, ...)
  return core.timer_at(0, fn, ...)
end

return _M
