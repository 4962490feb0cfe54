//! Copying a volume as a visit of the tree walker: the source is walked on its own transport and
//! every entry recreated through a [`Sink`], the destination's half, which may be on another
//! export reached another way (a clone from a mounted export into an NFS server's, or between two
//! servers).
//!
//! * Regular files keep their content (runs of zeros become holes), mode, owner and times.
//!   Directories are made 0700, filled, then given the source's mode, owner and times, so a
//!   read-only source directory can still be filled. Symlinks are copied as links, their targets
//!   byte for byte, never read through or resolved.
//! * Hard links are copied as separate files (counted); FIFOs, sockets and device nodes are left
//!   out (counted by kind): a pipe or socket means nothing without its process, and a device node
//!   needs privileges the provisioner does not have.
//! * Owners: where the destination does not let us set them (root squashed, no CAP_CHOWN), the
//!   copy is owned by whoever the server makes us, this is reported, and no more owners are asked
//!   for.
//! * Resumable: a copy into a directory that a crashed attempt partly filled keeps what that
//!   attempt finished (a regular file whose length and modification time already match the
//!   source's; those are set last) and redoes the rest.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;

use super::error::{Refusal, StorageFailure, StorageResult};
use super::remove::Remove;
use super::transport::{
    Attrs, FileCopied, FileType, Kind, Made, Opened, OpenedFile, Owner, Stat, Target, Transport, at,
};
use super::walker::{Left, Ops, Step, Visit, Walker};
pub use crate::core::clone::Copied;

const OP: &str = "copy";
/// Requests in flight while removing what a crashed attempt left in the way of an entry.
const CLEAR_CONCURRENCY: usize = 4;

/// A directory of the destination, whatever transport holds it.
#[derive(Clone)]
pub struct SinkDir(Arc<dyn Any + Send + Sync>);

/// A file of the destination being written, and whether a write of it is not yet durable.
pub struct SinkFile {
    handle: Box<dyn Any + Send + Sync>,
    unstable: AtomicBool,
}

impl SinkDir {
    pub fn new<D: Any + Send + Sync>(dir: D) -> Self {
        SinkDir(Arc::new(dir))
    }
}

/// What the copy needs of its destination: made exclusively, or taken over from an earlier
/// attempt of the same copy (its own directory in the staging area, which nobody else writes).
pub trait Sink: Send + Sync {
    /// Directory `name` in `dir` (one already there is taken as it is).
    fn mkdir<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<SinkDir>>;
    /// The parent of `dir`.
    fn parent<'a>(&'a self, dir: &'a SinkDir, path: &'a str) -> BoxFuture<'a, StorageResult<SinkDir>>;
    /// A new file `name` in `dir` to copy `source` into; `None`: an earlier attempt copied it
    /// already (same length and modification time).
    fn start_file<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        path: &'a str,
        source: &'a Stat,
    ) -> BoxFuture<'a, StorageResult<Option<SinkFile>>>;
    fn write<'a>(
        &'a self,
        file: &'a SinkFile,
        offset: u64,
        data: &'a [u8],
        durable: bool,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<()>>;
    /// Makes the file durable and sets `attrs` (last, so a finished file is told by its times).
    fn finish_file<'a>(
        &'a self,
        file: SinkFile,
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Owner>>;
    /// Copies file `name` of `source_dir` (a directory handle of the source's transport) into a
    /// new file `name` of `dir` in one call, where both are of this sink's transport and it can
    /// (a mounted export's kernel copy); `None`: the copy reads and writes.
    fn copy_file_from<'a>(
        &'a self,
        source_dir: &'a (dyn Any + Send + Sync),
        name: &'a [u8],
        dir: &'a SinkDir,
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<FileCopied>>>;
    /// Removes file `name` of `dir` (begun with [`Sink::start_file`]): its source went meanwhile.
    fn discard<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<()>>;
    fn finish_dir<'a>(
        &'a self,
        dir: &'a SinkDir,
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Owner>>;
    /// Symlink `name` in `dir` to `target`, with `attrs` (an older one there is replaced).
    fn symlink<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        target: &'a [u8],
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Owner>>;
    /// Makes everything below `dir` durable.
    fn sync<'a>(&'a self, dir: &'a SinkDir, path: &'a str) -> BoxFuture<'a, StorageResult<()>>;
}

