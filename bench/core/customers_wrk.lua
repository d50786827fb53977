-- bench/core/customers_wrk.lua -- wrk script of bench/core/run.sh: POST /v1/customers of an
-- individual (every PII field sealed, hashes, state change, outbox event, audit row), each
-- request with an Idempotency-Key of its own (claimed and the response stored, as a partner would).
-- luacheck: globals wrk setup init request response done
local secret = os.getenv("SECRET")
local counter = 0
local prefix = "bench"
local n = 0

function setup(thread)
  counter = counter + 1
  thread:set("index", counter)
end

local BODY = '{"first_name":"Ada","last_name":"Lovelace","date_of_birth":"1990-04-12",'
  .. '"email":"ada@example.com","phone":"+44 20 7946 0000",'
  .. '"address":{"line1":"12 Bench Street","city":"London","postal_code":"N1 9GU","country":"GB"},'
  .. '"id_document":{"type":"passport","number":"P1230000","country":"GB"}}'

function init()
  prefix = "bench-" .. os.time() .. "-" .. (rawget(_G, "index") or 1) .. "-" .. math.random(1, 1e9)
  wrk.method = "POST"
  wrk.path = "/v1/customers"
  wrk.headers["Authorization"] = "Bearer " .. secret
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = BODY
end

function request()
  n = n + 1
  wrk.headers["Idempotency-Key"] = prefix .. "-" .. n
  return wrk.format()
end

local errors = 0
function response(status)
  if status ~= 201 then
    errors = errors + 1
    if errors <= 3 then io.stderr:write("status " .. status .. "\n") end
  end
end
