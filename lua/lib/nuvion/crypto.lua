-- nuvion.crypto -- hashes, HMAC, encodings, AES-256-GCM envelopes, P-256, Ed25519, secp256k1.
--
--   local crypto = require "nuvion.crypto"
--   crypto.hmac_sha256(secret, ts .. "." .. body)       -- 32 raw bytes
--   crypto.equal(a, b)                                   -- constant time
--   crypto.ed25519_verify(pub, msg, sig)                 -- true | false, err
--   crypto.ecrecover(hash, sig65)                        -- 20-byte Ethereum address
--   local kr = assert(crypto.keyring_from_env())         -- NUVION_MASTER_KEYS, NUVION_MASTER_KEY_ID
--   local token = kr:encrypt(pan, "cards.pan:card_123")  -- "nv1.<kid>.<...>"
--
-- Every primitive is a C function of the host (host/crypto.c, host/crypto_ec.c,
-- host/keccak.c) reached through ffi.C: the calls are JIT-compiled and write
-- into buffers this module reuses, so a hot path does not allocate beyond its
-- result string. Crypto is CPU work: nothing here yields.
--
-- Errors: a non-string argument is a caller's bug and raises; a bad value
-- (a wrong length, bad base64, a forged tag or signature) returns nil, err, or
-- false, err for the verify functions. No error text carries key material.
local ffi = require "ffi"
local crypto_c = require "nuvion.crypto_c"

local C = ffi.C
local ffi_new, ffi_string, ffi_cast, ffi_fill = ffi.new, ffi.string, ffi.cast, ffi.fill
local type, error, tonumber, setmetatable, pairs, assert = type, error, tonumber, setmetatable, pairs, assert
local byte, sub, find, format, gmatch, upper = string.byte, string.sub, string.find, string.format, string.gmatch,
  string.upper
local ceil, concat = math.ceil, table.concat
local getenv = os.getenv

local ABI_VERSION = 1

-- NV_CRYPTO_OK of host/crypto.h (ERROR is -1, DECLINED -5: both mean "no" here, err says why).
local OK = 0

if not pcall(ffi.typeof, "nv_crypto_cdef_guard_t") then
  ffi.cdef [[
typedef int nv_crypto_cdef_guard_t;
int nv_ffi_crypto_abi_version(void);
int nv_ffi_crypto_sha(int alg, const char *in, size_t len, unsigned char *out);
int nv_ffi_crypto_keccak256(const char *in, size_t len, unsigned char *out);
int nv_ffi_crypto_hmac(int alg, const char *key, size_t key_len, const char *msg, size_t msg_len,
                       unsigned char *out, const char **err);
int nv_ffi_crypto_equal(const char *a, size_t a_len, const char *b, size_t b_len);
int nv_ffi_crypto_random(unsigned char *out, size_t len, const char **err);
size_t nv_ffi_crypto_hex_encode(const char *in, size_t len, char *out);
int nv_ffi_crypto_hex_decode(const char *in, size_t len, unsigned char *out, size_t *out_len, const char **err);
size_t nv_ffi_crypto_b64_encode(const char *in, size_t len, char *out, int url);
int nv_ffi_crypto_b64_decode(const char *in, size_t len, unsigned char *out, size_t *out_len, int url,
                             const char **err);
int nv_ffi_crypto_aes256gcm_encrypt(const char *key, size_t key_len, const char *nonce, size_t nonce_len,
                                    const char *aad, size_t aad_len, const char *in, size_t len,
                                    unsigned char *out, const char **err);
int nv_ffi_crypto_aes256gcm_decrypt(const char *key, size_t key_len, const char *nonce, size_t nonce_len,
                                    const char *aad, size_t aad_len, const char *in, size_t len,
                                    unsigned char *out, const char **err);
int nv_ffi_crypto_p256_verify(const char *pub, size_t pub_len, const char *msg, size_t msg_len,
                              const char *sig, size_t sig_len, int der, const char **err);
int nv_ffi_crypto_p256_sign(const char *priv, size_t priv_len, const char *msg, size_t msg_len,
                            unsigned char *out, size_t *out_len, int der, const char **err);
int nv_ffi_crypto_p256_public(const char *priv, size_t priv_len, unsigned char *out, const char **err);
int nv_ffi_crypto_p256_public_from_spki(const char *in, size_t len, int pem, unsigned char *out,
                                        const char **err);
int nv_ffi_crypto_ed25519_verify(const char *pub, size_t pub_len, const char *msg, size_t msg_len,
                                 const char *sig, size_t sig_len, const char **err);
int nv_ffi_crypto_ed25519_sign(const char *seed, size_t seed_len, const char *msg, size_t msg_len,
                               unsigned char *out, const char **err);
int nv_ffi_crypto_ed25519_public(const char *seed, size_t seed_len, unsigned char *out, const char **err);
int nv_ffi_crypto_k1_verify(const char *pub, size_t pub_len, const char *hash, size_t hash_len,
                            const char *sig, size_t sig_len, const char **err);
int nv_ffi_crypto_k1_sign(const char *priv, size_t priv_len, const char *hash, size_t hash_len,
                          unsigned char *out, const char **err);
int nv_ffi_crypto_k1_recover(const char *hash, size_t hash_len, const char *sig, size_t sig_len,
                             unsigned char *out, const char **err);
int nv_ffi_crypto_k1_public(const char *priv, size_t priv_len, unsigned char *out, const char **err);
]]
end

