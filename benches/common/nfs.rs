//! The NFS server side of the benchmarks: an nfs-ganesha container (scripts/nfs-server.sh), a
//! userspace delay proxy that adds a round-trip time (the kernel has no netem), calibrated
//! against the server's own round trip, and clients of the provisioner's own NFSv3 transport.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nfs_subdir_provisioner::core::export::{ClientOptions, Export, NfsVersion};
use nfs_subdir_provisioner::storage::nfs3::Nfs3Transport;
use nfs_subdir_provisioner::storage::nfs4::Nfs4Transport;
use nfs_subdir_provisioner::storage::{Backend, Volumes};

use super::proc_stat;

pub const SERVER: &str = "127.0.0.1";
/// The test server's No_Root_Squash export (tests/nfs/server/ganesha.conf).
pub const SHARE: &str = "/export";
/// FSSTAT round trips timed to report the real RTT.
pub const RTT_SAMPLES: usize = 1000;
/// Attempts to bring the proxy's added round trip within 5% of the nominal one.
const CALIBRATION_ROUNDS: usize = 4;

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// The NFS server

/// An nfs-ganesha container of scripts/nfs-server.sh, removed on drop.
pub struct Ganesha {
    pub name: String,
    pub nfs_port: u16,
    pub mount_port: u16,
    /// Host directory behind [`SHARE`].
    pub export_dir: PathBuf,
    /// ganesha.nfsd's pid (the container's init: the entrypoint `exec`s it).
    pub pid: u32,
}

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nfs-server.sh")
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((SERVER, 0))?.local_addr()?.port())
}

