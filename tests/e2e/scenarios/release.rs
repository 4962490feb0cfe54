//! Release end to end: archive, delete, retain, collisions, reclaim policy Retain, a deleted class,
//! volumes made by nfs-subdir-external-provisioner, and forged volumes.

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kube::api::PostParams;
use serde_json::json;

use super::fixture::{Env, SERVER, entries};
use crate::support::{E2eTrial, trial};

/// Provisions `claim`, writes a file into its directory, and returns (PV name, directory name).
async fn bound_with_data(env: &Env, claim: &str, class: &str) -> Result<(String, String)> {
    env.claim(claim, Some(class), json!({})).await?;
    let pv = env.wait_bound(claim).await?;
    let dir = env.dir_of(&pv)?;
    std::fs::write(dir.join("data.txt"), claim)?;
    let name = dir
        .file_name()
        .context("dir name")?
        .to_string_lossy()
        .into_owned();
    Ok((pv.name_any(), name))
}

async fn release(env: &Env, claim: &str, pv: &str) -> Result<()> {
    env.delete_claim(claim).await?;
    env.wait_pv_gone(pv).await
}

/// A PV exactly as nfs-subdir-external-provisioner writes it: only its provisioned-by annotation.
pub(super) async fn legacy_volume(env: &Env, claim: &str, class: &str) -> Result<(String, String)> {
    let pv_name = format!("pvc-legacy-{}-{claim}", env.ns);
    let dir = format!("{}-{claim}-{pv_name}", env.ns);
    std::fs::create_dir(env.export.join(&dir))?;
    std::fs::write(env.export.join(&dir).join("data.txt"), claim)?;
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {
            "name": pv_name,
            "annotations": { "pv.kubernetes.io/provisioned-by": env.provisioner },
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "capacity": { "storage": "1Mi" },
            "nfs": { "server": SERVER, "path": format!("{}/{dir}", env.nfs_path) },
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": class,
            "claimRef": { "namespace": env.ns, "name": claim },
        },
    }))?;
    env.volumes().create(&PostParams::default(), &pv).await?;
    // The claim binds to the pre-bound PV; nothing is provisioned for it.
    env.claim(claim, Some(class), json!({})).await?;
    let bound = env.wait_bound(claim).await?;
    ensure!(
        bound.name_any() == pv_name,
        "claim {claim} bound to {} instead",
        bound.name_any()
    );
    Ok((pv_name, dir))
}

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial(
            "release_archives_deletes_or_retains_as_the_class_says",
            |t| async move {
                let env = Env::new(&t, "release").await?;
                let _p = env.start(&[])?;
                let outside = t.dir.join("outside");
                std::fs::create_dir_all(&outside)?;
                std::fs::write(outside.join("keep.txt"), "must survive")?;

                let cases = [
                    ("default", vec![], "archive"),
                    ("nofalse", vec![("archiveOnDelete", "false")], "delete"),
                    ("ondelete", vec![("onDelete", "delete")], "delete"),
                    ("retain", vec![("onDelete", "retain")], "retain"),
                    (
                        "archive",
                        vec![("onDelete", "archive"), ("archiveOnDelete", "false")],
                        "archive",
                    ),
                ];
                for (suffix, params, expected) in &cases {
                    let class = env.class(suffix, params, json!({})).await?;
                    let (pv, dir) = bound_with_data(&env, suffix, &class).await?;
                    let path = env.export.join(&dir);
                    // Symlinks a workload could plant: deletes must remove the links, never the targets.
                    std::os::unix::fs::symlink(&outside, path.join("link-to-dir"))?;
                    std::os::unix::fs::symlink(outside.join("keep.txt"), path.join("link-to-file"))?;
                    std::fs::create_dir_all(path.join("nested/deeper"))?;
                    std::fs::write(path.join("nested/deeper/file"), "x")?;
                    release(&env, suffix, &pv).await?;
                    let archived = env.export.join(format!("archived-{dir}"));
                    match *expected {
                        "archive" => {
                            ensure!(
                                !path.exists() && archived.join("data.txt").is_file(),
                                "{suffix}: not archived"
                            );
                            env.wait_event("default", &pv, "VolumeArchived").await?;
                        }
                        "delete" => ensure!(!path.exists() && !archived.exists(), "{suffix}: not deleted"),
                        _ => ensure!(
                            path.join("data.txt").is_file() && !archived.exists(),
                            "{suffix}: not retained"
                        ),
                    }
                }
                ensure!(std::fs::read_to_string(outside.join("keep.txt"))? == "must survive");
                Ok(())
            },
        ),
        trial("archive_never_overwrites_an_existing_archive", |t| async move {
            let env = Env::new(&t, "collide").await?;
            let _p = env.start(&[])?;
            let class = env.class("nfs", &[], json!({})).await?;
            let (pv, dir) = bound_with_data(&env, "data", &class).await?;
            let taken = env.export.join(format!("archived-{dir}"));
            std::fs::create_dir(&taken)?;
            std::fs::write(taken.join("old.txt"), "older archive")?;
            let taken2 = env.export.join(format!("archived-{dir}-2"));
            std::fs::create_dir(&taken2)?;
            release(&env, "data", &pv).await?;
            ensure!(
                entries(&taken)? == ["old.txt".to_owned()].into(),
                "first archive changed"
            );
            ensure!(entries(&taken2)?.is_empty(), "second archive changed");
            let third = env.export.join(format!("archived-{dir}-3"));
            ensure!(std::fs::read_to_string(third.join("data.txt"))? == "data");
            Ok(())
        }),
        trial("reclaim_policy_retain_is_never_touched", |t| async move {
            let env = Env::new(&t, "retain").await?;
            let _p = env.start(&[])?;
            let keep = env
                .class(
                    "keep",
                    &[("onDelete", "delete")],
                    json!({ "reclaimPolicy": "Retain" }),
                )
                .await?;
            let (pv, dir) = bound_with_data(&env, "kept", &keep).await?;
            env.delete_claim("kept").await?;
            env.wait_pv_phase(&pv, "Released").await?;
            // Barrier: a later release handled by the same provisioner.
            let gone = env.class("gone", &[("onDelete", "delete")], json!({})).await?;
            let (pv2, _) = bound_with_data(&env, "barrier", &gone).await?;
            release(&env, "barrier", &pv2).await?;
            env.wait_pv_phase(&pv, "Released").await?;
            ensure!(
                env.export.join(&dir).join("data.txt").is_file(),
                "retained directory was touched"
            );
            Ok(())
        }),
        trial("release_works_after_the_class_is_deleted", |t| async move {
            let env = Env::new(&t, "classgone").await?;
            let _p = env.start(&[])?;
            let class = env.class("nfs", &[("onDelete", "delete")], json!({})).await?;
            let (pv, dir) = bound_with_data(&env, "data", &class).await?;
            env.classes().delete(&class, &Default::default()).await?;
            release(&env, "data", &pv).await?;
            ensure!(!env.export.join(&dir).exists(), "directory not deleted");
            Ok(())
        }),
        trial(
            "volumes_made_by_nfs_subdir_external_provisioner_are_released",
            |t| async move {
                let env = Env::new(&t, "adopt").await?;
                let _p = env.start(&[])?;
                let archive = env.class("archive", &[], json!({})).await?;
                let delete = env
                    .class("delete", &[("archiveOnDelete", "false")], json!({}))
                    .await?;
                let gone = env
                    .class("gone", &[("archiveOnDelete", "false")], json!({}))
                    .await?;
                let (pv_a, dir_a) = legacy_volume(&env, "a", &archive).await?;
                let (pv_d, dir_d) = legacy_volume(&env, "d", &delete).await?;
                let (pv_g, dir_g) = legacy_volume(&env, "g", &gone).await?;
                env.classes().delete(&gone, &Default::default()).await?;
                release(&env, "a", &pv_a).await?;
                release(&env, "d", &pv_d).await?;
                release(&env, "g", &pv_g).await?;
                ensure!(
                    std::fs::read_to_string(env.export.join(format!("archived-{dir_a}/data.txt")))? == "a"
                );
                ensure!(
                    !env.export.join(&dir_d).exists()
                        && !env.export.join(format!("archived-{dir_d}")).exists()
                );
                // Its class is gone: nfs-subdir-external-provisioner would be stuck; we archive.
                ensure!(env.export.join(format!("archived-{dir_g}/data.txt")).is_file());
                Ok(())
            },
        ),
        trial(
            "forged_volumes_pointing_outside_the_export_are_left_alone",
            |t| async move {
                let env = Env::new(&t, "forged").await?;
                let _p = env.start(&[])?;
                let class = env.class("nfs", &[("onDelete", "delete")], json!({})).await?;
                let victim = t.dir.join("victim");
                std::fs::create_dir_all(&victim)?;
                std::fs::write(victim.join("precious"), "x")?;
                for (claim, server, path) in [
                    ("escape", SERVER.to_owned(), format!("{}/../victim", env.nfs_path)),
                    ("sibling", SERVER.to_owned(), "/exports/victim".to_owned()),
                    ("server", "10.9.9.9".to_owned(), format!("{}/x", env.nfs_path)),
                ] {
                    let pv_name = format!("forged-{}-{claim}", env.ns);
                    let pv: PersistentVolume = serde_json::from_value(json!({
                        "metadata": { "name": pv_name, "annotations": { "pv.kubernetes.io/provisioned-by": env.provisioner } },
                        "spec": {
                            "accessModes": ["ReadWriteMany"],
                            "capacity": { "storage": "1Mi" },
                            "nfs": { "server": server, "path": path },
                            "persistentVolumeReclaimPolicy": "Delete",
                            "storageClassName": class,
                            "claimRef": { "namespace": env.ns, "name": claim },
                        },
                    }))?;
                    env.volumes().create(&PostParams::default(), &pv).await?;
                    env.claim(claim, Some(&class), json!({})).await?;
                    env.wait_bound(claim).await?;
                    env.delete_claim(claim).await?;
                    let note = env
                        .wait_event("default", &pv_name, "VolumeFailedDelete")
                        .await?
                        .note
                        .unwrap_or_default();
                    ensure!(note.contains("left alone"), "{claim}: {note}");
                    ensure!(
                        env.volumes().get_opt(&pv_name).await?.is_some(),
                        "{claim}: forged PV deleted"
                    );
                }
                ensure!(victim.join("precious").is_file());
                Ok(())
            },
        ),
    ]
}
