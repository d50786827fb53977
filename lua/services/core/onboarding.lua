-- onboarding.lua -- core's customers: PII sealed at rest, keyed hashes for lookups, the state
-- machine of onboarding with every change recorded and published, and the KYC provider's
-- checks (submitted; their results pushed by the provider's callbacks and polled, both applied
-- by apply()). The routes are routes/customers.lua; docs/customers.md.
--
--   pending --verify--> in_review --KYC--> verified | rejected | action_required
--   action_required --documents--> in_review
--
-- Every transition is one transaction: the customer's row (only if it is still in the state the
-- change starts from), a customer_state_changes row and an outbox event customer.<new state>.
-- Events carry no PII (the outbox is plain jsonb): id, kind, state, tier, partner, mode.
local crypto = require "nuvion.crypto"
local api = require "nuvion.api"
local json = require "nuvion.json"
local log = require "nuvion.log"
local outbox = require "nuvion.outbox"
local ids = require "nuvion.api.ids"
local auth_config = require "nuvion.auth.config"
local kyc = require "nuvion.providers.kyc"
local rules = require "nuvion.rules.onboarding"

local type, ipairs, tostring, tonumber, os, error, assert, setmetatable, unpack = type, ipairs, tostring,
  tonumber, os, error, assert, setmetatable, unpack
local min, lower, concat = math.min, string.lower, table.concat

local _M = {}

_M.DEV_HASH_KEY = "nuvion-development-pii-hash-key (never in production)"
_M.PROVIDER = "sandbox"
_M.POLL_BATCH = 20
_M.RETRY_MAX_S = 60

-- from -> to allowed, and what may start from where.
_M.TRANSITIONS = {
  pending = { in_review = true },
  in_review = { verified = true, rejected = true, action_required = true },
  action_required = { in_review = true },
}

_M.ENCRYPTED = { "name", "date_of_birth", "address", "phone", "email", "id_document",
                 "registration_number", "directors" }

_M.COLUMNS = "id, partner_id, mode, kind, state, tier, name_enc, date_of_birth_enc, address_enc, "
  .. "phone_enc, email_enc, id_document_enc, registration_number_enc, directors_enc, metadata, "
  .. "extract(epoch from created_at)::bigint AS created, extract(epoch from updated_at)::bigint AS updated, "
  .. "extract(epoch from erased_at)::bigint AS erased"

-- The HMAC key of the email and phone hashes: NUVION_PII_HASH_KEY (at least 32 bytes), or in
-- development and tests a fixed public one.
function _M.hash_key()
  local k = os.getenv("NUVION_PII_HASH_KEY")
  if k and k ~= "" then
    if #k < 32 then return nil, "NUVION_PII_HASH_KEY must be at least 32 bytes" end
    return k
  end
  if auth_config.is_development() then return _M.DEV_HASH_KEY end
  return nil, "NUVION_PII_HASH_KEY is not set (required unless NUVION_ENV is development or test)"
end

-- Normalised before hashing, so that lookups find what was stored: emails lower-cased and
-- trimmed, phones without spaces, dashes, dots and parentheses.
function _M.normal_email(s) return lower((s:gsub("^%s+", ""):gsub("%s+$", ""))) end
function _M.normal_phone(s) return (s:gsub("[%s%-%.%(%)]", "")) end

function _M.keyed_hash(key, kind, value)
  local v = kind == "email" and _M.normal_email(value) or _M.normal_phone(value)
  return crypto.hex_encode(crypto.hmac_sha256(key, kind .. ":" .. v))
end

local function aad(column, id) return "customers." .. column .. ":" .. id end

