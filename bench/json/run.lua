-- bench/json/run.lua -- decode+encode round trips per second: nuvion.json against lua-cjson.
--
-- Run: bin/nuvion run bench/json/run.lua
--  or: luajit bench/json/run.lua (with nuvion/json.so on package.cpath)
-- Environment: BENCH_JSON_OPS (round trips per round, default 20000),
--              BENCH_JSON_ROUNDS (rounds, default 7; the best one counts).

local clock = os.clock
local format = string.format

local OPS = tonumber(os.getenv("BENCH_JSON_OPS")) or 20000
local ROUNDS = tonumber(os.getenv("BENCH_JSON_ROUNDS")) or 7
local WARMUP_OPS = 5000

-- A payment intent as the API returns it: amounts in minor units, nested
-- customer and address, metadata, line items, unicode text, booleans, null.
local DOC = [[
{"id":"pi_3NqFh2LkdIwHu7ix0Q1bX9Zc","object":"payment_intent","amount":129900,
"amount_capturable":0,"amount_received":129900,"currency":"eur","status":"succeeded",
"capture_method":"automatic","confirmation_method":"automatic","livemode":false,
"created":1695034023,"canceled_at":null,"cancellation_reason":null,
"description":"Commande n° 48213 — Café Crème & Co.","statement_descriptor":"NUVION*CAFECREME",
"customer":{"id":"cus_OdT6zRk2bB8sXq","email":"zoë.müller@example.com","name":"Zoë Müller",
"phone":"+49 30 901820","preferred_locales":["de-DE","fr-FR"],"tax_exempt":"none",
"address":{"line1":"Friedrichstraße 43","line2":"3. OG","city":"Berlin","postal_code":"10117",
"state":null,"country":"DE"},"balance":-2500,"delinquent":false},
"payment_method":{"id":"pm_1NqFh1LkdIwHu7ixr2aJ0mYb","type":"card","card":{"brand":"visa",
"last4":"4242","exp_month":12,"exp_year":2027,"funding":"credit","country":"US",
"three_d_secure_usage":{"supported":true},"wallet":null},
"billing_details":{"name":"Zoë Müller","email":null,"address":{"line1":"Friedrichstraße 43",
"city":"Berlin","postal_code":"10117","country":"DE"}}},
"metadata":{"order_id":"48213","channel":"web","campaign":"autumn-2023","risk_score":"12",
"note":"Lieferung bitte \"nicht\" vor 9 Uhr\nDanke!"},
"line_items":[
{"sku":"CC-ESP-250","name":"Espresso Bohnen 250 g","quantity":2,"unit_amount":1450,"tax_rate_bp":700,
"discountable":true},
{"sku":"CC-MUG-01","name":"Tasse «Crème»","quantity":1,"unit_amount":1900,"tax_rate_bp":1900,"discountable":false},
{"sku":"CC-GRD-PRO","name":"Kaffeemühle Pro","quantity":1,"unit_amount":109900,"tax_rate_bp":1900,
"discountable":true},
{"sku":"CC-SHIP-DE","name":"Versand (DHL)","quantity":1,"unit_amount":1300,"tax_rate_bp":1900,"discountable":false}],
"charges":{"object":"list","has_more":false,"total_count":1,"data":[{"id":"ch_3NqFh2LkdIwHu7ix0ZzW1Ffd",
"amount":129900,"amount_refunded":0,"captured":true,"paid":true,"refunded":false,"fee":3797,
"exchange_rate":1.0734,"outcome":{"network_status":"approved_by_network","risk_level":"normal",
"risk_score":12,"seller_message":"Payment complete.","type":"authorized"}}]},
"ledger_entry_id":170141183460469231731687303715884105727,"idempotency_key":"9b2f7c1e-4d0a-4f7e-a1b3-6c9d2e8f5a10"}
]]

local function load_impls()
  local impls = {}
  local ok, nv = pcall(require, "nuvion.json")
  if not ok then error("nuvion.json is not available: " .. tostring(nv)) end
  impls[#impls + 1] = { name = "nuvion.json", decode = nv.decode, encode = nv.encode }
  local cok, cjson = pcall(require, "cjson")
  if cok then
    -- cjson rounds the 39-digit ledger id through a double (nuvion.json keeps
    -- it exact); the bench measures speed only.
    impls[#impls + 1] = { name = "cjson", decode = cjson.decode, encode = cjson.encode }
  else
    io.stderr:write("cjson not found on package.cpath; measuring nuvion.json alone\n")
  end
  return impls
end

local function round_trips(impl, n)
  local decode, encode, doc = impl.decode, impl.encode, DOC
  local out
  for _ = 1, n do
    out = encode(decode(doc))
  end
  return out
end

-- Best of ROUNDS: the least disturbed round is the closest to the true cost.
local function measure(impl)
  round_trips(impl, WARMUP_OPS)
  local best = math.huge
  for _ = 1, ROUNDS do
    collectgarbage()
    local t0 = clock()
    round_trips(impl, OPS)
    local dt = clock() - t0
    if dt < best then best = dt end
  end
  return OPS / best, best / OPS * 1e6
end

local function main()
  local impls = load_impls()
  for _, impl in ipairs(impls) do
    local out = assert(round_trips(impl, 1), impl.name .. " failed the round trip")
    impl.out_bytes = #out
  end
  print(format("document: %d bytes; %d round trips (decode+encode) per round, best of %d rounds",
               #DOC, OPS, ROUNDS))
  local rows, cjson_ops = {}, nil
  for _, impl in ipairs(impls) do
    local ops, us = measure(impl)
    rows[#rows + 1] = { impl.name, ops, us }
    if impl.name == "cjson" then cjson_ops = ops end
  end
  print(format("%-14s | %10s | %8s | %s", "implementation", "ops/s", "µs/op", "ratio vs cjson"))
  print(string.rep("-", 15) .. "|" .. string.rep("-", 12) .. "|" .. string.rep("-", 10) .. "|" .. string.rep("-", 15))
  for _, r in ipairs(rows) do
    local ratio = cjson_ops and format("%.2fx", r[2] / cjson_ops) or "n/a"
    print(format("%-14s | %10.0f | %8.2f | %s", r[1], r[2], r[3], ratio))
  end
end

main()
