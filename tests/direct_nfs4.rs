//! The NFSv4.1 wire format and session (`storage::nfs4`, issue 19 in progress) against a real
//! server: the test nfs-ganesha (tests/nfs/mod.rs), which speaks v3 and v4.1 on one port. Each
//! test opens a session of its own and asserts on the export's backing directory. The transport
//! built on this, and its tests, come next.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed call is a failed test

mod nfs;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use nfs::unique;
use nfs_subdir_provisioner::storage::FileType;
use nfs_subdir_provisioner::storage::nfs4::attrs::{Bitmap, NewAttributes, ftype, stat_ids};
use nfs_subdir_provisioner::storage::nfs4::compound::{Attributes4, Done, NewObject, OpResult};
use nfs_subdir_provisioner::storage::nfs4::session::{Connection, Nfs4Error, Op};
use nfs_subdir_provisioner::storage::nfs4::status::Status;

const SUITE: &str = "direct_nfs4";

async fn open(env: &nfs::Env) -> Connection {
    let addr = SocketAddr::new(env.server.parse().unwrap(), env.nfs_port);
    Connection::open(addr, unique("nfs4-test").as_bytes(), Duration::from_secs(10))
        .await
        .unwrap()
}

fn fh(result: &OpResult) -> Vec<u8> {
    match &result.done {
        Some(Done::GetFh(fh)) => fh.clone(),
        other => panic!("not a file handle: {other:?}"),
    }
}

/// The export's root: PUTROOTFH and a LOOKUP through the server's pseudo filesystem.
async fn export_root(c: &mut Connection) -> Vec<u8> {
    let results = c
        .call(
            "root",
            vec![Op::PutRootFh, Op::Lookup(b"export".to_vec()), Op::GetFh],
            false,
        )
        .await
        .unwrap();
    fh(&results[2])
}

#[tokio::test]
async fn a_session_is_opened_and_its_requests_are_sequenced() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let mut c = open(&env).await;
    assert!(c.fore.max_requests >= 1, "{:?}", c.fore);
    // Several requests on the one slot: each must carry the next sequence id, or the server
    // answers NFS4ERR_SEQ_MISORDERED.
    for _ in 0..5 {
        export_root(&mut c).await;
    }
}

#[tokio::test]
async fn a_directory_is_made_exclusively_with_its_mode_and_read_back_as_the_server_has_it() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let mut c = open(&env).await;
    let root = export_root(&mut c).await;
    let name = unique("v4-mkdir");
    let mkdir = |mode: u32| {
        vec![
            Op::PutFh(root.clone()),
            Op::Create {
                object: NewObject::Dir,
                name: name.clone().into_bytes(),
                attrs: NewAttributes {
                    mode: Some(mode),
                    ..NewAttributes::default()
                },
            },
            Op::GetFh,
            Op::GetAttr(Bitmap::of(&stat_ids())),
        ]
    };
    let made = c.call("mkdir", mkdir(0o750), true).await.unwrap();
    let Some(Done::GetAttr(attrs)) = &made[3].done else {
        panic!("{made:?}");
    };
    let st = attrs.stat().unwrap();
    let on_server = std::fs::symlink_metadata(env.export_dir.join(&name)).unwrap();
    assert!(on_server.is_dir());
    assert_eq!(st.file_type, FileType::Dir);
    assert_eq!(st.id, on_server.ino());
    assert_eq!(st.mode, on_server.permissions().mode() & 0o7777);
    assert_eq!(st.mode, 0o750);
    assert_eq!((st.uid, st.gid), (on_server.uid(), on_server.gid()));

    // A second CREATE of the same name is refused: the create is exclusive.
    let again = c.call_reply("mkdir", mkdir(0o700), true).await.unwrap();
    assert_eq!(again.failed(), Some((1, Status::EXIST)));
    let after = std::fs::symlink_metadata(env.export_dir.join(&name)).unwrap();
    assert_eq!(
        (after.ino(), after.permissions().mode() & 0o7777),
        (on_server.ino(), 0o750)
    );

    // REMOVE only after VERIFY says it is a directory, in the same COMPOUND.
    let remove = |kind: u32| {
        vec![
            Op::PutFh(root.clone()),
            Op::Lookup(name.clone().into_bytes()),
            Op::Verify(Attributes4::file_type(kind)),
            Op::PutFh(root.clone()),
            Op::Remove(name.clone().into_bytes()),
        ]
    };
    let not_a_file = c.call_reply("remove", remove(ftype::REG), true).await.unwrap();
    assert_eq!(not_a_file.failed(), Some((2, Status::NOT_SAME)));
    assert!(
        env.export_dir.join(&name).is_dir(),
        "a failed VERIFY must remove nothing"
    );
    c.call("remove", remove(ftype::DIR), true).await.unwrap();
    assert!(!env.export_dir.join(&name).exists());
}

#[tokio::test]
async fn a_missing_name_is_noent_and_a_failed_request_still_uses_up_its_sequence_id() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let mut c = open(&env).await;
    let root = export_root(&mut c).await;
    let missing = c
        .call(
            "lookup",
            vec![Op::PutFh(root.clone()), Op::Lookup(b"no-such-entry".to_vec())],
            false,
        )
        .await;
    assert!(
        matches!(
            missing,
            Err(Nfs4Error::Status {
                status: Status::NOENT,
                ..
            })
        ),
        "{missing:?}"
    );
    // The failed LOOKUP ran after SEQUENCE, so the slot moved on: the next request works.
    export_root(&mut c).await;
}
