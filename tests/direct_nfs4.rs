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
use nfs_subdir_provisioner::storage::nfs4::compound::{
    ANONYMOUS_STATEID, Attributes4, CURRENT_STATEID, Done, NewObject, OpResult, Stable,
};
use nfs_subdir_provisioner::storage::nfs4::session::{Connection, Nfs4Error, Op};
use nfs_subdir_provisioner::storage::nfs4::status::Status;

const SUITE: &str = "direct_nfs4";

async fn open(env: &nfs::Env) -> Connection {
    let addr = SocketAddr::new(env.server.parse().unwrap(), env.nfs_port);
    Connection::open(
        addr,
        unique("nfs4-test").as_bytes(),
        false,
        Duration::from_secs(10),
        Duration::from_secs(30),
    )
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
    let again = c.call_reply("mkdir", mkdir(0o700), true).await.unwrap().value;
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
    let not_a_file = c
        .call_reply("remove", remove(ftype::REG), true)
        .await
        .unwrap()
        .value;
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

fn open_exclusive(c: &Connection, name: &str, verifier: [u8; 8]) -> Op {
    Op::OpenExclusive {
        client: c.client_id(),
        owner: b"test".to_vec(),
        name: name.as_bytes().to_vec(),
        verifier,
        attrs: NewAttributes {
            mode: Some(0o600),
            ..NewAttributes::default()
        },
    }
}

#[tokio::test]
async fn a_file_is_created_exclusively_written_and_closed_in_one_request_and_read_back() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let mut c = open(&env).await;
    let root = export_root(&mut c).await;
    let name = unique("v4-record");
    let write = |c: &Connection, verifier: [u8; 8]| {
        vec![
            Op::PutFh(root.clone()),
            open_exclusive(c, &name, verifier),
            Op::GetFh,
            Op::Write {
                stateid: CURRENT_STATEID,
                offset: 0,
                stable: Stable::FileSync,
                data: b"state: placing\n".to_vec(),
            },
            Op::Close(CURRENT_STATEID),
        ]
    };
    let made = c.call("write_file", write(&c, [1; 8]), true).await.unwrap();
    let Some(Done::Write { count, committed, .. }) = &made[3].done else {
        panic!("{made:?}");
    };
    assert_eq!((*count, *committed), (15, Stable::FileSync));
    let on_server = env.export_dir.join(&name);
    assert_eq!(std::fs::read(&on_server).unwrap(), b"state: placing\n");

    // Another request's create of the same name is refused, whatever its verifier: ganesha keeps
    // the verifier in the times, which the WRITE then changed. So a lost reply is recovered by
    // the session's reply cache (the same slot and sequence id), not by sending the create anew.
    for verifier in [[2; 8], [1; 8]] {
        let other = c
            .call_reply("write_file", write(&c, verifier), true)
            .await
            .unwrap()
            .value;
        assert_eq!(other.failed(), Some((1, Status::EXIST)));
    }
    assert_eq!(std::fs::read(&on_server).unwrap(), b"state: placing\n");

    // Read with no open state (the anonymous stateid): nothing to close afterwards.
    let file = fh(&made[2]);
    let read = c
        .call(
            "read",
            vec![
                Op::PutFh(file),
                Op::Read {
                    stateid: ANONYMOUS_STATEID,
                    offset: 7,
                    count: 100,
                },
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        read[1].done,
        Some(Done::Read {
            eof: true,
            data: b"placing\n".to_vec()
        })
    );
}

#[tokio::test]
async fn a_directory_lists_its_entries_with_their_attributes_and_offers_auth_sys() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let dir = unique("v4-list");
    std::fs::create_dir(env.export_dir.join(&dir)).unwrap();
    for i in 0..300 {
        std::fs::write(env.export_dir.join(&dir).join(format!("f{i}")), b"x").unwrap();
    }
    std::os::unix::fs::symlink("/etc/passwd", env.export_dir.join(&dir).join("link")).unwrap();
    let mut c = open(&env).await;
    let results = c
        .call(
            "open_dir",
            vec![
                Op::PutRootFh,
                Op::Lookup(b"export".to_vec()),
                Op::SecInfoNoName,
                Op::PutRootFh,
                Op::Lookup(b"export".to_vec()),
                Op::Lookup(dir.clone().into_bytes()),
                Op::GetFh,
            ],
            false,
        )
        .await
        .unwrap();
    let Some(Done::SecInfo(flavors)) = &results[2].done else {
        panic!("{results:?}");
    };
    assert!(flavors.contains(&1), "AUTH_SYS offered: {flavors:?}");
    let handle = fh(&results[6]);

    // Page through with small replies: cookies and the verifier carry the listing on.
    let mut seen = std::collections::BTreeMap::new();
    let (mut cookie, mut verifier) = (0, [0; 8]);
    let mut pages = 0;
    loop {
        let page = c
            .call(
                "read_dir",
                vec![
                    Op::PutFh(handle.clone()),
                    Op::ReadDir {
                        cookie,
                        verifier,
                        max_bytes: 4096,
                        attrs: Bitmap::of(&stat_ids()),
                    },
                ],
                false,
            )
            .await
            .unwrap();
        let Some(Done::ReadDir {
            verifier: v,
            entries,
            eof,
        }) = &page[1].done
        else {
            panic!("{page:?}");
        };
        pages += 1;
        for entry in entries {
            let st = entry.attrs.stat().unwrap();
            assert!(
                seen.insert(String::from_utf8(entry.name.clone()).unwrap(), st)
                    .is_none()
            );
            cookie = entry.cookie;
        }
        verifier = *v;
        if *eof {
            break;
        }
    }
    assert!(pages > 1, "small pages: {pages}");
    assert_eq!(seen.len(), 301);
    assert_eq!(seen["link"].file_type, FileType::Symlink);
    assert_eq!(seen["f7"].file_type, FileType::Regular);
    assert_eq!(
        seen["f7"].id,
        std::fs::metadata(env.export_dir.join(&dir).join("f7"))
            .unwrap()
            .ino()
    );
}

