-- auth/keys.lua -- partners' secret API keys (core only): making them, the keyed hash they
-- are stored as, looking one up for a request, listing, rolling and revoking.
--
-- A key is "sk_<mode>_" .. 43 base62 characters (256 bits from the CSPRNG). The database
-- holds HMAC-SHA256(pepper, key) and the first and last four characters, never the key:
-- it is shown once, in the answer that created it.
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"
local log = require "nuvion.log"
local config = require "nuvion.auth.config"
local ids = require "nuvion.api.ids"
local json = require "nuvion.json"

local byte, sub, concat, match = string.byte, string.sub, table.concat, string.match
local type, tostring = type, tostring

local ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local SECRET_CHARS = 43          -- 43 x log2(62) = 256 bits
local SECRET_BYTES_MAX = 128     -- anything longer is not one of ours: refused unhashed
local TOUCHED_MAX = 10000        -- keys whose last write of last_used_at this worker remembers

local _M = {
  SECRET_CHARS = SECRET_CHARS,
  TOUCHED_MAX = TOUCHED_MAX,      -- read at each use (specs lower it)
  ERR_INVALID = "Invalid API key provided.",
  ERR_REVOKED = "This API key has been revoked.",
  ERR_EXPIRED = "This API key has expired (it was rolled and its grace period is over).",
  ERR_PARTNER = "This API key's partner is disabled.",
  ERR_NOT_FOUND = "No such API key.",
  ERR_GONE = "This API key is already revoked or expired.",
}

local function outcome(status, code, message, param)
  return { status = status, code = code, message = message, param = param }
end
_M.outcome = outcome

-- ---- the secret ---------------------------------------------------------------

