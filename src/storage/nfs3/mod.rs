//! The NFSv3 transport: an export reached by our own userspace client (nfs3_client over a pool of
//! TCP connections, [`rpc`]), with no mount and no privileges. Connects on first use, and again
//! after a failed connect; each export has its own pool, so a server that stops answering fails
//! only the operations on it. Every request has a deadline (`timeo`, resent up to `retrans` times
//! on fresh connections).
//!
//! Symlink safety comes from the protocol: every procedure is relative to a file handle and a
//! name, LOOKUP returns a symlink as itself, and types are checked before descending. The honest
//! differences from POSIX, kept here:
//! * RENAME replaces an existing empty directory and has no no-replace flag, so
//!   [`Transport::rename_noreplace`] first claims the target with an exclusive MKDIR of an empty
//!   mode-000 directory, then renames over its own claim. A concurrent creator gets EXIST from its
//!   own MKDIR; anything written into the claim meanwhile makes the RENAME fail with NOTEMPTY. The
//!   one remaining race (someone removes our claim and makes a new *empty* directory in the
//!   instant before the RENAME) can replace an empty directory, never data. A crash between the
//!   two leaves a claim, which the retry may reuse (for a volume: only if its record says
//!   `placing`).
//! * A request resent after a timeout or a broken connection may already have been executed (the
//!   server's duplicate request cache does not span connections): NOENT from a resent REMOVE,
//!   RMDIR or RENAME whose target now holds the source's fileid is success; EXIST from a resent
//!   MKDIR of a directory, or a resent CREATE, is ours.
//! * MKDIR drops setgid on Linux servers: the protocol always chmods afterwards.
//! * Handles are plain bytes: a walk may hold any number (no handle budget).

mod connect;
mod error;
mod proto;
pub(crate) mod rpc;
pub mod testing;

use std::sync::{Arc, Mutex, PoisonError};

use nfs3_client::nfs3_types::nfs3::{
    Nfs3Option, cookieverf3, fattr3, ftype3, nfsstat3, nfstime3, sattr3, set_atime, set_mtime, stable_how,
    writeverf3,
};
use tokio::sync::OnceCell;

pub use connect::{Connection, ConnectionInfo, DEFAULT_CONNECTIONS};
pub use error::NfsError;
pub use rpc::MAX_CONNECTIONS;

pub use self::proto::Node;
use self::proto::{Mkdir, mode_attr, status};
use super::error::{StorageFailure, StorageResult};
use super::nfs_emulation::{self, Claimed, NfsRequests, OwnerRefusal, RenameAnswer};
use super::transport::{
    At, Attrs, Capacity, Entry, FileCopied, FileType, Kind, Made, Move, Opened, OpenedFile, Owner, Page,
    ReadFile, Renamed, Stat, Target, Time, Transport, Unlinked,
};
use crate::core::export::{ClientOptions, Export};
use crate::core::staging::CLAIM_MODE;

pub struct Nfs3Transport {
    export: Export,
    options: ClientOptions,
    connection: OnceCell<Arc<Connection>>,
}

fn file_type(t: ftype3) -> FileType {
    match t {
        ftype3::NF3REG => FileType::Regular,
        ftype3::NF3DIR => FileType::Dir,
        ftype3::NF3BLK => FileType::BlockDevice,
        ftype3::NF3CHR => FileType::CharDevice,
        ftype3::NF3LNK => FileType::Symlink,
        ftype3::NF3SOCK => FileType::Socket,
        ftype3::NF3FIFO => FileType::Fifo,
    }
}

fn time_of(t: nfstime3) -> Time {
    Time {
        seconds: i64::from(t.seconds),
        nanos: t.nseconds,
    }
}

/// NFSv3 times are unsigned 32-bit seconds: earlier than 1970 or later than 2106 are clamped.
fn nfstime(t: Time) -> nfstime3 {
    nfstime3 {
        seconds: u32::try_from(t.seconds.max(0)).unwrap_or(u32::MAX),
        nseconds: t.nanos,
    }
}

