//! Output: aligned tables or JSON, and the JSON form of key-values and instances. Keys and
//! values are printed as UTF-8 (invalid bytes replaced).

use std::io::Write;

use muster_client::{InstanceRecord, KeyValue, WatchEvent};
use serde_json::{json, Value};

use crate::cli::Format;

/// A table: a header and rows of cells.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders with two spaces between columns; the last column is not padded.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate().take(n) {
                if i + 1 == n {
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(&self.header);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r));
            out.push('\n');
        }
        out
    }
}

/// Prints `table` or `json` per `format`; JSON documents are pretty-printed.
pub fn emit(format: Format, table: impl FnOnce() -> Table, json: impl FnOnce() -> Value) {
    let text = match format {
        Format::Table => table().render(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json()).unwrap_or_default();
            s.push('\n');
            s
        }
    };
    print_flush(&text);
}

/// One line of a stream: the JSON compact on one line, or the table-format text.
pub fn stream_line(format: Format, text: impl FnOnce() -> String, json: impl FnOnce() -> Value) {
    let mut line = match format {
        Format::Table => text(),
        Format::Json => json().to_string(),
    };
    line.push('\n');
    print_flush(&line);
}

fn print_flush(s: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not an error worth reporting.
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

/// Bytes as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A lease id as printed and parsed (hex).
pub fn lease_hex(id: i64) -> String {
    format!("{:x}", id as u64)
}

pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": text(&kv.key),
        "value": text(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
        "lease": kv.lease,
    })
}

pub fn event_json(e: &WatchEvent) -> Value {
    let mut v = json!({
        "type": format!("{:?}", e.kind).to_uppercase(),
        "revision": e.revision(),
        "kv": kv_json(&e.kv),
    });
    if let Some(p) = &e.prev_kv {
        v["prev_kv"] = kv_json(p);
    }
    v
}

pub fn instance_json(r: &InstanceRecord) -> Value {
    let i = &r.instance;
    json!({
        "namespace": i.namespace,
        "group": i.group,
        "service": i.service,
        "instance_id": i.instance_id,
        "address": i.address,
        "port": i.port,
        "weight": i.weight,
        "healthy": i.healthy,
        "enabled": i.enabled,
        "ephemeral": i.ephemeral,
        "cluster": i.cluster,
        "metadata": i.metadata,
        "registered_at_ms": i.registered_at_ms,
        "lease_id": r.lease_id,
        "mod_revision": r.mod_revision,
    })
}

/// The table columns of an instance.
pub const INSTANCE_HEADER: &[&str] = &[
    "INSTANCE", "ADDRESS", "WEIGHT", "HEALTHY", "ENABLED", "CLUSTER", "LEASE", "METADATA",
];

pub fn instance_row(r: &InstanceRecord) -> Vec<String> {
    let i = &r.instance;
    let meta: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vec![
        i.instance_id.clone(),
        r.addr(),
        i.weight.to_string(),
        i.healthy.to_string(),
        i.enabled.to_string(),
        i.cluster.clone(),
        if r.lease_id == 0 {
            "-".into()
        } else {
            lease_hex(r.lease_id)
        },
        meta.join(","),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["KEY", "VALUE"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into(), "2".into()]);
        assert_eq!(t.render(), "KEY     VALUE\na       1\nlonger  2\n");
    }
}
