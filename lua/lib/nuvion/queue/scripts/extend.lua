-- extend.lua -- renews the locks of a worker's jobs and takes them off the stalled set
-- (BullMQ extendLocks). ARGV: [1] prefix, [2] lock ms, then id, token pairs.
-- Returns the ids whose lock was lost (missing or another token's).
local lock_ms = ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local lock_key = PREFIX .. id .. ":lock"
  if rcall("GET", lock_key) == token then
    rcall("SET", lock_key, token, "PX", lock_ms)
    rcall("SREM", K_STALLED, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
