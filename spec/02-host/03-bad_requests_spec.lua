-- Malformed requests get a 4xx/5xx in the error shape and a closed
-- connection; none of them disturbs the worker.
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"

describe("bad requests", function()
  local srv

  lazy_setup(function() srv = helpers.start_server() end)
  lazy_teardown(function() srv:stop() end)

  after_each(function()
    local res = assert(helpers.request(srv.port, { path = "/hello" }))
    assert.equals(200, res.status)
  end)

  local cases = {
    { "malformed request line", "GARBAGE\r\n\r\n", 400 },
    { "a missing Host header", "GET /hello HTTP/1.1\r\n\r\n", 400, "missing Host header" },
    { "missing version", "GET /hello\r\n\r\n", 400 },
    { "unsupported version", "GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505 },
    { "space in a header name", "GET /hello HTTP/1.1\r\nBad Header: x\r\n\r\n", 400 },
    { "bad Content-Length", "POST /echo HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n", 400 },
    { "two different Content-Lengths", "POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400 },
    { "Content-Length and Transfer-Encoding together",
      "POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400 },
    { "an unknown Transfer-Encoding", "POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501 },
    { "bad chunk size", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400 },
    { "a chunk without its CRLF", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n", 400 },
    { "obsolete line folding", "GET /hello HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400 },
    { "a control character in the target", "GET /he\1llo HTTP/1.1\r\n\r\n", 400 },
  }

  for _, case in ipairs(cases) do
    it("answers " .. case[3] .. " to " .. case[1], function()
      local req = case[2]
      if not case[4] then req = req:gsub("\r\n", "\r\nHost: x\r\n", 1) end
      local text = helpers.raw(srv.port, req)
      local res = helpers.parse_raw(text)
      assert.is_not_nil(res, "no response: " .. tostring(text))
      assert.equals(case[3], res.status)
      assert.equals("close", res.headers["connection"])
      assert(openapi.check(res.json(), "Error"))
      local err = res.json().error
      assert.equals("invalid_request_error", err.type)
      assert.is_string(err.message)
      if case[4] then assert.equals(case[4], err.message) end
      assert.equals(res.headers["x-request-id"], err.request_id)
    end)
  end

  it("survives a client that disconnects mid-request", function()
    local text = helpers.raw(srv.port, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial", 100)
    assert.equals("", text)
  end)

  it("survives a client that disconnects while its handler waits", function()
    local socket = require "nuvion.socket"
    local s = socket.tcp()
    assert(s:connect("127.0.0.1", srv.port))
    s:send("GET /sleep?ms=50 HTTP/1.1\r\nHost: x\r\n\r\n")
    s:close()
    require("nuvion").sleep(100)
  end)
end)