fn stat_of(attr: &fattr3) -> Stat {
    Stat {
        file_type: file_type(attr.type_),
        id: attr.fileid,
        fs: attr.fsid,
        mode: attr.mode & 0o7777,
        uid: attr.uid,
        gid: attr.gid,
        nlink: u64::from(attr.nlink),
        size: attr.size,
        used: attr.used,
        atime: time_of(attr.atime),
        mtime: time_of(attr.mtime),
        ctime: time_of(attr.ctime),
    }
}

fn sattr(attrs: &Attrs, owner: bool) -> sattr3 {
    let opt = |v: Option<u32>| v.map_or(Nfs3Option::None, Nfs3Option::Some);
    sattr3 {
        mode: opt(attrs.mode),
        uid: if owner { opt(attrs.uid) } else { Nfs3Option::None },
        gid: if owner { opt(attrs.gid) } else { Nfs3Option::None },
        size: attrs.size.map_or(Nfs3Option::None, Nfs3Option::Some),
        atime: attrs.times.map_or(set_atime::DONT_CHANGE, |(a, _)| {
            set_atime::SET_TO_CLIENT_TIME(nfstime(a))
        }),
        mtime: attrs.times.map_or(set_mtime::DONT_CHANGE, |(_, m)| {
            set_mtime::SET_TO_CLIENT_TIME(nfstime(m))
        }),
    }
}

/// An open regular file: its handle, and the verifier of its UNSTABLE writes, which the COMMIT
/// must match (a different one: the server restarted and may have lost them).
pub struct NfsFile {
    node: Node,
    unstable: Mutex<Option<writeverf3>>,
}

impl NfsFile {
    fn new(node: Node) -> Self {
        NfsFile {
            node,
            unstable: Mutex::new(None),
        }
    }
}

fn restarted(at: At<'_>) -> NfsError {
    NfsError::Rpc {
        op: at.op,
        path: at.path.to_owned(),
        reason: "the server restarted while the file was written (its write verifier changed); unstable writes may be lost"
            .to_owned(),
    }
}

fn is_claim(node: &Node) -> bool {
    node.is_dir() && node.attr.mode & 0o7777 == CLAIM_MODE
}

impl Nfs3Transport {
    /// Connects on first use.
    pub fn new(export: Export, options: ClientOptions) -> Self {
        Nfs3Transport {
            export,
            options,
            connection: OnceCell::new(),
        }
    }

    /// Connects now, with a pool of `connections`.
    pub async fn connect(
        export: Export,
        options: ClientOptions,
        connections: usize,
    ) -> Result<Self, NfsError> {
        let connection = Connection::open(&export.server, &export.path, &options, connections).await?;
        Ok(Nfs3Transport {
            export,
            options,
            connection: OnceCell::new_with(Some(Arc::new(connection))),
        })
    }

    /// The connection, made (MOUNT, then a GETATTR of the root) if there is none yet.
    pub async fn connection(&self) -> StorageResult<&Arc<Connection>> {
        self.connection
            .get_or_try_init(|| async {
                let connection = Connection::open(
                    &self.export.server,
                    &self.export.path,
                    &self.options,
                    DEFAULT_CONNECTIONS,
                )
                .await?;
                let info = connection.info();
                tracing::info!(
                    export = %self.export,
                    nfs = %info.nfs_addr,
                    mount = %info.mount_addr,
                    connections = info.connections,
                    reserved_port = info.reserved_port,
                    "connected to NFS export"
                );
                Ok(Arc::new(connection))
            })
            .await
    }

    /// Primitives are only reached through a handle, which came from [`Transport::root`].
    fn proto(&self) -> &proto::Proto {
        match self.connection.get() {
            Some(c) => &c.proto,
            None => unreachable!("a handle exists only once connected"),
        }
    }

    async fn lookup(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Node>> {
        Ok(self.proto().lookup(&dir.fh, name, at.op, at.path).await?)
    }

    async fn set(&self, dir: &Node, attr: sattr3, at: At<'_>) -> Result<(), NfsError> {
        self.proto().setattr(&dir.fh, attr, at.op, at.path).await
    }
}

impl NfsRequests for Nfs3Transport {
    type Node = Node;
    type File = NfsFile;

    fn file_node(file: &NfsFile) -> &Node {
        &file.node
    }

    fn owner(node: &Node) -> (u32, u32) {
        (node.attr.uid, node.attr.gid)
    }

