-- log.lua -- structured log lines from Lua: one JSON object a line, with the
-- request id and trace id of the running request added by the host.
--
--   log.info("payment captured", { payment_id = id, amount = 1500 })
local core = require "nuvion.core"
local json = require "nuvion.json"

local type, tostring, sub = type, tostring, string.sub
local core_log = core.log

local _M = {}

local function emit(level, msg, fields)
  if type(msg) ~= "string" then msg = tostring(msg) end
  local extra
  if fields ~= nil then
    local encoded, err = json.encode(fields)
    if encoded == nil then
      extra = '"log_error":"' .. sub(err, 1, 200):gsub('["\\]', "") .. '"'
    elseif #encoded > 2 then
      extra = sub(encoded, 2, -2) -- the members, without the braces
    end
  end
  core_log(level, msg, extra)
end

function _M.debug(msg, fields) emit("debug", msg, fields) end
function _M.info(msg, fields) emit("info", msg, fields) end
function _M.warn(msg, fields) emit("warn", msg, fields) end
function _M.error(msg, fields) emit("error", msg, fields) end

return _M
