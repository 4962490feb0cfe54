//! Symlink-safe, parallel removal of a directory tree with a bounded number of open directories.
//!
//! Owns [`TreeRemover`] / [`remove_tree`]: removing `parent/name` and everything below it, relative to a
//! directory fd, without ever following a symlink and without leaving the filesystem of `name`.
//!
//! * Descent is only ever `openat(parent_fd, child, O_DIRECTORY | O_NOFOLLOW)`; non-directories are removed
//!   with `unlinkat(parent_fd, child)`, so a symlink is removed as a link and its target is never touched.
//!   An entry whose `d_type` is unknown is classified with `fstatat(AT_SYMLINK_NOFOLLOW)`. A "directory" that
//!   fails to open with `ELOOP`/`ENOTDIR` (swapped for a symlink or file meanwhile) is unlinked as a file; a
//!   "file" whose unlink fails with `EISDIR` is descended into as a directory (each entry flips at most once).
//! * A directory on another filesystem (different `st_dev`) is never entered: that is an error (`EXDEV`).
//! * Concurrency: `concurrency` worker threads (`std::thread::scope`, the calling thread is one of them) pop
//!   tasks from one shared LIFO stack, so at most `concurrency` filesystem operations are in flight. On NFS
//!   every unlink is a round trip, which is why this matters.
//! * Each opened directory becomes a node holding its fd (shared through `Arc` by its children's tasks) and
//!   a pending-children counter; the child that brings the counter to zero removes the directory
//!   (`unlinkat(AT_REMOVEDIR)` relative to its parent's fd) and cascades upwards.
//! * Open directories are bounded: the LIFO stack makes the walk depth-first (files of a directory are
//!   popped before its subdirectories), and a hard budget (`max_open_dirs`, reserved atomically before each
//!   open) caps the number of directory nodes held open. A directory task that finds the budget exhausted is
//!   removed by that worker alone with a serial walk that needs O(1) fds regardless of depth: it keeps only
//!   the current directory open and climbs back with `openat(cur, "..")`, verifying the parent's
//!   `(st_dev, st_ino)` against what it saw on the way down. Total directory fds are therefore at most
//!   `max_open_dirs + 3 * concurrency`, whatever the depth or width of the tree.
//! * The first error stops all workers promptly (in-flight operations finish) and is returned with the
//!   failing entry's path relative to `parent` and its errno. Whatever was removed stays removed, so a
//!   later retry resumes.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Default cap on directory nodes held open by the parallel walk.
pub const DEFAULT_MAX_OPEN_DIRS: usize = 128;
/// Upper bound on worker threads; larger requests are clamped.
pub const MAX_CONCURRENCY: usize = 128;

const WORKER_STACK_SIZE: usize = 256 * 1024;

/// A failed removal: what was attempted, on which entry (relative to the parent given to the remover), and
/// the errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} {path}: {errno}")]
pub struct TreeError {
    op: &'static str,
    path: String,
    errno: Errno,
}

impl TreeError {
    fn new(op: &'static str, path: String, errno: Errno) -> Self {
        Self { op, path, errno }
    }

    /// What was attempted, e.g. `"unlink"` or `"remove directory"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The failing entry, relative to the parent directory given to the remover (it starts with `name`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// Prefixes the path, e.g. with the parent's own path relative to an export root.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.path = format!("{prefix}/{}", self.path);
        }
        self
    }
}

/// What a successful removal did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Entries removed (files, links, directories, including `name` itself).
    pub removed: u64,
    /// Highest number of directory nodes the parallel walk held open at once (<= `max_open_dirs`).
    pub peak_open_dirs: usize,
    /// Subtrees removed by the serial O(1)-fd walk because the open-directory budget was exhausted.
    pub serial_subtrees: u64,
}

/// Removes a directory tree relative to a directory fd; see the module documentation.
#[derive(Debug, Clone)]
pub struct TreeRemover {
    concurrency: usize,
    max_open_dirs: usize,
    fail_on: Option<(CString, Errno)>,
}

