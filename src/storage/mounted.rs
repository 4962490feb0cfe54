//! Filesystem backend for an NFS export mounted at a local path (the classic nfs-subdir deployment).
//!
//! Owns everything the provisioner does to the export's directory tree: exclusive, crash-safe creation of
//! one directory per volume (with mode and owner), archiving it under a never-overwriting
//! `archived-<leaf>[-n]` name in the same parent, deleting it (parallel tree removal in
//! [`crate::storage::tree`]), and reporting the export's capacity. All calls are synchronous and blocking.
//!
//! Symlink safety: every walk starts from a directory fd of the export root and proceeds one component at a
//! time with `openat(O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)`; every change is an `*at` call relative to the
//! fd of the directory it changes. No path string is ever joined and handed to the kernel, so a symlink
//! anywhere (a parent component, the volume itself, or a directory swapped for a symlink mid-operation)
//! cannot redirect an operation outside the export. Paths are re-validated here even though callers
//! validate them.
//!
//! Crash safety of creation (adoption is only ever of provably our own directory): a staging area
//! `STAGING_DIR` at the export root (mode 0700) holds one record per volume being created:
//!
//! ```text
//! STAGING_DIR/<pv>/target   the volume's path, components joined by '/', one line
//! STAGING_DIR/<pv>/inode    inode number of `vol` (extra proof checked on adoption)
//! STAGING_DIR/<pv>/vol/     the volume directory itself, until it is placed
//! ```
//!
//! A record is built as `<pv>.tmp` and published with one rename; `vol` gets its owner and mode in the
//! staging area and is then renamed (`RENAME_NOREPLACE`) to its final path. A record without `vol` means
//! the volume was placed, so the directory at the target path (if it is a real directory with the recorded
//! inode) is adopted. `finish_volume` drops the record once the PersistentVolume object exists. Calls for
//! the same `pv_name` must not run concurrently (the controller serialises work per volume).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::sys::statvfs::fstatvfs;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use crate::core::naming::{self, NAME_MAX, STAGING_DIR, archive_name};
use crate::storage::tree::{TreeError, TreeRemover, remove_tree};

/// How many archive names (`archived-x`, `archived-x-2`, ...) are tried before giving up.
pub const MAX_ARCHIVE_ATTEMPTS: u32 = 10_000;

const TMP_SUFFIX: &str = ".tmp";
const TARGET_FILE: &str = "target";
const INODE_FILE: &str = "inode";
const VOL_DIR: &str = "vol";
const RECORD_FILE_MAX: u64 = 64 * 1024;

/// Ownership and mode of a volume directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirAttrs {
    /// Permission bits including setuid/setgid/sticky, e.g. `0o777` or `0o2770`; applied exactly.
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// This claim's own earlier, interrupted attempt had already placed the directory.
    Adopted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Leaf name of the archive, in the same parent directory.
    To(String),
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Removed { entries: u64 },
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
}

/// Paths in messages are relative to the export root.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {}: {errno}", path.display())]
    Root {
        op: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("{op} {path:?}: invalid path: {reason}")]
    InvalidPath {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "create directory {path}: invalid mode {mode:#o} (only permission, setuid, setgid and sticky bits \
         are allowed)"
    )]
    InvalidMode { path: String, mode: u32 },
    #[error("create directory {path}: a directory not made for this volume already exists")]
    Exists { path: String },
    #[error("{op} {path}: a symlink or non-directory is in the way; refusing to follow or touch it")]
    Symlink { op: &'static str, path: String },
    #[error(
        "create directory {requested} for volume {pv}: an earlier attempt of this volume staged it for \
         {recorded}"
    )]
    StagedElsewhere {
        pv: String,
        requested: String,
        recorded: String,
    },
    #[error("{op} {path}: bad staging record: {reason}")]
    BadStagingRecord {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("archive directory {path}: all {attempts} archive names are taken")]
    ArchiveNamesExhausted { path: String, attempts: u32 },
    #[error("delete directory {path}: {tree}")]
    Delete { path: String, tree: TreeError },
    #[error("{op} {path}: {errno}")]
    Io {
        op: &'static str,
        path: String,
        errno: Errno,
    },
}

impl StorageError {
    /// The OS error behind the failure; `None` for refusals decided here (invalid path, exists, symlink,
    /// staged elsewhere, bad record, archive names exhausted).
    pub fn errno(&self) -> Option<Errno> {
        match self {
            StorageError::Root { errno, .. } | StorageError::Io { errno, .. } => Some(*errno),
            StorageError::Delete { tree, .. } => Some(tree.errno()),
            _ => None,
        }
    }
}

fn io(op: &'static str, path: impl Into<String>, errno: Errno) -> StorageError {
    StorageError::Io {
        op,
        path: path.into(),
        errno,
    }
}

/// `ELOOP`/`ENOTDIR` from an `O_NOFOLLOW | O_DIRECTORY` open mean a symlink or non-directory.
fn open_error(op: &'static str, path: impl Into<String>, errno: Errno) -> StorageError {
    match errno {
        Errno::ELOOP | Errno::ENOTDIR => StorageError::Symlink {
            op,
            path: path.into(),
        },
        _ => io(op, path, errno),
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn open_dir(dir: BorrowedFd<'_>, name: &str) -> nix::Result<OwnedFd> {
    openat(dir, name, dir_flags(), Mode::empty())
}

fn stat_nofollow(dir: BorrowedFd<'_>, name: &str) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

fn join(components: &[String]) -> String {
    components.join("/")
}

fn staging_path(name: &str) -> String {
    format!("{STAGING_DIR}/{name}")
}

/// The same rules the path was built with (core::naming), checked again at the filesystem.
fn check_component(c: &str) -> Result<(), String> {
    naming::check_single_component(c).map_err(|e| e.to_string())
}

fn check_path(op: &'static str, path: &[String]) -> Result<(), StorageError> {
    let invalid = |reason| StorageError::InvalidPath {
        op,
        path: join(path),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("empty path (the export root itself)".into()));
    }
    path.iter().try_for_each(|c| check_component(c)).map_err(invalid)
}

/// A PV name is used as a file name in the staging area, with `.tmp` appended for the unpublished record.
fn check_pv(op: &'static str, pv_name: &str) -> Result<(), StorageError> {
    let invalid = |reason| StorageError::InvalidPath {
        op,
        path: staging_path(pv_name),
        reason,
    };
    check_component(pv_name).map_err(invalid)?;
    if pv_name.ends_with(TMP_SUFFIX) {
        return Err(invalid("volume name ends with .tmp".into()));
    }
    if pv_name.len() + TMP_SUFFIX.len() > NAME_MAX {
        return Err(invalid("volume name too long for a staging record".into()));
    }
    Ok(())
}

/// Renames without ever replacing an existing `to`. `Ok(false)`: `to` exists.
fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> nix::Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::fcntl::{RenameFlags, renameat2};
        match renameat2(from_dir, from, to_dir, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(true),
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => return Ok(false),
            // The filesystem (e.g. the Linux NFS client) or the kernel does not support RENAME_NOREPLACE.
            Err(Errno::EINVAL | Errno::ENOSYS) => {}
            Err(e) => return Err(e),
        }
    }
    rename_check_then_rename(from_dir, from, to_dir, to)
}

