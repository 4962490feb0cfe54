//! What the probes report. Liveness: the async runtime still runs timers (a heartbeat task ticks).
//! Readiness: a follower is ready once it reaches the API server (standing by is its job, and an
//! unready follower would stall rollouts); the leader is ready once its caches are synced and every
//! export it serves answers. The verdict is a pure function of [`State`]; the shell only records.

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

#[derive(Clone, Debug)]
pub struct State {
    pub role: Role,
    pub api_error: Option<String>,
    pub caches_synced: bool,
    pub exports: BTreeMap<String, ExportStatus>,
}

/// One line of the probe's answer, as kube-apiserver's own probes print them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The readiness checks for `state`; ready when all pass.
pub fn readiness(state: &State) -> Vec<Check> {
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
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Health {
            inner: Arc::new(Inner {
                started: Instant::now(),
                heartbeat: AtomicU64::new(0),
                state: Mutex::new(State {
                    role: Role::Starting,
                    api_error: None,
                    caches_synced: false,
                    exports: BTreeMap::new(),
                }),
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
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

    /// Liveness: the heartbeat task ran recently.
    pub fn alive(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.inner.heartbeat.load(Ordering::Relaxed));
        let age = self.inner.started.elapsed().saturating_sub(last);
        if age <= HEARTBEAT_STALE {
            Ok(())
        } else {
            Err(format!(
                "event loop stalled: last heartbeat {}s ago",
                age.as_secs()
            ))
        }
    }

    pub fn set_role(&self, role: Role) {
        let mut state = self.state();
        state.role = role;
        if role != Role::Leader {
            state.caches_synced = false;
        }
        self.inner.metrics.set_leader(role == Role::Leader);
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
        readiness(&self.state())
    }
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
        }
    }

    fn ready(s: &State) -> bool {
        readiness(s).iter().all(|c| c.ok)
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
        let checks = readiness(&s);
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
}
