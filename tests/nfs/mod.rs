//! Shared setup of the tests that need a real NFS server (nfs-ganesha in a podman container, see
//! scripts/nfs-server.sh and tests/nfs/server/README.md). Included by tests/conformance.rs,
//! tests/direct_nfs.rs and tests/direct_nfs_stall.rs with `mod nfs;`.
//!
//! Environment (what `eval "$(bash scripts/nfs-server.sh start NAME HOSTDIR NFS_PORT MOUNT_PORT)"`
//! exports):
//!
//! * `NFS_TEST_SERVER`                 the server's address (`127.0.0.1`). Unset: every test of the
//!   suite passes without doing anything, after one loud `*** SKIPPED ... ***` line on stderr.
//! * `NFS_TEST_NFS_PORT`, `NFS_TEST_MOUNT_PORT`  the published NFS and MOUNT ports.
//! * `NFS_TEST_EXPORT_DIR`             host directory behind `/export` (No_Root_Squash).
//! * `NFS_TEST_EXPORT_ROOTSQUASH_DIR`  host directory behind `/export-rootsquash` (Root_Squash).
//! * `NFS_TEST_REQUIRE=1`              a missing `NFS_TEST_SERVER` fails every test instead.
//! * `NFS_TEST_V4_SERVER`, `NFS_TEST_V4_NFS_PORT`, `NFS_TEST_V4_EXPORT_DIR`: an NFSv4-only server
//!   (`NFS_SERVER_PROTOCOLS=4`), for the NFSv4.1 half of the conformance suite ([`env_v4_only`]).
//!
//! The server also serves `/export-secure` (the `/export` directory again, `PrivilegedPort = true`),
//! see tests/nfs/server/ganesha.conf.
//!
//! Every test works below its own unique top-level directory and with its own PV names (see
//! [`unique`]), so the tests of all suites can run in parallel on one export.
#![allow(dead_code)] // each test binary uses a different part
#![allow(clippy::unwrap_used, clippy::expect_used)] // test setup: a failure is a failed test

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use nfs_subdir_provisioner::core::export::{ClientOptions, Export, client_options};
use nfs_subdir_provisioner::storage::Volumes;
use nfs_subdir_provisioner::storage::nfs3::{Nfs3Transport, NfsError};

/// Pseudo paths of the test server's exports (tests/nfs/server/ganesha.conf).
pub const EXPORT: &str = "/export";
pub const EXPORT_ROOTSQUASH: &str = "/export-rootsquash";
pub const EXPORT_SECURE: &str = "/export-secure";

pub const SERVER_VAR: &str = "NFS_TEST_SERVER";
pub const REQUIRE_VAR: &str = "NFS_TEST_REQUIRE";

/// The test server, as the environment describes it.
#[derive(Clone, Debug)]
pub struct Env {
    pub server: String,
    pub nfs_port: u16,
    pub mount_port: u16,
    /// Host directory behind [`EXPORT`].
    pub export_dir: PathBuf,
    /// Host directory behind [`EXPORT_ROOTSQUASH`].
    pub rootsquash_dir: PathBuf,
}

impl Env {
    /// The export `share` of this server.
    pub fn export(&self, share: &str) -> Export {
        Export {
            server: self.server.clone(),
            path: share.to_owned(),
        }
    }

    /// Client options with this server's ports, then `extra` mount options (`timeo=5`,
    /// `noresvport`, ...), as a StorageClass's `mountOptions` give them.
    pub fn options(&self, extra: &[&str]) -> ClientOptions {
        let mut list = vec![
            format!("port={}", self.nfs_port),
            format!("mountport={}", self.mount_port),
        ];
        list.extend(extra.iter().map(|o| (*o).to_owned()));
        client_options(&list).expect("test mount options")
    }

    /// A transport to `share`, connected now with a pool of `connections`.
    pub async fn connect(&self, share: &str, extra: &[&str], connections: usize) -> Nfs3Transport {
        self.try_connect(share, extra, connections)
            .await
            .unwrap_or_else(|e| panic!("connect to {}:{share}: {e}", self.server))
    }

    pub async fn try_connect(
        &self,
        share: &str,
        extra: &[&str],
        connections: usize,
    ) -> Result<Nfs3Transport, NfsError> {
        Nfs3Transport::connect(self.export(share), self.options(extra), connections).await
    }

