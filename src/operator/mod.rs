//! The operator's view: `nfs-subdir-provisioner volumes` lists, for every export this
//! provisioner serves, the volumes it owns, the directories no PersistentVolume accounts for
//! (orphans) and the archives with their age and size; `prune-archives` removes archives older
//! than an age, and only says what it would remove unless confirmed.
//!
//! The shell around [`crate::core::inventory`], which decides what each directory is and whether
//! an archive may go: this module loads the PVs and classes from the API server, lists the
//! exports (read only, as the core asks), measures with the storage layer's paced walk, removes
//! with the same tree removal a release uses, and hands what it found to [`render`].

pub mod render;

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::config::{Config, PruneArgs, VolumesArgs};
use crate::core::annotations::PROVISIONED_BY;
use crate::core::export::{Access, Export};
use crate::core::inventory::{
    self, Contents, EntryType, Found, Known, List, PEEK_LIMIT, PvSource, Reach, Seen, Verdict, View,
};
use crate::core::naming::VolumePath;
use crate::core::params::{ClassParams, served_exports};
use crate::core::{usage, volume};
use crate::health::Health;
use crate::k8s::{self, ClientError};
use crate::metrics::Metrics;
use crate::storage::{Exports, FileType, Listing, Removed, Storage, Usage};

pub use render::{
    ArchiveRow, ExportReport, OrphanRow, OtherRow, PruneAction, PruneExport, PruneReport, PruneRow, Report,
    Size, VolumeRow,
};

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("list {what}: {source}")]
    List { what: &'static str, source: kube::Error },
}

/// What the API server holds that the view needs.
struct Cluster {
    pvs: Vec<PersistentVolume>,
    classes: Vec<StorageClass>,
}

async fn list_pvs(client: &Client) -> Result<Vec<PersistentVolume>, OperatorError> {
    let api: Api<PersistentVolume> = Api::all(client.clone());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(source) => Err(OperatorError::List {
            what: "PersistentVolumes",
            source,
        }),
    }
}

async fn load(client: &Client) -> Result<Cluster, OperatorError> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let classes = classes
        .list(&ListParams::default())
        .await
        .map_err(|source| OperatorError::List {
            what: "StorageClasses",
            source,
        })?
        .items;
    Ok(Cluster {
        pvs: list_pvs(client).await?,
        classes,
    })
}

