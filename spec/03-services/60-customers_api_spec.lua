-- The customers routes through real HTTP against core: validation errors for every field
-- (nothing stored), Idempotency-Key replay and mismatch, another partner and the other mode
-- getting 404 on every route, PII sealed in the raw row, lookups by email and phone through the
-- keyed hashes, the list's pages, scopes.
local cf = require "spec.customers_fixture"
local fx = require "spec.auth_fixture"
local openapi = require "spec.openapi"
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local auth_config = require "nuvion.auth.config"

local function copy(t)
  if type(t) ~= "table" then return t end
  local c = {}
  for k, v in pairs(t) do c[k] = copy(v) end
  return c
end

describe("customers API", function()
  local s, a, b

  lazy_setup(function()
    s = cf.start()
    a = cf.partner(s.db)
    b = cf.partner(s.db)
  end)

  lazy_teardown(function()
    cf.stop(s)
  end)

  local function count(partner_id)
    return assert(s.db:query("SELECT count(*)::int AS n FROM customers WHERE partner_id = $1", partner_id))[1].n
  end

  local function create(key, body, headers)
    local h = { ["Content-Type"] = "application/json" }
    for k, v in pairs(headers or {}) do h[k] = v end
    return cf.call(s.port, "POST", "/v1/customers", key, body, h)
  end

  describe("validation", function()
    -- { what, body change (individual unless kind is set), code, param }
    local cases = {
      { "no email", function(x) x.email = nil end, "parameter_missing", "email" },
      { "bad email", function(x) x.email = "not-an-email" end, "parameter_invalid", "email" },
      { "email too long", function(x) x.email = string.rep("a", 250) .. "@x.io" end, "parameter_invalid", "email" },
      { "email not a string", function(x) x.email = 12 end, "parameter_invalid", "email" },
      { "unknown kind", function(x) x.kind = "robot" end, "parameter_invalid", "kind" },
      { "no first_name", function(x) x.first_name = nil end, "parameter_missing", "first_name" },
      { "first_name too long", function(x) x.first_name = string.rep("a", 101) end, "parameter_invalid", "first_name" },
      { "no last_name", function(x) x.last_name = nil end, "parameter_missing", "last_name" },
      { "last_name not a string", function(x) x.last_name = true end, "parameter_invalid", "last_name" },
      { "no date_of_birth", function(x) x.date_of_birth = nil end, "parameter_missing", "date_of_birth" },
      { "date_of_birth format", function(x) x.date_of_birth = "12/04/1990" end, "parameter_invalid", "date_of_birth" },
      { "date_of_birth not a day", function(x) x.date_of_birth = "1990-02-30" end,
        "parameter_invalid", "date_of_birth" },
      { "date_of_birth 29 Feb of a common year", function(x) x.date_of_birth = "1991-02-29" end,
        "parameter_invalid", "date_of_birth" },
      { "date_of_birth in the future", function(x) x.date_of_birth = "2999-01-01" end,
        "parameter_invalid", "date_of_birth" },
      { "date_of_birth before 1900", function(x) x.date_of_birth = "1899-12-31" end,
        "parameter_invalid", "date_of_birth" },
      { "phone without +", function(x) x.phone = "07700900123" end, "parameter_invalid", "phone" },
      { "phone too short", function(x) x.phone = "+4477" end, "parameter_invalid", "phone" },
      { "address not an object", function(x) x.address = "1 High St" end, "parameter_invalid", "address" },
      { "address.line1 missing", function(x) x.address.line1 = nil end, "parameter_missing", "address.line1" },
      { "address.city missing", function(x) x.address.city = nil end, "parameter_missing", "address.city" },
      { "address.postal_code too long", function(x) x.address.postal_code = string.rep("9", 21) end,
        "parameter_invalid", "address.postal_code" },
      { "address.country not alpha-2", function(x) x.address.country = "GBR" end,
        "parameter_invalid", "address.country" },
      { "address unknown member", function(x) x.address.planet = "Earth" end, "parameter_unknown", "address.planet" },
      { "no id_document", function(x) x.id_document = nil end, "parameter_missing", "id_document" },
      { "id_document.type unknown", function(x) x.id_document.type = "visa" end,
        "parameter_invalid", "id_document.type" },
      { "id_document.type missing", function(x) x.id_document.type = nil end, "parameter_missing", "id_document.type" },
      { "id_document.number missing", function(x) x.id_document.number = nil end,
        "parameter_missing", "id_document.number" },
      { "id_document.number too short", function(x) x.id_document.number = "12" end,
        "parameter_invalid", "id_document.number" },
      { "id_document.number bad characters", function(x) x.id_document.number = "12 34/56" end,
        "parameter_invalid", "id_document.number" },
      { "id_document.country", function(x) x.id_document.country = "gb" end,
        "parameter_invalid", "id_document.country" },
      { "business_name on an individual", function(x) x.business_name = "Acme" end,
        "parameter_invalid", "business_name" },
      { "registration_number on an individual", function(x) x.registration_number = "RC1234" end,
        "parameter_invalid", "registration_number" },
      { "metadata value not a string", function(x) x.metadata = { order = 5 } end,
        "parameter_invalid", "metadata.order" },
      { "21 metadata keys", function(x)
          x.metadata = {}
          for i = 1, 21 do x.metadata["k" .. i] = "v" end
        end, "parameter_invalid", "metadata" },
      { "unknown field", function(x) x.nickname = "Ada" end, "parameter_unknown", "nickname" },
      -- businesses
      { "business: no business_name", function(x) x.business_name = nil end,
        "parameter_missing", "business_name", true },
      { "business: business_name too long", function(x) x.business_name = string.rep("b", 201) end,
        "parameter_invalid", "business_name", true },
      { "business: no registration_number", function(x) x.registration_number = nil end,
        "parameter_missing", "registration_number", true },
      { "business: registration_number bad", function(x) x.registration_number = "RC 12/34" end,
        "parameter_invalid", "registration_number", true },
      { "business: no directors", function(x) x.directors = nil end, "parameter_missing", "directors", true },
      { "business: empty directors", function(x) x.directors = json.array({}) end,
        "parameter_invalid", "directors", true },
      { "business: 11 directors", function(x)
          local d = json.array({})
          for i = 1, 11 do d[i] = { first_name = "A", last_name = "B" } end
          x.directors = d
        end, "parameter_invalid", "directors", true },
      { "business: director without last_name", function(x) x.directors[1].last_name = nil end,
        "parameter_missing", "directors[0].last_name", true },
      { "business: director date_of_birth", function(x) x.directors[1].date_of_birth = "1970-13-01" end,
        "parameter_invalid", "directors[0].date_of_birth", true },
      { "business: first_name on a business", function(x) x.first_name = "Ada" end,
        "parameter_invalid", "first_name", true },
      { "business: id_document on a business", function(x) x.id_document = { type = "passport", number = "P1234" } end,
        "parameter_invalid", "id_document", true },
    }
    for _, c in ipairs(cases) do
      it(c[1] .. " -> " .. c[3] .. " " .. c[4] .. ", nothing stored", function()
        local body = c[5] and cf.business() or cf.individual()
        c[2](body)
        local before = count(a.id)
        local res = create(a.test, body, { ["Idempotency-Key"] = "val-" .. cf.unique() })
        assert.equals(400, res.status, res.body)
        assert(openapi.check(res.data, "Error"))
        assert.equals(c[3], res.data.error.code, res.body)
        assert.equals(c[4], res.data.error.param, res.body)
        assert.equals(before, count(a.id))
      end)
    end

    it("an empty body misses email; a body that is not JSON is invalid_json", function()
      local before = count(a.id)
      local res = fx.call(s.port, "POST", "/v1/customers", a.test, nil)
      assert.equals(400, res.status)
      assert.equals("parameter_missing", res.data.error.code)
      assert.equals("email", res.data.error.param)
      local bad = fx.call(s.port, "POST", "/v1/customers", a.test, "{nope", { ["Content-Type"] = "application/json" })
      assert.equals(400, bad.status)
      assert.equals("invalid_json", bad.data.error.code)
      assert(openapi.check(bad.data, "Error"))
      assert.equals(before, count(a.id))
    end)

    it("a document body is validated too, and changes nothing", function()
      local c = create(a.test, cf.individual({ id_document = { type = "passport", number = "P4442222" } })).data
      cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/verify", a.test)
      assert.equals("action_required", cf.wait_state(s.port, a.test, c.id, "action_required").data.state)
      for _, case in ipairs({ { { type = "visa", number = "P1230000" }, "parameter_invalid", "type" },
                              { { number = "P1230000" }, "parameter_missing", "type" },
                              { { type = "passport" }, "parameter_missing", "number" },
                              { { type = "passport", number = "P1" }, "parameter_invalid", "number" },
                              { { type = "passport", number = "P1230000", country = "france" },
                                "parameter_invalid", "country" },
                              { { type = "passport", number = "P1230000", colour = "red" },
                                "parameter_unknown", "colour" } }) do
        local res = cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/documents", a.test, case[1])
        assert.equals(400, res.status)
        assert.equals(case[2], res.data.error.code)
        assert.equals(case[3], res.data.error.param)
      end
      assert.equals("action_required", cf.call(s.port, "GET", "/v1/customers/" .. c.id, a.test).data.state)
    end)
  end)

  it("answers a create exactly as a later read shows the customer, individual and business", function()
    for _, body in ipairs({ cf.individual({ metadata = { ref = "r-1" } }), cf.business() }) do
      local made = create(a.test, body)
      assert.equals(201, made.status, made.body)
      local got = cf.call(s.port, "GET", "/v1/customers/" .. made.json().id, a.test)
      assert.equals(200, got.status)
      local read = got.json()
      read.state_changes = nil
      assert.same(made.json(), read)
    end
  end)

  it("Idempotency-Key: the same request is replayed, other parameters refused, one customer made", function()
    local body = cf.individual()
    local key = "idem-" .. cf.unique()
    local first = create(a.test, body, { ["Idempotency-Key"] = key })
    assert.equals(201, first.status, first.body)
    local again = create(a.test, body, { ["Idempotency-Key"] = key })
    assert.equals(201, again.status)
    assert.equals("true", again.headers["idempotent-replayed"])
    assert.equals(first.body, again.body)
    local other = copy(body)
    other.first_name = "Augusta"
    local mismatch = create(a.test, other, { ["Idempotency-Key"] = key })
    assert.equals(400, mismatch.status)
    assert.equals("idempotency_key_reused", mismatch.data.error.code)
    assert(openapi.check(mismatch.data, "Error"))
    local found = cf.call(s.port, "GET", "/v1/customers?email=" .. body.email, a.test)
    assert.equals(1, #found.data.data)
    local events = cf.events(s.db, first.data.id)
    assert.same({ "customer.created" }, events)
    -- the same key of another partner is another request
    local theirs = create(b.test, body, { ["Idempotency-Key"] = key })
    assert.equals(201, theirs.status)
    assert.is_nil(theirs.headers["idempotent-replayed"])
    assert.not_equals(first.data.id, theirs.data.id)
  end)

  it("verify with an Idempotency-Key is replayed, not run twice", function()
    local c = create(a.test, cf.individual()).data
    local key = "verify-" .. cf.unique()
    local path = "/v1/customers/" .. c.id .. "/verify"
    local first = cf.call(s.port, "POST", path, a.test, nil, { ["Idempotency-Key"] = key })
    assert.equals(200, first.status, first.body)
    local again = cf.call(s.port, "POST", path, a.test, nil, { ["Idempotency-Key"] = key })
    assert.equals(200, again.status)
    assert.equals("true", again.headers["idempotent-replayed"])
    local n = assert(s.db:query("SELECT count(*)::int AS n FROM customer_verifications WHERE customer_id = $1", c.id))
    assert.equals(1, n[1].n)
  end)

  describe("another partner, the other mode", function()
    local mine

    lazy_setup(function()
      mine = create(a.test, cf.individual({ id_document = { type = "passport", number = "P9992222" } })).data
    end)

    local function all_404(key)
      local get = cf.call(s.port, "GET", "/v1/customers/" .. mine.id, key)
      assert.equals(404, get.status)
      assert.equals("resource_missing", get.data.error.code)
      assert(openapi.check(get.data, "Error"))
      local verify = cf.call(s.port, "POST", "/v1/customers/" .. mine.id .. "/verify", key)
      assert.equals(404, verify.status)
      assert.equals("resource_missing", verify.data.error.code)
      local doc = cf.call(s.port, "POST", "/v1/customers/" .. mine.id .. "/documents", key,
                          { type = "passport", number = "P0000" })
      assert.equals(404, doc.status)
      assert.equals("resource_missing", doc.data.error.code)
      local list = cf.call(s.port, "GET", "/v1/customers?limit=100", key)
      assert.equals(200, list.status)
      for _, c in ipairs(list.data.data) do assert.not_equals(mine.id, c.id) end
      local by_email = cf.call(s.port, "GET", "/v1/customers?email=" .. mine.email, key)
      assert.equals(0, #by_email.data.data)
      -- nothing moved
      local still = cf.call(s.port, "GET", "/v1/customers/" .. mine.id, a.test)
      assert.equals("pending", still.data.state)
    end

    it("another partner gets 404 on every route and sees nothing in lists", function()
      all_404(b.test)
      all_404(b.live)
    end)

    it("a live key of the same partner gets 404 on every route: test and live never mix", function()
      all_404(a.live)
      local live = create(a.live, cf.individual({ email = mine.email }))
      assert.equals(201, live.status, live.body)
      assert.equals("live", live.data.mode)
      assert.is_true(live.data.livemode)
      local tl = cf.call(s.port, "GET", "/v1/customers?email=" .. mine.email, a.test)
      assert.equals(1, #tl.data.data)
      assert.equals(mine.id, tl.data.data[1].id)
      local ll = cf.call(s.port, "GET", "/v1/customers?email=" .. mine.email, a.live)
      assert.equals(1, #ll.data.data)
      assert.equals(live.data.id, ll.data.data[1].id)
      assert.equals(404, cf.call(s.port, "GET", "/v1/customers/" .. live.data.id, a.test).status)
    end)

    it("a malformed id is 404 too", function()
      assert.equals(404, cf.call(s.port, "GET", "/v1/customers/cus_nope", a.test).status)
      assert.equals(404, cf.call(s.port, "POST", "/v1/customers/key_x/verify", a.test).status)
    end)
  end)

  it("PII is not in the table in plain text; tokens are bound to their row and column", function()
    local body = cf.individual({ first_name = "Zelda", last_name = "Quixotica", date_of_birth = "1977-07-07",
                                 phone = "+33 6 12 34 56 78",
                                 address = { line1 = "42 Rue Unique", city = "Lyonnaise", postal_code = "69001",
                                             country = "FR" },
                                 id_document = { type = "passport", number = "QX98765430000", country = "FR" } })
    local c = create(a.test, body).data
    local row = assert(s.db:query("SELECT * FROM customers WHERE id = $1", c.id))[1]
    local text = json.encode(row)
    for _, secret in ipairs({ body.email, "Zelda", "Quixotica", "1977-07-07", "12 34 56 78", "+33612345678",
                              "42 Rue Unique", "Lyonnaise", "QX98765430000" }) do
      assert.is_nil(text:find(secret, 1, true), secret .. " is in the row")
    end
    assert.matches("^nv1%.", row.email_enc)
    assert.matches("^nv1%.", row.name_enc)
    assert.matches("^nv1%.", row.id_document_enc)
    local key = "nuvion-development-pii-hash-key (never in production)"
    assert.equals(crypto.hex_encode(crypto.hmac_sha256(key, "email:" .. body.email:lower())), row.email_hash)
    assert.equals(crypto.hex_encode(crypto.hmac_sha256(key, "phone:+33612345678")), row.phone_hash)
    assert.equals("0000", row.id_number_last4)
    local kr = assert(auth_config.signing_keyring())
    assert.equals(body.email, kr:decrypt(row.email_enc, "customers.email:" .. c.id))
    assert.is_nil((kr:decrypt(row.email_enc, "customers.phone:" .. c.id)))
    assert.is_nil((kr:decrypt(row.email_enc, "customers.email:cus_01m86w64ww8cbm3e3ym33qkdx0")))
    -- the event carries no PII either
    local _, events = cf.events(s.db, c.id)
    local ev = json.encode(events[1].data)
    assert.is_nil(ev:find(body.email, 1, true))
    assert.is_nil(ev:find("Zelda", 1, true))
    assert.equals(a.id, events[1].data.owner_id)
    -- the answer shows the document's last 4 only
    assert.is_nil(json.encode(c):find("QX98765430000", 1, true))
    assert.equals("0000", c.id_document.number_last4)
  end)

  it("finds customers by email (case and spaces ignored) and by phone (formatting ignored)", function()
    local email = "Lookup." .. cf.unique() .. "@Example.com"
    local one = create(a.test, cf.individual({ email = email, phone = "+1 (415) 555-0100" })).data
    local two = create(a.test, cf.individual({ email = email:lower() })).data
    create(a.test, cf.individual())
    local res = cf.call(s.port, "GET", "/v1/customers?email=" .. email:upper(), a.test)
    assert.equals(200, res.status)
    assert(openapi.check(res.data, "List"))
    assert.equals(2, #res.data.data)
    assert.equals(two.id, res.data.data[1].id)      -- newest first
    assert.equals(one.id, res.data.data[2].id)
    for _, c in ipairs(res.data.data) do assert(openapi.check(c, "Customer")) end
    local ph = cf.call(s.port, "GET", "/v1/customers?phone=%2B14155550100", a.test)
    assert.equals(1, #ph.data.data)
    assert.equals(one.id, ph.data.data[1].id)
    local none = cf.call(s.port, "GET", "/v1/customers?email=nobody@example.com", a.test)
    assert.equals(0, #none.data.data)
    local twice = cf.call(s.port, "GET", "/v1/customers?email=a@b.co&email=c@d.co", a.test)
    assert.equals(400, twice.status)
    assert.equals("email", twice.data.error.param)
  end)

  it("lists in pages, newest first", function()
    local p = cf.partner(s.db)
    local made = {}
    for i = 1, 5 do made[i] = create(p.test, cf.individual()).data.id end
    local page1 = cf.call(s.port, "GET", "/v1/customers?limit=2", p.test)
    assert.equals(200, page1.status)
    assert.same({ made[5], made[4] }, { page1.data.data[1].id, page1.data.data[2].id })
    assert.is_true(page1.data.has_more)
    local page3 = cf.call(s.port, "GET", "/v1/customers?limit=2&starting_after=" .. made[2], p.test)
    assert.equals(1, #page3.data.data)
    assert.equals(made[1], page3.data.data[1].id)
    assert.is_false(page3.data.has_more)
    local bad = cf.call(s.port, "GET", "/v1/customers?limit=101", p.test)
    assert.equals(400, bad.status)
    assert.equals("limit", bad.data.error.param)
  end)

  it("needs the scopes: customers:read cannot create or verify", function()
    local reader = fx.key(s.db, a.id, "test", { "customers:read" })
    local res = create(reader, cf.individual())
    assert.equals(403, res.status)
    assert(openapi.check(res.data, "Error"))
    local c = create(a.test, cf.individual()).data
    assert.equals(403, cf.call(s.port, "POST", "/v1/customers/" .. c.id .. "/verify", reader).status)
    assert.equals(200, cf.call(s.port, "GET", "/v1/customers/" .. c.id, reader).status)
    assert.equals(401, cf.call(s.port, "GET", "/v1/customers", "sk_test_nope").status)
  end)

  describe("without its secrets (not development or test)", function()
    local core

    lazy_setup(function()
      -- auth gets its pepper (the development one, so the spec's keys work); the customers do
      -- not get NUVION_PII_HASH_KEY nor NUVION_KYC_API_KEY
      core = require("spec.helpers").start_server({ service = "core", env = { NUVION_ENV = "production",
        NUVION_API_KEY_PEPPER = "nuvion-development-api-key-pepper (never in production)",
        NUVION_MASTER_KEYS = "k1:" .. crypto.base64_encode(string.rep("k", 32)), NUVION_MASTER_KEY_ID = "k1",
        NUVION_SERVICE_KEY = crypto.base64url_encode(string.rep("s", 32)) } })
    end)

    lazy_teardown(function()
      if core then core:stop() end
    end)

    it("core boots; the customers routes answer 500 customers_misconfigured and store nothing", function()
      local before = count(a.id)
      local res = cf.call(core.port, "POST", "/v1/customers", a.test, cf.individual())
      assert.equals(500, res.status, res.body)
      assert.equals("customers_misconfigured", res.data.error.code)
      assert(openapi.check(res.data, "Error"))
      assert.equals(500, cf.call(core.port, "GET", "/v1/customers", a.test).status)
      assert.equals(before, count(a.id))
      assert.equals(200, cf.call(core.port, "GET", "/v1/api_keys", a.test).status)
      assert.is_true(#core:logs({ msg = "customers misconfigured" }) >= 1)
    end)
  end)
end)
