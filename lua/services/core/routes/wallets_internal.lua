-- routes/wallets_internal.lua -- money moves on wallets for the other services (docs/wallets.md).
-- Service tokens only (auth.require_service): a partner's secret key or access token is 403.
--
--   POST /internal/wallets/:id/holds                         { reference, amount, timeout_s? }
--   POST /internal/wallets/:id/holds/:reference/capture      { amount? }  (none or 0: all)
--   POST /internal/wallets/:id/holds/:reference/void         {}
--   POST /internal/wallets/:id/credits                       { reference, amount }  settlement -> wallet
--   POST /internal/wallets/:id/debits                        { reference, amount }  wallet -> settlement
--
-- Each is idempotent on the caller's reference: the ledger id is derived from the operation, the
-- wallet and the reference (a capture and a void from their hold's), so a retry is the ledger's
-- `exists` and answers 200 with result "exists"; the same reference with other values is 409
-- with the ledger's exists_with_different_* code. A failure answers the ledger's own result code
-- (402 exceeds_credits, 404 pending_transfer_not_found, 409 pending_transfer_already_posted, ...).
-- These routes write nothing in core's database (no outbox event): the calling service records
-- the operation with its own outbox, keyed by its reference.
local api = require "nuvion.api"
local auth = require "nuvion.auth"
local model = require "wallets.model"
local limits = require "wallets.limits"

local find = string.find
local errors, validate, ids = api.errors, api.validate, api.ids

local _M = {}

_M.CALLERS = { "acquiring", "payout", "account_issuing", "card_issuing", "blockchain", "core" }

local REFERENCE = { type = "string", required = true, min_length = 1, max_length = 200,
                    pattern = "^[%w_%-%.:]+$", pattern_message = "letters, digits and _ - . : only",
                    description = "The caller's id of this operation: the same reference is the same operation." }
local AMOUNT = { type = "amount", required = true, minimum = 1 }

_M.HOLD = { type = "object", properties = {
  reference = REFERENCE, amount = AMOUNT,
  timeout_s = { type = "integer", minimum = 0, maximum = 31536000, default = 0,
                description = "Seconds until the hold expires by itself; 0: never." },
} }
_M.CAPTURE = { type = "object", properties = { amount = { type = "amount", minimum = 0, default = 0 } } }
_M.VOID = { type = "object", properties = {} }
_M.MOVE = { type = "object", properties = { reference = REFERENCE, amount = AMOUNT } }

for _, s in ipairs({ _M.HOLD, _M.CAPTURE, _M.VOID, _M.MOVE }) do validate.compile(s) end

local function reference_ok(ref)
  return type(ref) == "string" and #ref >= 1 and #ref <= 200 and find(ref, "^[%w_%-%.:]+$") ~= nil
end

-- The wrapper of an internal route: service token, wallet, body; fn(w, body, req) answers.
local function internal(deps, schema, fn)
  return function(req)
    local svc, aerr = auth.require_service(req, { from = _M.CALLERS })
    if not svc then return api.render(req, aerr) end
    local id = req.params.id
    if not ids.valid(id, "wal") then return api.render(req, errors.not_found("wallet", id)) end
    local raw = {}
    if req.body ~= "" then
      local v, jerr = req:json()
      if v == nil then return api.render(req, jerr) end
      raw = v
    end
    local body, verr = validate.check(schema, raw)
    if body == nil then return api.render(req, verr) end
    local w, err = model.load(deps.db, id, nil)
    if not w then return api.render(req, err or errors.not_found("wallet", id)) end
    return api.render(req, fn(w, body, req))
  end
end

local function answer(deps, w, kind, reference, lid, res, err, amount)
  if res == nil then return model.call_error(err) end
  if res ~= "ok" and res ~= "exists" then return model.result_error(res, true) end
  local bal, berr = model.balance(deps.ledger, w)
  if not bal then return berr end
  return 200, { object = "wallet_operation", type = kind, wallet = w.id, reference = reference,
                result = res, amount = amount, ledger_transfer_id = lid, balance = bal }
end

-- call() under the tier limits when w is a customer's wallet (docs/wallets.md "Tier limits"):
-- call()'s values, or nil, nil, outcome (refused, or core's database failed). A partner's
-- wallet: call() alone.
local function limited(deps, w, dir, amount, lid, call)
  if w.owner_type ~= "customer" then return call() end
  local assets = model.assets(deps.db)
  local a = assets and assets[w.asset]
  local out, terr = deps.db:tx(function(tx)
    local res, err, refused = limits.guard(tx, deps.ledger, { { w = w, dir = dir, amount = amount, param = "amount",
      exponent = a and a.exponent } }, lid, true, call)
    return { res = res, err = err, refused = refused }
  end)
  if not out then
    -- the ledger may have moved (a failed COMMIT): the caller retries with its reference
    api.log_error("wallet limits transaction failed", terr)
    return nil, nil, errors.unavailable()
  end
  return out.res, out.err, out.refused
