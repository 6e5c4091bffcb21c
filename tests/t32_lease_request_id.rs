//! Non-idempotent lease writes retried with the same `x-muster-request-id` across leader
//! changes apply once, on a real 3-node cluster: a grant whose reply was lost, a grant racing
//! a leader kill, a revoke retried after a leader change; a request id reused for another
//! request is refused; without a request id a retried grant makes a second lease.

mod lease_util;

use anyhow::Context;
use lease_util::*;
use muster_proto::etcdserverpb as pb;
use muster_tests::{etcd, Cluster};
use tracing::info;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_id_retries_apply_once_across_leader_changes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.wait_for_leader(T).await?;
    let grant = |ttl| pb::LeaseGrantRequest { ttl, id: 0 };

    info!("--- step: a grant whose reply is lost, retried after a leader change");
    let first = raw(&cluster.addr(cluster.follower_of(leader)).to_string())
        .await?
        .lease_grant(with_request_id(grant(30), "grant-1")?)
        .await?
        .into_inner();
    cluster.kill(leader).await?;
    let now_leader = cluster.wait_for_leader(T).await?;
    let retry = raw(&cluster.addr(now_leader).to_string())
        .await?
        .lease_grant(with_request_id(grant(30), "grant-1")?)
        .await?
        .into_inner();
    assert_eq!(
        (retry.id, retry.ttl),
        (first.id, first.ttl),
        "the same lease"
    );
    let mut c = etcd(&cluster, now_leader).await?;
    assert_eq!(c.leases().await?.leases().len(), 1, "granted once");
    // The same request id for a different request is refused.
    let s = raw(&cluster.addr(now_leader).to_string())
        .await?
        .lease_grant(with_request_id(grant(31), "grant-1")?)
        .await
        .err()
        .context("reused request id must fail")?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    cluster.restart(leader).await?;
    cluster.wait_converged(T).await?;

    info!("--- step: a grant racing a leader kill, retried");
    let leader = cluster.wait_for_leader(T).await?;
    let mut racing = raw(&cluster.addr(leader).to_string()).await?;
    let in_flight = tokio::spawn(async move {
        racing
            .lease_grant(with_request_id(grant(30), "grant-race")?)
            .await
            .map(|r| r.into_inner().id)
            .map_err(anyhow::Error::from)
    });
    cluster.kill(leader).await?;
    let first = in_flight.await?;
    let now_leader = cluster.wait_for_leader(T).await?;
    let mut retried = None;
    for n in cluster.running() {
        if let Ok(r) = raw(&cluster.addr(n).to_string())
            .await?
            .lease_grant(with_request_id(grant(30), "grant-race")?)
            .await
        {
            retried = Some(r.into_inner().id);
            break;
        }
    }
    let retried = retried.context("the retry succeeds on a survivor")?;
    info!(?first, retried, "first attempt and retry");
    if let Ok(first) = first {
        assert_eq!(first, retried);
    }
    let mut c = etcd(&cluster, now_leader).await?;
    assert_eq!(
        c.leases().await?.leases().len(),
        2,
        "exactly one lease per request"
    );

    info!("--- step: a revoke retried after a leader change succeeds again");
    let revoke = pb::LeaseRevokeRequest { id: retried };
    raw(&cluster.addr(now_leader).to_string())
        .await?
        .lease_revoke(with_request_id(revoke, "revoke-1")?)
        .await?;
    cluster.restart(leader).await?;
    cluster.wait_converged(T).await?;
    cluster.kill(now_leader).await?;
    let third = cluster.wait_for_leader(T).await?;
    raw(&cluster.addr(third).to_string())
        .await?
        .lease_revoke(with_request_id(revoke, "revoke-1")?)
        .await
        .context("a retried revoke answers like the first")?;
    let s = raw(&cluster.addr(third).to_string())
        .await?
        .lease_revoke(revoke)
        .await
        .err()
        .context("a revoke without request id is not de-duplicated")?;
    assert_eq!(s.code(), tonic::Code::NotFound);

    info!("--- step: without a request id, a retried grant makes a second lease");
    let mut c = etcd(&cluster, third).await?;
    let a = c.lease_grant(30, None).await?.id();
    let b = c.lease_grant(30, None).await?.id();
    assert_ne!(a, b);
    cluster.shutdown().await;
    Ok(())
}
