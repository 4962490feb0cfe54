//! Leader election on a coordination.k8s.io/v1 Lease. [`crate::core::lease`] decides; this module
//! reads and writes the Lease (optimistic concurrency through `resourceVersion`), keeps
//! [`Leadership`] current for the controllers, and releases the Lease on shutdown so the next
//! replica leads at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::lease::{self, LeaseRecord, LeaseStep, LeaseTimings};
use crate::health::Health;

/// Whether this replica may mutate anything right now. Checked before every directory operation
/// and API write, so a leader that cannot renew stops acting before its lease can expire.
#[derive(Clone)]
pub struct Leadership {
    state: Arc<Mutex<Option<Instant>>>,
    timings: Option<LeaseTimings>,
}

impl Leadership {
    /// Leader election disabled: always act.
    pub fn always() -> Self {
        Leadership {
            state: Arc::new(Mutex::new(None)),
            timings: None,
        }
    }

    fn elected(timings: LeaseTimings) -> Self {
        Leadership {
            state: Arc::new(Mutex::new(None)),
            timings: Some(timings),
        }
    }

    pub fn may_act(&self) -> bool {
        let Some(timings) = &self.timings else {
            return true;
        };
        let renewed = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        renewed.is_some_and(|at| lease::may_act(at.elapsed(), timings))
    }

    fn renewed(&self, at: Option<Instant>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{op} Lease {namespace}/{name}: {source}")]
    Api {
        op: &'static str,
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

/// Why [`Elector::hold`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermEnd {
    /// Shutdown.
    Cancelled,
    /// Another replica took the Lease, or it could not be renewed in time.
    Lost,
    /// This leader's watches stayed broken past the readiness bound: it released the Lease so a
    /// standby with working watches can lead.
    SteppedDown(String),
}

pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timings: LeaseTimings,
    leadership: Leadership,
    /// The record as last seen and when it was first seen so (client-go's observedTime).
    observed: Option<(LeaseSpec, Instant)>,
    /// Told whether each attempt reached the API server: a follower's readiness.
    health: Health,
}

/// nfs-subdir-external-provisioner named its lock after the provisioner, with '/' replaced.
pub fn lease_name(provisioner: &str) -> String {
    provisioner.replace('/', "-")
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: LeaseTimings,
        health: Health,
    ) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timings,
            leadership: Leadership::elected(timings),
            observed: None,
            health,
        }
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    fn api_error(&self, op: &'static str, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            op,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    /// Campaigns until this replica holds the Lease (true) or `cancel` fires (false).
    pub async fn acquire(&mut self, cancel: &CancellationToken) -> bool {
        loop {
            let attempt_started = Instant::now();
            let attempt = self.try_acquire_or_renew().await;
            self.health
                .api_contact(attempt.as_ref().map(|_| ()).map_err(ToString::to_string));
            match attempt {
                Ok(true) => {
                    self.leadership.renewed(Some(attempt_started));
                    info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return true;
                }
                Ok(false) => debug!(lease = %self.name, "lease held by another replica"),
                Err(error) => warn!(%error, "leader election attempt failed"),
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(self.timings.retry_period) => {}
            }
        }
    }

    /// Renews every retry period until a renewal has not succeeded within the renew deadline,
    /// another replica holds the Lease, this leader's watches stay broken past the readiness bound
    /// (it releases the Lease then), or `cancel` fires. This replica must stop acting afterwards.
    pub async fn hold(&mut self, cancel: &CancellationToken) -> TermEnd {
        let mut last_renewal = Instant::now();
        let term_started = last_renewal;
        let end = loop {
            tokio::select! {
                () = cancel.cancelled() => break TermEnd::Cancelled,
                () = tokio::time::sleep(self.timings.retry_period) => {}
            }
            // A leader that hears nothing must not keep the Lease from a standby that could. A
            // new term (with new watches) first gets the same bound to make them work: the record
            // of a step-down is kept for liveness, not held against the next term.
            if term_started.elapsed() > self.health.watch_bounds().unready_after
                && let Some(reason) = self.health.watch_broken_past_readiness()
            {
                warn!(lease = %self.name, %reason, "stepping down: releasing the lease to a standby");
                self.release().await;
                break TermEnd::SteppedDown(reason);
            }
            let remaining = self.timings.renew_deadline.saturating_sub(last_renewal.elapsed());
            let attempt_started = Instant::now();
            let attempt = tokio::time::timeout(remaining, self.try_acquire_or_renew()).await;
            self.health.api_contact(match &attempt {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("lease renewal timed out".into()),
            });
            match attempt {
                Ok(Ok(true)) => {
                    last_renewal = attempt_started;
                    self.leadership.renewed(Some(attempt_started));
                }
                Ok(Ok(false)) => {
                    warn!(lease = %self.name, "lease was taken by another replica");
                    break TermEnd::Lost;
                }
                Ok(Err(error)) => warn!(%error, "lease renewal failed"),
                Err(_) => warn!(lease = %self.name, "lease renewal timed out"),
            }
            if !lease::may_act(last_renewal.elapsed(), &self.timings) {
                warn!(lease = %self.name, deadline = ?self.timings.renew_deadline, "could not renew lease in time");
                break TermEnd::Lost;
            }
        };
        self.leadership.renewed(None);
        end
    }

    /// Hands the Lease over at once: holder cleared, as client-go's ReleaseOnCancel does.
    pub async fn release(&mut self) {
        self.leadership.renewed(None);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.name, "released leadership"),
            Err(error) => warn!(%error, lease = %self.name, "could not release lease"),
        }
    }

    /// One round of client-go's tryAcquireOrRenew: Ok(true) when we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let now = MicroTime(Timestamp::now());
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.api_error("get", e))?;
        let record = current.as_ref().map(|l| {
            let spec = l.spec.clone().unwrap_or_default();
            LeaseRecord {
                holder: spec.holder_identity,
                duration_secs: spec.lease_duration_seconds,
            }
        });
        let since_change = match (&current, &self.observed) {
            (Some(l), Some((seen, at))) if l.spec.as_ref() == Some(seen) => at.elapsed(),
            (Some(l), _) => {
                self.observed = Some((l.spec.clone().unwrap_or_default(), Instant::now()));
                Duration::ZERO
            }
            (None, _) => Duration::ZERO,
        };
        let duration_secs = i32::try_from(self.timings.duration.as_secs()).unwrap_or(i32::MAX);
        let step = lease::decide(record.as_ref(), &self.identity, since_change, &self.timings);
        let result = match (step, current) {
            (LeaseStep::Wait, _) => return Ok(false),
            (LeaseStep::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        namespace: Some(self.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration_secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (step, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if step == LeaseStep::Acquire {
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(duration_secs);
                spec.renew_time = Some(now);
                // resourceVersion from the read makes this a compare-and-swap: 409 = lost the race.
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match result {
            Ok(lease) => {
                self.observed = Some((lease.spec.unwrap_or_default(), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.api_error("write", e)),
        }
    }
}
