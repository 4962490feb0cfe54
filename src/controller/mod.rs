//! The controllers of one leadership term: a claim controller that provisions and a volume
//! controller that releases, sharing caches of StorageClasses and PersistentVolumes. Each
//! reconcile loads from the caches, asks [`crate::core`] what to do, executes idempotently and
//! reports through Events and logs.

pub mod claims;
pub mod clones;
pub mod indexed;
pub mod packed;
pub mod provision;
pub mod resizes;
pub mod usage;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch as channel_watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::claim::{self as claim_core, ReuseRule};
use crate::core::export::Export;
use crate::core::index::{ClassExports, CloneIndex, Index, Reservations, Served, VolumeIndex};
use crate::core::naming::VolumePath;
use crate::health::Health;
use crate::k8s::Events;
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::storage::error::Refusal as StorageRefusal;
use crate::storage::{Exports, Storage, StorageFailure};
use crate::watch;
use indexed::{Indexed, index_events, indexed};
use packed::{Pack, Packed};

/// A cache of `K`s, each packed ([`packed`]).
pub type Cache<K> = Store<Packed<K>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] StorageFailure),
    /// `object`: its kind and name, as "PersistentVolume pvc-1".
    #[error("{op} {object}: {source}")]
    Api {
        op: &'static str,
        object: String,
        source: kube::Error,
    },
    #[error("not the leader any more; leaving {0} to the next leader")]
    NotLeader(String),
    #[error("create directory {path}: it already exists and is not reused: {rule}")]
    ReuseRefused { path: String, rule: ReuseRule },
}

impl Error {
    /// The API server could not be reached or could not answer yet (connection refused or reset,
    /// 429, 5xx, or 401/403 while a restarted API server warms its caches): nothing is wrong with
    /// the object, so it is retried as soon as the API server may be back, not after minutes.
    fn api_unavailable(&self) -> bool {
        match self {
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } => matches!(status.code, 401 | 403 | 429) || status.code >= 500,
            Error::Api { .. } => true,
            Error::Storage(_) | Error::NotLeader(_) | Error::ReuseRefused { .. } => false,
        }
    }

    /// Why, in one word of a small fixed set: the `reason` label of
    /// `nfs_subdir_provisioner_operation_failures_total`. The Event says the rest.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Storage(StorageFailure::TimedOut { .. }) => "ExportTimeout",
            Error::Storage(
                StorageFailure::Transport(_)
                | StorageFailure::RootSquashed { .. }
                | StorageFailure::Worker { .. },
            ) => "ExportError",
            Error::Storage(StorageFailure::NoMountedExport) => "NoMountedExport",
            Error::Storage(StorageFailure::Refused(StorageRefusal::Taken { .. }))
            | Error::ReuseRefused { .. } => "DirectoryTaken",
            Error::Storage(StorageFailure::Refused(_)) => "DirectoryRefused",
            Error::Api { .. } if self.api_unavailable() => "APIUnavailable",
            Error::Api { .. } => "APIError",
            Error::NotLeader(_) => "NotLeader",
        }
    }

    /// For `map_err`: a failed `op` on the PersistentVolume `name`.
    fn api(op: &'static str, name: &str) -> impl FnOnce(kube::Error) -> Error {
        let object = format!("PersistentVolume {name}");
        move |source| Error::Api { op, object, source }
    }
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
    pub metrics: Metrics,
}

/// What a reconcile sees.
pub struct Ctx {
    pub shared: Shared,
    pub pv_api: Api<PersistentVolume>,
    pub classes: Cache<StorageClass>,
    pub pvs: Cache<PersistentVolume>,
    pub claims: Cache<PersistentVolumeClaim>,
    /// The exports the cached classes serve.
    class_index: Indexed<ClassExports>,
    /// The cached PVs by directory and by the claim they name.
    pv_index: Indexed<VolumeIndex>,
    /// The cached clones by the claim they copy.
    clone_index: Indexed<CloneIndex>,
    /// Directories being provisioned whose PV is not in the cache yet, so two claims racing for
    /// overlapping directories cannot both pass the overlap check.
    reservations: Mutex<Reservations>,
    /// Consecutive failures per object, for capped exponential backoff. Never dropped: a failing
    /// object is retried until it succeeds or changes.
    failures: Mutex<HashMap<String, u32>>,
    /// True once the StorageClass and PV caches hold a full list.
    ready: channel_watch::Receiver<bool>,
    /// True once the claim cache holds a full list too.
    claims_ready: channel_watch::Receiver<bool>,
    /// The clones being copied in this term.
    pub clones: clones::Clones,
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

