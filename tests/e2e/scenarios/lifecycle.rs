//! Day two: claims that grow (and a crash between the PV's and the claim's new size), PVs deleted
//! before their claims (deletion protection), PVs an admin pre-bound to a claim, and classes that
//! reuse an existing directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use super::fixture::{Env, SERVER, WAIT};
use crate::support::{E2eTrial, poll_until, trial};

const FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
const REUSE: &str = "nfs-subdir-provisioner/reuse-existing-directory";

fn storage(
    resources: Option<
        &std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
) -> Option<String> {
    resources.and_then(|r| r.get("storage")).map(|q| q.0.clone())
}

fn pv_size(pv: &PersistentVolume) -> Option<String> {
    storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref()))
}

fn claim_size(claim: &PersistentVolumeClaim) -> Option<String> {
    storage(claim.status.as_ref().and_then(|s| s.capacity.as_ref()))
}

fn finalizers(pv: &PersistentVolume) -> Vec<String> {
    pv.metadata.finalizers.clone().unwrap_or_default()
}

async fn request(env: &Env, claim: &str, size: &str) -> Result<()> {
    let patch = json!({ "spec": { "resources": { "requests": { "storage": size } } } });
    env.claims()
        .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("asking for {size} on claim {claim}"))?;
    Ok(())
}

/// Waits until the PV and the claim both hold `size`.
async fn wait_grown(env: &Env, claim: &str, pv: &str, size: &str) -> Result<()> {
    let (claims, volumes) = (env.claims(), env.volumes());
    poll_until(
        &format!("claim {claim} and PV {pv} to hold {size}"),
        WAIT,
        || async {
            let (c, v) = (claims.get(claim).await?, volumes.get(pv).await?);
            Ok(
                (claim_size(&c).as_deref() == Some(size) && pv_size(&v).as_deref() == Some(size))
                    .then_some(()),
            )
        },
    )
    .await
}

/// The project's RBAC for a provisioner in `namespace`, less `persistentvolumeclaims/status`
/// (under a ClusterRole name of its own): a provisioner run with it grows a PV, then fails on the
/// claim, the state a crash between the two writes leaves.
fn rbac_without_claim_status(t_dir: &Path) -> Result<PathBuf> {
    let dir = t_dir.join("rbac-without-claim-status");
    std::fs::create_dir_all(&dir)?;
    let source = crate::support::rbac_dir();
    for entry in std::fs::read_dir(&source)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .context("file name")?
            .to_string_lossy()
            .into_owned();
        if name == "kustomization.yaml" {
            continue;
        }
        let mut doc: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?)?;
        let role = "nfs-subdir-provisioner-runner";
        if doc["metadata"]["name"] == role {
            doc["metadata"]["name"] = json!(format!("{role}-without-claim-status"));
        }
        if doc["roleRef"]["name"] == role {
            doc["roleRef"]["name"] = json!(format!("{role}-without-claim-status"));
        }
        if let Some(rules) = doc["rules"].as_array_mut() {
            rules.retain(|r| r["resources"] != json!(["persistentvolumeclaims/status"]));
        }
        std::fs::write(dir.join(&name), serde_yaml_ng::to_string(&doc)?)?;
    }
    Ok(dir)
}

