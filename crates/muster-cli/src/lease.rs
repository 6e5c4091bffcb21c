//! `muster lease grant|keep-alive|revoke|ttl|list`. Lease ids print and parse as hex.

use muster_client::{Client, ClientError, KeepAliveState};
use serde_json::json;

use crate::cli::{Format, LeaseCmd};
use crate::output::{emit, lease_hex, stream_line, text, Table};
use crate::{interrupted, CliError, Result};

pub async fn run(client: &Client, f: Format, cmd: LeaseCmd) -> Result<()> {
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let g = client.lease_grant(ttl).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["ID", "TTL"]);
                    t.row(vec![lease_hex(g.id), g.ttl.to_string()]);
                    t
                },
                || json!({"id": g.id, "id_hex": lease_hex(g.id), "ttl": g.ttl, "revision": g.revision}),
            );
            Ok(())
        }
        LeaseCmd::KeepAlive { id, once, count } => {
            let count = if once { Some(1) } else { count };
            keep_alive(client, f, id, count).await
        }
        LeaseCmd::Revoke { id } => {
            let rev = client.lease_revoke(id).await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["REVOKED", "REVISION"]);
                    t.row(vec![lease_hex(id), rev.to_string()]);
                    t
                },
                || json!({"revoked": id, "id_hex": lease_hex(id), "revision": rev}),
            );
            Ok(())
        }
        LeaseCmd::Ttl { id, keys } => {
            let t = client.lease_time_to_live(id, keys).await?;
            if t.ttl < 0 {
                return Err(CliError::NotFound(format!(
                    "lease {} not found",
                    lease_hex(id)
                )));
            }
            emit(
                f,
                || {
                    let mut tb = Table::new(&["ID", "TTL", "GRANTED_TTL", "KEYS"]);
                    let ks: Vec<String> = t.keys.iter().map(|k| text(k)).collect();
                    tb.row(vec![
                        lease_hex(id),
                        t.ttl.to_string(),
                        t.granted_ttl.to_string(),
                        ks.join(","),
                    ]);
                    tb
                },
                || {
                    json!({
                        "id": id,
                        "id_hex": lease_hex(id),
                        "ttl": t.ttl,
                        "granted_ttl": t.granted_ttl,
                        "keys": t.keys.iter().map(|k| text(k)).collect::<Vec<_>>(),
                    })
                },
            );
            Ok(())
        }
        LeaseCmd::List => {
            let ids = client.lease_leases().await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["ID"]);
                    for id in &ids {
                        t.row(vec![lease_hex(*id)]);
                    }
                    t
                },
                || json!({"leases": ids.iter().map(|id| json!({"id": id, "id_hex": lease_hex(*id)})).collect::<Vec<_>>()}),
            );
            Ok(())
        }
    }
}

/// Renews until interrupted or `count` renewals, printing each renewal.
async fn keep_alive(client: &Client, f: Format, id: i64, count: Option<u64>) -> Result<()> {
    // Renew once right away: a lease that is already gone fails here, before any waiting.
    let ttl = client.lease_keep_alive_once(id).await?;
    let print = |ttl: i64, n: u64| {
        stream_line(
            f,
            || format!("lease {} kept alive, TTL {ttl}s", lease_hex(id)),
            || json!({"id": id, "id_hex": lease_hex(id), "ttl": ttl, "renewal": n}),
        )
    };
    print(ttl, 1);
    if count.is_some_and(|c| c <= 1) {
        return Ok(());
    }
    let keeper = client.lease_keep_alive(id, ttl);
    let mut states = keeper.subscribe();
    let stop = interrupted();
    tokio::pin!(stop);
    let mut last_renewals = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = states.changed() => if changed.is_err() { break },
        }
        let state = states.borrow_and_update().clone();
        match state {
            KeepAliveState::Alive { ttl, renewals } if renewals > last_renewals => {
                last_renewals = renewals;
                // The handle renews at once on start; that renewal is #2 of this command.
                print(ttl, renewals + 1);
                if count.is_some_and(|c| renewals + 1 >= c) {
                    break;
                }
            }
            KeepAliveState::Alive { .. } => {}
            KeepAliveState::Retrying { error } => eprintln!("warning: {error} (still trying)"),
            KeepAliveState::Lost => {
                return Err(ClientError::LeaseNotFound { id }.into());
            }
        }
    }
    keeper.stop().await;
    Ok(())
}
