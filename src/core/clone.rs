//! Cloning: which claim a new claim asks to be a copy of ([`requested`], from `spec.dataSource` or
//! `spec.dataSourceRef`), whether that claim can be copied ([`source`]: Bound, in the same
//! namespace, its volume one of ours in an export this provisioner serves, no larger than what the
//! clone asks for), and the source claim's cloning protection (external-provisioner's finalizer,
//! so a source is not deleted while it is copied).

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};

use crate::core::annotations::CLONING_PROTECTION;
use crate::core::export::{Access, Export};
use crate::core::naming::VolumePath;
use crate::core::quantity;
use crate::core::volume::{self, VolumeRefusal};

/// The core group's kind of a claim, as data sources name it.
const CLAIM_KIND: &str = "PersistentVolumeClaim";
const SNAPSHOT_KIND: &str = "VolumeSnapshot";

/// Why a claim's data source is not one this provisioner can copy, whatever the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataSourceRefusal {
    #[error(
        "spec.dataSource names VolumeSnapshot {0:?}: restoring a snapshot needs a CSI driver with snapshot support; this provisioner copies from a PersistentVolumeClaim (kind: PersistentVolumeClaim) only"
    )]
    Snapshot(String),
    #[error(
        "spec.dataSourceRef names kind {kind:?} of API group {group:?}: this provisioner copies from a PersistentVolumeClaim (kind: PersistentVolumeClaim) only"
    )]
    Kind { kind: String, group: String },
    #[error(
        "spec.dataSourceRef names claim {name:?} in namespace {namespace:?}: a clone is made from a claim of its own namespace only"
    )]
    OtherNamespace { namespace: String, name: String },
}

/// Why the claim a clone names cannot be copied now; the clone waits, and is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceRefusal {
    #[error("the source claim {0:?} does not exist in this namespace")]
    Missing(String),
    #[error("the source claim {0:?} is being deleted")]
    Deleting(String),
    #[error("the source claim {claim:?} is {phase}, not Bound: only a claim with a volume can be copied")]
    NotBound { claim: String, phase: String },
    #[error("the volume {pv} of the source claim {claim:?} is not in the cache yet")]
    VolumeNotSeen { claim: String, pv: String },
    #[error(
        "the volume {pv} of the source claim {claim:?} was not made by this provisioner; only its own volumes can be copied"
    )]
    NotOurs { claim: String, pv: String },
    #[error("the source claim {0:?} is a Block volume; NFS directories are filesystem volumes")]
    Block(String),
    #[error(
        "the clone asks for {request}, less than the {capacity} of its source claim {claim:?}; ask for at least as much"
    )]
    TooSmall {
        claim: String,
        request: String,
        capacity: String,
    },
    #[error("the volume {pv} of the source claim {claim:?}: {reason}")]
    Elsewhere {
        claim: String,
        pv: String,
        reason: VolumeRefusal,
    },
}

impl SourceRefusal {
    /// Why, in one word of a small fixed set: the `reason` label of
    /// `nfs_subdir_provisioner_operation_failures_total`. A source not ready yet is a clone
    /// waiting; one that can never be copied needs the user.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceRefusal::Missing(_)
            | SourceRefusal::Deleting(_)
            | SourceRefusal::NotBound { .. }
            | SourceRefusal::VolumeNotSeen { .. } => "SourceNotReady",
            SourceRefusal::NotOurs { .. }
            | SourceRefusal::Block(_)
            | SourceRefusal::TooSmall { .. }
            | SourceRefusal::Elsewhere { .. } => "InvalidSource",
        }
    }
}

/// What a clone's copy did (`storage::copy::Progress` at one moment): for Events and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub entries: u64,
    pub bytes: u64,
    pub hard_links: u64,
    pub fifos: u64,
    pub sockets: u64,
    pub devices: u64,
    pub kept: u64,
    pub owners_refused: bool,
}

