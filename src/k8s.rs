//! Kubernetes API effects. Each is idempotent: creating what already exists and deleting what is
//! gone are success, so retries, crashes and a brief second leader are harmless.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, EventSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tracing::warn;

use crate::config::Config;
use crate::core::events::UserEvent;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("load Kubernetes client configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("build Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// `KUBECONFIG` when given (out of cluster, as nfs-subdir-external-provisioner); otherwise the
/// in-cluster service account, then the usual kubeconfig locations.
pub async fn client(config: &Config) -> Result<Client, ClientError> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::infer().await?,
    };
    Ok(Client::try_from(kube_config)?)
}

const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The provisioner's own namespace, where its Lease lives: POD_NAMESPACE, else the in-cluster
/// service account's, else the kubeconfig context's.
pub fn own_namespace(config: &Config, client: &Client) -> String {
    match &config.pod_namespace {
        Some(ns) => ns.clone(),
        None => std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
            .map(|ns| ns.trim().to_owned())
            .unwrap_or_else(|_| client.default_namespace().to_owned()),
    }
}

/// Every API permission the provisioner uses: (API group, resource, verb, namespaced-only).
/// rbac/ grants exactly these (tests/manifests.rs compares the two; the end-to-end suite runs
/// with nothing else, which proves they suffice).
pub const ACCESS: &[(&str, &str, &str, bool)] = &[
    // Caches of PVs (for release and overlap checks), claims and classes; PV create and delete;
    // a live PV read when provisioning finds its directory finished, because the cache can lag a
    // PV made moments ago. PV patch: its size when its claim grows, the deletion-protection
    // finalizer, and the over-capacity mark; the claim's status: its size once grown; the claim:
    // the cloning-protection finalizer of a clone's source.
    ("", "persistentvolumes", "get", false),
    ("", "persistentvolumes", "list", false),
    ("", "persistentvolumes", "watch", false),
    ("", "persistentvolumes", "create", false),
    ("", "persistentvolumes", "delete", false),
    ("", "persistentvolumes", "patch", false),
    ("", "persistentvolumeclaims", "list", false),
    ("", "persistentvolumeclaims", "watch", false),
    ("", "persistentvolumeclaims", "patch", false),
    ("", "persistentvolumeclaims/status", "patch", false),
    ("storage.k8s.io", "storageclasses", "list", false),
    ("storage.k8s.io", "storageclasses", "watch", false),
    // Events about claims (events.k8s.io, deduplicated into series by patch) and PVs (core).
    ("events.k8s.io", "events", "create", false),
    ("events.k8s.io", "events", "patch", false),
    ("", "events", "create", false),
    // Leader election, in the provisioner's own namespace only.
    ("coordination.k8s.io", "leases", "get", true),
    ("coordination.k8s.io", "leases", "create", true),
    ("coordination.k8s.io", "leases", "update", true),
];

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Creates the PV; one that already exists has the same deterministic name and so the same origin.
pub async fn create_pv(api: &Api<PersistentVolume>, pv: &PersistentVolume) -> Result<(), kube::Error> {
    match api.create(&PostParams::default(), pv).await {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the PV exists, asked of the API server rather than the cache: the cache can lag a PV
/// created moments ago, or before an API server restart, and provisioning again would find the
/// directory already finished and refuse it as foreign.
pub async fn pv_exists(api: &Api<PersistentVolume>, name: &str) -> Result<bool, kube::Error> {
    Ok(api.get_metadata_opt(name).await?.is_some())
}

/// Deletes exactly the PV we released: the uid precondition keeps a re-created PV of the same
/// name safe.
pub async fn delete_pv(
    api: &Api<PersistentVolume>,
    name: &str,
    uid: Option<&str>,
) -> Result<(), kube::Error> {
    let params = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        // 404: already gone. 409: a different object now has this name; it is not ours to delete.
        Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies a merge patch to a PV (its size, its finalizers, the over-capacity mark) or a claim
/// (a clone source's cloning-protection finalizer). One with a resourceVersion fails with 409 if
/// the object changed meanwhile, and the caller retries from a fresher copy. An object that is
/// gone needs no patch.
pub async fn patch<K>(api: &Api<K>, name: &str, patch: &serde_json::Value) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies a merge patch to the claim's status (its size once grown).
pub async fn patch_claim_status(
    api: &Api<PersistentVolumeClaim>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), kube::Error> {
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
}

const REPORTER: &str = "nfs-subdir-provisioner";

/// Events being sent at once.
const EVENTS_IN_FLIGHT: usize = 8;

/// Events waiting to be sent; more are dropped with a log line, as client-go's recorder does (its
/// queue is 1000 long too): Events are for people, and a burst of claims must not grow memory.
const EVENTS_QUEUED: usize = 1000;

type Queued = (UserEvent, ObjectReference);

/// Publishes Events without holding up the reconcile that caused them: a bounded queue drained by
/// [`EVENTS_IN_FLIGHT`] concurrent sends. A task per Event held each one's whole send state while
/// it waited, 4 MiB for a burst of 1000 claims.
#[derive(Clone)]
pub struct Events {
    queue: tokio::sync::mpsc::Sender<Queued>,
}

/// Sends what [`Events`] queued.
struct Sender {
    /// Remembers recent Events to count repeats into one series: worth it for warnings, which
    /// repeat on every retry, not for the one-off Normal Events of each claim (the cache holds an
    /// Event for six minutes; 1000 claims made it 5.6 MiB).
    warnings: Recorder,
    reporter: Reporter,
    client: Client,
    instance: String,
}

impl Events {
    /// Starts the sender on the current Tokio runtime.
    pub fn new(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: REPORTER.into(),
            instance: Some(instance.to_owned()),
        };
        let sender = Arc::new(Sender {
            warnings: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            instance: instance.to_owned(),
        });
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Queued>(EVENTS_QUEUED);
        let sends = futures::stream::poll_fn(move |cx| queued.poll_recv(cx));
        tokio::spawn(
            sends.for_each_concurrent(EVENTS_IN_FLIGHT, move |(event, regarding)| {
                let sender = Arc::clone(&sender);
                async move { sender.send(event, regarding).await }
            }),
        );
        Events { queue }
    }

    pub fn publish(&self, event: UserEvent, regarding: ObjectReference) {
        if let Err(error) = self.queue.try_send((event, regarding)) {
            let (event, regarding) = error.into_inner();
            warn!(reason = event.reason, object = ?regarding.name, "dropped event: too many waiting to be sent");
        }
    }
}

impl Sender {
    async fn send(&self, event: UserEvent, regarding: ObjectReference) {
        let (reason, object) = (event.reason, regarding.name.clone());
        let result = if regarding.namespace.is_none() {
            self.send_core(event, regarding).await
        } else {
            let ev = Event {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.into(),
                note: Some(event.note),
                action: event.action.into(),
                secondary: None,
            };
            if event.warning {
                self.warnings.publish(&ev, &regarding).await
            } else {
                Recorder::new(self.client.clone(), self.reporter.clone())
                    .publish(&ev, &regarding)
                    .await
            }
        };
        if let Err(error) = result {
            warn!(reason, ?object, %error, "could not publish event");
        }
    }
}

impl Sender {
    /// Events about cluster-scoped objects (PVs) go through the core/v1 API into "default":
    /// Kubernetes before 1.22 refuses events.k8s.io/v1 Events whose regarding object has no
    /// namespace, and every version accepts this form (client-go's recorder writes it).
    async fn send_core(&self, event: UserEvent, regarding: ObjectReference) -> Result<(), kube::Error> {
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), "default");
        let now = Time(Timestamp::now());
        let core = CoreEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", regarding.name.clone().unwrap_or_default())),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: regarding,
            reason: Some(event.reason.into()),
            message: Some(event.note),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
            action: Some(event.action.into()),
            source: Some(EventSource {
                component: Some(REPORTER.into()),
                host: None,
            }),
            reporting_component: Some(REPORTER.into()),
            reporting_instance: Some(self.instance.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        api.create(&PostParams::default(), &core).await.map(drop)
    }
}
