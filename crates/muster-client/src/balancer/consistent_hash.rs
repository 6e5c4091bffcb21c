//! Consistent hashing with virtual nodes: each available instance owns `vnodes` points on a
//! 64-bit ring (hash of `"{instance_id}#{n}"`); a key belongs to the first point at or after
//! its hash. When an instance leaves only the keys it owned move (about 1/N of them); keys
//! owned by the others stay where they were. Picks without a key rotate round-robin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::{available, hash64, Balancer, Picked};
use crate::registry::InstanceRecord;

/// Virtual nodes per instance unless configured.
pub const DEFAULT_VNODES: usize = 160;

#[derive(Debug, Default)]
struct Ring {
    /// (point, index into `instances`), sorted by point.
    points: Vec<(u64, usize)>,
    instances: Vec<Arc<InstanceRecord>>,
}

/// A consistent-hash ring over the available instances.
#[derive(Debug)]
pub struct ConsistentHash {
    vnodes: usize,
    ring: RwLock<Ring>,
    rotate: AtomicUsize,
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new(DEFAULT_VNODES)
    }
}

impl ConsistentHash {
    /// A ring with `vnodes` points per instance (at least 1).
    pub fn new(vnodes: usize) -> Self {
        ConsistentHash {
            vnodes: vnodes.max(1),
            ring: RwLock::new(Ring::default()),
            rotate: AtomicUsize::new(0),
        }
    }
}

impl Balancer for ConsistentHash {
    fn update(&self, instances: &[InstanceRecord]) {
        let instances = available(instances);
        let mut points: Vec<(u64, usize)> = instances
            .iter()
            .enumerate()
            .flat_map(|(idx, inst)| {
                (0..self.vnodes)
                    .map(move |n| (hash64(format!("{}#{n}", inst.id()).as_bytes()), idx))
            })
            .collect();
        // Ties between points (astronomically rare) are broken by instance id, so every client
        // builds the same ring.
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| instances[a.1].id().cmp(instances[b.1].id()))
        });
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Ring { points, instances };
    }

    fn pick(&self, key: Option<&[u8]>) -> Option<Picked> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        if ring.instances.is_empty() {
            return None;
        }
        let idx = match key {
            None => self.rotate.fetch_add(1, Ordering::Relaxed) % ring.instances.len(),
            Some(k) => {
                let h = hash64(k);
                let at = ring.points.partition_point(|(p, _)| *p < h);
                ring.points[at % ring.points.len()].1
            }
        };
        Some(Picked::new(ring.instances[idx].clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::test_util::*;
    use super::*;

    fn owners(b: &ConsistentHash, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let key = format!("user-{k}");
                b.pick(Some(key.as_bytes()))
                    .map(|p| p.instance().id().to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_keys() {
        let n = 5;
        let set: Vec<_> = (0..n).map(|i| inst(&format!("node-{i}"), 100)).collect();
        let b = ConsistentHash::default();
        b.update(&set);
        let keys = 20_000;
        let before = owners(&b, keys);
        let mut load: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &before {
            *load.entry(o.as_str()).or_default() += 1;
        }
        for (id, count) in &load {
            let share = *count as f64 / keys as f64;
            assert!((0.12..0.28).contains(&share), "{id} owns {share:.3}");
        }
        let gone = "node-2";
        b.update(
            &set.iter()
                .filter(|i| i.id() != gone)
                .cloned()
                .collect::<Vec<_>>(),
        );
        let after = owners(&b, keys);
        let mut moved = 0;
        for (k, (was, now)) in before.iter().zip(&after).enumerate() {
            if was == gone {
                moved += 1;
                assert_ne!(now, gone);
            } else {
                assert_eq!(was, now, "key {k} owned by a remaining node moved");
            }
        }
        let fraction = moved as f64 / keys as f64;
        assert!(
            (0.12..0.28).contains(&fraction),
            "about 1/{n} of the keys move, got {fraction:.3}"
        );
        // The node comes back: every key returns to its old owner.
        b.update(&set);
        assert_eq!(owners(&b, keys), before);
    }

    #[test]
    fn same_key_same_instance_across_clients() {
        let set: Vec<_> = (0..4).map(|i| inst(&format!("n{i}"), 100)).collect();
        let (a, b) = (ConsistentHash::default(), ConsistentHash::default());
        a.update(&set);
        let mut reversed = set.clone();
        reversed.reverse();
        b.update(&reversed);
        assert_eq!(owners(&a, 1000), owners(&b, 1000));
    }

    #[test]
    fn never_picks_unavailable_instances() {
        never_picks_unavailable(&ConsistentHash::default());
    }
}
