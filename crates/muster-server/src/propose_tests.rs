//! Unit tests of the batch queue's bound and of discarding commands whose callers left.

use std::sync::Mutex as StdMutex;

use futures::FutureExt;
use muster_types::PutRequest;
use tokio::sync::Notify;

use super::*;

fn put(key: &str, value_bytes: usize) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![0; value_bytes],
        ..Default::default()
    })
}

fn key(cmd: &Command) -> String {
    match cmd {
        Command::Put(p) => String::from_utf8_lossy(&p.key).into_owned(),
        Command::Batch(cmds) => cmds.iter().map(key).collect::<Vec<_>>().join("+"),
        other => other.name().to_string(),
    }
}

/// A queue whose sends record their command and wait for `release` before answering.
fn gated_queue(bound: QueueBound) -> (BatchQueue<String>, Arc<StdMutex<Vec<String>>>, Arc<Notify>) {
    let sent = Arc::new(StdMutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let (s, r) = (sent.clone(), release.clone());
    let queue = BatchQueue::start(
        move |cmd: Command| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.lock().expect("lock").push(key(&cmd));
                r.notified().await;
                let resp = |_| CommandResponse {
                    revision: 1,
                    result: Ok(ResponseBody::Compact),
                };
                Ok(match cmd {
                    Command::Batch(cmds) => CommandResponse {
                        revision: 1,
                        result: Ok(ResponseBody::Batch(cmds.iter().map(resp).collect())),
                    },
                    one => resp(&one),
                })
            }
        },
        1,
        bound,
        QueueErrors {
            make: |reason| reason,
            full: "full".to_string(),
        },
        Arc::new(BatchStats::default()),
    );
    (queue, sent, release)
}

/// `submit` (or `submit_exempt`) as a future that owns its queue handle, to be polled once
/// (which queues the command) and then spawned.
fn owned(
    q: &BatchQueue<String>,
    cmd: Command,
    exempt: bool,
) -> impl Future<Output = Result<CommandResponse, String>> + Send + 'static {
    let q = q.clone();
    async move {
        if exempt {
            q.submit_exempt(cmd).await
        } else {
            q.submit(cmd).await
        }
    }
}

/// Queues `cmd` (one poll, which must leave it waiting) and runs the rest of its submit on a
/// task.
async fn queued(
    q: &BatchQueue<String>,
    cmd: Command,
    exempt: bool,
) -> tokio::task::JoinHandle<Result<CommandResponse, String>> {
    let mut f = Box::pin(owned(q, cmd, exempt));
    assert!(futures::poll!(&mut f).is_pending(), "queued, not answered");
    tokio::spawn(f)
}

/// Yields until `n` sends have started (the loop took them); no timers involved.
async fn until_sent(sent: &StdMutex<Vec<String>>, n: usize) {
    for _ in 0..10_000 {
        if sent.lock().expect("lock").len() >= n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("send {n} never started");
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_frees_room_on_answers() {
    let bound = QueueBound {
        commands: 2,
        bytes: 1 << 20,
    };
    let (q, sent, release) = gated_queue(bound);
    let a = queued(&q, put("a", 0), false).await;
    until_sent(&sent, 1).await;
    // "a" is being sent, "b" waits: the queue holds its bound.
    let b = queued(&q, put("b", 0), false).await;
    let c = q.submit(put("c", 0)).now_or_never();
    assert_eq!(c.map(|r| r.err()), Some(Some("full".to_string())));
    // Exempt commands are not refused.
    let e = queued(&q, put("e", 0), true).await;
    release.notify_one();
    assert!(a.await.expect("join").is_ok());
    until_sent(&sent, 2).await;
    release.notify_one();
    assert!(b.await.expect("join").is_ok());
    assert!(e.await.expect("join").is_ok());
    assert_eq!(*sent.lock().expect("lock"), vec!["a", "b+e"]);
    // Room is back.
    let d = tokio::spawn(async move { q.submit(put("d", 0)).await });
    until_sent(&sent, 3).await;
    release.notify_one();
    assert!(d.await.expect("join").is_ok());
}

#[tokio::test]
async fn bytes_bound_the_queue_but_never_refuse_a_lone_large_command() {
    let bound = QueueBound {
        commands: 100,
        bytes: 1000,
    };
    let (q, sent, release) = gated_queue(bound);
    // Alone, a large command is taken.
    let big = queued(&q, put("big", 5000), false).await;
    until_sent(&sent, 1).await;
    let small = q.submit(put("small", 10)).now_or_never();
    assert_eq!(small.map(|r| r.err()), Some(Some("full".to_string())));
    release.notify_one();
    assert!(big.await.expect("join").is_ok());
}

#[tokio::test]
async fn commands_whose_callers_left_are_not_sent() {
    let bound = QueueBound {
        commands: 10,
        bytes: 1 << 20,
    };
    let (q, sent, release) = gated_queue(bound);
    let a = queued(&q, put("a", 0), false).await;
    until_sent(&sent, 1).await;
    let mut gone = Box::pin(owned(&q, put("gone", 0), false));
    assert!(futures::poll!(&mut gone).is_pending());
    drop(gone);
    let kept = queued(&q, put("kept", 0), false).await;
    release.notify_one();
    assert!(a.await.expect("join").is_ok());
    until_sent(&sent, 2).await;
    release.notify_one();
    assert!(kept.await.expect("join").is_ok());
    assert_eq!(*sent.lock().expect("lock"), vec!["a", "kept"]);
    assert_eq!(q.stats.abandoned.load(Ordering::Relaxed), 1);
}
