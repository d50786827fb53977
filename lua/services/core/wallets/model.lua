-- wallets/model.lua -- what core's wallet routes share (routes/wallets.lua, the public ones;
-- routes/wallets_internal.lua, the other services'): assets and ledger numbers, the ledger ids
-- derived from our own ids, loading a wallet, and every ledger result code as an API error.
--
-- Ledger ids are 128-bit numbers derived by SHA-256 from a label (docs/wallets.md):
--   wallet account      "wallet:<wal_id>"
--   settlement account  "settlement:<partner_id>:<mode>:<asset>"
--   transfer            "transfer:<partner_id>:<mode>:<Idempotency-Key>" (random without a key)
--   fund (test helper)  "fund:<wal_id>:<Idempotency-Key>" (random without a key)
--   internal operations "<op>:<wal_id>:<reference>" (op: hold, post, void, credit, debit)
-- so the same request always names the same ledger object and a retry is the ledger's `exists`.
local crypto = require "nuvion.crypto"
local json = require "nuvion.json"
local api = require "nuvion.api"

local byte, floor, format, concat, tostring, type, pairs = string.byte, math.floor, string.format,
  table.concat, tostring, type, pairs
local errors = api.errors

local _M = {}

_M.CODE_WALLET = 10          -- ledger account codes
_M.CODE_SETTLEMENT = 20
_M.TRANSFER_CODES = {        -- ledger transfer codes, and back
  transfer = 1, fund = 2, hold = 3, credit = 4, debit = 5,
}
-- a statement entry's type by its code: a hold is never an entry, its capture (same code) is
_M.ENTRY_TYPES = { "transfer", "fund", "capture", "credit", "debit" }

local WALLET_FLAGS = { "debits_must_not_exceed_credits", "history" }

