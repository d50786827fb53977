-- invariants.lua -- the ledger's invariant checker: what must hold between accounts, transfers,
-- holds and balance rows, verified with a bounded number of set-based queries (one scan of the
-- transfers per check, GROUP BY, never a loop over rows), in one read-only snapshot.
local json = require "nuvion.json"
local query = require "nuvion.ledger.query"

local type, tostring, ipairs, concat, format, floor = type, tostring, ipairs, table.concat, string.format,
  math.floor
local band = require("bit").band
local monotonic_ms = require("nuvion").monotonic_ms

local PROBLEMS_MAX_DEFAULT = 100 -- rows of each kind of problem in a report (the counts are exact)
local PROBLEMS_MAX = 10000
local LEDGERS_MAX = 1000         -- ledgers a check may be restricted to

local _M = { PROBLEMS_MAX_DEFAULT = PROBLEMS_MAX_DEFAULT, PROBLEMS_MAX = PROBLEMS_MAX,
             LEDGERS_MAX = LEDGERS_MAX }

-- $1 is the ledgers to check, as a bigint[] literal, or NULL for all. $2 the rows per kind.
local function only(col) return format("($1::bigint[] IS NULL OR %s = ANY($1::bigint[]))", col) end

-- 1. Per ledger: the sums of the four counters over its accounts (Σ debits = Σ credits).
local SQL_LEDGERS = [[
SELECT a.ledger, count(*) AS accounts,
       sum(a.debits_pending) AS debits_pending, sum(a.credits_pending) AS credits_pending,
       sum(a.debits_posted) AS debits_posted, sum(a.credits_posted) AS credits_posted,
       sum(a.debits_pending) = sum(a.credits_pending) AS pending_balanced,
       sum(a.debits_posted) = sum(a.credits_posted) AS posted_balanced,
       coalesce(max(n.transfers), 0) AS transfers
  FROM ledger_accounts a
  LEFT JOIN (SELECT ledger, count(*) AS transfers FROM ledger_transfers WHERE ]] .. only("ledger") .. [[
              GROUP BY ledger) n ON n.ledger = a.ledger
 WHERE ]] .. only("a.ledger") .. [[
 GROUP BY a.ledger
 ORDER BY a.ledger]]

-- 2. Accounts whose counters break their flags, or whose flags are impossible.
-- 65488 = every bit but linked (1), the two limits (2, 4), history (8) and closed (32).
local SQL_FLAGS = [[
SELECT a.id, a.ledger, a.flags, a.debits_pending, a.debits_posted, a.credits_pending,
       a.credits_posted,
       (a.flags & 2 <> 0 AND a.debits_pending + a.debits_posted > a.credits_posted)
         OR (a.flags & 4 <> 0 AND a.credits_pending + a.credits_posted > a.debits_posted) AS exceeds,
       count(*) OVER () AS total
  FROM ledger_accounts a
 WHERE ]] .. only("a.ledger") .. [[
   AND ((a.flags & 2 <> 0 AND a.debits_pending + a.debits_posted > a.credits_posted)
     OR (a.flags & 4 <> 0 AND a.credits_pending + a.credits_posted > a.debits_posted)
     OR a.flags & 6 = 6 OR a.flags & 65488 <> 0)
 ORDER BY a.id
 LIMIT $2]]

