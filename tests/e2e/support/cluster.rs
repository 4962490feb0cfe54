//! A real Kubernetes 1.20 control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager on 127.0.0.1, TLS everywhere, all processes killed on drop.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{GetParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};

use super::poll::poll_until;
use super::process::{ManagedChild, log_tail};

/// The namespace written in the project's RBAC manifests; replaced by the namespace under test.
pub const MANIFEST_NAMESPACE: &str = "nfs-provisioner";
/// Issuer and audience of ServiceAccount tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

const ETCD_READY: Duration = Duration::from_secs(60);
const APISERVER_READY: Duration = Duration::from_secs(120);
const DEFAULTS_READY: Duration = Duration::from_secs(90);
/// Lifetime of tokens issued by [`ControlPlane::service_account_kubeconfig`].
const TOKEN_SECONDS: i64 = 365 * 24 * 3600;

/// kube-controller-manager's client-side rate limit (`--kube-api-qps`, `--kube-api-burst`). Every
/// controller of it gets a client of its own, each with this budget: the PV binder's writes (the
/// hand-over annotation, binding, `Released`) are paced by it alone, pvc-protection's by another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KcmClientLimits {
    pub qps: u32,
    pub burst: u32,
}

impl KcmClientLimits {
    /// kube-controller-manager's own defaults, what most clusters run.
    pub const DEFAULT: KcmClientLimits = KcmClientLimits { qps: 20, burst: 30 };
    /// The suite's: high enough that no controller waits for its client-side budget in a trial, so
    /// a slow trial is never the rate limiter's doing.
    pub const GENEROUS: KcmClientLimits = KcmClientLimits { qps: 200, burst: 400 };
}

impl std::fmt::Display for KcmClientLimits {
    /// `qps/burst`, as the benchmark's settings are written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.qps, self.burst)
    }
}

/// What a [`ControlPlane`] is started with beyond the binaries and the working directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartOptions {
    pub kcm_client: KcmClientLimits,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            kcm_client: KcmClientLimits::GENEROUS,
        }
    }
}

/// A running etcd + kube-apiserver + kube-controller-manager. Dropping it SIGKILLs all three.
pub struct ControlPlane {
    workdir: PathBuf,
    server: String,
    ca_pem: String,
    admin_kubeconfig: PathBuf,
    admin_config: Config,
    apiserver_program: PathBuf,
    apiserver_args: Vec<String>,
    kcm: ManagedChild,
    apiserver: ManagedChild,
    etcd: ManagedChild,
    startup: Duration,
    startup_phases: String,
    // Declared last: removed after the processes are dead.
    _etcd_data: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager from the binaries in `assets`, with
    /// certificates, kubeconfigs and logs (`workdir/logs/*.log`) in `workdir` (created if needed),
    /// and waits until `/readyz` answers 200 and the `default` namespace and its `default`
    /// ServiceAccount exist.
    ///
    /// Blocking; callable from anywhere, also from inside a tokio runtime (the waiting happens on
    /// a helper thread with its own runtime).
    pub fn start(assets: &Path, workdir: &Path) -> anyhow::Result<ControlPlane> {
        Self::start_with(assets, workdir, StartOptions::default())
    }

    /// [`ControlPlane::start`] with `options` (e.g. kube-controller-manager's client limits).
    pub fn start_with(assets: &Path, workdir: &Path, options: StartOptions) -> anyhow::Result<ControlPlane> {
        run_on_helper_thread(Self::start_async_with(assets, workdir, options))
    }

    /// Async flavour of [`ControlPlane::start`].
    pub async fn start_async(assets: &Path, workdir: &Path) -> anyhow::Result<ControlPlane> {
        Self::start_async_with(assets, workdir, StartOptions::default()).await
    }

