-- One database and one role per service: each role reaches its own database and no other
-- (make test and make run provision them with scripts/services.sh provision).
local pg = require "nuvion.pg"

local SERVICES = { "core", "acquiring", "payout", "account_issuing", "card_issuing", "blockchain" }

local function url_of(name)
  local url = os.getenv("NUVION_" .. name:upper() .. "_DATABASE_URL")
  assert(url, "NUVION_" .. name:upper() .. "_DATABASE_URL is not set: run the specs with make test")
  return url
end

-- url with database `to` instead of `from` (the query string, e.g. ?sslmode=disable, kept)
local function with_db(url, from, to)
  local out, n = url:gsub("/" .. from .. "(%??[^/]*)$", "/" .. to .. "%1")
  assert(n == 1, "no database " .. from .. " in the URL")
  return out
end

describe("service databases", function()
  for i, name in ipairs(SERVICES) do
    it(name .. "'s role connects to " .. name .. "'s database only", function()
      local own = pg.pool(url_of(name), { max = 1 })
      local rows = assert(own:query("SELECT current_user AS who, current_database() AS db"))
      assert.same({ name, name }, { rows[1].who, rows[1].db })
      -- the same credentials against the next service's database
      local other = SERVICES[i % #SERVICES + 1]
      local foreign = pg.pool(with_db(url_of(name), name, other), { max = 1 })
      local none, err = foreign:query("SELECT 1")
      assert.is_nil(none)
      assert.matches("permission denied for database", tostring(err), 1, true)
      assert.not_matches(url_of(name):match(":([^:@/]+)@"), tostring(err), 1, true) -- no password
    end)
  end

  it("gives the ledger its own database, reached by core's role", function()
    local ledger = pg.pool(url_of("ledger"), { max = 1 })
    local rows = assert(ledger:query("SELECT current_user AS who, current_database() AS db"))
    assert.same({ "core", "ledger" }, { rows[1].who, rows[1].db })
    local payout = pg.pool(with_db(url_of("payout"), "payout", "ledger"), { max = 1 })
    assert.is_nil((payout:query("SELECT 1")))
  end)
end)
