-- netguard.lua -- SSRF guard for requests to URLs that customers give us (webhook endpoints):
-- resolve the host, refuse when any of its addresses is loopback, private, link-local, CGNAT,
-- unspecified, multicast or otherwise not on the public internet, and hand back the address
-- that was checked so the caller connects to it and to nothing else (http.request{ pin = }).
--
--   local netguard = require "nuvion.netguard"
--   netguard.classify("10.1.2.3")          --> "private"      (nil for a public address)
--   local addr, err = netguard.check_url("https://hooks.example.com/x")
--   if not addr then return nil, err end   -- err = { code = "ssrf_blocked", message = ... }
--   http.request{ url = url, pin = addr, follow_redirects = 0, proxy = false, ... }
--
-- opts.allow_private = true (test mode) lets loopback and private ranges through; unspecified
-- and multicast addresses are refused even then.
local http = require "nuvion.http"

local tonumber, type, ipairs, format = tonumber, type, ipairs, string.format
local match, find, lower, gmatch = string.match, string.find, string.lower, string.gmatch
local band, rshift = bit.band, bit.rshift

local _M = {}

-- Ranges, [first octet(s)] -> a test. IPv4 as four numbers.
local function classify4(a, b, c, d)
  if a == 0 then return (b == 0 and c == 0 and d == 0) and "unspecified" or "this_network" end
  if a == 127 then return "loopback" end
  if a == 10 then return "private" end
  if a == 172 and b >= 16 and b <= 31 then return "private" end
  if a == 192 and b == 168 then return "private" end
  if a == 100 and b >= 64 and b <= 127 then return "cgnat" end
  if a == 169 and b == 254 then return "link_local" end
  if a >= 224 and a <= 239 then return "multicast" end
  if a == 255 and b == 255 and c == 255 and d == 255 then return "broadcast" end
  if a >= 240 then return "reserved" end
  if a == 192 and b == 0 and c == 0 then return "reserved" end          -- IETF protocol assignments
  if a == 192 and b == 0 and c == 2 then return "documentation" end
  if a == 198 and b == 51 and c == 100 then return "documentation" end
  if a == 203 and b == 0 and c == 113 then return "documentation" end
  if a == 198 and (b == 18 or b == 19) then return "benchmarking" end
  if a == 192 and b == 88 and c == 99 then return "reserved" end        -- 6to4 relay anycast
  return nil
end

