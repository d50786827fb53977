-- auth/service.lua -- service-to-service tokens: each service signs its own (Ed25519, its own
-- key pair), and a service's internal routes accept nothing else.
--
--   local tok = service.token("core")   -- Authorization: Bearer <tok> on a call to core
--
-- Header { alg = "EdDSA", typ = "JWT", kid = "svc.<caller>" }; claims { iss = caller,
-- sub = "service:<caller>", aud = callee, kind = "service", iat, exp, jti }. The caller's
-- public key comes from NUVION_SERVICE_PUBLIC_KEYS (docs/auth.md), so checking one needs no
-- call to anyone. A minted token is reused until a minute before it expires.
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"
local config = require "nuvion.auth.config"
local jwt = require "nuvion.auth.jwt"

local floor, sub, error, tostring = math.floor, string.sub, error, tostring

local KID_PREFIX = "svc."
local REUSE_MARGIN_S = 60

local _M = { KID_PREFIX = KID_PREFIX }

local minted = {}   -- callee -> { token, exp }

function _M.is_service_kid(kid)
  return sub(kid, 1, #KID_PREFIX) == KID_PREFIX
end

-- A token for calling `audience`, signed by this service (or by `opts.as`: specs, tools).
function _M.token(audience, opts)
  local as = opts and opts.as or config.service_name()
  local now = floor(nuvion.now())
  local cached = minted[as .. "\0" .. audience]
  if cached and cached[2] - REUSE_MARGIN_S > now and not (opts and opts.fresh) then return cached[1] end
  local seed, err = config.service_seed(as)
  if not seed then error("nuvion.auth: " .. tostring(err), 2) end
  local ttl = opts and opts.ttl_s or config.get("service_token_ttl_s")
  local exp = now + ttl
  local token = jwt.sign({ alg = "EdDSA", typ = "JWT", kid = KID_PREFIX .. as },
                         { iss = as, sub = "service:" .. as, aud = audience, kind = "service",
                           iat = opts and opts.iat or now, exp = exp,
                           jti = crypto.hex_encode(crypto.random(12)) }, seed)
  minted[as .. "\0" .. audience] = { token, exp }
  return token
end

-- The public key of a service kid, or nil.
function _M.key(kid)
  if not _M.is_service_kid(kid) then return nil end
  return config.service_public_key(sub(kid, #KID_PREFIX + 1))
end

return _M
