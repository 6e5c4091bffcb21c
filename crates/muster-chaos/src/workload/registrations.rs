//! Lease-backed registrations: each registrant grants a lease, puts `chaos/reg/{r}/{gen}` under
//! it, then once a tick sends a keep-alive and checks (linearizable read) that its key is still
//! there. A registrant talks to one node at a time and moves to the next on any failure (a
//! renewal may take at most TTL/4, capped by the request deadline), so a frozen or cut-off node
//! cannot starve it.
//!
//! **Spurious expiry**: the server may expire a lease only after a full TTL without renewal, and
//! a renewal counts from when the leader received it — no earlier than when we *sent* it. So a
//! key found gone at `t` is a spurious expiry if `t < sent(last acked keep-alive) + TTL`. A key
//! gone later than that is a legitimate expiry after keep-alive starvation (counted apart; it
//! says the cluster was unreachable for a TTL, not that it lied).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{backoff, client, Settings, REG_PREFIX};

/// Clock slack allowed when judging an expiry spurious.
pub const SLACK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Vanish {
    pub key: String,
    /// Time from sending the last acknowledged renewal to finding the key gone.
    pub since_renewal: Duration,
    /// How it was found: "keep-alive TTL 0" or "key missing".
    pub how: &'static str,
    /// `since_renewal < TTL` (minus slack): the lease was expired before its time.
    pub spurious: bool,
}

/// The registration still alive when the registrant was released.
#[derive(Debug, Clone)]
pub struct Live {
    pub key: String,
    pub lease: i64,
    /// When its key was put (acknowledged).
    pub registered_at: Instant,
    /// When the last acknowledged renewal (or the grant) was sent and acknowledged.
    pub renewal_sent: Instant,
    pub renewal_acked: Instant,
}

#[derive(Debug, Default)]
pub struct RegResult {
    pub registrant: usize,
    /// Registrations made (lease granted and key put).
    pub registrations: u64,
    pub grant_failures: u64,
    pub put_failures: u64,
    pub keepalives_ok: u64,
    pub keepalive_failures: u64,
    /// Longest time between sending a renewal that was acknowledged and the next such ack.
    pub max_renewal_gap: Duration,
    pub vanished: Vec<Vanish>,
    pub live: Option<Live>,
}

/// Runs registrant `r` until `release`.
///
/// # Errors
/// Only if a client cannot be built.
pub async fn run(
    settings: Settings,
    r: usize,
    ttl: i64,
    tick: Duration,
    release: CancellationToken,
) -> anyhow::Result<RegResult> {
    let eps = &settings.endpoints;
    let mut clients = Vec::with_capacity(eps.len());
    for ep in eps {
        clients.push(client(std::slice::from_ref(ep), settings.op_timeout).await?);
    }
    let mut on = r % clients.len();
    let ttl_d = Duration::from_secs(u64::try_from(ttl).unwrap_or(1));
    // A renewal gets a quarter of the TTL before the registrant tries the next node, so even a
    // tour of three unresponsive nodes leaves time to renew on the fourth try.
    let renew_timeout = settings
        .op_timeout
        .min(ttl_d / 4)
        .max(Duration::from_millis(500));
    let mut out = RegResult {
        registrant: r,
        ..Default::default()
    };
    let mut generation = 0u64;

    'register: for _ in 0..settings.max_ops {
        if release.is_cancelled() {
            break;
        }
        // Grant.
        let sent = Instant::now();
        let lease = match clients[on].lease_grant(ttl, None).await {
            Ok(g) => g.id(),
            Err(_) => {
                out.grant_failures += 1;
                on = (on + 1) % clients.len();
                backoff().await;
                continue;
            }
        };
        // Attach the key while the lease surely lives; otherwise start over with a new lease
        // (the old one expires unattended).
        let key = format!("{REG_PREFIX}{r}/{generation:06}");
        generation += 1;
        let opts = etcd_client::PutOptions::new().with_lease(lease);
        let mut put = false;
        while sent.elapsed() + settings.op_timeout < ttl_d && !release.is_cancelled() {
            match clients[on]
                .put(key.clone(), format!("registrant {r}"), Some(opts.clone()))
                .await
            {
                Ok(_) => {
                    put = true;
                    break;
                }
                Err(_) => {
                    out.put_failures += 1;
                    on = (on + 1) % clients.len();
                    backoff().await;
                }
            }
        }
        if !put {
            continue;
        }
        out.registrations += 1;
        let now = Instant::now();
        let mut live = Live {
            key: key.clone(),
            lease,
            registered_at: now,
            renewal_sent: sent,
            renewal_acked: now,
        };
        let mut stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> =
            None;

        for _ in 0..settings.max_ops {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = release.cancelled() => {
                    out.live = Some(live);
                    return Ok(out);
                }
            }
            // Renew.
            let sent = Instant::now();
            let renewed = async {
                if stream.is_none() {
                    stream = Some(clients[on].lease_keep_alive(lease).await.ok()?);
                }
                let (keeper, s) = stream.as_mut()?;
                keeper.keep_alive().await.ok()?;
                s.message().await.ok()?.map(|m| m.ttl())
            };
            match tokio::time::timeout(renew_timeout, renewed).await {
                Ok(Some(t)) if t > 0 => {
                    out.keepalives_ok += 1;
                    let gap = sent.saturating_duration_since(live.renewal_sent);
                    out.max_renewal_gap = out.max_renewal_gap.max(gap);
                    live.renewal_sent = sent;
                    live.renewal_acked = Instant::now();
                }
                Ok(Some(_)) => {
                    out.vanished.push(vanish(&live, "keep-alive TTL 0", ttl_d));
                    continue 'register;
                }
                _ => {
                    out.keepalive_failures += 1;
                    stream = None;
                    on = (on + 1) % clients.len();
                    continue;
                }
            }
            // Is the key still there? (linearizable read)
            match tokio::time::timeout(renew_timeout, clients[on].get(key.as_str(), None)).await {
                Ok(Ok(g)) if g.kvs().is_empty() => {
                    out.vanished.push(vanish(&live, "key missing", ttl_d));
                    continue 'register;
                }
                Ok(Ok(_)) => {}
                _ => {
                    stream = None;
                    on = (on + 1) % clients.len();
                }
            }
        }
    }
    Ok(out)
}

fn vanish(live: &Live, how: &'static str, ttl: Duration) -> Vanish {
    let since = live.renewal_sent.elapsed();
    Vanish {
        key: live.key.clone(),
        since_renewal: since,
        how,
        spurious: since + SLACK < ttl,
    }
}
