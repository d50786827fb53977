-- helpers.lua -- what specs use to run the real thing: start `bin/nuvion serve`
-- on a free loopback port, talk HTTP (or raw bytes) to it, read its logs,
-- signal it, stop it. Nothing here is a mock.
local process = require "nuvion.process"
local socket = require "nuvion.socket"
local nuvion = require "nuvion"
local json = require "nuvion.json"

local find, sub, lower, format, concat = string.find, string.sub, string.lower, string.format, table.concat
local tonumber, tostring, pairs, setmetatable, error = tonumber, tostring, pairs, setmetatable, error

local START_TIMEOUT_MS = 15000
local STOP_TIMEOUT_MS = 30000
local REQUEST_TIMEOUT_MS = 10000

local _M = {}

_M.root = nuvion.context().root
_M.bin = os.getenv("NUVION_BIN") or (_M.root .. "/bin/nuvion")
_M.apps = _M.root .. "/spec/fixtures/apps"

local Server = {}
Server.__index = Server

-- Starts a server. opts: app (folder with init.lua) or service (name),
-- workers (default 1), env (extra environment). Waits until every worker
-- serves. The server's output is collected in server.lines.
function _M.start_server(opts)
  opts = opts or {}
  local env = { PORT = "0", WEB_CONCURRENCY = tostring(opts.workers or 1), NUVION_ROOT = _M.root,
                NUVION_EXIT_WITH_PARENT = "1" }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local target = opts.service or opts.app or (_M.apps .. "/basic")
  local proc = assert(process.spawn({ _M.bin, "serve", target }, { env = env, output = "pipe" }))
  local srv = setmetatable({ proc = proc, lines = {}, workers = opts.workers or 1 }, Server)
  local deadline = nuvion.monotonic_ms() + START_TIMEOUT_MS
  local serving = 0
  while serving < srv.workers do
    local line = proc:line(deadline - nuvion.monotonic_ms())
    if not line then
      proc:kill_group("KILL")
      proc:wait(2000)
      error("server did not start: " .. concat(srv.lines, "\n"), 2)
    end
    srv.lines[#srv.lines + 1] = line
    srv.port = srv.port or tonumber(line:match("listening on http://0.0.0.0:(%d+)"))
    if find(line, '"generation 1 serving"', 1, true) then serving = serving + 1 end
  end
  -- Keep draining the output, so the server never blocks on a full pipe.
  nuvion.spawn(function()
    while true do
      local line = proc:line(60000)
      if line then
        srv.lines[#srv.lines + 1] = line
      elseif proc.fd == nil then
        return
      end
    end
  end)
  return srv
end

-- Log lines (decoded) matching every field of `fields`.
function Server:logs(fields)
  local out = {}
  for _, line in ipairs(self.lines) do
    local rec = json.decode(line)
    if type(rec) == "table" then
      local ok = true
      for k, v in pairs(fields or {}) do
        if rec[k] ~= v then ok = false break end
      end
      if ok then out[#out + 1] = rec end
    end
  end
  return out
end

-- Waits until a log line with these fields appears; returns it or nil.
function Server:wait_log(fields, timeout_ms, count)
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 5000)
  count = count or 1
  repeat
    local found = self:logs(fields)
    if #found >= count then return found[count] end
    nuvion.sleep(10)
  until nuvion.monotonic_ms() >= deadline
  return nil
end

function Server:signal(sig)
  return self.proc:kill(sig)
end

-- SIGTERM, then waits; SIGKILL to the group if it does not stop in time.
-- Returns how it ended ("exit", code) and the time it took in ms.
function Server:stop(timeout_ms)
  local t0 = nuvion.monotonic_ms()
  self.proc:kill("TERM")
  local how, code = self.proc:wait(timeout_ms or STOP_TIMEOUT_MS)
  if not how then
    self.proc:kill_group("KILL")
    how, code = self.proc:wait(5000)
  end
  -- give the reader task a moment to collect the last lines
  nuvion.sleep(20)
  -- a sanitizer report from the server under test fails the spec that ran it
  for _, line in ipairs(self.lines) do
    if find(line, "ERROR: AddressSanitizer", 1, true) or find(line, "runtime error:", 1, true)
       or find(line, "ERROR: LeakSanitizer", 1, true) then
      error("sanitizer report from the server:\n" .. concat(self.lines, "\n"), 2)
    end
  end
  return how, code, nuvion.monotonic_ms() - t0
end

-- ---- HTTP client (HTTP/1.1 over nuvion.socket) ----

local Client = {}
Client.__index = Client

function _M.client(port)
  local sock = socket.tcp()
  sock:settimeout(REQUEST_TIMEOUT_MS)
  local ok, err = sock:connect("127.0.0.1", port)
  if not ok then return nil, err end
  return setmetatable({ sock = sock, port = port }, Client)
end

local function read_response(sock, method)
  local status_line, err = sock:receive("*l")
  if not status_line then return nil, err end
  local status = tonumber(status_line:match("^HTTP/1%.%d (%d%d%d)"))
  if not status then return nil, "bad status line: " .. status_line end
  local headers = {}
  while true do
    local line, herr = sock:receive("*l")
    if not line then return nil, herr end
    if line == "" then break end
    local k, v = line:match("^([^:]+):%s*(.-)%s*$")
    if k then headers[lower(k)] = v end
  end
  if status == 100 then return read_response(sock, method) end
  local body
  if method == "HEAD" or status == 204 or status == 304 then
    body = ""
  elseif headers["content-length"] then
    body, err = sock:receive(tonumber(headers["content-length"]))
    if not body then return nil, err end
  elseif headers["transfer-encoding"] == "chunked" then
    local parts = {}
    while true do
      local size_line = assert(sock:receive("*l"))
      local size = tonumber(size_line:match("^%x+"), 16)
      if size == 0 then sock:receive("*l") break end
      parts[#parts + 1] = sock:receive(size)
      sock:receive("*l")
    end
    body = concat(parts)
  else
    body = sock:receive("*a") or ""
  end
  local res = { status = status, headers = headers, body = body }
  function res.json() return json.decode(body) end
  return res
end

-- opts: method, path, headers (table), body (string or table sent as JSON).
function Client:request(opts)
  local method = opts.method or "GET"
  local body = opts.body
  local headers = { ["Host"] = "127.0.0.1:" .. self.port }
  if type(body) == "table" then
    body = assert(json.encode(body))
    headers["Content-Type"] = "application/json"
  end
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  if body and not headers["Content-Length"] and not headers["Transfer-Encoding"] then
    headers["Content-Length"] = tostring(#body)
  end
  local out = { format("%s %s HTTP/1.1\r\n", method, opts.path or "/") }
  for k, v in pairs(headers) do out[#out + 1] = k .. ": " .. v .. "\r\n" end
  out[#out + 1] = "\r\n"
  out[#out + 1] = body or ""
  local ok, err = self.sock:send(concat(out))
  if not ok then return nil, err end
  return read_response(self.sock, method)
end

function Client:receive_response(method)
  return read_response(self.sock, method or "GET")
end

function Client:close()
  self.sock:close()
end

-- One request on a fresh connection.
function _M.request(port, opts)
  local c, err = _M.client(port)
  if not c then return nil, err end
  local res, rerr = c:request(opts)
  c:close()
  return res, rerr
end

-- Sends raw bytes and returns everything the server sends back until it
-- closes the connection (or timeout_ms passes: then the partial data and "timeout").
function _M.raw(port, data, timeout_ms)
  local sock = socket.tcp()
  sock:settimeout(timeout_ms or REQUEST_TIMEOUT_MS)
  assert(sock:connect("127.0.0.1", port))
  if data and data ~= "" then sock:send(data) end
  local all, err, partial = sock:receive("*a")
  sock:close()
  if all then return all end
  return partial, err
end

-- Parses a raw response text into status, headers, body (first response only).
function _M.parse_raw(text)
  local head_end = find(text, "\r\n\r\n", 1, true)
  if not head_end then return nil end
  local head = sub(text, 1, head_end - 1)
  local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do headers[lower(k)] = v end
  local len = tonumber(headers["content-length"] or "")
  local body = len and sub(text, head_end + 4, head_end + 3 + len) or sub(text, head_end + 4)
  return { status = status, headers = headers, body = body, json = function() return json.decode(body) end }
end

-- Runs fn(i) in `n` concurrent tasks and waits for all; returns their results.
function _M.parallel(n, fn)
  local results, done = {}, 0
  for i = 1, n do
    nuvion.spawn(function()
      local ok, res = pcall(fn, i)
      results[i] = ok and res or { error = res }
      done = done + 1
    end)
  end
  while done < n do nuvion.sleep(2) end
  return results
end

-- Runs fn(i) in n tasks at once, bounded in time; raises when one raised or one is not done;
-- returns each task's values (out[i] = { ... }).
function _M.concurrently(n, fn, timeout_ms)
  local out, done, failed = {}, 0, nil
  for i = 1, n do
    nuvion.spawn(function()
      local res = { pcall(fn, i) }
      if not res[1] then failed = failed or ("task " .. i .. ": " .. tostring(res[2])) end
      out[i] = { unpack(res, 2, table.maxn(res)) }
      done = done + 1
    end)
  end
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 30000)
  while done < n and nuvion.monotonic_ms() < deadline do nuvion.sleep(5) end
  assert(not failed, failed)
  assert(done == n, "tasks did not finish in time: " .. done .. " of " .. n)
  return out
end

-- Whether something listens on 127.0.0.1:port.
function _M.port_open(port)
  local s = socket.tcp()
  s:settimeout(200)
  local ok = s:connect("127.0.0.1", port)
  s:close()
  return ok
end

-- LuaJIT's math.random starts the same in every process: every spec run on the machine (other
-- checkouts' too) would try the same ports in the same order.
local port_random_seeded = false

-- A loopback port nothing listens on, below the kernel's ephemeral range (32768..): a port an
-- outgoing connection holds there looks free to a connect() but makes a server's bind fail.
function _M.free_port()
  if not port_random_seeded then
    math.randomseed(tonumber(nuvion.random_hex(4), 16))
    port_random_seeded = true
  end
  for _ = 1, 100 do
    local port = 20000 + math.random(0, 12000)
    if not _M.port_open(port) then return port end
  end
  error("no free port")
end

return _M
