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
//!
//! Back-pressure: a queue holds at most [`QueueBound`] commands and bytes, counting those
//! waiting and those in a send not yet answered; past it `submit` fails at once with the
//! queue's "too many requests" error instead of letting memory and latency grow without end.
//! A command whose caller gave up (its request was dropped at its deadline) before the loop
//! took it is discarded unsent, and a proposal is bounded by `leader_wait`, so a queue never
//! waits forever on behalf of requests nobody waits for.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_store::raft::Raft;
use muster_types::{Command, CommandResponse, LogEntry, ResponseBody};
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

/// How much one queue may hold: commands waiting or in a send not yet answered, and their
/// estimated size ([`Command::approx_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    pub commands: usize,
    pub bytes: usize,
}

/// A queue's use of its bound.
struct Budget {
    bound: QueueBound,
    /// (commands, bytes) admitted and not yet answered.
    used: Mutex<(usize, usize)>,
}

impl Budget {
    /// Takes room for one command of `bytes`, if there is any. A command larger than the whole
    /// byte bound is taken when no other bytes are held, so it is not refused forever.
    fn admit(self: &Arc<Self>, bytes: usize) -> Option<Admitted> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let (commands, held) = *used;
        if commands >= self.bound.commands || (held > 0 && held + bytes > self.bound.bytes) {
            return None;
        }
        *used = (commands + 1, held + bytes);
        Some(Admitted {
            budget: self.clone(),
            bytes,
        })
    }
}

/// Room one command holds in its queue's budget until it is answered (or discarded).
struct Admitted {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        used.0 = used.0.saturating_sub(1);
        used.1 = used.1.saturating_sub(self.bytes);
    }
}

type Reply<E> = oneshot::Sender<Result<CommandResponse, E>>;

struct Pending<E> {
    cmd: Command,
    reply: Reply<E>,
    /// None for commands exempt from the bound (see [`BatchQueue::submit_exempt`]).
    admitted: Option<Admitted>,
}

/// A queue that sends whatever piled up while its slots were busy as one [`Command::Batch`]
/// through `send`, and hands each caller its own response. Used for proposals on the leader
/// ([`Proposer`]) and for a follower's forwards to the leader (`write.rs`). Cheap to clone.
pub(crate) struct BatchQueue<E> {
    /// Unbounded as a channel: [`Budget`] bounds what it holds, and refuses without waiting.
    tx: mpsc::UnboundedSender<Pending<E>>,
    errors: QueueErrors<E>,
    budget: Arc<Budget>,
    stats: Arc<BatchStats>,
}

impl<E: Clone> Clone for BatchQueue<E> {
    fn clone(&self) -> Self {
        BatchQueue {
            tx: self.tx.clone(),
            errors: self.errors.clone(),
            budget: self.budget.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// The errors a queue hands out itself.
#[derive(Clone)]
pub(crate) struct QueueErrors<E> {
    /// For a stopped queue or a malformed batch response.
    pub make: MakeError<E>,
    /// For a command refused because the queue is full.
    pub full: E,
}

/// Counters of a batch queue (or of several sharing them), for `/metrics`.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Commands submitted.
    pub commands: AtomicU64,
    /// Sends (log entries proposed, or forward messages sent); commands / sends = mean batch.
    pub sends: AtomicU64,
    /// Commands refused because the queue was full.
    pub refused: AtomicU64,
    /// Commands discarded unsent because their caller had given up before they were taken.
    pub abandoned: AtomicU64,
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
        bound: QueueBound,
        errors: QueueErrors<E>,
        stats: Arc<BatchStats>,
    ) -> Self
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CommandResponse, E>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let make = errors.make;
        tokio::spawn(run(Arc::new(send), in_flight, make, stats.clone(), rx));
        let budget = Arc::new(Budget {
            bound,
            used: Mutex::new((0, 0)),
        });
        BatchQueue {
            tx,
            errors,
            budget,
            stats,
        }
    }

    /// Queues `cmd` and waits for its own response; fails at once with the queue's `full`
    /// error when the queue holds its bound.
    pub(crate) async fn submit(&self, cmd: Command) -> Result<CommandResponse, E> {
        let Some(admitted) = self.budget.admit(cmd.approx_size()) else {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(self.errors.full.clone());
        };
        self.enqueue(cmd, Some(admitted)).await
    }

