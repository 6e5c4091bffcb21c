//! The search behind [`super::check_key`]: per quiescent segment an exhaustive memoized
//! depth-first search whose end configurations start the next segment.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use super::model::{compile, Compiled, Guard, State, Val, Writer, GHOST};
use super::{KeyHistory, Nanos, Outcome, Secs};

/// Where the search stands, apart from which operations are linearized.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    state: State,
    /// Unknown writes taken in and not applied (indices into `unknown`, ascending).
    pending: Vec<u32>,
    /// Ghost writes still available, per guard (ascending by guard).
    ghosts: Vec<(Guard, u32)>,
}

impl Config {
    fn ghosts_of(&self, g: Guard) -> u32 {
        self.ghosts
            .iter()
            .find(|(h, _)| *h == g)
            .map_or(0, |(_, n)| *n)
    }

    fn add_ghost(&mut self, g: Guard) {
        match self.ghosts.binary_search_by(|(h, _)| h.cmp(&g)) {
            Ok(k) => self.ghosts[k].1 += 1,
            Err(k) => self.ghosts.insert(k, (g, 1)),
        }
    }

    /// Whether `self` can do all that `other` can: its state admits all that the other's does,
    /// and it has at least the same unknown writes left (they are optional: more never hurts).
    fn covers(&self, other: &Config) -> bool {
        self.state.covers(other.state)
            && other
                .pending
                .iter()
                .all(|u| self.pending.binary_search(u).is_ok())
            && other.ghosts.iter().all(|(g, n)| self.ghosts_of(*g) >= *n)
    }
}

/// A step of a linearization, for explanations.
#[derive(Debug, Clone, Copy)]
enum Move {
    Start(usize),
    Op(usize),
    Unknown(u32),
    Ghost,
}

struct Node {
    lin: Vec<u64>,
    /// Answered operations linearized.
    done: usize,
    /// Unknown writes taken in (`unknown[..taken]`).
    taken: usize,
    depth: usize,
    cfg: Config,
    mv: Move,
}

impl Node {
    /// Unknown writes are tried only right before an operation that depends on the value they
    /// wrote: one followed by anything else can be left out of the linearization, which then
    /// admits at least as much (lower revision and version bounds, one more write pending).
    fn after_unknown(&self) -> bool {
        matches!(self.mv, Move::Unknown(_) | Move::Ghost)
    }
}

enum Segment {
    Ends(Vec<Config>, usize),
    Stuck(String),
    OutOfBudget(&'static str),
}

/// The deepest point a segment's search reached.
struct Deepest {
    done: usize,
    path: Vec<Move>,
    cfg: Config,
    lin: Vec<u64>,
}

struct Search<'c, 'h> {
    c: &'c Compiled<'h>,
    steps: u64,
    max_steps: u64,
    deadline: Instant,
}

/// Checks one key: (outcome, segments, steps).
pub(super) fn run(h: &KeyHistory, max_steps: u64, deadline: Instant) -> (Outcome, u64, u64) {
    let c = match compile(h) {
        Ok(c) => c,
        Err(why) => return (Outcome::Undecided(why), 0, 0),
    };
    let mut search = Search {
        c: &c,
        steps: 0,
        max_steps,
        deadline,
    };
    let mut frontier = vec![Config {
        state: c.initial,
        pending: Vec::new(),
        ghosts: Vec::new(),
    }];
    let mut taken = 0;
    let total = c.segments.len() as u64;
    for s in 0..c.segments.len() {
        match search.segment(s, &frontier, taken) {
            Segment::Ends(ends, t) => {
                taken = t;
                frontier = search.cut(s + 1, ends, taken);
            }
            Segment::Stuck(why) => return (Outcome::Violation(why), total, search.steps),
            Segment::OutOfBudget(what) => {
                let why = format!(
                    "{}: {what} after {} steps, in segment {} of {total} ({} operations from {})",
                    h.key,
                    search.steps,
                    s + 1,
                    c.segments[s].len(),
                    Secs(c.finite[c.segments[s].start].call)
                );
                return (Outcome::Undecided(why), total, search.steps);
            }
        }
    }
    (Outcome::Linearizable, total, search.steps)
}

fn is_set(lin: &[u64], i: usize) -> bool {
    lin[i / 64] & (1 << (i % 64)) != 0
}

impl Search<'_, '_> {
    /// The unlinearized operations that may go next (global indices), and the horizon: the
    /// earliest response among the unlinearized ones (or the segment's end if none is left).
    fn next_ops(&self, s: usize, lin: &[u64]) -> (Vec<usize>, Nanos) {
        let seg = &self.c.segments[s];
        let first = lin
            .iter()
            .position(|w| *w != u64::MAX)
            .map_or(seg.len(), |w| w * 64 + lin[w].trailing_ones() as usize);
        let mut horizon = Nanos::MAX;
        let mut open = Vec::new();
        for i in first..seg.len() {
            let f = &self.c.finite[seg.start + i];
            if f.call > horizon {
                break;
            }
            if !is_set(lin, i) {
                horizon = horizon.min(f.ret);
                open.push(seg.start + i);
            }
        }
        open.retain(|i| self.c.finite[*i].call <= horizon);
        if open.is_empty() {
            horizon = match self.c.segments.get(s + 1) {
                Some(next) => self.c.finite[next.start].call.saturating_sub(1),
                None => Nanos::MAX,
            };
        }
        (open, horizon)
    }

