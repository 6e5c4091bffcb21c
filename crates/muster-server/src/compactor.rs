//! Auto-compaction, etcd's `--auto-compaction-mode` and `--auto-compaction-retention`: the
//! leader proposes Compact through the log on a schedule (through the kv service, like a
//! client's Compact), so every node compacts at the same revision. Followers only watch.
//!
//! - `revision`: every `check_interval` (etcd: 5 minutes), compact to the current revision
//!   minus `retention_revisions`.
//! - `periodic`: every max(`retention_period` / 10, 1 s) the leader notes the current
//!   revision; it compacts to the newest noted revision at least `retention_period` old, so
//!   about that much history stays readable (etcd's rule). A new leader starts noting afresh.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::node::Node;
use crate::services::kv::Kv;
use crate::services::RequestCtx;
use muster_types::ApplyError;
use std::sync::Arc;

/// Which history auto-compaction keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoCompactionMode {
    /// No auto-compaction (etcd's default retention of 0).
    #[default]
    Off,
    /// Keep `retention_period` of history.
    Periodic,
    /// Keep `retention_revisions` revisions.
    Revision,
}

/// `[auto_compaction]` in the config file; `--auto-compaction-mode` and
/// `--auto-compaction-retention` on the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoCompactionConfig {
    pub mode: AutoCompactionMode,
    /// `periodic`: how much history stays readable.
    #[serde(with = "humantime_serde")]
    pub retention_period: Duration,
    /// `revision`: how many revisions stay readable.
    pub retention_revisions: i64,
    /// `revision`: how often the leader checks.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for AutoCompactionConfig {
    fn default() -> Self {
        AutoCompactionConfig {
            mode: AutoCompactionMode::Off,
            retention_period: Duration::from_secs(3600),
            retention_revisions: 1000,
            check_interval: Duration::from_secs(300),
        }
    }
}

impl AutoCompactionConfig {
    /// How often the leader acts.
    fn tick(&self) -> Duration {
        match self.mode {
            AutoCompactionMode::Periodic => {
                (self.retention_period / 10).max(Duration::from_secs(1))
            }
            _ => self.check_interval,
        }
    }

    /// Sets the mode and retention from etcd's flags: periodic takes a duration ("30m",
    /// "1h") or a bare number of hours; revision takes a revision count.
    pub fn from_flags(mode: &str, retention: &str) -> Result<AutoCompactionConfig, String> {
        let mut c = AutoCompactionConfig::default();
        match mode {
            "periodic" => {
                c.mode = AutoCompactionMode::Periodic;
                c.retention_period = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours * 3600),
                    Err(_) => humantime::parse_duration(retention)
                        .map_err(|e| format!("--auto-compaction-retention {retention:?}: {e}"))?,
                };
                if c.retention_period.is_zero() {
                    c.mode = AutoCompactionMode::Off;
                }
            }
            "revision" => {
                c.mode = AutoCompactionMode::Revision;
                c.retention_revisions = retention.parse().map_err(|_| {
                    format!("--auto-compaction-retention {retention:?}: want a revision count")
                })?;
                if c.retention_revisions <= 0 {
                    c.mode = AutoCompactionMode::Off;
                }
            }
            other => {
                return Err(format!(
                    "--auto-compaction-mode {other:?}: periodic or revision"
                ))
            }
        }
        Ok(c)
    }
}

/// Starts the auto-compaction task of `node` (a no-op when off); it ends with `stop`.
pub fn start(node: Arc<Node>, kv: Kv, stop: CancellationToken) {
    let cfg = node.config.auto_compaction.clone();
    if cfg.mode == AutoCompactionMode::Off {
        return;
    }
    tokio::spawn(async move {
        // Revisions noted while leading (periodic mode), oldest first.
        let mut noted: VecDeque<(Instant, i64)> = VecDeque::new();
        let mut ticks = tokio::time::interval(cfg.tick());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if node.current_leader() != Some(node.id) {
                noted.clear();
                continue;
            }
            let (current, compacted) = {
                let sm = node.sm.read();
                (sm.mvcc.current_revision(), sm.mvcc.compact_revision())
            };
            let target = match cfg.mode {
                AutoCompactionMode::Revision => current - cfg.retention_revisions,
                AutoCompactionMode::Periodic => {
                    let now = Instant::now();
                    noted.push_back((now, current));
                    let mut target = 0;
                    while let Some(&(at, rev)) = noted.front() {
                        if now.duration_since(at) < cfg.retention_period {
                            break;
                        }
                        target = rev;
                        noted.pop_front();
                    }
                    target
                }
                AutoCompactionMode::Off => return,
            };
            if target <= compacted {
                continue;
            }
            match kv.compact(target, &RequestCtx::none()).await {
                Ok(_) => tracing::info!(node_id = node.id, revision = target, "auto-compacted"),
                // Someone compacted further meanwhile.
                Err(ServerError::Apply(ApplyError::Compacted { .. })) => {}
                Err(e) => {
                    tracing::warn!(node_id = node.id, revision = target, "auto-compaction: {e}")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcds_flags() {
        let c = AutoCompactionConfig::from_flags("periodic", "1").expect("hours");
        assert_eq!(
            (c.mode, c.retention_period),
            (AutoCompactionMode::Periodic, Duration::from_secs(3600))
        );
        let c = AutoCompactionConfig::from_flags("periodic", "30m").expect("duration");
        assert_eq!(c.retention_period, Duration::from_secs(1800));
        assert_eq!(c.tick(), Duration::from_secs(180));
        let c = AutoCompactionConfig::from_flags("revision", "1000").expect("count");
        assert_eq!(
            (c.mode, c.retention_revisions),
            (AutoCompactionMode::Revision, 1000)
        );
        assert_eq!(
            AutoCompactionConfig::from_flags("periodic", "0")
                .expect("off")
                .mode,
            AutoCompactionMode::Off
        );
        assert!(AutoCompactionConfig::from_flags("revision", "1h").is_err());
        assert!(AutoCompactionConfig::from_flags("daily", "1").is_err());
    }
}
