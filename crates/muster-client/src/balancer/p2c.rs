//! Latency-aware power of two choices: pick two distinct available instances at random and
//! take the one with the lower cost, `EWMA latency × (in flight + 1)`. An instance without a
//! latency sample costs 0, so a newcomer is tried at once and measured. Feed latencies back
//! with [`Picked::finish`](super::Picked::finish). The RNG is seedable for tests.

use std::sync::{Arc, Mutex, RwLock};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Balancer, Load, Loads, Picked};
use crate::registry::InstanceRecord;

/// Weight of a new latency sample in the EWMA unless configured.
pub const DEFAULT_ALPHA: f64 = 0.3;

/// Power of two choices with EWMA latency.
#[derive(Debug)]
pub struct PowerOfTwo {
    loads: Loads,
    list: RwLock<Vec<(Arc<InstanceRecord>, Arc<Load>)>>,
    rng: Mutex<StdRng>,
    alpha: f64,
}

impl Default for PowerOfTwo {
    fn default() -> Self {
        Self::with_rng(StdRng::from_entropy())
    }
}

impl PowerOfTwo {
    pub fn new() -> Self {
        Self::default()
    }

    /// A balancer whose random choices are reproducible.
    pub fn with_seed(seed: u64) -> Self {
        Self::with_rng(StdRng::seed_from_u64(seed))
    }

    fn with_rng(rng: StdRng) -> Self {
        PowerOfTwo {
            loads: Loads::default(),
            list: RwLock::new(Vec::new()),
            rng: Mutex::new(rng),
            alpha: DEFAULT_ALPHA,
        }
    }

    /// Sets the EWMA weight of a new sample (0 < alpha ≤ 1).
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha.clamp(f64::MIN_POSITIVE, 1.0);
        self
    }

    fn cost(load: &Load) -> f64 {
        let ewma = load.ewma().map_or(0.0, |d| d.as_nanos() as f64);
        ewma * (load.outstanding() as f64 + 1.0)
    }
}

impl Balancer for PowerOfTwo {
    fn update(&self, instances: &[InstanceRecord]) {
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = self.loads.sync(instances);
    }

    fn pick(&self, _key: Option<&[u8]>) -> Option<Picked> {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        let n = list.len();
        let chosen = match n {
            0 => return None,
            1 => 0,
            _ => {
                let (a, b) = {
                    let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                    let a = rng.gen_range(0..n);
                    let b = (a + rng.gen_range(1..n)) % n;
                    (a, b)
                };
                if Self::cost(&list[b].1) < Self::cost(&list[a].1) {
                    b
                } else {
                    a
                }
            }
        };
        let (inst, load) = &list[chosen];
        Some(Picked::tracked(inst.clone(), load.clone(), self.alpha))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::super::test_util::*;
    use super::*;

    /// Runs `n` requests; instance latencies come from `latency`.
    fn run(
        b: &PowerOfTwo,
        n: usize,
        latency: impl Fn(&str) -> Duration,
    ) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let p = b.pick(None).expect("pick");
            let id = p.instance().id().to_string();
            p.finish(latency(&id));
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn prefers_a_fast_instance_over_a_slow_one() {
        let b = PowerOfTwo::with_seed(7);
        b.update(&[inst("fast", 100), inst("slow", 100)]);
        let latency = |id: &str| {
            if id == "fast" {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(100)
            }
        };
        let counts = run(&b, 1000, latency);
        let fast = counts.get("fast").copied().unwrap_or(0);
        assert!(fast >= 990, "fast picked {fast} of 1000: {counts:?}");
    }

    #[test]
    fn spreads_over_many_and_avoids_the_slow_one() {
        let b = PowerOfTwo::with_seed(42);
        let set: Vec<_> = (0..5).map(|i| inst(&format!("n{i}"), 100)).collect();
        b.update(&set);
        let counts = run(&b, 5000, |id| {
            Duration::from_millis(if id == "n3" { 200 } else { 10 })
        });
        let slow = counts.get("n3").copied().unwrap_or(0);
        assert!(slow < 100, "slow instance picked {slow} times: {counts:?}");
        for i in [0, 1, 2, 4] {
            let c = counts.get(&format!("n{i}")).copied().unwrap_or(0);
            assert!(c > 800, "n{i} picked {c} times: {counts:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let set: Vec<_> = (0..4).map(|i| inst(&format!("n{i}"), 100)).collect();
        let (a, b) = (PowerOfTwo::with_seed(3), PowerOfTwo::with_seed(3));
        a.update(&set);
        b.update(&set);
        let l = |_: &str| Duration::from_millis(1);
        assert_eq!(run(&a, 200, l), run(&b, 200, l));
    }

    #[test]
    fn never_picks_unavailable_instances() {
        never_picks_unavailable(&PowerOfTwo::with_seed(1));
    }
}
