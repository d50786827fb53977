-- The router alone: matching, parameters, 404/405, definitions refused.
local router = require "nuvion.router"

local function req(method, path) return { method = method, path = path } end

describe("router", function()
  local app
  before_each(function()
    app = router.new()
    app:get("/v1/customers", function() return 200, "list" end)
    app:post("/v1/customers", function() return 201, "create" end)
    app:get("/v1/customers/:id", function(r) return 200, r.params.id end)
    app:get("/v1/customers/:id/wallets/:asset", function(r) return 200, r.params.id .. "/" .. r.params.asset end)
    app:get("/v1/customers/search", function() return 200, "search" end)
  end)

  local cases = {
    { "GET", "/v1/customers", 200, "list", "/v1/customers" },
    { "POST", "/v1/customers", 201, "create", "/v1/customers" },
    { "GET", "/v1/customers/cus_1", 200, "cus_1", "/v1/customers/:id" },
    { "GET", "/v1/customers/search", 200, "search", "/v1/customers/search" },
    { "GET", "/v1/customers/cus_1/wallets/USD", 200, "cus_1/USD", "/v1/customers/:id/wallets/:asset" },
    { "GET", "/v1/customers/a%2Fb", 200, "a/b", "/v1/customers/:id" },
    { "HEAD", "/v1/customers/cus_1", 200, "cus_1", "/v1/customers/:id" },
  }
  for _, c in ipairs(cases) do
    it(("routes %s %s to %s"):format(c[1], c[2], c[5]), function()
      local status, body, _, route = app:dispatch(req(c[1], c[2]))
      assert.equals(c[3], status)
      assert.equals(c[4], body)
      assert.equals(c[5], route)
    end)
  end

  it("answers 404 for an unknown path, an empty parameter and a trailing slash", function()
    for _, path in ipairs({ "/v2", "/v1/customers/", "/v1/customers//wallets/x", "/v1/customers/x/y" }) do
      local outcome, _, _, route = app:dispatch(req("GET", path))
      assert.equals(404, outcome.status, path)
      assert.equals("route_not_found", outcome.code)
      assert.equals("unmatched", route)
    end
  end)

  it("answers 405 with the allowed methods", function()
    local outcome, _, headers = app:dispatch(req("DELETE", "/v1/customers"))
    assert.equals(405, outcome.status)
    assert.equals("GET, HEAD, POST", headers.Allow)
  end)

  it("refuses a route defined twice and a pattern without a leading slash", function()
    assert.has_error(function() app:get("/v1/customers", function() end) end,
      "route GET /v1/customers is defined twice")
    assert.has_error(function() app:get("v1", function() end) end)
    assert.has_error(function() app:get("/x", "not a function") end)
  end)
end)
