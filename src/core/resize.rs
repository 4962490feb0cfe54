//! Should a bound claim's volume grow? [`decide`] answers from the claim and its PV, as
//! external-resizer does for a CSI driver that needs no node step: the PV's `spec.capacity` is
//! raised first, then the claim's `status.capacity`. Both writes are idempotent, and the decision
//! reads only what they wrote, so a crash between them is finished by the next look.
//!
//! An NFS directory has no size of its own to change: the new size is a record on the PV, for
//! users and for a quota agent on the server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};

use crate::core::quantity;
use crate::core::volume::is_ours;

#[derive(Debug, Clone, PartialEq)]
pub enum ResizeDecision {
    Skip(ResizeSkip),
    /// The claim asks for more than the PV holds: record `to` on the PV, then on the claim.
    Grow {
        pv: String,
        to: Quantity,
    },
    /// The PV holds what the claim asks (grown by an earlier, interrupted attempt): record it on
    /// the claim.
    Finish {
        pv: String,
        capacity: Quantity,
    },
    /// A size that cannot be read: a Warning, nothing written.
    Refuse(ResizeRefusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeSkip {
    NotBound,
    /// The PV is not in the cache (yet), or is bound to another claim.
    NoVolume,
    NotOurs,
    Deleting,
    UpToDate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeRefusal {
    #[error("{field} {value:?} is not a size")]
    BadSize { field: &'static str, value: String },
}

fn storage(resources: Option<&BTreeMap<String, Quantity>>) -> Option<&Quantity> {
    resources?.get("storage")
}

fn size(field: &'static str, q: &Quantity) -> Result<u128, ResizeRefusal> {
    quantity::bytes(&q.0).ok_or_else(|| ResizeRefusal::BadSize {
        field,
        value: q.0.clone(),
    })
}

/// The claim's bound PV, by name; the controller looks it up in its cache.
pub fn volume_name(claim: &PersistentVolumeClaim) -> Option<&str> {
    let spec = claim.spec.as_ref()?;
    spec.volume_name.as_deref().filter(|v| !v.is_empty())
}

/// Cheap enough for every cached claim on every resync: most are skipped on strings alone.
pub fn decide(
    claim: &PersistentVolumeClaim,
    pv: Option<&PersistentVolume>,
    provisioner: &str,
) -> ResizeDecision {
    use ResizeDecision::{Finish, Grow, Refuse, Skip};
    let Some(volume) = volume_name(claim) else {
        return Skip(ResizeSkip::NotBound);
    };
    let status = claim.status.as_ref();
    if status.and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Skip(ResizeSkip::NotBound);
    }
    let Some(pv) = pv.filter(|pv| {
        let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        claim_ref.is_some_and(|r| r.uid.is_some() && r.uid == claim.metadata.uid)
    }) else {
        return Skip(ResizeSkip::NoVolume);
    };
    if !is_ours(pv, provisioner) {
        return Skip(ResizeSkip::NotOurs);
    }
    if claim.metadata.deletion_timestamp.is_some() || pv.metadata.deletion_timestamp.is_some() {
        return Skip(ResizeSkip::Deleting);
    }
    let requested = storage(
        claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref()?.requests.as_ref()),
    );
    let recorded = storage(status.and_then(|s| s.capacity.as_ref()));
    let held = storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()));
    let (Some(requested), Some(held)) = (requested, held) else {
        return Skip(ResizeSkip::UpToDate);
    };
    if Some(requested) == recorded && requested == held {
        return Skip(ResizeSkip::UpToDate);
    }
    let sizes = (|| {
        Ok::<_, ResizeRefusal>((
            size("spec.resources.requests.storage", requested)?,
            recorded.map(|r| size("status.capacity.storage", r)).transpose()?,
            size("the PersistentVolume's spec.capacity.storage", held)?,
        ))
    })();
    let (requested_bytes, recorded_bytes, held_bytes) = match sizes {
        Ok(sizes) => sizes,
        Err(refusal) => return Refuse(refusal),
    };
    let pv_name = volume.to_owned();
    if requested_bytes > held_bytes {
        Grow {
            pv: pv_name,
            to: requested.clone(),
        }
    } else if recorded_bytes.is_none_or(|r| r < requested_bytes) {
        Finish {
            pv: pv_name,
            capacity: held.clone(),
        }
    } else {
        Skip(ResizeSkip::UpToDate)
    }
}

