-- health.lua -- the GET /health answer every service gives.
local core = require "nuvion.core"

local _M = {}

function _M.handler(service)
  return function()
    local ctx = core.context()
    return 200, { status = "ok", service = service, worker = ctx.worker,
                  generation = ctx.generation }
  end
end

return _M
