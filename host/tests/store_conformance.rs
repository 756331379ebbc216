//! One conformance suite for the event log, written once and run unchanged against both
//! implementations: `embedded::*` (fjall in a temporary directory) and `jetstream::*` (a
//! nats-server started per test). Plus a few checks that only make sense for one of them.
//!
//! The JetStream tests need `nats-server` on PATH: they fail when `CI` is set and it is missing,
//! and are skipped with a notice otherwise.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aggregate_host::store::{
    BreakerConfig, BreakerState, Commit, ConnectMode, EmbeddedConfig, EmbeddedLog, EventLog, Feed,
    FeedFilter, FeedItem, JetStreamConfig, JetStreamLog, StoreError,
};
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandId, CommandMetadata, ComponentHash, Event,
    Json, TenantId, Version,
};
use futures::StreamExt;
use support::nats::NatsServer;

// ---------------------------------------------------------------------------------------------
// Backends

/// A way to open (and reopen) one log's storage.
#[async_trait::async_trait]
trait Backend: Send + Sync {
    /// Open the log on this backend's storage (the previous instance must be dropped).
    async fn open(&self) -> Arc<dyn EventLog>;
    /// Restart the storage itself (JetStream: SIGKILL and restart nats-server). Call with no log open.
    fn restart(&self);
}

struct EmbeddedBackend {
    dir: tempfile::TempDir,
}

impl EmbeddedBackend {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait::async_trait]
impl Backend for EmbeddedBackend {
    async fn open(&self) -> Arc<dyn EventLog> {
        // A feed of a dropped log may hold the database briefly: wait for its lock.
        let dir = self.dir.path().to_path_buf();
        let log = tokio::task::spawn_blocking(move || {
            EmbeddedLog::open_waiting(dir, Duration::from_secs(10))
        })
        .await
        .unwrap();
        Arc::new(log.expect("open embedded log"))
    }
    fn restart(&self) {}
}

struct JetStreamBackend {
    server: parking_lot::Mutex<NatsServer>,
    config: JetStreamConfig,
}

impl JetStreamBackend {
    fn start(test: &str) -> Option<Self> {
        Self::start_with(test, JetStreamConfig::default())
    }

    fn start_with(test: &str, config: JetStreamConfig) -> Option<Self> {
        let server = NatsServer::start_or_skip(test)?;
        Some(Self {
            server: parking_lot::Mutex::new(server),
            config,
        })
    }

    fn url(&self) -> String {
        self.server.lock().url()
    }
}

#[async_trait::async_trait]
impl Backend for JetStreamBackend {
    async fn open(&self) -> Arc<dyn EventLog> {
        let log = JetStreamLog::connect(&self.url(), self.config.clone())
            .await
            .expect("open JetStream log");
        Arc::new(log)
    }
    fn restart(&self) {
        self.server.lock().restart();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn agg(tenant_id: &str, ty: &str) -> AggregateRef {
    AggregateRef {
        tenant: tenant(tenant_id),
        aggregate_type: AggregateType::new(ty).unwrap(),
        aggregate_id: AggregateId::generate(),
    }
}

fn event(aggregate: &AggregateRef, version: u64, command: CommandId, n: usize) -> Event {
    Event {
        aggregate: aggregate.clone(),
        version: Version(version),
        event_type: "happened".into(),
        schema_version: 1,
        payload: Json::from_value(&serde_json::json!({ "n": n, "v": version })),
        causation_id: command,
        metadata: CommandMetadata {
            correlation_id: Some("corr-1".into()),
            traceparent: None,
            host: None,
            actor: None,
        },
        component: ComponentHash::of(b"test component"),
        recorded_at: chrono::Utc::now(),
    }
}

/// A commit of `count` events on top of `expected`, with a fresh command id.
fn commit(aggregate: &AggregateRef, expected: u64, count: usize) -> Commit {
    commit_with_id(aggregate, expected, count, CommandId::generate())
}

fn commit_with_id(
    aggregate: &AggregateRef,
    expected: u64,
    count: usize,
    command_id: CommandId,
) -> Commit {
    Commit {
        aggregate: aggregate.clone(),
        expected: Version(expected),
        command_id,
        events: (0..count)
            .map(|i| event(aggregate, expected + 1 + i as u64, command_id, i))
            .collect(),
    }
}

/// A feed's events, one by one.
type EventStream = futures::stream::BoxStream<'static, Result<Event, StoreError>>;

async fn subscribe_events(
    log: &dyn EventLog,
    tenant: &TenantId,
    aggregate_type: Option<&AggregateType>,
) -> EventStream {
    let feed = log
        .subscribe(FeedFilter::tenant(tenant, aggregate_type), None)
        .await
        .unwrap();
    feed.flat_map(|item| {
        futures::stream::iter(match item {
            Ok(commit) => commit.events.iter().cloned().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        })
    })
    .boxed()
}

async fn next_commit(feed: &mut Feed) -> FeedItem {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("a commit within 10 s")
        .expect("the feed goes on")
        .expect("a commit, not an error")
}

fn versions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.version.0).collect()
}

async fn next_event(stream: &mut EventStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
        .expect("an event, not an error")
}

