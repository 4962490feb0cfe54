//! [`Storage`]: one export's volume operations under deadlines, their outcomes reported to
//! [`Health`] (a timeout marks the export failing for readiness and metrics; a completed
//! operation or a passing [`Storage::probe`] marks it answering again). [`Exports`]: the mounted
//! export and the direct ones StorageClasses name, each made on first use and kept with its own
//! connections, so a hung or unreachable server fails only the operations on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::copy::Progress;
use super::error::StorageFailure;
use super::nfs3::Nfs3Transport;
use super::nfs4::Nfs4Transport;
use super::posix::MountedExport;
use super::protocol::{Archived, Backend, Created, Fill, Listing, OpFuture, Removed, Volumes};
use super::transport::Capacity;
use super::usage::Usage;
use super::walker::Pace;
use crate::config::Config;
use crate::core::export::{Access, ClientOptions, Export, NfsVersion};
use crate::core::naming::VolumePath;
use crate::core::params::DirMode;
use crate::core::staging::Existing;
use crate::health::{ExportStatus, Health};
use crate::metrics::Metrics;

/// Deadlines and parallelism of directory operations.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub delete_timeout: Duration,
    pub delete_concurrency: usize,
    pub clone_timeout: Duration,
    /// Requests in flight of one clone, on each side.
    pub clone_concurrency: usize,
    /// Requests per second of the usage walks on one export.
    pub usage_ops_per_second: u32,
}

impl Default for Limits {
    /// The configuration's defaults (src/config.rs).
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(60),
            delete_timeout: Duration::from_secs(30 * 60),
            delete_concurrency: 32,
            clone_timeout: Duration::from_secs(6 * 3600),
            clone_concurrency: 16,
            usage_ops_per_second: 200,
        }
    }
}

/// Requests in flight of one usage walk: its pace, not this, bounds its load.
pub const USAGE_CONCURRENCY: usize = 4;
/// Deadline of measuring one volume: a paced walk of a large volume takes long, by design.
pub const USAGE_TIMEOUT: Duration = Duration::from_secs(3600);

/// One export's operations under deadlines, reported to [`Health`]. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    /// `server:path`, as operators know the export; names it in health, metrics and logs.
    name: String,
    limits: Limits,
    health: Health,
    metrics: Metrics,
    probes: Arc<AtomicU64>,
    /// The pace of every usage walk on this export.
    usage_pace: Pace,
}

