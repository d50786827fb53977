-- Access tokens through real HTTP: issued by core (POST /v1/oauth/token), checked by core and
-- by another service against core's JWKS; expiry, tampering, signing key rotation, the bounded
-- cache of verified tokens and the bounded rate of JWKS fetches.
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"
local json = require "nuvion.json"
local auth = require "nuvion.auth"
local jwt = require "nuvion.auth.jwt"
local signer = require "nuvion.auth.signer"
local config = require "nuvion.auth.config"
local fx = require "spec.auth_fixture"
local openapi = require "spec.openapi"

local TTL_S = 2
local CACHE_MAX = 4
local JWKS_MIN_REFRESH_MS = 300

describe("access tokens", function()
  local core, svc, db, partner, secret

  lazy_setup(function()
    db = fx.db()
    -- the spec process rotates keys with the servers' settings
    auth.configure({ token_ttl_s = TTL_S, clock_skew_s = 0 })
    core = fx.start_core({ NUVION_ACCESS_TOKEN_TTL_S = tostring(TTL_S), NUVION_AUTH_CLOCK_SKEW_S = "0",
                           NUVION_AUTH_SIGNING_KEY_REFRESH_S = "0" })
    svc = fx.start_service(core.port, { NUVION_AUTH_TOKEN_CACHE_MAX = tostring(CACHE_MAX),
                                        NUVION_AUTH_CLOCK_SKEW_S = "0",
                                        NUVION_AUTH_JWKS_MIN_REFRESH_MS = tostring(JWKS_MIN_REFRESH_MS) })
    partner = fx.partner(db)
    secret = fx.key(db, partner, "test", { "api_keys:read", "customers:read", "customers:write" })
  end)

  lazy_teardown(function()
    if svc then svc:stop() end
    if core then core:stop() end
    auth.reset()
    auth.configure({ NUVION_ENV = "test" })
  end)

  local function stats()
    return fx.call(svc.port, "GET", "/debug/auth").data
  end

  local function whoami(port, token)
    return fx.call(port, "GET", "/v1/whoami", token)
  end

  it("issues a signed token that core and another service accept", function()
    local token = fx.token(core.port, secret)
    local header, claims = fx.parts(token)
    assert.same({ "EdDSA", "JWT" }, { header.alg, header.typ })
    local jwks = fx.call(core.port, "GET", "/.well-known/jwks.json").data
    assert(openapi.check(jwks, "Jwks"))
    local found
    for _, k in ipairs(jwks.keys) do
      if k.kid == header.kid then found = k end
    end
    assert.same({ "OKP", "Ed25519", "EdDSA" }, { found.kty, found.crv, found.alg })
    assert.equals(32, #crypto.base64url_decode(found.x))
    assert.equals(partner, claims.partner)
    assert.equals("test", claims.mode)
    assert.equals(TTL_S, claims.exp - claims.iat)
    assert.matches("^%x+$", claims.jti)
    for _, port in ipairs({ core.port, svc.port }) do
      local res = whoami(port, token)
      assert.equals(200, res.status)
      assert.same({ partner, "test", "access_token" }, { res.data.partner, res.data.mode, res.data.kind })
      assert.same({ "api_keys:read", "customers:read", "customers:write" }, res.data.scopes)
    end
  end)

  it("takes the key by Basic, form or JSON, narrows scopes, and refuses bad requests", function()
    local form = fx.call(core.port, "POST", "/v1/oauth/token", nil,
      "grant_type=client_credentials&client_secret=" .. secret .. "&scope=customers:read",
      { ["Content-Type"] = "application/x-www-form-urlencoded" })
    assert.equals(200, form.status)
    assert(openapi.check(form.data, "AccessToken"))
    assert.equals("customers:read", form.data.scope)
    assert.equals("Bearer", form.data.token_type)
    assert.equals(TTL_S, form.data.expires_in)
    assert.same({ "customers:read" }, whoami(svc.port, form.data.access_token).data.scopes)
    local js = fx.call(core.port, "POST", "/v1/oauth/token", nil, { grant_type = "client_credentials",
                                                                     client_secret = secret })
    assert.equals(200, js.status)
    local cases = {
      { { grant_type = "password", client_secret = secret }, nil, 400, "unsupported_grant_type" },
      { { client_secret = secret }, nil, 400, "unsupported_grant_type" },
      { { grant_type = "client_credentials" }, nil, 401, "invalid_client" },
      { { grant_type = "client_credentials", client_secret = "sk_test_nope" }, nil, 401, "invalid_client" },
      { { grant_type = "client_credentials", client_secret = secret, scope = "payouts:write" }, nil, 400,
        "invalid_scope" },
      { { grant_type = "client_credentials", client_secret = secret },
        { Authorization = "Basic " .. crypto.base64_encode(secret .. ":") }, 400, "invalid_request" },
      { { grant_type = "client_credentials" }, { Authorization = "Basic !!" }, 401, "invalid_client" },
    }
    for i, c in ipairs(cases) do
      local res = fx.call(core.port, "POST", "/v1/oauth/token", nil, c[1], c[2])
      assert.equals(c[3], res.status, "case " .. i)
      assert.equals(c[4], res.data.error.code, "case " .. i)
      assert(openapi.check(res.data, "Error"))
    end
    -- an access token cannot mint another one
    local tok = fx.token(core.port, secret)
    local res = fx.call(core.port, "POST", "/v1/oauth/token", nil, { grant_type = "client_credentials",
                                                                      client_secret = tok })
    assert.equals(401, res.status)
  end)

  it("accepts secret keys in core only", function()
    assert.equals(200, whoami(core.port, secret).status)
    local res = whoami(svc.port, secret)
    assert.equals(401, res.status)
    assert.equals("secret_key_not_accepted", res.data.error.code)
  end)

  it("refuses an expired token, also from the cache", function()
    local token = fx.token(core.port, secret)
    local _, claims = fx.parts(token)
    assert.equals(200, whoami(svc.port, token).status)
    assert.equals(200, whoami(core.port, token).status)
    local before = stats()
    nuvion.sleep(math.ceil((claims.exp - nuvion.now()) * 1000) + 20)
    for _, port in ipairs({ core.port, svc.port }) do
      local res = whoami(port, token)
      assert.equals(401, res.status)
      assert.equals("token_expired", res.data.error.code)
    end
    assert.equals(before.expired + 1, stats().expired)  -- the cached entry honoured its expiry
  end)

  it("refuses tampered tokens", function()
    local token = fx.token(core.port, secret)
    local header, claims, h, c, s = fx.parts(token)
    local live = {}
    for k, v in pairs(claims) do live[k] = v end
    live.mode = "live"
    local other_seed = crypto.random(32)
    local function signed(hdr, cl, seed)
      local input = fx.b64json(hdr) .. "." .. fx.b64json(cl)
      return input .. "." .. crypto.base64url_encode(crypto.ed25519_sign(seed, input))
    end
    local flipped = s:sub(1, 1) == "A" and "B" or "A"
    local access_as_service = {}
    for k, v in pairs(claims) do access_as_service[k] = v end
    access_as_service.iss = "core"
    local cases = {
      { h .. "." .. fx.b64json(live) .. "." .. s, jwt.ERR_SIGNATURE },                 -- payload changed
      { h .. "." .. c .. "." .. flipped .. s:sub(2), jwt.ERR_SIGNATURE },              -- signature changed
      { h .. "." .. c .. ".", jwt.ERR_SIGNATURE },                                      -- no signature
      { fx.b64json({ alg = "none", typ = "JWT", kid = header.kid }) .. "." .. c .. ".", jwt.ERR_ALG },
      { fx.b64json({ alg = "HS256", typ = "JWT", kid = header.kid }) .. "." .. c .. "." ..
        crypto.base64url_encode(crypto.hmac_sha256("k", "x")), jwt.ERR_ALG },
      { fx.b64json({ alg = "EdDSA", typ = "JWT", kid = "ed_unknown" }) .. "." .. c .. "." .. s, jwt.ERR_KID },
      { fx.b64json({ alg = "EdDSA", typ = "JWT" }) .. "." .. c .. "." .. s, jwt.ERR_KID },
      { signed(header, live, other_seed), jwt.ERR_SIGNATURE },                         -- another key, real kid
      -- a service key (public in development) signing partner claims
      { signed({ alg = "EdDSA", typ = "JWT", kid = "svc.core" }, access_as_service,
               assert(config.service_seed("core"))), auth.ERR_KIND },
      { "abc", jwt.ERR_FORMAT },
      { token .. ".x", jwt.ERR_FORMAT },
      { string.rep("a", jwt.TOKEN_BYTES_MAX + 1), jwt.ERR_TOO_LARGE },
    }
    for i, case in ipairs(cases) do
      for _, port in ipairs({ core.port, svc.port }) do
        local res = whoami(port, case[1])
        assert.equals(401, res.status, "case " .. i)
        assert.equals(case[2], res.data.error.message, "case " .. i)
      end
    end
    assert.equals(200, whoami(svc.port, token).status) -- the original still works
  end)

  it("rotates the signing key: the old one stays published until its tokens expire", function()
    local old_token = fx.token(core.port, secret)
    local old_kid = fx.parts(old_token).kid
    local new_kid = assert(signer.rotate(db))
    local new_token = fx.token(core.port, secret)
    assert.equals(new_kid, fx.parts(new_token).kid)
    local function published()
      local set = {}
      for _, k in ipairs(fx.call(core.port, "GET", "/.well-known/jwks.json").data.keys) do set[k.kid] = true end
      return set
    end
    assert.is_true(published()[old_kid] and published()[new_kid])
    nuvion.sleep(JWKS_MIN_REFRESH_MS + 50)
    local fetches = stats().jwks.fetches
    -- the service has not seen new_kid: it fetches the JWKS again, once
    assert.equals(200, whoami(svc.port, new_token).status)
    assert.equals(200, whoami(svc.port, old_token).status)
    assert.equals(200, whoami(core.port, new_token).status)
    assert.equals(fetches + 1, stats().jwks.fetches)
    nuvion.sleep(TTL_S * 1000 + 100)
    assert.is_nil(published()[old_kid])
    assert.is_true(published()[new_kid])
  end)

  it("verifies a token once and serves it from the cache after", function()
    local token = fx.token(core.port, secret)
    local before = stats()
    for _ = 1, 5 do assert.equals(200, whoami(svc.port, token).status) end
    local after = stats()
    assert.equals(before.verifications + 1, after.verifications)
    assert.equals(before.hits + 4, after.hits)
  end)

  it("keeps at most NUVION_AUTH_TOKEN_CACHE_MAX tokens", function()
    local tokens = {}
    for i = 1, 10 do tokens[i] = fx.token(core.port, secret) end
    local before = stats()
    for i = 1, 10 do assert.equals(200, whoami(svc.port, tokens[i]).status) end
    local after = stats()
    assert.equals(CACHE_MAX, after.max)
    assert.is_true(after.size <= CACHE_MAX)
    assert.is_true(after.evictions >= before.evictions + 10 - CACHE_MAX)
    assert.equals(before.verifications + 10, after.verifications)
    -- the first was evicted: checked again; the last is still cached
    assert.equals(200, whoami(svc.port, tokens[1]).status)
    assert.equals(200, whoami(svc.port, tokens[10]).status)
    local last = stats()
    assert.equals(after.verifications + 1, last.verifications)
    assert.equals(after.hits + 1, last.hits)
  end)

  it("fetches the JWKS for unknown kids at most once per NUVION_AUTH_JWKS_MIN_REFRESH_MS", function()
    nuvion.sleep(JWKS_MIN_REFRESH_MS + 50)
    local fetches = stats().jwks.fetches
    local claims = { iss = auth.ISSUER, kind = "access", partner = partner, mode = "test", scopes = json.array({}),
                     iat = math.floor(nuvion.now()), exp = math.floor(nuvion.now()) + 60 }
    local t0 = nuvion.monotonic_ms()
    for i = 1, 20 do
      local input = fx.b64json({ alg = "EdDSA", kid = "ed_made_up_" .. i }) .. "." .. fx.b64json(claims)
      local forged = input .. "." .. crypto.base64url_encode(crypto.ed25519_sign(crypto.random(32), input))
      local res = whoami(svc.port, forged)
      assert.equals(401, res.status)
      assert.equals(jwt.ERR_KID, res.data.error.message)
    end
    -- one fetch per window at most (a slow run, say under ASan, may span a few windows)
    local allowed = 1 + math.floor((nuvion.monotonic_ms() - t0) / JWKS_MIN_REFRESH_MS)
    assert.is_true(allowed < 20, "the run was too slow to show the bound")
    local made = stats().jwks.fetches - fetches
    assert.is_true(made >= 1 and made <= allowed, made .. " fetches, " .. allowed .. " allowed")
  end)

  it("publishes at most PUBLISHED_KEYS_MAX signing keys", function()
    for _ = 1, signer.PUBLISHED_KEYS_MAX + 2 do assert(signer.rotate(db)) end
    local jwks = fx.call(core.port, "GET", "/.well-known/jwks.json").data
    assert.equals(signer.PUBLISHED_KEYS_MAX, #jwks.keys)
    -- and the newest signs
    assert.equals(jwks.keys[1].kid, fx.parts(fx.token(core.port, secret)).kid)
  end)
end)

describe("access tokens when core's JWKS cannot be fetched", function()
  local svc

  lazy_setup(function()
    svc = fx.start_service(1, { NUVION_AUTH_JWKS_MIN_REFRESH_MS = "0" }) -- nothing listens on port 1
  end)

  lazy_teardown(function()
    if svc then svc:stop() end
  end)

  it("refuses tokens of unknown keys and counts the failed fetches", function()
    local seed = crypto.random(32)
    local now = math.floor(nuvion.now())
    local input = fx.b64json({ alg = "EdDSA", kid = "ed_x" }) .. "." .. fx.b64json({ iss = auth.ISSUER,
      kind = "access", partner = "ptn_x", mode = "test", scopes = json.array({}), iat = now, exp = now + 60 })
    local token = input .. "." .. crypto.base64url_encode(crypto.ed25519_sign(seed, input))
    local res = fx.call(svc.port, "GET", "/v1/whoami", token)
    assert.equals(401, res.status)
    assert.equals(jwt.ERR_KID, res.data.error.message)
    local s = fx.call(svc.port, "GET", "/debug/auth").data
    assert.equals(1, s.jwks.fetches)
    assert.equals(1, s.jwks.failures)
    assert.equals(0, s.jwks.keys)
  end)
end)
