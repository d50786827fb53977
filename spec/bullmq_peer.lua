-- bullmq_peer.lua -- runs the Node peers of node/ (BullMQ's Queue, Worker and QueueEvents, Bull
-- Board's HTTP API; installed by `make node`, which `make test` depends on) from specs, and reads
-- the JSON lines they print (node/*.js say what each prints).
--
--   local peer = require "spec.bullmq_peer"
--   local w = peer.start("worker", { queue = "q", expect = 1 })  -- node node/worker.js '<json>'
--   local ev = w:next(function(e) return e.ev == "completed" end, 10000)
--   local events, how, code = w:finish(10000)                     -- every line, then its exit
--   local events = peer.run("producer", { queue = "q", jobs = { ... } })
--
-- Each script exits by itself (after what it waits for, or after its timeout_ms, 20 s by default);
-- finish kills it by pid when it outlives the wait. Lines that are not JSON objects (a warning of
-- Node's on stderr) are kept in peer.noise.
local process = require "nuvion.process"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local helpers = require "spec.helpers"

local setmetatable, concat, sub, error = setmetatable, table.concat, string.sub, error

local _M = {}

_M.dir = helpers.root .. "/node"
_M.node = os.getenv("NUVION_NODE") or "node"
_M.redis_url = os.getenv("NUVION_TEST_REDIS_URL")

local Peer = {}
Peer.__index = Peer

-- Starts node/<script>.js with `args` (a table, passed as one JSON argument; the test Redis URL
-- is added as args.redis unless given).
function _M.start(script, args)
  args = args or {}
  if args.redis == nil then args.redis = _M.redis_url end
  local arg = assert(json.encode(args))
  local proc = assert(process.spawn({ _M.node, _M.dir .. "/" .. script .. ".js", arg }, { output = "pipe" }))
  return setmetatable({ proc = proc, script = script, events = {}, noise = {}, seen = 0 }, Peer)
end

-- Reads one more line; returns the event (a table), false for a line that is not JSON, or nil
-- on timeout or at the end of the output.
function Peer:read(timeout_ms)
  local line = self.proc:line(timeout_ms)
  if not line then return nil end
  local ev = sub(line, 1, 1) == "{" and json.decode(line)
  if type(ev) ~= "table" then
    self.noise[#self.noise + 1] = line
    return false
  end
  self.events[#self.events + 1] = ev
  if ev.ev == "error" then
    error(self.script .. ".js failed: " .. tostring(ev.message), 2)
  end
  return ev
end

-- The next event for which pred(ev) is true (earlier ones are kept in self.events); nil, "timeout"
-- when none came within timeout_ms.
function Peer:next(pred, timeout_ms)
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 10000)
  -- events already read but not yet matched
  while self.seen < #self.events do
    self.seen = self.seen + 1
    if pred(self.events[self.seen]) then return self.events[self.seen] end
  end
  while true do
    local left = deadline - nuvion.monotonic_ms()
    if left <= 0 then return nil, "timeout" end
    local ev = self:read(left)
    if ev == nil and self.proc.fd == nil then return nil, "exited: " .. concat(self.noise, "\n") end
    if ev then
      self.seen = #self.events
      if pred(ev) then return ev end
    end
  end
end

-- Reads the rest of the output and waits for the exit (at most timeout_ms, then SIGKILL by pid).
-- Returns the events, how ("exit"/"signal"), code.
function Peer:finish(timeout_ms)
  local deadline = nuvion.monotonic_ms() + (timeout_ms or 20000)
  while self.proc.fd and nuvion.monotonic_ms() < deadline do
    self:read(deadline - nuvion.monotonic_ms())
  end
  local how, code = self.proc:wait(math.max(deadline - nuvion.monotonic_ms(), 100))
  if not how then
    self.proc:kill("KILL")
    how, code = self.proc:wait(5000)
  end
  self.proc:close()
  return self.events, how, code
end

-- Stops the script now (SIGKILL by pid) if it still runs.
function Peer:stop()
  if not self.proc.status then
    self.proc:kill("KILL")
    self.proc:wait(5000)
  end
  self.proc:close()
end

-- Starts a script and waits for its exit; returns its events, and raises unless it exited with 0.
function _M.run(script, args, timeout_ms)
  local p = _M.start(script, args)
  local events, how, code = p:finish(timeout_ms or 20000)
  if how ~= "exit" or code ~= 0 then
    error(script .. ".js ended with " .. tostring(how) .. " " .. tostring(code) .. ": "
          .. concat(p.noise, "\n") .. " " .. (json.encode(events) or ""), 2)
  end
  return events
end

-- The events of `events` for which every field of `fields` is equal.
function _M.filter(events, fields)
  local out = {}
  for _, ev in ipairs(events) do
    local ok = true
    for k, v in pairs(fields) do
      if ev[k] ~= v then ok = false break end
    end
    if ok then out[#out + 1] = ev end
  end
  return out
end

return _M
