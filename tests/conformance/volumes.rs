//! Scenarios of one volume's life: create (exclusive, adopted, reused), archive, delete,
//! refusals, capacity and the probe.

use std::fs;
use std::path::{Path, PathBuf};

use crate::nfs::{p, unique};
use nfs_subdir_provisioner::core::naming::NAME_MAX;
use nfs_subdir_provisioner::core::params::DirMode;
use nfs_subdir_provisioner::core::staging::{
    CLAIM_MODE, INODE_FILE, PLACING_FILE, PROBE_PREFIX, STAGING_DIR, TARGET_FILE, TMP_SUFFIX, VOL_DIR,
};
use nfs_subdir_provisioner::storage::posix::PosixError;
use nfs_subdir_provisioner::storage::{Archived, Created, Existing, Refusal, Removed};
use nix::errno::Errno;

use crate::fixture::*;

// ---- create ----

/// Exclusive create applies mode 02770 and owner 1000:2000 exactly (v3 MKDIR and chown both drop
/// setgid; the umask would take bits away), missing parents get 0755 and existing ones are
/// reused, and the staging record (target line, inode of the volume, the placing marker) stays
/// until `finish_volume`, which may be repeated.
pub async fn create_applies_mode_and_owner_exactly(fx: &Fx) {
    let owner = fx.can_chown();
    let dir = if owner {
        OWNED
    } else {
        eprintln!("not root: the mounted transport cannot chown; checking the mode only");
        DirMode {
            uid: None,
            gid: None,
            ..OWNED
        }
    };
    let pv = fx.pv("a");
    let path = ["ns", "team", "vol"];
    assert_eq!(fx.create(&pv, &path, dir).await.unwrap(), Created::New);
    let vol = fx.host(&path);
    assert!(fs::symlink_metadata(&vol).unwrap().is_dir());
    let (uid, gid, mode) = owner_mode(&vol);
    assert_eq!(mode, 0o2770);
    if owner {
        assert_eq!((uid, gid), (1000, 2000));
    }
    for parent in [&[][..], &["ns"], &["ns", "team"]] {
        assert_eq!(owner_mode(&fx.host(parent)).2, 0o755, "{parent:?}");
    }
    assert_eq!(owner_mode(&fx.staging()).2, 0o700);
    assert!(names(&vol).is_empty());
    assert_eq!(fx.staged().await, [pv.as_str()]);
    assert_eq!(fx.backend.staged_target(&pv).await.unwrap(), Some(fx.path(&path)));
    // The record's layout is the same over both transports: the target line, the inode of the
    // volume; the volume itself has left it. The placing marker only where placing claims the
    // target first (NFS: its RENAME replaces an empty directory).
    let record = fx.staging().join(&pv);
    if fx.is_nfs() {
        assert_eq!(names(&record), [INODE_FILE, PLACING_FILE, TARGET_FILE]);
    } else {
        assert_eq!(names(&record), [INODE_FILE, TARGET_FILE]);
    }
    assert_eq!(
        fs::read_to_string(record.join(TARGET_FILE)).unwrap(),
        format!("{}\n", fx.shown(&path))
    );
    assert_eq!(
        fs::read_to_string(record.join(INODE_FILE)).unwrap(),
        format!("{}\n", ino(&vol))
    );

    // A sibling in the same parents: they are reused as they are.
    let sibling = fx.pv("b");
    assert_eq!(
        fx.create(&sibling, &["ns", "team", "vol2"], RWX).await.unwrap(),
        Created::New
    );
    assert_eq!(names(&fx.host(&["ns", "team"])), ["vol", "vol2"]);
    assert_eq!(owner_mode(&fx.host(&["ns", "team", "vol2"])).2, 0o777);

    fx.backend.finish_volume(&pv).await.unwrap();
    fx.backend.finish_volume(&pv).await.unwrap();
    assert!(!record.exists());
    assert_eq!(fx.backend.staged_target(&pv).await.unwrap(), None);
    assert_eq!(fx.staged().await, [sibling.as_str()]);
    assert!(vol.is_dir());

    // A plain mode without owner: exactly that, whatever the umask; owned by the provisioner.
    let plain = fx.pv("c");
    let sticky = DirMode { mode: 0o1777, ..RWX };
    assert_eq!(fx.create(&plain, &["plain"], sticky).await.unwrap(), Created::New);
    let me = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    let expected_owner = if fx.is_nfs() { (0, 0) } else { me };
    assert_eq!(
        owner_mode(&fx.host(&["plain"])),
        (expected_owner.0, expected_owner.1, 0o1777)
    );
}