    /// Until every cache holds a full list, claims too (for work that asks whether a claim exists).
    async fn all_caches_ready(&self) {
        self.caches_ready().await;
        let _ = self.claims_ready.clone().wait_for(|ready| *ready).await;
    }

    fn ensure_leader(&self, what: &str) -> Result<(), Error> {
        if self.shared.leadership.may_act() {
            Ok(())
        } else {
            Err(Error::NotLeader(what.to_owned()))
        }
    }

    fn class(&self, name: Option<&str>) -> Option<Arc<StorageClass>> {
        self.classes
            .get(&ObjectRef::new(name?))
            .map(|class| Arc::new(class.unpack()))
    }

    /// The cached PV `name`.
    pub fn pv(&self, name: &str) -> Option<PersistentVolume> {
        self.pvs.get(&ObjectRef::new(name)).map(|pv| pv.unpack())
    }

    /// The cached claim `name` in `namespace`.
    pub fn claim(&self, namespace: &str, name: &str) -> Option<PersistentVolumeClaim> {
        self.claims
            .get(&ObjectRef::new(name).within(namespace))
            .map(|claim| claim.unpack())
    }

    fn mounted_export(&self) -> Option<&Export> {
        self.shared.exports.mounted_export()
    }

    /// The directories of PVs (whoever made them) and of in-flight reservations in `export` that
    /// equal, lie inside or around `path`, by PV name: from the indexes, not a scan.
    fn overlapping_directories(
        &self,
        export: &Export,
        path: &VolumePath,
        reservations: &Reservations,
    ) -> Vec<(String, VolumePath)> {
        let mut found: Vec<(String, VolumePath)> = self
            .pv_index
            .read()
            .overlapping(export, path)
            .into_iter()
            .map(|(name, path)| (name.to_owned(), path))
            .collect();
        found.extend(
            reservations
                .overlapping(export, path)
                .into_iter()
                .map(|(name, path)| (name.to_owned(), path.clone())),
        );
        found
    }

    /// The cached PVs whose claimRef names `claim`, but for those made for it: the ones that may
    /// be pre-bound to it ([`crate::core::claim::pre_bound_volume`]).
    fn pvs_naming_claim(&self, claim: &PersistentVolumeClaim) -> Vec<Arc<PersistentVolume>> {
        let index = self.pv_index.read();
        let names = index.naming_claim(
            claim.metadata.namespace.as_deref(),
            claim.metadata.name.as_deref(),
        );
        names
            .iter()
            .filter_map(|name| self.pv(name).map(Arc::new))
            .collect()
    }

    /// Every export this provisioner serves now (`served_exports` of the cached classes, worked
    /// out when a class changes).
    fn class_exports(&self) -> Arc<Served> {
        self.class_index.read().served()
    }

    fn storages(&self) -> Vec<Storage> {
        self.class_exports()
            .reached
            .iter()
            .filter_map(|(export, access)| self.shared.exports.get(export, access).ok())
            .collect()
    }

    /// Whether `key` is waiting out a failure's backoff (its retry is scheduled already).
    fn backing_off(&self, key: &str) -> bool {
        lock(&self.failures).contains_key(key)
    }

    fn succeeded(&self, key: &str) {
        lock(&self.failures).remove(key);
    }

