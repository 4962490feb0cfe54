//! Directories on exports: one volume protocol written once over a small transport interface,
//! with one implementation per way of reaching an export.
//!
//! ```text
//!   exports::Storage ── deadlines, health ──► protocol::Volumes<T> ── create (staging record,
//!        ▲                                        │                    adoption), finish, sweep,
//!   exports::Exports (one Storage per export)     │ walker: delete     archive, delete, capacity
//!                                                 ▼
//!                               transport::Transport (lookup, mkdir, rename without replacing,
//!                                 record files, read a directory, remove, statfs)
//!                                   ├─ posix::PosixTransport: the export mounted at NFS_MOUNT_PATH
//!                                   └─ nfs3::Nfs3Transport: our userspace NFSv3 client, no mount
//! ```
//!
//! The protocol's decisions about staging records are pure ([`crate::core::staging`]); what each
//! transport does differently (NFS's replacing RENAME, resent requests, fd-relative POSIX calls)
//! stays inside it. Errors: [`error::Refusal`] for what the protocol refuses, whichever transport
//! carried it, and each transport's own failures wrapped in [`StorageFailure`].

pub mod error;
pub mod exports;
pub mod nfs3;
pub mod posix;
pub mod protocol;
pub mod transport;
pub mod walker;

#[cfg(test)]
mod faults;

pub use crate::core::staging::Existing;
pub use error::{Refusal, StorageFailure};
pub use exports::{Exports, Limits, Storage};
pub use protocol::{Archived, Backend, Created, Removed, Volumes};
pub use transport::Capacity;
