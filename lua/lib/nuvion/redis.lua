-- redis.lua -- nuvion.redis: a Redis client on the host's own connections
-- (plain or TLS), with automatic pipelining, explicit pipelines, cached Lua
-- scripts and a small pool of connections for blocking commands.
--
--   local redis = require "nuvion.redis"
--   local r = assert(redis.connect(os.getenv("REDIS_URL")))   -- one client per URL and worker
--   r:call("SET", "k", "v")                    --> "OK"
--   r:call("GET", "missing")                   --> nil
--   r:call("INCR", "a-string")                 --> nil, "ERR value is not an integer or out of range"
--   r:pipeline({ { "SET", "a", 1 }, { "GET", "a" } })  --> { "OK", "1" }
--   r:eval_script("return redis.call('GET', KEYS[1])", { "a" }, {})
--   r:blocking("BZPOPMIN", "jobs", 5)          -- on a dedicated connection
--
-- docs/redis.md has the reply mapping, the errors, TLS and the limits.
local c = require "nuvion.redis_c"
local json = require "nuvion.json"

local type, tostring, tonumber, pairs, ipairs, error = type, tostring, tonumber, pairs, ipairs, error
local setmetatable, getmetatable, select, unpack = setmetatable, getmetatable, select, unpack
local find, sub, upper, gsub, char, match = string.find, string.sub, string.upper, string.gsub, string.char,
  string.match
local concat, sort, remove = table.concat, table.sort, table.remove
local getenv = os.getenv

local LIMITS = c.limits

local _M = {
  null = json.null, -- a nil inside an array reply
  limits = LIMITS,
  ERR_TIMEOUT = "timeout",
  ERR_CONNECTION_LOST = "connection lost",
  ERR_CONNECTION_CLOSED = "connection closed",
  ERR_TOO_MANY_PENDING = "too many pending commands",
  ERR_TOO_MANY_BLOCKING = "too many blocking commands",
  ERR_EVICTING = "redis evicts keys",
}

local Client = {}
Client.__index = Client

-- Clients of this worker (this Lua state), by URL and options: at most limits.clients_max.
local clients = {}
local clients_n = 0

-- ---- URL ----

local function unescape(s)
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- redis://[[user]:password@]host[:port][/db][?ca_file=...&ssl_cert_reqs=none]
-- rediss:// is TLS. Returns the settings table, or nil, err (the error never
-- repeats the URL: it may hold a password).
local function parse_url(url)
  local scheme, rest = match(url, "^(rediss?)://(.*)$")
  if not scheme then return nil, "redis: URL must start with redis:// or rediss://" end
  local query
  local q = find(rest, "?", 1, true)
  if q then rest, query = sub(rest, 1, q - 1), sub(rest, q + 1) end
  local cfg = { tls = scheme == "rediss" }
  local at = find(rest, "@[^@]*$")
  if at then
    local userinfo = sub(rest, 1, at - 1)
    rest = sub(rest, at + 1)
    local colon = find(userinfo, ":", 1, true)
    if colon then
      cfg.username = unescape(sub(userinfo, 1, colon - 1))
      cfg.password = unescape(sub(userinfo, colon + 1))
    else
      cfg.password = unescape(userinfo)
    end
    -- Heroku's legacy URLs carry the placeholder user "h": Redis knows only "default".
    if cfg.username == "h" or cfg.username == "" then cfg.username = nil end
    if cfg.password == "" then cfg.password = nil end
  end
  local hostport, db = match(rest, "^([^/]*)/?(.*)$")
  local host, port = match(hostport, "^%[([^%]]+)%]:?(%d*)$")
  if not host then host, port = match(hostport, "^([^:]+):?(%d*)$") end
  if not host then return nil, "redis: URL has no host" end
  cfg.host = host
  cfg.port = port ~= "" and tonumber(port) or 6379
  if db ~= "" then
    cfg.db = tonumber(db)
    if not cfg.db or cfg.db < 0 or cfg.db % 1 ~= 0 then return nil, "redis: URL database must be a number" end
  end
  for k, v in (query or ""):gmatch("([^&=]+)=?([^&]*)") do
    v = unescape(v)
    if k == "ca_file" then
      cfg.ca_file = v
    elseif k == "server_name" then
      cfg.server_name = v
    elseif k == "ssl_cert_reqs" or k == "verify" then
      cfg.verify = not (v == "none" or v == "false" or v == "0")
    end
  end
  return cfg
end

-- ---- client ----

local OPT_KEYS = { "timeout_ms", "connect_timeout_ms", "ca_file", "verify", "server_name", "username", "password",
                   "db" }

