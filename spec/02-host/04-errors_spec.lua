-- A handler that fails answers 500 with its request id; the failure is logged
-- with its traceback and the worker goes on serving. A worker that dies is
-- respawned by the supervisor.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"

describe("handler errors", function()
  local srv

  lazy_setup(function() srv = helpers.start_server() end)
  lazy_teardown(function() srv:stop() end)

  it("answers 500 with the request id and logs the traceback", function()
    local res = assert(helpers.request(srv.port, { path = "/error" }))
    assert.equals(500, res.status)
    local err = res.json().error
    assert.equals("api_error", err.type)
    assert.equals("internal_error", err.code)
    local id = res.headers["x-request-id"]
    assert.equals(id, err.request_id)
    local line = srv:wait_log({ level = "error", request_id = id, event = "handler_error" })
    assert.is_truthy(line, "no error line")
    assert.matches("boom in handler", line.msg, 1, true)
    assert.matches("stack traceback", line.msg, 1, true)
    assert.not_matches("boom", res.body, 1, true) -- internals stay in the logs
  end)

  it("keeps serving from the same worker after a handler error", function()
    local before = srv:logs({ msg = "generation 1 serving" })[1].pid
    for _ = 1, 5 do
      assert.equals(500, assert(helpers.request(srv.port, { path = "/error" })).status)
    end
    local res = assert(helpers.request(srv.port, { path = "/hello" }))
    assert.equals(200, res.status)
    local last = srv:wait_log({ msg = "request", route = "/hello" })
    assert.equals(before, last.pid)
  end)

  it("answers 500 when a handler returns an invalid status", function()
    local res = assert(helpers.request(srv.port, { path = "/bad-status" }))
    assert.equals(500, res.status)
    assert.equals("internal_error", res.json().error.code)
  end)
end)

describe("supervisor", function()
  it("respawns a worker that dies", function()
    local srv = helpers.start_server({ workers = 2 })
    local victim = srv:logs({ msg = "generation 1 serving" })[1].pid
    local process_c = require "nuvion.process_c"
    assert(process_c.kill(victim, "KILL")) -- a worker of the server this spec started
    assert.is_truthy(srv:wait_log({ msg = "generation 1 serving" }, 5000, 3), "no respawn")
    for _ = 1, 20 do
      assert.equals(200, assert(helpers.request(srv.port, { path = "/hello" })).status)
    end
    local how, code = srv:stop()
    assert.equals("exit", how)
    assert.equals(0, code)
    nuvion.sleep(1)
  end)
end)
