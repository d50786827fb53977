-- Queue workers as processes: `bin/nuvion work <service>` (SIGKILL recovery through the
-- stalled check, SIGTERM drain and release) and NUVION_WORKERS_IN_WEB=1 inside
-- `bin/nuvion serve`, with the fixture service spec/fixtures/apps/queue_worker against
-- the test Redis. Processes are started here and signalled by pid.
local queue = require "nuvion.queue"
local redis = require "nuvion.redis"
local process = require "nuvion.process"
local nuvion = require "nuvion"
local json = require "nuvion.json"
local helpers = require "spec.helpers"

local URL = os.getenv("NUVION_TEST_REDIS_URL")
local RUN = "spec81-" .. nuvion.random_hex(4)
local APP = helpers.apps .. "/queue_worker"
local seq = 0
local r

local function wait_until(fn, timeout_ms, what)
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 5000)
  while nuvion.monotonic_ms() < deadline do
    local v = fn()
    if v then return v end
    nuvion.sleep(10)
  end
  error("timed out waiting for " .. (what or "a condition"), 2)
end

-- A `bin/nuvion work` process on a fresh queue; its output lines are collected.
local function start_work(env_extra)
  seq = seq + 1
  local env = { REDIS_URL = URL, QUEUE_NAME = RUN .. "-" .. seq, NUVION_ROOT = helpers.root }
  for k, v in pairs(env_extra or {}) do env[k] = v end
  local name = env.QUEUE_NAME
  local p = assert(process.spawn({ helpers.bin, "work", APP }, { env = env, output = "pipe" }))
  local w = { proc = p, lines = {}, name = name, q = queue.new(name, { redis = URL }) }
  nuvion.spawn(function()
    while true do
      local line = p:line(60000)
      if line then w.lines[#w.lines + 1] = line elseif p.fd == nil then return end
    end
  end)
  function w.has(text)
    for _, line in ipairs(w.lines) do
      if line:find(text, 1, true) then return true end
    end
    return false
  end
  -- a sanitizer report (make test runs this tier on the ASan build too) fails the spec
  function w.assert_clean()
    nuvion.sleep(20) -- the reader task collects the last lines
    for _, text in ipairs({ "Sanitizer", "runtime error:" }) do
      assert(not w.has(text), "sanitizer report from the worker:\n" .. table.concat(w.lines, "\n"))
    end
  end
  wait_until(function() return w.has("queue workers started") end, 10000, "the worker process to start")
  return w
end

local function spec_log(name)
  return assert(r:call("LRANGE", "bull:" .. name .. ":spec-log", 0, -1))
end

describe("queue worker processes", function()
  lazy_setup(function()
    r = assert(redis.connect(URL))
  end)

  lazy_teardown(function()
    local cursor = "0"
    repeat
      local res = assert(r:call("SCAN", cursor, "MATCH", "bull:" .. RUN .. "*", "COUNT", 1000))
      cursor = res[1]
      if #res[2] > 0 then assert(r:call("DEL", unpack(res[2]))) end
    until cursor == "0"
  end)

  it("bin/nuvion work runs the service's workers.lua", function()
    local w = start_work()
    local id = assert(w.q:add("x", { sleep_ms = 0 }))
    wait_until(function() return w.q:get_state(id) == "completed" end)
    assert.equals(w.proc.pid, w.q:get_job(id).returnvalue.pid)
    assert(w.proc:kill("TERM"))
    local how, code = w.proc:wait(10000)
    assert.equals("exit", how)
    assert.equals(0, code)
    w.assert_clean()
  end)

  it("recovers the job of a worker killed with SIGKILL, in another worker process", function()
    local env = { QUEUE_LOCK_MS = "1000", QUEUE_STALLED_MS = "1000" }
    local first = start_work(env)
    local id = assert(first.q:add("x", { sleep_ms = 60000 }))
    wait_until(function() return #spec_log(first.name) == 1 end, 5000, "the job to start")
    assert(first.proc:kill("KILL"))
    assert.equals("signal", (first.proc:wait(5000)))
    assert.equals("active", first.q:get_state(id)) -- its worker is gone; its lock expires
    env.QUEUE_NAME = first.name
    local t0 = nuvion.monotonic_ms()
    local second = start_work(env)
    local job = wait_until(function()
      local j = first.q:get_job(id)
      return j and j.stalledCounter == 1 and j
    end, 8000, "the stalled check to re-queue the job")
    local took = nuvion.monotonic_ms() - t0
    assert.truthy(took < 5000, "recovered after " .. took .. " ms")
    assert.equals(1, job.stalledCounter)
    local log = wait_until(function()
      local l = spec_log(first.name)
      return #l >= 2 and l
    end, 5000, "the second process to start the job")
    local seen = table.concat(log, " ")
    assert.equals("start:" .. id .. ":" .. first.proc.pid, log[1], seen)
    assert.equals("start:" .. id .. ":" .. second.proc.pid, log[2], seen)
    local stalled
    for _, e in ipairs(assert(first.q:events(100))) do
      if e.event == "stalled" and e.jobId == id then stalled = true end
    end
    assert.truthy(stalled)
    second.proc:kill("KILL")
    second.proc:wait(5000)
  end)

  it("fails a job that kills its worker every time (poison), past max stalled count", function()
    local env = { QUEUE_LOCK_MS = "1000", QUEUE_STALLED_MS = "1000" }
    local w = start_work(env)
    local id = assert(w.q:add("x", { sleep_ms = 60000 }))
    env.QUEUE_NAME = w.name
    for round = 1, 2 do
      wait_until(function() return #spec_log(w.name) == round end, 8000, "start " .. round)
      assert(w.proc:kill("KILL"))
      w.proc:wait(5000)
      local name = w.name
      w = start_work(env)
      assert.equals(name, w.name)
    end
    wait_until(function() return w.q:get_state(id) == "failed" end, 8000, "the poison job to fail")
    assert.equals("job stalled more than allowable limit", w.q:get_job(id).failedReason)
    assert.equals(2, #spec_log(w.name)) -- not run a third time
    w.proc:kill("KILL")
    w.proc:wait(5000)
  end)

  it("drains on SIGTERM: jobs in flight finish, no new job is taken, exit 0", function()
    local w = start_work()
    local a = assert(w.q:add("x", { sleep_ms = 800 }))
    wait_until(function() return #spec_log(w.name) == 1 end)
    local t0 = nuvion.monotonic_ms()
    assert(w.proc:kill("TERM"))
    nuvion.sleep(100)
    local b = assert(w.q:add("x", { sleep_ms = 0 }))
    local how, code = w.proc:wait(10000)
    local took = nuvion.monotonic_ms() - t0
    assert.equals("exit", how)
    assert.equals(0, code)
    assert.truthy(took >= 600 and took < 3000, "exited after " .. took .. " ms")
    assert.equals("completed", w.q:get_state(a))
    assert.equals("waiting", w.q:get_state(b))
    assert.truthy(w.has("SIGTERM: stopping the queue workers"))
    w.assert_clean()
  end)

  it("releases the jobs still running when the grace ends, and exits 0", function()
    local w = start_work({ NUVION_WORKER_GRACE_MS = "300" })
    local id = assert(w.q:add("x", { sleep_ms = 30000 }))
    wait_until(function() return #spec_log(w.name) == 1 end)
    local t0 = nuvion.monotonic_ms()
    assert(w.proc:kill("TERM"))
    local how, code = w.proc:wait(10000)
    local took = nuvion.monotonic_ms() - t0
    assert.equals("exit", how)
    assert.equals(0, code)
    assert.truthy(took >= 250 and took < 2500, "exited after " .. took .. " ms")
    assert.equals("waiting", w.q:get_state(id))
    assert.equals(0, r:call("EXISTS", "bull:" .. w.name .. ":" .. id .. ":lock"))
    assert.truthy(w.has("jobs released at shutdown"))
    w.assert_clean()
  end)

  it("exits 1 with a clear message for a service without workers.lua", function()
    local p = assert(process.spawn({ helpers.bin, "work", helpers.apps .. "/basic" },
                                   { env = { REDIS_URL = URL, NUVION_ROOT = helpers.root }, output = "pipe" }))
    local out = {}
    while true do
      local line = p:line(10000)
      if not line then break end
      out[#out + 1] = line
    end
    local how, code = p:wait(10000)
    assert.equals("exit", how)
    assert.equals(1, code)
    assert.matches("no workers.lua", table.concat(out, "\n"), 1, true)
  end)

  it("hands the in-web workers to the new generation on SIGHUP; the old one finishes its job", function()
    seq = seq + 1
    local name = RUN .. "-" .. seq
    local q = queue.new(name, { redis = URL })
    local srv = helpers.start_server({ app = APP, env = { NUVION_WORKERS_IN_WEB = "1", REDIS_URL = URL,
                                                          QUEUE_NAME = name } })
    local slow = assert(q:add("x", { sleep_ms = 700 }))
    wait_until(function() return #spec_log(name) == 1 end)
    srv:signal("HUP")
    assert.is_truthy(srv:wait_log({ msg = "generation 2 serving" }, 5000))
    local after = assert(q:add("x", { sleep_ms = 0 }))
    wait_until(function() return q:get_state(after) == "completed" end, 5000)
    wait_until(function() return q:get_state(slow) == "completed" end, 5000)
    -- the old generation closes once its job finished and its workers stopped
    assert.is_truthy(srv:wait_log({ msg = "generation 1 closed" }, 8000))
    assert.equals(1, q:get_job(slow).attemptsStarted) -- finished by the old generation, not re-run
    local how, code = srv:stop()
    assert.equals("exit", how)
    assert.equals(0, code)
  end)

  it("runs the workers inside serve with NUVION_WORKERS_IN_WEB=1, and drains them on SIGTERM", function()
    seq = seq + 1
    local name = RUN .. "-" .. seq
    local q = queue.new(name, { redis = URL })
    local srv = helpers.start_server({ app = APP, env = { NUVION_WORKERS_IN_WEB = "1", REDIS_URL = URL,
                                                          QUEUE_NAME = name } })
    local res = helpers.request(srv.port, { path = "/health" })
    assert.equals(200, res.status)
    local id = assert(q:add("x", { sleep_ms = 0 }))
    wait_until(function() return q:get_state(id) == "completed" end)
    local slow = assert(q:add("x", { sleep_ms = 800 }))
    wait_until(function() return #spec_log(name) == 3 end)
    local how, code, took = srv:stop()
    assert.equals("exit", how)
    assert.equals(0, code)
    assert.truthy(took >= 500, "stopped after " .. took .. " ms")
    assert.equals("completed", q:get_state(slow))
    assert.same({ status = "ok" }, json.decode(res.body))
  end)
end)
