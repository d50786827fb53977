-- stalled.lua -- the stalled-job check (BullMQ moveStalledJobsToWait), at most once per
-- interval across every worker: guarded by the stalled-check key.
-- ARGV: [1] prefix, [2] timestamp, [3] max stalled count, [4] interval ms.
-- An active job seen in the previous check (the stalled set) whose lock is gone goes back
-- to wait; past the max stalled count it is marked for failure (defa) by the next taker.
-- Returns the ids moved back, or -1 when another checker ran within the interval.
local timestamp, max_stalled, interval = ARGV[2], tonumber(ARGV[3]), ARGV[4]
if not rcall("SET", K_STALLED_CHECK, timestamp, "PX", interval, "NX") then return -1 end
rcall("XTRIM", K_EVENTS, "MAXLEN", "~", max_events())
local moved = {}
local stalling = rcall("SMEMBERS", K_STALLED)
if #stalling > 0 then
  rcall("DEL", K_STALLED)
  for _, id in ipairs(stalling) do
    if string.sub(id, 1, 2) == "0:" then
      rcall("LREM", K_ACTIVE, 1, id)
    else
      local job_key = PREFIX .. id
      if rcall("EXISTS", job_key .. ":lock") == 0 and rcall("LREM", K_ACTIVE, 1, id) > 0 then
        local count = rcall("HINCRBY", job_key, "stc", 1)
        -- a job of a BullMQ job scheduler (rjk) is never failed for stalling, as BullMQ
        local rjk = rcall("HGET", job_key, "rjk")
        local scheduled = rjk and (rcall("EXISTS", PREFIX .. "repeat:" .. rjk) == 1
                                   or rcall("ZSCORE", PREFIX .. "repeat", rjk))
        if count > max_stalled and not scheduled then
          rcall("HSET", job_key, "defa", "job stalled more than allowable limit")
        end
        local target, quiet = target_list()
        rcall("RPUSH", target, id)
        base_marker(quiet)
        emit("event", "waiting", "jobId", id, "prev", "active")
        emit("event", "stalled", "jobId", id)
        moved[#moved + 1] = id
      end
    end
  end
end
local active = rcall("LRANGE", K_ACTIVE, 0, -1)
for i = 1, #active, 5000 do
  rcall("SADD", K_STALLED, unpack(active, i, math.min(i + 4999, #active)))
end
return moved
