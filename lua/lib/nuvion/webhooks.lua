-- webhooks.lua -- signed webhooks to customers: endpoints, deliveries with retries and
-- exponential backoff over about three days, every attempt recorded, endpoints disabled after a
-- long failure streak, replay by id; and the receivers' verification helper.
--
--   local webhooks = require "nuvion.webhooks"
--   local wh = webhooks.new{ db = core_db, queue = queue.new("webhooks", { redis = url }) }
--   local ep = assert(wh:create_endpoint("cus_123", { url = "https://example.com/hooks",
--                                                     event_types = { "payout.paid" } }))
--   -- ep.secret is shown here once; afterwards only the endpoint's other fields
--   wh:publish({ id = event_id, type = "payout.paid", owner_id = "cus_123", data = {...} })
--   queue.worker("webhooks", wh:job_handler(), { concurrency = 50 })
--
--   -- a receiver (Lua):
--   local ok, err = webhooks.verify(req.headers["nuvion-signature"], req.body, { secret })
--
-- See docs/webhooks.md.
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"
local json = require "nuvion.json"
local http = require "nuvion.http"
local ids = require "nuvion.ids"
local log = require "nuvion.log"
local netguard = require "nuvion.netguard"
local outbox = require "nuvion.outbox"

local type, error, ipairs, tostring, tonumber, setmetatable, pcall = type, error, ipairs, tostring, tonumber,
  setmetatable, pcall
local floor, abs = math.floor, math.abs
local match, gmatch, format, sub, gsub, concat = string.match, string.gmatch, string.format, string.sub,
  string.gsub, table.concat
local getenv = os.getenv

local _M = {}

_M.HEADER = "Nuvion-Signature"
_M.TOLERANCE_S = 300
_M.URL_BYTES_MAX = 2048
_M.EVENT_TYPES_MAX = 100
_M.SECRETS_MAX = 5              -- secrets signing at once (rotations in flight)
_M.ROTATION_GRACE_S_DEFAULT = 24 * 3600
_M.ROTATION_GRACE_S_MAX = 7 * 24 * 3600

local function fail(code, message, param)
  return { code = code, message = message, param = param }
end

local function now_s() return floor(nuvion.now()) end

-- ---- signatures ----

