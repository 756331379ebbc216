//! The embedded event log and the snapshot store on a full disk (a small tmpfs): writes fail with
//! `Unavailable`, the log's health says why, and once space returns both recover by themselves —
//! no restart, nothing acknowledged lost. Skipped with a notice where the test may not mount.

mod support;

use std::time::{Duration, Instant};

use aggregate_host::store::{
    Commit, EmbeddedConfig, EmbeddedLog, EventLog, SnapshotStore, StoreError,
};
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandId, CommandMetadata, ComponentHash, Event,
    Json, Snapshot, TenantId, Version,
};
use support::disk::{fill, Tmpfs};

fn account(id: AggregateId) -> AggregateRef {
    AggregateRef {
        tenant: TenantId::new("disk").unwrap(),
        aggregate_type: AggregateType::new("counter").unwrap(),
        aggregate_id: id,
    }
}

fn commit(a: &AggregateRef, expected: u64, command_id: CommandId) -> Commit {
    Commit {
        aggregate: a.clone(),
        expected: Version(expected),
        command_id,
        events: vec![Event {
            aggregate: a.clone(),
            version: Version(expected + 1),
            event_type: "added".into(),
            schema_version: 1,
            // Big enough that the journal needs new pages soon after the disk is full.
            payload: Json::from_value(&serde_json::json!({ "pad": "x".repeat(2000) })),
            causation_id: command_id,
            metadata: CommandMetadata::default(),
            component: ComponentHash::of(b"c"),
            recorded_at: chrono::Utc::now(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_and_the_log_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount(24) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dir = fs.path().join("events");
    let config = EmbeddedConfig {
        recovery_interval: Duration::from_millis(50),
        ..EmbeddedConfig::default()
    };
    let log = EmbeddedLog::open_with(&dir, config.clone()).unwrap();
    let snapshots = SnapshotStore::open(fs.path().join("snapshots")).unwrap();
    let a = account(AggregateId::generate());
    let mut version = 0;
    for _ in 0..10 {
        log.append(commit(&a, version, CommandId::generate()))
            .await
            .unwrap();
        version += 1;
    }
    assert!(log.health().ok);

    let filler = fill(fs.path());
    let failed = loop {
        assert!(version < 5_000, "no append failed on a full disk");
        let id = CommandId::generate();
        match log.append(commit(&a, version, id)).await {
            Ok(_) => version += 1,
            Err(StoreError::Unavailable(_)) => break id,
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    let health = log.health();
    assert!(!health.ok, "{health:?}");
    assert_eq!(health.state, "storage-failed");
    assert!(
        health
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("writes fail"),
        "{health:?}"
    );
    // Later appends are refused at once, reads still work.
    let started = Instant::now();
    assert!(matches!(
        log.append(commit(&a, version, CommandId::generate())).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
    // Snapshot writes fail too (or fit in a last page); the store keeps answering.
    let snap = |v: u64| Snapshot {
        aggregate: a.clone(),
        version: Version(v),
        state: Json::from_value(&serde_json::json!({ "pad": "y".repeat(4000) })),
        component: ComponentHash::of(b"c"),
        log_position: v,
    };
    let mut snapshot_failed = false;
    for v in 0..200 {
        if snapshots.insert(&snap(v)).is_err() {
            snapshot_failed = true;
            break;
        }
    }
    assert!(snapshot_failed, "a snapshot write on a full disk failed");

    std::fs::remove_file(filler).unwrap();
    // The committer probes on its own: healthy again without any append.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.health().ok {
        assert!(Instant::now() < deadline, "{:?}", log.health());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The failed command may or may not have reached the journal; a retry is exactly-once.
    let retried = log.append(commit(&a, version, failed)).await;
    match retried {
        Ok(r) => version = r.version.0,
        Err(StoreError::Conflict { actual, .. }) => {
            let original = log.find_command(&a.tenant, &failed).await.unwrap().unwrap();
            assert_eq!(original.version, actual);
            version = actual.0;
        }
        Err(e) => panic!("retry after recovery: {e}"),
    }
    for _ in 0..5 {
        log.append(commit(&a, version, CommandId::generate()))
            .await
            .unwrap();
        version += 1;
    }
    // The snapshot store reopens on a failed write (at most every 500 ms): within a few tries.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = snapshots.insert(&snap(version)) {
        assert!(Instant::now() < deadline, "snapshots never recovered: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    snapshots.persist().unwrap();
    log.flush().await.unwrap();
    drop(log);

    let log = EmbeddedLog::open_with(&dir, config).unwrap();
    let events = log.read(&a, Version(0)).await.unwrap();
    assert_eq!(events.len() as u64, version);
    assert!(events
        .iter()
        .enumerate()
        .all(|(i, e)| e.version == Version(i as u64 + 1)));
    assert_eq!(
        snapshots.get(&a).unwrap().map(|s| s.version),
        Some(Version(version))
    );
}
