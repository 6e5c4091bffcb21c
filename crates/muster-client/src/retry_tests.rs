//! The retry loop under `tokio::time::pause()`: scripted attempt outcomes, no network
//! (channels are lazy and never used), virtual time measured exactly.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::options::ClientOptions;

fn opts() -> ClientOptions {
    ClientOptions {
        call_timeout: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(1),
        seed: Some(7),
        discover_leader: false,
        ..ClientOptions::default()
    }
}

async fn client(eps: &[&str], o: ClientOptions) -> Client {
    Client::connect(eps.iter().copied(), o)
        .await
        .expect("valid endpoints")
}

/// What each attempt saw: endpoint, request id, virtual time since the test started.
type Log = Arc<Mutex<Vec<(String, Option<String>, Duration)>>>;

/// One scripted attempt: `None` hangs forever (a black-holed node), `Some(r)` answers at once.
type Outcome = Option<Result<u32, ClientError>>;

#[derive(Clone)]
struct Script {
    outcomes: Arc<Mutex<VecDeque<Outcome>>>,
    log: Log,
    t0: Instant,
}

impl Script {
    fn new(outcomes: Vec<Outcome>) -> Self {
        Script {
            outcomes: Arc::new(Mutex::new(outcomes.into())),
            log: Log::default(),
            t0: Instant::now(),
        }
    }

    async fn attempt(&self, a: Attempt) -> Result<u32, ClientError> {
        let next = self.outcomes.lock().expect("lock").pop_front();
        self.log.lock().expect("lock").push((
            a.endpoint.authority.clone(),
            a.request_id.as_deref().map(str::to_string),
            self.t0.elapsed(),
        ));
        match next {
            Some(Some(r)) => r,
            Some(None) => std::future::pending().await,
            None => Err(ClientError::NoLeader),
        }
    }

    fn attempts(&self) -> Vec<(String, Option<String>, Duration)> {
        self.log.lock().expect("lock").clone()
    }
}

async fn run(c: &Client, spec: CallSpec, s: &Script) -> Result<u32, ClientError> {
    c.call(spec, |a| {
        let s = s.clone();
        async move { s.attempt(a).await }
    })
    .await
}