async fn grow(t: crate::support::TrialCtx) -> Result<()> {
    let env = Env::new(&t, "grow").await?;
    let p = env.start(&[])?;
    let class = env
        .class("nfs", &[], json!({ "allowVolumeExpansion": true }))
        .await?;
    env.claim("data", Some(&class), json!({})).await?;
    let pv = env.wait_bound("data").await?;
    let name = pv.name_any();
    let dir = env.dir_of(&pv)?;
    std::fs::write(dir.join("data.txt"), "kept")?;

    for size in ["5Mi", "12Mi"] {
        request(&env, "data", size).await?;
        wait_grown(&env, "data", &name, size).await?;
    }
    env.wait_event(&env.ns, "data", "Resizing").await?;
    env.wait_event(&env.ns, "data", "VolumeResizeSuccessful").await?;
    ensure!(
        std::fs::read_to_string(dir.join("data.txt"))? == "kept",
        "the data stays"
    );

    // A crash between the two writes: a provisioner that may not write the claim's status grows
    // the PV and fails on the claim; it is killed, and the real one finishes the claim.
    p.kill9();
    let limited_ns = format!("{}-limited", env.ns);
    let limited_rbac = rbac_without_claim_status(&t.dir)?;
    let limited_kubeconfig = t
        .cp()
        .service_account_kubeconfig(&limited_ns, &limited_rbac)
        .await?;
    let limited_kubeconfig = limited_kubeconfig.display().to_string();
    let limited = env.start(&[
        ("KUBECONFIG", &limited_kubeconfig),
        ("POD_NAMESPACE", &limited_ns),
    ])?;
    request(&env, "data", "20Mi").await?;
    let volumes = env.volumes();
    poll_until("the PV to hold 20Mi", WAIT, || async {
        Ok((pv_size(&volumes.get(&name).await?).as_deref() == Some("20Mi")).then_some(()))
    })
    .await?;
    env.wait_event(&env.ns, "data", "VolumeResizeFailed").await?;
    limited.kill9();
    ensure!(
        claim_size(&env.claims().get("data").await?).as_deref() == Some("12Mi"),
        "the claim still records the old size before the restart"
    );
    let _p = env.start(&[])?;
    wait_grown(&env, "data", &name, "20Mi").await?;
    let pvs = env.volumes().list(&ListParams::default()).await?;
    let ours = pvs
        .items
        .iter()
        .filter(|v| v.name_any().starts_with("pvc-") && env.dir_of(v).is_ok())
        .count();
    ensure!(ours == 1, "one PV, not {ours}");
    Ok(())
}

/// Deletes the PV first, while its claim holds it: the PV waits, Terminating, with its
/// directory, until the claim is deleted; then the directory is released as its policy says.
async fn delete_before_claim(t: crate::support::TrialCtx) -> Result<()> {
    let env = Env::new(&t, "protect").await?;
    let _p = env.start(&[])?;
    let cases = [
        ("archive", json!({}), Some(FINALIZER)),
        (
            "delete",
            json!({ "parameters": { "onDelete": "delete" } }),
            Some(FINALIZER),
        ),
        (
            "retain",
            json!({ "parameters": { "onDelete": "retain" } }),
            Some(FINALIZER),
        ),
        ("reclaim-retain", json!({ "reclaimPolicy": "Retain" }), None),
    ];
    for (case, extra, finalizer) in cases {
        let class = env.class(case, &[], extra).await?;
        env.claim(case, Some(&class), json!({})).await?;
        let pv = env.wait_bound(case).await?;
        let name = pv.name_any();
        ensure!(
            finalizers(&pv).iter().any(|f| f == FINALIZER) == finalizer.is_some(),
            "{case}: finalizers {:?}",
            finalizers(&pv)
        );
        let dir = env.dir_of(&pv)?;
        let leaf = dir.file_name().context("leaf")?.to_string_lossy().into_owned();
        std::fs::write(dir.join("data.txt"), case)?;

        env.volumes().delete(&name, &DeleteParams::default()).await?;
        let volumes = env.volumes();
        let deleting = poll_until(&format!("{case}: PV {name} to be Terminating"), WAIT, || async {
            Ok(volumes
                .get_opt(&name)
                .await?
                .filter(|v| v.metadata.deletion_timestamp.is_some()))
        })
        .await?;
        ensure!(deleting.status.and_then(|s| s.phase).as_deref() == Some("Bound"));
        ensure!(
            dir.join("data.txt").is_file(),
            "{case}: the directory waits with the PV"
        );

        env.delete_claim(case).await?;
        env.wait_pv_gone(&name).await?;
        let archived = env.export.join(format!("archived-{leaf}"));
        match case {
            "archive" => ensure!(
                !dir.exists() && archived.join("data.txt").is_file(),
                "{case}: not archived"
            ),
            "delete" => ensure!(!dir.exists() && !archived.exists(), "{case}: not deleted"),
            _ => ensure!(
                dir.join("data.txt").is_file() && !archived.exists(),
                "{case}: not kept"
            ),
        }
    }
    ensure!(
        t_staging_empty(&env),
        "the staging area is empty: nothing half-done"
    );
    Ok(())
}

fn t_staging_empty(env: &Env) -> bool {
    std::fs::read_dir(env.export.join(".nfs-subdir-provisioner")).is_ok_and(|mut d| d.next().is_none())
}