async fn nothing_more(stream: &mut EventStream) {
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!("unexpected item on the subscription: {item:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

async fn append_and_read_in_order(b: &dyn Backend) {
    let log = b.open().await;
    let a = agg("t1", "account");
    assert_eq!(log.version(&a).await.unwrap(), Version(0));
    assert!(log.read(&a, Version(0)).await.unwrap().is_empty());

    let mut expected_events = Vec::new();
    let mut last_position = 0;
    let mut v = 0;
    for count in [1, 3, 2] {
        let c = commit(&a, v, count);
        let appended = log.append(c.clone()).await.unwrap();
        assert!(!appended.duplicate);
        assert_eq!(appended.aggregate, a);
        assert_eq!(appended.version, Version(v + count as u64));
        assert_eq!(appended.events, c.events);
        assert!(appended.position > last_position, "positions grow");
        last_position = appended.position;
        expected_events.extend(c.events);
        v += count as u64;
    }
    let all = log.read(&a, Version(0)).await.unwrap();
    assert_eq!(versions(&all), (1..=6).collect::<Vec<_>>());
    assert_eq!(all, expected_events, "events come back exactly as appended");
    assert_eq!(
        versions(&log.read(&a, Version(2)).await.unwrap()),
        vec![3, 4, 5, 6]
    );
    assert_eq!(
        versions(&log.read(&a, Version(4)).await.unwrap()),
        vec![5, 6]
    );
    assert_eq!(versions(&log.read(&a, Version(5)).await.unwrap()), vec![6]);
    assert!(log.read(&a, Version(6)).await.unwrap().is_empty());
    assert!(log.read(&a, Version(100)).await.unwrap().is_empty());
    assert_eq!(log.version(&a).await.unwrap(), Version(6));
}

async fn wrong_expected_version_is_a_conflict(b: &dyn Backend) {
    let log = b.open().await;
    let a = agg("t1", "account");
    log.append(commit(&a, 0, 2)).await.unwrap();
    for stale in [0, 1, 3, 7] {
        match log.append(commit(&a, stale, 1)).await {
            Err(StoreError::Conflict {
                aggregate,
                expected,
                actual,
            }) => {
                assert_eq!(aggregate, a);
                assert_eq!(expected, Version(stale));
                assert_eq!(actual, Version(2));
            }
            other => panic!("expected a conflict for expected version {stale}, got {other:?}"),
        }
    }
    assert_eq!(log.version(&a).await.unwrap(), Version(2));
    assert_eq!(
        versions(&log.read(&a, Version(0)).await.unwrap()),
        vec![1, 2]
    );
    // The right version still works after conflicts.
    log.append(commit(&a, 2, 1)).await.unwrap();
    assert_eq!(log.version(&a).await.unwrap(), Version(3));
}

async fn malformed_commit_is_invalid(b: &dyn Backend) {
    let log = b.open().await;
    let a = agg("t1", "account");
    let mut c = commit(&a, 0, 2);
    c.events[1].version = Version(5);
    assert!(matches!(
        log.append(c).await,
        Err(StoreError::InvalidCommit(_))
    ));
    let mut c = commit(&a, 0, 1);
    c.events[0].aggregate = agg("t2", "account");
    assert!(matches!(
        log.append(c).await,
        Err(StoreError::InvalidCommit(_))
    ));
    assert_eq!(log.version(&a).await.unwrap(), Version(0));
}

async fn concurrent_appenders_retry_until_all_succeed(b: &dyn Backend) {
    let log = b.open().await;
    let a = agg("t1", "counter");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let log = log.clone();
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let command_id = CommandId::generate();
            let mut conflicts = 0;
            loop {
                let v = log.version(&a).await.unwrap();
                match log.append(commit_with_id(&a, v.0, 1, command_id)).await {
                    Ok(appended) => return (command_id, appended, conflicts),
                    Err(StoreError::Conflict { .. }) => {
                        conflicts += 1;
                        assert!(conflicts < 1000, "livelock");
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let (command_id, appended, _) = t.await.unwrap();
        assert!(!appended.duplicate);
        assert!(
            seen.insert(appended.version),
            "two commits got version {}",
            appended.version
        );
        assert_eq!(appended.events[0].causation_id, command_id);
    }
    let events = log.read(&a, Version(0)).await.unwrap();
    assert_eq!(versions(&events), (1..=20).collect::<Vec<_>>());
    let causes: HashSet<_> = events.iter().map(|e| e.causation_id).collect();
    assert_eq!(causes.len(), 20, "every command's event exactly once");
    assert_eq!(log.version(&a).await.unwrap(), Version(20));
}

async fn concurrent_duplicates_write_once(b: &dyn Backend) {
    let log = b.open().await;
    let a = agg("t1", "account");
    let c = commit(&a, 0, 2);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let log = log.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move { log.append(c).await }));
    }
    let mut originals = 0;
    let mut positions = HashSet::new();
    for t in tasks {
        let appended = t
            .await
            .unwrap()
            .expect("every attempt answers with the one result");
        originals += usize::from(!appended.duplicate);
        positions.insert(appended.position);
        assert_eq!(appended.events, c.events);
    }
    assert_eq!(originals, 1, "exactly one attempt wrote");
    assert_eq!(positions.len(), 1, "all answers name the same commit");
    assert_eq!(log.read(&a, Version(0)).await.unwrap(), c.events);
}

async fn tenants_stay_separate(b: &dyn Backend) {
    let log = b.open().await;
    let a1 = agg("t1", "account");
    let a2 = AggregateRef {
        tenant: tenant("t2"),
        ..a1.clone()
    };
    // Prefix-sharing tenant names must not leak either.
    let a3 = AggregateRef {
        tenant: tenant("t1-x"),
        ..a1.clone()
    };
    let c1 = commit(&a1, 0, 2);
    log.append(c1.clone()).await.unwrap();
    log.append(commit(&a2, 0, 1)).await.unwrap();
    assert_eq!(log.version(&a1).await.unwrap(), Version(2));
    assert_eq!(log.version(&a2).await.unwrap(), Version(1));
    assert_eq!(log.version(&a3).await.unwrap(), Version(0));
    let e1 = log.read(&a1, Version(0)).await.unwrap();
    let e2 = log.read(&a2, Version(0)).await.unwrap();
    assert!(e1.iter().all(|e| e.aggregate.tenant == tenant("t1")));
    assert!(e2.iter().all(|e| e.aggregate.tenant == tenant("t2")));
    assert_eq!(e2.len(), 1);
    assert!(log.read(&a3, Version(0)).await.unwrap().is_empty());
    // Appending at t2's version 1 with t1's history at 2 is judged per tenant.
    log.append(commit(&a2, 1, 1)).await.unwrap();
    assert_eq!(log.version(&a1).await.unwrap(), Version(2));
    // A command id is scoped to its tenant.
    assert!(log
        .find_command(&tenant("t1"), &c1.command_id)
        .await
        .unwrap()
        .is_some());
    assert!(log
        .find_command(&tenant("t2"), &c1.command_id)
        .await
        .unwrap()
        .is_none());
    // The same command id in another tenant is a different command.
    let same_id_other_tenant = commit_with_id(&a3, 0, 1, c1.command_id);
    let appended = log.append(same_id_other_tenant).await.unwrap();
    assert!(!appended.duplicate);
    assert_eq!(appended.aggregate, a3);
    assert_eq!(log.version(&a3).await.unwrap(), Version(1));
}

async fn duplicate_command_returns_original(b: &dyn Backend) {
    let a = agg("t1", "account");
    let original = commit(&a, 0, 2);
    let first;
    {
        let log = b.open().await;
        first = log.append(original.clone()).await.unwrap();
        assert!(!first.duplicate);

        // Same command, stale expected version (a retry after a lost answer).
        let again = log.append(original.clone()).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.version, first.version);
        assert_eq!(again.events, first.events);
        assert_eq!(again.position, first.position);
        assert_eq!(again.aggregate, a);

        // Same command id at the current version with other events: still the original, nothing written.
        let different = commit_with_id(&a, 2, 3, original.command_id);
        let again = log.append(different).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.events, first.events);
        assert_eq!(log.version(&a).await.unwrap(), Version(2));
        assert_eq!(log.read(&a, Version(0)).await.unwrap(), original.events);

        let found = log
            .find_command(&a.tenant, &original.command_id)
            .await
            .unwrap()
            .expect("recorded");
        assert_eq!(
            (found.version, &found.events, found.position),
            (first.version, &first.events, first.position)
        );
        assert!(log
            .find_command(&a.tenant, &CommandId::generate())
            .await
            .unwrap()
            .is_none());
        log.flush().await.unwrap();
    }
    b.restart();
    let log = b.open().await;
    let again = log.append(original.clone()).await.unwrap();
    assert!(again.duplicate, "a duplicate is recognised after reopening");
    assert_eq!(again.events, first.events);
    let again = log
        .append(commit_with_id(&a, 2, 1, original.command_id))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(log.version(&a).await.unwrap(), Version(2));
    let found = log
        .find_command(&a.tenant, &original.command_id)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(found.events, first.events);
    // A new command still appends normally.
    log.append(commit(&a, 2, 1)).await.unwrap();
    assert_eq!(
        versions(&log.read(&a, Version(0)).await.unwrap()),
        vec![1, 2, 3]
    );
}

