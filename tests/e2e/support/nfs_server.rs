//! The NFS server of the end-to-end suite and the local trial: an nfs-ganesha container
//! (scripts/nfs-server.sh) serving a host directory on one loopback address, removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use super::free_ports;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nfs-server.sh");

/// An nfs-ganesha container serving `dir/export` on `bind`, removed on drop.
pub struct NfsServer {
    pub name: String,
    pub bind: String,
    /// The host directory the server exports as `/export`.
    pub backing: PathBuf,
    pub port: u16,
    pub mount_port: u16,
    /// Serves NFSv4 only (no MOUNT): classes ask for `nfsvers=4.1`.
    pub v4_only: bool,
}

pub fn podman_usable() -> bool {
    Command::new("podman")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl NfsServer {
    pub async fn start(name: &str, bind: &str, dir: &Path) -> Result<NfsServer> {
        Self::start_with(name, bind, dir, &[]).await
    }

    /// NFSv4 only (no MOUNT listener, one published port), with a grace period of
    /// `grace_secs` after each restart (`None`: graceless, as the default server).
    pub async fn start_v4_only(
        name: &str,
        bind: &str,
        dir: &Path,
        grace_secs: Option<u32>,
    ) -> Result<NfsServer> {
        let grace = grace_secs.map(|g| g.to_string());
        let mut env = vec![("NFS_SERVER_PROTOCOLS", "4")];
        if let Some(grace) = grace.as_deref() {
            env.push(("NFS_SERVER_GRACE", grace));
        }
        Self::start_with(name, bind, dir, &env).await
    }

    async fn start_with(name: &str, bind: &str, dir: &Path, env: &[(&str, &str)]) -> Result<NfsServer> {
        let [port, mount_port] = free_ports::<2>()?;
        let v4_only = env.contains(&("NFS_SERVER_PROTOCOLS", "4"));
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT)
            .args(["start", name])
            .arg(dir)
            .args([port.to_string(), mount_port.to_string()])
            .env("NFS_SERVER_BIND", bind)
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .context("running scripts/nfs-server.sh")?;
        if !output.status.success() {
            bail!(
                "scripts/nfs-server.sh start {name} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(NfsServer {
            name: name.to_owned(),
            bind: bind.to_owned(),
            backing: dir.join("export"),
            port,
            mount_port,
            v4_only,
        })
    }

    /// Kills the server at once (`podman restart -t 0`: every connection and session is lost)
    /// and waits until it answers again.
    pub async fn restart(&self) -> Result<()> {
        self.podman("restart")?;
        let (name, bind) = (self.name.clone(), self.bind.clone());
        let output = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .arg(SCRIPT)
                .args(["wait", &name, "60"])
                .env("NFS_SERVER_BIND", bind)
                .stdin(Stdio::null())
                .output()
        })
        .await?
        .context("running scripts/nfs-server.sh wait")?;
        ensure!(
            output.status.success(),
            "{} did not come back: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    pub fn podman(&self, verb: &str) -> Result<()> {
        // A restart kills at once, as a crash would.
        let args: &[&str] = if verb == "restart" {
            &["restart", "-t", "0"]
        } else {
            &[verb]
        };
        let status = Command::new("podman")
            .args(args)
            .arg(&self.name)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("podman {verb} {}", self.name))?;
        ensure!(status.success(), "podman {verb} {} failed: {status}", self.name);
        Ok(())
    }

    /// What a StorageClass of this server needs in `mountOptions`.
    pub fn mount_options(&self) -> serde_json::Value {
        if self.v4_only {
            return json!([
                "nfsvers=4.1",
                format!("port={}", self.port),
                "timeo=10",
                "retrans=1"
            ]);
        }
        json!([
            "nfsvers=3",
            format!("port={},mountport={}", self.port, self.mount_port),
            // 1 s per request, one resend: a stopped server fails an operation within seconds.
            "timeo=10",
            "retrans=1",
        ])
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["unpause", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .args(["stop", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
