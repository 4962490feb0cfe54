//! Directory operations on exports, through one small interface ([`Backend`]) with two
//! implementations: [`mounted`] (POSIX calls on the export mounted at `NFS_MOUNT_PATH`, as
//! nfs-subdir-external-provisioner works) and [`direct`] (a userspace NFSv3 client, no mount, no
//! privileges). Both give the same semantics: exclusive create with provable adoption of the
//! claim's own interrupted attempt, mode and owner applied after creation, collision-free
//! archives, deletes that never follow symlinks, capacity.
//!
//! [`Storage`] wraps one export's backend: every operation runs under a deadline and its outcome
//! is reported to [`Health`] (a timeout marks the export failing for readiness and metrics; a
//! completed operation or a passing [`Storage::probe`] marks it answering again). [`Exports`]
//! holds the mounted export and the direct ones StorageClasses name, so a hung or unreachable
//! server fails only the operations on it.

pub mod direct;
pub mod mounted;
pub mod tree;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

pub use mounted::{Archived, Capacity, Created, DirAttrs, MountedExport, Removed, StorageError};

use crate::core::export::{Access, ClientOptions, Export};
use crate::core::naming::VolumePath;
use crate::core::params::DirMode;
use crate::health::{ExportStatus, Health};

/// Blocking threads the mounted export may occupy at once. Enough for the controllers' parallel
/// work; bounded so a hung mount cannot exhaust the runtime's blocking pool.
pub const MAX_BLOCKED: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    #[error(transparent)]
    Op(#[from] StorageError),
    #[error(transparent)]
    Nfs(#[from] direct::NfsError),
    #[error("{op} {path} did not finish within {after:?}: is the export answering?")]
    TimedOut {
        op: &'static str,
        path: String,
        after: Duration,
    },
    #[error("{op}: worker thread failed: {reason}")]
    Worker { op: &'static str, reason: String },
    #[error(
        "no mounted export is configured (NFS_SERVER and NFS_PATH are unset); name server and share in the StorageClass"
    )]
    NoMountedExport,
}

impl StorageFailure {
    /// A directory not made for this volume is at its path. Also what provisioning sees of its own
    /// finished directory when a lagging cache hides the PV made for it.
    pub fn is_taken(&self) -> bool {
        matches!(
            self,
            StorageFailure::Op(StorageError::Exists { .. })
                | StorageFailure::Nfs(direct::NfsError::Exists { .. })
        )
    }
}

/// The result of one backend operation.
pub type OpFuture<'a, T> = BoxFuture<'a, Result<T, StorageFailure>>;

/// One export's directory operations; paths are components relative to the export root.
pub trait Backend: Send + Sync {
    fn create_volume<'a>(&'a self, pv: &'a str, path: &'a [String], attrs: DirAttrs)
    -> OpFuture<'a, Created>;
    /// Drops the staging record of `pv` (once its PV exists). Idempotent.
    fn finish_volume<'a>(&'a self, pv: &'a str) -> OpFuture<'a, ()>;
    fn staged_volumes(&self) -> OpFuture<'_, Vec<String>>;
    fn archive_volume<'a>(&'a self, path: &'a [String]) -> OpFuture<'a, Archived>;
    fn delete_volume<'a>(&'a self, path: &'a [String], concurrency: usize) -> OpFuture<'a, Removed>;
    fn capacity(&self) -> OpFuture<'_, Capacity>;
    /// Creates and removes an empty directory named after `tag` in the staging area.
    fn probe_writable<'a>(&'a self, tag: &'a str) -> OpFuture<'a, ()>;
}

/// The mounted export: each operation on a blocking thread, at most [`MAX_BLOCKED`] at once.
pub struct MountedBackend {
    export: Arc<MountedExport>,
    threads: Arc<Semaphore>,
}

impl MountedBackend {
    pub fn new(root: PathBuf) -> Self {
        MountedBackend {
            export: Arc::new(MountedExport::new(root)),
            threads: Arc::new(Semaphore::new(MAX_BLOCKED)),
        }
    }

