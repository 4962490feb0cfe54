//! One tree walker over any [`Transport`]: lists, classifies and descends by handle, in
//! parallel, bounded, never following a symlink or leaving the filesystem it started on. What is
//! done at each entry is a [`Visit`]: removal ([`super::remove`]), measuring ([`super::usage`]) and
//! copying ([`super::copy`]) are three visitors of this one walk.
//!
//! * Descent is only ever by a directory handle and one name; a non-directory (a symlink
//!   included) is handed to the visitor as itself, so a link's target is never touched. An entry
//!   swapped between being listed and being visited is taken for what it is now (each entry flips
//!   at most once).
//! * A directory on another filesystem (a nested mount or export) is never entered.
//! * Bounded: at most `concurrency` primitives in flight (one semaphore, which the visitor's own
//!   primitives share through [`Ops::run`]), optionally paced by a [`Pace`]; listing is pipelined
//!   with visiting, a page's non-directories split among `concurrency` workers, and at most
//!   `4 x concurrency` such workers queued, so memory stays bounded however large a directory is.
//! * A transport whose primitives block their caller ([`Transport::concurrent`] is false) is
//!   walked one primitive at a time in the caller's own task, by the one-handle walk below.
//! * Directory handles: where they cost a resource (file descriptors), at most the transport's
//!   [`Transport::max_open_dirs`] directories are held open; a subtree met when that budget is
//!   spent is walked by one task holding one handle at a time, climbing back through `..` and
//!   checking it arrives where it came from (the visitor climbs its own state alike).
//! * Each open directory counts its unfinished children; the last one leaves it (a removal:
//!   removes it) and cascades up. Removing while paging may make a listing skip entries: a
//!   visitor that finds its directory not empty on leaving has it listed again, at most
//!   [`MAX_ROUNDS`] times.
//! * The first error stops new work (in-flight primitives finish); what was done stays done, so
//!   a retry resumes. Dropping the walk's future (a deadline) stops it the same way.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::{Refusal, StorageFailure, StorageResult};
use super::transport::{Kind, Opened, Stat, Transport, at};

/// How often a directory is listed again because leaving it found it not empty.
pub const MAX_ROUNDS: u32 = 5;
/// Upper bound on primitives in flight; larger requests are clamped.
pub const MAX_CONCURRENCY: usize = 1024;

const OP_LIST: &str = "read directory";
const OP_OPEN: &str = "open directory";

/// What visiting a non-directory did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Done,
    /// It was not there any more.
    Gone,
    /// It is a directory now (swapped since it was listed): walk it as one.
    IsDir,
}

/// What leaving a directory did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    Done,
    Gone,
    /// It still has entries the walk did not see: list it again.
    NotEmpty,
}

/// What a walk does at each entry; the walker does the rest. Calls for different entries run
/// concurrently.
pub trait Visit<T: Transport>: Send + Sync + 'static {
    /// What the visitor keeps per directory (a copy: the directory it copies into).
    type State: Clone + Send + Sync + 'static;
    /// Each entry's attributes are needed: where the listing lacks them, the walker stats.
    const STAT: bool;

    /// Directory `name` of the directory of state `parent`, with attributes `st`, is about to be
    /// walked: its state (`None`: leave it out).
    fn enter(
        &self,
        ops: &Ops<T>,
        parent: &Self::State,
        name: &[u8],
        path: &str,
        st: &Stat,
    ) -> impl Future<Output = StorageResult<Option<Self::State>>> + Send;

    /// Non-directory `name` of `dir`; `st`: its attributes, where known (always, with `STAT`).
    fn entry(
        &self,
        ops: &Ops<T>,
        dir: &T::Dir,
        state: &Self::State,
        name: &[u8],
        path: &str,
        st: Option<&Stat>,
    ) -> impl Future<Output = StorageResult<Step>> + Send;

    /// Every entry of directory `name` of `parent_dir` is done; `state` is its own.
    fn leave(
        &self,
        ops: &Ops<T>,
        parent_dir: &T::Dir,
        parent: &Self::State,
        name: &[u8],
        path: &str,
        state: &Self::State,
    ) -> impl Future<Output = StorageResult<Left>> + Send;

    /// The state of the parent (attributes `parent`) of the directory of state `state`: the
    /// one-handle walk holds one directory at a time and climbs back through `..`.
    fn climb(
        &self,
        ops: &Ops<T>,
        state: &Self::State,
        path: &str,
        parent: &Stat,
    ) -> impl Future<Output = StorageResult<Self::State>> + Send;
}

