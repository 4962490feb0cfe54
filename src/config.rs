//! Process configuration: every flag is also an environment variable (the names of
//! nfs-subdir-external-provisioner work unchanged), parsed once into an immutable [`Config`].
//! Nothing past this module looks at a raw string from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::core::export::Export;
use crate::core::lease::LeaseTimings;
use crate::core::naming::normalize_export_path;
use crate::core::params::parse_go_bool;
use crate::health::WatchBounds;

/// The first lines of `--help`, for the admin who runs it.
const ABOUT: &str = "Kubernetes dynamic provisioner: one directory per claim on an NFS export, a drop-in for nfs-subdir-external-provisioner";

const LONG_ABOUT: &str = "\
nfs-subdir-provisioner: a Kubernetes dynamic provisioner. Every PersistentVolumeClaim of its
StorageClasses gets a directory of its own on an NFS export, as a PersistentVolume; a drop-in
replacement for nfs-subdir-external-provisioner.

Without a command it runs the provisioner, as its Deployment does. The other commands are for
admins and take the same configuration and credentials (run them in the provisioner's pod with
kubectl exec, or on a machine with a kubeconfig and the export mounted):
  check           preflight before deploying: API server, RBAC, exports, StorageClasses
  volumes         the volumes it owns, and the orphaned and archived directories on its exports
  prune-archives  remove archives older than an age (only shows what it would do without --confirm)

Every option below is also an environment variable, named with it (the names of
nfs-subdir-external-provisioner work unchanged); the commands' own options are flags only.";

