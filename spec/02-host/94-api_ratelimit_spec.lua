-- nuvion.api.ratelimit: a token bucket per key in Redis; over HTTP the 429 rate_limited with
-- Retry-After; directly, the bucket is exact under concurrent takers.
local fx = require "spec.api_fixture"
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"
local nuvion = require "nuvion"
local redis = require "nuvion.redis"
local crypto = require "nuvion.crypto"
local ratelimit = require "nuvion.api.ratelimit"
local process = require "nuvion.process"
local socket = require "nuvion.socket"

local function socket_open(port)
  local s = socket.tcp()
  s:settimeout(200)
  local ok = s:connect("127.0.0.1", port)
  s:close()
  return ok
end

local function key_id()
  return "key_spec" .. crypto.hex_encode(crypto.random(8))
end

describe("rate limits over HTTP", function()
  local srv, partner

  lazy_setup(function()
    srv = fx.start()
    partner = fx.partner()
  end)
  lazy_teardown(function() if srv then srv:stop() end end)

  local function post(key)
    return fx.request(srv.port, { path = "/v1/limited", partner = partner, key_id = key })
  end

  it("lets a burst of 3 through, then answers 429 with Retry-After, per key", function()
    local k = key_id()
    for _ = 1, 3 do assert.equals(200, post(k).status) end
    local res = post(k)
    assert.equals(429, res.status)
    assert.equals("2", res.headers["retry-after"]) -- 0.5 token a second: one token in 2 s
    local err = res.json().error
    assert.equals("rate_limit_error", err.type)
    assert.equals("rate_limited", err.code)
    assert(openapi.check(res.json(), "Error"))
    -- another key of the same partner has its own bucket
    assert.equals(200, post(key_id()).status)
  end)

  it("lets the key through again once Retry-After has passed", function()
    local k = key_id()
    for _ = 1, 3 do assert.equals(200, post(k).status) end
    local res = post(k)
    assert.equals(429, res.status)
    nuvion.sleep(tonumber(res.headers["retry-after"]) * 1000 + 50)
    assert.equals(200, post(k).status)
    assert.equals(429, post(k).status)
  end)
end)

describe("nuvion.api.ratelimit", function()
  local r

  lazy_setup(function()
    r = assert(redis.connect((assert(os.getenv("NUVION_CORE_REDIS_URL"), "NUVION_CORE_REDIS_URL"))))
  end)

  it("is exact under 50 concurrent takers: a bucket of 10 lets 10 through", function()
    local lim = ratelimit.new(r, { rate = 0.001, burst = 10, name = "spec_exact" })
    local k = key_id()
    local results = helpers.parallel(50, function() return (lim:take(k)) end)
    local allowed = 0
    for _, ok in ipairs(results) do if ok == true then allowed = allowed + 1 end end
    assert.equals(10, allowed)
  end)

  it("refills at its rate", function()
    local lim = ratelimit.new(r, { rate = 20, burst = 1, name = "spec_refill" })
    local k = key_id()
    assert.is_true((lim:take(k)))
    local ok, wait = lim:take(k)
    assert.is_false(ok)
    assert.equals(1, wait) -- 50 ms, rounded up to whole seconds
    nuvion.sleep(60)
    assert.is_true((lim:take(k)))
  end)

  it("expires an idle bucket once it would be full again", function()
    local lim = ratelimit.new(r, { rate = 1000, burst = 5, name = "spec_ttl" })
    local k = key_id()
    lim:take(k)
    local ttl = r:call("PTTL", ratelimit.KEY_PREFIX .. "spec_ttl:" .. k)
    assert.is_true(ttl > 0 and ttl <= 1001 + 1)
  end)

  it("refuses rates, bursts and costs out of range", function()
    assert.has_error(function() ratelimit.new(r, { rate = 0 }) end)
    assert.has_error(function() ratelimit.new(r, { rate = ratelimit.RATE_MAX + 1 }) end)
    assert.has_error(function() ratelimit.new(r, { rate = 1, burst = 0 }) end)
    assert.has_error(function() ratelimit.new(r, { rate = 1, burst = ratelimit.BURST_MAX + 1 }) end)
    local lim = ratelimit.new(r, { rate = 1, burst = 2 })
    assert.has_error(function() lim:take("k", 3) end)
    assert.has_error(function() lim:take("") end)
  end)

  it("allows the request when its Redis is gone, logging why", function()
    -- a Redis of this spec's own, killed under the limiter. Ports below the kernel's ephemeral
    -- range (32768..), so no outgoing connection holds one; a start that fails tries another.
    local proc, port
    for _ = 1, 5 do
      port = 20000 + math.random(0, 12000)
      if not socket_open(port) then
        proc = assert(process.spawn({ "redis-server", "--bind", "127.0.0.1", "--port", tostring(port),
                                      "--save", "", "--appendonly", "no" }, { output = "null" }))
        local deadline = nuvion.monotonic_ms() + 3000
        while not socket_open(port) and nuvion.monotonic_ms() < deadline do nuvion.sleep(20) end
        if socket_open(port) then break end
        proc:kill("KILL")
        proc:wait(2000)
        proc = nil
      end
    end
    assert(proc, "redis-server did not start")
    local own = assert(redis.connect("redis://127.0.0.1:" .. port .. "/0", { timeout_ms = 1000,
                                                                             connect_timeout_ms = 1000 }))
    local lim = ratelimit.new(own, { rate = 0.001, burst = 1, name = "spec_down" })
    assert.is_true((lim:take("k")))
    assert.is_false((lim:take("k")))
    proc:kill("KILL")
    proc:wait(5000)
    assert.is_true((lim:take("k")))
    own:close()
  end)
end)