impl Storage {
    pub fn new(
        backend: Arc<dyn Backend>,
        name: String,
        limits: Limits,
        health: Health,
        metrics: Metrics,
    ) -> Self {
        Storage {
            backend,
            name,
            usage_pace: Pace::per_second(limits.usage_ops_per_second),
            limits,
            health,
            metrics,
            probes: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `operation` under `timeout`; a timeout marks the export failing, as an export that stops
    /// answering times out.
    async fn run<T>(
        &self,
        op: &'static str,
        path: String,
        timeout: Duration,
        operation: OpFuture<'_, T>,
    ) -> Result<T, StorageFailure> {
        self.timed(op, path, timeout, operation, true).await
    }

    /// An operation that is long by nature (a clone, a paced usage walk): its deadline passing
    /// says nothing of the export's health.
    async fn run_long<T>(
        &self,
        op: &'static str,
        path: String,
        timeout: Duration,
        operation: OpFuture<'_, T>,
    ) -> Result<T, StorageFailure> {
        self.timed(op, path, timeout, operation, false).await
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        path: String,
        timeout: Duration,
        operation: OpFuture<'_, T>,
        timeout_fails_export: bool,
    ) -> Result<T, StorageFailure> {
        match tokio::time::timeout(timeout, operation).await {
            Ok(result) => {
                if result.is_ok() {
                    self.health.export_status(&self.name, ExportStatus::Healthy);
                }
                result
            }
            // A mounted export's thread stays blocked in the kernel; only this operation fails.
            Err(_) => {
                if timeout_fails_export {
                    self.metrics.export_timed_out(&self.name);
                    self.health.export_status(
                        &self.name,
                        ExportStatus::Failing(format!("{op} {path} timed out after {timeout:?}")),
                    );
                }
                Err(StorageFailure::TimedOut {
                    op,
                    path,
                    after: timeout,
                })
            }
        }
    }

    /// Checks that the export answers and takes writes (a directory created and removed in the
    /// staging area), and records the verdict in [`Health`] either way.
    pub async fn probe(&self) -> Result<(), StorageFailure> {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            self.probes.fetch_add(1, Ordering::Relaxed)
        );
        let result = self
            .run(
                "probe",
                format!("export {}", self.name),
                self.limits.timeout,
                self.backend.probe_writable(&tag),
            )
            .await;
        if let Err(error) = &result {
            self.health
                .export_status(&self.name, ExportStatus::Failing(error.to_string()));
        }
        result
    }

    pub async fn create_volume(
        &self,
        pv_name: &str,
        path: &VolumePath,
        dir: DirMode,
        existing: Existing,
    ) -> Result<Created, StorageFailure> {
        self.run(
            "create directory",
            path.to_string(),
            self.limits.timeout,
            self.backend
                .create_volume(pv_name, path.components(), dir, existing, None),
        )
        .await
    }

    /// Creates `pv`'s directory at `path` as a copy of the volume at `source_path` of `source`
    /// (this export or another), placed only once the copy is whole; a retry resumes the copy.
    pub async fn clone_volume(
        &self,
        pv_name: &str,
        path: &VolumePath,
        dir: DirMode,
        source: &Storage,
        source_path: &VolumePath,
        progress: Arc<Progress>,
    ) -> Result<Created, StorageFailure> {
        let fill = Fill {
            source: &*source.backend,
            path: source_path.components(),
            concurrency: self.limits.clone_concurrency,
            progress,
        };
        self.run_long(
            "clone into directory",
            path.to_string(),
            self.limits.clone_timeout,
            self.backend
                .create_volume(pv_name, path.components(), dir, Existing::Refuse, Some(&fill)),
        )
        .await
    }

    /// What the volume at `path` takes (`None`: it is not there), paced by this export's budget.
    pub async fn measure_volume(&self, path: &VolumePath) -> Result<Option<Usage>, StorageFailure> {
        self.run_long(
            "measure directory",
            path.to_string(),
            USAGE_TIMEOUT,
            self.backend
                .measure_volume(path.components(), USAGE_CONCURRENCY, self.usage_pace.clone()),
        )
        .await
    }

    /// Drops `pv_name`'s staging record, and whatever it holds (a clone's unplaced copy: under the
    /// deadline of a delete).
    pub async fn finish_volume(&self, pv_name: &str) -> Result<(), StorageFailure> {
        self.run(
            "clear staging record of",
            pv_name.to_owned(),
            self.limits.delete_timeout,
            self.backend.finish_volume(pv_name),
        )
        .await
    }

    /// The path recorded for `pv_name`'s creation, if it has a staging record.
    pub async fn staged_target(&self, pv_name: &str) -> Result<Option<Vec<String>>, StorageFailure> {
        self.run(
            "read staging record of",
            pv_name.to_owned(),
            self.limits.timeout,
            self.backend.staged_target(pv_name),
        )
        .await
    }

    /// Removes probe directories that probes killed mid-way left; how many.
    pub async fn clear_probes(&self) -> Result<u64, StorageFailure> {
        self.run(
            "remove leftover probe directories in",
            format!("export {}", self.name),
            self.limits.timeout,
            self.backend.clear_probes(),
        )
        .await
    }

    pub async fn staged_volumes(&self) -> Result<Vec<String>, StorageFailure> {
        self.run(
            "list staging records in",
            format!("export {}", self.name),
            self.limits.timeout,
            self.backend.staged_volumes(),
        )
        .await
    }

    pub async fn archive_volume(&self, path: &VolumePath) -> Result<Archived, StorageFailure> {
        self.run(
            "archive directory",
            path.to_string(),
            self.limits.timeout,
            self.backend.archive_volume(path.components()),
        )
        .await
    }

    pub async fn delete_volume(&self, path: &VolumePath) -> Result<Removed, StorageFailure> {
        self.run(
            "delete directory",
            path.to_string(),
            self.limits.delete_timeout,
            self.backend
                .delete_volume(path.components(), self.limits.delete_concurrency),
        )
        .await
    }

    /// Up to `limit` entries of the directory at `path` (empty: the export root), with their
    /// attributes; `None`: it is not there.
    pub async fn list_directory(
        &self,
        path: &[String],
        limit: usize,
    ) -> Result<Option<Listing>, StorageFailure> {
        self.run(
            "list directory",
            if path.is_empty() {
                format!("export {}", self.name)
            } else {
                path.join("/")
            },
            self.limits.timeout,
            self.backend.list_dir(path, limit),
        )
        .await
    }

    pub async fn capacity(&self) -> Result<Capacity, StorageFailure> {
        self.run(
            "statvfs",
            format!("export {}", self.name),
            self.limits.timeout,
            self.backend.capacity(),
        )
        .await
    }
}

/// Every export the provisioner serves: the mounted one (if configured), and direct ones, made on
/// first use and kept (each holds its own connections, so one server's trouble stays its own).
#[derive(Clone)]
pub struct Exports {
    mounted: Option<(Export, Storage)>,
    direct: Arc<Mutex<HashMap<(Export, ClientOptions), Storage>>>,
    limits: Limits,
    health: Health,
    metrics: Metrics,
}

impl Exports {
    /// The mounted export (if NFS_SERVER/NFS_PATH are set) and room for the direct ones.
    pub fn from_config(config: &Config, health: Health, metrics: Metrics) -> Self {
        let limits = Limits {
            timeout: config.fs_timeout,
            delete_timeout: config.delete_timeout,
            delete_concurrency: config.delete_concurrency,
            clone_timeout: config.clone.timeout,
            clone_concurrency: config.clone.concurrency,
            usage_ops_per_second: config.usage.ops_per_second,
        };
        let mounted = config
            .mounted
            .clone()
            .map(|export| (export, config.mount_path.clone()));
        Self::new(mounted, limits, health, metrics)
    }

