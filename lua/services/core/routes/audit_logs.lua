-- audit_logs -- GET /v1/audit_logs: a partner reads its own audit log (every mutation made with
-- its keys, in the mode of the key), newest first, as a cursor list.
local api = require "nuvion.api"

local list, errors = api.list, api.errors

local _M = {}

local COLUMNS = "id, action, object_id, key_id, actor_kind, request_id, method, path, status, "
  .. "extract(epoch FROM created_at)::bigint AS created"

local function to_object(row)
  return { id = row.id, object = "audit_log", action = row.action, object_id = row.object_id,
           key_id = row.key_id, actor = row.actor_kind, request_id = row.request_id,
           method = row.method, path = row.path, status = row.status, created = row.created }
end

function _M.register(app, deps)
  local routes = api.new(app, deps)

  routes:get("/v1/audit_logs", { scope = "audit_logs:read", list = "aud" }, function(ctx)
    local p = ctx.principal
    local res, err = list.fetch(deps.db, {
      from = "api_audit_log", columns = COLUMNS, url = "/v1/audit_logs",
      where = "partner_id = $1 AND mode = $2", args = { p.partner_id, p.mode },
    }, ctx.page, to_object)
    if not res then
      api.log_error("audit log list failed", err)
      return errors.unavailable()
    end
    return 200, res
  end)
end

return _M