// Flags as given; [`Args::into_config`] validates them. Values are kept as strings where
// nfs-subdir-external-provisioner accepted forms that clap would reject with a multi-line usage
// dump: a bad value must cost the admin one line naming the variable. (A `//` comment: a doc
// comment here would be the top of `--help`.)
#[derive(Parser, Debug)]
#[command(name = "nfs-subdir-provisioner", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Name this provisioner answers to in StorageClass `provisioner:` (required).
    #[arg(long, global = true, env = "PROVISIONER_NAME")]
    provisioner_name: Option<String>,
    /// NFS server of the mounted export, written into its PersistentVolumes. With NFS_PATH; leave
    /// both unset to serve only StorageClasses that name `server` and `share`.
    #[arg(long, global = true, env = "NFS_SERVER")]
    nfs_server: Option<String>,
    /// Exported path of the mounted export on NFS_SERVER.
    #[arg(long, global = true, env = "NFS_PATH")]
    nfs_path: Option<String>,
    /// Where the export is mounted in this process's filesystem.
    #[arg(
        long,
        global = true,
        env = "NFS_MOUNT_PATH",
        default_value = "/persistentvolumes"
    )]
    nfs_mount_path: PathBuf,
    /// Elect a leader through a coordination.k8s.io Lease (true/false, as Go's ParseBool).
    #[arg(long, global = true, env = "ENABLE_LEADER_ELECTION", default_value = "true")]
    enable_leader_election: String,
    /// Kubeconfig for running outside a cluster; in-cluster config (then ~/.kube/config) otherwise.
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the leader-election Lease; defaults to the service account's namespace.
    #[arg(long, global = true, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Identity of this replica in the Lease and in Events; defaults to the host name.
    #[arg(long, global = true, env = "POD_NAME")]
    pod_name: Option<String>,
    /// How long a Lease is valid without renewal.
    #[arg(
        long,
        global = true,
        env = "LEADER_ELECTION_LEASE_DURATION",
        default_value = "15s"
    )]
    lease_duration: String,
    /// A leader that has not renewed for this long stops acting (must be below the lease duration).
    #[arg(
        long,
        global = true,
        env = "LEADER_ELECTION_RENEW_DEADLINE",
        default_value = "10s"
    )]
    renew_deadline: String,
    /// Interval between leader-election attempts and renewals.
    #[arg(
        long,
        global = true,
        env = "LEADER_ELECTION_RETRY_PERIOD",
        default_value = "2s"
    )]
    retry_period: String,
    /// Deadline of one directory operation (create, archive, statvfs) on the export.
    #[arg(long, global = true, env = "FS_OPERATION_TIMEOUT", default_value = "60s")]
    fs_timeout: String,
    /// Deadline of removing one volume's directory tree.
    #[arg(long, global = true, env = "DELETE_TIMEOUT", default_value = "30m")]
    delete_timeout: String,
    /// Directory-tree removals keep this many operations in flight.
    #[arg(long, global = true, env = "DELETE_CONCURRENCY", default_value = "32")]
    delete_concurrency: usize,
    /// Deadline of copying one claim's volume into a clone (a claim with a dataSource); a clone
    /// that misses it is retried, resuming where it stopped.
    #[arg(long, global = true, env = "CLONE_TIMEOUT", default_value = "6h")]
    clone_timeout: String,
    /// A clone keeps this many operations in flight on its source and on its destination.
    #[arg(long, global = true, env = "CLONE_CONCURRENCY", default_value = "16")]
    clone_concurrency: usize,
    /// Clones copied at once; further clones wait, and never hold up other claims.
    #[arg(long, global = true, env = "MAX_CONCURRENT_CLONES", default_value = "2")]
    max_concurrent_clones: usize,
    /// How often the leader measures what each of its volumes takes (bytes and files, for the
    /// volume usage metrics and over-capacity Events); 0 turns measuring off.
    #[arg(long, global = true, env = "USAGE_INTERVAL", default_value = "5m")]
    usage_interval: String,
    /// Requests per second the usage measurements may send to one export, all volumes together.
    #[arg(long, global = true, env = "USAGE_OPS_PER_SECOND", default_value = "200")]
    usage_ops_per_second: u32,
    /// Upper bound of the exponential retry backoff of a failing claim or volume.
    #[arg(long, global = true, env = "RETRY_MAX_INTERVAL", default_value = "5m")]
    retry_max: String,
    /// Pending claims and released volumes of ours are looked at again this often even without an
    /// event, so a lost event delays them by at most this long.
    #[arg(long, global = true, env = "RESYNC_PERIOD", default_value = "1m")]
    resync_period: String,
    /// A watch of claims, volumes or classes that has failed for this long makes /readyz fail,
    /// and a leader hands its Lease to a standby (watches retry every few seconds until then).
    #[arg(long, global = true, env = "WATCH_UNREADY_AFTER", default_value = "60s")]
    watch_unready_after: String,
    /// A watch that has failed for this long makes /healthz fail, so the kubelet restarts the
    /// pod. Longer than WATCH_UNREADY_AFTER.
    #[arg(long, global = true, env = "WATCH_UNHEALTHY_AFTER", default_value = "5m")]
    watch_unhealthy_after: String,
    /// Log format: text, json, or auto (text on a terminal, json otherwise).
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "auto")]
    log_format: String,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, global = true, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: String,
}

