//! Scenarios of whole trees: a volume filled with a copy of another before it is placed (a clone),
//! resumed after a crash, of a source that changes meanwhile, and across transports; and what a
//! volume's tree takes (usage).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nfs_subdir_provisioner::core::staging::{COPYING_FILE, INODE_FILE, STAGING_DIR, VOL_DIR};
use nfs_subdir_provisioner::storage::{
    Backend, Copied, Created, Existing, Fill, Pace, Progress, Refusal, StorageFailure, Usage,
};

use crate::fixture::*;

/// A time nothing else sets (2001-09-09): copied times are told from the copy's own.
const PAST: u32 = 1_000_000_000;

/// 3 MiB and a bit of bytes that are not zeros: several reads and writes of any transfer size.
fn big() -> Vec<u8> {
    (0..3 * 1024 * 1024 + 17u32)
        .map(|i| (i % 251) as u8 | 1)
        .collect()
}

/// Zeros, a few bytes, and zeros to the end: a copy makes holes of the zeros and must still end
/// where the source ends.
fn sparse() -> Vec<u8> {
    let mut data = vec![0; 1024 * 1024];
    data.extend_from_slice(b"in the middle");
    data.extend(vec![0; 70_000]);
    data
}

impl Fx {
    async fn clone_from(
        &self,
        pv: &str,
        source: &[&str],
        target: &[&str],
        concurrency: usize,
    ) -> (Result<Created, StorageFailure>, Copied) {
        clone_between(self.backend.as_ref(), self, pv, source, self, target, concurrency).await
    }
}

/// Clones `source` (below `from`'s top directory) into `target` (below `to`'s) on `to`.
async fn clone_between(
    source_backend: &dyn Backend,
    from: &Fx,
    pv: &str,
    source: &[&str],
    to: &Fx,
    target: &[&str],
    concurrency: usize,
) -> (Result<Created, StorageFailure>, Copied) {
    let progress = Arc::new(Progress::default());
    let fill = Fill {
        source: source_backend,
        path: &from.path(source),
        concurrency,
        progress: Arc::clone(&progress),
    };
    let path = to.path(target);
    let created = match to
        .backend
        .create_volume(pv, &path, RWX, Existing::Refuse, Some(&fill))
        .await
    {
        Ok(Created::Staged) => {
            to.backend
                .create_volume(pv, &path, RWX, Existing::Refuse, None)
                .await
        }
        other => other,
    };
    (created, progress.copied())
}

/// Every kind of entry, below `top/<src>`: regular files (empty, small, larger than any transfer,
/// ending in zeros), nested directories (one read-only), owners and a setuid bit, past times,
/// symlinks (relative, absolute, climbing out of the volume and the export, dangling, to a
/// directory of the volume, to a directory outside the export), a hard link, a FIFO and a socket.
async fn every_kind_of_entry(fx: &Fx, src: &str) {
    let top = fx.top.as_str();
    let t = &fx.tools;
    fs::write(fx.outside.path().join("secret"), b"outside the export").unwrap();
    t.mkdir_p(&[top, src, "dir", "sub"]).await;
    t.mkdir_p(&[top, src, "empty-dir"]).await;
    t.write(&[top, src, "a.txt"], b"hello\n").await;
    t.write(&[top, src, "empty"], b"").await;
    t.write(&[top, src, "big.bin"], &big()).await;
    t.write(&[top, src, "sparse.bin"], &sparse()).await;
    t.write(&[top, src, "dir", "sub", "deep.txt"], b"deep").await;
    t.write(&[top, src, "setuid"], b"#!/bin/true\n").await;
    t.symlink(&[top, src, "rel"], "a.txt").await;
    t.symlink(&[top, src, "abs"], "/etc/passwd").await;
    t.symlink(&[top, src, "escape"], "../../../../../../../etc").await;
    t.symlink(&[top, src, "dir", "sub", "up"], "../../..").await;
    t.symlink(&[top, src, "dangling"], "nowhere/at/all").await;
    t.symlink(&[top, src, "dirlink"], "dir").await;
    t.symlink(&[top, src, "out"], fx.outside.path().to_str().unwrap())
        .await;
    t.hard_link(&[top, src, "a.txt"], &[top, src, "hard"]).await;
    t.special(&[top, src, "fifo"], false).await;
    t.special(&[top, src, "sock"], true).await;
    if fx.can_chown() {
        t.chown(&[top, src, "a.txt"], Some(1000), Some(2000)).await;
        t.chown(&[top, src, "setuid"], Some(1000), Some(2000)).await;
        t.chown(&[top, src, "dir", "sub"], Some(1001), Some(2001)).await;
        t.chown(&[top, src, "rel"], Some(1002), Some(2002)).await;
    }
    t.chmod(&[top, src, "a.txt"], 0o640).await;
    t.chmod(&[top, src, "setuid"], 0o4755).await;
    t.chmod(&[top, src, "dir", "sub"], 0o700).await;
    t.chmod(&[top, src, "empty-dir"], 0o1777).await;
    t.set_times(&[top, src, "a.txt"], PAST).await;
    t.set_times(&[top, src, "big.bin"], PAST + 1).await;
    t.set_times(&[top, src, "dir", "sub"], PAST + 2).await;
    // Last: nothing is made in it after it is read-only.
    t.chmod(&[top, src, "dir"], 0o555).await;
}

