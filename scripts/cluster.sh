#!/usr/bin/env bash
# Manages a local Muster cluster (1, 3 or 5 musterd processes on 127.0.0.1) in the background.
# Run `scripts/cluster.sh --help` for usage. No Docker needed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly DEFAULT_PORTS=(2379 22379 32379 42379 52379)
readonly PEER_OFFSET=1
readonly HTTP_OFFSET=2
readonly TOKEN_FILE_NAME="peer-token"
readonly STATE_FILE_NAME="cluster.conf"

usage() {
    cat <<EOF
Usage: scripts/cluster.sh COMMAND [OPTIONS]

Manage a local Muster cluster: 1, 3 or 5 musterd processes on 127.0.0.1, in the background.

Commands:
  start      Build musterd and the muster CLI (cargo profile `local`) if missing or stale,
             start every node not already running, and wait until all nodes agree on a
             leader. Prints the leader, then the client endpoints. Exits non-zero, printing the node's log tail, if a node fails.
  stop       Stop the nodes this script started (found by pid file; a pid is signalled only
             if it is a musterd serving this data dir), wait for them to exit (SIGKILL after
             the timeout) and remove the pid files. Data is kept.
  status     Show each node's pid, its /health JSON and the leader. Exits 0 only if every
             node is running and they agree on a leader.
  restart    stop, then start.

Options:
  --data-dir DIR   Cluster directory (env MUSTER_DATA_DIR; default <repo>/.data/cluster).
                   Holds nodeN/ (data), nodeN.log, nodeN.pid and ${STATE_FILE_NAME}.
  --nodes N        Number of nodes: 1, 3 or 5 (default 3, or the number of --ports given).
  --ports P1,P2,.. Client (gRPC) ports, one per node (env MUSTER_PORTS; default
                   2379,22379,32379,42379,52379 truncated to N). Node i's peer port
                   (Raft, authenticated with DIR/${TOKEN_FILE_NAME}, created on first start)
                   is its client port + ${PEER_OFFSET}; its HTTP port (/health, /ready,
                   /metrics) is its client port + ${HTTP_OFFSET}.
  --timeout SECS   How long start waits for a leader and stop waits for exit (default 30).
  --tls            With start: TLS on the client and peer ports (the same ports), client
                   certificates required, mutual TLS between peers. A throw-away CA and
                   certificates are generated into DIR/tls/ (ca.crt, client.crt, client.key);
                   the cluster stays TLS on later starts.
  --wipe           With stop: also delete the cluster's data, logs and pid files.
  -h, --help       Show this help.

Once a cluster has data, start/status/stop reuse the node count and ports it was created
with (saved in DIR/${STATE_FILE_NAME}); asking for different ones is an error (stop --wipe first).

Environment:
  MUSTER_BIN       Use this musterd binary instead of building target/local/musterd.
  MUSTER_LOG       Log filter passed to every node (e.g. debug,openraft=info).

Output: progress goes to stderr; start prints only the endpoints line on stdout, so
  ENDPOINTS=\$(scripts/cluster.sh start)   works.

Examples:
  scripts/cluster.sh start && ETCDCTL_API=3 etcdctl put hello world
  scripts/cluster.sh start --nodes 1 --ports 12379 --data-dir /tmp/m1
  scripts/cluster.sh stop --wipe
EOF
}

