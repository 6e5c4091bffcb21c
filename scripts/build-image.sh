#!/usr/bin/env bash
# Builds the static Muster binaries and the FROM-scratch node image (default tag muster:dev).
# Run `scripts/build-image.sh --help` for usage.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly TARGET=x86_64-unknown-linux-gnu
# A target dir of its own: the static RUSTFLAGS would otherwise invalidate the normal build
# cache in target/ that everyone else uses.
STATIC_TARGET_DIR="${MUSTER_STATIC_TARGET_DIR:-$REPO_ROOT/target/static}"
readonly STATIC_TARGET_DIR
readonly BIN_DIR="$STATIC_TARGET_DIR/$TARGET/release"

usage() {
    cat <<EOF
Usage: scripts/build-image.sh [OPTIONS]

Build statically linked musterd, muster-health and muster-chaos (glibc, +crt-static; cargo's
progress is shown), then a FROM-scratch image holding musterd and muster-health
(deploy/Dockerfile).

Options:
  --tag TAG        Image tag (env MUSTER_IMAGE; default muster:dev).
  --no-cargo       Do not run cargo; use the binaries already built in the static target dir.
  --if-missing     Do nothing if the image already exists.
  -h, --help       Show this help.

Environment:
  MUSTER_STATIC_TARGET_DIR  cargo target dir for the static build (default <repo>/target/static;
                            separate because the static RUSTFLAGS would otherwise invalidate the
                            normal build cache in target/).

The binaries end up in <static target dir>/$TARGET/release/ (muster-chaos runs on the host;
scripts/chaos.sh takes it from there). A cold build takes several minutes.
EOF
}

say() { printf '%s\n' "$*" >&2; }
die() {
    printf 'build-image.sh: error: %s\n' "$*" >&2
    exit 1
}

TAG="${MUSTER_IMAGE:-muster:dev}"
RUN_CARGO=1
IF_MISSING=0
while (($# > 0)); do
    case "$1" in
        --tag)
            [[ $# -ge 2 && -n "$2" ]] || die "--tag needs a value"
            TAG="$2"
            shift
            ;;
        --tag=*) TAG="${1#*=}" ;;
        --no-cargo) RUN_CARGO=0 ;;
        --if-missing) IF_MISSING=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

command -v docker >/dev/null || die "docker not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon (is it running? permissions?)"
if ((IF_MISSING)) && docker image inspect "$TAG" >/dev/null 2>&1; then
    say "image $TAG exists; nothing to do (--if-missing)"
    exit 0
fi

if ((RUN_CARGO)); then
    command -v cargo >/dev/null || die "cargo not found; install Rust from https://rustup.rs"
    say "==> building static binaries (release, +crt-static) in $STATIC_TARGET_DIR"
    # --target makes RUSTFLAGS apply to the target only, not to build scripts and proc-macros.
    (cd "$REPO_ROOT" && RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR="$STATIC_TARGET_DIR" \
        cargo build --release --target "$TARGET" -p musterd -p muster-chaos) ||
        die "cargo build failed"
fi

for b in musterd muster-health muster-chaos; do
    [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b is missing (run without --no-cargo)"
done
# A dynamically linked binary fails in the empty image with a baffling "no such file".
if command -v readelf >/dev/null; then
    for b in musterd muster-health; do
        if readelf -l "$BIN_DIR/$b" | grep -q 'INTERP'; then
            die "$BIN_DIR/$b is dynamically linked (has a program interpreter); the image needs static binaries"
        fi
    done
fi

CONTEXT="$(mktemp -d "${TMPDIR:-/tmp}/muster-image.XXXXXX")"
trap 'rm -rf "$CONTEXT"' EXIT
cp "$REPO_ROOT/deploy/Dockerfile" "$CONTEXT/Dockerfile"
cp "$BIN_DIR/musterd" "$BIN_DIR/muster-health" "$CONTEXT/"
mkdir "$CONTEXT/data"
say "==> building image $TAG from deploy/Dockerfile (context $(du -sh "$CONTEXT" | cut -f1))"
# The legacy builder needs no buildx plugin; FROM scratch needs no registry.
DOCKER_BUILDKIT=0 docker build --tag "$TAG" "$CONTEXT" >&2 || die "docker build failed"
say "==> built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.1f MB", $1/1e6}'))"
say "    static binaries: $BIN_DIR/{musterd,muster-health,muster-chaos}"
