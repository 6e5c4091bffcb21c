//! Latency samples: percentiles and throughput, printed as a table row or JSON.

use std::time::Duration;

pub struct Samples {
    sorted: Vec<Duration>,
    wall: Duration,
}

impl Samples {
    pub fn new(mut samples: Vec<Duration>, wall: Duration) -> Self {
        samples.sort();
        Samples {
            sorted: samples,
            wall,
        }
    }

    /// The `p`-th percentile (0–100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// The `p`-th percentile in milliseconds.
    pub fn ms(&self, p: f64) -> f64 {
        self.percentile(p).as_secs_f64() * 1000.0
    }

    pub fn print(&self, what: &str, json: bool) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let n = self.sorted.len();
        let rate = if self.wall.is_zero() {
            0.0
        } else {
            n as f64 / self.wall.as_secs_f64()
        };
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "what": what, "count": n, "per_sec": rate,
                    "p50_ms": ms(self.percentile(50.0)), "p90_ms": ms(self.percentile(90.0)),
                    "p99_ms": ms(self.percentile(99.0)), "max_ms": ms(self.percentile(100.0)),
                })
            );
        } else {
            println!(
                "{what}: n={n} rate={rate:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
                ms(self.percentile(50.0)),
                ms(self.percentile(90.0)),
                ms(self.percentile(99.0)),
                ms(self.percentile(100.0))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples::new(
            (1..=100).map(Duration::from_millis).collect(),
            Duration::from_secs(1),
        );
        assert_eq!(s.percentile(50.0), Duration::from_millis(50));
        assert_eq!(s.percentile(99.0), Duration::from_millis(99));
        assert_eq!(s.percentile(100.0), Duration::from_millis(100));
        assert_eq!(
            Samples::new(vec![], Duration::ZERO).percentile(50.0),
            Duration::ZERO
        );
    }
}
