-- process.lua -- child processes for specs and operations scripts.
--
--   local p = process.spawn({ "bin/nuvion", "serve", "core" }, { env = { PORT = "0" }, output = "pipe" })
--   for line in p:lines() do ... end      -- stdout+stderr lines as they come
--   p:kill("TERM"); local how, code = p:wait(5000)
--
-- spawn never forks the host (posix_spawn); waiting polls the child without
-- blocking the loop. Only processes started here can be signalled by handle.
local core = require "nuvion.core"
local c = require "nuvion.process_c"

local setmetatable, pairs, find, sub = setmetatable, pairs, string.find, string.sub
local sleep, wait_fd, monotonic_ms = core.sleep, core.wait_fd, core.monotonic_ms

local REAP_POLL_MS = 10
local READ_WAIT_MS = 100

local _M = {}
local Proc = {}
Proc.__index = Proc

-- opts.env: table of NAME = value added to (or replacing) this environment;
-- opts.output: "pipe" (read with :read/:lines), "null" or "inherit".
function _M.spawn(argv, opts)
  opts = opts or {}
  local env
  if opts.env then
    local merged = {}
    for k, v in pairs(os.getenv and _M.environ() or {}) do merged[k] = v end
    for k, v in pairs(opts.env) do merged[k] = v end
    env = {}
    for k, v in pairs(merged) do
      if v ~= false then env[#env + 1] = k .. "=" .. tostring(v) end
    end
  end
  local pid, fd = c.spawn(argv, env, opts.output or "inherit")
  if not pid then return nil, fd end
  return setmetatable({ pid = pid, fd = fd, buf = "" }, Proc)
end

-- The environment of this process as a table.
function _M.environ()
  local env = {}
  local f = io.open("/proc/self/environ", "rb")
  if not f then return env end
  local data = f:read("*a")
  f:close()
  for entry in data:gmatch("([^%z]+)") do
    local eq = find(entry, "=", 1, true)
    if eq then env[sub(entry, 1, eq - 1)] = sub(entry, eq + 1) end
  end
  return env
end

-- Reads available output, waiting up to timeout_ms. Returns data ("" on
-- timeout), or nil when the pipe is closed.
function Proc:read(timeout_ms)
  if not self.fd then return nil end
  local data, err = c.read(self.fd)
  if data == "" then
    wait_fd(self.fd, "r", timeout_ms or READ_WAIT_MS)
    data, err = c.read(self.fd)
  end
  if data == nil then
    c.close(self.fd)
    self.fd = nil
    return nil, err
  end
  return data
end

-- The next whole line of output, waiting up to timeout_ms; nil on timeout or end.
function Proc:line(timeout_ms)
  local deadline = monotonic_ms() + (timeout_ms or 5000)
  while true do
    local nl = find(self.buf, "\n", 1, true)
    if nl then
      local line = sub(self.buf, 1, nl - 1)
      self.buf = sub(self.buf, nl + 1)
      return line
    end
    local left = deadline - monotonic_ms()
    if left <= 0 then return nil, "timeout" end
    local data = self:read(left < READ_WAIT_MS and left or READ_WAIT_MS)
    if data == nil then return nil, "closed" end
    self.buf = self.buf .. data
  end
end

function Proc:kill(sig)
  if self.status then return nil, "already exited" end
  return c.kill(self.pid, sig or "TERM")
end

-- Signals the whole process group (the child and what it forked).
function Proc:kill_group(sig)
  if self.status then return nil, "already exited" end
  return c.kill(-self.pid, sig or "TERM")
end

-- Waits up to timeout_ms for the child to exit. Returns "exit", code or
-- "signal", signo; nil, "timeout" when still running.
function Proc:wait(timeout_ms)
  if self.status then return self.status, self.code end
  local deadline = monotonic_ms() + (timeout_ms or 30000)
  while true do
    local how, code = c.reap(self.pid)
    if how then
      self.status, self.code = how, code
      return how, code
    end
    if monotonic_ms() >= deadline then return nil, "timeout" end
    sleep(REAP_POLL_MS)
  end
end

function Proc:close()
  if self.fd then
    c.close(self.fd)
    self.fd = nil
  end
end

return _M
