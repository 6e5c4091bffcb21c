//! Fault injection on this node's calls to its peers, for tests. [`crate::network::PeerChannels`]
//! holds one [`Faults`] and every node-to-node path consults it per message: unary calls
//! (`network::call`), replication streams (`stream_append`) and forwarded writes
//! (`forward_stream.rs`).
//!
//! A fault is per direction: set on node A for peer address B, it affects the calls A makes to
//! B (their requests and, for a black hole, their answers); B's calls to A have their own.
//! - block: a call fails at once, known not sent (as a refused connection).
//! - black hole: a call is accepted and never answered; the caller sees nothing until its own
//!   deadline, and cannot know whether the request took effect.
//! - delay: each message is held this long before it leaves.
//! - drop: each message is lost with a probability, before it leaves; the caller learns at
//!   once, as of a refused connection (a stream ends). Drawn from a seeded RNG, so a failing
//!   run can be replayed with its seed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The seed used until [`Faults::seed`] sets one.
const DEFAULT_SEED: u64 = 0x6d75_7374_6572;

/// The faults on calls to one peer address.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Link {
    blocked: bool,
    black_hole: bool,
    delay: Duration,
    drop_probability: f64,
}

/// What happens to one message to a peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Verdict {
    /// Sent, after `delay`.
    Pass { delay: Duration },
    /// Not sent; the caller knows at once (blocked).
    Blocked,
    /// Not sent; the caller knows at once (dropped by chance).
    Dropped,
    /// Swallowed: no answer ever comes.
    BlackHole,
}

/// The injected faults of one node, by peer address.
pub struct Faults {
    /// Whether any fault is set: the common case (none) costs one atomic load per message.
    any: AtomicBool,
    links: Mutex<HashMap<String, Link>>,
    rng: Mutex<StdRng>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            any: AtomicBool::new(false),
            links: Mutex::default(),
            rng: Mutex::new(StdRng::seed_from_u64(DEFAULT_SEED)),
        }
    }
}

impl Faults {
    fn change(&self, addr: &str, f: impl FnOnce(&mut Link)) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        f(links.entry(addr.to_string()).or_default());
        self.any.store(true, Ordering::Release);
    }

    fn link(&self, addr: &str) -> Option<Link> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.get(addr).copied()
    }

    /// Reseeds the drop RNG (the testkit logs the seed it uses).
    pub fn seed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|p| p.into_inner()) = StdRng::seed_from_u64(seed);
    }

    /// Calls to `addr` fail at once, not sent.
    pub fn block(&self, addr: &str) {
        self.change(addr, |l| l.blocked = true);
    }

    /// Calls to `addr` are never answered.
    pub fn black_hole(&self, addr: &str) {
        self.change(addr, |l| l.black_hole = true);
    }

    /// Messages to `addr` are held `delay` before they leave.
    pub fn delay(&self, addr: &str, delay: Duration) {
        self.change(addr, |l| l.delay = delay);
    }

    /// Messages to `addr` are lost with probability `p` (clamped to 0..=1).
    pub fn drop_messages(&self, addr: &str, p: f64) {
        let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self.change(addr, |l| l.drop_probability = p);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.any.store(false, Ordering::Release);
    }

    /// Whether calls to `addr` are blocked (checked again while a stream is open).
    pub(crate) fn is_blocked(&self, addr: &str) -> bool {
        self.link(addr).is_some_and(|l| l.blocked)
    }

    /// Whether calls to `addr` are black-holed (answers on open streams are swallowed).
    pub(crate) fn is_black_holed(&self, addr: &str) -> bool {
        self.link(addr).is_some_and(|l| l.black_hole)
    }

    /// The fate of one message to `addr` (draws from the RNG when drops are set).
    pub(crate) fn verdict(&self, addr: &str) -> Verdict {
        let Some(l) = self.link(addr) else {
            return Verdict::Pass {
                delay: Duration::ZERO,
            };
        };
        if l.blocked {
            return Verdict::Blocked;
        }
        if l.black_hole {
            return Verdict::BlackHole;
        }
        if l.drop_probability > 0.0 {
            let roll: f64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).gen();
            if roll < l.drop_probability {
                return Verdict::Dropped;
            }
        }
        Verdict::Pass { delay: l.delay }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_per_address_and_heal_clears_them() {
        let f = Faults::default();
        let pass = Verdict::Pass {
            delay: Duration::ZERO,
        };
        assert_eq!(f.verdict("a"), pass);
        f.block("a");
        f.black_hole("b");
        f.delay("c", Duration::from_millis(30));
        assert_eq!(f.verdict("a"), Verdict::Blocked);
        assert_eq!(f.verdict("b"), Verdict::BlackHole);
        assert_eq!(
            f.verdict("c"),
            Verdict::Pass {
                delay: Duration::from_millis(30)
            }
        );
        assert_eq!(f.verdict("d"), pass);
        assert!(f.is_blocked("a") && !f.is_blocked("b") && f.is_black_holed("b"));
        f.heal();
        for addr in ["a", "b", "c"] {
            assert_eq!(f.verdict(addr), pass);
        }
    }

    #[test]
    fn drops_follow_the_probability_and_the_seed() {
        let draw = |seed: u64| {
            let f = Faults::default();
            f.seed(seed);
            f.drop_messages("a", 0.3);
            (0..2000)
                .map(|_| f.verdict("a") == Verdict::Dropped)
                .collect::<Vec<_>>()
        };
        let run = draw(7);
        let dropped = run.iter().filter(|d| **d).count();
        assert!(
            (450..750).contains(&dropped),
            "{dropped} of 2000 dropped at p = 0.3"
        );
        assert_eq!(run, draw(7), "the same seed drops the same messages");
        let f = Faults::default();
        f.drop_messages("a", 1.0);
        assert_eq!(f.verdict("a"), Verdict::Dropped);
        f.drop_messages("a", 0.0);
        assert!(matches!(f.verdict("a"), Verdict::Pass { .. }));
    }
}
