//! Cluster mode end to end: a 3-node nats-server cluster on loopback (streams and buckets R3) and
//! three `aggregate-host serve` processes (the real binary) in cluster mode.
//!
//! One set of servers and hosts serves every scenario of this binary; the scenarios run one
//! after the other inside one test, each named in its failure messages:
//! 1. a deploy, a rollback and a limits change through one host reach every host within 1 s of
//!    activation while clients send commands to all three, with no failed command and each
//!    answer's component hash matching the behaviour seen;
//! 2. a host started after the deploy, a host restarted with an empty data dir, and a host whose
//!    local blob was corrupted serve the active version without any deploy call;
//! 3. concurrent deploys of different components for one type through two hosts end with every
//!    host on the same component and one line of versions;
//! 4. a host that does not acknowledge a deploy (paused) is named in the answer, the deploy is
//!    activated without it after `deploy_ack_timeout_ms`, and the host catches up;
//! 5. ten NATS node restarts (each node in turn, then all three) with the hosts running: a deploy
//!    afterwards reaches every host, and the manifest bucket's consumers stay bounded.

#[path = "../e2e/support.rs"]
mod support;

#[path = "../../host/tests/support/nats_cluster.rs"]
mod nats_cluster;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::client::Client;
use serde_json::{json, Value};

use nats_cluster::NatsCluster;
use support::{new_id, wasm, HostProcess};

const TYPE: &str = "bank-account";
/// The most a change may take to reach every host after it was activated.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

struct Cluster {
    nats: NatsCluster,
    dir: tempfile::TempDir,
    hosts: Vec<(String, HostProcess)>,
}

impl Cluster {
    fn vars(&self, id: &str) -> Vec<(String, String)> {
        let mut vars = support::cluster_host_vars(&self.data_dir(id), self.nats.urls(), id);
        vars.extend(
            [
                ("AGGREGATE_HEARTBEAT_INTERVAL_MS", "500"),
                ("AGGREGATE_HOST_TTL_MS", "4000"),
                ("AGGREGATE_RECONCILE_INTERVAL_MS", "1000"),
                ("AGGREGATE_DEPLOY_ACK_TIMEOUT_MS", "20000"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        vars
    }

    fn data_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    fn start_host(&self, id: &str) -> HostProcess {
        self.start_host_with(id, &[])
    }

    fn start_host_with(&self, id: &str, extra: &[(&str, &str)]) -> HostProcess {
        let mut vars = self.vars(id);
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let host = HostProcess::start(&self.data_dir(id), &vars);
        host.wait_ready(Duration::from_secs(60));
        host
    }

    fn host(&self, id: &str) -> &HostProcess {
        &self
            .hosts
            .iter()
            .find(|(h, _)| h == id)
            .unwrap_or_else(|| panic!("no host {id}"))
            .1
    }

    fn clients(&self) -> Vec<(String, Client)> {
        self.hosts
            .iter()
            .map(|(id, h)| (id.clone(), h.client()))
            .collect()
    }

    fn stop_host(&mut self, id: &str) -> HostProcess {
        let i = self.hosts.iter().position(|(h, _)| h == id).unwrap();
        let (_, mut host) = self.hosts.remove(i);
        let status = host.stop();
        assert!(status.success(), "host {id} exited with {status}");
        host
    }
}

/// The active component of `ty` on a host, from its admin API.
async fn active(client: &Client, ty: &str) -> Option<(String, Value)> {
    let list = client
        .admin(reqwest::Method::GET, "/admin/aggregates", None)
        .await
        .ok()?;
    list["aggregates"]
        .as_array()?
        .iter()
        .find(|a| a["aggregate_type"] == ty)
        .map(|a| (a["component"].as_str().unwrap().to_string(), a.clone()))
}

/// Poll every host until `ok` holds for its entry of `ty`; returns how long each took.
async fn wait_all(
    clients: &[(String, Client)],
    ty: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&Option<(String, Value)>) -> bool,
) -> Vec<(String, Duration)> {
    let started = Instant::now();
    let mut took = Vec::new();
    for (id, client) in clients {
        loop {
            let entry = active(client, ty).await;
            if ok(&entry) {
                took.push((id.clone(), started.elapsed()));
                break;
            }
            assert!(
                started.elapsed() < timeout,
                "{what}: host {id} did not get there within {timeout:?}; it has {entry:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    took
}

/// One answered deposit.
struct Answer {
    host: String,
    sent: Instant,
    component: String,
    schema_version: u64,
    has_currency: bool,
}

/// Deposits sent to every host by `workers` clients per host until `stop` is set.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    async fn start(clients: &[(String, Client)], per_host: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (host, client) in clients {
            for _ in 0..per_host {
                let id = new_id();
                client
                    .send(TYPE, &id, "open", &json!({"owner": "load"}))
                    .await
                    .unwrap_or_else(|e| panic!("open on {host}: {e}"));
                let (host, client, stop) = (host.clone(), client.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::Relaxed) && answers.len() < 20_000 {
                        let sent = Instant::now();
                        let body = client
                            .send(TYPE, &id, "deposit", &json!({"amount": 1}))
                            .await
                            .unwrap_or_else(|e| {
                                panic!("deposit {} on host {host} failed: {e}", answers.len())
                            });
                        let event = &body["events"][0];
                        answers.push(Answer {
                            host: host.clone(),
                            sent,
                            component: body["component"].as_str().unwrap().to_string(),
                            schema_version: event["schema_version"].as_u64().unwrap(),
                            has_currency: event["payload"]["currency"].is_string(),
                        });
                    }
                    answers
                }));
            }
        }
        Self { stop, tasks }
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a load task panicked"));
        }
        all
    }
}

