-- hooks.lua -- core's webhooks to partners: the nuvion.webhooks instance its routes and workers
-- share, the owner key of a partner's endpoints (partner and mode: test and live endpoints never
-- see each other's events), and the workers (docs/webhooks.md, docs/outbox.md):
--   the outbox relay    core's outbox -> queue core.events (one relay works at a time: a lock)
--   core.events         wh:outbox_handler: an event naming a partner and mode -> deliveries
--   core.webhooks       wh:job_handler: one signed POST per job, retried on the schedule
local webhooks = require "nuvion.webhooks"
local queue = require "nuvion.queue"
local outbox = require "nuvion.outbox"
local core = require "nuvion.core"
local nuvion = require "nuvion"
local pg = require "nuvion.pg"
local auth_config = require "nuvion.auth.config"

local os, type, match, error = os, type, string.match, error

local _M = {}

_M.EVENTS_QUEUE = "core.events"
_M.WEBHOOKS_QUEUE = "core.webhooks"
_M.STOP_POLL_MS = 200

local function env(name, fallback)
  local v = os.getenv(name)
  if (v == nil or v == "") and fallback then v = os.getenv(fallback) end
  if v == "" then return nil end
  return v
end

-- The owner id of a partner's endpoints and deliveries in one mode.
function _M.owner(partner_id, mode)
  return partner_id .. ":" .. mode
end

-- The owner of an outbox event's data: core's events carry owner_id (the partner) and mode;
-- webhook_endpoint.disabled carries the endpoint's owner itself. Nil: not for a partner.
function _M.event_owner(data)
  local o = data.owner_id
  if type(o) ~= "string" then return nil end
  if data.mode == "test" or data.mode == "live" then
    if match(o, "^ptn_[%w]+$") then return _M.owner(o, data.mode) end
    return nil
  end
  if match(o, "^ptn_[%w]+:test$") or match(o, "^ptn_[%w]+:live$") then return o end
  return nil
end

-- new(db, redis) -> the webhooks instance (redis: a URL or a nuvion.redis client), or nil and
-- why when there is no keyring for the secrets (NUVION_MASTER_KEYS; a development key when
-- NUVION_ENV is development or test, as for the customers' PII).
function _M.new(db, redis)
  local kr, err = auth_config.signing_keyring()
  if not kr then return nil, tostring(err) end
  return webhooks.new({ db = db, keyring = kr, allow_private = _M.allow_private(),
                        queue = queue.new(_M.WEBHOOKS_QUEUE, { redis = redis }) })
end

-- The SSRF guard's test-mode allowance (loopback, private addresses, plain http): only with
-- NUVION_WEBHOOKS_ALLOW_PRIVATE=1 and NUVION_ENV development or test; anywhere else the guard
-- stays on whatever the flag says.
function _M.allow_private()
  return auth_config.env("NUVION_WEBHOOKS_ALLOW_PRIVATE") == "1" and auth_config.is_development()
end

-- workers() -> the list workers.lua returns; starts the outbox relay of this process, stopped
-- when the process (or its generation) stops.
function _M.workers()
  local db_url = env("DATABASE_URL", "NUVION_CORE_DATABASE_URL")
  if not db_url then error("core workers: DATABASE_URL is not set", 0) end
  local redis_url = env("REDIS_URL", "NUVION_CORE_REDIS_URL")
  if not redis_url then error("core workers: REDIS_URL is not set", 0) end
  local db = pg.pool(db_url, { max = 10 })
  local wh, err = _M.new(db, redis_url)
  if not wh then error("core workers: " .. err, 0) end
  local relay = outbox.relay(db, queue.new(_M.EVENTS_QUEUE, { redis = redis_url }), {
    job_opts = { attempts = 10, backoff = { type = "exponential", delay = 1000 },
                 removeOnComplete = 1000, removeOnFail = 10000 } })
  nuvion.spawn(function()
    while not core.stopping() do nuvion.sleep(_M.STOP_POLL_MS) end
    relay.stop()
  end)
  return {
    { queue = _M.EVENTS_QUEUE, handler = wh:outbox_handler({ owner = _M.event_owner }), concurrency = 10,
      redis = redis_url },
    { queue = _M.WEBHOOKS_QUEUE, handler = wh:job_handler(), concurrency = 50, redis = redis_url },
  }
end

return _M
