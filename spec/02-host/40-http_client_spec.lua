-- The outbound HTTP(S) client (nuvion.http over host/http_client.c), against real peers: a
-- nuvion server, raw HTTP servers written here (for framings nuvion does not send: chunked,
-- close-delimited, HEAD with a length, a connection closed under a pooled request), openssl
-- s_server with certificates made by this spec, and a CONNECT proxy written here.
--
-- The raw servers and the proxy listen through LuaJIT FFI calls (socket, bind, listen, accept4)
-- and wait on the loop with nuvion.core.wait_fd: test-only code that lives in this file, so the
-- host needs no listening primitive for Lua.
local ffi = require "ffi"
local bit = require "bit"
local core = require "nuvion.core"
local nuvion = require "nuvion"
local socket = require "nuvion.socket"
local process = require "nuvion.process"
local json = require "nuvion.json"
local http = require "nuvion.http"
local helpers = require "helpers"

local C = ffi.C
for _, decl in ipairs({
  "int bind(int fd, const void *addr, uint32_t len);",
  "int listen(int fd, int backlog);",
  "int accept4(int fd, void *addr, uint32_t *len, int flags);",
  "int getsockname(int fd, void *addr, uint32_t *len);",
  "struct nv_sockaddr_in { uint16_t sin_family; uint16_t sin_port; uint32_t sin_addr; uint8_t zero[8]; };",
  "int socket(int domain, int type, int protocol);",
  "int setsockopt(int fd, int level, int name, const void *val, uint32_t len);",
  "int close(int fd);",
}) do pcall(ffi.cdef, decl) end

local AF_INET, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC = 2, 1, 2048, 524288
local SOL_SOCKET, SO_REUSEADDR, EAGAIN = 1, 2, 11
local TMP = "/tmp/nuvion-http-client-spec-" .. nuvion.context().pid
-- Raw connections poll at this period whether their server was stopped: a connection our client
-- keeps in its pool ends with the test that made it, however slow the machine.
local RAW_POLL_MS = 100

-- A listening socket on 127.0.0.1 and a free port.
local function listen(backlog)
  local fd = C.socket(AF_INET, bit.bor(SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC), 0)
  assert(fd >= 0, "socket")
  C.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, ffi.new("int[1]", 1), 4)
  local addr = ffi.new("struct nv_sockaddr_in")
  addr.sin_family = AF_INET
  addr.sin_addr = 0x0100007f -- 127.0.0.1, network order on little-endian
  assert(C.bind(fd, addr, ffi.sizeof(addr)) == 0, "bind")
  assert(C.listen(fd, backlog or 64) == 0, "listen")
  local len = ffi.new("uint32_t[1]", ffi.sizeof(addr))
  assert(C.getsockname(fd, addr, len) == 0)
  local port = bit.bor(bit.rshift(addr.sin_port, 8), bit.lshift(bit.band(addr.sin_port, 0xff), 8))
  return fd, port
end

-- A raw server: handler(sock, conn_no) runs in its own task per accepted connection.
-- stop() waits for the accept loop and every handler to end.
local function raw_server(handler)
  local fd, port = listen()
  local srv = { port = port, accepts = 0, running = true, live = 1 }
  nuvion.spawn(function()
    while srv.running do
      local cfd = C.accept4(fd, nil, nil, bit.bor(SOCK_NONBLOCK, SOCK_CLOEXEC))
      if cfd >= 0 then
        srv.accepts = srv.accepts + 1
        local sock = socket.tcp()
        sock.fd = cfd
        sock:settimeout(RAW_POLL_MS)
        srv.live = srv.live + 1
        nuvion.spawn(function()
          pcall(handler, sock, srv.accepts, srv)
          sock:close()
          srv.live = srv.live - 1
        end)
      elseif ffi.errno() == EAGAIN then
        core.wait_fd(fd, "r", 50)
      end
    end
    C.close(fd)
    srv.live = srv.live - 1
  end)
  function srv.stop()
    srv.running = false
    local deadline = nuvion.monotonic_ms() + 5000
    while srv.live > 0 and nuvion.monotonic_ms() < deadline do nuvion.sleep(10) end
  end
  return srv
