-- Query string decoding of the request object.
local request = require "nuvion.request"

describe("request.parse_query", function()
  local cases = {
    { nil, {} },
    { "", {} },
    { "a=1", { a = "1" } },
    { "a=1&b=2", { a = "1", b = "2" } },
    { "a=1&a=2&a=3", { a = { "1", "2", "3" } } },
    { "q=hello+world%21", { q = "hello world!" } },
    { "flag", { flag = "" } },
    { "&&a=1&", { a = "1" } },
    { "k%20ey=v=w", { ["k ey"] = "v=w" } },
  }
  for _, c in ipairs(cases) do
    it("decodes " .. tostring(c[1]), function()
      assert.same(c[2], request.parse_query(c[1]))
    end)
  end
end)
