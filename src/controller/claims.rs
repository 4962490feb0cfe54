//! The claim controller: what each claim waits for, and which way it goes: a new volume
//! ([`super::provision`]), a clone, copied in the background ([`super::clones`]), or, bound, a
//! resize ([`super::resizes`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::packed::Packed;
use super::provision::{self, key, refuse, source_kind};
use super::{Cache, Ctx, Error, clones, lock, resizes};
use crate::core::claim::{self, ClaimDecision, Skip};
use crate::core::events;
use crate::core::{resize, resync};
use k8s_openapi::jiff::Timestamp;

/// Claims waiting for a volume from `class`: re-evaluated when the class appears or changes.
pub fn pending_claims_of_class(
    claims: &Cache<PersistentVolumeClaim>,
    class: &Packed<StorageClass>,
) -> Vec<ObjectRef<Packed<PersistentVolumeClaim>>> {
    let name = class.name_any();
    claims
        .state()
        .iter()
        .filter(|packed| {
            let c = packed.unpack();
            claim::class_name(&c) == Some(name.as_str())
                && c.spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_deref())
                    .is_none_or(str::is_empty)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Claims handed to us and not provisioned yet, bound to a volume of ours that is to grow, or holding a
/// cloning protection nothing needs any more, without a retry already scheduled: for the resync.
pub fn pending_for_us(ctx: &Ctx) -> Vec<ObjectRef<Packed<PersistentVolumeClaim>>> {
    ctx.claims
        .state()
        .iter()
        .filter(|c| waiting_for_us(ctx, c))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Whether `claim` is handed to us and not provisioned yet, bound to a volume of ours that is to
/// grow, or holding a cloning protection nothing needs any more, without a retry already
/// scheduled.
pub fn waiting_for_us(ctx: &Ctx, claim: &Packed<PersistentVolumeClaim>) -> bool {
    let own_volume = claim
        .uid()
        .and_then(|uid| claim::pv_name_of_uid(&uid))
        .and_then(|pv| ctx.pvs.get(&ObjectRef::new(&pv)));
    // Nearly every claim is ruled out here, by what was noted when it was cached, without being
    // decoded (and its volume with it, for a resize).
    if !resync::claim_may_wait(claim.facts(), own_volume.as_ref().map(|pv| pv.facts())) {
        return false;
    }
    let c = claim.unpack();
    let volume_made = own_volume.is_some();
    (claim::awaits_provisioning(&c, ctx.provisioner(), volume_made)
        || resizes::wanted(&c, ctx)
        || clones::protection_to_release(&c, ctx))
        && !ctx.backing_off(&key(&c))
}

#[tracing::instrument(skip_all, fields(namespace = %claim.namespace().unwrap_or_default(), claim = %claim.name_any(), class))]
pub async fn reconcile(claim: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let class_name = claim::class_name(&claim);
    tracing::Span::current().record("class", class_name.unwrap_or_default());
    let pv_name = claim::pv_name(&claim);
    let pv_exists = pv_name
        .as_ref()
        .is_some_and(|n| ctx.pvs.get(&ObjectRef::new(n)).is_some());
    // A clone that is provisioned or going no longer holds its source.
    let deleting = claim.metadata.deletion_timestamp.is_some();
    if deleting && let Some(pv) = &pv_name {
        ctx.clones.forget(pv);
    }
    if deleting || resize::volume_name(&claim).is_some() {
        clones::source_done(&claim, &ctx).await;
    }
    clones::release_protection(&claim, &ctx).await?;
    if resize::volume_name(&claim).is_some() {
        if pv_exists && let Some(pv) = &pv_name {
            lock(&ctx.reservations).release(pv);
        }
        let result = resizes::reconcile(&claim, &ctx).await;
        if result.is_ok() {
            ctx.succeeded(&key(&claim));
        }
        return result;
    }
    let class = ctx.class(class_name);

    match claim::decide(
        &claim,
        class.as_deref(),
        ctx.provisioner(),
        ctx.mounted_export(),
        pv_exists,
    ) {
        ClaimDecision::Skip(skip) => {
            if skip == Skip::AlreadyProvisioned
                && let Some(pv) = &pv_name
            {
                lock(&ctx.reservations).release(pv);
            }
            debug!(?skip, "nothing to do");
            ctx.succeeded(&key(&claim));
            Ok(Action::await_change())
        }
        ClaimDecision::Refuse(refusal) => Ok(refuse(&claim, &refusal, refusal.reason(), &ctx)),
        ClaimDecision::Provision(plan) => {
            // The grace first: the look for a pre-bound PV then runs once per claim, after the PV
            // has had its time to arrive.
            if let Some(wait) = claim::grace_left(&claim, Timestamp::now()) {
                debug!(
                    ?wait,
                    "new claim: giving a PV pre-bound to it time to reach the cache"
                );
                return Ok(Action::requeue(wait));
            }
            let pvs = ctx.pvs_naming_claim(&claim);
            if let Some(pv) = claim::pre_bound_volume(&claim, pvs.iter().map(AsRef::as_ref)) {
                info!(
                    pv,
                    "a PersistentVolume is pre-bound to this claim; kube-controller-manager binds them"
                );
                ctx.shared
                    .events
                    .publish(events::waiting_for_pre_bound(pv), claim.object_ref(&()));
                ctx.succeeded(&key(&claim));
                return Ok(Action::await_change());
            }
            drop(pvs);
            let source = source_kind(&plan);
            let result = match plan.source.clone() {
                Some(source) => clones::reconcile(&claim, *plan, &source, &ctx).await,
                None => provision::provision(&claim, *plan, &ctx).await,
            };
            if let Err(error) = &result {
                warn!(%error, "provisioning failed; will retry");
                if !matches!(error, Error::NotLeader(_)) {
                    ctx.shared.metrics.provision_failed(
                        class_name.unwrap_or_default(),
                        source,
                        error.reason(),
                    );
                    let event = events::provisioning_failed(error, true);
                    ctx.shared.events.publish(event, claim.object_ref(&()));
                }
            }
            result
        }
    }
}

pub fn error_policy(claim: Arc<PersistentVolumeClaim>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.backoff(&key(&claim), error)
}
