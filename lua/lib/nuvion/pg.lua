-- pg.lua -- Postgres for tasks: a pool per worker and database URL, parameterised queries,
-- transactions with retries, pipelines; every wait yields the task (host/pg.c, docs/pg.md).
--
--   local pg = require "nuvion.pg"
--   local db = pg.pool(os.getenv("DATABASE_URL"), { max = 10 })
--   local rows, err = db:query("SELECT id, amount FROM t WHERE id = $1", id)
--   if not rows then
--     if err.name == "unique_violation" then ... end
--     return nil, err
--   end
--   rows[1].amount; rows.affected; rows.columns   -- NULL columns are nil: columns gives the order
--
--   local ok, err = db:tx(function(tx)
--     local r, e = tx:query("UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, id)
--     if not r then return nil, e end          -- nil, err: ROLLBACK, returned as is
--     return true                              -- anything else: COMMIT, fn's values returned
--   end, { isolation = "serializable", retries = 3 })
--
--   local res, err = db:pipeline({ { "INSERT ...", a }, { "UPDATE ...", b } })  -- one round trip
--
-- The query calls use the Lua C API, not the FFI: they yield, and an FFI call cannot.
local c = require "nuvion.pg_c"
local json = require "nuvion.json"
local core = require "nuvion.core"

local type, select, setmetatable, getmetatable, tostring, pcall, error, unpack =
  type, select, setmetatable, getmetatable, tostring, pcall, error, unpack
local pairs, sort, concat, format, floor, random, min = pairs, table.sort, table.concat, string.format,
  math.floor, math.random, math.min
local c_query, c_run, c_take, c_pool_error, c_txstatus, c_release =
  c.query, c.run, c.take, c.pool_error, c.txstatus, c.release
local sleep = core.sleep

local PIPELINE, SYNC_EACH = c.PIPELINE, c.SYNC_EACH
local BACKOFF_BASE_MS = 5
local BACKOFF_MAX_MS = 200 -- NV_PG_RETRY_BACKOFF_MS_MAX
local RETRIES_MAX = 100

local ERR_TX_FINISHED = "pg: this transaction is finished; its handle cannot run queries"
local ERR_TX_NESTED = "pg: a transaction handle is not a pool: tx:tx() is not supported (no savepoints)"

local _M = {
  null = json.null, -- a NULL parameter that can sit in a table (nil cannot)
  int = json.int,   -- exact integers beyond 2^53 (int8, numeric(38,0))
  DEFER_MAX = 100,  -- statements a transaction may hold back at once (tx:defer)
}

-- SQLSTATE -> condition name, all of Postgres 15's errcodes.txt (a class code such as "23000"
-- is the fallback for a code not listed).
local NAMES = {
  ["00000"] = "successful_completion", ["01000"] = "warning", ["01003"] = "null_value_eliminated_in_set_function",
  ["01004"] = "string_data_right_truncation", ["01006"] = "privilege_not_revoked",
  ["01007"] = "privilege_not_granted", ["01008"] = "implicit_zero_bit_padding",
  ["0100C"] = "dynamic_result_sets_returned", ["01P01"] = "deprecated_feature", ["02000"] = "no_data",
  ["02001"] = "no_additional_dynamic_result_sets_returned", ["03000"] = "sql_statement_not_yet_complete",
  ["08000"] = "connection_exception", ["08001"] = "sqlclient_unable_to_establish_sqlconnection",
  ["08003"] = "connection_does_not_exist", ["08004"] = "sqlserver_rejected_establishment_of_sqlconnection",
  ["08006"] = "connection_failure", ["08007"] = "transaction_resolution_unknown", ["08P01"] = "protocol_violation",
  ["09000"] = "triggered_action_exception", ["0A000"] = "feature_not_supported",
  ["0B000"] = "invalid_transaction_initiation", ["0F000"] = "locator_exception",
  ["0F001"] = "invalid_locator_specification", ["0L000"] = "invalid_grantor", ["0LP01"] = "invalid_grant_operation",
  ["0P000"] = "invalid_role_specification", ["0Z000"] = "diagnostics_exception",
  ["0Z002"] = "stacked_diagnostics_accessed_without_active_handler", ["20000"] = "case_not_found",
  ["21000"] = "cardinality_violation", ["22000"] = "data_exception", ["22001"] = "string_data_right_truncation",
  ["22002"] = "null_value_no_indicator_parameter", ["22003"] = "numeric_value_out_of_range",
  ["22004"] = "null_value_not_allowed", ["22005"] = "error_in_assignment", ["22007"] = "invalid_datetime_format",
  ["22008"] = "datetime_field_overflow", ["22009"] = "invalid_time_zone_displacement_value",
  ["2200B"] = "escape_character_conflict", ["2200C"] = "invalid_use_of_escape_character",
  ["2200D"] = "invalid_escape_octet", ["2200F"] = "zero_length_character_string",
  ["2200G"] = "most_specific_type_mismatch", ["2200H"] = "sequence_generator_limit_exceeded",
  ["2200L"] = "not_an_xml_document", ["2200M"] = "invalid_xml_document", ["2200N"] = "invalid_xml_content",
  ["2200S"] = "invalid_xml_comment", ["2200T"] = "invalid_xml_processing_instruction",
  ["22010"] = "invalid_indicator_parameter_value", ["22011"] = "substring_error", ["22012"] = "division_by_zero",
  ["22013"] = "invalid_preceding_or_following_size", ["22014"] = "invalid_argument_for_ntile_function",
  ["22015"] = "interval_field_overflow", ["22016"] = "invalid_argument_for_nth_value_function",
  ["22018"] = "invalid_character_value_for_cast", ["22019"] = "invalid_escape_character",
  ["2201B"] = "invalid_regular_expression", ["2201E"] = "invalid_argument_for_logarithm",
  ["2201F"] = "invalid_argument_for_power_function", ["2201G"] = "invalid_argument_for_width_bucket_function",
  ["2201W"] = "invalid_row_count_in_limit_clause", ["2201X"] = "invalid_row_count_in_result_offset_clause",
  ["22021"] = "character_not_in_repertoire", ["22022"] = "indicator_overflow", ["22023"] = "invalid_parameter_value",
  ["22024"] = "unterminated_c_string", ["22025"] = "invalid_escape_sequence",
  ["22026"] = "string_data_length_mismatch", ["22027"] = "trim_error", ["2202E"] = "array_subscript_error",
  ["2202G"] = "invalid_tablesample_repeat", ["2202H"] = "invalid_tablesample_argument",
  ["22030"] = "duplicate_json_object_key_value", ["22031"] = "invalid_argument_for_sql_json_datetime_function",
  ["22032"] = "invalid_json_text", ["22033"] = "invalid_sql_json_subscript",
  ["22034"] = "more_than_one_sql_json_item", ["22035"] = "no_sql_json_item", ["22036"] = "non_numeric_sql_json_item",
  ["22037"] = "non_unique_keys_in_a_json_object", ["22038"] = "singleton_sql_json_item_required",
  ["22039"] = "sql_json_array_not_found", ["2203A"] = "sql_json_member_not_found",
  ["2203B"] = "sql_json_number_not_found", ["2203C"] = "sql_json_object_not_found",
  ["2203D"] = "too_many_json_array_elements", ["2203E"] = "too_many_json_object_members",
  ["2203F"] = "sql_json_scalar_required", ["2203G"] = "sql_json_item_cannot_be_cast_to_target_type",
  ["22P01"] = "floating_point_exception", ["22P02"] = "invalid_text_representation",
  ["22P03"] = "invalid_binary_representation", ["22P04"] = "bad_copy_file_format",
  ["22P05"] = "untranslatable_character", ["22P06"] = "nonstandard_use_of_escape_character",
  ["23000"] = "integrity_constraint_violation", ["23001"] = "restrict_violation", ["23502"] = "not_null_violation",
  ["23503"] = "foreign_key_violation", ["23505"] = "unique_violation", ["23514"] = "check_violation",
  ["23P01"] = "exclusion_violation", ["24000"] = "invalid_cursor_state", ["25000"] = "invalid_transaction_state",
  ["25001"] = "active_sql_transaction", ["25002"] = "branch_transaction_already_active",
  ["25003"] = "inappropriate_access_mode_for_branch_transaction",
  ["25004"] = "inappropriate_isolation_level_for_branch_transaction",
  ["25005"] = "no_active_sql_transaction_for_branch_transaction", ["25006"] = "read_only_sql_transaction",
  ["25007"] = "schema_and_data_statement_mixing_not_supported",
  ["25008"] = "held_cursor_requires_same_isolation_level", ["25P01"] = "no_active_sql_transaction",
  ["25P02"] = "in_failed_sql_transaction", ["25P03"] = "idle_in_transaction_session_timeout",
  ["26000"] = "invalid_sql_statement_name", ["27000"] = "triggered_data_change_violation",
  ["28000"] = "invalid_authorization_specification", ["28P01"] = "invalid_password",
  ["2B000"] = "dependent_privilege_descriptors_still_exist", ["2BP01"] = "dependent_objects_still_exist",
  ["2D000"] = "invalid_transaction_termination", ["2F000"] = "sql_routine_exception",
  ["2F002"] = "modifying_sql_data_not_permitted", ["2F003"] = "prohibited_sql_statement_attempted",
  ["2F004"] = "reading_sql_data_not_permitted", ["2F005"] = "function_executed_no_return_statement",
  ["34000"] = "invalid_cursor_name", ["38000"] = "external_routine_exception",
  ["38001"] = "containing_sql_not_permitted", ["38002"] = "modifying_sql_data_not_permitted",
  ["38003"] = "prohibited_sql_statement_attempted", ["38004"] = "reading_sql_data_not_permitted",
  ["39000"] = "external_routine_invocation_exception", ["39001"] = "invalid_sqlstate_returned",
  ["39004"] = "null_value_not_allowed", ["39P01"] = "trigger_protocol_violated", ["39P02"] = "srf_protocol_violated",
  ["39P03"] = "event_trigger_protocol_violated", ["3B000"] = "savepoint_exception",
  ["3B001"] = "invalid_savepoint_specification", ["3D000"] = "invalid_catalog_name",
  ["3F000"] = "invalid_schema_name", ["40000"] = "transaction_rollback", ["40001"] = "serialization_failure",
  ["40002"] = "transaction_integrity_constraint_violation", ["40003"] = "statement_completion_unknown",
  ["40P01"] = "deadlock_detected", ["42000"] = "syntax_error_or_access_rule_violation",
  ["42501"] = "insufficient_privilege", ["42601"] = "syntax_error", ["42602"] = "invalid_name",
  ["42611"] = "invalid_column_definition", ["42622"] = "name_too_long", ["42701"] = "duplicate_column",
  ["42702"] = "ambiguous_column", ["42703"] = "undefined_column", ["42704"] = "undefined_object",
  ["42710"] = "duplicate_object", ["42712"] = "duplicate_alias", ["42723"] = "duplicate_function",
  ["42725"] = "ambiguous_function", ["42803"] = "grouping_error", ["42804"] = "datatype_mismatch",
  ["42809"] = "wrong_object_type", ["42830"] = "invalid_foreign_key", ["42846"] = "cannot_coerce",
  ["42883"] = "undefined_function", ["428C9"] = "generated_always", ["42939"] = "reserved_name",
  ["42P01"] = "undefined_table", ["42P02"] = "undefined_parameter", ["42P03"] = "duplicate_cursor",
  ["42P04"] = "duplicate_database", ["42P05"] = "duplicate_prepared_statement", ["42P06"] = "duplicate_schema",
  ["42P07"] = "duplicate_table", ["42P08"] = "ambiguous_parameter", ["42P09"] = "ambiguous_alias",
  ["42P10"] = "invalid_column_reference", ["42P11"] = "invalid_cursor_definition",
  ["42P12"] = "invalid_database_definition", ["42P13"] = "invalid_function_definition",
  ["42P14"] = "invalid_prepared_statement_definition", ["42P15"] = "invalid_schema_definition",
  ["42P16"] = "invalid_table_definition", ["42P17"] = "invalid_object_definition",
  ["42P18"] = "indeterminate_datatype", ["42P19"] = "invalid_recursion", ["42P20"] = "windowing_error",
  ["42P21"] = "collation_mismatch", ["42P22"] = "indeterminate_collation", ["44000"] = "with_check_option_violation",
  ["53000"] = "insufficient_resources", ["53100"] = "disk_full", ["53200"] = "out_of_memory",
  ["53300"] = "too_many_connections", ["53400"] = "configuration_limit_exceeded",
  ["54000"] = "program_limit_exceeded", ["54001"] = "statement_too_complex", ["54011"] = "too_many_columns",
  ["54023"] = "too_many_arguments", ["55000"] = "object_not_in_prerequisite_state", ["55006"] = "object_in_use",
  ["55P02"] = "cant_change_runtime_param", ["55P03"] = "lock_not_available",
  ["55P04"] = "unsafe_new_enum_value_usage", ["57000"] = "operator_intervention", ["57014"] = "query_canceled",
  ["57P01"] = "admin_shutdown", ["57P02"] = "crash_shutdown", ["57P03"] = "cannot_connect_now",
  ["57P04"] = "database_dropped", ["57P05"] = "idle_session_timeout", ["58000"] = "system_error",
  ["58030"] = "io_error", ["58P01"] = "undefined_file", ["58P02"] = "duplicate_file", ["72000"] = "snapshot_too_old",
  ["F0000"] = "config_file_error", ["F0001"] = "lock_file_exists", ["HV000"] = "fdw_error",
  ["HV001"] = "fdw_out_of_memory", ["HV002"] = "fdw_dynamic_parameter_value_needed",
  ["HV004"] = "fdw_invalid_data_type", ["HV005"] = "fdw_column_name_not_found",
  ["HV006"] = "fdw_invalid_data_type_descriptors", ["HV007"] = "fdw_invalid_column_name",
  ["HV008"] = "fdw_invalid_column_number", ["HV009"] = "fdw_invalid_use_of_null_pointer",
  ["HV00A"] = "fdw_invalid_string_format", ["HV00B"] = "fdw_invalid_handle", ["HV00C"] = "fdw_invalid_option_index",
  ["HV00D"] = "fdw_invalid_option_name", ["HV00J"] = "fdw_option_name_not_found", ["HV00K"] = "fdw_reply_handle",
  ["HV00L"] = "fdw_unable_to_create_execution", ["HV00M"] = "fdw_unable_to_create_reply",
  ["HV00N"] = "fdw_unable_to_establish_connection", ["HV00P"] = "fdw_no_schemas", ["HV00Q"] = "fdw_schema_not_found",
  ["HV00R"] = "fdw_table_not_found", ["HV010"] = "fdw_function_sequence_error", ["HV014"] = "fdw_too_many_handles",
  ["HV021"] = "fdw_inconsistent_descriptor_information", ["HV024"] = "fdw_invalid_attribute_value",
  ["HV090"] = "fdw_invalid_string_length_or_buffer_length", ["HV091"] = "fdw_invalid_descriptor_field_identifier",
  ["P0000"] = "plpgsql_error", ["P0001"] = "raise_exception", ["P0002"] = "no_data_found",
  ["P0003"] = "too_many_rows", ["P0004"] = "assert_failure", ["XX000"] = "internal_error",
  ["XX001"] = "data_corrupted", ["XX002"] = "index_corrupted",
}
_M.codes = NAMES

