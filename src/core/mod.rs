//! The functional core: every decision the provisioner makes, as pure functions over plain data
//! that return enums. Nothing here performs I/O (a test in this module enforces it).
//!
//! ```text
//!   PersistentVolumeClaim ──(claim::decide)──► Provision(plan) ──(pv::build)──► PersistentVolume
//!          │                     ▲                   │ naming: pathPattern → VolumePath (safe)
//!          │                     │                   ▼
//!          └── StorageClass ─ params::ClassParams    directory <export>/<VolumePath>
//!                 (server, share, mountOptions) ─ export::{Export, Access}: which export, reached how
//!
//!   PersistentVolume (Released) ──(volume::decide)──► Release { path, Archive | Delete | Retain }
//!                    (Bound)    ──(volume::decide)──► Protect | Unprotect (the finalizer)
//!   bound claim + its PV ──(resize::decide)──► Grow { to } | Finish { capacity }
//!   claim's dataSource + source claim and PV ──(clone::source)──► CloneSource { export, path }
//!   measured bytes + PV ──(usage::crossing)──► Over | Within (once per crossing)
//!   Lease record ──(lease::decide)──► Create | Acquire | Renew | Wait
//!   PVs + staging records + listings ──(inventory::classify)──► volumes, archives, orphans
//!   archive + PVs + age ──(inventory::judge)──► Remove | Keep(why)
//!   outcome ──(events)──► Kubernetes Event (reason, note) for users
//!   cached objects ──(index)──► the few a decision needs (overlapping directories, pre-bound PVs,
//!                               clones of a claim, served exports), without a scan
//! ```

pub mod annotations;
pub mod claim;
pub mod clone;
pub mod events;
pub mod export;
pub mod index;
pub mod inventory;
pub mod lease;
pub mod naming;
pub mod params;
pub mod pv;
pub mod quantity;
pub mod resize;
pub mod resync;
pub mod staging;
pub mod usage;
pub mod volume;

#[cfg(test)]
mod purity {
    /// The core must stay free of I/O so its decisions can be unit-tested as plain functions.
    #[test]
    fn core_modules_import_no_io() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for forbidden in [
                "std::fs",
                "tokio",
                "kube::Api",
                "kube::Client",
                "nix::",
                "std::net",
                "std::process",
            ] {
                assert!(!code.contains(forbidden), "{} uses {forbidden}", path.display());
            }
        }
    }
}
