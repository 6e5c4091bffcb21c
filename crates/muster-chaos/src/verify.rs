//! Verification after the faults stop and the cluster has converged: read every node's final
//! state (serializable reads, so each node answers from its own store) and check it against
//! what the workload was told and what the watcher saw.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::GetOptions;

use crate::cluster::Cluster;
use crate::linearizability;
use crate::workload::counter::{value_of, CounterResult};
use crate::workload::registrations::{Live, RegResult, SLACK};
use crate::workload::watcher::WatchResult;
use crate::workload::writer::WriterResult;
use crate::workload::{client, prefix_end, COUNTER, REG_PREFIX, WRITER_PREFIX};

/// One node's final state of the workload's keys.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Writer key → mod revision.
    pub writes: BTreeMap<String, i64>,
    pub counter: u64,
    pub regs: BTreeSet<String>,
}

/// Reads node `endpoint`'s state, paginated.
///
/// # Errors
/// The node did not answer.
pub async fn read_node(endpoint: &str, op_timeout: Duration) -> anyhow::Result<NodeState> {
    let mut c = client(&[endpoint.to_string()], op_timeout).await?;
    let mut st = NodeState::default();
    let end = prefix_end(WRITER_PREFIX);
    let mut from = WRITER_PREFIX.as_bytes().to_vec();
    for _page in 0..100_000 {
        let opts = GetOptions::new()
            .with_range(end.clone())
            .with_keys_only()
            .with_serializable()
            .with_limit(5000);
        let r = c
            .get(from.clone(), Some(opts))
            .await
            .with_context(|| format!("range on {endpoint}"))?;
        for kv in r.kvs() {
            st.writes.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            );
        }
        match r.kvs().last() {
            Some(last) if r.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    let g = c
        .get(COUNTER, Some(GetOptions::new().with_serializable()))
        .await?;
    st.counter = value_of(g.kvs().first());
    let g = c
        .get(
            REG_PREFIX,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_serializable(),
            ),
        )
        .await?;
    st.regs = g
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    Ok(st)
}

/// Everything counted; the `anomalies` fields must all be 0.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verdict {
    // --- operations
    pub puts_acked: u64,
    pub puts_unknown: u64,
    /// Unknown puts that turned out to have committed.
    pub puts_unknown_applied: u64,
    pub counter_final: u64,
    pub watch_events: u64,
    pub watch_streams: u64,
    /// Register operations answered / unknown (error or timeout), keys checked, and the
    /// checker's search steps and time.
    pub lin_ops_ok: u64,
    pub lin_ops_unknown: u64,
    pub lin_keys: u64,
    pub lin_steps: u64,
    pub lin_check_ms: u64,
    // --- anomalies
    /// Acknowledged puts missing on some node.
    pub lost_writes: u64,
    /// Acked put whose stored or watched revision differs from the one acknowledged.
    pub revision_mismatches: u64,
    /// Nodes whose final states differ.
    pub divergent_nodes: u64,
    /// Counter outside acked ≤ final ≤ acked + unknown.
    pub counter_anomalies: u64,
    /// Counter values 1..=final the watcher never saw.
    pub watch_gaps: u64,
    /// Events seen twice (same revision and key), or counter values seen more than once.
    pub watch_duplicates: u64,
    /// Events whose revision went backwards, or counter values out of order.
    pub watch_out_of_order: u64,
    /// Stored writer keys the watcher never saw.
    pub watch_missed_keys: u64,
    /// Watched writer puts that are not in the store.
    pub watch_phantoms: u64,
    /// History was compacted under the watcher, or it never caught up to the final revision.
    pub watch_incomplete: u64,
    /// A kept-alive registration's key vanished before a TTL had passed since its last renewal
    /// was sent (during the run, at final read, or in the expiry check).
    pub spurious_expiries: u64,
    /// After renewals stopped, a lease outlived its TTL by more than the bound.
    pub late_expiries: u64,
    /// Register keys whose history is not linearizable.
    pub lin_violations: u64,
    /// Register keys the checker could not decide within its budget (not a pass).
    pub lin_undecided: u64,
}

impl Verdict {
    /// (name, count) of every anomaly.
    pub fn anomalies(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("lost writes (acked, missing)", self.lost_writes),
            ("revision mismatches", self.revision_mismatches),
            ("divergent nodes", self.divergent_nodes),
            ("counter anomalies", self.counter_anomalies),
            ("watch gaps (counter values)", self.watch_gaps),
            ("watch duplicates", self.watch_duplicates),
            ("watch out of order", self.watch_out_of_order),
            ("watch missed keys", self.watch_missed_keys),
            ("watch phantom events", self.watch_phantoms),
            ("watch incomplete", self.watch_incomplete),
            ("spurious expiries", self.spurious_expiries),
            ("late expiries", self.late_expiries),
            ("keys not linearizable", self.lin_violations),
            ("keys undecided (linearizability)", self.lin_undecided),
        ]
    }

    pub fn total_anomalies(&self) -> u64 {
        self.anomalies().iter().map(|(_, n)| n).sum()
    }
}

