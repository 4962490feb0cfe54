//! NFSv4.1 without a mount (issue 19, in progress): the protocol's wire format so far, for the
//! third transport behind [`super::transport::Transport`]. [`compound`] encodes a COMPOUND once
//! (a resend must carry the same bytes for the server's reply cache to know it) and decodes its
//! reply into one result per operation run; [`attrs`] reads and writes file attributes with
//! numeric owners; [`status`] names `nfsstat4` values. The session, the transport itself and
//! its tests against an NFSv4-only nfs-ganesha come next; the plan is in
//! `docs/design/nfsv4.1-transport.md`.

pub mod attrs;
pub mod compound;
pub mod session;
pub mod status;
pub mod xdr;
