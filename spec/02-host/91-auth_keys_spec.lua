-- Partners' secret API keys through real HTTP against core's routes and real Postgres: shown
-- once and stored as a keyed hash, rotation with a grace period, revocation, last use, test and
-- live mode apart, partners apart, scopes.
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"
local keys = require "nuvion.auth.keys"
local config = require "nuvion.auth.config"
local fx = require "spec.auth_fixture"
local openapi = require "spec.openapi"

describe("api keys", function()
  local srv, db, partner, secret, port

  lazy_setup(function()
    db = fx.db()
    srv = fx.start_core({ NUVION_API_KEY_LAST_USED_INTERVAL_S = "2" })
    port = srv.port
    partner = fx.partner(db)
    secret = fx.key(db, partner, "test")
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  it("creates a key whose secret is shown once and stored only as its keyed hash", function()
    local res = fx.call(port, "POST", "/v1/api_keys", secret, { name = "backend", scopes = { "api_keys:read" } })
    assert.equals(201, res.status)
    local new = res.data
    assert(openapi.check(new, "ApiKey"))
    assert.matches("^sk_test_[0-9A-Za-z]+$", new.secret)
    assert.equals(8 + keys.SECRET_CHARS, #new.secret)
    assert.equals("test", new.mode)
    assert.equals(new.secret:sub(1, 12) .. "..." .. new.secret:sub(-4), new.redacted)
    -- the table: the HMAC under the pepper, nothing that holds the secret
    local rows = assert(db:query("SELECT key_hash, row_to_json(k)::text AS whole FROM api_keys k WHERE id = $1",
                                 new.id))
    assert.equals(crypto.hmac_sha256(assert(config.pepper()), new.secret), rows[1].key_hash)
    assert.is_nil(rows[1].whole:find(new.secret:sub(13, -5), 1, true))
    -- never again over the API
    local got = fx.call(port, "GET", "/v1/api_keys/" .. new.id, secret)
    assert.equals(200, got.status)
    assert.is_nil(got.data.secret)
    local list = fx.call(port, "GET", "/v1/api_keys?limit=100", secret)
    assert.equals(200, list.status)
    assert(openapi.check(list.data, "List"))
    for _, k in ipairs(list.data.data) do assert(openapi.check(k, "ApiKey")) end
    assert.is_nil(list.body:find(new.secret, 1, true))
    -- and the new key works, with its scopes only
    assert.equals(200, fx.call(port, "GET", "/v1/api_keys", new.secret).status)
    local denied = fx.call(port, "POST", "/v1/api_keys", new.secret, { name = "x" })
    assert.equals(403, denied.status)
    assert.equals("insufficient_scope", denied.data.error.code)
  end)

  it("refuses a missing, malformed or unknown key", function()
    local cases = {
      { nil, "missing_api_key" },
      { "sk_test_", "invalid_api_key" },
      { "sk_test_" .. string.rep("A", 43), "invalid_api_key" },
      { "sk_test_" .. string.rep("A", 200), "invalid_api_key" },
      { "sk_prod_abc", "invalid_api_key" },
    }
    for _, c in ipairs(cases) do
      local res = fx.call(port, "GET", "/v1/whoami", c[1])
      assert.equals(401, res.status)
      assert.equals(c[2], res.data.error.code)
    end
    local basic = fx.call(port, "GET", "/v1/whoami", nil, nil, { Authorization = "Basic abc" })
    assert.equals("invalid_authorization", basic.data.error.code)
  end)

  it("validates the body and the list parameters", function()
    local cases = {
      { "POST", "/v1/api_keys", {}, "name" },
      { "POST", "/v1/api_keys", { name = string.rep("n", 201) }, "name" },
      { "POST", "/v1/api_keys", { name = "x", scopes = "all" }, "scopes" },
      { "POST", "/v1/api_keys", { name = "x", scopes = { "bad scope" } }, "scopes[0]" },
      { "POST", "/v1/api_keys", { name = "x", mode = "live" }, "mode" },
      { "POST", "/v1/api_keys", { name = "x", scopes = (function()
        local t = {}
        for i = 1, 33 do t[i] = "s" .. i end
        return t
      end)() }, "scopes" },
      { "GET", "/v1/api_keys?limit=0", nil, "limit" },
      { "GET", "/v1/api_keys?limit=101", nil, "limit" },
      { "GET", "/v1/api_keys?starting_after=x", nil, "starting_after" },
    }
    for _, c in ipairs(cases) do
      local res = fx.call(port, c[1], c[2], secret, c[3])
      assert.equals(400, res.status)
      assert.equals(c[4], res.data.error.param)
      assert(openapi.check(res.data, "Error"))
    end
  end)

  it("lists newest first with cursors", function()
    local p = fx.partner(db)
    local s = fx.key(db, p, "test")
    local ids = {}
    for i = 1, 3 do ids[i] = fx.call(port, "POST", "/v1/api_keys", s, { name = "k" .. i }).data.id end
    local page1 = fx.call(port, "GET", "/v1/api_keys?limit=2", s).data
    assert.same({ ids[3], ids[2] }, { page1.data[1].id, page1.data[2].id })
    assert.is_true(page1.has_more)
    local page2 = fx.call(port, "GET", "/v1/api_keys?limit=2&starting_after=" .. ids[2], s).data
    assert.equals(ids[1], page2.data[1].id)
    assert.equals(2, #page2.data) -- k1 and the key the spec made
    assert.is_false(page2.has_more)
    local back = fx.call(port, "GET", "/v1/api_keys?limit=1&ending_before=" .. ids[1], s).data
    assert.equals(ids[2], back.data[1].id)
    assert.is_true(back.has_more)
  end)

  it("rolls a key: the old one works during the grace period and not after", function()
    local old = fx.call(port, "POST", "/v1/api_keys", secret, { name = "to roll" }).data
    local res = fx.call(port, "POST", "/v1/api_keys/" .. old.id .. "/roll", secret, { expires_in = 1 })
    assert.equals(201, res.status)
    local new = res.data
    assert(openapi.check(new, "ApiKey"))
    assert.are_not.equal(old.secret, new.secret)
    assert.equals(old.id, new.rolled_from)
    assert.equals("expiring", new.previous.status)
    assert.equals(200, fx.call(port, "GET", "/v1/whoami", old.secret).status)
    assert.equals(200, fx.call(port, "GET", "/v1/whoami", new.secret).status)
    nuvion.sleep(1200)
    local after = fx.call(port, "GET", "/v1/whoami", old.secret)
    assert.equals(401, after.status)
    assert.equals("api_key_expired", after.data.error.code)
    assert.equals(200, fx.call(port, "GET", "/v1/whoami", new.secret).status)
    assert.equals("expired", fx.call(port, "GET", "/v1/api_keys/" .. old.id, secret).data.status)
    -- an expired key rolls no more; a bad grace is refused
    assert.equals(400, fx.call(port, "POST", "/v1/api_keys/" .. old.id .. "/roll", secret).status)
    local bad = fx.call(port, "POST", "/v1/api_keys/" .. new.id .. "/roll", secret, { expires_in = 7 * 86400 + 1 })
    assert.equals("expires_in", bad.data.error.param)
  end)

  it("rolls with no grace: the old key stops at once", function()
    local old = fx.call(port, "POST", "/v1/api_keys", secret, { name = "to roll now" }).data
    local new = fx.call(port, "POST", "/v1/api_keys/" .. old.id .. "/roll", secret, { expires_in = 0 }).data
    assert.equals(401, fx.call(port, "GET", "/v1/whoami", old.secret).status)
    assert.equals(200, fx.call(port, "GET", "/v1/whoami", new.secret).status)
  end)

  it("revokes a key at once", function()
    local k = fx.call(port, "POST", "/v1/api_keys", secret, { name = "to revoke" }).data
    assert.equals(200, fx.call(port, "GET", "/v1/whoami", k.secret).status)
    local res = fx.call(port, "POST", "/v1/api_keys/" .. k.id .. "/revoke", secret)
    assert.equals(200, res.status)
    assert.equals("revoked", res.data.status)
    assert(openapi.check(res.data, "ApiKey"))
    local after = fx.call(port, "GET", "/v1/whoami", k.secret)
    assert.equals(401, after.status)
    assert.equals("api_key_revoked", after.data.error.code)
    -- no token for it either, and no roll
    local tok = fx.call(port, "POST", "/v1/oauth/token", nil, { grant_type = "client_credentials",
                                                                 client_secret = k.secret })
    assert.equals(401, tok.status)
    assert.equals("invalid_client", tok.data.error.code)
    assert.equals(400, fx.call(port, "POST", "/v1/api_keys/" .. k.id .. "/roll", secret).status)
  end)

  it("records the last use, writing it at most once per interval", function()
    local k = fx.call(port, "POST", "/v1/api_keys", secret, { name = "used" }).data
    local function last_used()
      return assert(db:query("SELECT last_used_at::text AS t FROM api_keys WHERE id = $1", k.id))[1].t
    end
    assert.is_nil(last_used())
    fx.call(port, "GET", "/v1/whoami", k.secret)
    local first = last_used()
    assert.is_string(first)
    for _ = 1, 5 do fx.call(port, "GET", "/v1/whoami", k.secret) end
    assert.equals(first, last_used())          -- within the 2 s interval: no write
    nuvion.sleep(2100)
    fx.call(port, "GET", "/v1/whoami", k.secret)
    assert.are_not.equal(first, last_used())
    assert.is_number(fx.call(port, "GET", "/v1/api_keys/" .. k.id, secret).data.last_used)
  end)

  it("remembers at most TOUCHED_MAX keys per worker, writing once per interval each", function()
    -- in this process, with the code core runs: a lower bound is hit with a few keys
    local saved = keys.TOUCHED_MAX
    keys.TOUCHED_MAX = 3
    local ok, err = pcall(function()
      local secrets = {}
      for i = 1, 5 do secrets[i] = fx.key(db, partner, "test") end
      for i = 1, 5 do
        assert(keys.authenticate(db, secrets[i]))
        assert.is_true(keys.touched_count() <= 3)
      end
    end)
    keys.TOUCHED_MAX = saved
    assert(ok, err)
  end)

  it("keeps test and live keys apart", function()
    local live = fx.key(db, partner, "live")
    local live_key = fx.call(port, "POST", "/v1/api_keys", live, { name = "live one" }).data
    assert.matches("^sk_live_", live_key.secret)
    assert.equals("live", live_key.mode)
    local test_list = fx.call(port, "GET", "/v1/api_keys?limit=100", secret).data
    for _, k in ipairs(test_list.data) do assert.equals("test", k.mode) end
    local live_list = fx.call(port, "GET", "/v1/api_keys?limit=100", live).data
    for _, k in ipairs(live_list.data) do assert.equals("live", k.mode) end
    -- a test key cannot see, roll or revoke a live key (and the other way round)
    assert.equals(404, fx.call(port, "GET", "/v1/api_keys/" .. live_key.id, secret).status)
    assert.equals(404, fx.call(port, "POST", "/v1/api_keys/" .. live_key.id .. "/roll", secret).status)
    assert.equals(404, fx.call(port, "POST", "/v1/api_keys/" .. live_key.id .. "/revoke", secret).status)
    assert.equals(200, fx.call(port, "GET", "/v1/whoami", live_key.secret).status)
    local test_row = test_list.data[1]
    assert.equals(404, fx.call(port, "GET", "/v1/api_keys/" .. test_row.id, live).status)
    -- tokens carry the mode
    assert.equals("live", fx.call(port, "GET", "/v1/whoami", fx.token(port, live)).data.mode)
    assert.equals("test", fx.call(port, "GET", "/v1/whoami", fx.token(port, secret)).data.mode)
  end)

  it("keeps partners apart", function()
    local other = fx.key(db, fx.partner(db), "test")
    local mine = fx.call(port, "POST", "/v1/api_keys", secret, { name = "mine" }).data
    assert.equals(404, fx.call(port, "GET", "/v1/api_keys/" .. mine.id, other).status)
    assert.equals(404, fx.call(port, "POST", "/v1/api_keys/" .. mine.id .. "/revoke", other).status)
    assert.equals(200, fx.call(port, "GET", "/v1/whoami", mine.secret).status)
    for _, k in ipairs(fx.call(port, "GET", "/v1/api_keys?limit=100", other).data.data) do
      assert.are_not.equal(mine.id, k.id)
    end
  end)

  it("never grants a scope the caller lacks", function()
    local reader = fx.key(db, partner, "test", { "api_keys:read", "api_keys:write" })
    local res = fx.call(port, "POST", "/v1/api_keys", reader, { name = "wider", scopes = { "*" } })
    assert.equals(403, res.status)
    assert.equals("scopes", res.data.error.param)
    assert.equals(201, fx.call(port, "POST", "/v1/api_keys", reader, { name = "same",
                                                                       scopes = { "api_keys:read" } }).status)
  end)
end)

describe("api keys without their secrets", function()
  local srv

  lazy_setup(function()
    -- no NUVION_ENV: the development pepper and keyring are not allowed
    srv = fx.start_core({ NUVION_ENV = false })
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  it("refuses to check keys or sign tokens", function()
    local res = fx.call(srv.port, "GET", "/v1/whoami", "sk_test_" .. string.rep("A", 43))
    assert.equals(500, res.status)
    assert.equals("auth_misconfigured", res.data.error.code)
    local jwks = fx.call(srv.port, "GET", "/.well-known/jwks.json")
    assert.equals(503, jwks.status)
    assert.equals("jwks_unavailable", jwks.data.error.code)
  end)
end)
