//! One provisioner, no mount, two NFS servers: StorageClasses naming `server` and `share` are
//! served by the userspace NFS client against nfs-ganesha containers (scripts/nfs-server.sh),
//! each published on its own loopback address. Asserts on what each server really holds (its
//! bind-mounted backing directory), and that a server that stops answering fails only its own
//! class. The second trial does the same with an NFSv3 server and an NFSv4-only one (no MOUNT,
//! one port, a grace period after each restart), and restarts the NFSv4 server mid-run.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::PersistentVolume;
use serde_json::json;

use super::fixture::{Env, WAIT};
use crate::support::http::get;
use crate::support::nfs_server::{NfsServer, podman_usable};
use crate::support::process::ManagedChild;
use crate::support::{E2eTrial, poll_until, trial};

fn leaf(pv: &PersistentVolume) -> Result<String> {
    let nfs = pv
        .spec
        .as_ref()
        .and_then(|s| s.nfs.as_ref())
        .context("PV without an nfs source")?;
    Ok(nfs.path.rsplit('/').next().unwrap_or_default().to_owned())
}

async fn ready_says(http: SocketAddr, what: &str, want: impl Fn(u16, &str) -> bool) -> Result<String> {
    poll_until(what, WAIT, || async {
        Ok(match get(http, "/readyz").await {
            Ok((code, body)) if want(code, &body) => Some(body),
            _ => None,
        })
    })
    .await
}

/// Whether `trial` is skipped for want of podman (said loudly); an error under `E2E_REQUIRE=1`.
fn skipped_without_podman(trial: &str) -> Result<bool> {
    if podman_usable() {
        return Ok(false);
    }
    if std::env::var("E2E_REQUIRE").is_ok_and(|v| v == "1") {
        bail!("podman is not installed (bash scripts/podman-setup.sh); E2E_REQUIRE=1 forbids skipping");
    }
    eprintln!("e2e: SKIPPED {trial}: podman is not installed (bash scripts/podman-setup.sh)");
    Ok(true)
}

/// A provisioner with no mounted export (no NFS_SERVER/NFS_PATH; NFS_MOUNT_PATH points nowhere)
/// that gives up on an operation after 8 s.
fn serve_without_a_mount(env: &Env) -> Result<(ManagedChild, SocketAddr)> {
    env.start_serving(&[
        ("ENABLE_LEADER_ELECTION", "false"),
        ("NFS_SERVER", ""),
        ("NFS_PATH", ""),
        ("NFS_MOUNT_PATH", "/nonexistent/no-mount"),
        ("FS_OPERATION_TIMEOUT", "8s"),
    ])
}

/// What the owned classes ask for: deleted on release, 1000:2000, mode 2770.
const OWNED: &[(&str, &str)] = &[
    ("onDelete", "delete"),
    ("mode", "2770"),
    ("uid", "1000"),
    ("gid", "2000"),
];

/// A class `suffix` of volumes on `server`'s `/export`, with `params` besides.
async fn class_on(env: &Env, suffix: &str, server: &NfsServer, params: &[(&str, &str)]) -> Result<String> {
    let mut all = vec![("server", server.bind.as_str()), ("share", "/export")];
    all.extend_from_slice(params);
    env.class(suffix, &all, json!({ "mountOptions": server.mount_options() }))
        .await
}

/// `dir` on `server` is owned as [`OWNED`] says.
fn ensure_owned(server: &NfsServer, dir: &str) -> Result<()> {
    let md =
        std::fs::metadata(server.backing.join(dir)).with_context(|| format!("{dir} on {}", server.bind))?;
    ensure!(
        (md.uid(), md.gid(), md.mode() & 0o7777) == (1000, 2000, 0o2770),
        "{dir} on {} is {}:{} {:o}",
        server.bind,
        md.uid(),
        md.gid(),
        md.mode() & 0o7777
    );
    Ok(())
}

/// `stalled` stops answering: a new claim of `stalled_class` fails with an Event naming it and
/// readiness names its export, while one of `other_class` (on `other`) is provisioned without
/// waiting; then it answers again and both converge.
async fn a_stalled_server_fails_only_its_own_class(
    env: &Env,
    http: SocketAddr,
    (stalled, stalled_class): (&NfsServer, &str),
    (other, other_class): (&NfsServer, &str),
) -> Result<()> {
    stalled.podman("pause")?;
    env.claim("stalled", Some(stalled_class), json!({})).await?;
    env.claim("unaffected", Some(other_class), json!({})).await?;
    let started = std::time::Instant::now();
    env.wait_bound("unaffected").await?;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(20),
        "the class on {} waited {took:?} behind the stalled server",
        other.bind
    );
    let event = env.wait_event(&env.ns, "stalled", "ProvisioningFailed").await?;
    let note = event.note.unwrap_or_default();
    ensure!(
        note.contains(&stalled.bind) || note.contains("answer"),
        "event note: {note}"
    );
    let body = ready_says(http, "readiness to name the stalled export", |code, body| {
        code == 503 && body.contains(&format!("[-]export {}:/export", stalled.bind))
    })
    .await?;
    ensure!(
        body.contains(&format!("[+]export {}:/export", other.bind)),
        "{body}"
    );
    stalled.podman("unpause")?;
    env.wait_bound("stalled").await?;
    ready_says(http, "readiness to return", |code, _| code == 200).await?;
    Ok(())
}

