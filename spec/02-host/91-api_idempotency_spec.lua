-- nuvion.api.idempotency through the fixture app: the first response is replayed byte for byte,
-- other parameters are refused, a concurrent duplicate gets 409, nothing is kept when the body
-- fails validation, a 5xx is kept, keys are scoped by partner and mode, and expire.
local fx = require "spec.api_fixture"
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"
local idem = require "nuvion.api.idempotency"

local function new_key()
  return "key-" .. crypto.hex_encode(crypto.random(12))
end

describe("Idempotency-Key", function()
  local srv, db, partner

  lazy_setup(function()
    srv = fx.start(2)
    db = fx.db()
    partner = fx.partner()
  end)
  lazy_teardown(function() if srv then srv:stop() end end)

  local function post(body, key, extra)
    local opts = { path = "/v1/things", partner = partner, body = body, key = key }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return fx.request(srv.port, opts)
  end

  local function things_named(name)
    return #assert(db:query("SELECT id FROM spec_api_things WHERE partner_id = $1 AND name = $2",
                            partner, name))
  end

  local function stored(key, p)
    return assert(db:query("SELECT * FROM api_idempotency_keys WHERE partner_id = $1 AND idempotency_key = $2",
                           p or partner, key))
  end

  it("replays the first response, status and body byte for byte, and runs the handler once", function()
    local key = new_key()
    local first = post({ name = "once-a", amount = 500 }, key)
    assert.equals(200, first.status)
    assert.is_nil(first.headers["idempotent-replayed"])
    local again = post({ name = "once-a", amount = 500 }, key)
    assert.equals(200, again.status)
    assert.equals(first.body, again.body)
    assert.equals("true", again.headers["idempotent-replayed"])
    assert.equals("application/json", again.headers["content-type"])
    assert.not_equals(first.headers["x-request-id"], again.headers["x-request-id"])
    assert.equals(1, things_named("once-a"))
  end)

  it("treats the same parameters in another order and spacing as the same request", function()
    local key = new_key()
    local first = post('{"name":"order-a","amount":7}', key, { headers = { ["Content-Type"] = "application/json" } })
    assert.equals(200, first.status)
    local again = post('{ "amount": 7,\n "name": "order-a" }', key)
    assert.equals(200, again.status)
    assert.equals(first.body, again.body)
    assert.equals(1, things_named("order-a"))
  end)

  it("refuses the same key with other parameters: 400 idempotency_error", function()
    local key = new_key()
    assert.equals(200, post({ name = "mismatch-a" }, key).status)
    local res = post({ name = "mismatch-b" }, key)
    assert.equals(400, res.status)
    local err = res.json().error
    assert.equals("idempotency_error", err.type)
    assert.equals("idempotency_key_reused", err.code)
    assert.equals(idem.ERR_MISMATCH, err.message)
    assert(openapi.check(res.json(), "Error"))
    assert.equals(0, things_named("mismatch-b"))
  end)

  it("refuses the same key on another path", function()
    local key = new_key()
    assert.equals(200, post({ name = "path-a" }, key).status)
    local res = fx.request(srv.port, { path = "/v1/plain", partner = partner, key = key, body = { name = "path-a" } })
    assert.equals(400, res.status)
    assert.equals("idempotency_key_reused", res.json().error.code)
  end)

  it("answers 409 to a concurrent request with the same key while the first runs", function()
    local key = new_key()
    local results = helpers.parallel(2, function(i)
      if i == 2 then nuvion.sleep(100) end -- the first has claimed the key and sleeps in its handler
      return post({ name = "race-a", sleep_ms = 600 }, key)
    end)
    table.sort(results, function(a, b) return a.status < b.status end)
    assert.equals(200, results[1].status)
    assert.equals(409, results[2].status)
    local err = results[2].json().error
    assert.equals("idempotency_error", err.type)
    assert.equals("idempotency_key_in_use", err.code)
    assert.equals(1, things_named("race-a"))
    -- once the first finished, the key replays its response
    local again = post({ name = "race-a", sleep_ms = 600 }, key)
    assert.equals(results[1].body, again.body)
  end)

  it("lets exactly one of many racing duplicates run", function()
    local key = new_key()
    local results = helpers.parallel(8, function()
      return post({ name = "race-many", sleep_ms = 1000 }, key)
    end)
    local ran, refused, replayed = 0, 0, 0
    for _, r in ipairs(results) do
      if r.status == 409 then
        refused = refused + 1
      elseif r.status == 200 and r.headers["idempotent-replayed"] then
        replayed = replayed + 1 -- a request that arrived after the first had finished
      elseif r.status == 200 then
        ran = ran + 1
      end
    end
    assert.equals(1, ran)
    assert.equals(7, refused + replayed)
    assert.is_true(refused >= 1)
    assert.equals(1, things_named("race-many"))
  end)

  it("stores nothing when the body fails validation; the key is then free", function()
    local key = new_key()
    local bad = post({ name = "valid-later", quantity = 0 }, key)
    assert.equals(400, bad.status)
    assert.equals("quantity", bad.json().error.param)
    assert.equals(0, #stored(key))
    local ok = post({ name = "valid-later", quantity = 1 }, key)
    assert.equals(200, ok.status)
    assert.equals(1, #stored(key))
  end)

  it("stores nothing for a body that is not JSON", function()
    local key = new_key()
    local res = post("{not json", key)
    assert.equals(400, res.status)
    assert.equals("invalid_json", res.json().error.code)
    assert.equals(0, #stored(key))
  end)

  it("stores a 5xx and replays it without running the handler again", function()
    local key, counter = new_key(), "spec:fail:" .. new_key()
    local req = { path = "/v1/fail", partner = partner, key = key, body = { counter = counter } }
    local first = fx.request(srv.port, req)
    assert.equals(500, first.status)
    assert.equals("internal_error", first.json().error.code)
    assert.equals("api_error", first.json().error.type)
    local again = fx.request(srv.port, req)
    assert.equals(500, again.status)
    assert.equals(first.body, again.body)
    assert.equals("true", again.headers["idempotent-replayed"])
    local rows = stored(key)
    assert.equals(500, rows[1].response_status)
    local redis = require "nuvion.redis"
    local r = assert(redis.connect(os.getenv("NUVION_CORE_REDIS_URL")))
    assert.equals("1", r:call("GET", counter))
  end)

  it("stores the response in the change's own transaction with ctx:respond", function()
    local function times(path, name)
      local key = new_key()
      local res = fx.request(srv.port, { path = path, partner = partner, key = key, body = { name = name } })
      assert.equals(200, res.status)
      local row = assert(db:query([[SELECT k.completed_at = t.created_at AS same_tx
        FROM api_idempotency_keys k, spec_api_things t
        WHERE k.partner_id = $1 AND k.idempotency_key = $2 AND t.id = $3]], partner, key, res.json().id))[1]
      return row.same_tx
    end
    -- now() is the transaction's start: equal only when both rows were written in one transaction
    assert.is_true(times("/v1/things", "atomic-a"))
    assert.is_false(times("/v1/things-late", "atomic-b"))
  end)

  it("rolls the stored response back with the change when the handler fails after ctx:respond", function()
    local key = new_key()
    local req = { path = "/v1/things", partner = partner, key = key, body = { name = "atomic-fail", code = "ERR" } }
    local first = fx.request(srv.port, req)
    assert.equals(500, first.status)
    assert.equals(0, things_named("atomic-fail"))
    local again = fx.request(srv.port, req)
    assert.equals(500, again.status)
    assert.equals(first.body, again.body)
    assert.equals(0, things_named("atomic-fail"))
  end)

  it("scopes keys by partner and by mode", function()
    local key = new_key()
    local a = post({ name = "scoped" }, key)
    local other = fx.partner()
    local b = fx.request(srv.port, { path = "/v1/things", partner = other, key = key, body = { name = "scoped" } })
    local live = post({ name = "scoped" }, key, { mode = "live" })
    assert.equals(200, a.status)
    assert.equals(200, b.status)
    assert.equals(200, live.status)
    assert.is_nil(b.headers["idempotent-replayed"])
    assert.is_nil(live.headers["idempotent-replayed"])
    local ids = { a.json().id, b.json().id, live.json().id }
    assert.not_equals(ids[1], ids[2])
    assert.not_equals(ids[1], ids[3])
  end)

  it("accepts a key of 255 characters and refuses 256, or an empty one", function()
    local ok = post({ name = "long-key" }, string.rep("k", 255))
    assert.equals(200, ok.status)
    local res = post({ name = "long-key2" }, string.rep("k", 256))
    assert.equals(400, res.status)
    assert.equals("idempotency_key_invalid", res.json().error.code)
    assert.equals(0, things_named("long-key2"))
    assert.truthy(idem.check_key(""))
    assert.truthy(idem.check_key("tab\there"))
    assert.is_nil(idem.check_key("printable-ASCII_~!"))
  end)

  it("forgets a key once it expires, and the same key then runs anew", function()
    local key = new_key()
    local first = fx.request(srv.port, { path = "/v1/short", partner = partner, key = key })
    local again = fx.request(srv.port, { path = "/v1/short", partner = partner, key = key })
    assert.equals(first.body, again.body)
    nuvion.sleep(1100)
    local later = fx.request(srv.port, { path = "/v1/short", partner = partner, key = key })
    assert.equals(200, later.status)
    assert.not_equals(first.body, later.body)
    assert.is_nil(later.headers["idempotent-replayed"])
  end)

  it("takes over a claim whose request died once its lock expires, for the same request only", function()
    local key = new_key()
    local opts = { partner_id = partner, mode = "test", key = key, method = "POST", path = "/v1/x",
                   body = { a = 1 }, lock_s = 1 }
    local state, claim = idem.begin(db, opts)
    assert.equals("new", state)
    local s2, o2 = idem.begin(db, opts)
    assert.is_nil(s2)
    assert.equals(409, o2.status)
    nuvion.sleep(1100)
    local other = {}
    for k, v in pairs(opts) do other[k] = v end
    other.body = { a = 2 }
    local s3, o3 = idem.begin(db, other)
    assert.is_nil(s3)
    assert.equals(400, o3.status)
    local s4, claim4 = idem.begin(db, opts)
    assert.equals("new", s4)
    -- the dead request's late completion no longer counts
    assert.is_nil((idem.complete(db, claim, 200, "{}")))
    assert.is_true(idem.complete(db, claim4, 201, '{"ok":true}'))
    local s5, replay = idem.begin(db, opts)
    assert.equals("replay", s5)
    assert.equals(201, replay.status)
    assert.equals('{"ok":true}', replay.body)
  end)

  it("rolls the change back when its in-transaction completion finds the claim taken over", function()
    local key = new_key()
    local opts = { partner_id = partner, mode = "test", key = key, method = "POST", path = "/v1/x",
                   body = { a = 1 }, lock_s = 1 }
    local _, dead = idem.begin(db, opts)
    nuvion.sleep(1100)
    local state, live = idem.begin(db, opts)
    assert.equals("new", state)
    local name = "late-" .. key
    local ok, err = db:tx(function(tx)
      assert(tx:query("INSERT INTO spec_api_things (id, partner_id, mode, name) VALUES ($1, $2, 'test', $3)",
                      "thg_" .. key, partner, name))
      assert.is_true(idem.complete(tx, dead, 200, "{}")) -- deferred: checked at the COMMIT
      return true
    end)
    assert.is_nil(ok)
    assert.equals("NVI01", err.code)
    assert.matches("idempotency claim lost", err.message)
    assert.equals(0, things_named(name))
    assert.is_true(db:tx(function(tx) return idem.complete(tx, live, 201, '{"ok":1}') end))
    local s5, replay = idem.begin(db, opts)
    assert.equals("replay", s5)
    assert.equals('{"ok":1}', replay.body)
  end)

  it("commits a claim without waiting for its WAL flush, and nothing else", function()
    local key = new_key()
    assert.equals("new", (idem.begin(db, { partner_id = partner, mode = "test", key = key, method = "POST",
                                           path = "/v1/x", body = {} })))
    -- the setting was local to the claim's own implicit transaction
    for _ = 1, 4 do
      assert.equals("on", assert(db:query("SELECT current_setting('synchronous_commit') AS s"))[1].s)
    end
  end)

  it("purges expired keys in bounded batches", function()
    local p = fx.partner()
    for i = 1, 3 do
      local state = idem.begin(db, { partner_id = p, mode = "test", key = "exp" .. i, method = "POST",
                                     path = "/v1/x", body = "", ttl_s = 0 })
      assert.equals("new", state)
    end
    local function left()
      return #assert(db:query("SELECT 1 FROM api_idempotency_keys WHERE partner_id = $1", p))
    end
    assert.equals(3, left())
    local n = assert(idem.purge(db, 2))
    assert.equals(2, n)
    local rest = assert(idem.purge(db, 1000000))
    assert.is_true(rest >= 1)
    assert.equals(0, left())
  end)

  it("ignores Idempotency-Key on a GET", function()
    local key = new_key()
    local res = fx.request(srv.port, { method = "GET", path = "/v1/things", partner = partner, key = key })
    assert.equals(200, res.status)
    assert.equals(0, #stored(key))
  end)
end)
