-- The posting layer's limits and failures, each hit: the call size, batch_max, queue_max (a
-- full queue answers ledger_overloaded at once), timeout_ms (a batch stuck behind a lock answers
-- ledger_unavailable, and nothing of it is applied), a database that cannot be reached, bad
-- options and bad values (they raise, before anything is queued). Real Postgres.
local nuvion = require "nuvion"
local pg = require "nuvion.pg"
local ledger = require "nuvion.ledger"

local URL = os.getenv("NUVION_LEDGER_DATABASE_URL")
local LEDGER = 300000 + math.random(0, 99999)

local function ids(n)
  local base = tonumber(nuvion.random_hex(5), 16) * 1000
  local out = {}
  for i = 1, n do out[i] = base + i end
  return out
end

-- A single-phase transfer of amount between two accounts of this spec's ledger.
local function xfer(id, from, to, amount)
  return { id = id, debit_account_id = from, credit_account_id = to, amount = amount, ledger = LEDGER, code = 1 }
end

describe("nuvion.ledger limits", function()
  local db, lg, acc

  lazy_setup(function()
    assert(URL, "NUVION_LEDGER_DATABASE_URL is not set")
    db = pg.pool(URL, { max = 2 })
    lg = ledger.open()
    acc = ids(2)
    local res = assert(lg:create_accounts({ { id = acc[1], ledger = LEDGER, code = 1 },
                                            { id = acc[2], ledger = LEDGER, code = 1 } }))
    assert.same({ "ok", "ok" }, res)
  end)

  it("a call of more than batch_max events raises; batch_max events pass", function()
    local small = ledger.open(URL, { batch_max = 3 })
    local id = ids(4)
    local list = {}
    for i = 1, 4 do list[i] = xfer(id[i], acc[1], acc[2], 1) end
    assert.has_error(function() small:create_transfers(list) end,
      "ledger: create_transfers of 4 events: at most batch_max (3) a call")
    list[4] = nil
    assert.same({ "ok", "ok", "ok" }, small:create_transfers(list))
    local rows = assert(db:query("SELECT count(*) AS n FROM ledger_transfers WHERE id = $1", id[4]))
    assert.equal(0, rows[1].n)
  end)

  it("calls larger than a whole batch are refused by the C layer too (8190 events)", function()
    local big = ledger.open(URL, { batch_max = 8189 })
    local list = {}
    for i = 1, 8190 do list[i] = { id = i } end
    assert.has_error(function() big.engine:create_transfers(list) end,
      "ledger: a call has from 1 to 8189 events, not 8190")
  end)

  it("a full queue answers ledger_overloaded at once and applies nothing", function()
    local tiny = ledger.open(URL, { queue_max = 2, inflight = 1 })
    local id = ids(3)
    local out = {}
    local done = 0
    for i = 1, 3 do
      nuvion.spawn(function()
        local r, err = tiny:transfer(xfer(id[i], acc[1], acc[2], 1))
        out[i] = r or err.code
        done = done + 1
      end)
    end
    local deadline = nuvion.monotonic_ms() + 10000
    while done < 3 and nuvion.monotonic_ms() < deadline do nuvion.sleep(5) end
    -- the tasks run in an order of the loop's choosing: two are queued, the third is refused
    local refused
    for i = 1, 3 do
      if out[i] == "ledger_overloaded" then
        assert.is_nil(refused, "one call refused, not two")
        refused = i
      else
        assert.equal("ok", out[i])
      end
    end
    assert.is_not_nil(refused)
    local rows = assert(db:query("SELECT count(*) AS n FROM ledger_transfers WHERE id = $1", id[refused]))
    assert.equal(0, rows[1].n)
  end)

  it("a batch stuck behind a lock past timeout_ms fails whole: ledger_unavailable, nothing applied", function()
    local slow = ledger.open(URL, { timeout_ms = 300, inflight = 1 })
    local holder = pg.pool(URL, { max = 1, prepare = false })
    local locked, release = false, false
    nuvion.spawn(function()
      holder:tx(function(tx)
        assert(tx:query("SELECT id FROM ledger_accounts WHERE id = $1 FOR UPDATE", acc[1]))
        locked = true
        while not release do nuvion.sleep(10) end
      end)
    end)
    while not locked do nuvion.sleep(5) end
    local id = ids(1)[1]
    local t0 = nuvion.monotonic_ms()
    local r, err = slow:transfer(xfer(id, acc[1], acc[2], 1))
    local waited = nuvion.monotonic_ms() - t0
    release = true
    assert.is_nil(r)
    assert.equal("ledger_unavailable", err.code)
    assert.is_true(err.retryable)
    assert.is_true(waited >= 250 and waited < 5000, "failed after " .. waited .. " ms")
    nuvion.sleep(50)
    local rows = assert(db:query("SELECT count(*) AS n FROM ledger_transfers WHERE id = $1", id))
    assert.equal(0, rows[1].n)
    -- the retry goes through once the lock is gone
    assert.equal("ok", slow:transfer(xfer(id, acc[1], acc[2], 1)))
  end)

  it("a conflict re-runs the batch at most 3 times, then fails it whole", function()
    -- a hold row without its transfer (injected): every run of the batch that creates that
    -- hold meets a unique violation on ledger_holds, a conflict the engine retries
    local own = ledger.open(URL, { inflight = 1, sweep_ms = 0 })
    local id = ids(1)[1]
    assert(db:query("INSERT INTO ledger_holds (id, debit_account_id, credit_account_id, status, expires_at) " ..
                    "VALUES ($1, $2, $3, 1, NULL)", id, acc[1], acc[2]))
    local before = own:stats()
    local hold = xfer(id, acc[1], acc[2], 1)
    hold.pending = true
    local r, err = own:transfer(hold)
    local after = own:stats()
    assert(db:query("DELETE FROM ledger_holds WHERE id = $1", id))
    assert.is_nil(r)
    assert.equal("ledger_unavailable", err.code)
    assert.matches("23505", err.message, 1, true)
    assert.equal(3, after.retries - before.retries)
    assert.equal(1, after.failed_batches - before.failed_batches)
    local rows = assert(db:query("SELECT count(*) AS n FROM ledger_transfers WHERE id = $1", id))
    assert.equal(0, rows[1].n)
  end)

  it("a database that cannot be reached answers ledger_unavailable", function()
    -- port 1: nothing listens there, the connection is refused at once
    local down = ledger.open("postgres://nobody:x@127.0.0.1:1/none?connect_timeout=2")
    local r, err = down:transfer(xfer(1, 2, 3, 1))
    assert.is_nil(r)
    assert.equal("ledger_unavailable", err.code)
  end)

  it("bad values and options raise before anything is queued", function()
    local t = { id = 1, debit_account_id = acc[1], credit_account_id = acc[2], ledger = LEDGER, code = 1 }
    for _, bad in ipairs({ 1.5, -1, 2 ^ 60, "12a", "", "340282366920938463463374607431768211456", true }) do
      t.amount = bad
      assert.has_error(function() lg:transfer(t) end)
    end
    t.amount, t.flags = 1, { "pending", "nope" }
    assert.has_error(function() lg:transfer(t) end, "ledger: event 1: flags has an unknown flag 'nope'")
    t.flags, t.code = nil, 65536
    assert.has_error(function() lg:transfer(t) end, "ledger: event 1: code must be at most 65535")
    assert.has_error(function() ledger.open(URL, { inflight = 17 }) end)
    assert.has_error(function() ledger.open(URL, { batch_wait_us = 100001 }) end)
    assert.has_error(function() ledger.open(URL, { queue_max = 0 }) end)
    assert.has_error(function() ledger.open(URL, { colour = 1 }) end, "ledger.open: unknown option 'colour'")
  end)

  it("2^128-1 amounts and ids travel exactly", function()
    local max = "340282366920938463463374607431768211455"
    local r = lg:transfer(xfer(max, acc[1], acc[2], 1))
    assert.equal("id_must_not_be_int_max", r)
    local big = ids(2)
    local res = assert(lg:create_accounts({ { id = big[1], ledger = LEDGER, code = 1 },
                                            { id = big[2], ledger = LEDGER, code = 1 } }))
    assert.same({ "ok", "ok" }, res)
    local id = ids(1)[1]
    assert.equal("ok", lg:transfer(xfer(id, big[1], big[2], max)))
    local rows = assert(db:query("SELECT amount::text AS a FROM ledger_transfers WHERE id = $1", id))
    assert.equal(max, rows[1].a)
    assert.equal("overflows_debits_posted", lg:transfer(xfer(id + 1, big[1], big[2], 1)))
  end)
end)
