//! HTTP endpoints: `/health` (200 when a leader is known), `/ready` (200 once this node has
//! applied entries and knows a leader) and `/metrics` (Prometheus text format).

use openraft::async_runtime::watch::WatchReceiver;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::lease_keeper::LeaseKeeper;
use crate::node::Node;

/// What the HTTP handlers read.
#[derive(Clone)]
struct HttpState {
    node: Arc<Node>,
    leases: Arc<LeaseKeeper>,
}

#[derive(Serialize)]
struct HealthBody {
    node_id: u64,
    leader: Option<u64>,
    term: u64,
    revision: i64,
    applied_index: u64,
}

fn health_body(node: &Node) -> HealthBody {
    let m = node.raft.metrics().borrow_watched().clone();
    HealthBody {
        node_id: node.id,
        leader: m.current_leader,
        term: m.current_term,
        revision: node.sm.read().mvcc.current_revision(),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
    }
}

async fn health(State(HttpState { node, .. }): State<HttpState>) -> impl IntoResponse {
    let body = health_body(&node);
    let code = if body.leader.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn ready(State(HttpState { node, .. }): State<HttpState>) -> impl IntoResponse {
    let body = health_body(&node);
    let code = if body.leader.is_some() && body.applied_index > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Renders the node's gauges. Values are read at scrape time from Raft metrics and the store.
pub fn render_metrics(node: &Node, leases: &LeaseKeeper) -> String {
    let m = node.raft.metrics().borrow_watched().clone();
    let hub = node.sm.hub().stats();
    let expiry = leases.expiry_stats();
    let revision = node.sm.read().mvcc.current_revision();
    let compact = node.sm.read().mvcc.compact_revision();
    let keys = node.sm.read().mvcc.key_count();
    let (space_used, alarms) = {
        let sm = node.sm.read();
        (sm.mvcc.space_used(), sm.mvcc.alarms())
    };
    let mut out = String::new();
    // Prometheus convention: a `_total` name is a counter, everything else here a gauge.
    let mut gauge = |name: &str, help: &str, v: f64| {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node_id=\"{}\"}} {v}",
            node.id
        );
    };
    gauge(
        "muster_raft_term",
        "Current Raft term.",
        m.current_term as f64,
    );
    gauge(
        "muster_raft_is_leader",
        "1 if this node is the leader.",
        f64::from(u8::from(m.current_leader == Some(node.id))),
    );
    gauge(
        "muster_raft_leader_id",
        "Id of the known leader, 0 if none.",
        m.current_leader.unwrap_or(0) as f64,
    );
    gauge(
        "muster_raft_last_log_index",
        "Index of the last log entry.",
        m.last_log_index.unwrap_or(0) as f64,
    );
    gauge(
        "muster_raft_applied_index",
        "Index of the last applied entry.",
        m.last_applied.map(|l| l.index).unwrap_or(0) as f64,
    );
    gauge(
        "muster_store_revision",
        "Current MVCC revision.",
        revision as f64,
    );
    gauge(
        "muster_store_compact_revision",
        "Revision history is compacted up to.",
        compact as f64,
    );
    gauge("muster_store_keys", "Live keys.", keys as f64);
    gauge(
        "muster_store_space_used_bytes",
        "Bytes of MVCC history (what the space quota limits).",
        space_used as f64,
    );
    gauge(
        "muster_store_quota_bytes",
        "The space quota (--quota-backend-bytes).",
        node.config.quota_bytes() as f64,
    );
    for alarm in [muster_types::Alarm::NoSpace, muster_types::Alarm::Corrupt] {
        let name = format!("muster_alarm_{}", alarm.name().to_lowercase());
        let raised = alarms.iter().filter(|a| a.alarm == alarm).count();
        gauge(
            &name,
            "Members with this alarm raised (cluster-wide).",
            raised as f64,
        );
    }
    let batching = [
        (
            node.proposer.stats(),
            (
                "muster_proposed_commands_total",
                "Commands this node proposed to its Raft (as leader).",
            ),
            (
                "muster_proposal_entries_total",
                "Log entries those commands were batched into.",
            ),
        ),
        (
            node.forwarders.stats(),
            (
                "muster_forwarded_commands_total",
                "Writes this node forwarded to the leader (as follower).",
            ),
            (
                "muster_forward_messages_total",
                "Forward messages those writes were batched into.",
            ),
        ),
    ];
    for (stats, (commands, commands_help), (sends, sends_help)) in batching {
        let load =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
        gauge(commands, commands_help, load(&stats.commands));
        gauge(sends, sends_help, load(&stats.sends));
    }
    let rounds = node.read_rounds.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    // Back-pressure: requests refused because a bound was reached, and queued work dropped
    // because its caller had left.
    let refusals = [
        (
            "muster_proposals_refused_total",
            "Writes refused because the proposal queue was full.",
            load(&node.proposer.stats().refused),
        ),
        (
            "muster_proposals_abandoned_total",
            "Queued proposals discarded unsent because their caller had given up.",
            load(&node.proposer.stats().abandoned),
        ),
        (
            "muster_forwards_refused_total",
            "Writes refused because the forward queue to the leader was full.",
            load(&node.forwarders.stats().refused),
        ),
        (
            "muster_forwards_abandoned_total",
            "Queued forwards discarded unsent because their caller had given up.",
            load(&node.forwarders.stats().abandoned),
        ),
        (
            "muster_reads_refused_total",
            "Linearizable reads refused because the read-index queue was full.",
            load(&rounds.refused),
        ),
        (
            "muster_client_calls_refused_total",
            "Client calls refused because the client port's global bound was reached.",
            load(&node.client_permits.refused),
        ),
    ];
    for (name, help, value) in refusals {
        gauge(name, help, value as f64);
    }
    gauge(
        "muster_client_calls_in_flight",
        "Client calls being handled now (counted against the global bound).",
        node.client_permits.in_use() as f64,
    );
    gauge(
        "muster_linearizable_reads_total",
        "Linearizable reads (and other read barriers) that asked for a read index.",
        load(&rounds.reads) as f64,
    );
    gauge(
        "muster_read_index_rounds_total",
        "Read-index rounds those reads shared.",
        load(&rounds.rounds) as f64,
    );
    gauge(
        "muster_store_db_bytes",
        "Size of the sled database on disk.",
        node.db.size_on_disk().unwrap_or(0) as f64,
    );
    gauge(
        "muster_watch_watchers",
        "Registered watchers.",
        hub.watchers as f64,
    );
    gauge(
        "muster_watch_catching_up",
        "Watchers being fed from history (fell behind or started in the past).",
        hub.catching_up as f64,
    );
    gauge(
        "muster_watch_queued_events",
        "Events held in all live watcher queues.",
        hub.queued_events as f64,
    );
    gauge(
        "muster_watch_lagged_total",
        "Times a watcher fell behind and moved to catch-up.",
        hub.lagged as f64,
    );
    gauge(
        "muster_lease_tracked",
        "Leases whose deadlines this node tracks (non-zero only on the leader).",
        leases.tracked() as f64,
    );
    gauge(
        "muster_lease_expired_total",
        "Leases expired by this node's reaper.",
        expiry.expired as f64,
    );
    gauge(
        "muster_lease_expiry_lateness_p99_seconds",
        "p99 of how late recent expiries were applied after their deadline.",
        expiry.p99_ms as f64 / 1000.0,
    );
    out
}

async fn metrics(State(st): State<HttpState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        render_metrics(&st.node, &st.leases),
    )
}

/// Serves HTTP until the task is aborted.
pub async fn serve(listener: TcpListener, node: Arc<Node>, leases: Arc<LeaseKeeper>) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(HttpState { node, leases });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("HTTP server failed: {e}");
    }
}