/// Fallback for `rename_noreplace`: check, then plain rename. Small race: if another client creates an
/// *empty* directory at `to` between the check and the rename, rename(2) silently replaces it (a non-empty
/// directory fails with ENOTEMPTY, a file with ENOTDIR/EISDIR, so data is never lost). The NFS protocol
/// (v3 and v4.x) has no no-replace rename, so this is the best available on such mounts.
fn rename_check_then_rename(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> nix::Result<bool> {
    if stat_nofollow(to_dir, to)?.is_some() {
        return Ok(false);
    }
    match renameat(from_dir, from, to_dir, to) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_small_file(dir: BorrowedFd<'_>, name: &str) -> nix::Result<Vec<u8>> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut buf = Vec::new();
    File::from(fd)
        .take(RECORD_FILE_MAX)
        .read_to_end(&mut buf)
        .map_err(io_errno)?;
    Ok(buf)
}

fn write_new_file(dir: BorrowedFd<'_>, name: &str, content: &str) -> nix::Result<()> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o600))?;
    let mut file = File::from(fd);
    file.write_all(content.as_bytes()).map_err(io_errno)?;
    file.sync_all().map_err(io_errno)
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// A published staging record.
struct Record {
    fd: OwnedFd,
    target: Vec<String>,
    inode: Option<u64>,
    /// `vol` is gone: the volume was placed at `target`.
    placed: bool,
}

/// The export, mounted at `root`.
#[derive(Debug, Clone)]
pub struct MountedExport {
    root: PathBuf,
}

impl MountedExport {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory for `pv_name` at `path` exclusively, with exactly `attrs`. An existing
    /// directory there is adopted only if it is this volume's own earlier attempt (see the module docs);
    /// otherwise `Exists`.
    pub fn create_volume(
        &self,
        pv_name: &str,
        path: &[String],
        attrs: &DirAttrs,
    ) -> Result<Created, StorageError> {
        const OP: &str = "create directory";
        check_pv(OP, pv_name)?;
        check_path(OP, path)?;
        let vol_path = join(path);
        if attrs.mode & !0o7777 != 0 {
            return Err(StorageError::InvalidMode {
                path: vol_path,
                mode: attrs.mode,
            });
        }
        let root = self.open_root("open export root")?;
        let staging = self
            .staging(root.as_fd(), true)?
            .ok_or_else(|| io(OP, STAGING_DIR, Errno::ENOENT))?;
        let record = read_record(staging.as_fd(), pv_name)?;
        if let Some(r) = &record
            && r.target != path
        {
            return Err(StorageError::StagedElsewhere {
                pv: pv_name.to_owned(),
                requested: vol_path,
                recorded: join(&r.target),
            });
        }
        let (leaf, parents) = path.split_last().ok_or_else(|| io(OP, "", Errno::EINVAL))?;
        let parent = walk(root, parents, true, OP)?.ok_or_else(|| io(OP, join(parents), Errno::ENOENT))?;
        let existing = stat_nofollow(parent.as_fd(), leaf).map_err(|e| io("stat", &vol_path, e))?;
        let record = match (record, existing) {
            (Some(r), Some(st)) if r.placed => {
                return if !is_dir(&st) {
                    Err(StorageError::Symlink {
                        op: OP,
                        path: vol_path,
                    })
                } else if r.inode.is_none_or(|ino| ino == st.st_ino) {
                    Ok(Created::Adopted)
                } else {
                    Err(StorageError::Exists { path: vol_path })
                };
            }
            (Some(r), None) if r.placed => {
                // Placed earlier, removed by someone since: start over.
                drop(r);
                drop_record(staging.as_fd(), pv_name)?;
                None
            }
            (_, Some(st)) if !is_dir(&st) => {
                return Err(StorageError::Symlink {
                    op: OP,
                    path: vol_path,
                });
            }
            (_, Some(_)) => return Err(StorageError::Exists { path: vol_path }),
            (record, None) => record,
        };
        let record = match record {
            Some(r) => r,
            None => build_record(staging.as_fd(), pv_name, path)?,
        };

        let vol = open_dir(record.fd.as_fd(), VOL_DIR)
            .map_err(|e| open_error(OP, staging_path(&format!("{pv_name}/{VOL_DIR}")), e))?;
        let parent_st = fstat(&parent).map_err(|e| io("stat", join(parents), e))?;
        apply_attrs(vol.as_fd(), attrs, &parent_st, &vol_path)?;
        drop(vol);

        match rename_noreplace(record.fd.as_fd(), VOL_DIR, parent.as_fd(), leaf) {
            Ok(true) => Ok(Created::New),
            Ok(false) => Err(StorageError::Exists { path: vol_path }),
            Err(e) => Err(io(OP, vol_path, e)),
        }
    }

    /// Drops the staging record of `pv_name` (call once the PersistentVolume object exists). Idempotent.
    pub fn finish_volume(&self, pv_name: &str) -> Result<(), StorageError> {
        check_pv("finish volume", pv_name)?;
        let root = self.open_root("open export root")?;
        match self.staging(root.as_fd(), false)? {
            Some(staging) => drop_record(staging.as_fd(), pv_name),
            None => Ok(()),
        }
    }

    /// Names of the volumes with something in the staging area: a record (creation started,
    /// `finish_volume` not yet done) or a `.tmp` leftover of an interrupted create or finish.
    pub fn staged_volumes(&self) -> Result<Vec<String>, StorageError> {
        const OP: &str = "list staging area";
        let root = self.open_root("open export root")?;
        let Some(staging) = self.staging(root.as_fd(), false)? else {
            return Ok(Vec::new());
        };
        let dup = staging
            .try_clone()
            .map_err(|e| io(OP, STAGING_DIR, io_errno(e)))?;
        let mut dir = Dir::from_fd(dup).map_err(|e| io(OP, STAGING_DIR, e))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io(OP, STAGING_DIR, e))?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            // A "<pv>.tmp" left by a crash is reported as its pv: finish_volume clears both.
            let pv = name.strip_suffix(TMP_SUFFIX).unwrap_or(name);
            if check_pv(OP, pv).is_err() {
                continue; // ".", ".." and anything else that is not ours
            }
            let is_dir_entry = match entry.file_type() {
                Some(t) => t == Type::Directory,
                None => stat_nofollow(staging.as_fd(), name)
                    .map_err(|e| io(OP, staging_path(name), e))?
                    .is_some_and(|st| is_dir(&st)),
            };
            if is_dir_entry {
                names.push(pv.to_owned());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Proves the export takes writes: creates and removes an empty directory in the staging area.
    /// `tag` keeps concurrent probes apart; the leading '.' keeps a probe left by a crash out of
    /// [`Self::staged_volumes`] (it is no volume name).
    pub fn probe_writable(&self, tag: &str) -> Result<(), StorageError> {
        const OP: &str = "write probe directory in";
        let name = format!(".probe-{tag}");
        let root = self.open_root("open export root")?;
        let staging = self
            .staging(root.as_fd(), true)?
            .ok_or_else(|| io(OP, STAGING_DIR, Errno::ENOENT))?;
        match mkdirat(staging.as_fd(), name.as_str(), Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(OP, STAGING_DIR, e)),
        }
        unlinkat(staging.as_fd(), name.as_str(), UnlinkatFlags::RemoveDir)
            .map_err(|e| io("remove probe directory in", STAGING_DIR, e))
    }

    /// The path recorded for `pv_name`'s creation, if it has a staging record.
    pub fn staged_target(&self, pv_name: &str) -> Result<Option<Vec<String>>, StorageError> {
        check_pv("read staging record", pv_name)?;
        let root = self.open_root("open export root")?;
        let Some(staging) = self.staging(root.as_fd(), false)? else {
            return Ok(None);
        };
        Ok(read_record(staging.as_fd(), pv_name)?.map(|r| r.target))
    }

    /// Renames the volume directory to `archived-<leaf>` (or `archived-<leaf>-<n>` if taken) in the same
    /// parent; an existing archive is never overwritten. A missing volume (e.g. a retry after a successful
    /// rename) is `Missing`.
    pub fn archive_volume(&self, path: &[String]) -> Result<Archived, StorageError> {
        const OP: &str = "archive directory";
        check_path(OP, path)?;
        let vol_path = join(path);
        let (leaf, parents) = path.split_last().ok_or_else(|| io(OP, "", Errno::EINVAL))?;
        let root = self.open_root("open export root")?;
        let Some(parent) = walk(root, parents, false, OP)? else {
            return Ok(Archived::Missing);
        };
        match stat_nofollow(parent.as_fd(), leaf).map_err(|e| io("stat", &vol_path, e))? {
            None => return Ok(Archived::Missing),
            Some(st) if !is_dir(&st) => {
                return Err(StorageError::Symlink {
                    op: OP,
                    path: vol_path,
                });
            }
            Some(_) => {}
        }
        for attempt in 0..MAX_ARCHIVE_ATTEMPTS {
            let name = archive_name(leaf, attempt);
            if let Err(reason) = check_component(&name) {
                let mut to = parents.to_vec();
                to.push(name);
                return Err(StorageError::InvalidPath {
                    op: OP,
                    path: join(&to),
                    reason,
                });
            }
            match rename_noreplace(parent.as_fd(), leaf, parent.as_fd(), &name) {
                Ok(true) => return Ok(Archived::To(name)),
                Ok(false) => {}
                Err(Errno::ENOENT) => return Ok(Archived::Missing),
                Err(e) => return Err(io(OP, vol_path, e)),
            }
        }
        Err(StorageError::ArchiveNamesExhausted {
            path: vol_path,
            attempts: MAX_ARCHIVE_ATTEMPTS,
        })
    }

    /// Removes the volume directory and everything in it with up to `concurrency` operations in flight. A
    /// volume path that is a symlink (or another non-directory) is unlinked itself, never followed.
    pub fn delete_volume(&self, path: &[String], concurrency: usize) -> Result<Removed, StorageError> {
        self.delete_with(path, &TreeRemover::new(concurrency))
    }

    fn delete_with(&self, path: &[String], remover: &TreeRemover) -> Result<Removed, StorageError> {
        const OP: &str = "delete directory";
        check_path(OP, path)?;
        let vol_path = join(path);
        let (leaf, parents) = path.split_last().ok_or_else(|| io(OP, "", Errno::EINVAL))?;
        let root = self.open_root("open export root")?;
        let Some(parent) = walk(root, parents, false, OP)? else {
            return Ok(Removed::Missing);
        };
        match stat_nofollow(parent.as_fd(), leaf).map_err(|e| io("stat", &vol_path, e))? {
            None => Ok(Removed::Missing),
            Some(st) if !is_dir(&st) => match unlinkat(&parent, leaf.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => Ok(Removed::Removed { entries: 1 }),
                Err(Errno::ENOENT) => Ok(Removed::Missing),
                Err(e) => Err(io("unlink", vol_path, e)),
            },
            Some(_) => match remover.remove(&parent, leaf) {
                Ok(stats) if stats.removed == 0 => Ok(Removed::Missing),
                Ok(stats) => Ok(Removed::Removed {
                    entries: stats.removed,
                }),
                Err(tree) => Err(StorageError::Delete {
                    path: vol_path,
                    tree: tree.with_prefix(&join(parents)),
                }),
            },
        }
    }

    /// Size of the filesystem holding the export root (statvfs).
    pub fn capacity(&self) -> Result<Capacity, StorageError> {
        const OP: &str = "query capacity of export root";
        let root = self.open_root(OP)?;
        let st = fstatvfs(&root).map_err(|errno| StorageError::Root {
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

    fn open_root(&self, op: &'static str) -> Result<OwnedFd, StorageError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        nix::fcntl::open(&self.root, flags, Mode::empty()).map_err(|errno| StorageError::Root {
            op,
            path: self.root.clone(),
            errno,
        })
    }

    /// Opens (creating it with mode 0700 when `create`) the staging area; it must be a real directory.
    fn staging(&self, root: BorrowedFd<'_>, create: bool) -> Result<Option<OwnedFd>, StorageError> {
        const OP: &str = "open staging area";
        match open_dir(root, STAGING_DIR) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::ENOENT) if create => {}
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(open_error(OP, STAGING_DIR, e)),
        }
        match mkdirat(root, STAGING_DIR, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io("create staging area", STAGING_DIR, e)),
        }
        open_dir(root, STAGING_DIR)
            .map(Some)
            .map_err(|e| open_error(OP, STAGING_DIR, e))
    }
}

/// Walks `components` below `dir` (consumed) with `O_NOFOLLOW` opens. Missing components are created with
/// mode 0755 when `create`, otherwise the result is `None`.
fn walk(
    dir: OwnedFd,
    components: &[String],
    create: bool,
    op: &'static str,
) -> Result<Option<OwnedFd>, StorageError> {
    let mut cur = dir;
    for (i, c) in components.iter().enumerate() {
        let here = || join(&components[..=i]);
        cur = match open_dir(cur.as_fd(), c) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match mkdirat(cur.as_fd(), c.as_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(open_error("create directory", here(), e)),
                }
                open_dir(cur.as_fd(), c).map_err(|e| open_error(op, here(), e))?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(open_error(op, here(), e)),
        };
    }
    Ok(Some(cur))
}

