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

use crate::node::Node;

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

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = health_body(&node);
    let code = if body.leader.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn ready(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = health_body(&node);
    let code = if body.leader.is_some() && body.applied_index > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// Renders the node's gauges. Values are read at scrape time from Raft metrics and the store.
pub fn render_metrics(node: &Node) -> String {
    let m = node.raft.metrics().borrow_watched().clone();
    let revision = node.sm.read().mvcc.current_revision();
    let compact = node.sm.read().mvcc.compact_revision();
    let keys = node.sm.read().mvcc.key_count();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node_id=\"{}\"}} {v}",
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
        "muster_store_db_bytes",
        "Size of the sled database on disk.",
        node.db.size_on_disk().unwrap_or(0) as f64,
    );
    out
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        render_metrics(&node),
    )
}

/// Serves HTTP until the task is aborted.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(node);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("HTTP server failed: {e}");
    }
}
