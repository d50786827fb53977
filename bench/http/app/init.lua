-- bench/http/app -- the app bench/http/run.sh measures: one route, the same bytes as the nginx
-- peer in bench/http/nginx.conf.template ({"ok":true}, application/json, Content-Length 11).
local router = require "nuvion.router"

local app = router.new()

app:get("/hello", function() return 200, { ok = true } end)

return app
