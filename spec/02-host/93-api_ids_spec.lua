-- nuvion.api.ids: prefixed ids that sort by creation, in Lua and in Postgres, and the check of
-- a given id's prefix and shape.
local ids = require "nuvion.api.ids"
local fx = require "spec.api_fixture"
local nuvion = require "nuvion"

describe("ids", function()
  it("are the prefix, an underscore and 26 base32 characters", function()
    local id = ids.new("cus")
    assert.matches("^cus_[0-9a-hjkmnp-tv-z]+$", id)
    assert.equals(4 + ids.BODY_CHARS, #id)
    assert.is_true(ids.valid(id, "cus"))
    assert.is_true(ids.valid(id))
    assert.equals("cus", ids.prefix(id))
  end)

  it("carry the millisecond they were made at", function()
    local before = math.floor(nuvion.now() * 1000)
    local id = ids.new("pi")
    local after = math.floor(nuvion.now() * 1000)
    local ms = ids.time_ms(id)
    assert.is_true(ms >= before and ms <= after + 1)
    assert.equals(1700000000123, ids.time_ms(ids.new("pi", 1700000000123)))
  end)

  it("made one after another in one worker sort in the order they were made", function()
    local list = {}
    for i = 1, 20000 do list[i] = ids.new("cus") end
    for i = 2, #list do
      if list[i - 1] >= list[i] then
        error("id " .. i .. " does not sort after its predecessor: " .. list[i - 1] .. " " .. list[i])
      end
    end
  end)

  it("sort by time across milliseconds, and Postgres sorts them the same way with COLLATE \"C\"", function()
    local t0 = math.floor(nuvion.now() * 1000) + 5000
    local list = {}
    for i = 1, 200 do list[i] = ids.new("wal", t0 + i * 7) end
    local shuffled = {}
    for i = 1, #list do table.insert(shuffled, math.random(1, #shuffled + 1), list[i]) end
    local db = fx.db()
    local rows = assert(db:query([[SELECT id FROM unnest($1::text[]) AS t(id) ORDER BY id COLLATE "C"]],
                                 "{" .. table.concat(shuffled, ",") .. "}"))
    for i = 1, #list do assert.equals(list[i], rows[i].id) end
    assert.is_true(ids.at("wal", t0) < list[1])
    assert.is_true(ids.at("wal", t0 + 8) > list[1])
  end)

  local bad = {
    { "cus_01jd8x3v9k0000a7c2m4q8r6t", "cus", "one character short" },
    { "cus_01jd8x3v9k0000a7c2m4q8r6twx", "cus", "one character long" },
    { "cus_01JD8X3V9K0000A7C2M4Q8R6TW", "cus", "upper case" },
    { "cus_01jd8x3v9k0000a7c2m4q8r6tu", "cus", "a letter outside the alphabet (u)" },
    { "cus_81jd8x3v9k0000a7c2m4q8r6tw", "cus", "a time beyond 48 bits" },
    { "pi_01jd8x3v9k0000a7c2m4q8r6tw", "cus", "another prefix" },
    { "cus01jd8x3v9k0000a7c2m4q8r6tw0", "cus", "no underscore" },
    { "_01jd8x3v9k0000a7c2m4q8r6tw", nil, "no prefix" },
    { 42, "cus", "a number" },
  }
  for _, c in ipairs(bad) do
    it("refuses an id with " .. c[3], function()
      assert.is_false(ids.valid(c[1], c[2]))
    end)
  end

  it("accepts the same shapes when they are right", function()
    assert.is_true(ids.valid("cus_01jd8x3v9k0000a7c2m4q8r6tw", "cus"))
    assert.is_true(ids.valid("cus_7zzzzzzzzzzzzzzzzzzzzzzzzz", "cus"))
  end)

  it("refuses a prefix that is not 1 to 16 lower-case letters and digits", function()
    for _, p in ipairs({ "", "Cus", "1ab", "a-b", string.rep("a", ids.PREFIX_CHARS_MAX + 1) }) do
      assert.has_error(function() ids.new(p) end)
    end
    assert.is_string(ids.new(string.rep("a", ids.PREFIX_CHARS_MAX)))
    assert.has_error(function() ids.new("cus", 2 ^ 48) end)
  end)
end)
