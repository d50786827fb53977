-- server.lua -- what the host calls: boot() loads a service and returns the
-- entry function the host runs, in a task, for every HTTP request.
local json = require "nuvion.json"
local request = require "nuvion.request"

local type, loadfile, error, require = type, loadfile, error, require
local encode = json.encode
local new_request = request.new

local JSON = "application/json"
local ERR_ENCODE = "The response could not be encoded."

local _M = {}

-- An outcome table `{ status, code, message, type?, param? }` in the error shape:
-- {"error":{"type","code","message","param","request_id"}}
local function error_body(outcome, request_id)
  return encode({ error = {
    type = outcome.type or (outcome.status >= 500 and "api_error" or "invalid_request_error"),
    code = outcome.code,
    message = outcome.message,
    param = outcome.param,
    request_id = request_id,
  } })
end
_M.error_body = error_body

-- The response of a handler's result: status, body string, content type,
-- route, headers.
local function finish(req, status, body, headers, route)
  if type(status) == "table" then -- an outcome
    return status.status, error_body(status, req.id), JSON, route, headers
  end
  local tb = type(body)
  if tb == "table" then
    local encoded, err = encode(body)
    if not encoded then
      require("nuvion.log").error("response not encodable", { error = err, route = route })
      return 500, error_body({ status = 500, code = "internal_error", message = ERR_ENCODE },
                             req.id), JSON, route
    end
    return status, encoded, JSON, route, headers
  elseif tb == "string" then
    local ctype = headers and (headers["Content-Type"] or headers["content-type"])
    return status, body, ctype or "text/plain; charset=utf-8", route, headers
  end
  return status, "", JSON, route, headers
end

-- Loads lua/services/<name>/init.lua (which returns a router) in this task, so
-- that its top level may wait on I/O.
function _M.boot(service_dir, name)
  local chunk, err = loadfile(service_dir .. "/init.lua")
  if not chunk then error("service " .. name .. ": " .. err, 0) end
  local app = chunk(name)
  if type(app) ~= "table" or type(app.dispatch) ~= "function" then
    error("service " .. name .. ": init.lua must return a router (nuvion.router.new())", 0)
  end
  if os.getenv("NUVION_WORKERS_IN_WEB") == "1" then -- the service's queue workers, in this process
    require("nuvion.queue").start_in_web(service_dir)
  end
  local dispatch = app.dispatch
  -- The entry the host calls per request, in the request's task.
  return function(method, path, query, handle, seq)
    local req = new_request(method, path, query, handle, seq)
    return finish(req, dispatch(app, req))
  end
end

return _M