/// Below a setgid parent a volume without a gid gets the parent's group (as mkdir there would
/// give it) and still exactly its mode; one with a gid gets that gid and setgid if asked for.
pub async fn setgid_parent_passes_its_group_on_and_the_mode_stays_exact(fx: &Fx) {
    if !fx.can_chown() {
        eprintln!("*** SKIPPED setgid parent scenario: the mounted transport is not running as root ***");
        return;
    }
    let top = fx.top.as_str();
    fx.tools.mkdir_p(&[top, "grp"]).await;
    fx.tools.chown(&[top, "grp"], Some(0), Some(3000)).await;
    fx.tools.chmod(&[top, "grp"], 0o2775).await;
    assert_eq!(
        fx.create(&fx.pv("a"), &["grp", "a"], RWX).await.unwrap(),
        Created::New
    );
    let gid_only = DirMode {
        mode: 0o2770,
        uid: None,
        gid: Some(2000),
    };
    assert_eq!(
        fx.create(&fx.pv("b"), &["grp", "b"], gid_only).await.unwrap(),
        Created::New
    );
    let sticky = DirMode { mode: 0o1777, ..RWX };
    assert_eq!(
        fx.create(&fx.pv("c"), &["c"], sticky).await.unwrap(),
        Created::New
    );
    let (_, gid, mode) = owner_mode(&fx.host(&["grp", "a"]));
    assert_eq!((gid, mode), (3000, 0o777));
    let (_, gid, mode) = owner_mode(&fx.host(&["grp", "b"]));
    assert_eq!((gid, mode), (2000, 0o2770));
    assert_eq!(owner_mode(&fx.host(&["c"])).2, 0o1777);
}

/// A directory that exists at the target and was not made for the volume is refused, and left
/// exactly as it was, without a staging record; a file there is a non-directory in the way.
pub async fn foreign_directory_is_refused_and_untouched(fx: &Fx) {
    let top = fx.top.as_str();
    fx.tools.mkdir_p(&[top, "taken"]).await;
    fx.tools.write(&[top, "taken", "data"], b"someone else's").await;
    fx.tools.chmod(&[top, "taken"], 0o750).await;
    let before = owner_mode(&fx.host(&["taken"]));
    let before_ino = ino(&fx.host(&["taken"]));
    let pv = fx.pv("a");
    assert_taken(fx.create(&pv, &["taken"], OWNED).await, &fx.shown(&["taken"]));
    assert_eq!(owner_mode(&fx.host(&["taken"])), before);
    assert_eq!(ino(&fx.host(&["taken"])), before_ino);
    assert_eq!(before.2, 0o750);
    assert_eq!(names(&fx.host(&["taken"])), ["data"]);
    assert_eq!(fs::read(fx.host(&["taken", "data"])).unwrap(), b"someone else's");
    assert!(fx.staged().await.is_empty());

    fx.tools.write(&[top, "file"], b"x").await;
    assert_not_a_directory(
        fx.create(&pv, &["file"], RWX).await,
        "create directory",
        &fx.shown(&["file"]),
    );
    assert_eq!(fs::read(fx.host(&["file"])).unwrap(), b"x");
    assert!(fx.staged().await.is_empty());
}

/// With reuse allowed, an existing directory is taken as it is (contents, inode, owner and mode
/// untouched, no staging record left once finished); a symlink or a file at the path is still
/// refused, and a symlink among the parents is never followed.
pub async fn existing_directory_is_reused_as_it_is_when_allowed(fx: &Fx) {
    let top = fx.top.as_str();
    fx.tools.mkdir_p(&[top, "ns", "kept"]).await;
    fx.tools.write(&[top, "ns", "kept", "data"], b"from before").await;
    fx.tools.chmod(&[top, "ns", "kept"], 0o750).await;
    let before = owner_mode(&fx.host(&["ns", "kept"]));
    let before_ino = ino(&fx.host(&["ns", "kept"]));
    let pv = fx.pv("a");
    let reuse = |rest: &'static [&'static str], dir| {
        let (pv, path) = (pv.clone(), fx.path(rest));
        async move {
            fx.backend
                .create_volume(&pv, &path, dir, Existing::Reuse, None)
                .await
        }
    };
    assert_eq!(reuse(&["ns", "kept"], OWNED).await.unwrap(), Created::Reused);
    assert_eq!(
        owner_mode(&fx.host(&["ns", "kept"])),
        before,
        "owner and mode as they were"
    );
    assert_eq!(ino(&fx.host(&["ns", "kept"])), before_ino);
    assert_eq!(
        fs::read(fx.host(&["ns", "kept", "data"])).unwrap(),
        b"from before"
    );
    // Idempotent: a retry reuses again.
    assert_eq!(reuse(&["ns", "kept"], OWNED).await.unwrap(), Created::Reused);
    fx.backend.finish_volume(&fx.pv("a")).await.unwrap();
    assert!(fx.staged().await.is_empty());
    // A missing directory is made as usual.
    assert_eq!(reuse(&["ns", "fresh"], RWX).await.unwrap(), Created::New);
    fx.backend.finish_volume(&fx.pv("a")).await.unwrap();

    fx.tools
        .symlink(&[top, "ns", "link"], &fx.outside.path().display().to_string())
        .await;
    assert_not_a_directory(
        reuse(&["ns", "link"], RWX).await,
        "create directory",
        &fx.shown(&["ns", "link"]),
    );
    fx.tools
        .symlink(&[top, "via"], &fx.host(&["ns"]).display().to_string())
        .await;
    assert!(
        reuse(&["via", "kept"], RWX).await.is_err(),
        "a symlinked parent is not followed"
    );
    fx.tools.write(&[top, "ns", "file"], b"x").await;
    assert_not_a_directory(
        reuse(&["ns", "file"], RWX).await,
        "create directory",
        &fx.shown(&["ns", "file"]),
    );
    fx.backend.finish_volume(&fx.pv("a")).await.unwrap();
    assert!(fx.staged().await.is_empty());
}

