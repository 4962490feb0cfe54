//! Directory operations on the export. The blocking work lives in [`mounted`] (POSIX calls on the
//! mounted export, symlink-safe, crash-safe); this module runs each operation on a blocking thread
//! under a deadline, because a hard-mounted NFS export that stops answering blocks syscalls forever
//! and must fail only the operations on it, never the controller.

pub mod mounted;
pub mod tree;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use mounted::{Archived, Capacity, Created, DirAttrs, MountedExport, Removed, StorageError};

use crate::core::naming::VolumePath;
use crate::core::params::DirMode;

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
    #[error("{op} {path}: worker thread failed: {reason}")]
    Worker {
        op: &'static str,
        path: String,
        reason: String,
    },
}

#[derive(Clone)]
pub struct Storage {
    export: Arc<MountedExport>,
    timeout: Duration,
    delete_timeout: Duration,
    delete_concurrency: usize,
}

impl Storage {
    pub fn new(
        root: PathBuf,
        timeout: Duration,
        delete_timeout: Duration,
        delete_concurrency: usize,
    ) -> Self {
        Storage {
            export: Arc::new(MountedExport::new(root)),
            timeout,
            delete_timeout,
            delete_concurrency,
        }
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
        let export = Arc::clone(&self.export);
        let task = tokio::task::spawn_blocking(move || f(&export));
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(join)) => Err(StorageFailure::Worker {
                op,
                path,
                reason: join.to_string(),
            }),
            // The thread stays blocked in the kernel; only this operation fails.
            Err(_) => Err(StorageFailure::TimedOut {
                op,
                path,
                after: timeout,
            }),
        }
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
        self.run("create directory", path.to_string(), self.timeout, move |e| {
            e.create_volume(&pv, &components, &attrs)
        })
        .await
    }

    pub async fn finish_volume(&self, pv_name: &str) -> Result<(), StorageFailure> {
        let pv = pv_name.to_owned();
        self.run("clear staging record of", pv.clone(), self.timeout, move |e| {
            e.finish_volume(&pv)
        })
        .await
    }

    pub async fn staged_volumes(&self) -> Result<Vec<String>, StorageFailure> {
        self.run(
            "list staging records in",
            String::from("the export"),
            self.timeout,
            |e| e.staged_volumes(),
        )
        .await
    }

    pub async fn archive_volume(&self, path: &VolumePath) -> Result<Archived, StorageFailure> {
        let components = path.components().to_vec();
        self.run("archive directory", path.to_string(), self.timeout, move |e| {
            e.archive_volume(&components)
        })
        .await
    }

    pub async fn delete_volume(&self, path: &VolumePath) -> Result<Removed, StorageFailure> {
        let components = path.components().to_vec();
        let concurrency = self.delete_concurrency;
        self.run(
            "delete directory",
            path.to_string(),
            self.delete_timeout,
            move |e| e.delete_volume(&components, concurrency),
        )
        .await
    }

    pub async fn capacity(&self) -> Result<Capacity, StorageFailure> {
        self.run("statvfs", String::from("the export"), self.timeout, |e| {
            e.capacity()
        })
        .await
    }
}
