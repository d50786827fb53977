-- audit.lua -- the audit log: one row for every mutation, saying who (partner, mode, key or
-- token), what (action, object), when, and under which request id.
--
--   local audit = require "nuvion.api.audit"
--   db:tx(function(tx)
--     ... the change ...
--     return audit.record(tx, { principal = p, action = "customer.create", object_id = id,
--                               request_id = req.id })
--   end)
--
-- Given a transaction, the row commits or rolls back with the change it records; given a pool,
-- it is written on its own. Rows go to `api_audit_log` (sql/core/0100_api.sql) with an `aud_`
-- id; they are only ever inserted (the service's role may not update or delete them).
local ids = require "nuvion.api.ids"
local json = require "nuvion.json"

local type, error, tostring, find = type, error, tostring, string.find

local _M = {}

_M.ACTION_CHARS_MAX = 64

local INSERT = [[
INSERT INTO api_audit_log (id, partner_id, mode, actor_kind, key_id, action, object_id,
  request_id, method, path, status, data)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)]]

-- e: principal ({ partner_id, mode, key_id?, kind? }), action ("customer.create": lower-case
-- words and dots), object_id, request_id, method, path, status, data (a small table, no PII).
-- Returns the audit row's id, or nil and the database error.
function _M.record(db, e)
  local p = e.principal
  if type(p) ~= "table" or type(p.partner_id) ~= "string" or (p.mode ~= "test" and p.mode ~= "live") then
    error("audit.record needs a principal with partner_id and mode", 2)
  end
  if type(e.action) ~= "string" or #e.action > _M.ACTION_CHARS_MAX or not find(e.action, "^[a-z][a-z0-9_.]*$") then
    error("audit action must be lower-case words and dots: " .. tostring(e.action), 2)
  end
  local id = ids.new("aud")
  local stmt = { INSERT, id, p.partner_id, p.mode, p.kind or json.null,
                 p.key_id or json.null, e.action, e.object_id or json.null,
                 e.request_id or json.null, e.method or json.null,
                 e.path or json.null, e.status or json.null, e.data or json.null,
                 n = 12 }
  -- in the change's transaction: sent with its next statement or its COMMIT (tx:defer), so
  -- the row still commits with the change or not at all
  if type(db.defer) == "function" then
    db:defer(stmt)
    return id
  end
  local rows, err = db:query(stmt)
  if not rows then return nil, err end
  return id
end

return _M
