-- The KYC provider's callbacks (push) to core, POST /v1/providers/kyc/events, through real HTTP
-- against core and the KYC simulator (lua/sandbox/kyc): results arriving with the poller idle
-- (NUVION_KYC_POLL_MS at its maximum), signatures refused (missing, wrong, stale, tampered) with
-- nothing changed, replays and duplicates applied once, the callback's own result not trusted,
-- callbacks racing the poller, and the poller still deciding when callbacks cannot get through.
local cf = require "spec.customers_fixture"
local fx = require "spec.auth_fixture"
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"
local kyc = require "nuvion.providers.kyc"
local ids = require "nuvion.api.ids"
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"


local PATH = "/v1/providers/kyc/events"
local LONG_POLL_MS = "600000"

local free_port = helpers.free_port


local function start_sim(env)
  local e = { REDIS_URL = assert(os.getenv("NUVION_TEST_REDIS_URL")), KYC_SIM_PROCESSING_MS = "100",
              KYC_SIM_STALL_MS = tostring(cf.STALL_MS) }
  for k, v in pairs(env or {}) do e[k] = v end
  return helpers.start_server({ app = helpers.root .. "/lua/sandbox/kyc", env = e })
end

-- Core against simulator sim. opts.poll_ms; opts.callback: "self" (core's own route, on a port
-- chosen here so that the URL is known before it starts), a URL, or nil (no callbacks);
-- opts.env: more of core's environment.
local function start_core(sim, opts)
  local last
  for _ = 1, 5 do
    local port = free_port()
    local env = { NUVION_ENV = "test", NUVION_KYC_URL = "http://127.0.0.1:" .. sim.port,
                  NUVION_KYC_POLL_MS = opts.poll_ms or LONG_POLL_MS,
                  NUVION_KYC_TIMEOUT_MS = tostring(cf.KYC_TIMEOUT_MS), PORT = tostring(port) }
    if opts.callback == "self" then
      env.NUVION_KYC_CALLBACK_URL = "http://127.0.0.1:" .. port .. PATH
    elseif opts.callback then
      env.NUVION_KYC_CALLBACK_URL = opts.callback
    end
    for k, v in pairs(opts.env or {}) do env[k] = v end
    local ok, core = pcall(helpers.start_server, { service = "core", env = env })
    if ok then return core end
    last = core                                 -- the port was taken meanwhile: another one
  end
  error(last)
end

local function stop(...)
  for i = 1, select("#", ...) do
    local srv = select(i, ...)
    if srv then srv:stop() end
  end
end

-- "t=<ts>,v1=<hex>", computed here (not with nuvion.webhooks): the provider's scheme as documented.
local function sign(ts, body, secret)
  return "t=" .. ts .. ",v1=" .. crypto.hex_encode(crypto.hmac_sha256(secret or kyc.DEV_WEBHOOK_SECRET,
                                                                      ts .. "." .. body))
end

local function event(check_id, reference, status, etype)
  local e = { id = "evt_" .. cf.unique(8), object = "event", type = etype or "check.completed",
    created = math.floor(nuvion.now()), data = { check = { id = check_id, reference = reference,
    status = status or "clear", result_codes = json.array({}) } } }
  assert(openapi.check(e, "KycEvent"))
  return assert(json.encode(e))
end

-- POSTs to core's callback route; every answer checked against docs/openapi.yaml.
local function post(port, body, signature)
  local headers = { ["Content-Type"] = "application/json" }
  if signature then headers["Kyc-Signature"] = signature end
  local res = assert(helpers.request(port, { method = "POST", path = PATH, headers = headers, body = body }))
  res.data = json.decode(res.body)
  assert(openapi.check(res.data, res.status == 200 and "KycEventReceipt" or "Error"))
  return res
end

local function now() return math.floor(nuvion.now()) end

local function history(db, id)
  local rows = assert(db:query("SELECT coalesce(from_state, '-') || '>' || to_state AS h FROM customer_state_changes "
    .. "WHERE customer_id = $1 ORDER BY id", id))
  local out = {}
  for i, r in ipairs(rows) do out[i] = r.h end
  return table.concat(out, " ")
end

