-- bench/outbox/run.lua -- outbox events per second: published (one transaction each, from 10
-- tasks), then relayed by one relay (batches of 100) into a nuvion.queue.
--
-- Run: bin/nuvion run bench/outbox/run.lua   (NUVION_TEST_DATABASE_URL: a superuser database,
-- where a fresh database nuvion_bench_outbox is made and migrated with sql/core;
-- NUVION_TEST_REDIS_URL). BENCH_OUTBOX_N (events, default 5000).
local nuvion = require "nuvion"
local pg = require "nuvion.pg"
local redis = require "nuvion.redis"
local queue = require "nuvion.queue"
local migrate = require "nuvion.migrate"
local outbox = require "nuvion.outbox"
local ids = require "nuvion.ids"

local format = string.format
local N = tonumber(os.getenv("BENCH_OUTBOX_N")) or 5000
local ADMIN_URL = os.getenv("NUVION_TEST_DATABASE_URL")
local REDIS_URL = os.getenv("NUVION_TEST_REDIS_URL")
local ROOT = nuvion.context().root or "."
local DB_NAME = "nuvion_bench_outbox"

if not ADMIN_URL or not REDIS_URL then
  io.stderr:write("bench/outbox: NUVION_TEST_DATABASE_URL and NUVION_TEST_REDIS_URL must be set\n")
  os.exit(1)
end

local admin = pg.pool(ADMIN_URL, { max = 1 })
assert(admin:query("DROP DATABASE IF EXISTS " .. DB_NAME))
assert(admin:query("CREATE DATABASE " .. DB_NAME))
local url = ADMIN_URL:gsub("/[%w_]+(%?.*)$", "/" .. DB_NAME .. "%1"):gsub("/[%w_]+$", "/" .. DB_NAME)
assert(migrate.run(ROOT .. "/sql/core", url, "core"))
local db = pg.pool(url, { max = 12 })
local r = assert(redis.connect(REDIS_URL))

local t0 = nuvion.monotonic_ms()
local left = N
for w = 1, 10 do
  nuvion.spawn(function()
    for k = w, N, 10 do
      assert(db:tx(function(tx)
        return outbox.publish(tx, { aggregate_type = "payout", aggregate_id = "po_" .. (k % 100),
                                    type = "payout.paid", data = { k = k, amount = 1000 } })
      end))
      left = left - 1
    end
  end)
end
while left > 0 do nuvion.sleep(5) end
local pub_ms = nuvion.monotonic_ms() - t0

local qname = "bench_outbox_" .. ids.new("q")
local q = queue.new(qname, { redis = r })
t0 = nuvion.monotonic_ms()
local relayed = 0
while relayed < N do
  local n, err = outbox.relay_once(db, q, { batch = 100, job_opts = { removeOnComplete = true } })
  assert(n, err)
  relayed = relayed + n
end
local relay_ms = nuvion.monotonic_ms() - t0
assert(q:counts().waiting == N)
for _, k in ipairs({ "wait", "events", "meta", "id", "marker" }) do r:call("DEL", q:keys(k)) end

print(format("%d events on 100 aggregates", N))
print("step                                               |   events/s")
print("---------------------------------------------------|-----------")
print(format("%-51s| %10.0f", "publish, 1 transaction each, 10 tasks", N / (pub_ms / 1000)))
print(format("%-51s| %10.0f", "relay_once, batches of 100, into nuvion.queue", N / (relay_ms / 1000)))
return 0