async fn empty_commit_is_recorded_for_idempotency(b: &dyn Backend) {
    let log = b.open().await;
    let a = agg("t1", "account");
    log.append(commit(&a, 0, 1)).await.unwrap();
    let empty = commit(&a, 1, 0);
    let appended = log.append(empty.clone()).await.unwrap();
    assert_eq!(appended.version, Version(1));
    assert!(appended.events.is_empty());
    let again = log.append(empty.clone()).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.version, Version(1));
    assert!(log
        .find_command(&a.tenant, &empty.command_id)
        .await
        .unwrap()
        .is_some());
    // An empty commit still checks the version.
    assert!(matches!(
        log.append(commit(&a, 0, 0)).await,
        Err(StoreError::Conflict { .. })
    ));
    // And the aggregate goes on normally.
    log.append(commit(&a, 1, 2)).await.unwrap();
    assert_eq!(
        versions(&log.read(&a, Version(0)).await.unwrap()),
        vec![1, 2, 3]
    );
}

async fn single_tenant_works(b: &dyn Backend) {
    let log = b.open().await;
    let a = AggregateRef {
        tenant: TenantId::single(),
        aggregate_type: AggregateType::new("account").unwrap(),
        aggregate_id: AggregateId::generate(),
    };
    let c = commit(&a, 0, 2);
    log.append(c.clone()).await.unwrap();
    log.append(commit(&a, 2, 1)).await.unwrap();
    assert_eq!(
        versions(&log.read(&a, Version(0)).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(log.version(&a).await.unwrap(), Version(3));
    assert_eq!(
        log.list_aggregates(&TenantId::single()).await.unwrap(),
        vec![(a.aggregate_type.clone(), a.aggregate_id)]
    );
    assert!(log
        .find_command(&TenantId::single(), &c.command_id)
        .await
        .unwrap()
        .is_some());
    assert!(log.append(c).await.unwrap().duplicate);
    // A named tenant does not see it.
    let other = AggregateRef {
        tenant: tenant("t1"),
        ..a.clone()
    };
    assert_eq!(log.version(&other).await.unwrap(), Version(0));
    assert!(log.list_aggregates(&tenant("t1")).await.unwrap().is_empty());
}

async fn list_aggregates_per_tenant(b: &dyn Backend) {
    let log = b.open().await;
    let mut t1 = [
        agg("t1", "account"),
        agg("t1", "account"),
        agg("t1", "order"),
    ];
    let t2 = agg("t2", "account");
    let prefixed = agg("t1x", "account");
    for a in t1.iter().chain([&t2, &prefixed]) {
        log.append(commit(a, 0, 1)).await.unwrap();
    }
    log.append(commit(&t1[0], 1, 1)).await.unwrap();
    let mut listed = log.list_aggregates(&tenant("t1")).await.unwrap();
    listed.sort();
    t1.sort_by(|x, y| {
        (&x.aggregate_type, x.aggregate_id).cmp(&(&y.aggregate_type, y.aggregate_id))
    });
    let want: Vec<_> = t1
        .iter()
        .map(|a| (a.aggregate_type.clone(), a.aggregate_id))
        .collect();
    assert_eq!(listed, want);
    assert_eq!(
        log.list_aggregates(&tenant("t2")).await.unwrap(),
        vec![(t2.aggregate_type.clone(), t2.aggregate_id)]
    );
    assert!(log.list_aggregates(&tenant("t3")).await.unwrap().is_empty());
}

async fn subscribe_receives_new_events_of_its_tenant_only(b: &dyn Backend) {
    let log = b.open().await;
    let acct = AggregateType::new("account").unwrap();
    let before = agg("t1", "account");
    log.append(commit(&before, 0, 1)).await.unwrap();

    let mut all = subscribe_events(log.as_ref(), &tenant("t1"), None).await;
    let mut accounts = subscribe_events(log.as_ref(), &tenant("t1"), Some(&acct)).await;
    let mut other_tenant = subscribe_events(log.as_ref(), &tenant("t2"), None).await;

    let t2 = agg("t2", "account");
    let t1x = agg("t1x", "account");
    let a = agg("t1", "account");
    let o = agg("t1", "order");
    log.append(commit(&t1x, 0, 1)).await.unwrap();
    let c_t2 = commit(&t2, 0, 1);
    log.append(c_t2.clone()).await.unwrap();
    let c_a = commit(&a, 0, 2);
    log.append(c_a.clone()).await.unwrap();
    let c_o = commit(&o, 0, 1);
    log.append(c_o.clone()).await.unwrap();
    let c_before = commit(&before, 1, 1);
    log.append(c_before.clone()).await.unwrap();

    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next_event(&mut all).await);
    }
    let want: Vec<Event> = c_a
        .events
        .iter()
        .chain(&c_o.events)
        .chain(&c_before.events)
        .cloned()
        .collect();
    assert_eq!(
        got, want,
        "t1's new events, in order, nothing older, nothing of t2 or t1x"
    );
    nothing_more(&mut all).await;

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_event(&mut accounts).await);
    }
    let want: Vec<Event> = c_a.events.iter().chain(&c_before.events).cloned().collect();
    assert_eq!(got, want, "only the account type");
    nothing_more(&mut accounts).await;

    assert_eq!(next_event(&mut other_tenant).await, c_t2.events[0]);
    nothing_more(&mut other_tenant).await;
}

