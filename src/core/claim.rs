//! Should this claim be provisioned, and how? [`decide`] answers from the claim, its StorageClass
//! and whether its PV already exists; [`find_overlap`] checks the chosen directory against the
//! directories of live volumes. The order of checks follows sig-storage-lib-external-provisioner's
//! `shouldProvision`, with refusals where it would silently make an empty volume.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;

use crate::core::annotations::{
    CHECK_FREE_SPACE, REUSE_EXISTING, SELECTED_NODE, STORAGE_CLASS_BETA, STORAGE_PROVISIONER,
    STORAGE_PROVISIONER_BETA,
};
use crate::core::clone::{self, DataSourceRefusal};
use crate::core::export::{Access, OptionsError, client_options};
use crate::core::naming::{self, ClaimNames, PathError, VolumePath};
use crate::core::params::{ClassParams, DirMode, OnDelete, ParamError, parse_go_bool};
use crate::core::pv::{self, Export};
use crate::core::quantity;
use crate::core::staging::Existing;

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimDecision {
    /// Not ours to act on now; nothing to tell the user.
    Skip(Skip),
    /// Ours, but it cannot be provisioned as asked: a Warning Event, and the claim stays Pending.
    Refuse(Refusal),
    Provision(Box<ProvisionPlan>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Deleting,
    AlreadyBound,
    /// The storage-provisioner annotation names someone else (or is missing).
    NotForUs,
    NoClass,
    ClassOfAnotherProvisioner,
    /// WaitForFirstConsumer: no pod has been scheduled with this claim yet.
    WaitingForFirstConsumer,
    /// `pvc-<uid>` exists: a previous reconcile (or replica) made it.
    AlreadyProvisioned,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("StorageClass {0:?} not found")]
    ClassNotFound(String),
    #[error("volumeMode Block is not supported: NFS directories are filesystem volumes")]
    BlockVolume,
    #[error("spec.selector is not supported: a new directory cannot match a selector")]
    Selector,
    #[error(transparent)]
    DataSource(#[from] DataSourceRefusal),
    #[error("spec.resources.requests.storage is missing")]
    NoCapacity,
    #[error(
        "spec.volumeAttributesClassName {0:?} is not supported: an NFS directory has no attributes to set (IOPS, throughput) and this provisioner is not a CSI driver"
    )]
    VolumeAttributesClass(String),
    #[error(transparent)]
    Parameters(#[from] ParamError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("directory {path} overlaps the directory of volume {volume}")]
    Overlap { path: String, volume: String },
    #[error(transparent)]
    MountOptions(#[from] OptionsError),
    #[error(
        "this provisioner has no mounted export (NFS_SERVER and NFS_PATH are unset); name server and share in the StorageClass"
    )]
    NoMountedExport,
    #[error("StorageClass annotation {REUSE_EXISTING}={0:?} is not a boolean (\"true\" or \"false\")")]
    ReuseAnnotation(String),
    #[error("StorageClass annotation {CHECK_FREE_SPACE}={0:?} is not a boolean (\"true\" or \"false\")")]
    FreeSpaceAnnotation(String),
    #[error(
        "the claim asks for {request}, more than the {available} bytes free on export {export} (the StorageClass checks free space); free space on the server, or ask for less"
    )]
    NoSpace {
        request: String,
        available: u64,
        export: String,
    },
}

impl Refusal {
    /// Why, in one word of a small fixed set: the `reason` label of
    /// `nfs_subdir_provisioner_operation_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ClassNotFound(_) => "ClassNotFound",
            Refusal::Parameters(_)
            | Refusal::MountOptions(_)
            | Refusal::ReuseAnnotation(_)
            | Refusal::FreeSpaceAnnotation(_)
            | Refusal::NoMountedExport => "InvalidClass",
            Refusal::Path(_) => "InvalidPath",
            Refusal::BlockVolume
            | Refusal::Selector
            | Refusal::DataSource(_)
            | Refusal::NoCapacity
            | Refusal::VolumeAttributesClass(_) => "UnsupportedClaim",
            Refusal::Overlap { .. } => "DirectoryOverlap",
            Refusal::NoSpace { .. } => "NoSpace",
        }
    }
}

/// What a claim's class says of a directory already at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reuse {
    /// The class does not allow reuse: an existing directory is refused as taken.
    Off,
    Allowed,
    /// The class allows reuse, but not of this path; only matters when the directory exists,
    /// and the Warning then names the rule.
    Forbidden(ReuseRule),
}

impl Reuse {
    /// What the storage layer does with an existing directory.
    pub fn existing(&self) -> Existing {
        match self {
            Reuse::Allowed => Existing::Reuse,
            Reuse::Off | Reuse::Forbidden(_) => Existing::Refuse,
        }
    }
}

