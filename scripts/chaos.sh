#!/usr/bin/env bash
# Docker chaos run: brings up the compose cluster (deploy/docker-compose.yml) under its own
# project, runs muster-chaos against it (workload + seeded nemesis + verification), tears it
# down, and prints the summary table. Exits non-zero if any anomaly was found.
# Run `scripts/chaos.sh --help` for usage.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly COMPOSE_FILE="$REPO_ROOT/deploy/docker-compose.yml"
readonly NODES=(1 2 3)

usage() {
    cat <<EOF
Usage: scripts/chaos.sh [--duration SECS] [--seed N] [OPTIONS] [-- MUSTER_CHAOS_ARGS...]

Start a fresh three-node compose cluster, run muster-chaos against it, 'down -v' it (always,
also on failure or Ctrl-C), print the summary.

While writers put unique keys, a CAS incrementer bumps a counter, a watcher follows the whole
prefix (resuming on another node when its stream breaks) and registrants keep lease-backed keys
alive, the nemesis repeatedly picks a fault from a seeded RNG — docker kill + start, docker
pause/unpause, or docker network disconnect/connect of the leader or a follower; or a membership
change: add a 4th node (MemberAdd as learner, 'docker run' of the image on the compose network
with --join, catch up, promote, hold, MemberRemove, delete), or replace a follower (MemberRemove,
delete its container and volume, add it back under a new id at the same address) — holds it,
heals it and waits for the cluster to converge. Afterwards the state of every node that is a
member at the end is read and checked: lost writes, replica divergence, counter
(acked <= final <= acked+unknown), watch gaps, duplicates and ordering, spurious and late lease
expiries, removed nodes that kept running, member lists that disagree. Every anomaly count must
be 0.

Options:
  --duration SECS  How long faults are injected (default 60; the run takes ~1 min longer).
  --seed N         Seed of the fault schedule (default: random, printed in the summary).
  --project NAME   Compose project name (default muster-chaos).
  --out DIR        Where to keep the summary (summary.txt, summary.json) and, on failure, the
                   node logs (default <repo>/target/chaos/<seed>-<time>).
  --no-build       Do not build; use the existing image and muster-chaos binary.
  --no-membership  Leave the membership faults out of the schedule.
  --keep           Leave the cluster up afterwards (remove it with 'down -v' yourself).
  -h, --help       Show this help.
  -- ARGS          Passed to muster-chaos as is (see: muster-chaos --help), e.g.
                   -- --writers 4 --lease-ttl 5 --hold-max 15s

Environment:
  MUSTER_IMAGE, MUSTER_PORT_<i>, MUSTER_HTTP_PORT_<i>: as for scripts/docker-smoke.sh.
  MUSTER_CHAOS_BIN: muster-chaos binary to use (default: built by scripts/build-image.sh).
EOF
}

say() { printf '%s\n' "$*" >&2; }
die() {
    printf 'chaos.sh: error: %s\n' "$*" >&2
    exit 1
}

DURATION=60
SEED=""
PROJECT=muster-chaos
OUT=""
BUILD=1
KEEP=0
MEMBERSHIP=1
EXTRA=()
while (($# > 0)); do
    case "$1" in
        --duration)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--duration needs a number of seconds"
            DURATION="$2"
            shift
            ;;
        --duration=*) DURATION="${1#*=}" ;;
        --seed)
            [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--seed needs a number"
            SEED="$2"
            shift
            ;;
        --seed=*) SEED="${1#*=}" ;;
        --project)
            [[ $# -ge 2 && -n "$2" ]] || die "--project needs a value"
            PROJECT="$2"
            shift
            ;;
        --out)
            [[ $# -ge 2 && -n "$2" ]] || die "--out needs a value"
            OUT="$2"
            shift
            ;;
        --no-build) BUILD=0 ;;
        --no-membership) MEMBERSHIP=0 ;;
        --keep) KEEP=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            EXTRA=("$@")
            break
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[[ "$DURATION" =~ ^[0-9]+$ ]] || die "--duration must be a number of seconds, got '$DURATION'"
[[ -z "$SEED" || "$SEED" =~ ^[0-9]+$ ]] || die "--seed must be a number, got '$SEED'"
[[ -n "$SEED" ]] || SEED=$(((RANDOM << 15 | RANDOM) % 1000000))
[[ -n "$OUT" ]] || OUT="$REPO_ROOT/target/chaos/$SEED-$(date +%Y%m%d-%H%M%S)"