/// How far a copy got; read while it runs (Events, metrics) and once it is done.
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries recreated: files, directories and symlinks.
    pub entries: AtomicU64,
    /// Bytes of file content read from the source.
    pub bytes: AtomicU64,
    /// Files with more than one name, each copied as a file of its own.
    pub hard_links: AtomicU64,
    pub fifos: AtomicU64,
    pub sockets: AtomicU64,
    pub devices: AtomicU64,
    /// Files an earlier attempt had copied already.
    pub kept: AtomicU64,
    /// The destination refused to take the source's owners.
    pub owners_refused: AtomicBool,
}

impl Progress {
    pub fn copied(&self) -> Copied {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Copied {
            entries: n(&self.entries),
            bytes: n(&self.bytes),
            hard_links: n(&self.hard_links),
            fifos: n(&self.fifos),
            sockets: n(&self.sockets),
            devices: n(&self.devices),
            kept: n(&self.kept),
            owners_refused: self.owners_refused.load(Ordering::Relaxed),
        }
    }

    fn owner(&self, owner: Owner) {
        if owner == Owner::Refused {
            self.owners_refused.store(true, Ordering::Relaxed);
        }
    }

    /// The source's attributes, without the owner once the destination refused one.
    fn attrs(&self, st: &Stat) -> Attrs {
        let mut attrs = Attrs::of(st);
        if self.owners_refused.load(Ordering::Relaxed) {
            attrs.uid = None;
            attrs.gid = None;
        }
        attrs
    }
}

/// Chunks of one file read and written at once: a large file over NFS is bound by round trips
/// otherwise.
const PIPELINE: usize = 4;
/// Chunks held at once by one copy, whatever its files: its memory is bounded by these.
const BUFFERS: usize = 8;

/// The copy visitor over the source's transport.
pub struct Copy {
    sink: Arc<dyn Sink>,
    progress: Arc<Progress>,
    /// Bytes per read (the source's transfer size).
    chunk: usize,
    buffers: tokio::sync::Semaphore,
}

/// A source directory being copied: where to, and its own attributes (set once it is filled).
#[derive(Clone)]
pub struct CopyDir {
    pub dest: SinkDir,
    pub source: Stat,
}

impl Copy {
    pub fn new(sink: Arc<dyn Sink>, progress: Arc<Progress>, chunk: usize) -> Self {
        Copy {
            sink,
            progress,
            chunk: chunk.max(4096),
            buffers: tokio::sync::Semaphore::new(BUFFERS),
        }
    }

    async fn file<T: Transport>(
        &self,
        ops: &Ops<T>,
        dir: &T::Dir,
        state: &CopyDir,
        name: &[u8],
        path: &str,
        st: &Stat,
    ) -> StorageResult<Step> {
        let whole = ops
            .run(
                self.sink
                    .copy_file_from(dir, name, &state.dest, self.progress.attrs(st), path),
            )
            .await?;
        match whole {
            Some(FileCopied::Done { bytes, owner }) => {
                if st.nlink > 1 {
                    self.progress.hard_links.fetch_add(1, Ordering::Relaxed);
                }
                self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                self.progress.owner(owner);
                self.progress.entries.fetch_add(1, Ordering::Relaxed);
                return Ok(Step::Done);
            }
            Some(FileCopied::SourceGone) => return Ok(Step::Gone),
            Some(FileCopied::SourceNotFile(FileType::Dir)) => return Ok(Step::IsDir),
            Some(FileCopied::SourceNotFile(_)) => return Ok(Step::Gone),
            // An earlier attempt's file is there: the reads and writes below tell whether it is
            // whole.
            Some(FileCopied::TargetExists) | None => {}
        }
        let source = match ops.run(ops.t().open_file(dir, name, at("open", path))).await? {
            OpenedFile::File(f) => f,
            OpenedFile::Missing => return Ok(Step::Gone),
            OpenedFile::Other(FileType::Dir) => return Ok(Step::IsDir),
            // Swapped for something else while the copy ran: as if it had gone.
            OpenedFile::Other(_) => return Ok(Step::Gone),
        };
        let Some(file) = ops.run(self.sink.start_file(&state.dest, name, path, st)).await? else {
            self.progress.kept.fetch_add(1, Ordering::Relaxed);
            return Ok(Step::Done);
        };
        if st.nlink > 1 {
            self.progress.hard_links.fetch_add(1, Ordering::Relaxed);
        }
        let Some((end, cut)) = self.content(ops, &source, &file, st.size, path).await? else {
            // Removed while it was copied: as if it had gone before.
            drop(file);
            ops.run(self.sink.discard(&state.dest, name, path)).await?;
            return Ok(Step::Gone);
        };
        let mut attrs = self.progress.attrs(st);
        // A file ending in zeros not written ends in a hole, and one that shrank while it was
        // copied may hold a chunk written past its end: its length says where it ends.
        attrs.size = cut.then_some(end);
        let owner = ops.run(self.sink.finish_file(file, attrs, path)).await?;
        self.progress.owner(owner);
        self.progress.entries.fetch_add(1, Ordering::Relaxed);
        Ok(Step::Done)
    }

