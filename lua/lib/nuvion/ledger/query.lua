-- query.lua -- the ledger's reads: lookups, balances, history, point-in-time balances.
-- Plain parameterised queries through a nuvion.pg pool (or transaction) `db`; nuvion.ledger
-- delegates its read methods here. Every value read back is exact: Postgres does the 128-bit
-- arithmetic in numeric, and nuvion.pg returns integers beyond 2^53 as json.int.
-- Bad input returns nil, { code, message, param } before any SQL is sent; a failure of the
-- database returns nil, { code = "ledger_unavailable", message, retryable = true, cause }.
local json = require "nuvion.json"

local type, tostring, tonumber, setmetatable, ipairs, pairs, math_floor =
  type, tostring, tonumber, setmetatable, ipairs, pairs, math.floor
local format, find, gsub, concat = string.format, string.find, string.gsub, table.concat

local U128_MAX = "340282366920938463463374607431768211455" -- 2^128-1, 39 digits
local I63_MAX = "9223372036854775807"                        -- 2^63-1: bigint, ns timestamps
local EXACT_MAX = 2 ^ 53                                      -- the largest exact Lua number here

local IDS_MAX = 8189        -- ids of one lookup: TigerBeetle's batch
local LIMIT_DEFAULT = 100   -- history entries per page
local LIMIT_MAX = 1000

local HOLD_STATUS = { [1] = "pending", [2] = "posted", [3] = "voided", [4] = "expired" }
local F_PENDING, F_HISTORY = 2, 8

local _M = {
  IDS_MAX = IDS_MAX, LIMIT_DEFAULT = LIMIT_DEFAULT, LIMIT_MAX = LIMIT_MAX,
  HOLD_STATUS = HOLD_STATUS, U128_MAX = U128_MAX, I63_MAX = I63_MAX,
}

local err_mt = { __tostring = function(e) return e.code .. ": " .. e.message end }

local function bad(code, param, message)
  return setmetatable({ code = code, param = param, message = message }, err_mt)
end
_M.bad = bad

local function unavailable(cause)
  return setmetatable({ code = "ledger_unavailable", message = "ledger database: " .. tostring(cause),
                        retryable = true, cause = cause }, err_mt)
end
_M.unavailable = unavailable

