-- nuvion.api -- the shared API layer: one wrapper composes, for each route,
--   authenticate -> scope -> rate limit -> JSON body -> Idempotency-Key -> validate -> handler
--   -> audit -> store the response for the key
-- so that a route reads as straight-line business code:
--
--   local api = require "nuvion.api"
--   local routes = api.new(app, deps)         -- deps: db, redis?, auth, limiter?
--   routes:post("/v1/customers", { scope = "customers:write", schema = CUSTOMER,
--                                  audit = "customer.create" }, function(ctx)
--     local id = ids.new("cus")
--     return deps.db:tx(function(tx)
--       insert(tx, id, ctx.body, ctx.principal)
--       ctx:audit(tx, id)                       -- the audit row commits with the change,
--       return ctx:respond(tx, 200, { id = id, object = "customer", ... })  -- and so does the
--     end)                                      -- response its Idempotency-Key replays
--   end)
--   routes:get("/v1/customers", { scope = "customers:read", list = "cus" }, function(ctx)
--     return 200, assert(list.fetch(deps.db, q, ctx.page, to_object))
--   end)
--
-- ctx: req, deps, principal, body (validated, defaults filled), page (list routes),
-- ctx:audit(tx_or_db, object_id [, action, data]) and ctx:respond(tx, status, body, headers).
-- The handler returns status, body, headers or an outcome table (nuvion.api.errors); a handler
-- that raises is answered 500 internal_error (logged with its traceback). Every answer, errors
-- included, is rendered here, so the bytes stored for an Idempotency-Key are the bytes sent.
-- See docs/api.md.
local json = require "nuvion.json"
local log = require "nuvion.log"
local errors = require "nuvion.api.errors"
local validate = require "nuvion.api.validate"
local idempotency = require "nuvion.api.idempotency"
local audit = require "nuvion.api.audit"
local list = require "nuvion.api.list"
local nuvion = require "nuvion"

local type, pairs, ipairs, error, tostring, xpcall, setmetatable = type, pairs, ipairs, error,
  tostring, xpcall, setmetatable
local traceback = debug.traceback
local floor, format = math.floor, string.format
local encode = json.encode

local _M = {
  errors = errors,
  validate = validate,
  idempotency = idempotency,
  audit = audit,
  list = list,
  ids = require "nuvion.api.ids",
  ratelimit = require "nuvion.api.ratelimit",
}

_M.ERR_AUTH_UNAVAILABLE = "Authentication is not configured on this service."
_M.ERR_NOT_ENCODABLE = "The response could not be encoded."
local JSON_HEADERS = { ["Content-Type"] = "application/json" }

-- The authentication hook, implemented by nuvion.auth (deps.auth):
--   principal = { partner_id, mode = "test"|"live", scopes, key_id?, kind }, or nil and an
--   outcome (401). deps.auth.require_scope(principal, scope) -> true | nil, outcome (403).
function _M.authenticate(req, deps)
  local auth = deps.auth
  if auth == nil then return nil, errors.unavailable(_M.ERR_AUTH_UNAVAILABLE) end
  return auth.authenticate(req, deps)
end

local function with(headers, extra)
  local h = {}
  for k, v in pairs(headers or {}) do h[k] = v end
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end

-- status, body text, headers of whatever a handler (or a step) answered.
local function render(req, status, body, headers)
  if type(status) == "table" then
    return status.status, errors.encode(status, req.id), with(headers, JSON_HEADERS)
  end
  if type(body) == "table" then
    local text, err = encode(body)
    if not text then
      log.error("response not encodable", { error = err, path = req.path })
      local o = errors.internal(_M.ERR_NOT_ENCODABLE)
      return o.status, errors.encode(o, req.id), JSON_HEADERS
    end
    return status, text, with(headers, JSON_HEADERS)
  end
  return status, body or "", headers
end
_M.render = render

local function record_audit(ctx, db, object_id, action, data, status)
  local req = ctx.req
  local id, err = audit.record(db, { principal = ctx.principal, action = action or ctx.action,
                                     object_id = object_id, request_id = req.id,
                                     method = req.method, path = req.path, status = status,
                                     data = data })
  if id then ctx.audited = true end
  return id, err
end

local Ctx = {}
Ctx.__index = Ctx

-- Writes the audit row of this request's mutation: in the change's transaction when given a tx.
function Ctx:audit(db, object_id, action, data)
  return record_audit(self, db, object_id, action, data, nil)
end

-- The handler's answer, rendered now and, when the request has an Idempotency-Key, stored in
-- `tx`: the change, its audit row and the response the key replays commit together, so a crash
-- can never leave a change whose response is lost (the key stays claimed until its lock
-- expires and the request then runs again from scratch). Returns what the handler returns:
--   return ctx:respond(tx, 200, customer)
-- or nil and the database error (return it: the transaction rolls back and the answer is 500).
function Ctx:respond(tx, status, body, headers)
  local code, text, hdrs = render(self.req, status, body, headers)
  if self.claim then
    local ok, err = idempotency.complete(tx, self.claim, code, text, hdrs)
    if not ok then return nil, err end
  end
  self.responded = text
  return code, text, hdrs
end

-- The request's JSON body: {} for an empty body, else the decoded object or a 400 outcome.
local function read_body(req)
  local raw = req.body
  if raw == "" then return {} end
  return req:json()
end

