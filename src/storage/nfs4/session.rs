//! An NFSv4.1 client identity and session on one TCP connection (RFC 8881 §2.4, §2.10): EXCHANGE_ID
//! names us to the server, CREATE_SESSION opens a session, RECLAIM_COMPLETE tells the server we
//! hold nothing to reclaim (without it, ganesha refuses every OPEN with `NFS4ERR_GRACE`). Every
//! later COMPOUND starts with SEQUENCE on the session's one slot; its sequence id goes up by one
//! per request the server executed.
//!
//! What is not here yet (see `docs/design/nfsv4.1-transport.md`): several slots shared by a pool
//! of connections, and recovery from `NFS4ERR_BADSESSION`, `STALE_CLIENTID` and `GRACE`. This is
//! the piece that proves the wire format against a real server.

use std::net::SocketAddr;
use std::time::Duration;

use nfs3_client::RpcError;
use nfs3_client::nfs3_types::rpc::opaque_auth;
use nfs3_client::rpc::RpcClient;
use thiserror::Error;

use super::compound::{
    ChannelAttrs, Compound, Done, EXCHGID4_FLAG_USE_NON_PNFS, OpResult, PROC_COMPOUND, PROGRAM, Reply,
    SessionId, VERSION,
};
use super::status::Status;
use super::xdr::{Raw, XdrError};
use crate::storage::nfs3::rpc::{Connector, Stream, credential};

pub use super::compound::Op;

