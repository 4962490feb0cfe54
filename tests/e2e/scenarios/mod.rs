//! End-to-end scenarios: the provisioner binary against a real control plane, asserting both the
//! API objects and the directories on disk.

pub mod clones;
pub mod direct;
pub mod fixture;
pub mod lifecycle;
pub mod monitoring;
pub mod operations;
pub mod operator;
pub mod provisioning;
pub mod release;
pub mod resilience;
pub mod watches;

use crate::support::E2eTrial;

pub fn trials() -> Vec<E2eTrial> {
    let mut all = provisioning::trials();
    all.extend(release::trials());
    all.extend(resilience::trials());
    all.extend(operations::trials());
    all.extend(direct::trials());
    all.extend(watches::trials());
    all.extend(lifecycle::trials());
    all.extend(clones::trials());
    all.extend(monitoring::trials());
    all.extend(operator::trials());
    all
}
