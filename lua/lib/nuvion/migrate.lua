-- migrate.lua -- applies sql/<database>/NNNN_name.sql in order, each file in its own
-- transaction, recorded in nuvion_migrations with its SHA-256; refuses to run when a file
-- already applied has changed (or vanished). Two migrators at once (two release phases) are
-- serialised by a transaction-level advisory lock: the second waits, then finds the file done.
--
--   bin/nuvion migrate core            sql/core/ into $NUVION_CORE_DATABASE_URL (or $DATABASE_URL)
--   bin/nuvion migrate --all           every sql/<name>/ into its $NUVION_<NAME>_DATABASE_URL
--   bin/nuvion migrate core --dir D --url U
local pg = require "nuvion.pg"
local crypto = require "nuvion.crypto"
local log = require "nuvion.log"
local lfs = require "lfs"

local ipairs, tostring, tonumber, pcall, error, sort = ipairs, tostring, tonumber, pcall, error, table.sort
local byte, sub, find, match, upper, format = string.byte, string.sub, string.find, string.match,
  string.upper, string.format

local LOCK_KEY = 7277826170 -- pg_advisory_xact_lock key of every migration ("nuvion" in digits)
local FILE_BYTES_MAX = 4 * 1024 * 1024

local ERR_NAME = "migration file names are NNNN_name.sql (4 digits, lower-case words): "
local ERR_CHANGED = "refusing to migrate: %s was applied with checksum %s and now has %s; "
  .. "add a new migration instead of editing an applied one"
local ERR_MISSING = "refusing to migrate: version %d (%s) is applied but its file is gone"

local _M = {}

