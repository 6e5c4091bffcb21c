//! Discovers the `echo` service (see the `echo_service` example) through a discovery cache and
//! spreads requests over its instances with a latency-aware balancer.
//!
//! ```text
//! cargo run -p muster-client --example echo_client -- 127.0.0.1:2379 20
//! ```
//! Arguments: the Muster endpoints (comma-separated) and the number of requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use muster_client::balancer::PowerOfTwo;
use muster_client::{Client, ClientOptions, ServiceName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoints = args.next().unwrap_or_else(|| "127.0.0.1:2379".into());
    let requests: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20);

    let client = Client::connect(endpoints.split(','), ClientOptions::default()).await?;
    let cache = client.discovery_cache(ServiceName::new("", "", "echo")?);
    cache.wait_synced(Duration::from_secs(10)).await?;
    println!("{} echo instance(s) available", cache.available().len());
    let lb = cache.balanced(PowerOfTwo::new());

    let mut per_instance: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..requests {
        let Some(picked) = lb.pick(None) else {
            println!("no echo instance available");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let addr = picked.instance().addr();
        let started = Instant::now();
        match echo(&addr, &format!("hello {i}")).await {
            Ok(reply) => {
                picked.finish(started.elapsed());
                *per_instance.entry(addr).or_default() += 1;
                println!("{reply}");
            }
            Err(e) => println!("{addr}: {e}"),
        }
    }
    println!("requests per instance: {per_instance:?}");
    Ok(())
}

async fn echo(addr: &str, msg: &str) -> anyhow::Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{msg}\n").as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    Ok(lines.next_line().await?.unwrap_or_default())
}
