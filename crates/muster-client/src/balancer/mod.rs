//! Load balancers over discovered instances, one file each:
//! - [`RoundRobin`]: each available instance in turn.
//! - [`SmoothWeighted`]: smooth weighted round robin (nginx's algorithm): over any
//!   `Σ weights` consecutive picks each instance is picked exactly `weight` times, spread out.
//! - [`LeastOutstanding`]: the instance with the fewest requests in flight.
//! - [`ConsistentHash`]: a hash ring with virtual nodes; a key moves only when its owner leaves
//!   (or a new instance takes over its arc).
//! - [`PowerOfTwo`]: latency-aware power of two choices: two random instances, the one with
//!   the lower EWMA latency × (in-flight + 1) wins.
//!
//! Every balancer drops unavailable instances (unhealthy or disabled) in
//! [`Balancer::update`], so they are never picked. Random choices use a seedable RNG.
//! A [`Picked`] tracks the request: drop it (or call [`Picked::finish`] with the measured
//! latency) when the request completes.

mod consistent_hash;
mod least_outstanding;
mod p2c;
mod round_robin;
mod weighted;

pub use consistent_hash::ConsistentHash;
pub use least_outstanding::LeastOutstanding;
pub use p2c::PowerOfTwo;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::registry::InstanceRecord;

/// A load-balancing policy.
pub trait Balancer: Send + Sync {
    /// Replaces the candidate set; unavailable instances are dropped. State of instances that
    /// stay (weights, in-flight counts, latency) is kept.
    fn update(&self, instances: &[InstanceRecord]);
    /// Picks an instance; `key` is used by hashing balancers and ignored by the others.
    fn pick(&self, key: Option<&[u8]>) -> Option<Picked>;
}

/// Per-instance load: requests in flight and an EWMA of latency.
#[derive(Debug, Default)]
pub struct Load {
    outstanding: AtomicU64,
    /// EWMA of latency in nanoseconds; `None` before the first sample.
    ewma: Mutex<Option<f64>>,
}

impl Load {
    /// Requests in flight.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }

    /// The latency EWMA, when measured.
    pub fn ewma(&self) -> Option<Duration> {
        let e = *self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        e.map(|n| Duration::from_nanos(n as u64))
    }

    fn record(&self, latency: Duration, alpha: f64) {
        let sample = latency.as_nanos() as f64;
        let mut e = self.ewma.lock().unwrap_or_else(|p| p.into_inner());
        *e = Some(match *e {
            None => sample,
            Some(prev) => alpha * sample + (1.0 - alpha) * prev,
        });
    }
}

/// Loads by instance id, kept across updates.
#[derive(Debug, Default)]
pub(crate) struct Loads(Mutex<HashMap<String, Arc<Load>>>);

impl Loads {
    /// The loads of `instances` (available ones only), forgetting instances that left.
    pub fn sync(&self, instances: &[InstanceRecord]) -> Vec<(Arc<InstanceRecord>, Arc<Load>)> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<(Arc<InstanceRecord>, Arc<Load>)> = available(instances)
            .into_iter()
            .map(|i| {
                let load = m.entry(i.id().to_string()).or_default().clone();
                (i, load)
            })
            .collect();
        m.retain(|id, _| live.iter().any(|(i, _)| i.id() == id));
        live
    }
}

/// The available instances, shared.
pub(crate) fn available(instances: &[InstanceRecord]) -> Vec<Arc<InstanceRecord>> {
    instances
        .iter()
        .filter(|i| i.is_available())
        .cloned()
        .map(Arc::new)
        .collect()
}

/// A picked instance. Holding it counts as one request in flight for balancers that track
/// load; drop it, or [`Picked::finish`] it with the measured latency, when done.
#[derive(Debug)]
pub struct Picked {
    instance: Arc<InstanceRecord>,
    load: Option<(Arc<Load>, f64)>,
    started: Instant,
}

impl Picked {
    pub(crate) fn new(instance: Arc<InstanceRecord>) -> Self {
        Picked {
            instance,
            load: None,
            started: Instant::now(),
        }
    }

    /// Counts a request in flight on `load` until dropped; latency feeds an EWMA with `alpha`.
    pub(crate) fn tracked(instance: Arc<InstanceRecord>, load: Arc<Load>, alpha: f64) -> Self {
        load.outstanding.fetch_add(1, Ordering::AcqRel);
        Picked {
            instance,
            load: Some((load, alpha)),
            started: Instant::now(),
        }
    }

    /// The instance to call.
    pub fn instance(&self) -> &InstanceRecord {
        &self.instance
    }

    /// The request finished after `latency` (feeds latency-aware balancers).
    pub fn finish(self, latency: Duration) {
        if let Some((load, alpha)) = &self.load {
            load.record(latency, *alpha);
        }
    }

    /// The request finished now (latency measured since the pick).
    pub fn finish_now(self) {
        let latency = self.started.elapsed();
        self.finish(latency);
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        if let Some((load, _)) = &self.load {
            load.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A stable 64-bit hash (FNV-1a, then the splitmix64 finaliser for avalanche), the same on
/// every platform and build, so every client maps a key to the same instance.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::collections::BTreeMap;

    use super::*;
    use crate::registry::Instance;

    /// An available instance `id` with `weight`.
    pub fn inst(id: &str, weight: u32) -> InstanceRecord {
        InstanceRecord {
            instance: Instance {
                namespace: "public".into(),
                group: "DEFAULT_GROUP".into(),
                service: "svc".into(),
                instance_id: id.into(),
                address: "10.0.0.1".into(),
                port: 80,
                weight,
                metadata: BTreeMap::new(),
                healthy: true,
                enabled: true,
                ephemeral: true,
                cluster: String::new(),
                registered_at_ms: 0,
            },
            lease_id: 1,
            mod_revision: 1,
        }
    }

    /// Instance `id`, unhealthy.
    pub fn unhealthy(id: &str) -> InstanceRecord {
        let mut i = inst(id, 100);
        i.instance.healthy = false;
        i
    }

    /// Instance `id`, disabled.
    pub fn disabled(id: &str) -> InstanceRecord {
        let mut i = inst(id, 100);
        i.instance.enabled = false;
        i
    }

    /// Ids of `n` picks (dropping each pick at once).
    pub fn picks(b: &dyn Balancer, n: usize, key: Option<&[u8]>) -> Vec<String> {
        (0..n)
            .filter_map(|_| b.pick(key).map(|p| p.instance().id().to_string()))
            .collect()
    }

    /// Every balancer skips unhealthy and disabled instances.
    pub fn never_picks_unavailable(b: &dyn Balancer) {
        b.update(&[unhealthy("sick"), inst("ok", 100), disabled("off")]);
        for (i, id) in picks(b, 200, None).into_iter().enumerate() {
            assert_eq!(id, "ok", "pick {i}");
        }
        for k in 0..200u32 {
            let key = k.to_be_bytes();
            let p = b.pick(Some(&key)).map(|p| p.instance().id().to_string());
            assert_eq!(p.as_deref(), Some("ok"));
        }
        b.update(&[unhealthy("sick"), disabled("off")]);
        assert!(b.pick(None).is_none(), "nothing available: no pick");
    }
}
