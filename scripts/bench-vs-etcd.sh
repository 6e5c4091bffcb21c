#!/usr/bin/env bash
# Side-by-side put benchmark: a 3-node etcd (Debian's etcd-server) and a 3-node Muster
# (scripts/cluster.sh) on loopback, driven by the same muster-bench through the etcd v3 API.
#
# Usage: scripts/bench-vs-etcd.sh [--count N] [--concurrency C]
# Installs etcd-server with apt when `etcd` is missing; builds muster-bench in release mode.
# Prints one result line per system; both clusters are stopped and wiped on exit.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COUNT=2000
CONCURRENCY=1
while (($# > 0)); do
    case "$1" in
        --count) COUNT="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        -h|--help) sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

if ! command -v etcd >/dev/null; then
    echo "==> installing etcd-server (apt)" >&2
    apt-get install -y -qq etcd-server >/dev/null
fi
echo "==> building muster-bench (release)" >&2
cargo build --release -q -p muster-bench -p muster-server --manifest-path "$REPO_ROOT/Cargo.toml"
BENCH="$REPO_ROOT/target/release/muster-bench"

work="$(mktemp -d)"
etcd_pids=()
cleanup() {
    for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    bash "$REPO_ROOT/scripts/cluster.sh" stop --wipe --data-dir "$work/muster" >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# etcd: clients on 16379/16479/16579, peers one port above.
initial=""
for i in 1 2 3; do
    c=$((16279 + i * 100))
    initial+="e$i=http://127.0.0.1:$((c + 1)),"
done
initial="${initial%,}"
for i in 1 2 3; do
    c=$((16279 + i * 100))
    etcd --name "e$i" --data-dir "$work/e$i" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$((c + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((c + 1))" \
        --initial-cluster "$initial" --initial-cluster-state new >"$work/e$i.log" 2>&1 &
    etcd_pids+=("$!")
done
echo "==> starting Muster" >&2
muster_eps="$(bash "$REPO_ROOT/scripts/cluster.sh" start --ports 15379,15479,15579 --data-dir "$work/muster")"
etcd_eps="127.0.0.1:16379,127.0.0.1:16479,127.0.0.1:16579"
echo "==> waiting for etcd" >&2
for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints="$etcd_eps" endpoint health >/dev/null 2>&1; then break; fi
    sleep 0.1
done

for sys in etcd muster; do
    if [[ $sys == etcd ]]; then eps="$etcd_eps"; else eps="$muster_eps"; fi
    if ((CONCURRENCY == 1)); then eps="${eps%%,*}"; fi
    printf '%-7s ' "$sys"
    "$BENCH" put --endpoints "$eps" --count "$COUNT" --concurrency "$CONCURRENCY" 2>/dev/null
done
