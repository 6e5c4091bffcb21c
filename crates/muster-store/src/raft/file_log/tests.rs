//! Tests of the segment-file log beyond openraft's suite: reopen, torn tails, corruption,
//! rotation with purge and truncate, and group commit.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use openraft::{EntryPayload, Membership, RaftLogReader};
use tempfile::TempDir;

use super::{sync_group, FileLogStore, SyncJob, Watermark, HEADER_LEN};
use crate::raft::{Entry, LogId, TypeConfig, Vote};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Bound on every wait for a sync callback.
const DEADLINE: Duration = Duration::from_secs(30);

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(
        openraft::alias::LeaderIdOf::<TypeConfig>::new_committed(term, 1),
        index,
    )
}

/// Entries of varying sizes: blanks and memberships of 1..=7 voters.
fn entry(term: u64, index: u64) -> Entry {
    let payload = match index % 3 {
        0 => EntryPayload::Blank,
        _ => {
            let voters: BTreeSet<u64> = (1..=index % 7 + 1).collect();
            EntryPayload::Membership(Membership::new_with_defaults(vec![voters], []))
        }
    };
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

/// Appends and waits (with a deadline) until the entries are synced.
async fn append(store: &mut FileLogStore, ents: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = TypeConfig::oneshot();
    store.append(ents, IOFlushed::signal(tx)).await?;
    match tokio::time::timeout(DEADLINE, rx).await {
        Ok(Ok(res)) => res,
        Ok(Err(_)) => Err(io::Error::other("sync callback dropped")),
        Err(_) => Err(io::Error::other("sync callback timed out")),
    }
}

async fn all_entries(store: &mut FileLogStore) -> io::Result<Vec<Entry>> {
    store.try_get_log_entries(..).await
}

fn log_dir(tmp: &TempDir) -> PathBuf {
    tmp.path().join("raft-log")
}

/// Segment files sorted by first index, with that index.
fn segment_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    super::list_segments(dir)
}

#[tokio::test]
async fn reopen_returns_same_entries_vote_and_purged() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    let vote = Vote::new(3, 2);
    let written = entries(1, 1..=40);
    {
        let mut store = FileLogStore::open(&dir)?;
        append(&mut store, written[..10].to_vec()).await?;
        append(&mut store, written[10..].to_vec()).await?;
        store.save_vote(&vote).await?;
        store.purge(log_id(1, 5)).await?;
    }
    let mut store = FileLogStore::open(&dir)?;
    assert_eq!(store.read_vote().await?, Some(vote));
    let st = store.get_log_state().await?;
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 5)));
    assert_eq!(st.last_log_id, Some(log_id(1, 40)));
    assert_eq!(all_entries(&mut store).await?, written[5..].to_vec());
    // A reader handle sees the same, and ranges are honoured.
    let mut reader = store.get_log_reader().await;
    assert_eq!(
        reader.try_get_log_entries(10..13).await?,
        written[9..12].to_vec()
    );
    assert_eq!(
        reader.try_get_log_entries(38..=100).await?,
        written[37..].to_vec()
    );
    assert!(reader.try_get_log_entries(1..=5).await?.is_empty());
    // committed is deliberately not persisted.
    assert_eq!(store.read_committed().await?, None);
    Ok(())
}

