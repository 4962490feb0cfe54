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
        let [port, mount_port] = free_ports::<2>()?;
        let mut cmd = Command::new("bash");
        cmd.arg(SCRIPT)
            .args(["start", name])
            .arg(dir)
            .args([port.to_string(), mount_port.to_string()])
            .env("NFS_SERVER_BIND", bind)
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
        })
    }

    pub fn podman(&self, verb: &str) -> Result<()> {
        let status = Command::new("podman")
            .args([verb, &self.name])
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("podman {verb} {}", self.name))?;
        ensure!(status.success(), "podman {verb} {} failed: {status}", self.name);
        Ok(())
    }

    /// What a StorageClass of this server needs in `mountOptions`.
    pub fn mount_options(&self) -> serde_json::Value {
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
