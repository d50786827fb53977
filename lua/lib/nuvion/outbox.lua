-- outbox.lua -- the transactional outbox: events written in the transaction of the business
-- change, moved to a queue by a relay (at least once, in order per aggregate), consumed once.
--
--   local outbox = require "nuvion.outbox"
--   db:tx(function(tx)
--     tx:query("UPDATE payouts SET status = 'paid' WHERE id = $1", id)
--     return outbox.publish(tx, { aggregate_type = "payout", aggregate_id = id,
--                                 type = "payout.paid", data = { id = id, amount = 100 } })
--   end)
--   local relay = outbox.relay(db, events_queue)        -- a task; relay:stop()
--   -- a consumer, in the queue's worker:
--   outbox.consume_once(db, job.data.id, function(tx) ... end, { consumer = "ledger_sync" })
--
-- See docs/outbox.md for the guarantees and why they hold.
local nuvion = require "nuvion"
local ids = require "nuvion.ids"
local log = require "nuvion.log"

local type, error, pairs, ipairs, pcall, tostring, select = type, error, pairs, ipairs, pcall, tostring, select
local match, concat = string.match, table.concat
local unpack = unpack

local _M = {}

local function pack(...) return { n = select("#", ...), ... } end

_M.BATCH_DEFAULT = 100
_M.BATCH_MAX = 1000
_M.IDLE_MS_DEFAULT = 200
_M.RETENTION_S_DEFAULT = 7 * 86400
-- The one relay of a database at a time holds this transaction-level advisory lock.
_M.RELAY_LOCK_KEY = 7277826171

local function check_event(e)
  if type(e) ~= "table" then error("event must be a table", 3) end
  if type(e.aggregate_type) ~= "string" or not match(e.aggregate_type, "^[a-z][a-z0-9_]*$") then
    error("event.aggregate_type must be a lower-case name", 3)
  end
  if type(e.aggregate_id) ~= "string" or e.aggregate_id == "" or #e.aggregate_id > 255 then
    error("event.aggregate_id must be a string of 1 to 255 bytes", 3)
  end
  if type(e.type) ~= "string" or not match(e.type, "^[a-z][a-z0-9_]*%.[a-z0-9_.]+$") then
    error("event.type must be dotted lower-case words (payout.paid)", 3)
  end
  if type(e.data) ~= "table" then error("event.data must be a table", 3) end
end

-- publish(tx, { aggregate_type, aggregate_id, type, data }) -> event id | nil, err
-- Inside the caller's transaction (tx from db:tx). Takes a transaction-level advisory lock on
-- the aggregate first, so two transactions publishing for one aggregate commit in the order
-- of their seq: the relay's order by seq is then the commit order per aggregate.
function _M.publish(tx, event)
  if type(tx) ~= "table" or type(tx.pipeline) ~= "function" then error("publish needs the transaction (tx)", 2) end
  check_event(event)
  local id = event.id or ids.new("evt")
  local lock = { "SELECT pg_advisory_xact_lock(hashtextextended($1, 7277826171))",
                 event.aggregate_type .. ":" .. event.aggregate_id, n = 1 }
  local insert = { "INSERT INTO outbox (id, aggregate_type, aggregate_id, type, data) VALUES ($1, $2, $3, $4, $5)",
                   id, event.aggregate_type, event.aggregate_id, event.type, event.data, n = 5 }
  -- in a pool:tx the lock and the insert go with the transaction's next statement or its
  -- COMMIT (tx:defer), in that order: the row's seq is drawn under the lock, which is held to
  -- the commit, so rows of one aggregate commit in seq order; a failure rolls the transaction
  -- back
  if type(tx.defer) == "function" then
    tx:defer(lock)
    tx:defer(insert)
    return id
  end
  -- else the lock and the insert in one round trip (one implicit transaction)
  local res, err = tx:pipeline({ lock, insert })
  if not res or err then return nil, err end
  return id
end

-- The message the queue carries for an outbox row.
local function message(row)
  return {
    id = row.id, seq = row.seq, type = row.type, aggregate_type = row.aggregate_type,
    aggregate_id = row.aggregate_id, data = row.data, created_at = row.created_at,
  }
end

-- A queue object (q:add(name, data, opts), nuvion.queue) or an enqueue function(msg) -> ok | nil, err.
local function enqueuer(target, opts)
  if type(target) == "function" then return target end
  if type(target) == "table" and type(target.add) == "function" then
    local job_opts = opts.job_opts or {}
    return function(msg)
      local o = {}
      for k, v in pairs(job_opts) do o[k] = v end
      o.jobId = msg.id     -- the queue's custom-id rule drops a re-enqueue of the same event
      return target:add(msg.type, msg, o)
    end
  end
  error("relay target must be a queue (with :add) or a function", 3)
end

