-- idempotency.lua -- the Idempotency-Key of a POST: the first response, whatever it was (5xx
-- included), is stored and replayed for 24 hours; the same key with other parameters is refused;
-- the same key while its first request still runs is refused with 409.
--
--   local idem = require "nuvion.api.idempotency"
--   local state, v = idem.begin(db, { partner_id =, mode =, key =, method =, path =, body = })
--   -- state "new":    v is a claim; run the request, then idem.complete(db, v, status, body_text, headers)
--   --                 or, when nothing must be kept (the body failed validation), idem.release(db, v)
--   -- state "replay": v = { status =, body =, headers = } of the first response
--   -- state nil:      v is an outcome (400 bad key or other parameters, 409 in use, 503 database)
--
-- Rows live in the service's Postgres (`api_idempotency_keys`, sql/core/0100_api.sql), keyed by
-- partner, mode and key: two partners, or test and live mode, never see each other's keys. The
-- request hash is SHA-256 of method, path and the body as canonical JSON (sorted keys), so the
-- same parameters in another order or spacing are the same request.
--
-- A claim carries a lock (`lock_s`, default 60 s, longer than the host's handler timeout): a
-- request that died without completing (worker killed) leaves its key locked until then, after
-- which the same request may claim it again. Rows expire after `ttl_s` (default 24 h); an expired
-- key is claimed anew, and `purge` deletes expired rows in bounded batches.
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local log = require "nuvion.log"
local errors = require "nuvion.api.errors"

local type, error, find, tostring = type, error, string.find, tostring

local _M = {}

_M.KEY_CHARS_MAX = 255
_M.TTL_S = 24 * 3600
_M.LOCK_S = 60
_M.PURGE_BATCH = 1000
local CLAIM_TRIES = 3      -- a key released between our insert and our read: look again, bounded

_M.ERR_KEY_INVALID = "The Idempotency-Key header must be 1 to 255 printable ASCII characters."
_M.ERR_MISMATCH = "Keys for idempotent requests can only be used with the same parameters they "
  .. "were first used with. Use a new Idempotency-Key for a new request."
_M.ERR_IN_USE = "A request with this Idempotency-Key is still being processed; retry once it "
  .. "has finished."

-- The SHA-256 (hex) of a request: method, path and body (a decoded value as canonical JSON, or a string).
function _M.request_hash(method, path, body)
  local text = body
  if type(body) ~= "string" then
    local err
    text, err = json.encode(body, { sort_keys = true })
    if not text then error("request body not encodable: " .. err, 2) end
  end
  return crypto.hex_encode(crypto.sha256(method .. "\n" .. path .. "\n" .. text))
end

-- nil when key is acceptable, else a 400 outcome.
function _M.check_key(key)
  if type(key) ~= "string" or #key < 1 or #key > _M.KEY_CHARS_MAX or find(key, "[^\32-\126]") then
    return errors.invalid("idempotency_key_invalid", _M.ERR_KEY_INVALID)
  end
  return nil
end

local CLAIM = [[
INSERT INTO api_idempotency_keys AS k
  (partner_id, mode, idempotency_key, request_method, request_path, request_hash, request_id,
   locked_until, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), now() + make_interval(secs => $9))
ON CONFLICT (partner_id, mode, idempotency_key) DO UPDATE SET
  request_method = EXCLUDED.request_method, request_path = EXCLUDED.request_path,
  request_hash = EXCLUDED.request_hash, request_id = EXCLUDED.request_id,
  locked_until = EXCLUDED.locked_until, expires_at = EXCLUDED.expires_at, created_at = now(),
  response_status = NULL, response_body = NULL, response_headers = NULL, completed_at = NULL
WHERE k.expires_at <= now()
   OR (k.completed_at IS NULL AND k.locked_until <= now() AND k.request_hash = EXCLUDED.request_hash)
RETURNING request_id]]

local NO_FLUSH = { "SELECT set_config('synchronous_commit', 'off', true)", n = 0 }

local READ = [[
SELECT request_hash, response_status, response_body, response_headers, completed_at IS NOT NULL AS done
FROM api_idempotency_keys WHERE partner_id = $1 AND mode = $2 AND idempotency_key = $3]]

local COMPLETE = [[
UPDATE api_idempotency_keys SET response_status = $5, response_body = $6, response_headers = $7,
  completed_at = now(), locked_until = NULL
WHERE partner_id = $1 AND mode = $2 AND idempotency_key = $3 AND request_id = $4 AND completed_at IS NULL]]