#[tokio::test]
async fn empty_log_reopens_empty() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    drop(FileLogStore::open(&dir)?);
    let mut store = FileLogStore::open(&dir)?;
    let st = store.get_log_state().await?;
    assert_eq!((st.last_purged_log_id, st.last_log_id), (None, None));
    assert_eq!(store.read_vote().await?, None);
    assert!(all_entries(&mut store).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn torn_tail_is_cut_and_appends_continue() -> TestResult {
    // Half a record (header promising more than is there), and a full-length record whose crc
    // does not match.
    let mut half = Vec::new();
    half.extend_from_slice(&100u32.to_le_bytes());
    half.extend_from_slice(&0u32.to_le_bytes());
    half.extend_from_slice(&21u64.to_le_bytes());
    half.extend_from_slice(&[7u8; 10]);
    let mut bad_crc = Vec::new();
    bad_crc.extend_from_slice(&4u32.to_le_bytes());
    bad_crc.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    bad_crc.extend_from_slice(&21u64.to_le_bytes());
    bad_crc.extend_from_slice(&[1, 2, 3, 4]);
    for garbage in [half, bad_crc, vec![0u8; 40], vec![1u8; 5]] {
        let tmp = tempfile::tempdir()?;
        let dir = log_dir(&tmp);
        {
            let mut store = FileLogStore::open(&dir)?;
            append(&mut store, entries(1, 1..=20)).await?;
        }
        let segs = segment_files(&dir)?;
        let (_, last_seg) = segs.last().ok_or("no segment")?;
        let good_len = fs::metadata(last_seg)?.len();
        OpenOptions::new()
            .append(true)
            .open(last_seg)?
            .write_all(&garbage)?;
        assert!(fs::metadata(last_seg)?.len() > good_len);

        {
            let mut store = FileLogStore::open(&dir)?;
            assert_eq!(fs::metadata(last_seg)?.len(), good_len, "torn bytes cut");
            assert_eq!(all_entries(&mut store).await?, entries(1, 1..=20));
            append(&mut store, entries(2, 21..=25)).await?;
            let mut want = entries(1, 1..=20);
            want.extend(entries(2, 21..=25));
            assert_eq!(all_entries(&mut store).await?, want);
        }
        let mut store = FileLogStore::open(&dir)?;
        let mut want = entries(1, 1..=20);
        want.extend(entries(2, 21..=25));
        assert_eq!(all_entries(&mut store).await?, want);
        assert_eq!(
            store.get_log_state().await?.last_log_id,
            Some(log_id(2, 25))
        );
    }
    Ok(())
}

#[tokio::test]
async fn corrupt_record_in_earlier_segment_fails_open() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    {
        let mut store = FileLogStore::open_with_segment_bytes(&dir, 300)?;
        for i in (1..=60).step_by(3) {
            append(&mut store, entries(1, i..=i + 2)).await?;
        }
    }
    let segs = segment_files(&dir)?;
    assert!(
        segs.len() >= 4,
        "expected several segments, got {}",
        segs.len()
    );
    let (_, victim) = &segs[1];
    let len = fs::metadata(victim)?.len();
    let mut bytes = fs::read(victim)?;
    let at = (len / 2) as usize;
    bytes[at] ^= 0x5a;
    fs::write(victim, &bytes)?;

    let err = match FileLogStore::open_with_segment_bytes(&dir, 300) {
        Ok(_) => return Err("open succeeded on a corrupt segment".into()),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    let name = victim.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    assert!(err.to_string().contains(name), "{err}");
    // Nothing was cut from the damaged file.
    assert_eq!(fs::metadata(victim)?.len(), len);
    Ok(())
}

#[tokio::test]
async fn gap_between_segments_fails_open() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    {
        let mut store = FileLogStore::open_with_segment_bytes(&dir, 200)?;
        for i in 1..=30 {
            append(&mut store, vec![entry(1, i)]).await?;
        }
    }
    let segs = segment_files(&dir)?;
    assert!(segs.len() >= 3);
    fs::remove_file(&segs[1].1)?;
    let err = match FileLogStore::open(&dir) {
        Ok(_) => return Err("open succeeded with a missing segment".into()),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    Ok(())
}

#[tokio::test]
async fn rotation_and_purge_delete_whole_segments() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    let seg_bytes = 256;
    let mut store = FileLogStore::open_with_segment_bytes(&dir, seg_bytes)?;
    for i in (1..=100).step_by(2) {
        append(&mut store, entries(1, i..=i + 1)).await?;
    }
    let before = segment_files(&dir)?;
    assert!(before.len() >= 10, "only {} segments", before.len());
    // A closed segment crossed the threshold with its last batch (two records of at most
    // ~250 bytes here) and took no more.
    for w in before.windows(2) {
        let len = fs::metadata(&w[0].1)?.len();
        assert!(
            len >= seg_bytes && len < seg_bytes + 500,
            "segment of {len} bytes"
        );
    }

    store.purge(log_id(1, 50)).await?;
    let after = segment_files(&dir)?;
    // Exactly the segments whose last index (next segment's first - 1) is <= 50 are gone.
    let expect: Vec<u64> = before
        .iter()
        .enumerate()
        .filter(|(n, _)| before.get(n + 1).is_none_or(|(next, _)| next - 1 > 50))
        .map(|(_, (first, _))| *first)
        .collect();
    let got: Vec<u64> = after.iter().map(|(f, _)| *f).collect();
    assert_eq!(got, expect);
    assert!(after.len() < before.len());
    assert!(
        got[0] <= 51,
        "segment holding entry 51 was deleted: {got:?}"
    );

    assert!(store.try_get_log_entries(..=50).await?.is_empty());
    assert_eq!(all_entries(&mut store).await?, entries(1, 51..=100));
    let st = store.get_log_state().await?;
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 50)));
    assert_eq!(st.last_log_id, Some(log_id(1, 100)));
    drop(store);

    let mut store = FileLogStore::open_with_segment_bytes(&dir, seg_bytes)?;
    assert_eq!(all_entries(&mut store).await?, entries(1, 51..=100));
    assert!(store.try_get_log_entries(40..=50).await?.is_empty());
    let st = store.get_log_state().await?;
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 50)));
    assert_eq!(st.last_log_id, Some(log_id(1, 100)));

    // Purging everything keeps the current segment; appends go on after the purge point.
    store.purge(log_id(1, 100)).await?;
    assert_eq!(segment_files(&dir)?.len(), 1);
    assert!(all_entries(&mut store).await?.is_empty());
    append(&mut store, entries(2, 101..=103)).await?;
    drop(store);
    let mut store = FileLogStore::open_with_segment_bytes(&dir, seg_bytes)?;
    assert_eq!(all_entries(&mut store).await?, entries(2, 101..=103));
    Ok(())
}

