-- router.lua -- routes by method and path, with parameters (`/v1/customers/:id`).
--
--   local router = require "nuvion.router"
--   local app = router.new()
--   app:get("/v1/customers/:id", function(req) return 200, { id = req.params.id } end)
--
-- A handler returns `status, body, headers`: body a table (sent as JSON) or a
-- string; or one outcome table `{ status = 404, code = "...", message = "..." }`
-- answered in the API's error shape. An unknown path is 404, a known path with
-- another method 405 with an Allow header; HEAD is served by the GET handler.
local type, ipairs, pairs, error, setmetatable = type, ipairs, pairs, error, setmetatable
local find, sub, byte, concat, sort = string.find, string.sub, string.byte, table.concat, table.sort

local unescape_path
do
  local gsub, char, tonumber = string.gsub, string.char, tonumber
  unescape_path = function(s)
    if not find(s, "%", 1, true) then return s end
    return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
  end
end

local METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }

-- The params of a route without parameters: shared, so read-only.
local NO_PARAMS = setmetatable({}, { __newindex = function()
  error("req.params of a route without parameters is read-only", 2)
end })

local _M = {}
local Router = {}
Router.__index = Router

function _M.new()
  -- static: path -> route; tree: segment trie for routes with parameters
  return setmetatable({ static = {}, tree = { children = {} }, routes = {} }, Router)
end

local function split(path)
  local segs, pos = {}, 2
  while true do
    local slash = find(path, "/", pos, true)
    segs[#segs + 1] = sub(path, pos, (slash or 0) - 1)
    if not slash then return segs end
    pos = slash + 1
  end
end

function Router:add(method, pattern, handler)
  if type(pattern) ~= "string" or byte(pattern, 1) ~= 47 then
    error("route pattern must start with '/': " .. tostring(pattern), 2)
  end
  if type(handler) ~= "function" then error("handler must be a function", 2) end
  local route
  if not find(pattern, ":", 1, true) then
    route = self.static[pattern]
    if not route then
      route = { pattern = pattern, handlers = {} }
      self.static[pattern] = route
    end
  else
    local node = self.tree
    local names = {}
    for _, seg in ipairs(split(pattern)) do
      if byte(seg, 1) == 58 then -- ':'
        names[#names + 1] = sub(seg, 2)
        node.param = node.param or { children = {} }
        node = node.param
      else
        node.children[seg] = node.children[seg] or { children = {} }
        node = node.children[seg]
      end
    end
    route = node.route
    if not route then
      route = { pattern = pattern, handlers = {}, names = names }
      node.route = route
    end
  end
  if route.handlers[method] then
    error("route " .. method .. " " .. pattern .. " is defined twice", 2)
  end
  route.handlers[method] = handler
  self.routes[#self.routes + 1] = { method = method, pattern = pattern }
  return self
end

for _, m in ipairs(METHODS) do
  Router[m:lower()] = function(self, pattern, handler) return self:add(m, pattern, handler) end
end

-- Static segments win over parameters; backtracks so /a/b and /a/:x/c coexist.
local function walk(node, segs, i, values)
  if i > #segs then return node.route end
  local seg = segs[i]
  local child = node.children[seg]
  if child then
    local r = walk(child, segs, i + 1, values)
    if r then return r end
  end
  if node.param and seg ~= "" then
    values[#values + 1] = seg
    local r = walk(node.param, segs, i + 1, values)
    if r then return r end
    values[#values] = nil
  end
  return nil
end

-- Finds the route of a path: route and its parameters, or nil.
function Router:match(path)
  local route = self.static[path]
  if route then return route, nil end
  local values = {}
  route = walk(self.tree, split(path), 1, values)
  if not route then return nil end
  local params = {}
  for i, name in ipairs(route.names) do params[name] = unescape_path(values[i]) end
  return route, params
end

local function allowed(route)
  local list = {}
  for m in pairs(route.handlers) do list[#list + 1] = m end
  if route.handlers.GET then list[#list + 1] = "HEAD" end
  sort(list)
  return concat(list, ", ")
end

-- Returns status, body, headers, route pattern.
function Router:dispatch(req)
  local path = req.path
  local route, params = self.static[path], nil
  if not route then route, params = self:match(path) end
  if not route then
    return { status = 404, type = "invalid_request_error", code = "route_not_found",
             message = "No route for " .. req.method .. " " .. path .. "." }, nil, nil, "unmatched"
  end
  local method = req.method
  local handler = route.handlers[method] or (method == "HEAD" and route.handlers.GET)
  if not handler then
    return { status = 405, type = "invalid_request_error", code = "method_not_allowed",
             message = "Method " .. method .. " is not allowed on " .. route.pattern .. "." },
           nil, { Allow = allowed(route) }, route.pattern
  end
  req.params = params or NO_PARAMS
  local status, body, headers = handler(req)
  return status, body, headers, route.pattern
end

return _M