    fn not_found(at: At<'_>) -> StorageFailure {
        status(at.op, at.path, nfsstat3::NFS3ERR_NOENT).into()
    }

    async fn look_up(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Node>> {
        self.lookup(dir, name, at).await
    }

    fn is_claim(node: &Node) -> bool {
        is_claim(node)
    }

    fn file_id(node: &Node) -> u64 {
        node.attr.fileid
    }

    async fn make_claim(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Claimed> {
        Ok(
            match self
                .proto()
                .mkdir(&dir.fh, name, CLAIM_MODE, at.op, at.path)
                .await?
            {
                Mkdir::New(_) => Claimed::New,
                Mkdir::Exists { resent } => Claimed::Exists { resent },
            },
        )
    }

    async fn drop_claim(&self, dir: &Node, name: &[u8], at: At<'_>) {
        let _ = self.proto().rmdir(&dir.fh, name, at.op, at.path).await;
    }

    async fn rename_once(&self, m: Move<'_, Node>, at: At<'_>) -> StorageResult<RenameAnswer> {
        let answer = self
            .proto()
            .rename(&m.from_dir.fh, m.from, &m.to_dir.fh, m.to, at.op, at.path)
            .await?;
        match answer.status {
            nfsstat3::NFS3_OK => Ok(RenameAnswer::Done),
            nfsstat3::NFS3ERR_NOENT => Ok(RenameAnswer::SourceMissing {
                resent: answer.resent,
            }),
            nfsstat3::NFS3ERR_NOTEMPTY | nfsstat3::NFS3ERR_EXIST | nfsstat3::NFS3ERR_NOTDIR => {
                Ok(RenameAnswer::Taken)
            }
            s => Err(status(at.op, at.path, s).into()),
        }
    }

    async fn set_once(&self, node: &Node, attrs: &Attrs, with_owner: bool, at: At<'_>) -> StorageResult<()> {
        Ok(self.set(node, sattr(attrs, with_owner), at).await?)
    }

    fn owner_refusal(failure: &StorageFailure) -> Option<OwnerRefusal> {
        match failure.transport::<NfsError>()?.status()? {
            nfsstat3::NFS3ERR_PERM => Some(OwnerRefusal::NotPermitted),
            nfsstat3::NFS3ERR_INVAL => Some(OwnerRefusal::Invalid),
            nfsstat3::NFS3ERR_ACCES => Some(OwnerRefusal::AccessDenied),
            _ => None,
        }
    }
}

impl Transport for Nfs3Transport {
    type Dir = Node;
    type Cursor = (u64, cookieverf3);
    type File = NfsFile;

    async fn root(&self) -> StorageResult<Node> {
        Ok(self.connection().await?.root.clone())
    }

    async fn open_dir(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Opened<Node>> {
        Ok(match self.lookup(dir, name, at).await? {
            None => Opened::Missing,
            Some(n) if n.is_dir() => Opened::Dir(n),
            Some(_) => Opened::NotDir,
        })
    }

    async fn stat(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Stat>> {
        Ok(self.lookup(dir, name, at).await?.map(|n| stat_of(&n.attr)))
    }

    async fn dir_stat(&self, dir: &Node, _at: At<'_>) -> StorageResult<Stat> {
        Ok(stat_of(&dir.attr))
    }

    async fn parent(&self, dir: &Node, at: At<'_>) -> StorageResult<Node> {
        match self.lookup(dir, b"..", at).await? {
            Some(n) if n.is_dir() => Ok(n),
            _ => Err(status(at.op, at.path, nfsstat3::NFS3ERR_STALE).into()),
        }
    }

    async fn mkdir(&self, dir: &Node, name: &[u8], mode: u32, at: At<'_>) -> StorageResult<Made<Node>> {
        match self.proto().mkdir(&dir.fh, name, mode, at.op, at.path).await? {
            Mkdir::New(n) => Ok(Made::New(n)),
            // Our earlier send made it.
            Mkdir::Exists { resent: true } => match self.lookup(dir, name, at).await? {
                Some(n) if n.is_dir() => Ok(Made::New(n)),
                _ => Ok(Made::Exists),
            },
            Mkdir::Exists { resent: false } => Ok(Made::Exists),
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
        Ok(self.set(dir, mode_attr(mode), at).await?)
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
        let (from_dir, from, to_dir, to) = (m.from_dir, m.from, m.to_dir, m.to);
        let answer = self
            .proto()
            .rename(&from_dir.fh, from, &to_dir.fh, to, at.op, at.path)
            .await?;
        match answer.status {
            nfsstat3::NFS3_OK => Ok(Renamed::Done),
            nfsstat3::NFS3ERR_NOENT if answer.resent && self.lookup(to_dir, to, at).await?.is_some() => {
                Ok(Renamed::Done)
            }
            nfsstat3::NFS3ERR_NOENT => Ok(Renamed::SourceMissing),
            nfsstat3::NFS3ERR_EXIST | nfsstat3::NFS3ERR_NOTEMPTY => Ok(Renamed::Taken),
            s => Err(status(at.op, at.path, s).into()),
        }
    }

    async fn write_file(&self, dir: &Node, name: &[u8], content: &[u8], at: At<'_>) -> StorageResult<bool> {
        let made = self
            .proto()
            .create_file(&dir.fh, name, 0o600, content, at.op, at.path)
            .await?;
        Ok(made.is_some())
    }

    async fn read_file(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<ReadFile> {
        Ok(self.proto().read_small(&dir.fh, name, at.op, at.path).await?)
    }

    /// READDIRPLUS carries every entry's attributes, asked for or not.
    async fn read_dir(
        &self,
        dir: &Node,
        from: Option<(u64, cookieverf3)>,
        _attrs: bool,
        at: At<'_>,
    ) -> StorageResult<Option<Page<Node, (u64, cookieverf3)>>> {
        let (cookie, verf) = from.unwrap_or((0, cookieverf3::default()));
        let (entries, next, verf, eof) = match self
            .proto()
            .readdir_page(&dir.fh, cookie, verf, at.op, at.path)
            .await
        {
            Ok(page) => page,
            Err(e) if e.status() == Some(nfsstat3::NFS3ERR_BAD_COOKIE) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let entries = entries
            .into_iter()
            .map(|e| {
                let stat = e.attr.as_ref().map(stat_of);
                let kind = stat.map(|st| st.kind());
                let dir = match (kind, e.fh, e.attr) {
                    (Some(Kind::Dir), Some(fh), Some(attr)) => Some(Node { fh, attr }),
                    _ => None,
                };
                Entry {
                    name: e.name,
                    kind,
                    stat,
                    dir,
                }
            })
            .collect();
        let next = (!eof && next != cookie).then_some((next, verf));
        Ok(Some(Page { entries, next }))
    }

    async fn remove(&self, dir: &Node, name: &[u8], kind: Kind, at: At<'_>) -> StorageResult<Unlinked> {
        let proto = self.proto();
        let answer = match kind {
            Kind::Dir => proto.rmdir(&dir.fh, name, at.op, at.path).await?,
            Kind::Other => proto.remove(&dir.fh, name, at.op, at.path).await?,
        };
        Ok(match answer.status {
            nfsstat3::NFS3_OK => Unlinked::Done,
            // Removed by our own earlier send.
            nfsstat3::NFS3ERR_NOENT if answer.resent => Unlinked::Done,
            nfsstat3::NFS3ERR_NOENT => Unlinked::Missing,
            // The name led the server to an object removed meanwhile (ganesha answers so when a
            // concurrent request removed it), or `dir` itself was removed: either way the entry
            // we meant is gone. Were a new one made under the name since, the parent's removal
            // finds it and lists again.
            nfsstat3::NFS3ERR_STALE => Unlinked::Missing,
            nfsstat3::NFS3ERR_ISDIR => Unlinked::IsDir,
            nfsstat3::NFS3ERR_NOTDIR if kind == Kind::Dir => Unlinked::NotDir,
            nfsstat3::NFS3ERR_NOTEMPTY | nfsstat3::NFS3ERR_EXIST => Unlinked::NotEmpty,
            s => return Err(status(at.op, at.path, s).into()),
        })
    }

    async fn statfs(&self, dir: &Node, _at: At<'_>) -> StorageResult<Capacity> {
        let st = self
            .proto()
            .fsstat(&dir.fh, "query capacity of", "the export")
            .await?;
        Ok(Capacity {
            total_bytes: st.tbytes,
            free_bytes: st.fbytes,
            available_bytes: st.abytes,
        })
    }

    async fn open_file(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<OpenedFile<NfsFile>> {
        Ok(match self.lookup(dir, name, at).await? {
            None => OpenedFile::Missing,
            Some(n) if matches!(n.attr.type_, ftype3::NF3REG) => OpenedFile::File(NfsFile::new(n)),
            Some(n) => OpenedFile::Other(file_type(n.attr.type_)),
        })
    }

    async fn read(
        &self,
        file: &NfsFile,
        offset: u64,
        len: usize,
        at: At<'_>,
    ) -> StorageResult<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let want = u32::try_from(len - out.len()).unwrap_or(u32::MAX);
            let read = self
                .proto()
                .read(&file.node.fh, offset + out.len() as u64, want, at.op, at.path)
                .await;
            let (data, eof) = match read {
                Ok(read) => read,
                Err(e) if e.status() == Some(nfsstat3::NFS3ERR_STALE) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            out.extend_from_slice(&data);
            if eof || data.is_empty() {
                break;
            }
        }
        out.truncate(len);
        Ok(Some(out))
    }

    async fn create_file(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Made<NfsFile>> {
        Ok(
            match self
                .proto()
                .create_file(&dir.fh, name, 0o600, b"", at.op, at.path)
                .await?
            {
                Some(node) => Made::New(NfsFile::new(node)),
                None => Made::Exists,
            },
        )
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
            stable_how::FILE_SYNC
        } else {
            stable_how::UNSTABLE
        };
        let mut done = 0;
        while done < data.len() {
            let (n, committed, verf) = self
                .proto()
                .write(
                    &file.node.fh,
                    offset + done as u64,
                    &data[done..],
                    stable,
                    at.op,
                    at.path,
                )
                .await?;
            if committed == stable_how::UNSTABLE {
                let mut unstable = file.unstable.lock().unwrap_or_else(PoisonError::into_inner);
                match *unstable {
                    Some(seen) if seen != verf => return Err(restarted(at).into()),
                    _ => *unstable = Some(verf),
                }
            }
            done += n;
        }
        Ok(())
    }

    async fn commit(&self, file: &NfsFile, at: At<'_>) -> StorageResult<()> {
        let written = *file.unstable.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(written) = written else {
            return Ok(());
        };
        let verf = self.proto().commit(&file.node.fh, at.op, at.path).await?;
        if verf != written {
            return Err(restarted(at).into());
        }
        Ok(())
    }

    /// Each file is committed on its own.
    async fn sync(&self, _dir: &Node, _at: At<'_>) -> StorageResult<()> {
        Ok(())
    }

    async fn read_link(&self, dir: &Node, name: &[u8], at: At<'_>) -> StorageResult<Option<Vec<u8>>> {
        match self.lookup(dir, name, at).await? {
            Some(n) if matches!(n.attr.type_, ftype3::NF3LNK) => {
                Ok(Some(self.proto().readlink(&n.fh, at.op, at.path).await?))
            }
            _ => Ok(None),
        }
    }

    async fn symlink(&self, dir: &Node, name: &[u8], target: &[u8], at: At<'_>) -> StorageResult<Made<()>> {
        Ok(
            match self
                .proto()
                .symlink(&dir.fh, name, target, at.op, at.path)
                .await?
            {
                true => Made::New(()),
                false => Made::Exists,
            },
        )
    }

    async fn set_attrs(
        &self,
        target: Target<'_, Node, NfsFile>,
        attrs: &Attrs,
        at: At<'_>,
    ) -> StorageResult<Owner> {
        nfs_emulation::set_attrs(self, target, attrs, at).await
    }

    /// NFSv3 has no server-side copy: the copy reads and writes.
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
        self.connection
            .get()
            .map_or(connect::DEFAULT_IO_SIZE, |c| c.io_size())
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

    /// One RPC is in flight per connection, and with a round trip to wait out per REMOVE, the RPCs
    /// in flight set a delete's pace: the pool grows to them (up to [`MAX_CONNECTIONS`]) and the
    /// connections stay open for later operations.
    fn prepare_parallel(&self, in_flight: usize) {
        if let Some(c) = self.connection.get() {
            c.proto.pool.grow(in_flight);
        }
    }
}
