-- nuvion.api.validate: every kind of field refused with its own code and param, through real
-- HTTP against the fixture app (spec/fixtures/apps/api), and the validator's own limits.
local fx = require "spec.api_fixture"
local openapi = require "spec.openapi"
local json = require "nuvion.json"
local validate = require "nuvion.api.validate"
local ids = require "nuvion.api.ids"

local function valid_body(over)
  local b = { name = "widget" }
  for k, v in pairs(over or {}) do b[k] = v end
  return b
end

describe("api validation over HTTP", function()
  local srv, partner

  lazy_setup(function()
    srv = fx.start()
    partner = fx.partner()
  end)
  lazy_teardown(function() if srv then srv:stop() end end)

  local function post(body)
    return fx.request(srv.port, { path = "/v1/things", partner = partner, body = body })
  end

  local cases = {
    -- { why, body overrides (or a whole body with replace = true), code, param }
    { "a required string is null", { name = json.null }, "parameter_invalid", "name" },
    { "a string is a number", { name = 5 }, "parameter_invalid", "name" },
    { "a required string is empty", { name = "" }, "parameter_invalid", "name" },
    { "a string is over max_length", { name = string.rep("x", 21) }, "parameter_invalid", "name" },
    { "a string misses its pattern", { code = "ab1" }, "parameter_invalid", "code" },
    { "a string is not in the enum", { kind = "medium" }, "parameter_invalid", "kind" },
    { "an integer is below its minimum", { quantity = 0 }, "parameter_invalid", "quantity" },
    { "an integer is above its maximum", { quantity = 1001 }, "parameter_invalid", "quantity" },
    { "an integer has a fraction", { quantity = 1.5 }, "parameter_invalid", "quantity" },
    { "an integer is a string", { quantity = "5" }, "parameter_invalid", "quantity" },
    { "a big integer is above its maximum", { big = json.int("100000000000000000000") }, "parameter_invalid", "big" },
    { "a big integer is below its minimum", { big = json.int("-100000000000000000000") }, "parameter_invalid", "big" },
    { "an amount is zero under minimum 1", { amount = 0 }, "parameter_invalid", "amount" },
    { "an amount is negative", { amount = -5 }, "parameter_invalid", "amount" },
    { "an amount string is not digits", { amount = "12a" }, "parameter_invalid", "amount" },
    { "an amount string has leading zeros", { amount = "0012" }, "parameter_invalid", "amount" },
    { "an amount has a fraction", { amount = 10.5 }, "parameter_invalid", "amount" },
    { "an amount exceeds 38 digits", { amount = string.rep("9", 39) }, "parameter_invalid", "amount" },
    { "an amount is a boolean", { amount = true }, "parameter_invalid", "amount" },
    { "a boolean is a string", { active = "true" }, "parameter_invalid", "active" },
    { "an id has another prefix", { parent = ids.new("cus") }, "parameter_invalid", "parent" },
    { "an id is malformed", { parent = "thg_nope" }, "parameter_invalid", "parent" },
    { "a non-nullable field is null", { kind = json.null }, "parameter_invalid", "kind" },
    { "a nullable string is over max_length", { note = "12345678901" }, "parameter_invalid", "note" },
    { "an object is a string", { address = "x" }, "parameter_invalid", "address" },
    { "an object is an array", { address = json.array({ 1 }) }, "parameter_invalid", "address" },
    { "a nested required field is missing", { address = { line1 = "1 Main St" } },
      "parameter_missing", "address.postal_code" },
    { "a nested field misses its pattern", { address = { line1 = "1 Main St", postal_code = "12#4" } },
      "parameter_invalid", "address.postal_code" },
    { "a nested field is unknown", { address = { line1 = "a", postal_code = "1", floor = "2" } },
      "parameter_unknown", "address.floor" },
    { "an array is an object", { tags = { a = "b" } }, "parameter_invalid", "tags" },
    { "an array is under min_items", { tags = json.array({}) }, "parameter_invalid", "tags" },
    { "an array is over max_items", { tags = { "a", "b", "c", "d" } }, "parameter_invalid", "tags" },
    { "an array item has the wrong type", { tags = { "a", 5 } }, "parameter_invalid", "tags[1]" },
    { "an array item is over max_length", { tags = { "abcdef" } }, "parameter_invalid", "tags[0]" },
    { "a map has too many keys", { metadata = { a = "1", b = "2", c = "3", d = "4" } },
      "parameter_invalid", "metadata" },
    { "a map key is too long", { metadata = { abcdefghijk = "1" } }, "parameter_invalid",
      "metadata.abcdefghijk" },
    { "a map value has the wrong type", { metadata = { k = 1 } }, "parameter_invalid", "metadata.k" },
    { "a top-level field is unknown", { colour = "red" }, "parameter_unknown", "colour" },
  }

  for _, c in ipairs(cases) do
    it("answers 400 " .. c[3] .. " when " .. c[1], function()
      local body = valid_body(c[2])
      local res = post(body)
      assert.equals(400, res.status)
      local err = res.json().error
      assert.equals("invalid_request_error", err.type)
      assert.equals(c[3], err.code)
      assert.equals(c[4], err.param)
      assert.is_string(err.message)
      assert.equals(res.headers["x-request-id"], err.request_id)
      assert(openapi.check(res.json(), "Error"))
    end)
  end

  it("answers parameter_missing for an absent required field", function()
    local res = post({ kind = "small" })
    assert.equals(400, res.status)
    assert.same({ "parameter_missing", "name" }, { res.json().error.code, res.json().error.param })
  end)

  it("accepts every field at its bounds, fills defaults and keeps big integers exact", function()
    local parent = ids.new("thg")
    local res = post({ name = string.rep("é", 20), code = "ABC", quantity = 1000,
                       big = json.int("-99999999999999999999"), amount = "9007199254740993",
                       active = false, parent = parent, note = json.null,
                       address = { line1 = "1 Main St", postal_code = "SW1A 1AA" },
                       tags = { "a", "bb", "ccccc" }, metadata = { abcdefghij = string.rep("v", 20) } })
    assert.equals(200, res.status)
    local echo = res.json().echo
    assert.equals("small", echo.kind)
    assert.equals(json.int("9007199254740993"), echo.amount)
    assert.equals(json.int("-99999999999999999999"), echo.big)
    assert.matches('"amount":9007199254740993', res.body, 1, true)
    assert.equals(json.null, echo.note)
    assert.equals(parent, echo.parent)
  end)

  it("accepts an amount of 38 digits given as a string, answered as an exact integer", function()
    local max = string.rep("9", 38)
    local res = post({ name = "max", amount = max })
    assert.equals(200, res.status)
    assert.matches('"amount":' .. max, res.body, 1, true)
  end)

  it("refuses an amount written as a float beyond 2^53", function()
    local res = fx.request(srv.port, { path = "/v1/things", partner = partner,
      body = '{"name":"f","amount":1e20}', headers = { ["Content-Type"] = "application/json" } })
    assert.equals(400, res.status)
    assert.equals("amount", res.json().error.param)
  end)

  it("answers invalid_json for a body that is not JSON or not an object", function()
    for _, raw in ipairs({ "{nope", "[1,2]", "42" }) do
      local res = fx.request(srv.port, { path = "/v1/things", partner = partner, body = raw })
      assert.equals(400, res.status)
      assert.equals("invalid_json", res.json().error.code)
    end
  end)
end)

