-- routes/keys.lua -- a partner's secret API keys: create (the secret shown once), list, get,
-- roll (the old key keeps working for a grace period), revoke (at once). Every route works
-- within the caller's partner and mode: a test key sees and touches test keys only.
--
--   POST /v1/api_keys                 { name, scopes? }              api_keys:write
--   GET  /v1/api_keys                 ?limit&starting_after&ending_before  api_keys:read
--   GET  /v1/api_keys/:id                                             api_keys:read
--   POST /v1/api_keys/:id/roll        { expires_in? } (grace, seconds) api_keys:write
--   POST /v1/api_keys/:id/revoke                                      api_keys:write
local auth = require "nuvion.auth"
local keys = require "nuvion.auth.keys"
local config = require "nuvion.auth.config"
local json = require "nuvion.json"

local type, ipairs, tonumber, match = type, ipairs, tonumber, string.match

local NAME_CHARS_MAX = 200
local SCOPES_MAX = 32
local SCOPE_CHARS_MAX = 64
local ROLL_GRACE_MAX_S = 7 * 86400
local LIST_LIMIT_MAX, LIST_LIMIT_DEFAULT = 100, 10

local _M = { ROLL_GRACE_MAX_S = ROLL_GRACE_MAX_S, SCOPES_MAX = SCOPES_MAX }

local function bad(param, message)
  return { status = 400, code = "parameter_invalid", param = param, message = message }
end

-- The JSON body, or {} when there is none.
local function body(req)
  if req.body == "" then return {} end
  return req:json()
end

local function principal(req, deps, scope)
  local p, err = auth.authenticate(req, deps)
  if not p then return nil, err end
  local ok, serr = auth.require_scope(p, scope)
  if not ok then return nil, serr end
  return p
end

-- scopes: a list of distinct scope names, each held by the caller (no key grants more than
-- the key that made it).
local function check_scopes(p, scopes)
  if scopes == nil then return p.scopes end
  if type(scopes) ~= "table" or getmetatable(scopes) ~= json.array_mt then
    return nil, bad("scopes", "scopes must be an array of strings.")
  end
  if #scopes > SCOPES_MAX then return nil, bad("scopes", "At most " .. SCOPES_MAX .. " scopes.") end
  for _, s in ipairs(scopes) do
    if type(s) ~= "string" or #s > SCOPE_CHARS_MAX or not match(s, "^[%w_:%.%*%-]+$") then
      return nil, bad("scopes", "Each scope is 1 to " .. SCOPE_CHARS_MAX .. " characters of [A-Za-z0-9_:.*-].")
    end
    if not auth.has_scope(p, s) then
      return nil, { status = 403, code = "insufficient_scope", param = "scopes",
                    message = "A key cannot grant the scope '" .. s .. "', which the caller lacks." }
    end
  end
  return scopes
end

local function create(deps)
  return function(req)
    local p, err = principal(req, deps, "api_keys:write")
    if not p then return err end
    local b, berr = body(req)
    if not b then return berr end
    if type(b.name) ~= "string" or #b.name < 1 or #b.name > NAME_CHARS_MAX then
      return bad("name", "name is required: a string of 1 to " .. NAME_CHARS_MAX .. " bytes.")
    end
    if b.mode ~= nil and b.mode ~= p.mode then
      return bad("mode", "A " .. p.mode .. " key creates " .. p.mode .. " keys only.")
    end
    local scopes, serr = check_scopes(p, b.scopes)
    if not scopes then return serr end
    local row, secret = keys.create(deps.db, p.partner_id, p.mode, { name = b.name, scopes = scopes })
    if not row then return secret end
    local obj = keys.object(row)
    obj.secret = secret
    return 201, obj
  end
end

local function list(deps)
  return function(req)
    local p, err = principal(req, deps, "api_keys:read")
    if not p then return err end
    local args = req.args
    local limit = LIST_LIMIT_DEFAULT
    if args.limit ~= nil then
      limit = tonumber(args.limit)
      if not limit or limit % 1 ~= 0 or limit < 1 or limit > LIST_LIMIT_MAX then
        return bad("limit", "limit must be an integer from 1 to " .. LIST_LIMIT_MAX .. ".")
      end
    end
    for _, name in ipairs({ "starting_after", "ending_before" }) do
      if args[name] ~= nil and (type(args[name]) ~= "string" or not match(args[name], "^key_[0-9a-z]+$")) then
        return bad(name, name .. " must be an API key id.")
      end
    end
    local rows, has_more = keys.list(deps.db, p.partner_id, p.mode, limit, args.starting_after, args.ending_before)
    if not rows then return has_more end
    local data = {}
    for i, row in ipairs(rows) do data[i] = keys.object(row) end
    return 200, { object = "list", url = "/v1/api_keys", data = json.array(data), has_more = has_more }
  end
end

local function get(deps)
  return function(req)
    local p, err = principal(req, deps, "api_keys:read")
    if not p then return err end
    local row, gerr = keys.get(deps.db, p.partner_id, p.mode, req.params.id)
    if not row then return gerr end
    return 200, keys.object(row)
  end
end

local function roll(deps)
  return function(req)
    local p, err = principal(req, deps, "api_keys:write")
    if not p then return err end
    local b, berr = body(req)
    if not b then return berr end
    local grace = b.expires_in
    if grace == nil then
      grace = config.get("roll_grace_default_s")
    elseif type(grace) ~= "number" or grace % 1 ~= 0 or grace < 0 or grace > ROLL_GRACE_MAX_S then
      return bad("expires_in", "expires_in is the grace period in seconds, 0 to " .. ROLL_GRACE_MAX_S .. ".")
    end
    local row, secret, old = keys.roll(deps.db, p.partner_id, p.mode, req.params.id, grace)
    if not row then return secret end
    local obj = keys.object(row)
    obj.secret = secret
    obj.previous = keys.object(old)
    return 201, obj
  end
end

local function revoke(deps)
  return function(req)
    local p, err = principal(req, deps, "api_keys:write")
    if not p then return err end
    local row, rerr = keys.revoke(deps.db, p.partner_id, p.mode, req.params.id)
    if not row then return rerr end
    return 200, keys.object(row)
  end
end

function _M.register(app, deps)
  auth.use_core(deps.db)
  app:post("/v1/api_keys", create(deps))
  app:get("/v1/api_keys", list(deps))
  app:get("/v1/api_keys/:id", get(deps))
  app:post("/v1/api_keys/:id/roll", roll(deps))
  app:post("/v1/api_keys/:id/revoke", revoke(deps))
end

return _M
