//! Deleting big trees over NFS with the provisioner's own code (`Backend::delete_volume` of
//! `Volumes<Nfs3Transport>`, the volume protocol over the NFSv3 transport, or with
//! `BENCH_NFS_VERSION=4.1` over the NFSv4.1 transport, `Volumes<Nfs4Transport>`).
//!
//! `cargo bench --bench nfs_delete [-- 10000 100000]`
//!
//! Starts its own nfs-ganesha container (`scripts/nfs-server.sh`, needs root and podman) on free
//! ports, serving a temporary directory, and removes it at the end (also on SIGINT/SIGTERM). For
//! every tree size (arguments, else `BENCH_FILES`, else 10 000 and 100 000 files, 1000 per
//! directory: 10 × 1000 and 100 × 1000), every added round-trip time (`BENCH_RTT_US`, default
//! `0,1000` µs) and every delete configuration (`BENCH_CONFIGS`, default `1/1,16/16,32/16,64/64`:
//! RPCs in flight / connections of the pool at connect), and for every run (`BENCH_RUNS`, default 3):
//!
//! 1. ganesha is restarted, so that every case starts from the same server state
//!    (`BENCH_RESTART=0` keeps one server; over a long session it grew to 250 MB of RSS);
//! 2. the tree is built over NFS, straight to ganesha (64 connections; not timed);
//! 3. a client with the case's pool size is connected (through the delay proxy for an added RTT)
//!    and its connections opened (a warm pool, as the provisioner's after its first operations);
//! 4. one `delete_volume` of the tree is timed, and checked: every entry removed, nothing left.
//!
//! * `1/1` is the serial baseline: one RPC at a time on one connection.
//! * `32/16` is what the provisioner does: `DELETE_CONCURRENCY` defaults to 32 and a direct export's
//!   pool starts with `DEFAULT_CONNECTIONS` = 16 connections, which the delete grows to 32 (one RPC
//!   in flight per connection; at most `MAX_CONNECTIONS`).
//! * `16/16` and `64/64` show what the knobs give on their own.
//!
//! The added RTT comes from a userspace TCP delay proxy in this file (the kernel has no netem): it
//! delivers every chunk of bytes from the client the RTT after reading it, and every chunk from the
//! server at once (a client waiting for its replies sees the same round trip as with half of it each
//! way), without limiting throughput; two threads for all connections (see [`delay_proxy`]). Only
//! the NFS port goes through it (MOUNT is one call at connect time). Waking its writer thread adds
//! time of its own, so it is calibrated at the start: its sleep is shortened until a serial FSSTAT
//! through it takes the nominal RTT longer than one without it (within 5%; needs `0` in
//! `BENCH_RTT_US`, first). The measured round trips, and the CPU time per call of ganesha and of the
//! bench process, are reported.
//!
//! Cases estimated to take over a minute per run (serial deletes of many files at an added RTT:
//! 100 000 files at 1 ms ≈ 2–3 min) run `BENCH_SLOW_RUNS` times (default 1) instead of
//! `BENCH_RUNS`; the table says which cells have one run.
//!
//! Prints Markdown tables: median with min–max of the delete times (and the measured RTT), entries
//! per second, the CPU seconds ganesha and the bench process (client and proxy) spent per delete,
//! the build times, and `uptime` before and after. `BENCH_KEEP=1` keeps the export directory.
//! `BENCH_PERF_DIR=<dir>` profiles every timed delete: `perf record -a -e cpu-clock` (the whole
//! machine) into `<dir>/<tree>.data` (profiling slows the delete: its times are then not comparable).
//! Without the `--bench` argument that `cargo bench` passes (e.g. under `cargo test
//! --all-targets`) it does nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::nfs::{self, Client, Ganesha, RTT_SAMPLES, RoundTrip, connect, proxy_cpu, warm_up};
use common::{clock_ticks, env_number, median_range, parse_count, parse_list, proc_stat, uptime};
use futures::{StreamExt, TryStreamExt, stream};
use nfs_subdir_provisioner::storage::nfs_testing::Preconditions;
use nfs_subdir_provisioner::storage::nfs3::{DEFAULT_CONNECTIONS, MAX_CONNECTIONS};
use nfs_subdir_provisioner::storage::{Backend, Removed};

