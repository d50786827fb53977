-- auth/jwt.lua -- compact JWS with Ed25519 (RFC 8037, alg "EdDSA"): signing and checking.
--
--   local token = jwt.sign({ alg = "EdDSA", typ = "JWT", kid = kid }, claims, seed32)
--   local claims, header = jwt.verify(token, key_of_kid, now, skew_s)
--     -- key_of_kid(kid) -> pub32 | nil, err; failures: nil, code, message
--
-- Only alg EdDSA is accepted, whatever the token's header says (so "none", "HS256" with the
-- public key as a secret and the like are refused before anything else). The signature is
-- checked (C, OpenSSL) before the payload is parsed; then exp, nbf and iat.
local crypto = require "nuvion.crypto"
local json = require "nuvion.json"

local type, find, sub = type, string.find, string.sub
local b64u_encode, b64u_decode = crypto.base64url_encode, crypto.base64url_decode
local ed_sign, ed_verify = crypto.ed25519_sign, crypto.ed25519_verify
local decode, encode = json.decode, json.encode

-- A token larger than this is refused unread (claims are a few hundred bytes).
local TOKEN_BYTES_MAX = 4096
local DECODE_OPTS = { depth = 4, bytes = TOKEN_BYTES_MAX }

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
  local header = part_json(sub(token, 1, d1 - 1))
  if not header then return nil, "invalid_token", _M.ERR_FORMAT end
  if header.alg ~= "EdDSA" then return nil, "invalid_token", _M.ERR_ALG end
  if header.crit ~= nil then return nil, "invalid_token", _M.ERR_FORMAT end
  local kid = header.kid
  if type(kid) ~= "string" then return nil, "invalid_token", _M.ERR_KID end
  local pub = key_of_kid(kid)
  if not pub then return nil, "invalid_token", _M.ERR_KID end
  local sig = b64u_decode(sub(token, d2 + 1))
  if not sig or #sig ~= 64 then return nil, "invalid_token", _M.ERR_SIGNATURE end
  if not ed_verify(pub, sub(token, 1, d2 - 1), sig) then return nil, "invalid_token", _M.ERR_SIGNATURE end
  local claims = part_json(sub(token, d1 + 1, d2 - 1))
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
