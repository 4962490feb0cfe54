//! What the probes report. Liveness: the async runtime still runs timers (a heartbeat task ticks),
//! and no watch has been broken for longer than [`WatchBounds::unhealthy_after`], so Kubernetes
//! restarts a provisioner that cannot recover its watches by itself. Readiness: a follower is ready
//! once it reaches the API server (standing by is its job, and an unready follower would stall
//! rollouts); the leader is ready once its caches are synced and every export it serves answers.
//! Either is unready while a watch has been broken for longer than [`WatchBounds::unready_after`]
//! (the bound at which a leader also hands its Lease to a standby, keeping the record). The verdicts are pure functions of [`State`] and
//! the time; the shell only records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// The heartbeat interval, and how stale it may grow before liveness fails.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not yet connected, or last attempt to reach the API server failed.
    Starting,
    Follower,
    Leader,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportStatus {
    Healthy,
    Failing(String),
}

/// How long a broken watch is tolerated. A watch is broken from its first failed attempt (list,
/// watch start, an error in the stream, or a stream silent past its stall bound) until an attempt
/// succeeds again; it retries every few seconds meanwhile (`crate::watch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchBounds {
    /// Readiness fails, and a leader steps down so a standby can take over.
    pub unready_after: Duration,
    /// Liveness fails, so the kubelet restarts the process.
    pub unhealthy_after: Duration,
}

impl Default for WatchBounds {
    fn default() -> Self {
        WatchBounds {
            unready_after: Duration::from_secs(60),
            unhealthy_after: Duration::from_secs(300),
        }
    }
}

/// What is known of one watch (a resource's list and watch): when the API server last proved it
/// current (a list completed, a watch started, an event or bookmark arrived) and, while its
/// attempts fail, since when and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRecord {
    pub confirmed: Option<Instant>,
    pub broken: Option<Broken>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub since: Instant,
    pub error: String,
}

impl WatchRecord {
    /// How long this watch has been broken at `now`; zero while it works.
    pub fn broken_for(&self, now: Instant) -> Duration {
        self.broken
            .as_ref()
            .map_or(Duration::ZERO, |b| now.saturating_duration_since(b.since))
    }
}

#[derive(Clone, Debug)]
pub struct State {
    pub role: Role,
    pub api_error: Option<String>,
    pub caches_synced: bool,
    pub exports: BTreeMap<String, ExportStatus>,
    /// By resource (`persistentvolumes`, …). Kept when a leader steps down because of them, so
    /// liveness can still fail if they never recover; cleared when a term ends otherwise.
    pub watches: BTreeMap<String, WatchRecord>,
}

/// The watch broken the longest at `now`, with how long, if any is broken longer than `bound`.
pub fn broken_watch(state: &State, now: Instant, bound: Duration) -> Option<(&str, Duration, &str)> {
    state
        .watches
        .iter()
        .filter_map(|(resource, record)| {
            let broken = record.broken.as_ref()?;
            let age = record.broken_for(now);
            (age > bound).then_some((resource.as_str(), age, broken.error.as_str()))
        })
        .max_by_key(|(_, age, _)| *age)
}

/// Liveness beyond the heartbeat: no watch broken for longer than `bounds.unhealthy_after`.
pub fn watches_alive(state: &State, now: Instant, bounds: &WatchBounds) -> Result<(), String> {
    match broken_watch(state, now, bounds.unhealthy_after) {
        None => Ok(()),
        Some((resource, age, error)) => Err(format!(
            "watch of {resource} broken for {}s (bound {}s): {error}",
            age.as_secs(),
            bounds.unhealthy_after.as_secs()
        )),
    }
}

