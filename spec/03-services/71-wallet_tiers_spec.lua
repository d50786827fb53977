-- The onboarding tiers' limits on customers' wallets (docs/wallets.md "Tier limits"), through real
-- HTTP against core and the KYC simulator: customers verified through the sandbox (tier 1:
-- USD 5,000.00 balance, 2,500.00 a day in and out) and unverified ones (tier 0). Every limit hit
-- on every route that moves money, exactly at the limit allowed, a refusal changing nothing,
-- retries counted once, racing movements never passing a limit, partners' wallets untouched.
local cf = require "spec.customers_fixture"
local wx = require "spec.wallets_fixture"
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"
local auth = require "nuvion.auth"
local nuvion = require "nuvion"
local model = require "lua.services.core.wallets.model"

local MAX, DAILY = 500000, 250000    -- tier 1, USD cents

describe("wallet tier limits", function()
  local s, port, ptn, lg, db, svc, cus1, cus0, pw

  local function wallet(customer, currency)
    return wx.wallet(port, ptn.test, currency or "USD", customer)
  end

  -- a new customer verified through the sandbox (tier 1): a customer has one wallet per asset
  local function verified()
    local c = cf.call(port, "POST", "/v1/customers", ptn.test, cf.individual({ last_name = "Verified" }))
    assert.equals(201, c.status, c.body)
    assert.equals(200, cf.call(port, "POST", "/v1/customers/" .. c.data.id .. "/verify", ptn.test).status)
    local v = cf.wait_state(port, ptn.test, c.data.id, "verified")
    assert.equals(1, v.data.tier, v.body)
    return c.data.id
  end

  local function transfer(from, to, amount, key)
    return wx.post(port, "/v1/transfers", ptn.test, { from_wallet = from.id, to_wallet = to.id, amount = amount }, key)
  end

  local function fund(w, amount, key)
    return wx.post(port, "/v1/test_helpers/wallets/" .. w.id .. "/fund", ptn.test, { amount = amount }, key)
  end

  local function op(w, what, body)
    return wx.call(port, "POST", "/internal/wallets/" .. w.id .. "/" .. what, svc, body)
  end

  local function balance(w)
    return assert(lg:balances(w.ledger_account_id, { normal = "credit" }))
  end

  -- money put in straight through the ledger (as if it had arrived before the limits): no usage
  local function seed(w, amount, lid)
    assert.equals("ok", lg:transfer({ id = lid or model.random_ledger_id(),
      debit_account_id = model.settlement_id(ptn.id, "test", w.currency), credit_account_id = w.ledger_account_id,
      amount = amount, ledger = w.ledger, code = 2 }))
  end

  local function usage(w)
    local rows = assert(db:query("SELECT coalesce(sum(amount) FILTER (WHERE direction = 'in'), 0)::bigint AS i, "
      .. "coalesce(sum(amount) FILTER (WHERE direction = 'out'), 0)::bigint AS o, count(*)::int AS n "
      .. "FROM wallet_limit_usage WHERE wallet_id = $1", w.id))
    return tonumber(rows[1].i), tonumber(rows[1].o), rows[1].n
  end

  local function refused(res, param, limit)
    assert.equals(403, res.status, res.body)
    assert.equals("tier_limit_exceeded", res.data.error.code)
    assert(openapi.check(res.data, "Error"))
    assert.equals(param, res.data.error.param)
    if limit then assert.matches(limit, res.data.error.message, 1, true) end
  end

  local function ok(res)
    assert.equals(200, res.status, res.body)
    return res.data
  end

  local function rows_of(w)
    return assert(db:query("SELECT count(*)::int AS n FROM wallet_transfers WHERE from_wallet = $1 OR to_wallet = $1",
      w.id))[1].n
  end

  lazy_setup(function()
    s = cf.start({ NUVION_CORE_RATE_PER_S = "1000000", NUVION_CORE_RATE_BURST = "1000000" })
    port, db = s.port, s.db
    ptn = cf.partner(db)
    lg = wx.ledger()
    svc = auth.service_token("core", { as = "payout", fresh = true })
    cus1 = verified()
    local p = cf.call(port, "POST", "/v1/customers", ptn.test, cf.individual())
    assert.equals(201, p.status, p.body)
    assert.equals(0, p.data.tier)
    cus0 = p.data.id
    pw = wallet(nil)
    ok(fund(pw, 100000000))
  end)

  lazy_teardown(function()
    cf.stop(s)
  end)

  it("tier 0: an unverified customer's wallet neither receives nor sends, and nothing changes", function()
    local w = wallet(cus0)
    local before = balance(pw).posted
    refused(transfer(pw, w, 1), "to_wallet", "tier 0")
    refused(fund(w, 1), "amount", "unverified")
    local credit = op(w, "credits", { reference = "t0-c", amount = 1 })
    refused(credit, "amount", "tier 0")
    -- money that got there anyway (before any limit) cannot leave either
    seed(w, 1000)
    refused(transfer(w, pw, 1), "from_wallet", "tier 0")
    refused(op(w, "debits", { reference = "t0-d", amount = 1 }), "amount")
    refused(op(w, "holds", { reference = "t0-h", amount = 1 }), "amount")
    assert.equals(1000, balance(w).posted)
    assert.equals(0, balance(w).debits_pending)
    assert.equals(before, balance(pw).posted)
    assert.equals(0, rows_of(w))
    assert.same({ 0, 0, 0 }, { usage(w) })
    -- the same customer, once verified, gets tier 1's limits
    assert(db:query("UPDATE customers SET tier = 1 WHERE id = $1", cus0))
    ok(transfer(pw, w, 1))
    assert(db:query("UPDATE customers SET tier = 0 WHERE id = $1", cus0))
    refused(transfer(pw, w, 1), "to_wallet", "tier 0")
  end)

  it("an asset the tier does not list is refused both ways", function()
    local kes = wallet(cus1, "KES")
    local pk = wallet(nil, "KES")
    ok(fund(pk, 10000))
    refused(transfer(pk, kes, 1), "to_wallet", "KES")
    refused(fund(kes, 1), "amount", "does not allow")
    refused(op(kes, "credits", { reference = "kes-c", amount = 1 }), "amount", "KES")
    seed(kes, 500)
    refused(transfer(kes, pk, 1), "from_wallet", "KES")
    assert.equals(500, balance(kes).posted)
    assert.equals(10000, balance(pk).posted)
  end)

  it("daily in: exactly the limit passes over transfers, funding and credits, one more is refused", function()
    local cus = verified()
    local w = wallet(cus)
    ok(transfer(pw, w, 100000))
    ok(fund(w, 100000))
    assert.equals("ok", ok(op(w, "credits", { reference = "din-c1", amount = 50000 })).result)
    assert.equals(DAILY, balance(w).posted)
    local pb, n = balance(pw).posted, rows_of(w)
    refused(transfer(pw, w, 1), "to_wallet", "daily_in")
    local r = fund(w, 1)
    refused(r, "amount")
    assert.equals("Wallet " .. w.id .. ": the daily_in limit of customer " .. cus .. "'s tier 1 "
      .. "(individual_verified) is 2500.00 USD over 24 h; it received 2500.00 USD, so 0.01 USD more is refused.",
      r.data.error.message)
    refused(op(w, "credits", { reference = "din-c2", amount = 1 }), "amount", "daily_in")
    -- nothing changed: balances, rows, usage
    assert.equals(DAILY, balance(w).posted)
    assert.equals(pb, balance(pw).posted)
    assert.equals(n, rows_of(w))
    assert.same({ DAILY, 0, 3 }, { usage(w) })
    -- money going out does not give the inflow back
    ok(transfer(w, pw, 1000))
    refused(transfer(pw, w, 1), "to_wallet", "daily_in")
    -- a day later the window has moved on
    assert(db:query("UPDATE wallet_limit_usage SET created_at = created_at - interval '24 hours 1 second' "
      .. "WHERE wallet_id = $1", w.id))
    ok(transfer(pw, w, DAILY))
    refused(fund(w, 1), "amount", "daily_in")
  end)

  it("max balance: exactly the limit passes, one more is refused until money leaves", function()
    local w = wallet(verified())
    seed(w, MAX - DAILY)
    ok(fund(w, DAILY - 1))
    ok(transfer(pw, w, 1))
    assert.equals(MAX, balance(w).posted)
    assert.equals(DAILY, (usage(w)))
    -- daily_in is full too; let a day pass so max_balance is the limit that refuses
    assert(db:query("UPDATE wallet_limit_usage SET created_at = created_at - interval '25 hours' WHERE wallet_id = $1",
      w.id))
    refused(transfer(pw, w, 1), "to_wallet", "max_balance")
    refused(fund(w, 1), "amount", "5000.00 USD")
    refused(op(w, "credits", { reference = "max-c", amount = 1 }), "amount", "max_balance")
    assert.equals(MAX, balance(w).posted)
    -- a hold does not make room (its void would bring the money back); a debit does
    ok(op(w, "holds", { reference = "max-h", amount = 500 }))
    refused(transfer(pw, w, 1), "to_wallet", "max_balance")
    ok(op(w, "debits", { reference = "max-d", amount = 700 }))
    ok(transfer(pw, w, 700))
    refused(transfer(pw, w, 1), "to_wallet", "max_balance")
    assert.equals(MAX, balance(w).posted)
  end)

  it("daily out: transfers, debits and holds; a void and a partial capture give the rest back", function()
    local w = wallet(verified())
    seed(w, 400000)
    ok(transfer(w, pw, 100000))
    ok(op(w, "debits", { reference = "dout-d1", amount = 100000 }))
    ok(op(w, "holds", { reference = "dout-h1", amount = 50000 }))
    local pb = balance(pw).posted
    refused(transfer(w, pw, 1), "from_wallet", "daily_out")
    refused(op(w, "debits", { reference = "dout-d2", amount = 1 }), "amount", "daily_out")
    refused(op(w, "holds", { reference = "dout-h2", amount = 1 }), "amount", "2500.00 USD")
    assert.equals(pb, balance(pw).posted)
    assert.equals(200000, balance(w).posted)
    assert.equals(50000, balance(w).debits_pending)
    -- the void gives the hold's 50000 back, once
    assert.equals("ok", ok(op(w, "holds/dout-h1/void", {})).result)
    assert.equals("exists", ok(op(w, "holds/dout-h1/void", {})).result)
    assert.equals(0, select(2, usage(w)) - 200000)
    ok(op(w, "holds", { reference = "dout-h3", amount = 30000 }))
    ok(op(w, "holds/dout-h3/capture", { amount = 10000 }))     -- 20000 released
    ok(transfer(w, pw, 40000))
    refused(transfer(w, pw, 1), "from_wallet", "daily_out")
    assert.equals(DAILY, select(2, usage(w)))
    -- a full capture counts the hold once (when it was placed)
    assert(db:query("UPDATE wallet_limit_usage SET created_at = created_at - interval '25 hours' WHERE wallet_id = $1",
      w.id))
    seed(w, 300000)
    ok(op(w, "holds", { reference = "dout-h4", amount = 100000 }))
    ok(op(w, "holds/dout-h4/capture", {}))
    ok(op(w, "debits", { reference = "dout-d3", amount = DAILY - 100000 }))
    refused(op(w, "debits", { reference = "dout-d4", amount = 1 }), "amount", "daily_out")
    assert.equals(400000 - 100000 - 100000 - 10000 - 40000 + 300000 - DAILY, balance(w).posted)
  end)

  it("a retried movement counts once: Idempotency-Key replay, the ledger's exists, references", function()
    local w = wallet(verified())
    local key = "tier-" .. nuvion.random_hex(8)
    local first = ok(transfer(pw, w, 200000, key))
    ok(transfer(pw, w, 200000, key))                               -- replayed from the key
    assert(db:query("DELETE FROM api_idempotency_keys WHERE idempotency_key = $1", key))
    assert.equals(first.id, ok(transfer(pw, w, 200000, key)).id)    -- the ledger's exists
    local fkey = "tier-f-" .. nuvion.random_hex(8)
    ok(fund(w, 20000, fkey))
    assert(db:query("DELETE FROM api_idempotency_keys WHERE idempotency_key = $1", fkey))
    ok(fund(w, 20000, fkey))
    assert.equals("ok", ok(op(w, "credits", { reference = "rt-c", amount = 30000 })).result)
    assert.equals("exists", ok(op(w, "credits", { reference = "rt-c", amount = 30000 })).result)
    assert.equals(DAILY, balance(w).posted)
    assert.same({ DAILY, 0, 3 }, { usage(w) })        -- counted twice, the next would be refused
    refused(transfer(pw, w, 1), "to_wallet", "daily_in")
    -- a reference refused stays refusable: nothing recorded under it
    refused(op(w, "credits", { reference = "rt-c2", amount = 1 }), "amount")
    assert.same({ DAILY, 0, 3 }, { usage(w) })
  end)

  it("a transfer the ledger has but core never recorded (a crash) completes on its key, counted once", function()
    local w = wallet(verified())
    local key = "crash-" .. nuvion.random_hex(8)
    local lid = model.ledger_id("transfer:" .. ptn.id .. ":test:" .. key)
    -- the first run moved the money and died before its commit: no row, no usage
    assert.equals("ok", lg:transfer({ id = lid, debit_account_id = pw.ledger_account_id,
      credit_account_id = w.ledger_account_id, amount = 200000, ledger = w.ledger, code = 1 }))
    ok(fund(w, 100000))
    -- counting it again would pass daily_in (300000): the ledger shows it is the same transfer
    local res = ok(transfer(pw, w, 200000, key))
    assert.equals(lid, res.ledger_transfer_id)
    assert.equals(300000, balance(w).posted)
    assert.same({ 300000, 0, 2 }, { usage(w) })
    refused(transfer(pw, w, 1), "to_wallet", "daily_in")
    -- a new key with the same amount is a new transfer, refused
    refused(transfer(pw, w, 200000, key .. "-new"), "to_wallet", "daily_in")
  end)

  it("racing transfers into one wallet never pass daily_in; racing out never pass daily_out", function()
    local w = wallet(verified())
    local N, AMOUNT = 20, 30000       -- 8 fit in 250000
    local results = helpers.parallel(N, function(i)
      local res = transfer(pw, w, AMOUNT, "race-in-" .. w.id .. "-" .. i)
      return { status = res.status, code = res.data and res.data.error and res.data.error.code }
    end)
    local okn, no = 0, 0
    for i, r in ipairs(results) do
      assert.is_nil(r.error, r.error)
      if r.status == 200 then okn = okn + 1
      elseif r.status == 403 and r.code == "tier_limit_exceeded" then no = no + 1
      else error("request " .. i .. " answered " .. tostring(r.status) .. " " .. tostring(r.code)) end
    end
    assert.equals(8, okn)
    assert.equals(12, no)
    assert.equals(8 * AMOUNT, balance(w).posted)
    assert.same({ 8 * AMOUNT, 0, 8 }, { usage(w) })
    assert.equals(8, rows_of(w))

    -- max_balance: 20 credits of 3000 racing into 482000, 6 fit
    local full = wallet(verified())
    seed(full, 482000)
    results = helpers.parallel(N, function(i)
      local res = i % 2 == 0 and op(full, "credits", { reference = "race-c" .. i, amount = 3000 })
        or transfer(pw, full, 3000, "race-max-" .. full.id .. "-" .. i)
      return { status = res.status, code = res.data and res.data.error and res.data.error.code,
               message = res.data and res.data.error and res.data.error.message }
    end)
    okn = 0
    for i, r in ipairs(results) do
      assert.is_nil(r.error, r.error)
      if r.status == 200 then okn = okn + 1
      elseif r.status == 403 and r.code == "tier_limit_exceeded" then assert.matches("max_balance", r.message)
      else error("request " .. i .. " answered " .. tostring(r.status) .. " " .. tostring(r.code)) end
    end
    assert.equals(6, okn)
    assert.equals(500000, balance(full).posted)

    -- out: transfers, debits and holds racing
    local src = wallet(verified())
    seed(src, 400000)
    results = helpers.parallel(N, function(i)
      local res
      if i % 3 == 0 then res = op(src, "debits", { reference = "race-d" .. i, amount = AMOUNT })
      elseif i % 3 == 1 then res = op(src, "holds", { reference = "race-h" .. i, amount = AMOUNT })
      else res = transfer(src, pw, AMOUNT, "race-out-" .. src.id .. "-" .. i) end
      return { status = res.status, code = res.data and res.data.error and res.data.error.code }
    end)
    okn = 0
    for i, r in ipairs(results) do
      assert.is_nil(r.error, r.error)
      if r.status == 200 then okn = okn + 1
      elseif not (r.status == 403 and r.code == "tier_limit_exceeded") then
        error("request " .. i .. " answered " .. tostring(r.status) .. " " .. tostring(r.code))
      end
    end
    assert.equals(8, okn)
    local b = balance(src)
    assert.equals(8 * AMOUNT, (400000 - b.posted) + b.debits_pending)
    assert.same({ 0, 8 * AMOUNT, 8 }, { usage(src) })
  end)

  it("racing transfers both ways between two customers' wallets: no deadlock, limits kept", function()
    local a, b = wallet(verified()), wallet(verified())
    seed(a, 250000)
    seed(b, 250000)
    -- each side sends 12 x 20000 = 240000 and receives as much, in any order between 10000 and
    -- 490000: all fit
    local N, AMOUNT = 24, 20000
    local results = helpers.parallel(N, function(i)
      local from, to = a, b
      if i % 2 == 0 then from, to = b, a end
      local res = transfer(from, to, AMOUNT, "pair-" .. a.id .. "-" .. i)
      return { status = res.status, body = res.body }
    end)
    for i, r in ipairs(results) do
      assert.is_nil(r.error, r.error)
      assert.equals(200, r.status, "request " .. i .. " " .. tostring(r.body))
    end
    assert.equals(250000, balance(a).posted)
    assert.equals(250000, balance(b).posted)
    assert.same({ 240000, 240000, 24 }, { usage(a) })
    -- both sides are checked: a's daily_in has 10000 left, b's daily_out too
    refused(transfer(b, a, 10001), "from_wallet", "daily_out")
    ok(transfer(b, a, 10000))
    refused(transfer(b, a, 1), "from_wallet", "daily_out")
  end)

  it("partners' wallets have no limits and no usage rows", function()
    local p2 = wallet(nil)
    ok(transfer(pw, p2, 10000000))         -- 100,000.00: far beyond tier 1
    ok(fund(p2, 90000000))
    assert.equals("ok", ok(op(p2, "credits", { reference = "p-c", amount = 60000000 })).result)
    ok(op(p2, "debits", { reference = "p-d", amount = 60000000 }))
    assert.equals(100000000, balance(p2).posted)
    assert.same({ 0, 0, 0 }, { usage(p2) })
    assert.same({ 0, 0, 0 }, { usage(pw) })
  end)

  it("a customer has one wallet per currency, so its tier's limits are the customer's", function()
    local cus = verified()
    local first = wallet(cus)
    local again = wx.post(port, "/v1/wallets", ptn.test, { currency = "USD", customer = cus })
    assert.equals(409, again.status, again.body)
    assert(openapi.check(again.data, "Error"))
    assert.equals("resource_already_exists", again.data.error.code)
    assert.equals("currency", again.data.error.param)
    assert.matches(first.id, again.data.error.message, 1, true)
    local eur = wallet(cus, "EUR")                          -- another currency is another wallet
    -- the list finds a customer's wallets, by currency too
    local mine = wx.get(port, "/v1/wallets?customer=" .. cus, ptn.test)
    assert.equals(200, mine.status, mine.body)
    assert(openapi.check(mine.data, "List"))
    assert.same({ eur.id, first.id }, { mine.data.data[1].id, mine.data.data[2].id })
    assert.equals(2, #mine.data.data)
    local usd = wx.get(port, "/v1/wallets?customer=" .. cus .. "&currency=USD", ptn.test)
    assert.same({ first.id }, { usd.data.data[1].id, usd.data.data[2] and usd.data.data[2].id })
    local bad = wx.get(port, "/v1/wallets?customer=ptn_x", ptn.test)
    assert.equals(400, bad.status)
    assert.equals("customer", bad.data.error.param)
    assert.equals("currency", wx.get(port, "/v1/wallets?currency=usd", ptn.test).data.error.param)
    -- racing creates for a new customer and currency: exactly one wallet is made
    local other = verified()
    local out = helpers.concurrently(8, function()
      return wx.post(port, "/v1/wallets", ptn.test, { currency = "USD", customer = other })
    end)
    local made, conflicts = 0, 0
    for _, r in ipairs(out) do
      local res = r[1]
      if res.status == 200 then made = made + 1
      elseif res.status == 409 and res.data.error.code == "resource_already_exists" then conflicts = conflicts + 1 end
    end
    assert.same({ 1, 7 }, { made, conflicts })
    local n = assert(db:query("SELECT count(*)::int AS n FROM wallets WHERE owner_id = $1", other))[1].n
    assert.equals(1, n)
  end)
end)