/// A PV of nfs-subdir-external-provisioner (no finalizer) is protected once bound with policy
/// Delete, and loses the protection when its policy becomes Retain.
async fn adopted_volumes_are_protected(t: crate::support::TrialCtx) -> Result<()> {
    let env = Env::new(&t, "adopt-protect").await?;
    let _p = env.start(&[])?;
    let class = env.class("nfs", &[], json!({})).await?;
    // Exactly as nfs-subdir-external-provisioner made it: no finalizer, no records of ours.
    let (pv_name, _) = super::release::legacy_volume(&env, "data", &class).await?;
    let volumes = env.volumes();
    let has_finalizer = |want: bool| {
        let volumes = volumes.clone();
        let pv_name = pv_name.clone();
        async move {
            poll_until(&format!("PV {pv_name} protected: {want}"), WAIT, || async {
                let v = volumes.get(&pv_name).await?;
                Ok((finalizers(&v).iter().any(|f| f == FINALIZER) == want).then_some(()))
            })
            .await
        }
    };
    has_finalizer(true).await?;
    let retain = json!({ "spec": { "persistentVolumeReclaimPolicy": "Retain" } });
    volumes
        .patch(&pv_name, &PatchParams::default(), &Patch::Merge(&retain))
        .await?;
    has_finalizer(false).await?;
    Ok(())
}

/// A claim and a PV pre-bound to it, created one right after the other as `kubectl apply` of
/// one file does, ten times: each claim binds to the admin's PV, and nothing else is made.
async fn pre_bound(t: crate::support::TrialCtx) -> Result<()> {
    let env = Env::new(&t, "prebound").await?;
    let _p = env.start(&[])?;
    let class = env.class("nfs", &[], json!({})).await?;
    let mut dirs = std::collections::BTreeSet::new();
    for round in 0..10 {
        let claim = format!("data-{round}");
        let pv_name = format!("admin-{}-{round}", env.ns);
        let dir = format!("existing-{round}");
        std::fs::create_dir(env.export.join(&dir))?;
        dirs.insert(dir.clone());
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": { "name": pv_name },
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "capacity": { "storage": "1Mi" },
                "nfs": { "server": SERVER, "path": format!("{}/{dir}", env.nfs_path) },
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": class,
                "claimRef": { "namespace": env.ns, "name": claim },
            },
        }))?;
        env.claim(&claim, Some(&class), json!({})).await?;
        env.volumes().create(&PostParams::default(), &pv).await?;
        let bound = env.wait_bound(&claim).await?;
        ensure!(
            bound.name_any() == pv_name,
            "round {round}: bound to {}",
            bound.name_any()
        );
    }
    // Give a wrongly started provisioning the time to show: the grace plus a few reconciles.
    let volumes = env.volumes();
    let claims = env.claims().list(&ListParams::default()).await?;
    let extra = poll_until(
        "every claim's own pvc-<uid> to stay absent",
        std::time::Duration::from_secs(5),
        || async {
            let mut found = Vec::new();
            for c in &claims.items {
                let ours = format!("pvc-{}", c.uid().unwrap_or_default());
                if volumes.get_opt(&ours).await?.is_some() {
                    found.push(ours);
                }
            }
            Ok((!found.is_empty()).then_some(found))
        },
    )
    .await;
    ensure!(extra.is_err(), "PVs provisioned besides the admin's: {extra:?}");
    ensure!(env.entries()? == dirs, "extra directories: {:?}", env.entries()?);
    Ok(())
}

fn statefulset(name: &str, class: &str, replicas: i32) -> Result<StatefulSet> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/none" }] },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "www" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": class,
                    "resources": { "requests": { "storage": "1Mi" } },
                },
            }],
        },
    }))?)
}