-- sign(secret_or_secrets, ts, body) -> "t=<ts>,v1=<hex>[,v1=<hex>...]": one v1 per secret.
function _M.sign(secrets, ts, body)
  if type(secrets) == "string" then secrets = { secrets } end
  if type(secrets) ~= "table" or #secrets == 0 then error("sign needs a secret or a list of secrets", 2) end
  if type(ts) ~= "number" or ts ~= floor(ts) then error("ts must be integral unix seconds", 2) end
  if type(body) ~= "string" then error("body must be a string", 2) end
  local parts = { "t=" .. format("%d", ts) }
  local signed = parts[1]:sub(3) .. "." .. body
  for _, s in ipairs(secrets) do
    if type(s) ~= "string" or s == "" then error("a secret must be a non-empty string", 2) end
    parts[#parts + 1] = "v1=" .. crypto.hex_encode(crypto.hmac_sha256(s, signed))
  end
  return concat(parts, ",")
end

-- verify(header, body, secrets, { tolerance = 300, now = unix s }) -> true | nil, code
-- Codes: "missing_signature", "malformed_signature", "timestamp_outside_tolerance",
-- "signature_mismatch". Any v1 matching any secret passes (rotation).
function _M.verify(header, body, secrets, opts)
  if type(secrets) == "string" then secrets = { secrets } end
  if type(secrets) ~= "table" or #secrets == 0 then error("verify needs a secret or a list of secrets", 2) end
  if type(body) ~= "string" then error("body must be a string", 2) end
  opts = opts or {}
  if type(header) ~= "string" or header == "" then return nil, "missing_signature" end
  if #header > 4096 then return nil, "malformed_signature" end
  local ts, sigs = nil, {}
  for item in gmatch(header, "[^,]+") do
    local k, v = match(item, "^%s*([%w]+)=([^%s]*)%s*$")
    if not k then return nil, "malformed_signature" end
    if k == "t" then
      if ts or not match(v, "^%d+$") or #v > 12 then return nil, "malformed_signature" end
      ts = v
    elseif k == "v1" and match(v, "^%x+$") and #v == 64 then
      sigs[#sigs + 1] = v:lower()
    end                                   -- other schemes (v0, future ones) are ignored
  end
  if not ts or #sigs == 0 then return nil, "malformed_signature" end
  local now = opts.now or nuvion.now()
  if abs(now - tonumber(ts)) > (opts.tolerance or _M.TOLERANCE_S) then
    return nil, "timestamp_outside_tolerance"
  end
  local signed = ts .. "." .. body
  local found = false
  for _, s in ipairs(secrets) do
    local want = crypto.hex_encode(crypto.hmac_sha256(s, signed))
    for _, got in ipairs(sigs) do
      if crypto.equal(want, got) then found = true end   -- no early exit: same work for every input
    end
  end
  if not found then return nil, "signature_mismatch" end
  return true
end

-- ---- the schedule ----

-- delay_ms(schedule, n) -> ms to wait after failed attempt n before attempt n + 1, or nil when
-- n was the last attempt.
function _M.delay_ms(schedule, n)
  if n >= schedule.attempts then return nil end
  return floor(schedule.first_retry_ms * 2 ^ (n - 1) + 0.5)
end

local function check_schedule(s)
  if type(s) ~= "table" then error("schedule must be a table", 3) end
  if type(s.attempts) ~= "number" or s.attempts < 1 or s.attempts > 100 or s.attempts ~= floor(s.attempts) then
    error("schedule.attempts must be an integer in [1, 100]", 3)
  end
  if type(s.first_retry_ms) ~= "number" or s.first_retry_ms < 1 then error("schedule.first_retry_ms must be > 0", 3) end
  local d = s.disable_after
  if type(d) ~= "table" or type(d.failures) ~= "number" or d.failures < 1 or type(d.for_ms) ~= "number" then
    error("schedule.disable_after must be { failures = n >= 1, for_ms = ms }", 3)
  end
end

-- ---- instance ----

local WH = {}
WH.__index = WH

-- new{ db, keyring, queue, schedule, allow_private, job_name } -> instance
--   db: the pg pool holding the webhook tables (core's); keyring: nuvion.crypto keyring for the
--   secrets (default crypto.keyring_from_env()); queue: a nuvion.queue handle, one job per
--   delivery (none: deliveries wait for run_due); schedule: default nuvion.rules.webhook_retries;
--   allow_private: test mode (default env NUVION_WEBHOOKS_ALLOW_PRIVATE=1): loopback and private
--   addresses and plain http allowed.
function _M.new(opts)
  if type(opts) ~= "table" or type(opts.db) ~= "table" then error("webhooks.new needs { db = pool }", 2) end
  local kr = opts.keyring
  if kr == nil then
    local err
    kr, err = crypto.keyring_from_env()
    if not kr then error("webhooks.new: no keyring: " .. tostring(err), 2) end
  end
  local schedule = opts.schedule or require("nuvion.rules.webhook_retries")
  check_schedule(schedule)
  local allow_private = opts.allow_private
  if allow_private == nil then allow_private = getenv("NUVION_WEBHOOKS_ALLOW_PRIVATE") == "1" end
  return setmetatable({
    db = opts.db, kr = kr, queue = opts.queue, schedule = schedule, allow_private = allow_private,
    job_name = opts.job_name or "deliver",
    timeout_ms = schedule.timeout_ms or 10000,
    excerpt_bytes = schedule.response_excerpt_bytes or 512,
  }, WH)
end

local function secret_aad(endpoint_id) return "webhook_endpoint_secret:" .. endpoint_id end

local function new_secret() return "whsec_" .. crypto.base64url_encode(crypto.random(24)) end

-- URL rules: http(s), no credentials, at most 2048 bytes; https unless test mode; the host must
-- pass the SSRF guard now (and again at every delivery: DNS may change).
function WH:check_url(url)
  if type(url) ~= "string" or #url > _M.URL_BYTES_MAX or #url < 8 then
    return nil, fail("invalid_url", "url must be a string of at most " .. _M.URL_BYTES_MAX .. " bytes", "url")
  end
  local scheme = match(url, "^(%a+)://")
  scheme = scheme and scheme:lower()
  if scheme ~= "https" and not (scheme == "http" and self.allow_private) then
    return nil, fail("invalid_url", "url must start with https://", "url")
  end
  if match(url, "[%s%c]") then return nil, fail("invalid_url", "url has spaces or control characters", "url") end
  local addr, err = netguard.check_url(url, { allow_private = self.allow_private })
  if not addr then
    local code = err.code == "ssrf_blocked" and "url_not_allowed" or "invalid_url"
    return nil, fail(code, err.message, "url")
  end
  return addr
end

local function check_event_types(types)
  if type(types) ~= "table" or #types == 0 or #types > _M.EVENT_TYPES_MAX then
    return nil, fail("invalid_event_types", "event_types must list 1 to " .. _M.EVENT_TYPES_MAX .. " types",
                     "event_types")
  end
  for _, t in ipairs(types) do
    if type(t) ~= "string" or not (t == "*" or match(t, "^[a-z][a-z0-9_]*%.[a-z0-9_.]+$")) then
      return nil, fail("invalid_event_types", "event type " .. tostring(t) .. " is not a dotted name or *",
                       "event_types")
    end
  end
  return json.array(types)
end

local ENDPOINT_COLUMNS = "id, owner_id, url, description, to_json(event_types) AS event_types, enabled, " ..
  "disabled_reason, failure_streak, extract(epoch FROM created_at)::bigint AS created"

local function endpoint_view(row)
  return {
    id = row.id, object = "webhook_endpoint", url = row.url, description = row.description,
    event_types = row.event_types, enabled = row.enabled, disabled_reason = row.disabled_reason,
    created = row.created,
  }
end

-- create_endpoint(owner_id, { url, event_types, description }) -> endpoint with .secret | nil, err
function WH:create_endpoint(owner_id, p)
  if type(owner_id) ~= "string" or owner_id == "" then error("owner_id must be a non-empty string", 2) end
  if type(p) ~= "table" then error("endpoint parameters must be a table", 2) end
  local ok, err = self:check_url(p.url)
  if not ok then return nil, err end
  local types
  types, err = check_event_types(p.event_types)
  if not types then return nil, err end
  if p.description ~= nil and (type(p.description) ~= "string" or #p.description > 500) then
    return nil, fail("invalid_description", "description must be a string of at most 500 bytes", "description")
  end
  local id, secret, secret_id = ids.new("we"), new_secret(), ids.new("whs")
  local row, terr = self.db:tx(function(tx)
    local rows, e = tx:query(
      "INSERT INTO webhook_endpoints (id, owner_id, url, description, event_types) " ..
      "VALUES ($1, $2, $3, $4, ARRAY(SELECT jsonb_array_elements_text($5::jsonb))) RETURNING " .. ENDPOINT_COLUMNS,
      id, owner_id, p.url, p.description, types)
    if not rows then return nil, e end
    local s, e2 = tx:query("INSERT INTO webhook_endpoint_secrets (id, endpoint_id, secret_enc) VALUES ($1, $2, $3)",
                           secret_id, id, self.kr:encrypt(secret, secret_aad(id)))
    if not s then return nil, e2 end
    return rows[1]
  end)
  if not row then return nil, terr end
  local view = endpoint_view(row)
  view.secret = secret        -- the only time it is shown
  return view
end

function WH:get_endpoint(owner_id, id)
  local rows, err = self.db:query("SELECT " .. ENDPOINT_COLUMNS .. " FROM webhook_endpoints " ..
                                  "WHERE owner_id = $1 AND id = $2 AND deleted_at IS NULL", owner_id, id)
  if not rows then return nil, err end
  if not rows[1] then return nil, fail("resource_missing", "No such webhook endpoint: " .. tostring(id), "id") end
  return endpoint_view(rows[1])
end

-- The keyset part of a list: p = { limit = 10, starting_after = id | ending_before = id } ->
-- limit, the SQL condition on the id column (after `and`, with $n the cursor), its order, the
-- cursor (nil on a first page); or nil, err. Ids sort by creation time (nuvion.ids).
local function keyset(p, n)
  local limit = p.limit or 10
  if type(limit) ~= "number" or limit < 1 or limit > 100 or limit ~= floor(limit) then
    return nil, fail("invalid_limit", "limit must be an integer in [1, 100]", "limit")
  end
  if p.starting_after ~= nil and p.ending_before ~= nil then
    return nil, fail("invalid_cursor", "give starting_after or ending_before, not both", "ending_before")
  end
  for _, k in ipairs({ "starting_after", "ending_before" }) do
    if p[k] ~= nil and (type(p[k]) ~= "string" or #p[k] > 64) then
      return nil, fail("invalid_cursor", k .. " must be an id", k)
    end
  end
  if p.ending_before ~= nil then
    return limit, format("id > $%d", n), "ASC", p.ending_before
  end
  return limit, format("($%d::text IS NULL OR id < $%d)", n, n), "DESC", p.starting_after
end

-- A page fetched with keyset's order, newest first whatever the direction: data (the first
-- `limit` rows, mapped) and has_more (more rows beyond the page in the direction read).
local function page_of(rows, limit, order, map)
  local count = math.min(#rows, limit)
  local data = {}
  for i = 1, count do
    data[i] = map(order == "ASC" and rows[count + 1 - i] or rows[i])
  end
  return json.array(data), #rows > limit
end

-- list_endpoints(owner_id, { limit = 10, starting_after = id | ending_before = id })
--   -> { object = "list", data, has_more }, newest first; has_more: more endpoints older than
--   the page (first and starting_after pages) or newer than it (ending_before pages).
function WH:list_endpoints(owner_id, p)
  p = p or {}
  local limit, cond, order, cursor = keyset(p, 2)
  if not limit then return nil, cond end
  local rows, err = self.db:query("SELECT " .. ENDPOINT_COLUMNS .. " FROM webhook_endpoints " ..
    "WHERE owner_id = $1 AND deleted_at IS NULL AND " .. cond .. " ORDER BY id " .. order .. " LIMIT $3",
    owner_id, cursor, limit + 1)
  if not rows then return nil, err end
  local data, has_more = page_of(rows, limit, order, endpoint_view)
  return { object = "list", data = data, has_more = has_more }
end

-- update_endpoint(owner_id, id, { url, event_types, description, enabled }) -> endpoint | nil, err
-- Enabling a disabled endpoint clears its failure streak.
function WH:update_endpoint(owner_id, id, p)
  if type(p) ~= "table" then error("endpoint parameters must be a table", 2) end
  local err
  if p.url ~= nil then
    local ok, e = self:check_url(p.url)
    if not ok then return nil, e end
  end
  local types = json.null
  if p.event_types ~= nil then
    types, err = check_event_types(p.event_types)
    if not types then return nil, err end
  end
  if p.enabled ~= nil and type(p.enabled) ~= "boolean" then
    return nil, fail("invalid_enabled", "enabled must be a boolean", "enabled")
  end
  if p.description ~= nil and (type(p.description) ~= "string" or #p.description > 500) then
    return nil, fail("invalid_description", "description must be a string of at most 500 bytes", "description")
  end
  local rows
  rows, err = self.db:query({
    "UPDATE webhook_endpoints SET url = coalesce($3, url), description = coalesce($4, description), " ..
    "event_types = CASE WHEN $5::jsonb IS NULL THEN event_types " ..
    "  ELSE ARRAY(SELECT jsonb_array_elements_text($5::jsonb)) END, " ..
    "enabled = coalesce($6, enabled), " ..
    "disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, " ..
    "disabled_at = CASE WHEN $6 THEN NULL ELSE disabled_at END, " ..
    "failure_streak = CASE WHEN $6 THEN 0 ELSE failure_streak END, " ..
    "failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END, updated_at = now() " ..
    "WHERE owner_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING " .. ENDPOINT_COLUMNS,
    owner_id, id, p.url, p.description, types, p.enabled, n = 6 })
  if not rows then return nil, err end
  if not rows[1] then return nil, fail("resource_missing", "No such webhook endpoint: " .. tostring(id), "id") end
  return endpoint_view(rows[1])
end

-- delete_endpoint(owner_id, id) -> { id, object, deleted = true }: its pending deliveries fail.
function WH:delete_endpoint(owner_id, id)
  local done, err = self.db:tx(function(tx)
    local rows, e = tx:query("UPDATE webhook_endpoints SET deleted_at = now(), enabled = false, updated_at = now() " ..
                             "WHERE owner_id = $1 AND id = $2 AND deleted_at IS NULL RETURNING id", owner_id, id)
    if not rows then return nil, e end
    if not rows[1] then return nil, fail("resource_missing", "No such webhook endpoint: " .. tostring(id), "id") end
    rows, e = tx:query("UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint_deleted', " ..
                       "next_attempt_at = NULL, completed_at = now() " ..
                       "WHERE endpoint_id = $1 AND status IN ('pending', 'retrying')", id)
    if not rows then return nil, e end
    return true
  end)
  if not done then return nil, err end
  return { id = id, object = "webhook_endpoint", deleted = true }
end

-- rotate_secret(owner_id, id, { expire_in_s = 86400 }) -> new secret | nil, err
-- The new secret becomes current; the previous ones keep signing (one v1 each) until they
-- expire, at most expire_in_s from now (0: at once). At most SECRETS_MAX sign at a time.
function WH:rotate_secret(owner_id, id, p)
  p = p or {}
  local grace = p.expire_in_s or _M.ROTATION_GRACE_S_DEFAULT
  if type(grace) ~= "number" or grace < 0 or grace > _M.ROTATION_GRACE_S_MAX then
    return nil, fail("invalid_expire_in", "expire_in_s must be in [0, " .. _M.ROTATION_GRACE_S_MAX .. "]",
                     "expire_in_s")
  end
  local secret = new_secret()
  local ok, err = self.db:tx(function(tx)
    local rows, e = tx:query("SELECT id FROM webhook_endpoints WHERE owner_id = $1 AND id = $2 " ..
                             "AND deleted_at IS NULL FOR UPDATE", owner_id, id)
    if not rows then return nil, e end
    if not rows[1] then return nil, fail("resource_missing", "No such webhook endpoint: " .. tostring(id), "id") end
    rows, e = tx:query("SELECT count(*)::int AS n FROM webhook_endpoint_secrets " ..
                       "WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())", id)
    if not rows then return nil, e end
    if rows[1].n >= _M.SECRETS_MAX then
      return nil, fail("too_many_secrets", "at most " .. _M.SECRETS_MAX .. " secrets may sign at once: " ..
                       "wait for a rotated one to expire, or rotate with expire_in_s = 0")
    end
    rows, e = tx:query("UPDATE webhook_endpoint_secrets SET expires_at = " ..
                       "LEAST(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $2)) " ..
                       "WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())", id, grace)
    if not rows then return nil, e end
    rows, e = tx:query("INSERT INTO webhook_endpoint_secrets (id, endpoint_id, secret_enc) VALUES ($1, $2, $3)",
                       ids.new("whs"), id, self.kr:encrypt(secret, secret_aad(id)))
    if not rows then return nil, e end
    return true
  end)
  if not ok then return nil, err end
  return secret
end

-- The encrypted secrets signing for an endpoint now, newest first, as a JSON array (a subquery
-- on the endpoint's id in the outer query: e.id).
local SECRETS_SQL = "SELECT coalesce(json_agg(s.secret_enc ORDER BY s.id DESC), '[]') FROM " ..
  "(SELECT id, secret_enc FROM webhook_endpoint_secrets WHERE endpoint_id = e.id " ..
  "AND (expires_at IS NULL OR expires_at > now()) ORDER BY id DESC LIMIT " .. _M.SECRETS_MAX .. ") s"

function WH:decrypt_secrets(endpoint_id, list)
  local out = {}
  for i, enc in ipairs(list) do
    local s, e = self.kr:decrypt(enc, secret_aad(endpoint_id))
    if not s then return nil, fail("secret_unreadable", "a signing secret does not decrypt: " .. tostring(e)) end
    out[i] = s
  end
  return out
end

-- The secrets signing for an endpoint now, newest first.
function WH:signing_secrets(endpoint_id)
  local rows, err = self.db:query("SELECT (" .. SECRETS_SQL .. ") AS secrets FROM webhook_endpoints e " ..
                                  "WHERE e.id = $1", endpoint_id)
  if not rows then return nil, err end
  return self:decrypt_secrets(endpoint_id, rows[1] and rows[1].secrets or {})
end

-- ---- deliveries ----

local function wants(types, t)
  for _, x in ipairs(types) do
    if x == "*" or x == t then return true end
  end
  return false
end

-- The queue job of a delivery: its id is the delivery id (a duplicate add is dropped).
function WH:enqueue(delivery_id, delay_ms)
  if not self.queue then return true end
  return self.queue:add(self.job_name, { delivery_id = delivery_id }, {
    jobId = delivery_id, attempts = self.schedule.attempts, delay = delay_ms,
    backoff = { type = "exponential", delay = self.schedule.first_retry_ms },
    removeOnComplete = 1000, removeOnFail = 10000,
  })
end

-- publish(event) -> list of delivery ids | nil, err
-- event: { id, type, owner_id, data, created }. One delivery per enabled endpoint of the owner
-- that wants the type. Idempotent by event id: publishing the same event again (an outbox
-- relay's duplicate) creates nothing new, but enqueues again (the queue drops known job ids).
function WH:publish(event)
  if type(event) ~= "table" or type(event.id) ~= "string" or type(event.type) ~= "string"
     or type(event.owner_id) ~= "string" then
    error("event needs id, type and owner_id", 2)
  end
  local body = json.encode({ id = event.id, object = "event", type = event.type,
                             created = event.created or now_s(), data = event.data or json.null })
  local rows, err = self.db:query(
    "SELECT id, to_json(event_types) AS event_types FROM webhook_endpoints " ..
    "WHERE owner_id = $1 AND enabled AND deleted_at IS NULL ORDER BY id", event.owner_id)
  if not rows then return nil, err end
  local out = {}
  for _, ep in ipairs(rows) do
    if wants(ep.event_types, event.type) then
      local ins, e = self.db:query(
        "INSERT INTO webhook_deliveries (id, endpoint_id, owner_id, event_id, event_type, body, next_attempt_at) " ..
        "VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (endpoint_id, event_id) WHERE replay_of IS NULL " ..
        "DO UPDATE SET event_id = EXCLUDED.event_id RETURNING id",
        ids.new("whd"), ep.id, event.owner_id, event.id, event.type, body)
      if not ins then return nil, e end
      local did = ins[1].id
      local ok, qerr = self:enqueue(did)
      if not ok then return nil, qerr end
      out[#out + 1] = did
    end
  end
  return out
end

local function excerpt(s, n)
  if not s or s == "" then return nil end
  s = sub(s, 1, n)
  return (gsub(s, "[%z\1-\8\11\12\14-\31\127-\255]", "?"))   -- text column: no NUL, ASCII only
end

-- Records attempt n's outcome and moves the delivery and the endpoint on, in one transaction.
-- The attempt's number is taken here (attempts + 1), in the statement that records it: two runs
-- of one delivery at once (a stalled queue job) record attempts n and n + 1, never the same n
-- twice, and every request made is recorded. A failure on a delivery made final meanwhile (by
-- the other run) is recorded as an attempt and changes nothing else.
function WH:record(d, started_at, latency_ms, status_code, ok, why, resp_excerpt)
  if ok then
    -- The common case in one statement (one round trip, one commit).
    local rows, err = self.db:query({
      "WITH d AS (UPDATE webhook_deliveries SET attempts = attempts + 1, status = 'succeeded', " ..
      "last_status_code = $5, last_error = NULL, next_attempt_at = NULL, " ..
      "completed_at = coalesce(completed_at, now()) WHERE id = $1 RETURNING attempts), " ..
      "a AS (INSERT INTO webhook_attempts (delivery_id, attempt, started_at, latency_ms, status_code, ok, " ..
      "response_excerpt) SELECT $1, d.attempts, to_timestamp($3), $4, $5, true, $6 FROM d), " ..
      "e AS (UPDATE webhook_endpoints SET failure_streak = 0, failing_since = NULL " ..
      "WHERE id = $2 AND failure_streak <> 0 AND EXISTS (SELECT 1 FROM d)) SELECT attempts FROM d",
      d.id, d.endpoint_id, started_at, latency_ms, status_code, resp_excerpt, n = 6 })
    if not rows then return nil, err end
    if not rows[1] then return self:final_status(d.id) end
    return { id = d.id, status = "succeeded", attempt = rows[1].attempts, status_code = status_code }
  end
  local schedule = self.schedule
  local n, delay, status
  local disabled, final = false, false
  local done, err = self.db:tx(function(tx)
    local rows, e = tx:query("UPDATE webhook_deliveries SET attempts = attempts + 1 WHERE id = $1 " ..
                             "RETURNING attempts, status IN ('pending', 'retrying') AS open", d.id)
    if not rows then return nil, e end
    if not rows[1] then return nil, fail("resource_missing", "No such delivery: " .. tostring(d.id)) end
    n = rows[1].attempts
    local open = rows[1].open
    rows, e = tx:query({
      "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, latency_ms, status_code, ok, error, " ..
      "response_excerpt) VALUES ($1, $2, to_timestamp($3), $4, $5, $6, $7, $8)",
      d.id, n, started_at, latency_ms, status_code, ok, why, resp_excerpt, n = 8 })
    if not rows then return nil, e end
    if not open then final = true return true end
    delay = _M.delay_ms(schedule, n)
    status = delay and "retrying" or "failed"
    rows, e = tx:query({
      "UPDATE webhook_deliveries SET status = $2, last_status_code = $3, last_error = $4, " ..
      "next_attempt_at = CASE WHEN $5::bigint IS NULL THEN NULL " ..
      "  ELSE now() + make_interval(secs => $5 / 1000.0) END, " ..
      "completed_at = CASE WHEN $5::bigint IS NULL THEN now() END WHERE id = $1",
      d.id, status, status_code, why, delay, n = 5 })
    if not rows then return nil, e end
    local rule = schedule.disable_after
    rows, e = tx:query(
      "UPDATE webhook_endpoints SET failure_streak = failure_streak + 1, " ..
      "failing_since = coalesce(failing_since, now()) WHERE id = $1 " ..
      "RETURNING failure_streak, enabled, owner_id, url, " ..
      "(now() - failing_since) >= make_interval(secs => $2 / 1000.0) AS long_enough, " ..
      "extract(epoch FROM failing_since)::bigint AS failing_since", d.endpoint_id, rule.for_ms)
    if not rows then return nil, e end
    local ep = rows[1]
    if ep and ep.enabled and ep.failure_streak >= rule.failures and ep.long_enough then
      rows, e = tx:query("UPDATE webhook_endpoints SET enabled = false, disabled_at = now(), " ..
                         "disabled_reason = 'failure_streak', updated_at = now() WHERE id = $1", d.endpoint_id)
      if not rows then return nil, e end
      rows, e = tx:query("UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint_disabled', " ..
                         "next_attempt_at = NULL, completed_at = now() " ..
                         "WHERE endpoint_id = $1 AND status IN ('pending', 'retrying') AND id <> $2",
                         d.endpoint_id, d.id)
      if not rows then return nil, e end
      local evt, pe = outbox.publish(tx, {
        aggregate_type = "webhook_endpoint", aggregate_id = d.endpoint_id, type = "webhook_endpoint.disabled",
        data = { id = d.endpoint_id, object = "webhook_endpoint", owner_id = ep.owner_id, url = ep.url,
                 failure_streak = ep.failure_streak, failing_since = ep.failing_since,
                 disabled_reason = "failure_streak" } })
      if not evt then return nil, pe end
      disabled = true
    end
    return true
  end)
  if not done then return nil, err end
  if final then return self:final_status(d.id) end
  if disabled then
    log.warn("webhook endpoint disabled after a failure streak", { endpoint_id = d.endpoint_id })
  end
  return { id = d.id, status = status, attempt = n, status_code = status_code, error = why,
           retry_in_ms = delay, endpoint_disabled = disabled or nil }
end

-- deliver(delivery_id) -> { id, status = "succeeded" | "retrying" | "failed", attempt, status_code,
--                          error, retry_in_ms } | nil, err
-- One attempt: what a queue job (or run_due) calls. A delivery already final is returned as it
-- is, without a request. The endpoint gets a POST of the stored body, signed with every current
-- secret, to the address the SSRF guard checked (pinned), with no redirect followed.
function WH:deliver(delivery_id)
  local rows, err = self.db:query(
    "SELECT d.id, d.attempts, d.body, d.event_id, d.endpoint_id, d.status, e.url, e.enabled, e.deleted_at, " ..
    "(" .. SECRETS_SQL .. ") AS secrets FROM webhook_deliveries d JOIN webhook_endpoints e " ..
    "ON e.id = d.endpoint_id WHERE d.id = $1", delivery_id)
  if not rows then return nil, err end
  local d = rows[1]
  if not d then return nil, fail("resource_missing", "No such delivery: " .. tostring(delivery_id)) end
  if d.status ~= "pending" and d.status ~= "retrying" then return self:final_status(d.id) end
  if not d.enabled or d.deleted_at then
    local reason = d.deleted_at and "endpoint_deleted" or "endpoint_disabled"
    local up, e = self.db:query("UPDATE webhook_deliveries SET status = 'failed', last_error = $2, " ..
                                "next_attempt_at = NULL, completed_at = now() " ..
                                "WHERE id = $1 AND status IN ('pending', 'retrying')", d.id, reason)
    if not up then return nil, e end
    return { id = d.id, status = "failed", attempt = d.attempts, error = reason }
  end
  local started = nuvion.now()
  local t0 = nuvion.monotonic_ms()
  local secrets, serr = self:decrypt_secrets(d.endpoint_id, d.secrets or {})
  if not secrets then return nil, serr end
  local addr, gerr = netguard.check_url(d.url, { allow_private = self.allow_private })
  local res, herr
  if not addr then
    herr = gerr.code .. ": " .. gerr.message
  elseif #secrets == 0 then
    herr = "no signing secret"
  else
    res, herr = http.request({
      method = "POST", url = d.url, pin = addr, proxy = false, follow_redirects = 0,
      timeout = self.timeout_ms, connect_timeout = math.min(3000, self.timeout_ms),
      max_body_bytes = 64 * 1024, body = d.body,
      headers = {
        ["Content-Type"] = "application/json",
        ["User-Agent"] = "Nuvion-Webhooks/1.0",
        ["Nuvion-Signature"] = _M.sign(secrets, now_s(), d.body),
        ["Nuvion-Event-Id"] = d.event_id,
        ["Nuvion-Delivery-Id"] = d.id,
        ["Nuvion-Delivery-Attempt"] = tostring(d.attempts + 1),
      },
    })
  end
  local latency = floor(nuvion.monotonic_ms() - t0 + 0.5)
  local ok = res ~= nil and res.status >= 200 and res.status < 300
  local why = herr
  if res and not ok then
    why = (res.status >= 300 and res.status < 400) and "redirect not followed" or ("http " .. res.status)
  end
  return self:record(d, started, latency, res and res.status, ok, why,
                     res and excerpt(res.body, self.excerpt_bytes))
end

-- A delivery as it stands, marked final (no attempt was made).
function WH:final_status(id)
  local rows, err = self.db:query("SELECT id, status, attempts, last_status_code, last_error " ..
                                  "FROM webhook_deliveries WHERE id = $1", id)
  if not rows then return nil, err end
  local r = rows[1]
  if not r then return nil, fail("resource_missing", "No such delivery: " .. tostring(id)) end
  return { id = r.id, status = r.status, attempt = r.attempts, status_code = r.last_status_code,
           error = r.last_error, final = true }
end

-- job_handler() -> function(job) for queue.worker: one attempt per run; a failed attempt with
-- attempts left raises, so the queue retries with the schedule's backoff; a delivery that has
-- failed for good fails its job without retries (the queue's failed set is the dead letters:
-- wh:replay sends one again).
function WH:job_handler()
  local queue = require "nuvion.queue"
  return function(job)
    local r, err = self:deliver(job.data.delivery_id)
    if not r then error({ code = err.code or err.name or "delivery_error", message = tostring(err.message) }) end
    if r.status == "retrying" then
      error({ code = "delivery_failed", message = format("attempt %d: %s", r.attempt, tostring(r.error)) })
    elseif r.status == "failed" then
      error(queue.unrecoverable(format("delivery failed after attempt %d: %s", r.attempt, tostring(r.error))))
    end
    return { status = r.status, attempt = r.attempt }
  end
end

-- outbox_handler({ owner_field = "owner_id" | owner = function(data) -> owner }) -> function(job)
-- for the worker of a queue the outbox relays into (docs/outbox.md): an event whose data names
-- its owner (data.owner_id, or the field given, or what opts.owner returns for the event's data)
-- becomes that owner's deliveries; others are skipped. Publishing is idempotent by event id, so
-- a relay's duplicate creates nothing.
function WH:outbox_handler(p)
  local field = p and p.owner_field or "owner_id"
  local owner_of = p and p.owner
  if owner_of ~= nil and type(owner_of) ~= "function" then error("owner must be a function", 2) end
  return function(job)
    local m = job.data
    local owner
    if type(m.data) == "table" then
      if owner_of then owner = owner_of(m.data) else owner = m.data[field] end
    end
    if type(owner) ~= "string" or owner == "" then return { skipped = true } end
    local created = ids.time_ms(m.id)
    local list, err = self:publish({ id = m.id, type = m.type, owner_id = owner, data = m.data,
                                     created = created and floor(created / 1000) or nil })
    if not list then error({ code = err.code or err.name or "publish_failed", message = tostring(err.message) }) end
    return { deliveries = #list }
  end
end

-- run_due({ limit = 100, lease_ms = 60000 }) -> deliveries attempted | nil, err
-- Without a queue: claims the deliveries that are due (their next_attempt_at pushed by lease_ms,
-- so a crash mid-attempt retries after the lease) and attempts them concurrently.
function WH:run_due(p)
  p = p or {}
  local rows, err = self.db:query(
    "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $2 / 1000.0) " ..
    "WHERE id IN (SELECT id FROM webhook_deliveries WHERE status IN ('pending', 'retrying') " ..
    "AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
    p.limit or 100, p.lease_ms or (self.timeout_ms + 30000))
  if not rows then return nil, err end
  local left = #rows
  for _, row in ipairs(rows) do
    nuvion.spawn(function()
      local ok, e = pcall(self.deliver, self, row.id)
      if not ok then log.error("webhook delivery raised", { delivery_id = row.id, error = tostring(e) }) end
      left = left - 1
    end)
  end
  while left > 0 do nuvion.sleep(5) end
  return #rows
end

-- replay(owner_id, delivery_id) -> new delivery id | nil, err: the same event body to the same
-- endpoint again, as a new delivery with its own attempts (replay_of = the original).
function WH:replay(owner_id, delivery_id)
  local rows, err = self.db:query(
    "INSERT INTO webhook_deliveries (id, endpoint_id, owner_id, event_id, event_type, body, replay_of, " ..
    "next_attempt_at) SELECT $3, d.endpoint_id, d.owner_id, d.event_id, d.event_type, d.body, d.id, now() " ..
    "FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id " ..
    "WHERE d.id = $2 AND d.owner_id = $1 AND e.deleted_at IS NULL RETURNING id",
    owner_id, delivery_id, ids.new("whd"))
  if not rows then return nil, err end
  if not rows[1] then return nil, fail("resource_missing", "No such delivery: " .. tostring(delivery_id), "id") end
  local ok, qerr = self:enqueue(rows[1].id)
  if not ok then return nil, qerr end
  return rows[1].id
end

local DELIVERY_COLUMNS = "id, endpoint_id, event_id, event_type, status, attempts, last_status_code, last_error, " ..
  "replay_of, extract(epoch FROM next_attempt_at) AS next_attempt_at, " ..
  "extract(epoch FROM created_at)::bigint AS created"

local function attempt_view(a)
  return { attempt = a.attempt, started_at = tonumber(a.started_at), latency_ms = a.latency_ms,
           status_code = a.status_code, ok = a.ok, error = a.error, response_excerpt = a.response_excerpt }
end

-- Gives each delivery row its attempt_list (oldest first), the attempts of all of them read in
-- one query. Returns the rows, or nil, err.
function WH:with_attempts(rows)
  if #rows == 0 then return rows end
  local list, by_id = {}, {}
  for i, d in ipairs(rows) do
    list[i] = d.id
    by_id[d.id] = {}
    d.object = "webhook_delivery"
    d.next_attempt_at = tonumber(d.next_attempt_at)
  end
  local att, err = self.db:query(
    "SELECT delivery_id, attempt, extract(epoch FROM started_at) AS started_at, latency_ms, status_code, ok, " ..
    "error, response_excerpt FROM webhook_attempts WHERE delivery_id = ANY($1::text[]) " ..
    "ORDER BY delivery_id, attempt", "{" .. concat(list, ",") .. "}")
  if not att then return nil, err end
  for _, a in ipairs(att) do
    local l = by_id[a.delivery_id]
    l[#l + 1] = attempt_view(a)
  end
  for _, d in ipairs(rows) do d.attempt_list = json.array(by_id[d.id]) end
  return rows
end

-- get_delivery(owner_id, id) -> delivery with its attempts (oldest first) | nil, err
function WH:get_delivery(owner_id, id)
  local rows, err = self.db:query("SELECT " .. DELIVERY_COLUMNS .. " FROM webhook_deliveries " ..
                                  "WHERE owner_id = $1 AND id = $2", owner_id, id)
  if not rows then return nil, err end
  if not rows[1] then return nil, fail("resource_missing", "No such delivery: " .. tostring(id), "id") end
  local ok, aerr = self:with_attempts(rows)
  if not ok then return nil, aerr end
  return rows[1]
end

-- list_deliveries(owner_id, endpoint_id, { limit = 10, starting_after = id | ending_before = id })
--   -> { object = "list", data, has_more }: the endpoint's deliveries, newest first, each with
--   its attempt_list. Two queries whatever the page's size (the page, then all its attempts).
--   The endpoint is not checked here (its owner's deliveries only are read).
function WH:list_deliveries(owner_id, endpoint_id, p)
  p = p or {}
  local limit, cond, order, cursor = keyset(p, 3)
  if not limit then return nil, cond end
  local rows, err = self.db:query("SELECT " .. DELIVERY_COLUMNS .. " FROM webhook_deliveries " ..
    "WHERE owner_id = $1 AND endpoint_id = $2 AND " .. cond .. " ORDER BY id " .. order .. " LIMIT $4",
    owner_id, endpoint_id, cursor, limit + 1)
  if not rows then return nil, err end
  local data, has_more = page_of(rows, limit, order, function(d) return d end)
  local ok, aerr = self:with_attempts(data)
  if not ok then return nil, aerr end
  return { object = "list", data = data, has_more = has_more }
end

return _M
