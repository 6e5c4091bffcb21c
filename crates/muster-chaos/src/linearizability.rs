//! Linearizability of the register workload: a Wing–Gong search in the style of Porcupine,
//! split per key, against an etcd KV model with revisions.
//!
//! **History.** Per key: the state before the first operation, then every operation with its
//! client, invocation and response times (nanoseconds since a shared start), input and output.
//! An [`Output::Unknown`] (error or timeout) may have taken effect at any time after its
//! invocation, or never: its response time is +∞ and the search may leave it out.
//!
//! **Model.** The state of a key is its value, its mod revision and its version. Revisions are
//! global across keys, so per key only their order is known: a write acknowledged at revision
//! `r` needs `r` above the current mod revision and sets it; a read must return exactly the
//! current value, mod revision and version; a failed compare-and-swap changes nothing (its
//! else-branch read is checked like a get). An unknown write's revision is not known: the state
//! then records only a lower bound (previous + 1) until a read pins it.
//!
//! **Search.** The operations are cut at quiescent points — instants where no acknowledged
//! operation is in flight — into segments. Within a segment a depth-first search linearizes the
//! operations one at a time (an operation can go next only if it was invoked before every
//! pending one returned), memoizing (linearized set, state) so that no configuration is explored
//! twice. The search of a segment is exhaustive: every end state is carried into the next
//! segment as one of its possible starting states. Unknown writes still pending at a cut are
//! carried too; one whose value no later operation mentions is folded into an anonymous "ghost"
//! write (only counted, per compare guard), so histories with many timeouts stay cheap. A
//! segment with no end state is a violation; running out of the step budget or the deadline
//! leaves the key *undecided*, which is neither a pass nor a violation.
//!
//! The model and the compiled history are in `linearizability_model.rs`; the search proper
//! (configurations, memo, cuts, explanations) in `linearizability_search.rs`.

use std::fmt;
use std::time::{Duration, Instant};

#[path = "linearizability_model.rs"]
mod model;
#[path = "linearizability_search.rs"]
mod search;

/// Nanoseconds since the history's shared start instant.
pub type Nanos = u64;

/// What a read saw: the value (absent: `None`), its mod revision and its version (if known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub value: Option<String>,
    pub mod_revision: i64,
    pub version: Option<i64>,
}

impl Read {
    /// A key that does not exist.
    pub fn absent() -> Self {
        Self {
            value: None,
            mod_revision: 0,
            version: Some(0),
        }
    }

    /// What an etcd range response says about its (at most one) key.
    pub fn of(kv: Option<&etcd_client::KeyValue>) -> Self {
        kv.map_or_else(Self::absent, |kv| Self {
            value: Some(String::from_utf8_lossy(kv.value()).into_owned()),
            mod_revision: kv.mod_revision(),
            version: Some(kv.version()),
        })
    }
}

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Put {
        value: String,
    },
    /// A linearizable read.
    Get,
    /// `txn(value == expect) put value`; `expect: None` means "the key does not exist".
    Cas {
        expect: Option<String>,
        value: String,
    },
}

/// What the cluster answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The revision of the put (response header).
    Put {
        revision: i64,
    },
    Get(Read),
    /// `revision` is the header revision: the write's revision if `succeeded`, else the store's
    /// revision when the compare was evaluated. `read`: the else-branch read of the key, if any.
    Cas {
        succeeded: bool,
        revision: i64,
        read: Option<Read>,
    },
    /// An error or a timeout: it may or may not have taken effect.
    Unknown,
}

/// One operation as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    /// Invoked at.
    pub call: Nanos,
    /// Answered at (ignored for [`Output::Unknown`], which counts as never answered).
    pub ret: Nanos,
    pub input: Input,
    pub output: Output,
}

/// Every operation on one key, in any order.
#[derive(Debug, Clone)]
pub struct KeyHistory {
    pub key: String,
    /// The key's state before the first operation.
    pub initial: Read,
    pub ops: Vec<Op>,
}

impl KeyHistory {
    /// (answered, unknown) operations.
    pub fn counts(&self) -> (u64, u64) {
        let unknown = self
            .ops
            .iter()
            .filter(|o| o.output == Output::Unknown)
            .count() as u64;
        (self.ops.len() as u64 - unknown, unknown)
    }
}

/// How much search a check may spend.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Configurations explored per key.
    pub max_steps: u64,
    /// Wall time for the whole check.
    pub deadline: Duration,
}

