//! The local trial, `bash scripts/trial.sh [--once]`: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, started by the end-to-end suite's own harness), the NFS server
//! container when podman can run it, and the provisioner of this checkout, all on loopback; then
//! the scenario of the Kubernetes storage tutorials, step by step, and a table of what was made
//! where. It keeps running until Ctrl-C, or with `--once` tears down and exits 0 only if every
//! step held (CI runs it so).
//!
//! Not a test of its own (`test = false`): `scripts/trial.sh` builds the control plane (cached)
//! and runs it with `KUBEBUILDER_ASSETS` set.

#[path = "e2e/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use support::nfs_server::{NfsServer, podman_usable};
use support::process::ManagedChild;
use support::{ControlPlane, free_ports, poll_until};

const BINARY: &str = env!("CARGO_BIN_EXE_nfs-subdir-provisioner");
const PROVISIONER: &str = "k8s-sigs.io/nfs-subdir-external-provisioner";
/// The mounted export's server as PVs name it; the NFS server container is on its own address.
const SERVER: &str = "127.0.0.1";
const NFS_SERVER_BIND: &str = "127.0.0.2";
/// What PVs of the mounted export point at (the provisioner writes into its local directory).
const NFS_PATH: &str = "/export";
const NAMESPACE: &str = "default";
const PROVISIONER_NAMESPACE: &str = "nfs-provisioner";
const WAIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let once = std::env::args().any(|a| a == "--once");
    let started = Instant::now();
    match run(once, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trial: FAILED: {}", support::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn step(started: Instant, what: &str) {
    println!("[{:>5.1}s] {what}", started.elapsed().as_secs_f64());
}

/// What the trial started, stopped on drop (by pid and container name; nothing else).
struct Started {
    cp: ControlPlane,
    nfs: Option<NfsServer>,
    provisioner: Option<ManagedChild>,
    workdir: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(p) = &self.provisioner {
            p.kill9();
        }
        drop(self.nfs.take());
        self.cp.shutdown();
    }
}

