#!/usr/bin/env bash
# Smoke test of the docker-compose cluster (deploy/docker-compose.yml): it comes up healthy,
# peers find each other by service name, a write goes through each node, the leader is killed,
# writes continue, the old leader restarts and catches up. Always tears the cluster down.
# Run `scripts/docker-smoke.sh --help` for usage.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly COMPOSE_FILE="$REPO_ROOT/deploy/docker-compose.yml"
readonly NODES=(1 2 3)

usage() {
    cat <<EOF
Usage: scripts/docker-smoke.sh [OPTIONS]

Bring up the three-node compose cluster (building the image if it is missing), check it, then
'down -v' it — on success, failure or Ctrl-C. Prints PASS or FAIL; exits non-zero on failure.

Steps: all three containers healthy · every container resolves the others' service names
through Docker's DNS (static glibc in a FROM-scratch image) · one leader agreed on · a write
through each node, read back from every node · docker kill the leader · a new leader, writes
through the survivors · docker start the old leader · it is healthy and has the writes it missed.

Options:
  --project NAME   Compose project name (default muster-smoke).
  --timeout SECS   Deadline of each wait (default 60).
  --keep           Do not tear the cluster down at the end (for debugging; 'down -v' it yourself).
  -h, --help       Show this help.

Environment:
  MUSTER_IMAGE          image to run (default muster:dev; built by scripts/build-image.sh if missing)
  MUSTER_PORT_<i>       host client port of node i (default 2379<i>: 23791, 23792, 23793)
  MUSTER_HTTP_PORT_<i>  host HTTP port of node i (default 2381<i>)
  ETCDCTL               etcdctl binary (default: etcdctl on PATH)
EOF
}

say() { printf '%s\n' "$*" >&2; }
step() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf 'docker-smoke.sh: error: %s\n' "$*" >&2
    exit 1
}

