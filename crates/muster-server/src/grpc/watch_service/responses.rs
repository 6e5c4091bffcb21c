//! Cutting a watcher's batch of events into Watch responses: only between revisions, with
//! `fragment` splitting a single oversized revision when the watcher asked for it.

use std::sync::Arc;

use muster_proto::mvccpb;
use muster_types::{Event, EventKind};
use prost::Message;

/// The wire form of an event; `prev_kv` only when the watcher asked for it.
fn event_to_pb(e: &Event, prev_kv: bool) -> mvccpb::Event {
    let kind = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(e.kv.clone().into()),
        prev_kv: if prev_kv {
            e.prev_kv.clone().map(Into::into)
        } else {
            None
        },
    }
}

/// Cuts a batch (whole revisions, in order) into responses of about `max_bytes` each, only
/// between revisions. A revision larger than `max_bytes` goes whole, or — when the watcher
/// asked for `fragment` — in pieces of at most `max_bytes` (at least one event), every piece
/// but the revision's last flagged `fragment` so the client reassembles it. Returns each
/// response's events and its `fragment` flag.
pub(super) fn cut_responses(
    events: &[Arc<Event>],
    prev_kv: bool,
    fragment: bool,
    max_bytes: usize,
) -> Vec<(Vec<mvccpb::Event>, bool)> {
    // Field tag and length prefix of a repeated message field.
    const PER_EVENT_OVERHEAD: usize = 6;
    let mut out = Vec::new();
    let mut cur: Vec<mvccpb::Event> = Vec::new();
    let mut cur_bytes = 0usize;
    for group in events.chunk_by(|a, b| a.kv.mod_revision == b.kv.mod_revision) {
        let group: Vec<(mvccpb::Event, usize)> = group
            .iter()
            .map(|e| {
                let pb = event_to_pb(e, prev_kv);
                let size = pb.encoded_len() + PER_EVENT_OVERHEAD;
                (pb, size)
            })
            .collect();
        let group_bytes: usize = group.iter().map(|(_, s)| s).sum();
        if !cur.is_empty() && cur_bytes + group_bytes > max_bytes {
            out.push((std::mem::take(&mut cur), false));
            cur_bytes = 0;
        }
        if fragment && group_bytes > max_bytes {
            let mut piece: Vec<mvccpb::Event> = Vec::new();
            let mut piece_bytes = 0usize;
            for (ev, size) in group {
                if !piece.is_empty() && piece_bytes + size > max_bytes {
                    out.push((std::mem::take(&mut piece), true));
                    piece_bytes = 0;
                }
                piece.push(ev);
                piece_bytes += size;
            }
            out.push((piece, false));
            continue;
        }
        cur.extend(group.into_iter().map(|(ev, _)| ev));
        cur_bytes += group_bytes;
    }
    if !cur.is_empty() {
        out.push((cur, false));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_types::KeyValue;

    fn ev(rev: i64, key: &str, value_len: usize) -> Arc<Event> {
        Arc::new(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev,
                value: vec![b'x'; value_len],
                ..KeyValue::default()
            },
            prev_kv: Some(KeyValue::default()),
        })
    }

    fn shape(parts: &[(Vec<mvccpb::Event>, bool)]) -> Vec<(Vec<i64>, bool)> {
        parts
            .iter()
            .map(|(evs, frag)| {
                let revs = evs
                    .iter()
                    .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                    .collect();
                (revs, *frag)
            })
            .collect()
    }

    #[test]
    fn cuts_only_between_revisions() {
        let events = vec![
            ev(2, "a", 40),
            ev(2, "b", 40),
            ev(3, "c", 40),
            ev(4, "d", 40),
        ];
        let parts = cut_responses(&events, false, false, 120);
        assert_eq!(
            shape(&parts),
            vec![(vec![2, 2], false), (vec![3, 4], false)]
        );
        assert!(parts[0].0.iter().all(|e| e.prev_kv.is_none()));
        assert!(cut_responses(&events, true, false, 1 << 20)[0].0[0]
            .prev_kv
            .is_some());
    }

    #[test]
    fn a_large_revision_goes_whole_unless_fragments_were_asked_for() {
        let events = vec![
            ev(2, "a", 10),
            ev(3, "b", 100),
            ev(3, "c", 100),
            ev(3, "d", 100),
            ev(4, "e", 10),
        ];
        assert_eq!(
            shape(&cut_responses(&events, false, false, 150)),
            vec![(vec![2], false), (vec![3, 3, 3], false), (vec![4], false)]
        );
        assert_eq!(
            shape(&cut_responses(&events, false, true, 150)),
            vec![
                (vec![2], false),
                (vec![3], true),
                (vec![3], true),
                (vec![3], false),
                (vec![4], false)
            ]
        );
    }
}
