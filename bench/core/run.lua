-- bench/core/run.lua -- what `make bench` runs for core (scripts/bench.sh): token verification.
-- make bench runs bench/core/run.sh (tokens, then the HTTP benches); this file stays for a token-only run.
local root = require("nuvion").context().root
dofile(root .. "/bench/core/tokens.lua")
