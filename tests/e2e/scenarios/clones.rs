//! Day two, continued: clones (a claim with another claim as its data source) on an NFS server
//! served directly and across exports, their refusals, a kill -9 in the middle of a copy; each
//! volume's measured usage, the over-capacity Events, and the free-space check of a class.
//! Contents are compared on what the NFS server's backing directory and the mounted export hold.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::PostParams;
use nfs_subdir_provisioner::core::export::{Export, client_options};
use nfs_subdir_provisioner::storage::nfs_testing::Preconditions;
use nfs_subdir_provisioner::storage::nfs3::Nfs3Transport;
use serde_json::{Value, json};

use super::fixture::{Env, WAIT};
use crate::support::http::{get, sample};
use crate::support::nfs_server::{NfsServer, podman_usable};
use crate::support::{E2eTrial, poll_until, trial};

const CLONING_PROTECTION: &str = "provisioner.storage.kubernetes.io/cloning-protection";
const OVER_CAPACITY: &str = "nfs-subdir-provisioner/over-capacity";
const STAGING: &str = ".nfs-subdir-provisioner";

/// `false` (with a loud line) where podman cannot run the NFS server; an error under E2E_REQUIRE.
fn nfs_server_usable(trial: &str) -> Result<bool> {
    if podman_usable() {
        return Ok(true);
    }
    if std::env::var("E2E_REQUIRE").is_ok_and(|v| v == "1") {
        bail!("podman is not installed (bash scripts/podman-setup.sh); E2E_REQUIRE=1 forbids skipping");
    }
    eprintln!("e2e: SKIPPED {trial}: podman is not installed (bash scripts/podman-setup.sh)");
    Ok(false)
}

/// A client of `server`'s /export of our own, for writing data as a workload would (ganesha caches
/// directories, so data written on its host behind its back may stay unseen for a while).
async fn nfs_client(server: &NfsServer) -> Result<Nfs3Transport> {
    let export = Export {
        server: server.bind.clone(),
        path: "/export".into(),
    };
    let options = client_options(&[format!("port={},mountport={}", server.port, server.mount_port)])?;
    Ok(Nfs3Transport::connect(export, options, 8).await?)
}

/// The directory of a PV on `server`, as its backing directory holds it.
fn on_server(server: &NfsServer, pv: &PersistentVolume) -> Result<PathBuf> {
    let path = &pv
        .spec
        .as_ref()
        .and_then(|s| s.nfs.as_ref())
        .context("no nfs source")?
        .path;
    let rel = path.strip_prefix("/export/").context("not below /export")?;
    Ok(server.backing.join(rel))
}

/// Every entry below `root`: a file's content, a symlink's target, or a directory's mark.
fn tree(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let here = format!("{rel}/{name}");
            let md = entry.path().symlink_metadata()?;
            if md.is_dir() {
                out.insert(format!("{here}/"), Vec::new());
                walk(&entry.path(), &here, out)?;
            } else if md.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                out.insert(here, format!("-> {}", target.display()).into_bytes());
            } else {
                out.insert(here, std::fs::read(entry.path())?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

/// Entries below `root`, counted (what is in a staged copy so far).
fn count(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let is_dir = e.path().symlink_metadata().is_ok_and(|m| m.is_dir());
            1 + if is_dir { count(&e.path()) } else { 0 }
        })
        .sum()
}

/// `spec.dataSource` naming the claim `source`, and a request of `size`.
fn clone_of(source: &str, size: &str) -> Value {
    json!({ "spec": {
        "resources": { "requests": { "storage": size } },
        "dataSource": { "kind": "PersistentVolumeClaim", "name": source },
    } })
}

fn sized(size: &str) -> Value {
    json!({ "spec": { "resources": { "requests": { "storage": size } } } })
}

async fn metric(http: std::net::SocketAddr, series: &str) -> Result<Option<f64>> {
    let (code, body) = get(http, "/metrics").await?;
    ensure!(code == 200, "/metrics answered {code}");
    Ok(sample(&body, series))
}

async fn wait_metric(http: std::net::SocketAddr, series: &str, want: impl Fn(f64) -> bool) -> Result<f64> {
    poll_until(&format!("{series} to reach the expected value"), WAIT, || async {
        Ok(metric(http, series).await?.filter(|v| want(*v)))
    })
    .await
}

