-- Every service boots from its folder and answers GET /health.
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"

local SERVICES = { "core", "acquiring", "payout", "account_issuing", "card_issuing", "blockchain" }

for _, name in ipairs(SERVICES) do
  describe(name, function()
    local srv
    lazy_setup(function() srv = helpers.start_server({ service = name }) end)
    lazy_teardown(function() srv:stop() end)

    it("answers GET /health", function()
      local res = assert(helpers.request(srv.port, { path = "/health" }))
      assert.equals(200, res.status)
      local body = res.json()
      assert.equals("ok", body.status)
      assert.equals(name, body.service)
      assert(openapi.check(body, "Health"))
    end)

    it("answers 404 in the error shape for an unknown route", function()
      local res = assert(helpers.request(srv.port, { path = "/v1/nothing-here" }))
      assert.equals(404, res.status)
      assert.equals("route_not_found", res.json().error.code)
      assert(openapi.check(res.json(), "Error"))
    end)
  end)
end
