-- Splitting a migration script into statements: semicolons inside quotes,
-- identifiers, comments and dollar-quoted bodies do not end a statement.
local migrate = require "nuvion.migrate"

describe("migrate.split", function()
  local cases = {
    { "SELECT 1; SELECT 2;", { "SELECT 1", "SELECT 2" } },
    { "SELECT 1", { "SELECT 1" } },
    { "  ;; SELECT 1 ;  ", { "SELECT 1" } },
    { "INSERT INTO t VALUES ('a;b', 'it''s;')", { "INSERT INTO t VALUES ('a;b', 'it''s;')" } },
    { 'ALTER TABLE t ADD "a;b" int; SELECT 2', { 'ALTER TABLE t ADD "a;b" int', "SELECT 2" } },
    { "SELECT 1; -- a comment; still\nSELECT 2", { "SELECT 1", "-- a comment; still\nSELECT 2" } },
    { "SELECT /* x; y */ 1; SELECT 2", { "SELECT /* x; y */ 1", "SELECT 2" } },
    { "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; SELECT 2",
      { "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", "SELECT 2" } },
    { "DO $body$ BEGIN PERFORM 1; END $body$; SELECT $1", { "DO $body$ BEGIN PERFORM 1; END $body$", "SELECT $1" } },
    { "-- only a comment\n", {} },
  }
  for i, c in ipairs(cases) do
    it("splits case " .. i, function()
      assert.same(c[2], assert(migrate.split(c[1])))
    end)
  end

  it("reports an unterminated quote, comment or body", function()
    for _, bad in ipairs({ "SELECT 'abc", "SELECT /* x", "SELECT $x$ abc", 'SELECT "abc' }) do
      local stmts, err = migrate.split(bad)
      assert.is_nil(stmts)
      assert.matches("unterminated", err, 1, true)
    end
  end)
end)
