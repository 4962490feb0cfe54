//! How an object sits in a cache: its identity as an `ObjectMeta` (what the reflector keys and
//! the controllers schedule by) and everything else as the JSON of the slimmed object, compressed
//! against a typical object of its kind, decoded again whenever a reconcile or a scan reads it.
//!
//! k8s-openapi's types hold every optional field inline: a `PersistentVolume` is 3.4 KiB before
//! its strings (its spec has a slot for each of some thirty volume sources), 4.8 KiB in all on the
//! heap; a claim 3.2 KiB. Their JSON is 0.9 and 0.6 KiB, mostly field names and values every
//! object of the kind repeats, which LZ4 with a dictionary of one typical object turns into
//! back-references. Packed, a PV and its claim take about 1.7 KiB with their identities and the
//! cache's keys (a heap profile at 10 000), which is what lets 10 000 claims and their PVs stay
//! cached in the memory BENCHMARKS.md states. A read costs a decompression and a decode, a few
//! microseconds; a reconcile reads a constant number of objects, so the cost per claim stays flat.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus, VolumeResourceRequirements,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::core::{annotations, resync};

/// A kind of object the caches pack.
pub trait Pack: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone {
    /// What the periodic resync reads of each cached object without decoding it
    /// ([`crate::core::resync`]).
    type Facts: Copy + Send + Sync + 'static;

    /// The JSON of a typical object of the kind: the compression's dictionary.
    fn dictionary() -> &'static [u8];

    fn facts(&self) -> Self::Facts;
}

/// `K`, cached compactly.
pub struct Packed<K: Pack> {
    /// Name, namespace, uid and resourceVersion only: the identity.
    metadata: ObjectMeta,
    facts: K::Facts,
    body: Body<K>,
}

enum Body<K> {
    /// The object without its identity: JSON, compressed with the kind's dictionary, its length
    /// first.
    Compressed(Box<[u8]>),
    /// Kept whole: its packed form did not decode back (never seen; k8s-openapi's types
    /// round-trip through JSON).
    Whole(Box<K>),
}

impl<K: Pack> Packed<K> {
    pub fn pack(mut object: K) -> Self {
        let facts = object.facts();
        let meta = object.meta_mut();
        let metadata = ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            uid: meta.uid.take(),
            resource_version: meta.resource_version.take(),
            ..ObjectMeta::default()
        };
        let body = match serde_json::to_vec(&object) {
            Ok(json) => {
                let compressed = lz4_flex::block::compress_prepend_size_with_dict(&json, K::dictionary());
                if decompress::<K>(&compressed).is_some() {
                    Body::Compressed(compressed.into_boxed_slice())
                } else {
                    Body::Whole(Box::new(object))
                }
            }
            Err(_) => Body::Whole(Box::new(object)),
        };
        let mut packed = Packed {
            metadata,
            facts,
            body,
        };
        if let Body::Whole(object) = &mut packed.body {
            restore_identity(object.meta_mut(), &packed.metadata);
        }
        packed
    }

    /// What the resync reads of it, taken when it was packed.
    pub fn facts(&self) -> K::Facts {
        self.facts
    }

    /// The object as it was packed.
    pub fn unpack(&self) -> K {
        match &self.body {
            Body::Compressed(compressed) => {
                let mut object = decompress::<K>(compressed)
                    .expect("a packed object was proven to unpack when it was packed");
                restore_identity(object.meta_mut(), &self.metadata);
                object
            }
            Body::Whole(object) => K::clone(object),
        }
    }
}

fn decompress<K: Pack>(compressed: &[u8]) -> Option<K> {
    let json = lz4_flex::block::decompress_size_prepended_with_dict(compressed, K::dictionary()).ok()?;
    serde_json::from_slice(&json).ok()
}

fn restore_identity(meta: &mut ObjectMeta, identity: &ObjectMeta) {
    meta.name.clone_from(&identity.name);
    meta.namespace.clone_from(&identity.namespace);
    meta.uid.clone_from(&identity.uid);
    meta.resource_version.clone_from(&identity.resource_version);
}