local function cache_key(url, opts)
  local parts = { url }
  local keys = {}
  for k in pairs(opts) do keys[#keys + 1] = k end
  sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(opts[k]) end
  return concat(parts, "\0")
end

local function new_client(url, opts)
  local cfg, err = parse_url(url)
  if not cfg then return nil, err end
  for _, k in ipairs(OPT_KEYS) do
    if opts[k] ~= nil then cfg[k] = opts[k] end
  end
  if cfg.tls and cfg.ca_file == nil then cfg.ca_file = getenv("NUVION_REDIS_CA_FILE") end
  if cfg.ca_file == "" then cfg.ca_file = nil end
  local conn, cerr = c.new(cfg)
  if not conn then return nil, cerr end
  return setmetatable({ conn = conn, idle = {}, busy = {}, blocking_n = 0, shas = {}, shas_n = 0,
                        key = nil, closed = false }, Client)
end

-- Returns this worker's client for url (and opts), connected: nil, err when
-- the first connection fails (bad password, TLS verification, unreachable).
-- opts: timeout_ms (per command, default 5000; 0: none), connect_timeout_ms,
-- ca_file, verify (false skips TLS verification: only for a provider whose
-- certificate cannot be verified), server_name (the name the certificate must
-- carry, when it is not the URL's host), username, password, db.
function _M.connect(url, opts)
  if type(url) ~= "string" or url == "" then error("redis.connect: url must be a non-empty string", 2) end
  if opts ~= nil and type(opts) ~= "table" then error("redis.connect: opts must be a table", 2) end
  opts = opts or {}
  local key = cache_key(url, opts)
  local client = clients[key]
  if client then return client end
  if clients_n >= LIMITS.clients_max then
    return nil, "too many redis clients (" .. LIMITS.clients_max .. " URLs and options per worker)"
  end
  local err
  client, err = new_client(url, opts)
  if not client then return nil, err end
  client.key = key
  clients[key] = client
  clients_n = clients_n + 1
  local res, perr = client.conn:call(nil, "PING")
  if res == nil then
    client:close()
    return nil, perr
  end
  return client
end

-- r:call(cmd, ...) -> reply | nil, err
function Client:call(...)
  return self.conn:call(nil, ...)
end

-- r:call_timeout(timeout_ms, cmd, ...): call with its own timeout (0: none).
function Client:call_timeout(timeout_ms, ...)
  return self.conn:call(timeout_ms, ...)
end

-- r:pipeline({ {cmd, ...}, ... }) -> { reply, ... } | nil, err
-- Every command is sent in one write; error replies are { err = "TEXT" } and
-- nil replies redis.null in the results.
function Client:pipeline(cmds)
  return self.conn:pipeline(nil, cmds)
end

function _M.is_error(v)
  return type(v) == "table" and type(v.err) == "string"
end

-- ---- scripts ----

local Script = {}
Script.__index = Script

-- A script object: its SHA-1 is computed once.
function _M.script(source)
  if type(source) ~= "string" then error("redis.script: source must be a string", 2) end
  return setmetatable({ source = source, sha = c.sha1_hex(source) }, Script)
end

function Script:eval(client, keys, args)
  return client:eval_script(self, keys, args)
end

local function script_argv(verb, ref, keys, args)
  local argv = { verb, ref, #keys }
  for i = 1, #keys do argv[#argv + 1] = keys[i] end
  for i = 1, #args do argv[#argv + 1] = args[i] end
  return argv
end

-- r:eval_script(source_or_script, keys, args): EVALSHA, and EVAL when Redis
-- answers NOSCRIPT (a restart or SCRIPT FLUSH emptied its cache; EVAL loads it again).
function Client:eval_script(script, keys, args)
  keys, args = keys or {}, args or {}
  if type(keys) ~= "table" or type(args) ~= "table" then
    error("eval_script: keys and args must be tables", 2)
  end
  local source, sha
  if type(script) == "table" and getmetatable(script) == Script then
    source, sha = script.source, script.sha
  elseif type(script) == "string" then
    source, sha = script, self.shas[script]
    if not sha then
      if self.shas_n >= LIMITS.scripts_max then self.shas, self.shas_n = {}, 0 end
      sha = c.sha1_hex(script)
      self.shas[script] = sha
      self.shas_n = self.shas_n + 1
    end
  else
    error("eval_script: script must be a string or a redis.script", 2)
  end
  local res, err = self.conn:call(nil, unpack(script_argv("EVALSHA", sha, keys, args)))
  if res == nil and err ~= nil and find(err, "^NOSCRIPT") then
    return self.conn:call(nil, unpack(script_argv("EVAL", source, keys, args)))
  end
  return res, err
end

-- ---- blocking commands ----

-- Where a blocking command carries its timeout in seconds: the argument index
-- (negative: from the end). XREAD and XREADGROUP carry BLOCK <ms>.
local TIMEOUT_ARG = {
  BLPOP = -1, BRPOP = -1, BZPOPMIN = -1, BZPOPMAX = -1, BRPOPLPUSH = -1, BLMOVE = -1,
  BLMPOP = 1, BZMPOP = 1,
}
-- The same for the commands whose timeout is in milliseconds.
local TIMEOUT_MS_ARG = { WAIT = -1, WAITAOF = -1 }

-- The client-side wait for a blocking command, in ms: its own timeout plus a
-- margin; 0 (no deadline) when it blocks without end.
local function blocking_wait_ms(cmd, ...)
  local n = select("#", ...)
  local name = upper(cmd)
  local pos, unit_ms = TIMEOUT_ARG[name], 1000
  if not pos then pos, unit_ms = TIMEOUT_MS_ARG[name], 1 end
  local server_ms
  if pos then
    local v = tonumber((select(pos < 0 and n + pos + 1 or pos, ...)))
    if not v or v < 0 then error("blocking: " .. name .. " needs a numeric timeout", 3) end
    server_ms = v * unit_ms
  elseif name == "XREAD" or name == "XREADGROUP" then
    for i = 1, n - 1 do
      local a = select(i, ...)
      if type(a) == "string" and upper(a) == "BLOCK" then
        server_ms = tonumber((select(i + 1, ...)))
        break
      end
    end
    if not server_ms then error("blocking: " .. name .. " without BLOCK does not block", 3) end
  else
    error("blocking: " .. tostring(cmd) .. " is not a blocking command", 3)
  end
  if server_ms == 0 then return 0 end
  local ms = server_ms + LIMITS.blocking_margin_ms
  return ms < 3600000 and ms or 3600000
end

-- r:blocking(cmd, ...) -> reply | nil, err. Runs on a connection of its own
-- (never on the shared pipelined one), from a pool of at most
-- limits.blocking_conns_max per client.
function Client:blocking(cmd, ...)
  if type(cmd) ~= "string" then error("blocking: the command name must be a string", 2) end
  local wait_ms = blocking_wait_ms(cmd, ...)
  local conn = remove(self.idle)
  if not conn then
    if self.blocking_n >= LIMITS.blocking_conns_max then return nil, _M.ERR_TOO_MANY_BLOCKING end
    conn = self.conn:clone(true)
    self.blocking_n = self.blocking_n + 1
  end
  self.busy[conn] = true
  local res, err = conn:call(wait_ms, cmd, ...)
  self.busy[conn] = nil
  if self.closed then -- closed while this command waited: the pool is gone
    self.blocking_n = self.blocking_n - 1
  else
    self.idle[#self.idle + 1] = conn
  end
  return res, err
end

-- ---- operations ----

-- Refuses a Redis that may evict keys: queues and locks must never vanish.
-- Reads INFO memory (CONFIG is often disabled on managed Redis).
function Client:check_noeviction()
  local info, err = self.conn:call(nil, "INFO", "memory")
  if not info then return nil, err end
  local policy = match(info, "maxmemory_policy:([%w%-]+)")
  if policy == "noeviction" then return true end
  return nil, _M.ERR_EVICTING .. " (maxmemory-policy " .. tostring(policy) .. "); set noeviction"
end

-- Counters of the shared connection: commands, writes (batches written),
-- replies, connects, pending, connected; and the blocking pool.
function Client:stats()
  local s = self.conn:stats()
  s.blocking_conns = self.blocking_n
  s.blocking_idle = #self.idle
  return s
end

-- Closes every connection of the client and forgets it (redis.connect makes a
-- new one); waiting commands get "connection closed". A command issued on it
-- afterwards opens a connection again.
function Client:close()
  if self.closed then return end
  self.closed = true
  if self.key and clients[self.key] == self then
    clients[self.key] = nil
    clients_n = clients_n - 1
  end
  self.conn:close()
  for _, conn in ipairs(self.idle) do conn:close() end
  self.blocking_n = self.blocking_n - #self.idle
  self.idle = {}
  for conn in pairs(self.busy) do conn:close() end -- their commands get "connection closed"
end

_M.parse_url = parse_url

return _M
