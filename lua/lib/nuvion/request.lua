-- request.lua -- the request object handed to route handlers.
--
--   req.method, req.path, req.params (route parameters), req.query (raw query
--   string or nil), req.id (request id), req.trace_id
--   req.args     query parameters, decoded (a repeated key gives a list)
--   req.headers  header names in lower case (repeated headers joined by ", ")
--   req.body     the raw body (a string, "" when none)
--   req:json()   the body decoded as JSON, or nil and an error outcome (400)
-- id, trace_id, args, headers and body are read from the host on first use
-- only, and only by the request's own task (read them before handing the
-- request to another task).
local core = require "nuvion.core"
local json = require "nuvion.json"

local setmetatable, rawset, type, tonumber = setmetatable, rawset, type, tonumber
local gsub, char, find, sub = string.gsub, string.char, string.find, string.sub
local req_headers, req_body, req_ids = core.req_headers, core.req_body, core.req_ids

local ERR_INVALID_JSON = "The request body is not valid JSON: "
local ERR_NOT_OBJECT = "The request body must be a JSON object."

local _M = {}

local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end
_M.unescape = unescape

-- Decodes "a=1&b=x%20y&a=2" into { a = { "1", "2" }, b = "x y" }.
function _M.parse_query(q)
  local args = {}
  if q == nil or q == "" then return args end
  local pos, len = 1, #q
  while pos <= len do
    local amp = find(q, "&", pos, true) or len + 1
    local pair = sub(q, pos, amp - 1)
    if pair ~= "" then
      local eq = find(pair, "=", 1, true)
      local k = unescape(eq and sub(pair, 1, eq - 1) or pair)
      local v = eq and unescape(sub(pair, eq + 1)) or ""
      local prev = args[k]
      if prev == nil then
        args[k] = v
      elseif type(prev) == "table" then
        prev[#prev + 1] = v
      else
        args[k] = { prev, v }
      end
    end
    pos = amp + 1
  end
  return args
end

local function load_ids(req)
  local id, trace_id = req_ids(req._h, req._seq)
  rawset(req, "trace_id", trace_id)
  return id
end

local lazy = {
  id = load_ids,
  trace_id = function(req)
    local id = load_ids(req)
    rawset(req, "id", id)
    return req.trace_id
  end,
  headers = function(req) return req_headers(req._h, req._seq) end,
  body = function(req) return req_body(req._h, req._seq) end,
  args = function(req) return _M.parse_query(req.query) end,
}

local mt = {}
mt.__index = function(req, key)
  local load = lazy[key]
  if load then
    local v = load(req)
    rawset(req, key, v)
    return v
  end
  return _M[key]
end

function _M.new(method, path, query, handle, seq)
  return setmetatable({ method = method, path = path, query = query, _h = handle, _seq = seq }, mt)
end

-- The body as JSON. Returns the value, or nil and a 400 outcome for the handler
-- to return as it is.
function _M.json(req)
  local body = req.body
  local value, err = json.decode(body)
  if value == nil then
    return nil, { status = 400, type = "invalid_request_error", code = "invalid_json",
                  message = ERR_INVALID_JSON .. err }
  end
  if type(value) ~= "table" or json.is_int(value) or getmetatable(value) == json.array_mt then
    return nil, { status = 400, type = "invalid_request_error", code = "invalid_json",
                  message = ERR_NOT_OBJECT }
  end
  return value
end

function _M.header(req, name)
  return req.headers[name]
end

return _M