/// `copy` holds what `source` holds, entry by entry, but FIFOs and sockets: the same names, types,
/// contents, symlink targets, permission bits, modification times, and owners (`owners`).
/// Returns the names (relative paths) compared.
fn assert_same_tree(source: &Path, copy: &Path, owners: bool) -> Vec<String> {
    let mut seen = Vec::new();
    compare(source, copy, "", owners, &mut seen);
    seen
}

fn compare(source: &Path, copy: &Path, rel: &str, owners: bool, seen: &mut Vec<String>) {
    let mut expected: Vec<String> = Vec::new();
    for name in names(source) {
        let (s, c) = (source.join(&name), copy.join(&name));
        let here = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let sm = fs::symlink_metadata(&s).unwrap();
        let ft = sm.file_type();
        if ft.is_fifo() || ft.is_socket() || ft.is_char_device() || ft.is_block_device() {
            assert!(
                fs::symlink_metadata(&c).is_err(),
                "{here}: a special file was copied"
            );
            continue;
        }
        expected.push(name.clone());
        let cm = fs::symlink_metadata(&c).unwrap_or_else(|e| panic!("{here} not copied: {e}"));
        assert_eq!(ft, cm.file_type(), "{here}: type");
        if ft.is_symlink() {
            assert_eq!(
                fs::read_link(&s).unwrap(),
                fs::read_link(&c).unwrap(),
                "{here}: target"
            );
        } else {
            assert_eq!(sm.mode() & 0o7777, cm.mode() & 0o7777, "{here}: mode");
            assert_eq!(
                (sm.mtime(), sm.mtime_nsec()),
                (cm.mtime(), cm.mtime_nsec()),
                "{here}: modification time"
            );
        }
        if owners {
            assert_eq!((sm.uid(), sm.gid()), (cm.uid(), cm.gid()), "{here}: owner");
        }
        if ft.is_file() {
            assert!(fs::read(&s).unwrap() == fs::read(&c).unwrap(), "{here}: content");
            assert_eq!(sm.len(), cm.len(), "{here}: length");
        }
        if ft.is_dir() {
            compare(&s, &c, &here, owners, seen);
        }
        seen.push(here);
    }
    assert_eq!(names(copy), expected, "{rel}: the copy holds other names");
}

// ---- clone ----

