-- webhook_endpoints -- a partner's webhook endpoints and their deliveries, on top of
-- nuvion.webhooks (docs/webhooks.md): every call is scoped by the key's partner and mode (the
-- endpoints' owner is "<partner>:<mode>", hooks.lua), so another partner's or another mode's
-- endpoint or delivery is 404. Secrets are shown once, in the answer that makes them: create and
-- rotate_secret take no Idempotency-Key (a stored response would keep the secret), the other
-- POSTs do.
local api = require "nuvion.api"
local json = require "nuvion.json"
local hooks = require "hooks"
local log = require "nuvion.log"

local errors = api.errors
local type, tonumber, ipairs, pairs, setmetatable, match, find = type, tonumber, ipairs, pairs, setmetatable,
  string.match, string.find

local _M = {}

local EVENT = { type = "string", min_length = 1, max_length = 100,
                pattern = "^[%*a-z][a-z0-9_.]*$", pattern_message = "an event type (customer.verified) or *" }

_M.CREATE = { type = "object", properties = {
  url = { type = "string", required = true, max_length = 2048, description = "https:// URL receiving the events." },
  enabled_events = { type = "array", required = true, min_items = 1, max_items = 100, items = EVENT },
  description = { type = "string", max_length = 500 },
} }

_M.UPDATE = { type = "object", properties = {
  url = { type = "string", max_length = 2048 },
  enabled_events = { type = "array", min_items = 1, max_items = 100, items = EVENT },
  description = { type = "string", max_length = 500 },
  enabled = { type = "boolean",
              description = "false stops deliveries; true re-enables and clears the failure streak." },
} }

_M.ROTATE = { type = "object", properties = {
  expires_in = { type = "integer", minimum = 0, maximum = 7 * 24 * 3600,
                 description = "Seconds the previous secret keeps signing (default 86400; 0: stops now)." },
} }

local ID_PATTERN = { we = "^we_%x+$", whd = "^whd_%x+$" }

local function valid_id(id, prefix)
  return type(id) == "string" and #id <= 64 and find(id, ID_PATTERN[prefix]) ~= nil
end

local function mode_of(p) return p.mode end

local function endpoint_object(ep, p)
  return { id = ep.id, object = "webhook_endpoint", url = ep.url, description = ep.description or json.null,
           enabled_events = ep.event_types, enabled = ep.enabled,
           disabled_reason = ep.disabled_reason or json.null, created = ep.created,
           livemode = mode_of(p) == "live", secret = ep.secret }
end

local function n(v) if v == nil then return json.null end return v end

local function delivery_object(d)
  local attempts = {}
  for i, a in ipairs(d.attempt_list or {}) do
    attempts[i] = { attempt = a.attempt, started_at = n(a.started_at), latency_ms = n(a.latency_ms),
                    status_code = n(a.status_code), ok = a.ok, error = n(a.error),
                    response_excerpt = n(a.response_excerpt) }
  end
  return { id = d.id, object = "webhook_delivery", endpoint = d.endpoint_id, event_id = d.event_id,
           event_type = d.event_type, status = d.status, attempts = d.attempts,
           last_status_code = n(d.last_status_code), last_error = n(d.last_error), replay_of = n(d.replay_of),
           next_attempt_at = n(d.next_attempt_at), created = d.created, attempt_list = json.array(attempts) }
end

-- A nuvion.webhooks error as an answer: its own { code, message, param } as 400, a missing
-- object as 404, a database failure as 503.
local function failed(err, kind, id)
  if type(err) == "table" and err.misconfigured then
    return errors.new(500, "webhooks_misconfigured", "Webhooks are not configured on this server (logged).")
  end
  if type(err) == "table" and err.code == "resource_missing" then return errors.not_found(kind, id) end
  if type(err) == "table" and type(err.code) == "string" and err.message then
    local param = err.param
    if param == "event_types" then param = "enabled_events" end
    if param == "expire_in_s" then param = "expires_in" end
    return errors.invalid(err.code, err.message, param)
  end
  api.log_error("webhook endpoints: " .. kind .. " failed", err)
  return errors.unavailable()
