//! Child processes owned by a test: output captured to a log file, killed (SIGKILL) on drop.
//!
//! Every child also gets a tiny `sh` watchdog that SIGKILLs it if the test binary itself disappears
//! (e.g. it was SIGKILLed by a CI timeout and no destructor ran), so no control plane or provisioner
//! outlives the test run.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A spawned process whose stdout and stderr go to `log_path()`. All methods take `&self`, so a
/// `ManagedChild` can be shared (`Arc`) between a test body and helper tasks.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    pid: u32,
    log: PathBuf,
    child: Mutex<Child>,
    watchdog: Mutex<Option<Child>>,
}

impl ManagedChild {
    /// Spawns `program` with `args` and extra `env` (on top of the inherited environment), stdin
    /// from /dev/null, stdout and stderr appended to `log` (created if needed, with its directory).
    pub fn spawn<I, S, E, K, V>(
        name: &str,
        program: &Path,
        args: I,
        env: E,
        log: &Path,
    ) -> anyhow::Result<ManagedChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(program);
        cmd.args(args).envs(env);
        Self::spawn_command(name, cmd, log)
    }

    /// Like [`ManagedChild::spawn`] for a prepared `Command` (current dir, env removal, ...).
    /// Its stdin/stdout/stderr settings are overridden.
    pub fn spawn_command(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<ManagedChild> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        writeln!(out, "=== e2e: starting {name}: {cmd:?}")?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({})", cmd.get_program().to_string_lossy()))?;
        let pid = child.id();
        let watchdog = spawn_watchdog(pid);
        Ok(ManagedChild {
            name: name.to_owned(),
            pid,
            log: log.to_owned(),
            child: Mutex::new(child),
            watchdog: Mutex::new(watchdog),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The exit status if the process has exited (it is reaped then), `None` while it runs.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.try_exit_status().is_none()
    }

    /// SIGKILL and reap. A no-op if the process already exited.
    pub fn kill9(&self) {
        let mut child = self.child();
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        drop(child);
        self.stop_watchdog();
    }

    /// Sends SIGTERM (does not wait; see [`ManagedChild::wait_exit`]). An error if the process has
    /// already exited.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends a signal by name (`"TERM"`, `"INT"`, `"HUP"`, `"STOP"`, `"CONT"`, ...) with kill(1).
    /// (The crate's nix build has no `signal` feature, and the crate forbids unsafe code.)
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        // Hold the lock so the pid cannot be reaped (and reused) while kill(1) runs.
        let mut child = self.child();
        if let Some(status) = child.try_wait().ok().flatten() {
            bail!("{} (pid {}) has already exited: {status}", self.name, self.pid);
        }
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .status()
            .context("running kill(1)")?;
        if !status.success() {
            bail!("kill -s {signal} {} failed: {status}", self.pid);
        }
        Ok(())
    }

    /// Waits (blocking the calling thread, polling every 20 ms) up to `timeout` for the process to
    /// exit; `None` if it is still running then.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Async flavour of [`ManagedChild::wait_exit`] for use inside a tokio runtime.
    pub async fn wait_exit_async(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `n` lines of the log file (lossy UTF-8; only the last 1 MiB is read).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    fn stop_watchdog(&self) {
        let mut guard = self
            .watchdog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut watchdog) = guard.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `sh` loop that SIGKILLs `child` once this test process is gone; exits by itself once the child
/// is gone. Best effort: a missing `sh` only loses this safety net.
fn spawn_watchdog(child: u32) -> Option<Child> {
    const SCRIPT: &str = r#"while kill -0 "$1" 2>/dev/null; do
  kill -0 "$2" 2>/dev/null || exit 0
  sleep 1
done
kill -9 "$2" 2>/dev/null"#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("e2e-watchdog")
        .arg(std::process::id().to_string())
        .arg(child.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// The last `n` lines of a file (lossy UTF-8; only the last 1 MiB is read). Never fails: an
/// unreadable file yields a one-line explanation.
pub fn log_tail(path: &Path, n: usize) -> String {
    fn read_end(path: &Path) -> std::io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(1 << 20);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(buf)
    }
    match read_end(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
