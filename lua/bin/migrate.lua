-- migrate.lua -- `bin/nuvion migrate ...`: the release phase's migrations (nuvion.migrate).
local nuvion = require "nuvion"
return require("nuvion.migrate").main(nuvion.context().root, { ... })
