-- auth.lua -- who is calling: partners' secret keys (core), access tokens (every service),
-- service tokens (internal routes). docs/auth.md.
--
--   local auth = require "nuvion.auth"
--   local principal, err = auth.authenticate(req, deps)   -- err: an outcome (401)
--   -- principal = { partner_id, mode = "test"|"live", scopes, key_id, kind }
--   local ok, err = auth.require_scope(principal, "customers:write")   -- err: an outcome (403)
--   local svc, err = auth.require_service(req)            -- internal routes: service tokens only
--   local tok = auth.service_token("core")                -- this service's token for calling core
--
-- Access tokens are checked locally: the signature in C (Ed25519), the keys from core's JWKS
-- (NUVION_AUTH_JWKS_URL) or, in core, from its own table; a token verified once is kept in a
-- bounded cache (NUVION_AUTH_TOKEN_CACHE_MAX) keyed by its SHA-256 until it expires.
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"
local json = require "nuvion.json"
local config = require "nuvion.auth.config"
local jwt = require "nuvion.auth.jwt"
local cache_mod = require "nuvion.auth.cache"
local jwks = require "nuvion.auth.jwks"
local keys = require "nuvion.auth.keys"
local service = require "nuvion.auth.service"
local signer = require "nuvion.auth.signer"

local type, match, lower, sub, floor, ipairs = type, string.match, string.lower, string.sub, math.floor, ipairs
local sha256, now_s, monotonic_ms = crypto.sha256, nuvion.now, nuvion.monotonic_ms

local ISSUER = "nuvion-core"

local _M = {
  ISSUER = ISSUER,
  ERR_MISSING = "You did not provide an API key or access token (Authorization: Bearer ...).",
  ERR_SCHEME = "The Authorization header must be 'Bearer <secret key or access token>'.",
  ERR_SECRET_KEY_HERE = "Secret keys are accepted by core only: exchange it at POST /v1/oauth/token.",
  ERR_NO_KEYS = "Access tokens cannot be checked: no key source (set NUVION_AUTH_JWKS_URL).",
  ERR_SCOPE = "This key or token lacks the scope ",
  ERR_SERVICE_REQUIRED = "This route is internal: it takes a service token only.",
  ERR_SERVICE_NOT_ALLOWED = "This service may not call this route.",
  ERR_AUDIENCE = "The token is meant for another service.",
  ERR_KIND = "The token's kind does not match its signing key.",
  ERR_SERVICE_TOKEN_HERE = "A service token is not a partner's credential.",
}

local outcome = keys.outcome

-- ---- per-worker state --------------------------------------------------------------

local state = {
  core_db = nil,       -- set by use_core(): secret keys accepted, keys read locally
  source = nil,        -- jwks source (other services)
  cache = nil,
  verifications = 0,   -- signatures checked (cache misses that got as far)
  core_refresh_ms = nil,
}

local function token_cache()
  local c = state.cache
  if not c then
    c = cache_mod.new(config.get("token_cache_max"))
    state.cache = c
  end
  return c
end