impl TreeRemover {
    /// `concurrency` is clamped to `1..=MAX_CONCURRENCY`.
    pub fn new(concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.clamp(1, MAX_CONCURRENCY),
            max_open_dirs: DEFAULT_MAX_OPEN_DIRS,
            fail_on: None,
        }
    }

    /// Caps the directory nodes held open by the parallel walk (at least 1).
    pub fn max_open_dirs(mut self, max_open_dirs: usize) -> Self {
        self.max_open_dirs = max_open_dirs.max(1);
        self
    }

    /// Test hook: every unlink/rmdir of an entry called `name` fails with `errno`.
    #[cfg(test)]
    pub(crate) fn fail_on(mut self, name: &str, errno: Errno) -> Self {
        self.fail_on = CString::new(name).ok().map(|n| (n, errno));
        self
    }

    /// Removes `parent/name` and everything below it. A missing entry is not an error (0 removed); a
    /// non-directory (including a symlink) is unlinked itself.
    pub fn remove(&self, parent: &impl AsFd, name: &str) -> Result<TreeStats, TreeError> {
        let top = parent.as_fd();
        let cname = match CString::new(name) {
            Ok(c) if valid_name(name) => c,
            _ => return Err(TreeError::new("remove", name.to_owned(), Errno::EINVAL)),
        };
        let st = match fstatat(top, cname.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(TreeStats::default()),
            Err(e) => return Err(TreeError::new("stat", name.to_owned(), e)),
        };
        let open = AtomicUsize::new(0);
        let ctx = Ctx {
            top,
            dev: st.st_dev,
            state: Mutex::new(State {
                stack: Vec::new(),
                active: 0,
                error: None,
            }),
            cond: Condvar::new(),
            stop: AtomicBool::new(false),
            removed: AtomicU64::new(0),
            open: &open,
            peak: AtomicUsize::new(0),
            serial: AtomicU64::new(0),
            max_open: self.max_open_dirs,
            fail_on: self.fail_on.clone(),
        };
        if !is_dir(&st) {
            return match ctx.unlink(top, &cname, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => Ok(TreeStats {
                    removed: 1,
                    ..TreeStats::default()
                }),
                Err(Errno::ENOENT) => Ok(TreeStats::default()),
                Err(e) => Err(TreeError::new("unlink", name.to_owned(), e)),
            };
        }
        lock(&ctx.state).stack.push(Task {
            parent: Parent::Top,
            name: cname,
            kind: Kind::Dir,
            flipped: false,
        });
        // List the top directory here first and start only as many helpers as there is queued
        // work: most volumes are small, and spawning every worker for each delete cost more CPU
        // than the deletes themselves (BENCHMARKS.md).
        let top = lock(&ctx.state).stack.pop();
        if let Some(task) = top
            && let Err(Fail::Error(e)) = ctx.run(task)
        {
            lock(&ctx.state).error = Some(e);
            ctx.stop.store(true, Ordering::Release);
        }
        let helpers = (self.concurrency - 1).min(lock(&ctx.state).stack.len());
        if helpers == 0 {
            ctx.work();
        } else {
            std::thread::scope(|scope| {
                for i in 1..=helpers {
                    // If a thread cannot be spawned we simply run with fewer workers.
                    let _ = std::thread::Builder::new()
                        .name(format!("rmtree-{i}"))
                        .stack_size(WORKER_STACK_SIZE)
                        .spawn_scoped(scope, || ctx.work());
                }
                ctx.work();
            });
        }
        let state = ctx.state.into_inner().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = state.error {
            return Err(e);
        }
        Ok(TreeStats {
            removed: ctx.removed.into_inner(),
            peak_open_dirs: ctx.peak.into_inner(),
            serial_subtrees: ctx.serial.into_inner(),
        })
    }
}

