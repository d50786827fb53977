-- deps.lua -- what core's routes are given, made once per worker and generation:
--   db       core's Postgres pool (DATABASE_URL, as the Procfile gives it; else NUVION_CORE_DATABASE_URL)
--   redis    core's Redis (REDIS_URL; else NUVION_CORE_REDIS_URL), checked for noeviction
--   ledger   the ledger engine (LEDGER_DATABASE_URL; else NUVION_LEDGER_DATABASE_URL), opened on
--            first use so that routes without money never touch it
--   limiter  the API rate limiter (token bucket per key in core's Redis)
--   auth     nuvion.auth (authenticate, require_scope), the auth helper's module
--   config   numbers from the environment, checked at boot (a bad value stops the boot, naming it)
--   clock    now() in unix seconds (with microseconds), now_ms()
local pg = require "nuvion.pg"
local redis = require "nuvion.redis"
local nuvion = require "nuvion"
local api = require "nuvion.api"
local auth = require "nuvion.auth"

local os, error, tonumber, pairs, rawset, setmetatable, floor = os, error, tonumber, pairs, rawset,
  setmetatable, math.floor

local _M = {}

-- name = { env, default, min, max }
local CONFIG = {
  db_pool_max = { "NUVION_CORE_DB_POOL_MAX", 10, 1, 256 },
  rate_per_s = { "NUVION_CORE_RATE_PER_S", 100, 1, 1000000 },         -- requests a second per key
  rate_burst = { "NUVION_CORE_RATE_BURST", 200, 1, 1000000 },         -- and in a burst
  idempotency_purge_ms = { "NUVION_CORE_IDEMPOTENCY_PURGE_MS", 300000, 1000, 86400000 },
  -- The ledger engine of each worker (docs/ledger_api.md: ledger.open's options). Core's calls
  -- come from a few dozen requests at a time, often on the same wallets: one batch in flight per
  -- worker, whose first event waits 300 us for others, makes fewer and larger batches that do
  -- not wait on each other's row locks (bench/core, wallet transfers: +18% req/s, -15% Postgres
  -- CPU a transfer, p99 31 -> 25 ms, against 2 and 0 in interleaved runs).
  ledger_inflight = { "NUVION_CORE_LEDGER_INFLIGHT", 1, 1, 16 },              -- batches in flight
  ledger_batch_wait_us = { "NUVION_CORE_LEDGER_BATCH_WAIT_US", 300, 0, 100000 }, -- a first event waits
}
_M.CONFIG = CONFIG

local function env(name, fallback)
  local v = os.getenv(name)
  if (v == nil or v == "") and fallback then v = os.getenv(fallback) end
  if v == "" then return nil end
  return v
end

function _M.config()
  local c = {}
  for name, spec in pairs(CONFIG) do
    local raw = env(spec[1])
    local v = spec[2]
    if raw then
      v = tonumber(raw)
      if not v or v ~= floor(v) or v < spec[3] or v > spec[4] then
        error(spec[1] .. " must be an integer from " .. spec[3] .. " to " .. spec[4], 0)
      end
    end
    c[name] = v
  end
  return c
end

function _M.new()
  local config = _M.config()
  local db_url = env("DATABASE_URL", "NUVION_CORE_DATABASE_URL")
  if not db_url then error("core: DATABASE_URL is not set", 0) end
  local redis_url = env("REDIS_URL", "NUVION_CORE_REDIS_URL")
  if not redis_url then error("core: REDIS_URL is not set", 0) end
  local ledger_url = env("LEDGER_DATABASE_URL", "NUVION_LEDGER_DATABASE_URL")

  local r, err = redis.connect(redis_url)
  if not r then error("core: redis: " .. err, 0) end
  local ok, nerr = r:check_noeviction()
  if not ok then error("core: redis: " .. nerr, 0) end

  local deps = {
    service = "core",
    config = config,
    db = pg.pool(db_url, { max = config.db_pool_max }),
    redis = r,
    limiter = api.ratelimit.new(r, { rate = config.rate_per_s, burst = config.rate_burst, name = "core" }),
    clock = { now = nuvion.now, now_ms = function() return floor(nuvion.now() * 1000) end },
  }
  deps.auth = auth
  return setmetatable(deps, { __index = function(t, k)
    if k == "ledger" then
      if not ledger_url then error("core: LEDGER_DATABASE_URL is not set", 2) end
      local lg = require("nuvion.ledger").open(ledger_url, { inflight = config.ledger_inflight,
                                                             batch_wait_us = config.ledger_batch_wait_us })
      rawset(t, "ledger", lg)
      return lg
    end
    return nil
  end })
end

return _M