local function run_handler(handler, ctx)
  local ok, status, body, headers = xpcall(handler, traceback, ctx)
  if ok then
    if type(status) ~= "table" and (type(status) ~= "number" or status < 100 or status > 599) then
      log.error("handler returned an invalid response", { event = "handler_error", path = ctx.req.path,
                                                          error = body ~= nil and tostring(body) or nil })
      return errors.internal()
    end
    return status, body, headers
  end
  log.error(tostring(status), { event = "handler_error", path = ctx.req.path })
  return errors.internal()
end

-- A new row's creation time, chosen here so its answer can be made before the row is written
-- (a deferred insert): the text for `to_timestamp($n::float8)` (whole microseconds, as
-- timestamptz keeps them) and the epoch seconds a read gives back
-- (`extract(epoch FROM created_at)::bigint` rounds to the nearest second).
function _M.timestamp()
  local us = floor(nuvion.now() * 1e6 + 0.5)
  return format("%d.%06d", floor(us / 1e6), us % 1e6), floor((us + 500000) / 1e6)
end

-- Logs a failure of a dependency (database, Redis) a route answers 503 for.
function _M.log_error(msg, err)
  log.error(msg, { error = tostring(err) })
end

local MUTATIONS = { POST = true, PUT = true, PATCH = true, DELETE = true }

-- The handler of one route. method: "GET", "POST", ... opts: scope, schema (the body's),
-- audit (the action of a mutation: required on POST/PUT/PATCH/DELETE unless false), list (the
-- ids' prefix of a list route: ctx.page), auth = false (a public route), idempotent = false
-- (a POST or PATCH that takes no Idempotency-Key), limiter (instead of deps.limiter), cost (rate limit
-- tokens, default 1),
-- idempotency_ttl_s / idempotency_lock_s (specs).
function _M.route(deps, method, opts, handler)
  if type(deps) ~= "table" then error("api.route needs deps", 2) end
  if type(handler) ~= "function" then error("api.route needs a handler function", 2) end
  opts = opts or {}
  local mutation = MUTATIONS[method]
  if mutation and opts.audit == nil then
    error("a " .. method .. " route must name its audit action (opts.audit), or set it to false", 2)
  end
  if opts.schema then validate.compile(opts.schema) end
  local public = opts.auth == false
  local idempotent = (method == "POST" or method == "PATCH") and opts.idempotent ~= false and not public
  local action = opts.audit or nil

  return function(req)
    local ctx = setmetatable({ req = req, deps = deps, action = action }, Ctx)

    -- who
    if not public then
      local principal, out = _M.authenticate(req, deps)
      if not principal then return render(req, out) end
      if opts.scope then
        local ok, sout = deps.auth.require_scope(principal, opts.scope)
        if not ok then return render(req, sout) end
      end
      ctx.principal = principal
      -- how often
      local limiter = opts.limiter or deps.limiter
      if limiter then
        local key = principal.key_id or (principal.partner_id .. ":" .. principal.mode)
        local ok, retry_after = limiter:take(key, opts.cost)
        if not ok then
          return render(req, errors.rate_limited(), nil, { ["Retry-After"] = tostring(retry_after) })
        end
      end
    end

    -- what
    if opts.list then
      local page, out = list.params(req.args, opts.list)
      if not page then return render(req, out) end
      ctx.page = page
    end
    local value
    if opts.schema then
      local out
      value, out = read_body(req)
      if value == nil then return render(req, out) end
    end

    -- once
    local claim
    local key = idempotent and req.headers["idempotency-key"]
    if key then
      local state, v = idempotency.begin(deps.db, {
        partner_id = ctx.principal.partner_id, mode = ctx.principal.mode, key = key,
        method = method, path = req.path, body = value or req.body, request_id = req.id,
        ttl_s = opts.idempotency_ttl_s, lock_s = opts.idempotency_lock_s })
      if not state then return render(req, v) end
      if state == "replay" then
        return v.status, v.body, with(v.headers, { ["Idempotent-Replayed"] = "true" })
      end
      claim = v
      ctx.claim = claim
    end

    if opts.schema then
      local body, out = validate.check(opts.schema, value)
      if body == nil then
        if claim then idempotency.release(deps.db, claim) end
        return render(req, out)
      end
      ctx.body = body
    end

    local status, text, headers = render(req, run_handler(handler, ctx))

    -- the mutation's audit row, when the handler did not write it with its change
    if mutation and action and not ctx.audited and status < 300 then
      local obj = json.decode(text)
      local object_id = type(obj) == "table" and type(obj.id) == "string" and obj.id or nil
      local _, err = record_audit(ctx, deps.db, object_id, action, nil, status)
      if err then log.error("audit row not written", { error = tostring(err), action = action }) end
    end

    -- stored here unless ctx:respond stored this very answer with the change
    if claim and ctx.responded ~= text then
      idempotency.complete(deps.db, claim, status, text, headers)
    end
    return status, text, headers
  end
end

local Routes = {}
Routes.__index = Routes

-- routes:get/post/put/patch/delete(path, opts, handler) on a nuvion.router app.
function _M.new(app, deps)
  return setmetatable({ app = app, deps = deps }, Routes)
end

for _, m in ipairs({ "GET", "POST", "PUT", "PATCH", "DELETE" }) do
  Routes[m:lower()] = function(self, path, opts, handler)
    self.app:add(m, path, _M.route(self.deps, m, opts, handler))
    return self
  end
end

return _M