/// Checks writes, counter and watch against the nodes' final states (`states[i]` is node i's).
pub fn check(
    writers: &[WriterResult],
    counter: &CounterResult,
    watch: &WatchResult,
    states: &[(u64, NodeState)],
    problems: &mut Vec<String>,
) -> Verdict {
    let mut v = Verdict {
        watch_events: watch.events.len() as u64,
        watch_streams: watch.streams,
        ..Default::default()
    };
    let Some((_, reference)) = states.first() else {
        problems.push("no node state was read".into());
        v.divergent_nodes = 1;
        return v;
    };

    // Replicas agree.
    for (id, st) in &states[1..] {
        if st != reference {
            v.divergent_nodes += 1;
            problems.push(format!(
                "node {id} differs from node {}: {} vs {} writer keys, counter {} vs {}, {} vs {} registrations",
                states[0].0,
                st.writes.len(),
                reference.writes.len(),
                st.counter,
                reference.counter,
                st.regs.len(),
                reference.regs.len()
            ));
        }
    }

    // Acked writes present everywhere, at the acked revision.
    let watched: BTreeMap<&str, i64> = watch
        .events
        .iter()
        .filter(|e| !e.delete && e.key.starts_with(WRITER_PREFIX))
        .map(|e| (e.key.as_str(), e.revision))
        .collect();
    for w in writers {
        v.puts_acked += w.acked.len() as u64;
        v.puts_unknown += w.unknown.len() as u64;
        v.puts_unknown_applied += w
            .unknown
            .iter()
            .filter(|k| reference.writes.contains_key(*k))
            .count() as u64;
        for (key, rev) in &w.acked {
            let missing_on: Vec<u64> = states
                .iter()
                .filter(|(_, s)| !s.writes.contains_key(key))
                .map(|(id, _)| *id)
                .collect();
            if !missing_on.is_empty() {
                v.lost_writes += 1;
                if v.lost_writes <= 10 {
                    problems.push(format!("lost write {key} (acked at revision {rev}) missing on nodes {missing_on:?}"));
                }
                continue;
            }
            let stored = reference.writes.get(key).copied();
            let seen = watched.get(key.as_str()).copied();
            if stored != Some(*rev) || seen.is_some_and(|s| s != *rev) {
                v.revision_mismatches += 1;
                if v.revision_mismatches <= 10 {
                    problems.push(format!(
                        "{key}: acked at revision {rev}, stored at {stored:?}, watched at {seen:?}"
                    ));
                }
            }
        }
    }

    // The counter.
    v.counter_final = reference.counter;
    if !(counter.acked <= v.counter_final && v.counter_final <= counter.acked + counter.unknown) {
        v.counter_anomalies += 1;
        problems.push(format!(
            "counter is {} but {} increments were acked and {} unknown",
            v.counter_final, counter.acked, counter.unknown
        ));
    }

    // The watch history: revisions never go back, no event twice.
    let mut pairs = HashSet::new();
    let mut prev = 0i64;
    for e in &watch.events {
        if e.revision < prev {
            v.watch_out_of_order += 1;
        }
        prev = prev.max(e.revision);
        if !pairs.insert((e.revision, e.key.as_str())) {
            v.watch_duplicates += 1;
        }
    }
    // Every counter value once, in order.
    let values: Vec<u64> = watch
        .events
        .iter()
        .filter(|e| e.key == COUNTER && !e.delete)
        .map(|e| e.value.parse().unwrap_or(0))
        .collect();
    let distinct: BTreeSet<u64> = values.iter().copied().collect();
    v.watch_duplicates += (values.len() - distinct.len()) as u64;
    v.watch_out_of_order += values.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
    let gaps: Vec<u64> = (1..=v.counter_final)
        .filter(|x| !distinct.contains(x))
        .collect();
    v.watch_gaps = gaps.len() as u64;
    if !gaps.is_empty() {
        problems.push(format!(
            "watcher never saw counter values {:?}",
            &gaps[..gaps.len().min(20)]
        ));
    }
    if distinct.iter().any(|x| *x > v.counter_final || *x == 0) {
        v.watch_phantoms += 1;
        problems.push("watcher saw a counter value the store never reached".into());
    }
    // Every stored writer key watched; every watched writer put stored.
    for key in reference.writes.keys() {
        if !watched.contains_key(key.as_str()) {
            v.watch_missed_keys += 1;
            if v.watch_missed_keys <= 10 {
                problems.push(format!("watcher never saw {key}"));
            }
        }
    }
    for (key, rev) in &watched {
        if reference.writes.get(*key) != Some(rev) {
            v.watch_phantoms += 1;
            if v.watch_phantoms <= 10 {
                problems.push(format!(
                    "watcher saw {key} at revision {rev}; the store has {:?}",
                    reference.writes.get(*key)
                ));
            }
        }
    }
    if watch.compacted {
        v.watch_incomplete += 1;
        problems.push("history was compacted under the watcher".into());
    }
    if !watch.caught_up {
        v.watch_incomplete += 1;
        problems.push(format!(
            "watcher did not reach the final revision (stopped at {})",
            watch.next_revision - 1
        ));
    }
    v
}

