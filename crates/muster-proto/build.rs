//! Compiles the workspace's `proto/` tree into Rust with prost + tonic.
//!
//! `protoc` comes from the `PROTOC` environment variable when it is set and
//! non-empty, otherwise from the `protoc-bin-vendored` crate, so a fresh
//! machine needs no protoc install.

use std::path::PathBuf;

/// Proto files to compile, relative to the `proto/` root (which is also the
/// import root, so `import "etcd/mvccpb/kv.proto";` resolves).
const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "muster/raft/v1/raft.proto",
    "muster/v1/registry.proto",
];

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("cargo sets CARGO_MANIFEST_DIR for build scripts"),
    );
    let proto_root = manifest_dir.join("../../proto");

    // Emitting any rerun-if-changed replaces cargo's default "any file in the
    // package" rule, so list everything the output depends on.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-env-changed=PROTOC");

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_path());

    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, std::slice::from_ref(&proto_root))
        .unwrap_or_else(|e| {
            panic!(
                "failed to compile protos under {}: {e}",
                proto_root.display()
            )
        });
}

/// `PROTOC` if set and non-empty, else the vendored binary.
fn protoc_path() -> PathBuf {
    match std::env::var_os("PROTOC") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => protoc_bin_vendored::protoc_bin_path()
            .expect("no vendored protoc for this platform; install protoc and set PROTOC"),
    }
}