/// Whether [`decide`] has something to write: for the periodic resync.
pub fn wanted(claim: &PersistentVolumeClaim, pv: Option<&PersistentVolume>, provisioner: &str) -> bool {
    matches!(
        decide(claim, pv, provisioner),
        ResizeDecision::Grow { .. } | ResizeDecision::Finish { .. }
    )
}

/// The claim conditions of a resize in progress, which a finished resize clears (and the claim
/// cache keeps, alone of all conditions).
pub fn is_resize_condition(type_: &str) -> bool {
    type_ == "Resizing" || type_ == "FileSystemResizePending"
}

/// The merge patch of the PV's size.
pub fn pv_patch(to: &Quantity) -> Value {
    json!({ "spec": { "capacity": { "storage": to.0 } } })
}

/// The merge patch of the claim's status once its PV holds `capacity`: the size, and the
/// conditions external-resizer clears when a resize is done. API servers with
/// RecoverVolumeExpansionFailure (Kubernetes ≥ 1.32, where the claim's status has
/// `allocatedResources`) also get the size allocated and the resize marked finished there, as
/// external-resizer does; older ones never see those fields.
pub fn claim_status_patch(claim: &PersistentVolumeClaim, capacity: &Quantity) -> Value {
    let status = claim.status.clone().unwrap_or_default();
    let mut patch = json!({ "capacity": { "storage": capacity.0 } });
    let conditions = status.conditions.unwrap_or_default();
    if conditions.iter().any(|c| is_resize_condition(&c.type_)) {
        let kept: Vec<_> = conditions
            .into_iter()
            .filter(|c| !is_resize_condition(&c.type_))
            .collect();
        patch["conditions"] = json!(kept);
    }
    if status.allocated_resources.is_some() {
        patch["allocatedResources"] = json!({ "storage": capacity.0 });
    }
    if status
        .allocated_resource_statuses
        .is_some_and(|s| s.contains_key("storage"))
    {
        patch["allocatedResourceStatuses"] = json!({ "storage": null });
    }
    json!({ "status": patch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::annotations::PROVISIONED_BY;
    use k8s_openapi::api::core::v1::{
        ObjectReference, PersistentVolumeClaimCondition, PersistentVolumeClaimSpec,
        PersistentVolumeClaimStatus, PersistentVolumeSpec, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    const ME: &str = "example.com/nfs";

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    fn sizes(s: &str) -> Option<BTreeMap<String, Quantity>> {
        Some(BTreeMap::from([("storage".to_owned(), q(s))]))
    }

    fn claim(requested: &str, recorded: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("team".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some("pvc-u1".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: sizes(requested),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Bound".into()),
                capacity: sizes(recorded),
                ..Default::default()
            }),
        }
    }

    fn pv(held: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-u1".into()),
                annotations: Some(BTreeMap::from([(PROVISIONED_BY.into(), ME.into())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: sizes(held),
                claim_ref: Some(ObjectReference {
                    uid: Some("u1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_bigger_request_grows_the_volume_then_the_claim() {
        assert_eq!(
            decide(&claim("5Mi", "1Mi"), Some(&pv("1Mi")), ME),
            ResizeDecision::Grow {
                pv: "pvc-u1".into(),
                to: q("5Mi")
            }
        );
        // Restarted between the two writes: the PV holds the new size, the claim does not yet.
        assert_eq!(
            decide(&claim("5Mi", "1Mi"), Some(&pv("5Mi")), ME),
            ResizeDecision::Finish {
                pv: "pvc-u1".into(),
                capacity: q("5Mi")
            }
        );
        assert_eq!(
            decide(&claim("5Mi", "5Mi"), Some(&pv("5Mi")), ME),
            ResizeDecision::Skip(ResizeSkip::UpToDate)
        );
    }

    #[test]
    fn sizes_compare_as_bytes_not_as_text() {
        assert_eq!(
            decide(&claim("1024Mi", "1Gi"), Some(&pv("1Gi")), ME),
            ResizeDecision::Skip(ResizeSkip::UpToDate)
        );
        // A PV made bigger than asked (by an admin) is never shrunk; the claim learns its size.
        assert_eq!(
            decide(&claim("2Gi", "1Gi"), Some(&pv("3Gi")), ME),
            ResizeDecision::Finish {
                pv: "pvc-u1".into(),
                capacity: q("3Gi")
            }
        );
        assert_eq!(
            decide(&claim("1Gi", "2Gi"), Some(&pv("2Gi")), ME),
            ResizeDecision::Skip(ResizeSkip::UpToDate),
            "never shrinks"
        );
    }

    #[test]
    fn only_bound_claims_with_a_volume_of_ours_grow() {
        let mut pending = claim("5Mi", "1Mi");
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(
            decide(&pending, Some(&pv("1Mi")), ME),
            ResizeDecision::Skip(ResizeSkip::NotBound)
        );
        assert_eq!(
            decide(&claim("5Mi", "1Mi"), None, ME),
            ResizeDecision::Skip(ResizeSkip::NoVolume)
        );
        let mut other_claims = pv("1Mi");
        other_claims
            .spec
            .as_mut()
            .unwrap()
            .claim_ref
            .as_mut()
            .unwrap()
            .uid = Some("u2".into());
        assert_eq!(
            decide(&claim("5Mi", "1Mi"), Some(&other_claims), ME),
            ResizeDecision::Skip(ResizeSkip::NoVolume)
        );
        assert_eq!(
            decide(&claim("5Mi", "1Mi"), Some(&pv("1Mi")), "someone.else/nfs"),
            ResizeDecision::Skip(ResizeSkip::NotOurs)
        );
        let mut deleting = pv("1Mi");
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            decide(&claim("5Mi", "1Mi"), Some(&deleting), ME),
            ResizeDecision::Skip(ResizeSkip::Deleting)
        );
        assert!(wanted(&claim("5Mi", "1Mi"), Some(&pv("1Mi")), ME));
        assert!(!wanted(&claim("5Mi", "5Mi"), Some(&pv("5Mi")), ME));
    }

    #[test]
    fn an_unreadable_size_is_refused() {
        assert_eq!(
            decide(&claim("5Mi", "1Mi"), Some(&pv("lots")), ME),
            ResizeDecision::Refuse(ResizeRefusal::BadSize {
                field: "the PersistentVolume's spec.capacity.storage",
                value: "lots".into()
            })
        );
    }

    #[test]
    fn the_claim_status_patch_finishes_what_newer_api_servers_track() {
        let old = claim("5Mi", "1Mi");
        assert_eq!(
            claim_status_patch(&old, &q("5Mi")),
            json!({ "status": { "capacity": { "storage": "5Mi" } } }),
            "a 1.20 claim: the size only"
        );
        let mut new = claim("5Mi", "1Mi");
        let status = new.status.as_mut().unwrap();
        status.allocated_resources = sizes("5Mi");
        status.allocated_resource_statuses = Some(BTreeMap::from([(
            "storage".to_owned(),
            "ControllerResizeInProgress".to_owned(),
        )]));
        status.conditions = Some(vec![
            PersistentVolumeClaimCondition {
                type_: "Resizing".into(),
                status: "True".into(),
                ..Default::default()
            },
            PersistentVolumeClaimCondition {
                type_: "ModifyingVolume".into(),
                status: "True".into(),
                ..Default::default()
            },
        ]);
        let patch = claim_status_patch(&new, &q("5Mi"));
        assert_eq!(patch["status"]["allocatedResources"], json!({ "storage": "5Mi" }));
        assert_eq!(
            patch["status"]["allocatedResourceStatuses"],
            json!({ "storage": null })
        );
        assert_eq!(patch["status"]["conditions"][0]["type"], "ModifyingVolume");
        assert_eq!(patch["status"]["conditions"].as_array().unwrap().len(), 1);
        assert_eq!(
            pv_patch(&q("5Mi")),
            json!({ "spec": { "capacity": { "storage": "5Mi" } } })
        );
    }
}