    /// Copies the content of `source` (`size` bytes when it was listed) into `file`: the whole
    /// chunks the listed size promises [`PIPELINE`] at a time, then the rest one chunk at a time
    /// until a short read (a file that grew meanwhile, or one that fits in a chunk, whose one
    /// write is durable). Where it ends, and whether its length must be set (a hole at its end,
    /// or it shrank); `None`: it was removed meanwhile.
    async fn content<T: Transport>(
        &self,
        ops: &Ops<T>,
        source: &T::File,
        file: &SinkFile,
        size: u64,
        path: &str,
    ) -> StorageResult<Option<(u64, bool)>> {
        let chunk = self.chunk as u64;
        let (mut end, mut holes) = (0u64, false);
        let promised = size / chunk;
        if promised > 1 {
            let mut chunks = futures::stream::iter(0..promised)
                .map(|i| self.chunk_at(ops, source, file, i * chunk, path))
                .buffered(PIPELINE);
            while let Some(copied) = chunks.next().await {
                let Some((len, zeros)) = copied? else {
                    return Ok(None);
                };
                end += len;
                holes |= zeros;
                if len < chunk {
                    // Shrank meanwhile: chunks read after this one may have been written.
                    return Ok(Some((end, true)));
                }
            }
        }
        loop {
            let Some((len, zeros)) = self.chunk_at(ops, source, file, end, path).await? else {
                return Ok(None);
            };
            end += len;
            holes |= zeros;
            if len < chunk {
                return Ok(Some((end, holes)));
            }
        }
    }

    /// One chunk at `offset` copied: its length, and whether it was all zeros (not written: a
    /// hole). A chunk that is the whole file is written durably. `None`: the source is gone.
    async fn chunk_at<T: Transport>(
        &self,
        ops: &Ops<T>,
        source: &T::File,
        file: &SinkFile,
        offset: u64,
        path: &str,
    ) -> StorageResult<Option<(u64, bool)>> {
        let _buffer = self.buffers.acquire().await.map_err(|_| StorageFailure::Worker {
            op: OP,
            reason: "copy cancelled".into(),
        })?;
        let Some(data) = ops
            .run(ops.t().read(source, offset, self.chunk, at("read", path)))
            .await?
        else {
            return Ok(None);
        };
        let zeros = !data.is_empty() && data.iter().all(|b| *b == 0);
        if !zeros && !data.is_empty() {
            let durable = offset == 0 && data.len() < self.chunk;
            ops.run(self.sink.write(file, offset, &data, durable, path))
                .await?;
        }
        self.progress
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(Some((data.len() as u64, zeros)))
    }

    async fn link<T: Transport>(
        &self,
        ops: &Ops<T>,
        dir: &T::Dir,
        state: &CopyDir,
        name: &[u8],
        path: &str,
        st: &Stat,
    ) -> StorageResult<Step> {
        let Some(target) = ops
            .run(ops.t().read_link(dir, name, at("read symlink", path)))
            .await?
        else {
            return Ok(Step::Gone);
        };
        let attrs = self.progress.attrs(st);
        let owner = ops
            .run(self.sink.symlink(&state.dest, name, &target, attrs, path))
            .await?;
        self.progress.owner(owner);
        self.progress.entries.fetch_add(1, Ordering::Relaxed);
        Ok(Step::Done)
    }
}

impl<T: Transport> Visit<T> for Copy {
    type State = CopyDir;
    const STAT: bool = true;

    async fn enter(
        &self,
        ops: &Ops<T>,
        parent: &CopyDir,
        name: &[u8],
        path: &str,
        st: &Stat,
    ) -> StorageResult<Option<CopyDir>> {
        let dest = ops.run(self.sink.mkdir(&parent.dest, name, path)).await?;
        Ok(Some(CopyDir { dest, source: *st }))
    }

