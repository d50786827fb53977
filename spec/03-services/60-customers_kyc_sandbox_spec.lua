-- The KYC provider client (nuvion.providers.kyc) against the simulator (lua/sandbox/kyc) served
-- for real: the documented API, its test identities, idempotency on reference, the stall that
-- makes a client time out, errors; and the tier rules (nuvion.rules.onboarding).
local helpers = require "spec.helpers"
local kyc = require "nuvion.providers.kyc"
local rules = require "nuvion.rules.onboarding"
local nuvion = require "nuvion"
local crypto = require "nuvion.crypto"

describe("KYC sandbox and client", function()
  local sim, client

  lazy_setup(function()
    sim = helpers.start_server({ app = helpers.root .. "/lua/sandbox/kyc", env = {
      REDIS_URL = assert(os.getenv("NUVION_TEST_REDIS_URL")), KYC_SIM_PROCESSING_MS = "150",
      KYC_SIM_STALL_MS = "1500" } })
    client = kyc.new({ url = "http://127.0.0.1:" .. sim.port, api_key = kyc.DEV_API_KEY, timeout_ms = 500 })
  end)

  lazy_teardown(function()
    if sim then sim:stop() end
  end)

  local function ref() return "ref_" .. crypto.hex_encode(crypto.random(6)) end

  local function person(number, last_name)
    return { reference = ref(), kind = "individual", first_name = "Ada", last_name = last_name or "Lovelace",
             date_of_birth = "1990-04-12", document = { type = "passport", number = number } }
  end

  local function settle(id)
    local deadline = nuvion.monotonic_ms() + 3000
    repeat
      local c = assert(client:fetch(id))
      if c.status ~= "processing" then return c end
      nuvion.sleep(30)
    until nuvion.monotonic_ms() > deadline
    error("check " .. id .. " never settled")
  end

  local outcomes = {
    { "P0000", nil, "clear", "verified" },
    { "P12341111", nil, "rejected", "rejected", "document_invalid" },
    { "P12342222", nil, "consider", "action_required", "document_unreadable" },
    { "P98765", "Verified", "clear", "verified" },
    { "P98765", "Rejected", "rejected", "rejected", "document_invalid" },
    { "P98765", nil, "clear", "verified" },
  }
  for _, o in ipairs(outcomes) do
    it("document " .. o[1] .. " / last name " .. tostring(o[2]) .. " -> " .. o[3], function()
      local c = assert(client:submit(person(o[1], o[2])))
      assert.matches("^chk_", c.id)
      assert.equals("processing", c.status)
      assert.is_nil(c.result)
      local done = settle(c.id)
      assert.equals(o[3], done.status)
      assert.equals(o[4], done.result)
      if o[5] then assert.same({ o[5] }, done.result_codes) end
      assert.is_number(done.completed)
    end)
  end

  it("businesses are judged on the registration number", function()
    local c = assert(client:submit({ reference = ref(), kind = "business", business_name = "Acme",
                                     registration_number = "RC11111" }))
    assert.equals("rejected", settle(c.id).status)
  end)

  it("is idempotent on reference", function()
    local p = person("P0000")
    local c1 = assert(client:submit(p))
    local c2 = assert(client:submit(p))
    assert.equals(c1.id, c2.id)
  end)

  it("3333 stalls the first submission past the client's timeout; the retry gets the check at once", function()
    local p = person("P55553333")
    local t0 = nuvion.monotonic_ms()
    local c, err = client:submit(p)
    assert.is_nil(c)
    assert.equals("timeout", err.code)
    assert.is_true(err.retryable)
    assert.is_true(nuvion.monotonic_ms() - t0 < 1400)
    local again = assert(client:submit(p))
    assert.equals("clear", settle(again.id).status)
    -- the stalled first call, answering later, names the same check
    nuvion.sleep(1200)
    local third = assert(client:submit(p))
    assert.equals(again.id, third.id)
  end)

  it("refuses a wrong key, unknown checks and bad bodies", function()
    local bad = kyc.new({ url = "http://127.0.0.1:" .. sim.port, api_key = "wrong", timeout_ms = 500 })
    local c, err = bad:submit(person("P0000"))
    assert.is_nil(c)
    assert.equals("refused", err.code)
    assert.is_false(err.retryable)
    c, err = client:fetch("chk_00000000")
    assert.is_nil(c)
    assert.equals("refused", err.code)
    c, err = client:fetch("../etc")
    assert.is_nil(c)
    assert.equals("refused", err.code)
    c, err = client:submit({ reference = ref(), kind = "robot" })
    assert.is_nil(c)
    assert.equals("refused", err.code)
    c, err = client:submit({ reference = "bad ref!", kind = "individual" })
    assert.is_nil(c)
    assert.equals("refused", err.code)
  end)

  it("a provider that is down is a retryable error", function()
    local down = kyc.new({ url = "http://127.0.0.1:9", api_key = "k", timeout_ms = 500 })
    local c, err = down:submit(person("P0000"))
    assert.is_nil(c)
    assert.equals("unavailable", err.code)
    assert.is_true(err.retryable)
  end)

  it("from_env needs a key outside development and test", function()
    -- this process runs with NUVION_ENV unset or test; the error text is the contract
    if os.getenv("NUVION_ENV") == nil then
      local c, err = kyc.from_env()
      assert.is_nil(c)
      assert.matches("NUVION_KYC_API_KEY", err)
    end
  end)

  describe("tier rules", function()
    it("every tier has limits for its assets, integers, growing with the tier", function()
      for tier = 0, 2 do
        for _, asset in ipairs({ "USD", "EUR" }) do
          local l = rules.limits(tier, asset)
          for _, k in ipairs({ "max_balance", "daily_in", "daily_out" }) do
            assert.is_number(l[k])
            assert.equals(math.floor(l[k]), l[k])
            if tier > 0 then assert.is_true(l[k] > rules.limits(tier - 1, asset)[k]) end
          end
        end
      end
      assert.equals(0, rules.limits(0, "USD").max_balance)
      assert.is_nil(rules.limits(1, "XYZ"))
      assert.is_nil(rules.limits(7, "USD"))
    end)

    it("gives tier 1 to verified individuals, 2 to businesses, 0 otherwise", function()
      assert.equals(1, rules.tier_for("individual", "verified"))
      assert.equals(2, rules.tier_for("business", "verified"))
      for _, st in ipairs({ "pending", "in_review", "rejected", "action_required" }) do
        assert.equals(0, rules.tier_for("individual", st))
        assert.equals(0, rules.tier_for("business", st))
      end
    end)
  end)
end)