const FILES_PER_DIR: usize = 1000;
/// Building a tree: directories filled at once, files created at once in each.
const BUILD_DIRS: usize = 8;
const BUILD_FILES: usize = 8;
/// Connections of the client that builds the trees.
const BUILD_CONNECTIONS: usize = 64;
/// The provisioner's `DELETE_CONCURRENCY` default (src/config.rs).
const PROVISIONER_CONCURRENCY: usize = 32;
/// A case estimated to take longer than this per run is "slow" (`BENCH_SLOW_RUNS`).
const SLOW: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; `cargo test --benches` / `--all-targets` runs bench targets
    // without it, as a smoke test, and must not start a container and a half-hour benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("nfs_delete: a benchmark; run it with `cargo bench --bench nfs_delete` (skipped)");
        return ExitCode::SUCCESS;
    }
    match run_all() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Options

/// How a tree is deleted: RPCs in flight (`delete_volume`'s concurrency) and the pool's connections
/// at connect (the delete grows the pool to its concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Config {
    concurrency: usize,
    connections: usize,
}

impl Config {
    fn label(self) -> String {
        let mut label = format!(
            "{} in flight, {} connection{}",
            self.concurrency,
            self.connections,
            if self.connections == 1 { "" } else { "s" }
        );
        let used = self.connections.max(self.effective());
        if used > self.connections {
            label.push_str(&format!(" grown to {used}"));
        }
        if self.concurrency == PROVISIONER_CONCURRENCY && self.connections == DEFAULT_CONNECTIONS {
            label.push_str(" (provisioner default)");
        }
        label
    }

    /// RPCs really in flight: one per connection, and the delete grows the pool to its concurrency,
    /// up to `MAX_CONNECTIONS`.
    fn effective(self) -> usize {
        self.concurrency.min(self.connections.max(MAX_CONNECTIONS))
    }
}

struct Options {
    files: Vec<usize>,
    /// Added round-trip times.
    rtts: Vec<Duration>,
    configs: Vec<Config>,
    runs: usize,
    slow_runs: usize,
    /// Restart ganesha before every build and delete.
    restart: bool,
    keep: bool,
    /// Where to write a CPU profile of every delete.
    perf_dir: Option<PathBuf>,
}

fn options() -> Result<Options> {
    // `cargo bench` passes `--bench`; flags are ignored, every other argument is a file count.
    let mut files = Vec::new();
    for arg in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
        files.extend(parse_list(&arg, "file count", parse_count)?);
    }
    if files.is_empty() {
        files = match std::env::var("BENCH_FILES") {
            Ok(v) => parse_list(&v, "file count", parse_count)?,
            Err(_) => vec![10_000, 100_000],
        };
    }
    let rtts = parse_list(
        &std::env::var("BENCH_RTT_US").unwrap_or_else(|_| "0,1000".into()),
        "RTT (µs)",
        |s| s.parse::<u64>().ok().map(Duration::from_micros),
    )?;
    let configs = parse_list(
        &std::env::var("BENCH_CONFIGS").unwrap_or_else(|_| "1/1,16/16,32/16,64/64".into()),
        "configuration (in flight/connections)",
        |s| {
            let (c, n) = s.split_once('/')?;
            Some(Config {
                concurrency: parse_count(c)?,
                connections: parse_count(n)?,
            })
        },
    )?;
    let runs = env_number("BENCH_RUNS", 3)?;
    let slow_runs = env_number("BENCH_SLOW_RUNS", 1)?.min(runs);
    ensure!(
        runs > 0 && slow_runs > 0,
        "BENCH_RUNS and BENCH_SLOW_RUNS must be at least 1"
    );
    ensure!(
        !files.is_empty() && !rtts.is_empty() && !configs.is_empty(),
        "nothing to measure"
    );
    Ok(Options {
        files,
        rtts,
        configs,
        runs,
        slow_runs,
        restart: env_number("BENCH_RESTART", 1)? != 0,
        keep: std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1"),
        perf_dir: std::env::var_os("BENCH_PERF_DIR").map(PathBuf::from),
    })
}

