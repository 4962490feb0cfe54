//! The controllers of one leadership term: a claim controller that provisions and a volume
//! controller that releases, sharing caches of StorageClasses and PersistentVolumes. Each
//! reconcile loads from the caches, asks [`crate::core`] what to do, executes idempotently and
//! reports through Events and logs.

pub mod claims;
pub mod volumes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::core::export::{Access, Export, client_options};
use crate::core::naming::VolumePath;
use crate::core::params::ClassParams;
use crate::core::volume::directory_in_export;
use crate::health::Health;
use crate::k8s::Events;
use crate::lease::Leadership;
use crate::storage::{Exports, Storage, StorageFailure};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageFailure),
    #[error("{op} PersistentVolume {name}: {source}")]
    Api {
        op: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("not the leader any more; leaving {0} to the next leader")]
    NotLeader(String),
}

/// What lives for the whole process, across leadership terms.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub config: Arc<Config>,
    pub exports: Exports,
    pub events: Events,
    pub leadership: Leadership,
    pub health: Health,
}

/// What a reconcile sees.
pub struct Ctx {
    pub shared: Shared,
    pub pv_api: Api<PersistentVolume>,
    pub classes: Store<StorageClass>,
    pub pvs: Store<PersistentVolume>,
    /// Directories being provisioned whose PV is not in the cache yet, so two claims racing for
    /// overlapping directories cannot both pass the overlap check.
    reservations: Mutex<HashMap<String, (Export, VolumePath)>>,
    /// Consecutive failures per object, for capped exponential backoff. Never dropped: a failing
    /// object is retried until it succeeds or changes.
    failures: Mutex<HashMap<String, u32>>,
    /// True once the StorageClass and PV caches hold a full list.
    ready: watch::Receiver<bool>,
}

impl Ctx {
    fn provisioner(&self) -> &str {
        &self.shared.config.provisioner_name
    }

    async fn caches_ready(&self) {
        // Not Store::wait_until_ready: it wakes only the last of several concurrent waiters
        // (a oneshot receiver keeps one waker), which left early reconciles hanging forever.
        // An error means the sender is gone, i.e. the term is ending; reconciles end anyway.
        let _ = self.ready.clone().wait_for(|ready| *ready).await;
    }

    fn ensure_leader(&self, what: &str) -> Result<(), Error> {
        if self.shared.leadership.may_act() {
            Ok(())
        } else {
            Err(Error::NotLeader(what.to_owned()))
        }
    }

    fn class(&self, name: Option<&str>) -> Option<Arc<StorageClass>> {
        self.classes.get(&ObjectRef::new(name?))
    }

    fn mounted_export(&self) -> Option<&Export> {
        self.shared.exports.mounted_export()
    }

    /// Directories in `export` of every PV (whoever made it) plus in-flight reservations.
    fn live_directories(
        &self,
        export: &Export,
        reservations: &HashMap<String, (Export, VolumePath)>,
    ) -> Vec<(String, VolumePath)> {
        let mut live: Vec<(String, VolumePath)> = self
            .pvs
            .state()
            .iter()
            .filter_map(|pv| Some((pv.metadata.name.clone()?, directory_in_export(pv, export)?)))
            .collect();
        live.extend(
            reservations
                .iter()
                .filter(|(_, (e, _))| e == export)
                .map(|(k, (_, v))| (k.clone(), v.clone())),
        );
        live
    }

    /// Every export this provisioner serves now: the mounted one, and the direct ones its
    /// StorageClasses name (with the class's mount options; a class with broken parameters or
    /// options names nothing, and its claims are refused with the reason).
    fn class_exports(&self) -> Vec<(Export, Access)> {
        let mounted = self.mounted_export();
        let mut exports: Vec<(Export, Access)> = mounted
            .map(|m| (m.clone(), Access::Mounted))
            .into_iter()
            .collect();
        for class in self.classes.state() {
            if class.provisioner != self.provisioner() {
                continue;
            }
            let Ok(params) = ClassParams::parse(&class.parameters.clone().unwrap_or_default()) else {
                continue;
            };
            let Some(export) = params.export.filter(|e| Some(e) != mounted) else {
                continue;
            };
            let Ok(options) = client_options(class.mount_options.as_deref().unwrap_or_default()) else {
                continue;
            };
            let entry = (export, Access::Direct(options));
            if !exports.contains(&entry) {
                exports.push(entry);
            }
        }
        exports
    }

    fn storages(&self) -> Vec<Storage> {
        self.class_exports()
            .iter()
            .filter_map(|(export, access)| self.shared.exports.get(export, access).ok())
            .collect()
    }

    fn succeeded(&self, key: &str) {
        lock(&self.failures).remove(key);
    }