/// The cache's key of `object`.
pub fn cache_ref<K: Pack>(object: &K) -> ObjectRef<Packed<K>> {
    let meta = object.meta();
    let name = ObjectRef::new(meta.name.as_deref().unwrap_or_default());
    match meta.namespace.as_deref() {
        Some(namespace) => name.within(namespace),
        None => name,
    }
}

impl<K: Pack> Clone for Packed<K> {
    fn clone(&self) -> Self {
        Packed {
            metadata: self.metadata.clone(),
            facts: self.facts,
            body: match &self.body {
                Body::Compressed(bytes) => Body::Compressed(bytes.clone()),
                Body::Whole(object) => Body::Whole(object.clone()),
            },
        }
    }
}

impl<K: Pack> fmt::Debug for Packed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packed")
            .field("kind", &K::kind(&()))
            .field("namespace", &self.metadata.namespace)
            .field("name", &self.metadata.name)
            .field("resource_version", &self.metadata.resource_version)
            .finish_non_exhaustive()
    }
}

/// Decodes `K` and packs it (kube's controller asks that what it caches can be decoded).
impl<'de, K: Pack> Deserialize<'de> for Packed<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        K::deserialize(deserializer).map(Packed::pack)
    }
}

impl<K: Pack> Resource for Packed<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// The dictionaries: what objects of each kind have in common, as this provisioner and
// kube-controller-manager write them (a dictionary that matches less compresses less; nothing
// depends on it otherwise). Identity fields are left out: they are not in what is compressed.

fn dictionary_of<K: Serialize>(sample: &K) -> Vec<u8> {
    serde_json::to_vec(sample).unwrap_or_default()
}

fn sample_meta(annotations: &[(&str, &str)], finalizers: &[&str]) -> ObjectMeta {
    ObjectMeta {
        creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
        annotations: Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        finalizers: Some(finalizers.iter().map(|f| (*f).to_owned()).collect()),
        ..ObjectMeta::default()
    }
}

const SAMPLE_PROVISIONER: &str = "cluster.local/nfs-subdir-external-provisioner";

impl Pack for PersistentVolume {
    type Facts = resync::VolumeFacts;

    fn facts(&self) -> resync::VolumeFacts {
        resync::volume_facts(self)
    }

    fn dictionary() -> &'static [u8] {
        static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
        DICTIONARY.get_or_init(|| {
            dictionary_of(&PersistentVolume {
                metadata: sample_meta(
                    &[
                        (annotations::PROVISIONED_BY, SAMPLE_PROVISIONER),
                        ("pv.kubernetes.io/bound-by-controller", "yes"),
                        (annotations::DIRECTORY, "default-data-pvc-"),
                        (annotations::ON_DELETE, "archive"),
                    ],
                    &["kubernetes.io/pv-protection", annotations::FINALIZER],
                ),
                spec: Some(PersistentVolumeSpec {
                    capacity: Some([("storage".to_owned(), Quantity("1Gi".into()))].into()),
                    nfs: Some(NFSVolumeSource {
                        server: "nfs.example.com".into(),
                        path: "/export/default-data-pvc-".into(),
                        read_only: None,
                    }),
                    access_modes: Some(vec!["ReadWriteMany".into(), "ReadWriteOnce".into()]),
                    claim_ref: Some(ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("PersistentVolumeClaim".into()),
                        namespace: Some("default".into()),
                        name: Some("data".into()),
                        uid: Some("00000000-0000-0000-0000-000000000000".into()),
                        resource_version: Some("1".into()),
                        ..ObjectReference::default()
                    }),
                    persistent_volume_reclaim_policy: Some("Delete".into()),
                    storage_class_name: Some("nfs-client".into()),
                    mount_options: Some(vec!["nfsvers=4.1".into(), "hard".into()]),
                    volume_mode: Some("Filesystem".into()),
                    ..PersistentVolumeSpec::default()
                }),
                status: Some(PersistentVolumeStatus {
                    phase: Some("Bound".into()),
                    ..PersistentVolumeStatus::default()
                }),
            })
        })
    }
}

impl Pack for PersistentVolumeClaim {
    type Facts = resync::ClaimFacts;

    fn facts(&self) -> resync::ClaimFacts {
        resync::claim_facts(self)
    }

