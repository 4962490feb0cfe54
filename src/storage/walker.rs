//! One tree walker over any [`Transport`]: removes `parent/name` and everything below it, in
//! parallel, bounded, and never following a symlink or leaving the filesystem it started on.
//! Written for delete; its walk (list, classify, descend by handle) is what copy and usage need.
//!
//! * Descent is only ever by a directory handle and one name; non-directories (symlinks included)
//!   are removed as themselves, so a link's target is never touched. An entry swapped between
//!   being listed and being removed is taken for what it is now (each entry flips at most once).
//! * A directory on another filesystem (a nested mount or export) is never entered.
//! * Bounded: at most `concurrency` primitives in flight (one semaphore); listing is pipelined
//!   with removal, a page's files split among `concurrency` workers, and at most
//!   `4 x concurrency` such workers queued, so memory stays bounded however large a directory is.
//! * A transport whose primitives block their caller ([`Transport::concurrent`] is false) is
//!   walked one primitive at a time in the caller's own task, by the one-handle walk below.
//! * Directory handles: where they cost a resource (file descriptors), at most the transport's
//!   [`Transport::max_open_dirs`] directories are held open; a subtree met when that budget is
//!   spent is removed by one task holding one handle at a time, climbing back through `..`
//!   and checking it arrives where it came from.
//! * Each open directory counts its unfinished children; the last one removes it and cascades up.
//!   Removing while paging may make a listing skip entries: the directory's removal then finds it
//!   not empty and lists it again, at most [`MAX_ROUNDS`] times.
//! * The first error stops new work (in-flight primitives finish); what was removed stays removed,
//!   so a retry resumes. Dropping the walk's future (a deadline) stops it the same way.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use futures::future::BoxFuture;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::error::{Refusal, StorageFailure, StorageResult};
use super::transport::{Kind, Opened, Transport, Unlinked, at};

/// How often a directory is listed again because its removal found it not empty.
pub const MAX_ROUNDS: u32 = 5;
/// Upper bound on primitives in flight; larger requests are clamped.
pub const MAX_CONCURRENCY: usize = 1024;

const OP_LIST: &str = "read directory";
const OP_OPEN: &str = "open directory";
const OP_UNLINK: &str = "unlink";
const OP_RMDIR: &str = "remove directory";

/// What a removal did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Entries removed (files, links, directories, including `name` itself).
    pub removed: u64,
    /// Most directory handles the parallel walk held at once.
    pub peak_open_dirs: usize,
    /// Subtrees removed one handle at a time because the handle budget was spent.
    pub serial_subtrees: u64,
    /// The walk stopped at its entry budget ([`Walker::stop_after`]); more may remain.
    pub unfinished: bool,
}

pub struct Walker<T: Transport> {
    ctx: Arc<Ctx<T>>,
}

struct Ctx<T: Transport> {
    t: Arc<T>,
    ops: Semaphore,
    workers: Arc<Semaphore>,
    concurrency: usize,
    max_open: Option<usize>,
    open: AtomicUsize,
    peak: AtomicUsize,
    serial: AtomicU64,
    /// The filesystem of the top directory; nothing on another is entered.
    fs: OnceLock<u64>,
    removed: AtomicU64,
    /// Stop once this many entries are removed.
    budget: Option<u64>,
    unfinished: AtomicBool,
    stop: AtomicBool,
    error: Mutex<Option<StorageFailure>>,
    active: AtomicUsize,
    idle: Notify,
}

fn sub(path: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if path.is_empty() {
        name.into_owned()
    } else {
        format!("{path}/{name}")
    }
}

/// An open directory whose children are being removed.
struct Node<T: Transport> {
    dir: T::Dir,
    parent: Parent<T>,
    name: Vec<u8>,
    path: String,
    /// Children not yet finished, plus one while the directory is being listed.
    pending: AtomicUsize,
    rounds: AtomicU32,
    _slot: Option<Slot<T>>,
}

enum Parent<T: Transport> {
    Top(T::Dir),
    Node(Arc<Node<T>>),
}

