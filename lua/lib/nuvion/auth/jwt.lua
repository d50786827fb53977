-- auth/jwt.lua -- compact JWS with Ed25519 (RFC 8037, alg "EdDSA"): signing and checking.
--
--   local token = jwt.sign({ alg = "EdDSA", typ = "JWT", kid = kid }, claims, seed32)
--   local claims, header = jwt.verify(token, key_of_kid, now, skew_s)
--     -- key_of_kid(kid) -> pub32 | nil, err; failures: nil, code, message
--
-- Only alg EdDSA is accepted, whatever the token's header says (so "none", "HS256" with the
-- public key as a secret and the like are refused before anything else). The signature is
-- checked (C, OpenSSL) before the payload is parsed; then exp, nbf and iat.
local ffi = require "ffi"
local crypto = require "nuvion.crypto" -- declares the host's nv_ffi_crypto_* entry points
local json = require "nuvion.json"

local type, find, sub, getmetatable, tonumber = type, string.find, string.sub, getmetatable, tonumber
local b64u_encode, b64u_decode = crypto.base64url_encode, crypto.base64url_decode
local ed_sign = crypto.ed25519_sign
local decode, encode = json.decode, json.encode
local C, cast, ffi_string = ffi.C, ffi.cast, ffi.string
local band, rshift = bit.band, bit.rshift

-- A token larger than this is refused unread (claims are a few hundred bytes).
local TOKEN_BYTES_MAX = 4096
local DECODE_OPTS = { depth = 4, bytes = TOKEN_BYTES_MAX }
-- Parsed headers kept, by their base64url text (one per signing key in practice); emptied
-- whole when full.
local HEADERS_MAX = 64

-- The signing input and the payload are read in place, through pointers into the token:
-- cutting them out as Lua strings would intern long strings per token, and LuaJIT 2.1's
-- string hash samples only a few positions of a long string (its first and last bytes among
-- them), so tokens that differ only in their middle (the jti) collide in the string table and
-- each new one walks the chain (measured: half the verify rate at 5000 live tokens;
-- bench/core/tokens.lua). The claims text must become a string for json.decode: it is
-- framed with 4 bytes of JSON whitespace on each side chosen by 16 bits of the (already
-- verified) signature, so its first and last bytes differ from token to token too.
local CHAR_P = ffi.typeof("const char *")
local sig_buf = ffi.new("unsigned char[66]")
local payload_buf = ffi.new("unsigned char[?]", TOKEN_BYTES_MAX + 8)
local WHITESPACE = ffi.new("const unsigned char[4]", { 32, 9, 10, 13 })
local len_p = ffi.new("size_t[1]")
local err_p = ffi.new("const char *[1]")
local FFI_OK = 0

local _M = {
  TOKEN_BYTES_MAX = TOKEN_BYTES_MAX,
  ERR_FORMAT = "The access token is malformed.",
  ERR_ALG = "The access token's algorithm is not EdDSA.",
  ERR_KID = "The access token is signed with an unknown key.",
  ERR_SIGNATURE = "The access token's signature is invalid.",
  ERR_EXPIRED = "The access token has expired.",
  ERR_NOT_YET = "The access token is not valid yet.",
  ERR_CLAIMS = "The access token's claims are invalid.",
  ERR_TOO_LARGE = "The access token is too large.",
}

local function b64json(v)
  return b64u_encode(assert(encode(v)))
end

function _M.sign(header, claims, seed)
  local input = b64json(header) .. "." .. b64json(claims)
  local sig = assert(ed_sign(seed, input))
  return input .. "." .. b64u_encode(sig)
end

local function part_json(s)
  local raw = b64u_decode(s)
  if not raw then return nil end
  local v = decode(raw, DECODE_OPTS)
  if type(v) ~= "table" or getmetatable(v) ~= nil then return nil end
  return v
end

local headers, headers_n = {}, 0

