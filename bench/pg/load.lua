-- bench/pg/load.lua -- nuvion.pg side of bench/pg/run.sh: BENCH_PG_TASKS tasks each running
-- SELECT $1::int (x random in 1..1000) in a loop on one pool of as many connections, for
-- BENCH_PG_SECONDS after BENCH_PG_WARMUP_S of warm-up; prints "qps <n> errors <n>".
--
-- Run: NUVION_TEST_DATABASE_URL=postgres://... bin/nuvion run bench/pg/load.lua
local pg = require "nuvion.pg"
local nuvion = require "nuvion"

local URL = os.getenv("NUVION_TEST_DATABASE_URL") or error("NUVION_TEST_DATABASE_URL is not set")
local TASKS = tonumber(os.getenv("BENCH_PG_TASKS")) or 64
local SECONDS = tonumber(os.getenv("BENCH_PG_SECONDS")) or 10
local WARMUP_S = tonumber(os.getenv("BENCH_PG_WARMUP_S")) or 2

local random, floor = math.random, math.floor
local db = pg.pool(URL, { max = TASKS, queue = TASKS })

local counting, stop = false, false
local count, errors, running = 0, 0, 0
local last_err

local function worker()
  running = running + 1
  while not stop do
    local x = floor(random() * 1000) + 1
    local rows, err = db:query("SELECT $1::int AS x", x)
    if rows and rows[1].x == x then
      if counting then count = count + 1 end
    else
      errors = errors + 1
      last_err = err
    end
  end
  running = running - 1
end

for _ = 1, TASKS do nuvion.spawn(worker) end
nuvion.sleep(WARMUP_S * 1000)
counting = true
local t0 = nuvion.monotonic_ms()
nuvion.sleep(SECONDS * 1000)
counting = false
local elapsed_s = (nuvion.monotonic_ms() - t0) / 1000
stop = true
while running > 0 do nuvion.sleep(5) end
print(string.format("qps %.0f errors %d", count / elapsed_s, errors))
if last_err then io.stderr:write("last error: ", tostring(last_err), "\n") end
