-- tx:defer (nuvion.pg): statements held back and sent with the transaction's next statement,
-- pipeline or COMMIT, against the real Postgres of NUVION_TEST_DATABASE_URL. The table is named
-- after this run and dropped at the end.
local pg = require "nuvion.pg"
local nuvion = require "nuvion"

local URL = os.getenv("NUVION_TEST_DATABASE_URL")
local T = "pgdefer_" .. nuvion.random_hex(4)

describe("nuvion.pg tx:defer", function()
  local db

  setup(function()
    db = pg.pool(URL, { max = 2 })
    assert(db:query("CREATE TABLE " .. T .. " (seq serial PRIMARY KEY, v text NOT NULL UNIQUE)"))
  end)

  teardown(function()
    db:query("DROP TABLE IF EXISTS " .. T)
  end)

  local function values()
    local rows = assert(db:query("SELECT v FROM " .. T .. " ORDER BY seq"))
    local out = {}
    for i, r in ipairs(rows) do out[i] = r.v end
    return out
  end

  before_each(function()
    assert(db:query("TRUNCATE " .. T))
  end)

  it("sends deferred statements with the COMMIT, in order, and commits them", function()
    local out = assert(db:tx(function(tx)
      assert.is_true(tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "a", n = 1 }))
      assert.is_true(tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "b", n = 1 }))
      assert.same({}, values())   -- not sent yet: another connection sees nothing
      return "done"
    end))
    assert.equals("done", out)
    assert.same({ "a", "b" }, values())
  end)

  it("flushes them before the next statement, which sees their rows", function()
    assert(db:tx(function(tx)
      tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "a", n = 1 })
      local rows = assert(tx:query("SELECT count(*)::int AS n FROM " .. T .. " WHERE v = $1", "a"))
      assert.equals(1, rows[1].n)
      tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "b", n = 1 })
      local res, err = tx:pipeline({ { "SELECT count(*)::int AS n FROM " .. T }, { "SELECT 2 AS two" } })
      assert.is_nil(err)
      assert.equals(2, #res)
      assert.equals(2, res[1][1].n)
      assert.equals(2, res[2][1].two)
      return true
    end))
    assert.same({ "a", "b" }, values())
  end)

  it("a deferred statement that fails at COMMIT rolls the whole transaction back", function()
    assert(db:query("INSERT INTO " .. T .. " (v) VALUES ('taken')"))
    local ok, err = db:tx(function(tx)
      assert(tx:query("INSERT INTO " .. T .. " (v) VALUES ('before')"))
      tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "taken", n = 1 })   -- unique violation
      tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "after", n = 1 })
      return true
    end)
    assert.is_nil(ok)
    assert.equals("unique_violation", err.name)
    assert.same({ "taken" }, values())
    -- the connection is usable again
    assert(db:tx(function(tx) return tx:query("SELECT 1") end))
  end)

  it("a deferred statement that fails makes the next query fail, and the transaction rolls back", function()
    local ok, err = db:tx(function(tx)
      tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", pg.null, n = 1 })   -- NOT NULL
      local rows, qerr = tx:query("SELECT 1 AS one")
      assert.is_nil(rows)
      assert.equals("not_null_violation", qerr.name)
      return true
    end)
    assert.is_nil(ok)
    assert.equals("not_null_violation", err.name)
    assert.same({}, values())
  end)

  it("nothing deferred is sent when fn returns nil, err", function()
    local ok, err = db:tx(function(tx)
      tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "x", n = 1 })
      return nil, "changed my mind"
    end)
    assert.is_nil(ok)
    assert.equals("changed my mind", err)
    assert.same({}, values())
  end)

  it("refuses more than DEFER_MAX waiting statements, and a statement that is not a table", function()
    local ok, err = db:tx(function(tx)
      for i = 1, pg.DEFER_MAX do tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "v" .. i, n = 1 }) end
      assert.has_error(function()
        tx:defer({ "INSERT INTO " .. T .. " (v) VALUES ($1)", "one too many", n = 1 })
      end, "pg: more than " .. pg.DEFER_MAX .. " deferred statements")
      assert.has_error(function() tx:defer("SELECT 1") end)
      assert.has_error(function() tx:defer({ "SELECT 1", timeout_ms = 10 }) end)
      return true
    end)
    assert.is_true(ok, tostring(err))
    assert.equals(pg.DEFER_MAX, #values())
  end)
end)
