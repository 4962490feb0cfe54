//! Expansion: a bound claim asking for more than its PV of ours holds → the PV's size → the
//! claim's status (what external-resizer does for a volume that needs no node step).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::{Ctx, Error};
use crate::core::claim;
use crate::core::events;
use crate::core::resize::{self, ResizeDecision};
use crate::k8s;

/// How soon a claim with an unreadable size is looked at again.
const REFUSAL_RECHECK: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether the bound `claim` has a resize to carry out: for the resync.
pub fn wanted(claim: &PersistentVolumeClaim, ctx: &Ctx) -> bool {
    resize::volume_name(claim).is_some_and(|pv| {
        let pv = ctx.pv(pv);
        resize::wanted(claim, pv.as_ref(), ctx.provisioner())
    })
}

pub async fn reconcile(claim: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, Error> {
    let pv = resize::volume_name(claim).and_then(|pv| ctx.pv(pv));
    let class = claim::class_name(claim).unwrap_or_default();
    let result = match resize::decide(claim, pv.as_ref(), ctx.provisioner()) {
        ResizeDecision::Skip(skip) => {
            debug!(?skip, "no resize");
            return Ok(Action::await_change());
        }
        ResizeDecision::Refuse(refusal) => {
            warn!(%refusal, "resize refused");
            let pv = resize::volume_name(claim).unwrap_or_default();
            let event = events::resize_failed(pv, &refusal);
            ctx.shared.events.publish(event, claim.object_ref(&()));
            return Ok(Action::requeue(REFUSAL_RECHECK));
        }
        ResizeDecision::Grow { pv, to } => grow(claim, &pv, &to, ctx).await.map(|()| (pv, to)),
        ResizeDecision::Finish { pv, capacity } => {
            finish(claim, &capacity, ctx).await.map(|()| (pv, capacity))
        }
    };
    match result {
        Ok((pv, capacity)) => {
            info!(pv, capacity = %capacity.0, "volume resized");
            ctx.shared.metrics.resized(class);
            ctx.shared
                .events
                .publish(events::resized(&pv, &capacity.0), claim.object_ref(&()));
            Ok(Action::await_change())
        }
        Err(error) => {
            warn!(%error, "resize failed; will retry");
            if !matches!(error, Error::NotLeader(_)) {
                ctx.shared.metrics.resize_failed(class, error.reason());
                let pv = resize::volume_name(claim).unwrap_or_default();
                let event = events::resize_failed(pv, &error);
                ctx.shared.events.publish(event, claim.object_ref(&()));
            }
            Err(error)
        }
    }
}

async fn grow(
    claim: &PersistentVolumeClaim,
    pv: &str,
    to: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ctx: &Ctx,
) -> Result<(), Error> {
    ctx.ensure_leader(pv)?;
    ctx.shared
        .events
        .publish(events::resizing(pv), claim.object_ref(&()));
    k8s::patch(&ctx.pv_api, pv, &resize::pv_patch(to))
        .await
        .map_err(Error::api("grow", pv))?;
    finish(claim, to, ctx).await
}

async fn finish(
    claim: &PersistentVolumeClaim,
    capacity: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    ctx: &Ctx,
) -> Result<(), Error> {
    let name = claim.name_any();
    ctx.ensure_leader(&name)?;
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.shared.client.clone(), &claim.namespace().unwrap_or_default());
    k8s::patch_claim_status(&claims, &name, &resize::claim_status_patch(claim, capacity))
        .await
        .map_err(|source| Error::Api {
            op: "record the new size on the status of claim",
            object: format!(
                "PersistentVolumeClaim {}/{name}",
                claim.namespace().unwrap_or_default()
            ),
            source,
        })
}