#[tokio::test]
async fn purge_past_the_end_then_append_like_a_snapshot_install() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    let mut store = FileLogStore::open_with_segment_bytes(&dir, 256)?;
    append(&mut store, entries(1, 1..=30)).await?;
    store.purge(log_id(3, 500)).await?;
    let st = store.get_log_state().await?;
    assert_eq!(st.last_purged_log_id, Some(log_id(3, 500)));
    assert_eq!(st.last_log_id, Some(log_id(3, 500)));
    // Below the purge point is refused; right after it starts a fresh segment.
    assert!(append(&mut store, vec![entry(3, 31)]).await.is_err());
    append(&mut store, entries(3, 501..=510)).await?;
    let segs = segment_files(&dir)?;
    assert_eq!(segs.first().map(|s| s.0), Some(501));
    assert_eq!(all_entries(&mut store).await?, entries(3, 501..=510));
    drop(store);

    let mut store = FileLogStore::open(&dir)?;
    assert_eq!(all_entries(&mut store).await?, entries(3, 501..=510));
    let st = store.get_log_state().await?;
    assert_eq!(st.last_purged_log_id, Some(log_id(3, 500)));
    assert_eq!(st.last_log_id, Some(log_id(3, 510)));
    Ok(())
}

#[tokio::test]
async fn append_that_would_leave_a_hole_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut store = FileLogStore::open(&log_dir(&tmp))?;
    append(&mut store, entries(1, 1..=5)).await?;
    let err = append(&mut store, vec![entry(1, 7)])
        .await
        .err()
        .ok_or("gap accepted")?;
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = append(&mut store, vec![entry(2, 5)])
        .await
        .err()
        .ok_or("overlap accepted")?;
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let err = append(&mut store, vec![entry(1, 6), entry(1, 8)])
        .await
        .err()
        .ok_or("non-consecutive batch accepted")?;
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(all_entries(&mut store).await?, entries(1, 1..=5));
    Ok(())
}

