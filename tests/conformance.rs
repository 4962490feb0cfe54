//! One suite of scenarios for the storage interface (`storage::Backend`), written once and run
//! against both implementations:
//!
//! * `mounted_<scenario>`: `MountedBackend` on a temporary directory (the backing directory);
//! * `direct_<scenario>`: `DirectBackend` on the test NFS server's `/export` (backing directory
//!   `NFS_TEST_EXPORT_DIR`; see tests/nfs/mod.rs for the environment). Without `NFS_TEST_SERVER`
//!   the direct half is skipped (loudly), or fails with `NFS_TEST_REQUIRE=1`.
//!
//! Outcomes are checked on the backing directory itself (owners, modes, names, contents), never
//! through the backend under test. Preconditions (a foreign directory, files in a volume, symlinks)
//! are made with plain file system calls for the mounted backend and over NFS for the direct one,
//! so that the server's caches see them. Every scenario works below its own top-level directory
//! with its own PV names, so the direct ones can share one export with each other and with
//! tests/direct_nfs.rs.
#![allow(clippy::unwrap_used)] // a test: a failed call is a failed test

mod nfs;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nfs::{EXPORT, EXPORT_ROOTSQUASH, p, unique};
use nfs_subdir_provisioner::core::naming::STAGING_DIR;
use nfs_subdir_provisioner::storage::direct::{DirectBackend, DirectExport};
use nfs_subdir_provisioner::storage::{
    Archived, Backend, Created, DirAttrs, MountedBackend, Removed, StorageFailure,
};
use tempfile::TempDir;

const SUITE: &str = "conformance (direct backend)";

const RWX: DirAttrs = DirAttrs {
    mode: 0o777,
    uid: None,
    gid: None,
};

/// The attributes a StorageClass with `uid: 1000`, `gid: 2000`, `mode: 2770` asks for.
const OWNED: DirAttrs = DirAttrs {
    mode: 0o2770,
    uid: Some(1000),
    gid: Some(2000),
};

/// Makes preconditions on the export, bypassing the backend under test.
enum Tools {
    /// Plain file system calls on the backing directory.
    Local(PathBuf),
    /// NFS calls by a client of its own (a file made on the server's host behind its back may stay
    /// invisible to it for a while: ganesha caches directories).
    Nfs(DirectExport),
}

impl Tools {
    async fn mkdir_p(&self, path: &[&str]) {
        match self {
            Tools::Local(root) => fs::create_dir_all(root.join(path.join("/"))).unwrap(),
            Tools::Nfs(e) => e.mkdir_p(path).await.unwrap(),
        }
    }

    async fn write(&self, path: &[&str], content: &[u8]) {
        match self {
            Tools::Local(root) => fs::write(root.join(path.join("/")), content).unwrap(),
            Tools::Nfs(e) => e.write_file(path, content, 0o644).await.unwrap(),
        }
    }

    async fn symlink(&self, path: &[&str], target: &str) {
        match self {
            Tools::Local(root) => std::os::unix::fs::symlink(target, root.join(path.join("/"))).unwrap(),
            Tools::Nfs(e) => e.symlink(path, target).await.unwrap(),
        }
    }

    async fn chmod(&self, path: &[&str], mode: u32) {
        match self {
            Tools::Local(root) => {
                fs::set_permissions(root.join(path.join("/")), fs::Permissions::from_mode(mode)).unwrap();
            }
            Tools::Nfs(e) => e.chmod(path, mode).await.unwrap(),
        }
    }
}

/// One scenario's export: the backend under test, its backing directory, and the scenario's own
/// top-level directory and PV name prefix.
struct Fx {
    backend: Arc<dyn Backend>,
    /// Host directory of the export root.
    backing: PathBuf,
    tools: Tools,
    /// This scenario's top-level directory (not yet created).
    top: String,
    /// Prefix of this scenario's PV names.
    id: String,
    /// Directory outside the export, for symlink targets.
    outside: TempDir,
    /// The mounted backend's export (removed with the fixture).
    _tmp: Option<TempDir>,
}

