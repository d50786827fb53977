-- errors.lua -- outcome tables and the one error shape of the API:
--   {"error":{"type","code","message","param","request_id"}}
--
--   local errors = require "nuvion.api.errors"
--   return errors.not_found("customer", id)            -- an outcome a handler returns
--   return errors.invalid("parameter_invalid", "Must be positive.", "amount")
--   errors.encode(outcome, req.id)                     -- the JSON text of its body
--
-- An outcome is a table { status, code, message, param?, type?, errors? }. Without `type`, the
-- status decides it: 401 authentication_error, 403 permission_error, 429 rate_limit_error,
-- 5xx api_error, anything else invalid_request_error. `errors` (validation) lists every field
-- at fault; the body carries the first, as `param`.
local json = require "nuvion.json"

local type, error, tostring, getmetatable, find = type, error, tostring, getmetatable, string.find
local encode = json.encode

local _M = {}

_M.TYPES = {
  invalid_request_error = true, -- the request is wrong: fix it before sending it again
  api_error = true,             -- our side failed: safe to retry with the same Idempotency-Key
  authentication_error = true,  -- no valid key or token
  permission_error = true,      -- valid key, missing scope
  idempotency_error = true,     -- the Idempotency-Key was reused with other parameters, or is busy
  rate_limit_error = true,      -- too many requests: wait Retry-After seconds
  card_error = true,            -- a card was declined (later services)
}

_M.ERR_INTERNAL = "The server failed to handle this request; quote the request_id when reporting it."
_M.ERR_UNAVAILABLE = "A service this request needs is unavailable; retry with the same Idempotency-Key."
_M.ERR_RATE_LIMITED = "Too many requests; retry after the number of seconds in Retry-After."

local function type_of(outcome)
  if outcome.type then return outcome.type end
  local s = outcome.status
  if s == 401 then return "authentication_error" end
  if s == 403 then return "permission_error" end
  if s == 429 then return "rate_limit_error" end
  if s >= 500 then return "api_error" end
  return "invalid_request_error"
end
_M.type_of = type_of

-- An outcome. Raises on a caller's bug (a status that is not an error, an unknown type).
function _M.new(status, code, message, param, etype)
  if type(status) ~= "number" or status < 400 or status > 599 then
    error("an error outcome needs a 4xx or 5xx status, got " .. tostring(status), 2)
  end
  if type(code) ~= "string" or type(message) ~= "string" then
    error("an error outcome needs a code and a message", 2)
  end
  if etype ~= nil and not _M.TYPES[etype] then error("unknown error type " .. tostring(etype), 2) end
  return { status = status, code = code, message = message, param = param, type = etype }
end
local new = _M.new

function _M.is_outcome(v)
  return type(v) == "table" and type(v.status) == "number" and type(v.code) == "string"
    and getmetatable(v) == nil
end

-- 400 invalid_request_error
function _M.invalid(code, message, param)
  return new(400, code, message, param, "invalid_request_error")
end

function _M.missing(param)
  return new(400, "parameter_missing", "Missing required parameter: " .. param .. ".", param,
             "invalid_request_error")
end

-- 404 resource_missing, the same whether the object does not exist or belongs to someone else.
-- The id is echoed only when it looks like one (never arbitrary bytes from a path).
function _M.not_found(kind, id, param)
  local shown = type(id) == "string" and #id <= 64 and find(id, "^[%w_%-]+$") and (": '" .. id .. "'")
  return new(404, "resource_missing", "No such " .. kind .. (shown or "") .. ".",
             param or "id", "invalid_request_error")
end

function _M.authentication(code, message)
  return new(401, code, message, nil, "authentication_error")
end

function _M.permission(code, message)
  return new(403, code, message, nil, "permission_error")
end

function _M.idempotency(status, code, message)
  return new(status, code, message, nil, "idempotency_error")
end

function _M.rate_limited()
  return new(429, "rate_limited", _M.ERR_RATE_LIMITED, nil, "rate_limit_error")
end

function _M.internal(message)
  return new(500, "internal_error", message or _M.ERR_INTERNAL, nil, "api_error")
end

function _M.unavailable(message)
  return new(503, "service_unavailable", message or _M.ERR_UNAVAILABLE, nil, "api_error")
end

-- The body table of an outcome.
function _M.body(outcome, request_id)
  return { error = {
    type = type_of(outcome),
    code = outcome.code,
    message = outcome.message,
    param = outcome.param,
    request_id = request_id,
  } }
end

-- The body's JSON text (an outcome's strings are ours or valid UTF-8 from JSON, so this
-- cannot fail on a well-formed outcome; a bad one raises).
function _M.encode(outcome, request_id)
  local s, err = encode(_M.body(outcome, request_id))
  if not s then error("error outcome not encodable: " .. err, 2) end
  return s
end

return _M