/// Every PV with an NFS source, whoever made it: what protects directories.
fn sources(pvs: &[PersistentVolume]) -> Vec<PvSource> {
    pvs.iter()
        .filter_map(|pv| {
            let nfs = pv.spec.as_ref()?.nfs.as_ref()?;
            Some(PvSource {
                pv: pv.name_any(),
                server: nfs.server.clone(),
                path: nfs.path.clone(),
            })
        })
        .collect()
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One export, listed.
struct Surveyed {
    export: Export,
    access: Access,
    storage: Option<Storage>,
    /// Targets of its staging records.
    staged: Vec<Vec<String>>,
    /// The staging records could all be read: what is being provisioned is known.
    staged_known: bool,
    /// Directories listed, the root's as the empty path.
    listings: BTreeMap<Vec<String>, Contents>,
    view: View,
    /// What could not be read, each naming the operation and directory.
    errors: Vec<String>,
}

fn seen_of(listed: crate::storage::Listed) -> Seen {
    let (name, exact) = match String::from_utf8(listed.name) {
        Ok(name) => (name, true),
        Err(bytes) => (String::from_utf8_lossy(bytes.as_bytes()).into_owned(), false),
    };
    let st = listed.stat;
    Seen {
        name,
        exact,
        kind: match st.file_type {
            FileType::Dir => EntryType::Directory,
            FileType::Regular => EntryType::File,
            FileType::Symlink => EntryType::Symlink,
            _ => EntryType::Other,
        },
        changed: st.ctime.seconds,
        modified: st.mtime.seconds,
        used: st.used,
    }
}

fn contents_of(listing: Listing) -> Contents {
    Contents {
        entries: listing.entries.into_iter().map(seen_of).collect(),
        complete: listing.complete,
    }
}

/// The targets of `storage`'s staging records; errors of single records are collected.
async fn staged_targets(storage: &Storage, errors: &mut Vec<String>) -> Vec<Vec<String>> {
    let pvs = match storage.staged_volumes().await {
        Ok(pvs) => pvs,
        Err(error) => {
            errors.push(error.to_string());
            return Vec::new();
        }
    };
    let mut targets = Vec::new();
    for pv in pvs {
        match storage.staged_target(&pv).await {
            Ok(Some(target)) => targets.push(target),
            Ok(None) => {}
            Err(error) => errors.push(error.to_string()),
        }
    }
    targets
}

/// How deep the paths of the classes of `provisioner` on `export` are.
fn class_depths(
    classes: &[StorageClass],
    provisioner: &str,
    export: &Export,
    mounted: Option<&Export>,
) -> Vec<usize> {
    classes
        .iter()
        .filter(|c| c.provisioner == provisioner)
        .filter_map(|c| ClassParams::parse(&c.parameters.clone().unwrap_or_default()).ok())
        .filter(|params| params.export.as_ref().or(mounted) == Some(export))
        .filter_map(|params| params.depth())
        .collect()
}

/// Lists `export` as [`Known::lists`] asks, from the root down, and classifies what it holds.
async fn survey(
    exports: &Exports,
    export: Export,
    access: Access,
    sources: &[PvSource],
    depths: Vec<usize>,
) -> Surveyed {
    let mut errors = Vec::new();
    let storage = match exports.get(&export, &access) {
        Ok(storage) => Some(storage),
        Err(error) => {
            errors.push(format!("reach export {export}: {error}"));
            None
        }
    };
    let mut staged = Vec::new();
    let mut listings = BTreeMap::new();
    if let Some(storage) = &storage {
        staged = staged_targets(storage, &mut errors).await;
    }
    let staged_known = storage.is_some() && errors.is_empty();
    let known = Known::new(&export, sources, &staged, depths);
    if let Some(storage) = &storage {
        let mut queue = VecDeque::from([Vec::new()]);
        while let Some(dir) = queue.pop_front() {
            let Some(how) = known.lists(&dir) else {
                continue;
            };
            let limit = match how {
                List::Whole => usize::MAX,
                List::Peek => PEEK_LIMIT,
            };
            match storage.list_directory(&dir, limit).await {
                Ok(Some(listing)) => {
                    let contents = contents_of(listing);
                    for seen in &contents.entries {
                        if seen.exact && seen.kind == EntryType::Directory {
                            let mut child = dir.clone();
                            child.push(seen.name.clone());
                            queue.push_back(child);
                        }
                    }
                    listings.insert(dir, contents);
                }
                // Removed since its parent was listed.
                Ok(None) => {}
                Err(error) => errors.push(error.to_string()),
            }
        }
    }
    let view = inventory::classify(&known, &listings);
    debug!(
        %export,
        directories = listings.len(),
        archives = view.archives.len(),
        orphans = view.orphans.len(),
        errors = errors.len(),
        "listed export"
    );
    Surveyed {
        export,
        access,
        storage,
        staged,
        staged_known,
        listings,
        view,
        errors,
    }
}

/// Every export served now, each once, listed in parallel.
async fn survey_all(
    config: &Config,
    exports: &Exports,
    cluster: &Cluster,
    sources: &[PvSource],
) -> Vec<Surveyed> {
    let mounted = config.mounted.as_ref();
    let mut served = served_exports(&cluster.classes, &config.provisioner_name, mounted);
    let mut seen = Vec::new();
    served.retain(|(export, _)| {
        let first = !seen.contains(export);
        seen.push(export.clone());
        first
    });
    let surveys = served.into_iter().map(|(export, access)| {
        let depths = class_depths(&cluster.classes, &config.provisioner_name, &export, mounted);
        survey(exports, export, access, sources, depths)
    });
    futures::future::join_all(surveys).await
}

/// What the directory at `path` takes, measured by the storage layer's paced walk.
async fn measure(storage: &Storage, path: &[String]) -> Size {
    let path = match VolumePath::from_components(path.to_vec()) {
        Ok(path) => path,
        Err(error) => return Size::Failed(error.to_string()),
    };
    match storage.measure_volume(&path).await {
        Ok(Some(usage)) => Size::Measured(usage),
        Ok(None) => Size::Gone,
        Err(error) => Size::Failed(error.to_string()),
    }
}

/// The size of an entry the view shows: a directory measured, anything else as listed.
async fn size_of(storage: Option<&Storage>, found: &Found) -> Size {
    match (storage, found.seen.kind) {
        (_, kind) if kind != EntryType::Directory => Size::Measured(Usage {
            used_bytes: found.seen.used,
            file_bytes: 0,
            inodes: 1,
        }),
        (Some(_), _) if !found.seen.exact => Size::Failed("its name is not UTF-8".into()),
        (Some(storage), _) => measure(storage, &found.path).await,
        (None, _) => Size::NotMeasured,
    }
}

fn access_name(access: &Access) -> &'static str {
    match access {
        Access::Mounted => "mounted",
        Access::Direct(_) => "direct",
    }
}

