-- ledger_helpers.lua -- what the ledger's specs share: fresh ids and ledgers per run, exact
-- 128-bit values as digit strings, lookups of the four counters, direct reads of the ledger's
-- tables (sql/ledger/) through nuvion.pg. The ledger is the real one (NUVION_LEDGER_DATABASE_URL).
local pg = require "nuvion.pg"
local nuvion = require "nuvion"
local json = require "nuvion.json"

local format, concat, tostring, type = string.format, table.concat, tostring, type

local _M = {}

_M.URL = os.getenv("NUVION_LEDGER_DATABASE_URL")
_M.MAX = "340282366920938463463374607431768211455"      -- 2^128-1
_M.MAX_1 = "340282366920938463463374607431768211454"    -- 2^128-2
_M.HALF = "170141183460469231731687303715884105728"     -- 2^127
_M.HALF_1 = "170141183460469231731687303715884105727"   -- 2^127-1

-- Transfer and account result names, in the order of host/ledger_check.h.
_M.TRANSFER_RESULTS = {
  "ok", "linked_event_failed", "linked_event_chain_open", "timestamp_must_be_zero", "reserved_flag",
  "id_must_not_be_zero", "id_must_not_be_int_max", "exists_with_different_flags",
  "exists_with_different_pending_id", "exists_with_different_timeout",
  "exists_with_different_debit_account_id", "exists_with_different_credit_account_id",
  "exists_with_different_amount", "exists_with_different_user_data_128", "exists_with_different_user_data_64",
  "exists_with_different_user_data_32", "exists_with_different_ledger", "exists_with_different_code", "exists",
  "id_already_failed", "flags_are_mutually_exclusive", "debit_account_id_must_not_be_zero",
  "debit_account_id_must_not_be_int_max", "credit_account_id_must_not_be_zero",
  "credit_account_id_must_not_be_int_max", "accounts_must_be_different", "pending_id_must_be_zero",
  "pending_id_must_not_be_zero", "pending_id_must_not_be_int_max", "pending_id_must_be_different",
  "timeout_reserved_for_pending_transfer", "closing_transfer_must_be_pending", "amount_must_not_be_zero",
  "ledger_must_not_be_zero", "code_must_not_be_zero", "debit_account_not_found", "credit_account_not_found",
  "accounts_must_have_the_same_ledger", "transfer_must_have_the_same_ledger_as_accounts",
  "pending_transfer_not_found", "pending_transfer_not_pending", "pending_transfer_has_different_debit_account_id",
  "pending_transfer_has_different_credit_account_id", "pending_transfer_has_different_ledger",
  "pending_transfer_has_different_code", "exceeds_pending_transfer_amount", "pending_transfer_has_different_amount",
  "pending_transfer_already_posted", "pending_transfer_already_voided", "pending_transfer_expired",
  "debit_account_already_closed", "credit_account_already_closed", "overflows_debits_pending",
  "overflows_credits_pending", "overflows_debits_posted", "overflows_credits_posted", "overflows_debits",
  "overflows_credits", "overflows_timeout", "exceeds_credits", "exceeds_debits",
}

_M.ACCOUNT_RESULTS = {
  "ok", "linked_event_failed", "linked_event_chain_open", "timestamp_must_be_zero", "reserved_flag",
  "id_must_not_be_zero", "id_must_not_be_int_max", "exists_with_different_flags",
  "exists_with_different_user_data_128", "exists_with_different_user_data_64", "exists_with_different_user_data_32",
  "exists_with_different_ledger", "exists_with_different_code", "exists", "flags_are_mutually_exclusive",
  "debits_pending_must_be_zero", "debits_posted_must_be_zero", "credits_pending_must_be_zero",
  "credits_posted_must_be_zero", "ledger_must_not_be_zero", "code_must_not_be_zero",
}

-- TigerBeetle's transient failures (docs/ledger.md): the ids the ledger remembers.
_M.TRANSIENT = {
  debit_account_not_found = true, credit_account_not_found = true, pending_transfer_not_found = true,
  debit_account_already_closed = true, credit_account_already_closed = true,
  exceeds_credits = true, exceeds_debits = true,
}

_M.CLOSED = 32 -- the account flag a closing hold sets

-- A value read back (number below 2^53, json.int above, or digits) as its digits.
function _M.str(v)
  if type(v) == "number" then return format("%.0f", v) end
  if v == nil then return "nil" end
  return tostring(v)
end

-- Fresh ids for this run: a random 15-digit base, then a 6-digit counter (21 digits, < 2^128).
-- Each spec file makes its own generator, so runs and files never collide.
function _M.ids()
  local base = format("%015.0f", tonumber(nuvion.random_hex(6), 16) % 1e15)
  local n = 0
  return function()
    n = n + 1
    return "7" .. base .. format("%06d", n)
  end
end

-- A ledger (asset) number of its own for a spec file: 10^6 .. 10^6 + 2^28.
function _M.random_ledger()
  return 1000000 + tonumber(nuvion.random_hex(4), 16) % 268435456
end

function _M.db()
  assert(_M.URL, "NUVION_LEDGER_DATABASE_URL is not set: run scripts/services.sh start DIR and source DIR/env")
  return pg.pool(_M.URL, { max = 4 })
end

