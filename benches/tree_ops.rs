//! Cloning and measuring whole trees with the provisioner's own code (`Backend::create_volume`
//! with a `Fill`, then placing; `Backend::measure_volume`): on the mounted transport
//! (`MountedExport` on a local directory, as the export mounted at NFS_MOUNT_PATH) and over NFS
//! (`Volumes<Nfs3Transport>` against nfs-ganesha in a container, with 0 and 1 ms added round-trip
//! time through the delay proxy of `common::nfs`), beside `cp -a` of the same tree on the local
//! directory (and libnfs's `nfs-cp` of the large file over NFS, where libnfs-utils is installed).
//!
//! `cargo bench --bench tree_ops`
//!
//! Cases (`BENCH_CASES`, default `tree,file,usage`), each run `BENCH_RUNS` times (default 3),
//! the cases of a round one after the other, so that a load change affects every case alike:
//!
//! * `tree`: a clone of a tree of `BENCH_TREE_FILES` (default 10 000) files of 1 KiB, 100 per
//!   directory, with a symlink per directory;
//! * `file`: a clone of one file of `BENCH_FILE_MIB` MiB (default 1024), not zeros;
//! * `usage`: measuring a tree of `BENCH_USAGE_FILES` (default 100 000) empty files, 1000 per
//!   directory, unpaced, and once at the default pace (200 requests/s) over NFS without added RTT.
//!
//! Sources are written on the host (the mounted side's directory, and ganesha's backing
//! directory, which ganesha is restarted over before it reads them: a fresh cache), clones go to
//! new names and are removed after each run. Clones copy with the provisioner's default
//! `CLONE_CONCURRENCY` (16) on both sides, and make the copy durable before placing it (syncfs on
//! the mounted side, COMMIT over NFS): `cp -a + sync` is the fair baseline, `cp -a` the usual one. Reported: wall time, and the CPU time of the bench
//! process (the provisioner's code; the delay proxy's threads subtracted) or of `cp`/`nfs-cp`,
//! and of ganesha. Without the `--bench` argument that `cargo bench` passes it does nothing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::nfs::{self, Ganesha, SERVER, SHARE, connect, proxy_cpu, warm_up};
use common::{clock_ticks, env_number, median_range, parse_count, parse_list, proc_stat, uptime};
use nfs_subdir_provisioner::core::params::DirMode;
use nfs_subdir_provisioner::storage::posix::MountedExport;
use nfs_subdir_provisioner::storage::{Backend, Created, Existing, Fill, Pace, Progress};

const RWX: DirMode = DirMode {
    mode: 0o777,
    uid: None,
    gid: None,
};
/// The provisioner's CLONE_CONCURRENCY default (src/config.rs).
const CLONE_CONCURRENCY: usize = 16;
/// The provisioner's usage walk (src/storage/exports.rs USAGE_CONCURRENCY) and pace default.
const USAGE_CONCURRENCY: usize = 4;
const DEFAULT_PACE: u32 = 200;
const UNPACED: u32 = 1_000_000_000;
const TREE_PER_DIR: usize = 100;
const USAGE_PER_DIR: usize = 1000;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("tree_ops: a benchmark; run it with `cargo bench --bench tree_ops` (skipped)");
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

struct Options {
    cases: Vec<String>,
    runs: usize,
    rtts: Vec<Duration>,
    tree_files: usize,
    file_mib: usize,
    usage_files: usize,
}

