//! The mounted transport: the export mounted at a local path (`NFS_MOUNT_PATH`, as
//! nfs-subdir-external-provisioner works), reached with POSIX calls.
//!
//! Symlink safety: every primitive is an `*at` call relative to the fd of the directory it acts
//! in, and directories are opened with `O_DIRECTORY | O_NOFOLLOW`, so no path string is ever
//! resolved by the kernel and a symlink anywhere (a parent, the volume, an entry swapped mid-walk)
//! cannot redirect an operation outside the export. The honest differences from NFS:
//! * no-replace rename is `renameat2(RENAME_NOREPLACE)`; where the filesystem lacks it (the Linux
//!   NFS client), a check then a plain rename, which can replace only an *empty* directory made
//!   in between, never data;
//! * system calls block: [`MountedExport`] runs each volume operation on one blocking thread of
//!   its own (at most `threads` at once), its primitives plain calls there, so a hung mount holds
//!   threads, not the runtime, and a deadline fails the operation while its thread stays in the
//!   kernel; a delete's walk instead spreads its primitives over blocking threads, in parallel.
//!   (A hop to another thread per primitive costs several times the CPU of the call itself.)

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat, renameat};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstat, fstatat, futimens, mkdirat, utimensat,
};
use nix::sys::statvfs::fstatvfs;
use nix::sys::time::TimeSpec;
use nix::sys::uio::{pread, pwrite};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, ftruncate, symlinkat, syncfs, unlinkat};
use tokio::sync::Semaphore;

use super::copy::{Progress, Sink, SinkDir};
use super::error::{StorageFailure, StorageResult};
use super::protocol::{Archived, Backend, Created, Fill, Listing, OpFuture, Removed, Volumes};
use super::transport::{
    At, Attrs, Capacity, Entry, FileCopied, FileType, Kind, Made, Move, Opened, OpenedFile, Owner, Page,
    ReadFile, Renamed, Stat, Target, Time, Transport, Unlinked,
};
use super::usage::Usage;
use super::walker::Pace;
use crate::core::params::DirMode;
use crate::core::staging::{CLAIM_MODE, Existing, RECORD_FILE_MAX};

/// Threads the mounted export may occupy at once unless more are asked for. Enough for the
/// controllers' parallel work; bounded so a hung mount cannot exhaust the blocking pool.
pub const MAX_BLOCKED: usize = 16;
/// Directory fds a walk holds at once (plus a few per worker).
pub const MAX_OPEN_DIRS: usize = 128;
/// Bytes per read and write of a copy on the mounted export.
pub const POSIX_IO_SIZE: usize = 1 << 20;

/// A failure of the mounted export's system calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PosixError {
    #[error("{op} {}: {errno}", path.display())]
    Root {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("{op} {path}: {errno}")]
    Io {
        op: &'static str,
        path: String,
        errno: Errno,
    },
}

impl PosixError {
    pub fn errno(&self) -> Errno {
        match self {
            PosixError::Root { errno, .. } | PosixError::Io { errno, .. } => *errno,
        }
    }
}

impl From<PosixError> for StorageFailure {
    fn from(e: PosixError) -> Self {
        StorageFailure::Transport(Box::new(e))
    }
}

pub struct PosixTransport {
    root: PathBuf,
    calls: Calls,
}

/// Where the primitives' system calls run.
enum Calls {
    /// Each on a blocking thread of its own, at most as many at once as the semaphore has permits.
    Spread(Arc<Semaphore>),
    /// On the calling thread, a blocking one that runs the whole operation; once the flag is set
    /// (its caller gave up), the next primitive fails instead, so the operation stops there.
    Here(Arc<AtomicBool>),
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn io(at: At<'_>, errno: Errno) -> StorageFailure {
    PosixError::Io {
        op: at.op,
        path: at.path.to_owned(),
        errno,
    }
    .into()
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

fn is_dir(st: &FileStat) -> bool {
    file_type(st) == FileType::Dir
}

fn file_type(st: &FileStat) -> FileType {
    let format = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if format == SFlag::S_IFDIR {
        FileType::Dir
    } else if format == SFlag::S_IFLNK {
        FileType::Symlink
    } else if format == SFlag::S_IFIFO {
        FileType::Fifo
    } else if format == SFlag::S_IFSOCK {
        FileType::Socket
    } else if format == SFlag::S_IFCHR {
        FileType::CharDevice
    } else if format == SFlag::S_IFBLK {
        FileType::BlockDevice
    } else {
        FileType::Regular
    }
}

#[allow(clippy::useless_conversion, clippy::unnecessary_cast)] // stat's field types differ between platforms
fn stat_of(st: &FileStat) -> Stat {
    let time = |seconds: i64, nanos: i64| Time {
        seconds,
        nanos: u32::try_from(nanos).unwrap_or(0),
    };
    Stat {
        file_type: file_type(st),
        id: st.st_ino,
        fs: u64::from(st.st_dev),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: u64::from(st.st_nlink),
        size: u64::try_from(st.st_size).unwrap_or(0),
        used: u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
        atime: time(st.st_atime as i64, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime as i64, st.st_ctime_nsec as i64),
    }
}

fn timespec(t: Time) -> TimeSpec {
    #[allow(clippy::useless_conversion)] // time_t and the nanosecond type differ between platforms
    TimeSpec::new(t.seconds.into(), i64::from(t.nanos).try_into().unwrap_or(0))
}

fn offset(offset: u64) -> nix::Result<nix::libc::off_t> {
    nix::libc::off_t::try_from(offset).map_err(|_| Errno::EFBIG)
}

/// Opens a regular file for reading: never through a symlink (O_NOFOLLOW), and without blocking
/// on a FIFO swapped in since the listing (O_NONBLOCK; the type is checked on the open file).
fn open_for_reading(dir: &OwnedFd, name: &[u8]) -> nix::Result<OpenedFile<Arc<OwnedFd>>> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(OpenedFile::Missing),
        Err(Errno::ELOOP) => return Ok(OpenedFile::Other(FileType::Symlink)),
        Err(e) => return Err(e),
    };
    let st = fstat(&fd)?;
    Ok(match file_type(&st) {
        FileType::Regular => OpenedFile::File(Arc::new(fd)),
        other => OpenedFile::Other(other),
    })
}

