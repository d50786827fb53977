-- release.lua -- gives an active job back to wait at shutdown (BullMQ moveJobFromActiveToWait):
-- first in line again, its lock released. ARGV: [1] prefix, [2] id, [3] token.
-- Returns 1 released, 0 not active, or -1 / -2 / -6 as finish.lua.
local id, token = ARGV[2], ARGV[3]
local job_key = PREFIX .. id
if rcall("EXISTS", job_key) == 0 then return -1 end
local code = remove_lock(job_key, id, token)
if code < 0 then return code end
if rcall("LREM", K_ACTIVE, 1, id) == 0 then return 0 end
enqueue_ready(id, "RPUSH")
emit("event", "waiting", "jobId", id, "prev", "active")
return 1