    async fn entry(
        &self,
        ops: &Ops<T>,
        dir: &T::Dir,
        state: &CopyDir,
        name: &[u8],
        path: &str,
        st: Option<&Stat>,
    ) -> StorageResult<Step> {
        let Some(st) = st else {
            return Ok(Step::Gone);
        };
        let skipped = match st.file_type {
            FileType::Regular => return self.file(ops, dir, state, name, path, st).await,
            FileType::Symlink => return self.link(ops, dir, state, name, path, st).await,
            FileType::Dir => return Ok(Step::IsDir),
            FileType::Fifo => &self.progress.fifos,
            FileType::Socket => &self.progress.sockets,
            FileType::CharDevice | FileType::BlockDevice => &self.progress.devices,
        };
        skipped.fetch_add(1, Ordering::Relaxed);
        Ok(Step::Done)
    }

    async fn leave(
        &self,
        ops: &Ops<T>,
        _: &T::Dir,
        _: &CopyDir,
        _: &[u8],
        path: &str,
        state: &CopyDir,
    ) -> StorageResult<Left> {
        let attrs = self.progress.attrs(&state.source);
        let owner = ops.run(self.sink.finish_dir(&state.dest, attrs, path)).await?;
        self.progress.owner(owner);
        self.progress.entries.fetch_add(1, Ordering::Relaxed);
        Ok(Left::Done)
    }

    async fn climb(
        &self,
        ops: &Ops<T>,
        state: &CopyDir,
        path: &str,
        parent: &Stat,
    ) -> StorageResult<CopyDir> {
        let dest = ops.run(self.sink.parent(&state.dest, path)).await?;
        Ok(CopyDir {
            dest,
            source: *parent,
        })
    }
}

/// The destination half over any transport: directories and files of an export, behind the
/// type-erased handles of [`Sink`].
pub struct Dest<D: Transport> {
    t: Arc<D>,
}

impl<D: Transport> Dest<D> {
    pub fn new(t: Arc<D>) -> Self {
        Dest { t }
    }

    fn dir<'a>(&self, dir: &'a SinkDir) -> StorageResult<&'a D::Dir> {
        dir.0.downcast_ref().ok_or_else(foreign_handle)
    }

    fn file<'a>(&self, file: &'a SinkFile) -> StorageResult<&'a D::File> {
        file.handle.downcast_ref().ok_or_else(foreign_handle)
    }

    /// Removes whatever is at `dir/name` (a directory with all in it), as a crashed attempt left it.
    async fn clear(&self, dir: &D::Dir, name: &[u8], path: &str) -> StorageResult<()> {
        let name = String::from_utf8_lossy(name);
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        Walker::new(
            Arc::clone(&self.t),
            Remove,
            CLEAR_CONCURRENCY,
            "clear earlier copy of",
        )
        .walk(dir, (), &name, parent)
        .await
        .map(drop)
    }

    /// Makes `name` in `dir` with `make`; what an earlier attempt left in the way is cleared
    /// and `make` tried once more.
    async fn making<R, F, Fut>(
        &self,
        dir: &D::Dir,
        name: &[u8],
        op: &'static str,
        path: &str,
        mut make: F,
    ) -> StorageResult<R>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StorageResult<Attempt<R>>>,
    {
        for _ in 0..2 {
            match make().await? {
                Attempt::Done(made) => return Ok(made),
                Attempt::Again => {}
                Attempt::InTheWay => self.clear(dir, name, path).await?,
            }
        }
        Err(Refusal::Vanished {
            op,
            path: path.to_owned(),
        }
        .into())
    }

    async fn mkdir_in(&self, dir: &D::Dir, name: &[u8], path: &str) -> StorageResult<SinkDir> {
        const OP: &str = "create directory";
        let t = &*self.t;
        self.making(dir, name, OP, path, || async {
            Ok(match t.mkdir(dir, name, 0o700, at(OP, path)).await? {
                Made::New(d) => Attempt::Done(SinkDir::new(d)),
                Made::Gone => Attempt::Again,
                // An earlier attempt's directory is taken as it is.
                Made::Exists => match t.open_dir(dir, name, at("open directory", path)).await? {
                    Opened::Dir(d) => Attempt::Done(SinkDir::new(d)),
                    Opened::Missing => Attempt::Again,
                    Opened::NotDir => Attempt::InTheWay,
                },
            })
        })
        .await
    }

    /// `None`: an earlier attempt's file of the same length and modification time is there (those
    /// are set last: it is whole).
    async fn start(
        &self,
        dir: &D::Dir,
        name: &[u8],
        path: &str,
        source: &Stat,
    ) -> StorageResult<Option<SinkFile>> {
        const OP: &str = "create file";
        let t = &*self.t;
        self.making(dir, name, OP, path, || async {
            Ok(match t.create_file(dir, name, at(OP, path)).await? {
                Made::New(f) => Attempt::Done(Some(SinkFile {
                    handle: Box::new(f),
                    unstable: AtomicBool::new(false),
                })),
                Made::Gone => Attempt::Again,
                Made::Exists => match t.stat(dir, name, at("stat", path)).await? {
                    Some(st)
                        if st.file_type == FileType::Regular
                            && st.size == source.size
                            && st.mtime == source.mtime =>
                    {
                        Attempt::Done(None)
                    }
                    _ => Attempt::InTheWay,
                },
            })
        })
        .await
    }

    async fn link(
        &self,
        dir: &D::Dir,
        name: &[u8],
        target: &[u8],
        attrs: Attrs,
        path: &str,
    ) -> StorageResult<Owner> {
        const OP: &str = "create symlink";
        let t = &*self.t;
        self.making(dir, name, OP, path, || async {
            Ok(match t.symlink(dir, name, target, at(OP, path)).await? {
                Made::New(()) => Attempt::Done(()),
                Made::Gone => Attempt::Again,
                Made::Exists => Attempt::InTheWay,
            })
        })
        .await?;
        t.set_attrs(Target::Link(dir, name), &attrs, at("set attributes of", path))
            .await
    }
}