fn read_at(fd: &OwnedFd, from: u64, len: usize) -> nix::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut done = 0;
    while done < len {
        match pread(fd, &mut buf[done..], offset(from + done as u64)?) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

fn write_at(fd: &OwnedFd, from: u64, data: &[u8]) -> nix::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match pwrite(fd, &data[done..], offset(from + done as u64)?) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies `len` bytes at `offset` of `src` to the same offset of `dst`: in the kernel where it
/// can (`copy_file_range`), else through a buffer. How many (fewer only at the end of `src`).
fn copy_range(src: &OwnedFd, dst: &OwnedFd, offset: u64, len: u64) -> nix::Result<u64> {
    use nix::fcntl::copy_file_range;
    let mut done = 0u64;
    let mut kernel = true;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(1 << 30);
        let at = i64::try_from(offset + done).map_err(|_| Errno::EFBIG)?;
        let n = if kernel {
            let (mut from, mut to) = (at, at);
            match copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
                Ok(n) => n,
                // Across filesystems, or not supported: copy through a buffer instead.
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    kernel = false;
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        } else {
            let data = read_at(src, offset + done, want.min(POSIX_IO_SIZE))?;
            write_at(dst, offset + done, &data)?;
            data.len()
        };
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}

/// The whole copy of one file in one call: the data segments only (holes stay holes), the
/// length, then `attrs`. See [`Transport::copy_file`].
fn copy_local(
    from_dir: &OwnedFd,
    from: &[u8],
    to_dir: &OwnedFd,
    to: &[u8],
    attrs: &Attrs,
) -> nix::Result<FileCopied> {
    use nix::unistd::{Whence, lseek};
    let src = match open_for_reading(from_dir, from)? {
        OpenedFile::File(fd) => fd,
        OpenedFile::Missing => return Ok(FileCopied::SourceGone),
        OpenedFile::Other(kind) => return Ok(FileCopied::SourceNotFile(kind)),
    };
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dst = match openat(to_dir, to, flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => fd,
        Err(Errno::EEXIST) => return Ok(FileCopied::TargetExists),
        Err(e) => return Err(e),
    };
    let mut bytes = 0;
    let mut offset = 0;
    loop {
        let data = match lseek(&*src, offset, Whence::SeekData) {
            Ok(data) => data,
            // No data past `offset`.
            Err(Errno::ENXIO) => break,
            // No SEEK_DATA here: all of it is data.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => offset,
            Err(e) => return Err(e),
        };
        let end = match lseek(&*src, data, Whence::SeekHole) {
            Ok(end) => end,
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => i64::MAX,
            Err(e) => return Err(e),
        };
        let start = u64::try_from(data).unwrap_or(0);
        let want = u64::try_from(end.saturating_sub(data)).unwrap_or(0);
        let copied = copy_range(&src, &dst, start, want)?;
        bytes += copied;
        if copied < want {
            break;
        }
        offset = end;
    }
    // Ends as the source ends now (after a trailing hole, or grown meanwhile).
    let len = fstat(&*src)?.st_size;
    ftruncate(&dst, len)?;
    let owner = set_fd_attrs(&dst, attrs)?;
    Ok(FileCopied::Done { bytes, owner })
}

/// chown, refused quietly where we may not choose owners (no CAP_CHOWN, a squashed mount).
fn owner_result(result: nix::Result<()>) -> nix::Result<Owner> {
    match result {
        Ok(()) => Ok(Owner::Kept),
        Err(Errno::EPERM | Errno::EINVAL) => Ok(Owner::Refused),
        Err(e) => Err(e),
    }
}

fn set_fd_attrs(fd: &OwnedFd, attrs: &Attrs) -> nix::Result<Owner> {
    let owner = if attrs.sets_owner() {
        owner_result(fchown(
            fd,
            attrs.uid.map(Uid::from_raw),
            attrs.gid.map(Gid::from_raw),
        ))?
    } else {
        Owner::Kept
    };
    if let Some(mode) = attrs.mode {
        fchmod(fd, Mode::from_bits_truncate(mode))?;
    }
    if let Some(size) = attrs.size {
        ftruncate(fd, offset(size)?)?;
    }
    if let Some((atime, mtime)) = attrs.times {
        futimens(fd, &timespec(atime), &timespec(mtime))?;
    }
    Ok(owner)
}

/// A symlink's owner and times, by name (its mode cannot be changed on Linux, nor does it matter).
fn set_link_attrs(dir: &OwnedFd, name: &[u8], attrs: &Attrs) -> nix::Result<Owner> {
    let owner = if attrs.sets_owner() {
        owner_result(fchownat(
            dir,
            name,
            attrs.uid.map(Uid::from_raw),
            attrs.gid.map(Gid::from_raw),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ))?
    } else {
        Owner::Kept
    };
    if let Some((atime, mtime)) = attrs.times {
        utimensat(
            dir,
            name,
            &timespec(atime),
            &timespec(mtime),
            UtimensatFlags::NoFollowSymlink,
        )?;
    }
    Ok(owner)
}

fn stat_nofollow(dir: &OwnedFd, name: &[u8]) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_claim(dir: &OwnedFd, name: &[u8]) -> nix::Result<bool> {
    Ok(stat_nofollow(dir, name)?.is_some_and(|st| is_dir(&st) && st.st_mode & 0o7777 == CLAIM_MODE))
}

/// Renames unless `to` exists; `reuse_claim`: an empty claim at `to` may be replaced.
fn rename_noreplace(
    from_dir: &OwnedFd,
    from: &[u8],
    to_dir: &OwnedFd,
    to: &[u8],
    reuse_claim: bool,
) -> nix::Result<Renamed> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{RenameFlags, renameat2};
        match renameat2(from_dir, from, to_dir, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(Renamed::Done),
            Err(Errno::ENOENT) => return Ok(Renamed::SourceMissing),
            Err(Errno::EEXIST | Errno::ENOTEMPTY) if !reuse_claim => return Ok(Renamed::Taken),
            // Taken, or no RENAME_NOREPLACE here (the Linux NFS client): decide below.
            Err(Errno::EEXIST | Errno::ENOTEMPTY | Errno::EINVAL | Errno::ENOSYS) => {}
            Err(e) => return Err(e),
        }
    }
    if stat_nofollow(to_dir, to)?.is_some() && !(reuse_claim && is_claim(to_dir, to)?) {
        return Ok(Renamed::Taken);
    }
    match renameat(from_dir, from, to_dir, to) {
        Ok(()) => Ok(Renamed::Done),
        Err(Errno::ENOENT) => Ok(Renamed::SourceMissing),
        Err(Errno::EEXIST | Errno::ENOTEMPTY | Errno::ENOTDIR | Errno::EISDIR) => Ok(Renamed::Taken),
        Err(e) => Err(e),
    }
}