/// Deletes `claims` and waits until their PVs are gone; then each `(server, dir, archived)`:
/// `dir` is gone from `server`, and archived there or not.
async fn release_as_classes_say(
    env: &Env,
    claims: &[(&str, &PersistentVolume)],
    expected: &[(&NfsServer, &str, bool)],
) -> Result<()> {
    for (claim, _) in claims {
        env.delete_claim(claim).await?;
    }
    for (_, pv) in claims {
        env.wait_pv_gone(&pv.metadata.name.clone().unwrap_or_default())
            .await?;
    }
    for (server, dir, archived) in expected {
        ensure!(
            !server.backing.join(dir).exists(),
            "{dir} still on {}",
            server.bind
        );
        ensure!(
            server.backing.join(format!("archived-{dir}")).is_dir() == *archived,
            "{dir} on {}: archived {}, expected {archived}",
            server.bind,
            !archived
        );
    }
    Ok(())
}

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial(
            "two_nfs_servers_served_directly_by_one_provisioner_without_a_mount",
            |t| async move {
                if skipped_without_podman(
                    "two_nfs_servers_served_directly_by_one_provisioner_without_a_mount",
                )? {
                    return Ok(());
                }
                let env = Env::new(&t, "direct").await?;
                let (name_a, name_b) = (format!("{}-a", env.ns), format!("{}-b", env.ns));
                let (root_a, root_b) = (t.dir.join("server-a"), t.dir.join("server-b"));
                let (a, b) = tokio::try_join!(
                    NfsServer::start(&name_a, "127.0.0.2", &root_a),
                    NfsServer::start(&name_b, "127.0.0.3", &root_b),
                )?;
                // No NFS_SERVER/NFS_PATH: nothing is mounted; NFS_MOUNT_PATH points nowhere.
                let (provisioner, http) = serve_without_a_mount(&env)?;
                let class_a = class_on(&env, "a", &a, &[]).await?;
                let class_b = class_on(&env, "b", &b, OWNED).await?;

                // Both are provisioned, each on its own server only.
                env.claim("one", Some(&class_a), json!({})).await?;
                env.claim("two", Some(&class_b), json!({})).await?;
                let pv_a = env.wait_bound("one").await?;
                let pv_b = env.wait_bound("two").await?;
                let nfs_a = pv_a.spec.as_ref().and_then(|s| s.nfs.clone()).context("no nfs")?;
                let nfs_b = pv_b.spec.as_ref().and_then(|s| s.nfs.clone()).context("no nfs")?;
                ensure!(
                    nfs_a.server == "127.0.0.2" && nfs_a.path.starts_with("/export/"),
                    "{nfs_a:?}"
                );
                ensure!(
                    nfs_b.server == "127.0.0.3" && nfs_b.path.starts_with("/export/"),
                    "{nfs_b:?}"
                );
                let (dir_a, dir_b) = (leaf(&pv_a)?, leaf(&pv_b)?);
                ensure!(a.backing.join(&dir_a).is_dir(), "{dir_a} not on server a");
                ensure!(!b.backing.join(&dir_a).exists(), "{dir_a} also on server b");
                ensure_owned(&b, &dir_b)?;
                ensure!(!a.backing.join(&dir_b).exists(), "{dir_b} also on server a");
                ready_says(http, "both exports to answer", |code, body| {
                    code == 200
                        && body.contains("[+]export 127.0.0.2:/export")
                        && body.contains("[+]export 127.0.0.3:/export")
                })
                .await?;

                // Server a stops answering: class a fails with Events and readiness; class b goes on.
                a_stalled_server_fails_only_its_own_class(&env, http, (&a, &class_a), (&b, &class_b)).await?;

                // Release: class a archives on server a, class b deletes on server b.
                release_as_classes_say(
                    &env,
                    &[("one", &pv_a), ("two", &pv_b)],
                    &[(&a, &dir_a, true), (&b, &dir_b, false)],
                )
                .await?;
                ensure!(provisioner.is_running(), "the provisioner exited");
                Ok(())
            },
        )
        .with_timeout(Duration::from_secs(400)),
        trial(
            "nfsv3_and_nfsv4_only_servers_served_at_once_and_a_v4_restart_converges",
            |t| async move {
                if skipped_without_podman(
                    "nfsv3_and_nfsv4_only_servers_served_at_once_and_a_v4_restart_converges",
                )? {
                    return Ok(());
                }
                let env = Env::new(&t, "direct4").await?;
                let (name_3, name_4) = (format!("{}-v3", env.ns), format!("{}-v4", env.ns));
                let (root_3, root_4) = (t.dir.join("server-v3"), t.dir.join("server-v4"));
                let (v3, v4) = tokio::try_join!(
                    NfsServer::start(&name_3, "127.0.0.6", &root_3),
                    NfsServer::start_v4_only(&name_4, "127.0.0.7", &root_4, Some(5)),
                )?;
                let (provisioner, http) = serve_without_a_mount(&env)?;
                let class_3 = class_on(&env, "v3", &v3, &[]).await?;
                let class_4 = class_on(&env, "v4", &v4, OWNED).await?;
                // And the other way of releasing on each: the v3 server deletes, the v4 one archives.
                let class_3_delete = class_on(&env, "v3-delete", &v3, &[("onDelete", "delete")]).await?;
                let class_4_archive = class_on(&env, "v4-archive", &v4, &[]).await?;

                // One volume on each, each on its own server only, with the v4 class's owner and mode.
                env.claim("three", Some(&class_3), json!({})).await?;
                env.claim("four", Some(&class_4), json!({})).await?;
                env.claim("three-d", Some(&class_3_delete), json!({})).await?;
                env.claim("four-a", Some(&class_4_archive), json!({})).await?;
                let pv_3 = env.wait_bound("three").await?;
                let pv_4 = env.wait_bound("four").await?;
                let pv_3d = env.wait_bound("three-d").await?;
                let pv_4a = env.wait_bound("four-a").await?;
                let (dir_3d, dir_4a) = (leaf(&pv_3d)?, leaf(&pv_4a)?);
                ensure!(v3.backing.join(&dir_3d).is_dir() && v4.backing.join(&dir_4a).is_dir());
                let (dir_3, dir_4) = (leaf(&pv_3)?, leaf(&pv_4)?);
                ensure!(
                    v3.backing.join(&dir_3).is_dir() && !v4.backing.join(&dir_3).exists(),
                    "{dir_3}"
                );
                ensure_owned(&v4, &dir_4)?;
                ready_says(http, "both exports to answer", |code, body| {
                    code == 200
                        && body.contains("[+]export 127.0.0.6:/export")
                        && body.contains("[+]export 127.0.0.7:/export")
                })
                .await?;

                // The v4 server restarts (its sessions lost, then 5 s of grace) while claims arrive:
                // each is provisioned once, into its own directory.
                let during = ["r1", "r2", "r3"];
                for claim in during {
                    env.claim(claim, Some(&class_4), json!({})).await?;
                }
                v4.restart().await?;
                let mut dirs = Vec::new();
                for claim in during {
                    let pv = env.wait_bound(claim).await?;
                    let dir = leaf(&pv)?;
                    ensure!(
                        v4.backing.join(&dir).is_dir(),
                        "{claim}: {dir} missing on the v4 server"
                    );
                    dirs.push(dir);
                }
                let pvs = env.volumes().list(&Default::default()).await?;
                for claim in during {
                    let named = pvs
                        .items
                        .iter()
                        .filter(|pv| {
                            pv.spec
                                .as_ref()
                                .and_then(|s| s.claim_ref.as_ref())
                                .is_some_and(|r| {
                                    r.name.as_deref() == Some(claim)
                                        && r.namespace.as_deref() == Some(env.ns.as_str())
                                })
                        })
                        .count();
                    ensure!(named == 1, "{claim}: {named} PVs");
                }
                let on_server: Vec<String> = std::fs::read_dir(&v4.backing)?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                for name in &on_server {
                    ensure!(
                        *name == dir_4 || *name == dir_4a || dirs.contains(name),
                        "{name} on the v4 server is no volume's (all: {on_server:?})"
                    );
                }

                // The v4 server stops answering: its class fails with Events and readiness; the v3
                // class goes on.
                a_stalled_server_fails_only_its_own_class(&env, http, (&v4, &class_4), (&v3, &class_3))
                    .await?;

                // Release, both ways on each server.
                release_as_classes_say(
                    &env,
                    &[
                        ("three", &pv_3),
                        ("four", &pv_4),
                        ("three-d", &pv_3d),
                        ("four-a", &pv_4a),
                    ],
                    &[
                        (&v3, &dir_3, true),
                        (&v4, &dir_4, false),
                        (&v3, &dir_3d, false),
                        (&v4, &dir_4a, true),
                    ],
                )
                .await?;
                ensure!(provisioner.is_running(), "the provisioner exited");
                Ok(())
            },
        )
        .with_timeout(Duration::from_secs(400)),
    ]
}
