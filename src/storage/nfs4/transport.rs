//! The NFSv4.1 transport: an export reached by our own client on the server's one NFS port (no
//! portmapper, no MOUNT), through a pool of sessions ([`super::pool`]). Every primitive is one
//! COMPOUND where NFSv3 needed several requests, and the honest differences from POSIX stay
//! here, as in the NFSv3 transport:
//! * RENAME replaces an empty directory (and reports a full one as EXIST): the no-replace rename
//!   claims its target with an exclusive CREATE of an empty mode-000 directory first.
//! * REMOVE removes any type: the type is checked by LOOKUP and VERIFY (or NVERIFY) in the same
//!   COMPOUND, just before it.
//! * Files are created with OPEN EXCLUSIVE4_1 and, for a record, written and closed in the same
//!   COMPOUND; reads and later writes use the anonymous stateid, so no open state is held.
//! * A request the session had to send again on a new session (after a server restart) may have
//!   run twice: EXIST from a create, NOENT from a remove or rename is then interpreted as ours.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use super::attrs::{Attributes, Bitmap, NewAttributes, SetTime, ftype, id, stat_ids};
use super::compound::{
    ANONYMOUS_STATEID, Attributes4, CURRENT_STATEID, Done, NewObject, OpResult, Reply, Stable,
};
use super::error::NfsV4Error;
use super::pool::Pool;
use super::session::{Op, Sent};
use super::status::Status;
use crate::core::export::{ClientOptions, Export};
use crate::core::staging::{CLAIM_MODE, RECORD_FILE_MAX};
use crate::storage::error::{StorageFailure, StorageResult};
use crate::storage::nfs_emulation::{self, Claimed, NfsRequests, OwnerRefusal, RenameAnswer};
use crate::storage::transport::{
    At, Attrs, Capacity, Entry, FileCopied, FileType, Kind, Made, Move, Opened, OpenedFile, Owner, Page,
    ReadFile, Renamed, Stat, Target, Transport, Unlinked,
};

/// The NFS port of NFSv4, where `port=` does not say another.
pub const NFS_PORT: u16 = 2049;
/// Connections (and so requests in flight) a pool allows before a delete grows it, as over NFSv3;
/// each is opened when first needed.
pub const DEFAULT_CONNECTIONS: usize = crate::storage::nfs3::DEFAULT_CONNECTIONS;
/// Bytes one READ or WRITE moves at most, whatever the server offers: the session's requests
/// and replies are sized for it.
const IO_SIZE_MAX: u64 = 1 << 20;
/// Bytes of one READDIR reply.
const READDIR_BYTES: u32 = 32 * 1024;

/// An open directory or file: its handle, and its attributes when it was opened.
#[derive(Debug, Clone)]
pub struct Node {
    pub(super) fh: Arc<[u8]>,
    pub stat: Stat,
}

impl Node {
    fn is_dir(&self) -> bool {
        self.stat.file_type == FileType::Dir
    }
}

/// An open regular file, and the verifier of its UNSTABLE writes, which COMMIT must match.
pub struct NfsFile {
    node: Node,
    unstable: Mutex<Option<[u8; 8]>>,
}

struct Connected {
    pool: Pool,
    root: Node,
    io_size: usize,
}

pub struct Nfs4Transport {
    export: Export,
    options: ClientOptions,
    connected: OnceCell<Arc<Connected>>,
}

/// What the server answered to one COMPOUND: its results and whether it may have run twice.
pub(super) struct Answer {
    reply: Reply,
    resent: bool,
}

impl Answer {
    fn failed(&self) -> Option<(usize, Status)> {
        self.reply.failed()
    }

    fn result(&self, at: usize) -> Option<&Done> {
        self.reply
            .results
            .get(at)
            .and_then(|r: &OpResult| r.done.as_ref())
    }
}

fn status_error(at: At<'_>, status: Status) -> NfsV4Error {
    NfsV4Error::Status {
        op: at.op,
        path: at.path.to_owned(),
        status,
    }
}

fn protocol_error(at: At<'_>, reason: impl Into<String>) -> NfsV4Error {
    NfsV4Error::Protocol {
        op: at.op,
        path: at.path.to_owned(),
        reason: reason.into(),
    }
}

/// The attributes [`Node`] keeps.
fn node_attrs() -> Bitmap {
    Bitmap::of(&stat_ids())
}