#[tokio::test]
async fn owners_go_as_numbers_and_a_rename_replaces_an_empty_directory_but_not_a_full_one() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let mut c = open(&env).await;
    let root = export_root(&mut c).await;
    let (from, empty, full) = (unique("v4-from"), unique("v4-empty"), unique("v4-full"));
    for d in [&from, &empty, &full] {
        std::fs::create_dir(env.export_dir.join(d)).unwrap();
    }
    std::fs::write(env.export_dir.join(&full).join("data"), b"keep").unwrap();

    let chown = c
        .call(
            "chown",
            vec![
                Op::PutFh(root.clone()),
                Op::Lookup(from.clone().into_bytes()),
                Op::SetAttr {
                    stateid: ANONYMOUS_STATEID,
                    attrs: NewAttributes {
                        uid: Some(1000),
                        gid: Some(2000),
                        mode: Some(0o2770),
                        ..NewAttributes::default()
                    },
                },
            ],
            true,
        )
        .await;
    chown.unwrap();
    let md = std::fs::metadata(env.export_dir.join(&from)).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.permissions().mode() & 0o7777),
        (1000, 2000, 0o2770)
    );

    let rename = |to: &str| {
        vec![
            Op::PutFh(root.clone()),
            Op::SaveFh,
            Op::PutFh(root.clone()),
            Op::Rename {
                from: from.clone().into_bytes(),
                to: to.as_bytes().to_vec(),
            },
        ]
    };
    // The protocol reports a full target as EXIST (RFC 8881 §18.26.3); some servers say NOTEMPTY.
    let onto_full = c.call_reply("rename", rename(&full), true).await.unwrap().value;
    assert!(
        matches!(onto_full.failed(), Some((3, Status::EXIST | Status::NOTEMPTY))),
        "{onto_full:?}"
    );
    assert_eq!(
        std::fs::read(env.export_dir.join(&full).join("data")).unwrap(),
        b"keep"
    );
    // An empty target directory is replaced: why the transport claims a target before renaming.
    c.call("rename", rename(&empty), true).await.unwrap();
    assert!(!env.export_dir.join(&from).exists());
    assert_eq!(
        std::fs::metadata(env.export_dir.join(&empty)).unwrap().uid(),
        1000
    );
}

async fn mkdir(c: &mut Connection, name: &str) -> Result<(), Nfs4Error> {
    let results = c
        .call(
            "root",
            vec![Op::PutRootFh, Op::Lookup(b"export".to_vec()), Op::GetFh],
            false,
        )
        .await?;
    c.call(
        "mkdir",
        vec![
            Op::PutFh(fh(&results[2])),
            Op::Create {
                object: NewObject::Dir,
                name: name.as_bytes().to_vec(),
                attrs: NewAttributes::default(),
            },
        ],
        true,
    )
    .await
    .map(|_| ())
}