/// Removes `parent/name` recursively with up to `concurrency` operations in flight; returns the number of
/// entries removed (0 if it did not exist).
pub fn remove_tree(parent: &impl AsFd, name: &str, concurrency: usize) -> Result<u64, TreeError> {
    TreeRemover::new(concurrency)
        .remove(parent, name)
        .map(|s| s.removed)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn display(name: &CStr) -> String {
    name.to_string_lossy().into_owned()
}

fn join(prefix: &str, name: &CStr) -> String {
    format!("{prefix}/{}", name.to_string_lossy())
}

fn lock<'a, T>(m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
    Unknown,
}

/// Lists a directory (without `.` and `..`) through a duplicate of its fd.
fn list(fd: &OwnedFd) -> nix::Result<Vec<(CString, Kind)>> {
    let dup = fd
        .try_clone()
        .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
    let mut dir = Dir::from_fd(dup)?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let kind = match entry.file_type() {
            Some(Type::Directory) => Kind::Dir,
            Some(_) => Kind::Other,
            None => Kind::Unknown,
        };
        out.push((name.to_owned(), kind));
    }
    Ok(out)
}

/// One reserved unit of the open-directory budget; released on drop.
struct Slot<'s>(&'s AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open directory whose children are being removed.
struct Node<'s> {
    fd: OwnedFd,
    parent: Parent<'s>,
    name: CString,
    /// Path relative to the remover's parent, for error messages.
    rel: String,
    /// Children not yet finished, plus one while the node is being set up.
    pending: AtomicUsize,
    _slot: Slot<'s>,
}

#[derive(Clone)]
enum Parent<'s> {
    Top,
    Node(Arc<Node<'s>>),
}

impl Parent<'_> {
    fn rel(&self, name: &CStr) -> String {
        match self {
            Parent::Top => display(name),
            Parent::Node(n) => join(&n.rel, name),
        }
    }
}

struct Task<'s> {
    parent: Parent<'s>,
    name: CString,
    kind: Kind,
    /// Already reclassified once (file <-> directory); a second flip is an error rather than a loop.
    flipped: bool,
}

struct State<'s> {
    stack: Vec<Task<'s>>,
    active: usize,
    error: Option<TreeError>,
}

enum Fail {
    /// Another worker failed first.
    Stopped,
    Error(TreeError),
}

impl From<TreeError> for Fail {
    fn from(e: TreeError) -> Self {
        Fail::Error(e)
    }
}

struct Ctx<'s> {
    top: BorrowedFd<'s>,
    dev: u64,
    state: Mutex<State<'s>>,
    cond: Condvar,
    stop: AtomicBool,
    removed: AtomicU64,
    open: &'s AtomicUsize,
    peak: AtomicUsize,
    serial: AtomicU64,
    max_open: usize,
    fail_on: Option<(CString, Errno)>,
}