-- The four counters of an account as digit strings { dp, dpo, cp, cpo }, read through the API.
function _M.counters(lg, id)
  local rows = assert(lg:lookup_accounts({ id }))
  local a = rows[1]
  assert(a, "account " .. tostring(id) .. " not found")
  return { _M.str(a.debits_pending), _M.str(a.debits_posted), _M.str(a.credits_pending), _M.str(a.credits_posted) }
end

function _M.account(lg, id)
  return (assert(lg:lookup_accounts({ id })))[1]
end

function _M.transfer(lg, id)
  return (assert(lg:lookup_transfers({ id })))[1]
end

-- How many of these ids are stored as transfers (straight from the table).
function _M.stored_count(db, ids)
  if #ids == 0 then return 0 end
  local rows = assert(db:query("SELECT count(*)::int AS n FROM ledger_transfers " ..
                               "WHERE id = ANY (string_to_array($1, ',')::numeric[])", concat(ids, ",")))
  return rows[1].n
end

-- The result the ledger remembered for a failed id, or nil.
function _M.failed_result(db, id)
  local rows = assert(db:query("SELECT result FROM ledger_failed_transfers WHERE id = $1::numeric", id))
  return rows[1] and rows[1].result
end

-- The ledger's invariants on one asset, recomputed in SQL from the stored rows: per ledger,
-- debits equal credits (pending and posted); every account within its limit flags; every
-- account's counters equal to the sums of its transfers (posted: single-phase and posts; pending:
-- holds still pending). Returns a list of what is wrong (empty when all hold).
local SQL_SUMS = [[
SELECT sum(debits_pending) = sum(credits_pending) AS pending_ok,
       sum(debits_posted) = sum(credits_posted) AS posted_ok,
       count(*)::int AS accounts
  FROM ledger_accounts WHERE ledger = $1]]
local SQL_LIMITS = [[
SELECT count(*)::int AS n FROM ledger_accounts
 WHERE ledger = $1 AND ((flags & 2 <> 0 AND debits_pending + debits_posted > credits_posted)
    OR (flags & 4 <> 0 AND credits_pending + credits_posted > debits_posted))]]
local SQL_COUNTERS = [[
WITH t AS (
  SELECT t.debit_account_id AS dr, t.credit_account_id AS cr, t.amount,
         CASE WHEN h.status = 1 THEN t.amount ELSE 0 END AS live,
         CASE WHEN t.flags & 2 = 0 AND t.flags & 8 = 0 THEN t.amount ELSE 0 END AS posted
    FROM ledger_transfers t LEFT JOIN ledger_holds h ON h.id = t.id
   WHERE t.ledger = $1),
e AS (
  SELECT dr AS id, live AS dp, posted AS dpo, 0 AS cp, 0 AS cpo FROM t
  UNION ALL
  SELECT cr, 0, 0, live, posted FROM t),
s AS (SELECT id, sum(dp) AS dp, sum(dpo) AS dpo, sum(cp) AS cp, sum(cpo) AS cpo FROM e GROUP BY id)
SELECT a.id::text AS id FROM ledger_accounts a LEFT JOIN s ON s.id = a.id
 WHERE a.ledger = $1
   AND (a.debits_pending <> coalesce(s.dp, 0) OR a.debits_posted <> coalesce(s.dpo, 0)
     OR a.credits_pending <> coalesce(s.cp, 0) OR a.credits_posted <> coalesce(s.cpo, 0))
 LIMIT 10]]

function _M.invariants(db, ledger)
  local wrong = {}
  local sums = assert(db:query(SQL_SUMS, ledger))[1]
  if sums.accounts == 0 then wrong[#wrong + 1] = "no accounts on ledger " .. ledger end
  if sums.pending_ok == false then wrong[#wrong + 1] = "pending debits differ from pending credits" end
  if sums.posted_ok == false then wrong[#wrong + 1] = "posted debits differ from posted credits" end
  local lim = assert(db:query(SQL_LIMITS, ledger))[1]
  if lim.n ~= 0 then wrong[#wrong + 1] = lim.n .. " accounts past their limit flags" end
  for _, r in ipairs(assert(db:query(SQL_COUNTERS, ledger))) do
    wrong[#wrong + 1] = "account " .. r.id .. ": counters differ from its transfers"
  end
  return wrong
end

-- flags has bit b (an integer flags field)
function _M.has_flag(flags, b)
  return math.floor(tonumber(flags) / b) % 2 == 1
end

_M.concurrently = require("spec.helpers").concurrently
_M.json = json

-- The accounts and transfers of a spec file: open(n, flags) creates n accounts on ledger L and
-- returns their ids; tr(id, dr, cr, amount, extra) builds a transfer on L (id nil: a new one).
function _M.maker(lg, L, new_id)
  local function open(n, flags)
    local list, ids = {}, {}
    for i = 1, n do
      ids[i] = new_id()
      list[i] = { id = ids[i], ledger = L, code = 1, flags = flags }
    end
    local res, err = lg:create_accounts(list)
    if not res then error("create_accounts: " .. tostring(err and err.message), 2) end
    for i = 1, n do
      if res[i] ~= "ok" then error("account " .. i .. " of " .. n .. ": " .. tostring(res[i]), 2) end
    end
    return unpack(ids)
  end
  local function tr(id, dr, cr, amount, extra)
    local t = { id = id or new_id(), debit_account_id = dr, credit_account_id = cr, amount = amount,
                ledger = L, code = 1 }
    for k, v in pairs(extra or {}) do t[k] = v end
    return t
  end
  return open, tr
end

return _M
