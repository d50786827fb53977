-- nuvion.ledger.query against the real ledger database (NUVION_LEDGER_DATABASE_URL, migrated by
-- `bin/nuvion migrate --all`): lookups, the three balances, history pages and ranges, balances
-- at an instant, 128-bit values, bad input. The rows are written by spec/ledger_fixture.lua in a
-- ledger of this run's own.
local pg = require "nuvion.pg"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local query = require "nuvion.ledger.query"
local fixture = require "spec.ledger_fixture"

local URL = os.getenv("NUVION_LEDGER_DATABASE_URL")

local U127 = "170141183460469231731687303715884118073" -- 2^127 + 12345
local U64_MAX = "18446744073709551615"

-- exact digits of a value read back (a number up to 2^53, else a json.int), for comparisons
local function s(v)
  if v == nil or json.is_int(v) then return v and tostring(v) end
  return tostring(json.int(v))
end

describe("nuvion.ledger.query", function()
  local db, f
  local wallet, cash, big1, big2, pager
  local t = {} -- ids and timestamps of the story

  lazy_setup(function()
    assert(URL, "NUVION_LEDGER_DATABASE_URL is not set: run the specs with make test")
    db = pg.pool(URL, { max = 2 })
    f = fixture.new(db)
    wallet = f:account({ flags = 2 + 8 })   -- a customer's wallet: debits_must_not_exceed_credits, history
    cash = f:account({ flags = 0 })         -- the other side, no history
    t.fund, t.fund_ts = f:transfer({ debit = cash, credit = wallet, amount = 1000, code = 7,
                                     user_data_128 = "42", user_data_64 = U64_MAX, user_data_32 = 9 })
    t.hold1, t.hold1_ts = f:hold({ debit = wallet, credit = cash, amount = 300, timeout = 60 })
    t.post1, t.post1_ts = f:resolve(t.hold1, "post", 200)
    t.hold2 = f:hold({ debit = wallet, credit = cash, amount = 100 })
    t.void2 = f:resolve(t.hold2, "void")
    t.pay, t.pay_ts = f:transfer({ debit = wallet, credit = cash, amount = 50 })
    t.hold3 = f:hold({ debit = wallet, credit = cash, amount = 40 })
    t.hold4 = f:hold({ debit = cash, credit = wallet, amount = 25, timeout = 1 })
    t.hold5 = f:hold({ debit = cash, credit = wallet, amount = 5, timeout = 1 })
    f:resolve(t.hold5, "expire")
  end)

  describe("lookup_accounts", function()
    it("returns the accounts found in the order asked, leaving out unknown ids", function()
      local res = assert(query.lookup_accounts(db, { cash, f.prefix .. "999999", json.int(wallet) }))
      assert.equals(2, #res)
      assert.equals(cash, s(res[1].id))
      assert.equals(wallet, s(res[2].id))
      assert.equals(f.ledger, res[2].ledger)
      assert.equals(10, res[2].flags)
      assert.equals(10, res[2].code)
      assert.equals(40, res[2].debits_pending)
      assert.equals(250, res[2].debits_posted)
      assert.equals(25, res[2].credits_pending)
      assert.equals(1000, res[2].credits_posted)
      assert.truthy(json.is_int(res[2].timestamp)) -- ns since 1970: beyond 2^53
      assert.equals("[]", json.encode(assert(query.lookup_accounts(db, {}))))
    end)
  end)

  describe("lookup_transfers", function()
    it("returns transfers with each hold's status, and no failed id", function()
      local failed = f:id()
      f:q("INSERT INTO ledger_failed_transfers (id, result, timestamp) VALUES ($1::numeric, $2, 1)", failed,
          "exceeds_credits")
      local res = assert(query.lookup_transfers(db, { t.fund, t.hold1, t.post1, failed, t.hold2, t.hold3, t.hold5 }))
      assert.equals(6, #res)
      assert.equals(t.fund, s(res[1].id))
      assert.is_nil(res[1].status)
      assert.equals(1000, res[1].amount)
      assert.equals(7, res[1].code)
      assert.equals(42, res[1].user_data_128)
      assert.equals(U64_MAX, s(res[1].user_data_64))
      assert.equals(9, res[1].user_data_32)
      assert.equals(t.fund_ts, s(res[1].timestamp))
      assert.equals("posted", res[2].status)
      assert.equals(60, res[2].timeout)
      assert.equals(t.hold1, s(res[3].pending_id))
      assert.equals(200, res[3].amount)
      assert.is_nil(res[3].status)
      assert.equals("voided", res[4].status)
      assert.equals("pending", res[5].status)
      assert.is_nil(res[5].expires_at)
      assert.equals("expired", res[6].status)
      assert.truthy(json.is_int(res[6].expires_at))
    end)
  end)

  describe("balances", function()
    it("gives the four counters and the three balances, credit-normal by default", function()
      local b = assert(query.balances(db, wallet))
      assert.same({ 40, 250, 25, 1000 }, { b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted })
      assert.equals("credit", b.normal)
      assert.equals(750, b.posted)
      assert.equals(735, b.pending)   -- (1000 + 25) - (250 + 40)
      assert.equals(710, b.available) -- 1000 - 250 - 40
    end)

    it("mirrors them for a debit-normal account, and goes negative on the other side", function()
      local b = assert(query.balances(db, cash, { normal = "debit" }))
      assert.same({ 25, 1000, 40, 250 }, { b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted })
      assert.equals(750, b.posted)
      assert.equals(735, b.pending)
      assert.equals(710, b.available)
      local c = assert(query.balances(db, cash))
      assert.equals(-750, c.posted)
      assert.equals(-735, c.pending)
      assert.equals(-775, c.available) -- 250 - 1000 - 25
    end)

    it("answers account_not_found for an unknown id", function()
      local b, err = query.balances(db, f.prefix .. "999998")
      assert.is_nil(b)
      assert.equals("account_not_found", err.code)
      assert.equals("id", err.param)
    end)
  end)

  describe("history", function()
    it("lists the posted entries only, each with the balance after it", function()
      local h = assert(query.history(db, wallet))
      assert.is_false(h.has_more)
      assert.equals(3, #h.data)
      local e1, e2, e3 = h.data[1], h.data[2], h.data[3]
      assert.equals(t.fund, s(e1.transfer_id))
      assert.equals(t.fund_ts, s(e1.timestamp))
      assert.equals("credit", e1.direction)
      assert.equals(1000, e1.amount)
      assert.equals(7, e1.code)
      assert.equals(U64_MAX, s(e1.user_data_64))
      assert.equals(1000, e1.posted)
      assert.equals(t.post1, s(e2.transfer_id))
      assert.equals("debit", e2.direction)
      assert.equals(200, e2.amount)
      assert.equals(t.hold1, s(e2.pending_id))
      assert.equals(800, e2.posted)
      assert.equals(0, e2.debits_pending) -- the rest of the hold was released by the post
      assert.equals(200, e2.debits_posted)
      assert.equals(t.pay, s(e3.transfer_id))
      assert.equals(750, e3.posted)
      assert.equals(750, e3.available)
      local d = assert(query.history(db, wallet, { normal = "debit" }))
      assert.equals(-750, d.data[3].posted)
    end)

    describe("pages", function()
      local stamps = {}

      lazy_setup(function()
        pager = f:account({ flags = 8 })
        for i = 1, 25 do
          local _, ts = f:transfer({ debit = cash, credit = pager, amount = i })
          stamps[i] = ts
          if i % 5 == 0 then f:hold({ debit = cash, credit = pager, amount = 1 }) end -- not entries
        end
      end)

      local function amounts(page)
        local out = {}
        for i, e in ipairs(page.data) do out[i] = e.amount end
        return out
      end

      it("pages forward with after, limit and has_more", function()
        local p1 = assert(query.history(db, pager, { limit = 10 }))
        assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, amounts(p1))
        assert.is_true(p1.has_more)
        local p2 = assert(query.history(db, pager, { limit = 10, after = p1.data[10].timestamp }))
        assert.same({ 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 }, amounts(p2))
        assert.is_true(p2.has_more)
        local p3 = assert(query.history(db, pager, { limit = 10, after = tostring(p2.data[10].timestamp) }))
        assert.same({ 21, 22, 23, 24, 25 }, amounts(p3))
        assert.is_false(p3.has_more)
        assert.equals(325, p3.data[5].posted) -- 1 + ... + 25
        local p4 = assert(query.history(db, pager, { limit = 10, after = p3.data[5].timestamp }))
        assert.equals(0, #p4.data)
        assert.is_false(p4.has_more)
      end)

      it("pages backward with before, each page still in time order", function()
        local p1 = assert(query.history(db, pager, { limit = 10, before = f:now() }))
        assert.same({ 16, 17, 18, 19, 20, 21, 22, 23, 24, 25 }, amounts(p1))
        assert.is_true(p1.has_more)
        local p2 = assert(query.history(db, pager, { limit = 10, before = p1.data[1].timestamp }))
        assert.same({ 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 }, amounts(p2))
        local p3 = assert(query.history(db, pager, { limit = 10, before = p2.data[1].timestamp }))
        assert.same({ 1, 2, 3, 4, 5 }, amounts(p3))
        assert.is_false(p3.has_more)
      end)

      it("takes an inclusive from/to range, with after and before inside it", function()
        local r = assert(query.history(db, pager, { from = stamps[3], to = stamps[7] }))
        assert.same({ 3, 4, 5, 6, 7 }, amounts(r))
        assert.is_false(r.has_more)
        r = assert(query.history(db, pager, { from = stamps[3], to = stamps[7], limit = 2 }))
        assert.same({ 3, 4 }, amounts(r))
        assert.is_true(r.has_more)
        r = assert(query.history(db, pager, { after = stamps[3], before = stamps[7] }))
        assert.same({ 4, 5, 6 }, amounts(r))
        r = assert(query.history(db, pager, { from = stamps[20], after = stamps[22] }))
        assert.same({ 23, 24, 25 }, amounts(r))
        r = assert(query.history(db, pager, { to = stamps[2], before = stamps[25] }))
        assert.same({ 1, 2 }, amounts(r))
      end)

      it("returns at most 1000 entries a page, and 100 by default", function()
        for i = 26, 130 do f:transfer({ debit = cash, credit = pager, amount = i }) end
        local r = assert(query.history(db, pager))
        assert.equals(100, #r.data)
        assert.is_true(r.has_more)
        r = assert(query.history(db, pager, { limit = 1000 }))
        assert.equals(130, #r.data)
        assert.is_false(r.has_more)
        local _, err = query.history(db, pager, { limit = 1001 })
        assert.equals("invalid_parameter", err.code)
        assert.equals("limit", err.param)
      end)
    end)

    it("refuses an account without the history flag", function()
      local h, err = query.history(db, cash)
      assert.is_nil(h)
      assert.equals("history_not_enabled", err.code)
      local _, err2 = query.history(db, f.prefix .. "999997")
      assert.equals("account_not_found", err2.code)
    end)
  end)

  describe("balance_at", function()
    it("gives the balance after the last transfer at or before the instant", function()
      local b = assert(query.balance_at(db, wallet, t.hold1_ts))
      assert.same({ 300, 0, 0, 1000 }, { b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted })
      assert.equals(1000, b.posted)
      assert.equals(700, b.available)
      assert.equals(t.hold1, s(b.transfer_id))
      assert.equals(t.hold1_ts, s(b.timestamp))
      b = assert(query.balance_at(db, wallet, json.int(t.post1_ts)))
      assert.equals(800, b.posted)
      assert.equals(0, b.debits_pending)
      -- one ns before the post: still the hold's
      local before_post = f:q("SELECT ($1::bigint - 1)::text AS t", t.post1_ts)[1].t
      b = assert(query.balance_at(db, wallet, before_post))
      assert.equals(t.hold1, s(b.transfer_id))
    end)

    it("takes off a hold that expired after the last transfer, from its deadline on", function()
      -- hold4 and hold5 (25 and 5 towards the wallet, 1 s each) come after the last row that moved
      -- the wallet's posted money; hold5 expired (no row), hold4 is still pending
      local due = f:q("SELECT expires_at::text AS e FROM ledger_holds WHERE id = $1::numeric", t.hold5)[1].e
      local before = f:q("SELECT ($1::bigint - 1)::text AS t", due)[1].t
      local b = assert(query.balance_at(db, wallet, before))
      assert.equals(30, b.credits_pending)
      assert.equals(40, b.debits_pending)
      b = assert(query.balance_at(db, wallet, due))
      assert.equals(25, b.credits_pending)             -- hold5's 5 released at its deadline
      assert.equals(40, b.debits_pending)              -- hold3 has no deadline: pending still
      assert.equals(t.hold5, s(b.transfer_id))         -- still the last row's transfer
      assert.equals(1000 - 250, b.posted)
      assert.equals(1000 - 250 + 25 - 40, b.pending)   -- credit-normal: posted + pending in - out
      -- as the account itself says once hold5 is gone
      local acct = assert(query.lookup_accounts(db, { wallet }))[1]
      assert.same({ acct.debits_pending, acct.credits_pending }, { b.debits_pending, b.credits_pending })
    end)

    it("is all zero before the first transfer", function()
      local b = assert(query.balance_at(db, wallet, "1"))
      assert.same({ 0, 0, 0, 0, 0, 0, 0 }, { b.debits_pending, b.debits_posted, b.credits_pending,
                                            b.credits_posted, b.posted, b.pending, b.available })
      assert.equals(wallet, s(b.id))
      assert.is_nil(b.transfer_id)
    end)

    it("refuses an account without the history flag", function()
      local b, err = query.balance_at(db, cash, t.fund_ts)
      assert.is_nil(b)
      assert.equals("history_not_enabled", err.code)
      assert.equals("id", err.param)
    end)
  end)

  describe("128-bit values", function()
    it("round-trip exactly beyond 2^53, signs included", function()
      local hi = "340282366920938463463374607431768" .. string.format("%06d", tonumber(nuvion.random_hex(2), 16))
      big1 = f:account({ id = hi, flags = 8, user_data_128 = "340282366920938463463374607431768211455" })
      big2 = f:account({ flags = 8 })
      local id = f:transfer({ debit = big2, credit = big1, amount = U127 })
      local acc = assert(query.lookup_accounts(db, { hi }))[1]
      assert.truthy(json.is_int(acc.id))
      assert.equals(hi, tostring(acc.id))
      assert.equals(U127, tostring(acc.credits_posted))
      assert.equals(query.U128_MAX, tostring(acc.user_data_128))
      local tr = assert(query.lookup_transfers(db, { json.int(id) }))[1]
      assert.equals(U127, tostring(tr.amount))
      local b1 = assert(query.balances(db, hi))
      assert.equals(U127, tostring(b1.posted))
      local b2 = assert(query.balances(db, big2))
      assert.equals("-" .. U127, tostring(b2.posted))
      assert.equals(U127, tostring(assert(query.balances(db, big2, { normal = "debit" })).available))
      local h = assert(query.history(db, big2))
      assert.equals(U127, tostring(h.data[1].amount))
      assert.equals("-" .. U127, tostring(h.data[1].posted))
      assert.equals('"amount":' .. U127, json.encode(h.data[1]):match('"amount":%d+'))
      local at = assert(query.balance_at(db, hi, f:now()))
      assert.equals(U127, tostring(at.credits_posted))
    end)
  end)

  describe("bad input", function()
    local many = {}
    for i = 1, query.IDS_MAX + 1 do many[i] = i end

    local cases = {
      { "a zero id", function() return query.balances(db, 0) end, "invalid_id", "id" },
      { "a negative id", function() return query.balances(db, -1) end, "invalid_id", "id" },
      { "a fractional id", function() return query.balances(db, 1.5) end, "invalid_id", "id" },
      { "a number above 2^53", function() return query.balances(db, 2 ^ 60) end, "invalid_id", "id" },
      { "a negative json.int", function() return query.balances(db, json.int("-5")) end, "invalid_id", "id" },
      { "a digit string with a letter", function() return query.balances(db, "12a") end, "invalid_id", "id" },
      { "an id of 2^128", function() return query.balances(db, "340282366920938463463374607431768211456") end,
        "invalid_id", "id" },
      { "a boolean id", function() return query.history(db, true) end, "invalid_id", "id" },
      { "an SQL fragment", function() return query.lookup_accounts(db, { "1); DROP TABLE ledger_transfers; --" }) end,
        "invalid_id", "ids[1]" },
      { "a bad id in the list", function() return query.lookup_transfers(db, { 1, "x" }) end, "invalid_id", "ids[2]" },
      { "ids that are not a list", function() return query.lookup_accounts(db, "1") end, "invalid_parameter", "ids" },
      { "more ids than a batch", function() return query.lookup_accounts(db, many) end, "too_many_ids", "ids" },
      { "a limit of 0", function() return query.history(db, wallet, { limit = 0 }) end, "invalid_parameter", "limit" },
      { "a fractional limit", function() return query.history(db, wallet, { limit = 2.5 }) end,
        "invalid_parameter", "limit" },
      { "a string limit", function() return query.history(db, wallet, { limit = "10" }) end,
        "invalid_parameter", "limit" },
      { "a negative cursor", function() return query.history(db, wallet, { after = -5 }) end,
        "invalid_timestamp", "after" },
      { "a cursor beyond 2^63-1", function() return query.history(db, wallet, { before = "9223372036854775808" }) end,
        "invalid_timestamp", "before" },
      { "a text range", function() return query.history(db, wallet, { from = "yesterday" }) end,
        "invalid_timestamp", "from" },
      { "an unknown normal", function() return query.balances(db, wallet, { normal = "sideways" }) end,
        "invalid_parameter", "normal" },
      { "options that are not a table", function() return query.history(db, wallet, 10) end,
        "invalid_parameter", "opts" },
      { "no instant", function() return query.balance_at(db, wallet) end, "invalid_timestamp", "ts_ns" },
      { "a null instant", function() return query.balance_at(db, wallet, json.null) end, "invalid_timestamp", "ts_ns" },
      { "a float instant", function() return query.balance_at(db, wallet, 1.25) end, "invalid_timestamp", "ts_ns" },
    }
    for _, c in ipairs(cases) do
      it("answers " .. c[3] .. " for " .. c[1], function()
        local res, err = c[2]()
        assert.is_nil(res)
        assert.equals(c[3], err.code)
        assert.equals(c[4], err.param)
        assert.is_string(err.message)
        assert.is_nil(err.cause) -- refused before any SQL
      end)
    end

    it("accepts leading zeros and a json.int for the same id", function()
      local a = assert(query.balances(db, "000" .. wallet))
      local b = assert(query.balances(db, json.int(wallet)))
      assert.equals(a.posted, b.posted)
    end)
  end)
end)
