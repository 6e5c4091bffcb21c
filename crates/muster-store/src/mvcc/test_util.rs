//! Test harness: an [`Mvcc`] over a temporary sled tree, applying each command (or a group of
//! commands) through a batch the way the Raft state machine does.
#![allow(clippy::unwrap_used)]

use muster_types::{
    ApplyError, Command, CommandResponse, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, Event, KeyRange, KeyValue, PutRequest, RangeRequest, RangeResponse,
    ResponseBody, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
};

use super::{CompactStep, Mvcc};

pub(super) struct H {
    pub _db: sled::Db,
    pub tree: sled::Tree,
    pub mvcc: Mvcc,
    /// Every event emitted so far.
    pub events: Vec<Event>,
}

impl H {
    pub fn new() -> H {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("mvcc").unwrap();
        let mvcc = Mvcc::open(tree.clone()).unwrap();
        H {
            _db: db,
            tree,
            mvcc,
            events: Vec::new(),
        }
    }

    /// Applies one command and then its batch.
    pub fn apply(&mut self, cmd: Command) -> CommandResponse {
        self.apply_group(vec![cmd]).pop().unwrap()
    }

    /// Applies several commands into one batch, then applies the batch.
    pub fn apply_group(&mut self, cmds: Vec<Command>) -> Vec<CommandResponse> {
        self.apply_group_at(1_000, cmds)
    }

    /// Applies one command as an entry with leader time `time_ms`, then its batch.
    pub fn apply_at(&mut self, time_ms: u64, cmd: Command) -> CommandResponse {
        self.apply_group_at(time_ms, vec![cmd]).pop().unwrap()
    }

    fn apply_group_at(&mut self, time_ms: u64, cmds: Vec<Command>) -> Vec<CommandResponse> {
        let mut batch = sled::Batch::default();
        let out = cmds
            .iter()
            .map(|cmd| {
                self.mvcc
                    .apply(time_ms, cmd, &mut batch, &mut self.events)
                    .unwrap()
            })
            .collect();
        self.tree.apply_batch(batch).unwrap();
        self.mvcc.persisted();
        out
    }

    /// Drops the store and opens a new one over the same tree.
    pub fn reopen(&mut self) {
        self.mvcc = Mvcc::open(self.tree.clone()).unwrap();
    }

    pub fn put(&mut self, key: &str, value: &str) -> CommandResponse {
        self.apply(Command::Put(put_req(key, value)))
    }

    pub fn put_lease(&mut self, key: &str, value: &str, lease: i64) -> CommandResponse {
        self.apply(Command::Put(PutRequest {
            lease,
            ..put_req(key, value)
        }))
    }

    pub fn delete(&mut self, range: KeyRange) -> CommandResponse {
        self.apply(Command::DeleteRange(DeleteRangeRequest {
            range,
            prev_kv: true,
        }))
    }

    pub fn grant(&mut self, id: i64, ttl_secs: i64) -> CommandResponse {
        self.apply(Command::LeaseGrant { id, ttl_secs })
    }

    pub fn txn(&mut self, t: TxnRequest) -> (i64, Result<TxnResponse, ApplyError>) {
        let r = self.apply(Command::Txn(t));
        (
            r.revision,
            r.result.map(|b| match b {
                ResponseBody::Txn(t) => t,
                other => panic!("not a txn response: {other:?}"),
            }),
        )
    }

    pub fn range(&self, req: RangeRequest) -> Result<RangeResponse, ApplyError> {
        self.mvcc.range(&req).unwrap()
    }

    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.get_at(key, 0)
    }

    pub fn get_at(&self, key: &str, revision: i64) -> Option<KeyValue> {
        let mut r = self
            .range(RangeRequest {
                range: KeyRange::single(key),
                revision,
                ..Default::default()
            })
            .unwrap();
        assert!(r.kvs.len() <= 1);
        r.kvs.pop()
    }

    /// (key, value) of every key at `revision` (0 = current).
    pub fn all_at(&self, revision: i64) -> Vec<(String, String)> {
        let r = self
            .range(RangeRequest {
                range: all(),
                revision,
                ..Default::default()
            })
            .unwrap();
        r.kvs.iter().map(|kv| (s(&kv.key), s(&kv.value))).collect()
    }

    pub fn rev(&self) -> i64 {
        self.mvcc.current_revision()
    }

    /// One step of compaction's history removal, its batch applied at once.
    pub fn compact_step(&mut self, max_keys: usize, max_records: usize) -> CompactStep {
        let mut batch = sled::Batch::default();
        let step = self
            .mvcc
            .compact_step(&mut batch, max_keys, max_records)
            .unwrap();
        self.tree.apply_batch(batch).unwrap();
        self.mvcc.persisted();
        step
    }

    /// Runs compaction's history removal to its end, a key per step; returns the step count.
    pub fn finish_compaction(&mut self) -> usize {
        // One key per step, plus the step that finds the end: bounded by the index's size.
        let bound = self.mvcc.index.len() + 1;
        for steps in 1..=bound {
            if self.compact_step(1, usize::MAX).done {
                return steps;
            }
        }
        panic!("compaction did not finish within {bound} steps");
    }

    /// Every record of the tree (history, leases, meta), in key order.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.tree
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }
}

pub(super) fn s(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

pub(super) fn all() -> KeyRange {
    KeyRange::new(vec![0], vec![0])
}

pub(super) fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub(super) fn put_op(key: &str, value: &str) -> TxnOp {
    TxnOp::Put(put_req(key, value))
}

pub(super) fn get_op(range: KeyRange) -> TxnOp {
    TxnOp::Range(RangeRequest {
        range,
        ..Default::default()
    })
}

pub(super) fn del_op(range: KeyRange) -> TxnOp {
    TxnOp::DeleteRange(DeleteRangeRequest {
        range,
        prev_kv: true,
    })
}

pub(super) fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        range: KeyRange::single(key),
    }
}

pub(super) fn range_resp(r: &TxnOpResponse) -> &RangeResponse {
    match r {
        TxnOpResponse::Range(r) => r,
        other => panic!("not a range response: {other:?}"),
    }
}

/// The values of a response's kvs.
pub(super) fn values(r: &RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| s(&kv.value)).collect()
}

/// The keys of a response's kvs.
pub(super) fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| s(&kv.key)).collect()
}
