-- Webhook endpoints of core over real HTTP, with core's workers running in the web process
-- (NUVION_WORKERS_IN_WEB: the outbox relay, outbox events -> deliveries, the deliveries), the
-- KYC simulator and a receiver app (spec/fixtures/apps/webhook_receiver): a partner onboards a
-- customer and moves wallet money and receives a signed webhook for each step; rotation,
-- replay, validation, partners and modes apart, the SSRF guard outside test mode.
local cf = require "spec.customers_fixture"
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"
local webhooks = require "nuvion.webhooks"
local redis = require "nuvion.redis"
local json = require "nuvion.json"
local nuvion = require "nuvion"

describe("core webhook endpoints", function()
  local s, ptn, other, recv, r

  lazy_setup(function()
    r = assert(redis.connect(assert(os.getenv("NUVION_TEST_REDIS_URL"))))
    recv = helpers.start_server({ app = helpers.apps .. "/webhook_receiver" })
    s = cf.start({ NUVION_WORKERS_IN_WEB = "1", NUVION_WEBHOOKS_ALLOW_PRIVATE = "1",
                   NUVION_CORE_RATE_PER_S = "1000000", NUVION_CORE_RATE_BURST = "1000000" })
    ptn = cf.partner(s.db)
    other = cf.partner(s.db)
  end)

  lazy_teardown(function()
    cf.stop(s)
    if recv then recv:stop() end
  end)

  local function call(method, path, body, key, headers)
    return cf.call(s.port, method, path, key or ptn.test, body, headers)
  end

  local function hook_url(name, mode)
    return "http://127.0.0.1:" .. recv.port .. "/hook/" .. name .. "/" .. (mode or "ok")
  end

  local function new_endpoint(name, events, key)
    local res = call("POST", "/v1/webhook_endpoints", { url = hook_url(name), enabled_events = events or { "*" },
                                                       description = "spec " .. name }, key)
    assert.equals(201, res.status, res.body)
    assert(openapi.check(res.data, "WebhookEndpoint"))
    return res.data
  end

  -- What the receiver got for `name`, decoded; waits until pred(list) holds (or 10 s).
  local function received(name, pred, timeout_ms)
    local deadline = nuvion.monotonic_ms() + (timeout_ms or 10000)
    local out
    repeat
      out = {}
      for i, raw in ipairs(assert(r:call("LRANGE", "whrecv:" .. name, 0, -1))) do
        local m = json.decode(raw)
        m.event = json.decode(m.body)
        out[i] = m
      end
      if pred(out) then return out end
      nuvion.sleep(50)
    until nuvion.monotonic_ms() > deadline
    return out
  end

  local function types_of(list)
    local t = {}
    for _, m in ipairs(list) do t[#t + 1] = m.event.type .. ":" .. tostring(m.event.data.id) end
    return t
  end

  local function has_all(want)
    return function(list)
      local seen = {}
      for _, m in ipairs(list) do seen[m.event.type .. ":" .. tostring(m.event.data.id)] = true end
      for _, w in ipairs(want) do if not seen[w] then return false end end
      return true
    end
  end

  it("delivers a signed webhook for each onboarding and money step", function()
    local name = "steps" .. cf.unique()
    local ep = new_endpoint(name)
    assert.matches("^we_", ep.id)
    assert.matches("^whsec_", ep.secret)
    assert.same({ "*" }, ep.enabled_events)
    assert.is_false(ep.livemode)
    -- shown once: not in a read
    local got = call("GET", "/v1/webhook_endpoints/" .. ep.id)
    assert.equals(200, got.status)
    assert(openapi.check(got.data, "WebhookEndpoint"))
    assert.is_nil(got.data.secret)

    -- onboarding through the KYC sandbox
    local c = call("POST", "/v1/customers", cf.individual({ last_name = "Verified" }))
    assert.equals(201, c.status, c.body)
    local cid = c.data.id
    assert.equals(200, call("POST", "/v1/customers/" .. cid .. "/verify").status)
    assert.equals("verified", cf.wait_state(s.port, ptn.test, cid, "verified").data.state)
    -- wallets, funding and a transfer
    local w1 = call("POST", "/v1/wallets", { currency = "USD", customer = cid })
    assert.equals(200, w1.status, w1.body)
    local w2 = call("POST", "/v1/wallets", { currency = "USD" })
    assert.equals(200, w2.status, w2.body)
    assert.equals(200, call("POST", "/v1/test_helpers/wallets/" .. w1.data.id .. "/fund", { amount = 5000 }).status)
    local tr = call("POST", "/v1/transfers", { from_wallet = w1.data.id, to_wallet = w2.data.id, amount = 1200 },
                    nil, { ["Idempotency-Key"] = "t-" .. name })
    assert.equals(200, tr.status, tr.body)

    local want = { "customer.created:" .. cid, "customer.in_review:" .. cid, "customer.verified:" .. cid,
                   "wallet.created:" .. w1.data.id, "wallet.created:" .. w2.data.id,
                   "wallet.funded:" .. w1.data.id, "transfer.created:" .. tr.data.id }
    local list = received(name, has_all(want))
    assert.is_true(has_all(want)(list), table.concat(types_of(list), " "))
    assert.equals(#want, #list)       -- each event once, nothing of other partners
    for _, m in ipairs(list) do
      assert.is_true(webhooks.verify(m.signature, m.body, { ep.secret }))
      assert.is_nil((webhooks.verify(m.signature, m.body .. " ", { ep.secret })))
      assert.is_nil((webhooks.verify(m.signature, m.body, { "whsec_wrong" })))
      assert.equals(m.event.id, m.event_id)
      assert.equals("event", m.event.object)
      assert.equals(ptn.id, m.event.data.owner_id)
      assert.equals("test", m.event.data.mode)
    end
    local t                               -- deliveries run concurrently: found by type, not place
    for _, m in ipairs(list) do if m.event.type == "transfer.created" then t = m.event end end
    assert.equals(tr.data.id, t.data.id)
    assert.equals(1200, t.data.amount)

    -- the deliveries and their attempts
    local ds = call("GET", "/v1/webhook_deliveries?endpoint=" .. ep.id .. "&limit=100")
    assert.equals(200, ds.status, ds.body)
    assert(openapi.check(ds.data, "WebhookDeliveryList"))
    assert.equals(#want, #ds.data.data)
    for _, d in ipairs(ds.data.data) do
      assert.equals("succeeded", d.status)
      assert.equals(ep.id, d.endpoint)
      assert.equals(1, #d.attempt_list)
      local a = d.attempt_list[1]
      assert.equals(200, a.status_code)
      assert.is_true(a.ok)
      assert.is_true(a.latency_ms >= 0)
      assert.matches("received", a.response_excerpt)
    end
    -- a page of 2, then the rest
    local p1 = call("GET", "/v1/webhook_deliveries?endpoint=" .. ep.id .. "&limit=2")
    assert.equals(2, #p1.data.data)
    assert.is_true(p1.data.has_more)
    local p2 = call("GET", "/v1/webhook_deliveries?endpoint=" .. ep.id .. "&limit=100&starting_after="
                    .. p1.data.data[2].id)
    assert.equals(#want - 2, #p2.data.data)
    assert.is_false(p2.data.has_more)
    local one = call("GET", "/v1/webhook_deliveries/" .. p1.data.data[1].id)
    assert.equals(200, one.status)
    assert(openapi.check(one.data, "WebhookDelivery"))
  end)

  it("delivers customer.updated and customer.deleted, without PII", function()
    local name = "custupd" .. cf.unique()
    local ep = new_endpoint(name, { "customer.updated", "customer.deleted" })
    local body = cf.individual()
    local c = call("POST", "/v1/customers", body)
    assert.equals(201, c.status, c.body)
    local cid = c.data.id
    local up = call("PATCH", "/v1/customers/" .. cid, { email = "new." .. cf.unique() .. "@example.com",
                                                        metadata = { crm = "crm-secret-ref" } })
    assert.equals(200, up.status, up.body)
    assert.equals(200, call("DELETE", "/v1/customers/" .. cid).status)
    local want = { "customer.updated:" .. cid, "customer.deleted:" .. cid }
    local list = received(name, has_all(want))
    assert.is_true(has_all(want)(list), table.concat(types_of(list), " "))
    assert.equals(2, #list)                -- customer.created was not asked for
    for _, m in ipairs(list) do
      assert.is_true(webhooks.verify(m.signature, m.body, { ep.secret }))
      for _, secret in ipairs({ body.email, up.data.email, body.first_name, body.last_name, "crm-secret-ref" }) do
        assert.is_nil(m.body:find(secret, 1, true), secret)
      end
      if m.event.type == "customer.updated" then
        assert.same({ "email", "metadata" }, m.event.data.changed)
      else
        assert.is_true(m.event.data.deleted)
        assert.equals("erased", m.event.data.state)
      end
    end
  end)

  it("only sends the enabled events, and none to a disabled endpoint", function()
    local name = "filter" .. cf.unique()
    local ep = new_endpoint(name, { "wallet.funded" })
    local w = call("POST", "/v1/wallets", { currency = "EUR" })
    assert.equals(200, w.status, w.body)
    assert.equals(200, call("POST", "/v1/test_helpers/wallets/" .. w.data.id .. "/fund", { amount = 7 }).status)
    local list = received(name, has_all({ "wallet.funded:" .. w.data.id }))
    assert.same({ "wallet.funded:" .. w.data.id }, types_of(list))

    local off = call("POST", "/v1/webhook_endpoints/" .. ep.id, { enabled = false })
    assert.equals(200, off.status, off.body)
    assert.is_false(off.data.enabled)
    assert.equals(200, call("POST", "/v1/test_helpers/wallets/" .. w.data.id .. "/fund", { amount = 8 }).status)
    -- a second endpoint that takes everything proves the event went through the workers
    local name2 = "after" .. cf.unique()
    new_endpoint(name2, { "wallet.funded" })
    assert.equals(200, call("POST", "/v1/test_helpers/wallets/" .. w.data.id .. "/fund", { amount = 9 }).status)
    local l2 = received(name2, function(l)
      for _, m in ipairs(l) do if m.event.data.amount == 9 then return true end end
      return false
    end)
    local amounts = {}
    for _, m in ipairs(l2) do amounts[m.event.data.amount] = true end
    assert.is_true(amounts[9])
    assert.equals(1, #received(name, function() return false end, 1500))
  end)

  it("signs with both secrets during a rotation (two v1), then with the new one", function()
    local name = "rotate" .. cf.unique()
    local ep = new_endpoint(name, { "wallet.created" })
    local rot = call("POST", "/v1/webhook_endpoints/" .. ep.id .. "/rotate_secret", { expires_in = 3600 })
    assert.equals(200, rot.status, rot.body)
    assert(openapi.check(rot.data, "WebhookEndpoint"))
    assert.matches("^whsec_", rot.data.secret)
    assert.not_equals(ep.secret, rot.data.secret)
    local w = call("POST", "/v1/wallets", { currency = "USD" })
    local list = received(name, has_all({ "wallet.created:" .. w.data.id }))
    assert.equals(1, #list)
    local sig = list[1].signature
    local _, v1s = sig:gsub("v1=", "")
    assert.equals(2, v1s)
    assert.is_true(webhooks.verify(sig, list[1].body, { rot.data.secret }))
    assert.is_true(webhooks.verify(sig, list[1].body, { ep.secret }))

    -- rotated again with no grace: only the newest signs
    local rot2 = call("POST", "/v1/webhook_endpoints/" .. ep.id .. "/rotate_secret", { expires_in = 0 })
    assert.equals(200, rot2.status, rot2.body)
    local w2 = call("POST", "/v1/wallets", { currency = "USD" })
    list = received(name, has_all({ "wallet.created:" .. w2.data.id }))
    sig = list[2].signature
    local _, n2 = sig:gsub("v1=", "")
    assert.equals(1, n2)
    assert.is_true(webhooks.verify(sig, list[2].body, { rot2.data.secret }))
    assert.is_nil((webhooks.verify(sig, list[2].body, { rot.data.secret, ep.secret })))
  end)

  it("replays a delivery: the same body again, a new delivery, idempotent on its key", function()
    local name = "replay" .. cf.unique()
    local ep = new_endpoint(name, { "wallet.created" })
    local w = call("POST", "/v1/wallets", { currency = "USD" })
    local list = received(name, function(l) return #l >= 1 end)
    assert.equals(1, #list)
    local first = list[1]
    local rep = call("POST", "/v1/webhook_deliveries/" .. first.delivery_id .. "/replay", nil, nil,
                     { ["Idempotency-Key"] = "rp-" .. name })
    assert.equals(200, rep.status, rep.body)
    assert(openapi.check(rep.data, "WebhookDelivery"))
    assert.equals(first.delivery_id, rep.data.replay_of)
    assert.not_equals(first.delivery_id, rep.data.id)
    local again = call("POST", "/v1/webhook_deliveries/" .. first.delivery_id .. "/replay", nil, nil,
                       { ["Idempotency-Key"] = "rp-" .. name })
    assert.equals(200, again.status)
    assert.equals(rep.data.id, again.data.id)
    assert.equals("true", again.headers["idempotent-replayed"])
    list = received(name, function(l) return #l >= 2 end)
    assert.equals(2, #list)
    assert.equals(first.body, list[2].body)
    assert.equals(rep.data.id, list[2].delivery_id)
    assert.equals(w.data.id, list[2].event.data.id)
    assert.is_true(webhooks.verify(list[2].signature, list[2].body, { ep.secret }))
    -- the replay's attempt is recorded
    local deadline = nuvion.monotonic_ms() + 5000
    local d
    repeat
      d = call("GET", "/v1/webhook_deliveries/" .. rep.data.id)
      if d.data.status == "succeeded" then break end
      nuvion.sleep(50)
    until nuvion.monotonic_ms() > deadline
    assert.equals("succeeded", d.data.status)
    assert.equals(200, d.data.attempt_list[1].status_code)
  end)

  it("lists, updates and deletes endpoints; answers validation errors per field", function()
    local a = new_endpoint("crud" .. cf.unique(), { "customer.verified" })
    local b = new_endpoint("crud" .. cf.unique(), { "customer.verified" })
    local lst = call("GET", "/v1/webhook_endpoints?limit=1")
    assert.equals(200, lst.status, lst.body)
    assert(openapi.check(lst.data, "List"))
    assert.equals(b.id, lst.data.data[1].id)
    assert.is_true(lst.data.has_more)
    local nxt = call("GET", "/v1/webhook_endpoints?limit=1&starting_after=" .. b.id)
    assert.equals(a.id, nxt.data.data[1].id)

    local up = call("POST", "/v1/webhook_endpoints/" .. a.id,
                    { url = hook_url("moved"), enabled_events = { "transfer.created", "wallet.funded" },
                      description = "moved" }, nil, { ["Idempotency-Key"] = "up-" .. a.id })
    assert.equals(200, up.status, up.body)
    assert(openapi.check(up.data, "WebhookEndpoint"))
    assert.equals(hook_url("moved"), up.data.url)
    assert.same({ "transfer.created", "wallet.funded" }, up.data.enabled_events)
    local up2 = call("POST", "/v1/webhook_endpoints/" .. a.id,
                     { url = hook_url("moved"), enabled_events = { "transfer.created", "wallet.funded" },
                       description = "moved" }, nil, { ["Idempotency-Key"] = "up-" .. a.id })
    assert.equals("true", up2.headers["idempotent-replayed"])

    local function bad(path, body, status, code, param)
      local res = call("POST", path, body)
      assert.equals(status, res.status, res.body)
      assert(openapi.check(res.data, "Error"))
      assert.equals(code, res.data.error.code, res.body)
      assert.equals(param, res.data.error.param, res.body)
    end
    local E = "/v1/webhook_endpoints"
    bad(E, { enabled_events = { "*" } }, 400, "parameter_missing", "url")
    bad(E, { url = hook_url("x") }, 400, "parameter_missing", "enabled_events")
    bad(E, { url = hook_url("x"), enabled_events = {} }, 400, "parameter_invalid", "enabled_events")
    bad(E, { url = hook_url("x"), enabled_events = { "Not An Event" } }, 400, "parameter_invalid",
        "enabled_events[0]")
    bad(E, { url = hook_url("x"), enabled_events = { "wallet" } }, 400, "invalid_event_types", "enabled_events")
    bad(E, { url = "ftp://example.com/x", enabled_events = { "*" } }, 400, "invalid_url", "url")
    bad(E, { url = "http://user:pw@127.0.0.1:1/x", enabled_events = { "*" } }, 400, "invalid_url", "url")
    bad(E, { url = hook_url("x"), enabled_events = { "*" }, secret = "mine" }, 400, "parameter_unknown", "secret")
    bad(E, { url = hook_url("x"), enabled_events = { "*" }, description = string.rep("d", 501) }, 400,
        "parameter_invalid", "description")
    bad(E .. "/" .. a.id, { enabled = "yes" }, 400, "parameter_invalid", "enabled")
    bad(E .. "/" .. a.id .. "/rotate_secret", { expires_in = -1 }, 400, "parameter_invalid", "expires_in")
    bad(E .. "/" .. a.id .. "/rotate_secret", { expires_in = 8 * 86400 }, 400, "parameter_invalid", "expires_in")
    local miss = call("GET", "/v1/webhook_deliveries")
    assert.equals(400, miss.status)
    assert.equals("endpoint", miss.data.error.param)
    local badlim = call("GET", "/v1/webhook_endpoints?limit=0")
    assert.equals(400, badlim.status)
    assert.equals("limit", badlim.data.error.param)
    -- nothing was stored by the refused creations
    local n = assert(s.db:query("SELECT count(*)::int AS n FROM webhook_endpoints "
      .. "WHERE owner_id = $1 AND deleted_at IS NULL", ptn.id .. ":test"))[1].n
    assert.equals(#call("GET", "/v1/webhook_endpoints?limit=100").data.data, n)

    local del = call("DELETE", "/v1/webhook_endpoints/" .. a.id)
    assert.equals(200, del.status, del.body)
    assert.is_true(del.data.deleted)
    assert.equals(404, call("GET", "/v1/webhook_endpoints/" .. a.id).status)
    assert.equals(404, call("DELETE", "/v1/webhook_endpoints/" .. a.id).status)
    -- audited
    local aud = assert(s.db:query("SELECT action FROM api_audit_log WHERE object_id = $1 ORDER BY id", a.id))
    local actions = {}
    for i, row in ipairs(aud) do actions[i] = row.action end
    assert.same({ "webhook_endpoint.create", "webhook_endpoint.update", "webhook_endpoint.delete" }, actions)
  end)

  it("pages endpoints and deliveries both ways; each delivery has its own attempts", function()
    local q = cf.partner(s.db)            -- a partner of its own: its lists hold this test's objects only
    local function get(path) return call("GET", path, nil, q.test) end
    local function ids_of(res)
      local t = {}
      for i, o in ipairs(res.data.data) do t[i] = o.id end
      return t
    end
    local function page(path, want, more)
      local res = get(path)
      assert.equals(200, res.status, res.body)
      assert(openapi.check(res.data, "List"))
      assert.same(want, ids_of(res), path)
      assert.equals(more, res.data.has_more, path)
      return res
    end
    local e = {}
    for i = 1, 5 do e[i] = new_endpoint("pg" .. cf.unique(), { "wallet.created" }, q.test).id end
    local E = "/v1/webhook_endpoints?limit="
    page(E .. "2", { e[5], e[4] }, true)
    page(E .. "2&starting_after=" .. e[4], { e[3], e[2] }, true)
    page(E .. "2&starting_after=" .. e[2], { e[1] }, false)
    page(E .. "2&ending_before=" .. e[1], { e[3], e[2] }, true)
    page(E .. "2&ending_before=" .. e[3], { e[5], e[4] }, false)
    page(E .. "10&ending_before=" .. e[4], { e[5] }, false)
    page(E .. "10&ending_before=" .. e[5], {}, false)
    for _, bad in ipairs({ { "?starting_after=" .. e[1] .. "&ending_before=" .. e[2], "ending_before" },
                           { "?ending_before=cus_01m86w64ww8cbm3e3ym33qkdx0", "ending_before" },
                           { "?ending_before=we_zz", "ending_before" },
                           { "?limit=101", "limit" } }) do
      local res = get("/v1/webhook_endpoints" .. bad[1])
      assert.equals(400, res.status, res.body)
      assert(openapi.check(res.data, "Error"))
      assert.equals("parameter_invalid", res.data.error.code)
      assert.equals(bad[2], res.data.error.param)
    end

    -- 5 wallets: 5 deliveries to each endpoint
    for _ = 1, 5 do assert.equals(200, call("POST", "/v1/wallets", { currency = "USD" }, q.test).status) end
    local D = "/v1/webhook_deliveries?endpoint=" .. e[5] .. "&limit="
    local all
    local deadline = nuvion.monotonic_ms() + 10000
    repeat
      all = get(D .. "100")
      local done = 0
      for _, d in ipairs(all.data.data) do if d.status == "succeeded" then done = done + 1 end end
      if done == 5 then break end
      nuvion.sleep(50)
    until nuvion.monotonic_ms() > deadline
    assert(openapi.check(all.data, "WebhookDeliveryList"))
    local d = ids_of(all)                 -- newest first
    assert.equals(5, #d)
    page(D .. "2", { d[1], d[2] }, true)
    page(D .. "2&starting_after=" .. d[2], { d[3], d[4] }, true)
    page(D .. "2&starting_after=" .. d[4], { d[5] }, false)
    page(D .. "2&ending_before=" .. d[5], { d[3], d[4] }, true)
    page(D .. "2&ending_before=" .. d[3], { d[1], d[2] }, false)
    page(D .. "10&ending_before=" .. d[1], {}, false)
    local both = get(D .. "2&starting_after=" .. d[1] .. "&ending_before=" .. d[2])
    assert.equals(400, both.status)
    assert.equals("ending_before", both.data.error.param)
    local badc = get(D .. "2&ending_before=" .. e[1])
    assert.equals(400, badc.status)
    assert.equals("ending_before", badc.data.error.param)

    -- a second attempt on the middle delivery: the list gives it both, and its neighbours theirs
    assert(s.db:query("INSERT INTO webhook_attempts (delivery_id, attempt, started_at, latency_ms, status_code, "
      .. "ok, error) VALUES ($1, 2, now(), 7, 500, false, 'spec')", d[3]))
    local res = page(D .. "3&ending_before=" .. d[5], { d[2], d[3], d[4] }, true)
    assert(openapi.check(res.data, "WebhookDeliveryList"))
    local counts = {}
    for i, x in ipairs(res.data.data) do
      counts[i] = #x.attempt_list
      for j, a in ipairs(x.attempt_list) do assert.equals(j, a.attempt) end
    end
    assert.same({ 1, 2, 1 }, counts)
    assert.equals(500, res.data.data[2].attempt_list[2].status_code)
    assert.equals(200, res.data.data[2].attempt_list[1].status_code)
    assert.same(res.data.data[2].attempt_list, get("/v1/webhook_deliveries/" .. d[3]).data.attempt_list)
  end)

  it("is 404 for another partner and for the other mode, on every route", function()
    local name = "iso" .. cf.unique()
    local ep = new_endpoint(name, { "wallet.created" })
    call("POST", "/v1/wallets", { currency = "USD" })
    local list = received(name, function(l) return #l >= 1 end)
    local did = list[1].delivery_id
    for _, key in ipairs({ other.test, other.live, ptn.live }) do
      local function is404(method, path, body)
        local res = call(method, path, body, key)
        assert.equals(404, res.status, method .. " " .. path .. ": " .. res.body)
        assert.equals("resource_missing", res.data.error.code)
      end
      is404("GET", "/v1/webhook_endpoints/" .. ep.id)
      is404("POST", "/v1/webhook_endpoints/" .. ep.id, { enabled = false })
      is404("POST", "/v1/webhook_endpoints/" .. ep.id .. "/rotate_secret", {})
      is404("DELETE", "/v1/webhook_endpoints/" .. ep.id)
      is404("GET", "/v1/webhook_deliveries?endpoint=" .. ep.id)
      is404("GET", "/v1/webhook_deliveries/" .. did)
      is404("POST", "/v1/webhook_deliveries/" .. did .. "/replay")
      local l = call("GET", "/v1/webhook_endpoints?limit=100", nil, key)
      assert.equals(200, l.status)
      for _, e in ipairs(l.data.data) do assert.not_equals(ep.id, e.id) end
    end
    -- still there, still enabled
    local got = call("GET", "/v1/webhook_endpoints/" .. ep.id)
    assert.equals(200, got.status)
    assert.is_true(got.data.enabled)
    -- the other partner's events never reach this endpoint
    local w = call("POST", "/v1/wallets", { currency = "USD" }, other.test)
    assert.equals(200, w.status)
    local name2 = "iso2" .. cf.unique()
    new_endpoint(name2, { "wallet.created" }, other.test)
    local w2 = call("POST", "/v1/wallets", { currency = "USD" }, other.test)
    received(name2, has_all({ "wallet.created:" .. w2.data.id }))
    assert.equals(1, #received(name, function() return false end, 1500))
  end)

  it("allows private addresses only when asked and in development or test", function()
    local auth_config = require "nuvion.auth.config"
    local hooks = assert(loadfile(helpers.root .. "/lua/services/core/hooks.lua"))()
    local cases = {
      { "test", "1", true }, { "development", "1", true }, { "test", "0", false }, { "test", nil, false },
      { "production", "1", false }, { "", "1", false },
    }
    local ok, err = pcall(function()
      for _, c in ipairs(cases) do
        auth_config.reset()
        auth_config.configure({ NUVION_ENV = c[1], NUVION_WEBHOOKS_ALLOW_PRIVATE = c[2] or "" })
        assert.equals(c[3], hooks.allow_private(), tostring(c[1]) .. " " .. tostring(c[2]))
      end
    end)
    auth_config.reset()
    assert(ok, err)
  end)

  it("refuses private and plain http URLs outside test mode (SSRF guard)", function()
    local strict = helpers.start_server({ service = "core", env = { NUVION_ENV = "test",
      NUVION_WEBHOOKS_ALLOW_PRIVATE = "0" } })
    local ok, err = pcall(function()
      for _, case in ipairs({
        { "http://example.com/hooks", "invalid_url" },
        { "https://127.0.0.1/hooks", "url_not_allowed" },
        { "https://169.254.169.254/latest/meta-data", "url_not_allowed" },
        { "https://10.0.0.7/x", "url_not_allowed" },
        { "https://[::1]/x", "url_not_allowed" },
        { "https://localhost/x", "url_not_allowed" },
      }) do
        local res = cf.call(strict.port, "POST", "/v1/webhook_endpoints", ptn.test,
                            { url = case[1], enabled_events = { "*" } })
        assert.equals(400, res.status, case[1] .. ": " .. res.body)
        assert.equals(case[2], res.data.error.code, case[1] .. ": " .. res.body)
        assert.equals("url", res.data.error.param)
      end
    end)
    strict:stop()
    assert(ok, err)
  end)
end)