/// Why a class that allows reuse may still not reuse this claim's directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReuseRule {
    #[error(
        "the StorageClass allows reusing existing directories, but its pathPattern {0:?} has no path component that is the namespace alone (or the PV name), so a claim in another namespace could render the same directory"
    )]
    NamespaceNotFixed(String),
    #[error(
        "the StorageClass allows reusing existing directories, but {0:?} is an archive (archived-*): the data of a released volume"
    )]
    Archive(String),
}

/// Everything needed to make the volume: the directory, how to make it, and the PV to write.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionPlan {
    pub pv_name: String,
    /// The class's `server`/`share`, or the mounted `NFS_SERVER`/`NFS_PATH` export.
    pub export: Export,
    pub access: Access,
    pub path: VolumePath,
    pub dir: DirMode,
    pub on_delete: OnDelete,
    /// Whether a directory already at `path` is taken as it is (never for a clone).
    pub reuse: Reuse,
    /// A clone: the claim (of the same namespace) whose volume is copied into this one.
    pub source: Option<String>,
    /// What the claim asks for.
    pub request: Quantity,
    /// The class refuses a request larger than the export's free space.
    pub check_free_space: bool,
    pub pv: PersistentVolume,
}

/// Deterministic, so a retry or a second replica can only ever make the same PV.
pub fn pv_name(claim: &PersistentVolumeClaim) -> Option<String> {
    pv_name_of_uid(claim.metadata.uid.as_deref()?)
}

/// [`pv_name`] of the claim whose uid is `uid`.
pub fn pv_name_of_uid(uid: &str) -> Option<String> {
    (!uid.is_empty()).then(|| format!("pvc-{uid}"))
}

/// The class a claim asks for: `spec.storageClassName`, or the legacy beta annotation.
pub fn class_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    let from_spec = claim.spec.as_ref().and_then(|s| s.storage_class_name.as_deref());
    let from_annotation = || {
        claim
            .metadata
            .annotations
            .as_ref()?
            .get(STORAGE_CLASS_BETA)
            .map(String::as_str)
    };
    from_spec.or_else(from_annotation).filter(|c| !c.is_empty())
}

/// The provisioner a claim is handed to: the GA annotation if present, else the beta one
/// (kube-controller-manager 1.20 sets only the beta one).
fn requested_provisioner(claim: &PersistentVolumeClaim) -> Option<&str> {
    let annotations = claim.metadata.annotations.as_ref()?;
    annotations
        .get(STORAGE_PROVISIONER)
        .or_else(|| annotations.get(STORAGE_PROVISIONER_BETA))
        .map(String::as_str)
}

/// A claim the periodic resync re-examines: handed to `provisioner`, unbound, and its volume
/// (`pvc-<uid>`) not made yet (`volume_made`). Once the PV exists, the claim waits for
/// kube-controller-manager's binder, not for us: at its default 20 requests/s the binder binds
/// 10 000 claims over 35 minutes after the last PV exists, and re-examining every provisioned one
/// each minute cost more CPU and memory than provisioning them (BENCHMARKS.md, Scale).
pub fn awaits_provisioning(claim: &PersistentVolumeClaim, provisioner: &str, volume_made: bool) -> bool {
    !volume_made && awaits_provisioner(claim, provisioner)
}

/// A claim handed to `provisioner` and not yet bound or being deleted: it waits for us.
pub fn awaits_provisioner(claim: &PersistentVolumeClaim, provisioner: &str) -> bool {
    claim.metadata.deletion_timestamp.is_none()
        && claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_none_or(str::is_empty)
        && requested_provisioner(claim) == Some(provisioner)
}

/// Whether a change of `claim` can ask anything of `provisioner`: the claim is handed to it, bound
/// (a resize to carry out, a clone's source to let go), being deleted, or holds a cloning
/// protection. A claim kube-controller-manager has not handed over yet (every claim just created)
/// asks nothing: its hand-over is a change of its own. Claims that ask nothing are not reconciled,
/// so a burst of creations does not queue a reconcile per claim twice over.
pub fn may_concern(claim: &PersistentVolumeClaim, provisioner: &str) -> bool {
    claim.metadata.deletion_timestamp.is_some()
        || claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty())
        || requested_provisioner(claim) == Some(provisioner)
        || clone::is_protected(claim)
}

/// How long after its creation a claim waits before a directory is made for it, so that a PV an
/// admin pre-bound to it in the same `kubectl apply` (or Helm release, or GitOps sync) has
/// reached the PV cache first. Measured from the claim's `creationTimestamp`; a claim older than
/// this (the usual case by the time kube-controller-manager hands it over in a burst, and always
/// after a restart) does not wait at all.
pub const PRE_BOUND_GRACE: Duration = Duration::from_secs(1);