    fn dictionary() -> &'static [u8] {
        static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
        DICTIONARY.get_or_init(|| {
            dictionary_of(&PersistentVolumeClaim {
                metadata: sample_meta(
                    &[
                        ("pv.kubernetes.io/bind-completed", "yes"),
                        ("pv.kubernetes.io/bound-by-controller", "yes"),
                        (annotations::STORAGE_PROVISIONER_BETA, SAMPLE_PROVISIONER),
                        (annotations::STORAGE_PROVISIONER, SAMPLE_PROVISIONER),
                    ],
                    &["kubernetes.io/pvc-protection"],
                ),
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteMany".into(), "ReadWriteOnce".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some([("storage".to_owned(), Quantity("1Gi".into()))].into()),
                        ..VolumeResourceRequirements::default()
                    }),
                    volume_name: Some("pvc-00000000-0000-0000-0000-000000000000".into()),
                    storage_class_name: Some("nfs-client".into()),
                    volume_mode: Some("Filesystem".into()),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: Some(PersistentVolumeClaimStatus {
                    phase: Some("Bound".into()),
                    capacity: Some([("storage".to_owned(), Quantity("1Gi".into()))].into()),
                    ..PersistentVolumeClaimStatus::default()
                }),
            })
        })
    }
}

impl Pack for StorageClass {
    type Facts = ();

    fn facts(&self) {}

    fn dictionary() -> &'static [u8] {
        static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
        DICTIONARY.get_or_init(|| {
            dictionary_of(&StorageClass {
                metadata: sample_meta(&[], &[]),
                provisioner: SAMPLE_PROVISIONER.into(),
                parameters: Some(
                    [
                        ("archiveOnDelete".to_owned(), "true".to_owned()),
                        ("onDelete".to_owned(), "archive".to_owned()),
                        (
                            "pathPattern".to_owned(),
                            "${.PVC.namespace}/${.PVC.name}".to_owned(),
                        ),
                    ]
                    .into(),
                ),
                reclaim_policy: Some("Delete".into()),
                volume_binding_mode: Some("Immediate".into()),
                allow_volume_expansion: Some(true),
                mount_options: Some(vec!["nfsvers=4.1".into()]),
                ..StorageClass::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
        PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus, TypedLocalObjectReference,
        VolumeResourceRequirements,
    };
    use k8s_openapi::api::storage::v1::StorageClass;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn meta(name: &str, namespace: Option<&str>, annotations: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            uid: Some("6a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9".into()),
            resource_version: Some("1234567".into()),
            creation_timestamp: Some(Time("2026-12-05T12:00:00Z".parse().expect("a time"))),
            deletion_timestamp: None,
            finalizers: Some(vec!["kubernetes.io/pv-protection".into()]),
            labels: Some(BTreeMap::from([("team".into(), "a".into())])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }
    }

    fn pv(name: &str, annotations: BTreeMap<String, String>, path: &str, phase: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: meta(name, None, annotations),
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                nfs: Some(NFSVolumeSource {
                    server: "127.0.0.1".into(),
                    path: path.into(),
                    read_only: None,
                }),
                access_modes: Some(vec!["ReadWriteMany".into()]),
                claim_ref: Some(ObjectReference {
                    namespace: Some("team-a".into()),
                    name: Some("data".into()),
                    uid: Some("3f0b6c1e-8f8e-4a55-9d3e-1b2c3d4e5f60".into()),
                    ..ObjectReference::default()
                }),
                persistent_volume_reclaim_policy: Some("Delete".into()),
                storage_class_name: Some("nfs".into()),
                mount_options: Some(vec!["nfsvers=3".into(), "hard".into()]),
                volume_mode: Some("Filesystem".into()),
                ..PersistentVolumeSpec::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..PersistentVolumeStatus::default()
            }),
        }
    }