fn stat_of(attrs: &Attributes, at: At<'_>) -> Result<Stat, NfsV4Error> {
    attrs.stat().map_err(|e| protocol_error(at, e.to_string()))
}

/// A node from the GETFH and GETATTR results at `fh` and `fh + 1`.
fn node_at(answer: &Answer, fh: usize, at: At<'_>) -> Result<Node, NfsV4Error> {
    match (answer.result(fh), answer.result(fh + 1)) {
        (Some(Done::GetFh(handle)), Some(Done::GetAttr(attrs))) => Ok(Node {
            fh: Arc::from(handle.as_slice()),
            stat: stat_of(attrs, at)?,
        }),
        _ => Err(protocol_error(
            at,
            "the server's reply lacks a file handle or attributes",
        )),
    }
}

impl Nfs4Transport {
    /// Connects on first use.
    pub fn new(export: Export, options: ClientOptions) -> Self {
        Nfs4Transport {
            export,
            options,
            connected: OnceCell::new(),
        }
    }

    /// Connects now, with a pool of `connections`.
    pub async fn connect(export: Export, options: ClientOptions, connections: usize) -> StorageResult<Self> {
        let transport = Nfs4Transport::new(export, options);
        transport.connect_with(connections).await?;
        Ok(transport)
    }

    async fn connect_with(&self, connections: usize) -> StorageResult<&Arc<Connected>> {
        self.connected
            .get_or_try_init(|| async {
                let at = crate::storage::transport::at("connect to", &self.export.path);
                let port = self.options.port.unwrap_or(NFS_PORT);
                let addr = tokio::net::lookup_host((self.export.server.as_str(), port))
                    .await
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(|| protocol_error(at, format!("cannot resolve {}", self.export.server)))?;
                let deadline = self.options.timeout * (self.options.retrans + 1);
                let pool = Pool::new(
                    addr,
                    owner(),
                    self.options.resvport,
                    self.options.timeout,
                    deadline,
                    connections,
                );
                let (root, io_size) = look_up_root(&pool, &self.export.path, at).await?;
                tracing::info!(
                    export = %self.export,
                    nfs = %addr,
                    version = "4.1",
                    connections = pool.size(),
                    "connected to NFS export"
                );
                Ok(Arc::new(Connected { pool, root, io_size }))
            })
            .await
    }

    fn connected(&self) -> &Connected {
        match self.connected.get() {
            Some(c) => c,
            None => unreachable!("a handle exists only once connected"),
        }
    }

    /// One COMPOUND; a failed operation is in the answer, for the caller to interpret.
    async fn call(&self, ops: Vec<Op>, cache_this: bool, at: At<'_>) -> Result<Answer, NfsV4Error> {
        let Sent { value, resent } =
            self.connected()
                .pool
                .call(at.op, ops, cache_this)
                .await
                .map_err(|source| NfsV4Error::Call {
                    op: at.op,
                    path: at.path.to_owned(),
                    source,
                })?;
        Ok(Answer { reply: value, resent })
    }

    /// As [`Nfs4Transport::call`], with any failed operation an error.
    pub(super) async fn call_ok(
        &self,
        ops: Vec<Op>,
        cache_this: bool,
        at: At<'_>,
    ) -> Result<Answer, NfsV4Error> {
        let answer = self.call(ops, cache_this, at).await?;
        match answer.failed() {
            Some((_, status)) => Err(status_error(at, status)),
            None => Ok(answer),
        }
    }

