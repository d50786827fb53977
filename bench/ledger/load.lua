-- bench/ledger/load.lua -- the nuvion side of bench/ledger/run.sh, one OS process of it.
--
--   bin/nuvion run bench/ledger/load.lua accounts N        create accounts 1..N (no flags)
--   bin/nuvion run bench/ledger/load.lua run N PROC         submit transfers, print JSON
--
-- run: BENCH_LEDGER_TASKS tasks (default 128), each submitting one single-phase transfer at a
-- time (lg:transfer) in a loop between two distinct accounts drawn uniformly from 1..N (N = 2:
-- the one hot pair, either way), amount 1..100, ledger 1, code 1. Ids are 29 decimal digits
-- (beyond 2^64, a string): "9", the process index PROC (2 digits), the pair count N's digits
-- count (2 digits) and a counter of this process (24 digits): unique per process and scenario.
-- After BENCH_LEDGER_WARMUP_S (default 2) of warm-up, counts for BENCH_LEDGER_SECONDS (default
-- 10) the transfers whose result came back in that window, and their latency (from the call to
-- its result). Prints one JSON line:
--   {"proc":1,"seconds":10.0,"ok":123,"p50_ms":1.2,"p99_ms":9.8,"results":{"ok":123,...},
--    "errors":{"code":n,...},"hist":{"<us>":n,...},"stuck":0}
-- engine: lg:stats() over the window (batches, events, retries, failed_batches).
-- hist: latencies in microseconds, bucketed by their first 3 significant digits (key = the
-- bucket's lower bound): exact below 1 ms, within 1% above. stuck: tasks still waiting for a
-- result 30 s after the end (they are not counted).
-- The database: argument-free ledger.open() would take LEDGER_DATABASE_URL, else
-- NUVION_LEDGER_DATABASE_URL; this script passes NUVION_LEDGER_DATABASE_URL explicitly.
-- Options of ledger.open from BENCH_LEDGER_BATCH_MAX, BENCH_LEDGER_BATCH_WAIT_US,
-- BENCH_LEDGER_INFLIGHT (unset: the library's defaults).
local nuvion = require "nuvion"
local json = require "nuvion.json"
local ledger = require "nuvion.ledger"

local random, floor, format, tostring = math.random, math.floor, string.format, tostring
local monotonic_ms = nuvion.monotonic_ms

local URL = os.getenv("NUVION_LEDGER_DATABASE_URL") or error("NUVION_LEDGER_DATABASE_URL is not set")
local TASKS = tonumber(os.getenv("BENCH_LEDGER_TASKS")) or 128
local SECONDS = tonumber(os.getenv("BENCH_LEDGER_SECONDS")) or 10
local WARMUP_S = tonumber(os.getenv("BENCH_LEDGER_WARMUP_S")) or 2
local DRAIN_MS = 30000
local ACCOUNTS_CHUNK = 1000 -- events per create_accounts call (below the default batch_max, 1024)

local function die(msg)
  io.stderr:write("bench/ledger/load.lua: ", msg, "\n")
  os.exit(1)
end

local function open()
  local opts = {}
  local bm, bw, inf = os.getenv("BENCH_LEDGER_BATCH_MAX"), os.getenv("BENCH_LEDGER_BATCH_WAIT_US"),
    os.getenv("BENCH_LEDGER_INFLIGHT")
  if bm then opts.batch_max = tonumber(bm) end
  if bw then opts.batch_wait_us = tonumber(bw) end
  if inf then opts.inflight = tonumber(inf) end
  return ledger.open(URL, opts)
end

local function create_accounts(n)
  local lg = open()
  local done = 0
  local chunk = math.min(ACCOUNTS_CHUNK, tonumber(os.getenv("BENCH_LEDGER_BATCH_MAX")) or ACCOUNTS_CHUNK)
  while done < n do
    local list = {}
    for i = done + 1, math.min(n, done + chunk) do
      list[#list + 1] = { id = i, ledger = 1, code = 1 }
    end
    local res, err = lg:create_accounts(list)
    if not res then die("create_accounts: " .. tostring(err.code) .. ": " .. tostring(err.message)) end
    for i, r in ipairs(res) do
      if r ~= "ok" and r ~= "exists" then die(format("create_accounts: account %d: %s", done + i, r)) end
    end
    done = done + #list
  end
  print(format("accounts %d", n))
end

-- Bucket of a latency in microseconds: its first 3 significant digits.
local function bucket(us)
  us = floor(us)
  if us < 1000 then return us end
  local scale = 1
  while us >= 1000 do us = floor(us / 10); scale = scale * 10 end
  return us * scale
end

local function run(n, proc)
  if n < 2 then die("run needs at least 2 accounts") end
  local lg = open()
  local prefix = format("9%02d%02d", proc, #tostring(n))
  local counting, stop = false, false
  local seq, ok, running = 0, 0, 0
  local results, errors, hist = {}, {}, {}

  local function submit()
    local a = floor(random() * n) + 1
    local b = floor(random() * (n - 1)) + 1
    if b >= a then b = b + 1 end
    seq = seq + 1
    local t = { id = prefix .. format("%024d", seq), debit_account_id = a, credit_account_id = b,
                amount = floor(random() * 100) + 1, ledger = 1, code = 1 }
    local t0 = monotonic_ms()
    local r, err = lg:transfer(t)
    if not counting then return end
    if r == "ok" then
      ok = ok + 1
      local k = bucket((monotonic_ms() - t0) * 1000)
      hist[k] = (hist[k] or 0) + 1
    end
    local name = r or ("error:" .. tostring(type(err) == "table" and err.code or err))
    results[name] = (results[name] or 0) + 1
    if r ~= "ok" then errors[name] = (errors[name] or 0) + 1 end
  end

  local function worker()
    running = running + 1
    local fine, msg = pcall(function()
      while not stop do submit() end
    end)
    if not fine then
      errors["raised"] = (errors["raised"] or 0) + 1
      io.stderr:write("bench/ledger/load.lua: a task raised: ", tostring(msg), "\n")
    end
    running = running - 1
  end

  for _ = 1, TASKS do nuvion.spawn(worker) end
  nuvion.sleep(WARMUP_S * 1000)
  local s0 = lg:stats()
  counting = true
  local t0 = monotonic_ms()
  nuvion.sleep(SECONDS * 1000)
  counting = false
  local elapsed_s = (monotonic_ms() - t0) / 1000
  local s1 = lg:stats()
  stop = true
  local deadline = monotonic_ms() + DRAIN_MS
  while running > 0 and monotonic_ms() < deadline do nuvion.sleep(5) end
  local h, keys = {}, {}
  for k, v in pairs(hist) do
    h[tostring(k)] = v
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local function percentile(p) -- ms, a bucket's lower bound
    local rank, seen = math.ceil(ok * p), 0
    for _, k in ipairs(keys) do
      seen = seen + hist[k]
      if seen >= rank then return k / 1000 end
    end
    return 0
  end
  print(json.encode({ proc = proc, seconds = elapsed_s, ok = ok, tasks = TASKS, p50_ms = percentile(0.5),
                      p99_ms = percentile(0.99), results = json.object(results), errors = json.object(errors),
                      hist = json.object(h), stuck = running,
                      engine = { batches = s1.batches - s0.batches, events = s1.events - s0.events,
                                 retries = s1.retries - s0.retries,
                                 failed_batches = s1.failed_batches - s0.failed_batches } }))
end

local args = { ... }
local cmd, n, proc = args[1], tonumber(args[2]), tonumber(args[3])
if cmd == "accounts" and n then
  create_accounts(n)
elseif cmd == "run" and n and proc then
  run(n, proc)
else
  die("usage: load.lua accounts N | load.lua run N PROC")
end
os.exit(0)
