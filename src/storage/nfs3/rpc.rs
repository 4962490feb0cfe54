//! Connections: a pool of N TCP connections to the NFS port, one RPC in flight on each (nfs3_client's
//! clients are `&mut self`), AUTH_UNIX uid 0 gid 0, a deadline on every RPC, reconnect on failure.
//!
//! * N only grows ([`Pool::grow`]: a delete asks for as many as the RPCs it wants in flight), up to
//!   [`MAX_CONNECTIONS`]; connections are opened on first use.
//! * A call takes a permit (at most N calls in flight; waiting for one is not counted), then an idle
//!   connection or a new one, and the connect plus the call run under one `timeo` deadline
//!   (`tokio::time::timeout_at`). On success the connection goes back to the idle list.
//! * On a timeout, or an error that leaves the stream unusable (I/O, fragmented reply), the connection is
//!   dropped (closed) and the call is sent again on a fresh connection, up to `retrans` more times. An I/O
//!   error on a connection taken from the idle list (e.g. the server restarted meanwhile) also flushes the
//!   idle list and gets one extra attempt that does not count against `retrans`.
//! * A resend may execute a non-idempotent procedure twice (the server's duplicate request cache does not
//!   span connections), so every reply says whether the call was resent ([`Sent::resent`]) and the callers
//!   interpret e.g. NOENT from a resent REMOVE as success.
//! * Protocol-level failures on a healthy stream (auth errors, GARBAGE_ARGS, ...) are returned at once.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{MountClient, Nfs3Client, PortmapperClient, RpcError};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub(crate) type Io = Stream;

/// The TCP stream as nfs3_client's I/O. Not `nfs3_client::tokio::TokioIo`: its `async_read_exact` loops on
/// 0-byte reads, so a connection the server closed (restart, idle timeout) spins at 100% CPU until the
/// deadline instead of failing. Here a 0-byte read is an `UnexpectedEof` error.
///
/// Reads are buffered: nfs3_client reads a reply's 4-byte record mark, then its body, and a small reply
/// (most are under 300 bytes) arrives whole, so one `recv` serves both instead of one each. Only bytes
/// already received are buffered, and one call is in flight per connection, so the buffer never holds
/// anything past the reply being read.
pub(crate) struct Stream {
    tcp: TcpStream,
    /// Received, not yet consumed: `buf[pos..len]`.
    buf: Box<[u8]>,
    pos: usize,
    len: usize,
}

/// Read-ahead buffer of a connection (4 KiB each): room for a whole small reply.
const READ_BUFFER: usize = 4096;

impl Stream {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }
}

/// One read; 0 bytes (the server closed the connection) is an error.
async fn read_some(tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let n = tokio::io::AsyncReadExt::read(tcp, buf).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(n)
}

impl nfs3_client::io::AsyncRead for Stream {
    async fn async_read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.len {
            // A large body (a READDIRPLUS page) goes straight into the caller's buffer.
            if out.len() >= self.buf.len() {
                return read_some(&mut self.tcp, out).await;
            }
            self.len = read_some(&mut self.tcp, &mut self.buf).await?;
            self.pos = 0;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Stream {
    async fn async_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        tokio::io::AsyncWriteExt::write(&mut self.tcp, buf).await
    }
}
pub(crate) type Client = Nfs3Client<Io>;

/// Most connections a pool grows to: as many as the largest configuration of benches/nfs_delete.rs, where
/// more RPCs in flight no longer made deletes faster, only the server busier.
pub const MAX_CONNECTIONS: usize = 64;

/// Range of reserved source ports tried for `resvport`, as the Linux client (665..=1023).
const RESV_PORT_MIN: u16 = 665;
const RESV_PORT_MAX: u16 = 1023;

/// Why an RPC produced no reply.
#[derive(Debug)]
pub(crate) enum Failure {
    TimedOut(Duration),
    Rpc(String),
}

/// A reply and whether the request had to be sent more than once.
pub(crate) struct Sent<T> {
    pub value: T,
    pub resent: bool,
}

pub(crate) fn credential() -> opaque_auth<'static> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::owned(hostname.into_bytes()),
        uid: 0,
        gid: 0,
        gids: vec![0],
    })
}

/// Source-port policy and connect logic, shared by the MOUNT/portmap connections and the pool.
pub(crate) struct Connector {
    resvport: bool,
    /// Binding below 1024 was refused once (no CAP_NET_BIND_SERVICE): use ephemeral ports from now on.
    resv_denied: AtomicBool,
    cursor: AtomicU32,
    timeo: Duration,
}