/// A feed from a position replays the stored commits after it, then follows new ones; positions
/// grow; `position()` is the last commit's.
async fn subscribe_after_a_position_replays_then_follows(b: &dyn Backend) {
    let log = b.open().await;
    assert_eq!(log.position().await.unwrap(), 0, "an empty log is at 0");
    let a = agg("t1", "account");
    let o = agg("t1", "order");
    let other = agg("t2", "account");
    let mut appended = Vec::new();
    for (i, target) in [&a, &other, &o, &a, &other, &a].into_iter().enumerate() {
        let v = log.version(target).await.unwrap().0;
        let c = commit(target, v, 1 + i % 2);
        let done = log.append(c.clone()).await.unwrap();
        appended.push((done.position, c));
    }
    // A command with no events has a position but is in no tenant's feed.
    let va = log.version(&a).await.unwrap().0;
    let empty = log.append(commit(&a, va, 0)).await.unwrap();
    let last = appended.last().unwrap().0.max(empty.position);
    assert_eq!(log.position().await.unwrap(), last);
    let positions: Vec<u64> = appended.iter().map(|(p, _)| *p).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions grow: {positions:?}"
    );

    // From after the first t1 commit: the other t1 commits, in order, then new ones.
    let first = appended[0].0;
    let mut feed = log
        .subscribe(FeedFilter::tenant(&tenant("t1"), None), Some(first))
        .await
        .unwrap();
    for (position, c) in appended
        .iter()
        .skip(1)
        .filter(|(_, c)| c.aggregate.tenant == tenant("t1"))
    {
        let item = next_commit(&mut feed).await;
        assert_eq!(item.position, *position);
        assert_eq!(&item.events[..], &c.events[..]);
    }
    let c = commit(&o, 1, 1);
    let done = log.append(c.clone()).await.unwrap();
    let item = next_commit(&mut feed).await;
    assert_eq!(
        (item.position, &item.events[..]),
        (done.position, &c.events[..])
    );
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), feed.next()).await {
        panic!("unexpected item on the feed: {item:?}");
    }

    // Every tenant, one type, from the start: a feed of every tenant also carries the commit
    // with no events (so a reader of the whole log can count it as read).
    let mut feed = log
        .subscribe(
            FeedFilter {
                tenant: None,
                aggregate_type: Some(AggregateType::new("account").unwrap()),
            },
            Some(0),
        )
        .await
        .unwrap();
    let mut want: Vec<u64> = appended
        .iter()
        .filter(|(_, c)| c.aggregate.aggregate_type.as_str() == "account")
        .map(|(p, _)| *p)
        .collect();
    want.push(empty.position);
    let mut got = Vec::new();
    for _ in 0..want.len() {
        let item = next_commit(&mut feed).await;
        assert_eq!(item.events.is_empty(), item.position == empty.position);
        got.push(item.position);
    }
    assert_eq!(got, want);
}

/// A reader that drops its feed part-way and subscribes again after the last position it saw
/// ends up with exactly the log — while a writer keeps appending.
async fn a_resumed_feed_has_no_gap_and_no_duplicate(b: &dyn Backend) {
    let log = b.open().await;
    let t = tenant("t1");
    const COMMITS: usize = 300;
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let aggregates: Vec<AggregateRef> = (0..5).map(|_| agg("t1", "account")).collect();
            let noise = agg("t2", "account");
            let mut versions = [0u64; 5];
            for i in 0..COMMITS {
                let k = i % 5;
                let n = 1 + i % 3;
                log.append(commit(&aggregates[k], versions[k], n))
                    .await
                    .unwrap();
                versions[k] += n as u64;
                if i % 4 == 0 {
                    let v = log.version(&noise).await.unwrap().0;
                    log.append(commit(&noise, v, 1)).await.unwrap();
                }
                if i % 16 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            aggregates
        })
    };
    let mut seen: Vec<FeedItem> = Vec::new();
    let mut after = 0u64;
    let mut reconnects = 0;
    while seen.len() < COMMITS {
        let mut feed = log
            .subscribe(FeedFilter::tenant(&t, None), Some(after))
            .await
            .unwrap();
        // Read a random-ish number of commits, then drop the feed mid-stream.
        let take = 17 + reconnects * 13;
        for _ in 0..take {
            if seen.len() == COMMITS {
                break;
            }
            let item = next_commit(&mut feed).await;
            after = item.position;
            seen.push(item);
        }
        reconnects += 1;
    }
    let aggregates = writer.await.unwrap();
    assert!(reconnects >= 5, "the reader reconnected {reconnects} times");
    let positions: Vec<u64> = seen.iter().map(|i| i.position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "no duplicate, in order"
    );
    // Every event of t1 exactly once: per aggregate the versions 1..=n, in order.
    for a in &aggregates {
        let from_feed: Vec<Event> = seen
            .iter()
            .flat_map(|i| i.events.iter())
            .filter(|e| e.aggregate == *a)
            .cloned()
            .collect();
        assert_eq!(from_feed, log.read(a, Version(0)).await.unwrap(), "{a}");
    }
    assert!(seen.iter().all(|i| i.events[0].aggregate.tenant == t));
}

