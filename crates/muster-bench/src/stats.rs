//! Latency samples (percentiles, throughput) and the result output: every subcommand returns
//! one JSON object, printed as one line (`--json`) or as indented `key: value` text.

use std::time::Duration;

use serde_json::{json, Value};

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

    /// Samples per second of wall time (0 when no wall time was given).
    pub fn rate(&self) -> f64 {
        if self.wall.is_zero() {
            0.0
        } else {
            self.sorted.len() as f64 / self.wall.as_secs_f64()
        }
    }

    /// `{count, per_sec, secs, p50_ms, p90_ms, p99_ms, max_ms}`.
    pub fn json(&self) -> Value {
        json!({
            "count": self.len(), "per_sec": self.rate(), "secs": self.wall.as_secs_f64(),
            "p50_ms": self.ms(50.0), "p90_ms": self.ms(90.0),
            "p99_ms": self.ms(99.0), "max_ms": self.ms(100.0),
        })
    }

    /// [`Samples::json`] with `what` and the extra fields of `extra` (an object) merged in.
    pub fn json_with(&self, what: &str, extra: Value) -> Value {
        let mut v = self.json();
        v["what"] = json!(what);
        if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
            obj.extend(more);
        }
        v
    }
}

/// Prints a result: one JSON line, or text with nested objects indented.
pub fn emit(result: &Value, json: bool) {
    if json {
        println!("{result}");
    } else {
        let mut out = String::new();
        let mut rest = result.clone();
        if let Some(Value::String(what)) = rest.as_object_mut().and_then(|m| m.remove("what")) {
            out.push_str(&format!("{what}:\n"));
            text(&rest, 1, &mut out);
        } else {
            text(&rest, 0, &mut out);
        }
        print!("{out}");
    }
}

fn text(v: &Value, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Object(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        text(v, depth + 1, out);
                    }
                    Value::Array(items) if items.iter().any(Value::is_object) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        for item in items {
                            text(item, depth + 1, out);
                            out.push_str(&format!("{pad}  --\n"));
                        }
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
        assert_eq!(s.rate(), 100.0);
        assert_eq!(
            Samples::new(vec![], Duration::ZERO).percentile(50.0),
            Duration::ZERO
        );
    }

    #[test]
    fn json_with_merges_fields() {
        let s = Samples::new(vec![Duration::from_millis(2)], Duration::from_secs(1));
        let v = s.json_with("put", json!({"concurrency": 4}));
        assert_eq!(v["what"], "put");
        assert_eq!(v["concurrency"], 4);
        assert_eq!(v["count"], 1);
        let mut out = String::new();
        text(&json!({"a": 1.5, "b": {"c": "x"}}), 0, &mut out);
        assert_eq!(out, "a: 1.50\nb:\n  c: x\n");
    }
}