PROJECT=muster-smoke
TIMEOUT=60
KEEP=0
while (($# > 0)); do
    case "$1" in
        --project)
            [[ $# -ge 2 && -n "$2" ]] || die "--project needs a value"
            PROJECT="$2"
            shift
            ;;
        --timeout)
            [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--timeout needs a positive number of seconds"
            TIMEOUT="$2"
            shift
            ;;
        --keep) KEEP=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

# ---------------------------------------------------------------- tools

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

ETCDCTL="${ETCDCTL:-etcdctl}"
client_port() { local v="MUSTER_PORT_$1"; printf '%s' "${!v:-2379$1}"; }
http_port() { local v="MUSTER_HTTP_PORT_$1"; printf '%s' "${!v:-2381$1}"; }
ctl() { # ctl NODE ARGS...: etcdctl against one node's published port
    local n="$1"
    shift
    ETCDCTL_API=3 "$ETCDCTL" --endpoints="127.0.0.1:$(client_port "$n")" \
        --dial-timeout=2s --command-timeout=5s "$@"
}

# http_get PORT PATH: prints "CODE BODY" (CODE 000 if nothing answered).
http_get() {
    if command -v curl >/dev/null; then
        local out
        out="$(curl -sS -m 2 -w '\n%{http_code}' "http://127.0.0.1:$1$2" 2>/dev/null)" || true
        local code="${out##*$'\n'}" body="${out%$'\n'*}"
        [[ "$out" == *$'\n'* ]] || body=""
        printf '%s %s' "${code:-000}" "$body"
    else
        (
            exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
            printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
            local line code body=""
            IFS= read -r -t 2 line <&3 || exit 1
            code="$(cut -d' ' -f2 <<<"$line")"
            while IFS= read -r -t 2 line <&3 && [[ -n "${line%$'\r'}" ]]; do :; done
            while IFS= read -r -t 2 line <&3 || [[ -n "$line" ]]; do body+="$line"; line=""; done
            printf '%s %s' "$code" "$body"
        ) 2>/dev/null || printf '000 '
    fi
}
# json_field NAME JSON: a scalar field of a flat JSON object.
json_field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }
health_field() { # health_field NODE FIELD: prints the field if /health answers 200
    local r
    r="$(http_get "$(http_port "$1")" /health)"
    [[ "${r%% *}" == 200 ]] || return 1
    json_field "$2" "${r#* }"
}

# Container ids, looked up once after 'up' (compose v2's 'ps' omits stopped containers).
declare -A CID=()
container() {
    [[ -n "${CID[$1]:-}" ]] || CID[$1]="$(compose ps -q "muster$1")"
    [[ -n "${CID[$1]}" ]] || die "no container for service muster$1"
    printf '%s' "${CID[$1]}"
}

# wait_until DESCRIPTION COMMAND...: retries COMMAND every 0.5 s until it succeeds or TIMEOUT.
wait_until() {
    local what="$1" deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for: $what"
        sleep 0.5
    done
}

# ---------------------------------------------------------------- checks

all_healthy() { # all_healthy NODE...: docker reports every container healthy
    local n s
    for n in "$@"; do
        s="$(docker inspect --format '{{.State.Health.Status}}' "$(container "$n")" 2>/dev/null)" || return 1
        [[ "$s" == healthy ]] || return 1
    done
}

LEADER=""
agree_on_leader() { # agree_on_leader NODE...: all name the same leader, one of them
    local n l first=""
    for n in "$@"; do
        l="$(health_field "$n" leader)" || return 1
        [[ "$l" =~ ^[0-9]+$ ]] || return 1
        [[ -z "$first" || "$first" == "$l" ]] || return 1
        first="$l"
    done
    [[ " $* " == *" $first "* ]] || return 1
    LEADER="$first"
}

put_through() { ctl "$1" put "$2" "$3" >/dev/null 2>&1; }

caught_up() { # caught_up NODE TARGET_INDEX
    local a
    a="$(health_field "$1" applied_index)" || return 1
    [[ "$a" =~ ^[0-9]+$ ]] && ((a >= $2))
}

# ---------------------------------------------------------------- run

RESULT=FAIL
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ "$RESULT" != PASS && ${#COMPOSE[@]} -gt 0 ]]; then
        say ""
        say "---- container state and last log lines (for the failure above)"
        compose ps >&2 2>/dev/null || true
        compose logs --no-color --tail 30 >&2 2>/dev/null || true
    fi
    if ((KEEP)); then
        say "--keep: leaving project $PROJECT up; remove it with: ${COMPOSE[*]} -p $PROJECT -f $COMPOSE_FILE down -v"
    elif ((${#COMPOSE[@]} > 0)); then
        say ""
        say "==> tearing down (down -v)"
        compose down -v --remove-orphans -t 5 >&2 2>&1 || say "warning: 'down -v' failed; check 'docker ps -a'"
    fi
    printf '\ndocker smoke test: %s\n' "$RESULT"
    [[ "$RESULT" == PASS ]] && exit 0
    exit $((rc == 0 ? 1 : rc))
}

main() {
    command -v docker >/dev/null || die "docker not found"
    command -v "$ETCDCTL" >/dev/null || die "etcdctl not found (set ETCDCTL)"
    detect_compose
    trap cleanup EXIT
    trap 'say "interrupted"; exit 130' INT TERM
    say "compose: ${COMPOSE[*]}, project $PROJECT, file $COMPOSE_FILE"

    step "image"
    "$REPO_ROOT/scripts/build-image.sh" --if-missing

    local n p
    for n in "${NODES[@]}"; do
        for p in "$(client_port "$n")" "$(http_port "$n")"; do
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                die "port $p is already in use (another cluster?); set MUSTER_PORT_$n / MUSTER_HTTP_PORT_$n"
            fi
        done
    done

    step "up -d"
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true # leftovers of an aborted run
    compose up -d >&2
    local t0=$SECONDS
    for n in "${NODES[@]}"; do container "$n" >/dev/null; done
    wait_until "all three containers healthy" all_healthy "${NODES[@]}"
    wait_until "all three nodes agreeing on a leader" agree_on_leader "${NODES[@]}"
    say "healthy after $((SECONDS - t0))s; leader is node $LEADER"

    step "name resolution inside the scratch image (Docker's embedded DNS)"
    local m out
    for n in "${NODES[@]}"; do
        m=$((n % 3 + 1))
        out="$(docker exec "$(container "$n")" /usr/local/bin/muster-health --http "muster$m:2381")" ||
            die "muster$n cannot reach muster$m:2381 by name: $out"
        say "muster$n -> muster$m:2381: $out"
    done
    if out="$(docker exec "$(container 1)" /usr/local/bin/muster-health --http "no-such-service:2381" 2>&1)"; then
        die "an unknown name resolved: $out"
    fi
    say "unknown name fails as it should: $out"

    step "a write through each node, read back from every node"
    for n in "${NODES[@]}"; do
        ctl "$n" put "smoke/via-node$n" "hello from node $n" >/dev/null || die "put through node $n failed"
        say "put smoke/via-node$n through 127.0.0.1:$(client_port "$n")"
    done
    for n in "${NODES[@]}"; do
        local got
        got="$(ctl "$n" get --prefix --keys-only smoke/via- | grep -c . || true)"
        ((got == 3)) || die "node $n returns $got of the 3 keys"
    done
    say "every node returns all 3 keys"

    step "kill the leader (node $LEADER) with docker kill"
    local old="$LEADER" survivors=()
    for n in "${NODES[@]}"; do [[ "$n" == "$old" ]] || survivors+=("$n"); done
    docker kill "$(container "$old")" >/dev/null
    t0=$SECONDS
    wait_until "a new leader among nodes ${survivors[*]}" agree_on_leader "${survivors[@]}"
    say "node $LEADER leads after $((SECONDS - t0))s"
    local i k
    for ((i = 0; i < 10; i++)); do
        n="${survivors[i % 2]}"
        k="smoke/during-outage/$i"
        wait_until "put $k through node $n" put_through "$n" "$k" "v$i"
    done
    say "10 writes through nodes ${survivors[*]} succeeded with node $old down"

    step "restart node $old; it must catch up"
    local target
    target="$(health_field "$LEADER" applied_index)" || die "leader $LEADER does not answer /health"
    docker start "$(container "$old")" >/dev/null
    t0=$SECONDS
    wait_until "node $old healthy" all_healthy "$old"
    wait_until "node $old applied index >= $target" caught_up "$old" "$target"
    wait_until "all three nodes agreeing on a leader" agree_on_leader "${NODES[@]}"
    local got
    got="$(ctl "$old" get --consistency=s --prefix --keys-only smoke/during-outage/ | grep -c . || true)"
    ((got == 10)) || die "restarted node $old has $got of the 10 writes it missed (serializable read)"
    say "node $old is back after $((SECONDS - t0))s with all 10 missed writes; leader is node $LEADER"

    RESULT=PASS
}

main "$@"
