-- auth/config.lua -- the settings of nuvion.auth: environment variables, read once per
-- worker, each with a default, a range and an error that names the variable
-- (docs/auth.md). auth.configure(overrides) replaces values (specs, benches, core's routes).
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"

local getenv, tonumber, format, error, pairs, type = os.getenv, tonumber, string.format, error, pairs, type

-- Development defaults: used only when NUVION_ENV is "development" or "test", so a
-- production process without its secrets fails instead of running on public values.
local DEV_PEPPER = "nuvion-development-api-key-pepper (never in production)"
local DEV_SIGNING_MASTER = "nuvion-development-signing-key-master (never in production)"
local DEV_SERVICE_SEED = "nuvion-development-service-keys (never in production)"

local _M = {
  ERR_NO_PEPPER = "NUVION_API_KEY_PEPPER is not set (required unless NUVION_ENV is development or test)",
  ERR_SHORT_PEPPER = "NUVION_API_KEY_PEPPER must be at least 32 bytes",
}

-- name -> { env var, default, min, max } for the numeric settings.
local NUMBERS = {
  token_ttl_s = { "NUVION_ACCESS_TOKEN_TTL_S", 900, 1, 86400 },
  last_used_interval_s = { "NUVION_API_KEY_LAST_USED_INTERVAL_S", 60, 0, 86400 },
  roll_grace_default_s = { "NUVION_API_KEY_ROLL_GRACE_S", 86400, 0, 604800 },
  jwks_refresh_min_ms = { "NUVION_AUTH_JWKS_MIN_REFRESH_MS", 10000, 0, 3600000 },
  jwks_ttl_s = { "NUVION_AUTH_JWKS_TTL_S", 300, 1, 86400 },
  token_cache_max = { "NUVION_AUTH_TOKEN_CACHE_MAX", 10000, 2, 1000000 },
  signing_key_refresh_s = { "NUVION_AUTH_SIGNING_KEY_REFRESH_S", 60, 0, 3600 },
  service_token_ttl_s = { "NUVION_SERVICE_TOKEN_TTL_S", 300, 10, 3600 },
  clock_skew_s = { "NUVION_AUTH_CLOCK_SKEW_S", 30, 0, 300 },
}
_M.NUMBERS = NUMBERS

local overrides = {}
local cache = {}

function _M.configure(opts)
  for k, v in pairs(opts or {}) do
    overrides[k] = v
    cache[k] = nil
  end
  cache = {}
end

function _M.reset()
  overrides, cache = {}, {}
end

local function env(name)
  local v = overrides[name]
  if v ~= nil then return v end
  return getenv(name)
end
_M.env = env

function _M.get(name)
  local v = overrides[name]
  if v ~= nil then return v end
  v = cache[name]
  if v ~= nil then return v end
  local spec = NUMBERS[name]
  if not spec then error("unknown auth setting " .. tostring(name), 2) end
  local raw = getenv(spec[1])
  if raw == nil or raw == "" then
    v = spec[2]
  else
    v = tonumber(raw)
    if not v or v % 1 ~= 0 or v < spec[3] or v > spec[4] then
      error(format("%s must be an integer in [%d, %d]", spec[1], spec[3], spec[4]), 2)
    end
  end
  cache[name] = v
  return v
end

function _M.is_development()
  local e = env("NUVION_ENV")
  return e == "development" or e == "test"
end

-- The key of the keyed hash of API keys: bytes, or nil, err.
function _M.pepper()
  local p = env("NUVION_API_KEY_PEPPER")
  if p == nil or p == "" then
    if _M.is_development() then return DEV_PEPPER end
    return nil, _M.ERR_NO_PEPPER
  end
  if #p < 32 then return nil, _M.ERR_SHORT_PEPPER end
  return p
end

-- The keyring that seals signing key seeds: NUVION_MASTER_KEYS, or in development a
-- fixed key (documented, public: development data only).
function _M.signing_keyring()
  local k = env("NUVION_MASTER_KEYS")
  if k ~= nil and k ~= "" then
    if type(k) == "table" then return k end -- a keyring given by configure()
    return crypto.keyring_from_env()
  end
  if not _M.is_development() then
    return nil, "NUVION_MASTER_KEYS is not set (required unless NUVION_ENV is development or test)"
  end
  return crypto.keyring({ dev = crypto.sha256(DEV_SIGNING_MASTER) }, "dev")
end

-- This service's name, for the audience of service tokens.
function _M.service_name()
  local n = env("NUVION_SERVICE_NAME")
  if n and n ~= "" then return n end
  return nuvion.context().service
end

-- Service key seeds: NUVION_SERVICE_KEY (this service's base64url seed), and
-- NUVION_SERVICE_PUBLIC_KEYS ("core:<b64url>,acquiring:<b64url>") for the others; in
-- development both derive from a fixed secret by name.
function _M.service_seed(name)
  local s = env("NUVION_SERVICE_KEY")
  if s and s ~= "" then
    local seed = crypto.base64url_decode(s)
    if not seed or #seed ~= 32 then return nil, "NUVION_SERVICE_KEY must be base64url of 32 bytes" end
    return seed
  end
  if _M.is_development() then return crypto.hmac_sha256(DEV_SERVICE_SEED, name) end
  return nil, "NUVION_SERVICE_KEY is not set (required unless NUVION_ENV is development or test)"
end

function _M.service_public_key(name)
  local list = env("NUVION_SERVICE_PUBLIC_KEYS")
  if list and list ~= "" then
    for entry in list:gmatch("[^,]+") do
      local n, x = entry:match("^%s*([%w_%-]+):([%w_%-]+)%s*$")
      if n == name then
        local pub = crypto.base64url_decode(x)
        if pub and #pub == 32 then return pub end
        return nil, "NUVION_SERVICE_PUBLIC_KEYS: bad key for " .. name
      end
    end
    return nil, "no service key for " .. name
  end
  if _M.is_development() then
    return crypto.ed25519_public(crypto.hmac_sha256(DEV_SERVICE_SEED, name))
  end
  return nil, "NUVION_SERVICE_PUBLIC_KEYS is not set"
end

return _M
