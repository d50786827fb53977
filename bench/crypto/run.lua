-- bench/crypto/run.lua -- nuvion.crypto called from Lua, as service code calls it, against a C loop
-- (bench/crypto/peer.c) calling OpenSSL and libsecp256k1 directly on the same keys and messages.
--
-- Run: bench/crypto/run.sh (builds the peer, then runs this with BENCH_CRYPTO_PEER set).
-- The peer runs before and after the Lua loops and its better run counts, so that a drift of
-- the machine during the run does not favour either side. ops/s are per CPU second (os.clock
-- here, clock() in the peer), best of BENCH_CRYPTO_ROUNDS rounds.
-- Extra rows measure the other boundary, the Lua C API (nuvion.crypto_c), on the same HMAC:
-- docs/crypto.md says why the FFI one was kept.
local crypto = require "nuvion.crypto"
local crypto_c = require "nuvion.crypto_c"
local process = require "nuvion.process"

local clock, format, rep, char = os.clock, string.format, string.rep, string.char

local SCALE = tonumber(os.getenv("BENCH_CRYPTO_SCALE")) or 1
local ROUNDS = tonumber(os.getenv("BENCH_CRYPTO_ROUNDS")) or 5
local PEER = os.getenv("BENCH_CRYPTO_PEER") or "build/bench/crypto_peer"
local GOAL = 0.9
local PEER_TIMEOUT_MS = 30000

-- The peer's inputs, byte for byte: msg[i] = i * 7 + 1, key[i] = i + 1, nonce[i] = i + 101 (0-based).
local function bytes(n, f)
  local t = {}
  for i = 0, n - 1 do t[#t + 1] = char(f(i) % 256) end
  return table.concat(t)
end
local MSG = bytes(1024, function(i) return i * 7 + 1 end)
local KEY = bytes(32, function(i) return i + 1 end)
local NONCE = bytes(12, function(i) return i + 101 end)

local K1_PRIV = crypto.sha256("bench secp256k1 key")
local K1_PUB = assert(crypto.secp256k1_public(K1_PRIV))
local K1_HASH = crypto.keccak256(MSG)
local K1_SIG = string.sub(assert(crypto.secp256k1_sign(K1_PRIV, K1_HASH)), 1, 64)
local ED_SEED = crypto.sha256("bench ed25519 key")
local ED_PUB = assert(crypto.ed25519_public(ED_SEED))
local ED_SIG = assert(crypto.ed25519_sign(ED_SEED, MSG))

local k1_verify, ed_verify = crypto.secp256k1_verify, crypto.ed25519_verify
local hmac, hmac_c, gcm = crypto.hmac_sha256, crypto_c.hmac_sha256, crypto.aes_gcm_encrypt
local MSG64 = string.sub(MSG, 1, 64)

-- name, iterations per round, the loop; each loop checks its result so the work cannot be skipped.
local OPS = {
  { "secp256k1_verify", 4000, function(n)
      for _ = 1, n do assert(k1_verify(K1_PUB, K1_HASH, K1_SIG)) end
    end },
  { "ed25519_verify", 3000, function(n)
      for _ = 1, n do assert(ed_verify(ED_PUB, MSG, ED_SIG)) end
    end },
  { "hmac_sha256_1k", 60000, function(n)
      local out
      for _ = 1, n do out = hmac(KEY, MSG) end
      assert(#out == 32)
    end },
  { "aes_gcm_encrypt_1k", 150000, function(n)
      local out
      for _ = 1, n do out = gcm(KEY, NONCE, MSG) end
      assert(#out == 1040)
    end },
}
-- The same HMAC through the Lua C API, and both boundaries on a 64-byte message where the
-- boundary's cost weighs most; each with its peer row. Information, not goals.
local EXTRA = {
  { "hmac_sha256_1k (C API)", 60000, "hmac_sha256_1k", function(n)
      local out
      for _ = 1, n do out = hmac_c(KEY, MSG) end
      assert(#out == 32)
    end },
  { "hmac_sha256_64 (FFI)", 150000, "hmac_sha256_64", function(n)
      local out
      for _ = 1, n do out = hmac(KEY, MSG64) end
      assert(#out == 32)
    end },
  { "hmac_sha256_64 (C API)", 150000, "hmac_sha256_64", function(n)
      local out
      for _ = 1, n do out = hmac_c(KEY, MSG64) end
      assert(#out == 32)
    end },
}

local function best_ops(loop, n)
  loop(math.max(1, math.floor(n / 10))) -- warm-up, and JIT compilation
  local best = 0
  for _ = 1, ROUNDS do
    local t0 = clock()
    loop(n)
    local dt = clock() - t0
    if dt > 0 and n / dt > best then best = n / dt end
  end
  return best
end

local function run_peer()
  local env = {
    BENCH_K1_PUB = crypto.hex_encode(K1_PUB), BENCH_K1_HASH = crypto.hex_encode(K1_HASH),
    BENCH_K1_SIG = crypto.hex_encode(K1_SIG), BENCH_ED_PUB = crypto.hex_encode(ED_PUB),
    BENCH_ED_SIG = crypto.hex_encode(ED_SIG),
  }
  local proc = assert(process.spawn({ PEER, tostring(SCALE), tostring(ROUNDS) }, { env = env, output = "pipe" }))
  local got = {}
  for _ = 1, #OPS + 1 do
    local line = proc:line(PEER_TIMEOUT_MS)
    if not line then break end
    local name, ops = line:match("^(%S+) (%d+)$")
    if not name then error("peer: " .. line) end
    got[name] = tonumber(ops)
  end
  local how, code = proc:wait(PEER_TIMEOUT_MS)
  proc:close()
  if how ~= "exit" or code ~= 0 then error(format("peer %s: %s %s", PEER, tostring(how), tostring(code))) end
  return got
end

local function main()
  local before = run_peer()
  local lua = {}
  for _, op in ipairs(OPS) do lua[op[1]] = best_ops(op[3], math.floor(op[2] * SCALE)) end
  local extra = {}
  for _, op in ipairs(EXTRA) do
    extra[#extra + 1] = { op[1], best_ops(op[4], math.floor(op[2] * SCALE)), op[3] }
  end
  local after = run_peer()

  print(format("1 KB messages; ops per CPU second, best of %d rounds; peer: C on the same libraries (best of 2 runs)",
               ROUNDS))
  print(format("%-24s | %12s | %12s | %6s | %6s | %s", "operation", "lua ops/s", "peer ops/s", "ratio", "goal",
               "result"))
  print(rep("-", 25) .. "|" .. rep("-", 14) .. "|" .. rep("-", 14) .. "|" .. rep("-", 8) .. "|" .. rep("-", 8)
        .. "|" .. rep("-", 9))
  local failed = 0
  for _, op in ipairs(OPS) do
    local name = op[1]
    local peer = math.max(before[name] or 0, after[name] or 0)
    local ratio = peer > 0 and lua[name] / peer or 0
    local met = ratio >= GOAL
    if not met then failed = failed + 1 end
    print(format("%-24s | %12.0f | %12.0f | %6.2f | %6s | %s", name, lua[name], peer, ratio, ">= " .. GOAL,
                 met and "met" or "not met"))
  end
  for _, row in ipairs(extra) do
    local peer = math.max(before[row[3]] or 0, after[row[3]] or 0)
    print(format("%-24s | %12.0f | %12.0f | %6.2f | %6s | %s", row[1], row[2], peer,
                 peer > 0 and row[2] / peer or 0, "-", "info"))
  end
  return failed
end

main()
