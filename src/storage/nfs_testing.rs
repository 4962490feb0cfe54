//! Making preconditions over NFS for the test suites and benchmarks, once for both NFS transports:
//! trees of files, symlinks, special files, hard links, modes, owners and times that no volume
//! operation makes, written through the server so that its caches see them. Each transport
//! answers the few requests these are made of ([`TestRequests`]; `nfs3::testing`,
//! `nfs4::testing`), and [`Preconditions`] offers them as methods of both. The provisioner itself
//! never calls these.

use std::future::Future;

use futures::StreamExt;

use super::error::{Refusal, StorageResult};
use super::nfs_emulation::NfsRequests;
use super::transport::{At, Attrs, Kind, Made, Stat, Time, Transport, at};

/// What the preconditions are made of, besides the transport's own primitives.
pub trait TestRequests: Transport + NfsRequests<Node = <Self as Transport>::Dir> {
    /// `name` in `dir`, whatever it is (not following a symlink).
    fn node(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<Option<Self::Dir>>> + Send;
    /// A new regular file of `mode` holding `content`; `false`: the name was taken.
    fn create(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        mode: u32,
        content: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<bool>> + Send;
    /// A FIFO, or a socket.
    fn mknod(
        &self,
        dir: &Self::Dir,
        name: &[u8],
        socket: bool,
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<()>> + Send;
    /// `name` in `dir` as a further name of `file`.
    fn link(
        &self,
        file: &Self::Dir,
        dir: &Self::Dir,
        name: &[u8],
        at: At<'_>,
    ) -> impl Future<Output = StorageResult<()>> + Send;
    fn stat_of(node: &Self::Dir) -> Stat;
}

fn missing(op: &'static str, path: &str) -> super::error::StorageFailure {
    Refusal::Vanished {
        op,
        path: path.to_owned(),
    }
    .into()
}

/// The node at `path` (`None`: something on the way is missing).
async fn resolve<T: TestRequests>(t: &T, path: &[&str], op: &'static str) -> StorageResult<Option<T::Dir>> {
    let mut cur = t.root().await?;
    for (i, c) in path.iter().enumerate() {
        let here = path[..=i].join("/");
        match t.node(&cur, c.as_bytes(), at(op, &here)).await? {
            Some(n) => cur = n,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

async fn existing<T: TestRequests>(t: &T, path: &[&str], op: &'static str) -> StorageResult<T::Dir> {
    let full = path.join("/");
    resolve(t, path, op).await?.ok_or_else(|| missing(op, &full))
}

/// `path`'s directory (which must exist) and last name.
async fn parent_of<'p, T: TestRequests>(
    t: &T,
    path: &'p [&'p str],
    op: &'static str,
) -> StorageResult<(T::Dir, &'p str)> {
    let (leaf, dir) = path.split_last().unwrap_or((&"", &[]));
    Ok((existing(t, dir, op).await?, leaf))
}

/// Makes `path` and missing parents (mode 0755).
async fn mkdir_p<T: TestRequests>(t: &T, path: &[&str]) -> StorageResult<()> {
    let mut cur = t.root().await?;
    for (i, c) in path.iter().enumerate() {
        let here = path[..=i].join("/");
        let at = at("create directory", &here);
        cur = match t.mkdir(&cur, c.as_bytes(), 0o755, at).await? {
            Made::New(n) => n,
            Made::Exists | Made::Gone => t
                .node(&cur, c.as_bytes(), at)
                .await?
                .ok_or_else(|| missing(at.op, at.path))?,
        };
    }
    Ok(())
}

/// Creates empty regular files `names` (mode 0644) in the existing directory `dir`,
/// `concurrency` at a time.
async fn create_files<T: TestRequests>(
    t: &T,
    dir: &[&str],
    names: Vec<String>,
    concurrency: usize,
) -> StorageResult<()> {
    const OP: &str = "create file";
    let node = existing(t, dir, OP).await?;
    let dir_path = dir.join("/");
    let mut made = futures::stream::iter(names)
        .map(|name| {
            let (node, path) = (&node, format!("{dir_path}/{name}"));
            async move { t.create(node, name.as_bytes(), 0o644, b"", at(OP, &path)).await }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(result) = made.next().await {
        result?;
    }
    Ok(())
}

/// Writes a new regular file at `path` (parents must exist; a taken name is an error).
async fn write_file_at<T: TestRequests>(
    t: &T,
    path: &[&str],
    content: &[u8],
    mode: u32,
) -> StorageResult<()> {
    const OP: &str = "create file";
    let (dir, leaf) = parent_of(t, path, OP).await?;
    let full = path.join("/");
    if t.create(&dir, leaf.as_bytes(), mode, content, at(OP, &full))
        .await?
    {
        Ok(())
    } else {
        Err(Refusal::Taken { path: full }.into())
    }
}

/// Makes a symlink at `path` pointing at `target` (parents must exist).
async fn symlink<T: TestRequests>(t: &T, path: &[&str], target: &str) -> StorageResult<()> {
    const OP: &str = "create symlink";
    let (dir, leaf) = parent_of(t, path, OP).await?;
    let full = path.join("/");
    match t
        .symlink(&dir, leaf.as_bytes(), target.as_bytes(), at(OP, &full))
        .await?
    {
        Made::New(()) => Ok(()),
        Made::Exists | Made::Gone => Err(Refusal::Taken { path: full }.into()),
    }
}

/// Makes a FIFO, or a socket, at `path` (parents must exist).
async fn mknod_at<T: TestRequests>(t: &T, path: &[&str], socket: bool) -> StorageResult<()> {
    const OP: &str = "create special file";
    let (dir, leaf) = parent_of(t, path, OP).await?;
    t.mknod(&dir, leaf.as_bytes(), socket, at(OP, &path.join("/")))
        .await
}

/// Removes the non-directory at `path`.
async fn remove_at<T: TestRequests>(t: &T, path: &[&str]) -> StorageResult<()> {
    const OP: &str = "remove";
    let (dir, leaf) = parent_of(t, path, OP).await?;
    t.remove(&dir, leaf.as_bytes(), Kind::Other, at(OP, &path.join("/")))
        .await
        .map(drop)
}

/// Makes `path` a further name of the file at `existing` (parents must exist).
async fn link_at<T: TestRequests>(t: &T, existing_path: &[&str], path: &[&str]) -> StorageResult<()> {
    const OP: &str = "create hard link";
    let file = existing(t, existing_path, OP).await?;
    let (dir, leaf) = parent_of(t, path, OP).await?;
    t.link(&file, &dir, leaf.as_bytes(), at(OP, &path.join("/")))
        .await
}

/// Sets `attrs` (owner included) on the node at `path`.
async fn set_at<T: TestRequests>(t: &T, path: &[&str], attrs: Attrs) -> StorageResult<()> {
    const OP: &str = "change attributes of";
    let node = existing(t, path, OP).await?;
    let full = path.join("/");
    t.set_once(&node, &attrs, true, at(OP, &full)).await
}

/// Access and modification times, seconds and nanoseconds.
fn times(atime: (u32, u32), mtime: (u32, u32)) -> Attrs {
    let time = |(seconds, nanos): (u32, u32)| Time {
        seconds: i64::from(seconds),
        nanos,
    };
    Attrs {
        times: Some((time(atime), time(mtime))),
        ..Attrs::default()
    }
}

fn mode(mode: u32) -> Attrs {
    Attrs {
        mode: Some(mode),
        ..Attrs::default()
    }
}

fn owner(uid: Option<u32>, gid: Option<u32>) -> Attrs {
    Attrs {
        uid,
        gid,
        ..Attrs::default()
    }
}

/// Owner and permission bits of `path` as the server reports them (`None`: missing).
async fn owner_mode<T: TestRequests>(t: &T, path: &[&str]) -> StorageResult<Option<(u32, u32, u32)>> {
    Ok(resolve(t, path, "stat").await?.map(|n| {
        let st = T::stat_of(&n);
        (st.uid, st.gid, st.mode & 0o7777)
    }))
}

/// The preconditions as methods of either NFS transport.
pub trait Preconditions: TestRequests + Sized {
    /// Makes `path` and missing parents (mode 0755).
    fn mkdir_p(&self, path: &[&str]) -> impl Future<Output = StorageResult<()>> + Send {
        mkdir_p(self, path)
    }

    /// Creates empty regular files `names` (mode 0644) in the existing directory `dir`,
    /// `concurrency` at a time.
    fn create_files(
        &self,
        dir: &[&str],
        names: Vec<String>,
        concurrency: usize,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        create_files(self, dir, names, concurrency)
    }

    /// Writes a new regular file at `path` (parents must exist; a taken name is an error).
    fn write_file_at(
        &self,
        path: &[&str],
        content: &[u8],
        mode: u32,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        write_file_at(self, path, content, mode)
    }

    /// Makes a symlink at `path` pointing at `target` (parents must exist).
    fn symlink_at(&self, path: &[&str], target: &str) -> impl Future<Output = StorageResult<()>> + Send {
        symlink(self, path, target)
    }

    /// Makes a FIFO, or a socket, at `path` (parents must exist).
    fn mknod_at(&self, path: &[&str], socket: bool) -> impl Future<Output = StorageResult<()>> + Send {
        mknod_at(self, path, socket)
    }

    /// Removes the non-directory at `path`.
    fn remove_at(&self, path: &[&str]) -> impl Future<Output = StorageResult<()>> + Send {
        remove_at(self, path)
    }

    /// Makes `path` a further name of the file at `existing` (parents must exist).
    fn link_at(&self, existing: &[&str], path: &[&str]) -> impl Future<Output = StorageResult<()>> + Send {
        link_at(self, existing, path)
    }

    /// Sets the access and modification times of `path` (seconds, nanoseconds).
    fn set_times_at(
        &self,
        path: &[&str],
        atime: (u32, u32),
        mtime: (u32, u32),
    ) -> impl Future<Output = StorageResult<()>> + Send {
        set_at(self, path, times(atime, mtime))
    }

    /// Sets the permission bits of `path`.
    fn chmod_at(&self, path: &[&str], mode: u32) -> impl Future<Output = StorageResult<()>> + Send {
        set_at(self, path, self::mode(mode))
    }

    /// Sets the owner of `path`.
    fn chown_at(
        &self,
        path: &[&str],
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> impl Future<Output = StorageResult<()>> + Send {
        set_at(self, path, owner(uid, gid))
    }

    /// Owner and permission bits of `path` as the server reports them (`None`: missing).
    fn owner_mode(
        &self,
        path: &[&str],
    ) -> impl Future<Output = StorageResult<Option<(u32, u32, u32)>>> + Send {
        owner_mode(self, path)
    }
}

impl<T: TestRequests> Preconditions for T {}
