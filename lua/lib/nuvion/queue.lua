-- queue.lua -- job queues that are BullMQ v5 queues at the Redis level: producers
-- (queue.new, q:add) and workers (queue.worker) whose every state change is one of
-- our scripts in queue/scripts/. Contract and options: docs/queue.md.
--
--   local q = queue.new("payouts", { redis = os.getenv("REDIS_URL") })
--   local id = assert(q:add("send", { payout_id = 42 }, { attempts = 3 }))
--   local w = queue.worker("payouts", function(job) return { ok = true } end, { concurrency = 50 })
--   w:close()
local redis = require "nuvion.redis"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local core = require "nuvion.core"
local log = require "nuvion.log"
local crypto = require "nuvion.crypto"

local type, tostring, tonumber, pairs, ipairs, error, setmetatable, getmetatable =
  type, tostring, tonumber, pairs, ipairs, error, setmetatable, getmetatable
local floor, min, max = math.floor, math.min, math.max
local find, sub, format, match = string.find, string.sub, string.format, string.match
local concat, unpack, xpcall, traceback = table.concat, unpack, xpcall, debug.traceback
local getenv = os.getenv
local sleep, spawn, now, monotonic_ms = nuvion.sleep, nuvion.spawn, nuvion.now, nuvion.monotonic_ms
local encode, decode, jnull = json.encode, json.decode, json.null

local _M = {}

_M.BULLMQ_VERSION = "bullmq:5.81.5" -- meta.version, as the BullMQ release we match writes it