impl Connector {
    pub fn new(resvport: bool, timeo: Duration) -> Self {
        let seed = RandomState::new().build_hasher().finish();
        Self {
            resvport,
            resv_denied: AtomicBool::new(false),
            #[allow(clippy::cast_possible_truncation)]
            cursor: AtomicU32::new(seed as u32),
            timeo,
        }
    }

    /// Whether connections currently come from a reserved port.
    pub fn uses_resvport(&self) -> bool {
        self.resvport && !self.resv_denied.load(Ordering::Relaxed)
    }

    /// TCP connect under the `timeo` deadline.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        match tokio::time::timeout(self.timeo, self.connect_inner(addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {:?}", self.timeo),
            )),
        }
    }

    pub async fn connect_inner(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = if self.uses_resvport() {
            match self.connect_reserved(addr).await? {
                Some(s) => s,
                None => TcpStream::connect(addr).await?,
            }
        } else {
            TcpStream::connect(addr).await?
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// `Ok(None)`: binding reserved ports is not permitted (falls back to an ephemeral port).
    async fn connect_reserved(&self, addr: SocketAddr) -> io::Result<Option<TcpStream>> {
        let span = u32::from(RESV_PORT_MAX - RESV_PORT_MIN) + 1;
        let mut last = None;
        for _ in 0..span {
            let offset = self.cursor.fetch_add(1, Ordering::Relaxed) % span;
            #[allow(clippy::cast_possible_truncation)] // offset < span <= 359
            let port = RESV_PORT_MIN + offset as u16;
            let (socket, local) = match addr {
                SocketAddr::V4(_) => (
                    TcpSocket::new_v4()?,
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
                ),
                SocketAddr::V6(_) => (
                    TcpSocket::new_v6()?,
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
                ),
            };
            // Lets the bind succeed while an earlier connection from this port sits in TIME_WAIT (our side
            // closes first when a connection is dropped); a connect whose exact 4-tuple is still in
            // TIME_WAIT fails with EADDRNOTAVAIL below and the next port is tried.
            socket.set_reuseaddr(true)?;
            match socket.bind(local) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    self.resv_denied.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
            match socket.connect(addr).await {
                Ok(s) => return Ok(Some(s)),
                // The 4-tuple is still in TIME_WAIT from an earlier connection: next port.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse
                    ) =>
                {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "all reserved source ports (665-1023) are in use",
            )
        }))
    }

    /// Asks the portmapper on port 111 for the TCP port of `prog`/`vers`.
    pub async fn portmap(&self, host: IpAddr, prog: u32, vers: u32) -> Result<u16, String> {
        let addr = SocketAddr::new(host, nfs3_client::nfs3_types::portmap::PMAP_PORT);
        let stream = self
            .connect(addr)
            .await
            .map_err(|e| format!("portmapper {addr}: {e}"))?;
        let mut pm = PortmapperClient::new(Stream::new(stream));
        match tokio::time::timeout(
            self.timeo,
            pm.getport(prog, vers, nfs3_client::nfs3_types::portmap::IPPROTO_TCP),
        )
        .await
        {
            Ok(Ok(port)) => Ok(port),
            Ok(Err(e)) => Err(format!("portmapper {addr}: program {prog} v{vers}: {e}")),
            Err(_) => Err(format!("portmapper {addr}: no answer within {:?}", self.timeo)),
        }
    }

    pub fn mount_client(&self, stream: TcpStream) -> MountClient<Io> {
        MountClient::new_with_auth(Stream::new(stream), credential(), opaque_auth::default())
    }
}

pub(crate) struct Pool {
    addr: SocketAddr,
    connector: Connector,
    timeo: Duration,
    retrans: u32,
    idle: Mutex<Vec<Client>>,
    permits: Permits,
}

/// How many calls may be in flight on a pool (one per connection): a number that only grows, up
/// to [`MAX_CONNECTIONS`]. Shared by the NFSv3 and NFSv4.1 pools.
pub(crate) struct Permits {
    semaphore: Semaphore,
    size: AtomicUsize,
}

impl Permits {
    pub fn new(size: usize) -> Self {
        let size = size.clamp(1, MAX_CONNECTIONS);
        Permits {
            semaphore: Semaphore::new(size),
            size: AtomicUsize::new(size),
        }
    }

    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Raises the number to `to`, at most [`MAX_CONNECTIONS`]; never lowers it.
    pub fn grow(&self, to: usize) {
        let to = to.min(MAX_CONNECTIONS);
        let mut size = self.size.load(Ordering::Relaxed);
        while size < to {
            match self
                .size
                .compare_exchange(size, to, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.semaphore.add_permits(to - size);
                    return;
                }
                Err(now) => size = now,
            }
        }
    }

    /// A permit to call; waiting for one is not counted against any deadline.
    pub async fn acquire(&self) -> Result<tokio::sync::SemaphorePermit<'_>, tokio::sync::AcquireError> {
        self.semaphore.acquire().await
    }

    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

