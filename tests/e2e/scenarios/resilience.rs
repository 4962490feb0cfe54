//! Leader election and crashes at random moments: the provisioner must converge with no duplicate
//! PV, no orphan directory and no lost data. (API server restarts and outages: `watches`.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::fixture::{Env, WAIT, entries};
use crate::support::{E2eTrial, ManagedChild, poll_until, trial};

const LEASE: [(&str, &str); 3] = [
    ("LEADER_ELECTION_LEASE_DURATION", "10s"),
    ("LEADER_ELECTION_RENEW_DEADLINE", "6s"),
    ("LEADER_ELECTION_RETRY_PERIOD", "1s"),
];

async fn holder(env: &Env) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let name = env.provisioner.replace('/', "-");
    Ok(leases
        .get_opt(&name)
        .await?
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty()))
}

pub async fn wait_holder(env: &Env, replica: &str, deadline: Duration) -> Result<Duration> {
    let start = Instant::now();
    let prefix = format!("{replica}_");
    poll_until(&format!("{replica} to hold the lease"), deadline, || async {
        Ok(holder(env).await?.filter(|h| h.starts_with(&prefix)).map(|_| ()))
    })
    .await?;
    Ok(start.elapsed())
}

/// A tiny deterministic generator: the seed is printed so a failing run can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Kills the provisioner with SIGKILL at random moments and restarts it each time. The gaps are
/// short (a restart lists, provisions a few claims and is killed again), so kills land in every
/// phase: start-up, mkdir, rename into place, PV create, staging cleanup, archive, delete.
async fn chaos(env: &Env, mut current: ManagedChild, rng: &mut Lcg, kills: usize) -> Result<ManagedChild> {
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(20 + rng.next(400))).await;
        current.kill9();
        current
            .wait_exit_async(Duration::from_secs(10))
            .await
            .context("killed provisioner did not exit")?;
        current = env.start(&[("ENABLE_LEADER_ELECTION", "false")])?;
    }
    Ok(current)
}

