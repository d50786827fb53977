-- nuvion.webhooks against core's Postgres, nuvion.queue on Redis and a receiving server
-- (spec/fixtures/apps/webhook_receiver): signatures, endpoints, deliveries with retries and
-- backoff on a compressed schedule, the failure streak, replay, the SSRF guard (docs/webhooks.md).
local helpers = require "spec.helpers"
local nuvion = require "nuvion"
local pg = require "nuvion.pg"
local redis = require "nuvion.redis"
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local queue = require "nuvion.queue"
local ids = require "nuvion.ids"
local webhooks = require "nuvion.webhooks"

local db = pg.pool(assert(os.getenv("NUVION_CORE_DATABASE_URL"), "NUVION_CORE_DATABASE_URL"), { max = 8 })
local redis_url = assert(os.getenv("NUVION_TEST_REDIS_URL"))
local r = assert(redis.connect(redis_url))
local keyring = assert(crypto.keyring({ k1 = crypto.random(32) }, "k1"))

-- Compressed: attempts 1 at once, then 150, 300, 600 ms later.
local function schedule(over)
  local s = { attempts = 4, first_retry_ms = 150, timeout_ms = 2000, response_excerpt_bytes = 64,
              disable_after = { failures = 100, for_ms = 0 } }
  for k, v in pairs(over or {}) do s[k] = v end
  return s
end

local function wait_until(fn, ms, what)
  local deadline = nuvion.monotonic_ms() + (ms or 10000)
  while nuvion.monotonic_ms() < deadline do
    local v = fn()
    if v then return v end
    nuvion.sleep(20)
  end
  error("timed out waiting for " .. (what or "a condition"), 2)
end

local function received(key)
  local out = {}
  for i, s in ipairs(r:call("LRANGE", "whrecv:" .. key, 0, -1)) do out[i] = json.decode(s) end
  return out
end