#[tokio::test]
async fn truncate_in_earlier_segment_drops_later_ones() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    let seg_bytes = 600;
    let mut store = FileLogStore::open_with_segment_bytes(&dir, seg_bytes)?;
    for i in 1..=60 {
        append(&mut store, vec![entry(1, i)]).await?;
    }
    let before = segment_files(&dir)?;
    assert!(before.len() >= 5, "only {} segments", before.len());
    let (second_first, second_path) = before[1].clone();
    let (third_first, _) = before[2];
    assert!(third_first - second_first >= 3);
    let keep = second_first + 1;

    store.truncate_after(Some(log_id(1, keep))).await?;
    let after = segment_files(&dir)?;
    assert_eq!(after, before[..2].to_vec(), "later segments deleted");
    assert_eq!(all_entries(&mut store).await?, entries(1, 1..=keep));
    assert_eq!(
        store.get_log_state().await?.last_log_id,
        Some(log_id(1, keep))
    );
    // The surviving segment was cut right after entry `keep`.
    let cut_len = fs::metadata(&second_path)?.len();
    let mut buf = Vec::new();
    super::encode_record(&mut buf, &entry(1, second_first))?;
    super::encode_record(&mut buf, &entry(1, keep))?;
    assert_eq!(cut_len, buf.len() as u64);

    append(&mut store, entries(2, keep + 1..=keep + 30)).await?;
    let mut want = entries(1, 1..=keep);
    want.extend(entries(2, keep + 1..=keep + 30));
    assert_eq!(all_entries(&mut store).await?, want);
    drop(store);

    let mut store = FileLogStore::open_with_segment_bytes(&dir, seg_bytes)?;
    assert_eq!(
        all_entries(&mut store).await?,
        want,
        "no stale records came back"
    );
    assert_eq!(
        store.get_log_state().await?.last_log_id,
        Some(log_id(2, keep + 30))
    );

    // Truncating everything, then starting again from the first index.
    store.truncate_after(None).await?;
    assert!(all_entries(&mut store).await?.is_empty());
    assert_eq!(store.get_log_state().await?.last_log_id, None);
    append(&mut store, entries(3, 1..=3)).await?;
    drop(store);
    let mut store = FileLogStore::open(&dir)?;
    assert_eq!(all_entries(&mut store).await?, entries(3, 1..=3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_all_complete() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    let mut store = FileLogStore::open_with_segment_bytes(&dir, 4096)?;
    let mut pending = Vec::new();
    for i in 1..=300 {
        let (tx, rx) = TypeConfig::oneshot();
        store
            .append(vec![entry(1, i)], IOFlushed::signal(tx))
            .await?;
        pending.push(rx);
        // Readable as soon as append returns, before its sync.
        assert_eq!(store.try_get_log_entries(i..=i).await?, vec![entry(1, i)]);
    }
    for (n, rx) in pending.into_iter().enumerate() {
        match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(Ok(()))) => {}
            other => return Err(format!("append {} not completed: {other:?}", n + 1).into()),
        }
    }
    assert!(segment_files(&dir)?.len() > 1, "rotation exercised");
    drop(store);
    let mut store = FileLogStore::open(&dir)?;
    assert_eq!(all_entries(&mut store).await?, entries(1, 1..=300));
    Ok(())
}