_M.limits = {
  concurrency_max = 1000,        -- jobs in flight per worker
  lock_ms_min = 1000, lock_ms_max = 3600000,
  stalled_ms_min = 1000, stalled_ms_max = 3600000,
  max_stalled_max = 1000,
  drain_delay_s_max = 60,        -- longest idle block on the marker
  priority_max = 2097152,        -- BullMQ's PRIORITY_LIMIT 2^21
  stacktrace_max = 10,           -- stack traces kept per job (BullMQ's stackTraceLimit default)
  grace_ms_max = 3600000,
  reason_bytes_max = 4096,       -- failedReason kept from an error message
}
local L = _M.limits

local ERR_JOB_ID = "jobId must be a non-empty string, not all digits, without ':'"
local CLOSE_POLL_MS = 10
local HOUSEKEEPING_TICK_MS = 100  -- how soon a worker notices SIGTERM or a retiring generation
local FETCH_ERROR_BACKOFF_MS = 1000
local BUSY_POLL_MS = 50           -- idle poll when every blocking connection of the client is taken

-- Every script gets the queue's keys in this order (scripts/lib.lua names them).
local KEY_TYPES = { "wait", "active", "paused", "prioritized", "delayed", "completed", "failed",
                    "stalled", "stalled-check", "meta", "id", "pc", "marker", "events" }

-- ---- scripts ----

local SCRIPT_DIR = match(debug.getinfo(1, "S").source, "^@(.*)/[^/]*$") .. "/queue/scripts/"

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local LIB = read_file(SCRIPT_DIR .. "lib.lua")
local S = {}
for _, name in ipairs({ "add", "take", "finish", "retry", "extend", "stalled", "progress", "release",
                        "reprocess", "pause" }) do
  S[name] = redis.script(LIB .. "\n" .. read_file(SCRIPT_DIR .. name .. ".lua"))
end

local function now_ms()
  return floor(now() * 1000)
end

local function fail(code, message)
  return nil, { code = code, message = message }
end

-- ---- queues ----

local Queue = {}
Queue.__index = Queue

function _M.new(name, opts)
  if type(name) ~= "string" or name == "" or find(name, ":", 1, true) then
    error("queue.new: name must be a non-empty string without ':'", 2)
  end
  opts = opts or {}
  local prefix = opts.prefix or "bull"
  if type(prefix) ~= "string" or prefix == "" then error("queue.new: prefix must be a non-empty string", 2) end
  local r = opts.redis or getenv("REDIS_URL")
  if type(r) ~= "string" and type(r) ~= "table" then error("queue.new: opts.redis (or REDIS_URL) is required", 2) end
  local mle = opts.max_len_events
  if mle ~= nil and (type(mle) ~= "number" or mle < 1 or mle % 1 ~= 0) then
    error("queue.new: max_len_events must be a positive integer", 2)
  end
  local base = prefix .. ":" .. name .. ":"
  local keys = {}
  for i, t in ipairs(KEY_TYPES) do keys[i] = base .. t end
  return setmetatable({ name = name, prefix = prefix, base = base, keys_list = keys, redis_ref = r,
                        max_len_events = mle, ready = false }, Queue)
end

function Queue:keys(t)
  return self.base .. t
end

-- The client, connected, and meta written once per handle (as BullMQ's Queue does).
function Queue:client()
  local r = self.r
  if not r then
    if type(self.redis_ref) == "table" then
      r = self.redis_ref
    else
      local err
      r, err = redis.connect(self.redis_ref)
      if not r then return fail("redis_error", err) end
    end
    self.r = r
  end
  if not self.ready then
    local meta = self.base .. "meta"
    local cmds = { { "HSET", meta, "version", _M.BULLMQ_VERSION } }
    if self.max_len_events then
      cmds[2] = { "HSET", meta, "opts.maxLenEvents", self.max_len_events }
    else
      cmds[2] = { "HSETNX", meta, "opts.maxLenEvents", 10000 }
    end
    local res, err = r:pipeline(cmds)
    if not res then return fail("redis_error", err) end
    self.ready = true
  end
  return r
end

-- Runs a script with the queue's keys; ARGV[1] is the key prefix.
function Queue:run(script, ...)
  local r, err = self:client()
  if not r then return nil, err end
  local res, rerr = r:eval_script(S[script], self.keys_list, { self.base, ... })
  if res == nil and rerr then return fail("redis_error", rerr) end
  return res
end

-- ---- add ----

local function is_int(v, lo, hi)
  return type(v) == "number" and v % 1 == 0 and v >= lo and (hi == nil or v <= hi)
end

local function check_keep(v, name)
  if v == nil or type(v) == "boolean" or is_int(v, 0) then return end
  if type(v) == "table" then
    for k, x in pairs(v) do
      if (k ~= "count" and k ~= "age") or not is_int(x, 0) then
        error("queue:add: " .. name .. " table takes count and age (integers >= 0)", 4)
      end
    end
    return
  end
  error("queue:add: " .. name .. " must be a boolean, a count or { count, age }", 4)
end

local ADD_OPTS = { jobId = true, delay = true, priority = true, lifo = true, attempts = true, backoff = true,
                   removeOnComplete = true, removeOnFail = true, deduplication = true, traceparent = true }

local TRACEPARENT = "^00%-%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%-"
                    .. "%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%-%x%x$"

-- The adding task's trace as a traceparent (a new span id under its trace id).
local function current_traceparent()
  local ctx = core.context()
  local tid = ctx.trace_id
  if type(tid) == "string" and #tid == 32 and not find(tid, "[^%x]") then
    return "00-" .. tid .. "-" .. nuvion.random_hex(8) .. "-01"
  end
end

-- Checks opts and builds the opts JSON as BullMQ stores it. Raises on a caller's bug.
local function build_opts(opts)
  for k in pairs(opts) do
    if not ADD_OPTS[k] then error("queue:add: unknown option " .. tostring(k), 3) end
  end
  local o = { attempts = 0 }
  if opts.jobId ~= nil then o.jobId = opts.jobId end
  if opts.delay ~= nil then
    if not is_int(opts.delay, 0, 2 ^ 40) then error("queue:add: delay must be an integer >= 0 (ms)", 3) end
    if opts.delay > 0 then o.delay = opts.delay end
  end
  if opts.priority ~= nil then
    if not is_int(opts.priority, 0, L.priority_max) then
      error("queue:add: priority must be an integer in [0, " .. L.priority_max .. "]", 3)
    end
    if opts.priority > 0 then o.priority = opts.priority end
  end
  if opts.lifo ~= nil then
    if type(opts.lifo) ~= "boolean" then error("queue:add: lifo must be a boolean", 3) end
    if opts.lifo then o.lifo = true end
  end
  if opts.attempts ~= nil then
    if not is_int(opts.attempts, 0, 1000000) then error("queue:add: attempts must be an integer >= 0", 3) end
    o.attempts = opts.attempts
  end
  local b = opts.backoff
  if b ~= nil then
    if type(b) == "number" then b = { type = "fixed", delay = b } end
    if type(b) ~= "table" or (b.type ~= "fixed" and b.type ~= "exponential") or not is_int(b.delay, 0, 2 ^ 40)
       or (b.jitter ~= nil and (type(b.jitter) ~= "number" or b.jitter < 0 or b.jitter > 1)) then
      error("queue:add: backoff must be { type = 'fixed' | 'exponential', delay = ms, jitter = 0..1? } or a number", 3)
    end
    o.backoff = { type = b.type, delay = b.delay, jitter = b.jitter }
  end
  check_keep(opts.removeOnComplete, "removeOnComplete")
  check_keep(opts.removeOnFail, "removeOnFail")
  o.removeOnComplete, o.removeOnFail = opts.removeOnComplete, opts.removeOnFail
  local de = opts.deduplication
  if de ~= nil then
    if type(de) ~= "table" or type(de.id) ~= "string" or de.id == "" or (de.ttl ~= nil and not is_int(de.ttl, 1)) then
      error("queue:add: deduplication must be { id = string, ttl = ms? }", 3)
    end
    o.de = { id = de.id, ttl = de.ttl }
  end
  local tp = opts.traceparent
  if tp ~= nil then
    if type(tp) ~= "string" or not find(tp, TRACEPARENT) then error("queue:add: traceparent must be W3C 00-...", 3) end
  else
    tp = current_traceparent()
  end
  if tp then o.tm = encode({ traceparent = tp }) end
  return o
end

-- q:add(name, data, opts) -> id | nil, err
function Queue:add(name, data, opts)
  if type(name) ~= "string" or name == "" then error("queue:add: name must be a non-empty string", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("queue:add: opts must be a table", 2) end
  local id = opts.jobId
  if id ~= nil and (type(id) ~= "string" or id == "" or find(id, ":", 1, true) or not find(id, "%D")) then
    return fail("invalid_job_id", ERR_JOB_ID)
  end
  local o = build_opts(opts)
  local data_json, derr = encode(data == nil and json.object() or data)
  if not data_json then return fail("invalid_option", "data is not JSON: " .. tostring(derr)) end
  local opts_json, oerr = encode(o)
  if not opts_json then return fail("invalid_option", "opts are not JSON: " .. tostring(oerr)) end
  return self:run("add", id or "", name, now_ms(), data_json, opts_json, o.delay or 0, o.priority or 0,
                  o.lifo and "1" or "0", o.de and o.de.id or "", o.de and o.de.ttl or 0)
end

-- ---- reading jobs ----

local Job = {}
Job.__index = Job

local function decode_or(s, default)
  if s == nil then return default end
  local v = decode(s)
  if v == nil then return s end
  return v
end

local LONG_NAMES = { de = "deduplication", fpof = "failParentOnFailure", cpof = "continueParentOnFailure",
                     idof = "ignoreDependencyOnFailure", kl = "keepLogs", rdof = "removeDependencyOnFailure" }

-- A job table from HGETALL's flat reply.
local function job_from_flat(q, id, flat)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  if h.name == nil and h.data == nil then return nil end
  local raw_opts = decode_or(h.opts, {})
  if type(raw_opts) ~= "table" then raw_opts = {} end
  local opts = {}
  for k, v in pairs(raw_opts) do opts[LONG_NAMES[k] or k] = v end
  local tp
  if type(raw_opts.tm) == "string" then
    local tm = decode(raw_opts.tm)
    if type(tm) == "table" and type(tm.traceparent) == "string" then tp = tm.traceparent end
  end
  local st = decode_or(h.stacktrace, nil)
  return setmetatable({
    queue = q, id = id, name = h.name, data = decode_or(h.data, {}), opts = opts,
    timestamp = tonumber(h.timestamp), delay = tonumber(h.delay) or 0, priority = tonumber(h.priority) or 0,
    processedOn = tonumber(h.processedOn), finishedOn = tonumber(h.finishedOn),
    attemptsMade = tonumber(h.atm or h.attemptsMade) or 0, attemptsStarted = tonumber(h.ats) or 0,
    stalledCounter = tonumber(h.stc) or 0, progress_value = decode_or(h.progress, 0),
    returnvalue = decode_or(h.returnvalue, nil), failedReason = h.failedReason,
    stacktrace = type(st) == "table" and st or {}, deferredFailure = h.defa, processedBy = h.pb,
    deduplicationId = h.deid, traceparent = tp,
  }, Job)
end

function Queue:get_job(id)
  if type(id) ~= "string" then error("queue:get_job: id must be a string", 2) end
  local r, err = self:client()
  if not r then return nil, err end
  local flat, rerr = r:call("HGETALL", self.base .. id)
  if not flat then return fail("redis_error", rerr) end
  return job_from_flat(self, id, flat)
end

function Queue:get_state(id)
  local r, err = self:client()
  if not r then return nil, err end
  local b = self.base
  local res, rerr = r:pipeline({
    { "ZSCORE", b .. "completed", id }, { "ZSCORE", b .. "failed", id }, { "ZSCORE", b .. "delayed", id },
    { "ZSCORE", b .. "prioritized", id }, { "LPOS", b .. "active", id }, { "LPOS", b .. "wait", id },
    { "LPOS", b .. "paused", id },
  })
  if not res then return fail("redis_error", rerr) end
  local names = { "completed", "failed", "delayed", "prioritized", "active", "waiting", "paused" }
  for i, name in ipairs(names) do
    if res[i] ~= jnull and not redis.is_error(res[i]) then return name end
  end
  return "unknown"
end

function Queue:counts()
  local r, err = self:client()
  if not r then return nil, err end
  local b = self.base
  local res, rerr = r:pipeline({
    { "LLEN", b .. "wait" }, { "LLEN", b .. "active" }, { "ZCARD", b .. "delayed" },
    { "ZCARD", b .. "prioritized" }, { "ZCARD", b .. "completed" }, { "ZCARD", b .. "failed" },
    { "LLEN", b .. "paused" },
  })
  if not res then return fail("redis_error", rerr) end
  for _, v in ipairs(res) do
    if redis.is_error(v) then return fail("redis_error", v.err) end
  end
  return { waiting = res[1], active = res[2], delayed = res[3], prioritized = res[4], completed = res[5],
           failed = res[6], paused = res[7] }
end

function Queue:failed(start, stop)
  local r, err = self:client()
  if not r then return nil, err end
  local ids, rerr = r:call("ZREVRANGE", self.base .. "failed", start or 0, stop or 99)
  if not ids then return fail("redis_error", rerr) end
  return ids
end

function Queue:retry_failed(id)
  if type(id) ~= "string" then error("queue:retry_failed: id must be a string", 2) end
  local res, err = self:run("reprocess", id)
  if res == nil then return nil, err end
  if res == -1 then return fail("not_found", "no job " .. id) end
  if res == -3 then return fail("not_failed", "job " .. id .. " is not in failed") end
  return true
end

function Queue:pause()
  local res, err = self:run("pause", "paused")
  if res == nil then return nil, err end
  return true
end

function Queue:resume()
  local res, err = self:run("pause", "resumed")
  if res == nil then return nil, err end
  return true
end

function Queue:events(n)
  local r, err = self:client()
  if not r then return nil, err end
  local res, rerr = r:call("XREVRANGE", self.base .. "events", "+", "-", "COUNT", n or 100)
  if not res then return fail("redis_error", rerr) end
  local out = {}
  for i = #res, 1, -1 do
    local entry, fields = { id = res[i][1] }, res[i][2]
    for j = 1, #fields, 2 do entry[fields[j]] = fields[j + 1] end
    out[#out + 1] = entry
  end
  return out
end

-- ---- jobs in a worker ----

function Job:progress(value)
  if type(value) ~= "number" and type(value) ~= "table" then
    error("job:progress: value must be a number or a table", 2)
  end
  local s, eerr = encode(value)
  if not s then error("job:progress: " .. tostring(eerr), 2) end
  local res, err = self.queue:run("progress", self.id, s)
  if res == nil then return nil, err end
  if res == -1 then return fail("not_found", "job " .. self.id .. " is gone") end
  self.progress_value = value
  return true
end

function Job:extend_lock(ms)
  if not self.token then error("job:extend_lock: not a job of a worker", 2) end
  local lost, err = self.queue:run("extend", ms or self.lock_ms, self.id, self.token)
  if lost == nil then return nil, err end
  if #lost > 0 then return fail("lock_lost", "job " .. self.id .. " lost its lock") end
  return true
end

-- ---- errors of handlers ----

local Unrecoverable = {}
Unrecoverable.__index = Unrecoverable
Unrecoverable.__tostring = function(e) return e.message end

function _M.unrecoverable(message)
  return setmetatable({ message = tostring(message), unrecoverable = true }, Unrecoverable)
end

local function error_reason(e)
  local t = type(e)
  local reason
  if t == "string" then
    reason = e
  elseif t == "table" then
    reason = e.message or e.code
    if reason == nil then reason = encode(e) end
    reason = tostring(reason)
  else
    reason = tostring(e)
  end
  if #reason > L.reason_bytes_max then reason = sub(reason, 1, L.reason_bytes_max) end
  return reason
end

local function on_error(e)
  return { e = e, tb = traceback(error_reason(e), 2) }
end

-- ---- workers ----

local Worker = {}
Worker.__index = Worker

local function opt_int(opts, key, default, lo, hi)
  local v = opts[key]
  if v == nil then return default end
  if not is_int(v, lo, hi) then
    error(format("queue.worker: %s must be an integer in [%d, %d]", key, lo, hi), 3)
  end
  return v
end

local function env_grace()
  local g = tonumber(getenv("NUVION_WORKER_GRACE_MS") or "")
  if g and g >= 0 and g <= L.grace_ms_max then return floor(g) end
  return 25000
end

function _M.worker(name, handler, opts)
  if type(handler) ~= "function" then error("queue.worker: handler must be a function", 2) end
  opts = opts or {}
  local q = _M.new(name, { redis = opts.redis, prefix = opts.prefix })
  local w = setmetatable({
    q = q, name = name, handler = handler,
    concurrency = opt_int(opts, "concurrency", 1, 1, L.concurrency_max),
    lock_ms = opt_int(opts, "lock_duration", 30000, L.lock_ms_min, L.lock_ms_max),
    stalled_ms = opt_int(opts, "stalled_interval", 30000, L.stalled_ms_min, L.stalled_ms_max),
    max_stalled = opt_int(opts, "max_stalled_count", 1, 0, L.max_stalled_max),
    drain_delay = opt_int(opts, "drain_delay", 5, 1, L.drain_delay_s_max),
    grace_ms = opt_int(opts, "grace_ms", env_grace(), 0, L.grace_ms_max),
    worker_name = opts.name or "",
    token_base = nuvion.random_hex(12), seq = 0,
    jobs = {}, n_active = 0, fetching = false, closing = false, state = "running",
    stats_t = { taken = 0, completed = 0, failed = 0, retried = 0, lock_renewals = 0, lock_lost = 0,
                stalled_checks = 0, stalled_moved = 0, released = 0 },
  }, Worker)
  if type(w.worker_name) ~= "string" then error("queue.worker: name must be a string", 2) end
  -- BullMQ finds workers by their connection's name (Queue.getWorkers, Bull Board's workers
  -- page): "<prefix>:<base64 of the queue name>", ":w:<name>" for a named worker. Only a
  -- connection of the worker's own is named: a client shared between queues holds one name.
  if type(opts.redis) ~= "table" then
    w.client_name = q.prefix .. ":" .. crypto.base64_encode(name)
      .. (w.worker_name ~= "" and ":w:" .. w.worker_name or "")
  end
  core.drain_hold(1)
  spawn(w.task, w, nil)
  spawn(w.housekeeping, w)
  return w
end

function Worker:new_token()
  self.seq = self.seq + 1
  return self.token_base .. ":" .. self.seq
end

-- A take / finish script's reply as a job (with its token), or nil and the due time of
-- the next delayed job.
function Worker:reply_job(res, token)
  if type(res) ~= "table" or res[1] == 0 then
    return nil, type(res) == "table" and tonumber(res[2]) or 0
  end
  local job = job_from_flat(self.q, res[2], res[1])
  if not job then return nil, 0 end
  job.token, job.lock_ms = token, self.lock_ms
  self.stats_t.taken = self.stats_t.taken + 1
  return job
end

-- Takes a job; when there is none, idles on the marker (at most drain_delay s, or until
-- the next delayed job is due) and returns nil.
function Worker:fetch()
  local token = self:new_token()
  self.taking = true -- close() waits for this take: a job it takes is given straight back
  local res, err = self.q:run("take", now_ms(), token, self.lock_ms, self.worker_name)
  if res ~= nil and self.closing then
    local got = self:reply_job(res, token)
    if got then self:release(got) end
    res = { 0, 0 }
  end
  self.taking = false
  if res == nil then
    log.warn("queue: take failed", { queue = self.name, error = err.message })
    sleep(FETCH_ERROR_BACKOFF_MS)
    return nil
  end
  local job, due = self:reply_job(res, token)
  if job then return job end
  if self.closing then return nil end
  local timeout = self.drain_delay
  if due > 0 then
    local left = (due - now_ms()) / 1000
    if left <= 0 then return nil end
    timeout = min(timeout, max(left, 0.001))
  end
  local popped, berr = self.q.r:blocking("BZPOPMIN", self.q.base .. "marker", format("%.3f", timeout))
  if popped == nil and berr then
    if berr == redis.ERR_TOO_MANY_BLOCKING then
      -- more idle workers than blocking connections on this client: poll instead
      sleep(min(BUSY_POLL_MS, timeout * 1000))
    else
      log.warn("queue: waiting for jobs failed", { queue = self.name, error = berr })
      sleep(FETCH_ERROR_BACKOFF_MS)
    end
  end
  return nil
end

-- Backoff of retry number n (attempts made, from 1), as BullMQ's built-in strategies: with a
-- jitter j in (0, 1], a random delay in [d * (1 - j), d).
local function backoff_ms(b, n)
  if type(b) ~= "table" or type(b.delay) ~= "number" then return 0 end
  local d
  if b.type == "exponential" then
    d = floor(2 ^ (n - 1) * b.delay + 0.5)
  elseif b.type == "fixed" then
    d = b.delay
  else
    return 0
  end
  local j = tonumber(b.jitter) or 0
  if j > 0 then -- the host's random source (LuaJIT's math.random starts the same in every process)
    local u = tonumber(nuvion.random_hex(4), 16) / 2 ^ 32
    d = floor(u * d * j + d * (1 - j))
  end
  return d
end

local function keep_of(v)
  if v == true then return 0, 0 end
  if v == nil or v == false then return -1, 0 end
  if type(v) == "number" then return v, 0 end
  if type(v) == "table" then return tonumber(v.count) or -1, tonumber(v.age) or 0 end
  return -1, 0
end

local function stacktrace_json(job, tb)
  local st = {}
  for _, s in ipairs(job.stacktrace or {}) do st[#st + 1] = s end
  st[#st + 1] = tb
  while #st > L.stacktrace_max do table.remove(st, 1) end
  return encode(st) or "[]"
end

-- Runs one job and finishes it; returns the next job when the finish script took one.
function Worker:run_job(job)
  self.jobs[job.id] = job
  local ok, res
  if job.deferredFailure then
    ok, res = false, { e = _M.unrecoverable(job.deferredFailure), tb = job.deferredFailure }
  else
    ok, res = xpcall(self.handler, on_error, job)
  end
  local fetch = (self.closing or core.stopping()) and "0" or "1"
  local q, st, out, err = self.q, self.stats_t, nil, nil
  if job.released then
    self.jobs[job.id] = nil
    return nil
  end
  if ok then
    local rv, eerr = encode(res == nil and jnull or res)
    if rv then
      local count, age = keep_of(job.opts.removeOnComplete)
      out, err = q:run("finish", job.id, now_ms(), job.token, "completed", rv, "", count, age,
                       job.opts.attempts or 0, fetch, self.lock_ms, self.worker_name)
      st.completed = st.completed + 1
    else
      ok, res = false, { e = "returnvalue is not JSON: " .. tostring(eerr), tb = "" }
    end
  end
  if not ok then
    local e = res.e
    local reason = error_reason(e)
    local attempts = tonumber(job.opts.attempts) or 0
    local unrecoverable = type(e) == "table" and getmetatable(e) == Unrecoverable
    if job.attemptsMade + 1 < attempts and not unrecoverable then
      local delay = backoff_ms(job.opts.backoff, job.attemptsMade + 1)
      out, err = q:run("retry", job.id, now_ms(), job.token, delay, reason, stacktrace_json(job, res.tb),
                       job.opts.lifo and "1" or "0")
      st.retried = st.retried + 1
    else
      local count, age = keep_of(job.opts.removeOnFail)
      out, err = q:run("finish", job.id, now_ms(), job.token, "failed", reason, stacktrace_json(job, res.tb),
                       count, age, attempts, fetch, self.lock_ms, self.worker_name)
      st.failed = st.failed + 1
    end
  end
  self.jobs[job.id] = nil
  if out == nil then
    log.error("queue: finishing a job failed", { queue = self.name, job_id = job.id, error = err.message })
    return nil
  end
  if type(out) == "number" and out < 0 then
    st.lock_lost = st.lock_lost + 1
    log.warn("queue: job finished without its lock (taken over or released)",
             { queue = self.name, job_id = job.id, code = out })
    return nil
  end
  return (self:reply_job(out, job.token))
end

-- One task of the worker. With a job it processes jobs (a slot); without one it takes jobs
-- (the fetcher, at most one at a time). A fetcher that takes a job runs it itself and hands
-- the fetching to a new task while a slot is free; a slot left without a next job becomes the
-- fetcher when there is none: so at most `concurrency` jobs run, and capacity never waits for
-- a poll.
function Worker:task(job)
  while true do
    if job then
      job = self:run_job(job)
      if job and self.closing then -- taken by a finish that raced close(): give it back
        self:release(job)
        job = nil
      end
      if not job then
        self.n_active = self.n_active - 1
        if self.fetching or self.closing then return end
      end
    else
      if self.closing then
        self.fetching = false
        return
      end
      self.fetching = true
      local got = self:fetch()
      if got then
        -- this task runs the job at once; a new task takes over fetching (the role stays
        -- taken meanwhile) while a slot is free
        self.n_active = self.n_active + 1
        if self.n_active < self.concurrency then
          spawn(self.task, self, nil)
        else
          self.fetching = false
        end
        job = got
      end
    end
  end
end

function Worker:release(job)
  local res, err = self.q:run("release", job.id, job.token)
  if res == nil then
    log.error("queue: releasing a job failed", { queue = self.name, job_id = job.id, error = err.message })
    return false
  end
  job.released = true
  self.stats_t.released = self.stats_t.released + 1
  return res == 1
end

function Worker:renew_locks()
  local args, sent = {}, {}
  for id, job in pairs(self.jobs) do
    args[#args + 1] = id
    args[#args + 1] = job.token
    sent[id] = job
  end
  if #args == 0 then return end
  local lost, err = self.q:run("extend", self.lock_ms, unpack(args))
  if lost == nil then
    log.warn("queue: renewing locks failed", { queue = self.name, error = err.message })
    return
  end
  self.stats_t.lock_renewals = self.stats_t.lock_renewals + #args / 2 - #lost
  for _, id in ipairs(lost) do
    -- a job that finished while the renewal was on its way has no lock to renew
    local job = sent[id]
    if self.jobs[id] == job and not job.released then
      job.lock_lost = true
      self.stats_t.lock_lost = self.stats_t.lock_lost + 1
      log.warn("queue: a job lost its lock", { queue = self.name, job_id = id })
    end
  end
end

-- Names the worker's connection as BullMQ names its workers' (see queue.worker); again at every
-- stalled check, so a reconnected client gets its name back.
function Worker:name_connection()
  if not self.client_name then return end
  local r = self.q:client()
  if not r then return end -- the stalled check that follows reports the failure
  local ok, err = r:call("CLIENT", "SETNAME", self.client_name)
  if not ok then log.warn("queue: naming the worker's connection failed", { queue = self.name, error = err }) end
end

function Worker:check_stalled()
  self:name_connection()
  local moved, err = self.q:run("stalled", now_ms(), self.max_stalled, self.stalled_ms)
  if moved == nil then
    log.warn("queue: stalled check failed", { queue = self.name, error = err.message })
    return
  end
  if type(moved) ~= "table" then return end -- another worker checked within the interval
  self.stats_t.stalled_checks = self.stats_t.stalled_checks + 1
  if #moved > 0 then
    self.stats_t.stalled_moved = self.stats_t.stalled_moved + #moved
    log.warn("queue: stalled jobs moved back to wait", { queue = self.name, jobs = moved })
  end
end

-- Lock renewal, the stalled check, and closing on SIGTERM / a retiring generation. A task
-- with sleeps, not repeating timers: a retiring generation cancels those, and the locks of
-- jobs still finishing must keep being renewed.
function Worker:housekeeping()
  local renew_every = floor(self.lock_ms / 2)
  local next_renew = monotonic_ms() + renew_every
  local next_stalled = monotonic_ms()
  while self.state ~= "closed" do
    local t = monotonic_ms()
    if t >= next_renew then
      self:renew_locks()
      next_renew = t + renew_every
    end
    if t >= next_stalled and not self.closing then
      self:check_stalled()
      next_stalled = t + self.stalled_ms
    end
    if not self.closing and core.stopping() then
      spawn(self.close, self)
    end
    sleep(min(HOUSEKEEPING_TICK_MS, max(1, min(next_renew, next_stalled) - monotonic_ms())))
  end
end

-- Stops taking jobs, waits for the jobs in flight up to grace_ms, releases the rest to wait.
-- Returns the number of jobs released.
function Worker:close(grace_ms)
  if grace_ms ~= nil and not is_int(grace_ms, 0, L.grace_ms_max) then
    error("worker:close: grace_ms must be an integer in [0, " .. L.grace_ms_max .. "]", 2)
  end
  if self.state ~= "running" then
    while self.state ~= "closed" do sleep(CLOSE_POLL_MS) end
    return self.released_n
  end
  self.state = "closing"
  self.closing = true
  local deadline = monotonic_ms() + (grace_ms or self.grace_ms)
  while (self.n_active > 0 or self.taking) and monotonic_ms() < deadline do sleep(CLOSE_POLL_MS) end
  local released = 0
  for _, job in pairs(self.jobs) do
    if not job.released and self:release(job) then released = released + 1 end
  end
  if released > 0 then log.warn("queue: jobs released at shutdown", { queue = self.name, released = released }) end
  self.released_n = released
  self.state = "closed"
  core.drain_hold(-1)
  return released
end

function Worker:stats()
  local s = { active = self.n_active }
  for k, v in pairs(self.stats_t) do s[k] = v end
  return s
end

-- ---- service workers (bin/nuvion work, NUVION_WORKERS_IN_WEB) ----

-- Starts the workers a service's workers.lua lists. Returns the workers, or nil, err
-- when the service has no workers.lua.
function _M.start_service(service_dir, defaults)
  local path = service_dir .. "/workers.lua"
  local chunk, lerr = loadfile(path)
  if not chunk then
    if not io.open(path, "rb") then return nil, "no workers.lua in " .. service_dir end
    error(lerr, 0)
  end
  local list = chunk()
  if type(list) ~= "table" then error(path .. " must return a list of workers", 0) end
  local workers = {}
  for i, spec in ipairs(list) do
    if type(spec) ~= "table" or type(spec.queue) ~= "string" or type(spec.handler) ~= "function" then
      error(format("%s: worker %d needs queue (string) and handler (function)", path, i), 0)
    end
    local opts = {}
    for k, v in pairs(defaults or {}) do opts[k] = v end
    for k, v in pairs(spec) do
      if k ~= "queue" and k ~= "handler" then opts[k] = v end
    end
    workers[#workers + 1] = _M.worker(spec.queue, spec.handler, opts)
  end
  local names = {}
  for _, w in ipairs(workers) do names[#names + 1] = w.name .. " x" .. w.concurrency end
  log.info("queue workers started", { queues = concat(names, ", ") })
  return workers
end

-- NUVION_WORKERS_IN_WEB=1: the workers run in each serve worker process. Their grace
-- ends a second before the HTTP drain's (NUVION_SHUTDOWN_GRACE_MS, default 20 s), so the
-- jobs still running are released before the process exits.
function _M.start_in_web(service_dir)
  local shutdown_ms = tonumber(getenv("NUVION_SHUTDOWN_GRACE_MS") or "") or 20000
  local grace = max(0, min(env_grace(), floor(shutdown_ms) - 1000))
  return _M.start_service(service_dir, { grace_ms = grace })
end

-- Closes workers together; returns the total released.
function _M.close_all(workers, grace_ms)
  local left, released = #workers, 0
  for _, w in ipairs(workers) do
    spawn(function()
      released = released + w:close(grace_ms)
      left = left - 1
    end)
  end
  while left > 0 do sleep(CLOSE_POLL_MS) end
  return released
end

return _M
