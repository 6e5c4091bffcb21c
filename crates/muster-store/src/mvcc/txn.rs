//! Txn: compares, the branch taken, checks, and running the ops — following etcd 3.5's
//! `applierV3backend.Txn`:
//!
//! 1. Every compare, nested txns' included, is evaluated against the state before the txn, and
//!    the chosen branches are fixed ([`Plan`]) before any op runs.
//! 2. The chosen ops are checked (Puts: ignore_value/ignore_lease need the key, the lease must
//!    exist; then Ranges: revision not compacted nor future). A failed check fails the whole
//!    txn, and nothing changes.
//! 3. The ops run in order; Range ops see the txn's earlier writes. All writes share one main
//!    revision (sub-revisions order them); a txn that wrote nothing keeps the revision.

use std::cmp::Ordering;

use muster_types::{
    ApplyError, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, PutRequest,
    PutResponse, RangeRequest, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
};

use super::apply::WriteCtx;
use super::Mvcc;
use crate::error::StoreError;

/// A txn with its branch decided: the ops to run, nested txns already planned.
struct Plan<'a> {
    succeeded: bool,
    steps: Vec<Step<'a>>,
}

enum Step<'a> {
    Range(&'a RangeRequest),
    Put(&'a PutRequest),
    Delete(&'a DeleteRangeRequest),
    Txn(Plan<'a>),
}

impl Mvcc {
    pub(super) fn apply_txn(
        &mut self,
        w: &mut WriteCtx<'_>,
        t: &TxnRequest,
    ) -> Result<Result<TxnResponse, ApplyError>, StoreError> {
        let plan = self.plan(t);
        // etcd checks every Put of the plan before any Range.
        if let Err(e) = self
            .check_puts(&plan)
            .and_then(|()| self.check_ranges(&plan))
        {
            return Ok(Err(e));
        }
        self.run(w, &plan).map(Ok)
    }

    fn plan<'a>(&self, t: &'a TxnRequest) -> Plan<'a> {
        let succeeded = t.compare.iter().all(|c| self.compare(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let steps = ops
            .iter()
            .map(|op| match op {
                TxnOp::Range(r) => Step::Range(r),
                TxnOp::Put(p) => Step::Put(p),
                TxnOp::DeleteRange(d) => Step::Delete(d),
                TxnOp::Txn(nested) => Step::Txn(self.plan(nested)),
            })
            .collect();
        Plan { succeeded, steps }
    }

    /// A compare holds when every live key in its range satisfies it. With no key in the range,
    /// etcd compares an all-zero key-value — except for VALUE, which then always fails (an empty
    /// value and a missing one are indistinguishable on the wire).
    fn compare(&self, c: &Compare) -> bool {
        let mut any = false;
        for kv in self.index.live_in(&c.range) {
            any = true;
            if !compare_kv(c, kv) {
                return false;
            }
        }
        any || (!matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default()))
    }

    fn check_puts(&self, plan: &Plan<'_>) -> Result<(), ApplyError> {
        for step in &plan.steps {
            match step {
                Step::Put(p) => {
                    if (p.ignore_value || p.ignore_lease) && self.index.live(&p.key).is_none() {
                        return Err(ApplyError::KeyNotFound);
                    }
                    if p.lease != 0 && !self.leases.contains(p.lease) {
                        return Err(ApplyError::LeaseNotFound { id: p.lease });
                    }
                }
                Step::Txn(nested) => self.check_puts(nested)?,
                Step::Range(_) | Step::Delete(_) => {}
            }
        }
        Ok(())
    }

    fn check_ranges(&self, plan: &Plan<'_>) -> Result<(), ApplyError> {
        for step in &plan.steps {
            match step {
                Step::Range(r) => self.check_read_revision(r.revision)?,
                Step::Txn(nested) => self.check_ranges(nested)?,
                Step::Put(_) | Step::Delete(_) => {}
            }
        }
        Ok(())
    }

    fn run(&mut self, w: &mut WriteCtx<'_>, plan: &Plan<'_>) -> Result<TxnResponse, StoreError> {
        let mut responses = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            responses.push(match step {
                // Revision ≤ 0 reads the state including this txn's writes; an explicit revision
                // (checked ≤ the revision before the txn) reads history, which may need records
                // of this very apply group (see `History`).
                Step::Range(r) => {
                    TxnOpResponse::Range(self.range_at(r, (r.revision > 0).then_some(r.revision))?)
                }
                Step::Put(p) => TxnOpResponse::Put(self.run_put(w, p)?),
                Step::Delete(d) => TxnOpResponse::DeleteRange(self.delete_range(w, d)?),
                Step::Txn(nested) => TxnOpResponse::Txn(self.run(w, nested)?),
            });
        }
        Ok(TxnResponse {
            succeeded: plan.succeeded,
            responses,
        })
    }

    fn run_put(&mut self, w: &mut WriteCtx<'_>, p: &PutRequest) -> Result<PutResponse, StoreError> {
        // The checks passed against the state before the txn, and validation forbids writing a
        // key twice in one txn, so resolving cannot fail here. Should an unvalidated txn delete
        // and then ignore_value-put a key, fall back to the request's fields: deterministic on
        // every node, which is what matters in apply.
        let (value, lease) = self
            .resolve_put(p)
            .unwrap_or_else(|_| (p.value.clone(), p.lease));
        let prev = self.put_key(w, &p.key, value, lease)?;
        Ok(PutResponse {
            prev_kv: prev.filter(|_| p.prev_kv),
        })
    }
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}