    /// Async flavour of [`ControlPlane::start_with`].
    pub async fn start_async_with(
        assets: &Path,
        workdir: &Path,
        options: StartOptions,
    ) -> anyhow::Result<ControlPlane> {
        let t0 = Instant::now();
        std::fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
        let workdir = std::fs::canonicalize(workdir)?;
        let bin = |name: &str| -> anyhow::Result<PathBuf> {
            let path = assets.join(name);
            if !path.is_file() {
                bail!("{} is missing", path.display());
            }
            Ok(path)
        };
        let (etcd_bin, apiserver_bin, kcm_bin) = (
            bin("etcd")?,
            bin("kube-apiserver")?,
            bin("kube-controller-manager")?,
        );

        let [etcd_port, etcd_peer_port, apiserver_port, kcm_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let pki = Pki::generate(&workdir.join("pki"))?;
        let logs = workdir.join("logs");

        // etcd: on tmpfs when there is one (fsync on a VM disk is the bottleneck of big tests).
        let etcd_data = tmpfs_dir("e2e-etcd-");
        let etcd_dir = match &etcd_data {
            Some(dir) => dir.path().to_owned(),
            None => workdir.join("etcd-data"),
        };
        let etcd_client = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_args = vec![
            "--name=e2e".to_owned(),
            format!("--data-dir={}", etcd_dir.display()),
            format!("--listen-client-urls={etcd_client}"),
            format!("--advertise-client-urls={etcd_client}"),
            format!("--listen-peer-urls={etcd_peer}"),
            format!("--initial-advertise-peer-urls={etcd_peer}"),
            format!("--initial-cluster=e2e={etcd_peer}"),
            "--logger=zap".to_owned(),
        ];
        let etcd = ManagedChild::spawn("etcd", &etcd_bin, &etcd_args, no_env(), &logs.join("etcd.log"))?;
        poll_until("etcd /health", ETCD_READY, || etcd_healthy(etcd_port, &etcd))
            .await
            .with_context(|| format!("etcd did not start; its log:\n{}", etcd.log_tail(30)))?;
        let etcd_ready = t0.elapsed();

        let p = |name: &str| pki.dir.join(name).display().to_string();
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_client}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={apiserver_port}"),
            "--insecure-port=0".to_owned(),
            format!("--cert-dir={}", workdir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--authorization-mode=Node,RBAC".to_owned(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            // The "kubernetes" Service's endpoints cannot be 127.0.0.1 (loopback is rejected): without
            // this, the apiserver logs a sync error every 10 s.
            "--endpoint-reconciler-type=none".to_owned(),
            "--profiling=false".to_owned(),
        ];
        let apiserver_log = logs.join("kube-apiserver.log");
        let apiserver = ManagedChild::spawn(
            "kube-apiserver",
            &apiserver_bin,
            &apiserver_args,
            no_env(),
            &apiserver_log,
        )?;

        let admin_kubeconfig = workdir.join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &pki.ca_pem,
            "admin",
            pki.client_user("admin"),
            None,
        )?;
        let kcm_kubeconfig = workdir.join("kube-controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &pki.ca_pem,
            "kube-controller-manager",
            pki.client_user("kube-controller-manager"),
            None,
        )?;
        let admin_config = config_from_kubeconfig(&admin_kubeconfig).await?;

        wait_apiserver_ready(&admin_config, &apiserver).await?;
        let apiserver_ready = t0.elapsed();

        let kcm_args = vec![
            format!("--kubeconfig={}", kcm_kubeconfig.display()),
            // The storage controllers a provisioner works with (binding, protection, the
            // expander that hands a growing claim to an external resizer), and the ones the
            // trials' objects need: StatefulSets make claims, the garbage collector removes
            // their pods.
            "--controllers=persistentvolume-binder,persistentvolume-expander,pv-protection,pvc-protection,\
             namespace,serviceaccount,serviceaccount-token,garbagecollector,statefulset"
                .to_owned(),
            format!("--kube-api-qps={}", options.kcm_client.qps),
            format!("--kube-api-burst={}", options.kcm_client.burst),
            "--leader-elect=false".to_owned(),
            "--use-service-account-credentials=true".to_owned(),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            "--port=0".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={kcm_port}"),
            format!("--cert-dir={}", workdir.join("kcm-certs").display()),
            "--profiling=false".to_owned(),
        ];
        let kcm = ManagedChild::spawn(
            "kube-controller-manager",
            &kcm_bin,
            &kcm_args,
            no_env(),
            &logs.join("kube-controller-manager.log"),
        )?;

        let client = Client::try_from(admin_config.clone())?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        poll_until(
            "the default namespace and ServiceAccount",
            DEFAULTS_READY,
            || async {
                if !kcm.is_running() {
                    bail!("kube-controller-manager exited");
                }
                Ok(match namespaces.get_opt("default").await? {
                    Some(_) => accounts.get_opt("default").await?.map(|_| ()),
                    None => None,
                })
            },
        )
        .await
        .with_context(|| {
            format!(
                "kube-controller-manager did not create the default ServiceAccount; its log:\n{}",
                kcm.log_tail(30)
            )
        })?;

