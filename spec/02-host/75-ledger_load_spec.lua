-- The ledger under load and under a crash: two OS processes post a randomized workload (single
-- transfers, holds posted, voided or left to expire, linked payment + fee chains, retries) onto
-- hot accounts with limits and cold ones; then every acknowledged transfer must be in the
-- database exactly as answered, and the invariant checker must find nothing. The crash test kills
-- a posting process with SIGKILL in the middle of a loaded run and checks the same after a restart.
-- Real Postgres (NUVION_LEDGER_DATABASE_URL, migrated by make test); nothing mocked.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"
local json = require "nuvion.json"
local pg = require "nuvion.pg"
local process = require "nuvion.process"
local ledger = require "nuvion.ledger"
local invariants = require "nuvion.ledger.invariants"

local FIXTURE = helpers.root .. "/spec/fixtures/ledger/load.lua"
local ACCOUNTS, HOT = 24, 8
local RUN_MS, TASKS = 2500, 40        -- per process
local PROCESS_WAIT_MS = 30000         -- a load process ends well within this

local function random_base(digits)
  local hex = nuvion.random_hex(8)
  return tostring(tonumber(hex, 16) % (10 ^ digits) + 10 ^ (digits - 1))
end

-- Accounts LEDGER: ACC_BASE+1..+ACCOUNTS, the first HOT limited and funded from ACC_BASE+999.
local function set_up_accounts(lg, ledger_no, acc_base)
  local list = {}
  for i = 1, ACCOUNTS do
    list[i] = { id = acc_base + i, ledger = ledger_no, code = 10,
                flags = i <= HOT and { "debits_must_not_exceed_credits", "history" } or nil }
  end
  list[#list + 1] = { id = acc_base + 999, ledger = ledger_no, code = 99 } -- the funding account
  local res = assert(lg:create_accounts(list))
  for i = 1, #list do assert.equal("ok", res[i]) end
  local funding = {}
  for i = 1, HOT do
    funding[i] = { id = acc_base * 1000 + i, debit_account_id = acc_base + 999, credit_account_id = acc_base + i,
                   amount = 400, ledger = ledger_no, code = 3 }
  end
  res = assert(lg:create_transfers(funding))
  for i = 1, HOT do assert.equal("ok", res[i]) end
end

local function spawn_load(ledger_no, id_base, acc_base, ms)
  return process.spawn({ helpers.bin, "run", FIXTURE, tostring(ledger_no), id_base, tostring(acc_base),
                         tostring(ACCOUNTS), tostring(HOT), tostring(ms), tostring(TASKS) },
                       { output = "pipe" })
end

-- Reads a load process's answers until it ends (or until stop_after acks, if given).
local function read_acks(p, acks, stop_after)
  local deadline = nuvion.monotonic_ms() + PROCESS_WAIT_MS
  local count, done = 0, false
  while nuvion.monotonic_ms() < deadline do
    local line = p:line(deadline - nuvion.monotonic_ms())
    if not line then break end
    local id, result = line:match("^ack (%d+) (%S+)$")
    if id then
      acks[#acks + 1] = { id = id, result = result }
      count = count + 1
      if stop_after and count >= stop_after then break end
    elseif line == "done" then
      done = true
    end
  end
  return count, done
end

-- Every acknowledged id against the database: "ok" and "exists" are there, a failure is not
-- (unless the same id was accepted by an earlier call, which then answers "exists").
local function check_acks(db, acks)
  local by_id = {}
  for _, a in ipairs(acks) do
    local seen = by_id[a.id] or {}
    seen[#seen + 1] = a.result
    by_id[a.id] = seen
  end
  local ids = {}
  for id in pairs(by_id) do ids[#ids + 1] = id end
  local present = {}
  for i = 1, #ids, 5000 do
    local chunk = {}
    for j = i, math.min(i + 4999, #ids) do chunk[#chunk + 1] = ids[j] end
    local rows = assert(db:query("SELECT id::text AS id, count(*) AS n FROM ledger_transfers " ..
                                 "WHERE id = ANY($1::numeric[]) GROUP BY id", "{" .. table.concat(chunk, ",") .. "}"))
    for _, r in ipairs(rows) do
      assert.equal(1, r.n)
      present[r.id] = true
    end
  end
  local oks, failures = 0, 0
  for id, results in pairs(by_id) do
    local accepted = false
    for _, r in ipairs(results) do
      if r == "ok" or r == "exists" then accepted = true end
    end
    if accepted then
      oks = oks + 1
      assert.is_true(present[id] == true, "acknowledged transfer " .. id .. " is missing")
    else
      failures = failures + 1
      for _, r in ipairs(results) do
        -- a lost commit answer may or may not have committed; every other failure applied nothing
        if r ~= "error:ledger_timeout" then
          assert.is_nil(present[id], "transfer " .. id .. " answered " .. r .. " but is in the ledger")
        end
      end
    end
  end
  return oks, failures
end

local function assert_invariants(db, ledger_no)
  local report = invariants.check(db, { ledgers = { ledger_no } })
  assert.is_true(report.ok, "invariants: " .. json.encode(report.problems))
end

describe("nuvion.ledger under load", function()
  local db, lg

  lazy_setup(function()
    assert(os.getenv("NUVION_LEDGER_DATABASE_URL"), "NUVION_LEDGER_DATABASE_URL is not set")
    lg = ledger.open()
    db = pg.pool(os.getenv("NUVION_LEDGER_DATABASE_URL"), { max = 2 })
  end)

  it("two processes post at once: every answer holds, no overdraft, the invariants hold", function()
    local ledger_no = 100000 + tonumber(nuvion.random_hex(2), 16) * 1000 + math.random(0, 999)
    local acc_base = tonumber(random_base(9))
    set_up_accounts(lg, ledger_no, acc_base)
    local a = spawn_load(ledger_no, random_base(12) .. "1", acc_base, RUN_MS)
    local b = spawn_load(ledger_no, random_base(12) .. "2", acc_base, RUN_MS)
    local acks = {}
    local results = {}
    nuvion.spawn(function() results.a = { read_acks(a, acks) } end)
    nuvion.spawn(function() results.b = { read_acks(b, acks) } end)
    local deadline = nuvion.monotonic_ms() + PROCESS_WAIT_MS
    while (not results.a or not results.b) and nuvion.monotonic_ms() < deadline do nuvion.sleep(20) end
    assert.equal(0, select(2, a:wait(5000)))
    assert.equal(0, select(2, b:wait(5000)))
    assert.is_true(results.a[2] and results.b[2], "both load processes finished their run")
    assert.is_true(#acks > 500, "the load posted (" .. #acks .. " answers)")
    local codes = {}
    for _, x in ipairs(acks) do codes[x.result] = (codes[x.result] or 0) + 1 end
    -- the workload reaches the limits and the chains' failures, not only "ok"
    assert.is_true((codes.ok or 0) > 200, json.encode(codes))
    assert.is_true((codes.exceeds_credits or 0) > 0, json.encode(codes))
    assert.is_true((codes.exists or 0) > 0, json.encode(codes))
    local oks = check_acks(db, acks)
    assert.is_true(oks > 200)
    -- no hot account went below zero, and every counter is the sum of its transfers
    local rows = assert(db:query("SELECT count(*) AS n FROM ledger_accounts WHERE ledger = $1 AND flags & 2 <> 0 " ..
                                 "AND debits_pending + debits_posted > credits_posted", ledger_no))
    assert.equal(0, rows[1].n)
    assert_invariants(db, ledger_no)
  end)

  it("a posting process killed with SIGKILL mid-run loses no acknowledged transfer, doubles none", function()
    local ledger_no = 200000 + tonumber(nuvion.random_hex(2), 16) * 1000 + math.random(0, 999)
    local acc_base = tonumber(random_base(9))
    set_up_accounts(lg, ledger_no, acc_base)
    local acks = {}
    local p = spawn_load(ledger_no, random_base(12) .. "3", acc_base, 20000)
    local seen = read_acks(p, acks, 1500) -- well into the run, batches in flight
    assert.equal(1500, seen)
    assert.is_true(p:kill("KILL"))
    local how = p:wait(5000)
    assert.equal("signal", how)
    -- a restart posts again on the same accounts, and sweeps what the dead process left
    local again = spawn_load(ledger_no, random_base(12) .. "4", acc_base, 1000)
    local _, done = read_acks(again, acks)
    assert.is_true(done)
    assert.equal(0, select(2, again:wait(5000)))
    check_acks(db, acks)
    assert_invariants(db, ledger_no)
  end)
end)
