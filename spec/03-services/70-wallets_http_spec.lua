-- Wallets through real HTTP against core (lua/services/core) with its Postgres and the ledger:
-- create, fund, transfer, balance, statement, idempotency, races, partners and modes apart.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"
local json = require "nuvion.json"
local openapi = require "spec.openapi"
local wx = require "spec.wallets_fixture"

describe("core wallets", function()
  local srv, db, lg, secret, port, partner

  lazy_setup(function()
    db = wx.db()
    lg = wx.ledger()
    srv = wx.start_core()
    port = srv.port
    partner = wx.partner(db)
    secret = wx.key(db, partner, "test")
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  local function transfer(from, to, amount, key, extra)
    local body = { from_wallet = from, to_wallet = to, amount = amount }
    for k, v in pairs(extra or {}) do body[k] = v end
    return wx.post(port, "/v1/transfers", secret, body, key)
  end

  local function balance(id)
    local res = wx.get(port, "/v1/wallets/" .. id, secret)
    assert(res.status == 200, res.body)
    return res.data.balance
  end

  it("creates, funds, transfers and shows balances", function()
    local a = wx.wallet(port, secret, "USD")
    assert(openapi.check(a, "Wallet"))
    assert.matches("^wal_", a.id)
    assert.same({ type = "partner", id = partner }, a.owner)
    assert.equals(2, a.ledger)   -- USD is asset 1, test mode: 1 * 2 + 0
    assert.equals(0, a.balance.available)
    local b = wx.wallet(port, secret, "USD")
    local funded = wx.fund(port, secret, a.id, 10000)
    assert(openapi.check(funded, "Wallet"))
    assert.equals(10000, funded.balance.available)

    local res = transfer(a.id, b.id, 2500, nil, { description = "rent" })
    assert.equals(200, res.status, res.body)
    assert(openapi.check(res.data, "Transfer"))
    assert.matches("^tr_", res.data.id)
    assert.equals(2500, res.data.amount)
    assert.equals("rent", res.data.description)
    assert.same({ available = 7500, pending = 7500, posted = 7500 },
      { available = balance(a.id).available, pending = balance(a.id).pending, posted = balance(a.id).posted })
    assert.equals(2500, balance(b.id).available)

    local got = wx.get(port, "/v1/transfers/" .. res.data.id, secret)
    assert.equals(200, got.status)
    assert.same(res.data, got.data)
    assert(openapi.check(got.data, "Transfer"))

    -- the ledger agrees
    local la = assert(lg:balances(a.ledger_account_id))
    assert.equals(7500, la.available)
    -- the event and the row committed together
    local ev = assert(db:query("SELECT type, data FROM outbox WHERE aggregate_id = $1", res.data.id))
    assert.equals(1, #ev)
    assert.equals("transfer.created", ev[1].type)

    local lst = wx.get(port, "/v1/wallets?limit=100", secret)
    assert.equals(200, lst.status)
    assert(openapi.check(lst.data, "List"))
    assert.is_true(#lst.data.data >= 2)
  end)

  it("refuses an overdraft with insufficient_funds and moves nothing", function()
    local a, b = wx.wallet(port, secret), wx.wallet(port, secret)
    wx.fund(port, secret, a.id, 100)
    local res = transfer(a.id, b.id, 101)
    assert.equals(402, res.status)
    assert.equals("insufficient_funds", res.data.error.code)
    assert(openapi.check(res.data, "Error"))
    assert.equals(100, balance(a.id).available)
    assert.equals(0, balance(b.id).available)
  end)

  it("validates transfers: same wallet, currency, amounts, unknown wallets", function()
    local a, b = wx.wallet(port, secret, "USD"), wx.wallet(port, secret, "USD")
    local k = wx.wallet(port, secret, "KES")
    local cases = {
      { { from_wallet = a.id, to_wallet = a.id, amount = 1 }, 400, "same_wallet" },
      { { from_wallet = a.id, to_wallet = k.id, amount = 1 }, 400, "currency_mismatch" },
      { { from_wallet = a.id, to_wallet = b.id, amount = 0 }, 400, "parameter_invalid", "amount" },
      { { from_wallet = a.id, to_wallet = b.id, amount = -5 }, 400, "parameter_invalid", "amount" },
      { { from_wallet = a.id, to_wallet = b.id, amount = 1.5 }, 400, "parameter_invalid", "amount" },
      { { from_wallet = a.id, to_wallet = b.id }, 400, "parameter_missing", "amount" },
      { { from_wallet = "wal_x", to_wallet = b.id, amount = 1 }, 400, "parameter_invalid", "from_wallet" },
      { { from_wallet = "wal_01jd8x3v9k0000a7c2m4q8r6tw", to_wallet = b.id, amount = 1 }, 404, "resource_missing",
        "from_wallet" },
    }
    for i, c in ipairs(cases) do
      local res = wx.post(port, "/v1/transfers", secret, c[1])
      assert.equals(c[2], res.status, "case " .. i .. " " .. res.body)
      assert.equals(c[3], res.data.error.code, "case " .. i)
      if c[4] then assert.equals(c[4], res.data.error.param, "case " .. i) end
    end
    local bad = wx.post(port, "/v1/wallets", secret, { currency = "XYZ" })
    assert.equals(400, bad.status)
    assert.equals("currency", bad.data.error.param)
    local ugx = wx.wallet(port, secret, "UGX")
    assert.equals(4 * 2, ugx.ledger)
  end)

  it("replays a transfer for its Idempotency-Key and rejects another body with it", function()
    local a, b = wx.wallet(port, secret), wx.wallet(port, secret)
    wx.fund(port, secret, a.id, 1000)
    local key = "tr-" .. nuvion.random_hex(8)
    local first = transfer(a.id, b.id, 300, key)
    assert.equals(200, first.status)
    local again = transfer(a.id, b.id, 300, key)
    assert.equals(200, again.status)
    assert.equals("true", again.headers["idempotent-replayed"])
    assert.equals(first.body, again.body)
    assert.equals(700, balance(a.id).available)
    local other = transfer(a.id, b.id, 301, key)
    assert.equals(400, other.status)
    assert.equals("idempotency_key_reused", other.data.error.code)
    -- the key's row gone (as after its 24 h): the same key is the ledger's `exists`, no new move
    assert(db:query("DELETE FROM api_idempotency_keys WHERE idempotency_key = $1", key))
    local rerun = transfer(a.id, b.id, 300, key)
    assert.equals(200, rerun.status)
    assert.equals(first.data.id, rerun.data.id)
    assert.equals(700, balance(a.id).available)
    local n = assert(db:query("SELECT count(*)::int AS n FROM wallet_transfers WHERE from_wallet = $1", a.id))
    assert.equals(1, n[1].n)
    -- and with another amount, the ledger's exists_with_different_amount
    assert(db:query("DELETE FROM api_idempotency_keys WHERE idempotency_key = $1", key))
    local conflict = transfer(a.id, b.id, 999, key)
    assert.equals(409, conflict.status)
    assert.equals("idempotency_conflict", conflict.data.error.code)
    assert.matches("exists_with_different_amount", conflict.data.error.message)
  end)

  it("recovers a transfer the ledger committed before core crashed: the retry writes its row once", function()
    local model = require "lua.services.core.wallets.model"
    local a, b = wx.wallet(port, secret), wx.wallet(port, secret)
    wx.fund(port, secret, a.id, 1000)
    local key = "crash-" .. nuvion.random_hex(8)
    -- what the first run did before dying: the ledger transfer under the key's id, no core row
    local lid = model.ledger_id("transfer:" .. partner .. ":test:" .. key)
    assert.equals("ok", lg:transfer({ id = lid, debit_account_id = a.ledger_account_id,
      credit_account_id = b.ledger_account_id, amount = 250, ledger = a.ledger, code = 1 }))
    local res = transfer(a.id, b.id, 250, key)
    assert.equals(200, res.status, res.body)
    assert.equals(lid, res.data.ledger_transfer_id)
    assert.equals(750, balance(a.id).available)          -- moved once
    local ev = assert(db:query("SELECT count(*)::int AS n FROM outbox WHERE aggregate_id = $1", res.data.id))
    assert.equals(1, ev[1].n)
  end)

  it("lets racing transfers from one wallet neither overdraw nor double spend", function()
    local src = wx.wallet(port, secret)
    local N, FUND, AMOUNT = 60, 1000, 37
    local dst = {}
    for i = 1, 4 do dst[i] = wx.wallet(port, secret) end
    wx.fund(port, secret, src.id, FUND)
    local results = helpers.parallel(N, function(i)
      -- every 3rd request is a duplicate of the one before it (same key)
      local k = i % 3 == 0 and i - 1 or i
      local res = transfer(src.id, dst[k % 4 + 1].id, AMOUNT, "race-" .. src.id .. "-" .. k)
      return { status = res.status, code = res.data and res.data.error and res.data.error.code,
               id = res.data and res.data.id }
    end)
    local ok_ids, refused, busy = {}, 0, 0
    for i, r in ipairs(results) do
      assert.is_nil(r.error, r.error)
      if r.status == 200 then ok_ids[r.id] = true
      elseif r.status == 402 then refused = refused + 1
      elseif r.status == 409 then busy = busy + 1     -- the duplicate arrived while its first ran
      else error("request " .. i .. " answered " .. tostring(r.status) .. " " .. tostring(r.code)) end
    end
    local moved = 0
    for _ in pairs(ok_ids) do moved = moved + 1 end
    assert.is_true(refused > 0)
    assert.equals(math.floor(FUND / AMOUNT), moved)   -- every distinct key that could pay, paid once
    local la = assert(lg:balances(src.ledger_account_id))
    assert.equals(FUND - moved * AMOUNT, la.available)
    assert.is_true(la.available >= 0)
    local total = 0
    for i = 1, 4 do
      total = total + assert(lg:balances(dst[i].ledger_account_id)).available
    end
    assert.equals(moved * AMOUNT, total)
    local rows = assert(db:query("SELECT count(*)::int AS n, sum(amount)::text AS s FROM wallet_transfers "
      .. "WHERE from_wallet = $1", src.id))
    assert.equals(moved, rows[1].n)
    assert.equals(tostring(moved * AMOUNT), rows[1].s)
    local ev = assert(db:query("SELECT count(*)::int AS n FROM outbox o "
      .. "JOIN wallet_transfers t ON t.id = o.aggregate_id WHERE t.from_wallet = $1", src.id))
    assert.equals(moved, ev[1].n)
  end)

  it("gives a statement whose entries sum to the ledger's balance, in pages and by date", function()
    local a, b = wx.wallet(port, secret), wx.wallet(port, secret)
    wx.fund(port, secret, a.id, 5000)
    for i = 1, 7 do
      local res = transfer(a.id, b.id, 100 + i)
      assert.equals(200, res.status)
      if i % 2 == 0 then assert.equals(200, transfer(b.id, a.id, 10 * i).status) end
    end
    local entries, url, pages = {}, "/v1/wallets/" .. a.id .. "/statement?limit=3", 0
    local after
    repeat
      local res = wx.get(port, url .. (after and ("&starting_after=" .. after) or ""), secret)
      assert.equals(200, res.status, res.body)
      assert(openapi.check(res.data, "WalletStatement"))
      for _, e in ipairs(res.data.data) do entries[#entries + 1] = e end
      pages = pages + 1
      after = res.data.data[#res.data.data].id
    until not res.data.has_more
    assert.equals(4, pages)    -- 1 funding + 7 out + 3 in = 11 entries
    assert.equals(11, #entries)
    local sum = 0
    for i, e in ipairs(entries) do
      sum = sum + (e.direction == "credit" and e.amount or -e.amount)
      assert.equals(sum, e.balance, "running balance at entry " .. i)
    end
    local lb = assert(lg:balances(a.ledger_account_id))
    assert.equals(lb.posted, sum)
    assert.equals(balance(a.id).posted, sum)
    assert.equals("fund", entries[1].type)
    assert.equals("transfer", entries[2].type)
    -- backwards from the end gives the last page
    local back = wx.get(port, url .. "&ending_before=" .. entries[#entries].id, secret)
    assert.equals(200, back.status)
    assert.equals(entries[#entries - 1].id, back.data.data[#back.data.data].id)
    -- a date range: all of today, then nothing in 2001
    local now = math.floor(nuvion.now())
    local today = wx.get(port, url:gsub("limit=3", "limit=100") .. "&from=" .. (now - 3600) .. "&to=" .. (now + 3600),
      secret)
    assert.equals(11, #today.data.data)
    local old = wx.get(port, url .. "&from=978307200&to=978393600", secret)
    assert.equals(200, old.status)
    assert.equals(0, #old.data.data)
    for _, q in ipairs({ "limit=0", "limit=101", "starting_after=x", "from=-1", "starting_after=1&ending_before=2" }) do
      local res = wx.get(port, "/v1/wallets/" .. a.id .. "/statement?" .. q, secret)
      assert.equals(400, res.status, q)
    end
  end)

  it("keeps partners and modes apart: another's wallet and transfer are 404", function()
    local a, b = wx.wallet(port, secret), wx.wallet(port, secret)
    wx.fund(port, secret, a.id, 100)
    local tr = transfer(a.id, b.id, 10)
    -- the owner's requests leave both wallets in each worker's wallet cache: still not another's
    for _ = 1, 4 do assert.equals(200, wx.get(port, "/v1/wallets/" .. a.id, secret).status) end
    local other = wx.key(db, wx.partner(db), "test")
    local live = wx.key(db, partner, "live")
    for _, sk in ipairs({ other, live }) do
      assert.equals(404, wx.get(port, "/v1/wallets/" .. a.id, sk).status)
      assert.equals(404, wx.get(port, "/v1/wallets/" .. a.id .. "/statement", sk).status)
      assert.equals(404, wx.get(port, "/v1/transfers/" .. tr.data.id, sk).status)
      local mine = wx.wallet(port, sk)
      local res = wx.post(port, "/v1/transfers", sk, { from_wallet = mine.id, to_wallet = a.id, amount = 1 })
      assert.equals(404, res.status)
      assert.equals("to_wallet", res.data.error.param)
      res = wx.post(port, "/v1/transfers", sk, { from_wallet = a.id, to_wallet = mine.id, amount = 1 })
      assert.equals(404, res.status)
      assert.equals("from_wallet", res.data.error.param)
    end
    assert.equals(90, balance(a.id).available)
  end)

  it("has no fund helper in live mode, and live wallets use their own ledger", function()
    local live = wx.key(db, partner, "live")
    local w = wx.wallet(port, live, "USD")
    assert.is_true(w.livemode)
    assert.equals(3, w.ledger)     -- USD live: 1 * 2 + 1
    local res = wx.post(port, "/v1/test_helpers/wallets/" .. w.id .. "/fund", live, { amount = 100 })
    assert.equals(404, res.status)
    assert.equals("route_not_found", res.data.error.code)
    assert.equals(0, assert(lg:balances(w.ledger_account_id)).available)
  end)

  it("checks a customer owner against the customers table once core has one", function()
    local cus = "cus_01jd8x3v9k0000a7c2m4q8r6tw"
    local has = assert(db:query("SELECT to_regclass('customers') IS NOT NULL AS present"))[1].present
    local res = wx.post(port, "/v1/wallets", secret, { currency = "EUR", customer = cus })
    if has then
      -- no such customer of this partner
      assert.equals(404, res.status, res.body)
      assert.equals("customer", res.data.error.param)
    else
      -- until the customers area lands, a well-formed id is kept as it is
      assert.equals(200, res.status, res.body)
      assert.same({ type = "customer", id = cus }, res.data.owner)
    end
    local bad = wx.post(port, "/v1/wallets", secret, { currency = "EUR", customer = "ptn_x" })
    assert.equals(400, bad.status)
    assert.equals("customer", bad.data.error.param)
  end)

  it("moves amounts beyond 2^53 exactly", function()
    local a, b = wx.wallet(port, secret, "USDC"), wx.wallet(port, secret, "USDC")
    local funded = wx.fund(port, secret, a.id, "100000000000000000000")
    assert.equals(json.int("100000000000000000000"), funded.balance.available)
    local res = transfer(a.id, b.id, "50000000000000000001")
    assert.equals(200, res.status, res.body)
    assert(openapi.check(res.data, "Transfer"))
    assert.equals(json.int("50000000000000000001"), res.data.amount)
    assert.equals(json.int("49999999999999999999"), balance(a.id).available)
    assert.equals(json.int("50000000000000000001"), balance(b.id).posted)
    -- a number that went through a float is refused, not rounded
    local float = wx.call(port, "POST", "/v1/transfers", secret, '{"from_wallet":"' .. a.id .. '","to_wallet":"'
      .. b.id .. '","amount":1e20}', { ["Content-Type"] = "application/json" })
    assert.equals(400, float.status, float.body)
    assert.equals("amount", float.data.error.param)
    assert.equals(json.int("49999999999999999999"), balance(a.id).available)
  end)

  it("funds once per Idempotency-Key", function()
    local a = wx.wallet(port, secret)
    wx.fund(port, secret, a.id, 500, "fund-key")
    wx.fund(port, secret, a.id, 500, "fund-key")
    assert(db:query("DELETE FROM api_idempotency_keys WHERE idempotency_key = 'fund-key'"))
    wx.fund(port, secret, a.id, 500, "fund-key")
    assert.equals(500, balance(a.id).available)
    assert.same(json.decode(json.encode(balance(a.id))), balance(a.id))
  end)
end)
