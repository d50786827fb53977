-- nuvion.providers.kyc -- the client of the KYC/KYB provider (in development and tests: the
-- simulator lua/sandbox/kyc, whose REST API this speaks; docs/customers.md).
--
--   local kyc = require "nuvion.providers.kyc"
--   local client = assert(kyc.from_env())      -- NUVION_KYC_URL, NUVION_KYC_API_KEY, NUVION_KYC_TIMEOUT_MS
--   local check, err = client:submit({ reference = "kyc_...", kind = "individual", first_name = ...,
--                                      last_name = ..., date_of_birth = ..., document = { type, number, country } })
--   local check, err = client:fetch(check.id)
--   -- check = { id, reference, status = "processing"|"clear"|"rejected"|"consider",
--   --           result = nil|"verified"|"rejected"|"action_required", result_codes = { ... } }
--   -- err   = { code = "timeout"|"unavailable"|"refused"|"bad_response", message, retryable }
--
-- submit is idempotent on `reference` at the provider: a retry after a timeout gets the same
-- check. Errors never carry the request body (it holds PII).
--
-- Callbacks: with NUVION_KYC_CALLBACK_URL set (core's public URL of POST
-- /v1/providers/kyc/events), every submission names it as its `callback_url`, and the provider
-- POSTs check.completed there, signed with the shared secret kyc.webhook_secret() gives
-- (NUVION_KYC_WEBHOOK_SECRET; in development and tests kyc.DEV_WEBHOOK_SECRET, the simulator's
-- default): header Kyc-Signature "t=<unix s>,v1=<hex HMAC-SHA256(secret, t .. "." .. body)>".
local http = require "nuvion.http"
local json = require "nuvion.json"

local type, tonumber, os, setmetatable, format = type, tonumber, os.getenv, setmetatable, string.format

local _M = {}

_M.DEV_API_KEY = "kyc_sim_development_key"
_M.DEFAULT_URL = "http://127.0.0.1:5950"
_M.DEFAULT_TIMEOUT_MS = 5000
_M.DEV_WEBHOOK_SECRET = "kyc_sim_development_webhook_secret"
_M.WEBHOOK_SECRET_MIN = 16
_M.SIGNATURE_HEADER = "Kyc-Signature"

-- The provider's status -> the customer's state it leads to (nil: not final yet).
_M.RESULTS = { clear = "verified", rejected = "rejected", consider = "action_required" }

local Client = {}
Client.__index = Client

-- opts: url (base, no trailing slash), api_key, timeout_ms, callback_url (optional).
function _M.new(opts)
  if type(opts) ~= "table" or type(opts.url) ~= "string" or type(opts.api_key) ~= "string" then
    error("kyc.new: url and api_key are required", 2)
  end
  return setmetatable({ url = opts.url:gsub("/+$", ""), api_key = opts.api_key, callback_url = opts.callback_url,
                        timeout_ms = opts.timeout_ms or _M.DEFAULT_TIMEOUT_MS }, Client)
end

local function is_development()
  local env = os("NUVION_ENV")
  return env == "development" or env == "test"
end

-- The secret the provider signs its callbacks with: NUVION_KYC_WEBHOOK_SECRET (at least
-- WEBHOOK_SECRET_MIN bytes), or in development and tests DEV_WEBHOOK_SECRET. nil, why when none.
function _M.webhook_secret()
  local s = os("NUVION_KYC_WEBHOOK_SECRET")
  if s and s ~= "" then
    if #s < _M.WEBHOOK_SECRET_MIN then
      return nil, "NUVION_KYC_WEBHOOK_SECRET must be at least " .. _M.WEBHOOK_SECRET_MIN .. " bytes"
    end
    return s
  end
  if is_development() then return _M.DEV_WEBHOOK_SECRET end
  return nil, "NUVION_KYC_WEBHOOK_SECRET is not set (required for callbacks unless NUVION_ENV is development or test)"
end

function _M.from_env()
  local key = os("NUVION_KYC_API_KEY")
  if (key == nil or key == "") then
    if not is_development() then
      return nil, "NUVION_KYC_API_KEY is not set (required unless NUVION_ENV is development or test)"
    end
    key = _M.DEV_API_KEY
  end
  local timeout = tonumber(os("NUVION_KYC_TIMEOUT_MS") or "") or _M.DEFAULT_TIMEOUT_MS
  if timeout < 100 or timeout > 60000 then return nil, "NUVION_KYC_TIMEOUT_MS must be from 100 to 60000" end
  local url = os("NUVION_KYC_URL")
  if url == nil or url == "" then url = _M.DEFAULT_URL end
  local callback = os("NUVION_KYC_CALLBACK_URL")
  if callback == "" then callback = nil end
  if callback and not callback:find("^https?://[^%s]+$") then
    return nil, "NUVION_KYC_CALLBACK_URL must be an http(s) URL"
  end
  return _M.new({ url = url, api_key = key, timeout_ms = timeout, callback_url = callback })
end

local function fail(code, message, retryable)
  return nil, { code = code, message = message, retryable = retryable }
end

local function decode_check(res, want)
  if res.status >= 500 then return fail("unavailable", "KYC provider answered " .. res.status, true) end
  if res.status ~= want and not (want == 201 and res.status == 200) then
    return fail("refused", "KYC provider answered " .. res.status, false)
  end
  local body = json.decode(res.body)
  if type(body) ~= "table" or type(body.id) ~= "string" or type(body.status) ~= "string" then
    return fail("bad_response", "KYC provider answered something that is not a check", true)
  end
  if body.status ~= "processing" and not _M.RESULTS[body.status] then
    return fail("bad_response", "KYC provider answered an unknown status", true)
  end
  body.result = _M.RESULTS[body.status]
  if type(body.result_codes) ~= "table" then body.result_codes = {} end
  return body
end

function Client:call(method, path, body)
  local res, err = http.request({ method = method, url = self.url .. path, timeout = self.timeout_ms,
    headers = { Authorization = "Bearer " .. self.api_key, ["Content-Type"] = "application/json",
                Accept = "application/json" }, body = body })
  if not res then
    if err == http.ERR_TIMEOUT then return fail("timeout", "KYC provider timed out", true) end
    return fail("unavailable", format("KYC provider unreachable: %s", err), true)
  end
  return res
end

-- A new check. The payload: reference (our verification id), kind, and the identity; the
-- client's callback_url is added when it has one.
function Client:submit(payload)
  if self.callback_url and payload.callback_url == nil then payload.callback_url = self.callback_url end
  local body = assert(json.encode(payload))
  local res, err = self:call("POST", "/v1/checks", body)
  if not res then return nil, err end
  return decode_check(res, 201)
end

function Client:fetch(check_id)
  if type(check_id) ~= "string" or not check_id:find("^[%w_]+$") then
    return fail("refused", "not a check id", false)
  end
  local res, err = self:call("GET", "/v1/checks/" .. check_id)
  if not res then return nil, err end
  return decode_check(res, 200)
end

return _M