-- Retried by pool:tx when opts.retries allows.
local RETRYABLE = { ["40001"] = true, ["40P01"] = true }

local error_mt = {
  __name = "pg.error",
  __tostring = function(e)
    return format("%s%s: %s", e.name, e.code and (" (" .. e.code .. ")") or "", e.message or "")
  end,
}
_M.error_mt = error_mt

function _M.is_error(v)
  return getmetatable(v) == error_mt
end

-- Binary data as a parameter (bytea): sent as bytes, not text (a Lua string holding NUL
-- bytes cannot go as text).
local bytea_mt = { __name = "pg.bytea" }
function _M.bytea(s)
  if type(s) ~= "string" then error("pg.bytea: a string expected, got " .. type(s), 2) end
  return setmetatable({ s }, bytea_mt)
end

c.setup(json.encode, json.decode, json.int_mt, bytea_mt, error_mt, NAMES)

local Pool = {}
Pool.__index = Pool
local Tx = {}
Tx.__index = Tx

-- Pools of this state, by key; the C side shares one pool per key across generations.
local pools = setmetatable({}, { __mode = "v" })

local OPT_KEYS = { "max", "queue", "pool_timeout_ms", "connect_timeout_ms", "query_timeout_ms",
                   "statement_timeout_ms", "rows_max", "bytes_max", "prepare" }
