//! The transport interface: the few filesystem primitives the volume protocol ([`super::protocol`])
//! and the tree walker ([`super::walker`]) are written over. A transport is one way of reaching an
//! export: [`super::posix`] (the export mounted at a local path) and [`super::nfs3`] (a userspace
//! NFSv3 client). A new transport implements this trait and gets every volume operation.
//!
//! The contract every implementation keeps:
//! * Everything is relative to a directory handle ([`Transport::Dir`]) and one name; nothing
//!   resolves a path string, and no primitive follows a symlink (a link is a non-directory).
//! * Outcomes the protocol decides on are answers ([`Opened`], [`Made`], [`Renamed`], ...), not
//!   errors; "already there" and "not there" are reported, never guessed. A request the transport
//!   resent (after a timeout or a lost connection) is interpreted by the transport, so a primitive's
//!   answer is as if it had been sent once.
//! * [`Transport::rename_noreplace`] never replaces anything but an empty claim directory the
//!   caller says is its own: a transport whose rename replaces empty directories (NFS) emulates
//!   no-replace with an exclusive MKDIR of the target first.
//! * Errors name the operation and the path they are given ([`At`]).
//! * Files are read and written through handles of their own ([`Transport::File`]), opened without
//!   following a symlink; attributes are set on a handle, or by name only for a symlink
//!   ([`Target`]), and an owner the server or kernel does not let us set is reported, not an error.

use std::future::Future;

use super::error::StorageResult;

/// What a primitive is doing on which path (relative to the export root), for its errors.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub op: &'static str,
    pub path: &'a str,
}

pub fn at<'a>(op: &'static str, path: &'a str) -> At<'a> {
    At { op, path }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A file, symlink, device, ...: removed as itself, never entered or followed.
    Other,
}

/// What an entry is, as copies and usage tell entries apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    Dir,
    Regular,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// A point in time as filesystems keep it: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    pub seconds: i64,
    pub nanos: u32,
}

/// An entry's attributes (not following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub file_type: FileType,
    /// Inode number (NFS fileid).
    pub id: u64,
    /// The filesystem it is on (st_dev, NFS fsid).
    pub fs: u64,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    /// Length in bytes (of a symlink: of its target).
    pub size: u64,
    /// Bytes it takes on the server's disk (st_blocks × 512, NFS `used`), as `du` counts them.
    pub used: u64,
    pub atime: Time,
    pub mtime: Time,
    /// Last change of the inode itself (a rename, chmod or chown sets it, and nothing can set it
    /// back): how long ago a directory was archived.
    pub ctime: Time,
}

impl Stat {
    pub fn kind(&self) -> Kind {
        match self.file_type {
            FileType::Dir => Kind::Dir,
            _ => Kind::Other,
        }
    }
}

/// Attributes to set; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits, with setuid, setgid and sticky (ignored for a symlink).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// A regular file's length: extends it with a hole, or cuts it.
    pub size: Option<u64>,
    /// Access and modification time.
    pub times: Option<(Time, Time)>,
}

impl Attrs {
    /// Owner, mode and times of `st`, as a copy keeps them.
    pub fn of(st: &Stat) -> Attrs {
        Attrs {
            mode: Some(st.mode),
            uid: Some(st.uid),
            gid: Some(st.gid),
            size: None,
            times: Some((st.atime, st.mtime)),
        }
    }

    pub fn sets_owner(&self) -> bool {
        self.uid.is_some() || self.gid.is_some()
    }
}

/// What [`Transport::set_attrs`] acts on: an open directory or file, or (for a symlink, which
/// cannot be opened without following it) an entry by name.
pub enum Target<'a, D, F> {
    Dir(&'a D),
    File(&'a F),
    Link(&'a D, &'a [u8]),
}

/// Whether the owner asked for could be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Set, or none was asked for.
    Kept,
    /// The server or kernel does not let us choose owners (root squashed, or no CAP_CHOWN); every
    /// other attribute was set.
    Refused,
}

/// What [`Transport::copy_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCopied {
    /// Copied, `bytes` of it data (holes stay holes), `attrs` set.
    Done { bytes: u64, owner: Owner },
    /// The source is not there (any more).
    SourceGone,
    /// The source is not a regular file (any more): what it is now.
    SourceNotFile(FileType),
    /// Something is at the target name already (an earlier attempt's): nothing was done.
    TargetExists,
}

