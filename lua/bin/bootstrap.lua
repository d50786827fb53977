-- bootstrap.lua -- `bin/nuvion run lua/bin/bootstrap.lua [--new-key] [--live] [--rotate-signing-key]`:
-- the first partner and a test secret key for a local run, printed once.
--
-- Idempotent: when the partner exists, a second run prints it and its keys (redacted: the
-- secret was shown once and is not stored) and creates nothing; --new-key adds a new test key
-- to it (and --live a live key too). --rotate-signing-key rotates core's token signing key.
-- Reads core's database from DATABASE_URL or NUVION_CORE_DATABASE_URL; the key hash uses
-- NUVION_API_KEY_PEPPER (or the development pepper when NUVION_ENV is development or test):
-- run it with the same environment as core.
local pg = require "nuvion.pg"
local keys = require "nuvion.auth.keys"
local config = require "nuvion.auth.config"
local signer = require "nuvion.auth.signer"

local PARTNER_NAME = os.getenv("NUVION_BOOTSTRAP_PARTNER_NAME") or "Local partner"
local ALL_SCOPES = { "*" }

local function out(...) io.stdout:write(string.format(...), "\n") end
local function fail(...)
  io.stderr:write("bootstrap: ", string.format(...), "\n")
  os.exit(1)
end

local args = {}
for _, a in ipairs({ ... }) do
  if a ~= "--new-key" and a ~= "--live" and a ~= "--rotate-signing-key" then fail("unknown argument %s", a) end
  args[a] = true
end

local url = os.getenv("DATABASE_URL") or os.getenv("NUVION_CORE_DATABASE_URL")
if not url or url == "" then fail("set DATABASE_URL or NUVION_CORE_DATABASE_URL (core's database)") end
local _, perr = config.pepper()
if perr then fail("%s", perr) end
local db = pg.pool(url, { max = 1 })

local function new_key(partner_id, mode)
  local row, secret = keys.create(db, partner_id, mode, { name = "bootstrap " .. mode .. " key", scopes = ALL_SCOPES })
  if not row then fail("creating a key: %s", secret.message) end
  out("created %s key %s:", mode, row.id)
  out("  %s", secret)
  out("  (shown once: it is stored only as a keyed hash)")
end

-- one bootstrap at a time: the partner is found or made under a lock
local found, err = db:tx(function(tx)
  local ok, lerr = tx:query("SELECT pg_advisory_xact_lock(hashtext('nuvion.bootstrap'))")
  if not ok then return nil, lerr end
  local rows, qerr = tx:query("SELECT id FROM partners WHERE name = $1 ORDER BY id LIMIT 1", PARTNER_NAME)
  if not rows then return nil, qerr end
  if rows[1] then return rows[1].id, true end
  rows, qerr = tx:query("INSERT INTO partners (id, name) VALUES ($1, $2) RETURNING id",
                        require("nuvion.api.ids").new("ptn"), PARTNER_NAME)
  if not rows then return nil, qerr end
  return rows[1].id, false
end)
if not found then fail("%s", tostring(err)) end
local partner_id, existed = found, err

if existed then
  out("partner %s (%s) exists", partner_id, PARTNER_NAME)
  local rows = assert(db:query("SELECT id, mode, prefix, last4, revoked_at IS NOT NULL AS revoked FROM api_keys "
    .. "WHERE partner_id = $1 ORDER BY id", partner_id))
  for _, r in ipairs(rows) do
    out("  key %s %s %s...%s%s", r.id, r.mode, r.prefix, r.last4, r.revoked and " (revoked)" or "")
  end
  if not args["--new-key"] then out("nothing created (--new-key adds a test key)") end
else
  out("created partner %s (%s)", partner_id, PARTNER_NAME)
end
if not existed or args["--new-key"] then
  new_key(partner_id, "test")
  if args["--live"] then new_key(partner_id, "live") end
end
if args["--rotate-signing-key"] then
  local kid, rerr = signer.rotate(db)
  if not kid then fail("rotating the signing key: %s", tostring(rerr)) end
  out("signing key rotated: %s", kid)
end
