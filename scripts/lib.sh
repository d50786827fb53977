# lib.sh -- shell helpers shared by scripts/ and bench/ (sourced, not run).

# A loopback port nothing listens on (a refused connect says so), on stdout.
free_port() {
    local port i
    for ((i = 0; i < 500; i++)); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}