pub fn trials() -> Vec<E2eTrial> {
    vec![
        trial("only_the_leader_acts_and_failover_is_prompt", |t| async move {
            let env = Env::new(&t, "leader").await?;
            let one = env.start(&LEASE)?;
            wait_holder(&env, "replica-1", WAIT).await?;
            let two = env.start(&LEASE)?;
            let class = env.class("nfs", &[], json!({})).await?;
            env.claim("first", Some(&class), json!({})).await?;
            env.wait_bound("first").await?;
            ensure!(
                one.log_tail(500).contains("provisioned"),
                "the leader did not provision"
            );
            ensure!(!two.log_tail(500).contains("provisioned"), "the follower acted");

            // kill -9: the follower takes over once the lease expires (10 s), not later.
            one.kill9();
            let took = wait_holder(&env, "replica-2", Duration::from_secs(20)).await?;
            ensure!(
                took <= Duration::from_secs(10 + 1 + 3),
                "takeover after kill -9 took {took:?}"
            );
            env.claim("second", Some(&class), json!({})).await?;
            env.wait_bound("second").await?;

            // SIGTERM: the leader releases the lease, so the next one leads at once.
            let three = env.start(&LEASE)?;
            tokio::time::timeout(WAIT, async {
                while !three.log_tail(200).contains("lease held by another replica") {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .context("third replica never campaigned")?;
            two.terminate()?;
            let status = two
                .wait_exit_async(Duration::from_secs(20))
                .await
                .context("leader did not exit on SIGTERM")?;
            ensure!(status.success(), "leader exited with {status}");
            let took = wait_holder(&env, "replica-3", Duration::from_secs(10)).await?;
            ensure!(
                took <= Duration::from_millis(3500),
                "handover after SIGTERM took {took:?}"
            );
            env.claim("third", Some(&class), json!({})).await?;
            env.wait_bound("third").await?;
            Ok(())
        }),
        trial(
            "kill_9_at_random_moments_converges_without_duplicates_or_orphans",
            |t| async move {
                let env = Env::new(&t, "crash").await?;
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos() as u64;
                eprintln!("crash trial seed: {seed}");
                let mut rng = Lcg(seed);
                let archive = env.class("archive", &[], json!({})).await?;
                let delete = env.class("delete", &[("onDelete", "delete")], json!({})).await?;
                let names: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
                // What a probe killed between its mkdir and rmdir leaves, whether or not the
                // chaos below kills one there: the leader's sweep must clear it.
                std::fs::create_dir_all(env.export.join(".nfs-subdir-provisioner/.probe-1-0"))?;
                let p = env.start(&[("ENABLE_LEADER_ELECTION", "false")])?;

                let create = async {
                    for (i, name) in names.iter().enumerate() {
                        let class = if i % 2 == 0 { &archive } else { &delete };
                        env.claim(name, Some(class), json!({})).await?;
                        if i % 5 == 4 {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                        }
                    }
                    anyhow::Ok(())
                };
                let (created, p) = tokio::join!(create, chaos(&env, p, &mut rng, 15));
                created?;
                let _p = p?;
                let mut dirs = std::collections::BTreeMap::new();
                let mut volumes = Vec::new();
                for name in &names {
                    let pv = env.wait_bound(name).await?;
                    let uid = env.claims().get(name).await?.uid().unwrap_or_default();
                    ensure!(
                        pv.name_any() == format!("pvc-{uid}"),
                        "{name} bound to {}",
                        pv.name_any()
                    );
                    let dir = env.dir_of(&pv)?;
                    std::fs::write(dir.join("data.txt"), name)?;
                    dirs.insert(
                        name.clone(),
                        dir.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                    );
                    volumes.push(pv.name_any());
                }
                let ours = |pv: &k8s_openapi::api::core::v1::PersistentVolume| {
                    pv.annotations().get("pv.kubernetes.io/provisioned-by") == Some(&env.provisioner)
                };
                let pvs = env.volumes().list(&ListParams::default()).await?;
                ensure!(
                    pvs.items.iter().filter(|pv| ours(pv)).count() == 50,
                    "duplicate or missing PVs"
                );
                let made: BTreeSet<String> = dirs.values().cloned().collect();
                ensure!(
                    env.entries()? == made,
                    "orphan directories: {:?}",
                    env.entries()?.difference(&made).collect::<Vec<_>>()
                );
                let staging = env.export.join(".nfs-subdir-provisioner");
                poll_until("staging records to be cleared", WAIT, || async {
                    Ok((!staging.exists() || entries(&staging)?.is_empty()).then_some(()))
                })
                .await?;

                // Release all 50 while crashing again.
                let release = async {
                    for name in &names {
                        env.delete_claim(name).await?;
                    }
                    anyhow::Ok(())
                };
                let p = env.start(&[("ENABLE_LEADER_ELECTION", "false")])?;
                drop(_p);
                let (released, p) = tokio::join!(release, chaos(&env, p, &mut rng, 15));
                released?;
                let _p = p?;
                for pv in &volumes {
                    env.wait_pv_gone(pv).await?;
                }
                let mut expected = BTreeSet::new();
                for (i, name) in names.iter().enumerate() {
                    if i % 2 == 0 {
                        let archived = format!("archived-{}", dirs[name]);
                        let data = std::fs::read_to_string(env.export.join(&archived).join("data.txt"))
                            .with_context(|| format!("archive of {name} lost"))?;
                        ensure!(data == *name, "archive of {name} holds {data}");
                        expected.insert(archived);
                    }
                }
                ensure!(
                    env.entries()? == expected,
                    "after release: {:?}",
                    env.entries()?.symmetric_difference(&expected).collect::<Vec<_>>()
                );
                Ok(())
            },
        )
        .with_timeout(Duration::from_secs(600)),
    ]
}
