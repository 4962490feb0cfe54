//! The direct NFSv3 client (`storage::direct::DirectExport`) against a real NFS server
//! (nfs-ganesha, scripts/nfs-server.sh); see tests/nfs/mod.rs for the environment. Every test works
//! below its own unique top-level directory and with its own PV names, so they can run in parallel
//! on one export (and alongside tests/conformance.rs). The tests that stop or restart the server
//! are in tests/direct_nfs_stall.rs, on a server of their own.
#![allow(clippy::unwrap_used)] // a test: a failed call is a failed test

mod nfs;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nfs::{EXPORT, EXPORT_ROOTSQUASH, EXPORT_SECURE, p, unique};
use nfs_subdir_provisioner::core::naming::STAGING_DIR;
use nfs_subdir_provisioner::storage::direct::{DirectExport, NfsError};
use nfs_subdir_provisioner::storage::{Archived, Created, DirAttrs, Removed};
use nfs3_client::nfs3_types::mount::mountstat3;
use nfs3_client::nfs3_types::nfs3::nfsstat3;

const SUITE: &str = "direct_nfs";

/// A client of the main export (No_Root_Squash) and the host path of its backing directory, or
/// `None` (suite skipped).
async fn export() -> Option<(DirectExport, PathBuf)> {
    let env = nfs::env(SUITE)?;
    let e = env.connect(EXPORT, &[], 16).await;
    Some((e, env.export_dir))
}

/// Removes the test's top-level directory over NFS (ignores errors: this is only tidying up).
async fn cleanup(e: &DirectExport, top: &str) {
    let _ = e.delete_volume(&p(&[top]), 16).await;
}

const RWX: DirAttrs = DirAttrs {
    mode: 0o777,
    uid: None,
    gid: None,
};

