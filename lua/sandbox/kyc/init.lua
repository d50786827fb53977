-- sandbox/kyc -- a KYC/KYB provider simulator, served like a service:
--   REDIS_URL=... bin/nuvion serve lua/sandbox/kyc
-- It speaks the small REST API of docs/customers.md ("The KYC simulator"):
--
--   POST /v1/checks      { reference, kind, first_name, last_name, date_of_birth, document,
--                          business_name, registration_number }      -> 201 check (200 on a retry)
--   GET  /v1/checks/:id                                               -> 200 check
--   check = { id, object = "check", reference, status, result_codes, created, completed }
--
-- A check is "processing" for KYC_SIM_PROCESSING_MS (default 200) after it is made, then final.
-- The outcome comes from the test identity: the document number (individuals) or registration
-- number (businesses), and the last name:
--   ends in 0000, or last name "Verified"   clear (-> verified)
--   ends in 1111, or last name "Rejected"   rejected, code document_invalid
--   ends in 2222                            consider, code document_unreadable (-> action_required)
--   ends in 3333                            the first submission of a reference stalls
--                                           KYC_SIM_STALL_MS (default 5000) before answering, so the
--                                           caller times out; a retry is answered at once; clear
--   anything else                           clear
-- Idempotent on reference: the same reference always gives the same check. Bearer
-- KYC_SIM_API_KEY (default the development key of nuvion.providers.kyc). State in Redis
-- (KYC_SIM_REDIS_URL, else REDIS_URL), keys kycsim:*, kept 7 days.
--
-- Callbacks (push), as real providers send them: a check made with a `callback_url` (or, without
-- one, KYC_SIM_CALLBACK_URL) is POSTed there once it is final:
--   { id = "evt_...", object = "event", type = "check.completed", created,
--     data = { check = { id, reference, status, result_codes, completed } } }
-- signed in the header Kyc-Signature: "t=<unix s>,v1=<hex HMAC-SHA256(secret, t .. "." .. body)>"
-- with KYC_SIM_WEBHOOK_SECRET (default the development secret of nuvion.providers.kyc). A non-2xx
-- answer or no answer is retried KYC_SIM_CALLBACK_ATTEMPTS times in all (default 4, at most 10),
-- KYC_SIM_CALLBACK_RETRY_MS apart (default 500, doubling). Loopback URLs only (http://127.0.0.1
-- or http://localhost): a simulator never calls out. The callback is best effort (lost when the
-- simulator stops): the receiver still polls.
local router = require "nuvion.router"
local redis = require "nuvion.redis"
local nuvion = require "nuvion"
local json = require "nuvion.json"
local crypto = require "nuvion.crypto"
local http = require "nuvion.http"
local log = require "nuvion.log"

local os, tonumber, type, error, assert, floor, min, max = os, tonumber, type, error, assert, math.floor, math.min,
  math.max

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

local API_KEY = env("KYC_SIM_API_KEY", "kyc_sim_development_key")
local PROCESSING_MS = tonumber(env("KYC_SIM_PROCESSING_MS", "200"))
local STALL_MS = tonumber(env("KYC_SIM_STALL_MS", "5000"))
local TTL_S = 7 * 86400
local REDIS_URL = env("KYC_SIM_REDIS_URL", os.getenv("REDIS_URL"))
if not REDIS_URL then error("sandbox/kyc: KYC_SIM_REDIS_URL or REDIS_URL must be set", 0) end
local r = assert(redis.connect(REDIS_URL))
local WEBHOOK_SECRET = env("KYC_SIM_WEBHOOK_SECRET", "kyc_sim_development_webhook_secret")
local CALLBACK_URL = env("KYC_SIM_CALLBACK_URL", nil)
local CALLBACK_ATTEMPTS = min(10, tonumber(env("KYC_SIM_CALLBACK_ATTEMPTS", "4")))
local CALLBACK_RETRY_MS = tonumber(env("KYC_SIM_CALLBACK_RETRY_MS", "500"))
local CALLBACK_TIMEOUT_MS = 2000

local app = router.new()

local function now_ms() return floor(nuvion.now() * 1000) end

local function err(status, code, message)
  return status, { error = { code = code, message = message } }
end

local function authorized(req)
  local h = req.headers.authorization or ""
  return crypto.equal(h, "Bearer " .. API_KEY)
end

-- The outcome of an identity: status, result codes, stall.
local function outcome(b)
  local number = b.kind == "business" and b.registration_number
    or (type(b.document) == "table" and b.document.number) or ""
  local last = b.last_name or ""
  if number:find("1111$") or last == "Rejected" then return "rejected", { "document_invalid" } end
  if number:find("2222$") then return "consider", { "document_unreadable" } end
  if number:find("3333$") then return "clear", {}, true end
  return "clear", {}
end

local function view(check)
  local c = { id = check.id, object = "check", reference = check.reference, created = check.created,
              status = "processing", result_codes = json.array({}), completed = json.null }
  local done_at = check.created_ms + PROCESSING_MS
  if now_ms() >= done_at then
    c.status = check.outcome
    c.result_codes = json.array(check.codes)
    c.completed = floor(done_at / 1000)
  end
  return c
end

