#!/usr/bin/env bash
# Side-by-side benchmark: a 3-node etcd (Debian's etcd-server) and a 3-node Muster
# (scripts/cluster.sh) on loopback, one system at a time, every scenario driven by the same
# muster-bench through the etcd v3 API; then a markdown table with a Muster/etcd ratio per figure.
#
# Usage: scripts/bench-vs-etcd.sh [--quick] [--repeat N] [--out FILE] [--systems etcd,muster]
#                                 [--no-build]
#   --quick         small counts: a smoke run of about a minute (default: about 3 minutes)
#   --repeat N      run everything N times, the systems alternating (etcd, Muster, etcd, …), and
#                   report each figure's median over the N runs: on a shared machine single
#                   runs of either system vary by ±15% (default 1)
#   --out FILE      the table (default target/bench/bench-vs-etcd.md); the raw JSON and stderr
#                   log of every run go beside it, in FILE-without-.md-raw/<system>/<scenario>.*
#   --systems LIST  only these systems (default etcd,muster)
#   --no-build      use the release binaries already in target/release
# Installs etcd-server and protoc with apt when missing; builds musterd and muster-bench in
# release mode. Every cluster is stopped and its data wiped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO_ROOT/target/bench/bench-vs-etcd.md"
SYSTEMS="etcd,muster"
QUICK=0
REPEAT=1
BUILD=1
while (($# > 0)); do
    case "$1" in
        --quick) QUICK=1; shift ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --systems) SYSTEMS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-vs-etcd.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench-vs-etcd.sh: error: %s\n' "$*" >&2
    exit 1
}
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "--repeat needs a positive count, got '$REPEAT'"

# ---------------------------------------------------------------- parameters (both systems)

if ((QUICK)); then
    PUT1=300 PUT16=1000 PUT64=2000 GETS=2000 TXNS=1000 EVENTS=50 WATCHERS=100
    GRANTS=500 LEASES=1000 KA_ROUNDS=3 REGS=500 DISCOVERS=500
    FO_ROUNDS=1 FO_BEFORE=1000 FO_AFTER=1000
    MAX_SECS=30
else
    PUT1=2000 PUT16=10000 PUT64=20000 GETS=20000 TXNS=10000 EVENTS=200 WATCHERS=1000
    GRANTS=5000 LEASES=10000 KA_ROUNDS=10 REGS=5000 DISCOVERS=5000
    FO_ROUNDS=3 FO_BEFORE=2000 FO_AFTER=3000
    MAX_SECS=90
fi

# One line per scenario, in table order: name | description | systems | muster-bench args.
# {PIDS} and {DIRS} become the running system's node pids and data dirs (comma-separated).
SCENARIOS="
footprint-idle|memory and disk, idle after start|etcd,muster|footprint --label idle --pid {PIDS} --dir {DIRS}
put-c1|put, 1 client (to the leader)|etcd,muster|put --count $PUT1 --concurrency 1
put-c16|put, 16 clients|etcd,muster|put --count $PUT16 --concurrency 16
put-c64|put, 64 clients|etcd,muster|put --count $PUT64 --concurrency 64
range-lin|get, linearizable, 16 clients|etcd,muster|range --count $GETS --concurrency 16 --keys 1000
range-ser|get, serializable, 16 clients|etcd,muster|range --count $GETS --concurrency 16 --keys 1000 --serializable
txn-cas|txn compare-and-swap, 16 clients|etcd,muster|txn --count $TXNS --concurrency 16
watch-1|watch, 1 watcher, $EVENTS events|etcd,muster|watch-latency --watchers 1 --events $EVENTS
watch-n|watch, $WATCHERS watchers, $EVENTS events|etcd,muster|watch-latency --watchers $WATCHERS --events $EVENTS --pid {PIDS}
lease-grant|lease grant, 16 clients|etcd,muster|lease-grant --count $GRANTS --concurrency 16
keepalive|lease keep-alive, $LEASES leases, one stream|etcd,muster|keepalive --leases $LEASES --rounds $KA_ROUNDS
register-kv|registry, etcd pattern (lease + put, prefix get, revoke), 16 clients|etcd,muster|register-kv --count $REGS --concurrency 16 --discovers $DISCOVERS
register|registry, Muster's Register (persistent), 16 clients|muster|register --count $REGS --concurrency 16
footprint-load|memory and disk after the load above|etcd,muster|footprint --label after-load --pid {PIDS} --dir {DIRS}
failover|leader SIGKILL under 16 writers|etcd,muster|failover-external --writers 16 --before-ms $FO_BEFORE --after-ms $FO_AFTER --pid {PIDS}
"

