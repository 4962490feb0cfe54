//! The conformance suite's fixture: one scenario's export over either transport, the tools that
//! make its preconditions behind the backend's back, and assertions on the backing directory.
#![allow(dead_code)] // each scenario module uses a part

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::nfs::{self, EXPORT, p, unique};
use nfs_subdir_provisioner::core::params::DirMode;
use nfs_subdir_provisioner::core::staging::{STAGING_DIR, TARGET_FILE, VOL_DIR};
use nfs_subdir_provisioner::storage::nfs_testing::Preconditions;
use nfs_subdir_provisioner::storage::nfs3::Nfs3Transport;
use nfs_subdir_provisioner::storage::nfs4::Nfs4Transport;
use nfs_subdir_provisioner::storage::posix::MountedExport;
use nfs_subdir_provisioner::storage::{Backend, Created, Existing, Refusal, StorageFailure, Volumes};
use nix::sys::stat::Mode;
use tempfile::TempDir;

pub const SUITE: &str = "conformance (NFSv3 transport)";

pub const RWX: DirMode = DirMode {
    mode: 0o777,
    uid: None,
    gid: None,
};

/// What a StorageClass with `uid: 1000`, `gid: 2000`, `mode: 2770` asks for.
pub const OWNED: DirMode = DirMode {
    mode: 0o2770,
    uid: Some(1000),
    gid: Some(2000),
};

/// The process-wide umask: a scenario that changes it holds this exclusively; every other mounted
/// fixture holds it shared (tests run on parallel threads of one process, and the mounted
/// transport's parents and records are made under the umask).
pub static UMASK: RwLock<()> = RwLock::new(());

pub enum UmaskLock {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    /// Restores `old` when dropped, before the lock is released.
    Changed {
        old: Mode,
        _lock: RwLockWriteGuard<'static, ()>,
    },
}

impl Drop for UmaskLock {
    fn drop(&mut self) {
        if let UmaskLock::Changed { old, .. } = self {
            nix::sys::stat::umask(*old);
        }
    }
}

/// Makes preconditions on the export, bypassing the backend under test.
pub enum Tools {
    /// Plain file system calls on the backing directory.
    Local(PathBuf),
    /// NFS calls over a connection of its own.
    Nfs(Nfs3Transport),
    /// The same over NFSv4.1, for an NFSv4-only server.
    Nfs4(Nfs4Transport),
}

/// `$body` with `$t` bound to whichever NFS transport `$tools` holds.
macro_rules! over_nfs {
    ($tools:expr, $t:ident => $body:expr) => {
        match $tools {
            Tools::Nfs($t) => $body,
            Tools::Nfs4($t) => $body,
            Tools::Local(_) => unreachable!("a local fixture"),
        }
    };
}

impl Tools {
    pub fn local(root: &Path, path: &[&str]) -> PathBuf {
        root.join(path.join("/"))
    }

    pub async fn mkdir_p(&self, path: &[&str]) {
        match self {
            Tools::Local(root) => fs::create_dir_all(Self::local(root, path)).unwrap(),
            Tools::Nfs(_) | Tools::Nfs4(_) => over_nfs!(self, t => t.mkdir_p(path).await.unwrap()),
        }
    }

    /// A new file (an existing one is an error on the mounted side; over NFS it is left as it is,
    /// so scenarios only ever write new names).
    pub async fn write(&self, path: &[&str], content: &[u8]) {
        match self {
            Tools::Local(root) => {
                use std::io::Write;
                let mut f = fs::File::create_new(Self::local(root, path)).unwrap();
                f.write_all(content).unwrap();
            }
            Tools::Nfs(_) | Tools::Nfs4(_) => {
                over_nfs!(self, t => t.write_file_at(path, content, 0o644).await.unwrap())
            }
        }
    }

    /// Empty files `names` in the existing directory `dir`.
    pub async fn create_files(&self, dir: &[&str], names: Vec<String>) {
        match self {
            Tools::Local(root) => {
                let dir = Self::local(root, dir);
                for name in names {
                    fs::File::create_new(dir.join(name)).unwrap();
                }
            }
            Tools::Nfs(_) | Tools::Nfs4(_) => {
                over_nfs!(self, t => t.create_files(dir, names, 16).await.unwrap())
            }
        }
    }

    pub async fn symlink(&self, path: &[&str], target: &str) {
        match self {
            Tools::Local(root) => std::os::unix::fs::symlink(target, Self::local(root, path)).unwrap(),
            Tools::Nfs(_) | Tools::Nfs4(_) => over_nfs!(self, t => t.symlink_at(path, target).await.unwrap()),
        }
    }

    pub async fn chmod(&self, path: &[&str], mode: u32) {
        match self {
            Tools::Local(root) => {
                fs::set_permissions(Self::local(root, path), fs::Permissions::from_mode(mode)).unwrap();
            }
            Tools::Nfs(_) | Tools::Nfs4(_) => over_nfs!(self, t => t.chmod_at(path, mode).await.unwrap()),
        }
    }

