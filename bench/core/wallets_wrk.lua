-- bench/core/wallets_wrk.lua -- wrk script of bench/core/wallets.sh: POST /v1/transfers of 1 unit
-- between wallet pairs (WALLETS: "a1,b1 a2,b2 ..."), each thread on its own pair, no Idempotency-Key.
-- luacheck: globals wrk setup init request response done
local pairs_list = {}
for pair in (os.getenv("WALLETS") or ""):gmatch("%S+") do
  local a, b = pair:match("^([^,]+),([^,]+)$")
  pairs_list[#pairs_list + 1] = { a, b }
end
local secret = os.getenv("SECRET")
local counter = 0
local bodies = {}

function setup(thread)
  counter = counter + 1
  thread:set("index", counter)
end

function init()
  local index = rawget(_G, "index") or 1
  local p = pairs_list[(index - 1) % #pairs_list + 1]
  bodies[1] = '{"from_wallet":"' .. p[1] .. '","to_wallet":"' .. p[2] .. '","amount":1}'
  wrk.method = "POST"
  wrk.path = "/v1/transfers"
  wrk.headers["Authorization"] = "Bearer " .. secret
  wrk.headers["Content-Type"] = "application/json"
  wrk.body = bodies[1]
end

local errors = 0
function response(status)
  if status ~= 200 then
    errors = errors + 1
    if errors <= 3 then io.stderr:write("status " .. status .. "\n") end
  end
end
