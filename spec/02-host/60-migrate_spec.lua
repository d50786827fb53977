-- bin/nuvion migrate: files applied in order, each in a transaction, recorded with a checksum;
-- an edited or vanished applied file stops the run; two migrators never apply a file twice.
local helpers = require "spec.helpers"
local process = require "nuvion.process"
local pg = require "nuvion.pg"
local crypto = require "nuvion.crypto"

local ADMIN_URL = os.getenv("NUVION_TEST_DATABASE_URL")

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function migrate(dir, url)
  local p = assert(process.spawn({ helpers.bin, "migrate", "spec", "--dir", dir, "--url", url },
                                 { output = "pipe" }))
  local out = {}
  while true do
    local line = p:line(20000)
    if not line then break end
    out[#out + 1] = line
  end
  local _, code = p:wait(20000)
  p:close()
  return code, table.concat(out, "\n")
end

describe("bin/nuvion migrate", function()
  local admin, db, url, dir, dbname

  lazy_setup(function()
    assert(ADMIN_URL, "NUVION_TEST_DATABASE_URL is not set: run the specs with make test")
    admin = pg.pool(ADMIN_URL, { max = 1 })
    dbname = "migrate_spec_" .. crypto.hex_encode(crypto.random(4))
    assert(admin:query("CREATE DATABASE " .. dbname)) -- a fresh name of ours, not input
    url = ADMIN_URL:gsub("/[^/?]+(%??[^/]*)$", "/" .. dbname .. "%1")
    db = pg.pool(url, { max = 2 })
    dir = os.tmpname()
    os.remove(dir)
    assert(require("lfs").mkdir(dir))
  end)

  lazy_teardown(function()
    os.execute("rm -rf " .. dir) -- spec clean-up only
    admin:query("DROP DATABASE " .. dbname .. " WITH (FORCE)")
  end)

  it("applies the files in order and records each with its checksum", function()
    write(dir .. "/0001_accounts.sql", [[
      CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL DEFAULT 'a;b');
      CREATE FUNCTION account_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM accounts; $$;
    ]])
    write(dir .. "/0002_seed.sql", "INSERT INTO accounts (id, name) VALUES (1, 'it''s; one');")
    local code, out = migrate(dir, url)
    assert.equals(0, code, out)
    assert.matches("spec: 2 migration(s) applied", out, 1, true)
    local rows = assert(db:query("SELECT version, name, checksum FROM nuvion_migrations ORDER BY version"))
    assert.equals(2, #rows)
    assert.equals("0001_accounts.sql", rows[1].name)
    assert.equals(64, #rows[1].checksum)
    assert.equals(1, assert(db:query("SELECT account_count() AS n"))[1].n)
  end)

  it("does nothing the second time", function()
    local code, out = migrate(dir, url)
    assert.equals(0, code, out)
    assert.matches("spec: 0 migration(s) applied", out, 1, true)
  end)

  it("refuses to run when an applied file was edited", function()
    local path = dir .. "/0002_seed.sql"
    local f = assert(io.open(path, "rb"))
    local original = f:read("*a")
    f:close()
    write(path, original .. "\n-- edited")
    write(dir .. "/0003_later.sql", "CREATE TABLE later (id int);")
    local code, out = migrate(dir, url)
    assert.equals(1, code)
    assert.matches("0002_seed.sql was applied with checksum", out, 1, true)
    assert.is_nil(db:query("SELECT 1 FROM later")) -- nothing after the refusal ran
    write(path, original)
    os.remove(dir .. "/0003_later.sql")
  end)

  it("refuses to run when an applied file is gone", function()
    local path = dir .. "/0002_seed.sql"
    local f = assert(io.open(path, "rb"))
    local original = f:read("*a")
    f:close()
    os.remove(path)
    local code, out = migrate(dir, url)
    assert.equals(1, code)
    assert.matches("version 2 (0002_seed.sql) is applied but its file is gone", out, 1, true)
    write(path, original)
  end)

  it("rolls a failing file back whole and stops there", function()
    write(dir .. "/0003_half.sql", "CREATE TABLE half (id int); INSERT INTO nope VALUES (1);")
    write(dir .. "/0004_after.sql", "CREATE TABLE after_half (id int);")
    local code, out = migrate(dir, url)
    assert.equals(1, code)
    assert.matches("0003_half.sql, statement 2", out, 1, true)
    local _, err = db:query("SELECT 1 FROM half")
    assert.equals("undefined_table", err.name) -- the first statement was rolled back too
    assert.is_nil(db:query("SELECT 1 FROM after_half"))
    local rows = assert(db:query("SELECT count(*) AS n FROM nuvion_migrations"))
    assert.equals(2, rows[1].n)
    os.remove(dir .. "/0003_half.sql")
    os.remove(dir .. "/0004_after.sql")
  end)

  it("refuses badly named files", function()
    write(dir .. "/3_bad.sql", "SELECT 1;")
    local code, out = migrate(dir, url)
    assert.equals(1, code)
    assert.matches("NNNN_name.sql", out, 1, true)
    os.remove(dir .. "/3_bad.sql")
  end)

  it("applies each file once when three migrators run at the same time", function()
    write(dir .. "/0003_slow.sql", "SELECT pg_sleep(0.3); CREATE TABLE slow_once (id int);")
    write(dir .. "/0004_next.sql", "INSERT INTO accounts (id) VALUES (4);")
    local results = helpers.parallel(3, function() return { migrate(dir, url) } end)
    local applied = 0
    for _, r in ipairs(results) do
      assert.equals(0, r[1], r[2])
      applied = applied + tonumber(r[2]:match("spec: (%d+) migration"))
    end
    assert.equals(2, applied)
    assert.equals(4, assert(db:query("SELECT count(*) AS n FROM nuvion_migrations"))[1].n)
    assert.equals(2, assert(db:query("SELECT count(*) AS n FROM accounts"))[1].n)
  end)
end)
