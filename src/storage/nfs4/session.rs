//! An NFSv4.1 client identity and session on one TCP connection (RFC 8881 §2.4, §2.10): EXCHANGE_ID
//! names us to the server, CREATE_SESSION opens a session, RECLAIM_COMPLETE tells the server we
//! hold nothing to reclaim (without it, ganesha refuses every OPEN with `NFS4ERR_GRACE`). Every
//! later COMPOUND starts with SEQUENCE on the session's one slot; its sequence id goes up by one
//! per request the server executed.
//!
//! Recovery (RFC 8881 §2.10.6, §15.1), within the deadline of one call:
//! * a lost connection or a request with no reply: a new connection, and the same bytes again
//!   (the same session, slot and sequence id), which the server answers from its reply cache if it
//!   had executed them, so nothing runs twice;
//! * `NFS4ERR_DELAY` on SEQUENCE: the same request again after a pause;
//! * `NFS4ERR_BADSESSION`, `DEADSESSION`, `SEQ_MISORDERED` (a server restarted, or dropped an idle
//!   session): a new session, and `STALE_CLIENTID` on the way a new client id; the request is
//!   then sent on the new session, and reported as resent ([`Sent::resent`]): its first sending
//!   may have run before the session was lost;
//! * a call that failed unanswered leaves the slot in doubt: the next call makes a new session
//!   first;
//! * `NFS4ERR_GRACE` from an operation (a restarted server waiting for its clients to reclaim):
//!   the request again after a pause until the grace period ends ([`GRACE_BUDGET`] at most: a
//!   server in grace answers, so the deadline for unanswered requests does not apply).
//!
//! Not here (`docs/design/nfsv4.1-transport.md`): several slots on one session; each connection
//! of the pool ([`super::pool`]) is a client with a one-slot session of its own.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

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