/// The PV an admin pre-bound to this claim (`spec.claimRef` naming it, with its uid or none), if
/// any: kube-controller-manager binds the two, and a volume of ours would be a second one, left
/// Available or released as junk.
pub fn pre_bound_volume<'a>(
    claim: &PersistentVolumeClaim,
    pvs: impl IntoIterator<Item = &'a PersistentVolume>,
) -> Option<&'a str> {
    let (namespace, name) = (
        claim.metadata.namespace.as_deref(),
        claim.metadata.name.as_deref(),
    );
    let uid = claim.metadata.uid.as_deref();
    pvs.into_iter()
        .filter(|pv| pv.metadata.deletion_timestamp.is_none())
        .find(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|r| {
                    r.namespace.as_deref() == namespace
                        && r.name.as_deref() == name
                        && r.uid.as_deref().is_none_or(|u| u.is_empty() || Some(u) == uid)
                })
        })
        .and_then(|pv| pv.metadata.name.as_deref())
        .filter(|pv| pv_name(claim).as_deref() != Some(*pv))
}

/// How much longer the claim waits out [`PRE_BOUND_GRACE`] at `now`, if at all; never more than
/// the grace itself, whatever the clocks say.
pub fn grace_left(claim: &PersistentVolumeClaim, now: Timestamp) -> Option<Duration> {
    let created = claim.metadata.creation_timestamp.as_ref()?.0;
    let age_ms = now.as_millisecond().saturating_sub(created.as_millisecond());
    let grace_ms = i64::try_from(PRE_BOUND_GRACE.as_millis()).unwrap_or(i64::MAX);
    let left_ms = grace_ms.saturating_sub(age_ms.max(0));
    (left_ms > 0).then(|| Duration::from_millis(left_ms.unsigned_abs()))
}

/// `mounted` is the export of `NFS_SERVER`/`NFS_PATH`, if configured; a class naming the same
/// server and share is served through that mount too.
pub fn decide(
    claim: &PersistentVolumeClaim,
    class: Option<&StorageClass>,
    provisioner: &str,
    mounted: Option<&Export>,
    pv_exists: bool,
) -> ClaimDecision {
    use ClaimDecision::{Refuse, Skip as S};

    if claim.metadata.deletion_timestamp.is_some() {
        return S(Skip::Deleting);
    }
    let spec = claim.spec.clone().unwrap_or_default();
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return S(Skip::AlreadyBound);
    }
    if requested_provisioner(claim) != Some(provisioner) {
        return S(Skip::NotForUs);
    }
    let Some(class_name) = class_name(claim) else {
        return S(Skip::NoClass);
    };
    let Some(pv_name) = pv_name(claim) else {
        // The API server always sets a uid; a claim without one was never stored.
        return S(Skip::NotForUs);
    };
    if pv_exists {
        return S(Skip::AlreadyProvisioned);
    }
    let Some(class) = class else {
        return Refuse(Refusal::ClassNotFound(class_name.to_owned()));
    };
    if class.provisioner != provisioner {
        return S(Skip::ClassOfAnotherProvisioner);
    }
    let annotations = claim.metadata.annotations.clone().unwrap_or_default();
    if class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
        && annotations.get(SELECTED_NODE).is_none_or(|n| n.is_empty())
    {
        return S(Skip::WaitingForFirstConsumer);
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return Refuse(Refusal::BlockVolume);
    }
    if spec.selector.is_some() {
        return Refuse(Refusal::Selector);
    }
    let source = match clone::requested(claim) {
        Ok(source) => source,
        Err(refusal) => return Refuse(refusal.into()),
    };
    // Kubernetes 1.29 and later: a class of mutable attributes only a CSI driver can honour.
    if let Some(vac) = spec.volume_attributes_class_name.filter(|v| !v.is_empty()) {
        return Refuse(Refusal::VolumeAttributesClass(vac));
    }
    let params = match ClassParams::parse(&class.parameters.clone().unwrap_or_default()) {
        Ok(p) => p,
        Err(e) => return Refuse(e.into()),
    };
    let (export, access) = match (params.export, mounted) {
        (Some(export), Some(m)) if export == *m => (export, Access::Mounted),
        (Some(export), _) => match client_options(class.mount_options.as_deref().unwrap_or_default()) {
            Ok(options) => (export, Access::Direct(options)),
            Err(e) => return Refuse(e.into()),
        },
        (None, Some(m)) => (m.clone(), Access::Mounted),
        (None, None) => return Refuse(Refusal::NoMountedExport),
    };
    let Some(capacity) = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref()?.get("storage"))
        .cloned()
    else {
        return Refuse(Refusal::NoCapacity);
    };

    let labels = claim.metadata.labels.clone().unwrap_or_default();
    let names = ClaimNames {
        namespace: claim.metadata.namespace.as_deref().unwrap_or_default(),
        name: claim.metadata.name.as_deref().unwrap_or_default(),
        labels: &labels,
        annotations: &annotations,
        pv_name: &pv_name,
    };
    let path = match &params.path_pattern {
        Some(pattern) => naming::render_pattern(pattern, &names),
        None => naming::default_path(&names),
    };
    let path = match path {
        Ok(p) => p,
        Err(e) => return Refuse(e.into()),
    };
    let reuse = match reuse(class, params.path_pattern.as_deref(), &path) {
        // A clone is a new directory with a copy in it, never one already there.
        Ok(_) if source.is_some() => Reuse::Off,
        Ok(reuse) => reuse,
        Err(refusal) => return Refuse(refusal),
    };
    let check_free_space = match class_flag(class, CHECK_FREE_SPACE) {
        Ok(check) => check,
        Err(value) => return Refuse(Refusal::FreeSpaceAnnotation(value)),
    };
    let pv = pv::build(&pv::PvInputs {
        name: &pv_name,
        claim,
        class,
        provisioner,
        export: &export,
        path: &path,
        on_delete: params.on_delete,
        capacity: capacity.clone(),
        source: source.as_deref(),
    });
    ClaimDecision::Provision(Box::new(ProvisionPlan {
        pv_name,
        export,
        access,
        path,
        dir: params.dir,
        on_delete: params.on_delete,
        reuse,
        source,
        request: capacity,
        check_free_space,
        pv,
    }))
}

