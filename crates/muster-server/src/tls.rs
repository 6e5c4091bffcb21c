//! TLS for the client and peer ports, with rustls: configs built from PEM files with etcd's
//! flag names and meanings, reloaded without a restart.
//!
//! - Client port: on when `cert_file` and `key_file` are set. `client_cert_auth` requires a
//!   client certificate signed by `trusted_ca_file` (etcd's `--client-cert-auth`); without
//!   it a client certificate is verified if one is presented, else none is needed.
//! - Peer port: on when `peer_cert_file` and `peer_key_file` are set; the same certificate is
//!   this node's client identity when it calls other peers, which it verifies against
//!   `peer_trusted_ca_file`. `peer_client_cert_auth` requires every peer to present a
//!   certificate of that CA (mutual TLS), which then replaces the peer token.
//! - `cipher_suites` (etcd's Go names, which are IANA's, e.g.
//!   `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`; empty = rustls' defaults) and `min_version`
//!   (`TLS1.2` or `TLS1.3`).
//!
//! Reloading: every config is a [`Reloadable`] holding the current rustls config; each new
//! connection takes the current one. The files are checked for changes every
//! `reload_interval` and on SIGHUP ([`NodeTls::spawn_reloader`]); a change that does not load
//! (a half-written file, a key that does not match) keeps the old config and is logged.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// `[tls]` in the config file; etcd's flags on the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The client port's certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// The peer port's certificate chain (PEM), also presented when calling peers.
    pub peer_cert_file: Option<PathBuf>,
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign peers' certificates.
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require every peer to present a certificate of `peer_trusted_ca_file` (replaces the
    /// peer token).
    pub peer_client_cert_auth: bool,
    /// Allowed cipher suites by IANA name; empty = rustls' defaults.
    pub cipher_suites: Vec<String>,
    /// `TLS1.2` or `TLS1.3`.
    pub min_version: String,
    /// How often the certificate files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            peer_client_cert_auth: false,
            cipher_suites: Vec::new(),
            min_version: "TLS1.2".into(),
            reload_interval: Duration::from_secs(10),
        }
    }
}

/// A TLS configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("reading {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("{what}: {source}")]
    Verifier {
        what: &'static str,
        source: rustls::server::VerifierBuilderError,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl TlsSettings {
    /// Whether the client port speaks TLS.
    pub fn client_tls(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Whether the peer port speaks TLS.
    pub fn peer_tls(&self) -> bool {
        self.peer_cert_file.is_some()
    }

    /// Whether peers prove membership by certificate (then the peer token is not needed).
    pub fn peer_mtls(&self) -> bool {
        self.peer_tls() && self.peer_client_cert_auth
    }

    /// Checks the settings for contradictions (files are read by [`NodeTls::load`]).
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid("cert_file", "cert_file and key_file go together"));
        }
        if self.peer_cert_file.is_some() != self.peer_key_file.is_some() {
            return Err(invalid(
                "peer_cert_file",
                "peer_cert_file and peer_key_file go together",
            ));
        }
        if self.client_cert_auth && (self.trusted_ca_file.is_none() || !self.client_tls()) {
            return Err(invalid(
                "client_cert_auth",
                "needs cert_file, key_file and trusted_ca_file",
            ));
        }
        if self.peer_tls() && self.peer_trusted_ca_file.is_none() {
            return Err(invalid(
                "peer_trusted_ca_file",
                "peer TLS needs the CA that signs the peers' certificates",
            ));
        }
        if self.peer_client_cert_auth && !self.peer_tls() {
            return Err(invalid(
                "peer_client_cert_auth",
                "needs peer_cert_file and peer_key_file",
            ));
        }
        if self.reload_interval.is_zero() {
            return Err(invalid("reload_interval", "must be > 0"));
        }
        self.versions()?;
        self.provider()?;
        Ok(())
    }

    fn versions(&self) -> Result<&'static [&'static SupportedProtocolVersion], TlsError> {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self.min_version.as_str() {
            "TLS1.2" => Ok(&BOTH),
            "TLS1.3" => Ok(&ONLY13),
            other => Err(invalid(
                "min_version",
                format!("{other:?}: TLS1.2 or TLS1.3"),
            )),
        }
    }

    /// ring's provider, limited to `cipher_suites` when given.
    fn provider(&self) -> Result<Arc<CryptoProvider>, TlsError> {
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            let name = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite());
            for wanted in &self.cipher_suites {
                if !provider.cipher_suites.iter().any(|s| &name(s) == wanted) {
                    let known: Vec<String> = provider.cipher_suites.iter().map(name).collect();
                    return Err(invalid(
                        "cipher_suites",
                        format!(
                            "{wanted:?} is not supported; supported: {}",
                            known.join(", ")
                        ),
                    ));
                }
            }
            provider
                .cipher_suites
                .retain(|s| self.cipher_suites.contains(&name(s)));
        }
        Ok(Arc::new(provider))
    }
}

fn certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.clone(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(invalid(
            "certificate file",
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn key(path: &PathBuf) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        path: path.clone(),
        source,
    })
}

fn roots(path: &PathBuf) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|source| TlsError::Rustls {
            what: "trusted CA",
            source,
        })?;
    }
    Ok(Arc::new(store))
}

