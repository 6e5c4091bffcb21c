//! A tiny TCP echo service that registers itself in Muster and stays registered until Ctrl-C.
//!
//! ```text
//! cargo run -p muster-client --example echo_service -- 127.0.0.1:2379 127.0.0.1:7001
//! cargo run -p muster-client --example echo_service -- 127.0.0.1:2379 127.0.0.1:7002
//! ```
//! Arguments: the Muster endpoints (comma-separated) and the address to serve on.

use std::time::Duration;

use muster_client::{Client, ClientOptions, InstanceSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoints = args.next().unwrap_or_else(|| "127.0.0.1:2379".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7001".into());
    let listener = TcpListener::bind(&listen).await?;
    let addr = listener.local_addr()?;

    let client = Client::connect(endpoints.split(','), ClientOptions::default()).await?;
    let me = InstanceSpec {
        service: "echo".into(),
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
        metadata: [("version".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let registration = client.register_self(me, Duration::from_secs(6)).await?;
    println!(
        "serving echo on {addr}, registered as {} (lease {:x})",
        registration.key().instance_id,
        registration.lease_id()
    );

    tokio::select! {
        r = serve(listener) => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    registration.shutdown().await?;
    println!("deregistered");
    Ok(())
}

/// Echoes each line back, prefixed with this instance's address.
async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (r, mut w) = socket.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if w.write_all(format!("{addr}: {line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}
