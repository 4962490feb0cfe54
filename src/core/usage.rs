//! Volume usage: which volumes the leader measures ([`measured_claim`]), and when a measurement
//! crosses the claim's request ([`crossing`]), told once per crossing through a mark on the PV.

use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::{Value, json};

use crate::core::annotations::OVER_CAPACITY;
use crate::core::quantity;
use crate::core::volume::is_ours;

/// A measurement crossed the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// It takes more than its claim asks for (it was within).
    Over,
    /// It is back within (it was over).
    Within,
}

/// The claim (namespace, name) of a PV of ours that is measured: bound to it and not being deleted.
pub fn measured_claim(pv: &PersistentVolume, provisioner: &str) -> Option<(String, String)> {
    if !is_ours(pv, provisioner) || pv.metadata.deletion_timestamp.is_some() {
        return None;
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return None;
    }
    let claim = pv.spec.as_ref()?.claim_ref.as_ref()?;
    Some((claim.namespace.clone()?, claim.name.clone()?))
}

/// The size the PV records (its claim's request, or more after a resize), in bytes.
pub fn capacity(pv: &PersistentVolume) -> Option<u64> {
    let q = pv.spec.as_ref()?.capacity.as_ref()?.get("storage")?;
    u64::try_from(quantity::bytes(&q.0)?).ok()
}

pub fn is_marked_over(pv: &PersistentVolume) -> bool {
    pv.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.get(OVER_CAPACITY).is_some_and(|v| v == "true"))
}

/// Whether `used` bytes cross `capacity`, given whether the PV is marked over it already.
pub fn crossing(marked_over: bool, used: u64, capacity: Option<u64>) -> Option<Crossing> {
    let over = used > capacity?;
    match (marked_over, over) {
        (false, true) => Some(Crossing::Over),
        (true, false) => Some(Crossing::Within),
        _ => None,
    }
}

/// The merge patch that marks (or unmarks) a PV as over its capacity.
pub fn mark_patch(over: bool) -> Value {
    let value = if over { json!("true") } else { Value::Null };
    json!({ "metadata": { "annotations": { OVER_CAPACITY: value } } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::annotations::PROVISIONED_BY;
    use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeSpec, PersistentVolumeStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn pv(phase: &str, by: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pvc-1".into()),
                annotations: Some(BTreeMap::from([(PROVISIONED_BY.into(), by.into())])),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Mi".into()))])),
                claim_ref: Some(ObjectReference {
                    namespace: Some("team".into()),
                    name: Some("data".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn bound_volumes_of_ours_are_measured_for_their_claim() {
        assert_eq!(
            measured_claim(&pv("Bound", "me"), "me"),
            Some(("team".into(), "data".into()))
        );
        assert_eq!(measured_claim(&pv("Released", "me"), "me"), None);
        assert_eq!(measured_claim(&pv("Bound", "other"), "me"), None);
        assert_eq!(capacity(&pv("Bound", "me")), Some(1024 * 1024));
    }

    #[test]
    fn each_crossing_is_told_once_and_nothing_else() {
        let mib = Some(1024 * 1024);
        assert_eq!(crossing(false, 2 * 1024 * 1024, mib), Some(Crossing::Over));
        assert_eq!(crossing(true, 2 * 1024 * 1024, mib), None);
        assert_eq!(
            crossing(true, 1024 * 1024, mib),
            Some(Crossing::Within),
            "exactly full is within"
        );
        assert_eq!(crossing(false, 10, mib), None);
        assert_eq!(
            crossing(false, u64::MAX, None),
            None,
            "no capacity, nothing to cross"
        );
        let mut marked = pv("Bound", "me");
        assert!(!is_marked_over(&marked));
        marked
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(OVER_CAPACITY.into(), "true".into());
        assert!(is_marked_over(&marked));
        assert_eq!(
            mark_patch(false)["metadata"]["annotations"][OVER_CAPACITY],
            Value::Null
        );
    }
}
