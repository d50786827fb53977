-- nuvion.queue against the real test Redis (NUVION_TEST_REDIS_URL): the Redis-level
-- shape BullMQ v5 reads (keys, job hash, opts, scores, markers, events), workers (order,
-- retries and backoff timing, locks, stalled recovery, concurrency) and every bound.
-- Each case has its own queue name; every key of this run is deleted at the end.
local queue = require "nuvion.queue"
local redis = require "nuvion.redis"
local json = require "nuvion.json"
local nuvion = require "nuvion"

local URL = os.getenv("NUVION_TEST_REDIS_URL")
local RUN = "spec80-" .. nuvion.random_hex(4)
local seq = 0
local r

local function qname()
  seq = seq + 1
  return RUN .. "-" .. seq
end

local function new_queue(opts)
  opts = opts or {}
  opts.redis = URL
  local name = qname()
  return queue.new(name, opts), name
end

local function wait_until(fn, timeout_ms, what)
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 5000)
  while nuvion.monotonic_ms() < deadline do
    local v = fn()
    if v then return v end
    nuvion.sleep(5)
  end
  error("timed out waiting for " .. (what or "a condition"), 2)
end

local function hgetall(key)
  local flat = assert(r:call("HGETALL", key))
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

local function find_event(q, event, job_id)
  for _, e in ipairs(assert(q:events(1000))) do
    if e.event == event and (job_id == nil or e.jobId == job_id) then return e end
  end
end

-- A worker that takes a job and dies: the take script run by hand, never finished.
local function take_and_die(q, lock_ms)
  local res = assert(q:run("take", math.floor(nuvion.now() * 1000), "dead:" .. nuvion.random_hex(4),
                           lock_ms or 100, ""))
  return res[2]
end

describe("host primitives for workers", function()
  local core = require "nuvion.core"

  it("stopping() is false without SIGTERM or a retiring generation", function()
    assert.is_false(core.stopping())
  end)

  it("drain_hold counts holds up to its bound (hit) and refuses a release without a hold", function()
    local base = core.drain_hold(1) - 1
    core.drain_hold(-1)
    local max_holds = 65536 -- NV_DRAIN_HOLDS_MAX
    for _ = base + 1, max_holds do core.drain_hold(1) end
    assert.has_error(function() core.drain_hold(1) end)
    for _ = base + 1, max_holds do core.drain_hold(-1) end
    assert.equals(base + 1, core.drain_hold(1))
    core.drain_hold(-1)
    if base == 0 then assert.has_error(function() core.drain_hold(-1) end) end
    assert.has_error(function() core.drain_hold(2) end)
  end)
end)