/// One try at making an entry of the copy.
enum Attempt<R> {
    Done(R),
    /// Gone again before it could be taken: try again.
    Again,
    /// Something of an earlier attempt is in the way: clear it, then try again.
    InTheWay,
}

fn foreign_handle() -> StorageFailure {
    StorageFailure::Worker {
        op: OP,
        reason: "a handle of another transport was given to the copy's destination".into(),
    }
}

impl<D: Transport> Sink for Dest<D> {
    fn mkdir<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<SinkDir>> {
        Box::pin(async move { self.mkdir_in(self.dir(dir)?, name, path).await })
    }

    fn parent<'a>(&'a self, dir: &'a SinkDir, path: &'a str) -> BoxFuture<'a, StorageResult<SinkDir>> {
        Box::pin(async move {
            let parent = self.t.parent(self.dir(dir)?, at("open parent of", path)).await?;
            Ok(SinkDir::new(parent))
        })
    }

    fn start_file<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        path: &'a str,
        source: &'a Stat,
    ) -> BoxFuture<'a, StorageResult<Option<SinkFile>>> {
        Box::pin(async move { self.start(self.dir(dir)?, name, path, source).await })
    }

    fn write<'a>(
        &'a self,
        file: &'a SinkFile,
        offset: u64,
        data: &'a [u8],
        durable: bool,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move {
            if !durable {
                file.unstable.store(true, Ordering::Relaxed);
            }
            self.t
                .write(self.file(file)?, offset, data, durable, at("write", path))
                .await
        })
    }

    fn finish_file<'a>(
        &'a self,
        file: SinkFile,
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Owner>> {
        Box::pin(async move {
            let handle = self.file(&file)?;
            if file.unstable.load(Ordering::Relaxed) {
                self.t.commit(handle, at("commit", path)).await?;
            }
            self.t
                .set_attrs(Target::File(handle), &attrs, at("set attributes of", path))
                .await
        })
    }

    fn copy_file_from<'a>(
        &'a self,
        source_dir: &'a (dyn Any + Send + Sync),
        name: &'a [u8],
        dir: &'a SinkDir,
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Option<FileCopied>>> {
        Box::pin(async move {
            let Some(from) = source_dir.downcast_ref::<D::Dir>() else {
                return Ok(None);
            };
            self.t
                .copy_file(from, name, self.dir(dir)?, name, &attrs, at("copy", path))
                .await
        })
    }

    fn discard<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move {
            self.t
                .remove(self.dir(dir)?, name, Kind::Other, at("remove", path))
                .await
                .map(drop)
        })
    }

    fn finish_dir<'a>(
        &'a self,
        dir: &'a SinkDir,
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Owner>> {
        Box::pin(async move {
            self.t
                .set_attrs(Target::Dir(self.dir(dir)?), &attrs, at("set attributes of", path))
                .await
        })
    }

    fn symlink<'a>(
        &'a self,
        dir: &'a SinkDir,
        name: &'a [u8],
        target: &'a [u8],
        attrs: Attrs,
        path: &'a str,
    ) -> BoxFuture<'a, StorageResult<Owner>> {
        Box::pin(async move { self.link(self.dir(dir)?, name, target, attrs, path).await })
    }

    fn sync<'a>(&'a self, dir: &'a SinkDir, path: &'a str) -> BoxFuture<'a, StorageResult<()>> {
        Box::pin(async move { self.t.sync(self.dir(dir)?, at("sync", path)).await })
    }
}