impl Fx {
    fn mounted(scenario: &str) -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().to_path_buf();
        Fx {
            backend: Arc::new(MountedBackend::new(backing.clone())),
            tools: Tools::Local(backing.clone()),
            backing,
            top: unique(scenario),
            id: unique("pv"),
            outside: tempfile::tempdir().unwrap(),
            _tmp: Some(tmp),
        }
    }

    /// `None`: no test server (the scenario is skipped).
    async fn direct(scenario: &str) -> Option<Fx> {
        let env = nfs::env(SUITE)?;
        let backend = DirectBackend::new(env.export(EXPORT), env.options(&[]));
        Some(Fx {
            backend: Arc::new(backend),
            tools: Tools::Nfs(env.connect(EXPORT, &[], 4).await),
            backing: env.export_dir,
            top: unique(scenario),
            id: unique("pv"),
            outside: tempfile::tempdir().unwrap(),
            _tmp: None,
        })
    }

    /// A PV name of this scenario.
    fn pv(&self, n: &str) -> String {
        format!("{}-{n}", self.id)
    }

    /// A path below the scenario's top-level directory.
    fn path(&self, rest: &[&str]) -> Vec<String> {
        let mut path = vec![self.top.clone()];
        path.extend(rest.iter().map(|c| (*c).to_owned()));
        path
    }

    /// The host path of a path below the scenario's top-level directory.
    fn host(&self, rest: &[&str]) -> PathBuf {
        rest.iter().fold(self.backing.join(&self.top), |d, c| d.join(c))
    }

    fn staging(&self) -> PathBuf {
        self.backing.join(STAGING_DIR)
    }

    /// This scenario's staged PVs, as the backend lists them.
    async fn staged(&self) -> Vec<String> {
        let mut mine: Vec<String> = (self.backend.staged_volumes().await.unwrap())
            .into_iter()
            .filter(|pv| pv.starts_with(&self.id))
            .collect();
        mine.sort();
        mine
    }

    async fn create(&self, pv: &str, rest: &[&str], attrs: DirAttrs) -> Result<Created, StorageFailure> {
        self.backend.create_volume(pv, &self.path(rest), attrs).await
    }

    /// Removes what the scenario left on a shared export (errors ignored: only tidying up).
    async fn cleanup(&self) {
        for pv in self.backend.staged_volumes().await.unwrap_or_default() {
            if pv.starts_with(&self.id) {
                let _ = self.backend.finish_volume(&pv).await;
            }
        }
        let _ = self.backend.delete_volume(&p(&[&self.top]), 16).await;
    }
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// (uid, gid, permission bits) of a host path, not following symlinks.
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (md.uid(), md.gid(), md.mode() & 0o7777)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The refusal of a directory that was not made for this volume (either backend's error).
fn assert_exists(result: Result<Created, StorageFailure>, path: &str) {
    let err = result.expect_err("a foreign directory must be refused");
    assert_eq!(
        err.to_string(),
        format!("create directory {path}: a directory not made for this volume already exists"),
        "{err:?}"
    );
}

// ---- scenarios ----

/// Exclusive create applies mode 02770 and owner 1000:2000 exactly (v3 MKDIR and chown both drop
/// setgid; the umask would take bits away), missing parents get 0755, and a staging record stays
/// until `finish_volume`.
async fn create_applies_mode_and_owner_exactly(fx: &Fx) {
    let owner = is_root() || matches!(fx.tools, Tools::Nfs(_));
    let attrs = if owner {
        OWNED
    } else {
        eprintln!("not root: the mounted backend cannot chown; checking the mode only");
        DirAttrs {
            uid: None,
            gid: None,
            ..OWNED
        }
    };
    let pv = fx.pv("a");
    assert_eq!(fx.create(&pv, &["ns", "vol"], attrs).await.unwrap(), Created::New);
    let (uid, gid, mode) = owner_mode(&fx.host(&["ns", "vol"]));
    assert!(fx.host(&["ns", "vol"]).is_dir());
    assert_eq!(mode, 0o2770);
    if owner {
        assert_eq!((uid, gid), (1000, 2000));
    }
    assert_eq!(owner_mode(&fx.host(&[])).2, 0o755);
    assert_eq!(owner_mode(&fx.host(&["ns"])).2, 0o755);
    assert_eq!(owner_mode(&fx.staging()).2, 0o700);
    assert_eq!(names(&fx.host(&["ns"])), ["vol"]);
    assert!(names(&fx.host(&["ns", "vol"])).is_empty());
    assert_eq!(fx.staged().await, [pv.as_str()]);
    // A plain mode without owner: exactly that, whatever the umask.
    let plain = fx.pv("b");
    let sticky = DirAttrs { mode: 0o1777, ..RWX };
    assert_eq!(fx.create(&plain, &["plain"], sticky).await.unwrap(), Created::New);
    assert_eq!(owner_mode(&fx.host(&["plain"])).2, 0o1777);
}

/// A directory that exists at the target and was not made for the volume is refused, and left
/// exactly as it was; so is a file there.
async fn foreign_directory_is_refused_and_untouched(fx: &Fx) {
    let top = fx.top.as_str();
    fx.tools.mkdir_p(&[top, "taken"]).await;
    fx.tools.write(&[top, "taken", "data"], b"someone else's").await;
    fx.tools.chmod(&[top, "taken"], 0o750).await;
    let before = owner_mode(&fx.host(&["taken"]));
    let pv = fx.pv("a");
    assert_exists(fx.create(&pv, &["taken"], OWNED).await, &format!("{top}/taken"));
    assert_eq!(owner_mode(&fx.host(&["taken"])), before);
    assert_eq!(before.2, 0o750);
    assert_eq!(names(&fx.host(&["taken"])), ["data"]);
    assert_eq!(fs::read(fx.host(&["taken", "data"])).unwrap(), b"someone else's");
    assert!(fx.staged().await.is_empty());

    fx.tools.write(&[top, "file"], b"x").await;
    let err = fx.create(&pv, &["file"], RWX).await.unwrap_err();
    assert!(
        err.to_string().contains("refusing to follow or touch it"),
        "{err}"
    );
    assert_eq!(fs::read(fx.host(&["file"])).unwrap(), b"x");
}

/// A retry of an interrupted create (no `finish_volume` yet) adopts its own directory, data and
/// all; another volume, a directory swapped in since, or the same volume after finishing does
/// not; the same volume asking for another path is told where its attempt went.
async fn retry_adopts_only_its_own_attempt(fx: &Fx) {
    let top = fx.top.as_str();
    let (a, b) = (fx.pv("a"), fx.pv("b"));
    assert_eq!(fx.create(&a, &["v"], RWX).await.unwrap(), Created::New);
    let ino = fs::metadata(fx.host(&["v"])).unwrap().ino();
    fx.tools.write(&[top, "v", "written-meanwhile"], b"x").await;
    assert_eq!(fx.create(&a, &["v"], RWX).await.unwrap(), Created::Adopted);
    assert_eq!(fx.create(&a, &["v"], RWX).await.unwrap(), Created::Adopted);
    assert_eq!(fs::metadata(fx.host(&["v"])).unwrap().ino(), ino);
    assert_eq!(names(&fx.host(&["v"])), ["written-meanwhile"]);

    // Another volume, while a's record for this directory exists: refused.
    assert_exists(fx.create(&b, &["v"], RWX).await, &format!("{top}/v"));
    assert!(!fx.staged().await.contains(&b));

    // The same volume, another path.
    let err = fx.create(&a, &["w"], RWX).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "for volume {a}: an earlier attempt of this volume staged it for {top}/v"
        )),
        "{err}"
    );
    assert!(!fx.host(&["w"]).exists());

    // A foreign directory in place of a's (a's moved away, so the new one has another inode): a's
    // record proves nothing about it.
    assert_eq!(
        fx.backend.archive_volume(&fx.path(&["v"])).await.unwrap(),
        Archived::To("archived-v".into())
    );
    fx.tools.mkdir_p(&[top, "v"]).await;
    fx.tools.write(&[top, "v", "foreign"], b"f").await;
    assert_exists(fx.create(&a, &["v"], RWX).await, &format!("{top}/v"));
    assert_eq!(names(&fx.host(&["v"])), ["foreign"]);

    // After finishing there is no proof any more.
    fx.backend.finish_volume(&a).await.unwrap();
    fx.backend.delete_volume(&fx.path(&["v"]), 4).await.unwrap();
    assert_eq!(fx.create(&b, &["v"], RWX).await.unwrap(), Created::New);
    fx.backend.finish_volume(&b).await.unwrap();
    assert_exists(fx.create(&b, &["v"], RWX).await, &format!("{top}/v"));
    assert_exists(fx.create(&a, &["v"], RWX).await, &format!("{top}/v"));
}

