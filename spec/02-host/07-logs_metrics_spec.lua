-- Logs: one JSON object a line with ts, level, msg, service, request_id and
-- trace_id; one access line per request. Metrics: Prometheus text format.
local helpers = require "spec.helpers"

describe("logs and metrics", function()
  local srv

  lazy_setup(function() srv = helpers.start_server({ workers = 2 }) end)
  lazy_teardown(function() srv:stop() end)

  it("writes every line as one JSON object", function()
    assert(helpers.request(srv.port, { path = "/hello" }))
    srv:wait_log({ msg = "request" })
    for _, line in ipairs(srv.lines) do
      local rec = require("nuvion.json").decode(line)
      assert.is_table(rec, line)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", rec.ts)
      assert.is_string(rec.level)
      assert.is_string(rec.msg)
      assert.is_string(rec.service)
    end
  end)

  it("writes an access line with method, route, status and duration", function()
    local res = assert(helpers.request(srv.port, { path = "/params/7/items/x", headers = {
      traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } }))
    local line = srv:wait_log({ msg = "request", request_id = res.headers["x-request-id"] })
    assert.is_truthy(line)
    assert.equals("GET", line.method)
    assert.equals("/params/:id/items/:item", line.route)
    assert.equals("/params/7/items/x", line.path)
    assert.equals(200, line.status)
    assert.is_number(line.duration_ms)
    assert.equals("0af7651916cd43dd8448eb211c80319c", line.trace_id)
    assert.equals("basic", line.service)
  end)

  it("tags lines written by handlers with the request and trace ids", function()
    local res = assert(helpers.request(srv.port, { path = "/log?who=ops" }))
    local line = srv:wait_log({ msg = "custom line", request_id = res.headers["x-request-id"] })
    assert.is_truthy(line)
    assert.equals(42, line.answer)
    assert.equals("ops", line.who)
    assert.matches("^%x+$", line.trace_id)
  end)

  it("generates a request id when the client sends none or an unsafe one", function()
    local res = assert(helpers.request(srv.port, { path = "/hello", headers = { ["X-Request-ID"] = 'bad"id' } }))
    assert.matches("^%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x$",
                   res.headers["x-request-id"])
  end)

  it("serves /metrics in Prometheus text format for the whole server", function()
    for _ = 1, 10 do assert(helpers.request(srv.port, { path = "/hello" })) end
    assert(helpers.request(srv.port, { path = "/nope" }))
    local res = assert(helpers.request(srv.port, { path = "/metrics" }))
    assert.equals(200, res.status)
    assert.equals("text/plain; version=0.0.4", res.headers["content-type"])
    local body = res.body
    local n = tonumber(body:match('nuvion_http_requests_total{service="basic",route="/hello",status="200"} (%d+)'))
    assert.is_true(n >= 10, "requests counted across workers: " .. tostring(n))
    assert.matches('route="unmatched",status="404"', body, 1, true)
    assert.matches('nuvion_http_request_duration_seconds_bucket{service="basic",route="/hello",status="200",le="+Inf"}',
                   body, 1, true)
    assert.matches("# TYPE nuvion_http_request_duration_seconds histogram", body, 1, true)
    assert.matches('nuvion_http_open_connections{service="basic",worker="1"}', body, 1, true)
    assert.matches('nuvion_http_open_connections{service="basic",worker="2"}', body, 1, true)
    local mem = tonumber(body:match('nuvion_lua_memory_bytes{service="basic",worker="%d"} (%d+)'))
    assert.is_true(mem > 0)
  end)

  it("counts unmatched paths under one series, so scans cannot grow memory", function()
    for i = 1, 30 do assert(helpers.request(srv.port, { path = "/scan/" .. i })) end
    local body = assert(helpers.request(srv.port, { path = "/metrics" })).body
    assert.not_matches("/scan/", body, 1, true)
  end)
end)
