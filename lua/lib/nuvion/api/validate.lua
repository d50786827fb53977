-- validate.lua -- request bodies checked against schemas written as data, with an error per field.
--
--   local validate = require "nuvion.api.validate"
--   local CUSTOMER = { type = "object", properties = {
--     name    = { type = "string", required = true, max_length = 200 },
--     email   = { type = "string", max_length = 254, pattern = "^[^@%s]+@[^@%s]+%.[^@%s]+$" },
--     kind    = { type = "string", enum = { "individual", "business" }, default = "individual" },
--     amount  = { type = "amount", minimum = 1 },                 -- integer, json.int or "digits"
--     address = { type = "object", properties = {
--       postal_code = { type = "string", required = true, max_length = 20 } } },
--     tags    = { type = "array", max_items = 10, items = { type = "string", max_length = 40 } },
--   } }
--   local body, outcome = validate.check(CUSTOMER, value)   -- cleaned copy, or nil and a 400
--
-- Types: object, array, string, integer, amount, boolean, id. Every node may have `required`,
-- `nullable` (JSON null accepted, kept as json.null), `default` (used when absent),
-- `description` and `example` (for the OpenAPI description). Per type:
--   string   min_length, max_length (UTF-8 characters; default 5000), pattern (a Lua pattern,
--            anchored by the schema's author), enum (list of strings)
--   integer  minimum, maximum (numbers, or strings of digits beyond 2^53). A JSON integer; one
--            beyond 2^53 arrives as json.int and is compared exactly
--   amount   an integer in minor units, exact to 38 digits: a JSON integer, a json.int or a
--            string of digits (for clients whose JSON cannot hold 2^53 and more). minimum
--            defaults to 0, maximum to 10^38 - 1 (numeric(38,0)). Cleaned to a number up to
--            2^53, a json.int beyond
--   boolean  true or false
--   id       an object id of `prefix` (nuvion.api.ids)
--   array    items (a schema), min_items, max_items (default 100)
--   object   properties (name -> schema); additional_properties false (the default: an unknown
--            member is `parameter_unknown`) or a schema for every other member (a map such as
--            metadata) with max_properties and key_max_length (default 40)
--
-- Errors: `parameter_missing` (required and absent), `parameter_invalid` (wrong type, length,
-- pattern, enum, range), `parameter_unknown`. `param` is the path of the field: `address.postal_code`,
-- `tags[2]` (0-based). Properties are visited in the byte order of their names, so the first
-- error is always the same for the same body; at most ERRORS_MAX are collected.
local json = require "nuvion.json"
local ids = require "nuvion.api.ids"

local type, pairs, ipairs, error, tostring, tonumber, getmetatable, setmetatable =
  type, pairs, ipairs, error, tostring, tonumber, getmetatable, setmetatable
local floor, huge, sort, concat = math.floor, math.huge, table.sort, table.concat
local find, sub, gsub, format = string.find, string.sub, string.gsub, string.format
local is_int, null, array_mt = json.is_int, json.null, json.array_mt

local _M = {}

_M.ERRORS_MAX = 20                   -- errors collected for one body
_M.STRING_CHARS_DEFAULT = 5000       -- max_length of a string that sets none
_M.ARRAY_ITEMS_DEFAULT = 100         -- max_items of an array that sets none
_M.MAP_PROPERTIES_DEFAULT = 50       -- max_properties of a map that sets none
_M.KEY_CHARS_DEFAULT = 40            -- key_max_length of a map that sets none
_M.AMOUNT_MAX = "99999999999999999999999999999999999999" -- 10^38 - 1
local EXACT_MAX = "9007199254740992" -- 2^53: numbers up to it are exact

local ERR_TYPE = {
  string = "Must be a string.", integer = "Must be an integer.", boolean = "Must be a boolean.",
  object = "Must be an object.", array = "Must be an array.",
  amount = "Must be an integer amount in minor units (a JSON integer or a string of digits).",
  id = "Must be an id.",
}
_M.ERR_TYPE = ERR_TYPE
_M.ERR_NULL = "Must not be null."
_M.ERR_EMPTY = "Must not be empty."

-- ---- exact integers: a sign and a string of digits ----

-- The decimal digits of an integer value (number, json.int, or for amounts a string of
-- digits), "-" first when negative; nil when it is none.
local function digits_of(v, strings_ok)
  local tv = type(v)
  if tv == "number" then
    if v ~= v or v == huge or v == -huge or v ~= floor(v) then return nil end
    if v > 2 ^ 53 or v < -(2 ^ 53) then return nil end -- came through a float: not exact
    return format("%.0f", v)
  elseif is_int(v) then
    return tostring(v)
  elseif tv == "string" and strings_ok then
    if v == "0" or ((find(v, "^-?[1-9]%d*$")) and #v <= 40) then return v end
  end
  return nil
end

-- -1, 0, 1 as a < b, a == b, a > b, for two digit strings.
local function compare(a, b)
  local na, nb = sub(a, 1, 1) == "-", sub(b, 1, 1) == "-"
  if na ~= nb then return na and -1 or 1 end
  if na then a, b = sub(a, 2), sub(b, 2) end
  local c
  if #a ~= #b then c = #a < #b and -1 or 1
  elseif a == b then c = 0
  else c = a < b and -1 or 1 end
  return na and -c or c
end
_M.compare = compare

local function bound(v)
  if v == nil then return nil end
  local d = digits_of(v, true)
  if not d then error("schema bound must be an integer or a string of digits: " .. tostring(v), 3) end
  return d
end

-- A number when exact, else a json.int.
local function exact(d)
  local mag = sub(d, 1, 1) == "-" and sub(d, 2) or d
  if compare(mag, EXACT_MAX) <= 0 then return tonumber(d) end
  return json.int(d)
end
_M.exact = exact

-- ---- the walk ----

local function utf8_len(s)
  local _, cont = gsub(s, "[\128-\191]", "")
  return #s - cont
end

local function add(errs, code, param, message)
  if #errs < _M.ERRORS_MAX then
    errs[#errs + 1] = { code = code, param = param, message = message }
  end
end

local function child(path, name)
  if path == "" then return name end
  return path .. "." .. name
end

local function is_object(v)
  return type(v) == "table" and not is_int(v) and getmetatable(v) ~= array_mt
end

local function is_array(v)
  if type(v) ~= "table" then return false end
  local mt = getmetatable(v)
  if mt == array_mt then return true end
  if mt ~= nil then return false end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  -- a plain non-empty table with keys 1..n (Lua callers; an empty one is JSON's {}: json.array())
  return n > 0 and n == #v
end

local function by_name(a, b) return tostring(a) < tostring(b) end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  sort(keys, by_name)
  return keys
end

local check

local function check_string(s, v, path, errs)
  if type(v) ~= "string" then return add(errs, "parameter_invalid", path, ERR_TYPE.string) end
  if s.enum then
    for _, allowed in ipairs(s.enum) do
      if v == allowed then return v end
    end
    return add(errs, "parameter_invalid", path, "Must be one of: " .. concat(s.enum, ", ") .. ".")
  end
  local n = utf8_len(v)
  local min = s.min_length or (s.required and 1 or 0)
  if n < min then
    return add(errs, "parameter_invalid", path,
               min == 1 and _M.ERR_EMPTY or format("Must be at least %d characters.", min))
  end
  local max = s.max_length or _M.STRING_CHARS_DEFAULT
  if n > max then return add(errs, "parameter_invalid", path, format("Must be at most %d characters.", max)) end
  if s.pattern and not find(v, s.pattern) then
    return add(errs, "parameter_invalid", path, s.pattern_message or "Has an invalid format.")
  end
  return v
end

local function check_integer(s, v, path, errs, amount)
  local d = digits_of(v, amount)
  if not d then return add(errs, "parameter_invalid", path, ERR_TYPE[s.type]) end
  local min = bound(s.minimum) or (amount and "0" or nil)
  local max = bound(s.maximum) or (amount and _M.AMOUNT_MAX or nil)
  if min and compare(d, min) < 0 then
    return add(errs, "parameter_invalid", path, "Must be at least " .. min .. ".")
  end
  if max and compare(d, max) > 0 then
    return add(errs, "parameter_invalid", path, "Must be at most " .. max .. ".")
  end
  return exact(d)
end

local function check_array(s, v, path, errs)
  if not is_array(v) then
    return add(errs, "parameter_invalid", path, ERR_TYPE.array)
  end
  local n = #v
  if s.min_items and n < s.min_items then
    return add(errs, "parameter_invalid", path, format("Must have at least %d items.", s.min_items))
  end
  local max = s.max_items or _M.ARRAY_ITEMS_DEFAULT
  if n > max then return add(errs, "parameter_invalid", path, format("Must have at most %d items.", max)) end
  local out = setmetatable({}, array_mt)
  for i = 1, n do
    out[i] = check(s.items, v[i], path .. "[" .. (i - 1) .. "]", errs)
  end
  return out
end

local function check_object(s, v, path, errs)
  if not is_object(v) then return add(errs, "parameter_invalid", path, ERR_TYPE.object) end
  local out = {}
  local props = s.properties or {}
  for _, name in ipairs(sorted_keys(props)) do
    local r = check(props[name], v[name], child(path, name), errs)
    if r ~= nil then out[name] = r end
  end
  local extra = s.additional_properties
  local count, max = 0, s.max_properties or _M.MAP_PROPERTIES_DEFAULT
  for _, k in ipairs(sorted_keys(v)) do
    if props[k] == nil then
      local kpath = child(path, tostring(k))
      if type(extra) ~= "table" then
        add(errs, "parameter_unknown", kpath, "Received unknown parameter: " .. kpath .. ".")
      else
        count = count + 1
        if count > max then
          add(errs, "parameter_invalid", path, format("Must have at most %d keys.", max))
          break
        end
        if type(k) ~= "string" or #k == 0 or utf8_len(k) > (s.key_max_length or _M.KEY_CHARS_DEFAULT) then
          add(errs, "parameter_invalid", kpath, format("Keys must be 1 to %d characters.",
                                                        s.key_max_length or _M.KEY_CHARS_DEFAULT))
        else
          out[k] = check(extra, v[k], kpath, errs)
        end
      end
    end
  end
  return out
end

local function check_id(s, v, path, errs)
  if type(v) ~= "string" or not ids.valid(v, s.prefix) then
    return add(errs, "parameter_invalid", path,
               s.prefix and ("Must be an id starting with " .. s.prefix .. "_.") or ERR_TYPE.id)
  end
  return v
end

local CHECKS = {
  string = check_string,
  integer = function(s, v, path, errs) return check_integer(s, v, path, errs, false) end,
  amount = function(s, v, path, errs) return check_integer(s, v, path, errs, true) end,
  boolean = function(_, v, path, errs)
    if type(v) ~= "boolean" then return add(errs, "parameter_invalid", path, ERR_TYPE.boolean) end
    return v
  end,
  array = check_array,
  object = check_object,
  id = check_id,
}
_M.TYPES = CHECKS

-- The cleaned value of v against schema s at path, or nil (errors added to errs).
check = function(s, v, path, errs)
  if v == nil then
    if s.default ~= nil then return s.default end
    if s.required then add(errs, "parameter_missing", path, "Missing required parameter: " .. path .. ".") end
    return nil
  end
  if v == null then
    if s.nullable then return null end
    return add(errs, "parameter_invalid", path, _M.ERR_NULL)
  end
  local fn = CHECKS[s.type]
  if not fn then error("schema at '" .. path .. "' has an unknown type: " .. tostring(s.type), 0) end
  return fn(s, v, path, errs)
end

-- Raises on a malformed schema (unknown type, bad bound), once, when a route is defined.
function _M.compile(s, path)
  path = path or "$"
  if type(s) ~= "table" or not CHECKS[s.type] then
    error("schema at '" .. path .. "' has an unknown type: " .. tostring(type(s) == "table" and s.type), 2)
  end
  bound(s.minimum)
  bound(s.maximum)
  if s.type == "array" then _M.compile(s.items, path .. "[]") end
  if s.type == "object" then
    for k, p in pairs(s.properties or {}) do _M.compile(p, child(path, k)) end
    if type(s.additional_properties) == "table" then _M.compile(s.additional_properties, path .. ".*") end
  end
  if s.type == "id" and s.prefix then ids.at(s.prefix, 0) end
  return s
end

-- value against schema: the cleaned copy (defaults filled, amounts exact), or nil and a 400
-- outcome naming the first field at fault, with every error (up to ERRORS_MAX) in `errors`.
function _M.check(schema, value)
  local errs = {}
  local out = check(schema, value, "", errs)
  if #errs > 0 then
    local first = errs[1]
    return nil, { status = 400, type = "invalid_request_error", code = first.code,
                  message = first.message, param = first.param ~= "" and first.param or nil,
                  errors = errs }
  end
  return out
end

-- The OpenAPI (3.0) schema of a schema, for docs/openapi.yaml.
function _M.openapi(s)
  local o = { description = s.description, example = s.example, nullable = s.nullable or nil }
  local t = s.type
  if t == "string" or t == "id" then
    o.type = "string"
    o.enum, o.minLength, o.maxLength = s.enum, s.min_length, s.max_length
    if t == "id" and s.prefix then o.pattern = "^" .. s.prefix .. "_[0-7][0-9a-hjkmnp-tv-z]{25}$" end
  elseif t == "integer" then
    o.type, o.minimum, o.maximum = "integer", tonumber(s.minimum), tonumber(s.maximum)
  elseif t == "amount" then
    o.type, o.minimum = "integer", tonumber(s.minimum or 0)
    o.description = (o.description and o.description .. " " or "")
      .. "Minor units; beyond 2^53 also as a string of digits."
  elseif t == "boolean" then
    o.type = "boolean"
  elseif t == "array" then
    o.type, o.items, o.minItems, o.maxItems = "array", _M.openapi(s.items), s.min_items,
      s.max_items or _M.ARRAY_ITEMS_DEFAULT
  elseif t == "object" then
    o.type, o.properties = "object", {}
    local req = {}
    for _, k in ipairs(sorted_keys(s.properties or {})) do
      o.properties[k] = _M.openapi(s.properties[k])
      if s.properties[k].required then req[#req + 1] = k end
    end
    if #req > 0 then o.required = req end
    if type(s.additional_properties) == "table" then
      o.additionalProperties = _M.openapi(s.additional_properties)
    else
      o.additionalProperties = false
    end
  end
  return o
end

return _M