local function verification(db, customer_id)
  local rows = assert(db:query("SELECT id, status, provider_ref FROM customer_verifications WHERE customer_id = $1 "
    .. "ORDER BY id DESC LIMIT 1", customer_id))
  return rows[1]
end

-- A customer made and sent for verification through core at port; its verification row.
local function in_review(port, key, over)
  local res = cf.call(port, "POST", "/v1/customers", key, cf.individual(over))
  assert.equals(201, res.status, res.body)
  local id = res.data.id
  local v = cf.call(port, "POST", "/v1/customers/" .. id .. "/verify", key)
  assert.equals(200, v.status, v.body)
  assert.equals("in_review", v.data.state)
  return id, v.data.verification
end

-- Waits until check_id is final at the simulator.
local function settled(client, check_id)
  local deadline = nuvion.monotonic_ms() + 3000
  repeat
    local c = assert(client:fetch(check_id))
    if c.result then return c end
    nuvion.sleep(20)
  until nuvion.monotonic_ms() > deadline
  error("check " .. check_id .. " never settled")
end

describe("KYC callbacks, the poller idle", function()
  -- core A takes callbacks (its own URL); core B sends none (its checks are settled by the
  -- callbacks this spec signs itself). Both poll every 600 s: only callbacks decide here.
  local sim, a, b, db, ptn, client

  lazy_setup(function()
    sim = start_sim({ KYC_SIM_PROCESSING_MS = "400" })
    a = start_core(sim, { callback = "self" })
    b = start_core(sim, {})
    db = fx.db()
    ptn = cf.partner(db)
    client = kyc.new({ url = "http://127.0.0.1:" .. sim.port, api_key = kyc.DEV_API_KEY, timeout_ms = 2000 })
  end)

  lazy_teardown(function()
    stop(a, b, sim)
  end)

  it("a verified identity is verified through the callback within a second or two", function()
    local t0 = nuvion.monotonic_ms()
    local id, v = in_review(a.port, ptn.test, { last_name = "Verified" })
    assert.equals("submitted", v.status)
    local res = cf.wait_state(a.port, ptn.test, id, "verified", 4000)
    assert.equals("verified", res.data.state, res.body)
    assert.is_true(nuvion.monotonic_ms() - t0 < 4000)
    assert.equals(1, res.data.tier)
    assert.equals("kyc_verified", res.data.state_changes[3].reason)
    assert.equals("->pending pending>in_review in_review>verified", history(db, id))
    assert.same({ "customer.created", "customer.in_review", "customer.verified" }, (cf.events(db, id)))
    local row = verification(db, id)
    assert.equals("verified", row.status)
    -- the simulator delivered it, core applied it
    assert.is_table(sim:wait_log({ msg = "kyc callback delivered", check = row.provider_ref }, 2000))
    assert.is_table(a:wait_log({ msg = "kyc callback", check = row.provider_ref, outcome = "applied" }, 2000))
  end)

  it("rejected and action_required arrive by callback too, and documents after them", function()
    local r = in_review(a.port, ptn.test, { id_document = { type = "passport", number = "P6661111" } })
    local n = in_review(a.port, ptn.test, { id_document = { type = "passport", number = "P6662222" } })
    local rej = cf.wait_state(a.port, ptn.test, r, "rejected", 4000)
    assert.equals("rejected", rej.data.state, rej.body)
    assert.equals("kyc_rejected:document_invalid", rej.data.state_changes[3].reason)
    local ar = cf.wait_state(a.port, ptn.test, n, "action_required", 4000)
    assert.equals("action_required", ar.data.state, ar.body)
    local doc = cf.call(a.port, "POST", "/v1/customers/" .. n .. "/documents", ptn.test,
                        { type = "passport", number = "P6670000" })
    assert.equals(200, doc.status, doc.body)
    local done = cf.wait_state(a.port, ptn.test, n, "verified", 4000)
    assert.equals("verified", done.data.state, done.body)
    assert.equals("->pending pending>in_review in_review>action_required action_required>in_review "
      .. "in_review>verified", history(db, n))
  end)

  it("a missing, wrong, tampered, stale or future signature is 401 and changes nothing", function()
    local id = in_review(b.port, ptn.test)
    local v = verification(db, id)
    assert.equals("submitted", v.status)
    settled(client, v.provider_ref)
    local body = event(v.provider_ref, v.id)
    local before_events = #(cf.events(db, id))
    local cases = {
      { "missing header", nil },
      { "empty header", "" },
      { "malformed", "v1=abc" },
      { "wrong secret", sign(now(), body, "not_the_secret_of_this_provider") },
      { "signature of another body", sign(now(), event(v.provider_ref, v.id)) },
      { "another timestamp than signed", "t=" .. (now() - 1) .. "," .. sign(now(), body):match("v1=%x+") },
      { "stale: 301 s old", sign(now() - 301, body) },
      { "stale: an hour old", sign(now() - 3600, body) },
      { "from the future: 10 minutes ahead", sign(now() + 600, body) },
    }
    for _, c in ipairs(cases) do
      local res = post(a.port, body, c[2])
      assert.equals(401, res.status, c[1] .. ": " .. res.body)
      assert.equals("signature_invalid", res.data.error.code, c[1])
      assert.equals("authentication_error", res.data.error.type, c[1])
    end
    -- nothing moved
    local got = cf.call(a.port, "GET", "/v1/customers/" .. id, ptn.test)
    assert.equals("in_review", got.data.state)
    assert.equals("->pending pending>in_review", history(db, id))
    assert.equals(before_events, #(cf.events(db, id)))
    assert.equals("submitted", verification(db, id).status)
    -- and the same body, signed right (4 minutes ago: within the tolerance), is applied
    local ok = post(a.port, body, sign(now() - 240, body))
    assert.equals(200, ok.status, ok.body)
    assert.same({ received = true, outcome = "applied" }, ok.data)
    assert.equals("verified", cf.call(a.port, "GET", "/v1/customers/" .. id, ptn.test).data.state)
  end)

  it("a replayed callback and concurrent duplicates apply once", function()
    local id = in_review(b.port, ptn.test)
    local v = verification(db, id)
    settled(client, v.provider_ref)
    local body = event(v.provider_ref, v.id)
    local sig = sign(now(), body)
    local outcomes = {}
    helpers.concurrently(8, function(i)
      local res = post(a.port, body, sig)
      outcomes[i] = res.status .. ":" .. tostring(res.data and res.data.outcome)
    end, 10000)
    table.sort(outcomes)
    assert.same({ "200:applied", "200:duplicate", "200:duplicate", "200:duplicate", "200:duplicate",
                  "200:duplicate", "200:duplicate", "200:duplicate" }, outcomes)
    -- the very same request again, later: a replay
    local again = post(a.port, body, sig)
    assert.equals(200, again.status, again.body)
    assert.equals("duplicate", again.data.outcome)
    assert.equals("->pending pending>in_review in_review>verified", history(db, id))
    assert.same({ "customer.created", "customer.in_review", "customer.verified" }, (cf.events(db, id)))
  end)

  it("the callback's own result is not trusted: the provider's answer is applied", function()
    local id = in_review(b.port, ptn.test, { id_document = { type = "passport", number = "P7771111" } })
    local v = verification(db, id)
    settled(client, v.provider_ref)
    local body = event(v.provider_ref, v.id, "clear")          -- says clear; the provider says rejected
    local res = post(a.port, body, sign(now(), body))
    assert.equals(200, res.status, res.body)
    assert.equals("applied", res.data.outcome)
    local got = cf.call(a.port, "GET", "/v1/customers/" .. id, ptn.test)
    assert.equals("rejected", got.data.state)
    assert.equals(0, got.data.tier)
  end)

  it("an unknown check or a check of another verification is 200 and does nothing", function()
    local id = in_review(b.port, ptn.test)
    local v = verification(db, id)
    settled(client, v.provider_ref)
    local other_id = in_review(b.port, ptn.test)
    local other = verification(db, other_id)
    settled(client, other.provider_ref)
    local cases = {
      { "no such verification", event(v.provider_ref, ids.new("kyc")) },
      { "no such check", event("chk_" .. cf.unique(12), v.id) },
      { "another verification's check", event(other.provider_ref, v.id) },
    }
    for _, c in ipairs(cases) do
      local res = post(a.port, c[2], sign(now(), c[2]))
      assert.equals(200, res.status, c[1] .. ": " .. res.body)
      assert.same({ received = true, outcome = "unknown" }, res.data, c[1])
    end
    assert.equals("->pending pending>in_review", history(db, id))
    assert.equals("->pending pending>in_review", history(db, other_id))
    assert.equals("submitted", verification(db, id).status)
    -- another event type is acknowledged and ignored; a signed body that is no event is 400
    local ping = event(v.provider_ref, v.id, nil, "check.started")
    local pres = post(a.port, ping, sign(now(), ping))
    assert.equals(200, pres.status)
    assert.equals("ignored", pres.data.outcome)
    for _, bad in ipairs({ "[]", "not json", '{"type":"check.completed"}',
                           '{"type":"check.completed","data":{"check":{"id":"chk_1","reference":"x"}}}' }) do
      local res = post(a.port, bad, sign(now(), bad))
      assert.equals(400, res.status, bad .. ": " .. res.body)
      assert.equals("invalid_event", res.data.error.code)
    end
    assert.equals("->pending pending>in_review", history(db, id))
  end)

  it("a callback for a check the provider's API does not show completed yet is 503 (sent again)", function()
    local id = in_review(b.port, ptn.test)                   -- its check is processing for 400 ms
    local v = verification(db, id)
    local body = event(v.provider_ref, v.id)
    local res = post(a.port, body, sign(now(), body))
    assert.equals(503, res.status, res.body)
    assert.equals("kyc_result_not_ready", res.data.error.code)
    assert.equals("->pending pending>in_review", history(db, id))
    settled(client, v.provider_ref)
    local again = post(a.port, body, sign(now(), body))     -- the provider's retry
    assert.equals(200, again.status, again.body)
    assert.equals("applied", again.data.outcome)
    assert.equals("->pending pending>in_review in_review>verified", history(db, id))
  end)

  it("a callback that comes before core recorded the submission (it timed out) is applied", function()
    -- 3333: the simulator holds the first submission past core's client timeout; the check is
    -- made, and called back, afterwards: the verification is still `submitting`, no check id
    local id, v = in_review(a.port, ptn.test, { id_document = { type = "passport", number = "P8883333" } })
    assert.equals("submitting", v.status)
    local res = cf.wait_state(a.port, ptn.test, id, "verified", cf.STALL_MS + 4000)
    assert.equals("verified", res.data.state, res.body)
    local row = verification(db, id)
    assert.equals("verified", row.status)
    assert.matches("^chk_", row.provider_ref)
    assert.equals("->pending pending>in_review in_review>verified", history(db, id))
  end)
end)

describe("the simulator's callback URL", function()
  local sim, client

  lazy_setup(function()
    sim = start_sim()
    client = kyc.new({ url = "http://127.0.0.1:" .. sim.port, api_key = kyc.DEV_API_KEY, timeout_ms = 2000 })
  end)

  lazy_teardown(function()
    stop(sim)
  end)

  it("is loopback http only: anything else is refused, no check made", function()
    for _, url in ipairs({ "http://example.com/hook", "https://127.0.0.1:1/x", "http://10.0.0.1:80/x",
                           "http://127.0.0.1.example.com:80/x", "ftp://127.0.0.1:21/x", 42,
                           "http://127.0.0.1:80/" .. string.rep("a", 600) }) do
      local ref = "ref_" .. cf.unique(6)
      local c, err = client:submit({ reference = ref, kind = "individual", last_name = "Verified",
                                     document = { type = "passport", number = "P0000" }, callback_url = url })
      assert.is_nil(c, tostring(url))
      assert.equals("refused", err.code)
    end
    local ok = assert(client:submit({ reference = "ref_" .. cf.unique(6), kind = "individual", last_name = "Verified",
      document = { type = "passport", number = "P0000" }, callback_url = "http://localhost:9/hook" }))
    assert.matches("^chk_", ok.id)
  end)
end)

describe("KYC callbacks racing the poller", function()
  local sim, core, db, ptn

  lazy_setup(function()
    sim = start_sim()
    core = start_core(sim, { callback = "self", poll_ms = "10" })
    db = fx.db()
    ptn = cf.partner(db)
  end)

  lazy_teardown(function()
    stop(core, sim)
  end)

  it("each result is applied once, whoever comes first", function()
    local N = 10
    local customers = {}
    helpers.concurrently(N, function(i)
      customers[i] = in_review(core.port, ptn.test)
    end, 20000)
    -- more callbacks of our own, racing the simulator's and the poller (every 10 ms)
    helpers.concurrently(N, function(i)
      local v
      local deadline = nuvion.monotonic_ms() + 3000
      repeat
        v = verification(db, customers[i])
        if not v.provider_ref then nuvion.sleep(5) end
      until v.provider_ref or nuvion.monotonic_ms() > deadline
      local body = event(v.provider_ref, v.id)
      for _ = 1, 20 do
        post(core.port, body, sign(now(), body))
        nuvion.sleep(10)
      end
    end, 20000)
    for i = 1, N do
      local id = customers[i]
      local res = cf.wait_state(core.port, ptn.test, id, "verified", 4000)
      assert.equals("verified", res.data.state, res.body)
      assert.equals("->pending pending>in_review in_review>verified", history(db, id))
      assert.same({ "customer.created", "customer.in_review", "customer.verified" }, (cf.events(db, id)))
    end
  end)
end)

describe("KYC callbacks that do not get through", function()
  local sim, closed, wrong, db, ptn

  lazy_setup(function()
    sim = start_sim({ KYC_SIM_CALLBACK_ATTEMPTS = "3", KYC_SIM_CALLBACK_RETRY_MS = "50" })
    -- callbacks to a port nobody listens on; and to a core whose secret is not the provider's
    closed = start_core(sim, { callback = "http://127.0.0.1:" .. free_port() .. PATH, poll_ms = "100" })
    wrong = start_core(sim, { callback = "self", poll_ms = "100",
                              env = { NUVION_KYC_WEBHOOK_SECRET = "another secret, not the provider's one" } })
    db = fx.db()
    ptn = cf.partner(db)
  end)

  lazy_teardown(function()
    stop(closed, wrong, sim)
  end)

  local function attempts(check_id)
    local failed = sim:logs({ msg = "kyc callback failed", check = check_id })
    local delivered = sim:logs({ msg = "kyc callback delivered", check = check_id })
    return #failed, #delivered, failed
  end

  it("an unreachable callback URL: tried 3 times, the poller verifies the customer", function()
    local id = in_review(closed.port, ptn.test)
    local res = cf.wait_state(closed.port, ptn.test, id, "verified", 5000)
    assert.equals("verified", res.data.state, res.body)
    local v = verification(db, id)
    assert.is_table(sim:wait_log({ msg = "kyc callback failed", check = v.provider_ref, attempt = 3 }, 3000))
    nuvion.sleep(300)                                       -- no fourth attempt
    local failed, delivered, lines = attempts(v.provider_ref)
    assert.equals(3, failed)
    assert.equals(0, delivered)
    assert.is_nil(lines[1].status)                          -- no answer at all
    assert.equals("->pending pending>in_review in_review>verified", history(db, id))
  end)

  it("a callback refused (401: another secret) is retried, bounded, and changes nothing", function()
    local id = in_review(wrong.port, ptn.test)
    local v = verification(db, id)
    assert.is_table(sim:wait_log({ msg = "kyc callback failed", check = v.provider_ref, attempt = 3 }, 3000))
    nuvion.sleep(300)
    local failed, delivered, lines = attempts(v.provider_ref)
    assert.equals(3, failed)
    assert.equals(0, delivered)
    assert.equals(401, lines[1].status)
    assert.is_table(wrong:wait_log({ msg = "kyc callback refused", reason = "signature_mismatch" }, 1000))
    local res = cf.wait_state(wrong.port, ptn.test, id, "verified", 5000)   -- the poller
    assert.equals("verified", res.data.state, res.body)
    assert.equals("->pending pending>in_review in_review>verified", history(db, id))
  end)
end)