describe("nuvion.webhooks", function()
  local srv, base

  setup(function()
    srv = helpers.start_server({ app = helpers.apps .. "/webhook_receiver" })
    base = "http://127.0.0.1:" .. srv.port
  end)

  teardown(function()
    if srv then srv:stop() end
  end)

  -- A test-mode instance on its own queue, and a worker for it; stopped by the returned function.
  local function setup_wh(over, with_worker)
    local qname = "webhooks_spec_" .. ids.new("q")
    local q = queue.new(qname, { redis = r })
    local wh = webhooks.new({ db = db, keyring = keyring, queue = q, schedule = schedule(over), allow_private = true })
    local w
    if with_worker ~= false then
      w = queue.worker(qname, wh:job_handler(), { redis = r, concurrency = 10, drain_delay = 1 })
    end
    return wh, q, function() if w then w:close(2000) end end
  end

  local function endpoint(wh, owner, mode, types)
    local key = ids.new("k")
    local ep = assert(wh:create_endpoint(owner, { url = base .. "/hook/" .. key .. "/" .. mode,
                                                  event_types = types or { "payout.paid" } }))
    return ep, key
  end

  local function event(owner, t, data)
    return { id = ids.new("evt"), type = t or "payout.paid", owner_id = owner, data = data or { amount = 100 } }
  end

  local function delivery(wh, owner, id, status)
    return wait_until(function()
      local d = assert(wh:get_delivery(owner, id))
      return d.status == status and d
    end, 10000, "delivery " .. id .. " to be " .. status)
  end

  describe("signatures", function()
    local secret, body, ts = "whsec_test", '{"id":"evt_1","type":"payout.paid"}', 1700000000

    it("signs t.body with HMAC-SHA256 in the Nuvion-Signature format", function()
      local want = crypto.hex_encode(crypto.hmac_sha256(secret, "1700000000." .. body))
      assert.equals("t=1700000000,v1=" .. want, webhooks.sign(secret, ts, body))
      assert.is_true(webhooks.verify("t=1700000000,v1=" .. want, body, secret, { now = ts + 10 }))
    end)

    it("rejects a tampered body, a tampered signature, another secret", function()
      local h = webhooks.sign(secret, ts, body)
      assert.same({ nil, "signature_mismatch" }, { webhooks.verify(h, body .. " ", secret, { now = ts }) })
      local flipped = h:sub(1, -2) .. (h:sub(-1) == "0" and "1" or "0")
      assert.same({ nil, "signature_mismatch" }, { webhooks.verify(flipped, body, secret, { now = ts }) })
      assert.same({ nil, "signature_mismatch" }, { webhooks.verify(h, body, "whsec_other", { now = ts }) })
      -- the timestamp is signed too: moving it breaks the signature
      local moved = h:gsub("^t=%d+", "t=" .. (ts + 5))
      assert.same({ nil, "signature_mismatch" }, { webhooks.verify(moved, body, secret, { now = ts }) })
    end)

    it("rejects timestamps outside the 300 s tolerance, both ways", function()
      local h = webhooks.sign(secret, ts, body)
      assert.is_true(webhooks.verify(h, body, secret, { now = ts + 300 }))
      assert.same({ nil, "timestamp_outside_tolerance" }, { webhooks.verify(h, body, secret, { now = ts + 301 }) })
      assert.same({ nil, "timestamp_outside_tolerance" }, { webhooks.verify(h, body, secret, { now = ts - 301 }) })
      assert.same({ nil, "timestamp_outside_tolerance" },
                  { webhooks.verify(h, body, secret, { now = ts + 61, tolerance = 60 }) })
    end)

    it("rejects missing and malformed headers", function()
      assert.same({ nil, "missing_signature" }, { webhooks.verify(nil, body, secret) })
      assert.same({ nil, "missing_signature" }, { webhooks.verify("", body, secret) })
      for _, h in ipairs({ "garbage", "t=abc,v1=00", "v1=" .. string.rep("a", 64), "t=1700000000",
                           "t=1700000000,v1=xyz", "t=1,t=2,v1=" .. string.rep("a", 64) }) do
        assert.same({ nil, "malformed_signature" }, { webhooks.verify(h, body, secret, { now = ts }) }, h)
      end
    end)

    it("carries one v1 per secret during a rotation; either secret verifies", function()
      local h = webhooks.sign({ "whsec_new", "whsec_old" }, ts, body)
      local _, count = h:gsub("v1=", "")
      assert.equals(2, count)
      assert.is_true(webhooks.verify(h, body, "whsec_old", { now = ts }))
      assert.is_true(webhooks.verify(h, body, "whsec_new", { now = ts }))
      assert.is_true(webhooks.verify(h, body, { "whsec_x", "whsec_new" }, { now = ts }))
      assert.same({ nil, "signature_mismatch" }, { webhooks.verify(h, body, "whsec_x", { now = ts }) })
    end)
  end)

  describe("endpoints", function()
    it("shows the secret once, stores it encrypted, and scopes every call to its owner", function()
      local wh = setup_wh(nil, false)
      local owner = ids.new("cus")
      local ep = endpoint(wh, owner, "ok")
      assert.matches("^whsec_", ep.secret)
      assert.matches("^we_", ep.id)
      local got = assert(wh:get_endpoint(owner, ep.id))
      assert.is_nil(got.secret)
      assert.same({ "payout.paid" }, got.event_types)
      assert.is_true(got.enabled)
      local stored = db:query("SELECT secret_enc FROM webhook_endpoint_secrets WHERE endpoint_id = $1", ep.id)
      assert.equals(1, #stored)
      assert.is_nil(stored[1].secret_enc:find(ep.secret, 1, true))
      assert.equals(ep.secret, keyring:decrypt(stored[1].secret_enc, "webhook_endpoint_secret:" .. ep.id))
      local none, err = wh:get_endpoint("cus_other", ep.id)
      assert.is_nil(none)
      assert.equals("resource_missing", err.code)
      assert.equals("resource_missing", select(2, wh:update_endpoint("cus_other", ep.id, { enabled = false })).code)
      assert.equals("resource_missing", select(2, wh:delete_endpoint("cus_other", ep.id)).code)
    end)

    it("lists newest first with limit, starting_after and ending_before", function()
      local wh = setup_wh(nil, false)
      local owner = ids.new("cus")
      local made = {}
      for i = 1, 5 do made[i] = endpoint(wh, owner, "ok").id end
      local page = assert(wh:list_endpoints(owner, { limit = 2 }))
      assert.equals("list", page.object)
      assert.same({ made[5], made[4] }, { page.data[1].id, page.data[2].id })
      assert.is_true(page.has_more)
      page = assert(wh:list_endpoints(owner, { limit = 10, starting_after = made[4] }))
      assert.same({ made[3], made[2], made[1] }, { page.data[1].id, page.data[2].id, page.data[3].id })
      assert.is_false(page.has_more)
      assert.equals("invalid_limit", select(2, wh:list_endpoints(owner, { limit = 101 })).code)
      -- and back: ending_before reads the newer ones, has_more says newer ones remain
      page = assert(wh:list_endpoints(owner, { limit = 2, ending_before = made[1] }))
      assert.same({ made[3], made[2] }, { page.data[1].id, page.data[2].id })
      assert.is_true(page.has_more)
      page = assert(wh:list_endpoints(owner, { limit = 2, ending_before = made[3] }))
      assert.same({ made[5], made[4] }, { page.data[1].id, page.data[2].id })
      assert.is_false(page.has_more)
      local _, both = wh:list_endpoints(owner, { starting_after = made[2], ending_before = made[4] })
      assert.equals("invalid_cursor", both.code)
      assert.equals("ending_before", both.param)
    end)

    it("updates and deletes; bad input changes nothing", function()
      local wh = setup_wh(nil, false)
      local owner = ids.new("cus")
      local ep = endpoint(wh, owner, "ok")
      local up = assert(wh:update_endpoint(owner, ep.id, { event_types = { "payout.paid", "payout.failed" },
                                                           description = "main" }))
      assert.same({ "payout.paid", "payout.failed" }, up.event_types)
      assert.equals("main", up.description)
      assert.equals(ep.url, up.url)
      for _, bad in ipairs({ { event_types = {} }, { event_types = { "NOPE" } }, { url = "ftp://x/y" },
                             { enabled = "yes" } }) do
        local v, err = wh:update_endpoint(owner, ep.id, bad)
        assert.is_nil(v)
        assert.is_string(err.code)
      end
      assert.same(up, assert(wh:get_endpoint(owner, ep.id)))
      assert.is_true(assert(wh:delete_endpoint(owner, ep.id)).deleted)
      assert.equals("resource_missing", select(2, wh:get_endpoint(owner, ep.id)).code)
    end)

    it("rotates the secret: both sign until the old one expires", function()
      local wh = setup_wh(nil, false)
      local owner = ids.new("cus")
      local ep = endpoint(wh, owner, "ok")
      local new = assert(wh:rotate_secret(owner, ep.id, { expire_in_s = 3600 }))
      assert.are_not.equal(ep.secret, new)
      assert.same({ new, ep.secret }, assert(wh:signing_secrets(ep.id)))
      local newer = assert(wh:rotate_secret(owner, ep.id, { expire_in_s = 0 }))
      assert.same({ newer }, assert(wh:signing_secrets(ep.id)))
      assert.equals("invalid_expire_in", select(2, wh:rotate_secret(owner, ep.id, { expire_in_s = -1 })).code)
    end)
  end)

  describe("deliveries", function()
    it("delivers a signed event through the queue and records the attempt", function()
      local wh, _, stop = setup_wh()
      local owner = ids.new("cus")
      local ep, key = endpoint(wh, owner, "ok")
      endpoint(wh, owner, "ok", { "card.created" })            -- another type: not delivered
      local e = event(owner)
      local dids = assert(wh:publish(e))
      assert.equals(1, #dids)
      local d = delivery(wh, owner, dids[1], "succeeded")
      stop()
      local got = received(key)
      assert.equals(1, #got)
      assert.is_true(webhooks.verify(got[1].signature, got[1].body, ep.secret))
      assert.equals("application/json", got[1].content_type)
      assert.equals(e.id, got[1].event_id)
      local body = json.decode(got[1].body)
      assert.equals(e.id, body.id)
      assert.equals("event", body.object)
      assert.equals("payout.paid", body.type)
      assert.equals(100, body.data.amount)
      assert.equals(1, #d.attempt_list)
      local a = d.attempt_list[1]
      assert.is_true(a.ok)
      assert.equals(200, a.status_code)
      assert.is_true(a.latency_ms >= 0 and a.latency_ms < 2000)
      assert.equals('{"received":true}', a.response_excerpt)
    end)

    it("publishing the same event twice delivers it once", function()
      local wh, _, stop = setup_wh()
      local owner = ids.new("cus")
      local _, key = endpoint(wh, owner, "ok")
      local e = event(owner)
      local a = assert(wh:publish(e))
      local b = assert(wh:publish(e))
      assert.same(a, b)
      delivery(wh, owner, a[1], "succeeded")
      nuvion.sleep(200)
      stop()
      assert.equals(1, #received(key))
    end)

    it("retries with exponential backoff and succeeds; each attempt recorded", function()
      local wh, _, stop = setup_wh()
      local owner = ids.new("cus")
      local _, key = endpoint(wh, owner, "flaky2")
      local did = assert(wh:publish(event(owner)))[1]
      local d = delivery(wh, owner, did, "succeeded")
      stop()
      assert.equals(3, d.attempts)
      local list = d.attempt_list
      assert.same({ false, false, true }, { list[1].ok, list[2].ok, list[3].ok })
      assert.same({ 503, 503, 200 }, { list[1].status_code, list[2].status_code, list[3].status_code })
      assert.equals("not yet", list[1].response_excerpt)
      local got = received(key)
      assert.equals(3, #got)
      assert.same({ "1", "2", "3" }, { got[1].attempt, got[2].attempt, got[3].attempt })
      -- the schedule: 150 ms after attempt 1, 300 ms after attempt 2 (queue backoff), plus pick-up slack
      local gap1, gap2 = (got[2].at - got[1].at) * 1000, (got[3].at - got[2].at) * 1000
      assert.is_true(gap1 >= 140 and gap1 < 1500, "gap 1: " .. gap1)
      assert.is_true(gap2 >= 290 and gap2 < 1800, "gap 2: " .. gap2)
      assert.is_true(gap2 > gap1, "backoff grows")
    end)

    it("fails a delivery after the last attempt; the job ends in the queue's failed set", function()
      local wh, q, stop = setup_wh()
      local owner = ids.new("cus")
      local _, key = endpoint(wh, owner, "fail")
      local did = assert(wh:publish(event(owner)))[1]
      local d = delivery(wh, owner, did, "failed")
      wait_until(function() return q:get_state(did) == "failed" end, 5000, "the job to fail")
      stop()
      assert.equals(4, d.attempts)
      assert.equals(4, #received(key))
      assert.equals(500, d.last_status_code)
      assert.is_nil(d.next_attempt_at)
      -- the excerpt is bounded and text-safe (the answer had a NUL byte)
      local ex = d.attempt_list[1].response_excerpt
      assert.equals(64, #ex)
      assert.equals("boom?xxx", ex:sub(1, 8))
      -- the queue runs nothing more for a final delivery
      local again = assert(wh:deliver(did))
      assert.is_true(again.final)
      assert.equals(4, #received(key))
    end)

    it("two runs of one delivery at once (a stalled job) record distinct attempts, every request", function()
      local wh = setup_wh(nil, false)
      local owner = ids.new("cus")
      local _, key = endpoint(wh, owner, "fail")
      local did = assert(wh:publish(event(owner)))[1]
      local results, done = {}, 0
      for i = 1, 2 do
        nuvion.spawn(function()
          results[i] = assert(wh:deliver(did))
          done = done + 1
        end)
      end
      wait_until(function() return done == 2 end, 5000, "both attempts")
      table.sort(results, function(x, y) return x.attempt < y.attempt end)
      assert.same({ 1, 2 }, { results[1].attempt, results[2].attempt })
      assert.equals(2, #received(key))
      -- once a run succeeded, the other finds the delivery final and records nothing
      local owner2 = ids.new("cus")
      local _, key2 = endpoint(wh, owner2, "ok")
      local did2 = assert(wh:publish(event(owner2)))[1]
      done = 0
      for i = 1, 2 do
        nuvion.spawn(function()
          results[i] = assert(wh:deliver(did2))
          done = done + 1
        end)
      end
      wait_until(function() return done == 2 end, 5000, "both runs")
      assert.same({ "succeeded", "succeeded" }, { results[1].status, results[2].status })
      local d = assert(wh:get_delivery(owner2, did2))
      assert.equals(#received(key2), #d.attempt_list)      -- every request made is recorded
      assert.equals(#received(key2), d.attempts)
    end)

    it("disables an endpoint after the failure streak, with a webhook_endpoint.disabled event", function()
      local wh, _, stop = setup_wh({ disable_after = { failures = 3, for_ms = 0 } })
      local owner = ids.new("cus")
      local ep, key = endpoint(wh, owner, "fail")
      local did = assert(wh:publish(event(owner)))[1]
      local d = delivery(wh, owner, did, "failed")
      assert.equals(3, d.attempts)                       -- the 4th attempt never ran
      local got = assert(wh:get_endpoint(owner, ep.id))
      assert.is_false(got.enabled)
      assert.equals("failure_streak", got.disabled_reason)
      local evts = db:query("SELECT type, data FROM outbox WHERE aggregate_type = 'webhook_endpoint' " ..
                            "AND aggregate_id = $1", ep.id)
      assert.equals(1, #evts)
      assert.equals("webhook_endpoint.disabled", evts[1].type)
      assert.equals(3, evts[1].data.failure_streak)
      assert.equals(owner, evts[1].data.owner_id)
      -- a disabled endpoint gets no new deliveries; enabling it starts a new streak
      assert.same({}, assert(wh:publish(event(owner))))
      local on = assert(wh:update_endpoint(owner, ep.id, { enabled = true }))
      assert.is_true(on.enabled)
      assert.equals(0, db:query("SELECT failure_streak FROM webhook_endpoints WHERE id = $1", ep.id)[1].failure_streak)
      stop()
      assert.equals(3, #received(key))
    end)

    it("a success resets the streak: a flaky endpoint is never disabled", function()
      local wh, _, stop = setup_wh({ disable_after = { failures = 3, for_ms = 0 } })
      local owner = ids.new("cus")
      local ep = endpoint(wh, owner, "flaky2")
      delivery(wh, owner, assert(wh:publish(event(owner)))[1], "succeeded")
      delivery(wh, owner, assert(wh:publish(event(owner)))[1], "succeeded")
      stop()
      assert.is_true(assert(wh:get_endpoint(owner, ep.id)).enabled)
    end)

    it("replays a delivery by id: the same body again, as a new delivery", function()
      local wh, _, stop = setup_wh()
      local owner = ids.new("cus")
      local ep, key = endpoint(wh, owner, "ok")
      local did = assert(wh:publish(event(owner)))[1]
      delivery(wh, owner, did, "succeeded")
      local rid = assert(wh:replay(owner, did))
      assert.are_not.equal(did, rid)
      local rd = delivery(wh, owner, rid, "succeeded")
      stop()
      assert.equals(did, rd.replay_of)
      local got = received(key)
      assert.equals(2, #got)
      assert.equals(got[1].body, got[2].body)
      assert.equals(got[1].event_id, got[2].event_id)
      assert.is_true(webhooks.verify(got[2].signature, got[2].body, ep.secret))
      assert.equals("resource_missing", select(2, wh:replay("cus_other", did)).code)
    end)

    it("without a queue, run_due attempts the deliveries that are due", function()
      local wh = webhooks.new({ db = db, keyring = keyring, schedule = schedule(), allow_private = true })
      local owner = ids.new("cus")
      local _, key = endpoint(wh, owner, "flaky1")
      local did = assert(wh:publish(event(owner)))[1]
      assert.is_true(assert(wh:run_due()) >= 1)
      assert.equals("retrying", assert(wh:get_delivery(owner, did)).status)
      assert.equals(0, (function() -- not due yet: next_attempt_at is 150 ms away
        local n = 0
        for _, row in ipairs(db:query("SELECT id FROM webhook_deliveries WHERE id = $1 AND next_attempt_at <= now()",
                                      did)) do n = n + #row.id end
        return n
      end)())
      nuvion.sleep(200)
      wait_until(function() wh:run_due() return wh:get_delivery(owner, did).status == "succeeded" end, 5000)
      assert.equals(2, #received(key))
    end)
  end)

  it("end to end: a business transaction's outbox event reaches the customer signed, once", function()
    local outbox = require "nuvion.outbox"
    local wh, _, stop = setup_wh()
    local owner = ids.new("cus")
    local ep, key = endpoint(wh, owner, "ok")
    local events = queue.new("webhooks_spec_events_" .. ids.new("q"), { redis = r })
    local consumer = queue.worker(events.name, wh:outbox_handler(), { redis = r, concurrency = 5, drain_delay = 1 })
    local payout = ids.new("po")
    local event_id = assert(db:tx(function(tx)
      return outbox.publish(tx, { aggregate_type = "payout", aggregate_id = payout, type = "payout.paid",
                                  data = { id = payout, owner_id = owner, amount = 2500, currency = "KES" } })
    end))
    -- the relay runs twice over the same row (as after a crash before it marked it)
    assert(db:query("UPDATE outbox SET relayed_at = now() WHERE relayed_at IS NULL AND id <> $1", event_id))
    local function relay()
      local n, err = outbox.relay_once(db, events)
      while err == "busy" do nuvion.sleep(20) n, err = outbox.relay_once(db, events) end
      assert.is_nil(err)
      return n
    end
    assert.equals(1, relay())
    assert(db:query("UPDATE outbox SET relayed_at = NULL WHERE id = $1", event_id))
    assert.equals(1, relay())
    wait_until(function() return #received(key) > 0 end, 10000, "the webhook")
    nuvion.sleep(300)
    consumer:close(2000)
    stop()
    local got = received(key)
    assert.equals(1, #got)
    assert.equals(event_id, got[1].event_id)
    assert.is_true(webhooks.verify(got[1].signature, got[1].body, ep.secret))
    local body = json.decode(got[1].body)
    assert.equals(event_id, body.id)
    assert.equals(2500, body.data.amount)
    assert.is_true(math.abs(body.created - os.time()) < 60)
  end)

  describe("the SSRF guard", function()
    local prod = webhooks.new({ db = db, keyring = keyring, schedule = schedule(), allow_private = false })

    it("refuses endpoints on loopback, private, link-local, CGNAT, ULA, unspecified and multicast addresses", function()
      for _, url in ipairs({ "https://127.0.0.1/h", "https://localhost/h", "https://10.1.2.3/h", "https://172.16.0.1/h",
                             "https://192.168.0.10/h", "https://169.254.169.254/latest", "https://100.64.0.1/h",
                             "https://[::1]/h", "https://[fd00::1]/h", "https://[fe80::1]/h", "https://0.0.0.0/h",
                             "https://224.0.0.1/h", "https://[::ffff:127.0.0.1]/h" }) do
        local ep, err = prod:create_endpoint("cus_ssrf", { url = url, event_types = { "*" } })
        assert.is_nil(ep, url)
        assert.equals("url_not_allowed", err.code, url)
      end
      local ep, err = prod:create_endpoint("cus_ssrf", { url = "http://8.8.8.8/h", event_types = { "*" } })
      assert.is_nil(ep)
      assert.equals("invalid_url", err.code)            -- plain http only in test mode
    end)

    it("checks again at delivery: an endpoint that resolves to loopback gets no request", function()
      local wh = setup_wh(nil, false)
      local owner = ids.new("cus")
      local _, key = endpoint(wh, owner, "ok")            -- made in test mode
      local did = assert(wh:publish(event(owner)))[1]
      local res = assert(prod:deliver(did))               -- delivered outside test mode
      assert.equals("retrying", res.status)
      assert.matches("ssrf_blocked", res.error)
      assert.matches("loopback", res.error)
      assert.equals(0, #received(key))
      local d = assert(wh:get_delivery(owner, did))
      assert.is_nil(d.attempt_list[1].status_code)
      assert.matches("ssrf_blocked", d.attempt_list[1].error)
    end)

    it("never follows a redirect", function()
      local wh = setup_wh(nil, false)
      local owner = ids.new("cus")
      local _, key = endpoint(wh, owner, "redirect")
      local did = assert(wh:publish(event(owner)))[1]
      local res = assert(wh:deliver(did))
      assert.equals("retrying", res.status)
      assert.equals(302, res.status_code)
      assert.equals("redirect not followed", res.error)
      assert.equals(1, #received(key))
    end)
  end)
end)
