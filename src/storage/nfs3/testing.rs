//! Making preconditions over NFS for the test suites and benchmarks: trees of files, symlinks,
//! modes and owners that no volume operation makes, written through the server so that its caches
//! see them. The provisioner itself never calls these.

use futures::StreamExt;
use nfs3_client::nfs3_types::nfs3::{Nfs3Option, nfsstat3, sattr3};

use super::Nfs3Transport;
use super::proto::{Node, mode_attr, status};
use crate::storage::error::StorageResult;
use crate::storage::transport::{Kind, Made, Transport, at};

impl Nfs3Transport {
    /// The node at `path` (`None`: something on the way is missing).
    async fn resolve(&self, path: &[&str], op: &'static str) -> StorageResult<Option<Node>> {
        let mut cur = self.root().await?;
        for (i, c) in path.iter().enumerate() {
            let here = path[..=i].join("/");
            match self.lookup(&cur, c.as_bytes(), at(op, &here)).await? {
                Some(n) => cur = n,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    async fn existing(&self, path: &[&str], op: &'static str) -> StorageResult<Node> {
        let full = path.join("/");
        self.resolve(path, op)
            .await?
            .ok_or_else(|| status(op, &full, nfsstat3::NFS3ERR_NOENT).into())
    }

    /// Makes `path` and missing parents (mode 0755).
    pub async fn mkdir_p(&self, path: &[&str]) -> StorageResult<()> {
        let mut cur = self.root().await?;
        for (i, c) in path.iter().enumerate() {
            let here = path[..=i].join("/");
            let at = at("create directory", &here);
            cur = match self.mkdir(&cur, c.as_bytes(), 0o755, at).await? {
                Made::New(n) => n,
                Made::Exists | Made::Gone => self
                    .lookup(&cur, c.as_bytes(), at)
                    .await?
                    .ok_or_else(|| status(at.op, at.path, nfsstat3::NFS3ERR_NOENT))?,
            };
        }
        Ok(())
    }

    /// Creates empty regular files `names` (mode 0644) in the existing directory `dir`,
    /// `concurrency` at a time.
    pub async fn create_files(
        &self,
        dir: &[&str],
        names: Vec<String>,
        concurrency: usize,
    ) -> StorageResult<()> {
        const OP: &str = "create file";
        let node = self.existing(dir, OP).await?;
        let dir_path = dir.join("/");
        let proto = self.proto();
        let mut made = futures::stream::iter(names)
            .map(|name| {
                let (fh, path) = (&node.fh, format!("{dir_path}/{name}"));
                async move {
                    proto
                        .create_file(fh, name.as_bytes(), 0o644, b"", OP, &path)
                        .await
                }
            })
            .buffer_unordered(concurrency.max(1));
        while let Some(result) = made.next().await {
            result?;
        }
        Ok(())
    }

    /// Writes a new regular file at `path` (parents must exist).
    pub async fn write_file_at(&self, path: &[&str], content: &[u8], mode: u32) -> StorageResult<()> {
        const OP: &str = "create file";
        let (leaf, dir) = path.split_last().unwrap_or((&"", &[]));
        let node = self.existing(dir, OP).await?;
        let full = path.join("/");
        match self
            .proto()
            .create_file(&node.fh, leaf.as_bytes(), mode, content, OP, &full)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(status(OP, &full, nfsstat3::NFS3ERR_EXIST).into()),
        }
    }

    /// Makes a symlink at `path` pointing at `target` (parents must exist).
    pub async fn symlink(&self, path: &[&str], target: &str) -> StorageResult<()> {
        const OP: &str = "create symlink";
        let (leaf, dir) = path.split_last().unwrap_or((&"", &[]));
        let node = self.existing(dir, OP).await?;
        let full = path.join("/");
        match self
            .proto()
            .symlink(&node.fh, leaf.as_bytes(), target.as_bytes(), OP, &full)
            .await?
        {
            true => Ok(()),
            false => Err(status(OP, &full, nfsstat3::NFS3ERR_EXIST).into()),
        }
    }

    /// Makes a FIFO, or a socket, at `path` (parents must exist).
    pub async fn mknod_at(&self, path: &[&str], socket: bool) -> StorageResult<()> {
        const OP: &str = "create special file";
        let (leaf, dir) = path.split_last().unwrap_or((&"", &[]));
        let node = self.existing(dir, OP).await?;
        Ok(self
            .proto()
            .mknod(&node.fh, leaf.as_bytes(), socket, OP, &path.join("/"))
            .await?)
    }

    /// Removes the non-directory at `path`.
    pub async fn remove_at(&self, path: &[&str]) -> StorageResult<()> {
        const OP: &str = "remove";
        let (leaf, dir) = path.split_last().unwrap_or((&"", &[]));
        let node = self.existing(dir, OP).await?;
        self.remove(&node, leaf.as_bytes(), Kind::Other, at(OP, &path.join("/")))
            .await
            .map(drop)
    }

    /// Makes `path` a further name of the file at `existing` (parents must exist).
    pub async fn link_at(&self, existing: &[&str], path: &[&str]) -> StorageResult<()> {
        const OP: &str = "create hard link";
        let file = self.existing(existing, OP).await?;
        let (leaf, dir) = path.split_last().unwrap_or((&"", &[]));
        let node = self.existing(dir, OP).await?;
        Ok(self
            .proto()
            .link(&file.fh, &node.fh, leaf.as_bytes(), OP, &path.join("/"))
            .await?)
    }

    /// Sets the access and modification times of `path`.
    pub async fn set_times_at(
        &self,
        path: &[&str],
        atime: (u32, u32),
        mtime: (u32, u32),
    ) -> StorageResult<()> {
        use nfs3_client::nfs3_types::nfs3::{nfstime3, set_atime, set_mtime};
        const OP: &str = "change attributes of";
        let node = self.existing(path, OP).await?;
        let time = |(seconds, nseconds)| nfstime3 { seconds, nseconds };
        let times = sattr3 {
            atime: set_atime::SET_TO_CLIENT_TIME(time(atime)),
            mtime: set_mtime::SET_TO_CLIENT_TIME(time(mtime)),
            ..sattr3::default()
        };
        Ok(self.set(&node, times, at(OP, &path.join("/"))).await?)
    }

    /// Sets the permission bits of `path`.
    pub async fn chmod_at(&self, path: &[&str], mode: u32) -> StorageResult<()> {
        const OP: &str = "change attributes of";
        let node = self.existing(path, OP).await?;
        Ok(self.set(&node, mode_attr(mode), at(OP, &path.join("/"))).await?)
    }

    /// Sets the owner of `path`.
    pub async fn chown_at(&self, path: &[&str], uid: Option<u32>, gid: Option<u32>) -> StorageResult<()> {
        const OP: &str = "change attributes of";
        let node = self.existing(path, OP).await?;
        let owner = sattr3 {
            uid: uid.map_or(Nfs3Option::None, Nfs3Option::Some),
            gid: gid.map_or(Nfs3Option::None, Nfs3Option::Some),
            ..sattr3::default()
        };
        Ok(self.set(&node, owner, at(OP, &path.join("/"))).await?)
    }

    /// Owner and permission bits of `path` as the server reports them (`None`: missing).
    pub async fn owner_mode(&self, path: &[&str]) -> StorageResult<Option<(u32, u32, u32)>> {
        Ok(self
            .resolve(path, "stat")
            .await?
            .map(|n| (n.attr.uid, n.attr.gid, n.attr.mode & 0o7777)))
    }
}