fn read_small(dir: &OwnedFd, name: &[u8]) -> nix::Result<ReadFile> {
    let fd = match openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(ReadFile::Missing),
        Err(Errno::ELOOP) => return Ok(ReadFile::NotAFile),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::new();
    match File::from(fd)
        .take(RECORD_FILE_MAX)
        .read_to_end(&mut buf)
        .map_err(io_errno)
    {
        Ok(_) => Ok(ReadFile::Data(buf)),
        Err(Errno::EISDIR) => Ok(ReadFile::NotAFile),
        Err(e) => Err(e),
    }
}

fn write_new(dir: &OwnedFd, name: &[u8], content: &[u8]) -> nix::Result<bool> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => fd,
        Err(Errno::EEXIST) => return Ok(false),
        Err(e) => return Err(e),
    };
    if !content.is_empty() {
        let mut file = File::from(fd);
        file.write_all(content).map_err(io_errno)?;
        file.sync_all().map_err(io_errno)?;
    }
    Ok(true)
}

/// `dir`'s entries; with `attrs`, each one's attributes (`fstatat`, in the same call: one thread
/// hop for the whole listing), an entry gone meanwhile left out.
fn list(dir: &OwnedFd, attrs: bool) -> nix::Result<Vec<Entry<Arc<OwnedFd>>>> {
    let dup = dir.try_clone().map_err(io_errno)?;
    let mut listing = Dir::from_fd(dup)?;
    let mut entries = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let kind = match entry.file_type() {
            Some(Type::Directory) => Some(Kind::Dir),
            Some(_) => Some(Kind::Other),
            None => None,
        };
        let stat = match attrs {
            false => None,
            true => match stat_nofollow(dir, name)? {
                Some(st) => Some(stat_of(&st)),
                None => continue,
            },
        };
        entries.push(Entry {
            name: name.to_vec(),
            kind: stat.map_or(kind, |st| Some(st.kind())),
            stat,
            dir: None,
        });
    }
    Ok(entries)
}

