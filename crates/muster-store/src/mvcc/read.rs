//! Range reads: at the current revision from the in-memory index, at an old revision from the
//! index plus the history records; with etcd's limit, sort, filter, keys_only and count_only
//! options. Also used by Range ops inside a Txn.

use std::cmp::Ordering;

use muster_types::{ApplyError, KeyValue, RangeRequest, RangeResponse, SortOrder, SortTarget};

use super::Mvcc;
use crate::error::StoreError;

impl Mvcc {
    /// A read at `req.revision` (≤ 0 = current). `Err(Compacted)` below the compact revision,
    /// `Err(FutureRevision)` above the current one. Call only after the caller's batch is applied.
    pub fn range(
        &self,
        req: &RangeRequest,
    ) -> Result<Result<RangeResponse, ApplyError>, StoreError> {
        if let Err(e) = self.check_read_revision(req.revision) {
            return Ok(Err(e));
        }
        // The current revision is served from memory, like revision ≤ 0.
        let at = (req.revision > 0 && req.revision < self.current_revision).then_some(req.revision);
        self.range_at(req, at).map(Ok)
    }

    /// Whether a read at `revision` can be served (≤ 0 = current). A read at exactly the compact
    /// revision is fine: compaction keeps what it needs.
    pub(super) fn check_read_revision(&self, revision: i64) -> Result<(), ApplyError> {
        if revision > self.current_revision {
            Err(ApplyError::FutureRevision {
                current_revision: self.current_revision,
            })
        } else if revision > 0 && revision < self.compact_revision {
            Err(ApplyError::Compacted {
                compact_revision: self.compact_revision,
            })
        } else {
            Ok(())
        }
    }

    /// Serves `req` as of `at` (a checked revision), or of the in-memory state when `None` — which
    /// inside a Txn includes the Txn's own earlier writes.
    ///
    /// Mirrors etcd 3.5's `applyRange` step by step, quirks included:
    /// - `count` is the number of keys in the range at that revision, before the min/max
    ///   revision filters and before `limit` (etcd takes it from the index, before pruning);
    /// - without an explicit sort order and without filters only `limit + 1` keys are fetched
    ///   (in key order) and then sorted, so sort_order NONE with a target other than KEY sorts
    ///   those keys ascending rather than the whole range;
    /// - `more` is true when the fetched, filtered keys exceed `limit`.
    pub(super) fn range_at(
        &self,
        req: &RangeRequest,
        at: Option<i64>,
    ) -> Result<RangeResponse, StoreError> {
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let fetch_limit = match usize::try_from(req.limit) {
            Ok(limit) if limit > 0 && req.sort_order == SortOrder::None && !filtered => {
                limit.saturating_add(1)
            }
            _ => usize::MAX,
        };

        let mut count: i64 = 0;
        let mut kvs: Vec<KeyValue> = Vec::new();
        for (_, ki) in self.index.range(&req.range) {
            // Which change of the key the read sees; `None` = its live value.
            let seen = match at {
                None if ki.live.is_some() => None,
                None => continue,
                Some(at) => match ki.latest_at(at) {
                    Some((rev, false)) => Some(rev),
                    _ => continue,
                },
            };
            count += 1;
            if req.count_only || kvs.len() >= fetch_limit {
                continue;
            }
            let kv = match (seen, &ki.live) {
                (None, Some(live)) => live.clone(),
                // The change seen is the latest one, so the live value is it: skip the disk.
                (Some(rev), Some(live)) if ki.is_latest(rev) => live.clone(),
                (Some(rev), _) => self.history.load(rev)?.kv,
                (None, None) => continue, // excluded above
            };
            kvs.push(kv);
        }

        let within = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
        kvs.retain(|kv| {
            within(kv.mod_revision, req.min_mod_revision, req.max_mod_revision)
                && within(
                    kv.create_revision,
                    req.min_create_revision,
                    req.max_create_revision,
                )
        });

        let order = match (req.sort_order, req.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match req.sort_target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        // Stable sorts over key-ordered input: ties stay in key order.
        match order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by(by),
            SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
        }

        let mut more = false;
        if let Ok(limit) = usize::try_from(req.limit) {
            if limit > 0 && kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }
}
