//! Least outstanding requests: the available instance with the fewest picks still held
//! (in flight). Ties rotate, so an idle set is spread round-robin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::{Balancer, Load, Loads, Picked};
use crate::registry::InstanceRecord;

/// Least outstanding requests over the available instances.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    loads: Loads,
    list: RwLock<Vec<(Arc<InstanceRecord>, Arc<Load>)>>,
    rotate: AtomicUsize,
}

impl LeastOutstanding {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests in flight on instance `id` (0 when unknown).
    pub fn outstanding(&self, id: &str) -> u64 {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .find(|(i, _)| i.id() == id)
            .map_or(0, |(_, l)| l.outstanding())
    }
}

impl Balancer for LeastOutstanding {
    fn update(&self, instances: &[InstanceRecord]) {
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = self.loads.sync(instances);
    }

    fn pick(&self, _key: Option<&[u8]>) -> Option<Picked> {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        let n = list.len();
        if n == 0 {
            return None;
        }
        let start = self.rotate.fetch_add(1, Ordering::Relaxed) % n;
        let (inst, load) = (0..n)
            .map(|k| &list[(start + k) % n])
            .min_by_key(|(_, l)| l.outstanding())?;
        Some(Picked::tracked(inst.clone(), load.clone(), 0.3))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn prefers_the_instance_with_fewest_in_flight() {
        let b = LeastOutstanding::new();
        b.update(&[inst("a", 1), inst("b", 1), inst("c", 1)]);
        // Hold two requests on whichever instances come first; the third goes to the idle one.
        let p1 = b.pick(None).expect("pick");
        let p2 = b.pick(None).expect("pick");
        let p3 = b.pick(None).expect("pick");
        let mut ids = vec![p1.instance().id(), p2.instance().id(), p3.instance().id()];
        ids.sort_unstable();
        assert_eq!(ids, ["a", "b", "c"], "one each while all are busy");
        let busy_id = p1.instance().id().to_string();
        drop(p2);
        drop(p3);
        // Only `busy_id` has a request in flight now: it is never chosen.
        for _ in 0..20 {
            let p = b.pick(None).expect("pick");
            assert_ne!(p.instance().id(), busy_id);
        }
        assert_eq!(b.outstanding(&busy_id), 1);
        drop(p1);
        assert_eq!(b.outstanding(&busy_id), 0);
    }

    #[test]
    fn in_flight_counts_survive_updates() {
        let b = LeastOutstanding::new();
        b.update(&[inst("a", 1), inst("b", 1)]);
        let held: Vec<_> = (0..4).map(|_| b.pick(None).expect("pick")).collect();
        b.update(&[inst("a", 1), inst("b", 1), inst("c", 1)]);
        let next: Vec<_> = picks(&b, 3, None);
        assert!(next.iter().all(|id| id == "c"), "{next:?}");
        drop(held);
    }

    #[test]
    fn never_picks_unavailable_instances() {
        never_picks_unavailable(&LeastOutstanding::new());
    }
}
