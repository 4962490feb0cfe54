//! The periodic resync's scan of the caches (once a minute, every cached claim and PV asked
//! whether it waits for us), without the control plane: N bound claims and their PVs, as
//! kube-controller-manager and this provisioner leave them, packed as the caches hold them, then
//! scanned the two ways the controllers have done it:
//!
//! * **decoded**: every claim decoded, and its PV for the resize test, and every PV decoded for
//!   the release test (until bb2741b);
//! * **facts**: each ruled out by the facts noted when it was cached (`core::resync`), decoded only
//!   if those do not rule it out (none here: all are settled).
//!
//! `cargo bench --bench resync`; `BENCH_N` (default 10000) claims and PVs, `BENCH_RUNS` (default
//! 5) scans each way, alternating. Prints each scan's time (one thread, no I/O: its CPU time) and
//! the medians, per object and per scan.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use nfs_subdir_provisioner::controller::packed::Packed;
use nfs_subdir_provisioner::core::annotations::{FINALIZER, PROVISIONED_BY, STORAGE_PROVISIONER};
use nfs_subdir_provisioner::core::{claim, clone, resize, resync, volume};

const ME: &str = "cluster.local/nfs-subdir-external-provisioner";

fn storage(size: &str) -> Option<BTreeMap<String, Quantity>> {
    Some([("storage".to_owned(), Quantity(size.to_owned()))].into())
}

fn strings(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

/// The `i`th bound claim and its PV.
fn pair(i: usize) -> (PersistentVolumeClaim, PersistentVolume) {
    let uid = format!("00000000-0000-0000-0000-{i:012}");
    let pv_name = format!("pvc-{uid}");
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(format!("claim-{i}")),
            namespace: Some("bench".into()),
            uid: Some(uid.clone()),
            resource_version: Some(format!("{}", 100_000 + i)),
            annotations: strings(&[
                ("pv.kubernetes.io/bind-completed", "yes"),
                ("pv.kubernetes.io/bound-by-controller", "yes"),
                (STORAGE_PROVISIONER, ME),
                ("volume.beta.kubernetes.io/storage-provisioner", ME),
            ]),
            finalizers: Some(vec!["kubernetes.io/pvc-protection".into()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: storage("1Mi"),
                ..VolumeResourceRequirements::default()
            }),
            storage_class_name: Some("nfs-client".into()),
            volume_mode: Some("Filesystem".into()),
            volume_name: Some(pv_name.clone()),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: Some(PersistentVolumeClaimStatus {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            capacity: storage("1Mi"),
            phase: Some("Bound".into()),
            ..PersistentVolumeClaimStatus::default()
        }),
    };
    let pv = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            uid: Some(format!("11111111-0000-0000-0000-{i:012}")),
            resource_version: Some(format!("{}", 200_000 + i)),
            annotations: strings(&[
                (PROVISIONED_BY, ME),
                ("pv.kubernetes.io/bound-by-controller", "yes"),
            ]),
            finalizers: Some(vec!["kubernetes.io/pv-protection".into(), FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            capacity: storage("1Mi"),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: Some(format!("claim-{i}")),
                namespace: Some("bench".into()),
                resource_version: Some(format!("{}", 100_000 + i)),
                uid: Some(uid),
                ..ObjectReference::default()
            }),
            nfs: Some(NFSVolumeSource {
                path: format!("/export/bench-claim-{i}-{pv_name}"),
                server: "10.0.0.1".into(),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some("nfs-client".into()),
            volume_mode: Some("Filesystem".into()),
            ..PersistentVolumeSpec::default()
        }),
        status: Some(PersistentVolumeStatus {
            phase: Some("Bound".into()),
            ..PersistentVolumeStatus::default()
        }),
    };
    (claim, pv)
}

struct Caches {
    claims: Vec<Packed<PersistentVolumeClaim>>,
    pvs: std::collections::HashMap<String, Packed<PersistentVolume>>,
}

/// How many claims and PVs wait, every one decoded (the full tests, as the controllers ask them).
fn scan_decoded(c: &Caches) -> usize {
    let claims = c
        .claims
        .iter()
        .filter(|packed| {
            let claim = packed.unpack();
            let own = claim::pv_name(&claim).and_then(|name| c.pvs.get(&name));
            let named = resize::volume_name(&claim)
                .and_then(|name| c.pvs.get(name))
                .map(Packed::unpack);
            claim::awaits_provisioning(&claim, ME, own.is_some())
                || resize::wanted(&claim, named.as_ref(), ME)
                || clone::is_protected(&claim)
        })
        .count();
    let pvs = c
        .pvs
        .values()
        .filter(|pv| volume::awaits_release(&pv.unpack(), ME))
        .count();
    claims + pvs
}

/// The same from the facts, decoding only what they do not rule out.
fn scan_facts(c: &Caches) -> usize {
    let claims = c
        .claims
        .iter()
        .filter(|packed| {
            let own = packed
                .uid()
                .and_then(|uid| claim::pv_name_of_uid(&uid))
                .and_then(|name| c.pvs.get(&name));
            resync::claim_may_wait(packed.facts(), own.map(Packed::facts))
        })
        .count();
    let pvs = c
        .pvs
        .values()
        .filter(|pv| resync::volume_may_wait(pv.facts()) && volume::awaits_release(&pv.unpack(), ME))
        .count();
    claims + pvs
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let n: usize = common::env_number("BENCH_N", 10_000)?;
    let runs: usize = common::env_number("BENCH_RUNS", 5)?;
    ensure!(n > 0 && runs > 0, "BENCH_N and BENCH_RUNS must be at least 1");
    let mut caches = Caches {
        claims: Vec::with_capacity(n),
        pvs: std::collections::HashMap::with_capacity(n),
    };
    for i in 0..n {
        let (claim, pv) = pair(i);
        caches.claims.push(Packed::pack(claim));
        caches.pvs.insert(pv.name_any(), Packed::pack(pv));
    }
    println!("resync: {n} bound claims and their PVs, {runs} scans each way");
    println!("load before: {}", common::loadavg());
    let (mut decoded, mut facts) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let started = Instant::now();
        let waiting = scan_decoded(&caches);
        let d = started.elapsed().as_secs_f64();
        ensure!(waiting == 0, "decoded: {waiting} waiting");
        let started = Instant::now();
        let waiting = scan_facts(&caches);
        let f = started.elapsed().as_secs_f64();
        ensure!(waiting == 0, "facts: {waiting} waiting");
        println!("scan {run}: decoded {:.1} ms, facts {:.2} ms", d * 1e3, f * 1e3);
        decoded.push(d);
        facts.push(f);
    }
    println!("load after: {}", common::loadavg());
    for (how, times) in [("decoded", decoded), ("facts", facts)] {
        let m = median(times);
        println!(
            "median {how}: {:.2} ms per scan, {:.3} µs per claim and its PV",
            m * 1e3,
            m * 1e6 / n as f64
        );
    }
    Ok(())
}
