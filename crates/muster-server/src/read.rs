//! The read path: a Range served from the local state machine, after the read-index barrier
//! unless the caller accepts a serializable (possibly stale) read.
//!
//! Concurrent linearizable reads share read-index rounds ([`ReadRounds`]): one round is in
//! flight at a time (a quorum confirmation on the leader, plus a `ReadIndex` call when this node
//! follows), and every read that arrives meanwhile waits for the next round, which then serves
//! them all. A read is only ever answered by a round that started after it arrived, so it still
//! observes every write acknowledged before it began (as etcd's read-index batching does).
//!
//! Back-pressure: at most `backpressure.read_queue` reads wait for rounds at once; one more is
//! refused at once (TooManyRequests). A round is bounded by `leader_wait`
//! ([`Node::fetch_read_index`]), so a stuck round cannot hold every later read behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use muster_store::raft::LogId;
use muster_types::{RangeRequest, RangeResponse};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::{RaftPathError, ServerError};
use crate::node::Node;

type RoundResult = Result<LogId, RaftPathError>;

/// A read waiting for a round, holding its room in the queue until the round takes it.
type Waiter = (oneshot::Sender<RoundResult>, OwnedSemaphorePermit);

/// Shares read-index rounds among concurrent reads on one node.
pub struct ReadRounds {
    /// Unbounded as a channel: `room` bounds the reads waiting, and refuses without waiting.
    waiting: mpsc::UnboundedSender<Waiter>,
    room: Arc<Semaphore>,
    stats: Arc<ReadRoundStats>,
}

/// Counters of the read-index rounds, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReadRoundStats {
    /// Linearizable reads that asked for a read index.
    pub reads: AtomicU64,
    /// Rounds that served them; reads / rounds = mean sharing.
    pub rounds: AtomicU64,
    /// Reads refused because `read_queue` reads were already waiting.
    pub refused: AtomicU64,
}

impl ReadRounds {
    /// Starts the rounds loop for `node`, with room for `queue` waiting reads; it ends when
    /// the node is dropped. Must be called inside a tokio runtime.
    pub(crate) fn start(node: Weak<Node>, queue: usize) -> ReadRounds {
        let (waiting, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(ReadRoundStats::default());
        tokio::spawn(run_rounds(node, rx, stats.clone()));
        ReadRounds {
            waiting,
            room: Arc::new(Semaphore::new(queue)),
            stats,
        }
    }

    /// Reads served and rounds run.
    pub fn stats(&self) -> &ReadRoundStats {
        &self.stats
    }

    /// The log id a linearizable read arriving now must observe; TooManyRequests at once when
    /// the queue is full. Callers bound the wait (the round itself is bounded too).
    pub(crate) async fn read_index(&self) -> RoundResult {
        // Held by the waiter until its round answers, also when the caller gives up first, so
        // the bound covers everything the rounds hold.
        let Ok(room) = self.room.clone().try_acquire_owned() else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(RaftPathError::TooManyRequests);
        };
        let (tx, rx) = oneshot::channel();
        let stopped = || RaftPathError::Fatal {
            reason: "read-index rounds stopped".into(),
        };
        self.waiting.send((tx, room)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn run_rounds(
    node: Weak<Node>,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    stats: Arc<ReadRoundStats>,
) {
    while let Some(first) = rx.recv().await {
        // Everyone queued so far arrived before this round starts.
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        // Reads whose callers gave up need no round (and give their room back).
        waiters.retain(|(w, _)| !w.is_closed());
        if waiters.is_empty() {
            continue;
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
        for (w, room) in waiters {
            drop(room);
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
