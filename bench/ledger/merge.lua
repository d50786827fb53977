-- bench/ledger/merge.lua -- merges the JSON lines of bench/ledger/load.lua's processes.
--
--   bin/nuvion run bench/ledger/merge.lua FILE...
--
-- Prints one line: "<transfers/s> <p50 ms> <p99 ms> <ok> <errors> <batches> <events> <retries>
-- <what>", where transfers/s is
-- the sum over the processes of their "ok" results per second of their own window, p50/p99
-- come from the merged latency histograms (a bucket's lower bound: within 1%), errors counts
-- every result other than "ok" plus the tasks that raised or never got an answer, and <what>
-- names them ("-" when none): "exceeds_credits=3,error:ledger_timeout=1"; batches, events and
-- retries are the engines' (lg:stats()) over the window, summed.
-- A file without a JSON line of load.lua (the process failed): exit status 1.
local json = require "nuvion.json"

local format, concat, sort, floor = string.format, table.concat, table.sort, math.floor

local function die(msg)
  io.stderr:write("bench/ledger/merge.lua: ", msg, "\n")
  os.exit(1)
end

local files = { ... }
if #files == 0 then die("usage: merge.lua FILE...") end

local tps, ok, errors, batches, events, retries = 0, 0, 0, 0, 0, 0
local hist, what = {}, {}
for _, path in ipairs(files) do
  local f = io.open(path, "r")
  if not f then die("cannot open " .. path) end
  local doc
  for line in f:lines() do
    if line:sub(1, 1) == "{" then doc = json.decode(line) end
  end
  f:close()
  if type(doc) ~= "table" or not doc.seconds or not doc.hist then die(path .. ": no result line") end
  tps = tps + (doc.seconds > 0 and doc.ok / doc.seconds or 0)
  ok = ok + doc.ok
  for k, v in pairs(doc.hist) do
    local us = tonumber(k)
    hist[us] = (hist[us] or 0) + v
  end
  for k, v in pairs(doc.errors) do
    what[k] = (what[k] or 0) + v
    errors = errors + v
  end
  if doc.engine then
    batches = batches + doc.engine.batches
    events = events + doc.engine.events
    retries = retries + doc.engine.retries
  end
  if doc.stuck and doc.stuck > 0 then
    what.stuck = (what.stuck or 0) + doc.stuck
    errors = errors + doc.stuck
  end
end

local keys, total = {}, 0
for us, n in pairs(hist) do
  keys[#keys + 1] = us
  total = total + n
end
sort(keys)

local function percentile(p)
  if total == 0 then return 0 end
  local rank, seen = math.ceil(total * p), 0
  for _, us in ipairs(keys) do
    seen = seen + hist[us]
    if seen >= rank then return us / 1000 end
  end
  return keys[#keys] / 1000
end

local names = {}
for k, v in pairs(what) do names[#names + 1] = format("%s=%d", k, v) end
sort(names)
print(format("%d %.2f %.2f %d %d %d %d %d %s", floor(tps + 0.5), percentile(0.50), percentile(0.99), ok, errors,
             batches, events, retries, #names > 0 and concat(names, ",") or "-"))