fn options() -> Result<Options> {
    let cases = parse_list(
        &std::env::var("BENCH_CASES").unwrap_or_else(|_| "tree,file,usage".into()),
        "case",
        |s| ["tree", "file", "usage"].contains(&s).then(|| s.to_owned()),
    )?;
    let rtts = parse_list(
        &std::env::var("BENCH_RTT_US").unwrap_or_else(|_| "0,1000".into()),
        "RTT (µs)",
        |s| s.parse::<u64>().ok().map(Duration::from_micros),
    )?;
    ensure!(
        rtts.first() == Some(&Duration::ZERO),
        "BENCH_RTT_US must start with 0 (the proxy is calibrated against it)"
    );
    let count = |name: &str, default: usize| -> Result<usize> {
        match std::env::var(name) {
            Ok(v) => parse_count(&v).with_context(|| format!("{name}={v:?}")),
            Err(_) => Ok(default),
        }
    };
    Ok(Options {
        cases,
        runs: env_number("BENCH_RUNS", 3)?,
        rtts,
        tree_files: count("BENCH_TREE_FILES", 10_000)?,
        file_mib: count("BENCH_FILE_MIB", 1024)?,
        usage_files: count("BENCH_USAGE_FILES", 100_000)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Sources, written on the host

/// `files` files of 1 KiB (distinct contents), `TREE_PER_DIR` per directory, a symlink in each.
fn write_tree(root: &Path, files: usize) -> Result<()> {
    for d in 0..files.div_ceil(TREE_PER_DIR) {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir_all(&dir)?;
        symlink("f0000", dir.join("link"))?;
        for f in 0..TREE_PER_DIR.min(files - d * TREE_PER_DIR) {
            let content: Vec<u8> = (0..1024u32)
                .map(|i| ((i + f as u32 * 7 + d as u32) % 251) as u8 | 1)
                .collect();
            fs::write(dir.join(format!("f{f:04}")), content)?;
        }
    }
    Ok(())
}

/// One file of `mib` MiB at `root/big.bin`, no run of zeros in it.
fn write_file(root: &Path, mib: usize) -> Result<()> {
    use std::io::Write;
    fs::create_dir_all(root)?;
    let mut file = fs::File::create(root.join("big.bin"))?;
    let chunk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8 | 1).collect();
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(())
}

/// `files` empty files, `USAGE_PER_DIR` per directory.
fn write_empty(root: &Path, files: usize) -> Result<()> {
    for d in 0..files.div_ceil(USAGE_PER_DIR) {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir_all(&dir)?;
        for f in 0..USAGE_PER_DIR.min(files - d * USAGE_PER_DIR) {
            fs::File::create(dir.join(format!("f{f:04}")))?;
        }
    }
    Ok(())
}

/// Files and symlinks below `root` (a check that a copy is whole, not a comparison).
fn count(root: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        n += 1;
        if entry.file_type()?.is_dir() {
            n += count(&entry.path())?;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Measuring

/// Wall and CPU seconds of one operation, and ganesha's CPU where it took part.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
    ganesha_cpu: f64,
}

fn self_cpu(ticks: f64) -> f64 {
    proc_stat(std::process::id()).map_or(f64::NAN, |s| s.cpu_ticks as f64 / ticks) - proxy_cpu()
}

/// Clones `source` (below the export root) of `backend` into `target` there and places it.
async fn clone(backend: &dyn Backend, source: &str, target: &str, pv: &str) -> Result<()> {
    let (source, target) = (vec![source.to_owned()], vec![target.to_owned()]);
    let fill = Fill {
        source: backend,
        path: &source,
        concurrency: CLONE_CONCURRENCY,
        progress: Arc::new(Progress::default()),
    };
    let staged = backend
        .create_volume(pv, &target, RWX, Existing::Refuse, Some(&fill))
        .await?;
    ensure!(staged == Created::Staged, "{pv}: {staged:?}");
    let placed = backend
        .create_volume(pv, &target, RWX, Existing::Refuse, None)
        .await?;
    ensure!(placed == Created::New, "{pv}: {placed:?}");
    backend.finish_volume(pv).await?;
    Ok(())
}

async fn timed<F: Future<Output = Result<()>>>(
    ticks: f64,
    ganesha: Option<&Ganesha>,
    op: F,
) -> Result<Sample> {
    let (cpu, g) = (self_cpu(ticks), ganesha.map_or(0.0, |g| g.cpu(ticks)));
    let start = Instant::now();
    op.await?;
    Ok(Sample {
        wall: start.elapsed().as_secs_f64(),
        cpu: self_cpu(ticks) - cpu,
        ganesha_cpu: ganesha.map_or(0.0, |g| g.cpu(ticks)) - g,
    })
}

/// Runs `cmd` under bash's `times`: wall seconds and the children's CPU seconds.
fn timed_command(cmd: &str) -> Result<Sample> {
    let start = Instant::now();
    let out = Command::new("bash")
        .args(["-c", &format!("{cmd} && times")])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    let wall = start.elapsed().as_secs_f64();
    ensure!(out.status.success(), "{cmd}: {}", out.status);
    // `times`: the shell's user and system time, then its children's.
    let text = String::from_utf8_lossy(&out.stdout);
    let children = text.lines().last().context("no output of times")?;
    let seconds = |t: &str| -> f64 {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap_or(("0", "0"));
        m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
    };
    let cpu = children.split_whitespace().map(seconds).sum();
    Ok(Sample {
        wall,
        cpu,
        ganesha_cpu: 0.0,
    })
}

fn nfs_cp_usable() -> bool {
    Command::new("nfs-cp")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

type Samples = BTreeMap<String, Vec<Sample>>;

fn record(samples: &mut Samples, case: String, sample: Sample) {
    eprintln!(
        "bench: {case}: {:.2} s, CPU {:.2} s (ganesha {:.2} s)",
        sample.wall, sample.cpu, sample.ganesha_cpu
    );
    samples.entry(case).or_default().push(sample);
}

fn rtt_label(rtt: Duration) -> String {
    if rtt.is_zero() {
        "NFS, +0".into()
    } else {
        format!("NFS, +{} ms", rtt.as_secs_f64() * 1000.0)
    }
}

fn run_all() -> Result<()> {
    let opts = options()?;
    let ticks = clock_ticks();
    let load_before = uptime();
    eprintln!("bench: before: {load_before}");
    let local = tempfile::Builder::new()
        .prefix("tree-ops-bench-")
        .tempdir_in("/var/tmp")?;
    let served = tempfile::Builder::new()
        .prefix("tree-ops-nfs-")
        .tempdir_in("/var/tmp")?;
    let mut ganesha = Ganesha::start("tree-ops-bench", served.path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = measure(&opts, local.path(), &mut ganesha, ticks) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT)"),
            _ = term.recv() => bail!("interrupted (SIGTERM)"),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let load_after = uptime();
    let version = ganesha.version();
    drop(ganesha);
    let samples = result?;
    println!("| case | wall (s) | CPU (s) | ganesha CPU (s) |");
    println!("|---|---|---|---|");
    for (case, s) in &samples {
        let col = |f: fn(&Sample) -> f64| {
            let (m, lo, hi) = median_range(&s.iter().map(f).collect::<Vec<_>>());
            if s.len() > 1 {
                format!("{m:.2} ({lo:.2}–{hi:.2})")
            } else {
                format!("{m:.2}")
            }
        };
        println!(
            "| {case} | {} | {} | {} |",
            col(|s| s.wall),
            col(|s| s.cpu),
            col(|s| s.ganesha_cpu)
        );
    }
    println!(
        "\nMedian (min–max) of {} run(s). nfs-ganesha {version}, NFSv3 over TCP on loopback.",
        opts.runs
    );
    println!("Load before: {load_before}");
    println!("Load after:  {load_after}");
    Ok(())
}

async fn measure(opts: &Options, local: &Path, ganesha: &mut Ganesha, ticks: f64) -> Result<Samples> {
    let (ports, rtts) = nfs::ports_with_added_rtts(ganesha, &opts.rtts, ticks).await?;
    for (rtt, rt) in &rtts {
        eprintln!(
            "bench: added RTT {rtt:?}: one FSSTAT takes {:.3} ms",
            rt.median.as_secs_f64() * 1000.0
        );
    }
    let mounted = MountedExport::new(local.to_path_buf(), 16);
    let nfs_cp = nfs_cp_usable();
    if !nfs_cp {
        eprintln!("bench: nfs-cp not found (apt-get install libnfs-utils): its column is left out");
    }
    let mut samples = Samples::new();
    let has = |case: &str| opts.cases.iter().any(|c| c == case);

    // Sources, once: on the local directory and on ganesha's.
    let export_dir = ganesha.export_dir.clone();
    if has("tree") {
        write_tree(&local.join("tree"), opts.tree_files)?;
        write_tree(&export_dir.join("tree"), opts.tree_files)?;
    }
    if has("file") {
        write_file(&local.join("file"), opts.file_mib)?;
        write_file(&export_dir.join("file"), opts.file_mib)?;
    }
    if has("usage") {
        write_empty(&local.join("usage"), opts.usage_files)?;
        write_empty(&export_dir.join("usage"), opts.usage_files)?;
    }
    let tree_entries = opts.tree_files + opts.tree_files.div_ceil(TREE_PER_DIR) * 2;

    for round in 0..opts.runs {
        eprintln!("bench: round {} of {}", round + 1, opts.runs);
        for (source, what) in [
            ("tree", format!("{} files", opts.tree_files)),
            ("file", format!("{} MiB file", opts.file_mib)),
        ] {
            if !has(source) {
                continue;
            }
            let target = format!("{source}-copy");
            let s = timed(
                ticks,
                None,
                clone(&mounted, source, &target, &format!("pv-{source}-{round}")),
            )
            .await?;
            if source == "tree" {
                ensure!(
                    count(&local.join(&target))? == tree_entries,
                    "the mounted clone is not whole"
                );
            }
            record(&mut samples, format!("clone {what}, mounted"), s);
            fs::remove_dir_all(local.join(&target))?;
            let s = timed_command(&format!(
                "cp -a {} {}",
                local.join(source).display(),
                local.join(&target).display()
            ))?;
            record(&mut samples, format!("cp -a {what}, mounted"), s);
            fs::remove_dir_all(local.join(&target))?;
            // A clone is made durable before it is placed (syncfs on the mounted export); cp is not.
            let s = timed_command(&format!(
                "cp -a {} {} && sync -f {}",
                local.join(source).display(),
                local.join(&target).display(),
                local.join(&target).display()
            ))?;
            record(&mut samples, format!("cp -a + sync {what}, mounted"), s);
            fs::remove_dir_all(local.join(&target))?;
            for (&rtt, &port) in &ports {
                ganesha.restart()?;
                let client = connect(port, ganesha.mount_port, 16).await?;
                warm_up(&client, 16).await?;
                let s = timed(
                    ticks,
                    Some(ganesha),
                    clone(
                        &client,
                        source,
                        &target,
                        &format!("pv-{source}-{round}-{}", rtt.as_micros()),
                    ),
                )
                .await?;
                if source == "tree" {
                    ensure!(
                        count(&export_dir.join(&target))? == tree_entries,
                        "the NFS clone is not whole"
                    );
                }
                record(&mut samples, format!("clone {what}, {}", rtt_label(rtt)), s);
                fs::remove_dir_all(export_dir.join(&target))?;
                if source == "file" && nfs_cp {
                    // Made on the host, then a fresh ganesha that sees it.
                    fs::create_dir_all(export_dir.join(&target))?;
                    ganesha.restart()?;
                    let url = |path: &str| {
                        format!(
                            "nfs://{SERVER}{SHARE}/{path}?nfsport={port}&mountport={}",
                            ganesha.mount_port
                        )
                    };
                    let g = ganesha.cpu(ticks);
                    let mut s = timed_command(&format!(
                        "nfs-cp '{}' '{}'",
                        url("file/big.bin"),
                        url(&format!("{target}/big.bin"))
                    ))?;
                    s.ganesha_cpu = ganesha.cpu(ticks) - g;
                    record(&mut samples, format!("nfs-cp {what}, {}", rtt_label(rtt)), s);
                    fs::remove_dir_all(export_dir.join(&target))?;
                }
            }
        }
        if has("usage") {
            let what = format!("usage of {} files", opts.usage_files);
            let path = vec!["usage".to_owned()];
            let s = timed(ticks, None, async {
                let u = mounted
                    .measure_volume(&path, USAGE_CONCURRENCY, Pace::per_second(UNPACED))
                    .await?;
                ensure!(
                    u.map(|u| u.inodes)
                        == Some(
                            opts.usage_files as u64 + opts.usage_files.div_ceil(USAGE_PER_DIR) as u64 + 1
                        ),
                    "{u:?}"
                );
                Ok(())
            })
            .await?;
            record(&mut samples, format!("{what}, mounted"), s);
            for (&rtt, &port) in &ports {
                ganesha.restart()?;
                let client = connect(port, ganesha.mount_port, 16).await?;
                warm_up(&client, 16).await?;
                let s = timed(ticks, Some(ganesha), async {
                    client
                        .measure_volume(&path, USAGE_CONCURRENCY, Pace::per_second(UNPACED))
                        .await?
                        .context("missing")?;
                    Ok(())
                })
                .await?;
                record(&mut samples, format!("{what}, {}", rtt_label(rtt)), s);
            }
            if round == 0 {
                ganesha.restart()?;
                let client = connect(ports[&Duration::ZERO], ganesha.mount_port, 16).await?;
                let s = timed(ticks, Some(ganesha), async {
                    client
                        .measure_volume(&path, USAGE_CONCURRENCY, Pace::per_second(DEFAULT_PACE))
                        .await?
                        .context("missing")?;
                    Ok(())
                })
                .await?;
                record(
                    &mut samples,
                    format!("{what}, NFS, +0, paced at {DEFAULT_PACE}/s"),
                    s,
                );
            }
        }
    }
    Ok(samples)
}
