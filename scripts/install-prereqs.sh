#!/usr/bin/env bash
# Installs what building and testing Muster needs beyond a Rust toolchain, if missing:
#   etcdctl        Debian package etcd-client (3.4); the etcdctl compatibility tests run it.
#   protoc         Debian package protobuf-compiler; the etcd-client crate's build script
#                  (a dependency of the tests crate) needs it. Our own protos use a vendored protoc.
#   libprotobuf-dev the well-known types (google/protobuf/descriptor.proto) etcd-client's
#                  protos import; protobuf-compiler only recommends it.
#   make           musterd's allocator (tikv-jemallocator) builds jemalloc from source with it.
#   go + clientv3  Debian packages golang-go (1.19) and golang-etcd-server-dev (3.4.23, the Go
#                  etcd client's sources under /usr/share/gocode): tests/t22_go_client.rs
#                  builds tests/go/ with them, offline, in GOPATH mode.
#   cargo-nextest  the test runner (cargo install --locked cargo-nextest).
# Uses apt-get, as root or through sudo. Prints what it installs; installs nothing already there.
set -euo pipefail

case "${1:-}" in
    -h | --help)
        sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *)
        echo "install-prereqs.sh: unknown argument '$1' (see --help)" >&2
        exit 2
        ;;
esac

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'install-prereqs.sh: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- apt packages

packages=()
command -v etcdctl >/dev/null || packages+=(etcd-client)
if [[ -n "${PROTOC:-}" ]]; then
    [[ -x "$PROTOC" ]] || die "PROTOC=$PROTOC is set but is not an executable"
elif ! command -v protoc >/dev/null; then
    packages+=(protobuf-compiler)
fi
if [[ -z "${PROTOC_INCLUDE:-}" && ! -e /usr/include/google/protobuf/descriptor.proto ]]; then
    packages+=(libprotobuf-dev)
fi
command -v make >/dev/null || packages+=(make)
command -v go >/dev/null || packages+=(golang-go)
[[ -d /usr/share/gocode/src/go.etcd.io/etcd/clientv3 ]] || packages+=(golang-etcd-server-dev)

if ((${#packages[@]} > 0)); then
    need="${packages[*]} (etcd-client provides etcdctl, protobuf-compiler provides protoc)"
    command -v apt-get >/dev/null ||
        die "missing: $need. This is not a Debian/Ubuntu system (no apt-get); install etcdctl 3.4+ and protoc yourself."
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null ||
            die "missing: $need. Not root and sudo is not available; run as root: apt-get update && apt-get install -y ${packages[*]}"
        sudo=(sudo)
        # Without a terminal (CI), fail instead of waiting for a password prompt.
        [[ -t 0 ]] || sudo+=(-n)
    fi
    say "installing apt packages: ${packages[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        die "apt-get update failed (need root or sudo rights to install: ${packages[*]})"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${packages[@]}" ||
        die "apt-get install ${packages[*]} failed"
    command -v etcdctl >/dev/null || die "etcdctl still not on PATH after installing etcd-client"
    [[ -n "${PROTOC:-}" ]] || command -v protoc >/dev/null ||
        die "protoc still not on PATH after installing protobuf-compiler"
fi

# ---------------------------------------------------------------- cargo-nextest

command -v cargo >/dev/null || die "cargo not found; install Rust from https://rustup.rs"
if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest: cargo install --locked cargo-nextest (compiles from source, a few minutes)"
    cargo install --locked cargo-nextest || die "cargo install cargo-nextest failed"
fi

if ((${#packages[@]} == 0)); then
    say "prerequisites present: etcdctl, protoc, make, go with clientv3, cargo-nextest"
fi