async fn reopen_keeps_everything(b: &dyn Backend) {
    let a = agg("t1", "account");
    let s = AggregateRef {
        tenant: TenantId::single(),
        ..agg("", "order")
    };
    let mut commits = Vec::new();
    let written;
    {
        let log = b.open().await;
        let mut v = 0;
        for n in [2, 1, 3] {
            let c = commit(&a, v, n);
            v += n as u64;
            log.append(c.clone()).await.unwrap();
            commits.push(c);
        }
        log.append(commit(&s, 0, 1)).await.unwrap();
        written = log.read(&a, Version(0)).await.unwrap();
        log.flush().await.unwrap();
        assert!(
            matches!(
                log.append(commit(&a, 6, 1)).await,
                Err(StoreError::Unavailable(_))
            ),
            "no appends after flush"
        );
    }
    b.restart();
    let log = b.open().await;
    assert_eq!(log.read(&a, Version(0)).await.unwrap(), written);
    assert_eq!(versions(&written), (1..=6).collect::<Vec<_>>());
    assert_eq!(log.version(&a).await.unwrap(), Version(6));
    assert_eq!(log.version(&s).await.unwrap(), Version(1));
    for c in &commits {
        let found = log
            .find_command(&a.tenant, &c.command_id)
            .await
            .unwrap()
            .expect("command recorded");
        assert_eq!(found.events, c.events);
    }
    assert_eq!(
        log.list_aggregates(&tenant("t1")).await.unwrap(),
        vec![(a.aggregate_type.clone(), a.aggregate_id)]
    );
    assert!(matches!(
        log.append(commit(&a, 5, 1)).await,
        Err(StoreError::Conflict { .. })
    ));
    log.append(commit(&a, 6, 1)).await.unwrap();
    assert_eq!(log.version(&a).await.unwrap(), Version(7));
}

/// Deleting a tenant removes its events, heads, command records and feed entries, keeps every
/// other tenant's (also one whose id starts with it), survives a restart, and frees its command ids
/// for new appends (JetStream: also within the dedup window that still remembers them).
async fn delete_tenant_removes_only_its_data(b: &dyn Backend) {
    let log = b.open().await;
    let gone = [agg("t1", "account"), agg("t1", "order")];
    let kept = [agg("t2", "account"), agg("t1x", "account")];
    let mut commits = Vec::new();
    for a in gone.iter().chain(&kept) {
        let c = commit(a, 0, 2);
        log.append(c.clone()).await.unwrap();
        commits.push(c);
    }
    let empty = commit_with_id(&gone[0], 2, 0, CommandId::generate());
    log.append(empty.clone()).await.unwrap();
    let position = log.position().await.unwrap();

    assert_eq!(log.delete_tenant(&tenant("t1")).await.unwrap(), 2);
    for a in &gone {
        assert!(log.read(a, Version(0)).await.unwrap().is_empty());
        assert_eq!(log.version(a).await.unwrap(), Version(0));
    }
    for c in commits[..2].iter().chain([&empty]) {
        assert!(log
            .find_command(&tenant("t1"), &c.command_id)
            .await
            .unwrap()
            .is_none());
    }
    assert!(log.list_aggregates(&tenant("t1")).await.unwrap().is_empty());
    for (a, c) in kept.iter().zip(&commits[2..]) {
        assert_eq!(log.read(a, Version(0)).await.unwrap(), c.events);
        assert!(log
            .find_command(&a.tenant, &c.command_id)
            .await
            .unwrap()
            .is_some());
    }
    // A feed from the start carries only what is left (every tenant's feed, and t1's).
    let mut feed = log.subscribe(FeedFilter::all(), Some(0)).await.unwrap();
    for c in &commits[2..] {
        assert_eq!(next_commit(&mut feed).await.aggregate, c.aggregate);
    }
    let mut t1 = log
        .subscribe(FeedFilter::tenant(&tenant("t1"), None), Some(0))
        .await
        .unwrap();
    for feed in [&mut feed, &mut t1] {
        if let Ok(Some(item)) = tokio::time::timeout(Duration::from_millis(300), feed.next()).await
        {
            panic!("a deleted commit is still in the feed: {item:?}");
        }
    }
    drop((feed, t1));
    // The same command ids append again, from version 0.
    let again = log.append(commits[0].clone()).await.unwrap();
    assert!(!again.duplicate);
    assert_eq!(again.version, Version(2));
    assert!(again.position > position);
    assert_eq!(
        log.find_command(&tenant("t1"), &commits[0].command_id)
            .await
            .unwrap()
            .expect("recorded again")
            .events,
        commits[0].events
    );
    log.flush().await.unwrap();
    drop(log);
    b.restart();
    let log = b.open().await;
    assert_eq!(
        log.read(&gone[0], Version(0)).await.unwrap(),
        commits[0].events
    );
    assert!(log.read(&gone[1], Version(0)).await.unwrap().is_empty());
    assert_eq!(
        log.read(&kept[1], Version(0)).await.unwrap(),
        commits[3].events
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        /// The suite against the embedded (fjall) log.
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::EmbeddedBackend::new();
                    super::$case(&backend).await;
                }
            )*
        }

        /// The same suite against the JetStream log.
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = super::JetStreamBackend::start(concat!("jetstream::", stringify!($case))) else {
                        return;
                    };
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

