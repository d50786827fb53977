-- bench/webhooks/run.lua -- webhook deliveries per second to a local receiver: events published
-- with nuvion.webhooks (one delivery row and one queue job each), then delivered by a
-- nuvion.queue worker calling wh:job_handler() (SSRF check, signing with HMAC-SHA256, POST,
-- the attempt and the delivery recorded in Postgres) to a nuvion server on loopback that
-- verifies every signature. Also the same deliveries through run_due (no queue).
--
-- Run: bin/nuvion run bench/webhooks/run.lua   (NUVION_TEST_DATABASE_URL: a superuser database,
-- where a fresh database nuvion_bench_webhooks is made and migrated with sql/core;
-- NUVION_TEST_REDIS_URL). BENCH_WEBHOOKS_N (deliveries per round, default 3000),
-- BENCH_WEBHOOKS_CONCURRENCY (worker concurrency, default 50), BENCH_WEBHOOKS_ROUNDS (default 2,
-- the best counts).
local nuvion = require "nuvion"
local pg = require "nuvion.pg"
local redis = require "nuvion.redis"
local crypto = require "nuvion.crypto"
local queue = require "nuvion.queue"
local process = require "nuvion.process"
local migrate = require "nuvion.migrate"
local webhooks = require "nuvion.webhooks"
local ids = require "nuvion.ids"

local format = string.format
local N = tonumber(os.getenv("BENCH_WEBHOOKS_N")) or 3000
local CONCURRENCY = tonumber(os.getenv("BENCH_WEBHOOKS_CONCURRENCY")) or 50
local ROUNDS = tonumber(os.getenv("BENCH_WEBHOOKS_ROUNDS")) or 2
local ADMIN_URL = os.getenv("NUVION_TEST_DATABASE_URL")
local REDIS_URL = os.getenv("NUVION_TEST_REDIS_URL")
local ROOT = nuvion.context().root or "."
local BIN = os.getenv("NUVION_BIN") or (ROOT .. "/bin/nuvion")
local DB_NAME = "nuvion_bench_webhooks"

local function die(msg)
  io.stderr:write("bench/webhooks: ", msg, "\n")
  os.exit(1)
end
if not ADMIN_URL or not REDIS_URL then die("NUVION_TEST_DATABASE_URL and NUVION_TEST_REDIS_URL must be set") end

-- A fresh database with core's tables.
local admin = pg.pool(ADMIN_URL, { max = 1 })
assert(admin:query("DROP DATABASE IF EXISTS " .. DB_NAME))
assert(admin:query("CREATE DATABASE " .. DB_NAME))
local url = ADMIN_URL:gsub("/[%w_]+(%?.*)$", "/" .. DB_NAME .. "%1"):gsub("/[%w_]+$", "/" .. DB_NAME)
local applied, merr = migrate.run(ROOT .. "/sql/core", url, "core")
if not applied then die("migrate: " .. tostring(merr)) end
local db = pg.pool(url, { max = 20 })
local r = assert(redis.connect(REDIS_URL))

-- The receiver: one worker process.
local function start_receiver(secret)
  local p = assert(process.spawn({ BIN, "serve", ROOT .. "/bench/webhooks/receiver" }, {
    env = { PORT = "0", WEB_CONCURRENCY = "1", NUVION_ACCESS_LOG = "0", NUVION_EXIT_WITH_PARENT = "1",
            BENCH_WEBHOOK_SECRET = secret, NUVION_ROOT = ROOT },
    output = "pipe" }))
  local port
  local deadline = nuvion.monotonic_ms() + 10000
  while nuvion.monotonic_ms() < deadline do
    local line = p:line(deadline - nuvion.monotonic_ms())
    if not line then break end
    port = port or tonumber(line:match("listening on http://0.0.0.0:(%d+)"))
    if line:find('"generation 1 serving"', 1, true) then break end
  end
  if not port then die("the receiver did not start") end
  nuvion.spawn(function() while p.fd do p:line(60000) end end)
  return p, port
end

local keyring = assert(crypto.keyring({ k1 = crypto.random(32) }, "k1"))
local schedule = { attempts = 3, first_retry_ms = 1000, timeout_ms = 5000, response_excerpt_bytes = 512,
                   disable_after = { failures = 1000000, for_ms = 0 } }
