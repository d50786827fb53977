-- webhook_receiver -- a partner's side of core's webhooks, for local runs (README): POST /hooks
-- checks Nuvion-Signature with webhooks.verify against WEBHOOK_SECRETS (comma-separated
-- whsec_ secrets; empty: nothing verifies), logs each event and keeps the last 100 in memory;
-- GET /events lists them (oldest first), with whether the signature verified.
--
--   WEBHOOK_SECRETS=whsec_... PORT=5990 WEB_CONCURRENCY=1 bin/nuvion serve lua/sandbox/webhook_receiver
local router = require "nuvion.router"
local webhooks = require "nuvion.webhooks"
local json = require "nuvion.json"
local log = require "nuvion.log"

local KEEP = 100

local secrets = {}
for s in (os.getenv("WEBHOOK_SECRETS") or ""):gmatch("[^,%s]+") do secrets[#secrets + 1] = s end

local events = {}
local app = router.new()

app:post("/hooks", function(req)
  local body = req.body or ""
  local ok, why = false, "no WEBHOOK_SECRETS"
  if #secrets > 0 then
    local v, e = webhooks.verify(req.headers["nuvion-signature"], body, secrets)
    ok, why = v == true, e
  end
  local ev = json.decode(body)
  local rec = { verified = ok, error = why or json.null,
                signature = req.headers["nuvion-signature"] or json.null,
                delivery = req.headers["nuvion-delivery-id"] or json.null,
                type = type(ev) == "table" and ev.type or json.null,
                event = type(ev) == "table" and ev.id or json.null,
                object = type(ev) == "table" and type(ev.data) == "table" and ev.data.id or json.null }
  log.info("webhook received", { type = tostring(rec.type), event_id = tostring(rec.event),
                                 object_id = tostring(rec.object), verified = ok, error = why })
  events[#events + 1] = rec
  if #events > KEEP then table.remove(events, 1) end
  if not ok then return 400, { error = why } end
  return 200, { received = true }
end)

app:get("/events", function()
  return 200, { data = json.array(events) }
end)

return app
