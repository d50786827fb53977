-- routes/oauth.lua -- access tokens for partners and the public keys that check them.
--
--   POST /v1/oauth/token          grant_type=client_credentials; the secret key as the client
--                                 secret: HTTP Basic (user = key, or password = key) or
--                                 client_secret in the body (form or JSON); scope optional
--                                 (space separated, a subset of the key's)
--   GET  /.well-known/jwks.json   the Ed25519 public keys (OKP JWKs) of the tokens still valid
local api = require "nuvion.api"
local auth = require "nuvion.auth"
local keys = require "nuvion.auth.keys"
local signer = require "nuvion.auth.signer"
local crypto = require "nuvion.crypto"
local request = require "nuvion.request"
local log = require "nuvion.log"

local type, find, match, concat, gmatch, tostring = type, string.find, string.match, table.concat, string.gmatch,
  tostring

local SCOPE_PARAM_CHARS_MAX = 2048

local _M = {
  ERR_GRANT = "grant_type must be client_credentials.",
  ERR_NO_CLIENT = "Give the secret key as the client secret (HTTP Basic, or client_secret).",
  ERR_TWO_CLIENTS = "Give the secret key once: HTTP Basic or client_secret, not both.",
  ERR_BASIC = "The Basic credentials are not base64 of 'key:' .",
  ERR_SCOPE = "scope must be space-separated scopes that the key holds.",
}

local function oauth_error(status, code, message, param)
  return { status = status, code = code, message = message, param = param }
end

local function params(req)
  local ctype = req.headers["content-type"] or ""
  if req.body == "" then return {} end
  if find(ctype, "application/json", 1, true) then return req:json() end
  return request.parse_query(req.body)
end

-- The secret key of Basic credentials or of the body; nil, outcome.
local function client_secret(req, p)
  local basic = req.headers.authorization
  local from_basic
  if basic then
    local b64 = match(basic, "^[Bb]asic%s+(%S+)%s*$")
    if not b64 then return nil, oauth_error(401, "invalid_client", _M.ERR_NO_CLIENT) end
    local raw = crypto.base64_decode(b64)
    local user, pass = match(raw or "", "^([^:]*):(.*)$")
    if not user then return nil, oauth_error(401, "invalid_client", _M.ERR_BASIC) end
    from_basic = pass ~= "" and pass or user
  end
  local from_body = p.client_secret
  if from_body ~= nil and type(from_body) ~= "string" then
    return nil, oauth_error(400, "invalid_request", _M.ERR_NO_CLIENT, "client_secret")
  end
  if from_basic and from_body then return nil, oauth_error(400, "invalid_request", _M.ERR_TWO_CLIENTS) end
  local secret = from_basic or from_body
  if not secret or secret == "" then return nil, oauth_error(401, "invalid_client", _M.ERR_NO_CLIENT) end
  return secret
end

local function scopes_of(principal, scope)
  if scope == nil then return principal.scopes end
  if type(scope) ~= "string" or #scope > SCOPE_PARAM_CHARS_MAX then return nil end
  local out = {}
  for s in gmatch(scope, "%S+") do
    if not auth.has_scope(principal, s) then return nil end
    out[#out + 1] = s
  end
  return out
end

local function token(deps)
  return function(ctx)
    local req = ctx.req
    local p, perr = params(req)
    if not p then return perr end
    if p.grant_type ~= "client_credentials" then
      return oauth_error(400, "unsupported_grant_type", _M.ERR_GRANT, "grant_type")
    end
    local secret, serr = client_secret(req, p)
    if not secret then return serr end
    local principal, kerr = keys.authenticate(deps.db, secret)
    if not principal then
      if kerr.status == 401 then kerr.code, kerr.param = "invalid_client", nil end
      return kerr
    end
    local scopes = scopes_of(principal, p.scope)
    if not scopes then return oauth_error(400, "invalid_scope", _M.ERR_SCOPE, "scope") end
    local tok, ttl = auth.issue_access_token(principal, scopes)
    if not tok then return ttl end
    return 200, { access_token = tok, token_type = "Bearer", expires_in = ttl, scope = concat(scopes, " "),
                  mode = principal.mode }, { ["Cache-Control"] = "no-store" }
  end
end

local function jwks_doc(deps)
  return function()
    -- a first call makes the first signing key, so the set is never empty
    local cur, err = signer.current(deps.db)
    local doc
    if cur then doc, err = signer.jwks(deps.db) end
    if not doc then
      log.error("auth: JWKS unavailable", { error = tostring(err) })
      return oauth_error(503, "jwks_unavailable", "The signing keys cannot be read right now, try again.")
    end
    return 200, doc, { ["Cache-Control"] = "public, max-age=60" }
  end
end

function _M.register(app, deps)
  auth.use_core(deps.db)
  local routes = api.new(app, deps)
  -- public: the secret key in the request is the credential (checked by the handler)
  routes:post("/v1/oauth/token", { auth = false, audit = false, idempotent = false }, token(deps))
  routes:get("/.well-known/jwks.json", { auth = false }, jwks_doc(deps))
end

return _M
