-- nuvion.redis against real Redis servers: the shared test server
-- (NUVION_TEST_REDIS_URL, keys under a prefix of this run, deleted at the end)
-- and servers of its own for what would disturb others (restart, AUTH, TLS,
-- SCRIPT FLUSH, huge replies), started with nuvion.process and stopped by pid.
local redis = require "nuvion.redis"
local nuvion = require "nuvion"
local process = require "nuvion.process"
local helpers = require "spec.helpers"

local URL = os.getenv("NUVION_TEST_REDIS_URL")
local P = "spec30:" .. nuvion.random_hex(4) .. ":"

local function run(argv)
  local p = assert(process.spawn(argv, { output = "null" }))
  local how, code = p:wait(20000)
  assert(how == "exit" and code == 0, "command failed: " .. table.concat(argv, " "))
end

local port_open, free_port = helpers.port_open, helpers.free_port



-- A redis-server of this spec on `port` (a free one when nil); extra: more arguments.
local start_redis_on

local function start_redis(port, extra, tls)
  if port then return start_redis_on(port, extra, tls) end
  -- a port free when looked at can be taken before redis-server binds it (by another test run,
  -- or as the local port of a connection): then redis-server exits, and another port is tried
  for _ = 1, 5 do
    local srv = start_redis_on(free_port(), extra, tls, true)
    if srv then return srv end
  end
  error("redis-server did not start on 5 free ports")
end