describe("nuvion.api.validate", function()
  it("collects every error, in the byte order of the fields, first one in the outcome", function()
    local s = { type = "object", properties = {
      b = { type = "string", required = true }, a = { type = "integer" }, c = { type = "boolean" } } }
    local out, o = validate.check(s, { a = "x", c = 1 })
    assert.is_nil(out)
    assert.equals(3, #o.errors)
    assert.same({ "a", "b", "c" }, { o.errors[1].param, o.errors[2].param, o.errors[3].param })
    assert.equals("a", o.param)
    assert.equals("parameter_missing", o.errors[2].code)
  end)

  it("stops collecting at ERRORS_MAX", function()
    local props, body = {}, {}
    for i = 1, validate.ERRORS_MAX + 5 do
      props["f" .. i] = { type = "integer" }
      body["f" .. i] = "x"
    end
    local _, o = validate.check({ type = "object", properties = props }, body)
    assert.equals(validate.ERRORS_MAX, #o.errors)
  end)

  it("bounds strings, arrays, maps and map keys that set no limit of their own", function()
    local s = { type = "object", properties = {
      s = { type = "string" }, a = { type = "array", items = { type = "integer" } },
      m = { type = "object", additional_properties = { type = "integer" } } } }
    assert.is_table(validate.check(s, { s = string.rep("x", validate.STRING_CHARS_DEFAULT) }))
    local _, o = validate.check(s, { s = string.rep("x", validate.STRING_CHARS_DEFAULT + 1) })
    assert.equals("s", o.param)
    local arr = json.array({})
    for i = 1, validate.ARRAY_ITEMS_DEFAULT do arr[i] = i end
    assert.is_table(validate.check(s, { a = arr }))
    arr[#arr + 1] = 0
    _, o = validate.check(s, { a = arr })
    assert.equals("a", o.param)
    local m = {}
    for i = 1, validate.MAP_PROPERTIES_DEFAULT do m["k" .. i] = i end
    assert.is_table(validate.check(s, { m = m }))
    m.extra = 1
    _, o = validate.check(s, { m = m })
    assert.equals("m", o.param)
    _, o = validate.check(s, { m = { [string.rep("k", validate.KEY_CHARS_DEFAULT + 1)] = 1 } })
    assert.equals("m." .. string.rep("k", validate.KEY_CHARS_DEFAULT + 1), o.param)
    assert.is_table(validate.check(s, { m = { [string.rep("k", validate.KEY_CHARS_DEFAULT)] = 1 } }))
  end)

  it("refuses a malformed schema when the route is defined", function()
    assert.has_error(function() validate.compile({ type = "float" }) end)
    assert.has_error(function() validate.compile({ type = "integer", minimum = 1.5 }) end)
    assert.has_error(function()
      validate.compile({ type = "object", properties = { a = { type = "array", items = { type = "x" } } } })
    end)
  end)

  it("compares exact integers by sign and digits", function()
    assert.equals(-1, validate.compare("-10", "9"))
    assert.equals(1, validate.compare("100", "99"))
    assert.equals(1, validate.compare("-99", "-100"))
    assert.equals(0, validate.compare("12345678901234567890", "12345678901234567890"))
  end)

  it("describes a schema in OpenAPI terms", function()
    local o = validate.openapi({ type = "object", properties = {
      n = { type = "string", required = true, max_length = 5 }, a = { type = "amount" } } })
    assert.same({ "n" }, o.required)
    assert.equals(5, o.properties.n.maxLength)
    assert.equals("integer", o.properties.a.type)
    assert.is_false(o.additionalProperties)
  end)
end)
