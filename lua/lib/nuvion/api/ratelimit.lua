-- ratelimit.lua -- token buckets per key in the service's Redis, checked by one atomic script.
--
--   local ratelimit = require "nuvion.api.ratelimit"
--   local limiter = ratelimit.new(r, { rate = 100, burst = 200 })  -- 100 req/s, bursts of 200
--   local ok, retry_after_s, remaining = limiter:take("key_01jd...")
--   if not ok then return errors.rate_limited(), nil, { ["Retry-After"] = retry_after_s } end
--
-- A bucket holds up to `burst` tokens and refills at `rate` tokens a second; a request takes
-- `cost` (default 1). The script reads Redis's own clock (TIME), so every process of a service
-- shares one bucket per key whatever its own clock says, and the check-and-take is atomic. A
-- bucket left alone expires once full again (burst / rate seconds), so idle keys cost nothing.
-- Redis failing is logged and the request allowed: the limiter protects the service, it must
-- not take it down with it.
local log = require "nuvion.log"

local type, error, tonumber, setmetatable, ceil = type, error, tonumber, setmetatable, math.ceil

local _M = {}
local Limiter = {}
Limiter.__index = Limiter

_M.RATE_MAX = 1000000     -- tokens a second
_M.BURST_MAX = 1000000    -- tokens a bucket holds
_M.KEY_PREFIX = "nuvion:rl:"

-- KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns { allowed 0|1, tokens left (floor),
-- ms until `cost` tokens are there (0 when allowed) }.
local SCRIPT = [[
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
local allowed, wait_ms = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait_ms = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return { allowed, math.floor(tokens), wait_ms }
]]
_M.SCRIPT = SCRIPT

-- r: a nuvion.redis client. opts: rate (tokens a second), burst (default rate), name (a
-- namespace for the keys, default "api").
function _M.new(r, opts)
  if type(r) ~= "table" then error("ratelimit.new needs a redis client", 2) end
  opts = opts or {}
  local rate, burst = opts.rate, opts.burst or opts.rate
  if type(rate) ~= "number" or rate <= 0 or rate > _M.RATE_MAX then
    error("rate must be a number in (0, " .. _M.RATE_MAX .. "]", 2)
  end
  if type(burst) ~= "number" or burst < 1 or burst > _M.BURST_MAX then
    error("burst must be a number in [1, " .. _M.BURST_MAX .. "]", 2)
  end
  return setmetatable({ redis = r, rate = rate, burst = burst,
                        prefix = _M.KEY_PREFIX .. (opts.name or "api") .. ":" }, Limiter)
end

-- Takes `cost` tokens from key's bucket. Returns true, nil, remaining; or false, the whole
-- seconds to wait (Retry-After, at least 1), 0.
function Limiter:take(key, cost)
  if type(key) ~= "string" or key == "" then error("rate limit key must be a non-empty string", 2) end
  cost = cost or 1
  if type(cost) ~= "number" or cost < 1 or cost > self.burst then
    error("cost must be in [1, burst]", 2)
  end
  local res, err = self.redis:eval_script(SCRIPT, { self.prefix .. key }, { self.rate, self.burst, cost })
  if type(res) ~= "table" then
    log.error("rate limiter unavailable, request allowed", { error = err or "bad reply" })
    return true, nil, nil
  end
  if res[1] == 1 then return true, nil, tonumber(res[2]) end
  local wait_s = ceil(tonumber(res[3]) / 1000)
  if wait_s < 1 then wait_s = 1 end
  return false, wait_s, 0
end

-- Empties key's bucket record (a fresh, full bucket next time): for tests and support.
function Limiter:reset(key)
  return self.redis:call("DEL", self.prefix .. key)
end

return _M
