-- require.lua -- `require` written in Lua, so that a module may wait on I/O
-- (a Postgres query, a sleep) at its top level. LuaJIT's own `require` is a C
-- function: a yield inside it fails with "attempt to yield across C-call
-- boundary" (Kong replaces require in its specs for the same reason).
local package = package
local loaders = package.loaders
local loaded = package.loaded
local type, pcall, error, concat = type, pcall, error, table.concat

-- Marks a module whose loader is running, so that a cycle is reported.
local LOADING = setmetatable({}, { __tostring = function() return "<loading>" end })
-- Tasks waiting while another task loads the same module poll for it this often.
local WAIT_STEP_MS = 1
local WAIT_MAX_MS = 30000

local function wait_for(name)
  local core = loaded["nuvion.core"]
  if not core then
    error("loop or previous error loading module '" .. name .. "'", 3)
  end
  local waited = 0
  while loaded[name] == LOADING do
    if waited >= WAIT_MAX_MS then
      error("timed out waiting for module '" .. name .. "' to load", 3)
    end
    local ok = pcall(core.sleep, WAIT_STEP_MS)
    if not ok then -- not in a task: this is a cycle, not a concurrent load
      error("loop or previous error loading module '" .. name .. "'", 3)
    end
    waited = waited + WAIT_STEP_MS
  end
  return loaded[name]
end

local function require(name)
  if type(name) ~= "string" then
    error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
  end
  local mod = loaded[name]
  if mod ~= nil then
    if mod == LOADING then
      mod = wait_for(name)
      if mod == nil then error("module '" .. name .. "' failed to load", 2) end
    end
    return mod
  end
  local tried = {}
  for i = 1, #loaders do
    local loader, extra = loaders[i](name)
    if type(loader) == "function" then
      loaded[name] = LOADING
      local ok, res = pcall(loader, name, extra)
      if not ok then
        loaded[name] = nil
        error(res, 0)
      end
      if res ~= nil then
        loaded[name] = res
      elseif loaded[name] == LOADING then
        loaded[name] = true
      end
      return loaded[name]
    elseif type(loader) == "string" then
      tried[#tried + 1] = loader
    end
  end
  error("module '" .. name .. "' not found:" .. concat(tried), 2)
end

return require
