-- bin/nuvion run: a script on the event loop; its exit status is the script's.
local helpers = require "spec.helpers"
local process = require "nuvion.process"

local function run(source, args)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(source)
  f:close()
  local argv = { helpers.bin, "run", path }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local p = assert(process.spawn(argv, { output = "pipe" }))
  local out = {}
  while true do
    local line = p:line(10000)
    if not line then break end
    out[#out + 1] = line
  end
  local how, code = p:wait(10000)
  p:close()
  os.remove(path)
  return how, code, table.concat(out, "\n")
end

describe("bin/nuvion run", function()
  it("exits with the number the script returns", function()
    local how, code = run("return 7")
    assert.equals("exit", how)
    assert.equals(7, code)
  end)

  it("exits 0 when the script returns nothing", function()
    assert.equals(0, select(2, run("local x = 1")))
  end)

  it("exits 1 and prints the error with its traceback when the script fails", function()
    local _, code, out = run("local function f() error('script broke') end f()")
    assert.equals(1, code)
    assert.matches("script broke", out, 1, true)
    assert.matches("stack traceback", out, 1, true)
  end)

  it("passes arguments as ... and arg", function()
    local _, code, out = run("local a, b = ... print(a, b, arg[1], arg[2]) return #arg", { "x", "y" })
    assert.equals(2, code)
    assert.matches("x\ty\tx\ty", out, 1, true)
  end)

  it("lets a script sleep and run timers on the loop", function()
    local _, code, out = run([[
      local nuvion = require "nuvion"
      local got = {}
      nuvion.timer.at(10, function() got[#got + 1] = "timer" end)
      nuvion.spawn(function() got[#got + 1] = "spawned" end)
      nuvion.sleep(30)
      print(table.concat(got, ","))
      return 0
    ]])
    assert.equals(0, code)
    assert.equals("spawned,timer", out)
  end)

  it("exits when the script ends, with timers still pending or running, and frees them", function()
    local how, code = run([[
      local nuvion = require "nuvion"
      nuvion.timer.every(5, function() nuvion.sleep(100) end)
      nuvion.timer.at(60000, function() end)
      nuvion.sleep(20)
      return 4
    ]])
    assert.equals("exit", how)
    assert.equals(4, code) -- under ASan (make test runs this tier so) a leak would change it
  end)

  it("frees timers above a hole left by a cancelled one", function()
    local _, code = run([[
      local nuvion = require "nuvion"
      nuvion.timer.every(5, function() end)
      local b = nuvion.timer.every(5, function() end)
      nuvion.timer.every(5, function() nuvion.sleep(50) end)
      nuvion.timer.cancel(b)
      nuvion.sleep(20)
      return 5
    ]])
    assert.equals(5, code) -- under ASan a missed timer is a leak, and a different status
  end)

  it("reports a syntax error and exits 1", function()
    local _, code, out = run("this is not lua (")
    assert.equals(1, code)
    assert.matches("expected", out, 1, true)
  end)
end)