/// Why a COMPOUND got no usable reply, or what the server refused. `op` is the request's tag;
/// the messages leave it to the error that wraps them, which names the operation and its path.
#[derive(Debug, Error)]
pub enum Nfs4Error {
    #[error("connecting to {addr}: {error}")]
    Connect {
        op: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("no answer from {addr} within {after:?} (timeo x (retrans + 1)): is the server answering?")]
    TimedOut {
        op: &'static str,
        addr: SocketAddr,
        after: Duration,
    },
    #[error("RPC failed: {error}")]
    Rpc { op: &'static str, error: String },
    #[error("the connection broke: {error}")]
    Broken { op: &'static str, error: String },
    #[error("the server's reply does not parse: {error}")]
    Xdr { op: &'static str, error: XdrError },
    #[error("the server answered {status}")]
    Status { op: &'static str, status: Status },
    #[error("the server answered for session {got:02x?}, not ours")]
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
    addr: SocketAddr,
    /// Source ports: reserved ones (`resvport`) where allowed.
    connector: Connector,
    owner: Vec<u8>,
    /// How long one request may go unanswered before it is sent again on a new connection.
    timeo: Duration,
    /// How long one call may take in all, recovery included.
    deadline: Duration,
    /// `None` once the connection broke; the next send connects again.
    rpc: Option<RpcClient<Stream>>,
    client: u64,
    /// The sequence id the next CREATE_SESSION of this client id carries.
    create_sequence: u32,
    session: SessionId,
    /// The sequence id the next request on slot 0 carries.
    sequence: u32,
    /// What the server granted.
    pub fore: ChannelAttrs,
    /// How many times a new session (or client id) had to be made.
    pub recoveries: u32,
    /// How many NFS4ERR_GRACE answers were waited out (a restarted server's grace period).
    pub grace_waits: u32,
    /// A request went unanswered past its deadline: the server may yet run it, so the slot's
    /// sequence id is in doubt, and the next call starts a new session rather than reuse it
    /// (the same id with other operations would be answered from the reply cache of the old).
    in_doubt: bool,
}

/// A call's results, and whether its request may have reached the server more than once
/// (through a session that was lost since).
#[derive(Debug)]
pub struct Sent<T> {
    pub value: T,
    pub resent: bool,
}

/// How long to wait before asking a server that said DELAY or GRACE again.
const BUSY_PAUSE: Duration = Duration::from_millis(500);
/// How long a call waits out a grace period at most. A server in grace answers (it is not the
/// dead server the deadline is for) and a restart's grace is as long as its lease (ganesha's
/// default: 90 s); the storage layer's FS_OPERATION_TIMEOUT bounds the whole operation anyway.
const GRACE_BUDGET: Duration = Duration::from_secs(120);

impl Connection {
    /// Connects to `addr` (the NFS port; no portmapper or MOUNT in v4), names this client
    /// `owner` (stable for this process, unique per provisioner replica) and opens a session;
    /// `resvport`: from a source port below 1024 where that is allowed.
    /// Each request must be answered within `timeo`; a call, recovery included, takes at most
    /// `deadline`.
    pub async fn open(
        addr: SocketAddr,
        owner: &[u8],
        resvport: bool,
        timeo: Duration,
        deadline: Duration,
    ) -> Result<Connection, Nfs4Error> {
        let mut connection = Connection {
            addr,
            connector: Connector::new(resvport, timeo),
            owner: owner.to_vec(),
            timeo,
            deadline,
            rpc: None,
            client: 0,
            create_sequence: 0,
            session: [0; 16],
            sequence: 1,
            fore: fore_channel(1 << 20),
            recoveries: 0,
            grace_waits: 0,
            in_doubt: false,
        };
        connection.new_client().await?;
        Ok(connection)
    }

    /// A connection, made if there is none.
    async fn rpc(&mut self) -> Result<&mut RpcClient<Stream>, Nfs4Error> {
        if self.rpc.is_none() {
            let tcp = match tokio::time::timeout(self.timeo, self.connector.connect(self.addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(error)) => {
                    return Err(Nfs4Error::Connect {
                        op: "connect",
                        addr: self.addr,
                        error,
                    });
                }
                Err(_) => {
                    return Err(Nfs4Error::TimedOut {
                        op: "connect",
                        addr: self.addr,
                        after: self.timeo,
                    });
                }
            };
            self.rpc = Some(RpcClient::new_with_auth(
                Stream::new(tcp),
                credential(),
                opaque_auth::default(),
            ));
        }
        Ok(self.rpc.as_mut().expect("connected just now"))
    }

    /// Sends `compound` once; a connection that failed is dropped, for the next send to replace.
    async fn send_once(&mut self, compound: &Compound, encoded: &Raw) -> Result<Reply, Nfs4Error> {
        let op = compound.tag;
        let timeo = self.timeo;
        let rpc = self.rpc().await?;
        let outcome = tokio::time::timeout(
            timeo,
            rpc.call::<Raw, Raw>(PROGRAM, VERSION, PROC_COMPOUND, encoded),
        )
        .await;
        let raw = match outcome {
            Ok(Ok(raw)) => raw,
            Ok(Err(error)) if error.is_connection_reusable() => return Err(rpc_error(op, &error)),
            Ok(Err(error)) => {
                self.rpc = None;
                return Err(Nfs4Error::Broken {
                    op,
                    error: error.to_string(),
                });
            }
            Err(_) => {
                // The stream is mid-reply: unusable.
                self.rpc = None;
                return Err(Nfs4Error::TimedOut {
                    op,
                    addr: self.addr,
                    after: timeo,
                });
            }
        };
        Reply::decode(&raw.0, compound).map_err(|error| Nfs4Error::Xdr { op, error })
    }

    /// A sessionless one-operation COMPOUND (EXCHANGE_ID, CREATE_SESSION), sent again on a new
    /// connection while the server does not answer, until `until`.
    async fn setup(&mut self, compound: &Compound, until: Instant) -> Result<Done, Nfs4Error> {
        let encoded = Raw(compound.encode());
        loop {
            match self.send_once(compound, &encoded).await {
                Ok(reply) => return only(reply, compound.tag),
                Err(error) if is_unanswered(&error) && Instant::now() + BUSY_PAUSE < until => {
                    tokio::time::sleep(BUSY_PAUSE.min(self.timeo)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A new client id (EXCHANGE_ID), then a new session on it.
    async fn new_client(&mut self) -> Result<(), Nfs4Error> {
        let until = Instant::now() + self.deadline;
        let exchange = Compound {
            tag: "exchange_id",
            ops: vec![Op::ExchangeId {
                verifier: boot_verifier(),
                owner: self.owner.clone(),
                flags: EXCHGID4_FLAG_USE_NON_PNFS,
            }],
        };
        let Done::ExchangeId { client, sequence, .. } = self.setup(&exchange, until).await? else {
            unreachable!("an EXCHANGE_ID result");
        };
        self.client = client;
        self.create_sequence = sequence;
        self.new_session(until).await
    }

    /// A new session on this client id (CREATE_SESSION), and RECLAIM_COMPLETE on it: without it a
    /// server in grace refuses our creates, as we hold nothing to reclaim.
    async fn new_session(&mut self, until: Instant) -> Result<(), Nfs4Error> {
        let create = Compound {
            tag: "create_session",
            ops: vec![Op::CreateSession {
                client: self.client,
                sequence: self.create_sequence,
                fore: fore_channel(1 << 20),
                back: BACK_CHANNEL,
            }],
        };
        let Done::CreateSession { session, fore, .. } = self.setup(&create, until).await? else {
            unreachable!("a CREATE_SESSION result");
        };
        self.create_sequence = self.create_sequence.wrapping_add(1);
        self.session = session;
        self.sequence = 1;
        self.fore = fore;
        let reclaimed = self
            .call_within("reclaim_complete", vec![Op::ReclaimComplete], false, until)
            .await;
        match reclaimed {
            // COMPLETE_ALREADY: this client id had said so on an earlier session.
            Ok(_)
            | Err(Nfs4Error::Status {
                status: Status::COMPLETE_ALREADY,
                ..
            }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// After the server lost our session: a new one, and a new client id if it lost that too.
    async fn recover(&mut self, until: Instant) -> Result<(), Nfs4Error> {
        self.recoveries += 1;
        match Box::pin(self.new_session(until)).await {
            Err(Nfs4Error::Status {
                status: Status::STALE_CLIENTID,
                ..
            }) => Box::pin(self.new_client()).await,
            other => other,
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// Sends SEQUENCE followed by `ops` and returns the results of `ops`. `cache_this` asks the
    /// server to keep the reply for a resend (every request that changes something). A failed
    /// operation is an error naming it; see [`Connection::call_reply`] for callers that act on
    /// a failure.
    pub async fn call(
        &mut self,
        tag: &'static str,
        ops: Vec<Op>,
        cache_this: bool,
    ) -> Result<Vec<OpResult>, Nfs4Error> {
        let reply = self.call_reply(tag, ops, cache_this).await?.value;
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
    ) -> Result<Sent<Reply>, Nfs4Error> {
        let mut until = Instant::now() + self.deadline;
        let grace_until = Instant::now() + self.deadline.max(GRACE_BUDGET);
        let mut resent = false;
        if self.in_doubt {
            self.recover(until).await?;
            self.in_doubt = false;
        }
        loop {
            match Box::pin(self.call_within(tag, ops.clone(), cache_this, until)).await {
                Ok(reply) => {
                    let grace = matches!(reply.failed(), Some((_, Status::GRACE)));
                    if grace && Instant::now() + BUSY_PAUSE < grace_until {
                        self.grace_waits += 1;
                        tokio::time::sleep(BUSY_PAUSE).await;
                        until = Instant::now() + self.deadline;
                        continue;
                    }
                    return Ok(Sent { value: reply, resent });
                }
                Err(Nfs4Error::Status { status, .. }) if lost_session(status) && Instant::now() < until => {
                    tracing::info!(addr = %self.addr, %status, "NFSv4.1 session lost; making a new one");
                    self.recover(until).await?;
                    resent = true;
                }
                Err(error) => {
                    self.in_doubt = is_unanswered(&error);
                    // Unanswered to the end: the whole deadline went by.
                    return Err(match error {
                        Nfs4Error::TimedOut { op, addr, .. } => Nfs4Error::TimedOut {
                            op,
                            addr,
                            after: self.deadline,
                        },
                        error => error,
                    });
                }
            }
        }
    }

    /// One request on the session: sent, and sent again with the same bytes on a new
    /// connection while unanswered or while the server says DELAY, until `until`. A failed
    /// SEQUENCE is an error; the results after it are returned.
    async fn call_within(
        &mut self,
        tag: &'static str,
        ops: Vec<Op>,
        cache_this: bool,
        until: Instant,
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
        let encoded = Raw(compound.encode());
        let mut reply = loop {
            match self.send_once(&compound, &encoded).await {
                Ok(reply) => match reply.results.first().map(|r| r.status) {
                    Some(Status::DELAY) if Instant::now() + BUSY_PAUSE < until => {
                        tokio::time::sleep(BUSY_PAUSE).await;
                    }
                    _ => break reply,
                },
                Err(error) if is_unanswered(&error) && Instant::now() + BUSY_PAUSE < until => {
                    tokio::time::sleep(BUSY_PAUSE.min(self.timeo)).await;
                }
                Err(error) => return Err(error),
            }
        };
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

/// A status of SEQUENCE that means our session is gone, or out of step, and a new one is needed.
fn lost_session(status: Status) -> bool {
    matches!(
        status,
        Status::BADSESSION
            | Status::DEADSESSION
            | Status::SEQ_MISORDERED
            | Status::STALE_CLIENTID
            // Our resend of a request the server ran without keeping its reply: it ran, but what
            // it answered is lost; sent again on a new session, it is reported resent.
            | Status::RETRY_UNCACHED_REP
            | Status::SEQ_FALSE_RETRY
    )
}

/// No reply came: the connection broke or the request timed out; sending again may help.
fn is_unanswered(error: &Nfs4Error) -> bool {
    matches!(
        error,
        Nfs4Error::Connect { .. } | Nfs4Error::TimedOut { .. } | Nfs4Error::Broken { .. }
    )
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