conformance!(
    append_and_read_in_order,
    wrong_expected_version_is_a_conflict,
    malformed_commit_is_invalid,
    concurrent_appenders_retry_until_all_succeed,
    concurrent_duplicates_write_once,
    tenants_stay_separate,
    duplicate_command_returns_original,
    empty_commit_is_recorded_for_idempotency,
    single_tenant_works,
    list_aggregates_per_tenant,
    subscribe_receives_new_events_of_its_tenant_only,
    subscribe_after_a_position_replays_then_follows,
    a_resumed_feed_has_no_gap_and_no_duplicate,
    reopen_keeps_everything,
    delete_tenant_removes_only_its_data,
);

// ---------------------------------------------------------------------------------------------
// Embedded only

/// A subscriber far behind the broadcast (a buffer of 2 commits) is caught up from the log: it
/// sees every commit, in order, instead of a "lagged" error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_slow_subscriber_is_caught_up_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open_with(
        dir.path(),
        EmbeddedConfig {
            subscriber_buffer: 2,
            ..EmbeddedConfig::default()
        },
    )
    .unwrap();
    let mut feed = log
        .subscribe(FeedFilter::tenant(&tenant("t1"), None), None)
        .await
        .unwrap();
    let a = agg("t1", "account");
    let mut positions = Vec::new();
    for v in 0..200u64 {
        positions.push(log.append(commit(&a, v, 1)).await.unwrap().position);
    }
    let mut got = Vec::new();
    for _ in 0..200 {
        got.push(next_commit(&mut feed).await.position);
    }
    assert_eq!(got, positions);
}

/// A database written before the feed keyspaces existed gets them filled from its command
/// records on open: a feed from 0 has every commit with events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_feed_is_filled_for_an_older_database() {
    let dir = tempfile::tempdir().unwrap();
    let a = agg("t1", "account");
    let mut positions = Vec::new();
    {
        let log = EmbeddedLog::open(dir.path()).unwrap();
        for v in 0..5u64 {
            positions.push(log.append(commit(&a, v, 1)).await.unwrap().position);
        }
        log.append(commit(&a, 5, 0)).await.unwrap();
        log.flush().await.unwrap();
    }
    // Make it look like an older database: no feed entries, no marker.
    {
        let db = fjall::Database::builder(dir.path()).open().unwrap();
        for (name, entries) in [("feed", 5), ("positions", 6)] {
            let ks = db
                .keyspace(name, fjall::KeyspaceCreateOptions::default)
                .unwrap();
            let keys: Vec<_> = ks.iter().map(|g| g.key().unwrap()).collect();
            assert_eq!(
                keys.len(),
                entries,
                "{name}: an entry per commit (feed: with events)"
            );
            for k in keys {
                ks.remove(k).unwrap();
            }
        }
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        meta.remove("feed").unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let log = EmbeddedLog::open(dir.path()).unwrap();
    let mut feed = log
        .subscribe(FeedFilter::tenant(&tenant("t1"), None), Some(0))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next_commit(&mut feed).await.position);
    }
    assert_eq!(got, positions);
}

// ---------------------------------------------------------------------------------------------
// JetStream only

/// Every subject the log writes for tenant `t1` starts with `tenant.t1.`, and nothing else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_subjects_are_tenant_scoped() {
    let Some(b) = JetStreamBackend::start("jetstream_subjects_are_tenant_scoped") else {
        return;
    };
    let log = b.open().await;
    let t1 = [agg("t1", "account"), agg("t1", "order")];
    let others = [
        agg("t2", "account"),
        agg("t1x", "account"),
        agg("", "account"),
    ];
    for a in t1.iter().chain(&others) {
        log.append(commit(a, 0, 1)).await.unwrap();
    }
    let client = async_nats::connect(b.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("AGGREGATES").await.unwrap();
    let mut info = stream.info_with_subjects(">").await.unwrap();
    let mut subjects = Vec::new();
    while let Some((subject, _)) = futures::TryStreamExt::try_next(&mut info).await.unwrap() {
        subjects.push(subject);
    }
    assert_eq!(subjects.len(), 5, "{subjects:?}");
    let of_t1: Vec<_> = subjects
        .iter()
        .filter(|s| s.starts_with("tenant.t1."))
        .collect();
    assert_eq!(of_t1.len(), 2, "{subjects:?}");
    for a in &t1 {
        let s = format!(
            "tenant.t1.aggregate.{}.{}",
            a.aggregate_type, a.aggregate_id
        );
        assert!(subjects.contains(&s), "{s} in {subjects:?}");
    }
    assert!(subjects.iter().all(|s| s.starts_with("tenant.")));
    assert!(
        subjects
            .iter()
            .any(|s| s.starts_with("tenant.=single.aggregate.")),
        "{subjects:?}"
    );
}

/// A stream that exists with a configuration the log cannot use is refused, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_incompatible_stream_is_refused() {
    use async_nats::jetstream::stream::{Config, StorageType};
    let Some(b) = JetStreamBackend::start("jetstream_incompatible_stream_is_refused") else {
        return;
    };
    let client = async_nats::connect(b.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let cases: [(Config, &str); 3] = [
        (
            Config {
                name: "MEM".into(),
                subjects: vec!["tenant.>".into()],
                storage: StorageType::Memory,
                allow_direct: true,
                ..Default::default()
            },
            "storage",
        ),
        (
            Config {
                name: "SUBJ".into(),
                subjects: vec!["events.>".into()],
                allow_direct: true,
                ..Default::default()
            },
            "subjects",
        ),
        (
            Config {
                name: "AGE".into(),
                subjects: vec!["tenant.>".into()],
                allow_direct: true,
                max_age: Duration::from_secs(3600),
                ..Default::default()
            },
            "max_age",
        ),
    ];
    for (config, field) in cases {
        let name = config.name.clone();
        js.create_stream(config).await.unwrap();
        let opened = JetStreamLog::open(
            client.clone(),
            JetStreamConfig {
                stream: name.clone(),
                command_bucket: format!("{name}_CMDS"),
                ..Default::default()
            },
        )
        .await;
        match opened {
            Err(StoreError::IncompatibleStream { stream, reason }) => {
                assert_eq!(stream, name);
                assert!(reason.contains(field), "{reason:?} names {field}");
            }
            other => panic!("expected IncompatibleStream for {name}, got {other:?}"),
        }
        // Only one stream may own `tenant.>` at a time.
        js.delete_stream(&name).await.unwrap();
    }
    // A compatible stream opens, also when it already exists.
    JetStreamLog::open(client.clone(), JetStreamConfig::default())
        .await
        .unwrap();
    JetStreamLog::open(client, JetStreamConfig::default())
        .await
        .unwrap();
}

