//! What NFS lacks and both NFS transports ([`super::nfs3`], [`super::nfs4`]) make up for the same
//! way, written once over the few requests each sends its own way ([`NfsRequests`]):
//! * a rename that never replaces: RENAME replaces an empty directory in v3 and v4 alike and has
//!   no flag against it, so the target is first claimed with an exclusive MKDIR of an empty
//!   mode-000 directory, and the RENAME then replaces only that claim;
//! * setuid and setgid that survive a change of owner: the owner goes first, in a SETATTR of
//!   its own, then the mode (a server clears those bits on a chown, as a kernel does);
//! * attributes of a symlink, which cannot be opened without following it: found by name;
//! * a root-squashing export told apart from other refusals of an owner: we ask as uid 0, so a
//!   directory we made that belongs to someone else says the server squashed us.
//!
//! A request sent again (v3: on a new connection; v4: on a new session) may have run the first
//! time: an EXIST from a claim, or a NOENT from a rename whose target now holds the source, is then
//! read as that first run having succeeded.

use std::future::Future;

use super::error::{StorageFailure, StorageResult};
use super::transport::{At, Attrs, Move, Owner, Renamed, Target};

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
enum SetAnswer {
    Done,
    /// The server refused the owner; nothing was set. `error`: its answer, as the transport
    /// reports it.
    OwnerRefused {
        why: OwnerRefusal,
        error: StorageFailure,
    },
}

/// How a server refused an owner, in the terms v3 and v4 share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRefusal {
    /// PERM: we may not choose owners (root squashed, or an id-mapping server).
    NotPermitted,
    /// INVAL: the server does not take this owner.
    Invalid,
    /// ACCES: access denied, which a squashed root also gets where it may not write.
    AccessDenied,
}

/// The requests the shared steps are written over.
pub trait NfsRequests: Send + Sync {
    type Node: Send + Sync;
    type File: Send + Sync;

    fn file_node(file: &Self::File) -> &Self::Node;
    /// Its owner, as the server last reported it: (uid, gid).
    fn owner(node: &Self::Node) -> (u32, u32);
    /// The transport's NOENT for `at`.
    fn not_found(at: At<'_>) -> StorageFailure;

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
    ) -> impl Future<Output = StorageResult<()>> + Send;
    /// The refusal of an owner that `failure` (of a SETATTR) is: PERM, INVAL or ACCES.
    fn owner_refusal(failure: &StorageFailure) -> Option<OwnerRefusal>;
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

/// Sets `attrs` on `target` (a symlink's: no mode or size): one SETATTR, or two when setuid or
/// setgid bits must survive the owner change; an owner the server refuses is reported and the rest
/// set without it.
pub async fn set_attrs<R: NfsRequests>(
    r: &R,
    target: Target<'_, R::Node, R::File>,
    attrs: &Attrs,
    at: At<'_>,
) -> StorageResult<Owner> {
    let mut attrs = *attrs;
    let looked_up;
    let node = match target {
        Target::Dir(node) => node,
        Target::File(file) => R::file_node(file),
        Target::Link(dir, name) => {
            looked_up = r.look_up(dir, name, at).await?.ok_or_else(|| R::not_found(at))?;
            attrs.mode = None;
            attrs.size = None;
            &looked_up
        }
    };
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
        match set_owner_once(r, node, &first, at).await? {
            SetAnswer::Done if !special_bits => return Ok(Owner::Kept),
            SetAnswer::Done => {}
            SetAnswer::OwnerRefused {
                why: OwnerRefusal::AccessDenied,
                error,
            } => return Err(error),
            SetAnswer::OwnerRefused { .. } => owner = Owner::Refused,
        }
    }
    if attrs.mode.is_some() || attrs.size.is_some() || attrs.times.is_some() {
        r.set_once(node, &attrs, false, at).await?;
    }
    Ok(owner)
}

/// Gives `dir`, a directory we made, the owner `uid`/`gid`. `best_effort`: a server that does not
/// let us choose owners is no error. Otherwise a refusal on a directory that came out belonging to
/// someone else is reported as the export squashing root, with what to change.
pub async fn chown<R: NfsRequests>(
    r: &R,
    dir: &R::Node,
    uid: Option<u32>,
    gid: Option<u32>,
    best_effort: bool,
    at: At<'_>,
) -> StorageResult<()> {
    let owner = Attrs {
        uid,
        gid,
        ..Attrs::default()
    };
    let (why, error) = match set_owner_once(r, dir, &owner, at).await? {
        SetAnswer::Done => return Ok(()),
        SetAnswer::OwnerRefused { why, error } => (why, error),
    };
    let (anon_uid, anon_gid) = R::owner(dir);
    match refused_chown(why, anon_uid, best_effort) {
        RefusedChown::Ignored => Ok(()),
        RefusedChown::Squashed => Err(StorageFailure::RootSquashed {
            answer: Box::new(error),
            anon_uid,
            anon_gid,
        }),
        RefusedChown::Failed => Err(error),
    }
}

/// What a refused chown of a directory we made amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefusedChown {
    /// Best effort, and the server merely does not let us choose owners.
    Ignored,
    /// We asked as uid 0 and the directory came out belonging to `dir_uid`: root is squashed.
    Squashed,
    Failed,
}

fn refused_chown(why: OwnerRefusal, dir_uid: u32, best_effort: bool) -> RefusedChown {
    match why {
        OwnerRefusal::NotPermitted | OwnerRefusal::Invalid if best_effort => RefusedChown::Ignored,
        OwnerRefusal::NotPermitted | OwnerRefusal::AccessDenied if dir_uid != 0 => RefusedChown::Squashed,
        _ => RefusedChown::Failed,
    }
}

/// One SETATTR of `attrs` with their owner, a refusal of the owner told apart.
async fn set_owner_once<R: NfsRequests>(
    r: &R,
    node: &R::Node,
    attrs: &Attrs,
    at: At<'_>,
) -> StorageResult<SetAnswer> {
    match r.set_once(node, attrs, true, at).await {
        Ok(()) => Ok(SetAnswer::Done),
        Err(error) => match R::owner_refusal(&error) {
            Some(why) => Ok(SetAnswer::OwnerRefused { why, error }),
            None => Err(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_chown_is_root_squash_only_where_the_directory_we_made_is_someone_elses() {
        use OwnerRefusal::{AccessDenied, Invalid, NotPermitted};
        use RefusedChown::{Failed, Ignored, Squashed};
        let cases = [
            // (why, owner of the directory we made, best effort) → outcome
            (NotPermitted, 65534, false, Squashed),
            (AccessDenied, 65534, false, Squashed),
            (Invalid, 65534, false, Failed),
            (NotPermitted, 0, false, Failed),
            (AccessDenied, 0, false, Failed),
            (NotPermitted, 65534, true, Ignored),
            (Invalid, 0, true, Ignored),
            // Access denied is no refusal to choose owners: not ignored even at best effort.
            (AccessDenied, 65534, true, Squashed),
            (AccessDenied, 0, true, Failed),
        ];
        for (why, uid, best_effort, want) in cases {
            assert_eq!(
                refused_chown(why, uid, best_effort),
                want,
                "{why:?} uid {uid} best effort {best_effort}"
            );
        }
    }
}
