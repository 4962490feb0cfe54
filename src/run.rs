//! The process: serve probes and metrics, connect, then lead-or-wait in a loop. Each time this
//! replica gains leadership the controllers start with fresh caches; when it loses it they stop
//! and it campaigns again. On shutdown in-flight work finishes (within [`DRAIN`]) and the Lease is
//! released so the next replica leads at once; probes answer until the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::controller::{self, Shared};
use crate::health::{self, Health, Role};
use crate::http;
use crate::k8s::{self, Events};
use crate::lease::{Elector, Leadership, TermEnd, lease_name};
use crate::metrics::Metrics;
use crate::shutdown;
use crate::storage::Exports;

/// Upper bound for in-flight reconciles to finish after a term ends.
const DRAIN: Duration = Duration::from_secs(30);

fn identity(config: &Config) -> String {
    let host = config.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "nfs-subdir-provisioner".into())
    });
    // Two replicas on one host (or one restarted quickly) must never share an identity.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{host}_{}_{started:x}", std::process::id())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signals().map_err(|e| anyhow!("install signal handlers: {e}"))?;
    // One registry: /metrics encodes what Health records and what the controllers and watches do.
    let metrics = Metrics::new();
    let health = Health::with_watch_bounds(metrics.clone(), config.watch_bounds);
    let listener = http::bind(config.http_addr).await?;
    let stop_serving = CancellationToken::new();
    let heartbeat = tokio::spawn(health::heartbeat(health.clone()));
    let server = tokio::spawn(http::serve(
        listener,
        health.clone(),
        metrics.clone(),
        stop_serving.clone(),
    ));

    let result = provision(config, health, metrics, shutdown).await;

    stop_serving.cancel();
    let _ = server.await;
    heartbeat.abort();
    result
}

async fn provision(
    config: Config,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = k8s::client(&config).await?;
    let identity = identity(&config);
    let exports = Exports::from_config(&config, health.clone(), metrics.clone());
    // Refuse to start on an export that is not there, rather than fail every claim later.
    match (exports.mounted(), &config.mounted) {
        (Some(mounted), Some(export)) => {
            let capacity = mounted.capacity().await.map_err(|e| {
                anyhow!(
                    "NFS_MOUNT_PATH {}: the export is not usable: {e}",
                    config.mount_path.display()
                )
            })?;
            info!(
                total_bytes = capacity.total_bytes,
                available_bytes = capacity.available_bytes,
                provisioner = %config.provisioner_name,
                server = %export.server,
                path = %export.path,
                mount = %config.mount_path.display(),
                %identity,
                "starting"
            );
        }
        _ => warn!(
            provisioner = %config.provisioner_name,
            %identity,
            "starting without a mounted export (NFS_SERVER and NFS_PATH unset): only StorageClasses naming server and share are served"
        ),
    }
    let events = Events::new(client.clone(), &identity);
    let config = Arc::new(config);

    if !config.leader_election {
        let shared = Shared {
            client,
            config,
            exports,
            events,
            leadership: Leadership::always(),
            health: health.clone(),
            metrics,
        };
        health.set_role(Role::Leader);
        let mut controllers = tokio::spawn(controller::run(shared, shutdown.clone()));
        tokio::select! {
            _ = &mut controllers => {}
            () = shutdown.cancelled() => drain(controllers).await,
        }
        return Ok(());
    }

    let namespace = k8s::own_namespace(&config, &client);
    let lease = lease_name(&config.provisioner_name);
    info!(%namespace, %lease, "leader election enabled");
    let mut elector = Elector::new(
        client.clone(),
        &namespace,
        &lease,
        &identity,
        config.lease,
        health.clone(),
    );
    let shared = Shared {
        client,
        config,
        exports,
        events,
        leadership: elector.leadership(),
        health: health.clone(),
        metrics,
    };

    while elector.acquire(&shutdown).await {
        health.set_role(Role::Leader);
        let term = shutdown.child_token();
        let controllers = tokio::spawn(controller::run(shared.clone(), term.clone()));
        let end = elector.hold(&shutdown).await;
        // After a step-down the broken watches stay on record: if this process never gets them
        // working, liveness fails and the kubelet restarts it.
        health.end_term(matches!(end, TermEnd::SteppedDown(_)));
        term.cancel();
        drain(controllers).await;
        if shutdown.is_cancelled() {
            break;
        }
        match end {
            TermEnd::SteppedDown(_) => {
                // Give a standby one lease duration to take over before campaigning again (with
                // no standby, this replica leads again, with new watches).
                info!(wait = ?shared.config.lease.duration, "stepped down; standing by before campaigning again");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(shared.config.lease.duration) => {}
                }
            }
            TermEnd::Lost | TermEnd::Cancelled => warn!("lost leadership; campaigning again"),
        }
    }
    elector.release().await;
    info!("stopped");
    Ok(())
}

/// Waits for in-flight reconciles, at most [`DRAIN`]; what is left is abandoned, which is safe:
/// every operation is idempotent and the next leader (or this process's successor) redoes it.
async fn drain(controllers: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(DRAIN, controllers).await.is_err() {
        warn!(after = ?DRAIN, "in-flight work did not finish in time; leaving it to the next leader");
    }
}