describe("nuvion.queue", function()
  local workers = {}

  local function worker(name, handler, opts)
    opts = opts or {}
    opts.redis = URL
    opts.drain_delay = opts.drain_delay or 1 -- a closed worker's idle block ends soon
    local w = queue.worker(name, handler, opts)
    workers[#workers + 1] = w
    return w
  end

  lazy_setup(function()
    r = assert(redis.connect(URL))
  end)

  after_each(function()
    for _, w in ipairs(workers) do w:close(0) end
    workers = {}
  end)

  lazy_teardown(function()
    local cursor = "0"
    repeat
      local res = assert(r:call("SCAN", cursor, "MATCH", "bull:" .. RUN .. "*", "COUNT", 1000))
      cursor = res[1]
      if #res[2] > 0 then assert(r:call("DEL", unpack(res[2]))) end
    until cursor == "0"
  end)

  describe("add", function()
    it("stores the job hash, opts and events as BullMQ does", function()
      local q, name = new_queue()
      local id = assert(q:add("send", { amount = json.int("90071992547409930") },
        { attempts = 3, backoff = { type = "exponential", delay = 1000 }, removeOnComplete = 10,
          deduplication = { id = "d1" } }))
      assert.equals("1", id)
      local h = hgetall("bull:" .. name .. ":1")
      assert.equals("send", h.name)
      assert.equals('{"amount":90071992547409930}', h.data)
      assert.same({ attempts = 3, backoff = { type = "exponential", delay = 1000 }, removeOnComplete = 10,
                    de = { id = "d1" } }, json.decode(h.opts))
      assert.equals("0", h.delay)
      assert.equals("0", h.priority)
      assert.equals("d1", h.deid)
      assert.truthy(math.abs(tonumber(h.timestamp) - nuvion.now() * 1000) < 5000)
      assert.same({ "1" }, r:call("LRANGE", "bull:" .. name .. ":wait", 0, -1))
      assert.same({ "0", "0" }, r:call("ZRANGE", "bull:" .. name .. ":marker", 0, -1, "WITHSCORES"))
      assert.equals("1", r:call("GET", "bull:" .. name .. ":id"))
      assert.equals("1", r:call("GET", "bull:" .. name .. ":de:d1"))
      local meta = hgetall("bull:" .. name .. ":meta")
      assert.equals(queue.BULLMQ_VERSION, meta.version)
      assert.equals("10000", meta["opts.maxLenEvents"])
      local ev = assert(q:events(10))
      assert.same({ event = "added", jobId = "1", name = "send" }, { event = ev[1].event, jobId = ev[1].jobId,
                                                                       name = ev[1].name })
      assert.equals("waiting", ev[2].event)
      assert.equals("waiting", q:get_state("1"))
    end)

    it("scores delayed jobs by due time and sequence, prioritized ones by priority and counter", function()
      local q, name = new_queue()
      local before = math.floor(nuvion.now() * 1000)
      local d1 = assert(q:add("d", {}, { delay = 60000 }))
      local d2 = assert(q:add("d", {}, { delay = 60000 }))
      local p = assert(q:add("p", {}, { priority = 7 }))
      local s1 = tonumber(r:call("ZSCORE", "bull:" .. name .. ":delayed", d1))
      local s2 = tonumber(r:call("ZSCORE", "bull:" .. name .. ":delayed", d2))
      local due = math.floor(s1 / 0x1000)
      assert.truthy(due >= before + 60000 and due < before + 65000)
      assert.truthy(s2 > s1) -- same or later millisecond: later in the set
      assert.equals(7 * 2 ^ 32 + 1, tonumber(r:call("ZSCORE", "bull:" .. name .. ":prioritized", p)))
      local delayed_ev = find_event(q, "delayed", d1)
      assert.equals(due, tonumber(delayed_ev.delay))
      -- the marker carries the next delayed due time as "1"
      assert.truthy(r:call("ZSCORE", "bull:" .. name .. ":marker", "1"))
      assert.equals("delayed", q:get_state(d1))
      assert.equals("prioritized", q:get_state(p))
    end)

    it("refuses bad custom ids and changes nothing", function()
      local q, name = new_queue()
      for _, bad in ipairs({ "123", "a:b", "" }) do
        local id, err = q:add("x", {}, { jobId = bad })
        assert.is_nil(id)
        assert.equals("invalid_job_id", err.code)
      end
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":wait"))
    end)

    it("raises on bad options (a caller's bug)", function()
      local q = new_queue()
      local cases = {
        { nope = 1 }, { delay = -1 }, { delay = 1.5 }, { priority = queue.limits.priority_max + 1 },
        { attempts = -1 }, { backoff = { type = "linear", delay = 1 } }, { removeOnComplete = "yes" },
        { removeOnFail = { keep = 1 } }, { deduplication = { id = "" } }, { traceparent = "00-xyz" }, { lifo = 1 },
      }
      for _, opts in ipairs(cases) do
        assert.has_error(function() q:add("x", {}, opts) end)
      end
      assert.has_error(function() queue.new("a:b", { redis = URL }) end)
    end)

    it("returns the existing job for a duplicate custom id, with event duplicated", function()
      local q = new_queue()
      assert.equals("order-1", q:add("x", { v = 1 }, { jobId = "order-1" }))
      assert.equals("order-1", q:add("x", { v = 2 }, { jobId = "order-1" }))
      assert.equals(1, q:get_job("order-1").data.v)
      assert.truthy(find_event(q, "duplicated", "order-1"))
      assert.equals(1, q:counts().waiting)
    end)

    it("deduplicates by id until the first job finishes", function()
      local q, name = new_queue()
      local a = assert(q:add("x", {}, { deduplication = { id = "pay-9" } }))
      local b = assert(q:add("x", {}, { deduplication = { id = "pay-9" } }))
      assert.equals(a, b)
      assert.equals(1, q:counts().waiting)
      local e = find_event(q, "deduplicated", a)
      assert.equals("pay-9", e.deduplicationId)
      assert.equals("2", e.deduplicatedJobId)
      local done = 0
      worker(name, function() done = done + 1 end)
      wait_until(function() return done == 1 and q:get_state(a) == "completed" end)
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":de:pay-9"))
      local c = assert(q:add("x", {}, { deduplication = { id = "pay-9" } }))
      assert.are_not.equal(a, c)
    end)

    it("keeps a ttl deduplication key for its ttl", function()
      local q, name = new_queue()
      local a = assert(q:add("x", {}, { deduplication = { id = "t", ttl = 150 } }))
      assert.equals(a, q:add("x", {}, { deduplication = { id = "t", ttl = 150 } }))
      local pttl = r:call("PTTL", "bull:" .. name .. ":de:t")
      assert.truthy(pttl > 0 and pttl <= 150)
      nuvion.sleep(200)
      assert.are_not.equal(a, q:add("x", {}, { deduplication = { id = "t", ttl = 150 } }))
    end)

    it("carries the traceparent in opts.tm, as BullMQ's telemetry metadata", function()
      local q, name = new_queue()
      local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
      local id = assert(q:add("x", {}, { traceparent = tp }))
      local opts = json.decode(hgetall("bull:" .. name .. ":" .. id).opts)
      assert.equals(tp, json.decode(opts.tm).traceparent)
      local seen
      worker(name, function(job) seen = job.traceparent end)
      wait_until(function() return seen end)
      assert.equals(tp, seen)
    end)

    it("adds again after SCRIPT FLUSH (EVAL on NOSCRIPT)", function()
      local q = new_queue()
      assert(q:add("x", {}))
      assert(r:call("SCRIPT", "FLUSH"))
      assert.equals("2", q:add("x", {}))
    end)
  end)

  describe("workers", function()
    it("take, run and complete a job, with BullMQ's fields and events", function()
      local q, name = new_queue()
      local id = assert(q:add("hello", { n = 2 }))
      local w = worker(name, function(job)
        assert.equals(1, job.attemptsStarted)
        assert.truthy(r:call("GET", "bull:" .. name .. ":" .. job.id .. ":lock"))
        assert.equals("active", q:get_state(job.id))
        return { doubled = job.data.n * 2 }
      end)
      wait_until(function() return q:get_state(id) == "completed" end)
      local h = hgetall("bull:" .. name .. ":" .. id)
      assert.equals('{"doubled":4}', h.returnvalue)
      assert.equals("1", h.atm)
      assert.equals("1", h.ats)
      assert.truthy(tonumber(h.finishedOn) >= tonumber(h.processedOn))
      assert.equals(tonumber(h.finishedOn), tonumber(r:call("ZSCORE", "bull:" .. name .. ":completed", id)))
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":" .. id .. ":lock"))
      local done = find_event(q, "completed", id)
      assert.equals('{"doubled":4}', done.returnvalue)
      assert.equals("active", done.prev)
      assert.equals("waiting", find_event(q, "active", id).prev)
      assert.truthy(find_event(q, "drained"))
      assert.equals(1, w:stats().completed)
      assert.same({ waiting = 0, active = 0, delayed = 0, prioritized = 0, completed = 1, failed = 0, paused = 0 },
                  q:counts())
    end)

    it("run waiting jobs first in first out", function()
      local q, name = new_queue()
      for i = 1, 20 do assert(q:add("j", { i = i })) end
      local order = {}
      worker(name, function(job) order[#order + 1] = job.data.i end)
      wait_until(function() return #order == 20 end)
      for i = 1, 20 do assert.equals(i, order[i]) end
    end)

    it("run a lifo job before the older ones", function()
      local q, name = new_queue()
      assert(q:add("j", { i = 1 }))
      assert(q:add("j", { i = 2 }))
      assert(q:add("j", { i = 3 }, { lifo = true }))
      local order = {}
      worker(name, function(job) order[#order + 1] = job.data.i end)
      wait_until(function() return #order == 3 end)
      assert.same({ 3, 1, 2 }, order)
    end)

    it("run unprioritized jobs first, then by priority, FIFO within one", function()
      local q, name = new_queue()
      assert(q:add("j", { i = "p3" }, { priority = 3 }))
      assert(q:add("j", { i = "p1a" }, { priority = 1 }))
      assert(q:add("j", { i = "none" }))
      assert(q:add("j", { i = "p2" }, { priority = 2 }))
      assert(q:add("j", { i = "p1b" }, { priority = 1 }))
      local order = {}
      worker(name, function(job) order[#order + 1] = job.data.i end)
      wait_until(function() return #order == 5 end)
      assert.same({ "none", "p1a", "p1b", "p2", "p3" }, order)
    end)

    it("run a delayed job when it is due, not before", function()
      local q, name = new_queue()
      local ran_at
      worker(name, function() ran_at = nuvion.now() * 1000 end)
      nuvion.sleep(50) -- the worker idles on the marker
      local id = assert(q:add("later", {}, { delay = 300 }))
      local ts = tonumber(hgetall("bull:" .. name .. ":" .. id).timestamp)
      wait_until(function() return ran_at end, 3000)
      local late = ran_at - (ts + 300)
      assert.truthy(late >= 0, "ran " .. -late .. " ms early")
      assert.truthy(late < 150, "ran " .. late .. " ms late")
      assert.equals("waiting", find_event(q, "waiting", id) and find_event(q, "active", id).prev)
    end)

    it("wake an idle worker at once when a job is added", function()
      local q, name = new_queue()
      local ran_at
      worker(name, function() ran_at = nuvion.monotonic_ms() end, { drain_delay = 5 })
      nuvion.sleep(100)
      local added = nuvion.monotonic_ms()
      assert(q:add("now", {}))
      wait_until(function() return ran_at end, 2000)
      assert.truthy(ran_at - added < 50, "picked up after " .. (ran_at - added) .. " ms")
    end)

    it("retry with a fixed backoff, measured", function()
      local q, name = new_queue()
      local times = {}
      local id = assert(q:add("flaky", {}, { attempts = 3, backoff = { type = "fixed", delay = 200 } }))
      worker(name, function(job)
        times[#times + 1] = nuvion.monotonic_ms()
        if job.attemptsMade < 2 then error("try again", 0) end
        return "ok"
      end)
      wait_until(function() return q:get_state(id) == "completed" end, 5000)
      assert.equals(3, #times)
      for i = 2, 3 do
        local gap = times[i] - times[i - 1]
        assert.truthy(gap >= 195 and gap < 350, "gap " .. i .. " was " .. gap .. " ms")
      end
      local h = hgetall("bull:" .. name .. ":" .. id)
      assert.equals("3", h.atm)
      assert.equals("3", h.ats)
      assert.equals("try again", h.failedReason) -- the last failure stays, as BullMQ
      assert.equals("delayed", find_event(q, "delayed", id).event)
    end)

    it("retry with an exponential backoff, measured: delay, 2 delay, 4 delay", function()
      local q, name = new_queue()
      local times = {}
      local id = assert(q:add("flaky", {}, { attempts = 4, backoff = { type = "exponential", delay = 100 } }))
      worker(name, function(job)
        times[#times + 1] = nuvion.monotonic_ms()
        if job.attemptsMade < 3 then error("again", 0) end
      end)
      wait_until(function() return q:get_state(id) == "completed" end, 5000)
      assert.equals(4, #times)
      for i, want in ipairs({ 100, 200, 400 }) do
        local gap = times[i + 1] - times[i]
        assert.truthy(gap >= want - 5 and gap < want + 150, "retry " .. i .. ": " .. gap .. " ms, want " .. want)
      end
    end)

    it("retry with a jittered backoff within [delay * (1 - jitter), delay)", function()
      local q, name = new_queue()
      local times = {}
      local id = assert(q:add("flaky", {}, { attempts = 2, backoff = { type = "fixed", delay = 400, jitter = 0.5 } }))
      worker(name, function(job)
        times[#times + 1] = nuvion.monotonic_ms()
        if job.attemptsMade < 1 then error("again", 0) end
      end)
      -- while it waits in delayed, the job's delay field is the backoff it got
      wait_until(function() return q:get_state(id) == "delayed" end, 3000)
      local delay = tonumber(hgetall("bull:" .. name .. ":" .. id).delay)
      assert.truthy(delay >= 200 and delay < 400, "delay " .. delay)
      wait_until(function() return q:get_state(id) == "completed" end, 3000)
      local gap = times[2] - times[1]
      assert.truthy(gap >= delay - 5 and gap < delay + 150, "gap " .. gap .. " for a delay of " .. delay)
    end)

    it("retry without backoff straight to wait", function()
      local q, name = new_queue()
      local n = 0
      local id = assert(q:add("flaky", {}, { attempts = 2 }))
      worker(name, function() n = n + 1 if n == 1 then error("once") end end)
      wait_until(function() return q:get_state(id) == "completed" end)
      local e = assert(q:events(100))
      local waiting_again
      for _, ev in ipairs(e) do
        if ev.event == "waiting" and ev.prev == "active" then waiting_again = true end
      end
      assert.truthy(waiting_again)
    end)

    it("fail a job whose attempts ran out, and retry it from failed (dead letters)", function()
      local q, name = new_queue()
      local heal = false
      local id = assert(q:add("poison", {}, { attempts = 2, backoff = 10 }))
      local runs = 0
      worker(name, function()
        runs = runs + 1
        if not heal then error({ code = "bad_input", message = "cannot parse" }) end
        return "healed"
      end)
      wait_until(function() return q:get_state(id) == "failed" end)
      assert.equals(2, runs)
      local job = q:get_job(id)
      assert.equals("cannot parse", job.failedReason)
      assert.equals(2, job.attemptsMade)
      assert.equals(2, #job.stacktrace)
      assert.truthy(job.stacktrace[2]:find("stack traceback", 1, true))
      assert.same({ id }, q:failed())
      local f = find_event(q, "failed", id)
      assert.equals("cannot parse", f.failedReason)
      assert.equals("2", find_event(q, "retries-exhausted", id).attemptsMade)
      heal = true
      assert.is_true(q:retry_failed(id))
      wait_until(function() return q:get_state(id) == "completed" end)
      assert.equals(3, runs)
      assert.equals("healed", q:get_job(id).returnvalue)
      local _, err = q:retry_failed(id)
      assert.equals("not_failed", err.code)
    end)

    it("fail an unrecoverable error at once, attempts left or not", function()
      local q, name = new_queue()
      local id = assert(q:add("x", {}, { attempts = 5 }))
      local runs = 0
      worker(name, function()
        runs = runs + 1
        error(queue.unrecoverable("card closed"))
      end)
      wait_until(function() return q:get_state(id) == "failed" end)
      assert.equals(1, runs)
      assert.equals("card closed", q:get_job(id).failedReason)
    end)

    it("remove completed and failed jobs as removeOnComplete / removeOnFail say", function()
      local q, name = new_queue()
      local gone = assert(q:add("x", {}, { removeOnComplete = true }))
      local kept = {}
      for i = 1, 5 do kept[i] = assert(q:add("x", {}, { removeOnComplete = 2 })) end
      local f = assert(q:add("bad", {}, { removeOnFail = true }))
      local n = 0
      worker(name, function(job) n = n + 1 if job.name == "bad" then error("no") end end)
      wait_until(function() return n == 7 and q:counts().active == 0 end)
      nuvion.sleep(20)
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":" .. gone))
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":" .. f))
      assert.same({ kept[4], kept[5] }, r:call("ZRANGE", "bull:" .. name .. ":completed", 0, -1))
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":" .. kept[1]))
      assert.equals(0, r:call("ZCARD", "bull:" .. name .. ":failed"))
    end)

    it("store progress and write the progress event", function()
      local q, name = new_queue()
      local id = assert(q:add("x", {}))
      worker(name, function(job) assert(job:progress(42)) assert(job:progress({ step = "b" })) end)
      wait_until(function() return q:get_state(id) == "completed" end)
      assert.same({ step = "b" }, q:get_job(id).progress_value)
      assert.equals("42", find_event(q, "progress", id).data)
    end)

    it("renew the lock of a job running longer than lock_duration", function()
      local q, name = new_queue()
      local id = assert(q:add("long", {}))
      local w = worker(name, function() nuvion.sleep(2600) return "done" end,
                       { lock_duration = 1000, stalled_interval = 1000 })
      -- a second worker's stalled checks run too: the job must never look stalled
      local other = worker(name, function() error("must not run") end, { stalled_interval = 1000 })
      local min_ttl = math.huge
      wait_until(function()
        local ttl = r:call("PTTL", "bull:" .. name .. ":" .. id .. ":lock")
        if ttl > 0 then min_ttl = math.min(min_ttl, ttl) end
        return q:get_state(id) == "completed"
      end, 6000)
      assert.truthy(min_ttl > 0)
      assert.truthy(w:stats().lock_renewals >= 4, "renewals " .. w:stats().lock_renewals)
      assert.equals(0, w:stats().lock_lost)
      assert.equals(0, other:stats().stalled_moved + w:stats().stalled_moved)
      assert.equals("1", hgetall("bull:" .. name .. ":" .. id).atm)
    end)

    it("recover a job whose worker died (its lock expired) through the stalled check", function()
      local q, name = new_queue()
      local id = assert(q:add("orphan", {}))
      assert.equals(id, take_and_die(q, 100))
      assert.equals("active", q:get_state(id))
      local ran
      worker(name, function(job) ran = job.stalledCounter end, { stalled_interval = 1000 })
      wait_until(function() return ran end, 4000)
      assert.equals(1, ran)
      assert.truthy(find_event(q, "stalled", id))
      wait_until(function() return q:get_state(id) == "completed" end)
    end)

    it("fail a job that stalls more than max_stalled_count (a poison job)", function()
      local q, name = new_queue()
      local id = assert(q:add("poison", {}, { attempts = 3 }))
      -- stall once: recovered
      assert.equals(id, take_and_die(q, 50))
      local w = worker(name, function() error("must not run") end,
                       { stalled_interval = 1000, max_stalled_count = 0 })
      wait_until(function() return q:get_state(id) == "failed" end, 4000)
      local job = q:get_job(id)
      assert.equals("job stalled more than allowable limit", job.failedReason)
      assert.equals(1, job.stalledCounter)
      assert.equals(1, w:stats().failed)
    end)

    it("do not fail a stalled job of a BullMQ job scheduler, as BullMQ", function()
      local q, name = new_queue()
      local id = assert(q:add("tick", {}))
      assert(r:call("HSET", "bull:" .. name .. ":" .. id, "rjk", "every-minute"))
      assert(r:call("HSET", "bull:" .. name .. ":repeat:every-minute", "every", 60000))
      assert.equals(id, take_and_die(q, 50))
      local ran
      worker(name, function(job) ran = job end, { stalled_interval = 1000, max_stalled_count = 0 })
      wait_until(function() return ran end, 4000)
      assert.equals(1, ran.stalledCounter)
      assert.is_nil(ran.deferredFailure)
    end)

    it("never run more jobs at once than concurrency (the bound, hit)", function()
      local q, name = new_queue()
      for i = 1, 40 do assert(q:add("j", { i = i })) end
      local now_running, peak, done = 0, 0, 0
      local t0 = nuvion.monotonic_ms()
      local w = worker(name, function()
        now_running = now_running + 1
        peak = math.max(peak, now_running)
        nuvion.sleep(50)
        now_running = now_running - 1
        done = done + 1
      end, { concurrency = 8 })
      wait_until(function() return done == 40 end, 5000)
      local took = nuvion.monotonic_ms() - t0
      assert.equals(8, peak)
      assert.truthy(took >= 250 and took < 4000, "took " .. took .. " ms")
      -- a handler that returned is still active until its finish script has run
      wait_until(function() return w:stats().active == 0 end, 2000)
      assert.equals(0, w:stats().active)
      assert.has_error(function()
        queue.worker(name, function() end, { redis = URL, concurrency = queue.limits.concurrency_max + 1 })
      end)
      assert.has_error(function() queue.worker(name, function() end, { redis = URL, lock_duration = 10 }) end)
    end)

    it("take the concurrency bound itself (1000 jobs in flight)", function()
      local q, name = new_queue()
      local max_c = queue.limits.concurrency_max
      for i = 1, max_c + 10 do assert(q:add("j", { i = i })) end
      local now_running, peak, done = 0, 0, 0
      worker(name, function()
        now_running = now_running + 1
        peak = math.max(peak, now_running)
        local until_ms = nuvion.monotonic_ms() + 5000
        while now_running < max_c and peak <= max_c and nuvion.monotonic_ms() < until_ms do nuvion.sleep(10) end
        now_running = now_running - 1
        done = done + 1
      end, { concurrency = max_c })
      wait_until(function() return done == max_c + 10 end, 15000)
      assert.equals(max_c, peak)
    end)

    it("do not take jobs while the queue is paused", function()
      local q, name = new_queue()
      assert(q:pause())
      local id = assert(q:add("x", {}))
      assert.equals("paused", q:get_state(id))
      local ran = false
      worker(name, function() ran = true end, { drain_delay = 1 })
      nuvion.sleep(200)
      assert.is_false(ran)
      assert(q:resume())
      wait_until(function() return ran end)
      assert.truthy(find_event(q, "paused"))
      assert.truthy(find_event(q, "resumed"))
    end)

    it("close: stop taking, wait for jobs in flight, release the rest to wait", function()
      local q, name = new_queue()
      local quick = assert(q:add("quick", {}))
      local slow = assert(q:add("slow", {}))
      local w = worker(name, function(job)
        if job.name == "slow" then nuvion.sleep(3000) else nuvion.sleep(100) end
      end, { concurrency = 2 })
      wait_until(function() return w:stats().active == 2 end)
      local later = assert(q:add("later", {}))
      local t0 = nuvion.monotonic_ms()
      assert.equals(1, w:close(400))
      local took = nuvion.monotonic_ms() - t0
      assert.truthy(took >= 390 and took < 1000, "close took " .. took)
      assert.equals("completed", q:get_state(quick))
      assert.equals("waiting", q:get_state(slow))
      assert.equals("waiting", q:get_state(later))
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":" .. slow .. ":lock"))
      -- the slow job finishes later without its lock: dropped, not completed twice
      local w2 = worker(name, function() return "second" end)
      wait_until(function() return q:get_state(slow) == "completed" end)
      assert.equals("second", q:get_job(slow).returnvalue)
      nuvion.sleep(10)
      assert.truthy(w2:stats().completed >= 2)
    end)

    it("keep taking jobs with more idle workers than blocking connections (the bound, hit)", function()
      local n = redis.limits.blocking_conns_max + 4
      local qs, done = {}, 0
      for i = 1, n do
        local q, name = new_queue()
        qs[i] = q
        worker(name, function() done = done + 1 end)
      end
      nuvion.sleep(100) -- every worker idle: 16 block on the marker, 4 poll
      for i = 1, n do assert(qs[i]:add("x", {})) end
      wait_until(function() return done == n end, 600) -- polling, not a 1 s back-off
    end)

    it("keep the last stacktrace_max stack traces and cut failedReason at reason_bytes_max (bounds, hit)", function()
      local q, name = new_queue()
      local max_st = queue.limits.stacktrace_max
      local id = assert(q:add("x", {}, { attempts = max_st + 2 }))
      local runs = 0
      worker(name, function()
        runs = runs + 1
        error(string.rep("e", queue.limits.reason_bytes_max + 100) .. runs, 0)
      end)
      wait_until(function() return q:get_state(id) == "failed" end, 5000)
      local job = q:get_job(id)
      assert.equals(max_st + 2, runs)
      assert.equals(max_st, #job.stacktrace)
      assert.equals(queue.limits.reason_bytes_max, #job.failedReason)
    end)

    it("check every worker option against its bounds", function()
      local L = queue.limits
      local cases = {
        { "concurrency", 1, L.concurrency_max }, { "lock_duration", L.lock_ms_min, L.lock_ms_max },
        { "stalled_interval", L.stalled_ms_min, L.stalled_ms_max }, { "max_stalled_count", 0, L.max_stalled_max },
        { "drain_delay", 1, L.drain_delay_s_max }, { "grace_ms", 0, L.grace_ms_max },
      }
      local _, name = new_queue()
      for _, c in ipairs(cases) do
        for _, bad in ipairs({ c[2] - 1, c[3] + 1, 1.5 }) do
          assert.has_error(function() queue.worker(name, function() end, { redis = URL, [c[1]] = bad }) end,
                           nil, c[1] .. " = " .. bad)
        end
        for _, good in ipairs({ c[2], c[3] }) do
          worker(name, function() end, { [c[1]] = good }):close(0)
        end
      end
    end)

    it("close while a take is in flight: the job taken goes straight back to wait", function()
      local q, name = new_queue()
      local id = assert(q:add("x", {}))
      local ran = false
      local w = queue.worker(name, function() ran = true end, { redis = URL })
      nuvion.sleep(0) -- the worker's first take is now on its way to Redis
      assert.equals(0, w:close(1000))
      assert.equals("waiting", q:get_state(id))
      assert.equals(0, r:call("EXISTS", "bull:" .. name .. ":" .. id .. ":lock"))
      assert.equals(1, w:stats().released)
      assert.is_false(ran)
    end)

    it("close during a finish that takes the next job: that job goes straight back", function()
      local q, name = new_queue()
      local a = assert(q:add("a", {}))
      local b = assert(q:add("b", {}))
      local ran_b, closed = false, nil
      local w
      w = queue.worker(name, function(job)
        if job.name == "b" then ran_b = true return end
        -- close() starts while this job's finish (which takes b) is on its way
        nuvion.spawn(function() closed = w:close(1000) end)
      end, { redis = URL })
      wait_until(function() return closed ~= nil end)
      assert.equals("completed", q:get_state(a))
      assert.equals("waiting", q:get_state(b))
      assert.is_false(ran_b)
      assert.equals(1, w:stats().released)
    end)

    it("bound the events stream by meta opts.maxLenEvents (hit)", function()
      local q, name = new_queue({ max_len_events = 10 })
      for i = 1, 600 do assert(q:add("x", { i = i })) end
      assert.equals("10", r:call("HGET", "bull:" .. name .. ":meta", "opts.maxLenEvents"))
      local len = r:call("XLEN", "bull:" .. name .. ":events")
      -- MAXLEN ~ trims whole stream nodes (100 entries each by default): near 10, never 1200
      assert.truthy(len >= 10 and len <= 10 + 200, "XLEN " .. len)
    end)
  end)
end)
