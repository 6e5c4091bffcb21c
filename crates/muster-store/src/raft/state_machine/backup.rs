//! Backups (etcd's `snapshot save` and `snapshot restore`): a consistent copy of the state
//! machine, streamed to a client by `Maintenance.Snapshot`, and seeding an empty data dir from
//! one, so that a new cluster starts with the same keys, revisions, leases, registry and
//! request-id records.
//!
//! The file: [`BACKUP_MAGIC`] (16 bytes), the body's length (u64, little-endian), the
//! bincode of the body (revision, applied index, every keyspace record in key order), zeros
//! up to a multiple of 512 bytes, then the SHA-256 of everything before it (32 bytes). The
//! padding and the trailing hash are the layout `etcdctl snapshot save` checks ("sha256
//! checksum not found" otherwise). It is not etcd's bbolt file: etcd's tools cannot restore
//! it, nor Muster theirs.

use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::snapshot::{scan, Scanned};
use super::SmShared;
use crate::error::StoreError;
use crate::mvcc::{is_alarm_record, Mvcc};
use crate::raft::{blocking, io_err, DB_DIR, LOG_DIR};

/// The first bytes of every backup file.
pub const BACKUP_MAGIC: &[u8; 16] = b"MUSTER-BACKUP-01";
const CHECKSUM_BYTES: usize = 32;

#[derive(Serialize, Deserialize)]
struct BackupBody {
    revision: i64,
    applied_index: Option<u64>,
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The store revision it was taken at.
    pub revision: i64,
    /// The Raft log index it was taken at (of the cluster it came from).
    pub applied_index: Option<u64>,
    /// Keyspace records (history, leases, request ids, meta).
    pub records: usize,
    /// The file's size.
    pub bytes: usize,
}

/// Why a backup cannot be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "not a Muster backup (it does not start with {:?}); an etcd snapshot is a bbolt \
         database, which only etcd's tools read",
        String::from_utf8_lossy(BACKUP_MAGIC)
    )]
    NotABackup,
    #[error("the backup's checksum does not match: the file is damaged or truncated")]
    Checksum,
    #[error("{path} already holds a node's data; restore into an empty data dir")]
    DataDirInUse { path: String },
    #[error("cannot decode the backup: {0}")]
    Codec(#[from] bincode::Error),
    #[error("restoring: {0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl SmShared {
    /// A backup of the state as of the last applied entry: consistent (taken like a snapshot,
    /// without holding back applies for the scan), compacted history left out.
    pub async fn backup(self: &Arc<Self>) -> io::Result<(Vec<u8>, BackupSummary)> {
        let gate = self.snapshot_gate.clone().lock_owned().await;
        let shared = Arc::clone(self);
        blocking(move || {
            let _gate = gate;
            let revision = shared.read().mvcc.current_revision();
            let Scanned { meta, records, .. } = scan(&shared)?;
            // The revision read before the scan may be older than the scan's state: read it
            // from the scanned records instead.
            let revision = current_revision_of(&records).unwrap_or(revision);
            let body = BackupBody {
                revision,
                applied_index: meta.last_log_id.map(|l| l.index),
                records,
            };
            let bytes = encode(&body).map_err(io_err)?;
            let summary = BackupSummary {
                revision: body.revision,
                applied_index: body.applied_index,
                records: body.records.len(),
                bytes: bytes.len(),
            };
            tracing::info!(?summary, "backup taken");
            Ok((bytes, summary))
        })
        .await
    }
}

fn current_revision_of(records: &[(Vec<u8>, Vec<u8>)]) -> Option<i64> {
    let key = crate::mvcc::META_CURRENT_REVISION_KEY;
    let i = records
        .binary_search_by(|(k, _)| k.as_slice().cmp(key))
        .ok()?;
    bincode::deserialize(&records[i].1).ok()
}

/// etcd's backups hash a content of whole 512-byte pages; etcdctl checks the file's length.
const PAGE: usize = 512;

fn encode(body: &BackupBody) -> Result<Vec<u8>, bincode::Error> {
    let encoded = bincode::serialize(body)?;
    let mut out = Vec::with_capacity(encoded.len() + 2 * PAGE);
    out.extend_from_slice(BACKUP_MAGIC);
    out.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
    out.extend_from_slice(&encoded);
    drop(encoded);
    out.resize(out.len().div_ceil(PAGE) * PAGE, 0);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<BackupBody, BackupError> {
    if !bytes.starts_with(BACKUP_MAGIC) {
        return Err(BackupError::NotABackup);
    }
    if bytes.len() < BACKUP_MAGIC.len() + CHECKSUM_BYTES {
        return Err(BackupError::Checksum);
    }
    let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if Sha256::digest(content).as_slice() != sum {
        return Err(BackupError::Checksum);
    }
    let rest = &content[BACKUP_MAGIC.len()..];
    let (len, rest) = rest.split_at_checked(8).ok_or(BackupError::Checksum)?;
    let len = u64::from_le_bytes(len.try_into().map_err(|_| BackupError::Checksum)?);
    let body = usize::try_from(len)
        .ok()
        .and_then(|len| rest.get(..len))
        .ok_or(BackupError::Checksum)?;
    Ok(bincode::deserialize(body)?)
}

/// Reads a backup's summary, checking its checksum.
pub fn inspect_backup(bytes: &[u8]) -> Result<BackupSummary, BackupError> {
    let body = decode(bytes)?;
    Ok(BackupSummary {
        revision: body.revision,
        applied_index: body.applied_index,
        records: body.records.len(),
        bytes: bytes.len(),
    })
}

/// Seeds the empty data dir `data_dir` from a backup: the node started on it (with a new
/// cluster's `--initial-cluster`) serves the backup's keyspace at its revision. Alarms are
/// left out: they named the old cluster's members. Checks the whole keyspace opens before it
/// returns.
pub fn restore_backup(bytes: &[u8], data_dir: &Path) -> Result<BackupSummary, BackupError> {
    let body = decode(bytes)?;
    for dir in [DB_DIR, LOG_DIR] {
        let path = data_dir.join(dir);
        let in_use = match std::fs::read_dir(&path) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(BackupError::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })
            }
        };
        if in_use {
            return Err(BackupError::DataDirInUse {
                path: path.display().to_string(),
            });
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|source| BackupError::Io {
        what: format!("creating {}", data_dir.display()),
        source,
    })?;
    let db = sled::Config::new()
        .path(data_dir.join(DB_DIR))
        .open()
        .map_err(StoreError::from)?;
    let tree = db.open_tree(super::TREE).map_err(StoreError::from)?;
    let mut batch = sled::Batch::default();
    let mut records = 0;
    for (k, v) in body.records {
        if !is_alarm_record(&k) {
            batch.insert(k, v);
            records += 1;
        }
    }
    tree.apply_batch(batch).map_err(StoreError::from)?;
    db.flush().map_err(StoreError::from)?;
    let mvcc = Mvcc::open(tree)?;
    if mvcc.current_revision() != body.revision {
        return Err(StoreError::Corrupt {
            what: format!(
                "restored revision {} but the backup says {}",
                mvcc.current_revision(),
                body.revision
            ),
        }
        .into());
    }
    Ok(BackupSummary {
        revision: body.revision,
        applied_index: body.applied_index,
        records,
        bytes: bytes.len(),
    })
}
