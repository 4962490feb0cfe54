//! The requests preconditions over NFSv4.1 are made of, for the test suites and benchmarks
//! ([`crate::storage::nfs_testing`], written once for both NFS transports). The provisioner itself
//! never calls these.

use super::attrs::NewAttributes;
use super::compound::NewObject;
use super::session::Op;
use super::transport::{Nfs4Transport, Node};
use crate::storage::error::StorageResult;
use crate::storage::nfs_testing::TestRequests;
use crate::storage::transport::{At, Stat};

impl TestRequests for Nfs4Transport {
    async fn node(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Node>> {
        Ok(self.lookup(dir, name, at).await?)
    }

    async fn create(
        &self,
        dir: &Node,
        name: &[u8],
        mode: u32,
        content: &[u8],
        at: At<'_>,
    ) -> StorageResult<bool> {
        Ok(Nfs4Transport::create(self, dir, name, mode, Some(content), at)
            .await?
            .is_some())
    }

    async fn mknod(&self, dir: &Node, name: &[u8], socket: bool, at: At<'_>) -> StorageResult<()> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Create {
                object: if socket {
                    NewObject::Socket
                } else {
                    NewObject::Fifo
                },
                name: name.to_vec(),
                attrs: NewAttributes {
                    mode: Some(0o644),
                    ..NewAttributes::default()
                },
            },
        ];
        self.call_ok(ops, true, at).await?;
        Ok(())
    }

    async fn link(&self, file: &Node, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<()> {
        let ops = vec![
            Op::PutFh(file.fh.to_vec()),
            Op::SaveFh,
            Op::PutFh(dir.fh.to_vec()),
            Op::Link(name.to_vec()),
        ];
        self.call_ok(ops, true, at).await?;
        Ok(())
    }

    fn stat_of(node: &Node) -> Stat {
        node.stat
    }
}