impl PosixTransport {
    /// The export mounted at `root`; at most `threads` system calls at once (at least
    /// [`MAX_BLOCKED`]).
    pub fn new(root: PathBuf, threads: usize) -> Self {
        Self::spread(root, Arc::new(Semaphore::new(threads.max(MAX_BLOCKED))))
    }

    fn spread(root: PathBuf, threads: Arc<Semaphore>) -> Self {
        PosixTransport {
            root,
            calls: Calls::Spread(threads),
        }
    }

    /// Primitives called on the calling thread until `stop` is set.
    pub(crate) fn here(root: PathBuf, stop: Arc<AtomicBool>) -> Self {
        PosixTransport {
            root,
            calls: Calls::Here(stop),
        }
    }

    /// Runs `call` where [`Calls`] says: spread, on a blocking thread under a permit held until
    /// the call returns, however long after a deadline that is.
    async fn blocking<R, F>(&self, op: &'static str, call: F) -> StorageResult<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let worker = |reason: String| StorageFailure::Worker { op, reason };
        let threads = match &self.calls {
            Calls::Here(stop) if stop.load(Ordering::Acquire) => {
                return Err(worker(ABANDONED.into()));
            }
            Calls::Here(_) => return Ok(call()),
            Calls::Spread(threads) => threads,
        };
        let permit = Arc::clone(threads)
            .acquire_owned()
            .await
            .map_err(|e| worker(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            call()
        })
        .await
        .map_err(|e| worker(e.to_string()))
    }

    /// `call` on `dir` and an owned copy of `name`, its errno named after `at`.
    async fn at_dir<R, F>(&self, dir: &Arc<OwnedFd>, name: &[u8], at: At<'_>, call: F) -> StorageResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&OwnedFd, &[u8]) -> nix::Result<R> + Send + 'static,
    {
        let (dir, name) = (Arc::clone(dir), name.to_vec());
        self.blocking(at.op, move || call(&dir, &name))
            .await?
            .map_err(|e| io(at, e))
    }
}

impl Transport for PosixTransport {
    type Dir = Arc<OwnedFd>;
    /// A directory is listed in one page.
    type Cursor = ();
    type File = Arc<OwnedFd>;

    async fn root(&self) -> StorageResult<Self::Dir> {
        const OP: &str = "open export root";
        let root = self.root.clone();
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        match self
            .blocking(OP, move || nix::fcntl::open(&root, flags, Mode::empty()))
            .await?
        {
            Ok(fd) => Ok(Arc::new(fd)),
            Err(errno) => Err(PosixError::Root {
                op: OP,
                path: self.root.clone(),
                errno,
            }
            .into()),
        }
    }

