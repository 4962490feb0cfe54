//! One provisioner under test with an export of its own: its namespace (claims, ServiceAccount,
//! Lease), its provisioner name, its export directory, and helpers that create classes and claims
//! and wait for what a user would see.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::{ControlPlane, ManagedChild, TrialCtx, free_ports, poll_until};

pub const WAIT: Duration = Duration::from_secs(60);
pub const BINARY: &str = env!("CARGO_BIN_EXE_nfs-subdir-provisioner");
pub const SERVER: &str = "127.0.0.1";

pub struct Env {
    pub t: TrialCtx,
    pub client: Client,
    pub ns: String,
    pub provisioner: String,
    /// The directory playing the export (NFS_MOUNT_PATH).
    pub export: PathBuf,
    /// NFS_PATH: what PVs point at.
    pub nfs_path: String,
    pub kubeconfig: PathBuf,
    started: std::cell::Cell<usize>,
}

impl Env {
    /// On the shared control plane.
    pub async fn new(t: &TrialCtx, prefix: &str) -> Result<Env> {
        Env::on(t, t.cp(), prefix).await
    }

    /// On `cp`, e.g. a trial's private control plane.
    pub async fn on(t: &TrialCtx, cp: &ControlPlane, prefix: &str) -> Result<Env> {
        let ns = t.unique_name(prefix);
        cp.create_namespace(&ns).await?;
        let kubeconfig = cp.service_account_kubeconfig(&ns, &t.suite.rbac_dir).await?;
        let export = t.dir.join("export");
        std::fs::create_dir_all(&export)?;
        Ok(Env {
            t: t.clone(),
            client: cp.admin_client(),
            provisioner: format!("e2e.test/{ns}"),
            nfs_path: format!("/exports/{ns}"),
            ns,
            export,
            kubeconfig,
            started: std::cell::Cell::new(0),
        })
    }

    /// Starts a provisioner process exactly as a Deployment would (env vars, SA kubeconfig).
    pub fn start(&self, extra: &[(&str, &str)]) -> Result<ManagedChild> {
        Ok(self.start_serving(extra)?.0)
    }

    /// [`Env::start`], also returning where it serves /healthz, /readyz and /metrics.
    pub fn start_serving(&self, extra: &[(&str, &str)]) -> Result<(ManagedChild, SocketAddr)> {
        let [port] = free_ports::<1>()?;
        let http: SocketAddr = ([127, 0, 0, 1], port).into();
        let n = self.started.get() + 1;
        self.started.set(n);
        let pod_name = format!("replica-{n}");
        let http_addr = http.to_string();
        let mut env = vec![("POD_NAME", pod_name.as_str()), ("HTTP_ADDR", http_addr.as_str())];
        env.extend_from_slice(extra);
        let child = self.t.spawn(
            &format!("provisioner-{n}"),
            Path::new(BINARY),
            std::iter::empty::<&str>(),
            self.provisioner_env(&env),
        )?;
        Ok((child, http))
    }