    /// The owner of `path` itself (of a symlink, the link's).
    pub async fn chown(&self, path: &[&str], uid: Option<u32>, gid: Option<u32>) {
        match self {
            Tools::Local(root) => std::os::unix::fs::lchown(Self::local(root, path), uid, gid).unwrap(),
            Tools::Nfs(_) | Tools::Nfs4(_) => over_nfs!(self, t => t.chown_at(path, uid, gid).await.unwrap()),
        }
    }

    /// `path` as a further name of the file at `existing`.
    pub async fn hard_link(&self, existing: &[&str], path: &[&str]) {
        match self {
            Tools::Local(root) => {
                fs::hard_link(Self::local(root, existing), Self::local(root, path)).unwrap()
            }
            Tools::Nfs(_) | Tools::Nfs4(_) => over_nfs!(self, t => t.link_at(existing, path).await.unwrap()),
        }
    }

    /// A FIFO, or a socket, at `path`.
    pub async fn special(&self, path: &[&str], socket: bool) {
        match self {
            Tools::Local(root) if socket => {
                drop(std::os::unix::net::UnixListener::bind(Self::local(root, path)).unwrap());
            }
            Tools::Local(root) => {
                nix::unistd::mkfifo(&Self::local(root, path), Mode::from_bits_truncate(0o644)).unwrap();
            }
            Tools::Nfs(_) | Tools::Nfs4(_) => over_nfs!(self, t => t.mknod_at(path, socket).await.unwrap()),
        }
    }

    /// Access and modification time of the file or directory at `path`, whole seconds.
    pub async fn set_times(&self, path: &[&str], seconds: u32) {
        match self {
            Tools::Local(root) => {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.into());
                let times = fs::FileTimes::new().set_accessed(at).set_modified(at);
                fs::File::open(Self::local(root, path))
                    .unwrap()
                    .set_times(times)
                    .unwrap();
            }
            Tools::Nfs(_) | Tools::Nfs4(_) => {
                over_nfs!(self, t => t.set_times_at(path, (seconds, 0), (seconds, 0)).await.unwrap())
            }
        }
    }

    /// Removes the non-directory at `path`.
    pub async fn remove(&self, path: &[&str]) {
        match self {
            Tools::Local(root) => fs::remove_file(Self::local(root, path)).unwrap(),
            Tools::Nfs(_) | Tools::Nfs4(_) => over_nfs!(self, t => t.remove_at(path).await.unwrap()),
        }
    }
}

/// One scenario's export: the backend under test, its backing directory, and the scenario's own
/// top-level directory and PV name prefix.
pub struct Fx {
    pub backend: Arc<dyn Backend>,
    /// Host directory of the export root.
    pub backing: PathBuf,
    pub tools: Tools,
    /// This scenario's top-level directory (not yet created).
    pub top: String,
    /// Prefix of this scenario's PV names.
    pub id: String,
    /// Directory outside the export, for symlink targets.
    pub outside: TempDir,
    /// The mounted transport's export (removed with the fixture).
    pub _tmp: Option<TempDir>,
    pub _umask: Option<UmaskLock>,
    /// The backend is over NFSv4.1 (its errors are `NfsV4Error`s).
    pub v41: bool,
}

impl Fx {
    pub fn mounted(scenario: &str) -> Fx {
        let lock = UMASK.read().unwrap_or_else(PoisonError::into_inner);
        Self::mounted_with(scenario, UmaskLock::Shared(lock))
    }