/// Copies the tree inside the open source directory `dir` (at `path`) into `dest` with up to
/// `concurrency` requests in flight, then makes it durable.
pub async fn copy_tree<S: Transport>(
    source: Arc<S>,
    dir: S::Dir,
    path: &str,
    sink: Arc<dyn Sink>,
    dest: SinkDir,
    concurrency: usize,
    progress: Arc<Progress>,
) -> StorageResult<()> {
    let st = source.dir_stat(&dir, at("stat", path)).await?;
    let chunk = source.io_size();
    let mut walker = Walker::new(
        Arc::clone(&source),
        Copy::new(Arc::clone(&sink), progress, chunk),
        concurrency,
        OP,
    );
    // A directory being copied holds a handle of the source and one of the destination.
    if let Some(max) = source.max_open_dirs() {
        walker = walker.max_open_dirs(max / 2);
    }
    walker
        .walk_inside(
            dir,
            CopyDir {
                dest: dest.clone(),
                source: st,
            },
            path,
        )
        .await?;
    sink.sync(&dest, path).await
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::storage::posix::PosixTransport;

    /// `root/name/d/d/.../d` (`depth` directories), a file in each, a symlink at the bottom.
    fn chain(root: &Path, name: &str, depth: usize) {
        let mut dir = root.join(name);
        for i in 0..depth {
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("f"), format!("level {i}")).unwrap();
            dir = dir.join("d");
        }
        std::os::unix::fs::symlink("../f", dir.with_file_name("link")).unwrap();
    }

    fn listing(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut dir = root.to_path_buf();
        while dir.is_dir() {
            out.push(("f".into(), fs::read(dir.join("f")).unwrap()));
            if let Ok(target) = fs::read_link(dir.join("link")) {
                out.push(("link".into(), target.into_os_string().into_encoded_bytes()));
            }
            dir = dir.join("d");
        }
        out
    }

    async fn copy(t: PosixTransport, from: &str, to: &str, concurrency: usize) -> Progress {
        let t = Arc::new(t);
        let root = t.root().await.unwrap();
        let src = match t
            .open_dir(&root, from.as_bytes(), at("open", from))
            .await
            .unwrap()
        {
            Opened::Dir(d) => d,
            _ => panic!("no source"),
        };
        let Made::New(dest) = t
            .mkdir(&root, to.as_bytes(), 0o700, at("mkdir", to))
            .await
            .unwrap()
        else {
            panic!("no destination");
        };
        let progress = Arc::new(Progress::default());
        let sink: Arc<dyn Sink> = Arc::new(Dest::new(Arc::clone(&t)));
        copy_tree(
            t,
            src,
            from,
            sink,
            SinkDir::new(dest),
            concurrency,
            Arc::clone(&progress),
        )
        .await
        .unwrap();
        Arc::into_inner(progress).unwrap()
    }

    /// Deeper than the handle budget lets the parallel walk hold: the rest is copied one handle at
    /// a time, climbing back through `..` on both sides; and a transport whose calls block is
    /// copied that way from the top.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tree_deeper_than_the_handle_budget_is_copied_one_handle_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        chain(tmp.path(), "src", 200);
        let copied = copy(PosixTransport::new(tmp.path().into(), 16), "src", "parallel", 8).await;
        assert_eq!(copied.copied().entries, 200 * 2);
        assert_eq!(
            listing(&tmp.path().join("src")),
            listing(&tmp.path().join("parallel"))
        );

        let serial = PosixTransport::here(tmp.path().into(), Arc::default());
        let copied = copy(serial, "src", "serial", 8).await;
        assert_eq!(copied.copied().entries, 200 * 2);
        assert_eq!(
            listing(&tmp.path().join("src")),
            listing(&tmp.path().join("serial"))
        );
    }
}