/// Why a COMPOUND got no usable reply, or what the server refused.
#[derive(Debug, Error)]
pub enum Nfs4Error {
    #[error("{op}: connecting to {addr}: {error}")]
    Connect {
        op: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{op}: no reply within {0:?}", .timeout)]
    TimedOut { op: &'static str, timeout: Duration },
    #[error("{op}: {error}")]
    Rpc { op: &'static str, error: String },
    #[error("{op}: the server's reply does not parse: {error}")]
    Xdr { op: &'static str, error: XdrError },
    #[error("{op}: the server answered {status}")]
    Status { op: &'static str, status: Status },
    #[error("{op}: the server answered for session {got:02x?}, not ours")]
    WrongSession { op: &'static str, got: SessionId },
}

/// What we ask of the session's fore channel; the server may grant less.
fn fore_channel(io_size: u32) -> ChannelAttrs {
    ChannelAttrs {
        header_pad_size: 0,
        // Room for one READ or WRITE of `io_size` and its COMPOUND around it.
        max_request_size: io_size + 4096,
        max_response_size: io_size + 4096,
        max_response_size_cached: 8192,
        max_operations: 16,
        max_requests: 1,
    }
}

/// The back channel is never used (no delegations are asked for), but CREATE_SESSION must
/// describe one.
const BACK_CHANNEL: ChannelAttrs = ChannelAttrs {
    header_pad_size: 0,
    max_request_size: 4096,
    max_response_size: 4096,
    max_response_size_cached: 0,
    max_operations: 2,
    max_requests: 1,
};

/// One connection with its client id and session.
pub struct Connection {
    rpc: RpcClient<Stream>,
    timeo: Duration,
    client: u64,
    session: SessionId,
    /// The sequence id the next request on slot 0 carries.
    sequence: u32,
    /// What the server granted.
    pub fore: ChannelAttrs,
}

impl Connection {
    /// Connects to `addr` (the NFS port; no portmapper or MOUNT in v4), names this client
    /// `owner` (stable for this process, unique per provisioner replica) and opens a session.
    /// Each request must be answered within `timeo`.
    pub async fn open(addr: SocketAddr, owner: &[u8], timeo: Duration) -> Result<Connection, Nfs4Error> {
        let connector = Connector::new(false, timeo);
        let tcp = match tokio::time::timeout(timeo, connector.connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => {
                return Err(Nfs4Error::Connect {
                    op: "connect",
                    addr,
                    error,
                });
            }
            Err(_) => {
                return Err(Nfs4Error::TimedOut {
                    op: "connect",
                    timeout: timeo,
                });
            }
        };
        let mut rpc = RpcClient::new_with_auth(Stream::new(tcp), credential(), opaque_auth::default());

        let exchange = Compound {
            tag: "exchange_id",
            ops: vec![Op::ExchangeId {
                verifier: boot_verifier(),
                owner: owner.to_vec(),
                flags: EXCHGID4_FLAG_USE_NON_PNFS,
            }],
        };
        let Done::ExchangeId { client, sequence, .. } =
            only(send(&mut rpc, &exchange, timeo).await?, "EXCHANGE_ID")?
        else {
            unreachable!("an EXCHANGE_ID result");
        };
        let create = Compound {
            tag: "create_session",
            ops: vec![Op::CreateSession {
                client,
                sequence,
                fore: fore_channel(1 << 20),
                back: BACK_CHANNEL,
            }],
        };
        let Done::CreateSession { session, fore, .. } =
            only(send(&mut rpc, &create, timeo).await?, "CREATE_SESSION")?
        else {
            unreachable!("a CREATE_SESSION result");
        };
        let mut connection = Connection {
            rpc,
            timeo,
            client,
            session,
            sequence: 1,
            fore,
        };
        match connection
            .call("reclaim_complete", vec![Op::ReclaimComplete], false)
            .await
        {
            Ok(_) => {}
            // This client id had already said so (a reconnect of a live client).
            Err(Nfs4Error::Status {
                status: Status::COMPLETE_ALREADY,
                ..
            }) => {}
            Err(error) => return Err(error),
        }
        Ok(connection)
    }

    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// Sends SEQUENCE followed by `ops` and returns the results of `ops` that ran. `cache_this`
    /// asks the server to keep the reply for a resend (every request that changes something).
    /// A failed operation is an error naming it; see [`Connection::call_reply`] for callers that
    /// act on a failure.
    pub async fn call(
        &mut self,
        tag: &'static str,
        ops: Vec<Op>,
        cache_this: bool,
    ) -> Result<Vec<OpResult>, Nfs4Error> {
        let reply = self.call_reply(tag, ops, cache_this).await?;
        match reply.failed() {
            Some((_, status)) => Err(Nfs4Error::Status { op: tag, status }),
            None => Ok(reply.results),
        }
    }

    /// As [`Connection::call`], but a failed operation is returned in the reply (its position
    /// among `ops`, and the results before it), not as an error.
    pub async fn call_reply(
        &mut self,
        tag: &'static str,
        ops: Vec<Op>,
        cache_this: bool,
    ) -> Result<Reply, Nfs4Error> {
        let mut all = Vec::with_capacity(ops.len() + 1);
        all.push(Op::Sequence {
            session: self.session,
            sequence: self.sequence,
            slot: 0,
            highest_slot: 0,
            cache_this,
        });
        all.extend(ops);
        let compound = Compound { tag, ops: all };
        let mut reply = send(&mut self.rpc, &compound, self.timeo).await?;
        let Some(first) = reply.results.first() else {
            return Err(Nfs4Error::Status {
                op: tag,
                status: reply.status,
            });
        };
        if !first.status.is_ok() {
            return Err(Nfs4Error::Status {
                op: tag,
                status: first.status,
            });
        }
        if let Some(Done::Sequence { session, .. }) = first.done
            && session != self.session
        {
            return Err(Nfs4Error::WrongSession {
                op: tag,
                got: session,
            });
        }
        // The server executed the request: the slot's next request carries the next id.
        self.sequence = self.sequence.wrapping_add(1);
        reply.results.remove(0);
        Ok(reply)
    }
}

/// Sends `compound` and decodes its reply.
async fn send(rpc: &mut RpcClient<Stream>, compound: &Compound, timeo: Duration) -> Result<Reply, Nfs4Error> {
    let op = compound.tag;
    let args = Raw(compound.encode());
    let raw: Raw = match tokio::time::timeout(timeo, rpc.call(PROGRAM, VERSION, PROC_COMPOUND, &args)).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(error)) => return Err(rpc_error(op, &error)),
        Err(_) => return Err(Nfs4Error::TimedOut { op, timeout: timeo }),
    };
    Reply::decode(&raw.0, compound).map_err(|error| Nfs4Error::Xdr { op, error })
}

fn rpc_error(op: &'static str, error: &RpcError) -> Nfs4Error {
    Nfs4Error::Rpc {
        op,
        error: error.to_string(),
    }
}

/// The result of a one-operation COMPOUND sent without a session.
fn only(reply: Reply, op: &'static str) -> Result<Done, Nfs4Error> {
    let result = reply.results.into_iter().next();
    match result {
        Some(OpResult {
            status,
            done: Some(done),
            ..
        }) if status.is_ok() => Ok(done),
        Some(OpResult { status, .. }) => Err(Nfs4Error::Status { op, status }),
        None => Err(Nfs4Error::Status {
            op,
            status: reply.status,
        }),
    }
}

/// Differs at each start of the process, so that the server drops any state a previous
/// incarnation under the same owner left (RFC 8881 §2.4).
fn boot_verifier() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    static VERIFIER: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    *VERIFIER.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish().to_be_bytes()
    })
}
