-- auth/jwks.lua -- the public keys of core's access tokens, for every other service:
-- fetched from core's GET /.well-known/jwks.json (NUVION_AUTH_JWKS_URL) over nuvion.http and
-- kept per worker.
--
--   local src = jwks.new(url)
--   local pub = src:key(kid)      -- pub32 | nil, err
--
-- A kid not in the set fetches again (a rotation), but at most once per
-- NUVION_AUTH_JWKS_MIN_REFRESH_MS, so tokens with made-up kids cannot make us hammer core;
-- the whole set is also fetched again after NUVION_AUTH_JWKS_TTL_S (dropped keys go away).
-- One fetch at a time: concurrent callers wait for the one in flight. A failed fetch keeps
-- the keys we had.
local http = require "nuvion.http"
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"
local log = require "nuvion.log"
local config = require "nuvion.auth.config"

local type, ipairs, setmetatable, tostring = type, ipairs, setmetatable, tostring

local FETCH_TIMEOUT_MS = 3000
local JWKS_BYTES_MAX = 64 * 1024
local JWKS_KEYS_MAX = 16
local WAIT_STEP_MS = 5

local _M = { FETCH_TIMEOUT_MS = FETCH_TIMEOUT_MS, JWKS_KEYS_MAX = JWKS_KEYS_MAX, JWKS_BYTES_MAX = JWKS_BYTES_MAX }
local Source = {}
Source.__index = Source

function _M.new(url)
  return setmetatable({ url = url, keys = {}, fetched_ms = nil, tried_ms = nil, fetching = false,
                        fetches = 0, failures = 0 }, Source)
end

-- Parses a JWKS body into { kid = pub32 }, or nil, err.
function _M.parse(body)
  if #body > JWKS_BYTES_MAX then return nil, "larger than " .. JWKS_BYTES_MAX .. " bytes" end
  local doc = json.decode(body, { bytes = JWKS_BYTES_MAX, depth = 8 })
  if type(doc) ~= "table" or type(doc.keys) ~= "table" then return nil, "not a JWKS document" end
  local keys, n = {}, 0
  for _, k in ipairs(doc.keys) do
    if type(k) == "table" and k.kty == "OKP" and k.crv == "Ed25519" and type(k.kid) == "string"
       and type(k.x) == "string" and (k.use == nil or k.use == "sig") then
      local pub = crypto.base64url_decode(k.x)
      if pub and #pub == 32 then
        n = n + 1
        if n > JWKS_KEYS_MAX then return nil, "more than " .. JWKS_KEYS_MAX .. " keys" end
        keys[k.kid] = pub
      end
    end
  end
  return keys
end

-- Sets the keys as if fetched now (benches; a service that pins its keys).
function Source:preload(keys)
  self.keys, self.fetched_ms, self.tried_ms = keys, nuvion.monotonic_ms(), nuvion.monotonic_ms()
end

function Source:fetch()
  if self.fetching then
    -- the fetch in flight answers for us too
    while self.fetching do nuvion.sleep(WAIT_STEP_MS) end
    return self.fetch_ok
  end
  self.fetching = true
  self.tried_ms = nuvion.monotonic_ms()
  self.fetches = self.fetches + 1
  local res, err = http.request({ url = self.url, timeout = FETCH_TIMEOUT_MS, max_body_bytes = JWKS_BYTES_MAX })
  local keys
  if res and res.status == 200 then
    keys, err = _M.parse(res.body)
  elseif res then
    err = "status " .. res.status
  end
  if keys then
    self.keys, self.fetched_ms = keys, nuvion.monotonic_ms()
  else
    self.failures = self.failures + 1
    log.warn("auth: JWKS fetch failed", { url = self.url, error = tostring(err) })
  end
  self.fetch_ok = keys ~= nil
  self.fetching = false
  return self.fetch_ok
end

function Source:key(kid)
  local now = nuvion.monotonic_ms()
  if self.fetched_ms and now - self.fetched_ms >= config.get("jwks_ttl_s") * 1000 then
    if not self.tried_ms or now - self.tried_ms >= config.get("jwks_refresh_min_ms") then self:fetch() end
  end
  local pub = self.keys[kid]
  if pub then return pub end
  if self.tried_ms and now - self.tried_ms < config.get("jwks_refresh_min_ms") then
    if not self.fetching then return nil, "unknown kid" end
  end
  self:fetch()
  return self.keys[kid]
end

function Source:stats()
  local n = 0
  for _ in pairs(self.keys) do n = n + 1 end
  return { keys = n, fetches = self.fetches, failures = self.failures }
end

return _M