-- digits(v, param, max, what) -> the decimal text of a non-negative integer <= max (a digit
-- string of at most #max digits), or nil, err. Accepts a Lua number that is an exact integer
-- (<= 2^53), a json.int, or a string of decimal digits (leading zeros dropped).
local function digits(v, param, max, what)
  local s
  local tv = type(v)
  if tv == "number" then
    if v ~= v or v < 0 or v ~= math_floor(v) then
      return nil, bad("invalid_" .. what, param, param .. " must be a non-negative integer, got " .. tostring(v))
    end
    if v > EXACT_MAX then
      return nil, bad("invalid_" .. what, param, param .. " is above 2^53 as a Lua number, where it may not be " ..
                      "exact: pass a json.int or a string of digits")
    end
    s = format("%.0f", v)
  elseif tv == "string" or json.is_int(v) then
    s = tostring(v)
    if not find(s, "^%d+$") then
      local shown = #s > 50 and (s:sub(1, 50) .. "...") or s
      return nil, bad("invalid_" .. what, param, param .. " must be a string of decimal digits, got " ..
                      format("%q", shown))
    end
    s = gsub(s, "^0+(%d)", "%1")
  else
    return nil, bad("invalid_" .. what, param, param .. " must be an integer (number, json.int or digit string), got "
                    .. tv)
  end
  if #s > #max or (#s == #max and s > max) then
    return nil, bad("invalid_" .. what, param, param .. " is out of range (at most " .. max .. ")")
  end
  return s
end
_M.digits = digits

-- value_of(s) -> digit text as nuvion.pg reads it back: a number up to 2^53, else a json.int.
local function value_of(s)
  if #s < 16 or (#s == 16 and s <= "9007199254740992") then return tonumber(s) end
  return json.int(s)
end
_M.value_of = value_of

-- id_text(v, param) -> the id as decimal text (1..2^128-1), or nil, err.
local function id_text(v, param)
  local s, err = digits(v, param, U128_MAX, "id")
  if not s then return nil, err end
  if s == "0" then return nil, bad("invalid_id", param, param .. " must not be zero") end
  return s
end
_M.id_text = id_text

-- ts_text(v, param) -> a timestamp in ns (0..2^63-1) as decimal text, nil when v is nil, or false, err.
local function ts_text(v, param)
  if v == nil or v == json.null then return nil end
  local s, err = digits(v, param, I63_MAX, "timestamp")
  if not s then return false, err end
  return s
end

local function normal_of(opts, param)
  local n = opts and opts.normal
  if n == nil or n == "credit" then return "credit" end
  if n == "debit" then return "debit" end
  return nil, bad("invalid_parameter", param or "normal", "normal must be \"credit\" or \"debit\", got " .. tostring(n))
end

local function check_opts(opts, param)
  if opts ~= nil and type(opts) ~= "table" then
    return nil, bad("invalid_parameter", param or "opts", "options must be a table, got " .. type(opts))
  end
  return true
end

-- The three balances of Modern Treasury from the four counters, in SQL numeric (exact, signed).
-- %s is the row alias's prefix ("a." or "b."). Credit-normal; debit-normal swaps the sides.
local BALANCES_SQL = {
  credit = "%scredits_posted - %sdebits_posted AS posted, "
        .. "(%scredits_posted + %scredits_pending) - (%sdebits_posted + %sdebits_pending) AS pending, "
        .. "%scredits_posted - %sdebits_posted - %sdebits_pending AS available",
  debit = "%sdebits_posted - %scredits_posted AS posted, "
       .. "(%sdebits_posted + %sdebits_pending) - (%scredits_posted + %scredits_pending) AS pending, "
       .. "%sdebits_posted - %scredits_posted - %scredits_pending AS available",
}
local function balances_sql(normal, alias)
  return (gsub(BALANCES_SQL[normal], "%%s", alias))
end

local COUNTERS = { "debits_pending", "debits_posted", "credits_pending", "credits_posted" }

local function copy_balances(row, out)
  for i = 1, #COUNTERS do out[COUNTERS[i]] = row[COUNTERS[i]] end
  out.posted, out.pending, out.available = row.posted, row.pending, row.available
  return out
end

-- ids_array(ids, param) -> a Postgres array literal of the ids ("{1,2}"), or nil, err.
local function ids_array(ids, param)
  if type(ids) ~= "table" or json.is_int(ids) then
    return nil, bad("invalid_parameter", param, param .. " must be a list of ids, got " .. type(ids))
  end
  local n = #ids
  if n > IDS_MAX then
    return nil, bad("too_many_ids", param, format("%s holds %d ids; at most %d per lookup", param, n, IDS_MAX))
  end
  local out = {}
  for i = 1, n do
    local s, err = id_text(ids[i], format("%s[%d]", param, i))
    if not s then return nil, err end
    out[i] = s
  end
  return "{" .. concat(out, ",") .. "}", n
end

local ACCOUNT_FIELDS = { "id", "debits_pending", "debits_posted", "credits_pending", "credits_posted",
  "user_data_128", "user_data_64", "user_data_32", "ledger", "code", "flags", "timestamp" }
local TRANSFER_FIELDS = { "id", "debit_account_id", "credit_account_id", "amount", "pending_id",
  "user_data_128", "user_data_64", "user_data_32", "timeout", "ledger", "code", "flags", "timestamp" }

local function pick(row, fields)
  local out = {}
  for i = 1, #fields do out[fields[i]] = row[fields[i]] end
  return out
end

local SQL_LOOKUP_ACCOUNTS = [[
SELECT a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
       a.user_data_128, a.user_data_64, a.user_data_32, a.ledger, a.code, a.flags, a.timestamp
  FROM unnest($1::numeric[]) WITH ORDINALITY AS q(id, n)
  JOIN ledger_accounts a ON a.id = q.id
 ORDER BY q.n]]

-- lookup_accounts(db, ids) -> the accounts found, in the order of ids (missing ones left out).
function _M.lookup_accounts(db, ids)
  local arr, n = ids_array(ids, "ids")
  if not arr then return nil, n end
  if n == 0 then return json.array({}) end
  local rows, err = db:query(SQL_LOOKUP_ACCOUNTS, arr)
  if not rows then return nil, unavailable(err) end
  local out = json.array({})
  for i = 1, #rows do out[i] = pick(rows[i], ACCOUNT_FIELDS) end
  return out
end

local SQL_LOOKUP_TRANSFERS = [[
SELECT t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id,
       t.user_data_128, t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, t.flags,
       t.timestamp, h.status, h.expires_at
  FROM unnest($1::numeric[]) WITH ORDINALITY AS q(id, n)
  JOIN ledger_transfers t ON t.id = q.id
  LEFT JOIN ledger_holds h ON h.id = t.id AND t.flags & 2 <> 0
 ORDER BY q.n]]

-- lookup_transfers(db, ids) -> the transfers found, in the order of ids; a hold (pending flag)
-- carries `status` (pending, posted, voided, expired) and `expires_at` (ns) when it has a timeout.
function _M.lookup_transfers(db, ids)
  local arr, n = ids_array(ids, "ids")
  if not arr then return nil, n end
  if n == 0 then return json.array({}) end
  local rows, err = db:query(SQL_LOOKUP_TRANSFERS, arr)
  if not rows then return nil, unavailable(err) end
  local out = json.array({})
  for i = 1, #rows do
    local row = rows[i]
    local t = pick(row, TRANSFER_FIELDS)
    if row.flags % (2 * F_PENDING) >= F_PENDING then
      t.status = HOLD_STATUS[row.status] or "unknown" -- a hold without its state row: see ledger_check
      t.expires_at = row.expires_at
    end
    out[i] = t
  end
  return out
end

local SQL_BALANCES = {}
for normal in pairs(BALANCES_SQL) do
  SQL_BALANCES[normal] = "SELECT a.id, a.ledger, a.flags, a.debits_pending, a.debits_posted, "
    .. "a.credits_pending, a.credits_posted, " .. balances_sql(normal, "a.")
    .. " FROM ledger_accounts a WHERE a.id = $1::numeric"
end

-- balances(db, id [, { normal = "credit" | "debit" }]) -> the four counters and the three
-- balances (posted, pending, available; negative when the account is on its other side).
function _M.balances(db, id, opts)
  local ok, oerr = check_opts(opts)
  if not ok then return nil, oerr end
  local s, err = id_text(id, "id")
  if not s then return nil, err end
  local normal, nerr = normal_of(opts)
  if not normal then return nil, nerr end
  local rows, qerr = db:query(SQL_BALANCES[normal], s)
  if not rows then return nil, unavailable(qerr) end
  local row = rows[1]
  if not row then return nil, bad("account_not_found", "id", "no account " .. s) end
  return copy_balances(row, { id = row.id, ledger = row.ledger, normal = normal })
end

local SQL_ACCOUNT_FLAGS = "SELECT flags FROM ledger_accounts WHERE id = $1::numeric"

-- history_account(db, s) -> true when the account exists with the history flag, or nil, err.
local function history_account(db, s)
  local rows, err = db:query(SQL_ACCOUNT_FLAGS, s)
  if not rows then return nil, unavailable(err) end
  if not rows[1] then return nil, bad("account_not_found", "id", "no account " .. s) end
  local flags = rows[1].flags
  if flags % (2 * F_HISTORY) < F_HISTORY then
    return nil, bad("history_not_enabled", "id", "account " .. s .. " has no history flag: its past balances " ..
                    "are not kept")
  end
  return true
end

-- The posted entries of one account: its balance rows whose transfer changed the posted
-- counters (single-phase transfers and posts: neither the pending nor the void flag, amount > 0).
-- $2 after (exclusive), $3 from (inclusive), $4 before (exclusive), $5 to (inclusive), $6 rows.
-- The transfer is looked up row by row (OFFSET 0 keeps the subquery apart) while the balance
-- rows come in index order, so a page costs its own rows: the planner, left to itself, takes
-- the flags filter for a selective one and hash-joins every transfer (300 ms at 100,000 rows
-- instead of 0.4 ms).
local HISTORY_SQL = [[
SELECT b.timestamp, b.transfer_id, b.debits_pending, b.debits_posted, b.credits_pending,
       b.credits_posted, %s,
       t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.user_data_128,
       t.user_data_64, t.user_data_32, t.ledger, t.code, t.flags,
       CASE WHEN t.debit_account_id = b.account_id THEN 'debit' ELSE 'credit' END AS direction
  FROM ledger_account_balances b
 CROSS JOIN LATERAL (SELECT * FROM ledger_transfers t WHERE t.id = b.transfer_id OFFSET 0) t
 WHERE b.account_id = $1::numeric
   AND b.timestamp > coalesce($2::bigint, -1)
   AND b.timestamp >= coalesce($3::bigint, 0)
   AND b.timestamp < coalesce($4::bigint, 9223372036854775807)
   AND b.timestamp <= coalesce($5::bigint, 9223372036854775807)
   AND t.flags & 10 = 0 AND t.amount > 0
 ORDER BY b.timestamp %s
 LIMIT $6]]

local SQL_HISTORY = {}
for normal in pairs(BALANCES_SQL) do
  SQL_HISTORY[normal] = {
    asc = format(HISTORY_SQL, balances_sql(normal, "b."), "ASC"),
    desc = format(HISTORY_SQL, balances_sql(normal, "b."), "DESC"),
  }
end

local ENTRY_FIELDS = { "transfer_id", "timestamp", "amount", "pending_id", "debit_account_id",
  "credit_account_id", "user_data_128", "user_data_64", "user_data_32", "ledger", "code", "flags" }

local function history_opts(opts)
  local ok, oerr = check_opts(opts)
  if not ok then return nil, oerr end
  opts = opts or {}
  local limit = opts.limit
  if limit == nil then
    limit = LIMIT_DEFAULT
  elseif type(limit) ~= "number" or limit ~= math_floor(limit) or limit < 1 or limit > LIMIT_MAX then
    return nil, bad("invalid_parameter", "limit", format("limit must be an integer from 1 to %d, got %s",
                    LIMIT_MAX, tostring(limit)))
  end
  local q = { limit = limit }
  for _, k in ipairs({ "after", "before", "from", "to" }) do
    local s, err = ts_text(opts[k], k)
    if s == false then return nil, err end
    q[k] = s
  end
  local normal, nerr = normal_of(opts)
  if not normal then return nil, nerr end
  q.normal = normal
  return q
end

-- history(db, id [, { limit, after, before, from, to, normal }]) -> { data = entries, has_more }.
-- Entries in time order. `after` pages forward (entries after that timestamp); `before` alone
-- pages backward (the `limit` entries just before it, still in time order); has_more says
-- whether more entries lie beyond the page in the direction of travel. from/to: inclusive range.
function _M.history(db, id, opts)
  local s, err = id_text(id, "id")
  if not s then return nil, err end
  local q, qerr = history_opts(opts)
  if not q then return nil, qerr end
  local ok, herr = history_account(db, s)
  if not ok then return nil, herr end
  local backward = q.before ~= nil and q.after == nil
  local sql = SQL_HISTORY[q.normal][backward and "desc" or "asc"]
  local rows, rerr = db:query({ sql, s, q.after, q.from, q.before, q.to, q.limit + 1, n = 6 })
  if not rows then return nil, unavailable(rerr) end
  local n = #rows
  local has_more = n > q.limit
  if has_more then n = q.limit end
  local data = json.array({})
  for i = 1, n do
    local row = rows[backward and (n + 1 - i) or i]
    local e = pick(row, ENTRY_FIELDS)
    e.direction = row.direction
    data[i] = copy_balances(row, e)
  end
  return { data = data, has_more = has_more }
end

-- The counters after the account's last row at or before $2, less the holds that expired
-- after that row and by $2 (an expiry writes no row; sql/ledger/0002_holds_by_account.sql).
local SQL_BALANCE_AT = {}
for normal in pairs(BALANCES_SQL) do
  SQL_BALANCE_AT[normal] = "WITH b AS (SELECT timestamp, transfer_id, debits_pending, debits_posted, "
    .. "credits_pending, credits_posted FROM ledger_account_balances WHERE account_id = $1::numeric "
    .. "AND timestamp <= $2::bigint ORDER BY timestamp DESC LIMIT 1), "
    .. "e AS (SELECT coalesce(sum(t.amount) FILTER (WHERE h.debit_account_id = $1::numeric), 0) AS dp, "
    .. "coalesce(sum(t.amount) FILTER (WHERE h.credit_account_id = $1::numeric), 0) AS cp "
    .. "FROM b, ledger_holds h JOIN ledger_transfers t ON t.id = h.id "
    .. "WHERE (h.debit_account_id = $1::numeric OR h.credit_account_id = $1::numeric) AND h.status = 4 "
    .. "AND h.expires_at > b.timestamp AND h.expires_at <= $2::bigint) "
    .. "SELECT x.*, " .. balances_sql(normal, "x.") .. " FROM (SELECT b.timestamp, b.transfer_id, "
    .. "b.debits_pending - e.dp AS debits_pending, b.debits_posted, b.credits_pending - e.cp AS credits_pending, "
    .. "b.credits_posted FROM b, e) x"
end

-- balance_at(db, id, ts_ns [, { normal }]) -> the counters and balances at ts_ns: after the last
-- transfer at or before it (all zero before the first one), with that transfer's id and
-- timestamp, less the holds that had expired by ts_ns since (their deadline passed and the
-- ledger expired them: a due hold not yet swept, at most the sweep's interval, still counts).
function _M.balance_at(db, id, ts_ns, opts)
  local ok, oerr = check_opts(opts)
  if not ok then return nil, oerr end
  local s, err = id_text(id, "id")
  if not s then return nil, err end
  if ts_ns == nil or ts_ns == json.null then return nil, bad("invalid_timestamp", "ts_ns", "ts_ns is required") end
  local ts, terr = ts_text(ts_ns, "ts_ns")
  if not ts then return nil, terr end
  local normal, nerr = normal_of(opts)
  if not normal then return nil, nerr end
  local hok, herr = history_account(db, s)
  if not hok then return nil, herr end
  local rows, qerr = db:query(SQL_BALANCE_AT[normal], s, ts)
  if not rows then return nil, unavailable(qerr) end
  local row = rows[1]
  if not row then
    return { id = value_of(s), normal = normal, debits_pending = 0, debits_posted = 0, credits_pending = 0,
             credits_posted = 0, posted = 0, pending = 0, available = 0 }
  end
  return copy_balances(row, { id = value_of(s), normal = normal, timestamp = row.timestamp,
                              transfer_id = row.transfer_id })
end

return _M