say() { printf '%s\n' "$*" >&2; }
die() {
    printf 'cluster.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- options and cluster layout

COMMAND=""
DATA_DIR="${MUSTER_DATA_DIR:-$REPO_ROOT/.data/cluster}"
NODES_ARG=""
TLS_ARG=0
PORTS_ARG="${MUSTER_PORTS:-}"
TIMEOUT=30
WIPE=0

parse_args() {
    while (($# > 0)); do
        case "$1" in
            start | stop | status | restart)
                [[ -z "$COMMAND" ]] || die "only one command allowed (got '$COMMAND' and '$1')"
                COMMAND="$1"
                ;;
            --data-dir) DATA_DIR="$(need_value "$@")"; shift ;;
            --data-dir=*) DATA_DIR="${1#*=}" ;;
            --nodes) NODES_ARG="$(need_value "$@")"; shift ;;
            --nodes=*) NODES_ARG="${1#*=}" ;;
            --ports) PORTS_ARG="$(need_value "$@")"; shift ;;
            --ports=*) PORTS_ARG="${1#*=}" ;;
            --timeout) TIMEOUT="$(need_value "$@")"; shift ;;
            --timeout=*) TIMEOUT="${1#*=}" ;;
            --wipe) WIPE=1 ;;
            --tls) TLS_ARG=1 ;;
            -h | --help | help)
                usage
                exit 0
                ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
    [[ -n "$COMMAND" ]] || {
        usage >&2
        exit 2
    }
    [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds, got '$TIMEOUT'"
    [[ "$WIPE" == 0 || "$COMMAND" == stop ]] || die "--wipe only goes with stop"
    [[ "$TLS_ARG" == 0 || "$COMMAND" == start || "$COMMAND" == restart ]] || die "--tls only goes with start or restart"
    [[ -n "$DATA_DIR" ]] || die "--data-dir must not be empty"
    # Absolute and canonical: it is matched against the command lines of running nodes.
    if [[ "$COMMAND" == start || "$COMMAND" == restart ]]; then
        mkdir -p "$DATA_DIR" || die "cannot create data dir '$DATA_DIR'"
    fi
    if [[ -d "$DATA_DIR" ]]; then
        DATA_DIR="$(cd "$DATA_DIR" && pwd -P)"
    elif [[ "$DATA_DIR" != /* ]]; then
        DATA_DIR="$PWD/$DATA_DIR"
    fi
}

need_value() {
    [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"
    printf '%s' "$2"
}

NODES=0
PORTS=()
TLS=0

# Decides NODES and PORTS from flags/env, the saved cluster layout and the defaults.
resolve_layout() {
    local saved_nodes="" saved_ports="" state="$DATA_DIR/$STATE_FILE_NAME"
    if [[ -f "$state" ]]; then
        saved_nodes="$(sed -n 's/^nodes=//p' "$state")"
        saved_ports="$(sed -n 's/^ports=//p' "$state")"
        [[ "$(sed -n 's/^tls=//p' "$state")" == 1 ]] && TLS=1
    fi
    # A cluster started with --tls stays TLS (its members verify each other's certificates).
    [[ "$TLS_ARG" == 1 ]] && TLS=1

    local ports_csv="$PORTS_ARG"
    if [[ -z "$ports_csv" && (-z "$NODES_ARG" || "$NODES_ARG" == "$saved_nodes") ]]; then
        ports_csv="$saved_ports"
    fi
    if [[ -n "$ports_csv" ]]; then
        IFS=, read -r -a PORTS <<<"$ports_csv"
        NODES="${NODES_ARG:-${#PORTS[@]}}"
    else
        NODES="${NODES_ARG:-3}"
        [[ "$NODES" =~ ^[135]$ ]] || die "--nodes must be 1, 3 or 5, got '$NODES'"
        PORTS=("${DEFAULT_PORTS[@]:0:NODES}")
    fi

    [[ "$NODES" =~ ^[135]$ ]] || die "--nodes must be 1, 3 or 5, got '$NODES' (from --ports '$ports_csv'?)"
    ((${#PORTS[@]} == NODES)) ||
        die "--ports lists ${#PORTS[@]} port(s) but the cluster has $NODES node(s)"
    local p all=()
    for p in "${PORTS[@]}"; do
        if [[ ! "$p" =~ ^[1-9][0-9]*$ ]] || ((p > 65535 - HTTP_OFFSET)); then
            die "bad port '$p' in '$ports_csv' (want numbers, comma-separated, no spaces)"
        fi
        all+=("$p" "$((p + PEER_OFFSET))" "$((p + HTTP_OFFSET))")
    done
    local dup
    dup="$(printf '%s\n' "${all[@]}" | sort | uniq -d | head -n1)"
    [[ -z "$dup" ]] || die "port $dup would be used twice (peer port = client port + $PEER_OFFSET, HTTP port = client port + $HTTP_OFFSET)"

    local joined
    joined="$(
        IFS=,
        echo "${PORTS[*]}"
    )"
    if [[ -n "$saved_ports" ]] && has_node_data &&
        [[ "$saved_ports" != "$joined" || "$saved_nodes" != "$NODES" ]]; then
        die "$DATA_DIR holds a cluster created with nodes=$saved_nodes ports=$saved_ports;" \
            "you asked for nodes=$NODES ports=$joined. Use the same layout, another --data-dir," \
            "or 'scripts/cluster.sh stop --wipe --data-dir $DATA_DIR' first."
    fi
}

has_node_data() { compgen -G "$DATA_DIR/node*/" >/dev/null; }
node_dir() { printf '%s/node%s' "$DATA_DIR" "$1"; }
pid_file() { printf '%s/node%s.pid' "$DATA_DIR" "$1"; }
log_file() { printf '%s/node%s.log' "$DATA_DIR" "$1"; }
client_port() { printf '%s' "${PORTS[$1 - 1]}"; }
peer_port() { printf '%s' "$((PORTS[$1 - 1] + PEER_OFFSET))"; }
http_port() { printf '%s' "$((PORTS[$1 - 1] + HTTP_OFFSET))"; }
endpoints() {
    local i out=()
    for ((i = 1; i <= NODES; i++)); do out+=("127.0.0.1:$(client_port "$i")"); done
    (
        IFS=,
        echo "${out[*]}"
    )
}

# ---------------------------------------------------------------- processes

# Prints a pid's arguments, one per line (argv[0] first).
proc_args() {
    if [[ -r "/proc/$1/cmdline" ]]; then
        tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null
    else
        ps -p "$1" -o command= 2>/dev/null | tr ' ' '\n'
    fi
}

# True if the pid is alive (a zombie counts as exited).
is_alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local state=""
    if [[ -r "/proc/$1/stat" ]]; then
        state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)" || true
    elif command -v ps >/dev/null; then
        state="$(ps -o stat= -p "$1" 2>/dev/null)" || true
    fi
    [[ "$state" != Z* ]]
}

# True if pid is a live musterd serving node $2 of this data dir (guards against pid reuse).
is_our_node() {
    local pid="$1" dir args=() k
    dir="$(node_dir "$2")"
    [[ "$pid" =~ ^[0-9]+$ ]] && is_alive "$pid" || return 1
    mapfile -t args < <(proc_args "$pid")
    ((${#args[@]} > 0)) && [[ "${args[0]##*/}" == musterd ]] || return 1
    for ((k = 1; k + 1 < ${#args[@]}; k++)); do
        [[ "${args[k]}" == --data-dir && "${args[k + 1]}" == "$dir" ]] && return 0
    done
    return 1
}

# Prints the pid of node $1 if it is running under our pid file, else nothing.
running_pid() {
    local f pid
    f="$(pid_file "$1")"
    [[ -f "$f" ]] || return 0
    pid="$(head -n1 "$f" 2>/dev/null || true)"
    if is_our_node "$pid" "$1"; then printf '%s' "$pid"; fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# ---------------------------------------------------------------- HTTP

# http_get PORT PATH: prints "CODE BODY" (CODE 000 if nothing answered).
http_get() {
    if [[ "${MUSTER_HTTP_CLIENT:-}" != devtcp ]] && command -v curl >/dev/null; then
        local out
        out="$(curl -sS -m 2 -w '\n%{http_code}' "http://127.0.0.1:$1$2" 2>/dev/null)" || true
        local code="${out##*$'\n'}" body="${out%$'\n'*}"
        [[ "$out" == *$'\n'* ]] || body=""
        printf '%s %s' "${code:-000}" "$body"
    else
        http_get_devtcp "$1" "$2" || printf '000 '
    fi
}

# Minimal HTTP/1.1 GET over bash's /dev/tcp, for machines without curl.
http_get_devtcp() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
    local line code body=""
    IFS= read -r -t 2 line <&3 || exit 1
    code="$(printf '%s' "$line" | cut -d' ' -f2)"
    while IFS= read -r -t 2 line <&3; do
        [[ -n "${line%$'\r'}" ]] || break
    done
    while IFS= read -r -t 2 line <&3 || [[ -n "$line" ]]; do
        body+="$line"
        line=""
    done
    printf '%s %s' "$code" "$body"
) 2>/dev/null

# json_field NAME JSON: prints a scalar field of a flat JSON object ("null" stays "null").
json_field() {
    sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"
}

# ---------------------------------------------------------------- build

MUSTERD=""

ensure_binary() {
    if [[ -n "${MUSTER_BIN:-}" ]]; then
        [[ -x "$MUSTER_BIN" ]] || die "MUSTER_BIN=$MUSTER_BIN is not an executable"
        MUSTERD="$(cd "$(dirname "$MUSTER_BIN")" && pwd -P)/$(basename "$MUSTER_BIN")"
        return
    fi
    local target_dir="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
    [[ "$target_dir" == /* ]] || target_dir="$REPO_ROOT/$target_dir"
    # The `local` profile (Cargo.toml): optimised, without the release profile's fat LTO, so
    # a cold build takes minutes less; benchmarks and the image use `release`.
    MUSTERD="$target_dir/local/musterd"
    local why=""
    if [[ ! -x "$MUSTERD" ]]; then
        why="not built yet"
    elif [[ -n "$(find "$REPO_ROOT/Cargo.toml" "$REPO_ROOT/Cargo.lock" "$REPO_ROOT/crates" \
        "$REPO_ROOT/proto" -newer "$MUSTERD" -print -quit 2>/dev/null)" ]]; then
        why="sources changed since the last build"
    fi
    if [[ -n "$why" ]]; then
        command -v cargo >/dev/null || die "cargo not found; install Rust from https://rustup.rs"
        command -v make >/dev/null ||
            die "make not found; musterd's allocator (jemalloc) is built with it: apt-get install make"
        say "==> building musterd and the muster CLI ($why): cargo build --profile local -p musterd -p muster-cli"
        (cd "$REPO_ROOT" && cargo build --profile local -p musterd -p muster-cli) >&2 ||
            die "cargo build failed"
        [[ -x "$MUSTERD" ]] || die "build finished but $MUSTERD is missing"
        touch "$MUSTERD" # cargo may skip relinking when only unrelated crates changed
    fi
}

# The cluster's peer secret: created once, readable by its owner only, shared by every node.
ensure_peer_token() {
    local f="$DATA_DIR/$TOKEN_FILE_NAME"
    [[ -s "$f" ]] && return 0
    mkdir -p "$DATA_DIR"
    (
        umask 077
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$f"
    )
    say "created the cluster's peer secret: $f"
}

# ---------------------------------------------------------------- commands

cmd_start() {
    resolve_layout
    local i pid started=() initial_cluster="" sep=""
    for ((i = 1; i <= NODES; i++)); do
        initial_cluster+="$sep$i=127.0.0.1:$(peer_port "$i")"
        sep=","
    done

    # Which nodes need starting, and are their ports free?
    local to_start=()
    for ((i = 1; i <= NODES; i++)); do
        pid="$(running_pid "$i")"
        if [[ -n "$pid" ]]; then
            say "node $i already running (pid $pid)"
            continue
        fi
        rm -f "$(pid_file "$i")"
        local p
        for p in "$(client_port "$i")" "$(peer_port "$i")" "$(http_port "$i")"; do
            port_in_use "$p" && die "port $p (node $i) is already in use by another process;" \
                "stop it or choose other ports with --ports"
        done
        to_start+=("$i")
    done

    if ((${#to_start[@]} > 0)); then
        ensure_binary
        ensure_peer_token
        printf 'nodes=%s\nports=%s\ntls=%s\n' "$NODES" "$(
            IFS=,
            echo "${PORTS[*]}"
        )" "$TLS" >"$DATA_DIR/$STATE_FILE_NAME"
        local tls_flags=()
        if [[ "$TLS" == 1 ]]; then
            local t="$DATA_DIR/tls"
            if [[ ! -f "$t/ca.crt" ]]; then
                "$MUSTERD" certs --dir "$t" >&2 || die "generating certificates in $t failed"
            fi
            tls_flags=(--cert-file "$t/node.crt" --key-file "$t/node.key"
                --trusted-ca-file "$t/ca.crt" --client-cert-auth
                --peer-cert-file "$t/node.crt" --peer-key-file "$t/node.key"
                --peer-trusted-ca-file "$t/ca.crt" --peer-client-cert-auth)
        fi
        for i in "${to_start[@]}"; do
            mkdir -p "$(node_dir "$i")"
            printf '\n==== %s: starting node %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$i" >>"$(log_file "$i")"
            NO_COLOR=1 nohup "$MUSTERD" \
                --node-id "$i" \
                --data-dir "$(node_dir "$i")" \
                --listen "127.0.0.1:$(client_port "$i")" \
                --advertise "127.0.0.1:$(client_port "$i")" \
                --peer-listen "127.0.0.1:$(peer_port "$i")" \
                --peer-token-file "$DATA_DIR/$TOKEN_FILE_NAME" \
                --http-listen "127.0.0.1:$(http_port "$i")" \
                --initial-cluster "$initial_cluster" \
                "${tls_flags[@]}" \
                </dev/null >>"$(log_file "$i")" 2>&1 &
            pid=$!
            disown "$pid" # a daemon, not a job: no "Killed" notices from this shell
            echo "$pid" >"$(pid_file "$i")"
            started+=("$i")
            say "started node $i: pid $pid, client 127.0.0.1:$(client_port "$i"), peer 127.0.0.1:$(peer_port "$i"), http 127.0.0.1:$(http_port "$i"), log $(log_file "$i")"
        done
    fi

    say "waiting up to ${TIMEOUT}s for a leader..."
    local deadline=$((SECONDS + TIMEOUT)) leader=""
    while :; do
        for i in "${started[@]}"; do
            # Our own child: is_alive suffices (and holds before nohup has exec'd musterd).
            if ! is_alive "$(head -n1 "$(pid_file "$i")")"; then
                say "node $i exited during start-up; last lines of $(log_file "$i"):"
                tail -n 25 "$(log_file "$i")" | sed 's/^/    /' >&2
                abort_start "${started[@]}"
            fi
        done
        leader="$(agreed_leader)" && break
        if ((SECONDS > deadline)); then
            say "no leader agreed on by all $NODES node(s) after ${TIMEOUT}s:"
            for ((i = 1; i <= NODES; i++)); do
                say "  node $i: $(http_get "$(http_port "$i")" /health)"
            done
            for i in "${started[@]}"; do
                say "last lines of $(log_file "$i"):"
                tail -n 15 "$(log_file "$i")" | sed 's/^/    /' >&2
            done
            abort_start "${started[@]}"
        fi
        sleep 0.2
    done

    local health
    health="$(http_get "$(http_port "$leader")" /health)"
    say "cluster is up: $NODES node(s), leader is node $leader (term $(json_field term "${health#* }"))"
    say "client endpoints (use as --endpoints):"
    endpoints
    say "  export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=$(endpoints)"
    if [[ "$TLS" == 1 ]]; then
        local t="$DATA_DIR/tls"
        say "TLS is on (client and peer ports, client certificates required):"
        say "  export ETCDCTL_CACERT=$t/ca.crt ETCDCTL_CERT=$t/client.crt ETCDCTL_KEY=$t/client.key"
        say "  export MUSTER_CACERT=$t/ca.crt MUSTER_CERT=$t/client.crt MUSTER_KEY=$t/client.key   # the muster CLI's"
    fi
    local cli
    cli="$(dirname "$MUSTERD")/muster"
    if [[ -x "$cli" ]]; then
        say "the muster CLI: $cli <kv|lease|registry|cluster> ... (--help for each), e.g."
        say "  export MUSTER_ENDPOINTS=$(endpoints)"
        say "  $cli kv put hello world && $cli cluster status"
    fi
    if ! command -v etcdctl >/dev/null; then
        say "etcdctl works too (not installed here): sudo apt-get install etcd-client"
    fi
}

# Prints the leader id if every node answers /health 200 with the same leader and has applied
# at least one entry; fails otherwise.
agreed_leader() {
    local i resp body leader="" l
    for ((i = 1; i <= NODES; i++)); do
        resp="$(http_get "$(http_port "$i")" /health)"
        [[ "${resp%% *}" == 200 ]] || return 1
        body="${resp#* }"
        l="$(json_field leader "$body")"
        [[ "$l" =~ ^[0-9]+$ && "$(json_field applied_index "$body")" != 0 ]] || return 1
        [[ -z "$leader" || "$leader" == "$l" ]] || return 1
        leader="$l"
    done
    printf '%s' "$leader"
}

# Stops the nodes this invocation started, then fails.
abort_start() {
    say "start failed; stopping the node(s) started just now: $*"
    stop_nodes "$@" || true
    die "cluster did not come up (logs kept in $DATA_DIR)"
}

# stop_nodes ID...: SIGTERM each verified node, wait, SIGKILL after the timeout.
stop_nodes() {
    local i pid pids=() ids=()
    for i in "$@"; do
        local f
        f="$(pid_file "$i")"
        [[ -f "$f" ]] || continue
        pid="$(head -n1 "$f" 2>/dev/null || true)"
        if is_our_node "$pid" "$i"; then
            say "stopping node $i (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            ids+=("$i")
        else
            if [[ "$pid" =~ ^[0-9]+$ ]] && is_alive "$pid"; then
                say "node $i: pid $pid is not musterd for $(node_dir "$i"); leaving it alone"
            else
                say "node $i: not running (stale pid file)"
            fi
            rm -f "$f"
        fi
    done

    ((${#ids[@]} == 0)) || say "waiting for node(s) ${ids[*]} to exit..."
    local deadline=$((SECONDS + TIMEOUT)) k alive failed=0
    while :; do
        alive=0
        for k in "${!pids[@]}"; do
            if is_alive "${pids[$k]}"; then alive=1; fi
        done
        ((alive)) || break
        if ((SECONDS > deadline)); then
            for k in "${!pids[@]}"; do
                if is_alive "${pids[$k]}"; then
                    say "node ${ids[$k]} (pid ${pids[$k]}) did not exit within ${TIMEOUT}s; sending SIGKILL"
                    kill -KILL "${pids[$k]}" 2>/dev/null || true
                fi
            done
            sleep 1
            for k in "${!pids[@]}"; do
                if is_alive "${pids[$k]}"; then
                    say "node ${ids[$k]} (pid ${pids[$k]}) survived SIGKILL"
                    failed=1
                fi
            done
            break
        fi
        sleep 0.1
    done
    for k in "${!ids[@]}"; do
        is_alive "${pids[$k]}" || rm -f "$(pid_file "${ids[$k]}")"
    done
    ((failed)) || ((${#ids[@]} == 0)) || say "stopped node(s) ${ids[*]}"
    return "$failed"
}

cmd_stop() {
    local ids=() f n
    for f in "$DATA_DIR"/node*.pid; do
        [[ -e "$f" ]] || continue
        n="${f##*/node}"
        n="${n%.pid}"
        [[ "$n" =~ ^[0-9]+$ ]] && ids+=("$n")
    done
    if ((${#ids[@]} == 0)); then
        say "no nodes running from $DATA_DIR (no pid files)"
    else
        stop_nodes "${ids[@]}" || die "some nodes could not be stopped"
    fi
    if ((WIPE)); then
        local i
        for f in "$DATA_DIR"/node*.pid; do
            [[ -e "$f" ]] && die "not wiping: $f remains"
        done
        for ((i = 1; i <= 9; i++)); do
            rm -rf "$(node_dir "$i")" "$(log_file "$i")"
        done
        rm -f "$DATA_DIR/$STATE_FILE_NAME" "$DATA_DIR/$TOKEN_FILE_NAME"
        rm -rf "$DATA_DIR/tls"
        rmdir "$DATA_DIR" 2>/dev/null || true
        say "wiped the cluster data in $DATA_DIR"
    fi
}

cmd_status() {
    resolve_layout
    local i pid resp code body l leader="" agree=1 up=1 state health
    printf '%-6s %-16s %-16s %-16s %s\n' NODE PROCESS CLIENT HTTP /health
    for ((i = 1; i <= NODES; i++)); do
        pid="$(running_pid "$i")"
        resp="$(http_get "$(http_port "$i")" /health)"
        code="${resp%% *}"
        body="${resp#* }"
        state="pid $pid"
        if [[ -z "$pid" ]]; then
            state="not running"
            up=0
        fi
        health="$code $body"
        [[ "$code" != 000 ]] || health="no answer"
        printf '%-6s %-16s %-16s %-16s %s\n' "$i" "$state" "127.0.0.1:$(client_port "$i")" \
            "127.0.0.1:$(http_port "$i")" "$health"
        l="$(json_field leader "$body")"
        if [[ "$code" != 200 || ! "$l" =~ ^[0-9]+$ ]]; then
            agree=0
        elif [[ -z "$leader" ]]; then
            leader="$l"
        elif [[ "$leader" != "$l" ]]; then
            agree=0
        fi
    done
    if [[ -n "$leader" ]] && ((agree && up)); then
        printf 'leader: node %s\nendpoints: %s\n' "$leader" "$(endpoints)"
        return 0
    elif [[ -n "$leader" ]]; then
        printf 'leader: node %s (not all nodes are up and agree; see above)\n' "$leader"
    else
        printf 'leader: none known\n'
    fi
    return 1
}

main() {
    parse_args "$@"
    case "$COMMAND" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        restart)
            cmd_stop
            cmd_start
            ;;
    esac
}

main "$@"
