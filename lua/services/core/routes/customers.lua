-- routes/customers.lua -- a partner's customers and their onboarding (docs/customers.md).
-- Every route works within the caller's partner and mode: another partner's customer, or one of
-- the other mode, is 404 as one that does not exist.
--
--   POST /v1/customers                 the customer (individual or business)      customers:write
--   GET  /v1/customers                 ?email&phone&limit&starting_after&ending_before  customers:read
--   GET  /v1/customers/:id                                                        customers:read
--   PATCH /v1/customers/:id            contact details, metadata; identity fields while
--                                      pending or action_required                customers:write
--   DELETE /v1/customers/:id           erasure: PII gone, the row and its history kept  customers:write
--   POST /v1/customers/:id/verify      pending -> in_review, check sent to KYC    customers:write
--   POST /v1/customers/:id/documents   action_required -> in_review, new document customers:write
--   POST /v1/providers/kyc/events      the KYC provider's signed callbacks       public (Kyc-Signature)
--
-- KYC results are pushed by the provider's callbacks (check.completed, signed with
-- NUVION_KYC_WEBHOOK_SECRET) and polled from it by a timer of each worker (NUVION_KYC_POLL_MS),
-- the fallback when a callback is lost; both apply a result through onboarding's apply(), once.
local api = require "nuvion.api"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local log = require "nuvion.log"
local kyc = require "nuvion.providers.kyc"
local webhooks = require "nuvion.webhooks"
local onboarding = require "onboarding"
local wallets = require "wallets.model"

local type, ipairs, pairs, tonumber, pcall, os = type, ipairs, pairs, tonumber, pcall, os
local errors, ids, list = api.errors, api.ids, api.list

local _M = {}

local NAME = { type = "string", min_length = 1, max_length = 100 }
local DATE = { type = "string", pattern = "^%d%d%d%d%-%d%d%-%d%d$", pattern_message = "must be a date YYYY-MM-DD",
               description = "YYYY-MM-DD.", example = "1990-04-12" }
local COUNTRY = { type = "string", pattern = "^%u%u$", pattern_message = "must be an ISO 3166-1 alpha-2 code",
                  example = "GB" }
local DOC_TYPE = { type = "string", required = true, enum = { "passport", "id_card", "driving_licence" } }
local DOC_NUMBER = { type = "string", required = true, min_length = 4, max_length = 40, pattern = "^[%w%-]+$",
                     pattern_message = "must be letters, digits and dashes" }

_M.ADDRESS = { type = "object", properties = {
  line1 = { type = "string", required = true, max_length = 200 },
  line2 = { type = "string", max_length = 200 },
  city = { type = "string", required = true, max_length = 100 },
  postal_code = { type = "string", required = true, max_length = 20 },
  country = { type = "string", required = true, pattern = "^%u%u$",
              pattern_message = "must be an ISO 3166-1 alpha-2 code" },
} }

_M.ID_DOCUMENT = { type = "object", properties = {
  type = DOC_TYPE, number = DOC_NUMBER, country = COUNTRY,
} }

_M.CREATE = { type = "object", properties = {
  kind = { type = "string", enum = { "individual", "business" }, default = "individual" },
  first_name = NAME, last_name = NAME,
  date_of_birth = DATE,
  email = { type = "string", required = true, max_length = 254, pattern = "^[^@%s]+@[^@%s]+%.[^@%s]+$",
            pattern_message = "must be an email address", example = "ada@example.com" },
  phone = { type = "string", min_length = 8, max_length = 20, pattern = "^%+[%d%s%-%.%(%)]+$",
            pattern_message = "must be an international number starting with +", example = "+447700900123" },
  address = _M.ADDRESS,
  id_document = _M.ID_DOCUMENT,
  business_name = { type = "string", min_length = 1, max_length = 200 },
  registration_number = { type = "string", min_length = 4, max_length = 40, pattern = "^[%w%-]+$",
                          pattern_message = "must be letters, digits and dashes" },
  directors = { type = "array", min_items = 1, max_items = 10, items = { type = "object", properties = {
    first_name = { type = "string", required = true, min_length = 1, max_length = 100 },
    last_name = { type = "string", required = true, min_length = 1, max_length = 100 },
    date_of_birth = DATE,
  } } },
  metadata = { type = "object", max_properties = 20, additional_properties = { type = "string", max_length = 500 } },
} }

