-- nuvion.crypto against published vectors (FIPS 180, RFC 4231, RFC 4648, McGrew-Viega GCM, RFC 6979,
-- RFC 8032, Ethereum), plus envelope encryption: tampering, wrong keys and rotation.
local crypto = require "nuvion.crypto"

local hex, unhex = crypto.hex_encode, function(s) return assert(crypto.hex_decode(s)) end
local rep, char, byte, sub = string.rep, string.char, string.byte, string.sub

-- s with bit 0 of byte i flipped.
local function flip(s, i)
  return sub(s, 1, i - 1) .. char(bit.bxor(byte(s, i), 1)) .. sub(s, i + 1)
end

describe("crypto hashes", function()
  -- FIPS 180-2 appendix examples and NIST CAVP short/long messages.
  local M448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
  local M896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopq"
               .. "rstnopqrstu"
  local cases = {
    { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd4741"
      .. "7a81a538327af927da3e" },
    { "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e"
      .. "2a9ac94fa54ca49f" },
    { M448, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
      "204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c33596fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd703"
      .. "54ec631238ca3445" },
    { M896, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1",
      "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd2654"
      .. "5e96e55b874be909" },
    { rep("a", 1000000), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
      "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973ebde0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e"
      .. "4eadb217ad8cc09b" },
  }
  for i, c in ipairs(cases) do
    it("hashes FIPS 180 message " .. i .. " (" .. #c[1] .. " bytes) with SHA-256 and SHA-512", function()
      assert.equals(c[2], hex(crypto.sha256(c[1])))
      assert.equals(c[3], hex(crypto.sha512(c[1])))
    end)
  end

  it("hashes with Keccak-256 (original padding), not SHA3-256", function()
    assert.equals("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470", hex(crypto.keccak256("")))
    assert.equals("4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45", hex(crypto.keccak256("abc")))
    -- Across the 136-byte rate; values from js-sha3, an independent implementation.
    assert.equals("a6c4d403279fe3e0af03729caada8374b5ca54d8065329a3ebcaeb4b60aa386e",
                  hex(crypto.keccak256(rep("a", 136))))
    assert.equals("d869f639c7046b4929fc92a4d988a8b22c55fbadb802c0c66ebcd484f1915f39",
                  hex(crypto.keccak256(rep("a", 137))))
    assert.equals("b6a4ac1f51884d71f30fa397a5e155de3099e11fc0edef5d08b646e621e19de9",
                  hex(crypto.keccak256(rep("a", 1000))))
  end)

  it("raises on a non-string input", function()
    assert.has_error(function() crypto.sha256(nil) end, "input must be a string, got nil")
    assert.has_error(function() crypto.keccak256(1) end)
  end)
end)

