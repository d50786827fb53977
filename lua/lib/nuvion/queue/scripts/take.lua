-- take.lua -- moves the next job to active and locks it (BullMQ moveToActive).
-- ARGV: [1] prefix, [2] timestamp, [3] token, [4] lock ms, [5] worker name or "".
-- Returns { job hash flat, id } or { 0, due time of the next delayed job or 0 }.
return take(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
