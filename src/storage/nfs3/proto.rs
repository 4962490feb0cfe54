//! NFSv3 procedures as the backend uses them: handle-based (never a path string on the wire, so nothing is
//! ever resolved through a symlink: LOOKUP returns the link itself), with the transport failure or NFS
//! status mapped to [`NfsError`] naming the operation and the path.

use nfs3_client::nfs3_types::nfs3::{
    COMMIT3args, CREATE3args, FSINFO3args, FSINFO3resok, FSSTAT3args, FSSTAT3resok, GETATTR3args, LINK3args,
    LOOKUP3args, MKDIR3args, MKNOD3args, Nfs3Option, Nfs3Result, READ3args, READDIRPLUS3args, READLINK3args,
    REMOVE3args, RENAME3args, RMDIR3args, SETATTR3args, SYMLINK3args, WRITE3args, cookie3, cookieverf3,
    createhow3, diropargs3, fattr3, ftype3, mknoddata3, nfs_fh3, nfspath3, nfsstat3, sattr3, stable_how,
    symlinkdata3, writeverf3,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::error::NfsError;
use super::rpc::{Failure, Pool, call};
use crate::core::staging::RECORD_FILE_MAX;
use crate::storage::transport::ReadFile;

pub(crate) type NfsResult<T> = Result<T, NfsError>;

const READDIR_DIRCOUNT: u32 = 32 * 1024;
const READDIR_MAXCOUNT: u32 = 128 * 1024;

/// A file handle with the attributes seen when it was looked up.
#[derive(Debug, Clone)]
pub struct Node {
    pub fh: nfs_fh3,
    pub attr: fattr3,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.attr.type_, ftype3::NF3DIR)
    }
}

/// The outcome of a procedure whose NFS status the caller interprets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    pub status: nfsstat3,
    /// The request was sent more than once (timeout or broken connection): a non-idempotent procedure may
    /// have been executed by an earlier send.
    pub resent: bool,
}

pub(crate) enum Mkdir {
    New(Node),
    Exists { resent: bool },
}

/// One directory entry from READDIRPLUS.
pub(crate) struct Entry {
    pub name: Vec<u8>,
    pub attr: Option<fattr3>,
    pub fh: Option<nfs_fh3>,
}

pub(crate) fn transport(op: &'static str, path: &str, f: Failure) -> NfsError {
    match f {
        Failure::TimedOut(after) => NfsError::TimedOut {
            op,
            path: path.to_owned(),
            after,
        },
        Failure::Rpc(reason) => NfsError::Rpc {
            op,
            path: path.to_owned(),
            reason,
        },
    }
}

pub(crate) fn status(op: &'static str, path: &str, status: nfsstat3) -> NfsError {
    NfsError::Status {
        op,
        path: path.to_owned(),
        status,
    }
}

fn answer<O, E>(value: Nfs3Result<O, E>, resent: bool) -> Answer {
    Answer {
        status: match value {
            Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
            Nfs3Result::Err((s, _)) => s,
        },
        resent,
    }
}

pub(crate) fn dirop<'a>(dir: &nfs_fh3, name: &'a [u8]) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: name.into(),
    }
}

fn no_attr_change() -> sattr3 {
    sattr3::default()
}

pub(crate) fn mode_attr(mode: u32) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(mode),
        ..no_attr_change()
    }
}

/// The NFS procedures over a connection pool, relative to handles.
pub(crate) struct Proto {
    pub pool: Pool,
}

