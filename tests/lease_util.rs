//! Helpers shared by the lease tests (`t30_lease`, `t32_lease_request_id`, `t33_lease_partition`): raw tonic Lease
//! clients (for metadata and one stream carrying many leases), one-shot keep-alives,
//! serializable counts per node.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{bail, Context};
use etcd_client::{Client, GetOptions};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use muster_tests::status;
use tonic::transport::{Channel, Endpoint};

pub const T: Duration = Duration::from_secs(15);
pub const REQUEST_ID: &str = "x-muster-request-id";

pub fn expect_status<V: std::fmt::Debug>(
    r: Result<V, etcd_client::Error>,
) -> anyhow::Result<tonic::Status> {
    match r {
        Ok(v) => bail!("expected an error, got {v:?}"),
        Err(e) => status(e),
    }
}

/// A raw etcd Lease client on `addr` with short timeouts (a killed node fails fast).
pub async fn raw(addr: &str) -> anyhow::Result<LeaseClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect()
        .await?;
    Ok(LeaseClient::new(ch))
}

pub fn with_request_id<M>(msg: M, request_id: &str) -> anyhow::Result<tonic::Request<M>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(REQUEST_ID, request_id.parse()?);
    Ok(r)
}

/// One keep-alive of `id` through `addr` on a fresh stream: the TTL the server replied.
pub async fn keep_alive_once(addr: &str, id: i64) -> anyhow::Result<i64> {
    let mut c = raw(addr).await?;
    let req = tokio_stream::once(pb::LeaseKeepAliveRequest { id });
    let mut replies = c.lease_keep_alive(req).await?.into_inner();
    let r = replies.message().await?.context("a keep-alive reply")?;
    Ok(r.ttl)
}

/// Serializable count of keys under `prefix` at `revision` (0 = current) on the node `c` talks
/// to, with that node's revision.
pub async fn count_on(c: &Client, prefix: &str, revision: i64) -> anyhow::Result<(i64, i64)> {
    let r = c
        .clone()
        .get(
            prefix,
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_serializable()
                    .with_count_only()
                    .with_revision(revision),
            ),
        )
        .await?;
    Ok((r.count(), r.header().map_or(0, |h| h.revision())))
}
