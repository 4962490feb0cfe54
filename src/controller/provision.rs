//! Provisioning steps, shared by new volumes and clones: reserve the directory against live
//! volumes, check the export's free space, place the directory and make its PV, and tell the
//! user (an Event; a refusal leaves the claim Pending and is looked at again).

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::{Ctx, Error, lock};
use crate::core::claim::{self, ProvisionPlan, Reuse};
use crate::core::clone::{CloneSource, Copied};
use crate::core::events;
use crate::k8s;
use crate::storage::{Created, Storage, StorageFailure};

/// A refused claim is looked at again after this long even without a change to it. A fixed
/// StorageClass triggers a recheck at once, but through a different watch than the cache the
/// recheck reads, so the recheck may still see the old class; this bounds how long that lasts.
const REFUSAL_RECHECK: Duration = Duration::from_secs(30);

/// How soon a claim whose PV exists but is not cached yet is looked at again.
const CACHE_RECHECK: Duration = Duration::from_secs(1);

/// The kind of a clone's data source, as the provisioning metrics label it.
pub const SOURCE_KIND: &str = "PersistentVolumeClaim";

/// The key of a claim's backoff.
pub fn key(claim: &PersistentVolumeClaim) -> String {
    format!(
        "claim/{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

/// The kind of a claim's data source, as the provisioning metrics label it.
pub fn source_kind(plan: &ProvisionPlan) -> &'static str {
    if plan.source.is_some() { SOURCE_KIND } else { "" }
}

/// Tells the user why their claim waits (a Warning Event), counts it as a failed attempt, and
/// looks again later: the claim stays Pending until what refused it changes.
/// `reason`: the refusal's own `reason()`.
pub fn refuse(
    claim: &PersistentVolumeClaim,
    refusal: &dyn std::fmt::Display,
    reason: &'static str,
    ctx: &Ctx,
) -> Action {
    warn!(%refusal, reason, "claim refused");
    let source = if crate::core::clone::requested(claim).ok().flatten().is_some() {
        SOURCE_KIND
    } else {
        ""
    };
    // Counted like the library counts a Provision error, so stuck claims show in alerts.
    ctx.shared
        .metrics
        .provision_failed(claim::class_name(claim).unwrap_or_default(), source, reason);
    let event = events::provisioning_failed(refusal, false);
    ctx.shared.events.publish(event, claim.object_ref(&()));
    Action::requeue(REFUSAL_RECHECK)
}

/// Reserves `plan`'s directory against the directories of live volumes and other claims in
/// flight, or refuses it as overlapping one of them.
pub fn reserve(plan: &ProvisionPlan, ctx: &Ctx) -> Result<(), claim::Refusal> {
    let mut reservations = lock(&ctx.reservations);
    let live = ctx.overlapping_directories(&plan.export, &plan.path, &reservations);
    if let Some(refusal) = claim::find_overlap(plan, live.iter().map(|(n, p)| (n.as_str(), p))) {
        return Err(refusal);
    }
    reservations.reserve(&plan.pv_name, &plan.export, &plan.path);
    Ok(())
}

pub fn unreserve(ctx: &Ctx, pv: &str) {
    lock(&ctx.reservations).release(pv);
}

/// Whether the claim of `plan` fits in what its export has free, where its class checks.
pub async fn check_space(
    plan: &ProvisionPlan,
    storage: &Storage,
    ctx: &Ctx,
) -> Result<Result<(), claim::Refusal>, Error> {
    if !plan.check_free_space {
        return Ok(Ok(()));
    }
    let capacity = storage.capacity().await?;
    ctx.shared
        .metrics
        .export_capacity(storage.name(), capacity.total_bytes, capacity.available_bytes);
    Ok(claim::fits(plan, capacity.available_bytes))
}

/// A new, empty volume: checked, reserved, made.
pub async fn provision(
    claim: &PersistentVolumeClaim,
    plan: ProvisionPlan,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let storage = ctx.shared.exports.get(&plan.export, &plan.access)?;
    if let Err(refusal) = check_space(&plan, &storage, ctx).await? {
        return Ok(refuse(claim, &refusal, refusal.reason(), ctx));
    }
    if let Err(refusal) = reserve(&plan, ctx) {
        return Ok(refuse(claim, &refusal, refusal.reason(), ctx));
    }
    let claim_key = format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any());
    ctx.shared
        .events
        .publish(events::provisioning(&claim_key), claim.object_ref(&()));
    make_volume(claim, &plan, ctx, None).await
}