    /// After a failed reconcile of `key`: 1 s, 2 s, 4 s … capped at RETRY_MAX_INTERVAL, or at
    /// [`watch::BACKOFF_MAX`] when the API server was what failed (as for the watches).
    fn backoff(&self, key: &str, error: &Error) -> Action {
        let mut failures = lock(&self.failures);
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let cap = if error.api_unavailable() {
            watch::BACKOFF_MAX
        } else {
            self.shared.config.retry_max
        };
        Action::requeue(Duration::from_secs(1u64 << (*n - 1).min(20)).min(cap))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reconciles in flight per controller. Each holds an HTTP connection to the API server (~40 KiB
/// of buffers; unbounded, a burst of 1000 claims opened about 300). 8 keep ahead of
/// kube-controller-manager, which hands claims over one at a time (~100/s here; BENCHMARKS.md).
const RECONCILE_CONCURRENCY: u16 = 8;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no decision reads before an object enters a cache. With 1000 claims and PVs,
/// `managedFields` alone was over half of the cached bytes, and each capacity map costs a
/// B-tree node of about 0.5 KiB.
trait Slim {
    fn slim(&mut self);
}

fn slim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

impl Slim for StorageClass {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
    }
}

impl Slim for PersistentVolume {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
    }
}

impl Slim for PersistentVolumeClaim {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        // Provisioning reads the claim's spec and annotations; a resize also reads the phase, the
        // recorded size and what newer API servers track of a resize in progress.
        if let Some(status) = self.status.as_mut() {
            status.access_modes = None;
            status.modify_volume_status = None;
            status.current_volume_attributes_class_name = None;
            if let Some(conditions) = status.conditions.as_mut() {
                conditions.retain(|c| crate::core::resize::is_resize_condition(&c.type_));
            }
        }
    }
}

/// A cache of `K`, its index, and the changes its watch reports (see [`cached`]).
struct Cached<K: Pack + 'static, I, S> {
    store: Cache<K>,
    index: Indexed<I>,
    changes: S,
}

/// A watch of every `K` (`crate::watch`: it recovers by itself and reports its freshness),
/// slimmed and mirrored into `index` and then, packed, into a new cache (the index first: see
/// [`indexed`]); yields each changed object, packed.
fn cached<K, I>(
    client: &Client,
    health: &Health,
    metrics: &Metrics,
    index: I,
) -> Cached<K, I, impl futures::Stream<Item = Result<Change<Packed<K>>, watcher::Error>> + Send + 'static>
where
    K: Resource<DynamicType = ()> + Slim + Pack + std::fmt::Debug + Send + Sync + 'static,
    I: Index<K> + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<Packed<K>>();
    let (index, index_writer) = indexed(index);
    let events = watch::watch(Api::<K>::all(client.clone()), health.clone(), metrics.clone()).modify(K::slim);
    let events = index_events(events, index_writer)
        .map_ok(pack_event)
        .reflect(writer);
    let changes = changes_once_cached(events, store.clone());
    Cached {
        store,
        index,
        changes,
    }
}

