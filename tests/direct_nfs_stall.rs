//! Deadlines and reconnects of the NFSv3 transport (and of `Storage` over it) against a server
//! that stops answering or restarts. Each test starts a server of its own (scripts/nfs-server.sh,
//! on free ports, in a temporary directory) and removes it at the end, also when it fails: freezing
//! or restarting the shared server would break every other test using it.
//!
//! Runs when `NFS_TEST_SERVER` is set (this machine runs test servers: root, podman) or
//! `NFS_TEST_REQUIRE=1`; otherwise every test passes after a loud `*** SKIPPED ***` line.
#![allow(clippy::unwrap_used)] // a test: a failed call is a failed test

mod nfs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use nfs::{EXPORT, OwnServer, p, unique};
use nfs_subdir_provisioner::core::params::DirMode;
use nfs_subdir_provisioner::health::{ExportStatus, Health};
use nfs_subdir_provisioner::metrics::Metrics;
use nfs_subdir_provisioner::storage::nfs_testing::Preconditions;
use nfs_subdir_provisioner::storage::nfs3::NfsError;
use nfs_subdir_provisioner::storage::{Backend, Existing, Limits, Removed, Storage, StorageFailure};

const SUITE: &str = "direct_nfs_stall";

const RWX: DirMode = DirMode {
    mode: 0o777,
    uid: None,
    gid: None,
};

#[tokio::test]
async fn a_stopped_server_fails_each_call_within_its_deadline_and_the_pool_recovers() {
    if !nfs::servers_enabled(SUITE) {
        return;
    }
    let server = OwnServer::start("stop");
    // timeo=5 (0.5 s), retrans=1: every RPC fails after at most 2 x 0.5 s.
    let e = server.env.volumes(EXPORT, &["timeo=5", "retrans=1"], 4).await;
    let deadline = e.transport().connection().await.unwrap().rpc_deadline();
    assert_eq!(deadline, Duration::from_secs(1));
    e.capacity().await.unwrap(); // the pool holds a live connection now

    let paused = server.pause();
    let start = Instant::now();
    let err = e.capacity().await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err.transport(), Some(e @ NfsError::TimedOut { .. }) if e.is_transport()),
        "{err}"
    );
    assert!(err.to_string().contains("is the server answering?"), "{err}");
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(took < Duration::from_millis(1500), "deadline 1 s, took {took:?}");
    eprintln!("stopped server: capacity failed after {took:?}: {err}");

    // A tree operation (many RPCs) fails on its first RPC's deadline, not after the sum of them.
    let pv = unique("pv-stop");
    let top = unique("stopped");
    let start = Instant::now();
    let err = e
        .create(&pv, &p(&[&top, "v"]), RWX, Existing::Refuse, None)
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err.transport(), Some(NfsError::TimedOut { .. })),
        "{err}"
    );
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // Back: the connections that timed out were dropped; new ones are made and calls succeed.
    drop(paused);
    let start = Instant::now();
    e.capacity().await.unwrap();
    eprintln!("after unpause: first call took {:?}", start.elapsed());
    e.finish(&pv).await.unwrap();
    assert!(!e.staged().await.unwrap().contains(&pv));
}

#[tokio::test]
async fn connections_broken_by_a_server_restart_are_replaced() {
    if !nfs::servers_enabled(SUITE) {
        return;
    }
    let server = OwnServer::start("restart");
    let e = Arc::new(server.env.volumes(EXPORT, &["timeo=20", "retrans=2"], 4).await);
    // Fill the pool with idle connections.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let e = Arc::clone(&e);
        tasks.spawn(async move { e.capacity().await.map(drop) });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let start = Instant::now();
    server.restart();
    eprintln!("server restarted in {:?}", start.elapsed());
    // Every idle connection is dead now; the call notices, drops them and reconnects.
    let start = Instant::now();
    e.capacity().await.unwrap();
    eprintln!("after restart: first call took {:?}", start.elapsed());
    let top = unique("restart");
    e.transport().mkdir_p(&[&top, "a"]).await.unwrap();
    assert_eq!(
        e.delete(&p(&[&top]), 4).await.unwrap(),
        Removed::Removed { entries: 2 }
    );
    assert!(!server.env.export_dir.join(&top).exists());
}

/// `Storage` over the NFSv3 transport: its own deadline cuts an operation short while the server
/// is frozen and marks the export failing in `Health`; once the server answers, a probe marks it
/// healthy again. The transport connects lazily, and retries a connect that failed.
#[tokio::test]
async fn storage_deadlines_mark_a_frozen_export_failing_until_a_probe_passes() {
    if !nfs::servers_enabled(SUITE) {
        return;
    }
    let server = OwnServer::start("storage");
    let env = &server.env;
    let export = env.export(EXPORT);
    let name = export.to_string();
    // Requests may wait 5 s x 3; the Storage deadline (0.5 s) is what cuts an operation short.
    let backend = Arc::new(env.lazy_volumes(EXPORT, &["timeo=50", "retrans=2"]));
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let limits = Limits {
        timeout: Duration::from_millis(500),
        delete_timeout: Duration::from_millis(500),
        delete_concurrency: 4,
        ..Limits::default()
    };
    let storage = Storage::new(
        Arc::clone(&backend) as Arc<dyn Backend>,
        name.clone(),
        limits,
        health.clone(),
        metrics,
    );
    let status = || health.snapshot().exports.get(&name).cloned();

    storage.probe().await.unwrap();
    assert_eq!(status(), Some(ExportStatus::Healthy));
    let c = storage.capacity().await.unwrap();
    assert!(
        c.total_bytes >= c.available_bytes && c.available_bytes > 0,
        "{c:?}"
    );

    let paused = server.pause();
    let start = Instant::now();
    let err = storage.capacity().await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, StorageFailure::TimedOut { .. }), "{err}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1000),
        "{took:?}"
    );
    assert!(
        matches!(status(), Some(ExportStatus::Failing(why)) if why.contains("timed out")),
        "{:?}",
        status()
    );
    let err = storage.probe().await.unwrap_err();
    assert!(matches!(err, StorageFailure::TimedOut { .. }), "{err}");
    assert!(matches!(status(), Some(ExportStatus::Failing(_))));

    drop(paused);
    // The frozen requests were abandoned by Storage; the client's own deadline (5 s) may still
    // hold their connections, so the first probes after the thaw may time out too.
    let deadline = Instant::now() + Duration::from_secs(30);
    let start = Instant::now();
    loop {
        match storage.probe().await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "export did not recover: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("after unpause: probe passed after {:?}", start.elapsed());
    assert_eq!(status(), Some(ExportStatus::Healthy));

    // A transport whose server is gone fails its connect, and connects once the server is back.
    let down = env.lazy_volumes(EXPORT, &["timeo=5", "retrans=0"]);
    let paused = server.pause();
    let err = down.capacity().await.unwrap_err();
    assert!(
        matches!(err.transport::<NfsError>(), Some(e) if e.is_transport()),
        "{err}"
    );
    drop(paused);
    let c = down.capacity().await.unwrap();
    assert!(c.total_bytes > 0);
}