    /// The environment of a provisioner of this Env, as its Deployment would set it; `extra`
    /// adds or overrides.
    pub fn provisioner_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PROVISIONER_NAME".into(), self.provisioner.clone()),
            ("NFS_SERVER".into(), SERVER.into()),
            ("NFS_PATH".into(), format!("{}/", self.nfs_path)),
            ("NFS_MOUNT_PATH".into(), self.export.display().to_string()),
            ("KUBECONFIG".into(), self.kubeconfig.display().to_string()),
            ("POD_NAMESPACE".into(), self.ns.clone()),
            ("LOG_FORMAT".into(), "text".into()),
            (
                "RUST_LOG".into(),
                std::env::var("E2E_PROVISIONER_LOG")
                    .unwrap_or_else(|_| "info,nfs_subdir_provisioner=debug".into()),
            ),
        ];
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).into(), (*v).into()));
        }
        env
    }

    /// Runs `nfs-subdir-provisioner check` with this Env's configuration: (exit code, stdout).
    pub async fn check(&self, extra: &[(&str, &str)]) -> Result<(i32, String)> {
        let (code, stdout, _) = self.command(&["check"], extra).await?;
        Ok((code, stdout))
    }

    /// Runs the binary with `args` (a command and its flags) and this Env's configuration, as an
    /// admin would in the provisioner's pod: (exit code, stdout, stderr).
    pub async fn command(&self, args: &[&str], extra: &[(&str, &str)]) -> Result<(i32, String, String)> {
        let mut cmd = std::process::Command::new(BINARY);
        cmd.args(args)
            .envs(self.provisioner_env(extra))
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null());
        let shown = args.join(" ");
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .with_context(|| format!("running nfs-subdir-provisioner {shown}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let code = output.status.code().with_context(|| {
            format!(
                "nfs-subdir-provisioner {} was killed by a signal; stderr: {stderr}",
                args.join(" ")
            )
        })?;
        Ok((code, stdout, stderr))
    }

    pub fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    pub fn classes(&self) -> Api<StorageClass> {
        Api::all(self.client.clone())
    }

    /// A StorageClass of ours named `<ns>-<suffix>`; `extra` is merged into the object.
    pub async fn class(&self, suffix: &str, params: &[(&str, &str)], extra: Value) -> Result<String> {
        let name = format!("{}-{suffix}", self.ns);
        let params: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        let mut class = json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": { "name": name },
            "provisioner": self.provisioner,
            "parameters": params,
        });
        merge(&mut class, extra);
        self.classes()
            .create(&PostParams::default(), &serde_json::from_value(class)?)
            .await?;
        Ok(name)
    }

    /// A 1Mi ReadWriteMany claim; `extra` is merged into the object (labels, annotations, spec).
    pub async fn claim(
        &self,
        name: &str,
        class: Option<&str>,
        extra: Value,
    ) -> Result<PersistentVolumeClaim> {
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
        merge(&mut claim, extra);
        Ok(self
            .claims()
            .create(&PostParams::default(), &serde_json::from_value(claim)?)
            .await?)
    }

    pub async fn wait_bound(&self, claim: &str) -> Result<PersistentVolume> {
        let claims = self.claims();
        let bound = poll_until(&format!("claim {claim} to be Bound"), WAIT, || async {
            let c = claims.get(claim).await?;
            Ok((c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")).then_some(c))
        })
        .await?;
        let pv = bound
            .spec
            .and_then(|s| s.volume_name)
            .context("bound claim without volumeName")?;
        Ok(self.volumes().get(&pv).await?)
    }

    pub async fn delete_claim(&self, claim: &str) -> Result<()> {
        self.claims().delete(claim, &DeleteParams::default()).await?;
        Ok(())
    }

    pub async fn wait_pv_gone(&self, pv: &str) -> Result<()> {
        let volumes = self.volumes();
        poll_until(&format!("PV {pv} to be deleted"), WAIT, || async {
            Ok(volumes.get_opt(pv).await?.is_none().then_some(()))
        })
        .await
    }

    pub async fn wait_pv_phase(&self, pv: &str, phase: &str) -> Result<PersistentVolume> {
        let volumes = self.volumes();
        poll_until(&format!("PV {pv} to be {phase}"), WAIT, || async {
            let v = volumes.get(pv).await?;
            Ok((v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase)).then_some(v))
        })
        .await
    }

    /// Waits for an events.k8s.io Event with `reason` about the object named `regarding` in
    /// `namespace` (claims: their namespace; PVs: "default").
    pub async fn wait_event(&self, namespace: &str, regarding: &str, reason: &str) -> Result<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        poll_until(&format!("a {reason} event about {regarding}"), WAIT, || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
            }))
        })
        .await
    }

    /// The directory a bound PV points at, checked to be inside this export.
    pub fn dir_of(&self, pv: &PersistentVolume) -> Result<PathBuf> {
        let nfs = pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .context("PV without nfs source")?;
        if nfs.server != SERVER {
            bail!("PV {} points at server {}", pv.name_any(), nfs.server);
        }
        let rel = nfs
            .path
            .strip_prefix(&format!("{}/", self.nfs_path))
            .with_context(|| format!("PV path {} outside {}", nfs.path, self.nfs_path))?;
        Ok(self.export.join(rel))
    }

    /// Top-level entries of the export, without the staging area.
    pub fn entries(&self) -> Result<BTreeSet<String>> {
        entries(&self.export)
    }
}

pub fn entries(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != ".nfs-subdir-provisioner" {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Deep-merges `extra` into `base` (objects merge, everything else replaces).
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) if !e.is_null() => *b = e,
        _ => {}
    }
}

pub fn mode_of(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
}