/// A claim whose volume can be copied: where its directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSource {
    pub claim: String,
    pub pv: String,
    pub export: Export,
    pub access: Access,
    pub path: VolumePath,
}

/// The claim (of its own namespace) `claim` asks to be a copy of: `dataSourceRef` where set (it
/// can also name a namespace), else `dataSource`; `None` without either.
pub fn requested(claim: &PersistentVolumeClaim) -> Result<Option<String>, DataSourceRefusal> {
    let Some(spec) = claim.spec.as_ref() else {
        return Ok(None);
    };
    let (kind, group, name, namespace) = match (&spec.data_source_ref, &spec.data_source) {
        (Some(r), _) => (&r.kind, &r.api_group, &r.name, r.namespace.as_ref()),
        (None, Some(s)) => (&s.kind, &s.api_group, &s.name, None),
        (None, None) => return Ok(None),
    };
    let group = group.clone().unwrap_or_default();
    match (kind.as_str(), group.as_str()) {
        (CLAIM_KIND, "") => {}
        (SNAPSHOT_KIND, "snapshot.storage.k8s.io") => return Err(DataSourceRefusal::Snapshot(name.clone())),
        _ => {
            return Err(DataSourceRefusal::Kind {
                kind: kind.clone(),
                group,
            });
        }
    }
    if let Some(namespace) = namespace.filter(|n| Some(n.as_str()) != claim.metadata.namespace.as_deref()) {
        return Err(DataSourceRefusal::OtherNamespace {
            namespace: namespace.clone(),
            name: name.clone(),
        });
    }
    Ok(Some(name.clone()))
}

/// Whether `source_claim` (named `name`), with its volume `source_pv` as the caches hold them, can
/// be copied into a clone asking for `request`; where its directory is if so. `mounted` and
/// `served` are the exports this provisioner serves, as for a release.
pub fn source(
    name: &str,
    request: &Quantity,
    source_claim: Option<&PersistentVolumeClaim>,
    source_pv: Option<&PersistentVolume>,
    provisioner: &str,
    mounted: Option<&Export>,
    served: &[Export],
) -> Result<CloneSource, SourceRefusal> {
    let claim = name.to_owned();
    let Some(source_claim) = source_claim else {
        return Err(SourceRefusal::Missing(claim));
    };
    if source_claim.metadata.deletion_timestamp.is_some() {
        return Err(SourceRefusal::Deleting(claim));
    }
    let spec = source_claim.spec.clone().unwrap_or_default();
    if spec.volume_mode.as_deref() == Some("Block") {
        return Err(SourceRefusal::Block(claim));
    }
    let phase = source_claim
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_owned());
    let pv = match spec.volume_name.filter(|v| !v.is_empty()) {
        Some(pv) if phase == "Bound" => pv,
        _ => return Err(SourceRefusal::NotBound { claim, phase }),
    };
    let Some(source_pv) = source_pv else {
        return Err(SourceRefusal::VolumeNotSeen { claim, pv });
    };
    if !volume::is_ours(source_pv, provisioner) {
        return Err(SourceRefusal::NotOurs { claim, pv });
    }
    let capacity = source_pv
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref()?.get("storage"))
        .map(|q| q.0.clone());
    if let Some(capacity) = capacity
        && let (Some(want), Some(have)) = (quantity::bytes(&request.0), quantity::bytes(&capacity))
        && want < have
    {
        return Err(SourceRefusal::TooSmall {
            claim,
            request: request.0.clone(),
            capacity,
        });
    }
    let located = volume::locate(source_pv, mounted, served).map_err(|reason| SourceRefusal::Elsewhere {
        claim: claim.clone(),
        pv: pv.clone(),
        reason,
    })?;
    Ok(CloneSource {
        claim,
        pv,
        export: located.export,
        access: located.access,
        path: located.path,
    })
}

pub fn is_protected(claim: &PersistentVolumeClaim) -> bool {
    claim
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == CLONING_PROTECTION)
}

