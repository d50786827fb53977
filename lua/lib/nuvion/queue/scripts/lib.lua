-- lib.lua -- shared part of every queue script (prepended to each one at load).
-- The keys of one queue come in the same order to every script (queue.lua KEY_TYPES);
-- ARGV[1] is the queue's key prefix ("bull:<queue>:"), job keys are built from it.
-- Semantics follow BullMQ 5.81 at the Redis level; the code is ours.
local rcall = redis.call
local K_WAIT, K_ACTIVE, K_PAUSED, K_PRIORITIZED, K_DELAYED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_COMPLETED, K_FAILED, K_STALLED, K_STALLED_CHECK = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local K_META, K_ID, K_PC, K_MARKER, K_EVENTS = KEYS[10], KEYS[11], KEYS[12], KEYS[13], KEYS[14]
local PREFIX = ARGV[1]

-- meta's fields the scripts read, once per call: the events stream bound (opts.maxLenEvents,
-- written with BullMQ's default 10000 when missing), paused, and BullMQ's global concurrency.
local meta_cached
local function meta()
  if not meta_cached then
    local m = rcall("HMGET", K_META, "opts.maxLenEvents", "paused", "concurrency")
    if not m[1] then
      m[1] = 10000
      rcall("HSET", K_META, "opts.maxLenEvents", m[1])
    end
    meta_cached = { max_events = m[1], paused = m[2], concurrency = m[3] }
  end
  return meta_cached
end

local function max_events()
  return meta().max_events
end

-- XADD events MAXLEN ~ <bound> * field value ...
local function emit(...)
  rcall("XADD", K_EVENTS, "MAXLEN", "~", max_events(), "*", ...)
end

-- Where a job ready to run goes: paused list when meta.paused, else wait; and
-- whether workers must not be woken (paused, or meta.concurrency reached).
local function target_list()
  local m = meta()
  if m.paused then return K_PAUSED, true end
  if m.concurrency and rcall("LLEN", K_ACTIVE) >= tonumber(m.concurrency) then return K_WAIT, true end
  return K_WAIT, false
end

-- Marker "0" (score 0): a job is ready. Idle workers block on BZPOPMIN marker.
local function base_marker(quiet)
  if not quiet then rcall("ZADD", K_MARKER, 0, "0") end
end

-- Marker "1" with the due time (ms) of the next delayed job.
local function delay_marker()
  local first = rcall("ZRANGE", K_DELAYED, 0, 0, "WITHSCORES")
  if first[2] then rcall("ZADD", K_MARKER, math.floor(tonumber(first[2]) / 0x1000), "1") end
end

-- Delayed score: due time * 0x1000 + a sequence within that millisecond.
local function delayed_score(timestamp, delay)
  local due = tonumber(timestamp) + (delay > 0 and delay or 0)
  local min, max = due * 0x1000, (due + 1) * 0x1000 - 1
  local top = rcall("ZREVRANGEBYSCORE", K_DELAYED, max, min, "WITHSCORES", "LIMIT", 0, 1)
  if top[2] then
    local s = tonumber(top[2])
    if s >= max then return max, due end
    return s + 1, due
  end
  return min, due
end

-- Prioritized score: priority * 2^32 + INCR pc (FIFO within a priority).
local function add_prioritized(job_id, priority, quiet)
  local n = rcall("INCR", K_PC)
  rcall("ZADD", K_PRIORITIZED, priority * 0x100000000 + n % 0x100000000, job_id)
  base_marker(quiet)
end

-- A job ready to run again: to prioritized or to the wait/paused list.
local function enqueue_ready(job_id, push_cmd)
  local target, quiet = target_list()
  local priority = tonumber(rcall("HGET", PREFIX .. job_id, "priority")) or 0
  if priority > 0 then
    add_prioritized(job_id, priority, quiet)
  else
    rcall(push_cmd, target, job_id)
    base_marker(quiet)
  end
end

-- Due delayed jobs to wait / prioritized (at most 1000 a call).
local function promote_delayed(timestamp)
  local jobs = rcall("ZRANGEBYSCORE", K_DELAYED, 0, (tonumber(timestamp) + 1) * 0x1000 - 1, "LIMIT", 0, 1000)
  if #jobs == 0 then return end
  rcall("ZREM", K_DELAYED, unpack(jobs))
  local target, quiet = target_list()
  for _, id in ipairs(jobs) do
    local priority = tonumber(rcall("HGET", PREFIX .. id, "priority")) or 0
    if priority == 0 then
      rcall("LPUSH", target, id)
    else
      local n = rcall("INCR", K_PC)
      rcall("ZADD", K_PRIORITIZED, priority * 0x100000000 + n % 0x100000000, id)
    end
    emit("event", "waiting", "jobId", id, "prev", "delayed")
    rcall("HSET", PREFIX .. id, "delay", 0)
  end
  base_marker(quiet)
