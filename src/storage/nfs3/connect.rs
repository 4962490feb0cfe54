//! Reaching an export: the portmapper (unless the ports are given), MOUNT v3 for the root handle,
//! a GETATTR of the root over the NFS port, and the pool of connections every request then uses.

use std::net::{IpAddr, SocketAddr};

use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::nfs3::{nfs_fh3, nfsstat3};
use nfs3_client::nfs3_types::rpc::auth_flavor;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::error::NfsError;
use super::proto::{Node, Proto, status};
use super::rpc::{Connector, Pool};
use crate::core::export::ClientOptions;

/// Default number of connections (and so of RPCs in flight) of a new pool; a delete grows it.
pub const DEFAULT_CONNECTIONS: usize = 16;

/// How the connection was set up, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub nfs_addr: SocketAddr,
    pub mount_addr: SocketAddr,
    pub connections: usize,
    /// Source ports are below 1024 (false: `noresvport`, or binding them was not permitted).
    pub reserved_port: bool,
}

/// Bytes per READ and WRITE when the server does not say what it prefers (FSINFO).
pub const DEFAULT_IO_SIZE: usize = 64 * 1024;
/// Bounds of the transfer size taken from FSINFO: a reply of this size is buffered whole.
const MIN_IO_SIZE: usize = 4 * 1024;
const MAX_IO_SIZE: usize = 1 << 20;

/// One export's root handle and pool of connections.
pub struct Connection {
    pub(super) proto: Proto,
    pub(super) root: Node,
    info: ConnectionInfo,
    /// Bytes per READ and WRITE: the server's preferred size, within its maximum.
    io_size: usize,
}

impl Connection {
    /// Mounts `share` on `server` (MOUNT v3, then one GETATTR of the root over the NFS port) and sets up a
    /// pool of `connections` connections (at least 1; [`DEFAULT_CONNECTIONS`] is a good default).
    pub async fn open(
        server: &str,
        share: &str,
        options: &ClientOptions,
        connections: usize,
    ) -> Result<Self, NfsError> {
        let connect_err = |reason: String| NfsError::Connect {
            server: server.to_owned(),
            reason,
        };
        let host = resolve(server).await.map_err(connect_err)?;
        let connector = Connector::new(options.resvport, options.timeout);
        let mount_port = match options.mount_port {
            Some(p) => p,
            None => connector
                .portmap(host, nfs3_client::nfs3_types::mount::PROGRAM, 3)
                .await
                .map_err(connect_err)?,
        };
        let nfs_port = match options.port {
            Some(p) => p,
            None => connector
                .portmap(host, nfs3_client::nfs3_types::nfs3::PROGRAM, 3)
                .await
                .map_err(connect_err)?,
        };
        let mount_addr = SocketAddr::new(host, mount_port);
        let nfs_addr = SocketAddr::new(host, nfs_port);

        let stream = connector
            .connect(mount_addr)
            .await
            .map_err(|e| connect_err(format!("mount service {mount_addr}: {e}")))?;
        let mut mount = connector.mount_client(stream);
        let mounted = tokio::time::timeout(
            options.timeout,
            mount.mnt(dirpath(Opaque::borrowed(share.as_bytes()))),
        )
        .await;
        let ok = match mounted {
            Ok(Ok(ok)) => ok,
            Ok(Err(nfs3_client::MountError::Denied(status))) => {
                return Err(NfsError::Mount {
                    server: server.to_owned(),
                    export: share.to_owned(),
                    status,
                });
            }
            Ok(Err(e)) => return Err(connect_err(format!("mount service {mount_addr}: {e}"))),
            Err(_) => {
                return Err(connect_err(format!(
                    "mount service {mount_addr}: no answer within {:?}",
                    options.timeout
                )));
            }
        };
        drop(mount);
        let unix = auth_flavor::AUTH_UNIX as u32;
        if !ok.auth_flavors.is_empty() && !ok.auth_flavors.contains(&unix) {
            return Err(connect_err(format!(
                "export {share} does not accept AUTH_SYS (flavors {:?}); only sec=sys is implemented",
                ok.auth_flavors
            )));
        }
        let root_fh = nfs_fh3 {
            data: Opaque::owned(ok.fhandle.0.into_owned()),
        };
        let reserved_port = connector.uses_resvport();
        let pool = Pool::new(nfs_addr, connector, options.timeout, options.retrans, connections);
        let proto = Proto { pool };
        let attr = proto.getattr(&root_fh, "open export root", share).await?;
        let root = Node { fh: root_fh, attr };
        if !root.is_dir() {
            return Err(status("open export root", share, nfsstat3::NFS3ERR_NOTDIR));
        }
        let io_size = match proto
            .fsinfo(&root.fh, "query transfer sizes of export", share)
            .await
        {
            Ok(fs) => {
                let size = |v: u32| usize::try_from(v).unwrap_or(MAX_IO_SIZE);
                let preferred = size(fs.rtpref).min(size(fs.wtpref));
                let max = size(fs.rtmax).min(size(fs.wtmax)).max(MIN_IO_SIZE);
                preferred.clamp(MIN_IO_SIZE, MAX_IO_SIZE).min(max)
            }
            Err(_) => DEFAULT_IO_SIZE,
        };
        let info = ConnectionInfo {
            nfs_addr,
            mount_addr,
            connections: proto.pool.size(),
            reserved_port: reserved_port && proto.pool.uses_resvport(),
        };
        Ok(Connection {
            proto,
            root,
            info,
            io_size,
        })
    }

    /// Bytes per READ and WRITE.
    pub fn io_size(&self) -> usize {
        self.io_size
    }

    /// Where and how this export is connected.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Longest one RPC can take before it fails (`timeo` x (`retrans` + 1)).
    pub fn rpc_deadline(&self) -> std::time::Duration {
        self.proto.pool.deadline()
    }
}

async fn resolve(server: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(ip);
    }
    let mut addrs = tokio::net::lookup_host((server, 0))
        .await
        .map_err(|e| format!("resolve {server}: {e}"))?;
    addrs
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| format!("resolve {server}: no address"))
}