/// `finish_volume` drops the record (and nothing else), and may be repeated; also for a volume
/// that never had one.
async fn finish_volume_clears_the_record_idempotently(fx: &Fx) {
    let pv = fx.pv("a");
    fx.create(&pv, &["v"], RWX).await.unwrap();
    assert!(fx.staging().join(&pv).is_dir());
    assert_eq!(fx.staged().await, [pv.as_str()]);
    fx.backend.finish_volume(&pv).await.unwrap();
    assert!(!fx.staging().join(&pv).exists());
    assert!(!fx.staging().join(format!("{pv}.tmp")).exists());
    assert!(fx.staged().await.is_empty());
    fx.backend.finish_volume(&pv).await.unwrap();
    fx.backend.finish_volume(&fx.pv("never-created")).await.unwrap();
    assert!(fx.staged().await.is_empty());
    assert_eq!(owner_mode(&fx.host(&["v"])).2, 0o777);
}

/// `staged_volumes` lists exactly the volumes created and not yet finished.
async fn staged_volumes_lists_unfinished_ones(fx: &Fx) {
    assert!(fx.staged().await.is_empty());
    let pvs: Vec<String> = ["a", "b", "c", "d"].iter().map(|n| fx.pv(n)).collect();
    for (pv, dir) in pvs.iter().zip(["va", "vb", "vc", "vd"]) {
        fx.create(pv, &[dir], RWX).await.unwrap();
    }
    assert_eq!(fx.staged().await, pvs);
    fx.backend.finish_volume(&pvs[1]).await.unwrap();
    fx.backend.finish_volume(&pvs[3]).await.unwrap();
    assert_eq!(fx.staged().await, [pvs[0].clone(), pvs[2].clone()]);
    // A refused create stages nothing.
    let e = fx.pv("e");
    assert!(fx.create(&e, &["va"], RWX).await.is_err());
    assert_eq!(fx.staged().await, [pvs[0].clone(), pvs[2].clone()]);
}

