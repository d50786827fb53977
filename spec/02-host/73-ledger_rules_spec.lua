-- nuvion.ledger's rules through the Lua API on the real ledger database: linked chains, partial
-- posts, voids, expiry, balancing, closing, overflow at 2^128-1, idempotent retries, immutable rows
-- and bad calls. Every spec opens accounts of its own (fresh ids, this file's ledger) and checks
-- exact counters with lookup_accounts afterwards.
local ledger = require "nuvion.ledger"
local nuvion = require "nuvion"
local pg = require "nuvion.pg"
local json = require "nuvion.json"
local process = require "nuvion.process"
local helpers = require "spec.helpers"
local H = require "spec.ledger_helpers"

local MAX, MAX_1 = H.MAX, H.MAX_1
local new_id = H.ids()
local L = H.random_ledger()

local EXPIRY_WAIT_MS = 1500 -- a hold of timeout 1 s has expired by then
local SWEEP_MS = 1000       -- the posting layer's expiry sweep period (NV_LEDGER_POST_SWEEP_MS_DEFAULT)
local DMNEC = "debits_must_not_exceed_credits"
local CMNED = "credits_must_not_exceed_debits"

describe("nuvion.ledger rules", function()
  local lg, db, bank

  local open, tr -- H.maker: accounts and transfers on this file's ledger

  local function transfers(list)
    local res, err = lg:create_transfers(list)
    assert(res, "create_transfers: " .. tostring(err and err.message))
    return res
  end

  local function fund(to, amount)
    assert.same({ "ok" }, transfers({ tr(nil, bank, to, amount) }))
  end

  local function counters(id) return H.counters(lg, id) end

  lazy_setup(function()
    lg = ledger.open()
    open, tr = H.maker(lg, L, new_id)
    db = H.db()
    bank = open(1)
  end)

  describe("linked chains", function()
    it("commit as one", function()
      local w, f1, f2 = open(1, { DMNEC }), open(2)
      fund(w, 100)
      local ids = { new_id(), new_id(), new_id() }
      assert.same({ "ok", "ok", "ok" }, transfers({
        tr(ids[1], w, f1, 30, { linked = true }), tr(ids[2], w, f2, 30, { linked = true }), tr(ids[3], w, f1, 40),
      }))
      assert.same({ "0", "100", "0", "100" }, counters(w))
      assert.same({ "0", "0", "0", "70" }, counters(f1))
      assert.same({ "0", "0", "0", "30" }, counters(f2))
      assert.equals(3, H.stored_count(db, ids))
      local rows = assert(lg:lookup_transfers(ids))
      local ts = {}
      for _, t in ipairs(rows) do ts[H.str(t.id)] = H.str(t.timestamp) end
      assert.equals(19, #ts[ids[1]])
      assert.is_true(ts[ids[1]] < ts[ids[2]] and ts[ids[2]] < ts[ids[3]])
    end)

    it("fail as one and leave no trace: counters, rows, failed ids", function()
      local w, f1, f2 = open(1, { DMNEC }), open(2)
      fund(w, 100)
      local ids = { new_id(), new_id(), new_id(), new_id(), new_id() }
      -- before | a chain of three whose middle overdraws | after
      assert.same({ "ok", "linked_event_failed", "exceeds_credits", "linked_event_failed", "ok" }, transfers({
        tr(ids[1], w, f2, 10), tr(ids[2], w, f1, 30, { linked = true }), tr(ids[3], w, f2, 61, { linked = true }),
        tr(ids[4], w, f1, 1), tr(ids[5], w, f2, 90), -- fits only because the chain's 30 was taken back
      }))
      assert.same({ "0", "100", "0", "100" }, counters(w))
      assert.same({ "0", "0", "0", "0" }, counters(f1))
      assert.same({ "0", "0", "0", "100" }, counters(f2))
      assert.equals(2, H.stored_count(db, ids))
      assert.equals(0, H.stored_count(db, { ids[2], ids[3], ids[4] }))
      -- the failing event is remembered (transient); the ones taken back are not
      assert.equals("exceeds_credits", H.failed_result(db, ids[3]))
      assert.is_nil(H.failed_result(db, ids[2]))
      assert.is_nil(H.failed_result(db, ids[4]))
      -- an id taken back is free again
      assert.same({ "ok" }, transfers({ tr(ids[2], f2, f1, 5) }))
      assert.same({ "0", "0", "0", "5" }, counters(f1))
      -- and the failing one stays failed
      fund(w, 1000)
      assert.same({ "id_already_failed" }, transfers({ tr(ids[3], w, f2, 61) }))
    end)

    it("an open chain fails; a broken chain left open still says open", function()
      local a, b = open(2)
      local ids = { new_id(), new_id(), new_id() }
      assert.same({ "ok", "linked_event_failed", "linked_event_chain_open" }, transfers({
        tr(ids[1], a, b, 5), tr(ids[2], a, b, 5, { linked = true }), tr(ids[3], a, b, 5, { linked = true }),
      }))
      assert.same({ "0", "5", "0", "0" }, counters(a))
      assert.equals(1, H.stored_count(db, ids))
      local e = { new_id(), new_id(), new_id() }
      assert.same({ "linked_event_failed", "accounts_must_be_different", "linked_event_chain_open" }, transfers({
        tr(e[1], a, b, 5, { linked = true }), tr(e[2], a, a, 5, { linked = true }),
        tr(e[3], a, b, 5, { linked = true }),
      }))
      assert.same({ "0", "5", "0", "0" }, counters(a))
      assert.equals(0, H.stored_count(db, e))
    end)

    it("a hold and its post in a failed chain both go; the same chain fixed commits", function()
      local a, b, c = open(3)
      local h, p, x = new_id(), new_id(), new_id()
      local chain = {
        tr(h, a, c, 50, { flags = { "linked", "pending" } }),
        { id = p, pending_id = h, amount = 20, flags = { "linked", "post_pending_transfer" } },
        tr(x, a, a, 5),
      }
      assert.same({ "linked_event_failed", "linked_event_failed", "accounts_must_be_different" }, transfers(chain))
      assert.same({ "0", "0", "0", "0" }, counters(a))
      assert.same({ "0", "0", "0", "0" }, counters(c))
      assert.equals(0, H.stored_count(db, { h, p, x }))
      chain[3] = tr(x, a, b, 5)
      assert.same({ "ok", "ok", "ok" }, transfers(chain))
      assert.same({ "0", "25", "0", "0" }, counters(a))
      assert.same({ "0", "0", "0", "20" }, counters(c))
      assert.equals("posted", H.transfer(lg, h).status)
    end)
  end)

  describe("holds", function()
    it("a partial post of 600 of 1000 releases 400", function()
      local w, f, g = open(1, { DMNEC }), open(2)
      fund(w, 1000)
      local h, p = new_id(), new_id()
      assert.equals("ok", lg:hold({ id = h, debit_account_id = w, credit_account_id = f, amount = 1000,
                                    ledger = L, code = 7, timeout = 60 }))
      assert.same({ "1000", "0", "0", "1000" }, counters(w))
      assert.same({ "0", "0", "1000", "0" }, counters(f))
      assert.equals("exceeds_credits", lg:transfer(tr(nil, w, g, 1)))
      assert.equals("ok", lg:post({ id = p, pending_id = h, amount = 600, user_data_64 = 9 }))
      assert.same({ "0", "600", "0", "1000" }, counters(w))
      assert.same({ "0", "0", "0", "600" }, counters(f))
      -- the post's row carries the hold's accounts, ledger and code, and the amount it moved
      local row = H.transfer(lg, p)
      assert.same({ "600", w, f, tostring(L), "7", "9", h },
                  { H.str(row.amount), H.str(row.debit_account_id), H.str(row.credit_account_id), H.str(row.ledger),
                    H.str(row.code), H.str(row.user_data_64), H.str(row.pending_id) })
      assert.equals("posted", H.transfer(lg, h).status)
      -- the 400 are free again, not one more
      assert.equals("exceeds_credits", lg:transfer(tr(nil, w, g, 401)))
      assert.equals("ok", lg:transfer(tr(nil, w, g, 400)))
      assert.same({ "0", "1000", "0", "1000" }, counters(w))
      -- retries
      assert.equals("exists", lg:post({ id = p, pending_id = h, amount = 600, user_data_64 = 9 }))
      assert.equals("exists_with_different_amount", lg:post({ id = p, pending_id = h, amount = 601, user_data_64 = 9 }))
      assert.equals("exists_with_different_user_data_64", lg:post({ id = p, pending_id = h, amount = 600 }))
      assert.equals("pending_transfer_already_posted", lg:post({ id = new_id(), pending_id = h }))
      assert.equals("pending_transfer_already_posted", lg:void({ id = new_id(), pending_id = h }))
      assert.same({ "0", "1000", "0", "1000" }, counters(w))
    end)

    it("a post of 0 (or none) posts the whole hold; more than the hold fails", function()
      local a, b = open(2)
      local h1, h2 = new_id(), new_id()
      assert.equals("ok", lg:hold(tr(h1, a, b, 40)))
      assert.equals("ok", lg:hold(tr(h2, a, b, 40)))
      assert.equals("exceeds_pending_transfer_amount", lg:post({ id = new_id(), pending_id = h1, amount = 41 }))
      local p1, p2 = new_id(), new_id()
      assert.equals("ok", lg:post({ id = p1, pending_id = h1 }))
      assert.equals("ok", lg:post({ id = p2, pending_id = h2, amount = 0 }))
      assert.equals("40", H.str(H.transfer(lg, p1).amount))
      assert.equals("40", H.str(H.transfer(lg, p2).amount))
      assert.same({ "0", "80", "0", "0" }, counters(a))
      assert.same({ "0", "0", "0", "80" }, counters(b))
      assert.equals("exists", lg:post({ id = p2, pending_id = h2, amount = 0 }))
    end)

    it("a void releases the whole hold; its amount is 0 or the hold's", function()
      local a, b = open(2)
      local h1, h2, v1 = new_id(), new_id(), new_id()
      assert.equals("ok", lg:hold(tr(h1, a, b, 1000)))
      assert.equals("ok", lg:hold(tr(h2, a, b, 300)))
      assert.same({ "1300", "0", "0", "0" }, counters(a))
      assert.equals("ok", lg:void({ id = v1, pending_id = h1 }))
      assert.same({ "300", "0", "0", "0" }, counters(a))
      assert.same({ "0", "0", "300", "0" }, counters(b))
      assert.equals("pending_transfer_has_different_amount", lg:void({ id = new_id(), pending_id = h2, amount = 299 }))
      assert.equals("ok", lg:void({ id = new_id(), pending_id = h2, amount = 300 }))
      assert.same({ "0", "0", "0", "0" }, counters(a))
      assert.same({ "0", "0", "0", "0" }, counters(b))
      assert.equals("voided", H.transfer(lg, h1).status)
      assert.equals("voided", H.transfer(lg, h2).status)
      assert.equals("1000", H.str(H.transfer(lg, v1).amount))
      assert.equals("exists", lg:void({ id = v1, pending_id = h1 }))
      assert.equals("pending_transfer_already_voided", lg:post({ id = new_id(), pending_id = h1 }))
      assert.same({ "0", "0", "0", "0" }, counters(a))
    end)

    it("a hold expires by itself after its timeout: it stops counting, cannot be posted or voided", function()
      local w, f, g = open(1, { DMNEC }), open(2)
      fund(w, 100)
      local h, forever = new_id(), new_id()
      assert.equals("ok", lg:hold(tr(h, w, f, 70, { timeout = 1 })))
      assert.equals("ok", lg:hold(tr(forever, w, f, 30, { timeout = 0 })))
      assert.equals("exceeds_credits", lg:transfer(tr(nil, w, g, 1))) -- the holds count while they live
      assert.same({ "100", "0", "0", "100" }, counters(w))
      local due = assert(db:query("SELECT h.id::text AS id, h.expires_at = t.timestamp + 1000000000 AS exact, " ..
                                  "h.expires_at IS NULL AS never FROM ledger_holds h JOIN ledger_transfers t " ..
                                  "ON t.id = h.id WHERE h.id = ANY (ARRAY[$1::numeric, $2::numeric]) ORDER BY h.id",
                                  h, forever))
      assert.equals(2, #due)
      local by = {}
      for _, row in ipairs(due) do by[row.id] = row end
      assert.is_true(by[h].exact)
      assert.is_true(by[forever].never)
      nuvion.sleep(EXPIRY_WAIT_MS)
      assert.equals("pending_transfer_expired", lg:post({ id = new_id(), pending_id = h }))
      assert.same({ "30", "0", "0", "100" }, counters(w))
      assert.same({ "0", "0", "30", "0" }, counters(f))
      assert.equals("expired", H.transfer(lg, h).status)
      assert.equals("pending_transfer_expired", lg:void({ id = new_id(), pending_id = h }))
      assert.equals("pending_transfer_expired", lg:post({ id = new_id(), pending_id = h }))
      -- the 70 are free again; the hold without timeout still lives
      assert.equals("pending", H.transfer(lg, forever).status)
      assert.equals("exceeds_credits", lg:transfer(tr(nil, w, g, 71)))
      assert.equals("ok", lg:transfer(tr(nil, w, g, 70)))
      assert.equals("ok", lg:post({ id = new_id(), pending_id = forever }))
      assert.same({ "0", "100", "0", "100" }, counters(w))
      assert.same({ "0", "0", "0", "30" }, counters(f))
    end)

    it("an expired hold stops counting with no post of it: in the next batch on its accounts, or by the sweep",
       function()
      local w, f, g = open(1, { DMNEC }), open(2)
      local w2, f2 = open(1, { DMNEC }), open(1)
      fund(w, 100)
      fund(w2, 100)
      local h, h2 = new_id(), new_id()
      local started = nuvion.monotonic_ms()
      assert.equals("ok", lg:hold(tr(h, w, f, 100, { timeout = 1 })))
      assert.equals("ok", lg:hold(tr(h2, w2, f2, 100, { timeout = 1 })))
      assert.equals("exceeds_credits", lg:transfer(tr(nil, w, g, 1)))
      assert.same({ "100", "0", "0", "100" }, counters(w2))
      nuvion.sleep(EXPIRY_WAIT_MS)
      -- a batch that locks both accounts of the due hold expires it before its own events
      assert.equals("ok", lg:transfer(tr(nil, w, f, 100)))
      assert.same({ "0", "100", "0", "100" }, counters(w))
      assert.same({ "0", "0", "0", "100" }, counters(f))
      assert.equals("expired", H.transfer(lg, h).status)
      -- no batch touches w2 or f2: the sweep (every second) expires h2 within deadline + period
      nuvion.sleep(started + 1000 + SWEEP_MS + 500 - nuvion.monotonic_ms())
      assert.equals("expired", H.transfer(lg, h2).status)
      assert.same({ "0", "0", "0", "100" }, counters(w2))
      assert.same({ "0", "0", "0", "0" }, counters(f2))
      assert.equals("ok", lg:transfer(tr(nil, w2, g, 100)))
    end)
  end)

  describe("balancing", function()
    it("balancing_debit moves what the debit account has left, 0 when nothing is", function()
      local w, f = open(1, { DMNEC }), open(1)
      fund(w, 100)
      local ids = { new_id(), new_id(), new_id(), new_id() }
      assert.same({ "ok", "ok", "ok", "exceeds_credits" }, transfers({
        tr(ids[1], w, f, 60), tr(ids[2], w, f, 1000, { flags = { "balancing_debit" } }),
        tr(ids[3], w, f, 5, { flags = { "balancing_debit" } }), tr(ids[4], w, f, 1),
      }))
      assert.equals("40", H.str(H.transfer(lg, ids[2]).amount))
      assert.equals("0", H.str(H.transfer(lg, ids[3]).amount))
      assert.equals(3, H.stored_count(db, ids))
      assert.same({ "0", "100", "0", "100" }, counters(w))
      assert.same({ "0", "0", "0", "100" }, counters(f))
      -- a retry with its upper bound is the same transfer; with less than it moved, it is not
      assert.same({ "exists" }, transfers({ tr(ids[2], w, f, 1000, { flags = { "balancing_debit" } }) }))
      assert.same({ "exists_with_different_amount" },
                  transfers({ tr(ids[2], w, f, 39, { flags = { "balancing_debit" } }) }))
    end)

    it("balancing_credit moves what the credit account allows, pending too", function()
      local v, x = open(1, { CMNED }), open(1)
      assert.same({ "ok" }, transfers({ tr(nil, v, bank, 100) })) -- v may take 100 of credit
      local h = new_id()
      assert.same({ "ok" }, transfers({ tr(h, x, v, 500, { flags = { "balancing_credit", "pending" } }) }))
      assert.equals("100", H.str(H.transfer(lg, h).amount))
      assert.same({ "0", "100", "100", "0" }, counters(v))
      assert.same({ "100", "0", "0", "0" }, counters(x))
      assert.same({ "exceeds_debits" }, transfers({ tr(nil, x, v, 1) }))
    end)
  end)

  describe("closing", function()
    it("closing_debit closes the account until the hold is voided", function()
      local a, b, c = open(3)
      fund(a, 10)
      local h = new_id()
      local closing = { flags = { "pending", "closing_debit" } }
      assert.same({ "amount_must_not_be_zero" }, transfers({ tr(h, a, b, 0, closing) }))
      assert.same({ "ok" }, transfers({ tr(h, a, b, 1, closing) }))
      assert.is_true(H.has_flag(H.account(lg, a).flags, H.CLOSED))
      assert.is_false(H.has_flag(H.account(lg, b).flags, H.CLOSED))
      assert.same({ "debit_account_already_closed" }, transfers({ tr(nil, a, c, 1) }))
      assert.same({ "credit_account_already_closed" }, transfers({ tr(nil, c, a, 1) }))
      assert.same({ "debit_account_already_closed" }, transfers({ tr(nil, a, c, 1, { flags = { "pending" } }) }))
      -- the closing hold itself cannot be posted
      assert.same({ "debit_account_already_closed" }, transfers({
        { id = new_id(), pending_id = h, flags = { "post_pending_transfer" } } }))
      -- a chain that voids and then fails keeps it closed
      assert.same({ "linked_event_failed", "accounts_must_be_different" }, transfers({
        { id = new_id(), pending_id = h, flags = { "void_pending_transfer", "linked" } }, tr(nil, a, a, 1) }))
      assert.is_true(H.has_flag(H.account(lg, a).flags, H.CLOSED))
      assert.same({ "1", "0", "0", "10" }, counters(a))
      assert.equals("ok", lg:void({ id = new_id(), pending_id = h }))
      assert.is_false(H.has_flag(H.account(lg, a).flags, H.CLOSED))
      assert.same({ "ok" }, transfers({ tr(nil, a, c, 1) }))
      assert.same({ "0", "1", "0", "10" }, counters(a))
    end)

    it("closing_credit closes the credit account; a void of another hold on it stays allowed", function()
      local x, y, z = open(3)
      local other, h = new_id(), new_id()
      assert.equals("ok", lg:hold(tr(other, z, y, 5)))
      assert.same({ "ok" }, transfers({ tr(h, x, y, 1, { flags = { "pending", "closing_credit" } }) }))
      assert.is_true(H.has_flag(H.account(lg, y).flags, H.CLOSED))
      assert.is_false(H.has_flag(H.account(lg, x).flags, H.CLOSED))
      assert.equals("credit_account_already_closed", lg:hold(tr(nil, z, y, 1)))
      assert.equals("credit_account_already_closed", lg:post({ id = new_id(), pending_id = other }))
      assert.equals("ok", lg:void({ id = new_id(), pending_id = other }))
      assert.same({ "0", "0", "1", "0" }, counters(y))
      assert.equals("ok", lg:void({ id = new_id(), pending_id = h }))
      assert.is_false(H.has_flag(H.account(lg, y).flags, H.CLOSED))
      assert.same({ "0", "0", "0", "0" }, counters(y))
      assert.equals("ok", lg:transfer(tr(nil, z, y, 1)))
    end)

    it("an expired closing hold reopens its account", function()
      local a, b = open(2)
      local h = new_id()
      assert.same({ "ok" }, transfers({ tr(h, a, b, 1, { flags = { "pending", "closing_debit" }, timeout = 1 }) }))
      assert.is_true(H.has_flag(H.account(lg, a).flags, H.CLOSED))
      nuvion.sleep(EXPIRY_WAIT_MS)
      assert.equals("pending_transfer_expired", lg:post({ id = new_id(), pending_id = h }))
      assert.is_false(H.has_flag(H.account(lg, a).flags, H.CLOSED))
      assert.same({ "0", "0", "0", "0" }, counters(a))
      assert.equals("ok", lg:transfer(tr(nil, a, b, 1)))
    end)
  end)

  describe("overflow", function()
    it("counters reach 2^128-1 exactly and no further", function()
      local p, q, r = open(3)
      local h = new_id()
      assert.same({ "ok", "ok", "overflows_debits" }, transfers({
        tr(nil, p, q, MAX_1), tr(h, p, q, 1, { flags = { "pending" } }), tr(nil, p, q, 1),
      }))
      assert.same({ "1", MAX_1, "0", "0" }, counters(p))
      assert.same({ "0", "0", "1", MAX_1 }, counters(q))
      assert.equals("ok", lg:post({ id = new_id(), pending_id = h }))
      assert.same({ "0", MAX, "0", "0" }, counters(p))
      assert.same({ "0", "0", "0", MAX }, counters(q))
      assert.same({ "overflows_debits_posted" }, transfers({ tr(nil, p, r, 1) }))
      assert.same({ "overflows_credits_posted" }, transfers({ tr(nil, r, q, 1) }))
      assert.same({ "0", "0", "0", "0" }, counters(r))
      -- the amount itself may be 2^128-1, and reads back exactly
      local s, t = open(2)
      local big = new_id()
      assert.same({ "ok" }, transfers({ tr(big, s, t, MAX) }))
      local row = H.transfer(lg, big)
      assert.is_true(json.is_int(row.amount))
      assert.equals(MAX, H.str(row.amount))
    end)
  end)

  describe("idempotency", function()
    it("same body: exists; other body: exists_with_different_*; a transient failure stays failed", function()
      local w, f = open(1, { DMNEC }), open(1)
      fund(w, 100)
      local missing = new_id()
      local batch = { tr(nil, w, f, 60), tr(nil, w, f, 60), tr(nil, w, missing, 1) }
      assert.same({ "ok", "exceeds_credits", "credit_account_not_found" }, transfers(batch))
      assert.equals("exceeds_credits", H.failed_result(db, batch[2].id))
      assert.equals("credit_account_not_found", H.failed_result(db, batch[3].id))
      -- money arrives and the account opens: the retry must still fail, never succeed late
      fund(w, 1000)
      assert.same({ "ok" }, assert(lg:create_accounts({ { id = missing, ledger = L, code = 1 } })))
      assert.same({ "exists", "id_already_failed", "id_already_failed" }, transfers(batch))
      assert.same({ "0", "60", "0", "1100" }, counters(w))
      assert.same({ "0", "0", "0", "0" }, counters(missing))
      assert.equals(1, H.stored_count(db, { batch[1].id, batch[2].id, batch[3].id }))
      local changed = tr(batch[1].id, w, f, 61)
      assert.same({ "exists_with_different_amount" }, transfers({ changed }))
      assert.equals("exists", lg:transfer(batch[1]))
      assert.same({ "0", "60", "0", "1100" }, counters(w))
    end)

    it("permanent failures are not remembered: the same body fails the same way", function()
      local a = open(1)
      local t = tr(nil, a, a, 1)
      assert.same({ "accounts_must_be_different" }, transfers({ t }))
      assert.is_nil(H.failed_result(db, t.id))
      assert.same({ "accounts_must_be_different" }, transfers({ t }))
    end)

    it("the same id twice in one batch: the second is judged against the first", function()
      local a, b = open(2)
      local id = new_id()
      assert.same({ "ok", "exists" }, transfers({ tr(id, a, b, 5), tr(id, a, b, 5) }))
      assert.same({ "0", "5", "0", "0" }, counters(a))
      local id2 = new_id()
      assert.same({ "credit_account_not_found", "id_already_failed" },
                  transfers({ tr(id2, a, new_id(), 5), tr(id2, a, b, 5) }))
      assert.same({ "0", "5", "0", "0" }, counters(a))
      assert.equals(0, H.stored_count(db, { id2 }))
    end)
  end)

  describe("stored rows", function()
    local function refused(url, t_id, a_id)
      local conn = pg.pool(url, { max = 1 })
      for _, sql in ipairs({
        "UPDATE ledger_transfers SET amount = amount + 1 WHERE id = $1::numeric",
        "DELETE FROM ledger_transfers WHERE id = $1::numeric",
      }) do
        local rows, err = conn:query(sql, t_id)
        assert.is_nil(rows, sql)
        assert.equals("integrity_constraint_violation", err.name)
        assert.matches("ledger rows are immutable", err.message, 1, true)
      end
      -- in a transaction always rolled back: were TRUNCATE let through, it would wipe nothing
      local rows, err = conn:tx(function(tx)
        local _, e = tx:query("TRUNCATE ledger_transfers")
        return nil, e or "TRUNCATE passed"
      end)
      assert.is_nil(rows)
      assert.equals("integrity_constraint_violation", type(err) == "table" and err.name or err)
      for _, sql in ipairs({
        "UPDATE ledger_account_balances SET credits_posted = credits_posted + 1 WHERE account_id = $1::numeric",
        "DELETE FROM ledger_account_balances WHERE account_id = $1::numeric",
      }) do
        rows, err = conn:query(sql, a_id)
        assert.is_nil(rows, sql)
        assert.equals("integrity_constraint_violation", err.name)
      end
    end

    it("transfers and balance rows are immutable, for the ledger's role and for a superuser", function()
      local a = open(1)
      local hist = open(1, { "history" })
      local id = new_id()
      assert.equals("ok", lg:transfer(tr(id, a, hist, 77)))
      local n = assert(db:query("SELECT count(*)::int AS n FROM ledger_account_balances WHERE account_id = $1::numeric",
                                hist))
      assert.equals(1, n[1].n)
      local hrow = assert(db:query("SELECT transfer_id::text AS t, credits_posted::text AS cpo, debits_posted::text " ..
                                   "AS dpo FROM ledger_account_balances WHERE account_id = $1::numeric", hist))[1]
      assert.same({ id, "77", "0" }, { hrow.t, hrow.cpo, hrow.dpo })
      refused(H.URL, id, hist)
      local su = os.getenv("NUVION_TEST_DATABASE_URL")
      assert(su, "NUVION_TEST_DATABASE_URL is not set")
      local ledger_db = H.URL:match("^[^?]*/([^/?]+)")
      refused((su:gsub("^([^?]*/)[^/?]+", "%1" .. ledger_db, 1)), id, hist)
      local row = H.transfer(lg, id)
      assert.equals("77", H.str(row.amount))
      assert.same({ "0", "0", "0", "77" }, counters(hist))
    end)
  end)

  describe("failed batches", function()
    -- Holds a lock (lock_sql, $1 = a) in a transaction of this process while a worker process
    -- (spec/fixtures/ledger/stuck.lua: an engine of timeout_ms 300) posts transfer id of 5 from
    -- a to b: its first answer is an error; once the lock is gone its retries are answered. In
    -- its own process, so that a crash of the posting layer fails this spec only.
    local function stuck(lock_sql)
      local a, b = open(2)
      local locked, release, released = false, false, false
      nuvion.spawn(function()
        db:tx(function(tx)
          if lock_sql:find("$1", 1, true) then assert(tx:query(lock_sql, a)) else assert(tx:query(lock_sql)) end
          locked = true
          while not release do nuvion.sleep(10) end
          return true
        end)
        released = true
      end)
      while not locked do nuvion.sleep(5) end
      local id = new_id()
      local p = assert(process.spawn({ helpers.bin, "run", helpers.root .. "/spec/fixtures/ledger/stuck.lua", a, b,
                                       tostring(L), id }, { output = "pipe" }))
      local out = { a = a, id = id, logs = {} }
      local function next_line()
        while true do
          local line = p:line(15000)
          if not line or line:find("^%a+ ") and not line:find("^{") then return line end
          out.logs[#out.logs + 1] = line
        end
      end
      out.first = next_line()
      release = true
      out.retry, out.again = next_line(), next_line()
      out.how, out.code = p:wait(15000)
      p:close()
      while not released do nuvion.sleep(5) end
      -- the worker lived through it (a crash here is the posting layer's: see the logs)
      assert.same({ "exit", 0 }, { out.how, out.code }, table.concat(out.logs, "\n"))
      local res, err_code, retryable, waited = (out.first or ""):match("^first (%S+) (%S+) (%S+) (%d+)$")
      assert.equals("nil", res, out.first)
      assert.equals("true", retryable)
      assert.is_true(tonumber(waited) >= 300 and tonumber(waited) < 3000, out.first)
      out.err_code = err_code
      return out
    end

    it("a batch stuck in its load past timeout_ms fails with a retryable error, nothing applied; the retry applies it",
       function()
      local o = stuck("SELECT id FROM ledger_accounts WHERE id = $1::numeric FOR UPDATE")
      assert.is_true(o.err_code == "ledger_unavailable" or o.err_code == "ledger_timeout", o.first)
      -- nothing of the first call was applied: the retry is the one that creates it
      assert.equals("retry ok", o.retry)
      assert.equals("again exists", o.again)
      assert.same({ "0", "5", "0", "0" }, counters(o.a))
      assert.equals(1, H.stored_count(db, { o.id }))
    end)

    it("a batch stuck in its commit past timeout_ms answers ledger_timeout; retries find it once", function()
      -- the load reads, the write's INSERT waits for the table lock: the COMMIT is sent, no answer
      local o = stuck("LOCK TABLE ledger_transfers IN EXCLUSIVE MODE")
      assert.equals("ledger_timeout", o.err_code, o.first)
      assert.is_true(o.retry == "retry ok" or o.retry == "retry exists", o.retry)
      assert.equals("again exists", o.again)
      assert.same({ "0", "5", "0", "0" }, counters(o.a))
      assert.equals(1, H.stored_count(db, { o.id }))
    end)
  end)

  describe("values", function()
    it("ids and amounts as numbers, json.int or digit strings; read back exactly", function()
      local a, b = open(2)
      local big = "12345678901234567890123"
      local small_id = tonumber(nuvion.random_hex(6), 16) + 2 ^ 50 -- a number id, exact below 2^53
      local ji = json.int(new_id())
      assert.same({ "ok", "ok", "ok" }, transfers({
        tr(small_id, a, b, 5),
        tr(ji, a, b, json.int(big)),
        tr(nil, a, b, "42"),
      }))
      assert.same({ "0", "12345678901234567890170", "0", "0" }, counters(a))
      local row = H.transfer(lg, H.str(ji))
      assert.is_true(json.is_int(row.amount))
      assert.equals(big, H.str(row.amount))
      local row2 = H.transfer(lg, small_id)
      assert.equals("number", type(row2.amount))
      assert.equals(5, row2.amount)
      assert.equals(H.str(small_id), H.str(row2.id))
    end)
  end)

  describe("bad calls", function()
    local bad_values = {
      { "a float amount", { amount = 1.5 } },
      { "a negative amount", { amount = -1 } },
      { "an amount of 1e40", { amount = 1e40 } },
      { "an amount past 2^128-1", { amount = "340282366920938463463374607431768211456" } },
      { "an amount with a letter", { amount = "12a" } },
      { "a negative digit string", { amount = "-5" } },
      { "a float id", { id = 2.5 } },
      { "a float debit account", { debit_account_id = 3.25 } },
      { "an unknown flag name", { flags = { "pending", "frozen" } } },
      { "a float ledger", { ledger = 1.5 } },
      { "a ledger past 2^32-1", { ledger = 4294967296 } },
      { "a code past 65535", { code = 65536 } },
      { "a timeout past 2^32-1", { flags = { "pending" }, timeout = 4294967296 } },
    }
    for _, c in ipairs(bad_values) do
      it("raise and change nothing: " .. c[1], function()
        local a, b = open(2)
        local good, bad = tr(nil, a, b, 3), tr(nil, a, b, 4)
        for k, v in pairs(c[2]) do bad[k] = v end
        local ok = pcall(lg.create_transfers, lg, { good, bad })
        assert.is_false(ok)
        ok = pcall(lg.transfer, lg, bad)
        assert.is_false(ok)
        assert.equals(0, H.stored_count(db, { good.id, type(bad.id) == "string" and bad.id or good.id }))
        assert.same({ "0", "0", "0", "0" }, counters(a))
        assert.same({ "0", "0", "0", "0" }, counters(b))
        -- the ledger still works after it
        assert.same({ "ok" }, transfers({ good }))
      end)
    end

    it("raise on an unknown account flag and create nothing", function()
      local id = new_id()
      local ok = pcall(lg.create_accounts, lg, { { id = new_id(), ledger = L, code = 1 },
                                                 { id = id, ledger = L, code = 1, flags = { "frozen" } } })
      assert.is_false(ok)
      assert.equals(0, #assert(lg:lookup_accounts({ id })))
    end)

    it("raise on more than batch_max events and post none of them", function()
      local a, b = open(2)
      -- an engine of batch_max 4: 4 events pass, 5 raise
      local small = ledger.open(nil, { batch_max = 4 })
      local function list_of(n)
        local list, ids = {}, {}
        for i = 1, n do
          list[i] = tr(nil, a, b, 1)
          ids[i] = list[i].id
        end
        return list, ids
      end
      local five, five_ids = list_of(5)
      assert.is_false((pcall(small.create_transfers, small, five)))
      assert.equals(0, H.stored_count(db, five_ids))
      assert.same({ "0", "0", "0", "0" }, counters(a))
      local four = list_of(4)
      assert.same({ "ok", "ok", "ok", "ok" }, assert(small:create_transfers(four)))
      assert.same({ "0", "4", "0", "0" }, counters(a))
      -- past the largest batch there is (8189, TigerBeetle's), whatever the engine's batch_max
      local many, many_ids = list_of(8190)
      assert.is_false((pcall(lg.create_transfers, lg, many)))
      assert.equals(0, H.stored_count(db, many_ids))
      assert.same({ "0", "4", "0", "0" }, counters(a))
    end)
  end)

  it("the invariants hold on this file's ledger", function()
    assert.same({}, H.invariants(db, L))
  end)
end)