if C.nv_ffi_crypto_abi_version() ~= ABI_VERSION or crypto_c.abi_version ~= ABI_VERSION then
  error(format("nuvion.crypto: host crypto ABI %d, this module expects %d",
               C.nv_ffi_crypto_abi_version(), ABI_VERSION))
end

local _M = {
  ERR_SIGNATURE_MISMATCH = "signature mismatch",
  ERR_AUTH = "authentication failed",
  ERR_KEY_LENGTH = "invalid key length",
  ERR_PUBLIC_KEY = "invalid public key",
  ERR_PRIVATE_KEY = "invalid private key",
  ERR_SIGNATURE_LENGTH = "invalid signature length",
  ERR_HASH_LENGTH = "invalid hash length (want 32 bytes)",
  ERR_RECOVERY_ID = "invalid recovery id (v)",
  ERR_TOO_LONG = "input too long",
  ERR_NONCE_LENGTH = "invalid nonce length",
  ERR_HEX = "invalid hex",
  ERR_BASE64 = "invalid base64",
  ERR_ENVELOPE_FORMAT = "invalid envelope format",
  ERR_ENVELOPE_VERSION = "unsupported envelope version",
  ERR_UNKNOWN_KEY_ID = "unknown master key id",
  ERR_UNWRAP = "data key authentication failed",
}

-- Limits live in host/nv_limits.h; the C module hands them over.
local AEAD_BYTES_MAX = crypto_c.aead_bytes_max
local RANDOM_BYTES_MAX = crypto_c.random_bytes_max
local MASTER_KEYS_MAX = crypto_c.master_keys_max
local KEY_ID_BYTES_MAX = crypto_c.key_id_bytes_max

local GCM_TAG_BYTES, GCM_NONCE_BYTES, KEY_BYTES = 16, 12, 32

-- ---- reused buffers ----------------------------------------------------------

-- Fixed-size outputs share one 128-byte buffer (a SHA-512 digest, a DER
-- signature and a public key all fit); variable ones (encodings, AES-GCM) a
-- buffer that grows and is kept up to SCRATCH_KEEP_BYTES, past which a call
-- gets its own and lets the GC take it.
local SCRATCH_KEEP_BYTES = 1024 * 1024
local fixed = ffi_new("unsigned char[128]")
local errp = ffi_new("const char *[1]")
local lenp = ffi_new("size_t[1]")
local scratch, scratch_cap = ffi_new("unsigned char[?]", 4096), 4096

local function buffer(n)
  n = ceil(n)
  if n <= scratch_cap then return scratch end
  if n > SCRATCH_KEEP_BYTES then return ffi_new("unsigned char[?]", n) end
  local cap = scratch_cap
  while cap < n do cap = cap * 2 end
  scratch, scratch_cap = ffi_new("unsigned char[?]", cap), cap
  return scratch
end

-- Secrets (random keys, plaintexts, decoded keys) do not stay in the shared
-- buffer after the call that made them.
local function take_secret(buf, n)
  local s = ffi_string(buf, n)
  ffi_fill(buf, n)
  return s
