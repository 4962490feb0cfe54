//! Direct NFS: an export reached by a userspace NFSv3 client (nfs3_client), with no mount and no
//! privileges. [`client::DirectExport`] speaks the protocol with the mounted backend's semantics
//! (see its module docs for how NFSv3's replacing RENAME, setgid-dropping MKDIR and resent
//! requests are handled); [`DirectBackend`] connects on first use, reconnects after a failed
//! connect, and serves the [`Backend`] interface.
//!
//! Every request has a deadline (`timeo`, resent up to `retrans` times on fresh connections), and
//! each export has its own pool of connections: a server that stops answering fails only the
//! operations on it.

pub mod client;
mod error;
mod proto;
mod rpc;
mod tree;

use std::time::Duration;

use tokio::sync::Mutex;

pub use client::{DEFAULT_CONNECTIONS, DirectExport};
pub use error::NfsError;
pub use rpc::MAX_CONNECTIONS;

use crate::core::export::{ClientOptions, Export};
use crate::storage::{Archived, Backend, Capacity, Created, DirAttrs, OpFuture, Removed, StorageFailure};

/// What the client takes from the class's (or PV's) mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub port: Option<u16>,
    pub mountport: Option<u16>,
    /// Deadline of each request (and each TCP connect).
    pub timeo: Duration,
    /// Extra attempts after a timeout or a broken connection.
    pub retrans: u32,
    /// Bind a source port below 1024, falling back to an ephemeral one when not permitted.
    pub resvport: bool,
}

impl From<ClientOptions> for MountOptions {
    fn from(o: ClientOptions) -> Self {
        MountOptions {
            port: o.port,
            mountport: o.mount_port,
            timeo: o.timeout,
            retrans: o.retrans,
            resvport: o.resvport,
        }
    }
}

pub struct DirectBackend {
    export: Export,
    options: MountOptions,
    client: Mutex<Option<DirectExport>>,
}

impl DirectBackend {
    pub fn new(export: Export, options: ClientOptions) -> Self {
        DirectBackend {
            export,
            options: options.into(),
            client: Mutex::new(None),
        }
    }

    /// The connected client; connects (MOUNT, then a GETATTR of the root) if not yet connected.
    /// A failed connect is retried by the next operation.
    async fn client(&self) -> Result<DirectExport, StorageFailure> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = DirectExport::connect(
            &self.export.server,
            &self.export.path,
            &self.options,
            DEFAULT_CONNECTIONS,
        )
        .await?;
        let info = client.info();
        tracing::info!(
            export = %self.export,
            nfs = %info.nfs_addr,
            mount = %info.mount_addr,
            connections = info.connections,
            reserved_port = info.reserved_port,
            "connected to NFS export"
        );
        *slot = Some(client.clone());
        Ok(client)
    }
}

impl Backend for DirectBackend {
    fn create_volume<'a>(
        &'a self,
        pv: &'a str,
        path: &'a [String],
        attrs: DirAttrs,
    ) -> OpFuture<'a, Created> {
        Box::pin(async move { Ok(self.client().await?.create_volume(pv, path, &attrs).await?) })
    }

    fn finish_volume<'a>(&'a self, pv: &'a str) -> OpFuture<'a, ()> {
        Box::pin(async move { Ok(self.client().await?.finish_volume(pv).await?) })
    }

    fn staged_volumes(&self) -> OpFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(self.client().await?.staged_volumes().await?) })
    }

    fn archive_volume<'a>(&'a self, path: &'a [String]) -> OpFuture<'a, Archived> {
        Box::pin(async move { Ok(self.client().await?.archive_volume(path).await?) })
    }

    fn delete_volume<'a>(&'a self, path: &'a [String], concurrency: usize) -> OpFuture<'a, Removed> {
        Box::pin(async move { Ok(self.client().await?.delete_volume(path, concurrency).await?) })
    }

    fn capacity(&self) -> OpFuture<'_, Capacity> {
        Box::pin(async move { Ok(self.client().await?.capacity().await?) })
    }

    fn probe_writable<'a>(&'a self, tag: &'a str) -> OpFuture<'a, ()> {
        Box::pin(async move { Ok(self.client().await?.probe_writable(tag).await?) })
    }
}
