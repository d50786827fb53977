# lib.sh -- shell helpers shared by scripts/ and bench/ (sourced, not run).

# A loopback port nothing listens on (a refused connect says so), on stdout. Below the kernel's
# ephemeral range: a port there may be the local end of an outgoing connection, which a refused
# connect does not show but which makes a server's bind fail.
free_port() {
    local port i lo=10000 hi
    hi=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) || hi=32768
    [ "${hi:-0}" -gt $((lo + 1000)) ] || hi=32768
    for ((i = 0; i < 500; i++)); do
        port=$((lo + RANDOM % (hi - lo)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}
