-- routes/wallets.lua -- a partner's wallets on the ledger (docs/wallets.md). Every route works
-- within the caller's partner and mode: another partner's or mode's wallet is 404.
--
--   POST /v1/wallets                           { currency, customer? }          wallets:write
--   GET  /v1/wallets                           ?limit&starting_after&ending_before  wallets:read
--   GET  /v1/wallets/:id                       the wallet and its balance       wallets:read
--   GET  /v1/wallets/:id/statement             ?limit&starting_after&ending_before&from&to
--   POST /v1/transfers                         { from_wallet, to_wallet, amount, description? }
--   GET  /v1/transfers/:id                                                      transfers:read
--   POST /v1/test_helpers/wallets/:id/fund     { amount } (test mode only)      wallets:write
--
-- Money moves in the ledger (a different database) first, with an id derived from the request's
-- Idempotency-Key; the transfer row, its outbox event, the audit row and the stored response
-- then commit together in core's database. A crash between the two leaves the money moved and
-- no row: the retry with the same key (after the key's lock) gets the ledger's `exists` and
-- writes the row then, so the row and its event are at least once, never twice, and the money
-- moves once.
local api = require "nuvion.api"
local json = require "nuvion.json"
local outbox = require "nuvion.outbox"
local model = require "wallets.model"
local limits = require "wallets.limits"

local type, tonumber, tostring, find, sub, format = type, tonumber, tostring, string.find, string.sub,
  string.format
local ids, list, errors = api.ids, api.list, api.errors

local _M = {}

local AMOUNT = { type = "amount", required = true, minimum = 1,
                 description = "In the currency's minor units (cents for USD; UGX has none; USDC 6 decimals)." }

_M.CREATE = { type = "object", properties = {
  currency = { type = "string", required = true, pattern = "^[A-Z][A-Z0-9][A-Z0-9]+$", max_length = 10,
               description = "The asset's code: USD, EUR, KES, UGX, USDC.", example = "USD" },
  customer = { type = "id", prefix = "cus", description = "The customer owning it; without it, the partner." },
} }

_M.TRANSFER = { type = "object", properties = {
  from_wallet = { type = "id", prefix = "wal", required = true },
  to_wallet = { type = "id", prefix = "wal", required = true },
  amount = AMOUNT,
  description = { type = "string", max_length = 500 },
} }

_M.FUND = { type = "object", properties = { amount = AMOUNT } }

_M.STATEMENT_LIMIT_MAX = 100
_M.STATEMENT_LIMIT_DEFAULT = 20

-- numeric text from the database as a JSON integer (exact)
local function amount_of(v)
  if type(v) == "string" then
    if #v <= 15 then return tonumber(v) end
    return json.int(v)
  end
  return v
end

local function amount_text(v)
  if type(v) == "number" then return format("%.0f", v) end
  return tostring(v)
end

local function transfer_object(row)
  return { id = row.id, object = "transfer", livemode = row.mode == "live", amount = amount_of(row.amount),
           currency = row.asset, from_wallet = row.from_wallet, to_wallet = row.to_wallet,
           description = row.description or json.null, ledger_transfer_id = row.ledger_transfer_id,
           created = tonumber(row.created) }
end

local DEFERRED_TRANSFER_INSERT = "INSERT INTO wallet_transfers (id, partner_id, mode, from_wallet, to_wallet, asset, "
  .. "amount, description, ledger_transfer_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8, "
  .. "$9::numeric, to_timestamp($10::float8))"

-- The customer's wallet of an asset (a customer has one per asset): its id, or nil; nil, outcome
-- when the database failed.
local function customer_wallet(db, p, customer, asset)
  local rows = db:query("SELECT id FROM wallets WHERE partner_id = $1 AND mode = $2 AND owner_type = 'customer' "
    .. "AND owner_id = $3 AND asset = $4", p.partner_id, p.mode, customer, asset)
  if not rows then return nil, errors.unavailable() end
  return rows[1] and rows[1].id or nil
end

local function wallet_exists(customer, asset, id)
  return errors.new(409, "resource_already_exists", "Customer " .. customer .. " already has a " .. asset
    .. " wallet" .. (id and (": " .. id) or "") .. "; a customer has one wallet per currency.", "currency",
    "invalid_request_error")
end

local TRANSFER_COLUMNS = "id, mode, amount::text AS amount, asset, from_wallet, to_wallet, description, "
  .. "ledger_transfer_id::text AS ledger_transfer_id, extract(epoch FROM created_at)::bigint AS created"

-- The customer of a wallet must be one of the partner's, when core has customers: until the
-- customers table exists (another area), a well-formed cus_ id is kept as it is (docs/wallets.md).
local function check_customer(db, p, customer)
  local rows = db:query("SELECT to_regclass('customers') IS NOT NULL AS present")
  if not rows then return nil, errors.unavailable() end
  if not rows[1].present then return true end
  local found = db:query("SELECT state FROM customers WHERE id = $1 AND partner_id = $2 AND mode = $3",
                         customer, p.partner_id, p.mode)
  if not found then return nil, errors.unavailable() end
  -- an erased customer is gone for new wallets, as one that never existed
  if not found[1] or found[1].state == "erased" then return nil, errors.not_found("customer", customer, "customer") end
  return true
end

-- digits of a unix-seconds query parameter, as ns text (first or last ns of that second)
local function seconds_param(args, name, last)
  local v = args[name]
  if v == nil then return true end
  if type(v) ~= "string" or not find(v, "^%d+$") or #v > 11 then
    return nil, errors.invalid("parameter_invalid", name .. " must be a unix time in seconds.", name)
  end
  return (tostring(tonumber(v)) .. (last and "999999999" or "000000000"))
end

local function cursor_param(args, name)
  local v = args[name]
  if v == nil then return true end
  if type(v) ~= "string" or not find(v, "^%d+$") or #v > 19 then
    return nil, errors.invalid("parameter_invalid", name .. " must be an entry's id from a statement.", name)
  end
  return v
end

local function statement_params(args)
  args = args or {}
  local o = { normal = "credit", limit = _M.STATEMENT_LIMIT_DEFAULT }
  if args.limit ~= nil then
    local n = type(args.limit) == "string" and find(args.limit, "^%d+$") and #args.limit <= 4 and tonumber(args.limit)
    if not n or n < 1 or n > _M.STATEMENT_LIMIT_MAX then
      return nil, errors.invalid("parameter_invalid", "limit must be an integer from 1 to "
        .. _M.STATEMENT_LIMIT_MAX .. ".", "limit")
    end
    o.limit = n
  end
  local err
  o.after, err = cursor_param(args, "starting_after")
  if not o.after then return nil, err end
  o.before, err = cursor_param(args, "ending_before")
  if not o.before then return nil, err end
  if o.after ~= true and o.before ~= true then
    return nil, errors.invalid("parameter_invalid", "Give starting_after or ending_before, not both.", "ending_before")
  end
  o.from, err = seconds_param(args, "from", false)
  if not o.from then return nil, err end
  o.to, err = seconds_param(args, "to", true)
  if not o.to then return nil, err end
  for _, k in ipairs({ "after", "before", "from", "to" }) do
    if o[k] == true then o[k] = nil end
  end
  return o
end

local function entry_object(e)
  local ts = tostring(e.timestamp)
  return { id = ts, object = "wallet_entry", type = model.ENTRY_TYPES[e.code] or "other",
           direction = e.direction, amount = e.amount, balance = e.posted, available = e.available,
           pending = e.pending, ledger_transfer_id = tostring(e.transfer_id),
           created = tonumber(sub(ts, 1, -10)) or 0 }
end

-- The tier-limited sides of a movement (docs/wallets.md "Tier limits"): nil when no wallet is a
-- customer's (partners' wallets: no limits, no extra query).
local function customer_moves(db, amount, from, from_param, to, to_param)
  local moves
  for _, side in ipairs({ { from, "out", from_param }, { to, "in", to_param } }) do
    local w = side[1]
    if w and w.owner_type == "customer" then
      local a = model.assets(db)
      moves = moves or {}
      moves[#moves + 1] = { w = w, dir = side[2], amount = amount, param = side[3],
                            exponent = a and a[w.asset] and a[w.asset].exponent }
    end
  end
  return moves
