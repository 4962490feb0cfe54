//! End-to-end suite: a real Kubernetes 1.20 control plane (etcd, kube-apiserver,
//! kube-controller-manager from `$KUBEBUILDER_ASSETS`), started once and shared by all trials.
//!
//! Without the binaries every trial is reported as ignored, with a loud banner; with `E2E_REQUIRE=1`
//! that is a failure instead. `E2E_KEEP=1` keeps the working directory (logs, kubeconfigs); it is
//! always kept when a trial fails.
//!
//! Scenario modules register trials with `support::trial` and are added in [`all_trials`].

mod scenarios;
mod support;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use support::{E2eTrial, Suite, TrialCtx};

/// Every trial of the suite; `E2E_REPEAT=N` registers each N times (`<name>::run_01` …), so that
/// a trial can be run in a loop against one shared control plane (`scripts/restart-trial-loop.sh`).
fn all_trials() -> Vec<E2eTrial> {
    let repeat = std::env::var("E2E_REPEAT")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let mut trials = Vec::new();
    for round in 1..=repeat {
        let mut batch = smoke::trials();
        batch.extend(scenarios::trials());
        if repeat > 1 {
            for trial in &mut batch {
                trial.name = format!("{}::run_{round:02}", trial.name);
            }
        }
        trials.extend(batch);
    }
    trials.sort_by(|a, b| a.name.cmp(&b.name));
    trials
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = all_trials();

    if args.list {
        let listed = trials
            .into_iter()
            .map(|t| Trial::test(t.name, || Ok(())))
            .collect();
        return libtest_mimic::run(&args, listed).exit_code();
    }
    let selected = trials
        .iter()
        .filter(|t| !args.is_filtered_out(&Trial::test(t.name.clone(), || Ok(()))))
        .count();

    let assets = match support::assets_from_env() {
        Ok(assets) => assets,
        Err(why) => {
            let required = std::env::var(support::REQUIRE_ENV).is_ok_and(|v| v == "1");
            banner(&why, required, selected);
            let message = format!("e2e {}: {why}", if required { "cannot run" } else { "skipped" });
            let trials = trials
                .into_iter()
                .map(|t| {
                    let message = message.clone();
                    if required {
                        Trial::test(t.name, move || {
                            Err(format!("{message} ({}=1)", support::REQUIRE_ENV).into())
                        })
                    } else {
                        Trial::ignorable_test(t.name, move || Ok(Completion::ignored_with(message)))
                            .with_ignored_flag(true)
                    }
                })
                .collect();
            return libtest_mimic::run(&args, trials).exit_code();
        }
    };

    if selected == 0 {
        let trials = trials
            .into_iter()
            .map(|t| Trial::test(t.name, || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }

    let tmp = match tempfile::Builder::new().prefix("nfs-subdir-e2e-").tempdir() {
        Ok(tmp) => tmp,
        Err(e) => {
            eprintln!("e2e: cannot create a working directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workdir = tmp.path().to_owned();
    let t0 = Instant::now();
    let started = support::ControlPlane::start(&assets, &workdir.join("control-plane"));
    let suite = match started {
        Ok(cp) => {
            eprintln!(
                "e2e: control plane ready in {:.2?} ({}) at {} (binaries: {}, logs: {})",
                t0.elapsed(),
                cp.startup_phases(),
                cp.server_url(),
                assets.display(),
                cp.workdir().join("logs").display()
            );
            Ok(Arc::new(Suite {
                cp,
                assets,
                workdir: workdir.clone(),
                rbac_dir: support::rbac_dir(),
            }))
        }
        Err(e) => {
            eprintln!(
                "e2e: the control plane did not start: {}",
                support::error_chain(&e)
            );
            Err(format!("the control plane did not start: {e:#}"))
        }
    };

    let trials = trials
        .into_iter()
        .map(|t| {
            let suite = suite.clone();
            let name = t.name.clone();
            Trial::test(name, move || match suite {
                Ok(suite) => run_trial(t, suite),
                Err(e) => Err(e.into()),
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);

    if let Ok(suite) = suite {
        suite.cp.shutdown();
        drop(suite);
    }
    if conclusion.has_failed() || std::env::var(support::KEEP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("e2e: working directory kept: {}", tmp.keep().display());
    }
    conclusion.exit_code()
}

fn run_trial(trial: E2eTrial, suite: Arc<Suite>) -> Result<(), Failed> {
    let dir = suite.workdir.join("trials").join(&trial.name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ctx = TrialCtx {
        suite: suite.clone(),
        name: trial.name.clone(),
        dir: dir.clone(),
        logs: Arc::default(),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trial.run(ctx.clone())));
    let result = outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string panic payload>".to_owned());
        Err(anyhow::anyhow!("the trial panicked: {message}"))
    });
    result.map_err(|e| {
        let cp = &suite.cp;
        let health = match cp.check_running() {
            Ok(()) => "control plane processes running".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        let kcm = cp.controller_manager_log();
        let mut message = format!(
            "{}\n\n{health}; trial directory: {}\n----- last lines of {}:\n{}",
            support::error_chain(&e),
            dir.display(),
            kcm.display(),
            support::log_tail(kcm, 10),
        );
        let spawned = ctx.spawned_logs_tail(40);
        if !spawned.is_empty() {
            message = format!("{message}\n{spawned}");
        }
        message.into()
    })
}

fn banner(why: &str, required: bool, selected: usize) {
    let rule = "#".repeat(100);
    let headline = if required {
        format!(
            "E2E SUITE FAILED: {}=1 but the control-plane binaries are unavailable",
            support::REQUIRE_ENV
        )
    } else {
        "E2E SUITE SKIPPED: the Kubernetes control-plane binaries are unavailable".to_owned()
    };
    let outcome = if required {
        "FAILED"
    } else {
        "reported as IGNORED, NOT RUN"
    };
    let text = format!(
        "\n{rule}\n##\n##  {headline}\n##\n##  Why: {why}\n##  {selected} end-to-end trial(s) {outcome}.\n##\n\
         ##  The suite needs a directory with {names} (kube-apiserver and\n\
         ##  kube-controller-manager v1.20.2, etcd 3.4) named by ${assets}. To build them into a cache\n\
         ##  outside the repository (several minutes the first time, instant afterwards):\n##\n\
         ##      {how}\n##\n\
         ##  Set {require}=1 to turn this skip into a failure (CI does).\n##\n{rule}\n",
        names = support::ASSET_NAMES.join(", "),
        assets = support::ASSETS_ENV,
        how = support::HOW_TO_GET_ASSETS,
        require = support::REQUIRE_ENV,
    );
    eprintln!("{text}");
    println!("{text}");
}

/// Trials proving the harness itself.
mod smoke {
    use std::time::Duration;

    use anyhow::{Context, bail, ensure};
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::Api;
    use kube::api::{DeleteParams, ListParams, PostParams};
    use serde_json::json;

    use crate::support::{E2eTrial, client_from_kubeconfig, poll_until, trial};

    const WAIT: Duration = Duration::from_secs(60);
    const MANUAL_PROVISIONER: &str = "e2e.example.com/manual";
    const PROVISIONER_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-provisioner";

    pub fn trials() -> Vec<E2eTrial> {
        vec![
            trial("control_plane_binds_a_precreated_volume", |t| async move {
                let ns = t.namespace("bind").await?;
                let client = t.admin_client();
                let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
                let volumes: Api<PersistentVolume> = Api::all(client.clone());
                let pv_name = format!("{ns}-manual");

                // A class whose provisioner nobody runs: kube-controller-manager hands the claim to
                // that (absent) external provisioner, as it will to the provisioner under test.
                let class: StorageClass = serde_json::from_value(json!({
                    "metadata": { "name": "manual" },
                    "provisioner": MANUAL_PROVISIONER,
                    "reclaimPolicy": "Retain",
                }))?;
                match Api::<StorageClass>::all(client)
                    .create(&PostParams::default(), &class)
                    .await
                {
                    Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                    other => drop(other?),
                }
                let claim = serde_json::from_value(json!({
                    "metadata": { "name": "claim" },
                    "spec": {
                        "storageClassName": "manual",
                        "accessModes": ["ReadWriteMany"],
                        "resources": { "requests": { "storage": "1Mi" } },
                    },
                }))?;
                let claim = claims.create(&PostParams::default(), &claim).await?;
                poll_until(
                    "the claim to be handed to the external provisioner",
                    WAIT,
                    || async {
                        let c = claims.get("claim").await?;
                        // 1.20 sets only the beta annotation (the GA one arrived in 1.23).
                        let annotation = c
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(PROVISIONER_ANNOTATION));
                        Ok((annotation.map(String::as_str) == Some(MANUAL_PROVISIONER)).then_some(()))
                    },
                )
                .await?;

                // Bound to the claim by name and uid, as a provisioner writes it: the binder binds
                // at once. (Without the uid it would wait for its next periodic claim sync, 15 s.)
                let volume = serde_json::from_value(json!({
                    "metadata": { "name": pv_name },
                    "spec": {
                        "storageClassName": "manual",
                        "capacity": { "storage": "1Mi" },
                        "accessModes": ["ReadWriteMany"],
                        "persistentVolumeReclaimPolicy": "Retain",
                        "nfs": { "server": "127.0.0.1", "path": "/exports/manual" },
                        "claimRef": { "namespace": ns, "name": "claim", "uid": claim.metadata.uid },
                    },
                }))?;
                volumes.create(&PostParams::default(), &volume).await?;

                let bound = poll_until("the claim to be Bound", WAIT, || async {
                    let c = claims.get("claim").await?;
                    let phase = c.status.as_ref().and_then(|s| s.phase.as_deref());
                    Ok((phase == Some("Bound")).then_some(c))
                })
                .await?;
                let volume_name = bound.spec.and_then(|s| s.volume_name);
                ensure!(
                    volume_name.as_deref() == Some(pv_name.as_str()),
                    "bound to {volume_name:?}"
                );

                claims.delete("claim", &DeleteParams::default()).await?;
                poll_until("the claim to be gone (pvc-protection)", WAIT, || async {
                    Ok(claims.get_opt("claim").await?.is_none().then_some(()))
                })
                .await?;
                poll_until("the volume to be Released", WAIT, || async {
                    let v = volumes.get(&pv_name).await?;
                    let phase = v.status.and_then(|s| s.phase);
                    Ok((phase.as_deref() == Some("Released")).then_some(()))
                })
                .await?;
                volumes.delete(&pv_name, &DeleteParams::default()).await?;
                poll_until("the volume to be gone (pv-protection)", WAIT, || async {
                    Ok(volumes.get_opt(&pv_name).await?.is_none().then_some(()))
                })
                .await
            }),
            trial(
                "service_account_kubeconfig_has_only_shipped_rbac",
                |t| async move {
                    let ns = t.unique_name("rbac");
                    let kubeconfig = t.provisioner_kubeconfig(&ns).await?;
                    let sa = client_from_kubeconfig(&kubeconfig).await?;

                    Api::<PersistentVolume>::all(sa.clone())
                        .list(&ListParams::default())
                        .await
                        .context("listing PersistentVolumes as the ServiceAccount")?;

                    match Api::<Secret>::namespaced(sa.clone(), "kube-system")
                        .list(&ListParams::default())
                        .await
                    {
                        Err(kube::Error::Api(status)) if status.is_forbidden() => {}
                        Err(e) => bail!("listing Secrets in kube-system: expected Forbidden, got {e}"),
                        Ok(list) => bail!(
                            "listing Secrets in kube-system succeeded ({} items)",
                            list.items.len()
                        ),
                    }

                    let lease: Lease = serde_json::from_value(json!({
                        "metadata": { "name": "e2e-probe" },
                        "spec": { "holderIdentity": "e2e" },
                    }))?;
                    Api::<Lease>::namespaced(sa.clone(), &ns)
                        .create(&PostParams::default(), &lease)
                        .await
                        .context("creating a Lease in the provisioner's namespace")?;
                    match Api::<Lease>::namespaced(sa, "default")
                        .create(&PostParams::default(), &lease)
                        .await
                    {
                        Err(kube::Error::Api(status)) if status.is_forbidden() => Ok(()),
                        Err(e) => bail!("creating a Lease in default: expected Forbidden, got {e}"),
                        Ok(_) => {
                            bail!("creating a Lease in namespace default succeeded: the Role is too broad")
                        }
                    }
                },
            ),
        ]
    }
}
