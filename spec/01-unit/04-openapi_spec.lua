-- The schema checker the specs rely on must itself catch mismatches.
local openapi = require "spec.openapi"
local json = require "nuvion.json"

describe("spec.openapi", function()
  it("accepts a valid error body", function()
    local body = { error = { type = "api_error", code = "x", message = "m", request_id = "r" } }
    assert.is_true(openapi.check(body, "Error"))
  end)

  local bad = {
    { {}, "$.error: required" },
    { { error = { type = "nope", code = "x", message = "m", request_id = "r" } }, "enum" },
    { { error = { type = "api_error", code = 1, message = "m", request_id = "r" } },
      "$.error.code: expected a string" },
    { { error = { type = "api_error", code = "x", message = "m", request_id = "r", extra = 1 } }, "not in the schema" },
    { { error = json.array({}) }, "expected an object" },
  }
  for i, c in ipairs(bad) do
    it("rejects mismatch " .. i, function()
      local ok, err = openapi.check(c[1], "Error")
      assert.is_nil(ok)
      assert.matches(c[2], err, 1, true)
    end)
  end

  it("checks integers and their minimum", function()
    local ok, err = openapi.check({ status = "ok", service = "core", worker = 0, generation = 1 }, "Health")
    assert.is_nil(ok)
    assert.matches("minimum", err, 1, true)
    assert.is_nil((openapi.check({ status = "ok", service = "core", worker = 1.5, generation = 1 }, "Health")))
  end)
end)
