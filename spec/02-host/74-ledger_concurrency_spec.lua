-- nuvion.ledger under concurrent submitters (many tasks of one worker, batched by the posting
-- layer) on few accounts with debits_must_not_exceed_credits: no overdraft, every "ok" stored
-- exactly once, every failure stored nowhere, the counters equal to the sum of what was ok. Then
-- two more worker processes (bin/nuvion run spec/fixtures/ledger/pay.lua) on the same accounts.
local ledger = require "nuvion.ledger"
local nuvion = require "nuvion"
local process = require "nuvion.process"
local helpers = require "spec.helpers"
local H = require "spec.ledger_helpers"

local new_id = H.ids()
local L = H.random_ledger()
local DMNEC = "debits_must_not_exceed_credits"

local TASKS = 300
local PROCESS_TASKS = 200 -- per process, and as many in this one
local PAIR_FUND = 150     -- each of the two accounts: payments of 1..97 both ways often find too little
local FUND = 5000

describe("nuvion.ledger concurrency", function()
  local lg, db, bank

  local open, tr -- H.maker: accounts and transfers on this file's ledger

  local function num(v) return tonumber(H.str(v)) end

  lazy_setup(function()
    lg = ledger.open()
    open, tr = H.maker(lg, L, new_id)
    db = H.db()
    bank = open(1)
  end)

  it("many tasks draining one account: transfers, holds with posts and voids, linked fee splits", function()
    local s = open(1, { DMNEC })
    local k1, k2, k3 = open(3)
    assert.equals("ok", lg:transfer(tr(nil, bank, s, FUND)))
    local sinks = { k1, k2, k3 }
    local ok_ids, failed_ids = {}, {}
    local moved = { [k1] = 0, [k2] = 0, [k3] = 0 } -- posted into each sink by what was ok
    local outcomes = {}
    H.concurrently(TASKS, function(i)
      local amount = (i * 37) % 50 + 1
      local sink = sinks[i % 3 + 1]
      local kind = i % 4
      if kind == 0 then -- a plain transfer
        local t = tr(nil, s, sink, amount)
        local r = assert(lg:transfer(t))
        outcomes[r] = (outcomes[r] or 0) + 1
        if r == "ok" then
          ok_ids[#ok_ids + 1] = t.id
          moved[sink] = moved[sink] + amount
        else
          assert.equals("exceeds_credits", r)
          failed_ids[#failed_ids + 1] = t.id
        end
      elseif kind == 1 or kind == 2 then -- a hold, then a partial post (1) or a void (2)
        local h = tr(nil, s, sink, amount)
        local r = assert(lg:hold(h))
        outcomes[r] = (outcomes[r] or 0) + 1
        if r ~= "ok" then
          assert.equals("exceeds_credits", r)
          failed_ids[#failed_ids + 1] = h.id
          return
        end
        ok_ids[#ok_ids + 1] = h.id
        local p = { id = new_id(), pending_id = h.id }
        if kind == 1 then
          p.amount = amount - i % amount -- 1 .. amount
          assert.equals("ok", lg:post(p))
          moved[sink] = moved[sink] + p.amount
        else
          assert.equals("ok", lg:void(p))
        end
        ok_ids[#ok_ids + 1] = p.id
      else -- a linked pair: the amount to the sink and a fee of 1 to k3, both or neither
        local a, b = tr(nil, s, sink, amount, { linked = true }), tr(nil, s, k3, 1)
        local res = assert(lg:create_transfers({ a, b }))
        local key = res[1] .. "+" .. res[2]
        outcomes[key] = (outcomes[key] or 0) + 1
        if res[1] == "ok" then
          assert.equals("ok", res[2])
          ok_ids[#ok_ids + 1], ok_ids[#ok_ids + 2] = a.id, b.id
          moved[sink] = moved[sink] + amount
          moved[k3] = moved[k3] + 1
        else
          assert.is_true((res[1] == "exceeds_credits" and res[2] == "linked_event_failed") or
                         (res[1] == "linked_event_failed" and res[2] == "exceeds_credits"),
                         res[1] .. " " .. res[2])
          failed_ids[#failed_ids + 1] = a.id
          failed_ids[#failed_ids + 1] = b.id
        end
      end
    end, 60000)
    -- more was asked than there was: some failed, some passed
    assert.is_true(#failed_ids > 0, "nothing failed")
    assert.is_true(#ok_ids > 0, "nothing passed")
    -- every ok is stored, once (primary key), every failure nowhere
    assert.equals(#ok_ids, H.stored_count(db, ok_ids))
    assert.equals(0, H.stored_count(db, failed_ids))
    -- the counters are the sums of what was ok; no overdraft; no hold left
    local total = moved[k1] + moved[k2] + moved[k3]
    local sc = H.counters(lg, s)
    assert.same({ "0", tostring(total), "0", tostring(FUND) }, sc)
    assert.is_true(total <= FUND)
    for _, k in ipairs(sinks) do
      assert.same({ "0", "0", "0", tostring(moved[k]) }, H.counters(lg, k))
    end
  end)

  it("two accounts paying each other at once: no deadlock, money conserved, limits kept", function()
    local x, y = open(2, { DMNEC })
    local fund = { tr(nil, bank, x, PAIR_FUND), tr(nil, bank, y, PAIR_FUND) }
    assert.same({ "ok", "ok" }, assert(lg:create_transfers(fund)))
    local sent = { [x] = 0, [y] = 0 }
    local ok_ids, failed_ids = {}, {}
    H.concurrently(TASKS, function(i)
      local from, to = x, y
      if i % 2 == 0 then from, to = y, x end
      local amount = (i * 53) % 97 + 1
      local t = tr(nil, from, to, amount)
      local r = assert(lg:transfer(t))
      if r == "ok" then
        sent[from] = sent[from] + amount
        ok_ids[#ok_ids + 1] = t.id
      else
        assert.equals("exceeds_credits", r)
        failed_ids[#failed_ids + 1] = t.id
      end
    end, 60000)
    assert.is_true(#ok_ids > 0 and #failed_ids > 0, #ok_ids .. " ok, " .. #failed_ids .. " failed")
    assert.equals(#ok_ids, H.stored_count(db, ok_ids))
    assert.equals(0, H.stored_count(db, failed_ids))
    assert.same({ "0", tostring(sent[x]), "0", tostring(PAIR_FUND + sent[y]) }, H.counters(lg, x))
    assert.same({ "0", tostring(sent[y]), "0", tostring(PAIR_FUND + sent[x]) }, H.counters(lg, y))
    local cx, cy = H.counters(lg, x), H.counters(lg, y)
    assert.is_true(num(cx[2]) <= num(cx[4]) and num(cy[2]) <= num(cy[4]))
    assert.equals(2 * PAIR_FUND, num(cx[4]) - num(cx[2]) + num(cy[4]) - num(cy[2]))
  end)

  it("one id submitted by many tasks at once: created once, the others exist", function()
    local a, b = open(2)
    local id = new_id()
    local got = {}
    H.concurrently(20, function(i)
      -- half the same body, half another amount
      local r = assert(lg:transfer(tr(id, a, b, i % 2 == 0 and 10 or 11)))
      got[#got + 1] = r
    end)
    local count = {}
    for _, r in ipairs(got) do count[r] = (count[r] or 0) + 1 end
    assert.equals(1, count.ok)
    local amount = H.str(H.transfer(lg, id).amount)
    assert.is_true(amount == "10" or amount == "11")
    -- the 9 others with the winner's body exist; the 10 with the other body differ
    assert.same({ ok = 1, exists = 9, exists_with_different_amount = 10 }, count)
    assert.same({ "0", amount, "0", "0" }, H.counters(lg, a))
    assert.same({ "0", "0", "0", amount }, H.counters(lg, b))
    -- one account id created by many tasks at once
    local acc = new_id()
    local res = {}
    H.concurrently(10, function()
      local r = assert(lg:create_accounts({ { id = acc, ledger = L, code = 1 } }))[1]
      res[#res + 1] = r -- (not in one statement: the index would be taken before the call yields)
    end)
    table.sort(res)
    assert.same({ "exists", "exists", "exists", "exists", "exists", "exists", "exists", "exists", "exists", "ok" }, res)
  end)

  it("many tasks resolving one hold at once: exactly one post or void wins", function()
    local a, b = open(2)
    local h = new_id()
    assert.equals("ok", lg:hold(tr(h, a, b, 100)))
    local wins, losers = {}, {}
    H.concurrently(20, function(i)
      local r
      if i % 2 == 0 then
        r = assert(lg:post({ id = new_id(), pending_id = h, amount = 60 }))
      else
        r = assert(lg:void({ id = new_id(), pending_id = h }))
      end
      if r == "ok" then wins[#wins + 1] = i % 2 == 0 and "post" or "void" else losers[#losers + 1] = r end
    end)
    assert.equals(1, #wins)
    assert.equals(19, #losers)
    local status = H.transfer(lg, h).status
    local want_loss = wins[1] == "post" and "pending_transfer_already_posted" or "pending_transfer_already_voided"
    for _, r in ipairs(losers) do assert.equals(want_loss, r) end
    if wins[1] == "post" then
      assert.equals("posted", status)
      assert.same({ "0", "60", "0", "0" }, H.counters(lg, a))
    else
      assert.equals("voided", status)
      assert.same({ "0", "0", "0", "0" }, H.counters(lg, a))
    end
  end)

  it("concurrent calls are gathered into batches, none larger than batch_max", function()
    local a, b = open(2)
    for _, case in ipairs({ { batch_max = 1024, most = 20 }, { batch_max = 8, most = 200 } }) do
      -- an engine of its own, with no sweep: its stats count these calls' batches only
      local eng = ledger.open(nil, { batch_max = case.batch_max, inflight = 1, sweep_ms = 0 })
      local before = eng:stats()
      H.concurrently(200, function()
        assert.equals("ok", eng:transfer(tr(nil, a, b, 1)))
      end)
      local after = eng:stats()
      local batches = after.batches - before.batches
      assert.equals(200, after.events - before.events)
      assert.is_true(batches <= case.most, batches .. " batches")
      assert.is_true(batches * case.batch_max >= 200, batches .. " batches of at most " .. case.batch_max)
    end
    assert.same({ "0", "400", "0", "0" }, H.counters(lg, a))
  end)

  it("past queue_max a call is refused at once with ledger_overloaded, nothing of it applied; its retry passes",
     function()
    local a, b = open(2)
    local small = ledger.open(nil, { queue_max = 3, inflight = 1 })
    local got = {}
    H.concurrently(30, function(i)
      local t = tr(nil, a, b, 1)
      local r, err = small:transfer(t)
      got[i] = { t = t, r = r, err = err }
    end)
    local ok_ids, over = {}, {}
    for _, g in ipairs(got) do
      if g.r == "ok" then
        ok_ids[#ok_ids + 1] = g.t.id
      else
        assert.is_nil(g.r)
        assert.equals("ledger_overloaded", g.err.code)
        assert.is_true(g.err.retryable)
        over[#over + 1] = g.t
      end
    end
    assert.is_true(#over > 0 and #ok_ids > 0, #ok_ids .. " ok, " .. #over .. " overloaded")
    local over_ids = {}
    for i, t in ipairs(over) do over_ids[i] = t.id end
    assert.equals(#ok_ids, H.stored_count(db, ok_ids))
    assert.equals(0, H.stored_count(db, over_ids))
    assert.same({ "0", tostring(#ok_ids), "0", "0" }, H.counters(lg, a))
    for _, t in ipairs(over) do assert.equals("ok", small:transfer(t)) end
    assert.same({ "0", "30", "0", "0" }, H.counters(lg, a))
  end)

  it("two worker processes and this one paying between the same two accounts at once", function()
    local x, y = open(2, { DMNEC })
    local fund = { tr(nil, bank, x, PAIR_FUND), tr(nil, bank, y, PAIR_FUND) }
    assert.same({ "ok", "ok" }, assert(lg:create_transfers(fund)))
    local start_at = nuvion.now() + 1.5 -- all three start together, once the two have loaded
    local procs = {}
    for w = 1, 2 do
      local prefix = new_id() .. "9"
      procs[w] = assert(process.spawn({ helpers.bin, "run", helpers.root .. "/spec/fixtures/ledger/pay.lua", x, y,
                                        tostring(L), tostring(PROCESS_TASKS), tostring(w), prefix,
                                        string.format("%.3f", start_at) }, { output = "pipe" }))
    end
    -- and this worker's own tasks, in the same second
    local lines = {}
    nuvion.sleep(math.max(0, math.floor((start_at - nuvion.now()) * 1000)))
    H.concurrently(PROCESS_TASKS, function(i)
      local from, to = x, y
      if i % 2 == 0 then from, to = y, x end
      local amount = (i * 31) % 97 + 1
      local t = tr(nil, from, to, amount)
      local r, err = lg:transfer(t)
      lines[#lines + 1] = t.id .. " " .. from .. " " .. amount .. " " .. tostring(r or (err and err.code))
    end, 60000)
    for w = 1, 2 do
      local got = 0
      while true do
        local line = procs[w]:line(60000)
        if not line then break end
        if line:find("^%d+ %d+ %d+ %S+$") then
          lines[#lines + 1] = line
          got = got + 1
        end
      end
      local how, code = procs[w]:wait(10000)
      procs[w]:close()
      assert.same({ "exit", 0 }, { how, code })
      assert.equals(PROCESS_TASKS, got)
    end
    assert.equals(3 * PROCESS_TASKS, #lines)
    local sent = { [x] = 0, [y] = 0 }
    local ok_ids, failed_ids = {}, {}
    for _, line in ipairs(lines) do
      local id, from, amount, r = line:match("^(%d+) (%d+) (%d+) (%S+)$")
      if r == "ok" then
        sent[from] = sent[from] + tonumber(amount)
        ok_ids[#ok_ids + 1] = id
      else
        assert.equals("exceeds_credits", r, line)
        failed_ids[#failed_ids + 1] = id
      end
    end
    assert.is_true(#ok_ids > 0 and #failed_ids > 0, #ok_ids .. " ok, " .. #failed_ids .. " failed")
    assert.equals(#ok_ids, H.stored_count(db, ok_ids))
    assert.equals(0, H.stored_count(db, failed_ids))
    assert.same({ "0", tostring(sent[x]), "0", tostring(PAIR_FUND + sent[y]) }, H.counters(lg, x))
    assert.same({ "0", tostring(sent[y]), "0", tostring(PAIR_FUND + sent[x]) }, H.counters(lg, y))
  end)

  it("the invariants hold on this file's ledger", function()
    assert.same({}, H.invariants(db, L))
  end)
end)