/// Archiving renames to `archived-<leaf>`, then `-2`, `-3`, ... when taken, in the same parent;
/// an existing directory (even an empty one, which NFSv3 RENAME would replace) is never
/// overwritten.
async fn archive_counts_up_and_never_overwrites(fx: &Fx) {
    let top = fx.top.as_str();
    for (i, expected) in ["archived-x", "archived-x-2", "archived-x-3"].iter().enumerate() {
        let pv = fx.pv(&format!("g{i}"));
        fx.create(&pv, &["ns", "x"], RWX).await.unwrap();
        fx.backend.finish_volume(&pv).await.unwrap();
        fx.tools
            .write(&[top, "ns", "x", "data"], format!("gen{i}").as_bytes())
            .await;
        assert_eq!(
            fx.backend.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
            Archived::To((*expected).to_owned())
        );
    }
    // Taken meanwhile: -4 (empty) and -5 (with data).
    fx.tools.mkdir_p(&[top, "ns", "archived-x-4"]).await;
    fx.tools.mkdir_p(&[top, "ns", "archived-x-5"]).await;
    fx.tools.write(&[top, "ns", "archived-x-5", "keep"], b"k").await;
    fx.tools.mkdir_p(&[top, "ns", "x"]).await;
    fx.tools.write(&[top, "ns", "x", "data"], b"gen3").await;
    assert_eq!(
        fx.backend.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
        Archived::To("archived-x-6".into())
    );
    assert_eq!(
        names(&fx.host(&["ns"])),
        [
            "archived-x",
            "archived-x-2",
            "archived-x-3",
            "archived-x-4",
            "archived-x-5",
            "archived-x-6"
        ]
    );
    for (name, content) in [
        ("archived-x", "gen0"),
        ("archived-x-2", "gen1"),
        ("archived-x-3", "gen2"),
        ("archived-x-6", "gen3"),
    ] {
        assert_eq!(
            fs::read_to_string(fx.host(&["ns", name, "data"])).unwrap(),
            content
        );
    }
    assert!(names(&fx.host(&["ns", "archived-x-4"])).is_empty());
    assert_eq!(names(&fx.host(&["ns", "archived-x-5"])), ["keep"]);
    assert_eq!(owner_mode(&fx.host(&["ns", "archived-x"])).2, 0o777);
}

/// Archiving a directory that is not there (never made, or already archived by an earlier try) is
/// `Missing`, and changes nothing.
async fn archive_of_a_missing_directory_is_missing(fx: &Fx) {
    let b = fx.backend.as_ref();
    assert_eq!(
        b.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
        Archived::Missing
    );
    assert!(!fx.host(&[]).exists());
    fx.tools.mkdir_p(&[&fx.top, "ns"]).await;
    assert_eq!(
        b.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
        Archived::Missing
    );
    fx.tools.mkdir_p(&[&fx.top, "ns", "x"]).await;
    assert_eq!(
        b.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
        Archived::To("archived-x".into())
    );
    assert_eq!(
        b.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
        Archived::Missing
    );
    assert_eq!(names(&fx.host(&["ns"])), ["archived-x"]);
}

