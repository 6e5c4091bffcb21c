//! Lease benchmarks: `lease-grant` (LeaseGrant throughput/latency) and `keepalive` (many leases
//! kept alive over ONE LeaseKeepAlive stream); the grant and revoke loops `registry` reuses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use muster_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::common::{channels, progress, share, worker_channels};
use crate::load::{closed_loop, Op};
use crate::stats::Samples;

/// LeaseGrant with the server choosing the id.
pub async fn grant_one(lease: &mut LeaseClient<Channel>, ttl: i64) -> anyhow::Result<i64> {
    let r = lease
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .context("LeaseGrant")?
        .into_inner();
    anyhow::ensure!(r.error.is_empty(), "LeaseGrant error: {}", r.error);
    Ok(r.id)
}

struct GrantOp {
    lease: LeaseClient<Channel>,
    ttl: i64,
    ids: Vec<i64>,
}

impl Op for GrantOp {
    async fn call(&mut self, _: usize) -> anyhow::Result<()> {
        let id = grant_one(&mut self.lease, self.ttl).await?;
        self.ids.push(id);
        Ok(())
    }
}

/// Grants `count` leases from the workers on `chans`; returns the latency samples and the ids.
pub async fn grant(
    chans: &[Channel],
    count: usize,
    ttl: i64,
    deadline: Instant,
    what: &'static str,
) -> anyhow::Result<(Samples, Vec<i64>)> {
    let ops = chans
        .iter()
        .map(|ch| GrantOp {
            lease: LeaseClient::new(ch.clone()),
            ttl,
            ids: Vec::new(),
        })
        .collect();
    let (s, ops) = closed_loop(ops, count, deadline, what).await?;
    Ok((s, ops.into_iter().flat_map(|o| o.ids).collect()))
}

/// Revokes the leases it holds, one per call.
struct RevokeOp {
    lease: LeaseClient<Channel>,
    ids: Vec<i64>,
}

impl Op for RevokeOp {
    async fn call(&mut self, _: usize) -> anyhow::Result<()> {
        let id = self.ids.pop().context("no lease left to revoke")?;
        self.lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .context("LeaseRevoke")?;
        Ok(())
    }
}

/// Revokes `ids` from the workers on `chans`; returns the latency samples.
pub async fn revoke(
    chans: &[Channel],
    mut ids: Vec<i64>,
    deadline: Instant,
) -> anyhow::Result<Samples> {
    let n = chans.len();
    let total = ids.len();
    // Worker w is asked for exactly share(total, n, w) revokes: give it that many ids.
    let ops = chans
        .iter()
        .enumerate()
        .map(|(w, ch)| RevokeOp {
            lease: LeaseClient::new(ch.clone()),
            ids: ids.split_off(ids.len() - share(total, n, w)),
        })
        .collect();
    let (s, _) = closed_loop(ops, total, deadline, "revokes").await?;
    Ok(s)
}

/// `lease-grant`: `count` grants from `concurrency` clients, then (unless `keep`) the revokes.
pub async fn bench_lease_grant(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    ttl: i64,
    keep: bool,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let chans = worker_channels(endpoints, concurrency.max(1)).await?;
    let (s, ids) = grant(&chans, count, ttl, deadline, "grants").await?;
    let revoked = if keep {
        Value::Null
    } else {
        revoke(&chans, ids, deadline).await?.json()
    };
    Ok(s.json_with(
        "lease-grant",
        json!({"concurrency": concurrency, "ttl": ttl, "revoke": revoked}),
    ))
}

/// `keepalive`: grants `leases` leases (TTL 60), then keeps them all alive over ONE stream on
/// the first endpoint for `rounds` rounds; revokes them afterwards.
pub async fn bench_keepalive(
    endpoints: &[String],
    leases: usize,
    rounds: usize,
    grant_concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let chans = worker_channels(endpoints, grant_concurrency.max(1)).await?;
    eprintln!("granting {leases} leases (TTL 60)…");
    let (g, ids) = grant(&chans, leases, 60, deadline, "grants").await?;
    anyhow::ensure!(
        ids.len() == leases,
        "only {} of {leases} leases granted",
        ids.len()
    );

    // One bidirectional stream, on the first endpoint, carrying every lease. etcd sends the
    // response headers only with its first answer: queue one keep-alive before opening.
    let mut client = LeaseClient::new(channels(&endpoints[..1]).await?.remove(0));
    let (tx, rx) = futures::channel::mpsc::unbounded::<LeaseKeepAliveRequest>();
    tx.unbounded_send(LeaseKeepAliveRequest { id: ids[0] })
        .context("keep-alive stream closed")?;
    let left = deadline.saturating_duration_since(Instant::now());
    let mut resp = tokio::time::timeout(left, client.lease_keep_alive(rx))
        .await
        .context("timed out opening the LeaseKeepAlive stream")?
        .context("opening LeaseKeepAlive stream")?
        .into_inner();
    tokio::time::timeout(left, resp.next())
        .await
        .context("timed out waiting for the first keep-alive answer")?
        .context("keep-alive stream ended")?
        .context("keep-alive stream error")?;

    let done = Arc::new(AtomicUsize::new(0));
    let p = progress("keep-alives", done.clone(), leases * rounds);
    let started = Instant::now();
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
    drop(p);
    drop(tx);
    let s = Samples::new(round_lat, wall);
    let revoked = revoke(&chans, ids, deadline).await?;
    Ok(json!({
        "what": "keepalive", "leases": leases, "rounds": s.len(),
        "keepalives": answered, "keepalives_per_sec": answered as f64 / wall.as_secs_f64(),
        "ttl_zero": expired,
        "round_p50_ms": s.ms(50.0), "round_p99_ms": s.ms(99.0), "round_max_ms": s.ms(100.0),
        "grant": g.json(), "revoke": revoked.json(),
    }))
}