/// Whether a case is expected to take longer than [`SLOW`] per run: at least one round trip per
/// file (REMOVE), divided among the RPCs in flight.
fn is_slow(files: usize, rtt: Duration, config: Config) -> bool {
    rtt * u32::try_from(files.div_ceil(config.effective())).unwrap_or(u32::MAX) > SLOW
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// Makes `top/dNNN/file-NNNN.dat`: `files` empty files, [`FILES_PER_DIR`] per directory.
async fn build(export: &Client, top: &str, files: usize) -> Result<()> {
    let export = export.transport();
    export.mkdir_p(&[top]).await?;
    let dirs = files.div_ceil(FILES_PER_DIR);
    stream::iter(0..dirs)
        .map(|d| async move {
            let dir = format!("d{d:03}");
            export.mkdir_p(&[top, &dir]).await?;
            let n = FILES_PER_DIR.min(files - d * FILES_PER_DIR);
            let names = (0..n).map(|f| format!("file-{f:04}.dat")).collect();
            export.create_files(&[top, &dir], names, BUILD_FILES).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(BUILD_DIRS)
        .try_collect::<Vec<()>>()
        .await
        .with_context(|| format!("building {top} ({files} files)"))?;
    Ok(())
}

/// One case: a tree size, an added RTT, a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Case {
    files: usize,
    rtt: Duration,
    config: Config,
}

#[derive(Debug, Default)]
struct Samples {
    delete: Vec<f64>,
    ganesha_cpu: Vec<f64>,
    /// CPU seconds of this process during the delete: the client, and the proxy's threads.
    client_cpu: Vec<f64>,
    /// Of `client_cpu`: the delay proxy's threads.
    proxy_cpu: Vec<f64>,
    build: Vec<f64>,
}

fn run_all() -> Result<()> {
    let opts = options()?;
    let ticks = clock_ticks();
    let load_before = uptime();
    eprintln!(
        "bench: files {:?}, added RTT {:?}, configurations {:?}, {} run(s) ({} for slow cases)",
        opts.files, opts.rtts, opts.configs, opts.runs, opts.slow_runs
    );
    eprintln!("bench: before: {load_before}");
    let tmp = tempfile::Builder::new().prefix("nfs-delete-bench-").tempdir()?;
    let mut ganesha = Ganesha::start("nfs-delete-bench", tmp.path())?;
    let version = ganesha.version();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        // Interrupted: still remove the container (`Ganesha`'s drop).
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = measure(&opts, &mut ganesha, ticks) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT)"),
            _ = term.recv() => bail!("interrupted (SIGTERM)"),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let load_after = uptime();
    drop(ganesha);
    if opts.keep {
        eprintln!("bench: export directory kept: {}", tmp.keep().display());
    }
    let (samples, rtts) = result?;
    println!("{}", table(&opts, &samples, &rtts));
    println!("nfs-ganesha {version} (Debian package in the test container), VFS FSAL, NFSv3 over TCP.");
    println!("Load before: {load_before}");
    println!("Load after:  {load_after}");
    Ok(())
}

type Results = (BTreeMap<Case, Samples>, BTreeMap<Duration, RoundTrip>);

async fn measure(opts: &Options, ganesha: &mut Ganesha, ticks: f64) -> Result<Results> {
    let (ports, rtts) = nfs::ports_with_added_rtts(ganesha, &opts.rtts, ticks).await?;

    let mut samples: BTreeMap<Case, Samples> = BTreeMap::new();
    // Rounds: every case once per round, so that a load change affects all cases alike.
    for round in 0..opts.runs {
        for &files in &opts.files {
            for &rtt in &opts.rtts {
                for &config in &opts.configs {
                    let case = Case { files, rtt, config };
                    if is_slow(files, rtt, config) && round >= opts.slow_runs {
                        continue;
                    }
                    if opts.restart {
                        ganesha.restart()?;
                    }
                    let perf = opts.perf_dir.as_deref();
                    let s = one_delete(ganesha, ports[&rtt], case, round, ticks, perf).await?;
                    let entry = samples.entry(case).or_default();
                    entry.delete.push(s.delete);
                    entry.ganesha_cpu.push(s.ganesha_cpu);
                    entry.client_cpu.push(s.client_cpu);
                    entry.proxy_cpu.push(s.proxy_cpu);
                    entry.build.push(s.build);
                }
            }
        }
    }
    Ok((samples, rtts))
}

/// Whether the timed client speaks NFSv4.1 (`BENCH_NFS_VERSION=4.1`) rather than NFSv3.
fn nfs_v41() -> bool {
    std::env::var("BENCH_NFS_VERSION").is_ok_and(|v| v == "4.1")
}

/// One build and delete, in seconds.
struct Sample {
    delete: f64,
    ganesha_cpu: f64,
    client_cpu: f64,
    proxy_cpu: f64,
    build: f64,
}

/// Builds a tree (over a connection of its own, straight to ganesha) and deletes it with a client
/// of `case.config` connected to `port` (ganesha's or the delay proxy's), warmed up first.
async fn one_delete(
    ganesha: &Ganesha,
    port: u16,
    case: Case,
    round: usize,
    ticks: f64,
    perf_dir: Option<&Path>,
) -> Result<Sample> {
    let Case { files, rtt, config } = case;
    let top = format!(
        "tree-{files}-{}us-{}-{}-run{round}",
        rtt.as_micros(),
        config.concurrency,
        config.connections
    );
    let builder = connect(ganesha.nfs_port, ganesha.mount_port, BUILD_CONNECTIONS)
        .await
        .context("connecting the tree builder")?;
    let started = Instant::now();
    build(&builder, &top, files).await?;
    let built = started.elapsed().as_secs_f64();
    drop(builder);
    let client: Box<dyn Backend> = if nfs_v41() {
        Box::new(
            nfs::connect_v41(port, config.connections)
                .await
                .with_context(|| format!("connecting {} over NFSv4.1", config.label()))?,
        )
    } else {
        Box::new(
            connect(port, ganesha.mount_port, config.connections)
                .await
                .with_context(|| format!("connecting {}", config.label()))?,
        )
    };
    warm_up(client.as_ref(), config.connections).await?;
    let me = std::process::id();
    let profiler = match perf_dir {
        Some(dir) => Some(Profiler::start(&dir.join(format!("{top}.data"))).await?),
        None => None,
    };
    let own_cpu = || {
        proc_stat(me)
            .map(|s| s.cpu_ticks)
            .map_or(f64::NAN, |t| t as f64 / ticks)
    };
    let cpu_before = ganesha.cpu(ticks);
    let client_before = own_cpu();
    let proxy_before = proxy_cpu();
    let started = Instant::now();
    let removed = client
        .delete_volume(std::slice::from_ref(&top), config.concurrency)
        .await
        .with_context(|| format!("deleting {top}"))?;
    let took = started.elapsed().as_secs_f64();
    let cpu = ganesha.cpu(ticks) - cpu_before;
    let client_cpu = own_cpu() - client_before;
    let proxy = proxy_cpu() - proxy_before;
    if let Some(profiler) = profiler {
        profiler.stop()?;
    }
    let dirs = files.div_ceil(FILES_PER_DIR);
    let expected = u64::try_from(files + dirs + 1)?;
    match removed {
        Removed::Removed { entries } if entries == expected => {}
        other => bail!("deleting {top}: {other:?}, expected {expected} entries removed"),
    }
    ensure!(
        !ganesha.export_dir.join(&top).exists(),
        "{top} still exists on the server after delete_volume"
    );
    eprintln!(
        "bench: run {}: {files} files, +{:.1} ms RTT, {}: {took:.3} s (CPU: ganesha {cpu:.2} s, \
         bench {client_cpu:.2} s, of which proxy {proxy:.2} s; build {built:.1} s); load {}",
        round + 1,
        rtt.as_secs_f64() * 1000.0,
        config.label(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    Ok(Sample {
        delete: took,
        ganesha_cpu: cpu,
        client_cpu,
        proxy_cpu: proxy,
        build: built,
    })
}

/// `perf record -a -e cpu-clock` (hardware counters may be missing in a VM): the whole machine, as
/// ganesha, the bench and the kernel threads carrying their traffic (softirqs, podman's NAT) share it.
struct Profiler(std::process::Child);

impl Profiler {
    async fn start(out: &Path) -> Result<Profiler> {
        let child = Command::new("perf")
            .args(["record", "-q", "-a", "-e", "cpu-clock", "-F", "1000"])
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        // perf attaches asynchronously: give it time, so that the delete is profiled from its start.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Profiler(child))
    }

    /// SIGINT makes perf write its data and exit.
    fn stop(mut self) -> Result<()> {
        let ok = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status()?
            .success();
        ensure!(ok, "could not stop perf record");
        self.0.wait()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Results

fn cell(values: &[f64], precision: usize) -> String {
    let (med, min, max) = median_range(values);
    match values.len() {
        0 => "–".into(),
        1 => format!("{med:.precision$} (1 run)"),
        _ => format!("{med:.precision$} ({min:.precision$}–{max:.precision$})"),
    }
}

/// One Markdown table: a row per (files, RTT), a column per configuration.
fn grid(
    opts: &Options,
    samples: &BTreeMap<Case, Samples>,
    rtt_label: &dyn Fn(Duration) -> String,
    value: &dyn Fn(usize, &Samples) -> String,
) -> String {
    let mut out = String::from("| files | added RTT |");
    for config in &opts.configs {
        out.push_str(&format!(" {} |", config.label()));
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(opts.configs.len()));
    out.push('\n');
    for &files in &opts.files {
        for &rtt in &opts.rtts {
            out.push_str(&format!("| {files} | {} |", rtt_label(rtt)));
            for &config in &opts.configs {
                let text = samples
                    .get(&Case { files, rtt, config })
                    .map_or_else(|| "–".into(), |s| value(files, s));
                out.push_str(&format!(" {text} |"));
            }
            out.push('\n');
        }
    }
    out
}

fn table(opts: &Options, samples: &BTreeMap<Case, Samples>, rtts: &BTreeMap<Duration, RoundTrip>) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let measured = |rtt: Duration| {
        let m = rtts.get(&rtt).map_or(f64::NAN, |r| ms(r.median));
        format!("{:.1} ms (FSSTAT {m:.2} ms)", ms(rtt))
    };
    let plain = |rtt: Duration| format!("{:.1} ms", ms(rtt));
    let mut out = format!(
        "\nSeconds to delete the tree with `Volumes<{}>::delete_volume`: median of {} run(s), \
         min–max in parentheses; \"(1 run)\": a case of over a minute per run, run {} time(s) \
         (`BENCH_SLOW_RUNS`). FSSTAT: the measured time of one serial round trip.\n\n",
        if nfs_v41() {
            "Nfs4Transport"
        } else {
            "Nfs3Transport"
        },
        opts.runs,
        opts.slow_runs
    );
    out.push_str(&grid(opts, samples, &measured, &|_, s| cell(&s.delete, 2)));
    out.push_str("\nEntries removed per second (median run):\n\n");
    out.push_str(&grid(opts, samples, &plain, &|files, s| {
        let entries = (files + files.div_ceil(FILES_PER_DIR) + 1) as f64;
        format!("{:.0}", entries / median_range(&s.delete).0)
    }));
    out.push_str("\nganesha CPU seconds during the delete (median, min–max):\n\n");
    out.push_str(&grid(opts, samples, &plain, &|_, s| cell(&s.ganesha_cpu, 2)));
    out.push_str(
        "\nCPU seconds of the bench process during the delete: the client (`delete_volume`) and, \
         with an added RTT, the delay proxy's threads (median, min–max):\n\n",
    );
    out.push_str(&grid(opts, samples, &plain, &|_, s| cell(&s.client_cpu, 2)));
    out.push_str("\nOf which the delay proxy's threads (median, min–max):\n\n");
    out.push_str(&grid(opts, samples, &plain, &|_, s| cell(&s.proxy_cpu, 2)));
    out.push_str(&format!(
        "\nOne RPC at a time ({RTT_SAMPLES} FSSTATs on one connection, at the start): round trip \
         (median) and CPU time per call.\n\n| added RTT | round trip | ganesha CPU per call | bench \
         CPU per call (client and proxy) | of which proxy |\n|---|---|---|---|---|\n"
    ));
    for (rtt, r) in rtts {
        out.push_str(&format!(
            "| {} | {:.3} ms | {} µs | {} µs | {} µs |\n",
            plain(*rtt),
            ms(r.median),
            r.ganesha_cpu.as_micros(),
            r.bench_cpu.as_micros(),
            r.proxy_cpu.as_micros()
        ));
    }
    out.push_str(&format!(
        "\nBuilding a tree over NFS ({BUILD_DIRS} directories × {BUILD_FILES} files at once, \
         {BUILD_CONNECTIONS} connections, no added RTT; not part of the delete times):"
    ));
    for &files in &opts.files {
        let all: Vec<f64> = samples
            .iter()
            .filter(|(c, _)| c.files == files)
            .flat_map(|(_, s)| s.build.iter().copied())
            .collect();
        out.push_str(&format!(" {files} files {} s;", cell(&all, 1)));
    }
    out.pop();
    out.push_str(".\n");
    out
}
