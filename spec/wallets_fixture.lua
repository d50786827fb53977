-- wallets_fixture.lua -- what the 70-wallets_* specs share: core itself (lua/services/core) on a
-- real server with its Postgres and the ledger, partners and keys made through nuvion.auth, and
-- calls over HTTP.
local helpers = require "spec.helpers"
local fx = require "spec.auth_fixture"
local ledger = require "nuvion.ledger"

local _M = { call = fx.call, db = fx.db, partner = fx.partner, key = fx.key }

function _M.start_core(extra)
  local env = { NUVION_ENV = "test", NUVION_SERVICE_NAME = "core",
                NUVION_CORE_RATE_PER_S = "1000000", NUVION_CORE_RATE_BURST = "1000000" }
  for k, v in pairs(extra or {}) do env[k] = v end
  return helpers.start_server({ service = "core", env = env })
end

function _M.ledger()
  local url = assert(os.getenv("NUVION_LEDGER_DATABASE_URL"), "NUVION_LEDGER_DATABASE_URL is not set")
  return ledger.open(url)
end

-- POST with an optional Idempotency-Key.
function _M.post(port, path, secret, body, key)
  return fx.call(port, "POST", path, secret, body, key and { ["Idempotency-Key"] = key } or nil)
end

-- A new wallet of that currency (asserting 200): its object.
function _M.wallet(port, secret, currency, customer)
  local res = _M.post(port, "/v1/wallets", secret, { currency = currency or "USD", customer = customer })
  assert(res.status == 200, res.body)
  return res.data
end

function _M.fund(port, secret, id, amount, key)
  local res = _M.post(port, "/v1/test_helpers/wallets/" .. id .. "/fund", secret, { amount = amount }, key)
  assert(res.status == 200, res.body)
  return res.data
end

function _M.get(port, path, secret)
  return fx.call(port, "GET", path, secret)
end

return _M