end

-- sock:receive that waits as long as srv runs (socket.lua keeps partial data on a timeout).
local function receive(srv, sock, pattern)
  while true do
    local data, err = sock:receive(pattern)
    if data or err ~= "timeout" or not srv.running then return data, err end
  end
end

-- Reads one request head (and a Content-Length body). Returns { line, headers, body } or nil.
local function read_request(sock, rs)
  local line = receive(rs, sock, "*l")
  if not line then return nil end
  local headers = {}
  while true do
    local h = receive(rs, sock, "*l")
    if not h then return nil end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    headers[k:lower()] = v
  end
  local body = ""
  if headers["content-length"] then body = receive(rs, sock, tonumber(headers["content-length"])) end
  return { line = line, headers = headers, body = body }
end

-- Runs argv to its end; asserts it succeeded.
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
  return table.concat(out)
end

-- Waits until something accepts TCP connections on 127.0.0.1:port (a server just started).
local function wait_port(port)
  local deadline = nuvion.monotonic_ms() + 5000
  while nuvion.monotonic_ms() < deadline do
    local s = socket.tcp()
    s:settimeout(200)
    local ok = s:connect("127.0.0.1", port)
    s:close()
    if ok then return end
    nuvion.sleep(20)
  end
  error("nothing listens on port " .. port)
end