fn lost() -> ClientError {
    ClientError::ConnectionLost {
        endpoint: "x".into(),
        reason: "reset".into(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_leader_hint_is_followed_at_once() {
    let c = client(&["a:1", "b:2", "c:3"], opts()).await;
    let s = Script::new(vec![
        Some(Err(ClientError::NotLeader {
            leader: Some("c:3".into()),
        })),
        Some(Ok(1)),
    ]);
    let r = run(&c, CallSpec::write("put", Safety::Unsafe), &s).await;
    assert_eq!(r, Ok(1));
    let log = s.attempts();
    assert_eq!(log[1].0, "c:3", "the retry goes to the hinted leader");
    assert_eq!(log[1].2, Duration::ZERO, "without backoff");
    assert_eq!(c.leader_hint().as_deref(), Some("c:3"));
    assert!(log[0].1.is_some() && log[0].1 == log[1].1, "one request id");
}

#[tokio::test(start_paused = true)]
async fn unknown_outcomes_are_retried_only_when_safe() {
    let c = client(&["a:1", "b:2"], opts()).await;
    // A compare-and-swap is not repeated: the caller learns the outcome is unknown.
    let s = Script::new(vec![Some(Err(lost())), Some(Ok(1))]);
    let e = run(&c, CallSpec::write("txn", Safety::Unsafe), &s).await;
    assert!(e.as_ref().is_err_and(ClientError::outcome_unknown), "{e:?}");
    assert_eq!(s.attempts().len(), 1);

    // A de-duplicated write is repeated with the same request id: exactly once.
    let s = Script::new(vec![
        Some(Err(lost())),
        Some(Err(ClientError::OutcomeUnknown {
            message: "commit status unknown".into(),
        })),
        Some(Ok(2)),
    ]);
    assert_eq!(
        run(&c, CallSpec::write("lease_grant", Safety::Deduped), &s).await,
        Ok(2)
    );
    let ids: Vec<_> = s.attempts().into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0].is_some() && ids.iter().all(|i| *i == ids[0]));
    assert_eq!(c.stats().unknown_outcome_retries(), 2);

    // The next call gets a new id.
    let s2 = Script::new(vec![Some(Ok(3))]);
    run(&c, CallSpec::write("lease_grant", Safety::Deduped), &s2)
        .await
        .expect("ok");
    assert_ne!(s2.attempts()[0].1, ids[0]);

    // Overwrites follow the option.
    let strict = client(
        &["a:1"],
        ClientOptions {
            retry_overwrites: false,
            ..opts()
        },
    )
    .await;
    let s = Script::new(vec![Some(Err(lost())), Some(Ok(1))]);
    assert!(run(&strict, CallSpec::write("put", Safety::Overwrite), &s)
        .await
        .is_err());
    let s = Script::new(vec![Some(Err(lost())), Some(Ok(1))]);
    assert_eq!(
        run(&c, CallSpec::write("put", Safety::Overwrite), &s).await,
        Ok(1)
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let c = client(&["a:1"], opts()).await;
    let s = Script::new(vec![Some(Err(ClientError::InvalidArgument {
        message: "bad".into(),
    }))]);
    let r = run(&c, CallSpec::read("range"), &s).await;
    assert!(matches!(r, Err(ClientError::InvalidArgument { .. })));
    assert_eq!(s.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn backoff_is_full_jitter_under_the_cap_and_the_deadline_holds() {
    let o = ClientOptions {
        call_timeout: Duration::from_secs(6),
        ..opts()
    };
    let c = client(&["a:1"], o.clone()).await;
    let s = Script::new(vec![]); // NoLeader forever
    let t0 = Instant::now();
    let r = run(&c, CallSpec::read("range"), &s).await;
    assert_eq!(
        t0.elapsed(),
        o.call_timeout,
        "gives up exactly at the deadline"
    );
    match r {
        Err(ClientError::DeadlineExceeded {
            attempts,
            maybe_applied,
            last,
        }) => {
            assert!(!maybe_applied, "NoLeader proves nothing was applied");
            assert_eq!(*last, ClientError::NoLeader);
            assert_eq!(attempts as usize, s.attempts().len());
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    let times: Vec<Duration> = s.attempts().into_iter().map(|(_, _, t)| t).collect();
    assert!(times.len() >= 4, "several attempts in 6 s: {times:?}");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, g) in gaps.iter().enumerate() {
        let cap = o.retry.cap(i as u32 + 1);
        assert!(*g <= cap, "gap {i} = {g:?} above its cap {cap:?}");
    }
    // Full jitter: the sleeps are not all at their caps.
    assert!(gaps
        .iter()
        .enumerate()
        .any(|(i, g)| *g < o.retry.cap(i as u32 + 1) / 2));
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_is_cut_and_the_call_moves_on() {
    let o = opts();
    let c = client(&["a:1", "b:2"], o.clone()).await;
    let s = Script::new(vec![None, Some(Ok(9))]);
    let t0 = Instant::now();
    assert_eq!(run(&c, CallSpec::read("range"), &s).await, Ok(9));
    let log = s.attempts();
    assert_eq!((log[0].0.as_str(), log[1].0.as_str()), ("a:1", "b:2"));
    assert!(t0.elapsed() >= o.attempt_timeout);
    assert!(t0.elapsed() <= o.attempt_timeout + o.retry.cap(1));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_keeps_a_black_holed_leader_from_eating_every_deadline() {
    let o = opts();
    let c = client(&["a:1", "b:2"], o.clone()).await;
    // A stale hint keeps naming the dead node `a` as leader.
    let write = |script: Script| {
        let c = c.clone();
        async move {
            c.endpoints().set_leader(Some("a:1"));
            let t0 = Instant::now();
            let r = run(&c, CallSpec::write("put", Safety::Deduped), &script).await;
            (r, t0.elapsed(), script.attempts())
        }
    };
    for _ in 0..o.breaker.failure_threshold {
        let (r, took, log) = write(Script::new(vec![None, Some(Ok(1))])).await;
        assert_eq!(r, Ok(1));
        assert_eq!(log[0].0, "a:1");
        assert!(
            took >= o.attempt_timeout,
            "a closed breaker lets the call hang"
        );
    }
    // Open: the dead node is skipped at once.
    let (r, took, log) = write(Script::new(vec![Some(Ok(2))])).await;
    assert_eq!(r, Ok(2));
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].0, "b:2");
    assert_eq!(took, Duration::ZERO);
    // After the open period one probe goes to `a`; it fails and the breaker opens longer.
    tokio::time::advance(o.breaker.open_for).await;
    let (r, _, log) = write(Script::new(vec![None, Some(Ok(3))])).await;
    assert_eq!(r, Ok(3));
    assert_eq!(log[0].0, "a:1", "half-open probe");
    let (_, took, log) = write(Script::new(vec![Some(Ok(4))])).await;
    assert_eq!((log[0].0.as_str(), took), ("b:2", Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn with_every_breaker_open_calls_fail_fast_and_recover() {
    let o = opts();
    let c = client(&["a:1"], o.clone()).await;
    let refused = || {
        Some(Err(ClientError::Unreachable {
            endpoint: "a:1".into(),
            reason: "refused".into(),
        }))
    };
    // Two refusals open the only breaker; the loop then backs off until it half-opens.
    let s = Script::new(vec![refused(), refused(), Some(Ok(5))]);
    let t0 = Instant::now();
    assert_eq!(run(&c, CallSpec::read("range"), &s).await, Ok(5));
    let log = s.attempts();
    assert_eq!(log.len(), 3, "no attempt while the breaker was open");
    assert!(log[2].2 - log[1].2 >= o.breaker.open_for);
    assert!(t0.elapsed() < o.call_timeout);
}

/// A real refused connection (nothing listens on the port) is classified as "never sent".
#[tokio::test]
async fn a_refused_connection_is_unreachable_not_unknown() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let o = ClientOptions {
        call_timeout: Duration::from_millis(300),
        ..opts()
    };
    let c = client(&[&format!("127.0.0.1:{port}")], o).await;
    let err = c.get("k").await.expect_err("nothing listens");
    let ClientError::DeadlineExceeded {
        last,
        maybe_applied,
        ..
    } = &err
    else {
        panic!("expected DeadlineExceeded, got {err:?}");
    };
    assert!(
        matches!(**last, ClientError::Unreachable { .. }),
        "the cause, not 'every breaker open': {last:?}"
    );
    assert!(!maybe_applied, "{err:?}");
    assert!(c.stats().retries() > 0 && c.stats().unknown_outcome_retries() == 0);
}