-- 3. Each account's counters against the sum of its transfers, and its closed flag against
-- its closing holds. posted: transfers without the pending or void flag (single-phase,
-- balancing, posts: their amount is what they moved); pending: holds whose state is still
-- pending; closing: pending holds with closing_debit (64) on their debit side or closing_credit
-- (128) on their credit side. Each side is its own GROUP BY (a hash aggregate over one scan: the
-- faster plan, measured against one pass emitting two rows per transfer). Grouped by (account,
-- the transfer's ledger): a transfer of another ledger than its account's shows as a missing
-- account. And a history account has as many balance rows as transfers (the posting layer
-- writes one per transfer and account): with check 6 (each row's account) and the primary key
-- (one row per account and instant), a count that matches means no row is missing; `full`
-- (check 8) matches them one by one.
local SQL_COUNTERS = [[
WITH d AS (
  SELECT debit_account_id AS account_id, ledger, sum(amount) FILTER (WHERE flags & 10 = 0) AS posted,
         count(*) AS n
    FROM ledger_transfers WHERE ]] .. only("ledger") .. [[
   GROUP BY 1, 2
), c AS (
  SELECT credit_account_id AS account_id, ledger, sum(amount) FILTER (WHERE flags & 10 = 0) AS posted,
         count(*) AS n
    FROM ledger_transfers WHERE ]] .. only("ledger") .. [[
   GROUP BY 1, 2
), p AS (
  SELECT t.debit_account_id, t.credit_account_id, t.ledger, t.amount, t.flags
    FROM ledger_holds h JOIN ledger_transfers t ON t.id = h.id
   WHERE h.status = 1 AND t.flags & 2 <> 0 AND ]] .. only("t.ledger") .. [[
), pd AS (
  SELECT debit_account_id AS account_id, ledger, sum(amount) AS pending,
         count(*) FILTER (WHERE flags & 64 <> 0) AS closing
    FROM p GROUP BY 1, 2
), pc AS (
  SELECT credit_account_id AS account_id, ledger, sum(amount) AS pending,
         count(*) FILTER (WHERE flags & 128 <> 0) AS closing
    FROM p GROUP BY 1, 2
), m AS (
  SELECT account_id, ledger, d.posted AS debits_posted, c.posted AS credits_posted,
         pd.pending AS debits_pending, pc.pending AS credits_pending,
         coalesce(pd.closing, 0) + coalesce(pc.closing, 0) AS closing,
         coalesce(d.n, 0) + coalesce(c.n, 0) AS n
    FROM d FULL JOIN c USING (account_id, ledger) FULL JOIN pd USING (account_id, ledger)
    FULL JOIN pc USING (account_id, ledger)
), accounts AS (
  SELECT * FROM ledger_accounts WHERE ]] .. only("ledger") .. [[
), rows AS ( -- an index-only count per history account: no scan of other ledgers' rows
  SELECT a.id AS account_id, (SELECT count(*) FROM ledger_account_balances b WHERE b.account_id = a.id) AS n
    FROM accounts a WHERE a.flags & 8 <> 0
)
SELECT coalesce(a.id, m.account_id) AS id, coalesce(a.ledger, m.ledger) AS ledger,
       a.id IS NULL AS missing, a.flags,
       a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
       coalesce(m.debits_pending, 0) AS sum_debits_pending,
       coalesce(m.debits_posted, 0) AS sum_debits_posted,
       coalesce(m.credits_pending, 0) AS sum_credits_pending,
       coalesce(m.credits_posted, 0) AS sum_credits_posted,
       coalesce(m.closing, 0) AS closing_holds,
       coalesce(m.n, 0) AS transfers, r.n AS balance_rows,
       count(*) OVER () AS total
  FROM accounts a
  FULL JOIN m ON m.account_id = a.id AND m.ledger = a.ledger
  LEFT JOIN rows r ON r.account_id = a.id
 WHERE a.id IS NULL
    OR (a.flags & 8 <> 0 AND coalesce(r.n, 0) <> coalesce(m.n, 0))
    OR a.debits_pending <> coalesce(m.debits_pending, 0)
    OR a.debits_posted <> coalesce(m.debits_posted, 0)
    OR a.credits_pending <> coalesce(m.credits_pending, 0)
    OR a.credits_posted <> coalesce(m.credits_posted, 0)
    OR (a.flags & 32 <> 0) <> (coalesce(m.closing, 0) > 0)
 ORDER BY 1
 LIMIT $2]]

-- 4. Holds and their state rows: one each way, the same accounts, the deadline of the timeout.
local SQL_HOLDS = [[
SELECT coalesce(h.id, t.id) AS id, coalesce(t.ledger, a.ledger) AS ledger,
       h.id IS NULL AS no_state, t.id IS NULL AS no_transfer,
       h.status, h.expires_at, t.timeout, t.timestamp,
       count(*) OVER () AS total
  FROM ledger_holds h
  LEFT JOIN ledger_accounts a ON a.id = h.debit_account_id
  FULL JOIN (SELECT * FROM ledger_transfers WHERE flags & 2 <> 0 AND ]] .. only("ledger") .. [[) t
    ON t.id = h.id
 WHERE ]] .. only("coalesce(t.ledger, a.ledger)") .. [[
   AND (h.id IS NULL OR t.id IS NULL
     OR h.debit_account_id <> t.debit_account_id OR h.credit_account_id <> t.credit_account_id
     OR h.expires_at IS DISTINCT FROM
        (CASE WHEN t.timeout > 0 THEN t.timestamp::numeric + t.timeout::numeric * 1000000000 END))
 ORDER BY 1
 LIMIT $2]]

-- 5. Each hold's status against the posts and voids naming it: posted iff one post, voided iff
-- one void, never both or two; a post moves at most the hold's amount; a post or void carries
-- the hold's accounts and ledger and names a hold that exists. The posts and voids are grouped
-- by hold first (they are few next to the holds), then joined.
local SQL_RESOLUTIONS = [[
WITH p AS (
  SELECT t.id, t.amount, t.debit_account_id, t.credit_account_id, t.ledger,
         coalesce(h.status, 0) AS status
    FROM ledger_transfers t
    LEFT JOIN ledger_holds h ON h.id = t.id
   WHERE t.flags & 2 <> 0 AND ]] .. only("t.ledger") .. [[
), r AS (
  SELECT pending_id AS id, min(ledger) AS ledger,
         count(*) FILTER (WHERE flags & 4 <> 0) AS posts,
         count(*) FILTER (WHERE flags & 8 <> 0) AS voids,
         coalesce(sum(amount) FILTER (WHERE flags & 4 <> 0), 0) AS posted,
         min(debit_account_id) AS min_debit, max(debit_account_id) AS max_debit,
         min(credit_account_id) AS min_credit, max(credit_account_id) AS max_credit,
         max(ledger) AS max_ledger
    FROM ledger_transfers
   WHERE flags & 12 <> 0 AND ]] .. only("ledger") .. [[
   GROUP BY pending_id
), g AS (
  SELECT coalesce(p.id, r.id) AS id, coalesce(p.ledger, r.ledger) AS ledger, p.id IS NULL AS no_hold,
         p.status, p.amount, coalesce(r.posts, 0) AS posts, coalesce(r.voids, 0) AS voids,
         coalesce(r.posted, 0) AS posted,
         r.id IS NULL OR p.id IS NULL OR (r.min_debit = p.debit_account_id AND r.max_debit = p.debit_account_id
           AND r.min_credit = p.credit_account_id AND r.max_credit = p.credit_account_id
           AND r.ledger = p.ledger AND r.max_ledger = p.ledger) AS same
    FROM p FULL JOIN r ON r.id = p.id
)
SELECT g.*, count(*) OVER () AS total
  FROM g
 WHERE no_hold OR NOT same OR posts + voids > 1 OR posted > amount
    OR (status = 2) <> (posts = 1) OR (status = 3) <> (voids = 1)
 ORDER BY id
 LIMIT $2]]

-- 6. Balance rows only for accounts with the history flag: those of the accounts without it
-- (an index lookup per account), and, when every ledger is checked, those of no account.
local SQL_BALANCE_ROWS = [[
SELECT u.*, count(*) OVER () AS total FROM (
  SELECT b.account_id, b.timestamp, b.transfer_id, a.ledger, false AS no_account
    FROM ledger_accounts a JOIN ledger_account_balances b ON b.account_id = a.id
   WHERE a.flags & 8 = 0 AND ]] .. only("a.ledger") .. [[
  UNION ALL
  SELECT b.account_id, b.timestamp, b.transfer_id, t.ledger, true
    FROM ledger_account_balances b LEFT JOIN ledger_transfers t ON t.id = b.transfer_id
   WHERE $1::bigint[] IS NULL AND NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = b.account_id)
) u
 ORDER BY 1, 2
 LIMIT $2]]

-- 7. A history account's last balance row has its posted counters (expiry changes only the
-- pending ones, and leaves no row).
local SQL_LAST_BALANCE = [[
SELECT a.id, a.ledger, a.debits_posted, a.credits_posted,
       l.debits_posted AS row_debits_posted, l.credits_posted AS row_credits_posted,
       l.timestamp, count(*) OVER () AS total
  FROM ledger_accounts a
  JOIN LATERAL (SELECT * FROM ledger_account_balances b WHERE b.account_id = a.id
                 ORDER BY b.timestamp DESC LIMIT 1) l ON true
 WHERE a.flags & 8 <> 0 AND ]] .. only("a.ledger") .. [[
   AND (l.debits_posted <> a.debits_posted OR l.credits_posted <> a.credits_posted)
 ORDER BY a.id
 LIMIT $2]]

