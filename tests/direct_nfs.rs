//! What only the NFSv3 transport (`storage::nfs3::Nfs3Transport`) has, against a real NFS server
//! (nfs-ganesha, scripts/nfs-server.sh; see tests/nfs/mod.rs for the environment): connecting
//! (source ports, a missing export, what the connection reports), requests resent after a lost
//! reply, the pool growing for a delete, MKDIR dropping setgid, root_squash. The volume
//! behaviour both transports share is tested over both in tests/conformance.rs; the tests that
//! stop or restart the server are in tests/direct_nfs_stall.rs, on a server of their own.
//!
//! Every test works below its own unique top-level directory and with its own PV names, so they
//! can run in parallel on one export (and alongside tests/conformance.rs).
#![allow(clippy::unwrap_used)] // a test: a failed call is a failed test

mod nfs;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nfs::{EXPORT, EXPORT_ROOTSQUASH, EXPORT_SECURE, p, unique};
use nfs_subdir_provisioner::core::params::DirMode;
use nfs_subdir_provisioner::storage::nfs_testing::Preconditions;
use nfs_subdir_provisioner::storage::nfs3::{MAX_CONNECTIONS, Nfs3Transport, NfsError};
use nfs_subdir_provisioner::storage::nfs4::status::Status as Nfs4Status;
use nfs_subdir_provisioner::storage::nfs4::{Nfs4Transport, NfsV4Error};
use nfs_subdir_provisioner::storage::transport::{Made, Opened, Transport, at};
use nfs_subdir_provisioner::storage::{Created, Existing, Removed, StorageFailure, Volumes};
use nfs3_client::nfs3_types::mount::mountstat3;
use nfs3_client::nfs3_types::nfs3::nfsstat3;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SUITE: &str = "direct_nfs";

/// What a StorageClass with `uid: 1000`, `gid: 2000`, `mode: 2770` asks for.
const OWNED: DirMode = DirMode {
    mode: 0o2770,
    uid: Some(1000),
    gid: Some(2000),
};

fn nfs_err(err: &StorageFailure) -> &NfsError {
    err.transport::<NfsError>()
        .unwrap_or_else(|| panic!("not an NFS failure: {err:?}"))
}

// ---- connecting ----

/// The connection reports where it went (the ports given as `port=` and `mountport=`), how
/// many connections its pool starts with, and the deadline of one RPC.
#[tokio::test]
async fn the_connection_reports_its_addresses_pool_and_deadline() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let t = env.connect(EXPORT, &["timeo=7", "retrans=2"], 3).await;
    let c = t.connection().await.unwrap();
    let info = c.info();
    let host: std::net::IpAddr = env.server.parse().unwrap();
    assert_eq!(info.nfs_addr, SocketAddr::new(host, env.nfs_port));
    assert_eq!(info.mount_addr, SocketAddr::new(host, env.mount_port));
    assert_eq!(info.connections, 3);
    // timeo x (retrans + 1).
    assert_eq!(c.rpc_deadline(), Duration::from_millis(2100));
    // The connection is made once and kept.
    assert!(std::ptr::eq(c, t.connection().await.unwrap()));
    // A pool has at least one connection.
    let t = env.connect(EXPORT, &[], 0).await;
    assert_eq!(t.connection().await.unwrap().info().connections, 1);
}

