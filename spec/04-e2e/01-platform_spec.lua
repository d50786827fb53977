-- The whole platform as `make run` starts it: six services side by side, each
-- on its own port with two workers, each answering and reporting metrics.
local helpers = require "spec.helpers"

local SERVICES = { "core", "acquiring", "payout", "account_issuing", "card_issuing", "blockchain" }

describe("platform", function()
  local servers = {}

  lazy_setup(function()
    for _, name in ipairs(SERVICES) do
      servers[name] = helpers.start_server({ service = name, workers = 2 })
    end
  end)
  lazy_teardown(function()
    for _, srv in pairs(servers) do srv:stop() end
  end)

  it("runs six services on six ports", function()
    local ports = {}
    for _, name in ipairs(SERVICES) do
      local port = servers[name].port
      assert.is_nil(ports[port])
      ports[port] = name
      local res = assert(helpers.request(port, { path = "/health" }))
      assert.equals(name, res.json().service)
    end
  end)

  it("answers concurrent health checks on every service", function()
    local results = helpers.parallel(60, function(i)
      local name = SERVICES[(i % #SERVICES) + 1]
      local res = assert(helpers.request(servers[name].port, { path = "/health" }))
      return res.status
    end)
    for i = 1, 60 do assert.equals(200, results[i]) end
  end)

  it("reports each service's own metrics", function()
    for _, name in ipairs(SERVICES) do
      local body = assert(helpers.request(servers[name].port, { path = "/metrics" })).body
      assert.matches('nuvion_http_requests_total{service="' .. name .. '",route="/health",status="200"}', body, 1, true)
    end
  end)
end)
