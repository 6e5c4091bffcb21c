//! Process-level chaos with membership changes (issue 6). While the docker checker's own
//! workload runs (`muster_chaos::workload`: writers of unique keys, a CAS incrementer, over
//! every endpoint), the nemesis, in sequence: adds a 4th node as a learner, lets it catch up and
//! promotes it; removes a follower (which stops serving) and wipes it; kills the leader and
//! restarts it; removes the current leader with MemberRemove (a new leader is elected among the
//! rest); re-adds the wiped node (straight as a voter) under a new id at its old address. The
//! workload must go on after every step. Afterwards every acknowledged write is on every member
//! (serializable reads, node by node), the members agree on the member list, and the counter is
//! within acked ≤ final ≤ acked + unknown.
//!
//! A removed node may cut the connection of the very MemberRemove that removed it before it
//! answers (always so when the leader removes itself), so the change helper settles open
//! outcomes by the member list.

use std::collections::BTreeSet;
use std::time::Duration;

use muster_chaos::cluster::{change_members, member_list, MemberChange};
use muster_chaos::verify::read_node;
use muster_chaos::workload::{self, counter, writer};
use muster_testkit::JoinerListeners;
use muster_tests::{wait_until, Cluster};
use tokio_util::sync::CancellationToken;
use tracing::info;

const T: Duration = Duration::from_secs(15);
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Revisions the workload must commit after each step.
const PROGRESS: i64 = 10;

/// Applies a membership change through every running node (the checker's Cluster API helper:
/// retried only while an outcome is open, settled by the member list).
async fn change(cluster: &Cluster, change: MemberChange) -> anyhow::Result<u64> {
    change_members(&cluster.endpoints(), &change, OP_TIMEOUT * 3, T).await
}

