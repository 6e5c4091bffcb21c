//! Membership faults: the nemesis changes who is in the cluster while the workload runs, through
//! the etcd Cluster API as an operator would. A node is added the way etcd's docs order it:
//! MemberAdd (as a learner) first, then start the node with `--join` under the id the cluster
//! assigned (a `docker run` of the compose nodes' image on their network), wait until it caught
//! up, MemberPromote. A removed node must stop by itself (its container exits); its container and
//! data are then deleted, and it may come back only under a new id. The cluster view follows
//! each step, so later faults and the final reads address the members of the moment.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{sleep_unless_stopped, Applied, Settings};
use crate::cluster::{change_members, Cluster, MemberChange, Node};
use crate::docker::{Container, Docker, RunSpec, CLIENT_PORT, HTTP_PORT};

/// DNS alias (and hostname) of the node [`super::Fault::AddRemoveMember`] adds.
const SPARE: &str = "muster4";

/// Adds a node as a learner, promotes it once it caught up, holds, removes it.
pub(super) async fn add_remove_member(
    cluster: &mut Cluster,
    docker: &Docker,
    s: &Settings,
    hold: Duration,
    stop: &CancellationToken,
    problems: &mut Vec<String>,
) -> Applied {
    let Some(template) = cluster.nodes.first().map(|n| n.container.clone()) else {
        return failed("no node to model the new one on".into());
    };
    // Docker picks the host ports: the spare needs none fixed.
    let bindings = [CLIENT_PORT, HTTP_PORT]
        .into_iter()
        .map(|p| (p.to_string(), "127.0.0.1:".to_string()))
        .collect();
    let id = match join(cluster, docker, s, &template, SPARE, bindings, problems).await {
        Ok(id) => id,
        Err(e) => return failed(format!("adding {SPARE} failed: {e:#}")),
    };
    sleep_unless_stopped(hold, stop).await;
    match leave(cluster, docker, s, id, problems).await {
        Ok(()) => Applied {
            injected: true,
            errors: 0,
            note: format!("node {id} ({SPARE}) joined as learner, caught up, promoted; removed"),
        },
        Err(e) => Applied {
            injected: true,
            errors: 1,
            note: format!("node {id} ({SPARE}) joined and promoted; removing it failed: {e:#}"),
        },
    }
}

/// Removes follower `target` and wipes it; holds (the cluster runs a member short); adds it
/// back under a new id at the same address.
pub(super) async fn replace_follower(
    cluster: &mut Cluster,
    docker: &Docker,
    s: &Settings,
    target: u64,
    hold: Duration,
    stop: &CancellationToken,
    problems: &mut Vec<String>,
) -> Applied {
    let Some(old) = cluster.node(target).map(|n| n.container.clone()) else {
        return failed(format!("node {target} is not in the view"));
    };
    let mut errors = 0;
    if let Err(e) = leave(cluster, docker, s, target, problems).await {
        if cluster.node(target).is_some() {
            return failed(format!("removing node {target} failed: {e:#}"));
        }
        // Removed from the cluster; only deleting its container failed. Rejoin all the same.
        warn!(error = %e, "deleting the removed node's container failed");
        errors += 1;
    }
    sleep_unless_stopped(hold, stop).await;
    let alias = old.service.clone();
    let bindings = old.bindings.clone();
    match join(cluster, docker, s, &old, &alias, bindings, problems).await {
        Ok(id) => Applied {
            injected: true,
            errors,
            note: format!("node {target} ({alias}) removed and wiped; rejoined as node {id}"),
        },
        Err(e) => Applied {
            injected: true,
            errors: errors + 1,
            note: format!("node {target} ({alias}) removed and wiped; rejoining failed: {e:#}"),
        },
    }
}

fn failed(note: String) -> Applied {
    warn!("membership fault: {note}");
    Applied {
        injected: false,
        errors: 1,
        note,
    }
}

/// MemberAdd (learner) of `{alias}:2380` (its peer port); `docker run` the node with `--join` under the id the
/// cluster assigned; wait until it caught up; MemberPromote. The view gains the node once its
/// container runs. On failure what was done is undone (the learner removed).
async fn join(
    cluster: &mut Cluster,
    docker: &Docker,
    s: &Settings,
    template: &Container,
    alias: &str,
    bindings: BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> anyhow::Result<u64> {
    let add = MemberChange::Add {
        peer_url: format!("http://{alias}:2380"),
        learner: true,
    };
    let id = change_members(&cluster.endpoints(), &add, s.op_timeout, s.recover_timeout).await?;
    info!(
        member = id,
        alias, "--- nemesis: learner added; starting its container"
    );
    let spec = RunSpec {
        template,
        project: &s.project,
        alias,
        node_id: id,
        bindings,
    };
    let node = match docker.run_node(&spec).await {
        Ok((container, published)) => Node::new(id, container, &published),
        Err(e) => Err(e),
    };
    match node {
        Ok(node) => cluster.nodes.push(node),
        Err(e) => {
            let undo = MemberChange::Remove(id);
            let removed =
                change_members(&cluster.endpoints(), &undo, s.op_timeout, s.recover_timeout).await;
            if let Err(u) = removed {
                warn!(error = %u, member = id, "could not remove the learner that never started");
            }
            return Err(e.context(format!("starting node {id}")));
        }
    }
    let promoted = async {
        cluster
            .wait_converged(s.recover_timeout, false)
            .await
            .with_context(|| format!("node {id} did not catch up"))?;
        let promote = MemberChange::Promote(id);
        change_members(
            &cluster.endpoints(),
            &promote,
            s.op_timeout,
            s.recover_timeout,
        )
        .await
    }
    .await;
    if let Err(e) = promoted {
        if let Err(u) = leave(cluster, docker, s, id, problems).await {
            warn!(error = %u, member = id, "could not remove the node that failed to join");
        }
        return Err(e);
    }
    info!(member = id, alias, "--- nemesis: caught up and promoted");
    Ok(id)
}

/// MemberRemove `id` (asking the other nodes), drops it from the view, waits for its container
/// to exit by itself — a removed node that keeps running is a membership problem, and is then
/// killed — and deletes its container and data.
async fn leave(
    cluster: &mut Cluster,
    docker: &Docker,
    s: &Settings,
    id: u64,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let node = cluster
        .node(id)
        .cloned()
        .with_context(|| format!("node {id} is not in the view"))?;
    let remove = MemberChange::Remove(id);
    let others = cluster.endpoints_except(id);
    change_members(&others, &remove, s.op_timeout, s.recover_timeout).await?;
    cluster.nodes.retain(|n| n.id != id);
    info!(
        member = id,
        "--- nemesis: member removed; waiting for it to stop"
    );
    if !docker
        .wait_exited(&node.container, s.recover_timeout)
        .await?
    {
        problems.push(format!(
            "node {id} ({}) was removed but still ran {:?} later",
            node.container.name, s.recover_timeout
        ));
    }
    docker.remove(&node.container).await
}