#[tokio::test]
async fn create_gives_the_exact_mode_and_owner_and_a_staging_record_until_finished() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("create");
    let pv = unique("pv");
    let attrs = DirAttrs {
        mode: 0o2770,
        uid: Some(1000),
        gid: Some(2000),
    };
    let created = e
        .create_volume(&pv, &p(&[&top, "ns-a", "vol"]), &attrs)
        .await
        .unwrap();
    assert_eq!(created, Created::New);
    let md = fs::symlink_metadata(backing.join(&top).join("ns-a/vol")).unwrap();
    assert!(md.is_dir());
    // Exactly 02770 although v3 MKDIR drops setgid: the chmod after chown restored it.
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 2000, 0o2770));
    // Missing parents were made with 0755.
    let parent = fs::metadata(backing.join(&top).join("ns-a")).unwrap();
    assert_eq!(parent.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(backing.join(STAGING_DIR)).unwrap().mode() & 0o7777,
        0o700
    );
    assert!(e.staged_volumes().await.unwrap().contains(&pv));
    assert_eq!(
        e.staged_target(&pv).await.unwrap(),
        Some(p(&[&top, "ns-a", "vol"]))
    );
    // The record has the mounted backend's layout: the target line and the inode of the volume.
    let record = backing.join(STAGING_DIR).join(&pv);
    assert_eq!(
        fs::read_to_string(record.join("target")).unwrap(),
        format!("{top}/ns-a/vol\n")
    );
    assert_eq!(
        fs::read_to_string(record.join("inode")).unwrap(),
        format!("{}\n", md.ino())
    );
    assert!(!record.join("vol").exists());

    e.finish_volume(&pv).await.unwrap();
    e.finish_volume(&pv).await.unwrap();
    assert!(!e.staged_volumes().await.unwrap().contains(&pv));
    assert!(!record.exists());
    assert!(backing.join(&top).join("ns-a/vol").is_dir());

    // A plain mode with no owner: 0777 exactly (the server applies no umask), owner root.
    let pv2 = unique("pv");
    e.create_volume(&pv2, &p(&[&top, "plain"]), &RWX).await.unwrap();
    let md = fs::metadata(backing.join(&top).join("plain")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (0, 0, 0o777));
    e.finish_volume(&pv2).await.unwrap();
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn a_setgid_parent_passes_its_group_on_when_no_gid_is_given() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("sgid");
    e.mkdir_p(&[&top, "grp"]).await.unwrap();
    e.chown(&[&top, "grp"], None, Some(3000)).await.unwrap();
    e.chmod(&[&top, "grp"], 0o2775).await.unwrap();
    let pv = unique("pv");
    e.create_volume(&pv, &p(&[&top, "grp", "a"]), &RWX).await.unwrap();
    let md = fs::metadata(backing.join(&top).join("grp/a")).unwrap();
    assert_eq!((md.gid(), md.mode() & 0o7777), (3000, 0o777));
    e.finish_volume(&pv).await.unwrap();
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn exclusive_create_refuses_a_foreign_directory_and_leaves_it_untouched() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("foreign");
    e.mkdir_p(&[&top, "taken"]).await.unwrap();
    e.write_file(&[&top, "taken", "data"], b"someone else's", 0o644)
        .await
        .unwrap();
    e.chmod(&[&top, "taken"], 0o750).await.unwrap();
    let pv = unique("pv");
    let err = e
        .create_volume(&pv, &p(&[&top, "taken"]), &RWX)
        .await
        .unwrap_err();
    assert!(matches!(&err, NfsError::Exists { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("create directory {top}/taken: a directory not made for this volume already exists")
    );
    let dir = backing.join(&top).join("taken");
    assert_eq!(fs::read(dir.join("data")).unwrap(), b"someone else's");
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o750);
    assert!(!e.staged_volumes().await.unwrap().contains(&pv));
    // A file at the path is a non-directory in the way.
    e.write_file(&[&top, "file"], b"x", 0o644).await.unwrap();
    let err = e.create_volume(&pv, &p(&[&top, "file"]), &RWX).await.unwrap_err();
    assert!(matches!(err, NfsError::Symlink { .. }), "{err}");
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn a_symlinked_parent_is_refused_and_nothing_is_created_at_its_target() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("link");
    e.mkdir_p(&[&top]).await.unwrap();
    let outside = backing.parent().unwrap().join(unique("outside"));
    fs::create_dir(&outside).unwrap();
    e.symlink(&[&top, "link"], outside.to_str().unwrap())
        .await
        .unwrap();
    let pv = unique("pv");
    let err = e
        .create_volume(&pv, &p(&[&top, "link", "vol"]), &RWX)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NfsError::Symlink { path, .. } if *path == format!("{top}/link")),
        "{err}"
    );
    let err = e.create_volume(&pv, &p(&[&top, "link"]), &RWX).await.unwrap_err();
    assert!(matches!(err, NfsError::Symlink { .. }), "{err}");
    let err = e.archive_volume(&p(&[&top, "link", "vol"])).await.unwrap_err();
    assert!(matches!(err, NfsError::Symlink { .. }), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!e.staged_volumes().await.unwrap().contains(&pv));
    fs::remove_dir(&outside).unwrap();
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn a_retry_adopts_its_own_attempt_only() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("adopt");
    let pv = unique("pv");
    let path = p(&[&top, "a"]);
    assert_eq!(e.create_volume(&pv, &path, &RWX).await.unwrap(), Created::New);
    e.write_file(&[&top, "a", "written-meanwhile"], b"x", 0o644)
        .await
        .unwrap();
    // finish_volume never ran (crash): the retry adopts, keeping the data.
    assert_eq!(e.create_volume(&pv, &path, &RWX).await.unwrap(), Created::Adopted);
    assert!(backing.join(&top).join("a/written-meanwhile").exists());
    // Another volume may not adopt it.
    let other = unique("pv");
    let err = e.create_volume(&other, &path, &RWX).await.unwrap_err();
    assert!(matches!(err, NfsError::Exists { .. }), "{err}");
    // The same volume asking for another path is told where its attempt went.
    let err = e.create_volume(&pv, &p(&[&top, "b"]), &RWX).await.unwrap_err();
    assert!(matches!(err, NfsError::StagedElsewhere { .. }), "{err}");
    e.finish_volume(&pv).await.unwrap();
    // After finishing there is no proof any more.
    let err = e.create_volume(&pv, &path, &RWX).await.unwrap_err();
    assert!(matches!(err, NfsError::Exists { .. }), "{err}");
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn interrupted_attempts_resume_from_their_staging_record() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("resume");
    e.mkdir_p(&[&top]).await.unwrap();
    let attrs = DirAttrs {
        mode: 0o2770,
        uid: Some(1000),
        gid: Some(2000),
    };

    // 1. Crash after the record was published, before placement: the retry places it.
    let pv = unique("pv");
    let target = format!("{top}/a\n");
    e.mkdir_p(&[STAGING_DIR, &pv, "vol"]).await.unwrap();
    e.write_file(&[STAGING_DIR, &pv, "target"], target.as_bytes(), 0o600)
        .await
        .unwrap();
    assert_eq!(
        e.create_volume(&pv, &p(&[&top, "a"]), &attrs).await.unwrap(),
        Created::New
    );
    let md = fs::metadata(backing.join(&top).join("a")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 2000, 0o2770));
    e.finish_volume(&pv).await.unwrap();

    // 2. Crash after the target name was claimed (placing marker + empty mode-000 dir): the claim is
    //    reused.
    let pv = unique("pv");
    e.mkdir_p(&[STAGING_DIR, &pv, "vol"]).await.unwrap();
    e.write_file(
        &[STAGING_DIR, &pv, "target"],
        format!("{top}/b\n").as_bytes(),
        0o600,
    )
    .await
    .unwrap();
    e.write_file(&[STAGING_DIR, &pv, "placing"], b"", 0o600)
        .await
        .unwrap();
    e.mkdir_p(&[&top, "b"]).await.unwrap();
    e.chmod(&[&top, "b"], 0).await.unwrap();
    assert_eq!(
        e.create_volume(&pv, &p(&[&top, "b"]), &attrs).await.unwrap(),
        Created::New
    );
    assert_eq!(
        fs::metadata(backing.join(&top).join("b")).unwrap().mode() & 0o7777,
        0o2770
    );
    e.finish_volume(&pv).await.unwrap();

    // 3. The same empty mode-000 directory without the marker is not ours.
    let pv = unique("pv");
    e.mkdir_p(&[STAGING_DIR, &pv, "vol"]).await.unwrap();
    e.write_file(
        &[STAGING_DIR, &pv, "target"],
        format!("{top}/c\n").as_bytes(),
        0o600,
    )
    .await
    .unwrap();
    e.mkdir_p(&[&top, "c"]).await.unwrap();
    e.chmod(&[&top, "c"], 0).await.unwrap();
    let err = e.create_volume(&pv, &p(&[&top, "c"]), &attrs).await.unwrap_err();
    assert!(matches!(err, NfsError::Exists { .. }), "{err}");
    e.finish_volume(&pv).await.unwrap();

    // 4. A leftover unpublished `<pv>.tmp` is removed and never published.
    let pv = unique("pv");
    let tmp = format!("{pv}.tmp");
    e.mkdir_p(&[STAGING_DIR, &tmp, "vol"]).await.unwrap();
    e.write_file(&[STAGING_DIR, &tmp, "vol", "junk"], b"x", 0o600)
        .await
        .unwrap();
    assert!(e.staged_volumes().await.unwrap().contains(&pv));
    assert_eq!(
        e.create_volume(&pv, &p(&[&top, "d"]), &RWX).await.unwrap(),
        Created::New
    );
    assert!(!backing.join(STAGING_DIR).join(&tmp).exists());
    assert!(!backing.join(&top).join("d/junk").exists());
    e.finish_volume(&pv).await.unwrap();
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn archive_never_overwrites_and_counts_up_from_2() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("archive");
    let dir = backing.join(&top);
    for (i, expected) in ["archived-x", "archived-x-2", "archived-x-3"].iter().enumerate() {
        e.mkdir_p(&[&top, "x"]).await.unwrap();
        e.write_file(&[&top, "x", "data"], format!("gen{i}").as_bytes(), 0o644)
            .await
            .unwrap();
        assert_eq!(
            e.archive_volume(&p(&[&top, "x"])).await.unwrap(),
            Archived::To((*expected).to_owned())
        );
    }
    // An *empty* directory where the next archive would go (NFSv3 RENAME would replace it) is kept.
    e.mkdir_p(&[&top, "archived-x-4"]).await.unwrap();
    // A leftover claim (empty, mode 000) of an interrupted archive is reused.
    e.mkdir_p(&[&top, "archived-x-5"]).await.unwrap();
    e.chmod(&[&top, "archived-x-5"], 0).await.unwrap();
    e.mkdir_p(&[&top, "x"]).await.unwrap();
    e.write_file(&[&top, "x", "data"], b"gen3", 0o644).await.unwrap();
    assert_eq!(
        e.archive_volume(&p(&[&top, "x"])).await.unwrap(),
        Archived::To("archived-x-5".to_owned())
    );
    // A non-empty claim-looking directory is never replaced.
    e.mkdir_p(&[&top, "archived-x-6"]).await.unwrap();
    e.write_file(&[&top, "archived-x-6", "keep"], b"k", 0o644)
        .await
        .unwrap();
    e.chmod(&[&top, "archived-x-6"], 0).await.unwrap();
    e.mkdir_p(&[&top, "x"]).await.unwrap();
    assert_eq!(
        e.archive_volume(&p(&[&top, "x"])).await.unwrap(),
        Archived::To("archived-x-7".to_owned())
    );
    for (name, content) in [
        ("archived-x", "gen0"),
        ("archived-x-2", "gen1"),
        ("archived-x-3", "gen2"),
        ("archived-x-5", "gen3"),
    ] {
        assert_eq!(fs::read_to_string(dir.join(name).join("data")).unwrap(), content);
    }
    assert_eq!(fs::read_dir(dir.join("archived-x-4")).unwrap().count(), 0);
    assert!(dir.join("archived-x-6/keep").exists());
    assert!(!dir.join("x").exists());
    // Retry after a rename that succeeded: Missing.
    assert_eq!(
        e.archive_volume(&p(&[&top, "x"])).await.unwrap(),
        Archived::Missing
    );
    assert_eq!(
        e.archive_volume(&p(&[&top, "no-ns", "x"])).await.unwrap(),
        Archived::Missing
    );
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn delete_removes_files_subdirs_and_symlinks_without_touching_link_targets() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("delete");
    let outside = backing.parent().unwrap().join(unique("outside"));
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::write(outside.join("dir/data"), b"precious").unwrap();
    fs::write(outside.join("file"), b"precious").unwrap();

    let mut entries = 1; // vol itself
    e.mkdir_p(&[&top, "vol"]).await.unwrap();
    for d in 0..5 {
        let d = format!("d{d}");
        e.mkdir_p(&[&top, "vol", &d, "e"]).await.unwrap();
        entries += 2;
        let names: Vec<String> = (0..40).map(|f| format!("f{f}")).collect();
        entries += 2 * names.len() as u64;
        e.create_files(&[&top, "vol", &d], names.clone(), 8)
            .await
            .unwrap();
        e.create_files(&[&top, "vol", &d, "e"], names, 8).await.unwrap();
    }
    e.symlink(&[&top, "vol", "to-dir"], outside.join("dir").to_str().unwrap())
        .await
        .unwrap();
    e.symlink(
        &[&top, "vol", "d0", "e", "to-file"],
        outside.join("file").to_str().unwrap(),
    )
    .await
    .unwrap();
    // A relative link that would climb out of the export.
    e.symlink(&[&top, "vol", "up"], "../../../..").await.unwrap();
    entries += 3;

    assert_eq!(
        e.delete_volume(&p(&[&top, "vol"]), 16).await.unwrap(),
        Removed::Removed { entries }
    );
    assert!(!backing.join(&top).join("vol").exists());
    assert!(backing.join(&top).is_dir());
    assert_eq!(fs::read(outside.join("dir/data")).unwrap(), b"precious");
    assert_eq!(fs::read(outside.join("file")).unwrap(), b"precious");
    assert_eq!(
        e.delete_volume(&p(&[&top, "vol"]), 16).await.unwrap(),
        Removed::Missing
    );
    assert_eq!(
        e.delete_volume(&p(&[&top, "no-ns", "vol"]), 16).await.unwrap(),
        Removed::Missing
    );

    // A volume that is itself a symlink: only the link goes.
    e.symlink(&[&top, "linkvol"], outside.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        e.delete_volume(&p(&[&top, "linkvol"]), 4).await.unwrap(),
        Removed::Removed { entries: 1 }
    );
    assert!(fs::symlink_metadata(backing.join(&top).join("linkvol")).is_err());
    assert_eq!(fs::read(outside.join("file")).unwrap(), b"precious");
    // A symlinked parent is refused.
    e.symlink(&[&top, "ns"], outside.to_str().unwrap()).await.unwrap();
    let err = e.delete_volume(&p(&[&top, "ns", "dir"]), 4).await.unwrap_err();
    assert!(matches!(err, NfsError::Symlink { .. }), "{err}");
    assert!(outside.join("dir/data").exists());
    fs::remove_dir_all(&outside).unwrap();
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn serial_delete_counts_the_same_entries() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let top = unique("serial");
    e.mkdir_p(&[&top, "vol", "sub"]).await.unwrap();
    let names: Vec<String> = (0..300).map(|f| format!("file-{f}")).collect();
    e.create_files(&[&top, "vol"], names.clone(), 16).await.unwrap();
    e.create_files(&[&top, "vol", "sub"], names, 16).await.unwrap();
    assert_eq!(
        e.delete_volume(&p(&[&top, "vol"]), 1).await.unwrap(),
        Removed::Removed { entries: 602 }
    );
    assert!(!backing.join(&top).join("vol").exists());
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn delete_errors_name_the_entry_and_status() {
    let Some((e, backing)) = export().await else {
        return;
    };
    // A directory the server cannot empty: immutable on the host (`chattr +i`; ext4, XFS, btrfs;
    // the error half is skipped where the flag is not available, e.g. tmpfs).
    let top = unique("delerr");
    e.mkdir_p(&[&top, "vol", "locked"]).await.unwrap();
    e.write_file(&[&top, "vol", "locked", "f"], b"x", 0o644)
        .await
        .unwrap();
    let locked = backing.join(&top).join("vol/locked");
    let chattr = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&locked)
        .status();
    if !chattr.is_ok_and(|s| s.success()) {
        eprintln!("chattr +i not available; skipping the error half of this test");
        cleanup(&e, &top).await;
        return;
    }
    let err = e.delete_volume(&p(&[&top, "vol"]), 4).await.unwrap_err();
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(&locked)
        .status();
    assert_eq!(err.status(), Some(nfsstat3::NFS3ERR_PERM), "{err}");
    assert_eq!(
        err.to_string(),
        format!("unlink {top}/vol/locked/f: NFS3ERR_PERM")
    );
    // A retry resumes and finishes.
    assert!(matches!(
        e.delete_volume(&p(&[&top, "vol"]), 4).await.unwrap(),
        Removed::Removed { .. }
    ));
    assert!(!backing.join(&top).join("vol").exists());
    cleanup(&e, &top).await;
}