-- PATCH: every field of CREATE but kind, none required; phone and address may be null (removed);
-- a metadata value "" removes its key.
_M.UPDATE = { type = "object", properties = {} }
for k, v in pairs(_M.CREATE.properties) do
  if k ~= "kind" then
    local c = {}
    for f, x in pairs(v) do c[f] = x end
    c.required = nil
    if k == "phone" or k == "address" then c.nullable = true end
    if k == "metadata" then
      c.description = "Merged into the customer's metadata; a key set to \"\" is removed."
    end
    _M.UPDATE.properties[k] = c
  end
end

-- The fields of the customer's identity: what the KYC check was (or will be) run on. They change
-- only before a check decided (pending, action_required).
_M.IDENTITY = { "first_name", "last_name", "date_of_birth", "id_document", "business_name",
                "registration_number", "directors" }
_M.IDENTITY_STATES = { pending = true, action_required = true }
_M.METADATA_MAX = 20

_M.DOCUMENT = { type = "object", properties = {
  type = DOC_TYPE, number = DOC_NUMBER, country = COUNTRY,
} }

-- Fields each kind needs, and fields that belong to the other kind only.
_M.REQUIRED = {
  individual = { "first_name", "last_name", "date_of_birth", "id_document" },
  business = { "business_name", "registration_number", "directors" },
}
_M.FOREIGN = {
  individual = { "business_name", "registration_number", "directors" },
  business = { "first_name", "last_name", "date_of_birth", "id_document" },
}

local DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- A real calendar date, not in the future, after 1900.
local function valid_date(s, today)
  local y, m, d = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if not y or m < 1 or m > 12 or d < 1 or d > DAYS[m] then return false end
  if m == 2 and d == 29 and not (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) then return false end
  return y >= 1900 and s <= today
end

