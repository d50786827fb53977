-- reprocess.lua -- a failed job back to wait (BullMQ reprocessJob from "failed", with its
-- attempts reset). ARGV: [1] prefix, [2] id. Returns 1, -1 no job, -3 not in failed.
local id = ARGV[2]
local job_key = PREFIX .. id
if rcall("EXISTS", job_key) == 0 then return -1 end
if rcall("ZREM", K_FAILED, id) == 0 then return -3 end
rcall("HDEL", job_key, "finishedOn", "processedOn", "failedReason", "atm", "ats", "stc", "defa")
local target, quiet = target_list()
local lifo = string.find(rcall("HGET", job_key, "opts") or "", '"lifo":true', 1, true)
rcall(lifo and "RPUSH" or "LPUSH", target, id)
base_marker(quiet)
emit("event", "waiting", "jobId", id, "prev", "failed")
return 1
