-- wallets/limits.lua -- the onboarding tiers' limits (lua/lib/nuvion/rules/onboarding.lua) on the
-- wallets owned by a customer (docs/wallets.md "Tier limits"). Partners' wallets never come here.
--
-- Each movement into a customer's wallet (transfer credit side, test funding, internal credit)
-- must keep its balance (posted + pending credits) within max_balance and its rolling 24 h
-- inflow within daily_in; each movement out of one (transfer debit side, internal debit, hold)
-- its rolling 24 h outflow within daily_out. Tier 0, or an asset the tier does not list: nothing.
--
-- Serialisation: guard() runs inside the caller's core transaction and
--   1. locks the customers' wallet rows (SELECT ... ORDER BY id FOR UPDATE: two wallets are
--      always locked in the same order, so two transfers between them cannot deadlock),
--   2. then, in a second statement of the same pipeline (READ COMMITTED: a fresh snapshot taken
--      after the lock, so it sees every movement committed by the lock's previous holder), reads
--      the customer's tier and the wallet's usage of the last 24 h from wallet_limit_usage,
--   3. checks; reads the ledger balance for an inflow (the previous holder's ledger transfer
--      committed before it released the lock: the ledger call is made under the lock),
--   4. makes the ledger call, and on ok / exists queues the usage rows (tx:defer, sent with the
--      caller's next statement or COMMIT; ON CONFLICT DO NOTHING on (wallet, ledger transfer
--      id): a retry never counts twice).
-- The lock is held until the caller commits its own rows, so two racing movements of one wallet
-- run one after the other and cannot together pass a limit.
local api = require "nuvion.api"
local rules = require "nuvion.rules.onboarding"

local type, tostring, tonumber, format, concat, sort, huge, rep =
  type, tostring, tonumber, string.format, table.concat, table.sort, math.huge, string.rep
local errors = api.errors

local _M = {}

_M.CODE = "tier_limit_exceeded"
_M.STATUS = 403
_M.WINDOW = "24 hours"
_M.KEEP = "2 days"      -- rows older than this are pruned by their wallet's next movement

-- A value as an exact Lua number, or math.huge beyond 15 digits (every limit is far below 2^53,
-- so a value that large is over any of them).
local function num(v)
  if type(v) == "number" then return v end
  local s = tostring(v)
  if #s <= 15 then return tonumber(s) or huge end
  return huge
end
_M.num = num

local function text(v)
  if type(v) == "number" then return format("%.0f", v) end
  return tostring(v)
end

