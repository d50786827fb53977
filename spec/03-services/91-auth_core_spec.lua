-- core itself (lua/services/core, its areas and deps) serves the auth areas: a bootstrap key
-- manages keys, gets a token, and the token works on core's routes.
local helpers = require "spec.helpers"
local process = require "nuvion.process"
local nuvion = require "nuvion"
local fx = require "spec.auth_fixture"

describe("core's auth areas", function()
  local srv

  lazy_setup(function()
    srv = helpers.start_server({ service = "core", env = { NUVION_ENV = "test" } })
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  it("takes the key the bootstrap script prints, and its tokens", function()
    local name = "bootstrap spec " .. nuvion.random_hex(4)
    local proc = assert(process.spawn({ helpers.bin, "run", helpers.root .. "/lua/bin/bootstrap.lua" },
      { env = { NUVION_ENV = "test", NUVION_BOOTSTRAP_PARTNER_NAME = name }, output = "pipe" }))
    local lines = {}
    for _ = 1, 20 do
      local line = proc:line(10000)
      if not line then break end
      lines[#lines + 1] = line
    end
    assert.equals("exit", (proc:wait(10000)))
    local out = table.concat(lines, "\n")
    local secret = out:match("(sk_test_[0-9A-Za-z]+)")
    assert.is_string(secret, out)
    local keys = fx.call(srv.port, "GET", "/v1/api_keys", secret)
    assert.equals(200, keys.status)
    assert.equals(1, #keys.data.data)
    local token = fx.token(srv.port, secret)
    local created = fx.call(srv.port, "POST", "/v1/api_keys", token, { name = "made with a token" })
    assert.equals(201, created.status)
    assert.equals(200, fx.call(srv.port, "GET", "/v1/audit_logs", token).status)
    assert.equals(200, fx.call(srv.port, "GET", "/.well-known/jwks.json").status)

    -- a second run makes nothing
    proc = assert(process.spawn({ helpers.bin, "run", helpers.root .. "/lua/bin/bootstrap.lua" },
      { env = { NUVION_ENV = "test", NUVION_BOOTSTRAP_PARTNER_NAME = name }, output = "pipe" }))
    lines = {}
    for _ = 1, 20 do
      local line = proc:line(10000)
      if not line then break end
      lines[#lines + 1] = line
    end
    proc:wait(10000)
    out = table.concat(lines, "\n")
    assert.matches("exists", out)
    assert.matches("nothing created", out)
    assert.is_nil(out:find(secret, 1, true))
  end)
end)
