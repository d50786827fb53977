-- socket.lua -- non-blocking TCP client sockets for tasks: every call that
-- would block waits on the event loop (core.wait_fd) and yields the task.
--
--   local sock = socket.tcp()
--   assert(sock:connect("127.0.0.1", 8080))
--   sock:settimeout(2000)
--   sock:send("GET / HTTP/1.1\r\n\r\n")
--   local line = sock:receive("*l")      -- a line without CRLF
--   local body = sock:receive(128)       -- exactly 128 bytes
--   local rest = sock:receive("*a")      -- until the peer closes
--   sock:close()
--
-- Addresses are IPv4 literals: no DNS lookup may block the loop (a resolver
-- on the loop comes with the HTTP client).
local ffi = require "ffi"
local core = require "nuvion.core"

local C = ffi.C
local wait_fd = core.wait_fd
local setmetatable, tonumber, tostring, type = setmetatable, tonumber, tostring, type
local find, sub, bit, error = string.find, string.sub, bit, error

pcall(ffi.cdef, [[
  struct nv_sockaddr_in { uint16_t sin_family; uint16_t sin_port; uint32_t sin_addr; uint8_t zero[8]; };
  int socket(int domain, int type, int protocol);
  int connect(int fd, const void *addr, uint32_t len);
  int getsockopt(int fd, int level, int name, void *val, uint32_t *len);
  int setsockopt(int fd, int level, int name, const void *val, uint32_t len);
  int inet_pton(int af, const char *src, void *dst);
  intptr_t recv(int fd, void *buf, size_t len, int flags);
  intptr_t send(int fd, const void *buf, size_t len, int flags);
  int close(int fd);
  int shutdown(int fd, int how);
  char *strerror(int errnum);
]])

local AF_INET, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC = 2, 1, 2048, 524288
local SOL_SOCKET, SO_ERROR, IPPROTO_TCP, TCP_NODELAY = 1, 4, 6, 1
local EINTR, EAGAIN, EINPROGRESS = 4, 11, 115
local MSG_NOSIGNAL = 0x4000
local RECV_CHUNK = 65536
local DEFAULT_TIMEOUT_MS = 10000
local RECEIVE_MAX_BYTES = 64 * 1024 * 1024 -- "*a" and "*l" stop with an error past this

local recv_buf = ffi.new("uint8_t[?]", RECV_CHUNK)

local function errstr()
  return ffi.string(C.strerror(ffi.errno()))
end

local _M = {}
local Sock = {}
Sock.__index = Sock

function _M.tcp()
  return setmetatable({ fd = -1, timeout_ms = DEFAULT_TIMEOUT_MS, buf = "" }, Sock)
end

function Sock:settimeout(ms)
  self.timeout_ms = ms
end

function Sock:connect(host, port)
  local addr = ffi.new("struct nv_sockaddr_in")
  addr.sin_family = AF_INET
  addr.sin_port = bit.bor(bit.rshift(port, 8), bit.lshift(bit.band(port, 0xff), 8))
  if C.inet_pton(AF_INET, host, ffi.cast("void *", ffi.cast("uint8_t *", addr) + 4)) ~= 1 then
    return nil, "not an IPv4 address: " .. tostring(host)
  end
  local fd = C.socket(AF_INET, bit.bor(SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC), 0)
  if fd < 0 then return nil, errstr() end
  self.fd = fd
  local one = ffi.new("int[1]", 1)
  C.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4)
  if C.connect(fd, addr, ffi.sizeof(addr)) ~= 0 then
    if ffi.errno() ~= EINPROGRESS then
      local err = errstr()
      self:close()
      return nil, err
    end
    if not wait_fd(fd, "w", self.timeout_ms) then
      self:close()
      return nil, "timeout"
    end
    local soerr, len = ffi.new("int[1]"), ffi.new("uint32_t[1]", 4)
    C.getsockopt(fd, SOL_SOCKET, SO_ERROR, soerr, len)
    if soerr[0] ~= 0 then
      self:close()
      return nil, ffi.string(C.strerror(soerr[0]))
    end
  end
  return true
end

-- Sends all of data. Returns the byte count, or nil, err ("timeout", "closed", ...).
function Sock:send(data)
  if self.fd < 0 then return nil, "closed" end
  local sent, len = 0, #data
  local p = ffi.cast("const char *", data)
  while sent < len do
    local n = tonumber(C.send(self.fd, p + sent, len - sent, MSG_NOSIGNAL))
    if n >= 0 then
      sent = sent + n
    else
      local e = ffi.errno()
      if e == EAGAIN then
        if not wait_fd(self.fd, "w", self.timeout_ms) then return nil, "timeout", sent end
      elseif e ~= EINTR then
        return nil, errstr(), sent
      end
    end
  end
  return sent
end

-- Reads what the socket has (at least one byte). nil, err on timeout/close.
local function fill(self)
  while true do
    local n = tonumber(C.recv(self.fd, recv_buf, RECV_CHUNK, 0))
    if n > 0 then
      self.buf = self.buf .. ffi.string(recv_buf, n)
      return true
    elseif n == 0 then
      return nil, "closed"
    else
      local e = ffi.errno()
      if e == EAGAIN then
        if not wait_fd(self.fd, "r", self.timeout_ms) then return nil, "timeout" end
      elseif e ~= EINTR then
        return nil, errstr()
      end
    end
  end
end

-- receive(n): exactly n bytes; "*l": a line (CRLF or LF stripped); "*a": all
-- until the peer closes. On failure: nil, err, partial data.
function Sock:receive(pattern)
  if self.fd < 0 then return nil, "closed", "" end
  pattern = pattern or "*l"
  if type(pattern) == "number" then
    while #self.buf < pattern do
      local ok, err = fill(self)
      if not ok then return nil, err, self.buf end
    end
    local out = sub(self.buf, 1, pattern)
    self.buf = sub(self.buf, pattern + 1)
    return out
  elseif pattern == "*l" then
    while true do
      local nl = find(self.buf, "\n", 1, true)
      if nl then
        local line = sub(self.buf, 1, nl - 1)
        self.buf = sub(self.buf, nl + 1)
        if sub(line, -1) == "\r" then line = sub(line, 1, -2) end
        return line
      end
      if #self.buf > RECEIVE_MAX_BYTES then return nil, "line too long", self.buf end
      local ok, err = fill(self)
      if not ok then return nil, err, self.buf end
    end
  elseif pattern == "*a" then
    while true do
      local ok, err = fill(self)
      if not ok then
        if err == "closed" then
          local all = self.buf
          self.buf = ""
          return all
        end
        return nil, err, self.buf
      end
      if #self.buf > RECEIVE_MAX_BYTES then return nil, "too much data", self.buf end
    end
  end
  error("bad receive pattern: " .. tostring(pattern), 2)
end

-- Whatever is available now or soon (up to `max` bytes), for streaming reads.
function Sock:receiveany(max)
  if #self.buf == 0 then
    local ok, err = fill(self)
    if not ok then return nil, err end
  end
  local out = sub(self.buf, 1, max)
  self.buf = sub(self.buf, max + 1)
  return out
end

function Sock:shutdown_write()
  if self.fd >= 0 then C.shutdown(self.fd, 1) end
end

function Sock:close()
  if self.fd >= 0 then
    C.close(self.fd)
    self.fd = -1
  end
  return true
end

return _M
