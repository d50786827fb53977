-- finish.lua -- moves an active job to completed or failed (BullMQ moveToFinished),
-- then takes the next job when asked.
-- ARGV: [1] prefix, [2] id, [3] timestamp, [4] token, [5] "completed" | "failed",
-- [6] returnvalue JSON | failedReason, [7] stacktrace JSON or "", [8] keep count (-1 all),
-- [9] keep age s (0 none), [10] attempts, [11] "1" to fetch the next job, [12] lock ms,
-- [13] worker name or "".
-- Returns 0, { job, id } / { 0, due } when fetching, or a negative code:
-- -1 no job, -2 lock missing, -3 not active, -6 lock held by another token.
local id, timestamp, token, target = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local value, stacktrace = ARGV[6], ARGV[7]
local keep_count, keep_age, attempts = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local job_key = PREFIX .. id
local attrs = rcall("HMGET", job_key, "timestamp", "deid", "atm") -- every job has a timestamp
if not attrs[1] then return -1 end
local code = remove_lock(job_key, id, token)
if code < 0 then return code end
if rcall("LREM", K_ACTIVE, -1, id) < 1 then return -3 end

release_dedup(attrs[2], id)
local made = (tonumber(attrs[3]) or 0) + 1
local field = target == "completed" and "returnvalue" or "failedReason"

if keep_count ~= 0 then
  local set_key = target == "completed" and K_COMPLETED or K_FAILED
  rcall("ZADD", set_key, timestamp, id)
  if stacktrace ~= "" then
    rcall("HSET", job_key, field, value, "finishedOn", timestamp, "atm", made, "stacktrace", stacktrace)
  else
    rcall("HSET", job_key, field, value, "finishedOn", timestamp, "atm", made)
  end
  if target == "failed" then rcall("HDEL", job_key, "defa") end
  trim_finished(set_key, timestamp, keep_count, keep_age)
else
  remove_job_keys(job_key)
end

emit("event", target, "jobId", id, field, value, "prev", "active")
if target == "failed" and made >= attempts then
  emit("event", "retries-exhausted", "jobId", id, "attemptsMade", made)
end

if ARGV[11] == "1" then
  local next_job = take(timestamp, token, ARGV[12], ARGV[13])
  if next_job[1] ~= 0 then return next_job end
end
if rcall("LLEN", K_WAIT) == 0 and rcall("LLEN", K_ACTIVE) == 0 and rcall("ZCARD", K_PRIORITIZED) == 0 then
  emit("event", "drained")
end
return 0
