//! Proposal batching: the one place this node hands commands to its Raft.
//!
//! Every write proposed on this node (client writes while it leads, writes forwarded to it by
//! followers, the lease keeper's expiries) goes through one [`Proposer`] queue. Its loop keeps
//! [`PROPOSALS_IN_FLIGHT`] proposal open at a time; while it is open, new commands wait in the
//! queue, and the next proposal takes everything queued (up to [`MAX_BATCH_COMMANDS`] commands /
//! [`MAX_BATCH_BYTES`]) as ONE log entry, a [`Command::Batch`]. One client alone is proposed at
//! once, on its own, so batching adds no latency when there is no contention; under load one
//! append, one fsync and one replication round carry many commands (group commit at the
//! proposal level, as etcd does it with its proposal queue).
//!
//! Each command of a batch is applied exactly as if it were its own entry (its own revision,
//! its own response), so batching is invisible to clients: concurrent requests may be ordered
//! either way, and a request sent after another's response always lands after it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use muster_store::raft::{Raft, TypeConfig};
use muster_types::{Command, CommandResponse, LogEntry, ResponseBody};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::RaftPathError;

/// Proposals open at once. More slots pipeline better at moderate load; fewer make bigger
/// batches under heavy load. One measured best from 4 to 64 clients once followers stopped
/// holding their forwards back (docs/design.md, Proposal batching).
pub const PROPOSALS_IN_FLIGHT: usize = 1;
/// Most commands in one batch entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// A batch stops growing past this estimate of its size (a single larger command is still
/// proposed, alone), so entries and AppendEntries messages stay well under the gRPC limits.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

type Reply<E> = oneshot::Sender<Result<CommandResponse, E>>;

struct Pending<E> {
    cmd: Command,
    reply: Reply<E>,
}

/// A queue that sends whatever piled up while its slots were busy as one [`Command::Batch`]
/// through `send`, and hands each caller its own response. Used for proposals on the leader
/// ([`Proposer`]) and for a follower's forwards to the leader (`write.rs`). Cheap to clone.
pub(crate) struct BatchQueue<E> {
    tx: mpsc::UnboundedSender<Pending<E>>,
    make_error: MakeError<E>,
}

impl<E> Clone for BatchQueue<E> {
    fn clone(&self) -> Self {
        BatchQueue {
            tx: self.tx.clone(),
            make_error: self.make_error,
        }
    }
}

/// Counters of a batch queue (or of several sharing them), for `/metrics`.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Commands submitted.
    pub commands: AtomicU64,
    /// Sends (log entries proposed, or forward messages sent); commands / sends = mean batch.
    pub sends: AtomicU64,
}

/// Turns a message into the queue's error type (for a stopped queue or a malformed batch
/// response).
pub(crate) type MakeError<E> = fn(String) -> E;

impl<E: Clone + Send + 'static> BatchQueue<E> {
    /// Starts the batching loop; `send` delivers one command (a single one, or a batch) and
    /// returns its response; at most `in_flight` sends run at once. Must be called inside a
    /// tokio runtime; the loop ends when every handle is dropped.
    pub(crate) fn start<F, Fut>(
        send: F,
        in_flight: usize,
        make_error: MakeError<E>,
        stats: Arc<BatchStats>,
    ) -> Self
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CommandResponse, E>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(send), in_flight, make_error, stats, rx));
        BatchQueue { tx, make_error }
    }

    /// Queues `cmd` and waits for its own response.
    pub(crate) async fn submit(&self, cmd: Command) -> Result<CommandResponse, E> {
        let make_error = self.make_error;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { cmd, reply })
            .map_err(|_| make_error("batch queue stopped".into()))?;
        rx.await
            .map_err(|_| make_error("batch queue dropped the request".into()))?
    }
}

async fn run<E, F, Fut>(
    send: Arc<F>,
    in_flight: usize,
    make_error: MakeError<E>,
    stats: Arc<BatchStats>,
    mut rx: mpsc::UnboundedReceiver<Pending<E>>,
) where
    E: Clone + Send + 'static,
    F: Fn(Command) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<CommandResponse, E>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        // Take a slot before looking at the queue: while every slot is busy, requests pile
        // up and the next batch takes them all.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.cmd.approx_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.cmd.approx_size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        stats.sends.fetch_add(1, Ordering::Relaxed);
        stats
            .commands
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let send = send.clone();
        tokio::spawn(async move {
            send_batch(&*send, make_error, batch).await;
            drop(slot);
        });
    }
}

async fn send_batch<E, F, Fut>(send: &F, make_error: MakeError<E>, mut batch: Vec<Pending<E>>)
where
    E: Clone,
    F: Fn(Command) -> Fut,
    Fut: Future<Output = Result<CommandResponse, E>>,
{
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let _ = p.reply.send(send(p.cmd).await);
        }
        return;
    }
    let (cmds, replies): (Vec<Command>, Vec<Reply<E>>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let count = replies.len();
    match send(Command::Batch(cmds)).await {
        Ok(CommandResponse {
            result: Ok(ResponseBody::Batch(responses)),
            ..
        }) if responses.len() == count => {
            for (reply, r) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(r));
            }
        }
        Ok(other) => {
            // Apply answers a batch with one response per command; anything else is a bug.
            let reason = format!("batch of {count} answered with {:?}", other.result);
            tracing::error!("{reason}");
            let e = make_error(reason);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// This node's proposals to its own Raft, batched.
#[derive(Clone)]
pub struct Proposer {
    queue: BatchQueue<RaftPathError>,
    stats: Arc<BatchStats>,
}

fn internal(reason: String) -> RaftPathError {
    RaftPathError::Internal { reason }
}

impl Proposer {
    /// Starts the batching loop over `raft`. Must be called inside a tokio runtime.
    pub fn start(raft: Raft) -> Proposer {
        let stats = Arc::new(BatchStats::default());
        let queue = BatchQueue::start(
            move |cmd| {
                let raft = raft.clone();
                async move { client_write(&raft, cmd).await }
            },
            PROPOSALS_IN_FLIGHT,
            internal,
            stats.clone(),
        );
        Proposer { queue, stats }
    }

    /// Commands proposed and log entries they went into.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Proposes `cmd` and waits for it to be applied; fails with NotLeader when this node
    /// does not lead.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        self.queue.submit(cmd).await
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn not_leader(f: &ForwardToLeader<TypeConfig>) -> RaftPathError {
    if f.leader_id.is_none() {
        return RaftPathError::NoLeader;
    }
    RaftPathError::NotLeader {
        leader_id: f.leader_id,
        leader: f.leader_node.clone(),
    }
}

async fn client_write(raft: &Raft, cmd: Command) -> Result<CommandResponse, RaftPathError> {
    let entry = LogEntry {
        time_ms: now_ms(),
        cmd,
    };
    match raft.client_write(entry).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(&f)),
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
            Err(RaftPathError::CommitUnknown)
        }
        Err(RaftError::APIError(e)) => Err(RaftPathError::Internal {
            reason: e.to_string(),
        }),
        Err(RaftError::Fatal(f)) => Err(RaftPathError::Fatal {
            reason: f.to_string(),
        }),
    }
}