    fn claim(name: &str, annotations: BTreeMap<String, String>, request: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: meta(name, Some("team-a"), annotations),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity(request.into()))])),
                    ..VolumeResourceRequirements::default()
                }),
                storage_class_name: Some("nfs".into()),
                data_source: Some(TypedLocalObjectReference {
                    kind: "PersistentVolumeClaim".into(),
                    name: "source".into(),
                    api_group: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Pending".into()),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }

    fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
        // Hostile values too: quotes, escapes, non-ASCII, control characters.
        prop::collection::btree_map("[a-z./-]{1,40}", "\\PC{0,60}|[\"\\\\\n\t\u{0}]{0,4}", 0..6)
    }

    proptest! {
        #[test]
        fn a_packed_object_unpacks_to_the_object(
            annotations in annotations(),
            name in "[a-z0-9-]{1,63}",
            path in "\\PC{0,80}",
            phase in "Pending|Bound|Released|Failed",
            request in "[0-9]{1,4}(Mi|Gi|Ti)?",
        ) {
            let volume = pv(&name, annotations.clone(), &path, &phase);
            let packed = Packed::pack(volume.clone());
            prop_assert_eq!(packed.unpack(), volume.clone());
            prop_assert_eq!(packed.clone().unpack(), volume);

            let claim = claim(&name, annotations, &request);
            let packed = Packed::pack(claim.clone());
            prop_assert_eq!(packed.unpack(), claim);
        }
    }

    #[test]
    fn the_cache_knows_a_packed_object_by_its_identity() {
        let claim = claim("data", BTreeMap::new(), "1Gi");
        let packed = Packed::pack(claim.clone());
        assert_eq!(packed.meta().name.as_deref(), Some("data"));
        assert_eq!(packed.meta().namespace.as_deref(), Some("team-a"));
        assert_eq!(packed.meta().uid, claim.metadata.uid);
        assert_eq!(packed.meta().resource_version, claim.metadata.resource_version);
        assert_eq!(ObjectRef::from_obj(&packed), cache_ref(&claim));
        assert_eq!(
            ObjectRef::from_obj(&packed),
            ObjectRef::new("data").within("team-a")
        );
        let reference = packed.object_ref(&());
        assert_eq!(reference.kind.as_deref(), Some("PersistentVolumeClaim"));
        assert_eq!(reference.api_version.as_deref(), Some("v1"));
        assert_eq!(
            reference.uid, claim.metadata.uid,
            "Events name the claim they are about"
        );
        assert_eq!(Packed::<StorageClass>::plural(&()), "storageclasses");
        assert_eq!(Packed::<StorageClass>::group(&()), "storage.k8s.io");
    }

    #[test]
    fn a_decoded_object_is_packed() {
        let volume = pv("pvc-1", BTreeMap::new(), "/export/a", "Bound");
        let json = serde_json::to_string(&volume).expect("encodes");
        let packed: Packed<PersistentVolume> = serde_json::from_str(&json).expect("decodes");
        assert!(matches!(packed.body, Body::Compressed(_)));
        assert_eq!(packed.unpack(), volume);
    }

    /// What packing is for: a fraction of the type's inline size alone, and of the JSON.
    #[test]
    fn a_packed_volume_is_a_fraction_of_the_type() {
        let annotations = BTreeMap::from([
            (
                "pv.kubernetes.io/provisioned-by".to_owned(),
                "cluster.local/nfs-subdir-external-provisioner".to_owned(),
            ),
            (
                "nfs-subdir-provisioner/directory".to_owned(),
                "team-a-data-pvc-3f0b6c1e".to_owned(),
            ),
        ]);
        let packed = Packed::pack(pv(
            "pvc-3f0b6c1e-8f8e-4a55-9d3e-1b2c3d4e5f60",
            annotations,
            "/export/team-a-data-pvc-3f0b6c1e",
            "Bound",
        ));
        let Body::Compressed(compressed) = &packed.body else {
            panic!("packed compressed");
        };
        let json = serde_json::to_vec(&packed.unpack()).expect("encodes");
        assert!(
            compressed.len() < json.len() / 2,
            "{} bytes from {} of JSON",
            compressed.len(),
            json.len()
        );
        assert!(
            compressed.len() + std::mem::size_of::<Packed<PersistentVolume>>()
                < std::mem::size_of::<PersistentVolume>() / 4,
            "{} bytes",
            compressed.len()
        );
    }
}
