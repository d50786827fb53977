-- The customer's endpoint of bench/webhooks: verifies the signature (as a receiver should) and
-- answers 200, or 400 on a bad signature (the bench counts those as failures).
local router = require "nuvion.router"
local webhooks = require "nuvion.webhooks"

local SECRET = assert(os.getenv("BENCH_WEBHOOK_SECRET"))
local app = router.new()

app:post("/hook", function(req)
  local ok, err = webhooks.verify(req.headers["nuvion-signature"], req.body, SECRET)
  if not ok then return 400, { error = err } end
  return 200, "ok"
end)

return app
