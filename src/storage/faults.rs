//! Test support: a transport that fails on purpose, wrapped around a real one, to show what the
//! protocol and the walker leave behind when a step fails or the process dies in the middle, and
//! that a retry converges.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;

use super::error::StorageResult;
use super::posix::PosixError;
use super::transport::{
    At, Attrs, Capacity, FileCopied, Kind, Made, Move, Opened, OpenedFile, Owner, Page, ReadFile, Renamed,
    Stat, Target, Transport, Unlinked,
};

/// Fails every primitive from the `crash_at`-th on (0-based; a crash: nothing after it runs), and
/// every removal of an entry named `fail_remove`.
pub struct Faulty<T> {
    inner: T,
    calls: AtomicUsize,
    crash_at: Option<usize>,
    fail_remove: Option<(Vec<u8>, Errno)>,
    /// The primitives called, in order, by name.
    pub log: Mutex<Vec<&'static str>>,
}

impl<T: Transport> Faulty<T> {
    pub fn crash_at(inner: T, call: usize) -> Self {
        Faulty {
            inner,
            calls: AtomicUsize::new(0),
            crash_at: Some(call),
            fail_remove: None,
            log: Mutex::new(Vec::new()),
        }
    }

    pub fn failing_removal_of(inner: T, name: &str, errno: Errno) -> Self {
        Faulty {
            fail_remove: Some((name.as_bytes().to_vec(), errno)),
            crash_at: None,
            ..Faulty::crash_at(inner, 0)
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn enter(&self, primitive: &'static str, at: At<'_>) -> StorageResult<()> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(primitive);
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.crash_at.is_some_and(|c| n >= c) {
            return Err(PosixError::Io {
                op: at.op,
                path: at.path.to_owned(),
                errno: Errno::EIO,
            }
            .into());
        }
        Ok(())
    }
}

impl<T: Transport> Transport for Faulty<T> {
    type Dir = T::Dir;
    type Cursor = T::Cursor;
    type File = T::File;

