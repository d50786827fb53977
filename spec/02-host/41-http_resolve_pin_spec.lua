-- nuvion.http's resolve and pin (docs/http_client.md, "Resolving and pinning"): every address of
-- a name, and a request that connects to a given address while Host stays the URL's.
local helpers = require "spec.helpers"
local http = require "nuvion.http"
local json = require "nuvion.json"

describe("nuvion.http resolve and pin", function()
  local srv

  setup(function() srv = helpers.start_server() end)
  teardown(function() if srv then srv:stop() end end)

  it("resolves names and literals to every address", function()
    assert.same({ "127.0.0.1" }, http.resolve("localhost"))
    assert.same({ "127.0.0.1" }, http.resolve("127.0.0.1"))
    assert.same({ "::1" }, http.resolve("[::1]"))
    assert.same({ "2001:db8::1" }, http.resolve("2001:db8::1"))
    local none, err = http.resolve("no-such-host.invalid", 3000)
    assert.is_nil(none)
    assert.matches("^dns: ", err)
    assert.has_error(function() http.resolve("") end)
    assert.has_error(function() http.resolve(nil) end)
  end)

  it("connects to the pinned address without resolving the URL's host, which stays the Host", function()
    local url = "http://no-such-host.invalid:" .. srv.port .. "/echo"
    local res = assert(http.request({ method = "POST", url = url, pin = "127.0.0.1", body = "x" }))
    assert.equals(200, res.status)
    local echo = json.decode(res.body)
    assert.equals("no-such-host.invalid:" .. srv.port, echo.headers.host)
    assert.equals("x", echo.raw)
    -- without the pin the name does not resolve
    local none, err = http.request({ method = "POST", url = url, body = "x", timeout = 3000 })
    assert.is_nil(none)
    assert.matches("dns", err)
  end)

  it("a pin elsewhere is where the request goes, whatever the host resolves to", function()
    local url = "http://localhost:" .. srv.port .. "/echo"
    assert.equals(405, assert(http.request({ url = url, timeout = 2000 })).status)   -- GET on a POST route
    -- the server listens on 0.0.0.0 only: pinned to ::1 the same URL finds nobody
    local none, err = http.request({ url = url, pin = "::1", timeout = 2000 })
    assert.is_nil(none)
    assert.equals(http.ERR_REFUSED, err)
  end)

  it("refuses a pin that is not an address, or with a proxy or redirects", function()
    assert.has_error(function() http.request({ url = "http://a.example/", pin = "a.example" }) end)
    assert.has_error(function() http.request({ url = "http://a.example/", pin = "127.0.0.1",
                                               proxy = "http://127.0.0.1:3128" }) end)
    assert.has_error(function() http.request({ url = "http://a.example/", pin = "127.0.0.1",
                                               follow_redirects = 1 }) end)
  end)
end)