    async fn open_dir(&self, dir: &Self::Dir, name: &[u8], at: At<'_>) -> StorageResult<Opened<Self::Dir>> {
        self.at_dir(dir, name, at, |dir, name| {
            match openat(dir, name, dir_flags(), Mode::empty()) {
                Ok(fd) => Ok(Opened::Dir(Arc::new(fd))),
                Err(Errno::ENOENT) => Ok(Opened::Missing),
                Err(Errno::ELOOP | Errno::ENOTDIR) => Ok(Opened::NotDir),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn stat(&self, dir: &Self::Dir, name: &[u8], at: At<'_>) -> StorageResult<Option<Stat>> {
        self.at_dir(dir, name, at, |dir, name| {
            Ok(stat_nofollow(dir, name)?.as_ref().map(stat_of))
        })
        .await
    }

    async fn dir_stat(&self, dir: &Self::Dir, at: At<'_>) -> StorageResult<Stat> {
        self.at_dir(dir, b"", at, |dir, _| fstat(dir).map(|st| stat_of(&st)))
            .await
    }

    async fn parent(&self, dir: &Self::Dir, at: At<'_>) -> StorageResult<Self::Dir> {
        self.at_dir(dir, b"..", at, |dir, name| {
            openat(dir, name, dir_flags(), Mode::empty()).map(Arc::new)
        })
        .await
    }

    async fn mkdir(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        mode: u32,
        at: At<'_>,
    ) -> StorageResult<Made<Self::Dir>> {
        self.at_dir(dir, name, at, move |dir, name| {
            match mkdirat(dir, name, Mode::from_bits_truncate(mode)) {
                Ok(()) => match openat(dir, name, dir_flags(), Mode::empty()) {
                    Ok(fd) => Ok(Made::New(Arc::new(fd))),
                    Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(Made::Gone),
                    Err(e) => Err(e),
                },
                Err(Errno::EEXIST) => Ok(Made::Exists),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn chown(
        &self,
        dir: &Self::Dir,
        uid: Option<u32>,
        gid: Option<u32>,
        best_effort: bool,
        at: At<'_>,
    ) -> StorageResult<()> {
        self.at_dir(dir, b"", at, move |dir, _| {
            match fchown(dir, uid.map(Uid::from_raw), gid.map(Gid::from_raw)) {
                // An unprivileged (squashed) provisioner may not be allowed to pick that group.
                Err(Errno::EPERM | Errno::EINVAL) if best_effort => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn chmod(&self, dir: &Self::Dir, mode: u32, at: At<'_>) -> StorageResult<()> {
        self.at_dir(dir, b"", at, move |dir, _| {
            fchmod(dir, Mode::from_bits_truncate(mode))
        })
        .await
    }

    async fn rename_noreplace(
        &self,
        m: Move<'_, Self::Dir>,
        _from_id: u64,
        reuse_claim: bool,
        at: At<'_>,
    ) -> StorageResult<Renamed> {
        let (to_dir, to) = (Arc::clone(m.to_dir), m.to.to_vec());
        self.at_dir(m.from_dir, m.from, at, move |from_dir, from| {
            rename_noreplace(from_dir, from, &to_dir, &to, reuse_claim)
        })
        .await
    }

    async fn rename(&self, m: Move<'_, Self::Dir>, at: At<'_>) -> StorageResult<Renamed> {
        let (to_dir, to) = (Arc::clone(m.to_dir), m.to.to_vec());
        self.at_dir(m.from_dir, m.from, at, move |from_dir, from| {
            match renameat(from_dir, from, &*to_dir, to.as_slice()) {
                Ok(()) => Ok(Renamed::Done),
                Err(Errno::ENOENT) => Ok(Renamed::SourceMissing),
                Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(Renamed::Taken),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn write_file(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        content: &[u8],
        at: At<'_>,
    ) -> StorageResult<bool> {
        let content = content.to_vec();
        self.at_dir(dir, name, at, move |dir, name| write_new(dir, name, &content))
            .await
    }

    async fn read_file(&self, dir: &Self::Dir, name: &[u8], at: At<'_>) -> StorageResult<ReadFile> {
        self.at_dir(dir, name, at, read_small).await
    }

    async fn read_dir(
        &self,
        dir: &Self::Dir,
        _from: Option<()>,
        attrs: bool,
        at: At<'_>,
    ) -> StorageResult<Option<Page<Self::Dir, ()>>> {
        self.at_dir(dir, b"", at, move |dir, _| list(dir, attrs))
            .await
            .map(|entries| Some(Page { entries, next: None }))
    }

    async fn remove(&self, dir: &Self::Dir, name: &[u8], kind: Kind, at: At<'_>) -> StorageResult<Unlinked> {
        self.at_dir(dir, name, at, move |dir, name| {
            let flags = match kind {
                Kind::Dir => UnlinkatFlags::RemoveDir,
                Kind::Other => UnlinkatFlags::NoRemoveDir,
            };
            match unlinkat(dir, name, flags) {
                Ok(()) => Ok(Unlinked::Done),
                Err(Errno::ENOENT) => Ok(Unlinked::Missing),
                Err(Errno::EISDIR) => Ok(Unlinked::IsDir),
                Err(Errno::ENOTDIR) if kind == Kind::Dir => Ok(Unlinked::NotDir),
                Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(Unlinked::NotEmpty),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn statfs(&self, dir: &Self::Dir, _at: At<'_>) -> StorageResult<Capacity> {
        const OP: &str = "query capacity of export root";
        let dir = Arc::clone(dir);
        let st = self.blocking(OP, move || fstatvfs(&*dir)).await?;
        let st = st.map_err(|errno| PosixError::Root {
            op: OP,
            path: self.root.clone(),
            errno,
        })?;
        #[allow(clippy::useless_conversion)] // the statvfs field types differ between platforms
        let unit = u64::from(if st.fragment_size() > 0 {
            st.fragment_size()
        } else {
            st.block_size()
        });
        #[allow(clippy::useless_conversion)]
        let bytes = |blocks| u64::from(blocks).saturating_mul(unit);
        Ok(Capacity {
            total_bytes: bytes(st.blocks()),
            free_bytes: bytes(st.blocks_free()),
            available_bytes: bytes(st.blocks_available()),
        })
    }

    async fn open_file(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> StorageResult<OpenedFile<Self::File>> {
        self.at_dir(dir, name, at, open_for_reading).await
    }

    async fn read(
        &self,
        file: &Self::File,
        offset: u64,
        len: usize,
        at: At<'_>,
    ) -> StorageResult<Option<Vec<u8>>> {
        self.at_dir(file, b"", at, move |fd, _| read_at(fd, offset, len).map(Some))
            .await
    }

    async fn create_file(&self, dir: &Self::Dir, name: &[u8], at: At<'_>) -> StorageResult<Made<Self::File>> {
        self.at_dir(dir, name, at, |dir, name| {
            let flags =
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            match openat(dir, name, flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => Ok(Made::New(Arc::new(fd))),
                Err(Errno::EEXIST) => Ok(Made::Exists),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Durability comes from [`Transport::sync`] of the whole tree.
    async fn write(
        &self,
        file: &Self::File,
        offset: u64,
        data: &[u8],
        _durable: bool,
        at: At<'_>,
    ) -> StorageResult<()> {
        let data = data.to_vec();
        self.at_dir(file, b"", at, move |fd, _| write_at(fd, offset, &data))
            .await
    }

    async fn commit(&self, _file: &Self::File, _at: At<'_>) -> StorageResult<()> {
        Ok(())
    }

    async fn sync(&self, dir: &Self::Dir, at: At<'_>) -> StorageResult<()> {
        self.at_dir(dir, b"", at, |fd, _| syncfs(fd)).await
    }

    async fn read_link(&self, dir: &Self::Dir, name: &[u8], at: At<'_>) -> StorageResult<Option<Vec<u8>>> {
        use std::os::unix::ffi::OsStringExt;
        self.at_dir(dir, name, at, |dir, name| match readlinkat(dir, name) {
            Ok(target) => Ok(Some(target.into_vec())),
            Err(Errno::ENOENT | Errno::EINVAL) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn symlink(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        target: &[u8],
        at: At<'_>,
    ) -> StorageResult<Made<()>> {
        let target = target.to_vec();
        self.at_dir(dir, name, at, move |dir, name| {
            match symlinkat(target.as_slice(), dir, name) {
                Ok(()) => Ok(Made::New(())),
                Err(Errno::EEXIST) => Ok(Made::Exists),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn set_attrs(
        &self,
        target: Target<'_, Self::Dir, Self::File>,
        attrs: &Attrs,
        at: At<'_>,
    ) -> StorageResult<Owner> {
        let attrs = *attrs;
        match target {
            Target::Dir(fd) | Target::File(fd) => {
                self.at_dir(fd, b"", at, move |fd, _| set_fd_attrs(fd, &attrs))
                    .await
            }
            Target::Link(dir, name) => {
                self.at_dir(dir, name, at, move |dir, name| set_link_attrs(dir, name, &attrs))
                    .await
            }
        }
    }

    /// In one call on one thread: open both, `copy_file_range` the data segments, set the
    /// attributes.
    async fn copy_file(
        &self,
        from_dir: &Self::Dir,
        from: &[u8],
        to_dir: &Self::Dir,
        to: &[u8],
        attrs: &Attrs,
        at: At<'_>,
    ) -> StorageResult<Option<FileCopied>> {
        let (to_dir, to, attrs) = (Arc::clone(to_dir), to.to_vec(), *attrs);
        self.at_dir(from_dir, from, at, move |from_dir, from| {
            copy_local(from_dir, from, &to_dir, &to, &attrs).map(Some)
        })
        .await
    }

    /// A mounted export's reads and writes have no size of their own: this many bytes keep the
    /// calls few and the buffers small.
    fn io_size(&self) -> usize {
        POSIX_IO_SIZE
    }

    fn max_open_dirs(&self) -> Option<usize> {
        Some(MAX_OPEN_DIRS)
    }

    fn concurrent(&self) -> bool {
        matches!(self.calls, Calls::Spread(_))
    }

    /// `renameat2(RENAME_NOREPLACE)` and its fallback claim nothing.
    fn placing_may_leave_a_claim(&self) -> bool {
        false
    }

    fn prepare_parallel(&self, _in_flight: usize) {}
}

const ABANDONED: &str = "abandoned by its caller (deadline passed)";

/// Entries a delete removes on one thread before spreading the rest over parallel threads: a
/// thread hop per primitive costs more than a small volume's whole removal.
pub const SERIAL_DELETE_ENTRIES: u64 = 256;

/// The mounted export's volume operations: the protocol over [`PosixTransport`], each operation
/// on one blocking thread (at most `threads` at once, deletes' primitives counted among them).
pub struct MountedExport {
    root: PathBuf,
    threads: Arc<Semaphore>,
    /// For deletes, whose walk spreads its primitives over threads.
    spread: Volumes<PosixTransport>,
}

/// Tells an operation's thread that nobody waits for it any more.
struct StopWhenDropped(Arc<AtomicBool>);

impl Drop for StopWhenDropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl MountedExport {
    /// The export mounted at `root`; at most `threads` system calls at once (at least
    /// [`MAX_BLOCKED`]).
    pub fn new(root: PathBuf, threads: usize) -> Self {
        let threads = Arc::new(Semaphore::new(threads.max(MAX_BLOCKED)));
        MountedExport {
            spread: Volumes::new(PosixTransport::spread(root.clone(), Arc::clone(&threads))),
            root,
            threads,
        }
    }

    /// Runs `operation` over a transport of its own on one blocking thread, under a permit held
    /// until the thread is done, however long after a deadline that is.
    fn on_a_thread<R, F, Fut>(&self, op: &'static str, operation: F) -> OpFuture<'static, R>
    where
        R: Send + 'static,
        F: FnOnce(Volumes<PosixTransport>) -> Fut + Send + 'static,
        Fut: Future<Output = StorageResult<R>>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let volumes = Volumes::new(PosixTransport::here(self.root.clone(), Arc::clone(&stop)));
        let threads = Arc::clone(&self.threads);
        Box::pin(async move {
            let _stop = StopWhenDropped(stop);
            let worker = |reason: String| StorageFailure::Worker { op, reason };
            let permit = threads.acquire_owned().await.map_err(|e| worker(e.to_string()))?;
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                // Its primitives never wait for anything but their system calls.
                runtime.block_on(operation(volumes))
            })
            .await
            .map_err(|e| worker(e.to_string()))?
        })
    }
}

impl Backend for MountedExport {
    /// A clone's copy spreads its primitives over threads, in parallel, as a large delete does.
    fn create_volume<'a>(
        &'a self,
        pv: &'a str,
        path: &'a [String],
        dir: DirMode,
        existing: Existing,
        fill: Option<&'a Fill<'a>>,
    ) -> OpFuture<'a, Created> {
        if fill.is_some() {
            return Box::pin(self.spread.create(pv, path, dir, existing, fill));
        }
        let (pv, path) = (pv.to_owned(), path.to_vec());
        self.on_a_thread("create directory", move |v| async move {
            v.create(&pv, &path, dir, existing, None).await
        })
    }

    fn finish_volume<'a>(&'a self, pv: &'a str) -> OpFuture<'a, ()> {
        let pv = pv.to_owned();
        self.on_a_thread("finish volume", move |v| async move { v.finish(&pv).await })
    }

    fn staged_volumes(&self) -> OpFuture<'_, Vec<String>> {
        self.on_a_thread("list staging area", |v| async move { v.staged().await })
    }

    fn staged_target<'a>(&'a self, pv: &'a str) -> OpFuture<'a, Option<Vec<String>>> {
        let pv = pv.to_owned();
        self.on_a_thread("read staging record", move |v| async move {
            v.staged_target(&pv).await
        })
    }

    fn archive_volume<'a>(&'a self, path: &'a [String]) -> OpFuture<'a, Archived> {
        let path = path.to_vec();
        self.on_a_thread(
            "archive directory",
            move |v| async move { v.archive(&path).await },
        )
    }

    /// Most released volumes are small: removed on one thread like every other operation. One
    /// holding more than [`SERIAL_DELETE_ENTRIES`] entries is finished by the parallel walk.
    fn delete_volume<'a>(&'a self, path: &'a [String], concurrency: usize) -> OpFuture<'a, Removed> {
        let owned = path.to_vec();
        let first = self.on_a_thread("delete directory", move |v| async move {
            v.delete_some(&owned, 1, Some(SERIAL_DELETE_ENTRIES)).await
        });
        Box::pin(async move {
            let first = first.await?;
            if !first.unfinished {
                return Ok(Removed::of(first.entries));
            }
            let rest = self.spread.delete_some(path, concurrency, None).await?;
            Ok(Removed::of(first.entries + rest.entries))
        })
    }

    fn copy_volume_into<'a>(
        &'a self,
        path: &'a [String],
        sink: Arc<dyn Sink>,
        dest: SinkDir,
        concurrency: usize,
        progress: Arc<Progress>,
    ) -> OpFuture<'a, ()> {
        Box::pin(self.spread.copy_into(path, sink, dest, concurrency, progress))
    }

    /// On one thread, one entry at a time: the walk is paced (USAGE_OPS_PER_SECOND), so it spends
    /// its time waiting for the pace, not for system calls, and parallel primitives would only add
    /// a thread hop to each (measuring an empty volume: 200 µs of CPU spread, 1 hop here; BENCHMARKS.md).
    /// It holds one of the export's threads for the walk, as a create or a delete does.
    fn measure_volume<'a>(
        &'a self,
        path: &'a [String],
        concurrency: usize,
        pace: Pace,
    ) -> OpFuture<'a, Option<Usage>> {
        let path = path.to_vec();
        self.on_a_thread("measure directory", move |v| async move {
            v.measure(&path, concurrency, pace).await
        })
    }

    fn list_dir<'a>(&'a self, path: &'a [String], limit: usize) -> OpFuture<'a, Option<Listing>> {
        let path = path.to_vec();
        self.on_a_thread(
            "list directory",
            move |v| async move { v.list(&path, limit).await },
        )
    }

    fn capacity(&self) -> OpFuture<'_, Capacity> {
        self.on_a_thread(
            "query capacity of export root",
            |v| async move { v.capacity().await },
        )
    }

    fn probe_writable<'a>(&'a self, tag: &'a str) -> OpFuture<'a, ()> {
        let tag = tag.to_owned();
        self.on_a_thread(
            "write probe directory in",
            move |v| async move { v.probe(&tag).await },
        )
    }

    fn clear_probes(&self) -> OpFuture<'_, u64> {
        self.on_a_thread("remove leftover probe directory in", |v| async move {
            v.clear_probes().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::staging::STAGING_DIR;
    use crate::storage::transport::at;

    #[tokio::test]
    async fn a_primitive_called_here_after_its_caller_gave_up_fails_and_does_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t = PosixTransport::here(tmp.path().to_path_buf(), Arc::clone(&stop));
        assert!(!t.concurrent());
        let root = t.root().await.unwrap();
        stop.store(true, Ordering::Release);
        let Err(err) = t
            .mkdir(&root, b"late", 0o700, at("create directory", "late"))
            .await
        else {
            panic!("a primitive ran after its caller gave up");
        };
        assert!(
            matches!(&err, StorageFailure::Worker { reason, .. } if reason == ABANDONED),
            "{err:?}"
        );
        assert!(!tmp.path().join("late").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_an_operation_stops_it_at_its_next_primitive() {
        let tmp = tempfile::tempdir().unwrap();
        let export = MountedExport::new(tmp.path().to_path_buf(), 1);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let operation = export.on_a_thread("probe", move |v| async move {
            started_tx.send(()).unwrap();
            // Blocks this operation's thread until its caller has gone.
            go_rx.recv().unwrap();
            done_tx.send(v.probe("late").await).unwrap();
            Ok(())
        });
        let caller = tokio::spawn(operation);
        started_rx.await.unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        go_tx.send(()).unwrap();
        let err = done_rx.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, StorageFailure::Worker { reason, .. } if reason == ABANDONED),
            "{err:?}"
        );
        assert!(!tmp.path().join(STAGING_DIR).exists());
    }

    /// A mounted export copies a file in the kernel, in one call: its data, its holes (a sparse
    /// file stays sparse), its length past a trailing hole, the attributes asked for; a target
    /// already there is left for the caller to judge.
    #[tokio::test]
    async fn a_file_is_copied_in_one_call_holes_and_all() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(tmp.path().join("sparse")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(64 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(128 << 20).unwrap();
        drop(f);
        let t = PosixTransport::new(tmp.path().into(), 16);
        let root = t.root().await.unwrap();
        let attrs = Attrs {
            mode: Some(0o640),
            times: Some((
                Time::default(),
                Time {
                    seconds: 1_000_000_000,
                    nanos: 5,
                },
            )),
            ..Attrs::default()
        };
        let copied = t
            .copy_file(&root, b"sparse", &root, b"copy", &attrs, at("copy", "copy"))
            .await
            .unwrap();
        let Some(FileCopied::Done { bytes, owner }) = copied else {
            panic!("{copied:?}");
        };
        assert_eq!(owner, Owner::Kept);
        let (src, dst) = (tmp.path().join("sparse"), tmp.path().join("copy"));
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let md = std::fs::metadata(&dst).unwrap();
        assert_eq!(md.len(), 128 << 20);
        assert!(
            md.blocks() * 512 < 1 << 20,
            "holes were filled: {} bytes allocated",
            md.blocks() * 512
        );
        assert!(bytes < 1 << 20, "{bytes} bytes of data copied");
        assert_eq!(
            (md.mode() & 0o7777, md.mtime(), md.mtime_nsec()),
            (0o640, 1_000_000_000, 5)
        );
        assert_eq!(
            t.copy_file(&root, b"sparse", &root, b"copy", &attrs, at("copy", "copy"))
                .await
                .unwrap(),
            Some(FileCopied::TargetExists)
        );
        assert_eq!(
            t.copy_file(&root, b"gone", &root, b"other", &attrs, at("copy", "other"))
                .await
                .unwrap(),
            Some(FileCopied::SourceGone)
        );
    }

    #[tokio::test]
    async fn operations_run_whole_on_a_thread_and_large_deletes_finish_in_parallel() {
        let tmp = tempfile::tempdir().unwrap();
        let export = MountedExport::new(tmp.path().to_path_buf(), 16);
        let mode = DirMode {
            mode: 0o750,
            uid: None,
            gid: None,
        };
        // 101 entries are removed on the thread alone; 601 exceed its budget.
        for dirs in [50, 300] {
            let name = format!("ns-claim-{dirs}");
            let path = vec![name.clone()];
            let pv = format!("pv-{dirs}");
            assert_eq!(
                export
                    .create_volume(&pv, &path, mode, Existing::Refuse, None)
                    .await
                    .unwrap(),
                Created::New
            );
            export.finish_volume(&pv).await.unwrap();
            assert!(export.staged_volumes().await.unwrap().is_empty());
            let vol = tmp.path().join(&name);
            for i in 0..dirs {
                std::fs::create_dir(vol.join(format!("d{i}"))).unwrap();
                std::fs::write(vol.join(format!("d{i}/f")), b"x").unwrap();
            }
            assert_eq!(
                export.delete_volume(&path, 8).await.unwrap(),
                Removed::Removed {
                    entries: 2 * dirs + 1
                }
            );
            assert!(!vol.exists());
            assert_eq!(export.delete_volume(&path, 8).await.unwrap(), Removed::Missing);
        }
    }
}