/// What the process does; without a subcommand it runs the provisioner.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the provisioner (the default).
    Run,
    /// Preflight before deploying: API reachable, RBAC sufficient, export mounted and writable,
    /// free space, StorageClasses valid. Prints a checklist; exits non-zero on any failure.
    Check,
    /// List the volumes this provisioner owns on its exports (claim, PV, phase, policy,
    /// directory), the directories no PV accounts for (orphans), and the archives with their age
    /// and size. Changes nothing; exits non-zero if an export or directory could not be read.
    Volumes(VolumesArgs),
    /// Remove archived-* directories archived longer ago than --older-than, never one a PV
    /// points at, lies inside or around. Without --confirm it only says what it would remove.
    PruneArchives(PruneArgs),
}

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct VolumesArgs {
    /// table for reading, json for scripts.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
    /// Also measure what each volume takes (archives and orphans are always measured), paced
    /// like the provisioner's own measurements by USAGE_OPS_PER_SECOND.
    #[arg(long)]
    pub measure: bool,
}

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct PruneArgs {
    /// Remove only archives archived longer ago than this: a duration with its unit, such as 30d
    /// or 12h (required).
    #[arg(long, value_name = "AGE", value_parser = age)]
    pub older_than: Duration,
    /// Remove them. Without it nothing is removed and the command says what it would remove;
    /// there is no environment variable for it, so it is never given by accident.
    #[arg(long)]
    pub confirm: bool,
    /// table for reading, json for scripts.
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// An age as `--older-than` takes it: with a unit, because a bare number of an age is easily
/// meant as days and read as seconds.
fn age(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    if value.parse::<u64>().is_ok() {
        return Err(format!("{value:?} needs a unit, such as {value}d or {value}h"));
    }
    match humantime::parse_duration(value) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{value:?} is not a duration like 30d or 12h ({e})")),
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub provisioner_name: String,
    /// NFS_SERVER and NFS_PATH (normalised), mounted at `mount_path`; `None` when both are unset
    /// and only StorageClasses naming `server` and `share` are served.
    pub mounted: Option<Export>,
    pub mount_path: PathBuf,
    pub leader_election: bool,
    pub kubeconfig: Option<PathBuf>,
    pub pod_namespace: Option<String>,
    pub identity: Option<String>,
    pub lease: LeaseTimings,
    pub fs_timeout: Duration,
    pub delete_timeout: Duration,
    pub delete_concurrency: usize,
    pub clone: CloneLimits,
    pub usage: UsageConfig,
    pub retry_max: Duration,
    pub resync: Duration,
    pub watch_bounds: WatchBounds,
    pub log_format: LogFormat,
    pub http_addr: SocketAddr,
}

/// How clones are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneLimits {
    pub timeout: Duration,
    /// Requests in flight of one clone, on each side.
    pub concurrency: usize,
    /// Clones copied at once.
    pub at_once: usize,
}

/// How volumes are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageConfig {
    /// Between the starts of two rounds over every volume; `None`: not measured.
    pub interval: Option<Duration>,
    /// Requests per second on one export.
    pub ops_per_second: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
    Auto,
}

/// A refused configuration: one line naming the variable and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

fn bad(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

fn required(var: &'static str, value: Option<String>) -> Result<String, ConfigError> {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(var, "is required and was not set")),
    }
}

fn duration(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    // Plain integers are seconds, as most admins would write them in a manifest.
    let parsed = match value.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(value.trim()),
    };
    match parsed {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(bad(var, format!("{value:?} must be longer than zero"))),
        Err(e) => Err(bad(
            var,
            format!("{value:?} is not a duration like 15s or 2m ({e})"),
        )),
    }
}

fn at_least_one(var: &'static str, value: usize) -> Result<usize, ConfigError> {
    match value {
        0 => Err(bad(var, "must be at least 1")),
        n => Ok(n),
    }
}

/// ENABLE_LEADER_ELECTION is read as nfs-subdir-external-provisioner read it.
fn go_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    parse_go_bool(value.trim()).ok_or_else(|| bad(var, format!("{:?} is not true or false", value.trim())))
}

impl Args {
    pub fn command(&self) -> Command {
        self.command.clone().unwrap_or(Command::Run)
    }

