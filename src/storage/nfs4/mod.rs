//! NFSv4.1 without a mount (issue 19, in progress): the third transport behind
//! [`super::transport::Transport`] ([`Nfs4Transport`]), over a pool of sessions ([`pool`],
//! [`session`]) speaking COMPOUNDs ([`compound`], [`attrs`], [`status`], [`xdr`]). Every
//! scenario of the storage conformance suite passes over it against nfs-ganesha. Not yet: a
//! class's `vers=4.1` choosing it, `check` reporting the version, the end-to-end trials and the
//! benchmarks; the plan is in `docs/design/nfsv4.1-transport.md`.

pub mod attrs;
pub mod compound;
mod error;
pub mod pool;
pub mod session;
pub mod status;
mod testing;
mod transport;
pub mod xdr;

pub use error::NfsV4Error;
pub use transport::{DEFAULT_CONNECTIONS, NFS_PORT, Nfs4Transport, NfsFile, Node};
