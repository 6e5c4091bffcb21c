//! Bad input gets the gRPC code and message etcd clients expect, and changes nothing.

use etcd_client::{GetOptions, Txn, TxnOp};
use muster_tests::{etcd, status, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_etcd_errors_and_change_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(3, |c| {
        c.limits.max_request_bytes = 64 * 1024;
        c.limits.max_txn_ops = 8;
    })
    .await?;
    let mut c = etcd(&cluster, 2).await?;
    let rev0 = c
        .put("bad/k", "v", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();

    let s = status(c.put("", "v", None).await.expect_err("empty key"))?;
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided"
        )
    );

    let s = status(c.get("", None).await.expect_err("empty key read"))?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    let s = status(
        c.put("bad/big", vec![0u8; 65 * 1024], None)
            .await
            .expect_err("too large"),
    )?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(
        s.message().starts_with("etcdserver: request is too large"),
        "{}",
        s.message()
    );

    let ops: Vec<TxnOp> = (0..9)
        .map(|i| TxnOp::put(format!("bad/t{i}"), "v", None))
        .collect();
    let s = status(
        c.txn(Txn::new().and_then(ops))
            .await
            .expect_err("too many ops"),
    )?;
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )
    );

    let dup = Txn::new().and_then([
        TxnOp::put("bad/d", "1", None),
        TxnOp::put("bad/d", "2", None),
    ]);
    let s = status(c.txn(dup).await.expect_err("duplicate key"))?;
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request"
        )
    );

    let s = status(
        c.get("bad/k", Some(GetOptions::new().with_revision(rev0 + 100)))
            .await
            .expect_err("future"),
    )?;
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );

    let s = status(
        c.put(
            "bad/l",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(12345)),
        )
        .await
        .expect_err("lease"),
    )?;
    assert_eq!(
        (s.code(), s.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );

    let s = status(
        c.put(
            "bad/missing",
            "",
            Some(etcd_client::PutOptions::new().with_ignore_value()),
        )
        .await
        .expect_err("ignore_value"),
    )?;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    // Nothing above changed the store.
    let r = c.get("bad/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(r.count(), 1);
    assert_eq!(r.header().map(|h| h.revision()), Some(rev0));
    cluster.shutdown().await;
    Ok(())
}