#[tokio::test]
async fn unprivileged_source_ports_work_unless_the_export_requires_privileged_ones() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let v = env.volumes(EXPORT, &["noresvport"], 2).await;
    assert!(!v.transport().connection().await.unwrap().info().reserved_port);
    v.capacity().await.unwrap();
    let v = env.volumes(EXPORT, &[], 2).await;
    let root = nix::unistd::Uid::effective().is_root();
    assert_eq!(
        v.transport().connection().await.unwrap().info().reserved_port,
        root,
        "resvport binds below 1024 when permitted (root), else falls back"
    );
    if !root {
        eprintln!("not root: cannot bind privileged ports; skipping the /export-secure half");
        return;
    }

    // /export-secure: the same directory, PrivilegedPort = true.
    let v = env.volumes(EXPORT_SECURE, &[], 2).await;
    assert!(v.transport().connection().await.unwrap().info().reserved_port);
    v.capacity().await.unwrap();
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
    // A lazily connecting transport reports the same on its first operation.
    let lazy = env.lazy_volumes("/no-such-export", &[]);
    let err = lazy.capacity().await.unwrap_err();
    assert!(matches!(nfs_err(&err), NfsError::Mount { .. }), "{err}");

    // Nothing listens: a connect error naming the address, well within the deadline.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let err = env
        .try_connect(
            EXPORT,
            &[&format!("mountport={port}"), "timeo=20", "retrans=0"],
            1,
        )
        .await
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, NfsError::Connect { .. }), "{err}");
    assert!(err.is_transport());
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
}

// ---- what the server does differently ----

/// NFSv3 MKDIR on a Linux server drops the setgid bit it is asked for (why the protocol always
/// sets the mode after MKDIR); the volume still gets exactly 02770.
#[tokio::test]
async fn mkdir_drops_setgid_and_the_volume_gets_it_back() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let top = unique("sgid-mkdir");
    let volumes = env.volumes(EXPORT, &[], 2).await;
    let t = volumes.transport();
    t.mkdir_p(&[&top]).await.unwrap();
    let root = t.root().await.unwrap();
    let Opened::Dir(dir) = t
        .open_dir(&root, top.as_bytes(), at("open directory", &top))
        .await
        .unwrap()
    else {
        panic!("{top} is not a directory");
    };
    let raw = format!("{top}/raw");
    let Made::New(_) = t
        .mkdir(&dir, b"raw", 0o2770, at("create directory", &raw))
        .await
        .unwrap()
    else {
        panic!("{raw} existed");
    };
    let backing = env.export_dir.join(&top);
    assert_eq!(
        fs::metadata(backing.join("raw")).unwrap().mode() & 0o7777,
        0o770,
        "MKDIR kept setgid: the server differs from the one the protocol was written for"
    );
    let pv = unique("pv");
    assert_eq!(
        volumes
            .create(&pv, &p(&[&top, "vol"]), OWNED, Existing::Refuse, None)
            .await
            .unwrap(),
        Created::New
    );
    let md = fs::metadata(backing.join("vol")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 2000, 0o2770));
    volumes.finish(&pv).await.unwrap();
    cleanup(&env, &top).await;
}

/// On a root_squash export chown is refused (root is squashed to 65534), with an error that
/// names root_squash and what to change; nothing is placed, the record stays for the retry until
/// finished. Without an owner the volume is made, owned by the anonymous user, mode exact.
#[tokio::test]
async fn root_squash_refuses_chown_with_an_error_naming_the_export_option() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let err = root_squash_refuses_chown(env.lazy_volumes(EXPORT_ROOTSQUASH, &[]), &env, "NFS3ERR_PERM").await;
    assert_eq!(nfs_err(&err).status(), Some(nfsstat3::NFS3ERR_PERM));
}

/// The same over NFSv4.1 (the test server speaks both on one port): the squash is told apart
/// the same way, from the server's own answer.
#[tokio::test]
async fn root_squash_refuses_chown_over_nfsv41_the_same_way() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let v = Volumes::new(Nfs4Transport::new(
        env.export(EXPORT_ROOTSQUASH),
        env.options_v41(&[]),
    ));
    let err = root_squash_refuses_chown(v, &env, "NFS4ERR_PERM").await;
    assert_eq!(
        err.transport::<NfsV4Error>().map(NfsV4Error::status),
        Some(Some(Nfs4Status::PERM)),
        "{err:?}"
    );
}

