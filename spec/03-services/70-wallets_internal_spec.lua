-- Core's internal wallet routes through real HTTP: service tokens only; holds, captures (full and
-- partial), voids, credits and debits, each idempotent on the caller's reference and answering the
-- ledger's own result code; and every ledger result code mapped to an API error.
local nuvion = require "nuvion"
local auth = require "nuvion.auth"
local ledger = require "nuvion.ledger"
local wx = require "spec.wallets_fixture"
local model = require "lua.services.core.wallets.model"

describe("core internal wallet routes", function()
  local srv, db, port, secret, w, svc

  lazy_setup(function()
    db = wx.db()
    srv = wx.start_core()
    port = srv.port
    secret = wx.key(db, wx.partner(db), "test")
    svc = auth.service_token("core", { as = "payout", fresh = true })
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  local function op(path, body, token)
    return wx.call(port, "POST", "/internal/wallets/" .. path, token or svc, body)
  end

  local function bal(id)
    return wx.get(port, "/v1/wallets/" .. id, secret).data.balance
  end

  before_each(function()
    w = wx.wallet(port, secret)
  end)

  it("refuses partners' keys and tokens, accepts a service token", function()
    local token = require("spec.auth_fixture").token(port, secret)
    local cases = {
      { nil, 401 }, { secret, 403, "service_token_required" }, { token, 403, "service_token_required" },
      { auth.service_token("core", { as = "nobody_known", fresh = true }), 403, "service_not_allowed" },
    }
    for i, c in ipairs(cases) do
      local res = wx.call(port, "POST", "/internal/wallets/" .. w.id .. "/credits", c[1],
                          { reference = "r1", amount = 5 })
      assert.equals(c[2], res.status, "case " .. i .. " " .. res.body)
      if c[3] then assert.equals(c[3], res.data.error.code, "case " .. i) end
    end
    assert.equals(0, bal(w.id).available)
    local res = op(w.id .. "/credits", { reference = "r1", amount = 5 })
    assert.equals(200, res.status, res.body)
    assert.equals("ok", res.data.result)
    assert.equals(5, res.data.balance.available)
    assert.equals(404, op("wal_01jd8x3v9k0000a7c2m4q8r6tw/credits", { reference = "r1", amount = 5 }).status)
    assert.equals(400, op(w.id .. "/credits", { reference = "bad ref", amount = 5 }).status)
    assert.equals(400, op(w.id .. "/credits", { reference = "r2", amount = 0 }).status)
    assert.equals(5, bal(w.id).available)
  end)

  it("credits and debits once per reference; another amount is exists_with_different_amount", function()
    assert.equals("ok", op(w.id .. "/credits", { reference = "c1", amount = 1000 }).data.result)
    local again = op(w.id .. "/credits", { reference = "c1", amount = 1000 })
    assert.equals(200, again.status)
    assert.equals("exists", again.data.result)
    local other = op(w.id .. "/credits", { reference = "c1", amount = 999 })
    assert.equals(409, other.status)
    assert.equals("exists_with_different_amount", other.data.error.code)
    assert.equals("ok", op(w.id .. "/debits", { reference = "d1", amount = 400 }).data.result)
    assert.equals("exists", op(w.id .. "/debits", { reference = "d1", amount = 400 }).data.result)
    assert.equals(600, bal(w.id).available)
    -- too much: exceeds_credits, and the same reference stays failed after money arrives
    local over = op(w.id .. "/debits", { reference = "d2", amount = 601 })
    assert.equals(402, over.status)
    assert.equals("exceeds_credits", over.data.error.code)
    op(w.id .. "/credits", { reference = "c2", amount = 1 })
    local failed = op(w.id .. "/debits", { reference = "d2", amount = 601 })
    assert.equals(409, failed.status)
    assert.equals("id_already_failed", failed.data.error.code)
    assert.equals(601, bal(w.id).available)
  end)

  it("holds, captures part, voids, and answers each resolution's code", function()
    op(w.id .. "/credits", { reference = "f", amount = 1000 })
    local h = op(w.id .. "/holds", { reference = "h1", amount = 300 })
    assert.equals(200, h.status, h.body)
    assert.same({ object = "balance", currency = "USD", available = 700, pending = 700, posted = 1000 }, h.data.balance)
    assert.equals("exists", op(w.id .. "/holds", { reference = "h1", amount = 300 }).data.result)
    local big = op(w.id .. "/holds/h1/capture", { amount = 301 })
    assert.equals(400, big.status)
    assert.equals("exceeds_pending_transfer_amount", big.data.error.code)
    local cap = op(w.id .. "/holds/h1/capture", { amount = 200 })
    assert.equals(200, cap.status, cap.body)
    assert.same({ object = "balance", currency = "USD", available = 800, pending = 800, posted = 800 },
                cap.data.balance)
    assert.equals("exists", op(w.id .. "/holds/h1/capture", { amount = 200 }).data.result)
    local v = op(w.id .. "/holds/h1/void", {})
    assert.equals(409, v.status)
    assert.equals("pending_transfer_already_posted", v.data.error.code)

    op(w.id .. "/holds", { reference = "h2", amount = 100 })
    assert.equals(700, bal(w.id).available)
    assert.equals(200, op(w.id .. "/holds/h2/void", {}).status)
    assert.equals(800, bal(w.id).available)
    local c2 = op(w.id .. "/holds/h2/capture", {})
    assert.equals(409, c2.status)
    assert.equals("pending_transfer_already_voided", c2.data.error.code)

    local none = op(w.id .. "/holds/nope/capture", {})
    assert.equals(404, none.status)
    assert.equals("pending_transfer_not_found", none.data.error.code)
    local over = op(w.id .. "/holds", { reference = "h3", amount = 801 })
    assert.equals(402, over.status)
    assert.equals("exceeds_credits", over.data.error.code)

    -- full capture (no amount), and an expired hold
    op(w.id .. "/holds", { reference = "h4", amount = 50 })
    assert.equals(200, op(w.id .. "/holds/h4/capture", {}).status)
    assert.equals(750, bal(w.id).posted)
    op(w.id .. "/holds", { reference = "h5", amount = 10, timeout_s = 1 })
    nuvion.sleep(1500)
    local exp = op(w.id .. "/holds/h5/capture", {})
    assert.equals(409, exp.status)
    assert.equals("pending_transfer_expired", exp.data.error.code)
    assert.equals(750, bal(w.id).available)

    -- the statement sums to the balance, captures included
    local st = wx.get(port, "/v1/wallets/" .. w.id .. "/statement?limit=100", secret)
    assert(require("spec.openapi").check(st.data, "WalletStatement"))
    local sum, types = 0, {}
    for _, e in ipairs(st.data.data) do
      sum = sum + (e.direction == "credit" and e.amount or -e.amount)
      types[#types + 1] = e.type
    end
    assert.equals(750, sum)
    assert.same({ "credit", "capture", "capture" }, types)
  end)

  it("maps every ledger transfer result to an API error", function()
    local n = 0
    for _, name in ipairs(ledger.transfer_results) do
      if name ~= "ok" and name ~= "exists" then
        local e = model.RESULT_ERRORS[name]
        assert.is_table(e, name .. " is not mapped")
        assert.is_true(e.status >= 400 and e.status <= 599, name)
        local pub, int = model.result_error(name), model.result_error(name, true)
        assert.equals(name, int.code)
        assert.equals(e.code, pub.code)
        assert.matches(name, pub.message, 1, true)
        n = n + 1
      end
    end
    assert.is_true(n >= 58)
    -- a body's own failures are client errors; our own bugs are 500
    assert.equals(402, model.RESULT_ERRORS.exceeds_credits.status)
    assert.equals("insufficient_funds", model.RESULT_ERRORS.exceeds_credits.code)
    assert.equals(500, model.RESULT_ERRORS.reserved_flag.status)
  end)
end)
