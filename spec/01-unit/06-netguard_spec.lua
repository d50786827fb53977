-- nuvion.netguard: the SSRF guard in front of customer-given URLs (docs/webhooks.md).
local netguard = require "nuvion.netguard"

describe("nuvion.netguard", function()
  it("names every blocked IPv4 range", function()
    local cases = {
      ["127.0.0.1"] = "loopback", ["127.255.255.254"] = "loopback",
      ["10.0.0.1"] = "private", ["10.255.255.255"] = "private",
      ["172.16.0.1"] = "private", ["172.31.255.255"] = "private",
      ["192.168.1.1"] = "private",
      ["100.64.0.1"] = "cgnat", ["100.127.255.255"] = "cgnat",
      ["169.254.169.254"] = "link_local",
      ["0.0.0.0"] = "unspecified", ["0.1.2.3"] = "this_network",
      ["224.0.0.1"] = "multicast", ["239.255.255.250"] = "multicast",
      ["255.255.255.255"] = "broadcast", ["240.0.0.1"] = "reserved",
      ["192.0.2.1"] = "documentation", ["198.18.0.1"] = "benchmarking",
    }
    for ip, range in pairs(cases) do assert.equals(range, netguard.classify(ip), ip) end
  end)

  it("names every blocked IPv6 range, IPv4 inside IPv6 included", function()
    local cases = {
      ["::1"] = "loopback", ["::"] = "unspecified",
      ["fe80::1"] = "link_local", ["FE80::abcd:1"] = "link_local", ["fe80::1%eth0"] = "link_local",
      ["fc00::1"] = "ula", ["fd12:3456:789a::1"] = "ula",
      ["ff02::1"] = "multicast", ["fec0::1"] = "site_local",
      ["::ffff:127.0.0.1"] = "loopback", ["::ffff:10.0.0.1"] = "private", ["::ffff:a9fe:a9fe"] = "link_local",
      ["::127.0.0.1"] = "loopback", ["64:ff9b::a00:1"] = "private", ["2002:c0a8:101::1"] = "private",
      ["2001:db8::1"] = "documentation", ["100::1"] = "discard", ["4000::1"] = "reserved",
    }
    for ip, range in pairs(cases) do assert.equals(range, netguard.classify(ip), ip) end
  end)

  it("lets public addresses through", function()
    for _, ip in ipairs({ "8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.1", "100.63.255.255",
                         "100.128.0.1", "169.253.1.1", "223.255.255.255", "2606:4700:4700::1111",
                         "2a00:1450:4001:81b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808" }) do
      assert.is_nil(netguard.classify(ip), ip)
    end
  end)

  it("refuses text that is not a strict address", function()
    for _, s in ipairs({ "1.2.3", "1.2.3.4.5", "256.1.1.1", "010.0.0.1", "0x7f.0.0.1", "2130706433",
                         "1::2::3", "1:2:3:4:5:6:7:8:9", "gggg::1", "", "example.com" }) do
      assert.equals("invalid", netguard.classify(s), s)
    end
  end)

  it("resolves the host and checks every address, not only the first", function()
    local function resolver(list) return function() return list end end
    local addr, err = netguard.check_host("hooks.example", { resolve = resolver({ "8.8.8.8", "10.1.1.1" }) })
    assert.is_nil(addr)
    assert.equals("ssrf_blocked", err.code)
    assert.equals("private", err.range)
    assert.equals("10.1.1.1", err.address)
    assert.equals("8.8.8.8", (netguard.check_host("hooks.example", { resolve = resolver({ "8.8.8.8", "1.1.1.1" }) })))
    addr, err = netguard.check_host("x.example", { resolve = function() return nil, "dns: nope" end })
    assert.is_nil(addr)
    assert.equals("dns_failed", err.code)
  end)

  it("resolves real names through the host's resolver (localhost is loopback)", function()
    local addr, err = netguard.check_url("http://localhost:8080/hook")
    assert.is_nil(addr)
    assert.equals("loopback", err.range)
    addr, err = netguard.check_url("http://[::1]:8080/hook")
    assert.is_nil(addr)
    assert.equals("loopback", err.range)
    addr, err = netguard.check_url("https://169.254.169.254/latest/meta-data")
    assert.is_nil(addr)
    assert.equals("link_local", err.range)
    assert.equals("8.8.8.8", (netguard.check_url("https://8.8.8.8/hook")))
  end)

  it("allows private ranges in test mode, never unspecified or multicast", function()
    assert.equals("127.0.0.1", (netguard.check_url("http://localhost:9/x", { allow_private = true })))
    assert.equals("10.0.0.1", (netguard.check_url("http://10.0.0.1/x", { allow_private = true })))
    local addr, err = netguard.check_url("http://0.0.0.0/x", { allow_private = true })
    assert.is_nil(addr)
    assert.equals("unspecified", err.range)
    addr, err = netguard.check_url("http://[ff02::1]/x", { allow_private = true })
    assert.is_nil(addr)
    assert.equals("multicast", err.range)
  end)

  it("refuses urls with credentials or another scheme", function()
    for _, url in ipairs({ "ftp://8.8.8.8/x", "http://user:pw@8.8.8.8/x", "gopher://a", "http:///x" }) do
      local addr, err = netguard.check_url(url)
      assert.is_nil(addr, url)
      assert.equals("invalid_url", err.code, url)
    end
  end)
end)