/// A retry of an interrupted create (no `finish_volume` yet) adopts its own directory, data and
/// all; another volume, a directory swapped in since, or the same volume after finishing does
/// not; the same volume asking for another path is told where its attempt went.
pub async fn retry_adopts_only_its_own_attempt(fx: &Fx) {
    let top = fx.top.as_str();
    let (a, b) = (fx.pv("a"), fx.pv("b"));
    let v = fx.shown(&["v"]);
    assert_eq!(fx.create(&a, &["v"], RWX).await.unwrap(), Created::New);
    let first = ino(&fx.host(&["v"]));
    fx.tools.write(&[top, "v", "written-meanwhile"], b"x").await;
    assert_eq!(fx.create(&a, &["v"], RWX).await.unwrap(), Created::Adopted);
    assert_eq!(fx.create(&a, &["v"], RWX).await.unwrap(), Created::Adopted);
    assert_eq!(ino(&fx.host(&["v"])), first);
    assert_eq!(names(&fx.host(&["v"])), ["written-meanwhile"]);

    // Another volume, while a's record for this directory exists: refused.
    assert_taken(fx.create(&b, &["v"], RWX).await, &v);
    assert!(!fx.staged().await.contains(&b));

    // The same volume, another path.
    let err = fx.create(&a, &["w"], RWX).await.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::StagedElsewhere { pv, requested, recorded })
            if *pv == a && *requested == fx.shown(&["w"]) && *recorded == v),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "create directory {} for volume {a}: an earlier attempt of this volume staged it for {v}",
            fx.shown(&["w"])
        )
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
    assert_taken(fx.create(&a, &["v"], RWX).await, &v);
    assert_eq!(names(&fx.host(&["v"])), ["foreign"]);

    // After finishing there is no proof any more.
    fx.backend.finish_volume(&a).await.unwrap();
    fx.backend.delete_volume(&fx.path(&["v"]), 4).await.unwrap();
    assert_eq!(fx.create(&b, &["v"], RWX).await.unwrap(), Created::New);
    fx.backend.finish_volume(&b).await.unwrap();
    assert_taken(fx.create(&b, &["v"], RWX).await, &v);
    assert_taken(fx.create(&a, &["v"], RWX).await, &v);
}

/// Staging records as a crash at each step leaves them (made by hand, the same over both
/// transports): the retry finishes what its own record proves, and refuses what it does not.
pub async fn interrupted_attempts_resume_from_their_staging_record(fx: &Fx) {
    let top = fx.top.as_str();
    fx.tools.mkdir_p(&[top]).await;
    let owner = fx.can_chown();
    let dir = if owner {
        OWNED
    } else {
        DirMode {
            uid: None,
            gid: None,
            ..OWNED
        }
    };

    // 1. The record was published, its volume not yet placed: the retry places it, with its mode.
    let pv = fx.pv("published");
    fx.record(&pv, &["ns", "a"], true).await;
    assert_eq!(fx.create(&pv, &["ns", "a"], dir).await.unwrap(), Created::New);
    let (uid, gid, mode) = owner_mode(&fx.host(&["ns", "a"]));
    assert_eq!(mode, 0o2770);
    if owner {
        assert_eq!((uid, gid), (1000, 2000));
    }
    assert!(!fx.staging().join(&pv).join(VOL_DIR).exists());

    // 2. The target name was claimed (placing marker, empty mode-000 directory): the claim is
    //    the attempt's own and is replaced by the volume.
    let pv = fx.pv("claimed");
    fx.record(&pv, &["b"], true).await;
    fx.tools.write(&[STAGING_DIR, &pv, PLACING_FILE], b"").await;
    fx.tools.mkdir_p(&[top, "b"]).await;
    fx.tools.chmod(&[top, "b"], CLAIM_MODE).await;
    assert_eq!(fx.create(&pv, &["b"], dir).await.unwrap(), Created::New);
    assert_eq!(owner_mode(&fx.host(&["b"])).2, 0o2770);

    // 3. The same empty mode-000 directory without the marker is not ours: refused, untouched.
    let pv = fx.pv("unclaimed");
    fx.record(&pv, &["c"], true).await;
    fx.tools.mkdir_p(&[top, "c"]).await;
    fx.tools.chmod(&[top, "c"], CLAIM_MODE).await;
    let claim = ino(&fx.host(&["c"]));
    assert_taken(fx.create(&pv, &["c"], dir).await, &fx.shown(&["c"]));
    assert_eq!(ino(&fx.host(&["c"])), claim);
    assert_eq!(owner_mode(&fx.host(&["c"])).2, CLAIM_MODE);

    // 4. A leftover unpublished `<pv>.tmp` (listed as staged) is removed and never published.
    let pv = fx.pv("leftover");
    let tmp = format!("{pv}{TMP_SUFFIX}");
    fx.record(&tmp, &["elsewhere"], true).await;
    fx.tools.write(&[STAGING_DIR, &tmp, VOL_DIR, "junk"], b"x").await;
    assert!(fx.staged().await.contains(&pv));
    assert_eq!(fx.create(&pv, &["d"], RWX).await.unwrap(), Created::New);
    assert!(!fx.staging().join(&tmp).exists());
    assert!(!fx.host(&["elsewhere"]).exists());
    assert!(names(&fx.host(&["d"])).is_empty());
    assert_eq!(
        fx.backend.staged_target(&pv).await.unwrap(),
        Some(fx.path(&["d"]))
    );

    // 5. Placed, the PV not yet made (no inode file: a record of an older version): the
    //    directory at the target is adopted, data and all.
    let pv = fx.pv("placed");
    fx.record(&pv, &["e"], false).await;
    fx.tools.mkdir_p(&[top, "e"]).await;
    fx.tools.write(&[top, "e", "data"], b"x").await;
    assert_eq!(fx.create(&pv, &["e"], RWX).await.unwrap(), Created::Adopted);
    assert_eq!(names(&fx.host(&["e"])), ["data"]);

    // 6. Placed, with an inode: only the directory with that inode is adopted.
    fx.tools.mkdir_p(&[top, "f"]).await;
    let f = ino(&fx.host(&["f"]));
    let wrong = fx.pv("wrong-inode");
    fx.record(&wrong, &["f"], false).await;
    let content = format!("{}\n", f + 1);
    fx.tools
        .write(&[STAGING_DIR, &wrong, INODE_FILE], content.as_bytes())
        .await;
    assert_taken(fx.create(&wrong, &["f"], RWX).await, &fx.shown(&["f"]));
    let right = fx.pv("right-inode");
    fx.record(&right, &["f"], false).await;
    let content = format!("{f}\n");
    fx.tools
        .write(&[STAGING_DIR, &right, INODE_FILE], content.as_bytes())
        .await;
    assert_eq!(fx.create(&right, &["f"], RWX).await.unwrap(), Created::Adopted);
    assert_eq!(ino(&fx.host(&["f"])), f);

    // 7. Placed, and the directory removed since: the retry starts over with a new record.
    let pv = fx.pv("gone");
    fx.record(&pv, &["ns", "g"], false).await;
    assert_eq!(fx.create(&pv, &["ns", "g"], RWX).await.unwrap(), Created::New);
    assert!(fx.host(&["ns", "g"]).is_dir());
    assert_eq!(
        fx.backend.staged_target(&pv).await.unwrap(),
        Some(fx.path(&["ns", "g"]))
    );
    assert!(!fx.staging().join(format!("{pv}{TMP_SUFFIX}")).exists());
    assert_eq!(
        fs::read_to_string(fx.staging().join(&pv).join(INODE_FILE)).unwrap(),
        format!("{}\n", ino(&fx.host(&["ns", "g"])))
    );

    // 8. A record for another path: staged elsewhere, nothing made at the requested path.
    let pv = fx.pv("moved");
    fx.record(&pv, &["old"], true).await;
    let err = fx.create(&pv, &["new-ns", "new"], RWX).await.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::StagedElsewhere { requested, recorded, .. })
            if *requested == fx.shown(&["new-ns", "new"]) && *recorded == fx.shown(&["old"])),
        "{err:?}"
    );
    assert!(!fx.host(&["new-ns"]).exists());
    assert!(!fx.host(&["old"]).exists());
    assert_eq!(
        fx.backend.staged_target(&pv).await.unwrap(),
        Some(fx.path(&["old"]))
    );
}

