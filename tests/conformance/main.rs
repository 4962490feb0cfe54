//! The suite for the storage layer's behaviour (`storage::Backend`): one volume protocol
//! (`storage::Volumes`) over either transport, every scenario written once and run over both:
//!
//! * `mounted_<scenario>`: `MountedExport` (the protocol over `PosixTransport`, each operation on
//!   a blocking thread) on a temporary directory (the backing directory), as the provisioner uses
//!   the export mounted at NFS_MOUNT_PATH;
//! * `direct_<scenario>`: `Volumes<Nfs3Transport>` on the test NFS server's `/export` (backing
//!   directory `NFS_TEST_EXPORT_DIR`; see tests/nfs/mod.rs for the environment). Without
//!   `NFS_TEST_SERVER` the direct half is skipped (loudly), or fails with `NFS_TEST_REQUIRE=1`;
//! * `<scenario>::direct_v41`: `Volumes<Nfs4Transport>` on an NFSv4-only test server (no MOUNT,
//!   one port; `NFS_TEST_V4_*`, which scripts/test.sh starts), preconditions made over NFSv4.1 too.
//!
//! Scenarios: [`volumes`] (create, archive, delete, refusals, capacity, probe, listing) and [`trees`]
//! (clone: a volume filled with a copy of another, across transports too; usage).
//!
//! Outcomes are checked on the backing directory itself (owners, modes, names, contents, inode
//! numbers), never through the backend under test. Preconditions (a foreign directory, files in a
//! volume, symlinks, hand-made staging records as a crash leaves them) are made with plain file
//! system calls for the mounted transport and over NFS for the direct one ([`fixture::Tools`]):
//! ganesha caches directories, so an entry made on its host behind its back may stay invisible to
//! it for a while. Every scenario works below its own top-level directory with its own PV names,
//! so the direct ones can share one export with each other and with tests/direct_nfs.rs. What
//! only NFS has (resent requests, source ports, root_squash, the pool) is in tests/direct_nfs.rs.
#![allow(clippy::unwrap_used)] // a test: a failed call is a failed test

#[path = "../nfs/mod.rs"]
mod nfs;

mod fixture;
mod trees;
mod volumes;

use std::path::Path;

use nfs::p;
use nfs_subdir_provisioner::core::params::DirMode;
use nfs_subdir_provisioner::core::staging::STAGING_DIR;
use nfs_subdir_provisioner::storage::posix::{MountedExport, PosixError};
use nfs_subdir_provisioner::storage::{Backend, Existing, StorageFailure};
use nix::errno::Errno;

use fixture::*;

/// Runs `$scenario` as `$mounted` (mounted transport, temporary directory) and `$direct` (NFSv3
/// transport, the test server's /export).
macro_rules! conformance {
    ($($module:ident::$scenario:ident => $mounted:ident, $direct:ident;)*) => {$(
        #[tokio::test]
        async fn $mounted() {
            let fx = Fx::mounted(stringify!($scenario));
            $module::$scenario(&fx).await;
        }

        #[tokio::test]
        async fn $direct() {
            let Some(fx) = Fx::direct(stringify!($scenario)).await else {
                return;
            };
            $module::$scenario(&fx).await;
            fx.cleanup().await;
        }

        /// Over NFSv4.1: `<scenario>::direct_v41`.
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn direct_v41() {
                let Some(fx) = Fx::direct_v41(stringify!($scenario)).await else {
                    return;
                };
                super::$module::$scenario(&fx).await;
                fx.cleanup().await;
            }
        }
    )*};
}