async fn wait_pending_with_event(env: &Env, claim: &str, says: &str) -> Result<()> {
    let event = env.wait_event(&env.ns, claim, "ProvisioningFailed").await?;
    let note = event.note.unwrap_or_default();
    ensure!(
        note.contains(says),
        "{claim}: the Event says {note:?}, not {says:?}"
    );
    let c = env.claims().get(claim).await?;
    let phase = c.status.and_then(|s| s.phase);
    ensure!(phase.as_deref() == Some("Pending"), "{claim} is {phase:?}");
    Ok(())
}

fn finalizers(claim: &PersistentVolumeClaim) -> Vec<String> {
    claim.metadata.finalizers.clone().unwrap_or_default()
}

/// A source with nested directories, a symlink, a 5 MiB file and 300 small ones, written over NFS.
async fn fill_source(nfs: &Nfs3Transport, dir: &str) -> Result<()> {
    nfs.mkdir_p(&[dir, "sub", "deeper"]).await?;
    nfs.write_file_at(&[dir, "hello.txt"], b"hello from the source\n", 0o644)
        .await?;
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 253) as u8 | 1).collect();
    nfs.write_file_at(&[dir, "sub", "big.bin"], &big, 0o600).await?;
    nfs.symlink_at(&[dir, "link"], "hello.txt").await?;
    nfs.create_files(
        &[dir, "sub", "deeper"],
        (0..300).map(|i| format!("f{i}")).collect(),
        16,
    )
    .await?;
    Ok(())
}

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial("clones_copy_a_claims_data_on_an_nfs_server_and_across_exports", |t| async move {
            if !nfs_server_usable("clones_copy_a_claims_data_on_an_nfs_server_and_across_exports")? {
                return Ok(());
            }
            let env = Env::new(&t, "clone").await?;
            let server = NfsServer::start(&format!("{}-nfs", env.ns), "127.0.0.4", &t.dir.join("server")).await?;
            let (provisioner, http) = env.start_serving(&[
                ("ENABLE_LEADER_ELECTION", "false"),
                ("USAGE_INTERVAL", "2s"),
            ])?;
            let direct = env
                .class(
                    "direct",
                    &[("server", "127.0.0.4"), ("share", "/export")],
                    json!({ "mountOptions": server.mount_options() }),
                )
                .await?;
            let local = env.class("local", &[], json!({})).await?;

            env.claim("src", Some(&direct), sized("10Mi")).await?;
            let src_pv = env.wait_bound("src").await?;
            let src_dir = on_server(&server, &src_pv)?;
            let nfs = nfs_client(&server).await?;
            let leaf = src_dir.file_name().context("name")?.to_string_lossy().into_owned();
            fill_source(&nfs, &leaf).await?;
            let source = tree(&src_dir)?;
            ensure!(source.len() == 305, "the source holds {} entries", source.len());

            // On the same server, and from there into the mounted export.
            env.claim("copy", Some(&direct), clone_of("src", "10Mi")).await?;
            env.claim("copy-local", Some(&local), clone_of("src", "20Mi")).await?;
            let copy_pv = env.wait_bound("copy").await?;
            let local_pv = env.wait_bound("copy-local").await?;
            ensure!(tree(&on_server(&server, &copy_pv)?)? == source, "the copy on the server differs");
            ensure!(tree(&env.dir_of(&local_pv)?)? == source, "the copy on the mounted export differs");
            for claim in ["copy", "copy-local"] {
                env.wait_event(&env.ns, claim, "Cloning").await?;
                let done = env.wait_event(&env.ns, claim, "ProvisioningSucceeded").await?;
                let note = done.note.unwrap_or_default();
                ensure!(note.contains("as a copy of claim \"src\": 305 entries"), "{claim}: {note}");
            }
            let recorded = copy_pv.annotations().get("nfs-subdir-provisioner/cloned-from").cloned();
            ensure!(recorded == Some(format!("{}/src", env.ns)), "cloned-from: {recorded:?}");

            // The source was protected while clones of it waited, and is not any more.
            let claims = env.claims();
            poll_until("the source's cloning protection to go", WAIT, || async {
                let src = claims.get("src").await?;
                Ok((!finalizers(&src).iter().any(|f| f == CLONING_PROTECTION)).then_some(()))
            })
            .await?;

            // Metrics: the clones counted with their source, bytes copied, the source measured.
            let provisioned = format!(
                r#"controller_persistentvolumeclaim_provision_total{{class="{direct}",source="PersistentVolumeClaim"}}"#
            );
            wait_metric(http, &provisioned, |v| v == 1.0).await?;
            let copied = format!(r#"nfs_subdir_provisioner_clone_copied_bytes_total{{class="{direct}"}}"#);
            wait_metric(http, &copied, |v| v >= 5.0 * 1024.0 * 1024.0).await?;
            let volume = format!(
                r#"{{namespace="{}",persistentvolumeclaim="src",persistentvolume="{}"}}"#,
                env.ns,
                src_pv.name_any()
            );
            wait_metric(http, &format!("nfs_subdir_provisioner_volume_stats_used_bytes{volume}"), |v| {
                v >= 5.0 * 1024.0 * 1024.0
            })
            .await?;
            wait_metric(http, &format!("nfs_subdir_provisioner_volume_stats_inodes_used{volume}"), |v| {
                v == 305.0 + 1.0
            })
            .await?;
            wait_metric(
                http,
                &format!("nfs_subdir_provisioner_volume_stats_capacity_bytes{volume}"),
                |v| v == 10.0 * 1024.0 * 1024.0,
            )
            .await?;

            // Nothing is left staged on either export.
            for staging in [server.backing.join(STAGING), env.export.join(STAGING)] {
                poll_until("the staging areas to be empty", WAIT, || async {
                    let left: Vec<_> = std::fs::read_dir(&staging)
                        .map(|d| d.flatten().map(|e| e.file_name()).collect())
                        .unwrap_or_default();
                    Ok(left.is_empty().then_some(()))
                })
                .await?;
            }
            ensure!(provisioner.is_running(), "the provisioner exited");
            Ok(())
        })
        .with_timeout(Duration::from_secs(300)),
        trial("clones_are_refused_with_an_event_each_and_retried", |t| async move {
            let env = Env::new(&t, "clonerefuse").await?;
            let _provisioner = env.start(&[("ENABLE_LEADER_ELECTION", "false")])?;
            let nfs = env.class("nfs", &[], json!({})).await?;
            env.claim("src", Some(&nfs), sized("5Mi")).await?;
            let src_pv = env.wait_bound("src").await?;
            std::fs::write(env.dir_of(&src_pv)?.join("data.txt"), b"source data")?;

            // A claim nobody provisions stays Pending; a claim bound to a PV made by hand is not ours.
            let nobody = env.class("nobody", &[], json!({ "provisioner": "e2e.test/nobody" })).await?;
            env.claim("pending", Some(&nobody), json!({})).await?;
            let static_pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": { "name": format!("{}-static", env.ns) },
                "spec": {
                    "capacity": { "storage": "1Mi" },
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "nfs": { "server": "127.0.0.1", "path": "/somewhere/else" },
                    "claimRef": { "namespace": env.ns, "name": "foreign" },
                },
            }))?;
            env.volumes().create(&PostParams::default(), &static_pv).await?;
            env.claim(
                "foreign",
                None,
                json!({ "spec": { "storageClassName": "", "volumeName": format!("{}-static", env.ns) } }),
            )
            .await?;
            env.wait_bound("foreign").await?;

            env.claim("from-missing", Some(&nfs), clone_of("later", "1Mi")).await?;
            env.claim("from-pending", Some(&nfs), clone_of("pending", "1Mi")).await?;
            env.claim("from-foreign", Some(&nfs), clone_of("foreign", "1Mi")).await?;
            env.claim("too-small", Some(&nfs), clone_of("src", "1Mi")).await?;
            let mut block = clone_of("src", "5Mi");
            block["spec"]["volumeMode"] = json!("Block");
            env.claim("block", Some(&nfs), block).await?;
            env.claim(
                "from-snapshot",
                Some(&nfs),
                json!({ "spec": { "dataSource": {
                    "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap",
                } } }),
            )
            .await?;
            for (claim, says) in [
                ("from-missing", "\"later\" does not exist"),
                ("from-pending", "is Pending, not Bound"),
                ("from-foreign", "was not made by this provisioner"),
                ("too-small", "asks for 1Mi, less than the 5Mi"),
                ("block", "volumeMode Block"),
                ("from-snapshot", "needs a CSI driver with snapshot support"),
            ] {
                wait_pending_with_event(&env, claim, says).await?;
            }
            let made: Vec<String> = env.entries()?.into_iter().collect();
            ensure!(made.len() == 1, "only the source's directory exists: {made:?}");

            // What a refusal waited for appears: the clone is retried and made.
            env.claim("later", Some(&nfs), sized("1Mi")).await?;
            let later = env.wait_bound("later").await?;
            std::fs::write(env.dir_of(&later)?.join("late.txt"), b"arrived later")?;
            let copy = env.wait_bound("from-missing").await?;
            let copied = std::fs::read(env.dir_of(&copy)?.join("late.txt"))?;
            ensure!(copied == b"arrived later", "{copied:?}");
            Ok(())
        })
        .with_timeout(Duration::from_secs(300)),
        trial("a_clone_killed_mid_copy_converges_with_no_partial_volume_and_no_orphan", |t| async move {
            if !nfs_server_usable("a_clone_killed_mid_copy_converges_with_no_partial_volume_and_no_orphan")? {
                return Ok(());
            }
            let env = Env::new(&t, "clonekill").await?;
            let server = NfsServer::start(&format!("{}-nfs", env.ns), "127.0.0.5", &t.dir.join("server")).await?;
            // One request at a time: the copy takes long enough to be caught in the middle.
            let settings = [("ENABLE_LEADER_ELECTION", "false"), ("CLONE_CONCURRENCY", "1")];
            let first = env.start(&settings)?;
            let direct = env
                .class(
                    "direct",
                    &[("server", "127.0.0.5"), ("share", "/export")],
                    json!({ "mountOptions": server.mount_options() }),
                )
                .await?;
            env.claim("src", Some(&direct), sized("10Mi")).await?;
            let src_dir = on_server(&server, &env.wait_bound("src").await?)?;
            let nfs = nfs_client(&server).await?;
            let leaf = src_dir.file_name().context("name")?.to_string_lossy().into_owned();
            for d in 0..4 {
                let sub = format!("d{d}");
                nfs.mkdir_p(&[&leaf, &sub]).await?;
                let names = (0..1000).map(|i| format!("f{i}")).collect();
                nfs.create_files(&[&leaf, &sub], names, 16).await?;
            }
            fill_source(&nfs, &leaf).await?;
            let source = tree(&src_dir)?;

            let copy = env.claim("copy", Some(&direct), clone_of("src", "10Mi")).await?;
            let pv_name = format!("pvc-{}", copy.uid().context("uid")?);
            let staged = server.backing.join(STAGING).join(&pv_name).join("vol");
            let partial = poll_until("the copy to be under way", WAIT, || async {
                let n = count(&staged);
                Ok((n >= 200).then_some(n))
            })
            .await?;
            first.kill9();
            first.wait_exit_async(Duration::from_secs(10)).await.context("the killed provisioner did not exit")?;
            let at_kill = count(&staged);
            ensure!(at_kill < source.len(), "the copy was whole ({at_kill} entries) before the kill");
            eprintln!("clone kill trial: killed with {at_kill} of {} entries copied (saw {partial})", source.len());
            // Nothing partial is visible: no directory at the target, no PV.
            let placed: Vec<String> = std::fs::read_dir(&server.backing)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("-copy-"))
                .collect();
            ensure!(placed.is_empty(), "placed before the copy was whole: {placed:?}");
            ensure!(env.volumes().get_opt(&pv_name).await?.is_none(), "a PV was made before the copy was whole");

            let _second = env.start(&settings)?;
            let copy_pv = env.wait_bound("copy").await?;
            ensure!(copy_pv.name_any() == pv_name, "bound to {}", copy_pv.name_any());
            ensure!(tree(&on_server(&server, &copy_pv)?)? == source, "the resumed copy differs from its source");
            let staging = server.backing.join(STAGING);
            poll_until("the staging record to go", WAIT, || async {
                Ok((!staging.join(&pv_name).exists()).then_some(()))
            })
            .await?;
            let dirs: Vec<String> = std::fs::read_dir(&server.backing)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != STAGING)
                .collect();
            ensure!(dirs.len() == 2, "the server holds {dirs:?}: the source and its one copy only");
            let ours: Vec<PersistentVolume> = env
                .volumes()
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|pv| {
                    pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| {
                        r.namespace.as_deref() == Some(env.ns.as_str()) && r.name.as_deref() == Some("copy")
                    })
                })
                .collect();
            ensure!(ours.len() == 1, "{} PVs for the clone", ours.len());
            Ok(())
        })
        .with_timeout(Duration::from_secs(300)),
        trial("usage_is_measured_and_a_volume_over_its_request_is_told_once", |t| async move {
            let env = Env::new(&t, "usage").await?;
            let (provisioner, http) = env.start_serving(&[
                ("ENABLE_LEADER_ELECTION", "false"),
                ("USAGE_INTERVAL", "1s"),
            ])?;
            let nfs = env.class("nfs", &[], json!({})).await?;
            env.claim("data", Some(&nfs), json!({})).await?;
            let pv = env.wait_bound("data").await?;
            let dir = env.dir_of(&pv)?;
            std::fs::write(dir.join("big.bin"), vec![7u8; 3 * 1024 * 1024])?;
            let volume = format!(
                r#"{{namespace="{}",persistentvolumeclaim="data",persistentvolume="{}"}}"#,
                env.ns,
                pv.name_any()
            );
            wait_metric(http, &format!("nfs_subdir_provisioner_volume_stats_used_bytes{volume}"), |v| {
                v >= 3.0 * 1024.0 * 1024.0
            })
            .await?;
            let capacity = metric(http, &format!("nfs_subdir_provisioner_volume_stats_capacity_bytes{volume}")).await?;
            ensure!(capacity == Some(1024.0 * 1024.0), "capacity {capacity:?}");
            let over = env.wait_event(&env.ns, "data", "VolumeOverCapacity").await?;
            ensure!(over.type_.as_deref() == Some("Warning"), "{over:?}");
            let volumes = env.volumes();
            let pv_name = pv.name_any();
            poll_until("the PV to be marked over its request", WAIT, || async {
                let v = volumes.get(&pv_name).await?;
                Ok((v.annotations().get(OVER_CAPACITY).map(String::as_str) == Some("true")).then_some(()))
            })
            .await?;
            // Told once: two more rounds measure it over its request, and no second Warning comes.
            let rounds = r#"nfs_subdir_provisioner_usage_last_round_timestamp_seconds{export="127.0.0.1:"#;
            let rounds = format!("{rounds}{}\"}}", env.nfs_path);
            let marked_at = wait_metric(http, &rounds, |_| true).await?;
            wait_metric(http, &rounds, |v| v >= marked_at + 2.0).await?;
            let events: Vec<_> = kube::Api::<Event>::namespaced(env.client.clone(), &env.ns)
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("VolumeOverCapacity")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("data")
                })
                .collect();
            ensure!(
                events.len() == 1 && events[0].series.is_none(),
                "told more than once: {events:?}"
            );

            std::fs::remove_file(dir.join("big.bin"))?;
            let within = env.wait_event(&env.ns, "data", "VolumeWithinCapacity").await?;
            ensure!(within.type_.as_deref() == Some("Normal"), "{within:?}");
            poll_until("the over-capacity mark to go", WAIT, || async {
                let v = volumes.get(&pv_name).await?;
                Ok((!v.annotations().contains_key(OVER_CAPACITY)).then_some(()))
            })
            .await?;
            let export = format!(r#"{{export="127.0.0.1:{}"}}"#, env.nfs_path);
            wait_metric(http, &format!("nfs_subdir_provisioner_export_available_bytes{export}"), |v| v > 0.0).await?;

            // A class that checks free space refuses what does not fit and makes what does.
            let checked = env
                .class(
                    "checked",
                    &[],
                    json!({ "metadata": { "annotations": { "nfs-subdir-provisioner/check-free-space": "true" } } }),
                )
                .await?;
            env.claim("huge", Some(&checked), sized("1Pi")).await?;
            wait_pending_with_event(&env, "huge", "free on export").await?;
            env.claim("small", Some(&checked), json!({})).await?;
            env.wait_bound("small").await?;
            ensure!(provisioner.is_running(), "the provisioner exited");
            Ok(())
        })
        .with_timeout(Duration::from_secs(300)),
    ]
}
