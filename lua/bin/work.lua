-- work.lua -- `bin/nuvion work <service>`: runs the queue workers of the service's
-- workers.lua until SIGTERM / SIGINT, then lets their jobs finish (up to
-- NUVION_WORKER_GRACE_MS, default 25 s), releases the rest to wait, and exits 0.
local nuvion = require "nuvion"
local core = require "nuvion.core"
local log = require "nuvion.log"
local queue = require "nuvion.queue"

local STOP_POLL_MS = 50

local service = ...
local dir = service
if not service:find("/", 1, true) then dir = nuvion.context().root .. "/lua/services/" .. service end
local workers, err = queue.start_service(dir)
if not workers then
  io.stderr:write("nuvion work: ", err, "\n")
  return 1
end
while not core.stopping() do nuvion.sleep(STOP_POLL_MS) end
local released = queue.close_all(workers)
log.info("queue workers stopped", { released = released })
return 0
