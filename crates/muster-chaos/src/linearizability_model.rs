//! The model behind [`super::check_key`]: one key's state, what an answered operation does to
//! it, and the history compiled for the search (values interned, operations sorted, quiescent
//! segments, which values later operations still compare against).

use std::collections::HashMap;
use std::ops::Range;

use super::{Input, KeyHistory, Nanos, Output, Read};

pub(super) type Val = u32;
/// The value of a ghost write: a value no later operation mentions.
pub(super) const GHOST: Val = Val::MAX;
/// The guard of an unknown write: `None` for a put, `Some(expect)` for a compare-and-swap.
pub(super) type Guard = Option<Option<Val>>;

/// The model: one key. After an unknown write its mod revision is known only from below, until
/// a read pins it. The version is always a lower bound: each write raises it by one, each read
/// pins it (exact counting would make every unknown write observable through later versions,
/// and the search could no longer leave out the ones nothing else depends on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct State {
    pub(super) value: Option<Val>,
    pub(super) rev: Bound,
    pub(super) version: i64,
}

/// A number known exactly, or only from below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Bound {
    pub(super) n: i64,
    pub(super) exact: bool,
}

impl Bound {
    pub(super) fn exact(n: i64) -> Self {
        Self { n, exact: true }
    }

    pub(super) fn admits(self, n: i64) -> bool {
        if self.exact {
            n == self.n
        } else {
            n >= self.n
        }
    }

    /// Whether every number `other` admits, `self` admits too.
    pub(super) fn covers(self, other: Bound) -> bool {
        if self.exact {
            other == self
        } else {
            self.n <= other.n
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    pub(super) value: Option<Val>,
    pub(super) rev: i64,
    pub(super) version: Option<i64>,
}

/// An answered operation, compiled.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    Put {
        value: Val,
        rev: i64,
    },
    Get(Seen),
    CasOk {
        expect: Option<Val>,
        value: Val,
        rev: i64,
    },
    CasFailed {
        expect: Option<Val>,
        header: i64,
        read: Option<Seen>,
    },
}

impl Step {
    /// Whether this operation's outcome depends on the key holding `value`.
    pub(super) fn depends_on(&self, value: Option<Val>) -> bool {
        match *self {
            Step::Put { .. } => false,
            Step::Get(seen) => seen.value == value,
            Step::CasOk { expect, .. } => expect == value,
            Step::CasFailed { read, .. } => read.is_none_or(|r| r.value == value),
        }
    }
}

impl State {
    /// A write at revision `rev` (`None`: an unknown write, somewhere above the current one).
    pub(super) fn write(self, value: Val, rev: Option<i64>) -> Result<State, &'static str> {
        let rev = match rev {
            Some(r) if r <= self.rev.n => {
                return Err("its revision is not above the key's mod revision")
            }
            Some(r) => Bound::exact(r),
            None => Bound {
                n: self.rev.n + 1,
                exact: false,
            },
        };
        let version = self.version + 1;
        let value = Some(value);
        Ok(State {
            value,
            rev,
            version,
        })
    }

    pub(super) fn read(self, s: &Seen) -> Result<State, &'static str> {
        if s.value != self.value {
            return Err("it saw another value");
        }
        if s.value.is_none() {
            return Ok(self);
        }
        if !self.rev.admits(s.rev) {
            return Err("it saw another mod revision");
        }
        if s.version.is_some_and(|n| n < self.version) {
            return Err("it saw a lower version than the writes so far make");
        }
        Ok(State {
            rev: Bound::exact(s.rev),
            version: s.version.unwrap_or(self.version),
            ..self
        })
    }

    pub(super) fn step(self, step: &Step) -> Result<State, &'static str> {
        match *step {
            Step::Put { value, rev } => self.write(value, Some(rev)),
            Step::Get(ref seen) => self.read(seen),
            Step::CasOk { expect, value, rev } if self.value == expect => {
                self.write(value, Some(rev))
            }
            Step::CasOk { .. } => Err("its compare would have failed"),
            Step::CasFailed { expect, .. } if self.value == expect => {
                Err("its compare would have succeeded")
            }
            Step::CasFailed { header, read, .. } => {
                let next = match read {
                    Some(seen) => self.read(&seen)?,
                    None => self,
                };
                if header < next.rev.n {
                    return Err("its header revision is below the key's mod revision");
                }
                Ok(next)
            }
        }
    }

    pub(super) fn holds(self, guard: Guard) -> bool {
        guard.is_none_or(|expect| self.value == expect)
    }

    pub(super) fn covers(self, other: State) -> bool {
        self.value == other.value && self.rev.covers(other.rev) && self.version <= other.version
    }
}

#[derive(Debug)]
pub(super) struct Finite {
    pub(super) call: Nanos,
    pub(super) ret: Nanos,
    pub(super) step: Step,
    /// Index in the history.
    pub(super) op: usize,
}

#[derive(Debug)]
pub(super) struct Unknown {
    pub(super) call: Nanos,
    pub(super) value: Val,
    pub(super) guard: Guard,
    pub(super) op: usize,
}

/// A write of a value in the history: an answered one or an unknown one (by index).
#[derive(Debug, Clone, Copy)]
pub(super) enum Writer {
    Finite(usize),
    Unknown(u32),
}

