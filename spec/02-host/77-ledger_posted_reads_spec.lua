-- The reads and the invariant checker over what the C posting layer wrote: transfers posted
-- through require("nuvion.ledger").open(), then lookups, history, balances at an instant and
-- the checker, on a story and on a random workload of many tasks (holds, partial posts, voids,
-- expiry, balancing, closing, linked chains, refusals).
local json = require "nuvion.json"
local nuvion = require "nuvion"
local ledger = require "nuvion.ledger"
local invariants = require "nuvion.ledger.invariants"
local fixture = require "spec.ledger_fixture"

local URL = os.getenv("NUVION_LEDGER_DATABASE_URL")

local function s(v)
  if v == nil or json.is_int(v) then return v and tostring(v) end
  return tostring(json.int(v))
end

describe("ledger reads over posted transfers", function()
  local lg, ids -- ids and the ledger number come from a fixture that writes nothing here
  local L, L2 -- the story's ledger, the workload's

  lazy_setup(function()
    assert(URL, "NUVION_LEDGER_DATABASE_URL is not set: run the specs with make test")
    lg = ledger.open(URL)
    ids = fixture.new(nil)
    L = ids.ledger
    L2 = L + 1 > 4294967295 and L - 1 or L + 1
  end)

  local function accounts(list)
    local res = assert(lg:create_accounts(list))
    for i, r in ipairs(res) do assert.equals("ok", r, "account " .. i) end
  end

  describe("a story", function()
    local wallet, cash, fee
    local t = {}

    lazy_setup(function()
      wallet, cash, fee = ids:id(), ids:id(), ids:id()
      accounts({
        { id = wallet, ledger = L, code = 10, flags = { "debits_must_not_exceed_credits", "history" } },
        { id = cash, ledger = L, code = 20, flags = { "history" } },
        { id = fee, ledger = L, code = 30, flags = { "history" } },
      })
      for _, k in ipairs({ "fund", "hold", "post", "hold2", "void2", "pay", "fee", "over" }) do t[k] = ids:id() end
      local res = assert(lg:create_transfers({
        { id = t.fund, debit_account_id = cash, credit_account_id = wallet, amount = 10000, ledger = L, code = 1,
          user_data_64 = "18446744073709551615" },
        { id = t.hold, debit_account_id = wallet, credit_account_id = cash, amount = 3000, ledger = L, code = 2,
          pending = true, timeout = 3600 },
      }))
      assert.same({ "ok", "ok" }, res)
      assert.equals("ok", lg:post({ id = t.post, pending_id = t.hold, amount = 2000 }))
      assert.equals("ok", lg:hold({ id = t.hold2, debit_account_id = wallet, credit_account_id = cash, amount = 500,
                                    ledger = L, code = 2 }))
      assert.equals("ok", lg:void({ id = t.void2, pending_id = t.hold2 }))
      res = assert(lg:create_transfers({ -- a payment and its fee, as one
        { id = t.pay, debit_account_id = wallet, credit_account_id = cash, amount = 100, ledger = L, code = 3,
          linked = true },
        { id = t.fee, debit_account_id = wallet, credit_account_id = fee, amount = 5, ledger = L, code = 4 },
      }))
      assert.same({ "ok", "ok" }, res)
      assert.equals("exceeds_credits", lg:transfer({ id = t.over, debit_account_id = wallet, credit_account_id = cash,
                                                     amount = 1000000, ledger = L, code = 3 }))
    end)

    it("looks the transfers up with the holds' status, and not the failed one", function()
      local res = assert(lg:lookup_transfers({ t.fund, t.hold, t.post, t.hold2, t.over }))
      assert.equals(4, #res)
      assert.equals("18446744073709551615", s(res[1].user_data_64))
      assert.equals("posted", res[2].status)
      assert.equals(2000, res[3].amount)
      assert.equals(t.hold, s(res[3].pending_id))
      assert.equals("voided", res[4].status)
    end)

    it("lists the wallet's posted entries with the balance after each", function()
      local h = assert(lg:history(wallet))
      assert.is_false(h.has_more)
      local got = {}
      for i, e in ipairs(h.data) do got[i] = { s(e.transfer_id), e.direction, e.amount, e.posted } end
      assert.same({ { t.fund, "credit", 10000, 10000 }, { t.post, "debit", 2000, 8000 },
                    { t.pay, "debit", 100, 7900 }, { t.fee, "debit", 5, 7895 } }, got)
      local p = assert(lg:history(wallet, { limit = 2, after = h.data[2].timestamp }))
      assert.equals(t.pay, s(p.data[1].transfer_id))
      assert.is_false(p.has_more)
      local c = assert(lg:history(cash, { normal = "debit" }))
      assert.equals(3, #c.data) -- fund, post, pay; the fee went to another account
      assert.same({ 10000, 8000, 7900 }, { c.data[1].posted, c.data[2].posted, c.data[3].posted })
    end)

    it("gives the balances now and at the hold's instant", function()
      local b = assert(lg:balances(wallet))
      assert.same({ 7895, 7895, 7895 }, { b.posted, b.pending, b.available })
      local hold = assert(lg:lookup_transfers({ t.hold }))[1]
      local at = assert(lg:balance_at(wallet, hold.timestamp))
      assert.equals(3000, at.debits_pending)
      assert.equals(10000, at.posted)
      assert.equals(7000, at.available)
      assert.equals(t.hold, s(at.transfer_id))
      local cash_at = assert(lg:balance_at(cash, hold.timestamp, { normal = "debit" }))
      assert.equals(10000, cash_at.posted)
      assert.equals(3000, cash_at.credits_pending)
    end)

    it("passes the invariant check", function()
      local report = assert(invariants.check(lg.db, { ledgers = { L } }))
      assert.is_true(report.ok, json.encode(report.problems))
      assert.equals(3, report.ledgers[1].accounts)
      assert.equals(12105, report.ledgers[1].debits_posted) -- 10000 + 2000 + 100 + 5
    end)
  end)

  describe("a random workload", function()
    local accts = {}
    local N_ACCOUNTS, N_TASKS, PER_TASK = 8, 16, 25

    lazy_setup(function()
      local list = {}
      for i = 1, N_ACCOUNTS do
        accts[i] = ids:id()
        local flags = { "history" }
        if i <= 3 then flags[2] = "debits_must_not_exceed_credits" end
        list[i] = { id = accts[i], ledger = L2, code = 1, flags = flags }
      end
      accounts(list)
      -- money in from the last account, which has no limit
      for i = 1, N_ACCOUNTS - 1 do
        assert.equals("ok", lg:transfer({ id = ids:id(), debit_account_id = accts[N_ACCOUNTS],
                                          credit_account_id = accts[i], amount = 500, ledger = L2, code = 1 }))
      end
      local done, failed = 0, nil
      for task = 1, N_TASKS do
        nuvion.spawn(function()
          local ok, err = pcall(function()
            local holds = {}
            for _ = 1, PER_TASK do
              local a, b = math.random(N_ACCOUNTS), math.random(N_ACCOUNTS - 1)
              if b >= a then b = b + 1 end
              local kind = math.random(10)
              local ev = { id = ids:id(), debit_account_id = accts[a], credit_account_id = accts[b],
                           amount = math.random(60), ledger = L2, code = 1 }
              if kind <= 3 then
                ev.pending = true
                ev.timeout = math.random(3) == 1 and 1 or 0
                local r = lg:create_transfers({ ev })
                if r and r[1] == "ok" then holds[#holds + 1] = ev.id end
              elseif kind <= 5 and #holds > 0 then
                local h = table.remove(holds, math.random(#holds))
                if kind == 4 then
                  lg:post({ id = ids:id(), pending_id = h, amount = math.random(0, 30) })
                else
                  lg:void({ id = ids:id(), pending_id = h })
                end
              elseif kind == 6 then
                ev.balancing_debit = true
                lg:create_transfers({ ev })
              elseif kind == 7 then
                local ev2 = { id = ids:id(), debit_account_id = accts[b], credit_account_id = accts[a],
                              amount = math.random(60), ledger = L2, code = 2 }
                ev.linked = true
                lg:create_transfers({ ev, ev2 })
              elseif kind == 8 and task % 8 == 0 then
                ev.pending, ev.closing_credit, ev.timeout = true, true, 1
                lg:create_transfers({ ev })
              else
                lg:create_transfers({ ev })
              end
            end
          end)
          if not ok then failed = failed or err end
          done = done + 1
        end)
      end
      local deadline = nuvion.monotonic_ms() + 60000
      while done < N_TASKS and nuvion.monotonic_ms() < deadline do nuvion.sleep(5) end
      assert(not failed, failed)
      assert.equals(N_TASKS, done)
    end)

    local function check_history(acct)
      local entries, after = {}, nil
      repeat
        local page = assert(lg:history(acct, { limit = 7, after = after }))
        for _, e in ipairs(page.data) do entries[#entries + 1] = e end
        after = page.data[#page.data] and page.data[#page.data].timestamp
      until not page.has_more
      local posted, last_ts = 0, nil
      for _, e in ipairs(entries) do
        posted = posted + (e.direction == "credit" and e.amount or -e.amount)
        assert.equals(posted, e.posted, "entry " .. s(e.transfer_id))
        assert.equals(e.credits_posted - e.debits_posted, e.posted)
        if last_ts then assert.is_true(s(last_ts) < s(e.timestamp)) end
        last_ts = e.timestamp
      end
      local b = assert(lg:balances(acct))
      assert.equals(b.posted, posted)
      return #entries
    end

    it("keeps every invariant, and each history adds up to its account's posted balance", function()
      local report = assert(invariants.check(lg.db, { ledgers = { L2 } }))
      assert.is_true(report.ok, json.encode(report.problems))
      local total = 0
      for _, a in ipairs(accts) do total = total + check_history(a) end
      assert.is_true(total > N_ACCOUNTS, "entries: " .. total)
    end)

    it("still holds after the short holds expired", function()
      nuvion.sleep(2500) -- timeouts of 1 s, then the posting layer's sweep (every second)
      local report = assert(invariants.check(lg.db, { ledgers = { L2 } }))
      assert.is_true(report.ok, json.encode(report.problems))
      local holds = assert(lg.db:query([[SELECT count(*) FILTER (WHERE h.status = 2) AS posted,
        count(*) FILTER (WHERE h.status = 3) AS voided, count(*) FILTER (WHERE h.status = 4) AS expired,
        count(*) FILTER (WHERE h.status = 1 AND h.expires_at IS NOT NULL) AS due
        FROM ledger_holds h JOIN ledger_transfers t ON t.id = h.id WHERE t.ledger = $1]], L2))[1]
      assert.equals(0, holds.due)
      -- the workload reached each way a hold ends
      assert.is_true(holds.posted > 0 and holds.voided > 0 and holds.expired > 0, json.encode(holds))
    end)
  end)
end)