local setup_wh = webhooks.new({ db = db, keyring = keyring, schedule = schedule, allow_private = true })
local owner = "cus_bench"
local ep = assert(setup_wh:create_endpoint(owner, { url = "http://127.0.0.1:1/hook", event_types = { "*" } }))
local proc, port = start_receiver(ep.secret)
assert(setup_wh:update_endpoint(owner, ep.id, { url = "http://127.0.0.1:" .. port .. "/hook" }))

local function publish_all(wh)
  local t0 = nuvion.monotonic_ms()
  local left = N
  local per = 10
  for w = 1, per do
    nuvion.spawn(function()
      for k = w, N, per do
        assert(wh:publish({ id = ids.new("evt"), type = "payout.paid", owner_id = owner,
                            data = { payout_id = "po_" .. k, amount = 1000 + k, currency = "KES" } }))
        left = left - 1
      end
    end)
  end
  while left > 0 do nuvion.sleep(5) end
  return nuvion.monotonic_ms() - t0
end

local function succeeded()
  return db:query("SELECT count(*)::int AS n FROM webhook_deliveries WHERE status = 'succeeded'")[1].n
end

local function reset()
  assert(db:query("TRUNCATE webhook_attempts, webhook_deliveries"))
end

local function latency()
  local rows = db:query("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50, " ..
                        "percentile_disc(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99, " ..
                        "count(*) FILTER (WHERE NOT ok)::int AS failed FROM webhook_attempts")
  return rows[1]
end

local function wait_all(t0)
  local deadline = nuvion.monotonic_ms() + 120000
  while succeeded() < N do
    if nuvion.monotonic_ms() > deadline then die("deliveries did not finish") end
    nuvion.sleep(20)
  end
  return nuvion.monotonic_ms() - t0
end

local function queue_round()
  reset()
  local qname = "bench_webhooks_" .. ids.new("q")
  local q = queue.new(qname, { redis = r })
  local wh = webhooks.new({ db = db, keyring = keyring, schedule = schedule, allow_private = true, queue = q })
  local pub_ms = publish_all(wh)
  local t0 = nuvion.monotonic_ms()
  local w = queue.worker(qname, wh:job_handler(), { redis = r, concurrency = CONCURRENCY })
  local ms = wait_all(t0)
  w:close(5000)
  for _, k in ipairs({ "wait", "completed", "failed", "delayed", "events", "meta", "id", "marker", "active" }) do
    r:call("DEL", q:keys(k))
  end
  return ms, pub_ms, latency()
end

local function due_round()
  reset()
  local wh = webhooks.new({ db = db, keyring = keyring, schedule = schedule, allow_private = true })
  publish_all(wh)
  local t0 = nuvion.monotonic_ms()
  while succeeded() < N do
    assert(wh:run_due({ limit = CONCURRENCY }))
  end
  return nuvion.monotonic_ms() - t0, nil, latency()
end

local best = {}
for round = 1, ROUNDS do
  for _, m in ipairs({ { "queue", queue_round }, { "run_due", due_round } }) do
    local ms, pub_ms, lat = m[2]()
    local rate = N / (ms / 1000)
    io.stderr:write(format("round %d %s: %d deliveries in %.0f ms (%.0f/s)\n", round, m[1], N, ms, rate))
    if not best[m[1]] or rate > best[m[1]].rate then
      best[m[1]] = { rate = rate, ms = ms, pub = pub_ms and N / (pub_ms / 1000), lat = lat }
    end
  end
end

print(format("%d deliveries per round to one local endpoint (nuvion server, 1 worker, verifying every " ..
             "signature); best of %d rounds", N, ROUNDS))
print("each delivery: ssrf check, secrets decrypted, HMAC-SHA256 signature, POST, attempt + delivery rows")
print("")
print("path                                    | deliveries/s | attempt p50 | attempt p99 | failed")
print("----------------------------------------|--------------|-------------|-------------|-------")
local q, d = best.queue, best.run_due
print(format("%-40s| %12.0f | %8d ms | %8d ms | %6d", format("queue worker, concurrency %d", CONCURRENCY),
             q.rate, q.lat.p50, q.lat.p99, q.lat.failed))
print(format("%-40s| %12.0f | %8d ms | %8d ms | %6d", format("run_due, %d at a time (no queue)", CONCURRENCY),
             d.rate, d.lat.p50, d.lat.p99, d.lat.failed))
print(format("publish (delivery row + queue job), 10 tasks: %.0f events/s", q.pub))

proc:kill("TERM")
proc:wait(5000)
proc:close()
return 0
