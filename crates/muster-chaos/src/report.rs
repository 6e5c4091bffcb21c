//! The summary table printed at the end of a run (and the same numbers as JSON).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::nemesis::{Fault, NemesisResult};
use crate::verify::{ExpiryCheck, Verdict};
use crate::workload::counter::CounterResult;
use crate::workload::registrations::RegResult;

/// Everything a run produced.
#[derive(Debug)]
pub struct Summary {
    pub seed: u64,
    pub duration: Duration,
    pub elapsed: Duration,
    pub lease_ttl: Duration,
    pub late_bound: Duration,
    pub counter: CounterResult,
    pub regs: Vec<RegResult>,
    pub nemesis: NemesisResult,
    pub verdict: Verdict,
    pub expiry: ExpiryCheck,
    /// A run-level failure (the checker could not finish), if any.
    pub failure: Option<String>,
    pub problems: Vec<String>,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
            && self.verdict.total_anomalies() == 0
            && self.nemesis.membership_problems.is_empty()
            && self.progress_problem().is_none()
    }

    /// A run that did nothing proves nothing.
    pub fn progress_problem(&self) -> Option<&'static str> {
        let injected: u64 = self.nemesis.by_kind.values().map(|k| k.injected).sum();
        let v = &self.verdict;
        if v.puts_acked == 0 || self.counter.acked == 0 || (v.lin_keys > 0 && v.lin_ops_ok == 0) {
            Some("the workload made no progress")
        } else if injected == 0 && !self.duration.is_zero() {
            Some("no fault was injected")
        } else {
            None
        }
    }

    fn reg_totals(&self) -> (u64, u64, u64, u64, u64, u64, Duration) {
        let mut t = (0, 0, 0, 0, 0, 0, Duration::ZERO);
        for r in &self.regs {
            t.0 += r.registrations;
            t.1 += r.grant_failures;
            t.2 += r.put_failures;
            t.3 += r.keepalives_ok;
            t.4 += r.keepalive_failures;
            t.5 += r.vanished.iter().filter(|v| !v.spurious).count() as u64;
            t.6 = t.6.max(r.max_renewal_gap);
        }
        t
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let v = &self.verdict;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "==== muster-chaos summary: seed {}, faults for {:.0}s ({} rounds), run took {:.0}s ====",
            self.seed,
            self.duration.as_secs_f64(),
            self.nemesis.rounds,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9}  notes",
            "OPERATIONS", "acked", "unknown"
        );
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9}  {} of the unknown committed",
            "put (unique keys)", v.puts_acked, v.puts_unknown, v.puts_unknown_applied
        );
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9}  final value {}, {} compare failures, {} failed reads",
            "CAS increment",
            self.counter.acked,
            self.counter.unknown,
            v.counter_final,
            self.counter.conflicts,
            self.counter.read_failures
        );
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9}  {} keys checked in {:.1}s ({} search steps); {} not linearizable, {} undecided",
            "registers (linearizability)",
            v.lin_ops_ok,
            v.lin_ops_unknown,
            v.lin_keys,
            v.lin_check_ms as f64 / 1000.0,
            v.lin_steps,
            v.lin_violations,
            v.lin_undecided
        );
        let (regs, grant_f, put_f, ka_ok, ka_f, starved, gap) = self.reg_totals();
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9}  {} registrants, TTL {}s; {} failed grants, {} failed puts",
            "lease registration",
            regs,
            grant_f + put_f,
            self.regs.len(),
            self.lease_ttl.as_secs(),
            grant_f,
            put_f
        );
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9}  longest gap between acked renewals {:.1}s; {} legit expiries after starvation",
            "lease keep-alive", ka_ok, ka_f, gap.as_secs_f64(), starved
        );
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9}  over {} streams (resumes {})",
            "watch events received",
            v.watch_events,
            "-",
            v.watch_streams,
            v.watch_streams.saturating_sub(1)
        );
        match (
            self.expiry.checked,
            self.expiry.max_lateness,
            self.expiry.min_since_renewal,
        ) {
            (n, Some(late), Some(min)) if n > 0 => {
                let _ = writeln!(
                    s,
                    "{:<34} {:>9} {:>9}  gone {:.1}s–TTL+{:.1}s after last renewal (bound TTL+{:.1}s)",
                    "lease expiry after renewals stop", n, "-", min.as_secs_f64(), late.as_secs_f64(),
                    self.late_bound.as_secs_f64()
                );
            }
            _ => {}
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>9} {:>11} {:>14}",
            "FAULTS", "injected", "failed", "unrecovered", "recovery avg/max"
        );
        let mut total = 0;
        for f in Fault::ALL {
            let k = self.nemesis.by_kind.get(&f).cloned().unwrap_or_default();
            total += k.injected;
            let recovered = k.injected.saturating_sub(k.unrecovered).max(1);
            let _ = writeln!(
                s,
                "{:<34} {:>9} {:>9} {:>11} {:>7.1}s/{:.1}s",
                f.name(),
                k.injected,
                k.docker_errors,
                k.unrecovered,
                k.recovery_total.as_secs_f64() / recovered as f64,
                k.recovery_max.as_secs_f64()
            );
        }
        let _ = writeln!(s, "{:<34} {:>9}", "total", total);
        let _ = writeln!(s);
        let _ = writeln!(s, "{:<34} {:>9}", "ANOMALIES (must be 0)", "count");
        let membership = self.nemesis.membership_problems.len() as u64;
        for (name, n) in v
            .anomalies()
            .into_iter()
            .chain([("membership anomalies", membership)])
        {
            let _ = writeln!(
                s,
                "{:<34} {:>9}{}",
                name,
                n,
                if n > 0 { "   <-- FAIL" } else { "" }
            );
        }
        let unrecovered: u64 = self.nemesis.by_kind.values().map(|k| k.unrecovered).sum();
        if unrecovered > 0 {
            let _ = writeln!(s, "note: {unrecovered} fault(s) left the cluster unconverged past the recovery timeout (availability, see history)");
        }
        if !self.problems.is_empty() || membership > 0 {
            let _ = writeln!(s, "\nPROBLEMS");
            for p in self
                .nemesis
                .membership_problems
                .iter()
                .chain(&self.problems)
                .take(40)
            {
                let _ = writeln!(s, "  - {p}");
            }
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(s, "\nRUN FAILED: {f}");
        }
        if let Some(p) = self.progress_problem() {
            let _ = writeln!(s, "\nNO EVIDENCE: {p}");
        }
        let _ = writeln!(
            s,
            "\nRESULT: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let (regs, grant_f, put_f, ka_ok, ka_f, starved, gap) = self.reg_totals();
        let faults: serde_json::Map<String, serde_json::Value> = self
            .nemesis
            .by_kind
            .iter()
            .map(|(f, k)| {
                (
                    f.name().to_string(),
                    json!({
                        "injected": k.injected, "docker_errors": k.docker_errors,
                        "unrecovered": k.unrecovered, "recovery_max_s": k.recovery_max.as_secs_f64(),
                    }),
                )
            })
            .collect();
        json!({
            "seed": self.seed,
            "duration_s": self.duration.as_secs_f64(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "passed": self.passed(),
            "failure": self.failure,
            "counter": { "acked": self.counter.acked, "unknown": self.counter.unknown,
                         "conflicts": self.counter.conflicts, "read_failures": self.counter.read_failures },
            "registrations": { "made": regs, "grant_failures": grant_f, "put_failures": put_f,
                               "keepalives_ok": ka_ok, "keepalive_failures": ka_f,
                               "starved_expiries": starved, "max_renewal_gap_s": gap.as_secs_f64() },
            "faults": faults,
            "rounds": self.nemesis.rounds,
            "verdict": self.verdict,
            "anomalies": self.verdict.total_anomalies(),
            "problems": self.problems,
            "history": self.nemesis.history,
            "membership_problems": self.nemesis.membership_problems,
        })
    }
}