    /// Client options of an NFSv4.1 class of this server.
    pub fn options_v41(&self, extra: &[&str]) -> ClientOptions {
        let mut list = vec!["nfsvers=4.1".to_owned(), format!("port={}", self.nfs_port)];
        list.extend(extra.iter().map(|o| (*o).to_owned()));
        client_options(&list).expect("test mount options")
    }

    /// The volume protocol over [`Env::connect`]; its transport makes preconditions
    /// (`volumes.transport().mkdir_p(..)`).
    pub async fn volumes(&self, share: &str, extra: &[&str], connections: usize) -> Volumes<Nfs3Transport> {
        Volumes::new(self.connect(share, extra, connections).await)
    }

    /// The volume protocol over a transport that connects on first use, as the provisioner makes
    /// one for a StorageClass that names this server.
    pub fn lazy_volumes(&self, share: &str, extra: &[&str]) -> Volumes<Nfs3Transport> {
        Volumes::new(Nfs3Transport::new(self.export(share), self.options(extra)))
    }
}

fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Written straight to stderr, past the test harness's output capture, so that a skipped suite
/// is visible in a plain `cargo test`.
fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn var(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{name} must be set with {SERVER_VAR} (see scripts/nfs-server.sh)"))
}

/// The test server, or `None` when [`SERVER_VAR`] is unset: then `suite` is reported skipped (once
/// per test binary), or, with `NFS_TEST_REQUIRE=1`, the test fails.
pub fn env(suite: &str) -> Option<Env> {
    let Some(server) = std::env::var(SERVER_VAR).ok().filter(|v| !v.is_empty()) else {
        if required() {
            panic!(
                "{SERVER_VAR} not set but {REQUIRE_VAR}=1: start a server with \
                 eval \"$(bash scripts/nfs-server.sh start NAME HOSTDIR NFS_PORT MOUNT_PORT)\""
            );
        }
        static BANNER: Once = Once::new();
        BANNER.call_once(|| {
            loud(&format!(
                "*** SKIPPED {suite}: {SERVER_VAR} not set (start one with scripts/nfs-server.sh) ***"
            ));
        });
        return None;
    };
    let port = |name: &str| {
        var(name)
            .parse::<u16>()
            .unwrap_or_else(|e| panic!("{name}: not a port: {e}"))
    };
    Some(Env {
        server,
        nfs_port: port("NFS_TEST_NFS_PORT"),
        mount_port: port("NFS_TEST_MOUNT_PORT"),
        export_dir: PathBuf::from(var("NFS_TEST_EXPORT_DIR")),
        rootsquash_dir: PathBuf::from(var("NFS_TEST_EXPORT_ROOTSQUASH_DIR")),
    })
}

/// The NFSv4-only test server (`NFS_TEST_V4_*`, as scripts/test.sh starts it), or `None` when
/// [`SERVER_VAR`] is unset, as [`env`]. With the shared server set but this one not, the v4
/// half fails under `NFS_TEST_REQUIRE=1` and is skipped loudly otherwise.
pub fn env_v4_only(suite: &str) -> Option<Env> {
    env(suite)?;
    let Some(server) = std::env::var("NFS_TEST_V4_SERVER").ok().filter(|v| !v.is_empty()) else {
        if required() {
            panic!(
                "NFS_TEST_V4_SERVER not set but {REQUIRE_VAR}=1: start an NFSv4-only server with \
                 NFS_SERVER_PROTOCOLS=4 bash scripts/nfs-server.sh start ... (scripts/test.sh does)"
            );
        }
        static BANNER: Once = Once::new();
        BANNER.call_once(|| {
            loud(&format!(
                "*** SKIPPED {suite} over NFSv4-only: NFS_TEST_V4_SERVER not set ***"
            ));
        });
        return None;
    };
    let port = var("NFS_TEST_V4_NFS_PORT")
        .parse::<u16>()
        .unwrap_or_else(|e| panic!("NFS_TEST_V4_NFS_PORT: not a port: {e}"));
    Some(Env {
        server,
        nfs_port: port,
        // NFSv4 has no MOUNT.
        mount_port: 0,
        export_dir: PathBuf::from(var("NFS_TEST_V4_EXPORT_DIR")),
        rootsquash_dir: PathBuf::from(var("NFS_TEST_V4_EXPORT_ROOTSQUASH_DIR")),
    })
}