end

function _M.register(app, deps)
  app:post("/internal/wallets/:id/holds", internal(deps, _M.HOLD, function(w, b)
    local lid = model.ledger_id("hold:" .. w.id .. ":" .. b.reference)
    local res, err, refused = limited(deps, w, "out", b.amount, lid, function()
      return deps.ledger:hold({ id = lid, debit_account_id = w.ledger_account_id,
        credit_account_id = w.settlement_account_id, amount = b.amount, ledger = w.ledger,
        code = model.TRANSFER_CODES.hold, timeout = b.timeout_s })
    end)
    if refused then return refused end
    return answer(deps, w, "hold", b.reference, lid, res, err, b.amount)
  end))

  local function resolve(kind)
    return internal(deps, kind == "capture" and _M.CAPTURE or _M.VOID, function(w, b, req)
      local ref = req.params.reference
      if not reference_ok(ref) then return errors.not_found("hold", ref, "reference") end
      local hold = model.ledger_id("hold:" .. w.id .. ":" .. ref)
      local lid = model.ledger_id(kind .. ":" .. w.id .. ":" .. ref)
      local res, err
      if kind == "capture" then
        res, err = deps.ledger:post({ id = lid, pending_id = hold, amount = b.amount })
      else
        res, err = deps.ledger:void({ id = lid, pending_id = hold })
      end
      -- a void gives a customer's daily-out allowance back, a partial capture what it left
      if res == "ok" and w.owner_type == "customer" then
        local captured = kind == "capture" and limits.num(b.amount) > 0 and b.amount or nil
        if kind == "void" or captured then limits.release(deps.db, w, hold, captured) end
      end
      return answer(deps, w, kind, ref, lid, res, err, b.amount or 0)
    end)
  end
  app:post("/internal/wallets/:id/holds/:reference/capture", resolve("capture"))
  app:post("/internal/wallets/:id/holds/:reference/void", resolve("void"))

  local function move(kind)
    return internal(deps, _M.MOVE, function(w, b)
      local lid = model.ledger_id(kind .. ":" .. w.id .. ":" .. b.reference)
      local debit, credit = w.settlement_account_id, w.ledger_account_id
      if kind == "debit" then debit, credit = credit, debit end
      local res, err, refused = limited(deps, w, kind == "debit" and "out" or "in", b.amount, lid, function()
        return deps.ledger:transfer({ id = lid, debit_account_id = debit, credit_account_id = credit,
          amount = b.amount, ledger = w.ledger, code = model.TRANSFER_CODES[kind] })
      end)
      if refused then return refused end
      return answer(deps, w, kind, b.reference, lid, res, err, b.amount)
    end)
  end
  app:post("/internal/wallets/:id/credits", move("credit"))
  app:post("/internal/wallets/:id/debits", move("debit"))
end

return _M