    /// The mounted fixture with the process's umask set to `mask` until it is dropped.
    pub fn mounted_under_umask(scenario: &str, mask: u32) -> Fx {
        let lock = UMASK.write().unwrap_or_else(PoisonError::into_inner);
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(mask));
        Self::mounted_with(scenario, UmaskLock::Changed { old, _lock: lock })
    }

    pub fn mounted_with(scenario: &str, umask: UmaskLock) -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().to_path_buf();
        Fx {
            backend: Arc::new(MountedExport::new(backing.clone(), 16)),
            tools: Tools::Local(backing.clone()),
            backing,
            top: unique(scenario),
            id: unique("pv"),
            outside: tempfile::tempdir().unwrap(),
            _tmp: Some(tmp),
            _umask: Some(umask),
            v41: false,
        }
    }

    /// `None`: no test server (the scenario is skipped).
    pub async fn direct(scenario: &str) -> Option<Fx> {
        let env = nfs::env(SUITE)?;
        // Connects on first use, as the provisioner's transport of a StorageClass's export does.
        let backend = Arc::new(env.lazy_volumes(EXPORT, &[]));
        let tools = Tools::Nfs(env.connect(EXPORT, &[], 4).await);
        Some(Self::on_server(env, scenario, backend, tools, false))
    }

    /// As [`Fx::direct`], over the NFSv4.1 transport, on the NFSv4-only test server; the
    /// preconditions are made over NFSv4.1 too.
    pub async fn direct_v41(scenario: &str) -> Option<Fx> {
        let env = nfs::env_v4_only(SUITE)?;
        let backend = Arc::new(Volumes::new(Nfs4Transport::new(
            env.export(EXPORT),
            env.options_v41(&[]),
        )));
        let tools = Tools::Nfs4(
            Nfs4Transport::connect(env.export(EXPORT), env.options_v41(&[]), 4)
                .await
                .unwrap(),
        );
        Some(Self::on_server(env, scenario, backend, tools, true))
    }

    fn on_server(env: nfs::Env, scenario: &str, backend: Arc<dyn Backend>, tools: Tools, v41: bool) -> Fx {
        Fx {
            backend,
            tools,
            backing: env.export_dir,
            top: unique(scenario),
            id: unique("pv"),
            outside: tempfile::tempdir().unwrap(),
            _tmp: None,
            _umask: None,
            v41,
        }
    }

    pub fn is_nfs(&self) -> bool {
        matches!(self.tools, Tools::Nfs(_) | Tools::Nfs4(_))
    }

    /// Whether the backend can set any owner: over NFS (no_root_squash), or mounted as root.
    pub fn can_chown(&self) -> bool {
        self.is_nfs() || is_root()
    }

    /// A PV name of this scenario.
    pub fn pv(&self, n: &str) -> String {
        format!("{}-{n}", self.id)
    }

    /// A path below the scenario's top-level directory.
    pub fn path(&self, rest: &[&str]) -> Vec<String> {
        let mut path = vec![self.top.clone()];
        path.extend(rest.iter().map(|c| (*c).to_owned()));
        path
    }

    /// `top/rest` as messages show it.
    pub fn shown(&self, rest: &[&str]) -> String {
        self.path(rest).join("/")
    }

    /// The host path of a path below the scenario's top-level directory.
    pub fn host(&self, rest: &[&str]) -> PathBuf {
        rest.iter().fold(self.backing.join(&self.top), |d, c| d.join(c))
    }

    pub fn staging(&self) -> PathBuf {
        self.backing.join(STAGING_DIR)
    }

    /// This scenario's staged PVs, as the backend lists them.
    pub async fn staged(&self) -> Vec<String> {
        let mut mine: Vec<String> = (self.backend.staged_volumes().await.unwrap())
            .into_iter()
            .filter(|pv| pv.starts_with(&self.id))
            .collect();
        mine.sort();
        mine
    }

    pub async fn create(&self, pv: &str, rest: &[&str], dir: DirMode) -> Result<Created, StorageFailure> {
        self.backend
            .create_volume(pv, &self.path(rest), dir, Existing::Refuse, None)
            .await
    }

    /// A staging record `name` as a crash leaves it: its target line (`rest` below the scenario's
    /// top-level directory), and the volume directory when `with_vol` (not yet placed).
    pub async fn record(&self, name: &str, rest: &[&str], with_vol: bool) {
        self.tools.mkdir_p(&[STAGING_DIR, name]).await;
        let target = format!("{}\n", self.shown(rest));
        self.tools
            .write(&[STAGING_DIR, name, TARGET_FILE], target.as_bytes())
            .await;
        if with_vol {
            self.tools.mkdir_p(&[STAGING_DIR, name, VOL_DIR]).await;
        }
    }

    /// Removes what the scenario left on a shared export (errors ignored: only tidying up).
    pub async fn cleanup(&self) {
        for pv in self.backend.staged_volumes().await.unwrap_or_default() {
            if pv.starts_with(&self.id) {
                let _ = self.backend.finish_volume(&pv).await;
            }
        }
        let _ = self.backend.delete_volume(&p(&[&self.top]), 16).await;
    }
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// (uid, gid, permission bits) of a host path, not following symlinks.
pub fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (md.uid(), md.gid(), md.mode() & 0o7777)
}

pub fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .ino()
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|md| md.is_symlink())
}

/// The refusal of a directory that was not made for this volume.
pub fn assert_taken<T: std::fmt::Debug>(result: Result<T, StorageFailure>, path: &str) {
    let err = result.expect_err("a foreign directory must be refused");
    assert!(
        matches!(err.refusal(), Some(Refusal::Taken { path: p }) if p == path),
        "{err:?}"
    );
    assert!(err.is_taken());
    assert_eq!(
        err.to_string(),
        format!("create directory {path}: a directory not made for this volume already exists"),
    );
}

/// The refusal of a symlink or non-directory at `path` by `op`.
pub fn assert_not_a_directory<T: std::fmt::Debug>(result: Result<T, StorageFailure>, op: &str, path: &str) {
    let err = result.expect_err("a symlink or non-directory must be refused");
    assert!(
        matches!(err.refusal(), Some(Refusal::NotADirectory { op: o, path: p }) if *o == op && p == path),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("{op} {path}: a symlink or non-directory is in the way; refusing to follow or touch it")
    );
}

pub fn assert_invalid_path<T: std::fmt::Debug>(result: Result<T, StorageFailure>, what: &str) {
    let err = result.expect_err("an invalid path must be refused");
    assert!(
        matches!(err.refusal(), Some(Refusal::InvalidPath { .. })),
        "{what}: {err:?}"
    );
}
