-- auth_fixture.lua -- what the 91-auth_* specs share: core's auth routes on a real server
-- (spec/fixtures/apps/auth_core) and another service checking tokens against its JWKS
-- (spec/fixtures/apps/auth_service), partners and keys made through nuvion.auth in the spec
-- process (the same code core runs), and token requests over HTTP.
local helpers = require "spec.helpers"
local pg = require "nuvion.pg"
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local auth = require "nuvion.auth"
local keys = require "nuvion.auth.keys"

local _M = {}

-- The spec process runs the development settings, as the servers below.
auth.configure({ NUVION_ENV = "test" })

function _M.db()
  local url = assert(os.getenv("NUVION_CORE_DATABASE_URL"), "NUVION_CORE_DATABASE_URL is not set")
  return pg.pool(url, { max = 2 })
end

local function merged(base, extra)
  local env = {}
  for k, v in pairs(base) do env[k] = v end
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

function _M.start_core(env)
  return helpers.start_server({ app = helpers.apps .. "/auth_core", env = merged({
    NUVION_ENV = "test", NUVION_CORE_DATABASE_URL = os.getenv("NUVION_CORE_DATABASE_URL"),
    NUVION_SERVICE_NAME = "core" }, env) })
end

function _M.start_service(core_port, env)
  return helpers.start_server({ app = helpers.apps .. "/auth_service", env = merged({
    NUVION_ENV = "test", NUVION_SERVICE_NAME = "auth_service",
    NUVION_AUTH_JWKS_URL = "http://127.0.0.1:" .. core_port .. "/.well-known/jwks.json" }, env) })
end

function _M.partner(db, name)
  return assert(keys.create_partner(db, name or ("spec partner " .. crypto.hex_encode(crypto.random(4))))).id
end

-- A new key: secret, row.
function _M.key(db, partner_id, mode, scopes)
  local row, secret = keys.create(db, partner_id, mode or "test", { name = "spec key", scopes = scopes or { "*" } })
  assert(row, secret)
  return secret, row
end

function _M.call(port, method, path, bearer, body, headers)
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  if bearer then h.Authorization = "Bearer " .. bearer end
  local res = assert(helpers.request(port, { method = method, path = path, headers = h, body = body }))
  res.data = json.decode(res.body)
  return res
end

-- POST /v1/oauth/token with Basic credentials: the access token (asserting 200).
function _M.token(port, secret, scope)
  local form = "grant_type=client_credentials" .. (scope and ("&scope=" .. scope:gsub(" ", "+")) or "")
  local res = assert(helpers.request(port, { method = "POST", path = "/v1/oauth/token", body = form, headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    Authorization = "Basic " .. crypto.base64_encode(secret .. ":") } }))
  assert(res.status == 200, res.body)
  return json.decode(res.body).access_token
end

-- The parts of a token: header, claims (decoded) and the three raw parts.
function _M.parts(token)
  local h, c, s = token:match("^([^.]+)%.([^.]+)%.([^.]*)$")
  return json.decode(crypto.base64url_decode(h)), json.decode(crypto.base64url_decode(c)), h, c, s
end

function _M.b64json(v)
  return crypto.base64url_encode(assert(json.encode(v)))
end

return _M
