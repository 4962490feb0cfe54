//! [`DirectExport`]: the mounted backend's directory operations, spoken directly to an NFSv3 server.
//!
//! Same semantics as `storage::mounted::MountedExport` (see its module docs), adapted to NFSv3:
//!
//! * Symlink safety comes from the protocol: every operation is relative to a file handle, LOOKUP returns
//!   a symlink as itself, and each component's type is checked (a non-directory in the way is a
//!   [`NfsError::Symlink`] refusal).
//! * Staging records have the mounted backend's layout (`STAGING_DIR/<pv>/{target,inode,vol/}`, built as
//!   `<pv>.tmp` and published with one RENAME; `inode` holds the NFS fileid, which is the inode number on
//!   Linux servers), so an export can move between the two backends. One addition: a `placing` marker
//!   file, written before the target name is claimed (below).
//! * NFSv3 RENAME replaces an existing empty directory (and has no no-replace flag), so "rename unless the
//!   target exists" is done as: claim the target name with an exclusive MKDIR of an empty directory with
//!   mode 000 (the "claim"), then RENAME over our own claim. A concurrent creator of the same name gets
//!   EXIST from its own MKDIR; anything written into our claim meanwhile makes our RENAME fail with
//!   NOTEMPTY/EXIST (then the claim is left alone). Remaining race: someone who removes our claim and
//!   makes a new *empty* directory under that name between our MKDIR and RENAME has it replaced; an empty
//!   directory is the most that can be lost, never data. A crash between MKDIR and RENAME leaves an empty
//!   mode-000 directory, which the retry recognises and reuses (for a volume only if its record carries the
//!   `placing` marker).
//! * A request resent after a timeout or broken connection may have been executed already (no duplicate
//!   request cache across connections); each such case is interpreted (NOENT from a resent RENAME whose
//!   target now holds our fileid is success, EXIST from a resent MKDIR/CREATE in our own record is ours).
//! * The chmod after MKDIR is always done (v3 MKDIR drops setgid on Linux servers).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use nfs3_client::nfs3_types::mount::dirpath;
use nfs3_client::nfs3_types::nfs3::{Nfs3Option, ftype3, nfs_fh3, nfsstat3, sattr3};
use nfs3_client::nfs3_types::rpc::auth_flavor;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::MountOptions;
use super::error::NfsError;
use super::proto::{Made, NfsResult, Node, Proto, mode_attr, status, sub};
use super::rpc::{Connector, Pool};
use super::tree::Remover;
use crate::core::naming::{NAME_MAX, STAGING_DIR, archive_name, check_single_component};
use crate::storage::{Archived, Capacity, Created, DirAttrs, Removed};

/// How many archive names (`archived-x`, `archived-x-2`, ...) are tried before giving up.
pub const MAX_ARCHIVE_ATTEMPTS: u32 = 10_000;
/// Default number of connections (and so of RPCs in flight) of a new pool. A delete grows the pool to its
/// concurrency (see [`DirectExport::delete_volume`]).
pub const DEFAULT_CONNECTIONS: usize = 16;

const TMP_SUFFIX: &str = ".tmp";
const TARGET_FILE: &str = "target";
const INODE_FILE: &str = "inode";
const VOL_DIR: &str = "vol";
const PLACING_FILE: &str = "placing";
/// Mode of a claim directory: an empty mode-000 directory is never a volume we made (volumes get their mode
/// before they are placed), which is how a retry recognises its own leftover claim.
const CLAIM_MODE: u32 = 0;
const S_ISGID: u32 = 0o2000;

/// How the connection was set up, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub nfs_addr: SocketAddr,
    pub mount_addr: SocketAddr,
    pub connections: usize,
    /// Source ports are below 1024 (false: `noresvport`, or binding them was not permitted).
    pub reserved_port: bool,
}

/// An NFSv3 export, reached over a pool of TCP connections. Cheap to clone.
#[derive(Clone)]
pub struct DirectExport {
    inner: Arc<Inner>,
}

struct Inner {
    proto: Arc<Proto>,
    root: Node,
    info: ConnectionInfo,
}

/// A published (or, while being built, unpublished) staging record.
struct Record {
    fh: nfs_fh3,
    target: Vec<String>,
    inode: Option<u64>,
    /// `vol` is gone: the volume was placed at `target`.
    placed: bool,
    /// The target name was (being) claimed: an empty mode-000 directory there is ours.
    placing: bool,
}

fn join(components: &[String]) -> String {
    components.join("/")
}

fn staging_path(name: &str) -> String {
    format!("{STAGING_DIR}/{name}")
}

fn check_path(op: &'static str, path: &[String]) -> NfsResult<()> {
    let invalid = |reason| NfsError::InvalidPath {
        op,
        path: join(path),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("empty path (the export root itself)".into()));
    }
    path.iter()
        .try_for_each(|c| check_single_component(c).map_err(|e| e.to_string()))
        .map_err(invalid)
}

