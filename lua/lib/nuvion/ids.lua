-- ids.lua -- prefixed, sortable, opaque object ids: "<prefix>_<12 hex of unix ms><16 hex random>".
--
--   local ids = require "nuvion.ids"
--   ids.new("evt")   --> "evt_0193a1b2c3d4e5f60718293a4b5c6d7e"
--
-- Ids of one process sort in the order they were made (within a millisecond, a counter takes the
-- place of the random part's first bits: ULID's monotonic rule); ids of different processes sort
-- by their millisecond. Text order is time order: fixed width, lower-case hex.
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"

local format, floor, match, error, type = string.format, math.floor, string.match, error, type

local _M = {}

local last_ms, counter, rand_tail = -1, 0, nil

function _M.new(prefix)
  if type(prefix) ~= "string" or not match(prefix, "^[a-z][a-z0-9]*$") then
    error("id prefix must be lower-case letters and digits", 2)
  end
  local ms = floor(nuvion.now() * 1000)
  if ms <= last_ms then
    ms = last_ms            -- a clock step back never breaks the order
    counter = counter + 1
  else
    last_ms, counter = ms, 0
    rand_tail = crypto.hex_encode(crypto.random(6))
  end
  -- 12 hex ms | 4 hex counter | 12 hex random: 16 bytes of id, 2^16 ids per ms in order
  if counter > 0xffff then
    last_ms, counter = ms + 1, 0
    ms = last_ms
  end
  return format("%s_%012x%04x%s", prefix, ms, counter,
                counter == 0 and rand_tail or crypto.hex_encode(crypto.random(6)))
end

-- The unix milliseconds an id was made at (nil for text that is not one of ours).
function _M.time_ms(id)
  local hex = match(id or "", "^[a-z][a-z0-9]*_(%x%x%x%x%x%x%x%x%x%x%x%x)%x+$")
  return hex and tonumber(hex, 16) or nil
end

return _M
