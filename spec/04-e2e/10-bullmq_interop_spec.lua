-- Interop with Node BullMQ, proven against the real packages (node/: bullmq 5, @bull-board/api and
-- its Express adapter, installed by `make node`) on the test Redis (NUVION_TEST_REDIS_URL):
-- Node adds, we work; we add, Node works (retries and backoff timed on both sides); Node's
-- QueueEvents reads our events; Bull Board's HTTP API lists our queues and jobs in every state;
-- our worker takes Node's jobs in BullMQ's order (wait, lifo, priority); a worker killed on
-- one side is recovered by the other's stalled check; deduplication ids, pause and retry from
-- failed hold across both; and a job written by us has the same Redis shape as BullMQ's.
-- The Node scripts (spec/bullmq_peer.lua, node/*.js) print JSON lines and exit by themselves.
local queue = require "nuvion.queue"
local redis = require "nuvion.redis"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local process = require "nuvion.process"
local helpers = require "spec.helpers"
local peer = require "spec.bullmq_peer"

local URL = os.getenv("NUVION_TEST_REDIS_URL")
local RUN = "interop-" .. nuvion.random_hex(4)
-- A retry may run later than its backoff (the worker wakes at the marker's time, then takes the
-- job), never earlier. The machine is small and shared with the rest of `make test`.
local LATE_MS = 400
local EARLY_MS = 5 -- clock granularity between the two sides (both read the wall clock in ms)
local SHOW_GAPS = os.getenv("INTEROP_SHOW_GAPS") -- set: print each measured retry gap to stderr

local used = {}
local function qname(name)
  local n = RUN .. "-" .. name
  used[#used + 1] = n
  return n
end

local function now_ms()
  return nuvion.now() * 1000
end

local function wait_for(pred, timeout_ms, what)
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 10000)
  while not pred() do
    if nuvion.monotonic_ms() > deadline then error("timed out waiting for " .. (what or "a condition"), 2) end
    nuvion.sleep(5)
  end
end

-- The gaps (ms) between the starts of consecutive attempts in `starts` (a list of times in ms).
local function gaps(starts)
  local out = {}
  for i = 2, #starts do out[#out + 1] = starts[i] - starts[i - 1] end
  return out
end

local function assert_gap(gap, backoff_ms, what)
  if SHOW_GAPS then io.stderr:write(string.format("%s: %.1f ms (backoff %d ms)\n", what, gap, backoff_ms)) end
  assert(gap >= backoff_ms - EARLY_MS, string.format("%s: retry after %.1f ms, before its backoff of %d ms",
                                                     what, gap, backoff_ms))
  assert(gap <= backoff_ms + LATE_MS, string.format("%s: retry after %.1f ms, backoff %d ms (+%d allowed)",
                                                    what, gap, backoff_ms, LATE_MS))
end

local function starts_of(events, id)
  local out = {}
  for _, ev in ipairs(events) do
    if ev.ev == "process" and ev.id == id then out[#out + 1] = ev.t end
  end
  return out
end

describe("BullMQ interop", function()
  local r

  lazy_setup(function()
    assert(URL, "NUVION_TEST_REDIS_URL is not set")
    r = assert(redis.connect(URL))
  end)

  lazy_teardown(function()
    for _, name in ipairs(used) do
      local cursor = "0"
      repeat
        local res = assert(r:call("SCAN", cursor, "MATCH", "bull:" .. name .. ":*", "COUNT", 1000))
        cursor = res[1]
        if #res[2] > 0 then assert(r:call("DEL", unpack(res[2]))) end
      until cursor == "0"
    end
  end)

  it("runs jobs Node BullMQ added in our worker, with fixed and exponential backoff", function()
    local name = qname("node-to-us")
    local starts, results = {}, {}
    local w = queue.worker(name, function(job)
      starts[job.id] = starts[job.id] or {}
      local s = starts[job.id]
      s[#s + 1] = now_ms()
      if job.attemptsMade < job.data.fail then
        error("attempt " .. (job.attemptsMade + 1) .. " fails on purpose", 0)
      end
      results[job.id] = job
      return { by = "nuvion", n = job.data.n }
    end, { redis = URL, concurrency = 5 })
    nuvion.sleep(50) -- the worker blocks on the marker: Node's add must wake it

    local added = peer.run("producer", { queue = name, jobs = {
      { name = "fixed", data = { n = 1, fail = 2 },
        opts = { attempts = 3, backoff = { type = "fixed", delay = 300 } } },
      { name = "expo", data = { n = 2, fail = 2 },
        opts = { attempts = 3, backoff = { type = "exponential", delay = 200 } } },
      { name = "poison", data = { n = 3, fail = 9 }, opts = { attempts = 2, backoff = 100 } },
      { name = "keep-none", data = { n = 4, fail = 0 }, opts = { removeOnComplete = true } },
    } })
    local ids = {}
    for _, ev in ipairs(peer.filter(added, { ev = "added" })) do ids[ev.name] = ev.id end
    assert.truthy(ids.fixed and ids.expo and ids.poison and ids["keep-none"])

    local q = queue.new(name, { redis = URL })
    wait_for(function()
      return q:get_state(ids.fixed) == "completed" and q:get_state(ids.expo) == "completed"
        and q:get_state(ids.poison) == "failed" and results[ids["keep-none"]] ~= nil
    end, 10000, "the jobs to finish")
    w:close(5000)

    -- fixed 300: 300, 300; exponential 200: 200, 400 (2^(n-1) * delay); plain number 100: fixed
    local g = gaps(starts[ids.fixed])
    assert.equals(2, #g)
    assert_gap(g[1], 300, "fixed, retry 1")
    assert_gap(g[2], 300, "fixed, retry 2")
    g = gaps(starts[ids.expo])
    assert.equals(2, #g)
    assert_gap(g[1], 200, "exponential, retry 1")
    assert_gap(g[2], 400, "exponential, retry 2")
    g = gaps(starts[ids.poison])
    assert.equals(1, #g)
    assert_gap(g[1], 100, "number backoff, retry 1")

    -- Node's data and options reached our handler as Node wrote them
    local job = results[ids.fixed]
    assert.equals("fixed", job.name)
    assert.same({ n = 1, fail = 2 }, job.data)
    assert.equals(3, job.opts.attempts)
    assert.same({ type = "fixed", delay = 300 }, job.opts.backoff)
    assert.equals(2, job.attemptsMade)

    local done = assert(q:get_job(ids.fixed))
    assert.equals(3, done.attemptsMade)
    assert.same({ by = "nuvion", n = 1 }, done.returnvalue)
    local poison = assert(q:get_job(ids.poison))
    assert.equals(2, poison.attemptsMade)
    assert.equals("attempt 2 fails on purpose", poison.failedReason)
    -- removeOnComplete = true, set by Node: the job is gone once completed
    wait_for(function() return q:get_job(ids["keep-none"]) == nil end, 2000, "keep-none to be removed")
  end)

  it("takes Node's waiting, prioritized and lifo jobs in the order BullMQ's worker does", function()
    -- (delayed jobs: the backoff specs above; a delay here would race the start of Node's worker)
    local jobs = {
      { name = "p3", opts = { priority = 3 } },
      { name = "plain-1" },
      { name = "p1", opts = { priority = 1 } },
      { name = "plain-2" },
      { name = "p1-again", opts = { priority = 1 } },
      { name = "lifo", opts = { lifo = true } },
      { name = "p2", opts = { priority = 2 } },
    }
    -- wait list first (lifo at its head, then oldest first), then by priority (equal: oldest first)
    local want = { "lifo", "plain-1", "plain-2", "p1", "p1-again", "p2", "p3" }
    local name = qname("order")
    assert.equals(#want, #peer.filter(peer.run("producer", { queue = name, jobs = jobs }), { ev = "added" }))
    local order = {}
    local w = queue.worker(name, function(job) order[#order + 1] = job.name end, { redis = URL, concurrency = 1 })
    wait_for(function() return #order == #want end, 5000, "the jobs")
    w:close(5000)
    assert.same(want, order)

    -- the same jobs, added by Node, taken by Node's own worker
    local theirs = qname("order-node")
    peer.run("producer", { queue = theirs, jobs = jobs })
    local events = peer.run("worker", { queue = theirs, expect = #want, concurrency = 1 })
    local node_order = {}
    for _, ev in ipairs(peer.filter(events, { ev = "process" })) do node_order[#node_order + 1] = ev.name end
    assert.same(want, node_order)
  end)

  it("lets a Node BullMQ worker run jobs we added, with fixed and exponential backoff", function()
    local name = qname("us-to-node")
    local q = queue.new(name, { redis = URL })
    -- The Node worker is up and blocked on the marker before we add: our add must wake it.
    local w = peer.start("worker", { queue = name, expect = 3, fail_attempts = 2, concurrency = 5,
                                     returnvalue = { ok = true, by = "node" }, timeout_ms = 20000 })
    assert(w:next(function(e) return e.ev == "ready" end, 10000), "the Node worker did not start")
    nuvion.sleep(100)
    local tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    local fixed = assert(q:add("fixed", { n = 1 }, { attempts = 3, backoff = { type = "fixed", delay = 300 },
                                                    traceparent = tp }))
    local expo = assert(q:add("expo", { n = 2 }, { attempts = 3, backoff = { type = "exponential", delay = 200 } }))
    local poison = assert(q:add("poison", { n = 3 }, { attempts = 2, backoff = 100 }))
    local events, how, code = w:finish(15000)
    assert.same({ "exit", 0 }, { how, code }, "the Node worker did not finish: " .. json.encode(events))

    local g = gaps(starts_of(events, fixed))
    assert.equals(2, #g)
    assert_gap(g[1], 300, "fixed, retry 1")
    assert_gap(g[2], 300, "fixed, retry 2")
    g = gaps(starts_of(events, expo))
    assert.equals(2, #g)
    assert_gap(g[1], 200, "exponential, retry 1")
    assert_gap(g[2], 400, "exponential, retry 2")
    g = gaps(starts_of(events, poison))
    assert.equals(1, #g)
    assert_gap(g[1], 100, "number backoff, retry 1")

    -- what Node's Job saw of our job
    local first = peer.filter(events, { ev = "process", id = fixed })[1]
    assert.equals("fixed", first.name)
    assert.same({ n = 1 }, first.data)
    assert.equals(0, first.attemptsMade)
    assert.equals(3, first.opts.attempts)
    assert.same({ type = "fixed", delay = 300 }, first.opts.backoff)
    -- our trace context as BullMQ's telemetry metadata (what bullmq-otel would continue)
    assert.same({ traceparent = tp }, json.decode(first.opts.telemetry.metadata))
    local last = peer.filter(events, { ev = "process", id = fixed })[3]
    assert.equals(2, last.attemptsMade)
    assert.equals(3, last.attemptsStarted)

    -- and what we see of Node's work
    assert.equals("completed", q:get_state(fixed))
    assert.equals("completed", q:get_state(expo))
    assert.equals("failed", q:get_state(poison))
    local done = assert(q:get_job(fixed))
    assert.same({ ok = true, by = "node" }, done.returnvalue)
    assert.equals(3, done.attemptsMade)
    local dead = assert(q:get_job(poison))
    assert.equals("attempt 2 fails on purpose", dead.failedReason)
    assert.equals(2, dead.attemptsMade)
    assert.equals(poison, q:failed()[1])
  end)

  it("shows Node's QueueEvents our added, waiting, active, progress, completed, failed, delayed events", function()
    local name = qname("events")
    local q = queue.new(name, { redis = URL })
    -- last_id "0": the listener reads the stream from its start, so it cannot miss an event
    local listener = peer.start("events", { queue = name, last_id = "0", timeout_ms = 20000, ["until"] =
                                            { completed = 2, failed = 1, ["retries-exhausted"] = 1 } })
    assert(listener:next(function(e) return e.ev == "ready" end, 10000), "QueueEvents did not start")

    local w = queue.worker(name, function(job)
      -- job:update_progress, or job:progress where that is not shadowed by the job's progress field
      local update = job.update_progress or getmetatable(job).progress
      assert(update(job, 42))
      assert(update(job, { step = "half", n = 2 }))
      if job.data.fail then error("no luck", 0) end
      return { total = json.int("123456789012345678901234567890"), ok = true }
    end, { redis = URL, concurrency = 2 })
    local ok_id = assert(q:add("ok", { n = 1 }))
    local bad_id = assert(q:add("bad", { fail = true }, { attempts = 2, backoff = { type = "fixed", delay = 150 } }))
    local later_id = assert(q:add("later", { n = 3 }, { delay = 200 }))

    local events, how, code = listener:finish(15000)
    w:close(5000)
    assert.same({ "exit", 0 }, { how, code }, "QueueEvents did not see them all: " .. json.encode(events))

    local by = {}
    for _, ev in ipairs(peer.filter(events, { ev = "event" })) do
      local id = ev.args.jobId or ""
      by[id] = by[id] or {}
      by[id][#by[id] + 1] = ev
    end
    local function names(id)
      local out = {}
      for _, ev in ipairs(by[id] or {}) do out[#out + 1] = ev.event end
      return table.concat(out, " ")
    end
    assert.equals("added waiting active progress progress completed", names(ok_id))
    assert.equals("added waiting active progress progress delayed waiting active progress progress failed "
                  .. "retries-exhausted", names(bad_id))
    assert.equals("added delayed waiting active progress progress completed", names(later_id))

    local function find(id, event)
      for _, ev in ipairs(by[id]) do if ev.event == event then return ev.args end end
    end
    assert.same({ jobId = ok_id, name = "ok" }, find(ok_id, "added"))
    assert.equals("waiting", find(ok_id, "active").prev)
    assert.equals(42, find(ok_id, "progress").data) -- QueueEvents parses progress as JSON
    assert.same({ step = "half", n = 2 }, by[ok_id][5].args.data)
    -- the returnvalue as QueueEvents parsed it: our json.int reaches Node as a JSON number
    local rv = find(ok_id, "completed").returnvalue
    assert.equals(true, rv.ok)
    assert.equals("number", type(rv.total))
    assert.equals("active", find(ok_id, "completed").prev)
    assert.equals("no luck", find(bad_id, "failed").failedReason)
    assert.equals("2", find(bad_id, "retries-exhausted").attemptsMade)
    -- delayed carries the time it becomes due (ms): 150 ms after the failure, 200 ms after the add
    local due = find(later_id, "delayed").delay
    local added_at = tonumber(by[later_id][1].id:match("^(%d+)")) -- the stream id of "added": its time
    assert.truthy(due >= added_at + 200 - EARLY_MS and due <= added_at + 200 + LATE_MS,
                  "delayed.delay " .. tostring(due) .. " vs added at " .. tostring(added_at))
  end)

  it("lists our queues and jobs in every state through Bull Board's API", function()
    local name, other = qname("board"), qname("board-other")
    local q, q2 = queue.new(name, { redis = URL }), queue.new(other, { redis = URL })
    local holding, release = nil, false
    local w = queue.worker(name, function(job)
      if job.data.kind == "fail" then error("failed on purpose", 0) end
      if job.data.kind == "hold" then
        holding = job.id
        wait_for(function() return release end, 20000, "the release of the held job")
      end
      return { kind = job.data.kind }
    end, { redis = URL, concurrency = 1, name = "board-worker" })

    local ids = {}
    ids.completed = assert(q:add("done", { kind = "ok" }))
    ids.failed = assert(q:add("broken", { kind = "fail" }, { attempts = 1 }))
    wait_for(function() return q:get_state(ids.failed) == "failed" end, 5000, "the failed job")
    wait_for(function() return q:get_state(ids.completed) == "completed" end, 5000, "the completed job")
    ids.active = assert(q:add("held", { kind = "hold" }))
    wait_for(function() return holding == ids.active end, 5000, "the held job to start")
    -- concurrency 1 and one job held: these stay where they are while the board looks
    ids.waiting = assert(q:add("waits", { kind = "ok" }))
    ids.prioritized = assert(q:add("urgent", { kind = "ok" }, { priority = 5 }))
    ids.delayed = assert(q:add("later", { kind = "ok" }, { delay = 60000 }))
    local other_id = assert(q2:add("elsewhere", { n = 1 }))

    local ok, events = pcall(peer.run, "board", { queues = { name, other },
                                                  jobs = { [name] = { ids.completed, ids.failed, ids.active,
                                                                      ids.waiting, ids.prioritized, ids.delayed },
                                                           [other] = { other_id } } }, 20000)
    release = true
    w:close(5000)
    assert(ok, events)

    local listed = peer.filter(events, { ev = "listed" })[1]
    assert.equals(200, listed.http)
    assert.same({ name, other }, listed.names)

    local board = peer.filter(events, { ev = "queue", name = name })[1]
    for _, state in ipairs({ "completed", "failed", "active", "waiting", "prioritized", "delayed" }) do
      assert.equals(1, board.counts[state], state .. " count: " .. json.encode(board.counts))
      local listed_ids = {}
      for _, j in ipairs(board.jobs[state]) do listed_ids[#listed_ids + 1] = j.id end
      assert.same({ ids[state] }, listed_ids, state .. " jobs")
    end
    local failed = board.jobs.failed[1]
    assert.equals("failed on purpose", failed.failedReason)
    assert.equals("broken", failed.name)
    assert.equals(1, failed.attempts)
    assert.same({ kind = "ok" }, board.jobs.completed[1].returnValue)
    assert.same({ kind = "hold" }, board.jobs.active[1].data)
    assert.equals(60000, board.jobs.delayed[1].delay)

    -- each job on its own page, with the state Bull Board works out for it
    local want = { [ids.completed] = "completed", [ids.failed] = "failed", [ids.active] = "active",
                   [ids.waiting] = "waiting", [ids.prioritized] = "prioritized", [ids.delayed] = "delayed" }
    local seen = 0
    for _, ev in ipairs(peer.filter(events, { ev = "job", queue = name })) do
      assert.equals(200, ev.http)
      assert.equals(want[ev.id], ev.status, "state of job " .. ev.id)
      seen = seen + 1
    end
    assert.equals(6, seen)
    local board2 = peer.filter(events, { ev = "queue", name = other })[1]
    assert.equals(1, board2.counts.waiting)
    assert.equals(other_id, board2.jobs.waiting[1].id)

    -- our worker, found as BullMQ finds its own (by its connection's name), on its queue only
    assert.is_true(board.hasWorkers)
    assert.equals(1, #board.workers.workers)
    assert.equals("board-worker", board.workers.workers[1].name)
    assert.is_false(board2.hasWorkers)
    assert.same({}, board2.workers.workers)
  end)

  it("recovers in our worker a job whose Node worker was killed (stalled check)", function()
    local name = qname("node-killed")
    local q = queue.new(name, { redis = URL })
    local nw = peer.start("worker", { queue = name, expect = 1, hold_ms = 60000, timeout_ms = 30000,
                                      worker_opts = { lockDuration = 1000, stalledInterval = 1000 } })
    assert(nw:next(function(e) return e.ev == "ready" end, 10000), "the Node worker did not start")
    local id = assert(q:add("stuck", { n = 1 }, { attempts = 2 }))
    assert(nw:next(function(e) return e.ev == "process" and e.id == id end, 10000), "Node did not take the job")
    nw:stop() -- SIGKILL: the job stays in active, its lock expires within 1 s
    assert.equals("active", q:get_state(id))
    local t0 = nuvion.monotonic_ms()

    local ran
    local w = queue.worker(name, function(job)
      ran = job
      return { recovered = true }
    end, { redis = URL, lock_duration = 1000, stalled_interval = 1000 })
    wait_for(function() return q:get_state(id) == "completed" end, 10000, "our worker to recover the job")
    local took = nuvion.monotonic_ms() - t0
    w:close(5000)
    assert(took < 6000, "recovered after " .. took .. " ms")
    assert.equals(1, ran.stalledCounter)
    assert.equals(0, ran.attemptsMade) -- a stall is not a failed attempt
    assert.equals(2, ran.attemptsStarted)
    local stalled = false
    for _, e in ipairs(assert(q:events(100))) do
      if e.event == "stalled" and e.jobId == id then stalled = true end
    end
    assert.is_true(stalled, "no stalled event")
  end)

  it("recovers in a Node worker a job whose nuvion worker was killed (stalled check)", function()
    local name = qname("ours-killed")
    local q = queue.new(name, { redis = URL })
    local proc = assert(process.spawn({ helpers.bin, "run", helpers.root .. "/spec/fixtures/queue/hold_worker.lua" },
                                      { env = { INTEROP_QUEUE = name, NUVION_TEST_REDIS_URL = URL },
                                        output = "pipe" }))
    local ok, err = pcall(function()
      assert.equals("ready", proc:line(10000))
      local id = assert(q:add("stuck", { n = 2 }, { attempts = 2 }))
      assert.equals("holding " .. id, proc:line(10000))
      return id
    end)
    proc:kill("KILL")
    proc:wait(5000)
    proc:close()
    assert(ok, err)
    local id = err
    assert.equals("active", q:get_state(id))

    local nw = peer.start("worker", { queue = name, expect = 1, timeout_ms = 20000,
                                      worker_opts = { lockDuration = 1000, stalledInterval = 1000 } })
    local events, how, code = nw:finish(15000)
    assert.same({ "exit", 0 }, { how, code }, "the Node worker did not recover it: " .. json.encode(events))
    assert.equals(1, #peer.filter(events, { ev = "stalled", id = id }))
    local run = peer.filter(events, { ev = "process", id = id })[1]
    assert.equals(1, run.stalledCounter)
    assert.equals(0, run.attemptsMade)
    assert.equals("completed", q:get_state(id))
    assert.same({ ok = true, by = "node" }, assert(q:get_job(id)).returnvalue)
  end)

  it("deduplicates across both sides by the same deduplication id", function()
    local name = qname("dedup")
    local q = queue.new(name, { redis = URL })
    local theirs = peer.filter(peer.run("producer", { queue = name, jobs = {
      { name = "first", data = { n = 1 }, opts = { deduplication = { id = "order-1" } } } } }), { ev = "added" })[1].id
    -- ours with Node's deduplication id: nothing added, Node's job id back
    assert.equals(theirs, assert(q:add("second", { n = 2 }, { deduplication = { id = "order-1" } })))
    local ours = assert(q:add("third", { n = 3 }, { deduplication = { id = "order-2" } }))
    assert.are_not.equal(theirs, ours)
    -- Node's add with our deduplication id: nothing added, our job id back
    local again = peer.filter(peer.run("producer", { queue = name, jobs = {
      { name = "fourth", data = { n = 4 }, opts = { deduplication = { id = "order-2" } } } } }), { ev = "added" })[1]
    assert.equals(ours, again.id)
    assert.equals(2, assert(q:counts()).waiting)
    local counts = peer.filter(peer.run("admin", { queue = name, ops = { { op = "counts" } } }), { ev = "op" })[1]
    assert.equals(2, counts.result.waiting)
    local dedup = 0
    for _, e in ipairs(assert(q:events(100))) do
      if e.event == "deduplicated" then dedup = dedup + 1 end
    end
    assert.equals(2, dedup, "one deduplicated event per refused add, ours and Node's")
  end)

  it("pauses and resumes across both sides", function()
    local name = qname("pause")
    local q = queue.new(name, { redis = URL })
    local ran = {}
    local w = queue.worker(name, function(job) ran[#ran + 1] = job.id end, { redis = URL })
    local ops = peer.filter(peer.run("admin", { queue = name, ops = { { op = "pause" }, { op = "paused" } } }),
                            { ev = "op" })
    assert.is_true(ops[2].result)
    local id = assert(q:add("held", { n = 1 }))
    nuvion.sleep(300)
    assert.same({}, ran, "our worker took a job of a queue Node paused")
    assert.equals("paused", q:get_state(id))
    assert.equals(0, r:call("LPOS", "bull:" .. name .. ":paused", id))
    ops = peer.filter(peer.run("admin", { queue = name, ops = { { op = "counts" }, { op = "state", id = id } } }),
                      { ev = "op" })
    assert.equals(1, ops[1].result.paused)
    assert.equals(0, ops[1].result.waiting)
    assert.equals("waiting", ops[2].result) -- BullMQ's getState calls a job in `paused` "waiting"
    -- resumed by Node: our worker, blocked on the marker, takes it
    peer.run("admin", { queue = name, ops = { { op = "resume" } } })
    wait_for(function() return #ran == 1 end, 5000, "the job after Node's resume")
    assert.same({ id }, ran)
    -- paused by us: Node sees it
    assert(q:pause())
    ops = peer.filter(peer.run("admin", { queue = name, ops = { { op = "paused" } } }), { ev = "op" })
    assert.is_true(ops[1].result)
    assert(q:resume())
    ops = peer.filter(peer.run("admin", { queue = name, ops = { { op = "paused" } } }), { ev = "op" })
    assert.is_false(ops[1].result)
    w:close(5000)
  end)

  it("retries from failed across both sides: Node's Job.retry on ours, our retry_failed on Node's", function()
    local name = qname("retry")
    local q = queue.new(name, { redis = URL })
    -- failed by us, retried by Node, run again by us
    local runs = {}
    local w = queue.worker(name, function(job)
      runs[#runs + 1] = { id = job.id, attemptsMade = job.attemptsMade, attemptsStarted = job.attemptsStarted }
      if #runs == 1 then error("first run fails", 0) end
      return { second = true }
    end, { redis = URL })
    local id = assert(q:add("flaky", { n = 1 }, { attempts = 1 }))
    wait_for(function() return q:get_state(id) == "failed" end, 5000, "our failure")
    peer.run("admin", { queue = name, ops = { { op = "retry", id = id } } })
    wait_for(function() return q:get_state(id) == "completed" end, 5000, "our run after Node's retry")
    w:close(5000)
    assert.equals(2, #runs)
    -- Job.retry keeps the attempts (BullMQ resets them only when asked: resetAttemptsMade)
    assert.same({ id = id, attemptsMade = 1, attemptsStarted = 2 }, runs[2])
    assert.same({ second = true }, assert(q:get_job(id)).returnvalue)

    -- failed by Node, retried by us, run again by Node
    local id2 = assert(q:add("flaky-node", { n = 2 }, { attempts = 1 }))
    local nw = peer.start("worker", { queue = name, expect = 2, fail_attempts = 1, timeout_ms = 20000 })
    assert(nw:next(function(e) return e.ev == "failed" and e.id == id2 end, 10000), "Node did not fail it")
    wait_for(function() return q:get_state(id2) == "failed" end, 5000, "Node's failure")
    assert(q:retry_failed(id2))
    local events, how, code = nw:finish(15000)
    assert.same({ "exit", 0 }, { how, code }, json.encode(events))
    local second = peer.filter(events, { ev = "process", id = id2 })[2]
    assert.equals(0, second.attemptsMade) -- our retry_failed resets the attempts
    assert.equals(1, second.attemptsStarted)
    -- fail_attempts 1 fails every first attempt: with its attempts reset, the rerun fails again
    assert.equals("failed", q:get_state(id2))
    assert.equals(1, assert(q:get_job(id2)).attemptsMade)
  end)

  it("writes a job with the same Redis shape as BullMQ's own Queue.add", function()
    local ours, theirs = qname("shape-ours"), qname("shape-node")
    local opts = { attempts = 3, backoff = { type = "exponential", delay = 1000 }, removeOnComplete = 10,
                   removeOnFail = { count = 5 } }
    local q = queue.new(ours, { redis = URL })
    local cases = {
      { name = "plain", opts = opts, where = "wait" },
      { name = "prio", opts = { priority = 7 }, where = "prioritized" },
      { name = "later", opts = { delay = 60000 }, where = "delayed" },
      { name = "custom", opts = { jobId = "order-17" }, where = "wait" },
    }
    local node_jobs = {}
    for i, c in ipairs(cases) do
      node_jobs[i] = { name = c.name, data = { n = i }, opts = c.opts }
      c.ours = assert(q:add(c.name, { n = i }, c.opts))
    end
    local added = peer.filter(peer.run("producer", { queue = theirs, jobs = node_jobs }), { ev = "added" })
    for i, c in ipairs(cases) do c.theirs = added[i].id end

    local function hash(qn, id)
      local flat = assert(r:call("HGETALL", "bull:" .. qn .. ":" .. id))
      local h = {}
      for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
      return h
    end
    local function keys_of(h)
      local out = {}
      for k in pairs(h) do out[#out + 1] = k end
      table.sort(out)
      return table.concat(out, ",")
    end
    for _, c in ipairs(cases) do
      local a, b = hash(ours, c.ours), hash(theirs, c.theirs)
      assert.equals(keys_of(b), keys_of(a), c.name .. ": job hash fields")
      assert.same(json.decode(b.opts), json.decode(a.opts), c.name .. ": opts")
      assert.equals(b.data, a.data, c.name .. ": data")
      assert.equals(b.delay, a.delay, c.name .. ": delay")
      assert.equals(b.priority, a.priority, c.name .. ": priority")
      -- where the job went, and its score there
      local wherekey = function(qn) return "bull:" .. qn .. ":" .. c.where end
      if c.where == "wait" then
        assert.truthy(assert(r:call("LPOS", wherekey(ours), c.ours)) >= 0)
      else
        local sa = tonumber(assert(r:call("ZSCORE", wherekey(ours), c.ours)))
        local sb = tonumber(assert(r:call("ZSCORE", wherekey(theirs), c.theirs)))
        if c.where == "prioritized" then
          assert.equals(math.floor(sb / 2 ^ 32), math.floor(sa / 2 ^ 32), "priority part of the score")
        else
          -- timestamp * 0x1000 + sequence: the due times within a few seconds of each other
          assert.truthy(math.abs(math.floor(sa / 0x1000) - math.floor(sb / 0x1000)) < 5000, "delayed score")
          assert.truthy(math.floor(sa / 0x1000) >= tonumber(a.timestamp) + 60000, "delayed due time")
        end
      end
    end
    assert.equals("order-17", cases[4].ours)

    -- the same kinds of keys, of the same types
    local function types(qn)
      local out = {}
      for _, k in ipairs({ "wait", "prioritized", "delayed", "marker", "meta", "events", "id", "pc" }) do
        out[k] = assert(r:call("TYPE", "bull:" .. qn .. ":" .. k))
      end
      return out
    end
    assert.same(types(theirs), types(ours))
    local meta_a, meta_b = hash(ours, "meta"), hash(theirs, "meta")
    assert.equals(meta_b["opts.maxLenEvents"], meta_a["opts.maxLenEvents"])
    assert.equals(meta_b.version, meta_a.version)
    -- the marker: "0" at score 0 for the jobs that wait, "1" at the due time of the delayed one
    local function marker(qn)
      local m = assert(r:call("ZRANGE", "bull:" .. qn .. ":marker", 0, -1, "WITHSCORES"))
      local out = {}
      for i = 1, #m, 2 do out[m[i]] = tonumber(m[i + 1]) end
      return out
    end
    local ma, mb = marker(ours), marker(theirs)
    assert.equals(0, mb["0"])
    assert.equals(0, ma["0"])
    assert.truthy(mb["1"] and ma["1"], "a marker for the delayed job")
    assert.truthy(math.abs(ma["1"] - mb["1"]) < 5000, "the delayed job's marker: its due time")
    -- the events of the adds, field for field but job ids and due times
    local function stream(qn)
      local out = {}
      for _, e in ipairs(assert(r:call("XRANGE", "bull:" .. qn .. ":events", "-", "+"))) do
        local f = e[2]
        local parts = {}
        for i = 1, #f, 2 do
          if f[i] == "jobId" or f[i] == "delay" then
            parts[#parts + 1] = f[i]
          else
            parts[#parts + 1] = f[i] .. "=" .. f[i + 1]
          end
        end
        out[#out + 1] = table.concat(parts, " ")
      end
      return out
    end
    assert.same(stream(theirs), stream(ours))
  end)
end)
