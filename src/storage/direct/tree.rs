//! Concurrent recursive removal over NFS that never follows a symlink.
//!
//! * Everything is handle-based: a directory is listed by its handle (READDIRPLUS, which gives every
//!   entry's type and handle), non-directories are removed with REMOVE(dir handle, name), which removes a
//!   symlink as a link, and directories are descended by their own handle, then RMDIR(parent, name). No
//!   path is ever resolved by the server, so a symlink (at any depth, or swapped in mid-operation) cannot
//!   redirect a removal: the worst a swap can do is make an RMDIR fail with NOTDIR, after which the new
//!   entry is REMOVEd as the non-directory it now is.
//! * A directory on another filesystem (different `fsid`, e.g. a nested export) is never entered: XDEV.
//! * Concurrency: one semaphore bounds the RPCs in flight (`concurrency`; the pool bounds it further to
//!   its size). Listing is pipelined with removal: each READDIRPLUS page's files are removed while the next
//!   page is read; subdirectories are removed by their own tasks.
//! * Removing entries while paging may make the server skip or repeat entries; a repeated REMOVE answers
//!   NOENT (ignored) and a skipped one makes the RMDIR fail with NOTEMPTY, after which the directory is
//!   listed again (at most [`MAX_ROUNDS`] times).
//! * The first error stops new work; in-flight RPCs finish; what was removed stays removed, so a retry
//!   resumes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nfs3_client::nfs3_types::nfs3::{cookieverf3, nfs_fh3, nfsstat3};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::error::NfsError;
use super::proto::{NfsResult, Node, Proto, status, sub};

/// How often a directory is listed again because RMDIR found it not empty.
pub const MAX_ROUNDS: u32 = 5;

const OP_LIST: &str = "list directory";
const OP_UNLINK: &str = "unlink";
const OP_RMDIR: &str = "remove directory";