    pub(super) async fn lookup(
        &self,
        dir: &Node,
        name: &[u8],
        at: At<'_>,
    ) -> Result<Option<Node>, NfsV4Error> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Lookup(name.to_vec()),
            Op::GetFh,
            Op::GetAttr(node_attrs()),
        ];
        let answer = self.call(ops, false, at).await?;
        match answer.failed() {
            None => Ok(Some(node_at(&answer, 2, at)?)),
            Some((1, Status::NOENT)) => Ok(None),
            Some((_, status)) => Err(status_error(at, status)),
        }
    }

    async fn set(&self, fh: &[u8], attrs: NewAttributes, at: At<'_>) -> Result<(), NfsV4Error> {
        let ops = vec![
            Op::PutFh(fh.to_vec()),
            Op::SetAttr {
                stateid: ANONYMOUS_STATEID,
                attrs,
            },
        ];
        self.call_ok(ops, true, at).await.map(|_| ())
    }

    /// Creates `name` in `dir` exclusively as a regular file of `mode`, with `content` if
    /// any, closed again and its attributes settled, all in one request. `None`: something is
    /// there.
    pub(super) async fn create(
        &self,
        dir: &Node,
        name: &[u8],
        mode: u32,
        content: Option<&[u8]>,
        at: At<'_>,
    ) -> Result<Option<Node>, NfsV4Error> {
        let client_owner = b"nfs-subdir-provisioner".to_vec();
        let verifier: [u8; 8] = rand_verifier();
        let mut ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::OpenExclusive {
                // Any value: a 4.1 server ignores it and takes the client id from the session
                // (RFC 8881 §18.16.3).
                client: 0,
                owner: client_owner,
                name: name.to_vec(),
                verifier,
                attrs: NewAttributes {
                    mode: Some(mode),
                    ..NewAttributes::default()
                },
            },
            Op::GetFh,
        ];
        if let Some(content) = content {
            ops.push(Op::Write {
                stateid: CURRENT_STATEID,
                offset: 0,
                stable: Stable::FileSync,
                data: content.to_vec(),
            });
        }
        ops.push(Op::Close(CURRENT_STATEID));
        // The server kept our verifier in attributes of the file (its times, as a rule): they are
        // set to what they should be now (RFC 8881 §18.16.4), with the mode, which a server may not
        // have set from OPEN's attributes. CLOSE leaves the file the current handle.
        ops.push(Op::SetAttr {
            stateid: ANONYMOUS_STATEID,
            attrs: NewAttributes {
                mode: Some(mode),
                atime: Some(SetTime::Server),
                mtime: Some(SetTime::Server),
                ..NewAttributes::default()
            },
        });
        ops.push(Op::GetAttr(node_attrs()));
        let last = ops.len() - 1;
        let answer = self.call(ops, true, at).await?;
        match answer.failed() {
            None => {}
            Some((1, Status::EXIST)) if answer.resent => {
                // Ours, from the send before a lost session, if it holds what we wrote.
                return match self.lookup(dir, name, at).await? {
                    Some(node) if node.stat.file_type == FileType::Regular => {
                        let ours = match content {
                            Some(content) => self.read_small(&node, at).await? == content,
                            None => node.stat.size == 0,
                        };
                        Ok(ours.then_some(node))
                    }
                    _ => Ok(None),
                };
            }
            Some((1, Status::EXIST)) => return Ok(None),
            Some((_, status)) => return Err(status_error(at, status)),
        }
        let (Some(Done::GetFh(fh)), Some(Done::GetAttr(attrs))) = (answer.result(2), answer.result(last))
        else {
            return Err(protocol_error(
                at,
                "OPEN's reply lacks a file handle or attributes",
            ));
        };
        Ok(Some(Node {
            fh: Arc::from(fh.as_slice()),
            stat: stat_of(attrs, at)?,
        }))
    }

    async fn read_small(&self, node: &Node, at: At<'_>) -> Result<Vec<u8>, NfsV4Error> {
        let max = u32::try_from(RECORD_FILE_MAX).unwrap_or(u32::MAX);
        let ops = vec![
            Op::PutFh(node.fh.to_vec()),
            Op::Read {
                stateid: ANONYMOUS_STATEID,
                offset: 0,
                count: max,
            },
        ];
        let answer = self.call_ok(ops, false, at).await?;
        match answer.result(1) {
            Some(Done::Read { data, .. }) => Ok(data.clone()),
            _ => Err(protocol_error(at, "READ's reply lacks data")),
        }
    }

    /// LOOKUP `name`, VERIFY (or NVERIFY) that it is (is not) a directory, REMOVE it.
    fn remove_ops(dir: &Node, name: &[u8], kind: Kind) -> Vec<Op> {
        let is_dir = Attributes4::file_type(ftype::DIR);
        vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Lookup(name.to_vec()),
            match kind {
                Kind::Dir => Op::Verify(is_dir),
                Kind::Other => Op::NotVerify(is_dir),
            },
            Op::PutFh(dir.fh.to_vec()),
            Op::Remove(name.to_vec()),
        ]
    }

    fn rename_ops(m: Move<'_, Node>) -> Vec<Op> {
        vec![
            Op::PutFh(m.from_dir.fh.to_vec()),
            Op::SaveFh,
            Op::PutFh(m.to_dir.fh.to_vec()),
            Op::Rename {
                from: m.from.to_vec(),
                to: m.to.to_vec(),
            },
        ]
    }
}