impl Pool {
    pub fn new(addr: SocketAddr, connector: Connector, timeo: Duration, retrans: u32, size: usize) -> Self {
        let size = size.max(1);
        Self {
            addr,
            connector,
            timeo,
            retrans,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Permits::new(size),
        }
    }

    pub fn size(&self) -> usize {
        self.permits.size()
    }

    /// Raises the number of connections (and so of calls in flight) to `to`, at most
    /// [`MAX_CONNECTIONS`]; never lowers it. The new connections are opened when first needed and then
    /// stay in the pool like the others.
    pub fn grow(&self, to: usize) {
        self.permits.grow(to);
    }

    pub fn uses_resvport(&self) -> bool {
        self.connector.uses_resvport()
    }

    /// Longest a call can take before it fails with a timeout.
    pub fn deadline(&self) -> Duration {
        self.timeo * (self.retrans + 1)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn new_client(&self, deadline: Instant) -> Result<Client, Failure> {
        let stream = match tokio::time::timeout_at(deadline, self.connector.connect_inner(self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::Rpc(format!("connect to {}: {e}", self.addr))),
            Err(_) => return Err(Failure::TimedOut(self.timeo)),
        };
        Ok(Nfs3Client::new_with_auth(
            Stream::new(stream),
            credential(),
            opaque_auth::default(),
        ))
    }

    /// Takes a permit (waiting for one does not count against the deadline) and a connection (idle, or a
    /// new one, connected by `deadline`).
    pub async fn lease(&self) -> Result<Lease<'_>, Failure> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Failure::Rpc("connection pool closed".into()))?;
        let deadline = Instant::now() + self.timeo;
        let pooled = self.idle().pop();
        let reused = pooled.is_some();
        let client = match pooled {
            Some(c) => c,
            None => self.new_client(deadline).await?,
        };
        Ok(Lease {
            client,
            reused,
            deadline,
            _permit: permit,
        })
    }

    /// What to do after a failed connect: retry (after a short pause if the server refused at once), or
    /// give up.
    pub async fn connect_failed<T>(&self, st: &mut Attempt, failure: Failure) -> Step<T> {
        if st.attempt < self.retrans {
            st.attempt += 1;
            if matches!(failure, Failure::Rpc(_)) {
                // Do not spin against a refusing server.
                tokio::time::sleep(self.timeo.min(Duration::from_millis(200))).await;
            }
            return Step::Retry;
        }
        Step::Done(Err(match failure {
            Failure::TimedOut(_) => Failure::TimedOut(self.timeo * (st.attempt + 1)),
            f @ Failure::Rpc(_) => f,
        }))
    }

    /// Settles one attempt of a call (see the module docs for the rules).
    pub fn settle<T>(
        &self,
        st: &mut Attempt,
        lease: Lease<'_>,
        result: Result<Result<T, RpcError>, tokio::time::error::Elapsed>,
    ) -> Step<T> {
        let Lease { client, reused, .. } = lease;
        match result {
            Ok(Ok(value)) => {
                self.idle().push(client);
                Step::Done(Ok(Sent {
                    value,
                    resent: st.sent_once,
                }))
            }
            Ok(Err(e)) if e.is_connection_reusable() => {
                self.idle().push(client);
                Step::Done(Err(Failure::Rpc(e.to_string())))
            }
            Ok(Err(e)) => {
                drop(client);
                st.sent_once = true;
                if reused && st.free_retry {
                    // Probably a connection the server closed while it sat idle: all idle ones are suspect.
                    st.free_retry = false;
                    self.idle().clear();
                    return Step::Retry;
                }
                if st.attempt < self.retrans {
                    st.attempt += 1;
                    return Step::Retry;
                }
                Step::Done(Err(Failure::Rpc(e.to_string())))
            }
            Err(_elapsed) => {
                // The stream is mid-call: unusable. Dropping closes it; the next attempt reconnects.
                drop(client);
                st.sent_once = true;
                if st.attempt < self.retrans {
                    st.attempt += 1;
                    return Step::Retry;
                }
                Step::Done(Err(Failure::TimedOut(self.timeo * (st.attempt + 1))))
            }
        }
    }
}

/// A connection and the permit to use it; dropped without [`Pool::settle`] it is closed.
pub(crate) struct Lease<'a> {
    pub client: Client,
    reused: bool,
    /// End of this attempt: connect and call together get `timeo`.
    pub deadline: Instant,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

