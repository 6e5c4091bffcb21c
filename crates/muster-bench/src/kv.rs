//! KV benchmarks through the etcd KV service: `put`, `range` (linearizable or serializable gets
//! of preloaded keys) and `txn` (compare-and-swap on the mod revision, then put).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use muster_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::request_op::Request;
use muster_proto::etcdserverpb::response_op::Response;
use muster_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, ResponseOp, TxnRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::common::{numbered_key, run_id};
use crate::load::{closed_loop, workers, Op};

/// Request shape shared by the KV benchmarks.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Shape {
    /// Keys are padded to at least this many bytes.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, default_value_t = 128)]
    pub value_size: usize,
    /// Distinct keys; requests cycle through them (txn: with a multiple of the concurrency
    /// every client owns its keys and no compare fails).
    #[arg(long, default_value_t = 1024)]
    pub keys: usize,
}

impl Shape {
    /// The key index request `seq` uses.
    fn index(&self, seq: usize) -> usize {
        seq % self.keys.max(1)
    }

    /// Key number `idx` under `prefix`.
    fn key(&self, prefix: &str, idx: usize) -> Vec<u8> {
        numbered_key(prefix, idx, self.key_size)
    }

    fn value(&self) -> Vec<u8> {
        vec![b'v'; self.value_size]
    }
}

/// Puts cycling through the shape's keys under `prefix`.
struct PutOp {
    kv: KvClient<Channel>,
    prefix: &'static str,
    shape: Shape,
    value: Vec<u8>,
}

impl PutOp {
    fn new(ch: Channel, prefix: &'static str, shape: Shape) -> Self {
        PutOp {
            kv: KvClient::new(ch),
            prefix,
            shape,
            value: shape.value(),
        }
    }
}

impl Op for PutOp {
    async fn call(&mut self, seq: usize) -> anyhow::Result<()> {
        let key = self.shape.key(self.prefix, self.shape.index(seq));
        self.kv
            .put(PutRequest {
                key,
                value: self.value.clone(),
                ..Default::default()
            })
            .await
            .context("Put")?;
        Ok(())
    }
}

/// `put`: `count` puts from `concurrency` clients, each on its own connection.
pub async fn bench_put(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    shape: Shape,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let ops = workers(endpoints, concurrency, |ch| {
        PutOp::new(ch, "bench/put/", shape)
    })
    .await?;
    let (s, _) = closed_loop(ops, count, deadline, "puts").await?;
    Ok(s.json_with(
        "put",
        json!({"concurrency": concurrency, "keys": shape.keys, "value_size": shape.value_size}),
    ))
}

struct GetOp {
    kv: KvClient<Channel>,
    shape: Shape,
    serializable: bool,
}

impl Op for GetOp {
    async fn call(&mut self, seq: usize) -> anyhow::Result<()> {
        let key = self.shape.key(RANGE_PREFIX, self.shape.index(seq));
        let r = self
            .kv
            .range(RangeRequest {
                key,
                serializable: self.serializable,
                ..Default::default()
            })
            .await
            .context("Range")?
            .into_inner();
        anyhow::ensure!(r.kvs.len() == 1, "a preloaded key is missing");
        Ok(())
    }
}

const RANGE_PREFIX: &str = "bench/range/";

/// `range`: preloads the shape's keys, then `count` single-key gets from `concurrency` clients.
pub async fn bench_range(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    shape: Shape,
    serializable: bool,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let keys = shape.keys.max(1);
    eprintln!("preloading {keys} keys…");
    let loaders = workers(endpoints, concurrency, |ch| {
        PutOp::new(ch, RANGE_PREFIX, shape)
    })
    .await?;
    let (preload, loaders) = closed_loop(loaders, keys, deadline, "keys preloaded").await?;
    anyhow::ensure!(
        preload.len() == keys,
        "preloaded only {} of {keys} keys before the deadline",
        preload.len()
    );
    let ops = loaders
        .into_iter()
        .map(|l| GetOp {
            kv: l.kv,
            shape,
            serializable,
        })
        .collect();
    let (s, _) = closed_loop(ops, count, deadline, "gets").await?;
    Ok(s.json_with(
        "range",
        json!({"concurrency": concurrency, "keys": keys, "serializable": serializable}),
    ))
}

/// Compare-and-swap: `mod_revision(key) == last seen` then put, else read the key back.
struct CasOp {
    kv: KvClient<Channel>,
    prefix: Arc<str>,
    shape: Shape,
    value: Vec<u8>,
    /// The mod revision this worker last saw per key index (absent: the key is new, 0).
    seen: HashMap<usize, i64>,
    conflicts: usize,
}

impl Op for CasOp {
    async fn call(&mut self, seq: usize) -> anyhow::Result<()> {
        let idx = self.shape.index(seq);
        let key = self.shape.key(&self.prefix, idx);
        let expected = self.seen.get(&idx).copied().unwrap_or(0);
        let r = self
            .kv
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.clone(),
                    range_end: vec![],
                    target_union: Some(TargetUnion::ModRevision(expected)),
                }],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: self.value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        key,
                        ..Default::default()
                    })),
                }],
            })
            .await
            .context("Txn")?
            .into_inner();
        let current = if r.succeeded {
            r.header.map(|h| h.revision).context("Txn without header")?
        } else {
            self.conflicts += 1;
            match r.responses.first() {
                Some(ResponseOp {
                    response: Some(Response::ResponseRange(rr)),
                }) => rr.kvs.first().map_or(0, |kv| kv.mod_revision),
                _ => anyhow::bail!("failed Txn without its range response"),
            }
        };
        self.seen.insert(idx, current);
        Ok(())
    }
}

/// `txn`: `count` compare-and-swap transactions from `concurrency` clients. With `keys` a
/// multiple of the concurrency every client owns its keys, so no CAS should fail.
pub async fn bench_txn(
    endpoints: &[String],
    count: usize,
    concurrency: usize,
    shape: Shape,
    deadline: Instant,
) -> anyhow::Result<Value> {
    let prefix: Arc<str> = format!("bench/txn/{}/", run_id()).into();
    let ops = workers(endpoints, concurrency, |ch| CasOp {
        kv: KvClient::new(ch),
        prefix: prefix.clone(),
        shape,
        value: shape.value(),
        seen: HashMap::new(),
        conflicts: 0,
    })
    .await?;
    let (s, ops) = closed_loop(ops, count, deadline, "txns").await?;
    let conflicts: usize = ops.iter().map(|o| o.conflicts).sum();
    Ok(s.json_with(
        "txn",
        json!({
            "concurrency": concurrency, "keys": shape.keys,
            "committed": s.len() - conflicts, "conflicts": conflicts,
        }),
    ))
}