impl<T: Transport> Clone for Parent<T> {
    fn clone(&self) -> Self {
        match self {
            Parent::Top(d) => Parent::Top(d.clone()),
            Parent::Node(n) => Parent::Node(Arc::clone(n)),
        }
    }
}

impl<T: Transport> Parent<T> {
    fn dir(&self) -> &T::Dir {
        match self {
            Parent::Top(d) => d,
            Parent::Node(n) => &n.dir,
        }
    }
}

/// One unit of the directory-handle budget, given back on drop.
struct Slot<T: Transport>(Arc<Ctx<T>>);

impl<T: Transport> Drop for Slot<T> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stops the walk's tasks when the caller stops waiting for them.
struct StopOnDrop<T: Transport>(Arc<Ctx<T>>);

impl<T: Transport> Drop for StopOnDrop<T> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

impl<T: Transport> Walker<T> {
    /// `concurrency` is clamped to `1..=MAX_CONCURRENCY`.
    pub fn new(transport: Arc<T>, concurrency: usize) -> Self {
        let concurrency = concurrency.clamp(1, MAX_CONCURRENCY);
        let max_open = transport.max_open_dirs();
        Walker {
            ctx: Arc::new(Ctx {
                t: transport,
                ops: Semaphore::new(concurrency),
                workers: Arc::new(Semaphore::new(4 * concurrency)),
                concurrency,
                max_open,
                open: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                serial: AtomicU64::new(0),
                fs: OnceLock::new(),
                removed: AtomicU64::new(0),
                budget: None,
                unfinished: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                error: Mutex::new(None),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Caps the directory handles held at once (at least 1), below the transport's own cap.
    pub fn max_open_dirs(mut self, max: usize) -> Self {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.max_open = Some(ctx.max_open.map_or(max, |own| own.min(max)).max(1));
        }
        self
    }

    /// Stops the walk, unfinished, once `entries` are removed (`None`: no budget). What is removed
    /// stays removed, so another walk finishes the job.
    pub fn stop_after(mut self, entries: Option<u64>) -> Self {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            ctx.budget = entries;
        }
        self
    }

    /// Removes `parent/name` (`parent_path` is `parent`'s path, for messages) and everything below
    /// it. A missing entry removes nothing; a non-directory (a symlink too) is removed itself.
    pub async fn remove(&self, parent: &T::Dir, name: &str, parent_path: &str) -> StorageResult<TreeStats> {
        let ctx = &self.ctx;
        let path = sub(parent_path, name.as_bytes());
        let name = name.as_bytes().to_vec();
        let Some(st) = ctx.op(ctx.t.stat(parent, &name, at("stat", &path))).await? else {
            return Ok(TreeStats::default());
        };
        if st.kind == Kind::Other {
            match ctx
                .op(ctx.t.remove(parent, &name, Kind::Other, at(OP_UNLINK, &path)))
                .await?
            {
                Unlinked::Done => ctx.count(),
                Unlinked::Missing => {}
                // Swapped for a directory since the stat: remove it as one.
                Unlinked::IsDir => return self.remove_dir(parent, name, path).await,
                other => return Err(unexpected(OP_UNLINK, path, other)),
            }
            return Ok(self.stats());
        }
        ctx.check_fs(st.fs, &path)?;
        if !ctx.t.concurrent() {
            // Spawned tasks would block the runtime's threads with the transport's calls.
            ctx.remove_serial(parent, &name, &path, false).await?;
            return Ok(self.stats());
        }
        self.remove_dir(parent, name, path).await
    }

    async fn remove_dir(&self, parent: &T::Dir, name: Vec<u8>, path: String) -> StorageResult<TreeStats> {
        let ctx = &self.ctx;
        let _stop = StopOnDrop(Arc::clone(ctx));
        let top = Ctx::dir_task(
            Arc::clone(ctx),
            Parent::Top(parent.clone()),
            name,
            path,
            None,
            false,
        );
        ctx.spawn(top);
        // Only running tasks spawn new ones, so the count reaches zero once, at the end; a
        // notification sent before this waits is kept for it.
        while ctx.active.load(Ordering::Acquire) != 0 {
            ctx.idle.notified().await;
        }
        if let Some(e) = ctx.error.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(e);
        }
        Ok(self.stats())
    }

    fn stats(&self) -> TreeStats {
        TreeStats {
            removed: self.ctx.removed.load(Ordering::Relaxed),
            peak_open_dirs: self.ctx.peak.load(Ordering::Relaxed),
            serial_subtrees: self.ctx.serial.load(Ordering::Relaxed),
            unfinished: self.ctx.unfinished.load(Ordering::Acquire),
        }
    }
}

fn unexpected(op: &'static str, path: String, answer: Unlinked) -> StorageFailure {
    match answer {
        Unlinked::NotEmpty => Refusal::KeepsFilling { op, path }.into(),
        _ => Refusal::NotADirectory { op, path }.into(),
    }
}

impl<T: Transport> Ctx<T> {
    /// Runs one primitive under a permit of the in-flight bound.
    async fn op<R>(&self, primitive: impl Future<Output = StorageResult<R>>) -> StorageResult<R> {
        let _permit = self.ops.acquire().await.map_err(|_| self.cancelled())?;
        primitive.await
    }

