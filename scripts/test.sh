#!/usr/bin/env bash
# Runs the whole Muster test suite: installs missing prerequisites (see install-prereqs.sh:
# etcdctl, protoc, cargo-nextest), then `cargo nextest run --workspace --no-fail-fast`.
#
# Usage: scripts/test.sh [NEXTEST ARGS...]
#   scripts/test.sh                   everything
#   scripts/test.sh -E 'test(t20_)'   a filter; any other `cargo nextest run` arguments work too
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo "See 'cargo nextest run --help' for the arguments it passes on."
    exit 0
fi

bash "$REPO_ROOT/scripts/install-prereqs.sh"

cd "$REPO_ROOT"
args=""
if (($# > 0)); then args="$(printf ' %q' "$@")"; fi
printf '==> cargo nextest run --workspace --no-fail-fast%s\n' "$args"
exec cargo nextest run --workspace --no-fail-fast "$@"