-- Fields of the other kind (an outcome) and dates that are not real (the body's and its
-- directors'). nil or an outcome.
local function check_fields(b, kind, today)
  for _, f in ipairs(_M.FOREIGN[kind]) do
    if b[f] ~= nil then
      return errors.invalid("parameter_invalid", f .. " is not a field of " .. kind .. " customers.", f)
    end
  end
  if b.date_of_birth and not valid_date(b.date_of_birth, today) then
    return errors.invalid("parameter_invalid", "date_of_birth must be a past date from 1900 on.", "date_of_birth")
  end
  for i, d in ipairs(b.directors or {}) do
    if d.date_of_birth and not valid_date(d.date_of_birth, today) then
      local param = "directors[" .. (i - 1) .. "].date_of_birth"
      return errors.invalid("parameter_invalid", param .. " must be a past date from 1900 on.", param)
    end
  end
  return nil
end

-- The checks a schema cannot say: what the kind needs, real dates. nil or an outcome.
function _M.check_kind(b, today)
  for _, f in ipairs(_M.REQUIRED[b.kind]) do
    if b[f] == nil then return errors.missing(f) end
  end
  return check_fields(b, b.kind, today)
end

-- The same for an update of a customer of that kind (nothing is required).
function _M.check_update(b, kind, today)
  return check_fields(b, kind, today)
end

-- The customer's metadata with the update's merged in ("" removes a key), or nil and an outcome
-- when it would hold more than METADATA_MAX keys.
function _M.merge_metadata(old, upd)
  local m, n = json.object({}), 0
  for k, v in pairs(old or {}) do m[k] = v end
  for k, v in pairs(upd) do
    if v == "" then m[k] = nil else m[k] = v end
  end
  for _ in pairs(m) do n = n + 1 end
  if n > _M.METADATA_MAX then
    return nil, errors.invalid("parameter_invalid", "metadata would hold " .. n .. " keys; at most "
      .. _M.METADATA_MAX .. ".", "metadata")
  end
  return m
end

local function today() return os.date("!%Y-%m-%d", nuvion.now()) end

_M.CALLBACK_TOLERANCE_S = 300      -- a callback signed longer ago (or ahead) than this is refused

-- The check of a check.completed event (its id and our reference), or nil.
local function event_check(e)
  local c = type(e) == "table" and type(e.data) == "table" and e.data.check
  if type(c) ~= "table" or type(c.id) ~= "string" or not c.id:find("^chk_[%w]+$") or #c.id > 64
     or not ids.valid(c.reference, "kyc") then
    return nil
  end
  return c
end

local function state_conflict(id, state, wanted)
  return errors.new(409, "customer_state_invalid", "Customer " .. id .. " is " .. state .. "; this needs "
    .. wanted .. ".", "id", "invalid_request_error")
end

function _M.register(app, deps)
  local routes = api.new(app, deps)
  local db = deps.db
  local store = onboarding.new(deps)

  if not store.misconfigured then
    nuvion.timer.every(store.poll_ms, function()
      local ok, err = pcall(store.poll_once, store)
      if not ok then api.log_error("kyc poller failed", err) end
    end)
  end
  local MISCONFIGURED = errors.new(500, "customers_misconfigured", "Customers are not configured on this "
    .. "service (the logs say what is missing).")
  local function guarded(handler)
    return function(ctx)
      if store.misconfigured then return MISCONFIGURED end
      return handler(ctx)
    end
  end

  local function db_error(err)
    api.log_error("customers query failed", err)
    return errors.unavailable()
  end

  routes:post("/v1/customers", { scope = "customers:write", schema = _M.CREATE, audit = "customer.create" },
    guarded(function(ctx)
      local p, b = ctx.principal, ctx.body
      local bad = _M.check_kind(b, today())
      if bad then return bad end
      local id = ids.new("cus")
      return db:tx(function(tx)
        local row, plain = store:insert(tx, id, p, b, ctx.req.id)
        if not row then return nil, plain end
        local _, aerr = ctx:audit(tx, id)
        if aerr then return nil, aerr end
        return ctx:respond(tx, 201, store:object(row, plain))
      end)
    end))

  routes:get("/v1/customers", { scope = "customers:read", list = "cus" }, guarded(function(ctx)
    local p, args = ctx.principal, ctx.req.args
    local where, qargs = "partner_id = $1 AND mode = $2 AND state <> 'erased'", { p.partner_id, p.mode }
    for _, f in ipairs({ "email", "phone" }) do
      local v = args[f]
      if v ~= nil then
        if type(v) ~= "string" or v == "" or #v > 254 then
          return errors.invalid("parameter_invalid", f .. " must be given once, 1 to 254 characters.", f)
        end
        qargs[#qargs + 1] = store:hash(f, v)
        where = where .. " AND " .. f .. "_hash = $" .. #qargs
      end
    end
    local res, err = list.fetch(db, { from = "customers", columns = onboarding.COLUMNS, where = where,
      args = qargs, url = "/v1/customers" }, ctx.page, function(row) return store:object(row) end)
    if not res then return db_error(err) end
    return 200, res
  end))

  routes:get("/v1/customers/:id", { scope = "customers:read" }, guarded(function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not ids.valid(id, "cus") then return errors.not_found("customer", id) end
    local row, err = store:get(db, p, id)
    if row == nil then return db_error(err) end
    if not row then return errors.not_found("customer", id) end
    local o = store:object(row)
    local hist, herr = onboarding.history(db, id)
    if not hist then return db_error(herr) end
    o.state_changes = hist
    return 200, o
  end))

  -- PATCH takes an Idempotency-Key as the POSTs do
  routes:patch("/v1/customers/:id", { scope = "customers:write", schema = _M.UPDATE, audit = "customer.update" },
    guarded(function(ctx)
    local id, p, b = ctx.req.params.id, ctx.principal, ctx.body
    if not ids.valid(id, "cus") then return errors.not_found("customer", id) end
    return db:tx(function(tx)
      local row, gerr = store:get(tx, p, id, true)
      if row == nil then return nil, gerr end
      if not row then return errors.not_found("customer", id) end
      local bad = _M.check_update(b, row.kind, today())
      if bad then return bad end
      if row.state == "erased" then return state_conflict(id, row.state, "a customer not erased") end
      if not _M.IDENTITY_STATES[row.state] then
        for _, f in ipairs(_M.IDENTITY) do
          if b[f] ~= nil then
            return errors.new(409, "customer_state_invalid", "Customer " .. id .. " is " .. row.state .. "; "
              .. f .. " can be changed only while pending or action_required.", f, "invalid_request_error")
          end
        end
      end
      if b.metadata then
        local m, merr = _M.merge_metadata(row.metadata, b.metadata)
        if not m then return merr end
        b.metadata = m
      end
      local new, changed = store:update(tx, row, b)
      if not new then return nil, changed end
      local _, aerr = ctx:audit(tx, id, nil, { fields = changed })
      if aerr then return nil, aerr end
      return ctx:respond(tx, 200, store:object(new))
    end)
  end))

  -- The customer's wallets that hold anything (posted, or pending either way), or nil and an
  -- outcome (the ledger failed).
  local function wallets_in_use(tx, p, id)
    local rows, err = tx:query("SELECT " .. wallets.WALLET_COLUMNS .. " FROM wallets WHERE partner_id = $1 "
      .. "AND mode = $2 AND owner_type = 'customer' AND owner_id = $3 ORDER BY id", p.partner_id, p.mode, id)
    if not rows then return nil, db_error(err) end
    local used = {}
    for _, w in ipairs(rows) do
      local b, berr = deps.ledger:balances(w.ledger_account_id, { normal = "credit" })
      if not b then
        api.log_error("customer erasure: ledger balances failed", berr and berr.code)
        return nil, errors.unavailable("The ledger is unavailable, try again.")
      end
      if b.posted ~= 0 or b.debits_pending ~= 0 or b.credits_pending ~= 0 then used[#used + 1] = w.id end
    end
    return used
  end

  -- Erasure (GDPR): refused while a check runs (in_review: its result would land on nothing) or
  -- while a wallet of the customer holds money; an erased customer is answered the same again.
  routes:delete("/v1/customers/:id", { scope = "customers:write", audit = "customer.delete" }, guarded(function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not ids.valid(id, "cus") then return errors.not_found("customer", id) end
    local gone = { id = id, object = "customer", deleted = true }
    local out, err = db:tx(function(tx)
      local row, gerr = store:get(tx, p, id, true)
      if row == nil then return nil, gerr end
      if not row then return errors.not_found("customer", id) end
      if row.state == "erased" then return gone end
      if row.state == "in_review" then
        return errors.new(409, "customer_in_review", "Customer " .. id .. " is in review; it can be erased once "
          .. "the check has decided.", "id", "invalid_request_error")
      end
      local used, uerr = wallets_in_use(tx, p, id)
      if not used then return uerr end
      if #used > 0 then
        return errors.new(409, "customer_has_balance", "Customer " .. id .. " has money in wallet "
          .. used[1] .. "; empty its wallets before erasing it.", "id", "invalid_request_error")
      end
      local erased, eerr = onboarding.erase(tx, row, ctx.req.id)
      if not erased then return nil, eerr end
      local _, aerr = ctx:audit(tx, id)
      if aerr then return nil, aerr end
      return gone
    end)
    if not out then return db_error(err) end
    if errors.is_outcome(out) then return out end
    return 200, out
  end))

  -- Starts a check: the transition and the verification row commit together, then the check is
  -- sent; a submission that fails or times out stays "submitting" and the poller sends it again
  -- (same reference: the provider answers the same check).
  local function start_check(ctx, id, from, reason, before)
    local p = ctx.principal
    if not ids.valid(id, "cus") then return errors.not_found("customer", id) end
    local out, err = db:tx(function(tx)
      local row, gerr = store:get(tx, p, id, true)
      if row == nil then return nil, gerr end
      if not row then return errors.not_found("customer", id) end
      if row.state ~= from then return state_conflict(id, row.state, from) end
      if before then
        local _, berr = before(tx, row)
        if berr then return nil, berr end
      end
      local moved, terr = onboarding.transition(tx, id, from, "in_review", reason, ctx.req.id)
      if not moved then return nil, terr or "customer moved" end
      local v, verr = store:new_verification(tx, id, reason == "verification_started" and "verify" or "document")
      if not v then return nil, verr end
      local _, aerr = ctx:audit(tx, id)
      if aerr then return nil, aerr end
      return { row = moved, verification = v }
    end)
    if not out then return db_error(err) end
    if errors.is_outcome(out) then return out end
    local status = store:submit(out.verification.id, out.row)
    local o = store:object(out.row)
    o.verification = { id = out.verification.id, object = "verification", status = status }
    return 200, o
  end

  -- The KYC provider's callbacks: public (no partner key), the signature is the authentication.
  -- Nothing is read from the body before the signature is verified over its raw bytes. The
  -- callback only says which check finished: onboarding's check_completed fetches the result
  -- from the provider's API and applies it as the poller does (once). 200 for every event
  -- verified, known or not (a provider retries other answers); 503 when the provider or the
  -- database failed, or the provider's API does not show the check completed yet (retried; the
  -- poller is there anyway).
  local SIGNATURE_INVALID = errors.authentication("signature_invalid", "The " .. kyc.SIGNATURE_HEADER
    .. " header is missing, malformed, stale or does not match the body.")
  routes:post("/v1/providers/kyc/events", { auth = false, audit = false }, guarded(function(ctx)
    local req = ctx.req
    if not store.webhook_secret then
      return errors.new(503, "kyc_callbacks_misconfigured", "KYC callbacks are not configured on this service "
        .. "(the logs say what is missing); results are polled.", nil, "api_error")
    end
    local ok, why = webhooks.verify(req.headers[kyc.SIGNATURE_HEADER:lower()], req.body or "",
                                    { store.webhook_secret }, { tolerance = _M.CALLBACK_TOLERANCE_S })
    if not ok then
      log.warn("kyc callback refused", { reason = why })
      return SIGNATURE_INVALID
    end
    local e = json.decode(req.body)
    if type(e) ~= "table" or type(e.type) ~= "string" then
      return errors.invalid("invalid_event", "The body must be an event object with a type.")
    end
    if e.type ~= "check.completed" then return 200, { received = true, outcome = "ignored" } end
    local c = event_check(e)
    if not c then
      return errors.invalid("invalid_event", "check.completed needs data.check.id and data.check.reference.")
    end
    local outcome, err = store:check_completed(c.id, c.reference)
    if not outcome then
      api.log_error("kyc callback not applied", err)
      return errors.unavailable("The result could not be applied now; send the event again.")
    end
    log.info("kyc callback", { check = c.id, verification = c.reference, outcome = outcome })
    if outcome == "pending" then          -- the provider's API does not show it completed yet: again later
      return errors.new(503, "kyc_result_not_ready", "The provider does not show check " .. c.id
        .. " as completed yet; send the event again.", nil, "api_error")
    end
    return 200, { received = true, outcome = outcome }
  end))

  routes:post("/v1/customers/:id/verify", { scope = "customers:write", audit = "customer.verify" },
    guarded(function(ctx)
      return start_check(ctx, ctx.req.params.id, "pending", "verification_started")
    end))

  routes:post("/v1/customers/:id/documents", { scope = "customers:write", schema = _M.DOCUMENT,
                                               audit = "customer.document" }, guarded(function(ctx)
    local id, b = ctx.req.params.id, ctx.body
    -- a business's new document is its registration: its number replaces the one on file
    return start_check(ctx, id, "action_required", "document_submitted", function(tx, row)
      if row.kind == "business" then
        return tx:query("UPDATE customers SET registration_number_enc = $2 WHERE id = $1", id,
                        store:seal(id, "registration_number", b.number))
      end
      return tx:query("UPDATE customers SET id_document_enc = $2, id_number_last4 = $3 WHERE id = $1", id,
        store:seal(id, "id_document", { type = b.type, number = b.number, country = b.country }), b.number:sub(-4))
    end)
  end))
end

return _M
