//! Read side benchmark (a bench binary, not a timed test), on the embedded event log, in this
//! process (no HTTP):
//!
//! 1. **Index maintenance**: the same closed loops of `deposit` commands (1 and 32 writers, each
//!    on its own aggregate) against two hosts, one with `state_index: true` and one with
//!    `false`, in alternating rounds of `BENCH_SECS` (default 5), so both see the same machine
//!    load; commands/s per row and the ratio on/off. After each round with the index, the bench
//!    waits until the index has applied every commit and charges that time to the round.
//! 2. **Queries** over `BENCH_AGGREGATES` (default 100,000) bank accounts of one tenant, through
//!    `StateIndex::query_page` on a filter thread as the gateway runs it: the first page of a
//!    filter that half the accounts match, a filter that matches 1 in 1000 (the whole type is
//!    scanned), no filter, and every page of the half filter; p50/p99 over repeated queries.
//! 3. **Rebuild**: snapshot policy `rebuild`, deploy `bank-account-v2`, time until the index's
//!    background rebuild of the type reports finished.
//!
//! `cargo bench -p aggregate-host --bench read_side`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::app::Host;
use aggregate_host::config::Config;
use aggregate_host::query::filter::{on_filter_thread, Filter};
use aggregate_host::query::index::{Query, StateIndex};
use aggregate_host::registry::SnapshotPolicy;
use aggregate_host::service::{CommandService, Submit};
use aggregate_host::telemetry::Metrics;
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandMetadata, Json, TenantId,
};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn ty() -> AggregateType {
    AggregateType::new("bank-account").unwrap()
}

fn submit(id: AggregateId, command: &str, payload: String) -> Submit {
    Submit {
        command_id: None,
        target: AggregateRef {
            tenant: TenantId::single(),
            aggregate_type: ty(),
            aggregate_id: id,
        },
        command_type: command.into(),
        payload: Json::parse(&payload).unwrap(),
        metadata: CommandMetadata::default(),
    }
}