/// This process among a server's clients: the host (the pod's name) and the process id, so that
/// replicas and restarts are told apart.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("nfs-subdir-provisioner/{host}/{}", std::process::id())
}

fn rand_verifier() -> [u8; 8] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish().to_be_bytes()
}

/// The export's root, reached from the server's pseudo root one component at a time, and the
/// transfer size the server offers.
async fn look_up_root(pool: &Pool, path: &str, at: At<'_>) -> Result<(Node, usize), NfsV4Error> {
    let mut ops = vec![Op::PutRootFh];
    ops.extend(
        path.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| Op::Lookup(c.as_bytes().to_vec())),
    );
    let fh_at = ops.len();
    ops.push(Op::GetFh);
    let mut wanted = stat_ids();
    wanted.extend([id::MAXREAD, id::MAXWRITE]);
    ops.push(Op::GetAttr(Bitmap::of(&wanted)));
    ops.push(Op::SecInfoNoName);
    let Sent { value: reply, .. } =
        pool.call(at.op, ops, false)
            .await
            .map_err(|source| NfsV4Error::Call {
                op: at.op,
                path: at.path.to_owned(),
                source,
            })?;
    let answer = Answer { reply, resent: false };
    if let Some((_, status)) = answer.failed() {
        return Err(status_error(at, status));
    }
    let root = node_at(&answer, fh_at, at)?;
    if !root.is_dir() {
        return Err(protocol_error(at, "the export is not a directory"));
    }
    if let Some(Done::SecInfo(flavors)) = answer.result(fh_at + 2)
        && !flavors.is_empty()
        && !flavors.contains(&1)
    {
        return Err(protocol_error(
            at,
            format!(
                "the export does not accept AUTH_SYS (it offers flavors {flavors:?}): add sec=sys on the server"
            ),
        ));
    }
    let io_size = match answer.result(fh_at + 1) {
        Some(Done::GetAttr(attrs)) => [attrs.maxread, attrs.maxwrite, Some(IO_SIZE_MAX)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(IO_SIZE_MAX),
        _ => IO_SIZE_MAX,
    };
    Ok((root, usize::try_from(io_size).unwrap_or(64 * 1024).max(4096)))
}

fn is_claim(node: &Node) -> bool {
    node.is_dir() && node.stat.mode & 0o7777 == CLAIM_MODE
}

fn restarted(at: At<'_>) -> NfsV4Error {
    protocol_error(
        at,
        "the server restarted while the file was written (its write verifier changed); unstable writes may be lost",
    )
}

/// The owner, mode, size and times of `attrs` as NFSv4 sets them (the owner only if `with_owner`).
fn new_attributes(attrs: &Attrs, with_owner: bool) -> NewAttributes {
    let (atime, mtime) = attrs.times.map_or((None, None), |(a, m)| {
        (Some(SetTime::Client(a)), Some(SetTime::Client(m)))
    });
    NewAttributes {
        size: attrs.size,
        mode: attrs.mode,
        uid: attrs.uid.filter(|_| with_owner),
        gid: attrs.gid.filter(|_| with_owner),
        atime,
        mtime,
    }
}

impl NfsRequests for Nfs4Transport {
    type Node = Node;
    type File = NfsFile;

    fn file_node(file: &NfsFile) -> &Node {
        &file.node
    }

    fn owner(node: &Node) -> (u32, u32) {
        (node.stat.uid, node.stat.gid)
    }

    fn not_found(at: At<'_>) -> StorageFailure {
        status_error(at, Status::NOENT).into()
    }

    async fn look_up(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Node>> {
        Ok(self.lookup(dir, name, at).await?)
    }

    fn is_claim(node: &Node) -> bool {
        is_claim(node)
    }

    fn file_id(node: &Node) -> u64 {
        node.stat.id
    }

    async fn make_claim(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Claimed> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Create {
                object: NewObject::Dir,
                name: name.to_vec(),
                attrs: NewAttributes {
                    mode: Some(CLAIM_MODE),
                    ..NewAttributes::default()
                },
            },
        ];
        let answer = self.call(ops, true, at).await?;
        match answer.failed() {
            None => Ok(Claimed::New),
            Some((1, Status::EXIST)) => Ok(Claimed::Exists {
                resent: answer.resent,
            }),
            Some((_, status)) => Err(status_error(at, status).into()),
        }
    }

