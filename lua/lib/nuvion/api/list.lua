-- list.lua -- cursor lists: `limit` (1..100, default 10), `starting_after` / `ending_before`
-- (object ids, exclusive), newest first; answered as {"object":"list","data":[...],"has_more":b}.
--
--   local list = require "nuvion.api.list"
--   local page, outcome = list.params(req.args, "cus")       -- or nil and a 400
--   if not page then return outcome end
--   local res, err = list.fetch(db, {
--     from = "customers", where = "partner_id = $1 AND mode = $2", args = { pid, mode },
--     columns = "id, name, created_at", url = "/v1/customers",
--   }, page, function(row) return { id = row.id, object = "customer", name = row.name } end)
--   return 200, res
--
-- Keyset pagination on a sortable id column (nuvion.api.ids: the id orders by creation time):
-- `id < after ORDER BY id DESC` for the next page, `id > before ORDER BY id ASC` (then reversed)
-- for the previous one, always LIMIT limit + 1 so that the extra row tells has_more. No OFFSET:
-- a page costs the same wherever it is. The id column must be `text COLLATE "C"` with an index
-- that starts with the columns of `where` and ends with the id.
-- has_more says whether there are more objects in the direction of the page: older ones after
-- a starting_after (or first) page, newer ones before an ending_before page.
local json = require "nuvion.json"
local ids = require "nuvion.api.ids"
local errors = require "nuvion.api.errors"

local type, error, tonumber, tostring, ipairs, unpack = type, error, tonumber, tostring, ipairs, unpack
local find, format, concat, setmetatable = string.find, string.format, table.concat, setmetatable
local array_mt = json.array_mt

local _M = {}

_M.LIMIT_MIN = 1
_M.LIMIT_MAX = 100
_M.LIMIT_DEFAULT = 10

_M.ERR_LIMIT = "limit must be an integer from 1 to 100."
_M.ERR_BOTH = "Give starting_after or ending_before, not both."

local function one(v)            -- a repeated query parameter is a list: take none of them
  if type(v) == "table" then return false end
  return v
end

-- The page a query string asks for: { limit, starting_after, ending_before }, or nil and a 400
-- outcome. prefix: the ids' prefix (cursors of another prefix are refused).
function _M.params(args, prefix)
  args = args or {}
  local page = { limit = _M.LIMIT_DEFAULT }
  local limit = one(args.limit)
  if limit ~= nil then
    local n = limit and find(limit, "^%d+$") and #limit <= 4 and tonumber(limit)
    if not n or n < _M.LIMIT_MIN or n > _M.LIMIT_MAX then
      return nil, errors.invalid("parameter_invalid", _M.ERR_LIMIT, "limit")
    end
    page.limit = n
  end
  for _, name in ipairs({ "starting_after", "ending_before" }) do
    local v = one(args[name])
    if v ~= nil then
      if not v or not ids.valid(v, prefix) then
        return nil, errors.invalid("parameter_invalid",
          format("%s must be an id starting with %s_.", name, prefix or "a prefix"), name)
      end
      page[name] = v
    end
  end
  if page.starting_after and page.ending_before then
    return nil, errors.invalid("parameter_invalid", _M.ERR_BOTH, "ending_before")
  end
  return page
end

local function ident(s, what)
  if type(s) ~= "string" or not find(s, "^[%a_][%w_%.]*$") then
    error(what .. " must be an SQL identifier, got " .. tostring(s), 3)
  end
  return s
end

-- The SQL and parameters of a page. q: from (table), where (SQL with $1.. for q.args, or nil),
-- args, columns (default "*"), id_column (default "id").
function _M.sql(q, page)
  local from = ident(q.from, "from")
  local idc = ident(q.id_column or "id", "id_column")
  local columns = q.columns or "*"
  local params = {}
  for i, v in ipairs(q.args or {}) do params[i] = v end
  local n = #params
  if (q.args and q.args.n) and q.args.n ~= n then error("list args must not hold nil (use pg.null)", 2) end
  local conds = {}
  if q.where then conds[#conds + 1] = "(" .. q.where .. ")" end
  local order = "DESC"
  if page.starting_after then
    params[n + 1] = page.starting_after
    conds[#conds + 1] = format("%s < $%d", idc, n + 1)
  elseif page.ending_before then
    params[n + 1] = page.ending_before
    conds[#conds + 1] = format("%s > $%d", idc, n + 1)
    order = "ASC"
  end
  params[#params + 1] = page.limit + 1
  local sql = format("SELECT %s FROM %s%s ORDER BY %s %s LIMIT $%d", columns, from,
                     #conds > 0 and (" WHERE " .. concat(conds, " AND ")) or "", idc, order,
                     #params)
  return sql, params
end

-- Runs the page's query on db (a pool or a tx) and returns the list object, or nil, err.
-- map(row) turns a row into the object to answer (default: the row's columns as they are).
function _M.fetch(db, q, page, map)
  local sql, params = _M.sql(q, page)
  params.n = #params
  local rows, err = db:query({ sql, unpack(params, 1, params.n) })
  if not rows then return nil, err end
  local has_more = #rows > page.limit
  local count = has_more and page.limit or #rows
  local data = setmetatable({}, array_mt)
  if page.ending_before then -- fetched oldest first: the page is its first `count`, reversed
    for i = 1, count do data[i] = map and map(rows[count + 1 - i]) or rows[count + 1 - i] end
  else
    for i = 1, count do data[i] = map and map(rows[i]) or rows[i] end
  end
  return { object = "list", data = data, has_more = has_more, url = q.url }
end

return _M