/// Idempotency outlives the dedup window and restarts of the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_duplicates_are_found_after_the_dedup_window_and_a_restart() {
    let config = JetStreamConfig {
        duplicate_window: Duration::from_secs(1),
        ..Default::default()
    };
    let Some(b) = JetStreamBackend::start_with("jetstream_duplicates_after_window", config) else {
        return;
    };
    let a = agg("t1", "account");
    let c = commit(&a, 0, 2);
    {
        let log = b.open().await;
        log.append(c.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let again = log.append(c.clone()).await.unwrap();
        assert!(again.duplicate);
        let again = log
            .append(commit_with_id(&a, 2, 1, c.command_id))
            .await
            .unwrap();
        assert!(
            again.duplicate,
            "current expected version, same command: not written twice"
        );
        assert_eq!(log.version(&a).await.unwrap(), Version(2));
    }
    b.restart();
    let log = b.open().await;
    let found = log
        .find_command(&a.tenant, &c.command_id)
        .await
        .unwrap()
        .expect("found after restart");
    assert_eq!(found.events, c.events);
    assert!(
        log.append(commit_with_id(&a, 2, 1, c.command_id))
            .await
            .unwrap()
            .duplicate
    );
    assert_eq!(log.version(&a).await.unwrap(), Version(2));
}

/// A command that failed with a conflict is not "seen": its retry at the right version appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_retry_after_conflict_appends() {
    let Some(b) = JetStreamBackend::start("jetstream_retry_after_conflict_appends") else {
        return;
    };
    let log = b.open().await;
    let a = agg("t1", "account");
    log.append(commit(&a, 0, 1)).await.unwrap();
    let id = CommandId::generate();
    assert!(matches!(
        log.append(commit_with_id(&a, 0, 1, id)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(log.find_command(&a.tenant, &id).await.unwrap().is_none());
    // Another writer moves the aggregate on through a second log instance (stale cache here).
    let other = b.open().await;
    other.append(commit(&a, 1, 1)).await.unwrap();
    assert!(matches!(
        log.append(commit_with_id(&a, 1, 1, id)).await,
        Err(StoreError::Conflict { .. })
    ));
    let appended = log.append(commit_with_id(&a, 2, 1, id)).await.unwrap();
    assert!(!appended.duplicate);
    assert_eq!(appended.version, Version(3));
    assert!(log.find_command(&a.tenant, &id).await.unwrap().is_some());
}

/// A command id whose intent names another aggregate, and whose message is not (yet) stored
/// there, stays bound to that aggregate: the publish may still land (delayed in the client or on
/// the wire), and rebinding the intent would hide it from every later lookup, so a retry on the
/// first aggregate after the dedup window would run the command twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_an_unstored_intent_keeps_the_command_id_on_its_aggregate() {
    use aggregate_host::store::jetstream::{subject_of, tenant_token};
    let Some(b) = JetStreamBackend::start("jetstream_unstored_intent_keeps_its_aggregate") else {
        return;
    };
    let log = b.open().await;
    let (first, other) = (agg("t1", "account"), agg("t1", "account"));
    let id = CommandId::generate();
    // What a host leaves behind when its publish for `first` is still on its way: the intent.
    let client = async_nats::connect(b.url()).await.unwrap();
    let commands = async_nats::jetstream::new(client)
        .get_key_value(&b.config.command_bucket)
        .await
        .unwrap();
    let intent = serde_json::json!({ "subject": subject_of(&first), "after": 0 });
    commands
        .put(
            format!("{}.{id}", tenant_token(&first.tenant)),
            serde_json::to_vec(&intent).unwrap().into(),
        )
        .await
        .unwrap();

    match log.append(commit_with_id(&other, 0, 1, id)).await {
        Err(StoreError::CommandIdInUse {
            command_id,
            first: f,
        }) => {
            assert_eq!((command_id, f.as_ref()), (id, &first));
        }
        other => panic!("expected CommandIdInUse, got {other:?}"),
    }
    assert_eq!(
        log.version(&other).await.unwrap(),
        Version(0),
        "nothing written"
    );
    // The late publish (or a retry) on the first aggregate goes ahead and is found afterwards.
    let stored = log.append(commit_with_id(&first, 0, 1, id)).await.unwrap();
    assert!(!stored.duplicate);
    let again = log.append(commit_with_id(&other, 0, 1, id)).await.unwrap();
    assert!(again.duplicate && again.aggregate == first, "{again:?}");
    let found = log.find_command(&first.tenant, &id).await.unwrap().unwrap();
    assert_eq!(found.aggregate, first);
}

/// Long histories are read through a consumer after the first direct gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_long_history_reads_through_a_consumer() {
    let config = JetStreamConfig {
        direct_read_limit: 3,
        ..Default::default()
    };
    let Some(b) = JetStreamBackend::start_with("jetstream_long_history", config) else {
        return;
    };
    let log = b.open().await;
    let a = agg("t1", "account");
    let noise = agg("t1", "account");
    let mut v = 0;
    for i in 0..12 {
        log.append(commit(&a, v, 1 + i % 2)).await.unwrap();
        log.append(commit(&noise, i as u64, 1)).await.unwrap();
        v += 1 + (i % 2) as u64;
    }
    assert_eq!(
        versions(&log.read(&a, Version(0)).await.unwrap()),
        (1..=v).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(&log.read(&a, Version(4)).await.unwrap()),
        (5..=v).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(&log.read(&a, Version(v - 1)).await.unwrap()),
        vec![v]
    );
    let all = log.read(&a, Version(0)).await.unwrap();
    for after in 0..=v {
        let tail = log.read(&a, Version(after)).await.unwrap();
        assert_eq!(tail, all[after as usize..], "read after {after}");
    }
}