-- Splits a script into statements at top-level semicolons: not inside quotes, identifiers,
-- $tag$ bodies, -- comments or /* */ comments. Empty statements are dropped.
function _M.split(sql)
  local out, i, n, start = {}, 1, #sql, 1
  local function push(stop)
    local stmt = match(sub(sql, start, stop), "^%s*(.-)%s*$")
    if stmt ~= "" and not match(stmt, "^%-%-[^\n]*$") then out[#out + 1] = stmt end
  end
  while i <= n do
    local c = byte(sql, i)
    if c == 39 or c == 34 then -- ' or "
      local close = find(sql, c == 39 and "'" or '"', i + 1, true)
      while close and byte(sql, close + 1) == c do close = find(sql, c == 39 and "'" or '"', close + 2, true) end
      if not close then return nil, "unterminated quote starting at byte " .. i end
      i = close + 1
    elseif c == 45 and byte(sql, i + 1) == 45 then -- --
      i = (find(sql, "\n", i, true) or n) + 1
    elseif c == 47 and byte(sql, i + 1) == 42 then -- /*
      local close = find(sql, "*/", i + 2, true)
      if not close then return nil, "unterminated comment starting at byte " .. i end
      i = close + 2
    elseif c == 36 then -- $tag$ ... $tag$
      local tag = match(sql, "^%$[%a_]*[%w_]*%$", i)
      if tag then
        local close = find(sql, tag, i + #tag, true)
        if not close then return nil, "unterminated " .. tag .. " body starting at byte " .. i end
        i = close + #tag
      else
        i = i + 1
      end
    elseif c == 59 then -- ;
      push(i - 1)
      i = i + 1
      start = i
    else
      i = i + 1
    end
  end
  push(n)
  return out
end

local function read(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read(FILE_BYTES_MAX + 1)
  f:close()
  text = text or ""
  if #text > FILE_BYTES_MAX then return nil, path .. " is larger than " .. FILE_BYTES_MAX .. " bytes" end
  return text
end

-- The migration files of a folder, in version order, with their text and checksum.
function _M.files(dir)
  local list, seen = {}, {}
  local ok, iter, state = pcall(lfs.dir, dir)
  if not ok then return nil, "cannot read " .. dir .. ": " .. tostring(iter) end
  for name in iter, state do
    if name ~= "." and name ~= ".." and name ~= "README.md" then
      local v, words = match(name, "^(%d%d%d%d)_([a-z0-9_]+)%.sql$")
      if not v then return nil, ERR_NAME .. name end
      local version = tonumber(v)
      if seen[version] then
        return nil, format("two migrations have version %04d: %s and %s", version, seen[version], name)
      end
      seen[version] = name
      local text, err = read(dir .. "/" .. name)
      if not text then return nil, err end
      list[#list + 1] = { version = version, name = name, words = words, sql = text,
                          checksum = crypto.hex_encode(crypto.sha256(text)) }
    end
  end
  sort(list, function(a, b) return a.version < b.version end)
  return list
end

-- Raises "what: err" when res is nil (a pg call's failure); returns res otherwise.
local function check(what, res, err)
  if res == nil then error(what .. ": " .. tostring(err), 0) end
  return res
end

local function ensure_table(db)
  check("create nuvion_migrations", db:tx(function(tx)
    check("lock", tx:query("SELECT pg_advisory_xact_lock($1)", LOCK_KEY))
    return tx:query([[CREATE TABLE IF NOT EXISTS nuvion_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now())]])
  end))
end

-- Applies one file unless another migrator did meanwhile. Returns true when it applied it.
local function apply(db, file, statements)
  return check("migrate " .. file.name, db:tx(function(tx)
    check("lock", tx:query("SELECT pg_advisory_xact_lock($1)", LOCK_KEY))
    local done = check("read nuvion_migrations",
                       tx:query("SELECT checksum FROM nuvion_migrations WHERE version = $1", file.version))
    if done[1] then return false end
    for i, stmt in ipairs(statements) do
      local res, err = tx:query(stmt)
      if not res then return nil, format("%s, statement %d: %s", file.name, i, tostring(err)) end
    end
    local res, err = tx:query("INSERT INTO nuvion_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                              file.version, file.name, file.checksum)
    if not res then return nil, err end
    return true
  end))
end

-- Migrates one database from one folder. Returns the count applied, or nil, err.
function _M.run(dir, url, label)
  local files, ferr = _M.files(dir)
  if not files then return nil, ferr end
  local plans = {}
  for _, file in ipairs(files) do
    local statements, serr = _M.split(file.sql)
    if not statements then return nil, file.name .. ": " .. serr end
    plans[#plans + 1] = statements
  end
  local db = pg.pool(url, { max = 1 })
  local ok, err = pcall(ensure_table, db)
  if not ok then return nil, err end
  local rows, qerr = db:query("SELECT version, name, checksum FROM nuvion_migrations ORDER BY version")
  if not rows then return nil, "read nuvion_migrations: " .. tostring(qerr) end
  local by_version = {}
  for _, file in ipairs(files) do by_version[file.version] = file end
  for _, row in ipairs(rows) do
    local file = by_version[row.version]
    if not file then return nil, format(ERR_MISSING, row.version, row.name) end
    if file.checksum ~= row.checksum then
      return nil, format(ERR_CHANGED, file.name, sub(row.checksum, 1, 12), sub(file.checksum, 1, 12))
    end
    file.applied = true
  end
  local count = 0
  for i, file in ipairs(files) do
    if not file.applied then
      local aok, res = pcall(apply, db, file, plans[i])
      if not aok then return nil, res end
      if res then
        count = count + 1
        log.info("migration applied", { database = label, migration = file.name })
      end
    end
  end
  log.info("migrations done", { database = label, applied = count, total = #files })
  return count
end

-- The databases of sql/: every folder, with the URL its service is given.
local function targets(root, only)
  local list = {}
  if lfs.attributes(root .. "/sql", "mode") ~= "directory" then return list end
  for name in lfs.dir(root .. "/sql") do
    if match(name, "^[a-z_]+$") and lfs.attributes(root .. "/sql/" .. name, "mode") == "directory"
       and (only == nil or only == name) then
      list[#list + 1] = name
    end
  end
  sort(list)
  return list
end

local function url_for(name)
  local url = os.getenv("NUVION_" .. upper(name) .. "_DATABASE_URL")
  if url and url ~= "" then return url end
  if name == "ledger" then url = os.getenv("LEDGER_DATABASE_URL") else url = os.getenv("DATABASE_URL") end
  if url and url ~= "" then return url end
  return nil
end

-- bin/nuvion migrate <name> | --all [--dir DIR] [--url URL]. Returns the exit status.
function _M.main(root, args)
  local name, dir, url, all
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--all" then all = true
    elseif a == "--dir" then i = i + 1 dir = args[i]
    elseif a == "--url" then i = i + 1 url = args[i]
    elseif sub(a, 1, 1) ~= "-" and not name then name = a
    else
      io.stderr:write("nuvion migrate: unknown argument " .. a .. "\n")
      return 2
    end
    i = i + 1
  end
  if not all and not name then
    io.stderr:write("usage: nuvion migrate <database> | --all [--dir DIR] [--url URL]\n")
    return 2
  end
  local names = all and targets(root) or { name }
  for _, db_name in ipairs(names) do
    local db_dir = dir or (root .. "/sql/" .. db_name)
    local db_url = url or url_for(db_name)
    if not db_url then
      io.stderr:write(format("nuvion migrate: no database URL for %s (set NUVION_%s_DATABASE_URL)\n",
                             db_name, upper(db_name)))
      return 1
    end
    local count, err = _M.run(db_dir, db_url, db_name)
    if not count then
      io.stderr:write("nuvion migrate " .. db_name .. ": " .. tostring(err) .. "\n")
      return 1
    end
    io.stdout:write(format("%s: %d migration(s) applied\n", db_name, count))
  end
  return 0
end

return _M
