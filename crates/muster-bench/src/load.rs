//! Closed-loop load: W workers, each with one request in flight at a time, sharing a total
//! count and a deadline. Every benchmark that times individual requests runs on this loop.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tonic::transport::Channel;

use crate::common::{progress, share, worker_channels};
use crate::stats::Samples;

/// `concurrency` workers, each made by `make` from its own connection; the connections are
/// spread round-robin over the endpoints.
pub async fn workers<O>(
    endpoints: &[String],
    concurrency: usize,
    make: impl FnMut(Channel) -> O,
) -> anyhow::Result<Vec<O>> {
    let chans = worker_channels(endpoints, concurrency.max(1)).await?;
    Ok(chans.into_iter().map(make).collect())
}

/// One worker's request: its own client (connection) and whatever state it keeps.
pub trait Op: Send + 'static {
    /// Sends request number `seq` (unique across the workers of a run) and waits for its
    /// answer; an error ends the run.
    fn call(&mut self, seq: usize) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs `count` requests over the workers `ops` (worker `w` sends `seq = w, w + W, …`) until
/// done or `deadline`; a request still unanswered at the deadline is dropped, uncounted.
/// Returns the latency samples (wall time from the first send) and the workers, for their state.
pub async fn closed_loop<O: Op>(
    ops: Vec<O>,
    count: usize,
    deadline: Instant,
    what: &'static str,
) -> anyhow::Result<(Samples, Vec<O>)> {
    let n = ops.len();
    anyhow::ensure!(n > 0, "no workers");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for (w, mut op) in ops.into_iter().enumerate() {
        let k = share(count, n, w);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(k);
            for i in 0..k {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let t = Instant::now();
                match tokio::time::timeout(left, op.call(w + i * n)).await {
                    Err(_) => break,
                    Ok(r) => r?,
                }
                lat.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((lat, op))
        }));
    }
    let _progress = progress(what, done, count);
    let mut lat = Vec::with_capacity(count);
    let mut ops = Vec::with_capacity(n);
    for t in tasks {
        let (l, op) = t.await??;
        lat.extend(l);
        ops.push(op);
    }
    Ok((Samples::new(lat, started.elapsed()), ops))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Record(Vec<usize>);

    impl Op for Record {
        async fn call(&mut self, seq: usize) -> anyhow::Result<()> {
            self.0.push(seq);
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_sequence_number_once() {
        let ops = (0..3).map(|_| Record(Vec::new())).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (s, ops) = closed_loop(ops, 10, deadline, "ops").await.expect("run");
        assert_eq!(s.len(), 10);
        let mut seqs: Vec<usize> = ops.into_iter().flat_map(|o| o.0).collect();
        seqs.sort();
        assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    }

    struct Hang;

    impl Op for Hang {
        async fn call(&mut self, _: usize) -> anyhow::Result<()> {
            std::future::pending::<()>().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_hung_request_ends_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(100);
        let (s, _) = closed_loop(vec![Hang], 3, deadline, "ops")
            .await
            .expect("run");
        assert_eq!(s.len(), 0);
    }
}
