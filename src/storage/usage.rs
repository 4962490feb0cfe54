//! Measuring a volume as a visit of the tree walker: what its tree takes on the server, counted as
//! `du` counts it (every inode once, hard links included, symlinks as themselves, never followed,
//! nothing on another filesystem).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::error::StorageResult;
use super::transport::{FileType, Kind, Stat, Transport};
use super::walker::{Left, Ops, Step, Visit};

/// What a volume's tree takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated on the server's disk (st_blocks × 512, NFS `used`), every inode once: what
    /// `du` prints, and what kubelet reports of the volumes it measures itself.
    pub used_bytes: u64,
    /// Length of the regular files, each inode once (`du --apparent-size` of the files).
    pub file_bytes: u64,
    /// Inodes: directories (the volume's own included), files, symlinks and others, each once.
    pub inodes: u64,
}

/// The measuring visitor: totals of what it has seen so far.
#[derive(Default)]
pub struct Measure {
    used: AtomicU64,
    file_bytes: AtomicU64,
    inodes: AtomicU64,
    /// Inodes with more than one name seen so far, by (filesystem, inode).
    linked: Mutex<HashSet<(u64, u64)>>,
}

impl Measure {
    /// Counts `st`, unless it is a further name of an inode already counted.
    pub fn add(&self, st: &Stat) {
        if st.kind() == Kind::Other
            && st.nlink > 1
            && !self
                .linked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert((st.fs, st.id))
        {
            return;
        }
        self.used.fetch_add(st.used, Ordering::Relaxed);
        self.inodes.fetch_add(1, Ordering::Relaxed);
        if st.file_type == FileType::Regular {
            self.file_bytes.fetch_add(st.size, Ordering::Relaxed);
        }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            used_bytes: self.used.load(Ordering::Relaxed),
            file_bytes: self.file_bytes.load(Ordering::Relaxed),
            inodes: self.inodes.load(Ordering::Relaxed),
        }
    }
}

impl<T: Transport> Visit<T> for Measure {
    type State = ();
    const STAT: bool = true;

    async fn enter(&self, _: &Ops<T>, _: &(), _: &[u8], _: &str, st: &Stat) -> StorageResult<Option<()>> {
        self.add(st);
        Ok(Some(()))
    }

    async fn entry(
        &self,
        _: &Ops<T>,
        _: &T::Dir,
        _: &(),
        _: &[u8],
        _: &str,
        st: Option<&Stat>,
    ) -> StorageResult<Step> {
        if let Some(st) = st {
            self.add(st);
        }
        Ok(Step::Done)
    }

    async fn leave(&self, _: &Ops<T>, _: &T::Dir, _: &(), _: &[u8], _: &str, _: &()) -> StorageResult<Left> {
        Ok(Left::Done)
    }

    async fn climb(&self, _: &Ops<T>, _: &(), _: &str, _: &Stat) -> StorageResult<()> {
        Ok(())
    }
}