impl Ganesha {
    pub fn start(label: &str, hostdir: &Path) -> Result<Ganesha> {
        let name = format!("{label}-{}", std::process::id());
        let nfs_port = free_port()?;
        let mount_port = loop {
            let p = free_port()?;
            if p != nfs_port {
                break p;
            }
        };
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(script())
            .args(["start", &name])
            .arg(hostdir)
            .args([nfs_port.to_string(), mount_port.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .context("running scripts/nfs-server.sh")?;
        // From here on the container may exist: remove it on every error.
        let mut ganesha = Ganesha {
            name,
            nfs_port,
            mount_port,
            export_dir: hostdir.join("export"),
            pid: 0,
        };
        ensure!(
            out.status.success(),
            "scripts/nfs-server.sh start failed ({})",
            out.status
        );
        ganesha.pid = container_pid(&ganesha.name)?;
        eprintln!(
            "bench: ganesha {} (pid {}) serves {SERVER}:{nfs_port} (NFS) / :{mount_port} (MOUNT), \
             started in {:.1} s",
            ganesha.name,
            ganesha.pid,
            started.elapsed().as_secs_f64()
        );
        Ok(ganesha)
    }

    /// Restarts the container (a fresh ganesha: no cache, no state from earlier cases) and waits
    /// until it answers again.
    pub fn restart(&mut self) -> Result<()> {
        let ok = Command::new("podman")
            .args(["restart", "--time", "0", &self.name])
            .stdout(Stdio::null())
            .status()
            .context("podman restart")?
            .success();
        ensure!(ok, "podman restart {} failed", self.name);
        let out = Command::new("bash")
            .arg(script())
            .args(["wait", &self.name])
            .stderr(Stdio::null())
            .output()
            .context("running scripts/nfs-server.sh wait")?;
        ensure!(
            out.status.success(),
            "{} did not answer after a restart",
            self.name
        );
        self.pid = container_pid(&self.name)?;
        Ok(())
    }

    /// ganesha's CPU seconds so far (utime + stime).
    pub fn cpu(&self, ticks: f64) -> f64 {
        proc_stat(self.pid)
            .map(|s| s.cpu_ticks)
            .map_or(f64::NAN, |t| t as f64 / ticks)
    }

    pub fn version(&self) -> String {
        Command::new("podman")
            .args([
                "exec",
                &self.name,
                "dpkg-query",
                "-W",
                "-f",
                "${Version}",
                "nfs-ganesha",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map_or_else(
                || "unknown".into(),
                |o| String::from_utf8_lossy(&o.stdout).into_owned(),
            )
    }
}

pub fn container_pid(name: &str) -> Result<u32> {
    let out = Command::new("podman")
        .args(["inspect", "--format", "{{.State.Pid}}", name])
        .output()
        .context("podman inspect")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the pid of container {name}"))
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", &self.name])
            .stdout(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// The delay proxy

/// A chunk of bytes to deliver at `due` to `to`, or the end of a direction.
pub enum Delivery {
    Data {
        due: Instant,
        to: Arc<TcpStream>,
        bytes: Vec<u8>,
    },
    Close(Arc<TcpStream>),
}

/// Listens on a free port of 127.0.0.1 and forwards every connection to `upstream`, delivering
/// each chunk from the client `delay` after it was read, and each chunk from the server at once.
/// Runs until the process exits.
///
/// The whole added round trip is on the way to the server: a client that waits for its replies
/// (every RPC here) sees the same round trip as with half of it each way, and replies need no
/// second timed hop, which halves the proxy's thread wake-ups (on this machine every wake-up is
/// expensive, and the proxy shares the cores with ganesha and the client).
///
/// Two threads for all connections: a tokio current-thread runtime reads every socket, timestamps
/// each chunk from a client as it arrives, and writes each chunk from the server straight to its
/// client; one writer thread sleeps (`clock_nanosleep`, accurate to tens of µs, unlike tokio's 1 ms
/// timer) until the oldest client chunk is due and writes it. Every chunk has the same delay, so
/// arrival order is due order, and nothing waits behind a chunk that is not due: throughput is not
/// limited.
pub fn delay_proxy(upstream: SocketAddr, delay: Arc<AtomicU64>) -> Result<u16> {
    let listener = TcpListener::bind((SERVER, 0))?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel::<Delivery>();
    thread::Builder::new()
        .name("delay-writer".into())
        .spawn(move || {
            while let Ok(delivery) = rx.recv() {
                match delivery {
                    Delivery::Data { due, to, bytes } => {
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                        // A failed write is a closed connection: its reader ends it.
                        let _ = write_all(&to, &bytes);
                    }
                    Delivery::Close(to) => {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                }
            }
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    thread::Builder::new()
        .name("delay-reader".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(link) = Link::connect(client, upstream).await else {
                        continue;
                    };
                    tokio::spawn(delayed(
                        link.from_client,
                        link.to_server,
                        Arc::clone(&delay),
                        tx.clone(),
                    ));
                    tokio::spawn(direct(link.from_server, link.to_client));
                }
            });
        })?;
    Ok(port)
}

/// One proxied connection: the client's socket and a new one to the server.
pub struct Link {
    from_client: tokio::net::tcp::OwnedReadHalf,
    to_client: tokio::net::tcp::OwnedWriteHalf,
    from_server: tokio::net::TcpStream,
    /// Written by the writer thread (a blocking-style write on the non-blocking socket: see
    /// [`write_all`]).
    to_server: Arc<TcpStream>,
}

impl Link {
    pub async fn connect(client: tokio::net::TcpStream, upstream: SocketAddr) -> std::io::Result<Link> {
        let server = tokio::net::TcpStream::connect(upstream).await?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        let (from_client, to_client) = client.into_split();
        let server = server.into_std()?;
        let to_server = Arc::new(server.try_clone()?);
        Ok(Link {
            from_client,
            to_client,
            from_server: tokio::net::TcpStream::from_std(server)?,
            to_server,
        })
    }
}

/// Reads `from` (a client) until it ends, handing every chunk to the writer thread, due `delay`
/// (nanoseconds) from now.
pub async fn delayed(
    from: tokio::net::tcp::OwnedReadHalf,
    to: Arc<TcpStream>,
    delay: Arc<AtomicU64>,
    tx: mpsc::Sender<Delivery>,
) {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if from.readable().await.is_err() {
            break;
        }
        match from.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let delivery = Delivery::Data {
                    due: Instant::now() + Duration::from_nanos(delay.load(Ordering::Relaxed)),
                    to: Arc::clone(&to),
                    bytes: buf[..n].to_vec(),
                };
                if tx.send(delivery).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    let _ = tx.send(Delivery::Close(to));
}

/// Copies `from` (the server) to `to` (its client) as it comes, until either side ends.
pub async fn direct(mut from: tokio::net::TcpStream, mut to: tokio::net::tcp::OwnedWriteHalf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// `write_all` on a non-blocking socket (it shares its file description with the tokio reader).
pub fn write_all(to: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match (&*to).write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_micros(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /proc

/// CPU seconds of this process's delay proxy threads so far (`/proc/self/task/*/schedstat`: run
/// time in ns, not tick-sampled).
pub fn proxy_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("delay-") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

/// One export's volume operations over the NFSv3 transport, as the provisioner has them.
pub type Client = Volumes<Nfs3Transport>;

/// A client of [`SHARE`] with `connections` connections, its NFS requests to `port`.
pub async fn connect(port: u16, mount_port: u16, connections: usize) -> Result<Client> {
    let export = Export {
        server: SERVER.to_owned(),
        path: SHARE.to_owned(),
    };
    let transport = Nfs3Transport::connect(export, client_options(port, mount_port), connections).await?;
    Ok(Volumes::new(transport))
}

/// The same over NFSv4.1: requests to `port` only (no MOUNT).
pub async fn connect_v41(port: u16, connections: usize) -> Result<Volumes<Nfs4Transport>> {
    let export = Export {
        server: SERVER.to_owned(),
        path: SHARE.to_owned(),
    };
    let options = ClientOptions {
        version: NfsVersion::V4_1,
        ..client_options(port, 0)
    };
    let transport = Nfs4Transport::connect(export, options, connections).await?;
    Ok(Volumes::new(transport))
}

pub fn client_options(port: u16, mount_port: u16) -> ClientOptions {
    ClientOptions {
        port: Some(port),
        mount_port: Some(mount_port),
        // The provisioner's defaults (timeo=100, retrans=2). `noresvport`: the bench opens and
        // closes hundreds of connections, more than the 359 reserved ports a TIME_WAIT minute
        // allows; the port does not change the timing.
        timeout: Duration::from_secs(10),
        retrans: 2,
        resvport: false,
        ..ClientOptions::default()
    }
}

/// Opens the pool's connections (a connection is made on first use; the provisioner's pool is
/// warm after its first operations), so that connect time is not part of a delete.
pub async fn warm_up<B: Backend + ?Sized>(export: &B, connections: usize) -> Result<()> {
    for _ in 0..3 {
        futures::future::try_join_all((0..connections).map(|_| export.capacity())).await?;
    }
    Ok(())
}

/// FSSTAT sent one at a time: median duration, and CPU per call.
pub async fn round_trip(export: &Client, ganesha: &Ganesha, ticks: f64) -> Result<RoundTrip> {
    for _ in 0..20 {
        export.capacity().await?;
    }
    let me = std::process::id();
    let bench_before = proc_stat(me).map_or(0, |s| s.cpu_ticks);
    let proxy_before = proxy_cpu();
    let ganesha_before = ganesha.cpu(ticks);
    let mut samples = Vec::with_capacity(RTT_SAMPLES);
    for _ in 0..RTT_SAMPLES {
        let start = Instant::now();
        export.capacity().await?;
        samples.push(start.elapsed());
    }
    let per_call = |seconds: f64| Duration::from_secs_f64((seconds / RTT_SAMPLES as f64).max(0.0));
    let ganesha_cpu = per_call(ganesha.cpu(ticks) - ganesha_before);
    let bench_cpu = per_call(
        proc_stat(me)
            .map_or(0, |s| s.cpu_ticks)
            .saturating_sub(bench_before) as f64
            / ticks,
    );
    let proxy_cpu = per_call(proxy_cpu() - proxy_before);
    samples.sort();
    Ok(RoundTrip {
        median: samples[samples.len() / 2],
        ganesha_cpu,
        bench_cpu,
        proxy_cpu,
    })
}

/// One RPC (FSSTAT) sent serially, [`RTT_SAMPLES`] times: the median round trip, and the CPU
/// time per call of ganesha and of the bench process (client, and the proxy if any).
#[derive(Debug, Clone, Copy)]
pub struct RoundTrip {
    pub median: Duration,
    pub ganesha_cpu: Duration,
    pub bench_cpu: Duration,
    /// Of `bench_cpu`: the delay proxy's threads.
    pub proxy_cpu: Duration,
}

/// The NFS port to reach `ganesha` through for every added round-trip time (its own for 0, a
/// delay proxy's otherwise; the proxy's delay calibrated so that a serial FSSTAT through it takes
/// the added time longer than without it: needs 0 first), and the round trip measured for each.
pub async fn ports_with_added_rtts(
    ganesha: &Ganesha,
    rtts_wanted: &[Duration],
    ticks: f64,
) -> Result<(BTreeMap<Duration, u16>, BTreeMap<Duration, RoundTrip>)> {
    // The NFS port for every RTT: ganesha's, or a delay proxy in front of it.
    let upstream = SocketAddr::new(SERVER.parse()?, ganesha.nfs_port);
    let mut ports = BTreeMap::new();
    let mut rtts: BTreeMap<Duration, RoundTrip> = BTreeMap::new();
    for &rtt in rtts_wanted {
        // The proxy's delay on the way to the server (all of the added round trip).
        let delay = Arc::new(AtomicU64::new(nanos(rtt)));
        let port = if rtt.is_zero() {
            ganesha.nfs_port
        } else {
            delay_proxy(upstream, Arc::clone(&delay))?
        };
        ports.insert(rtt, port);
        let serial = connect(port, ganesha.mount_port, 1).await?;
        let mut measured = round_trip(&serial, ganesha, ticks).await?;
        // Calibration: waking the proxy's threads takes time too (0.1–0.2 ms here), so shorten its
        // sleep until the round trip exceeds the one without proxy by `rtt`.
        if let Some(base) = rtts.get(&Duration::ZERO).map(|r| r.median)
            && !rtt.is_zero()
        {
            for _ in 0..CALIBRATION_ROUNDS {
                let added = measured.median.saturating_sub(base);
                let error = added.as_secs_f64() - rtt.as_secs_f64();
                if error.abs() < rtt.as_secs_f64() * 0.05 {
                    break;
                }
                let now = delay.load(Ordering::Relaxed) as f64;
                let next = (now - error * 1e9).clamp(0.0, nanos(rtt) as f64);
                delay.store(next as u64, Ordering::Relaxed);
                measured = round_trip(&serial, ganesha, ticks).await?;
            }
            eprintln!(
                "bench: added RTT {rtt:?}: the proxy delays requests by {:?}",
                Duration::from_nanos(delay.load(Ordering::Relaxed))
            );
        }
        eprintln!(
            "bench: added RTT {rtt:?}: one FSSTAT takes {:.3} ms (median of {RTT_SAMPLES}); CPU per \
             call: ganesha {} µs, bench {} µs (proxy {} µs)",
            measured.median.as_secs_f64() * 1000.0,
            measured.ganesha_cpu.as_micros(),
            measured.bench_cpu.as_micros(),
            measured.proxy_cpu.as_micros()
        );
        rtts.insert(rtt, measured);
    }

    Ok((ports, rtts))
}
