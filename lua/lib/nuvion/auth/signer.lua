-- auth/signer.lua -- core's Ed25519 signing keys for access tokens: the current key (made on
-- first use), rotation, and the public keys that the JWKS publishes.
--
-- Seeds are stored sealed (nuvion.crypto envelope under NUVION_MASTER_KEYS; a fixed
-- development key when NUVION_ENV is development or test). A rotated key stops signing at
-- once and stays published until every token it signed has expired (retired_at + the
-- token lifetime + the clock skew allowance).
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"
local pg = require "nuvion.pg"
local log = require "nuvion.log"
local config = require "nuvion.auth.config"
local ids = require "nuvion.api.ids"

local tostring = tostring

-- Published keys at most (the current one and those still verifying old tokens).
local PUBLISHED_KEYS_MAX = 16

local _M = { PUBLISHED_KEYS_MAX = PUBLISHED_KEYS_MAX }

local current, current_at = nil, -1    -- { kid, seed }, when it was read
local published, published_at = nil, -1

local function aad(kid) return "auth_signing_keys.seed:" .. kid end

local function keyring()
  return config.signing_keyring()
end

-- Retires the current key (if any) and makes a new one, in one transaction serialised by
-- an advisory lock. only_if_none: do nothing when a current key exists (first use).
local function make_key(db, only_if_none)
  local kr, kerr = keyring()
  if not kr then return nil, kerr end
  return db:tx(function(tx)
    local ok, err = tx:query("SELECT pg_advisory_xact_lock(hashtext('nuvion.auth.signing_keys'))")
    if not ok then return nil, err end
    local rows
    rows, err = tx:query("SELECT kid FROM auth_signing_keys WHERE retired_at IS NULL")
    if not rows then return nil, err end
    if rows[1] and only_if_none then return rows[1].kid end
    local keep_s = config.get("token_ttl_s") + config.get("clock_skew_s")
    ok, err = tx:query("UPDATE auth_signing_keys SET retired_at = now(), "
      .. "expires_at = now() + make_interval(secs => $1) WHERE retired_at IS NULL", keep_s)
    if not ok then return nil, err end
    local seed, pub = crypto.ed25519_keypair()
    local kid = ids.new("ed")
    ok, err = tx:query("INSERT INTO auth_signing_keys (kid, public_key, seed_sealed) VALUES ($1, $2, $3)",
                       kid, pg.bytea(pub), kr:encrypt(seed, aad(kid)))
    if not ok then return nil, err end
    log.info("auth: new signing key", { kid = kid })
    return kid
  end)
end

-- Rotates: a new current key; the old one signs no more. Returns the new kid.
function _M.rotate(db)
  local kid, err = make_key(db, false)
  current_at, published_at = -1, -1
  return kid, err
end

-- The key to sign with: { kid, seed }, or nil, err. Read from the database at most once
-- per NUVION_AUTH_SIGNING_KEY_REFRESH_S (so a rotation reaches every worker within it).
function _M.current(db)
  local now = nuvion.now()
  if current and now - current_at < config.get("signing_key_refresh_s") then return current end
  local rows, err = db:query("SELECT kid, seed_sealed FROM auth_signing_keys WHERE retired_at IS NULL")
  if not rows then return nil, err end
  if not rows[1] then
    local _, merr = make_key(db, true)
    if merr then return nil, merr end
    rows, err = db:query("SELECT kid, seed_sealed FROM auth_signing_keys WHERE retired_at IS NULL")
    if not rows or not rows[1] then return nil, err or "no signing key" end
  end
  local row = rows[1]
  local kr, kerr = keyring()
  if not kr then return nil, kerr end
  local seed, derr = kr:decrypt(row.seed_sealed, aad(row.kid))
  if not seed then return nil, "signing key " .. row.kid .. ": " .. tostring(derr) end
  current, current_at = { kid = row.kid, seed = seed }, now
  return current
end

-- { kid = pub32 } of the keys still published, newest first in `.order`. Cached like
-- current(); force re-reads (an unknown kid, rate-bounded by the caller).
function _M.published(db, force)
  local now = nuvion.now()
  if published and not force and now - published_at < config.get("signing_key_refresh_s") then return published end
  local rows, err = db:query("SELECT kid, public_key FROM auth_signing_keys WHERE expires_at IS NULL "
    .. "OR expires_at > now() ORDER BY created_at DESC LIMIT $1", PUBLISHED_KEYS_MAX)
  if not rows then return nil, err end
  local set = { order = {} }
  for i = 1, #rows do
    set[rows[i].kid] = rows[i].public_key
    set.order[i] = rows[i].kid
  end
  published, published_at = set, now
  return set
end

-- The JWKS document (RFC 7517 / RFC 8037 OKP keys).
function _M.jwks(db)
  local set, err = _M.published(db)
  if not set then return nil, err end
  local keys = {}
  for i, kid in ipairs(set.order) do
    keys[i] = { kty = "OKP", crv = "Ed25519", use = "sig", alg = "EdDSA", kid = kid,
                x = crypto.base64url_encode(set[kid]) }
  end
  return { keys = require("nuvion.json").array(keys) }
end

-- Forgets what this worker read (specs: after changing keys behind its back).
function _M.forget()
  current, current_at, published, published_at = nil, -1, nil, -1
end

return _M