/// Waits until node `id` noticed its removal and stopped accepting connections.
async fn wait_stopped_serving(cluster: &Cluster, id: u64) -> anyhow::Result<()> {
    let node = cluster.node(id)?.clone();
    wait_until(T, "the removed node to notice", || {
        let n = node.clone();
        async move { n.is_removed().then_some(()) }
    })
    .await?;
    let addr = cluster.addr(id);
    wait_until(T, "the removed node to stop serving", || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await
}

/// Waits until the workload has committed `PROGRESS` more revisions: writes go on after `step`.
async fn wait_progress(cluster: &Cluster, step: &str) -> anyhow::Result<()> {
    let revision = || async {
        let mut c = workload::client(&cluster.endpoints(), OP_TIMEOUT)
            .await
            .ok()?;
        let r = c.get(workload::COUNTER, None).await.ok()?;
        Some(r.header()?.revision())
    };
    let from = wait_until(T, "a revision", revision).await?;
    let what = format!("writes to go on after {step}");
    wait_until(T, &what, || async {
        revision().await.filter(|r| *r >= from + PROGRESS)
    })
    .await
    .map(drop)
}

/// The voters the running nodes should list: all of them, none a learner.
fn expected_members(cluster: &Cluster) -> BTreeSet<(u64, bool)> {
    cluster
        .running()
        .into_iter()
        .map(|id| (id, false))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_under_load_lose_no_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    // The workload balances over the three initial nodes; a removed node refuses connections
    // there, and the wiped one comes back at its old address under a new id.
    let settings = workload::Settings {
        endpoints: cluster.endpoints(),
        op_timeout: OP_TIMEOUT,
        max_ops: 1_000_000,
    };
    let stop = CancellationToken::new();
    let writers: Vec<_> = (0..2)
        .map(|w| tokio::spawn(writer::run(settings.clone(), w, stop.clone())))
        .collect();
    let incrementer = tokio::spawn(counter::run(settings.clone(), stop.clone()));

    info!("--- step: add a learner, let it catch up, promote it");
    let (joiner_addr, joiner) = cluster.bind_joiner().await?;
    let add = MemberChange::Add {
        peer_url: format!("http://{joiner_addr}"),
        learner: true,
    };
    let learner = change(&cluster, add).await?;
    cluster.start_joiner(learner, joiner).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let target = cluster.node(leader)?.last_log_index();
    anyhow::ensure!(
        cluster.node(learner)?.wait_applied(target, T).await,
        "learner {learner} did not catch up to {target:?}"
    );
    change(&cluster, MemberChange::Promote(learner)).await?;
    wait_progress(&cluster, "the promotion").await?;

    info!("--- step: remove a follower; it stops serving; wipe it");
    let leader = cluster.wait_for_leader(T).await?;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != learner)
        .ok_or_else(|| anyhow::anyhow!("no follower among the first three nodes"))?;
    let (follower_client, follower_addr) = (cluster.addr(follower), cluster.peer_addr(follower));
    change(&cluster, MemberChange::Remove(follower)).await?;
    wait_stopped_serving(&cluster, follower).await?;
    cluster.wipe(follower).await?;
    wait_progress(&cluster, "removing a follower").await?;

    info!(
        leader,
        "--- step: kill the leader; hold until another leads; restart it"
    );
    cluster.kill(leader).await?;
    let interim = cluster.wait_for_leader(T).await?;
    info!(interim, "--- new leader elected while the old one is down");
    cluster.restart(leader).await?;
    cluster.wait_converged(T).await?;
    wait_progress(&cluster, "the leader was killed").await?;

    let leader = cluster.wait_for_leader(T).await?;
    info!(leader, "--- step: remove the leader itself");
    change(&cluster, MemberChange::Remove(leader)).await?;
    wait_stopped_serving(&cluster, leader).await?;
    cluster.forget(leader).await?;
    let successor = cluster.wait_for_leader(T).await?;
    info!(successor, "--- a new leader among the remaining members");
    // The new leader commits the pending membership with its first entry; every node applies
    // it before the next change (a change while one is pending is refused).
    cluster.wait_converged(T).await?;
    wait_progress(&cluster, "removing the leader").await?;

    info!(
        follower,
        "--- step: re-add the wiped follower under a new id, same address"
    );
    let add = MemberChange::Add {
        peer_url: format!("http://{follower_addr}"),
        learner: false,
    };
    let rejoined = change(&cluster, add).await?;
    anyhow::ensure!(
        rejoined != follower,
        "a wiped node must not get its old id back"
    );
    let listener = wait_until(T, "the old addresses to be free", || async move {
        JoinerListeners::bind_at(follower_client, follower_addr).await
    })
    .await?;
    cluster.start_joiner(rejoined, listener).await?;
    cluster.wait_converged(T).await?;
    wait_progress(&cluster, "the rejoin").await?;

    info!("--- stop the workload; verify every member");
    stop.cancel();
    let mut acked = Vec::new();
    let mut unknown = 0;
    for w in writers {
        let r = w.await??;
        unknown += r.unknown.len();
        acked.extend(r.acked);
    }
    let incs = incrementer.await??;
    cluster.wait_converged(T).await?;
    info!(
        acked = acked.len(),
        unknown,
        incs_acked = incs.acked,
        incs_unknown = incs.unknown,
        members = ?cluster.running(),
        "--- verify"
    );
    anyhow::ensure!(
        !acked.is_empty() && incs.acked > 0,
        "the workload made progress"
    );

    let expected = expected_members(&cluster);
    anyhow::ensure!(
        expected.len() == 3,
        "three members at the end: {expected:?}"
    );
    let mut reference = None;
    for id in cluster.running() {
        let seen = member_list(&cluster.addr(id).to_string(), OP_TIMEOUT).await?;
        anyhow::ensure!(
            seen == expected,
            "node {id} lists members {seen:?}, expected {expected:?}"
        );
        let st = read_node(&cluster.addr(id).to_string(), OP_TIMEOUT * 3).await?;
        let missing: Vec<&String> = acked
            .iter()
            .filter(|(k, _)| !st.writes.contains_key(k))
            .map(|(k, _)| k)
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "node {id} lost {} acknowledged writes, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        anyhow::ensure!(
            incs.acked <= st.counter && st.counter <= incs.acked + incs.unknown,
            "node {id}: counter {} vs {} acknowledged + {} unknown increments",
            st.counter,
            incs.acked,
            incs.unknown
        );
        match &reference {
            None => reference = Some((id, st)),
            Some((rid, r)) => anyhow::ensure!(
                *r == st,
                "node {id} differs from node {rid}: {} vs {} keys, counter {} vs {}",
                st.writes.len(),
                r.writes.len(),
                st.counter,
                r.counter
            ),
        }
    }
    cluster.shutdown().await;
    Ok(())
}
