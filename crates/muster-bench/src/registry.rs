//! `register`: Registry.Register throughput for persistent instances with distinct ids.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use muster_proto::registrypb::registry_client::RegistryClient;
use muster_proto::registrypb::{Instance, RegisterRequest};

use crate::common::{channels, progress, share};
use crate::stats::Samples;

pub async fn bench_register(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    service: String,
    max: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let chans = channels(endpoints).await?;
    let concurrency = concurrency.max(1);
    // Distinct ids across runs, too, so a rerun measures creates rather than overwrites.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let started = Instant::now();
    let deadline = started + max;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = RegistryClient::new(chans[w % chans.len()].clone());
        let n = share(count, concurrency, w);
        let done = done.clone();
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                if Instant::now() >= deadline {
                    break;
                }
                let seq = w + i * concurrency;
                let req = RegisterRequest {
                    instance: Some(Instance {
                        service: service.clone(),
                        instance_id: format!("bench-{run}-{seq}"),
                        address: format!(
                            "10.{}.{}.{}",
                            (seq >> 16) & 255,
                            (seq >> 8) & 255,
                            seq & 255
                        ),
                        port: 8080,
                        ephemeral: false,
                        ..Default::default()
                    }),
                    ttl_secs: 0,
                    lease_id: 0,
                };
                let t = Instant::now();
                client.register(req).await.context("Register")?;
                lat.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(lat)
        }));
    }
    let p = progress("registers", done, count);
    let mut all = Vec::with_capacity(count);
    for t in tasks {
        all.extend(t.await??);
    }
    p.abort();
    Samples::new(all, started.elapsed()).print("register (persistent)", json);
    Ok(())
}
