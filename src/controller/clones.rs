//! Clones: a claim whose data source is another claim is filled with a copy of that claim's volume
//! in the staging area before its own volume is placed and its PV made. The copy runs as a task of
//! its own, bounded (MAX_CONCURRENT_CLONES at once, CLONE_CONCURRENCY requests in flight each) and
//! under CLONE_TIMEOUT, so a long copy never holds a reconcile slot: the claim's reconcile starts
//! it, reports its progress in Events and metrics while it runs, and places the volume once it is
//! whole; the copy's end wakes the claim at once. The source claim carries external-provisioner's
//! cloning-protection finalizer while clones of it wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::packed::{self, Packed};
use super::provision;
use super::{Ctx, Error, lock};
use crate::core::claim::{self as claim_core, ProvisionPlan};
use crate::core::clone::{self, CloneSource, Copied};
use crate::core::events;
use crate::k8s;
use crate::storage::{Created, Progress, StorageFailure};

/// How often a running clone's claim reports its progress (a Normal Event, the metrics).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// The copies of this leadership term, by PV name.
pub struct Clones {
    jobs: Mutex<HashMap<String, Job>>,
    slots: Arc<Semaphore>,
    at_once: usize,
    wake: mpsc::UnboundedSender<ObjectRef<Packed<PersistentVolumeClaim>>>,
    /// The term: its end stops every copy.
    term: CancellationToken,
}

struct Job {
    /// The namespace of the clone and of its source.
    namespace: String,
    source: CloneSource,
    progress: Arc<Progress>,
    /// Waiting for one of the MAX_CONCURRENT_CLONES slots.
    waiting: Arc<AtomicBool>,
    outcome: Arc<Mutex<Option<Result<Created, StorageFailure>>>>,
    /// What the metrics were told of already: entries, bytes.
    reported: (u64, u64),
    task: AbortHandle,
}

/// Where a claim's copy is.
pub enum State {
    Idle,
    Running {
        source: CloneSource,
        copied: Copied,
        waiting: bool,
        /// Copied since the last look: entries, bytes.
        delta: (u64, u64),
    },
    Done {
        source: CloneSource,
        copied: Copied,
        delta: (u64, u64),
        outcome: Result<Created, StorageFailure>,
    },
}

impl Clones {
    /// A copy's end is sent to `wake`, so its claim is looked at again at once; copies stop when
    /// `term` ends.
    pub fn new(
        at_once: usize,
        wake: mpsc::UnboundedSender<ObjectRef<Packed<PersistentVolumeClaim>>>,
        term: CancellationToken,
    ) -> Self {
        Clones {
            jobs: Mutex::default(),
            slots: Arc::new(Semaphore::new(at_once)),
            at_once,
            wake,
            term,
        }
    }

    /// Where `pv`'s copy is; a finished one is handed over (and forgotten) here.
    pub fn state(&self, pv: &str) -> State {
        let mut jobs = lock(&self.jobs);
        let Some(job) = jobs.get_mut(pv) else {
            return State::Idle;
        };
        let copied = job.progress.copied();
        let delta = (
            copied.entries.saturating_sub(job.reported.0),
            copied.bytes.saturating_sub(job.reported.1),
        );
        job.reported = (copied.entries, copied.bytes);
        let outcome = lock(&job.outcome).take();
        match outcome {
            None => State::Running {
                source: job.source.clone(),
                copied,
                waiting: job.waiting.load(Ordering::Relaxed),
                delta,
            },
            Some(outcome) => {
                let job = jobs.remove(pv).map(|j| j.source);
                State::Done {
                    source: job.unwrap_or_else(|| unreachable!("the job was just found")),
                    copied,
                    delta,
                    outcome,
                }
            }
        }
    }

    /// Starts copying for `pv` (of `claim`): `copy` runs once one of the slots is free, until it
    /// ends or the term does.
    fn start<F>(
        &self,
        pv: &str,
        claim: ObjectRef<Packed<PersistentVolumeClaim>>,
        namespace: String,
        source: CloneSource,
        progress: Arc<Progress>,
        copy: F,
    ) where
        F: Future<Output = Result<Created, StorageFailure>> + Send + 'static,
    {
        let waiting = Arc::new(AtomicBool::new(true));
        let outcome = Arc::default();
        let task = tokio::spawn({
            let (slots, waiting, outcome, wake, term) = (
                Arc::clone(&self.slots),
                Arc::clone(&waiting),
                Arc::clone(&outcome),
                self.wake.clone(),
                self.term.clone(),
            );
            async move {
                let permit = tokio::select! {
                    () = term.cancelled() => return,
                    permit = slots.acquire_owned() => permit,
                };
                waiting.store(false, Ordering::Relaxed);
                let result = tokio::select! {
                    () = term.cancelled() => return,
                    result = copy => result,
                };
                drop(permit);
                *lock(&outcome) = Some(result);
                let _ = wake.send(claim);
            }
        })
        .abort_handle();
        lock(&self.jobs).insert(
            pv.to_owned(),
            Job {
                namespace,
                source,
                progress,
                waiting,
                outcome,
                reported: (0, 0),
                task,
            },
        );
    }

