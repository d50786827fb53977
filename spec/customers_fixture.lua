-- customers_fixture.lua -- what the 60-customers_* specs share: the KYC simulator
-- (lua/sandbox/kyc) and core (lua/services/core) served for real, on core's Postgres and Redis,
-- partners and keys made through nuvion.auth, JSON calls, and waiting for a state.
local helpers = require "spec.helpers"
local fx = require "spec.auth_fixture"
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"

local _M = {}

_M.STALL_MS = 2500          -- the simulator's stall for identities ending 3333
_M.KYC_TIMEOUT_MS = 700     -- core's client timeout, well below the stall

-- Starts the simulator and core; returns { sim, core, port, db }.
function _M.start(env)
  local sim = helpers.start_server({ app = helpers.root .. "/lua/sandbox/kyc", env = {
    REDIS_URL = assert(os.getenv("NUVION_TEST_REDIS_URL")), KYC_SIM_PROCESSING_MS = "100",
    KYC_SIM_STALL_MS = tostring(_M.STALL_MS) } })
  local core_env = { NUVION_ENV = "test", NUVION_KYC_URL = "http://127.0.0.1:" .. sim.port,
                     NUVION_KYC_POLL_MS = "100", NUVION_KYC_TIMEOUT_MS = tostring(_M.KYC_TIMEOUT_MS) }
  for k, v in pairs(env or {}) do core_env[k] = v end
  local core = helpers.start_server({ service = "core", env = core_env })
  return { sim = sim, core = core, port = core.port, db = fx.db() }
end

function _M.stop(s)
  if not s then return end
  if s.core then s.core:stop() end
  if s.sim then s.sim:stop() end
end

-- A new partner with a test and a live key: { id, test, live }.
function _M.partner(db)
  local pid = fx.partner(db)
  return { id = pid, test = (fx.key(db, pid, "test")), live = (fx.key(db, pid, "live")) }
end

function _M.call(port, method, path, key, body, headers)
  return fx.call(port, method, path, key, body and require("nuvion.json").encode(body) or nil,
                 headers or (body and { ["Content-Type"] = "application/json" }) or nil)
end

function _M.unique(n)
  return crypto.hex_encode(crypto.random(n or 4))
end

-- A valid individual; `over` replaces fields.
function _M.individual(over)
  local b = { first_name = "Ada", last_name = "Lovelace", date_of_birth = "1990-04-12",
              email = "ada." .. _M.unique() .. "@example.com", phone = "+44 7700 900" .. math.random(100, 999),
              address = { line1 = "1 High St", city = "London", postal_code = "N1 1AA", country = "GB" },
              id_document = { type = "passport", number = "P" .. math.random(1000, 9999) .. "0000", country = "GB" } }
  for k, v in pairs(over or {}) do b[k] = v end
  return b
end

function _M.business(over)
  local b = { kind = "business", business_name = "Acme Ltd", email = "ops." .. _M.unique() .. "@acme.example",
              registration_number = "RC" .. math.random(1000, 9999) .. "0000",
              directors = { { first_name = "Grace", last_name = "Hopper", date_of_birth = "1970-12-09" } } }
  for k, v in pairs(over or {}) do b[k] = v end
  return b
end

-- Polls GET /v1/customers/:id until its state is `state` (or the time is up): the last answer.
function _M.wait_state(port, key, id, state, timeout_ms)
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 8000)
  local res
  repeat
    res = _M.call(port, "GET", "/v1/customers/" .. id, key)
    if res.status == 200 and res.data.state == state then return res end
    nuvion.sleep(50)
  until nuvion.monotonic_ms() > deadline
  return res
end

-- The outbox events of a customer, oldest first: their types.
function _M.events(db, id)
  local rows = assert(db:query("SELECT type, data FROM outbox WHERE aggregate_type = 'customer' "
    .. "AND aggregate_id = $1 ORDER BY seq", id))
  local types = {}
  for i, r in ipairs(rows) do types[i] = r.type end
  return types, rows
end

return _M
