//! Prometheus metrics for operators. The provision and delete families carry the names and labels
//! of sig-storage-lib-external-provisioner (`controller_persistentvolumeclaim_provision_total`
//! and friends), so dashboards built for provisioners on that library work unchanged; the
//! `nfs_subdir_provisioner_*` families add what that library never had: leadership, the health
//! of each export, the freshness of each watch, and why operations fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Prometheus client_golang's DefBuckets, which the library's duration histograms use.
const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    class: String,
    /// The kind of the claim's data source (`PersistentVolumeClaim` for a clone), as the
    /// library's series carry it; empty for a new, empty volume.
    source: String,
}

/// A measured volume, labelled as kubelet labels its volume stats, and by its PV.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabels {
    pub namespace: String,
    pub persistentvolumeclaim: String,
    pub persistentvolume: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    export: String,
}

/// A failed operation: which (`provision`, `release`, `resize`) and why, in one word of a small
/// fixed set (the failing error's `reason()`): never an object's name or an error's text, so the
/// family stays small.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    operation: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    resource: String,
}

type TimestampGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The last measurement of every volume, one entry each, encoded as three gauge families on
/// scrape. Three `Family`s would keep each volume's labels three times over, with a gauge and a
/// map entry each: 3 MiB at 10 000 volumes in a heap profile (BENCHMARKS.md).
#[derive(Debug, Default)]
struct VolumeStats(Mutex<HashMap<VolumeLabels, Measured>>);

#[derive(Debug, Clone, Copy)]
struct Measured {
    used: i64,
    inodes: i64,
    capacity: Option<i64>,
}

type VolumeSeries = (&'static str, &'static str, fn(&Measured) -> Option<i64>);

/// Name, help (as the registry ends it, with a full stop) and value of each volume family.
const VOLUME_SERIES: [VolumeSeries; 3] = [
    (
        "nfs_subdir_provisioner_volume_stats_used_bytes",
        "Bytes a volume's directory takes on the NFS server (every inode once, as du counts), as last measured. Named after kubelet_volume_stats_used_bytes, whose NFS figure is the whole export's.",
        |m| Some(m.used),
    ),
    (
        "nfs_subdir_provisioner_volume_stats_capacity_bytes",
        "The size a volume's claim asks for (its PV's capacity). NFS does not enforce it.",
        |m| m.capacity,
    ),
    (
        "nfs_subdir_provisioner_volume_stats_inodes_used",
        "Inodes (files, directories, symlinks) in a volume's directory, as last measured.",
        |m| Some(m.inodes),
    ),
];

impl VolumeStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VolumeLabels, Measured>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for VolumeStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.lock();
        for (name, help, value) in VOLUME_SERIES {
            // As for a family, a metric without series is left out.
            if !stats.values().any(|m| value(m).is_some()) {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, measured) in stats.iter() {
                if let Some(v) = value(measured) {
                    family.encode_family(labels)?.encode_gauge(&v)?;
                }
            }
        }
        Ok(())
    }
}