/// Retry state of one call.
pub(crate) struct Attempt {
    attempt: u32,
    sent_once: bool,
    free_retry: bool,
}

impl Attempt {
    pub fn new() -> Self {
        Self {
            attempt: 0,
            sent_once: false,
            free_retry: true,
        }
    }
}

pub(crate) enum Step<T> {
    Retry,
    Done(Result<Sent<T>, Failure>),
}

/// Runs one RPC on the pool: `call!(pool, |c| c.lookup(&args))`. A macro rather than a function taking
/// an async closure, because the futures must stay `Send` for `tokio::spawn` (async closures over a
/// `&mut` argument currently lose that).
macro_rules! call {
    ($pool:expr, |$c:ident| $call:expr) => {{
        let pool: &$crate::storage::nfs3::rpc::Pool = &$pool;
        let mut st = $crate::storage::nfs3::rpc::Attempt::new();
        loop {
            let mut lease = match pool.lease().await {
                Ok(lease) => lease,
                Err(f) => match pool.connect_failed(&mut st, f).await {
                    $crate::storage::nfs3::rpc::Step::Retry => continue,
                    $crate::storage::nfs3::rpc::Step::Done(r) => break r,
                },
            };
            let result = {
                let deadline = lease.deadline;
                let $c = &mut lease.client;
                tokio::time::timeout_at(deadline, $call).await
            };
            match pool.settle(&mut st, lease, result) {
                $crate::storage::nfs3::rpc::Step::Retry => continue,
                $crate::storage::nfs3::rpc::Step::Done(r) => break r,
            }
        }
    }};
}
pub(crate) use call;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    use nfs3_client::nfs3_types::nfs3::{GETATTR3args, nfs_fh3};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that accepts connections and then either hangs up after reading the request (a clean
    /// FIN, as from a restarted server) or never answers.
    async fn fake_server(hang_up: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                if hang_up {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                } else {
                    held.push(stream); // keep it open, never reply
                }
            }
        });
        (addr, accepted)
    }

    async fn getattr(pool: &Pool) -> Result<Sent<()>, Failure> {
        let args = GETATTR3args {
            object: nfs_fh3::default(),
        };
        call!(pool, |c| async { c.getattr(&args).await.map(drop) })
    }

    #[tokio::test]
    async fn a_silent_server_fails_the_call_after_timeo_per_attempt_on_a_new_connection_each() {
        let (addr, accepted) = fake_server(false).await;
        let timeo = Duration::from_millis(200);
        let pool = Pool::new(addr, Connector::new(false, timeo), timeo, 2, 4);
        let start = Instant::now();
        let err = getattr(&pool).await.err().unwrap();
        let took = start.elapsed();
        assert!(
            matches!(err, Failure::TimedOut(d) if d == Duration::from_millis(600)),
            "{err:?}"
        );
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_millis(900),
            "{took:?}"
        );
        // Each timed-out connection was dropped and a new one made for the resend.
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
        assert_eq!(pool.deadline(), Duration::from_millis(600));
    }

    #[tokio::test]
    async fn a_server_that_hangs_up_fails_the_call_at_once_instead_of_spinning_until_the_deadline() {
        let (addr, accepted) = fake_server(true).await;
        let timeo = Duration::from_secs(5);
        let pool = Pool::new(addr, Connector::new(false, timeo), timeo, 1, 4);
        let start = Instant::now();
        let err = getattr(&pool).await.err().unwrap();
        assert!(matches!(&err, Failure::Rpc(m) if m.contains("closed")), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        assert_eq!(accepted.load(Ordering::Relaxed), 2); // first send + one resend
    }

    #[test]
    fn the_pool_grows_on_request_up_to_the_maximum_and_never_shrinks() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        let timeo = Duration::from_secs(1);
        let pool = Pool::new(addr, Connector::new(false, timeo), timeo, 0, 16);
        pool.grow(8);
        assert_eq!((pool.size(), pool.permits.available()), (16, 16));
        pool.grow(32);
        assert_eq!((pool.size(), pool.permits.available()), (32, 32));
        pool.grow(10_000);
        assert_eq!(
            (pool.size(), pool.permits.available()),
            (MAX_CONNECTIONS, MAX_CONNECTIONS)
        );
    }

    #[tokio::test]
    async fn a_refused_connect_is_retried_retrans_times_then_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let timeo = Duration::from_millis(50);
        let pool = Pool::new(addr, Connector::new(false, timeo), timeo, 2, 1);
        let err = getattr(&pool).await.err().unwrap();
        assert!(
            matches!(&err, Failure::Rpc(m) if m.starts_with(&format!("connect to {addr}"))),
            "{err:?}"
        );
    }
}