/// Deleting a volume removes exactly its tree (files, nested directories, symlinks as links),
/// counts every entry, follows no symlink (the targets outside the export stay intact) and leaves
/// its parent and siblings alone.
async fn delete_removes_exactly_the_tree_and_never_follows_symlinks(fx: &Fx) {
    let top = fx.top.as_str();
    let outside = fx.outside.path();
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("dir/data"), b"precious").unwrap();
    fs::write(outside.join("file"), b"precious").unwrap();

    let pv = fx.pv("a");
    fx.create(&pv, &["ns", "vol"], RWX).await.unwrap();
    fx.backend.finish_volume(&pv).await.unwrap();
    let mut entries = 1; // the volume itself
    for d in ["d0", "d1", "d2"] {
        fx.tools.mkdir_p(&[top, "ns", "vol", d, "e", "f"]).await;
        entries += 3;
        for f in 0..10 {
            let f = format!("file{f}");
            fx.tools.write(&[top, "ns", "vol", d, &f], b"x").await;
            fx.tools.write(&[top, "ns", "vol", d, "e", &f], b"y").await;
            entries += 2;
        }
    }
    fx.tools
        .symlink(
            &[top, "ns", "vol", "to-dir"],
            outside.join("dir").to_str().unwrap(),
        )
        .await;
    fx.tools
        .symlink(
            &[top, "ns", "vol", "d0", "e", "to-file"],
            outside.join("file").to_str().unwrap(),
        )
        .await;
    // Relative links that climb out of the volume and the export.
    fx.tools.symlink(&[top, "ns", "vol", "up"], "../../../..").await;
    fx.tools
        .symlink(&[top, "ns", "vol", "d1", "e", "f", "up"], "../../../../..")
        .await;
    entries += 4;
    // Siblings: another volume and a file next to it.
    fx.tools.mkdir_p(&[top, "ns", "other"]).await;
    fx.tools.write(&[top, "ns", "other", "data"], b"other").await;
    fx.tools.write(&[top, "ns", "file"], b"sibling").await;

    assert_eq!(
        fx.backend
            .delete_volume(&fx.path(&["ns", "vol"]), 16)
            .await
            .unwrap(),
        Removed::Removed { entries }
    );
    assert!(fs::symlink_metadata(fx.host(&["ns", "vol"])).is_err());
    assert_eq!(names(&fx.host(&["ns"])), ["file", "other"]);
    assert_eq!(fs::read(fx.host(&["ns", "other", "data"])).unwrap(), b"other");
    assert_eq!(fs::read(fx.host(&["ns", "file"])).unwrap(), b"sibling");
    assert_eq!(names(outside), ["dir", "file"]);
    assert_eq!(names(&outside.join("dir")), ["data"]);
    assert_eq!(fs::read(outside.join("dir/data")).unwrap(), b"precious");
    assert_eq!(fs::read(outside.join("file")).unwrap(), b"precious");
    assert!(fx.backing.is_dir());

    // One at a time: the same.
    fx.tools.mkdir_p(&[top, "ns", "serial", "sub"]).await;
    fx.tools
        .symlink(&[top, "ns", "serial", "sub", "link"], outside.to_str().unwrap())
        .await;
    assert_eq!(
        fx.backend
            .delete_volume(&fx.path(&["ns", "serial"]), 1)
            .await
            .unwrap(),
        Removed::Removed { entries: 3 }
    );
    assert_eq!(names(outside), ["dir", "file"]);
}

/// Deleting what is not there is `Missing`.
async fn delete_of_a_missing_directory_is_missing(fx: &Fx) {
    let b = fx.backend.as_ref();
    assert_eq!(
        b.delete_volume(&fx.path(&["ns", "vol"]), 4).await.unwrap(),
        Removed::Missing
    );
    fx.tools.mkdir_p(&[&fx.top, "ns"]).await;
    assert_eq!(
        b.delete_volume(&fx.path(&["ns", "vol"]), 4).await.unwrap(),
        Removed::Missing
    );
    fx.tools.mkdir_p(&[&fx.top, "ns", "vol"]).await;
    assert_eq!(
        b.delete_volume(&fx.path(&["ns", "vol"]), 4).await.unwrap(),
        Removed::Removed { entries: 1 }
    );
    assert_eq!(
        b.delete_volume(&fx.path(&["ns", "vol"]), 4).await.unwrap(),
        Removed::Missing
    );
    assert!(names(&fx.host(&["ns"])).is_empty());
}

