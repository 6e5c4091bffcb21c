//! `muster cluster members|status|add|promote|remove`.

use muster_client::Client;
use serde_json::json;

use crate::cli::{ClusterCmd, Format};
use crate::output::{emit, Table};
use crate::{CliError, Result};

fn print_members(f: Format, members: &[muster_client::Member]) {
    emit(
        f,
        || {
            let mut t = Table::new(&["ID", "NAME", "CLIENT_URLS", "LEARNER"]);
            for m in members {
                t.row(vec![
                    m.id.to_string(),
                    m.name.clone(),
                    m.client_urls.join(","),
                    m.is_learner.to_string(),
                ]);
            }
            t
        },
        || {
            let list: Vec<_> = members
                .iter()
                .map(|m| json!({"id": m.id, "name": m.name, "client_urls": m.client_urls, "is_learner": m.is_learner}))
                .collect();
            json!({"members": list})
        },
    );
}

pub async fn run(client: &Client, f: Format, cmd: ClusterCmd) -> Result<()> {
    match cmd {
        ClusterCmd::Add { peer_url, learner } => {
            let m = client.member_add(&peer_url, learner).await?;
            eprintln!(
                "start the new node with: musterd --node-id {} --join --listen {peer_url} …",
                m.id
            );
            print_members(f, std::slice::from_ref(&m));
            Ok(())
        }
        ClusterCmd::Promote { id } => {
            print_members(f, &client.member_promote(id).await?);
            Ok(())
        }
        ClusterCmd::Remove { id } => {
            print_members(f, &client.member_remove(id).await?);
            Ok(())
        }
        ClusterCmd::Members => {
            let members = client.member_list().await?;
            emit(
                f,
                || {
                    let mut t = Table::new(&["ID", "NAME", "CLIENT_URLS", "PEER_URLS", "LEARNER"]);
                    for m in &members {
                        t.row(vec![
                            format!("{:x}", m.id),
                            m.name.clone(),
                            m.client_urls.join(","),
                            m.peer_urls.join(","),
                            m.is_learner.to_string(),
                        ]);
                    }
                    t
                },
                || {
                    let list: Vec<_> = members
                        .iter()
                        .map(|m| {
                            json!({
                                "id": m.id,
                                "name": m.name,
                                "client_urls": m.client_urls,
                                "peer_urls": m.peer_urls,
                                "is_learner": m.is_learner,
                            })
                        })
                        .collect();
                    json!({"members": list})
                },
            );
            Ok(())
        }
        ClusterCmd::Status => {
            let all = client.status_all().await;
            let failed: Vec<String> = all
                .iter()
                .filter_map(|(ep, r)| r.as_ref().err().map(|e| format!("{ep}: {e}")))
                .collect();
            let ok: Vec<_> = all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
            emit(
                f,
                || {
                    let mut t = Table::new(&[
                        "ENDPOINT",
                        "ID",
                        "LEADER",
                        "IS_LEADER",
                        "TERM",
                        "RAFT_INDEX",
                        "APPLIED",
                        "REVISION",
                        "DB_SIZE",
                        "ERRORS",
                    ]);
                    for s in &ok {
                        t.row(vec![
                            s.endpoint.clone(),
                            format!("{:x}", s.member_id),
                            format!("{:x}", s.leader),
                            (s.leader != 0 && s.leader == s.member_id).to_string(),
                            s.raft_term.to_string(),
                            s.raft_index.to_string(),
                            s.raft_applied_index.to_string(),
                            s.revision.to_string(),
                            s.db_size.to_string(),
                            s.errors.join("; "),
                        ]);
                    }
                    t
                },
                || {
                    let list: Vec<_> = ok
                        .iter()
                        .map(|s| {
                            json!({
                                "endpoint": s.endpoint,
                                "member_id": s.member_id,
                                "leader": s.leader,
                                "is_leader": s.leader != 0 && s.leader == s.member_id,
                                "raft_term": s.raft_term,
                                "raft_index": s.raft_index,
                                "raft_applied_index": s.raft_applied_index,
                                "revision": s.revision,
                                "db_size": s.db_size,
                                "version": s.version,
                                "errors": s.errors,
                            })
                        })
                        .collect();
                    json!({"endpoints": list, "unreachable": failed})
                },
            );
            if failed.is_empty() {
                Ok(())
            } else {
                Err(CliError::Failed(format!(
                    "unreachable: {}",
                    failed.join("; ")
                )))
            }
        }
    }
}