-- The store of one worker: { db, kr, hash_key, kyc, poll_ms }. Without its secrets (outside
-- development and test: NUVION_MASTER_KEYS, NUVION_PII_HASH_KEY, NUVION_KYC_API_KEY) the store
-- is made with `misconfigured` set to the reason: core still boots, the customers routes answer
-- 500 customers_misconfigured (logged) and the poller does not run, as auth does for its keys.
-- A bad NUVION_KYC_POLL_MS stops the boot (a number out of range is a typo to fix).
function _M.new(deps)
  local poll_ms = tonumber(os.getenv("NUVION_KYC_POLL_MS") or "") or 1000
  if poll_ms < 10 or poll_ms > 600000 then error("core: NUVION_KYC_POLL_MS must be from 10 to 600000", 0) end
  local store = setmetatable({ db = deps.db, poll_ms = poll_ms }, { __index = _M })
  local kr, kerr = auth_config.signing_keyring()
  local hk, herr = _M.hash_key()
  local client, cerr = kyc.from_env()
  store.kr, store.hash_key, store.kyc = kr, hk, client
  store.misconfigured = (not kr and tostring(kerr)) or (not hk and herr) or (not client and cerr) or nil
  if store.misconfigured then
    log.error("customers misconfigured", { error = store.misconfigured })
  end
  -- Without its secret the callback route answers 503 and results are polled only.
  local ws, werr = kyc.webhook_secret()
  store.webhook_secret = ws
  if not ws then log.error("kyc callbacks misconfigured", { error = werr }) end
  return store
end

function _M:hash(kind, value) return _M.keyed_hash(self.hash_key, kind, value) end

function _M:seal(id, column, value)
  if value == nil then return nil end
  if type(value) == "table" then value = assert(json.encode(value)) end
  return self.kr:encrypt(value, aad(column, id))
end

function _M:open(id, column, token)
  if token == nil then return nil end
  local v, err = self.kr:decrypt(token, aad(column, id))
  if not v then error("customer " .. id .. ": " .. column .. " does not decrypt: " .. tostring(err), 0) end
  return v
end

-- The fields of a body as they are sealed: name (a JSON object), address, id_document, directors
-- (JSON), the others as text.
local function sealed_fields(b)
  local name = b.kind == "business" and { business_name = b.business_name }
    or { first_name = b.first_name, last_name = b.last_name }
  return { name = name, date_of_birth = b.date_of_birth, address = b.address, phone = b.phone,
           email = b.email, id_document = b.id_document, registration_number = b.registration_number,
           directors = b.directors }
end

-- The public object of an erased customer: what is left of it.
function _M.erased_object(row)
  return { id = row.id, object = "customer", deleted = true, mode = row.mode, livemode = row.mode == "live",
           kind = row.kind, state = row.state, created = row.created, updated = row.updated, erased = row.erased }
end

-- The public object of a customer row: its PII opened, or, for a row just made, taken from
-- `plain` (column -> the text that was sealed) without opening what was sealed a moment ago.
function _M:object(row, plain)
  local id = row.id
  if row.state == "erased" then return _M.erased_object(row) end
  local function field(column)
    if plain then return plain[column] end
    return self:open(id, column, row[column .. "_enc"])
  end
  local name = json.decode(field("name"))
  local o = { id = id, object = "customer", mode = row.mode, livemode = row.mode == "live",
              kind = row.kind, state = row.state, tier = row.tier,
              email = field("email"),
              phone = field("phone") or json.null,
              metadata = row.metadata or {}, created = row.created, updated = row.updated }
  local address = field("address")
  if row.kind == "business" then
    o.business_name = name.business_name
    o.registration_number = field("registration_number")
    o.directors = json.decode(field("directors") or "[]")
    o.address = address and json.decode(address) or json.null
  else
    o.first_name, o.last_name = name.first_name, name.last_name
    o.date_of_birth = field("date_of_birth")
    o.address = address and json.decode(address) or json.null
    local doc_text = field("id_document")
    local doc = doc_text and json.decode(doc_text)
    if doc then
      -- the document number is never shown back whole
      o.id_document = { type = doc.type, country = doc.country or json.null, number_last4 = doc.number:sub(-4) }
    else
      o.id_document = json.null
    end
  end
  return o
end

local function event_data(c)
  return { id = c.id, object = "customer", kind = c.kind, state = c.state, tier = c.tier,
           partner = c.partner_id, owner_id = c.partner_id, mode = c.mode }
end