/// One line of the probe's answer, as kube-apiserver's own probes print them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The readiness checks for `state` at `now`; ready when all pass.
pub fn readiness(state: &State, now: Instant, bounds: &WatchBounds) -> Vec<Check> {
    let mut checks = Vec::new();
    let api = match (&state.api_error, state.role) {
        (Some(error), _) => Check {
            name: "api".into(),
            ok: false,
            detail: error.clone(),
        },
        (None, Role::Starting) => Check {
            name: "api".into(),
            ok: false,
            detail: "not yet connected".into(),
        },
        (None, Role::Follower) => Check {
            name: "api".into(),
            ok: true,
            detail: "standing by; another replica leads".into(),
        },
        (None, Role::Leader) => Check {
            name: "api".into(),
            ok: true,
            detail: "leading".into(),
        },
    };
    checks.push(api);
    if state.role == Role::Leader {
        checks.push(Check {
            name: "caches".into(),
            ok: state.caches_synced,
            detail: if state.caches_synced {
                "synced".into()
            } else {
                "listing StorageClasses and PersistentVolumes".into()
            },
        });
        for (export, status) in &state.exports {
            checks.push(match status {
                ExportStatus::Healthy => Check {
                    name: format!("export {export}"),
                    ok: true,
                    detail: "answering".into(),
                },
                ExportStatus::Failing(why) => Check {
                    name: format!("export {export}"),
                    ok: false,
                    detail: why.clone(),
                },
            });
        }
    }
    // Whatever the role: a leader that stepped down because of its watches keeps them on record
    // until they work again or the kubelet restarts it.
    for (resource, record) in &state.watches {
        let age = |at: Instant| now.saturating_duration_since(at).as_secs();
        let (ok, detail) = match (&record.broken, record.confirmed) {
            (Some(broken), _) => {
                let broken_for = record.broken_for(now);
                let ok = broken_for <= bounds.unready_after;
                let verdict = if ok { "retrying" } else { "broken" };
                (
                    ok,
                    format!("{verdict} for {}s: {}", broken_for.as_secs(), broken.error),
                )
            }
            (None, Some(at)) => (true, format!("current (confirmed {}s ago)", age(at))),
            (None, None) => (true, "starting".to_owned()),
        };
        checks.push(Check {
            name: format!("watch {resource}"),
            ok,
            detail,
        });
    }
    checks
}

pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { '+' } else { '-' };
        out.push_str(&format!("[{mark}]{}: {}\n", c.name, c.detail));
    }
    let verdict = if checks.iter().all(|c| c.ok) {
        "ok"
    } else {
        "not ready"
    };
    out.push_str(verdict);
    out.push('\n');
    out
}

/// The process's shared health record; cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    /// Milliseconds since `started` at the last heartbeat.
    heartbeat: AtomicU64,
    state: Mutex<State>,
    metrics: Metrics,
    bounds: WatchBounds,
}

impl Health {
    /// With the default [`WatchBounds`].
    pub fn new(metrics: Metrics) -> Self {
        Self::with_watch_bounds(metrics, WatchBounds::default())
    }

