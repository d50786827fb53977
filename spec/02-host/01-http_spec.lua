-- The HTTP server and router, against a real server process.
local helpers = require "spec.helpers"

describe("HTTP server", function()
  local srv

  lazy_setup(function() srv = helpers.start_server() end)
  lazy_teardown(function() srv:stop() end)

  it("answers a Lua handler with JSON", function()
    local res = assert(helpers.request(srv.port, { path = "/hello" }))
    assert.equals(200, res.status)
    assert.equals("application/json", res.headers["content-type"])
    assert.equals('{"ok":true}', res.body)
    assert.is_truthy(res.headers["x-request-id"]:match("^%x+$"))
  end)

  it("loads a service whose top level and modules wait on I/O", function()
    local res = assert(helpers.request(srv.port, { path = "/loaded" }))
    assert.same({ slow = true }, res.json())
  end)

  it("routes path parameters, static segments first", function()
    local res = assert(helpers.request(srv.port, { path = "/params/cus_123/items/a%20b" }))
    assert.same({ id = "cus_123", item = "a b" }, res.json())
    res = assert(helpers.request(srv.port, { path = "/params/static/items/fixed" }))
    assert.same({ static = true }, res.json())
  end)

  it("answers 404 with the error shape for an unknown path", function()
    local res = assert(helpers.request(srv.port, { path = "/nope" }))
    assert.equals(404, res.status)
    local err = res.json().error
    assert.equals("route_not_found", err.code)
    assert.equals("invalid_request_error", err.type)
    assert.equals(res.headers["x-request-id"], err.request_id)
  end)

  it("answers 405 with an Allow header for a known path and another method", function()
    local res = assert(helpers.request(srv.port, { method = "DELETE", path = "/hello" }))
    assert.equals(405, res.status)
    assert.equals("GET, HEAD", res.headers["allow"])
    assert.equals("method_not_allowed", res.json().error.code)
  end)

  it("serves HEAD from the GET handler without a body", function()
    local res = assert(helpers.request(srv.port, { method = "HEAD", path = "/hello" }))
    assert.equals(200, res.status)
    assert.equals("11", res.headers["content-length"])
    assert.equals("", res.body)
  end)

  it("gives handlers the method, headers, query and JSON body", function()
    local res = assert(helpers.request(srv.port, {
      method = "POST", path = "/echo?a=1&b=x%20y&a=2",
      headers = { ["X-Thing"] = "v1" }, body = { amount = 1500, currency = "KES" },
    }))
    assert.equals(200, res.status)
    local got = res.json()
    assert.equals("POST", got.method)
    assert.same({ amount = 1500, currency = "KES" }, got.json)
    assert.same({ a = { "1", "2" }, b = "x y" }, got.args)
    assert.equals("v1", got.headers["x-thing"])
  end)

  it("answers 400 invalid_json for a malformed JSON body, with the byte offset", function()
    local res = assert(helpers.request(srv.port, {
      method = "POST", path = "/echo", headers = { ["Content-Type"] = "application/json" },
      body = '{"amount": 15,,}',
    }))
    assert.equals(400, res.status)
    local err = res.json().error
    assert.equals("invalid_json", err.code)
    assert.matches("byte", err.message)
  end)

  it("rejects invalid UTF-8 in a JSON body", function()
    local res = assert(helpers.request(srv.port, {
      method = "POST", path = "/echo", headers = { ["Content-Type"] = "application/json" },
      body = '{"name":"\xff\xfe"}',
    }))
    assert.equals(400, res.status)
    assert.equals("invalid_json", res.json().error.code)
  end)

  it("rejects 100k-deep JSON nesting quickly", function()
    local res = assert(helpers.request(srv.port, {
      method = "POST", path = "/echo", headers = { ["Content-Type"] = "application/json" },
      body = string.rep("[", 100000) .. string.rep("]", 100000),
    }))
    assert.equals(400, res.status)
    assert.matches("deep", res.json().error.message)
  end)

  it("keeps integers beyond 2^53 exact in responses", function()
    local res = assert(helpers.request(srv.port, { path = "/bigint" }))
    assert.matches('"amount":123456789012345678901234567890', res.body, 1, true)
    assert.matches('"small":9007199254740993', res.body, 1, true)
  end)

  it("sends string bodies with the handler's content type and headers", function()
    local res = assert(helpers.request(srv.port, { path = "/text" }))
    assert.equals(201, res.status)
    assert.equals("text/plain", res.headers["content-type"])
    assert.equals("yes", res.headers["x-custom"])
    assert.equals("plain words", res.body)
  end)

  it("answers an error outcome table in the error shape", function()
    local res = assert(helpers.request(srv.port, { path = "/outcome" }))
    assert.equals(402, res.status)
    assert.same({ type = "invalid_request_error", code = "card_declined", param = "card",
                  message = "The card was declined.", request_id = res.headers["x-request-id"] },
                res.json().error)
  end)

  it("serves many requests on one keep-alive connection", function()
    local c = assert(helpers.client(srv.port))
    for _ = 1, 50 do
      local res = assert(c:request({ path = "/hello" }))
      assert.equals(200, res.status)
    end
    c:close()
  end)

  it("answers pipelined requests in order", function()
    local req = "GET /params/1/items/a HTTP/1.1\r\nHost: x\r\n\r\n"
             .. "GET /params/2/items/b HTTP/1.1\r\nHost: x\r\n\r\n"
             .. "GET /params/3/items/c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    local text = helpers.raw(srv.port, req)
    local ids = {}
    for id in text:gmatch('"id":"(%d)"') do ids[#ids + 1] = id end
    assert.same({ "1", "2", "3" }, ids)
  end)

  it("reads a chunked request body", function()
    local body = '{"a":1,"b":"hello"}'
    local req = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             .. "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
             .. "5\r\n" .. body:sub(1, 5) .. "\r\n"
             .. string.format("%x", #body - 5) .. "\r\n" .. body:sub(6) .. "\r\n0\r\n\r\n"
    local res = helpers.parse_raw(helpers.raw(srv.port, req))
    assert.equals(200, res.status)
    assert.same({ a = 1, b = "hello" }, res.json().json)
  end)

  it("honours Expect: 100-continue", function()
    local c = assert(helpers.client(srv.port))
    c.sock:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert.equals("HTTP/1.1 100 Continue", c.sock:receive("*l"))
    assert.equals("", c.sock:receive("*l"))
    c.sock:send("hi")
    local res = assert(c:receive_response())
    assert.equals("hi", res.json().raw)
    c:close()
  end)

  it("adopts X-Request-ID and the traceparent trace id", function()
    local res = assert(helpers.request(srv.port, { method = "POST", path = "/echo", headers = {
      ["X-Request-ID"] = "req-abc-123",
      ["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    } }))
    assert.equals("req-abc-123", res.headers["x-request-id"])
    assert.equals("req-abc-123", res.json().request_id)
    assert.equals("4bf92f3577b34da6a3ce929d0e0e4736", res.json().trace_id)
  end)

  it("answers HTTP/1.0 and closes unless asked to keep alive", function()
    local text = helpers.raw(srv.port, "GET /hello HTTP/1.0\r\n\r\n")
    assert.matches("^HTTP/1.1 200", text)
    assert.matches("Connection: close", text, 1, true)
  end)

  it("runs one-shot and repeating timers and cancels them", function()
    local res = assert(helpers.request(srv.port, { path = "/timer" }))
    local fired = res.json().fired
    local once, ticks = 0, 0
    for _, v in ipairs(fired) do
      if v == "once" then once = once + 1 else ticks = ticks + 1 end
    end
    assert.equals(1, once)
    assert.is_true(ticks >= 5, "ticks: " .. ticks)
  end)
end)
