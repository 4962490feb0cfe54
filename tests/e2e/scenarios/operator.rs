//! The operator's view end to end: `volumes` (table and JSON) and `prune-archives` (dry run, then
//! confirmed) run as an admin runs them, with the provisioner's configuration, against volumes it
//! provisioned, an archive it made on release, and what was planted beside them by hand; on the
//! mounted export, and on one served directly (an nfs-ganesha container, scripts/nfs-server.sh).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;
use kube::api::PostParams;
use serde_json::{Value, json};

use super::fixture::{Env, SERVER, WAIT};
use crate::support::nfs_server::{NfsServer, podman_usable};
use crate::support::{E2eTrial, poll_until, trial};

/// The age `prune-archives` is given: the provisioner's archive is waited for to reach it, the
/// young archives are touched (chmod sets their change time) just before each run.
const OLDER_THAN: &str = "5s";
const OLDER_THAN_SECS: i64 = 5;

/// The line of `out` that names `needle`.
fn line_with<'a>(out: &'a str, needle: &str) -> Result<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().any(|w| w == needle))
        .with_context(|| format!("no line names {needle} in:\n{out}"))
}

/// Seconds since the last change of `path` (its ctime).
fn changed_ago(path: &Path) -> Result<i64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(i64::try_from(now)? - std::fs::metadata(path)?.ctime())
}

/// Makes `dirs` young again: a chmod sets the change time, which nothing sets back.
fn touch(dirs: &[&Path]) -> Result<()> {
    for dir in dirs {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode ^ 0o020))?;
    }
    Ok(())
}