/// `finish_volume` drops the record (and nothing else), and may be repeated; also for a volume
/// that never had one, and for the leftover `<pv>.tmp` of an interrupted finish.
pub async fn finish_volume_clears_the_record_idempotently(fx: &Fx) {
    // Mounted: no staging area at all yet.
    fx.backend.finish_volume(&fx.pv("never-created")).await.unwrap();
    let pv = fx.pv("a");
    fx.create(&pv, &["v"], RWX).await.unwrap();
    assert!(fx.staging().join(&pv).is_dir());
    assert_eq!(fx.staged().await, [pv.as_str()]);
    // A leftover of an earlier, interrupted finish next to the record.
    fx.record(&format!("{pv}{TMP_SUFFIX}"), &["v"], true).await;
    fx.backend.finish_volume(&pv).await.unwrap();
    assert!(!fx.staging().join(&pv).exists());
    assert!(!fx.staging().join(format!("{pv}{TMP_SUFFIX}")).exists());
    assert!(fx.staged().await.is_empty());
    fx.backend.finish_volume(&pv).await.unwrap();
    fx.backend.finish_volume(&fx.pv("never-created")).await.unwrap();
    assert!(fx.staged().await.is_empty());
    assert_eq!(owner_mode(&fx.host(&["v"])).2, 0o777);
    assert!(names(&fx.host(&["v"])).is_empty());

    // Only the leftover of an interrupted finish: cleared too.
    let c = fx.pv("c");
    fx.record(&format!("{c}{TMP_SUFFIX}"), &["c"], false).await;
    assert_eq!(fx.staged().await, [c.as_str()]);
    fx.backend.finish_volume(&c).await.unwrap();
    assert!(fx.staged().await.is_empty());
}

/// `staged_volumes` lists exactly the volumes created and not yet finished, and crash leftovers
/// (records and `<pv>.tmp`), each volume once; files in the staging area are not volumes.
pub async fn staged_volumes_lists_unfinished_ones(fx: &Fx) {
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

    // Crash leftovers: a record and its `.tmp` (once), a lone `.tmp`; a stray file is no volume.
    let (f, g, h) = (fx.pv("f"), fx.pv("g"), fx.pv("h"));
    fx.record(&f, &["vf"], true).await;
    fx.record(&format!("{f}{TMP_SUFFIX}"), &["vf"], true).await;
    fx.record(&format!("{g}{TMP_SUFFIX}"), &["vg"], true).await;
    fx.tools.write(&[STAGING_DIR, &h], b"x").await;
    assert_eq!(
        fx.staged().await,
        [pvs[0].clone(), pvs[2].clone(), f.clone(), g.clone()]
    );
    // Tidying up the shared export (only listings of this scenario's names could see it).
    fs::remove_file(fx.staging().join(&h)).unwrap();
}

