-- Every configurable limit of the HTTP server, hit on purpose: each answers
-- with its status and the API's error shape, and the worker keeps serving.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"
local socket = require "nuvion.socket"

local function error_code(text)
  local res = helpers.parse_raw(text)
  return res.status, res.json().error.code, res
end

describe("HTTP limits", function()
  local srv

  lazy_setup(function()
    srv = helpers.start_server({ env = {
      NUVION_HTTP_HEADER_BYTES = "2048",
      NUVION_HTTP_BODY_BYTES = "1000",
      NUVION_HTTP_CONNECTIONS = "20",
      NUVION_HTTP_READ_TIMEOUT_MS = "300",
      NUVION_HTTP_KEEPALIVE_MS = "600",
      NUVION_HTTP_HANDLER_TIMEOUT_MS = "200",
      NUVION_LUA_MEMORY_BYTES = tostring(64 * 1024 * 1024),
    } })
  end)
  lazy_teardown(function() srv:stop() end)

  after_each(function()
    -- whatever a case did, the worker still serves
    local res = assert(helpers.request(srv.port, { path = "/hello" }))
    assert.equals(200, res.status)
  end)

  it("answers 431 when the head exceeds NUVION_HTTP_HEADER_BYTES", function()
    local req = "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " .. string.rep("a", 3000) .. "\r\n\r\n"
    local status, code = error_code(helpers.raw(srv.port, req))
    assert.equals(431, status)
    assert.equals("request_header_fields_too_large", code)
  end)

  it("accepts a head just under NUVION_HTTP_HEADER_BYTES", function()
    local head = "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
    local req = head .. string.rep("a", 2048 - #head - 4 - 1) .. "\r\n\r\n"
    assert.is_true(#req < 2048)
    local res = helpers.parse_raw(helpers.raw(srv.port, req))
    assert.equals(200, res.status)
  end)

  it("answers 431 to a flood of header lines", function()
    local lines = {}
    for i = 1, 150 do lines[i] = "X-H" .. i .. ": 1" end
    local req = "GET /hello HTTP/1.1\r\n" .. table.concat(lines, "\r\n") .. "\r\n\r\n"
    local status = error_code(helpers.raw(srv.port, req))
    assert.equals(431, status)
  end)

  it("answers 413 when Content-Length exceeds NUVION_HTTP_BODY_BYTES, before reading it", function()
    local req = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"
    local status, code = error_code(helpers.raw(srv.port, req))
    assert.equals(413, status)
    assert.equals("request_too_large", code)
  end)

  it("accepts a body of exactly NUVION_HTTP_BODY_BYTES", function()
    local res = assert(helpers.request(srv.port, { method = "POST", path = "/echo", body = string.rep("b", 1000) }))
    assert.equals(200, res.status)
    assert.equals(1000, #res.json().raw)
  end)

  it("answers 413 when a chunked body grows past the limit", function()
    local chunk = string.rep("c", 600)
    local req = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             .. "258\r\n" .. chunk .. "\r\n258\r\n" .. chunk .. "\r\n0\r\n\r\n"
    local status, code = error_code(helpers.raw(srv.port, req))
    assert.equals(413, status)
    assert.equals("request_too_large", code)
  end)

  it("answers 408 to a client that sends its head too slowly", function()
    local sock = socket.tcp()
    assert(sock:connect("127.0.0.1", srv.port))
    local t0 = nuvion.monotonic_ms()
    sock:send("GET /hello HTTP/1.1\r\n")
    for _ = 1, 6 do -- a byte every 100 ms: each read is in time, the request is not
      nuvion.sleep(100)
      if not sock:send("X") then break end
    end
    local text = sock:receive("*a") or ""
    sock:close()
    local status, code = error_code(text)
    assert.equals(408, status)
    assert.equals("request_timeout", code)
    assert.is_true(nuvion.monotonic_ms() - t0 < 1500)
  end)

  it("answers 408 to a body that never completes", function()
    local text = helpers.raw(srv.port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", 3000)
    local status = error_code(text)
    assert.equals(408, status)
  end)

  it("closes an idle keep-alive connection after NUVION_HTTP_KEEPALIVE_MS", function()
    local c = assert(helpers.client(srv.port))
    assert.equals(200, assert(c:request({ path = "/hello" })).status)
    local t0 = nuvion.monotonic_ms()
    local data, err = c.sock:receive("*a")
    assert.equals("", data, err)
    local waited = nuvion.monotonic_ms() - t0
    assert.is_true(waited >= 550 and waited < 2000, "closed after " .. waited .. " ms")
    c:close()
  end)

  it("answers 504 when a handler passes NUVION_HTTP_HANDLER_TIMEOUT_MS", function()
    local t0 = nuvion.monotonic_ms()
    local res = assert(helpers.request(srv.port, { path = "/sleep?ms=1000" }))
    assert.equals(504, res.status)
    assert.equals("handler_timeout", res.json().error.code)
    assert.is_true(nuvion.monotonic_ms() - t0 < 900)
  end)

  it("answers 503 beyond NUVION_HTTP_CONNECTIONS", function()
    local socks = {}
    for i = 1, 20 do
      socks[i] = socket.tcp()
      assert(socks[i]:connect("127.0.0.1", srv.port))
    end
    nuvion.sleep(50) -- let the worker accept them
    local text = helpers.raw(srv.port, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    for _, s in ipairs(socks) do s:close() end
    nuvion.sleep(50)
    local status, code, res = error_code(text)
    assert.equals(503, status)
    assert.equals("too_many_connections", code)
    assert.equals("1", res.headers["retry-after"])
  end)

  it("answers 500 when a handler exceeds NUVION_LUA_MEMORY_BYTES", function()
    local res = assert(helpers.request(srv.port, { path = "/memory" }))
    assert.equals(500, res.status)
    assert.equals("internal_error", res.json().error.code)
    assert.is_truthy(srv:wait_log({ level = "error", request_id = res.headers["x-request-id"] }))
  end)
end)
