-- auth/cache.lua -- a bounded cache of verified tokens, keyed by the SHA-256 of the token,
-- each entry dropped at its token's expiry.
--
--   local c = cache.new(10000)         -- at most 10000 entries (NUVION_AUTH_TOKEN_CACHE_MAX)
--   c:set(key, principal, exp)         -- exp: unix seconds
--   local principal, expired = c:get(key, now)
--
-- Two generations, as a cheap LRU: new entries go to `young`; when it holds max/2 the
-- `old` generation is dropped whole and `young` becomes `old`. A hit in `old` moves the
-- entry back to `young`. So there are never more than `max` entries, every operation is
-- O(1), and what is evicted is what was used least recently, give or take a generation.
local setmetatable, floor, error, type = setmetatable, math.floor, error, type

local _M = {}
local Cache = {}
Cache.__index = Cache

function _M.new(max)
  if type(max) ~= "number" or max < 2 or max % 1 ~= 0 then error("cache max must be an integer >= 2", 2) end
  return setmetatable({ max = max, half = floor(max / 2), young = {}, old = {}, young_n = 0, old_n = 0,
                        hits = 0, misses = 0, evictions = 0, expired = 0 }, Cache)
end

function Cache:size()
  return self.young_n + self.old_n
end

local function put_young(self, key, entry)
  if self.young_n >= self.half then
    self.evictions = self.evictions + self.old_n
    self.old, self.old_n = self.young, self.young_n
    self.young, self.young_n = {}, 0
  end
  self.young[key] = entry
  self.young_n = self.young_n + 1
end

-- The cached value, or nil; and true as a second value when the entry had expired
-- (it is dropped).
function Cache:get(key, now)
  local entry = self.young[key]
  if not entry then
    entry = self.old[key]
    if entry then
      self.old[key] = nil
      self.old_n = self.old_n - 1
      if now < entry[2] then put_young(self, key, entry) end
    end
  elseif now >= entry[2] then
    self.young[key] = nil
    self.young_n = self.young_n - 1
  end
  if not entry then
    self.misses = self.misses + 1
    return nil
  end
  if now >= entry[2] then
    self.expired = self.expired + 1
    return nil, true
  end
  self.hits = self.hits + 1
  return entry[1]
end

function Cache:set(key, value, exp)
  if self.young[key] then
    self.young[key] = { value, exp }
    return
  end
  if self.old[key] then
    self.old[key] = nil
    self.old_n = self.old_n - 1
  end
  put_young(self, key, { value, exp })
end

function Cache:stats()
  return { size = self:size(), max = self.max, hits = self.hits, misses = self.misses,
           evictions = self.evictions, expired = self.expired }
end

return _M
