//! The checker must accept what is linearizable and reject what is not: hand-made histories
//! with one planted anomaly each, and random histories generated from a sequential register.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const FOREVER: Nanos = Nanos::MAX;

fn read(value: &str, mod_revision: i64, version: i64) -> Read {
    Read {
        value: Some(value.into()),
        mod_revision,
        version: Some(version),
    }
}

fn op(client: usize, (call, ret): (Nanos, Nanos), input: Input, output: Output) -> Op {
    Op {
        client,
        call,
        ret,
        input,
        output,
    }
}

fn put(c: usize, t: (Nanos, Nanos), value: &str, revision: i64) -> Op {
    let input = Input::Put {
        value: value.into(),
    };
    op(c, t, input, Output::Put { revision })
}

fn get(c: usize, t: (Nanos, Nanos), r: Read) -> Op {
    op(c, t, Input::Get, Output::Get(r))
}

fn cas_input(expect: Option<&str>, value: &str) -> Input {
    Input::Cas {
        expect: expect.map(Into::into),
        value: value.into(),
    }
}

fn cas_ok(c: usize, t: (Nanos, Nanos), expect: Option<&str>, value: &str, rev: i64) -> Op {
    let output = Output::Cas {
        succeeded: true,
        revision: rev,
        read: None,
    };
    op(c, t, cas_input(expect, value), output)
}

fn cas_failed(c: usize, t: (Nanos, Nanos), expect: &str, header: i64, seen: Option<Read>) -> Op {
    let output = Output::Cas {
        succeeded: false,
        revision: header,
        read: seen,
    };
    op(c, t, cas_input(Some(expect), "never"), output)
}

fn unknown(c: usize, call: Nanos, input: Input) -> Op {
    op(c, (call, FOREVER), input, Output::Unknown)
}

fn unknown_put(c: usize, call: Nanos, value: &str) -> Op {
    let input = Input::Put {
        value: value.into(),
    };
    unknown(c, call, input)
}

fn outcome_of(ops: Vec<Op>) -> Outcome {
    let h = KeyHistory {
        key: "k".into(),
        initial: Read::absent(),
        ops,
    };
    check_key(&h, 1_000_000, Instant::now() + Duration::from_secs(60)).outcome
}

#[track_caller]
fn linearizable(ops: Vec<Op>) {
    let o = outcome_of(ops);
    assert_eq!(o, Outcome::Linearizable, "expected linearizable");
}

