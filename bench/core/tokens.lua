-- bench/core/tokens.lua -- access token verification in a service that is not core
-- (nuvion.auth.verify_token: parse, kid lookup, Ed25519 in C, claims, the verified-token
-- cache) against the bare Ed25519 verify of the same bytes. Issue 6's goal: a token never
-- seen before verifies at >= 90 % of the bare rate.
--
-- Run: bin/nuvion run bench/core/tokens.lua
-- Environment: BENCH_TOKENS (distinct tokens per round, default 5000), BENCH_TOKENS_ROUNDS
-- (default 5; the best round counts). CPU time (os.clock), one core.
local crypto = require "nuvion.crypto"
local json = require "nuvion.json"
local nuvion = require "nuvion"
local auth = require "nuvion.auth"
local jwt = require "nuvion.auth.jwt"
local jwks = require "nuvion.auth.jwks"

local clock, format, floor = os.clock, string.format, math.floor

local N = tonumber(os.getenv("BENCH_TOKENS")) or 5000
local ROUNDS = tonumber(os.getenv("BENCH_TOKENS_ROUNDS")) or 5
local GOAL = 0.9

auth.configure({ NUVION_ENV = "test", NUVION_SERVICE_NAME = "bench", token_cache_max = 2 * N })
local seed, pub = crypto.ed25519_keypair()
local kid = "ed_bench"
local src = jwks.new("http://127.0.0.1:1/unused")
src:preload({ [kid] = pub })
auth.use_jwks(src)

-- N distinct tokens as core issues them (same claims, header and sizes)
local now = floor(nuvion.now())
local tokens, inputs, sigs = {}, {}, {}
for i = 1, N do
  local t = jwt.sign({ alg = "EdDSA", typ = "JWT", kid = kid }, {
    iss = auth.ISSUER, sub = "ptn_01m86t0w1kp3161ccfqnp2s9a6", partner = "ptn_01m86t0w1kp3161ccfqnp2s9a6",
    mode = "test", scopes = json.array({ "customers:read", "customers:write", "wallets:write" }),
    key = "key_01m86t0w1q2zhx8px6xq8rjycg", kind = "access", iat = now, nbf = now, exp = now + 3600,
    jti = crypto.hex_encode(crypto.random(16)) }, seed)
  tokens[i] = t
  local d2 = t:match("^[^.]+%.[^.]+()%.")
  inputs[i] = t:sub(1, d2 - 1)
  sigs[i] = crypto.base64url_decode(t:sub(d2 + 1))
end

local function rate(fn)
  local t0 = clock()
  local n = fn()
  return n / (clock() - t0)
end

local function best(fn)
  local top = 0
  for _ = 1, ROUNDS do top = math.max(top, rate(fn)) end
  return top
end

local verify = crypto.ed25519_verify
local function bare_round()
  for i = 1, N do assert(verify(pub, inputs[i], sigs[i])) end
  return N
end
local function miss_round()
  auth.configure({})            -- an empty cache: every token is new
  auth.use_jwks(src)
  for i = 1, N do assert(auth.verify_token(tokens[i])) end
  return N
end

-- rounds interleaved, so both see the same machine (2 shared cores): the best of each
local bare, miss = 0, 0
for _ = 1, ROUNDS do
  bare = math.max(bare, rate(bare_round))
  miss = math.max(miss, rate(miss_round))
end

local hits = best(function()
  for _ = 1, 20 do
    for i = 1, N do assert(auth.verify_token(tokens[i])) end
  end
  return 20 * N
end)
assert(auth.stats().verifications == N, "the hit rounds verified signatures again")

print(format("%-34s | %12s | %6s | %7s | %s", "operation", "ops/s", "ratio", "goal", "result"))
print(format("%s-|-%s-|-%s-|-%s-|-%s", ("-"):rep(34), ("-"):rep(12), ("-"):rep(6), ("-"):rep(7), ("-"):rep(6)))
print(format("%-34s | %12.0f | %6s | %7s | %s", "ed25519_verify (bare, same bytes)", bare, "1.00", "-", "base"))
print(format("%-34s | %12.0f | %6.2f | %7s | %s", "verify_token, new token (miss)", miss, miss / bare,
             ">= " .. GOAL, miss / bare >= GOAL and "met" or "MISSED"))
print(format("%-34s | %12.0f | %6.2f | %7s | %s", "verify_token, cached (hit)", hits, hits / bare, "-", "info"))
print(format("(%d tokens of %d bytes, best of %d rounds, CPU time)", N, #tokens[1], ROUNDS))
-- a missed goal is said in the table (MISSED), not in the exit status: that is for a failed run