local OPT_KNOWN = {}
for _, k in pairs(OPT_KEYS) do OPT_KNOWN[k] = true end

local function pool_key(url, opts)
  local parts = { url }
  for _, k in pairs(OPT_KEYS) do
    if opts[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(opts[k]) end
  end
  sort(parts, function(a, b) return a < b end)
  return concat(parts, "\n")
end

-- pg.pool(url, opts) -> pool. opts (all optional; defaults and bounds in host/nv_limits.h):
--   max, queue, pool_timeout_ms, connect_timeout_ms, query_timeout_ms (client side),
--   statement_timeout_ms (server side, set at connect), rows_max, bytes_max, prepare (true).
-- The same URL and options in this worker give the same pool.
function _M.pool(url, opts)
  if type(url) ~= "string" or url == "" then error("pg.pool: the database URL must be a string", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("pg.pool: opts must be a table", 2) end
  for k in pairs(opts) do
    if not OPT_KNOWN[k] then error("pg.pool: unknown option opts." .. tostring(k), 2) end
  end
  local key = pool_key(url, opts)
  local p = pools[key]
  if p then return p end
  p = setmetatable({ ud = c.pool(key, url, opts) }, Pool)
  pools[key] = p
  return p
end
_M.connect = _M.pool

-- ---- running statements ----

-- slot 0: any connection of the pool; else the held one (a transaction's).
local function finish(ud, slot, lease, release)
  if slot == 0 then return nil, c_pool_error(ud, lease) end
  return c_take(ud, slot, lease, release)
end

-- A statement table { sql, p1, ..., n = nparams, timeout_ms =, statement_timeout_ms = }.
local function run_stmt(ud, slot, lease, release, stmt)
  local st = stmt.statement_timeout_ms
  if st == nil then
    local s, l = c_run(ud, slot, lease, 0, stmt.timeout_ms, { stmt })
    return finish(ud, s, l, release)
  end
  if type(st) ~= "number" or st < 0 or st ~= floor(st) then
    error("pg: statement_timeout_ms must be a whole number of milliseconds", 3)
  end
  -- One round trip: a local setting, then the statement, in one implicit transaction (or,
  -- inside pool:tx, until the end of that transaction).
  local s, l = c_run(ud, slot, lease, PIPELINE, stmt.timeout_ms, {
    { "SELECT set_config('statement_timeout', $1, true)", tostring(st) }, stmt })
  local res, err = finish(ud, s, l, release)
  if not res then return nil, err end
  local r = res[2]
  if _M.is_error(r) then
    r.index = nil
    return nil, r
  end
  if err then return nil, err end
  return r
end

-- pool:query(sql, ...) -> rows | nil, err. Parameters: strings, numbers (integral ones exact),
-- booleans, nil/pg.null (NULL), json.int, pg.bytea(s), tables (as JSON text).
-- pool:query({ sql, p1, ..., n =, timeout_ms =, statement_timeout_ms = }) with options.
function Pool:query(sql, ...)
  local ud = self.ud
  if type(sql) == "table" then return run_stmt(ud, 0, 0, true, sql) end
  local slot, lease = c_query(ud, 0, 0, sql, ...)
  if slot == 0 then return nil, c_pool_error(ud, lease) end
  return c_take(ud, slot, lease, true)
end

local function pipeline_flags(opts)
  if opts and opts.atomic == false then return PIPELINE + SYNC_EACH end
  return PIPELINE
end

-- pool:pipeline({ { sql, ... }, ... }, { atomic = true, timeout_ms = }) -> results, first_err
-- results[i]: rows, or the error object of statement i (err.index = i). atomic (default): one
-- Sync at the end, so all the statements are one implicit transaction: the first error rolls
-- back the ones before it and the ones after it are "pipeline_aborted". atomic = false: a Sync
-- after each, so each commits alone. nil, err when the pipeline could not run at all.
function Pool:pipeline(list, opts)
  local ud = self.ud
  local slot, lease = c_run(ud, 0, 0, pipeline_flags(opts), opts and opts.timeout_ms, list)
  if slot == 0 then return nil, c_pool_error(ud, lease) end
  return c_take(ud, slot, lease, true)
end

function Pool:stats()
  return c.stats(self.ud)
end

-- ---- transactions ----

local BEGIN = {
  ["read committed"] = "BEGIN ISOLATION LEVEL READ COMMITTED",
  ["repeatable read"] = "BEGIN ISOLATION LEVEL REPEATABLE READ",
  serializable = "BEGIN ISOLATION LEVEL SERIALIZABLE",
}

local function tx_check(tx)
  if tx.done then error(ERR_TX_FINISHED, 3) end
end

-- Sends the deferred statements (tx:defer) followed by `list` as one pipeline; the results of
-- `list`'s statements come back as results[1..#list] (the deferred ones are checked here: the
-- first error is the transaction's). Returns results, first_err | nil, err.
local function flush_deferred(tx, list)
  local d = tx.deferred
  tx.deferred = nil
  local nd = #d
  for i = 1, #list do d[nd + i] = list[i] end
  local s, l = c_run(tx.ud, tx.slot or 0, tx.lease or 0, PIPELINE, nil, d)
  if not tx.slot then -- the transaction's first round trip (its BEGIN is d[1]): it leases one
    if s == 0 then
      local perr = c_pool_error(tx.ud, l)
      if not tx.err then tx.err = perr end
      return nil, perr
    end
    tx.slot, tx.lease = s, l
  end
  local res, err = c_take(tx.ud, s, l, false)
  if err and not tx.err then tx.err = err end
  if not res then return nil, err end
  local out = {}
  for i = 1, #list do
    local r = res[nd + i]
    if _M.is_error(r) then r.index = i end
    out[i] = r
  end
  if err and err.index and err.index > nd then err.index = err.index - nd end
  return out, err
end

-- tx:defer({ sql, p1, ..., n = nparams }): a statement whose rows nobody reads (an audit row, an
-- outbox row), sent with the transaction's next statement, pipeline or COMMIT in one round trip.
-- It runs in the transaction, in the order deferred, before anything sent after it; if it fails,
-- that next statement fails with it (pipeline_aborted) and the transaction rolls back.
-- At most DEFER_MAX statements wait at once (more raises: a caller's bug).
function Tx:defer(stmt)
  tx_check(self)
  if type(stmt) ~= "table" or type(stmt[1]) ~= "string" then
    error("pg: tx:defer needs a statement table { sql, p1, ..., n = nparams }", 2)
  end
  if stmt.timeout_ms ~= nil or stmt.statement_timeout_ms ~= nil then
    error("pg: tx:defer takes no timeouts", 2)
  end
  local d = self.deferred
  if not d then
    d = {}
    self.deferred = d
  end
  local waiting = self.slot and #d or #d - 1 -- before the first round trip, d[1] is the BEGIN
  if waiting >= _M.DEFER_MAX then error("pg: more than " .. _M.DEFER_MAX .. " deferred statements", 2) end
  d[#d + 1] = stmt
  return true
end

-- tx:query(...) as pool:query, on the transaction's connection. The first error is kept: a
-- transaction whose statement failed is rolled back even if fn goes on.
function Tx:query(sql, ...)
  tx_check(self)
  local ud, slot, lease = self.ud, self.slot, self.lease
  local rows, err
  if self.deferred then
    local stmt = sql
    if type(sql) ~= "table" then
      stmt = { sql, ... }
      stmt.n = select("#", ...)
    elseif sql.timeout_ms ~= nil or sql.statement_timeout_ms ~= nil then
      local _, ferr = flush_deferred(self, {})
      if ferr then return nil, ferr end
      return self:query(sql)
    end
    local res, ferr = flush_deferred(self, { stmt })
    if ferr then        -- this statement's error, or a deferred one's (this one did not run)
      ferr.index = nil
      return nil, ferr
    end
    if not res then return nil, ferr end
    return res[1]
  end
  if type(sql) == "table" then
    rows, err = run_stmt(ud, slot, lease, false, sql)
  else
    local s, l = c_query(ud, slot, lease, sql, ...)
    rows, err = c_take(ud, s, l, false)
  end
  if not rows and not self.err then self.err = err end
  return rows, err
end

function Tx:pipeline(list, opts)
  tx_check(self)
  if self.deferred then
    if type(list) ~= "table" then error("pg: pipeline needs a list of statements", 2) end
    if opts and opts.atomic == false then
      local _, ferr = flush_deferred(self, {})
      if ferr then return nil, ferr end
    else
      return flush_deferred(self, list)
    end
  end
  local s, l = c_run(self.ud, self.slot, self.lease, pipeline_flags(opts), opts and opts.timeout_ms, list)
  local res, err = c_take(self.ud, s, l, false)
  if err and not self.err then self.err = err end
  return res, err
end

function Tx.tx()
  error(ERR_TX_NESTED, 2)
end

-- Ends the transaction with sql (COMMIT or ROLLBACK) and gives the connection back (a
-- transaction that never sent anything has none: nothing to end).
local function tx_end(tx, sql)
  tx.done = true
  if not tx.slot then return true end
  local ud, slot, lease = tx.ud, tx.slot, tx.lease
  local s, l = c_query(ud, slot, lease, sql)
  return c_take(ud, s, l, true)
end

local function retryable(err)
  return type(err) == "table" and getmetatable(err) == error_mt and RETRYABLE[err.code] == true
end

local function backoff(attempt)
  local ms = min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ^ attempt)
  sleep(floor(ms * (0.5 + random() / 2)))
end

-- The BEGIN waits as the first deferred statement: it goes with the transaction's first
-- statement (or its COMMIT), which leases the connection, so BEGIN costs no round trip.
local function tx_begin(self, sql)
  return setmetatable({ ud = self.ud, deferred = { { sql, n = 0 } } }, Tx)
end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- Runs fn once: "ok", values... | "fail", err (returned) | "raise", err (fn raised it)
local function tx_attempt(self, fn, begin_sql, attempt)
  local tx, berr = tx_begin(self, begin_sql)
  if not tx then return "fail", berr end
  local res = pack(pcall(fn, tx, attempt))
  if not res[1] then
    tx_end(tx, "ROLLBACK")
    return "raise", res[2]
  end
  if res[2] == nil and res[3] ~= nil then -- fn returned nil, err
    tx_end(tx, "ROLLBACK")
    return "fail", res[3]
  end
  if not tx.slot and tx.err then -- its first round trip found no connection
    tx.done = true
    return "fail", tx.err
  end
  if tx.slot and c_txstatus(tx.ud, tx.slot, tx.lease) == "inerror" then
    tx_end(tx, "ROLLBACK")
    return "fail", tx.err or setmetatable({ name = "in_failed_sql_transaction", code = "25P02",
      message = "a statement of the transaction failed: rolled back" }, error_mt)
  end
  if not tx.slot and #tx.deferred == 1 then -- nothing but its BEGIN: nothing to commit
    tx.done = true
    return "ok", unpack(res, 2, res.n)
  end
  if tx.deferred then
    -- the deferred statements and the COMMIT in one round trip; one of them failing aborts the
    -- COMMIT (pipeline_aborted) and the transaction is rolled back
    local out, cerr = flush_deferred(tx, { { "COMMIT", n = 0 } })
    if not out or cerr then
      tx_end(tx, "ROLLBACK")
      return "fail", cerr
    end
    tx.done = true
    c_release(tx.ud, tx.slot, tx.lease)
    return "ok", unpack(res, 2, res.n)
  end
  local ok, err = tx_end(tx, "COMMIT")
  if not ok then return "fail", err end
  return "ok", unpack(res, 2, res.n)
end

-- pool:tx(fn, opts) -> fn's values | nil, err. BEGIN, fn(tx, attempt), then COMMIT; ROLLBACK
-- when fn raises (re-raised), returns nil, err (returned), or one of its statements failed.
-- opts: isolation ("read committed" | "repeatable read" | "serializable"), retries (0): how
-- many times to run fn again after serialization_failure (40001) or deadlock_detected (40P01),
-- with a short random backoff. The connection goes back to the pool in every case.
function Pool:tx(fn, opts)
  if type(fn) ~= "function" then error("pg: pool:tx(fn [, opts]): fn must be a function", 2) end
  opts = opts or {}
  local begin_sql = "BEGIN"
  if opts.isolation then
    begin_sql = BEGIN[opts.isolation]
    if not begin_sql then error("pg: unknown isolation level " .. tostring(opts.isolation), 2) end
  end
  if opts.read_only then begin_sql = begin_sql .. " READ ONLY" end
  local retries = opts.retries or 0
  if type(retries) ~= "number" or retries < 0 or retries > RETRIES_MAX or retries ~= floor(retries) then
    error("pg: retries must be a whole number from 0 to " .. RETRIES_MAX, 2)
  end
  local attempt = 0
  while true do
    local out = pack(tx_attempt(self, fn, begin_sql, attempt))
    local how, err = out[1], out[2]
    if how == "ok" then return unpack(out, 2, out.n) end
    if attempt < retries and retryable(err) then
      backoff(attempt)
      attempt = attempt + 1
    elseif how == "raise" then
      error(err, 0)
    else
      return nil, err
    end
  end
end

return _M
