-- ledger_fixture.lua -- ledger rows for the read and invariant specs, written with plain SQL the
-- way a posting layer would: one event at a time, the transfer row, the hold's state, the
-- counters moved by UPDATE (the database's numeric does the 128-bit arithmetic), a balance row
-- for each history account it moved. Independent of the checker's set-based sums, so the specs
-- compare two ways of counting. Every run has its own random ledger and id prefix.
local nuvion = require "nuvion"
local json = require "nuvion.json"

local format, tostring = string.format, tostring

local _M = {}

local Fixture = {}
Fixture.__index = Fixture

local function random_digits(n)
  local out = {}
  local hex = nuvion.random_hex(n)
  for i = 1, n do out[i] = tostring(tonumber(hex:sub(2 * i - 1, 2 * i), 16) % 10) end
  return table.concat(out)
end

-- new(db) -> a fixture: its own ledger (2^31..2^32-1) and 38-digit ids ("1" .. 31 random digits
-- .. a 6-digit sequence), timestamps in ns from a random base near 9 * 10^18 (year 2255: above
-- 2^53, below 2^63), one per event. The holds' deadlines are then never due, so a posting layer
-- running in the same database (its expiry sweep) leaves this fixture's holds alone.
function _M.new(db)
  local self = setmetatable({ db = db, seq = 0, clock = 0 }, Fixture)
  self.ledger = 2147483648 + tonumber(nuvion.random_hex(4), 16) % 2147483647
  self.prefix = "1" .. random_digits(31)
  self.ts_prefix = "90" .. random_digits(5) -- 7 digits then 12 of clock: 19 digits, < 2^63
  return self
end

function Fixture:id()
  self.seq = self.seq + 1
  return self.prefix .. format("%06d", self.seq)
end

-- The next timestamp (ns) as a digit string.
function Fixture:now()
  self.clock = self.clock + 1000
  return self.ts_prefix .. format("%012d", self.clock)
end

function Fixture:q(sql, ...)
  local rows, err = self.db:query({ sql, n = select("#", ...), ... })
  if not rows then error(tostring(err) .. " in " .. sql, 2) end
  return rows
end

-- account{ flags = n, code = n } -> id
function Fixture:account(a)
  a = a or {}
  local id = a.id or self:id()
  self:q([[INSERT INTO ledger_accounts (id, debits_pending, debits_posted, credits_pending, credits_posted,
             user_data_128, user_data_64, user_data_32, ledger, code, flags, timestamp)
           VALUES ($1::numeric, 0, 0, 0, 0, $2::numeric, 0, 0, $3, $4, $5, $6::bigint)]],
         id, a.user_data_128 or "0", a.ledger or self.ledger, a.code or 10, a.flags or 0, self:now())
  return id
end

local MOVE_SQL = [[UPDATE ledger_accounts SET debits_pending = debits_pending + $2::numeric,
  debits_posted = debits_posted + $3::numeric, credits_pending = credits_pending + $4::numeric,
  credits_posted = credits_posted + $5::numeric, flags = (flags & ~32) | $6
  WHERE id = $1::numeric
  RETURNING flags, debits_pending, debits_posted, credits_pending, credits_posted]]

-- move(account, dp, dpo, cp, cpo, closed, transfer_id, ts): the deltas (digit strings, maybe
-- negative), the closed flag to set (32) or clear (0, or nil: keep), and the balance row.
function Fixture:move(account, d, transfer_id, ts)
  local closed = d.closed
  if closed == nil then
    closed = self:q("SELECT flags & 32 AS c FROM ledger_accounts WHERE id = $1::numeric", account)[1].c
  end
  local row = self:q(MOVE_SQL, account, d.dp or "0", d.dpo or "0", d.cp or "0", d.cpo or "0", closed)[1]
  assert(row, "no account " .. account)
  if transfer_id and row.flags % 16 >= 8 then
    self:q([[INSERT INTO ledger_account_balances (account_id, timestamp, transfer_id, debits_pending,
               debits_posted, credits_pending, credits_posted)
             VALUES ($1::numeric, $2::bigint, $3::numeric, $4, $5, $6, $7)]],
           account, ts, transfer_id, row.debits_pending, row.debits_posted, row.credits_pending,
           row.credits_posted)
  end
end

local function neg(v) return "-" .. tostring(v) end

function Fixture:insert_transfer(t)
  self:q([[INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, pending_id,
             user_data_128, user_data_64, user_data_32, timeout, ledger, code, flags, timestamp)
           VALUES ($1::numeric, $2::numeric, $3::numeric, $4::numeric, $5::numeric, $6::numeric,
                   $7::numeric, $8, $9, $10, $11, $12, $13::bigint)]],
         t.id, t.debit_account_id, t.credit_account_id, tostring(t.amount), t.pending_id or "0",
         t.user_data_128 or "0", t.user_data_64 or "0", t.user_data_32 or 0, t.timeout or 0,
         t.ledger or self.ledger, t.code or 1, t.flags or 0, t.timestamp)