-- minor units as a decimal amount: 250000, 2 -> "2500.00"
local function money(v, exponent, asset)
  local s = v == huge and "more than 2^53" or format("%.0f", v)
  exponent = exponent or 0
  if exponent > 0 and v ~= huge then
    if #s <= exponent then s = rep("0", exponent - #s + 1) .. s end
    s = s:sub(1, #s - exponent) .. "." .. s:sub(-exponent)
  end
  return s .. " " .. asset
end

local function refuse(m, message)
  return errors.new(_M.STATUS, _M.CODE, message, m.param)
end

local function tier_name(tier)
  local t = rules.tiers[tier]
  return "tier " .. tier .. (t and (" (" .. t.name .. ")") or "")
end

-- The outcome refusing move m, or nil when it fits. u = { tier, used_in, used_out }.
local function check(lg, m, u)
  local w, tier = m.w, u.tier
  local lim = rules.limits(tier, w.asset)
  if tier == 0 then
    return refuse(m, "Wallet " .. w.id .. " belongs to customer " .. w.owner_id .. ", at " .. tier_name(0)
      .. ": an unverified customer's wallet can neither receive nor send money.")
  end
  if not lim then
    return refuse(m, "Wallet " .. w.id .. " holds " .. w.asset .. ", which " .. tier_name(tier)
      .. " of customer " .. w.owner_id .. " does not allow: it can neither receive nor send money.")
  end
  local amount = num(m.amount)
  local function over(field, limit, span, have, what)
    return refuse(m, "Wallet " .. w.id .. ": the " .. field .. " limit of customer " .. w.owner_id .. "'s "
      .. tier_name(tier) .. " is " .. money(limit, m.exponent, w.asset) .. span .. "; " .. what .. " "
      .. money(have, m.exponent, w.asset) .. ", so " .. money(amount, m.exponent, w.asset) .. " more is refused.")
  end
  if m.dir == "out" then
    local used = num(u.used_out)
    if used + amount > lim.daily_out then return over("daily_out", lim.daily_out, " over 24 h", used, "it sent") end
    return nil
  end
  local used = num(u.used_in)
  if used + amount > lim.daily_in then return over("daily_in", lim.daily_in, " over 24 h", used, "it received") end
  local b, err = lg:balances(w.ledger_account_id)
  if not b then
    api.log_error("ledger balances failed", err and err.code)
    return errors.unavailable("The ledger is unavailable, try again.")
  end
  -- what the balance can reach: posted, plus credits still pending (a hold's void gives its
  -- money back, so pending debits do not lower it)
  local cp, cpend, dp = num(b.credits_posted), num(b.credits_pending), num(b.debits_posted)
  local balance = (cp == huge or cpend == huge) and huge or cp + cpend - dp
  if balance + amount > lim.max_balance then
    return over("max_balance", lim.max_balance, "", balance, "it holds")
  end
  return nil
end

-- Runs the ledger call `call()` (a transfer or a hold) for `moves`, inside the caller's core
-- transaction `tx`, once the limits allow it. moves: 1 or 2 of { w = wallet (a customer's),
-- dir = "in" | "out", amount, param, exponent }; lid: the ledger transfer's id; keyed: lid names
-- the request (Idempotency-Key or reference), so the ledger may already have it.
-- Returns call()'s values (result, err), or nil, nil, outcome when refused or core's database
-- failed (nothing moved, nothing recorded).
function _M.guard(tx, lg, moves, lid, keyed, call)
  local ids = {}
  for i, m in ipairs(moves) do ids[i] = m.w.id end
  sort(ids)
  local ph = {}
  for i = 1, #ids do ph[i] = "$" .. i end
  local lid_ph = "$" .. (#ids + 1) .. "::numeric"
  local lock = { "SELECT id FROM wallets WHERE id IN (" .. concat(ph, ", ") .. ") ORDER BY id FOR UPDATE",
                 n = #ids }
  local usage = { "SELECT w.id, coalesce(c.tier, 0) AS tier, u.used_in, u.used_out, "
    .. "EXISTS (SELECT 1 FROM wallet_limit_usage x WHERE x.wallet_id = w.id AND x.ledger_transfer_id = " .. lid_ph
    .. ") AS counted FROM wallets w LEFT JOIN customers c ON c.id = w.owner_id AND c.partner_id = w.partner_id "
    .. "AND c.mode = w.mode CROSS JOIN LATERAL (SELECT "
    .. "coalesce(sum(amount) FILTER (WHERE direction = 'in'), 0)::text AS used_in, "
    .. "coalesce(sum(amount) FILTER (WHERE direction = 'out'), 0)::text AS used_out "
    .. "FROM wallet_limit_usage WHERE wallet_id = w.id AND created_at > clock_timestamp() - interval '"
    .. _M.WINDOW .. "') u WHERE w.id IN (" .. concat(ph, ", ") .. ")", n = #ids + 1 }
  -- the owners' rows shared-locked before their tier is read: an erasure (which locks its row,
  -- then checks the wallets are empty) cannot commit between this read and this movement
  local owners = { "SELECT c.id FROM customers c JOIN wallets w ON w.owner_id = c.id AND w.owner_type = 'customer' "
    .. "WHERE w.id IN (" .. concat(ph, ", ") .. ") ORDER BY c.id FOR SHARE OF c", n = #ids }
  for i, id in ipairs(ids) do lock[i + 1], owners[i + 1], usage[i + 1] = id, id, id end
  usage[#ids + 2] = lid
  local res, err = tx:pipeline({ lock, owners, usage })
  if not res or err then
    api.log_error("wallet limits read failed", err)
    return nil, nil, errors.unavailable()
  end
  local by = {}
  for _, row in ipairs(res[3]) do by[row.id] = row end
  local counted = true
  for _, m in ipairs(moves) do
    local row = by[m.w.id]
    if not row then return nil, nil, errors.not_found("wallet", m.w.id, m.param) end
    row.tier = tonumber(row.tier) or 0
    if not row.counted then counted = false end
  end
  -- every side already counted under this ledger id: a retry, which the ledger answers `exists`
  -- (or exists_with_different_*) without moving anything
  if not counted then
    for _, m in ipairs(moves) do
      local refused = check(lg, m, by[m.w.id])
      if refused then
        if refused.code ~= _M.CODE or not keyed then return nil, nil, refused end
        -- a retry of a movement whose usage was never recorded (core stopped between the ledger
        -- and its commit) may be refused by its own amount: the ledger knows it
        local found = lg:lookup_transfers({ lid })
        if not (found and found[1]) then return nil, nil, refused end
        break
      end
    end
  end
  local r, lerr = call()
  if r == "ok" or r == "exists" then
    local values, args = {}, { n = 0 }
    for i, m in ipairs(moves) do
      local k = (i - 1) * 4
      values[i] = format("($%d, $%d::numeric, $%d, $%d::numeric)", k + 1, k + 2, k + 3, k + 4)
      args[k + 1], args[k + 2], args[k + 3], args[k + 4] = m.w.id, lid, m.dir, text(m.amount)
      args.n = k + 4
    end
    local ins = { "INSERT INTO wallet_limit_usage (wallet_id, ledger_transfer_id, direction, amount) VALUES "
      .. concat(values, ", ") .. " ON CONFLICT (wallet_id, ledger_transfer_id) DO NOTHING", n = args.n }
    for i = 1, args.n do ins[i + 1] = args[i] end
    tx:defer(ins)
    local prune = { "DELETE FROM wallet_limit_usage WHERE wallet_id IN (" .. concat(ph, ", ")
      .. ") AND created_at < clock_timestamp() - interval '" .. _M.KEEP .. "'", n = #ids }
    for i, id in ipairs(ids) do prune[i + 1] = id end
    tx:defer(prune)
  end
  return r, lerr
end

-- The daily-out allowance a hold took, given back: by its void (all of it) or a partial capture
-- (what was not captured). Best effort outside any lock: it only lowers the usage.
function _M.release(db, w, hold_lid, captured)
  local rows, err
  if captured then
    rows, err = db:query("UPDATE wallet_limit_usage SET amount = least(amount, $3::numeric) WHERE wallet_id = $1 "
      .. "AND ledger_transfer_id = $2::numeric AND direction = 'out'", w.id, hold_lid, text(captured))
  else
    rows, err = db:query("UPDATE wallet_limit_usage SET amount = 0 WHERE wallet_id = $1 "
      .. "AND ledger_transfer_id = $2::numeric AND direction = 'out'", w.id, hold_lid)
  end
  if not rows then api.log_error("wallet limit release failed", err) end
  return rows ~= nil
end

return _M
