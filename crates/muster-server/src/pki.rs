//! Throw-away certificates for local clusters and tests (rcgen): a CA, and certificates it
//! signs for servers and clients. `musterd certs` (used by `scripts/cluster.sh start --tls`)
//! writes them as PEM files; production clusters bring their own PKI.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that can issue certificates.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its private key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// The CA's certificate (what clients and peers trust).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `common_name`, valid as server and client, for `hosts` (IP addresses
    /// or DNS names) as subject alternative names. The common name is the user a client
    /// certificate authenticates as, when the server maps certificates to users.
    pub fn issue(&self, common_name: &str, hosts: &[&str]) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for h in hosts {
            params.subject_alt_names.push(match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*h).try_into()?),
            });
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a local cluster's certificates into `dir`: `ca.crt`; `node.crt`/`node.key` for
/// every node (servers and peers, for `hosts`); `client.crt`/`client.key` (common name
/// `client_user`). Private keys are created readable by the owner only. A `dir` that already
/// holds `ca.crt` is left as it is (returns false): nodes started on it keep trusting it.
pub fn write_local(dir: &Path, hosts: &[&str], client_user: &str) -> Result<bool, PkiError> {
    if dir.join("ca.crt").exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let ca = Ca::new("muster local CA")?;
    let node = ca.issue("muster node", hosts)?;
    write(dir, "node.crt", &node.cert_pem, false)?;
    write(dir, "node.key", &node.key_pem, true)?;
    let client = ca.issue(client_user, &[])?;
    write(dir, "client.crt", &client.cert_pem, false)?;
    write(dir, "client.key", &client.key_pem, true)?;
    // Last: its presence says the set is complete.
    write(dir, "ca.crt", &ca.cert_pem(), false)?;
    Ok(true)
}

fn write(dir: &Path, name: &str, text: &str, private: bool) -> std::io::Result<()> {
    let path = dir.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    opts.open(path)?.write_all(text.as_bytes())
}

/// Why [`write_local`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating certificates: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("writing certificates: {0}")]
    Io(#[from] std::io::Error),
}
