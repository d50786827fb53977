-- api_fixture.lua -- what the api layer's specs (spec/02-host/90-api_*_spec.lua) share: the
-- fixture app's server, its table, a fresh partner per spec file, and requests as that partner.
local helpers = require "spec.helpers"
local pg = require "nuvion.pg"
local crypto = require "nuvion.crypto"

local _M = {}

_M.TABLE = [[
CREATE TABLE IF NOT EXISTS spec_api_things (
  id text COLLATE "C" PRIMARY KEY,
  partner_id text COLLATE "C" NOT NULL,
  mode text NOT NULL,
  name text NOT NULL,
  amount numeric(38,0),
  created_at timestamptz NOT NULL DEFAULT now()
)]]

function _M.db()
  local url = assert(os.getenv("NUVION_CORE_DATABASE_URL"),
                     "NUVION_CORE_DATABASE_URL is not set: run the specs with make test")
  return pg.pool(url, { max = 4 })
end

-- Starts the fixture app (after making its table).
function _M.start(workers)
  local db = _M.db()
  assert(db:query(_M.TABLE))
  assert(db:query("CREATE INDEX IF NOT EXISTS spec_api_things_partner ON spec_api_things (partner_id, mode, id)"))
  return helpers.start_server({ app = helpers.apps .. "/api", workers = workers or 1 })
end

-- A partner id no other run uses.
function _M.partner()
  return "ptn_spec" .. crypto.hex_encode(crypto.random(8))
end

-- The Authorization header of the test double (spec/fixtures/apps/api/test_auth.lua).
function _M.auth(partner, mode, key_id, scopes)
  return "Bearer spec:" .. partner .. ":" .. (mode or "test") .. ":" .. (key_id or "")
    .. ":" .. (scopes or "things:write,things:read")
end

-- A request as a partner: opts as helpers.request plus partner, mode, key_id, scopes, key
-- (the Idempotency-Key).
function _M.request(port, opts)
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  if opts.partner then
    headers["Authorization"] = _M.auth(opts.partner, opts.mode, opts.key_id, opts.scopes)
  end
  if opts.key then headers["Idempotency-Key"] = opts.key end
  return assert(helpers.request(port, { method = opts.method or "POST", path = opts.path,
                                        body = opts.body, headers = headers }))
end

return _M
