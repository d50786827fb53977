-- core -- service entry: returns the router the host serves.
--
-- Every area of the API is a module routes/<area>.lua exporting register(app, deps), which adds
-- its routes with nuvion.api (docs/api.md). Add an area by writing its module and naming it in
-- AREAS, one a line.
local router = require "nuvion.router"
local health = require "nuvion.health"
local nuvion = require "nuvion"
local log = require "nuvion.log"
local api = require "nuvion.api"

local AREAS = {
  "audit_logs",
  "customers",
  "keys",
  "oauth",
  "wallets",
  "webhook_endpoints",
}

local deps = require("deps").new()
local app = router.new()
app:get("/health", health.handler("core"))

for _, area in ipairs(AREAS) do
  require("routes." .. area).register(app, deps)
end

-- Expired Idempotency-Keys go in bounded batches (an expired key is also reclaimed on use).
nuvion.timer.every(deps.config.idempotency_purge_ms, function()
  local n, err = api.idempotency.purge(deps.db)
  if not n then log.warn("idempotency purge failed", { error = tostring(err) }) end
end)

return app
