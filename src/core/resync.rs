//! What the periodic resync can rule out from a few facts kept beside each cached object, without
//! decoding it. Every minute the resync asks of every cached claim and PV whether it waits for us;
//! with 10 000 of each nearly all are bound and settled, and decoding each one (and a bound
//! claim's PV too, for a resize) to find that out was three decodes per claim per minute, which at
//! kube-controller-manager's default pace (35 minutes to bind 10 000 claims) grew the CPU per claim
//! with the number of claims. The facts are the object's own, whoever's it is (they are taken when
//! the object is cached, where the provisioner's name is not known); each one that rules a claim
//! or PV out is a necessary condition of the resync's full test, which a property test holds them to.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use super::annotations::{STORAGE_PROVISIONER, STORAGE_PROVISIONER_BETA};
use super::{claim, clone, quantity, volume};

/// A cached claim's facts for the resync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimFacts {
    /// Not being deleted, bound to no volume, and handed to a provisioner: it may wait for ours.
    pub may_await_provisioner: bool,
    /// Holds a cloning protection, which may be ours to release.
    pub protected: bool,
    /// Names a volume: a resize may be due.
    pub bound: bool,
    /// Bound to `pvc-<its uid>`, phase Bound, not being deleted, and its request the capacity its
    /// status records: that size in bytes. A resize is due only if its volume holds another size.
    pub settled_bytes: Option<u64>,
}

/// A cached PV's facts for the resync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeFacts {
    /// Bound, not being deleted, and protected exactly when its reclaim policy is Delete: whoever's
    /// it is, nothing for the volume controller.
    pub settled: bool,
    /// `spec.capacity.storage`, in bytes.
    pub held_bytes: Option<u64>,
}

pub fn claim_facts(claim: &PersistentVolumeClaim) -> ClaimFacts {
    let meta = &claim.metadata;
    let deleting = meta.deletion_timestamp.is_some();
    let spec = claim.spec.as_ref();
    let volume = spec
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    let handed_over = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STORAGE_PROVISIONER) || a.contains_key(STORAGE_PROVISIONER_BETA));
    let status = claim.status.as_ref();
    let own_volume = claim::pv_name(claim);
    let requested = spec
        .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
        .map(|q| q.0.as_str());
    let recorded = status
        .and_then(|s| s.capacity.as_ref()?.get("storage"))
        .map(|q| q.0.as_str());
    let settled = !deleting
        && volume.is_some()
        && volume == own_volume.as_deref()
        && status.and_then(|s| s.phase.as_deref()) == Some("Bound")
        && requested.is_some()
        && requested == recorded;
    ClaimFacts {
        may_await_provisioner: !deleting && volume.is_none() && handed_over,
        protected: clone::is_protected(claim),
        bound: volume.is_some(),
        settled_bytes: requested.filter(|_| settled).and_then(bytes),
    }
}

pub fn volume_facts(pv: &PersistentVolume) -> VolumeFacts {
    let meta = &pv.metadata;
    let spec = pv.spec.as_ref();
    let protected = volume::is_protected(pv);
    let reclaim_delete = spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
    let bound = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    VolumeFacts {
        settled: bound && meta.deletion_timestamp.is_none() && protected == reclaim_delete,
        held_bytes: spec
            .and_then(|s| s.capacity.as_ref()?.get("storage"))
            .and_then(|q| bytes(&q.0)),
    }
}

fn bytes(quantity: &str) -> Option<u64> {
    u64::try_from(quantity::bytes(quantity)?).ok()
}

/// Whether a claim with `facts` may wait for the resync: `false` only where its full test
/// (`claims::waiting_for_us`) is false too. `own_volume`: the facts of its `pvc-<uid>` PV, if
/// cached (`volume_made`).
pub fn claim_may_wait(facts: ClaimFacts, own_volume: Option<VolumeFacts>) -> bool {
    let resize_settled = matches!(
        (facts.settled_bytes, own_volume.and_then(|v| v.held_bytes)),
        (Some(asked), Some(held)) if asked == held
    );
    (facts.may_await_provisioner && own_volume.is_none())
        || facts.protected
        || (facts.bound && !resize_settled)
}