/// Counts the linearizability checker's verdict into `v`; every violation and undecided key
/// becomes a problem (with the checker's explanation).
pub fn record_linearizability(
    report: &linearizability::Report,
    v: &mut Verdict,
    problems: &mut Vec<String>,
) {
    v.lin_ops_ok = report.ops_ok();
    v.lin_ops_unknown = report.ops_unknown();
    v.lin_keys = report.keys.len() as u64;
    v.lin_steps = report.steps();
    v.lin_check_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX);
    v.lin_violations = report.violations();
    v.lin_undecided = report.undecided();
    problems.extend(report.problems());
}

/// Registration checks during the run and at the final read.
/// `states_read_at`: when the final reads started (a registration made after it is not expected
/// in them).
pub fn check_registrations(
    regs: &[RegResult],
    states: &[(u64, NodeState)],
    states_read_at: Instant,
    v: &mut Verdict,
    problems: &mut Vec<String>,
) {
    for r in regs {
        for x in r.vanished.iter().filter(|x| x.spurious) {
            v.spurious_expiries += 1;
            problems.push(format!(
                "registrant {}: {} vanished ({}) {:.1}s after its last renewal was sent",
                r.registrant,
                x.key,
                x.how,
                x.since_renewal.as_secs_f64()
            ));
        }
        if let Some(live) = r.live.as_ref().filter(|l| l.registered_at < states_read_at) {
            for (id, st) in states {
                if !st.regs.contains(&live.key) {
                    v.spurious_expiries += 1;
                    problems.push(format!(
                        "registrant {}: live {} missing on node {id} at the final read",
                        r.registrant, live.key
                    ));
                }
            }
        }
    }
}

/// Result of watching the live registrations expire once renewals stop.
#[derive(Debug, Default, Clone)]
pub struct ExpiryCheck {
    pub checked: u64,
    /// Max of (gone − (last renewal ack + TTL)); negative means before the deadline bound.
    pub max_lateness: Option<Duration>,
    pub min_since_renewal: Option<Duration>,
}

/// Stops renewing (the registrants are already released) and polls each live key until it is
/// gone: it must not go before TTL after the last renewal was sent, and not later than
/// `late_bound` after TTL from the last renewal ack.
pub async fn check_expiry(
    cluster: &Cluster,
    lives: &[Live],
    ttl: Duration,
    late_bound: Duration,
    op_timeout: Duration,
    v: &mut Verdict,
    problems: &mut Vec<String>,
) -> anyhow::Result<ExpiryCheck> {
    let mut c = client(&cluster.endpoints(), op_timeout).await?;
    let mut out = ExpiryCheck::default();
    let mut pending: Vec<&Live> = lives.iter().collect();
    let give_up = Instant::now() + ttl + late_bound + Duration::from_secs(30);
    while !pending.is_empty() && Instant::now() < give_up {
        let mut still = Vec::new();
        for l in pending {
            match c.get(l.key.as_str(), None).await {
                Ok(g) if g.kvs().is_empty() => {
                    out.checked += 1;
                    let since = l.renewal_sent.elapsed();
                    out.min_since_renewal =
                        Some(out.min_since_renewal.map_or(since, |m| m.min(since)));
                    let late = l.renewal_acked.elapsed().saturating_sub(ttl);
                    out.max_lateness = Some(out.max_lateness.map_or(late, |m| m.max(late)));
                    if since + SLACK < ttl {
                        v.spurious_expiries += 1;
                        problems.push(format!(
                            "{} expired {:.1}s after its last renewal (TTL {}s)",
                            l.key,
                            since.as_secs_f64(),
                            ttl.as_secs()
                        ));
                    }
                    if late > late_bound {
                        v.late_expiries += 1;
                        problems.push(format!(
                            "{} outlived its TTL by {:.1}s (bound {:.1}s)",
                            l.key,
                            late.as_secs_f64(),
                            late_bound.as_secs_f64()
                        ));
                    }
                }
                _ => still.push(l),
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for l in pending {
        v.late_expiries += 1;
        problems.push(format!("{} never expired after renewals stopped", l.key));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
