-- add.lua -- adds a job (BullMQ addStandardJob / addDelayedJob / addPrioritizedJob).
-- ARGV: [1] prefix, [2] custom id or "", [3] name, [4] timestamp, [5] data JSON,
-- [6] opts JSON, [7] delay ms, [8] priority, [9] "1" for lifo, [10] dedup id or "",
-- [11] dedup ttl ms or "0".
-- Returns the job id (the existing one for a duplicate id or a deduplicated add).
local custom_id, name, timestamp = ARGV[2], ARGV[3], tonumber(ARGV[4])
local data, opts_json = ARGV[5], ARGV[6]
local delay, priority = tonumber(ARGV[7]), tonumber(ARGV[8])
local lifo, deid, de_ttl = ARGV[9] == "1", ARGV[10], tonumber(ARGV[11])

local counter = rcall("INCR", K_ID)
max_events()
local id = custom_id
if id == "" then
  id = tostring(counter)
elseif rcall("EXISTS", PREFIX .. id) == 1 then
  emit("event", "duplicated", "jobId", id)
  return id
end
local job_key = PREFIX .. id

if deid ~= "" then
  local de_key = PREFIX .. "de:" .. deid
  local set
  if de_ttl > 0 then set = rcall("SET", de_key, id, "PX", de_ttl, "NX") else set = rcall("SET", de_key, id, "NX") end
  if not set then
    local holder = rcall("GET", de_key)
    emit("event", "debounced", "jobId", holder, "debounceId", deid)
    emit("event", "deduplicated", "jobId", holder, "deduplicationId", deid, "deduplicatedJobId", id)
    return holder
  end
end

local fields = { "name", name, "data", data, "opts", opts_json, "timestamp", timestamp,
                 "delay", delay, "priority", priority }
if deid ~= "" then fields[#fields + 1] = "deid"; fields[#fields + 1] = deid end
rcall("HSET", job_key, unpack(fields))
emit("event", "added", "jobId", id, "name", name)

if delay > 0 then
  local score, due = delayed_score(timestamp, delay)
  rcall("ZADD", K_DELAYED, score, id)
  emit("event", "delayed", "jobId", id, "delay", due)
  if not meta().paused then delay_marker() end
  return id
end

local target, quiet = target_list()
if priority > 0 then
  add_prioritized(id, priority, quiet)
else
  rcall(lifo and "RPUSH" or "LPUSH", target, id)
  base_marker(quiet)
end
emit("event", "waiting", "jobId", id)
return id
