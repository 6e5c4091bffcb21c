//! The per-endpoint circuit breaker (closed → open → half-open), a pure state machine over
//! `tokio::time::Instant` so it is tested under `tokio::time::pause()`.
//!
//! - **Closed**: calls go through; consecutive transport failures are counted, and reaching
//!   the threshold opens the breaker.
//! - **Open** until a deadline: the endpoint is skipped, so a dead node does not eat every
//!   call's deadline. The open period doubles with each consecutive trip (capped).
//! - **Half-open**: one probe call is let through; success closes the breaker, failure opens
//!   it again for a longer period. A probe abandoned without an outcome frees the slot.

use std::time::Duration;

use tokio::time::Instant;

use crate::options::BreakerConfig;

/// The breaker's state, as observable for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// One endpoint's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Consecutive trips without a success in between (sets the open period).
    trips: u32,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed { failures: 0 },
            trips: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go to the endpoint now, without taking the half-open probe slot.
    pub fn available(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { probing } => !probing,
        }
    }

    /// Asks to send a call; `true` lets it through (taking the probe slot when half-open).
    pub fn acquire(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
            BreakerState::HalfOpen { probing: true } => false,
        }
    }

    /// The endpoint answered (even with an application error).
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
        self.trips = 0;
    }

    /// The endpoint failed at the transport level (unreachable, connection lost, timeout).
    pub fn on_failure(&mut self, now: Instant) {
        match self.state {
            BreakerState::Closed { failures } if failures + 1 < self.config.failure_threshold => {
                self.state = BreakerState::Closed {
                    failures: failures + 1,
                };
            }
            // A failure reported while already open (a stream that broke late) just keeps it open.
            BreakerState::Open { .. } => {}
            _ => self.trip(now),
        }
    }

    /// A call let through gave no verdict (it was cancelled): free the probe slot.
    pub fn on_abandon(&mut self) {
        if let BreakerState::HalfOpen { probing: true } = self.state {
            self.state = BreakerState::HalfOpen { probing: false };
        }
    }

    fn trip(&mut self, now: Instant) {
        let factor = 1u32.checked_shl(self.trips.min(16)).unwrap_or(u32::MAX);
        let open_for: Duration = self
            .config
            .open_for
            .saturating_mul(factor)
            .min(self.config.max_open_for);
        self.trips = self.trips.saturating_add(1);
        self.state = BreakerState::Open {
            until: now + open_for,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_millis(100),
            max_open_for: Duration::from_millis(300),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_half_opens_one_probe() {
        let mut b = Breaker::new(cfg());
        let t0 = Instant::now();
        assert!(b.acquire(t0));
        b.on_failure(t0);
        assert!(b.acquire(t0), "one failure is below the threshold");
        b.on_failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t0 + Duration::from_millis(100)
            }
        );
        assert!(!b.acquire(Instant::now()), "open: skipped");
        tokio::time::advance(Duration::from_millis(100)).await;
        let now = Instant::now();
        assert!(b.acquire(now), "the probe goes through");
        assert!(!b.acquire(now), "only one probe at a time");
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_open_period_up_to_the_cap() {
        let mut b = Breaker::new(cfg());
        let mut periods = Vec::new();
        b.on_failure(Instant::now());
        b.on_failure(Instant::now());
        for _ in 0..4 {
            let BreakerState::Open { until } = b.state() else {
                panic!("expected open, got {:?}", b.state());
            };
            periods.push((until - Instant::now()).as_millis());
            tokio::time::advance(until - Instant::now()).await;
            assert!(b.acquire(Instant::now()));
            b.on_failure(Instant::now());
        }
        assert_eq!(periods, vec![100, 200, 300, 300]);
        // A success resets the escalation.
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(b.acquire(Instant::now()));
        b.on_success();
        b.on_failure(Instant::now());
        b.on_failure(Instant::now());
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Instant::now() + Duration::from_millis(100)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_the_slot() {
        let mut b = Breaker::new(cfg());
        b.on_failure(Instant::now());
        b.on_failure(Instant::now());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.acquire(Instant::now()));
        b.on_abandon();
        assert!(b.available(Instant::now()));
        assert!(b.acquire(Instant::now()));
    }
}