async fn open_host(dir: &std::path::Path, state_index: bool) -> Host {
    let host = Host::open(Config {
        data_dir: dir.to_path_buf(),
        state_index,
        ..Config::default()
    })
    .await
    .expect("host");
    host.registry
        .deploy(
            &ty(),
            &std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap(),
            None,
        )
        .expect("deploy");
    host.service.set_observer(Metrics::new());
    host
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `writers` closed loops of deposits for `secs`; commands/s, p50, p99.
async fn deposits(
    service: &Arc<CommandService>,
    ids: &[AggregateId],
    writers: usize,
    secs: Duration,
) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + secs;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in ids.iter().take(writers).copied() {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                service
                    .submit(
                        &TenantId::single(),
                        submit(id, "deposit", r#"{"amount":1}"#.into()),
                    )
                    .await
                    .expect("deposit");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort();
    (
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    )
}

async fn open_accounts(service: &Arc<CommandService>, ids: &[AggregateId]) {
    for id in ids {
        service
            .submit(
                &TenantId::single(),
                submit(*id, "open", r#"{"owner":"bench"}"#.into()),
            )
            .await
            .expect("open");
    }
}

/// Part 1: commands/s with the index on and off, alternating rounds.
async fn index_cost(secs: Duration, rounds: usize) {
    let (dir_on, dir_off) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on = open_host(dir_on.path(), true).await;
    let off = open_host(dir_off.path(), false).await;
    let ids: Vec<AggregateId> = (0..32).map(|_| AggregateId::generate()).collect();
    open_accounts(&on.service, &ids).await;
    open_accounts(&off.service, &ids).await;
    println!("\n## Index maintenance: commands/s with the state index on and off ({rounds} alternating rounds of {} s each)\n", secs.as_secs());
    println!("| writers | round | index | commands/s | index caught up after (ms) | commands/s over the round and the catch-up | p50 ms | p99 ms |");
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for writers in [1usize, 32] {
        let (mut sum_on, mut sum_off) = (0.0, 0.0);
        for round in 0..rounds {
            // Alternate which goes first, so neither always runs on a warmer machine.
            let order: [(&str, &Host); 2] = if round % 2 == 0 {
                [("on", &on), ("off", &off)]
            } else {
                [("off", &off), ("on", &on)]
            };
            for (name, host) in order {
                let (per_sec, p50, p99) = deposits(&host.service, &ids, writers, secs).await;
                // The index may still be applying the round's commits: wait for it, so that it
                // does not run during the other host's round, and charge that time to this one.
                let (catch_up, charged) = if name == "on" {
                    let catch_up = caught_up(host).await;
                    let commands = per_sec * secs.as_secs_f64();
                    (catch_up, commands / (secs + catch_up).as_secs_f64())
                } else {
                    (Duration::ZERO, per_sec)
                };
                if name == "on" {
                    sum_on += charged;
                } else {
                    sum_off += charged;
                }
                println!(
                    "| {writers} | {round} | {name} | {per_sec:.0} | {:.0} | {charged:.0} | {:.2} | {:.2} |",
                    ms(catch_up),
                    ms(p50),
                    ms(p99)
                );
            }
        }
        println!(
            "| {writers} | all | on/off | | | **{:.3}** ({:+.1} %) | | |",
            sum_on / sum_off,
            (sum_on / sum_off - 1.0) * 100.0
        );
    }
}

/// Wait until the index applied everything in the log; how long that took.
async fn caught_up(host: &Host) -> Duration {
    let started = Instant::now();
    let position = host.service.log().position().await.unwrap();
    host.index
        .as_ref()
        .unwrap()
        .wait_for(position, Duration::from_secs(600))
        .await
        .expect("index catches up");
    started.elapsed()
}

/// Run `filter` as the gateway does: compile and query on a filter thread.
async fn query(
    index: &Arc<StateIndex>,
    filter: Option<&str>,
    limit: usize,
    page_token: Option<String>,
) -> aggregate_host::query::index::Page {
    let (index, filter) = (index.clone(), filter.map(str::to_string));
    on_filter_thread(move || {
        let filter = filter.map(|f| Filter::compile(&f).expect("filter"));
        index.query_page(&Query {
            tenant: TenantId::single(),
            aggregate_type: ty(),
            filter,
            limit,
            page_token,
            budget: Duration::from_secs(2),
        })
    })
    .await
    .expect("filter thread")
    .expect("query")
}

/// Part 2 and 3.
async fn queries_and_rebuild(aggregates: usize) {
    let dir = tempfile::tempdir().unwrap();
    let host = open_host(dir.path(), true).await;
    let ids: Vec<AggregateId> = (0..aggregates).map(|_| AggregateId::generate()).collect();
    // Balances 0..999, spread over the ids.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(ids);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (service, ids, next) = (host.service.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(n) else { break };
                service
                    .submit(
                        &TenantId::single(),
                        submit(*id, "open", r#"{"owner":"bench"}"#.into()),
                    )
                    .await
                    .expect("open");
                let amount = (n * 7919) % 1000;
                if amount > 0 {
                    service
                        .submit(
                            &TenantId::single(),
                            submit(*id, "deposit", format!(r#"{{"amount":{amount}}}"#)),
                        )
                        .await
                        .expect("deposit");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let loaded = started.elapsed();
    let lag = caught_up(&host).await;
    println!(
        "\n## Queries over {aggregates} aggregates of one tenant\n\nLoaded in {:.1} s ({:.0} commands/s with the index on); the index caught up {:.0} ms after the last command.\n",
        loaded.as_secs_f64(),
        (aggregates * 2) as f64 / loaded.as_secs_f64(),
        ms(lag)
    );
    let index = host.index.clone().unwrap();
    println!("| query | limit | runs | matches per page | scanned per page | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (filter, limit, runs) in [
        (Some("state.balance >= 500"), 100, 200),
        (None, 100, 200),
        (None, 1000, 50),
        (Some("state.balance == 777"), 100, 10),
        (
            Some("state.owner == 'bench' && state.balance % 10 == 3 && version > 1"),
            100,
            100,
        ),
    ] {
        let mut lat = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            let page = query(&index, filter, limit, None).await;
            lat.push(t.elapsed());
            last = Some(page);
        }
        lat.sort();
        let page = last.unwrap();
        println!(
            "| `{}` first page | {limit} | {runs} | {} | {} | {:.2} | {:.2} |",
            filter.unwrap_or("(none)"),
            page.items.len(),
            page.scanned,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
    }
    // Every page of the half filter.
    let started = Instant::now();
    let (mut pages, mut matched, mut token) = (0, 0, None);
    loop {
        let page = query(&index, Some("state.balance >= 500"), 1000, token).await;
        pages += 1;
        matched += page.items.len();
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    println!(
        "| `state.balance >= 500` every page | 1000 | 1 | {matched} in {pages} pages | {aggregates} | total {:.0} ms | |",
        ms(started.elapsed())
    );

    // Part 3: rebuild with bank-account-v2.
    host.registry
        .update(&ty(), |e| {
            e.snapshot_policy = SnapshotPolicy::Rebuild;
            Ok(())
        })
        .unwrap();
    let deployed = host
        .registry
        .deploy(
            &ty(),
            &std::fs::read(example_artifacts::BANK_ACCOUNT_V2).unwrap(),
            None,
        )
        .expect("deploy v2");
    let started = Instant::now();
    let mut last_print = Instant::now();
    let status = loop {
        let status = index.status().rebuilds.get("bank-account").cloned();
        if let Some(s) = &status {
            if s.component == deployed.component && s.finished_at.is_some() {
                break s.clone();
            }
            if last_print.elapsed() > Duration::from_secs(5) {
                last_print = Instant::now();
                eprintln!("rebuild: {} of {}", s.done, s.total);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "rebuild did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "\n## Rebuild of the index of {} aggregates (deploy of bank-account-v2 with snapshot policy rebuild)\n\n{} done, {} failed; {} ms by the index's own clock ({:.0} aggregates/s); {:.0} ms from the deploy (includes up to 1 s until the index checks components).",
        status.total,
        status.done,
        status.failed,
        status.elapsed_ms.unwrap_or(0),
        status.total as f64 / (status.elapsed_ms.unwrap_or(1).max(1) as f64 / 1000.0),
        ms(started.elapsed())
    );
}

fn main() {
    let secs = Duration::from_secs(env_number("BENCH_SECS", 5));
    let rounds = env_number("BENCH_ROUNDS", 4) as usize;
    let aggregates = env_number("BENCH_AGGREGATES", 100_000) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        index_cost(secs, rounds).await;
        queries_and_rebuild(aggregates).await;
    });
}