-- Core calls this (its routes' register()): secret keys are looked up in `db`, and access
-- tokens are checked against its own signing keys without HTTP.
function _M.use_core(db)
  state.core_db = db
end

-- Uses this JWKS source (auth/jwks.lua) instead of one made from NUVION_AUTH_JWKS_URL.
function _M.use_jwks(source)
  state.source = source
end

-- Replaces settings (config.lua's names or environment variable names) and forgets cached
-- state. For specs, benches and tools.
function _M.configure(overrides)
  config.configure(overrides)
  state.cache, state.source, state.verifications = nil, nil, 0
end

-- Back to the environment's settings, forgetting overrides and cached state.
function _M.reset()
  config.reset()
  state.cache, state.source, state.verifications = nil, nil, 0
end

function _M.stats()
  local s = token_cache():stats()
  s.verifications = state.verifications
  s.jwks = state.source and state.source:stats() or nil
  return s
end

-- ---- key sources --------------------------------------------------------------------

local function core_key(kid)
  local db = state.core_db
  local set = signer.published(db)
  if set and set[kid] then return set[kid] end
  -- a key made by another worker since we read: read again, at most once per bound
  local now = monotonic_ms()
  if state.core_refresh_ms and now - state.core_refresh_ms < config.get("jwks_refresh_min_ms") then return nil end
  state.core_refresh_ms = now
  set = signer.published(db, true)
  return set and set[kid]
end

local function key_of_kid(kid)
  if service.is_service_kid(kid) then return service.key(kid) end
  if state.core_db then return core_key(kid) end
  local src = state.source
  if not src then
    local url = config.env("NUVION_AUTH_JWKS_URL")
    if not url or url == "" then return nil end
    src = jwks.new(url)
    state.source = src
  end
  return src:key(kid)
end

-- ---- tokens ------------------------------------------------------------------------

local function principal_of(claims, header)
  if service.is_service_kid(header.kid) then
    local name = sub(header.kid, #service.KID_PREFIX + 1)
    if claims.kind ~= "service" or claims.iss ~= name then return nil, _M.ERR_KIND end
    if claims.aud ~= config.service_name() then return nil, _M.ERR_AUDIENCE end
    return { kind = "service", service = name, token_id = claims.jti, expires_at = claims.exp }
  end
  if claims.kind ~= "access" or claims.iss ~= ISSUER or type(claims.partner) ~= "string"
     or (claims.mode ~= "test" and claims.mode ~= "live") or type(claims.scopes) ~= "table" then
    return nil, _M.ERR_KIND
  end
  return { partner_id = claims.partner, mode = claims.mode, scopes = claims.scopes, key_id = claims.key,
           kind = "access_token", token_id = claims.jti, expires_at = claims.exp }
end

-- The principal of a signed token (access or service), or nil, outcome (401).
function _M.verify_token(token)
  local c = token_cache()
  local key = sha256(token)
  local now = now_s()
  local p, expired = c:get(key, now)
  if p then return p end
  if expired then return nil, outcome(401, "token_expired", jwt.ERR_EXPIRED) end
  local claims, code, msg = jwt.verify(token, key_of_kid, now, config.get("clock_skew_s"))
  if not claims then
    if msg == jwt.ERR_KID and not state.core_db and not state.source and not service.is_service_kid(
       (jwt.header(token) or {}).kid or "") then
      return nil, outcome(401, "invalid_token", _M.ERR_NO_KEYS)
    end
    return nil, outcome(401, code, msg)
  end
  state.verifications = state.verifications + 1
  local principal, perr = principal_of(claims, code) -- code: the header, on success
  if not principal then return nil, outcome(401, "invalid_token", perr) end
  c:set(key, principal, claims.exp)
  return principal
end

local function bearer(req)
  local h = req.headers.authorization
  if not h or h == "" then return nil, outcome(401, "missing_api_key", _M.ERR_MISSING) end
  local scheme, cred = match(h, "^(%S+)%s+(%S+)%s*$")
  if not scheme or lower(scheme) ~= "bearer" then return nil, outcome(401, "invalid_authorization", _M.ERR_SCHEME) end
  return cred
end

-- ---- the interface ---------------------------------------------------------------------

function _M.authenticate(req, deps)
  if not state.core_db and deps and deps.service == "core" and deps.db then state.core_db = deps.db end
  local cred, err = bearer(req)
  if not cred then return nil, err end
  if sub(cred, 1, 3) == "sk_" then
    if not state.core_db then return nil, outcome(401, "secret_key_not_accepted", _M.ERR_SECRET_KEY_HERE) end
    return keys.authenticate(state.core_db, cred)
  end
  local p, verr = _M.verify_token(cred)
  if not p then return nil, verr end
  if p.kind ~= "access_token" then return nil, outcome(401, "invalid_token", _M.ERR_SERVICE_TOKEN_HERE) end
  return p
end

function _M.has_scope(principal, scope)
  for _, s in ipairs(principal.scopes or {}) do
    if s == "*" or s == scope then return true end
  end
  return false
end

function _M.require_scope(principal, scope)
  if _M.has_scope(principal, scope) then return true end
  return nil, outcome(403, "insufficient_scope", _M.ERR_SCOPE .. "'" .. scope .. "'.")
end

-- Internal routes: the calling service's principal { kind = "service", service = name }, or
-- nil, outcome (401 bad or missing token, 403 any other credential or a service not in
-- opts.from).
function _M.require_service(req, opts)
  local cred, err = bearer(req)
  if not cred then return nil, err end
  if sub(cred, 1, 3) == "sk_" then return nil, outcome(403, "service_token_required", _M.ERR_SERVICE_REQUIRED) end
  local p, verr = _M.verify_token(cred)
  if not p then return nil, verr end
  if p.kind ~= "service" then return nil, outcome(403, "service_token_required", _M.ERR_SERVICE_REQUIRED) end
  if opts and opts.from then
    local ok = false
    for _, name in ipairs(opts.from) do if name == p.service then ok = true end end
    if not ok then return nil, outcome(403, "service_not_allowed", _M.ERR_SERVICE_NOT_ALLOWED) end
  end
  return p
end

function _M.service_token(audience, opts)
  return service.token(audience, opts)
end

-- Core: an access token for a partner principal (from a secret key), with `scopes` (a
-- subset of the key's, already checked). Returns token, expires_in, or nil, outcome.
function _M.issue_access_token(principal, scopes)
  local key, err = signer.current(state.core_db)
  if not key then
    require("nuvion.log").error("auth: no signing key", { error = tostring(err) })
    return nil, outcome(503, "signing_unavailable", "Tokens cannot be issued right now, try again.")
  end
  local now = floor(now_s())
  local ttl = config.get("token_ttl_s")
  local token = jwt.sign({ alg = "EdDSA", typ = "JWT", kid = key.kid }, {
    iss = ISSUER, sub = principal.partner_id, partner = principal.partner_id, mode = principal.mode,
    scopes = json.array(scopes), key = principal.key_id, kind = "access",
    iat = now, nbf = now, exp = now + ttl, jti = crypto.hex_encode(crypto.random(16)),
  }, key.seed)
  return token, ttl
end

return _M
