//! `watch-latency`: event delivery latency from put acknowledgement to receipt at each of W
//! watchers, plus (optionally, given the server pids) the server memory per watcher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::watch_client::WatchClient;
use muster_proto::etcdserverpb::watch_request::RequestUnion;
use muster_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use muster_types::prefix_end;
use serde_json::{json, Value};

use crate::common::{connect, progress, run_id, vm_rss_kib, worker_channels};
use crate::stats::Samples;

/// `watch-latency`: `watchers` prefix watchers, `per_stream` to a Watch stream (each stream
/// its own connection, round-robin over the endpoints); one writer on the first endpoint puts
/// `events` keys. `pids`: server processes whose VmRSS is read before and after creating the
/// watchers (give every node's pid to cover watchers on all endpoints).
pub async fn bench_watch_latency(
    endpoints: &[String],
    watchers: usize,
    events: usize,
    per_stream: usize,
    value_size: usize,
    pids: &[u32],
    deadline: Instant,
) -> anyhow::Result<Value> {
    let watchers = watchers.max(1);
    let per_stream = per_stream.max(1);
    let prefix = format!("watchbench/{}/", run_id()).into_bytes();
    let end = prefix_end(&prefix);
    let started = Instant::now();

    let rss_before: Vec<u64> = pids
        .iter()
        .map(|&p| vm_rss_kib(p))
        .collect::<Result<_, _>>()?;

    // Watch streams: `per_stream` watchers each, streams round-robin over the endpoints.
    let created = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let nstreams = watchers.div_ceil(per_stream);
    let mut tasks = Vec::with_capacity(nstreams);
    let mut ready = Vec::with_capacity(nstreams);
    eprintln!("creating {watchers} watchers on {nstreams} stream(s)…");
    let p = progress("watchers created", created.clone(), watchers);
    let stream_chans = worker_channels(endpoints, nstreams).await?;
    for (s, ch) in stream_chans.into_iter().enumerate() {
        let k = per_stream.min(watchers - s * per_stream);
        let mut client = WatchClient::new(ch);
        let (tx, rx) = futures::channel::mpsc::unbounded::<WatchRequest>();
        for _ in 0..k {
            tx.unbounded_send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: prefix.clone(),
                    range_end: end.clone(),
                    ..Default::default()
                })),
            })
            .context("watch request channel")?;
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        ready.push(ready_rx);
        let created = created.clone();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let _tx = tx; // keep the request stream open
            let mut stream = client
                .watch(rx)
                .await
                .context("opening Watch stream")?
                .into_inner();
            let mut ready_tx = Some(ready_tx);
            let mut n_created = 0usize;
            let want = k * events;
            let mut recv: Vec<(i64, Instant)> = Vec::with_capacity(want);
            if k == 0 {
                return anyhow::Ok(recv);
            }
            loop {
                if recv.len() >= want && n_created >= k {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let msg = match tokio::time::timeout(left, stream.next()).await {
                    Err(_) => break,
                    Ok(None) => anyhow::bail!("watch stream ended"),
                    Ok(Some(m)) => m.context("watch stream error")?,
                };
                let now = Instant::now();
                if msg.canceled {
                    anyhow::bail!("watch {} cancelled: {}", msg.watch_id, msg.cancel_reason);
                }
                if msg.created {
                    n_created += 1;
                    created.fetch_add(1, Ordering::Relaxed);
                    if n_created == k {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                }
                for ev in &msg.events {
                    let rev = ev.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    recv.push((rev, now));
                }
                if !msg.events.is_empty() {
                    received.fetch_add(msg.events.len(), Ordering::Relaxed);
                }
            }
            anyhow::Ok(recv)
        }));
    }
    for r in ready {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, r)
            .await
            .context("timed out creating watchers")?
            .context("a watch stream failed while creating")?;
    }
    drop(p);
    let create_time = started.elapsed();
    eprintln!(
        "{watchers} watchers created in {:.2}s",
        create_time.as_secs_f64()
    );

    let mut mem = Value::Null;
    if !pids.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after: Vec<u64> = pids
            .iter()
            .map(|&p| vm_rss_kib(p))
            .collect::<Result<_, _>>()?;
        let mut total: i64 = 0;
        let mut per_pid = Vec::new();
        for ((pid, b), a) in pids.iter().zip(&rss_before).zip(&after) {
            let d = *a as i64 - *b as i64;
            total += d;
            per_pid
                .push(json!({"pid": pid, "rss_before_kib": b, "rss_after_kib": a, "delta_kib": d}));
        }
        let per_watcher = total as f64 * 1024.0 / watchers as f64;
        mem = json!({"per_pid": per_pid, "delta_kib": total, "bytes_per_watcher": per_watcher});
    }

    // One writer: sequential puts, recording the acknowledgement instant per revision.
    let mut kv = KvClient::new(connect(&endpoints[0]).await?);
    let value = vec![b'v'; value_size];
    let total = watchers * events;
    let p = progress("events received", received.clone(), total);
    let mut acks: HashMap<i64, Instant> = HashMap::with_capacity(events);
    let mut sent: HashMap<i64, Instant> = HashMap::with_capacity(events);
    let mut put_lat = Vec::with_capacity(events);
    let write_start = Instant::now();
    for i in 0..events {
        if Instant::now() >= deadline {
            break;
        }
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{i:08}").as_bytes());
        let t = Instant::now();
        let r = kv
            .put(PutRequest {
                key,
                value: value.clone(),
                ..Default::default()
            })
            .await
            .context("Put")?
            .into_inner();
        let ack = Instant::now();
        put_lat.push(ack - t);
        let rev = r.header.map_or(0, |h| h.revision);
        acks.insert(rev, ack);
        sent.insert(rev, t);
    }
    let write_wall = write_start.elapsed();
    let mut lat = Vec::with_capacity(total);
    let mut from_send = Vec::with_capacity(total);
    let mut early = 0usize;
    let mut unknown = 0usize;
    let mut got = 0usize;
    for t in tasks {
        for (rev, at) in t.await?? {
            got += 1;
            match acks.get(&rev) {
                None => unknown += 1,
                Some(&ack) => {
                    if at < ack {
                        early += 1;
                    }
                    lat.push(at.saturating_duration_since(ack));
                    if let Some(&t) = sent.get(&rev) {
                        from_send.push(at.saturating_duration_since(t));
                    }
                }
            }
        }
    }
    drop(p);
    let missing = (watchers * acks.len()).saturating_sub(got);
    let s = Samples::new(lat, Duration::ZERO);
    let puts = Samples::new(put_lat, write_wall);
    let fs = Samples::new(from_send, Duration::ZERO);
    Ok(json!({
        "what": "watch-latency", "watchers": watchers, "streams": nstreams,
        "events": acks.len(), "pairs": s.len(), "missing": missing,
        "received_before_ack": early, "unknown_revision": unknown,
        "p50_ms": s.ms(50.0), "p90_ms": s.ms(90.0), "p99_ms": s.ms(99.0), "max_ms": s.ms(100.0),
        "send_to_receipt_p50_ms": fs.ms(50.0), "send_to_receipt_p99_ms": fs.ms(99.0),
        "writer_puts": puts.json(),
        "create_secs": create_time.as_secs_f64(), "memory": mem,
    }))
}