# ---------------------------------------------------------------- prerequisites and build

apt_install() {
    say "installing $* (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null ||
        die "apt-get update failed (root needed)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
        die "apt-get install $* failed (root needed)"
}
if [[ ",$SYSTEMS," == *,etcd,* ]] && ! command -v etcd >/dev/null; then apt_install etcd-server; fi
# The etcd-client crate (a muster-bench dependency) runs protoc with the well-known types.
if ! command -v protoc >/dev/null || [[ ! -e /usr/include/google/protobuf/descriptor.proto ]]; then
    apt_install protobuf-compiler libprotobuf-dev
fi
if ((BUILD)); then
    say "building musterd and muster-bench (release)"
    cargo build --release -q -p musterd -p muster-bench --manifest-path "$REPO_ROOT/Cargo.toml"
fi
BENCH="$REPO_ROOT/target/release/muster-bench"
export MUSTER_BIN="$REPO_ROOT/target/release/musterd" # cluster.sh: use this build, no rebuild
[[ -x "$BENCH" && -x "$MUSTER_BIN" ]] || die "missing $BENCH or $MUSTER_BIN (run without --no-build)"

mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
RAW_DIR="${OUT%.md}-raw" # scenarios.tsv and <system>/<scenario>.{json,log}
rm -rf "$RAW_DIR"
mkdir -p "$RAW_DIR"
# Data on the same disk as the results (target/, not a tmpfs), so fsync costs what it costs.
WORK="$(mktemp -d "$(dirname "$OUT")/data.XXXXXX")"
ETCD_PIDS=()
cleanup() {
    local p
    for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${ETCD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -d "$WORK/muster" ]]; then
        bash "$REPO_ROOT/scripts/cluster.sh" stop --wipe --data-dir "$WORK/muster" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- the two clusters

ETCD_PORTS=(16379 16479 16579) # peers one port above
MUSTER_PORTS=(15379 15479 15579)
EPS="" PIDS="" DIRS=""