    /// Whether an unknown write of `v` can become a ghost from segment `s` on: nothing from
    /// `s` on compares against `v`.
    fn ghostable(&self, v: Val, s: usize) -> bool {
        self.c.needed_until.get(&v).is_none_or(|m| *m < s)
    }

    /// Takes in the unknown writes invoked up to `horizon`.
    fn take_in(&self, s: usize, cfg: &mut Config, taken: &mut usize, horizon: Nanos) {
        while let Some(u) = self.c.unknown.get(*taken).filter(|u| u.call <= horizon) {
            if self.ghostable(u.value, s) {
                cfg.add_ghost(u.guard);
            } else {
                cfg.pending.push(*taken as u32);
            }
            *taken += 1;
        }
    }

    /// The end configurations of segment `s`, searched from every configuration of `frontier`.
    fn segment(&mut self, s: usize, frontier: &[Config], taken: usize) -> Segment {
        let m = self.c.segments[s].len();
        let lin = vec![0u64; m.div_ceil(64)];
        let (_, horizon) = self.next_ops(s, &lin);
        let mut stack: Vec<Node> = Vec::new();
        for (k, cfg) in frontier.iter().enumerate().rev() {
            let (mut cfg, mut taken) = (cfg.clone(), taken);
            self.take_in(s, &mut cfg, &mut taken, horizon);
            let mv = Move::Start(k);
            stack.push(Node {
                lin: lin.clone(),
                done: 0,
                taken,
                depth: 0,
                cfg,
                mv,
            });
        }
        let mut visited: HashMap<(Vec<u64>, Option<Val>), Vec<Config>> = HashMap::new();
        let (mut ends, mut end_taken) = (Vec::new(), taken);
        let mut path: Vec<Move> = Vec::new();
        let mut deepest: Option<Deepest> = None;
        while let Some(n) = stack.pop() {
            self.steps += 1;
            if self.steps > self.max_steps {
                return Segment::OutOfBudget("step budget exhausted");
            }
            if self.steps & 0xfff == 0 && Instant::now() > self.deadline {
                return Segment::OutOfBudget("deadline passed");
            }
            path.truncate(n.depth);
            path.push(n.mv);
            let seen = visited
                .entry((n.lin.clone(), n.cfg.state.value))
                .or_default();
            if seen.iter().any(|v| v.covers(&n.cfg)) {
                continue;
            }
            seen.push(n.cfg.clone());
            if n.done == m {
                end_taken = n.taken;
                ends.push(n.cfg);
                continue;
            }
            if deepest.as_ref().is_none_or(|d| n.done > d.done) {
                let (cfg, lin) = (n.cfg.clone(), n.lin.clone());
                deepest = Some(Deepest {
                    done: n.done,
                    path: path.clone(),
                    cfg,
                    lin,
                });
            }
            self.expand(s, &n, &mut stack);
        }
        match deepest {
            _ if !ends.is_empty() => Segment::Ends(ends, end_taken),
            Some(d) => Segment::Stuck(self.explain(s, frontier, &d)),
            None => Segment::Stuck(format!("{}: no starting state", self.c.h.key)),
        }
    }