/// A symlinked parent is refused by every operation, and nothing happens at its target.
async fn symlinked_parent_is_refused(fx: &Fx) {
    let top = fx.top.as_str();
    let outside = fx.outside.path();
    fs::create_dir(outside.join("vol")).unwrap();
    fx.tools.mkdir_p(&[top]).await;
    fx.tools.symlink(&[top, "link"], outside.to_str().unwrap()).await;
    let pv = fx.pv("a");
    let refused = |r: Result<String, StorageFailure>| {
        let err = r.expect_err("a symlinked parent must be refused");
        assert!(
            err.to_string().contains("refusing to follow or touch it"),
            "{err}"
        );
    };
    refused(
        fx.create(&pv, &["link", "new"], RWX)
            .await
            .map(|c| format!("{c:?}")),
    );
    refused(fx.create(&pv, &["link"], RWX).await.map(|c| format!("{c:?}")));
    refused(
        fx.backend
            .archive_volume(&fx.path(&["link", "vol"]))
            .await
            .map(|a| format!("{a:?}")),
    );
    refused(
        fx.backend
            .delete_volume(&fx.path(&["link", "vol"]), 4)
            .await
            .map(|r| format!("{r:?}")),
    );
    assert_eq!(names(outside), ["vol"]);
    assert!(fs::symlink_metadata(fx.host(&["link"])).unwrap().is_symlink());
    assert!(!fx.staged().await.contains(&pv));
}

/// Capacity is the backing file system's: total >= available > 0.
async fn capacity_reports_total_and_available(fx: &Fx) {
    let c = fx.backend.capacity().await.unwrap();
    assert!(c.available_bytes > 0, "{c:?}");
    assert!(
        c.total_bytes >= c.free_bytes && c.free_bytes >= c.available_bytes,
        "{c:?}"
    );
    let st = nix::sys::statvfs::statvfs(&fx.backing).unwrap();
    #[allow(clippy::useless_conversion)] // the statvfs field types differ between platforms
    let total = u64::from(st.blocks()) * u64::from(st.fragment_size());
    assert_eq!(c.total_bytes, total, "{c:?}");
}

/// The write probe creates and removes its directory in the staging area: nothing is left, no
/// volume appears staged; repeated and concurrent probes too.
async fn probe_writable_leaves_nothing_behind(fx: &Fx) {
    let tag = unique("probe");
    fx.backend.probe_writable(&tag).await.unwrap();
    fx.backend.probe_writable(&tag).await.unwrap();
    let tags: Vec<String> = (0..8).map(|i| format!("{tag}-{i}")).collect();
    futures::future::try_join_all(tags.iter().map(|t| fx.backend.probe_writable(t)))
        .await
        .unwrap();
    assert!(fx.staging().is_dir());
    let left: Vec<String> = names(&fx.staging())
        .into_iter()
        .filter(|n| n.contains(&tag))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!names(&fx.backing).iter().any(|n| n.contains(&tag)));
    assert!(
        !(fx.backend.staged_volumes().await.unwrap())
            .iter()
            .any(|n| n.contains(&tag))
    );
}

/// Runs `$scenario` as `$mounted` (mounted backend, temporary directory) and `$direct` (direct
/// backend, the test server's /export).
macro_rules! conformance {
    ($($scenario:ident => $mounted:ident, $direct:ident;)*) => {$(
        #[tokio::test]
        async fn $mounted() {
            let fx = Fx::mounted(stringify!($scenario));
            $scenario(&fx).await;
        }

        #[tokio::test]
        async fn $direct() {
            let Some(fx) = Fx::direct(stringify!($scenario)).await else {
                return;
            };
            $scenario(&fx).await;
            fx.cleanup().await;
        }
    )*};
}