pub(crate) struct Remover {
    proto: Arc<Proto>,
    limit: Arc<Semaphore>,
    concurrency: usize,
    fsid: u64,
    removed: AtomicU64,
    stop: AtomicBool,
    error: Mutex<Option<NfsError>>,
}

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Remover {
    pub fn new(proto: Arc<Proto>, concurrency: usize, fsid: u64) -> Arc<Self> {
        Arc::new(Self {
            proto,
            limit: Arc::new(Semaphore::new(concurrency.clamp(1, 1024))),
            concurrency: concurrency.clamp(1, 1024),
            fsid,
            removed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            error: Mutex::new(None),
        })
    }

    /// Removes directory `dir` (named `name` in `parent`, shown as `path`) and everything below it.
    /// Returns the number of entries removed, including `dir`.
    pub async fn remove(
        self: &Arc<Self>,
        parent: nfs_fh3,
        name: Vec<u8>,
        dir: Node,
        path: String,
    ) -> NfsResult<u64> {
        Arc::clone(self).remove_dir(parent, name, dir, path).await;
        if let Some(e) = self.error.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(e);
        }
        Ok(self.removed.load(Ordering::Relaxed))
    }

    fn fail(&self, e: NfsError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn remove_dir(self: Arc<Self>, parent: nfs_fh3, name: Vec<u8>, dir: Node, path: String) -> BoxFut {
        Box::pin(async move {
            if let Err(e) = self.remove_dir_inner(&parent, &name, &dir, &path).await {
                self.fail(e);
            }
        })
    }

    async fn remove_dir_inner(
        self: &Arc<Self>,
        parent: &nfs_fh3,
        name: &[u8],
        dir: &Node,
        path: &str,
    ) -> NfsResult<()> {
        if dir.attr.fsid != self.fsid {
            return Err(status(OP_LIST, path, nfsstat3::NFS3ERR_XDEV));
        }
        for _round in 0..MAX_ROUNDS {
            self.empty_dir(dir, path).await?;
            if self.stopped() {
                return Ok(());
            }
            let answer = {
                let _permit = self.limit.acquire().await.map_err(|_| closed(path))?;
                self.proto.rmdir(parent, name, OP_RMDIR, path).await?
            };
            match answer.status {
                nfsstat3::NFS3_OK => {
                    self.removed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // Gone: removed by our own earlier send, or by someone else.
                nfsstat3::NFS3ERR_NOENT => {
                    if answer.resent {
                        self.removed.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                // Entries appeared or were skipped while paging: list again.
                nfsstat3::NFS3ERR_NOTEMPTY | nfsstat3::NFS3ERR_EXIST => {}
                // Swapped for a non-directory since we looked: remove that as what it is now.
                nfsstat3::NFS3ERR_NOTDIR => return self.unlink(parent, name, path).await,
                s => return Err(status(OP_RMDIR, path, s)),
            }
        }
        Err(status(OP_RMDIR, path, nfsstat3::NFS3ERR_NOTEMPTY))
    }

    /// Removes everything in `dir` (one listing pass).
    async fn empty_dir(self: &Arc<Self>, dir: &Node, path: &str) -> NfsResult<()> {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let (mut cookie, mut verf) = (0, cookieverf3::default());
        loop {
            if self.stopped() {
                break;
            }
            let (entries, next, v, eof) = {
                let _permit = self.limit.acquire().await.map_err(|_| closed(path))?;
                match self
                    .proto
                    .readdir_page(&dir.fh, cookie, verf, OP_LIST, path)
                    .await
                {
                    Ok(page) => page,
                    // The server lost our place (entries removed meanwhile): the NOTEMPTY round relists.
                    Err(e) if e.status() == Some(nfsstat3::NFS3ERR_BAD_COOKIE) => break,
                    Err(e) => return Err(e),
                }
            };
            let mut files = Vec::new();
            for e in entries {
                let child_path = sub(path, &String::from_utf8_lossy(&e.name));
                let is_dir = match &e.attr {
                    Some(a) => matches!(a.type_, nfs3_client::nfs3_types::nfs3::ftype3::NF3DIR),
                    None => match self.proto.entry_node(&dir.fh, &e, OP_LIST, &child_path).await? {
                        Some(n) => n.is_dir(),
                        None => continue,
                    },
                };
                if is_dir {
                    let Some(node) = self.proto.entry_node(&dir.fh, &e, OP_LIST, &child_path).await? else {
                        continue;
                    };
                    tasks.spawn(Arc::clone(self).remove_dir(dir.fh.clone(), e.name, node, child_path));
                } else {
                    files.push((e.name, child_path));
                }
            }
            // Files: `concurrency` workers per page, each removing its share one by one (a task per file
            // would cost a spawn and a wake-up per entry). With concurrency 1, inline.
            if self.concurrency == 1 {
                Arc::clone(self).unlink_all(dir.fh.clone(), files).await;
            } else {
                let workers = self.concurrency.min(files.len());
                let mut shares: Vec<Vec<(Vec<u8>, String)>> = (0..workers).map(|_| Vec::new()).collect();
                for (i, f) in files.into_iter().enumerate() {
                    shares[i % workers].push(f);
                }
                for share in shares {
                    let this = Arc::clone(self);
                    let parent = dir.fh.clone();
                    tasks.spawn(async move { this.unlink_all(parent, share).await });
                }
            }
            // Reap finished tasks, and read ahead at most a few pages: memory stays bounded however large
            // the directory is.
            while tasks.try_join_next().is_some() {}
            while tasks.len() >= 4 * self.concurrency {
                if tasks.join_next().await.is_none() {
                    break;
                }
            }
            if self.stopped() {
                break;
            }
            if eof || next == cookie {
                break;
            }
            (cookie, verf) = (next, v);
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Removes `files` (names in `parent`) one after the other, a permit per RPC; stops at the first error.
    async fn unlink_all(self: Arc<Self>, parent: nfs_fh3, files: Vec<(Vec<u8>, String)>) {
        for (name, path) in files {
            if self.stopped() {
                return;
            }
            if let Err(err) = self.unlink(&parent, &name, &path).await {
                self.fail(err);
                return;
            }
        }
    }

    /// REMOVE under a permit; an entry that turned into a directory is descended.
    async fn unlink(self: &Arc<Self>, parent: &nfs_fh3, name: &[u8], path: &str) -> NfsResult<()> {
        let result = {
            let _permit = self.limit.acquire().await.map_err(|_| closed(path))?;
            self.unlink_inner(parent, name, path).await?
        };
        if let Some(node) = result {
            Arc::clone(self)
                .remove_dir(parent.clone(), name.to_vec(), node, path.to_owned())
                .await;
        }
        Ok(())
    }

    /// REMOVE without taking a permit (the caller holds one). `Some(node)`: the entry is a directory now
    /// (swapped since it was listed) and must be descended by the caller.
    async fn unlink_inner(&self, parent: &nfs_fh3, name: &[u8], path: &str) -> NfsResult<Option<Node>> {
        let answer = self.proto.remove(parent, name, OP_UNLINK, path).await?;
        match answer.status {
            nfsstat3::NFS3_OK => {
                self.removed.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            nfsstat3::NFS3ERR_NOENT => {
                if answer.resent {
                    self.removed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None)
            }
            nfsstat3::NFS3ERR_ISDIR => match self.proto.lookup(parent, name, OP_UNLINK, path).await? {
                None => Ok(None),
                Some(node) if node.is_dir() => Ok(Some(node)),
                Some(_) => Err(status(OP_UNLINK, path, nfsstat3::NFS3ERR_ISDIR)),
            },
            s => Err(status(OP_UNLINK, path, s)),
        }
    }
}

fn closed(path: &str) -> NfsError {
    NfsError::Protocol {
        op: OP_LIST,
        path: path.to_owned(),
        reason: "removal cancelled".into(),
    }
}