# start_etcd_node I: starts etcd node eI (1-based) in the background; sets ETCD_PIDS[I-1].
start_etcd_node() {
    local i="$1" c="${ETCD_PORTS[$1 - 1]}" initial="" k
    for k in 1 2 3; do initial+="e$k=http://127.0.0.1:$((ETCD_PORTS[k - 1] + 1)),"; done
    # etcd's defaults, spelled out: heartbeat 100 ms, election timeout 1000 ms (randomised by
    # etcd to [1 s, 2 s)). Muster runs its own defaults (heartbeat 100 ms, election 600-700 ms;
    # openraft's vote lease makes failover take about min + max, etcd's about 1-2 s). WAL fsync
    # stays on (etcd default). On a restart the data dir wins over the --initial-cluster flags.
    etcd --name "e$i" --data-dir "$WORK/etcd/e$i" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$((c + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((c + 1))" \
        --initial-cluster "${initial%,}" --initial-cluster-state new \
        --initial-cluster-token bench-vs-etcd \
        --heartbeat-interval 100 --election-timeout 1000 \
        --logger zap --log-level warn >>"$WORK/etcd/e$i.log" 2>&1 &
    ETCD_PIDS[i - 1]=$!
}

start_etcd() {
    local i c p
    for c in "${ETCD_PORTS[@]}"; do
        for p in "$c" "$((c + 1))"; do
            port_in_use "$p" && die "port $p is in use (etcd needs ${ETCD_PORTS[*]} and one above each)"
        done
    done
    mkdir -p "$WORK/etcd"
    for i in 1 2 3; do start_etcd_node "$i"; done
    EPS="127.0.0.1:${ETCD_PORTS[0]},127.0.0.1:${ETCD_PORTS[1]},127.0.0.1:${ETCD_PORTS[2]}"
    DIRS="$WORK/etcd/e1,$WORK/etcd/e2,$WORK/etcd/e3"
    PIDS="$(IFS=,; echo "${ETCD_PIDS[*]}")"
}

# Restarts the etcd node a failover run killed.
restart_etcd() {
    local i
    for i in "${!ETCD_PIDS[@]}"; do
        kill -0 "${ETCD_PIDS[i]}" 2>/dev/null && continue
        wait "${ETCD_PIDS[i]}" 2>/dev/null || true
        say "restarting etcd node e$((i + 1))"
        start_etcd_node "$((i + 1))"
    done
    PIDS="$(IFS=,; echo "${ETCD_PIDS[*]}")"
}

stop_etcd() {
    local p
    for p in "${ETCD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${ETCD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ETCD_PIDS=()
    # Each repetition starts from empty data dirs, as Muster's does.
    rm -rf "$WORK/etcd/e1" "$WORK/etcd/e2" "$WORK/etcd/e3"
}

# Starts the Muster nodes not running (all of them at first) and reads their pids.
start_muster() {
    local i pids=()
    # cluster.sh starts the nodes with production Raft timing (heartbeat 100 ms, election
    # 600–700 ms) and waits for a leader; it prints the endpoints (node 1, 2, 3) on stdout.
    EPS="$(bash "$REPO_ROOT/scripts/cluster.sh" start \
        --ports "$(IFS=,; echo "${MUSTER_PORTS[*]}")" --data-dir "$WORK/muster")"
    for i in 1 2 3; do pids+=("$(head -n1 "$WORK/muster/node$i.pid")"); done
    PIDS="$(IFS=,; echo "${pids[*]}")"
    DIRS="$WORK/muster/node1,$WORK/muster/node2,$WORK/muster/node3"
}

restart_muster() { start_muster; }

stop_muster() {
    bash "$REPO_ROOT/scripts/cluster.sh" stop --wipe --data-dir "$WORK/muster" >/dev/null 2>&1 || true
}

# Waits until a put through every endpoint succeeds (all nodes serve, a leader is elected).
wait_ready() {
    local deadline=$((SECONDS + 60)) i
    while :; do
        for i in "${!ETCD_PIDS[@]}"; do
            kill -0 "${ETCD_PIDS[i]}" 2>/dev/null && continue
            tail -n 5 "$WORK/etcd/e$((i + 1)).log" >&2
            die "etcd node e$((i + 1)) (pid ${ETCD_PIDS[i]}) exited during start-up"
        done
        if "$BENCH" --json --endpoints "$EPS" --max-secs 5 put --count 3 --concurrency 3 \
            2>/dev/null | grep -q '"count":3[,}]'; then
            return 0
        fi
        ((SECONDS < deadline)) || die "$1 did not serve puts on all of $EPS within 60s"
        sleep 0.5
    done
}

# ---------------------------------------------------------------- scenarios

: >"$RAW_DIR/scenarios.tsv"
while IFS='|' read -r name desc systems args; do
    [[ -n "$name" ]] || continue
    printf '%s\t%s\t%s\t%s\n' "$name" "$desc" "$systems" "$args" >>"$RAW_DIR/scenarios.tsv"
done <<<"$SCENARIOS"

# run_all SYSTEM REP: every scenario of SYSTEM against the running cluster ($EPS, $PIDS, $DIRS),
# repetition REP of REPEAT. A failover scenario runs FO_ROUNDS times, the killed node restarted
# after each round. Each run writes <name>.json, or <name>.r<k>.json when a scenario runs more
# than once in all (the table takes the median over the k).
run_all() {
    local sys="$1" rep="$2" dir="$RAW_DIR/$1" name desc systems args args_now rounds r k out argv
    mkdir -p "$dir"
    while IFS='|' read -r name desc systems args; do
        [[ -n "$name" && ",$systems," == *",$sys,"* ]] || continue
        rounds=1
        [[ "$args" != failover-external* ]] || rounds=$FO_ROUNDS
        for ((r = 1; r <= rounds; r++)); do
            out="$name"
            k=$(((rep - 1) * rounds + r))
            ((rounds * REPEAT == 1)) || out="$name.r$k"
            args_now="${args//\{PIDS\}/$PIDS}"
            read -r -a argv <<<"${args_now//\{DIRS\}/$DIRS}"
            say "$sys: $desc$( ((rounds * REPEAT == 1)) || echo ", run $k/$((rounds * REPEAT))") (muster-bench ${argv[*]})"
            # A failed run leaves no JSON (the table says "failed") and the rest still run.
            if "$BENCH" --json --leader-first --endpoints "$EPS" --max-secs "$MAX_SECS" \
                "${argv[@]}" >"$dir/$out.json.part" 2> >(tee "$dir/$out.log" >&2); then
                mv "$dir/$out.json.part" "$dir/$out.json"
            else
                rm -f "$dir/$out.json.part"
                say "$sys: $out FAILED (log: $dir/$out.log)"
            fi
            if [[ "$args" == failover-external* ]] && ((r < rounds)); then
                "restart_$sys"
                wait_ready "$sys"
            fi
        done
    done <<<"$SCENARIOS"
}

started=$SECONDS
for ((rep = 1; rep <= REPEAT; rep++)); do
    for sys in etcd muster; do
        [[ ",$SYSTEMS," == *",$sys,"* ]] || continue
        say "starting $sys (3 nodes)$( ((REPEAT == 1)) || echo ", repetition $rep/$REPEAT")"
        "start_$sys"
        wait_ready "$sys"
        say "$sys is up: endpoints $EPS, pids $PIDS"
        run_all "$sys" "$rep"
        say "stopping $sys"
        "stop_$sys"
    done
done

# ---------------------------------------------------------------- the table

{
    echo "# Muster vs etcd ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)); 3 nodes of each system and the bench client on it, loopback, one system at a time."
    echo "- etcd: $(etcd --version 2>/dev/null | head -n1 | sed 's/^etcd Version: //') (Debian etcd-server); etcd's default timing: heartbeat 100 ms, election timeout 1000 ms (randomised to 1–2 s); WAL fsync on (default); snapshot every 100,000 entries (default)."
    echo "- Muster: $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)'), release build, scripts/cluster.sh defaults: heartbeat 100 ms, election timeout 600–700 ms (openraft refuses votes for election_max after the last heartbeat, so failover takes about min + max); Raft log fsync before acknowledging (default); snapshot every 100,000 entries (5,000 kept behind it)."
    echo "- Clients: each its own HTTP/2 connection, spread round-robin over the nodes with the leader first (so 1 client talks to the leader); counts: $( ((QUICK)) && echo 'quick (smoke run, noisy)' || echo default); every run capped at ${MAX_SECS}s.$( ((REPEAT == 1)) || echo " Everything ran $REPEAT times, the systems alternating (a fresh cluster each time); each figure is the median of the $REPEAT runs (failover: of $((REPEAT * FO_ROUNDS)) rounds).")"
    echo
    "$BENCH" report --dir "$RAW_DIR"
} >"$OUT"
cat "$OUT"
say "done in $((SECONDS - started))s; table: $OUT; raw JSON and logs: $RAW_DIR/{etcd,muster}/"
