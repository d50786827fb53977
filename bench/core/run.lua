-- bench/core/run.lua -- what `make bench` runs for core (scripts/bench.sh): token verification.
-- The HTTP benches of core (customers, transfers) go beside it.
local root = require("nuvion").context().root
dofile(root .. "/bench/core/tokens.lua")