/// Holds primitives to at most `per_second` on average, across every walk that shares it (a
/// background walk's budget on one export), in bursts of at most [`PACE_BURST`]: a walk that
/// must wait sleeps until a burst's worth is due, rather than once per primitive, each sleep
/// being a wake-up of its own (most of a paced walk's CPU when it slept before every primitive).
/// Cheap to clone.
#[derive(Clone)]
pub struct Pace {
    interval: Duration,
    next: Arc<Mutex<Instant>>,
}

/// Primitives a paced walk may send at once: 0.1 s of the default usage pace (200 per second).
pub const PACE_BURST: u32 = 20;

impl Pace {
    pub fn per_second(per_second: u32) -> Self {
        Pace {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Arc::new(Mutex::new(Instant::now())),
        }
    }

    async fn wait(&self) {
        let wake = {
            let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            // Time spent idle is not saved up beyond one burst.
            let due = (*next).max(now);
            *next = due + self.interval;
            (due > now + self.interval * (PACE_BURST - 1)).then_some(due)
        };
        if let Some(at) = wake {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// The transport as a visitor reaches it: every primitive under the walk's bounds.
pub struct Ops<T> {
    t: Arc<T>,
    permits: Semaphore,
    pace: Option<Pace>,
    op: &'static str,
}

impl<T: Transport> Ops<T> {
    pub fn t(&self) -> &T {
        &self.t
    }

    pub fn transport(&self) -> &Arc<T> {
        &self.t
    }

    /// Runs `primitive` (of this transport or any other) as one of the walk's requests in flight.
    pub async fn run<R>(&self, primitive: impl Future<Output = StorageResult<R>>) -> StorageResult<R> {
        if let Some(pace) = &self.pace {
            pace.wait().await;
        }
        let _permit = self.permits.acquire().await.map_err(|_| self.cancelled())?;
        primitive.await
    }

    fn cancelled(&self) -> StorageFailure {
        StorageFailure::Worker {
            op: self.op,
            reason: "walk cancelled".into(),
        }
    }
}

/// What a walk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Entries visited (a removal: removed; files, links and directories, the top one included).
    pub entries: u64,
    /// Most directory handles the parallel walk held at once.
    pub peak_open_dirs: usize,
    /// Subtrees walked one handle at a time because the handle budget was spent.
    pub serial_subtrees: u64,
    /// The walk stopped at its entry budget ([`Walker::stop_after`]); more may remain.
    pub unfinished: bool,
}

pub struct Walker<T: Transport, V: Visit<T>> {
    ctx: Arc<Ctx<T, V>>,
}

struct Ctx<T: Transport, V: Visit<T>> {
    ops: Ops<T>,
    visit: V,
    workers: Arc<Semaphore>,
    concurrency: usize,
    max_open: Option<usize>,
    open: AtomicUsize,
    peak: AtomicUsize,
    serial: AtomicU64,
    /// The filesystem of the top directory; nothing on another is entered.
    fs: OnceLock<u64>,
    visited: AtomicU64,
    /// Stop once this many entries are visited.
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

/// An open directory being walked.
struct Node<T: Transport, V: Visit<T>> {
    dir: T::Dir,
    state: V::State,
    parent: Parent<T, V>,
    name: Vec<u8>,
    path: String,
    /// Children not yet finished, plus one while the directory is being listed.
    pending: AtomicUsize,
    rounds: AtomicU32,
    _slot: Option<Slot<T, V>>,
}

enum Parent<T: Transport, V: Visit<T>> {
    /// The directory the walked entry is in (not walked itself).
    Outer(T::Dir, V::State),
    Node(Arc<Node<T, V>>),
    /// The walk started inside the top directory: nothing above it is left.
    Inside,
}

impl<T: Transport, V: Visit<T>> Clone for Parent<T, V> {
    fn clone(&self) -> Self {
        match self {
            Parent::Outer(d, s) => Parent::Outer(d.clone(), s.clone()),
            Parent::Node(n) => Parent::Node(Arc::clone(n)),
            Parent::Inside => Parent::Inside,
        }
    }
}

impl<T: Transport, V: Visit<T>> Parent<T, V> {
    fn dir_state(&self) -> Option<(&T::Dir, &V::State)> {
        match self {
            Parent::Outer(d, s) => Some((d, s)),
            Parent::Node(n) => Some((&n.dir, &n.state)),
            Parent::Inside => None,
        }
    }
}

/// One unit of the directory-handle budget, given back on drop.
struct Slot<T: Transport, V: Visit<T>>(Arc<Ctx<T, V>>);

impl<T: Transport, V: Visit<T>> Drop for Slot<T, V> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stops the walk's tasks when the caller stops waiting for them.
struct StopOnDrop<T: Transport, V: Visit<T>>(Arc<Ctx<T, V>>);

impl<T: Transport, V: Visit<T>> Drop for StopOnDrop<T, V> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Release);
    }
}