    pub fn into_config(self) -> Result<Config, ConfigError> {
        let provisioner_name = required("PROVISIONER_NAME", self.provisioner_name)?;
        if provisioner_name.len() > 253 || provisioner_name.contains(char::is_whitespace) {
            return Err(bad(
                "PROVISIONER_NAME",
                format!("{provisioner_name:?} must be at most 253 characters without spaces"),
            ));
        }
        let set = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.trim().is_empty());
        let mounted = match (set(&self.nfs_server), set(&self.nfs_path)) {
            (false, false) => None,
            (true, false) => return Err(bad("NFS_PATH", "is required when NFS_SERVER is set")),
            (false, true) => return Err(bad("NFS_SERVER", "is required when NFS_PATH is set")),
            (true, true) => Some(Export {
                server: required("NFS_SERVER", self.nfs_server)?,
                path: normalize_export_path(&required("NFS_PATH", self.nfs_path)?)
                    .map_err(|e| bad("NFS_PATH", e.to_string()))?,
            }),
        };
        if !self.nfs_mount_path.is_absolute() {
            return Err(bad(
                "NFS_MOUNT_PATH",
                format!("{:?} must be an absolute path", self.nfs_mount_path),
            ));
        }
        let lease = LeaseTimings {
            duration: duration("LEADER_ELECTION_LEASE_DURATION", &self.lease_duration)?,
            renew_deadline: duration("LEADER_ELECTION_RENEW_DEADLINE", &self.renew_deadline)?,
            retry_period: duration("LEADER_ELECTION_RETRY_PERIOD", &self.retry_period)?,
        };
        if lease.renew_deadline >= lease.duration {
            return Err(bad(
                "LEADER_ELECTION_RENEW_DEADLINE",
                "must be shorter than LEADER_ELECTION_LEASE_DURATION, or a leader could act after its lease expired",
            ));
        }
        if lease.retry_period >= lease.renew_deadline {
            return Err(bad(
                "LEADER_ELECTION_RETRY_PERIOD",
                "must be shorter than LEADER_ELECTION_RENEW_DEADLINE",
            ));
        }
        if self.delete_concurrency == 0 {
            return Err(bad("DELETE_CONCURRENCY", "must be at least 1"));
        }
        let clone = CloneLimits {
            timeout: duration("CLONE_TIMEOUT", &self.clone_timeout)?,
            concurrency: at_least_one("CLONE_CONCURRENCY", self.clone_concurrency)?,
            at_once: at_least_one("MAX_CONCURRENT_CLONES", self.max_concurrent_clones)?,
        };
        let usage = UsageConfig {
            interval: match self.usage_interval.trim() {
                "0" | "off" => None,
                value => Some(duration("USAGE_INTERVAL", value)?),
            },
            ops_per_second: u32::try_from(at_least_one(
                "USAGE_OPS_PER_SECOND",
                self.usage_ops_per_second as usize,
            )?)
            .unwrap_or(u32::MAX),
        };
        let watch_bounds = WatchBounds {
            unready_after: duration("WATCH_UNREADY_AFTER", &self.watch_unready_after)?,
            unhealthy_after: duration("WATCH_UNHEALTHY_AFTER", &self.watch_unhealthy_after)?,
        };
        if watch_bounds.unhealthy_after <= watch_bounds.unready_after {
            return Err(bad(
                "WATCH_UNHEALTHY_AFTER",
                "must be longer than WATCH_UNREADY_AFTER, so a leader hands over before it is restarted",
            ));
        }
        let log_format = match self.log_format.trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            "auto" | "" => LogFormat::Auto,
            other => return Err(bad("LOG_FORMAT", format!("{other:?} is not text, json or auto"))),
        };
        let non_empty = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Ok(Config {
            provisioner_name,
            mounted,
            mount_path: self.nfs_mount_path,
            leader_election: go_bool("ENABLE_LEADER_ELECTION", &self.enable_leader_election)?,
            kubeconfig: self.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
            pod_namespace: non_empty(self.pod_namespace),
            identity: non_empty(self.pod_name),
            lease,
            fs_timeout: duration("FS_OPERATION_TIMEOUT", &self.fs_timeout)?,
            delete_timeout: duration("DELETE_TIMEOUT", &self.delete_timeout)?,
            delete_concurrency: self.delete_concurrency,
            clone,
            usage,
            retry_max: duration("RETRY_MAX_INTERVAL", &self.retry_max)?,
            resync: duration("RESYNC_PERIOD", &self.resync_period)?,
            watch_bounds,
            log_format,
            http_addr: self.http_addr.trim().parse().map_err(|_| {
                bad(
                    "HTTP_ADDR",
                    format!("{:?} is not an address like 0.0.0.0:8080", self.http_addr),
                )
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["nfs-subdir-provisioner"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)
            .expect("clap accepts the flags")
            .into_config()
    }

    const BASE: [&str; 6] = [
        "--provisioner-name",
        "p",
        "--nfs-server",
        "10.0.0.1",
        "--nfs-path",
        "/export/",
    ];

    #[test]
    fn defaults_match_nfs_subdir_external_provisioner() {
        let c = parse(&BASE).unwrap();
        assert_eq!(c.mount_path, PathBuf::from("/persistentvolumes"));
        assert!(c.leader_election);
        assert_eq!(c.lease.duration, Duration::from_secs(15));
        assert_eq!(c.lease.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.lease.retry_period, Duration::from_secs(2));
    }

    fn mounted_path(c: &Config) -> &str {
        &c.mounted.as_ref().expect("a mounted export").path
    }

    #[test]
    fn nfs_path_trailing_slash_is_normalised() {
        assert_eq!(mounted_path(&parse(&BASE).unwrap()), "/export");
        let mut root = BASE;
        root[5] = "/";
        assert_eq!(mounted_path(&parse(&root).unwrap()), "/");
    }

    #[test]
    fn without_server_and_path_only_direct_classes_are_served() {
        let c = parse(&BASE[..2]).unwrap();
        assert_eq!(c.mounted, None);
        assert_eq!(parse(&BASE[..4]).unwrap_err().var, "NFS_PATH");
        let mut path_only = BASE[..2].to_vec();
        path_only.extend(["--nfs-path", "/export"]);
        assert_eq!(parse(&path_only).unwrap_err().var, "NFS_SERVER");
    }

    #[test]
    fn missing_provisioner_name_names_the_variable() {
        let err = parse(&BASE[2..]).unwrap_err();
        assert_eq!(err.var, "PROVISIONER_NAME");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn relative_nfs_path_is_refused() {
        let mut args = BASE;
        args[5] = "export";
        assert_eq!(parse(&args).unwrap_err().var, "NFS_PATH");
    }

    #[test]
    fn leader_election_accepts_go_booleans_and_refuses_others() {
        for (v, want) in [("false", false), ("0", false), ("T", true), ("TRUE", true)] {
            let mut args = BASE.to_vec();
            args.extend(["--enable-leader-election", v]);
            assert_eq!(parse(&args).unwrap().leader_election, want, "{v}");
        }
        let mut args = BASE.to_vec();
        args.extend(["--enable-leader-election", "yes"]);
        assert_eq!(parse(&args).unwrap_err().var, "ENABLE_LEADER_ELECTION");
    }

    #[test]
    fn watch_bounds_and_resync_have_defaults_and_an_order() {
        let c = parse(&BASE).expect("valid");
        assert_eq!(c.resync, Duration::from_secs(60));
        assert_eq!(c.watch_bounds, WatchBounds::default());
        let mut args = BASE.to_vec();
        args.extend(["--watch-unready-after", "2m", "--watch-unhealthy-after", "2m"]);
        assert_eq!(
            parse(&args).expect_err("equal bounds").var,
            "WATCH_UNHEALTHY_AFTER"
        );
    }

    #[test]
    fn clones_and_usage_have_defaults_and_usage_can_be_turned_off() {
        let c = parse(&BASE).expect("valid");
        assert_eq!(
            c.clone,
            CloneLimits {
                timeout: Duration::from_secs(6 * 3600),
                concurrency: 16,
                at_once: 2,
            }
        );
        assert_eq!(c.usage.interval, Some(Duration::from_secs(300)));
        assert_eq!(c.usage.ops_per_second, 200);
        for off in ["0", "off"] {
            let mut args = BASE.to_vec();
            args.extend(["--usage-interval", off]);
            assert_eq!(parse(&args).expect("valid").usage.interval, None, "{off}");
        }
        let mut args = BASE.to_vec();
        args.extend(["--max-concurrent-clones", "0"]);
        assert_eq!(parse(&args).unwrap_err().var, "MAX_CONCURRENT_CLONES");
        let mut args = BASE.to_vec();
        args.extend(["--usage-interval", "often"]);
        assert_eq!(parse(&args).unwrap_err().var, "USAGE_INTERVAL");
    }

    #[test]
    fn renew_deadline_must_be_shorter_than_lease() {
        let mut args = BASE.to_vec();
        args.extend(["--renew-deadline", "20s"]);
        assert_eq!(parse(&args).unwrap_err().var, "LEADER_ELECTION_RENEW_DEADLINE");
    }

    #[test]
    fn http_addr_defaults_to_all_interfaces_and_is_checked() {
        assert_eq!(parse(&BASE).unwrap().http_addr.to_string(), "0.0.0.0:8080");
        let mut args = BASE.to_vec();
        args.extend(["--http-addr", "localhost"]);
        assert_eq!(parse(&args).unwrap_err().var, "HTTP_ADDR");
    }

    #[test]
    fn check_is_a_subcommand_taking_the_same_flags() {
        let mut argv = vec!["nfs-subdir-provisioner", "check"];
        argv.extend_from_slice(&BASE);
        let args = Args::try_parse_from(argv).expect("flags after the subcommand");
        assert_eq!(args.command(), Command::Check);
        assert_eq!(mounted_path(&args.into_config().unwrap()), "/export");
        let plain = Args::try_parse_from(["nfs-subdir-provisioner"]).expect("no flags");
        assert_eq!(plain.command(), Command::Run);
    }

    #[test]
    fn the_operator_commands_take_their_own_flags_and_the_global_ones() {
        let mut argv = vec![
            "nfs-subdir-provisioner",
            "volumes",
            "--output",
            "json",
            "--measure",
        ];
        argv.extend_from_slice(&BASE);
        let args = Args::try_parse_from(argv).expect("volumes flags");
        assert_eq!(
            args.command(),
            Command::Volumes(VolumesArgs {
                output: Output::Json,
                measure: true
            })
        );
        assert_eq!(mounted_path(&args.into_config().unwrap()), "/export");
        let prune = |extra: &[&str]| {
            let mut argv = vec!["nfs-subdir-provisioner", "prune-archives"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).map(|a| a.command())
        };
        assert_eq!(
            prune(&["--older-than", "30d"]).expect("an age"),
            Command::PruneArchives(PruneArgs {
                older_than: Duration::from_secs(30 * 86_400),
                confirm: false,
                output: Output::Table,
            })
        );
        assert!(matches!(
            prune(&["--older-than", "12h", "--confirm"]),
            Ok(Command::PruneArchives(PruneArgs { confirm: true, .. }))
        ));
        assert!(prune(&[]).is_err(), "an age is required");
        for bad in ["30", "0s", "soon"] {
            assert!(prune(&["--older-than", bad]).is_err(), "{bad}");
        }
        assert!(age("30").unwrap_err().contains("30d"));
    }

    #[test]
    fn help_opens_with_what_the_program_is_and_names_every_variable() {
        use clap::CommandFactory;
        let mut command = <Args as CommandFactory>::command();
        let help = command.render_long_help().to_string();
        assert!(
            help.starts_with("nfs-subdir-provisioner: a Kubernetes dynamic provisioner."),
            "{help}"
        );
        for text in ["prune-archives", "volumes", "check", "kubectl exec"] {
            assert!(help.contains(text), "{text} missing from:\n{help}");
        }
        for developer in ["into_config", "Flags as given", "clap"] {
            assert!(!help.contains(developer), "{developer} in:\n{help}");
        }
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(arg.get_env().is_some(), "--{id} names no environment variable");
        }
        assert!(help.contains("[env: NFS_MOUNT_PATH=]") && help.contains("[default: /persistentvolumes]"));
        let short = command.render_help().to_string();
        assert!(short.starts_with(ABOUT), "{short}");
    }

    #[test]
    fn durations_accept_plain_seconds_and_units() {
        let mut args = BASE.to_vec();
        args.extend([
            "--lease-duration",
            "30",
            "--renew-deadline",
            "20s",
            "--retry-period",
            "500ms",
        ]);
        let c = parse(&args).unwrap();
        assert_eq!(c.lease.duration, Duration::from_secs(30));
        assert_eq!(c.lease.retry_period, Duration::from_millis(500));
    }
}
