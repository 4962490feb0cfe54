//! What `volumes` and `prune-archives` found, as plain records: printed as tables for a person,
//! or as JSON for scripts (field names are part of the interface; README.md lists them).

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use serde::{Serialize, Serializer};

use crate::core::inventory::EntryType;
use crate::storage::Usage;

/// What a directory takes, where it was measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Size {
    NotMeasured,
    Measured(Usage),
    /// It went between the listing and the measurement.
    Gone,
    Failed(String),
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Fields<'a> {
            used_bytes: Option<u64>,
            inodes: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            size_error: Option<&'a str>,
        }
        let (used_bytes, inodes) = match self {
            Size::Measured(u) => (Some(u.used_bytes), Some(u.inodes)),
            _ => (None, None),
        };
        let size_error = match self {
            Size::Failed(e) => Some(e.as_str()),
            Size::Gone => Some("gone since it was listed"),
            _ => None,
        };
        Fields {
            used_bytes,
            inodes,
            size_error,
        }
        .serialize(serializer)
    }
}

fn rfc3339<S: Serializer>(seconds: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&timestamp(*seconds))
}

fn entry_type<S: Serializer>(kind: &EntryType, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.as_str())
}

/// The view of every export: `volumes`' output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub provisioner: String,
    #[serde(serialize_with = "rfc3339")]
    pub taken_at: i64,
    pub exports: Vec<ExportReport>,
    /// PVs of this provisioner on no export it serves now, each with the reason.
    pub unplaced: Vec<VolumeRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// `server:path`.
    pub export: String,
    /// `mounted` (NFS_SERVER/NFS_PATH at NFS_MOUNT_PATH) or `direct` (a class's server and share).
    pub access: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounted_at: Option<String>,
    pub volumes: Vec<VolumeRow>,
    /// PVs of others (another provisioner, or made by hand) pointing into the export.
    pub other_volumes: Vec<OtherRow>,
    /// Directories of volumes being provisioned (a staging record names them, no PV yet).
    pub provisioning: Vec<String>,
    pub orphans: Vec<OrphanRow>,
    pub archives: Vec<ArchiveRow>,
    /// What could not be read; the lists above may miss what is behind it.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeRow {
    pub pv: String,
    /// `namespace/name` of the claim it is (or was) bound to.
    pub claim: Option<String>,
    pub phase: Option<String>,
    pub class: Option<String>,
    pub reclaim_policy: Option<String>,
    /// What releasing it does to the directory: archive, delete or retain.
    pub on_delete: Option<String>,
    /// Relative to the export.
    pub directory: Option<String>,
    /// Whether the directory is there (`null`: its parent could not be read).
    pub present: Option<bool>,
    pub capacity_bytes: Option<u64>,
    #[serde(flatten)]
    pub size: Size,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OtherRow {
    pub pv: String,
    /// Its `pv.kubernetes.io/provisioned-by`, if any.
    pub provisioner: Option<String>,
    pub claim: Option<String>,
    pub phase: Option<String>,
    /// Relative to the export; empty: the PV holds the whole export (its path is the export or
    /// around it).
    pub directory: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrphanRow {
    pub directory: String,
    #[serde(rename = "type", serialize_with = "entry_type")]
    pub kind: EntryType,
    #[serde(serialize_with = "rfc3339")]
    pub modified_at: i64,
    #[serde(flatten)]
    pub size: Size,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRow {
    pub directory: String,
    /// Its change time (ctime), which the rename that archived it set.
    #[serde(serialize_with = "rfc3339")]
    pub archived_at: i64,
    pub age_seconds: u64,
    #[serde(flatten)]
    pub size: Size,
}

/// What `prune-archives` did, or would do.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub provisioner: String,
    pub older_than_seconds: u64,
    /// `--confirm` was given: the archives marked `removed` are gone.
    pub confirmed: bool,
    pub exports: Vec<PruneExport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneExport {
    pub export: String,
    pub archives: Vec<PruneRow>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneAction {
    WouldRemove,
    Removed,
    /// Already gone when its removal began.
    Gone,
    Kept,
    Failed,
}

impl PruneAction {
    fn as_str(self) -> &'static str {
        match self {
            PruneAction::WouldRemove => "would remove",
            PruneAction::Removed => "removed",
            PruneAction::Gone => "gone",
            PruneAction::Kept => "kept",
            PruneAction::Failed => "FAILED",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneRow {
    pub directory: String,
    #[serde(serialize_with = "rfc3339")]
    pub archived_at: i64,
    pub age_seconds: u64,
    pub action: PruneAction,
    /// Why it is kept, or why its removal failed.
    pub reason: Option<String>,
    /// Measured in a dry run only (the removal counts entries instead).
    #[serde(flatten)]
    pub size: Size,
    pub removed_entries: Option<u64>,
}

impl Report {
    /// Something could not be read.
    pub fn incomplete(&self) -> bool {
        self.exports.iter().any(|e| !e.errors.is_empty())
    }
}

impl PruneReport {
    /// Something could not be read or removed.
    pub fn failed(&self) -> bool {
        self.exports
            .iter()
            .any(|e| !e.errors.is_empty() || e.archives.iter().any(|a| a.action == PruneAction::Failed))
    }
}

pub fn json<T: Serialize>(report: &T) -> String {
    // Plain data: serialising it cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default() + "\n"
}

/// `2025-01-31T12:00:00Z`.
pub fn timestamp(seconds: i64) -> String {
    Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}

/// Bytes in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Display only; the precision lost converting to f64 is irrelevant at one decimal.
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An age in its largest sensible unit: 45s, 12m, 5h, 30d.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn size(size: &Size) -> String {
    match size {
        Size::NotMeasured => "-".into(),
        Size::Measured(u) => bytes(u.used_bytes),
        Size::Gone => "gone".into(),
        Size::Failed(_) => "?".into(),
    }
}

fn or_dash(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("-")
}

/// Left-aligned columns two spaces apart, under `header`, each line indented by four.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::from("    ");
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 < header.len() {
                let _ = write!(text, "{cell:<w$}  ");
            } else {
                text.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

/// `  Title (n)`, or `  Title: none`.
fn section(out: &mut String, title: &str, count: usize) -> bool {
    if count == 0 {
        let _ = writeln!(out, "  {title}: none");
        return false;
    }
    let _ = writeln!(out, "  {title} ({count})");
    true
}

/// What the release of a volume does, in one word: its on-delete policy, unless the reclaim
/// policy keeps the PV (and so the directory) anyway.
fn policy(row: &VolumeRow) -> String {
    match row.reclaim_policy.as_deref() {
        Some("Delete") | None => or_dash(row.on_delete.as_deref()).to_owned(),
        Some(other) => other.to_owned(),
    }
}

fn volume_cells(row: &VolumeRow) -> Vec<String> {
    let directory = match (row.directory.as_deref(), row.present) {
        (Some(dir), Some(false)) => format!("{dir} (missing)"),
        (Some(dir), _) => dir.to_owned(),
        (None, _) => "-".to_owned(),
    };
    vec![
        row.pv.clone(),
        or_dash(row.claim.as_deref()).to_owned(),
        or_dash(row.phase.as_deref()).to_owned(),
        policy(row),
        row.capacity_bytes.map_or_else(|| "-".into(), bytes),
        size(&row.size),
        directory,
    ]
}

/// Measurement failures, one line each, under the export they belong to.
fn size_errors<'a>(out: &mut String, failed: impl Iterator<Item = (&'a str, &'a Size)>) {
    for (what, s) in failed {
        if let Size::Failed(error) = s {
            let _ = writeln!(out, "    could not measure {what}: {error}");
        }
    }
}

/// `volumes --output table`.
pub fn volumes_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Volumes of provisioner {} as of {}",
        report.provisioner,
        timestamp(report.taken_at)
    );
    if report.exports.is_empty() {
        let _ = writeln!(
            out,
            "\nNo export is served: NFS_SERVER/NFS_PATH are unset and no StorageClass of this provisioner names server and share."
        );
    }
    for export in &report.exports {
        let _ = write!(out, "\nExport {} ({}", export.export, export.access);
        if let Some(at) = &export.mounted_at {
            let _ = write!(out, " at {at}");
        }
        let _ = writeln!(out, ")");
        if section(&mut out, "Volumes", export.volumes.len()) {
            let rows: Vec<Vec<String>> = export.volumes.iter().map(volume_cells).collect();
            table(
                &mut out,
                &["PV", "CLAIM", "PHASE", "POLICY", "CAPACITY", "USED", "DIRECTORY"],
                &rows,
            );
            size_errors(&mut out, export.volumes.iter().map(|v| (v.pv.as_str(), &v.size)));
        }
        if !export.other_volumes.is_empty() {
            section(
                &mut out,
                "PVs of others in this export",
                export.other_volumes.len(),
            );
            let rows: Vec<Vec<String>> = export
                .other_volumes
                .iter()
                .map(|o| {
                    vec![
                        o.pv.clone(),
                        or_dash(o.provisioner.as_deref()).to_owned(),
                        or_dash(o.claim.as_deref()).to_owned(),
                        or_dash(o.phase.as_deref()).to_owned(),
                        match o.directory.as_str() {
                            "" => "(all of the export)".to_owned(),
                            dir => dir.to_owned(),
                        },
                    ]
                })
                .collect();
            table(
                &mut out,
                &["PV", "PROVISIONER", "CLAIM", "PHASE", "DIRECTORY"],
                &rows,
            );
        }
        if !export.provisioning.is_empty() {
            section(&mut out, "Being provisioned", export.provisioning.len());
            for dir in &export.provisioning {
                let _ = writeln!(out, "    {dir}");
            }
        }
        if section(&mut out, "Orphans, no PV points at them", export.orphans.len()) {
            let rows: Vec<Vec<String>> = export
                .orphans
                .iter()
                .map(|o| {
                    vec![
                        o.directory.clone(),
                        o.kind.as_str().to_owned(),
                        timestamp(o.modified_at),
                        size(&o.size),
                    ]
                })
                .collect();
            table(&mut out, &["DIRECTORY", "TYPE", "MODIFIED", "SIZE"], &rows);
            size_errors(
                &mut out,
                export.orphans.iter().map(|o| (o.directory.as_str(), &o.size)),
            );
        }
        if section(&mut out, "Archives", export.archives.len()) {
            let rows: Vec<Vec<String>> = export
                .archives
                .iter()
                .map(|a| {
                    vec![
                        a.directory.clone(),
                        timestamp(a.archived_at),
                        age(a.age_seconds),
                        size(&a.size),
                    ]
                })
                .collect();
            table(&mut out, &["DIRECTORY", "ARCHIVED", "AGE", "SIZE"], &rows);
            size_errors(
                &mut out,
                export.archives.iter().map(|a| (a.directory.as_str(), &a.size)),
            );
        }
        if !export.errors.is_empty() {
            section(&mut out, "Could not read", export.errors.len());
            for error in &export.errors {
                let _ = writeln!(out, "    {error}");
            }
        }
    }
    if !report.unplaced.is_empty() {
        let _ = writeln!(out, "\nVolumes of this provisioner on no export it serves now");
        let rows: Vec<Vec<String>> = report
            .unplaced
            .iter()
            .map(|v| {
                vec![
                    v.pv.clone(),
                    or_dash(v.claim.as_deref()).to_owned(),
                    or_dash(v.phase.as_deref()).to_owned(),
                    or_dash(v.problem.as_deref()).to_owned(),
                ]
            })
            .collect();
        table(&mut out, &["PV", "CLAIM", "PHASE", "PROBLEM"], &rows);
    }
    out
}

/// `prune-archives --output table`.
pub fn prune_table(report: &PruneReport) -> String {
    let mut out = String::new();
    let older = age(report.older_than_seconds);
    let _ = write!(
        out,
        "Archives of provisioner {} archived more than {older} ago",
        report.provisioner
    );
    let _ = writeln!(
        out,
        "{}",
        match report.confirmed {
            true => ": removing",
            false => ": dry run, nothing is removed without --confirm",
        }
    );
    let count = |action: PruneAction| {
        report
            .exports
            .iter()
            .flat_map(|e| &e.archives)
            .filter(|a| a.action == action)
            .count()
    };
    let (would, removed, gone, kept, failed) = (
        count(PruneAction::WouldRemove),
        count(PruneAction::Removed),
        count(PruneAction::Gone),
        count(PruneAction::Kept),
        count(PruneAction::Failed),
    );
    for export in &report.exports {
        let _ = writeln!(out, "\nExport {}", export.export);
        if section(&mut out, "Archives", export.archives.len()) {
            let rows: Vec<Vec<String>> = export
                .archives
                .iter()
                .map(|a| {
                    let note = match (a.removed_entries, a.reason.as_deref()) {
                        (Some(n), _) => format!("{n} entries removed"),
                        (None, Some(reason)) => reason.to_owned(),
                        (None, None) => String::new(),
                    };
                    vec![
                        a.action.as_str().to_owned(),
                        a.directory.clone(),
                        age(a.age_seconds),
                        size(&a.size),
                        note,
                    ]
                })
                .collect();
            table(&mut out, &["ACTION", "DIRECTORY", "AGE", "SIZE", "WHY"], &rows);
            size_errors(
                &mut out,
                export.archives.iter().map(|a| (a.directory.as_str(), &a.size)),
            );
        }
        if !export.errors.is_empty() {
            section(&mut out, "Could not read", export.errors.len());
            for error in &export.errors {
                let _ = writeln!(out, "    {error}");
            }
        }
    }
    let _ = writeln!(out);
    if report.confirmed {
        let _ = writeln!(
            out,
            "{removed} removed, {gone} already gone, {kept} kept, {failed} failed."
        );
    } else {
        let total: u64 = report
            .exports
            .iter()
            .flat_map(|e| &e.archives)
            .filter_map(|a| match (&a.size, a.action) {
                (Size::Measured(u), PruneAction::WouldRemove) => Some(u.used_bytes),
                _ => None,
            })
            .sum();
        let _ = writeln!(
            out,
            "{would} would be removed ({}), {kept} kept. Run again with --confirm to remove them.",
            bytes(total)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(used_bytes: u64) -> Size {
        Size::Measured(Usage {
            used_bytes,
            file_bytes: 0,
            inodes: 3,
        })
    }

    fn report() -> Report {
        Report {
            provisioner: "example.com/nfs".into(),
            taken_at: 1_700_000_000,
            exports: vec![ExportReport {
                export: "nfs:/exports".into(),
                access: "mounted",
                mounted_at: Some("/persistentvolumes".into()),
                volumes: vec![VolumeRow {
                    pv: "pvc-1".into(),
                    claim: Some("team/data".into()),
                    phase: Some("Bound".into()),
                    class: Some("nfs".into()),
                    reclaim_policy: Some("Delete".into()),
                    on_delete: Some("archive".into()),
                    directory: Some("team-data-pvc-1".into()),
                    present: Some(false),
                    capacity_bytes: Some(1 << 20),
                    size: Size::NotMeasured,
                    problem: None,
                }],
                other_volumes: vec![],
                provisioning: vec![],
                orphans: vec![OrphanRow {
                    directory: "stray".into(),
                    kind: EntryType::Directory,
                    modified_at: 1_600_000_000,
                    size: Size::Failed("measure stray: Permission denied".into()),
                }],
                archives: vec![ArchiveRow {
                    directory: "archived-team-old-pvc-0".into(),
                    archived_at: 1_699_000_000,
                    age_seconds: 1_000_000,
                    size: usage(5 << 20),
                }],
                errors: vec![],
            }],
            unplaced: vec![],
        }
    }

    #[test]
    fn the_table_shows_each_section_with_its_rows() {
        let text = volumes_table(&report());
        let expected = "\
Volumes of provisioner example.com/nfs as of 2023-11-14T22:13:20Z

Export nfs:/exports (mounted at /persistentvolumes)
  Volumes (1)
    PV     CLAIM      PHASE  POLICY   CAPACITY  USED  DIRECTORY
    pvc-1  team/data  Bound  archive  1.0 MiB   -     team-data-pvc-1 (missing)
  Orphans, no PV points at them (1)
    DIRECTORY  TYPE       MODIFIED              SIZE
    stray      directory  2020-09-13T12:26:40Z  ?
    could not measure stray: measure stray: Permission denied
  Archives (1)
    DIRECTORY                ARCHIVED              AGE  SIZE
    archived-team-old-pvc-0  2023-11-03T08:26:40Z  11d  5.0 MiB
";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_names_every_field_and_flattens_sizes() {
        let value: serde_json::Value = serde_json::from_str(&json(&report())).unwrap();
        let export = &value["exports"][0];
        assert_eq!(value["taken_at"], "2023-11-14T22:13:20Z");
        assert_eq!(export["volumes"][0]["present"], false);
        assert_eq!(export["volumes"][0]["used_bytes"], serde_json::Value::Null);
        assert_eq!(export["orphans"][0]["type"], "directory");
        assert_eq!(
            export["orphans"][0]["size_error"],
            "measure stray: Permission denied"
        );
        assert_eq!(export["archives"][0]["used_bytes"], 5 << 20);
        assert_eq!(export["archives"][0]["archived_at"], "2023-11-03T08:26:40Z");
        assert_eq!(export["archives"][0]["age_seconds"], 1_000_000);
    }

    #[test]
    fn a_dry_run_says_what_it_would_remove_and_how_to_remove_it() {
        let row = |directory: &str, action, reason: Option<&str>, size| PruneRow {
            directory: directory.into(),
            archived_at: 0,
            age_seconds: 90_000,
            action,
            reason: reason.map(str::to_owned),
            size,
            removed_entries: None,
        };
        let mut report = PruneReport {
            provisioner: "p".into(),
            older_than_seconds: 86_400,
            confirmed: false,
            exports: vec![PruneExport {
                export: "nfs:/e".into(),
                archives: vec![
                    row("archived-a", PruneAction::WouldRemove, None, usage(2048)),
                    row(
                        "archived-b",
                        PruneAction::Kept,
                        Some("PV x points at it"),
                        Size::NotMeasured,
                    ),
                ],
                errors: vec![],
            }],
        };
        let text = prune_table(&report);
        assert!(
            text.starts_with("Archives of provisioner p archived more than 24h ago: dry run"),
            "{text}"
        );
        assert!(
            text.contains("    would remove  archived-a  25h  2.0 KiB\n"),
            "{text}"
        );
        assert!(
            text.contains("    kept          archived-b  25h  -        PV x points at it\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "1 would be removed (2.0 KiB), 1 kept. Run again with --confirm to remove them.\n"
            )
        );
        assert!(!report.failed());
        report.confirmed = true;
        report.exports[0].archives[0].action = PruneAction::Failed;
        assert!(report.failed());
        assert!(prune_table(&report).ends_with("0 removed, 0 already gone, 1 kept, 1 failed.\n"));
    }

    #[test]
    fn sizes_and_ages_read_at_a_glance() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(age(59), "59s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(30 * 86_400), "30d");
    }
}
