//! `footprint`: resident memory (VmRSS) of each server process and disk use of each data
//! directory (allocated blocks, as `du` counts them).

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};

use crate::common::vm_rss_kib;

/// Disk use under a path: allocated (as `du` counts it; includes preallocated space) and
/// apparent (the sum of file sizes).
#[derive(Default, Clone, Copy)]
struct Usage {
    allocated: u64,
    apparent: u64,
}

/// The disk use of `path` and everything under it (links are not followed).
fn disk_usage(path: &Path) -> anyhow::Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("stat {path:?}"))?;
    let mut u = Usage {
        allocated: meta.blocks() * 512,
        apparent: if meta.is_file() { meta.len() } else { 0 },
    };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).with_context(|| format!("listing {path:?}"))? {
            let sub = disk_usage(&entry?.path())?;
            u.allocated += sub.allocated;
            u.apparent += sub.apparent;
        }
    }
    Ok(u)
}

const MIB: f64 = 1024.0 * 1024.0;

/// Memory of `pids` and disk use of `dirs`, labelled `label` (e.g. "after load").
pub fn footprint(label: &str, pids: &[u32], dirs: &[String]) -> anyhow::Result<Value> {
    let mut rss = Vec::with_capacity(pids.len());
    for &pid in pids {
        rss.push(json!({"pid": pid, "rss_kib": vm_rss_kib(pid)?}));
    }
    let mut disk = Vec::with_capacity(dirs.len());
    let mut total = Usage::default();
    for d in dirs {
        let u = disk_usage(Path::new(d))?;
        total.allocated += u.allocated;
        total.apparent += u.apparent;
        disk.push(json!({"dir": d, "bytes": u.allocated, "apparent_bytes": u.apparent}));
    }
    let rss_kib: u64 = rss.iter().filter_map(|r| r["rss_kib"].as_u64()).sum();
    Ok(json!({
        "what": "footprint", "label": label,
        "rss_total_mib": rss_kib as f64 / 1024.0,
        "disk_total_mib": total.allocated as f64 / MIB,
        "disk_apparent_mib": total.apparent as f64 / MIB,
        "processes": rss, "dirs": disk,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_own_memory_and_a_file() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("muster-bench-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("f"), vec![1u8; 64 * 1024])?;
        let v = footprint(
            "t",
            &[std::process::id()],
            &[dir.to_string_lossy().into_owned()],
        )?;
        std::fs::remove_dir_all(&dir)?;
        assert!(v["rss_total_mib"].as_f64().unwrap_or(0.0) > 0.0);
        assert!(v["dirs"][0]["bytes"].as_u64().unwrap_or(0) >= 64 * 1024);
        assert_eq!(v["dirs"][0]["apparent_bytes"].as_u64(), Some(64 * 1024));
        Ok(())
    }
}
