//! Connections to one NFSv4.1 server, N at most, each with a session of its own (one slot each,
//! so one request in flight per connection, as the NFSv3 pool has). Each connection is its own
//! client (its owner is this process's owner and the connection's number in the process): a
//! client's CREATE_SESSION calls are numbered in one sequence, which connections recovering on
//! their own could not share. N only grows; connections are opened on first use and kept.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::compound::Reply;
use super::session::{Connection, Nfs4Error, Op, Sent};
use crate::storage::nfs3::rpc::Permits;

pub struct Pool {
    addr: SocketAddr,
    owner: String,
    resvport: bool,
    timeo: Duration,
    deadline: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Permits,
}

/// Connections opened by this process, to any server: numbers them apart in their owners. Two
/// connections under one owner would be one client to the server, and their CREATE_SESSION calls
/// would share one sequence (a server answers the second as a replay, or with
/// NFS4ERR_STALE_CLIENTID); two pools may reach one server (two classes naming one export with
/// other options), so the number is the process's, not the pool's.
static OPENED: AtomicUsize = AtomicUsize::new(0);

impl Pool {
    /// `owner`: this process among the server's clients (unique per provisioner replica).
    pub fn new(
        addr: SocketAddr,
        owner: String,
        resvport: bool,
        timeo: Duration,
        deadline: Duration,
        size: usize,
    ) -> Pool {
        Pool {
            addr,
            owner,
            resvport,
            timeo,
            deadline,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Permits::new(size),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn size(&self) -> usize {
        self.permits.size()
    }

    /// Longest a call takes before it fails, recovery included.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Raises the number of connections to `to` (at most the NFSv3 pool's maximum); never lowers it.
    pub fn grow(&self, to: usize) {
        self.permits.grow(to);
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SEQUENCE and `ops` on a connection of the pool (see [`Connection::call_reply`]).
    pub async fn call(
        &self,
        tag: &'static str,
        ops: Vec<Op>,
        cache_this: bool,
    ) -> Result<Sent<Reply>, Nfs4Error> {
        let _permit = self.permits.acquire().await.map_err(|_| Nfs4Error::Rpc {
            op: tag,
            error: "connection pool closed".into(),
        })?;
        let pooled = self.idle().pop();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => {
                let n = OPENED.fetch_add(1, Ordering::Relaxed);
                let owner = format!("{}/{n}", self.owner);
                Connection::open(
                    self.addr,
                    owner.as_bytes(),
                    self.resvport,
                    self.timeo,
                    self.deadline,
                )
                .await?
            }
        };
        let result = connection.call_reply(tag, ops, cache_this).await;
        // A connection recovers by itself (a new TCP connection, session or client id) on its
        // next call, so it goes back whatever happened.
        self.idle().push(connection);
        result
    }
}
