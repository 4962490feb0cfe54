//! What both benchmarks need from the machine and the command line: options from arguments and
//! environment, the load average, CPU time from `/proc`, and the median with its range.

// Each bench is its own crate and uses a different part of this module.
#![allow(dead_code)]

use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result};

pub mod nfs;

/// A comma-separated list, each item parsed by `parse` (`what` names it in the error).
pub fn parse_list<T>(text: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse(s).with_context(|| format!("{what} {s:?} is not valid")))
        .collect()
}

/// A positive count; `_` may group digits (`10_000`).
pub fn parse_count(s: &str) -> Option<usize> {
    s.replace('_', "").parse().ok().filter(|&n| n > 0)
}

/// The number in the environment variable `name`, else `default`.
pub fn env_number<T: FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Clock ticks per second, the unit of the CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `uptime`'s line (time, uptime, load), else the load average alone.
pub fn uptime() -> String {
    Command::new("uptime")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("load average {}", loadavg()))
}

/// A process's command name, parent and CPU time so far (utime + stime, in clock ticks).
pub struct ProcStat {
    pub comm: String,
    pub ppid: u32,
    pub cpu_ticks: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    // Fields after the command: state(3) ppid(4) … utime(14) stime(15).
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcStat {
        comm: stat.get(open + 1..close)?.to_owned(),
        ppid: fields.get(1)?.parse().ok()?,
        cpu_ticks: utime + stime,
    })
}

/// (median, min, max); NaN for no values.
pub fn median_range(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}