end

local function remove_job_keys(job_key)
  rcall("DEL", job_key, job_key .. ":logs", job_key .. ":dependencies", job_key .. ":processed",
        job_key .. ":failed", job_key .. ":unsuccessful")
end

-- Removes a finished job entirely (its dedup key too when it still points at it).
local function remove_job(id)
  local job_key = PREFIX .. id
  local deid = rcall("HGET", job_key, "deid")
  if deid then
    local de_key = PREFIX .. "de:" .. deid
    if rcall("GET", de_key) == id then rcall("DEL", de_key) end
  end
  remove_job_keys(job_key)
end

-- Keeps the newest keep_count (-1: all) and none older than keep_age seconds.
local function trim_finished(set_key, timestamp, keep_count, keep_age)
  if keep_age and keep_age > 0 then
    local start = tonumber(timestamp) - keep_age * 1000
    local ids = rcall("ZREVRANGEBYSCORE", set_key, start, "-inf", "LIMIT", 0, 1000)
    for _, id in ipairs(ids) do remove_job(id) end
    if #ids > 0 then rcall("ZREM", set_key, unpack(ids)) end
  end
  if keep_count and keep_count > 0 then
    local ids = rcall("ZREVRANGE", set_key, keep_count, -1)
    for _, id in ipairs(ids) do remove_job(id) end
    rcall("ZREMRANGEBYRANK", set_key, 0, -(keep_count + 1))
  end
end

-- Releases the dedup key of a finished job (a ttl key lives on until it expires).
local function release_dedup(deid, id)
  if not deid then return end
  local de_key = PREFIX .. "de:" .. deid
  local pttl = rcall("PTTL", de_key)
  if pttl == 0 or (pttl == -1 and rcall("GET", de_key) == id) then rcall("DEL", de_key) end
end

-- The lock must hold this worker's token: 0 ok, -2 missing, -6 someone else's.
local function remove_lock(job_key, id, token)
  local lock_key = job_key .. ":lock"
  local held = rcall("GET", lock_key)
  if held == token then
    rcall("DEL", lock_key)
    rcall("SREM", K_STALLED, id)
    return 0
  end
  if held then return -6 end
  return -2
end

-- Takes the next job to active (ARGV of the caller: timestamp, token, lock ms, worker name).
-- Returns { job hash flat, id } or { 0, next delayed due time or 0 }.
local function take(timestamp, token, lock_ms, worker_name)
  local _, quiet = target_list()
  promote_delayed(timestamp)
  if quiet then return { 0, 0 } end -- paused, or meta.concurrency reached
  local id = rcall("RPOPLPUSH", K_WAIT, K_ACTIVE)
  if id and string.sub(id, 1, 2) == "0:" then -- v4-style marker left in wait
    rcall("LREM", K_ACTIVE, 1, id)
    id = rcall("RPOPLPUSH", K_WAIT, K_ACTIVE)
  end
  if not id then
    local best = rcall("ZPOPMIN", K_PRIORITIZED)
    if best[1] then
      id = best[1]
      rcall("LPUSH", K_ACTIVE, id)
    else
      rcall("DEL", K_PC)
    end
  end
  if not id then
    local first = rcall("ZRANGE", K_DELAYED, 0, 0, "WITHSCORES")
    if first[2] then return { 0, math.floor(tonumber(first[2]) / 0x1000) } end
    return { 0, 0 }
  end
  local job_key = PREFIX .. id
  rcall("SET", job_key .. ":lock", token, "PX", lock_ms)
  emit("event", "active", "jobId", id, "prev", "waiting")
  -- read the job once, then write processedOn, ats + 1 (and pb) in one HSET and return the
  -- fields as they now are: one call fewer than HSET + HINCRBY + HGETALL
  local flat = rcall("HGETALL", job_key)
  local set = { processedOn = timestamp, ats = 1 }
  if worker_name and worker_name ~= "" then set.pb = worker_name end
  for i = 1, #flat, 2 do
    if flat[i] == "ats" then set.ats = (tonumber(flat[i + 1]) or 0) + 1 end
  end
  local args = {}
  for k, v in pairs(set) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  rcall("HSET", job_key, unpack(args))
  for i = 1, #flat, 2 do
    local v = set[flat[i]]
    if v ~= nil then
      flat[i + 1] = tostring(v)
      set[flat[i]] = nil
    end
  end
  for k, v in pairs(set) do
    flat[#flat + 1] = k
    flat[#flat + 1] = tostring(v)
  end
  base_marker(false)
  return { flat, id }
end