fn by_directory<'a>(rows: &'a Value, directory: &str) -> Result<&'a Value> {
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["directory"] == directory)
        .with_context(|| format!("{directory} not in {rows}"))
}

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial(
            "operator_view_lists_volumes_orphans_and_archives_and_prunes_only_old_unprotected_archives",
            |t| async move {
                // A control plane of its own: the view weighs every PV of the cluster, and a PV
                // another trial forges (a path with `..`) rightly keeps every archive.
                let cp = t.private_control_plane("operator")?;
                let env = Env::on(&t, &cp, "operator").await?;
                let _p = env.start(&[])?;
                let class = env.class("nfs", &[], json!({})).await?;
                let nested = env
                    .class(
                        "nested",
                        &[("pathPattern", "${.PVC.namespace}/${.PVC.name}")],
                        json!({}),
                    )
                    .await?;
                env.claim("kept", Some(&class), json!({})).await?;
                env.claim("gone", Some(&class), json!({})).await?;
                env.claim("nested", Some(&nested), json!({})).await?;
                let kept = env.wait_bound("kept").await?;
                let gone = env.wait_bound("gone").await?;
                let nested_pv = env.wait_bound("nested").await?;
                let kept_dir = env.dir_of(&kept)?;
                std::fs::write(kept_dir.join("data"), vec![1u8; 64 * 1024])?;
                let gone_dir = env.dir_of(&gone)?;
                std::fs::create_dir(gone_dir.join("logs"))?;
                std::fs::write(gone_dir.join("logs").join("app.log"), vec![3u8; 32 * 1024])?;
                let gone_leaf = gone_dir
                    .file_name()
                    .context("leaf")?
                    .to_string_lossy()
                    .into_owned();

                // The class archives on release: the provisioner renames the directory.
                env.delete_claim("gone").await?;
                env.wait_pv_gone(&gone.name_any()).await?;
                let old_name = format!("archived-{gone_leaf}");
                let old = env.export.join(&old_name);
                ensure!(old.is_dir(), "{} was not archived", old.display());

                // Planted by hand: an orphaned directory and file, archives that stay young, a
                // namespace directory holding only an archive, and an archive a PV points at under
                // another name of the server.
                let stray = env.export.join("stray-dir");
                std::fs::create_dir(&stray)?;
                std::fs::write(stray.join("left-behind"), vec![2u8; 16 * 1024])?;
                std::fs::write(env.export.join("stray.txt"), b"notes")?;
                let young = env.export.join("archived-young");
                std::fs::create_dir(&young)?;
                let old_ns = env.export.join("old-ns").join("archived-x");
                std::fs::create_dir_all(&old_ns)?;
                let pinned = env.export.join("archived-pinned");
                std::fs::create_dir(&pinned)?;
                let pinned_pv = format!("{}-pinned", env.ns);
                let pv: PersistentVolume = serde_json::from_value(json!({
                    "metadata": { "name": pinned_pv },
                    "spec": {
                        "accessModes": ["ReadWriteMany"],
                        "capacity": { "storage": "1Mi" },
                        "nfs": { "server": "localhost", "path": format!("{}/archived-pinned", env.nfs_path) },
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": format!("{}-static", env.ns),
                    },
                }))?;
                env.volumes().create(&PostParams::default(), &pv).await?;
                // And a volume made by hand (no provisioner), under the server name of the export.
                std::fs::create_dir(env.export.join("static-data"))?;
                let static_pv = format!("{}-static", env.ns);
                let pv: PersistentVolume = serde_json::from_value(json!({
                    "metadata": { "name": static_pv },
                    "spec": {
                        "accessModes": ["ReadWriteMany"],
                        "capacity": { "storage": "1Mi" },
                        "nfs": { "server": SERVER, "path": format!("{}/static-data", env.nfs_path) },
                        "persistentVolumeReclaimPolicy": "Retain",
                        "storageClassName": format!("{}-static", env.ns),
                    },
                }))?;
                env.volumes().create(&PostParams::default(), &pv).await?;

                let result = async {
                    poll_until(
                        &format!("{old_name} to be archived {OLDER_THAN} ago"),
                        WAIT,
                        || async { Ok((changed_ago(&old)? > OLDER_THAN_SECS).then_some(())) },
                    )
                    .await?;
                    touch(&[&young, &old_ns, &pinned])?;

                    // The view, as a table.
                    let (code, out, err) = env.command(&["volumes", "--measure"], &[]).await?;
                    std::fs::write(t.dir.join("volumes.txt"), &out)?;
                    ensure!(code == 0, "volumes exited {code}: {err}\n{out}");
                    let kept_row = line_with(&out, &kept.name_any())?;
                    let claim = format!("{}/kept", env.ns);
                    for cell in [claim.as_str(), "Bound", "archive", "1.0 MiB"] {
                        ensure!(kept_row.contains(cell), "{cell} missing: {kept_row}");
                    }
                    let nested_row = line_with(&out, &nested_pv.name_any())?;
                    ensure!(nested_row.contains(&format!("{}/nested", env.ns)), "{nested_row}");
                    ensure!(line_with(&out, "stray-dir")?.contains("directory"), "{out}");
                    ensure!(line_with(&out, "stray.txt")?.contains("file"), "{out}");
                    for archive in [
                        old_name.as_str(),
                        "archived-young",
                        "old-ns/archived-x",
                        "archived-pinned",
                    ] {
                        line_with(&out, archive)?;
                    }
                    ensure!(out.contains("PVs of others in this export (1)"), "{out}");
                    ensure!(line_with(&out, &static_pv)?.contains("static-data"), "{out}");
                    ensure!(
                        !out.lines()
                            .any(|l| l.split_whitespace().next() == Some(gone.name_any().as_str())),
                        "the released PV is still listed:\n{out}"
                    );

                    // The view, for scripts, with the volumes measured.
                    let (code, out, err) = env
                        .command(&["volumes", "--output", "json", "--measure"], &[])
                        .await?;
                    std::fs::write(t.dir.join("volumes.json"), &out)?;
                    ensure!(code == 0, "volumes --output json exited {code}: {err}");
                    let view: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
                    ensure!(view["provisioner"] == env.provisioner.as_str());
                    let export = &view["exports"][0];
                    ensure!(
                        export["access"] == "mounted" && export["errors"] == json!([]),
                        "{export}"
                    );
                    let volumes = export["volumes"].as_array().context("volumes")?;
                    ensure!(volumes.len() == 2, "{volumes:?}");
                    let kept_json = volumes
                        .iter()
                        .find(|v| v["pv"] == kept.name_any().as_str())
                        .context("kept")?;
                    ensure!(
                        kept_json["present"] == true && kept_json["on_delete"] == "archive",
                        "{kept_json}"
                    );
                    ensure!(kept_json["used_bytes"].as_u64() >= Some(64 * 1024), "{kept_json}");
                    let orphan = by_directory(&export["orphans"], "stray-dir")?;
                    ensure!(
                        orphan["type"] == "directory" && orphan["used_bytes"].as_u64() >= Some(16 * 1024),
                        "{orphan}"
                    );
                    ensure!(
                        export["orphans"].as_array().map(Vec::len) == Some(2),
                        "{}",
                        export["orphans"]
                    );
                    let archive = by_directory(&export["archives"], &old_name)?;
                    ensure!(archive["age_seconds"].as_u64() > Some(5), "{archive}");
                    ensure!(
                        archive["inodes"].as_u64() == Some(3)
                            && archive["used_bytes"].as_u64() >= Some(32 * 1024),
                        "{archive}"
                    );
                    ensure!(
                        export["archives"].as_array().map(Vec::len) == Some(4),
                        "{}",
                        export["archives"]
                    );
                    ensure!(export["other_volumes"][0]["pv"] == static_pv.as_str(), "{export}");

                    // The dry run removes nothing and says why each archive stays or would go.
                    touch(&[&young, &old_ns, &pinned])?;
                    let (code, out, err) = env
                        .command(&["prune-archives", "--older-than", OLDER_THAN], &[])
                        .await?;
                    std::fs::write(t.dir.join("prune-dry-run.txt"), &out)?;
                    ensure!(code == 0, "dry run exited {code}: {err}\n{out}");
                    ensure!(
                        line_with(&out, &old_name)?.starts_with("    would remove"),
                        "{out}"
                    );
                    ensure!(line_with(&out, "archived-young")?.contains("not yet"), "{out}");
                    ensure!(
                        line_with(&out, "old-ns/archived-x")?.starts_with("    kept"),
                        "{out}"
                    );
                    let pinned_row = line_with(&out, "archived-pinned")?;
                    ensure!(
                        pinned_row.contains(&format!("PV {pinned_pv} points at localhost:")),
                        "{out}"
                    );
                    ensure!(out.contains("1 would be removed"), "{out}");
                    ensure!(
                        old.is_dir() && young.is_dir() && pinned.is_dir(),
                        "the dry run removed something"
                    );

                    // Confirmed: only the old archive nobody points at goes.
                    touch(&[&young, &old_ns, &pinned])?;
                    let (code, out, err) = env
                        .command(
                            &[
                                "prune-archives",
                                "--older-than",
                                OLDER_THAN,
                                "--confirm",
                                "--output",
                                "json",
                            ],
                            &[],
                        )
                        .await?;
                    std::fs::write(t.dir.join("prune.json"), &out)?;
                    ensure!(code == 0, "prune exited {code}: {err}\n{out}");
                    let report: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
                    let rows = &report["exports"][0]["archives"];
                    let removed = by_directory(rows, &old_name)?;
                    ensure!(
                        removed["action"] == "removed" && removed["removed_entries"].as_u64() == Some(3),
                        "{removed}"
                    );
                    for kept in ["archived-young", "old-ns/archived-x", "archived-pinned"] {
                        ensure!(by_directory(rows, kept)?["action"] == "kept", "{rows}");
                    }
                    ensure!(!old.exists(), "{} is still there", old.display());
                    for there in [
                        &young,
                        &old_ns,
                        &pinned,
                        &stray,
                        &kept_dir,
                        &env.dir_of(&nested_pv)?,
                    ] {
                        ensure!(there.is_dir(), "{} went", there.display());
                    }
                    ensure!(stray.join("left-behind").is_file() && kept_dir.join("data").is_file());

                    // Again: nothing left to remove, and the view no longer shows it.
                    touch(&[&young, &old_ns, &pinned])?;
                    let (code, out, _) = env
                        .command(&["prune-archives", "--older-than", OLDER_THAN, "--confirm"], &[])
                        .await?;
                    ensure!(code == 0 && out.contains("0 removed"), "{out}");
                    let (_, out, _) = env.command(&["volumes"], &[]).await?;
                    std::fs::write(t.dir.join("volumes-after.txt"), &out)?;
                    ensure!(!out.contains(&old_name), "{out}");
                    Ok(())
                }
                .await;
                for pv in [&pinned_pv, &static_pv] {
                    env.volumes().delete(pv, &Default::default()).await?;
                }
                result
            },
        )
        .with_timeout(Duration::from_secs(240)),
        trial("operator_view_of_an_export_served_directly", |t| async move {
            if !podman_usable() {
                if std::env::var("E2E_REQUIRE").is_ok_and(|v| v == "1") {
                    bail!("podman is not installed (bash scripts/podman-setup.sh); E2E_REQUIRE=1 forbids skipping");
                }
                eprintln!("e2e: SKIPPED operator_view_of_an_export_served_directly: podman is not installed");
                return Ok(());
            }
            let cp = t.private_control_plane("operator-direct")?;
            let env = Env::on(&t, &cp, "operator-direct").await?;
            // The process id too: another checkout's suite may run beside this one.
            let name = format!("ops-view-{}-{}", std::process::id(), env.ns);
            let server = NfsServer::start(&name, "127.0.0.4", &t.dir.join("server")).await?;
            let no_mount = [
                ("ENABLE_LEADER_ELECTION", "false"),
                ("NFS_SERVER", ""),
                ("NFS_PATH", ""),
                ("NFS_MOUNT_PATH", "/nonexistent/no-mount"),
            ];
            let _p = env.start(&no_mount)?;
            let class = env
                .class(
                    "direct",
                    &[("server", server.bind.as_str()), ("share", "/export")],
                    json!({ "mountOptions": server.mount_options() }),
                )
                .await?;
            env.claim("kept", Some(&class), json!({})).await?;
            env.claim("gone", Some(&class), json!({})).await?;
            let kept = env.wait_bound("kept").await?;
            let gone = env.wait_bound("gone").await?;
            let leaf = |pv: &PersistentVolume| -> Result<String> {
                let nfs = pv.spec.as_ref().and_then(|s| s.nfs.as_ref()).context("no nfs source")?;
                Ok(nfs.path.rsplit('/').next().unwrap_or_default().to_owned())
            };
            let kept_dir = server.backing.join(leaf(&kept)?);
            env.delete_claim("gone").await?;
            env.wait_pv_gone(&gone.name_any()).await?;
            let archive = format!("archived-{}", leaf(&gone)?);
            let archived = server.backing.join(&archive);
            ensure!(archived.is_dir(), "{archive} is not on the server");
            // Made on the server's host, behind the NFS server's back.
            let stray = server.backing.join("stray");
            std::fs::create_dir(&stray)?;

            let export = poll_until("the view of the direct export to show the orphan", WAIT, || async {
                let (code, out, err) = env.command(&["volumes", "--output", "json"], &no_mount).await?;
                ensure!(code == 0, "volumes exited {code}: {err}\n{out}");
                let view: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
                let export = view["exports"][0].clone();
                Ok(by_directory(&export["orphans"], "stray").is_ok().then_some(export))
            })
            .await?;
            std::fs::write(t.dir.join("volumes-direct.json"), export.to_string())?;
            ensure!(export["export"] == "127.0.0.4:/export" && export["access"] == "direct", "{export}");
            ensure!(export["volumes"][0]["pv"] == kept.name_any().as_str(), "{export}");
            ensure!(export["volumes"][0]["present"] == true, "{export}");
            ensure!(by_directory(&export["archives"], &archive)?["inodes"] == 1, "{export}");

            poll_until(&format!("{archive} to be archived {OLDER_THAN} ago"), WAIT, || async {
                Ok((changed_ago(&archived)? > OLDER_THAN_SECS).then_some(()))
            })
            .await?;
            let prune = |confirm: bool| {
                let mut args = vec!["prune-archives", "--older-than", OLDER_THAN, "--output", "json"];
                if confirm {
                    args.push("--confirm");
                }
                let (env, archive) = (&env, &archive);
                async move {
                    let (code, out, err) = env.command(&args, &no_mount).await?;
                    ensure!(code == 0, "prune-archives exited {code}: {err}\n{out}");
                    let report: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
                    Ok(by_directory(&report["exports"][0]["archives"], archive)?["action"].clone())
                }
            };
            ensure!(prune(false).await? == "would_remove");
            ensure!(archived.is_dir(), "the dry run removed {archive}");
            ensure!(prune(true).await? == "removed");
            ensure!(!archived.exists(), "{archive} is still on the server");
            ensure!(kept_dir.is_dir() && stray.is_dir(), "more than the archive went");
            Ok(())
        })
        .with_timeout(Duration::from_secs(300)),
    ]
}
