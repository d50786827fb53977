-- ledger.lua -- nuvion.ledger: TigerBeetle's accounts and transfers on Postgres, posted in
-- batches by the C posting layer (host/ledger_post.c). docs/ledger_api.md documents the calls;
-- docs/ledger.md every result code and rule.
--
--   local lg = require("nuvion.ledger").open()
--   local r = lg:transfer{ id = 1, debit_account_id = 10, credit_account_id = 20,
--                          amount = 2500, ledger = 840, code = 1 }        -- "ok" | a code
local c = require "nuvion.ledger_c"
local pg = require "nuvion.pg"

local type, setmetatable, error, pairs, tostring, os_getenv = type, setmetatable, error, pairs, tostring, os.getenv
local c_take = c.take

local _M = {
  transfer_results = c.transfer_results(), -- every result name, in order of precedence
  account_results = c.account_results(),
}

local READ_CONNECTIONS = 4 -- the reads' own pool, apart from the batches' connections

local Ledger = {}
Ledger.__index = Ledger

-- One engine per URL and options in this generation (and so in this worker).
local engines = {}

local OPTIONS = { batch_max = true, batch_wait_us = true, inflight = true, queue_max = true,
                  timeout_ms = true, sweep_ms = true, read_connections = true }

local function options_key(opts)
  local keys = {}
  for k, v in pairs(opts) do
    if not OPTIONS[k] then error("ledger.open: unknown option '" .. tostring(k) .. "'", 3) end
    keys[#keys + 1] = k .. "=" .. tostring(v)
  end
  table.sort(keys)
  return table.concat(keys, "&")
end

-- open([url [, opts]]) -> the ledger of this worker for url (LEDGER_DATABASE_URL, else
-- NUVION_LEDGER_DATABASE_URL).
function _M.open(url, opts)
  url = url or os_getenv("LEDGER_DATABASE_URL") or os_getenv("NUVION_LEDGER_DATABASE_URL")
  if type(url) ~= "string" or url == "" then
    error("ledger.open: no database URL (give one, or set LEDGER_DATABASE_URL)", 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("ledger.open: opts must be a table", 2) end
  local key = url .. "#" .. options_key(opts)
  local lg = engines[key]
  if lg then return lg end
  local inflight = opts.inflight or 2
  -- the batches' pool: one connection per batch in flight
  local posting = pg.pool(url, { max = inflight, queue = 64, prepare = true })
  local engine, batch_max = c.new(posting.ud, {
    batch_max = opts.batch_max, batch_wait_us = opts.batch_wait_us, inflight = opts.inflight,
    queue_max = opts.queue_max, timeout_ms = opts.timeout_ms, sweep_ms = opts.sweep_ms,
  })
  lg = setmetatable({
    engine = engine,
    batch_max = batch_max,
    posting = posting, -- keeps the pool's handle alive with the engine
    db = pg.pool(url, { max = opts.read_connections or READ_CONNECTIONS }),
  }, Ledger)
  engines[key] = lg
  return lg
end

local HINTS = {
  ledger_unavailable = "nothing was applied: retry",
  ledger_overloaded = "nothing was applied: retry later",
  ledger_timeout = "the commit was not confirmed: retry with the same ids to learn the outcome",
}

-- The call's results, or nil and a retryable error: what the engine woke the task with.
local function finish(call)
  local res, code, message = c_take(call)
  if res then return res end
  return nil, { code = code, message = message, hint = HINTS[code], retryable = true }
end

local function check_list(self, list, what)
  if type(list) ~= "table" then error("ledger: " .. what .. " takes a list", 3) end
  if #list > self.batch_max then
    error("ledger: " .. what .. " of " .. #list .. " events: at most batch_max (" .. self.batch_max .. ") a call", 3)
  end
end

-- create_accounts(list) -> { result names } | nil, err
function Ledger:create_accounts(list)
  check_list(self, list, "create_accounts")
  return finish(self.engine:create_accounts(list))
end

-- create_transfers(list) -> { result names } | nil, err
function Ledger:create_transfers(list)
  check_list(self, list, "create_transfers")
  return finish(self.engine:create_transfers(list))
end

local function one(self, t, set)
  if type(t) ~= "table" then error("ledger: a transfer must be a table", 3) end
  local ev = {}
  for k, v in pairs(t) do ev[k] = v end
  for k, v in pairs(set) do ev[k] = v end
  local res, err = finish(self.engine:create_transfers({ ev }))
  if not res then return nil, err end
  return res[1]
end

-- transfer(t) -> result name | nil, err: a single-phase transfer.
function Ledger:transfer(t) return one(self, t, {}) end
-- hold(t) -> a pending transfer; t.timeout in seconds (0 or nil: never expires).
function Ledger:hold(t) return one(self, t, { pending = true }) end
-- post(t) -> posts t.pending_id: t.amount of it, or all when 0 or nil.
function Ledger:post(t) return one(self, t, { post_pending_transfer = true }) end
-- void(t) -> releases t.pending_id.
function Ledger:void(t) return one(self, t, { void_pending_transfer = true }) end

-- stats() -> { batches, events, retries, failed_batches, sweeps, expired, queued, inflight }
function Ledger:stats() return self.engine:stats() end

-- Reads: plain queries (lua/lib/nuvion/ledger/query.lua), on their own pool.
local query
local function q()
  query = query or require "nuvion.ledger.query"
  return query
end
function Ledger:lookup_accounts(ids) return q().lookup_accounts(self.db, ids) end
function Ledger:lookup_transfers(ids) return q().lookup_transfers(self.db, ids) end
function Ledger:balances(id, opts) return q().balances(self.db, id, opts) end
function Ledger:history(id, opts) return q().history(self.db, id, opts) end
function Ledger:balance_at(id, ts, opts) return q().balance_at(self.db, id, ts, opts) end

return _M
