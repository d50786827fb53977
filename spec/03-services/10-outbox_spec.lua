-- nuvion.outbox against core's Postgres and a Redis stand-in for the queue: publish in the
-- business transaction, relay in order per aggregate, consume once, and nothing lost when the
-- producing process is killed -9 between commit and enqueue (docs/outbox.md).
local helpers = require "spec.helpers"
local process = require "nuvion.process"
local pg = require "nuvion.pg"
local redis = require "nuvion.redis"
local outbox = require "nuvion.outbox"
local ids = require "nuvion.ids"
local queue = require "nuvion.queue"

local db = pg.pool(assert(os.getenv("NUVION_CORE_DATABASE_URL"), "NUVION_CORE_DATABASE_URL"), { max = 4 })
local r = assert(redis.connect(assert(os.getenv("NUVION_TEST_REDIS_URL"))))

-- The queue's custom-id rule, as the relay relies on it: a job id seen before is not added again.
local function redis_queue(run)
  local q = { adds = 0 }
  function q.add(_, name, data, opts)
    assert.equals(data.id, opts.jobId)
    assert.equals(data.type, name)
    q.adds = q.adds + 1
    local fresh = r:call("SET", "outbox_spec:" .. run .. ":job:" .. opts.jobId, "1", "NX")
    if fresh then
      r:call("RPUSH", "outbox_spec:" .. run .. ":queue", data.id .. "|" .. data.aggregate_id .. "|" .. data.seq)
    end
    return opts.jobId
  end
  return q
end

-- Relays until nothing is pending. "busy": a killed relay's transaction still holds the relay
-- lock until Postgres notices its connection is gone; wait for it.
local function publish(tx, aggregate_id, data)
  return outbox.publish(tx, { aggregate_type = "spec_order", aggregate_id = aggregate_id,
                              type = "spec_order.created", data = data })
end

local function drain(target, job_opts)
  local total = 0
  for _ = 1, 200 do
    local n, err = outbox.relay_once(db, target, { batch = 50, job_opts = job_opts })
    while err == "busy" do
      require("nuvion").sleep(25)
      n, err = outbox.relay_once(db, target, { batch = 50, job_opts = job_opts })
    end
    assert.is_nil(err)
    total = total + n
    if n == 0 then return total end
  end
  error("outbox never drained")
end