COMPOSE=()
detect_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null && docker-compose version >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' works"
    fi
}
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
client_port() { local v="MUSTER_PORT_$1"; printf '%s' "${!v:-2379$1}"; }
http_port() { local v="MUSTER_HTTP_PORT_$1"; printf '%s' "${!v:-2381$1}"; }
csv() { local IFS=,; printf '%s' "$*"; }
# Nodes the nemesis started itself ('docker run', labelled with the project; see
# crates/muster-chaos/src/docker.rs). They sit on the compose network, so they go before 'down'.
run_nodes() { docker ps -aq --filter "label=muster-chaos.project=$PROJECT"; }
remove_run_nodes() {
    local ids=()
    mapfile -t ids < <(run_nodes 2>/dev/null)
    ((${#ids[@]} == 0)) || docker rm --force --volumes "${ids[@]}" >/dev/null 2>&1 ||
        say "warning: could not remove containers ${ids[*]}"
}

RC=1
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ((${#COMPOSE[@]} > 0)) || exit "$rc"
    if ((RC != 0)) && [[ -d "$OUT" ]]; then
        compose ps >"$OUT/containers.txt" 2>&1 || true
        compose logs --no-color --timestamps >"$OUT/nodes.log" 2>&1 || true
        local id
        for id in $(run_nodes 2>/dev/null); do
            printf '\n==== %s (started by the nemesis)\n' "$(docker inspect --format '{{.Name}}' "$id" 2>/dev/null)"
            docker logs --timestamps "$id" 2>&1 || true
        done >>"$OUT/nodes.log"
        say "node logs kept in $OUT/nodes.log"
    fi
    if ((KEEP)); then
        say "--keep: project $PROJECT left up; remove it with: docker rm -f -v \$(docker ps -aq --filter label=muster-chaos.project=$PROJECT); ${COMPOSE[*]} -p $PROJECT -f $COMPOSE_FILE down -v"
    else
        say "==> tearing down (down -v)"
        remove_run_nodes
        compose down -v --remove-orphans -t 5 >&2 2>&1 || say "warning: 'down -v' failed; check 'docker ps -a'"
    fi
    if [[ -f "$OUT/summary.txt" ]]; then
        printf '\n'
        cat "$OUT/summary.txt"
        say "summary kept in $OUT/summary.{txt,json}"
    fi
    ((RC == 0)) && exit 0
    exit $((rc == 0 ? RC : rc))
}

main() {
    command -v docker >/dev/null || die "docker not found"
    docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon"
    detect_compose
    trap cleanup EXIT
    trap 'say "interrupted"; exit 130' INT TERM
    mkdir -p "$OUT"

    local chaos_bin="${MUSTER_CHAOS_BIN:-${MUSTER_STATIC_TARGET_DIR:-$REPO_ROOT/target/static}/x86_64-unknown-linux-gnu/release/muster-chaos}"
    if ((BUILD)); then
        "$REPO_ROOT/scripts/build-image.sh"
    fi
    docker image inspect "${MUSTER_IMAGE:-muster:dev}" >/dev/null 2>&1 ||
        die "image ${MUSTER_IMAGE:-muster:dev} is missing (run scripts/build-image.sh)"
    [[ -x "$chaos_bin" ]] || die "$chaos_bin is missing (run scripts/build-image.sh)"

    local n p eps=() https=()
    for n in "${NODES[@]}"; do
        for p in "$(client_port "$n")" "$(http_port "$n")"; do
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                die "port $p is already in use (another cluster?); set MUSTER_PORT_$n / MUSTER_HTTP_PORT_$n"
            fi
        done
        eps+=("127.0.0.1:$(client_port "$n")")
        https+=("127.0.0.1:$(http_port "$n")")
    done

    say "==> fresh cluster: project $PROJECT (${COMPOSE[*]})"
    remove_run_nodes
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    compose up -d >&2
    ((MEMBERSHIP)) || EXTRA=(--no-membership-faults "${EXTRA[@]}")

    say "==> muster-chaos: seed $SEED, faults for ${DURATION}s; output in $OUT"
    set +e
    "$chaos_bin" --project "$PROJECT" --services muster1,muster2,muster3 \
        --endpoints "$(csv "${eps[@]}")" --http "$(csv "${https[@]}")" \
        --duration "$DURATION" --seed "$SEED" --json "$OUT/summary.json" \
        "${EXTRA[@]}" >"$OUT/summary.txt"
    RC=$?
    set -e
    case "$RC" in
        0) say "==> chaos run PASSED" ;;
        1) say "==> chaos run FAILED: anomalies found (see the summary)" ;;
        *) say "==> chaos run could not complete (muster-chaos exit $RC)" ;;
    esac
}

main "$@"
