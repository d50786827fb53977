-- bench/redis/run.lua -- SET and GET per second from Lua tasks through nuvion.redis, against
-- redis-benchmark on the same Redis in the same run, at the same concurrency and pipeline depth.
--
-- Run: bin/nuvion run bench/redis/run.lua   (NUVION_TEST_REDIS_URL names the Redis; make bench
-- starts one). Environment: BENCH_REDIS_OPS (requests per test and round, default 200000),
-- BENCH_REDIS_ROUNDS (interleaved rounds, default 3; the best one counts).
--
-- Shape: redis-benchmark -t set,get -n OPS -c 50 -P 16 -q: 50 connections, each with 16 commands
-- in flight. nuvion: 50 tasks, each sending explicit pipelines of 16 commands through the one
-- client of the worker (one connection: the tasks' pipelines share its writes). Also at -P 1
-- (50 tasks, one command each in flight, auto-pipelined on the shared connection), for
-- information. Keys and values as redis-benchmark's defaults: 3-byte values, one key.
-- The peer is Redis's own C client; the difference in shape is the design under test: nuvion's
-- tasks share one connection (Redis reads their commands in large batches), redis-benchmark's
-- clients have one connection each. Both rows use the same Redis, on the same loopback, in turn.
local redis = require "nuvion.redis"
local nuvion = require "nuvion"
local process = require "nuvion.process"

local format, rep = string.format, string.rep

local URL = os.getenv("NUVION_TEST_REDIS_URL")
local OPS = tonumber(os.getenv("BENCH_REDIS_OPS")) or 200000
local ROUNDS = tonumber(os.getenv("BENCH_REDIS_ROUNDS")) or 3
local CLIENTS = 50
local DEPTH = 16
local GOAL = 0.7
local PEER_TIMEOUT_MS = 20000 -- one redis-benchmark run; it takes about 1 s at -P 16, 4 s at -P 1
local KEY = "bench:redis:key"
local VALUE = "xxx"

local function die(msg)
  io.stderr:write("bench/redis: ", msg, "\n")
  os.exit(1)
end

-- redis-benchmark -q prints "SET: 123456.78 requests per second, p50=..." per test.
local function peer_round(host, port, depth)
  local p = assert(process.spawn({ "redis-benchmark", "-h", host, "-p", tostring(port), "-t", "set,get",
                                   "-n", tostring(OPS), "-c", tostring(CLIENTS), "-P", tostring(depth),
                                   "-q" }, { output = "pipe" }))
  local out = {}
  local deadline = nuvion.monotonic_ms() + PEER_TIMEOUT_MS
  while nuvion.monotonic_ms() < deadline do
    local data = p:read(1000)
    if data == nil then break end
    out[#out + 1] = data
  end
  local how, code = p:wait(math.max(deadline - nuvion.monotonic_ms(), 1000))
  if not how then -- still running: stop it (by its pid) before giving up
    p:kill("KILL")
    p:wait(5000)
  end
  p:close()
  if how ~= "exit" or code ~= 0 then die("redis-benchmark failed: " .. tostring(how) .. " " .. tostring(code)) end
  local text = table.concat(out):gsub("[^\n]*\r", "") -- progress lines end with CR
  local set = tonumber(text:match("SET: ([%d%.]+) requests per second"))
  local get = tonumber(text:match("GET: ([%d%.]+) requests per second"))
  if not set or not get then die("cannot read redis-benchmark's output: " .. text) end
  return set, get
end

-- OPS commands from CLIENTS tasks, DEPTH in flight per task; ops/s.
local function nuvion_round(r, cmd, depth)
  local batch = {}
  for i = 1, depth do batch[i] = cmd end
  local per_task = OPS / CLIENTS
  local batches = math.floor(per_task / depth)
  local done, failed = 0, nil
  local t0 = nuvion.monotonic_ms()
  for _ = 1, CLIENTS do
    nuvion.spawn(function()
      local ok, perr = pcall(function()
        for _ = 1, batches do
          local res, err
          if depth == 1 then
            res, err = r:call(unpack(cmd))
          else
            res, err = r:pipeline(batch)
          end
          if res == nil and err then failed = err break end
        end
      end)
      if not ok then failed = perr end
      done = done + 1
    end)
  end
  while done < CLIENTS do nuvion.sleep(1) end
  local dt = (nuvion.monotonic_ms() - t0) / 1000
  if failed then die("command failed: " .. failed) end
  return CLIENTS * batches * depth / dt
end

local function main()
  if not URL then die("NUVION_TEST_REDIS_URL is not set (make bench starts a Redis)") end
  local cfg = assert(redis.parse_url(URL))
  if cfg.password or cfg.tls then die("the bench needs a plain Redis without a password") end
  local r = assert(redis.connect(URL))
  assert(r:call("SET", KEY, VALUE))
  local set_cmd, get_cmd = { "SET", KEY, VALUE }, { "GET", KEY }
  nuvion_round(r, set_cmd, DEPTH) -- warm-up (the JIT, the connection)

  local rows = {}
  for _, depth in ipairs({ DEPTH, 1 }) do
    local best = { 0, 0, 0, 0 } -- nuvion SET, GET, peer SET, GET
    for _ = 1, ROUNDS do
      local s = nuvion_round(r, set_cmd, depth)
      local g = nuvion_round(r, get_cmd, depth)
      local ps, pg = peer_round(cfg.host, cfg.port, depth)
      best = { math.max(best[1], s), math.max(best[2], g), math.max(best[3], ps), math.max(best[4], pg) }
    end
    rows[#rows + 1] = { "SET", depth, best[1], best[3] }
    rows[#rows + 1] = { "GET", depth, best[2], best[4] }
  end
  r:call("DEL", KEY, "key:__rand_int__")

  print(format("%d requests per test and round, best of %d interleaved rounds; %d clients (tasks / "
               .. "connections), pipeline depth -P as shown; 3-byte values", OPS, ROUNDS, CLIENTS))
  print("nuvion: one worker, one connection, 50 tasks each with -P commands in flight (r:pipeline at 16, "
        .. "r:call at 1)")
  print(format("%-9s | %12s | %22s | %6s | %6s | %s", "test", "nuvion ops/s", "redis-benchmark ops/s", "ratio",
               "goal", "result"))
  print(rep("-", 10) .. "|" .. rep("-", 14) .. "|" .. rep("-", 24) .. "|" .. rep("-", 8) .. "|"
        .. rep("-", 8) .. "|" .. rep("-", 9))
  -- a missed goal is said in the table, not in the exit status (that is for a run that failed)
  for _, row in ipairs(rows) do
    local ratio = row[3] / row[4]
    local goal, result = "", "info"
    if row[2] == DEPTH then
      goal = format(">=%.1f", GOAL)
      result = ratio >= GOAL and "met" or "not met"
    end
    print(format("%-9s | %12.0f | %22.0f | %6.2f | %6s | %s", format("%s -P %d", row[1], row[2]), row[3], row[4],
                 ratio, goal, result))
  end
  return 0
end

os.exit(main())