-- relay_once(db, target, opts) -> relayed count | nil, err
-- One batch: in one transaction, take the relay lock (another relay of this database holding
-- it: 0, "busy"), read up to opts.batch pending rows in seq order, enqueue each in that order,
-- mark them relayed, commit. A crash before the commit leaves the rows pending: the next batch
-- enqueues them again with the same job ids (at least once; the queue and consume_once absorb
-- the duplicate). An enqueue failure stops the batch there: the rows before it are marked, the
-- rest wait for the next batch, so no event ever overtakes an earlier one.
function _M.relay_once(db, target, opts)
  opts = opts or {}
  local enqueue = enqueuer(target, opts)
  local batch = opts.batch or _M.BATCH_DEFAULT
  if type(batch) ~= "number" or batch < 1 or batch > _M.BATCH_MAX then
    error("batch must be in [1, " .. _M.BATCH_MAX .. "]", 2)
  end
  local busy = false
  local count, err = db:tx(function(tx)
    local locked, lerr = tx:query("SELECT pg_try_advisory_xact_lock($1) AS ok", _M.RELAY_LOCK_KEY)
    if not locked then return nil, lerr end
    if not locked[1].ok then busy = true return 0 end
    local rows, qerr = tx:query(
      "SELECT seq, id, aggregate_type, aggregate_id, type, data, created_at FROM outbox " ..
      "WHERE relayed_at IS NULL ORDER BY seq LIMIT $1", batch)
    if not rows then return nil, qerr end
    local done, failed = {}, nil
    for _, row in ipairs(rows) do
      local ok, res, eerr = pcall(enqueue, message(row))
      if not ok or not res then
        failed = ok and eerr or res
        break
      end
      done[#done + 1] = row.seq
    end
    if failed then
      log.warn("outbox relay: enqueue failed", { event_id = rows[#done + 1].id, error = tostring(failed) })
      local up, uerr = tx:query("UPDATE outbox SET relay_attempts = relay_attempts + 1 WHERE seq = $1",
                                rows[#done + 1].seq)
      if not up then return nil, uerr end
    end
    if #done > 0 then
      local up, uerr = tx:query("UPDATE outbox SET relayed_at = now() WHERE seq = ANY($1::bigint[])",
                                "{" .. concat(done, ",") .. "}")
      if not up then return nil, uerr end
    end
    if opts.after_enqueue then opts.after_enqueue(#done) end  -- specs: a crash point
    return #done, failed
  end)
  if count == nil then return nil, err end
  if busy then return 0, "busy" end
  return count, err
end

-- purge(db, retention_s) -> rows deleted: relayed rows older than the retention.
function _M.purge(db, retention_s)
  local rows, err = db:query(
    "DELETE FROM outbox WHERE relayed_at < now() - make_interval(secs => $1)",
    retention_s or _M.RETENTION_S_DEFAULT)
  if not rows then return nil, err end
  return rows.affected
end

-- relay(db, target, opts) -> handle with :stop(), :stats()
-- A task that runs relay_once until the outbox is empty, then sleeps opts.idle_ms, forever;
-- purges relayed rows older than opts.retention_s about once a minute.
-- opts: batch, idle_ms, retention_s, job_opts (queue add options besides jobId).
function _M.relay(db, target, opts)
  opts = opts or {}
  enqueuer(target, opts)  -- a bad target raises here, in the caller
  local h = { running = true, relayed = 0, errors = 0, batches = 0 }
  function h.stop() h.running = false end
  function h.stats() return { relayed = h.relayed, errors = h.errors, batches = h.batches } end
  local idle = opts.idle_ms or _M.IDLE_MS_DEFAULT
  nuvion.spawn(function()
    local last_purge = nuvion.monotonic_ms()
    while h.running do
      local ok, n, err = pcall(_M.relay_once, db, target, opts)
      h.batches = h.batches + 1
      if not ok or n == nil or (err and err ~= "busy") then
        h.errors = h.errors + 1
        log.warn("outbox relay: batch failed", { error = tostring(ok and err or n) })
      end
      if ok and n then h.relayed = h.relayed + n end
      if not (ok and n and n > 0 and not err) then nuvion.sleep(idle) end
      if nuvion.monotonic_ms() - last_purge > 60000 then
        last_purge = nuvion.monotonic_ms()
        pcall(_M.purge, db, opts.retention_s)
      end
    end
  end)
  return h
end

-- consume_once(db, event_id, fn, opts) -> true, fn's values | false (a duplicate) | nil, err
-- Runs fn(tx) in a transaction that first records (opts.consumer, event_id) in
-- processed_events: a second delivery of the event finds the row and fn does not run. fn's
-- effects and the record commit together or not at all (fn returning nil, err rolls both back,
-- so a retry runs fn again).
function _M.consume_once(db, event_id, fn, opts)
  if type(event_id) ~= "string" or event_id == "" then error("event_id must be a non-empty string", 2) end
  if type(fn) ~= "function" then error("fn must be a function", 2) end
  local consumer = opts and opts.consumer or "default"
  local res = nil
  local ok, err = db:tx(function(tx)
    local rows, e = tx:query(
      "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
      consumer, event_id)
    if not rows then return nil, e end
    if rows.affected == 0 then return false end
    res = pack(fn(tx))
    if res[1] == nil and res[2] ~= nil then return nil, res[2] end
    return true
  end)
  if ok == nil then return nil, err end
  if not ok then return false end
  return true, unpack(res, 1, res.n)
end

return _M