/// An exclusive create over NFSv4.1 leaves its verifier in the file's times until they are set
/// again (RFC 8881 §18.16.4): a record file written over it has the time of its writing and mode
/// 0600, as over NFSv3.
#[tokio::test]
async fn a_file_written_over_nfsv41_has_its_mode_and_the_time_of_its_writing() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let t = Nfs4Transport::connect(env.export(EXPORT), env.options_v41(&[]), 1)
        .await
        .unwrap();
    let root = t.root().await.unwrap();
    let name = unique("v41-record");
    let before = std::time::SystemTime::now();
    assert!(
        t.write_file(&root, name.as_bytes(), b"record", at("write", &name))
            .await
            .unwrap()
    );
    let md = fs::metadata(env.export_dir.join(&name)).unwrap();
    assert_eq!((md.mode() & 0o7777, md.len()), (0o600, 6));
    for (what, time) in [("mtime", md.modified()), ("atime", md.accessed())] {
        let time = time.unwrap();
        let off = time
            .duration_since(before)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap();
        assert!(
            off < Duration::from_secs(60),
            "{what} {time:?} is not the time of writing"
        );
    }
    fs::remove_file(env.export_dir.join(&name)).unwrap();
}

/// Runs the root_squash case on `v` (the rootsquash export of `env`) and gives back the refusal.
async fn root_squash_refuses_chown<T: Transport>(
    v: Volumes<T>,
    env: &nfs::Env,
    status: &str,
) -> StorageFailure {
    let backing = env.rootsquash_dir.clone();
    let top = unique("squash");
    let pv = unique("pv");
    let err = v
        .create(&pv, &p(&[&top, "vol"]), OWNED, Existing::Refuse, None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageFailure::RootSquashed {
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
        msg.starts_with(&format!("change owner of {top}/vol: {status}")),
        "{msg}"
    );
    assert!(!backing.join(&top).join("vol").exists());
    assert!(v.staged().await.unwrap().contains(&pv));
    v.finish(&pv).await.unwrap();
    assert!(!v.staged().await.unwrap().contains(&pv));

    let pv = unique("pv");
    let no_owner = DirMode {
        uid: None,
        gid: None,
        ..OWNED
    };
    assert_eq!(
        v.create(&pv, &p(&[&top, "plain"]), no_owner, Existing::Refuse, None)
            .await
            .unwrap(),
        Created::New
    );
    let md = fs::metadata(backing.join(&top).join("plain")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (65534, 65534, 0o2770));
    v.finish(&pv).await.unwrap();
    assert_eq!(
        v.delete(&p(&[&top]), 4).await.unwrap(),
        Removed::Removed { entries: 2 }
    );
    err
}

// ---- a proxy in front of the NFS port ----

/// NFSv3 procedure numbers (RFC 1813).
const MKDIR: u32 = 9;
const CREATE: u32 = 8;
const REMOVE: u32 = 12;
const RMDIR: u32 = 13;
const RENAME: u32 = 14;

/// A TCP proxy in front of the server's NFS port that counts the connections made through it
/// and can swallow replies: for the procedures in `swallow`, every other reply (the first, the
/// third, ...) is read from the server and never delivered, so the client's request times out
/// and is resent on a fresh connection, after the server has executed it once.
struct Proxy {
    port: u16,
    accepted: Arc<AtomicUsize>,
    /// Per procedure: replies seen, and of those swallowed.
    seen: Arc<Mutex<HashMap<u32, (usize, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One RPC record (all its fragments, headers included) and its payload.
async fn read_record(from: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let (mut raw, mut payload) = (Vec::new(), Vec::new());
    loop {
        let mut header = [0u8; 4];
        from.read_exact(&mut header).await?;
        let mark = u32::from_be_bytes(header);
        let mut fragment = vec![0u8; (mark & 0x7fff_ffff) as usize];
        from.read_exact(&mut fragment).await?;
        raw.extend_from_slice(&header);
        raw.extend_from_slice(&fragment);
        payload.extend_from_slice(&fragment);
        if mark & 0x8000_0000 != 0 {
            return Ok((raw, payload));
        }
    }
}

fn word(payload: &[u8], at: usize) -> Option<u32> {
    payload
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl Proxy {
    async fn start(upstream: SocketAddr, swallow: &[u32]) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<HashMap<u32, (usize, usize)>>> = Arc::default();
        let swallow: Arc<Vec<u32>> = Arc::new(swallow.to_vec());
        let task = tokio::spawn({
            let (accepted, seen) = (Arc::clone(&accepted), Arc::clone(&seen));
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (seen, swallow) = (Arc::clone(&seen), Arc::clone(&swallow));
                    tokio::spawn(Self::link(client, server, seen, swallow));
                }
            }
        });
        Proxy {
            port,
            accepted,
            seen,
            task,
        }
    }

    async fn link(
        client: TcpStream,
        server: TcpStream,
        seen: Arc<Mutex<HashMap<u32, (usize, usize)>>>,
        swallow: Arc<Vec<u32>>,
    ) {
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        // xid -> procedure of the calls on this connection.
        let calls: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
        let requests = {
            let calls = Arc::clone(&calls);
            async move {
                while let Ok((raw, payload)) = read_record(&mut client_rx).await {
                    // xid, msg_type, rpcvers, prog, vers, proc.
                    if let (Some(xid), Some(procedure)) = (word(&payload, 0), word(&payload, 20)) {
                        calls
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(xid, procedure);
                    }
                    if server_tx.write_all(&raw).await.is_err() {
                        break;
                    }
                }
                let _ = server_tx.shutdown().await;
            }
        };
        let replies = async move {
            while let Ok((raw, payload)) = read_record(&mut server_rx).await {
                let procedure = word(&payload, 0)
                    .and_then(|xid| calls.lock().unwrap_or_else(PoisonError::into_inner).remove(&xid));
                let drop_it = procedure.is_some_and(|procedure| {
                    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                    let (replies, swallowed) = seen.entry(procedure).or_default();
                    *replies += 1;
                    let drop_it = swallow.contains(&procedure) && *replies % 2 == 1;
                    *swallowed += usize::from(drop_it);
                    drop_it
                });
                if !drop_it && client_tx.write_all(&raw).await.is_err() {
                    break;
                }
            }
            let _ = client_tx.shutdown().await;
        };
        tokio::join!(requests, replies);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    fn swallowed(&self, procedure: u32) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&procedure)
            .map_or(0, |s| s.1)
    }
}