fn claim_of(pv: &PersistentVolume) -> Option<String> {
    let claim = pv.spec.as_ref()?.claim_ref.as_ref()?;
    Some(format!(
        "{}/{}",
        claim.namespace.as_deref().unwrap_or_default(),
        claim.name.as_deref()?
    ))
}

/// A PV of ours as the table shows it, before its directory is looked at.
fn volume_row(pv: &PersistentVolume, classes: &[StorageClass]) -> VolumeRow {
    let spec = pv.spec.as_ref();
    let class_name = spec.and_then(|s| s.storage_class_name.clone());
    let class = classes.iter().find(|c| Some(c.name_any()) == class_name);
    let (on_delete, problem) = match volume::on_delete(pv, class) {
        Ok((action, _)) => (Some(action.as_str().to_owned()), None),
        Err(refusal) => (None, Some(refusal.to_string())),
    };
    VolumeRow {
        pv: pv.name_any(),
        claim: claim_of(pv),
        phase: pv.status.as_ref().and_then(|s| s.phase.clone()),
        class: class_name,
        reclaim_policy: spec.and_then(|s| s.persistent_volume_reclaim_policy.clone()),
        on_delete,
        directory: None,
        present: None,
        capacity_bytes: usage::capacity(pv),
        size: Size::NotMeasured,
        problem,
    }
}

/// `nfs-subdir-provisioner volumes`: the view of every export this provisioner serves.
pub async fn volumes(config: &Config, args: &VolumesArgs) -> Result<Report, OperatorError> {
    let client = k8s::client(config).await?;
    let cluster = load(&client).await?;
    let metrics = Metrics::new();
    let exports = Exports::from_config(config, Health::new(metrics.clone()), metrics);
    let sources = sources(&cluster.pvs);
    let surveys = survey_all(config, &exports, &cluster, &sources).await;
    let now = now_seconds();
    let provisioner = config.provisioner_name.as_str();
    let served: Vec<Export> = surveys.iter().map(|s| s.export.clone()).collect();

    let mut by_export: BTreeMap<Export, Vec<(VolumeRow, VolumePath)>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for pv in cluster.pvs.iter().filter(|pv| volume::is_ours(pv, provisioner)) {
        let mut row = volume_row(pv, &cluster.classes);
        match volume::locate(pv, config.mounted.as_ref(), &served) {
            Ok(located) => {
                row.directory = Some(located.path.to_string());
                by_export
                    .entry(located.export)
                    .or_default()
                    .push((row, located.path));
            }
            Err(refusal) => {
                row.problem = Some(refusal.to_string());
                unplaced.push(row);
            }
        }
    }

    let mut reports = Vec::new();
    for survey in surveys {
        let storage = survey.storage.as_ref();
        let mut volumes = Vec::new();
        for (mut row, path) in by_export.remove(&survey.export).unwrap_or_default() {
            let parent_listed = survey.listings.contains_key(path.parent());
            row.present = parent_listed.then(|| survey.view.present.contains(path.components()));
            if let (true, Some(true), Some(storage)) = (args.measure, row.present, storage) {
                row.size = measure(storage, path.components()).await;
            }
            volumes.push(row);
        }
        volumes.sort_by(|a, b| a.directory.cmp(&b.directory));
        let mut archives = Vec::new();
        for found in &survey.view.archives {
            archives.push(ArchiveRow {
                directory: found.path.join("/"),
                archived_at: found.seen.changed,
                age_seconds: inventory::age(found.seen.changed, now).as_secs(),
                size: size_of(storage, found).await,
            });
        }
        let mut orphans = Vec::new();
        for found in &survey.view.orphans {
            orphans.push(OrphanRow {
                directory: found.path.join("/"),
                kind: found.seen.kind,
                modified_at: found.seen.modified,
                size: size_of(storage, found).await,
            });
        }
        reports.push(ExportReport {
            export: survey.export.to_string(),
            access: access_name(&survey.access),
            mounted_at: (survey.access == Access::Mounted).then(|| config.mount_path.display().to_string()),
            volumes,
            other_volumes: others(&cluster.pvs, provisioner, &survey.export),
            provisioning: survey
                .view
                .provisioning
                .iter()
                .map(|f| f.path.join("/"))
                .collect(),
            orphans,
            archives,
            errors: survey.errors,
        });
    }
    Ok(Report {
        provisioner: provisioner.to_owned(),
        taken_at: now,
        exports: reports,
        unplaced,
    })
}

