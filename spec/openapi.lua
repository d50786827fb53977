-- openapi.lua -- checks a decoded JSON value against a schema of
-- docs/openapi.yaml, so specs prove that responses match the description.
--
--   local openapi = require "spec.openapi"
--   assert(openapi.check(res.json(), "Health"))        -- true, or nil and the first mismatch
local yaml = require "lyaml"
local json = require "nuvion.json"
local nuvion = require "nuvion"

local type, pairs, ipairs, tostring, floor = type, pairs, ipairs, tostring, math.floor

local _M = {}

local doc
local function load()
  if not doc then
    local f = assert(io.open(nuvion.context().root .. "/docs/openapi.yaml", "rb"))
    doc = yaml.load(f:read("*a"))
    f:close()
  end
  return doc
end
_M.load = load

local function resolve(schema)
  while schema["$ref"] do
    local name = schema["$ref"]:match("^#/components/schemas/(.+)$")
    schema = assert(load().components.schemas[name], "unknown schema " .. schema["$ref"])
  end
  return schema
end

local function check(value, schema, path)
  schema = resolve(schema)
  local t = schema.type
  if value == json.null then
    if schema.nullable then return true end
    return nil, path .. ": null where " .. tostring(t) .. " is expected"
  end
  if t == "object" then
    if type(value) ~= "table" or getmetatable(value) == json.array_mt then
      return nil, path .. ": expected an object"
    end
    for _, name in ipairs(schema.required or {}) do
      if value[name] == nil then return nil, path .. "." .. name .. ": required" end
    end
    local props = schema.properties or {}
    for k, v in pairs(value) do
      if props[k] then
        local ok, err = check(v, props[k], path .. "." .. k)
        if not ok then return nil, err end
      elseif schema.additionalProperties == false then
        return nil, path .. "." .. tostring(k) .. ": not in the schema"
      end
    end
  elseif t == "array" then
    if type(value) ~= "table" then return nil, path .. ": expected an array" end
    for i, v in ipairs(value) do
      local ok, err = check(v, schema.items, path .. "[" .. i .. "]")
      if not ok then return nil, err end
    end
  elseif t == "integer" then
    if not ((type(value) == "number" and value == floor(value)) or json.is_int(value)) then
      return nil, path .. ": expected an integer"
    end
    if schema.minimum and type(value) == "number" and value < schema.minimum then
      return nil, path .. ": below the minimum " .. schema.minimum
    end
  elseif t == "string" then
    if type(value) ~= "string" then return nil, path .. ": expected a string" end
  elseif t == "boolean" then
    if type(value) ~= "boolean" then return nil, path .. ": expected a boolean" end
  end
  if schema.enum then
    for _, allowed in ipairs(schema.enum) do
      if allowed == value then return true end
    end
    return nil, path .. ": " .. tostring(value) .. " is not one of the enum"
  end
  return true
end

-- check(value, "SchemaName") -> true | nil, "$.path: what is wrong"
function _M.check(value, name)
  return check(value, { ["$ref"] = "#/components/schemas/" .. name }, "$")
end

return _M