local function queued(run)
  local out = {}
  for _, item in ipairs(r:call("LRANGE", "outbox_spec:" .. run .. ":queue", 0, -1)) do
    local id, agg, seq = item:match("^([^|]+)|([^|]+)|(%d+)$")
    out[#out + 1] = { id = id, aggregate_id = agg, seq = tonumber(seq) }
  end
  return out
end

local function pending(run)
  return db:query("SELECT count(*)::int AS n FROM outbox WHERE relayed_at IS NULL AND aggregate_id LIKE $1",
                  run .. "-%")[1].n
end

-- Consumes every queued message, each twice (a duplicate delivery), through consume_once.
local function consume_all(run, msgs)
  local effects = 0
  for round = 1, 2 do
    for _, m in ipairs(msgs) do
      local ok, err = outbox.consume_once(db, m.id, function(tx)
        local res, e = tx:query("INSERT INTO outbox_spec_effects (event_id, run) VALUES ($1, $2)", m.id, run)
        if not res then return nil, e end
        return "done"
      end, { consumer = "spec" })
      assert(ok ~= nil, err)
      if ok then assert.equals("done", err) end  -- fn's value
      assert.equals(round == 1, ok)           -- applied the first time, a duplicate the second
      if ok then effects = effects + 1 end
    end
  end
  return effects
end

local function check_order(msgs)
  local last = {}
  for _, m in ipairs(msgs) do
    assert.is_true((last[m.aggregate_id] or 0) < m.seq, "out of order in " .. m.aggregate_id)
    last[m.aggregate_id] = m.seq
  end
end

local function spawn_producer(run, n, mode)
  return assert(process.spawn({ helpers.bin, "run", helpers.root .. "/spec/fixtures/outbox/producer.lua" },
    { env = { OUTBOX_SPEC_RUN = run, OUTBOX_SPEC_N = tostring(n), OUTBOX_SPEC_MODE = mode,
              NUVION_EXIT_WITH_PARENT = "1" }, output = "pipe" }))
end

local function wait_line(p, want)
  local seen = {}
  while true do
    local line = p:line(20000)
    if not line then error("producer ended before " .. want .. ": " .. table.concat(seen, "\n")) end
    seen[#seen + 1] = line
    if line == want then return end
  end
end

local function kill9(p)
  assert(p:kill("KILL"))
  local how = p:wait(5000)
  p:close()
  assert.equals("signal", how)
end

describe("nuvion.outbox", function()
  setup(function()
    assert(db:query("CREATE TABLE IF NOT EXISTS outbox_spec_orders (id text PRIMARY KEY, run text NOT NULL, " ..
                    "aggregate_id text NOT NULL, k int NOT NULL)"))
    assert(db:query("CREATE TABLE IF NOT EXISTS outbox_spec_effects (event_id text PRIMARY KEY, run text NOT NULL)"))
    -- Other specs' and earlier runs' events would be relayed into this run's queues: start with
    -- nothing pending.
    assert(db:query("UPDATE outbox SET relayed_at = now() WHERE relayed_at IS NULL"))
  end)

  it("publishes in the caller's transaction: a rollback leaves no event", function()
    local run = ids.new("run")
    local id = assert(db:tx(function(tx)
      return publish(tx, run .. "-a", { n = 1 })
    end))
    assert.matches("^evt_%x+$", id)
    local none, err = db:tx(function(tx)
      assert(publish(tx, run .. "-a", { n = 2 }))
      return nil, "business rule said no"
    end)
    assert.is_nil(none)
    assert.equals("business rule said no", err)
    local rows = db:query("SELECT id, data FROM outbox WHERE aggregate_id = $1", run .. "-a")
    assert.equals(1, #rows)
    assert.equals(id, rows[1].id)
    assert.equals(1, rows[1].data.n)
    assert.equals(1, drain(redis_queue(run)))
  end)

  it("refuses bad events as caller bugs and changes nothing", function()
    assert.has_error(function()
      db:tx(function(tx)
        return outbox.publish(tx, { aggregate_type = "Bad Type", aggregate_id = "x", type = "a.b", data = {} })
      end)
    end)
    assert.has_error(function()
      db:tx(function(tx)
        return outbox.publish(tx, { aggregate_type = "a", aggregate_id = "x", type = "nodot", data = {} })
      end)
    end)
    assert.has_error(function() outbox.publish(db, nil) end)
  end)

  it("relays in order per aggregate with the event id as job id, once, and consumers apply each once", function()
    local run = ids.new("run")
    -- Concurrent writers on three aggregates.
    helpers.parallel(6, function(w)
      for k = 1, 20 do
        assert(db:tx(function(tx)
          return outbox.publish(tx, { aggregate_type = "spec_order", aggregate_id = run .. "-agg" .. (w % 3),
                                      type = "spec_order.created", data = { w = w, k = k } })
        end))
      end
    end)
    local q = redis_queue(run)
    assert.equals(120, drain(q))
    assert.equals(0, pending(run))
    local msgs = queued(run)
    assert.equals(120, #msgs)
    check_order(msgs)
    assert.equals(120, consume_all(run, msgs))
    local rows = db:query("SELECT count(*)::int AS n FROM outbox_spec_effects WHERE run = $1", run)
    assert.equals(120, rows[1].n)
  end)

  it("a later transaction of the same aggregate never overtakes one still open (commit order)", function()
    local nuvion = require "nuvion"
    local agg = ids.new("run") .. "-ord"
    local delivered = {}
    local function target(msg)
      if msg.aggregate_id == agg then delivered[#delivered + 1] = msg.data.k end
      return true
    end
    local done = 0
    nuvion.spawn(function()
      assert(db:tx(function(tx)
        assert(publish(tx, agg, { k = 1 }))
        assert(tx:query("SELECT 1")) -- the deferred lock and insert go with it: seq drawn
        nuvion.sleep(300)       -- the first transaction stays open ...
        return true
      end))
      done = done + 1
    end)
    nuvion.sleep(50)
    nuvion.spawn(function()     -- ... while a second one publishes for the same aggregate
      assert(db:tx(function(tx)
        return publish(tx, agg, { k = 2 })
      end))
      done = done + 1
    end)
    nuvion.sleep(100)
    assert.equals(0, (outbox.relay_once(db, target)))   -- k = 2 must not be visible yet
    local deadline = nuvion.monotonic_ms() + 5000
    while done < 2 and nuvion.monotonic_ms() < deadline do nuvion.sleep(10) end
    assert.equals(2, done)
    drain(target)
    assert.same({ 1, 2 }, delivered)
  end)

  it("an event's seq is drawn at its transaction's commit when nothing else is sent: commit order", function()
    local nuvion = require "nuvion"
    local agg = ids.new("run") .. "-commit"
    local delivered = {}
    local function target(msg)
      if msg.aggregate_id == agg then delivered[#delivered + 1] = { msg.data.k, msg.seq } end
      return true
    end
    local done = 0
    nuvion.spawn(function()
      assert(db:tx(function(tx)
        assert(publish(tx, agg, { k = 1 }))
        nuvion.sleep(300)       -- open, but its lock and insert wait for its COMMIT ...
        return true
      end))
      done = done + 1
    end)
    nuvion.sleep(50)
    assert(db:tx(function(tx) return publish(tx, agg, { k = 2 }) end)) -- ... so this one commits first
    assert.equals(1, (outbox.relay_once(db, target)))
    local deadline = nuvion.monotonic_ms() + 5000
    while done < 1 and nuvion.monotonic_ms() < deadline do nuvion.sleep(10) end
    drain(target)
    assert.equals(2, #delivered)
    assert.same({ 2, 1 }, { delivered[1][1], delivered[2][1] }) -- the order the changes committed in
    assert.is_true(tonumber(delivered[1][2]) < tonumber(delivered[2][2]))
  end)

  it("a second relay waits while one holds the lock (one relay at a time keeps the order)", function()
    local run = ids.new("run")
    assert(db:tx(function(tx)
      return publish(tx, run .. "-x", {})
    end))
    local inner
    local n = assert(outbox.relay_once(db, redis_queue(run), { after_enqueue = function()
      inner = { outbox.relay_once(db, redis_queue(run)) }
    end }))
    assert.equals(1, n)
    assert.same({ 0, "busy" }, inner)
  end)

  it("an enqueue failure stops the batch there; nothing overtakes the failed event", function()
    local run = ids.new("run")
    for k = 1, 5 do
      assert(db:tx(function(tx)
        return publish(tx, run .. "-x", { k = k })
      end))
    end
    local seen = 0
    local n, err = outbox.relay_once(db, function(msg)
      seen = seen + 1
      if msg.data.k == 3 then return nil, "redis down" end
      return true
    end)
    assert.equals(2, n)
    assert.equals("redis down", err)
    assert.equals(3, seen)
    assert.equals(3, pending(run))
    local rows = db:query("SELECT relay_attempts FROM outbox WHERE aggregate_id = $1 AND relayed_at IS NULL " ..
                          "ORDER BY seq",
                          run .. "-x")
    assert.equals(1, rows[1].relay_attempts)
    assert.equals(3, drain(redis_queue(run)))
  end)

  it("purges relayed rows past the retention, never pending ones", function()
    local run = ids.new("run")
    for k = 1, 3 do
      assert(db:tx(function(tx) return publish(tx, run .. "-p", { k = k }) end))
    end
    local n, err = outbox.relay_once(db, function(msg) return msg.data.k < 3 or nil, "later" end)
    assert.equals(2, n)
    assert.equals("later", err)
    assert.is_number(outbox.purge(db, 3600))
    local kept = db:query("SELECT count(*)::int AS n FROM outbox WHERE aggregate_id = $1", run .. "-p")[1].n
    assert.equals(3, kept)                      -- relayed a moment ago: inside an hour's retention
    assert.is_true(outbox.purge(db, 0) >= 2)
    local left = db:query("SELECT data FROM outbox WHERE aggregate_id = $1", run .. "-p")
    assert.equals(1, #left)                     -- the pending one stays
    assert.equals(3, left[1].data.k)
    assert.equals(1, drain(redis_queue(run)))
  end)

  it("consume_once rolls back the record with the effects when fn fails, so a retry runs fn again", function()
    local id = ids.new("evt")
    local calls = 0
    local ok, err = outbox.consume_once(db, id, function() calls = calls + 1 return nil, "transient" end)
    assert.is_nil(ok)
    assert.equals("transient", err)
    local ok2, v = outbox.consume_once(db, id, function() calls = calls + 1 return 42 end)
    assert.is_true(ok2)
    assert.equals(42, v)
    assert.is_false(outbox.consume_once(db, id, function() calls = calls + 1 end))
    assert.equals(2, calls)
  end)

  it("the relay task delivers what is published while it runs, and stops", function()
    local run = ids.new("run")
    local h = outbox.relay(db, redis_queue(run), { idle_ms = 20 })
    for k = 1, 10 do
      assert(db:tx(function(tx)
        return publish(tx, run .. "-t", { k = k })
      end))
    end
    local deadline = require("nuvion").monotonic_ms() + 5000
    while #queued(run) < 10 and require("nuvion").monotonic_ms() < deadline do require("nuvion").sleep(20) end
    h.stop()
    assert.equals(10, #queued(run))
    check_order(queued(run))
  end)

  describe("killed -9", function()
    it("between commit and enqueue: the relay after the restart delivers every event", function()
      local run = ids.new("run")
      local p = spawn_producer(run, 30, "after_commit")
      wait_line(p, "committed")
      kill9(p)
      assert.equals(30, pending(run))
      local q = redis_queue(run)
      assert.equals(30, drain(q))
      local msgs = queued(run)
      assert.equals(30, #msgs)
      check_order(msgs)
      assert.equals(30, consume_all(run, msgs))
    end)

    it("mid-relay into nuvion.queue: re-enqueued events are dropped by job id, duplicates absorbed", function()
      local run = ids.new("run")
      local p = spawn_producer(run, 25, "mid_relay")
      wait_line(p, "enqueued")
      kill9(p)
      local q = queue.new("outbox_spec_" .. run, { redis = r })
      -- Every event is queued already, and every row is still pending (the batch never committed).
      assert.equals(25, q:counts().waiting)
      assert.equals(25, pending(run))
      assert.equals(25, drain(q, { removeOnComplete = true }))   -- all enqueued a second time ...
      assert.equals(25, q:counts().waiting)                      -- ... and dropped by the job-id rule
      assert.equals(0, pending(run))
      local seen, applied = {}, 0
      local w = queue.worker("outbox_spec_" .. run, function(job)
        local ok, err = outbox.consume_once(db, job.id, function(tx)
          return tx:query("INSERT INTO outbox_spec_effects (event_id, run) VALUES ($1, $2)", job.id, run)
        end, { consumer = "spec" })
        assert(ok ~= nil, err)
        assert(job.id == job.data.id)
        seen[#seen + 1] = { id = job.id, aggregate_id = job.data.aggregate_id, seq = job.data.seq }
        if ok then applied = applied + 1 end
      end, { redis = r, concurrency = 1 })
      local nuvion = require "nuvion"
      local function wait_for(count)
        local deadline = nuvion.monotonic_ms() + 10000
        while #seen < count and nuvion.monotonic_ms() < deadline do nuvion.sleep(20) end
        assert.equals(count, #seen)
      end
      wait_for(25)
      check_order(seen)
      -- The jobs are gone (removeOnComplete): a crash after enqueue but before marking now would
      -- add them again. The consumer runs each a second time and consume_once absorbs it.
      assert(db:query("UPDATE outbox SET relayed_at = NULL WHERE aggregate_id LIKE $1", run .. "-%"))
      assert.equals(25, drain(q, { removeOnComplete = true }))
      wait_for(50)
      w:close(2000)
      assert.equals(25, applied)
      local rows = db:query("SELECT count(*)::int AS n FROM outbox_spec_effects WHERE run = $1", run)
      assert.equals(25, rows[1].n)
    end)

    it("mid-business: exactly the committed orders have events, each delivered", function()
      local run = ids.new("run")
      local p = spawn_producer(run, 0, "mid_business")
      wait_line(p, "started")
      require("nuvion").sleep(300)
      kill9(p)
      local orders = db:query("SELECT count(*)::int AS n FROM outbox_spec_orders WHERE run = $1", run)[1].n
      assert.is_true(orders > 0)
      assert.equals(orders, drain(redis_queue(run)))
      local msgs = queued(run)
      assert.equals(orders, #msgs)
      check_order(msgs)
      assert.equals(orders, consume_all(run, msgs))
    end)
  end)
end)
