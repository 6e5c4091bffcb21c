//! The read path: a Range served from the local state machine, after the read-index barrier
//! unless the caller accepts a serializable (possibly stale) read.
//!
//! Concurrent linearizable reads share read-index rounds ([`ReadRounds`]): one round is in
//! flight at a time (a quorum confirmation on the leader, plus a `ReadIndex` call when this node
//! follows), and every read that arrives meanwhile waits for the next round, which then serves
//! them all. A read is only ever answered by a round that started after it arrived, so it still
//! observes every write acknowledged before it began (as etcd's read-index batching does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use muster_store::raft::LogId;
use muster_types::{RangeRequest, RangeResponse};
use tokio::sync::{mpsc, oneshot};

use crate::error::{RaftPathError, ServerError};
use crate::node::Node;

type RoundResult = Result<LogId, RaftPathError>;

/// Shares read-index rounds among concurrent reads on one node.
pub struct ReadRounds {
    waiting: mpsc::UnboundedSender<oneshot::Sender<RoundResult>>,
    stats: Arc<ReadRoundStats>,
}

/// Counters of the read-index rounds, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReadRoundStats {
    /// Linearizable reads that asked for a read index.
    pub reads: AtomicU64,
    /// Rounds that served them; reads / rounds = mean sharing.
    pub rounds: AtomicU64,
}

impl ReadRounds {
    /// Starts the rounds loop for `node`; it ends when the node is dropped. Must be called
    /// inside a tokio runtime.
    pub(crate) fn start(node: Weak<Node>) -> ReadRounds {
        let (waiting, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ReadRoundStats::default());
        tokio::spawn(run_rounds(node, rx, stats.clone()));
        ReadRounds { waiting, stats }
    }

    /// Reads served and rounds run.
    pub fn stats(&self) -> &ReadRoundStats {
        &self.stats
    }

    /// The log id a linearizable read arriving now must observe.
    pub(crate) async fn read_index(&self) -> RoundResult {
        let (tx, rx) = oneshot::channel();
        let stopped = || RaftPathError::Fatal {
            reason: "read-index rounds stopped".into(),
        };
        self.waiting.send(tx).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run_rounds(
    node: Weak<Node>,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<RoundResult>>,
    stats: Arc<ReadRoundStats>,
) {
    while let Some(first) = rx.recv().await {
        // Everyone queued so far arrived before this round starts.
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(node) = node.upgrade() else {
            return;
        };
        stats.rounds.fetch_add(1, Ordering::Relaxed);
        stats
            .reads
            .fetch_add(waiters.len() as u64, Ordering::Relaxed);
        let result = node.fetch_read_index().await;
        drop(node);
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl Node {
    /// Serves `req` locally; returns the response and the store revision it was read at.
    pub async fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), ServerError> {
        self.config.limits.check_read(&req.range)?;
        if !req.serializable {
            self.linearizable_barrier().await?;
        }
        let sm = self.sm.read();
        let resp = sm.mvcc.range(req)??;
        Ok((resp, sm.mvcc.current_revision()))
    }
}
