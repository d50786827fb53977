-- routes/keys.lua -- a partner's secret API keys: create (the secret shown once), list, get,
-- roll (the old key keeps working for a grace period), revoke (at once). Every route works
-- within the caller's partner and mode: a test key sees and touches test keys only.
--
--   POST /v1/api_keys                 { name, scopes? }                 api_keys:write
--   GET  /v1/api_keys                 ?limit&starting_after&ending_before  api_keys:read
--   GET  /v1/api_keys/:id                                               api_keys:read
--   POST /v1/api_keys/:id/roll        { expires_in? } (grace, seconds)  api_keys:write
--   POST /v1/api_keys/:id/revoke                                        api_keys:write
--
-- Create and roll take no Idempotency-Key: the stored response would hold the secret, which
-- exists nowhere but in the one answer that shows it (a retry makes another key; the first
-- can be revoked).
local api = require "nuvion.api"
local auth = require "nuvion.auth"
local keys = require "nuvion.auth.keys"
local config = require "nuvion.auth.config"

local ipairs = ipairs
local errors = api.errors

local ROLL_GRACE_MAX_S = 7 * 86400

local _M = { ROLL_GRACE_MAX_S = ROLL_GRACE_MAX_S }

local SCOPE = { type = "string", min_length = 1, max_length = 64, pattern = "^[%w_:%.%*%-]+$",
                description = "A scope, such as customers:write; * is every scope." }

_M.CREATE = { type = "object", properties = {
  name = { type = "string", required = true, min_length = 1, max_length = 200,
           description = "What the key is for.", example = "backend" },
  scopes = { type = "array", max_items = 32, items = SCOPE,
             description = "The scopes of the new key (a subset of the caller's); the caller's by default." },
  mode = { type = "string", enum = { "test", "live" },
           description = "The mode of the new key: the caller's own (a test key makes test keys)." },
} }

_M.ROLL = { type = "object", properties = {
  expires_in = { type = "integer", minimum = 0, maximum = ROLL_GRACE_MAX_S,
                 description = "Seconds the old key keeps working (default NUVION_API_KEY_ROLL_GRACE_S, 24 h)." },
} }

local function check_scopes(p, scopes)
  if scopes == nil then return p.scopes end
  for _, s in ipairs(scopes) do
    if not auth.has_scope(p, s) then
      return nil, errors.new(403, "insufficient_scope", "A key cannot grant the scope '" .. s
        .. "', which the caller lacks.", "scopes")
    end
  end
  return scopes
end

function _M.register(app, deps)
  auth.use_core(deps.db)
  local routes = api.new(app, deps)
  local db = deps.db

  routes:post("/v1/api_keys", { scope = "api_keys:write", schema = _M.CREATE, audit = "api_key.create",
                                idempotent = false }, function(ctx)
    local p, b = ctx.principal, ctx.body
    if b.mode ~= nil and b.mode ~= p.mode then
      return errors.invalid("parameter_invalid", "A " .. p.mode .. " key creates " .. p.mode .. " keys only.", "mode")
    end
    local scopes, serr = check_scopes(p, b.scopes)
    if not scopes then return serr end
    local row, secret = keys.create(db, p.partner_id, p.mode, { name = b.name, scopes = scopes })
    if not row then return secret end
    local obj = keys.object(row)
    obj.secret = secret
    return 201, obj
  end)

  routes:get("/v1/api_keys", { scope = "api_keys:read", list = "key" }, function(ctx)
    local p = ctx.principal
    local res, err = api.list.fetch(db, { from = "api_keys", columns = keys.COLUMNS, url = "/v1/api_keys",
      where = "partner_id = $1 AND mode = $2", args = { p.partner_id, p.mode } }, ctx.page, keys.object)
    if not res then return keys.db_error(err) end
    return 200, res
  end)

  routes:get("/v1/api_keys/:id", { scope = "api_keys:read" }, function(ctx)
    local p = ctx.principal
    local row, err = keys.get(db, p.partner_id, p.mode, ctx.req.params.id)
    if not row then return err end
    return 200, keys.object(row)
  end)

  routes:post("/v1/api_keys/:id/roll", { scope = "api_keys:write", schema = _M.ROLL, audit = "api_key.roll",
                                         idempotent = false }, function(ctx)
    local p = ctx.principal
    local grace = ctx.body.expires_in or config.get("roll_grace_default_s")
    local row, secret, old = keys.roll(db, p.partner_id, p.mode, ctx.req.params.id, grace)
    if not row then return secret end
    local obj = keys.object(row)
    obj.secret = secret
    obj.previous = keys.object(old)
    return 201, obj
  end)

  routes:post("/v1/api_keys/:id/revoke", { scope = "api_keys:write", audit = "api_key.revoke" }, function(ctx)
    local p = ctx.principal
    local row, err = keys.revoke(db, p.partner_id, p.mode, ctx.req.params.id)
    if not row then return err end
    return 200, keys.object(row)
  end)
end

return _M