    /// 1 s, 2 s, 4 s … capped at RETRY_MAX_INTERVAL.
    fn backoff(&self, key: &str) -> Action {
        let mut failures = lock(&self.failures);
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let delay = Duration::from_secs(1u64 << (*n - 1).min(20)).min(self.shared.config.retry_max);
        Action::requeue(delay)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs both controllers until `term` is cancelled (shutdown or lost leadership); in-flight
/// reconciles finish first.
pub async fn run(shared: Shared, term: CancellationToken) {
    let client = shared.client.clone();
    let wc = watcher::Config::default();

    let (classes, class_writer) = reflector::store::<StorageClass>();
    let class_reflector = reflector::reflector(class_writer, watcher(Api::all(client.clone()), wc.clone()))
        .default_backoff()
        .applied_objects()
        .for_each(|_| futures::future::ready(()));

    let volume_controller = Controller::new(Api::<PersistentVolume>::all(client.clone()), wc.clone());
    let pvs = volume_controller.store();
    let claim_controller = Controller::new(Api::<PersistentVolumeClaim>::all(client.clone()), wc.clone());
    let claims = claim_controller.store();
    // A new or fixed StorageClass re-evaluates the pending claims that name it.
    let claim_controller =
        claim_controller.watches(Api::<StorageClass>::all(client.clone()), wc, move |class| {
            claims::pending_claims_of_class(&claims, &class)
        });

    // The one waiter on the stores' readiness; reconciles wait on the watch channel instead.
    let (ready_tx, ready) = watch::channel(false);
    let readiness = {
        let (classes, pvs, health) = (classes.clone(), pvs.clone(), shared.health.clone());
        async move {
            if classes.wait_until_ready().await.is_ok() && pvs.wait_until_ready().await.is_ok() {
                let _ = ready_tx.send(true);
                health.set_caches_synced(true);
                info!("caches synced");
            }
        }
    };
    let ctx = Arc::new(Ctx {
        ready,
        pv_api: Api::all(client),
        classes,
        pvs,
        shared,
        reservations: Mutex::default(),
        failures: Mutex::default(),
    });

    let volumes = volume_controller
        .graceful_shutdown_on(term.clone().cancelled_owned())
        .run(volumes::reconcile, volumes::error_policy, Arc::clone(&ctx))
        .for_each(|_| futures::future::ready(()));
    let claims = claim_controller
        .graceful_shutdown_on(term.clone().cancelled_owned())
        .run(claims::reconcile, claims::error_policy, Arc::clone(&ctx))
        .for_each(|_| futures::future::ready(()));
    let sweep = sweep_staging(Arc::clone(&ctx));
    let probe = probe_exports(Arc::clone(&ctx), term.clone());

    info!(provisioner = %ctx.provisioner(), "controllers started");
    tokio::select! {
        () = async { tokio::join!(volumes, claims, sweep, readiness, probe); } => {}
        () = class_reflector => warn!("StorageClass watch ended"),
    }
    info!("controllers stopped");
}

/// How often the leader proves its exports answer and take writes, for readiness and metrics.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Probes every export every [`PROBE_INTERVAL`] until the term ends, all at once, so a hung
/// export delays only its own verdict.
async fn probe_exports(ctx: Arc<Ctx>, term: CancellationToken) {
    ctx.caches_ready().await;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = term.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probes = ctx.storages().into_iter().map(|storage| async move {
            if let Err(error) = storage.probe().await {
                warn!(export = %storage.name(), %error, "export probe failed");
            }
        });
        tokio::select! {
            () = term.cancelled() => return,
            _ = futures::future::join_all(probes) => {}
        }
    }
}

/// Clears staging records left by a crash after the PV was created (the record only proves
/// ownership until the PV exists). Records of claims without a PV are left for the claim's
/// reconcile, which adopts them. Each export is swept on its own: one that does not answer
/// delays nothing else.
async fn sweep_staging(ctx: Arc<Ctx>) {
    ctx.caches_ready().await;
    let sweeps = ctx.storages().into_iter().map(|storage| {
        let ctx = Arc::clone(&ctx);
        async move {
            let staged = match storage.staged_volumes().await {
                Ok(staged) => staged,
                Err(error) => {
                    warn!(export = %storage.name(), %error, "could not list staging records");
                    return;
                }
            };
            for pv in staged {
                if ctx.pvs.get(&ObjectRef::new(&pv)).is_some()
                    && let Err(error) = storage.finish_volume(&pv).await
                {
                    warn!(export = %storage.name(), pv = %pv, %error, "could not clear staging record");
                }
            }
        }
    });
    futures::future::join_all(sweeps).await;
}