end

local function not_live(p)
  if p.mode ~= "test" then
    return errors.new(404, "route_not_found", "Test helpers exist in test mode only.")
  end
end

function _M.register(app, deps)
  local routes = api.new(app, deps)
  local db = deps.db
  require("routes.wallets_internal").register(app, deps)   -- the other services' routes

  routes:post("/v1/wallets", { scope = "wallets:write", schema = _M.CREATE, audit = "wallet.create" }, function(ctx)
    local p, b = ctx.principal, ctx.body
    local assets = model.assets(db)
    if not assets then return errors.unavailable() end
    local asset = assets[b.currency]
    if not asset then
      return errors.invalid("parameter_invalid", "Unknown currency '" .. b.currency .. "'.", "currency")
    end
    local owner_type, owner_id = "partner", p.partner_id
    if b.customer then
      local ok, cerr = check_customer(db, p, b.customer)
      if not ok then return cerr end
      owner_type, owner_id = "customer", b.customer
      local had, herr = customer_wallet(db, p, b.customer, b.currency)
      if herr then return herr end
      if had then return wallet_exists(b.customer, b.currency, had) end
    end
    local id = ids.new("wal")
    local w = model.with_settlement({ id = id, partner_id = p.partner_id, mode = p.mode, owner_type = owner_type,
      owner_id = owner_id, asset = b.currency, ledger = model.ledger_number(asset.number, p.mode),
      ledger_account_id = model.ledger_id("wallet:" .. id) })
    -- the ledger accounts first: an orphan account (crash before the row) holds nothing
    local ok, lerr = model.create_accounts(deps.ledger, w)
    if not ok then return lerr end
    local status, body, headers = db:tx(function(tx)
      local rows, err = tx:query("INSERT INTO wallets (id, partner_id, mode, owner_type, owner_id, asset, ledger, "
        .. "ledger_account_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric) "
        .. "RETURNING extract(epoch FROM created_at)::bigint AS created",
        id, p.partner_id, p.mode, owner_type, owner_id, b.currency, w.ledger, w.ledger_account_id)
      if not rows then return nil, err end
      w.created = tonumber(rows[1].created)
      local obj = model.wallet_object(w, { object = "balance", currency = w.asset, available = 0, pending = 0,
                                           posted = 0 })
      local _, oerr = outbox.publish(tx, { aggregate_type = "wallet", aggregate_id = id, type = "wallet.created",
        data = { id = id, owner_id = p.partner_id, mode = p.mode, currency = w.asset,
                 owner = { type = owner_type, id = owner_id } } })
      if oerr then return nil, oerr end
      local _, aerr = ctx:audit(tx, id)
      if aerr then return nil, aerr end
      return ctx:respond(tx, 200, obj)
    end)
    -- a racing create for the same customer and asset committed first (the ledger accounts this
    -- one made stay empty, as after a crash before the row)
    if status == nil and type(body) == "table" and body.code == "23505" and owner_type == "customer" then
      return wallet_exists(b.customer, b.currency)
    end
    return status, body, headers
  end)

  -- ?customer=cus_... (that customer's wallets), ?currency=USD
  routes:get("/v1/wallets", { scope = "wallets:read", list = "wal" }, function(ctx)
    local p, args = ctx.principal, ctx.req.args
    local where, qargs = "partner_id = $1 AND mode = $2", { p.partner_id, p.mode }
    if args.customer ~= nil then
      if not ids.valid(args.customer, "cus") then
        return errors.invalid("parameter_invalid", "customer must be a customer id (cus_...), given once.", "customer")
      end
      qargs[#qargs + 1] = args.customer
      where = where .. " AND owner_type = 'customer' AND owner_id = $" .. #qargs
    end
    if args.currency ~= nil then
      if type(args.currency) ~= "string" or not args.currency:find("^%u%u%u%u?%u?$") then
        return errors.invalid("parameter_invalid", "currency must be a currency code (USD), given once.", "currency")
      end
      qargs[#qargs + 1] = args.currency
      where = where .. " AND asset = $" .. #qargs
    end
    local res, err = list.fetch(db, { from = "wallets", columns = model.WALLET_COLUMNS,
      where = where, args = qargs, url = "/v1/wallets" },
      ctx.page, function(row) return model.wallet_object(model.with_settlement(row)) end)
    if not res then
      api.log_error("wallets list failed", err)
      return errors.unavailable()
    end
    return 200, res
  end)

  routes:get("/v1/wallets/:id", { scope = "wallets:read" }, function(ctx)
    local id = ctx.req.params.id
    if not ids.valid(id, "wal") then return errors.not_found("wallet", id) end
    local w, err = model.load(db, id, ctx.principal)
    if not w then return err or errors.not_found("wallet", id) end
    local bal, berr = model.balance(deps.ledger, w)
    if not bal then return berr end
    return 200, model.wallet_object(w, bal)
  end)

  routes:get("/v1/wallets/:id/statement", { scope = "wallets:read" }, function(ctx)
    local id = ctx.req.params.id
    local o, perr = statement_params(ctx.req.args)
    if not o then return perr end
    if not ids.valid(id, "wal") then return errors.not_found("wallet", id) end
    local w, err = model.load(db, id, ctx.principal)
    if not w then return err or errors.not_found("wallet", id) end
    local h, herr = deps.ledger:history(w.ledger_account_id, o)
    if not h then
      if herr and herr.code == "invalid_timestamp" then
        return errors.invalid("parameter_invalid", herr.message, herr.param)
      end
      api.log_error("ledger history failed", herr and herr.code)
      return errors.unavailable("The ledger is unavailable, try again.")
    end
    local data = {}
    for i, e in ipairs(h.data) do data[i] = entry_object(e) end
    return 200, { object = "list", url = "/v1/wallets/" .. id .. "/statement", has_more = h.has_more,
                  data = json.array(data) }
  end)

  routes:post("/v1/transfers", { scope = "transfers:write", schema = _M.TRANSFER, audit = "transfer.create" },
              function(ctx)
    local p, b = ctx.principal, ctx.body
    if b.from_wallet == b.to_wallet then
      return errors.invalid("same_wallet", "A transfer needs two different wallets.", "to_wallet")
    end
    local from, to, lderr = model.load_pair(db, b.from_wallet, b.to_wallet, p)
    if lderr then return lderr end
    if not from then return errors.not_found("wallet", b.from_wallet, "from_wallet") end
    if not to then return errors.not_found("wallet", b.to_wallet, "to_wallet") end
    if from.asset ~= to.asset then
      return errors.invalid("currency_mismatch", "Both wallets must hold the same currency ("
        .. from.asset .. " and " .. to.asset .. ").", "to_wallet")
    end
    local key = ctx.req.headers["idempotency-key"]
    local lid = key and model.ledger_id("transfer:" .. p.partner_id .. ":" .. p.mode .. ":" .. key)
      or model.random_ledger_id()
    local function move()
      return deps.ledger:transfer({ id = lid, debit_account_id = from.ledger_account_id,
        credit_account_id = to.ledger_account_id, amount = b.amount, ledger = from.ledger,
        code = model.TRANSFER_CODES.transfer })
    end
    local function finish(tx, res)
      local tid = ids.new("tr")
      local row
      if res == "ok" then
        -- the ledger made this transfer just now: no row can have its ledger id yet, so the row,
        -- its event and its audit row go with the COMMIT, answered from what is written
        local at, created = api.timestamp()
        local amount = amount_text(b.amount)
        tx:defer({ DEFERRED_TRANSFER_INSERT, tid, p.partner_id, p.mode, from.id, to.id, from.asset, amount,
                   b.description, lid, at, n = 10 })
        row = { id = tid, mode = p.mode, amount = amount, asset = from.asset, from_wallet = from.id,
                to_wallet = to.id, description = b.description, ledger_transfer_id = lid, created = created }
      else
        local rows, err = tx:query("INSERT INTO wallet_transfers (id, partner_id, mode, from_wallet, to_wallet, "
          .. "asset, amount, description, ledger_transfer_id) VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8, "
          .. "$9::numeric) ON CONFLICT (ledger_transfer_id) DO NOTHING RETURNING " .. TRANSFER_COLUMNS,
          tid, p.partner_id, p.mode, from.id, to.id, from.asset, amount_text(b.amount), b.description, lid)
        if not rows then return nil, err end
        row = rows[1]
      end
      if row then
        local _, oerr = outbox.publish(tx, { aggregate_type = "transfer", aggregate_id = tid, type = "transfer.created",
          data = { id = tid, owner_id = p.partner_id, mode = p.mode, amount = b.amount, currency = from.asset,
                   from_wallet = from.id, to_wallet = to.id } })
        if oerr then return nil, oerr end
        local _, aerr = ctx:audit(tx, tid)
        if aerr then return nil, aerr end
      else
        -- a rerun after a crash between the ledger and this transaction: the row is there
        local found, ferr2 = tx:query("SELECT " .. TRANSFER_COLUMNS .. " FROM wallet_transfers "
          .. "WHERE ledger_transfer_id = $1::numeric AND partner_id = $2 AND mode = $3", lid, p.partner_id, p.mode)
        if not found then return nil, ferr2 end
        row = found[1]
        if not row then return nil, "transfer row of ledger id " .. lid .. " belongs to another partner" end
      end
      return ctx:respond(tx, 200, transfer_object(row))
    end
    local moves = customer_moves(db, b.amount, from, "from_wallet", to, "to_wallet")
    if not moves then
      -- partners' wallets: no tier limits, no lock
      local res, lerr = move()
      local refused_by_ledger = model.ledger_refusal(res, lerr)
      if refused_by_ledger then return refused_by_ledger end
      return db:tx(function(tx) return finish(tx, res) end)
    end
    -- a customer's wallet on either side: the limits, the ledger and the rows under its lock
    return db:tx(function(tx)
      local res, lerr, refused = limits.guard(tx, deps.ledger, moves, lid, key ~= nil, move)
      if refused then return refused end
      local refused_by_ledger = model.ledger_refusal(res, lerr)
      if refused_by_ledger then return refused_by_ledger end
      return finish(tx, res)
    end)
  end)

  routes:get("/v1/transfers/:id", { scope = "transfers:read" }, function(ctx)
    local id, p = ctx.req.params.id, ctx.principal
    if not ids.valid(id, "tr") then return errors.not_found("transfer", id) end
    local rows = db:query("SELECT " .. TRANSFER_COLUMNS .. " FROM wallet_transfers WHERE id = $1 AND partner_id = $2 "
      .. "AND mode = $3", id, p.partner_id, p.mode)
    if not rows then return errors.unavailable() end
    if not rows[1] then return errors.not_found("transfer", id) end
    return 200, transfer_object(rows[1])
  end)

  routes:post("/v1/test_helpers/wallets/:id/fund", { scope = "wallets:write", schema = _M.FUND,
                                                     audit = "wallet.fund" }, function(ctx)
    local p, id = ctx.principal, ctx.req.params.id
    local live = not_live(p)
    if live then return live end
    if not ids.valid(id, "wal") then return errors.not_found("wallet", id) end
    local w, err = model.load(db, id, p)
    if not w then return err or errors.not_found("wallet", id) end
    local key = ctx.req.headers["idempotency-key"]
    local lid = key and model.ledger_id("fund:" .. id .. ":" .. key) or model.random_ledger_id()
    local function move()
      return deps.ledger:transfer({ id = lid, debit_account_id = w.settlement_account_id,
        credit_account_id = w.ledger_account_id, amount = ctx.body.amount, ledger = w.ledger,
        code = model.TRANSFER_CODES.fund })
    end
    local function finish(tx, res, bal)
      if res == "ok" then
        local _, oerr = outbox.publish(tx, { aggregate_type = "wallet", aggregate_id = id, type = "wallet.funded",
          data = { id = id, owner_id = p.partner_id, mode = p.mode, amount = ctx.body.amount, currency = w.asset,
                   ledger_transfer_id = lid } })
        if oerr then return nil, oerr end
      end
      local _, aerr = ctx:audit(tx, id)
      if aerr then return nil, aerr end
      return ctx:respond(tx, 200, model.wallet_object(w, bal))
    end
    local moves = customer_moves(db, ctx.body.amount, nil, nil, w, "amount")
    if not moves then
      local res, lerr = move()
      local refused_by_ledger = model.ledger_refusal(res, lerr)
      if refused_by_ledger then return refused_by_ledger end
      local bal, berr = model.balance(deps.ledger, w)
      if not bal then return berr end
      return db:tx(function(tx) return finish(tx, res, bal) end)
    end
    return db:tx(function(tx)
      local res, lerr, refused = limits.guard(tx, deps.ledger, moves, lid, key ~= nil, move)
      if refused then return refused end
      local refused_by_ledger = model.ledger_refusal(res, lerr)
      if refused_by_ledger then return refused_by_ledger end
      local bal, berr = model.balance(deps.ledger, w)
      if not bal then return berr end
      return finish(tx, res, bal)
    end)
  end)
end

return _M
