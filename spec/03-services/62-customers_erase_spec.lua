-- DELETE /v1/customers/:id (erasure) through real HTTP against core, the KYC simulator and the
-- ledger: the PII gone from the row (sealed columns, hashes, last 4, metadata) and from the
-- responses kept for Idempotency-Keys, the lookups and the list no longer finding the customer,
-- its state history kept, the event customer.deleted, GET answering the erased object, no way back
-- (verify, documents, PATCH refused; the row refuses updates); refused while in review and while a
-- wallet holds money; another partner and the other mode 404; scopes.
local cf = require "spec.customers_fixture"
local fx = require "spec.auth_fixture"
local openapi = require "spec.openapi"
local json = require "nuvion.json"

local PII_COLUMNS = { "name_enc", "date_of_birth_enc", "address_enc", "phone_enc", "email_enc", "id_document_enc",
                      "registration_number_enc", "directors_enc", "email_hash", "phone_hash", "id_number_last4" }

describe("customers API: DELETE /v1/customers/:id (erasure)", function()
  local s, a, b

  lazy_setup(function()
    s = cf.start()
    a = cf.partner(s.db)
    b = cf.partner(s.db)
  end)

  lazy_teardown(function()
    cf.stop(s)
  end)

  local function call(method, path, key, body, headers)
    return cf.call(s.port, method, path, key or a.test, body, headers)
  end

  local function create(body, headers)
    local h = { ["Content-Type"] = "application/json" }
    for k, v in pairs(headers or {}) do h[k] = v end
    local res = call("POST", "/v1/customers", a.test, body, h)
    assert.equals(201, res.status, res.body)
    return res.data, res
  end

  local function erase(id, key) return call("DELETE", "/v1/customers/" .. id, key) end

  local function raw(id) return assert(s.db:query("SELECT * FROM customers WHERE id = $1", id))[1] end

  local function found_by(field, value)
    local res = call("GET", "/v1/customers?" .. field .. "=" .. value:gsub("%+", "%%2B"))
    assert.equals(200, res.status, res.body)
    return #res.data.data
  end

  local function verified(body)
    local c = create(body or cf.individual({ last_name = "Verified" }))
    assert.equals(200, call("POST", "/v1/customers/" .. c.id .. "/verify").status)
    assert.equals("verified", cf.wait_state(s.port, a.test, c.id, "verified").data.state)
    return c
  end

  it("removes every PII field, keeps the row and its history, sends customer.deleted", function()
    -- a phone no other customer of the spec has (cf.individual draws from 900 numbers)
    local phone = string.format("+44 7%09d", math.random(0, 999999999))
    local body = cf.individual({ phone = phone, metadata = { crm = "secret-ref" } })
    local key = "erase-create-" .. cf.unique()
    local c = create(body, { ["Idempotency-Key"] = key })
    assert.equals(1, found_by("email", body.email))
    assert.equals(1, found_by("phone", (phone:gsub(" ", ""))))
    local patched = call("PATCH", "/v1/customers/" .. c.id, a.test, { address = { line1 = "7 Secret Way",
      city = "Leeds", postal_code = "LS1", country = "GB" } }, { ["Idempotency-Key"] = "erase-patch-" .. key })
    assert.equals(200, patched.status, patched.body)

    local res = erase(c.id)
    assert.equals(200, res.status, res.body)
    assert.same({ id = c.id, object = "customer", deleted = true }, res.data)

    -- the row: no PII left, state erased, dates kept
    local row = raw(c.id)
    for _, col in ipairs(PII_COLUMNS) do assert.is_nil(row[col], col) end
    assert.same({}, row.metadata)
    assert.equals("erased", row.state)
    assert.equals(0, row.tier)
    assert.is_not_nil(row.erased_at)
    assert.equals("individual", row.kind)
    -- lookups and the list no longer find it
    assert.equals(0, found_by("email", body.email))
    assert.equals(0, found_by("phone", (phone:gsub(" ", ""))))
    local list = call("GET", "/v1/customers?limit=100")
    for _, x in ipairs(list.data.data) do assert.not_equals(c.id, x.id) end
    -- GET: what is left, with the history
    local got = call("GET", "/v1/customers/" .. c.id)
    assert.equals(200, got.status, got.body)
    assert(openapi.check(got.data, "DeletedCustomer"))
    assert.is_true(got.data.deleted)
    assert.equals("erased", got.data.state)
    assert.is_nil(got.data.email)
    local h = got.data.state_changes
    assert.equals(2, #h)
    assert.equals("created", h[1].reason)
    assert.same({ "pending", "erased", "erased" }, { h[2].from, h[2].to, h[2].reason })
    assert.equals(res.headers["x-request-id"], h[2].request_id)
    -- the event, without PII; the audit row
    local types, events = cf.events(s.db, c.id)
    assert.same({ "customer.created", "customer.updated", "customer.deleted" }, types)
    assert.is_true(events[3].data.deleted)
    assert.equals("erased", events[3].data.state)
    assert.equals(a.id, events[3].data.owner_id)
    local aud = assert(s.db:query("SELECT action FROM api_audit_log WHERE object_id = $1 ORDER BY id", c.id))
    assert.equals("customer.delete", aud[#aud].action)
    -- the responses kept for the creation's and the update's keys hold no PII any more
    local kept = assert(s.db:query("SELECT response_body FROM api_idempotency_keys WHERE partner_id = $1 "
      .. "AND idempotency_key IN ($2, $3)", a.id, key, "erase-patch-" .. key))
    assert.equals(2, #kept)
    for _, k in ipairs(kept) do
      for _, secret in ipairs({ body.email, "Lovelace", "+44 7700", "Secret Way", "secret-ref", "1990-04-12" }) do
        assert.is_nil(k.response_body:find(secret, 1, true), secret)
      end
    end
    local replay = call("POST", "/v1/customers", a.test, body, { ["Content-Type"] = "application/json",
                                                              ["Idempotency-Key"] = key })
    assert.equals("true", replay.headers["idempotent-replayed"])
    assert.same({ id = c.id, object = "customer", deleted = true }, replay.data)
    -- a key of another customer's creation is untouched
    local other, ores = create(cf.individual(), { ["Idempotency-Key"] = "erase-other-" .. key })
    assert.equals(201, ores.status)
    local still = assert(s.db:query("SELECT response_body FROM api_idempotency_keys WHERE partner_id = $1 "
      .. "AND idempotency_key = $2", a.id, "erase-other-" .. key))[1].response_body
    assert.equals(other.email, json.decode(still).email)
  end)

  it("is final: no verify, documents or update; erasing again answers the same and changes nothing", function()
    local c = create(cf.individual())
    assert.equals(200, erase(c.id).status)
    for _, r in ipairs({ { "POST", "/verify" }, { "POST", "/documents", { type = "passport", number = "P1230000" } },
                         { "PATCH", "", { email = "back@example.com" } },
                         { "PATCH", "", { metadata = { a = "b" } } } }) do
      local res = call(r[1], "/v1/customers/" .. c.id .. r[2], a.test, r[3])
      assert.equals(409, res.status, r[1] .. r[2] .. ": " .. res.body)
      assert(openapi.check(res.data, "Error"))
      assert.equals("customer_state_invalid", res.data.error.code)
    end
    local before = raw(c.id)
    local again = erase(c.id)
    assert.equals(200, again.status, again.body)
    assert.same({ id = c.id, object = "customer", deleted = true }, again.data)
    assert.same(before, raw(c.id))
    assert.same({ "customer.created", "customer.deleted" }, (cf.events(s.db, c.id)))
    assert.equals(0, assert(s.db:query("SELECT count(*)::int AS n FROM customer_verifications "
      .. "WHERE customer_id = $1", c.id))[1].n)
    -- the row itself refuses to change
    local ok, err = s.db:query("UPDATE customers SET state = 'pending' WHERE id = $1", c.id)
    assert.is_nil(ok)
    assert.matches("is erased", tostring(err))
    -- and the table refuses an erased row that keeps PII
    local bad, berr = s.db:query("UPDATE customers SET state = 'erased', erased_at = now() WHERE id = $1",
                                 create(cf.individual()).id)
    assert.is_nil(bad)
    assert.matches("customers_erased", tostring(berr))
  end)

  it("erases verified, rejected and action_required customers and businesses", function()
    local v = verified()
    local rj = create(cf.individual({ id_document = { type = "passport", number = "P7771111" } }))
    call("POST", "/v1/customers/" .. rj.id .. "/verify")
    assert.equals("rejected", cf.wait_state(s.port, a.test, rj.id, "rejected").data.state)
    local ar = create(cf.individual({ id_document = { type = "passport", number = "P7772222" } }))
    call("POST", "/v1/customers/" .. ar.id .. "/verify")
    assert.equals("action_required", cf.wait_state(s.port, a.test, ar.id, "action_required").data.state)
    local biz = create(cf.business())
    for _, c in ipairs({ v, rj, ar, biz }) do
      local res = erase(c.id)
      assert.equals(200, res.status, res.body)
      local got = call("GET", "/v1/customers/" .. c.id)
      assert(openapi.check(got.data, "DeletedCustomer"))
      assert.equals(c.kind, got.data.kind)
      assert.equals("erased", got.data.state_changes[#got.data.state_changes].to)
      for _, col in ipairs(PII_COLUMNS) do assert.is_nil(raw(c.id)[col], col) end
    end
    assert.equals(0, raw(v.id).tier)            -- was 1 while verified
  end)

  it("is refused while a check is in review", function()
    local c = create(cf.individual({ id_document = { type = "passport", number = "P8883333" } }))
    assert.equals(200, call("POST", "/v1/customers/" .. c.id .. "/verify").status)
    local before = raw(c.id)
    local res = erase(c.id)
    assert.equals(409, res.status, res.body)
    assert(openapi.check(res.data, "Error"))
    assert.equals("customer_in_review", res.data.error.code)
    assert.same(before, raw(c.id))
    assert.equals(1, found_by("email", c.email))
    -- once decided, it can be erased
    cf.wait_state(s.port, a.test, c.id, "verified")
    assert.equals(200, erase(c.id).status)
  end)

  it("is refused while a wallet of the customer holds money, allowed once it is empty", function()
    local c = verified()
    local w = call("POST", "/v1/wallets", a.test, { currency = "USD", customer = c.id })
    assert.equals(200, w.status, w.body)
    local empty = call("POST", "/v1/wallets", a.test, { currency = "EUR", customer = c.id })
    assert.equals(200, empty.status, empty.body)
    local mine = call("POST", "/v1/wallets", a.test, { currency = "USD" })
    assert.equals(200, mine.status, mine.body)
    assert.equals(200, call("POST", "/v1/test_helpers/wallets/" .. w.data.id .. "/fund", a.test,
                            { amount = 2500 }).status)
    local before = raw(c.id)
    local res = erase(c.id)
    assert.equals(409, res.status, res.body)
    assert(openapi.check(res.data, "Error"))
    assert.equals("customer_has_balance", res.data.error.code)
    assert.matches(w.data.id, res.data.error.message, 1, true)
    assert.same(before, raw(c.id))
    assert.equals(1, found_by("email", c.email))
    assert.same({ "customer.created", "customer.in_review", "customer.verified" }, (cf.events(s.db, c.id)))
    -- part of it moved out: still refused
    local function move(amount, k)
      local tr = call("POST", "/v1/transfers", a.test, { from_wallet = w.data.id, to_wallet = mine.data.id,
                                                         amount = amount }, { ["Idempotency-Key"] = k })
      assert.equals(200, tr.status, tr.body)
    end
    move(2499, "erase-tr1-" .. c.id)
    assert.equals("customer_has_balance", erase(c.id).data.error.code)
    move(1, "erase-tr2-" .. c.id)
    local ok = erase(c.id)
    assert.equals(200, ok.status, ok.body)
    assert.is_true(ok.data.deleted)
    -- the wallets stay, owned by the erased customer's id (their ledger history is the ledger's)
    local got = call("GET", "/v1/wallets/" .. w.data.id)
    assert.equals(200, got.status)
    assert.equals(c.id, got.data.owner.id)
    -- ... but no money reaches them again (tier 0), and no new wallet is made for the customer
    local fund = call("POST", "/v1/test_helpers/wallets/" .. w.data.id .. "/fund", a.test, { amount = 1 })
    assert.equals(403, fund.status, fund.body)
    assert.equals("tier_limit_exceeded", fund.data.error.code)
    local back = call("POST", "/v1/transfers", a.test,
                      { from_wallet = mine.data.id, to_wallet = w.data.id, amount = 1 })
    assert.equals(403, back.status, back.body)
    assert.equals("tier_limit_exceeded", back.data.error.code)
    local again = call("POST", "/v1/wallets", a.test, { currency = "USD", customer = c.id })
    assert.equals(404, again.status, again.body)
    assert.equals("customer", again.data.error.param)
  end)

  it("another partner and the other mode get 404 and erase nothing; a malformed id is 404", function()
    local c = create(cf.individual())
    for _, key in ipairs({ b.test, b.live, a.live }) do
      local res = erase(c.id, key)
      assert.equals(404, res.status, res.body)
      assert(openapi.check(res.data, "Error"))
      assert.equals("resource_missing", res.data.error.code)
    end
    assert.equals("pending", raw(c.id).state)
    assert.equals(1, found_by("email", c.email))
    assert.equals(404, erase("cus_nope").status)
    assert.equals(404, erase("cus_01m86w64ww8cbm3e3ym33qkdx0").status)
  end)

  it("needs customers:write", function()
    local c = create(cf.individual())
    local reader = fx.key(s.db, a.id, "test", { "customers:read" })
    local res = erase(c.id, reader)
    assert.equals(403, res.status)
    assert(openapi.check(res.data, "Error"))
    assert.equals("pending", raw(c.id).state)
  end)
end)