#[tokio::test]
async fn capacity_reports_the_backing_filesystem() {
    let Some((e, _backing)) = export().await else {
        return;
    };
    let c = e.capacity().await.unwrap();
    assert!(c.total_bytes > 0);
    assert!(
        c.free_bytes <= c.total_bytes && c.available_bytes <= c.free_bytes,
        "{c:?}"
    );
}

#[tokio::test]
async fn invalid_paths_and_names_are_refused_before_any_rpc() {
    let Some((e, _backing)) = export().await else {
        return;
    };
    for path in [vec![], p(&[".."]), p(&["a", "."]), p(&["a/b"]), p(&[STAGING_DIR])] {
        let err = e.create_volume("pv-x", &path, &RWX).await.unwrap_err();
        assert!(matches!(err, NfsError::InvalidPath { .. }), "{path:?}: {err}");
        assert!(matches!(
            e.archive_volume(&path).await,
            Err(NfsError::InvalidPath { .. })
        ));
        assert!(matches!(
            e.delete_volume(&path, 1).await,
            Err(NfsError::InvalidPath { .. })
        ));
    }
    for pv in ["", "..", "a/b", "pv.tmp"] {
        let err = e.create_volume(pv, &p(&["a"]), &RWX).await.unwrap_err();
        assert!(matches!(err, NfsError::InvalidPath { .. }), "{pv:?}: {err}");
    }
    let bad = DirAttrs {
        mode: 0o10777,
        uid: None,
        gid: None,
    };
    assert!(matches!(
        e.create_volume("pv-x", &p(&["a"]), &bad).await,
        Err(NfsError::InvalidMode { .. })
    ));
}

