//! TLS (issue 15) with the real etcdctl: a 3-node cluster with client TLS, required client
//! certificates and mutual TLS between peers serves etcdctl with `--cacert/--cert/--key`;
//! a client certificate of another CA, no certificate and plaintext are refused; the peer
//! port refuses a caller without a certificate of the peers' CA; certificates replaced on
//! disk are served without a restart; muster-client and the etcd-client crate connect over
//! TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use muster_server::pki::{Ca, Issued};
use muster_server::NodeConfig;
use muster_tests::{etcdctl, etcdctl_ok, wait_until, Cluster};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

const T: Duration = Duration::from_secs(20);

/// Writes `issued` as `<name>.crt` / `<name>.key` in `dir` (atomically: renamed into place,
/// so a reloading node never reads half a file).
fn write_pair(dir: &Path, name: &str, issued: &Issued) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    for (path, text) in [(&crt, &issued.cert_pem), (&key, &issued.key_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok((crt, key))
}

fn write_ca(dir: &Path, name: &str, ca: &Ca) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.crt"));
    std::fs::write(&path, ca.cert_pem())?;
    Ok(path)
}

/// etcdctl's TLS flags, quick to give up.
fn tls_args<'a>(ca: &'a str, cert: Option<(&'a str, &'a str)>) -> Vec<&'a str> {
    let mut args = vec!["--dial-timeout=2s", "--command-timeout=4s", "--cacert", ca];
    if let Some((crt, key)) = cert {
        args.extend(["--cert", crt, "--key", key]);
    }
    args
}