/// A clone holds a copy of every kind of entry (see [`every_kind_of_entry`]), symlinks as links
/// that were never followed, FIFOs and sockets left out and counted, hard links as separate
/// files; the volume itself gets the class's mode, nothing outside the export is touched, and the
/// staging record goes once the volume is finished.
pub async fn clone_copies_every_kind_of_entry(fx: &Fx) {
    every_kind_of_entry(fx, "src").await;
    let pv = fx.pv("clone");
    let (created, copied) = fx.clone_from(&pv, &["src"], &["ns", "clone"], 8).await;
    assert_eq!(created.unwrap(), Created::New);
    let compared = assert_same_tree(&fx.host(&["src"]), &fx.host(&["ns", "clone"]), fx.can_chown());
    assert_eq!(compared.len(), 17, "{compared:?}");
    assert_eq!(
        copied,
        Copied {
            entries: 17,
            bytes: (6 + 3 * 1024 * 1024 + 17 + sparse().len() + 4 + 12 + 6) as u64,
            hard_links: 2,
            fifos: 1,
            sockets: 1,
            devices: 0,
            kept: 0,
            owners_refused: false,
        }
    );
    // Hard links became two files.
    assert_ne!(
        ino(&fx.host(&["ns", "clone", "a.txt"])),
        ino(&fx.host(&["ns", "clone", "hard"]))
    );
    assert_eq!(owner_mode(&fx.host(&["ns", "clone"])).2, 0o777);
    assert_eq!(names(fx.outside.path()), ["secret"]);
    assert_eq!(
        fs::read(fx.outside.path().join("secret")).unwrap(),
        b"outside the export"
    );
    // Placed once: a retry (its PV not made yet) adopts it and copies nothing.
    assert_eq!(fx.staged().await, std::slice::from_ref(&pv));
    let (again, copied) = fx.clone_from(&pv, &["src"], &["ns", "clone"], 8).await;
    assert_eq!(again.unwrap(), Created::Adopted);
    assert_eq!(copied, Copied::default());
    fx.backend.finish_volume(&pv).await.unwrap();
    assert!(fx.staged().await.is_empty());
    // The source is as it was.
    assert_same_tree(&fx.host(&["src"]), &fx.host(&["ns", "clone"]), fx.can_chown());
}

/// A crash left a partial copy staged: the retry keeps the files that attempt finished (same
/// length and modification time), redoes the rest (a file cut short, one whose times were never
/// set), replaces what is in the way (a file where a directory belongs, a symlink to the wrong
/// place) and places a whole copy.
pub async fn clone_resumes_what_an_interrupted_copy_left(fx: &Fx) {
    let top = fx.top.as_str();
    let t = &fx.tools;
    t.mkdir_p(&[top, "src", "dir"]).await;
    t.write(&[top, "src", "done.txt"], b"finished before the crash")
        .await;
    t.write(&[top, "src", "cut.txt"], b"cut short by the crash").await;
    t.write(&[top, "src", "untimed.txt"], b"times never set").await;
    t.write(&[top, "src", "dir", "f"], b"in a directory").await;
    t.symlink(&[top, "src", "link"], "done.txt").await;
    t.set_times(&[top, "src", "done.txt"], PAST).await;
    t.set_times(&[top, "src", "cut.txt"], PAST).await;
    t.set_times(&[top, "src", "untimed.txt"], PAST).await;

    let pv = fx.pv("resumed");
    fx.record(&pv, &["clone"], true).await;
    t.write(&[STAGING_DIR, &pv, COPYING_FILE], b"").await;
    let vol = [STAGING_DIR, pv.as_str(), VOL_DIR];
    let staged = |name: &'static str| [vol[0], vol[1], vol[2], name];
    t.write(&staged("done.txt"), b"finished before the crash").await;
    t.set_times(&staged("done.txt"), PAST).await;
    t.write(&staged("cut.txt"), b"cut short").await;
    t.write(&staged("untimed.txt"), b"times never set").await;
    t.write(&staged("dir"), b"a file where a directory belongs").await;
    t.symlink(&staged("link"), "elsewhere").await;
    // Never placed unfinished, by a create that does not copy.
    let err = fx.create(&pv, &["clone"], RWX).await.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::CopyUnfinished { .. })),
        "{err:?}"
    );
    assert!(!fx.host(&["clone"]).exists());

    let (created, copied) = fx.clone_from(&pv, &["src"], &["clone"], 4).await;
    assert_eq!(created.unwrap(), Created::New);
    assert_eq!(copied.kept, 1, "{copied:?}");
    assert_same_tree(&fx.host(&["src"]), &fx.host(&["clone"]), false);
    fx.backend.finish_volume(&pv).await.unwrap();
    assert!(fx.staged().await.is_empty());
}

