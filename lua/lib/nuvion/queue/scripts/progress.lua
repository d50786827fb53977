-- progress.lua -- stores a job's progress and writes the progress event (BullMQ updateProgress).
-- ARGV: [1] prefix, [2] id, [3] progress JSON. Returns 0, or -1 when the job is gone.
local job_key = PREFIX .. ARGV[2]
if rcall("EXISTS", job_key) == 0 then return -1 end
rcall("HSET", job_key, "progress", ARGV[3])
emit("event", "progress", "jobId", ARGV[2], "data", ARGV[3])
return 0
