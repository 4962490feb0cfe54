//! Infrastructure of the end-to-end suite: a real control plane ([`ControlPlane`]), child processes
//! ([`ManagedChild`]), deadline polling ([`poll_until`]) and the trial registry ([`trial`]).

// Not every scenario uses every helper.
#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod http;
pub mod nfs_server;
pub mod poll;
pub mod process;
pub mod prometheus;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use cluster::{
    ControlPlane, KcmClientLimits, StartOptions, client_from_kubeconfig, config_from_kubeconfig, free_ports,
};
pub use poll::poll_until;
pub use process::{ManagedChild, log_tail};

/// Environment variable naming the directory with `etcd`, `kube-apiserver`, `kube-controller-manager`.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";
/// Set to `1` to make missing binaries a failure instead of a skip (CI).
pub const REQUIRE_ENV: &str = "E2E_REQUIRE";
/// Set to `1` to keep the suite's working directory (logs, kubeconfigs) even when all trials pass.
pub const KEEP_ENV: &str = "E2E_KEEP";
pub const ASSET_NAMES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
/// How to get the binaries, for messages.
pub const HOW_TO_GET_ASSETS: &str = "export KUBEBUILDER_ASSETS=$(bash scripts/build-control-plane.sh)";
/// Default time limit of one trial (see [`E2eTrial::with_timeout`]).
pub const DEFAULT_TRIAL_TIMEOUT: Duration = Duration::from_secs(300);

