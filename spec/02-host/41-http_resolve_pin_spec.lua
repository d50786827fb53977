-- nuvion.http's resolve and pin (docs/http_client.md, "Resolving and pinning"): every address of
-- a name, and a request that connects to a given address while Host stays the URL's.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"
local http = require "nuvion.http"
local json = require "nuvion.json"
local process = require "nuvion.process"

local TMP = "/tmp/nuvion-http-pin-spec-" .. nuvion.context().pid

local function run(argv)
  local p = assert(process.spawn(argv, { output = "pipe" }))
  local out = {}
  while true do
    local data = p:read(10000)
    if not data then break end
    out[#out + 1] = data
  end
  local how, code = p:wait(10000)
  assert(how == "exit" and code == 0, table.concat(argv, " ") .. " failed: " .. table.concat(out))
end

local port_open = helpers.port_open

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

  it("over TLS a pinned request still sends the name as SNI and verifies the certificate by it", function()
    run({ "mkdir", "-p", TMP })
    run({ "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
          "-keyout", TMP .. "/ca.key", "-out", TMP .. "/ca.pem", "-subj", "/CN=nuvion pin test ca" })
    run({ "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", TMP .. "/srv.key",
          "-out", TMP .. "/srv.csr", "-subj", "/CN=hooks.nuvion.test" })
    local ext = assert(io.open(TMP .. "/ext.cnf", "w"))
    ext:write("subjectAltName=DNS:hooks.nuvion.test\n")
    ext:close()
    run({ "openssl", "x509", "-req", "-in", TMP .. "/srv.csr", "-CA", TMP .. "/ca.pem", "-CAkey", TMP .. "/ca.key",
          "-CAcreateserial", "-days", "2", "-out", TMP .. "/srv.pem", "-extfile", TMP .. "/ext.cnf" })
    local port
    for _ = 1, 100 do
      port = 30000 + math.random(0, 25000)
      if not port_open(port) then break end
    end
    -- The name's certificate only for SNI hooks.nuvion.test; anything else gets the CA's own.
    local srv_tls = assert(process.spawn({ "openssl", "s_server", "-quiet", "-accept", tostring(port),
      "-cert", TMP .. "/ca.pem", "-key", TMP .. "/ca.key", "-servername", "hooks.nuvion.test",
      "-cert2", TMP .. "/srv.pem", "-key2", TMP .. "/srv.key", "-www" }, { output = "null" }))
    local deadline = nuvion.monotonic_ms() + 5000
    while not port_open(port) and nuvion.monotonic_ms() < deadline do nuvion.sleep(20) end
    local ca = TMP .. "/ca.pem"
    local res, err = http.request({ url = "https://hooks.nuvion.test:" .. port .. "/", pin = "127.0.0.1",
                                    ca_file = ca, timeout = 5000 })
    local res_ip, err_ip = http.request({ url = "https://127.0.0.1:" .. port .. "/", ca_file = ca, timeout = 5000 })
    local res_other, err_other = http.request({ url = "https://other.nuvion.test:" .. port .. "/",
                                                pin = "127.0.0.1", ca_file = ca, timeout = 5000 })
    srv_tls:kill("TERM")
    srv_tls:wait(5000)
    run({ "rm", "-rf", TMP })
    assert.is_nil(err)
    assert.equals(200, res.status)
    assert.is_nil(res_ip)                       -- the address alone does not pass for the name
    assert.matches("^certificate verify failed: ", err_ip)
    assert.is_nil(res_other)                    -- a pin does not make another name valid
    assert.matches("^certificate verify failed: ", err_other)
  end)

  it("refuses a pin that is not an address, or with a proxy or redirects", function()
    assert.has_error(function() http.request({ url = "http://a.example/", pin = "a.example" }) end)
    assert.has_error(function() http.request({ url = "http://a.example/", pin = "127.0.0.1",
                                               proxy = "http://127.0.0.1:3128" }) end)
    assert.has_error(function() http.request({ url = "http://a.example/", pin = "127.0.0.1",
                                               follow_redirects = 1 }) end)
  end)
end)