-- 8. (opts.full) Each balance row of a history account against the transfers of that account:
-- one row per transfer, at its timestamp, and from one row to the next the posted counters
-- move by what that transfer posted on that side (the pending ones also move with expiries,
-- which leave no row: not checked). A window over every balance row: the costly check.
local SQL_BALANCE_STEPS = [[
WITH h AS (
  SELECT id, ledger FROM ledger_accounts WHERE flags & 8 <> 0 AND ]] .. only("ledger") .. [[
), t AS (
  SELECT t.id, t.timestamp, h.id AS account_id, h.ledger,
         CASE WHEN t.flags & 10 = 0 THEN t.amount ELSE 0 END AS dpo, 0::numeric AS cpo
    FROM ledger_transfers t JOIN h ON h.id = t.debit_account_id
  UNION ALL
  SELECT t.id, t.timestamp, h.id, h.ledger, 0, CASE WHEN t.flags & 10 = 0 THEN t.amount ELSE 0 END
    FROM ledger_transfers t JOIN h ON h.id = t.credit_account_id
), b AS (
  SELECT b.account_id, b.timestamp, b.transfer_id, h.ledger,
         b.debits_posted - lag(b.debits_posted, 1, 0::numeric) OVER w AS dpo,
         b.credits_posted - lag(b.credits_posted, 1, 0::numeric) OVER w AS cpo
    FROM ledger_account_balances b JOIN h ON h.id = b.account_id
  WINDOW w AS (PARTITION BY b.account_id ORDER BY b.timestamp)
)
SELECT coalesce(t.account_id, b.account_id) AS account_id, coalesce(t.ledger, b.ledger) AS ledger,
       coalesce(t.id, b.transfer_id) AS transfer_id, coalesce(t.timestamp, b.timestamp) AS timestamp,
       b.transfer_id IS NULL AS missing, t.id IS NULL AS stray,
       b.dpo AS row_debits_posted_step, b.cpo AS row_credits_posted_step,
       t.dpo AS debits_posted_step, t.cpo AS credits_posted_step,
       count(*) OVER () AS total
  FROM t FULL JOIN b ON b.account_id = t.account_id AND b.timestamp = t.timestamp AND b.transfer_id = t.id
 WHERE b.transfer_id IS NULL OR t.id IS NULL OR b.dpo <> t.dpo OR b.cpo <> t.cpo
 ORDER BY 1, 4
 LIMIT $2]]