/// A boolean annotation of a class: absent is false; `Err`: the value, which is no boolean.
fn class_flag(class: &StorageClass, key: &str) -> Result<bool, String> {
    match class.metadata.annotations.as_ref().and_then(|a| a.get(key)) {
        None => Ok(false),
        Some(value) => parse_go_bool(value).ok_or_else(|| value.clone()),
    }
}

/// Whether the claim of `plan` fits in the `available` bytes of its export, where its class checks.
pub fn fits(plan: &ProvisionPlan, available: u64) -> Result<(), Refusal> {
    let request = quantity::bytes(&plan.request.0).unwrap_or(0);
    if !plan.check_free_space || request <= u128::from(available) {
        return Ok(());
    }
    Err(Refusal::NoSpace {
        request: plan.request.0.clone(),
        available,
        export: plan.export.to_string(),
    })
}

/// What the class says of a directory already at `path`: off unless the class allows reuse, and
/// then allowed only where no other claim could have rendered `path` and it is no archive. (The staging area is no volume path at all; a live volume's directory, or one inside
/// or around it, is refused by [`find_overlap`]; a symlink by the storage layer.)
fn reuse(class: &StorageClass, pattern: Option<&str>, path: &VolumePath) -> Result<Reuse, Refusal> {
    let allowed = class_flag(class, REUSE_EXISTING).map_err(Refusal::ReuseAnnotation)?;
    if !allowed {
        return Ok(Reuse::Off);
    }
    if let Some(pattern) = pattern
        && !naming::pattern_fixes_namespace(pattern)
    {
        return Ok(Reuse::Forbidden(ReuseRule::NamespaceNotFixed(pattern.to_owned())));
    }
    if let Some(archive) = path.components().iter().find(|c| c.starts_with("archived-")) {
        return Ok(Reuse::Forbidden(ReuseRule::Archive(archive.clone())));
    }
    Ok(Reuse::Allowed)
}

