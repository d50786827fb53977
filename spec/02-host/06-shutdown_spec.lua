-- SIGTERM: stop accepting, let in-flight requests finish, exit within 25 s.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"

describe("shutdown", function()
  it("finishes in-flight requests, closes idle ones and exits 0", function()
    local srv = helpers.start_server({ workers = 2 })
    local idle = assert(helpers.client(srv.port))
    assert.equals(200, assert(idle:request({ path = "/hello" })).status)
    local slow
    nuvion.spawn(function()
      slow = helpers.request(srv.port, { path = "/sleep?ms=400" })
    end)
    nuvion.sleep(50)
    local how, code, took_ms = srv:stop(25000)
    assert.equals("exit", how)
    assert.equals(0, code)
    assert.is_true(took_ms < 25000)
    assert.is_true(took_ms >= 300, "stopped before the request finished: " .. took_ms)
    assert.is_truthy(slow)
    assert.equals(200, slow.status)
    assert.equals("close", slow.headers["connection"])
    -- the idle keep-alive connection was closed by the server
    assert.equals("", (idle.sock:receive("*a")))
    idle:close()
    -- nothing listens any more
    assert.is_nil(helpers.request(srv.port, { path = "/hello" }))
  end)

  it("exits at NUVION_SHUTDOWN_GRACE_MS when a handler never finishes", function()
    local srv = helpers.start_server({ env = { NUVION_HTTP_HANDLER_TIMEOUT_MS = "600000",
                                               NUVION_SHUTDOWN_GRACE_MS = "500" } })
    nuvion.spawn(function() helpers.request(srv.port, { path = "/sleep?ms=60000" }) end)
    nuvion.sleep(50)
    local how, code, took_ms = srv:stop(30000)
    assert.equals("exit", how)
    assert.equals(0, code)
    assert.is_true(took_ms >= 450 and took_ms < 3000, "took " .. took_ms .. " ms")
    assert.is_truthy(srv:wait_log({ msg = "drain deadline passed with 1 connections open, exiting" }))
  end)

  it("refuses a drain deadline above 25 s", function()
    local process = require "nuvion.process"
    local p = assert(process.spawn({ helpers.bin, "serve", "core" },
      { env = { NUVION_SHUTDOWN_GRACE_MS = "26000", PORT = "0" }, output = "pipe" }))
    local how, code = p:wait(5000)
    assert.equals("exit", how)
    assert.equals(2, code)
    assert.matches("NUVION_SHUTDOWN_GRACE_MS: 26000 is outside %[0, 25000%]", p:line(1000) or "")
    p:close()
  end)
end)

describe("a server started with NUVION_EXIT_WITH_PARENT=1", function()
  it("stops when the process that started it dies", function()
    local process = require "nuvion.process"
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write([[
      local helpers = dofile((require "nuvion").context().root .. "/spec/helpers.lua")
      local srv = helpers.start_server()
      print(srv.proc.pid)
      io.stdout:flush()
      os.exit(0)
    ]])
    f:close()
    local starter = assert(process.spawn({ helpers.bin, "run", path }, { output = "pipe" }))
    local pid = tonumber(starter:line(10000))
    starter:wait(10000)
    starter:close()
    os.remove(path)
    assert.is_number(pid)
    local deadline = nuvion.monotonic_ms() + 10000
    local alive = true
    while alive and nuvion.monotonic_ms() < deadline do
      local stat = io.open("/proc/" .. pid .. "/stat")
      alive = stat ~= nil and not stat:read("*a"):match("^%d+ %b() Z")
      if stat then stat:close() end
      if alive then nuvion.sleep(50) end
    end
    assert.is_false(alive)
  end)
end)
