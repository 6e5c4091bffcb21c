//! The periodic corruption check, etcd's `--corrupt-check-interval`: the leader compares
//! every voter's keyspace hash at one revision and raises the CORRUPT alarm, through the log,
//! for each member whose hash differs — after which every node refuses client writes (as
//! etcd) until an operator clears it (`etcdctl alarm disarm`).
//!
//! One round: the leader reads its applied log index and revision together, hashes its own
//! keyspace at that revision, and asks each other voter over the peer port (`HashKv`) for its
//! hash at the same revision once it has applied that index. The hash covers what reads at
//! the revision see, so compaction's progress on each node does not change it. The right
//! hash is the one a majority of voters report; with no majority, the leader's (etcd's rule:
//! the leader compares the others against itself). A voter that does not answer in time is
//! skipped this round, never judged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use muster_types::{Alarm, AlarmAction};
use openraft::async_runtime::watch::WatchReceiver;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::network::{call, RemoteRaftError};
use crate::node::Node;
use crate::services::maintenance::Maintenance;

/// What the leader asks a member in one round.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct HashKvAsk {
    /// The revision to hash at.
    pub revision: i64,
    /// The leader's applied log index when it read `revision`: the member hashes once it has
    /// applied this far, so it has the revision too.
    pub applied_index: u64,
}

/// A member's answer: its hash at the asked revision.
pub(crate) type HashKvReply = Result<u32, RemoteRaftError>;

/// How long a member waits to apply the asked index, and the leader for its answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// On a member: the hash of its keyspace at `ask.revision`, once it has applied
/// `ask.applied_index`.
pub(crate) async fn answer(node: &Arc<Node>, ask: HashKvAsk) -> HashKvReply {
    let remote = |reason: String| RemoteRaftError { reason };
    node.raft()
        .wait(Some(ASK_TIMEOUT))
        .applied_index_at_least(Some(ask.applied_index), "corruption check")
        .await
        .map_err(|e| remote(e.to_string()))?;
    hash_off_runtime(node, ask.revision)
        .await
        .map_err(|e| remote(e.to_string()))
}

/// This node's keyspace hash at `revision` (computed on the blocking pool).
async fn hash_off_runtime(node: &Arc<Node>, revision: i64) -> Result<u32, String> {
    Maintenance::new(node.clone())
        .hash_kv(revision)
        .await
        .map(|h| h.hash)
        .map_err(|e| e.to_string())
}

/// The members whose hash is not the right one (see the module doc). `hashes` holds every
/// voter that answered, the leader included; `voters` counts every voter.
pub fn mismatched(hashes: &BTreeMap<u64, u32>, leader: u64, voters: usize) -> Vec<u64> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for h in hashes.values() {
        *counts.entry(*h).or_default() += 1;
    }
    let majority = counts
        .iter()
        .find(|(_, n)| **n > voters / 2)
        .map(|(h, _)| *h);
    let Some(right) = majority.or_else(|| hashes.get(&leader).copied()) else {
        return vec![];
    };
    hashes
        .iter()
        .filter(|(_, h)| **h != right)
        .map(|(id, _)| *id)
        .collect()
}

/// One round on the leader; returns the members it found corrupt (their alarms raised).
pub async fn check_once(node: &Arc<Node>) -> Vec<u64> {
    let m = node.raft().metrics().borrow_watched().clone();
    if m.current_leader != Some(node.id()) {
        return vec![];
    }
    let (revision, applied_index) = {
        let sm = node.sm().read();
        (
            sm.mvcc.current_revision(),
            sm.last_applied.map_or(0, |l| l.index),
        )
    };
    let ask = HashKvAsk {
        revision,
        applied_index,
    };
    let mut hashes = BTreeMap::new();
    match hash_off_runtime(node, revision).await {
        Ok(hash) => {
            hashes.insert(node.id(), hash);
        }
        Err(e) => {
            // Compacted past it meanwhile: the next round picks a newer revision.
            tracing::debug!(
                node_id = node.id(),
                revision,
                "corruption check skipped: {e}"
            );
            return vec![];
        }
    }
    let membership = m.membership_config.membership().clone();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let asks = voters
        .iter()
        .filter(|id| **id != node.id())
        .filter_map(|id| {
            membership
                .get_node(id)
                .map(|member| (*id, member.addr.clone()))
        })
        .map(|(id, addr)| async move {
            let r: Result<HashKvReply, _> = call(
                node.peers(),
                &addr,
                ASK_TIMEOUT,
                &ask,
                |mut c, r| async move { c.hash_kv(r).await },
            )
            .await;
            (id, r)
        });
    for (id, r) in futures::future::join_all(asks).await {
        match r {
            Ok(Ok(hash)) => {
                hashes.insert(id, hash);
            }
            Ok(Err(e)) => tracing::debug!(member = id, revision, "no hash this round: {e}"),
            Err(e) => tracing::debug!(member = id, revision, "no hash this round: {e}"),
        }
    }
    let corrupt = mismatched(&hashes, node.id(), voters.len());
    if corrupt.is_empty() {
        tracing::debug!(
            node_id = node.id(),
            revision,
            ?hashes,
            "corruption check passed"
        );
        return corrupt;
    }
    tracing::error!(
        node_id = node.id(),
        revision,
        ?hashes,
        ?corrupt,
        "corruption check: members' keyspaces differ; raising CORRUPT"
    );
    let maintenance = Maintenance::new(node.clone());
    for id in &corrupt {
        if let Err(e) = maintenance
            .set_alarm(AlarmAction::Activate, *id, Some(Alarm::Corrupt))
            .await
        {
            tracing::warn!(member = id, "raising CORRUPT: {e}");
        }
    }
    corrupt
}

/// Starts the periodic check of `node` (a no-op when `corrupt_check_interval` is 0); it
/// ends with `stop`.
pub fn start(node: Arc<Node>, stop: CancellationToken) {
    let every = node.config().corrupt_check_interval;
    if every.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        // The first tick is immediate: skip it, so a starting cluster settles first.
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            check_once(&node).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_majority_decides_and_the_leader_breaks_no_majority() {
        let h = |pairs: &[(u64, u32)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        assert!(mismatched(&h(&[(1, 7), (2, 7), (3, 7)]), 1, 3).is_empty());
        // A follower differs.
        assert_eq!(mismatched(&h(&[(1, 7), (2, 7), (3, 9)]), 1, 3), vec![3]);
        // The leader itself differs from the majority.
        assert_eq!(mismatched(&h(&[(1, 9), (2, 7), (3, 7)]), 1, 3), vec![1]);
        // One voter did not answer and the two others differ: the leader's hash is taken.
        assert_eq!(mismatched(&h(&[(1, 7), (3, 9)]), 1, 3), vec![3]);
        // Five voters, two silent, three agree.
        assert!(mismatched(&h(&[(1, 7), (2, 7), (3, 7)]), 1, 5).is_empty());
    }
}