fn pack_event<K: Pack>(event: watcher::Event<K>) -> watcher::Event<Packed<K>> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(Packed::pack(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(Packed::pack(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(Packed::pack(object)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// What a cache's watch tells its controller.
#[derive(Debug, PartialEq)]
enum Change<K> {
    /// An object created or changed.
    Applied(K),
    /// An object of a complete list (at the start, or a relist after the watch was lost).
    Listed(K),
}

impl<K> Change<K> {
    fn object(&self) -> &K {
        match self {
            Change::Applied(object) | Change::Listed(object) => object,
        }
    }

    fn into_object(self) -> K {
        match self {
            Change::Applied(object) | Change::Listed(object) => object,
        }
    }
}

/// The changed objects of a reflected watch, each yielded once the cache holds it.
///
/// Not kube's `applied_objects`: it yields each object of a list (`InitApply`) as it arrives,
/// while the reflector's cache takes the whole list in one swap at `InitDone`. After a relist (an
/// API server restart's 410 Gone) a reconcile triggered by a listed object read the cache from
/// before the outage, found a claim not yet handed over, and nothing woke it again until the
/// periodic resync, a minute later. Here a list yields nothing until it is complete, then every
/// object in the cache.
fn changes_once_cached<K, E>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, E>> + Send + 'static,
    store: Store<K>,
) -> impl futures::Stream<Item = Result<Change<K>, E>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    E: Send + 'static,
{
    events.flat_map(move |event| {
        let objects: Box<dyn Iterator<Item = Result<Change<K>, E>> + Send> = match event {
            Ok(watcher::Event::Apply(object)) => Box::new(std::iter::once(Ok(Change::Applied(object)))),
            Ok(watcher::Event::InitDone) => Box::new(
                store
                    .state()
                    .into_iter()
                    .map(|object| Ok(Change::Listed(K::clone(&object)))),
            ),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::Delete(_)) => {
                Box::new(std::iter::empty())
            }
            Err(error) => Box::new(std::iter::once(Err(error))),
        };
        futures::stream::iter(objects)
    })
}

/// The objects of `changes` a controller reconciles: of the changed ones those that may ask
/// something of us (`concerned`), and of a list those that may be waiting for us (`waiting`, the
/// resync's own test). Every other reconcile would find nothing to do, and each one queued holds
/// an entry of kube's schedule: after a start or a relist with 10 000 Bound claims and their PVs,
/// 20 000 at once (about 13 MiB), and during a burst of 10 000 new claims one per claim not yet
/// handed over (BENCHMARKS.md). `waiting` reads other caches (a claim's PV, for a resize), so a
/// listed object waits for them to be `ready` first; a reconcile would wait for them too.
fn reconciled<K, E, R>(
    changes: impl futures::Stream<Item = Result<Change<K>, E>> + Send + 'static,
    concerned: impl Fn(&K) -> bool + Send + 'static,
    waiting: impl Fn(&K) -> bool + Send + Sync + 'static,
    ready: impl Fn() -> R + Send + 'static,
) -> impl futures::Stream<Item = Result<K, E>> + Send + 'static
where
    K: Send + 'static,
    E: Send + 'static,
    R: std::future::Future<Output = ()> + Send + 'static,
{
    let waiting = Arc::new(waiting);
    changes.try_filter_map(move |change| {
        let listed = match change {
            Change::Applied(object) => Err(concerned(&object).then_some(object)),
            Change::Listed(object) => Ok((object, ready(), Arc::clone(&waiting))),
        };
        async move {
            Ok(match listed {
                Err(applied) => applied,
                Ok((object, ready, waiting)) => {
                    ready.await;
                    waiting(&object).then_some(object)
                }
            })
        }
    })
}

/// Every cached resource, as `crate::watch` names them in health and metrics.
const WATCHED: [&str; 3] = ["storageclasses", "persistentvolumes", "persistentvolumeclaims"];

/// Every `period`, the objects that may be waiting for us (`pick`), re-examined from the caches,
/// so that an event lost anywhere between the API server and a reconcile delays a claim or a
/// release by at most that period. Skipped while a watch is not proven current (`current`: a
/// stale cache would only repeat its stale answer); `pick` leaves out objects already waiting
/// out a failure's backoff.
fn resync<K>(
    period: Duration,
    current: impl Fn() -> bool + Send + 'static,
    pick: impl Fn() -> Vec<ObjectRef<K>> + Send + 'static,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + 'static,
{
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold((tick, current, pick), |(mut tick, current, pick)| async move {
        tick.tick().await;
        let due = if current() {
            pick()
        } else {
            debug!("periodic resync skipped: a watch is not current");
            Vec::new()
        };
        Some((futures::stream::iter(due), (tick, current, pick)))
    })
    .flatten()
}

/// [`resync`] of `K` for this term: the configured period, the term's watches, `pick` over `ctx`.
fn resync_of<K>(
    ctx: &Arc<Ctx>,
    pick: fn(&Ctx) -> Vec<ObjectRef<K>>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + 'static,
{
    let health = ctx.shared.health.clone();
    let ctx = Arc::clone(ctx);
    resync(
        ctx.shared.config.resync,
        move || health.watches_current(&WATCHED),
        move || pick(&ctx),
    )
}

/// Runs both controllers until `term` is cancelled (shutdown or lost leadership); in-flight
/// reconciles finish first.
pub async fn run(shared: Shared, term: CancellationToken) {
    let client = shared.client.clone();
    let config = controller::Config::default().concurrency(RECONCILE_CONCURRENCY);

    let served = ClassExports::new(&shared.config.provisioner_name, shared.exports.mounted_export());
    let Cached {
        store: classes,
        index: class_index,
        changes: class_changes,
    } = cached(&client, &shared.health, &shared.metrics, served);
    let Cached {
        store: pvs,
        index: pv_index,
        changes: pv_changes,
    } = cached(&client, &shared.health, &shared.metrics, VolumeIndex::default());
    let Cached {
        store: claims,
        index: clone_index,
        changes: claim_changes,
    } = cached(&client, &shared.health, &shared.metrics, CloneIndex::default());

    // The one waiter on the stores' readiness; reconciles wait on the watch channels instead.
    let (ready_tx, ready) = channel_watch::channel(false);
    let (claims_ready_tx, claims_ready) = channel_watch::channel(false);
    let readiness = {
        let (classes, pvs, claims, health) = (
            classes.clone(),
            pvs.clone(),
            claims.clone(),
            shared.health.clone(),
        );
        async move {
            if classes.wait_until_ready().await.is_ok() && pvs.wait_until_ready().await.is_ok() {
                let _ = ready_tx.send(true);
                health.set_caches_synced(true);
                info!("caches synced");
            }
            if claims.wait_until_ready().await.is_ok() {
                let _ = claims_ready_tx.send(true);
            }
        }
    };
    // A clone's copy ends outside any reconcile: its claim is woken through this.
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel();
    let woken = futures::stream::poll_fn(move |cx| wake_rx.poll_recv(cx));
    let ctx = Arc::new(Ctx {
        ready,
        claims_ready,
        clones: clones::Clones::new(shared.config.clone.at_once, wake_tx, term.clone()),
        pv_api: Api::all(client),
        classes,
        pvs: pvs.clone(),
        claims: claims.clone(),
        class_index,
        pv_index,
        clone_index,
        shared,
        reservations: Mutex::default(),
        failures: Mutex::default(),
    });

    // Errors never reach these streams (`crate::watch` handles them), so the controllers' own
    // trigger backoff, which would pause every watch of a controller at once, never applies.
    let caches_ready = {
        let ctx = Arc::clone(&ctx);
        move || {
            let ctx = Arc::clone(&ctx);
            async move { ctx.caches_ready().await }
        }
    };
    // A reservation is there for the time its PV is not cached; once it is (in its index first),
    // the index keeps other claims out of the directory. Dropped here rather than when the claim
    // binds, which kube-controller-manager may take minutes to do in a burst: 10 000 reservations
    // held 1.3 MiB at the peak of the 10 000-claim benchmark.
    let pv_changes = pv_changes.inspect_ok({
        let ctx = Arc::clone(&ctx);
        move |change| {
            if let Some(name) = change.object().meta().name.as_deref() {
                lock(&ctx.reservations).release(name);
            }
        }
    });
    let pv_changes = reconciled(
        pv_changes,
        |_| true,
        {
            let ctx = Arc::clone(&ctx);
            move |pv| volumes::waiting_for_us(&ctx, pv)
        },
        caches_ready.clone(),
    );
    let claim_changes = reconciled(
        claim_changes,
        {
            let provisioner = ctx.provisioner().to_owned();
            move |claim: &Packed<PersistentVolumeClaim>| {
                claim_core::may_concern(&claim.unpack(), &provisioner)
            }
        },
        {
            let ctx = Arc::clone(&ctx);
            move |claim| claims::waiting_for_us(&ctx, claim)
        },
        caches_ready,
    );
    let class_changes = class_changes.map_ok(Change::into_object);
    let volume_controller = Controller::for_stream(pv_changes, pvs)
        .reconcile_on(resync_of(&ctx, volumes::released_of_ours))
        .with_config(config.clone());
    // A new or fixed StorageClass re-evaluates the pending claims that name it. This watch also
    // fills the class cache, so it runs for as long as the claim controller does.
    let claim_controller = Controller::for_stream(claim_changes, claims.clone())
        .watches_stream(class_changes, move |class| {
            claims::pending_claims_of_class(&claims, &class)
        })
        .reconcile_on(resync_of(&ctx, claims::pending_for_us))
        .reconcile_on(woken)
        .with_config(config);

    let volumes = volume_controller
        .graceful_shutdown_on(term.clone().cancelled_owned())
        .run(
            |pv, ctx| volumes::reconcile(Arc::new(pv.unpack()), ctx),
            |pv, error, ctx| volumes::error_policy(Arc::new(pv.unpack()), error, ctx),
            Arc::clone(&ctx),
        )
        .for_each(|_| futures::future::ready(()));
    let claims = claim_controller
        .graceful_shutdown_on(term.clone().cancelled_owned())
        .run(
            |claim, ctx| claims::reconcile(Arc::new(claim.unpack()), ctx),
            |claim, error, ctx| claims::error_policy(Arc::new(claim.unpack()), error, ctx),
            Arc::clone(&ctx),
        )
        .for_each(|_| futures::future::ready(()));
    let sweep = sweep_staging(Arc::clone(&ctx), term.clone());
    let probe = probe_exports(Arc::clone(&ctx), term.clone());
    let usage = usage::run(Arc::clone(&ctx), term.clone());

    info!(provisioner = %ctx.provisioner(), "controllers started");
    tokio::join!(volumes, claims, sweep, readiness, probe, usage);
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
        let probes = ctx.storages().into_iter().map(|storage| {
            let metrics = &ctx.shared.metrics;
            async move {
                if let Err(error) = storage.probe().await {
                    warn!(export = %storage.name(), %error, "export probe failed");
                    return;
                }
                match storage.capacity().await {
                    Ok(c) => metrics.export_capacity(storage.name(), c.total_bytes, c.available_bytes),
                    Err(error) => {
                        warn!(export = %storage.name(), %error, "could not read the export's capacity")
                    }
                }
            }
        });
        tokio::select! {
            () = term.cancelled() => return,
            _ = futures::future::join_all(probes) => {}
        }
    }
}

/// The uids of the cached claims: one pass over the claims for a sweep, not one per record.
fn cached_claim_uids(ctx: &Ctx) -> HashSet<String> {
    ctx.claims
        .state()
        .iter()
        .filter_map(|c| c.meta().uid.clone())
        .collect()
}

/// Whether a claim whose volume would be `pv` (`pvc-<uid>`) is among the claims of `uids`.
fn claim_of_volume_exists(pv: &str, uids: &HashSet<String>) -> bool {
    pv.strip_prefix("pvc-").is_none_or(|uid| uids.contains(uid))
}

/// How often the staging areas are swept after the term's first sweep.
const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Sweeps the staging areas at the start of the term and every [`SWEEP_INTERVAL`] after.
async fn sweep_staging(ctx: Arc<Ctx>, term: CancellationToken) {
    ctx.all_caches_ready().await;
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = term.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = term.cancelled() => return,
            () = sweep_once(&ctx) => {}
        }
    }
}

/// Clears what crashes left in the staging areas: probe directories of probes killed mid-way,
/// staging records of volumes whose PV was created (the record only proves ownership until the
/// PV exists), and records of claims that are gone (a clone's copy, never placed, goes with its
/// record; a placed directory stays, as it may hold data). Records of claims without a PV are
/// left for the claim's reconcile, which adopts them. Each export is swept on its own: one that
/// does not answer delays nothing else.
async fn sweep_once(ctx: &Arc<Ctx>) {
    let sweeps = ctx.storages().into_iter().map(|storage| {
        let ctx = Arc::clone(ctx);
        async move {
            match storage.clear_probes().await {
                Ok(0) => {}
                Ok(n) => info!(export = %storage.name(), removed = n, "cleared leftover probe directories"),
                Err(error) => {
                    warn!(export = %storage.name(), %error, "could not clear leftover probe directories")
                }
            }
            let staged = match storage.staged_volumes().await {
                Ok(staged) => staged,
                Err(error) => {
                    warn!(export = %storage.name(), %error, "could not list staging records");
                    return;
                }
            };
            // Taken after the listing, so the claim of every listed record, cached before its
            // record was written, is in it unless it is gone.
            let mut claims: Option<HashSet<String>> = None;
            for pv in staged {
                let pv_exists = ctx.pvs.get(&ObjectRef::new(&pv)).is_some();
                let claim_gone = !pv_exists
                    && !claim_of_volume_exists(&pv, claims.get_or_insert_with(|| cached_claim_uids(&ctx)));
                if !pv_exists && !claim_gone {
                    continue;
                }
                if claim_gone {
                    if ctx.clones.forget(&pv) {
                        info!(export = %storage.name(), pv = %pv, "the claim of a clone being copied is gone: copy stopped");
                    }
                    match storage.staged_target(&pv).await {
                        Ok(Some(target)) => info!(export = %storage.name(), pv = %pv, target = %target.join("/"), "the claim of a staged volume is gone: clearing its record"),
                        Ok(None) => {}
                        Err(error) => warn!(export = %storage.name(), pv = %pv, %error, "could not read staging record"),
                    }
                }
                if let Err(error) = storage.finish_volume(&pv).await {
                    warn!(export = %storage.name(), pv = %pv, %error, "could not clear staging record");
                }
            }
        }
    });
    futures::future::join_all(sweeps).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> Error {
        Error::Api {
            op: "create",
            object: "PersistentVolume pvc-1".into(),
            source: kube::Error::Api(Status::failure("x", "y").with_code(code).boxed()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resync_offers_what_waits_once_a_period_and_only_from_current_caches() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let current = Arc::new(AtomicBool::new(true));
        let is_current = Arc::clone(&current);
        let period = Duration::from_secs(60);
        let mut due = Box::pin(resync::<PersistentVolume>(
            period,
            move || is_current.load(Ordering::Relaxed),
            || vec![ObjectRef::new("pvc-1"), ObjectRef::new("pvc-2")],
        ));
        let t0 = tokio::time::Instant::now();
        assert_eq!(due.next().await, Some(ObjectRef::new("pvc-1")));
        assert_eq!(t0.elapsed(), period, "a lost event waits at most one period");
        assert_eq!(due.next().await, Some(ObjectRef::new("pvc-2")));
        // A period whose caches are not proven current offers nothing.
        current.store(false, Ordering::Relaxed);
        let skipped = tokio::time::timeout(period + Duration::from_secs(1), due.next()).await;
        assert!(skipped.is_err(), "resynced from a stale cache: {skipped:?}");
        current.store(true, Ordering::Relaxed);
        assert_eq!(due.next().await, Some(ObjectRef::new("pvc-1")));
        assert_eq!(t0.elapsed(), period * 3);
    }

    #[test]
    fn a_staged_volume_s_claim_is_told_by_its_uid() {
        let uids = HashSet::from(["u1".to_owned()]);
        assert!(claim_of_volume_exists("pvc-u1", &uids));
        assert!(!claim_of_volume_exists("pvc-u2", &uids));
        assert!(
            claim_of_volume_exists("admins-pv", &uids),
            "not named for a claim: kept"
        );
    }

    #[test]
    fn api_trouble_is_retried_soon_and_other_failures_back_off() {
        for code in [401, 403, 429, 500, 503] {
            assert!(api_error(code).api_unavailable(), "{code}");
        }
        for code in [400, 404, 409, 422] {
            assert!(!api_error(code).api_unavailable(), "{code}");
        }
        assert!(!Error::NotLeader("pvc-1".into()).api_unavailable());
    }

    #[test]
    fn failure_reasons_are_short_fixed_words() {
        assert_eq!(api_error(503).reason(), "APIUnavailable");
        assert_eq!(api_error(409).reason(), "APIError");
        let timed_out = StorageFailure::TimedOut {
            op: "create directory",
            path: "team-data".into(),
            after: Duration::from_secs(60),
        };
        assert_eq!(Error::Storage(timed_out).reason(), "ExportTimeout");
        let taken = StorageRefusal::Taken {
            path: "team-data".into(),
        };
        assert_eq!(Error::Storage(taken.into()).reason(), "DirectoryTaken");
        let in_the_way = StorageRefusal::NotADirectory {
            op: "create directory",
            path: "blocker".into(),
        };
        assert_eq!(Error::Storage(in_the_way.into()).reason(), "DirectoryRefused");
        let refusal = crate::core::claim::Refusal::NoSpace {
            request: "1Pi".into(),
            available: 1,
            export: "127.0.0.1:/export".into(),
        };
        assert_eq!(refusal.reason(), "NoSpace");
        assert_eq!(crate::core::claim::Refusal::Selector.reason(), "UnsupportedClaim");
    }
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimCondition, PersistentVolumeClaimStatus, PersistentVolumeSpec,
        PersistentVolumeStatus,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use std::collections::BTreeMap;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("x".into()),
            annotations: Some(BTreeMap::from([
                (LAST_APPLIED.to_owned(), "{}".to_owned()),
                ("pv.kubernetes.io/provisioned-by".to_owned(), "me".to_owned()),
            ])),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            ..Default::default()
        }
    }

    fn kept_annotations(meta: &ObjectMeta) -> Vec<&str> {
        meta.annotations
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// A relisted object is yielded only once the cache holds the list it came in; a watched one
    /// at once. (kube's `applied_objects` yielded the relisted claim while the cache still held
    /// its copy from before an API server restart.)
    #[tokio::test]
    async fn a_relisted_object_is_yielded_once_the_cache_holds_it() {
        use kube::ResourceExt;
        let claim = |version: &str| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("c".into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let events = futures::stream::iter([
            Ok::<_, watcher::Error>(watcher::Event::Init),
            Ok(watcher::Event::InitApply(claim("1"))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(claim("2"))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(claim("3"))),
        ]);
        let (store, writer) = reflector::store::<PersistentVolumeClaim>();
        let changes = changes_once_cached(events.reflect(writer), store.clone());
        let seen: Vec<(String, String)> = changes
            .map(|change| {
                let object = change.unwrap().into_object();
                let cached = store.get(&ObjectRef::from_obj(&object)).unwrap();
                (
                    object.resource_version().unwrap(),
                    cached.resource_version().unwrap(),
                )
            })
            .collect()
            .await;
        let seen: Vec<(&str, &str)> = seen.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(seen, [("1", "1"), ("2", "2"), ("3", "3")]);
    }

    #[tokio::test]
    async fn only_what_may_concern_or_wait_for_us_reaches_the_controller() {
        let changes = futures::stream::iter([
            Ok::<_, watcher::Error>(Change::Listed("bound-1")),
            Ok(Change::Listed("pending")),
            Ok(Change::Listed("bound-2")),
            Ok(Change::Applied("bound-1")),
            Ok(Change::Applied("created")),
        ]);
        let passed: Vec<&str> = reconciled(
            changes,
            |name: &&str| *name != "created",
            |name: &&str| *name == "pending",
            || futures::future::ready(()),
        )
        .map(Result::unwrap)
        .collect()
        .await;
        assert_eq!(passed, ["pending", "bound-1"]);
    }

    #[tokio::test]
    async fn a_listed_object_is_judged_once_the_other_caches_are_ready() {
        use futures::FutureExt;
        let (ready_tx, ready_rx) = channel_watch::channel(false);
        let cached = ready_rx.clone();
        let changes = futures::stream::iter([Ok::<_, watcher::Error>(Change::Listed("to-grow"))]);
        // What a claim's resize test sees: its PV only once the PV cache holds the whole list.
        let mut passed = std::pin::pin!(reconciled(
            changes,
            |_: &&str| true,
            move |_: &&str| *cached.borrow(),
            move || {
                let mut ready = ready_rx.clone();
                async move {
                    let _ = ready.wait_for(|r| *r).await;
                }
            },
        ));
        assert!(passed.next().now_or_never().is_none(), "waits for the caches");
        ready_tx.send(true).unwrap();
        assert_eq!(passed.next().await.map(Result::unwrap), Some("to-grow"));
    }

    #[test]
    fn slimming_keeps_what_decisions_read() {
        let size = BTreeMap::from([("storage".to_owned(), Quantity("1Gi".into()))]);
        let mut pv = PersistentVolume {
            metadata: meta(),
            spec: Some(PersistentVolumeSpec {
                capacity: Some(size.clone()),
                storage_class_name: Some("nfs".into()),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some("Released".into()),
                ..Default::default()
            }),
        };
        pv.slim();
        assert_eq!(pv.metadata.managed_fields, None);
        assert_eq!(
            kept_annotations(&pv.metadata),
            ["pv.kubernetes.io/provisioned-by"]
        );
        let spec = pv.spec.as_ref().expect("spec kept");
        assert_eq!(spec.capacity, Some(size.clone()), "a resize compares it");
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert_eq!(pv.status.and_then(|s| s.phase).as_deref(), Some("Released"));

        let mut claim = PersistentVolumeClaim {
            metadata: meta(),
            spec: Some(Default::default()),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Bound".into()),
                capacity: Some(size.clone()),
                access_modes: Some(vec!["ReadWriteMany".into()]),
                conditions: Some(vec![
                    PersistentVolumeClaimCondition {
                        type_: "Resizing".into(),
                        ..Default::default()
                    },
                    PersistentVolumeClaimCondition {
                        type_: "ModifyingVolume".into(),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
        };
        claim.slim();
        assert_eq!(claim.metadata.managed_fields, None);
        assert_eq!(
            kept_annotations(&claim.metadata),
            ["pv.kubernetes.io/provisioned-by"]
        );
        assert!(claim.spec.is_some());
        let status = claim.status.expect("status kept for resizes");
        assert_eq!(status.phase.as_deref(), Some("Bound"));
        assert_eq!(status.capacity, Some(size));
        assert_eq!(status.access_modes, None);
        let conditions: Vec<_> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(conditions, ["Resizing"]);
    }
}