conformance! {
    volumes::create_applies_mode_and_owner_exactly =>
        mounted_create_applies_mode_and_owner_exactly, direct_create_applies_mode_and_owner_exactly;
    volumes::setgid_parent_passes_its_group_on_and_the_mode_stays_exact =>
        mounted_setgid_parent_passes_its_group_on_and_the_mode_stays_exact,
        direct_setgid_parent_passes_its_group_on_and_the_mode_stays_exact;
    volumes::foreign_directory_is_refused_and_untouched =>
        mounted_foreign_directory_is_refused_and_untouched,
        direct_foreign_directory_is_refused_and_untouched;
    volumes::existing_directory_is_reused_as_it_is_when_allowed =>
        mounted_existing_directory_is_reused_as_it_is_when_allowed,
        direct_existing_directory_is_reused_as_it_is_when_allowed;
    volumes::retry_adopts_only_its_own_attempt =>
        mounted_retry_adopts_only_its_own_attempt, direct_retry_adopts_only_its_own_attempt;
    volumes::interrupted_attempts_resume_from_their_staging_record =>
        mounted_interrupted_attempts_resume_from_their_staging_record,
        direct_interrupted_attempts_resume_from_their_staging_record;
    volumes::finish_volume_clears_the_record_idempotently =>
        mounted_finish_volume_clears_the_record_idempotently,
        direct_finish_volume_clears_the_record_idempotently;
    volumes::staged_volumes_lists_unfinished_ones =>
        mounted_staged_volumes_lists_unfinished_ones, direct_staged_volumes_lists_unfinished_ones;
    volumes::archive_counts_up_and_never_overwrites =>
        mounted_archive_counts_up_and_never_overwrites, direct_archive_counts_up_and_never_overwrites;
    volumes::archive_of_a_missing_directory_is_missing =>
        mounted_archive_of_a_missing_directory_is_missing,
        direct_archive_of_a_missing_directory_is_missing;
    volumes::a_nested_volume_is_archived_in_its_own_parent =>
        mounted_a_nested_volume_is_archived_in_its_own_parent,
        direct_a_nested_volume_is_archived_in_its_own_parent;
    volumes::archiving_a_symlinked_volume_or_parent_is_refused =>
        mounted_archiving_a_symlinked_volume_or_parent_is_refused,
        direct_archiving_a_symlinked_volume_or_parent_is_refused;
    volumes::delete_removes_exactly_the_tree_and_never_follows_symlinks =>
        mounted_delete_removes_exactly_the_tree_and_never_follows_symlinks,
        direct_delete_removes_exactly_the_tree_and_never_follows_symlinks;
    volumes::a_symlinked_volume_is_removed_as_a_link =>
        mounted_a_symlinked_volume_is_removed_as_a_link, direct_a_symlinked_volume_is_removed_as_a_link;
    volumes::delete_of_a_missing_directory_is_missing =>
        mounted_delete_of_a_missing_directory_is_missing, direct_delete_of_a_missing_directory_is_missing;
    volumes::delete_removes_2000_files_serially_and_with_16_in_flight =>
        mounted_delete_removes_2000_files_serially_and_with_16_in_flight,
        direct_delete_removes_2000_files_serially_and_with_16_in_flight;
    volumes::delete_errors_name_the_entry_and_a_retry_resumes =>
        mounted_delete_errors_name_the_entry_and_a_retry_resumes,
        direct_delete_errors_name_the_entry_and_a_retry_resumes;
    volumes::symlinked_parent_is_refused => mounted_symlinked_parent_is_refused, direct_symlinked_parent_is_refused;
    volumes::symlinks_in_the_staging_area_are_refused =>
        mounted_symlinks_in_the_staging_area_are_refused, direct_symlinks_in_the_staging_area_are_refused;
    volumes::invalid_paths_names_and_modes_are_refused =>
        mounted_invalid_paths_names_and_modes_are_refused, direct_invalid_paths_names_and_modes_are_refused;
    volumes::capacity_reports_total_and_available =>
        mounted_capacity_reports_total_and_available, direct_capacity_reports_total_and_available;
    volumes::probe_writable_leaves_nothing_behind =>
        mounted_probe_writable_leaves_nothing_behind, direct_probe_writable_leaves_nothing_behind;
    volumes::leftover_probes_are_cleared_and_nothing_else =>
        mounted_leftover_probes_are_cleared_and_nothing_else,
        direct_leftover_probes_are_cleared_and_nothing_else;
    volumes::list_dir_gives_each_entry_with_its_attributes =>
        mounted_list_dir_gives_each_entry_with_its_attributes,
        direct_list_dir_gives_each_entry_with_its_attributes;
    trees::clone_copies_every_kind_of_entry =>
        mounted_clone_copies_every_kind_of_entry, direct_clone_copies_every_kind_of_entry;
    trees::clone_resumes_what_an_interrupted_copy_left =>
        mounted_clone_resumes_what_an_interrupted_copy_left,
        direct_clone_resumes_what_an_interrupted_copy_left;
    trees::clone_of_a_source_that_changes_meanwhile =>
        mounted_clone_of_a_source_that_changes_meanwhile, direct_clone_of_a_source_that_changes_meanwhile;
    trees::clone_refuses_a_taken_target_and_a_missing_or_symlinked_source =>
        mounted_clone_refuses_a_taken_target_and_a_missing_or_symlinked_source,
        direct_clone_refuses_a_taken_target_and_a_missing_or_symlinked_source;
    trees::usage_measures_a_known_tree_exactly =>
        mounted_usage_measures_a_known_tree_exactly, direct_usage_measures_a_known_tree_exactly;
}