/// `share` reached through `proxy` for NFS (MOUNT goes to the server directly), connected now.
async fn through(
    env: &nfs::Env,
    proxy: &Proxy,
    extra: &[&str],
    connections: usize,
) -> Volumes<Nfs3Transport> {
    let port = format!("port={}", proxy.port);
    let mut options = vec![port.as_str()];
    options.extend_from_slice(extra);
    env.volumes(EXPORT, &options, connections).await
}

/// A request resent after its reply was lost (timeout, fresh connection) was executed already,
/// and the server's duplicate request cache does not span connections: the resend's EXIST
/// (MKDIR, CREATE) and NOENT (RENAME, REMOVE, RMDIR) are read as the first send's success.
/// Create, finish and delete with the first reply of each such request swallowed all succeed,
/// with exactly the outcome and count of an undisturbed run.
#[tokio::test]
async fn resent_requests_are_read_as_the_first_send_succeeding() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let upstream = SocketAddr::new(env.server.parse().unwrap(), env.nfs_port);
    let proxy = Proxy::start(upstream, &[MKDIR, CREATE, RENAME, REMOVE, RMDIR]).await;
    // A lost reply costs one timeo (0.3 s); retrans=2 leaves room for the resend.
    let v = through(&env, &proxy, &["timeo=3", "retrans=2"], 1).await;
    let backing = env.export_dir.clone();
    let top = unique("resent");
    let pv = unique("pv");
    let path = p(&[&top, "ns", "vol"]);
    assert_eq!(
        v.create(&pv, &path, OWNED, Existing::Refuse, None).await.unwrap(),
        Created::New
    );
    let md = fs::metadata(backing.join(&top).join("ns/vol")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 2000, 0o2770));
    assert_eq!(v.staged_target(&pv).await.unwrap(), Some(path.clone()));
    for procedure in [MKDIR, CREATE, RENAME] {
        assert!(
            proxy.swallowed(procedure) > 0,
            "no reply of procedure {procedure} was lost"
        );
    }
    // The same volume again: its own attempt, adopted (not a foreign directory).
    assert_eq!(
        v.create(&pv, &path, OWNED, Existing::Refuse, None).await.unwrap(),
        Created::Adopted
    );
    v.finish(&pv).await.unwrap();
    assert!(!v.staged().await.unwrap().contains(&pv));

    // Files and a subdirectory, made past the proxy; one request at a time, so that every
    // REMOVE and RMDIR loses its first reply and gets its resend's.
    let direct = env.connect(EXPORT, &[], 2).await;
    direct.mkdir_p(&[&top, "ns", "vol", "sub"]).await.unwrap();
    let names: Vec<String> = (0..5).map(|i| format!("f{i}")).collect();
    direct
        .create_files(&[&top, "ns", "vol"], names.clone(), 4)
        .await
        .unwrap();
    direct
        .create_files(&[&top, "ns", "vol", "sub"], names, 4)
        .await
        .unwrap();
    assert_eq!(
        v.delete(&path, 1).await.unwrap(),
        Removed::Removed { entries: 12 }
    );
    assert!(proxy.swallowed(REMOVE) >= 5 && proxy.swallowed(RMDIR) >= 1);
    assert!(!backing.join(&top).join("ns/vol").exists());
    // Each lost reply cost a connection: the resends went over new ones.
    assert!(proxy.accepted() > 1, "{} connections", proxy.accepted());
    cleanup(&env, &top).await;
}