    async fn drop_claim(&self, dir: &Node, name: &[u8], at: At<'_>) {
        let _ = self.call(Self::remove_ops(dir, name, Kind::Dir), true, at).await;
    }

    async fn rename_once(&self, m: Move<'_, Node>, at: At<'_>) -> StorageResult<RenameAnswer> {
        let answer = self.call(Self::rename_ops(m), true, at).await?;
        match answer.failed() {
            None => Ok(RenameAnswer::Done),
            Some((3, Status::NOENT)) => Ok(RenameAnswer::SourceMissing {
                resent: answer.resent,
            }),
            // v4 reports a full target directory as EXIST (RFC 8881 §18.26.3); servers differ.
            Some((3, Status::EXIST | Status::NOTEMPTY | Status::NOTDIR | Status::ISDIR)) => {
                Ok(RenameAnswer::Taken)
            }
            Some((_, status)) => Err(status_error(at, status).into()),
        }
    }

    async fn set_once(&self, node: &Node, attrs: &Attrs, with_owner: bool, at: At<'_>) -> StorageResult<()> {
        Ok(self.set(&node.fh, new_attributes(attrs, with_owner), at).await?)
    }

    fn owner_refusal(failure: &StorageFailure) -> Option<OwnerRefusal> {
        match failure.transport::<NfsV4Error>()?.status()? {
            Status::PERM => Some(OwnerRefusal::NotPermitted),
            Status::INVAL => Some(OwnerRefusal::Invalid),
            Status::ACCESS => Some(OwnerRefusal::AccessDenied),
            _ => None,
        }
    }
}

impl Transport for Nfs4Transport {
    type Dir = Node;
    type Cursor = (u64, [u8; 8]);
    type File = NfsFile;

    async fn root(&self) -> StorageResult<Node> {
        Ok(self.connect_with(DEFAULT_CONNECTIONS).await?.root.clone())
    }