function start_redis_on(port, extra, tls, may_fail)
  local argv = { "redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--maxmemory-policy", "noeviction" }
  if tls then
    argv[#argv + 1] = "--port"; argv[#argv + 1] = "0"
    argv[#argv + 1] = "--tls-port"; argv[#argv + 1] = tostring(port)
  else
    argv[#argv + 1] = "--port"; argv[#argv + 1] = tostring(port)
  end
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  local proc = assert(process.spawn(argv, { output = "null" }))
  local deadline = nuvion.monotonic_ms() + 10000
  while not port_open(port) do
    if may_fail and proc:wait(0) then return nil end -- exited: the port was taken
    assert(nuvion.monotonic_ms() < deadline, "redis-server did not start on " .. port)
    nuvion.sleep(20)
  end
  return { proc = proc, port = port, url = "redis://127.0.0.1:" .. port .. "/0" }
end

local function stop_redis(srv)
  if not srv or srv.proc.status then return end
  srv.proc:kill("KILL")
  srv.proc:wait(5000)
end

describe("nuvion.redis", function()
  local r

  lazy_setup(function()
    assert(URL, "NUVION_TEST_REDIS_URL is not set: run the specs with `make test` "
                .. "(or scripts/services.sh start DIR && . DIR/env)")
    local err
    r, err = redis.connect(URL)
    assert(r, err)
  end)

  lazy_teardown(function()
    if not r then return end
    local keys = r:call("KEYS", P .. "*")
    if keys and #keys > 0 then r:call("DEL", unpack(keys)) end
  end)

  describe("replies", function()
    it("maps every reply type to Lua", function()
      assert.equals("OK", r:call("SET", P .. "s", "v"))                 -- status
      assert.equals("v", r:call("GET", P .. "s"))                       -- bulk
      assert.is_nil(r:call("GET", P .. "missing"))                      -- nil
      assert.equals(1, r:call("EXISTS", P .. "s"))                      -- integer
      assert.equals("PONG", r:call("PING"))
      r:call("RPUSH", P .. "l", "a", "b", "c")
      assert.same({ "a", "b", "c" }, r:call("LRANGE", P .. "l", 0, -1)) -- array
      assert.same({}, r:call("LRANGE", P .. "nolist", 0, -1))           -- empty array
      local mget = r:call("MGET", P .. "s", P .. "missing")
      assert.equals(2, #mget)
      assert.equals(redis.null, mget[2])                               -- nil inside an array
      local nested = r:call("EVAL", "return {1, {2, 'x'}, redis.error_reply('BAD one')}", 0)
      assert.same({ 1, { 2, "x" }, { err = "BAD one" } }, nested)      -- nested, error inside
    end)

    it("returns nil and the Redis error text for an error reply", function()
      r:call("SET", P .. "str", "x")
      local res, err = r:call("LPUSH", P .. "str", "a")
      assert.is_nil(res)
      assert.matches("^WRONGTYPE", err)
      res, err = r:call("NOSUCHCOMMAND")
      assert.is_nil(res)
      assert.matches("^ERR unknown command", err)
    end)

    it("keeps integers exact to 2^53 and gives larger ones as strings of digits", function()
      assert.equals(2 ^ 53, r:call("INCRBY", P .. "i", 2 ^ 53))
      assert.equals("9007199254740993", r:call("INCR", P .. "i"))
      assert.equals("-9223372036854775807", r:call("DECRBY", P .. "j", "9223372036854775807"))
      -- numbers as arguments: integers print as integers, others with all their digits
      r:call("SET", P .. "f", 0.1)
      assert.equals("0.10000000000000001", r:call("GET", P .. "f"))
      r:call("SET", P .. "e", 1e15)
      assert.equals("1000000000000000", r:call("GET", P .. "e"))
    end)

    it("round-trips 1 MB values and binary values with NUL bytes", function()
      local big = string.rep("0123456789abcdef", 65536)
      assert.equals(1024 * 1024, #big)
      assert.equals("OK", r:call("SET", P .. "big", big))
      assert.equals(big, r:call("GET", P .. "big"))
      local bin = "a\0b\r\n\0\255\1" .. string.rep("\0", 100)
      r:call("SET", P .. "bin", bin)
      assert.equals(bin, r:call("GET", P .. "bin"))
      assert.equals(#bin, r:call("STRLEN", P .. "bin"))
      local res = r:pipeline({ { "SET", P .. "big2", big }, { "GET", P .. "big2" }, { "GET", P .. "bin" } })
      assert.equals(big, res[2])
      assert.equals(bin, res[3])
    end)

    it("raises on arguments that are not strings or numbers, and outside a task", function()
      assert.has_error(function() r:call("SET", P .. "x", true) end)
      assert.has_error(function() r:call("SET", P .. "x", {}) end)
      assert.has_error(function() r:call("SET", P .. "x", 0 / 0) end)
      assert.has_error(function() r:pipeline({ { "SET", P .. "x", math.huge } }) end)
      assert.has_error(function() r:call() end)
      assert.has_error(function() r:pipeline({}) end)
      assert.has_error(function() r:pipeline({ { "GET", P .. "x" }, "GET" }) end)
      -- commands that would change the state of the shared connection
      for _, cmd in ipairs({ "MULTI", "exec", "Watch", "SELECT", "SUBSCRIBE", "MONITOR", "QUIT" }) do
        assert.has_error(function() r:call(cmd, "x") end, nil, cmd)
      end
      assert.has_error(function() r:pipeline({ { "SELECT", 1 } }) end)
      -- blocking commands, which would hold up every task's command on the shared connection
      for _, cmd in ipairs({ { "BLPOP", "k", 1 }, { "bzpopmin", "k", 0 }, { "WAIT", 0, 0 },
                             { "XREAD", "COUNT", 1, "BLOCK", 10, "STREAMS", "k", "$" } }) do
        assert.has_error(function() r:call(unpack(cmd)) end, nil, cmd[1])
        assert.has_error(function() r:pipeline({ cmd }) end, nil, cmd[1])
      end
      assert.same({}, r:call("XREAD", "COUNT", 1, "STREAMS", P .. "nostream", "0") or {})
      assert.has_error(function() r:call(42) end)
      local co = coroutine.wrap(function() return pcall(r.call, r, "PING") end)
      local ok, err = co()
      assert.is_false(ok)
      assert.matches("nested coroutine", err, 1, true)
      assert.equals("PONG", r:call("PING")) -- the connection is still in step
    end)
  end)

  describe("pipelining", function()
    it("pipelines the commands of 200 concurrent tasks: exact count, fewer writes than commands", function()
      local before = r:stats()
      local results = {}
      local done = 0
      for i = 1, 200 do
        nuvion.spawn(function()
          results[i] = r:call("INCR", P .. "counter")
          done = done + 1
        end)
      end
      local deadline = nuvion.monotonic_ms() + 10000
      while done < 200 and nuvion.monotonic_ms() < deadline do nuvion.sleep(1) end
      assert.equals(200, done)
      assert.equals("200", r:call("GET", P .. "counter"))
      local seen = {}
      for i = 1, 200 do seen[results[i]] = true end
      for v = 1, 200 do assert.is_true(seen[v], "missing INCR result " .. v) end
      local after = r:stats()
      local commands = after.commands - before.commands
      local writes = after.writes - before.writes
      assert.is_true(commands >= 201)
      assert.is_true(writes * 4 < commands, ("%d writes for %d commands"):format(writes, commands))
    end)

    it("runs an explicit pipeline in one write, errors and nils in place", function()
      local before = r:stats()
      local res = r:pipeline({
        { "SET", P .. "pa", "1" }, { "INCR", P .. "pa" }, { "GET", P .. "pa" },
        { "GET", P .. "pnone" }, { "LPUSH", P .. "pa", "x" }, { "MULTI" }, { "INCR", P .. "pa" },
        { "EXEC" },
      })
      assert.equals(8, #res)
      assert.equals("OK", res[1])
      assert.equals(2, res[2])
      assert.equals("2", res[3])
      assert.equals(redis.null, res[4])
      assert.is_true(redis.is_error(res[5]))
      assert.matches("^WRONGTYPE", res[5].err)
      assert.equals("QUEUED", res[7])
      assert.same({ 3 }, res[8])
      assert.equals(1, r:stats().writes - before.writes)
    end)

    it("refuses commands beyond the pending bound", function()
      local big = {}
      for i = 1, redis.limits.pipeline_max do big[i] = { "PING" } end
      -- three tasks that start in the same turn of the loop: 3 x 10000 > 16384
      local out, done = {}, 0
      for i = 1, 3 do
        nuvion.spawn(function()
          out[i] = { r:pipeline(big) }
          done = done + 1
        end)
      end
      local deadline = nuvion.monotonic_ms() + 10000
      while done < 3 and nuvion.monotonic_ms() < deadline do nuvion.sleep(5) end
      local served, refused = 0, 0
      for i = 1, 3 do
        if out[i][1] then
          assert.equals(redis.limits.pipeline_max, #out[i][1])
          served = served + 1
        else
          assert.equals(redis.ERR_TOO_MANY_PENDING, out[i][2])
          refused = refused + 1
        end
      end
      assert.is_true(served >= 1 and refused >= 1)
      assert.equals("PONG", r:call("PING"))
    end)
  end)

  describe("scripts", function()
    it("caches the SHA-1, falls back to EVAL on NOSCRIPT after SCRIPT FLUSH", function()
      local srv = start_redis()
      local ok, err = pcall(function()
        local own = assert(redis.connect(srv.url))
        local src = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
        assert.equals(5, own:eval_script(src, { "k" }, { 5 }))
        assert.equals(1, own:call("SCRIPT", "EXISTS", redis.script(src).sha)[1])
        assert.equals("OK", own:call("SCRIPT", "FLUSH"))
        assert.equals(0, own:call("SCRIPT", "EXISTS", redis.script(src).sha)[1])
        assert.equals(12, own:eval_script(src, { "k" }, { 7 }))     -- NOSCRIPT, then EVAL
        assert.equals(1, own:call("SCRIPT", "EXISTS", redis.script(src).sha)[1])
        local script = redis.script(src)
        assert.equals(13, script:eval(own, { "k" }, { 1 }))
        assert.equals(string.lower(script.sha), script.sha)
        assert.equals("e0e1f9fabfc9d4800c877a703b823ac0578ff8db", redis.script("return 1").sha)
        local res, serr = own:eval_script("return redis.call('NOPE')", {}, {})
        assert.is_nil(res)
        assert.matches("Unknown Redis command", serr, 1, true)
        own:close()
      end)
      stop_redis(srv)
      assert(ok, err)
    end)
  end)

  describe("blocking commands", function()
    it("run on a connection of their own while other commands keep flowing", function()
      local got, t_done
      local t0 = nuvion.monotonic_ms()
      nuvion.spawn(function()
        got = r:blocking("BZPOPMIN", P .. "z", 5)
        t_done = nuvion.monotonic_ms()
      end)
      nuvion.sleep(20)
      for i = 1, 50 do assert.equals("OK", r:call("SET", P .. "flow" .. i, i)) end
      assert.is_nil(got)
      assert.is_true(nuvion.monotonic_ms() - t0 < 1000)
      assert.equals(1, r:stats().blocking_conns)
      r:call("ZADD", P .. "z", 7, "member")
      local deadline = nuvion.monotonic_ms() + 5000
      while not got and nuvion.monotonic_ms() < deadline do nuvion.sleep(2) end
      assert.same({ P .. "z", "member", "7" }, got)
      assert.is_true(t_done - t0 < 2000)
      assert.equals(1, r:stats().blocking_idle)
    end)

    it("return nil when their own timeout passes, and refuse non-blocking commands", function()
      local t0 = nuvion.monotonic_ms()
      assert.is_nil(r:blocking("BLPOP", P .. "empty", 0.2))
      assert.is_true(nuvion.monotonic_ms() - t0 >= 150)
      assert.is_nil(r:blocking("XREAD", "BLOCK", 100, "STREAMS", P .. "stream", "$"))
      assert.equals(0, r:blocking("WAIT", 0, 100)) -- no replica: 0 acknowledged
      assert.has_error(function() r:blocking("GET", P .. "x") end)
      assert.has_error(function() r:blocking("XREAD", "STREAMS", P .. "stream", "$") end)
    end)
  end)

  describe("timeouts and failures", function()
    it("times a command out, then the next command reconnects", function()
      local srv = start_redis()
      local ok, err = pcall(function()
        local short = assert(redis.connect(srv.url, { timeout_ms = 200 }))
        assert(srv.proc:kill("STOP")) -- Redis stops answering
        local t0 = nuvion.monotonic_ms()
        local res, terr = short:call("PING")
        local took = nuvion.monotonic_ms() - t0
        assert(srv.proc:kill("CONT"))
        assert.is_nil(res)
        assert.equals(redis.ERR_TIMEOUT, terr)
        assert.is_true(took >= 190 and took < 1500, "took " .. took)
        assert.equals("PONG", short:call("PING"))
        assert.equals("PONG", short:call_timeout(1000, "PING"))
        assert.is_true(short:stats().connects >= 2)
        short:close()
      end)
      stop_redis(srv)
      assert(ok, err)
    end)

    it("fails a command in flight when Redis dies, and reconnects after its restart", function()
      local srv = start_redis()
      local ok, err = pcall(function()
        local own = assert(redis.connect(srv.url))
        assert.equals("OK", own:call("SET", "k", "1"))
        local res, rerr, finished = false, nil, false
        nuvion.spawn(function()
          res, rerr = own:blocking("BLPOP", "list", 30)
          finished = true
        end)
        nuvion.sleep(50)
        srv.proc:kill("KILL")
        srv.proc:wait(5000)
        local deadline = nuvion.monotonic_ms() + 5000
        while not finished and nuvion.monotonic_ms() < deadline do nuvion.sleep(5) end
        assert.is_true(finished, "the command in flight hung")
        assert.is_nil(res)
        assert.equals(redis.ERR_CONNECTION_LOST, rerr)
        local down, derr = own:call("PING")
        assert.is_nil(down)
        assert.matches("^connect", derr)
        assert.matches("^connect", select(2, own:blocking("BLPOP", "list", 1)))
        srv = start_redis(srv.port)
        assert.equals("PONG", own:call("PING"))
        assert.is_true(own:stats().connects >= 2)
        own:close()
      end)
      stop_redis(srv)
      assert(ok, err)
    end)

    it("drops a reply larger than the bound with an error, not an OOM", function()
      local srv = start_redis()
      local ok, err = pcall(function()
        -- 64 MiB through ASan with LeakSanitizer on a busy machine can take longer than the
        -- default 5 s timeout: this case is about the size bound, not the time
        local own = assert(redis.connect(srv.url, { timeout_ms = 60000 }))
        own:call("SETRANGE", "huge", redis.limits.reply_bytes_max, "x")
        local res, herr = own:call("GET", "huge")
        assert.is_nil(res)
        assert.matches("reply exceeds", herr, 1, true)
        assert.equals(1, own:call("EXISTS", "huge"))
        own:close()
      end)
      stop_redis(srv)
      assert(ok, err)
    end)

    it("fails waiting commands with 'connection closed' on close, blocking ones too", function()
      local own = assert(redis.connect(URL, { timeout_ms = 0 }))
      local res, err = false, nil
      nuvion.spawn(function() res, err = own:blocking("BLPOP", P .. "never2", 5) end)
      nuvion.sleep(30)
      own:close()
      nuvion.sleep(5)
      assert.is_nil(res)
      assert.equals(redis.ERR_CONNECTION_CLOSED, err)
      assert.equals(0, own:stats().blocking_conns)
    end)

    it("resolves host names on the loop (evdns, /etc/hosts) and reports names that do not resolve", function()
      local port = URL:match(":(%d+)/")
      -- a name other than localhost that /etc/hosts gives 127.0.0.1 (the machine's own, usually)
      local name
      local f = io.open("/etc/hosts")
      if f then
        for line in f:lines() do
          local ip, names = line:match("^%s*(127%.0%.0%.1)%s+(.+)$")
          for n in (ip and names or ""):gmatch("%S+") do
            if n ~= "localhost" and not name and not n:find("^#") then name = n end
          end
        end
        f:close()
      end
      if name then
        local byname = assert(redis.connect("redis://" .. name .. ":" .. port .. "/0"))
        assert.equals("PONG", byname:call("PING"))
        byname:close()
      end
      local res, err = redis.connect("redis://no-such-host.invalid:" .. port .. "/0", { connect_timeout_ms = 3000 })
      assert.is_nil(res)
      assert.is_truthy(err:find("^connect: cannot resolve no%-such%-host%.invalid") or err == "connect timeout", err)
    end)

    it("survives a task that closes the connection while replies are handed out", function()
      local own = assert(redis.connect(URL, { timeout_ms = 4321 }))
      local results, received, done = {}, 0, 0
      for i = 1, 50 do
        nuvion.spawn(function()
          local v, err = own:call("PING")
          results[i] = v or err
          received = received + 1
          if received == 10 then own:close() end -- the tenth task woken closes it
          collectgarbage()
          done = done + 1
        end)
      end
      local deadline = nuvion.monotonic_ms() + 5000
      while done < 50 and nuvion.monotonic_ms() < deadline do nuvion.sleep(2) end
      assert.equals(50, done)
      local pongs, closed = 0, 0
      for i = 1, 50 do
        if results[i] == "PONG" then pongs = pongs + 1 end
        if results[i] == redis.ERR_CONNECTION_CLOSED then closed = closed + 1 end
      end
      assert.is_true(pongs >= 10)
      assert.equals(50, pongs + closed)
      assert.equals("PONG", own:call("PING")) -- a closed client reconnects when used again
      own:close()
    end)

    it("reports an unreachable server", function()
      local res, err = redis.connect("redis://127.0.0.1:" .. free_port() .. "/0")
      assert.is_nil(res)
      assert.matches("^connect: ", err)
    end)
  end)

  describe("connecting", function()
    it("authenticates with the URL's password, selects its database, never leaks the password", function()
      local srv = start_redis(nil, { "--requirepass", "s3cr3t-pw" })
      local ok, err = pcall(function()
        local url = "redis://:s3cr3t-pw@127.0.0.1:" .. srv.port .. "/3"
        local own = assert(redis.connect(url))
        assert.equals("OK", own:call("SET", "in3", "yes"))
        local db0 = assert(redis.connect("redis://default:s3cr3t-pw@127.0.0.1:" .. srv.port .. "/0"))
        assert.is_nil(db0:call("GET", "in3"))
        assert.equals("yes", own:call("GET", "in3"))
        db0:close()
        local bad, berr = redis.connect("redis://:wrong@127.0.0.1:" .. srv.port .. "/0")
        assert.is_nil(bad)
        assert.matches("WRONGPASS", berr, 1, true)
        assert.is_nil(berr:find("wrong@", 1, true))
        local none, nerr = redis.connect(srv.url)
        assert.is_nil(none)
        assert.matches("NOAUTH", nerr, 1, true)
        own:close()
      end)
      stop_redis(srv)
      assert(ok, err)
    end)

    it("parses URLs", function()
      local cfg = redis.parse_url("rediss://user:p%40ss@cache.example.com:6380/2?ca_file=/x/ca.pem")
      assert.same({ tls = true, username = "user", password = "p@ss", host = "cache.example.com",
                    port = 6380, db = 2, ca_file = "/x/ca.pem" }, cfg)
      cfg = redis.parse_url("redis://h:pw@[::1]:7000?ssl_cert_reqs=none")
      assert.same({ tls = false, password = "pw", host = "::1", port = 7000, verify = false }, cfg)
      assert.same({ tls = false, host = "localhost", port = 6379 }, redis.parse_url("redis://localhost"))
      assert.is_nil(redis.parse_url("http://x"))
      assert.is_nil(redis.parse_url("redis://x/notadb"))
      assert.has_error(function() redis.connect(nil) end)
    end)

    it("checks that Redis does not evict keys", function()
      assert.is_true(r:check_noeviction())
      local srv = start_redis(nil, { "--maxmemory-policy", "allkeys-lru" })
      local ok, err = pcall(function()
        local own = assert(redis.connect(srv.url))
        local res, eerr = own:check_noeviction()
        assert.is_nil(res)
        assert.matches("allkeys-lru", eerr, 1, true)
        own:close()
      end)
      stop_redis(srv)
      assert(ok, err)
    end)
  end)

  describe("TLS (rediss://)", function()
    local dir, srv

    lazy_setup(function()
      dir = "/tmp/nuvion-spec30-" .. nuvion.random_hex(6)
      run({ "mkdir", "-p", dir })
      local ext = assert(io.open(dir .. "/ext.cnf", "w"))
      ext:write("subjectAltName=DNS:localhost\n")
      ext:close()
      local ec = { "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes" }
      local function req(args)
        local argv = { "openssl", "req" }
        for _, a in ipairs(ec) do argv[#argv + 1] = a end
        for _, a in ipairs(args) do argv[#argv + 1] = a end
        run(argv)
      end
      req({ "-x509", "-days", "2", "-subj", "/CN=Spec CA", "-keyout", dir .. "/ca.key", "-out", dir .. "/ca.crt" })
      req({ "-x509", "-days", "2", "-subj", "/CN=Other CA", "-keyout", dir .. "/other.key",
            "-out", dir .. "/other.crt" })
      req({ "-subj", "/CN=localhost", "-keyout", dir .. "/server.key", "-out", dir .. "/server.csr" })
      run({ "openssl", "x509", "-req", "-in", dir .. "/server.csr", "-CA", dir .. "/ca.crt", "-CAkey",
            dir .. "/ca.key", "-CAcreateserial", "-days", "2", "-extfile", dir .. "/ext.cnf",
            "-out", dir .. "/server.crt" })
      srv = start_redis(nil, { "--tls-cert-file", dir .. "/server.crt", "--tls-key-file", dir .. "/server.key",
                               "--tls-ca-cert-file", dir .. "/ca.crt", "--tls-auth-clients", "no" }, true)
    end)

    lazy_teardown(function()
      stop_redis(srv)
      if dir then run({ "rm", "-rf", dir }) end
    end)

    it("connects with the CA file and verifies the server's name", function()
      local own, err = redis.connect("rediss://localhost:" .. srv.port .. "/0", { ca_file = dir .. "/ca.crt" })
      assert(own, err)
      assert.equals("OK", own:call("SET", "k", "over tls"))
      assert.equals("over tls", own:call("GET", "k"))
      local big = string.rep("t", 1024 * 1024)
      assert.equals("OK", own:call("SET", "big", big))
      assert.equals(big, own:call("GET", "big"))
      own:close()
      -- the CA file from the URL
      own = assert(redis.connect("rediss://localhost:" .. srv.port .. "/0?ca_file=" .. dir .. "/ca.crt"))
      assert.equals("PONG", own:call("PING"))
      own:close()
    end)

    it("fails with a verification error under the wrong CA", function()
      local own, err = redis.connect("rediss://localhost:" .. srv.port .. "/0", { ca_file = dir .. "/other.crt" })
      assert.is_nil(own)
      assert.matches("^tls: certificate verify failed", err)
    end)

    it("fails when the certificate does not name the host", function()
      local own, err = redis.connect("rediss://127.0.0.1:" .. srv.port .. "/0", { ca_file = dir .. "/ca.crt" })
      assert.is_nil(own)
      assert.matches("^tls: certificate verify failed: IP address mismatch", err)
      own, err = redis.connect("rediss://127.0.0.1:" .. srv.port .. "/0",
                               { ca_file = dir .. "/ca.crt", server_name = "cache.example.com" })
      assert.is_nil(own)
      assert.matches("^tls: certificate verify failed: hostname mismatch", err)
      -- the name the certificate carries, given for an address
      own, err = redis.connect("rediss://127.0.0.1:" .. srv.port .. "/0?server_name=localhost",
                               { ca_file = dir .. "/ca.crt" })
      assert(own, err)
      assert.equals("PONG", own:call("PING"))
      own:close()
    end)

    it("skips verification only when asked", function()
      local own, err = redis.connect("rediss://127.0.0.1:" .. srv.port .. "/0?ssl_cert_reqs=none",
                                     { ca_file = dir .. "/other.crt" })
      assert(own, err)
      assert.equals("PONG", own:call("PING"))
      own:close()
    end)

    it("refuses a missing CA file", function()
      local own, err = redis.connect("rediss://localhost:" .. srv.port .. "/0", { ca_file = dir .. "/nope.crt" })
      assert.is_nil(own)
      assert.matches("cannot load the CA file", err, 1, true)
    end)
  end)
  describe("in a served app", function()
    local dir

    lazy_setup(function()
      dir = "/tmp/nuvion-spec30-app-" .. nuvion.random_hex(6)
      run({ "mkdir", "-p", dir })
      local f = assert(io.open(dir .. "/init.lua", "w"))
      f:write([[
local router = require "nuvion.router"
local redis = require "nuvion.redis"
local r = assert(redis.connect(os.getenv("REDIS_URL")))
assert(r:check_noeviction())
local app = router.new()
app:get("/incr", function()
  local n, err = r:call("INCR", os.getenv("SPEC_KEY"))
  if not n then return 500, { err = err } end
  return 200, { n = n }
end)
app:get("/pop", function()
  local v, err = r:blocking("BLPOP", os.getenv("SPEC_KEY") .. ":list", 0.2)
  return 200, { v = v, err = err }
end)
return app
]])
      f:close()
    end)

    lazy_teardown(function()
      if dir then run({ "rm", "-rf", dir }) end
    end)

    it("serves requests from every worker through reloads, and closes its connections with the state", function()
      local key = P .. "served"
      local srv = helpers.start_server({ app = dir, workers = 2, env = { REDIS_URL = URL, SPEC_KEY = key,
                                                                          NUVION_ACCESS_LOG = "0" } })
      local ok, err = pcall(function()
        local total, failures = 0, 0
        for round = 1, 3 do
          local results = helpers.parallel(60, function(i)
            local res = helpers.request(srv.port, { path = i % 10 == 0 and "/pop" or "/incr" })
            return res and res.status
          end)
          for _, status in ipairs(results) do
            total = total + 1
            if status ~= 200 then failures = failures + 1 end
          end
          if round < 3 then srv:signal("HUP") end
        end
        assert.equals(0, failures)
        assert.equals(tostring(total - total / 10), r:call("GET", key))
        assert.is_truthy(srv:wait_log({ msg = "generation 3 serving" }, 10000, 2))
        -- the retired states closed, and their clients' connections with them (__gc)
        assert.is_truthy(srv:wait_log({ msg = "generation 2 closed" }, 10000, 2))
      end)
      local how, code = srv:stop()
      assert(ok, err)
      assert.equals("exit", how)
      assert.equals(0, code)
    end)
  end)
end)
