//! Smooth weighted round robin (nginx's algorithm). On each pick every instance's `current`
//! grows by its weight; the instance with the largest `current` is picked and loses the total
//! weight. Over any `Σ weights` consecutive picks each instance is picked exactly `weight`
//! times, interleaved rather than in bursts (weights 5,1,1 give a a b a c a a). Instances of
//! weight 0 are never picked.

use std::sync::{Arc, Mutex};

use super::{available, Balancer, Picked};
use crate::registry::InstanceRecord;

#[derive(Debug)]
struct Entry {
    instance: Arc<InstanceRecord>,
    weight: i64,
    current: i64,
}

/// Smooth weighted round robin over the available instances' weights.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    entries: Mutex<Vec<Entry>>,
}

impl SmoothWeighted {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for SmoothWeighted {
    fn update(&self, instances: &[InstanceRecord]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let next: Vec<Entry> = available(instances)
            .into_iter()
            .filter(|i| i.instance.weight > 0)
            .map(|i| {
                // An instance that stays keeps its position in the cycle.
                let current = entries
                    .iter()
                    .find(|e| e.instance.id() == i.id())
                    .map_or(0, |e| e.current);
                Entry {
                    weight: i64::from(i.instance.weight),
                    instance: i,
                    current,
                }
            })
            .collect();
        *entries = next;
    }

    fn pick(&self, _key: Option<&[u8]>) -> Option<Picked> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let total: i64 = entries.iter().map(|e| e.weight).sum();
        for e in entries.iter_mut() {
            e.current += e.weight;
        }
        // The largest `current`; on a tie the first (instance-id order), as nginx does.
        let best = entries
            .iter()
            .enumerate()
            .max_by(|(ia, a), (ib, b)| a.current.cmp(&b.current).then(ib.cmp(ia)))
            .map(|(i, _)| i)?;
        entries[best].current -= total;
        Some(Picked::new(entries[best].instance.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::test_util::*;
    use super::*;

    #[test]
    fn matches_nginx_sequence() {
        let b = SmoothWeighted::new();
        b.update(&[inst("a", 5), inst("b", 1), inst("c", 1)]);
        assert_eq!(picks(&b, 7, None), ["a", "a", "b", "a", "c", "a", "a"]);
    }

    #[test]
    fn every_cycle_matches_the_weights_exactly() {
        let b = SmoothWeighted::new();
        let weights = [("a", 7u32), ("b", 3), ("c", 1), ("d", 0), ("e", 13)];
        let set: Vec<_> = weights.iter().map(|(id, w)| inst(id, *w)).collect();
        b.update(&set);
        let cycle: usize = weights.iter().map(|(_, w)| *w as usize).sum();
        for round in 0..5 {
            let mut counts: BTreeMap<String, u32> = BTreeMap::new();
            for id in picks(&b, cycle, None) {
                *counts.entry(id).or_default() += 1;
            }
            let want: BTreeMap<String, u32> = weights
                .iter()
                .filter(|(_, w)| *w > 0)
                .map(|(id, w)| (id.to_string(), *w))
                .collect();
            assert_eq!(counts, want, "cycle {round}");
        }
    }

    #[test]
    fn never_picks_unavailable_instances() {
        never_picks_unavailable(&SmoothWeighted::new());
    }
}
