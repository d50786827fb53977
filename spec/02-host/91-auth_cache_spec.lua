-- The verified-token cache (nuvion.auth.cache) on its own: its bound, what it evicts, expiry;
-- and the other bounds of token checking that need no server.
local cache = require "nuvion.auth.cache"
local jwks = require "nuvion.auth.jwks"
local jwt = require "nuvion.auth.jwt"
local crypto = require "nuvion.crypto"
local json = require "nuvion.json"

describe("auth token cache", function()
  it("never holds more than its max, evicting the least recently used generation", function()
    local c = cache.new(4)
    for i = 1, 4 do c:set("k" .. i, i, 100) end
    assert.equals(4, c:size())
    assert.equals(1, c:get("k1", 0))        -- k1 used again: it moves to the young generation
    c:set("k5", 5, 100)
    c:set("k6", 6, 100)
    assert.is_true(c:size() <= 4)
    assert.equals(1, c:get("k1", 0))
    assert.is_nil(c:get("k2", 0))           -- not used since: evicted
    for i = 7, 100 do
      c:set("k" .. i, i, 100)
      assert.is_true(c:size() <= 4)
    end
    assert.is_true(c:stats().evictions >= 96)
  end)

  it("drops an entry at its expiry and says so", function()
    local c = cache.new(10)
    c:set("a", "p", 50)
    assert.equals("p", c:get("a", 49))
    local v, expired = c:get("a", 50)
    assert.is_nil(v)
    assert.is_true(expired)
    assert.equals(0, c:size())
    assert.same({ nil, nil }, { c:get("a", 10) })  -- gone, not resurrected
    local s = c:stats()
    assert.same({ 1, 1, 1 }, { s.hits, s.expired, s.misses })
  end)

  it("refuses a bound below 2", function()
    assert.has_error(function() cache.new(1) end)
    assert.has_error(function() cache.new(2.5) end)
  end)

  it("keeps at most 64 parsed token headers", function()
    local key = function() return nil end
    for i = 1, 200 do
      local h = crypto.base64url_encode(json.encode({ alg = "EdDSA", kid = "k" .. i }))
      jwt.verify(h .. ".e30." .. string.rep("A", 86), key, 0, 0)
      assert.is_true(jwt.headers_cached() <= 64)
    end
    assert.is_true(jwt.headers_cached() > 0)
  end)

  it("refuses a JWKS of more than JWKS_KEYS_MAX keys", function()
    local function doc(n)
      local keys = {}
      for i = 1, n do
        keys[i] = { kty = "OKP", crv = "Ed25519", kid = "k" .. i, x = crypto.base64url_encode(crypto.random(32)) }
      end
      return json.encode({ keys = keys })
    end
    local ok = assert(jwks.parse(doc(jwks.JWKS_KEYS_MAX)))
    assert.is_string(ok.k1)
    local none, err = jwks.parse(doc(jwks.JWKS_KEYS_MAX + 1))
    assert.is_nil(none)
    assert.matches("more than", err)
    local big, berr = jwks.parse('{"keys":[],"pad":"' .. string.rep("x", jwks.JWKS_BYTES_MAX) .. '"}')
    assert.is_nil(big)
    assert.matches("larger than", berr)
    -- keys of another type are skipped, not errors
    local other = assert(jwks.parse('{"keys":[{"kty":"EC","crv":"P-256","kid":"e","x":"AA"}]}'))
    assert.is_nil(next(other))
  end)
end)
