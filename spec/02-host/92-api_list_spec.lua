-- nuvion.api.list through the fixture app: newest first, pages both ways by cursor, has_more,
-- limit bounds, cursors checked, one partner's list never shows another's objects.
local fx = require "spec.api_fixture"
local openapi = require "spec.openapi"
local list = require "nuvion.api.list"
local ids = require "nuvion.api.ids"

local N = 25

describe("cursor lists", function()
  local srv, partner
  local made = {} -- ids, oldest first

  lazy_setup(function()
    srv = fx.start()
    partner = fx.partner()
    for i = 1, N do
      local res = fx.request(srv.port, { path = "/v1/things", partner = partner, body = { name = "item" .. i } })
      assert(res.status == 200, res.body)
      made[i] = res.json().id
    end
  end)
  lazy_teardown(function() if srv then srv:stop() end end)

  local function get(query, p)
    return fx.request(srv.port, { method = "GET", path = "/v1/things" .. (query or ""), partner = p or partner })
  end

  local function page_ids(res)
    local out = {}
    for i, o in ipairs(res.json().data) do out[i] = o.id end
    return out
  end

  local function newest(from, to) -- made[] newest first, positions from..to (1 = newest)
    local out = {}
    for i = from, to do out[#out + 1] = made[N + 1 - i] end
    return out
  end

  it("answers the newest 10 by default, in the List shape", function()
    local res = get()
    assert.equals(200, res.status)
    local body = res.json()
    assert.equals("list", body.object)
    assert.is_true(body.has_more)
    assert.same(newest(1, 10), page_ids(res))
    assert(openapi.check(body, "List"))
  end)

  it("pages forward with starting_after until has_more is false", function()
    local p2 = get("?starting_after=" .. made[N - 9])
    assert.same(newest(11, 20), page_ids(p2))
    assert.is_true(p2.json().has_more)
    local p3 = get("?starting_after=" .. made[N - 19])
    assert.same(newest(21, 25), page_ids(p3))
    assert.is_false(p3.json().has_more)
  end)

  it("pages backward with ending_before, newest first, has_more meaning newer ones remain", function()
    local back = get("?ending_before=" .. made[N - 20]) -- the 10 newer than the 21st newest
    assert.same(newest(11, 20), page_ids(back))
    assert.is_true(back.json().has_more)
    local first = get("?ending_before=" .. made[N - 10])
    assert.same(newest(1, 10), page_ids(first))
    assert.is_false(first.json().has_more)
    local short = get("?limit=3&ending_before=" .. made[N - 1])
    assert.same(newest(1, 1), page_ids(short))
    assert.is_false(short.json().has_more)
  end)

  it("accepts limit 1 and 100", function()
    assert.same(newest(1, 1), page_ids(get("?limit=1")))
    local all = get("?limit=100")
    assert.same(newest(1, N), page_ids(all))
    assert.is_false(all.json().has_more)
  end)

  for _, bad in ipairs({ "0", "101", "-1", "abc", "1.5", "", "99999" }) do
    it("refuses limit=" .. bad .. " with 400 on param limit", function()
      local res = get("?limit=" .. bad)
      assert.equals(400, res.status)
      assert.equals("parameter_invalid", res.json().error.code)
      assert.equals("limit", res.json().error.param)
      assert.equals(list.ERR_LIMIT, res.json().error.message)
    end)
  end

  it("refuses a cursor of another prefix, a malformed one, a repeated one, or both cursors", function()
    local cases = {
      { "?starting_after=" .. ids.new("cus"), "starting_after" },
      { "?ending_before=thg_123", "ending_before" },
      { "?starting_after=" .. made[1] .. "&starting_after=" .. made[2], "starting_after" },
      { "?starting_after=" .. made[1] .. "&ending_before=" .. made[2], "ending_before" },
    }
    for _, c in ipairs(cases) do
      local res = get(c[1])
      assert.equals(400, res.status)
      assert.equals(c[2], res.json().error.param)
    end
  end)

  it("shows another partner none of these objects, even given their cursors", function()
    local other = fx.partner()
    local res = get(nil, other)
    assert.equals(200, res.status)
    assert.matches('"data":[]', res.body, 1, true)
    assert.is_false(res.json().has_more)
    assert.same({}, page_ids(get("?starting_after=" .. made[N], other)))
    assert.same({}, page_ids(fx.request(srv.port, { method = "GET", path = "/v1/things", partner = partner,
                                                    mode = "live" })))
  end)

  it("builds keyset SQL with no OFFSET, and refuses identifiers that are not plain", function()
    local sql, params = list.sql({ from = "t", where = "a = $1", args = { "x" } },
                                 { limit = 10, starting_after = "thg_x" })
    assert.equals("SELECT * FROM t WHERE (a = $1) AND id < $2 ORDER BY id DESC LIMIT $3", sql)
    assert.same({ "x", "thg_x", 11 }, params)
    sql = list.sql({ from = "t" }, { limit = 5, ending_before = "thg_y" })
    assert.equals("SELECT * FROM t WHERE id > $1 ORDER BY id ASC LIMIT $2", sql)
    assert.has_error(function() list.sql({ from = "t; DROP TABLE x" }, { limit = 1 }) end)
    assert.has_error(function() list.sql({ from = "t", id_column = "id desc" }, { limit = 1 }) end)
  end)
end)
