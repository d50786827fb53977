-- The whole onboarding path per sandbox identity, through real HTTP against core and the KYC
-- simulator: create, verify, the provider's result polled and applied, documents after
-- action_required; every change recorded and published; answers checked against the OpenAPI.
local cf = require "spec.customers_fixture"
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"
local rules = require "nuvion.rules.onboarding"
local json = require "nuvion.json"
local nuvion = require "nuvion"

describe("customers onboarding through the KYC sandbox", function()
  local s, ptn

  lazy_setup(function()
    s = cf.start()
    ptn = cf.partner(s.db)
  end)

  lazy_teardown(function()
    cf.stop(s)
  end)

  local function create(body)
    local res = cf.call(s.port, "POST", "/v1/customers", ptn.test, body)
    assert.equals(201, res.status, res.body)
    assert(openapi.check(res.data, "Customer"))
    return res.data
  end

  local function verify(id)
    local res = cf.call(s.port, "POST", "/v1/customers/" .. id .. "/verify", ptn.test)
    assert.equals(200, res.status, res.body)
    assert(openapi.check(res.data, "Customer"))
    assert.equals("in_review", res.data.state)
    return res.data
  end

  local function history(c)
    local out = {}
    for i, h in ipairs(c.state_changes) do out[i] = (h.from == json.null and "-" or h.from) .. ">" .. h.to end
    return table.concat(out, " ")
  end

  local function final(id, state)
    local res = cf.wait_state(s.port, ptn.test, id, state)
    assert.equals(state, res.data.state, res.body)
    assert(openapi.check(res.data, "Customer"))
    return res.data
  end

  it("last name Verified: pending -> in_review -> verified, tier 1, events", function()
    local c = create(cf.individual({ last_name = "Verified", id_document = { type = "id_card", number = "X98765" } }))
    assert.equals("pending", c.state)
    assert.equals(0, c.tier)
    local v = verify(c.id)
    assert.matches("^kyc_", v.verification.id)
    assert.equals("submitted", v.verification.status)
    local done = final(c.id, "verified")
    assert.equals(rules.tier_for("individual", "verified"), done.tier)
    assert.equals(1, done.tier)
    assert.equals("->pending pending>in_review in_review>verified", history(done))
    assert.equals("kyc_verified", done.state_changes[3].reason)
    assert.is_string(done.state_changes[2].request_id)
    assert.same({ "customer.created", "customer.in_review", "customer.verified" }, (cf.events(s.db, c.id)))
  end)

  it("a document ending 0000 is verified", function()
    local c = create(cf.individual({ id_document = { type = "passport", number = "P5550000" } }))
    verify(c.id)
    final(c.id, "verified")
  end)

  it("a document ending 1111 is rejected, with the provider's code, tier 0", function()
    local c = create(cf.individual({ id_document = { type = "passport", number = "P5551111" } }))
    verify(c.id)
    local done = final(c.id, "rejected")
    assert.equals(0, done.tier)
    assert.equals("kyc_rejected:document_invalid", done.state_changes[3].reason)
    assert.same({ "customer.created", "customer.in_review", "customer.rejected" }, (cf.events(s.db, c.id)))
    -- a rejected customer cannot be sent again, nor take documents
    local again = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/verify", ptn.test)
    assert.equals(409, again.status)
    assert.equals("customer_state_invalid", again.data.error.code)
    assert(openapi.check(again.data, "Error"))
    local doc = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/documents", ptn.test,
                        { type = "passport", number = "P1110000" })
    assert.equals(409, doc.status)
  end)

  it("a document ending 2222 needs more documents; a new one is reviewed and verified", function()
    local c = create(cf.individual({ id_document = { type = "passport", number = "P5552222", country = "GB" } }))
    verify(c.id)
    local ar = final(c.id, "action_required")
    assert.equals("kyc_action_required:document_unreadable", ar.state_changes[3].reason)
    local res = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/documents", ptn.test,
                        { type = "driving_licence", number = "DL7770000", country = "GB" })
    assert.equals(200, res.status, res.body)
    assert.equals("in_review", res.data.state)
    assert.equals("driving_licence", res.data.id_document.type)
    assert.equals("0000", res.data.id_document.number_last4)
    assert(openapi.check(res.data, "Customer"))
    local done = final(c.id, "verified")
    assert.equals("->pending pending>in_review in_review>action_required action_required>in_review "
      .. "in_review>verified", history(done))
    assert.same({ "customer.created", "customer.in_review", "customer.action_required", "customer.in_review",
                  "customer.verified" }, (cf.events(s.db, c.id)))
    local rows = assert(s.db:query("SELECT reason, status FROM customer_verifications WHERE customer_id = $1 "
      .. "ORDER BY id", c.id))
    assert.same({ "verify", "action_required" }, { rows[1].reason, rows[1].status })
    assert.same({ "document", "verified" }, { rows[2].reason, rows[2].status })
  end)

  it("a document ending 3333 times out at first, is sent again by the poller, and passes", function()
    local c = create(cf.individual({ id_document = { type = "passport", number = "P5553333" } }))
    local t0 = nuvion.monotonic_ms()
    local v = verify(c.id)
    assert.equals("submitting", v.verification.status)      -- the client gave up after its timeout
    assert.is_true(nuvion.monotonic_ms() - t0 >= cf.KYC_TIMEOUT_MS - 50)
    local done = final(c.id, "verified", 10000)
    assert.equals(1, done.tier)
    local rows = assert(s.db:query("SELECT attempts, status, provider_ref FROM customer_verifications "
      .. "WHERE customer_id = $1", c.id))
    assert.equals(1, #rows)
    assert.is_true(rows[1].attempts >= 2, "attempts " .. rows[1].attempts)
    assert.equals("verified", rows[1].status)
    assert.matches("^chk_", rows[1].provider_ref)
  end)

  it("a business (KYB) with a registration ending 0000 is verified at tier 2", function()
    local c = create(cf.business())
    assert.equals("business", c.kind)
    assert.equals("Acme Ltd", c.business_name)
    verify(c.id)
    local done = final(c.id, "verified")
    assert.equals(2, done.tier)
    assert.equals("Grace", done.directors[1].first_name)
  end)

  it("a business with a registration ending 2222 takes a new registration number", function()
    local c = create(cf.business({ registration_number = "RC9992222" }))
    verify(c.id)
    final(c.id, "action_required")
    local res = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/documents", ptn.test,
                        { type = "id_card", number = "RC9991111" })
    assert.equals(200, res.status, res.body)
    assert.equals("RC9991111", res.data.registration_number)
    final(c.id, "rejected")
  end)

  it("verify twice: the second is refused while in review", function()
    local c = create(cf.individual())
    verify(c.id)
    local res = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/verify", ptn.test)
    assert.is_true(res.status == 409, res.body)
    local doc = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/documents", ptn.test,
                        { type = "passport", number = "P0000" })
    assert.equals(409, doc.status)
    final(c.id, "verified")
  end)

  it("25 customers sent at once, more than one poll batch, all reach their result", function()
    local made = {}          -- onboarding.POLL_BATCH is 20
    local results = helpers.parallel(25, function(i)
      local number = "P7" .. i .. (i % 3 == 0 and "1111" or "0000")
      local c = create(cf.individual({ id_document = { type = "passport", number = number } }))
      verify(c.id)
      made[i] = c.id
    end)
    for i = 1, 25 do
      assert.is_nil(results[i] and results[i].error)
      assert.is_string(made[i])
    end
    for i = 1, 25 do
      final(made[i], i % 3 == 0 and "rejected" or "verified")
    end
  end)

  it("8 verify requests racing for one customer: one starts the check, the others get 409", function()
    local c = create(cf.individual())
    local results = helpers.parallel(8, function()
      local res = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/verify", ptn.test)
      return { status = res.status, code = res.data.error and res.data.error.code }
    end)
    local ok, conflicts = 0, 0
    for _, r in ipairs(results) do
      if r.status == 200 then ok = ok + 1 end
      if r.status == 409 and r.code == "customer_state_invalid" then conflicts = conflicts + 1 end
    end
    assert.equals(1, ok)
    assert.equals(7, conflicts)
    local n = assert(s.db:query("SELECT count(*)::int AS n FROM customer_verifications WHERE customer_id = $1", c.id))
    assert.equals(1, n[1].n)
    local done = final(c.id, "verified")
    assert.equals(3, #done.state_changes)
  end)

  it("a check the provider does not know is asked for less and less often, the customer kept in review", function()
    local c = create(cf.individual())
    local vid = require("nuvion.api.ids").new("kyc")
    assert(s.db:query("UPDATE customers SET state = 'in_review' WHERE id = $1", c.id))
    assert(s.db:query("INSERT INTO customer_verifications (id, customer_id, provider, reason, status, provider_ref) "
      .. "VALUES ($1, $2, 'sandbox', 'verify', 'submitted', 'chk_00000000deadbeef')", vid, c.id))
    nuvion.sleep(2500)
    local v = assert(s.db:query("SELECT attempts, last_error, status, extract(epoch from next_poll_at - updated_at) "
      .. "AS wait_s FROM customer_verifications WHERE id = $1", vid))[1]
    assert.equals("submitted", v.status)
    assert.equals("refused", v.last_error)
    -- waits 0.5, 1, 2 s ...: 2.5 s hold 2 or 3 fetches, not the 25 of a 100 ms poll
    assert.is_true(v.attempts >= 2 and v.attempts <= 4, "attempts " .. v.attempts)
    assert.is_true(tonumber(v.wait_s) >= 1, "wait " .. tostring(v.wait_s))
    assert.equals("in_review", cf.call(s.port, "GET", "/v1/customers/" .. c.id, ptn.test).data.state)
  end)

  it("the state change log is append-only", function()
    local c = create(cf.individual())
    local ok, err = s.db:query("DELETE FROM customer_state_changes WHERE customer_id = $1", c.id)
    assert.is_nil(ok)
    assert.matches("append%-only", tostring(err))
    ok = s.db:query("UPDATE customer_state_changes SET reason = 'x' WHERE customer_id = $1", c.id)
    assert.is_nil(ok)
  end)
end)