/// Whether one of `waiting` (claims not provisioned yet) asks for a copy of `source`.
pub fn clones_pending<'a>(
    source: &PersistentVolumeClaim,
    waiting: impl IntoIterator<Item = &'a PersistentVolumeClaim>,
) -> bool {
    let (namespace, name) = (
        source.metadata.namespace.as_deref(),
        source.metadata.name.as_deref(),
    );
    waiting.into_iter().any(|c| {
        c.metadata.namespace.as_deref() == namespace && requested(c).ok().flatten().as_deref() == name
    })
}

/// The merge patch that adds (`protect`) or removes [`CLONING_PROTECTION`] on a source claim; it
/// carries the claim's resourceVersion, so a concurrent change of its finalizers fails it (409).
pub fn protection_patch(claim: &PersistentVolumeClaim, protect: bool) -> Value {
    let mut finalizers: Vec<String> = claim
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != CLONING_PROTECTION)
        .cloned()
        .collect();
    if protect {
        finalizers.push(CLONING_PROTECTION.to_owned());
    }
    json!({ "metadata": {
        "resourceVersion": claim.metadata.resource_version,
        "finalizers": finalizers,
    } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::annotations::{PROVISIONED_BY, STORAGE_PROVISIONER_BETA};
    use k8s_openapi::api::core::v1::{
        NFSVolumeSource, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec,
        TypedLocalObjectReference, TypedObjectReference,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use std::collections::BTreeMap;

    const ME: &str = "example.com/nfs";

    fn export() -> Export {
        Export {
            server: "10.0.0.1".into(),
            path: "/export".into(),
        }
    }

    fn claim(name: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some("7".into()),
                annotations: Some(BTreeMap::from([(STORAGE_PROVISIONER_BETA.into(), ME.into())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec::default()),
            status: None,
        }
    }

    fn cloning(name: &str, from: &str) -> PersistentVolumeClaim {
        let mut c = claim(name);
        c.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            kind: CLAIM_KIND.into(),
            name: from.into(),
            api_group: None,
        });
        c
    }

    fn bound(name: &str, pv: &str) -> PersistentVolumeClaim {
        let mut c = claim(name);
        c.spec.as_mut().unwrap().volume_name = Some(pv.into());
        c.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Bound".into()),
            ..Default::default()
        });
        c
    }

    fn volume(name: &str, capacity: &str, by: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(BTreeMap::from([(PROVISIONED_BY.into(), by.into())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".into(), Quantity(capacity.into()))])),
                nfs: Some(NFSVolumeSource {
                    server: "10.0.0.1".into(),
                    path: format!("/export/team-src-{name}"),
                    read_only: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_claim_source_of_the_same_namespace_is_requested_and_other_sources_are_refused() {
        assert_eq!(requested(&claim("c")), Ok(None));
        assert_eq!(requested(&cloning("c", "src")), Ok(Some("src".into())));
        let with_ref = |kind: &str, group: Option<&str>, namespace: Option<&str>| {
            let mut c = claim("c");
            c.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
                kind: kind.into(),
                name: "src".into(),
                api_group: group.map(Into::into),
                namespace: namespace.map(Into::into),
            });
            requested(&c)
        };
        assert_eq!(with_ref(CLAIM_KIND, None, None), Ok(Some("src".into())));
        assert_eq!(
            with_ref(CLAIM_KIND, Some(""), Some("team")),
            Ok(Some("src".into()))
        );
        assert_eq!(
            with_ref(CLAIM_KIND, None, Some("other")),
            Err(DataSourceRefusal::OtherNamespace {
                namespace: "other".into(),
                name: "src".into()
            })
        );
        assert_eq!(
            with_ref(SNAPSHOT_KIND, Some("snapshot.storage.k8s.io"), None),
            Err(DataSourceRefusal::Snapshot("src".into()))
        );
        let populator = with_ref("Backup", Some("backup.example.com"), None).unwrap_err();
        assert!(populator.to_string().contains("\"Backup\""), "{populator}");
        assert!(with_ref(CLAIM_KIND, Some("example.com"), None).is_err());
    }

    #[test]
    fn only_a_bound_claim_of_ours_no_larger_than_the_request_is_copied() {
        let request = Quantity("1Gi".into());
        let pv = volume("pvc-src", "1Gi", ME);
        let src = bound("src", "pvc-src");
        let decide = |c: Option<&PersistentVolumeClaim>, v: Option<&PersistentVolume>, q: &Quantity| {
            source("src", q, c, v, ME, Some(&export()), &[])
        };
        let found = decide(Some(&src), Some(&pv), &request).unwrap();
        assert_eq!(
            (found.pv.as_str(), found.path.to_string(), found.access),
            ("pvc-src", "team-src-pvc-src".to_owned(), Access::Mounted)
        );
        assert_eq!(
            decide(Some(&src), Some(&pv), &Quantity("1024Mi".into())).map(|s| s.pv),
            Ok("pvc-src".into()),
            "the same size in other units"
        );
        assert!(matches!(
            decide(Some(&src), Some(&pv), &Quantity("1023Mi".into())),
            Err(SourceRefusal::TooSmall { .. })
        ));
        assert_eq!(
            decide(None, None, &request),
            Err(SourceRefusal::Missing("src".into()))
        );
        assert!(matches!(
            decide(Some(&claim("src")), None, &request),
            Err(SourceRefusal::NotBound { phase, .. }) if phase == "Pending"
        ));
        assert!(matches!(
            decide(Some(&src), None, &request),
            Err(SourceRefusal::VolumeNotSeen { .. })
        ));
        assert!(matches!(
            decide(
                Some(&src),
                Some(&volume("pvc-src", "1Gi", "someone.else/nfs")),
                &request
            ),
            Err(SourceRefusal::NotOurs { .. })
        ));
        let mut deleting = src.clone();
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            decide(Some(&deleting), Some(&pv), &request),
            Err(SourceRefusal::Deleting("src".into()))
        );
        let mut block = src.clone();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert_eq!(
            decide(Some(&block), Some(&pv), &request),
            Err(SourceRefusal::Block("src".into()))
        );
        let mut elsewhere = pv.clone();
        elsewhere.spec.as_mut().unwrap().nfs.as_mut().unwrap().server = "10.9.9.9".into();
        assert!(matches!(
            decide(Some(&src), Some(&elsewhere), &request),
            Err(SourceRefusal::Elsewhere { .. })
        ));
    }

    #[test]
    fn a_source_stays_protected_while_a_clone_of_it_waits() {
        let src = bound("src", "pvc-src");
        let waiting = cloning("c", "src");
        assert!(clones_pending(&src, [&waiting]));
        assert!(!clones_pending(&src, [&cloning("c", "other")]));
        assert!(!clones_pending(&src, [&claim("c")]));
        let mut other_ns = waiting;
        other_ns.metadata.namespace = Some("other".into());
        assert!(!clones_pending(&src, [&other_ns]));
    }

    #[test]
    fn the_protection_patch_keeps_other_finalizers_and_the_resource_version() {
        let mut src = bound("src", "pvc-src");
        src.metadata.finalizers = Some(vec!["kubernetes.io/pvc-protection".into()]);
        assert!(!is_protected(&src));
        let on = protection_patch(&src, true);
        assert_eq!(
            on,
            json!({ "metadata": {
                "resourceVersion": "7",
                "finalizers": ["kubernetes.io/pvc-protection", CLONING_PROTECTION],
            } })
        );
        src.metadata.finalizers = Some(vec![
            CLONING_PROTECTION.into(),
            "kubernetes.io/pvc-protection".into(),
        ]);
        assert!(is_protected(&src));
        assert_eq!(
            protection_patch(&src, false)["metadata"]["finalizers"],
            json!(["kubernetes.io/pvc-protection"])
        );
    }
}