    /// Stops `pv`'s copy, if one runs (its claim is gone); `true` if there was one.
    pub fn forget(&self, pv: &str) -> bool {
        match lock(&self.jobs).remove(pv) {
            Some(job) => {
                job.task.abort();
                true
            }
            None => false,
        }
    }

    /// Copies of this term not yet handed over.
    pub fn in_progress(&self) -> usize {
        lock(&self.jobs).len()
    }

    /// Whether a copy of the claim `namespace/name` runs.
    fn copying_from(&self, namespace: &str, name: &str) -> bool {
        lock(&self.jobs)
            .values()
            .any(|j| j.source.claim == name && j.namespace == namespace && !j.task.is_finished())
    }
}

impl Drop for Clones {
    fn drop(&mut self) {
        for job in lock(&self.jobs).values() {
            job.task.abort();
        }
    }
}

fn claim_api(ctx: &Ctx, claim: &PersistentVolumeClaim) -> Api<PersistentVolumeClaim> {
    Api::namespaced(ctx.shared.client.clone(), &claim.namespace().unwrap_or_default())
}

/// The clone `claim` with its `plan` (whose source is `source_name`): start its copy, tell how far
/// it is, or place it and make its PV once it is whole.
pub async fn reconcile(
    claim: &PersistentVolumeClaim,
    plan: ProvisionPlan,
    source_name: &str,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let class = claim_core::class_name(claim).unwrap_or_default();
    let pv = plan.pv_name.clone();
    let state = ctx.clones.state(&pv);
    ctx.shared.metrics.clones_in_progress(ctx.clones.in_progress());
    match state {
        State::Idle => start(claim, plan, source_name, ctx).await,
        State::Running {
            source,
            copied,
            waiting,
            delta,
        } => {
            ctx.shared.metrics.cloned(class, delta.0, delta.1);
            let waiting = waiting.then_some(ctx.clones.at_once);
            let event = events::cloning(&source.claim, &source.pv, &copied, waiting);
            ctx.shared.events.publish(event, claim.object_ref(&()));
            Ok(Action::requeue(PROGRESS_INTERVAL))
        }
        State::Done {
            source,
            copied,
            delta,
            outcome,
        } => {
            ctx.shared.metrics.cloned(class, delta.0, delta.1);
            match outcome {
                Ok(_) => {
                    info!(pv, source = %source.claim, entries = copied.entries, bytes = copied.bytes, "copy of the source is whole");
                    provision::make_volume(claim, &plan, ctx, Some((&source, &copied))).await
                }
                Err(error) => {
                    provision::unreserve(ctx, &pv);
                    Err(error.into())
                }
            }
        }
    }
}

