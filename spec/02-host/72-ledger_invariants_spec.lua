-- nuvion.ledger.invariants and lua/bin/ledger_check.lua against the real ledger database: a
-- consistent ledger passes; each kind of broken invariant, injected by SQL inside a transaction
-- that is rolled back (the checker reads through that transaction), is found; the script exits 1
-- on a problem; 100,000 transfers are checked in a bounded time.
local pg = require "nuvion.pg"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local process = require "nuvion.process"
local helpers = require "spec.helpers"
local invariants = require "nuvion.ledger.invariants"
local fixture = require "spec.ledger_fixture"

local URL = os.getenv("NUVION_LEDGER_DATABASE_URL")
local U127 = "170141183460469231731687303715884118073" -- 2^127 + 12345

local function kinds(report)
  local out = {}
  for _, p in ipairs(report.problems) do out[p.kind] = (out[p.kind] or 0) + 1 end
  return out
end

local function sorted_kinds(report)
  local list = {}
  for k in pairs(kinds(report)) do list[#list + 1] = k end
  table.sort(list)
  return list
end

-- Runs bin/nuvion run lua/bin/ledger_check.lua with args; returns its exit code and output.
local function run_check(args)
  local argv = { helpers.bin, "run", helpers.root .. "/lua/bin/ledger_check.lua" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local p = assert(process.spawn(argv, { output = "pipe" }))
  local out = {}
  while true do
    local line = p:line(20000)
    if not line then break end
    out[#out + 1] = line
  end
  local _, code = p:wait(20000)
  p:close()
  return code, out
end

describe("nuvion.ledger.invariants", function()
  local db, f
  local a, b, c, d, e, z, big1, big2
  local ids = {}

  -- Runs break(tx) inside a transaction, checks this run's ledgers (or opts.ledgers) through
  -- it, rolls everything back and returns the report.
  local function broken(break_fn, opts)
    local report
    local _, err = db:tx(function(tx)
      break_fn(tx)
      local o = opts or {}
      if o.all then o.all = nil else o.ledgers = o.ledgers or { f.ledger } end
      report = assert(invariants.check(tx, o))
      return nil, "rolled back"
    end)
    assert.equals("rolled back", err)
    return report
  end

  local function q(tx, sql, ...)
    return assert(tx:query({ sql, n = select("#", ...), ... }))
  end

  lazy_setup(function()
    assert(URL, "NUVION_LEDGER_DATABASE_URL is not set: run the specs with make test")
    db = pg.pool(URL, { max = 3 })
    f = fixture.new(db)
    a = f:account({ flags = 2 + 8 })  -- debits_must_not_exceed_credits, history
    b = f:account()
    c = f:account({ flags = 4 })      -- credits_must_not_exceed_debits
    d = f:account()                   -- closed by a closing hold still pending
    e = f:account({ flags = 8 })      -- closed, then reopened by a void
    z = f:account()                   -- never moves
    ids.fund = f:transfer({ debit = b, credit = a, amount = 1000 })
    ids.hold1 = f:hold({ debit = a, credit = b, amount = 300 })
    f:resolve(ids.hold1, "post", 200)
    ids.hold2 = f:hold({ debit = a, credit = b, amount = 100 })
    f:resolve(ids.hold2, "void")
    ids.hold3 = f:hold({ debit = a, credit = b, amount = 50, timeout = 3600 })
    ids.hold4 = f:hold({ debit = b, credit = a, amount = 20, timeout = 1 })
    f:resolve(ids.hold4, "expire")
    f:transfer({ debit = c, credit = b, amount = 500 })
    f:transfer({ debit = b, credit = c, amount = 100 })
    ids.closing = f:hold({ debit = d, credit = b, amount = 1, closing = "debit" })
    ids.reopen = f:hold({ debit = b, credit = e, amount = 2, closing = "credit" })
    f:resolve(ids.reopen, "void")
    big1 = f:account({ flags = 8 })
    big2 = f:account()
    f:transfer({ debit = big2, credit = big1, amount = U127 })
  end)

  it("passes on a consistent ledger and reports its exact sums", function()
    assert.is_true(assert(invariants.check(db, { ledgers = { f.ledger }, full = true })).ok)
    local report = assert(invariants.check(db, { ledgers = { f.ledger } }))
    assert.same({}, sorted_kinds(report))
    assert.is_true(report.ok)
    assert.equals(0, report.problems_count)
    assert.equals(1, #report.ledgers)
    local l = report.ledgers[1]
    assert.equals(f.ledger, l.ledger)
    assert.equals(8, l.accounts)
    assert.equals(13, l.transfers)
    assert.equals(51, l.debits_pending)  -- hold3 50 + the closing hold 1
    assert.equals(51, l.credits_pending)
    -- 1000 + 200 + 500 + 100 + 2^127 + 12345
    assert.equals("170141183460469231731687303715884119873", tostring(l.debits_posted))
    assert.equals(tostring(l.debits_posted), tostring(l.credits_posted))
  end)

  it("checks every ledger when none is named", function()
    local report = assert(invariants.check(db))
    local found = false
    for _, l in ipairs(report.ledgers) do found = found or l.ledger == f.ledger end
    assert.is_true(found)
  end)

  local cases = {
    { "a posted counter moved on one side only", { "account_counters_mismatch", "ledger_posted_unbalanced" },
      function(tx)
        q(tx, "UPDATE ledger_accounts SET debits_posted = debits_posted + 1 WHERE id = $1::numeric", b)
      end },
    { "a pending counter moved on one side only", { "account_counters_mismatch", "ledger_pending_unbalanced" },
      function(tx)
        q(tx, "UPDATE ledger_accounts SET credits_pending = credits_pending + 3 WHERE id = $1::numeric", b)
      end },
    { "counters that balance but match no transfer", { "account_counters_mismatch" },
      function(tx)
        q(tx, "UPDATE ledger_accounts SET debits_pending = debits_pending + 3 WHERE id = $1::numeric", a)
        q(tx, "UPDATE ledger_accounts SET credits_pending = credits_pending + 3 WHERE id = $1::numeric", b)
      end },
    { "an account past its debit limit",
      { "account_counters_mismatch", "account_exceeds_limit", "balance_row_stale" },
      function(tx)
        q(tx, "ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_debits_must_not_exceed_credits")
        q(tx, "UPDATE ledger_accounts SET debits_posted = credits_posted + 1 WHERE id = $1::numeric", a)
        q(tx, "UPDATE ledger_accounts SET credits_posted = credits_posted + 801 WHERE id = $1::numeric", b)
      end },
    { "an account past its credit limit", { "account_counters_mismatch", "account_exceeds_limit" },
      function(tx)
        q(tx, "ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_credits_must_not_exceed_debits")
        q(tx, "UPDATE ledger_accounts SET credits_pending = 401 WHERE id = $1::numeric", c)
        q(tx, "UPDATE ledger_accounts SET debits_pending = debits_pending + 401 WHERE id = $1::numeric", b)
      end },
    { "both limit flags", { "account_flags_exclusive" },
      function(tx) q(tx, "UPDATE ledger_accounts SET flags = 6 WHERE id = $1::numeric", z) end },
    { "a reserved account flag", { "account_flags_reserved" },
      function(tx) q(tx, "UPDATE ledger_accounts SET flags = 16 WHERE id = $1::numeric", z) end },
    { "a closed flag without a closing hold", { "account_closed_mismatch" },
      function(tx) q(tx, "UPDATE ledger_accounts SET flags = flags | 32 WHERE id = $1::numeric", e) end },
    { "a pending closing hold on an open account", { "account_closed_mismatch" },
      function(tx) q(tx, "UPDATE ledger_accounts SET flags = flags & ~32 WHERE id = $1::numeric", d) end },
    { "a transfer whose account does not exist", { "account_counters_mismatch", "account_missing" },
      function(tx)
        q(tx, [[INSERT INTO ledger_transfers VALUES ($1::numeric, $2::numeric, $3::numeric, 5, 0, 0, 0, 0, 0,
                $4, 1, 0, $5::bigint)]], f:id(), b, f.prefix .. "999999", f.ledger, f:now())
      end },
    { "a transfer with another ledger than its accounts'", { "account_counters_mismatch", "account_missing" },
      function(tx)
        q(tx, [[INSERT INTO ledger_transfers VALUES ($1::numeric, $2::numeric, $3::numeric, 5, 0, 0, 0, 0, 0,
                $4, 1, 0, $5::bigint)]], f:id(), b, c, f.ledger - 1, f:now())
        q(tx, "UPDATE ledger_accounts SET debits_posted = debits_posted + 5 WHERE id = $1::numeric", b)
        q(tx, "UPDATE ledger_accounts SET credits_posted = credits_posted + 5 WHERE id = $1::numeric", c)
      end, { ledgers_extra = -1 } },
    { "a transfer row changed behind the trigger's back", { "account_counters_mismatch" },
      function(tx)
        q(tx, "ALTER TABLE ledger_transfers DISABLE TRIGGER ledger_transfers_immutable")
        q(tx, "UPDATE ledger_transfers SET amount = amount + 1 WHERE id = $1::numeric", ids.fund)
      end, nil, { "account_counters_mismatch", "balance_row_step_mismatch" } },
    { "a hold without its state row", { "hold_without_state" },
      function(tx)
        q(tx, [[INSERT INTO ledger_transfers VALUES ($1::numeric, $2::numeric, $3::numeric, 5, 0, 0, 0, 0, 0,
                $4, 1, 2, $5::bigint)]], f:id(), b, c, f.ledger, f:now())
      end },
    { "a hold state without its transfer", { "hold_state_without_transfer" },
      function(tx)
        q(tx, "INSERT INTO ledger_holds VALUES ($1::numeric, $2::numeric, $3::numeric, 3, NULL)", f:id(), a, b)
      end },
    { "a hold state with another deadline", { "hold_state_mismatch" },
      function(tx)
        q(tx, "UPDATE ledger_holds SET expires_at = expires_at + 1 WHERE id = $1::numeric", ids.hold3)
      end },
    { "a hold state with other accounts", { "hold_state_mismatch" },
      function(tx)
        q(tx, "UPDATE ledger_holds SET credit_account_id = $2::numeric WHERE id = $1::numeric", ids.hold3, c)
      end },
    { "a voided hold marked posted", { "hold_resolution_mismatch" },
      function(tx) q(tx, "UPDATE ledger_holds SET status = 2 WHERE id = $1::numeric", ids.hold2) end },
    { "a pending hold marked voided without a void", { "account_counters_mismatch", "hold_resolution_mismatch" },
      function(tx) q(tx, "UPDATE ledger_holds SET status = 3 WHERE id = $1::numeric", ids.hold3) end },
    { "a post of more than the hold", { "account_counters_mismatch", "hold_resolution_mismatch" },
      function(tx)
        q(tx, "ALTER TABLE ledger_transfers DISABLE TRIGGER ledger_transfers_immutable")
        q(tx, "UPDATE ledger_transfers SET amount = 301 WHERE pending_id = $1::numeric AND flags & 4 <> 0", ids.hold1)
      end, nil, { "account_counters_mismatch", "balance_row_step_mismatch", "hold_resolution_mismatch" } },
    { "a second post of one hold",
      { "account_counters_mismatch", "balance_rows_count_mismatch", "hold_resolution_mismatch" },
      function(tx)
        q(tx, [[INSERT INTO ledger_transfers VALUES ($1::numeric, $2::numeric, $3::numeric, 1, $4::numeric, 0, 0, 0,
                0, $5, 1, 4, $6::bigint)]], f:id(), a, b, ids.hold1, f.ledger, f:now())
      end, nil, { "account_counters_mismatch", "balance_row_missing", "balance_rows_count_mismatch",
                  "hold_resolution_mismatch" } },
    { "a post of no hold", { "account_counters_mismatch", "resolution_without_hold" },
      function(tx)
        q(tx, [[INSERT INTO ledger_transfers VALUES ($1::numeric, $2::numeric, $3::numeric, 1, $4::numeric, 0, 0, 0,
                0, $5, 1, 4, $6::bigint)]], f:id(), b, c, f.prefix .. "999998", f.ledger, f:now())
      end },
    { "a post with other accounts than its hold's", { "account_counters_mismatch", "hold_resolution_mismatch" },
      function(tx)
        q(tx, "ALTER TABLE ledger_transfers DISABLE TRIGGER ledger_transfers_immutable")
        q(tx, "UPDATE ledger_transfers SET credit_account_id = $2::numeric WHERE pending_id = $1::numeric",
          ids.hold1, c)
      end },
    { "a balance row of an account without history", { "balance_row_without_history_flag" },
      function(tx)
        q(tx, "INSERT INTO ledger_account_balances VALUES ($1::numeric, $2::bigint, $3::numeric, 0, 0, 0, 0)",
          b, f:now(), ids.fund)
      end },
    { "a balance row of no account (found when every ledger is checked)", { "balance_row_without_account" },
      function(tx)
        q(tx, "INSERT INTO ledger_account_balances VALUES ($1::numeric, $2::bigint, $3::numeric, 0, 0, 0, 0)",
          f.prefix .. "999997", f:now(), ids.fund)
      end, { all = true } },
    { "a balance row naming no transfer", { "balance_row_stale", "balance_rows_count_mismatch" },
      function(tx)
        q(tx, "INSERT INTO ledger_account_balances VALUES ($1::numeric, $2::bigint, $3::numeric, 0, 0, 0, 0)",
          a, f:now(), f.prefix .. "999996")
      end, nil, { "balance_row_mismatch", "balance_row_stale", "balance_rows_count_mismatch" } },
    { "a balance row at another time than its transfer", { "balance_rows_count_mismatch" },
      function(tx)
        q(tx, [[INSERT INTO ledger_account_balances SELECT account_id, $2::bigint, transfer_id, debits_pending,
                debits_posted, credits_pending, credits_posted FROM ledger_account_balances
                WHERE account_id = $1::numeric ORDER BY timestamp DESC LIMIT 1]], a, f:now())
      end, nil, { "balance_row_mismatch", "balance_rows_count_mismatch" } },
    { "a balance row of a transfer of another account", { "balance_rows_count_mismatch" },
      function(tx)
        q(tx, [[INSERT INTO ledger_account_balances SELECT $2::numeric, timestamp, transfer_id, debits_pending,
                debits_posted, credits_pending, credits_posted FROM ledger_account_balances
                WHERE account_id = $1::numeric ORDER BY timestamp DESC LIMIT 1]], a, big1)
      end, nil, { "balance_row_mismatch", "balance_row_step_mismatch", "balance_rows_count_mismatch" } },
    { "a transfer of a history account without its balance row", { "balance_row_stale", "balance_rows_count_mismatch" },
      function(tx)
        q(tx, "UPDATE ledger_accounts SET credits_posted = credits_posted + 7 WHERE id = $1::numeric", e)
        q(tx, "UPDATE ledger_accounts SET debits_posted = debits_posted + 7 WHERE id = $1::numeric", b)
        local ts = f:now()
        local id = f:id()
        q(tx, [[INSERT INTO ledger_transfers VALUES ($1::numeric, $2::numeric, $3::numeric, 7, 0, 0, 0, 0, 0,
                $4, 1, 0, $5::bigint)]], id, b, e, f.ledger, ts)
      end, nil, { "balance_row_missing", "balance_row_stale", "balance_rows_count_mismatch" } },
  }

  for _, case in ipairs(cases) do
    for _, full in ipairs({ false, true }) do
      it("finds " .. case[1] .. (full and " (full)" or ""), function()
        local opts, ledgers = { full = full }, { [f.ledger] = true }
        if case[4] and case[4].all then
          -- every ledger: other specs' ledgers too, which should hold but are not ours to assert
          opts.all = true
          local report = broken(case[3], opts)
          local found = {}
          for _, p in ipairs(report.problems) do
            if p.ledger == f.ledger then found[#found + 1] = p.kind end
          end
          table.sort(found)
          assert.same(case[2], found, json.encode(report.problems))
          return
        elseif case[4] then
          opts.ledgers = { f.ledger, f.ledger + case[4].ledgers_extra }
          ledgers[opts.ledgers[2]] = true
        end
        local expected = full and case[5] or case[2]
        local report = broken(case[3], opts)
        assert.is_false(report.ok)
        assert.same(expected, sorted_kinds(report), json.encode(report.problems))
        assert.is_true(report.problems_count >= #expected)
        for _, p in ipairs(report.problems) do assert.is_true(ledgers[p.ledger], "problem in ledger " .. p.ledger) end
      end)
    end
  end

  it("still passes after those transactions rolled back", function()
    assert.is_true(assert(invariants.check(db, { ledgers = { f.ledger } })).ok)
  end)

  it("lists at most problems_max problems per check and counts them all", function()
    local report = broken(function(tx)
      q(tx, "UPDATE ledger_accounts SET debits_posted = debits_posted + 3 WHERE id = $1::numeric", b)
      q(tx, "UPDATE ledger_accounts SET credits_posted = credits_posted + 3 WHERE id = $1::numeric", c)
    end, { problems_max = 1 })
    assert.equals(2, report.problems_count)
    assert.same({ account_counters_mismatch = 1, more_problems = 1 }, kinds(report))
    assert.equals(1, report.problems[2].not_shown)
  end)

  local bad = {
    { "a ledger of 0", { ledgers = { 0 } }, "invalid_ledger" },
    { "a ledger beyond 2^32-1", { ledgers = { 4294967296 } }, "invalid_ledger" },
    { "a text ledger", { ledgers = { "usd" } }, "invalid_ledger" },
    { "ledgers that are not a list", { ledgers = 840 }, "invalid_parameter" },
    { "an empty list of ledgers", { ledgers = {} }, "invalid_parameter" },
    { "a problems_max of 0", { problems_max = 0 }, "invalid_parameter" },
    { "a full that is not a boolean", { full = "yes" }, "invalid_parameter" },
    { "a problems_max beyond its limit", { problems_max = invariants.PROBLEMS_MAX + 1 }, "invalid_parameter" },
  }
  for _, case in ipairs(bad) do
    it("answers " .. case[3] .. " for " .. case[1], function()
      local report, err = invariants.check(db, case[2])
      assert.is_nil(report)
      assert.equals(case[3], err.code)
    end)
  end

  it("answers invalid_parameter for more ledgers than LEDGERS_MAX", function()
    local many = {}
    for i = 1, invariants.LEDGERS_MAX + 1 do many[i] = i end
    local report, err = invariants.check(db, { ledgers = many })
    assert.is_nil(report)
    assert.equals("invalid_parameter", err.code)
    many[#many] = nil
    assert.truthy(invariants.check(db, { ledgers = many }))
  end)

  describe("lua/bin/ledger_check.lua", function()
    it("prints the ledger's sums and exits 0 when every invariant holds", function()
      local code, out = run_check({ "--ledger", tostring(f.ledger) })
      assert.equals(0, code, table.concat(out, "\n"))
      assert.equals(2, #out)
      local l = json.decode(out[1])
      assert.equals(f.ledger, l.ledger)
      assert.equals(8, l.accounts)
      local summary = json.decode(out[2])
      assert.is_true(summary.ok)
      assert.equals(0, summary.problems)
      code, out = run_check({ "--full", "--ledger", tostring(f.ledger) })
      assert.equals(0, code, table.concat(out, "\n"))
    end)

    it("prints each problem and exits 1 when one is found", function()
      assert(db:query("UPDATE ledger_accounts SET debits_posted = debits_posted + 1 WHERE id = $1::numeric", a))
      local ok, code, out = pcall(run_check, { "--ledger", tostring(f.ledger), "--max", "5" })
      assert(db:query("UPDATE ledger_accounts SET debits_posted = debits_posted - 1 WHERE id = $1::numeric", a))
      assert(ok, code)
      assert.equals(1, code, table.concat(out, "\n"))
      local text = table.concat(out, "\n")
      assert.matches('"kind":"account_counters_mismatch"', text, 1, true)
      assert.matches('"kind":"ledger_posted_unbalanced"', text, 1, true)
      assert.is_false(json.decode(out[#out]).ok)
      assert.equals(0, (run_check({ "--ledger", tostring(f.ledger) })))
    end)

    it("exits 2 on a bad argument or a database it cannot reach", function()
      assert.equals(2, (run_check({ "--ledger", "x" })))
      assert.equals(2, (run_check({ "--what" })))
      assert.equals(2, (run_check({ "--url", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2" })))
    end)
  end)

  describe("at scale", function()
    it("checks 100,000 transfers in one pass, and finds one bad account among them", function()
      local n_accounts, n_transfers = 1000, 100000
      local g = fixture.new(db)
      local elapsed
      local report = broken(function(tx)
        -- accounts <prefix>0000000 + k, k = 0..999; transfer i (1..n) from account i % 1000 to
        -- (i + 1) % 1000, amount i % 7 + 1; every 4th one a hold (pending), every 8th of those
        -- posted. Counters by their closed form in SQL, not by the checker's sums.
        local base = g.prefix .. "0000000"
        q(tx, [[INSERT INTO ledger_accounts
                SELECT $1::numeric + k, 0, 0, 0, 0, 0, 0, 0, $2, 1, 0, 1 FROM generate_series(0, $3 - 1) k]],
          base, g.ledger, n_accounts)
        q(tx, [[INSERT INTO ledger_transfers
                SELECT $1::numeric + 1000000 + i, $1::numeric + i % $3, $1::numeric + (i + 1) % $3, i % 7 + 1, 0,
                       0, 0, 0, 0, $2, 1, CASE WHEN i % 4 = 0 THEN 2 ELSE 0 END, $5::bigint + i
                  FROM generate_series(1, $4) i]], base, g.ledger, n_accounts, n_transfers, g:now())
        q(tx, [[INSERT INTO ledger_holds
                SELECT $1::numeric + 1000000 + i, $1::numeric + i % $2, $1::numeric + (i + 1) % $2,
                       CASE WHEN i % 32 = 0 THEN 2 ELSE 1 END, NULL
                  FROM generate_series(4, $3, 4) i]], base, n_accounts, n_transfers)
        q(tx, [[INSERT INTO ledger_transfers
                SELECT $1::numeric + 5000000 + i, $1::numeric + i % $3, $1::numeric + (i + 1) % $3, i % 7 + 1,
                       $1::numeric + 1000000 + i, 0, 0, 0, 0, $2, 1, 4, $5::bigint + $4 + i
                  FROM generate_series(32, $4, 32) i]], base, g.ledger, n_accounts, n_transfers, g:now())
        -- account k is debited by i = k + 1000 j and credited by i = k - 1 + 1000 j (j >= 0, 1 <= i <= n)
        q(tx, [[WITH s AS (
                  SELECT a.k,
                    sum(CASE WHEN i % 4 <> 0 OR i % 32 = 0 THEN i % 7 + 1 ELSE 0 END) FILTER (WHERE side = 'd') AS dpo,
                    sum(CASE WHEN i % 4 = 0 AND i % 32 <> 0 THEN i % 7 + 1 ELSE 0 END) FILTER (WHERE side = 'd') AS dp,
                    sum(CASE WHEN i % 4 <> 0 OR i % 32 = 0 THEN i % 7 + 1 ELSE 0 END) FILTER (WHERE side = 'c') AS cpo,
                    sum(CASE WHEN i % 4 = 0 AND i % 32 <> 0 THEN i % 7 + 1 ELSE 0 END) FILTER (WHERE side = 'c') AS cp
                  FROM generate_series(0, $2 - 1) a(k)
                  CROSS JOIN LATERAL (
                    SELECT 'd' AS side, i FROM generate_series(CASE WHEN a.k = 0 THEN $2 ELSE a.k END, $3, $2) i
                    UNION ALL
                    SELECT 'c', i FROM generate_series(CASE WHEN a.k = 0 THEN $2 - 1 ELSE a.k - 1 END, $3, $2) i
                     WHERE i >= 1) x
                  GROUP BY a.k)
                UPDATE ledger_accounts SET debits_pending = coalesce(s.dp, 0), debits_posted = coalesce(s.dpo, 0),
                       credits_pending = coalesce(s.cp, 0), credits_posted = coalesce(s.cpo, 0)
                  FROM s WHERE id = $1::numeric + s.k]], base, n_accounts, n_transfers)
        local started = nuvion.monotonic_ms()
        local clean = assert(invariants.check(tx, { ledgers = { g.ledger } }))
        elapsed = nuvion.monotonic_ms() - started
        assert.same({}, sorted_kinds(clean))
        assert.equals(n_transfers + n_transfers / 32, clean.ledgers[1].transfers)
        q(tx, "UPDATE ledger_accounts SET credits_pending = credits_pending + 1 WHERE id = $1::numeric + 500", base)
      end, { ledgers = { g.ledger } })
      assert.same({ "account_counters_mismatch", "ledger_pending_unbalanced" }, sorted_kinds(report))
      assert.equals(2, report.problems_count)
      assert.is_true(elapsed < 20000, "the check took " .. elapsed .. " ms")
    end)
  end)
end)
