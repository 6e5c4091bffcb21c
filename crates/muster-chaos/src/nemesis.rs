//! The nemesis: a seeded schedule of container and membership faults. Each round picks a fault
//! kind and a hold time from the RNG, picks its target by role (the current leader or a
//! follower), injects the fault, holds it, heals it, and waits (bounded) for the cluster to
//! converge again before a quiet gap. One fault at a time: a majority always survives, so the
//! cluster must stay available and correct. The seed fixes the choices; which node leads is up
//! to Raft. Membership faults (`membership.rs`) change the cluster view as they go; at the end
//! every member must list exactly the members of the view.

mod membership;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::docker::{Container, Docker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// `docker kill` (SIGKILL) the leader, hold, `docker start` it.
    KillLeader,
    KillFollower,
    /// `docker pause` (cgroup freeze) the leader, hold, `docker unpause`.
    PauseLeader,
    PauseFollower,
    /// `docker network disconnect` the leader from the compose network, hold, reconnect.
    PartitionLeader,
    PartitionFollower,
    /// MemberAdd a 4th node as a learner and `docker run` it with `--join`; once it caught up,
    /// MemberPromote it; hold; MemberRemove it (it must stop by itself); delete its container
    /// and data.
    AddRemoveMember,
    /// MemberRemove a follower (it must stop by itself); delete its container and data; hold (a
    /// member short); add it back under a new id at the same address and host ports (learner,
    /// caught up, promoted).
    ReplaceFollower,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::PauseFollower,
        Fault::PartitionLeader,
        Fault::PartitionFollower,
        Fault::AddRemoveMember,
        Fault::ReplaceFollower,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill+start leader",
            Fault::KillFollower => "kill+start follower",
            Fault::PauseLeader => "pause leader",
            Fault::PauseFollower => "pause follower",
            Fault::PartitionLeader => "partition leader",
            Fault::PartitionFollower => "partition follower",
            Fault::AddRemoveMember => "add+remove member",
            Fault::ReplaceFollower => "replace follower (new id)",
        }
    }

    /// Whether the fault changes the membership (see [`Settings::membership`]).
    pub fn is_membership(self) -> bool {
        matches!(self, Fault::AddRemoveMember | Fault::ReplaceFollower)
    }

    fn on_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader | Fault::PauseLeader | Fault::PartitionLeader
        )
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub duration: Duration,
    pub hold_min: Duration,
    pub hold_max: Duration,
    pub quiet_min: Duration,
    pub quiet_max: Duration,
    /// How long the cluster may take to converge after a heal before it counts as unrecovered.
    pub recover_timeout: Duration,
    /// Upper bound on rounds, whatever the duration.
    pub max_rounds: u64,
    /// Whether membership faults are in the schedule.
    pub membership: bool,
    /// Compose project: names and labels the containers membership faults start.
    pub project: String,
    /// Deadline of one Cluster API request.
    pub op_timeout: Duration,
}

/// Per fault kind: how often it was injected and how long recovery took.
#[derive(Debug, Default, Clone)]
pub struct KindStats {
    pub injected: u64,
    /// Injection or heal failed at the docker level.
    pub docker_errors: u64,
    /// The cluster did not converge within the recover timeout after the heal.
    pub unrecovered: u64,
    pub recovery_total: Duration,
    pub recovery_max: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct NemesisResult {
    pub by_kind: BTreeMap<Fault, KindStats>,
    pub rounds: u64,
    /// Rounds skipped because no leader was agreed on before the fault.
    pub no_leader: u64,
    /// One line per round, for the log.
    pub history: Vec<String>,
    /// Anomalies of membership: a removed node that kept running, members that disagree with
    /// the view (or each other) on the member list at the end.
    pub membership_problems: Vec<String>,
}

/// What one round's fault did.
struct Applied {
    injected: bool,
    /// Failed docker or Cluster API steps.
    errors: u64,
    /// What happened, for the history.
    note: String,
}

/// Runs fault rounds for `settings.duration` (or until `stop`). Every fault is healed before
/// returning, whatever happens; `cluster` ends up holding the members of the moment.
pub async fn run(
    cluster: &mut Cluster,
    docker: &Docker,
    s: &Settings,
    stop: &CancellationToken,
) -> NemesisResult {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let kinds: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| s.membership || !f.is_membership())
        .collect();
    let mut out = NemesisResult::default();
    let started = Instant::now();
    while started.elapsed() < s.duration && out.rounds < s.max_rounds && !stop.is_cancelled() {
        out.rounds += 1;
        let fault = kinds[rng.gen_range(0..kinds.len())];
        let hold = pick(&mut rng, s.hold_min, s.hold_max);
        let quiet = pick(&mut rng, s.quiet_min, s.quiet_max);
        let follower_pick: usize = rng.gen_range(0..cluster.nodes.len().max(2) - 1);

        let Some(leader) = cluster.leader().await else {
            out.no_leader += 1;
            let r = cluster.wait_converged(s.recover_timeout, false).await;
            out.history.push(format!(
                "round {}: no leader agreed; waited: {:?}",
                out.rounds,
                r.err()
            ));
            continue;
        };
        let followers: Vec<u64> = cluster
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| *id != leader)
            .collect();
        let target = if fault.on_leader() {
            leader
        } else {
            followers[follower_pick % followers.len()]
        };
        let Some(node) = cluster.node(target) else {
            continue;
        };
        let container = node.container.clone();
        let t = started.elapsed().as_secs_f64();
        info!(
            round = out.rounds,
            fault = fault.name(),
            target,
            hold_ms = hold.as_millis() as u64,
            "--- nemesis: inject"
        );