#[tokio::test]
async fn root_squash_refuses_chown_with_an_error_naming_the_export_option() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let backing = env.rootsquash_dir.clone();
    let e = env.connect(EXPORT_ROOTSQUASH, &[], 4).await;
    let top = unique("squash");
    let pv = unique("pv");
    let attrs = DirAttrs {
        mode: 0o2770,
        uid: Some(1000),
        gid: Some(2000),
    };
    let err = e
        .create_volume(&pv, &p(&[&top, "vol"]), &attrs)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            NfsError::RootSquashed {
                status: nfsstat3::NFS3ERR_PERM,
                anon_uid: 65534,
                anon_gid: 65534,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("root_squash") && msg.contains("no_root_squash"),
        "{msg}"
    );
    assert!(
        msg.starts_with(&format!("change owner of {top}/vol: NFS3ERR_PERM")),
        "{msg}"
    );
    // Nothing was placed; the record stays for the retry.
    assert!(!backing.join(&top).join("vol").exists());
    e.finish_volume(&pv).await.unwrap();
    // Without an owner the squashed provisioner still creates volumes, with the exact mode.
    let pv = unique("pv");
    assert_eq!(
        e.create_volume(
            &pv,
            &p(&[&top, "plain"]),
            &DirAttrs {
                mode: 0o2770,
                uid: None,
                gid: None
            }
        )
        .await
        .unwrap(),
        Created::New
    );
    let md = fs::metadata(backing.join(&top).join("plain")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (65534, 65534, 0o2770));
    e.finish_volume(&pv).await.unwrap();
    assert_eq!(
        e.delete_volume(&p(&[&top]), 4).await.unwrap(),
        Removed::Removed { entries: 2 }
    );
}