/// Reuse allowed: a StatefulSet's claims deleted (their directories retained) and made again
/// get their data back. Refused: a pattern without the namespace, and a live PV's directory.
async fn reuse(t: crate::support::TrialCtx) -> Result<()> {
    let env = Env::new(&t, "reuse").await?;
    let _p = env.start(&[])?;
    let reuse_on = json!({ "metadata": { "annotations": { REUSE: "true" } } });
    let class = env
        .class(
            "sts",
            &[
                ("pathPattern", "${.PVC.namespace}/${.PVC.name}"),
                ("onDelete", "retain"),
            ],
            reuse_on.clone(),
        )
        .await?;
    let sets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &env.ns);
    sets.create(&PostParams::default(), &statefulset("web", &class, 2)?)
        .await?;
    for i in 0..2 {
        let pv = env.wait_bound(&format!("www-web-{i}")).await?;
        std::fs::write(env.dir_of(&pv)?.join("index.html"), format!("web-{i}"))?;
    }
    sets.delete("web", &DeleteParams::default()).await?;
    for i in 0..2 {
        let claim = format!("www-web-{i}");
        let pv = env
            .claims()
            .get(&claim)
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .context("volume")?;
        env.delete_claim(&claim).await?;
        env.wait_pv_gone(&pv).await?;
    }
    ensure!(
        env.export.join(&env.ns).join("www-web-0/index.html").is_file(),
        "retained"
    );
    let claims = env.claims();
    poll_until("the old claims to be gone", WAIT, || async {
        Ok(claims
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    sets.create(&PostParams::default(), &statefulset("web", &class, 2)?)
        .await?;
    for i in 0..2 {
        let claim = format!("www-web-{i}");
        let pv = env.wait_bound(&claim).await?;
        let dir = env.dir_of(&pv)?;
        ensure!(
            dir == env.export.join(&env.ns).join(&claim),
            "{claim} at {}",
            dir.display()
        );
        ensure!(
            std::fs::read_to_string(dir.join("index.html"))? == format!("web-{i}"),
            "{claim}: data back"
        );
        // The claim has the name of the first one, and its Events: this one names the new PV.
        let note = wait_note(&env, &claim, "ProvisioningSucceeded", &pv.name_any()).await?;
        ensure!(
            note.contains("existing directory"),
            "{claim}: a Normal Event names the reuse"
        );
    }

    // Refused: the pattern does not fix the namespace.
    let loose = env
        .class(
            "loose",
            &[("pathPattern", "shared-${.PVC.name}")],
            reuse_on.clone(),
        )
        .await?;
    std::fs::create_dir(env.export.join("shared-loose"))?;
    env.claim("loose", Some(&loose), json!({})).await?;
    let refused = wait_warning(&env, "loose", "namespace alone").await?;
    ensure!(refused.contains("shared-loose"), "{refused}");
    // Refused: the directory of a live PV (the first claim keeps it).
    let fixed = env
        .class("fixed", &[("pathPattern", "${.PVC.namespace}/fixed")], reuse_on)
        .await?;
    env.claim("first", Some(&fixed), json!({})).await?;
    env.wait_bound("first").await?;
    env.claim("second", Some(&fixed), json!({})).await?;
    wait_warning(&env, "second", "overlaps the directory of volume").await?;
    ensure!(
        env.claims()
            .get("second")
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .is_none(),
        "second stays Pending"
    );
    Ok(())
}

/// Waits for a ProvisioningFailed Warning about `claim` whose note contains `text`; its note.
async fn wait_warning(env: &Env, claim: &str, text: &str) -> Result<String> {
    wait_note(env, claim, "ProvisioningFailed", text).await
}

/// Waits for an Event with `reason` about `claim` whose note contains `text`; its note.
async fn wait_note(env: &Env, claim: &str, reason: &str, text: &str) -> Result<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client.clone(), &env.ns);
    let what = format!("a {reason} Event about {claim} saying {text:?}");
    poll_until(&what, WAIT, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find_map(|e| {
            let note = e.note.clone().unwrap_or_default();
            (e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(claim)
                && note.contains(text))
            .then_some(note)
        }))
    })
    .await
}

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial(
            "day2_a_claim_grows_twice_and_a_crash_between_pv_and_claim_converges",
            grow,
        ),
        trial(
            "day2_a_pv_deleted_before_its_claim_is_released_by_its_policy",
            delete_before_claim,
        ),
        trial(
            "day2_volumes_of_the_go_provisioner_are_protected_until_retained",
            adopted_volumes_are_protected,
        ),
        trial(
            "day2_a_pre_bound_pv_applied_with_its_claim_is_the_only_volume",
            pre_bound,
        ),
        trial(
            "day2_reuse_brings_a_statefulsets_data_back_and_is_refused_where_unsafe",
            reuse,
        ),
    ]
}
