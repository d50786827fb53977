-- bench/queue/run.lua -- jobs/s end to end (add -> processed -> completed) of a no-op job with
-- concurrency 50, nuvion.queue against Node BullMQ (node/bench.js) on the same Redis in the same
-- run, and the pick-up latency of a waiting job (add -> handler start, the worker idle on the
-- marker).
--
-- Run: bin/nuvion run bench/queue/run.lua   (NUVION_TEST_REDIS_URL names the Redis; make bench
-- starts one, and `make node` installs node/). Environment: BENCH_QUEUE_JOBS (jobs per
-- throughput round, default 20000), BENCH_QUEUE_ROUNDS (interleaved rounds, default 3; the best
-- jobs/s counts), BENCH_QUEUE_LATENCY_JOBS (latency samples per round, default 300; all rounds'
-- samples are pooled for p50/p99).
--
-- Shape, the same on both sides, one process each: a worker of concurrency 50 is up and idle;
-- 50 producer tasks (Node: 50 async loops) then add the jobs one after the other each (50 adds in
-- flight), and the clock runs from the first add to the completion of the last job (ours:
-- w:stats().completed; Node: the worker's `completed` event). The handler returns nothing.
-- Latency: one job at a time, the time from just before add to the start of its handler, the
-- next added 1 ms after the previous one completed. Jobs keep BullMQ's defaults (kept when
-- completed); each round's queue is deleted after it. Loopback only; about 30 s in all.
local queue = require "nuvion.queue"
local redis = require "nuvion.redis"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local process = require "nuvion.process"

local format, rep, floor, ceil = string.format, string.rep, math.floor, math.ceil

local URL = os.getenv("NUVION_TEST_REDIS_URL")
local JOBS = tonumber(os.getenv("BENCH_QUEUE_JOBS")) or 20000
local ROUNDS = tonumber(os.getenv("BENCH_QUEUE_ROUNDS")) or 3
local LAT_JOBS = tonumber(os.getenv("BENCH_QUEUE_LATENCY_JOBS")) or 300
local CONCURRENCY = 50
local PRODUCERS = 50
local GOAL_RATIO = 2.0
local GOAL_P99_MS = 5.0
local ROUND_TIMEOUT_MS = 60000 -- one side's round; bounds the whole bench with the rounds
local ROOT = (nuvion.context() or {}).root or "."
local RUN = "bench-queue-" .. nuvion.random_hex(4)

local function die(msg)
  io.stderr:write("bench/queue: ", msg, "\n")
  os.exit(1)
end

