-- nuvion.api.audit and the route wrapper around it: a row for every mutation with who, what,
-- when and the request id, in the change's transaction; none for refused requests or replays.
local fx = require "spec.api_fixture"
local audit = require "nuvion.api.audit"
local ids = require "nuvion.api.ids"
local crypto = require "nuvion.crypto"

describe("audit log", function()
  local srv, db, partner

  lazy_setup(function()
    srv = fx.start()
    db = fx.db()
    partner = fx.partner()
  end)
  lazy_teardown(function() if srv then srv:stop() end end)

  local function rows_for(request_id)
    return assert(db:query("SELECT * FROM api_audit_log WHERE request_id = $1", request_id))
  end

  it("writes who, what, when and the request id with the change", function()
    local res = fx.request(srv.port, { path = "/v1/things", partner = partner, key_id = "key_audit1",
                                       body = { name = "audited" } })
    assert.equals(200, res.status)
    local rows = rows_for(res.headers["x-request-id"])
    assert.equals(1, #rows)
    local a = rows[1]
    assert.equals(partner, a.partner_id)
    assert.equals("test", a.mode)
    assert.equals("key_audit1", a.key_id)
    assert.equals("secret_key", a.actor_kind)
    assert.equals("thing.create", a.action)
    assert.equals(res.json().id, a.object_id)
    assert.equals("POST", a.method)
    assert.equals("/v1/things", a.path)
    assert.is_true(ids.valid(a.id, "aud"))
    assert.is_string(a.created_at)
  end)

  it("writes the row itself, with the status, when the handler did not", function()
    local res = fx.request(srv.port, { path = "/v1/plain", partner = partner, mode = "live" })
    assert.equals(201, res.status)
    local rows = rows_for(res.headers["x-request-id"])
    assert.equals(1, #rows)
    assert.equals("thing.plain", rows[1].action)
    assert.equals("live", rows[1].mode)
    assert.equals(201, rows[1].status)
    assert.equals(res.json().id, rows[1].object_id)
  end)

  it("writes nothing for a request refused by validation, and nothing again for a replay", function()
    local bad = fx.request(srv.port, { path = "/v1/things", partner = partner, body = { name = 1 } })
    assert.equals(400, bad.status)
    assert.equals(0, #rows_for(bad.headers["x-request-id"]))
    local key = "audit-" .. crypto.hex_encode(crypto.random(8))
    local first = fx.request(srv.port, { path = "/v1/things", partner = partner, key = key, body = { name = "once" } })
    local again = fx.request(srv.port, { path = "/v1/things", partner = partner, key = key, body = { name = "once" } })
    assert.equals("true", again.headers["idempotent-replayed"])
    assert.equals(1, #rows_for(first.headers["x-request-id"]))
    assert.equals(0, #rows_for(again.headers["x-request-id"]))
  end)

  it("rolls back with the transaction it was written in", function()
    local rid = "spec-rollback-" .. crypto.hex_encode(crypto.random(6))
    local p = { partner_id = partner, mode = "test", kind = "secret_key" }
    local ok, err = db:tx(function(tx)
      assert(audit.record(tx, { principal = p, action = "thing.rollback", request_id = rid }))
      return nil, "abandoned"
    end)
    assert.is_nil(ok)
    assert.equals("abandoned", err)
    assert.equals(0, #rows_for(rid))
    assert(audit.record(db, { principal = p, action = "thing.kept", request_id = rid }))
    assert.equals(1, #rows_for(rid))
  end)

  it("is append-only, even for the role that owns it", function()
    local rid = "spec-append-" .. crypto.hex_encode(crypto.random(6))
    local id = assert(audit.record(db, { principal = { partner_id = partner, mode = "test" },
                                         action = "thing.x", request_id = rid }))
    local r, err = db:query("UPDATE api_audit_log SET action = 'thing.y' WHERE id = $1", id)
    assert.is_nil(r)
    assert.equals("insufficient_privilege", err.name)
    r, err = db:query("DELETE FROM api_audit_log WHERE id = $1", id)
    assert.is_nil(r)
    assert.equals("insufficient_privilege", err.name)
    assert.equals(1, #rows_for(rid))
  end)

  it("refuses a caller's bug: no principal, a malformed or too long action", function()
    local p = { partner_id = partner, mode = "test" }
    assert.has_error(function() audit.record(db, { action = "x.y" }) end)
    assert.has_error(function() audit.record(db, { principal = p, action = "Thing Create" }) end)
    assert.has_error(function()
      audit.record(db, { principal = p, action = string.rep("a", audit.ACTION_CHARS_MAX + 1) })
    end)
    assert.is_string(audit.record(db, { principal = p, action = string.rep("a", audit.ACTION_CHARS_MAX) }))
  end)
end)