end

local function last_error()
  return ffi_string(errp[0])
end

local function check_string(v, name, level)
  if type(v) ~= "string" then
    error(format("%s must be a string, got %s", name, type(v)), (level or 2) + 1)
  end
end

local function check_opt_string(v, name, level)
  if v ~= nil and type(v) ~= "string" then
    error(format("%s must be a string or nil, got %s", name, type(v)), (level or 2) + 1)
  end
end

-- ---- hashes, HMAC, compare, random --------------------------------------------

function _M.sha256(s)
  check_string(s, "input")
  C.nv_ffi_crypto_sha(256, s, #s, fixed)
  return ffi_string(fixed, 32)
end

function _M.sha512(s)
  check_string(s, "input")
  C.nv_ffi_crypto_sha(512, s, #s, fixed)
  return ffi_string(fixed, 64)
end

function _M.keccak256(s)
  check_string(s, "input")
  C.nv_ffi_crypto_keccak256(s, #s, fixed)
  return ffi_string(fixed, 32)
end

local function hmac(alg, key, msg)
  check_string(key, "key", 3)
  check_string(msg, "message", 3)
  if C.nv_ffi_crypto_hmac(alg, key, #key, msg, #msg, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, alg / 8)
end

function _M.hmac_sha256(key, msg) return hmac(256, key, msg) end
function _M.hmac_sha512(key, msg) return hmac(512, key, msg) end

-- True when a and b hold the same bytes; the time taken depends on their
-- lengths only, never on where they differ.
function _M.equal(a, b)
  check_string(a, "a")
  check_string(b, "b")
  return C.nv_ffi_crypto_equal(a, #a, b, #b) == 1
end

-- n bytes from OpenSSL's CSPRNG (seeded from getrandom).
function _M.random(n)
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 or n > RANDOM_BYTES_MAX then
    error(format("n must be an integer in [0, %d]", RANDOM_BYTES_MAX), 2)
  end
  local buf = buffer(n)
  if C.nv_ffi_crypto_random(buf, n, errp) ~= OK then return nil, last_error() end
  return take_secret(buf, n)
end

-- ---- hex, base64, base64url (RFC 4648) ----------------------------------------

function _M.hex_encode(s)
  check_string(s, "input")
  local buf = buffer(2 * #s)
  return ffi_string(buf, C.nv_ffi_crypto_hex_encode(s, #s, ffi_cast("char *", buf)))
end

-- Upper or lower case; an odd length or any other character is an error.
function _M.hex_decode(s)
  check_string(s, "input")
  local buf = buffer(#s / 2 + 1)
  if C.nv_ffi_crypto_hex_decode(s, #s, buf, lenp, errp) ~= OK then return nil, last_error() end
  return take_secret(buf, lenp[0])
end

local function b64_encode(s, url)
  check_string(s, "input", 3)
  local buf = buffer(4 * ceil(#s / 3))
  return ffi_string(buf, C.nv_ffi_crypto_b64_encode(s, #s, ffi_cast("char *", buf), url))
end

local function b64_decode(s, url)
  check_string(s, "input", 3)
  local buf = buffer(ceil(#s / 4) * 3 + 3)
  if C.nv_ffi_crypto_b64_decode(s, #s, buf, lenp, url, errp) ~= OK then return nil, last_error() end
  return take_secret(buf, lenp[0])
end

-- Standard alphabet, with padding, strict: no whitespace, no missing or extra
-- "=", no stray bits after the last byte.
function _M.base64_encode(s) return b64_encode(s, 0) end
function _M.base64_decode(s) return b64_decode(s, 0) end
-- URL-safe alphabet without padding (JWT, RFC 7515); "=" is refused.
function _M.base64url_encode(s) return b64_encode(s, 1) end
function _M.base64url_decode(s) return b64_decode(s, 1) end

-- ---- AES-256-GCM ----------------------------------------------------------------

-- Returns ciphertext .. tag (16 bytes). The nonce (12 bytes) must never
-- repeat under one key: take it from crypto.random(12).
function _M.aes_gcm_encrypt(key, nonce, plaintext, aad)
  check_string(key, "key")
  check_string(nonce, "nonce")
  check_string(plaintext, "plaintext")
  check_opt_string(aad, "aad")
  local n = #plaintext
  if n > AEAD_BYTES_MAX then return nil, _M.ERR_TOO_LONG end
  local buf = buffer(n + GCM_TAG_BYTES)
  if C.nv_ffi_crypto_aes256gcm_encrypt(key, #key, nonce, #nonce, aad, aad and #aad or 0, plaintext, n, buf,
                                       errp) ~= OK then
    return nil, last_error()
  end
  return ffi_string(buf, n + GCM_TAG_BYTES)
end

-- ciphertext .. tag in, plaintext out; a forged or damaged input, the wrong
-- key, nonce or aad: nil, ERR_AUTH.
function _M.aes_gcm_decrypt(key, nonce, sealed, aad)
  check_string(key, "key")
  check_string(nonce, "nonce")
  check_string(sealed, "ciphertext")
  check_opt_string(aad, "aad")
  local n = #sealed
  if n > AEAD_BYTES_MAX + GCM_TAG_BYTES then return nil, _M.ERR_TOO_LONG end
  local buf = buffer(n)
  if C.nv_ffi_crypto_aes256gcm_decrypt(key, #key, nonce, #nonce, aad, aad and #aad or 0, sealed, n, buf,
                                       errp) ~= OK then
    return nil, last_error()
  end
  return take_secret(buf, n - GCM_TAG_BYTES)
end

-- ---- signatures ----------------------------------------------------------------

local function verdict(rc)
  if rc == OK then return true end
  return false, last_error()
end

-- ECDSA P-256 over SHA-256(msg). pub: SEC1 (65 bytes uncompressed, or 33
-- compressed). sig: 64 bytes r || s, or DER; fmt "raw" or "der" says which,
-- else a 64-byte signature is taken as raw, any other length as DER.
function _M.p256_verify(pub, msg, sig, fmt)
  check_string(pub, "public key")
  check_string(msg, "message")
  check_string(sig, "signature")
  local der
  if fmt == nil then der = #sig ~= 64 and 1 or 0
  elseif fmt == "der" then der = 1
  elseif fmt == "raw" then der = 0
  else error("fmt must be \"raw\" or \"der\"", 2) end
  return verdict(C.nv_ffi_crypto_p256_verify(pub, #pub, msg, #msg, sig, #sig, der, errp))
end

-- Signs SHA-256(msg) with a 32-byte private key; fmt "raw" (default) or "der".
function _M.p256_sign(priv, msg, fmt)
  check_string(priv, "private key")
  check_string(msg, "message")
  if fmt ~= nil and fmt ~= "raw" and fmt ~= "der" then error("fmt must be \"raw\" or \"der\"", 2) end
  if C.nv_ffi_crypto_p256_sign(priv, #priv, msg, #msg, fixed, lenp, fmt == "der" and 1 or 0, errp) ~= OK then
    return nil, last_error()
  end
  return ffi_string(fixed, lenp[0])
end

function _M.p256_public(priv)
  check_string(priv, "private key")
  if C.nv_ffi_crypto_p256_public(priv, #priv, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 65)
end

-- A SubjectPublicKeyInfo ("-----BEGIN PUBLIC KEY-----" PEM, or its DER) of a
-- P-256 key, to the 65-byte SEC1 form the verify function takes.
function _M.p256_public_from_pem(pem)
  check_string(pem, "pem")
  if C.nv_ffi_crypto_p256_public_from_spki(pem, #pem, 1, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 65)
end

function _M.p256_public_from_der(der)
  check_string(der, "der")
  if C.nv_ffi_crypto_p256_public_from_spki(der, #der, 0, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 65)
end

-- Returns private key (32 bytes), public key (65 bytes).
function _M.p256_keypair()
  for _ = 1, 8 do -- a random 32 bytes is at or above the group order with odds 2^-32
    local priv = assert(_M.random(32))
    local pub = _M.p256_public(priv)
    if pub then return priv, pub end
  end
  error("p256_keypair: no valid scalar drawn")
end

-- Ed25519 (RFC 8032): 32-byte public key, 64-byte signature, the whole message.
function _M.ed25519_verify(pub, msg, sig)
  check_string(pub, "public key")
  check_string(msg, "message")
  check_string(sig, "signature")
  return verdict(C.nv_ffi_crypto_ed25519_verify(pub, #pub, msg, #msg, sig, #sig, errp))
end

-- seed: the 32-byte private key of RFC 8032.
function _M.ed25519_sign(seed, msg)
  check_string(seed, "private key")
  check_string(msg, "message")
  if C.nv_ffi_crypto_ed25519_sign(seed, #seed, msg, #msg, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 64)
end

function _M.ed25519_public(seed)
  check_string(seed, "private key")
  if C.nv_ffi_crypto_ed25519_public(seed, #seed, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 32)
end

-- Returns seed (32 bytes), public key (32 bytes).
function _M.ed25519_keypair()
  local seed = assert(_M.random(32))
  return seed, assert(_M.ed25519_public(seed))
end

-- secp256k1 over a 32-byte hash (the caller hashes: keccak256 for Ethereum).
-- sig: r || s (64) or r || s || v (65, v ignored); high-S is refused.
function _M.secp256k1_verify(pub, hash, sig)
  check_string(pub, "public key")
  check_string(hash, "hash")
  check_string(sig, "signature")
  return verdict(C.nv_ffi_crypto_k1_verify(pub, #pub, hash, #hash, sig, #sig, errp))
end

-- r || s || v, 65 bytes, v = 27 + recovery id; RFC 6979 deterministic, low-S.
function _M.secp256k1_sign(priv, hash)
  check_string(priv, "private key")
  check_string(hash, "hash")
  if C.nv_ffi_crypto_k1_sign(priv, #priv, hash, #hash, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 65)
end

-- The 65-byte uncompressed public key that made sig (v = 0, 1, 27 or 28).
function _M.secp256k1_recover(hash, sig)
  check_string(hash, "hash")
  check_string(sig, "signature")
  if C.nv_ffi_crypto_k1_recover(hash, #hash, sig, #sig, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 65)
end

function _M.secp256k1_public(priv)
  check_string(priv, "private key")
  if C.nv_ffi_crypto_k1_public(priv, #priv, fixed, errp) ~= OK then return nil, last_error() end
  return ffi_string(fixed, 65)
end

function _M.secp256k1_keypair()
  for _ = 1, 8 do -- zero or at/above the order: odds 2^-128
    local priv = assert(_M.random(32))
    local pub = _M.secp256k1_public(priv)
    if pub then return priv, pub end
  end
  error("secp256k1_keypair: no valid scalar drawn")
end

-- ---- Ethereum ------------------------------------------------------------------

-- 20-byte address of a public key: the last 20 bytes of keccak256(x || y).
function _M.eth_address(pub)
  check_string(pub, "public key")
  if #pub == 65 and byte(pub, 1) == 4 then pub = sub(pub, 2)
  elseif #pub ~= 64 then return nil, _M.ERR_PUBLIC_KEY end
  return sub(_M.keccak256(pub), 13)
end

-- EIP-55 mixed-case "0x..." text of a 20-byte address.
function _M.eth_checksum_address(addr)
  check_string(addr, "address")
  if #addr ~= 20 then return nil, "invalid address length" end
  local lower = _M.hex_encode(addr)
  local h = _M.hex_encode(_M.keccak256(lower))
  local out = {}
  for i = 1, 40 do
    local ch = sub(lower, i, i)
    if tonumber(sub(h, i, i), 16) >= 8 then ch = upper(ch) end
    out[i] = ch
  end
  return "0x" .. concat(out)
end

-- The hash that eth_sign / personal_sign sign (EIP-191 version 0x45).
function _M.eth_message_hash(msg)
  check_string(msg, "message")
  return _M.keccak256("\25Ethereum Signed Message:\n" .. #msg .. msg)
end

-- Solidity's ecrecover: the 20-byte address that signed hash, or nil, err.
function _M.ecrecover(hash, sig)
  local pub, err = _M.secp256k1_recover(hash, sig)
  if not pub then return nil, err end
  return _M.eth_address(pub)
end

-- ---- envelope encryption -------------------------------------------------------
--
-- A token is text, safe in a text column or JSON:
--   nv1.<key id>.<wrapped data key>.<nonce>.<ciphertext and tag>
-- the last three in base64url. Each encrypt draws a fresh 32-byte data key,
-- seals the data with it (AES-256-GCM, aad = ENVELOPE_AAD .. the caller's
-- aad), and wraps it with the current master key (AES-256-GCM, nonce || key
-- || tag = 60 bytes, aad = WRAP_AAD .. key id). Rotation adds a master key
-- and makes it current: old tokens name their key id and still decrypt, new
-- ones use the new key, and rewrap moves a token to the current key by
-- re-wrapping its data key only (the data is not re-encrypted).
-- docs/crypto.md has the threat model and the rotation steps.

local ENVELOPE_VERSION = "nv1"
local ENVELOPE_AAD = "nuvion.envelope.v1\0"
local WRAP_AAD = "nuvion.dek.v1\0"
local WRAPPED_BYTES = GCM_NONCE_BYTES + KEY_BYTES + GCM_TAG_BYTES
local KEY_ID_PATTERN = "^[A-Za-z0-9_-]+$"

-- Master keys by keyring, out of reach of the keyring table itself (so that
-- printing or serialising a keyring cannot show them); weak, so a dropped
-- keyring takes its keys with it.
local master_keys = setmetatable({}, { __mode = "k" })

local Keyring = {}
Keyring.__index = Keyring
Keyring.__tostring = function(kr)
  return format("nuvion.crypto.keyring(current=%s, keys=%d)", kr.current, kr.count)
end
Keyring.__metatable = false

local function valid_key_id(id)
  return type(id) == "string" and #id >= 1 and #id <= KEY_ID_BYTES_MAX and find(id, KEY_ID_PATTERN) ~= nil
end

-- keys: { [key id] = 32-byte key }, current: the key id new tokens use.
function _M.keyring(keys, current)
  if type(keys) ~= "table" then error("keys must be a table", 2) end
  local own, count = {}, 0
  for id, key in pairs(keys) do
    if not valid_key_id(id) then return nil, "invalid master key id (want [A-Za-z0-9_-], 1 to "
                                             .. KEY_ID_BYTES_MAX .. " bytes)" end
    if type(key) ~= "string" or #key ~= KEY_BYTES then
      return nil, format("master key %s: %s (want 32 bytes)", id, _M.ERR_KEY_LENGTH)
    end
    count = count + 1
    if count > MASTER_KEYS_MAX then return nil, format("more than %d master keys", MASTER_KEYS_MAX) end
    own[id] = key
  end
  if own[current] == nil then return nil, "current master key id is not among the keys" end
  local kr = setmetatable({ current = current, count = count }, Keyring)
  master_keys[kr] = own
  return kr
end

-- "k1:<base64 of 32 bytes>,k2:<...>" -> { k1 = ..., k2 = ... }. Errors name
-- the entry and the key id, never the key.
function _M.parse_master_keys(spec)
  check_string(spec, "spec")
  local keys, n = {}, 0
  for entry in gmatch(spec, "[^,]+") do
    n = n + 1
    if n > MASTER_KEYS_MAX then return nil, format("more than %d master keys", MASTER_KEYS_MAX) end
    local id, b64 = entry:match("^%s*([^:%s]+):(%S+)%s*$")
    if not id then return nil, format("master key entry %d: want <key id>:<base64 key>", n) end
    if not valid_key_id(id) then return nil, format("master key entry %d: invalid key id", n) end
    if keys[id] then return nil, format("master key %s: listed twice", id) end
    local key = _M.base64_decode(b64)
    if not key or #key ~= KEY_BYTES then
      return nil, format("master key %s: %s (want base64 of 32 bytes)", id, _M.ERR_KEY_LENGTH)
    end
    keys[id] = key
  end
  if n == 0 then return nil, "no master keys" end
  return keys
end

-- The keyring of NUVION_MASTER_KEYS and NUVION_MASTER_KEY_ID (or of the two
-- variables named).
function _M.keyring_from_env(keys_var, id_var)
  keys_var, id_var = keys_var or "NUVION_MASTER_KEYS", id_var or "NUVION_MASTER_KEY_ID"
  local spec, current = getenv(keys_var), getenv(id_var)
  if spec == nil or spec == "" then return nil, keys_var .. " is not set" end
  if current == nil or current == "" then return nil, id_var .. " is not set" end
  local keys, err = _M.parse_master_keys(spec)
  if not keys then return nil, keys_var .. ": " .. err end
  local kr, kerr = _M.keyring(keys, current)
  if not kr then return nil, id_var .. ": " .. kerr end
  return kr
end

local function wrap(kr, dek)
  local nonce = assert(_M.random(GCM_NONCE_BYTES))
  local kid = kr.current
  return nonce .. assert(_M.aes_gcm_encrypt(master_keys[kr][kid], nonce, dek, WRAP_AAD .. kid))
end

-- key id, wrapped data key, nonce and sealed data of a token, or nil, err.
local function parse_token(token)
  if type(token) ~= "string" then error("token must be a string", 3) end
  local ver, kid, w64, n64, c64 = token:match("^([^.]*)%.([^.]*)%.([^.]*)%.([^.]*)%.([^.]*)$")
  if not ver then return nil, _M.ERR_ENVELOPE_FORMAT end
  if ver ~= ENVELOPE_VERSION then return nil, _M.ERR_ENVELOPE_VERSION end
  if not valid_key_id(kid) then return nil, _M.ERR_ENVELOPE_FORMAT end
  local wrapped, nonce, sealed = _M.base64url_decode(w64), _M.base64url_decode(n64), _M.base64url_decode(c64)
  if not wrapped or not nonce or not sealed or #wrapped ~= WRAPPED_BYTES or #nonce ~= GCM_NONCE_BYTES
     or #sealed < GCM_TAG_BYTES then
    return nil, _M.ERR_ENVELOPE_FORMAT
  end
  return kid, wrapped, nonce, sealed
end

local function unwrap(kr, kid, wrapped)
  local mk = master_keys[kr][kid]
  if not mk then return nil, _M.ERR_UNKNOWN_KEY_ID end
  local dek = _M.aes_gcm_decrypt(mk, sub(wrapped, 1, GCM_NONCE_BYTES), sub(wrapped, GCM_NONCE_BYTES + 1),
                                 WRAP_AAD .. kid)
  if not dek then return nil, _M.ERR_UNWRAP end
  return dek
end

-- Encrypts plaintext under a fresh data key wrapped by the current master
-- key. aad (optional) binds the token to its place, e.g. "customers.email:"
-- .. id: decrypt must be given the same aad, so a token copied to another
-- row does not decrypt there.
function Keyring:encrypt(plaintext, aad)
  check_string(plaintext, "plaintext")
  check_opt_string(aad, "aad")
  local dek = assert(_M.random(KEY_BYTES))
  local nonce = assert(_M.random(GCM_NONCE_BYTES))
  local sealed, err = _M.aes_gcm_encrypt(dek, nonce, plaintext, ENVELOPE_AAD .. (aad or ""))
  if not sealed then return nil, err end
  local b64 = _M.base64url_encode
  return concat({ ENVELOPE_VERSION, self.current, b64(wrap(self, dek)), b64(nonce), b64(sealed) }, ".")
end

function Keyring:decrypt(token, aad)
  check_opt_string(aad, "aad")
  local kid, wrapped, nonce, sealed = parse_token(token)
  if not kid then return nil, wrapped end
  local dek, err = unwrap(self, kid, wrapped)
  if not dek then return nil, err end
  local plaintext = _M.aes_gcm_decrypt(dek, nonce, sealed, ENVELOPE_AAD .. (aad or ""))
  if not plaintext then return nil, _M.ERR_AUTH end
  return plaintext
end

-- The same token with its data key wrapped by the current master key; the
-- data and its nonce are unchanged. A token already on the current key is
-- returned as it is.
function Keyring:rewrap(token)
  local kid, wrapped, nonce, sealed = parse_token(token)
  if not kid then return nil, wrapped end
  if kid == self.current then return token end
  local dek, err = unwrap(self, kid, wrapped)
  if not dek then return nil, err end
  local b64 = _M.base64url_encode
  return concat({ ENVELOPE_VERSION, self.current, b64(wrap(self, dek)), b64(nonce), b64(sealed) }, ".")
end

-- The master key id a token was sealed under (to find the rows to rewrap).
function _M.envelope_key_id(token)
  local kid, err = parse_token(token)
  if not kid then return nil, err end
  return kid
end

function Keyring.key_id(_, token) return _M.envelope_key_id(token) end

return _M
