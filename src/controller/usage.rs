//! Volume usage: every USAGE_INTERVAL the leader measures what each of its bound volumes takes on
//! its export, with the storage layer's paced walk (USAGE_OPS_PER_SECOND per export), exports in
//! parallel and each one's volumes one after another, apart from provisioning and release. Each
//! measurement sets the volume's metrics; a crossing of the claim's request is told once, with an
//! Event on the claim, and marked on the PV, so that it is told once across restarts too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Ctx;
use crate::core::events;
use crate::core::export::{Access, Export};
use crate::core::naming::VolumePath;
use crate::core::usage::{self, Crossing};
use crate::core::volume;
use crate::k8s;
use crate::metrics::VolumeLabels;
use crate::storage::Usage;

/// A volume to measure, by its PV's name: the PV is read from the cache again when its turn
/// comes. A round over thousands of volumes takes minutes; holding each PV (decoded, see
/// [`super::packed`]) or even its labels and path for that long held 2.2 MiB at 10 000 volumes.
type Target = Box<str>;

/// A volume whose turn has come: its series' labels, its directory, its capacity and crossing
/// mark, as its PV says now, and the PV's resourceVersion then, which tells after the measurement
/// whether the PV changed meanwhile without decoding it again.
struct Volume {
    labels: VolumeLabels,
    path: VolumePath,
    capacity: Option<u64>,
    marked_over: bool,
    version: Option<String>,
}

/// Measures every volume of ours each USAGE_INTERVAL until the term ends (nothing if measuring
/// is turned off).
pub async fn run(ctx: Arc<Ctx>, term: CancellationToken) {
    let Some(interval) = ctx.shared.config.usage.interval else {
        return;
    };
    ctx.all_caches_ready().await;
    let mut measured = HashSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = term.cancelled() => break,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = term.cancelled() => break,
            now = round(&ctx) => {
                // A volume gone (or released) since the last round takes its series with it.
                for gone in measured.difference(&now) {
                    ctx.shared.metrics.volume_forgotten(gone);
                }
                measured = now;
            }
        }
    }
    // The next leader measures anew; a stale figure is worse than none.
    for gone in &measured {
        ctx.shared.metrics.volume_forgotten(gone);
    }
}

/// Every volume to measure now, by the export (and the way to it) that holds it.
fn targets(ctx: &Ctx) -> HashMap<(Export, Access), Vec<Target>> {
    let served = ctx.class_exports();
    let mut by_export: HashMap<(Export, Access), Vec<Target>> = HashMap::new();
    for pv in ctx.pvs.state().iter().map(|pv| pv.unpack()) {
        if let Some((located, _)) = measured(ctx, &pv, &served.exports) {
            by_export
                .entry((located.export, located.access))
                .or_default()
                .push(pv.name_any().into_boxed_str());
        }
    }
    by_export
}

/// Where `pv`'s volume is and the labels of its series, if it is one of ours to measure.
fn measured(ctx: &Ctx, pv: &PersistentVolume, served: &[Export]) -> Option<(volume::Located, VolumeLabels)> {
    let (namespace, claim) = usage::measured_claim(pv, ctx.provisioner())?;
    let located = volume::locate(pv, ctx.mounted_export(), served).ok()?;
    let labels = VolumeLabels {
        namespace,
        persistentvolumeclaim: claim,
        persistentvolume: pv.name_any(),
    };
    Some((located, labels))
}

/// `target` as its PV says now, if it is still in `export` and ours to measure.
fn volume_now(ctx: &Ctx, target: &str, export: &Export) -> Option<Volume> {
    let packed = ctx.pvs.get(&ObjectRef::new(target))?;
    let pv = packed.unpack();
    let (located, labels) = measured(ctx, &pv, &ctx.class_exports().exports)?;
    (located.export == *export).then(|| Volume {
        labels,
        path: located.path,
        capacity: usage::capacity(&pv),
        marked_over: usage::is_marked_over(&pv),
        version: packed.resource_version(),
    })
}

/// `volume` after its measurement: as it was if its PV has not changed since, else as its PV says
/// now (`None`: released or gone meanwhile, nothing to report).
fn volume_after(ctx: &Ctx, volume: Volume, export: &Export) -> Option<Volume> {
    let name = volume.labels.persistentvolume.as_str();
    let current = ctx.pvs.get(&ObjectRef::new(name))?.resource_version();
    if current.is_some() && current == volume.version {
        return Some(volume);
    }
    volume_now(ctx, name, export)
}

/// One round over every export; the volumes measured.
async fn round(ctx: &Ctx) -> HashSet<VolumeLabels> {
    let rounds = targets(ctx)
        .into_iter()
        .map(|((export, access), targets)| measure_export(ctx, export, access, targets));
    futures::future::join_all(rounds)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn measure_export(
    ctx: &Ctx,
    export: Export,
    access: Access,
    targets: Vec<Target>,
) -> Vec<VolumeLabels> {
    let storage = match ctx.shared.exports.get(&export, &access) {
        Ok(storage) => storage,
        Err(error) => {
            warn!(%export, %error, "cannot measure the volumes of this export");
            return Vec::new();
        }
    };
    let started = std::time::Instant::now();
    let mut measured = Vec::new();
    for target in targets {
        if !ctx.shared.leadership.may_act() {
            return measured;
        }
        // Released or gone since the round began: nothing to measure.
        let Some(target) = volume_now(ctx, &target, &export) else {
            continue;
        };
        match storage.measure_volume(&target.path).await {
            Ok(Some(usage)) => {
                // Released since its turn came: nothing to report.
                let Some(target) = volume_after(ctx, target, &export) else {
                    continue;
                };
                ctx.shared.metrics.volume_measured(
                    &target.labels,
                    usage.used_bytes,
                    usage.inodes,
                    target.capacity,
                );
                tell_crossing(ctx, &target, &usage).await;
                measured.push(target.labels);
            }
            // Released and removed since the round began.
            Ok(None) => {}
            Err(error) => {
                warn!(%export, pv = %target.labels.persistentvolume, %error, "could not measure volume");
                ctx.shared.metrics.usage_failed(storage.name());
            }
        }
    }
    ctx.shared.metrics.usage_round_finished(storage.name());
    debug!(%export, volumes = measured.len(), took = ?started.elapsed(), "measured the volumes of the export");
    measured
}

/// An Event on the claim and a mark on the PV when the measurement crossed the claim's request.
async fn tell_crossing(ctx: &Ctx, target: &Volume, usage: &Usage) {
    let capacity = target.capacity;
    let Some(crossing) = usage::crossing(target.marked_over, usage.used_bytes, capacity) else {
        return;
    };
    let pv = target.labels.persistentvolume.as_str();
    let capacity = capacity.unwrap_or_default();
    let event = match crossing {
        Crossing::Over => events::over_capacity(pv, usage.used_bytes, capacity),
        Crossing::Within => events::within_capacity(pv, usage.used_bytes, capacity),
    };
    if ctx.ensure_leader(pv).is_err() {
        return;
    }
    info!(
        pv,
        used = usage.used_bytes,
        capacity,
        ?crossing,
        "volume usage crossed its claim's request"
    );
    let claim = ObjectRef::new(&target.labels.persistentvolumeclaim).within(&target.labels.namespace);
    if let Some(claim) = ctx.claims.get(&claim) {
        ctx.shared.events.publish(event, claim.object_ref(&()));
    }
    let mark = usage::mark_patch(crossing == Crossing::Over);
    if let Err(error) = k8s::patch(&ctx.pv_api, pv, &mark).await {
        warn!(pv, %error, "could not mark the volume's usage crossing; it is told again next round");
    }
}
