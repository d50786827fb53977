-- pause.lua -- pauses or resumes the queue (BullMQ pause). ARGV: [1] prefix, [2] "paused" | "resumed".
if ARGV[2] == "paused" then
  if rcall("EXISTS", K_WAIT) == 1 then rcall("RENAME", K_WAIT, K_PAUSED) end
  rcall("HSET", K_META, "paused", 1)
  rcall("DEL", K_MARKER)
else
  local has_jobs = rcall("EXISTS", K_PAUSED) == 1
  if has_jobs then rcall("RENAME", K_PAUSED, K_WAIT) end
  rcall("HDEL", K_META, "paused")
  if has_jobs or rcall("ZCARD", K_PRIORITIZED) > 0 then base_marker(false) else delay_marker() end
end
emit("event", ARGV[2])
return 1