#[test]
fn sync_group_syncs_each_file_once_and_completes_all() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = Arc::new(File::create(tmp.path().join("a"))?);
    let b = Arc::new(File::create(tmp.path().join("b"))?);
    let mut rxs = Vec::new();
    let mut group = Vec::new();
    for (i, file) in [&a, &a, &b, &a].into_iter().enumerate() {
        let (tx, rx) = TypeConfig::oneshot();
        group.push(SyncJob {
            file: Arc::clone(file),
            last_index: 10 + i as u64,
            generation: 0,
            callback: IOFlushed::signal(tx),
        });
        rxs.push(rx);
    }
    let durable = Watermark::new(3);
    assert_eq!(sync_group(group, &durable), 2);
    assert_eq!(durable.get(), 13);
    for mut rx in rxs {
        assert!(matches!(rx.try_recv(), Ok(Ok(()))));
    }
    Ok(())
}

#[test]
fn record_round_trip_and_damage() -> TestResult {
    use super::{parse_record, Parsed};
    let e = entry(4, 9);
    let mut buf = Vec::new();
    super::encode_record(&mut buf, &e)?;
    match parse_record(&buf) {
        Parsed::Record {
            index,
            payload,
            len,
        } => {
            assert_eq!((index, len), (9, buf.len()));
            assert_eq!(payload.len() + HEADER_LEN, buf.len());
            assert_eq!(bincode::deserialize::<Entry>(payload)?, e);
        }
        other => return Err(format!("{other:?}").into()),
    }
    assert_eq!(parse_record(&buf[..buf.len() - 1]), Parsed::Short);
    assert_eq!(parse_record(&buf[..HEADER_LEN - 1]), Parsed::Short);
    for at in 4..buf.len() {
        let mut bad = buf.clone();
        bad[at] ^= 1;
        assert!(
            matches!(parse_record(&bad), Parsed::Corrupt(_)),
            "flip at {at} not detected"
        );
    }
    Ok(())
}

#[tokio::test]
async fn durable_index_follows_syncs_truncation_and_reopen() -> TestResult {
    use std::sync::atomic::Ordering;
    let tmp = tempfile::tempdir()?;
    let dir = log_dir(&tmp);
    let mut store = FileLogStore::open(&dir)?;
    let durable = store.durable_index();
    assert_eq!(durable.load(Ordering::SeqCst), 0);
    append(&mut store, entries(1, 1..=20)).await?;
    // The callback fired, so the sync that raised the watermark is done.
    assert_eq!(durable.load(Ordering::SeqCst), 20);
    store.truncate_after(Some(log_id(1, 12))).await?;
    assert_eq!(durable.load(Ordering::SeqCst), 12);
    append(&mut store, entries(2, 13..=15)).await?;
    assert_eq!(durable.load(Ordering::SeqCst), 15);
    drop(store);
    let store = FileLogStore::open(&dir)?;
    assert_eq!(store.durable_index().load(Ordering::SeqCst), 15);
    Ok(())
}

/// A sync queued before a truncate covers entries the truncate dropped: when it completes it
/// must not raise the watermark over the dropped indexes, which may hold newer entries not yet
/// synced (the state machine would then write applied state ahead of the durable log).
#[test]
fn a_sync_queued_before_a_truncate_does_not_raise_the_watermark() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let file = Arc::new(File::create(tmp.path().join("seg"))?);
    let w = Watermark::new(10);
    let (tx, mut rx) = TypeConfig::oneshot();
    let stale = SyncJob {
        file: Arc::clone(&file),
        last_index: 20,
        generation: w.generation(),
        callback: IOFlushed::signal(tx),
    };
    w.truncated(12);
    sync_group(vec![stale], &w);
    assert_eq!(w.get(), 10, "a stale sync must not raise the watermark");
    assert!(
        matches!(rx.try_recv(), Ok(Ok(()))),
        "its callback still completes"
    );
    let (tx, _rx) = TypeConfig::oneshot();
    let fresh = SyncJob {
        file,
        last_index: 15,
        generation: w.generation(),
        callback: IOFlushed::signal(tx),
    };
    sync_group(vec![fresh], &w);
    assert_eq!(
        w.get(),
        15,
        "a sync of entries written after the truncate raises it"
    );
    Ok(())
}