describe("crypto HMAC (RFC 4231)", function()
  local K131 = rep("\170", 131)
  local cases = {
    { rep("\11", 20), "Hi There",
      "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f170"
      .. "2e696c203a126854" },
    { "Jefe", "what do ya want for nothing?",
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b"
      .. "636e070a38bce737" },
    { rep("\170", 20), rep("\221", 50),
      "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
      "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807b946a337bee89426"
      .. "74278859e13292fb" },
    { unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"), rep("\205", 50),
      "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
      "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3dba91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2d"
      .. "e2adebeb10a298dd" },
    { K131, "Test Using Larger Than Block-Size Key - Hash Key First",
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
      "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec"
      .. "8b915a985d786598" },
    { K131, "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be "
            .. "hashed before being used by the HMAC algorithm.",
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
      "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944b6022cac3c4982b10d5eeb55c3e4de15134676fb6de04460"
      .. "65c97440fa8c6a58" },
  }
  for i, c in ipairs(cases) do
    it("matches RFC 4231 case " .. ({ 1, 2, 3, 4, 6, 7 })[i] .. " for HMAC-SHA256 and HMAC-SHA512", function()
      assert.equals(c[3], hex(crypto.hmac_sha256(c[1], c[2])))
      assert.equals(c[4], hex(crypto.hmac_sha512(c[1], c[2])))
    end)
  end

  it("takes an empty key and an empty message", function()
    assert.equals(32, #crypto.hmac_sha256("", ""))
    assert.equals(64, #crypto.hmac_sha512("", ""))
  end)
end)

describe("crypto compare and random", function()
  it("compares equal and different strings, of the same or different lengths", function()
    assert.is_true(crypto.equal("", ""))
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "ab"))
    assert.is_false(crypto.equal("", "a"))
    assert.is_true(crypto.equal(rep("\0", 64), rep("\0", 64)))
  end)

  it("draws random bytes of the asked length, different each time", function()
    assert.equals("", crypto.random(0))
    local a, b = crypto.random(32), crypto.random(32)
    assert.equals(32, #a)
    assert.is_false(a == b)
    assert.equals(100000, #crypto.random(100000))
  end)

  it("raises on a bad length", function()
    for _, n in ipairs({ -1, 1.5, "8", 2 ^ 40 }) do
      assert.has_error(function() crypto.random(n) end)
    end
  end)
end)

describe("crypto encodings (RFC 4648)", function()
  local vectors = {
    { "", "", "", "" },
    { "f", "Zg==", "Zg", "66" },
    { "fo", "Zm8=", "Zm8", "666f" },
    { "foo", "Zm9v", "Zm9v", "666f6f" },
    { "foob", "Zm9vYg==", "Zm9vYg", "666f6f62" },
    { "fooba", "Zm9vYmE=", "Zm9vYmE", "666f6f6261" },
    { "foobar", "Zm9vYmFy", "Zm9vYmFy", "666f6f626172" },
  }
  for _, v in ipairs(vectors) do
    it("encodes and decodes \"" .. v[1] .. "\"", function()
      assert.equals(v[2], crypto.base64_encode(v[1]))
      assert.equals(v[1], crypto.base64_decode(v[2]))
      assert.equals(v[3], crypto.base64url_encode(v[1]))
      assert.equals(v[1], crypto.base64url_decode(v[3]))
      assert.equals(v[4], crypto.hex_encode(v[1]))
      assert.equals(v[1], crypto.hex_decode(v[4]))
      assert.equals(v[1], crypto.hex_decode(v[4]:upper()))
    end)
  end

  it("uses the URL alphabet for base64url and the standard one for base64", function()
    local s = "\251\255\191"
    assert.equals("+/+/", crypto.base64_encode(s))
    assert.equals("-_-_", crypto.base64url_encode(s))
    assert.equals(s, crypto.base64url_decode("-_-_"))
  end)

  it("round-trips every byte value and every length up to 70", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = char(i) end
    all = table.concat(all)
    for n = 0, 70 do
      local s = sub(all, 256 - n)
      assert.equals(s, crypto.base64_decode(crypto.base64_encode(s)))
      assert.equals(s, crypto.base64url_decode(crypto.base64url_encode(s)))
      assert.equals(s, crypto.hex_decode(crypto.hex_encode(s)))
    end
  end)

  local bad_b64 = { "Zg", "Zg=", "Zg===", "Z===", "Zm9v\n", " Zm9v", "Zm9v YmFy", "Zh==", "Zm9=", "Zm-v", "Zm_v",
                    "Zm9v=Zm9", "====", "Zm9vYg=a" }
  for _, s in ipairs(bad_b64) do
    it("refuses the base64 " .. string.format("%q", s), function()
      local v, err = crypto.base64_decode(s)
      assert.is_nil(v)
      assert.equals(crypto.ERR_BASE64, err)
    end)
  end

  local bad_url = { "Zg==", "Zm9vY", "Zh", "Zm+v", "Zm/v", "Zm9v\n" }
  for _, s in ipairs(bad_url) do
    it("refuses the base64url " .. string.format("%q", s), function()
      local v, err = crypto.base64url_decode(s)
      assert.is_nil(v)
      assert.equals(crypto.ERR_BASE64, err)
    end)
  end

  for _, s in ipairs({ "0", "abc", "zz", "0x00", "00 ", "\0\0" }) do
    it("refuses the hex " .. string.format("%q", s), function()
      local v, err = crypto.hex_decode(s)
      assert.is_nil(v)
      assert.equals(crypto.ERR_HEX, err)
    end)
  end
end)

describe("crypto AES-256-GCM (McGrew-Viega test cases 13 to 16)", function()
  local K15 = unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
  local IV15 = unhex("cafebabefacedbaddecaf888")
  local P15 = unhex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449"
                    .. "a6b525b16aedf5aa0de657ba637b391aafd255")
  local C15 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838"
              .. "c5f61e6393ba7a0abcc9f662898015ad"
  local cases = {
    { 13, rep("\0", 32), rep("\0", 12), "", nil, "", "530f8afbc74536b9a963b4f1c4cb738b" },
    { 14, rep("\0", 32), rep("\0", 12), rep("\0", 16), nil, "cea7403d4d606b6e074ec5d3baf39d18",
      "d0d1c8a799996bf0265b98b5d48ab919" },
    { 15, K15, IV15, P15, nil, C15, "b094dac5d93471bdec1a502270e3cc6c" },
    { 16, K15, IV15, sub(P15, 1, 60), unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2"), sub(C15, 1, 120),
      "76fc6ece0f4e1768cddf8853bb2d551b" },
  }
  for _, c in ipairs(cases) do
    it("encrypts and decrypts test case " .. c[1], function()
      local sealed = assert(crypto.aes_gcm_encrypt(c[2], c[3], c[4], c[5]))
      assert.equals(c[6] .. c[7], hex(sealed))
      assert.equals(c[4], crypto.aes_gcm_decrypt(c[2], c[3], sealed, c[5]))
    end)
  end

  it("rejects a flipped bit in the ciphertext, tag, nonce, aad or key", function()
    local aad = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    local sealed = assert(crypto.aes_gcm_encrypt(K15, IV15, P15, aad))
    local tries = {
      { K15, IV15, flip(sealed, 1), aad }, { K15, IV15, flip(sealed, #sealed), aad },
      { K15, flip(IV15, 12), sealed, aad }, { K15, IV15, sealed, flip(aad, 1) }, { K15, IV15, sealed, nil },
      { flip(K15, 32), IV15, sealed, aad }, { K15, IV15, sub(sealed, 1, -2), aad },
    }
    for _, t in ipairs(tries) do
      local v, err = crypto.aes_gcm_decrypt(t[1], t[2], t[3], t[4])
      assert.is_nil(v)
      assert.equals(crypto.ERR_AUTH, err)
    end
  end)

  it("refuses bad key and nonce lengths, and a ciphertext shorter than its tag, without echoing the key", function()
    local key = rep("k", 31)
    local v, err = crypto.aes_gcm_encrypt(key, rep("\0", 12), "x")
    assert.is_nil(v)
    assert.equals(crypto.ERR_KEY_LENGTH, err)
    v, err = crypto.aes_gcm_encrypt(rep("k", 32), rep("\0", 16), "x")
    assert.is_nil(v)
    assert.equals(crypto.ERR_NONCE_LENGTH, err)
    v, err = crypto.aes_gcm_decrypt(rep("k", 32), rep("\0", 12), rep("\0", 15))
    assert.is_nil(v)
    assert.matches("shorter than its tag", err, 1, true)
  end)

  it("seals 1 MB and a message larger than the reused buffer", function()
    local key, nonce = crypto.random(32), crypto.random(12)
    for _, n in ipairs({ 5000, 1024 * 1024, 2 * 1024 * 1024 }) do
      local msg = rep(crypto.random(1000), n / 1000 + 1)
      local sealed = assert(crypto.aes_gcm_encrypt(key, nonce, msg))
      assert.equals(#msg + 16, #sealed)
      assert.equals(msg, crypto.aes_gcm_decrypt(key, nonce, sealed))
    end
  end)
end)

describe("crypto ECDSA P-256", function()
  -- RFC 6979 A.2.5: the key, and the SHA-256 signatures of "sample" and "test".
  local PRIV = unhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
  local PUB = unhex("0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6"
                    .. "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299")
  local SAMPLE = unhex("efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716"
                       .. "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8")
  local TEST = unhex("f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367"
                     .. "019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083")
  local TEST_DER = unhex("3045022100f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d383670220019f4113742a2b"
                         .. "14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083")
  local PEM = [[
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYP7UuiVanTHJYet0xjVtaMBJuJI7
Yfps5mliLmDyn7Z5A/4QCLi8maQa6elWKLxk8vGyDC1+n1F3o8KU1EYimQ==
-----END PUBLIC KEY-----
]]
  local P384_PEM = [[
-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAENvDdP6hvVroU7H9O+9SjW/84E4HYBksE
3le8C/s2U8rB3E0drC1flWb6Ztq4Ep5c4bwZ5BQ53I7ongUkc9UY8rzFb0DT+J6f
kENBA0IUsi5/cltN2OZl5rL6nHvMs4Af
-----END PUBLIC KEY-----
]]

  it("derives the RFC 6979 public key", function()
    assert.equals(hex(PUB), hex(crypto.p256_public(PRIV)))
  end)

  it("verifies the RFC 6979 signatures, raw and DER", function()
    assert.is_true(crypto.p256_verify(PUB, "sample", SAMPLE))
    assert.is_true(crypto.p256_verify(PUB, "test", TEST))
    assert.is_true(crypto.p256_verify(PUB, "test", TEST, "raw"))
    assert.is_true(crypto.p256_verify(PUB, "test", TEST_DER))
    assert.is_true(crypto.p256_verify(PUB, "test", TEST_DER, "der"))
  end)

  it("rejects a tampered message, signature or key", function()
    local ok, err = crypto.p256_verify(PUB, "samplf", SAMPLE)
    assert.is_false(ok)
    assert.equals(crypto.ERR_SIGNATURE_MISMATCH, err)
    assert.is_false(crypto.p256_verify(PUB, "sample", flip(SAMPLE, 64)))
    assert.is_false(crypto.p256_verify(PUB, "test", flip(TEST_DER, #TEST_DER)))
    assert.is_false(crypto.p256_verify(PUB, "sample", TEST))
    ok, err = crypto.p256_verify(flip(PUB, 65), "sample", SAMPLE) -- off the curve
    assert.is_false(ok)
    assert.equals(crypto.ERR_PUBLIC_KEY, err)
    ok, err = crypto.p256_verify(PUB, "sample", sub(SAMPLE, 1, 63), "raw")
    assert.is_false(ok)
    assert.equals(crypto.ERR_SIGNATURE_LENGTH, err)
    assert.is_false(crypto.p256_verify(PUB, "test", TEST_DER .. "\0", "der"))
  end)

  it("signs verifiably in both formats, with fresh randomness each time", function()
    local a, b = crypto.p256_sign(PRIV, "pay 10 EUR"), crypto.p256_sign(PRIV, "pay 10 EUR")
    assert.equals(64, #a)
    assert.is_false(a == b)
    assert.is_true(crypto.p256_verify(PUB, "pay 10 EUR", a))
    local der = crypto.p256_sign(PRIV, "pay 10 EUR", "der")
    assert.equals(0x30, byte(der, 1))
    assert.is_true(crypto.p256_verify(PUB, "pay 10 EUR", der, "der"))
    local priv, pub = crypto.p256_keypair()
    assert.is_true(crypto.p256_verify(pub, "m", crypto.p256_sign(priv, "m")))
    assert.is_false(crypto.p256_verify(PUB, "m", crypto.p256_sign(priv, "m")))
  end)

  it("reads SPKI public keys from PEM and DER, P-256 only", function()
    assert.equals(hex(PUB), hex(crypto.p256_public_from_pem(PEM)))
    local der = unhex("3059301306072a8648ce3d020106082a8648ce3d0301070342000460fed4ba255a9d31c961eb74c6356d68c049b892"
                      .. "3b61fa6ce669622e60f29fb67903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299")
    assert.equals(hex(PUB), hex(crypto.p256_public_from_der(der)))
    for _, bad in ipairs({ P384_PEM, "", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                           (PEM:gsub("Yfps", "Yfpt")) }) do
      local v, err = crypto.p256_public_from_pem(bad)
      assert.is_nil(v)
      assert.equals(crypto.ERR_PUBLIC_KEY, err)
    end
    assert.is_nil(crypto.p256_public_from_der(der .. "\0"))
  end)

  it("refuses private keys of zero, the group order and the wrong length", function()
    for _, k in ipairs({ rep("\0", 32), rep("\255", 32), rep("\1", 31),
                         unhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551") }) do
      local v, err = crypto.p256_sign(k, "m")
      assert.is_nil(v)
      assert.equals(crypto.ERR_PRIVATE_KEY, err)
    end
  end)
end)

describe("crypto Ed25519 (RFC 8032 section 7.1)", function()
  local vectors = {
    { "TEST 1", "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
      "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
      "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24"
      .. "655141438e7a100b" },
    { "TEST 2", "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
      "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
      "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aee"
      .. "b00d291612bb0c00" },
    { "TEST 3", "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
      "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
      "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28d"
      .. "c027beceea1ec40a" },
    { "TEST SHA(abc)", "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
      "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
      "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e"
      .. "2a9ac94fa54ca49f",
      "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17a"
      .. "d9bef1177331a704" },
  }
  for _, v in ipairs(vectors) do
    it("derives, signs and verifies " .. v[1], function()
      local seed, pub, msg, sig = unhex(v[2]), unhex(v[3]), unhex(v[4]), unhex(v[5])
      assert.equals(v[3], hex(crypto.ed25519_public(seed)))
      assert.equals(v[5], hex(crypto.ed25519_sign(seed, msg)))
      assert.is_true(crypto.ed25519_verify(pub, msg, sig))
      local ok, err = crypto.ed25519_verify(pub, msg .. "x", sig)
      assert.is_false(ok)
      assert.equals(crypto.ERR_SIGNATURE_MISMATCH, err)
      assert.is_false(crypto.ed25519_verify(pub, msg, flip(sig, 1)))
      assert.is_false(crypto.ed25519_verify(pub, msg, flip(sig, 64)))
      assert.is_false(crypto.ed25519_verify(flip(pub, 1), msg, sig))
    end)
  end

  it("makes keypairs that sign and verify, and refuses bad lengths", function()
    local seed, pub = crypto.ed25519_keypair()
    assert.equals(32, #seed)
    assert.equals(32, #pub)
    assert.is_true(crypto.ed25519_verify(pub, "webhook body", crypto.ed25519_sign(seed, "webhook body")))
    local ok, err = crypto.ed25519_verify(pub, "m", rep("\0", 63))
    assert.is_false(ok)
    assert.equals(crypto.ERR_SIGNATURE_LENGTH, err)
    ok, err = crypto.ed25519_verify(rep("\0", 31), "m", rep("\0", 64))
    assert.is_false(ok)
    assert.equals(crypto.ERR_PUBLIC_KEY, err)
    local v
    v, err = crypto.ed25519_sign(rep("\0", 33), "m")
    assert.is_nil(v)
    assert.equals(crypto.ERR_PRIVATE_KEY, err)
  end)
end)

describe("crypto secp256k1 and Ethereum", function()
  -- web3.js documentation: eth.accounts.sign("Some data", key).
  local PRIV = unhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
  local ADDR = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"
  local MSG_HASH = "1da44b586eb0729ff70a73c326926f6ed5a25f5b056e7f47fbc6e58d86871655"
  local SIG = "b91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd"
              .. "6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c"

  it("derives the address of known private keys", function()
    assert.equals(ADDR, crypto.eth_checksum_address(crypto.eth_address(crypto.secp256k1_public(PRIV))))
    local one = rep("\0", 31) .. "\1"
    assert.equals("0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf",
                  crypto.eth_checksum_address(crypto.eth_address(crypto.secp256k1_public(one))))
  end)

  it("writes EIP-55 checksummed addresses", function()
    for _, a in ipairs({ "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
                         "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
                         "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb" }) do
      assert.equals(a, crypto.eth_checksum_address(unhex(sub(a, 3))))
    end
  end)

  it("hashes a personal message, signs it as web3 does and recovers the signer", function()
    local h = crypto.eth_message_hash("Some data")
    assert.equals(MSG_HASH, hex(h))
    assert.equals(SIG, hex(crypto.secp256k1_sign(PRIV, h)))
    assert.equals(ADDR, crypto.eth_checksum_address(crypto.ecrecover(h, unhex(SIG))))
  end)

  it("recovers with v as 27/28 or 0/1, and verifies with or without v", function()
    local h, sig = unhex(MSG_HASH), unhex(SIG)
    local pub = crypto.secp256k1_public(PRIV)
    assert.equals(pub, crypto.secp256k1_recover(h, sub(sig, 1, 64) .. char(byte(sig, 65) - 27)))
    assert.is_true(crypto.secp256k1_verify(pub, h, sig))
    assert.is_true(crypto.secp256k1_verify(pub, h, sub(sig, 1, 64)))
  end)

  it("rejects tampered hashes and signatures, and recovers someone else from them", function()
    local h, sig = unhex(MSG_HASH), unhex(SIG)
    local pub = crypto.secp256k1_public(PRIV)
    local ok, err = crypto.secp256k1_verify(pub, flip(h, 1), sig)
    assert.is_false(ok)
    assert.equals(crypto.ERR_SIGNATURE_MISMATCH, err)
    assert.is_false(crypto.secp256k1_verify(pub, h, flip(sig, 10)))
    assert.is_false(crypto.ecrecover(flip(h, 1), sig) == crypto.eth_address(pub))
    -- v flipped 28 -> 27 recovers another key.
    assert.is_false(crypto.secp256k1_recover(h, sub(sig, 1, 64) .. "\27") == pub)
    local v
    v, err = crypto.secp256k1_recover(h, sub(sig, 1, 64) .. "\29")
    assert.is_nil(v)
    assert.equals(crypto.ERR_RECOVERY_ID, err)
  end)

  it("refuses high-S signatures in verify, as libsecp256k1 does", function()
    local n = unhex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
    local h, sig = unhex(MSG_HASH), unhex(SIG)
    -- s' = n - s: the same signature, malleated.
    local s, borrow, out = sub(sig, 33, 64), 0, {}
    for i = 32, 1, -1 do
      local d = byte(n, i) - byte(s, i) - borrow
      borrow = d < 0 and 1 or 0
      out[i] = char(d % 256)
    end
    local high = sub(sig, 1, 32) .. table.concat(out)
    assert.is_false(crypto.secp256k1_verify(crypto.secp256k1_public(PRIV), h, high))
  end)

  it("refuses bad lengths and keys with clear errors that show no key", function()
    local pub = crypto.secp256k1_public(PRIV)
    local ok, err = crypto.secp256k1_verify(pub, "short", unhex(SIG))
    assert.is_false(ok)
    assert.equals(crypto.ERR_HASH_LENGTH, err)
    ok, err = crypto.secp256k1_verify(sub(pub, 1, 64), unhex(MSG_HASH), unhex(SIG))
    assert.is_false(ok)
    assert.equals(crypto.ERR_PUBLIC_KEY, err)
    local v
    v, err = crypto.secp256k1_sign(rep("\0", 32), unhex(MSG_HASH))
    assert.is_nil(v)
    assert.equals(crypto.ERR_PRIVATE_KEY, err)
    v, err = crypto.secp256k1_sign(sub(PRIV, 2), unhex(MSG_HASH))
    assert.is_nil(v)
    assert.is_nil(err:find(sub(PRIV, 2), 1, true))
  end)

  it("makes keypairs whose signatures verify and recover", function()
    local priv, pub = crypto.secp256k1_keypair()
    local h = crypto.keccak256("transfer")
    local sig = crypto.secp256k1_sign(priv, h)
    assert.is_true(crypto.secp256k1_verify(pub, h, sig))
    assert.equals(crypto.eth_address(pub), crypto.ecrecover(h, sig))
  end)
end)

describe("crypto envelope encryption", function()
  local K1, K2 = crypto.random(32), crypto.random(32)

  local function env_keys(keys)
    local parts = {}
    for _, k in ipairs(keys) do parts[#parts + 1] = k[1] .. ":" .. crypto.base64_encode(k[2]) end
    return table.concat(parts, ",")
  end

  it("round-trips plaintexts of any size, with and without aad", function()
    local kr = assert(crypto.keyring({ k1 = K1 }, "k1"))
    for _, pt in ipairs({ "", "4242424242424242", crypto.random(100000) }) do
      local token = assert(kr:encrypt(pt))
      assert.equals(pt, kr:decrypt(token))
      token = assert(kr:encrypt(pt, "customers.email:cus_1"))
      assert.equals(pt, kr:decrypt(token, "customers.email:cus_1"))
    end
  end)

  it("writes text tokens naming the version and key id, different each time", function()
    local kr = assert(crypto.keyring({ k1 = K1 }, "k1"))
    local a, b = kr:encrypt("same"), kr:encrypt("same")
    assert.is_false(a == b)
    assert.matches("^nv1%.k1%.[%w_-]+%.[%w_-]+%.[%w_-]+$", a)
    assert.equals("k1", crypto.envelope_key_id(a))
    assert.equals("k1", kr:key_id(a))
  end)

  it("rejects a flipped bit in any part of the token", function()
    local kr = assert(crypto.keyring({ k1 = K1, k2 = K2 }, "k1"))
    local token = assert(kr:encrypt("Jane Doe, 1 Main St"))
    local parts = {}
    for p in token:gmatch("[^.]+") do parts[#parts + 1] = p end
    local function with(i, v)
      local copy = { unpack(parts) }
      copy[i] = v
      return table.concat(copy, ".")
    end
    local function b64_flip(s, i)
      return crypto.base64url_encode(flip(crypto.base64url_decode(s), i))
    end
    local cases = {
      { with(1, "nv2"), crypto.ERR_ENVELOPE_VERSION },
      { with(2, "k2"), crypto.ERR_UNWRAP },                 -- another master key
      { with(2, "k3"), crypto.ERR_UNKNOWN_KEY_ID },
      { with(2, "k!"), crypto.ERR_ENVELOPE_FORMAT },
      { with(3, b64_flip(parts[3], 1)), crypto.ERR_UNWRAP },  -- wrapped key's nonce
      { with(3, b64_flip(parts[3], 20)), crypto.ERR_UNWRAP }, -- wrapped key
      { with(3, b64_flip(parts[3], 60)), crypto.ERR_UNWRAP }, -- wrapped key's tag
      { with(4, b64_flip(parts[4], 1)), crypto.ERR_AUTH },    -- data nonce
      { with(5, b64_flip(parts[5], 1)), crypto.ERR_AUTH },    -- ciphertext
      { with(5, b64_flip(parts[5], #crypto.base64url_decode(parts[5]))), crypto.ERR_AUTH }, -- tag
      { with(5, parts[5] .. "="), crypto.ERR_ENVELOPE_FORMAT },
      { with(3, sub(parts[3], 5)), crypto.ERR_ENVELOPE_FORMAT },
      { token .. ".x", crypto.ERR_ENVELOPE_FORMAT },
      { "", crypto.ERR_ENVELOPE_FORMAT },
    }
    for i, c in ipairs(cases) do
      local v, err = kr:decrypt(c[1])
      assert.is_nil(v, "case " .. i)
      assert.equals(c[2], err, "case " .. i)
    end
  end)

  it("rejects a token whose wrapped data key comes from another token", function()
    local kr = assert(crypto.keyring({ k1 = K1 }, "k1"))
    local a, b = kr:encrypt("alice"), kr:encrypt("bob")
    local wa = a:match("^[^.]+%.[^.]+%.([^.]+)")
    local mixed = b:gsub("^([^.]+%.[^.]+%.)[^.]+", "%1" .. wa)
    local v, err = kr:decrypt(mixed)
    assert.is_nil(v)
    assert.equals(crypto.ERR_AUTH, err)
  end)

  it("rejects the wrong aad and the wrong master key", function()
    local kr = assert(crypto.keyring({ k1 = K1 }, "k1"))
    local token = kr:encrypt("4111111111111111", "cards.pan:card_1")
    local v, err = kr:decrypt(token, "cards.pan:card_2")
    assert.is_nil(v)
    assert.equals(crypto.ERR_AUTH, err)
    v, err = kr:decrypt(token)
    assert.is_nil(v)
    assert.equals(crypto.ERR_AUTH, err)
    local other = assert(crypto.keyring({ k1 = K2 }, "k1"))
    v, err = other:decrypt(token, "cards.pan:card_1")
    assert.is_nil(v)
    assert.equals(crypto.ERR_UNWRAP, err)
  end)

  it("decrypts old tokens after rotation, seals new ones with the new key and rewraps", function()
    local before = assert(crypto.keyring({ k1 = K1 }, "k1"))
    local old = before:encrypt("Jane Doe", "customers.name:cus_7")
    local after = assert(crypto.keyring({ k1 = K1, k2 = K2 }, "k2"))
    assert.equals("Jane Doe", after:decrypt(old, "customers.name:cus_7"))
    local new = after:encrypt("John Roe")
    assert.equals("k2", crypto.envelope_key_id(new))
    local moved = assert(after:rewrap(old))
    assert.equals("k2", crypto.envelope_key_id(moved))
    assert.equals("Jane Doe", after:decrypt(moved, "customers.name:cus_7"))
    -- Only the wrapped data key changed: the nonce and the sealed data are the same.
    assert.equals(old:match("[^.]+%.[^.]+$"), moved:match("[^.]+%.[^.]+$"))
    assert.equals(moved, after:rewrap(moved))
    -- With k1 retired, the rewrapped token still decrypts; the old one no longer does.
    local retired = assert(crypto.keyring({ k2 = K2 }, "k2"))
    assert.equals("Jane Doe", retired:decrypt(moved, "customers.name:cus_7"))
    local v, err = retired:decrypt(old, "customers.name:cus_7")
    assert.is_nil(v)
    assert.equals(crypto.ERR_UNKNOWN_KEY_ID, err)
  end)

  it("reads the keyring from the environment format and names the entry at fault, never the key", function()
    local keys = assert(crypto.parse_master_keys(env_keys({ { "k1", K1 }, { "k-2_b", K2 } })))
    assert.equals(K1, keys.k1)
    assert.equals(K2, keys["k-2_b"])
    local secret = crypto.base64_encode(rep("s", 31))
    local bad = {
      { "k1:" .. secret, "master key k1: invalid key length" },
      { "k1:" .. crypto.base64_encode(K1) .. ",k1:" .. crypto.base64_encode(K2), "listed twice" },
      { "k1" .. crypto.base64_encode(K1), "entry 1" },
      { "k!:" .. crypto.base64_encode(K1), "invalid key id" },
      { "", "no master keys" },
    }
    for _, c in ipairs(bad) do
      local v, err = crypto.parse_master_keys(c[1])
      assert.is_nil(v)
      assert.matches(c[2], err, 1, true)
      assert.is_nil(err:find(secret, 1, true))
    end
    local v, err = crypto.keyring({ k1 = K1 }, "k2")
    assert.is_nil(v)
    assert.matches("current master key id", err, 1, true)
    assert.is_nil(crypto.keyring({ k1 = "short" }, "k1"))
  end)

  it("reads NUVION_MASTER_KEYS and NUVION_MASTER_KEY_ID in a process", function()
    -- The spec runner's own environment is not ours to change: a child host reads it.
    local process = require "nuvion.process"
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
local crypto = require "nuvion.crypto"
local kr = assert(crypto.keyring_from_env())
local t = kr:encrypt("pii")
io.write(tostring(kr), " ", crypto.envelope_key_id(t), " ", kr:decrypt(t), "\n")
local _, err = crypto.keyring_from_env("NUVION_NO_SUCH_KEYS")
io.write(err, "\n")
]])
    f:close()
    local helpers = require "spec.helpers"
    local env = { NUVION_MASTER_KEYS = env_keys({ { "k1", K1 }, { "k2", K2 } }), NUVION_MASTER_KEY_ID = "k2",
                  NUVION_ROOT = helpers.root }
    local proc = assert(process.spawn({ helpers.bin, "run", script }, { env = env, output = "pipe" }))
    local first, second = proc:line(10000), proc:line(10000)
    local how, code = proc:wait(10000)
    proc:close()
    os.remove(script)
    assert.equals("exit", how)
    assert.equals(0, code)
    assert.equals("nuvion.crypto.keyring(current=k2, keys=2) k2 pii", first)
    assert.equals("NUVION_NO_SUCH_KEYS is not set", second)
  end)
end)