impl Default for Budget {
    /// Far above what a ten-minute chaos run needs (a few steps per operation).
    fn default() -> Self {
        Self {
            max_steps: 200_000_000,
            deadline: Duration::from_secs(600),
        }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No linearization exists; the explanation names the operations involved.
    Violation(String),
    /// The budget ran out first.
    Undecided(String),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Linearizable => "linearizable",
            Outcome::Violation(_) => "violation",
            Outcome::Undecided(_) => "undecided",
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyReport {
    pub key: String,
    pub ops_ok: u64,
    pub ops_unknown: u64,
    /// Quiescent segments the history was cut into.
    pub segments: u64,
    /// Configurations explored.
    pub steps: u64,
    pub elapsed: Duration,
    pub outcome: Outcome,
}

/// The verdict on every key.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub keys: Vec<KeyReport>,
    pub elapsed: Duration,
}

impl Report {
    fn count(&self, f: impl Fn(&KeyReport) -> u64) -> u64 {
        self.keys.iter().map(f).sum()
    }
    pub fn ops_ok(&self) -> u64 {
        self.count(|k| k.ops_ok)
    }
    pub fn ops_unknown(&self) -> u64 {
        self.count(|k| k.ops_unknown)
    }
    pub fn steps(&self) -> u64 {
        self.count(|k| k.steps)
    }
    pub fn violations(&self) -> u64 {
        self.count(|k| u64::from(matches!(k.outcome, Outcome::Violation(_))))
    }
    pub fn undecided(&self) -> u64 {
        self.count(|k| u64::from(matches!(k.outcome, Outcome::Undecided(_))))
    }
    /// "key: explanation" of every violation and undecided key.
    pub fn problems(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|k| match &k.outcome {
                Outcome::Linearizable => None,
                Outcome::Violation(why) => Some(format!("not linearizable: {why}")),
                Outcome::Undecided(why) => Some(format!("linearizability undecided: {why}")),
            })
            .collect()
    }
}

/// Checks every key, several at a time.
pub fn check(histories: &[KeyHistory], budget: &Budget) -> Report {
    let started = Instant::now();
    let deadline = started + budget.deadline;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(histories.len());
    let mut keys: Vec<(usize, KeyReport)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(h) = histories.get(i) else { break };
                        done.push((i, check_key(h, budget.max_steps, deadline)));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    keys.sort_by_key(|(i, _)| *i);
    Report {
        keys: keys.into_iter().map(|(_, k)| k).collect(),
        elapsed: started.elapsed(),
    }
}

/// Checks one key's history.
pub fn check_key(h: &KeyHistory, max_steps: u64, deadline: Instant) -> KeyReport {
    let started = Instant::now();
    let (ops_ok, ops_unknown) = h.counts();
    let (outcome, segments, steps) = search::run(h, max_steps, deadline);
    KeyReport {
        key: h.key.clone(),
        ops_ok,
        ops_unknown,
        segments,
        steps,
        elapsed: started.elapsed(),
        outcome,
    }
}

/// Seconds with microseconds, for explanations.
struct Secs(Nanos);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.0 as f64 / 1e9)
    }
}

impl fmt::Display for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => write!(f, "absent"),
            Some(v) => {
                write!(f, "{v:?} @rev {}", self.mod_revision)?;
                match self.version {
                    Some(n) => write!(f, " v{n}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{} ", self.client)?;
        match &self.input {
            Input::Put { value } => write!(f, "put {value:?}")?,
            Input::Get => write!(f, "get")?,
            Input::Cas { expect, value } => match expect {
                Some(e) => write!(f, "cas {e:?}→{value:?}")?,
                None => write!(f, "cas absent→{value:?}")?,
            },
        }
        match &self.output {
            Output::Put { revision } => write!(f, " → rev {revision}")?,
            Output::Get(r) => write!(f, " → {r}")?,
            Output::Cas {
                succeeded: true,
                revision,
                ..
            } => write!(f, " → ok rev {revision}")?,
            Output::Cas {
                succeeded: false,
                revision,
                read,
            } => {
                write!(f, " → failed (header rev {revision})")?;
                if let Some(r) = read {
                    write!(f, ", saw {r}")?;
                }
            }
            Output::Unknown => return write!(f, " → unknown  [{}, ∞)", Secs(self.call)),
        }
        write!(f, "  [{}, {}]", Secs(self.call), Secs(self.ret))
    }
}

#[cfg(test)]
#[path = "linearizability_tests.rs"]
mod tests;
