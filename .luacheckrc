-- .luacheckrc -- luacheck settings (`make lint`, and a step of `make test`).
-- Lua runs in LuaJIT inside bin/nuvion: std = "luajit" allows LuaJIT's globals (bit, jit, ...)
-- and nothing else, so code under lua/ can neither set nor read a global of its own.
std = "luajit"
cache = false
codes = true
max_line_length = 120

-- Specs run inside the host under busted (describe, it, assert, spy, ...).
files["spec/"] = { std = "+busted" }

-- Benchmarks are scripts run by `bin/nuvion run` (or luajit); same rules as lua/.
files["bench/"] = { std = "luajit" }
