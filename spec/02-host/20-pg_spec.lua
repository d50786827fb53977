-- nuvion.pg against the real Postgres of NUVION_TEST_DATABASE_URL (scripts/services.sh): every
-- table is named after this run and dropped at the end; nothing is mocked.
local pg = require "nuvion.pg"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local ffi = require "ffi"

local URL = os.getenv("NUVION_TEST_DATABASE_URL")
local SSL_URL = os.getenv("NUVION_TEST_PG_SSL_URL")
local T = "pgspec_" .. nuvion.random_hex(4) -- prefix of this run's tables

local concurrently = require("spec.helpers").concurrently

local function url_with(url, k, v)
  return url .. (url:find("?", 1, true) and "&" or "?") .. k .. "=" .. v
end

describe("nuvion.pg", function()
  local db

  lazy_setup(function()
    assert(URL, "NUVION_TEST_DATABASE_URL is not set: run scripts/services.sh start DIR and source DIR/env")
    db = pg.pool(URL, { max = 6 })
    assert(db:query("CREATE TABLE " .. T .. "_acct (id int PRIMARY KEY, balance numeric(38,0) NOT NULL, " ..
                    "email text UNIQUE, CONSTRAINT " .. T .. "_positive CHECK (balance >= 0))"))
    assert(db:query("CREATE TABLE " .. T .. "_vals (id serial PRIMARY KEY, n numeric(38,0), b bigint, " ..
                    "j jsonb, t text, by bytea)"))
  end)

  lazy_teardown(function()
    if db then
      db:query("DROP TABLE IF EXISTS " .. T .. "_acct")
      db:query("DROP TABLE IF EXISTS " .. T .. "_vals")
    end
  end)

  describe("results", function()
    it("types every column for Lua", function()
      local rows = assert(db:query([[SELECT 1::int2 AS i2, 2::int4 AS i4, 3::int8 AS i8, true AS yes, false AS no,
        'x'::text AS t, 'v'::varchar AS vc, '6f1c2b9e-1111-4222-8333-944445555666'::uuid AS u,
        '{"a":[1,2],"big":12345678901234567890}'::jsonb AS jb, '[1, {"b":null}]'::json AS js,
        '2024-03-01 12:34:56.789+00'::timestamptz AS ts, '2024-03-01 12:34:56'::timestamp AS tsl,
        '2024-03-01'::date AS d, '\x00ff41'::bytea AS by, 1.25::float8 AS f8, 12.50::numeric(10,2) AS money,
        42::numeric AS whole]]))
      local r = rows[1]
      assert.same({ 1, 2, 3 }, { r.i2, r.i4, r.i8 })
      assert.is_true(r.yes)
      assert.is_false(r.no)
      assert.equals("x", r.t)
      assert.equals("v", r.vc)
      assert.equals("6f1c2b9e-1111-4222-8333-944445555666", r.u)
      assert.same({ 1, 2 }, { r.jb.a[1], r.jb.a[2] })
      assert.is_true(json.is_int(r.jb.big))
      assert.equals("12345678901234567890", tostring(r.jb.big))
      assert.equals(json.null, r.js[2].b)
      assert.equals("2024-03-01T12:34:56.789Z", r.ts)
      assert.equals("2024-03-01T12:34:56", r.tsl)
      assert.equals("2024-03-01", r.d)
      assert.equals("\0\255A", r.by)
      assert.equals(1.25, r.f8)
      assert.equals("12.50", r.money)
      assert.equals(42, r.whole)
      assert.equals(1, rows.affected)
      assert.equals("SELECT", rows.command)
      assert.equals("i2", rows.columns[1])
      assert.equals("timestamptz", rows.types[11])
    end)

    it("keeps what has no exact Lua number as text", function()
      local r = assert(db:query([[SELECT 'NaN'::numeric AS nan, (10::numeric ^ 45)::numeric(60,0) AS huge,
        'infinity'::timestamptz AS inf, -0.5::numeric AS neg]]))[1]
      assert.equals("NaN", r.nan)
      assert.equals("1" .. string.rep("0", 45), r.huge)
      assert.equals("infinity", r.inf)
      assert.equals("-0.5", r.neg)
      local india = pg.pool(url_with(URL, "options", "-c%20TimeZone%3DAsia/Kolkata"), { max = 1 })
      local t = assert(india:query("SELECT '2024-03-01 00:00:00+00'::timestamptz AS ts"))[1].ts
      assert.equals("2024-03-01T05:30:00+05:30", t)
    end)

    it("gives NULL as nil and the column order in rows.columns", function()
      local rows = assert(db:query("SELECT 1 AS a, NULL::text AS b, 3 AS c"))
      assert.is_nil(rows[1].b)
      assert.same({ "a", "b", "c" }, rows.columns)
    end)

    it("keeps numeric(38,0) and int8 exact", function()
      local max38 = "99999999999999999999999999999999999999"
      local rows = assert(db:query("INSERT INTO " .. T .. "_vals (n, b) VALUES ($1, $2), ($3, $4) RETURNING n, b",
        json.int(max38), json.int("9007199254740993"), json.int("-" .. max38), json.int("-9223372036854775808")))
      assert.equals(2, rows.affected)
      assert.equals(json.int(max38), rows[1].n)
      assert.equals(json.int("9007199254740993"), rows[1].b)
      assert.equals(json.int("-" .. max38), rows[2].n)
      assert.equals("-9223372036854775808", tostring(rows[2].b))
      local small = assert(db:query("SELECT $1::int8 AS b, $2::numeric(38,0) AS n", 9007199254740992, 100))
      assert.equals(9007199254740992, small[1].b)
      assert.equals(100, small[1].n)
    end)

    it("refuses a result over rows_max with an error, and the pool goes on", function()
      local small = pg.pool(URL, { max = 1, rows_max = 10 })
      local rows, err = small:query("SELECT g FROM generate_series(1, 1000) g")
      assert.is_nil(rows)
      assert.equals("result_too_large", err.name)
      assert.equals(10, #assert(small:query("SELECT g FROM generate_series(1, 10) g")))
      local tiny = pg.pool(URL, { max = 1, bytes_max = 4096 })
      rows, err = tiny:query("SELECT repeat('x', 100000) AS big")
      assert.is_nil(rows)
      assert.equals("result_too_large", err.name)
    end)
  end)

  describe("parameters", function()
    it("sends each kind of value", function()
      local rows = assert(db:query([[SELECT $1::text AS s, $2::numeric AS big, $3::float8 AS frac, $4::bool AS b,
        $5::numeric AS ji, $6::int AS n1, $7::int AS n2, $8::jsonb AS j, $9::bytea AS by, $10::int8 AS c]],
        "héllo", 1e20, 0.1, true, json.int("123456789012345678901234567890"), nil, pg.null,
        { amount = 100, tags = { "a" } }, pg.bytea("\0\1\2"), ffi.new("int64_t", 9007199254740993LL)))
      local r = rows[1]
      assert.equals("héllo", r.s)
      assert.equals("100000000000000000000", tostring(r.big))
      assert.equals(0.1, r.frac)
      assert.is_true(r.b)
      assert.equals("123456789012345678901234567890", tostring(r.ji))
      assert.is_nil(r.n1)
      assert.is_nil(r.n2)
      assert.equals(100, r.j.amount)
      assert.equals("a", r.j.tags[1])
      assert.equals("\0\1\2", r.by)
      assert.equals("9007199254740993", tostring(r.c))
    end)

    it("takes parameters in a statement table, with n for NULLs", function()
      local rows = assert(db:query({ "SELECT $1::int AS a, $2::int AS b, $3::int AS c", 1, nil, 3, n = 3 }))
      assert.same({ 1, nil, 3 }, { rows[1].a, rows[1].b, rows[1].c })
    end)

    it("keeps an injection attempt as data", function()
      local evil = "x'); DROP TABLE " .. T .. "_acct; --"
      assert(db:query("INSERT INTO " .. T .. "_vals (t) VALUES ($1)", evil))
      local rows = assert(db:query("SELECT t FROM " .. T .. "_vals WHERE t = $1", evil))
      assert.equals(evil, rows[1].t)
      assert(db:query("SELECT count(*) FROM " .. T .. "_acct"))
      local r, err = db:query("SELECT 1; DROP TABLE " .. T .. "_acct")
      assert.is_nil(r)
      assert.equals("syntax_error", err.name) -- one statement per query: no stacked queries
    end)

    it("refuses COPY with unsupported_result, and the pool goes on", function()
      local rows, err = db:query("COPY (SELECT 1) TO STDOUT")
      assert.is_nil(rows)
      assert.equals("unsupported_result", err.name)
      assert.equals(1, assert(db:query("SELECT 1 AS one"))[1].one)
    end)

    it("raises on a caller's bug", function()
      assert.has_error(function() db:query("SELECT $1", function() end) end)
      assert.has_error(function() db:query("SELECT $1::text", "a\0b") end)
      assert.has_error(function() db:query(42) end)
      assert.has_error(function() pg.pool(URL, { max = 0 }) end)
      assert.has_error(function() pg.pool(URL, { nope = 1 }) end)
    end)
  end)

  describe("errors", function()
    it("names unique_violation with its constraint and table", function()
      assert(db:query("INSERT INTO " .. T .. "_acct (id, balance, email) VALUES (1, 0, 'a@x')"))
      local rows, err = db:query("INSERT INTO " .. T .. "_acct (id, balance, email) VALUES (2, 0, 'a@x')")
      assert.is_nil(rows)
      assert.equals("unique_violation", err.name)
      assert.equals("23505", err.code)
      assert.equals(T .. "_acct_email_key", err.constraint)
      assert.equals(T .. "_acct", err.table)
      assert.matches("unique_violation (23505)", tostring(err), 1, true)
      assert.is_true(pg.is_error(err))
      local _, cerr = db:query("INSERT INTO " .. T .. "_acct (id, balance) VALUES (3, -1)")
      assert.equals("check_violation", cerr.name)
      assert.equals(T .. "_positive", cerr.constraint)
      local _, nerr = db:query("INSERT INTO " .. T .. "_acct (id, balance) VALUES (4, NULL)")
      assert.equals("not_null_violation", nerr.name)
      assert(db:query("DELETE FROM " .. T .. "_acct"))
    end)

    it("applies the pool's statement timeout and a per-query one", function()
      local slow = pg.pool(URL, { max = 1, statement_timeout_ms = 100 })
      local rows, err = slow:query("SELECT pg_sleep(2)")
      assert.is_nil(rows)
      assert.equals("query_canceled", err.name)
      assert.equals("57014", err.code)
      rows, err = db:query({ "SELECT pg_sleep(2)", statement_timeout_ms = 100 })
      assert.is_nil(rows)
      assert.equals("query_canceled", err.name)
      assert(db:query("SELECT pg_sleep(0.2)")) -- the per-query one did not stay on the connection
    end)

    it("gives up on the client side after timeout_ms, and the pool recovers", function()
      local t0 = nuvion.monotonic_ms()
      local rows, err = db:query({ "SELECT pg_sleep(3)", timeout_ms = 150 })
      assert.is_nil(rows)
      assert.equals("query_timeout", err.name)
      assert.is_true(nuvion.monotonic_ms() - t0 < 1000)
      assert.equals(1, assert(db:query("SELECT 1 AS one"))[1].one)
    end)

    it("reports a connection killed mid-query as connection_lost, then serves the next query", function()
      local victim = pg.pool(URL, { max = 1 })
      local marker = "victim_" .. nuvion.random_hex(4)
      local out = concurrently(2, function(i)
        if i == 1 then return victim:query("SELECT pg_sleep(5), $1::text", marker) end
        for _ = 1, 200 do
          local r = assert(db:query("SELECT pg_terminate_backend(pid) AS k FROM pg_stat_activity " ..
                                    "WHERE query LIKE 'SELECT pg_sleep(5), $1::text' AND pid <> pg_backend_pid()"))
          if r[1] and r[1].k then return true end
          nuvion.sleep(10)
        end
      end)
      assert.is_nil(out[1][1])
      assert.equals("connection_lost", out[1][2].name)
      assert.equals("57P01", out[1][2].code)
      assert.equals(7, assert(victim:query("SELECT 7 AS x"))[1].x)
    end)

    it("gives a clear error for a bad password, without the password", function()
      local bad = URL:gsub("://([^:]+):[^@]*@", "://%1:Secr3tWr0ng@")
      local rows, err = pg.pool(bad, { max = 1 }):query("SELECT 1")
      assert.is_nil(rows)
      assert.equals("connect_failed", err.name)
      assert.matches("password authentication failed", err.message, 1, true)
      assert.is_nil(tostring(err):find("Secr3tWr0ng", 1, true))
    end)
  end)

  describe("transactions", function()
    it("sends BEGIN with the first statement: no connection until then, none for an empty one", function()
      local one = pg.pool(URL, { max = 1, pool_timeout_ms = 5000 })
      local seen = {}
      local v = assert(one:tx(function(tx)
        seen[1] = one:stats().leased
        assert(tx:query("SELECT 1"))
        seen[2] = one:stats().leased
        return 7
      end))
      assert.equals(7, v)
      assert.same({ 0, 1 }, seen) -- leased by the SELECT, which carried the BEGIN
      -- a transaction that ran nothing needs no connection: it finishes while another holds it
      local out = concurrently(2, function(i)
        if i == 1 then return one:tx(function(tx) tx:query("SELECT pg_sleep(0.3)") return "held" end) end
        nuvion.sleep(50)
        local t0 = nuvion.monotonic_ms()
        local r = one:tx(function() return "empty" end)
        return r, nuvion.monotonic_ms() - t0
      end)
      assert.equals("held", out[1][1])
      assert.equals("empty", out[2][1])
      assert.is_true(out[2][2] < 100, tostring(out[2][2]))
    end)

    it("commits what fn did and returns its values", function()
      local a, b = db:tx(function(tx)
        assert(tx:query("INSERT INTO " .. T .. "_acct (id, balance) VALUES (10, 100)"))
        return "done", 2
      end)
      assert.same({ "done", 2 }, { a, b })
      assert.equals(100, assert(db:query("SELECT balance FROM " .. T .. "_acct WHERE id = 10"))[1].balance)
    end)

    it("rolls back when fn raises (re-raised) or returns nil, err (returned)", function()
      assert.has_error(function()
        db:tx(function(tx)
          assert(tx:query("UPDATE " .. T .. "_acct SET balance = 0 WHERE id = 10"))
          error("boom")
        end)
      end, "boom")
      local r, err = db:tx(function(tx)
        assert(tx:query("UPDATE " .. T .. "_acct SET balance = 1 WHERE id = 10"))
        return nil, "insufficient_funds"
      end)
      assert.is_nil(r)
      assert.equals("insufficient_funds", err)
      r, err = db:tx(function(tx)
        tx:query("UPDATE " .. T .. "_acct SET balance = -5 WHERE id = 10") -- check_violation, ignored
        return true
      end)
      assert.is_nil(r)
      assert.equals("check_violation", err.name)
      assert.equals(100, assert(db:query("SELECT balance FROM " .. T .. "_acct WHERE id = 10"))[1].balance)
      assert.equals(0, db:stats().leased)
    end)

    it("fails a transaction whose connection was killed between two queries, and recovers", function()
      local r, err = db:tx(function(tx)
        local pid = assert(tx:query("SELECT pg_backend_pid() AS p"))[1].p
        assert(db:query("SELECT pg_terminate_backend($1)", pid))
        nuvion.sleep(50)
        return tx:query("SELECT 1")
      end)
      assert.is_nil(r)
      assert.equals("connection_lost", err.name)
      assert.equals(0, db:stats().leased)
      assert.equals(1, assert(db:query("SELECT 1 AS x"))[1].x)
    end)

    it("retries a serialization failure so that both concurrent transfers land", function()
      assert(db:query("INSERT INTO " .. T .. "_acct (id, balance) VALUES (20, 1000)"))
      local attempts = { 0, 0 }
      local out = concurrently(2, function(i)
        return db:tx(function(tx, attempt)
          attempts[i] = attempt + 1
          local r = assert(tx:query("SELECT balance FROM " .. T .. "_acct WHERE id = 20"))
          nuvion.sleep(50) -- both read before either writes
          local sql = "UPDATE " .. T .. "_acct SET balance = $1 WHERE id = 20"
          if i == 2 then -- a raised error object is retried as a returned one is
            local ok, err = tx:query(sql, r[1].balance + i * 10)
            if not ok then error(err) end -- (busted's assert would wrap it)
            return "ok"
          end
          local ok, err = tx:query(sql, r[1].balance + i * 10)
          if not ok then return nil, err end
          return "ok"
        end, { isolation = "serializable", retries = 3 })
      end)
      assert.equals("ok", out[1][1])
      assert.equals("ok", out[2][1])
      assert.equals(3, attempts[1] + attempts[2]) -- one of them ran twice
      assert.equals(1030, assert(db:query("SELECT balance FROM " .. T .. "_acct WHERE id = 20"))[1].balance)
    end)
  end)

  describe("pipelines", function()
    it("runs many statements in one round trip and returns each result", function()
      local res, err = db:pipeline({
        { "INSERT INTO " .. T .. "_acct (id, balance) VALUES ($1, $2)", 30, 5 },
        { "UPDATE " .. T .. "_acct SET balance = balance + $1 WHERE id = $2", 7, 30 },
        { "SELECT balance FROM " .. T .. "_acct WHERE id = $1", 30 },
      })
      assert.is_nil(err)
      assert.equals(1, res[1].affected)
      assert.equals(1, res[2].affected)
      assert.equals(12, res[3][1].balance)
    end)

    it("sends a thousand statements in one pipeline, atomic or not", function()
      local list = {}
      for i = 1, 1000 do list[i] = { "SELECT $1::int AS i", i } end
      for _, atomic in ipairs({ true, false }) do
        local res, err = db:pipeline(list, { atomic = atomic })
        assert.is_nil(err)
        assert.equals(1000, #res)
        assert.equals(1000, res[1000][1].i)
      end
    end)

    it("reports the failing statement; the atomic default rolls back the rest", function()
      local res, err = db:pipeline({
        { "INSERT INTO " .. T .. "_acct (id, balance) VALUES (31, 1)" },
        { "INSERT INTO " .. T .. "_acct (id, balance) VALUES (30, 1)" }, -- duplicate key
        { "SELECT 1" },
      })
      assert.equals("unique_violation", err.name)
      assert.equals(2, err.index)
      assert.equals("unique_violation", res[2].name)
      assert.equals("pipeline_aborted", res[3].name)
      assert.equals(0, #assert(db:query("SELECT 1 FROM " .. T .. "_acct WHERE id = 31")))
      res, err = db:pipeline({
        { "INSERT INTO " .. T .. "_acct (id, balance) VALUES (31, 1)" },
        { "INSERT INTO " .. T .. "_acct (id, balance) VALUES (30, 1)" },
        { "SELECT 3 AS x" },
      }, { atomic = false })
      assert.equals(2, err.index)
      assert.equals(3, res[3][1].x)
      assert.equals(1, #assert(db:query("SELECT 1 FROM " .. T .. "_acct WHERE id = 31")))
    end)

    -- What the connection has prepared: statement text -> count. Read in a transaction, so on
    -- the very connection the pipelines ran on (a pool of one).
    local function prepared(one)
      local out = {}
      assert(one:tx(function(tx)
        for _, r in ipairs(assert(tx:query("SELECT statement FROM pg_prepared_statements"))) do
          out[r.statement] = (out[r.statement] or 0) + 1
        end
        return true
      end))
      return out
    end

    it("prepares a pipeline's statements in the same round trip, once per connection", function()
      local one = pg.pool(URL, { max = 1, pool_timeout_ms = 5000 })
      local a, b = "SELECT $1::int + 1 AS a /* " .. T .. " */", "SELECT $1::text AS b /* " .. T .. " */"
      for i = 1, 3 do
        local res, err = one:pipeline({ { a, i }, { b, "x" .. i }, { a, 10 * i } })
        assert.is_nil(err)
        assert.equals(i + 1, res[1][1].a)
        assert.equals("x" .. i, res[2][1].b)
        assert.equals(10 * i + 1, res[3][1].a)
      end
      local p = prepared(one)
      assert.equals(1, p[a]) -- the repeat in the first pipeline ran unnamed, not prepared twice
      assert.equals(1, p[b])
      -- a bytea parameter has a type: such a statement runs unnamed
      local typed = "SELECT length($1) AS n /* " .. T .. " */"
      local res = assert(one:pipeline({ { typed, pg.bytea("\0\1\2") }, { a, 1 } }))
      assert.equals(3, res[1][1].n)
      assert.is_nil(prepared(one)[typed])
    end)

    it("answers a statement that does not parse with its own error, and never caches it", function()
      local one = pg.pool(URL, { max = 1, pool_timeout_ms = 5000 })
      local bad = "SELEC 2 /* " .. T .. " */"
      for _ = 1, 2 do
        local res, err = one:pipeline({ { "SELECT 1 AS x" }, { bad }, { "SELECT 3 AS x" } })
        assert.equals("syntax_error", err.name)
        assert.equals(2, err.index)
        assert.equals("pipeline_aborted", res[3].name)
      end
      -- a Parse after a failed statement is aborted too: nothing is cached for it
      local later = "SELECT 4 AS x /* " .. T .. " later */"
      local res, err = one:pipeline({ { "SELECT 1/0" }, { later } })
      assert.equals("division_by_zero", err.name)
      assert.equals("pipeline_aborted", res[2].name)
      assert.is_nil(prepared(one)[bad])
      assert.is_nil(prepared(one)[later])
      assert.equals(4, assert(one:pipeline({ { later }, { "SELECT 1" } }))[1][1].x)
      assert.equals(1, prepared(one)[later])
    end)

    it("prepares a cached statement again once DDL changed its result", function()
      local one = pg.pool(URL, { max = 1, pool_timeout_ms = 5000 })
      local tbl = T .. "_ddl"
      assert(db:query("CREATE TABLE " .. tbl .. " (x int)"))
      assert(db:query("INSERT INTO " .. tbl .. " VALUES (1)"))
      local sel = "SELECT * FROM " .. tbl
      for _ = 1, 2 do assert(one:pipeline({ { sel }, { "SELECT 1" } })) end
      assert(db:query("ALTER TABLE " .. tbl .. " ADD COLUMN y int DEFAULT 7"))
      local _, err = one:pipeline({ { sel }, { "SELECT 1" } })
      assert.equals("feature_not_supported", err.name) -- "cached plan must not change result type"
      local res = assert(one:pipeline({ { sel }, { "SELECT 1" } }))
      assert.equals(7, res[1][1].y)
      assert(db:query("DROP TABLE " .. tbl))
    end)
  end)

  describe("the pool", function()
    it("makes the third waiter of a pool of 2 time out, and serves it when one frees", function()
      local two = pg.pool(URL, { max = 2, pool_timeout_ms = 150 })
      local out = concurrently(3, function(i)
        if i == 3 then nuvion.sleep(30) return two:query("SELECT 3 AS x") end
        return two:query("SELECT pg_sleep(0.5)")
      end)
      assert.truthy(out[1][1])
      assert.truthy(out[2][1])
      assert.equals("pool_timeout", out[3][2].name)
      local patient = pg.pool(URL, { max = 2, pool_timeout_ms = 3000 })
      out = concurrently(3, function(i)
        if i == 3 then nuvion.sleep(30) return patient:query("SELECT 3 AS x") end
        return patient:query("SELECT pg_sleep(0.3)")
      end)
      assert.equals(3, out[3][1][1].x)
      assert.equals(2, patient:stats().open)
    end)

    it("refuses a waiter past the queue bound", function()
      local one = pg.pool(URL, { max = 1, queue = 0 })
      local out = concurrently(2, function(i)
        if i == 2 then nuvion.sleep(30) end
        return one:query("SELECT pg_sleep(0.2)")
      end)
      assert.equals("pool_queue_full", out[2][2].name)
    end)

    it("is one pool per URL and options in a worker", function()
      assert.equals(pg.pool(URL, { max = 6 }), db)
    end)

    it("connects with sslmode=require", function()
      assert(SSL_URL, "NUVION_TEST_PG_SSL_URL is not set")
      local rows = assert(pg.pool(SSL_URL, { max = 1 }):query(
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
      assert.is_true(rows[1].ssl)
    end)

    -- "localhost" maps to 127.0.0.1 (libpq gets hostaddr): no lookup at all, so nothing can
    -- block; the spec below with a server that never answers shows the connect itself does not.
    it("connects to host localhost", function()
      local local_url = URL:gsub("@127%.0%.0%.1:", "@localhost:")
      assert.is_truthy(local_url:find("@localhost:", 1, true))
      local rows = assert(pg.pool(local_url, { max = 1 }):query("SELECT 1 AS one"))
      assert.equals(1, rows[1].one)
    end)

    it("resolves another host name through evdns (/etc/hosts)", function()
      local f = io.open("/etc/hosts")
      local name
      for line in (f and f:read("*a") or ""):gmatch("[^\n]+") do
        local addr, rest = line:match("^%s*(127%.0%.0%.1)%s+(.+)$")
        for n in (rest or ""):gmatch("%S+") do
          if addr and n ~= "localhost" and not name then name = n end
        end
      end
      if f then f:close() end
      if not name then pending("no name for 127.0.0.1 in /etc/hosts") return end
      local rows = assert(pg.pool(URL:gsub("@127%.0%.0%.1:", "@" .. name .. ":"), { max = 1 }):query("SELECT 2 AS two"))
      assert.equals(2, rows[1].two)
      local _, err = pg.pool(URL:gsub("@127%.0%.0%.1:", "@no-such-host.invalid:"), { max = 1,
        connect_timeout_ms = 3000 }):query("SELECT 1")
      assert.equals("connect_failed", err.name)
    end)

    it("times out a connect to a server that never answers, while the loop runs on", function()
      ffi.cdef [[
        struct nv_spec_sin { uint16_t family; uint16_t port; uint32_t addr; uint8_t zero[8]; };
        int socket(int, int, int); int bind(int, const void *, uint32_t); int listen(int, int);
        int getsockname(int, void *, uint32_t *); int close(int);
      ]]
      local fd = ffi.C.socket(2, 1, 0)
      local sin = ffi.new("struct nv_spec_sin", { family = 2, addr = 0x0100007f })
      assert(ffi.C.bind(fd, sin, ffi.sizeof(sin)) == 0 and ffi.C.listen(fd, 8) == 0)
      local len = ffi.new("uint32_t[1]", ffi.sizeof(sin))
      ffi.C.getsockname(fd, sin, len)
      local port = bit.bor(bit.lshift(bit.band(sin.port, 0xff), 8), bit.rshift(sin.port, 8))
      local ticks = 0
      local id = nuvion.timer.every(10, function() ticks = ticks + 1 end)
      local t0 = nuvion.monotonic_ms()
      local rows, err = pg.pool("postgres://u:p@127.0.0.1:" .. port .. "/db", { max = 1,
        connect_timeout_ms = 300 }):query("SELECT 1")
      nuvion.timer.cancel(id)
      ffi.C.close(fd)
      assert.is_nil(rows)
      assert.equals("connect_failed", err.name)
      assert.is_true(nuvion.monotonic_ms() - t0 < 2000)
      assert.is_true(ticks >= 10, "the loop was blocked")
    end)

    it("fails every waiter at once when the server refuses connections", function()
      local dead = pg.pool("postgres://u:p@127.0.0.1:1/db", { max = 2, pool_timeout_ms = 5000 })
      local t0 = nuvion.monotonic_ms()
      local out = concurrently(3, function() return dead:query("SELECT 1") end)
      for i = 1, 3 do assert.equals("connect_failed", out[i][2].name) end
      assert.is_true(nuvion.monotonic_ms() - t0 < 2000)
    end)

    it("reads a large result over TLS in full", function()
      local rows = assert(pg.pool(SSL_URL, { max = 1 }):query(
        "SELECT g, md5(g::text) AS h FROM generate_series(1, 30000) g"))
      assert.equals(30000, #rows)
      assert.equals(30000, rows[30000].g)
      assert.equals("c4ca4238a0b923820dcc509a6f75849b", rows[1].h)
    end)

    it("honours connect_timeout from the URL", function()
      local p = pg.pool(url_with(URL, "connect_timeout", "7"), { max = 1 })
      assert.equals(1, assert(p:query("SELECT 1 AS one"))[1].one)
    end)
  end)
end)
