-- ids.lua -- prefixed, sortable, opaque object ids: `cus_01jd8x3v9k0000a7c2m4q8r6tw`.
--
--   local ids = require "nuvion.api.ids"
--   local id = ids.new("cus")          -- "cus_" .. 26 characters
--   ids.valid(id, "cus")               -- true
--   ids.time_ms(id)                    -- the unix time in ms it was made
--
-- After the prefix and "_": 48 bits of unix time in milliseconds (10 characters) then 80 random
-- bits (16 characters), in Crockford's base32, lower case (no i, l, o, u). Its alphabet is in
-- ASCII order and the width is fixed, so ids of one prefix sort by time as plain byte strings
-- (SQL columns holding them are `text COLLATE "C"`). Within one millisecond a worker increments
-- the random part of its previous id instead of drawing anew (as ULID's monotonic mode), so its
-- ids also sort in the order they were made; across workers ids of the same millisecond are in
-- random order. 80 random bits a millisecond make a collision negligible.
local crypto = require "nuvion.crypto"
local nuvion = require "nuvion"

local type, error, tostring, floor, byte, sub, find, concat = type, error, tostring, math.floor,
  string.byte, string.sub, string.find, table.concat
local now = nuvion.now

local ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
local TIME_CHARS = 10                  -- 48 bits of ms, 5 bits a character (the first has 3)
local RANDOM_CHARS = 16                -- 80 bits
local BODY_CHARS = TIME_CHARS + RANDOM_CHARS
local PREFIX_CHARS_MAX = 16
local TIME_MS_MAX = 2 ^ 48 - 1         -- year 10889

local _M = { BODY_CHARS = BODY_CHARS, PREFIX_CHARS_MAX = PREFIX_CHARS_MAX }

local DIGITS = {}
for i = 1, 32 do DIGITS[i - 1] = sub(ALPHABET, i, i) end

-- The last id this worker made: its ms and random digits (0..31 each).
local last_ms = -1
local last_random = {}

local function check_prefix(prefix)
  if type(prefix) ~= "string" or #prefix == 0 or #prefix > PREFIX_CHARS_MAX
     or not find(prefix, "^[a-z][a-z0-9]*$") then
    error("id prefix must be 1.." .. PREFIX_CHARS_MAX .. " characters [a-z][a-z0-9]*: "
          .. tostring(prefix), 3)
  end
end

local function draw_random()
  local bytes = crypto.random(10)
  local d = {}
  for half = 0, 1 do                   -- 5 bytes = 40 bits = 8 digits, exact in a double
    local v = 0
    for i = 1, 5 do v = v * 256 + byte(bytes, half * 5 + i) end
    for i = 8, 1, -1 do
      local r = v % 32
      d[half * 8 + i] = r
      v = (v - r) / 32
    end
  end
  return d
end

-- Adds one to the random digits; false when they were all 31 (then the caller moves to the next ms).
local function increment(d)
  for i = RANDOM_CHARS, 1, -1 do
    if d[i] < 31 then
      d[i] = d[i] + 1
      return true
    end
    d[i] = 0
  end
  return false
end

local function encode(ms, random)
  local out = {}
  for i = TIME_CHARS, 1, -1 do
    local r = ms % 32
    out[i] = DIGITS[r]
    ms = (ms - r) / 32
  end
  for i = 1, RANDOM_CHARS do out[TIME_CHARS + i] = DIGITS[random[i]] end
  return concat(out)
end

-- A new id for `prefix` ("cus" gives "cus_..."). ms: a time to use instead of now (imports,
-- specs): such an id is not ordered against the others of its millisecond.
function _M.new(prefix, ms)
  check_prefix(prefix)
  if ms ~= nil then
    if type(ms) ~= "number" or ms < 0 or ms > TIME_MS_MAX or ms ~= floor(ms) then
      error("id time out of range: " .. tostring(ms), 2)
    end
    return prefix .. "_" .. encode(ms, draw_random())
  end
  ms = floor(now() * 1000)
  if ms <= last_ms then
    ms = last_ms
    if not increment(last_random) then
      ms = ms + 1
      last_random = draw_random()
    end
  else
    last_random = draw_random()
  end
  last_ms = ms
  return prefix .. "_" .. encode(ms, last_random)
end

-- true when `id` is a string shaped as an id of `prefix` (or of any prefix when none is given).
function _M.valid(id, prefix)
  if type(id) ~= "string" then return false end
  local body
  if prefix then
    check_prefix(prefix)
    local n = #prefix
    if #id ~= n + 1 + BODY_CHARS or sub(id, 1, n + 1) ~= prefix .. "_" then return false end
    body = sub(id, n + 2)
  else
    local s = find(id, "_", 1, true)
    if not s or s < 2 or s - 1 > PREFIX_CHARS_MAX or not find(sub(id, 1, s - 1), "^[a-z][a-z0-9]*$") then
      return false
    end
    body = sub(id, s + 1)
    if #body ~= BODY_CHARS then return false end
  end
  -- the first character carries the top 3 bits of 48 only
  return find(body, "^[0-7][0-9a-hjkmnp-tv-z]+$") ~= nil
end

-- The prefix of an id ("cus" of "cus_..."), or nil when it is not an id.
function _M.prefix(id)
  if not _M.valid(id) then return nil end
  return sub(id, 1, find(id, "_", 1, true) - 1)
end

-- The unix time in ms an id was made at, or nil when it is not an id.
function _M.time_ms(id)
  if not _M.valid(id) then return nil end
  local body = sub(id, find(id, "_", 1, true) + 1)
  local ms = 0
  for i = 1, TIME_CHARS do
    ms = ms * 32 + (find(ALPHABET, sub(body, i, i), 1, true) - 1)
  end
  return ms
end

-- The smallest id of `prefix` at time ms: for range queries by creation time
-- (`id >= ids.at("cus", t1)`).
function _M.at(prefix, ms)
  check_prefix(prefix)
  local zero = {}
  for i = 1, RANDOM_CHARS do zero[i] = 0 end
  return prefix .. "_" .. encode(floor(ms), zero)
end

return _M
