//! Peer authentication: the cluster secret every `RaftTransport` call carries, and the one
//! check of it on the peer port.
//!
//! Without mutual TLS on the peer port (`tls.peer_client_cert_auth`, which replaces this),
//! peers prove membership with a shared secret read from `peer_token_file` (the same file on
//! every node). The client side adds it to every request
//! (an interceptor on the peer channels, so no call can forget it); the server side checks it
//! in an interceptor, before the request body is read, and compares in constant time. A
//! missing or wrong token is `Unauthenticated` and logged with the caller's address.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::config::NodeConfig;

/// Metadata key carrying the peer secret.
pub const PEER_TOKEN_HEADER: &str = "x-muster-peer-token";

/// The file a single-node cluster without `peer_token_file` keeps its generated secret in.
pub const GENERATED_TOKEN_FILE: &str = "peer-token";

/// Why the peer secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PeerTokenError {
    #[error("peer token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("peer token file {path}: {reason}")]
    Invalid { path: PathBuf, reason: &'static str },
}

/// The cluster's peer secret.
#[derive(Clone)]
pub struct PeerToken {
    value: AsciiMetadataValue,
}

impl std::fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("PeerToken(..)")
    }
}

/// Shortest secret accepted: guessing must not be practical.
const MIN_TOKEN_BYTES: usize = 16;

impl PeerToken {
    /// Reads the configured token file, or, for a node configured without one (only allowed
    /// for a single-node cluster, see [`NodeConfig::validate`]), the secret generated in its
    /// data dir on first start.
    pub fn load(config: &NodeConfig) -> Result<PeerToken, PeerTokenError> {
        let (path, create) = match &config.peer_token_file {
            Some(path) => (path.clone(), config.create_peer_token),
            None => (config.data_dir.join(GENERATED_TOKEN_FILE), true),
        };
        if create && !path.exists() {
            Self::generate(&path)?;
        }
        Self::read(&path)
    }

    /// A token from its text (tests, and the testkit's generated clusters).
    pub fn from_text(text: &str) -> Option<PeerToken> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_BYTES || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        MetadataValue::try_from(t)
            .ok()
            .map(|value| PeerToken { value })
    }

    /// A fresh random token's text (64 hex digits).
    pub fn random_text() -> String {
        let bytes: [u8; 32] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn read(path: &Path) -> Result<PeerToken, PeerTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| PeerTokenError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_text(&text).ok_or_else(|| PeerTokenError::Invalid {
            path: path.to_path_buf(),
            reason: "must hold at least 16 visible ASCII characters (no spaces)",
        })
    }

    /// Creates `path` with a fresh secret unless it exists. Atomic: the secret is written to a
    /// temporary file and hard-linked into place, which fails if another node got there
    /// first; the loser then reads the winner's secret (nodes sharing one volume).
    fn generate(path: &Path) -> Result<(), PeerTokenError> {
        let io = |source| PeerTokenError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("{}.tmp", rand::random::<u64>()));
        write_private(&tmp, &Self::random_text()).map_err(io)?;
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io(e)),
            _ => Ok(()),
        }
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.value.as_bytes().ct_eq(presented))
    }
}

/// Writes a secret readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Client side: adds the secret to every request on a peer channel.
#[derive(Clone)]
pub struct AttachToken(pub Arc<PeerToken>);

impl tonic::service::Interceptor for AttachToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert(PEER_TOKEN_HEADER, self.0.value.clone());
        Ok(req)
    }
}

/// Server side: refuses a call whose secret is missing or wrong, before its body is read.
/// `None`: peers are authenticated by mutual TLS instead (the handshake already refused a
/// caller without a certificate of the peers' CA).
#[derive(Clone)]
pub struct CheckToken(pub Option<Arc<PeerToken>>);

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.0 else {
            return Ok(req);
        };
        let presented = req.metadata().get(PEER_TOKEN_HEADER);
        if presented.is_some_and(|v| token.matches(v.as_bytes())) {
            return Ok(req);
        }
        let remote = req
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        tracing::warn!(
            %remote,
            token = if presented.is_some() { "wrong" } else { "missing" },
            "refused a peer call: bad peer token"
        );
        Err(tonic::Status::unauthenticated(
            "peer token missing or wrong",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let t = PeerToken::from_text("0123456789abcdef0123").expect("token");
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef012"));
        assert!(!t.matches(b"0123456789abcdef01234"));
        assert!(!t.matches(b""));
        assert!(PeerToken::from_text("short").is_none());
        assert!(PeerToken::from_text("with a space inside it").is_none());
    }

    #[test]
    fn a_single_node_generates_and_keeps_its_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let a = PeerToken::load(&config).expect("generated");
        let b = PeerToken::load(&config).expect("reloaded");
        assert!(a.matches(b.value.as_bytes()));
    }
}
