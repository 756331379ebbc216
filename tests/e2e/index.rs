//! The state index over HTTP, on both event logs: a deploy (and a rollback) under snapshot policy
//! `rebuild` rebuilds the type's entries in the background with progress at `GET /admin/index`,
//! and the index survives a SIGKILL of the host mid-writes and catches up with the log from its
//! checkpoint — also over commits it never saw (written by a host running without the index).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::client::{Client, CommandOptions};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{deploy, new_id, Backend, Env, HostProcess};

const TY: &str = "bank-account";

/// `GET /admin/index`.
async fn index_status(client: &Client) -> Value {
    let s = client
        .admin(Method::GET, "/admin/index", None)
        .await
        .unwrap_or_else(|e| panic!("GET /admin/index: {e}"));
    assert_eq!(s["enabled"], true, "{s}");
    s
}

/// Poll `GET /admin/index` until the index has applied the log's position (nothing is written
/// meanwhile); returns that status. The index never reports a position past the log's.
async fn caught_up(client: &Client, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = index_status(client).await;
        let position = s["position"]
            .as_u64()
            .unwrap_or_else(|| panic!("no position: {s}"));
        if let Some(log) = s["log_position"].as_u64() {
            assert!(position <= log, "the index is past the log: {s}");
            if position == log {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the index did not reach the log's position within {timeout:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gauge `aggregate_process{what="index_position"}` of `/metrics`.
async fn index_position_gauge(client: &Client) -> u64 {
    let text = client.metrics().await.unwrap();
    let prefix = "aggregate_process{what=\"index_position\"} ";
    let value: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .trim()
        .parse()
        .unwrap();
    value as u64
}

/// Every aggregate of the type a query without a filter returns, `limit` per page, following
/// the page tokens: id → item. An aggregate coming twice fails.
async fn query_all(client: &Client, limit: usize) -> (BTreeMap<String, Value>, usize) {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .query(TY, None, Some(limit), token.as_deref())
            .await
            .unwrap_or_else(|e| panic!("query page {pages}: {e}"));
        pages += 1;
        assert_eq!(page["errors"], 0, "{page}");
        for item in page["items"].as_array().unwrap() {
            let id = item["aggregate_id"].as_str().unwrap().to_string();
            assert!(
                out.insert(id.clone(), item.clone()).is_none(),
                "{id} came twice"
            );
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => return (out, pages),
        }
        assert!(pages < 10_000, "the pages never end");
    }
}

/// What an account must hold.
#[derive(Debug, Clone, PartialEq)]
struct Account {
    owner: String,
    balance: i64,
    version: u64,
}

/// The query's items are exactly `expected` (ids, owners, balances, versions).
#[track_caller]
fn assert_items(items: &BTreeMap<String, Value>, expected: &BTreeMap<String, Account>) {
    let got: BTreeSet<&String> = items.keys().collect();
    let want: BTreeSet<&String> = expected.keys().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "the query returned {} accounts, {} exist",
        got.len(),
        want.len()
    );
    assert_eq!(got, want, "the query returned other accounts");
    for (id, a) in expected {
        let item = &items[id];
        assert_eq!(
            (
                item["state"]["owner"].as_str(),
                item["state"]["balance"].as_i64(),
                item["state"]["opened"].as_bool(),
                item["version"].as_u64()
            ),
            (
                Some(a.owner.as_str()),
                Some(a.balance),
                Some(true),
                Some(a.version)
            ),
            "{id}: {item}"
        );
        assert!(item["last_event_at"].is_string(), "{item}");
    }
}

/// The rebuild status of the type, when there is one.
fn rebuild_of(status: &Value) -> Option<&Value> {
    let rebuilds = status["rebuilds"]
        .as_object()
        .unwrap_or_else(|| panic!("no rebuilds in {status}"));
    rebuilds.get(TY)
}

/// What was seen while waiting for a rebuild to finish.
#[derive(Debug, Default)]
struct Watched {
    polls: usize,
    running_polls: usize,
    partial: Option<(u64, u64)>,
    queries_while_running: usize,
    waited: Duration,
}

/// Poll `GET /admin/index` until the type's rebuild with `component` has finished; while it runs,
/// queries keep answering with every account at its balance. Returns the finished status.
async fn watch_rebuild(
    client: &Client,
    component: &str,
    expected: &BTreeMap<String, Account>,
) -> (Value, Watched) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut w = Watched::default();
    loop {
        let status = index_status(client).await;
        w.polls += 1;
        if let Some(r) = rebuild_of(&status) {
            if r["component"] == component {
                let (total, done) = (r["total"].as_u64().unwrap(), r["done"].as_u64().unwrap());
                assert!(done <= total, "{r}");
                if !r["finished_at"].is_null() {
                    w.waited = started.elapsed();
                    return (r.clone(), w);
                }
                assert!(r["elapsed_ms"].is_null(), "running, with elapsed_ms: {r}");
                w.running_polls += 1;
                if done < total && w.partial.is_none() {
                    w.partial = Some((done, total));
                }
                // Queries keep answering while the rebuild runs; the state shape is the same in
                // both versions, so every account shows its balance whichever built it.
                let (items, _) = query_all(client, 1000).await;
                assert_items(&items, expected);
                w.queries_while_running += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no finished rebuild of {TY} with {component} within 60 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A finished rebuild of every account with `component`, none failed.
#[track_caller]
fn assert_finished(r: &Value, component: &str, total: usize) {
    assert_eq!(r["component"], component, "{r}");
    assert_eq!(r["total"].as_u64(), Some(total as u64), "{r}");
    assert_eq!(r["done"].as_u64(), Some(total as u64), "{r}");
    assert_eq!(r["failed"].as_u64(), Some(0), "{r}");
    let time = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(r[field].as_str().unwrap_or_else(|| panic!("{r}")))
            .unwrap_or_else(|e| panic!("{field}: {e}: {r}"))
    };
    let (started, finished) = (time("started_at"), time("finished_at"));
    assert!(started <= finished, "{r}");
    let elapsed = r["elapsed_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no elapsed_ms: {r}"));
    let between = (finished - started).num_milliseconds();
    assert!(
        (between - elapsed as i64).abs() <= 1_000 && elapsed <= 60_000,
        "elapsed_ms {elapsed} vs {between} ms between started_at and finished_at: {r}"
    );
}

/// Set the type's snapshot policy in the host's manifest file and have the host read it again
/// (`POST /admin/reload`): the admin API has no call that sets it.
async fn set_snapshot_policy(client: &Client, data_dir: &Path, policy: &str) {
    let path = data_dir.join("manifest.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let current = text
        .lines()
        .filter(|l| l.trim_start().starts_with("snapshot_policy:"))
        .count();
    assert_eq!(current, 1, "one snapshot_policy line in {text}");
    let edited: String = text
        .lines()
        .map(|l| match l.find("snapshot_policy:") {
            Some(at) => format!("{}snapshot_policy: {policy}\n", &l[..at]),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, edited).unwrap();
    let reloaded = client
        .admin(Method::POST, "/admin/reload", None)
        .await
        .unwrap();
    assert_eq!(reloaded["changed"], json!([TY]), "{reloaded}");
    let listed = client
        .admin(Method::GET, "/admin/aggregates", None)
        .await
        .unwrap();
    assert_eq!(
        listed["aggregates"][0]["snapshot_policy"], policy,
        "{listed}"
    );
}

crate::on_both_logs!(a_rebuild_policy_deploy_rebuilds_the_index_in_the_background);

/// 300 accounts (balances 1 to 1000, a third after a withdrawal) indexed by v1; snapshot policy
/// `rebuild`; v2 deployed: `GET /admin/index` shows the rebuild of all 300 with v2 until it
/// finishes with none failed, queries keep answering meanwhile, and afterwards every account is
/// listed at its balance, its state read is v2's, and new v2 commands are indexed. A rollback to
/// v1 rebuilds them all again with v1.
async fn a_rebuild_policy_deploy_rebuilds_the_index_in_the_background(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e index rebuild on JetStream") else {
        return;
    };
    let data_dir = env.dir.path().join("host");
    let host = env.start(&[]);
    let client = host.client();
    let v1 = deploy(&client, TY, example_artifacts::BANK_ACCOUNT).await;

    const N: usize = 300;
    let plan: Vec<(String, String, i64, i64)> = (0..N)
        .map(|i| {
            let deposit = 1 + ((i * 37) % 1000) as i64;
            let withdraw = if i % 3 == 0 { deposit / 2 } else { 0 };
            (new_id(), format!("owner-{i}"), deposit, withdraw)
        })
        .collect();
    futures::stream::iter(plan.iter())
        .for_each_concurrent(8, |(id, owner, deposit, withdraw)| {
            let client = client.clone();
            async move {
                client
                    .send(TY, id, "open", &json!({ "owner": owner }))
                    .await
                    .unwrap();
                client
                    .send(TY, id, "deposit", &json!({ "amount": deposit }))
                    .await
                    .unwrap();
                if *withdraw > 0 {
                    client
                        .send(TY, id, "withdraw", &json!({ "amount": withdraw }))
                        .await
                        .unwrap();
                }
            }
        })
        .await;
    let mut expected: BTreeMap<String, Account> = plan
        .iter()
        .map(|(id, owner, deposit, withdraw)| {
            let account = Account {
                owner: owner.clone(),
                balance: deposit - withdraw,
                version: if *withdraw > 0 { 3 } else { 2 },
            };
            (id.clone(), account)
        })
        .collect();

    let before = caught_up(&client, Duration::from_secs(30)).await;
    assert!(
        rebuild_of(&before).is_none(),
        "a rebuild before any: {before}"
    );
    let (items, pages) = query_all(&client, 64).await;
    assert_eq!(pages, N.div_ceil(64), "pages of 64");
    assert_items(&items, &expected);

    set_snapshot_policy(&client, &data_dir, "rebuild").await;
    let policy_set = Instant::now();
    // The policy change alone (same component) starts no rebuild: let the index's registry
    // check (every second) run at least once, then look (an absence cannot be polled for).
    tokio::time::sleep(
        (policy_set + Duration::from_millis(1500)).saturating_duration_since(Instant::now()),
    )
    .await;
    let status = index_status(&client).await;
    assert!(
        rebuild_of(&status).is_none(),
        "a policy change without a new component started a rebuild: {status}"
    );

    let deployed = client
        .deploy(TY, crate::support::wasm(example_artifacts::BANK_ACCOUNT_V2))
        .await
        .unwrap();
    let v2 = deployed["component"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    assert_eq!(deployed["changed"], true, "{deployed}");

    let (rebuilt, watched) = watch_rebuild(&client, &v2, &expected).await;
    assert_finished(&rebuilt, &v2, N);
    eprintln!(
        "index rebuild ({backend:?}): {N} accounts rebuilt with v2 in {} ms (seen finished {:?} \
         after the deploy answered); {} polls, {} while running, first partial progress {:?}, \
         {} full queries answered while running",
        rebuilt["elapsed_ms"],
        watched.waited,
        watched.polls,
        watched.running_polls,
        watched.partial,
        watched.queries_while_running
    );

    let status = caught_up(&client, Duration::from_secs(30)).await;
    assert_eq!(rebuild_of(&status), Some(&rebuilt), "{status}");
    let (items, _) = query_all(&client, 64).await;
    assert_items(&items, &expected);
    // The command path under `rebuild` ignores v1's states too: every state read is v2's and
    // matches the index entry.
    for (id, item) in &items {
        let state = client.state(TY, id).await.unwrap();
        assert_eq!(state["component"], v2.as_str(), "{id}: {state}");
        assert_eq!(
            (&state["version"], &state["state"]),
            (&item["version"], &item["state"]),
            "{id}"
        );
    }

    // New commands run on v2 (a deposit records its currency) and the index follows them.
    for (id, a) in expected.iter_mut().take(10) {
        let answer = client
            .send(TY, id, "deposit", &json!({ "amount": 5 }))
            .await
            .unwrap();
        assert_eq!(answer["component"], v2.as_str(), "{answer}");
        assert_eq!(
            (
                answer["events"][0]["schema_version"].as_u64(),
                answer["events"][0]["payload"]["currency"].as_str()
            ),
            (Some(2), Some("EUR")),
            "{answer}"
        );
        a.balance += 5;
        a.version += 1;
        let page = client
            .query(
                TY,
                Some(&format!("id == '{id}' && state.balance == {}", a.balance)),
                None,
                None,
            )
            .await
            .unwrap();
        assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    }

    // A rollback changes the component back: every entry is rebuilt again, with v1 (which reads
    // v2's deposits: the currency is a field it ignores).
    let rolled = client
        .admin(
            Method::POST,
            &format!("/admin/aggregates/{TY}/rollback"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rolled["component"], v1.as_str(), "{rolled}");
    let (rebuilt, watched) = watch_rebuild(&client, &v1, &expected).await;
    assert_finished(&rebuilt, &v1, N);
    eprintln!(
        "index rebuild after the rollback ({backend:?}): {N} accounts in {} ms, {} polls",
        rebuilt["elapsed_ms"], watched.polls
    );
    caught_up(&client, Duration::from_secs(30)).await;
    let (items, _) = query_all(&client, 1000).await;
    assert_items(&items, &expected);
}

/// A deposit a writer sent, with its command id.
#[derive(Debug, Clone)]
struct Deposit {
    id: String,
    command_id: String,
    amount: i64,
}

fn kill_9(host: &mut HostProcess) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &host.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL failed");
    let exit = host.wait(Duration::from_secs(10));
    assert_eq!(exit.signal(), Some(9), "{exit:?}");
}

/// Every account in the index equals its state read (`GET /aggregates/{type}/{id}`), over pages
/// of `limit`; returns the items.
async fn index_equals_state_reads(
    client: &Client,
    accounts: &[String],
    limit: usize,
) -> BTreeMap<String, Value> {
    let (items, pages) = query_all(client, limit).await;
    assert_eq!(
        pages,
        accounts.len().div_ceil(limit).max(1),
        "pages of {limit}"
    );
    let want: BTreeSet<&String> = accounts.iter().collect();
    assert_eq!(items.keys().collect::<BTreeSet<_>>(), want);
    for id in accounts {
        let state = client.state(TY, id).await.unwrap();
        let item = &items[id];
        assert_eq!(
            (&item["version"], &item["state"]),
            (&state["version"], &state["state"]),
            "{id}: the index has {item}, the state read {state}"
        );
    }
    items
}

/// The host's `/admin/index` position, log position, the `/metrics` gauge and a query's
/// `position` agree once the index has caught up.
async fn positions_meet(client: &Client) -> u64 {
    let status = caught_up(client, Duration::from_secs(60)).await;
    let position = status["position"].as_u64().unwrap();
    assert!(position > 0, "{status}");
    assert_eq!(index_position_gauge(client).await, position, "{status}");
    let page = client.query(TY, None, Some(1), None).await.unwrap();
    assert_eq!(page["position"].as_u64(), Some(position), "{page}");
    position
}

crate::on_both_logs!(the_index_survives_a_kill_and_catches_up);

/// 40 accounts, 4 writers depositing with command ids; the host is SIGKILLed after 400 deposits
/// were acknowledged. Restarted on the same data directory (JetStream: the same NATS), the index
/// reaches the log's position; a query over all pages equals every account's state read, which
/// holds every acknowledged deposit (and perhaps the one each writer had in flight); retried
/// with their ids, those in flight apply once, and the index shows the exact sums. Then a host
/// without the index (`state_index: false`) writes more and is SIGKILLed too; the next host with
/// the index catches up over commits it never saw and again equals the state reads.
async fn the_index_survives_a_kill_and_catches_up(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e index kill -9 on JetStream") else {
        return;
    };
    const ACCOUNTS: usize = 40;
    const WRITERS: usize = 4;
    const KILL_AFTER: usize = 400;
    let mut host = env.start(&[]);
    let client = host.client();
    deploy(&client, TY, example_artifacts::BANK_ACCOUNT).await;
    let accounts: Vec<String> = (0..ACCOUNTS).map(|_| new_id()).collect();
    for id in &accounts {
        client
            .send(TY, id, "open", &json!({ "owner": "crash" }))
            .await
            .unwrap();
    }

    let acked_count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, accounts, acked_count, killed) = (
            client.clone(),
            accounts.clone(),
            acked_count.clone(),
            killed.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..100_000usize {
                let d = Deposit {
                    id: accounts[(w + n * 7) % accounts.len()].clone(),
                    command_id: new_id(),
                    amount: 1 + ((w * 7919 + n * 31) % 97) as i64,
                };
                let options = CommandOptions {
                    command_id: Some(d.command_id.clone()),
                    ..CommandOptions::default()
                };
                match client
                    .send_with(
                        TY,
                        &d.id,
                        "deposit",
                        &json!({ "amount": d.amount }),
                        &options,
                    )
                    .await
                {
                    Ok(answer) => {
                        assert_eq!(
                            answer["events"].as_array().map(Vec::len),
                            Some(1),
                            "{answer}"
                        );
                        acked.push(d);
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert!(
                            killed.load(Ordering::SeqCst),
                            "a deposit failed before the kill: {e}"
                        );
                        return (acked, Some(d));
                    }
                }
            }
            panic!("writer {w} never saw the kill");
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked_count.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "{KILL_AFTER} deposits took over 120 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    killed.store(true, Ordering::SeqCst);
    kill_9(&mut host);
    let mut acked: Vec<Deposit> = Vec::new();
    let mut in_flight: Vec<Deposit> = Vec::new();
    for writer in writers {
        let (a, f) = writer.await.unwrap();
        acked.extend(a);
        in_flight.extend(f);
    }
    assert_eq!(in_flight.len(), WRITERS, "every writer stopped at the kill");

    // Restart on the same data directory: the index goes on from its checkpoint.
    let host = env.start(&[]);
    let client = host.client();
    let after_restart = index_status(&client).await;
    positions_meet(&client).await;
    let mut floor: HashMap<&str, (i64, u64)> = HashMap::new();
    for d in &acked {
        let f = floor.entry(d.id.as_str()).or_default();
        f.0 += d.amount;
        f.1 += 1;
    }
    let items = index_equals_state_reads(&client, &accounts, 7).await;
    for id in &accounts {
        let (sum, count) = floor.get(id.as_str()).copied().unwrap_or_default();
        let extra: Vec<&Deposit> = in_flight.iter().filter(|d| &d.id == id).collect();
        let (balance, version) = (
            items[id]["state"]["balance"].as_i64().unwrap(),
            items[id]["version"].as_u64().unwrap(),
        );
        let extra_sum: i64 = extra.iter().map(|d| d.amount).sum();
        assert!(
            (sum..=sum + extra_sum).contains(&balance)
                && (1 + count..=1 + count + extra.len() as u64).contains(&version),
            "{id}: balance {balance} version {version}, acknowledged {count} deposits of {sum} \
             in all, {} more were in flight",
            extra.len()
        );
    }
    eprintln!(
        "index after kill -9 ({backend:?}): {} deposits acknowledged, {} in flight; on restart \
         the index was at {} of {}",
        acked.len(),
        in_flight.len(),
        after_restart["position"],
        after_restart["log_position"]
    );

    // Those in flight, retried with their ids, apply once: the sums are exact.
    for d in &in_flight {
        let options = CommandOptions {
            command_id: Some(d.command_id.clone()),
            ..CommandOptions::default()
        };
        client
            .send_with(
                TY,
                &d.id,
                "deposit",
                &json!({ "amount": d.amount }),
                &options,
            )
            .await
            .unwrap_or_else(|e| panic!("retry of {d:?}: {e}"));
    }
    let mut expected: BTreeMap<String, Account> = accounts
        .iter()
        .map(|id| {
            let a = Account {
                owner: "crash".into(),
                balance: 0,
                version: 1,
            };
            (id.clone(), a)
        })
        .collect();
    for d in acked.iter().chain(&in_flight) {
        let a = expected.get_mut(&d.id).unwrap();
        a.balance += d.amount;
        a.version += 1;
    }
    positions_meet(&client).await;
    let items = index_equals_state_reads(&client, &accounts, 7).await;
    assert_items(&items, &expected);
    drop(client);

    // Commits the index never saw: a host without the index writes, and is killed too.
    let mut host = {
        let mut host = host;
        host.stop();
        env.start(&[("AGGREGATE_STATE_INDEX", "false")])
    };
    let client = host.client();
    assert_eq!(
        client
            .admin(Method::GET, "/admin/index", None)
            .await
            .unwrap(),
        json!({ "enabled": false })
    );
    for (n, (id, a)) in expected.iter_mut().enumerate() {
        let amount = 1000 + n as i64;
        client
            .send(TY, id, "deposit", &json!({ "amount": amount }))
            .await
            .unwrap();
        a.balance += amount;
        a.version += 1;
    }
    kill_9(&mut host);
    let host = env.start(&[]);
    let client = host.client();
    let after_restart = index_status(&client).await;
    let position = positions_meet(&client).await;
    let items = index_equals_state_reads(&client, &accounts, 7).await;
    assert_items(&items, &expected);
    eprintln!(
        "index over commits it never saw ({backend:?}): at {} of {} on restart, then {position}",
        after_restart["position"], after_restart["log_position"]
    );
}