impl<'s> Ctx<'s> {
    fn parent_fd<'a>(&'a self, parent: &'a Parent<'s>) -> BorrowedFd<'a> {
        match parent {
            Parent::Top => self.top,
            Parent::Node(n) => n.fd.as_fd(),
        }
    }

    fn unlink(&self, dir: BorrowedFd<'_>, name: &CStr, flags: UnlinkatFlags) -> nix::Result<()> {
        if let Some((n, e)) = &self.fail_on
            && n.as_c_str() == name
        {
            return Err(*e);
        }
        unlinkat(dir, name, flags)
    }

    fn reserve_slot(&self) -> Option<Slot<'s>> {
        let max = self.max_open;
        let prev = self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v < max).then_some(v + 1)
        });
        let prev = prev.ok()?;
        self.peak.fetch_max(prev + 1, Ordering::Relaxed);
        Some(Slot(self.open))
    }

    fn push(&self, tasks: Vec<Task<'s>>) {
        let n = tasks.len();
        if n == 0 {
            return;
        }
        lock(&self.state).stack.extend(tasks);
        if n == 1 {
            self.cond.notify_one();
        } else {
            self.cond.notify_all();
        }
    }

    /// Worker loop: pop tasks until the stack is empty and nothing is in flight, or an error occurred.
    fn work(&self) {
        loop {
            let task = {
                let mut st = lock(&self.state);
                loop {
                    if st.error.is_some() {
                        return;
                    }
                    if let Some(t) = st.stack.pop() {
                        st.active += 1;
                        break t;
                    }
                    if st.active == 0 {
                        self.cond.notify_all();
                        return;
                    }
                    st = self.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let result = self.run(task);
            let mut st = lock(&self.state);
            st.active -= 1;
            if let Err(Fail::Error(e)) = result
                && st.error.is_none()
            {
                st.error = Some(e);
                self.stop.store(true, Ordering::Release);
            }
            if st.error.is_some() || (st.active == 0 && st.stack.is_empty()) {
                self.cond.notify_all();
            }
        }
    }

    fn run(&self, task: Task<'s>) -> Result<(), Fail> {
        if self.stop.load(Ordering::Acquire) {
            return Err(Fail::Stopped);
        }
        let Task {
            parent,
            name,
            kind,
            flipped,
        } = task;
        let pfd = self.parent_fd(&parent);
        let kind = match kind {
            Kind::Unknown => match fstatat(pfd, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(&st) => Kind::Dir,
                Ok(_) => Kind::Other,
                Err(Errno::ENOENT) => return self.finish_child(&parent),
                Err(e) => return Err(TreeError::new("stat", parent.rel(&name), e).into()),
            },
            k => k,
        };
        match kind {
            Kind::Dir => self.run_dir(parent, name, flipped),
            _ => match self.unlink(pfd, &name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {
                    self.removed.fetch_add(1, Ordering::Relaxed);
                    self.finish_child(&parent)
                }
                Err(Errno::ENOENT) => self.finish_child(&parent),
                Err(Errno::EISDIR) if !flipped => self.run_dir(parent, name, true),
                Err(e) => Err(TreeError::new("unlink", parent.rel(&name), e).into()),
            },
        }
    }

    fn run_dir(&self, parent: Parent<'s>, name: CString, flipped: bool) -> Result<(), Fail> {
        let pfd = self.parent_fd(&parent);
        let Some(slot) = self.reserve_slot() else {
            self.serial.fetch_add(1, Ordering::Relaxed);
            self.remove_serial(pfd, &name, &parent.rel(&name), flipped)?;
            return self.finish_child(&parent);
        };
        let fd = match open_dir(pfd, &name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return self.finish_child(&parent),
            Err(Errno::ELOOP | Errno::ENOTDIR) if !flipped => {
                drop(slot);
                return match self.unlink(pfd, &name, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) => {
                        self.removed.fetch_add(1, Ordering::Relaxed);
                        self.finish_child(&parent)
                    }
                    Err(Errno::ENOENT) => self.finish_child(&parent),
                    Err(e) => Err(TreeError::new("unlink", parent.rel(&name), e).into()),
                };
            }
            Err(e) => return Err(TreeError::new("open directory", parent.rel(&name), e).into()),
        };
        let rel = parent.rel(&name);
        match fstat(&fd) {
            Ok(st) if st.st_dev == self.dev => {}
            Ok(_) => {
                return Err(
                    TreeError::new("refuse to cross a filesystem boundary at", rel, Errno::EXDEV).into(),
                );
            }
            Err(e) => return Err(TreeError::new("stat", rel, e).into()),
        }
        let entries = match list(&fd) {
            Ok(entries) => entries,
            Err(e) => return Err(TreeError::new("read directory", rel, e).into()),
        };
        let node = Arc::new(Node {
            fd,
            parent,
            name,
            rel,
            pending: AtomicUsize::new(entries.len() + 1),
            _slot: slot,
        });
        // Subdirectories first, so that the LIFO stack pops this directory's files before them.
        let mut tasks: Vec<Task<'s>> = Vec::with_capacity(entries.len());
        for want_dirs in [true, false] {
            for (child, kind) in &entries {
                if (*kind == Kind::Dir) == want_dirs {
                    let parent = Parent::Node(Arc::clone(&node));
                    tasks.push(Task {
                        parent,
                        name: child.clone(),
                        kind: *kind,
                        flipped: false,
                    });
                }
            }
        }
        drop(entries);
        self.push(tasks);
        // Drop the setup reference; removes the directory right away if it was empty.
        self.finish_child(&Parent::Node(node))
    }

    /// One child of `parent` is finished: if it was the last, remove `parent` and cascade upwards.
    fn finish_child(&self, parent: &Parent<'s>) -> Result<(), Fail> {
        let mut cur = parent.clone();
        while let Parent::Node(node) = cur {
            if node.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
                return Ok(());
            }
            let pfd = self.parent_fd(&node.parent);
            match self.unlink(pfd, &node.name, UnlinkatFlags::RemoveDir) {
                Ok(()) => {
                    self.removed.fetch_add(1, Ordering::Relaxed);
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(TreeError::new("remove directory", node.rel.clone(), e).into()),
            }
            cur = node.parent.clone();
        }
        Ok(())
    }

    /// Removes `dir/name` alone, depth-first, holding one directory fd at a time (plus transient ones).
    fn remove_serial(&self, dir: BorrowedFd<'_>, name: &CStr, rel: &str, flipped: bool) -> Result<(), Fail> {
        struct Level {
            name: CString,
            dev: u64,
            ino: u64,
            todo: Vec<(CString, Kind, bool)>,
        }
        fn path(rel: &str, levels: &[Level], child: Option<&CStr>) -> String {
            let mut p = rel.to_owned();
            for name in levels.iter().skip(1).map(|l| l.name.as_c_str()).chain(child) {
                p.push('/');
                p.push_str(&name.to_string_lossy());
            }
            p
        }
        let err = |op, path, e| Fail::Error(TreeError::new(op, path, e));
        let opened = |fd: &OwnedFd, path: &dyn Fn() -> String| -> Result<(u64, u64, Vec<_>), Fail> {
            let st = fstat(fd).map_err(|e| err("stat", path(), e))?;
            if st.st_dev != self.dev {
                return Err(err(
                    "refuse to cross a filesystem boundary at",
                    path(),
                    Errno::EXDEV,
                ));
            }
            let todo = list(fd).map_err(|e| err("read directory", path(), e))?;
            Ok((
                st.st_dev,
                st.st_ino,
                todo.into_iter().map(|(n, k)| (n, k, false)).collect(),
            ))
        };

        let mut cur = match open_dir(dir, name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ELOOP | Errno::ENOTDIR) if !flipped => {
                return match self.unlink(dir, name, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) => {
                        self.removed.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(err("unlink", rel.to_owned(), e)),
                };
            }
            Err(e) => return Err(err("open directory", rel.to_owned(), e)),
        };
        let (dev, ino, todo) = opened(&cur, &|| rel.to_owned())?;
        let mut levels = vec![Level {
            name: name.to_owned(),
            dev,
            ino,
            todo,
        }];
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(Fail::Stopped);
            }
            let Some(level) = levels.last_mut() else {
                return Ok(());
            };
            if let Some((child, kind, flipped)) = level.todo.pop() {
                let kind = match kind {
                    Kind::Unknown => match fstatat(&cur, child.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) if is_dir(&st) => Kind::Dir,
                        Ok(_) => Kind::Other,
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(err("stat", path(rel, &levels, Some(&child)), e)),
                    },
                    k => k,
                };
                if kind != Kind::Dir {
                    match self.unlink(cur.as_fd(), &child, UnlinkatFlags::NoRemoveDir) {
                        Ok(()) => {
                            self.removed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Errno::ENOENT) => {}
                        Err(Errno::EISDIR) if !flipped => level.todo.push((child, Kind::Dir, true)),
                        Err(e) => return Err(err("unlink", path(rel, &levels, Some(&child)), e)),
                    }
                    continue;
                }
                match open_dir(cur.as_fd(), &child) {
                    Ok(fd) => {
                        let (dev, ino, todo) = opened(&fd, &|| path(rel, &levels, Some(&child)))?;
                        levels.push(Level {
                            name: child,
                            dev,
                            ino,
                            todo,
                        });
                        cur = fd;
                    }
                    Err(Errno::ENOENT) => {}
                    Err(Errno::ELOOP | Errno::ENOTDIR) if !flipped => {
                        level.todo.push((child, Kind::Other, true))
                    }
                    Err(e) => return Err(err("open directory", path(rel, &levels, Some(&child)), e)),
                }
                continue;
            }
            // The current directory is empty: climb to its parent and remove it there.
            let Some(done) = levels.pop() else {
                return Ok(());
            };
            let here = |levels: &[Level]| path(rel, levels, Some(&done.name));
            let Some(up) = levels.last() else {
                drop(cur);
                return match self.unlink(dir, &done.name, UnlinkatFlags::RemoveDir) {
                    Ok(()) => {
                        self.removed.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(err("remove directory", rel.to_owned(), e)),
                };
            };
            let parent = open_dir(cur.as_fd(), c"..").map_err(|e| err("open parent of", here(&levels), e))?;
            match fstat(&parent) {
                Ok(st) if st.st_dev == up.dev && st.st_ino == up.ino => {}
                // The directory was moved elsewhere while we were inside it.
                Ok(_) => return Err(err("open parent of", here(&levels), Errno::ESTALE)),
                Err(e) => return Err(err("stat parent of", here(&levels), e)),
            }
            cur = parent;
            match self.unlink(cur.as_fd(), &done.name, UnlinkatFlags::RemoveDir) {
                Ok(()) => {
                    self.removed.fetch_add(1, Ordering::Relaxed);
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(err("remove directory", here(&levels), e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    fn dir_fd(path: &Path) -> OwnedFd {
        OwnedFd::from(fs::File::open(path).unwrap())
    }

    /// `dirs` subdirectories (each with a nested one) holding `files` files in total; returns entries made
    /// below and including `root`.
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

    /// A chain `root/d/d/.../d` of `depth` directories built with fds (it may exceed PATH_MAX).
    fn make_chain(parent: &Path, name: &str, depth: usize) {
        fs::create_dir(parent.join(name)).unwrap();
        let mut cur = dir_fd(&parent.join(name));
        for _ in 1..depth {
            nix::sys::stat::mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
            cur = open_dir(cur.as_fd(), c"d").unwrap();
        }
        let f = openat(
            &cur,
            "leaf",
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        drop(f);
    }

    #[test]
    fn removes_nested_tree_serially_and_in_parallel_and_counts_entries() {
        for concurrency in [1, 16] {
            let tmp = tempfile::tempdir().unwrap();
            let entries = make_tree(&tmp.path().join("vol"), 20, 2000);
            let stats = TreeRemover::new(concurrency)
                .remove(&dir_fd(tmp.path()), "vol")
                .unwrap();
            assert_eq!(stats.removed, entries, "concurrency {concurrency}");
            assert!(!tmp.path().join("vol").exists());
            assert!(stats.peak_open_dirs <= DEFAULT_MAX_OPEN_DIRS);
        }
    }

    #[test]
    fn symlinks_inside_are_removed_as_links_and_their_targets_are_untouched() {
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
            let removed = remove_tree(&dir_fd(tmp.path()), "vol", concurrency).unwrap();
            assert_eq!(removed, 5);
            assert!(!vol.exists());
        }
        assert_eq!(fs::read(outside.join("keep-file")).unwrap(), b"precious");
        assert_eq!(fs::read(outside.join("keep-dir/inner")).unwrap(), b"precious");
    }

    #[test]
    fn a_missing_entry_removes_nothing_and_a_top_level_symlink_is_unlinked_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = dir_fd(tmp.path());
        assert_eq!(remove_tree(&fd, "nothing", 4).unwrap(), 0);
        fs::create_dir(tmp.path().join("target")).unwrap();
        fs::write(tmp.path().join("target/f"), b"x").unwrap();
        symlink(tmp.path().join("target"), tmp.path().join("link")).unwrap();
        assert_eq!(remove_tree(&fd, "link", 4).unwrap(), 1);
        assert!(tmp.path().join("target/f").exists());
        assert_eq!(remove_tree(&fd, "target", 4).unwrap(), 2);
    }

    #[test]
    fn invalid_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = dir_fd(tmp.path());
        for name in ["", ".", "..", "a/b", "a\0b"] {
            let err = remove_tree(&fd, name, 1).unwrap_err();
            assert_eq!(err.errno(), Errno::EINVAL, "{name:?}");
        }
    }

    #[test]
    fn a_chain_deeper_than_path_max_and_the_fd_budget_is_removed_with_bounded_open_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        make_chain(tmp.path(), "deep", 2100); // "d/" x 2100 > PATH_MAX
        let stats = TreeRemover::new(4)
            .max_open_dirs(8)
            .remove(&dir_fd(tmp.path()), "deep")
            .unwrap();
        assert_eq!(stats.removed, 2101);
        assert!(stats.peak_open_dirs <= 8, "{stats:?}");
        assert!(stats.serial_subtrees >= 1, "{stats:?}");
        assert!(!tmp.path().join("deep").exists());
    }

    #[test]
    fn a_wide_and_deep_tree_never_holds_more_directories_open_than_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("vol");
        let mut expected = 1;
        fs::create_dir(&root).unwrap();
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
        for concurrency in [1, 8] {
            let copy = tmp.path().join(format!("copy{concurrency}"));
            std::process::Command::new("cp")
                .arg("-a")
                .arg(&root)
                .arg(&copy)
                .status()
                .unwrap();
            let name = format!("copy{concurrency}");
            let stats = TreeRemover::new(concurrency)
                .max_open_dirs(3)
                .remove(&dir_fd(tmp.path()), &name)
                .unwrap();
            assert_eq!(stats.removed, expected);
            assert!(stats.peak_open_dirs <= 3, "{stats:?}");
        }
    }

    #[test]
    fn the_first_error_stops_the_removal_with_the_entry_path_and_errno_and_a_retry_resumes() {
        for concurrency in [1, 8] {
            let tmp = tempfile::tempdir().unwrap();
            let entries = make_tree(&tmp.path().join("vol"), 10, 1000);
            let fd = dir_fd(tmp.path());
            let err = TreeRemover::new(concurrency)
                .fail_on("f507", Errno::EACCES)
                .remove(&fd, "vol")
                .unwrap_err();
            assert_eq!(err.errno(), Errno::EACCES);
            assert_eq!(err.op(), "unlink");
            assert_eq!(err.path(), "vol/d7/inner/f507");
            assert_eq!(
                err.to_string(),
                "unlink vol/d7/inner/f507: EACCES: Permission denied"
            );
            assert!(tmp.path().join("vol/d7/inner/f507").exists());
            let rest = TreeRemover::new(concurrency).remove(&fd, "vol").unwrap();
            assert!(rest.removed >= 1 && rest.removed < entries, "{rest:?}");
            assert!(!tmp.path().join("vol").exists());
        }
    }

    #[test]
    fn errors_inside_the_serial_walk_and_on_directory_removal_are_reported_with_their_path() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = dir_fd(tmp.path());
        make_chain(tmp.path(), "deep", 50);
        let err = TreeRemover::new(2)
            .max_open_dirs(2)
            .fail_on("leaf", Errno::EROFS)
            .remove(&fd, "deep")
            .unwrap_err();
        assert_eq!(err.errno(), Errno::EROFS);
        assert!(
            err.path().starts_with("deep/d/d/") && err.path().ends_with("/d/leaf"),
            "{}",
            err.path()
        );
        fs::create_dir_all(tmp.path().join("vol/keep/inner")).unwrap();
        let err = TreeRemover::new(1)
            .fail_on("keep", Errno::EBUSY)
            .remove(&fd, "vol")
            .unwrap_err();
        assert_eq!(
            (err.op(), err.path(), err.errno()),
            ("remove directory", "vol/keep", Errno::EBUSY)
        );
        assert!(!tmp.path().join("vol/keep/inner").exists());
        assert_eq!(err.clone().with_prefix("ns/a").path(), "ns/a/vol/keep");
        assert_eq!(remove_tree(&fd, "deep", 1).unwrap(), 51);
    }
}