local COUNTERS = { "debits_pending", "debits_posted", "credits_pending", "credits_posted" }

local function counters(row, prefix)
  local out = {}
  for _, k in ipairs(COUNTERS) do out[k] = row[(prefix or "") .. k] end
  return out
end

local function same(a, b) return tostring(a) == tostring(b) end

-- Each check: its SQL and how a row of it becomes problems (kind, ledger, details).
local CHECKS = {
  { name = "flags", sql = SQL_FLAGS, problems = function(row, add)
      local c = counters(row)
      c.id, c.flags = row.id, row.flags
      local f = row.flags
      if band(f, 6) == 6 then add("account_flags_exclusive", row.ledger, c) end
      if band(f, 65488) ~= 0 then add("account_flags_reserved", row.ledger, c) end
      if row.exceeds then add("account_exceeds_limit", row.ledger, c) end
    end },
  { name = "counters", sql = SQL_COUNTERS, problems = function(row, add)
      local sums = counters(row, "sum_")
      if row.missing then
        add("account_missing", row.ledger, { id = row.id, from_transfers = sums })
        return
      end
      local stored = counters(row)
      for _, k in ipairs(COUNTERS) do
        if not same(stored[k], sums[k]) then
          add("account_counters_mismatch", row.ledger, { id = row.id, counters = stored, from_transfers = sums })
          break
        end
      end
      if band(row.flags, 8) ~= 0 and (row.balance_rows or 0) ~= row.transfers then
        add("balance_rows_count_mismatch", row.ledger, { id = row.id, transfers = row.transfers,
                                                         balance_rows = row.balance_rows or 0 })
      end
      local closed = band(row.flags, 32) ~= 0
      if closed ~= (row.closing_holds ~= 0) then
        add("account_closed_mismatch", row.ledger, { id = row.id, closed = closed,
                                                      closing_holds = row.closing_holds })
      end
    end },
  { name = "holds", sql = SQL_HOLDS, problems = function(row, add)
      local kind = row.no_state and "hold_without_state" or row.no_transfer and "hold_state_without_transfer"
        or "hold_state_mismatch"
      add(kind, row.ledger, { id = row.id, status = row.status, expires_at = row.expires_at,
                              timeout = row.timeout, timestamp = row.timestamp })
    end },
  { name = "resolutions", sql = SQL_RESOLUTIONS, problems = function(row, add)
      local d = { id = row.id, status = query.HOLD_STATUS[row.status], posts = row.posts, voids = row.voids,
                  amount = row.amount, posted = row.posted }
      if row.no_hold then
        add("resolution_without_hold", row.ledger, d)
      else
        add("hold_resolution_mismatch", row.ledger, d)
      end
    end },
  { name = "balance_rows", sql = SQL_BALANCE_ROWS, problems = function(row, add)
      local kind = row.no_account and "balance_row_without_account" or "balance_row_without_history_flag"
      add(kind, row.ledger, { account_id = row.account_id, timestamp = row.timestamp,
                              transfer_id = row.transfer_id })
    end },
  { name = "balance_steps", sql = SQL_BALANCE_STEPS, full = true, problems = function(row, add)
      local d = { account_id = row.account_id, transfer_id = row.transfer_id, timestamp = row.timestamp }
      if row.missing then
        add("balance_row_missing", row.ledger, d)
      elseif row.stray then
        add("balance_row_mismatch", row.ledger, d)
      else
        d.debits_posted_step, d.credits_posted_step = row.debits_posted_step, row.credits_posted_step
        d.row_debits_posted_step, d.row_credits_posted_step = row.row_debits_posted_step, row.row_credits_posted_step
        add("balance_row_step_mismatch", row.ledger, d)
      end
    end },
  { name = "last_balance", sql = SQL_LAST_BALANCE, problems = function(row, add)
      add("balance_row_stale", row.ledger, { id = row.id, timestamp = row.timestamp,
        debits_posted = row.debits_posted, credits_posted = row.credits_posted,
        row_debits_posted = row.row_debits_posted, row_credits_posted = row.row_credits_posted })
    end },
}