/// A source that changes during the copy (files removed and made while it runs) is copied
/// without an error: every file in the copy holds what the source's file of that name held, and
/// every file the changes never touched is there.
pub async fn clone_of_a_source_that_changes_meanwhile(fx: &Fx) {
    let top = fx.top.as_str();
    let content = |name: &str| format!("the content of {name}").into_bytes();
    let dirs = ["a", "b", "c"];
    for d in dirs {
        fx.tools.mkdir_p(&[top, "src", d]).await;
        for i in 0..150 {
            let name = format!("f{i}");
            fx.tools.write(&[top, "src", d, &name], &content(&name)).await;
        }
    }
    let pv = fx.pv("moving");
    let done = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let changes = async {
        let mut round = 0;
        while !done.load(Ordering::Acquire) && round < 150 {
            for d in dirs {
                if round % 2 == 1 {
                    fx.tools.remove(&[top, "src", d, &format!("f{round}")]).await;
                }
                let name = format!("new{round}");
                fx.tools.write(&[top, "src", d, &name], &content(&name)).await;
            }
            round += 1;
            rounds.store(round, Ordering::Release);
            tokio::task::yield_now().await;
        }
    };
    let copy = async {
        let result = fx.clone_from(&pv, &["src"], &["clone"], 2).await;
        done.store(true, Ordering::Release);
        (result, rounds.load(Ordering::Acquire))
    };
    let (((created, _), changed), ()) = tokio::join!(copy, changes);
    assert_eq!(created.unwrap(), Created::New);
    assert!(changed > 0, "the source did not change while it was copied");
    eprintln!("{changed} rounds of changes while the copy ran");
    for d in dirs {
        let copied = names(&fx.host(&["clone", d]));
        for name in &copied {
            assert_eq!(
                fs::read(fx.host(&["clone", d, name])).unwrap(),
                content(name),
                "{d}/{name}"
            );
        }
        let copied: HashSet<&String> = copied.iter().collect();
        for i in (0..150).step_by(2) {
            assert!(
                copied.contains(&format!("f{i}")),
                "{d}/f{i} untouched but not copied"
            );
        }
    }
}

/// Refused before anything is copied or staged: a target that is taken. Refused by the copy: a
/// source that is not there, or is a symlink (never followed out of the export).
pub async fn clone_refuses_a_taken_target_and_a_missing_or_symlinked_source(fx: &Fx) {
    let top = fx.top.as_str();
    fx.tools.mkdir_p(&[top, "src"]).await;
    fx.tools.write(&[top, "src", "f"], b"data").await;
    fx.tools.mkdir_p(&[top, "taken"]).await;
    let (taken, copied) = fx.clone_from(&fx.pv("a"), &["src"], &["taken"], 4).await;
    assert!(taken.unwrap_err().is_taken());
    assert_eq!(copied, Copied::default());
    assert!(names(&fx.host(&["taken"])).is_empty());
    assert!(fx.staged().await.is_empty());

    let (missing, _) = fx.clone_from(&fx.pv("b"), &["nothing"], &["b"], 4).await;
    let err = missing.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::Vanished { op: "copy from", .. })),
        "{err:?}"
    );
    fs::write(fx.outside.path().join("secret"), b"outside").unwrap();
    fx.tools
        .symlink(&[top, "link"], fx.outside.path().to_str().unwrap())
        .await;
    let (linked, _) = fx.clone_from(&fx.pv("c"), &["link"], &["c"], 4).await;
    let err = linked.unwrap_err();
    assert!(
        matches!(
            err.refusal(),
            Some(Refusal::NotADirectory { op: "copy from", .. })
        ),
        "{err:?}"
    );
    // Neither was placed; their records stay until the claims are retried or gone.
    assert_eq!(names(&fx.host(&[])), ["link", "src", "taken"]);
    for pv in [fx.pv("b"), fx.pv("c")] {
        assert!(names(&fx.staging().join(&pv).join(VOL_DIR)).is_empty());
        assert!(fx.staging().join(&pv).join(INODE_FILE).exists());
        fx.backend.finish_volume(&pv).await.unwrap();
    }
}

