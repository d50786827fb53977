-- Tasks and primitives, run inside this spec process (specs run in the host).
local nuvion = require "nuvion"

describe("tasks", function()
  it("sleep waits at least the time asked", function()
    for _, ms in ipairs({ 0, 1, 5, 20 }) do
      local t0 = nuvion.monotonic_ms()
      nuvion.sleep(ms)
      assert.is_true(nuvion.monotonic_ms() - t0 >= ms, "slept less than " .. ms)
    end
  end)

  it("sleep works inside pcall", function()
    local ok = pcall(function() nuvion.sleep(2) end)
    assert.is_true(ok)
  end)

  it("refuses to wait inside a nested coroutine, with a clear error", function()
    local co = coroutine.wrap(function() return pcall(nuvion.sleep, 1) end)
    local ok, err = co()
    assert.is_false(ok)
    assert.matches("nested coroutine", err, 1, true)
  end)

  it("rejects negative and huge sleeps", function()
    assert.has_error(function() nuvion.sleep(-1) end)
    assert.has_error(function() nuvion.sleep(1e12) end)
  end)

  it("runs many tasks concurrently", function()
    local done = 0
    for _ = 1, 200 do
      nuvion.spawn(function() nuvion.sleep(20) done = done + 1 end)
    end
    local t0 = nuvion.monotonic_ms()
    while done < 200 do nuvion.sleep(1) end
    assert.is_true(nuvion.monotonic_ms() - t0 < 500)
  end)

  it("passes arguments to timers and fires repeating timers until cancelled", function()
    local got, ticks = nil, 0
    nuvion.timer.at(1, function(a, b) got = a .. b end, "x", "y")
    local id = nuvion.timer.every(2, function() ticks = ticks + 1 end)
    nuvion.sleep(25)
    assert.is_true(nuvion.timer.cancel(id))
    local at_cancel = ticks
    nuvion.sleep(10)
    assert.equals("xy", got)
    assert.is_true(at_cancel >= 5)
    assert.equals(at_cancel, ticks)
    assert.is_false(nuvion.timer.cancel(id))
  end)

  it("does not overlap the ticks of a slow repeating timer", function()
    local running, overlap, runs = 0, false, 0
    local id = nuvion.timer.every(1, function()
      running = running + 1
      if running > 1 then overlap = true end
      nuvion.sleep(5)
      runs = runs + 1
      running = running - 1
    end)
    nuvion.sleep(40)
    nuvion.timer.cancel(id)
    nuvion.sleep(10)
    assert.is_false(overlap)
    assert.is_true(runs >= 3)
  end)

  it("logs a failing timer and keeps running", function()
    nuvion.timer.at(0, function() error("timer broke on purpose") end)
    nuvion.sleep(5)
    assert.is_true(true)
  end)

  it("loads a module that waits at its top level", function()
    package.loaded["spec_tmp_waiting"] = nil
    package.preload["spec_tmp_waiting"] = function()
      nuvion.sleep(5)
      return { ok = true }
    end
    -- two tasks require it at once: both get the same module, loaded once
    local a, b
    nuvion.spawn(function() a = require("spec_tmp_waiting") end)
    nuvion.spawn(function() b = require("spec_tmp_waiting") end)
    nuvion.sleep(30)
    assert.is_true(a.ok)
    assert.equals(a, b)
  end)

  it("reports a module that is not found with the places it looked", function()
    local ok, err = pcall(require, "no.such.module")
    assert.is_false(ok)
    assert.matches("module 'no.such.module' not found", err, 1, true)
  end)
end)
