//! The process: connect, then lead-or-wait in a loop. Each time this replica gains leadership the
//! controllers start with fresh caches; when it loses it they stop and it campaigns again. On
//! shutdown in-flight work finishes and the Lease is released so the next replica leads at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tracing::{info, warn};

use crate::config::Config;
use crate::controller::{self, Shared};
use crate::k8s::{self, Events};
use crate::lease::{Elector, Leadership, lease_name};
use crate::shutdown;
use crate::storage::Storage;

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

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
    let client = k8s::client(&config).await?;
    let identity = identity(&config);
    let storage = Storage::new(
        config.mount_path.clone(),
        config.fs_timeout,
        config.delete_timeout,
        config.delete_concurrency,
    );
    // Refuse to start on an export that is not there, rather than fail every claim later.
    let capacity = storage.capacity().await.map_err(|e| {
        anyhow!(
            "NFS_MOUNT_PATH {}: the export is not usable: {e}",
            config.mount_path.display()
        )
    })?;
    info!(
        total_bytes = capacity.total_bytes,
        available_bytes = capacity.available_bytes,
        provisioner = %config.provisioner_name,
        server = %config.nfs_server,
        path = %config.nfs_path,
        mount = %config.mount_path.display(),
        %identity,
        "starting"
    );
    let events = Events::new(client.clone(), &identity);
    let config = Arc::new(config);

    if !config.leader_election {
        let shared = Shared {
            client,
            config,
            storage,
            events,
            leadership: Leadership::always(),
        };
        controller::run(shared, shutdown).await;
        return Ok(());
    }

    let namespace = match &config.pod_namespace {
        Some(ns) => ns.clone(),
        None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .map(|ns| ns.trim().to_owned())
            .unwrap_or_else(|_| client.default_namespace().to_owned()),
    };
    let lease = lease_name(&config.provisioner_name);
    info!(%namespace, %lease, "leader election enabled");
    let mut elector = Elector::new(client.clone(), &namespace, &lease, &identity, config.lease);
    let shared = Shared {
        client,
        config,
        storage,
        events,
        leadership: elector.leadership(),
    };

    while elector.acquire(&shutdown).await {
        let term = shutdown.child_token();
        let controllers = tokio::spawn(controller::run(shared.clone(), term.clone()));
        elector.hold(&shutdown).await;
        term.cancel();
        if tokio::time::timeout(DRAIN, controllers).await.is_err() {
            warn!(after = ?DRAIN, "in-flight work did not finish in time");
        }
        if shutdown.is_cancelled() {
            break;
        }
        warn!("lost leadership; campaigning again");
    }
    elector.release().await;
    info!("stopped");
    Ok(())
}
