//! nfs-subdir-provisioner: a Kubernetes dynamic provisioner that turns an NFS export into
//! PersistentVolumes, one directory per claim, and a drop-in replacement for
//! kubernetes-sigs/nfs-subdir-external-provisioner.
//!
//! The crate is a functional core with an imperative shell:
//!
//! ```text
//! main.rs ─► run (tasks, shutdown, leadership terms)
//!              ├─► controller::{claims, volumes}   load → decide → execute → report
//!              │      ├─► watch (list-and-watch loops behind the caches: recovery, freshness)
//!              │      ├─► core::{claim, volume, pv, params, naming, events}   pure decisions
//!              │      ├─► storage (directory operations on the export, off the async runtime)
//!              │      └─► k8s (API effects: AlreadyExists / NotFound are success)
//!              ├─► lease (Lease-based leader election; core::lease decides; steps down on stale watches)
//!              └─► http (/healthz, /readyz, /metrics from health and metrics)
//! check (the preflight `nfs-subdir-provisioner check`: API, RBAC, exports, classes)
//! operator (`volumes` and `prune-archives`: the operator's view; core::inventory decides)
//! ```
#![forbid(unsafe_code)]

pub mod check;
pub mod config;
pub mod controller;
pub mod core;
pub mod health;
pub mod http;
pub mod k8s;
pub mod lease;
pub mod metrics;
pub mod operator;
pub mod run;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod watch;
