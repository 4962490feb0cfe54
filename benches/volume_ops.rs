//! The storage layer's own cost on the mounted export, without the control plane: the CPU time
//! the provisioner's process spends per volume operation (create, finish, measure, archive,
//! delete) on a directory of the local filesystem, driven as the controllers drive it (up to
//! `BENCH_PARALLEL` operations at once on a multi-threaded runtime; a usage round's measurements
//! one after another, at the default pace of USAGE_OPS_PER_SECOND or `BENCH_USAGE_PACE`, over
//! `BENCH_MEASURED` (default 400) of the new, empty volumes).
//!
//! `cargo bench --bench volume_ops`; `BENCH_VOLUMES` (default 2000) volumes per round,
//! `BENCH_RUNS` (default 5) rounds, `BENCH_PARALLEL` (default 16), `BENCH_DIR` (default a fresh
//! temporary directory). Prints one line per round and the median; CPU is user+system time of
//! this process from `getrusage`, so it counts the blocking threads too.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use nfs_subdir_provisioner::core::export::Export;
use nfs_subdir_provisioner::core::naming::VolumePath;
use nfs_subdir_provisioner::core::params::DirMode;
use nfs_subdir_provisioner::health::Health;
use nfs_subdir_provisioner::metrics::Metrics;
use nfs_subdir_provisioner::storage::{Existing, Exports, Limits, Storage};

const DIR: DirMode = DirMode {
    mode: 0o777,
    uid: None,
    gid: None,
};

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn cpu_seconds(ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("unreadable /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks)
}

fn storage(root: &Path, usage_pace: u32) -> Storage {
    let export = Export {
        server: "bench.invalid".into(),
        path: "/export".into(),
    };
    let limits = Limits {
        timeout: Duration::from_secs(60),
        delete_timeout: Duration::from_secs(600),
        delete_concurrency: 16,
        usage_ops_per_second: usage_pace,
        ..Limits::default()
    };
    let metrics = Metrics::new();
    let health = Health::new(metrics.clone());
    let exports = Exports::new(Some((export, root.to_path_buf())), limits, health, metrics);
    exports
        .mounted()
        .cloned()
        .expect("a mounted export was configured")
}

struct Phase {
    name: &'static str,
    ops: usize,
    wall: Duration,
    cpu: f64,
}

impl Phase {
    fn cpu_per_op_us(&self) -> f64 {
        self.cpu * 1e6 / self.ops as f64
    }

    fn wall_ms(&self) -> f64 {
        self.wall.as_secs_f64() * 1e3
    }
}

async fn phase<F, Fut>(name: &'static str, n: usize, parallel: usize, ticks: f64, op: F) -> Result<Phase>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (cpu0, t0) = (cpu_seconds(ticks)?, Instant::now());
    let mut results = futures::stream::iter(0..n).map(&op).buffer_unordered(parallel);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(Phase {
        name,
        ops: n,
        wall: t0.elapsed(),
        cpu: cpu_seconds(ticks)? - cpu0,
    })
}

fn path(i: usize) -> VolumePath {
    VolumePath::from_components(vec![format!("bench-claim-{i}-pvc-{i:08}")]).expect("a valid name")
}

async fn round(
    root: &Path,
    n: usize,
    parallel: usize,
    (measured, pace): (usize, u32),
    ticks: f64,
) -> Result<Vec<Phase>> {
    let storage = storage(root, pace);
    let pv = |i: usize| format!("pvc-{i:08}");
    let create = phase("create", n, parallel, ticks, |i| {
        let storage = storage.clone();
        async move {
            storage
                .create_volume(&pv(i), &path(i), DIR, Existing::Refuse)
                .await?;
            Ok(())
        }
    })
    .await?;
    let finish = phase("finish", n, parallel, ticks, |i| {
        let storage = storage.clone();
        async move { Ok(storage.finish_volume(&pv(i)).await?) }
    })
    .await?;
    let measure = phase("measure", measured.min(n), 1, ticks, |i| {
        let storage = storage.clone();
        async move {
            storage
                .measure_volume(&path(i))
                .await?
                .context("a volume was not found")?;
            Ok(())
        }
    })
    .await?;
    let archive = phase("archive", n / 2, parallel, ticks, |i| {
        let storage = storage.clone();
        async move {
            storage.archive_volume(&path(2 * i)).await?;
            Ok(())
        }
    })
    .await?;
    let delete = phase("delete", n / 2, parallel, ticks, |i| {
        let storage = storage.clone();
        async move {
            storage.delete_volume(&path(2 * i + 1)).await?;
            Ok(())
        }
    })
    .await?;
    Ok(vec![create, finish, measure, archive, delete])
}

fn empty(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    let n: usize = common::env_number("BENCH_VOLUMES", 2000)?;
    let runs: usize = common::env_number("BENCH_RUNS", 5)?;
    let parallel: usize = common::env_number("BENCH_PARALLEL", 16)?;
    let measured: usize = common::env_number("BENCH_MEASURED", 400)?;
    let pace: u32 = common::env_number("BENCH_USAGE_PACE", 200)?;
    if n < 2 || runs == 0 || parallel == 0 {
        bail!("BENCH_VOLUMES must be at least 2, BENCH_RUNS and BENCH_PARALLEL at least 1");
    }
    let tmp;
    let root: PathBuf = match std::env::var_os("BENCH_DIR") {
        Some(dir) => dir.into(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let ticks = common::clock_ticks();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "volume_ops: {n} volumes per round, {parallel} at once, {runs} rounds, in {}",
        root.display()
    );
    println!("load before: {}", common::loadavg());
    let mut per_phase: Vec<(&'static str, Vec<f64>, Vec<f64>)> = Vec::new();
    for r in 0..runs {
        empty(&root)?;
        let phases = runtime.block_on(round(&root, n, parallel, (measured, pace), ticks))?;
        let line: Vec<String> = phases
            .iter()
            .map(|p| {
                format!(
                    "{} {:.1} µs CPU/op {:.0} ms",
                    p.name,
                    p.cpu_per_op_us(),
                    p.wall_ms()
                )
            })
            .collect();
        println!("round {}: {}", r + 1, line.join(", "));
        for p in phases {
            match per_phase.iter_mut().find(|(name, _, _)| *name == p.name) {
                Some((_, cpu, wall)) => {
                    cpu.push(p.cpu_per_op_us());
                    wall.push(p.wall_ms());
                }
                None => per_phase.push((p.name, vec![p.cpu_per_op_us()], vec![p.wall_ms()])),
            }
        }
    }
    empty(&root)?;
    println!("load after: {}", common::loadavg());
    for (name, cpu, wall) in per_phase {
        println!(
            "median {name}: {:.1} µs CPU per operation, {:.0} ms for the phase",
            median(cpu),
            median(wall)
        );
    }
    Ok(())
}
