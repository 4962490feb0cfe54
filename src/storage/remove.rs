//! Removal as a visit of the tree walker: every non-directory is unlinked as itself (a symlink
//! is removed, never followed), every directory removed once it is empty; what was swapped meanwhile
//! is removed as what it is now.

use super::error::{Refusal, StorageFailure, StorageResult};
use super::transport::{Kind, Stat, Transport, Unlinked, at};
use super::walker::{Left, Ops, Step, Visit};

const OP_UNLINK: &str = "unlink";
const OP_RMDIR: &str = "remove directory";

/// The removal visitor.
pub struct Remove;

fn unexpected(op: &'static str, path: &str, answer: Unlinked) -> StorageFailure {
    let path = path.to_owned();
    match answer {
        Unlinked::NotEmpty => Refusal::KeepsFilling { op, path }.into(),
        _ => Refusal::NotADirectory { op, path }.into(),
    }
}

impl<T: Transport> Visit<T> for Remove {
    type State = ();
    const STAT: bool = false;

    async fn enter(&self, _: &Ops<T>, _: &(), _: &[u8], _: &str, _: &Stat) -> StorageResult<Option<()>> {
        Ok(Some(()))
    }

    async fn entry(
        &self,
        ops: &Ops<T>,
        dir: &T::Dir,
        _: &(),
        name: &[u8],
        path: &str,
        _: Option<&Stat>,
    ) -> StorageResult<Step> {
        match ops
            .run(ops.t().remove(dir, name, Kind::Other, at(OP_UNLINK, path)))
            .await?
        {
            Unlinked::Done => Ok(Step::Done),
            Unlinked::Missing => Ok(Step::Gone),
            Unlinked::IsDir => Ok(Step::IsDir),
            other => Err(unexpected(OP_UNLINK, path, other)),
        }
    }

    async fn leave(
        &self,
        ops: &Ops<T>,
        parent_dir: &T::Dir,
        _: &(),
        name: &[u8],
        path: &str,
        _: &(),
    ) -> StorageResult<Left> {
        let t = ops.t();
        match ops
            .run(t.remove(parent_dir, name, Kind::Dir, at(OP_RMDIR, path)))
            .await?
        {
            Unlinked::Done => Ok(Left::Done),
            Unlinked::Missing => Ok(Left::Gone),
            Unlinked::NotEmpty => Ok(Left::NotEmpty),
            // Swapped for a non-directory since it was opened: remove that.
            Unlinked::NotDir => match ops
                .run(t.remove(parent_dir, name, Kind::Other, at(OP_UNLINK, path)))
                .await?
            {
                Unlinked::Done => Ok(Left::Done),
                Unlinked::Missing => Ok(Left::Gone),
                other => Err(unexpected(OP_RMDIR, path, other)),
            },
            other => Err(unexpected(OP_RMDIR, path, other)),
        }
    }

    async fn climb(&self, _: &Ops<T>, _: &(), _: &str, _: &Stat) -> StorageResult<()> {
        Ok(())
    }
}
