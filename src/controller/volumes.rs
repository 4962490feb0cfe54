//! Release: a Released PersistentVolume of ours → archive, delete or keep its directory → delete
//! the PV.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::packed::Packed;
use super::{Ctx, Error};
use crate::core::events;
use crate::core::params::OnDelete;
use crate::core::resync;
use crate::core::volume::{self, ReleasePlan, VolumeDecision};
use crate::k8s;
use crate::storage::{Archived, Removed};

/// How often a refused volume is looked at again.
const REFUSAL_RECHECK: std::time::Duration = std::time::Duration::from_secs(120);

fn class_of(pv: &PersistentVolume) -> &str {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default()
}

fn key(pv: &PersistentVolume) -> String {
    format!("volume/{}", pv.name_any())
}

/// Released PVs of ours without a retry already scheduled: for the resync.
pub fn released_of_ours(ctx: &Ctx) -> Vec<ObjectRef<Packed<PersistentVolume>>> {
    ctx.pvs
        .state()
        .iter()
        .filter(|pv| waiting_for_us(ctx, pv))
        .map(|pv| ObjectRef::from_obj(pv.as_ref()))
        .collect()
}

/// Whether `pv` may have a release for us to carry out, without a retry already scheduled.
pub fn waiting_for_us(ctx: &Ctx, pv: &Packed<PersistentVolume>) -> bool {
    // Nearly every PV is ruled out here, without being decoded.
    if !resync::volume_may_wait(pv.facts()) {
        return false;
    }
    let pv = pv.unpack();
    volume::awaits_release(&pv, ctx.provisioner()) && !ctx.backing_off(&key(&pv))
}

#[tracing::instrument(skip_all, fields(pv = %pv.name_any(), class = class_of(&pv)))]
pub async fn reconcile(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.caches_ready().await;
    let class = ctx.class(Some(class_of(&pv)).filter(|c| !c.is_empty()));
    let served = ctx.class_exports();
    match volume::decide_among(
        &pv,
        ctx.provisioner(),
        ctx.mounted_export(),
        &served.exports,
        class.as_deref(),
    ) {
        VolumeDecision::Skip(skip) => {
            debug!(?skip, "nothing to do");
            ctx.succeeded(&key(&pv));
            Ok(Action::await_change())
        }
        VolumeDecision::Refuse(refusal) => {
            warn!(%refusal, "volume not released");
            ctx.shared
                .events
                .publish(events::delete_failed(&refusal), pv.object_ref(&()));
            // A StorageClass naming the volume's export may appear, which this controller does
            // not watch: look again now and then.
            Ok(Action::requeue(REFUSAL_RECHECK))
        }
        VolumeDecision::Protect => protect(&pv, true, &ctx).await,
        VolumeDecision::Unprotect => protect(&pv, false, &ctx).await,
        // The directory was released by an earlier attempt (and counted then).
        VolumeDecision::DeletePv => {
            delete_pv(&pv, &ctx).await?;
            ctx.succeeded(&key(&pv));
            Ok(Action::await_change())
        }
        VolumeDecision::Release(plan) => {
            let result = release(&pv, &plan, &ctx).await;
            if let Err(error) = &result {
                warn!(%error, "release failed; will retry");
                if !matches!(error, Error::NotLeader(_)) {
                    ctx.shared.metrics.release_failed(class_of(&pv), error.reason());
                    ctx.shared
                        .events
                        .publish(events::delete_failed(error), pv.object_ref(&()));
                }
            }
            result
        }
    }
}

async fn release(pv: &PersistentVolume, plan: &ReleasePlan, ctx: &Ctx) -> Result<Action, Error> {
    let name = pv.name_any();
    let started = std::time::Instant::now();
    ctx.ensure_leader(&name)?;
    let storage = ctx.shared.exports.get(&plan.export, &plan.access)?;
    match plan.action {
        OnDelete::Archive => match storage.archive_volume(&plan.path).await? {
            Archived::To(archive) => {
                info!(directory = %plan.path, %archive, "archived");
                ctx.shared
                    .events
                    .publish(events::archived(&plan.path, &archive), pv.object_ref(&()));
            }
            Archived::Missing => info!(directory = %plan.path, "directory already gone; nothing to archive"),
        },
        OnDelete::Delete => match storage.delete_volume(&plan.path).await? {
            Removed::Removed { entries } => info!(directory = %plan.path, entries, "deleted"),
            Removed::Missing => info!(directory = %plan.path, "directory already gone; nothing to delete"),
        },
        OnDelete::Retain => info!(directory = %plan.path, "retained"),
    }
    if plan.protected {
        let released = volume::released_patch(pv);
        patch(
            pv,
            &released,
            "mark released and remove the deletion-protection finalizer from",
            ctx,
        )
        .await?;
    }
    delete_pv(pv, ctx).await?;
    ctx.shared.metrics.released(class_of(pv), started.elapsed());
    ctx.succeeded(&key(pv));
    Ok(Action::await_change())
}

/// A change of protection, reconciled: the watch brings the changed PV back.
async fn protect(pv: &PersistentVolume, on: bool, ctx: &Ctx) -> Result<Action, Error> {
    let op = if on {
        "add the deletion-protection finalizer to"
    } else {
        "remove the deletion-protection finalizer from"
    };
    patch(pv, &volume::protection_patch(pv, on), op, ctx).await?;
    debug!(protect = on, "deletion protection changed");
    ctx.succeeded(&key(pv));
    Ok(Action::await_change())
}

async fn patch(
    pv: &PersistentVolume,
    what: &serde_json::Value,
    op: &'static str,
    ctx: &Ctx,
) -> Result<(), Error> {
    let name = pv.name_any();
    ctx.ensure_leader(&name)?;
    k8s::patch(&ctx.pv_api, &name, what)
        .await
        .map_err(Error::api(op, &name))
}

/// The last step of every release: deleting exactly the PV that was released.
async fn delete_pv(pv: &PersistentVolume, ctx: &Ctx) -> Result<(), Error> {
    let name = pv.name_any();
    ctx.ensure_leader(&name)?;
    k8s::delete_pv(&ctx.pv_api, &name, pv.uid().as_deref())
        .await
        .map_err(Error::api("delete", &name))
}

pub fn error_policy(pv: Arc<PersistentVolume>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.backoff(&key(&pv), error)
}