local function header_of(s)
  local h = headers[s]
  if h then return h end
  h = part_json(s)
  if not h then return nil end
  if headers_n >= HEADERS_MAX then headers, headers_n = {}, 0 end
  headers[s], headers_n = h, headers_n + 1
  return h
end

-- Headers kept now (specs: the bound).
function _M.headers_cached()
  return headers_n
end

-- The JSON object of base64url bytes [from, from + len) of ptr, framed by whitespace drawn
-- from the signature in sig_buf; or nil.
local function json_at(ptr, from, len)
  if C.nv_ffi_crypto_b64_decode(ptr + from, len, payload_buf + 4, len_p, 1, err_p) ~= FFI_OK then return nil end
  local n = tonumber(len_p[0])
  local head, tail = sig_buf[0], sig_buf[1]
  for i = 0, 3 do
    payload_buf[i] = WHITESPACE[band(rshift(head, 2 * i), 3)]
    payload_buf[n + 4 + i] = WHITESPACE[band(rshift(tail, 2 * i), 3)]
  end
  local v = decode(ffi_string(payload_buf, n + 8), DECODE_OPTS)
  if type(v) ~= "table" or getmetatable(v) ~= nil then return nil end
  return v
end

-- Only the header, unverified: for routing a token to its key source.
function _M.header(token)
  if type(token) ~= "string" or #token > TOKEN_BYTES_MAX then return nil end
  local dot = find(token, ".", 1, true)
  if not dot then return nil end
  return part_json(sub(token, 1, dot - 1))
end

local function is_time(v)
  return type(v) == "number" and v % 1 == 0 and v >= 0
end

-- claims, header on success; nil, code, message otherwise. code is "invalid_token" or
-- "token_expired".
function _M.verify(token, key_of_kid, now, skew_s)
  if type(token) ~= "string" then return nil, "invalid_token", _M.ERR_FORMAT end
  if #token > TOKEN_BYTES_MAX then return nil, "invalid_token", _M.ERR_TOO_LARGE end
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 or find(token, ".", d2 + 1, true) then return nil, "invalid_token", _M.ERR_FORMAT end
  local header = header_of(sub(token, 1, d1 - 1))
  if not header then return nil, "invalid_token", _M.ERR_FORMAT end
  if header.alg ~= "EdDSA" then return nil, "invalid_token", _M.ERR_ALG end
  if header.crit ~= nil then return nil, "invalid_token", _M.ERR_FORMAT end
  local kid = header.kid
  if type(kid) ~= "string" then return nil, "invalid_token", _M.ERR_KID end
  local pub = key_of_kid(kid)
  if not pub then return nil, "invalid_token", _M.ERR_KID end
  local ptr = cast(CHAR_P, token)
  local sig_len = #token - d2
  if sig_len ~= 86 or C.nv_ffi_crypto_b64_decode(ptr + d2, sig_len, sig_buf, len_p, 1, err_p) ~= FFI_OK
     or len_p[0] ~= 64 then
    return nil, "invalid_token", _M.ERR_SIGNATURE
  end
  if C.nv_ffi_crypto_ed25519_verify(pub, #pub, ptr, d2 - 1, cast(CHAR_P, sig_buf), 64, err_p) ~= FFI_OK then
    return nil, "invalid_token", _M.ERR_SIGNATURE
  end
  local claims = json_at(ptr, d1, d2 - d1 - 1)
  if not claims then return nil, "invalid_token", _M.ERR_FORMAT end
  local exp, nbf, iat = claims.exp, claims.nbf, claims.iat
  if not is_time(exp) or not is_time(iat) or (nbf ~= nil and not is_time(nbf)) then
    return nil, "invalid_token", _M.ERR_CLAIMS
  end
  if now >= exp then return nil, "token_expired", _M.ERR_EXPIRED end
  if iat > now + skew_s or (nbf and nbf > now + skew_s) then return nil, "invalid_token", _M.ERR_NOT_YET end
  return claims, header
end

return _M