/// A restart loses the server's sessions (and, with them, ours): the next call makes a new
/// session, or a new client id, and goes through.
#[tokio::test]
async fn after_a_server_restart_the_next_call_recovers_the_session_and_goes_through() {
    if !nfs::servers_enabled(SUITE) {
        return;
    }
    let server = nfs::OwnServer::start("v4-restart");
    let mut c = open(&server.env).await;
    mkdir(&mut c, "before").await.unwrap();
    server.restart();
    mkdir(&mut c, "after").await.unwrap();
    assert!(c.recoveries >= 1, "a new session was made");
    for name in ["before", "after"] {
        assert!(server.env.export_dir.join(name).is_dir(), "{name}");
    }
    // And the new session keeps working.
    mkdir(&mut c, "later").await.unwrap();
}

/// A server that stops answering fails the call within its deadline, not later, and the
/// connection works again once the server does.
#[tokio::test]
async fn a_frozen_server_fails_the_call_within_its_deadline() {
    if !nfs::servers_enabled(SUITE) {
        return;
    }
    let server = nfs::OwnServer::start("v4-pause");
    let addr = SocketAddr::new(server.env.server.parse().unwrap(), server.env.nfs_port);
    let mut c = Connection::open(
        addr,
        unique("nfs4-pause").as_bytes(),
        false,
        Duration::from_secs(1),
        Duration::from_secs(4),
    )
    .await
    .unwrap();
    {
        let _paused = server.pause();
        let started = std::time::Instant::now();
        let failed = mkdir(&mut c, "frozen").await;
        let took = started.elapsed();
        assert!(matches!(failed, Err(Nfs4Error::TimedOut { .. })), "{failed:?}");
        assert!(took < Duration::from_secs(6), "took {took:?}");
    }
    mkdir(&mut c, "thawed").await.unwrap();
    assert!(server.env.export_dir.join("thawed").is_dir());
}

/// A server that speaks NFSv4 only (no MOUNT, no NFSv3, as EFS and hardened servers run) is
/// reached on its one port; the NFSv3 client cannot reach it at all.
#[tokio::test]
async fn a_v4_only_server_is_served_on_its_one_port_where_nfsv3_cannot_reach_it() {
    if !nfs::servers_enabled(SUITE) {
        return;
    }
    let server = nfs::OwnServer::start_v4_only("v4-only");
    let mut c = open(&server.env).await;
    mkdir(&mut c, "made-over-v4").await.unwrap();
    assert!(server.env.export_dir.join("made-over-v4").is_dir());
    let v3 = server
        .env
        .try_connect(nfs::EXPORT, &["timeo=10", "retrans=0"], 1)
        .await;
    assert!(v3.is_err(), "NFSv3 reached a v4-only server");
}

/// A server restarted with a grace period, and a client it recorded (one holding open state)
/// that never comes back to reclaim: ganesha answers NFS4ERR_GRACE to OPEN, REMOVE, RENAME and
/// SETATTR until the period ends, and the call waits it out within its deadline.
#[tokio::test]
async fn after_a_restart_into_a_grace_period_a_remove_waits_it_out_and_goes_through() {
    if !nfs::servers_enabled(SUITE) {
        return;
    }
    let server = nfs::OwnServer::start_with(
        "v4-grace",
        &[("NFS_SERVER_PROTOCOLS", "4"), ("NFS_SERVER_GRACE", "5")],
    );
    let mut c = open(&server.env).await;
    mkdir(&mut c, "before").await.unwrap();
    let mut gone = open(&server.env).await;
    let root = export_root(&mut gone).await;
    let open_file = vec![Op::PutFh(root), open_exclusive(&gone, "held-open", [3; 8])];
    gone.call("open", open_file, true).await.unwrap();
    drop(gone);
    server.restart();

    let root = export_root(&mut c).await;
    c.call(
        "remove",
        vec![Op::PutFh(root), Op::Remove(b"before".to_vec())],
        true,
    )
    .await
    .unwrap();
    assert!(!server.env.export_dir.join("before").exists());
    assert!(c.recoveries >= 1);
    // The grace period (5 s) held the remove back, and it was waited out within the deadline.
    assert!(c.grace_waits >= 1, "no grace period seen");
}