#[tokio::test]
async fn unprivileged_source_ports_work_unless_the_export_requires_privileged_ones() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let e = env.connect(EXPORT, &["noresvport"], 2).await;
    assert!(!e.info().reserved_port);
    e.capacity().await.unwrap();
    let e = env.connect(EXPORT, &[], 2).await;
    let root = nix::unistd::Uid::effective().is_root();
    assert_eq!(
        e.info().reserved_port,
        root,
        "resvport binds below 1024 when permitted (root), else falls back"
    );
    if !root {
        eprintln!("not root: cannot bind privileged ports; skipping the /export-secure half");
        return;
    }

    // /export-secure: the same directory, PrivilegedPort = true.
    let e = env.connect(EXPORT_SECURE, &[], 2).await;
    assert!(e.info().reserved_port);
    e.capacity().await.unwrap();
    let err = env
        .try_connect(EXPORT_SECURE, &["noresvport"], 2)
        .await
        .err()
        .expect("an export with PrivilegedPort refuses unprivileged ports");
    // Ganesha answers MNT from any port but refuses NFS calls with AUTH_TOOWEAK; the message says
    // what to change.
    assert!(matches!(err, NfsError::Rpc { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("AUTH_TOOWEAK") && msg.contains("privileged source port"),
        "{msg}"
    );
}

#[tokio::test]
async fn mounting_a_missing_export_is_refused_with_a_hint() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let err = env
        .try_connect("/no-such-export", &[], 1)
        .await
        .err()
        .expect("no such export");
    // Ganesha 4.3 answers an unknown path with MNT3ERR_ACCES (not NOENT); either way the error
    // names the export and says what to check.
    let NfsError::Mount { status, export, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(export, "/no-such-export");
    let hint = match status {
        mountstat3::MNT3ERR_ACCES => "check the export's client list",
        mountstat3::MNT3ERR_NOENT => "use the Pseudo path",
        other => panic!("unexpected {other:?}: {err}"),
    };
    assert!(err.to_string().contains(hint), "{err}");
    // Nothing listens: a connect error naming the address, well within the deadline.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = nfs_subdir_provisioner::storage::direct::MountOptions::from(env.options(&[
        &format!("mountport={port}"),
        "timeo=20",
        "retrans=0",
    ]));
    let start = std::time::Instant::now();
    let err = DirectExport::connect(&env.server, EXPORT, &options, 1)
        .await
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, NfsError::Connect { .. }), "{err}");
    assert!(err.is_transport());
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn symlinks_in_the_staging_area_are_refused() {
    let Some((e, backing)) = export().await else {
        return;
    };
    let pv = unique("pv");
    let outside = backing.parent().unwrap().join(unique("outside"));
    fs::create_dir(&outside).unwrap();
    // Made over NFS (the server's cache sees it at once; a link made on the host might not be).
    e.mkdir_p(&[STAGING_DIR]).await.unwrap();
    e.symlink(&[STAGING_DIR, &pv], outside.to_str().unwrap())
        .await
        .unwrap();
    let top = unique("stlink");
    let err = e.create_volume(&pv, &p(&[&top, "v"]), &RWX).await.unwrap_err();
    assert!(matches!(err, NfsError::Symlink { .. }), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    fs::remove_file(backing.join(STAGING_DIR).join(&pv)).unwrap();
    fs::remove_dir(&outside).unwrap();
    cleanup(&e, &top).await;
}
