//! Range options: single/prefix/from-key/all, limit and `more`, `count`, sort, keys_only,
//! count_only, revision filters, revision errors.
#![allow(clippy::unwrap_used)]

use muster_types::{ApplyError, KeyRange, RangeRequest, SortOrder, SortTarget};

use super::test_util::*;

/// Keys with distinct create/mod revisions and versions:
/// a@2 (v "3"), b@3 (v "1"), c@4 (v "2"), then b updated at 5 and 6 → b: version 3, mod 6.
fn fixture() -> H {
    let mut h = H::new();
    h.put("a", "3");
    h.put("b", "1");
    h.put("c", "2");
    h.put("b", "1");
    h.put("b", "1");
    h.put("other", "x"); // 7
    h
}

fn req(range: KeyRange) -> RangeRequest {
    RangeRequest {
        range,
        ..Default::default()
    }
}

fn abc() -> KeyRange {
    KeyRange::new("a", "d")
}

#[test]
fn single_prefix_from_key_and_all() {
    let mut h = fixture();
    h.put("ab", "x");
    assert_eq!(keys(&h.range(req(KeyRange::single("a"))).unwrap()), ["a"]);
    assert_eq!(
        keys(&h.range(req(KeyRange::single("zz"))).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        keys(&h.range(req(KeyRange::prefix("a"))).unwrap()),
        ["a", "ab"]
    );
    assert_eq!(
        keys(&h.range(req(KeyRange::new("b", vec![0]))).unwrap()),
        ["b", "c", "other"]
    );
    assert_eq!(
        keys(&h.range(req(all())).unwrap()),
        ["a", "ab", "b", "c", "other"]
    );
    assert_eq!(
        keys(&h.range(req(KeyRange::new("c", "a"))).unwrap()),
        Vec::<String>::new()
    );
}

#[test]
fn limit_sets_more_and_count_is_everything_matched() {
    let h = fixture();
    let r = h
        .range(RangeRequest {
            limit: 2,
            ..req(abc())
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".to_string(), "b".to_string()], true, 3)
    );
    let r = h
        .range(RangeRequest {
            limit: 3,
            ..req(abc())
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (3, false, 3));
    let r = h
        .range(RangeRequest {
            limit: 0,
            ..req(abc())
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (3, false, 3));
}

#[test]
fn sort_by_each_target() {
    let h = fixture();
    let sorted = |order, target| {
        keys(
            &h.range(RangeRequest {
                sort_order: order,
                sort_target: target,
                ..req(abc())
            })
            .unwrap(),
        )
    };
    assert_eq!(sorted(SortOrder::None, SortTarget::Key), ["a", "b", "c"]);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Key), ["a", "b", "c"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version),
        ["b", "a", "c"]
    ); // 3,1,1: ties in key order
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Create),
        ["a", "b", "c"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Create),
        ["c", "b", "a"]
    );
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Mod), ["a", "c", "b"]);
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Value),
        ["b", "c", "a"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Value),
        ["a", "c", "b"]
    );
    // etcd: order NONE with a target other than KEY sorts ascending.
    assert_eq!(sorted(SortOrder::None, SortTarget::Value), ["b", "c", "a"]);
}

#[test]
fn sort_with_limit_sorts_before_truncating() {
    let h = fixture();
    let r = h
        .range(RangeRequest {
            limit: 1,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            ..req(abc())
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".to_string()], true, 3)
    );
    // etcd quirk, mirrored: with order NONE only limit+1 keys (by key) are fetched, then sorted.
    let r = h
        .range(RangeRequest {
            limit: 1,
            sort_target: SortTarget::Value,
            ..req(abc())
        })
        .unwrap();
    assert_eq!((keys(&r), r.more), (vec!["b".to_string()], true));
}

#[test]
fn keys_only_and_count_only() {
    let h = fixture();
    let r = h
        .range(RangeRequest {
            keys_only: true,
            ..req(abc())
        })
        .unwrap();
    assert_eq!(keys(&r), ["a", "b", "c"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(r.kvs[1].version, 3);
    let r = h
        .range(RangeRequest {
            count_only: true,
            limit: 1,
            ..req(abc())
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false));
}

#[test]
fn revision_filters_prune_kvs_but_not_count() {
    let h = fixture();
    let f = |min_mod, max_mod, min_create, max_create| {
        let r = h
            .range(RangeRequest {
                min_mod_revision: min_mod,
                max_mod_revision: max_mod,
                min_create_revision: min_create,
                max_create_revision: max_create,
                ..req(abc())
            })
            .unwrap();
        // etcd's count is taken before the filters.
        assert_eq!(r.count, 3);
        keys(&r)
    };
    assert_eq!(f(5, 0, 0, 0), ["b"]);
    assert_eq!(f(0, 4, 0, 0), ["a", "c"]);
    assert_eq!(f(0, 0, 3, 0), ["b", "c"]);
    assert_eq!(f(0, 0, 0, 3), ["a", "b"]);
    assert_eq!(f(3, 6, 3, 3), ["b"]);
    // Filters apply before limit: the limit counts surviving keys.
    let r = h
        .range(RangeRequest {
            min_create_revision: 3,
            limit: 1,
            ..req(abc())
        })
        .unwrap();
    assert_eq!((keys(&r), r.more), (vec!["b".to_string()], true));
}

#[test]
fn future_and_compacted_revisions_are_errors() {
    let mut h = fixture();
    let at = |h: &H, revision| {
        h.range(RangeRequest {
            revision,
            ..req(abc())
        })
        .map(|r| keys(&r))
    };
    assert_eq!(
        at(&h, 8),
        Err(ApplyError::FutureRevision {
            current_revision: 7
        })
    );
    assert_eq!(at(&h, 7).unwrap().len(), 3);
    assert_eq!(at(&h, -1).unwrap().len(), 3);
    h.apply(muster_types::Command::Compact { revision: 4 });
    assert_eq!(
        at(&h, 3),
        Err(ApplyError::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(at(&h, 4).unwrap(), ["a", "b", "c"]);
}

#[test]
fn options_also_apply_at_old_revisions() {
    let mut h = fixture();
    h.delete(KeyRange::single("a")); // 8
    let r = h
        .range(RangeRequest {
            revision: 4,
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Mod,
            limit: 2,
            ..req(abc())
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["c".to_string(), "b".to_string()], true, 3)
    );
    assert_eq!(r.kvs[1].version, 1);
    let r = h
        .range(RangeRequest {
            revision: 4,
            count_only: true,
            ..req(abc())
        })
        .unwrap();
    assert_eq!(r.count, 3);
    let r = h
        .range(RangeRequest {
            revision: 8,
            ..req(abc())
        })
        .unwrap();
    assert_eq!(r.count, 2);
}