/// PVs not of this provisioner whose path lies in `export` or around it.
fn others(pvs: &[PersistentVolume], provisioner: &str, export: &Export) -> Vec<OtherRow> {
    let mut rows: Vec<OtherRow> = pvs
        .iter()
        .filter(|pv| !volume::is_ours(pv, provisioner))
        .filter_map(|pv| {
            let nfs = pv.spec.as_ref()?.nfs.as_ref()?;
            if nfs.server != export.server {
                return None;
            }
            let directory = match inventory::reach(&nfs.path, &export.path) {
                Reach::Inside(path) => path.join("/"),
                Reach::Covers => String::new(),
                Reach::Outside | Reach::Unreadable => return None,
            };
            Some(OtherRow {
                pv: pv.name_any(),
                provisioner: pv
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(PROVISIONED_BY).cloned()),
                claim: claim_of(pv),
                phase: pv.status.as_ref().and_then(|s| s.phase.clone()),
                directory,
            })
        })
        .collect();
    rows.sort_by(|a, b| a.directory.cmp(&b.directory));
    rows
}

/// `nfs-subdir-provisioner prune-archives`: every archive of every export judged; with
/// `--confirm`, those that may go removed, after the PVs are read again.
pub async fn prune(config: &Config, args: &PruneArgs) -> Result<PruneReport, OperatorError> {
    let client = k8s::client(config).await?;
    let cluster = load(&client).await?;
    let metrics = Metrics::new();
    let exports = Exports::from_config(config, Health::new(metrics.clone()), metrics);
    let surveys = survey_all(config, &exports, &cluster, &sources(&cluster.pvs)).await;
    // A PV made while the exports were listed protects its directory too.
    let sources = match args.confirm {
        true => sources(&list_pvs(&client).await?),
        false => sources(&cluster.pvs),
    };
    let now = now_seconds();
    let mut reports = Vec::new();
    for survey in surveys {
        let mut errors = survey.errors.clone();
        if !survey.staged_known {
            errors.push(format!(
                "export {}: nothing is removed while its staging records cannot be read (a volume being provisioned could be among the archives)",
                survey.export
            ));
        }
        let mut rows = Vec::new();
        for found in &survey.view.archives {
            rows.push(prune_one(&survey, found, now, args, &sources).await);
        }
        reports.push(PruneExport {
            export: survey.export.to_string(),
            archives: rows,
            errors,
        });
    }
    Ok(PruneReport {
        provisioner: config.provisioner_name.clone(),
        older_than_seconds: args.older_than.as_secs(),
        confirmed: args.confirm,
        exports: reports,
    })
}

async fn prune_one(
    survey: &Surveyed,
    found: &Found,
    now: i64,
    args: &PruneArgs,
    sources: &[PvSource],
) -> PruneRow {
    let directory = found.path.join("/");
    let mut row = PruneRow {
        directory: directory.clone(),
        archived_at: found.seen.changed,
        age_seconds: inventory::age(found.seen.changed, now).as_secs(),
        action: PruneAction::Kept,
        reason: None,
        size: Size::NotMeasured,
        removed_entries: None,
    };
    let verdict = inventory::judge(
        &survey.export,
        &found.path,
        found.seen.changed,
        now,
        args.older_than,
        sources,
        &survey.staged,
    );
    if let Verdict::Keep(kept) = verdict {
        row.reason = Some(kept.to_string());
        return row;
    }
    // Only a listed archive is judged, so the survey reached the export.
    let (Some(storage), true) = (survey.storage.as_ref(), survey.staged_known) else {
        row.reason = Some("its export could not be read whole".into());
        return row;
    };
    if !args.confirm {
        row.action = PruneAction::WouldRemove;
        row.size = measure(storage, &found.path).await;
        return row;
    }
    let path = match VolumePath::from_components(found.path.clone()) {
        Ok(path) => path,
        Err(error) => {
            row.action = PruneAction::Failed;
            row.reason = Some(error.to_string());
            return row;
        }
    };
    let export = survey.export.to_string();
    match storage.delete_volume(&path).await {
        Ok(Removed::Removed { entries }) => {
            info!(%export, directory, entries, "removed archive");
            row.action = PruneAction::Removed;
            row.removed_entries = Some(entries);
        }
        Ok(Removed::Missing) => {
            info!(%export, directory, "archive was already gone");
            row.action = PruneAction::Gone;
        }
        Err(error) => {
            warn!(%export, directory, %error, "could not remove archive");
            row.action = PruneAction::Failed;
            row.reason = Some(error.to_string());
        }
    }
    row
}