pub enum OpenedFile<F> {
    File(F),
    /// Not a regular file (any more): what it is now.
    Other(FileType),
    Missing,
}

pub enum Opened<D> {
    Dir(D),
    NotDir,
    Missing,
}

pub enum Made<D> {
    New(D),
    Exists,
    /// Made, then removed or replaced by someone else before it could be opened.
    Gone,
}

/// What a rename moves: `from` in `from_dir` to `to` in `to_dir`.
pub struct Move<'a, D> {
    pub from_dir: &'a D,
    pub from: &'a [u8],
    pub to_dir: &'a D,
    pub to: &'a [u8],
}

impl<D> Clone for Move<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for Move<'_, D> {}

impl<'a, D> Move<'a, D> {
    /// A rename inside one directory.
    pub fn within(dir: &'a D, from: &'a [u8], to: &'a [u8]) -> Self {
        Move {
            from_dir: dir,
            from,
            to_dir: dir,
            to,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renamed {
    Done,
    /// The target exists (and is not a claim the caller may replace).
    Taken,
    SourceMissing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlinked {
    Done,
    Missing,
    /// Removing it as a non-directory found a directory (swapped meanwhile).
    IsDir,
    /// Removing it as a directory found a non-directory.
    NotDir,
    NotEmpty,
}

pub enum ReadFile {
    Data(Vec<u8>),
    Missing,
    NotAFile,
}

/// One directory entry; `kind`, `stat` and `dir` are given where the listing carries them for
/// free.
pub struct Entry<D> {
    pub name: Vec<u8>,
    pub kind: Option<Kind>,
    /// Its attributes (NFS READDIRPLUS gives them).
    pub stat: Option<Stat>,
    /// A handle of the entry if it is a directory (NFS READDIRPLUS gives one).
    pub dir: Option<D>,
}

pub struct Page<D, C> {
    pub entries: Vec<Entry<D>>,
    /// Where the next page starts; `None`: this was the last.
    pub next: Option<C>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
}

/// Filesystem primitives over one export. Cheap handles, `Send` futures (operations run on
/// spawned tasks).
pub trait Transport: Send + Sync + 'static {
    /// An open directory: a directory fd, an NFS file handle with its attributes.
    type Dir: Clone + Send + Sync + 'static;
    /// A position in a directory listing.
    type Cursor: Clone + Send + Sync + 'static;
    /// An open regular file: a file descriptor, an NFS file handle.
    type File: Send + Sync + 'static;

    /// The export root (connecting first where that is needed).
    fn root(&self) -> impl Future<Output = StorageResult<Self::Dir>> + Send;
    fn open_dir(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Opened<Self::Dir>>> + Send;
    fn stat(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Option<Stat>>> + Send;
    fn dir_stat(&self, dir: &Self::Dir, at: At<'_>) -> impl Future<Output = StorageResult<Stat>> + Send;
    /// The parent of `dir` (its `..`), for walks that hold one handle at a time.
    fn parent(&self, dir: &Self::Dir, at: At<'_>) -> impl Future<Output = StorageResult<Self::Dir>> + Send;
    /// Exclusive MKDIR asking for `mode` (the umask or server may take bits away: callers chmod).
    fn mkdir(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        mode: u32,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Made<Self::Dir>>> + Send;
    /// `best_effort`: a server or kernel that does not allow it is not an error.
    fn chown(
        &self,
        dir: &Self::Dir,
        uid: Option<u32>,
        gid: Option<u32>,
        best_effort: bool,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<()>> + Send;
    fn chmod(&self, dir: &Self::Dir, mode: u32, at: At<'_>)
    -> impl Future<Output = StorageResult<()>> + Send;
    /// Renames `from` (inode `from_id`) to `to` unless `to` exists; `reuse_claim`: an empty mode-000
    /// directory at `to` is the caller's own claim and may be replaced.
    fn rename_noreplace(
        &self,
        m: Move<'_, Self::Dir>,
        from_id: u64,
        reuse_claim: bool,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Renamed>> + Send;
    /// A plain rename, which may replace an empty directory (only used inside the staging area).
    fn rename(
        &self,
        m: Move<'_, Self::Dir>,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Renamed>> + Send;
    /// Creates a new regular file (mode 0600) with `content`, durably. `false`: the name existed.
    fn write_file(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        content: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<bool>> + Send;
    /// Reads a regular file of at most `RECORD_FILE_MAX` bytes.
    fn read_file(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<ReadFile>> + Send;
    /// One page of `dir`'s entries (without `.` and `..`) from `from`; `None`: the cursor was lost
    /// (entries removed meanwhile), list again from the start. `attrs`: the caller wants each
    /// entry's attributes too (a transport whose listing lacks them gets them in the same call).
    #[allow(clippy::type_complexity)] // one page of a listing
    fn read_dir(
        &self,
        dir: &Self::Dir,
        from: Option<Self::Cursor>,
        attrs: bool,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Option<Page<Self::Dir, Self::Cursor>>>> + Send;
    /// Removes `name` as a directory (`Kind::Dir`, empty) or as anything else.
    fn remove(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        kind: Kind,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Unlinked>> + Send;
    fn statfs(&self, dir: &Self::Dir, at: At<'_>) -> impl Future<Output = StorageResult<Capacity>> + Send;

    /// Opens regular file `name` of `dir` for reading (never through a symlink, never blocking on
    /// a FIFO).
    fn open_file(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<OpenedFile<Self::File>>> + Send;
    /// Up to `len` bytes from `offset`; fewer only at the end of the file. `None`: the file was
    /// removed since it was opened (NFS: a stale handle; an open POSIX file stays readable).
    fn read(
        &self,
        file: &Self::File,
        offset: u64,
        len: usize,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Option<Vec<u8>>>> + Send;
    /// Creates regular file `name` (mode 0600) exclusively, open for writing.
    fn create_file(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Made<Self::File>>> + Send;
    /// Writes all of `data` at `offset`; `durable`: on the server's disk before this answers (for
    /// a file written in one call, which then needs no [`Transport::commit`]).
    fn write(
        &self,
        file: &Self::File,
        offset: u64,
        data: &[u8],
        durable: bool,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<()>> + Send;
    /// Makes what was written to `file` durable on the server (NFS COMMIT; a mounted export's
    /// files are made durable together, by [`Transport::sync`]).
    fn commit(&self, file: &Self::File, at: At<'_>) -> impl Future<Output = StorageResult<()>> + Send;
    /// Makes everything written below `dir` durable (a mounted export: syncfs).
    fn sync(&self, dir: &Self::Dir, at: At<'_>) -> impl Future<Output = StorageResult<()>> + Send;
    /// The target of symlink `name` of `dir`, as bytes, never resolved; `None`: not there (or
    /// not a symlink any more).
    fn read_link(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Option<Vec<u8>>>> + Send;
    /// Creates symlink `name` in `dir` pointing at `target`, exclusively.
    fn symlink(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        target: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Made<()>>> + Send;
    /// Sets `attrs`: owner first (which clears setuid and setgid), then mode, size and times.
    fn set_attrs(
        &self,
        target: Target<'_, Self::Dir, Self::File>,
        attrs: &Attrs,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Owner>> + Send;
    /// Copies regular file `from` of `from_dir` into a new file `to` of `to_dir`, both of this
    /// transport, in one call where the transport can do it itself (a mounted export: in the
    /// kernel, holes kept), `attrs` set last; `None`: it cannot, and the copy reads and writes.
    fn copy_file(
        &self,
        from_dir: &Self::Dir,
        from: &[u8],
        to_dir: &Self::Dir,
        to: &[u8],
        attrs: &Attrs,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Option<FileCopied>>> + Send;
    /// Bytes a read or write moves at best (the server's preferred transfer size).
    fn io_size(&self) -> usize;

    /// Directory handles a walk may hold at once (`None`: handles cost no resource).
    fn max_open_dirs(&self) -> Option<usize>;
    /// Whether primitives may be in flight at once. A transport whose primitives block the thread
    /// that calls them says no; walks over it then run one primitive at a time, in the caller.
    fn concurrent(&self) -> bool;
    /// Whether an interrupted [`Transport::rename_noreplace`] may leave its claim (an empty
    /// mode-000 directory) at the target. Only then does a create mark its record before placing,
    /// so that a retry may reuse that claim.
    fn placing_may_leave_a_claim(&self) -> bool;
    /// About to run up to `in_flight` primitives at once (a pool may grow for it).
    fn prepare_parallel(&self, in_flight: usize);
}
