-- auth/ids.lua -- prefixed, time-sortable ids for partners, keys and signing keys:
-- "<prefix>_" .. 11 hex digits of unix milliseconds .. 16 random hex digits.
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"

local format, floor = string.format, math.floor

local _M = {}

function _M.new(prefix)
  return format("%s_%011x%s", prefix, floor(nuvion.now() * 1000), crypto.hex_encode(crypto.random(8)))
end

return _M