impl Proto {
    pub async fn getattr(&self, fh: &nfs_fh3, op: &'static str, path: &str) -> NfsResult<fattr3> {
        let args = GETATTR3args { object: fh.clone() };
        let sent = call!(self.pool, |c| c.getattr(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => Ok(ok.obj_attributes),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// `None`: no such entry. Never follows a symlink: a link is returned as itself.
    pub async fn lookup(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        op: &'static str,
        path: &str,
    ) -> NfsResult<Option<Node>> {
        let args = LOOKUP3args {
            what: dirop(dir, name),
        };
        let sent = call!(self.pool, |c| c.lookup(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => {
                let attr = match ok.obj_attributes {
                    Nfs3Option::Some(a) => a,
                    Nfs3Option::None => self.getattr(&ok.object, op, path).await?,
                };
                Ok(Some(Node { fh: ok.object, attr }))
            }
            Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(None),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// MKDIR with exactly `mode` requested (the server may drop setgid: callers SETATTR afterwards).
    pub async fn mkdir(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        mode: u32,
        op: &'static str,
        path: &str,
    ) -> NfsResult<Mkdir> {
        let args = MKDIR3args {
            where_: dirop(dir, name),
            attributes: mode_attr(mode),
        };
        let sent = call!(self.pool, |c| c.mkdir(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => {
                let node = match (ok.obj, ok.obj_attributes) {
                    (Nfs3Option::Some(fh), Nfs3Option::Some(attr)) => Node { fh, attr },
                    _ => self
                        .lookup(dir, name, op, path)
                        .await?
                        .ok_or_else(|| status(op, path, nfsstat3::NFS3ERR_NOENT))?,
                };
                Ok(Mkdir::New(node))
            }
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => Ok(Mkdir::Exists { resent: sent.resent }),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    pub async fn setattr(&self, fh: &nfs_fh3, attr: sattr3, op: &'static str, path: &str) -> NfsResult<()> {
        let args = SETATTR3args {
            object: fh.clone(),
            new_attributes: attr,
            guard: Nfs3Option::None,
        };
        let sent = call!(self.pool, |c| c.setattr(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    pub async fn rename(
        &self,
        from_dir: &nfs_fh3,
        from: &[u8],
        to_dir: &nfs_fh3,
        to: &[u8],
        op: &'static str,
        path: &str,
    ) -> NfsResult<Answer> {
        let args = RENAME3args {
            from: dirop(from_dir, from),
            to: dirop(to_dir, to),
        };
        let sent = call!(self.pool, |c| c.rename(&args)).map_err(|f| transport(op, path, f))?;
        Ok(answer(sent.value, sent.resent))
    }

    pub async fn remove(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        op: &'static str,
        path: &str,
    ) -> NfsResult<Answer> {
        let args = REMOVE3args {
            object: dirop(dir, name),
        };
        let sent = call!(self.pool, |c| c.remove(&args)).map_err(|f| transport(op, path, f))?;
        Ok(answer(sent.value, sent.resent))
    }

    pub async fn rmdir(&self, dir: &nfs_fh3, name: &[u8], op: &'static str, path: &str) -> NfsResult<Answer> {
        let args = RMDIR3args {
            object: dirop(dir, name),
        };
        let sent = call!(self.pool, |c| c.rmdir(&args)).map_err(|f| transport(op, path, f))?;
        Ok(answer(sent.value, sent.resent))
    }

    /// Creates a regular file (GUARDED) and writes `content` with FILE_SYNC. `None`: the name
    /// existed (and our own resent request did not make it).
    pub async fn create_file(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        mode: u32,
        content: &[u8],
        op: &'static str,
        path: &str,
    ) -> NfsResult<Option<Node>> {
        let args = CREATE3args {
            where_: dirop(dir, name),
            how: createhow3::GUARDED(mode_attr(mode)),
        };
        let sent = call!(self.pool, |c| c.create(&args)).map_err(|f| transport(op, path, f))?;
        let node = match sent.value {
            Nfs3Result::Ok(ok) => match (ok.obj, ok.obj_attributes) {
                (Nfs3Option::Some(fh), Nfs3Option::Some(attr)) => Some(Node { fh, attr }),
                _ => None,
            },
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) if sent.resent => None,
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => return Ok(None),
            Nfs3Result::Err((s, _)) => return Err(status(op, path, s)),
        };
        let node = match node {
            Some(n) => n,
            None => self
                .lookup(dir, name, op, path)
                .await?
                .ok_or_else(|| status(op, path, nfsstat3::NFS3ERR_NOENT))?,
        };
        if !content.is_empty() {
            self.write_all(&node.fh, content, op, path).await?;
        }
        Ok(Some(node))
    }

    async fn write_all(&self, fh: &nfs_fh3, content: &[u8], op: &'static str, path: &str) -> NfsResult<()> {
        let mut offset = 0usize;
        while offset < content.len() {
            let chunk = &content[offset..content.len().min(offset + 32 * 1024)];
            let args = WRITE3args {
                file: fh.clone(),
                offset: offset as u64,
                count: u32::try_from(chunk.len()).unwrap_or(u32::MAX),
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(chunk),
            };
            let sent = call!(self.pool, |c| c.write(&args)).map_err(|f| transport(op, path, f))?;
            match sent.value {
                Nfs3Result::Ok(ok) if ok.count > 0 => offset += ok.count as usize,
                Nfs3Result::Ok(_) => return Err(status(op, path, nfsstat3::NFS3ERR_IO)),
                Nfs3Result::Err((s, _)) => return Err(status(op, path, s)),
            }
        }
        Ok(())
    }

    /// `false`: the name existed (and our own resent request did not make it).
    pub async fn symlink(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        target: &[u8],
        op: &'static str,
        path: &str,
    ) -> NfsResult<bool> {
        let args = SYMLINK3args {
            where_: dirop(dir, name),
            symlink: symlinkdata3 {
                symlink_attributes: mode_attr(0o777),
                symlink_data: nfspath3(Opaque::borrowed(target)),
            },
        };
        let sent = call!(self.pool, |c| c.symlink(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(_) => Ok(true),
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => Ok(sent.resent),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// Makes a FIFO, or a socket (for the test suites: a copy leaves them out, and nothing else
    /// makes one).
    pub async fn mknod(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        socket: bool,
        op: &'static str,
        path: &str,
    ) -> NfsResult<()> {
        let what = if socket {
            mknoddata3::NF3SOCK(mode_attr(0o644))
        } else {
            mknoddata3::NF3FIFO(mode_attr(0o644))
        };
        let args = MKNOD3args {
            where_: dirop(dir, name),
            what,
        };
        let sent = call!(self.pool, |c| c.mknod(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// A further name `name` in `dir` for `file` (for the test suites).
    pub async fn link(
        &self,
        file: &nfs_fh3,
        dir: &nfs_fh3,
        name: &[u8],
        op: &'static str,
        path: &str,
    ) -> NfsResult<()> {
        let args = LINK3args {
            file: file.clone(),
            link: dirop(dir, name),
        };
        let sent = call!(self.pool, |c| c.link(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// Up to `count` bytes from `offset`, and whether the file ends there.
    pub async fn read(
        &self,
        fh: &nfs_fh3,
        offset: u64,
        count: u32,
        op: &'static str,
        path: &str,
    ) -> NfsResult<(Vec<u8>, bool)> {
        let args = READ3args {
            file: fh.clone(),
            offset,
            count,
        };
        let sent = call!(self.pool, |c| c.read(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => Ok((ok.data.as_ref().to_vec(), ok.eof)),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// One WRITE of `data` at `offset` (the server may take fewer bytes: how many it took), and
    /// the verifier an UNSTABLE write's COMMIT must match.
    pub async fn write(
        &self,
        fh: &nfs_fh3,
        offset: u64,
        data: &[u8],
        stable: stable_how,
        op: &'static str,
        path: &str,
    ) -> NfsResult<(usize, stable_how, writeverf3)> {
        let args = WRITE3args {
            file: fh.clone(),
            offset,
            count: u32::try_from(data.len()).unwrap_or(u32::MAX),
            stable,
            data: Opaque::borrowed(data),
        };
        let sent = call!(self.pool, |c| c.write(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) if ok.count > 0 => Ok((ok.count as usize, ok.committed, ok.verf)),
            Nfs3Result::Ok(_) => Err(status(op, path, nfsstat3::NFS3ERR_IO)),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// COMMIT of the whole file: the verifier of the server's current instance.
    pub async fn commit(&self, fh: &nfs_fh3, op: &'static str, path: &str) -> NfsResult<writeverf3> {
        let args = COMMIT3args {
            file: fh.clone(),
            offset: 0,
            count: 0,
        };
        let sent = call!(self.pool, |c| c.commit(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => Ok(ok.verf),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    pub async fn readlink(&self, fh: &nfs_fh3, op: &'static str, path: &str) -> NfsResult<Vec<u8>> {
        let args = READLINK3args { symlink: fh.clone() };
        let sent = call!(self.pool, |c| c.readlink(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => Ok(ok.data.0.as_ref().to_vec()),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    /// Reads a small regular file (at most [`RECORD_FILE_MAX`] bytes).
    pub async fn read_small(
        &self,
        dir: &nfs_fh3,
        name: &[u8],
        op: &'static str,
        path: &str,
    ) -> NfsResult<ReadFile> {
        let Some(node) = self.lookup(dir, name, op, path).await? else {
            return Ok(ReadFile::Missing);
        };
        if !matches!(node.attr.type_, ftype3::NF3REG) {
            return Ok(ReadFile::NotAFile);
        }
        let mut out = Vec::new();
        loop {
            let args = READ3args {
                file: node.fh.clone(),
                offset: out.len() as u64,
                count: 32 * 1024,
            };
            let sent = call!(self.pool, |c| c.read(&args)).map_err(|f| transport(op, path, f))?;
            match sent.value {
                Nfs3Result::Ok(ok) => {
                    out.extend_from_slice(ok.data.as_ref());
                    if ok.eof || ok.data.is_empty() || out.len() as u64 >= RECORD_FILE_MAX {
                        out.truncate(usize::try_from(RECORD_FILE_MAX).unwrap_or(usize::MAX));
                        return Ok(ReadFile::Data(out));
                    }
                }
                Nfs3Result::Err((s, _)) => return Err(status(op, path, s)),
            }
        }
    }

    /// One READDIRPLUS page from `cookie`; returns the entries (without "." and ".."), the next cookie
    /// and verifier, and whether this was the last page.
    pub async fn readdir_page(
        &self,
        dir: &nfs_fh3,
        cookie: cookie3,
        verf: cookieverf3,
        op: &'static str,
        path: &str,
    ) -> NfsResult<(Vec<Entry>, cookie3, cookieverf3, bool)> {
        let args = READDIRPLUS3args {
            dir: dir.clone(),
            cookie,
            cookieverf: verf,
            dircount: READDIR_DIRCOUNT,
            maxcount: READDIR_MAXCOUNT,
        };
        let sent = call!(self.pool, |c| c.readdirplus(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => {
                let mut next = cookie;
                let mut out = Vec::new();
                for e in ok.reply.entries.into_inner() {
                    next = e.cookie;
                    let name = e.name.0.into_owned();
                    if name == b"." || name == b".." {
                        continue;
                    }
                    out.push(Entry {
                        name,
                        attr: match e.name_attributes {
                            Nfs3Option::Some(a) => Some(a),
                            Nfs3Option::None => None,
                        },
                        fh: match e.name_handle {
                            Nfs3Option::Some(fh) => Some(fh),
                            Nfs3Option::None => None,
                        },
                    });
                }
                Ok((out, next, ok.cookieverf, ok.reply.eof))
            }
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    pub async fn fsinfo(&self, root: &nfs_fh3, op: &'static str, path: &str) -> NfsResult<FSINFO3resok> {
        let args = FSINFO3args { fsroot: root.clone() };
        let sent = call!(self.pool, |c| c.fsinfo(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => Ok(ok),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }

    pub async fn fsstat(&self, root: &nfs_fh3, op: &'static str, path: &str) -> NfsResult<FSSTAT3resok> {
        let args = FSSTAT3args { fsroot: root.clone() };
        let sent = call!(self.pool, |c| c.fsstat(&args)).map_err(|f| transport(op, path, f))?;
        match sent.value {
            Nfs3Result::Ok(ok) => Ok(ok),
            Nfs3Result::Err((s, _)) => Err(status(op, path, s)),
        }
    }
}