    async fn root(&self) -> StorageResult<T::Dir> {
        self.enter("root", super::transport::at("open export root", ""))?;
        self.inner.root().await
    }
    async fn open_dir(&self, dir: &T::Dir, name: &[u8], at: At<'_>) -> StorageResult<Opened<T::Dir>> {
        self.enter("open_dir", at)?;
        self.inner.open_dir(dir, name, at).await
    }
    async fn stat(&self, dir: &T::Dir, name: &[u8], at: At<'_>) -> StorageResult<Option<Stat>> {
        self.enter("stat", at)?;
        self.inner.stat(dir, name, at).await
    }
    async fn dir_stat(&self, dir: &T::Dir, at: At<'_>) -> StorageResult<Stat> {
        self.enter("dir_stat", at)?;
        self.inner.dir_stat(dir, at).await
    }
    async fn parent(&self, dir: &T::Dir, at: At<'_>) -> StorageResult<T::Dir> {
        self.enter("parent", at)?;
        self.inner.parent(dir, at).await
    }
    async fn mkdir(&self, dir: &T::Dir, name: &[u8], mode: u32, at: At<'_>) -> StorageResult<Made<T::Dir>> {
        self.enter("mkdir", at)?;
        self.inner.mkdir(dir, name, mode, at).await
    }
    async fn chown(
        &self,
        dir: &T::Dir,
        uid: Option<u32>,
        gid: Option<u32>,
        best_effort: bool,
        at: At<'_>,
    ) -> StorageResult<()> {
        self.enter("chown", at)?;
        self.inner.chown(dir, uid, gid, best_effort, at).await
    }
    async fn chmod(&self, dir: &T::Dir, mode: u32, at: At<'_>) -> StorageResult<()> {
        self.enter("chmod", at)?;
        self.inner.chmod(dir, mode, at).await
    }
    async fn rename_noreplace(
        &self,
        m: Move<'_, T::Dir>,
        from_id: u64,
        reuse_claim: bool,
        at: At<'_>,
    ) -> StorageResult<Renamed> {
        self.enter("rename_noreplace", at)?;
        self.inner.rename_noreplace(m, from_id, reuse_claim, at).await
    }
    async fn rename(&self, m: Move<'_, T::Dir>, at: At<'_>) -> StorageResult<Renamed> {
        self.enter("rename", at)?;
        self.inner.rename(m, at).await
    }
    async fn write_file(&self, dir: &T::Dir, name: &[u8], content: &[u8], at: At<'_>) -> StorageResult<bool> {
        self.enter("write_file", at)?;
        self.inner.write_file(dir, name, content, at).await
    }
    async fn read_file(&self, dir: &T::Dir, name: &[u8], at: At<'_>) -> StorageResult<ReadFile> {
        self.enter("read_file", at)?;
        self.inner.read_file(dir, name, at).await
    }
    async fn read_dir(
        &self,
        dir: &T::Dir,
        from: Option<T::Cursor>,
        attrs: bool,
        at: At<'_>,
    ) -> StorageResult<Option<Page<T::Dir, T::Cursor>>> {
        self.enter("read_dir", at)?;
        self.inner.read_dir(dir, from, attrs, at).await
    }
    async fn remove(&self, dir: &T::Dir, name: &[u8], kind: Kind, at: At<'_>) -> StorageResult<Unlinked> {
        self.enter("remove", at)?;
        if let Some((n, errno)) = &self.fail_remove
            && n == name
        {
            return Err(PosixError::Io {
                op: at.op,
                path: at.path.to_owned(),
                errno: *errno,
            }
            .into());
        }
        self.inner.remove(dir, name, kind, at).await
    }
    async fn statfs(&self, dir: &T::Dir, at: At<'_>) -> StorageResult<Capacity> {
        self.enter("statfs", at)?;
        self.inner.statfs(dir, at).await
    }
    async fn open_file(&self, dir: &T::Dir, name: &[u8], at: At<'_>) -> StorageResult<OpenedFile<T::File>> {
        self.enter("open_file", at)?;
        self.inner.open_file(dir, name, at).await
    }
    async fn read(
        &self,
        file: &T::File,
        offset: u64,
        len: usize,
        at: At<'_>,
    ) -> StorageResult<Option<Vec<u8>>> {
        self.enter("read", at)?;
        self.inner.read(file, offset, len, at).await
    }
    async fn create_file(&self, dir: &T::Dir, name: &[u8], at: At<'_>) -> StorageResult<Made<T::File>> {
        self.enter("create_file", at)?;
        self.inner.create_file(dir, name, at).await
    }
    async fn write(
        &self,
        file: &T::File,
        offset: u64,
        data: &[u8],
        durable: bool,
        at: At<'_>,
    ) -> StorageResult<()> {
        self.enter("write", at)?;
        self.inner.write(file, offset, data, durable, at).await
    }
    async fn commit(&self, file: &T::File, at: At<'_>) -> StorageResult<()> {
        self.enter("commit", at)?;
        self.inner.commit(file, at).await
    }
    async fn sync(&self, dir: &T::Dir, at: At<'_>) -> StorageResult<()> {
        self.enter("sync", at)?;
        self.inner.sync(dir, at).await
    }
    async fn read_link(&self, dir: &T::Dir, name: &[u8], at: At<'_>) -> StorageResult<Option<Vec<u8>>> {
        self.enter("read_link", at)?;
        self.inner.read_link(dir, name, at).await
    }
    async fn symlink(&self, dir: &T::Dir, name: &[u8], target: &[u8], at: At<'_>) -> StorageResult<Made<()>> {
        self.enter("symlink", at)?;
        self.inner.symlink(dir, name, target, at).await
    }
    async fn set_attrs(
        &self,
        target: Target<'_, T::Dir, T::File>,
        attrs: &Attrs,
        at: At<'_>,
    ) -> StorageResult<Owner> {
        self.enter("set_attrs", at)?;
        self.inner.set_attrs(target, attrs, at).await
    }
    async fn copy_file(
        &self,
        from_dir: &T::Dir,
        from: &[u8],
        to_dir: &T::Dir,
        to: &[u8],
        attrs: &Attrs,
        at: At<'_>,
    ) -> StorageResult<Option<FileCopied>> {
        self.enter("copy_file", at)?;
        self.inner.copy_file(from_dir, from, to_dir, to, attrs, at).await
    }
    fn io_size(&self) -> usize {
        self.inner.io_size()
    }
    fn max_open_dirs(&self) -> Option<usize> {
        self.inner.max_open_dirs()
    }
    fn concurrent(&self) -> bool {
        self.inner.concurrent()
    }
    fn placing_may_leave_a_claim(&self) -> bool {
        self.inner.placing_may_leave_a_claim()
    }
    fn prepare_parallel(&self, in_flight: usize) {
        self.inner.prepare_parallel(in_flight);
    }
}