conformance! {
    create_applies_mode_and_owner_exactly =>
        mounted_create_applies_mode_and_owner_exactly, direct_create_applies_mode_and_owner_exactly;
    foreign_directory_is_refused_and_untouched =>
        mounted_foreign_directory_is_refused_and_untouched,
        direct_foreign_directory_is_refused_and_untouched;
    retry_adopts_only_its_own_attempt =>
        mounted_retry_adopts_only_its_own_attempt, direct_retry_adopts_only_its_own_attempt;
    finish_volume_clears_the_record_idempotently =>
        mounted_finish_volume_clears_the_record_idempotently,
        direct_finish_volume_clears_the_record_idempotently;
    staged_volumes_lists_unfinished_ones =>
        mounted_staged_volumes_lists_unfinished_ones, direct_staged_volumes_lists_unfinished_ones;
    archive_counts_up_and_never_overwrites =>
        mounted_archive_counts_up_and_never_overwrites, direct_archive_counts_up_and_never_overwrites;
    archive_of_a_missing_directory_is_missing =>
        mounted_archive_of_a_missing_directory_is_missing,
        direct_archive_of_a_missing_directory_is_missing;
    delete_removes_exactly_the_tree_and_never_follows_symlinks =>
        mounted_delete_removes_exactly_the_tree_and_never_follows_symlinks,
        direct_delete_removes_exactly_the_tree_and_never_follows_symlinks;
    delete_of_a_missing_directory_is_missing =>
        mounted_delete_of_a_missing_directory_is_missing, direct_delete_of_a_missing_directory_is_missing;
    symlinked_parent_is_refused => mounted_symlinked_parent_is_refused, direct_symlinked_parent_is_refused;
    capacity_reports_total_and_available =>
        mounted_capacity_reports_total_and_available, direct_capacity_reports_total_and_available;
    probe_writable_leaves_nothing_behind =>
        mounted_probe_writable_leaves_nothing_behind, direct_probe_writable_leaves_nothing_behind;
}

// ---- owners: what differs between the backends ----

/// The mounted backend running as root sets any owner (chown with CAP_CHOWN).
#[tokio::test]
async fn mounted_chown_as_root_sets_the_owner() {
    if !is_root() {
        eprintln!("*** SKIPPED mounted_chown_as_root_sets_the_owner: not running as root ***");
        return;
    }
    let fx = Fx::mounted("chown");
    let uid_only = DirAttrs {
        mode: 0o700,
        uid: Some(1001),
        gid: None,
    };
    fx.create(&fx.pv("a"), &["uid-only"], uid_only).await.unwrap();
    assert_eq!(owner_mode(&fx.host(&["uid-only"])), (1001, 0, 0o700));
    let gid_only = DirAttrs {
        mode: 0o2775,
        uid: None,
        gid: Some(3000),
    };
    fx.create(&fx.pv("b"), &["gid-only"], gid_only).await.unwrap();
    assert_eq!(owner_mode(&fx.host(&["gid-only"])), (0, 3000, 0o2775));
}

/// The direct backend on a root_squash export: chown is refused (root is squashed to 65534), with
/// an error that names root_squash and what to change; nothing is placed, the record stays for a
/// retry. Without an owner the volume is made, owned by the anonymous user, mode exact.
#[tokio::test]
async fn direct_chown_on_a_root_squash_export_names_root_squash() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let backend = DirectBackend::new(env.export(EXPORT_ROOTSQUASH), env.options(&[]));
    let top = unique("squash");
    let pv = unique("pv");
    let err = backend
        .create_volume(&pv, &p(&[&top, "vol"]), OWNED)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("root_squash") && msg.contains("no_root_squash"),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!("change owner of {top}/vol: NFS3ERR_PERM")),
        "{msg}"
    );
    assert!(!env.rootsquash_dir.join(&top).join("vol").exists());
    assert!(backend.staged_volumes().await.unwrap().contains(&pv));
    backend.finish_volume(&pv).await.unwrap();
    assert!(!backend.staged_volumes().await.unwrap().contains(&pv));

    let pv = unique("pv");
    let no_owner = DirAttrs {
        uid: None,
        gid: None,
        ..OWNED
    };
    assert_eq!(
        backend
            .create_volume(&pv, &p(&[&top, "plain"]), no_owner)
            .await
            .unwrap(),
        Created::New
    );
    assert_eq!(
        owner_mode(&env.rootsquash_dir.join(&top).join("plain")),
        (65534, 65534, 0o2770)
    );
    backend.finish_volume(&pv).await.unwrap();
    assert_eq!(
        backend.delete_volume(&p(&[&top]), 4).await.unwrap(),
        Removed::Removed { entries: 2 }
    );
}