-- "a.b.c.d" strictly (no octal, hex or short forms) -> four numbers, or nil.
local function parse4(s)
  local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local o = { tonumber(a), tonumber(b), tonumber(c), tonumber(d) }
  for i, part in ipairs({ a, b, c, d }) do
    if o[i] > 255 or (#part > 1 and part:sub(1, 1) == "0") then return nil end
  end
  return o
end

-- IPv6 text -> eight 16-bit numbers, or nil. Accepts "::" and a trailing dotted IPv4.
local function parse6(s)
  s = lower(s)
  if find(s, "%%") then s = match(s, "^([^%%]*)%%") end     -- zone id: the address is what counts
  if not s or not match(s, "^[%x:.]+$") then return nil end
  local tail4
  local head, v4 = match(s, "^(.*:)(%d+%.%d+%.%d+%.%d+)$")
  if head then
    tail4 = parse4(v4)
    if not tail4 then return nil end
    s = head .. format("%x:%x", tail4[1] * 256 + tail4[2], tail4[3] * 256 + tail4[4])
  end
  local left, right = s, nil
  local dbl = find(s, "::", 1, true)
  if dbl then
    if find(s, "::", dbl + 1, true) then return nil end
    left, right = s:sub(1, dbl - 1), s:sub(dbl + 2)
  end
  local function groups(part)
    local out = {}
    if part == "" then return out end
    for g in gmatch(part .. ":", "([^:]*):") do
      if not match(g, "^%x%x?%x?%x?$") then return nil end
      out[#out + 1] = tonumber(g, 16)
    end
    return out
  end
  local l, r = groups(left), groups(right or "")
  if not l or not r then return nil end
  local n = #l + #r
  if (dbl and n > 7) or (not dbl and n ~= 8) then return nil end
  local out = {}
  for i = 1, #l do out[#out + 1] = l[i] end
  for _ = 1, 8 - n do out[#out + 1] = 0 end
  for i = 1, #r do out[#out + 1] = r[i] end
  return out
end

local function classify6(g)
  local all0 = true
  for i = 1, 7 do if g[i] ~= 0 then all0 = false end end
  if all0 and g[8] == 0 then return "unspecified" end
  if all0 and g[8] == 1 then return "loopback" end
  local function v4at(hi, lo)
    return classify4(rshift(hi, 8), band(hi, 255), rshift(lo, 8), band(lo, 255)) or false
  end
  -- IPv4 inside IPv6: mapped ::ffff:0:0/96, compatible ::/96, NAT64 64:ff9b::/96, 6to4 2002::/16
  if g[1] == 0 and g[2] == 0 and g[3] == 0 and g[4] == 0 and g[5] == 0 and (g[6] == 0xffff or g[6] == 0) then
    return v4at(g[7], g[8]) or nil
  end
  if g[1] == 0x64 and g[2] == 0xff9b and g[3] == 0 and g[4] == 0 and g[5] == 0 and g[6] == 0 then
    return v4at(g[7], g[8]) or nil
  end
  if g[1] == 0x2002 then return v4at(g[2], g[3]) or nil end
  local h = g[1]
  if band(h, 0xffc0) == 0xfe80 then return "link_local" end
  if band(h, 0xffc0) == 0xfec0 then return "site_local" end
  if band(h, 0xfe00) == 0xfc00 then return "ula" end
  if band(h, 0xff00) == 0xff00 then return "multicast" end
  if h == 0x2001 and g[2] == 0x0db8 then return "documentation" end
  if h == 0x0100 and g[2] == 0 and g[3] == 0 and g[4] == 0 then return "discard" end
  if band(h, 0xe000) ~= 0x2000 then return "reserved" end     -- outside 2000::/3, the unicast space
  return nil
end

-- classify(ip) -> nil for a public unicast address, else the name of its range
-- ("loopback", "private", "link_local", "cgnat", "ula", "unspecified", "multicast", ...);
-- "invalid" for text that is not an IP address.
function _M.classify(ip)
  if type(ip) ~= "string" then error("ip must be a string", 2) end
  local o = parse4(ip)
  if o then return classify4(o[1], o[2], o[3], o[4]) end
  local g = parse6(ip)
  if g then return classify6(g) end
  return "invalid"
end

-- Never allowed, even in test mode.
local ALWAYS_BLOCKED = { unspecified = true, multicast = true, broadcast = true, invalid = true,
                         this_network = true }

local function blocked(host, ip, range)
  return { code = "ssrf_blocked",
           message = format("refusing to connect to %s: address %s is %s", host, ip, range),
           range = range, address = ip }
end

-- check_host(host, opts) -> address to connect to | nil, err.
-- Every address the host resolves to must pass; the first that does is returned.
-- opts: allow_private (bool), resolve (function(host) -> list | nil, err; default http.resolve),
-- timeout_ms (resolution).
function _M.check_host(host, opts)
  opts = opts or {}
  if type(host) ~= "string" or host == "" then error("host must be a non-empty string", 2) end
  host = lower(match(host, "^%[(.*)%]$") or host)
  local addrs, err = (opts.resolve or http.resolve)(host, opts.timeout_ms)
  if not addrs then return nil, { code = "dns_failed", message = tostring(err) } end
  if #addrs == 0 then return nil, { code = "dns_failed", message = "no address for " .. host } end
  for _, ip in ipairs(addrs) do
    local range = _M.classify(ip)
    if range and (ALWAYS_BLOCKED[range] or not opts.allow_private) then
      return nil, blocked(host, ip, range)
    end
  end
  return addrs[1]
end

-- check_url(url, opts) -> address, host | nil, err: check_host on the URL's host.
function _M.check_url(url, opts)
  if type(url) ~= "string" then error("url must be a string", 2) end
  local authority = match(url, "^[hH][tT][tT][pP][sS]?://([^/?#]*)")
  if not authority or find(authority, "@", 1, true) then
    return nil, { code = "invalid_url", message = "url must be http(s)://host[:port]/... without credentials" }
  end
  local host = match(authority, "^%[([%x:.]+)%]") or match(authority, "^([^:]+)")
  if not host then return nil, { code = "invalid_url", message = "url has no host" } end
  local addr, err = _M.check_host(host, opts)
  if not addr then return nil, err end
  return addr, lower(host)
end

return _M