fn read_record(staging: BorrowedFd<'_>, pv_name: &str) -> Result<Option<Record>, StorageError> {
    const OP: &str = "read staging record";
    let path = staging_path(pv_name);
    let fd = match open_dir(staging, pv_name) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(open_error(OP, path, e)),
    };
    let bad = |reason: &str| StorageError::BadStagingRecord {
        op: OP,
        path: path.clone(),
        reason: reason.to_owned(),
    };
    let target = match read_small_file(fd.as_fd(), TARGET_FILE) {
        Ok(bytes) => bytes,
        Err(Errno::ENOENT) => return Err(bad("no target file")),
        Err(e) => return Err(io(OP, format!("{path}/{TARGET_FILE}"), e)),
    };
    let target = String::from_utf8(target).map_err(|_| bad("target is not UTF-8"))?;
    let target = target.strip_suffix('\n').unwrap_or(&target);
    let target: Vec<String> = target.split('/').map(str::to_owned).collect();
    if target.iter().any(|c| check_component(c).is_err()) {
        return Err(bad("target is not a valid volume path"));
    }
    let inode = match read_small_file(fd.as_fd(), INODE_FILE) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| bad("inode is not UTF-8"))?;
            Some(
                text.trim_end()
                    .parse::<u64>()
                    .map_err(|_| bad("inode is not a number"))?,
            )
        }
        Err(Errno::ENOENT) => None,
        Err(e) => return Err(io(OP, format!("{path}/{INODE_FILE}"), e)),
    };
    let placed = match stat_nofollow(fd.as_fd(), VOL_DIR) {
        Ok(None) => true,
        Ok(Some(st)) if is_dir(&st) => false,
        Ok(Some(_)) => {
            return Err(StorageError::Symlink {
                op: OP,
                path: format!("{path}/{VOL_DIR}"),
            });
        }
        Err(e) => return Err(io(OP, format!("{path}/{VOL_DIR}"), e)),
    };
    Ok(Some(Record {
        fd,
        target,
        inode,
        placed,
    }))
}