local function ledgers_array(list)
  if list == nil then return nil end
  if type(list) ~= "table" or json.is_int(list) then
    return false, query.bad("invalid_parameter", "ledgers", "ledgers must be a list of ledger numbers")
  end
  if #list > LEDGERS_MAX then
    return false, query.bad("invalid_parameter", "ledgers", format("at most %d ledgers", LEDGERS_MAX))
  end
  local out = {}
  for i, v in ipairs(list) do
    local s, err = query.digits(v, format("ledgers[%d]", i), "4294967295", "ledger")
    if not s then return false, err end
    if s == "0" then return false, query.bad("invalid_ledger", format("ledgers[%d]", i), "a ledger is never 0") end
    out[i] = s
  end
  if #out == 0 then return false, query.bad("invalid_parameter", "ledgers", "ledgers is empty") end
  return "{" .. concat(out, ",") .. "}"
end

-- Runs one check and adds its problems (at most max rows of it) to report.
local function run_check(db, check, arr, max, report)
  local t0 = monotonic_ms()
  local found, qerr = db:query({ check.sql, arr, max, n = 2 })
  if not found then return nil, query.unavailable(qerr) end
  report.ms[check.name] = monotonic_ms() - t0
  local total = found[1] and found[1].total or 0
  local kinds = 0
  local function add(kind, ledger, details)
    details.kind, details.ledger = kind, ledger
    report.problems[#report.problems + 1] = details
    kinds = kinds + 1
  end
  for _, row in ipairs(found) do check.problems(row, add) end
  -- rows beyond the page count once each (a row may hold more than one problem)
  report.problems_count = report.problems_count + kinds + (total - #found)
  if total > #found then
    report.problems[#report.problems + 1] = { kind = "more_problems", check = check.name,
                                               not_shown = total - #found }
  end
  return true
end

local function run(db, arr, max, full)
  local report = { ok = true, problems = json.array({}), problems_count = 0, ledgers = json.array({}),
                   ms = {} }
  local t0 = monotonic_ms()
  local rows, err = db:query({ SQL_LEDGERS, arr, n = 1 })
  if not rows then return nil, query.unavailable(err) end
  report.ms.ledgers = monotonic_ms() - t0
  for i, row in ipairs(rows) do
    report.ledgers[i] = { ledger = row.ledger, accounts = row.accounts, transfers = row.transfers,
      debits_pending = row.debits_pending, credits_pending = row.credits_pending,
      debits_posted = row.debits_posted, credits_posted = row.credits_posted }
    if not row.pending_balanced then
      report.problems_count = report.problems_count + 1
      report.problems[#report.problems + 1] = { kind = "ledger_pending_unbalanced", ledger = row.ledger,
        debits_pending = row.debits_pending, credits_pending = row.credits_pending }
    end
    if not row.posted_balanced then
      report.problems_count = report.problems_count + 1
      report.problems[#report.problems + 1] = { kind = "ledger_posted_unbalanced", ledger = row.ledger,
        debits_posted = row.debits_posted, credits_posted = row.credits_posted }
    end
  end
  for _, check in ipairs(CHECKS) do
    if full or not check.full then
      local ok, cerr = run_check(db, check, arr, max, report)
      if not ok then return nil, cerr end
    end
  end
  report.ok = report.problems_count == 0
  return report
end

-- check(db [, { ledgers = { 840, ... }, problems_max = 100, full = false }]) -> report, or nil, err.
-- full: also match every balance row with its transfer (check 8), a window over all of them.
-- db: a nuvion.pg pool (the checks run in one read-only repeatable-read transaction, so they see
-- one snapshot while transfers are being posted) or a transaction already open (used as it is).
-- report = { ok, problems = { { kind, ledger, ... } }, problems_count, ledgers = { { ledger,
-- accounts, transfers, debits_pending, credits_pending, debits_posted, credits_posted } } }.
function _M.check(db, opts)
  if opts ~= nil and type(opts) ~= "table" then
    return nil, query.bad("invalid_parameter", "opts", "options must be a table")
  end
  opts = opts or {}
  local arr, err = ledgers_array(opts.ledgers)
  if arr == false then return nil, err end
  local max = opts.problems_max or PROBLEMS_MAX_DEFAULT
  if type(max) ~= "number" or max ~= floor(max) or max < 1 or max > PROBLEMS_MAX then
    return nil, query.bad("invalid_parameter", "problems_max",
                          format("problems_max must be an integer from 1 to %d", PROBLEMS_MAX))
  end
  if opts.full ~= nil and type(opts.full) ~= "boolean" then
    return nil, query.bad("invalid_parameter", "full", "full must be a boolean")
  end
  local full = opts.full == true
  if db.stats == nil then return run(db, arr, max, full) end -- a transaction: the caller's snapshot
  return db:tx(function(tx) return run(tx, arr, max, full) end, { isolation = "repeatable read", read_only = true })
end

return _M
