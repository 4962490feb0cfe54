//! The PersistentVolume written for a claim: the fields nfs-subdir-external-provisioner writes,
//! plus annotations recording what release needs, so release works after the StorageClass is
//! edited or deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::core::annotations::{CLONED_FROM, DIRECTORY, FINALIZER, ON_DELETE, PROVISIONED_BY};
use crate::core::naming::{VolumePath, server_path};
use crate::core::params::OnDelete;

pub use crate::core::export::Export;

pub struct PvInputs<'a> {
    pub name: &'a str,
    pub claim: &'a PersistentVolumeClaim,
    pub class: &'a StorageClass,
    pub provisioner: &'a str,
    pub export: &'a Export,
    pub path: &'a VolumePath,
    pub on_delete: OnDelete,
    pub capacity: Quantity,
    /// A clone: the claim (of the same namespace) it is a copy of.
    pub source: Option<&'a str>,
}

pub fn build(input: &PvInputs<'_>) -> PersistentVolume {
    let claim = input.claim;
    let spec = claim.spec.clone().unwrap_or_default();
    let mut annotations = BTreeMap::from([
        (PROVISIONED_BY.to_owned(), input.provisioner.to_owned()),
        (DIRECTORY.to_owned(), input.path.to_string()),
        (ON_DELETE.to_owned(), input.on_delete.as_str().to_owned()),
    ]);
    if let Some(source) = input.source {
        let namespace = claim.metadata.namespace.as_deref().unwrap_or_default();
        annotations.insert(CLONED_FROM.to_owned(), format!("{namespace}/{source}"));
    }
    let reclaim_policy = input
        .class
        .reclaim_policy
        .clone()
        .unwrap_or_else(|| "Delete".into());
    // Deletion protection from the start: the PV cannot go before its directory is released.
    let finalizers = (reclaim_policy == "Delete").then(|| vec![FINALIZER.to_owned()]);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(input.name.to_owned()),
            annotations: Some(annotations),
            finalizers,
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes,
            capacity: Some(BTreeMap::from([("storage".to_owned(), input.capacity.clone())])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            }),
            mount_options: input.class.mount_options.clone(),
            nfs: Some(NFSVolumeSource {
                server: input.export.server.clone(),
                path: server_path(&input.export.path, input.path),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some(reclaim_policy),
            storage_class_name: input.class.metadata.name.clone(),
            volume_mode: Some("Filesystem".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pv_carries_nfs_source_claim_ref_class_settings_and_records() {
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("team".into()),
                uid: Some("u1".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let class = StorageClass {
            metadata: ObjectMeta {
                name: Some("nfs".into()),
                ..Default::default()
            },
            mount_options: Some(vec!["nfsvers=4.1".into()]),
            reclaim_policy: Some("Retain".into()),
            ..Default::default()
        };
        let export = Export {
            server: "nfs.example".into(),
            path: "/".into(),
        };
        let path = VolumePath::parse("team/data").unwrap();
        let pv = build(&PvInputs {
            name: "pvc-u1",
            claim: &claim,
            class: &class,
            provisioner: "p",
            export: &export,
            path: &path,
            on_delete: OnDelete::Retain,
            capacity: Quantity("5Gi".into()),
            source: None,
        });
        let spec = pv.spec.unwrap();
        let nfs = spec.nfs.unwrap();
        assert_eq!(
            (nfs.server.as_str(), nfs.path.as_str()),
            ("nfs.example", "/team/data")
        );
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));
        assert_eq!(spec.mount_options, Some(vec!["nfsvers=4.1".to_owned()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("5Gi".into()));
        let claim_ref = spec.claim_ref.unwrap();
        assert_eq!(claim_ref.uid.as_deref(), Some("u1"));
        assert_eq!(claim_ref.namespace.as_deref(), Some("team"));
        assert_eq!(pv.metadata.finalizers, None, "a Retain volume is not protected");
        let annotations = pv.metadata.annotations.unwrap();
        assert_eq!(annotations[ON_DELETE], "retain");
        assert_eq!(annotations[DIRECTORY], "team/data");
    }

    #[test]
    fn reclaim_policy_defaults_to_delete() {
        let pv = build(&PvInputs {
            name: "pvc-u1",
            claim: &PersistentVolumeClaim::default(),
            class: &StorageClass::default(),
            provisioner: "p",
            export: &Export {
                server: "s".into(),
                path: "/e".into(),
            },
            path: &VolumePath::parse("d").unwrap(),
            on_delete: OnDelete::Archive,
            capacity: Quantity("1".into()),
            source: None,
        });
        assert_eq!(
            pv.spec.unwrap().persistent_volume_reclaim_policy.as_deref(),
            Some("Delete")
        );
        assert_eq!(pv.metadata.finalizers, Some(vec![FINALIZER.to_owned()]));
    }
}