    pub fn with_watch_bounds(metrics: Metrics, bounds: WatchBounds) -> Self {
        Health {
            inner: Arc::new(Inner {
                started: Instant::now(),
                heartbeat: AtomicU64::new(0),
                state: Mutex::new(State {
                    role: Role::Starting,
                    api_error: None,
                    caches_synced: false,
                    exports: BTreeMap::new(),
                    watches: BTreeMap::new(),
                }),
                metrics,
                bounds,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn snapshot(&self) -> State {
        self.state().clone()
    }

    pub fn beat(&self) {
        let now = u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.heartbeat.store(now, Ordering::Relaxed);
    }

    /// Liveness: the heartbeat task ran recently and no watch is broken past its bound.
    pub fn alive(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.inner.heartbeat.load(Ordering::Relaxed));
        let age = self.inner.started.elapsed().saturating_sub(last);
        if age > HEARTBEAT_STALE {
            return Err(format!(
                "event loop stalled: last heartbeat {}s ago",
                age.as_secs()
            ));
        }
        watches_alive(&self.state(), Instant::now(), &self.inner.bounds)
    }

    pub fn watch_bounds(&self) -> WatchBounds {
        self.inner.bounds
    }

    pub fn set_role(&self, role: Role) {
        let mut state = self.state();
        state.role = role;
        if role != Role::Leader {
            state.caches_synced = false;
        }
        self.inner.metrics.set_leader(role == Role::Leader);
    }

    /// A term ended. Its watches are forgotten unless the leader stepped down because of them:
    /// then they stay (readiness keeps failing, and liveness fails if this process never gets
    /// them working again).
    pub fn end_term(&self, keep_watches: bool) {
        self.set_role(Role::Follower);
        if !keep_watches {
            self.state().watches.clear();
            self.inner.metrics.forget_watch_health();
        }
    }

    /// The API server proved the watch of `resource` current. Returns how long it had been
    /// broken, if it was.
    pub fn watch_confirmed(&self, resource: &str) -> Option<Duration> {
        let now = Instant::now();
        let recovered = {
            let mut state = self.state();
            let record = watch_record(&mut state, resource);
            record.confirmed = Some(now);
            record
                .broken
                .take()
                .map(|b| now.saturating_duration_since(b.since))
        };
        self.inner.metrics.watch_confirmed(resource);
        recovered
    }

    /// An attempt of the watch of `resource` failed. Returns true when this starts a broken
    /// spell (the previous attempt worked).
    pub fn watch_failed(&self, resource: &str, error: &str) -> bool {
        let started = {
            let mut state = self.state();
            let record = watch_record(&mut state, resource);
            match &mut record.broken {
                Some(broken) => {
                    broken.error = error.to_owned();
                    false
                }
                None => {
                    record.broken = Some(Broken {
                        since: Instant::now(),
                        error: error.to_owned(),
                    });
                    true
                }
            }
        };
        self.inner.metrics.watch_failed(resource);
        started
    }

    /// The watch broken the longest, if one is broken past the readiness bound: the leader
    /// steps down then.
    pub fn watch_broken_past_readiness(&self) -> Option<String> {
        let state = self.state();
        broken_watch(&state, Instant::now(), self.inner.bounds.unready_after).map(|(resource, age, error)| {
            format!("watch of {resource} broken for {}s: {error}", age.as_secs())
        })
    }

    /// Every watch has been proven current and none is failing: what the periodic resync needs
    /// before it trusts the caches.
    pub fn watches_current(&self, resources: &[&str]) -> bool {
        let state = self.state();
        resources.iter().all(|r| {
            state
                .watches
                .get(*r)
                .is_some_and(|w| w.broken.is_none() && w.confirmed.is_some())
        })
    }

    /// The outcome of the last attempt to reach the API server (leader election does this every
    /// retry period).
    pub fn api_contact(&self, result: Result<(), String>) {
        let mut state = self.state();
        if result.is_ok() && state.role == Role::Starting {
            state.role = Role::Follower;
        }
        state.api_error = result.err();
    }

    pub fn set_caches_synced(&self, synced: bool) {
        self.state().caches_synced = synced;
    }

    /// Records the outcome of an operation or probe on `export`; logs and metrics follow changes.
    pub fn export_status(&self, export: &str, status: ExportStatus) {
        let healthy = status == ExportStatus::Healthy;
        let previous = self.state().exports.insert(export.to_owned(), status.clone());
        if previous.as_ref() != Some(&status) {
            match &status {
                ExportStatus::Healthy => tracing::info!(export, "export answering"),
                ExportStatus::Failing(why) => tracing::warn!(export, reason = %why, "export failing"),
            }
        }
        self.inner.metrics.set_export_healthy(export, healthy);
    }

    pub fn readiness(&self) -> Vec<Check> {
        readiness(&self.state(), Instant::now(), &self.inner.bounds)
    }
}

fn watch_record<'a>(state: &'a mut State, resource: &str) -> &'a mut WatchRecord {
    state.watches.entry(resource.to_owned()).or_insert(WatchRecord {
        confirmed: None,
        broken: None,
    })
}

/// Ticks the heartbeat until the process ends.
pub async fn heartbeat(health: Health) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        health.beat();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(role: Role) -> State {
        State {
            role,
            api_error: None,
            caches_synced: false,
            exports: BTreeMap::new(),
            watches: BTreeMap::new(),
        }
    }

    const BOUNDS: WatchBounds = WatchBounds {
        unready_after: Duration::from_secs(60),
        unhealthy_after: Duration::from_secs(300),
    };

    fn ready_at(s: &State, now: Instant) -> bool {
        readiness(s, now, &BOUNDS).iter().all(|c| c.ok)
    }

    fn ready(s: &State) -> bool {
        ready_at(s, Instant::now())
    }

    #[test]
    fn a_follower_is_ready_once_it_reaches_the_api() {
        assert!(!ready(&state(Role::Starting)));
        assert!(ready(&state(Role::Follower)));
        let mut s = state(Role::Follower);
        s.api_error = Some("connection refused".into());
        assert!(!ready(&s));
    }

    #[test]
    fn a_leader_needs_synced_caches_and_answering_exports() {
        let mut s = state(Role::Leader);
        assert!(!ready(&s));
        s.caches_synced = true;
        assert!(ready(&s));
        s.exports.insert("a:/x".into(), ExportStatus::Healthy);
        s.exports
            .insert("b:/y".into(), ExportStatus::Failing("statvfs timed out".into()));
        let checks = readiness(&s, Instant::now(), &BOUNDS);
        assert!(!checks.iter().all(|c| c.ok));
        let text = render(&checks);
        assert!(text.contains("[+]export a:/x: answering"), "{text}");
        assert!(text.contains("[-]export b:/y: statvfs timed out"), "{text}");
        assert!(text.ends_with("not ready\n"), "{text}");
        s.exports.insert("b:/y".into(), ExportStatus::Healthy);
        assert!(ready(&s));
    }