// ---- archive ----

/// Archiving renames to `archived-<leaf>`, then `-2`, `-3`, ... when taken, in the same parent;
/// an existing directory (even an empty one, which NFSv3 RENAME would replace) is never
/// overwritten. An empty mode-000 directory is a leftover claim of an interrupted archive and is
/// reused; a non-empty one never is.
pub async fn archive_counts_up_and_never_overwrites(fx: &Fx) {
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
    // Taken meanwhile: -4 (empty), -5 (with data); -6 is an empty claim.
    fx.tools.mkdir_p(&[top, "ns", "archived-x-4"]).await;
    fx.tools.mkdir_p(&[top, "ns", "archived-x-5"]).await;
    fx.tools.write(&[top, "ns", "archived-x-5", "keep"], b"k").await;
    fx.tools.mkdir_p(&[top, "ns", "archived-x-6"]).await;
    fx.tools.chmod(&[top, "ns", "archived-x-6"], CLAIM_MODE).await;
    fx.tools.mkdir_p(&[top, "ns", "x"]).await;
    fx.tools.write(&[top, "ns", "x", "data"], b"gen3").await;
    assert_eq!(
        fx.backend.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
        Archived::To("archived-x-6".into())
    );
    // A claim-looking (mode 000) directory with data is never replaced.
    fx.tools.mkdir_p(&[top, "ns", "archived-x-7"]).await;
    fx.tools.write(&[top, "ns", "archived-x-7", "keep"], b"k").await;
    fx.tools.chmod(&[top, "ns", "archived-x-7"], CLAIM_MODE).await;
    fx.tools.mkdir_p(&[top, "ns", "x"]).await;
    fx.tools.write(&[top, "ns", "x", "data"], b"gen4").await;
    assert_eq!(
        fx.backend.archive_volume(&fx.path(&["ns", "x"])).await.unwrap(),
        Archived::To("archived-x-8".into())
    );
    assert_eq!(
        names(&fx.host(&["ns"])),
        [
            "archived-x",
            "archived-x-2",
            "archived-x-3",
            "archived-x-4",
            "archived-x-5",
            "archived-x-6",
            "archived-x-7",
            "archived-x-8"
        ]
    );
    for (name, content) in [
        ("archived-x", "gen0"),
        ("archived-x-2", "gen1"),
        ("archived-x-3", "gen2"),
        ("archived-x-6", "gen3"),
        ("archived-x-8", "gen4"),
    ] {
        assert_eq!(
            fs::read_to_string(fx.host(&["ns", name, "data"])).unwrap(),
            content
        );
    }
    assert!(names(&fx.host(&["ns", "archived-x-4"])).is_empty());
    assert_eq!(names(&fx.host(&["ns", "archived-x-5"])), ["keep"]);
    assert_eq!(names(&fx.host(&["ns", "archived-x-7"])), ["keep"]);
    assert_eq!(owner_mode(&fx.host(&["ns", "archived-x-7"])).2, CLAIM_MODE);
    // The archive keeps the volume's mode (the claim's mode 000 went with the claim).
    assert_eq!(owner_mode(&fx.host(&["ns", "archived-x"])).2, 0o777);
    assert_eq!(owner_mode(&fx.host(&["ns", "archived-x-6"])).2, 0o755);
}

