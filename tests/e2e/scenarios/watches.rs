//! The watches behind the caches, when the API server restarts, goes away for a minute, or
//! refuses them: they must recover by themselves within seconds, and say so when they cannot
//! (metrics, probes, and a leader that hands its Lease to a standby).
//!
//! These trials time our part, not kube-controller-manager's: each claim's hand-over (the
//! binder's `storage-provisioner` annotation) and our PV are timestamped by one poller, and our
//! PV must follow the hand-over (or the API server's return, when the hand-over came before the
//! outage) within [`OUR_BOUND`]. The binder's own recovery (8 to 61 s after a restart, as measured
//! before these trials waited for the API server to answer the provisioner's own credentials; 0.5
//! to 2.5 s after that) gets [`BINDER_DEADLINE`] and is only reported.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use super::fixture::Env;
use super::resilience::wait_holder;
use crate::support::http::{get, sample};
use crate::support::{
    ControlPlane, E2eTrial, ManagedChild, TrialCtx, client_from_kubeconfig, poll_until, trial,
};

/// Our PV after the claim was handed to us (or after the API server answered again).
const OUR_BOUND: Duration = Duration::from_secs(5);
/// Every watch confirmed current again after the API server answers: the watch backoff (5 s at
/// most) plus a list.
const FRESH_BOUND: Duration = Duration::from_secs(15);
/// kube-controller-manager's own recovery after a restart or an outage.
const BINDER_DEADLINE: Duration = Duration::from_secs(240);
const HANDOVER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const RESOURCES: [&str; 3] = ["persistentvolumeclaims", "persistentvolumes", "storageclasses"];

/// When each claim of the Env's namespace was first seen handed over, and when its PV of ours
/// was first seen, by polling both lists every 100 ms (errors while the API server is away are
/// retried). Each is stamped when the list that showed it arrived.
struct Timeline {
    seen: Arc<Mutex<BTreeMap<String, Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    handed_over: Option<Instant>,
    pv: Option<Instant>,
}

