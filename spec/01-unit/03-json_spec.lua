-- nuvion.json from Lua: the representation documented in docs/json.md.
local json = require "nuvion.json"

describe("nuvion.json", function()
  it("round-trips a payment document", function()
    local doc = '{"amount":1500,"currency":"KES","captured":false,"metadata":{},"items":[],"note":null}'
    local v = assert(json.decode(doc))
    assert.equals(1500, v.amount)
    assert.equals(json.null, v.note)
    assert.equals(json.array_mt, getmetatable(v.items))
    local again = assert(json.decode(assert(json.encode(v))))
    assert.same(v, again)
    assert.equals("[]", json.encode(v.items))
    assert.equals("{}", json.encode(v.metadata))
  end)

  it("keeps integers beyond 2^53 exact", function()
    for _, digits in ipairs({ "9007199254740993", "-9007199254740993",
                              "170141183460469231731687303715884105727", "99999999999999999999999999999999999999" }) do
      local v = assert(json.decode("[" .. digits .. "]"))[1]
      assert.is_true(json.is_int(v), digits)
      assert.equals(digits, tostring(v))
      assert.equals("[" .. digits .. "]", json.encode(v and json.array({ v })))
    end
    assert.equals(9007199254740992, json.decode("[9007199254740992]")[1])
  end)

  it("refuses integers longer than 39 digits", function()
    local v, err = json.decode("[" .. string.rep("9", 40) .. "]")
    assert.is_nil(v)
    assert.matches("39 digits", err, 1, true)
  end)

  local bad = {
    { '{"a":}', "byte" },
    { '{"a":1} x', "trailing" },
    { '"\xff"', "UTF-8" },
    { string.rep("[", 200) .. string.rep("]", 200), "deeper" },
    { "", "byte" },
  }
  for _, c in ipairs(bad) do
    it("rejects " .. ("%q"):format(c[1]:sub(1, 20)) .. " with a clear error", function()
      local v, err = json.decode(c[1])
      assert.is_nil(v)
      assert.matches(c[2], err, 1, true)
    end)
  end

  it("refuses to encode what JSON cannot carry, naming the path", function()
    local cases = {
      { { a = { b = function() end } }, "$.a.b" },
      { { amount = 0 / 0 }, "NaN" },
      { { [1] = "a", x = "b" }, "$" },
      { { name = "\xff" }, "UTF-8" },
    }
    for _, c in ipairs(cases) do
      local s, err = json.encode(c[1])
      assert.is_nil(s)
      assert.matches(c[2], err, 1, true)
    end
  end)

  it("encodes integral numbers without exponent or fraction", function()
    assert.equals("[1000000000000000]", json.encode(json.array({ 1e15 })))
    assert.equals("[-5]", json.encode(json.array({ -5 })))
    assert.equals("[0.5]", json.encode(json.array({ 0.5 })))
  end)
end)
