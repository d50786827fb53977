-- ledger_check.lua -- `bin/nuvion run lua/bin/ledger_check.lua [--ledger N ...] [--url URL]
-- [--max N] [--full]`: the ledger's invariant checker (nuvion.ledger.invariants) as a script. Prints JSON
-- lines: one per ledger (its sums), one per problem, then a summary. Exit status: 0 all holds,
-- 1 a problem was found, 2 the check could not run (usage, database).
local nuvion = require "nuvion"
local json = require "nuvion.json"
local pg = require "nuvion.pg"
local invariants = require "nuvion.ledger.invariants"

local USAGE = "usage: ledger_check.lua [--ledger N]... [--url URL] [--max N] [--full]\n"
  .. "  --ledger N  check only ledger N (repeatable; default: every ledger)\n"
  .. "  --url URL   the ledger database (default LEDGER_DATABASE_URL, else NUVION_LEDGER_DATABASE_URL)\n"
  .. "  --max N     problems listed per check (default " .. invariants.PROBLEMS_MAX_DEFAULT .. ")\n"
  .. "  --full      also match every balance row with its transfer (slower: a window over all rows)\n"

local function fail(msg)
  io.stderr:write("ledger_check: ", msg, "\n")
  return 2
end

local function env_url()
  for _, k in ipairs({ "LEDGER_DATABASE_URL", "NUVION_LEDGER_DATABASE_URL" }) do
    local v = os.getenv(k)
    if v and v ~= "" then return v end
  end
end

local function main(args)
  local opts, url = {}, nil
  local i = 1
  while i <= #args do
    local a, v = args[i], args[i + 1]
    if a == "--help" or a == "-h" then
      io.stdout:write(USAGE)
      return 0
    elseif a == "--full" then
      opts.full = true
      i = i - 1
    elseif a == "--ledger" and v then
      opts.ledgers = opts.ledgers or {}
      opts.ledgers[#opts.ledgers + 1] = v
    elseif a == "--url" and v then
      url = v
    elseif a == "--max" and v and v:match("^%d+$") then
      opts.problems_max = tonumber(v)
    else
      return fail("bad argument " .. string.format("%q", a) .. "\n" .. USAGE)
    end
    i = i + 2
  end
  url = url or env_url()
  if not url then return fail("no database: set LEDGER_DATABASE_URL or give --url") end
  local started = nuvion.monotonic_ms()
  local report, err = invariants.check(pg.pool(url, { max = 1 }), opts)
  if not report then return fail(tostring(err.message or err)) end
  for _, l in ipairs(report.ledgers) do print(json.encode(l)) end
  for _, p in ipairs(report.problems) do print(json.encode({ problem = p })) end
  print(json.encode({ ok = report.ok, ledgers = #report.ledgers, problems = report.problems_count,
                      ms = nuvion.monotonic_ms() - started }))
  return report.ok and 0 or 1
end

return main({ ... })
