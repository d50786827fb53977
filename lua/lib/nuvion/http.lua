-- http.lua -- outbound HTTP(S) for tasks, over the host's C client (nuvion.http_c):
-- keep-alive pool per origin, evdns, TLS with peer and hostname verification, optional
-- CONNECT egress proxy, size limits and timeouts. The task waits; the loop does not.
--
--   local http = require "nuvion.http"
--   local res, err = http.request{ method = "POST", url = "https://api.example.com/v1/x",
--                                  headers = { ["Content-Type"] = "application/json" },
--                                  body = "{}", timeout = 5000 }
--   -- res = { status = 200, headers = { ["content-type"] = "..." }, body = "..." }
--   -- or nil, "timeout" | "connection refused" | "certificate verify failed: ..." | ...
--
-- See docs/http_client.md for every option.
local http_c = require "nuvion.http_c"

local type, tostring, tonumber, pairs, error, floor = type, tostring, tonumber, pairs, error, math.floor
local find, match, lower, upper, sub, format, concat = string.find, string.match, string.lower,
  string.upper, string.sub, string.format, table.concat
local getenv = os.getenv

local _M = {}

_M.ERR_TIMEOUT = "timeout"
_M.ERR_CONNECT_TIMEOUT = "connect timeout"
_M.ERR_TOO_LARGE = "response too large"
_M.ERR_REFUSED = "connection refused"
_M.ERR_CLOSED = "connection closed before the response"
_M.ERR_CERT = "certificate verify failed"   -- a prefix: ": <reason>" follows
_M.ERR_TOO_MANY_REDIRECTS = "too many redirects"

local DEFAULT_PORTS = { http = 80, https = 443 }
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true, OPTIONS = true, TRACE = true }
local BODY_METHODS = { POST = true, PUT = true, PATCH = true }
local REDIRECTS = { [301] = true, [302] = true, [303] = true, [307] = true, [308] = true }
-- Set by this module from the request; a caller's copy would contradict ours.
local RESERVED = { ["content-length"] = true, ["transfer-encoding"] = true, ["connection"] = true }
-- Credentials never follow a redirect to another origin.
local CREDENTIALS = { authorization = true, cookie = true, ["proxy-authorization"] = true }
local REDIRECTS_MAX = 20

-- Splits an absolute http(s) URL. Returns scheme, host, port, target or nil, why.
local function parse_url(url)
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and lower(scheme)
  if not DEFAULT_PORTS[scheme] then return nil, "url must start with http:// or https://" end
  local authority, target = match(rest, "^([^/?#]*)(.*)$")
  if find(authority, "@", 1, true) then return nil, "url must not carry credentials" end
  local host, port
  if sub(authority, 1, 1) == "[" then
    host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
  else
    host, port = match(authority, "^([%w.-]+):?(%d*)$")
  end
  if not host or host == "" then return nil, "url has a bad host" end
  port = port ~= "" and tonumber(port) or DEFAULT_PORTS[scheme]
  if port < 1 or port > 65535 then return nil, "url has a bad port" end
  target = match(target, "^([^#]*)")           -- a fragment is never sent
  if target == "" then target = "/" elseif sub(target, 1, 1) == "?" then target = "/" .. target end
  if find(target, "[%s%c]") then return nil, "url has spaces or control characters" end
  return scheme, lower(host), port, target
end

-- Proxy URL ("http://host:port") to host, port.
local function parse_proxy(url)
  local host, port = match(url, "^[hH][tT][tT][pP]://([%w.-]+):(%d+)/?$")
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then return nil end
  return host, port
end

local function check_ms(v, name)
  if v == nil then return nil end
  if type(v) ~= "number" or v < 1 or v ~= floor(v) then
    error(name .. " must be a positive integer of milliseconds", 3)
  end
  return v
end

local function host_header(scheme, host, port)
  local h = find(host, ":", 1, true) and "[" .. host .. "]" or host
  if port ~= DEFAULT_PORTS[scheme] then h = h .. ":" .. port end
  return h
end

