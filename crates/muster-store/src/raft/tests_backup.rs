//! Backups: a backup restored into an empty data dir opens as the same keyspace at the same
//! revision, without alarms; a damaged file, another format and a used data dir are refused.
#![allow(clippy::unwrap_used)]

use muster_types::{Alarm, AlarmAction, Command, LogEntry};
use openraft::EntryPayload;

use super::state_machine::{inspect_backup, restore_backup, BackupError, StateMachineStore};
use super::test_util::{log_id, small, Sm};
use super::Entry;

fn alarm_entry(index: u64) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(LogEntry {
            time_ms: 1_000,
            cmd: Command::Alarm {
                action: AlarmAction::Activate,
                member_id: 1,
                alarm: Alarm::NoSpace,
            },
        }),
    }
}

#[tokio::test]
async fn a_restored_backup_is_the_same_keyspace_at_the_same_revision() {
    let mut s = Sm::new();
    s.apply((1..=50).map(small).collect()).await.unwrap();
    // Unwritten applied state is in the backup too: it is taken from the applied state.
    s.apply((51..=60).map(small).collect()).await.unwrap();
    s.apply(vec![alarm_entry(61)]).await.unwrap();
    let (bytes, summary) = s.shared().backup().await.unwrap();
    assert_eq!(summary.revision, s.revision());
    assert_eq!(summary.applied_index, Some(61));
    assert_eq!(inspect_backup(&bytes).unwrap(), summary);

    let target = tempfile::tempdir().unwrap();
    let restored = restore_backup(&bytes, target.path()).unwrap();
    assert_eq!(restored.revision, s.revision());
    let db = sled::Config::new()
        .path(target.path().join(super::DB_DIR))
        .open()
        .unwrap();
    let copy = StateMachineStore::open(&db, target.path()).unwrap();
    let copy = copy.shared();
    let inner = copy.read();
    assert_eq!(inner.mvcc.current_revision(), s.revision());
    assert!(
        inner.last_applied.is_none(),
        "a new cluster's log starts over"
    );
    assert!(
        inner.mvcc.alarms().is_empty(),
        "alarms named the old members"
    );
    let all = s.all();
    assert_eq!(all.len(), 60);
    let req = muster_types::RangeRequest {
        range: muster_types::KeyRange::new(vec![0], vec![0]),
        ..Default::default()
    };
    assert_eq!(inner.mvcc.range(&req).unwrap().unwrap().kvs, all);
}

#[tokio::test]
async fn damaged_foreign_and_misplaced_restores_are_refused() {
    let mut s = Sm::new();
    s.apply((1..=5).map(small).collect()).await.unwrap();
    let (bytes, _) = s.shared().backup().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    assert!(matches!(
        restore_backup(&flipped, &dir.path().join("a")),
        Err(BackupError::Checksum)
    ));
    assert!(matches!(
        restore_backup(&bytes[..bytes.len() - 1], &dir.path().join("b")),
        Err(BackupError::Checksum)
    ));
    // etcd's snapshot file is a bbolt database: its first page is no Muster header.
    assert!(matches!(
        restore_backup(&[0u8; 4096], &dir.path().join("c")),
        Err(BackupError::NotABackup)
    ));
    // The source's own data dir is in use.
    assert!(matches!(
        restore_backup(&bytes, s.dir.path()),
        Err(BackupError::DataDirInUse { .. })
    ));
    assert!(
        !dir.path().join("a").exists(),
        "a refused restore writes nothing"
    );
}