end

-- limit and starting_after or ending_before of a list (endpoints and deliveries have
-- nuvion.ids ids, not nuvion.api.ids: the same rules as nuvion.api.list, their own check).
local function page_of(args, prefix)
  local page = { limit = 10 }
  local limit = args.limit
  if limit ~= nil then
    local v = type(limit) == "string" and match(limit, "^%d+$") and #limit <= 4 and tonumber(limit)
    if not v or v < 1 or v > 100 then
      return nil, errors.invalid("parameter_invalid", "limit must be an integer from 1 to 100.", "limit")
    end
    page.limit = v
  end
  for _, k in ipairs({ "starting_after", "ending_before" }) do
    local v = args[k]
    if v ~= nil then
      if not valid_id(v, prefix) then
        return nil, errors.invalid("parameter_invalid", k .. " must be an id starting with " .. prefix .. "_.", k)
      end
      page[k] = v
    end
  end
  if page.starting_after and page.ending_before then
    return nil, errors.invalid("parameter_invalid", "Give starting_after or ending_before, not both.",
                               "ending_before")
  end
  return page
end

function _M.register(app, deps)
  local routes = api.new(app, deps)
  local db = deps.db
  local wh, why = hooks.new(db, deps.redis)
  local function owner(p) return hooks.owner(p.partner_id, p.mode) end
  if not wh then
    -- Without the secrets' keyring core still boots; these routes answer 500 (logged).
    log.error("webhook endpoints misconfigured", { error = why })
    wh = setmetatable({}, { __index = function()
      return function() return nil, { misconfigured = true } end
    end })
  end

  routes:post("/v1/webhook_endpoints", { scope = "webhook_endpoints:write", schema = _M.CREATE,
                                         audit = "webhook_endpoint.create", idempotent = false }, function(ctx)
    local b, p = ctx.body, ctx.principal
    local ep, err = wh:create_endpoint(owner(p), { url = b.url, event_types = b.enabled_events,
                                                   description = b.description })
    if not ep then return failed(err, "webhook_endpoint") end
    local _, aerr = ctx:audit(db, ep.id, nil, { url = ep.url })
    if aerr then api.log_error("webhook endpoint audit failed", aerr) end
    return 201, endpoint_object(ep, p)
  end)

  routes:get("/v1/webhook_endpoints", { scope = "webhook_endpoints:read" }, function(ctx)
    local page, perr = page_of(ctx.req.args, "we")
    if not page then return perr end
    local p = ctx.principal
    local res, err = wh:list_endpoints(owner(p), page)
    if not res then return failed(err, "webhook_endpoint") end
    local data = {}
    for i, ep in ipairs(res.data) do data[i] = endpoint_object(ep, p) end
    return 200, { object = "list", data = json.array(data), has_more = res.has_more, url = "/v1/webhook_endpoints" }
  end)

  routes:get("/v1/webhook_endpoints/:id", { scope = "webhook_endpoints:read" }, function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not valid_id(id, "we") then return errors.not_found("webhook_endpoint", id) end
    local ep, err = wh:get_endpoint(owner(p), id)
    if not ep then return failed(err, "webhook_endpoint", id) end
    return 200, endpoint_object(ep, p)
  end)

  routes:post("/v1/webhook_endpoints/:id", { scope = "webhook_endpoints:write", schema = _M.UPDATE,
                                             audit = "webhook_endpoint.update" }, function(ctx)
    local id, p, b = ctx.req.params.id, ctx.principal, ctx.body
    if not valid_id(id, "we") then return errors.not_found("webhook_endpoint", id) end
    local ep, err = wh:update_endpoint(owner(p), id, { url = b.url, event_types = b.enabled_events,
                                                       description = b.description, enabled = b.enabled })
    if not ep then return failed(err, "webhook_endpoint", id) end
    local _, aerr = ctx:audit(db, id)
    if aerr then api.log_error("webhook endpoint audit failed", aerr) end
    return 200, endpoint_object(ep, p)
  end)

  routes:delete("/v1/webhook_endpoints/:id", { scope = "webhook_endpoints:write",
                                               audit = "webhook_endpoint.delete" }, function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not valid_id(id, "we") then return errors.not_found("webhook_endpoint", id) end
    local res, err = wh:delete_endpoint(owner(p), id)
    if not res then return failed(err, "webhook_endpoint", id) end
    local _, aerr = ctx:audit(db, id)
    if aerr then api.log_error("webhook endpoint audit failed", aerr) end
    return 200, res
  end)

  routes:post("/v1/webhook_endpoints/:id/rotate_secret", { scope = "webhook_endpoints:write", schema = _M.ROTATE,
      audit = "webhook_endpoint.rotate_secret", idempotent = false }, function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not valid_id(id, "we") then return errors.not_found("webhook_endpoint", id) end
    local secret, err = wh:rotate_secret(owner(p), id, { expire_in_s = ctx.body.expires_in })
    if not secret then return failed(err, "webhook_endpoint", id) end
    local ep, gerr = wh:get_endpoint(owner(p), id)
    if not ep then return failed(gerr, "webhook_endpoint", id) end
    ep.secret = secret
    local _, aerr = ctx:audit(db, id)
    if aerr then api.log_error("webhook endpoint audit failed", aerr) end
    return 200, endpoint_object(ep, p)
  end)

  -- Deliveries of one endpoint, newest first, each with its attempts (read in one query).
  routes:get("/v1/webhook_deliveries", { scope = "webhook_endpoints:read" }, function(ctx)
    local args, p = ctx.req.args, ctx.principal
    local ep_id = args.endpoint
    if ep_id == nil then return errors.missing("endpoint") end
    if not valid_id(ep_id, "we") then return errors.not_found("webhook_endpoint", ep_id, "endpoint") end
    local rest = {}
    for k, v in pairs(args) do if k ~= "endpoint" then rest[k] = v end end
    local page, perr = page_of(rest, "whd")
    if not page then return perr end
    local ep, eerr = wh:get_endpoint(owner(p), ep_id)
    if not ep then
      if type(eerr) == "table" and eerr.code == "resource_missing" then
        return errors.not_found("webhook_endpoint", ep_id, "endpoint")
      end
      return failed(eerr, "webhook_endpoint")
    end
    local res, err = wh:list_deliveries(owner(p), ep_id, page)
    if not res then return failed(err, "webhook_delivery") end
    local data = {}
    for i, d in ipairs(res.data) do data[i] = delivery_object(d) end
    return 200, { object = "list", data = json.array(data), has_more = res.has_more,
                  url = "/v1/webhook_deliveries" }
  end)

  routes:get("/v1/webhook_deliveries/:id", { scope = "webhook_endpoints:read" }, function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not valid_id(id, "whd") then return errors.not_found("webhook_delivery", id) end
    local d, err = wh:get_delivery(owner(p), id)
    if not d then return failed(err, "webhook_delivery", id) end
    return 200, delivery_object(d)
  end)

  routes:post("/v1/webhook_deliveries/:id/replay", { scope = "webhook_endpoints:write",
                                                     audit = "webhook_delivery.replay" }, function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not valid_id(id, "whd") then return errors.not_found("webhook_delivery", id) end
    local new_id, err = wh:replay(owner(p), id)
    if not new_id then return failed(err, "webhook_delivery", id) end
    local d, derr = wh:get_delivery(owner(p), new_id)
    if not d then return failed(derr, "webhook_delivery", new_id) end
    local _, aerr = ctx:audit(db, new_id)
    if aerr then api.log_error("webhook delivery audit failed", aerr) end
    return 200, delivery_object(d)
  end)
end

return _M
