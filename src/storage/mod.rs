//! Directory operations on the export. The blocking work lives in [`mounted`] (POSIX calls on the
//! mounted export, symlink-safe, crash-safe); this module runs each operation on a blocking thread
//! under a deadline, because a hard-mounted NFS export that stops answering blocks syscalls forever
//! and must fail only the operations on it, never the controller. A hung export can hold at most
//! [`MAX_BLOCKED`] threads; later operations on it fail at their deadline without starting one.
//! Every outcome is reported to [`Health`]: a timeout marks the export failing (readiness,
//! metrics), a completed operation or a passing [`Storage::probe`] marks it answering again.

pub mod mounted;
pub mod tree;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

pub use mounted::{Archived, Capacity, Created, DirAttrs, MountedExport, Removed, StorageError};

use crate::core::naming::VolumePath;
use crate::core::params::DirMode;
use crate::health::{ExportStatus, Health};

/// Blocking threads one export may occupy at once. Enough for the controllers' parallel work;
/// bounded so a hung export cannot exhaust the runtime's blocking pool, which others need too.
pub const MAX_BLOCKED: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    #[error(transparent)]
    Op(#[from] StorageError),
    #[error("{op} {path} did not finish within {after:?}: is the export answering?")]
    TimedOut {
        op: &'static str,
        path: String,
        after: Duration,
    },
    #[error(
        "{op} {path} not started within {after:?}: {MAX_BLOCKED} earlier operations on the export are still blocked; is it answering?"
    )]
    Saturated {
        op: &'static str,
        path: String,
        after: Duration,
    },
    #[error("{op} {path}: worker thread failed: {reason}")]
    Worker {
        op: &'static str,
        path: String,
        reason: String,
    },
}

/// Deadlines and parallelism of directory operations.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub delete_timeout: Duration,
    pub delete_concurrency: usize,
}

#[derive(Clone)]
pub struct Storage {
    export: Arc<MountedExport>,
    /// `server:path`, as operators know the export; names it in health, metrics and logs.
    name: String,
    limits: Limits,
    threads: Arc<Semaphore>,
    health: Health,
    probes: Arc<AtomicU64>,
}

impl Storage {
    pub fn new(root: PathBuf, name: String, limits: Limits, health: Health) -> Self {
        Storage {
            export: Arc::new(MountedExport::new(root)),
            name,
            limits,
            threads: Arc::new(Semaphore::new(MAX_BLOCKED)),
            health,
            probes: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn run<T, F>(
        &self,
        op: &'static str,
        path: String,
        timeout: Duration,
        f: F,
    ) -> Result<T, StorageFailure>
    where
        T: Send + 'static,
        F: FnOnce(&MountedExport) -> Result<T, StorageError> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let Ok(Ok(permit)) =
            tokio::time::timeout_at(deadline, Arc::clone(&self.threads).acquire_owned()).await
        else {
            self.timed_out(op, &path);
            return Err(StorageFailure::Saturated {
                op,
                path,
                after: timeout,
            });
        };
        let export = Arc::clone(&self.export);
        let task = tokio::task::spawn_blocking(move || {
            // Held until the syscall returns, however long after the deadline that is.
            let _permit = permit;
            f(&export)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => {
                if result.is_ok() {
                    self.health.export_status(&self.name, ExportStatus::Healthy);
                }
                Ok(result?)
            }
            Ok(Err(join)) => Err(StorageFailure::Worker {
                op,
                path,
                reason: join.to_string(),
            }),
            // The thread stays blocked in the kernel; only this operation fails.
            Err(_) => {
                self.timed_out(op, &path);
                Err(StorageFailure::TimedOut {
                    op,
                    path,
                    after: timeout,
                })
            }
        }
    }

    fn timed_out(&self, op: &str, path: &str) {
        self.health.metrics().export_timed_out(&self.name);
        self.health.export_status(
            &self.name,
            ExportStatus::Failing(format!("{op} {path} timed out")),
        );
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
                String::from("the export"),
                self.limits.timeout,
                move |e| e.probe_writable(&tag),
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
        let (pv, components) = (pv_name.to_owned(), path.components().to_vec());
        let attrs = DirAttrs {
            mode: dir.mode,
            uid: dir.uid,
            gid: dir.gid,
        };
        self.run(
            "create directory",
            path.to_string(),
            self.limits.timeout,
            move |e| e.create_volume(&pv, &components, &attrs),
        )
        .await
    }

    pub async fn finish_volume(&self, pv_name: &str) -> Result<(), StorageFailure> {
        let pv = pv_name.to_owned();
        self.run(
            "clear staging record of",
            pv.clone(),
            self.limits.timeout,
            move |e| e.finish_volume(&pv),
        )
        .await
    }

    pub async fn staged_volumes(&self) -> Result<Vec<String>, StorageFailure> {
        self.run(
            "list staging records in",
            String::from("the export"),
            self.limits.timeout,
            |e| e.staged_volumes(),
        )
        .await
    }

    pub async fn archive_volume(&self, path: &VolumePath) -> Result<Archived, StorageFailure> {
        let components = path.components().to_vec();
        self.run(
            "archive directory",
            path.to_string(),
            self.limits.timeout,
            move |e| e.archive_volume(&components),
        )
        .await
    }

    pub async fn delete_volume(&self, path: &VolumePath) -> Result<Removed, StorageFailure> {
        let components = path.components().to_vec();
        let concurrency = self.limits.delete_concurrency;
        self.run(
            "delete directory",
            path.to_string(),
            self.limits.delete_timeout,
            move |e| e.delete_volume(&components, concurrency),
        )
        .await
    }

    pub async fn capacity(&self) -> Result<Capacity, StorageFailure> {
        self.run("statvfs", String::from("the export"), self.limits.timeout, |e| {
            e.capacity()
        })
        .await
    }
}
