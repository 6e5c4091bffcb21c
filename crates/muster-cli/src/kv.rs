//! `muster kv get|put|del|txn|watch|compact`.

use futures::StreamExt;
use muster_client::{
    Client, DeleteOptions, EventKind, GetOptions, PutOptions, WatchOptions, WatchUpdate,
};
use serde_json::json;

use crate::cli::{Format, GetArgs, KvCmd};
use crate::output::{emit, event_json, kv_json, stream_line, text, Table};
use crate::{interrupted, CliError, Result, EXIT_NOT_FOUND};

pub async fn run(client: &Client, f: Format, cmd: KvCmd) -> Result<()> {
    match cmd {
        KvCmd::Get(a) => get(client, f, a).await,
        KvCmd::Put {
            key,
            value,
            lease,
            prev_kv,
        } => {
            let opts = PutOptions {
                lease: lease.unwrap_or(0),
                prev_kv,
                ..Default::default()
            };
            let r = client.put_with(key.clone(), value, opts).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["REVISION", "PREV_VALUE"]);
                    let prev = r.prev_kv.as_ref().map(|p| text(&p.value));
                    t.row(vec![r.revision.to_string(), prev.unwrap_or_default()]);
                    t
                },
                || json!({"revision": r.revision, "prev_kv": r.prev_kv.as_ref().map(kv_json)}),
            );
            Ok(())
        }
        KvCmd::Del {
            key,
            prefix,
            prev_kv,
        } => {
            let opts = DeleteOptions {
                prefix,
                prev_kv,
                ..Default::default()
            };
            let r = client.delete(key, opts).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["DELETED", "REVISION"]);
                    t.row(vec![r.deleted.to_string(), r.revision.to_string()]);
                    t
                },
                || {
                    json!({
                        "deleted": r.deleted,
                        "revision": r.revision,
                        "prev_kvs": r.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
                    })
                },
            );
            if r.deleted == 0 {
                return Err(CliError::Quiet(EXIT_NOT_FOUND));
            }
            Ok(())
        }
        KvCmd::Txn {
            compares,
            then_ops,
            else_ops,
        } => crate::txn::run(client, f, &compares, &then_ops, &else_ops).await,
        KvCmd::Watch {
            key,
            prefix,
            rev,
            prev_kv,
            count,
        } => {
            let mut opts = WatchOptions::new().with_start_revision(rev);
            if prefix {
                opts = opts.with_prefix();
            }
            if prev_kv {
                opts = opts.with_prev_kv();
            }
            watch(client, f, key, opts, count).await
        }
        KvCmd::Compact { revision } => {
            let r = client.compact(revision).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["COMPACTED", "REVISION"]);
                    t.row(vec![revision.to_string(), r.to_string()]);
                    t
                },
                || json!({"compacted": revision, "revision": r}),
            );
            Ok(())
        }
    }
}

async fn get(client: &Client, f: Format, a: GetArgs) -> Result<()> {
    let mut opts = GetOptions::new()
        .with_limit(a.limit)
        .with_revision(a.rev)
        .with_serializable(a.serializable);
    if a.prefix {
        opts = opts.with_prefix();
    }
    if a.from_key {
        opts = opts.with_from_key();
    }
    if a.keys_only {
        opts = opts.with_keys_only();
    }
    if a.count_only {
        opts = opts.with_count_only();
    }
    let r = client.range(a.key, opts).await?;
    emit(
        f,
        || {
            if a.count_only {
                let mut t = Table::new(&["COUNT", "REVISION"]);
                t.row(vec![r.count.to_string(), r.revision.to_string()]);
                return t;
            }
            let mut t = Table::new(&["KEY", "VALUE", "VERSION", "MOD_REVISION", "LEASE"]);
            for kv in &r.kvs {
                t.row(vec![
                    text(&kv.key),
                    text(&kv.value),
                    kv.version.to_string(),
                    kv.mod_revision.to_string(),
                    if kv.lease == 0 {
                        "-".into()
                    } else {
                        crate::output::lease_hex(kv.lease)
                    },
                ]);
            }
            t
        },
        || {
            json!({
                "revision": r.revision,
                "count": r.count,
                "more": r.more,
                "kvs": r.kvs.iter().map(kv_json).collect::<Vec<_>>(),
            })
        },
    );
    if r.count == 0 {
        return Err(CliError::Quiet(EXIT_NOT_FOUND));
    }
    Ok(())
}

async fn watch(
    client: &Client,
    f: Format,
    key: String,
    opts: WatchOptions,
    count: Option<u64>,
) -> Result<()> {
    let mut w = client.watch(key, opts);
    let mut seen = 0u64;
    if count == Some(0) {
        return Ok(());
    }
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        let update = tokio::select! {
            _ = &mut stop => return Ok(()),
            u = w.next() => u,
        };
        let Some(update) = update else {
            return Err(CliError::Failed("watch ended".into()));
        };
        match update {
            Ok(WatchUpdate::Events { events, .. }) => {
                for e in &events {
                    stream_line(
                        f,
                        || {
                            let kind = match e.kind {
                                EventKind::Put => "PUT",
                                EventKind::Delete => "DELETE",
                            };
                            format!(
                                "{kind} {} {} (revision {})",
                                text(&e.kv.key),
                                text(&e.kv.value),
                                e.revision()
                            )
                            .trim_end()
                            .to_string()
                        },
                        || event_json(e),
                    );
                    seen += 1;
                    if count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
            }
            Ok(WatchUpdate::Resumed {
                endpoint,
                from_revision,
            }) => eprintln!("watch resumed on {endpoint} from revision {from_revision}"),
            Ok(WatchUpdate::Compacted { compact_revision }) => {
                return Err(CliError::Failed(format!(
                    "history is compacted up to revision {compact_revision}; \
                     read the current state and watch from a newer revision"
                )))
            }
            Err(e @ muster_client::ClientError::WatchCanceled { .. }) => return Err(e.into()),
            Err(e) => eprintln!("warning: {e} (still trying)"),
        }
    }
}
