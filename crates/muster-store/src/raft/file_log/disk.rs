//! The log directory on disk: the crash-atomic meta files (vote, purge point), listing segment
//! files, and recovering the in-memory index from them at open.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::record::{parse_record, Parsed};
use super::{invalid_data, sync_dir, Segment, SEGMENT_EXT};
use crate::raft::io_err;

pub(super) fn read_meta<T: DeserializeOwned>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => bincode::deserialize(&bytes)
            .map(Some)
            .map_err(|e| invalid_data(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `dir/name` crash-atomically: the file holds either the old or the new value.
pub(super) fn write_meta<T: Serialize>(dir: &Path, name: &str, v: &T) -> io::Result<()> {
    let bytes = bincode::serialize(v).map_err(io_err)?;
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Lists `dir`'s segment files sorted by first index.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for ent in fs::read_dir(dir)? {
        let path = ent?.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
            continue;
        }
        let first = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| invalid_data(format!("{}: bad segment file name", path.display())))?;
        out.push((first, path));
    }
    out.sort_by_key(|(first, _)| *first);
    Ok(out)
}

/// Scans every segment (see the module doc for the rules) and builds the in-memory index.
pub(super) fn recover_segments(dir: &Path, purged: Option<u64>) -> io::Result<VecDeque<Segment>> {
    let files = list_segments(dir)?;
    let mut segments = VecDeque::with_capacity(files.len());
    let count = files.len();
    for (n, (first_index, path)) in files.into_iter().enumerate() {
        let is_last = n + 1 == count;
        if let Some(prev) = segments.back().map(|s: &Segment| s.next_index()) {
            if first_index != prev {
                return Err(invalid_data(format!(
                    "{}: segment starts at index {first_index}, expected {prev} (the index after \
                     the previous segment's last record)",
                    path.display()
                )));
            }
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let data = fs::read(&path)?;
        let mut pos = 0usize;
        let mut next = first_index;
        let mut offsets = VecDeque::new();
        let mut base = None;
        while pos < data.len() {
            match parse_record(&data[pos..]) {
                Parsed::Record { index, len, .. } => {
                    if index != next {
                        return Err(invalid_data(format!(
                            "{}: record at offset {pos} has index {index}, expected {next}",
                            path.display()
                        )));
                    }
                    if purged.is_none_or(|p| index > p) {
                        base.get_or_insert(index);
                        offsets.push_back(pos as u64);
                    }
                    pos += len;
                    next += 1;
                }
                bad if is_last => {
                    tracing::warn!(
                        path = %path.display(),
                        offset = pos,
                        dropped_bytes = data.len() - pos,
                        record = ?bad,
                        "raft log: cutting a torn write at the end of the last segment"
                    );
                    file.set_len(pos as u64)?;
                    file.sync_data()?;
                    break;
                }
                bad => {
                    return Err(invalid_data(format!(
                        "{}: {bad:?} record at offset {pos} in a segment that is not the last",
                        path.display()
                    )));
                }
            }
        }
        segments.push_back(Segment {
            path,
            file: Arc::new(file),
            base: base.unwrap_or(next),
            offsets,
            len: pos as u64,
        });
    }
    Ok(segments)
}