/// Asserts a violation whose explanation mentions every one of `mentions`.
#[track_caller]
fn violation(ops: Vec<Op>, mentions: &[&str]) {
    match outcome_of(ops) {
        Outcome::Violation(why) => {
            for m in mentions {
                assert!(why.contains(m), "explanation lacks {m:?}:\n{why}");
            }
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn a_sequential_history_is_linearizable() {
    linearizable(vec![
        get(0, (0, 1), Read::absent()),
        cas_ok(1, (2, 3), None, "a", 2),
        get(0, (4, 5), read("a", 2, 1)),
        cas_ok(0, (6, 7), Some("a"), "b", 5),
        cas_failed(1, (8, 9), "a", 6, Some(read("b", 5, 2))),
        put(2, (10, 11), "c", 9),
        get(1, (12, 13), read("c", 9, 3)),
    ]);
}

#[test]
fn a_read_overlapping_a_write_may_see_either_side() {
    for r in [Read::absent(), read("a", 2, 1)] {
        linearizable(vec![
            put(0, (0, 100), "a", 2),
            get(1, (10, 20), r.clone()),
            get(2, (30, 40), r),
        ]);
    }
    // ... but once one read saw the write, a later read cannot go back.
    violation(
        vec![
            put(0, (0, 100), "a", 2),
            get(1, (10, 20), read("a", 2, 1)),
            get(2, (30, 40), Read::absent()),
        ],
        &["c2 get → absent", "it saw another value"],
    );
}

#[test]
fn concurrent_writes_are_ordered_by_their_revisions() {
    let writes = || {
        vec![
            put(0, (0, 100), "a", 5),
            put(1, (0, 100), "b", 4),
            get(2, (50, 60), read("b", 4, 1)),
        ]
    };
    let mut ok = writes();
    ok.push(get(2, (200, 210), read("a", 5, 2)));
    linearizable(ok);
    // "a" was acknowledged at the later revision: it cannot be lost.
    let mut lost = writes();
    lost.push(get(2, (200, 210), read("b", 4, 1)));
    violation(lost, &["k: no linearization", "c2 get → \"b\" @rev 4"]);
}

#[test]
fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
    violation(
        vec![
            put(0, (0, 10), "a", 2),
            put(1, (20, 30), "b", 3),
            get(2, (40, 50), read("a", 2, 1)),
        ],
        &["c2 get → \"a\" @rev 2", "the key is \"b\" @rev 3 v≥2"],
    );
}

#[test]
fn a_lost_acknowledged_write_is_a_violation() {
    violation(
        vec![
            put(0, (0, 10), "a", 2),
            cas_ok(1, (20, 30), Some("a"), "b", 3),
            get(2, (40, 50), read("a", 2, 1)),
        ],
        &["c1 cas \"a\"→\"b\" → ok rev 3"],
    );
}

#[test]
fn reading_a_value_never_written_is_a_violation() {
    violation(
        vec![put(0, (0, 10), "a", 2), get(1, (20, 30), read("zzz", 2, 1))],
        &["zzz"],
    );
    // Not even one written later.
    violation(
        vec![get(1, (0, 10), read("a", 2, 1)), put(0, (20, 30), "a", 2)],
        &["it saw another value"],
    );
}

#[test]
fn two_compare_and_swaps_cannot_both_win_from_the_same_value() {
    let race = |second: Op| {
        vec![
            put(0, (0, 10), "a", 2),
            cas_ok(1, (20, 40), Some("a"), "b", 3),
            second,
        ]
    };
    linearizable(race(cas_failed(2, (20, 40), "a", 3, Some(read("b", 3, 2)))));
    violation(
        race(cas_ok(2, (20, 40), Some("a"), "c", 4)),
        &["its compare would have failed"],
    );
}

#[test]
fn a_compare_that_fails_on_the_expected_value_is_a_violation() {
    violation(
        vec![
            put(0, (0, 10), "a", 2),
            cas_failed(1, (20, 30), "a", 5, Some(read("a", 2, 1))),
        ],
        &["its compare would have succeeded"],
    );
}

#[test]
fn revisions_and_versions_must_agree() {
    // Going backwards.
    violation(
        vec![put(0, (0, 10), "a", 10), put(0, (20, 30), "b", 8)],
        &["its revision is not above the key's mod revision"],
    );
    // A read at another mod revision or version than the write's.
    violation(
        vec![put(0, (0, 10), "a", 5), get(1, (20, 30), read("a", 6, 1))],
        &["it saw another mod revision"],
    );
    // Every acknowledged write raises the version.
    violation(
        vec![
            put(0, (0, 10), "a", 5),
            put(0, (20, 30), "b", 6),
            get(1, (40, 50), read("b", 6, 1)),
        ],
        &["it saw a lower version"],
    );
    // A failed compare's header is the store's revision: never below the key's.
    violation(
        vec![
            put(0, (0, 10), "a", 5),
            cas_failed(1, (20, 30), "z", 4, None),
        ],
        &["header revision"],
    );
}

#[test]
fn an_unknown_write_may_have_taken_effect() {
    let before = || vec![put(0, (0, 10), "a", 2), unknown_put(1, 20, "b")];
    let mut seen = before();
    seen.push(get(2, (30, 40), read("b", 7, 2)));
    linearizable(seen);
    // Its revision is unknown but above the previous one.
    let mut at_old_rev = before();
    at_old_rev.push(get(2, (30, 40), read("b", 2, 2)));
    violation(at_old_rev, &["it saw another mod revision"]);
    // And it raised the version.
    let mut bad_version = before();
    bad_version.push(get(2, (30, 40), read("b", 7, 1)));
    violation(bad_version, &["it saw a lower version"]);
}

#[test]
fn an_unknown_write_may_not_have_taken_effect_or_take_effect_late() {
    let mut ops = vec![put(0, (0, 10), "a", 2), unknown_put(1, 20, "b")];
    for t in (30..300).step_by(20) {
        ops.push(get(2, (t, t + 5), read("a", 2, 1)));
    }
    linearizable(ops.clone());
    // Many quiescent segments later it still may apply, once.
    ops.push(get(2, (400, 410), read("b", 9, 2)));
    linearizable(ops.clone());
    ops.push(get(0, (420, 430), read("a", 2, 1)));
    violation(
        ops,
        &["c0 get → \"a\" @rev 2", "the key is \"b\" @rev 9 v≥2"],
    );
}

#[test]
fn an_unknown_write_cannot_take_effect_before_it_was_invoked() {
    violation(
        vec![get(0, (0, 10), read("b", 3, 1)), unknown_put(1, 20, "b")],
        &["it saw another value"],
    );
}

#[test]
fn an_unknown_write_no_read_saw_may_explain_a_failed_compare() {
    // c0 saw "a"; its compare-and-swap from "a" failed: only the unknown write explains it,
    // even many quiescent cuts later (by then it is an anonymous ghost).
    let mut ops = vec![put(0, (0, 10), "a", 2), unknown_put(1, 15, "x")];
    for t in (20..200).step_by(20) {
        ops.push(get(0, (t, t + 5), read("a", 2, 1)));
    }
    let mut explained = ops.clone();
    explained.push(cas_failed(0, (300, 310), "a", 9, None));
    linearizable(explained);

    let mut without = ops.clone();
    without.remove(1);
    without.push(cas_failed(0, (300, 310), "a", 9, None));
    violation(without, &["its compare would have succeeded"]);

    // It can take effect only once: the key cannot go back to "a" and leave it again.
    let mut twice = ops;
    twice.push(cas_failed(0, (300, 310), "a", 9, None));
    twice.push(put(2, (320, 330), "a2", 12));
    twice.push(get(0, (340, 350), read("a2", 12, 3)));
    twice.push(cas_failed(0, (360, 370), "a2", 14, None));
    violation(twice, &["its compare would have succeeded"]);
}

#[test]
fn an_unknown_compare_and_swap_needs_its_compare_to_hold() {
    let with = |guard: &str| {
        vec![
            put(0, (0, 10), "a", 2),
            unknown(1, 15, cas_input(Some(guard), "x")),
            get(0, (20, 30), read("a", 2, 1)),
            get(0, (40, 50), read("a", 2, 1)),
            cas_failed(0, (60, 70), "a", 9, None),
        ]
    };
    linearizable(with("a"));
    violation(with("zzz"), &["its compare would have succeeded"]);
}

#[test]
fn unknown_writes_may_chain_through_a_compare_and_swap() {
    // Neither "e" nor the swap's expectation is ever read; only the swap's result is.
    let chain = |expect: &str| {
        vec![
            put(0, (0, 10), "a", 2),
            unknown_put(1, 15, "e"),
            unknown(2, 16, cas_input(Some(expect), "x")),
            get(0, (20, 30), read("a", 2, 1)),
            get(0, (40, 50), read("a", 2, 1)),
            get(0, (60, 70), read("x", 9, 3)),
        ]
    };
    linearizable(chain("e"));
    violation(chain("zzz"), &["c0 get → \"x\" @rev 9"]);
}

#[test]
fn the_budget_leaves_a_key_undecided() {
    let h = KeyHistory {
        key: "k".into(),
        initial: Read::absent(),
        ops: vec![
            put(0, (0, 100), "a", 2),
            put(1, (0, 100), "b", 3),
            get(2, (0, 100), read("b", 3, 2)),
        ],
    };
    let r = check_key(&h, 2, Instant::now() + Duration::from_secs(60));
    assert!(
        matches!(&r.outcome, Outcome::Undecided(why) if why.contains("budget")),
        "{r:?}"
    );
    let report = Report {
        keys: vec![r],
        elapsed: Duration::ZERO,
    };
    assert_eq!((report.undecided(), report.violations()), (1, 0));
    // An undecided key fails the chaos run like a violation.
    let (mut v, mut problems) = (crate::verify::Verdict::default(), Vec::new());
    crate::verify::record_linearizability(&report, &mut v, &mut problems);
    assert_eq!((v.total_anomalies(), problems.len()), (1, 1));
}

#[test]
fn a_malformed_operation_is_not_a_pass() {
    let bad = op(0, (0, 1), Input::Get, Output::Put { revision: 2 });
    assert!(matches!(outcome_of(vec![bad]), Outcome::Undecided(_)));
}

/// A history of `n` operations by `clients` clients on one key, linearizable by construction:
/// each operation takes effect at a random instant within its interval (an unknown write at a
/// random instant after its invocation, or never) on a sequential register, while writes to
/// other keys advance the revision in between.
fn random_history(seed: u64, clients: usize, n: usize) -> KeyHistory {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = vec![0u64; clients];
    let mut written: Vec<String> = Vec::new();
    // (op, instant it takes effect)
    let mut ops: Vec<(Op, Option<u64>)> = Vec::new();
    for i in 0..n {
        let c = rng.gen_range(0..clients);
        let call = clock[c] + rng.gen_range(0..20);
        let ret = call + rng.gen_range(1..60);
        clock[c] = ret;
        let value = format!("v{i}");
        let input = match rng.gen_range(0..3) {
            0 => Input::Get,
            1 => Input::Put { value },
            _ => Input::Cas {
                expect: match written.len() {
                    0 => None,
                    k => Some(written[rng.gen_range(k.saturating_sub(3)..k)].clone()),
                },
                value,
            },
        };
        if let Input::Put { value } | Input::Cas { value, .. } = &input {
            written.push(value.clone());
        }
        let unknown = rng.gen_bool(0.15);
        let at = if !unknown {
            Some(rng.gen_range(call..=ret))
        } else if rng.gen_bool(0.5) {
            Some(rng.gen_range(call..call + 500))
        } else {
            None
        };
        let output = if unknown {
            Output::Unknown
        } else {
            Output::Get(Read::absent()) // filled in below
        };
        ops.push((op(c, (call, ret), input, output), at));
    }
    let mut order: Vec<usize> = (0..ops.len()).filter(|i| ops[*i].1.is_some()).collect();
    order.sort_by_key(|i| ops[*i].1);
    let (mut state, mut revision) = (Read::absent(), 1i64);
    for i in order {
        let o = &mut ops[i].0;
        let output = apply(&o.input, &mut state, &mut revision, &mut rng);
        if o.output != Output::Unknown {
            o.output = output;
        }
    }
    KeyHistory {
        key: format!("random/{seed}"),
        initial: Read::absent(),
        ops: ops.into_iter().map(|(o, _)| o).collect(),
    }
}

/// One step of the sequential register: the output of `input` on `state`.
fn apply(input: &Input, state: &mut Read, revision: &mut i64, rng: &mut StdRng) -> Output {
    let (value, succeeded) = match input {
        Input::Get => return Output::Get(state.clone()),
        Input::Put { value } => (value, None),
        Input::Cas { expect, value } => (value, Some(*expect == state.value)),
    };
    if succeeded == Some(false) {
        return Output::Cas {
            succeeded: false,
            revision: *revision,
            read: Some(state.clone()),
        };
    }
    *revision += rng.gen_range(1..3);
    *state = read(value, *revision, state.version.unwrap_or(0) + 1);
    match succeeded {
        None => Output::Put {
            revision: *revision,
        },
        Some(_) => Output::Cas {
            succeeded: true,
            revision: *revision,
            read: None,
        },
    }
}

#[test]
fn random_linearizable_histories_pass() {
    let histories: Vec<_> = (0..300).map(|seed| random_history(seed, 3, 120)).collect();
    let report = check(&histories, &Budget::default());
    for k in &report.keys {
        assert_eq!(k.outcome, Outcome::Linearizable, "{}", k.key);
    }
    assert!(report.ops_unknown() > 0 && report.ops_ok() > 0);
}

#[test]
fn a_long_history_checks_in_a_few_steps_per_operation() {
    let h = random_history(7, 3, 30_000);
    let r = check_key(&h, 3_000_000, Instant::now() + Duration::from_secs(60));
    assert_eq!(r.outcome, Outcome::Linearizable);
    assert!(r.segments > 100, "{} segments", r.segments);
    assert!(r.ops_unknown > 1_000, "{} unknown", r.ops_unknown);
    assert!(r.steps < 20 * 30_000, "{} steps", r.steps);
}

#[test]
fn a_planted_stale_read_in_a_long_history_is_found() {
    let mut h = random_history(11, 3, 5_000);
    let end = h.ops.iter().map(|o| o.ret).filter(|r| *r != FOREVER).max();
    let end = end.unwrap_or(0) + 1_000;
    // Read, well after everything, the first value ever acknowledged.
    let first = h.ops.iter().find_map(|o| match (&o.input, &o.output) {
        (Input::Put { value }, Output::Put { revision }) => Some(read(value, *revision, 1)),
        _ => None,
    });
    h.ops
        .push(get(9, (end, end + 5), first.unwrap_or_else(Read::absent)));
    let r = check_key(&h, 3_000_000, Instant::now() + Duration::from_secs(60));
    assert!(
        matches!(&r.outcome, Outcome::Violation(why) if why.contains("c9 get")),
        "{:?}",
        r.outcome
    );
}