/// Builds `<pv>.tmp` (target, vol, inode) and publishes it as `<pv>` with one rename.
fn build_record(staging: BorrowedFd<'_>, pv_name: &str, path: &[String]) -> Result<Record, StorageError> {
    const OP: &str = "create staging record";
    let tmp = format!("{pv_name}{TMP_SUFFIX}");
    let tmp_path = staging_path(&tmp);
    remove_leftover(staging, &tmp)?;
    mkdirat(staging, tmp.as_str(), Mode::from_bits_truncate(0o700)).map_err(|e| io(OP, &tmp_path, e))?;
    let fd = open_dir(staging, &tmp).map_err(|e| open_error(OP, &tmp_path, e))?;
    write_new_file(fd.as_fd(), TARGET_FILE, &format!("{}\n", join(path)))
        .map_err(|e| io(OP, format!("{tmp_path}/{TARGET_FILE}"), e))?;
    mkdirat(&fd, VOL_DIR, Mode::from_bits_truncate(0o700))
        .map_err(|e| io(OP, format!("{tmp_path}/{VOL_DIR}"), e))?;
    let vol = fstatat(&fd, VOL_DIR, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| io(OP, format!("{tmp_path}/{VOL_DIR}"), e))?;
    write_new_file(fd.as_fd(), INODE_FILE, &format!("{}\n", vol.st_ino))
        .map_err(|e| io(OP, format!("{tmp_path}/{INODE_FILE}"), e))?;
    match rename_noreplace(staging, &tmp, staging, pv_name) {
        // `fd` still refers to the same directory, now published as `<pv>`.
        Ok(true) => Ok(Record {
            fd,
            target: path.to_vec(),
            inode: Some(vol.st_ino),
            placed: false,
        }),
        Ok(false) => Err(StorageError::BadStagingRecord {
            op: OP,
            path: staging_path(pv_name),
            reason: "a concurrent attempt published a record for this volume".to_owned(),
        }),
        Err(e) => Err(io(OP, staging_path(pv_name), e)),
    }
}

/// Unpublishes `<pv>` (rename to `<pv>.tmp`) and removes it; also removes any leftover `<pv>.tmp`.
fn drop_record(staging: BorrowedFd<'_>, pv_name: &str) -> Result<(), StorageError> {
    let tmp = format!("{pv_name}{TMP_SUFFIX}");
    remove_leftover(staging, &tmp)?;
    match renameat(staging, pv_name, staging, tmp.as_str()) {
        Ok(()) => remove_leftover(staging, &tmp),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("remove staging record", staging_path(pv_name), e)),
    }
}

/// Removes an unpublished `<pv>.tmp` record (ours by name) recursively.
fn remove_leftover(staging: BorrowedFd<'_>, tmp: &str) -> Result<(), StorageError> {
    remove_tree(&staging, tmp, 1)
        .map(drop)
        .map_err(|tree| StorageError::Delete {
            path: staging_path(tmp),
            tree: tree.with_prefix(STAGING_DIR),
        })
}