    /// Pushes every successor of `n`; answered operations last, so they are explored first
    /// and the configurations with the most unknown writes left are visited first.
    fn expand(&self, s: usize, n: &Node, stack: &mut Vec<Node>) {
        let st = n.cfg.state;
        let open = self.next_ops(s, &n.lin).0;
        // An unknown write is applied only if what comes right after depends on its value
        // (see `Node::after_unknown`): an answered operation, or an unknown compare-and-swap.
        let wanted = |next: State| {
            let v = next.value;
            open.iter().any(|&i| {
                let step = &self.c.finite[i].step;
                step.depends_on(v) && next.step(step).is_ok()
            }) || n
                .cfg
                .pending
                .iter()
                .any(|&u| self.c.unknown[u as usize].guard == Some(v))
                || n.cfg.ghosts.iter().any(|(g, _)| *g == Some(v))
        };
        let unknown_write = |value: Val, guard: Guard| {
            if !st.holds(guard) || (guard.is_none() && n.after_unknown()) {
                return None;
            }
            st.write(value, None).ok().filter(|next| wanted(*next))
        };
        let child = |cfg: Config, mv: Move| Node {
            lin: n.lin.clone(),
            done: n.done,
            taken: n.taken,
            depth: n.depth + 1,
            cfg,
            mv,
        };
        for (k, &u) in n.cfg.pending.iter().enumerate() {
            let w = &self.c.unknown[u as usize];
            if let Some(next) = unknown_write(w.value, w.guard) {
                let mut cfg = n.cfg.clone();
                cfg.pending.remove(k);
                cfg.state = next;
                stack.push(child(cfg, Move::Unknown(u)));
            }
        }
        for (k, &(g, _)) in n.cfg.ghosts.iter().enumerate() {
            if let Some(next) = unknown_write(GHOST, g) {
                let mut cfg = n.cfg.clone();
                cfg.ghosts[k].1 -= 1;
                cfg.ghosts.retain(|(_, n)| *n > 0);
                cfg.state = next;
                stack.push(child(cfg, Move::Ghost));
            }
        }
        let seg_start = self.c.segments[s].start;
        for &i in open.iter().rev() {
            let step = &self.c.finite[i].step;
            if n.after_unknown() && !step.depends_on(st.value) {
                continue;
            }
            let Ok(state) = st.step(step) else {
                continue;
            };
            let mut lin = n.lin.clone();
            lin[(i - seg_start) / 64] |= 1 << ((i - seg_start) % 64);
            let mut cfg = Config {
                state,
                ..n.cfg.clone()
            };
            let mut taken = n.taken;
            self.take_in(s, &mut cfg, &mut taken, self.next_ops(s, &lin).1);
            let depth = n.depth + 1;
            stack.push(Node {
                lin,
                done: n.done + 1,
                taken,
                depth,
                cfg,
                mv: Move::Op(i),
            });
        }
    }

    /// The configurations that start segment `s` (whose operations are all invoked after every
    /// earlier one returned): pending writes no longer mentioned become ghosts, ghosts whose
    /// guard can never hold again go, and configurations another one covers are dropped.
    fn cut(&self, s: usize, ends: Vec<Config>, taken: usize) -> Vec<Config> {
        let Some(seg) = self.c.segments.get(s) else {
            return ends;
        };
        let at = self.c.finite[seg.start].call;
        let mut out: Vec<Config> = Vec::new();
        for mut cfg in ends {
            let pending = std::mem::take(&mut cfg.pending);
            for u in pending {
                let w = &self.c.unknown[u as usize];
                if self.ghostable(w.value, s) {
                    cfg.add_ghost(w.guard);
                } else {
                    cfg.pending.push(u);
                }
            }
            let live = |g: &Guard, cfg: &Config| match *g {
                None => true,
                Some(e) if cfg.state.value == e => true,
                Some(None) => false, // nothing deletes: "absent" never comes back
                Some(Some(v)) => self.c.writers.get(&v).is_some_and(|ws| {
                    ws.iter().any(|w| match *w {
                        Writer::Finite(i) => self.c.finite[i].call >= at,
                        Writer::Unknown(u) => {
                            u as usize >= taken || cfg.pending.binary_search(&u).is_ok()
                        }
                    })
                }),
            };
            let ghosts = std::mem::take(&mut cfg.ghosts);
            let ghosts = ghosts.into_iter().filter(|(g, _)| live(g, &cfg)).collect();
            cfg.ghosts = ghosts;
            if out.iter().any(|o| o.covers(&cfg)) {
                continue;
            }
            out.retain(|o| !cfg.covers(o));
            out.push(cfg);
        }
        out
    }