/// The control-plane binaries directory from `$KUBEBUILDER_ASSETS`, or an explanation of exactly
/// what is missing.
pub fn assets_from_env() -> Result<PathBuf, String> {
    let dir = match std::env::var_os(ASSETS_ENV) {
        None => return Err(format!("{ASSETS_ENV} is not set")),
        Some(dir) if dir.is_empty() => return Err(format!("{ASSETS_ENV} is set but empty")),
        Some(dir) => PathBuf::from(dir),
    };
    if !dir.is_dir() {
        return Err(format!("{ASSETS_ENV}={} is not a directory", dir.display()));
    }
    let problems: Vec<String> = ASSET_NAMES
        .iter()
        .filter_map(|name| {
            let path = dir.join(name);
            match std::fs::metadata(&path) {
                Err(_) => Some(format!("{} is missing", path.display())),
                Ok(m) if !m.is_file() => Some(format!("{} is not a file", path.display())),
                Ok(m) if std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 == 0 => {
                    Some(format!("{} is not executable", path.display()))
                }
                Ok(_) => None,
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(dir)
    } else {
        Err(format!("{ASSETS_ENV}={}: {}", dir.display(), problems.join("; ")))
    }
}

/// Everything the trials of one run share: the control plane and the run's working directory.
#[derive(Debug)]
pub struct Suite {
    pub cp: ControlPlane,
    pub assets: PathBuf,
    /// The run's working directory: `control-plane/` and one directory per trial.
    pub workdir: PathBuf,
    /// The project's RBAC manifests (`<crate>/rbac`).
    pub rbac_dir: PathBuf,
}

/// What a trial body gets: the shared control plane plus per-trial helpers.
#[derive(Debug, Clone)]
pub struct TrialCtx {
    pub suite: Arc<Suite>,
    /// The trial's name.
    pub name: String,
    /// A directory of the trial's own (created), e.g. for a provisioner's log and export directory.
    pub dir: PathBuf,
    /// Logs of the processes started with [`TrialCtx::spawn`]: their tails are appended to the
    /// failure message when the trial fails.
    pub logs: Arc<Mutex<Vec<PathBuf>>>,
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

impl TrialCtx {
    /// The shared control plane.
    pub fn cp(&self) -> &ControlPlane {
        &self.suite.cp
    }

    /// A cluster-admin client (call inside the trial's runtime).
    pub fn admin_client(&self) -> kube::Client {
        self.suite.cp.admin_client()
    }

    /// A name unique in this run, a valid DNS-1123 label: `<prefix>-<n>`.
    pub fn unique_name(&self, prefix: &str) -> String {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let mut prefix: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        prefix.truncate(50);
        let prefix = prefix.trim_matches('-');
        format!("{}-{n}", if prefix.is_empty() { "e2e" } else { prefix })
    }

    /// Creates a fresh namespace named after `prefix` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = self.unique_name(prefix);
        self.suite.cp.create_namespace(&name).await?;
        Ok(name)
    }

    /// Creates `namespace` with the project's RBAC (ServiceAccount, roles, bindings) and returns a
    /// kubeconfig authenticating as that ServiceAccount: how a provisioner under test must run.
    pub async fn provisioner_kubeconfig(&self, namespace: &str) -> anyhow::Result<PathBuf> {
        self.suite
            .cp
            .service_account_kubeconfig(namespace, &self.suite.rbac_dir)
            .await
    }

    /// Starts a control plane of the trial's own (in `dir/<name>`), for trials that restart or
    /// break it. Blocking (a few seconds); the caller owns and drops it.
    pub fn private_control_plane(&self, name: &str) -> anyhow::Result<ControlPlane> {
        ControlPlane::start(&self.suite.assets, &self.dir.join(name))
    }

    /// Path for a log file of this trial, e.g. `log_path("provisioner")` → `dir/provisioner.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Spawns a process of this trial with its output in `log_path(name)`; if the trial fails, the
    /// tail of that log is part of the failure message. E.g. the provisioner under test:
    ///
    /// ```ignore
    /// let kubeconfig = t.provisioner_kubeconfig(&ns).await?;
    /// let provisioner = t.spawn(
    ///     "provisioner",
    ///     Path::new(env!("CARGO_BIN_EXE_nfs-subdir-provisioner")),
    ///     ["--some-flag", "value"],
    ///     [("KUBECONFIG", kubeconfig.as_os_str())],
    /// )?;
    /// ```
    pub fn spawn<I, S, E, K, V>(
        &self,
        name: &str,
        program: &Path,
        args: I,
        env: E,
    ) -> anyhow::Result<ManagedChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let log = self.log_path(name);
        let child = ManagedChild::spawn(name, program, args, env, &log)?;
        let mut logs = self.logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !logs.contains(&log) {
            logs.push(log);
        }
        Ok(child)
    }

    /// The tails (`n` lines) of the logs of the processes started with [`TrialCtx::spawn`].
    pub fn spawned_logs_tail(&self, n: usize) -> String {
        let logs = self.logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        logs.iter()
            .map(|log| format!("----- last lines of {}:\n{}", log.display(), log_tail(log, n)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

type Body = Box<dyn FnOnce(TrialCtx, Duration) -> anyhow::Result<()> + Send>;

/// A registered trial; turned into a `libtest_mimic::Trial` by the runner in `main.rs`.
pub struct E2eTrial {
    pub name: String,
    pub timeout: Duration,
    body: Body,
}

impl E2eTrial {
    /// Overrides [`DEFAULT_TRIAL_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the body (used by the runner).
    pub fn run(self, ctx: TrialCtx) -> anyhow::Result<()> {
        (self.body)(ctx, self.timeout)
    }
}

/// Registers an async trial:
///
/// ```ignore
/// pub fn trials() -> Vec<E2eTrial> {
///     vec![trial("claims_get_volumes", |t| async move {
///         let ns = t.namespace("claims").await?;
///         ...
///         Ok(())
///     })]
/// }
/// ```
///
/// The body runs on the trial's own thread inside its own multi-thread tokio runtime (2 workers;
/// the body itself is `block_on`-ed, so it need not be `Send` and may call blocking helpers such as
/// [`ManagedChild::wait_exit`] without stalling its clients). The runtime, and so every task the
/// body spawned, is dropped when the body ends. An `Err`, a panic or exceeding the timeout fails the
/// trial.
pub fn trial<F, Fut>(name: &str, body: F) -> E2eTrial
where
    F: FnOnce(TrialCtx) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    let timeout_name = name.to_owned();
    let run: Body = Box::new(move |ctx: TrialCtx, timeout: Duration| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("e2e-{}", ctx.name))
            .enable_all()
            .build()?;
        let result = runtime.block_on(async move {
            match tokio::time::timeout(timeout, body(ctx)).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!(
                    "trial {timeout_name} timed out after {timeout:?}"
                )),
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
        result
    });
    E2eTrial {
        name: name.to_owned(),
        timeout: DEFAULT_TRIAL_TIMEOUT,
        body: run,
    }
}

/// `<crate>/rbac`.
pub fn rbac_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rbac")
}

/// An error and its causes, one per line, without a backtrace (even with `RUST_BACKTRACE` set).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        text.push_str("\n  caused by: ");
        text.push_str(&cause.to_string());
    }
    text
}