fn run(once: bool, t0: Instant) -> Result<()> {
    let assets = support::assets_from_env()
        .map_err(|why| anyhow::anyhow!("{why}; scripts/trial.sh builds the control plane and sets it"))?;
    let workdir = std::env::temp_dir().join(format!("nfs-subdir-trial-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).with_context(|| format!("create {}", workdir.display()))?;
    step(
        t0,
        &format!(
            "starting etcd, kube-apiserver and kube-controller-manager (Kubernetes 1.20) in {}",
            workdir.display()
        ),
    );
    let cp = ControlPlane::start(&assets, &workdir.join("control-plane"))?;
    step(
        t0,
        &format!(
            "control plane ready at {} ({})",
            cp.server_url(),
            cp.startup_phases()
        ),
    );
    let mut started = Started {
        cp,
        nfs: None,
        provisioner: None,
        workdir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(scenario(&mut started, once, t0));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match &result {
        Ok(()) => step(t0, "stopped everything the trial started"),
        Err(_) => eprintln!(
            "trial: logs of every process are kept in {}",
            started.workdir.display()
        ),
    }
    let workdir = started.workdir.clone();
    drop(started);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    result
}

async fn scenario(s: &mut Started, once: bool, t0: Instant) -> Result<()> {
    let client = s.cp.admin_client();
    let export = s.workdir.join("export");
    std::fs::create_dir_all(&export)?;

    // The NFS server, for a class served directly, without a mount.
    s.nfs = match nfs_server(&s.workdir, t0).await {
        Ok(server) => {
            step(
                t0,
                &format!(
                    "NFS server (nfs-ganesha in podman) serving {}:{} /export from {}",
                    server.bind,
                    server.port,
                    server.backing.display()
                ),
            );
            Some(server)
        }
        Err(why) => {
            step(
                t0,
                &format!("no NFS server container: {why}; going on with the local directory only"),
            );
            None
        }
    };

    let kubeconfig =
        s.cp.service_account_kubeconfig(PROVISIONER_NAMESPACE, &support::rbac_dir())
            .await?;
    let [port] = free_ports::<1>()?;
    let http: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = s.workdir.join("provisioner.log");
    let env = [
        ("PROVISIONER_NAME", PROVISIONER.to_owned()),
        ("NFS_SERVER", SERVER.to_owned()),
        ("NFS_PATH", NFS_PATH.to_owned()),
        ("NFS_MOUNT_PATH", export.display().to_string()),
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("POD_NAMESPACE", PROVISIONER_NAMESPACE.to_owned()),
        ("POD_NAME", "trial".to_owned()),
        ("HTTP_ADDR", http.to_string()),
        ("LOG_FORMAT", "text".to_owned()),
    ];
    s.provisioner = Some(ManagedChild::spawn(
        "provisioner",
        Path::new(BINARY),
        std::iter::empty::<&str>(),
        env,
        &log,
    )?);
    poll_until("the provisioner to lead and be ready", WAIT, || async {
        Ok(support::http::get(http, "/readyz")
            .await
            .ok()
            .filter(|(code, _)| *code == 200)
            .map(|_| ()))
    })
    .await?;
    step(
        t0,
        &format!(
            "provisioner of this checkout leading (Lease in {PROVISIONER_NAMESPACE}), probes and metrics on http://{http}, log {}",
            log.display()
        ),
    );

    // The classes of the tutorials: a default one, and one per release policy and layout.
    let classes: Api<StorageClass> = Api::all(client.clone());
    let mut made = vec![
        class("nfs-client", json!({ "archiveOnDelete": "false" }), None),
        class("nfs-archive", json!({}), None),
        class("nfs-retain", json!({ "onDelete": "retain" }), None),
        class(
            "nfs-pattern",
            json!({ "pathPattern": "${.PVC.namespace}/${.PVC.name}" }),
            None,
        ),
    ];
    if let Some(nfs) = &s.nfs {
        made.push(class(
            "nfs-direct",
            json!({ "server": nfs.bind, "share": "/export" }),
            Some(nfs.mount_options()),
        ));
    }
    for c in &made {
        classes
            .create(&PostParams::default(), &serde_json::from_value(c.clone())?)
            .await?;
    }
    step(
        t0,
        &format!(
            "StorageClasses {}",
            made.iter()
                .map(|c| c["metadata"]["name"].as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let default =
        json!({ "metadata": { "annotations": { "storageclass.kubernetes.io/is-default-class": "true" } } });
    classes
        .patch("nfs-client", &PatchParams::default(), &Patch::Merge(&default))
        .await?;
    step(
        t0,
        "kubectl patch storageclass nfs-client -p '{\"metadata\":{\"annotations\":{\"storageclass.kubernetes.io/is-default-class\":\"true\"}}}'",
    );

    // The API server's admission fills in the default class from its own cache of classes: ask
    // it (a dry run) until it has seen the patch.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    poll_until("the API server to know the default class", WAIT, || async {
        let c = claims.create(&dry_run, &claim("data", None)?).await?;
        Ok((c.spec.and_then(|s| s.storage_class_name).as_deref() == Some("nfs-client")).then_some(()))
    })
    .await?;
    claims
        .create(&PostParams::default(), &claim("data", None)?)
        .await?;
    step(t0, "claim data, with no class: the default class's");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    sets.create(&PostParams::default(), &statefulset()?).await?;
    step(
        t0,
        "StatefulSet web, 3 replicas, volumeClaimTemplates www: claims www-web-0, www-web-1, www-web-2",
    );
    let mut own = vec![
        ("archived", "nfs-archive"),
        ("kept", "nfs-retain"),
        ("patterned", "nfs-pattern"),
    ];
    if s.nfs.is_some() {
        own.push(("direct", "nfs-direct"));
    }
    for (name, class) in &own {
        claims
            .create(&PostParams::default(), &claim(name, Some(class))?)
            .await?;
    }
    step(
        t0,
        &format!(
            "claims {}",
            own.iter()
                .map(|(n, c)| format!("{n} ({c})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    let mut names: Vec<String> = vec![
        "data".into(),
        "www-web-0".into(),
        "www-web-1".into(),
        "www-web-2".into(),
    ];
    names.extend(own.iter().map(|(n, _)| (*n).to_owned()));
    let mut rows = Vec::new();
    for name in &names {
        let pv = bound(&client, name).await?;
        let class = pv
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .unwrap_or_default();
        let nfs = pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.clone())
            .context("PV without nfs")?;
        let on_disk = on_disk(&nfs.server, &nfs.path, &export, s.nfs.as_ref())?;
        ensure!(
            on_disk.is_dir(),
            "{name}: {} is not a directory",
            on_disk.display()
        );
        std::fs::write(on_disk.join("hello.txt"), format!("written for {name}\n"))?;
        rows.push([
            name.clone(),
            class,
            pv.name_any(),
            format!("{}:{}", nfs.server, nfs.path),
            on_disk.display().to_string(),
        ]);
    }
    ensure!(
        rows[0][1] == "nfs-client",
        "data got class {} instead of the default",
        rows[0][1]
    );
    step(t0, "every claim is Bound, each with its own directory:");
    print_table(
        &["claim", "class", "PV", "server:path", "directory on disk"],
        &rows,
    );

    // Release one claim of each policy.
    let dir_of = |claim: &str| PathBuf::from(&rows.iter().find(|r| r[0] == claim).expect("row")[4]);
    let released = [("data", "delete"), ("archived", "archive"), ("kept", "retain")];
    for (claim, _) in &released {
        let pv = claims
            .get(claim)
            .await?
            .spec
            .and_then(|s| s.volume_name)
            .context("volume")?;
        claims.delete(claim, &DeleteParams::default()).await?;
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        poll_until(
            &format!("PV {pv} of {claim} to be released and deleted"),
            WAIT,
            || async { Ok(volumes.get_opt(&pv).await?.is_none().then_some(())) },
        )
        .await?;
    }
    step(
        t0,
        "released data (nfs-client: delete), archived (nfs-archive: archive), kept (nfs-retain: retain):",
    );
    for (claim, policy) in &released {
        let dir = dir_of(claim);
        let archive = dir.with_file_name(format!(
            "archived-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        ));
        let (held, shown) = match *policy {
            "delete" => (
                !dir.exists() && !archive.exists(),
                format!("{} is gone", dir.display()),
            ),
            "archive" => (
                !dir.exists() && archive.join("hello.txt").is_file(),
                format!("now {}", archive.display()),
            ),
            _ => (
                dir.join("hello.txt").is_file(),
                format!("{} is still there", dir.display()),
            ),
        };
        ensure!(held, "{claim} ({policy}): {shown} does not hold");
        println!("    {claim:<10} {policy:<8} {shown}");
    }

    let memory = memory(s);
    step(t0, &format!("memory (RSS): {memory}"));
    println!();
    println!("The cluster is yours to try:");
    println!("  export KUBECONFIG={}", s.cp.admin_kubeconfig().display());
    println!("  metrics: curl http://{http}/metrics   readiness: curl http://{http}/readyz");
    println!("  1. kubectl get pvc,pv");
    println!(
        "  2. grow a claim: kubectl patch pvc www-web-0 -p '{{\"spec\":{{\"resources\":{{\"requests\":{{\"storage\":\"5Mi\"}}}}}}}}'"
    );
    println!(
        "  3. reuse directories: kubectl annotate storageclass nfs-pattern nfs-subdir-provisioner/reuse-existing-directory=true"
    );
    if once {
        return Ok(());
    }
    println!("Ctrl-C stops everything the trial started.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

async fn nfs_server(workdir: &Path, t0: Instant) -> Result<NfsServer, String> {
    if !is_root() {
        return Err("the NFS server container needs root (rootful podman)".into());
    }
    if !podman_usable() {
        step(
            t0,
            "installing podman and building the NFS server image from Debian's archive (once, about a minute)",
        );
    }
    let name = format!("nfs-subdir-trial-{}", std::process::id());
    NfsServer::start(&name, NFS_SERVER_BIND, &workdir.join("nfs-server"))
        .await
        .map_err(|e| {
            support::error_chain(&e)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Where a PV's directory is on this machine: the provisioner's local directory for the mounted
/// export, the container's backing directory for the direct class.
fn on_disk(server: &str, path: &str, export: &Path, nfs: Option<&NfsServer>) -> Result<PathBuf> {
    let rest = path.strip_prefix(&format!("{NFS_PATH}/"));
    match (rest, nfs) {
        (Some(rest), _) if server == SERVER => Ok(export.join(rest)),
        (Some(rest), Some(nfs)) if server == nfs.bind => Ok(nfs.backing.join(rest)),
        _ => bail!("PV points at {server}:{path}, outside the trial's exports"),
    }
}

fn class(name: &str, parameters: Value, mount_options: Option<Value>) -> Value {
    let mut class = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": { "name": name },
        "provisioner": PROVISIONER,
        "parameters": parameters,
        "allowVolumeExpansion": true,
    });
    if let Some(options) = mount_options {
        class["mountOptions"] = options;
    }
    class
}

fn claim(name: &str, class: Option<&str>) -> Result<PersistentVolumeClaim> {
    let mut claim = json!({
        "metadata": { "name": name },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": { "requests": { "storage": "1Mi" } },
        },
    });
    if let Some(class) = class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    Ok(serde_json::from_value(claim)?)
}

/// The tutorials' StatefulSet. `podManagementPolicy: Parallel`, so its three claims appear at once
/// without a kubelet to run the pods.
fn statefulset() -> Result<StatefulSet> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "serviceName": "nginx",
            "replicas": 3,
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": "nginx" } },
            "template": {
                "metadata": { "labels": { "app": "nginx" } },
                "spec": { "containers": [{
                    "name": "nginx",
                    "image": "registry.k8s.io/nginx-slim:0.8",
                    "volumeMounts": [{ "name": "www", "mountPath": "/usr/share/nginx/html" }],
                }] },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "www" },
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": { "requests": { "storage": "1Mi" } },
                },
            }],
        },
    }))?)
}

async fn bound(client: &Client, claim: &str) -> Result<PersistentVolume> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let bound = poll_until(&format!("claim {claim} to be Bound"), WAIT, || async {
        let c = claims.get_opt(claim).await?;
        Ok(c.filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")))
    })
    .await?;
    let pv = bound
        .spec
        .and_then(|s| s.volume_name)
        .context("bound claim without volumeName")?;
    Ok(Api::<PersistentVolume>::all(client.clone()).get(&pv).await?)
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths: [usize; N] = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("    {}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The resident memory of every process the trial started, from /proc.
fn memory(s: &Started) -> String {
    let mut parts: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, pid) in s.cp.pids() {
        parts.insert(name, rss_kib(pid));
    }
    if let Some(p) = &s.provisioner {
        parts.insert("provisioner", rss_kib(p.pid()));
    }
    if let Some(nfs) = &s.nfs {
        parts.insert("NFS server container", container_kib(&nfs.name));
    }
    let total: u64 = parts.values().sum();
    let listed: Vec<String> = parts
        .iter()
        .map(|(n, k)| format!("{n} {:.0} MiB", *k as f64 / 1024.0))
        .collect();
    format!("{} MiB in all: {}", total / 1024, listed.join(", "))
}

/// The container's memory as podman counts it (its cgroup), e.g. "41.2MB / 25.2GB".
fn container_kib(name: &str) -> u64 {
    let out = std::process::Command::new("podman")
        .args(["stats", "--no-stream", "--format", "{{.MemUsage}}", name])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let used = text.split('/').next().unwrap_or_default().trim();
    let (number, unit) = used.split_at(used.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(used.len()));
    let number: f64 = number.parse().unwrap_or(0.0);
    let factor = match unit {
        "kB" => 1000.0,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => 1.0,
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let kib = (number * factor / 1024.0) as u64;
    kib
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