-- Inserts a customer with its first state change and event customer.created, in tx: all three
-- deferred, so they go with the transaction's COMMIT (no round trip of their own). Returns the
-- row as a SELECT would give it (without the sealed columns) and the plain texts sealed, for
-- object(row, plain).
local INSERT = "WITH c AS (INSERT INTO customers (id, partner_id, mode, kind, name_enc, date_of_birth_enc, "
  .. "address_enc, phone_enc, email_enc, id_document_enc, registration_number_enc, directors_enc, email_hash, "
  .. "phone_hash, id_number_last4, metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
  .. "$10, $11, $12, $13, $14, $15, $16, to_timestamp($17::float8), to_timestamp($17::float8)) RETURNING id) "
  .. "INSERT INTO customer_state_changes (customer_id, from_state, to_state, reason, request_id) "
  .. "SELECT id, NULL, 'pending', 'created', $18::text FROM c"

function _M:insert(tx, id, p, b, request_id)
  local f = sealed_fields(b)
  local plain, sealed = {}, {}
  for _, column in ipairs(_M.ENCRYPTED) do
    local v = f[column]
    if type(v) == "table" then v = assert(json.encode(v)) end
    plain[column] = v
    sealed[column] = self:seal(id, column, v)
  end
  local at, created = api.timestamp()
  local doc = b.id_document
  local metadata = b.metadata or {}
  tx:defer({ INSERT, id, p.partner_id, p.mode, b.kind, sealed.name, sealed.date_of_birth, sealed.address,
             sealed.phone, sealed.email, sealed.id_document, sealed.registration_number, sealed.directors,
             self:hash("email", b.email), b.phone and self:hash("phone", b.phone) or nil,
             doc and doc.number:sub(-4) or nil, metadata, at, request_id, n = 18 })
  local row = { id = id, partner_id = p.partner_id, mode = p.mode, kind = b.kind, state = "pending", tier = 0,
                metadata = metadata, created = created, updated = created }
  local _, perr = outbox.publish(tx, { aggregate_type = "customer", aggregate_id = id, type = "customer.created",
                                       data = event_data(row) })
  if perr then return nil, perr end
  return row, plain
end

-- Updates customer `row` with the fields of b (a cleaned PATCH body; metadata already merged,
-- json.null for a phone or address removed) in tx: the changed fields sealed anew, the email and
-- phone hashes with them, and the event customer.updated naming the fields (never their
-- values). Returns the row as updated and the list of changed fields (none: nothing written, no
-- event), or nil, err.
local UPDATE_ORDER = { "first_name", "last_name", "business_name", "date_of_birth", "email", "phone", "address",
                       "id_document", "registration_number", "directors", "metadata" }

