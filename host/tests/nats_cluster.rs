//! Proves the 3-node nats-server cluster harness (`support/nats_cluster.rs`): an R3 file stream
//! keeps accepting publishes (and loses none) while each node is restarted in turn and the
//! stream leader's node is SIGKILLed and started again.
//!
//! Needs `nats-server` on PATH: fails when `CI` is set and it is missing, skipped with a notice
//! otherwise. Run with `--nocapture` to see the timings.

#[path = "support/nats_cluster.rs"]
mod nats_cluster;

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use nats_cluster::NatsCluster;
use tokio::task::block_in_place as block;

const STREAM: &str = "HARNESS";
const SUBJECT: &str = "harness.msg";
/// Bound on an election (meta or stream) after a fault; the measured worst case is ~6.5 s.
const ELECTION: Duration = Duration::from_secs(20);

/// Run `attempt` until it succeeds (short pause between attempts); panic after `timeout`.
/// Prints each distinct error once.
async fn retry<T, E: Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                let e = e.to_string();
                if e != last_error {
                    eprintln!("  {what}: retrying after: {e}");
                    last_error = e;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: still failing after {timeout:?}: {e}"),
        }
    }
}

/// Publish `id` (also its `Nats-Msg-Id`, so a retry after a lost ack is deduplicated) until
/// acknowledged; the stream sequence and how long it took.
async fn publish(js: &jetstream::Context, id: &str) -> (u64, Duration) {
    let started = Instant::now();
    let ack = retry(&format!("publish {id}"), ELECTION, || async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        js.publish_with_headers(SUBJECT, headers, id.to_string().into())
            .await?
            .await
    })
    .await;
    (ack.sequence, started.elapsed())
}

/// Wait until the stream has a leader and both other replicas are current; its info.
async fn replicas_current(js: &jetstream::Context) -> stream::Info {
    retry("stream replicas current", ELECTION, || async {
        let mut stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?.clone();
        let cluster = info.cluster.as_ref().ok_or("no cluster info")?;
        let ready = cluster.leader.is_some()
            && cluster.replicas.len() == 2
            && cluster.replicas.iter().all(|r| r.current && !r.offline);
        if ready {
            Ok(info)
        } else {
            Err(format!(
                "leader {:?}, replicas {:?}",
                cluster.leader,
                cluster
                    .replicas
                    .iter()
                    .map(|r| (&r.name, r.current, r.offline))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await
}

/// The node index of a server name `n1`..`n3`.
fn node_index(name: &str) -> usize {
    name.trim_start_matches('n')
        .parse::<usize>()
        .unwrap_or_else(|_| panic!("unexpected server name {name}"))
        - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_survives_restarts_and_a_kill() {
    let test_started = Instant::now();
    // The harness blocks (polls with short sleeps): keep it off the runtime's other worker.
    let started = Instant::now();
    let Some(mut cluster) = block(|| NatsCluster::start_or_skip("nats_cluster")) else {
        return;
    };
    eprintln!(
        "nats-server {}: meta leader {:?} after start",
        cluster.version(),
        started.elapsed()
    );

    // async-nats takes a list of URLs, not a comma-separated string.
    let urls: Vec<String> = cluster.urls().split(',').map(str::to_string).collect();
    let client = async_nats::ConnectOptions::new()
        .connect(urls)
        .await
        .expect("connect to the cluster");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));

    let started = Instant::now();
    let config = stream::Config {
        name: STREAM.to_string(),
        subjects: vec![SUBJECT.to_string()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    retry("create R3 stream", ELECTION, || {
        js.get_or_create_stream(config.clone())
    })
    .await;
    eprintln!("R3 stream created in {:?}", started.elapsed());

    let mut published = vec!["m0".to_string()];
    let (seq, _) = publish(&js, "m0").await;
    assert_eq!(seq, 1);
    let stream = js.get_stream(STREAM).await.expect("get stream");
    let message = stream
        .get_raw_message(1)
        .await
        .expect("read back message 1");
    assert_eq!(&message.payload[..], b"m0");
    replicas_current(&js).await;

    for i in 0..3 {
        let started = Instant::now();
        block(|| cluster.restart(i));
        let restarted = started.elapsed();
        block(|| cluster.wait_meta_leader(ELECTION));
        let meta = started.elapsed();
        let id = format!("m{}", published.len());
        let (seq, took) = publish(&js, &id).await;
        assert_eq!(seq as usize, published.len() + 1, "{id} got sequence {seq}");
        published.push(id);
        replicas_current(&js).await;
        eprintln!(
            "restart n{}: stop+start {restarted:?}, meta leader agreed at {meta:?}, publish ok \
             {took:?} later, replicas current at {:?}",
            i + 1,
            started.elapsed()
        );
    }

    // SIGKILL the stream leader's node: the stream must elect a new leader among the other two.
    let info = replicas_current(&js).await;
    let leader = info.cluster.and_then(|c| c.leader).expect("stream leader");
    let victim = node_index(&leader);
    let started = Instant::now();
    block(|| cluster.kill(victim));
    let id = format!("m{}", published.len());
    let (seq, took) = publish(&js, &id).await;
    assert_eq!(seq as usize, published.len() + 1, "{id} got sequence {seq}");
    published.push(id);
    eprintln!("kill {leader} (stream leader): publish ok after {took:?}");
    let started_again = Instant::now();
    block(|| cluster.start(victim));
    block(|| cluster.wait_meta_leader(ELECTION));
    let info = replicas_current(&js).await;
    eprintln!(
        "start {leader} again: replicas current after {:?} (fault to recovery {:?})",
        started_again.elapsed(),
        started.elapsed()
    );

    // Three replicas, every message exactly once, in order.
    let cluster_info = info.cluster.expect("cluster info");
    assert!(cluster_info.leader.is_some(), "{cluster_info:?}");
    assert_eq!(cluster_info.replicas.len(), 2, "{cluster_info:?}");
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.state.messages as usize, published.len());
    for (i, id) in published.iter().enumerate() {
        let message = stream
            .get_raw_message(i as u64 + 1)
            .await
            .unwrap_or_else(|e| panic!("read back message {}: {e}", i + 1));
        assert_eq!(&message.payload[..], id.as_bytes());
    }
    eprintln!("total {:?}", test_started.elapsed());
}