        let problems = &mut out.membership_problems;
        let applied = match fault {
            Fault::AddRemoveMember => {
                membership::add_remove_member(cluster, docker, s, hold, stop, problems).await
            }
            Fault::ReplaceFollower => {
                membership::replace_follower(cluster, docker, s, target, hold, stop, problems).await
            }
            _ => container_fault(fault, &container, docker, hold, stop).await,
        };
        let stats = out.by_kind.entry(fault).or_default();
        stats.injected += u64::from(applied.injected);
        stats.docker_errors += applied.errors;
        let note = if fault.is_membership() {
            applied.note
        } else {
            format!("node {target} (leader was {leader})")
        };
        let heal_at = Instant::now();
        let recovered = cluster.wait_converged(s.recover_timeout, false).await;
        let took = heal_at.elapsed();
        match &recovered {
            Ok(new_leader) => {
                stats.recovery_total += took;
                stats.recovery_max = stats.recovery_max.max(took);
                out.history.push(format!(
                    "t={t:7.1}s round {:3}: {:20} {note}, held {:.1}s, converged in {:.1}s, leader now {new_leader}",
                    out.rounds,
                    fault.name(),
                    hold.as_secs_f64(),
                    took.as_secs_f64()
                ));
            }
            Err(e) => {
                stats.unrecovered += 1;
                warn!(error = %e, "cluster did not recover");
                out.history.push(format!(
                    "t={t:7.1}s round {:3}: {:20} {note}, held {:.1}s, NOT converged: {e}",
                    out.rounds,
                    fault.name(),
                    hold.as_secs_f64()
                ));
                heal_all(cluster, docker).await;
            }
        }
        sleep_unless_stopped(quiet, stop).await;
    }
    heal_all(cluster, docker).await;
    if let Err(e) = cluster.wait_converged(s.recover_timeout, false).await {
        warn!(error = %e, "not converged before the member check");
    }
    let disagreements = cluster.check_members(s.op_timeout).await;
    out.membership_problems.extend(disagreements);
    out
}

/// Injects a container fault, holds it (until `stop` at the latest), heals it. (Membership
/// faults are not container faults: nothing happens.)
async fn container_fault(
    fault: Fault,
    c: &Container,
    docker: &Docker,
    hold: Duration,
    stop: &CancellationToken,
) -> Applied {
    let mut applied = Applied {
        injected: false,
        errors: 0,
        note: String::new(),
    };
    let injected = match fault {
        Fault::KillLeader | Fault::KillFollower => docker.kill(c).await,
        Fault::PauseLeader | Fault::PauseFollower => docker.pause(c).await,
        Fault::PartitionLeader | Fault::PartitionFollower => docker.disconnect(c).await,
        Fault::AddRemoveMember | Fault::ReplaceFollower => return applied,
    };
    if let Err(e) = &injected {
        warn!(error = %e, "injecting the fault failed");
        applied.errors += 1;
    } else {
        applied.injected = true;
    }
    sleep_unless_stopped(hold, stop).await;
    let healed = match fault {
        Fault::KillLeader | Fault::KillFollower => docker.start(c).await,
        Fault::PauseLeader | Fault::PauseFollower => docker.unpause(c).await,
        Fault::PartitionLeader | Fault::PartitionFollower => docker.connect(c).await,
        Fault::AddRemoveMember | Fault::ReplaceFollower => Ok(()),
    };
    if let Err(e) = healed {
        warn!(error = %e, "healing failed; trying the full heal");
        applied.errors += 1;
        if let Err(e) = docker.heal(c).await {
            warn!(error = %e, "full heal failed too");
        }
    }
    applied
}

/// Undoes every fault on every node (idempotent; errors are logged).
pub async fn heal_all(cluster: &Cluster, docker: &Docker) {
    for n in &cluster.nodes {
        if let Err(e) = docker.heal(&n.container).await {
            warn!(node = n.id, error = %e, "heal failed");
        }
    }
}

/// Sleeps for `d`, or until `stop`.
async fn sleep_unless_stopped(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.cancelled() => {}
    }
}

fn pick(rng: &mut StdRng, lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let ms = rng.gen_range(lo.as_millis()..=hi.as_millis());
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}
