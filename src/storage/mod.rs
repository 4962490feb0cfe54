//! Directories on exports: one volume protocol written once over a small transport interface,
//! with one implementation per way of reaching an export.
//!
//! ```text
//!   exports::Storage ── deadlines, health ──► protocol::Volumes<T> ── create (staging record,
//!        ▲                                        │                    adoption, filled by a clone),
//!   exports::Exports (one Storage per export)     │                    finish, sweep, archive,
//!                                                 │                    delete, usage, capacity
//!                                                 ▼
//!                   walker::Walker<T, V> (list, descend by handle, bounds) with a visitor V:
//!                     remove::Remove · usage::Measure · copy::Copy (into a copy::Sink of any export)
//!                                                 ▼
//!                               transport::Transport (lookup, mkdir, rename without replacing,
//!                                 record files, read a directory, remove, statfs, file I/O,
//!                                 symlinks, attributes)
//!                                   ├─ posix::PosixTransport: the export mounted at NFS_MOUNT_PATH
//!                                   ├─ nfs3::Nfs3Transport: our userspace NFSv3 client, no mount
//!                                   └─ nfs4::Nfs4Transport: our userspace NFSv4.1 client, no mount
//!                                      (not yet chosen by any class: issue 19 in progress)
//! ```
//!
//! The protocol's decisions about staging records are pure ([`crate::core::staging`]); what each
//! transport does differently (NFS's replacing RENAME, resent requests, fd-relative POSIX calls)
//! stays inside it. Errors: [`error::Refusal`] for what the protocol refuses, whichever transport
//! carried it, and each transport's own failures wrapped in [`StorageFailure`].

pub mod copy;
pub mod error;
pub mod exports;
pub mod nfs3;
pub mod nfs4;
pub mod nfs_emulation;
pub mod nfs_testing;
pub mod posix;
pub mod protocol;
pub mod remove;
pub mod transport;
pub mod usage;
pub mod walker;

#[cfg(test)]
mod faults;

pub use crate::core::staging::Existing;
pub use copy::{Copied, Progress};
pub use error::{Refusal, StorageFailure};
pub use exports::{Exports, Limits, Storage};
pub use protocol::{Archived, Backend, Created, Fill, Listed, Listing, Removed, Volumes};
pub use transport::{Capacity, FileType, Stat, Time};
pub use usage::Usage;
pub use walker::Pace;