    #[test]
    fn losing_leadership_forgets_the_caches() {
        let h = Health::new(Metrics::new());
        h.set_role(Role::Leader);
        h.set_caches_synced(true);
        assert!(h.readiness().iter().all(|c| c.ok));
        h.set_role(Role::Follower);
        h.set_role(Role::Leader);
        assert!(!h.readiness().iter().all(|c| c.ok));
    }

    #[test]
    fn liveness_follows_the_heartbeat() {
        let h = Health::new(Metrics::new());
        h.beat();
        assert!(h.alive().is_ok());
    }

    fn broken_since(t0: Instant, error: &str) -> WatchRecord {
        WatchRecord {
            confirmed: Some(t0),
            broken: Some(Broken {
                since: t0,
                error: error.into(),
            }),
        }
    }

    #[test]
    fn a_broken_watch_fails_readiness_then_liveness_at_its_bounds() {
        let t0 = Instant::now();
        let mut s = state(Role::Leader);
        s.caches_synced = true;
        s.watches
            .insert("persistentvolumes".into(), broken_since(t0, "403 Forbidden"));
        let at = |secs| t0 + Duration::from_secs(secs);

        assert!(ready_at(&s, at(60)), "retrying within the bound is still ready");
        let text = render(&readiness(&s, at(60), &BOUNDS));
        assert!(
            text.contains("[+]watch persistentvolumes: retrying for 60s: 403 Forbidden"),
            "{text}"
        );
        assert!(!ready_at(&s, at(61)));
        let text = render(&readiness(&s, at(61), &BOUNDS));
        assert!(
            text.contains("[-]watch persistentvolumes: broken for 61s: 403 Forbidden"),
            "{text}"
        );

        assert!(watches_alive(&s, at(300), &BOUNDS).is_ok());
        let why = watches_alive(&s, at(301), &BOUNDS).expect_err("past the liveness bound");
        assert!(why.contains("persistentvolumes broken for 301s"), "{why}");
        // Liveness does not depend on the role: a leader that stepped down keeps its record.
        s.role = Role::Follower;
        assert!(watches_alive(&s, at(301), &BOUNDS).is_err());
    }

    #[test]
    fn a_working_watch_reports_when_it_was_confirmed() {
        let t0 = Instant::now();
        let mut s = state(Role::Leader);
        s.caches_synced = true;
        s.watches.insert(
            "storageclasses".into(),
            WatchRecord {
                confirmed: Some(t0),
                broken: None,
            },
        );
        let later = t0 + Duration::from_secs(3600);
        assert!(ready_at(&s, later), "a quiet watch that works is ready");
        assert!(watches_alive(&s, later, &BOUNDS).is_ok());
        let text = render(&readiness(&s, t0 + Duration::from_secs(7), &BOUNDS));
        assert!(
            text.contains("[+]watch storageclasses: current (confirmed 7s ago)"),
            "{text}"
        );
    }

    #[test]
    fn the_longest_broken_watch_is_named() {
        let t0 = Instant::now();
        let mut s = state(Role::Leader);
        s.watches
            .insert("a".into(), broken_since(t0 + Duration::from_secs(30), "late"));
        s.watches.insert("b".into(), broken_since(t0, "early"));
        let now = t0 + Duration::from_secs(100);
        let (resource, age, error) = broken_watch(&s, now, Duration::from_secs(60)).expect("b is past 60 s");
        assert_eq!((resource, age.as_secs(), error), ("b", 100, "early"));
        assert!(broken_watch(&s, now, Duration::from_secs(100)).is_none());
    }

    #[test]
    fn recording_a_spell_and_forgetting_it_with_the_term() {
        let h = Health::new(Metrics::new());
        h.set_role(Role::Leader);
        assert!(h.watch_failed("persistentvolumes", "connection refused"));
        assert!(
            !h.watch_failed("persistentvolumes", "403 Forbidden"),
            "same spell"
        );
        assert!(!h.watches_current(&["persistentvolumes"]));
        let spell = h.watch_confirmed("persistentvolumes");
        assert!(spell.is_some(), "recovery reports the spell");
        assert!(h.watches_current(&["persistentvolumes"]));
        assert!(
            !h.watches_current(&["persistentvolumes", "storageclasses"]),
            "never confirmed"
        );

        h.watch_failed("persistentvolumes", "403 Forbidden");
        h.end_term(true);
        assert!(
            h.snapshot().watches["persistentvolumes"].broken.is_some(),
            "kept on step-down"
        );
        h.end_term(false);
        assert!(
            h.snapshot().watches.is_empty(),
            "forgotten when the term ends otherwise"
        );
    }
}