/// Archiving a directory that is not there (never made, its parent missing, or already archived
/// by an earlier try) is `Missing`, and changes nothing.
pub async fn archive_of_a_missing_directory_is_missing(fx: &Fx) {
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

/// A nested volume is archived in its own parent, whatever else has the same leaf name.
pub async fn a_nested_volume_is_archived_in_its_own_parent(fx: &Fx) {
    let top = fx.top.as_str();
    for ns in ["ns-a", "ns-b"] {
        fx.tools.mkdir_p(&[top, ns, "data"]).await;
        fx.tools.write(&[top, ns, "data", "owner"], ns.as_bytes()).await;
        assert_eq!(
            fx.backend.archive_volume(&fx.path(&[ns, "data"])).await.unwrap(),
            Archived::To("archived-data".to_owned())
        );
        assert_eq!(names(&fx.host(&[ns])), ["archived-data"]);
        assert_eq!(
            fs::read_to_string(fx.host(&[ns, "archived-data", "owner"])).unwrap(),
            ns
        );
    }
    assert_eq!(names(&fx.host(&[])), ["ns-a", "ns-b"]);
}

/// A volume path that is a symlink, or a symlinked parent, is refused by archive; the links stay
/// links and their targets are untouched.
pub async fn archiving_a_symlinked_volume_or_parent_is_refused(fx: &Fx) {
    let top = fx.top.as_str();
    let outside = fx.outside.path();
    fs::create_dir(outside.join("vol")).unwrap();
    fs::write(outside.join("vol/data"), b"precious").unwrap();
    fx.tools.mkdir_p(&[top]).await;
    fx.tools
        .symlink(&[top, "x"], outside.join("vol").to_str().unwrap())
        .await;
    fx.tools.symlink(&[top, "ns"], outside.to_str().unwrap()).await;
    assert_not_a_directory(
        fx.backend.archive_volume(&fx.path(&["x"])).await,
        "archive directory",
        &fx.shown(&["x"]),
    );
    assert_not_a_directory(
        fx.backend.archive_volume(&fx.path(&["ns", "vol"])).await,
        "archive directory",
        &fx.shown(&["ns"]),
    );
    assert!(is_symlink(&fx.host(&["x"])));
    assert!(is_symlink(&fx.host(&["ns"])));
    assert_eq!(names(&fx.host(&[])), ["ns", "x"]);
    assert_eq!(names(outside), ["vol"]);
    assert_eq!(fs::read(outside.join("vol/data")).unwrap(), b"precious");
}

// ---- delete ----

/// Deleting a volume removes exactly its tree (files, nested directories, symlinks as links),
/// counts every entry, follows no symlink (the targets outside the export stay intact) and leaves
/// its parent and siblings alone; the same one entry at a time.
pub async fn delete_removes_exactly_the_tree_and_never_follows_symlinks(fx: &Fx) {
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
    assert_eq!(names(&fx.host(&["ns"])), ["file", "other"]);
}

/// A volume path that is itself a symlink is removed as the link: its target stays intact.
pub async fn a_symlinked_volume_is_removed_as_a_link(fx: &Fx) {
    let top = fx.top.as_str();
    let outside = fx.outside.path();
    fs::write(outside.join("data"), b"precious").unwrap();
    fx.tools.mkdir_p(&[top]).await;
    fx.tools.symlink(&[top, "vol"], outside.to_str().unwrap()).await;
    for concurrency in [1, 4] {
        let link = format!("vol{concurrency}");
        fx.tools.symlink(&[top, &link], outside.to_str().unwrap()).await;
        assert_eq!(
            fx.backend
                .delete_volume(&fx.path(&[&link]), concurrency)
                .await
                .unwrap(),
            Removed::Removed { entries: 1 },
            "concurrency {concurrency}"
        );
    }
    assert_eq!(
        fx.backend.delete_volume(&fx.path(&["vol"]), 4).await.unwrap(),
        Removed::Removed { entries: 1 }
    );
    assert!(names(&fx.host(&[])).is_empty());
    assert_eq!(names(outside), ["data"]);
    assert_eq!(fs::read(outside.join("data")).unwrap(), b"precious");
}

/// Deleting what is not there (the volume, or its parent) is `Missing`.
pub async fn delete_of_a_missing_directory_is_missing(fx: &Fx) {
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

/// `top/vol`: 10 directories `dN` with a subdirectory `e` each, and `files` empty files spread
/// over them. Returns the number of entries, `vol` included.
pub async fn make_tree(fx: &Fx, vol: &str, files: usize) -> u64 {
    let top = fx.top.as_str();
    let mut entries = 1;
    let mut per_dir: Vec<Vec<String>> = vec![Vec::new(); 20];
    for f in 0..files {
        // A third in `dN`, the rest in `dN/e`.
        let slot = if f % 3 == 0 { f % 10 } else { 10 + f % 10 };
        per_dir[slot].push(format!("f{f}"));
    }
    for (slot, names) in per_dir.into_iter().enumerate() {
        let d = format!("d{}", slot % 10);
        let dir: Vec<&str> = if slot < 10 {
            vec![top, vol, &d]
        } else {
            vec![top, vol, &d, "e"]
        };
        if slot < 10 {
            fx.tools.mkdir_p(&[top, vol, &d, "e"]).await;
            entries += 2;
        }
        entries += names.len() as u64;
        fx.tools.create_files(&dir, names).await;
    }
    entries
}

/// A tree of 2000 files is removed and counted alike one primitive at a time and with 16 in
/// flight; the parent stays.
pub async fn delete_removes_2000_files_serially_and_with_16_in_flight(fx: &Fx) {
    for concurrency in [1, 16] {
        let vol = format!("vol{concurrency}");
        let entries = make_tree(fx, &vol, 2000).await;
        assert_eq!(
            fx.backend
                .delete_volume(&fx.path(&[&vol]), concurrency)
                .await
                .unwrap(),
            Removed::Removed { entries },
            "concurrency {concurrency}"
        );
        assert!(!fx.host(&[&vol]).exists());
        assert!(fx.host(&[]).is_dir());
    }
}

/// `chattr +i` on a host directory, undone when dropped (also when the test fails, so the
/// temporary directory and the export can be cleaned up).
struct Immutable(PathBuf);

impl Immutable {
    /// `None`: the flag is not available here (e.g. tmpfs, or not root).
    fn set(path: &Path) -> Option<Immutable> {
        let status = std::process::Command::new("chattr").arg("+i").arg(path).status();
        status
            .is_ok_and(|s| s.success())
            .then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A delete that cannot remove an entry fails naming that entry, the primitive and the
/// transport's error; what it removed stays removed, and a retry resumes and finishes.
pub async fn delete_errors_name_the_entry_and_a_retry_resumes(fx: &Fx) {
    let top = fx.top.as_str();
    fx.tools.mkdir_p(&[top, "vol", "locked"]).await;
    fx.tools.write(&[top, "vol", "locked", "f"], b"x").await;
    // A directory nobody can empty, not even root: immutable on the host (ext4, XFS, btrfs).
    let Some(lock) = Immutable::set(&fx.host(&["vol", "locked"])) else {
        eprintln!(
            "*** SKIPPED delete error scenario: chattr +i is not available on {} ***",
            fx.backing.display()
        );
        return;
    };
    let err = fx.backend.delete_volume(&fx.path(&["vol"]), 4).await.unwrap_err();
    drop(lock);
    let f = fx.shown(&["vol", "locked", "f"]);
    if fx.v41 {
        assert!(
            matches!(err.transport::<nfs_subdir_provisioner::storage::nfs4::NfsV4Error>(), Some(e) if e.status() == Some(nfs_subdir_provisioner::storage::nfs4::status::Status::PERM)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), format!("unlink {f}: NFS4ERR_PERM"));
    } else if fx.is_nfs() {
        assert!(
            matches!(err.transport::<nfs_subdir_provisioner::storage::nfs3::NfsError>(), Some(e) if e.status() == Some(nfs3_client::nfs3_types::nfs3::nfsstat3::NFS3ERR_PERM)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), format!("unlink {f}: NFS3ERR_PERM"));
    } else {
        assert_eq!(
            err.transport().map(PosixError::errno),
            Some(Errno::EPERM),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("unlink {f}: EPERM: Operation not permitted")
        );
    }
    assert_eq!(fs::read(fx.host(&["vol", "locked", "f"])).unwrap(), b"x");
    assert_eq!(
        fx.backend.delete_volume(&fx.path(&["vol"]), 4).await.unwrap(),
        Removed::Removed { entries: 3 }
    );
    assert!(!fx.host(&["vol"]).exists());
}

// ---- refusals ----

/// A symlinked parent is refused by every operation, naming the link, and nothing happens at
/// its target; so is a volume path that is a symlink, for create.
pub async fn symlinked_parent_is_refused(fx: &Fx) {
    let top = fx.top.as_str();
    let outside = fx.outside.path();
    fs::create_dir(outside.join("vol")).unwrap();
    let outside_mode = owner_mode(outside);
    fx.tools.mkdir_p(&[top]).await;
    fx.tools.symlink(&[top, "link"], outside.to_str().unwrap()).await;
    let pv = fx.pv("a");
    let link = fx.shown(&["link"]);
    assert_not_a_directory(
        fx.create(&pv, &["link", "new"], RWX).await,
        "create directory",
        &link,
    );
    assert_not_a_directory(
        fx.create(&pv, &["link", "deeper", "new"], RWX).await,
        "create directory",
        &link,
    );
    assert_not_a_directory(fx.create(&pv, &["link"], RWX).await, "create directory", &link);
    assert_not_a_directory(
        fx.backend.archive_volume(&fx.path(&["link", "vol"])).await,
        "archive directory",
        &link,
    );
    assert_not_a_directory(
        fx.backend.delete_volume(&fx.path(&["link", "vol"]), 4).await,
        "delete directory",
        &link,
    );
    assert_eq!(names(outside), ["vol"]);
    assert!(names(&outside.join("vol")).is_empty());
    assert_eq!(owner_mode(outside), outside_mode);
    assert!(is_symlink(&fx.host(&["link"])));
    assert!(!fx.staged().await.contains(&pv));
}

/// A symlink where a volume's staging record would be is refused, never followed; finishing the
/// volume removes the link itself.
pub async fn symlinks_in_the_staging_area_are_refused(fx: &Fx) {
    let outside = fx.outside.path();
    let pv = fx.pv("a");
    fx.tools.mkdir_p(&[STAGING_DIR]).await;
    fx.tools
        .symlink(&[STAGING_DIR, &pv], outside.to_str().unwrap())
        .await;
    let record = format!("{STAGING_DIR}/{pv}");
    assert_not_a_directory(fx.create(&pv, &["v"], RWX).await, "read staging record", &record);
    assert_not_a_directory(
        fx.backend.staged_target(&pv).await,
        "read staging record",
        &record,
    );
    assert!(!fx.host(&[]).exists());
    assert!(!fx.staged().await.contains(&pv));
    fx.backend.finish_volume(&pv).await.unwrap();
    assert!(fs::symlink_metadata(fx.staging().join(&pv)).is_err());
    assert!(!fx.staging().join(format!("{pv}{TMP_SUFFIX}")).exists());
    assert!(names(outside).is_empty());
    assert!(outside.is_dir());
}

/// Invalid paths, PV names and modes are refused before anything is looked up or made.
pub async fn invalid_paths_names_and_modes_are_refused(fx: &Fx) {
    let long = "x".repeat(NAME_MAX + 1);
    let top = fx.top.as_str();
    let bad_paths: Vec<Vec<String>> = vec![
        vec![],
        p(&[""]),
        p(&["."]),
        p(&[".."]),
        p(&[top, ".."]),
        p(&[top, "."]),
        p(&[top, ""]),
        p(&[&format!("{top}/b")]),
        p(&[top, "a\0b"]),
        p(&[top, &long]),
        p(&[STAGING_DIR]),
        p(&[top, STAGING_DIR]),
    ];
    let pv = fx.pv("a");
    for path in &bad_paths {
        assert_invalid_path(
            fx.backend
                .create_volume(&pv, path, RWX, Existing::Refuse, None)
                .await,
            &format!("create {path:?}"),
        );
        assert_invalid_path(
            fx.backend.archive_volume(path).await,
            &format!("archive {path:?}"),
        );
        assert_invalid_path(
            fx.backend.delete_volume(path, 1).await,
            &format!("delete {path:?}"),
        );
    }
    let too_long = "p".repeat(NAME_MAX - TMP_SUFFIX.len() + 1);
    for pv in ["", ".", "..", "a/b", "pv.tmp", too_long.as_str()] {
        assert_invalid_path(fx.create(pv, &["a"], RWX).await, &format!("pv {pv:?}"));
        assert_invalid_path(fx.backend.finish_volume(pv).await, &format!("finish {pv:?}"));
        assert_invalid_path(
            fx.backend.staged_target(pv).await,
            &format!("staged_target {pv:?}"),
        );
    }
    let bad = DirMode {
        mode: 0o10777,
        uid: None,
        gid: None,
    };
    let err = fx.create(&pv, &["a"], bad).await.unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::InvalidMode { mode: 0o10777, .. })),
        "{err:?}"
    );
    assert!(!fx.host(&[]).exists());
    assert!(!fx.staged().await.contains(&pv));
    if !fx.is_nfs() {
        // Not even the staging area was made.
        assert!(names(&fx.backing).is_empty());
    }
}

// ---- capacity and probe ----

/// Capacity is the backing file system's: total >= free >= available > 0.
pub async fn capacity_reports_total_and_available(fx: &Fx) {
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
pub async fn probe_writable_leaves_nothing_behind(fx: &Fx) {
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

/// What probes killed between their two steps left is cleared; a probe directory something was
/// put in, records and their leftovers stay.
pub async fn leftover_probes_are_cleared_and_nothing_else(fx: &Fx) {
    let tag = unique("dead");
    let (a, b, full) = (
        format!("{PROBE_PREFIX}{tag}-1"),
        format!("{PROBE_PREFIX}{tag}-2"),
        format!("{PROBE_PREFIX}{tag}-full"),
    );
    for dir in [&a, &b, &full] {
        fx.tools.mkdir_p(&[STAGING_DIR, dir.as_str()]).await;
    }
    fx.tools.write(&[STAGING_DIR, full.as_str(), "kept"], b"x").await;
    let pv = fx.pv("staged");
    fx.tools
        .mkdir_p(&[STAGING_DIR, &format!("{pv}{TMP_SUFFIX}")])
        .await;
    assert!(fx.backend.clear_probes().await.unwrap() >= 2);
    let left = names(&fx.staging());
    assert!(!left.contains(&a) && !left.contains(&b), "{left:?}");
    assert!(left.contains(&full), "{left:?}");
    assert!(left.contains(&format!("{pv}{TMP_SUFFIX}")), "{left:?}");
}

// ---- listing ----

/// A listing names every entry once with its attributes as the host sees them (kind, size,
/// inode, a change time: what the operator's view reads an archive's age from), stops at its
/// limit saying so, and finds nothing where nothing is; it changes nothing.
pub async fn list_dir_gives_each_entry_with_its_attributes(fx: &Fx) {
    use nfs_subdir_provisioner::storage::FileType;
    use std::os::unix::fs::MetadataExt;
    let top = fx.top.as_str();
    let b = fx.backend.as_ref();
    assert_eq!(b.list_dir(&fx.path(&[]), 10).await.unwrap(), None);
    fx.tools.mkdir_p(&[top, "archived-vol", "sub"]).await;
    fx.tools.write(&[top, "file"], b"12345").await;
    fx.tools.symlink(&[top, "link"], "archived-vol").await;
    let listing = b.list_dir(&fx.path(&[]), 10).await.unwrap().unwrap();
    assert!(listing.complete);
    let mut seen: Vec<(String, FileType, u64)> = listing
        .entries
        .iter()
        .map(|e| {
            let name = String::from_utf8(e.name.clone()).unwrap();
            (name, e.stat.file_type, e.stat.id)
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let host = |name: &str| fs::symlink_metadata(fx.host(&[name])).unwrap();
    assert_eq!(
        seen,
        [
            (
                "archived-vol".to_owned(),
                FileType::Dir,
                host("archived-vol").ino()
            ),
            ("file".to_owned(), FileType::Regular, host("file").ino()),
            ("link".to_owned(), FileType::Symlink, host("link").ino()),
        ]
    );
    for entry in &listing.entries {
        let name = String::from_utf8(entry.name.clone()).unwrap();
        assert_eq!(entry.stat.ctime.seconds, host(&name).ctime(), "{name}");
        if name == "file" {
            assert_eq!(entry.stat.size, 5);
        }
    }
    let cut = b.list_dir(&fx.path(&[]), 2).await.unwrap().unwrap();
    assert_eq!((cut.entries.len(), cut.complete), (2, false));
    let exact = b.list_dir(&fx.path(&[]), 3).await.unwrap().unwrap();
    assert_eq!((exact.entries.len(), exact.complete), (3, true));
    let nested = b
        .list_dir(&fx.path(&["archived-vol"]), 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nested.entries.len(), 1);
    assert_eq!(nested.entries[0].name, b"sub");
    let root = b.list_dir(&[], usize::MAX).await.unwrap().unwrap();
    assert!(root.entries.iter().any(|e| e.name == top.as_bytes()));
    // A symlink is not listed through.
    assert!(b.list_dir(&fx.path(&["link"]), 10).await.is_err());
    assert_eq!(names(&fx.host(&[])), ["archived-vol", "file", "link"]);
}
