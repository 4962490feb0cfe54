//! Provisioning and release throughput against a real Kubernetes 1.20 control plane.
//!
//! `KUBEBUILDER_ASSETS=$(bash scripts/build-control-plane.sh) cargo bench --bench provision [-- 100 1000]`
//!
//! For every kube-controller-manager client limit (`BENCH_KCM_QPS`, `qps/burst` pairs, default
//! `20/30,200/400`: its own defaults, which most clusters run, and a budget it hardly waits for)
//! starts etcd + kube-apiserver + kube-controller-manager (the end-to-end suite's harness), then
//! for every claim count N (arguments, else `BENCH_N=100,1000`, else 100 and 1000) and every run
//! (`BENCH_RUNS`, default 3) runs the release-built provisioner binary as a separate process, exactly
//! as in production (ServiceAccount kubeconfig bound by `rbac/`, leader election on, default timings,
//! a temporary directory as `NFS_MOUNT_PATH`), and measures:
//!
//! 1. provisioning: N claims created at once (64 requests in flight); seconds from the first create
//!    returning until every PV has been seen by the bench's PV watch, and until every claim is seen
//!    `Bound`; per-claim latency from its create returning to its PV being seen (p50, p99). From the
//!    same watches, the binder's share: when kube-controller-manager handed the last claim over (the
//!    `storage-provisioner` annotation seen), our overhead (the last PV's time minus that) and the
//!    ratio of the two times (both counted from the first create returning);
//! 2. leader start-up with N claims and PVs present: a fresh provisioner (every request logged) is
//!    timed from process start to `caches synced` in its log and to `/readyz` 200, and its requests
//!    counted by verb; any write other than the Lease's, and any directory or PV created or
//!    removed, from its start to the end of the idle window is a violation, printed as one;
//! 3. idle API requests: that provisioner is left alone for `BENCH_IDLE_SECS` (30) seconds and its
//!    "requesting" log lines are counted: Lease, watch and other;
//! 4. release: the N claims deleted at once; seconds from the first delete being sent until every PV
//!    is gone and every directory removed (class `onDelete: delete`), and likewise for a second batch
//!    of N claims of the default (archive) class until every `archived-*` directory exists
//!    (`BENCH_ARCHIVE=0` skips that batch); the binder's share again: when the last PV was seen
//!    `Released`, our overhead after it and the ratio;
//! 5. the provisioner's CPU seconds (utime + stime from `/proc/<pid>/stat`) in each phase, in total
//!    and per claim, the control plane's and the bench's own, and the provisioner's peak RSS
//!    (`VmHWM`) with N claims and PVs, split by 100 ms samples of `/proc/<pid>/status` into
//!    anonymous and file-backed memory (and its threads and open sockets counted).
//!
//! A phase's deadline grows with N and shrinks with kube-controller-manager's QPS ([`phase_deadline`]):
//! at 20 requests/s the binder alone needs minutes per thousand claims.
//!
//! Prints a Markdown table: the median of the runs with min–max, then the main figures of every
//! run with the load average at its start, the violations if any, and `uptime` before and after
//! (other work on the machine shows there); if a run fails, what was measured before it is printed
//! all the same. `BENCH_KEEP=1` keeps the working directory (logs of every component and
//! provisioner); `BENCH_PROVISIONER_WRAPPER` (e.g. `valgrind --tool=massif`) runs each run's
//! provisioning-phase provisioner (or the `BENCH_PROVISIONER_WRAPPED`th: 2 start-up and idle, 3
//! release) under a profiler; `BENCH_PROVISIONER_BIN` measures another build
//! of the provisioner (the image's, or one from before a change). `scripts/bench-scale.sh` runs
//! the whole scale matrix (N = 100, 1000, 10 000 at both client limits) for one binary.
//! `BENCH_NFS=3` or `4.1` has the classes name an nfs-ganesha container (scripts/nfs-server.sh;
//! `4.1`: NFSv4 only) serving the run's export directory, reached by the direct client of that
//! version instead of the mounted export. Without the
//! `--bench` argument that `cargo bench` passes (e.g. under `cargo test --all-targets`) it does
//! nothing.

mod common;
#[path = "../tests/e2e/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::{
    ProcStat, clock_ticks, env_number, loadavg, median_range, parse_count, parse_list, proc_stat, uptime,
};
use support::{ControlPlane, KcmClientLimits, ManagedChild, StartOptions, Suite, TrialCtx, poll_until};

/// The provisioner measured: `BENCH_PROVISIONER_BIN`, e.g. the image's static musl build (`cargo
/// build --profile dist --target x86_64-unknown-linux-musl`), else this build's binary.
fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("BENCH_PROVISIONER_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_nfs-subdir-provisioner").to_owned())
    })
}
const SERVER: &str = "127.0.0.1";
/// Claim creations and deletions in flight at once.
const CONCURRENCY: usize = 64;
/// The provisioner's staging area at the export root.
const STAGING_DIR: &str = ".nfs-subdir-provisioner";
/// Time for a provisioner to start, win the Lease and sync its caches (see [`startup_deadline`]).
const STARTUP: Duration = Duration::from_secs(60);
/// Upper bound for a provisioner to exit after SIGTERM (it drains for at most 30 s).
const STOP: Duration = Duration::from_secs(45);
/// The idle phase starts once no request other than Lease renewals was logged for this long.
const QUIET: Duration = Duration::from_secs(3);
/// The measured phases log as in production: the binary's defaults (`info`; `auto` is JSON when
/// not on a terminal).
const LOG_PRODUCTION: Logging = Logging {
    filter: "info",
    format: "auto",
};
/// The idle phase logs every HTTP request the client sends, as text (easy to classify).
const LOG_REQUESTS: Logging = Logging {
    filter: "info,kube_client::client::builder=debug",
    format: "text",
};