/// A delete with more requests in flight than the pool has connections grows the pool to them:
/// more connections are opened (up to `MAX_CONNECTIONS`); a serial one uses what the pool has.
#[tokio::test]
async fn a_parallel_delete_grows_the_pool_and_a_serial_one_does_not() {
    let Some(env) = nfs::env(SUITE) else {
        return;
    };
    let upstream = SocketAddr::new(env.server.parse().unwrap(), env.nfs_port);
    let direct = env.connect(EXPORT, &[], 16).await;
    let top = unique("pool");
    let names: Vec<String> = (0..2000).map(|i| format!("file-{i:04}")).collect();
    for vol in ["serial", "parallel"] {
        direct.mkdir_p(&[&top, vol]).await.unwrap();
        direct
            .create_files(&[&top, vol], names.clone(), 16)
            .await
            .unwrap();
    }
    for (vol, concurrency) in [("serial", 1), ("parallel", 32)] {
        let proxy = Proxy::start(upstream, &[]).await;
        let v = through(&env, &proxy, &[], 2).await;
        assert_eq!(v.transport().connection().await.unwrap().info().connections, 2);
        let before = proxy.accepted();
        assert!((1..=2).contains(&before), "{before} connections at connect");
        assert_eq!(
            v.delete(&p(&[&top, vol]), concurrency).await.unwrap(),
            Removed::Removed { entries: 2001 }
        );
        let used = proxy.accepted();
        eprintln!("delete with {concurrency} in flight: {used} connections");
        if concurrency == 1 {
            assert!(used <= 2, "a serial delete opened {used} connections");
        } else {
            assert!(
                used > 2 && used <= MAX_CONNECTIONS.min(concurrency),
                "a delete with {concurrency} in flight opened {used} connections"
            );
        }
    }
    cleanup(&env, &top).await;
}

/// Removes a test's top-level directory (errors ignored: this is only tidying up).
async fn cleanup(env: &nfs::Env, top: &str) {
    let _ = env.lazy_volumes(EXPORT, &[]).delete(&p(&[top]), 16).await;
}