fn check_pv(op: &'static str, pv_name: &str) -> NfsResult<()> {
    let invalid = |reason| NfsError::InvalidPath {
        op,
        path: staging_path(pv_name),
        reason,
    };
    check_single_component(pv_name).map_err(|e| invalid(e.to_string()))?;
    if pv_name.ends_with(TMP_SUFFIX) {
        return Err(invalid("volume name ends with .tmp".into()));
    }
    if pv_name.len() + TMP_SUFFIX.len() > NAME_MAX {
        return Err(invalid("volume name too long for a staging record".into()));
    }
    Ok(())
}

fn is_claim(node: &Node) -> bool {
    node.is_dir() && node.attr.mode & 0o7777 == CLAIM_MODE
}

fn not_dir(op: &'static str, path: impl Into<String>) -> NfsError {
    NfsError::Symlink {
        op,
        path: path.into(),
    }
}

impl DirectExport {
    /// Mounts `share` on `server` (MOUNT v3, then one GETATTR of the root over the NFS port) and sets up a
    /// pool of `connections` connections (at least 1; [`DEFAULT_CONNECTIONS`] is a good default).
    pub async fn connect(
        server: &str,
        share: &str,
        options: &MountOptions,
        connections: usize,
    ) -> Result<Self, NfsError> {
        let connect_err = |reason: String| NfsError::Connect {
            server: server.to_owned(),
            reason,
        };
        let host = resolve(server).await.map_err(connect_err)?;
        let connector = Connector::new(options.resvport, options.timeo);
        let mount_port = match options.mountport {
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
            options.timeo,
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
                    options.timeo
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
        let pool = Pool::new(nfs_addr, connector, options.timeo, options.retrans, connections);
        let proto = Arc::new(Proto { pool });
        let attr = proto.getattr(&root_fh, "open export root", share).await?;
        let root = Node { fh: root_fh, attr };
        if !root.is_dir() {
            return Err(not_dir("open export root", share));
        }
        let info = ConnectionInfo {
            nfs_addr,
            mount_addr,
            connections: proto.pool.size(),
            reserved_port: reserved_port && proto.pool.uses_resvport(),
        };
        Ok(Self {
            inner: Arc::new(Inner { proto, root, info }),
        })
    }

    /// Where and how this export is connected.
    pub fn info(&self) -> &ConnectionInfo {
        &self.inner.info
    }

    /// Longest one RPC can take before it fails (`timeo` x (`retrans` + 1)).
    pub fn rpc_deadline(&self) -> std::time::Duration {
        self.inner.proto.pool.deadline()
    }

    fn proto(&self) -> &Proto {
        &self.inner.proto
    }

    /// Creates the directory for `pv_name` at `path` exclusively, with exactly `attrs`. An existing
    /// directory there is adopted only if it is this volume's own earlier attempt; otherwise `Exists`.
    pub async fn create_volume(
        &self,
        pv_name: &str,
        path: &[String],
        attrs: &DirAttrs,
    ) -> NfsResult<Created> {
        const OP: &str = "create directory";
        check_pv(OP, pv_name)?;
        check_path(OP, path)?;
        let vol_path = join(path);
        if attrs.mode & !0o7777 != 0 {
            return Err(NfsError::InvalidMode {
                path: vol_path,
                mode: attrs.mode,
            });
        }
        let staging = self
            .staging(true)
            .await?
            .ok_or_else(|| status(OP, STAGING_DIR, nfsstat3::NFS3ERR_NOENT))?;
        let record = self.read_record(&staging, pv_name).await?;
        if let Some(r) = &record
            && r.target != path
        {
            return Err(NfsError::StagedElsewhere {
                pv: pv_name.to_owned(),
                requested: vol_path,
                recorded: join(&r.target),
            });
        }
        let (leaf, parents) = path
            .split_last()
            .ok_or_else(|| status(OP, "", nfsstat3::NFS3ERR_INVAL))?;
        let parent = self
            .walk(parents, true, OP)
            .await?
            .ok_or_else(|| status(OP, &join(parents), nfsstat3::NFS3ERR_NOENT))?;
        let existing = self
            .proto()
            .lookup(&parent.fh, leaf.as_bytes(), "stat", &vol_path)
            .await?;
        let record = match (record, existing) {
            (Some(r), Some(st)) if r.placed => {
                return if !st.is_dir() {
                    Err(not_dir(OP, vol_path))
                } else if r.inode.is_none_or(|ino| ino == st.attr.fileid) {
                    Ok(Created::Adopted)
                } else {
                    Err(NfsError::Exists { path: vol_path })
                };
            }
            (Some(r), None) if r.placed => {
                // Placed earlier, removed by someone since: start over.
                self.drop_record(&staging, pv_name).await?;
                None
            }
            (_, Some(st)) if !st.is_dir() => return Err(not_dir(OP, vol_path)),
            // Our own claim, left by an interrupted placement.
            (Some(r), Some(st)) if r.placing && is_claim(&st) => Some(r),
            (_, Some(_)) => return Err(NfsError::Exists { path: vol_path }),
            (record, None) => record,
        };
        let record = match record {
            Some(r) => r,
            None => self.build_record(&staging, pv_name, path).await?,
        };
        let vol_in_staging = staging_path(&format!("{pv_name}/{VOL_DIR}"));
        let vol = match self
            .proto()
            .lookup(&record.fh, VOL_DIR.as_bytes(), OP, &vol_in_staging)
            .await?
        {
            Some(v) if v.is_dir() => v,
            Some(_) => return Err(not_dir(OP, vol_in_staging)),
            None => return Err(status(OP, &vol_in_staging, nfsstat3::NFS3ERR_NOENT)),
        };
        self.apply_attrs(&vol, attrs, &parent, &vol_path).await?;
        self.place(pv_name, &record, &vol, &parent, leaf, &vol_path).await
    }

    /// Claims `leaf` in `parent` and renames the staged `vol` over the claim.
    async fn place(
        &self,
        pv_name: &str,
        record: &Record,
        vol: &Node,
        parent: &Node,
        leaf: &str,
        vol_path: &str,
    ) -> NfsResult<Created> {
        const OP: &str = "create directory";
        if !record.placing {
            let marker = staging_path(&format!("{pv_name}/{PLACING_FILE}"));
            match self
                .proto()
                .create_file(&record.fh, PLACING_FILE.as_bytes(), 0o600, b"", OP, &marker)
                .await
            {
                Ok(_) => {}
                Err(e) if e.status() == Some(nfsstat3::NFS3ERR_EXIST) => {}
                Err(e) => return Err(e),
            }
        }
        match self
            .proto()
            .mkdir(&parent.fh, leaf.as_bytes(), CLAIM_MODE, OP, vol_path)
            .await?
        {
            Made::New(_) => {}
            Made::Exists { resent } => {
                let ours = record.placing || resent;
                match self
                    .proto()
                    .lookup(&parent.fh, leaf.as_bytes(), "stat", vol_path)
                    .await?
                {
                    Some(n) if ours && is_claim(&n) => {}
                    Some(n) if !n.is_dir() => return Err(not_dir(OP, vol_path)),
                    _ => {
                        return Err(NfsError::Exists {
                            path: vol_path.to_owned(),
                        });
                    }
                }
            }
        }
        let answer = self
            .proto()
            .rename(
                &record.fh,
                VOL_DIR.as_bytes(),
                &parent.fh,
                leaf.as_bytes(),
                OP,
                vol_path,
            )
            .await?;
        match answer.status {
            nfsstat3::NFS3_OK => Ok(Created::New),
            nfsstat3::NFS3ERR_NOENT if answer.resent => {
                // Our earlier send may have done it.
                match self
                    .proto()
                    .lookup(&parent.fh, leaf.as_bytes(), "stat", vol_path)
                    .await?
                {
                    Some(n) if n.attr.fileid == vol.attr.fileid => Ok(Created::New),
                    _ => Err(status(OP, vol_path, nfsstat3::NFS3ERR_NOENT)),
                }
            }
            // Something was put into our claim meanwhile (or replaced it): not ours any more.
            nfsstat3::NFS3ERR_NOTEMPTY | nfsstat3::NFS3ERR_EXIST | nfsstat3::NFS3ERR_NOTDIR => {
                Err(NfsError::Exists {
                    path: vol_path.to_owned(),
                })
            }
            s => Err(status(OP, vol_path, s)),
        }
    }

    /// chown (explicit owner; else the group of a setgid parent, best effort), then chmod to exactly
    /// `attrs.mode` (v3 MKDIR drops setgid, and chown may clear it).
    async fn apply_attrs(
        &self,
        vol: &Node,
        attrs: &DirAttrs,
        parent: &Node,
        vol_path: &str,
    ) -> NfsResult<()> {
        const CHOWN: &str = "change owner of";
        if attrs.uid.is_some() || attrs.gid.is_some() {
            let owner = sattr3 {
                uid: attrs.uid.map_or(Nfs3Option::None, Nfs3Option::Some),
                gid: attrs.gid.map_or(Nfs3Option::None, Nfs3Option::Some),
                ..sattr3::default()
            };
            match self.proto().setattr(&vol.fh, owner, CHOWN, vol_path).await {
                Ok(()) => {}
                Err(NfsError::Status {
                    status: s @ (nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ACCES),
                    ..
                }) if vol.attr.uid != 0 => {
                    // We asked as uid 0 and the directory we made belongs to someone else: squashed.
                    return Err(NfsError::RootSquashed {
                        op: CHOWN,
                        path: vol_path.to_owned(),
                        status: s,
                        anon_uid: vol.attr.uid,
                        anon_gid: vol.attr.gid,
                    });
                }
                Err(e) => return Err(e),
            }
        } else if parent.attr.mode & S_ISGID != 0 {
            let group = sattr3 {
                gid: Nfs3Option::Some(parent.attr.gid),
                ..sattr3::default()
            };
            match self.proto().setattr(&vol.fh, group, CHOWN, vol_path).await {
                Ok(()) => {}
                Err(e) if matches!(e.status(), Some(nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_INVAL)) => {}
                Err(e) => return Err(e),
            }
        }
        self.proto()
            .setattr(&vol.fh, mode_attr(attrs.mode), "change mode of", vol_path)
            .await
    }

    /// Drops the staging record of `pv_name` (call once the PersistentVolume object exists). Idempotent.
    pub async fn finish_volume(&self, pv_name: &str) -> NfsResult<()> {
        check_pv("finish volume", pv_name)?;
        match self.staging(false).await? {
            Some(staging) => self.drop_record(&staging, pv_name).await,
            None => Ok(()),
        }
    }

    /// Names of the volumes with something in the staging area (a record, or a `.tmp` leftover).
    pub async fn staged_volumes(&self) -> NfsResult<Vec<String>> {
        const OP: &str = "list staging area";
        let Some(staging) = self.staging(false).await? else {
            return Ok(Vec::new());
        };
        let entries = self.proto().readdir_all(&staging.fh, OP, STAGING_DIR).await?;
        let mut names = Vec::new();
        for e in entries {
            let Ok(name) = std::str::from_utf8(&e.name) else {
                continue;
            };
            let pv = name.strip_suffix(TMP_SUFFIX).unwrap_or(name);
            if check_pv(OP, pv).is_err() {
                continue;
            }
            let path = staging_path(name);
            let is_dir = match &e.attr {
                Some(a) => matches!(a.type_, ftype3::NF3DIR),
                None => self
                    .proto()
                    .entry_node(&staging.fh, &e, OP, &path)
                    .await?
                    .is_some_and(|n| n.is_dir()),
            };
            if is_dir {
                names.push(pv.to_owned());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The path recorded for `pv_name`'s creation, if it has a staging record.
    pub async fn staged_target(&self, pv_name: &str) -> NfsResult<Option<Vec<String>>> {
        check_pv("read staging record", pv_name)?;
        let Some(staging) = self.staging(false).await? else {
            return Ok(None);
        };
        Ok(self.read_record(&staging, pv_name).await?.map(|r| r.target))
    }

    /// Renames the volume directory to `archived-<leaf>` (or `archived-<leaf>-<n>` if taken) in the same
    /// parent, never replacing anything but our own empty claim (module docs). A missing volume is
    /// `Missing`.
    pub async fn archive_volume(&self, path: &[String]) -> NfsResult<Archived> {
        const OP: &str = "archive directory";
        check_path(OP, path)?;
        let vol_path = join(path);
        let (leaf, parents) = path
            .split_last()
            .ok_or_else(|| status(OP, "", nfsstat3::NFS3ERR_INVAL))?;
        let Some(parent) = self.walk(parents, false, OP).await? else {
            return Ok(Archived::Missing);
        };
        let vol = match self
            .proto()
            .lookup(&parent.fh, leaf.as_bytes(), "stat", &vol_path)
            .await?
        {
            None => return Ok(Archived::Missing),
            Some(n) if !n.is_dir() => return Err(not_dir(OP, vol_path)),
            Some(n) => n,
        };
        for attempt in 0..MAX_ARCHIVE_ATTEMPTS {
            let name = archive_name(leaf, attempt);
            let mut to = parents.to_vec();
            to.push(name.clone());
            let to_path = join(&to);
            if let Err(reason) = check_single_component(&name) {
                return Err(NfsError::InvalidPath {
                    op: OP,
                    path: to_path,
                    reason: reason.to_string(),
                });
            }
            let fresh = match self
                .proto()
                .mkdir(&parent.fh, name.as_bytes(), CLAIM_MODE, OP, &to_path)
                .await?
            {
                Made::New(_) => true,
                // Taken; unless it is a claim (ours from an interrupted attempt or a resent MKDIR): the
                // RENAME below replaces it only if it is still empty.
                Made::Exists { .. } => match self
                    .proto()
                    .lookup(&parent.fh, name.as_bytes(), "stat", &to_path)
                    .await?
                {
                    Some(n) if is_claim(&n) => false,
                    _ => continue,
                },
            };
            let answer = self
                .proto()
                .rename(
                    &parent.fh,
                    leaf.as_bytes(),
                    &parent.fh,
                    name.as_bytes(),
                    OP,
                    &vol_path,
                )
                .await?;
            match answer.status {
                nfsstat3::NFS3_OK => return Ok(Archived::To(name)),
                // Someone put something into the claim: leave it, try the next name.
                nfsstat3::NFS3ERR_NOTEMPTY | nfsstat3::NFS3ERR_EXIST | nfsstat3::NFS3ERR_NOTDIR => {}
                nfsstat3::NFS3ERR_NOENT => {
                    if answer.resent
                        && let Some(n) = self
                            .proto()
                            .lookup(&parent.fh, name.as_bytes(), "stat", &to_path)
                            .await?
                        && n.attr.fileid == vol.attr.fileid
                    {
                        return Ok(Archived::To(name));
                    }
                    // The volume went away meanwhile: drop our claim (RMDIR fails harmlessly if not empty).
                    if fresh {
                        let _ = self
                            .proto()
                            .rmdir(&parent.fh, name.as_bytes(), OP, &to_path)
                            .await;
                    }
                    return Ok(Archived::Missing);
                }
                s => return Err(status(OP, &vol_path, s)),
            }
        }
        Err(NfsError::ArchiveNamesExhausted {
            path: vol_path,
            attempts: MAX_ARCHIVE_ATTEMPTS,
        })
    }

    /// Removes the volume directory and everything in it with up to `concurrency` RPCs in flight. The pool
    /// grows to `concurrency` connections for it (at most [`super::MAX_CONNECTIONS`]; they stay open for
    /// later operations): one RPC is in flight per connection, and with a round trip to wait out per
    /// REMOVE, the RPCs in flight set the pace (benches/nfs_delete.rs, 10 000 files at 1 ms RTT: 2.2 s
    /// with 32 connections, 2.7 s with 16). A volume path that is a symlink (or another non-directory) is
    /// removed itself, never followed.
    pub async fn delete_volume(&self, path: &[String], concurrency: usize) -> NfsResult<Removed> {
        const OP: &str = "delete directory";
        check_path(OP, path)?;
        let vol_path = join(path);
        let (leaf, parents) = path
            .split_last()
            .ok_or_else(|| status(OP, "", nfsstat3::NFS3ERR_INVAL))?;
        let Some(parent) = self.walk(parents, false, OP).await? else {
            return Ok(Removed::Missing);
        };
        match self
            .proto()
            .lookup(&parent.fh, leaf.as_bytes(), "stat", &vol_path)
            .await?
        {
            None => Ok(Removed::Missing),
            Some(n) if !n.is_dir() => {
                let answer = self
                    .proto()
                    .remove(&parent.fh, leaf.as_bytes(), "unlink", &vol_path)
                    .await?;
                match answer.status {
                    nfsstat3::NFS3_OK => Ok(Removed::Removed { entries: 1 }),
                    nfsstat3::NFS3ERR_NOENT if answer.resent => Ok(Removed::Removed { entries: 1 }),
                    nfsstat3::NFS3ERR_NOENT => Ok(Removed::Missing),
                    s => Err(status("unlink", &vol_path, s)),
                }
            }
            Some(dir) => {
                self.inner.proto.pool.grow(concurrency);
                let remover = Remover::new(
                    Arc::clone(&self.inner.proto),
                    concurrency,
                    self.inner.root.attr.fsid,
                );
                match remover
                    .remove(parent.fh.clone(), leaf.as_bytes().to_vec(), dir, vol_path)
                    .await?
                {
                    0 => Ok(Removed::Missing),
                    entries => Ok(Removed::Removed { entries }),
                }
            }
        }
    }

    /// Size of the filesystem holding the export (FSSTAT).
    pub async fn capacity(&self) -> NfsResult<Capacity> {
        let st = self
            .proto()
            .fsstat(&self.inner.root.fh, "query capacity of", "the export")
            .await?;
        Ok(Capacity {
            total_bytes: st.tbytes,
            free_bytes: st.fbytes,
            available_bytes: st.abytes,
        })
    }

    /// Proves the export takes writes: creates and removes an empty directory `.probe-<tag>` in the
    /// staging area (the leading '.' keeps a leftover out of [`Self::staged_volumes`]).
    pub async fn probe_writable(&self, tag: &str) -> NfsResult<()> {
        const OP: &str = "write probe directory in";
        let name = format!(".probe-{tag}");
        let path = staging_path(&name);
        let staging = self
            .staging(true)
            .await?
            .ok_or_else(|| status(OP, STAGING_DIR, nfsstat3::NFS3ERR_NOENT))?;
        // Exists (a leftover, or a resent MKDIR that was executed) is as good as made.
        self.proto()
            .mkdir(&staging.fh, name.as_bytes(), 0o700, OP, &path)
            .await?;
        let answer = self
            .proto()
            .rmdir(&staging.fh, name.as_bytes(), "remove probe directory in", &path)
            .await?;
        match answer.status {
            nfsstat3::NFS3_OK => Ok(()),
            nfsstat3::NFS3ERR_NOENT if answer.resent => Ok(()),
            other => Err(status("remove probe directory in", &path, other)),
        }
    }

    // ---- internals ----

    /// Walks `components` from the root; missing ones are made (mode 0755) when `create`, else `None`.
    async fn walk(&self, components: &[String], create: bool, op: &'static str) -> NfsResult<Option<Node>> {
        let mut cur = self.inner.root.clone();
        for (i, c) in components.iter().enumerate() {
            let here = join(&components[..=i]);
            let found = match self.proto().lookup(&cur.fh, c.as_bytes(), op, &here).await? {
                Some(n) => n,
                None if create => {
                    self.mkdir_or_existing(&cur.fh, c.as_bytes(), 0o755, "create directory", op, &here)
                        .await?
                }
                None => return Ok(None),
            };
            if !found.is_dir() {
                return Err(not_dir(op, here));
            }
            cur = found;
        }
        Ok(Some(cur))
    }

    /// MKDIR of a directory that must be new: one that already exists is ours only if our own resent
    /// MKDIR made it (and it is a directory), else NFS3ERR_EXIST.
    async fn mkdir_owned(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        mode: u32,
        op: &'static str,
        path: &str,
    ) -> NfsResult<Node> {
        match self.proto().mkdir(dir, name, mode, op, path).await? {
            Made::New(n) => Ok(n),
            Made::Exists { resent: true } => self
                .proto()
                .lookup(dir, name, op, path)
                .await?
                .filter(Node::is_dir)
                .ok_or_else(|| status(op, path, nfsstat3::NFS3ERR_EXIST)),
            Made::Exists { resent: false } => Err(status(op, path, nfsstat3::NFS3ERR_EXIST)),
        }
    }

    /// MKDIR, or the entry already there (whoever made it; the caller checks its type). `mkdir_op`
    /// names the MKDIR in errors, `lookup_op` the LOOKUP.
    async fn mkdir_or_existing(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        mode: u32,
        mkdir_op: &'static str,
        lookup_op: &'static str,
        path: &str,
    ) -> NfsResult<Node> {
        match self.proto().mkdir(dir, name, mode, mkdir_op, path).await? {
            Made::New(n) => Ok(n),
            Made::Exists { .. } => self
                .proto()
                .lookup(dir, name, lookup_op, path)
                .await?
                .ok_or_else(|| status(lookup_op, path, nfsstat3::NFS3ERR_NOENT)),
        }
    }

    /// The staging area (made with mode 0700 when `create`); it must be a real directory.
    async fn staging(&self, create: bool) -> NfsResult<Option<Node>> {
        const OP: &str = "open staging area";
        let root = &self.inner.root.fh;
        let name = STAGING_DIR.as_bytes();
        let found = match self.proto().lookup(root, name, OP, STAGING_DIR).await? {
            Some(n) => n,
            None if !create => return Ok(None),
            None => {
                self.mkdir_or_existing(root, name, 0o700, "create staging area", OP, STAGING_DIR)
                    .await?
            }
        };
        if !found.is_dir() {
            return Err(not_dir(OP, STAGING_DIR));
        }
        Ok(Some(found))
    }

    async fn read_record(&self, staging: &Node, pv_name: &str) -> NfsResult<Option<Record>> {
        const OP: &str = "read staging record";
        let path = staging_path(pv_name);
        let rec = match self
            .proto()
            .lookup(&staging.fh, pv_name.as_bytes(), OP, &path)
            .await?
        {
            None => return Ok(None),
            Some(n) if !n.is_dir() => return Err(not_dir(OP, path)),
            Some(n) => n,
        };
        let bad = |reason: &str| NfsError::BadStagingRecord {
            op: OP,
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let target = self
            .proto()
            .read_small(&rec.fh, TARGET_FILE, OP, &sub(&path, TARGET_FILE))
            .await?
            .ok_or_else(|| bad("no target file"))?;
        let target = String::from_utf8(target).map_err(|_| bad("target is not UTF-8"))?;
        let target = target.strip_suffix('\n').unwrap_or(&target);
        let target: Vec<String> = target.split('/').map(str::to_owned).collect();
        if target.iter().any(|c| check_single_component(c).is_err()) {
            return Err(bad("target is not a valid volume path"));
        }
        let inode = match self
            .proto()
            .read_small(&rec.fh, INODE_FILE, OP, &sub(&path, INODE_FILE))
            .await?
        {
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| bad("inode is not UTF-8"))?;
                Some(
                    text.trim_end()
                        .parse::<u64>()
                        .map_err(|_| bad("inode is not a number"))?,
                )
            }
            None => None,
        };
        let vol_path = sub(&path, VOL_DIR);
        let placed = match self
            .proto()
            .lookup(&rec.fh, VOL_DIR.as_bytes(), OP, &vol_path)
            .await?
        {
            None => true,
            Some(n) if n.is_dir() => false,
            Some(_) => return Err(not_dir(OP, vol_path)),
        };
        let placing = self
            .proto()
            .lookup(&rec.fh, PLACING_FILE.as_bytes(), OP, &sub(&path, PLACING_FILE))
            .await?
            .is_some();
        Ok(Some(Record {
            fh: rec.fh,
            target,
            inode,
            placed,
            placing,
        }))
    }

    /// Builds `<pv>.tmp` (target, vol, inode) and publishes it as `<pv>` with one RENAME. RENAME cannot
    /// replace a published record: it always holds `target`, and a non-empty directory is never replaced.
    async fn build_record(&self, staging: &Node, pv_name: &str, path: &[String]) -> NfsResult<Record> {
        const OP: &str = "create staging record";
        let tmp = format!("{pv_name}{TMP_SUFFIX}");
        let tmp_path = staging_path(&tmp);
        self.remove_leftover(staging, &tmp).await?;
        let rec = self
            .mkdir_owned(&staging.fh, tmp.as_bytes(), 0o700, OP, &tmp_path)
            .await?;
        self.proto()
            .create_file(
                &rec.fh,
                TARGET_FILE.as_bytes(),
                0o600,
                format!("{}\n", join(path)).as_bytes(),
                OP,
                &sub(&tmp_path, TARGET_FILE),
            )
            .await?;
        let vol_path = sub(&tmp_path, VOL_DIR);
        let vol = self
            .mkdir_owned(&rec.fh, VOL_DIR.as_bytes(), 0o700, OP, &vol_path)
            .await?;
        self.proto()
            .create_file(
                &rec.fh,
                INODE_FILE.as_bytes(),
                0o600,
                format!("{}\n", vol.attr.fileid).as_bytes(),
                OP,
                &sub(&tmp_path, INODE_FILE),
            )
            .await?;
        let published = staging_path(pv_name);
        let answer = self
            .proto()
            .rename(
                &staging.fh,
                tmp.as_bytes(),
                &staging.fh,
                pv_name.as_bytes(),
                OP,
                &published,
            )
            .await?;
        let record = Record {
            fh: rec.fh.clone(),
            target: path.to_vec(),
            inode: Some(vol.attr.fileid),
            placed: false,
            placing: false,
        };
        match answer.status {
            // The handle still refers to the same directory, now published as `<pv>`.
            nfsstat3::NFS3_OK => Ok(record),
            nfsstat3::NFS3ERR_NOENT
                if answer.resent
                    && self
                        .proto()
                        .lookup(&staging.fh, pv_name.as_bytes(), OP, &published)
                        .await?
                        .is_some_and(|n| n.attr.fileid == rec.attr.fileid) =>
            {
                Ok(record)
            }
            nfsstat3::NFS3ERR_EXIST | nfsstat3::NFS3ERR_NOTEMPTY => Err(NfsError::BadStagingRecord {
                op: OP,
                path: published,
                reason: "a concurrent attempt published a record for this volume".to_owned(),
            }),
            s => Err(status(OP, &published, s)),
        }
    }

    /// Unpublishes `<pv>` (RENAME to `<pv>.tmp`) and removes it; also removes any leftover `<pv>.tmp`.
    async fn drop_record(&self, staging: &Node, pv_name: &str) -> NfsResult<()> {
        let tmp = format!("{pv_name}{TMP_SUFFIX}");
        self.remove_leftover(staging, &tmp).await?;
        let answer = self
            .proto()
            .rename(
                &staging.fh,
                pv_name.as_bytes(),
                &staging.fh,
                tmp.as_bytes(),
                "remove staging record",
                &staging_path(pv_name),
            )
            .await?;
        match answer.status {
            nfsstat3::NFS3_OK => self.remove_leftover(staging, &tmp).await,
            nfsstat3::NFS3ERR_NOENT if answer.resent => self.remove_leftover(staging, &tmp).await,
            nfsstat3::NFS3ERR_NOENT => Ok(()),
            s => Err(status("remove staging record", &staging_path(pv_name), s)),
        }
    }

    /// Removes an unpublished `<pv>.tmp` record (ours by name) recursively.
    async fn remove_leftover(&self, staging: &Node, tmp: &str) -> NfsResult<()> {
        const OP: &str = "remove staging leftover";
        let path = staging_path(tmp);
        match self
            .proto()
            .lookup(&staging.fh, tmp.as_bytes(), OP, &path)
            .await?
        {
            None => Ok(()),
            Some(n) if n.is_dir() => {
                Remover::new(Arc::clone(&self.inner.proto), 4, self.inner.root.attr.fsid)
                    .remove(staging.fh.clone(), tmp.as_bytes().to_vec(), n, path)
                    .await
                    .map(drop)
            }
            Some(_) => {
                let answer = self
                    .proto()
                    .remove(&staging.fh, tmp.as_bytes(), OP, &path)
                    .await?;
                match answer.status {
                    nfsstat3::NFS3_OK | nfsstat3::NFS3ERR_NOENT => Ok(()),
                    s => Err(status(OP, &path, s)),
                }
            }
        }
    }

    // ---- helpers for tests and benchmarks (not part of the backend's contract) ----

    /// Makes `path` and missing parents (mode 0755) over NFS.
    #[doc(hidden)]
    pub async fn mkdir_p(&self, path: &[&str]) -> NfsResult<()> {
        let comps: Vec<String> = path.iter().map(|c| (*c).to_owned()).collect();
        self.walk(&comps, true, "create directory").await.map(drop)
    }

    /// Creates regular files `names` (empty, mode 0644) in the existing directory `dir`, `concurrency` at a
    /// time.
    #[doc(hidden)]
    pub async fn create_files(&self, dir: &[&str], names: Vec<String>, concurrency: usize) -> NfsResult<()> {
        let comps: Vec<String> = dir.iter().map(|c| (*c).to_owned()).collect();
        let dir_path = join(&comps);
        let node = self
            .walk(&comps, false, "create file")
            .await?
            .ok_or_else(|| status("create file", &dir_path, nfsstat3::NFS3ERR_NOENT))?;
        let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for name in names {
            let permit = Arc::clone(&limit)
                .acquire_owned()
                .await
                .map_err(|_| status("create file", &dir_path, nfsstat3::NFS3ERR_IO))?;
            let (proto, fh, path) = (
                Arc::clone(&self.inner.proto),
                node.fh.clone(),
                sub(&dir_path, &name),
            );
            tasks.spawn(async move {
                let _permit = permit;
                proto
                    .create_file(&fh, name.as_bytes(), 0o644, b"", "create file", &path)
                    .await
                    .map(drop)
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| NfsError::Protocol {
                op: "create file",
                path: dir_path.clone(),
                reason: e.to_string(),
            })??;
        }
        Ok(())
    }

    /// Writes a new regular file at `path` (parents must exist).
    #[doc(hidden)]
    pub async fn write_file(&self, path: &[&str], content: &[u8], mode: u32) -> NfsResult<()> {
        let (leaf, dir) = path
            .split_last()
            .ok_or_else(|| status("create file", "", nfsstat3::NFS3ERR_INVAL))?;
        let comps: Vec<String> = dir.iter().map(|c| (*c).to_owned()).collect();
        let full = path.join("/");
        let node = self
            .walk(&comps, false, "create file")
            .await?
            .ok_or_else(|| status("create file", &full, nfsstat3::NFS3ERR_NOENT))?;
        self.proto()
            .create_file(&node.fh, leaf.as_bytes(), mode, content, "create file", &full)
            .await
            .map(drop)
    }

    /// Makes a symlink at `path` pointing at `target` (parents must exist).
    #[doc(hidden)]
    pub async fn symlink(&self, path: &[&str], target: &str) -> NfsResult<()> {
        let (leaf, dir) = path
            .split_last()
            .ok_or_else(|| status("create symlink", "", nfsstat3::NFS3ERR_INVAL))?;
        let comps: Vec<String> = dir.iter().map(|c| (*c).to_owned()).collect();
        let full = path.join("/");
        let node = self
            .walk(&comps, false, "create symlink")
            .await?
            .ok_or_else(|| status("create symlink", &full, nfsstat3::NFS3ERR_NOENT))?;
        self.proto()
            .symlink(
                &node.fh,
                leaf.as_bytes(),
                target.as_bytes(),
                "create symlink",
                &full,
            )
            .await
    }

    /// Sets the permission bits of `path` (SETATTR).
    #[doc(hidden)]
    pub async fn chmod(&self, path: &[&str], mode: u32) -> NfsResult<()> {
        self.set_attr(path, mode_attr(mode)).await
    }

    /// Sets the owner of `path` (SETATTR).
    #[doc(hidden)]
    pub async fn chown(&self, path: &[&str], uid: Option<u32>, gid: Option<u32>) -> NfsResult<()> {
        let owner = sattr3 {
            uid: uid.map_or(Nfs3Option::None, Nfs3Option::Some),
            gid: gid.map_or(Nfs3Option::None, Nfs3Option::Some),
            ..sattr3::default()
        };
        self.set_attr(path, owner).await
    }

    async fn set_attr(&self, path: &[&str], attr: sattr3) -> NfsResult<()> {
        const OP: &str = "change attributes of";
        let comps: Vec<String> = path.iter().map(|c| (*c).to_owned()).collect();
        let full = join(&comps);
        let mut cur = self.inner.root.clone();
        for (i, c) in comps.iter().enumerate() {
            cur = self
                .proto()
                .lookup(&cur.fh, c.as_bytes(), OP, &join(&comps[..=i]))
                .await?
                .ok_or_else(|| status(OP, &full, nfsstat3::NFS3ERR_NOENT))?;
        }
        self.proto().setattr(&cur.fh, attr, OP, &full).await
    }

    /// Owner and permission bits of `path` as the server reports them (`None`: missing).
    #[doc(hidden)]
    pub async fn stat(&self, path: &[&str]) -> NfsResult<Option<(u32, u32, u32)>> {
        let mut cur = self.inner.root.clone();
        for (i, c) in path.iter().enumerate() {
            let here = path[..=i].join("/");
            match self.proto().lookup(&cur.fh, c.as_bytes(), "stat", &here).await? {
                Some(n) => cur = n,
                None => return Ok(None),
            }
        }
        Ok(Some((cur.attr.uid, cur.attr.gid, cur.attr.mode & 0o7777)))
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

/// The operations' futures must be `Send` so callers can spawn them.
#[allow(dead_code)]
fn assert_send(e: &DirectExport) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&e.delete_volume(&[], 1));
    is_send(&e.create_volume(
        "",
        &[],
        &DirAttrs {
            mode: 0,
            uid: None,
            gid: None,
        },
    ));
    is_send(&e.archive_volume(&[]));
    is_send(&e.finish_volume(""));
    is_send(&e.capacity());
}