/// Embedded only: many concurrent commits land in shared batches (group commit) and stay correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_group_commit_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(dir.path()).unwrap());
    let aggs: Vec<_> = (0..16).map(|_| agg("t1", "account")).collect();
    let mut tasks = Vec::new();
    for a in aggs.clone() {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for v in 0..50 {
                let c = commit(&a, v, 1);
                // The same command twice concurrently: one write, one duplicate.
                let (x, y) = tokio::join!(log.append(c.clone()), log.append(c.clone()));
                let (x, y) = (x.unwrap(), y.unwrap());
                assert!(
                    x.duplicate != y.duplicate,
                    "exactly one of the two is the original"
                );
                assert_eq!(x.position, y.position);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut positions = HashSet::new();
    for a in &aggs {
        let events = log.read(a, Version(0)).await.unwrap();
        assert_eq!(versions(&events), (1..=50).collect::<Vec<_>>());
        for e in &events {
            let found = log
                .find_command(&a.tenant, &e.causation_id)
                .await
                .unwrap()
                .unwrap();
            assert!(positions.insert(found.position), "positions are unique");
        }
    }
}

/// Poll `log.health()` until `ok == want` (bounded); how long it took.
async fn wait_health(log: &JetStreamLog, want: bool, timeout: Duration) -> Duration {
    let started = std::time::Instant::now();
    while log.health().ok != want {
        assert!(
            started.elapsed() < timeout,
            "health not {want} within {timeout:?}: {:?}",
            log.health()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// A lazy start before nats-server is up, then an outage: the log refuses at once while NATS is
/// away (health names the reason), opens when it comes, and recovers by itself after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_opens_lazily_and_refuses_at_once_while_nats_is_down() {
    let Some(mut server) = NatsServer::reserve_or_skip("jetstream_lazy_open_and_outage") else {
        return;
    };
    let config = JetStreamConfig {
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let log = JetStreamLog::connect_with(&server.url(), config, ConnectMode::Retry)
        .await
        .expect("a lazy start does not need the server");
    assert!(!log.wait_open(Duration::from_secs(2)).await);
    let health = log.health();
    assert_eq!(
        (health.ok, health.state),
        (false, "connecting"),
        "{health:?}"
    );
    assert!(
        health
            .reason
            .as_deref()
            .unwrap()
            .contains("NATS not connected yet"),
        "{health:?}"
    );
    let a = agg("t1", "account");
    let started = std::time::Instant::now();
    match log.append(commit(&a, 0, 1)).await {
        Err(StoreError::Unavailable(reason)) => {
            assert!(reason.contains("NATS not connected yet"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(100));

    server.start();
    wait_health(&log, true, Duration::from_secs(10)).await;
    assert!(log.is_open());
    assert_eq!(log.breaker().state(), BreakerState::Closed);
    log.append(commit(&a, 0, 1)).await.unwrap();

    server.kill();
    let noticed = wait_health(&log, false, Duration::from_secs(2)).await;
    assert_eq!(log.breaker().state(), BreakerState::Open);
    assert!(
        log.health().reason.unwrap().contains("connection lost"),
        "{:?}",
        log.health()
    );
    let started = std::time::Instant::now();
    for op in 0..3 {
        let refused = match op {
            0 => log.append(commit(&a, 1, 1)).await.map(|_| ()),
            1 => log.read(&a, Version(0)).await.map(|_| ()),
            _ => log
                .find_command(&a.tenant, &CommandId::generate())
                .await
                .map(|_| ()),
        };
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused at once, not after a timeout: {:?}",
        started.elapsed()
    );

    server.start();
    let recovered = wait_health(&log, true, Duration::from_secs(10)).await;
    assert_eq!(log.version(&a).await.unwrap(), Version(1));
    log.append(commit(&a, 1, 1)).await.unwrap();
    println!("outage noticed after {noticed:?}; healthy {recovered:?} after the server was back");
}

/// A server that accepts the connection but stops answering (SIGSTOP): each operation fails at
/// the deadline, consecutive failures open the breaker (then refusals are immediate), and a
/// probe closes it once the server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_operations_have_a_deadline_and_failures_open_the_breaker() {
    let Some(b) = JetStreamBackend::start_with(
        "jetstream_deadline_and_breaker",
        JetStreamConfig {
            request_timeout: Duration::from_millis(300),
            breaker: BreakerConfig {
                failure_threshold: 2,
                cooldown: Duration::from_millis(200),
            },
            ..Default::default()
        },
    ) else {
        return;
    };
    let log = JetStreamLog::connect(&b.url(), b.config.clone())
        .await
        .unwrap();
    let a = agg("t1", "account");
    log.append(commit(&a, 0, 1)).await.unwrap();
    b.server.lock().signal("STOP");
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = log.version(&a).await;
        let took = started.elapsed();
        assert!(
            // Our deadline or the client's request timeout (set to the same value), whichever
            // fires first.
            matches!(&r, Err(StoreError::Unavailable(m)) if m.starts_with("nats: ")),
            "{r:?}"
        );
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }
    assert_eq!(log.breaker().state(), BreakerState::Open);
    let health = log.health();
    assert!(
        !health.ok
            && health
                .reason
                .as_deref()
                .unwrap()
                .contains("2 consecutive failures"),
        "{health:?}"
    );
    let started = std::time::Instant::now();
    assert!(matches!(
        log.read(&a, Version(0)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_millis(100));
    b.server.lock().signal("CONT");
    wait_health(&log, true, Duration::from_secs(10)).await;
    assert_eq!(log.version(&a).await.unwrap(), Version(1));
}