-- The decimal text of a big-endian byte string (up to 16 bytes).
local function decimal(bytes)
  local b = { byte(bytes, 1, #bytes) }
  local chunks = {}
  while true do
    local rem, nonzero = 0, false
    for i = 1, #b do
      local cur = rem * 256 + b[i]
      local q = floor(cur / 1e7)
      b[i] = q
      rem = cur - q * 1e7
      if q ~= 0 then nonzero = true end
    end
    chunks[#chunks + 1] = rem
    if not nonzero then break end
  end
  local parts = { tostring(chunks[#chunks]) }
  for i = #chunks - 1, 1, -1 do parts[#parts + 1] = format("%07d", chunks[i]) end
  return concat(parts)
end
_M.decimal = decimal

-- A 128-bit ledger id (digit string) for a label: never 0 (the top byte is kept below 0xff and
-- the id gets its lowest bit set, so it is neither 0 nor 2^128-1).
function _M.ledger_id(label)
  local h = crypto.sha256("nuvion.core." .. label)
  local first = byte(h, 1)
  if first == 255 then first = 254 end
  local last = byte(h, 16)
  if last % 2 == 0 then last = last + 1 end
  return decimal(string.char(first) .. h:sub(2, 15) .. string.char(last))
end

function _M.random_ledger_id()
  return _M.ledger_id("random:" .. crypto.hex_encode(crypto.random(16)))
end

function _M.ledger_number(asset_number, mode)
  return asset_number * 2 + (mode == "live" and 1 or 0)
end

function _M.settlement_id(partner_id, mode, asset)
  return _M.ledger_id("settlement:" .. partner_id .. ":" .. mode .. ":" .. asset)
end

-- { code = { number, exponent } }, read once per worker (the table changes with migrations).
local assets
function _M.assets(db)
  if assets then return assets end
  local rows, err = db:query("SELECT code, number, exponent FROM wallet_assets")
  if not rows then return nil, err end
  local a = {}
  for _, r in ipairs(rows) do a[r.code] = { number = tonumber(r.number), exponent = tonumber(r.exponent) } end
  assets = a
  return a
end

-- Both ledger accounts of a wallet: its own and the settlement account of its partner, mode and
-- asset. Returns true, or nil and an outcome. `exists` is fine for both (a retry, or a settlement
-- account made for an earlier wallet).
function _M.create_accounts(lg, w)
  local res, err = lg:create_accounts({
    { id = w.settlement_account_id, ledger = w.ledger, code = _M.CODE_SETTLEMENT },
    { id = w.ledger_account_id, ledger = w.ledger, code = _M.CODE_WALLET, flags = WALLET_FLAGS },
  })
  if not res then
    api.log_error("ledger create_accounts failed", err and err.code)
    return nil, errors.unavailable("The ledger is unavailable, try again.")
  end
  for i = 1, 2 do
    if res[i] ~= "ok" and res[i] ~= "exists" then
      api.log_error("ledger refused an account", res[i])
      return nil, errors.internal("The ledger refused the wallet's account (" .. res[i] .. ").")
    end
  end
  return true
end

local WALLET_COLUMNS = "id, partner_id, mode, owner_type, owner_id, asset, ledger, "
  .. "ledger_account_id::text AS ledger_account_id, extract(epoch FROM created_at)::bigint AS created"
_M.WALLET_COLUMNS = WALLET_COLUMNS

local function with_settlement(w)
  w.ledger = tonumber(w.ledger)
  w.created = tonumber(w.created)
  w.settlement_account_id = _M.settlement_id(w.partner_id, w.mode, w.asset)
  return w
end
_M.with_settlement = with_settlement

-- A wallet row never changes once made, nor is it deleted: each worker keeps the rows it read,
-- up to WALLET_CACHE_MAX (emptied whole when full), so a movement between known wallets reads
-- none. Only wallets found are kept; callers get copies.
_M.WALLET_CACHE_MAX = 10000
local known, known_n = {}, 0

local function remember(w)
  if known[w.id] then return end
  if known_n >= _M.WALLET_CACHE_MAX then known, known_n = {}, 0 end
  local copy = {}
  for k, v in pairs(w) do copy[k] = v end
  known[w.id] = copy
  known_n = known_n + 1
end

-- A copy of the cached wallet id when it is the partner's and mode's (p nil: anyone's), else nil.
local function recall(id, p)
  local w = known[id]
  if not w or (p and (w.partner_id ~= p.partner_id or w.mode ~= p.mode)) then return nil end
  local copy = {}
  for k, v in pairs(w) do copy[k] = v end
  return copy
end

function _M.cached_count() return known_n end

-- A wallet of the partner and mode (p = principal), or nil and nil (not found, also another
-- partner's) or nil and an outcome (the database failed). p nil: any wallet (internal routes).
function _M.load(db, id, p)
  local hit = known[id] and recall(id, p)
  if hit then return hit end
  local rows
  if p then
    rows = db:query("SELECT " .. WALLET_COLUMNS .. " FROM wallets WHERE id = $1 AND partner_id = $2 AND mode = $3",
                    id, p.partner_id, p.mode)
  else
    rows = db:query("SELECT " .. WALLET_COLUMNS .. " FROM wallets WHERE id = $1", id)
  end
  if not rows then return nil, errors.unavailable() end
  if not rows[1] then return nil end
  local w = with_settlement(rows[1])
  remember(w)
  return w
end

-- Two wallets of the partner and mode in one query: a, b (either nil when not found), or nil,
-- nil, outcome when the database failed.
function _M.load_pair(db, a, b, p)
  local ca, cb = recall(a, p), recall(b, p)
  if ca and cb then return ca, cb end
  local rows = db:query("SELECT " .. WALLET_COLUMNS .. " FROM wallets WHERE id IN ($1, $2) AND partner_id = $3 "
    .. "AND mode = $4", a, b, p.partner_id, p.mode)
  if not rows then return nil, nil, errors.unavailable() end
  local wa, wb
  for _, row in ipairs(rows) do
    if row.id == a then wa = with_settlement(row) elseif row.id == b then wb = with_settlement(row) end
  end
  if wa then remember(wa) end
  if wb then remember(wb) end
  return wa, wb
end

-- Balances of a wallet as the API shows them.
function _M.balance(lg, w)
  local b, err = lg:balances(w.ledger_account_id, { normal = "credit" })
  if not b then
    api.log_error("ledger balances failed", err and err.code)
    if err and err.code == "account_not_found" then
      return nil, errors.internal("The wallet's ledger account is missing.")
    end
    return nil, errors.unavailable("The ledger is unavailable, try again.")
  end
  return { object = "balance", currency = w.asset, available = b.available, pending = b.pending,
           posted = b.posted }
end

function _M.wallet_object(w, balance)
  return { id = w.id, object = "wallet", livemode = w.mode == "live", currency = w.asset,
           owner = { type = w.owner_type, id = w.owner_id }, ledger = w.ledger,
           ledger_account_id = w.ledger_account_id, balance = balance or json.null, created = w.created }
end

-- Every ledger transfer result, as an API error: { status, public code, message }. The internal
-- routes answer the ledger's own code with the same status; the public ones the public code.
local function r(status, code, message) return { status = status, code = code, message = message } end
local INTERNAL = r(500, "ledger_rejected", "The ledger refused a transfer core made; this is our bug.")
local RESULT_ERRORS = {
  exceeds_credits = r(402, "insufficient_funds", "The wallet's available balance is too low."),
  exceeds_debits = r(402, "limit_exceeded", "The receiving account cannot take that much."),
  id_already_failed = r(409, "transfer_already_failed",
    "A transfer with this idempotency key or reference failed before; use a new one."),
  amount_must_not_be_zero = r(400, "amount_invalid", "The amount must be greater than zero."),
  accounts_must_be_different = r(400, "same_wallet", "A transfer needs two different wallets."),
  accounts_must_have_the_same_ledger = r(400, "currency_mismatch",
    "Both wallets must hold the same currency and mode."),
  transfer_must_have_the_same_ledger_as_accounts = r(400, "currency_mismatch",
    "The transfer's currency differs from its wallets'."),
  debit_account_not_found = r(500, "ledger_account_missing", "A wallet's ledger account is missing."),
  credit_account_not_found = r(500, "ledger_account_missing", "A wallet's ledger account is missing."),
  pending_transfer_not_found = r(404, "hold_not_found", "No such hold."),
  pending_transfer_not_pending = r(409, "hold_not_pending", "That transfer is not a hold."),
  pending_transfer_has_different_debit_account_id = r(409, "hold_mismatch", "The hold belongs to another wallet."),
  pending_transfer_has_different_credit_account_id = r(409, "hold_mismatch", "The hold belongs to another wallet."),
  pending_transfer_has_different_ledger = r(409, "hold_mismatch", "The hold is in another currency."),
  pending_transfer_has_different_code = r(409, "hold_mismatch", "The hold is of another kind."),
  exceeds_pending_transfer_amount = r(400, "amount_exceeds_hold", "The amount is more than the hold's."),
  pending_transfer_has_different_amount = r(400, "amount_differs_from_hold",
    "A void takes the hold's whole amount."),
  pending_transfer_already_posted = r(409, "hold_already_captured", "The hold was already captured."),
  pending_transfer_already_voided = r(409, "hold_already_voided", "The hold was already voided."),
  pending_transfer_expired = r(409, "hold_expired", "The hold expired."),
  debit_account_already_closed = r(409, "wallet_closed", "The paying wallet is closed."),
  credit_account_already_closed = r(409, "wallet_closed", "The receiving wallet is closed."),
  overflows_debits_pending = r(422, "amount_too_large", "The amount would overflow the wallet's counters."),
  overflows_credits_pending = r(422, "amount_too_large", "The amount would overflow the wallet's counters."),
  overflows_debits_posted = r(422, "amount_too_large", "The amount would overflow the wallet's counters."),
  overflows_credits_posted = r(422, "amount_too_large", "The amount would overflow the wallet's counters."),
  overflows_debits = r(422, "amount_too_large", "The amount would overflow the wallet's counters."),
  overflows_credits = r(422, "amount_too_large", "The amount would overflow the wallet's counters."),
  overflows_timeout = r(400, "timeout_too_large", "The hold's timeout is too far in the future."),
  linked_event_failed = INTERNAL, linked_event_chain_open = INTERNAL, timestamp_must_be_zero = INTERNAL,
  reserved_flag = INTERNAL, id_must_not_be_zero = INTERNAL, id_must_not_be_int_max = INTERNAL,
  flags_are_mutually_exclusive = INTERNAL, debit_account_id_must_not_be_zero = INTERNAL,
  debit_account_id_must_not_be_int_max = INTERNAL, credit_account_id_must_not_be_zero = INTERNAL,
  credit_account_id_must_not_be_int_max = INTERNAL, pending_id_must_be_zero = INTERNAL,
  pending_id_must_not_be_zero = INTERNAL, pending_id_must_not_be_int_max = INTERNAL,
  pending_id_must_be_different = INTERNAL, timeout_reserved_for_pending_transfer = INTERNAL,
  closing_transfer_must_be_pending = INTERNAL, ledger_must_not_be_zero = INTERNAL,
  code_must_not_be_zero = INTERNAL,
}
-- a transfer with this id exists with other fields: the same key or reference was used for
-- another request (after the Idempotency-Key's 24 h, or a caller's reference reused)
local EXISTS_DIFFERENT = r(409, "idempotency_conflict",
  "This idempotency key or reference was already used for a different transfer.")
for _, f in ipairs({ "flags", "pending_id", "timeout", "debit_account_id", "credit_account_id", "amount",
                     "user_data_128", "user_data_64", "user_data_32", "ledger", "code" }) do
  RESULT_ERRORS["exists_with_different_" .. f] = EXISTS_DIFFERENT
end
_M.RESULT_ERRORS = RESULT_ERRORS

-- The outcome of a failed ledger result. internal: the code is the ledger's own.
function _M.result_error(result, internal)
  local e = RESULT_ERRORS[result] or INTERNAL
  local o = errors.new(e.status, internal and result or e.code, e.message .. " (ledger: " .. result .. ")")
  o.ledger_result = result
  return o
end

-- The outcome of a failed ledger call (nil, err): retryable, nothing or maybe something applied.
function _M.call_error(err)
  api.log_error("ledger call failed", type(err) == "table" and err.code or err)
  return errors.unavailable("The ledger is unavailable, try again with the same key.")
end

-- The answer to a ledger call that moved nothing: the call's failure, or the ledger's refusal
-- (any result but "ok" or "exists"); nil when the money moved (or had moved: a retry).
function _M.ledger_refusal(res, err)
  if not res then return _M.call_error(err) end
  if res ~= "ok" and res ~= "exists" then return _M.result_error(res) end
  return nil
end

return _M