/// Whether suites that start servers of their own should run: the same switch as [`env`]
/// ([`SERVER_VAR`] set means this machine runs test servers: root, podman). Skips loudly, or
/// fails with `NFS_TEST_REQUIRE=1`.
pub fn servers_enabled(suite: &str) -> bool {
    env(suite).is_some()
}

/// A name unique to this process and call, for a test's own top-level directory and PV names.
/// Lower case letters, digits and '-' only (a valid PV name).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Path components.
pub fn p(components: &[&str]) -> Vec<String> {
    components.iter().map(|c| (*c).to_owned()).collect()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Two TCP ports that were free on 127.0.0.1 a moment ago.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// A test server of its own (scripts/nfs-server.sh start), for tests that stop or restart it;
/// removed when dropped, also when the test fails.
pub struct OwnServer {
    pub name: String,
    pub env: Env,
    /// HOSTDIR; removed after the container.
    dir: tempfile::TempDir,
}

impl OwnServer {
    /// Starts a container on free ports (a few attempts: a port may be taken between the check
    /// and podman's bind).
    pub fn start(label: &str) -> Self {
        Self::start_with(label, &[])
    }

    /// As [`OwnServer::start`], serving NFSv4 only: no MOUNT, and no NFSv3
    /// (`NFS_SERVER_PROTOCOLS=4`).
    pub fn start_v4_only(label: &str) -> Self {
        Self::start_with(label, &[("NFS_SERVER_PROTOCOLS", "4")])
    }

    /// As [`OwnServer::start`], with scripts/nfs-server.sh's settings `env` (e.g.
    /// `NFS_SERVER_GRACE`).
    pub fn start_with(label: &str, env: &[(&str, &str)]) -> Self {
        let name = unique(&format!("nfs-test-{label}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap();
        let mut last = String::new();
        for _ in 0..3 {
            let (nfs_port, mount_port) = free_ports();
            let out = Command::new("bash")
                .envs(env.iter().copied())
                .arg(repo().join("scripts/nfs-server.sh"))
                .args(["start", &name])
                .arg(dir.path())
                .args([nfs_port.to_string(), mount_port.to_string()])
                .output()
                .expect("run scripts/nfs-server.sh");
            if out.status.success() {
                let env = Env {
                    server: "127.0.0.1".to_owned(),
                    nfs_port,
                    mount_port,
                    export_dir: dir.path().join("export"),
                    rootsquash_dir: dir.path().join("export-rootsquash"),
                };
                return OwnServer { name, env, dir };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            let _ = Command::new("bash")
                .arg(repo().join("scripts/nfs-server.sh"))
                .args(["stop", &name])
                .output();
        }
        panic!("scripts/nfs-server.sh start {name} failed:\n{last}");
    }

    /// `podman pause`: every process of the server is frozen (connections stay open, nothing
    /// answers) until the guard is dropped.
    pub fn pause(&self) -> Paused<'_> {
        podman(&["pause", &self.name]);
        let state = podman(&[
            "container",
            "inspect",
            "--format",
            "{{.State.Status}}",
            &self.name,
        ]);
        assert_eq!(state.trim(), "paused", "container {}", self.name);
        Paused(self)
    }

    /// Restarts the container at once (`podman restart -t 0`: the server is killed, every
    /// connection to it is lost) and waits until it answers again.
    pub fn restart(&self) {
        podman(&["restart", "-t", "0", &self.name]);
        let out = Command::new("bash")
            .arg(repo().join("scripts/nfs-server.sh"))
            .args(["wait", &self.name, "60"])
            .output()
            .expect("run scripts/nfs-server.sh wait");
        assert!(
            out.status.success(),
            "{} did not come back: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // Unfreeze first: a paused container cannot always be removed at once.
        let _ = Command::new("podman").args(["unpause", &self.name]).output();
        let out = Command::new("bash")
            .arg(repo().join("scripts/nfs-server.sh"))
            .args(["stop", &self.name])
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            loud(&format!(
                "could not remove test NFS server {}: {out:?}",
                self.name
            ));
        }
    }
}

/// Unpauses the server when dropped, so that a failing assertion never leaves it frozen.
pub struct Paused<'a>(&'a OwnServer);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["unpause", &self.0.name]).output();
    }
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