    /// Why segment `s` has no linearization: the states it could start from, its operations,
    /// the longest linearizable prefix found, and why no operation fits after it.
    fn explain(&self, s: usize, frontier: &[Config], d: &Deepest) -> String {
        const SHOWN: usize = 16;
        let c = self.c;
        let seg = &c.segments[s];
        let op = |i: usize| &c.h.ops[c.finite[i].op];
        let first = c.finite[seg.start].call;
        let last = c.finite[seg.clone()]
            .iter()
            .map(|f| f.ret)
            .max()
            .unwrap_or(first);
        let mut out = format!(
            "{}: no linearization of the {} operations in [{}, {}] (segment {} of {})\n  possible states before:",
            c.h.key,
            seg.len(),
            Secs(first),
            Secs(last),
            s + 1,
            c.segments.len()
        );
        for cfg in frontier.iter().take(4) {
            let _ = write!(out, " {};", self.describe(cfg));
        }
        if frontier.len() > 4 {
            let _ = write!(out, " and {} more;", frontier.len() - 4);
        }
        out.push_str("\n  operations:");
        for i in seg.clone().take(SHOWN) {
            let _ = write!(out, "\n    {}", op(i));
        }
        if seg.len() > SHOWN {
            let _ = write!(out, "\n    … and {} more", seg.len() - SHOWN);
        }
        let _ = write!(
            out,
            "\n  longest linearizable prefix ({} of {}):",
            d.done,
            seg.len()
        );
        let skip = d.path.len().saturating_sub(SHOWN);
        if skip > 0 {
            let _ = write!(out, "\n    … {skip} steps");
        }
        for mv in &d.path[skip..] {
            let _ = match *mv {
                Move::Start(k) => write!(out, "\n    from {}", self.describe(&frontier[k])),
                Move::Op(i) => write!(out, "\n    {}", op(i)),
                Move::Unknown(u) => {
                    let o = &c.h.ops[c.unknown[u as usize].op];
                    write!(out, "\n    {o} takes effect")
                }
                Move::Ghost => write!(out, "\n    an earlier unknown write takes effect"),
            };
        }
        let st = d.cfg.state;
        let _ = write!(
            out,
            "\n  then the key is {}, and no operation fits:",
            self.show(st)
        );
        for i in self.next_ops(s, &d.lin).0 {
            let step = &c.finite[i].step;
            if let Err(why) = st.step(step) {
                let _ = write!(out, "\n    {}: {why}", op(i));
            }
            for &u in d.cfg.pending.iter().take(4) {
                let w = &c.unknown[u as usize];
                let after = st
                    .holds(w.guard)
                    .then(|| st.write(w.value, None).ok())
                    .flatten();
                if let Some(Err(why)) = after.map(|st| st.step(step)) {
                    let o = &c.h.ops[w.op];
                    let _ = write!(out, "\n      (or, had {o} taken effect first: {why})");
                }
            }
        }
        out
    }

    fn show(&self, st: State) -> String {
        let mut out = match st.value {
            None => return "absent".into(),
            Some(GHOST) => "⟨a value written by an unknown write⟩".to_string(),
            Some(v) => format!("{:?}", self.c.names[v as usize]),
        };
        let r = st.rev;
        let at_least = if r.exact { "" } else { "≥" };
        let _ = write!(out, " @rev {at_least}{} v≥{}", r.n, st.version);
        let writer = st.value.and_then(|v| self.c.writers.get(&v)?.first());
        let _ = match writer {
            Some(Writer::Finite(i)) => {
                write!(out, " (written by {})", self.c.h.ops[self.c.finite[*i].op])
            }
            Some(Writer::Unknown(u)) => write!(
                out,
                " (written by {})",
                self.c.h.ops[self.c.unknown[*u as usize].op]
            ),
            None => Ok(()),
        };
        out
    }

    fn describe(&self, cfg: &Config) -> String {
        let unknown = cfg.pending.len() as u32 + cfg.ghosts.iter().map(|(_, n)| n).sum::<u32>();
        match unknown {
            0 => self.show(cfg.state),
            n => format!("{} (+{n} unknown writes pending)", self.show(cfg.state)),
        }
    }
}