/// Refuses a directory equal to, inside, or around the directory of another live volume, so two
/// claims can never share data and one claim's release can never touch another's files.
pub fn find_overlap<'a>(
    plan: &ProvisionPlan,
    live: impl IntoIterator<Item = (&'a str, &'a VolumePath)>,
) -> Option<Refusal> {
    let others = live.into_iter().filter(|(name, _)| *name != plan.pv_name);
    naming::find_overlap(&plan.path, others).map(|volume| Refusal::Overlap {
        path: plan.path.to_string(),
        volume: volume.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::annotations::PROVISIONED_BY;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, TypedLocalObjectReference, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
    use std::collections::BTreeMap;

    const ME: &str = "example.com/nfs";

    fn export() -> Export {
        Export {
            server: "10.0.0.1".into(),
            path: "/export".into(),
        }
    }

    fn class(params: &[(&str, &str)]) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some("nfs".into()),
                ..Default::default()
            },
            provisioner: ME.into(),
            parameters: Some(params.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
            ..Default::default()
        }
    }

    fn claim() -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("team".into()),
                uid: Some("1234".into()),
                annotations: Some(BTreeMap::from([(STORAGE_PROVISIONER_BETA.into(), ME.into())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some("nfs".into()),
                access_modes: Some(vec!["ReadWriteMany".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pre_bound(claim_ref: (&str, &str, Option<&str>)) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("admins-pv".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PersistentVolumeSpec {
                claim_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    namespace: Some(claim_ref.0.into()),
                    name: Some(claim_ref.1.into()),
                    uid: claim_ref.2.map(Into::into),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn only_claims_that_ask_something_of_us_are_reconciled_on_a_change() {
        let handed = claim();
        assert!(may_concern(&handed, ME));
        assert!(!may_concern(&handed, "example.com/other"), "handed to another");

        let mut created = claim();
        created.metadata.annotations = None;
        assert!(!may_concern(&created, ME), "not handed over yet");
        let mut ga = created.clone();
        ga.metadata.annotations = Some(BTreeMap::from([(STORAGE_PROVISIONER.into(), ME.into())]));
        assert!(may_concern(&ga, ME), "handed over with the GA annotation");

        let mut bound = created.clone();
        if let Some(spec) = bound.spec.as_mut() {
            spec.volume_name = Some("pvc-1".into());
        }
        assert!(may_concern(&bound, ME), "bound: a resize or a clone's end");
        let mut unbound = created.clone();
        if let Some(spec) = unbound.spec.as_mut() {
            spec.volume_name = Some(String::new());
        }
        assert!(!may_concern(&unbound, ME));

        let mut deleting = created.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(may_concern(&deleting, ME), "a clone being copied stops");

        let mut source = created;
        source.metadata.finalizers = Some(vec![crate::core::annotations::CLONING_PROTECTION.into()]);
        assert!(may_concern(&source, ME), "a protection to let go");
    }

    #[test]
    fn a_volume_pre_bound_to_the_claim_is_found() {
        let c = claim();
        let found = |pv: PersistentVolume| pre_bound_volume(&c, [&pv]).map(str::to_owned);
        assert_eq!(
            found(pre_bound(("team", "data", None))).as_deref(),
            Some("admins-pv")
        );
        assert_eq!(
            found(pre_bound(("team", "data", Some("")))).as_deref(),
            Some("admins-pv")
        );
        assert_eq!(
            found(pre_bound(("team", "data", Some("1234")))).as_deref(),
            Some("admins-pv")
        );
        assert_eq!(
            found(pre_bound(("team", "data", Some("old-uid")))),
            None,
            "an earlier claim's"
        );
        assert_eq!(found(pre_bound(("other", "data", None))), None);
        assert_eq!(found(pre_bound(("team", "other", None))), None);
        let mut ours = pre_bound(("team", "data", Some("1234")));
        ours.metadata.name = Some("pvc-1234".into());
        assert_eq!(found(ours), None, "our own PV is not pre-bound");
        let mut deleting = pre_bound(("team", "data", None));
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(found(deleting), None);
    }

    #[test]
    fn a_young_claim_waits_out_the_grace_and_no_longer() {
        let mut c = claim();
        let created: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        c.metadata.creation_timestamp = Some(Time(created));
        let at = |ms: i64| {
            created
                .checked_add(k8s_openapi::jiff::SignedDuration::from_millis(ms))
                .unwrap()
        };
        assert_eq!(grace_left(&c, at(0)), Some(PRE_BOUND_GRACE));
        assert_eq!(grace_left(&c, at(300)), Some(Duration::from_millis(700)));
        assert_eq!(grace_left(&c, at(1000)), None);
        assert_eq!(grace_left(&c, at(60_000)), None);
        assert_eq!(
            grace_left(&c, at(-5000)),
            Some(PRE_BOUND_GRACE),
            "a clock behind waits no longer than the grace"
        );
        c.metadata.creation_timestamp = None;
        assert_eq!(grace_left(&c, at(0)), None);
    }

    #[test]
    fn the_resync_looks_at_unbound_claims_handed_to_us_only() {
        assert!(awaits_provisioner(&claim(), ME));
        assert!(!awaits_provisioner(&claim(), "other.example.com/nfs"));
        let mut bound = claim();
        bound.spec.as_mut().unwrap().volume_name = Some("pvc-1234".into());
        assert!(!awaits_provisioner(&bound, ME));
        let mut deleting = claim();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!awaits_provisioner(&deleting, ME));
        let mut not_handed_over = claim();
        not_handed_over.metadata.annotations = None;
        assert!(!awaits_provisioner(&not_handed_over, ME));
        // Provisioned: the binder's turn.
        assert!(awaits_provisioning(&claim(), ME, false));
        assert!(!awaits_provisioning(&claim(), ME, true));
        assert!(!awaits_provisioning(&bound, ME, false));
    }

    fn reusing(params: &[(&str, &str)], value: &str) -> StorageClass {
        let mut class = class(params);
        class.metadata.annotations = Some(BTreeMap::from([(REUSE_EXISTING.into(), value.into())]));
        class
    }

    #[test]
    fn reuse_only_where_the_class_allows_it_and_the_path_is_this_namespaces() {
        let fixed = [("pathPattern", "${.PVC.namespace}/${.PVC.name}")];
        let reuse = |class: &StorageClass| plan(decide_with(&claim(), Some(class))).reuse;
        assert_eq!(reuse(&class(&fixed)), Reuse::Off, "off by default");
        assert_eq!(reuse(&reusing(&fixed, "true")), Reuse::Allowed);
        assert_eq!(reuse(&reusing(&fixed, "true")).existing(), Existing::Reuse);
        assert_eq!(
            reuse(&reusing(&[], "true")),
            Reuse::Allowed,
            "the default path holds the PV name"
        );
        assert_eq!(reuse(&reusing(&fixed, "false")), Reuse::Off);
        assert_eq!(reuse(&reusing(&fixed, "false")).existing(), Existing::Refuse);

        let loose = [("pathPattern", "${.PVC.namespace}-${.PVC.name}")];
        let p = reuse(&reusing(&loose, "true"));
        assert_eq!(p.existing(), Existing::Refuse);
        assert!(matches!(p, Reuse::Forbidden(ReuseRule::NamespaceNotFixed(_))));
        let archive = [("pathPattern", "${.PVC.namespace}/archived-${.PVC.name}")];
        let p = reuse(&reusing(&archive, "true"));
        assert_eq!(p.existing(), Existing::Refuse);
        assert_eq!(p, Reuse::Forbidden(ReuseRule::Archive("archived-data".into())));

        assert_eq!(
            decide_with(&claim(), Some(&reusing(&fixed, "yes please"))),
            ClaimDecision::Refuse(Refusal::ReuseAnnotation("yes please".into()))
        );
    }

    #[test]
    fn a_volume_attributes_class_is_refused_and_read_write_once_pod_is_copied() {
        let mut asks = claim();
        asks.spec.as_mut().unwrap().volume_attributes_class_name = Some("gold".into());
        assert_eq!(
            decide_with(&asks, Some(&class(&[]))),
            ClaimDecision::Refuse(Refusal::VolumeAttributesClass("gold".into()))
        );
        // Empty is the same as unset (a client that serialises the default).
        asks.spec.as_mut().unwrap().volume_attributes_class_name = Some(String::new());
        assert!(matches!(
            decide_with(&asks, Some(&class(&[]))),
            ClaimDecision::Provision(_)
        ));

        let mut rwop = claim();
        rwop.spec.as_mut().unwrap().access_modes = Some(vec!["ReadWriteOncePod".into()]);
        let pv = plan(decide_with(&rwop, Some(&class(&[])))).pv;
        assert_eq!(
            pv.spec.unwrap().access_modes,
            Some(vec!["ReadWriteOncePod".to_owned()])
        );
    }

    fn decide_with(claim: &PersistentVolumeClaim, class: Option<&StorageClass>) -> ClaimDecision {
        decide(claim, class, ME, Some(&export()), false)
    }

    fn plan(d: ClaimDecision) -> ProvisionPlan {
        match d {
            ClaimDecision::Provision(p) => *p,
            other => panic!("expected a plan, got {other:?}"),
        }
    }

    fn annotate(c: &mut PersistentVolumeClaim, k: &str, v: &str) {
        c.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(k.into(), v.into());
    }

    #[test]
    fn provision_claim_annotated_with_beta_annotation_for_us() {
        let p = plan(decide_with(&claim(), Some(&class(&[]))));
        assert_eq!(p.pv_name, "pvc-1234");
        assert_eq!(p.path.to_string(), "team-data-pvc-1234");
        assert_eq!(p.on_delete, OnDelete::Archive);
    }

    #[test]
    fn provision_claim_annotated_with_ga_annotation_for_us() {
        let mut c = claim();
        c.metadata.annotations = Some(BTreeMap::from([(STORAGE_PROVISIONER.into(), ME.into())]));
        assert!(matches!(
            decide_with(&c, Some(&class(&[]))),
            ClaimDecision::Provision(_)
        ));
    }

    #[test]
    fn ga_annotation_naming_another_provisioner_wins_over_beta() {
        let mut c = claim();
        annotate(&mut c, STORAGE_PROVISIONER, "other");
        assert_eq!(
            decide_with(&c, Some(&class(&[]))),
            ClaimDecision::Skip(Skip::NotForUs)
        );
    }

    #[test]
    fn skip_claim_for_another_provisioner() {
        let mut c = claim();
        annotate(&mut c, STORAGE_PROVISIONER_BETA, "other");
        assert_eq!(
            decide_with(&c, Some(&class(&[]))),
            ClaimDecision::Skip(Skip::NotForUs)
        );
    }

    #[test]
    fn skip_claim_without_provisioner_annotation() {
        let mut c = claim();
        c.metadata.annotations = None;
        assert_eq!(
            decide_with(&c, Some(&class(&[]))),
            ClaimDecision::Skip(Skip::NotForUs)
        );
    }

    #[test]
    fn skip_bound_claim() {
        let mut c = claim();
        c.spec.as_mut().unwrap().volume_name = Some("pv-1".into());
        assert_eq!(
            decide_with(&c, Some(&class(&[]))),
            ClaimDecision::Skip(Skip::AlreadyBound)
        );
    }

    #[test]
    fn skip_claim_being_deleted() {
        let mut c = claim();
        c.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            decide_with(&c, Some(&class(&[]))),
            ClaimDecision::Skip(Skip::Deleting)
        );
    }

    #[test]
    fn skip_claim_whose_volume_already_exists() {
        assert_eq!(
            decide(&claim(), Some(&class(&[])), ME, Some(&export()), true),
            ClaimDecision::Skip(Skip::AlreadyProvisioned)
        );
    }

    #[test]
    fn skip_claim_whose_class_names_another_provisioner() {
        let mut sc = class(&[]);
        sc.provisioner = "other".into();
        assert_eq!(
            decide_with(&claim(), Some(&sc)),
            ClaimDecision::Skip(Skip::ClassOfAnotherProvisioner)
        );
    }

    #[test]
    fn refuse_claim_whose_class_is_missing() {
        assert_eq!(
            decide_with(&claim(), None),
            ClaimDecision::Refuse(Refusal::ClassNotFound("nfs".into()))
        );
    }

    #[test]
    fn wait_for_first_consumer_until_a_node_is_selected() {
        let mut sc = class(&[]);
        sc.volume_binding_mode = Some("WaitForFirstConsumer".into());
        assert_eq!(
            decide_with(&claim(), Some(&sc)),
            ClaimDecision::Skip(Skip::WaitingForFirstConsumer)
        );
        let mut c = claim();
        annotate(&mut c, SELECTED_NODE, "node-1");
        assert!(matches!(decide_with(&c, Some(&sc)), ClaimDecision::Provision(_)));
    }

    #[test]
    fn refuse_block_volume_selector_and_data_sources() {
        let mut block = claim();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert_eq!(
            decide_with(&block, Some(&class(&[]))),
            ClaimDecision::Refuse(Refusal::BlockVolume)
        );

        let mut selector = claim();
        selector.spec.as_mut().unwrap().selector = Some(LabelSelector::default());
        assert_eq!(
            decide_with(&selector, Some(&class(&[]))),
            ClaimDecision::Refuse(Refusal::Selector)
        );

        let mut snapshot = claim();
        snapshot.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            kind: "VolumeSnapshot".into(),
            name: "x".into(),
            api_group: Some("snapshot.storage.k8s.io".into()),
        });
        assert_eq!(
            decide_with(&snapshot, Some(&class(&[]))),
            ClaimDecision::Refuse(Refusal::DataSource(DataSourceRefusal::Snapshot("x".into())))
        );
    }

    /// A claim with another claim as its data source is a clone: planned with its source, never
    /// reusing a directory, its PV recording where it came from.
    #[test]
    fn a_claim_with_a_claim_as_data_source_is_planned_as_a_clone() {
        let mut clone = claim();
        clone.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            kind: "PersistentVolumeClaim".into(),
            name: "src".into(),
            api_group: None,
        });
        let reusing = reusing(&[], "true");
        let p = plan(decide_with(&clone, Some(&reusing)));
        assert_eq!(p.source.as_deref(), Some("src"));
        assert_eq!(p.reuse, Reuse::Off);
        let recorded = p.pv.metadata.annotations.unwrap_or_default();
        assert_eq!(
            recorded
                .get(crate::core::annotations::CLONED_FROM)
                .map(String::as_str),
            Some("team/src")
        );
        assert_eq!(plan(decide_with(&claim(), Some(&class(&[])))).source, None);
    }

    #[test]
    fn a_class_that_checks_free_space_refuses_a_request_larger_than_it() {
        let mut checking = class(&[]);
        checking.metadata.annotations = Some(BTreeMap::from([(CHECK_FREE_SPACE.into(), "true".into())]));
        let p = plan(decide_with(&claim(), Some(&checking)));
        assert!(p.check_free_space);
        let gib = 1024 * 1024 * 1024;
        assert_eq!(fits(&p, gib), Ok(()));
        assert_eq!(
            fits(&p, gib - 1),
            Err(Refusal::NoSpace {
                request: "1Gi".into(),
                available: gib - 1,
                export: "10.0.0.1:/export".into()
            })
        );
        let unchecked = plan(decide_with(&claim(), Some(&class(&[]))));
        assert_eq!(fits(&unchecked, 0), Ok(()));
        checking.metadata.annotations = Some(BTreeMap::from([(CHECK_FREE_SPACE.into(), "yes".into())]));
        assert_eq!(
            decide_with(&claim(), Some(&checking)),
            ClaimDecision::Refuse(Refusal::FreeSpaceAnnotation("yes".into()))
        );
    }

    #[test]
    fn server_and_share_are_served_directly_with_the_class_mount_options() {
        let mut c = class(&[("server", "10.0.0.9"), ("share", "/srv/")]);
        c.mount_options = Some(vec!["nfsvers=3".into(), "port=12049,mountport=12048".into()]);
        let p = plan(decide_with(&claim(), Some(&c)));
        assert_eq!(p.export.to_string(), "10.0.0.9:/srv");
        let Access::Direct(options) = p.access else {
            panic!("expected direct access, got {:?}", p.access);
        };
        assert_eq!((options.port, options.mount_port), (Some(12049), Some(12048)));
        let nfs = p.pv.spec.unwrap().nfs.unwrap();
        assert_eq!(nfs.server, "10.0.0.9");
        assert_eq!(nfs.path, "/srv/team-data-pvc-1234");
    }

    #[test]
    fn server_and_share_of_the_mounted_export_use_the_mount() {
        let c = class(&[("server", "10.0.0.1"), ("share", "/export")]);
        let p = plan(decide_with(&claim(), Some(&c)));
        assert_eq!(p.access, Access::Mounted);
        assert_eq!(
            plan(decide_with(&claim(), Some(&class(&[])))).access,
            Access::Mounted
        );
    }

    #[test]
    fn without_a_mounted_export_only_direct_classes_are_served() {
        let direct = class(&[("server", "10.0.0.9"), ("share", "/srv")]);
        assert!(matches!(
            decide(&claim(), Some(&direct), ME, None, false),
            ClaimDecision::Provision(_)
        ));
        assert_eq!(
            decide(&claim(), Some(&class(&[])), ME, None, false),
            ClaimDecision::Refuse(Refusal::NoMountedExport)
        );
    }

    #[test]
    fn a_direct_class_asking_for_nfs_v4_1_is_served_and_one_asking_for_4_0_refused() {
        let mut c = class(&[("server", "10.0.0.9"), ("share", "/srv")]);
        c.mount_options = Some(vec!["nfsvers=4.1".into()]);
        assert!(matches!(
            decide_with(&claim(), Some(&c)),
            ClaimDecision::Provision(_)
        ));
        c.mount_options = Some(vec!["nfsvers=4.0".into()]);
        assert!(matches!(
            decide_with(&claim(), Some(&c)),
            ClaimDecision::Refuse(Refusal::MountOptions(_))
        ));
    }

    #[test]
    fn refuse_unknown_class_parameter() {
        assert!(matches!(
            decide_with(&claim(), Some(&class(&[("archiveOndelete", "false")]))),
            ClaimDecision::Refuse(Refusal::Parameters(ParamError::Unknown(_)))
        ));
    }

    #[test]
    fn refuse_hostile_annotation_in_path_pattern() {
        let mut c = claim();
        annotate(&mut c, "dir", "../victim");
        let sc = class(&[("pathPattern", "${.PVC.namespace}/${.PVC.annotations.dir}")]);
        assert!(matches!(
            decide_with(&c, Some(&sc)),
            ClaimDecision::Refuse(Refusal::Path(_))
        ));
    }

    #[test]
    fn path_pattern_uses_labels_and_annotations() {
        let mut c = claim();
        c.metadata.labels = Some(BTreeMap::from([("app".into(), "db".into())]));
        annotate(&mut c, "nfs.io/storage-path", "pgdata");
        let sc = class(&[(
            "pathPattern",
            "${.PVC.namespace}/${.PVC.labels.app}/${.PVC.annotations.nfs.io/storage-path}",
        )]);
        assert_eq!(
            plan(decide_with(&c, Some(&sc))).path.to_string(),
            "team/db/pgdata"
        );
    }

    #[test]
    fn plan_records_directory_and_policy_on_the_pv() {
        let p = plan(decide_with(&claim(), Some(&class(&[("onDelete", "delete")]))));
        let annotations = p.pv.metadata.annotations.unwrap();
        assert_eq!(annotations[PROVISIONED_BY], ME);
        assert_eq!(
            annotations[crate::core::annotations::DIRECTORY],
            "team-data-pvc-1234"
        );
        assert_eq!(annotations[crate::core::annotations::ON_DELETE], "delete");
    }

    #[test]
    fn overlapping_directories_are_refused_but_a_volume_never_overlaps_itself() {
        let p = plan(decide_with(
            &claim(),
            Some(&class(&[("pathPattern", "${.PVC.namespace}/x")])),
        ));
        let parent = VolumePath::parse("team").unwrap();
        let same = VolumePath::parse("team/x").unwrap();
        let sibling = VolumePath::parse("team/y").unwrap();
        assert!(matches!(
            find_overlap(&p, [("pvc-a", &parent)]),
            Some(Refusal::Overlap { .. })
        ));
        assert!(matches!(
            find_overlap(&p, [("pvc-b", &same)]),
            Some(Refusal::Overlap { .. })
        ));
        assert_eq!(find_overlap(&p, [("pvc-c", &sibling)]), None);
        assert_eq!(find_overlap(&p, [("pvc-1234", &same)]), None);
    }
}