/// A clone from the mounted transport into the NFSv3 one and back (skipped without a test server).
#[tokio::test]
async fn clone_across_transports_both_ways() {
    let mounted = Fx::mounted("across");
    let Some(direct) = Fx::direct("across").await else {
        return;
    };
    trees::clone_across_transports(&mounted, &direct).await;
    direct.cleanup().await;
}

// ---- what only the mounted transport has ----

/// The umask (0077 here) takes nothing from a volume's mode on the mounted transport: the
/// setgid scenario again, with the process's umask changed while it runs.
#[tokio::test]
async fn mounted_setgid_parent_passes_its_group_on_and_the_mode_stays_exact_under_umask_0077() {
    let fx = Fx::mounted_under_umask("umask", 0o077);
    volumes::setgid_parent_passes_its_group_on_and_the_mode_stays_exact(&fx).await;
    let pv = fx.pv("plain");
    fx.create(&pv, &["plain"], RWX).await.unwrap();
    assert_eq!(owner_mode(&fx.host(&["plain"])).2, 0o777);
}

/// The mounted transport running as root sets any owner (chown with CAP_CHOWN), one id alone
/// too.
#[tokio::test]
async fn mounted_chown_as_root_sets_the_owner() {
    if !is_root() {
        eprintln!("*** SKIPPED mounted_chown_as_root_sets_the_owner: not running as root ***");
        return;
    }
    let fx = Fx::mounted("chown");
    let uid_only = DirMode {
        mode: 0o700,
        uid: Some(1001),
        gid: None,
    };
    fx.create(&fx.pv("a"), &["uid-only"], uid_only).await.unwrap();
    assert_eq!(owner_mode(&fx.host(&["uid-only"])), (1001, 0, 0o700));
    let gid_only = DirMode {
        mode: 0o2775,
        uid: None,
        gid: Some(3000),
    };
    fx.create(&fx.pv("b"), &["gid-only"], gid_only).await.unwrap();
    assert_eq!(owner_mode(&fx.host(&["gid-only"])), (0, 3000, 0o2775));
}

/// A staging area that is a symlink is refused, never followed (only on a private export: on the
/// shared NFS export the other suites' staging area is in use).
#[tokio::test]
async fn mounted_a_symlinked_staging_area_is_refused() {
    let fx = Fx::mounted("staging-link");
    let outside = fx.outside.path();
    std::os::unix::fs::symlink(outside, fx.staging()).unwrap();
    assert_not_a_directory(
        fx.create(&fx.pv("a"), &["a"], RWX).await,
        "open staging area",
        STAGING_DIR,
    );
    assert_not_a_directory(
        fx.backend.staged_volumes().await,
        "open staging area",
        STAGING_DIR,
    );
    assert!(fx.backend.probe_writable("x").await.is_err());
    assert!(names(outside).is_empty());
    assert!(!fx.host(&[]).exists());
    assert!(is_symlink(&fx.staging()));
}

/// Every operation on an export root that is not there fails naming the root and the errno.
#[tokio::test]
async fn mounted_operations_on_a_missing_export_root_fail_naming_the_root() {
    let root = Path::new("/nonexistent/export");
    let backend = MountedExport::new(root.to_path_buf(), 16);
    let check = |what: &str, err: StorageFailure| {
        assert!(
            matches!(err.transport(), Some(PosixError::Root { path, errno: Errno::ENOENT, .. })
                if path == root),
            "{what}: {err:?}"
        );
        assert_eq!(err.transport().map(PosixError::errno), Some(Errno::ENOENT));
        assert!(
            err.to_string()
                .ends_with("/nonexistent/export: ENOENT: No such file or directory"),
            "{what}: {err}"
        );
    };
    check("capacity", Backend::capacity(&backend).await.unwrap_err());
    check(
        "create",
        backend
            .create_volume("pv-1", &p(&["a"]), RWX, Existing::Refuse, None)
            .await
            .unwrap_err(),
    );
    check("finish", backend.finish_volume("pv-1").await.unwrap_err());
    check("staged", backend.staged_volumes().await.unwrap_err());
    check(
        "staged_target",
        Backend::staged_target(&backend, "pv-1").await.unwrap_err(),
    );
    check("archive", backend.archive_volume(&p(&["a"])).await.unwrap_err());
    check("delete", backend.delete_volume(&p(&["a"]), 1).await.unwrap_err());
    check("probe", backend.probe_writable("x").await.unwrap_err());
    assert!(!root.exists());
}