-- In the change's transaction: deferred, sent with its COMMIT (sql/core/0500_*.sql raises
-- when the claim is lost, which rolls the transaction back).
local COMPLETE_IN_TX = "SELECT api_idempotency_complete($1, $2, $3, $4, $5, $6, $7)"

local RELEASE = [[
DELETE FROM api_idempotency_keys
WHERE partner_id = $1 AND mode = $2 AND idempotency_key = $3 AND request_id = $4 AND completed_at IS NULL]]

local function unavailable(err)
  log.error("idempotency store unavailable", { error = tostring(err) })
  return nil, errors.unavailable()
end

-- opts: partner_id, mode, key, method, path, body (decoded value or string), request_id,
-- ttl_s, lock_s.
function _M.begin(db, opts)
  local bad = _M.check_key(opts.key)
  if bad then return nil, bad end
  if type(opts.partner_id) ~= "string" or (opts.mode ~= "test" and opts.mode ~= "live") then
    error("idempotency needs a partner_id and a mode", 2)
  end
  local hash = _M.request_hash(opts.method, opts.path, opts.body or "")
  local claim = { partner_id = opts.partner_id, mode = opts.mode, key = opts.key,
                  request_id = opts.request_id or crypto.hex_encode(crypto.random(16)) }
  for _ = 1, CLAIM_TRIES do
    -- committed without waiting for its WAL flush: a claim lost in a crash leaves the key free,
    -- as if the request never came; a change made under it commits later, with a flush that
    -- writes the claim's commit too (the WAL is one sequence), so it never outlives its claim
    local res, err = db:pipeline({ NO_FLUSH, { CLAIM, claim.partner_id, claim.mode, claim.key, opts.method,
                                             opts.path, hash, claim.request_id, opts.lock_s or _M.LOCK_S,
                                             opts.ttl_s or _M.TTL_S, n = 9 } })
    if not res or err then return unavailable(err) end
    local rows = res[2]
    if rows[1] then return "new", claim end
    rows, err = db:query(READ, claim.partner_id, claim.mode, claim.key)
    if not rows then return unavailable(err) end
    local row = rows[1]
    if row then
      if row.request_hash ~= hash then
        return nil, errors.idempotency(400, "idempotency_key_reused", _M.ERR_MISMATCH)
      end
      if not row.done then
        return nil, errors.idempotency(409, "idempotency_key_in_use", _M.ERR_IN_USE)
      end
      return "replay", { status = row.response_status, body = row.response_body or "",
                         headers = row.response_headers }
    end
  end
  return nil, errors.idempotency(409, "idempotency_key_in_use", _M.ERR_IN_USE)
end

-- Stores the response of a claim. headers: a table of string values, or nil.
-- Returns true, or nil and the error (the response is still sent; the key stays locked until
-- its lock expires, then the same request may run again).
function _M.complete(db, claim, status, body, headers)
  if type(db.defer) == "function" then -- a pool:tx: with the change's COMMIT, no round trip
    db:defer({ COMPLETE_IN_TX, claim.partner_id, claim.mode, claim.key, claim.request_id, status, body,
               headers or json.null, n = 7 })
    return true
  end
  local rows, err = db:query(COMPLETE, claim.partner_id, claim.mode, claim.key, claim.request_id,
                             status, body, headers or json.null)
  if not rows then
    log.error("idempotent response not stored", { error = tostring(err), status = status })
    return nil, err
  end
  return rows.affected == 1 or nil, rows.affected == 1 and nil or "claim lost"
end

-- Deletes a claim that must leave nothing behind (a body that failed validation).
function _M.release(db, claim)
  local rows, err = db:query(RELEASE, claim.partner_id, claim.mode, claim.key, claim.request_id)
  if not rows then
    log.error("idempotency claim not released", { error = tostring(err) })
    return nil, err
  end
  return true
end

-- Deletes up to `limit` (default PURGE_BATCH) expired rows; returns how many.
function _M.purge(db, limit)
  local rows, err = db:query([[
DELETE FROM api_idempotency_keys WHERE ctid IN (
  SELECT ctid FROM api_idempotency_keys WHERE expires_at <= now() LIMIT $1)]], limit or _M.PURGE_BATCH)
  if not rows then return nil, err end
  return rows.affected
end

return _M