        Ok(ControlPlane {
            workdir,
            server,
            ca_pem: pki.ca_pem,
            admin_kubeconfig,
            admin_config,
            apiserver_program: apiserver_bin,
            apiserver_args,
            kcm,
            apiserver,
            etcd,
            startup: t0.elapsed(),
            startup_phases: format!(
                "etcd healthy at {etcd_ready:.2?}, apiserver ready at {apiserver_ready:.2?}, \
                 default ServiceAccount at {:.2?}",
                t0.elapsed()
            ),
            _etcd_data: etcd_data,
        })
    }

    /// A new client authenticated as cluster admin (`O=system:masters`). Must be called inside a
    /// tokio runtime (the client's worker task is spawned on it), and used only there.
    /// The processes, for their memory.
    pub fn pids(&self) -> [(&'static str, u32); 3] {
        [
            ("etcd", self.etcd.pid()),
            ("kube-apiserver", self.apiserver.pid()),
            ("kube-controller-manager", self.kcm.pid()),
        ]
    }

    pub fn admin_client(&self) -> Client {
        Client::try_from(self.admin_config.clone()).expect("kube client from a config that worked before")
    }

    /// The admin client's configuration (to tweak timeouts, default namespace, ...).
    pub fn admin_config(&self) -> &Config {
        &self.admin_config
    }

    /// A kubeconfig file authenticating as cluster admin with a client certificate.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// PEM of the CA that signed the apiserver's serving certificate and all client certificates.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Wall time [`ControlPlane::start`] took, from nothing to the default ServiceAccount.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// When each component became ready during start-up, for the suite's log.
    pub fn startup_phases(&self) -> &str {
        &self.startup_phases
    }

    pub fn etcd_log(&self) -> &Path {
        self.etcd.log_path()
    }

    pub fn apiserver_log(&self) -> &Path {
        self.apiserver.log_path()
    }

    pub fn controller_manager_log(&self) -> &Path {
        self.kcm.log_path()
    }

    /// The last `n` lines of each component's log, with headers: for failure messages.
    pub fn logs_tail(&self, n: usize) -> String {
        [&self.etcd, &self.apiserver, &self.kcm]
            .iter()
            .map(|c| {
                let state = if c.is_running() { "running" } else { "EXITED" };
                let path = c.log_path();
                format!(
                    "----- {} ({state}), {}:\n{}",
                    c.name(),
                    path.display(),
                    log_tail(path, n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Liveness of the three processes; an error names the ones that exited.
    pub fn check_running(&self) -> anyhow::Result<()> {
        let dead: Vec<String> = [&self.etcd, &self.apiserver, &self.kcm]
            .iter()
            .filter_map(|c| c.try_exit_status().map(|s| format!("{} ({s})", c.name())))
            .collect();
        if dead.is_empty() {
            Ok(())
        } else {
            bail!("control plane process(es) exited: {}", dead.join(", "))
        }
    }

    /// SIGKILLs kube-apiserver, starts it again with the same flags and port (appending to the
    /// same log) and waits for `/readyz` and for its RBAC authorizer (see `wait_apiserver_ready`).
    /// etcd and kube-controller-manager keep running.
    pub async fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    /// SIGKILLs kube-apiserver (an outage as a crash or a node loss makes one).
    pub fn stop_apiserver(&self) {
        self.apiserver.kill9();
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`] and waits until it
    /// answers, as [`ControlPlane::restart_apiserver`] does.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        let log = self.apiserver.log_path().to_owned();
        self.apiserver = ManagedChild::spawn(
            "kube-apiserver",
            &self.apiserver_program,
            &self.apiserver_args,
            no_env(),
            &log,
        )?;
        wait_apiserver_ready(&self.admin_config, &self.apiserver).await
    }

    /// Creates `namespace` (if needed).
    pub async fn create_namespace(&self, namespace: &str) -> anyhow::Result<()> {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        create_tolerating_existing(&Api::<Namespace>::all(self.admin_client()), &ns)
            .await
            .with_context(|| format!("creating namespace {namespace}"))
    }

    /// Creates `namespace`, applies the project's RBAC manifests from `rbac_dir` into it (the
    /// resources listed by its kustomization.yaml, or every other *.yaml), with namespace
    /// `nfs-provisioner` replaced by `namespace` and the ClusterRoleBinding renamed to
    /// `<name>-<namespace>`; then requests a token for the ServiceAccount (TokenRequest API, one year)
    /// and writes a kubeconfig with server, CA and token to `workdir/kubeconfigs/<namespace>.kubeconfig`;
    /// its context's namespace is the ServiceAccount's (like in a pod: `Client::default_namespace`).
    /// The RBAC manifests must contain exactly one ServiceAccount.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        rbac_dir: &Path,
    ) -> anyhow::Result<PathBuf> {
        self.create_namespace(namespace).await?;
        let client = self.admin_client();
        let mut service_accounts = Vec::new();
        for (file, doc) in read_rbac_manifests(rbac_dir)? {
            let what = format!("{} from {}", describe(&doc), file.display());
            let doc = retarget(doc, namespace);
            let ns = |doc: &Value| {
                doc["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or(namespace)
                    .to_owned()
            };
            let applied = match doc["kind"].as_str().unwrap_or_default() {
                "ServiceAccount" => {
                    let sa: ServiceAccount = serde_json::from_value(doc.clone())?;
                    service_accounts.push((ns(&doc), sa.metadata.name.clone().unwrap_or_default()));
                    create_tolerating_existing(&Api::namespaced(client.clone(), &ns(&doc)), &sa).await
                }
                "ClusterRole" => {
                    let role: ClusterRole = serde_json::from_value(doc)?;
                    create_tolerating_existing(&Api::all(client.clone()), &role).await
                }
                "ClusterRoleBinding" => {
                    let binding: ClusterRoleBinding = serde_json::from_value(doc)?;
                    create_tolerating_existing(&Api::all(client.clone()), &binding).await
                }
                "Role" => {
                    let role: Role = serde_json::from_value(doc.clone())?;
                    create_tolerating_existing(&Api::namespaced(client.clone(), &ns(&doc)), &role).await
                }
                "RoleBinding" => {
                    let binding: RoleBinding = serde_json::from_value(doc.clone())?;
                    create_tolerating_existing(&Api::namespaced(client.clone(), &ns(&doc)), &binding).await
                }
                other => Err(anyhow!("the harness does not know how to apply kind {other:?}")),
            };
            applied.with_context(|| format!("applying {what}"))?;
        }
        let [(sa_namespace, sa_name)] = <[_; 1]>::try_from(service_accounts).map_err(|found| {
            anyhow!(
                "expected exactly one ServiceAccount in {}, found {found:?}",
                rbac_dir.display()
            )
        })?;

        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![SERVICE_ACCOUNT_ISSUER.to_owned()],
                expiration_seconds: Some(TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &sa_namespace);
        let token = accounts
            .create_token_request(&sa_name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {sa_namespace}/{sa_name}"))?
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("TokenRequest for {sa_namespace}/{sa_name} returned no token"))?;

        let path = self
            .workdir
            .join("kubeconfigs")
            .join(format!("{namespace}.kubeconfig"));
        let user = json!({ "token": token });
        write_kubeconfig(
            &path,
            &self.server,
            &self.ca_pem,
            &format!("{sa_namespace}-{sa_name}"),
            user,
            Some(&sa_namespace),
        )?;
        Ok(path)
    }

    /// SIGKILLs all processes (kube-controller-manager, kube-apiserver, etcd). Idempotent; also
    /// done on drop.
    pub fn shutdown(&self) {
        self.kcm.kill9();
        self.apiserver.kill9();
        self.etcd.kill9();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client from a kubeconfig file (e.g. one from [`ControlPlane::service_account_kubeconfig`]).
/// Must be called inside a tokio runtime.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    Ok(Client::try_from(config_from_kubeconfig(path).await?)?)
}

pub async fn config_from_kubeconfig(path: &Path) -> anyhow::Result<Config> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))
}

/// Runs a future to completion on a fresh thread with its own current-thread runtime, so that
/// blocking APIs can be offered whether or not the caller is inside a runtime.
fn run_on_helper_thread<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a tokio runtime")
                .block_on(future)
        });
        match handle.join() {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn no_env() -> [(&'static str, &'static str); 0] {
    []
}

/// Distinct free TCP ports on 127.0.0.1 (all listeners are held until every port is chosen).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding 127.0.0.1:0 to find a free port")?;
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// A fresh directory on /dev/shm named `<prefix><pid>-XXXXXX`, removed on drop. Directories
/// left behind by test processes that no longer exist (SIGKILLed: no destructor ran) are swept first:
/// etcd preallocates ~120 MiB there.
fn tmpfs_dir(prefix: &str) -> Option<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return None;
    }
    for entry in std::fs::read_dir(shm).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.strip_prefix(prefix).and_then(|rest| rest.split('-').next());
        if let Some(pid) = owner.filter(|pid| pid.parse::<u32>().is_ok())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let prefix = format!("{prefix}{}-", std::process::id());
    tempfile::Builder::new().prefix(&prefix).tempdir_in(shm).ok()
}

async fn etcd_healthy(port: u16, etcd: &ManagedChild) -> anyhow::Result<Option<()>> {
    if let Some(status) = etcd.try_exit_status() {
        bail!("etcd exited: {status}");
    }
    // Plain blocking HTTP/1.0 with short timeouts: tokio's io-util feature is not enabled.
    let timeout = Duration::from_millis(500);
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout) else {
        return Ok(None);
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.contains("\"health\":\"true\"") {
        Ok(Some(()))
    } else {
        bail!("etcd /health: {:?}", response.lines().last().unwrap_or_default())
    }
}

/// Waits for `/readyz` and for the RBAC authorizer. A (re)started kube-apiserver serves requests
/// seconds before `/readyz` is 200, and until its RBAC informers have synced it answers every
/// non-admin request with 403 Forbidden (a provisioner sees those during a restart). Measured
/// here, `/readyz` 200 already implied a synced authorizer; two SubjectAccessReviews that only
/// bootstrap bindings allow (a ClusterRoleBinding and a namespaced RoleBinding) make sure of it.
async fn wait_apiserver_ready(admin: &Config, apiserver: &ManagedChild) -> anyhow::Result<()> {
    let mut config = admin.clone();
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    let client = Client::try_from(config)?;
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let probes = [
        rbac_probe("persistent-volume-binder", "create", "persistentvolumes", None),
        rbac_probe("token-cleaner", "delete", "secrets", Some("kube-system")),
    ];
    poll_until(
        "kube-apiserver /readyz and its RBAC authorizer",
        APISERVER_READY,
        || async {
            if let Some(status) = apiserver.try_exit_status() {
                bail!("kube-apiserver exited: {status}");
            }
            let request = kube::core::Request::new("").get("readyz", &GetParams::default())?;
            if client.request_text(request).await?.trim() != "ok" {
                return Ok(None);
            }
            for probe in &probes {
                let review = reviews.create(&PostParams::default(), probe).await?;
                if !review.status.is_some_and(|s| s.allowed) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .with_context(|| {
        format!(
            "kube-apiserver did not become ready; its log:\n{}",
            apiserver.log_tail(40)
        )
    })
}

/// "May ServiceAccount kube-system/<account> <verb> <resource>?" — allowed by a bootstrap binding.
fn rbac_probe(account: &str, verb: &str, resource: &str, namespace: Option<&str>) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:kube-system:{account}")),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                "system:serviceaccounts:kube-system".to_owned(),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                resource: Some(resource.to_owned()),
                namespace: namespace.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

async fn create_tolerating_existing<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn describe(doc: &Value) -> String {
    format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("<no kind>"),
        doc["metadata"]["name"].as_str().unwrap_or("<no name>")
    )
}

/// The YAML documents of the RBAC manifests, in kustomization order.
fn read_rbac_manifests(rbac_dir: &Path) -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let kustomization = rbac_dir.join("kustomization.yaml");
    let files: Vec<PathBuf> = if kustomization.is_file() {
        let k: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&kustomization)?)
            .with_context(|| format!("parsing {}", kustomization.display()))?;
        k["resources"]
            .as_array()
            .ok_or_else(|| anyhow!("{} has no resources list", kustomization.display()))?
            .iter()
            .map(|r| {
                r.as_str()
                    .map(|r| rbac_dir.join(r))
                    .ok_or_else(|| anyhow!("bad resource {r}"))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        let mut files: Vec<PathBuf> = std::fs::read_dir(rbac_dir)
            .with_context(|| format!("listing {}", rbac_dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|f| f.extension().is_some_and(|e| e == "yaml" || e == "yml"));
        files.sort();
        files
    };
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: Value =
                serde::Deserialize::deserialize(de).with_context(|| format!("parsing {}", file.display()))?;
            if !doc.is_null() {
                docs.push((file.clone(), doc));
            }
        }
    }
    if docs.is_empty() {
        bail!("no manifests found in {}", rbac_dir.display());
    }
    Ok(docs)
}

/// Moves a manifest from [`MANIFEST_NAMESPACE`] to `namespace`; gives a ClusterRoleBinding a
/// per-namespace name so that several provisioners under test can coexist.
fn retarget(mut doc: Value, namespace: &str) -> Value {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let namespaced = matches!(kind.as_str(), "ServiceAccount" | "Role" | "RoleBinding");
    let meta = &mut doc["metadata"];
    if namespaced
        && meta["namespace"]
            .as_str()
            .is_none_or(|ns| ns == MANIFEST_NAMESPACE)
    {
        meta["namespace"] = json!(namespace);
    }
    if kind == "ClusterRoleBinding"
        && let Some(name) = meta["name"].as_str()
    {
        meta["name"] = json!(format!("{name}-{namespace}"));
    }
    if let Some(subjects) = doc["subjects"].as_array_mut() {
        for subject in subjects {
            if subject["namespace"].as_str() == Some(MANIFEST_NAMESPACE) {
                subject["namespace"] = json!(namespace);
            }
        }
    }
    doc
}

/// Writes a kubeconfig with a single cluster/user/context; `user` is the kubeconfig `user` object.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user_name: &str,
    user: Value,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let mut context = json!({ "cluster": "e2e", "user": user_name });
    if let Some(namespace) = namespace {
        context["namespace"] = json!(namespace);
    }
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "e2e",
            "cluster": { "server": server, "certificate-authority-data": base64(ca_pem.as_bytes()) },
        }],
        "users": [{ "name": user_name, "user": user }],
        "contexts": [{ "name": "e2e", "context": context }],
        "current-context": "e2e",
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_yaml_ng::to_string(&kubeconfig)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn base64(bytes: &[u8]) -> Value {
    serde_json::to_value(ByteString(bytes.to_vec())).expect("ByteString serialises to a base64 string")
}

/// All key material, generated fresh for every control plane.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    /// (name, cert PEM, key PEM) of the client certificates.
    clients: Vec<(&'static str, String, String)>,
}

impl Pki {
    fn generate(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
        };

        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "nfs-subdir-provisioner e2e CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        write("ca.crt", &ca_pem)?;

        let leaf = |cn: &str, org: Option<&str>, sans: &[&str], usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(org) = org {
                params.distinguished_name.push(DnType::OrganizationName, org);
            }
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };

        let (crt, key) = leaf(
            "kube-apiserver",
            None,
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "10.0.0.1",
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        write("apiserver.crt", &crt)?;
        write("apiserver.key", &key)?;

        let mut clients = Vec::new();
        for (name, cn, org) in [
            ("admin", "e2e-admin", Some("system:masters")),
            ("kube-controller-manager", "system:kube-controller-manager", None),
        ] {
            let (crt, key) = leaf(cn, org, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
            write(&format!("{name}.crt"), &crt)?;
            write(&format!("{name}.key"), &key)?;
            clients.push((name, crt, key));
        }

        // ServiceAccount token signing key. The public half goes in its own file: kube-apiserver's
        // --service-account-key-file does not understand PKCS#8 EC *private* keys (it skips them).
        let sa_key = KeyPair::generate()?;
        write("sa.key", &sa_key.serialize_pem())?;
        write("sa.pub", &sa_key.public_key_pem())?;

        Ok(Pki {
            dir: dir.to_owned(),
            ca_pem,
            clients,
        })
    }

    /// The kubeconfig `user` object for a client certificate.
    fn client_user(&self, name: &str) -> Value {
        let (_, crt, key) = self
            .clients
            .iter()
            .find(|(n, _, _)| *n == name)
            .expect("client certificate generated above");
        json!({
            "client-certificate-data": base64(crt.as_bytes()),
            "client-key-data": base64(key.as_bytes()),
        })
    }
}