-- Loopback http URLs only, at most 512 bytes.
local function loopback_url(u)
  return type(u) == "string" and #u <= 512 and (u:find("^http://127%.0%.0%.1:%d+/") or u:find("^http://localhost:%d+/"))
    and true or false
end

-- "t=<ts>,v1=<hex>": HMAC-SHA256 of ts .. "." .. body under the webhook secret.
local function signature(ts, body)
  return "t=" .. ts .. ",v1=" .. crypto.hex_encode(crypto.hmac_sha256(WEBHOOK_SECRET, ts .. "." .. body))
end

-- Once check is final, POSTs check.completed to its callback URL, retrying non-2xx answers a
-- bounded number of times. Runs as its own task.
local function send_callback(check, url)
  local c = view(check)
  for _ = 1, 100 do             -- timers and the wall clock may disagree by a millisecond or two
    if c.status ~= "processing" then break end
    nuvion.sleep(max(1, check.created_ms + PROCESSING_MS - now_ms() + 1))
    c = view(check)
  end
  local body = assert(json.encode({ id = "evt_" .. crypto.hex_encode(crypto.random(12)), object = "event",
    type = "check.completed", created = floor(nuvion.now()),
    data = { check = { id = c.id, reference = c.reference, status = c.status, result_codes = c.result_codes,
                       completed = c.completed } } }))
  local wait = CALLBACK_RETRY_MS
  for attempt = 1, CALLBACK_ATTEMPTS do
    local res, herr = http.request({ method = "POST", url = url, timeout = CALLBACK_TIMEOUT_MS, body = body,
      headers = { ["Content-Type"] = "application/json", ["Kyc-Signature"] = signature(floor(nuvion.now()), body) } })
    local status = res and res.status or nil
    if status and status >= 200 and status < 300 then
      log.info("kyc callback delivered", { check = c.id, attempt = attempt, status = status })
      return
    end
    log.warn("kyc callback failed", { check = c.id, attempt = attempt, status = status, error = herr })
    if attempt < CALLBACK_ATTEMPTS then
      nuvion.sleep(wait)
      wait = wait * 2
    end
  end
end

local function load(id)
  local text = r:call("GET", "kycsim:chk:" .. id)
  if type(text) ~= "string" then return nil end
  return json.decode(text)
end

app:post("/v1/checks", function(req)
  if not authorized(req) then return err(401, "unauthorized", "A valid bearer key is required.") end
  local b = json.decode(req.body or "")
  if type(b) ~= "table" then return err(400, "invalid_json", "The body must be a JSON object.") end
  if type(b.reference) ~= "string" or not b.reference:find("^[%w_%-]+$") or #b.reference > 64 then
    return err(400, "invalid_reference", "reference: 1 to 64 letters, digits, _ or -.")
  end
  if b.kind ~= "individual" and b.kind ~= "business" then
    return err(400, "invalid_kind", "kind: individual or business.")
  end
  if b.kind == "individual" and (type(b.last_name) ~= "string" or type(b.document) ~= "table"
                                  or type(b.document.number) ~= "string") then
    return err(400, "incomplete_identity", "An individual needs last_name and document.number.")
  end
  if b.kind == "business" and type(b.registration_number) ~= "string" then
    return err(400, "incomplete_identity", "A business needs registration_number.")
  end
  local callback = b.callback_url or CALLBACK_URL
  if callback ~= nil and not loopback_url(callback) then
    return err(400, "invalid_callback_url", "callback_url: a loopback http URL (http://127.0.0.1:<port>/...).")
  end
  local ref_key = "kycsim:ref:" .. b.reference
  local existing = r:call("GET", ref_key)
  if type(existing) == "string" then
    local check = load(existing)
    if check then return 200, view(check) end
  end
  local status, codes, stall = outcome(b)
  if stall and r:call("SET", "kycsim:stalled:" .. b.reference, "1", "NX", "EX", TTL_S) then
    nuvion.sleep(STALL_MS)       -- the first submission of this reference: the caller times out
  end
  local created_ms = now_ms()
  local check = { id = "chk_" .. crypto.hex_encode(crypto.random(12)), reference = b.reference,
                  created_ms = created_ms, created = floor(created_ms / 1000), outcome = status, codes = codes }
  -- One check per reference, even for two submissions at once.
  if not r:call("SET", ref_key, check.id, "NX", "EX", TTL_S) then
    local other = load(r:call("GET", ref_key) or "")
    if other then return 200, view(other) end
    return err(503, "busy", "Try again.")
  end
  r:call("SET", "kycsim:chk:" .. check.id, json.encode(check), "EX", TTL_S)
  if callback then nuvion.spawn(send_callback, check, callback) end
  return 201, view(check)
end)

app:get("/v1/checks/:id", function(req)
  if not authorized(req) then return err(401, "unauthorized", "A valid bearer key is required.") end
  local id = req.params.id
  if not id:find("^chk_[0-9a-f]+$") then return err(404, "not_found", "No such check.") end
  local check = load(id)
  if not check then return err(404, "not_found", "No such check.") end
  return 200, view(check)
end)

app:get("/health", function() return 200, { status = "ok", service = "kyc_sandbox" } end)

return app
