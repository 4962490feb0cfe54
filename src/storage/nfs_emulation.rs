//! What NFS lacks and both NFS transports ([`super::nfs3`], [`super::nfs4`]) make up for the same
//! way, written once over the few requests each sends its own way ([`NfsRequests`]):
//! * a rename that never replaces: RENAME replaces an empty directory in v3 and v4 alike and has
//!   no flag against it, so the target is first claimed with an exclusive MKDIR of an empty
//!   mode-000 directory, and the RENAME then replaces only that claim;
//! * setuid and setgid that survive a change of owner: the owner goes first, in a SETATTR of
//!   its own, then the mode (a server clears those bits on a chown, as a kernel does).
//!
//! A request sent again (v3: on a new connection; v4: on a new session) may have run the first
//! time: an EXIST from a claim, or a NOENT from a rename whose target now holds the source, is then
//! read as that first run having succeeded.

use std::future::Future;

use super::error::StorageResult;
use super::transport::{At, Attrs, Move, Owner, Renamed};

/// What an exclusive MKDIR of a claim found.
pub enum Claimed {
    New,
    /// Something is at the name; `resent`: the MKDIR was sent more than once.
    Exists {
        resent: bool,
    },
}

/// What one RENAME did.
pub enum RenameAnswer {
    Done,
    /// NOENT; `resent`: the RENAME was sent more than once.
    SourceMissing {
        resent: bool,
    },
    /// The target is a directory that is not empty, or of another type.
    Taken,
}

/// What one SETATTR that sets an owner did.
pub enum SetAnswer {
    Done,
    /// The server does not let us choose owners (root squashed); nothing was set.
    OwnerRefused,
}

/// The requests the shared steps are written over.
pub trait NfsRequests: Send + Sync {
    type Node: Send + Sync;

    /// `name` in `dir`, not following a symlink.
    fn look_up(
        &self,
        dir: &Self::Node,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Option<Self::Node>>> + Send;
    /// Whether `node` is an empty-looking claim: a directory of mode 000.
    fn is_claim(node: &Self::Node) -> bool;
    /// Its inode number (fileid).
    fn file_id(node: &Self::Node) -> u64;
    /// An exclusive MKDIR of `name`, mode 000.
    fn make_claim(
        &self,
        dir: &Self::Node,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Claimed>> + Send;
    /// Removes the claim `name` if it is still an empty directory; failures are ignored.
    fn drop_claim(&self, dir: &Self::Node, name: &[u8], at: At<'_>) -> impl Future<Output = ()> + Send;
    fn rename_once(
        &self,
        m: Move<'_, Self::Node>,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<RenameAnswer>> + Send;
    /// One SETATTR of `attrs`, their owner included only if `with_owner`.
    fn set_once(
        &self,
        node: &Self::Node,
        attrs: &Attrs,
        with_owner: bool,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<SetAnswer>> + Send;
}

/// Renames `from` (inode `from_id`) to `to` unless `to` exists; `reuse_claim`: an empty mode-000
/// directory at `to` is the caller's own claim and may be replaced.
pub async fn rename_noreplace<R: NfsRequests>(
    r: &R,
    m: Move<'_, R::Node>,
    from_id: u64,
    reuse_claim: bool,
    at: At<'_>,
) -> StorageResult<Renamed> {
    let fresh = match r.make_claim(m.to_dir, m.to, at).await? {
        Claimed::New => true,
        Claimed::Exists { resent } => match r.look_up(m.to_dir, m.to, at).await? {
            Some(n) if (reuse_claim || resent) && R::is_claim(&n) => false,
            _ => return Ok(Renamed::Taken),
        },
    };
    match r.rename_once(m, at).await? {
        RenameAnswer::Done => Ok(Renamed::Done),
        RenameAnswer::SourceMissing { resent } => {
            if resent
                && let Some(n) = r.look_up(m.to_dir, m.to, at).await?
                && R::file_id(&n) == from_id
            {
                return Ok(Renamed::Done);
            }
            if fresh {
                // Fails harmlessly if something was put into it meanwhile.
                r.drop_claim(m.to_dir, m.to, at).await;
            }
            Ok(Renamed::SourceMissing)
        }
        // Something was put into our claim meanwhile (or replaced it): not ours any more.
        RenameAnswer::Taken => Ok(Renamed::Taken),
    }
}

/// Sets `attrs` on `node` (a symlink's: `link`, no mode or size): one SETATTR, or two when setuid
/// or setgid bits must survive the owner change; an owner the server refuses is reported and the
/// rest set without it.
pub async fn set_attrs<R: NfsRequests>(
    r: &R,
    node: &R::Node,
    link: bool,
    attrs: &Attrs,
    at: At<'_>,
) -> StorageResult<Owner> {
    let mut attrs = *attrs;
    if link {
        attrs.mode = None;
        attrs.size = None;
    }
    let special_bits = attrs.mode.is_some_and(|m| m & 0o6000 != 0);
    let mut owner = Owner::Kept;
    if attrs.sets_owner() {
        let first = if special_bits {
            Attrs {
                uid: attrs.uid,
                gid: attrs.gid,
                ..Attrs::default()
            }
        } else {
            attrs
        };
        match r.set_once(node, &first, true, at).await? {
            SetAnswer::Done if !special_bits => return Ok(Owner::Kept),
            SetAnswer::Done => {}
            SetAnswer::OwnerRefused => owner = Owner::Refused,
        }
    }
    if attrs.mode.is_some() || attrs.size.is_some() || attrs.times.is_some() {
        r.set_once(node, &attrs, false, at).await?;
    }
    Ok(owner)
}
