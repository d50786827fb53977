-- The outbox tables are the same in every service database: sql/<service>/NNNN_outbox.sql are
-- copies of sql/core/0001_outbox.sql (docs/outbox.md, "Another service").
local lfs = require "lfs"
local helpers = require "spec.helpers"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

describe("outbox migrations", function()
  it("are byte-identical copies of core's in every service folder that has one", function()
    local root = helpers.root .. "/sql"
    local reference = read(root .. "/core/0001_outbox.sql")
    assert.matches("CREATE TABLE outbox", reference, 1, true)
    assert.matches("CREATE TABLE processed_events", reference, 1, true)
    local copies = 0
    for db in lfs.dir(root) do
      if db:match("^[a-z_]+$") and lfs.attributes(root .. "/" .. db, "mode") == "directory" then
        for name in lfs.dir(root .. "/" .. db) do
          if name:match("^%d%d%d%d_outbox%.sql$") then
            copies = copies + 1
            assert.equals(reference, read(root .. "/" .. db .. "/" .. name), db .. "/" .. name)
          end
        end
      end
    end
    assert.is_true(copies >= 1)
  end)
end)