/// Whether a PV with `facts` may wait for the resync: `false` only where its full test
/// (`volume::awaits_release`) is false too.
pub fn volume_may_wait(facts: VolumeFacts) -> bool {
    !facts.settled
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec,
        PersistentVolumeStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use proptest::prelude::*;

    use super::*;
    use crate::core::annotations::{CLONING_PROTECTION, FINALIZER, PROVISIONED_BY, RELEASED};
    use crate::core::resize;

    const ME: &str = "example.com/nfs";
    const UID: &str = "1111-2222";

    fn sizes() -> impl Strategy<Value = Option<String>> {
        proptest::option::weighted(
            0.9,
            prop::sample::select(vec!["1Gi", "1073741824", "2Gi", "bogus"]),
        )
        .prop_map(|s| s.map(str::to_owned))
    }

    fn storage(size: Option<String>) -> Option<BTreeMap<String, Quantity>> {
        size.map(|s| [("storage".to_owned(), Quantity(s))].into())
    }

    fn when(deleting: bool) -> Option<Time> {
        deleting.then_some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
    }

    prop_compose! {
        fn claims()(
            deleting in prop::bool::weighted(0.2),
            volume in proptest::option::weighted(0.9, prop::sample::select(vec!["", "pvc-1111-2222", "pvc-1111-2222", "static-pv"])),
            provisioner in proptest::option::of(prop::sample::select(vec![ME, "other.io/x"])),
            beta in any::<bool>(),
            protected in any::<bool>(),
            phase in proptest::option::weighted(0.9, prop::sample::select(vec!["Bound", "Bound", "Pending", "Lost"])),
            requested in sizes(),
            recorded in sizes(),
            // A resize done: what the status records is what was asked.
            done in any::<bool>(),
        ) -> PersistentVolumeClaim {
            let recorded = if done { requested.clone() } else { recorded };
            let key = if beta { STORAGE_PROVISIONER_BETA } else { STORAGE_PROVISIONER };
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("c".into()),
                    namespace: Some("ns".into()),
                    uid: Some(UID.into()),
                    deletion_timestamp: when(deleting),
                    annotations: provisioner.map(|p| [(key.to_owned(), p.to_owned())].into()),
                    finalizers: protected.then(|| vec![CLONING_PROTECTION.to_owned()]),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    volume_name: volume.map(str::to_owned),
                    resources: Some(VolumeResourceRequirements {
                        requests: storage(requested),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: Some(PersistentVolumeClaimStatus {
                    phase: phase.map(str::to_owned),
                    capacity: storage(recorded),
                    ..PersistentVolumeClaimStatus::default()
                }),
            }
        }
    }

    prop_compose! {
        fn volumes()(
            ours in prop::bool::weighted(0.8),
            deleting in prop::bool::weighted(0.2),
            protected in any::<bool>(),
            released in any::<bool>(),
            reclaim in proptest::option::of(prop::sample::select(vec!["Delete", "Retain", "Recycle"])),
            phase in proptest::option::of(prop::sample::select(vec!["Bound", "Released", "Available", "Failed"])),
            held in sizes(),
            claim_uid in proptest::option::weighted(0.9, prop::sample::select(vec![UID, UID, "other-uid"])),
        ) -> PersistentVolume {
            let mut annotations = BTreeMap::new();
            annotations.insert(PROVISIONED_BY.to_owned(), if ours { ME } else { "other.io/x" }.to_owned());
            if released {
                annotations.insert(RELEASED.to_owned(), "true".to_owned());
            }
            PersistentVolume {
                metadata: ObjectMeta {
                    name: Some(format!("pvc-{UID}")),
                    deletion_timestamp: when(deleting),
                    annotations: Some(annotations),
                    finalizers: protected.then(|| vec![FINALIZER.to_owned()]),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeSpec {
                    persistent_volume_reclaim_policy: reclaim.map(str::to_owned),
                    capacity: storage(held),
                    claim_ref: Some(ObjectReference {
                        uid: claim_uid.map(str::to_owned),
                        ..ObjectReference::default()
                    }),
                    ..PersistentVolumeSpec::default()
                }),
                status: Some(PersistentVolumeStatus {
                    phase: phase.map(str::to_owned),
                    ..PersistentVolumeStatus::default()
                }),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// A claim ruled out by its facts is one the full test finds nothing to do for: not
        /// awaiting provisioning, no resize wanted with its volume as it is, no cloning protection.
        #[test]
        fn a_claim_ruled_out_by_its_facts_has_nothing_for_us(
            c in claims(),
            own in proptest::option::weighted(0.8, volumes()),
            other in proptest::option::of(volumes()),
        ) {
            let other = other.map(|mut pv| {
                pv.metadata.name = Some("static-pv".into());
                pv
            });
            // The resize looks at the PV the claim names; the facts at its own, `pvc-<uid>`.
            let named = match resize::volume_name(&c) {
                Some("static-pv") => other.as_ref(),
                Some(_) => own.as_ref(),
                None => None,
            };
            let facts = claim_facts(&c);
            if !claim_may_wait(facts, own.as_ref().map(volume_facts)) {
                prop_assert!(!claim::awaits_provisioning(&c, ME, own.is_some()), "{c:?}");
                prop_assert!(!resize::wanted(&c, named, ME), "{c:?} {named:?}");
                prop_assert!(!crate::core::clone::is_protected(&c));
            }
        }

        /// A PV ruled out by its facts is one the volume controller has nothing to do for.
        #[test]
        fn a_volume_ruled_out_by_its_facts_has_nothing_for_us(pv in volumes()) {
            if !volume_may_wait(volume_facts(&pv)) {
                prop_assert!(!volume::awaits_release(&pv, ME), "{pv:?}");
            }
        }
    }

    /// The facts do rule out what matters: a settled bound claim and its settled volume.
    #[test]
    fn a_settled_bound_claim_and_its_volume_are_ruled_out() {
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                uid: Some(UID.into()),
                annotations: Some([(STORAGE_PROVISIONER.to_owned(), ME.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some(format!("pvc-{UID}")),
                resources: Some(VolumeResourceRequirements {
                    requests: storage(Some("1Gi".into())),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Bound".into()),
                capacity: storage(Some("1Gi".into())),
                ..PersistentVolumeClaimStatus::default()
            }),
        };
        let pv = PersistentVolume {
            metadata: ObjectMeta {
                finalizers: Some(vec![FINALIZER.to_owned()]),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                persistent_volume_reclaim_policy: Some("Delete".into()),
                capacity: storage(Some("1073741824".into())),
                ..PersistentVolumeSpec::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some("Bound".into()),
                ..PersistentVolumeStatus::default()
            }),
        };
        let volume = volume_facts(&pv);
        assert!(!volume_may_wait(volume));
        assert!(!claim_may_wait(claim_facts(&claim), Some(volume)));
        // Unbound and handed over, its volume not made yet: it may wait.
        let mut pending = claim.clone();
        pending.spec.as_mut().unwrap().volume_name = None;
        assert!(claim_may_wait(claim_facts(&pending), None));
        assert!(!claim_may_wait(claim_facts(&pending), Some(volume)));
        // Bound to a PV other than its own: its own's facts say nothing of that one's size.
        let mut elsewhere = claim.clone();
        elsewhere.spec.as_mut().unwrap().volume_name = Some("static-pv".into());
        assert!(claim_may_wait(claim_facts(&elsewhere), Some(volume)));
        // Asking for more than its volume holds: it may wait.
        let mut growing = claim;
        growing
            .spec
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .requests = storage(Some("2Gi".into()));
        assert!(claim_may_wait(claim_facts(&growing), Some(volume)));
    }
}