local function percentile(sorted, p)
  if #sorted == 0 then return 0 end
  return sorted[math.max(1, math.min(#sorted, ceil(p * #sorted)))]
end

-- The share of the machine's CPU time that was busy over the next `ms` (from /proc/stat): a busy
-- machine makes noisy figures.
local function cpu_busy_pct(ms)
  local function sample()
    local f = io.open("/proc/stat", "r")
    if not f then return nil end
    local line = f:read("*l")
    f:close()
    local total, idle, i = 0, 0, 0
    for n in line:gmatch("%d+") do
      i = i + 1
      total = total + tonumber(n)
      if i == 4 or i == 5 then idle = idle + tonumber(n) end -- idle, iowait
    end
    return total, idle
  end
  local t0, i0 = sample()
  nuvion.sleep(ms)
  local t1, i1 = sample()
  if not t0 or t1 == t0 then return 0 end
  return floor(100 * (1 - (i1 - i0) / (t1 - t0)) + 0.5)
end

local function delete_queue(r, name)
  local cursor = "0"
  repeat
    local res = assert(r:call("SCAN", cursor, "MATCH", "bull:" .. name .. ":*", "COUNT", 5000))
    cursor = res[1]
    if #res[2] > 0 then assert(r:call("UNLINK", unpack(res[2]))) end
  until cursor == "0"
end

local function wait_until(pred, what)
  local deadline = nuvion.monotonic_ms() + ROUND_TIMEOUT_MS
  while not pred() do
    if nuvion.monotonic_ms() > deadline then die("timed out waiting for " .. what) end
    nuvion.sleep(1)
  end
end

-- Our round: returns jobs/s and the latency samples (ms).
local function ours(name)
  local started_at = 0
  local w = queue.worker(name, function()
    started_at = nuvion.monotonic_ms()
  end, { redis = URL, concurrency = CONCURRENCY })
  local q = queue.new(name, { redis = URL })
  assert(q:counts()) -- connects, writes meta
  nuvion.sleep(200) -- the worker is idle, blocked on the marker

  local per = floor(JOBS / PRODUCERS)
  local failed
  local c0 = os.clock()
  local t0 = nuvion.monotonic_ms()
  for p = 1, PRODUCERS do
    local count = p < PRODUCERS and per or JOBS - per * (PRODUCERS - 1)
    nuvion.spawn(function()
      for i = 1, count do
        local id, err = q:add("noop", { i = i })
        if not id then failed = err.message return end
      end
    end)
  end
  wait_until(function() return failed or w:stats().completed >= JOBS end, "our jobs to complete")
  if failed then die("add failed: " .. failed) end
  local seconds = (nuvion.monotonic_ms() - t0) / 1000
  local cpu_s = os.clock() - c0

  nuvion.sleep(100)
  local lat = {}
  for i = 1, LAT_JOBS do
    local done = w:stats().completed
    local t = nuvion.monotonic_ms()
    assert(q:add("noop", { i = i }))
    wait_until(function() return w:stats().completed > done end, "a latency job")
    lat[#lat + 1] = started_at - t
    nuvion.sleep(1)
  end
  w:close(5000)
  return JOBS / seconds, lat, cpu_s
end

-- Node BullMQ's round (node/bench.js in a process of its own).
local function node(name)
  local args = assert(json.encode({ queue = name, redis = URL, jobs = JOBS, concurrency = CONCURRENCY,
                                    producers = PRODUCERS, latency_jobs = LAT_JOBS,
                                    timeout_ms = ROUND_TIMEOUT_MS }))
  local p = assert(process.spawn({ os.getenv("NUVION_NODE") or "node", ROOT .. "/node/bench.js", args },
                                 { output = "pipe" }))
  local result, lines = nil, {}
  while true do
    local line = p:line(ROUND_TIMEOUT_MS + 5000)
    if not line then break end
    lines[#lines + 1] = line
    local ev = line:sub(1, 1) == "{" and json.decode(line)
    if type(ev) == "table" and ev.ev == "result" then result = ev end
  end
  local how, code = p:wait(5000)
  if not how then
    p:kill("KILL")
    p:wait(5000)
  end
  p:close()
  if not result or how ~= "exit" or code ~= 0 then
    die("node/bench.js failed (" .. tostring(how) .. " " .. tostring(code) .. "): " .. table.concat(lines, "\n"))
  end
  return result.jobs_per_s, result.lat_ms, result.cpu_s
end

-- Redis's own CPU seconds (user + system) so far.
local function redis_cpu_s(r)
  local info = assert(r:call("INFO", "cpu"))
  return tonumber(info:match("used_cpu_user:([%d%.]+)")) + tonumber(info:match("used_cpu_sys:([%d%.]+)"))
end

local function main()
  if not URL then die("NUVION_TEST_REDIS_URL is not set (make bench starts a Redis)") end
  local r = assert(redis.connect(URL))
  local node_version = "?"
  do
    local p = process.spawn({ os.getenv("NUVION_NODE") or "node", "-e",
                              "console.log(process.version + ' bullmq ' + require('" .. ROOT
                                .. "/node/node_modules/bullmq/package.json').version)" }, { output = "pipe" })
    if p then
      node_version = p:line(10000) or "?"
      p:wait(5000)
      p:close()
    end
  end

  local busy = cpu_busy_pct(1000)

  local best = { ours = 0, node = 0 }
  local rates = { ours = {}, node = {} }
  local lat = { ours = {}, node = {} }
  local cpu = { ours = 0, node = 0 }       -- the client's CPU s over the throughput phases
  local redis_cpu = { ours = 0, node = 0 } -- Redis's CPU s over the whole rounds
  for round = 1, ROUNDS do
    for _, side in ipairs({ "node", "ours" }) do
      local name = format("%s-%s-%d", RUN, side, round)
      local rate, samples, cpu_s
      local rc0 = redis_cpu_s(r)
      if side == "ours" then rate, samples, cpu_s = ours(name) else rate, samples, cpu_s = node(name) end
      redis_cpu[side] = redis_cpu[side] + redis_cpu_s(r) - rc0
      cpu[side] = cpu[side] + cpu_s
      delete_queue(r, name)
      best[side] = math.max(best[side], rate)
      rates[side][#rates[side] + 1] = format("%.0f", rate)
      for _, s in ipairs(samples) do lat[side][#lat[side] + 1] = s end
    end
  end
  for _, side in ipairs({ "ours", "node" }) do table.sort(lat[side]) end

  local ratio = best.ours / best.node
  local p99 = percentile(lat.ours, 0.99)
  print(format("%d no-op jobs per round, best of %d interleaved rounds; concurrency %d, %d producers "
               .. "(adds in flight); one process per side, same Redis (%s)", JOBS, ROUNDS, CONCURRENCY, PRODUCERS,
               (URL:gsub("//[^@]*@", "//"))))
  print(format("peer: node %s; pick-up latency: %d jobs one at a time per round, all rounds pooled",
               node_version, LAT_JOBS))
  print(format("cpu busy in the second before the start: %d%%%s", busy,
               busy > 10 and " (warning: the machine was busy: figures are noisy)" or ""))
  print(format("%-20s | %8s | %6s | %11s | %11s | %11s | %10s | %10s", "worker", "jobs/s", "ratio",
               "pick-up p50", "pick-up p99", "pick-up max", "client cpu", "redis cpu"))
  print(rep("-", 21) .. "|" .. rep("-", 10) .. "|" .. rep("-", 8) .. "|" .. rep("-", 13) .. "|"
        .. rep("-", 13) .. "|" .. rep("-", 13) .. "|" .. rep("-", 12) .. "|" .. rep("-", 11))
  for _, row in ipairs({ { "ours", "nuvion.queue (Lua)" }, { "node", "BullMQ (Node)" } }) do
    local side = row[1]
    local l = lat[side]
    print(format("%-20s | %8.0f | %5.2fx | %8.3f ms | %8.3f ms | %8.3f ms | %5.1f us/j | %5.1f us/j", row[2],
                 best[side], best[side] / best.node, percentile(l, 0.5), percentile(l, 0.99), l[#l] or 0,
                 cpu[side] / (JOBS * ROUNDS) * 1e6, redis_cpu[side] / ((JOBS + LAT_JOBS) * ROUNDS) * 1e6))
  end
  print("client cpu: the worker+producer process's CPU per job over the throughput phases; redis cpu:")
  print("Redis's CPU per job over the whole rounds (both phases). us/j: microseconds per job.")
  local function per_job(side)
    return cpu[side] / (JOBS * ROUNDS) * 1e6 + redis_cpu[side] / ((JOBS + LAT_JOBS) * ROUNDS) * 1e6
  end
  print(format("cpu per job, client + redis (steadier than jobs/s on a busy machine): nuvion.queue %.1f us, "
               .. "BullMQ %.1f us: %.2fx less", per_job("ours"), per_job("node"), per_job("node") / per_job("ours")))
  print("")
  print(format("jobs/s of every round: nuvion.queue %s; BullMQ %s", table.concat(rates.ours, " "),
               table.concat(rates.node, " ")))
  local met_ratio, met_p99 = ratio >= GOAL_RATIO, p99 <= GOAL_P99_MS
  print(format("goal: >= %.1fx BullMQ's jobs/s: %.2fx, %s", GOAL_RATIO, ratio, met_ratio and "met" or "not met"))
  print(format("goal: pick-up p99 <= %.0f ms: %.3f ms, %s", GOAL_P99_MS, p99, met_p99 and "met" or "not met"))
  -- as the other benches: a missed goal is said above, not in the exit status (that is for a
  -- run that failed)
  return 0
end

os.exit(main())