-- n base62 characters, uniform: bytes >= 248 (4 x 62) are drawn again.
local function base62(n)
  local out = {}
  while #out < n do
    local bytes = crypto.random(n)
    for i = 1, #bytes do
      local b = byte(bytes, i)
      if b < 248 and #out < n then
        local k = b % 62 + 1
        out[#out + 1] = sub(ALPHABET, k, k)
      end
    end
  end
  return concat(out)
end

function _M.generate(mode)
  local secret = "sk_" .. mode .. "_" .. base62(SECRET_CHARS)
  return secret, sub(secret, 1, #mode + 8), sub(secret, -4)
end

-- The stored form of a key. nil, err when the pepper is missing.
function _M.hash(secret)
  local pepper, err = config.pepper()
  if not pepper then return nil, err end
  return crypto.hmac_sha256(pepper, secret)
end

-- "test" | "live" of a well-formed key, else nil.
function _M.mode_of(secret)
  if type(secret) ~= "string" or #secret > SECRET_BYTES_MAX then return nil end
  return match(secret, "^sk_(test)_[0-9A-Za-z]+$") or match(secret, "^sk_(live)_[0-9A-Za-z]+$")
end

-- ---- rows ---------------------------------------------------------------------

local COLUMNS = [[id, partner_id, mode, name, prefix, last4, array_to_json(scopes) AS scopes, rolled_from,
  extract(epoch FROM created_at)::int8 AS created, extract(epoch FROM last_used_at)::int8 AS last_used,
  extract(epoch FROM expires_at)::int8 AS expires, extract(epoch FROM revoked_at)::int8 AS revoked,
  coalesce(expires_at <= now(), false) AS expired]]
_M.COLUMNS = COLUMNS

-- The public object of a key row (no secret, no hash).
function _M.object(row)
  local status = "active"
  if row.revoked then
    status = "revoked"
  elseif row.expired then
    status = "expired"
  elseif row.expires then
    status = "expiring"
  end
  return {
    id = row.id, object = "api_key", partner = row.partner_id, mode = row.mode, livemode = row.mode == "live",
    name = row.name, redacted = row.prefix .. "..." .. row.last4, scopes = json.array(row.scopes or {}),
    rolled_from = row.rolled_from or json.null, created = row.created, last_used = row.last_used or json.null,
    expires_at = row.expires or json.null, revoked_at = row.revoked or json.null, status = status,
  }
end

local function db_error(err)
  log.error("api keys: database error", { error = tostring(err) })
  return outcome(503, "database_unavailable", "The key store is unavailable, try again.")
end
_M.db_error = db_error

-- Creates a key. opts: name, scopes (list), rolled_from. Returns the row and the secret
-- (the one time it exists outside the caller's hands), or nil, outcome.
function _M.create(db, partner_id, mode, opts)
  local secret, prefix, last4 = _M.generate(mode)
  local hash, herr = _M.hash(secret)
  if not hash then
    log.error("api keys: " .. herr)
    return nil, outcome(500, "auth_misconfigured", "API keys are not configured on this server.")
  end
  local pg = require "nuvion.pg"
  local rows, err = db:query("INSERT INTO api_keys (id, partner_id, mode, name, key_hash, prefix, last4, scopes, "
    .. "rolled_from) VALUES ($1, $2, $3, $4, $5, $6, $7, ARRAY(SELECT json_array_elements_text($8::json)), $9) "
    .. "RETURNING " .. COLUMNS, ids.new("key"), partner_id, mode, opts.name, pg.bytea(hash), prefix, last4,
    json.array(opts.scopes or {}), opts.rolled_from or pg.null)
  if not rows then return nil, db_error(err) end
  return rows[1], secret
end

-- ---- authentication -------------------------------------------------------------

-- key id -> the time this worker last wrote its last_used_at; bounded by TOUCHED_MAX
-- (emptied whole when full: the cost is one extra write per key).
local touched, touched_n = {}, 0

local function touch(db, key_id, now)
  local interval = config.get("last_used_interval_s")
  local last = touched[key_id]
  if last and now - last < interval then return end
  if touched_n >= _M.TOUCHED_MAX then touched, touched_n = {}, 0 end
  if not last then touched_n = touched_n + 1 end
  touched[key_id] = now
  -- The database decides too, so N workers write at most once per interval each, and
  -- usually once between them.
  local ok, err = db:query("UPDATE api_keys SET last_used_at = now() WHERE id = $1 AND (last_used_at IS NULL "
    .. "OR last_used_at <= now() - make_interval(secs => $2))", key_id, interval)
  if not ok then log.warn("api keys: last_used_at not written", { key_id = key_id, error = tostring(err) }) end
end

function _M.touched_count() return touched_n end

-- The principal of a secret key, or nil, outcome (401).
function _M.authenticate(db, secret)
  if not _M.mode_of(secret) then return nil, outcome(401, "invalid_api_key", _M.ERR_INVALID) end
  local hash, herr = _M.hash(secret)
  if not hash then
    log.error("api keys: " .. herr)
    return nil, outcome(500, "auth_misconfigured", "API keys are not configured on this server.")
  end
  -- the hash goes as hex text, so the statement is prepared once per connection (a bytea
  -- parameter would send it unnamed: parsed and planned again on every request)
  local rows, err = db:query("SELECT k.id, k.partner_id, k.mode, array_to_json(k.scopes) AS scopes, "
    .. "coalesce(k.expires_at <= now(), false) AS expired, k.revoked_at IS NOT NULL AS revoked, p.status "
    .. "FROM api_keys k JOIN partners p ON p.id = k.partner_id WHERE k.key_hash = decode($1, 'hex')",
    crypto.hex_encode(hash))
  if not rows then return nil, db_error(err) end
  local row = rows[1]
  if not row then return nil, outcome(401, "invalid_api_key", _M.ERR_INVALID) end
  local now = nuvion.now()
  if row.revoked then return nil, outcome(401, "api_key_revoked", _M.ERR_REVOKED) end
  if row.expired then return nil, outcome(401, "api_key_expired", _M.ERR_EXPIRED) end
  if row.status ~= "active" then return nil, outcome(401, "partner_disabled", _M.ERR_PARTNER) end
  touch(db, row.id, now)
  return { partner_id = row.partner_id, mode = row.mode, scopes = row.scopes or {}, key_id = row.id,
           kind = "secret_key" }
end

-- ---- management (always within one partner and one mode) ---------------------------

function _M.get(db, partner_id, mode, id)
  local rows, err = db:query("SELECT " .. COLUMNS .. " FROM api_keys WHERE id = $1 AND partner_id = $2 AND mode = $3",
                             id, partner_id, mode)
  if not rows then return nil, db_error(err) end
  if not rows[1] then return nil, outcome(404, "resource_missing", _M.ERR_NOT_FOUND, "id") end
  return rows[1]
end

-- A new key with the old one's name and scopes; the old one keeps working for grace_s
-- seconds (0: it stops now). Returns new row, secret, old row or nil, outcome.
function _M.roll(db, partner_id, mode, id, grace_s)
  local new_row, secret, old_row = db:tx(function(tx)
    local rows, qerr = tx:query("SELECT " .. COLUMNS .. " FROM api_keys WHERE id = $1 AND partner_id = $2 "
      .. "AND mode = $3 FOR UPDATE", id, partner_id, mode)
    if not rows then return nil, db_error(qerr) end
    local row = rows[1]
    if not row then return nil, outcome(404, "resource_missing", _M.ERR_NOT_FOUND, "id") end
    if row.revoked or row.expired then
      return nil, outcome(400, "api_key_inactive", _M.ERR_GONE, "id")
    end
    -- an earlier roll's shorter grace is kept
    local up, uerr = tx:query("UPDATE api_keys SET expires_at = LEAST(coalesce(expires_at, 'infinity'), "
      .. "now() + make_interval(secs => $2)) WHERE id = $1 RETURNING " .. COLUMNS, id, grace_s)
    if not up then return nil, db_error(uerr) end
    local created, s = _M.create(tx, partner_id, mode, { name = row.name, scopes = row.scopes, rolled_from = id })
    if not created then return nil, s end
    return created, s, up[1]
  end)
  if not new_row then
    if type(secret) == "table" and secret.status then return nil, secret end
    return nil, db_error(secret)
  end
  touched[id] = nil
  return new_row, secret, old_row
end

function _M.revoke(db, partner_id, mode, id)
  local rows, err = db:query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 "
    .. "AND partner_id = $2 AND mode = $3 RETURNING " .. COLUMNS, id, partner_id, mode)
  if not rows then return nil, db_error(err) end
  if not rows[1] then return nil, outcome(404, "resource_missing", _M.ERR_NOT_FOUND, "id") end
  touched[id] = nil
  return rows[1]
end

-- ---- partners ----------------------------------------------------------------------

function _M.create_partner(db, name)
  local rows, err = db:query("INSERT INTO partners (id, name) VALUES ($1, $2) RETURNING id, name, status, "
    .. "extract(epoch FROM created_at)::int8 AS created", ids.new("ptn"), name)
  if not rows then return nil, db_error(err) end
  return rows[1]
end

return _M
