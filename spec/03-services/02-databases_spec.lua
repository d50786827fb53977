-- One database and one role per service: each role reaches its own database and no other
-- (make test and make run provision them with scripts/services.sh provision).
local pg = require "nuvion.pg"

local SERVICES = { "core", "acquiring", "payout", "account_issuing", "card_issuing", "blockchain" }

local function url_of(name)
  local url = os.getenv("NUVION_" .. name:upper() .. "_DATABASE_URL")
  assert(url, "NUVION_" .. name:upper() .. "_DATABASE_URL is not set: run the specs with make test")
  return url
end

describe("service databases", function()
  for i, name in ipairs(SERVICES) do
    it(name .. "'s role connects to " .. name .. "'s database only", function()
      local own = pg.pool(url_of(name), { max = 1 })
      local rows = assert(own:query("SELECT current_user AS who, current_database() AS db"))
      assert.same({ name, name }, { rows[1].who, rows[1].db })
      -- the same credentials against the next service's database
      local other = SERVICES[i % #SERVICES + 1]
      -- (the URL may end in a query string: ?sslmode=disable)
      local foreign = pg.pool((url_of(name):gsub("/" .. name .. "(%??[^/]*)$", "/" .. other .. "%1")), { max = 1 })
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
    local payout = pg.pool((url_of("payout"):gsub("/payout(%??[^/]*)$", "/ledger%1")), { max = 1 })
    assert.is_nil((payout:query("SELECT 1")))
  end)
end)
