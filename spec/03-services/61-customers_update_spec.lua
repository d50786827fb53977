-- PATCH /v1/customers/:id through real HTTP against core and the KYC simulator: every field's
-- validation error (nothing changed), contact details and metadata (merged, "" removes a key),
-- identity fields only while pending or action_required (409 otherwise), PII sealed anew with its
-- hashes (lookups follow), the event customer.updated without PII, the audit row, another partner
-- and the other mode 404, Idempotency-Key replay and mismatch, scopes.
local cf = require "spec.customers_fixture"
local fx = require "spec.auth_fixture"
local openapi = require "spec.openapi"
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local auth_config = require "nuvion.auth.config"

local HASH_KEY = "nuvion-development-pii-hash-key (never in production)"

describe("customers API: PATCH /v1/customers/:id", function()
  local s, a, b

  lazy_setup(function()
    s = cf.start()
    a = cf.partner(s.db)
    b = cf.partner(s.db)
  end)

  lazy_teardown(function()
    cf.stop(s)
  end)

  local function create(key, body)
    local res = cf.call(s.port, "POST", "/v1/customers", key, body)
    assert.equals(201, res.status, res.body)
    return res.data
  end

  local function patch(key, id, body, headers)
    local h = { ["Content-Type"] = "application/json" }
    for k, v in pairs(headers or {}) do h[k] = v end
    return cf.call(s.port, "PATCH", "/v1/customers/" .. id, key, body, h)
  end

  local function get(key, id) return cf.call(s.port, "GET", "/v1/customers/" .. id, key) end

  local function raw(id)
    return assert(s.db:query("SELECT * FROM customers WHERE id = $1", id))[1]
  end

  local function lookup(key, field, value)
    local res = cf.call(s.port, "GET", "/v1/customers?" .. field .. "=" .. value:gsub("%+", "%%2B"), key)
    assert.equals(200, res.status, res.body)
    local out = {}
    for i, c in ipairs(res.data.data) do out[i] = c.id end
    return out
  end

  -- Puts a new customer of `body` in `state` through the simulator.
  local function in_state(body, state)
    local c = create(a.test, body)
    if state == "pending" then return c end
    assert.equals(200, cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/verify", a.test).status)
    local res = cf.wait_state(s.port, a.test, c.id, state)
    assert.equals(state, res.data.state)
    return res.data
  end

  describe("validation", function()
    local ind, biz

    lazy_setup(function()
      ind = create(a.test, cf.individual({ metadata = { k1 = "v" } }))
      biz = create(a.test, cf.business())
    end)

    -- { what, body, code, param, business }
    local many = {}
    for i = 1, 21 do many["k" .. i] = "v" end
    local twenty = {}                   -- with the one key on file: 21
    for i = 2, 21 do twenty["k" .. i] = "v" end
    local cases = {
      { "bad email", { email = "not-an-email" }, "parameter_invalid", "email" },
      { "email too long", { email = string.rep("a", 250) .. "@x.io" }, "parameter_invalid", "email" },
      { "email not a string", { email = 12 }, "parameter_invalid", "email" },
      { "email null", { email = json.null }, "parameter_invalid", "email" },
      { "phone without +", { phone = "07700900123" }, "parameter_invalid", "phone" },
      { "phone too short", { phone = "+4477" }, "parameter_invalid", "phone" },
      { "phone not a string", { phone = 447700900123 }, "parameter_invalid", "phone" },
      { "address not an object", { address = "1 High St" }, "parameter_invalid", "address" },
      { "address.line1 missing", { address = { city = "London", postal_code = "N1", country = "GB" } },
        "parameter_missing", "address.line1" },
      { "address.country not alpha-2", { address = { line1 = "1", city = "L", postal_code = "N1", country = "GBR" } },
        "parameter_invalid", "address.country" },
      { "address unknown member", { address = { line1 = "1", city = "L", postal_code = "N1", country = "GB",
                                                planet = "Earth" } }, "parameter_unknown", "address.planet" },
      { "first_name empty", { first_name = "" }, "parameter_invalid", "first_name" },
      { "first_name too long", { first_name = string.rep("a", 101) }, "parameter_invalid", "first_name" },
      { "last_name not a string", { last_name = true }, "parameter_invalid", "last_name" },
      { "date_of_birth format", { date_of_birth = "12/04/1990" }, "parameter_invalid", "date_of_birth" },
      { "date_of_birth not a day", { date_of_birth = "1990-02-30" }, "parameter_invalid", "date_of_birth" },
      { "date_of_birth in the future", { date_of_birth = "2999-01-01" }, "parameter_invalid", "date_of_birth" },
      { "date_of_birth before 1900", { date_of_birth = "1899-12-31" }, "parameter_invalid", "date_of_birth" },
      { "id_document.type unknown", { id_document = { type = "visa", number = "P1230000" } },
        "parameter_invalid", "id_document.type" },
      { "id_document.number missing", { id_document = { type = "passport" } },
        "parameter_missing", "id_document.number" },
      { "id_document.number bad characters", { id_document = { type = "passport", number = "12 34/56" } },
        "parameter_invalid", "id_document.number" },
      { "id_document.country", { id_document = { type = "passport", number = "P1230000", country = "gb" } },
        "parameter_invalid", "id_document.country" },
      { "metadata value not a string", { metadata = { order = 5 } }, "parameter_invalid", "metadata.order" },
      { "21 metadata keys in the body", { metadata = many }, "parameter_invalid", "metadata" },
      { "21 metadata keys once merged", { metadata = twenty }, "parameter_invalid", "metadata" },
      { "kind cannot change", { kind = "business" }, "parameter_unknown", "kind" },
      { "unknown field", { nickname = "Ada" }, "parameter_unknown", "nickname" },
      { "business_name on an individual", { business_name = "Acme" }, "parameter_invalid", "business_name" },
      { "registration_number on an individual", { registration_number = "RC1234" },
        "parameter_invalid", "registration_number" },
      { "directors on an individual", { directors = { { first_name = "A", last_name = "B" } } },
        "parameter_invalid", "directors" },
      { "business: first_name", { first_name = "Ada" }, "parameter_invalid", "first_name", true },
      { "business: id_document", { id_document = { type = "passport", number = "P1234" } },
        "parameter_invalid", "id_document", true },
      { "business: date_of_birth", { date_of_birth = "1990-01-01" }, "parameter_invalid", "date_of_birth", true },
      { "business: business_name too long", { business_name = string.rep("b", 201) },
        "parameter_invalid", "business_name", true },
      { "business: registration_number bad", { registration_number = "RC 12/34" },
        "parameter_invalid", "registration_number", true },
      { "business: empty directors", { directors = json.array({}) }, "parameter_invalid", "directors", true },
      { "business: director without last_name", { directors = { { first_name = "A" } } },
        "parameter_missing", "directors[0].last_name", true },
      { "business: director date_of_birth", { directors = { { first_name = "A", last_name = "B",
                                                              date_of_birth = "1970-13-01" } } },
        "parameter_invalid", "directors[0].date_of_birth", true },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " -> " .. c[3] .. " " .. c[4] .. ", nothing changed", function()
        local who = c[5] and biz or ind
        local before = raw(who.id)
        local events = #cf.events(s.db, who.id)
        local res = patch(a.test, who.id, c[2], { ["Idempotency-Key"] = "val-" .. cf.unique() })
        assert.equals(400, res.status, res.body)
        assert(openapi.check(res.data, "Error"))
        assert.equals(c[3], res.data.error.code, res.body)
        assert.equals(c[4], res.data.error.param, res.body)
        assert.same(before, raw(who.id))
        assert.equals(events, #cf.events(s.db, who.id))
      end)
    end

    it("a body that is not JSON is invalid_json; an empty one changes nothing and sends no event", function()
      local before = raw(ind.id)
      local events = #cf.events(s.db, ind.id)
      local bad = fx.call(s.port, "PATCH", "/v1/customers/" .. ind.id, a.test, "{nope",
                          { ["Content-Type"] = "application/json" })
      assert.equals(400, bad.status)
      assert.equals("invalid_json", bad.data.error.code)
      local empty = fx.call(s.port, "PATCH", "/v1/customers/" .. ind.id, a.test, nil)
      assert.equals(200, empty.status, empty.body)
      assert(openapi.check(empty.data, "Customer"))
      assert.same(before, raw(ind.id))
      assert.equals(events, #cf.events(s.db, ind.id))
    end)
  end)

  it("changes email, phone and address: sealed anew, hashes and lookups follow, an event without PII", function()
    -- a phone no other customer of the spec has (cf.individual draws from 900 numbers)
    local old_phone = string.format("+44 7%09d", math.random(0, 999999999))
    local old = cf.individual({ email = "Before." .. cf.unique() .. "@Example.com", phone = old_phone })
    local c = create(a.test, old)
    local email = "after." .. cf.unique() .. "@example.org"
    local addr = { line1 = "9 Rue Nouvelle", line2 = "Bât B", city = "Paris", postal_code = "75011", country = "FR" }
    local res = patch(a.test, c.id, { email = email, phone = "+33 6 98 76 54 32", address = addr })
    assert.equals(200, res.status, res.body)
    assert(openapi.check(res.data, "Customer"))
    assert.equals(email, res.data.email)
    assert.equals("+33 6 98 76 54 32", res.data.phone)
    assert.same(addr, res.data.address)
    assert.equals("pending", res.data.state)
    assert.equals(c.first_name, res.data.first_name)             -- the rest kept
    assert.same(c.id_document, res.data.id_document)
    local got = get(a.test, c.id)
    assert.equals(email, got.data.email)
    assert.same(addr, got.data.address)
    -- lookups: the new email and phone find it, the old ones no longer do
    assert.same({ c.id }, lookup(a.test, "email", email:upper()))
    assert.same({}, lookup(a.test, "email", old.email))
    assert.same({ c.id }, lookup(a.test, "phone", "+33698765432"))
    assert.same({}, lookup(a.test, "phone", (old_phone:gsub(" ", ""))))
    -- the raw row: tokens bound to row and field, the documented hashes, no plain text
    local row = raw(c.id)
    local text = json.encode(row)
    for _, secret in ipairs({ email, "98 76 54 32", "+33698765432", "9 Rue Nouvelle", "Paris" }) do
      assert.is_nil(text:find(secret, 1, true), secret .. " is in the row")
    end
    local kr = assert(auth_config.signing_keyring())
    assert.equals(email, kr:decrypt(row.email_enc, "customers.email:" .. c.id))
    assert.is_nil((kr:decrypt(row.phone_enc, "customers.email:" .. c.id)))
    assert.equals(crypto.hex_encode(crypto.hmac_sha256(HASH_KEY, "email:" .. email)), row.email_hash)
    assert.equals(crypto.hex_encode(crypto.hmac_sha256(HASH_KEY, "phone:+33698765432")), row.phone_hash)
    -- the event names the fields, never their values
    local types, events = cf.events(s.db, c.id)
    assert.same({ "customer.created", "customer.updated" }, types)
    local ev = events[2].data
    assert.same({ "email", "phone", "address" }, ev.changed)
    assert.equals(c.id, ev.id)
    assert.equals(a.id, ev.owner_id)
    assert.equals("test", ev.mode)
    local evtext = json.encode(ev)
    for _, secret in ipairs({ email, "+33", "Paris", "Ada" }) do assert.is_nil(evtext:find(secret, 1, true)) end
    -- audited with the fields' names
    local aud = assert(s.db:query("SELECT action, data, method FROM api_audit_log WHERE object_id = $1 "
      .. "ORDER BY id", c.id))
    assert.equals("customer.update", aud[2].action)
    assert.equals("PATCH", aud[2].method)
    assert.same({ "email", "phone", "address" }, aud[2].data.fields)

    -- phone and address removed with null
    local rm = patch(a.test, c.id, { phone = json.null, address = json.null })
    assert.equals(200, rm.status, rm.body)
    assert(openapi.check(rm.data, "Customer"))
    assert.equals(json.null, rm.data.phone)
    assert.equals(json.null, rm.data.address)
    row = raw(c.id)
    assert.is_nil(row.phone_enc)
    assert.is_nil(row.phone_hash)
    assert.is_nil(row.address_enc)
    assert.same({}, lookup(a.test, "phone", "+33698765432"))
  end)

  it("merges metadata: new keys added, given keys replaced, a key set to \"\" removed", function()
    local c = create(a.test, cf.individual({ metadata = { keep = "1", change = "2", drop = "3" } }))
    local res = patch(a.test, c.id, { metadata = { change = "two", drop = "", new = "4", absent = "" } })
    assert.equals(200, res.status, res.body)
    assert(openapi.check(res.data, "Customer"))
    assert.same({ keep = "1", change = "two", new = "4" }, res.data.metadata)
    assert.same({ keep = "1", change = "two", new = "4" }, raw(c.id).metadata)
    local all = patch(a.test, c.id, { metadata = { keep = "", change = "", new = "" } })
    assert.equals(200, all.status)
    assert.same({}, all.data.metadata)
    assert.equals("{}", json.encode(all.data.metadata))
    -- 20 keys fit
    local twenty = {}
    for i = 1, 20 do twenty["k" .. i] = "v" end
    local full = patch(a.test, c.id, { metadata = twenty })
    assert.equals(200, full.status, full.body)
    local n = 0
    for _ in pairs(full.data.metadata) do n = n + 1 end
    assert.equals(20, n)
  end)

  it("changes identity fields while pending: names, date of birth, document; the check uses them", function()
    local c = create(a.test, cf.individual({ last_name = "Lovelace",
                                             id_document = { type = "passport", number = "P5551111" } }))
    local res = patch(a.test, c.id, { first_name = "Augusta", last_name = "Verified", date_of_birth = "1985-12-10",
                                      id_document = { type = "id_card", number = "ID7770000", country = "FR" } })
    assert.equals(200, res.status, res.body)
    assert(openapi.check(res.data, "Customer"))
    assert.equals("Augusta", res.data.first_name)
    assert.equals("Verified", res.data.last_name)
    assert.equals("1985-12-10", res.data.date_of_birth)
    assert.same({ type = "id_card", country = "FR", number_last4 = "0000" }, res.data.id_document)
    assert.equals("0000", raw(c.id).id_number_last4)
    -- the provider now sees the new document (ending 0000: verified, where 1111 was rejected)
    assert.equals(200, cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/verify", a.test).status)
    assert.equals("verified", cf.wait_state(s.port, a.test, c.id, "verified").data.state)
    -- one name part alone keeps the other
    local biz = create(a.test, cf.business())
    local up = patch(a.test, biz.id, { business_name = "Acme Holdings",
                                       directors = { { first_name = "Ada", last_name = "King" } } })
    assert.equals(200, up.status, up.body)
    assert(openapi.check(up.data, "Customer"))
    assert.equals("Acme Holdings", up.data.business_name)
    assert.same({ { first_name = "Ada", last_name = "King" } }, up.data.directors)
    assert.equals(biz.registration_number, up.data.registration_number)
    local one = patch(a.test, c.id, { email = "x." .. cf.unique() .. "@example.com" })
    assert.equals("Augusta", one.data.first_name)
  end)

  it("refuses identity fields once a check decided or runs (409), contact details still change", function()
    local verified = in_state(cf.individual({ last_name = "Verified" }), "verified")
    local rejected = in_state(cf.individual({ id_document = { type = "passport", number = "P1231111" } }),
                              "rejected")
    local action = in_state(cf.individual({ id_document = { type = "passport", number = "P1232222" } }),
                            "action_required")
    local doc = { type = "passport", number = "P9990000" }
    for _, c in ipairs({ verified, rejected }) do
      for _, body in ipairs({ { first_name = "Eve" }, { last_name = "Other" }, { date_of_birth = "1980-01-01" },
                              { id_document = doc }, { email = "ok." .. cf.unique() .. "@example.com",
                                                       first_name = "Eve" } }) do
        local before = raw(c.id)
        local res = patch(a.test, c.id, body)
        assert.equals(409, res.status, res.body)
        assert(openapi.check(res.data, "Error"))
        assert.equals("customer_state_invalid", res.data.error.code)
        assert.is_truthy(res.data.error.param)
        assert.same(before, raw(c.id))
      end
      local ok = patch(a.test, c.id, { email = "moved." .. cf.unique() .. "@example.com", metadata = { a = "b" } })
      assert.equals(200, ok.status, ok.body)
      assert.equals(c.state, ok.data.state)
      assert.equals(c.tier, ok.data.tier)
    end
    -- action_required: the document may be corrected here too
    local res = patch(a.test, action.id, { id_document = { type = "passport", number = "P4440000" } })
    assert.equals(200, res.status, res.body)
    assert.equals("0000", res.data.id_document.number_last4)
    assert.equals("action_required", res.data.state)
    -- in review (the 3333 identity stalls the provider): 409 too
    local slow = create(a.test, cf.individual({ id_document = { type = "passport", number = "P1233333" } }))
    assert.equals(200, cf.call(s.port, "POST", "/v1/customers/" .. slow.id .. "/verify", a.test).status)
    local r = patch(a.test, slow.id, { first_name = "Eve" })
    assert.equals(409, r.status, r.body)
    assert.equals("customer_state_invalid", r.data.error.code)
    assert.equals("first_name", r.data.error.param)
    cf.wait_state(s.port, a.test, slow.id, "verified")
  end)

  it("Idempotency-Key: replayed, other parameters refused, one change and one event", function()
    local c = create(a.test, cf.individual())
    local key = "patch-" .. cf.unique()
    local body = { email = "idem." .. cf.unique() .. "@example.com", metadata = { n = "1" } }
    local first = patch(a.test, c.id, body, { ["Idempotency-Key"] = key })
    assert.equals(200, first.status, first.body)
    local again = patch(a.test, c.id, body, { ["Idempotency-Key"] = key })
    assert.equals(200, again.status)
    assert.equals("true", again.headers["idempotent-replayed"])
    assert.equals(first.body, again.body)
    local other = patch(a.test, c.id, { email = "other@example.com" }, { ["Idempotency-Key"] = key })
    assert.equals(400, other.status)
    assert.equals("idempotency_key_reused", other.data.error.code)
    assert.same({ "customer.created", "customer.updated" }, (cf.events(s.db, c.id)))
    local n = assert(s.db:query("SELECT count(*)::int AS n FROM api_audit_log WHERE object_id = $1 "
      .. "AND action = 'customer.update'", c.id))[1].n
    assert.equals(1, n)
  end)

  it("another partner and the other mode get 404 and change nothing; a malformed id is 404", function()
    local c = create(a.test, cf.individual())
    local before = raw(c.id)
    for _, key in ipairs({ b.test, b.live, a.live }) do
      local res = patch(key, c.id, { email = "thief@example.com" })
      assert.equals(404, res.status, res.body)
      assert(openapi.check(res.data, "Error"))
      assert.equals("resource_missing", res.data.error.code)
    end
    assert.same(before, raw(c.id))
    assert.same({ "customer.created" }, (cf.events(s.db, c.id)))
    assert.equals(404, patch(a.test, "cus_nope", { email = "x@example.com" }).status)
    assert.equals(404, patch(a.test, "cus_01m86w64ww8cbm3e3ym33qkdx0", { email = "x@example.com" }).status)
  end)

  it("needs customers:write", function()
    local c = create(a.test, cf.individual())
    local reader = fx.key(s.db, a.id, "test", { "customers:read" })
    local res = patch(reader, c.id, { email = "r@example.com" })
    assert.equals(403, res.status)
    assert(openapi.check(res.data, "Error"))
    assert.equals(401, patch("sk_test_nope", c.id, { email = "r@example.com" }).status)
  end)
end)