// ---- usage ----

/// What the backing directory's tree at `path` takes, counted as `du` does (each inode once,
/// links not followed), from the host's own `lstat`.
fn du(path: &Path) -> Usage {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>, u: &mut Usage) {
        let md = fs::symlink_metadata(path).unwrap();
        if seen.insert((md.dev(), md.ino())) {
            u.used_bytes += md.blocks() * 512;
            u.inodes += 1;
            if md.is_file() {
                u.file_bytes += md.len();
            }
        }
        if md.is_dir() {
            for entry in fs::read_dir(path).unwrap() {
                walk(&entry.unwrap().path(), seen, u);
            }
        }
    }
    let mut usage = Usage::default();
    walk(path, &mut HashSet::new(), &mut usage);
    usage
}

/// A known tree measures exactly what `du` says of it on the server's disk (hard links once,
/// symlinks as themselves, FIFOs and sockets as inodes); a missing volume measures nothing; a
/// symlinked one is refused, never followed.
pub async fn usage_measures_a_known_tree_exactly(fx: &Fx) {
    every_kind_of_entry(fx, "vol").await;
    fx.tools.mkdir_p(&[&fx.top, "vol", "many"]).await;
    fx.tools
        .create_files(
            &[&fx.top, "vol", "many"],
            (0..300).map(|i| format!("f{i}")).collect(),
        )
        .await;
    let expected = du(&fx.host(&["vol"]));
    assert_eq!(expected.inodes, 19 + 300 + 1, "{expected:?}");
    for concurrency in [1, 4] {
        let measured = fx
            .backend
            .measure_volume(&fx.path(&["vol"]), concurrency, Pace::per_second(100_000))
            .await
            .unwrap();
        assert_eq!(measured, Some(expected), "concurrency {concurrency}");
    }
    assert_eq!(
        fx.backend
            .measure_volume(&fx.path(&["missing"]), 4, Pace::per_second(100_000))
            .await
            .unwrap(),
        None
    );
    fx.tools
        .symlink(&[&fx.top, "link"], fx.outside.path().to_str().unwrap())
        .await;
    let err = fx
        .backend
        .measure_volume(&fx.path(&["link"]), 4, Pace::per_second(100_000))
        .await
        .unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::NotADirectory { op: "measure", .. })),
        "{err:?}"
    );
}

/// The regular files of a tree and their contents, by path, for comparing trees by content alone.
pub fn contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        for name in names(dir) {
            let path = dir.join(&name);
            let here = format!("{rel}/{name}");
            let md = fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                walk(&path, &here, out);
            } else if md.is_file() {
                out.insert(here, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// A clone from a mounted export into an NFS server's, and back: the copy crosses transports.
pub async fn clone_across_transports(mounted: &Fx, direct: &Fx) {
    every_kind_of_entry(mounted, "src").await;
    let (there, copied) = clone_between(
        mounted.backend.as_ref(),
        mounted,
        &direct.pv("there"),
        &["src"],
        direct,
        &["there"],
        8,
    )
    .await;
    assert_eq!(there.unwrap(), Created::New);
    assert_eq!((copied.entries, copied.fifos, copied.sockets), (17, 1, 1));
    let owners = mounted.can_chown();
    assert_same_tree(&mounted.host(&["src"]), &direct.host(&["there"]), owners);
    let (back, _) = clone_between(
        direct.backend.as_ref(),
        direct,
        &mounted.pv("back"),
        &["there"],
        mounted,
        &["back"],
        8,
    )
    .await;
    assert_eq!(back.unwrap(), Created::New);
    assert_same_tree(&direct.host(&["there"]), &mounted.host(&["back"]), owners);
    assert_eq!(
        contents(&mounted.host(&["src"])),
        contents(&mounted.host(&["back"]))
    );
    direct.backend.finish_volume(&direct.pv("there")).await.unwrap();
}