/// Places the directory of `plan` (a clone's: once its copy is whole, `clone` saying what was
/// copied from where), makes its PV and tells the user. The reservation goes if this fails.
pub async fn make_volume(
    claim: &PersistentVolumeClaim,
    plan: &ProvisionPlan,
    ctx: &Ctx,
    clone: Option<(&CloneSource, &Copied)>,
) -> Result<Action, Error> {
    let result = place(claim, plan, ctx, clone).await;
    if result.is_err() {
        unreserve(ctx, &plan.pv_name);
    }
    result
}

async fn place(
    claim: &PersistentVolumeClaim,
    plan: &ProvisionPlan,
    ctx: &Ctx,
    clone: Option<(&CloneSource, &Copied)>,
) -> Result<Action, Error> {
    let pv = plan.pv_name.as_str();
    let storage = ctx.shared.exports.get(&plan.export, &plan.access)?;
    let started = std::time::Instant::now();
    ctx.ensure_leader(pv)?;

    let created = match storage
        .create_volume(pv, &plan.path, plan.dir, plan.reuse.existing())
        .await
    {
        Ok(created) => created,
        Err(error) if error.is_taken() => return taken(pv, plan, error, storage, ctx).await,
        Err(error) => return Err(error.into()),
    };
    match created {
        Created::Adopted => {
            info!(pv, export = %plan.export, directory = %plan.path, "adopted directory of an earlier interrupted attempt");
        }
        Created::Reused => {
            info!(pv, export = %plan.export, directory = %plan.path, "reusing existing directory")
        }
        Created::New | Created::Staged => {}
    }
    ctx.ensure_leader(pv)?;
    k8s::create_pv(&ctx.pv_api, &plan.pv)
        .await
        .map_err(Error::api("create", pv))?;
    // The PV is now the durable record; the staging record is no longer needed. A failure here
    // only leaves an empty record that the next term's sweep clears.
    if let Err(error) = storage.finish_volume(pv).await {
        warn!(pv, %error, "could not clear staging record");
    }
    info!(pv, export = %plan.export, directory = %plan.path, "provisioned");
    ctx.shared.metrics.provisioned(
        claim::class_name(claim).unwrap_or_default(),
        source_kind(plan),
        started.elapsed(),
    );
    let event = match (created, clone) {
        (_, Some((source, copied))) => events::cloned(pv, &plan.path, &source.claim, copied),
        (Created::Reused, None) => events::reused(pv, &plan.path),
        _ => events::provisioned(pv, &plan.path),
    };
    ctx.shared.events.publish(event, claim.object_ref(&()));
    ctx.succeeded(&key(claim));
    Ok(Action::await_change())
}

/// The directory is there but not as this volume's attempt in progress: either a stranger's, or
/// our own finished one whose PV the cache has not seen yet (it lags after an API server restart).
/// Only the API server can tell, and only this rare path asks it.
async fn taken(
    pv: &str,
    plan: &ProvisionPlan,
    error: StorageFailure,
    storage: Storage,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let exists = k8s::pv_exists(&ctx.pv_api, pv)
        .await
        .map_err(Error::api("get", pv))?;
    if !exists {
        return Err(match &plan.reuse {
            Reuse::Forbidden(rule) => Error::ReuseRefused {
                path: plan.path.to_string(),
                rule: rule.clone(),
            },
            Reuse::Off | Reuse::Allowed => error.into(),
        });
    }
    // Keep the reservation until the cache sees the PV (its change drops it), so no overlapping
    // claim slips in meanwhile.
    debug!(pv, "PersistentVolume exists; waiting for the cache to see it");
    if let Err(error) = storage.finish_volume(pv).await {
        warn!(pv, %error, "could not clear staging record");
    }
    Ok(Action::requeue(CACHE_RECHECK))
}
