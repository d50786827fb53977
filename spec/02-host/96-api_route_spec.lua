-- The route wrapper of nuvion.api: authentication and scope before anything else, errors in the
-- one shape with their types, a handler that raises answered 500, and the rules it enforces on
-- the routes it is given.
local fx = require "spec.api_fixture"
local helpers = require "spec.helpers"
local openapi = require "spec.openapi"
local api = require "nuvion.api"
local errors = require "nuvion.api.errors"
local router = require "nuvion.router"

describe("api routes", function()
  local srv, partner

  lazy_setup(function()
    srv = fx.start()
    partner = fx.partner()
  end)
  lazy_teardown(function() if srv then srv:stop() end end)

  it("answers 401 authentication_error without credentials, before reading the body", function()
    local res = assert(helpers.request(srv.port, { method = "POST", path = "/v1/things", body = "{bad json" }))
    assert.equals(401, res.status)
    assert.equals("authentication_error", res.json().error.type)
    assert.equals("invalid_api_key", res.json().error.code)
    assert(openapi.check(res.json(), "Error"))
  end)

  it("answers 403 permission_error to a key without the route's scope", function()
    local res = fx.request(srv.port, { path = "/v1/things", partner = partner, scopes = "things:read",
                                       body = { name = "x" } })
    assert.equals(403, res.status)
    assert.equals("permission_error", res.json().error.type)
    assert.equals("missing_scope", res.json().error.code)
  end)

  it("serves a public route without credentials", function()
    local res = assert(helpers.request(srv.port, { path = "/v1/public" }))
    assert.equals(200, res.status)
  end)

  it("answers a raising handler 500 internal_error with the request id, and logs the traceback", function()
    local res = fx.request(srv.port, { path = "/v1/fail", partner = partner, body = { counter = "spec:route:fail" } })
    assert.equals(500, res.status)
    local err = res.json().error
    assert.equals("api_error", err.type)
    assert.equals(errors.ERR_INTERNAL, err.message)
    assert.equals(res.headers["x-request-id"], err.request_id)
    assert.is_truthy(srv:wait_log({ event = "handler_error" }, 2000))
  end)

  it("refuses to define a mutation without an audit action, or with a bad schema", function()
    local app = router.new()
    local routes = api.new(app, {})
    assert.has_error(function() routes:post("/x", {}, function() end) end)
    assert.has_error(function() routes:delete("/x", {}, function() end) end)
    assert.has_error(function() routes:post("/x", { audit = false, schema = { type = "nope" } }, function() end) end)
    routes:post("/x", { audit = false }, function() end)
    routes:get("/x", {}, function() end)
  end)

  it("renders outcomes with the type their status implies", function()
    assert.equals("authentication_error", errors.body({ status = 401, code = "c", message = "m" }).error.type)
    assert.equals("permission_error", errors.body({ status = 403, code = "c", message = "m" }).error.type)
    assert.equals("rate_limit_error", errors.body({ status = 429, code = "c", message = "m" }).error.type)
    assert.equals("api_error", errors.body({ status = 503, code = "c", message = "m" }).error.type)
    assert.equals("invalid_request_error", errors.body({ status = 404, code = "c", message = "m" }).error.type)
    assert.has_error(function() errors.new(200, "c", "m") end)
    assert.has_error(function() errors.new(400, "c", "m", nil, "made_up_error") end)
    -- an id from a path is echoed only when it looks like an id
    assert.matches("cus_abc", errors.not_found("customer", "cus_abc").message, 1, true)
    assert.equals("No such customer.", errors.not_found("customer", "a\255b").message)
  end)
end)

describe("core", function()
  local srv, db, partner, secret

  lazy_setup(function()
    local afx = require "spec.auth_fixture"
    db = afx.db()
    partner = afx.partner(db)
    secret = afx.key(db, partner, "test", { "api_keys:write", "api_keys:read", "audit_logs:read" })
    srv = helpers.start_server({ service = "core", env = { NUVION_ENV = "test" } })
  end)
  lazy_teardown(function() if srv then srv:stop() end end)

  local function call(method, path, bearer, body)
    local h = bearer and { Authorization = "Bearer " .. bearer } or nil
    return assert(helpers.request(srv.port, { method = method, path = path, headers = h, body = body }))
  end

  it("refuses settings out of their range, naming them, and takes those within", function()
    local process = require "nuvion.process"
    local function config_with(env)
      local p = assert(process.spawn({ helpers.bin, "run", helpers.root .. "/spec/fixtures/scripts/core_config.lua" },
                                     { env = env, output = "pipe" }))
      local line = p:line(10000)
      p:wait(10000)
      return line
    end
    for _, env in ipairs({ { NUVION_CORE_RATE_PER_S = "0" }, { NUVION_CORE_RATE_BURST = "1000001" },
                           { NUVION_CORE_DB_POOL_MAX = "x" }, { NUVION_CORE_DB_POOL_MAX = "257" },
                           { NUVION_CORE_IDEMPOTENCY_PURGE_MS = "999" }, { NUVION_CORE_LEDGER_INFLIGHT = "0" },
                           { NUVION_CORE_LEDGER_INFLIGHT = "17" }, { NUVION_CORE_LEDGER_BATCH_WAIT_US = "-1" },
                           { NUVION_CORE_LEDGER_BATCH_WAIT_US = "100001" } }) do
      local name = next(env)
      assert.matches("error " .. name .. " must be an integer from", config_with(env), 1, true)
    end
    assert.equals("ok rate_per_s=1000000 rate_burst=1 ledger_inflight=1 ledger_batch_wait_us=300",
                  config_with({ NUVION_CORE_RATE_PER_S = "1000000", NUVION_CORE_RATE_BURST = "1" }))
    assert.equals("ok rate_per_s=100 rate_burst=200 ledger_inflight=16 ledger_batch_wait_us=0",
                  config_with({ NUVION_CORE_LEDGER_INFLIGHT = "16", NUVION_CORE_LEDGER_BATCH_WAIT_US = "0" }))
  end)

  it("registers its route areas: GET /v1/audit_logs asks for credentials", function()
    local res = call("GET", "/v1/audit_logs")
    assert.equals(401, res.status)
    assert.equals("authentication_error", res.json().error.type)
    assert(openapi.check(res.json(), "Error"))
  end)

  it("lists a partner's audit log through its secret key, newest first", function()
    local made = {}
    for i = 1, 3 do
      local res = call("POST", "/v1/api_keys", secret, { name = "audit spec " .. i, scopes = { "api_keys:read" } })
      assert(res.status == 200 or res.status == 201, res.body)
      made[i] = res.headers["x-request-id"]
    end
    local res = call("GET", "/v1/audit_logs?limit=2", secret)
    assert.equals(200, res.status)
    local body = res.json()
    assert(openapi.check(body, "List"))
    assert.equals(2, #body.data)
    assert.is_true(body.has_more)
    assert.equals(made[3], body.data[1].request_id)
    assert.equals(made[2], body.data[2].request_id)
    assert.equals("api_key.create", body.data[1].action)
    for _, entry in ipairs(body.data) do assert(openapi.check(entry, "AuditLog")) end
    local older = call("GET", "/v1/audit_logs?limit=1&starting_after=" .. body.data[2].id, secret).json()
    assert.equals(made[1], older.data[1].request_id)
    assert.is_false(older.has_more)
  end)
end)