function _M:update(tx, row, b)
  local id = row.id
  local sets, args, changed = {}, { id }, json.array({})
  local function set(column, v)
    args[#args + 1] = v == nil and json.null or v
    sets[#sets + 1] = column .. " = $" .. #args
  end
  for _, f in ipairs(UPDATE_ORDER) do
    if b[f] ~= nil then changed[#changed + 1] = f end
  end
  if #changed == 0 then return row, changed end
  if b.first_name or b.last_name or b.business_name then
    local name = json.decode(self:open(id, "name", row.name_enc))
    for _, f in ipairs({ "first_name", "last_name", "business_name" }) do
      if b[f] ~= nil then name[f] = b[f] end
    end
    set("name_enc", self:seal(id, "name", name))
  end
  if b.date_of_birth then set("date_of_birth_enc", self:seal(id, "date_of_birth", b.date_of_birth)) end
  if b.email then
    set("email_enc", self:seal(id, "email", b.email))
    set("email_hash", self:hash("email", b.email))
  end
  if b.phone == json.null then
    set("phone_enc", nil)
    set("phone_hash", nil)
  elseif b.phone then
    set("phone_enc", self:seal(id, "phone", b.phone))
    set("phone_hash", self:hash("phone", b.phone))
  end
  if b.address == json.null then
    set("address_enc", nil)
  elseif b.address then
    set("address_enc", self:seal(id, "address", b.address))
  end
  if b.id_document then
    set("id_document_enc", self:seal(id, "id_document", b.id_document))
    set("id_number_last4", b.id_document.number:sub(-4))
  end
  if b.registration_number then
    set("registration_number_enc", self:seal(id, "registration_number", b.registration_number))
  end
  if b.directors then set("directors_enc", self:seal(id, "directors", b.directors)) end
  if b.metadata then set("metadata", b.metadata) end
  local rows, err = tx:query("UPDATE customers SET " .. concat(sets, ", ") .. ", updated_at = now() WHERE id = $1 "
    .. "RETURNING " .. _M.COLUMNS, unpack(args))
  if not rows then return nil, err end
  local new = rows[1]
  local data = event_data(new)
  data.changed = changed
  local _, perr = outbox.publish(tx, { aggregate_type = "customer", aggregate_id = id, type = "customer.updated",
                                       data = data })
  if perr then return nil, perr end
  return new, changed
end

-- Erases customer `row` (locked by the caller, not in review, not erased) in tx: every sealed
-- column, both hashes, the ID number's last 4 and the metadata cleared, state 'erased' (final:
-- a trigger refuses any later update), a state change row, the event customer.deleted, and the
-- responses kept for Idempotency-Keys of this customer's own requests (they hold its PII)
-- replaced by the erased object. Returns the erased row, or nil, err.
function _M.erase(tx, row, request_id)
  local id = row.id
  local rows, err = tx:query("UPDATE customers SET state = 'erased', tier = 0, name_enc = NULL, "
    .. "date_of_birth_enc = NULL, address_enc = NULL, phone_enc = NULL, email_enc = NULL, id_document_enc = NULL, "
    .. "registration_number_enc = NULL, directors_enc = NULL, email_hash = NULL, phone_hash = NULL, "
    .. "id_number_last4 = NULL, metadata = '{}', erased_at = now(), updated_at = now() "
    .. "WHERE id = $1 AND state = $2 RETURNING " .. _M.COLUMNS, id, row.state)
  if not rows then return nil, err end
  local new = rows[1]
  if not new then return nil, "customer " .. id .. " moved while being erased" end
  rows, err = tx:query("INSERT INTO customer_state_changes (customer_id, from_state, to_state, reason, request_id) "
    .. "VALUES ($1, $2, 'erased', 'erased', $3)", id, row.state, request_id)
  if not rows then return nil, err end
  -- the stored answers of POST /v1/customers (the id in the body) and of /v1/customers/<id>...
  rows, err = tx:query("UPDATE api_idempotency_keys SET response_body = $4 WHERE partner_id = $1 AND mode = $2 "
    .. "AND completed_at IS NOT NULL AND response_status < 300 AND ((request_path = '/v1/customers' "
    .. "AND strpos(response_body, '\"id\":\"' || $3::text || '\"') > 0) OR request_path = '/v1/customers/' || $3::text "
    .. "OR starts_with(request_path, '/v1/customers/' || $3::text || '/'))", new.partner_id, new.mode, id,
    assert(json.encode({ id = id, object = "customer", deleted = true })))
  if not rows then return nil, err end
  local data = event_data(new)
  data.deleted = true
  local _, perr = outbox.publish(tx, { aggregate_type = "customer", aggregate_id = id, type = "customer.deleted",
                                       data = data })
  if perr then return nil, perr end
  return new
end

-- The customer row of a partner and mode (nil when none: another partner's is none too).
function _M.get(_, db, p, id, lock)
  local rows, err = db:query("SELECT " .. _M.COLUMNS .. " FROM customers WHERE id = $1 AND partner_id = $2 "
    .. "AND mode = $3" .. (lock and " FOR UPDATE" or ""), id, p.partner_id, p.mode)
  if not rows then return nil, err end
  return rows[1] or false
end

-- Moves customer id from `from` to `to` in tx: the row (only while in `from`), the change row
-- and the event. Returns the updated row, false when the customer was not in `from`, or nil, err.
function _M.transition(tx, id, from, to, reason, request_id)
  if not (_M.TRANSITIONS[from] and _M.TRANSITIONS[from][to]) then
    error("no transition from " .. tostring(from) .. " to " .. tostring(to), 2)
  end
  local rows, err = tx:query("UPDATE customers SET state = $3, tier = CASE WHEN $3 = 'verified' THEN "
    .. "(CASE kind WHEN 'business' THEN $4::int ELSE $5::int END) ELSE 0 END, updated_at = now() "
    .. "WHERE id = $1 AND state = $2 RETURNING " .. _M.COLUMNS, id, from, to,
    rules.tier_for("business", "verified"), rules.tier_for("individual", "verified"))
  if not rows then return nil, err end
  local row = rows[1]
  if not row then return false end
  rows, err = tx:query("INSERT INTO customer_state_changes (customer_id, from_state, to_state, reason, request_id) "
    .. "VALUES ($1, $2, $3, $4, $5)", id, from, to, reason, request_id)
  if not rows then return nil, err end
  local _, perr = outbox.publish(tx, { aggregate_type = "customer", aggregate_id = id, type = "customer." .. to,
                                       data = event_data(row) })
  if perr then return nil, perr end
  return row
end

-- A new verification row (status submitting) for customer id, in tx. The poller leaves it
-- alone until the request's own submission has had its time (the client's timeout and 1 s).
function _M:new_verification(tx, customer_id, reason)
  local vid = ids.new("kyc")
  local rows, err = tx:query("INSERT INTO customer_verifications (id, customer_id, provider, reason, next_poll_at) "
    .. "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING id, status", vid, customer_id,
    _M.PROVIDER, reason, self.kyc.timeout_ms / 1000 + 1)
  if not rows then return nil, err end
  return rows[1]
end

-- What the provider is sent for a customer row.
function _M:payload(vid, row)
  local id = row.id
  local name = json.decode(self:open(id, "name", row.name_enc))
  if row.kind == "business" then
    return { reference = vid, kind = "business", business_name = name.business_name,
             registration_number = self:open(id, "registration_number", row.registration_number_enc) }
  end
  local doc = row.id_document_enc and json.decode(self:open(id, "id_document", row.id_document_enc)) or nil
  return { reference = vid, kind = "individual", first_name = name.first_name, last_name = name.last_name,
           date_of_birth = self:open(id, "date_of_birth", row.date_of_birth_enc), document = doc }
end

local function retry_in_s(attempts)
  return min(_M.RETRY_MAX_S, 2 ^ min(attempts, 10) * 0.25)
end

-- Sends verification vid of customer row to the provider (a retry uses the same reference: the
-- provider gives back the same check). Records the outcome; returns the verification's status.
function _M:submit(vid, row)
  local check, err = self.kyc:submit(self:payload(vid, row))
  if not check then
    log.warn("kyc submit failed", { verification = vid, code = err.code, error = err.message })
    self.db:query("UPDATE customer_verifications SET attempts = attempts + 1, last_error = $2, updated_at = now(), "
      .. "next_poll_at = now() + make_interval(secs => $3) WHERE id = $1 AND status = 'submitting'",
      vid, err.code, retry_in_s(1))
    return "submitting"
  end
  local rows = self.db:query("UPDATE customer_verifications SET status = 'submitted', provider_ref = $2, "
    .. "attempts = attempts + 1, last_error = NULL, updated_at = now(), "
    .. "next_poll_at = now() + make_interval(secs => $3) WHERE id = $1 AND status = 'submitting'",
    vid, check.id, self.poll_ms / 1000)
  if not rows then return "submitting" end
  return "submitted"
end

-- Applies a final result of the provider to verification v (id, customer_id): the
-- verification's status and the customer's transition, one transaction. The poller and the
-- provider's callbacks both come here: the verification's UPDATE is conditional (still
-- submitting or submitted, and the check is the one on file if one is) and locks the row, so a
-- second caller, racing or late, waits and then finds nothing to update: a result is applied
-- once. A result for a verification still `submitting` (its submission's answer not recorded
-- yet: a callback can arrive before it) records the provider's check id with it.
-- true when applied, false when applied already, nil, err.
function _M:apply(v, check)
  local to = check.result
  return self.db:tx(function(tx)
    local rows, err = tx:query("UPDATE customer_verifications SET status = $2, result_codes = $3, updated_at = now(), "
      .. "completed_at = now(), provider_ref = $4 WHERE id = $1 AND status IN ('submitting', 'submitted') "
      .. "AND (provider_ref IS NULL OR provider_ref = $4) RETURNING customer_id", v.id, to,
      "{" .. concat(check.result_codes, ",") .. "}", check.id)
    if not rows then return nil, err end
    if not rows[1] then return false end         -- applied already (another poller, or a callback)
    local customer_id = rows[1].customer_id
    local codes = #check.result_codes > 0 and (":" .. concat(check.result_codes, ",")) or ""
    local row, terr = _M.transition(tx, customer_id, "in_review", to, ("kyc_" .. to .. codes):sub(1, 200), nil)
    if row == nil then return nil, terr end
    if row == false then
      log.warn("kyc result for a customer not in review", { verification = v.id, customer = customer_id })
    end
    return true
  end)
end

-- A callback of the provider said check `check_id` (of our verification `reference`) is done.
-- The callback's own result is not trusted: the check is fetched from the provider's API (with
-- our key) and applied only when the provider names the same reference, and only through
-- apply() (so once). Returns "applied" | "duplicate" (applied already) | "pending" (not final
-- at the provider) | "unknown" (no such verification, or check and reference do not match), or
-- nil, err (the provider or the database failed: the caller answers 503 so the provider retries;
-- the poller is there anyway).
function _M:check_completed(check_id, reference)
  local rows, err = self.db:query("SELECT id, customer_id, status, provider_ref FROM customer_verifications "
    .. "WHERE id = $1", reference)
  if not rows then return nil, err end
  local v = rows[1]
  if not v or (v.provider_ref and v.provider_ref ~= check_id) then return "unknown" end
  if v.status ~= "submitting" and v.status ~= "submitted" then return "duplicate" end
  local check, ferr = self.kyc:fetch(check_id)
  if not check then
    if ferr.code == "refused" then return "unknown" end       -- 404: the provider has no such check
    return nil, ferr.code .. ": " .. ferr.message
  end
  if check.reference ~= v.id then return "unknown" end
  if not check.result then return "pending" end
  local ok, aerr = self:apply(v, check)
  if ok == nil then return nil, aerr end
  return ok and "applied" or "duplicate"
end

-- One round of the poller: verifications due (a lease pushes next_poll_at so that two workers
-- do not take the same one), resubmitted or fetched. Returns how many were looked at.
function _M:poll_once()
  local due, err = self.db:query("UPDATE customer_verifications SET next_poll_at = now() + interval '30 seconds' "
    .. "WHERE id IN (SELECT id FROM customer_verifications WHERE status IN ('submitting', 'submitted') "
    .. "AND next_poll_at <= now() ORDER BY next_poll_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
    .. "RETURNING id, customer_id, status, provider_ref, attempts", _M.POLL_BATCH)
  if not due then
    log.warn("kyc poll failed", { error = tostring(err) })
    return 0
  end
  for _, v in ipairs(due) do
    if v.status == "submitting" then
      local rows = self.db:query("SELECT " .. _M.COLUMNS .. " FROM customers WHERE id = $1", v.customer_id)
      if rows and rows[1] then
        local st = self:submit(v.id, rows[1])
        if st == "submitting" then
          self.db:query("UPDATE customer_verifications SET next_poll_at = now() + make_interval(secs => $2) "
            .. "WHERE id = $1", v.id, retry_in_s(v.attempts + 1))
        end
      end
    else
      local check, ferr = self.kyc:fetch(v.provider_ref)
      if check and check.result then
        local ok, aerr = self:apply(v, check)
        if ok == nil then log.warn("kyc result not applied", { verification = v.id, error = tostring(aerr) }) end
      else
        if not check then log.warn("kyc fetch failed", { verification = v.id, code = ferr.code }) end
        -- a failed fetch counts as an attempt, so that a check the provider lost backs off to
        -- RETRY_MAX_S instead of being asked for every poll
        self.db:query("UPDATE customer_verifications SET next_poll_at = now() + make_interval(secs => $2), "
          .. "attempts = attempts + $3, last_error = $4, updated_at = now() WHERE id = $1 AND status = 'submitted'",
          v.id, check and self.poll_ms / 1000 or retry_in_s(v.attempts + 1), check and 0 or 1,
          not check and ferr.code or nil)
      end
    end
  end
  return #due
end

-- The customer's state changes, oldest first.
function _M.history(db, id)
  local rows, err = db:query("SELECT from_state, to_state, reason, request_id, "
    .. "extract(epoch from created_at)::bigint AS at FROM customer_state_changes WHERE customer_id = $1 "
    .. "ORDER BY id", id)
  if not rows then return nil, err end
  local out = {}
  for i, r in ipairs(rows) do
    out[i] = { from = r.from_state or json.null, to = r.to_state, reason = r.reason,
               request_id = r.request_id or json.null, at = r.at }
  end
  return out
end

return _M