-- The request head and body as bytes. Errors blame request()'s caller: serialize <- exchange <- request.
local function serialize(method, scheme, host, port, target, headers, body)
  local out = { format("%s %s HTTP/1.1\r\n", method, target) }
  local seen = {}
  for name, value in pairs(headers) do
    if type(name) ~= "string" or not match(name, "^[%w!#$%%&'*+.^_`|~-]+$") then
      error("bad header name: " .. tostring(name), 4)
    end
    if type(value) == "number" then value = tostring(value) end
    if type(value) ~= "string" or find(value, "[\r\n%z]") then
      error("header " .. name .. " must be a string without CR, LF or NUL", 4)
    end
    local lname = lower(name)
    if RESERVED[lname] then error("header " .. name .. " is set by nuvion.http", 4) end
    seen[lname] = true
    out[#out + 1] = name .. ": " .. value .. "\r\n"
  end
  if not seen.host then out[#out + 1] = "Host: " .. host_header(scheme, host, port) .. "\r\n" end
  if not seen["user-agent"] then out[#out + 1] = "User-Agent: nuvion\r\n" end
  if body or BODY_METHODS[method] then out[#out + 1] = "Content-Length: " .. #(body or "") .. "\r\n" end
  out[#out + 1] = "\r\n"
  out[#out + 1] = body
  return concat(out)
end

-- Resolves a Location header against the URL it answered.
local function resolve(location, scheme, host, port, target)
  if match(location, "^%a[%w+.-]*://") then return location end
  local base = scheme .. "://" .. host_header(scheme, host, port)
  if sub(location, 1, 2) == "//" then return scheme .. ":" .. location end
  if sub(location, 1, 1) == "/" then return base .. location end
  local dir = match(target, "^([^?]*/)") or "/"
  return base .. dir .. location
end

-- One exchange, no redirects.
local function exchange(method, url, headers, body, o)
  local scheme, host, port, target = parse_url(url)
  if not scheme then return nil, host end
  local proxy_host, proxy_port
  if o.proxy then
    proxy_host, proxy_port = parse_proxy(o.proxy)
    if not proxy_host then return nil, "bad proxy url" end
  end
  local status, hdrs, rbody = http_c.request({
    scheme = scheme, host = host, port = port,
    data = serialize(method, scheme, host, port, target, headers, body),
    head = method == "HEAD", idempotent = IDEMPOTENT[method] or false,
    insecure = o.insecure, ca_file = o.ca_file,
    timeout_ms = o.timeout, connect_timeout_ms = o.connect_timeout,
    max_body_bytes = o.max_body_bytes, max_header_bytes = o.max_header_bytes,
    proxy_host = proxy_host, proxy_port = proxy_port, pin = o.pin,
  })
  if not status then return nil, hdrs end
  return { status = status, headers = hdrs, body = rbody, url = url }, nil, scheme, host, port, target
end

-- request{ method, url, headers, body, timeout, connect_timeout, max_body_bytes,
--          max_header_bytes, follow_redirects, verify, ca_file, proxy }
-- -> { status, headers (lower-case names), body, url } | nil, err
function _M.request(opts)
  if type(opts) ~= "table" then error("request options must be a table", 2) end
  local url = opts.url
  if type(url) ~= "string" then error("url must be a string", 2) end
  local method = upper(opts.method or "GET")
  if not match(method, "^[A-Z]+$") then error("bad method: " .. tostring(opts.method), 2) end
  local body = opts.body
  if body ~= nil and type(body) ~= "string" then error("body must be a string", 2) end
  local headers = opts.headers or {}
  if type(headers) ~= "table" then error("headers must be a table", 2) end
  local redirects = opts.follow_redirects or 0
  if type(redirects) ~= "number" or redirects < 0 or redirects > REDIRECTS_MAX or redirects ~= floor(redirects) then
    error("follow_redirects must be an integer in [0, " .. REDIRECTS_MAX .. "]", 2)
  end
  if opts.verify ~= nil and type(opts.verify) ~= "boolean" then error("verify must be a boolean", 2) end
  local proxy = opts.proxy
  if proxy == nil then
    proxy = getenv("NUVION_EGRESS_PROXY")
    if proxy == "" then proxy = nil end
  elseif proxy ~= false and type(proxy) ~= "string" then
    error("proxy must be a URL string or false", 2)
  end
  local o = {
    insecure = opts.verify == false,  -- test-only: see docs/http_client.md
    ca_file = opts.ca_file or getenv("NUVION_HTTP_CA_FILE"),
    timeout = check_ms(opts.timeout, "timeout"),
    connect_timeout = check_ms(opts.connect_timeout, "connect_timeout"),
    max_body_bytes = opts.max_body_bytes, max_header_bytes = opts.max_header_bytes,
    proxy = proxy or nil,
    pin = opts.pin,
  }
  if o.pin ~= nil and (type(o.pin) ~= "string" or o.proxy or redirects > 0) then
    error("pin must be an IP address string, without a proxy or redirects", 2)
  end
  if o.ca_file == "" then o.ca_file = nil end
  if o.max_body_bytes ~= nil and (type(o.max_body_bytes) ~= "number" or o.max_body_bytes < 0) then
    error("max_body_bytes must be a non-negative integer", 2)
  end
  local res, err, scheme, host, port, target = exchange(method, url, headers, body, o)
  while res and REDIRECTS[res.status] and res.headers.location and redirects > 0 do
    redirects = redirects - 1
    local next_url = resolve(res.headers.location, scheme, host, port, target)
    if res.status == 303 or ((res.status == 301 or res.status == 302) and method == "POST") then
      method, body = (method == "HEAD" and "HEAD" or "GET"), nil
    end
    local ns, nh, np = parse_url(next_url)
    if not ns then return nil, "bad redirect location: " .. nh end
    if ns ~= scheme or nh ~= host or np ~= port then
      local kept = {}
      for k, v in pairs(headers) do
        if not CREDENTIALS[lower(k)] and lower(k) ~= "host" then kept[k] = v end
      end
      headers = kept
    end
    res, err, scheme, host, port, target = exchange(method, next_url, headers, body, o)
  end
  if res and REDIRECTS[res.status] and res.headers.location and (opts.follow_redirects or 0) > 0 then
    return nil, _M.ERR_TOO_MANY_REDIRECTS
  end
  return res, err
end

-- resolve(host [, timeout_ms]) -> { "203.0.113.7", "2001:db8::1", ... } | nil, err
-- Every address the name has (evdns: /etc/hosts, then the name servers; an IP literal is
-- itself), at most NV_HTTP_CLIENT_RESOLVED_MAX. With request{ pin = addr } a caller that checked
-- the addresses (nuvion.netguard) connects to the one it checked: no second lookup to rebind.
function _M.resolve(host, timeout_ms)
  if type(host) ~= "string" or host == "" then error("host must be a non-empty string", 2) end
  local name = match(host, "^%[(.*)%]$") or host
  local status, err, list = http_c.request({
    scheme = "http", host = lower(name), port = 80, data = "-", resolve_only = true,
    timeout_ms = check_ms(timeout_ms, "timeout_ms") or 5000,
  })
  if not status then return nil, err end
  local out = {}
  for ip in string.gmatch(list, "[^,]+") do out[#out + 1] = ip end
  return out
end

-- Counters of this worker's client: idle (pooled connections), in_flight, connects, reuses,
-- retries (stale pooled connections retried on a new one).
_M.stats = http_c.stats

return _M