/// One key's history, ready for the search.
pub(super) struct Compiled<'h> {
    pub(super) h: &'h KeyHistory,
    pub(super) names: Vec<&'h str>,
    pub(super) initial: State,
    /// Answered operations by invocation; unknown writes by invocation.
    pub(super) finite: Vec<Finite>,
    pub(super) unknown: Vec<Unknown>,
    /// Quiescent segments of `finite`.
    pub(super) segments: Vec<Range<usize>>,
    /// Value → last segment with an answered operation that compares against it, directly or
    /// through unknown compare-and-swaps.
    pub(super) needed_until: HashMap<Val, usize>,
    pub(super) writers: HashMap<Val, Vec<Writer>>,
}

/// Interned values.
#[derive(Default)]
pub(super) struct Names<'h> {
    names: Vec<&'h str>,
    ids: HashMap<&'h str, Val>,
}

impl<'h> Names<'h> {
    fn id(&mut self, s: &'h str) -> Val {
        *self.ids.entry(s).or_insert_with(|| {
            self.names.push(s);
            self.names.len() as Val - 1
        })
    }

    fn opt(&mut self, s: &'h Option<String>) -> Option<Val> {
        s.as_deref().map(|s| self.id(s))
    }

    fn seen(&mut self, r: &'h Read) -> Seen {
        Seen {
            value: self.opt(&r.value),
            rev: r.mod_revision,
            version: r.version,
        }
    }
}

pub(super) fn compile(h: &KeyHistory) -> Result<Compiled<'_>, String> {
    let mut names = Names::default();
    let initial = names.seen(&h.initial);
    let initial = State {
        value: initial.value,
        rev: Bound::exact(initial.rev),
        version: initial.version.unwrap_or(0),
    };
    let (mut finite, mut unknown) = (Vec::new(), Vec::new());
    for (i, op) in h.ops.iter().enumerate() {
        let (call, ret) = (op.call, op.ret.max(op.call));
        let step = match (&op.input, &op.output) {
            (Input::Get, Output::Unknown) => continue, // a failed read has no effect
            (Input::Put { value }, Output::Unknown) => {
                let value = names.id(value);
                unknown.push(Unknown {
                    call,
                    value,
                    guard: None,
                    op: i,
                });
                continue;
            }
            (Input::Cas { expect, value }, Output::Unknown) => {
                let (guard, value) = (Some(names.opt(expect)), names.id(value));
                unknown.push(Unknown {
                    call,
                    value,
                    guard,
                    op: i,
                });
                continue;
            }
            (Input::Put { value }, Output::Put { revision }) => Step::Put {
                value: names.id(value),
                rev: *revision,
            },
            (Input::Get, Output::Get(r)) => Step::Get(names.seen(r)),
            (
                Input::Cas { expect, value },
                Output::Cas {
                    succeeded: true,
                    revision,
                    ..
                },
            ) => Step::CasOk {
                expect: names.opt(expect),
                value: names.id(value),
                rev: *revision,
            },
            (Input::Cas { expect, .. }, Output::Cas { revision, read, .. }) => Step::CasFailed {
                expect: names.opt(expect),
                header: *revision,
                read: read.as_ref().map(|r| names.seen(r)),
            },
            _ => return Err(format!("{}: malformed operation {op}", h.key)),
        };
        finite.push(Finite {
            call,
            ret,
            step,
            op: i,
        });
    }
    finite.sort_by_key(|f| (f.call, f.ret));
    unknown.sort_by_key(|u| u.call);

    let mut segments = Vec::new();
    let (mut start, mut max_ret) = (0, 0);
    for (i, f) in finite.iter().enumerate() {
        if i > start && f.call > max_ret {
            segments.push(start..i);
            start = i;
        }
        max_ret = max_ret.max(f.ret);
    }
    if start < finite.len() {
        segments.push(start..finite.len());
    }
    let mut needed_until = HashMap::new();
    let mut writers: HashMap<Val, Vec<Writer>> = HashMap::new();
    for (s, seg) in segments.iter().enumerate() {
        for (i, f) in finite.iter().enumerate().take(seg.end).skip(seg.start) {
            let (mentions, written) = match f.step {
                Step::Put { value, .. } => ([None, None], Some(value)),
                Step::Get(r) => ([r.value, None], None),
                Step::CasOk { expect, value, .. } => ([expect, None], Some(value)),
                Step::CasFailed { expect, read, .. } => {
                    ([expect, read.and_then(|r| r.value)], None)
                }
            };
            for v in mentions.into_iter().flatten() {
                needed_until.insert(v, s);
            }
            if let Some(v) = written {
                writers.entry(v).or_default().push(Writer::Finite(i));
            }
        }
    }
    for (i, u) in unknown.iter().enumerate() {
        writers
            .entry(u.value)
            .or_default()
            .push(Writer::Unknown(i as u32));
    }
    // A value also matters as long as the value of an unknown compare-and-swap expecting it
    // does (the swap can take effect only right after it was written).
    let chains: Vec<(Val, Val)> = unknown
        .iter()
        .filter_map(|u| Some((u.guard??, u.value)))
        .collect();
    let mut changed = true;
    while changed {
        changed = false;
        for (from, to) in &chains {
            if let Some(&until) = needed_until.get(to) {
                if needed_until.get(from).is_none_or(|f| *f < until) {
                    needed_until.insert(*from, until);
                    changed = true;
                }
            }
        }
    }
    Ok(Compiled {
        h,
        names: names.names,
        initial,
        finite,
        unknown,
        segments,
        needed_until,
        writers,
    })
}
