//! What happens to a volume when its claim is released? [`decide`] answers from the PV alone
//! (plus the StorageClass, only for volumes made by nfs-subdir-external-provisioner, which recorded
//! nothing). The recorded directory is re-validated against the configured export before anything
//! is touched: a forged or foreign PV is left alone.
//!
//! Deletion protection (KEP-2644, as sig-storage-lib-external-provisioner does it): a PV of ours
//! with reclaim policy Delete carries [`FINALIZER`] while it is bound, so a PV deleted before its
//! claim waits, Terminating, until the claim is gone and its directory is released; a PV whose
//! policy became Retain loses it.

use k8s_openapi::api::core::v1::PersistentVolume;
use k8s_openapi::api::storage::v1::StorageClass;

use serde_json::{Value, json};

use crate::core::annotations::{DIRECTORY, FINALIZER, ON_DELETE, PROVISIONED_BY, RELEASED};
use crate::core::export::{Access, OptionsError, client_options};
use crate::core::naming::{PathError, VolumePath, relative_to_export};
use crate::core::params::OnDelete;
use crate::core::pv::Export;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeDecision {
    Skip(VolumeSkip),
    /// Ours by annotation but not safe to touch: a Warning Event, the PV and directory stay.
    Refuse(VolumeRefusal),
    Release(ReleasePlan),
    /// Bound with reclaim policy Delete and not protected yet: add [`FINALIZER`].
    Protect,
    /// Protected, but the reclaim policy is not Delete (any more): remove [`FINALIZER`], keep the
    /// directory.
    Unprotect,
    /// The directory was released and the protection removed (marked [`RELEASED`]) by an earlier
    /// attempt: only the PV is left to delete.
    DeletePv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSkip {
    NotOurs,
    /// Being deleted without our finalizer: Kubernetes removes it, nothing of ours holds it.
    Deleting,
    /// Being deleted while its claim still holds it: released once the claim is gone.
    DeletingWhileBound,
    NotReleased,
    /// reclaimPolicy Retain (or Recycle): Kubernetes keeps the PV and so do we.
    ReclaimPolicyNotDelete,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeRefusal {
    #[error("volume has no NFS source")]
    NotNfs,
    #[error(
        "volume points at NFS server {found:?}, which serves none of this provisioner's exports ({expected}); left alone"
    )]
    ForeignServer { found: String, expected: String },
    #[error("volume's mountOptions: {0}; left alone")]
    MountOptions(OptionsError),
    #[error("volume path is not a directory inside the export: {0}; left alone")]
    OutsideExport(PathError),
    #[error("annotation {DIRECTORY}={recorded:?} does not match the volume's path {actual:?}; left alone")]
    RecordMismatch { recorded: String, actual: String },
    #[error("annotation {ON_DELETE}={0:?} is not archive, delete or retain; left alone")]
    BadPolicy(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePlan {
    pub export: Export,
    pub access: Access,
    pub path: VolumePath,
    pub action: OnDelete,
    /// Made by nfs-subdir-external-provisioner (no records of ours): policy came from the class.
    pub legacy: bool,
    /// The PV carries [`FINALIZER`], to be removed once the directory is released.
    pub protected: bool,
}

pub fn is_ours(pv: &PersistentVolume, provisioner: &str) -> bool {
    pv.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .is_some_and(|p| p == provisioner)
}

pub fn is_protected(pv: &PersistentVolume) -> bool {
    pv.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// The merge patch that adds (`protect`) or removes [`FINALIZER`]. It carries the PV's
/// resourceVersion, so it fails (409) rather than drop a finalizer someone added meanwhile.
pub fn protection_patch(pv: &PersistentVolume, protect: bool) -> Value {
    json!({ "metadata": {
        "resourceVersion": pv.metadata.resource_version,
        "finalizers": finalizers(pv, protect),
    } })
}

/// The merge patch, once a protected PV's directory is released, that removes [`FINALIZER`] and
/// marks the PV [`RELEASED`] in one write: a look at the PV between this and its deletion then
/// only deletes it, never releases (or counts) it twice.
pub fn released_patch(pv: &PersistentVolume) -> Value {
    let mut patch = protection_patch(pv, false);
    patch["metadata"]["annotations"] = json!({ RELEASED: "true" });
    patch
}

/// The PV's finalizers with ours added (`protect`) or removed, the others as they were.
pub fn finalizers(pv: &PersistentVolume, protect: bool) -> Vec<String> {
    let mut finalizers: Vec<String> = pv
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if protect {
        finalizers.push(FINALIZER.to_owned());
    }
    finalizers
}

/// The part of [`decide_among`] that reads the PV's state only: `Ok(protected)` when the volume
/// is released and its directory is to be released too, else what to do instead.
fn lifecycle(pv: &PersistentVolume, provisioner: &str) -> Result<bool, VolumeDecision> {
    use VolumeDecision::{Protect, Skip, Unprotect};
    if !is_ours(pv, provisioner) {
        return Err(Skip(VolumeSkip::NotOurs));
    }
    let protected = is_protected(pv);
    let deleting = pv.metadata.deletion_timestamp.is_some();
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    let reclaim_delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    let released = pv
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(RELEASED));
    match (deleting, protected, reclaim_delete, phase) {
        (true, false, _, _) => Err(Skip(VolumeSkip::Deleting)),
        (false, false, true, _) if released => Err(VolumeDecision::DeletePv),
        (_, true, false, _) => Err(Unprotect),
        (false, false, true, Some("Bound")) => Err(Protect),
        (_, _, true, Some("Released")) => Ok(protected),
        (true, true, true, _) => Err(Skip(VolumeSkip::DeletingWhileBound)),
        (false, _, false, Some("Released")) => Err(Skip(VolumeSkip::ReclaimPolicyNotDelete)),
        (false, _, _, _) => Err(Skip(VolumeSkip::NotReleased)),
    }
}

/// A PV of ours with work for the volume controller: released (and not deleted by anyone but
/// us), or its protection to change. What the periodic resync re-examines.
pub fn awaits_release(pv: &PersistentVolume, provisioner: &str) -> bool {
    !matches!(lifecycle(pv, provisioner), Err(VolumeDecision::Skip(_)))
}

/// The directory of a PV in our export, whoever made it; `None` for PVs elsewhere.
pub fn directory_in_export(pv: &PersistentVolume, export: &Export) -> Option<VolumePath> {
    let nfs = pv.spec.as_ref()?.nfs.as_ref()?;
    directory_at(&nfs.server, &nfs.path, export)
}

/// [`directory_in_export`] of a PV whose `spec.nfs` is `server` and `path`.
pub fn directory_at(server: &str, path: &str, export: &Export) -> Option<VolumePath> {
    if server != export.server {
        return None;
    }
    relative_to_export(path, &export.path).ok()
}

/// Where a volume's directory is: the export, how it is reached, the path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub export: Export,
    pub access: Access,
    pub path: VolumePath,
}

/// The directory of `pv` in the most specific of `mounted` and `served` (the exports this
/// provisioner serves) holding it, re-validated, and checked against the path we recorded. A
/// volume is only ever touched inside one of them: the classes are the admin's word that an
/// export belongs to this provisioner.
pub fn locate(
    pv: &PersistentVolume,
    mounted: Option<&Export>,
    served: &[Export],
) -> Result<Located, VolumeRefusal> {
    let spec = pv.spec.clone().unwrap_or_default();
    let Some(nfs) = spec.nfs else {
        return Err(VolumeRefusal::NotNfs);
    };
    let candidates: Vec<&Export> = mounted
        .into_iter()
        .chain(served)
        .filter(|e| e.server == nfs.server)
        .collect();
    if candidates.is_empty() {
        let mut known: Vec<String> = mounted
            .into_iter()
            .chain(served)
            .map(ToString::to_string)
            .collect();
        known.sort();
        known.dedup();
        return Err(VolumeRefusal::ForeignServer {
            found: nfs.server,
            expected: known.join(", "),
        });
    }
    // The most specific export holding the path: nested exports are possible on one server.
    let mut best: Option<(&Export, VolumePath)> = None;
    let mut first_error = None;
    for export in candidates {
        match relative_to_export(&nfs.path, &export.path) {
            Ok(p)
                if best
                    .as_ref()
                    .is_none_or(|(b, _)| export.path.len() > b.path.len()) =>
            {
                best = Some((export, p));
            }
            Ok(_) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some((export, path)) = best else {
        return Err(match first_error {
            Some(e) => VolumeRefusal::OutsideExport(e),
            None => VolumeRefusal::NotNfs,
        });
    };
    let export = export.clone();
    let access = if Some(&export) == mounted {
        Access::Mounted
    } else {
        Access::Direct(
            client_options(spec.mount_options.as_deref().unwrap_or_default())
                .map_err(VolumeRefusal::MountOptions)?,
        )
    };
    if let Some(recorded) = pv.metadata.annotations.as_ref().and_then(|a| a.get(DIRECTORY))
        && *recorded != path.to_string()
    {
        return Err(VolumeRefusal::RecordMismatch {
            recorded: recorded.clone(),
            actual: path.to_string(),
        });
    }
    Ok(Located { export, access, path })
}

/// What releasing `pv` does to its directory: the policy recorded on it, or, for a volume made by
/// nfs-subdir-external-provisioner (`true`: it recorded nothing), what its `class` says, read as
/// that provisioner read it.
pub fn on_delete(
    pv: &PersistentVolume,
    class: Option<&StorageClass>,
) -> Result<(OnDelete, bool), VolumeRefusal> {
    match pv.metadata.annotations.as_ref().and_then(|a| a.get(ON_DELETE)) {
        Some(recorded) => OnDelete::parse(recorded)
            .map(|action| (action, false))
            .ok_or_else(|| VolumeRefusal::BadPolicy(recorded.clone())),
        // nfs-subdir-external-provisioner re-read the class; with the class gone it failed forever.
        // Archiving keeps the data, so that is what a missing class means here.
        None => {
            let params = class.and_then(|c| c.parameters.clone()).unwrap_or_default();
            Ok((OnDelete::from_legacy_class(&params), true))
        }
    }
}

/// [`decide_among`] with the mounted export only.
pub fn decide(
    pv: &PersistentVolume,
    provisioner: &str,
    export: &Export,
    class: Option<&StorageClass>,
) -> VolumeDecision {
    decide_among(pv, provisioner, Some(export), &[], class)
}

/// `mounted` is the `NFS_SERVER`/`NFS_PATH` export; `served` are the exports the StorageClasses of
/// this provisioner name now (`server`/`share`). A volume is only touched inside one of them: the
/// classes are the admin's word that an export belongs to this provisioner.
pub fn decide_among(
    pv: &PersistentVolume,
    provisioner: &str,
    mounted: Option<&Export>,
    served: &[Export],
    class: Option<&StorageClass>,
) -> VolumeDecision {
    use VolumeDecision::Refuse;

    let protected = match lifecycle(pv, provisioner) {
        Ok(protected) => protected,
        Err(decision) => return decision,
    };
    let Located { export, access, path } = match locate(pv, mounted, served) {
        Ok(located) => located,
        Err(refusal) => return Refuse(refusal),
    };
    let (action, legacy) = match on_delete(pv, class) {
        Ok(policy) => policy,
        Err(refusal) => return Refuse(refusal),
    };
    VolumeDecision::Release(ReleasePlan {
        export,
        access,
        path,
        action,
        legacy,
        protected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NFSVolumeSource, PersistentVolumeSpec, PersistentVolumeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::collections::BTreeMap;

    const ME: &str = "example.com/nfs";

    fn export() -> Export {
        Export {
            server: "10.0.0.1".into(),
            path: "/export".into(),
        }
    }

    /// A released PV exactly as nfs-subdir-external-provisioner makes it: one annotation.
    fn legacy_pv() -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1".into()),
                annotations: Some(BTreeMap::from([(PROVISIONED_BY.into(), ME.into())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                nfs: Some(NFSVolumeSource {
                    server: "10.0.0.1".into(),
                    path: "/export/team-data-pvc-1".into(),
                    read_only: None,
                }),
                persistent_volume_reclaim_policy: Some("Delete".into()),
                storage_class_name: Some("nfs".into()),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some("Released".into()),
                ..Default::default()
            }),
        }
    }

    fn ours(on_delete: &str) -> PersistentVolume {
        let mut pv = legacy_pv();
        let a = pv.metadata.annotations.as_mut().unwrap();
        a.insert(DIRECTORY.into(), "team-data-pvc-1".into());
        a.insert(ON_DELETE.into(), on_delete.into());
        pv
    }

    fn class(params: &[(&str, &str)]) -> StorageClass {
        StorageClass {
            parameters: Some(params.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
            ..Default::default()
        }
    }

    fn release(pv: &PersistentVolume, class: Option<&StorageClass>) -> ReleasePlan {
        match decide(pv, ME, &export(), class) {
            VolumeDecision::Release(plan) => plan,
            other => panic!("expected release, got {other:?}"),
        }
    }

    #[test]
    fn the_resync_looks_at_released_volumes_of_ours_only() {
        assert!(awaits_release(&ours("delete"), ME));
        assert!(
            awaits_release(&legacy_pv(), ME),
            "the Go provisioner's volumes too"
        );
        assert!(!awaits_release(&ours("delete"), "other.example.com/nfs"));
        let mut bound = protected(ours("delete"));
        bound.status.as_mut().unwrap().phase = Some("Bound".into());
        assert!(!awaits_release(&bound, ME));
        let mut deleting = ours("delete");
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!awaits_release(&deleting, ME));
    }

    #[test]
    fn delete_released_volume_with_recorded_policy_even_without_class() {
        let plan = release(&ours("delete"), None);
        assert_eq!(plan.action, OnDelete::Delete);
        assert_eq!(plan.path.to_string(), "team-data-pvc-1");
        assert!(!plan.legacy);
    }

    #[test]
    fn recorded_policy_wins_over_an_edited_class() {
        let plan = release(&ours("retain"), Some(&class(&[("onDelete", "delete")])));
        assert_eq!(plan.action, OnDelete::Retain);
    }

    #[test]
    fn skip_volume_of_another_provisioner() {
        let mut pv = ours("delete");
        pv.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(PROVISIONED_BY.into(), "other".into());
        assert_eq!(
            decide(&pv, ME, &export(), None),
            VolumeDecision::Skip(VolumeSkip::NotOurs)
        );
    }

    #[test]
    fn skip_volume_that_is_not_released() {
        let mut pv = protected(ours("delete"));
        pv.status.as_mut().unwrap().phase = Some("Bound".into());
        assert_eq!(
            decide(&pv, ME, &export(), None),
            VolumeDecision::Skip(VolumeSkip::NotReleased)
        );
    }

    fn protected(mut pv: PersistentVolume) -> PersistentVolume {
        pv.metadata.finalizers = Some(vec!["kubernetes.io/pv-protection".into(), FINALIZER.into()]);
        pv
    }

    fn with(mut pv: PersistentVolume, phase: &str, policy: &str, deleting: bool) -> PersistentVolume {
        pv.status.as_mut().unwrap().phase = Some(phase.into());
        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some(policy.into());
        if deleting {
            pv.metadata.deletion_timestamp = Some(Time(Default::default()));
        }
        pv
    }

    #[test]
    fn a_bound_volume_with_policy_delete_is_protected_and_one_with_retain_is_not() {
        let decide = |pv: &PersistentVolume| decide(pv, ME, &export(), None);
        assert_eq!(
            decide(&with(ours("delete"), "Bound", "Delete", false)),
            VolumeDecision::Protect
        );
        assert_eq!(
            decide(&with(legacy_pv(), "Bound", "Delete", false)),
            VolumeDecision::Protect,
            "the Go provisioner's volumes too"
        );
        assert_eq!(
            decide(&with(protected(ours("delete")), "Bound", "Retain", false)),
            VolumeDecision::Unprotect
        );
        assert_eq!(
            decide(&with(protected(ours("delete")), "Bound", "Retain", true)),
            VolumeDecision::Unprotect,
            "a Retain volume being deleted goes, its directory stays"
        );
        assert_eq!(
            decide(&with(ours("delete"), "Bound", "Retain", false)),
            VolumeDecision::Skip(VolumeSkip::NotReleased)
        );
        assert_eq!(
            decide(&with(ours("delete"), "Available", "Delete", false)),
            VolumeDecision::Skip(VolumeSkip::NotReleased),
            "protection starts once bound, as sig-storage-lib does"
        );
        let mut other = with(ours("delete"), "Bound", "Delete", false);
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(PROVISIONED_BY.into(), "x".into());
        assert_eq!(decide(&other), VolumeDecision::Skip(VolumeSkip::NotOurs));
        assert!(awaits_release(
            &with(ours("delete"), "Bound", "Delete", false),
            ME
        ));
        assert!(!awaits_release(
            &with(protected(ours("delete")), "Bound", "Delete", false),
            ME
        ));
    }

    #[test]
    fn a_protected_volume_deleted_before_its_claim_waits_then_is_released() {
        let bound = with(protected(ours("archive")), "Bound", "Delete", true);
        assert_eq!(
            decide(&bound, ME, &export(), None),
            VolumeDecision::Skip(VolumeSkip::DeletingWhileBound)
        );
        assert!(!awaits_release(&bound, ME));
        let released = with(protected(ours("archive")), "Released", "Delete", true);
        let plan = release(&released, None);
        assert_eq!(plan.action, OnDelete::Archive);
        assert!(plan.protected);
        assert!(awaits_release(&released, ME));
        assert!(!release(&ours("archive"), None).protected);
    }

    #[test]
    fn a_volume_marked_released_is_only_deleted() {
        let mut pv = with(protected(ours("archive")), "Released", "Delete", false);
        pv.metadata.resource_version = Some("42".into());
        let patch = released_patch(&pv);
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(
            patch["metadata"]["finalizers"],
            json!(["kubernetes.io/pv-protection"])
        );
        assert_eq!(patch["metadata"]["annotations"][RELEASED], "true");
        // As the patch leaves it: a second look deletes the PV and touches no directory.
        pv.metadata.finalizers = Some(vec!["kubernetes.io/pv-protection".into()]);
        pv.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(RELEASED.into(), "true".into());
        assert_eq!(decide(&pv, ME, &export(), None), VolumeDecision::DeletePv);
        assert!(awaits_release(&pv, ME));
        pv.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            decide(&pv, ME, &export(), None),
            VolumeDecision::Skip(VolumeSkip::Deleting)
        );
        assert_eq!(
            protection_patch(&pv, true)["metadata"]["finalizers"],
            json!(["kubernetes.io/pv-protection", FINALIZER])
        );
    }

    #[test]
    fn finalizers_change_only_ours() {
        let pv = protected(ours("delete"));
        assert_eq!(finalizers(&pv, false), ["kubernetes.io/pv-protection"]);
        assert_eq!(finalizers(&pv, true), ["kubernetes.io/pv-protection", FINALIZER]);
        assert_eq!(finalizers(&ours("delete"), true), [FINALIZER]);
    }

    #[test]
    fn never_touch_volume_with_reclaim_policy_retain() {
        let mut pv = ours("delete");
        pv.spec.as_mut().unwrap().persistent_volume_reclaim_policy = Some("Retain".into());
        assert_eq!(
            decide(&pv, ME, &export(), None),
            VolumeDecision::Skip(VolumeSkip::ReclaimPolicyNotDelete)
        );
    }

    #[test]
    fn skip_volume_being_deleted() {
        let mut pv = ours("delete");
        pv.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            decide(&pv, ME, &export(), None),
            VolumeDecision::Skip(VolumeSkip::Deleting)
        );
    }

    #[test]
    fn legacy_volume_follows_its_class_and_archives_without_one() {
        assert_eq!(release(&legacy_pv(), None).action, OnDelete::Archive);
        assert!(release(&legacy_pv(), None).legacy);
        let delete = class(&[("archiveOnDelete", "false")]);
        assert_eq!(release(&legacy_pv(), Some(&delete)).action, OnDelete::Delete);
        let retain = class(&[("onDelete", "retain")]);
        assert_eq!(release(&legacy_pv(), Some(&retain)).action, OnDelete::Retain);
    }

    #[test]
    fn forged_path_outside_the_export_is_refused() {
        for path in [
            "/etc",
            "/export",
            "/export/../etc",
            "/exports/x",
            "/export/a/../../etc",
        ] {
            let mut pv = legacy_pv();
            pv.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = path.into();
            assert!(
                matches!(
                    decide(&pv, ME, &export(), None),
                    VolumeDecision::Refuse(VolumeRefusal::OutsideExport(_))
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn foreign_server_is_refused() {
        let mut pv = legacy_pv();
        pv.spec.as_mut().unwrap().nfs.as_mut().unwrap().server = "evil".into();
        assert!(matches!(
            decide(&pv, ME, &export(), None),
            VolumeDecision::Refuse(VolumeRefusal::ForeignServer { .. })
        ));
    }

    #[test]
    fn directory_record_that_disagrees_with_the_path_is_refused() {
        let mut pv = ours("delete");
        pv.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DIRECTORY.into(), "other".into());
        assert!(matches!(
            decide(&pv, ME, &export(), None),
            VolumeDecision::Refuse(VolumeRefusal::RecordMismatch { .. })
        ));
    }

    #[test]
    fn unknown_recorded_policy_is_refused() {
        assert!(matches!(
            decide(&ours("shred"), ME, &export(), None),
            VolumeDecision::Refuse(VolumeRefusal::BadPolicy(_))
        ));
    }

    #[test]
    fn nested_path_pattern_volume_releases_its_own_directory() {
        let mut pv = ours("archive");
        pv.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = "/export/team/data".into();
        pv.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DIRECTORY.into(), "team/data".into());
        assert_eq!(release(&pv, None).path.components(), ["team", "data"]);
    }

    fn direct(pv: &mut PersistentVolume, server: &str, path: &str, options: &[&str]) {
        let spec = pv.spec.as_mut().unwrap();
        spec.nfs = Some(NFSVolumeSource {
            server: server.into(),
            path: path.into(),
            read_only: None,
        });
        spec.mount_options = Some(options.iter().map(|o| (*o).to_owned()).collect());
    }

    #[test]
    fn a_volume_on_a_served_export_is_released_directly_with_its_mount_options() {
        let mut pv = ours("delete");
        direct(&mut pv, "10.0.0.9", "/srv/team-data-pvc-1", &["port=12049"]);
        let served = [Export {
            server: "10.0.0.9".into(),
            path: "/srv".into(),
        }];
        let VolumeDecision::Release(plan) = decide_among(&pv, ME, Some(&export()), &served, None) else {
            panic!("expected a release");
        };
        assert_eq!(plan.export, served[0]);
        let Access::Direct(options) = plan.access else {
            panic!("expected direct access");
        };
        assert_eq!(options.port, Some(12049));
        assert_eq!(plan.path.to_string(), "team-data-pvc-1");
    }

    #[test]
    fn a_volume_on_an_export_no_class_names_is_left_alone() {
        let mut pv = ours("delete");
        direct(&mut pv, "10.0.0.9", "/srv/team-data-pvc-1", &[]);
        assert!(matches!(
            decide_among(&pv, ME, Some(&export()), &[], None),
            VolumeDecision::Refuse(VolumeRefusal::ForeignServer { .. })
        ));
    }

    #[test]
    fn the_most_specific_of_nested_exports_is_chosen() {
        let mut pv = ours("delete");
        direct(&mut pv, "10.0.0.9", "/srv/k8s/team-data-pvc-1", &[]);
        let served = [
            Export {
                server: "10.0.0.9".into(),
                path: "/srv".into(),
            },
            Export {
                server: "10.0.0.9".into(),
                path: "/srv/k8s".into(),
            },
        ];
        let VolumeDecision::Release(plan) = decide_among(&pv, ME, Some(&export()), &served, None) else {
            panic!("expected a release");
        };
        assert_eq!(plan.export, served[1]);
    }

    mod properties {
        use super::*;
        use crate::core::naming::server_path;
        use proptest::prelude::*;

        fn hostile_path() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop_oneof![
                    Just("export".to_owned()),
                    Just("srv".to_owned()),
                    Just("k8s".to_owned()),
                    Just("..".to_owned()),
                    Just(".".to_owned()),
                    Just(String::new()),
                    "[a-z0-9-]{1,8}",
                ],
                0..6,
            )
            .prop_map(|c| format!("/{}", c.join("/")))
        }

        proptest! {
            /// A PV read back at release, however it was forged: a release plan only ever names a
            /// directory strictly inside a configured export, exactly where the PV points.
            #[test]
            fn release_plans_stay_inside_a_configured_export(
                server in prop::sample::select(vec!["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
                path in hostile_path(),
                directory in proptest::option::of("[a-z./-]{0,16}"),
            ) {
                let mut pv = ours("delete");
                pv.spec.as_mut().unwrap().nfs = Some(NFSVolumeSource {
                    server: server.into(),
                    path: path.clone(),
                    read_only: None,
                });
                let annotations = pv.metadata.annotations.as_mut().unwrap();
                match directory {
                    Some(d) => annotations.insert(DIRECTORY.into(), d),
                    None => annotations.remove(DIRECTORY),
                };
                let served = [
                    Export { server: "10.0.0.2".into(), path: "/srv".into() },
                    Export { server: "10.0.0.2".into(), path: "/srv/k8s".into() },
                ];
                if let VolumeDecision::Release(plan) =
                    decide_among(&pv, ME, Some(&export()), &served, None)
                {
                    prop_assert!(plan.export == export() || served.contains(&plan.export));
                    prop_assert_eq!(&plan.export.server, server);
                    let on_server = server_path(&plan.export.path, &plan.path);
                    let prefix = format!("{}/", plan.export.path.trim_end_matches('/'));
                    prop_assert!(on_server.starts_with(&prefix));
                    prop_assert!(!plan.path.components().iter().any(|c| c == ".." || c == "." || c.is_empty()));
                    prop_assert_eq!(on_server, path.trim_end_matches('/').to_owned());
                }
            }
        }
    }
}