    /// `mounted`: the NFS_SERVER/NFS_PATH export and where it is mounted.
    pub fn new(mounted: Option<(Export, PathBuf)>, limits: Limits, health: Health, metrics: Metrics) -> Self {
        let mounted = mounted.map(|(export, root)| {
            let storage = Storage::new(
                Arc::new(MountedExport::new(root, limits.delete_concurrency)),
                export.to_string(),
                limits,
                health.clone(),
                metrics.clone(),
            );
            (export, storage)
        });
        Exports {
            mounted,
            direct: Arc::default(),
            limits,
            health,
            metrics,
        }
    }

    pub fn mounted_export(&self) -> Option<&Export> {
        self.mounted.as_ref().map(|(export, _)| export)
    }

    pub fn mounted(&self) -> Option<&Storage> {
        self.mounted.as_ref().map(|(_, storage)| storage)
    }

    /// The storage of `export`, reached as `access` says.
    pub fn get(&self, export: &Export, access: &Access) -> Result<Storage, StorageFailure> {
        let options = match access {
            Access::Mounted => return self.mounted().cloned().ok_or(StorageFailure::NoMountedExport),
            Access::Direct(options) => *options,
        };
        let mut direct = self
            .direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(direct
            .entry((export.clone(), options))
            .or_insert_with(|| {
                let backend: Arc<dyn Backend> = match options.version {
                    NfsVersion::V3 => Arc::new(Volumes::new(Nfs3Transport::new(export.clone(), options))),
                    NfsVersion::V4_1 => Arc::new(Volumes::new(Nfs4Transport::new(export.clone(), options))),
                };
                Storage::new(
                    backend,
                    export.to_string(),
                    self.limits,
                    self.health.clone(),
                    self.metrics.clone(),
                )
            })
            .clone())
    }
}