/// gRPC over TLS negotiates HTTP/2 by ALPN.
fn h2() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec()]
}

fn server_config(
    s: &TlsSettings,
    cert: &PathBuf,
    key_file: &PathBuf,
    ca: Option<&PathBuf>,
    require_client_cert: bool,
) -> Result<ServerConfig, TlsError> {
    let provider = s.provider()?;
    let verifier = match ca {
        Some(ca) => {
            let b = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone());
            let b = if require_client_cert {
                b
            } else {
                b.allow_unauthenticated()
            };
            b.build().map_err(|source| TlsError::Verifier {
                what: "client certificate verifier",
                source,
            })?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(s.versions()?)
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key(key_file)?)
        .map_err(|source| TlsError::Rustls {
            what: "certificate and key",
            source,
        })?;
    config.alpn_protocols = h2();
    Ok(config)
}

fn peer_client_config(s: &TlsSettings) -> Result<ClientConfig, TlsError> {
    let (Some(cert), Some(key_file), Some(ca)) =
        (&s.peer_cert_file, &s.peer_key_file, &s.peer_trusted_ca_file)
    else {
        return Err(invalid("peer_cert_file", "peer TLS is off"));
    };
    let mut config = ClientConfig::builder_with_provider(s.provider()?)
        .with_protocol_versions(s.versions()?)
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(cert)?, key(key_file)?)
        .map_err(|source| TlsError::Rustls {
            what: "peer certificate and key",
            source,
        })?;
    config.alpn_protocols = h2();
    Ok(config)
}

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A rustls config rebuilt from its files when they change.
pub struct Reloadable<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

impl<T> Reloadable<T> {
    fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let first = build()?;
        Ok(Arc::new(Reloadable {
            what,
            stamps: Mutex::new(stamps(&files)),
            files,
            build: Box::new(build),
            current: RwLock::new(Arc::new(first)),
        }))
    }

    /// The config new connections use.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Rebuilds from the files if any changed since the last load (or if `force`); keeps the
    /// current config when they do not load. Returns whether the config was replaced.
    pub fn reload(&self, force: bool) -> bool {
        let now = stamps(&self.files);
        {
            let mut last = self
                .stamps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !force && *last == now {
                return false;
            }
            *last = now;
        }
        match (self.build)() {
            Ok(config) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                tracing::info!(what = self.what, "TLS certificates reloaded");
                true
            }
            Err(e) => {
                tracing::error!(
                    what = self.what,
                    "TLS reload failed, keeping the old certificates: {e}"
                );
                false
            }
        }
    }
}

/// A node's TLS configs: the client port's, and the peer port's server and client sides.
#[derive(Default)]
pub struct NodeTls {
    pub client_server: Option<Arc<Reloadable<ServerConfig>>>,
    pub peer_server: Option<Arc<Reloadable<ServerConfig>>>,
    pub peer_client: Option<Arc<Reloadable<ClientConfig>>>,
}

impl NodeTls {
    /// Reads every configured certificate; fails on the first that does not load.
    pub fn load(s: &TlsSettings) -> Result<NodeTls, TlsError> {
        s.validate()?;
        let mut tls = NodeTls::default();
        if let (Some(cert), Some(key_file)) = (&s.cert_file, &s.key_file) {
            let (settings, cert, key_file) = (s.clone(), cert.clone(), key_file.clone());
            let files = [Some(&cert), Some(&key_file), s.trusted_ca_file.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            tls.client_server = Some(Reloadable::new("client port", files, move || {
                server_config(
                    &settings,
                    &cert,
                    &key_file,
                    settings.trusted_ca_file.as_ref(),
                    settings.client_cert_auth,
                )
            })?);
        }
        if let (Some(cert), Some(key_file), Some(ca)) =
            (&s.peer_cert_file, &s.peer_key_file, &s.peer_trusted_ca_file)
        {
            let files: Vec<PathBuf> = vec![cert.clone(), key_file.clone(), ca.clone()];
            let (settings, c, k, a) = (s.clone(), cert.clone(), key_file.clone(), ca.clone());
            tls.peer_server = Some(Reloadable::new("peer port", files.clone(), move || {
                server_config(&settings, &c, &k, Some(&a), settings.peer_client_cert_auth)
            })?);
            let settings = s.clone();
            tls.peer_client = Some(Reloadable::new("peer client", files, move || {
                peer_client_config(&settings)
            })?);
        }
        Ok(tls)
    }

    /// Checks the files now; `force` rebuilds even if they look unchanged (SIGHUP).
    pub fn reload(&self, force: bool) {
        if let Some(r) = &self.client_server {
            r.reload(force);
        }
        if let Some(r) = &self.peer_server {
            r.reload(force);
        }
        if let Some(r) = &self.peer_client {
            r.reload(force);
        }
    }

    fn is_on(&self) -> bool {
        self.client_server.is_some() || self.peer_server.is_some()
    }

    /// Reloads every `every` if the files changed, and on SIGHUP, until `stop`.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        if !self.is_on() {
            return;
        }
        let tls = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut ticks = tokio::time::interval(every);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<Option<()>>();
                let force = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => false,
                    _ = hangup => true,
                };
                let tls = tls.clone();
                // Reading and parsing files is blocking work.
                let _ = tokio::task::spawn_blocking(move || tls.reload(force)).await;
            }
        });
    }
}
