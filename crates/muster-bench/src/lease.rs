//! Lease benchmarks: `lease-grant` (LeaseGrant throughput/latency) and `keepalive` (many leases
//! kept alive over ONE LeaseKeepAlive stream).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use muster_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use tonic::transport::Channel;

use crate::common::{channels, progress, share};
use crate::stats::Samples;

/// Grants `count` leases from `concurrency` workers (spread over the endpoints); returns the
/// latency samples and the granted ids.
pub async fn grant(
    chans: &[Channel],
    count: usize,
    concurrency: usize,
    ttl: i64,
    max: Duration,
    what: &'static str,
) -> anyhow::Result<(Samples, Vec<i64>)> {
    let concurrency = concurrency.max(1);
    let started = Instant::now();
    let deadline = started + max;
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = LeaseClient::new(chans[w % chans.len()].clone());
        let n = share(count, concurrency, w);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let r = client
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .context("LeaseGrant")?
                    .into_inner();
                lat.push(t.elapsed());
                anyhow::ensure!(r.error.is_empty(), "LeaseGrant error: {}", r.error);
                ids.push(r.id);
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((lat, ids))
        }));
    }
    let p = progress(what, done, count);
    let mut lat = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    for t in tasks {
        let (l, i) = t.await??;
        lat.extend(l);
        ids.extend(i);
    }
    p.abort();
    Ok((Samples::new(lat, started.elapsed()), ids))
}

/// Revokes `ids` from `concurrency` workers; returns the latency samples.
pub async fn revoke(
    chans: &[Channel],
    ids: Vec<i64>,
    concurrency: usize,
    max: Duration,
) -> anyhow::Result<Samples> {
    let concurrency = concurrency.max(1);
    let started = Instant::now();
    let deadline = started + max;
    let total = ids.len();
    let done = Arc::new(AtomicUsize::new(0));
    let mut buckets: Vec<Vec<i64>> = vec![Vec::new(); concurrency];
    for (i, id) in ids.into_iter().enumerate() {
        buckets[i % concurrency].push(id);
    }
    let mut tasks = Vec::new();
    for (w, bucket) in buckets.into_iter().enumerate() {
        let mut client = LeaseClient::new(chans[w % chans.len()].clone());
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(bucket.len());
            for id in bucket {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                client
                    .lease_revoke(LeaseRevokeRequest { id })
                    .await
                    .context("LeaseRevoke")?;
                lat.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(lat)
        }));
    }
    let p = progress("revokes", done, total);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    p.abort();
    Ok(Samples::new(lat, started.elapsed()))
}

pub async fn bench_lease_grant(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    ttl: i64,
    max: Duration,
    keep: bool,
    json: bool,
) -> anyhow::Result<()> {
    let chans = channels(endpoints).await?;
    let (s, ids) = grant(&chans, count, concurrency, ttl, max, "grants").await?;
    s.print("lease-grant", json);
    if !keep {
        let r = revoke(&chans, ids, concurrency, max).await?;
        r.print("lease-revoke (cleanup)", json);
    }
    Ok(())
}

pub async fn bench_keepalive(
    endpoints: &[String],
    leases: usize,
    rounds: usize,
    grant_concurrency: usize,
    max: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let chans = channels(endpoints).await?;
    eprintln!("granting {leases} leases (TTL 60)…");
    let (g, ids) = grant(&chans, leases, grant_concurrency, 60, max, "grants").await?;
    g.print("keepalive: setup lease-grant", json);
    anyhow::ensure!(
        ids.len() == leases,
        "only {} of {leases} leases granted",
        ids.len()
    );

    // One bidirectional stream, on the first endpoint, carrying every lease.
    let mut client = LeaseClient::new(chans[0].clone());
    let (tx, rx) = futures::channel::mpsc::unbounded::<LeaseKeepAliveRequest>();
    let mut resp = client
        .lease_keep_alive(rx)
        .await
        .context("opening LeaseKeepAlive stream")?
        .into_inner();

    let done = Arc::new(AtomicUsize::new(0));
    let p = progress("keep-alives", done.clone(), leases * rounds);
    let started = Instant::now();
    let deadline = started + max;
    let mut round_lat = Vec::with_capacity(rounds);
    let mut expired = 0usize;
    let mut answered = 0usize;
    'rounds: for round in 0..rounds {
        if Instant::now() >= deadline {
            break;
        }
        let t = Instant::now();
        for &id in &ids {
            tx.unbounded_send(LeaseKeepAliveRequest { id })
                .context("keep-alive stream closed")?;
        }
        let mut got = 0usize;
        while got < leases {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, resp.next()).await {
                Err(_) => {
                    eprintln!("  round {round}: deadline with {got}/{leases} answers");
                    break 'rounds;
                }
                Ok(None) => anyhow::bail!("keep-alive stream ended in round {round}"),
                Ok(Some(r)) => {
                    let r = r.context("keep-alive stream error")?;
                    if r.ttl <= 0 {
                        expired += 1;
                    }
                    got += 1;
                    answered += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        round_lat.push(t.elapsed());
    }
    let wall = started.elapsed();
    p.abort();
    drop(tx);
    let rate = answered as f64 / wall.as_secs_f64();
    let s = Samples::new(round_lat, wall);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "what": "keepalive", "leases": leases, "rounds": s.len(),
                "keepalives": answered, "keepalives_per_sec": rate, "ttl_zero": expired,
                "round_p50_ms": s.ms(50.0), "round_p99_ms": s.ms(99.0), "round_max_ms": s.ms(100.0),
            })
        );
    } else {
        println!(
            "keepalive: {leases} leases on one stream, {} rounds, {answered} keep-alives in {:.2}s = {rate:.0}/s (TTL 0 answers: {expired})",
            s.len(),
            wall.as_secs_f64()
        );
        s.print("keepalive: per-round latency", false);
    }
    let r = revoke(&chans, ids, grant_concurrency, max).await?;
    r.print("keepalive: lease-revoke (cleanup)", json);
    Ok(())
}