/// The process's metrics; cheap to clone (every family is shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    provisioned: Family<ClaimLabels, Counter>,
    provision_failed: Family<ClaimLabels, Counter>,
    provision_duration: HistogramFamily<ClaimLabels>,
    deleted: Family<ClassLabels, Counter>,
    delete_failed: Family<ClassLabels, Counter>,
    delete_duration: HistogramFamily<ClassLabels>,
    resized: Family<ClassLabels, Counter>,
    resize_failed: Family<ClassLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    clones_in_progress: Gauge,
    clone_bytes: Family<ClassLabels, Counter>,
    clone_entries: Family<ClassLabels, Counter>,
    volume_stats: Arc<VolumeStats>,
    export_capacity: Family<ExportLabels, Gauge>,
    export_available: Family<ExportLabels, Gauge>,
    usage_round: Family<ExportLabels, TimestampGauge>,
    usage_failures: Family<ExportLabels, Counter>,
    leader: Gauge,
    export_healthy: Family<ExportLabels, Gauge>,
    export_timeouts: Family<ExportLabels, Counter>,
    watch_healthy: Family<WatchLabels, Gauge>,
    watch_confirmed: Family<WatchLabels, TimestampGauge>,
    watch_failures: Family<WatchLabels, Counter>,
    watch_relists: Family<WatchLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let provisioned = Family::default();
        let provision_failed = Family::default();
        let provision_duration: HistogramFamily<ClaimLabels> =
            Family::new_with_constructor(duration_histogram);
        let deleted = Family::default();
        let delete_failed = Family::default();
        let delete_duration: HistogramFamily<ClassLabels> = Family::new_with_constructor(duration_histogram);
        let resized = Family::default();
        let resize_failed = Family::default();
        let failures = Family::default();
        let clones_in_progress = Gauge::default();
        let clone_bytes = Family::default();
        let clone_entries = Family::default();
        let volume_stats = Arc::new(VolumeStats::default());
        let export_capacity = Family::default();
        let export_available = Family::default();
        let usage_round = Family::default();
        let usage_failures = Family::default();
        let leader = Gauge::default();
        let export_healthy = Family::default();
        let export_timeouts = Family::default();
        let watch_healthy = Family::default();
        let watch_confirmed = Family::default();
        let watch_failures = Family::default();
        let watch_relists = Family::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "controller_persistentvolumeclaim_provision",
            "Total number of persistent volumes provisioned successfully. Broken down by storage class name and source of the claim",
            provisioned.clone(),
        );
        registry.register(
            "controller_persistentvolumeclaim_provision_failed",
            "Total number of persistent volume provision failed attempts. Broken down by storage class name and source of the claim",
            provision_failed.clone(),
        );
        registry.register(
            "controller_persistentvolumeclaim_provision_duration_seconds",
            "Latency in seconds to provision persistent volumes. Failed provisioning attempts are ignored. Broken down by storage class name and source of the claim",
            provision_duration.clone(),
        );
        registry.register(
            "controller_persistentvolume_delete",
            "Total number of persistent volumes released successfully (directory archived, deleted or retained, then the PV deleted). Broken down by storage class name",
            deleted.clone(),
        );
        registry.register(
            "controller_persistentvolume_delete_failed",
            "Total number of persistent volume release failed attempts. Broken down by storage class name",
            delete_failed.clone(),
        );
        registry.register(
            "controller_persistentvolume_delete_duration_seconds",
            "Latency in seconds to release persistent volumes. Failed attempts are ignored. Broken down by storage class name",
            delete_duration.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_volumes_resized",
            "Claims whose volume was grown to their new request (PV and claim both record the size). Broken down by storage class name",
            resized.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_volume_resize_failed",
            "Failed attempts to grow a claim's volume; each is retried. Broken down by storage class name",
            resize_failed.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_operation_failures",
            "Failed provision, release and resize attempts (each counted in its own family too), by operation and reason: a short fixed word such as NoSpace, InvalidClass, ExportTimeout or APIUnavailable. The Warning Event on the object has the details",
            failures.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_clones_in_progress",
            "Clones being copied or waiting for a slot (MAX_CONCURRENT_CLONES)",
            clones_in_progress.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_clone_copied_bytes",
            "Bytes of file content copied into clones, as they are copied. Broken down by storage class name",
            clone_bytes.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_clone_copied_entries",
            "Files, directories and symlinks copied into clones, as they are copied. Broken down by storage class name",
            clone_entries.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&volume_stats)));
        registry.register(
            "nfs_subdir_provisioner_export_capacity_bytes",
            "Size of the export's filesystem, as the server reports it (statvfs, FSSTAT)",
            export_capacity.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_export_available_bytes",
            "Bytes of the export's filesystem free for unprivileged users, as the server reports it",
            export_available.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_usage_last_round_timestamp_seconds",
            "When the leader last finished measuring every volume of the export, as Unix time",
            usage_round.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_usage_failures",
            "Volumes of the export that could not be measured (each is tried again next round)",
            usage_failures.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_leader",
            "1 while this replica holds the leader Lease (or runs without leader election), else 0",
            leader.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_export_healthy",
            "1 while the export's last operation or probe answered in time, 0 after one failed or timed out",
            export_healthy.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_export_timeouts",
            "Operations on the export that did not finish within their deadline",
            export_timeouts.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_watch_healthy",
            "1 while the leader's list and watch of the resource work, 0 from a failed attempt until one succeeds",
            watch_healthy.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_watch_last_confirmed_timestamp_seconds",
            "When the API server last proved the leader's watch of the resource current (list completed, watch started, event or bookmark), as Unix time. A working watch is confirmed at least once a minute",
            watch_confirmed.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_watch_failures",
            "Failed list or watch attempts of the resource (refused, errors, streams that stalled); each is retried within seconds",
            watch_failures.clone(),
        );
        registry.register(
            "nfs_subdir_provisioner_watch_relists",
            "Full lists of the resource after the first, because the API server no longer had the watch's resourceVersion (410 Gone)",
            watch_relists.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            provisioned,
            provision_failed,
            provision_duration,
            deleted,
            delete_failed,
            delete_duration,
            resized,
            resize_failed,
            failures,
            clones_in_progress,
            clone_bytes,
            clone_entries,
            volume_stats,
            export_capacity,
            export_available,
            usage_round,
            usage_failures,
            leader,
            export_healthy,
            export_timeouts,
            watch_healthy,
            watch_confirmed,
            watch_failures,
            watch_relists,
        }
    }

    fn watch(resource: &str) -> WatchLabels {
        WatchLabels {
            resource: resource.to_owned(),
        }
    }

    pub fn watch_confirmed(&self, resource: &str) {
        let labels = Self::watch(resource);
        self.watch_healthy.get_or_create(&labels).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.watch_confirmed.get_or_create(&labels).set(now.as_secs_f64());
    }

    pub fn watch_failed(&self, resource: &str) {
        let labels = Self::watch(resource);
        self.watch_healthy.get_or_create(&labels).set(0);
        self.watch_failures.get_or_create(&labels).inc();
    }

    /// A term ended: its watches' health says nothing about the next one.
    pub fn forget_watch_health(&self) {
        self.watch_healthy.clear();
    }

    pub fn watch_relisted(&self, resource: &str) {
        self.watch_relists.get_or_create(&Self::watch(resource)).inc();
    }

    fn claim(class: &str, source: &str) -> ClaimLabels {
        ClaimLabels {
            class: class.to_owned(),
            source: source.to_owned(),
        }
    }

    fn class(class: &str) -> ClassLabels {
        ClassLabels {
            class: class.to_owned(),
        }
    }

    /// `source`: the kind of the claim's data source, empty for none.
    pub fn provisioned(&self, class: &str, source: &str, took: Duration) {
        let labels = Self::claim(class, source);
        self.provisioned.get_or_create(&labels).inc();
        self.provision_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// `reason`: a word of a small fixed set (a refusal's or error's `reason()`).
    pub fn provision_failed(&self, class: &str, source: &str, reason: &'static str) {
        self.provision_failed
            .get_or_create(&Self::claim(class, source))
            .inc();
        self.failed("provision", reason);
    }

    fn failed(&self, operation: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { operation, reason })
            .inc();
    }

    pub fn clones_in_progress(&self, n: usize) {
        self.clones_in_progress.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Copying into a clone of `class` went `entries` and `bytes` further.
    pub fn cloned(&self, class: &str, entries: u64, bytes: u64) {
        let labels = Self::class(class);
        self.clone_entries.get_or_create(&labels).inc_by(entries);
        self.clone_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// A volume's measurement; `capacity`: what its PV records, if it can be read.
    pub fn volume_measured(&self, volume: &VolumeLabels, used: u64, inodes: u64, capacity: Option<u64>) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let measured = Measured {
            used: gauge(used),
            inodes: gauge(inodes),
            capacity: capacity.map(gauge),
        };
        self.volume_stats.lock().insert(volume.clone(), measured);
    }

    /// The volume is gone (or no longer ours to measure): its series go.
    pub fn volume_forgotten(&self, volume: &VolumeLabels) {
        self.volume_stats.lock().remove(volume);
    }

    pub fn export_capacity(&self, export: &str, total: u64, available: u64) {
        let labels = ExportLabels {
            export: export.to_owned(),
        };
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.export_capacity.get_or_create(&labels).set(gauge(total));
        self.export_available.get_or_create(&labels).set(gauge(available));
    }

    pub fn usage_round_finished(&self, export: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.usage_round
            .get_or_create(&ExportLabels {
                export: export.to_owned(),
            })
            .set(now.as_secs_f64());
    }

    pub fn usage_failed(&self, export: &str) {
        self.usage_failures
            .get_or_create(&ExportLabels {
                export: export.to_owned(),
            })
            .inc();
    }

    pub fn released(&self, class: &str, took: Duration) {
        let labels = Self::class(class);
        self.deleted.get_or_create(&labels).inc();
        self.delete_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn release_failed(&self, class: &str, reason: &'static str) {
        self.delete_failed.get_or_create(&Self::class(class)).inc();
        self.failed("release", reason);
    }

    pub fn resized(&self, class: &str) {
        self.resized.get_or_create(&Self::class(class)).inc();
    }

    pub fn resize_failed(&self, class: &str, reason: &'static str) {
        self.resize_failed.get_or_create(&Self::class(class)).inc();
        self.failed("resize", reason);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_export_healthy(&self, export: &str, healthy: bool) {
        self.export_healthy
            .get_or_create(&ExportLabels {
                export: export.to_owned(),
            })
            .set(i64::from(healthy));
    }

    pub fn export_timed_out(&self, export: &str) {
        self.export_timeouts
            .get_or_create(&ExportLabels {
                export: export.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn library_names_and_labels_are_kept() {
        let m = Metrics::new();
        m.provisioned("nfs", "", Duration::from_millis(30));
        m.provisioned("nfs", "", Duration::from_millis(3));
        m.provision_failed("fast", "", "NoSpace");
        m.released("nfs", Duration::from_secs(2));
        m.release_failed("nfs", "ExportTimeout");
        let text = m.encode();
        let claim = r#"{class="nfs",source=""}"#;
        assert_eq!(
            sample(
                &text,
                &format!("controller_persistentvolumeclaim_provision_total{claim}")
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"controller_persistentvolumeclaim_provision_failed_total{class="fast",source=""}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("controller_persistentvolumeclaim_provision_duration_seconds_count{claim}")
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"controller_persistentvolumeclaim_provision_duration_seconds_bucket{le="0.005",class="nfs",source=""}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"controller_persistentvolume_delete_total{class="nfs"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"controller_persistentvolume_delete_failed_total{class="nfs"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"controller_persistentvolume_delete_duration_seconds_sum{class="nfs"}"#
            ),
            Some(2.0)
        );
    }

    #[test]
    fn volume_stats_carry_kubelets_labels_and_go_with_their_volume() {
        let m = Metrics::new();
        let volume = VolumeLabels {
            namespace: "team".into(),
            persistentvolumeclaim: "data".into(),
            persistentvolume: "pvc-1".into(),
        };
        m.volume_measured(&volume, 3 << 20, 12, Some(1 << 20));
        m.provisioned("nfs", "PersistentVolumeClaim", Duration::from_millis(30));
        let text = m.encode();
        let series = r#"{namespace="team",persistentvolumeclaim="data",persistentvolume="pvc-1"}"#;
        assert_eq!(
            sample(
                &text,
                &format!("nfs_subdir_provisioner_volume_stats_used_bytes{series}")
            ),
            Some(f64::from(3 << 20))
        );
        assert_eq!(
            sample(
                &text,
                &format!("nfs_subdir_provisioner_volume_stats_capacity_bytes{series}")
            ),
            Some(f64::from(1 << 20))
        );
        assert_eq!(
            sample(
                &text,
                &format!("nfs_subdir_provisioner_volume_stats_inodes_used{series}")
            ),
            Some(12.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"controller_persistentvolumeclaim_provision_total{class="nfs",source="PersistentVolumeClaim"}"#
            ),
            Some(1.0)
        );
        for family in [
            "nfs_subdir_provisioner_volume_stats_used_bytes",
            "nfs_subdir_provisioner_volume_stats_capacity_bytes",
            "nfs_subdir_provisioner_volume_stats_inodes_used",
        ] {
            assert!(text.contains(&format!("# TYPE {family} gauge\n")), "{family}");
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
        assert!(
            text.lines()
                .filter(|l| l.starts_with("# HELP"))
                .all(|l| l.ends_with('.') && !l.ends_with("..")),
            "every help text ends with one full stop"
        );
        m.volume_measured(&volume, 1, 1, None);
        let text = m.encode();
        assert!(
            !text.contains("volume_stats_capacity_bytes"),
            "no capacity, no series"
        );
        assert!(text.contains("volume_stats_used_bytes{"));
        m.volume_forgotten(&volume);
        let text = m.encode();
        assert!(!text.contains("pvc-1"));
        assert!(!text.contains("volume_stats"), "no volume, no family");
    }

    #[test]
    fn failures_are_counted_by_operation_and_reason_beside_the_library_counters() {
        let m = Metrics::new();
        m.provision_failed("nfs", "", "InvalidClass");
        m.provision_failed("other", "PersistentVolumeClaim", "InvalidClass");
        m.provision_failed("nfs", "", "NoSpace");
        m.release_failed("nfs", "ExportTimeout");
        m.resize_failed("nfs", "APIUnavailable");
        let text = m.encode();
        let failures = "nfs_subdir_provisioner_operation_failures_total";
        for (labels, count) in [
            (r#"{operation="provision",reason="InvalidClass"}"#, 2.0),
            (r#"{operation="provision",reason="NoSpace"}"#, 1.0),
            (r#"{operation="release",reason="ExportTimeout"}"#, 1.0),
            (r#"{operation="resize",reason="APIUnavailable"}"#, 1.0),
        ] {
            assert_eq!(
                sample(&text, &format!("{failures}{labels}")),
                Some(count),
                "{labels}"
            );
        }
        // Only these two labels: classes and objects stay in the library's families and Events.
        assert_eq!(text.lines().filter(|l| l.starts_with(failures)).count(), 4);
        assert_eq!(
            sample(
                &text,
                r#"controller_persistentvolumeclaim_provision_failed_total{class="nfs",source=""}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"nfs_subdir_provisioner_volume_resize_failed_total{class="nfs"}"#
            ),
            Some(1.0)
        );
    }

    #[test]
    fn leadership_and_export_health_are_gauges() {
        let m = Metrics::new();
        assert_eq!(sample(&m.encode(), "nfs_subdir_provisioner_leader"), Some(0.0));
        m.set_leader(true);
        m.set_export_healthy("127.0.0.1:/export", false);
        m.export_timed_out("127.0.0.1:/export");
        let text = m.encode();
        assert_eq!(sample(&text, "nfs_subdir_provisioner_leader"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                r#"nfs_subdir_provisioner_export_healthy{export="127.0.0.1:/export"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"nfs_subdir_provisioner_export_timeouts_total{export="127.0.0.1:/export"}"#
            ),
            Some(1.0)
        );
    }
}
