-- Service-to-service tokens through real HTTP: an internal route takes a token signed by a
-- calling service and meant for this one, and refuses partners' secret keys and access tokens.
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"
local auth = require "nuvion.auth"
local jwt = require "nuvion.auth.jwt"
local fx = require "spec.auth_fixture"

describe("service tokens", function()
  local core, svc, db, secret

  lazy_setup(function()
    db = fx.db()
    core = fx.start_core()
    svc = fx.start_service(core.port, { NUVION_AUTH_CLOCK_SKEW_S = "0" })
    secret = fx.key(db, fx.partner(db), "test")
  end)

  lazy_teardown(function()
    if svc then svc:stop() end
    if core then core:stop() end
  end)

  local function ping(port, token, headers)
    return fx.call(port, "GET", "/internal/ping", token, nil, headers)
  end

  it("accepts a token signed by a calling service for this service", function()
    local res = ping(svc.port, auth.service_token("auth_service", { as = "core", fresh = true }))
    assert.equals(200, res.status)
    assert.equals("core", res.data.service)
    local to_core = ping(core.port, auth.service_token("core", { as = "payout", fresh = true }))
    assert.equals(200, to_core.status)
    assert.equals("payout", to_core.data.service)
  end)

  it("reuses a minted token until shortly before it expires", function()
    local a = auth.service_token("auth_service", { as = "core" })
    assert.equals(a, auth.service_token("auth_service", { as = "core" }))
    assert.are_not.equal(a, auth.service_token("auth_service", { as = "core", fresh = true }))
  end)

  it("refuses partners' credentials and no credentials", function()
    local cases = {
      { nil, 401, "missing_api_key" },
      { secret, 403, "service_token_required" },
      { fx.token(core.port, secret), 403, "service_token_required" },
    }
    for i, c in ipairs(cases) do
      for _, port in ipairs({ core.port, svc.port }) do
        local res = ping(port, c[1])
        assert.equals(c[2], res.status, "case " .. i)
        assert.equals(c[3], res.data.error.code, "case " .. i)
      end
    end
  end)

  it("refuses a service token on a partner route", function()
    local res = fx.call(svc.port, "GET", "/v1/whoami", auth.service_token("auth_service", { as = "core" }))
    assert.equals(401, res.status)
    assert.equals(auth.ERR_SERVICE_TOKEN_HERE, res.data.error.message)
  end)

  it("refuses a token meant for another service, from a service not allowed, forged or expired", function()
    local seed = crypto.random(32)
    local now = math.floor(nuvion.now())
    local input = fx.b64json({ alg = "EdDSA", typ = "JWT", kid = "svc.core" }) .. "." .. fx.b64json({
      iss = "core", sub = "service:core", aud = "auth_service", kind = "service", iat = now, exp = now + 60 })
    local forged = input .. "." .. crypto.base64url_encode(crypto.ed25519_sign(seed, input))
    local cases = {
      { auth.service_token("payout", { as = "core", fresh = true }), 401, auth.ERR_AUDIENCE },
      { auth.service_token("auth_service", { as = "acquiring", fresh = true }), 403, auth.ERR_SERVICE_NOT_ALLOWED },
      { forged, 401, jwt.ERR_SIGNATURE },
      { auth.service_token("auth_service", { as = "core", fresh = true, iat = now - 100, ttl_s = -50 }), 401,
        jwt.ERR_EXPIRED },
    }
    for i, c in ipairs(cases) do
      local res = ping(svc.port, c[1])
      assert.equals(c[2], res.status, "case " .. i)
      assert.equals(c[3], res.data.error.message, "case " .. i)
    end
  end)
end)
