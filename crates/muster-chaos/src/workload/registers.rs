//! Registers for the linearizability check: a few clients loop random operations on a few keys
//! `chaos/lin/{k}`: a put of a unique value, a linearizable get, or a compare-and-swap from the
//! value the client last saw (`txn(value == seen) put new else get`). Every operation is recorded
//! with its invocation and response times since a shared start; an error or a timeout is an
//! unknown outcome. Before the clients start each key is read once (the histories' initial
//! states); after they stop, once more. [`crate::linearizability`] checks the histories.

use std::time::Instant;

use etcd_client::{Compare, CompareOp, TxnOp, TxnOpResponse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use super::{backoff, client, Settings, LIN_PREFIX};
use crate::linearizability::{Input, KeyHistory, Nanos, Op, Output, Read};

/// Attempts at the initial and final read of a key.
const READ_ATTEMPTS: usize = 30;

/// Runs `clients` clients on `keys` keys until `stop` (or `settings.max_ops` operations each)
/// and returns one history per key.
///
/// # Errors
/// A client cannot be built, or a key's initial state cannot be read.
pub async fn run(
    settings: Settings,
    clients: usize,
    keys: usize,
    stop: CancellationToken,
    running: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<Vec<KeyHistory>> {
    if clients == 0 || keys == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = (0..keys).map(|k| format!("{LIN_PREFIX}{k}")).collect();
    // Values are unique across runs too: a key may keep a value from an earlier run.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut c = client(&settings.endpoints, settings.op_timeout).await?;
    let start = Instant::now();
    let mut histories = Vec::with_capacity(keys);
    for key in &names {
        let Some(Output::Get(initial)) = read(&mut c, key, start, clients).await.map(|o| o.output)
        else {
            anyhow::bail!("could not read the initial state of {key}");
        };
        histories.push(KeyHistory {
            key: key.clone(),
            initial,
            ops: Vec::new(),
        });
    }
    let tasks: Vec<_> = (0..clients)
        .map(|id| {
            let (settings, names, stop) = (settings.clone(), names.clone(), stop.clone());
            tokio::spawn(client_loop(settings, id, names, start, run_id, stop))
        })
        .collect();
    // The initial reads are done and the clients loop: a caller may start its faults now.
    if let Some(tx) = running {
        let _ = tx.send(());
    }
    for t in tasks {
        for (k, op) in t.await?? {
            histories[k].ops.push(op);
        }
    }
    for h in &mut histories {
        if let Some(last) = read(&mut c, &h.key, start, clients).await {
            h.ops.push(last);
        }
    }
    Ok(histories)
}

/// A linearizable read of `key`, retried until it answers; `None` if it never did.
async fn read(
    c: &mut etcd_client::Client,
    key: &str,
    start: Instant,
    client_id: usize,
) -> Option<Op> {
    for _ in 0..READ_ATTEMPTS {
        let op = execute(c, key, Input::Get, client_id, start).await;
        if op.output != Output::Unknown {
            return Some(op);
        }
        backoff().await;
    }
    None
}

fn since(start: Instant) -> Nanos {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
}

async fn client_loop(
    settings: Settings,
    id: usize,
    keys: Vec<String>,
    start: Instant,
    run_id: u64,
    stop: CancellationToken,
) -> anyhow::Result<Vec<(usize, Op)>> {
    let mut c = client(&settings.endpoints, settings.op_timeout).await?;
    let mut rng = StdRng::seed_from_u64(run_id ^ ((id as u64) << 32));
    // Per key: the value this client last saw (`None`: it does not know).
    let mut seen: Vec<Option<Option<String>>> = vec![None; keys.len()];
    let mut out = Vec::new();
    for seq in 0..settings.max_ops {
        if stop.is_cancelled() {
            break;
        }
        let k = rng.gen_range(0..keys.len());
        let value = format!("{run_id}-c{id}-{seq}");
        let input = match (rng.gen_range(0..3), &seen[k]) {
            (0, _) => Input::Put { value },
            (1, Some(expect)) => Input::Cas {
                expect: expect.clone(),
                value,
            },
            _ => Input::Get,
        };
        let op = execute(&mut c, &keys[k], input, id, start).await;
        seen[k] = match (&op.input, &op.output) {
            (Input::Get, Output::Unknown) => seen[k].take(),
            (_, Output::Unknown) => None,
            (_, Output::Get(r)) | (_, Output::Cas { read: Some(r), .. }) => Some(r.value.clone()),
            (Input::Put { value } | Input::Cas { value, .. }, _) => Some(Some(value.clone())),
            (Input::Get, _) => None,
        };
        let failed = op.output == Output::Unknown;
        out.push((k, op));
        if failed {
            backoff().await;
        }
    }
    Ok(out)
}

/// Sends `input` and records it; an error (a timeout included) is an unknown outcome.
async fn execute(
    c: &mut etcd_client::Client,
    key: &str,
    input: Input,
    client: usize,
    start: Instant,
) -> Op {
    let call = since(start);
    let output = match &input {
        Input::Put { value } => c.put(key, value.as_str(), None).await.map(|r| Output::Put {
            revision: r.header().map_or(0, |h| h.revision()),
        }),
        Input::Get => c
            .get(key, None)
            .await
            .map(|r| Output::Get(Read::of(r.kvs().first()))),
        Input::Cas { expect, value } => {
            let cmp = match expect {
                Some(e) => Compare::value(key, CompareOp::Equal, e.as_str()),
                None => Compare::create_revision(key, CompareOp::Equal, 0),
            };
            let txn = etcd_client::Txn::new()
                .when([cmp])
                .and_then([TxnOp::put(key, value.as_str(), None)])
                .or_else([TxnOp::get(key, None)]);
            c.txn(txn).await.map(|t| {
                let read = t.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => Some(Read::of(g.kvs().first())),
                    _ => None,
                });
                Output::Cas {
                    succeeded: t.succeeded(),
                    revision: t.header().map_or(0, |h| h.revision()),
                    read: read.filter(|_| !t.succeeded()),
                }
            })
        }
    };
    Op {
        client,
        call,
        ret: since(start),
        input,
        output: output.unwrap_or(Output::Unknown),
    }
}
