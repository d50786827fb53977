-- Live reload by generation: SIGHUP builds a new Lua state from the files on
-- disk; in-flight requests finish on the old one; a broken reload keeps the
-- old generation serving.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"

local function copy_app(dir)
  os.execute("mkdir -p " .. dir) -- spec set-up only: the host forbids this in services
  for _, name in ipairs({ "init.lua", "slow_module.lua" }) do
    local src = assert(io.open(helpers.apps .. "/basic/" .. name, "rb"))
    local dst = assert(io.open(dir .. "/" .. name, "wb"))
    dst:write(src:read("*a"))
    src:close()
    dst:close()
  end
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

describe("reload", function()
  local srv, dir, original

  lazy_setup(function()
    dir = os.tmpname()
    os.remove(dir)
    copy_app(dir)
    original = assert(io.open(dir .. "/init.lua")):read("*a")
    srv = helpers.start_server({ app = dir, workers = 2 })
  end)
  lazy_teardown(function()
    srv:stop()
    os.execute("rm -rf " .. dir)
  end)

  it("serves the new code after SIGHUP and closes the old generation", function()
    write(dir .. "/init.lua", original:gsub('return 200, { ok = true }', 'return 200, { ok = "v2" }'))
    srv:signal("HUP")
    assert.is_truthy(srv:wait_log({ msg = "generation 2 serving" }, 5000, 2))
    local res = assert(helpers.request(srv.port, { path = "/hello" }))
    assert.same({ ok = "v2" }, res.json())
    assert.is_truthy(srv:wait_log({ msg = "generation 1 closed" }, 5000, 2))
  end)

  it("finishes in-flight requests on the old generation", function()
    local results = {}
    nuvion.spawn(function()
      results.slow = helpers.request(srv.port, { path = "/sleep?ms=300" })
    end)
    nuvion.sleep(50)
    srv:signal("HUP")
    assert.is_truthy(srv:wait_log({ msg = "generation 3 serving" }, 5000, 2))
    while not results.slow do nuvion.sleep(10) end
    assert.equals(200, results.slow.status)
    assert.same({ slept = 300 }, results.slow.json())
  end)

  it("keeps the old generation serving when the new code does not load", function()
    write(dir .. "/init.lua", "this is not lua (")
    local before = #srv:logs({ level = "error" })
    srv:signal("HUP")
    local deadline = nuvion.monotonic_ms() + 5000
    while #srv:logs({ level = "error" }) < before + 2 and nuvion.monotonic_ms() < deadline do
      nuvion.sleep(10)
    end
    local errors = srv:logs({ level = "error" })
    assert.matches("failed to load, the previous one keeps serving", errors[#errors].msg, 1, true)
    local res = assert(helpers.request(srv.port, { path = "/hello" }))
    assert.equals(200, res.status)
    assert.same({ ok = "v2" }, res.json())
    write(dir .. "/init.lua", original)
  end)

  it("drops no request across 10 reloads under load", function()
    write(dir .. "/init.lua", original)
    local stop, statuses, failures = false, {}, {}
    local clients = 8
    local running = clients
    for i = 1, clients do
      nuvion.spawn(function()
        local c = helpers.client(srv.port)
        while not stop do
          local res, err
          if c then res, err = c:request({ path = "/hello" }) end
          if res then
            statuses[res.status] = (statuses[res.status] or 0) + 1
            if res.headers["connection"] == "close" then c:close() c = helpers.client(srv.port) end
          else
            failures[#failures + 1] = tostring(err)
            c = helpers.client(srv.port)
          end
          if i == 1 then nuvion.sleep(0) end
        end
        if c then c:close() end
        running = running - 1
      end)
    end
    for _ = 1, 10 do
      nuvion.sleep(60)
      srv:signal("HUP")
    end
    nuvion.sleep(200)
    stop = true
    while running > 0 do nuvion.sleep(5) end
    assert.same({}, failures)
    local total, ok = 0, statuses[200] or 0
    for _, n in pairs(statuses) do total = total + n end
    assert.is_true(total > 100, "only " .. total .. " requests")
    assert.equals(total, ok)
  end)
end)