    /// Like [`BatchQueue::submit`], outside the bound: for the few commands this node
    /// originates itself (lease expiries), which must not be refused because clients flood it.
    pub(crate) async fn submit_exempt(&self, cmd: Command) -> Result<CommandResponse, E> {
        self.enqueue(cmd, None).await
    }

    async fn enqueue(
        &self,
        cmd: Command,
        admitted: Option<Admitted>,
    ) -> Result<CommandResponse, E> {
        let make_error = self.errors.make;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                cmd,
                reply,
                admitted,
            })
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
        let first = loop {
            let Some(p) = rx.recv().await else {
                return;
            };
            if !abandoned(&p, &stats) {
                break p;
            }
        };
        let mut bytes = first.cmd.approx_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) if abandoned(&p, &stats) => {}
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

/// Whether `p`'s caller has given up (its request was dropped): then it is discarded unsent,
/// which is safe since nothing of it was proposed, and frees its room in the queue.
fn abandoned<E>(p: &Pending<E>, stats: &BatchStats) -> bool {
    let gone = p.reply.is_closed();
    if gone {
        stats.abandoned.fetch_add(1, Ordering::Relaxed);
    }
    gone
}

async fn send_batch<E, F, Fut>(send: &F, make_error: MakeError<E>, mut batch: Vec<Pending<E>>)
where
    E: Clone,
    F: Fn(Command) -> Fut,
    Fut: Future<Output = Result<CommandResponse, E>>,
{
    if batch.len() == 1 {
        if let Some(Pending {
            cmd,
            reply,
            admitted,
        }) = batch.pop()
        {
            let r = send(cmd).await;
            // Room is given back before the answer, so a caller that sends its next request
            // on the answer finds it free.
            drop(admitted);
            let _ = reply.send(r);
        }
        return;
    }
    let mut cmds = Vec::with_capacity(batch.len());
    let mut replies: Vec<Reply<E>> = Vec::with_capacity(batch.len());
    let mut admitted = Vec::with_capacity(batch.len());
    for p in batch {
        cmds.push(p.cmd);
        replies.push(p.reply);
        admitted.push(p.admitted);
    }
    let count = replies.len();
    let result = send(Command::Batch(cmds)).await;
    drop(admitted);
    match result {
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
    /// Starts the batching loop over `raft`, holding at most `bound`; a proposal not applied
    /// within `timeout` fails with Timeout (its outcome unknown), so one stuck proposal (a
    /// leader that lost its quorum) cannot hold the queue forever. Must be called inside a
    /// tokio runtime.
    pub fn start(raft: Raft, bound: QueueBound, timeout: Duration) -> Proposer {
        let stats = Arc::new(BatchStats::default());
        let queue = BatchQueue::start(
            move |cmd| {
                let raft = raft.clone();
                async move {
                    tokio::time::timeout(timeout, client_write(&raft, cmd))
                        .await
                        .unwrap_or(Err(RaftPathError::Timeout))
                }
            },
            PROPOSALS_IN_FLIGHT,
            bound,
            QueueErrors {
                make: internal,
                full: RaftPathError::TooManyRequests,
            },
            stats.clone(),
        );
        Proposer { queue, stats }
    }

    /// Commands proposed and log entries they went into.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Proposes `cmd` and waits for it to be applied; fails with NotLeader when this node
    /// does not lead, and with TooManyRequests at once when the queue is full.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        self.queue.submit(cmd).await
    }

    /// Like [`Proposer::propose`], never refused for a full queue: for commands this node
    /// originates itself (lease expiries), whose number it bounds.
    pub async fn propose_exempt(&self, cmd: Command) -> Result<CommandResponse, RaftPathError> {
        self.queue.submit_exempt(cmd).await
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn client_write(raft: &Raft, cmd: Command) -> Result<CommandResponse, RaftPathError> {
    let entry = LogEntry {
        time_ms: now_ms(),
        cmd,
    };
    Ok(raft.client_write(entry).await?.data)
}

#[cfg(test)]
#[path = "propose_tests.rs"]
mod tests;