fn s(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

/// Connects to `addr` over TLS trusting `ca`, presenting `client` if given; returns what the
/// first read after the handshake gives: Ok(bytes read) or the error.
async fn probe(
    addr: std::net::SocketAddr,
    ca: &str,
    client: Option<&Issued>,
) -> anyhow::Result<std::io::Result<usize>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes())?)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match client {
        Some(c) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes())?],
            PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1")?;
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    // TLS 1.3 verifies the client's certificate after the client's handshake ends: the
    // server's verdict arrives with the first read.
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    Ok(
        tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap_or(Ok(0)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_over_mutual_tls_and_every_refusal() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let dir = pki.path();
    let ca = Ca::new("test CA")?;
    let other = Ca::new("another CA")?;
    let ca_file = write_ca(dir, "ca", &ca)?;
    let (node_crt, node_key) = write_pair(dir, "node", &ca.issue("node", &["127.0.0.1"])?)?;
    let client = ca.issue("root", &[])?;
    let (client_crt, client_key) = write_pair(dir, "client", &client)?;
    let stranger = other.issue("root", &[])?;
    let (bad_crt, bad_key) = write_pair(dir, "stranger", &stranger)?;
    let tweak = |c: &mut NodeConfig| {
        c.tls.cert_file = Some(node_crt.clone());
        c.tls.key_file = Some(node_key.clone());
        c.tls.trusted_ca_file = Some(ca_file.clone());
        c.tls.client_cert_auth = true;
        c.tls.peer_cert_file = Some(node_crt.clone());
        c.tls.peer_key_file = Some(node_key.clone());
        c.tls.peer_trusted_ca_file = Some(ca_file.clone());
        c.tls.peer_client_cert_auth = true;
    };
    let cluster = Cluster::start_with(3, tweak).await?;
    let eps = cluster.endpoints();
    let (ca_s, crt_s, key_s) = (s(&ca_file), s(&client_crt), s(&client_key));

    info!("--- step: etcdctl with the client certificate: put on one node, get on another");
    let mut args = tls_args(&ca_s, Some((&crt_s, &key_s)));
    args.extend(["put", "tls/k", "v"]);
    etcdctl_ok(&eps[..1], &args, None)?;
    let mut args = tls_args(&ca_s, Some((&crt_s, &key_s)));
    args.extend(["get", "--print-value-only", "tls/k"]);
    // Replicated over the peers' mutual TLS.
    let got = wait_until(T, "node 3 to serve the put", || async {
        etcdctl_ok(&eps[2..], &args, None)
            .ok()
            .filter(|v| v.trim() == "v")
    })
    .await?;
    assert_eq!(got.trim(), "v");
    let mut args = tls_args(&ca_s, Some((&crt_s, &key_s)));
    args.push("member");
    args.push("list");
    let members = etcdctl_ok(&eps[..1], &args, None)?;
    assert_eq!(
        members.matches("https://127.0.0.1:").count(),
        3,
        "{members}"
    );

    info!("--- step: another CA's client certificate, none, and plaintext are refused");
    let (bad_crt_s, bad_key_s) = (s(&bad_crt), s(&bad_key));
    for (what, mut args) in [
        (
            "another CA's certificate",
            tls_args(&ca_s, Some((&bad_crt_s, &bad_key_s))),
        ),
        ("no client certificate", tls_args(&ca_s, None)),
        (
            "plaintext",
            vec!["--dial-timeout=2s", "--command-timeout=4s"],
        ),
    ] {
        args.extend(["get", "tls/k"]);
        let out = etcdctl(&eps[..1], &args, None)?;
        assert!(!out.status.success(), "{what}: {out:?}");
        assert!(out.stdout.is_empty(), "{what}: nothing is served");
    }

    info!("--- step: the peer port refuses callers without a certificate of the peers' CA");
    let peer = cluster.peer_addr(1);
    let ca_pem = ca.cert_pem();
    for (what, cert) in [("no certificate", None), ("another CA's", Some(&stranger))] {
        let read = probe(peer, &ca_pem, cert).await?;
        assert!(
            !matches!(read, Ok(n) if n > 0),
            "peer port answered a caller with {what}: {read:?}"
        );
    }
    // The node's own certificate (the peers' CA) passes the handshake: HTTP/2 settings come.
    let node = Issued {
        cert_pem: std::fs::read_to_string(&node_crt)?,
        key_pem: std::fs::read_to_string(&node_key)?,
    };
    let read = probe(peer, &ca_pem, Some(&node)).await?;
    assert!(matches!(read, Ok(n) if n > 0), "{read:?}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaced_certificates_are_served_without_a_restart() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let dir = pki.path();
    let old = Ca::new("old CA")?;
    let new = Ca::new("new CA")?;
    let old_ca = write_ca(dir, "old-ca", &old)?;
    let new_ca = write_ca(dir, "new-ca", &new)?;
    let (crt, key) = write_pair(dir, "node", &old.issue("node", &["127.0.0.1"])?)?;
    let (c, k) = (crt.clone(), key.clone());
    let cluster = Cluster::start_with(1, move |cfg| {
        cfg.tls.cert_file = Some(c.clone());
        cfg.tls.key_file = Some(k.clone());
        cfg.tls.reload_interval = Duration::from_millis(100);
    })
    .await?;
    let eps = cluster.endpoints();
    let (old_s, new_s) = (s(&old_ca), s(&new_ca));
    let get = |ca: &str| {
        let mut args = tls_args(ca, None);
        args.extend(["get", "r/k"]);
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = |args: &[String]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        etcdctl(&eps, &a, None).map(|o| o.status.success())
    };
    assert!(run(&get(&old_s))?, "the old CA's client is served");
    assert!(!run(&get(&new_s))?, "not yet signed by the new CA");

    info!("--- step: the files are replaced; the node serves the new certificate");
    write_pair(dir, "node", &new.issue("node", &["127.0.0.1"])?)?;
    wait_until(
        T,
        "a client trusting only the new CA to be served",
        || async { run(&get(&new_s)).ok().filter(|ok| *ok) },
    )
    .await?;
    assert!(!run(&get(&old_s))?, "the old certificate is gone");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn muster_client_and_etcd_client_over_tls() -> anyhow::Result<()> {
    use muster_client::{Client, ClientOptions, TlsOptions};
    let pki = tempfile::tempdir()?;
    let dir = pki.path();
    let ca = Ca::new("test CA")?;
    let ca_file = write_ca(dir, "ca", &ca)?;
    let (crt, key) = write_pair(dir, "node", &ca.issue("node", &["127.0.0.1"])?)?;
    let (client_crt, client_key) = write_pair(dir, "client", &ca.issue("root", &[])?)?;
    let (c, k, a) = (crt.clone(), key.clone(), ca_file.clone());
    let cluster = Cluster::start_with(3, move |cfg| {
        cfg.tls.cert_file = Some(c.clone());
        cfg.tls.key_file = Some(k.clone());
        cfg.tls.trusted_ca_file = Some(a.clone());
        cfg.tls.client_cert_auth = true;
    })
    .await?;
    let options = |tls: TlsOptions| ClientOptions {
        call_timeout: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(2),
        tls: Some(tls),
        ..ClientOptions::default()
    };
    let with_cert = TlsOptions::from_files(&ca_file, Some(&client_crt), Some(&client_key))?;
    let client = Client::connect(cluster.endpoints(), options(with_cert)).await?;
    client.put("mc/k", "v").await?;
    let got = client.get("mc/k").await?;
    assert_eq!(
        got.kvs.first().map(|kv| kv.value.clone()),
        Some(b"v".to_vec())
    );

    let without = TlsOptions::from_files(&ca_file, None, None)?;
    let refused = Client::connect(cluster.endpoints(), options(without)).await?;
    assert!(
        refused.get("mc/k").await.is_err(),
        "a client without a certificate is not served"
    );
    assert!(TlsOptions::from_files(&ca_file, Some(&client_crt), None).is_err());

    // The etcd-client crate, as an application using it would connect.
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&ca_file)?))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(&client_crt)?,
            std::fs::read(&client_key)?,
        ));
    let eps: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| format!("https://{}", e.trim_start_matches("http://")))
        .collect();
    let mut etcd =
        etcd_client::Client::connect(eps, Some(etcd_client::ConnectOptions::new().with_tls(tls)))
            .await?;
    etcd.put("mc/etcd", "e", None).await?;
    let got = etcd.get("mc/k", None).await?;
    assert_eq!(
        got.kvs().first().map(|kv| kv.value().to_vec()),
        Some(b"v".to_vec())
    );
    cluster.shutdown().await;
    Ok(())
}