impl Timeline {
    fn start(env: &Env) -> Timeline {
        let seen: Arc<Mutex<BTreeMap<String, Seen>>> = Arc::default();
        let claims = env.claims();
        let volumes: Api<PersistentVolume> = env.volumes();
        let (ns, provisioner) = (env.ns.clone(), env.provisioner.clone());
        let record = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                // Stamped when the answer arrives: a request sent while the API server starts up
                // is held until it is ready, and then answers with what is true by then.
                if let Ok(list) = claims.list(&ListParams::default()).await {
                    let now = Instant::now();
                    let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                    for claim in list.items {
                        if claim.annotations().get(HANDOVER) == Some(&provisioner) {
                            seen.entry(claim.name_any())
                                .or_default()
                                .handed_over
                                .get_or_insert(now);
                        }
                    }
                }
                if let Ok(list) = volumes.list(&ListParams::default()).await {
                    let now = Instant::now();
                    let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                    for pv in list.items {
                        let ours =
                            pv.annotations().get("pv.kubernetes.io/provisioned-by") == Some(&provisioner);
                        let claim = pv.spec.and_then(|s| s.claim_ref);
                        if let Some(claim) = claim.filter(|c| ours && c.namespace.as_deref() == Some(&ns)) {
                            let name = claim.name.unwrap_or_default();
                            seen.entry(name).or_default().pv.get_or_insert(now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Timeline { seen, task }
    }

    fn get(&self) -> BTreeMap<String, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the poller has seen the hand-over and the PV of every claim in `names`: the
    /// claims can be Bound a moment before its next list arrives.
    async fn seen_all(&self, names: &[String]) -> Result<BTreeMap<String, Seen>> {
        poll_until(
            "the poller to see every hand-over and PV",
            Duration::from_secs(30),
            || async {
                let seen = self.get();
                let complete = names.iter().all(|n| {
                    seen.get(n)
                        .is_some_and(|s| s.handed_over.is_some() && s.pv.is_some())
                });
                Ok(complete.then_some(seen))
            },
        )
        .await
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

async fn metrics(http: SocketAddr) -> Result<String> {
    let (code, body) = get(http, "/metrics").await?;
    ensure!(code == 200, "/metrics answered {code}");
    Ok(body)
}

fn watch_sample(body: &str, family: &str, resource: &str) -> Option<f64> {
    sample(body, &format!("{family}{{resource=\"{resource}\"}}"))
}

/// Waits until the provisioner's three watches were all confirmed after `down` (Unix seconds:
/// when the API server went away, so any later confirmation is one by the new API server);
/// returns how long after `back` the last of them was confirmed (zero if before it).
async fn watches_confirmed_since(
    http: SocketAddr,
    down: f64,
    back: f64,
    deadline: Duration,
) -> Result<Duration> {
    let latest = poll_until("every watch to be confirmed current", deadline, || async {
        let body = metrics(http).await?;
        let confirmed: Vec<f64> = RESOURCES
            .iter()
            .filter_map(|r| {
                watch_sample(
                    &body,
                    "nfs_subdir_provisioner_watch_last_confirmed_timestamp_seconds",
                    r,
                )
                .filter(|t| *t > down)
            })
            .collect();
        Ok((confirmed.len() == RESOURCES.len()).then(|| confirmed.into_iter().fold(f64::MIN, f64::max)))
    })
    .await?;
    Ok(Duration::from_secs_f64((latest - back).max(0.0)))
}

/// Waits until every watch reports `healthy` (1) or broken (0); how long that took.
async fn watches_healthy(http: SocketAddr, healthy: bool, deadline: Duration) -> Result<Duration> {
    let start = Instant::now();
    let want = f64::from(u8::from(healthy));
    poll_until(
        &format!("every watch to report healthy={want}"),
        deadline,
        || async {
            let body = metrics(http).await?;
            Ok(RESOURCES
                .iter()
                .all(|r| watch_sample(&body, "nfs_subdir_provisioner_watch_healthy", r) == Some(want))
                .then_some(()))
        },
    )
    .await?;
    Ok(start.elapsed())
}

async fn wait_all_bound(env: &Env, names: &[String], deadline: Duration) -> Result<()> {
    let claims = env.claims();
    poll_until(
        &format!("{} claims to be Bound", names.len()),
        deadline,
        || async {
            let list = claims.list(&ListParams::default()).await?;
            let bound = |c: &PersistentVolumeClaim| {
                c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
            };
            Ok(names
                .iter()
                .all(|n| list.items.iter().any(|c| c.name_any() == *n && bound(c)))
                .then_some(()))
        },
    )
    .await
}

/// Checks that each claim's PV followed its hand-over within [`OUR_BOUND`]; a hand-over seen
/// before the API server answered the provisioner again (`back`) whose PV was not seen before the
/// outage (`down`) counts from `back`. Prints our delays and the binder's, and returns the
/// largest of ours.
async fn our_delays(
    what: &str,
    timeline: &Timeline,
    names: &[String],
    down: Instant,
    back: Instant,
) -> Result<Duration> {
    let seen = timeline.seen_all(names).await?;
    let mut ours = Vec::new();
    let mut last_handover = Duration::ZERO;
    for name in names {
        let s = seen.get(name).copied().unwrap_or_default();
        let handed = s
            .handed_over
            .with_context(|| format!("{name}: no hand-over seen"))?;
        let pv = s.pv.with_context(|| format!("{name}: no PV of ours seen"))?;
        // Handed over before the API server was back (an answer can still arrive just after
        // the kill) and provisioned after it went away: the outage is not ours.
        let from = if handed < back && pv > down { back } else { handed };
        ours.push((pv.saturating_duration_since(from), name));
        if handed > back {
            last_handover = last_handover.max(handed - back);
        }
    }
    ours.sort();
    let (max, worst) = ours.last().copied().context("no claims")?;
    let at = |i: Option<Instant>| i.map(|i| format!("{:+.2?}", i.saturating_duration_since(down)));
    let s = seen.get(worst).copied().unwrap_or_default();
    eprintln!(
        "{what}: worst claim {worst}: handed over at {:?}, PV at {:?}, API server answered at {:?} (from when it went away)",
        at(s.handed_over),
        at(s.pv),
        at(Some(back))
    );
    let median = ours[ours.len() / 2].0;
    eprintln!(
        "{what}: our PV after the hand-over (seen by a 100 ms poll): median {median:.2?}, max {max:.2?} ({worst}); \
         the binder handed over its last claim {last_handover:.2?} after the API server answered"
    );
    ensure!(
        max <= OUR_BOUND,
        "{worst}: our PV came {max:.2?} after its hand-over (bound {OUR_BOUND:?})"
    );
    Ok(max)
}

/// Waits until the API server, just started again, answers the provisioner's own credentials:
/// `ready` in the harness means its bootstrap RBAC works, but the provisioner's bindings can
/// still be refused (403) for a few seconds more. Our delays count from here.
async fn back_for_us(env: &Env) -> Result<(Instant, f64)> {
    let client = client_from_kubeconfig(&env.kubeconfig).await?;
    let leases: Api<Lease> = Api::namespaced(client, &env.ns);
    let lease = env.provisioner.replace('/', "-");
    poll_until(
        "the API server to answer the provisioner's credentials",
        FRESH_BOUND,
        || async { Ok(leases.get_opt(&lease).await.ok().map(|_| ())) },
    )
    .await?;
    Ok((Instant::now(), unix_now()))
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn claims(env: &Env, class: &str, names: &[String]) -> Result<()> {
    for name in names {
        env.claim(name, Some(class), json!({})).await?;
    }
    Ok(())
}

/// The provisioner's ClusterRoleBinding, as the harness names it per namespace.
fn runner_binding(env: &Env) -> String {
    format!("nfs-subdir-provisioner-runner-{}", env.ns)
}

async fn remove_binding(cp: &ControlPlane, env: &Env) -> Result<ClusterRoleBinding> {
    let api: Api<ClusterRoleBinding> = Api::all(cp.admin_client());
    let mut binding = api.get(&runner_binding(env)).await?;
    api.delete(&runner_binding(env), &DeleteParams::default()).await?;
    binding.metadata = kube::api::ObjectMeta {
        name: binding.metadata.name,
        ..Default::default()
    };
    Ok(binding)
}

/// A provisioner with claims made just before the API server goes away (their hand-over and
/// provisioning fall into the outage or after it; none can be made while it is down).
struct Outage {
    env: Env,
    http: SocketAddr,
    _provisioner: ManagedChild,
    class: String,
    timeline: Timeline,
    before: Vec<String>,
    down: (Instant, f64),
}

impl Outage {
    async fn begin(t: &TrialCtx, cp: &ControlPlane, prefix: &str, claims_before: usize) -> Result<Outage> {
        let env = Env::on(t, cp, prefix).await?;
        let (provisioner, http) = env.start_serving(&[])?;
        let class = env.class("nfs", &[], json!({})).await?;
        let timeline = Timeline::start(&env);
        let before = names("before", claims_before);
        claims(&env, &class, &before).await?;
        Ok(Outage {
            env,
            http,
            _provisioner: provisioner,
            class,
            timeline,
            before,
            down: (Instant::now(), unix_now()),
        })
    }

    /// Once the API server is back: more claims, then every watch current within
    /// [`FRESH_BOUND`], every claim Bound within [`BINDER_DEADLINE`] with our PV within
    /// [`OUR_BOUND`] of its hand-over, and one directory per claim.
    async fn end(self, what: &str, claims_after: usize) -> Result<()> {
        let (back, back_unix) = back_for_us(&self.env).await?;
        eprintln!(
            "{what}: the API server answered {:.2?} after it went away",
            back - self.down.0
        );
        let after = names("after", claims_after);
        claims(&self.env, &self.class, &after).await?;
        let fresh = watches_confirmed_since(self.http, self.down.1, back_unix, FRESH_BOUND).await?;
        eprintln!("{what}: every watch current {fresh:.2?} after the API server answered");
        let all: Vec<String> = self.before.into_iter().chain(after).collect();
        wait_all_bound(&self.env, &all, BINDER_DEADLINE).await?;
        our_delays(what, &self.timeline, &all, self.down.0, back).await?;
        let dirs = self.env.entries()?;
        ensure!(
            dirs.len() == all.len(),
            "one directory per claim expected: {dirs:?}"
        );
        Ok(())
    }
}

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial("claims_converge_across_an_apiserver_restart", |t| async move {
            let mut cp = t.private_control_plane("restart")?;
            let outage = Outage::begin(&t, &cp, "restart", 10).await?;
            cp.restart_apiserver().await?;
            outage.end("restart trial", 10).await
        })
        .with_timeout(Duration::from_secs(420)),
        trial("claims_provision_after_a_60s_apiserver_outage", |t| async move {
            let mut cp = t.private_control_plane("outage")?;
            let outage = Outage::begin(&t, &cp, "outage", 5).await?;
            cp.stop_apiserver();
            // The outage itself, not a synchronisation.
            tokio::time::sleep(Duration::from_secs(60)).await;
            let (code, body) = get(outage.http, "/healthz").await?;
            ensure!(
                code == 200,
                "an API server outage alone must not fail liveness: {code} {body}"
            );
            cp.start_apiserver().await?;
            outage.end("outage trial", 5).await
        })
        .with_timeout(Duration::from_secs(480)),
        trial("a_watch_recovers_when_its_rbac_is_restored", |t| async move {
            let mut cp = t.private_control_plane("rbac")?;
            let env = Env::on(&t, &cp, "rbac").await?;
            let (_p, http) = env.start_serving(&[])?;
            let class = env.class("nfs", &[], json!({})).await?;
            claims(&env, &class, &names("first", 1)).await?;
            env.wait_bound("first-0").await?;

            // Without its ClusterRoleBinding, and every watch made to start over (a restart ends
            // them; an open watch is not re-authorised), every attempt is refused with 403.
            let binding = remove_binding(&cp, &env).await?;
            cp.restart_apiserver().await?;
            watches_healthy(http, false, FRESH_BOUND).await?;
            // Refused long enough for the backoff to reach its cap (6 failures: 5 s).
            poll_until(
                "six refused attempts of the claim watch",
                Duration::from_secs(60),
                || async {
                    let body = metrics(http).await?;
                    let failures = watch_sample(
                        &body,
                        "nfs_subdir_provisioner_watch_failures_total",
                        "persistentvolumeclaims",
                    );
                    Ok(failures.filter(|f| *f >= 6.0).map(|_| ()))
                },
            )
            .await?;
            let (code, body) = get(http, "/readyz").await?;
            ensure!(
                body.contains("watch persistentvolumeclaims: retrying for"),
                "/readyz ({code}) does not show the failing watch:\n{body}"
            );

            let restored = Instant::now();
            Api::<ClusterRoleBinding>::all(cp.admin_client())
                .create(&PostParams::default(), &binding)
                .await?;
            // The backoff's cap (5 s), the API server's RBAC cache and a list.
            let took = watches_healthy(http, true, Duration::from_secs(10)).await?;
            eprintln!("rbac trial: every watch working {took:.2?} after the binding was restored");

            let timeline = Timeline::start(&env);
            let second = names("second", 3);
            claims(&env, &class, &second).await?;
            wait_all_bound(&env, &second, BINDER_DEADLINE).await?;
            our_delays("rbac trial", &timeline, &second, restored, restored).await?;
            Ok(())
        })
        .with_timeout(Duration::from_secs(420)),
        trial(
            "a_leader_whose_watches_cannot_recover_hands_over",
            |t| async move {
                let mut cp = t.private_control_plane("stale")?;
                let env = Env::on(&t, &cp, "stale").await?;
                let (unready_after, unhealthy_after) = (Duration::from_secs(6), Duration::from_secs(15));
                let timings = [
                    ("LEADER_ELECTION_LEASE_DURATION", "10s"),
                    ("LEADER_ELECTION_RENEW_DEADLINE", "6s"),
                    ("LEADER_ELECTION_RETRY_PERIOD", "1s"),
                    ("WATCH_UNREADY_AFTER", "6s"),
                    ("WATCH_UNHEALTHY_AFTER", "15s"),
                ];
                let (_one, one) = env.start_serving(&timings)?;
                wait_holder(&env, "replica-1", Duration::from_secs(60)).await?;
                // The standby runs with credentials this trial leaves alone: a healthy replica.
                let admin = cp.admin_kubeconfig().display().to_string();
                let mut standby = timings.to_vec();
                standby.push(("KUBECONFIG", admin.as_str()));
                let (_two, two) = env.start_serving(&standby)?;
                poll_until("the standby to be ready", Duration::from_secs(60), || async {
                    Ok((get(two, "/readyz").await?.0 == 200).then_some(()))
                })
                .await?;

                let _binding = remove_binding(&cp, &env).await?;
                let down = Instant::now();
                cp.restart_apiserver().await?;
                let back = Instant::now();

                // The leader keeps its Lease (its Role is intact) but hears nothing: unready once
                // its watches have been broken for 6 s, counted from the first failure (the kill).
                let slack = Duration::from_secs(5);
                poll_until("the leader to fail /readyz", unready_after + slack, || async {
                    let (code, body) = get(one, "/readyz").await?;
                    Ok((code == 503 && body.contains("broken for")).then_some(()))
                })
                .await?;
                let unready = down.elapsed();
                let took = wait_holder(&env, "replica-2", unready_after + slack).await?;
                let handed = back.elapsed();
                poll_until(
                    "the old leader to fail /healthz",
                    unhealthy_after + slack,
                    || async {
                        let (code, body) = get(one, "/healthz").await?;
                        Ok((code == 503 && body.contains("broken for")).then_some(()))
                    },
                )
                .await?;
                eprintln!(
                    "stale-watch trial: after the kill, /readyz failed at {unready:.2?}, the standby led at \
                 {:.2?} (waited {took:.2?}), /healthz failed at {:.2?}",
                    handed + (back - down),
                    down.elapsed()
                );

                // And the standby provisions.
                let class = env.class("nfs", &[], json!({})).await?;
                claims(&env, &class, &names("claim", 1)).await?;
                poll_until(
                    "the claim to be Bound by the standby",
                    BINDER_DEADLINE,
                    || async {
                        let c = env.claims().get("claim-0").await?;
                        Ok((c.status.and_then(|s| s.phase).as_deref() == Some("Bound")).then_some(()))
                    },
                )
                .await?;
                Ok(())
            },
        )
        .with_timeout(Duration::from_secs(420)),
    ]
}
