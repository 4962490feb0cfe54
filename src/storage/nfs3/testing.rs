//! The requests preconditions over NFSv3 are made of, for the test suites and benchmarks
//! ([`crate::storage::nfs_testing`], written once for both NFS transports). The provisioner itself
//! never calls these.

use super::Nfs3Transport;
use super::proto::Node;
use super::stat_of;
use crate::storage::error::StorageResult;
use crate::storage::nfs_testing::TestRequests;
use crate::storage::transport::{At, Stat};

impl TestRequests for Nfs3Transport {
    async fn node(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Node>> {
        self.lookup(dir, name, at).await
    }

    async fn create(
        &self,
        dir: &Node,
        name: &[u8],
        mode: u32,
        content: &[u8],
        at: At<'_>,
    ) -> StorageResult<bool> {
        Ok(self
            .proto()
            .create_file(&dir.fh, name, mode, content, at.op, at.path)
            .await?
            .is_some())
    }

    async fn mknod(&self, dir: &Node, name: &[u8], socket: bool, at: At<'_>) -> StorageResult<()> {
        Ok(self.proto().mknod(&dir.fh, name, socket, at.op, at.path).await?)
    }

    async fn link(&self, file: &Node, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<()> {
        Ok(self.proto().link(&file.fh, &dir.fh, name, at.op, at.path).await?)
    }

    fn stat_of(node: &Node) -> Stat {
        stat_of(&node.attr)
    }
}
