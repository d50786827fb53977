-- retry.lua -- a failed attempt with attempts left (BullMQ moveToDelayed / retryJob).
-- ARGV: [1] prefix, [2] id, [3] timestamp, [4] token, [5] backoff delay ms (0: to wait),
-- [6] failedReason, [7] stacktrace JSON, [8] "1" for lifo.
-- Returns 0, or -1 no job, -2 lock missing, -3 not active, -6 another token's lock.
local id, timestamp, token, delay = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local job_key = PREFIX .. id
promote_delayed(timestamp)
if rcall("EXISTS", job_key) == 0 then return -1 end
local code = remove_lock(job_key, id, token)
if code < 0 then return code end
rcall("HSET", job_key, "failedReason", ARGV[6], "stacktrace", ARGV[7])
if rcall("LREM", K_ACTIVE, -1, id) < 1 then return -3 end
rcall("HINCRBY", job_key, "atm", 1)
if delay > 0 then
  local score, due = delayed_score(timestamp, delay)
  rcall("HSET", job_key, "delay", delay)
  rcall("ZADD", K_DELAYED, score, id)
  emit("event", "delayed", "jobId", id, "delay", due)
  delay_marker()
else
  enqueue_ready(id, ARGV[8] == "1" and "RPUSH" or "LPUSH")
  emit("event", "waiting", "jobId", id, "prev", "active")
end
return 0