/// A non-directory waiting for a worker: name, path, attributes where known.
type Todo = (Vec<u8>, String, Option<Stat>);

impl<T: Transport, V: Visit<T>> Walker<T, V> {
    /// `concurrency` is clamped to `1..=MAX_CONCURRENCY`; `op` names the walk in its errors.
    pub fn new(transport: Arc<T>, visit: V, concurrency: usize, op: &'static str) -> Self {
        let concurrency = concurrency.clamp(1, MAX_CONCURRENCY);
        let max_open = transport.max_open_dirs();
        Walker {
            ctx: Arc::new(Ctx {
                ops: Ops {
                    t: transport,
                    permits: Semaphore::new(concurrency),
                    pace: None,
                    op,
                },
                visit,
                workers: Arc::new(Semaphore::new(4 * concurrency)),
                concurrency,
                max_open,
                open: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                serial: AtomicU64::new(0),
                fs: OnceLock::new(),
                visited: AtomicU64::new(0),
                budget: None,
                unfinished: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                error: Mutex::new(None),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut Ctx<T, V>)) -> Self {
        if let Some(ctx) = Arc::get_mut(&mut self.ctx) {
            change(ctx);
        }
        self
    }

    /// Caps the directory handles held at once (at least 1), below the transport's own cap.
    pub fn max_open_dirs(self, max: usize) -> Self {
        self.configure(|ctx| ctx.max_open = Some(ctx.max_open.map_or(max, |own| own.min(max)).max(1)))
    }

    /// Stops the walk, unfinished, once `entries` are visited (`None`: no budget). What is done
    /// stays done, so another walk finishes the job.
    pub fn stop_after(self, entries: Option<u64>) -> Self {
        self.configure(|ctx| ctx.budget = entries)
    }

    /// Paces every primitive of the walk (the visitor's included) by `pace`.
    pub fn paced(self, pace: Option<Pace>) -> Self {
        self.configure(|ctx| ctx.ops.pace = pace)
    }

    pub fn visitor(&self) -> &V {
        &self.ctx.visit
    }

    /// Walks `parent/name` (`parent_path` is `parent`'s path, for messages), `state` being
    /// `parent`'s: a directory is entered, walked and left; a non-directory (a symlink too) is
    /// visited as itself; a missing entry visits nothing.
    pub async fn walk(
        &self,
        parent: &T::Dir,
        state: V::State,
        name: &str,
        parent_path: &str,
    ) -> StorageResult<TreeStats> {
        let ctx = &self.ctx;
        let path = sub(parent_path, name.as_bytes());
        let name = name.as_bytes().to_vec();
        let Some(st) = ctx
            .ops
            .run(ctx.ops.t.stat(parent, &name, at("stat", &path)))
            .await?
        else {
            return Ok(TreeStats::default());
        };
        if st.kind() == Kind::Other {
            match ctx
                .visit
                .entry(&ctx.ops, parent, &state, &name, &path, Some(&st))
                .await?
            {
                Step::Done => ctx.count(),
                Step::Gone => {}
                // Swapped for a directory since the stat: walk it as one.
                Step::IsDir => {
                    return self
                        .walk_dir(Parent::Outer(parent.clone(), state), name, path)
                        .await;
                }
            }
            return Ok(self.stats());
        }
        ctx.check_fs(st.fs, &path)?;
        if !ctx.ops.t.concurrent() {
            // Spawned tasks would block the runtime's threads with the transport's calls.
            ctx.walk_serial(parent, &state, &name, &path, false).await?;
            return Ok(self.stats());
        }
        self.walk_dir(Parent::Outer(parent.clone(), state), name, path)
            .await
    }

    /// Walks what is inside the open directory `dir` (of state `state`, at `path`), which is
    /// neither entered nor left itself.
    pub async fn walk_inside(&self, dir: T::Dir, state: V::State, path: &str) -> StorageResult<TreeStats> {
        let ctx = &self.ctx;
        let st = ctx.ops.run(ctx.ops.t.dir_stat(&dir, at("stat", path))).await?;
        ctx.check_fs(st.fs, path)?;
        if !ctx.ops.t.concurrent() {
            let top = ctx.list_all(&dir, path).await?;
            ctx.serial_walk(
                None,
                Level::new(Vec::new(), st.id, path.to_owned(), top),
                dir,
                state,
            )
            .await?;
            return Ok(self.stats());
        }
        let _stop = StopOnDrop(Arc::clone(ctx));
        let node = Arc::new(Node {
            dir,
            state,
            parent: Parent::Inside,
            name: Vec::new(),
            path: path.to_owned(),
            pending: AtomicUsize::new(1),
            rounds: AtomicU32::new(0),
            _slot: None,
        });
        ctx.spawn(Ctx::list(Arc::clone(ctx), node));
        self.wait().await
    }

    async fn walk_dir(&self, parent: Parent<T, V>, name: Vec<u8>, path: String) -> StorageResult<TreeStats> {
        let ctx = &self.ctx;
        let _stop = StopOnDrop(Arc::clone(ctx));
        ctx.spawn(Ctx::dir_task(Arc::clone(ctx), parent, name, path, None, false));
        self.wait().await
    }

    /// Until every task of the walk is done: its stats, or its first error.
    async fn wait(&self) -> StorageResult<TreeStats> {
        let ctx = &self.ctx;
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

    pub fn stats(&self) -> TreeStats {
        TreeStats {
            entries: self.ctx.visited.load(Ordering::Relaxed),
            peak_open_dirs: self.ctx.peak.load(Ordering::Relaxed),
            serial_subtrees: self.ctx.serial.load(Ordering::Relaxed),
            unfinished: self.ctx.unfinished.load(Ordering::Acquire),
        }
    }
}

/// An entry of a listing the one-handle walk has yet to visit: its name, its kind and
/// attributes where the listing gave them, and whether it flipped (swapped) once already.
type Listed = (Vec<u8>, Option<Kind>, Option<Stat>, bool);

/// One directory of the one-handle walk: what is left to visit in it.
struct Level {
    name: Vec<u8>,
    id: u64,
    path: String,
    todo: Vec<Listed>,
}

impl Level {
    fn new(name: Vec<u8>, id: u64, path: String, todo: Vec<Listed>) -> Self {
        Level { name, id, path, todo }
    }
}

impl<T: Transport, V: Visit<T>> Ctx<T, V> {
    /// Runs one primitive under the walk's bounds.
    async fn op<R>(&self, primitive: impl Future<Output = StorageResult<R>>) -> StorageResult<R> {
        self.ops.run(primitive).await
    }

    fn count(&self) {
        let visited = self.visited.fetch_add(1, Ordering::Relaxed) + 1;
        if self.budget.is_some_and(|budget| visited >= budget) {
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

    fn reserve_slot(self: &Arc<Self>) -> Result<Option<Slot<T, V>>, ()> {
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
                op: self.ops.op,
                path: path.to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// Visits non-directory `name` of `dir`; `Ok(false)`: it is a directory now.
    async fn visit_entry(
        &self,
        dir: &T::Dir,
        state: &V::State,
        name: &[u8],
        path: &str,
        st: Option<&Stat>,
    ) -> StorageResult<bool> {
        let fetched;
        let st = match st {
            Some(st) => Some(st),
            None if V::STAT => match self.op(self.ops.t.stat(dir, name, at("stat", path))).await? {
                None => return Ok(true),
                Some(st) if st.kind() == Kind::Dir => return Ok(false),
                Some(st) => {
                    fetched = st;
                    Some(&fetched)
                }
            },
            None => None,
        };
        match self.visit.entry(&self.ops, dir, state, name, path, st).await? {
            Step::Done => self.count(),
            Step::Gone => {}
            Step::IsDir => return Ok(false),
        }
        Ok(true)
    }

    /// Walks directory `name` of `parent`; `dir`: its handle if the listing gave one.
    fn dir_task(
        self: Arc<Self>,
        parent: Parent<T, V>,
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

    /// `Ok(true)`: the entry is done already (the caller finishes it in its parent).
    async fn open_and_list(
        self: &Arc<Self>,
        parent: Parent<T, V>,
        name: Vec<u8>,
        path: String,
        dir: Option<T::Dir>,
        flipped: bool,
    ) -> StorageResult<bool> {
        let Some((parent_dir, parent_state)) = parent.dir_state() else {
            return Ok(true);
        };
        let Ok(slot) = self.reserve_slot() else {
            self.serial.fetch_add(1, Ordering::Relaxed);
            self.walk_serial(parent_dir, parent_state, &name, &path, flipped)
                .await?;
            return Ok(true);
        };
        let dir = match dir {
            Some(d) => d,
            None => match self
                .op(self.ops.t.open_dir(parent_dir, &name, at(OP_OPEN, &path)))
                .await?
            {
                Opened::Dir(d) => d,
                Opened::Missing => return Ok(true),
                Opened::NotDir if !flipped => {
                    drop(slot);
                    self.visit_entry(parent_dir, parent_state, &name, &path, None)
                        .await?;
                    return Ok(true);
                }
                Opened::NotDir => return Err(Refusal::NotADirectory { op: OP_OPEN, path }.into()),
            },
        };
        let st = self.op(self.ops.t.dir_stat(&dir, at("stat", &path))).await?;
        self.check_fs(st.fs, &path)?;
        let Some(state) = self
            .visit
            .enter(&self.ops, parent_state, &name, &path, &st)
            .await?
        else {
            return Ok(true);
        };
        let node = Arc::new(Node {
            dir,
            state,
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

    /// Lists `node` and starts the visits of its entries, then drops the listing's reference.
    fn list(self: Arc<Self>, node: Arc<Node<T, V>>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(e) = self.list_pages(&node).await {
                self.fail(e);
                return;
            }
            self.finish_child(Parent::Node(node)).await;
        })
    }

    async fn list_pages(self: &Arc<Self>, node: &Arc<Node<T, V>>) -> StorageResult<()> {
        let mut from = None;
        loop {
            if self.stopped() {
                return Ok(());
            }
            let Some(page) = self
                .op(self
                    .ops
                    .t
                    .read_dir(&node.dir, from, V::STAT, at(OP_LIST, &node.path)))
                .await?
            else {
                // The listing lost its place: the not-empty round lists again.
                return Ok(());
            };
            let mut files: Vec<Todo> = Vec::new();
            for entry in page.entries {
                let path = sub(&node.path, &entry.name);
                let (kind, stat) = match (entry.kind, entry.stat) {
                    (Some(k), st) => (k, st),
                    (None, Some(st)) => (st.kind(), Some(st)),
                    (None, None) => match self
                        .op(self.ops.t.stat(&node.dir, &entry.name, at("stat", &path)))
                        .await?
                    {
                        Some(st) => (st.kind(), Some(st)),
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
                    files.push((entry.name, path, stat));
                }
            }
            // A worker per share of the page rather than a task per file: a spawn and a wake-up
            // per entry cost more than many removals.
            let workers = self.concurrency.min(files.len());
            let mut shares: Vec<Vec<Todo>> = (0..workers).map(|_| Vec::new()).collect();
            for (i, f) in files.into_iter().enumerate() {
                shares[i % workers].push(f);
            }
            for share in shares {
                let permit = Arc::clone(&self.workers)
                    .acquire_owned()
                    .await
                    .map_err(|_| self.ops.cancelled())?;
                node.pending.fetch_add(1, Ordering::AcqRel);
                self.spawn(Ctx::entry_share(
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

    fn entry_share(
        self: Arc<Self>,
        node: Arc<Node<T, V>>,
        files: Vec<Todo>,
        permit: OwnedSemaphorePermit,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            for (name, path, st) in files {
                if self.stopped() {
                    return;
                }
                match self
                    .visit_entry(&node.dir, &node.state, &name, &path, st.as_ref())
                    .await
                {
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

    /// One child of `parent` is finished: if it was the last, leave `parent` and cascade up.
    async fn finish_child(self: &Arc<Self>, parent: Parent<T, V>) {
        let mut cur = parent;
        while let Parent::Node(node) = cur {
            if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 || self.stopped() {
                return;
            }
            let Some((up_dir, up_state)) = node.parent.dir_state() else {
                return;
            };
            let left = self
                .visit
                .leave(&self.ops, up_dir, up_state, &node.name, &node.path, &node.state)
                .await;
            match left {
                Ok(Left::Done) => self.count(),
                Ok(Left::Gone) => {}
                Ok(Left::NotEmpty) => {
                    if node.rounds.fetch_add(1, Ordering::AcqRel) + 1 >= MAX_ROUNDS {
                        let path = node.path.clone();
                        return self.fail(
                            Refusal::KeepsFilling {
                                op: self.ops.op,
                                path,
                            }
                            .into(),
                        );
                    }
                    node.pending.store(1, Ordering::Release);
                    self.spawn(Ctx::list(Arc::clone(self), node));
                    return;
                }
                Err(e) => return self.fail(e),
            }
            cur = node.parent.clone();
        }
    }

    /// The whole listing of `dir` as (name, kind if known, attributes if known, flipped) to-dos.
    #[allow(clippy::type_complexity)] // the one-handle walk's to-do list
    async fn list_all(
        &self,
        dir: &T::Dir,
        path: &str,
    ) -> StorageResult<Vec<(Vec<u8>, Option<Kind>, Option<Stat>, bool)>> {
        'rounds: for _ in 0..MAX_ROUNDS {
            let (mut all, mut from) = (Vec::new(), None);
            loop {
                let Some(page) = self
                    .op(self.ops.t.read_dir(dir, from, V::STAT, at(OP_LIST, path)))
                    .await?
                else {
                    continue 'rounds;
                };
                all.extend(
                    page.entries
                        .into_iter()
                        .map(|e| (e.name, e.kind.or(e.stat.map(|st| st.kind())), e.stat, false)),
                );
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

    /// Walks directory `top/name` alone, depth-first, holding one directory handle at a time.
    async fn walk_serial(
        &self,
        top: &T::Dir,
        top_state: &V::State,
        name: &[u8],
        path: &str,
        flipped: bool,
    ) -> StorageResult<()> {
        let t = &*self.ops.t;
        let cur = match self.op(t.open_dir(top, name, at(OP_OPEN, path))).await? {
            Opened::Dir(d) => d,
            Opened::Missing => return Ok(()),
            Opened::NotDir if !flipped => {
                return self.visit_entry(top, top_state, name, path, None).await.map(drop);
            }
            Opened::NotDir => {
                return Err(Refusal::NotADirectory {
                    op: OP_OPEN,
                    path: path.to_owned(),
                }
                .into());
            }
        };
        let st = self.op(t.dir_stat(&cur, at("stat", path))).await?;
        self.check_fs(st.fs, path)?;
        let Some(state) = self.visit.enter(&self.ops, top_state, name, path, &st).await? else {
            return Ok(());
        };
        let todo = self.list_all(&cur, path).await?;
        let first = Level::new(name.to_vec(), st.id, path.to_owned(), todo);
        self.serial_walk(Some((top, top_state)), first, cur, state).await
    }

    /// The one-handle walk from `first` (open as `cur`, of state `state`); `top`: the directory
    /// `first` is in and its state, where `first` is to be left there, else it is the top of the
    /// walk and stays.
    async fn serial_walk(
        &self,
        top: Option<(&T::Dir, &V::State)>,
        first: Level,
        mut cur: T::Dir,
        mut state: V::State,
    ) -> StorageResult<()> {
        let t = &*self.ops.t;
        let mut levels = vec![first];
        loop {
            if self.stopped() {
                return Ok(());
            }
            let Some(level) = levels.last_mut() else {
                return Ok(());
            };
            if let Some((child, kind, stat, flipped)) = level.todo.pop() {
                let child_path = sub(&level.path, &child);
                let (kind, stat) = match (kind, stat) {
                    (Some(k), st) => (k, st),
                    (None, _) => match self.op(t.stat(&cur, &child, at("stat", &child_path))).await? {
                        Some(st) => (st.kind(), Some(st)),
                        None => continue,
                    },
                };
                if kind == Kind::Other {
                    if !self
                        .visit_entry(&cur, &state, &child, &child_path, stat.as_ref())
                        .await?
                    {
                        if flipped {
                            return Err(Refusal::NotADirectory {
                                op: OP_OPEN,
                                path: child_path,
                            }
                            .into());
                        }
                        level.todo.push((child, Some(Kind::Dir), None, true));
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
                        let Some(child_state) = self
                            .visit
                            .enter(&self.ops, &state, &child, &child_path, &st)
                            .await?
                        else {
                            continue;
                        };
                        let todo = self.list_all(&d, &child_path).await?;
                        levels.push(Level::new(child, st.id, child_path, todo));
                        cur = d;
                        state = child_state;
                    }
                    Opened::Missing => {}
                    Opened::NotDir if !flipped => level.todo.push((child, Some(Kind::Other), None, true)),
                    Opened::NotDir => {
                        return Err(Refusal::NotADirectory {
                            op: OP_OPEN,
                            path: child_path,
                        }
                        .into());
                    }
                }
                continue;
            }
            // The current directory is done: climb to its parent and leave it there.
            let Some(done) = levels.pop() else {
                return Ok(());
            };
            let (up, up_state) = match levels.last() {
                None => match top {
                    None => return Ok(()),
                    Some((dir, st)) => (dir.clone(), st.clone()),
                },
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
                    let up_state = self.visit.climb(&self.ops, &state, &done.path, &st).await?;
                    (parent, up_state)
                }
            };
            match self
                .visit
                .leave(&self.ops, &up, &up_state, &done.name, &done.path, &state)
                .await?
            {
                Left::Done => self.count(),
                Left::Gone => {}
                Left::NotEmpty => {
                    return Err(Refusal::KeepsFilling {
                        op: self.ops.op,
                        path: done.path,
                    }
                    .into());
                }
            }
            cur = up;
            state = up_state;
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
    use crate::storage::remove::Remove;

    const OP: &str = "delete directory";

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
        Walker::new(t, Remove, concurrency, OP)
            .max_open_dirs(budget)
            .walk(&root, (), name, "")
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
            let stats = Walker::new(Arc::clone(&t), Remove, concurrency, OP)
                .stop_after(Some(50))
                .walk(&root, (), "vol", "")
                .await
                .unwrap();
            assert!(stats.unfinished, "{stats:?}");
            // Primitives already under way finish after the budget is reached.
            assert!((50..entries).contains(&stats.entries), "{stats:?}");
            assert!(tmp.path().join("vol").is_dir());
            let rest = remove(t, "vol", concurrency, 128).await.unwrap();
            assert!(!rest.unfinished);
            assert_eq!(stats.entries + rest.entries, entries);
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

    /// A paced walk holds to its rate: n primitives take at least n - PACE_BURST intervals,
    /// however many may be in flight, and two walks sharing a pace share its budget.
    #[tokio::test(start_paused = true)]
    async fn a_paced_walk_sends_at_most_its_budget_per_second() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = make_tree(&tmp.path().join("vol"), 40, 200);
        let t = Arc::new(Faulty::crash_at(
            PosixTransport::new(tmp.path().into(), 16),
            usize::MAX,
        ));
        let root = t.root().await.unwrap();
        let pace = Pace::per_second(10);
        let measure = || {
            Walker::new(
                Arc::clone(&t),
                crate::storage::usage::Measure::default(),
                8,
                "measure",
            )
            .paced(Some(pace.clone()))
        };
        let (one, two) = (measure(), measure());
        let started = tokio::time::Instant::now();
        let (a, b) = tokio::join!(one.walk(&root, (), "vol", ""), two.walk(&root, (), "vol", ""));
        assert_eq!((a.unwrap().entries, b.unwrap().entries), (entries, entries));
        let primitives = u32::try_from(t.calls() - 1).unwrap();
        assert!(primitives >= 4 * PACE_BURST, "{primitives}");
        let took = started.elapsed();
        let least = Duration::from_millis(100) * (primitives - PACE_BURST);
        assert!(took >= least, "{primitives} primitives in {took:?}");
        // In bursts: not a sleep before each primitive, nor a long pause beyond the rate.
        let most = Duration::from_millis(100) * (primitives + PACE_BURST);
        assert!(took <= most, "{primitives} primitives in {took:?}");
    }

    #[tokio::test]
    async fn removes_a_nested_tree_serially_and_in_parallel_and_counts_every_entry() {
        for concurrency in [1, 16] {
            let tmp = tempfile::tempdir().unwrap();
            let entries = make_tree(&tmp.path().join("vol"), 20, 2000);
            let stats = remove(posix(tmp.path()), "vol", concurrency, 128).await.unwrap();
            assert_eq!(stats.entries, entries, "concurrency {concurrency}");
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
            assert_eq!(stats.entries, 5);
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
                .entries,
            0
        );
        fs::create_dir(tmp.path().join("target")).unwrap();
        fs::write(tmp.path().join("target/f"), b"x").unwrap();
        symlink(tmp.path().join("target"), tmp.path().join("link")).unwrap();
        assert_eq!(
            remove(posix(tmp.path()), "link", 4, 128).await.unwrap().entries,
            1
        );
        assert!(tmp.path().join("target/f").exists());
        assert_eq!(
            remove(posix(tmp.path()), "target", 4, 128).await.unwrap().entries,
            2
        );
    }

    #[tokio::test]
    async fn a_chain_deeper_than_path_max_and_the_handle_budget_is_removed_with_bounded_open_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        make_chain(tmp.path(), "deep", 2100); // "d/" x 2100 > PATH_MAX
        let stats = remove(posix(tmp.path()), "deep", 4, 8).await.unwrap();
        assert_eq!(stats.entries, 2101);
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
            assert_eq!(stats.entries, expected);
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
            assert!(rest.entries >= 1 && rest.entries < entries, "{rest:?}");
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
            remove(posix(tmp.path()), "deep", 1, 128).await.unwrap().entries,
            51
        );
    }

    #[tokio::test]
    async fn dropping_the_walk_stops_its_tasks() {
        let tmp = tempfile::tempdir().unwrap();
        make_tree(&tmp.path().join("vol"), 10, 3000);
        let t = posix(tmp.path());
        let root = t.root().await.unwrap();
        let walker = Walker::new(Arc::clone(&t), Remove, 2, OP);
        let mut walk = Box::pin(walker.walk(&root, (), "vol", ""));
        // Dropped once well under way (of 3031 entries), as an operation's deadline drops it.
        while walker.stats().entries < 100 {
            tokio::select! {
                biased;
                done = &mut walk => panic!("the walk ended before it was dropped: {done:?}"),
                () = tokio::task::yield_now() => {}
            }
        }
        drop(walk);
        let stopped_at = walker.stats().entries;
        let ctx = Arc::clone(&walker.ctx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ctx.active.load(Ordering::Acquire) != 0 {
            assert!(std::time::Instant::now() < deadline, "tasks still running");
            tokio::task::yield_now().await;
        }
        // In-flight primitives finish; nothing new starts.
        assert!(
            walker.stats().entries <= stopped_at + 2 * 16,
            "{stopped_at} -> {:?}",
            walker.stats()
        );
        assert!(tmp.path().join("vol").exists());
    }
}