    fn blocking<T, F>(&self, op: &'static str, f: F) -> OpFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&MountedExport) -> Result<T, StorageError> + Send + 'static,
    {
        let export = Arc::clone(&self.export);
        let threads = Arc::clone(&self.threads);
        Box::pin(async move {
            // Waiting here is bounded by the caller's deadline, like the operation itself.
            let permit = threads
                .acquire_owned()
                .await
                .map_err(|e| StorageFailure::Worker {
                    op,
                    reason: e.to_string(),
                })?;
            let task = tokio::task::spawn_blocking(move || {
                // Held until the syscall returns, however long after the deadline that is.
                let _permit = permit;
                f(&export)
            });
            match task.await {
                Ok(result) => Ok(result?),
                Err(join) => Err(StorageFailure::Worker {
                    op,
                    reason: join.to_string(),
                }),
            }
        })
    }
}

impl Backend for MountedBackend {
    fn create_volume<'a>(
        &'a self,
        pv: &'a str,
        path: &'a [String],
        attrs: DirAttrs,
    ) -> OpFuture<'a, Created> {
        let (pv, path) = (pv.to_owned(), path.to_vec());
        self.blocking("create directory", move |e| e.create_volume(&pv, &path, &attrs))
    }

    fn finish_volume<'a>(&'a self, pv: &'a str) -> OpFuture<'a, ()> {
        let pv = pv.to_owned();
        self.blocking("clear staging record", move |e| e.finish_volume(&pv))
    }

    fn staged_volumes(&self) -> OpFuture<'_, Vec<String>> {
        self.blocking("list staging area", MountedExport::staged_volumes)
    }

    fn archive_volume<'a>(&'a self, path: &'a [String]) -> OpFuture<'a, Archived> {
        let path = path.to_vec();
        self.blocking("archive directory", move |e| e.archive_volume(&path))
    }

    fn delete_volume<'a>(&'a self, path: &'a [String], concurrency: usize) -> OpFuture<'a, Removed> {
        let path = path.to_vec();
        self.blocking("delete directory", move |e| e.delete_volume(&path, concurrency))
    }

    fn capacity(&self) -> OpFuture<'_, Capacity> {
        self.blocking("statvfs", MountedExport::capacity)
    }

    fn probe_writable<'a>(&'a self, tag: &'a str) -> OpFuture<'a, ()> {
        let tag = tag.to_owned();
        self.blocking("probe", move |e| e.probe_writable(&tag))
    }
}

/// Deadlines and parallelism of directory operations.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub delete_timeout: Duration,
    pub delete_concurrency: usize,
}

/// One export's operations under deadlines, reported to [`Health`]. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    /// `server:path`, as operators know the export; names it in health, metrics and logs.
    name: String,
    limits: Limits,
    health: Health,
    probes: Arc<AtomicU64>,
}

impl Storage {
    pub fn new(backend: Arc<dyn Backend>, name: String, limits: Limits, health: Health) -> Self {
        Storage {
            backend,
            name,
            limits,
            health,
            probes: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn run<T>(
        &self,
        op: &'static str,
        path: String,
        timeout: Duration,
        operation: OpFuture<'_, T>,
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
                self.health.metrics().export_timed_out(&self.name);
                self.health.export_status(
                    &self.name,
                    ExportStatus::Failing(format!("{op} {path} timed out after {timeout:?}")),
                );
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
    ) -> Result<Created, StorageFailure> {
        let attrs = DirAttrs {
            mode: dir.mode,
            uid: dir.uid,
            gid: dir.gid,
        };
        self.run(
            "create directory",
            path.to_string(),
            self.limits.timeout,
            self.backend.create_volume(pv_name, path.components(), attrs),
        )
        .await
    }

    pub async fn finish_volume(&self, pv_name: &str) -> Result<(), StorageFailure> {
        self.run(
            "clear staging record of",
            pv_name.to_owned(),
            self.limits.timeout,
            self.backend.finish_volume(pv_name),
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
}

impl Exports {
    /// `mounted`: the NFS_SERVER/NFS_PATH export and where it is mounted.
    pub fn new(mounted: Option<(Export, PathBuf)>, limits: Limits, health: Health) -> Self {
        let mounted = mounted.map(|(export, root)| {
            let storage = Storage::new(
                Arc::new(MountedBackend::new(root)),
                export.to_string(),
                limits,
                health.clone(),
            );
            (export, storage)
        });
        Exports {
            mounted,
            direct: Arc::default(),
            limits,
            health,
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
                Storage::new(
                    Arc::new(direct::DirectBackend::new(export.clone(), options)),
                    export.to_string(),
                    self.limits,
                    self.health.clone(),
                )
            })
            .clone())
    }
}
