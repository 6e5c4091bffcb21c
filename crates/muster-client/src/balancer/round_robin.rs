//! Round robin: each available instance in turn, in instance-id order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::{available, Balancer, Picked};
use crate::registry::InstanceRecord;

/// Round robin over the available instances.
#[derive(Debug, Default)]
pub struct RoundRobin {
    list: RwLock<Vec<Arc<InstanceRecord>>>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for RoundRobin {
    fn update(&self, instances: &[InstanceRecord]) {
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = available(instances);
    }

    fn pick(&self, _key: Option<&[u8]>) -> Option<Picked> {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        if list.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % list.len();
        Some(Picked::new(list[i].clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn cycles_through_available_instances() {
        let b = RoundRobin::new();
        b.update(&[inst("a", 1), inst("b", 1), unhealthy("x"), inst("c", 1)]);
        assert_eq!(picks(&b, 6, None), ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn never_picks_unavailable_instances() {
        never_picks_unavailable(&RoundRobin::new());
    }
}