-- One GET by spec/fixtures/http_client/fetch.lua in a child `bin/nuvion run` with env added: its output.
local function fetch_in_child(url, env)
  local p = assert(process.spawn({ helpers.bin, "run", helpers.root .. "/spec/fixtures/http_client/fetch.lua", url },
                                 { env = env, output = "pipe" }))
  local out = {}
  while true do
    local data = p:read(10000)
    if not data then break end
    out[#out + 1] = data
  end
  p:wait(10000)
  out = table.concat(out)
  -- under ASan the child is the sanitized build too: its report fails the spec
  assert(not out:find("Sanitizer", 1, true) and not out:find("runtime error:", 1, true), out)
  return out
end

-- Copies from -> to until either side of the tunnel ends (state.done) or the server stops.
local function pump(rs, from, to, state)
  while not state.done do
    local data, err = from:receiveany(65536)
    if data then
      if not to:send(data) then break end
    elseif err ~= "timeout" or not rs.running then
      break
    end
  end
  state.done = true
end

-- A CONNECT proxy: records each target, answers 200 and pipes both ways; `refuse` answers 403.
local function connect_proxy(refuse)
  local proxy = { targets = {} }
  local srv = raw_server(function(client, _, rs)
    local req = read_request(client, rs)
    if not req then return end
    local host, port = req.line:match("^CONNECT ([^:]+):(%d+) HTTP/1%.1$")
    proxy.targets[#proxy.targets + 1] = host and (host .. ":" .. port) or req.line
    if refuse or not host then
      client:send("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      return
    end
    local upstream = socket.tcp()
    upstream:settimeout(5000)
    assert(upstream:connect(host == "localhost" and "127.0.0.1" or host, tonumber(port)))
    upstream:settimeout(RAW_POLL_MS)
    client:send("HTTP/1.1 200 Connection established\r\n\r\n")
    local state = { done = false, pumping = true }
    nuvion.spawn(function()
      pump(rs, upstream, client, state)
      client:shutdown_write()
      state.pumping = false
    end)
    pump(rs, client, upstream, state)
    while state.pumping do nuvion.sleep(5) end
    upstream:close()
  end)
  proxy.port, proxy.stop = srv.port, srv.stop
  proxy.url = "http://127.0.0.1:" .. srv.port
  return proxy
end

describe("http client", function()
  local srv, base

  lazy_setup(function()
    srv = helpers.start_server({ app = helpers.apps .. "/http_client" })
    base = "http://127.0.0.1:" .. srv.port
  end)

  lazy_teardown(function()
    srv:stop()
  end)

  describe("against a nuvion server", function()
    it("gets a JSON answer with lower-case header names", function()
      local res, err = http.request({ url = base .. "/hello" })
      assert.is_nil(err)
      assert.equals(200, res.status)
      assert.equals("application/json", res.headers["content-type"])
      assert.same({ ok = true }, json.decode(res.body))
    end)

    it("posts a body with its Content-Length, headers and the query string as given", function()
      local res = assert(http.request({
        method = "POST", url = base .. "/echo?b=2&a=x%20y", body = "payload-1",
        headers = { ["X-Trace"] = "t1", ["Content-Type"] = "text/plain" },
      }))
      local echo = json.decode(res.body)
      assert.equals("POST", echo.method)
      assert.equals("payload-1", echo.body)
      assert.equals("9", echo.headers["content-length"])
      assert.equals("t1", echo.headers["x-trace"])
      assert.equals("2", echo.args.b)
      assert.equals("x y", echo.args.a)
    end)

    it("sends Content-Length: 0 for a POST without a body", function()
      local res = assert(http.request({ method = "POST", url = base .. "/echo" }))
      assert.equals("0", json.decode(res.body).headers["content-length"])
    end)

    it("reuses one pooled keep-alive connection for sequential requests", function()
      nuvion.sleep(20)
      local before = http.stats()
      for _ = 1, 5 do assert.equals(200, assert(http.request({ url = base .. "/hello" })).status) end
      local after = http.stats()
      assert.is_true(after.connects - before.connects <= 1)
      assert.is_true(after.reuses - before.reuses >= 4)
      assert.is_true(after.idle >= 1)
    end)

    it("runs concurrent requests and keeps the pool bounded", function()
      local results = helpers.parallel(40, function(i)
        local res, err = http.request({ url = base .. "/sleep?ms=20&i=" .. i })
        return res and res.status or err
      end)
      for i = 1, 40 do assert.equals(200, results[i]) end
      assert.is_true(http.stats().idle <= 16)
      assert.equals(0, http.stats().in_flight)
    end)

    it("gives up with \"timeout\" when the answer is late", function()
      local t0 = nuvion.monotonic_ms()
      local res, err = http.request({ url = base .. "/sleep?ms=2000", timeout = 200 })
      assert.is_nil(res)
      assert.equals(http.ERR_TIMEOUT, err)
      assert.is_true(nuvion.monotonic_ms() - t0 < 1000)
      -- the next request is unaffected
      assert.equals(200, assert(http.request({ url = base .. "/hello" })).status)
    end)

    it("refuses a body larger than max_body_bytes", function()
      local res, err = http.request({ url = base .. "/big?bytes=5000", max_body_bytes = 4999 })
      assert.is_nil(res)
      assert.equals(http.ERR_TOO_LARGE, err)
      res = assert(http.request({ url = base .. "/big?bytes=5000", max_body_bytes = 5000 }))
      assert.equals(5000, #res.body)
    end)

    it("refuses a head larger than max_header_bytes", function()
      local res, err = http.request({ url = base .. "/hello", max_header_bytes = 64 })
      assert.is_nil(res)
      assert.equals(http.ERR_TOO_LARGE, err)
    end)

    it("returns a 204 without a body", function()
      local res = assert(http.request({ url = base .. "/nothing" }))
      assert.equals(204, res.status)
      assert.equals("", res.body)
    end)

    it("does not follow redirects unless asked", function()
      local res = assert(http.request({ url = base .. "/redirect?to=/hello" }))
      assert.equals(302, res.status)
      assert.equals("/hello", res.headers.location)
      res = assert(http.request({ url = base .. "/redirect?to=/hello", follow_redirects = 1 }))
      assert.equals(200, res.status)
      assert.equals(base .. "/hello", res.url)
    end)

    it("turns a POST into a GET on 303 and stops after follow_redirects hops", function()
      local res = assert(http.request({ method = "POST", body = "x", follow_redirects = 1,
                                        url = base .. "/redirect?status=303&to=/headers" }))
      assert.equals(200, res.status)
      local res2, err = http.request({ url = base .. "/loop", follow_redirects = 3 })
      assert.is_nil(res2)
      assert.equals(http.ERR_TOO_MANY_REDIRECTS, err)
    end)

    it("drops credentials on a redirect to another origin", function()
      local other = "http://localhost:" .. srv.port .. "/headers"
      local res = assert(http.request({ url = base .. "/redirect?to=" .. other, follow_redirects = 1,
                                        headers = { Authorization = "Bearer sk_secret", ["X-Keep"] = "1" } }))
      local got = json.decode(res.body).headers
      assert.is_nil(got.authorization)
      assert.equals("1", got["x-keep"])
      assert.equals("localhost:" .. srv.port, got.host)
    end)

    it("works inside a server's handler, which frees its pool when the worker exits", function()
      local res = assert(http.request({ url = base .. "/fetch?url=" .. base .. "/hello" }))
      assert.equals(200, res.status)
      local got = json.decode(res.body)
      assert.equals(200, got.status)
      assert.equals('{"ok":true}', got.body)
    end)

    it("resolves localhost through evdns", function()
      local res = assert(http.request({ url = "http://localhost:" .. srv.port .. "/hello" }))
      assert.equals(200, res.status)
    end)

    it("resolves a name from the hosts file through evdns", function()
      local f = io.open("/etc/hosts")
      local hosts = f and f:read("*a") or ""
      if f then f:close() end
      local name = hosts:match("\n127%.0%.0%.1%s+([%a][%w-]*)%s") or hosts:match("^127%.0%.0%.1%s+([%a][%w-]*)")
      assert.is_not_nil(name, "no 127.0.0.1 name in /etc/hosts")
      local res = assert(http.request({ url = "http://" .. name .. ":" .. srv.port .. "/hello" }))
      assert.equals(200, res.status)
    end)
  end)

  describe("when a worker exits with a request in flight", function()
    it("frees the request, its connection and the pool (checked under ASan)", function()
      local silent = raw_server(function(sock, _, rs)
        read_request(sock, rs)
        receive(rs, sock, "*l") -- never answers; ends when the server stops
      end)
      local short = helpers.start_server({ app = helpers.apps .. "/http_client",
                                           env = { NUVION_SHUTDOWN_GRACE_MS = "200" } })
      local short_base = "http://127.0.0.1:" .. short.port
      -- a pooled connection too: the worker's pool must be freed at exit
      assert(http.request({ url = short_base .. "/fetch?url=" .. short_base .. "/hello" }))
      local outcome
      nuvion.spawn(function()
        outcome = { http.request({ url = short_base .. "/fetch?url=http://127.0.0.1:" .. silent.port .. "/" }) }
      end)
      local deadline = nuvion.monotonic_ms() + 5000
      while silent.accepts == 0 and nuvion.monotonic_ms() < deadline do nuvion.sleep(10) end
      assert.equals(1, silent.accepts)
      local how, code = short:stop() -- raises on a sanitizer report from the server
      assert.equals("exit", how)
      assert.equals(0, code)
      while outcome == nil and nuvion.monotonic_ms() < deadline do nuvion.sleep(10) end
      assert.is_nil(outcome[1])
      silent.stop()
    end)
  end)

  describe("across a live reload", function()
    it("keeps the worker's pool for the new generation and frees it at exit", function()
      local rl = helpers.start_server({ app = helpers.apps .. "/http_client" })
      local rl_base = "http://127.0.0.1:" .. rl.port
      local fetch = rl_base .. "/fetch?url=" .. rl_base .. "/hello"
      assert.equals(200, assert(http.request({ url = fetch })).status)
      rl:signal("HUP")
      assert.is_truthy(rl:wait_log({ msg = "generation 2 serving" }, 5000))
      assert.is_truthy(rl:wait_log({ msg = "generation 1 closed" }, 5000))
      local res = assert(http.request({ url = fetch }))
      local got = json.decode(res.body)
      assert.equals(200, got.status)
      assert.is_true(got.stats.reuses >= 1)
      assert.equals("exit", (rl:stop()))
    end)
  end)

  describe("errors", function()
    it("says \"connection refused\" and never echoes a secret", function()
      local fd, port = listen()
      C.close(fd)
      local res, err = http.request({ url = "http://127.0.0.1:" .. port .. "/",
                                      headers = { Authorization = "Bearer sk_live_secret" }, body = "card=4242" })
      assert.is_nil(res)
      assert.equals(http.ERR_REFUSED, err)
    end)

    it("says \"connect timeout\" when the connection is not accepted in time", function()
      -- A backlog of 0 holds one pending connection; the kernel drops the next SYNs.
      local fd, port = listen(0)
      local filler = socket.tcp()
      filler:settimeout(500)
      filler:connect("127.0.0.1", port)
      local t0 = nuvion.monotonic_ms()
      local res, err = http.request({ url = "http://127.0.0.1:" .. port .. "/", connect_timeout = 300,
                                      timeout = 5000 })
      assert.is_nil(res)
      assert.equals(http.ERR_CONNECT_TIMEOUT, err)
      assert.is_true(nuvion.monotonic_ms() - t0 < 2000)
      filler:close()
      C.close(fd)
    end)

    it("fails an unresolvable name within the timeout", function()
      local t0 = nuvion.monotonic_ms()
      local res, err = http.request({ url = "http://nonexistent.invalid/", timeout = 1500 })
      assert.is_nil(res)
      assert.is_true(err:find("dns", 1, true) == 1 or err:find("timeout", 1, true) ~= nil, err)
      assert.is_true(nuvion.monotonic_ms() - t0 < 3000)
    end)

    it("raises on a caller's bugs", function()
      assert.has_error(function() http.request() end, "request options must be a table")
      assert.has_error(function() http.request({}) end, "url must be a string")
      assert.has_error(function() http.request({ url = base, body = {} }) end, "body must be a string")
      assert.has_error(function()
        http.request({ url = base, headers = { ["X-Bad"] = "a\r\nInjected: 1" } })
      end)
      assert.has_error(function() http.request({ url = base, headers = { ["Content-Length"] = "1" } }) end)
      assert.has_error(function() http.request({ url = base, timeout = -1 }) end)
      local res, err = http.request({ url = "ftp://example.com/" })
      assert.is_nil(res)
      assert.matches("http", err)
    end)

    it("refuses to wait inside a nested coroutine", function()
      local co = coroutine.wrap(function() return pcall(http.request, { url = base .. "/hello" }) end)
      local ok, err = co()
      assert.is_false(ok)
      assert.matches("nested coroutine", err, 1, true)
    end)
  end)

  describe("against a raw server", function()
    it("decodes a chunked body and reuses the connection after it", function()
      local raw = raw_server(function(sock, _, rs)
        while read_request(sock, rs) do
          sock:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n" ..
                    "5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n")
        end
      end)
      local url = "http://127.0.0.1:" .. raw.port .. "/"
      for _ = 1, 3 do
        local res = assert(http.request({ url = url }))
        assert.equals("hello world", res.body)
        assert.equals("chunked", res.headers["x-kind"])
      end
      assert.equals(1, raw.accepts)
      local res, err = http.request({ url = url, max_body_bytes = 10 })
      assert.is_nil(res)
      assert.equals(http.ERR_TOO_LARGE, err)
      raw.stop()
    end)

    it("reads a head and a chunked body that arrive in small pieces", function()
      local answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                     "a\r\n0123456789\r\n10\r\nabcdefghijklmnop\r\n0\r\n\r\n"
      local raw = raw_server(function(sock, _, rs)
        read_request(sock, rs)
        for i = 1, #answer, 7 do
          sock:send(answer:sub(i, i + 6))
          nuvion.sleep(1)
        end
      end)
      local res = assert(http.request({ url = "http://127.0.0.1:" .. raw.port .. "/" }))
      assert.equals("0123456789abcdefghijklmnop", res.body)
      raw.stop()
    end)

    it("sends and receives a megabyte", function()
      local big = string.rep("0123456789abcdef", 65536)
      local res = assert(http.request({ method = "POST", url = base .. "/echo", body = big,
                                        headers = { ["Content-Type"] = "text/plain" } }))
      assert.equals(200, res.status)
      assert.equals(big, json.decode(res.body).body)
      res = assert(http.request({ url = base .. "/big?bytes=" .. #big }))
      assert.equals(#big, #res.body)
    end)

    it("reads no body for HEAD and 304 whatever their headers say", function()
      local raw = raw_server(function(sock, _, rs)
        while true do
          local req = read_request(sock, rs)
          if not req then return end
          if req.line:match("^HEAD") then
            sock:send("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
          else
            sock:send("HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"e\"\r\n\r\n")
          end
        end
      end)
      local url = "http://127.0.0.1:" .. raw.port .. "/"
      local res = assert(http.request({ method = "HEAD", url = url }))
      assert.equals(200, res.status)
      assert.equals("100", res.headers["content-length"])
      assert.equals("", res.body)
      res = assert(http.request({ url = url }))
      assert.equals(304, res.status)
      assert.equals("", res.body)
      assert.equals(1, raw.accepts)
      raw.stop()
    end)

    it("reads a close-delimited HTTP/1.0 body and joins repeated headers", function()
      local raw = raw_server(function(sock, _, rs)
        read_request(sock, rs)
        sock:send("HTTP/1.0 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nuntil the end")
      end)
      local res = assert(http.request({ url = "http://127.0.0.1:" .. raw.port .. "/" }))
      assert.equals("until the end", res.body)
      assert.equals("a=1, b=2", res.headers["set-cookie"])
      raw.stop()
    end)

    it("skips a 100 Continue before the answer", function()
      local raw = raw_server(function(sock, _, rs)
        read_request(sock, rs)
        sock:send("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
      end)
      local res = assert(http.request({ method = "POST", body = "x", url = "http://127.0.0.1:" .. raw.port .. "/" }))
      assert.equals(201, res.status)
      assert.equals("ok", res.body)
      raw.stop()
    end)

    it("parses more heads than one read callback takes, over several turns of the loop", function()
      local raw = raw_server(function(sock, _, rs)
        read_request(sock, rs)
        sock:send(string.rep("HTTP/1.1 100 Continue\r\n\r\n", 200) ..
                  "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
      end)
      local res = assert(http.request({ url = "http://127.0.0.1:" .. raw.port .. "/", timeout = 2000 }))
      assert.equals("done", res.body)
      raw.stop()
    end)

    it("refuses a malformed answer and a body cut short", function()
      local raw = raw_server(function(sock, n, rs)
        read_request(sock, rs)
        if n == 1 then sock:send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
        else sock:send("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello") end
      end)
      local url = "http://127.0.0.1:" .. raw.port .. "/"
      local res, err = http.request({ url = url })
      assert.is_nil(res)
      assert.matches("^bad response", err)
      res, err = http.request({ url = url })
      assert.is_nil(res)
      assert.equals("connection closed before the end of the body", err)
      raw.stop()
    end)

    -- The server answers the first request of each connection, then closes the connection when
    -- the second arrives, as a server whose keep-alive timer fired just then would.
    local function closing_server()
      return raw_server(function(sock, _, rs)
        if not read_request(sock, rs) then return end
        sock:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        read_request(sock, rs)
      end)
    end

    it("retries a GET once when the pooled connection was closed under it", function()
      local raw = closing_server()
      local url = "http://127.0.0.1:" .. raw.port .. "/"
      assert(http.request({ url = url }))
      local retries = http.stats().retries
      local res = assert(http.request({ url = url }))
      assert.equals("ok", res.body)
      assert.equals(retries + 1, http.stats().retries)
      assert.equals(2, raw.accepts)
      raw.stop()
    end)

    it("does not retry a POST on a closed pooled connection", function()
      local raw = closing_server()
      local url = "http://127.0.0.1:" .. raw.port .. "/"
      assert(http.request({ url = url }))
      local res, err = http.request({ method = "POST", url = url, body = "once" })
      assert.is_nil(res)
      assert.equals(http.ERR_CLOSED, err)
      assert.equals(1, raw.accepts)
      raw.stop()
    end)
  end)

  describe("over TLS", function()
    local tls_port, s_server

    lazy_setup(function()
      run({ "mkdir", "-p", TMP })
      run({ "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", TMP .. "/ca.key", "-out", TMP .. "/ca.pem", "-subj", "/CN=nuvion test ca" })
      run({ "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", TMP .. "/srv.key",
            "-out", TMP .. "/srv.csr", "-subj", "/CN=localhost" })
      local ext = io.open(TMP .. "/ext.cnf", "w")
      ext:write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
      ext:close()
      run({ "openssl", "x509", "-req", "-in", TMP .. "/srv.csr", "-CA", TMP .. "/ca.pem",
            "-CAkey", TMP .. "/ca.key", "-CAcreateserial", "-days", "2", "-out", TMP .. "/srv.pem",
            "-extfile", TMP .. "/ext.cnf" })
      local fd, port = listen()
      C.close(fd)
      tls_port = port
      s_server = assert(process.spawn({ "openssl", "s_server", "-quiet", "-accept", tostring(port),
        "-cert", TMP .. "/srv.pem", "-key", TMP .. "/srv.key", "-www" }, { output = "null" }))
      wait_port(port)
    end)

    lazy_teardown(function()
      s_server:kill("TERM")
      s_server:wait(5000)
      run({ "rm", "-rf", TMP })
    end)

    it("verifies the peer with ca_file, by name (SNI) and by IP", function()
      for _, host in ipairs({ "localhost", "127.0.0.1" }) do
        local res, err = http.request({ url = "https://" .. host .. ":" .. tls_port .. "/",
                                        ca_file = TMP .. "/ca.pem" })
        assert.is_nil(err)
        assert.equals(200, res.status)
        assert.matches("s_server", res.body, 1, true)
      end
    end)

    it("fails verification against the system CAs", function()
      local res, err = http.request({ url = "https://localhost:" .. tls_port .. "/" })
      assert.is_nil(res)
      assert.matches("^certificate verify failed: ", err)
    end)

    it("fails on a hostname mismatch", function()
      local f = io.open("/etc/hosts")
      local hosts = f and f:read("*a") or ""
      if f then f:close() end
      local name
      for n in hosts:gmatch("127%.0%.0%.1%s+([%a][%w-]*)") do if n ~= "localhost" then name = n end end
      local host = name or "127.0.0.2"
      local res, err = http.request({ url = "https://" .. host .. ":" .. tls_port .. "/",
                                      ca_file = TMP .. "/ca.pem" })
      assert.is_nil(res)
      assert.matches("^certificate verify failed: .*mismatch", err)
      assert.equals(1, err:find(http.ERR_CERT, 1, true))
    end)

    it("skips verification only when verify = false", function()
      local res = assert(http.request({ url = "https://localhost:" .. tls_port .. "/", verify = false }))
      assert.equals(200, res.status)
    end)

    it("takes the CA file from NUVION_HTTP_CA_FILE", function()
      local out = fetch_in_child("https://localhost:" .. tls_port .. "/", { NUVION_HTTP_CA_FILE = TMP .. "/ca.pem" })
      assert.matches("^200 ", out)
    end)

    it("sends the name as SNI: the server picks the certificate by it", function()
      -- Without SNI this server presents the CA's own certificate, which names no host.
      local fd, port = listen()
      C.close(fd)
      local sni = assert(process.spawn({ "openssl", "s_server", "-quiet", "-accept", tostring(port),
        "-cert", TMP .. "/ca.pem", "-key", TMP .. "/ca.key", "-servername", "localhost",
        "-cert2", TMP .. "/srv.pem", "-key2", TMP .. "/srv.key", "-www" }, { output = "null" }))
      wait_port(port)
      local res, err = http.request({ url = "https://localhost:" .. port .. "/", ca_file = TMP .. "/ca.pem" })
      local res_ip, err_ip = http.request({ url = "https://127.0.0.1:" .. port .. "/", ca_file = TMP .. "/ca.pem" })
      sni:kill("TERM")
      sni:wait(5000)
      assert.is_nil(err)
      assert.equals(200, res.status)
      assert.is_nil(res_ip) -- an IP literal is never sent as SNI (RFC 6066)
      assert.matches("^certificate verify failed: .*mismatch", err_ip)
    end)

    it("refuses a server that speaks only TLS 1.1, even with verify = false", function()
      local fd, port = listen()
      C.close(fd)
      local old = assert(process.spawn({ "openssl", "s_server", "-quiet", "-accept", tostring(port),
        "-cert", TMP .. "/srv.pem", "-key", TMP .. "/srv.key", "-www", "-tls1_1",
        "-cipher", "DEFAULT@SECLEVEL=0" }, { output = "null" }))
      wait_port(port)
      local res, err = http.request({ url = "https://localhost:" .. port .. "/", verify = false })
      old:kill("TERM")
      old:wait(5000)
      assert.is_nil(res)
      assert.matches("^tls handshake failed: .*protocol version", err)
    end)

    it("reports a missing ca_file", function()
      local res, err = http.request({ url = "https://localhost:" .. tls_port .. "/", ca_file = TMP .. "/none.pem" })
      assert.is_nil(res)
      assert.equals("cannot load ca_file", err)
    end)

    describe("through a CONNECT proxy", function()
      local proxy

      before_each(function() proxy = connect_proxy() end)
      after_each(function() proxy.stop() end)

      it("tunnels https and verifies the origin inside the tunnel", function()
        local res = assert(http.request({ url = "https://localhost:" .. tls_port .. "/", proxy = proxy.url,
                                          ca_file = TMP .. "/ca.pem" }))
        assert.equals(200, res.status)
        assert.same({ "localhost:" .. tls_port }, proxy.targets)
        local _, err = http.request({ url = "https://localhost:" .. tls_port .. "/", proxy = proxy.url })
        assert.matches("^certificate verify failed", err)
      end)

      it("tunnels plain http with CONNECT too, and pools the tunnel", function()
        for _ = 1, 3 do
          assert.equals(200, assert(http.request({ url = base .. "/hello", proxy = proxy.url })).status)
        end
        assert.same({ "127.0.0.1:" .. srv.port }, proxy.targets)
      end)

      it("is bypassed with proxy = false", function()
        assert(http.request({ url = base .. "/hello", proxy = false }))
        assert.same({}, proxy.targets)
      end)

      it("takes the proxy from NUVION_EGRESS_PROXY", function()
        local out = fetch_in_child(base .. "/hello", { NUVION_EGRESS_PROXY = proxy.url })
        assert.matches("200 {\"ok\":true}", out, 1, true)
        assert.same({ "127.0.0.1:" .. srv.port }, proxy.targets)
      end)
    end)

    it("reports a proxy that refuses the tunnel", function()
      local proxy = connect_proxy(true)
      local res, err = http.request({ url = "https://localhost:" .. tls_port .. "/", proxy = proxy.url })
      assert.is_nil(res)
      assert.equals("proxy refused CONNECT: 403", err)
      proxy.stop()
    end)
  end)
end)