end

-- transfer{ debit, credit, amount, flags?, code?, user_data_* } -> id, timestamp (single-phase)
function Fixture:transfer(t)
  local id, ts = t.id or self:id(), self:now()
  self:insert_transfer({ id = id, debit_account_id = t.debit, credit_account_id = t.credit,
                         amount = t.amount, flags = t.flags, code = t.code, timestamp = ts,
                         user_data_128 = t.user_data_128, user_data_64 = t.user_data_64,
                         user_data_32 = t.user_data_32 })
  self:move(t.debit, { dpo = tostring(t.amount) }, id, ts)
  self:move(t.credit, { cpo = tostring(t.amount) }, id, ts)
  return id, ts
end

-- hold{ debit, credit, amount, timeout?, closing = "debit" | "credit" } -> id, timestamp
function Fixture:hold(t)
  local id, ts = t.id or self:id(), self:now()
  local flags = 2 + (t.closing == "debit" and 64 or 0) + (t.closing == "credit" and 128 or 0)
  self:insert_transfer({ id = id, debit_account_id = t.debit, credit_account_id = t.credit,
                         amount = t.amount, flags = flags, timeout = t.timeout, timestamp = ts })
  local expires = nil
  if (t.timeout or 0) > 0 then
    expires = self:q("SELECT ($1::numeric + $2::numeric * 1000000000)::bigint AS e", ts, t.timeout)[1].e
  end
  self:q([[INSERT INTO ledger_holds (id, debit_account_id, credit_account_id, status, expires_at)
           VALUES ($1::numeric, $2::numeric, $3::numeric, 1, $4::bigint)]],
         id, t.debit, t.credit, expires and tostring(expires) or json.null)
  self:move(t.debit, { dp = tostring(t.amount), closed = t.closing == "debit" and 32 or nil }, id, ts)
  self:move(t.credit, { cp = tostring(t.amount), closed = t.closing == "credit" and 32 or nil }, id, ts)
  return id, ts
end

function Fixture:hold_row(pending_id)
  local h = self:q([[SELECT t.debit_account_id::text AS d, t.credit_account_id::text AS c,
                            t.amount::text AS amount, t.flags, t.code FROM ledger_transfers t
                     WHERE t.id = $1::numeric]], pending_id)[1]
  assert(h, "no hold " .. pending_id)
  return h
end

-- resolve(pending_id, how, amount?): "post" (amount or all), "void", or "expire" (no row).
function Fixture:resolve(pending_id, how, amount)
  local h = self:hold_row(pending_id)
  local status = ({ post = 2, void = 3, expire = 4 })[how]
  self:q("UPDATE ledger_holds SET status = $2 WHERE id = $1::numeric AND status = 1", pending_id, status)
  local reopen = {}
  if h.flags % 128 >= 64 then reopen.d = 0 end
  if h.flags % 256 >= 128 then reopen.c = 0 end
  if how == "expire" then
    self:move(h.d, { dp = neg(h.amount), closed = reopen.d })
    self:move(h.c, { cp = neg(h.amount), closed = reopen.c })
    return
  end
  local id, ts = self:id(), self:now()
  local moved = how == "post" and tostring(amount or h.amount) or "0"
  self:insert_transfer({ id = id, debit_account_id = h.d, credit_account_id = h.c,
                         amount = how == "post" and moved or h.amount, pending_id = pending_id,
                         flags = how == "post" and 4 or 8, code = h.code, timestamp = ts })
  self:move(h.d, { dp = neg(h.amount), dpo = moved, closed = reopen.d }, id, ts)
  self:move(h.c, { cp = neg(h.amount), cpo = moved, closed = reopen.c }, id, ts)
  return id, ts
end

_M.Fixture = Fixture
return _M