    async fn open_dir(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Opened<Node>> {
        Ok(match self.lookup(dir, name, at).await? {
            None => Opened::Missing,
            Some(n) if n.is_dir() => Opened::Dir(n),
            Some(_) => Opened::NotDir,
        })
    }

    async fn stat(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Stat>> {
        Ok(self.lookup(dir, name, at).await?.map(|n| n.stat))
    }

    async fn dir_stat(&self, dir: &Node, _at: At<'_>) -> StorageResult<Stat> {
        Ok(dir.stat)
    }

    async fn parent(&self, dir: &Node, at: At<'_>) -> StorageResult<Node> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::LookupParent,
            Op::GetFh,
            Op::GetAttr(node_attrs()),
        ];
        let answer = self.call_ok(ops, false, at).await?;
        let node = node_at(&answer, 2, at)?;
        if node.is_dir() {
            Ok(node)
        } else {
            Err(status_error(at, Status::STALE).into())
        }
    }

    async fn mkdir(&self, dir: &Node, name: &[u8], mode: u32, at: At<'_>) -> StorageResult<Made<Node>> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Create {
                object: NewObject::Dir,
                name: name.to_vec(),
                attrs: NewAttributes {
                    mode: Some(mode),
                    ..NewAttributes::default()
                },
            },
            Op::GetFh,
            Op::GetAttr(node_attrs()),
        ];
        let answer = self.call(ops, true, at).await?;
        match answer.failed() {
            None => Ok(Made::New(node_at(&answer, 2, at)?)),
            // Our send before a lost session made it.
            Some((1, Status::EXIST)) if answer.resent => match self.lookup(dir, name, at).await? {
                Some(n) if n.is_dir() => Ok(Made::New(n)),
                _ => Ok(Made::Exists),
            },
            Some((1, Status::EXIST)) => Ok(Made::Exists),
            Some((_, status)) => Err(status_error(at, status).into()),
        }
    }

    async fn chown(
        &self,
        dir: &Node,
        uid: Option<u32>,
        gid: Option<u32>,
        best_effort: bool,
        at: At<'_>,
    ) -> StorageResult<()> {
        nfs_emulation::chown(self, dir, uid, gid, best_effort, at).await
    }

    async fn chmod(&self, dir: &Node, mode: u32, at: At<'_>) -> StorageResult<()> {
        let attrs = NewAttributes {
            mode: Some(mode),
            ..NewAttributes::default()
        };
        Ok(self.set(&dir.fh, attrs, at).await?)
    }

    async fn rename_noreplace(
        &self,
        m: Move<'_, Node>,
        from_id: u64,
        reuse_claim: bool,
        at: At<'_>,
    ) -> StorageResult<Renamed> {
        nfs_emulation::rename_noreplace(self, m, from_id, reuse_claim, at).await
    }

    async fn rename(&self, m: Move<'_, Node>, at: At<'_>) -> StorageResult<Renamed> {
        let answer = self.call(Self::rename_ops(m), true, at).await?;
        match answer.failed() {
            None => Ok(Renamed::Done),
            Some((3, Status::NOENT)) if answer.resent && self.lookup(m.to_dir, m.to, at).await?.is_some() => {
                Ok(Renamed::Done)
            }
            Some((3, Status::NOENT)) => Ok(Renamed::SourceMissing),
            Some((3, Status::EXIST | Status::NOTEMPTY)) => Ok(Renamed::Taken),
            Some((_, status)) => Err(status_error(at, status).into()),
        }
    }

    async fn write_file(&self, dir: &Node, name: &[u8], content: &[u8], at: At<'_>) -> StorageResult<bool> {
        Ok(self.create(dir, name, 0o600, Some(content), at).await?.is_some())
    }

    async fn read_file(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<ReadFile> {
        let max = u32::try_from(RECORD_FILE_MAX).unwrap_or(u32::MAX);
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Lookup(name.to_vec()),
            Op::Verify(Attributes4::file_type(ftype::REG)),
            Op::Read {
                stateid: ANONYMOUS_STATEID,
                offset: 0,
                count: max,
            },
        ];
        let answer = self.call(ops, false, at).await?;
        Ok(match answer.failed() {
            None => match answer.result(3) {
                Some(Done::Read { data, .. }) => ReadFile::Data(data.clone()),
                _ => return Err(protocol_error(at, "READ's reply lacks data").into()),
            },
            Some((1, Status::NOENT)) => ReadFile::Missing,
            Some((2, Status::NOT_SAME)) => ReadFile::NotAFile,
            Some((_, status)) => return Err(status_error(at, status).into()),
        })
    }

    /// READDIR asks for each entry's attributes and handle whether or not the caller wants them:
    /// one request either way.
    async fn read_dir(
        &self,
        dir: &Node,
        from: Option<(u64, [u8; 8])>,
        _attrs: bool,
        at: At<'_>,
    ) -> StorageResult<Option<Page<Node, (u64, [u8; 8])>>> {
        let (cookie, verifier) = from.unwrap_or((0, [0; 8]));
        let mut wanted = stat_ids();
        wanted.extend([id::RDATTR_ERROR, id::FILEHANDLE]);
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::ReadDir {
                cookie,
                verifier,
                max_bytes: READDIR_BYTES,
                attrs: Bitmap::of(&wanted),
            },
        ];
        let answer = self.call(ops, false, at).await?;
        let (verifier, listed, eof) = match (answer.failed(), answer.result(1)) {
            (
                None,
                Some(Done::ReadDir {
                    verifier,
                    entries,
                    eof,
                }),
            ) => (*verifier, entries, *eof),
            (Some((1, Status::BAD_COOKIE | Status::NOT_SAME)), _) => return Ok(None),
            (Some((_, status)), _) => return Err(status_error(at, status).into()),
            (None, _) => return Err(protocol_error(at, "READDIR's reply lacks entries").into()),
        };
        let mut last = cookie;
        let mut entries = Vec::with_capacity(listed.len());
        for e in listed {
            last = e.cookie;
            let stat = match e.attrs.rdattr_error {
                Some(error) if error != 0 => None,
                _ => e.attrs.stat().ok(),
            };
            let kind = stat.map(|st| st.kind());
            let dir = match (kind, &e.attrs.filehandle, stat) {
                (Some(Kind::Dir), Some(fh), Some(stat)) => Some(Node {
                    fh: Arc::from(fh.as_slice()),
                    stat,
                }),
                _ => None,
            };
            entries.push(Entry {
                name: e.name.clone(),
                kind,
                stat,
                dir,
            });
        }
        let next = (!eof && last != cookie).then_some((last, verifier));
        Ok(Some(Page { entries, next }))
    }

    async fn remove(&self, dir: &Node, name: &[u8], kind: Kind, at: At<'_>) -> StorageResult<Unlinked> {
        let answer = self.call(Self::remove_ops(dir, name, kind), true, at).await?;
        Ok(match answer.failed() {
            None => Unlinked::Done,
            // Removed by our own send before a lost session.
            Some((1 | 4, Status::NOENT)) if answer.resent => Unlinked::Done,
            Some((1 | 4, Status::NOENT)) => Unlinked::Missing,
            // The name led to an object removed meanwhile, or `dir` itself was removed.
            Some((_, Status::STALE)) => Unlinked::Missing,
            Some((2, Status::NOT_SAME)) => Unlinked::NotDir,
            Some((2, Status::SAME)) => Unlinked::IsDir,
            Some((4, Status::NOTEMPTY | Status::EXIST)) => Unlinked::NotEmpty,
            Some((_, status)) => return Err(status_error(at, status).into()),
        })
    }

    async fn statfs(&self, dir: &Node, at: At<'_>) -> StorageResult<Capacity> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::GetAttr(Bitmap::of(&[id::SPACE_AVAIL, id::SPACE_FREE, id::SPACE_TOTAL])),
        ];
        let answer = self.call_ok(ops, false, at).await?;
        let Some(Done::GetAttr(attrs)) = answer.result(1) else {
            return Err(protocol_error(at, "the server's reply lacks attributes").into());
        };
        match (attrs.space_total, attrs.space_free, attrs.space_avail) {
            (Some(total_bytes), Some(free_bytes), Some(available_bytes)) => Ok(Capacity {
                total_bytes,
                free_bytes,
                available_bytes,
            }),
            _ => Err(protocol_error(at, "the server did not tell the export's space").into()),
        }
    }

    async fn open_file(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<OpenedFile<NfsFile>> {
        Ok(match self.lookup(dir, name, at).await? {
            None => OpenedFile::Missing,
            Some(n) if n.stat.file_type == FileType::Regular => OpenedFile::File(NfsFile {
                node: n,
                unstable: Mutex::new(None),
            }),
            Some(n) => OpenedFile::Other(n.stat.file_type),
        })
    }

    async fn read(
        &self,
        file: &NfsFile,
        offset: u64,
        len: usize,
        at: At<'_>,
    ) -> StorageResult<Option<Vec<u8>>> {
        let io_size = self.connected().io_size;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = u32::try_from((len - out.len()).min(io_size)).unwrap_or(u32::MAX);
            let ops = vec![
                Op::PutFh(file.node.fh.to_vec()),
                Op::Read {
                    stateid: ANONYMOUS_STATEID,
                    offset: offset + out.len() as u64,
                    count: want,
                },
            ];
            let answer = self.call(ops, false, at).await?;
            let (data, eof) = match (answer.failed(), answer.result(1)) {
                (None, Some(Done::Read { data, eof })) => (data, *eof),
                (Some((_, Status::STALE)), _) => return Ok(None),
                (Some((_, status)), _) => return Err(status_error(at, status).into()),
                (None, _) => return Err(protocol_error(at, "READ's reply lacks data").into()),
            };
            out.extend_from_slice(data);
            if eof || data.is_empty() {
                break;
            }
        }
        out.truncate(len);
        Ok(Some(out))
    }

    async fn create_file(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Made<NfsFile>> {
        Ok(match self.create(dir, name, 0o600, None, at).await? {
            Some(node) => Made::New(NfsFile {
                node,
                unstable: Mutex::new(None),
            }),
            None => Made::Exists,
        })
    }

    async fn write(
        &self,
        file: &NfsFile,
        offset: u64,
        data: &[u8],
        durable: bool,
        at: At<'_>,
    ) -> StorageResult<()> {
        let stable = if durable {
            Stable::FileSync
        } else {
            Stable::Unstable
        };
        let io_size = self.connected().io_size;
        let mut done = 0;
        while done < data.len() {
            let chunk = &data[done..(done + io_size).min(data.len())];
            let ops = vec![
                Op::PutFh(file.node.fh.to_vec()),
                Op::Write {
                    stateid: ANONYMOUS_STATEID,
                    offset: offset + done as u64,
                    stable,
                    data: chunk.to_vec(),
                },
            ];
            let answer = self.call_ok(ops, true, at).await?;
            let Some(Done::Write {
                count,
                committed,
                verifier,
            }) = answer.result(1)
            else {
                return Err(protocol_error(at, "WRITE's reply lacks its count").into());
            };
            if *count == 0 {
                return Err(protocol_error(at, "the server wrote nothing").into());
            }
            if *committed == Stable::Unstable {
                let mut unstable = file.unstable.lock().unwrap_or_else(PoisonError::into_inner);
                match *unstable {
                    Some(seen) if seen != *verifier => return Err(restarted(at).into()),
                    _ => *unstable = Some(*verifier),
                }
            }
            done += *count as usize;
        }
        Ok(())
    }

    async fn commit(&self, file: &NfsFile, at: At<'_>) -> StorageResult<()> {
        let written = *file.unstable.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(written) = written else {
            return Ok(());
        };
        let answer = self
            .call_ok(vec![Op::PutFh(file.node.fh.to_vec()), Op::Commit], true, at)
            .await?;
        match answer.result(1) {
            Some(Done::Commit(verifier)) if *verifier == written => Ok(()),
            Some(Done::Commit(_)) => Err(restarted(at).into()),
            _ => Err(protocol_error(at, "COMMIT's reply lacks its verifier").into()),
        }
    }

    /// Each file is committed on its own.
    async fn sync(&self, _dir: &Node, _at: At<'_>) -> StorageResult<()> {
        Ok(())
    }

    async fn read_link(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Vec<u8>>> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Lookup(name.to_vec()),
            Op::Verify(Attributes4::file_type(ftype::LNK)),
            Op::ReadLink,
        ];
        let answer = self.call(ops, false, at).await?;
        match answer.failed() {
            None => match answer.result(3) {
                Some(Done::ReadLink(target)) => Ok(Some(target.clone())),
                _ => Err(protocol_error(at, "READLINK's reply lacks the target").into()),
            },
            Some((1, Status::NOENT) | (2, Status::NOT_SAME)) => Ok(None),
            Some((_, status)) => Err(status_error(at, status).into()),
        }
    }

    async fn symlink(&self, dir: &Node, name: &[u8], target: &[u8], at: At<'_>) -> StorageResult<Made<()>> {
        let ops = vec![
            Op::PutFh(dir.fh.to_vec()),
            Op::Create {
                object: NewObject::Symlink(target.to_vec()),
                name: name.to_vec(),
                attrs: NewAttributes::default(),
            },
        ];
        let answer = self.call(ops, true, at).await?;
        match answer.failed() {
            None => Ok(Made::New(())),
            Some((1, Status::EXIST)) if answer.resent => Ok(match self.read_link(dir, name, at).await? {
                Some(existing) if existing == target => Made::New(()),
                _ => Made::Exists,
            }),
            Some((1, Status::EXIST)) => Ok(Made::Exists),
            Some((_, status)) => Err(status_error(at, status).into()),
        }
    }

    async fn set_attrs(
        &self,
        target: Target<'_, Node, NfsFile>,
        attrs: &Attrs,
        at: At<'_>,
    ) -> StorageResult<Owner> {
        nfs_emulation::set_attrs(self, target, attrs, at).await
    }

    /// NFSv4.1 has no server-side copy (4.2's COPY may come later): the copy reads and writes.
    async fn copy_file(
        &self,
        _from_dir: &Node,
        _from: &[u8],
        _to_dir: &Node,
        _to: &[u8],
        _attrs: &Attrs,
        _at: At<'_>,
    ) -> StorageResult<Option<FileCopied>> {
        Ok(None)
    }

    fn io_size(&self) -> usize {
        self.connected.get().map_or(64 * 1024, |c| c.io_size)
    }

    fn max_open_dirs(&self) -> Option<usize> {
        None
    }

    fn concurrent(&self) -> bool {
        true
    }

    /// RENAME replaces an empty directory, so the no-replace rename claims its target first.
    fn placing_may_leave_a_claim(&self) -> bool {
        true
    }

    fn prepare_parallel(&self, in_flight: usize) {
        if let Some(c) = self.connected.get() {
            c.pool.grow(in_flight);
        }
    }
}