async fn start(
    claim: &PersistentVolumeClaim,
    plan: ProvisionPlan,
    source_name: &str,
    ctx: &Ctx,
) -> Result<Action, Error> {
    let namespace = claim.namespace().unwrap_or_default();
    let source_claim = ctx.claim(&namespace, source_name);
    let source_pv = source_claim
        .as_ref()
        .and_then(|c| c.spec.as_ref()?.volume_name.clone())
        .and_then(|pv| ctx.pv(&pv));
    let served = ctx.class_exports();
    let source = match clone::source(
        source_name,
        &plan.request,
        source_claim.as_ref(),
        source_pv.as_ref(),
        ctx.provisioner(),
        ctx.mounted_export(),
        &served.exports,
    ) {
        Ok(source) => source,
        Err(refusal) => return Ok(provision::refuse(claim, &refusal, refusal.reason(), ctx)),
    };
    let dest = ctx.shared.exports.get(&plan.export, &plan.access)?;
    if let Err(refused) = provision::check_space(&plan, &dest, ctx).await? {
        return Ok(provision::refuse(claim, &refused, refused.reason(), ctx));
    }
    let from = ctx.shared.exports.get(&source.export, &source.access)?;
    if let Err(refusal) = provision::reserve(&plan, ctx) {
        return Ok(provision::refuse(claim, &refusal, refusal.reason(), ctx));
    }
    if let Some(source_claim) = source_claim.as_ref()
        && !clone::is_protected(source_claim)
    {
        ctx.ensure_leader(&plan.pv_name)?;
        let patch = clone::protection_patch(source_claim, true);
        k8s::patch(&claim_api(ctx, claim), source_name, &patch)
            .await
            .map_err(|source| Error::Api {
                op: "add the cloning-protection finalizer to",
                object: format!(
                    "PersistentVolumeClaim {}/{source_name}",
                    claim.namespace().unwrap_or_default()
                ),
                source,
            })?;
    }
    ctx.ensure_leader(&plan.pv_name)?;
    let progress = Arc::new(Progress::default());
    let copy = {
        let (pv, path, dir, source_path, progress) = (
            plan.pv_name.clone(),
            plan.path.clone(),
            plan.dir,
            source.path.clone(),
            Arc::clone(&progress),
        );
        async move {
            dest.clone_volume(&pv, &path, dir, &from, &source_path, progress)
                .await
        }
    };
    info!(pv = %plan.pv_name, source = %source.claim, source_pv = %source.pv, directory = %plan.path, "copying the source into a new volume");
    let event = events::cloning(&source.claim, &source.pv, &Copied::default(), None);
    ctx.shared.events.publish(event, claim.object_ref(&()));
    ctx.clones.start(
        &plan.pv_name,
        packed::cache_ref(claim),
        namespace,
        source,
        progress,
        copy,
    );
    ctx.shared.metrics.clones_in_progress(ctx.clones.in_progress());
    Ok(Action::requeue(PROGRESS_INTERVAL))
}

/// Drops the cloning protection of `source` once no clone of it waits for us, nor is copied.
pub async fn release_protection(source: &PersistentVolumeClaim, ctx: &Ctx) -> Result<(), Error> {
    if !clone::is_protected(source) {
        return Ok(());
    }
    let (namespace, name) = (source.namespace().unwrap_or_default(), source.name_any());
    if clones_waiting(source, ctx) || ctx.clones.copying_from(&namespace, &name) {
        return Ok(());
    }
    ctx.ensure_leader(&name)?;
    debug!(
        namespace,
        claim = name,
        "no clone waits for this claim: removing its cloning protection"
    );
    let patch = clone::protection_patch(source, false);
    k8s::patch(&claim_api(ctx, source), &name, &patch)
        .await
        .map_err(|e| Error::Api {
            op: "remove the cloning-protection finalizer from",
            object: format!("PersistentVolumeClaim {namespace}/{name}"),
            source: e,
        })
}

/// Whether a claim handed to us and not provisioned yet asks for a copy of `source`.
fn clones_waiting(source: &PersistentVolumeClaim, ctx: &Ctx) -> bool {
    let clones: Vec<PersistentVolumeClaim> = ctx
        .clone_index
        .read()
        .clones_of(source)
        .iter()
        .filter_map(|(namespace, name)| {
            let claim = ObjectRef::new(name.as_deref()?);
            ctx.claims
                .get(&match namespace {
                    Some(namespace) => claim.within(namespace),
                    None => claim,
                })
                .map(|claim| claim.unpack())
        })
        .collect();
    let waiting = clones
        .iter()
        .filter(|c| claim_core::awaits_provisioner(c, ctx.provisioner()));
    clone::clones_pending(source, waiting)
}

/// Whether `claim` carries a cloning protection that nothing needs any more: for the resync.
pub fn protection_to_release(claim: &PersistentVolumeClaim, ctx: &Ctx) -> bool {
    clone::is_protected(claim) && !clones_waiting(claim, ctx)
}

/// A clone that is provisioned or gone no longer holds its source: look at the source again.
pub async fn source_done(claim: &PersistentVolumeClaim, ctx: &Ctx) {
    let Ok(Some(name)) = clone::requested(claim) else {
        return;
    };
    let namespace = claim.namespace().unwrap_or_default();
    let Some(source) = ctx.claim(&namespace, &name) else {
        return;
    };
    if let Err(error) = release_protection(&source, ctx).await {
        warn!(%error, source = name, "could not remove the cloning protection of the clone's source");
    }
}
