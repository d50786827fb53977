-- nuvion.pg inside `bin/nuvion serve`: handlers query Postgres, and a live reload keeps the
-- worker's pool (and its connections) for the new generation while in-flight queries finish.
local helpers = require "spec.helpers"
local nuvion = require "nuvion"

describe("nuvion.pg in a server", function()
  local srv

  lazy_setup(function()
    assert(os.getenv("NUVION_TEST_DATABASE_URL"), "NUVION_TEST_DATABASE_URL is not set")
    srv = helpers.start_server({ app = helpers.apps .. "/pg", workers = 1 })
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
  end)

  it("answers from Postgres with exact integers", function()
    local res = assert(helpers.request(srv.port, { path = "/pid" }))
    assert.equals(200, res.status)
    assert.matches('"n":9007199254740993', res.body, 1, true)
  end)

  it("keeps the pool's connection across a reload, finishing the query in flight", function()
    local before = assert(helpers.request(srv.port, { path = "/pid" })).json()
    local slow
    nuvion.spawn(function() slow = helpers.request(srv.port, { path = "/sleep" }) end)
    nuvion.sleep(50)
    srv:signal("HUP")
    assert.is_truthy(srv:wait_log({ msg = "generation 2 serving" }, 5000, 1))
    while not slow do nuvion.sleep(10) end
    assert.equals(200, slow.status)
    assert.is_truthy(srv:wait_log({ msg = "generation 1 closed" }, 5000, 1))
    local after = assert(helpers.request(srv.port, { path = "/pid" })).json()
    assert.equals(2, after.generation)
    -- the same worker's pool: one of its two connections, not a new one per generation
    local pids = {}
    for _ = 1, 6 do pids[assert(helpers.request(srv.port, { path = "/pid" })).json().pid] = true end
    local n = 0
    for _ in pairs(pids) do n = n + 1 end
    assert.is_true(n <= 2)
    assert.is_true(pids[before.pid] == true)
  end)
end)