/// For each host: how long after `activated` it still answered with another component than
/// `hash` (zero when it never did). Asserts the answer's hash matches the event written.
fn lag_per_host(
    answers: &[Answer],
    activated: Instant,
    hash: &str,
    v2: &str,
) -> Vec<(String, Duration)> {
    for a in answers {
        let is_v2 = a.component == v2;
        assert_eq!(
            (a.schema_version == 2, a.has_currency),
            (is_v2, is_v2),
            "host {} answered component {} but the event has schema {} (currency: {})",
            a.host,
            a.component,
            a.schema_version,
            a.has_currency
        );
    }
    let mut hosts: Vec<String> = answers.iter().map(|a| a.host.clone()).collect();
    hosts.sort();
    hosts.dedup();
    hosts
        .into_iter()
        .map(|h| {
            let lag = answers
                .iter()
                .filter(|a| a.host == h && a.component != hash && a.sent > activated)
                .map(|a| a.sent - activated)
                .max()
                .unwrap_or_default();
            let after = answers
                .iter()
                .filter(|a| a.host == h && a.sent > activated + lag)
                .count();
            assert!(
                after > 0,
                "host {h} answered nothing after the change: the load is too short"
            );
            (h, lag)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_scenarios() {
    let Some(nats) = NatsCluster::start_or_skip("cluster end-to-end") else {
        return;
    };
    eprintln!("CLUSTER nats-server {}", nats.version());
    let mut cluster = Cluster {
        nats,
        dir: tempfile::tempdir().unwrap(),
        hosts: Vec::new(),
    };
    for id in ["a", "b", "c"] {
        let host = cluster.start_host(id);
        cluster.hosts.push((id.to_string(), host));
    }
    let view = cluster
        .host("a")
        .client()
        .admin(reqwest::Method::GET, "/admin/cluster", None)
        .await
        .unwrap();
    assert_eq!(view["live_hosts"], 3, "{view}");
    // `aggregate-host cluster` prints the same view.
    let out = std::process::Command::new(support::BINARY)
        .args(["cluster", "--admin", &cluster.host("b").admin])
        .args(["--token", support::TOKEN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["host_id"], "b", "{printed}");
    let live: Vec<&str> = printed["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["live"] == true)
        .map(|h| h["host_id"].as_str().unwrap())
        .collect();
    assert_eq!(live, ["a", "b", "c"], "{printed}");

    deploys_reach_every_host_under_load(&cluster).await;
    commands_run_on_the_tenant_owner(&cluster).await;
    queries_give_one_answer_on_every_host(&cluster).await;
    late_empty_and_corrupted_hosts_serve_the_active_version(&mut cluster).await;
    concurrent_deploys_end_in_one_history(&cluster).await;
    a_host_that_does_not_acknowledge_is_named_and_catches_up(&cluster).await;
    refusals_and_missing_blobs(&cluster).await;
    nats_restarts_lose_no_change_and_leak_no_consumer(&mut cluster).await;
    drain_pin_and_a_nats_node_killed_under_load(&mut cluster).await;
    a_dead_or_paused_owner_loses_no_command(&mut cluster).await;
}

async fn deploys_reach_every_host_under_load(cluster: &Cluster) {
    let what = "deploy under load";
    let clients = cluster.clients();
    let (a, b, c) = (&clients[0].1, &clients[1].1, &clients[2].1);
    let v1 = a
        .deploy(TYPE, wasm(example_artifacts::BANK_ACCOUNT))
        .await
        .unwrap();
    let v1_hash = v1["component"].as_str().unwrap().to_string();
    assert_eq!(v1["cluster"]["acknowledged"], 3, "{what}: {v1}");
    wait_all(&clients, TYPE, Duration::from_secs(5), what, |e| {
        e.as_ref().is_some_and(|(h, _)| *h == v1_hash)
    })
    .await;
    let v2_bytes = wasm(example_artifacts::BANK_ACCOUNT_V2);
    let v2_hash = aggregate_host::types::ComponentHash::of(&v2_bytes).to_string();

    // Deploy v2 through a.
    let load = Load::start(&clients, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deployed = a.deploy(TYPE, v2_bytes).await.unwrap();
    let activated = Instant::now();
    assert_eq!(deployed["component"], v2_hash.as_str());
    assert_eq!(deployed["cluster"]["acknowledged"], 3, "{what}: {deployed}");
    assert_eq!(
        deployed["cluster"]["not_acknowledged"],
        json!([]),
        "{deployed}"
    );
    let seen = wait_all(&clients, TYPE, PROPAGATION_BOUND, what, |e| {
        e.as_ref().is_some_and(|(h, _)| *h == v2_hash)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answers = load.stop().await;
    let lags = lag_per_host(&answers, activated, &v2_hash, &v2_hash);
    eprintln!(
        "CLUSTER deploy propagation: admin view {seen:?}; last old answer after activation {lags:?}; {} commands, 0 failed",
        answers.len()
    );
    for (h, lag) in &lags {
        assert!(
            *lag <= PROPAGATION_BOUND,
            "{what}: host {h} answered with the old component {lag:?} after activation"
        );
    }

    // Roll back through b.
    let what = "rollback under load";
    let load = Load::start(&clients, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rolled = b
        .admin(
            reqwest::Method::POST,
            &format!("/admin/aggregates/{TYPE}/rollback"),
            None,
        )
        .await
        .unwrap();
    let activated = Instant::now();
    assert_eq!(rolled["component"], v1_hash.as_str(), "{rolled}");
    assert_eq!(rolled["cluster"]["acknowledged"], 3, "{what}: {rolled}");
    let seen = wait_all(&clients, TYPE, PROPAGATION_BOUND, what, |e| {
        e.as_ref().is_some_and(|(h, _)| *h == v1_hash)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answers = load.stop().await;
    let lags = lag_per_host(&answers, activated, &v1_hash, &v2_hash);
    eprintln!(
        "CLUSTER rollback propagation: admin view {seen:?}; last old answer after activation {lags:?}; {} commands, 0 failed",
        answers.len()
    );
    for (h, lag) in &lags {
        assert!(*lag <= PROPAGATION_BOUND, "{what}: host {h} lag {lag:?}");
    }

    // Change limits through c: every host applies them, commands keep succeeding.
    let what = "limits change under load";
    let load = Load::start(&clients, 1).await;
    let changed = c
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/aggregates/{TYPE}/limits"),
            Some(&json!({"fuel": 123_456_789u64, "max_events": 7})),
        )
        .await
        .unwrap();
    assert_eq!(changed["limits"]["fuel"], 123_456_789u64, "{changed}");
    let seen = wait_all(&clients, TYPE, PROPAGATION_BOUND, what, |e| {
        e.as_ref().is_some_and(|(h, entry)| {
            *h == v1_hash
                && entry["limits"]["fuel"] == 123_456_789u64
                && entry["limits"]["max_events"] == 7
        })
    })
    .await;
    let answers = load.stop().await;
    assert!(!answers.is_empty());
    eprintln!("CLUSTER limits propagation: {seen:?}");
}

/// The owner of `tenant` as host `client` sees it.
async fn owner_of(client: &Client, tenant: &str) -> String {
    let p = client
        .admin(
            reqwest::Method::GET,
            &format!("/admin/placement?tenant_id={tenant}"),
            None,
        )
        .await
        .unwrap();
    p["owner"]
        .as_str()
        .unwrap_or_else(|| panic!("no owner: {p}"))
        .to_string()
}

/// A command sent to a host that does not own the tenant is forwarded to the owner: the client
/// gets exactly the owner's answer, and every event records the owner as its writer.
async fn commands_run_on_the_tenant_owner(cluster: &Cluster) {
    let what = "commands on the owner";
    let ids = ["a", "b", "c"];
    // The NATS command endpoint: any host of the queue group takes a request, the owner runs it.
    let nats = async_nats::connect(cluster.nats.url(0)).await.unwrap();
    let mut owners = std::collections::BTreeMap::new();
    for n in 0..12 {
        let tenant = format!("tenant-{n}");
        let owner = owner_of(&cluster.host("a").client(), &tenant).await;
        // Every host agrees on the owner.
        for id in ids {
            assert_eq!(
                owner_of(&cluster.host(id).client(), &tenant).await,
                owner,
                "{what}: host {id} disagrees on the owner of {tenant}"
            );
        }
        *owners.entry(owner.clone()).or_insert(0) += 1;
        let other = ids.iter().find(|h| **h != owner).unwrap();
        let via_other = cluster.host(other).tenant(&tenant);
        let via_owner = cluster.host(&owner).tenant(&tenant);
        let id = new_id();
        let command_id = new_id();
        let options = aggregate_host::client::CommandOptions {
            command_id: Some(command_id.clone()),
            ..Default::default()
        };
        let forwarded = via_other
            .send_with(TYPE, &id, "open", &json!({"owner": tenant}), &options)
            .await
            .unwrap();
        let direct = via_owner
            .send_with(TYPE, &id, "open", &json!({"owner": tenant}), &options)
            .await
            .unwrap();
        assert_eq!(forwarded["duplicate"], false, "{forwarded}");
        assert_eq!(direct["duplicate"], true, "{direct}");
        // The same outcome; only what describes this call differs (a duplicate made 0 attempts).
        let strip = |mut v: Value| {
            v.as_object_mut().unwrap().remove("duplicate");
            v.as_object_mut().unwrap().remove("attempts");
            v
        };
        assert_eq!(
            strip(forwarded.clone()),
            strip(direct),
            "{what}: the forwarded answer differs from the owner's"
        );
        // A command without an id is forwarded with one, so its retries are safe.
        via_other
            .send(TYPE, &id, "deposit", &json!({"amount": 5}))
            .await
            .unwrap();
        assert_eq!(
            via_other.state(TYPE, &id).await.unwrap(),
            via_owner.state(TYPE, &id).await.unwrap(),
            "{what}: state reads differ"
        );
        let events = via_other.events(TYPE, &id, 0, 100).await.unwrap();
        let writers: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["metadata"]["host"].as_str().unwrap_or("none"))
            .collect();
        assert_eq!(writers, [owner.as_str(); 2], "{what}: {events}");
        let reply = tokio::time::timeout(
            Duration::from_secs(15),
            nats.request(
                format!("aggregate.cmd.{tenant}.{TYPE}.{id}.deposit"),
                r#"{"amount": 7}"#.into(),
            ),
        )
        .await
        .expect("a NATS reply in time")
        .expect("a NATS reply");
        let status = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Aggregate-Status"))
            .map(|v| v.as_str().to_string());
        let answer: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(
            status.as_deref(),
            Some("200"),
            "{what}: over NATS: {answer}"
        );
        assert_eq!(answer["version"], 3, "{what}: over NATS: {answer}");
        assert_eq!(
            answer["events"][0]["metadata"]["host"], owner,
            "{what}: a NATS command ran on the owner"
        );
    }
    eprintln!("CLUSTER owners of 12 tenants: {owners:?}");
    assert!(
        owners.len() >= 2,
        "{what}: one host owns every tenant: {owners:?}"
    );
}

/// Every page of `filter` over the tenant's accounts, as one host answers it.
async fn query_all(client: &Client, filter: &str) -> Vec<Value> {
    let (mut items, mut token) = (Vec::new(), None::<String>);
    loop {
        let page = client
            .query(TYPE, Some(filter), Some(7), token.as_deref())
            .await
            .unwrap();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return items,
        }
    }
}

/// A query gets the same answer from every host (each host's state index follows the whole
/// log, and a query waits for the log's position at its arrival), also right after its tenant
/// moved to another owner and wrote there.
async fn queries_give_one_answer_on_every_host(cluster: &Cluster) {
    let what = "queries on every host";
    let tenant = "query-tenant";
    let a = cluster.host("a").client();
    let owner = owner_of(&a, tenant).await;
    let writer = cluster.host(&owner).tenant(tenant);
    let mut ids = Vec::new();
    for n in 0..20 {
        let id = new_id();
        writer
            .send(TYPE, &id, "open", &json!({"owner": tenant}))
            .await
            .unwrap();
        writer
            .send(TYPE, &id, "deposit", &json!({"amount": 10 * (n + 1)}))
            .await
            .unwrap();
        ids.push(id);
    }
    let filter = "state.balance > 50";
    let answers = |label: &'static str| async move {
        let mut answers = Vec::new();
        for h in ["a", "b", "c"] {
            answers.push((h, query_all(&cluster.host(h).tenant(tenant), filter).await));
        }
        for (h, items) in &answers[1..] {
            assert_eq!(
                items, &answers[0].1,
                "{what} ({label}): host {h} answers differently from host a"
            );
        }
        answers.swap_remove(0).1
    };
    let before = answers("before the move").await;
    assert_eq!(before.len(), 15, "{what}: balances 60..200 match");

    // Move the tenant (pin it elsewhere), write through the new owner, and ask every host at once.
    let target = ["a", "b", "c"].into_iter().find(|h| *h != owner).unwrap();
    a.admin(
        reqwest::Method::PUT,
        &format!("/admin/placement/pins/{tenant}"),
        Some(&json!({"host_id": target})),
    )
    .await
    .unwrap();
    let started = Instant::now();
    for h in ["a", "b", "c"] {
        while owner_of(&cluster.host(h).client(), tenant).await != target {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: host {h} does not see {tenant} on {target}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let moved = cluster.host(target).tenant(tenant);
    let answer = moved
        .send(TYPE, &ids[0], "deposit", &json!({"amount": 1000}))
        .await
        .unwrap();
    assert_eq!(
        answer["events"][0]["metadata"]["host"], target,
        "{what}: the new owner wrote it"
    );
    let after = answers("right after the move").await;
    assert_eq!(after.len(), 16, "{what}: the first account now matches too");
    let first = after
        .iter()
        .find(|i| i["aggregate_id"] == ids[0].as_str())
        .expect("the account written after the move");
    assert_eq!(first["state"]["balance"], 1010, "{first}");
    assert_eq!(first["version"], answer["version"], "{first}");
    a.admin(
        reqwest::Method::DELETE,
        &format!("/admin/placement/pins/{tenant}"),
        None,
    )
    .await
    .unwrap();
    eprintln!(
        "CLUSTER {what}: 3 hosts gave the same {} and {} matches, owner {owner} then {target}",
        before.len(),
        after.len()
    );
}

async fn late_empty_and_corrupted_hosts_serve_the_active_version(cluster: &mut Cluster) {
    let what = "late, empty and corrupted hosts";
    let a = cluster.host("a").client();
    let (hash, _) = active(&a, TYPE).await.expect("deployed");

    // A host started after the deploy.
    let d = cluster.start_host("d");
    let (d_hash, _) = active(&d.client(), TYPE)
        .await
        .unwrap_or_else(|| panic!("{what}: d does not serve {TYPE}"));
    assert_eq!(d_hash, hash, "{what}: a host started after the deploy");
    let answer = d
        .client()
        .send(TYPE, &new_id(), "open", &json!({"owner": "late"}))
        .await
        .unwrap();
    assert_eq!(answer["component"], hash.as_str(), "{answer}");
    assert!(
        d.log().contains("fetched from the component store"),
        "{what}: d should have fetched the blob"
    );

    // c restarted with an empty data dir.
    cluster.stop_host("c");
    std::fs::remove_dir_all(cluster.data_dir("c")).unwrap();
    let c = cluster.start_host("c");
    assert_eq!(
        active(&c.client(), TYPE).await.map(|(h, _)| h),
        Some(hash.clone()),
        "{what}: c restarted empty"
    );
    cluster.hosts.push(("c".into(), c));

    // b's local blob corrupted while it is down: detected and fetched again.
    cluster.stop_host("b");
    let blob = cluster
        .data_dir("b")
        .join("components")
        .join(format!("{}.wasm", hash.trim_start_matches("sha256:")));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    // Precompiled artifacts are a cache too: drop them so the blob is what is read.
    let _ = std::fs::remove_dir_all(cluster.data_dir("b").join("artifacts"));
    let b = cluster.start_host("b");
    assert!(
        b.log().contains("local blob damaged; fetching it again"),
        "{what}: b did not notice its damaged blob"
    );
    let repaired = std::fs::read(&blob).unwrap();
    assert_eq!(
        aggregate_host::types::ComponentHash::of(&repaired).to_string(),
        hash,
        "{what}: the local copy was not repaired"
    );
    let answer = b
        .client()
        .send(TYPE, &new_id(), "open", &json!({"owner": "repaired"}))
        .await
        .unwrap();
    assert_eq!(answer["component"], hash.as_str(), "{answer}");
    cluster.hosts.insert(1, ("b".into(), b));

    // d leaves cleanly: it disappears from the view at once.
    let mut d = d;
    assert!(d.stop().success());
    let view = a
        .admin(reqwest::Method::GET, "/admin/cluster", None)
        .await
        .unwrap();
    let ids: Vec<&str> = view["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"], "{what}: {view}");
}

async fn concurrent_deploys_end_in_one_history(cluster: &Cluster) {
    let clients = cluster.clients();
    let (a, b) = (clients[0].1.clone(), clients[1].1.clone());
    let v1 = wasm(example_artifacts::BANK_ACCOUNT);
    let v2 = wasm(example_artifacts::BANK_ACCOUNT_V2);
    for round in 0..5 {
        let what = format!("concurrent deploys, round {round}");
        let ty = format!("race-{round}");
        let (first, second) = if round % 2 == 0 {
            (v1.clone(), v2.clone())
        } else {
            (v2.clone(), v1.clone())
        };
        let (ra, rb) = tokio::join!(a.deploy(&ty, first), b.deploy(&ty, second));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let mut versions = [
            ra["version"].as_u64().unwrap(),
            rb["version"].as_u64().unwrap(),
        ];
        versions.sort();
        assert_eq!(versions, [1, 2], "{what}: {ra} {rb}");
        let last = if ra["version"] == 2 { &ra } else { &rb };
        let winner = last["component"].as_str().unwrap().to_string();
        wait_all(&clients, &ty, Duration::from_secs(5), &what, |e| {
            e.as_ref().is_some_and(|(h, entry)| {
                *h == winner && entry["version"] == 2 && entry["earlier_components"] == 1
            })
        })
        .await;
        let history = a
            .admin(
                reqwest::Method::GET,
                &format!("/admin/aggregates/{ty}/versions"),
                None,
            )
            .await
            .unwrap();
        let components: Vec<&str> = history["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["component"].as_str().unwrap())
            .collect();
        let loser = if ra["version"] == 2 { &rb } else { &ra };
        assert_eq!(
            components,
            [loser["component"].as_str().unwrap(), winner.as_str()],
            "{what}: {history}"
        );
    }
}

/// Change limits through `client`, retrying while NATS elects leaders (bounded).
async fn change_limits(client: &Client, limits: Value, what: &str) {
    let started = Instant::now();
    loop {
        match client
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/aggregates/{TYPE}/limits"),
                Some(&limits),
            )
            .await
        {
            Ok(_) => return,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("{what}: limits change refused while NATS settles: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{what}: limits change: {e}"),
        }
    }
}

fn signal(host: &HostProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

async fn a_host_that_does_not_acknowledge_is_named_and_catches_up(cluster: &Cluster) {
    let what = "a paused host";
    let ty = "paused-type";
    let clients = cluster.clients();
    let c = cluster.host("c");
    // c is paused: still live in the membership view (for host_ttl_ms), but it cannot answer.
    signal(c, "STOP");
    let started = Instant::now();
    let deploying = {
        let a = clients[0].1.clone();
        tokio::spawn(async move { a.deploy(ty, wasm(example_artifacts::BANK_ACCOUNT)).await })
    };
    // A host that stops heart-beating leaves the live view within host_ttl_ms (4 s here) and
    // the next heartbeat of the host that looks.
    let silent_after = loop {
        let view = clients[1]
            .1
            .admin(reqwest::Method::GET, "/admin/cluster", None)
            .await
            .unwrap();
        let c_live = view["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host_id"] == "c" && h["live"] == true);
        if !c_live {
            assert_eq!(view["live_hosts"], 2, "{what}: {view}");
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: c still live after {:?}: {view}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        silent_after <= Duration::from_millis(5500),
        "{what}: c left the live view only after {silent_after:?}"
    );
    let deployed = deploying.await.unwrap();
    let took = started.elapsed();
    signal(c, "CONT");
    let deployed = deployed.unwrap();
    assert_eq!(deployed["cluster"]["acknowledged"], 2, "{what}: {deployed}");
    assert_eq!(
        deployed["cluster"]["not_acknowledged"],
        json!(["c"]),
        "{what}: {deployed}"
    );
    assert!(
        took >= Duration::from_secs(20),
        "{what}: the deploy did not wait for the acknowledgement timeout ({took:?})"
    );
    let hash = deployed["component"].as_str().unwrap().to_string();
    // Activated without c; c catches up from the watch once it runs again.
    let seen = wait_all(&clients, ty, Duration::from_secs(30), what, |e| {
        e.as_ref().is_some_and(|(h, _)| *h == hash)
    })
    .await;
    eprintln!("CLUSTER paused host: not live after {silent_after:?}; deploy answered after {took:?}, every host had it after {seen:?}");
    // Back to live once it heart-beats again.
    let back = Instant::now();
    loop {
        let view = clients[0]
            .1
            .admin(reqwest::Method::GET, "/admin/cluster", None)
            .await
            .unwrap();
        if view["live_hosts"] == 3 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "{what}: c not live again: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A host that cannot honour a change refuses it (nothing is activated); a blob missing from the
/// component store is reported by the hosts that need it, without making them unready, and a
/// deploy of the same bytes puts it back.
async fn refusals_and_missing_blobs(cluster: &Cluster) {
    let what = "refusals and missing blobs";
    let clients = cluster.clients();
    let a = &clients[0].1;
    // d allows guests at most 100 MiB of memory; the others 256 MiB (the default).
    let d = cluster.start_host_with("d", &[("AGGREGATE_MAX_MEMORY_MB", "100")]);
    let before = active(a, TYPE).await.expect("deployed").1;
    let refused = support::problem(
        a.admin(
            reqwest::Method::PUT,
            &format!("/admin/aggregates/{TYPE}/limits"),
            Some(&json!({"max_memory_bytes": 128u64 << 20})),
        )
        .await,
        409,
        "host-refused",
    );
    assert!(
        refused["refused"]["d"]
            .as_str()
            .is_some_and(|r| r.contains("max_memory_bytes")),
        "{what}: {refused}"
    );
    for (id, client) in clients.iter().chain([("d".to_string(), d.client())].iter()) {
        let now = active(client, TYPE).await.expect("deployed").1;
        assert_eq!(now["limits"], before["limits"], "{what}: host {id} changed");
    }

    // The component store loses the blob of `repair-type`'s component.
    let v1 = wasm(example_artifacts::BANK_ACCOUNT);
    let hash = aggregate_host::types::ComponentHash::of(&v1).to_string();
    a.deploy("repair-type", v1.clone()).await.unwrap();
    let urls: Vec<String> = cluster.nats.urls().split(',').map(str::to_string).collect();
    let js = async_nats::jetstream::new(async_nats::connect(urls).await.unwrap());
    js.get_object_store("AGGREGATE_COMPONENTS")
        .await
        .unwrap()
        .delete(&hash)
        .await
        .unwrap();
    // A new, empty host needs it: it names the entries it cannot install, and stays ready.
    let mut e = cluster.start_host("e");
    let view = e
        .client()
        .admin(reqwest::Method::GET, "/admin/cluster", None)
        .await
        .unwrap();
    let error = view["install_errors"]["repair-type"].as_str().unwrap_or("");
    assert!(
        error.contains("not in the component store"),
        "{what}: {view}"
    );
    e.client().ready().await.unwrap();
    // Deploying the same bytes again changes nothing in the manifest but puts the blob back;
    // e then installs the entries on its next reconciliation.
    let again = a.deploy("repair-type", v1).await.unwrap();
    assert_eq!(again["changed"], false, "{again}");
    let healed = wait_all(
        &[("e".to_string(), e.client())],
        "repair-type",
        Duration::from_secs(10),
        what,
        |x| x.as_ref().is_some_and(|(h, _)| *h == hash),
    )
    .await;
    eprintln!("CLUSTER missing blob: e installed the entry {healed:?} after the repairing deploy");
    assert!(e.stop().success());
    let mut d = d;
    assert!(d.stop().success());
}

async fn manifest_consumers(urls: &str) -> usize {
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let client = async_nats::connect(urls).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("KV_AGGREGATE_MANIFEST").await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

async fn nats_restarts_lose_no_change_and_leak_no_consumer(cluster: &mut Cluster) {
    let what = "NATS restarts";
    let before = manifest_consumers(&cluster.nats.urls()).await;
    let mut restarts = 0;
    let clients = cluster.clients();
    for round in 0..3 {
        for node in 0..3 {
            let started = Instant::now();
            cluster.nats.restart(node);
            cluster.nats.wait_meta_leader(Duration::from_secs(60));
            restarts += 1;
            // A change right after each restart, through each host in turn: none may be lost.
            let fuel = 100_000_000 + restarts;
            let (_, client) = &clients[restarts as usize % clients.len()];
            change_limits(client, json!({ "fuel": fuel }), what).await;
            eprintln!(
                "CLUSTER restart {restarts} (round {round}, node {node}) and a limits change took {:?}",
                started.elapsed()
            );
        }
    }
    let last_fuel = 100_000_000 + restarts;
    for node in 0..3 {
        cluster.nats.stop(node);
    }
    for node in 0..3 {
        cluster.nats.start(node);
    }
    cluster.nats.wait_meta_leader(Duration::from_secs(60));
    restarts += 1;
    assert_eq!(restarts, 10);

    // Every host becomes ready again on its own.
    for (_, host) in &cluster.hosts {
        host.wait_ready(Duration::from_secs(60));
    }
    let clients = cluster.clients();
    let v2_bytes = wasm(example_artifacts::BANK_ACCOUNT_V2);
    let v2_hash = aggregate_host::types::ComponentHash::of(&v2_bytes).to_string();
    let c = &clients[2].1;
    let deployed = {
        let started = Instant::now();
        loop {
            match c.deploy(TYPE, v2_bytes.clone()).await {
                Ok(v) => break v,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("{what}: deploy refused while NATS settles: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("{what}: deploy after the restarts: {e}"),
            }
        }
    };
    assert_eq!(deployed["component"], v2_hash.as_str(), "{deployed}");
    let seen = wait_all(&clients, TYPE, Duration::from_secs(10), what, |e| {
        e.as_ref()
            .is_some_and(|(h, entry)| *h == v2_hash && entry["limits"]["fuel"] == last_fuel)
    })
    .await;
    eprintln!("CLUSTER after 10 NATS restarts: deploy reached every host {seen:?}");
    for (host, client) in &clients {
        let answer = client
            .send(TYPE, &new_id(), "open", &json!({"owner": "after"}))
            .await
            .unwrap_or_else(|e| panic!("{what}: a command on {host}: {e}"));
        assert_eq!(answer["component"], v2_hash.as_str());
    }

    // One watch per host; consumers of watches that ended are removed by the server (ordered
    // consumers expire 30 s after their subscriber is gone), so the count settles to the hosts'.
    let hosts = cluster.hosts.len();
    let started = Instant::now();
    let mut count = manifest_consumers(&cluster.nats.urls()).await;
    let right_after = count;
    while count > hosts && started.elapsed() < Duration::from_secs(75) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        count = manifest_consumers(&cluster.nats.urls()).await;
    }
    eprintln!(
        "CLUSTER manifest consumers: {before} before the restarts, {right_after} right after, {count} after {:?}",
        started.elapsed()
    );
    assert!(
        count <= hosts,
        "{what}: {count} consumers on the manifest bucket for {hosts} hosts after {restarts} restarts"
    );
}

/// One acknowledged deposit.
#[derive(Clone)]
struct Acked {
    tenant: String,
    aggregate: String,
    command_id: String,
    at: Instant,
}

/// Deposits on one aggregate per tenant, each retried with its own command id on the next
/// entry host until acknowledged (bounded): what a client of a cluster does.
struct TenantLoad {
    stop: Arc<AtomicBool>,
    entries: Arc<parking_lot::Mutex<Vec<(String, Client)>>>,
    /// When a command attempt failed (it was retried), and why.
    errors: Arc<parking_lot::Mutex<Vec<(Instant, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Acked>>>,
}

impl TenantLoad {
    async fn start(entries: Vec<(String, Client)>, tenants: &[String]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let entries = Arc::new(parking_lot::Mutex::new(entries));
        let errors = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (n, tenant) in tenants.iter().enumerate() {
            let aggregate = new_id();
            let (stop, entries, tenant) = (stop.clone(), entries.clone(), tenant.clone());
            let errors = errors.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut turn = n;
                let mut first = true;
                while !stop.load(Ordering::Relaxed) && acked.len() < 5_000 {
                    let command_id = new_id();
                    let (command, payload) = if first {
                        ("open", json!({"owner": tenant}))
                    } else {
                        ("deposit", json!({"amount": 1}))
                    };
                    let options = aggregate_host::client::CommandOptions {
                        command_id: Some(command_id.clone()),
                        ..Default::default()
                    };
                    let started = Instant::now();
                    loop {
                        let client = {
                            let e = entries.lock();
                            turn += 1;
                            e[turn % e.len()]
                                .1
                                .clone()
                                .with_tenant(Some(tenant.clone()))
                        };
                        match client
                            .send_with(TYPE, &aggregate, command, &payload, &options)
                            .await
                        {
                            Ok(_) => break,
                            Err(e) => {
                                errors.lock().push((Instant::now(), e.to_string()));
                                assert!(
                                    started.elapsed() < Duration::from_secs(30),
                                    "a command of {tenant} was not acknowledged within 30 s: {e}"
                                );
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    first = false;
                    acked.push(Acked {
                        tenant: tenant.clone(),
                        aggregate: aggregate.clone(),
                        command_id,
                        at: Instant::now(),
                    });
                }
                acked
            }));
        }
        Self {
            stop,
            entries,
            errors,
            tasks,
        }
    }

    fn only(&self, entries: Vec<(String, Client)>) {
        *self.entries.lock() = entries;
    }

    fn errors_since(&self, since: Instant) -> Vec<String> {
        self.errors
            .lock()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, e)| e.clone())
            .collect()
    }

    async fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("a load task panicked"));
        }
        all
    }
}

/// Every acknowledged command is in the log exactly once, and each aggregate's versions are
/// 1..n with no gap; returns the events per aggregate.
async fn check_log(client: &Client, acked: &[Acked], what: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by_aggregate: BTreeMap<(String, String), Vec<&Acked>> = BTreeMap::new();
    for a in acked {
        by_aggregate
            .entry((a.tenant.clone(), a.aggregate.clone()))
            .or_default()
            .push(a);
    }
    let mut out = BTreeMap::new();
    for ((tenant, aggregate), commands) in by_aggregate {
        let client = client.clone().with_tenant(Some(tenant.clone()));
        let mut events: Vec<Value> = Vec::new();
        loop {
            let page = client
                .events(TYPE, &aggregate, events.len() as u64, 1000)
                .await
                .unwrap();
            let page = page["events"].as_array().unwrap().clone();
            if page.is_empty() {
                break;
            }
            events.extend(page);
        }
        let versions: Vec<u64> = events
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        assert_eq!(
            versions,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{what}: versions of {tenant}/{aggregate} have a gap"
        );
        // Each client sends its next command only after the last was acknowledged: the log
        // holds every acknowledged command once, in the order they were acknowledged.
        let causes: Vec<&str> = events
            .iter()
            .map(|e| e["causation_id"].as_str().unwrap())
            .collect();
        let ids: Vec<&str> = commands.iter().map(|a| a.command_id.as_str()).collect();
        assert_eq!(
            causes, ids,
            "{what}: {tenant}/{aggregate}: the log does not hold each acknowledged command exactly once, in order"
        );
        out.insert(tenant, events);
    }
    out
}

async fn a_dead_or_paused_owner_loses_no_command(cluster: &mut Cluster) {
    let what = "kill -9 of an owner";
    let tenants: Vec<String> = (0..9).map(|n| format!("load-{n}")).collect();
    let a = cluster.host("a").client();
    let mut owned_by_c = Vec::new();
    for t in &tenants {
        if owner_of(&a, t).await == "c" {
            owned_by_c.push(t.clone());
        }
    }
    assert!(!owned_by_c.is_empty(), "{what}: c owns none of {tenants:?}");
    let load = TenantLoad::start(cluster.clients(), &tenants).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = cluster.hosts.iter().position(|(h, _)| h == "c").unwrap();
    let (_, c_host) = cluster.hosts.remove(c);
    signal(&c_host, "KILL");
    let killed = Instant::now();
    load.only(cluster.clients());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let acked = load.stop().await;
    drop(c_host);
    // The dead host's tenants are served again: the first acknowledgement after the kill.
    let failover = owned_by_c
        .iter()
        .map(|t| {
            acked
                .iter()
                .filter(|x| &x.tenant == t && x.at > killed)
                .map(|x| x.at - killed)
                .min()
                .unwrap_or_else(|| panic!("{what}: {t} never served again"))
        })
        .max()
        .unwrap();
    let logs = check_log(&a, &acked, what).await;
    eprintln!(
        "CLUSTER kill -9 of c: its {} tenants served again after {failover:?}; {} commands acknowledged, each in the log once",
        owned_by_c.len(),
        acked.len()
    );
    assert!(
        failover <= Duration::from_secs(6),
        "{what}: failover took {failover:?}"
    );
    for t in &owned_by_c {
        let writers: std::collections::BTreeSet<&str> = logs[t]
            .iter()
            .filter_map(|e| e["metadata"]["host"].as_str())
            .collect();
        assert!(
            writers.len() >= 2,
            "{what}: {t} written by {writers:?} only"
        );
    }

    // b paused longer than host_ttl: it writes nothing once it lost ownership, then rejoins.
    let what = "SIGSTOP of an owner";
    let load = TenantLoad::start(vec![("a".to_string(), a.clone())], &tenants).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b_client = cluster.host("b").client();
    let mut owned_by_b = Vec::new();
    for t in &tenants {
        if owner_of(&a, t).await == "b" {
            owned_by_b.push(t.clone());
        }
    }
    signal(cluster.host("b"), "STOP");
    let stopped = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    signal(cluster.host("b"), "CONT");
    let resumed = chrono::Utc::now();
    cluster.host("b").wait_ready(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let acked = load.stop().await;
    let logs = check_log(&b_client, &acked, what).await;
    let mut taken_over = 0;
    for t in &owned_by_b {
        let events = &logs[t];
        let time = |e: &Value| {
            chrono::DateTime::parse_from_rfc3339(e["recorded_at"].as_str().unwrap()).unwrap()
        };
        // The new owner's first event after b stopped.
        let Some(first_new) = events
            .iter()
            .filter(|e| e["metadata"]["host"] != "b" && time(e) > stopped)
            .map(time)
            .min()
        else {
            continue;
        };
        taken_over += 1;
        let late: Vec<&Value> = events
            .iter()
            .filter(|e| e["metadata"]["host"] == "b" && time(e) > first_new && time(e) < resumed)
            .collect();
        assert!(
            late.is_empty(),
            "{what}: b wrote after it lost {t}: {late:?}"
        );
        // Nothing b wrote after it resumed overlaps the new owner's writes: every event of b
        // after the pause comes after the new owner's last event of the pause.
        let new_owner_last = events
            .iter()
            .filter(|e| e["metadata"]["host"] != "b" && time(e) > stopped)
            .map(time)
            .max()
            .unwrap();
        let b_after: Vec<_> = events
            .iter()
            .filter(|e| e["metadata"]["host"] == "b" && time(e) > stopped)
            .map(time)
            .collect();
        assert!(
            b_after.iter().all(|t| *t > new_owner_last) || b_after.is_empty(),
            "{what}: b and the new owner of {t} wrote in the same period: stopped {stopped}, resumed {resumed}, the new owner's last event {new_owner_last}, b's events after the pause {b_after:?}"
        );
    }
    eprintln!(
        "CLUSTER SIGSTOP of b for 7 s: {taken_over} of its {} tenants taken over, {} commands acknowledged, none written by b while it was not the owner",
        owned_by_b.len(),
        acked.len()
    );
    assert!(
        taken_over > 0 || owned_by_b.is_empty(),
        "{what}: nothing taken over"
    );
}

async fn drain_pin_and_a_nats_node_killed_under_load(cluster: &mut Cluster) {
    let tenants: Vec<String> = (0..9).map(|n| format!("move-{n}")).collect();
    let load = TenantLoad::start(cluster.clients(), &tenants).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Drain b: its tenants move to a and c, then come back on resume; no command fails.
    let what = "drain of a host under load";
    let from = Instant::now();
    let b = cluster.host("b").client();
    let drained = b
        .admin(
            reqwest::Method::POST,
            "/admin/drain",
            Some(&json!({"host": true})),
        )
        .await
        .unwrap();
    assert_eq!(drained["drained"], true, "{what}: {drained}");
    let a = cluster.host("a").client();
    for t in &tenants {
        let mut tries = 0;
        while owner_of(&a, t).await == "b" {
            tries += 1;
            assert!(tries < 100, "{what}: b still owns {t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    b.admin(
        reqwest::Method::POST,
        "/admin/resume",
        Some(&json!({"host": true})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors = load.errors_since(from);
    assert!(errors.is_empty(), "{what}: failed commands: {errors:?}");

    // Pin one tenant to a host that does not own it; then unpin.
    let what = "pin of a tenant under load";
    let from = Instant::now();
    let tenant = &tenants[0];
    let owner = owner_of(&a, tenant).await;
    let target = ["a", "b", "c"].into_iter().find(|h| *h != owner).unwrap();
    a.admin(
        reqwest::Method::PUT,
        &format!("/admin/placement/pins/{tenant}"),
        Some(&json!({"host_id": target})),
    )
    .await
    .unwrap();
    let mut tries = 0;
    while owner_of(&cluster.host(target).client(), tenant).await != target {
        tries += 1;
        assert!(tries < 100, "{what}: {tenant} did not move to {target}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    a.admin(
        reqwest::Method::DELETE,
        &format!("/admin/placement/pins/{tenant}"),
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors = load.errors_since(from);
    assert!(errors.is_empty(), "{what}: failed commands: {errors:?}");

    // Drain one tenant on its owner: it is handed over to the next owner, which serves it
    // until the tenant is resumed; no command fails, and the old owner writes nothing for it
    // after the drain answered.
    let what = "drain of one tenant under load";
    let from = Instant::now();
    let tenant = tenants[1].clone();
    let owner = owner_of(&a, &tenant).await;
    let owner_client = cluster.host(&owner).client();
    let drained = owner_client
        .admin(
            reqwest::Method::POST,
            "/admin/drain",
            Some(&json!({"tenant_id": tenant})),
        )
        .await
        .unwrap();
    let released_at = chrono::Utc::now();
    assert_eq!(drained["drained"], true, "{what}: {drained}");
    let next = drained["owner"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no next owner: {drained}"))
        .to_string();
    assert_ne!(next, owner, "{what}: {drained}");
    for h in ["a", "b", "c"] {
        let mut tries = 0;
        while owner_of(&cluster.host(h).client(), &tenant).await != next {
            tries += 1;
            assert!(
                tries < 100,
                "{what}: {h} does not see {next} owning {tenant}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let listed = owner_client
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .await
        .unwrap();
    let row = listed["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant_id"] == tenant.as_str())
        .unwrap_or_else(|| panic!("{what}: {tenant} not in {listed}"));
    assert_eq!(
        (&row["draining"], &row["owner"]),
        (&json!(true), &json!(next)),
        "{what}: {row}"
    );
    let placement = a
        .admin(reqwest::Method::GET, "/admin/placement", None)
        .await
        .unwrap();
    let released: Vec<&Value> = placement["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            h["released"]
                .as_array()
                .is_some_and(|r| r.contains(&json!(tenant)))
        })
        .map(|h| &h["host_id"])
        .collect();
    assert_eq!(released, [&json!(owner)], "{what}: {placement}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resumed_at = chrono::Utc::now();
    let resumed = owner_client
        .admin(
            reqwest::Method::POST,
            "/admin/resume",
            Some(&json!({"tenant_id": tenant})),
        )
        .await
        .unwrap();
    assert_eq!(resumed["was_draining"], true, "{what}: {resumed}");
    assert_eq!(resumed["owner"], owner.as_str(), "{what}: {resumed}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let errors = load.errors_since(from);
    assert!(errors.is_empty(), "{what}: failed commands: {errors:?}");

    // kill -9 of one NATS node: commands stall while streams elect leaders, none is lost.
    let killed = Instant::now();
    cluster.nats.kill(0);
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.nats.start(0);
    cluster.nats.wait_meta_leader(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retried = load.errors_since(killed).len();
    let acked = load.stop().await;
    let logs = check_log(&a, &acked, "kill -9 of a NATS node under load").await;
    // The stall: the longest time without any acknowledgement after the kill.
    let mut times: Vec<Instant> = acked.iter().map(|x| x.at).filter(|t| *t > killed).collect();
    times.sort();
    let stall = std::iter::once(killed)
        .chain(times.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    // The drained tenant's events between the drain's answer and the resume: all by the next
    // owner, and there are some.
    let handed_over: Vec<&Value> = logs[&tenant]
        .iter()
        .filter(|e| {
            let at =
                chrono::DateTime::parse_from_rfc3339(e["recorded_at"].as_str().unwrap()).unwrap();
            at > released_at && at < resumed_at
        })
        .collect();
    assert!(
        !handed_over.is_empty(),
        "drain of one tenant: nothing written while it was drained"
    );
    for e in &handed_over {
        assert_eq!(
            e["metadata"]["host"], next.as_str(),
            "drain of one tenant: written by another host than the next owner after {owner} released {tenant}: {e}"
        );
    }
    let writers: std::collections::BTreeSet<&str> = logs
        .values()
        .flatten()
        .filter_map(|e| e["metadata"]["host"].as_str())
        .collect();
    eprintln!(
        "CLUSTER drain, pin and NATS node kill under load: {} commands acknowledged, each once and in order; 0 failed during host drain, pin and tenant drain ({} events of {tenant} by {next} while {owner} released it); NATS node kill: longest stall {stall:?}, {retried} attempts retried; writers {writers:?}",
        acked.len(),
        handed_over.len()
    );
}