#[derive(Debug, Clone, Copy)]
struct Logging {
    /// `RUST_LOG`
    filter: &'static str,
    /// `LOG_FORMAT`
    format: &'static str,
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` runs bench targets
    // without it, as a smoke test, and must not start a twenty-minute benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("provision: a benchmark; run it with `cargo bench --bench provision` (skipped)");
        return ExitCode::SUCCESS;
    }
    match run_all() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {}", support::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

struct Options {
    sizes: Vec<usize>,
    /// One control plane each, in this order.
    kcm: Vec<KcmClientLimits>,
    runs: usize,
    idle: Duration,
    /// The second batch: N claims of the archiving class provisioned and released.
    archive: bool,
    keep: bool,
}

/// `qps/burst`, e.g. `20/30`.
fn parse_kcm_limits(s: &str) -> Option<KcmClientLimits> {
    let (qps, burst) = s.split_once('/')?;
    let limits = KcmClientLimits {
        qps: qps.trim().parse().ok()?,
        burst: burst.trim().parse().ok()?,
    };
    (limits.qps > 0 && limits.burst > 0).then_some(limits)
}

fn options() -> Result<Options> {
    // `cargo bench` passes `--bench`; flags are ignored, every other argument is a claim count.
    let mut sizes = Vec::new();
    for arg in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        sizes.extend(parse_list(&arg, "claim count", parse_count)?);
    }
    if sizes.is_empty() {
        sizes = match std::env::var("BENCH_N") {
            Ok(v) => parse_list(&v, "claim count", parse_count)?,
            Err(_) => vec![100, 1000],
        };
    }
    let kcm = match std::env::var("BENCH_KCM_QPS") {
        Ok(v) => parse_list(&v, "BENCH_KCM_QPS setting (qps/burst)", parse_kcm_limits)?,
        Err(_) => vec![KcmClientLimits::DEFAULT, KcmClientLimits::GENEROUS],
    };
    ensure!(!kcm.is_empty(), "BENCH_KCM_QPS names no setting");
    let runs = usize::try_from(env_number("BENCH_RUNS", 3)?)?;
    ensure!(runs > 0, "BENCH_RUNS must be at least 1");
    Ok(Options {
        sizes,
        kcm,
        runs,
        idle: Duration::from_secs(env_number("BENCH_IDLE_SECS", 30)?),
        archive: std::env::var("BENCH_ARCHIVE").map_or(true, |v| v != "0"),
        keep: std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1"),
    })
}

fn run_all() -> Result<()> {
    let opts = options()?;
    let assets = support::assets_from_env()
        .map_err(|why| anyhow::anyhow!("{why}; to get the binaries: {}", support::HOW_TO_GET_ASSETS))?;
    let tmp = tempfile::Builder::new().prefix("nfs-subdir-bench-").tempdir()?;
    let workdir = tmp.path().to_owned();
    let ticks = clock_ticks();
    let load_before = uptime();
    eprintln!(
        "bench: kube-controller-manager client limits {}, N = {:?}, {} run(s) each, idle window {:?}, \
         archive batch {}, provisioner {}, {load_before}",
        opts.kcm
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and "),
        opts.sizes,
        opts.runs,
        opts.idle,
        if opts.archive { "on" } else { "off" },
        binary(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut results = Results::default();
    let mut result = Ok(());
    for &kcm in &opts.kcm {
        result = run_setting(&runtime, &assets, &workdir, kcm, &opts, ticks, &mut results);
        if result.is_err() {
            break;
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    let load_after = uptime();
    if result.is_err() || opts.keep {
        eprintln!("bench: working directory kept: {}", tmp.keep().display());
    }
    // What was measured before a failure is worth having: a run at N = 10 000 takes hours.
    if !results.columns.is_empty() {
        println!("{}", results.markdown(opts.runs));
        println!("Before: {load_before}");
        println!("After:  {load_after}");
    }
    result
}

/// Every run at one kube-controller-manager client limit, on a control plane of its own.
fn run_setting(
    runtime: &tokio::runtime::Runtime,
    assets: &Path,
    workdir: &Path,
    kcm: KcmClientLimits,
    opts: &Options,
    ticks: f64,
    results: &mut Results,
) -> Result<()> {
    let workdir = workdir.join(format!("kcm-{}-{}", kcm.qps, kcm.burst));
    let cp = ControlPlane::start_with(
        assets,
        &workdir.join("control-plane"),
        StartOptions { kcm_client: kcm },
    )?;
    eprintln!(
        "bench: control plane with kube-controller-manager at {kcm} ready ({}), logs in {}",
        cp.startup_phases(),
        cp.workdir().join("logs").display()
    );
    let suite = Arc::new(Suite {
        cp,
        assets: assets.to_owned(),
        workdir,
        rbac_dir: support::rbac_dir(),
    });
    let result = runtime.block_on(async {
        for &n in &opts.sizes {
            let column = format!("N = {n}, kcm {kcm}");
            for run in 0..opts.runs {
                eprintln!(
                    "bench: {column}, run {}/{}: load {}",
                    run + 1,
                    opts.runs,
                    loadavg()
                );
                let outcome = one_run(&suite, kcm, n, run, opts, ticks).await?;
                for m in &outcome.metrics {
                    eprintln!("bench:   {:<55} {}", m.name, m.unit.format(m.value));
                }
                results.push(&column, kcm, n, outcome);
            }
        }
        anyhow::Ok(())
    });
    suite.cp.shutdown();
    result
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Copy)]
enum Unit {
    Seconds,
    Millis,
    /// Milliseconds to two decimals, for CPU time per claim.
    FineMillis,
    MiB,
    PerSecond,
    Count,
    /// A dimensionless quotient, e.g. our last PV's time over the binder's last hand-over's.
    Ratio,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Seconds => format!("{v:.2} s"),
            Unit::Millis => format!("{v:.0} ms"),
            Unit::FineMillis => format!("{v:.2} ms"),
            Unit::MiB => format!("{v:.1} MiB"),
            Unit::PerSecond => format!("{v:.2}/s"),
            Unit::Count => format!("{v:.0}"),
            Unit::Ratio => format!("{v:.3}"),
        }
    }

    fn bare(self, v: f64) -> String {
        match self {
            Unit::Seconds | Unit::PerSecond | Unit::FineMillis => format!("{v:.2}"),
            Unit::MiB => format!("{v:.1}"),
            Unit::Millis | Unit::Count => format!("{v:.0}"),
            Unit::Ratio => format!("{v:.3}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Metric {
    name: String,
    unit: Unit,
    value: f64,
}

fn metric(name: impl Into<String>, unit: Unit, value: f64) -> Metric {
    Metric {
        name: name.into(),
        unit,
        value,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What one run measured, and what it found wrong.
struct RunOutcome {
    metrics: Vec<Metric>,
    /// Writes a starting leader must not make, and the like: printed with the results.
    violations: Vec<String>,
}

/// The runs of one (kube-controller-manager setting, N): a column of the table.
struct Column {
    label: String,
    kcm: KcmClientLimits,
    n: usize,
    runs: Vec<RunOutcome>,
}

/// Every run so far, by column in the order measured.
#[derive(Default)]
struct Results {
    columns: Vec<Column>,
}

impl Results {
    fn push(&mut self, label: &str, kcm: KcmClientLimits, n: usize, outcome: RunOutcome) {
        match self.columns.iter_mut().find(|c| c.label == label) {
            Some(column) => column.runs.push(outcome),
            None => self.columns.push(Column {
                label: label.to_owned(),
                kcm,
                n,
                runs: vec![outcome],
            }),
        }
    }

    fn markdown(&self, runs: usize) -> String {
        let mut out = self.table(runs) + &self.per_run_table();
        let violations: Vec<String> = self
            .columns
            .iter()
            .flat_map(|c| {
                c.runs.iter().enumerate().flat_map(move |(i, r)| {
                    r.violations
                        .iter()
                        .map(move |v| format!("- {}, run {}: {v}", c.label, i + 1))
                })
            })
            .collect();
        if violations.is_empty() {
            out.push_str("\nNo violations: no starting or idle leader wrote anything but its Lease.\n");
        } else {
            out.push_str("\n**VIOLATIONS**\n\n");
            out.push_str(&violations.join("\n"));
            out.push('\n');
        }
        out
    }

    fn table(&self, runs: usize) -> String {
        let mut names: Vec<(String, Unit)> = Vec::new();
        for m in self.columns.iter().flat_map(|c| &c.runs).flat_map(|r| &r.metrics) {
            if !names.iter().any(|(n, _)| *n == m.name) {
                names.push((m.name.clone(), m.unit));
            }
        }
        let mut out = format!("\nMedian of {runs} run(s), min–max in parentheses.\n\n| metric |");
        for column in &self.columns {
            out.push_str(&format!(" {} |", column.label));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(self.columns.len()));
        out.push('\n');
        for (name, unit) in names {
            let label = match unit {
                Unit::Seconds => format!("{name} (s)"),
                Unit::Millis | Unit::FineMillis => format!("{name} (ms)"),
                Unit::MiB => format!("{name} (MiB)"),
                Unit::PerSecond => format!("{name} (/s)"),
                Unit::Count | Unit::Ratio => name.clone(),
            };
            out.push_str(&format!("| {label} |"));
            for column in &self.columns {
                let values: Vec<f64> = column
                    .runs
                    .iter()
                    .flat_map(|r| r.metrics.iter().filter(|m| m.name == name).map(|m| m.value))
                    .collect();
                if values.is_empty() {
                    out.push_str(" – |");
                    continue;
                }
                let (med, min, max) = median_range(&values);
                if values.len() == 1 {
                    out.push_str(&format!(" {} |", unit.bare(med)));
                } else {
                    out.push_str(&format!(
                        " {} ({}–{}) |",
                        unit.bare(med),
                        unit.bare(min),
                        unit.bare(max)
                    ));
                }
            }
            out.push('\n');
        }
        out
    }

    /// The main figures of every run, one row per run: the spread behind the medians, and the
    /// load the run started under.
    fn per_run_table(&self) -> String {
        const COLUMNS: [(&str, &str); 18] = [
            (LOAD, "load (1 min)"),
            ("provision: all claims handed over by kcm", "last hand-over (s)"),
            ("provision: all PVs", "our last PV (s)"),
            (
                "provision: overhead, our last PV after the last hand-over",
                "overhead (s)",
            ),
            ("provision: ratio, our last PV / the last hand-over", "ratio"),
            ("provision: all claims Bound", "all Bound (s)"),
            (
                "release, onDelete: delete: all PVs Released (kcm)",
                "last Released (s)",
            ),
            (
                "release, onDelete: delete: all PVs gone",
                "our last PV and dir gone (s)",
            ),
            (
                "release, onDelete: delete: overhead, our last PV and directory gone after the last Released",
                "release overhead (s)",
            ),
            (
                "release, onDelete: delete: ratio, our last PV and directory gone / the last Released",
                "release ratio",
            ),
            ("release, archive: all PVs gone", "release, archive (s)"),
            (
                "provision: CPU provisioner per claim",
                "CPU/claim provisioning (ms)",
            ),
            (
                "release, onDelete: delete: CPU provisioner per claim",
                "CPU/claim release (ms)",
            ),
            ("peak RSS (VmHWM) of the provisioning process", "peak RSS (MiB)"),
            ("peak RSS (VmHWM), any process of the run", "peak RSS, any (MiB)"),
            ("start-up: process start → /readyz 200", "start-up (s)"),
            (
                "start-up and idle: writes other than the Lease (must be 0)",
                "start-up writes",
            ),
            ("idle: requests other than Lease renewals", "idle, not Lease"),
        ];
        let mut out = String::from("\nEvery run:\n\n| kcm | N | run |");
        for (_, label) in COLUMNS {
            out.push_str(&format!(" {label} |"));
        }
        out.push_str("\n|---|---|---|");
        out.push_str(&"---|".repeat(COLUMNS.len()));
        out.push('\n');
        for column in &self.columns {
            for (i, run) in column.runs.iter().enumerate() {
                out.push_str(&format!("| {} | {} | {} |", column.kcm, column.n, i + 1));
                for (name, _) in COLUMNS {
                    let text = run
                        .metrics
                        .iter()
                        .find(|m| m.name == name)
                        .map_or_else(|| "–".into(), |m| m.unit.bare(m.value));
                    out.push_str(&format!(" {text} |"));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// The metric of the load a run started under.
const LOAD: &str = "load average (1 min) at the start of the run";

// ---------------------------------------------------------------------------------------------
// /proc

/// A `kB` line of `/proc/<pid>/status` in MiB.
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Open sockets of a process (`/proc/<pid>/fd` links to `socket:[…]`): its connections to the API
/// server, the listening /metrics socket and the like.
fn open_sockets(pid: u32) -> Option<f64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let sockets = fds
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count();
    Some(sockets as f64)
}

/// A plain number line of `/proc/<pid>/status` (e.g. `Threads:`).
fn status_number(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's `/proc/<pid>/status` every 100 ms: the largest anonymous and file-backed
/// RSS and thread count seen, which split `VmHWM` into heap and binary.
struct MemorySampler {
    task: JoinHandle<()>,
    peaks: Arc<Mutex<[f64; SAMPLED.len()]>>,
}

/// (`/proc/<pid>/status` key, or `sockets` for the open sockets in `/proc/<pid>/fd`; label; unit)
const SAMPLED: [(&str, &str, Unit); 4] = [
    ("RssAnon:", "anonymous RSS (RssAnon)", Unit::MiB),
    ("RssFile:", "file-backed RSS (RssFile)", Unit::MiB),
    ("Threads:", "threads", Unit::Count),
    ("sockets", "open sockets (API connections)", Unit::Count),
];

impl MemorySampler {
    fn start(pid: u32) -> Self {
        let peaks = Arc::new(Mutex::new([0.0_f64; SAMPLED.len()]));
        let shared = Arc::clone(&peaks);
        let task = tokio::spawn(async move {
            loop {
                let now = Self::read(pid);
                {
                    let mut peaks = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (peak, v) in peaks.iter_mut().zip(now) {
                        *peak = peak.max(v.unwrap_or(0.0));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        MemorySampler { task, peaks }
    }

    fn read(pid: u32) -> [Option<f64>; SAMPLED.len()] {
        SAMPLED.map(|(key, _, unit)| match (key, unit) {
            ("sockets", _) => open_sockets(pid),
            (_, Unit::MiB) => status_mib(pid, key),
            _ => status_number(pid, key),
        })
    }

    /// The peaks during sampling, and the values now (with N claims and PVs, caches full).
    fn stop(self, pid: u32) -> Vec<Metric> {
        self.task.abort();
        let now = Self::read(pid);
        let peaks = *self
            .peaks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut metrics = Vec::new();
        for (i, (_, what, unit)) in SAMPLED.iter().enumerate() {
            metrics.push(metric(
                format!("provisioning process, most {what} seen (100 ms samples)"),
                *unit,
                peaks[i],
            ));
        }
        for (i, (_, what, unit)) in SAMPLED.iter().enumerate() {
            metrics.push(metric(
                format!("provisioning process, {what} at the end"),
                *unit,
                now[i].unwrap_or(f64::NAN),
            ));
        }
        metrics
    }
}

/// The processes whose CPU time a phase reports.
#[derive(Debug, Clone)]
struct Watched {
    /// (label, pid)
    pids: Vec<(&'static str, u32)>,
}

impl Watched {
    /// The provisioner, the control plane (children of this process) and the bench itself.
    fn new(provisioner: u32) -> Self {
        let mut pids = vec![("provisioner", provisioner)];
        let me = std::process::id();
        let mut children: Vec<(String, u32)> = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ProcStat { comm, ppid, .. }) = proc_stat(pid)
                && ppid == me
            {
                children.push((comm, pid));
            }
        }
        for (label, comm) in [
            ("kube-apiserver", "kube-apiserver"),
            ("etcd", "etcd"),
            // comm is cut to 15 bytes.
            ("kube-controller-manager", "kube-controller"),
        ] {
            if let Some((_, pid)) = children.iter().find(|(c, _)| c == comm) {
                pids.push((label, *pid));
            }
        }
        pids.push(("bench", me));
        Watched { pids }
    }

    fn sample(&self) -> Vec<u64> {
        self.pids
            .iter()
            .map(|(_, pid)| proc_stat(*pid).map_or(0, |s| s.cpu_ticks))
            .collect()
    }

    /// CPU seconds per process between two samples, as metrics named `<phase>: CPU <process>`.
    fn cpu_metrics(&self, phase: &str, before: &[u64], after: &[u64], ticks: f64) -> Vec<Metric> {
        self.pids
            .iter()
            .zip(before.iter().zip(after))
            .map(|((label, _), (b, a))| {
                metric(
                    format!("{phase}: CPU {label}"),
                    Unit::Seconds,
                    a.saturating_sub(*b) as f64 / ticks,
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// What the bench's watches saw

#[derive(Default)]
struct Seen {
    /// PV name → when the bench first saw it.
    pv_added: HashMap<String, Instant>,
    /// PV name → when the bench saw it deleted.
    pv_gone: HashMap<String, Instant>,
    /// PV name → when the bench first saw it `Released` (kube-controller-manager's doing).
    pv_released: HashMap<String, Instant>,
    /// PV name → when the bench first saw its deletionTimestamp (the provisioner's DELETE).
    pv_deleting: HashMap<String, Instant>,
    /// Claim name → when the bench first saw it handed to a provisioner by kube-controller-manager.
    annotated: HashMap<String, Instant>,
    /// Claim name → when the bench first saw it Bound.
    bound: HashMap<String, Instant>,
    /// Claim name → when the bench saw it deleted.
    claim_gone: HashMap<String, Instant>,
    pv_synced: bool,
    claims_synced: bool,
}

type SharedSeen = Arc<Mutex<Seen>>;

fn lock(seen: &SharedSeen) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn watch_volumes(client: Client, seen: SharedSeen) -> JoinHandle<()> {
    tokio::spawn(async move {
        let stream = watcher::watcher(Api::<PersistentVolume>::all(client), watcher::Config::default())
            .default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let mut seen = lock(&seen);
            match event {
                Ok(Event::Apply(pv) | Event::InitApply(pv)) => {
                    let name = pv.name_any();
                    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released") {
                        seen.pv_released.entry(name.clone()).or_insert(now);
                    }
                    if pv.metadata.deletion_timestamp.is_some() {
                        seen.pv_deleting.entry(name.clone()).or_insert(now);
                    }
                    seen.pv_added.entry(name).or_insert(now);
                }
                Ok(Event::Delete(pv)) => {
                    let name = pv.name_any();
                    seen.pv_deleting.entry(name.clone()).or_insert(now);
                    seen.pv_gone.entry(name).or_insert(now);
                }
                Ok(Event::InitDone) => seen.pv_synced = true,
                Ok(Event::Init) => {}
                Err(e) => eprintln!("bench: PV watch error: {e}"),
            }
        }
    })
}

fn watch_claims(client: Client, namespace: &str, seen: SharedSeen) -> JoinHandle<()> {
    let api = Api::<PersistentVolumeClaim>::namespaced(client, namespace);
    tokio::spawn(async move {
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let mut seen = lock(&seen);
            match event {
                Ok(Event::Apply(c) | Event::InitApply(c)) => {
                    let annotations = c.annotations();
                    if annotations.contains_key("volume.beta.kubernetes.io/storage-provisioner")
                        || annotations.contains_key("volume.kubernetes.io/storage-provisioner")
                    {
                        seen.annotated.entry(c.name_any()).or_insert(now);
                    }
                    if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                        seen.bound.entry(c.name_any()).or_insert(now);
                    }
                }
                Ok(Event::Delete(c)) => {
                    seen.claim_gone.entry(c.name_any()).or_insert(now);
                }
                Ok(Event::InitDone) => seen.claims_synced = true,
                Ok(Event::Init) => {}
                Err(e) => eprintln!("bench: claim watch error: {e}"),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// One run

/// A provisioned claim: its name, PV and directory (relative to the export).
#[derive(Debug, Clone)]
struct Volume {
    claim: String,
    pv: String,
    dir: String,
}

struct Run {
    t: TrialCtx,
    client: Client,
    ns: String,
    provisioner_name: String,
    kubeconfig: PathBuf,
    export: PathBuf,
    seen: SharedSeen,
    started: usize,
    ticks: f64,
    deadline: Duration,
    /// [`startup_deadline`]
    startup: Duration,
    /// What this run found wrong (see [`RunOutcome::violations`]).
    violations: Mutex<Vec<String>>,
    /// `BENCH_NFS`: the nfs-ganesha serving [`Run::export`], which the classes name directly.
    nfs: Option<support::nfs_server::NfsServer>,
}

/// How long a provisioning or release phase of N claims may take before the bench calls it hung.
/// kube-controller-manager 1.20's PV binder sends about 6 requests per claim through its own
/// client (the hand-over annotation, an Event, the PV's claimRef and status, the claim's volumeName
/// and status), so at `qps` it cannot bind more than qps/6 claims a second; with a budget it never
/// waits for, the control plane's CPU paced it at ~30 ms per claim on this machine (1000 claims
/// Bound in 30 s). Three times that, and never less than 0.6 s per claim (what the Go provisioner
/// needs, should `BENCH_PROVISIONER_BIN` name one).
fn phase_deadline(n: usize, kcm: KcmClientLimits) -> Duration {
    let per_claim = (3.0 * (6.0 / f64::from(kcm.qps) + 0.03)).max(0.6);
    Duration::from_secs(120) + Duration::from_secs_f64(per_claim * n as f64)
}

/// How long a provisioner may take to start with N claims and PVs present, and then to settle:
/// [`STARTUP`], and 5 ms per claim for listing 2N objects and for a build that still reconciles
/// every claim in O(N) at start (before/after comparisons measure such builds too).
fn startup_deadline(n: usize) -> Duration {
    STARTUP + Duration::from_millis(5) * u32::try_from(n).unwrap_or(u32::MAX)
}

struct Provisioner {
    child: ManagedChild,
    /// Just before the process was spawned.
    spawned: Instant,
    /// When the bench first saw `caches synced` in its log, and /readyz answer 200.
    synced: Instant,
    ready: Instant,
    /// Its CPU time (clock ticks) when /readyz was first seen 200: all of its start-up.
    ready_cpu_ticks: u64,
    /// Its log's length then: what it logged up to being ready.
    ready_log_len: u64,
}

impl Provisioner {
    fn pid(&self) -> u32 {
        self.child.pid()
    }

    fn peak_rss_mib(&self) -> f64 {
        status_mib(self.pid(), "VmHWM:").unwrap_or(f64::NAN)
    }

    fn check_running(&self) -> Result<()> {
        if let Some(status) = self.child.try_exit_status() {
            bail!(
                "the provisioner exited ({status}); its log:\n{}",
                self.child.log_tail(30)
            );
        }
        Ok(())
    }

    /// SIGTERM (it releases the Lease) and wait for the exit.
    async fn stop(self) -> Result<()> {
        self.child.terminate()?;
        if self.child.wait_exit_async(STOP).await.is_none() {
            self.child.kill9();
            bail!("the provisioner did not exit within {STOP:?} of SIGTERM");
        }
        Ok(())
    }
}

/// An API request as the provisioner's log announces it (`requesting`, with
/// `kube_client::client::builder=debug`): the Kubernetes verb and the resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Request {
    /// get, list, watch, create, update, patch, delete (or the HTTP method if none fits)
    verb: String,
    /// e.g. `leases`, `persistentvolumes`, `persistentvolumeclaims/status`
    resource: String,
}

impl Request {
    /// From one log line; `None` for lines that announce no request.
    fn parse(line: &str) -> Option<Request> {
        if !line.contains("requesting") {
            return None;
        }
        let line = strip_ansi(line);
        let method = ["GET", "PUT", "POST", "PATCH", "DELETE"]
            .into_iter()
            .find(|m| line.contains(&format!("http.method={m}")))
            .unwrap_or("?");
        let url = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http.url="))
            .map(|u| u.trim_end_matches([',', '}', ':']))
            .unwrap_or("?");
        let (url, query) = url.split_once('?').unwrap_or((url, ""));
        // Drop the scheme and host, then the API prefix: /api/v1 or /apis/<group>/<version>.
        let segments: Vec<&str> = url.splitn(4, '/').nth(3).unwrap_or("").split('/').collect();
        let rest = match segments.first() {
            Some(&"api") => segments.get(2..),
            Some(&"apis") => segments.get(3..),
            _ => None,
        }
        .unwrap_or(&[]);
        let rest = match rest {
            ["namespaces", _, resource, more @ ..] => std::iter::once(*resource)
                .chain(more.iter().copied())
                .collect::<Vec<_>>(),
            other => other.to_vec(),
        };
        let (resource, named) = match rest.as_slice() {
            [] => ("?".to_owned(), false),
            [resource] => ((*resource).to_owned(), false),
            [resource, _name] => ((*resource).to_owned(), true),
            [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
        };
        let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
        let verb = match (method, named, watch) {
            ("GET", true, _) => "get",
            ("GET", false, true) => "watch",
            ("GET", false, false) => "list",
            ("POST", ..) => "create",
            ("PUT", ..) => "update",
            ("PATCH", ..) => "patch",
            ("DELETE", ..) => "delete",
            (other, ..) => other,
        };
        Some(Request {
            verb: verb.to_owned(),
            resource,
        })
    }

    fn is_lease(&self) -> bool {
        self.resource == "leases"
    }

    fn is_write(&self) -> bool {
        !matches!(self.verb.as_str(), "get" | "list" | "watch")
    }
}

/// The requests a provisioner log announces between bytes `from` and `to` (`None`: the end).
fn requests(log: &Path, from: u64, to: Option<u64>) -> Result<Vec<Request>> {
    let bytes = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    let end = to.map_or(Ok(bytes.len()), usize::try_from)?.min(bytes.len());
    let start = usize::try_from(from)?.min(end);
    let text = String::from_utf8_lossy(&bytes[start..end]);
    Ok(text.lines().filter_map(Request::parse).collect())
}

/// Requests counted by verb and resource, for the report.
fn by_kind(requests: &[Request]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for r in requests {
        *kinds.entry(format!("{} {}", r.verb, r.resource)).or_insert(0) += 1;
    }
    kinds
}

/// `LOG_FORMAT=text` colours its output; the escapes split `key=value` pairs.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

impl Run {
    async fn new(suite: &Arc<Suite>, kcm: KcmClientLimits, n: usize, run: usize, ticks: f64) -> Result<Run> {
        let name = format!("n{n}-run{run}");
        let dir = suite.workdir.join("runs").join(&name);
        std::fs::create_dir_all(&dir)?;
        let t = TrialCtx {
            suite: Arc::clone(suite),
            name,
            dir: dir.clone(),
            logs: Arc::default(),
        };
        let ns = t.unique_name(&format!("bench-n{n}-r{run}"));
        let kubeconfig = t.provisioner_kubeconfig(&ns).await?;
        let export = dir.join("export");
        std::fs::create_dir_all(&export)?;
        // `dir/export` is what the server serves: volumes land where the mounted ones would.
        let nfs = match std::env::var("BENCH_NFS").unwrap_or_default().as_str() {
            "" => None,
            "3" => {
                Some(support::nfs_server::NfsServer::start(&format!("{ns}-nfs"), "127.0.0.1", &dir).await?)
            }
            "4.1" => Some(
                support::nfs_server::NfsServer::start_v4_only(&format!("{ns}-nfs"), "127.0.0.1", &dir, None)
                    .await?,
            ),
            other => anyhow::bail!("BENCH_NFS={other}: 3 or 4.1 (or unset: the mounted export)"),
        };
        Ok(Run {
            nfs,
            client: suite.cp.admin_client(),
            provisioner_name: format!("bench.example.com/{ns}"),
            ns,
            kubeconfig,
            export,
            seen: SharedSeen::default(),
            started: 0,
            ticks,
            deadline: phase_deadline(n, kcm),
            startup: startup_deadline(n),
            violations: Mutex::default(),
            t,
        })
    }

    /// Records something the provisioner must not do, and says so at once.
    fn violation(&self, what: String) {
        eprintln!("bench: VIOLATION: {what}");
        self.violations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(what);
    }

    fn nfs_path(&self) -> String {
        format!("/exports/{}", self.ns)
    }

    async fn class(&self, suffix: &str, params: serde_json::Value) -> Result<String> {
        let name = format!("{}-{suffix}", self.ns);
        let mut params = params;
        let mut mount_options = json!([]);
        if let Some(nfs) = &self.nfs {
            params["server"] = json!(nfs.bind);
            params["share"] = json!("/export");
            // The server's ports, the provisioner's own defaults otherwise.
            mount_options = if nfs.v4_only {
                json!(["nfsvers=4.1", format!("port={}", nfs.port)])
            } else {
                json!([
                    "nfsvers=3",
                    format!("port={},mountport={}", nfs.port, nfs.mount_port)
                ])
            };
        }
        let class: StorageClass = serde_json::from_value(json!({
            "metadata": { "name": name },
            "provisioner": self.provisioner_name,
            "parameters": params,
            "mountOptions": mount_options,
            "reclaimPolicy": "Delete",
        }))?;
        Api::<StorageClass>::all(self.client.clone())
            .create(&PostParams::default(), &class)
            .await
            .with_context(|| format!("creating StorageClass {name}"))?;
        Ok(name)
    }

    /// Starts a provisioner as a Deployment would and waits until it leads with synced caches and
    /// answers /readyz with 200.
    async fn start(&mut self, logging: Logging) -> Result<Provisioner> {
        self.started += 1;
        let name = format!("provisioner-{}", self.started);
        // Its own port on loopback: the default 0.0.0.0:8080 may be taken by anything else.
        let [port] = support::free_ports::<1>()?;
        let http = SocketAddr::from(([127, 0, 0, 1], port));
        let env: Vec<(&str, String)> = vec![
            ("HTTP_ADDR", http.to_string()),
            ("PROVISIONER_NAME", self.provisioner_name.clone()),
            ("NFS_SERVER", SERVER.into()),
            ("NFS_PATH", self.nfs_path()),
            ("NFS_MOUNT_PATH", self.export.display().to_string()),
            ("KUBECONFIG", self.kubeconfig.display().to_string()),
            ("POD_NAMESPACE", self.ns.clone()),
            ("POD_NAME", format!("bench-{}", self.started)),
            ("RUST_LOG", logging.filter.into()),
            ("LOG_FORMAT", logging.format.into()),
        ];
        // For profiling: `BENCH_PROVISIONER_WRAPPER="valgrind --tool=massif
        // --massif-out-file=/tmp/massif.%p"` runs one provisioner of each run under it (its
        // timings and RSS are then the wrapper's, not the provisioner's): the provisioning
        // phase's, or the one `BENCH_PROVISIONER_WRAPPED` numbers (1 provisioning, 2 start-up and
        // idle, 3 release). The wrapper must pass SIGTERM on, or the next phase waits for a Lease
        // its provisioner still holds.
        let wrapped = std::env::var("BENCH_PROVISIONER_WRAPPED")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1);
        let wrapper: Vec<String> = std::env::var("BENCH_PROVISIONER_WRAPPER")
            .ok()
            .filter(|_| self.started == wrapped)
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let spawned = Instant::now();
        let child = match wrapper.split_first() {
            Some((program, args)) => self.t.spawn(
                &name,
                Path::new(program),
                args.iter().map(String::as_str).chain([binary()]),
                env,
            )?,
            None => self
                .t
                .spawn(&name, Path::new(binary()), std::iter::empty::<&str>(), env)?,
        };
        let log = child.log_path().to_owned();
        let pid = child.pid();
        let check_running = || -> Result<()> {
            if let Some(status) = child.try_exit_status() {
                bail!("the provisioner exited ({status})");
            }
            Ok(())
        };
        // Both conditions are watched in one loop, each timestamped when first seen (to the poll
        // interval), whichever comes first.
        let synced = std::cell::Cell::new(None::<Instant>);
        let ready = std::cell::Cell::new(None::<(Instant, u64, u64)>);
        poll_until(
            "the provisioner to lead with synced caches and answer /readyz",
            self.startup,
            || async {
                check_running()?;
                if synced.get().is_none() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains("caches synced") {
                        synced.set(Some(Instant::now()));
                    }
                }
                if ready.get().is_none()
                    && support::http::get(http, "/readyz")
                        .await
                        .is_ok_and(|(code, _)| code == 200)
                {
                    let now = Instant::now();
                    let cpu = proc_stat(pid).map_or(0, |s| s.cpu_ticks);
                    ready.set(Some((now, cpu, file_len(&log))));
                }
                Ok(synced.get().zip(ready.get()))
            },
        )
        .await
        .with_context(|| format!("starting {name}; its log:\n{}", child.log_tail(30)))
        .map(|(synced, (ready, ready_cpu_ticks, ready_log_len))| Provisioner {
            child,
            spawned,
            synced,
            ready,
            ready_cpu_ticks,
            ready_log_len,
        })
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates `n` claims of `class` at once and waits for every PV and every Bound claim.
    async fn provision(
        &self,
        p: &Provisioner,
        phase: &str,
        class: &str,
        prefix: &str,
        n: usize,
    ) -> Result<(Vec<Metric>, Vec<Volume>)> {
        let claims = self.claims();
        let watched = Watched::new(p.pid());
        let cpu_before = watched.sample();
        let sent = Instant::now();
        let created: Vec<(String, String, Instant)> = stream::iter(0..n)
            .map(|i| {
                let claims = claims.clone();
                async move {
                    let name = format!("{prefix}-{i:04}");
                    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
                        "metadata": { "name": name },
                        "spec": {
                            "storageClassName": class,
                            "accessModes": ["ReadWriteMany"],
                            "resources": { "requests": { "storage": "1Mi" } },
                        },
                    }))?;
                    let claim = claims
                        .create(&PostParams::default(), &claim)
                        .await
                        .with_context(|| format!("creating claim {name}"))?;
                    let returned = Instant::now();
                    let uid = claim.uid().context("created claim without uid")?;
                    anyhow::Ok((name, format!("pvc-{uid}"), returned))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let first_created = created.iter().map(|c| c.2).min().context("no claims")?;
        let last_created = created.iter().map(|c| c.2).max().context("no claims")?;

        let pvs: Vec<&str> = created.iter().map(|c| c.1.as_str()).collect();
        let pv_seen: Vec<Instant> = poll_until(&format!("{n} PVs ({phase})"), self.deadline, || async {
            p.check_running()?;
            let seen = lock(&self.seen);
            Ok(pvs
                .iter()
                .map(|pv| seen.pv_added.get(*pv).copied())
                .collect::<Option<Vec<_>>>())
        })
        .await
        .with_context(|| self.progress(&pvs))?;
        let bound_seen: Vec<Instant> = poll_until(
            &format!("{n} claims to be Bound ({phase})"),
            self.deadline,
            || async {
                p.check_running()?;
                let seen = lock(&self.seen);
                Ok(created
                    .iter()
                    .map(|c| seen.bound.get(&c.0).copied())
                    .collect::<Option<Vec<_>>>())
            },
        )
        .await?;
        let cpu_after = watched.sample();

        let all_pvs = pv_seen.iter().max().context("no PVs")?;
        let all_bound = bound_seen.iter().max().context("no claims")?;
        let mut latencies: Vec<f64> = created
            .iter()
            .zip(&pv_seen)
            .map(|(c, seen)| seen.saturating_duration_since(c.2).as_secs_f64())
            .collect();
        latencies.sort_by(f64::total_cmp);
        // Where the time goes: kube-controller-manager hands each claim over (annotation), then the
        // provisioner makes its directory and PV.
        let annotated: Vec<Instant> = {
            let seen = lock(&self.seen);
            created
                .iter()
                .map(|c| seen.annotated.get(&c.0).copied())
                .collect::<Option<Vec<_>>>()
                .context("a claim got its PV without being seen handed over")?
        };
        let all_annotated = annotated.iter().max().context("no claims")?;
        let mut own: Vec<f64> = annotated
            .iter()
            .zip(&pv_seen)
            .map(|(a, pv)| pv.saturating_duration_since(*a).as_secs_f64())
            .collect();
        own.sort_by(f64::total_cmp);

        // Every PV's directory must exist (default pathPattern: <namespace>-<claim>-<pv>).
        let volumes: Vec<Volume> = created
            .iter()
            .map(|(claim, pv, _)| Volume {
                claim: claim.clone(),
                pv: pv.clone(),
                dir: format!("{}-{claim}-{pv}", self.ns),
            })
            .collect();
        let entries = export_entries(&self.export)?;
        let missing = volumes.iter().filter(|v| !entries.contains(&v.dir)).count();
        ensure!(
            missing == 0,
            "{missing} of {n} directories are missing after {phase}"
        );

        let mut metrics = vec![
            metric(
                format!("{phase}: creating the claims"),
                Unit::Seconds,
                (last_created - sent).as_secs_f64(),
            ),
            metric(
                format!("{phase}: all PVs"),
                Unit::Seconds,
                all_pvs.saturating_duration_since(first_created).as_secs_f64(),
            ),
            metric(
                format!("{phase}: all claims Bound"),
                Unit::Seconds,
                all_bound.saturating_duration_since(first_created).as_secs_f64(),
            ),
            metric(
                format!("{phase}: claim → PV latency p50"),
                Unit::Millis,
                percentile(&latencies, 0.50) * 1000.0,
            ),
            metric(
                format!("{phase}: claim → PV latency p99"),
                Unit::Millis,
                percentile(&latencies, 0.99) * 1000.0,
            ),
            metric(
                format!("{phase}: all claims handed over by kcm"),
                Unit::Seconds,
                all_annotated
                    .saturating_duration_since(first_created)
                    .as_secs_f64(),
            ),
            metric(
                format!("{phase}: overhead, our last PV after the last hand-over"),
                Unit::Seconds,
                signed_secs(*all_pvs, *all_annotated),
            ),
            metric(
                format!("{phase}: ratio, our last PV / the last hand-over"),
                Unit::Ratio,
                all_pvs.saturating_duration_since(first_created).as_secs_f64()
                    / all_annotated
                        .saturating_duration_since(first_created)
                        .as_secs_f64(),
            ),
            metric(
                format!("{phase}: handed over → PV latency p50"),
                Unit::Millis,
                percentile(&own, 0.50) * 1000.0,
            ),
            metric(
                format!("{phase}: handed over → PV latency p99"),
                Unit::Millis,
                percentile(&own, 0.99) * 1000.0,
            ),
        ];
        metrics.extend(watched.cpu_metrics(phase, &cpu_before, &cpu_after, self.ticks));
        metrics.push(cpu_per_claim(phase, &metrics, n));
        Ok((metrics, volumes))
    }

    fn progress(&self, pvs: &[&str]) -> String {
        let seen = lock(&self.seen);
        let found = pvs.iter().filter(|pv| seen.pv_added.contains_key(**pv)).count();
        format!("{found} of {} PVs seen", pvs.len())
    }

    /// Deletes the claims at once; waits until every PV is gone and every directory is removed
    /// (`archived = false`) or archived.
    async fn release(
        &self,
        p: &Provisioner,
        phase: &str,
        volumes: &[Volume],
        archived: bool,
    ) -> Result<Vec<Metric>> {
        let claims = self.claims();
        let watched = Watched::new(p.pid());
        let cpu_before = watched.sample();
        let sent = Instant::now();
        stream::iter(volumes)
            .map(|v| {
                let claims = claims.clone();
                async move {
                    claims
                        .delete(&v.claim, &DeleteParams::default())
                        .await
                        .with_context(|| format!("deleting claim {}", v.claim))?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        let deleted = Instant::now();
        let expected_dirs: HashSet<String> = volumes.iter().map(|v| v.dir.clone()).collect();

        // The provisioner archives or removes a directory before it deletes the PV, so once every
        // PV is gone the directories are already in their final state and the end is the last PV
        // deletion the bench saw. Should the directories lag behind, the end is when they are right.
        let lagged = std::cell::Cell::new(false);
        let end = poll_until(
            &format!("{} PVs to be gone ({phase})", volumes.len()),
            self.deadline,
            || async {
                p.check_running()?;
                let last_gone = {
                    let seen = lock(&self.seen);
                    volumes
                        .iter()
                        .map(|v| seen.pv_gone.get(&v.pv).copied())
                        .collect::<Option<Vec<_>>>()
                        .and_then(|gone| gone.into_iter().max())
                };
                let Some(last_gone) = last_gone else {
                    return Ok(None);
                };
                let entries = export_entries(&self.export)?;
                let left = entries.iter().filter(|e| expected_dirs.contains(*e)).count();
                let archives = volumes
                    .iter()
                    .filter(|v| entries.contains(&format!("archived-{}", v.dir)))
                    .count();
                let done = left == 0 && archives == if archived { volumes.len() } else { 0 };
                if !done {
                    lagged.set(true);
                    return Ok(None);
                }
                Ok(Some(if lagged.get() { Instant::now() } else { last_gone }))
            },
        )
        .await?;
        let cpu_after = watched.sample();
        // Where the time goes: kube-controller-manager removes the claims (pvc-protection) and marks
        // their PVs Released; the provisioner archives or deletes and deletes the PV; pv-protection
        // lets it go.
        let (claims_gone, released, deleting, mut own) = {
            let seen = lock(&self.seen);
            let at = |map: &HashMap<String, Instant>, key: &str| map.get(key).copied();
            let mut claims_gone = Vec::new();
            let mut released = Vec::new();
            let mut deleting = Vec::new();
            let mut own = Vec::new();
            for v in volumes {
                let r =
                    at(&seen.pv_released, &v.pv).with_context(|| format!("{} never seen Released", v.pv))?;
                let d =
                    at(&seen.pv_deleting, &v.pv).with_context(|| format!("{} never seen deleted", v.pv))?;
                claims_gone.push(at(&seen.claim_gone, &v.claim).unwrap_or(r));
                released.push(r);
                deleting.push(d);
                own.push(d.saturating_duration_since(r).as_secs_f64());
            }
            (claims_gone, released, deleting, own)
        };
        own.sort_by(f64::total_cmp);
        let last_released = *released.iter().max().context("no PVs")?;
        let last = |times: &[Instant]| {
            times
                .iter()
                .max()
                .map_or(f64::NAN, |t| t.saturating_duration_since(sent).as_secs_f64())
        };
        let mut metrics = vec![
            metric(
                format!("{phase}: deleting the claims"),
                Unit::Seconds,
                (deleted - sent).as_secs_f64(),
            ),
            metric(
                format!("{phase}: all PVs gone"),
                Unit::Seconds,
                end.saturating_duration_since(sent).as_secs_f64(),
            ),
            metric(
                format!("{phase}: all claims gone"),
                Unit::Seconds,
                last(&claims_gone),
            ),
            metric(
                format!("{phase}: all PVs Released (kcm)"),
                Unit::Seconds,
                last(&released),
            ),
            metric(
                format!("{phase}: all PVs deleted by the provisioner"),
                Unit::Seconds,
                last(&deleting),
            ),
            metric(
                format!("{phase}: overhead, our last PV and directory gone after the last Released"),
                Unit::Seconds,
                signed_secs(end, last_released),
            ),
            metric(
                format!("{phase}: ratio, our last PV and directory gone / the last Released"),
                Unit::Ratio,
                end.saturating_duration_since(sent).as_secs_f64()
                    / last_released.saturating_duration_since(sent).as_secs_f64(),
            ),
            metric(
                format!("{phase}: Released → PV deleted latency p50"),
                Unit::Millis,
                percentile(&own, 0.50) * 1000.0,
            ),
            metric(
                format!("{phase}: Released → PV deleted latency p99"),
                Unit::Millis,
                percentile(&own, 0.99) * 1000.0,
            ),
        ];
        metrics.extend(watched.cpu_metrics(phase, &cpu_before, &cpu_after, self.ticks));
        metrics.push(cpu_per_claim(phase, &metrics, volumes.len()));
        Ok(metrics)
    }

    /// What is there before a leader starts with the run's claims and PVs: what it must leave as is.
    fn snapshot(&self) -> Result<Snapshot> {
        let seen = lock(&self.seen);
        Ok(Snapshot {
            entries: export_entries(&self.export)?,
            pvs_added: seen.pv_added.len(),
            pvs_gone: seen.pv_gone.len(),
        })
    }

    /// The start-up of `p`, a leader started with the run's claims and PVs present and every
    /// request logged: how long until its caches were synced and /readyz answered 200, and what it
    /// sent meanwhile.
    fn start_up(&self, p: &Provisioner) -> Result<Vec<Metric>> {
        let sent = requests(p.child.log_path(), 0, Some(p.ready_log_len))?;
        eprintln!("bench:   start-up requests until ready: {:?}", by_kind(&sent));
        let count = |f: fn(&Request) -> bool| sent.iter().filter(|r| f(r)).count() as f64;
        Ok(vec![
            metric(
                "start-up: process start → caches synced logged",
                Unit::Seconds,
                (p.synced - p.spawned).as_secs_f64(),
            ),
            metric(
                "start-up: process start → /readyz 200",
                Unit::Seconds,
                (p.ready - p.spawned).as_secs_f64(),
            ),
            metric(
                "start-up: CPU provisioner until ready",
                Unit::Seconds,
                p.ready_cpu_ticks as f64 / self.ticks,
            ),
            metric(
                "start-up: API requests until ready",
                Unit::Count,
                sent.len() as f64,
            ),
            metric(
                "start-up: list requests until ready",
                Unit::Count,
                count(|r| r.verb == "list"),
            ),
            metric(
                "start-up: watch requests until ready",
                Unit::Count,
                count(|r| r.verb == "watch"),
            ),
            metric(
                "start-up: get requests until ready",
                Unit::Count,
                count(|r| r.verb == "get"),
            ),
            metric(
                "start-up: Lease writes until ready",
                Unit::Count,
                count(|r| r.is_lease() && r.is_write()),
            ),
        ])
    }

    /// Requests per second of an undisturbed provisioner with the current claims and PVs; then
    /// whether it changed anything since it started (`before`): a write other than the Lease's, a
    /// PV or a directory made or removed is a violation.
    async fn idle(&self, p: &Provisioner, window: Duration, before: &Snapshot) -> Result<Vec<Metric>> {
        let log = p.child.log_path().to_owned();
        let not_lease = |from: u64| -> Result<usize> {
            Ok(requests(&log, from, None)?
                .iter()
                .filter(|r| !r.is_lease())
                .count())
        };
        // Wait for the start-up requests (lists, watches, the first Lease writes) to be over.
        let quiet_deadline = Instant::now() + self.startup;
        let mut last = (not_lease(0)?, Instant::now());
        loop {
            p.check_running()?;
            let now = Instant::now();
            let other = not_lease(0)?;
            if other != last.0 {
                last = (other, now);
            } else if now - last.1 >= QUIET {
                break;
            }
            ensure!(
                now < quiet_deadline,
                "the provisioner kept sending requests other than Lease renewals for {:?}",
                self.startup
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let watched = Watched::new(p.pid());
        let from = file_len(&log);
        let cpu_before = watched.sample();
        let started = Instant::now();
        // A measurement window, not synchronisation.
        tokio::time::sleep(window).await;
        let cpu_after = watched.sample();
        let elapsed = started.elapsed().as_secs_f64();
        p.check_running()?;
        let idle = requests(&log, from, None)?;
        eprintln!("bench:   idle requests in {elapsed:.1} s: {:?}", by_kind(&idle));
        let count = |f: fn(&Request) -> bool| idle.iter().filter(|r| f(r)).count() as f64;
        let mut metrics = vec![
            metric("idle: API requests", Unit::PerSecond, idle.len() as f64 / elapsed),
            metric("idle: Lease requests", Unit::Count, count(Request::is_lease)),
            metric(
                "idle: requests other than Lease renewals",
                Unit::Count,
                count(|r| !r.is_lease()),
            ),
            metric(
                "idle: of which watches (re-opened)",
                Unit::Count,
                count(|r| !r.is_lease() && r.verb == "watch"),
            ),
        ];
        metrics.extend(
            watched
                .cpu_metrics("idle", &cpu_before, &cpu_after, self.ticks)
                .into_iter()
                .take(1),
        );

        // Since it started: nothing re-provisioned, archived or deleted, no status rewritten.
        let writes: Vec<Request> = requests(&log, 0, None)?
            .into_iter()
            .filter(|r| r.is_write() && !r.is_lease())
            .collect();
        if !writes.is_empty() {
            self.violation(format!(
                "a leader started with the claims and PVs present wrote other than its Lease \
                 (start-up and idle): {:?}",
                by_kind(&writes)
            ));
        }
        let now = self.snapshot()?;
        let made = now.entries.difference(&before.entries).count();
        let removed = before.entries.difference(&now.entries).count();
        let pvs_made = now.pvs_added - before.pvs_added;
        let pvs_removed = now.pvs_gone - before.pvs_gone;
        let changes = made + removed + pvs_made + pvs_removed;
        if changes > 0 {
            self.violation(format!(
                "a leader started with the claims and PVs present changed them (start-up and idle): \
                 {made} directories made, {removed} removed, {pvs_made} PVs made, {pvs_removed} deleted"
            ));
        }
        metrics.push(metric(
            "start-up and idle: writes other than the Lease (must be 0)",
            Unit::Count,
            writes.len() as f64,
        ));
        metrics.push(metric(
            "start-up and idle: directories and PVs made or removed (must be 0)",
            Unit::Count,
            changes as f64,
        ));
        Ok(metrics)
    }

    async fn cleanup(&self, classes: &[String]) {
        let api = Api::<StorageClass>::all(self.client.clone());
        for class in classes {
            let _ = api.delete(class, &DeleteParams::default()).await;
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.ns, &DeleteParams::default())
            .await;
    }
}

/// The export's entries and the PVs seen so far, before a leader starts.
struct Snapshot {
    entries: HashSet<String>,
    pvs_added: usize,
    pvs_gone: usize,
}

/// `a - b` in seconds, negative if `a` came first (two watches' events may arrive out of order).
fn signed_secs(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64()
    } else {
        -(b - a).as_secs_f64()
    }
}

/// The provisioner's CPU time of a phase (already in `metrics`) per claim, in milliseconds.
fn cpu_per_claim(phase: &str, metrics: &[Metric], n: usize) -> Metric {
    let total = metrics
        .iter()
        .find(|m| m.name == format!("{phase}: CPU provisioner"))
        .map_or(f64::NAN, |m| m.value);
    metric(
        format!("{phase}: CPU provisioner per claim"),
        Unit::FineMillis,
        total * 1000.0 / n as f64,
    )
}

/// Top-level entries of the export, without the staging area.
fn export_entries(export: &Path) -> Result<HashSet<String>> {
    let mut names = HashSet::new();
    for entry in std::fs::read_dir(export).with_context(|| format!("listing {}", export.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != STAGING_DIR {
            names.insert(name);
        }
    }
    Ok(names)
}

async fn one_run(
    suite: &Arc<Suite>,
    kcm: KcmClientLimits,
    n: usize,
    run: usize,
    opts: &Options,
    ticks: f64,
) -> Result<RunOutcome> {
    let load: f64 = loadavg()
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(f64::NAN);
    let mut r = Run::new(suite, kcm, n, run, ticks).await?;
    let delete_class = r.class("delete", json!({ "onDelete": "delete" })).await?;
    let archive_class = r.class("archive", json!({})).await?;
    let watches = [
        watch_volumes(r.client.clone(), Arc::clone(&r.seen)),
        watch_claims(r.client.clone(), &r.ns, Arc::clone(&r.seen)),
    ];
    let result = async {
        poll_until("the bench's watches to sync", r.startup, || async {
            let seen = lock(&r.seen);
            Ok((seen.pv_synced && seen.claims_synced).then_some(()))
        })
        .await?;
        let mut metrics = vec![metric(LOAD, Unit::Ratio, load)];

        // 1. Provisioning, by a provisioner that has done nothing else (its VmHWM is this phase's).
        let p = r.start(LOG_PRODUCTION).await?;
        let sampler = MemorySampler::start(p.pid());
        let (m, batch_d) = r.provision(&p, "provision", &delete_class, "d", n).await?;
        metrics.extend(m);
        let rss_provisioning = p.peak_rss_mib();
        let memory = sampler.stop(p.pid());
        p.stop().await?;

        // 2. and 3. A new leader's start-up with N claims and N PVs present, then idle; every
        // request logged.
        let before = r.snapshot()?;
        let p = r.start(LOG_REQUESTS).await?;
        metrics.extend(r.start_up(&p)?);
        metrics.extend(r.idle(&p, opts.idle, &before).await?);
        let rss_idle = p.peak_rss_mib();
        p.stop().await?;

        // 4. Release (delete), then a second batch provisioned and released (archive).
        let p = r.start(LOG_PRODUCTION).await?;
        metrics.push(metric(
            "start-up, production logging (the release process): process start → /readyz 200",
            Unit::Seconds,
            (p.ready - p.spawned).as_secs_f64(),
        ));
        metrics.extend(
            r.release(&p, "release, onDelete: delete", &batch_d, false)
                .await?,
        );
        if opts.archive {
            let (m, batch_a) = r
                .provision(&p, "provision (2nd batch)", &archive_class, "a", n)
                .await?;
            metrics.extend(m.into_iter().filter(|m| {
                ["all PVs", "all claims Bound", "handed over by kcm", "the last hand-over"]
                    .iter()
                    .any(|end| m.name.ends_with(end))
            }));
            metrics.extend(r.release(&p, "release, archive", &batch_a, true).await?);
        }
        let rss_second = p.peak_rss_mib();
        p.stop().await?;

        metrics.push(metric(
            "peak RSS (VmHWM) of the provisioning process",
            Unit::MiB,
            rss_provisioning,
        ));
        metrics.extend(memory);
        metrics.push(metric(
            "peak RSS (VmHWM) of the idle process (started with N claims and PVs; every request logged)",
            Unit::MiB,
            rss_idle,
        ));
        metrics.push(metric(
            if opts.archive {
                "peak RSS (VmHWM) of the release process (started with N claims and PVs; released N, provisioned N, released N)"
            } else {
                "peak RSS (VmHWM) of the release process (started with N claims and PVs; released N)"
            },
            Unit::MiB,
            rss_second,
        ));
        metrics.push(metric(
            "peak RSS (VmHWM), any process of the run",
            Unit::MiB,
            rss_provisioning.max(rss_idle).max(rss_second),
        ));
        anyhow::Ok(metrics)
    }
    .await;
    for w in &watches {
        w.abort();
    }
    r.cleanup(&[delete_class, archive_class]).await;
    let metrics =
        result.with_context(|| format!("N = {n}, run {}: logs in {}", run + 1, r.t.dir.display()))?;
    let violations = r
        .violations
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(RunOutcome { metrics, violations })
}
