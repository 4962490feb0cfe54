//! Provisioning end to end: claim → directory → PV → Bound, and refusals of bad input.

use anyhow::ensure;
use serde_json::json;

use super::fixture::{Env, WAIT, entries, mode_of};
use crate::support::{E2eTrial, poll_until, trial};

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial("provision_binds_claims_with_nfs_subdir_names", |t| async move {
            let env = Env::new(&t, "provision").await?;
            let _p = env.start(&[])?;
            let class = env
                .class("nfs", &[], json!({ "mountOptions": ["nfsvers=4.1"] }))
                .await?;
            env.claim("data", Some(&class), json!({})).await?;
            // StatefulSet-style claims: <template>-<statefulset>-<ordinal>.
            env.claim("www-web-0", Some(&class), json!({})).await?;
            env.claim("www-web-1", Some(&class), json!({})).await?;

            for claim in ["data", "www-web-0", "www-web-1"] {
                let pv = env.wait_bound(claim).await?;
                let uid = env.claims().get(claim).await?.metadata.uid.unwrap_or_default();
                let pv_name = pv.metadata.name.clone().unwrap_or_default();
                ensure!(
                    pv_name == format!("pvc-{uid}"),
                    "PV name {pv_name} is not pvc-<uid>"
                );
                let dir = format!("{}-{claim}-{pv_name}", env.ns);
                let spec = pv.spec.clone().unwrap_or_default();
                let nfs = spec.nfs.clone().unwrap_or_default();
                ensure!(
                    nfs.path == format!("{}/{dir}", env.nfs_path),
                    "nfs path {}",
                    nfs.path
                );
                ensure!(spec.mount_options == Some(vec!["nfsvers=4.1".into()]));
                ensure!(spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete"));
                let annotations = pv.metadata.annotations.clone().unwrap_or_default();
                ensure!(annotations.get("pv.kubernetes.io/provisioned-by") == Some(&env.provisioner));
                ensure!(annotations.get("nfs-subdir-provisioner/directory") == Some(&dir));
                ensure!(
                    annotations
                        .get("nfs-subdir-provisioner/on-delete")
                        .map(String::as_str)
                        == Some("archive")
                );
                let path = env.export.join(&dir);
                ensure!(path.is_dir(), "{} missing", path.display());
                ensure!(mode_of(&path)? == 0o777, "mode {:o}", mode_of(&path)?);
                env.wait_event(&env.ns, claim, "ProvisioningSucceeded").await?;
            }
            ensure!(
                entries(&env.export)?.len() == 3,
                "export holds {:?}",
                entries(&env.export)?
            );
            Ok(())
        }),
        trial("claim_without_class_uses_the_default_class", |t| async move {
            let env = Env::new(&t, "default-class").await?;
            let _p = env.start(&[])?;
            let class = env
                .class("default", &[], json!({
                    "metadata": { "annotations": { "storageclass.kubernetes.io/is-default-class": "true" } }
                }))
                .await?;
            let result = async {
                // The API server's admission defaults a claim's class from its own StorageClass
                // informer, which may not have seen a class made a moment ago: a claim created
                // before then has no class, for good. Claims are created until one gets it.
                let mut attempt = 0;
                let plain = poll_until(
                    "the API server to give a new claim the default class",
                    WAIT,
                    || {
                        attempt += 1;
                        let name = format!("plain-{attempt}");
                        let env = &env;
                        async move {
                            let claim = env.claim(&name, None, json!({})).await?;
                            Ok(claim
                                .spec
                                .and_then(|s| s.storage_class_name)
                                .is_some()
                                .then_some(name))
                        }
                    },
                )
                .await?;
                let pv = env.wait_bound(&plain).await?;
                ensure!(pv.spec.and_then(|s| s.storage_class_name).as_deref() == Some(class.as_str()));
                Ok(())
            }
            .await;
            // Never leave a default class behind for the other trials.
            env.classes().delete(&class, &Default::default()).await?;
            result
        }),
        trial("path_pattern_with_labels_annotations_and_mode", |t| async move {
            let env = Env::new(&t, "pattern").await?;
            let _p = env.start(&[])?;
            let pattern = "/${.PVC.namespace}/${.PVC.labels.app}/${.PVC.annotations.nfs.io/storage-path}";
            let class = env
                .class(
                    "pattern",
                    &[("pathPattern", pattern), ("mode", "2770"), ("gid", "2000")],
                    json!({}),
                )
                .await?;
            env.claim(
                "db",
                Some(&class),
                json!({ "metadata": {
                    "labels": { "app": "postgres" },
                    "annotations": { "nfs.io/storage-path": "pgdata" }
                }}),
            )
            .await?;
            let pv = env.wait_bound("db").await?;
            let dir = env.dir_of(&pv)?;
            ensure!(
                dir == env.export.join(&env.ns).join("postgres").join("pgdata"),
                "{}",
                dir.display()
            );
            ensure!(mode_of(&dir)? == 0o2770, "mode {:o}", mode_of(&dir)?);
            use std::os::unix::fs::MetadataExt;
            ensure!(std::fs::metadata(&dir)?.gid() == 2000);
            Ok(())
        }),
        trial("names_over_255_bytes_are_shortened_uniquely", |t| async move {
            let env = Env::new(&t, "long").await?;
            let _p = env.start(&[])?;
            let class = env.class("nfs", &[], json!({})).await?;
            let a = format!("{}-a", "x".repeat(240));
            let b = format!("{}-b", "x".repeat(240));
            env.claim(&a, Some(&class), json!({})).await?;
            env.claim(&b, Some(&class), json!({})).await?;
            let da = env.dir_of(&env.wait_bound(&a).await?)?;
            let db = env.dir_of(&env.wait_bound(&b).await?)?;
            for d in [&da, &db] {
                let name = d.file_name().unwrap_or_default().len();
                ensure!(name <= 255 && d.is_dir(), "{} ({name} bytes)", d.display());
            }
            ensure!(da != db);
            Ok(())
        }),
        trial(
            "hostile_path_values_are_refused_and_nothing_is_written",
            |t| async move {
                let env = Env::new(&t, "hostile").await?;
                let _p = env.start(&[])?;
                let outside = env.export.parent().unwrap_or(&env.export).to_owned();
                let before = entries(&outside)?;
                let class = env
                    .class(
                        "pattern",
                        &[("pathPattern", "${.PVC.namespace}/${.PVC.annotations.dir}")],
                        json!({}),
                    )
                    .await?;
                let hostile = [
                    ("dotdot", "../../escaped"),
                    ("abs", "/etc"),
                    ("dot", ".."),
                    ("missing", ""),
                ];
                for (claim, value) in hostile {
                    let annotations = if value.is_empty() {
                        json!({})
                    } else {
                        json!({ "dir": value })
                    };
                    env.claim(
                        claim,
                        Some(&class),
                        json!({ "metadata": { "annotations": annotations } }),
                    )
                    .await?;
                }
                for (claim, value) in hostile {
                    let event = env.wait_event(&env.ns, claim, "ProvisioningFailed").await?;
                    let note = event.note.unwrap_or_default();
                    let named = if value.is_empty() {
                        note.contains("\"dir\"")
                    } else {
                        note.contains(value)
                    };
                    ensure!(named, "event for {claim} does not name {value:?}: {note}");
                }
                // A good claim after them proves the provisioner went past the bad ones.
                env.claim(
                    "good",
                    Some(&class),
                    json!({ "metadata": { "annotations": { "dir": "fine" } } }),
                )
                .await?;
                env.wait_bound("good").await?;
                for (claim, _) in hostile {
                    let c = env.claims().get(claim).await?;
                    ensure!(
                        c.status.and_then(|s| s.phase).as_deref() == Some("Pending"),
                        "{claim} not Pending"
                    );
                }
                ensure!(
                    entries(&outside)? == before,
                    "something was written next to the export"
                );
                ensure!(
                    entries(&env.export)? == [env.ns.clone()].into(),
                    "{:?}",
                    entries(&env.export)?
                );
                ensure!(super::fixture::entries(&env.export.join(&env.ns))? == ["fine".to_owned()].into());
                Ok(())
            },
        ),
        trial("unsupported_claims_are_refused_with_events", |t| async move {
            let env = Env::new(&t, "refused").await?;
            let _p = env.start(&[])?;
            let class = env.class("nfs", &[], json!({})).await?;
            env.claim(
                "block",
                Some(&class),
                json!({ "spec": { "volumeMode": "Block" } }),
            )
            .await?;
            env.claim(
                "selector",
                Some(&class),
                json!({ "spec": { "selector": { "matchLabels": { "a": "b" } } } }),
            )
            .await?;
            env.claim("source", Some(&class), json!({})).await?;
            env.claim(
                "snapshot",
                Some(&class),
                json!({ "spec": { "dataSource": {
                    "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap",
                } } }),
            )
            .await?;
            for (claim, words) in [
                ("block", "Block"),
                ("selector", "selector"),
                ("snapshot", "VolumeSnapshot"),
            ] {
                let note = env
                    .wait_event(&env.ns, claim, "ProvisioningFailed")
                    .await?
                    .note
                    .unwrap_or_default();
                ensure!(note.contains(words), "{claim}: {note}");
            }
            let typo = env
                .class("typo", &[("archiveOndelete", "false")], json!({}))
                .await?;
            env.claim("typo", Some(&typo), json!({})).await?;
            let note = env
                .wait_event(&env.ns, "typo", "ProvisioningFailed")
                .await?
                .note
                .unwrap_or_default();
            ensure!(note.contains("\"archiveOndelete\""), "{note}");
            env.wait_bound("source").await?;
            ensure!(
                entries(&env.export)?.len() == 1,
                "only the plain claim has a directory: {:?}",
                entries(&env.export)?
            );
            Ok(())
        }),
        trial(
            "refused_claim_is_provisioned_once_its_class_is_fixed",
            |t| async move {
                let env = Env::new(&t, "fixed").await?;
                let _p = env.start(&[])?;
                let class = env.class("nfs", &[("onDelet", "delete")], json!({})).await?;
                env.claim("data", Some(&class), json!({})).await?;
                env.wait_event(&env.ns, "data", "ProvisioningFailed").await?;
                // StorageClass parameters are immutable: fixing one means re-creating it.
                env.classes().delete(&class, &Default::default()).await?;
                let volumes = env.classes();
                crate::support::poll_until("the class to be gone", super::fixture::WAIT, || async {
                    Ok(volumes.get_opt(&class).await?.is_none().then_some(()))
                })
                .await?;
                env.class("nfs", &[("onDelete", "delete")], json!({})).await?;
                let pv = env.wait_bound("data").await?;
                ensure!(env.dir_of(&pv)?.is_dir());
                Ok(())
            },
        ),
        trial("overlapping_directories_are_refused", |t| async move {
            let env = Env::new(&t, "overlap").await?;
            let _p = env.start(&[])?;
            let class = env
                .class(
                    "pattern",
                    &[("pathPattern", "shared/${.PVC.annotations.sub}")],
                    json!({}),
                )
                .await?;
            env.claim(
                "first",
                Some(&class),
                json!({ "metadata": { "annotations": { "sub": "x" } } }),
            )
            .await?;
            env.wait_bound("first").await?;
            env.claim(
                "same",
                Some(&class),
                json!({ "metadata": { "annotations": { "sub": "x" } } }),
            )
            .await?;
            let note = env
                .wait_event(&env.ns, "same", "ProvisioningFailed")
                .await?
                .note
                .unwrap_or_default();
            ensure!(note.contains("overlaps"), "{note}");
            let around = env
                .class("around", &[("pathPattern", "shared")], json!({}))
                .await?;
            env.claim("around", Some(&around), json!({})).await?;
            let note = env
                .wait_event(&env.ns, "around", "ProvisioningFailed")
                .await?
                .note
                .unwrap_or_default();
            ensure!(note.contains("overlaps"), "{note}");
            Ok(())
        }),
        trial("wait_for_first_consumer_waits_for_a_node", |t| async move {
            let env = Env::new(&t, "wffc").await?;
            let _p = env.start(&[])?;
            let class = env
                .class(
                    "wffc",
                    &[],
                    json!({ "volumeBindingMode": "WaitForFirstConsumer" }),
                )
                .await?;
            env.claim("later", Some(&class), json!({})).await?;
            // An Immediate claim after it is the barrier: once it is bound, the WFFC one was seen.
            let immediate = env.class("now", &[], json!({})).await?;
            env.claim("now", Some(&immediate), json!({})).await?;
            env.wait_bound("now").await?;
            let later = env.claims().get("later").await?;
            ensure!(
                later.spec.and_then(|s| s.volume_name).is_none(),
                "WFFC claim bound without a node"
            );
            ensure!(entries(&env.export)?.len() == 1);
            // What the scheduler does once a pod using the claim has a node.
            let patch =
                json!({ "metadata": { "annotations": { "volume.kubernetes.io/selected-node": "node-1" } } });
            env.claims()
                .patch(
                    "later",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await?;
            env.wait_bound("later").await?;
            Ok(())
        }),
    ]
}