/// chown (explicit owner; else the group of a setgid parent, as mkdir there would have given), then chmod
/// to exactly `attrs.mode` (chown clears setgid, and chmod after mkdir defeats the umask).
fn apply_attrs(
    vol: BorrowedFd<'_>,
    attrs: &DirAttrs,
    parent: &FileStat,
    vol_path: &str,
) -> Result<(), StorageError> {
    if attrs.uid.is_some() || attrs.gid.is_some() {
        fchown(vol, attrs.uid.map(Uid::from_raw), attrs.gid.map(Gid::from_raw))
            .map_err(|e| io("change owner of", vol_path, e))?;
    } else if parent.st_mode & Mode::S_ISGID.bits() != 0 {
        // Best effort: an unprivileged (squashed) provisioner may not be allowed to pick that group.
        match fchown(vol, None, Some(Gid::from_raw(parent.st_gid))) {
            Ok(()) | Err(Errno::EPERM | Errno::EINVAL) => {}
            Err(e) => return Err(io("change owner of", vol_path, e)),
        }
    }
    fchmod(vol, Mode::from_bits_truncate(attrs.mode)).map_err(|e| io("change mode of", vol_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::sync::Mutex;

    use tempfile::TempDir;

    /// Held by tests that change the process-wide umask.
    static UMASK: Mutex<()> = Mutex::new(());

    const RWX: DirAttrs = DirAttrs {
        mode: 0o777,
        uid: None,
        gid: None,
    };

    fn export() -> (TempDir, MountedExport) {
        let tmp = tempfile::tempdir().unwrap();
        let export = MountedExport::new(tmp.path().to_path_buf());
        (tmp, export)
    }

    fn p(components: &[&str]) -> Vec<String> {
        components.iter().map(|c| (*c).to_owned()).collect()
    }

    fn staging(tmp: &TempDir) -> PathBuf {
        tmp.path().join(STAGING_DIR)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// Hand-made staging record, as left behind by a crash.
    fn record(tmp: &TempDir, name: &str, target: &str, with_vol: bool) -> PathBuf {
        let dir = staging(tmp).join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(TARGET_FILE), format!("{target}\n")).unwrap();
        if with_vol {
            fs::create_dir(dir.join(VOL_DIR)).unwrap();
        }
        dir
    }

    // ---- create_volume ----

    #[test]
    fn create_makes_a_new_directory_with_the_exact_mode_and_a_staging_record_until_finished() {
        let (tmp, export) = export();
        assert_eq!(
            export.create_volume("pv-1", &p(&["ns-a-pvc-1"]), &RWX).unwrap(),
            Created::New
        );
        let vol = tmp.path().join("ns-a-pvc-1");
        assert!(fs::symlink_metadata(&vol).unwrap().is_dir());
        assert_eq!(mode_of(&vol), 0o777);
        assert_eq!(mode_of(&staging(&tmp)), 0o700);
        assert_eq!(export.staged_volumes().unwrap(), vec!["pv-1".to_owned()]);
        assert_eq!(export.staged_target("pv-1").unwrap(), Some(p(&["ns-a-pvc-1"])));
        assert!(!staging(&tmp).join("pv-1/vol").exists());
        export.finish_volume("pv-1").unwrap();
        assert!(export.staged_volumes().unwrap().is_empty());
        assert_eq!(export.staged_target("pv-1").unwrap(), None);
        assert!(vol.is_dir());
    }

    #[test]
    fn mode_is_exact_despite_umask_0077_and_a_setgid_parent_whose_group_is_inherited() {
        let _guard = UMASK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tmp, export) = export();
        let parent = tmp.path().join("grp");
        fs::create_dir(&parent).unwrap();
        std::os::unix::fs::chown(&parent, Some(0), Some(3000)).unwrap();
        fs::set_permissions(&parent, fs::Permissions::from_mode(0o2775)).unwrap();
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
        let a = export.create_volume("pv-a", &p(&["grp", "a"]), &RWX);
        let attrs = DirAttrs {
            mode: 0o2770,
            uid: None,
            gid: Some(2000),
        };
        let b = export.create_volume("pv-b", &p(&["grp", "b"]), &attrs);
        let c = export.create_volume(
            "pv-c",
            &p(&["c"]),
            &DirAttrs {
                mode: 0o1777,
                uid: None,
                gid: None,
            },
        );
        nix::sys::stat::umask(old);
        assert_eq!(
            (a.unwrap(), b.unwrap(), c.unwrap()),
            (Created::New, Created::New, Created::New)
        );
        let a = fs::metadata(parent.join("a")).unwrap();
        assert_eq!((a.mode() & 0o7777, a.gid()), (0o777, 3000));
        let b = fs::metadata(parent.join("b")).unwrap();
        assert_eq!((b.mode() & 0o7777, b.gid()), (0o2770, 2000));
        assert_eq!(mode_of(&tmp.path().join("c")), 0o1777);
    }

    #[test]
    fn create_chowns_to_the_requested_owner_before_setting_the_mode() {
        let (tmp, export) = export();
        let attrs = DirAttrs {
            mode: 0o2775,
            uid: Some(1000),
            gid: Some(2000),
        };
        export.create_volume("pv-1", &p(&["owned"]), &attrs).unwrap();
        let md = fs::metadata(tmp.path().join("owned")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 2000, 0o2775));
        let only_uid = DirAttrs {
            mode: 0o700,
            uid: Some(1001),
            gid: None,
        };
        export
            .create_volume("pv-2", &p(&["uid-only"]), &only_uid)
            .unwrap();
        let md = fs::metadata(tmp.path().join("uid-only")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1001, 0, 0o700));
    }

    #[test]
    fn create_makes_missing_parents_of_a_nested_path() {
        let (tmp, export) = export();
        let path = p(&["ns-a", "team", "pvc-1"]);
        assert_eq!(export.create_volume("pv-1", &path, &RWX).unwrap(), Created::New);
        assert!(tmp.path().join("ns-a/team/pvc-1").is_dir());
        assert_eq!(mode_of(&tmp.path().join("ns-a/team/pvc-1")), 0o777);
        // An existing parent is reused.
        export
            .create_volume("pv-2", &p(&["ns-a", "team", "pvc-2"]), &RWX)
            .unwrap();
        assert!(tmp.path().join("ns-a/team/pvc-2").is_dir());
    }

    #[test]
    fn an_existing_foreign_directory_is_refused_untouched_and_leaves_no_staging_record() {
        let (tmp, export) = export();
        let foreign = tmp.path().join("taken");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("data"), b"someone else's").unwrap();
        fs::set_permissions(&foreign, fs::Permissions::from_mode(0o750)).unwrap();
        let err = export.create_volume("pv-1", &p(&["taken"]), &RWX).unwrap_err();
        assert!(
            matches!(&err, StorageError::Exists { path } if path == "taken"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "create directory taken: a directory not made for this volume already exists"
        );
        assert_eq!(fs::read(foreign.join("data")).unwrap(), b"someone else's");
        assert_eq!(mode_of(&foreign), 0o750);
        assert!(export.staged_volumes().unwrap().is_empty());
        // A file at the path is not a directory of ours either.
        fs::write(tmp.path().join("file"), b"x").unwrap();
        let err = export.create_volume("pv-1", &p(&["file"]), &RWX).unwrap_err();
        assert!(matches!(err, StorageError::Symlink { .. }), "{err}");
    }

    #[test]
    fn a_retry_after_a_crash_following_placement_adopts_the_directory() {
        let (tmp, export) = export();
        assert_eq!(
            export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap(),
            Created::New
        );
        fs::write(tmp.path().join("a/written-meanwhile"), b"x").unwrap();
        // finish_volume never ran (crash): the retry adopts.
        assert_eq!(
            export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap(),
            Created::Adopted
        );
        assert!(tmp.path().join("a/written-meanwhile").exists());
        // Another volume may not adopt it.
        let err = export.create_volume("pv-2", &p(&["a"]), &RWX).unwrap_err();
        assert!(matches!(err, StorageError::Exists { .. }), "{err}");
        export.finish_volume("pv-1").unwrap();
        // After finishing there is no proof any more: the directory is not adopted again.
        let err = export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap_err();
        assert!(matches!(err, StorageError::Exists { .. }), "{err}");
    }

    #[test]
    fn crash_leftover_tmp_record_is_removed_and_never_published() {
        let (tmp, export) = export();
        let leftover = record(&tmp, "pv-1.tmp", "elsewhere", true);
        fs::write(leftover.join("vol/junk"), b"x").unwrap();
        assert_eq!(export.staged_volumes().unwrap(), p(&["pv-1"]));
        assert_eq!(
            export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap(),
            Created::New
        );
        assert!(!leftover.exists());
        assert!(!tmp.path().join("elsewhere").exists());
        assert!(tmp.path().join("a").is_dir() && !tmp.path().join("a/junk").exists());
        assert_eq!(export.staged_target("pv-1").unwrap(), Some(p(&["a"])));
    }

    #[test]
    fn crash_with_a_record_whose_volume_was_not_placed_continues_and_places_it() {
        let (tmp, export) = export();
        let rec = record(&tmp, "pv-1", "ns/a", true);
        let attrs = DirAttrs {
            mode: 0o2770,
            uid: Some(1000),
            gid: Some(2000),
        };
        assert_eq!(
            export.create_volume("pv-1", &p(&["ns", "a"]), &attrs).unwrap(),
            Created::New
        );
        assert!(!rec.join(VOL_DIR).exists());
        let md = fs::metadata(tmp.path().join("ns/a")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 2000, 0o2770));
    }

    #[test]
    fn crash_with_a_placed_record_and_the_directory_present_is_adopted() {
        let (tmp, export) = export();
        record(&tmp, "pv-1", "ns/a", false);
        fs::create_dir_all(tmp.path().join("ns/a")).unwrap();
        fs::write(tmp.path().join("ns/a/data"), b"x").unwrap();
        assert_eq!(
            export.create_volume("pv-1", &p(&["ns", "a"]), &RWX).unwrap(),
            Created::Adopted
        );
        assert!(tmp.path().join("ns/a/data").exists());
    }

    #[test]
    fn a_placed_record_adopts_only_the_directory_with_the_recorded_inode() {
        let (tmp, export) = export();
        let rec = record(&tmp, "pv-1", "a", false);
        fs::create_dir(tmp.path().join("a")).unwrap();
        let ino = fs::metadata(tmp.path().join("a")).unwrap().ino();
        fs::write(rec.join(INODE_FILE), format!("{}\n", ino + 1)).unwrap();
        let err = export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap_err();
        assert!(matches!(err, StorageError::Exists { .. }), "{err}");
        fs::write(rec.join(INODE_FILE), format!("{ino}\n")).unwrap();
        assert_eq!(
            export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap(),
            Created::Adopted
        );
    }

    #[test]
    fn crash_with_a_placed_record_and_the_directory_gone_starts_over() {
        let (tmp, export) = export();
        record(&tmp, "pv-1", "ns/a", false);
        assert_eq!(
            export.create_volume("pv-1", &p(&["ns", "a"]), &RWX).unwrap(),
            Created::New
        );
        assert!(tmp.path().join("ns/a").is_dir());
        assert_eq!(export.staged_target("pv-1").unwrap(), Some(p(&["ns", "a"])));
        assert!(!staging(&tmp).join("pv-1.tmp").exists());
    }

    #[test]
    fn a_record_for_a_different_path_is_staged_elsewhere_and_nothing_is_created() {
        let (tmp, export) = export();
        record(&tmp, "pv-1", "ns/old", true);
        let err = export
            .create_volume("pv-1", &p(&["ns2", "new"]), &RWX)
            .unwrap_err();
        assert!(
            matches!(&err, StorageError::StagedElsewhere { recorded, requested, .. }
                if recorded == "ns/old" && requested == "ns2/new"),
            "{err}"
        );
        assert!(err.to_string().contains("ns/old"), "{err}");
        assert!(!tmp.path().join("ns2").exists());
        assert_eq!(export.staged_target("pv-1").unwrap(), Some(p(&["ns", "old"])));
    }

    #[test]
    fn finish_volume_is_idempotent_and_removes_leftovers() {
        let (tmp, export) = export();
        export.finish_volume("pv-1").unwrap(); // no staging area at all
        export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap();
        record(&tmp, "pv-1.tmp", "a", true);
        export.finish_volume("pv-1").unwrap();
        export.finish_volume("pv-1").unwrap();
        assert!(!staging(&tmp).join("pv-1").exists() && !staging(&tmp).join("pv-1.tmp").exists());
        assert!(tmp.path().join("a").is_dir());
    }

    #[test]
    fn staged_volumes_lists_records_and_crash_leftovers_once_each() {
        let (tmp, export) = export();
        assert!(export.staged_volumes().unwrap().is_empty());
        record(&tmp, "pv-b", "b", true);
        record(&tmp, "pv-b.tmp", "b", true);
        record(&tmp, "pv-a", "a", false);
        record(&tmp, "pv-c.tmp", "c", true);
        fs::write(staging(&tmp).join("stray-file"), b"x").unwrap();
        assert_eq!(export.staged_volumes().unwrap(), p(&["pv-a", "pv-b", "pv-c"]));
    }

    #[test]
    fn finishing_a_volume_clears_a_leftover_of_an_interrupted_finish() {
        let (tmp, export) = export();
        record(&tmp, "pv-c.tmp", "c", false);
        export.finish_volume("pv-c").unwrap();
        assert!(export.staged_volumes().unwrap().is_empty());
    }

    #[test]
    fn a_symlinked_parent_component_pointing_outside_is_refused_and_nothing_is_created_outside() {
        let (tmp, export) = export();
        let outside = tempfile::tempdir().unwrap();
        let outside_mode = mode_of(outside.path());
        symlink(outside.path(), tmp.path().join("link")).unwrap();
        let err = export
            .create_volume("pv-1", &p(&["link", "vol"]), &RWX)
            .unwrap_err();
        assert!(
            matches!(&err, StorageError::Symlink { path, .. } if path == "link"),
            "{err}"
        );
        let err = export
            .create_volume("pv-1", &p(&["link", "deeper", "vol"]), &RWX)
            .unwrap_err();
        assert!(matches!(err, StorageError::Symlink { .. }), "{err}");
        // The volume path itself being a symlink is refused as well.
        let err = export.create_volume("pv-1", &p(&["link"]), &RWX).unwrap_err();
        assert!(matches!(err, StorageError::Symlink { .. }), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(export.staged_volumes().unwrap().is_empty());
        assert_eq!(mode_of(outside.path()), outside_mode);
    }

    #[test]
    fn a_symlinked_staging_area_is_refused() {
        let (tmp, export) = export();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), staging(&tmp)).unwrap();
        let err = export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap_err();
        assert!(matches!(err, StorageError::Symlink { .. }), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(!tmp.path().join("a").exists());
    }

    #[test]
    fn invalid_paths_names_and_modes_are_refused() {
        let (tmp, export) = export();
        let long = "x".repeat(NAME_MAX + 1);
        let bad_paths: Vec<Vec<String>> = vec![
            vec![],
            p(&[""]),
            p(&["."]),
            p(&[".."]),
            p(&["a", ".."]),
            p(&["a/b"]),
            p(&["a\0b"]),
            vec![long.clone()],
            p(&[STAGING_DIR]),
            p(&["a", STAGING_DIR]),
        ];
        for path in &bad_paths {
            let err = export.create_volume("pv-1", path, &RWX).unwrap_err();
            assert!(matches!(err, StorageError::InvalidPath { .. }), "{path:?}: {err}");
            assert!(matches!(
                export.archive_volume(path),
                Err(StorageError::InvalidPath { .. })
            ));
            assert!(matches!(
                export.delete_volume(path, 1),
                Err(StorageError::InvalidPath { .. })
            ));
        }
        for pv in ["", "..", "a/b", "pv.tmp", &"p".repeat(NAME_MAX - 3)] {
            let err = export.create_volume(pv, &p(&["a"]), &RWX).unwrap_err();
            assert!(matches!(err, StorageError::InvalidPath { .. }), "{pv:?}: {err}");
        }
        let err = export.create_volume(
            "pv-1",
            &p(&["a"]),
            &DirAttrs {
                mode: 0o10777,
                uid: None,
                gid: None,
            },
        );
        assert!(matches!(err, Err(StorageError::InvalidMode { .. })));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    // ---- archive_volume ----

    #[test]
    fn archive_renames_and_never_overwrites_an_existing_archive() {
        let (tmp, export) = export();
        let vol = tmp.path().join("x");
        fs::create_dir(&vol).unwrap();
        fs::write(vol.join("data"), b"first").unwrap();
        assert_eq!(
            export.archive_volume(&p(&["x"])).unwrap(),
            Archived::To("archived-x".to_owned())
        );
        fs::create_dir(&vol).unwrap();
        fs::write(vol.join("data"), b"second").unwrap();
        assert_eq!(
            export.archive_volume(&p(&["x"])).unwrap(),
            Archived::To("archived-x-2".to_owned())
        );
        // An *empty* directory where the next archive would go (rename(2) would replace it) is kept too.
        fs::create_dir(tmp.path().join("archived-x-3")).unwrap();
        fs::create_dir(&vol).unwrap();
        fs::write(vol.join("data"), b"third").unwrap();
        assert_eq!(
            export.archive_volume(&p(&["x"])).unwrap(),
            Archived::To("archived-x-4".to_owned())
        );
        assert_eq!(fs::read(tmp.path().join("archived-x/data")).unwrap(), b"first");
        assert_eq!(fs::read(tmp.path().join("archived-x-2/data")).unwrap(), b"second");
        assert_eq!(fs::read_dir(tmp.path().join("archived-x-3")).unwrap().count(), 0);
        assert_eq!(fs::read(tmp.path().join("archived-x-4/data")).unwrap(), b"third");
        assert!(!vol.exists());
    }

    #[test]
    fn archive_of_a_missing_volume_or_parent_is_missing() {
        let (tmp, export) = export();
        assert_eq!(
            export.archive_volume(&p(&["nothing"])).unwrap(),
            Archived::Missing
        );
        assert_eq!(
            export.archive_volume(&p(&["no-ns", "nothing"])).unwrap(),
            Archived::Missing
        );
        fs::create_dir(tmp.path().join("x")).unwrap();
        assert!(matches!(
            export.archive_volume(&p(&["x"])).unwrap(),
            Archived::To(_)
        ));
        // The retry after a crash that followed the rename.
        assert_eq!(export.archive_volume(&p(&["x"])).unwrap(), Archived::Missing);
    }

    #[test]
    fn a_nested_volume_is_archived_in_its_own_parent() {
        let (tmp, export) = export();
        for ns in ["ns-a", "ns-b"] {
            fs::create_dir_all(tmp.path().join(ns).join("data")).unwrap();
            fs::write(tmp.path().join(ns).join("data/owner"), ns).unwrap();
            let archived = export.archive_volume(&p(&[ns, "data"])).unwrap();
            assert_eq!(archived, Archived::To("archived-data".to_owned()));
            assert_eq!(
                fs::read_to_string(tmp.path().join(ns).join("archived-data/owner")).unwrap(),
                ns
            );
        }
        assert!(!tmp.path().join("archived-data").exists());
    }

    #[test]
    fn archiving_a_symlinked_volume_or_parent_is_refused_and_the_target_is_untouched() {
        let (tmp, export) = export();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(outside.path().join("vol")).unwrap();
        fs::write(outside.path().join("vol/data"), b"precious").unwrap();
        symlink(outside.path().join("vol"), tmp.path().join("x")).unwrap();
        symlink(outside.path(), tmp.path().join("ns")).unwrap();
        let err = export.archive_volume(&p(&["x"])).unwrap_err();
        assert!(
            matches!(&err, StorageError::Symlink { path, .. } if path == "x"),
            "{err}"
        );
        let err = export.archive_volume(&p(&["ns", "vol"])).unwrap_err();
        assert!(
            matches!(&err, StorageError::Symlink { path, .. } if path == "ns"),
            "{err}"
        );
        assert!(fs::symlink_metadata(tmp.path().join("x")).unwrap().is_symlink());
        assert_eq!(fs::read(outside.path().join("vol/data")).unwrap(), b"precious");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn the_rename_fallback_without_noreplace_never_replaces_an_existing_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = OwnedFd::from(fs::File::open(tmp.path()).unwrap());
        fs::create_dir(tmp.path().join("src")).unwrap();
        fs::create_dir(tmp.path().join("empty-dst")).unwrap();
        fs::write(tmp.path().join("file-dst"), b"x").unwrap();
        for dst in ["empty-dst", "file-dst"] {
            assert!(!rename_check_then_rename(dir.as_fd(), "src", dir.as_fd(), dst).unwrap());
        }
        assert!(rename_check_then_rename(dir.as_fd(), "src", dir.as_fd(), "new").unwrap());
        assert!(tmp.path().join("new").is_dir() && tmp.path().join("empty-dst").is_dir());
        assert_eq!(
            rename_check_then_rename(dir.as_fd(), "src", dir.as_fd(), "other"),
            Err(Errno::ENOENT)
        );
    }

    // ---- delete_volume ----

    fn make_tree(root: &Path, files: usize) -> u64 {
        let mut entries = 1;
        fs::create_dir_all(root).unwrap();
        for d in 0..10 {
            fs::create_dir_all(root.join(format!("d{d}/e"))).unwrap();
            entries += 2;
        }
        for f in 0..files {
            let sub = if f % 3 == 0 {
                format!("d{}", f % 10)
            } else {
                format!("d{}/e", f % 10)
            };
            fs::write(root.join(sub).join(format!("f{f}")), b"x").unwrap();
            entries += 1;
        }
        entries
    }

    #[test]
    fn delete_removes_a_tree_of_2000_files_serially_and_with_16_in_flight() {
        for concurrency in [1, 16] {
            let (tmp, export) = export();
            let entries = make_tree(&tmp.path().join("ns").join("vol"), 2000);
            let removed = export.delete_volume(&p(&["ns", "vol"]), concurrency).unwrap();
            assert_eq!(removed, Removed::Removed { entries }, "concurrency {concurrency}");
            assert!(!tmp.path().join("ns/vol").exists());
            assert!(tmp.path().join("ns").is_dir());
        }
    }

    #[test]
    fn deleting_20k_files_with_16_in_flight_completes() {
        let (tmp, export) = export();
        let entries = make_tree(&tmp.path().join("big"), 20_000);
        assert_eq!(
            export.delete_volume(&p(&["big"]), 16).unwrap(),
            Removed::Removed { entries }
        );
        assert!(!tmp.path().join("big").exists());
    }

    #[test]
    fn delete_removes_symlinks_inside_without_touching_their_targets_outside() {
        let (tmp, export) = export();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(outside.path().join("dir")).unwrap();
        fs::write(outside.path().join("dir/data"), b"precious").unwrap();
        fs::write(outside.path().join("file"), b"precious").unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir_all(vol.join("sub")).unwrap();
        symlink(outside.path().join("dir"), vol.join("to-dir")).unwrap();
        symlink(outside.path().join("file"), vol.join("sub/to-file")).unwrap();
        assert_eq!(
            export.delete_volume(&p(&["vol"]), 4).unwrap(),
            Removed::Removed { entries: 4 }
        );
        assert!(!vol.exists());
        assert_eq!(fs::read(outside.path().join("dir/data")).unwrap(), b"precious");
        assert_eq!(fs::read(outside.path().join("file")).unwrap(), b"precious");
    }

    #[test]
    fn deleting_a_volume_that_is_itself_a_symlink_removes_only_the_link() {
        let (tmp, export) = export();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("data"), b"precious").unwrap();
        symlink(outside.path(), tmp.path().join("vol")).unwrap();
        assert_eq!(
            export.delete_volume(&p(&["vol"]), 4).unwrap(),
            Removed::Removed { entries: 1 }
        );
        assert!(fs::symlink_metadata(tmp.path().join("vol")).is_err());
        assert_eq!(fs::read(outside.path().join("data")).unwrap(), b"precious");
    }

    #[test]
    fn deleting_below_a_symlinked_parent_is_refused_and_the_target_is_untouched() {
        let (tmp, export) = export();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(outside.path().join("vol")).unwrap();
        symlink(outside.path(), tmp.path().join("ns")).unwrap();
        let err = export.delete_volume(&p(&["ns", "vol"]), 4).unwrap_err();
        assert!(
            matches!(&err, StorageError::Symlink { path, .. } if path == "ns"),
            "{err}"
        );
        assert!(outside.path().join("vol").is_dir());
    }

    #[test]
    fn deleting_a_missing_volume_or_parent_is_missing() {
        let (_tmp, export) = export();
        assert_eq!(
            export.delete_volume(&p(&["nothing"]), 4).unwrap(),
            Removed::Missing
        );
        assert_eq!(
            export.delete_volume(&p(&["no-ns", "nothing"]), 4).unwrap(),
            Removed::Missing
        );
    }

    #[test]
    fn a_delete_error_names_the_entry_and_errno_and_a_retry_resumes() {
        let (tmp, export) = export();
        let entries = make_tree(&tmp.path().join("ns").join("vol"), 300);
        let failing = TreeRemover::new(8).fail_on("f17", Errno::EACCES);
        let err = export.delete_with(&p(&["ns", "vol"]), &failing).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EACCES));
        assert_eq!(
            err.to_string(),
            "delete directory ns/vol: unlink ns/vol/d7/e/f17: EACCES: Permission denied"
        );
        assert!(tmp.path().join("ns/vol/d7/e/f17").exists());
        match export.delete_volume(&p(&["ns", "vol"]), 8).unwrap() {
            Removed::Removed { entries: rest } => assert!(rest >= 4 && rest < entries),
            Removed::Missing => panic!("volume vanished"),
        }
        assert!(!tmp.path().join("ns/vol").exists());
    }

    // ---- capacity and errors ----

    #[test]
    fn capacity_reports_the_filesystem_of_the_export() {
        let (_tmp, export) = export();
        let c = export.capacity().unwrap();
        assert!(c.total_bytes > 0);
        assert!(
            c.free_bytes <= c.total_bytes && c.available_bytes <= c.free_bytes,
            "{c:?}"
        );
        let missing = MountedExport::new(PathBuf::from("/nonexistent/export"));
        let err = missing.capacity().unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOENT));
        assert!(
            err.to_string()
                .starts_with("query capacity of export root /nonexistent/export: ENOENT"),
            "{err}"
        );
    }

    #[test]
    fn error_messages_say_what_was_attempted_on_which_path_with_the_errno() {
        let e = io("create directory", "ns-a-pvc-1", Errno::EACCES);
        assert_eq!(
            e.to_string(),
            "create directory ns-a-pvc-1: EACCES: Permission denied"
        );
        assert_eq!(e.errno(), Some(Errno::EACCES));
        let e = StorageError::Symlink {
            op: "archive directory",
            path: "ns/x".to_owned(),
        };
        assert!(e.to_string().starts_with("archive directory ns/x: "), "{e}");
        assert_eq!(e.errno(), None);
        let e = StorageError::InvalidPath {
            op: "delete directory",
            path: "a/..".to_owned(),
            reason: "x".into(),
        };
        assert_eq!(e.to_string(), "delete directory \"a/..\": invalid path: x");
        let e = StorageError::ArchiveNamesExhausted {
            path: "x".to_owned(),
            attempts: 3,
        };
        assert_eq!(
            e.to_string(),
            "archive directory x: all 3 archive names are taken"
        );
    }

    #[test]
    fn operations_on_a_missing_export_root_fail_with_the_root_path() {
        let export = MountedExport::new(PathBuf::from("/nonexistent/export"));
        assert_eq!(export.root(), Path::new("/nonexistent/export"));
        let err = export.create_volume("pv-1", &p(&["a"]), &RWX).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Root {
                    errno: Errno::ENOENT,
                    ..
                }
            ),
            "{err}"
        );
        assert!(export.delete_volume(&p(&["a"]), 1).is_err());
        assert!(export.staged_volumes().is_err());
    }
}