    fn cancelled(&self) -> StorageFailure {
        StorageFailure::Worker {
            op: "delete directory",
            reason: "removal cancelled".into(),
        }
    }

    fn count(&self) {
        let removed = self.removed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.budget.is_some_and(|budget| removed >= budget) {
            self.unfinished.store(true, Ordering::Release);
            self.stop.store(true, Ordering::Release);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn fail(&self, e: StorageFailure) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
        self.stop.store(true, Ordering::Release);
    }

    fn spawn(self: &Arc<Self>, task: BoxFuture<'static, ()>) {
        self.active.fetch_add(1, Ordering::AcqRel);
        let ctx = Arc::clone(self);
        tokio::spawn(async move {
            task.await;
            if ctx.active.fetch_sub(1, Ordering::AcqRel) == 1 {
                ctx.idle.notify_one();
            }
        });
    }

    fn reserve_slot(self: &Arc<Self>) -> Result<Option<Slot<T>>, ()> {
        let Some(max) = self.max_open else {
            return Ok(None);
        };
        let prev = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v < max).then_some(v + 1)
            })
            .map_err(drop)?;
        self.peak.fetch_max(prev + 1, Ordering::Relaxed);
        Ok(Some(Slot(Arc::clone(self))))
    }

    fn check_fs(&self, fs: u64, path: &str) -> StorageResult<()> {
        if *self.fs.get_or_init(|| fs) != fs {
            return Err(Refusal::OtherFilesystem {
                path: path.to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Removes directory `name` in `parent`; `dir`: its handle if the listing gave one.
    fn dir_task(
        self: Arc<Self>,
        parent: Parent<T>,
        name: Vec<u8>,
        path: String,
        dir: Option<T::Dir>,
        flipped: bool,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if self.stopped() {
                return;
            }
            let result = self.open_and_list(parent.clone(), name, path, dir, flipped).await;
            match result {
                Ok(true) => self.finish_child(parent).await,
                Ok(false) => {}
                Err(e) => self.fail(e),
            }
        })
    }

    /// `Ok(true)`: the entry is gone already (the caller finishes it in its parent).
    async fn open_and_list(
        self: &Arc<Self>,
        parent: Parent<T>,
        name: Vec<u8>,
        path: String,
        dir: Option<T::Dir>,
        flipped: bool,
    ) -> StorageResult<bool> {
        let Ok(slot) = self.reserve_slot() else {
            self.serial.fetch_add(1, Ordering::Relaxed);
            self.remove_serial(parent.dir(), &name, &path, flipped).await?;
            return Ok(true);
        };
        let dir = match dir {
            Some(d) => d,
            None => match self
                .op(self.t.open_dir(parent.dir(), &name, at(OP_OPEN, &path)))
                .await?
            {
                Opened::Dir(d) => d,
                Opened::Missing => return Ok(true),
                Opened::NotDir if !flipped => {
                    drop(slot);
                    self.unlink(parent.dir(), &name, &path).await?;
                    return Ok(true);
                }
                Opened::NotDir => return Err(Refusal::NotADirectory { op: OP_OPEN, path }.into()),
            },
        };
        let st = self.op(self.t.dir_stat(&dir, at("stat", &path))).await?;
        self.check_fs(st.fs, &path)?;
        let node = Arc::new(Node {
            dir,
            parent,
            name,
            path,
            pending: AtomicUsize::new(1),
            rounds: AtomicU32::new(0),
            _slot: slot,
        });
        Ctx::list(Arc::clone(self), node).await;
        Ok(false)
    }

    /// Unlinks a non-directory; `Ok(false)`: it is a directory now.
    async fn unlink(&self, dir: &T::Dir, name: &[u8], path: &str) -> StorageResult<bool> {
        match self
            .op(self.t.remove(dir, name, Kind::Other, at(OP_UNLINK, path)))
            .await?
        {
            Unlinked::Done => {
                self.count();
                Ok(true)
            }
            Unlinked::Missing => Ok(true),
            Unlinked::IsDir => Ok(false),
            other => Err(unexpected(OP_UNLINK, path.to_owned(), other)),
        }
    }

    /// Lists `node` and starts the removal of its entries, then drops the listing's reference.
    fn list(self: Arc<Self>, node: Arc<Node<T>>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = self.list_pages(&node).await {
                self.fail(e);
                return;
            }
            self.finish_child(Parent::Node(node)).await;
        })
    }

    async fn list_pages(self: &Arc<Self>, node: &Arc<Node<T>>) -> StorageResult<()> {
        let mut from = None;
        loop {
            if self.stopped() {
                return Ok(());
            }
            let Some(page) = self
                .op(self.t.read_dir(&node.dir, from, at(OP_LIST, &node.path)))
                .await?
            else {
                // The listing lost its place: the not-empty round lists again.
                return Ok(());
            };
            let mut files = Vec::new();
            for entry in page.entries {
                let path = sub(&node.path, &entry.name);
                let kind = match entry.kind {
                    Some(k) => k,
                    None => match self
                        .op(self.t.stat(&node.dir, &entry.name, at("stat", &path)))
                        .await?
                    {
                        Some(st) => st.kind,
                        None => continue,
                    },
                };
                if kind == Kind::Dir {
                    node.pending.fetch_add(1, Ordering::AcqRel);
                    let task = Ctx::dir_task(
                        Arc::clone(self),
                        Parent::Node(Arc::clone(node)),
                        entry.name,
                        path,
                        entry.dir,
                        false,
                    );
                    self.spawn(task);
                } else {
                    files.push((entry.name, path));
                }
            }
            // A worker per share of the page rather than a task per file: a spawn and a wake-up
            // per entry cost more than many removals.
            let workers = self.concurrency.min(files.len());
            let mut shares: Vec<Vec<(Vec<u8>, String)>> = (0..workers).map(|_| Vec::new()).collect();
            for (i, f) in files.into_iter().enumerate() {
                shares[i % workers].push(f);
            }
            for share in shares {
                let permit = Arc::clone(&self.workers)
                    .acquire_owned()
                    .await
                    .map_err(|_| self.cancelled())?;
                node.pending.fetch_add(1, Ordering::AcqRel);
                self.spawn(Ctx::unlink_share(
                    Arc::clone(self),
                    Arc::clone(node),
                    share,
                    permit,
                ));
            }
            match page.next {
                Some(next) => from = Some(next),
                None => return Ok(()),
            }
        }
    }

    fn unlink_share(
        self: Arc<Self>,
        node: Arc<Node<T>>,
        files: Vec<(Vec<u8>, String)>,
        permit: OwnedSemaphorePermit,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            for (name, path) in files {
                if self.stopped() {
                    return;
                }
                match self.unlink(&node.dir, &name, &path).await {
                    Ok(true) => {}
                    // Swapped for a directory since it was listed.
                    Ok(false) => {
                        node.pending.fetch_add(1, Ordering::AcqRel);
                        let task = Ctx::dir_task(
                            Arc::clone(&self),
                            Parent::Node(Arc::clone(&node)),
                            name,
                            path,
                            None,
                            true,
                        );
                        self.spawn(task);
                    }
                    Err(e) => return self.fail(e),
                }
            }
            drop(permit);
            self.finish_child(Parent::Node(node)).await;
        })
    }

    /// One child of `parent` is finished: if it was the last, remove `parent` and cascade up.
    async fn finish_child(self: &Arc<Self>, parent: Parent<T>) {
        let mut cur = parent;
        while let Parent::Node(node) = cur {
            if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 || self.stopped() {
                return;
            }
            let up = node.parent.dir();
            let answer = self
                .op(self.t.remove(up, &node.name, Kind::Dir, at(OP_RMDIR, &node.path)))
                .await;
            match answer {
                Ok(Unlinked::Done) => self.count(),
                Ok(Unlinked::Missing) => {}
                Ok(Unlinked::NotEmpty) => {
                    if node.rounds.fetch_add(1, Ordering::AcqRel) + 1 >= MAX_ROUNDS {
                        let path = node.path.clone();
                        return self.fail(Refusal::KeepsFilling { op: OP_RMDIR, path }.into());
                    }
                    node.pending.store(1, Ordering::Release);
                    self.spawn(Ctx::list(Arc::clone(self), node));
                    return;
                }
                // Swapped for a non-directory since it was opened.
                Ok(Unlinked::NotDir) => match self.unlink(up, &node.name, &node.path).await {
                    Ok(true) => {}
                    Ok(false) => return self.fail(unexpected(OP_RMDIR, node.path.clone(), Unlinked::IsDir)),
                    Err(e) => return self.fail(e),
                },
                Ok(other) => return self.fail(unexpected(OP_RMDIR, node.path.clone(), other)),
                Err(e) => return self.fail(e),
            }
            cur = node.parent.clone();
        }
    }

    /// The whole listing of `dir` as (name, kind if known, flipped) to-dos.
    async fn list_all(&self, dir: &T::Dir, path: &str) -> StorageResult<Vec<(Vec<u8>, Option<Kind>, bool)>> {
        'rounds: for _ in 0..MAX_ROUNDS {
            let (mut all, mut from) = (Vec::new(), None);
            loop {
                let Some(page) = self.op(self.t.read_dir(dir, from, at(OP_LIST, path))).await? else {
                    continue 'rounds;
                };
                all.extend(page.entries.into_iter().map(|e| (e.name, e.kind, false)));
                match page.next {
                    Some(next) => from = Some(next),
                    None => return Ok(all),
                }
            }
        }
        Err(Refusal::KeepsFilling {
            op: OP_LIST,
            path: path.to_owned(),
        }
        .into())
    }

    /// Removes `dir/name` alone, depth-first, holding one directory handle at a time.
    async fn remove_serial(&self, top: &T::Dir, name: &[u8], path: &str, flipped: bool) -> StorageResult<()> {
        struct Level {
            name: Vec<u8>,
            id: u64,
            path: String,
            todo: Vec<(Vec<u8>, Option<Kind>, bool)>,
        }
        let t = &*self.t;
        let mut cur = match self.op(t.open_dir(top, name, at(OP_OPEN, path))).await? {
            Opened::Dir(d) => d,
            Opened::Missing => return Ok(()),
            Opened::NotDir if !flipped => return self.unlink(top, name, path).await.map(drop),
            Opened::NotDir => return Err(unexpected(OP_OPEN, path.to_owned(), Unlinked::NotDir)),
        };
        let st = self.op(t.dir_stat(&cur, at("stat", path))).await?;
        self.check_fs(st.fs, path)?;
        let mut levels = vec![Level {
            name: name.to_vec(),
            id: st.id,
            path: path.to_owned(),
            todo: self.list_all(&cur, path).await?,
        }];
        loop {
            if self.stopped() {
                return Ok(());
            }
            let Some(level) = levels.last_mut() else {
                return Ok(());
            };
            if let Some((child, kind, flipped)) = level.todo.pop() {
                let child_path = sub(&level.path, &child);
                let kind = match kind {
                    Some(k) => k,
                    None => match self.op(t.stat(&cur, &child, at("stat", &child_path))).await? {
                        Some(st) => st.kind,
                        None => continue,
                    },
                };
                if kind == Kind::Other {
                    if !self.unlink(&cur, &child, &child_path).await? {
                        if flipped {
                            return Err(unexpected(OP_UNLINK, child_path, Unlinked::IsDir));
                        }
                        level.todo.push((child, Some(Kind::Dir), true));
                    }
                    continue;
                }
                match self
                    .op(t.open_dir(&cur, &child, at(OP_OPEN, &child_path)))
                    .await?
                {
                    Opened::Dir(d) => {
                        let st = self.op(t.dir_stat(&d, at("stat", &child_path))).await?;
                        self.check_fs(st.fs, &child_path)?;
                        let todo = self.list_all(&d, &child_path).await?;
                        levels.push(Level {
                            name: child,
                            id: st.id,
                            path: child_path,
                            todo,
                        });
                        cur = d;
                    }
                    Opened::Missing => {}
                    Opened::NotDir if !flipped => level.todo.push((child, Some(Kind::Other), true)),
                    Opened::NotDir => return Err(unexpected(OP_OPEN, child_path, Unlinked::NotDir)),
                }
                continue;
            }
            // The current directory is empty: climb to its parent and remove it there.
            let Some(done) = levels.pop() else {
                return Ok(());
            };
            let up = match levels.last() {
                None => top.clone(),
                Some(up) => {
                    let parent = self.op(t.parent(&cur, at("open parent of", &done.path))).await?;
                    let st = self
                        .op(t.dir_stat(&parent, at("stat parent of", &done.path)))
                        .await?;
                    if st.id != up.id {
                        // Moved elsewhere while we were inside it.
                        return Err(Refusal::Vanished {
                            op: "open parent of",
                            path: done.path,
                        }
                        .into());
                    }
                    parent
                }
            };
            match self
                .op(t.remove(&up, &done.name, Kind::Dir, at(OP_RMDIR, &done.path)))
                .await?
            {
                Unlinked::Done => self.count(),
                Unlinked::Missing => {}
                other => return Err(unexpected(OP_RMDIR, done.path, other)),
            }
            cur = up;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use nix::errno::Errno;

    use super::*;
    use crate::storage::faults::Faulty;
    use crate::storage::posix::{PosixError, PosixTransport};

    fn posix(root: &Path) -> Arc<PosixTransport> {
        Arc::new(PosixTransport::new(root.to_path_buf(), 16))
    }

    async fn remove<T: Transport>(
        t: Arc<T>,
        name: &str,
        concurrency: usize,
        budget: usize,
    ) -> StorageResult<TreeStats> {
        let root = t.root().await?;
        Walker::new(t, concurrency)
            .max_open_dirs(budget)
            .remove(&root, name, "")
            .await
    }

    /// `dirs` subdirectories (each with a nested one) holding `files` files in total; returns the
    /// entries made below and including `root`.
    fn make_tree(root: &Path, dirs: usize, files: usize) -> u64 {
        fs::create_dir(root).unwrap();
        let mut entries = 1;
        for d in 0..dirs {
            fs::create_dir_all(root.join(format!("d{d}/inner"))).unwrap();
            entries += 2;
        }
        for f in 0..files {
            let d = f % dirs;
            let sub = if f % 2 == 0 {
                format!("d{d}")
            } else {
                format!("d{d}/inner")
            };
            fs::write(root.join(sub).join(format!("f{f}")), b"x").unwrap();
            entries += 1;
        }
        entries
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_walk_stopped_at_its_budget_leaves_the_rest_for_the_next_one() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = make_tree(&tmp.path().join("vol"), 10, 200);
        for concurrency in [1, 8] {
            let t = posix(tmp.path());
            let root = t.root().await.unwrap();
            let stats = Walker::new(Arc::clone(&t), concurrency)
                .stop_after(Some(50))
                .remove(&root, "vol", "")
                .await
                .unwrap();
            assert!(stats.unfinished, "{stats:?}");
            // Primitives already under way finish after the budget is reached.
            assert!((50..entries).contains(&stats.removed), "{stats:?}");
            assert!(tmp.path().join("vol").is_dir());
            let rest = remove(t, "vol", concurrency, 128).await.unwrap();
            assert!(!rest.unfinished);
            assert_eq!(stats.removed + rest.removed, entries);
            assert!(!tmp.path().join("vol").exists());
            make_tree(&tmp.path().join("vol"), 10, 200);
        }
    }

    /// A chain `parent/name/d/d/.../d/leaf` of `depth` directories, made relative to fds (it may
    /// be deeper than PATH_MAX).
    fn make_chain(parent: &Path, name: &str, depth: usize) {
        use nix::fcntl::{OFlag, openat};
        use nix::sys::stat::{Mode, mkdirat};
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        fs::create_dir(parent.join(name)).unwrap();
        let mut cur = nix::fcntl::open(&parent.join(name), flags, Mode::empty()).unwrap();
        for _ in 1..depth {
            mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
            cur = openat(&cur, "d", flags, Mode::empty()).unwrap();
        }
        drop(
            openat(
                &cur,
                "leaf",
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap(),
        );
    }

    #[tokio::test]
    async fn removes_a_nested_tree_serially_and_in_parallel_and_counts_every_entry() {
        for concurrency in [1, 16] {
            let tmp = tempfile::tempdir().unwrap();
            let entries = make_tree(&tmp.path().join("vol"), 20, 2000);
            let stats = remove(posix(tmp.path()), "vol", concurrency, 128).await.unwrap();
            assert_eq!(stats.removed, entries, "concurrency {concurrency}");
            assert!(!tmp.path().join("vol").exists());
            assert!(stats.peak_open_dirs <= 128);
        }
    }

    #[tokio::test]
    async fn symlinks_inside_are_removed_as_links_and_their_targets_are_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("keep-dir")).unwrap();
        fs::write(outside.join("keep-file"), b"precious").unwrap();
        fs::write(outside.join("keep-dir/inner"), b"precious").unwrap();
        let vol = tmp.path().join("vol");
        for concurrency in [1, 4] {
            fs::create_dir_all(vol.join("sub")).unwrap();
            symlink(outside.join("keep-dir"), vol.join("to-dir")).unwrap();
            symlink(outside.join("keep-file"), vol.join("sub/to-file")).unwrap();
            symlink("/", vol.join("sub/to-root")).unwrap();
            let stats = remove(posix(tmp.path()), "vol", concurrency, 128).await.unwrap();
            assert_eq!(stats.removed, 5);
            assert!(!vol.exists());
        }
        assert_eq!(fs::read(outside.join("keep-file")).unwrap(), b"precious");
        assert_eq!(fs::read(outside.join("keep-dir/inner")).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn a_missing_entry_removes_nothing_and_a_top_level_symlink_is_unlinked_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            remove(posix(tmp.path()), "nothing", 4, 128)
                .await
                .unwrap()
                .removed,
            0
        );
        fs::create_dir(tmp.path().join("target")).unwrap();
        fs::write(tmp.path().join("target/f"), b"x").unwrap();
        symlink(tmp.path().join("target"), tmp.path().join("link")).unwrap();
        assert_eq!(
            remove(posix(tmp.path()), "link", 4, 128).await.unwrap().removed,
            1
        );
        assert!(tmp.path().join("target/f").exists());
        assert_eq!(
            remove(posix(tmp.path()), "target", 4, 128).await.unwrap().removed,
            2
        );
    }

    #[tokio::test]
    async fn a_chain_deeper_than_path_max_and_the_handle_budget_is_removed_with_bounded_open_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        make_chain(tmp.path(), "deep", 2100); // "d/" x 2100 > PATH_MAX
        let stats = remove(posix(tmp.path()), "deep", 4, 8).await.unwrap();
        assert_eq!(stats.removed, 2101);
        assert!(stats.peak_open_dirs <= 8, "{stats:?}");
        assert!(stats.serial_subtrees >= 1, "{stats:?}");
        assert!(!tmp.path().join("deep").exists());
    }

    #[tokio::test]
    async fn a_wide_and_deep_tree_never_holds_more_directories_open_than_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        for concurrency in [1, 8] {
            let root = tmp.path().join(format!("vol{concurrency}"));
            let mut expected = 1;
            for a in 0..12 {
                for b in 0..6 {
                    let dir = root.join(format!("a{a}/b{b}/c/d"));
                    fs::create_dir_all(&dir).unwrap();
                    fs::write(dir.join("f"), b"x").unwrap();
                    fs::write(root.join(format!("a{a}/b{b}/g")), b"x").unwrap();
                    expected += 5;
                }
                expected += 1;
            }
            let name = format!("vol{concurrency}");
            let stats = remove(posix(tmp.path()), &name, concurrency, 3).await.unwrap();
            assert_eq!(stats.removed, expected);
            assert!(stats.peak_open_dirs <= 3, "{stats:?}");
            assert!(!root.exists());
        }
    }

    #[tokio::test]
    async fn the_first_error_stops_the_removal_naming_the_entry_and_errno_and_a_retry_resumes() {
        for concurrency in [1, 8] {
            let tmp = tempfile::tempdir().unwrap();
            let entries = make_tree(&tmp.path().join("vol"), 10, 1000);
            let faulty =
                Faulty::failing_removal_of(PosixTransport::new(tmp.path().into(), 16), "f507", Errno::EACCES);
            let err = remove(Arc::new(faulty), "vol", concurrency, 128)
                .await
                .unwrap_err();
            assert_eq!(err.transport().map(PosixError::errno), Some(Errno::EACCES));
            assert_eq!(
                err.to_string(),
                "unlink vol/d7/inner/f507: EACCES: Permission denied"
            );
            assert!(tmp.path().join("vol/d7/inner/f507").exists());
            let rest = remove(posix(tmp.path()), "vol", concurrency, 128).await.unwrap();
            assert!(rest.removed >= 1 && rest.removed < entries, "{rest:?}");
            assert!(!tmp.path().join("vol").exists());
        }
    }

    #[tokio::test]
    async fn errors_inside_the_one_handle_walk_and_on_directory_removal_name_their_path() {
        let tmp = tempfile::tempdir().unwrap();
        make_chain(tmp.path(), "deep", 50);
        let faulty =
            Faulty::failing_removal_of(PosixTransport::new(tmp.path().into(), 16), "leaf", Errno::EROFS);
        let err = remove(Arc::new(faulty), "deep", 2, 2).await.unwrap_err();
        assert_eq!(err.transport().map(PosixError::errno), Some(Errno::EROFS));
        let msg = err.to_string();
        assert!(
            msg.starts_with("unlink deep/d/d/") && msg.contains("/d/leaf: EROFS"),
            "{msg}"
        );

        fs::create_dir_all(tmp.path().join("vol/keep/inner")).unwrap();
        let faulty =
            Faulty::failing_removal_of(PosixTransport::new(tmp.path().into(), 16), "keep", Errno::EBUSY);
        let err = remove(Arc::new(faulty), "vol", 1, 128).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "remove directory vol/keep: EBUSY: Device or resource busy"
        );
        assert!(!tmp.path().join("vol/keep/inner").exists());
        assert_eq!(
            remove(posix(tmp.path()), "deep", 1, 128).await.unwrap().removed,
            51
        );
    }

    #[tokio::test]
    async fn dropping_the_walk_stops_its_tasks() {
        let tmp = tempfile::tempdir().unwrap();
        make_tree(&tmp.path().join("vol"), 10, 3000);
        let t = posix(tmp.path());
        let root = t.root().await.unwrap();
        let walker = Walker::new(Arc::clone(&t), 2);
        let mut walk = Box::pin(walker.remove(&root, "vol", ""));
        // Dropped once well under way (of 3031 entries), as an operation's deadline drops it.
        while walker.stats().removed < 100 {
            tokio::select! {
                biased;
                done = &mut walk => panic!("the walk ended before it was dropped: {done:?}"),
                () = tokio::task::yield_now() => {}
            }
        }
        drop(walk);
        let stopped_at = walker.stats().removed;
        let ctx = Arc::clone(&walker.ctx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ctx.active.load(Ordering::Acquire) != 0 {
            assert!(std::time::Instant::now() < deadline, "tasks still running");
            tokio::task::yield_now().await;
        }
        // In-flight primitives finish; nothing new starts.
        assert!(
            walker.stats().removed <= stopped_at + 2 * 16,
            "{stopped_at} -> {:?}",
            walker.stats()
        );
        assert!(tmp.path().join("vol").exists());
    }
}
