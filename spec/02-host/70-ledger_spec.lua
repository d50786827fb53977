-- nuvion.ledger against the real ledger database (NUVION_LEDGER_DATABASE_URL): every result code
-- of create_transfers and create_accounts reached through the Lua API, each with what it must leave
-- behind (no row for a failure, no counter moved, transient failures remembered). The scenarios
-- are those of host/test/test_ledger_check.c, on fresh ids and a ledger of this run.
local ledger = require "nuvion.ledger"
local nuvion = require "nuvion"
local H = require "spec.ledger_helpers"

local MAX, HALF, HALF_1 = H.MAX, H.HALF, H.HALF_1
local new_id = H.ids()
local L = H.random_ledger() -- this file's asset
local L2 = L + 1            -- another asset

local EXPIRY_WAIT_MS = 1500 -- a hold of timeout 1 s has expired by then

describe("nuvion.ledger result codes", function()
  local lg, db
  local A = {}              -- account ids by name
  local T = {}              -- transfer ids by name
  local seen_t, seen_a = {}, {}
  local expiring_at         -- monotonic ms when the hold T.h203 has surely expired
  local far_engine          -- an engine of its own, for a clock pushed 100 years ahead

  local function transfers(list, engine)
    local res, err = (engine or lg):create_transfers(list)
    assert(res, "create_transfers: " .. tostring(err and err.message))
    assert.equals(#list, #res)
    for _, r in ipairs(res) do seen_t[r] = true end
    return res
  end

  local function accounts(list)
    local res, err = lg:create_accounts(list)
    assert(res, "create_accounts: " .. tostring(err and err.message))
    assert.equals(#list, #res)
    for _, r in ipairs(res) do seen_a[r] = true end
    return res
  end

  local function all_ok(res)
    for i, r in ipairs(res) do assert.equals("ok", r, "event " .. i) end
  end

  -- every fixture account's counters and flags, by id
  local snap_names = { "a1", "a2", "a3", "a4", "a5", "a6", "a8", "a9", "a10", "a11", "a12", "a13" }
  local function snapshot()
    local ids = {}
    for i, n in ipairs(snap_names) do ids[i] = A[n] end
    local rows = assert(lg:lookup_accounts(ids))
    assert.equals(#ids, #rows)
    local out = {}
    for _, a in ipairs(rows) do
      out[H.str(a.id)] = { H.str(a.debits_pending), H.str(a.debits_posted), H.str(a.credits_pending),
                           H.str(a.credits_posted), tonumber(a.flags) }
    end
    return out
  end

  lazy_setup(function()
    lg = ledger.open()
    db = H.db()
    far_engine = ledger.open(H.URL .. (H.URL:find("?", 1, true) and "&" or "?") .. "application_name=lspec_far")
    assert.is_true(far_engine ~= lg)
    for _, n in ipairs({ "a1", "a2", "a3", "a4", "a5", "a6", "a8", "a9", "a10", "a11", "a12", "a13", "e1", "e2" }) do
      A[n] = new_id()
    end
    all_ok(accounts({
      { id = A.a1, ledger = L, code = 1 },
      { id = A.a2, ledger = L, code = 1 },
      { id = A.a3, ledger = L2, code = 1 },
      { id = A.a4, ledger = L, code = 1, flags = { "debits_must_not_exceed_credits" } },
      { id = A.a5, ledger = L, code = 1, flags = { "credits_must_not_exceed_debits" } },
      { id = A.a6, ledger = L, code = 1 },
      { id = A.a8, ledger = L, code = 1 },
      { id = A.a9, ledger = L, code = 1 },
      { id = A.a10, ledger = L, code = 1 },
      { id = A.a11, ledger = L, code = 1 },
      { id = A.a12, ledger = L, code = 1 },
      { id = A.a13, ledger = L, code = 1 },
      { id = A.e1, ledger = L, code = 1 },
      { id = A.e2, ledger = L, code = 1 },
    }))
    for _, n in ipairs({ "t100", "h200", "h201", "h202", "h203" }) do T[n] = new_id() end
    local function tr(dr, cr, amount, extra)
      local t = { id = new_id(), debit_account_id = dr, credit_account_id = cr, amount = amount, ledger = L, code = 1 }
      for k, v in pairs(extra or {}) do t[k] = v end
      return t
    end
    all_ok(transfers({
      tr(A.a2, A.a4, 100),                                          -- a4: 100 of credit
      tr(A.a5, A.a1, 100),                                          -- a5: 100 of debit
      tr(A.a6, A.a1, 1, { flags = { "pending", "closing_debit" } }), -- a6 closed for good
      tr(A.a8, A.a9, MAX, { flags = { "pending" } }),               -- a8 dp = a9 cp = 2^128-1
      tr(A.a10, A.a11, MAX),                                        -- a10 dpo = a11 cpo = 2^128-1
      tr(A.a12, A.a13, HALF, { flags = { "pending" } }),            -- a12 dp + dpo = 2^128-1,
      tr(A.a12, A.a13, HALF_1),                                     -- a13 cp + cpo likewise
      tr(A.a1, A.a2, 10, { id = T.t100 }),
      tr(A.a1, A.a2, 50, { id = T.h200, flags = { "pending" } }),
      tr(A.a1, A.a2, 50, { id = T.h201, flags = { "pending" } }),
      tr(A.a1, A.a2, 50, { id = T.h202, flags = { "pending" } }),
    }))
    all_ok(transfers({ tr(A.e1, A.e2, 50, { id = T.h203, flags = { "pending" }, timeout = 1 }) }))
    expiring_at = nuvion.monotonic_ms() + EXPIRY_WAIT_MS
    all_ok(transfers({
      { id = new_id(), pending_id = T.h201, flags = { "post_pending_transfer" } },
      { id = new_id(), pending_id = T.h202, flags = { "void_pending_transfer" } },
    }))
    local a6 = H.account(lg, A.a6)
    assert.is_true(H.has_flag(a6.flags, H.CLOSED))
    assert.same({ MAX, "0", "0", "0" }, H.counters(lg, A.a8))
    assert.same({ HALF, HALF_1, "0", "0" }, H.counters(lg, A.a12))
    assert.same({ "0", "0", HALF, HALF_1 }, H.counters(lg, A.a13))
  end)

  -- a transfer of a1 -> a2 of 5 on ledger L, with a fresh id, fields overridden by `over`
  local function base(over)
    local t = { id = new_id(), debit_account_id = A.a1, credit_account_id = A.a2, amount = 5, ledger = L, code = 1 }
    for k, v in pairs(over or {}) do t[k] = v end
    return t
  end
  -- a post (or, with flags, a void) with a fresh id
  local function post(over)
    local t = { id = new_id(), flags = { "post_pending_transfer" } }
    for k, v in pairs(over or {}) do t[k] = v end
    return t
  end
  local function void(over)
    local t = { id = new_id(), flags = { "void_pending_transfer" } }
    for k, v in pairs(over or {}) do t[k] = v end
    return t
  end
  -- the stored t100 with some fields changed: a retry with another body
  local function t100(over)
    local t = base({ id = T.t100, amount = 10 })
    for k, v in pairs(over) do t[k] = v end
    return t
  end

  -- { want, what, events () -> list, results (default { want }), engine () (default lg) }
  local cases = {
    { "ok", "a plain transfer", function() return { base() } end },
    { "timestamp_must_be_zero", "a timestamp given", function() return { base({ timestamp = 1 }) } end },
    { "reserved_flag", "flag bit 8", function() return { base({ flags = 256 }) } end },
    { "id_must_not_be_zero", "id 0", function() return { base({ id = 0 }) } end },
    { "id_must_not_be_int_max", "id 2^128-1", function() return { base({ id = MAX }) } end },
    { "exists_with_different_flags", "", function() return { base({ id = T.t100, flags = { "pending" } }) } end },
    { "exists_with_different_pending_id", "", function() return { base({ id = T.t100, pending_id = 5 }) } end },
    { "exists_with_different_timeout", "", function() return { base({ id = T.t100, timeout = 1 }) } end },
    { "exists_with_different_debit_account_id", "",
      function() return { base({ id = T.t100, debit_account_id = A.a4 }) } end },
    { "exists_with_different_credit_account_id", "",
      function() return { base({ id = T.t100, credit_account_id = A.a4 }) } end },
    { "exists_with_different_amount", "", function() return { base({ id = T.t100, amount = 11 }) } end },
    { "exists_with_different_user_data_128", "", function() return { t100({ user_data_128 = 1 }) } end },
    { "exists_with_different_user_data_64", "", function() return { t100({ user_data_64 = 1 }) } end },
    { "exists_with_different_user_data_32", "", function() return { t100({ user_data_32 = 1 }) } end },
    { "exists_with_different_ledger", "", function() return { t100({ ledger = L2 }) } end },
    { "exists_with_different_code", "", function() return { t100({ code = 2 }) } end },
    { "exists", "the same id and body", function() return { t100({}) } end },
    { "flags_are_mutually_exclusive", "pending and post",
      function() return { base({ flags = { "pending", "post_pending_transfer" } }) } end },
    { "flags_are_mutually_exclusive", "post and void",
      function() return { post({ pending_id = T.h200, flags = { "post_pending_transfer", "void_pending_transfer" } }) }
      end },
    { "flags_are_mutually_exclusive", "balancing and void",
      function() return { post({ pending_id = T.h200, flags = { "void_pending_transfer", "balancing_debit" } }) } end },
    { "flags_are_mutually_exclusive", "closing and post",
      function() return { post({ pending_id = T.h200, flags = { "post_pending_transfer", "closing_credit" } }) } end },
    { "debit_account_id_must_not_be_zero", "", function() return { base({ debit_account_id = 0 }) } end },
    { "debit_account_id_must_not_be_int_max", "", function() return { base({ debit_account_id = MAX }) } end },
    { "credit_account_id_must_not_be_zero", "", function() return { base({ credit_account_id = 0 }) } end },
    { "credit_account_id_must_not_be_int_max", "", function() return { base({ credit_account_id = MAX }) } end },
    { "accounts_must_be_different", "", function() return { base({ credit_account_id = A.a1 }) } end },
    { "pending_id_must_be_zero", "a single-phase transfer with a pending_id",
      function() return { base({ pending_id = 5 }) } end },
    { "pending_id_must_not_be_zero", "a post without pending_id", function() return { post({ pending_id = 0 }) } end },
    { "pending_id_must_not_be_int_max", "", function() return { post({ pending_id = MAX }) } end },
    { "pending_id_must_be_different", "a post of itself", function()
      local id = new_id()
      return { post({ id = id, pending_id = id }) }
    end },
    { "timeout_reserved_for_pending_transfer", "a single-phase transfer",
      function() return { base({ timeout = 1 }) } end },
    { "timeout_reserved_for_pending_transfer", "a post",
      function() return { post({ pending_id = T.h200, timeout = 1 }) } end },
    { "closing_transfer_must_be_pending", "", function() return { base({ flags = { "closing_debit" } }) } end },
    { "amount_must_not_be_zero", "", function() return { base({ amount = 0 }) } end },
    { "ledger_must_not_be_zero", "", function() return { base({ ledger = 0 }) } end },
    { "code_must_not_be_zero", "", function() return { base({ code = 0 }) } end },
    { "debit_account_not_found", "", function() return { base({ debit_account_id = new_id() }) } end },
    { "credit_account_not_found", "", function() return { base({ credit_account_id = new_id() }) } end },
    { "accounts_must_have_the_same_ledger", "", function() return { base({ credit_account_id = A.a3 }) } end },
    { "transfer_must_have_the_same_ledger_as_accounts", "", function() return { base({ ledger = L2 }) } end },
    { "pending_transfer_not_found", "", function() return { post({ pending_id = new_id() }) } end },
    { "pending_transfer_not_pending", "a post of a single-phase transfer",
      function() return { post({ pending_id = T.t100 }) } end },
    { "pending_transfer_has_different_debit_account_id", "",
      function() return { post({ pending_id = T.h200, debit_account_id = A.a4 }) } end },
    { "pending_transfer_has_different_credit_account_id", "",
      function() return { post({ pending_id = T.h200, credit_account_id = A.a4 }) } end },
    { "pending_transfer_has_different_ledger", "",
      function() return { post({ pending_id = T.h200, ledger = L2 }) } end },
    { "pending_transfer_has_different_code", "", function() return { post({ pending_id = T.h200, code = 2 }) } end },
    { "exceeds_pending_transfer_amount", "", function() return { post({ pending_id = T.h200, amount = 51 }) } end },
    { "pending_transfer_has_different_amount", "a void of less",
      function() return { void({ pending_id = T.h200, amount = 49 }) } end },
    { "pending_transfer_already_posted", "", function() return { post({ pending_id = T.h201 }) } end },
    { "pending_transfer_already_voided", "", function() return { void({ pending_id = T.h202 }) } end },
    { "pending_transfer_expired", "a post after the hold's timeout", function()
      local wait = expiring_at - nuvion.monotonic_ms()
      if wait > 0 then nuvion.sleep(wait) end
      return { post({ pending_id = T.h203 }) }
    end },
    { "debit_account_already_closed", "", function() return { base({ debit_account_id = A.a6 }) } end },
    { "credit_account_already_closed", "", function() return { base({ credit_account_id = A.a6 }) } end },
    { "overflows_debits_pending", "",
      function() return { base({ debit_account_id = A.a8, flags = { "pending" } }) } end },
    { "overflows_credits_pending", "",
      function() return { base({ credit_account_id = A.a9, flags = { "pending" } }) } end },
    { "overflows_debits_posted", "", function() return { base({ debit_account_id = A.a10 }) } end },
    { "overflows_credits_posted", "", function() return { base({ credit_account_id = A.a11 }) } end },
    { "overflows_debits", "dp + dpo + 1 wraps",
      function() return { base({ debit_account_id = A.a12, amount = 1 }) } end },
    { "overflows_credits", "cp + cpo + 1 wraps",
      function() return { base({ credit_account_id = A.a13, amount = 1 }) } end },
    { "overflows_timeout", "a hold's deadline past 2^63 ns", function()
      -- The clock is real: 2^32-1 s from now still fits in 63 bits of ns. The ledger never sets its
      -- clock below a timestamp it loads, so an account stamped in 2128 (written straight into the
      -- table) carries the check there. Posted through an engine of its own (another URL), so
      -- that engine's clock, and no other, jumps ahead.
      local far, far2 = new_id(), new_id()
      assert(db:query("INSERT INTO ledger_accounts (id, debits_pending, debits_posted, credits_pending, " ..
                      "credits_posted, user_data_128, user_data_64, user_data_32, ledger, code, flags, timestamp) " ..
                      "VALUES ($1::numeric, 0, 0, 0, 0, 0, 0, 0, $2, 1, 0, 5000000000000000000)", far, L))
      assert.same({ "ok" }, accounts({ { id = far2, ledger = L, code = 1 } }))
      return { base({ debit_account_id = far, credit_account_id = far2, flags = { "pending" }, timeout = 4294967295 }) }
    end, nil, function() return far_engine end },
    { "exceeds_credits", "", function() return { base({ debit_account_id = A.a4, amount = 101 }) } end },
    { "exceeds_debits", "", function() return { base({ credit_account_id = A.a5, amount = 101 }) } end },
    { "id_already_failed", "a transient failure retried after funding", function()
      local t = base({ debit_account_id = A.a4, amount = 150 })
      assert.same({ "exceeds_credits" }, transfers({ t }))
      -- a4 now has 300 of credit: the same transfer would pass, were it not remembered
      assert.same({ "ok" }, transfers({ base({ debit_account_id = A.a2, credit_account_id = A.a4, amount = 200 }) }))
      return { t }
    end },
    { "linked_event_failed", "a chain whose second event fails", function()
      return { base({ linked = true }), base({ debit_account_id = 0 }) }
    end, { "linked_event_failed", "debit_account_id_must_not_be_zero" } },
    { "linked_event_chain_open", "the batch's last event linked", function()
      return { base({ linked = true }), base({ linked = true }) }
    end, { "linked_event_failed", "linked_event_chain_open" } },
  }

  for _, c in ipairs(cases) do
    local want, what, events, results, engine = c[1], c[2], c[3], c[4], c[5]
    it(want .. (what ~= "" and (": " .. what) or ""), function()
      local list = events()
      local before = snapshot()
      local res = transfers(list, engine and engine())
      assert.same(results or { want }, res)
      local ids = {}
      for i, t in ipairs(list) do ids[i] = H.str(t.id) end
      if want == "ok" then
        -- exactly one row, and exactly 5 moved from a1 to a2
        assert.equals(1, H.stored_count(db, ids))
        local after = snapshot()
        local a1, a2 = before[A.a1], after[A.a1]
        assert.same({ a1[1], tostring(tonumber(a1[2]) + 5), a1[3], a1[4], a1[5] }, a2)
        local b1, b2 = before[A.a2], after[A.a2]
        assert.same({ b1[1], b1[2], b1[3], tostring(tonumber(b1[4]) + 5), b1[5] }, b2)
        return
      end
      -- no account moved
      assert.same(before, snapshot())
      if want:find("^exists") then
        -- the stored transfer is the first one, unchanged
        local t = H.transfer(lg, T.t100)
        assert.same({ "10", A.a1, A.a2, "0" },
                    { H.str(t.amount), H.str(t.debit_account_id), H.str(t.credit_account_id), H.str(t.flags) })
      elseif want ~= "id_must_not_be_zero" and want ~= "id_must_not_be_int_max" then
        assert.equals(0, H.stored_count(db, ids))
      end
      -- a transient failure is remembered under its id, nothing else is
      if want == "id_already_failed" then
        assert.equals("exceeds_credits", H.failed_result(db, ids[1]))
      elseif want:find("^linked") then
        assert.is_nil(H.failed_result(db, ids[1]))
        assert.is_nil(H.failed_result(db, ids[2]))
      elseif not want:find("^exists") and want ~= "id_must_not_be_zero" and want ~= "id_must_not_be_int_max" then
        assert.equals(H.TRANSIENT[want] and want or nil, H.failed_result(db, ids[1]))
      end
      if want == "pending_transfer_expired" then
        -- the expired hold no longer counts on its accounts, and says so
        assert.same({ "0", "0", "0", "0" }, H.counters(lg, A.e1))
        assert.same({ "0", "0", "0", "0" }, H.counters(lg, A.e2))
        assert.equals("expired", H.transfer(lg, T.h203).status)
      end
    end)
  end

  it("a hold's status is kept beside it: pending, posted, voided", function()
    local rows = assert(lg:lookup_transfers({ T.h200, T.h201, T.h202, T.t100 }))
    local by = {}
    for _, t in ipairs(rows) do by[H.str(t.id)] = t end
    assert.equals("pending", by[T.h200].status)
    assert.equals("posted", by[T.h201].status)
    assert.equals("voided", by[T.h202].status)
    assert.is_nil(by[T.t100].status)
  end)

  it("reached every create_transfers code", function()
    local missing = {}
    for _, name in ipairs(H.TRANSFER_RESULTS) do
      if not seen_t[name] then missing[#missing + 1] = name end
    end
    assert.equals(61, #H.TRANSFER_RESULTS)
    assert.same(H.TRANSFER_RESULTS, ledger.transfer_results) -- the engine's own list, in its order
    assert.same({}, missing)
  end)

  describe("create_accounts", function()
    local existing

    lazy_setup(function()
      existing = new_id()
      all_ok(accounts({ { id = existing, ledger = L, code = 1 } }))
    end)

    local function fresh(over)
      local a = { id = new_id(), ledger = L, code = 1 }
      for k, v in pairs(over or {}) do a[k] = v end
      return a
    end
    local function again(over)
      local a = fresh({ id = existing })
      for k, v in pairs(over) do a[k] = v end
      return a
    end

    local account_cases = {
      { "ok", function() return fresh() end },
      { "timestamp_must_be_zero", function() return fresh({ timestamp = 1 }) end },
      { "reserved_flag", function() return fresh({ flags = 16 }) end },
      { "id_must_not_be_zero", function() return fresh({ id = 0 }) end },
      { "id_must_not_be_int_max", function() return fresh({ id = MAX }) end },
      { "exists_with_different_flags", function() return again({ flags = { "history" } }) end },
      { "exists_with_different_user_data_128", function() return again({ user_data_128 = 1 }) end },
      { "exists_with_different_user_data_64", function() return again({ user_data_64 = 1 }) end },
      { "exists_with_different_user_data_32", function() return again({ user_data_32 = 1 }) end },
      { "exists_with_different_ledger", function() return again({ ledger = L2 }) end },
      { "exists_with_different_code", function() return again({ code = 2 }) end },
      { "exists", function() return again({}) end },
      { "flags_are_mutually_exclusive", function()
        return fresh({ flags = { "debits_must_not_exceed_credits", "credits_must_not_exceed_debits" } })
      end },
      { "debits_pending_must_be_zero", function() return fresh({ debits_pending = 1 }) end },
      { "debits_posted_must_be_zero", function() return fresh({ debits_posted = 1 }) end },
      { "credits_pending_must_be_zero", function() return fresh({ credits_pending = 1 }) end },
      { "credits_posted_must_be_zero", function() return fresh({ credits_posted = 1 }) end },
      { "ledger_must_not_be_zero", function() return fresh({ ledger = 0 }) end },
      { "code_must_not_be_zero", function() return fresh({ code = 0 }) end },
    }

    for _, c in ipairs(account_cases) do
      local want, make = c[1], c[2]
      it(want, function()
        local a = make()
        assert.same({ want }, accounts({ a }))
        if a.id == 0 then return end -- not an id one can look up
        local found = assert(lg:lookup_accounts({ a.id }))
        if want == "ok" then
          assert.equals(1, #found)
          assert.same({ "0", "0", "0", "0" }, H.counters(lg, a.id))
          assert.equals(L, tonumber(found[1].ledger))
        elseif want:find("^exists") then
          -- the first account, unchanged
          assert.equals(1, #found)
          local f = found[1]
          assert.same({ tostring(L), "1", "0", "0" },
                      { H.str(f.ledger), H.str(f.code), H.str(f.flags), H.str(f.user_data_64) })
        else
          assert.equals(0, #found)
        end
      end)
    end

    it("linked chains: a failure takes back the accounts before it; an open chain fails", function()
      local x, y, z = new_id(), new_id(), new_id()
      assert.same({ "linked_event_failed", "linked_event_failed", "ledger_must_not_be_zero" }, accounts({
        { id = x, ledger = L, code = 1, flags = { "linked" } },
        { id = y, ledger = L, code = 1, flags = { "linked" } },
        { id = z, ledger = 0, code = 1 },
      }))
      assert.equals(0, #assert(lg:lookup_accounts({ x, y, z })))
      assert.same({ "linked_event_failed", "linked_event_failed", "linked_event_chain_open" }, accounts({
        { id = x, ledger = L, code = 1, flags = { "linked" } },
        { id = y, ledger = L, code = 1, flags = { "linked" } },
        { id = z, ledger = L, code = 1, flags = { "linked" } },
      }))
      assert.equals(0, #assert(lg:lookup_accounts({ x, y, z })))
      assert.same({ "ok", "ok", "ok" }, accounts({
        { id = x, ledger = L, code = 1, linked = true },
        { id = y, ledger = L, code = 1, linked = true },
        { id = z, ledger = L, code = 1 },
      }))
      local rows = assert(lg:lookup_accounts({ x, y, z }))
      assert.equals(3, #rows)
      -- timestamps (ns, 19 digits) strictly increasing in batch order
      local ts = {}
      for _, a in ipairs(rows) do ts[H.str(a.id)] = H.str(a.timestamp) end
      assert.equals(19, #ts[x])
      assert.equals(19, #ts[z])
      assert.is_true(ts[x] < ts[y] and ts[y] < ts[z])
    end)

    it("reached every create_accounts code", function()
      local missing = {}
      for _, name in ipairs(H.ACCOUNT_RESULTS) do
        if not seen_a[name] then missing[#missing + 1] = name end
      end
      assert.equals(21, #H.ACCOUNT_RESULTS)
      assert.same(H.ACCOUNT_RESULTS, ledger.account_results)
      assert.same({}, missing)
    end)
  end)

  it("the invariants hold on this file's ledgers", function()
    assert.same({}, H.invariants(db, L))
    assert.same({}, H.invariants(db, L2))
  end)
end)
