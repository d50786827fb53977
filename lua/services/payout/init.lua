-- payout -- service entry: returns the router the host serves.
local router = require "nuvion.router"
local health = require "nuvion.health"

local app = router.new()
app:get("/health", health.handler("payout"))

return app
