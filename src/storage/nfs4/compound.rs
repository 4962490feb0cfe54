//! COMPOUND (RFC 8881 §16.2, §18): the one NFSv4 procedure, a list of operations the server runs
//! in order until one fails. Arguments are encoded once ([`Compound::encode`]); a reply decodes
//! into one result per operation run ([`Reply::decode`]), the failed one last, so a caller knows
//! exactly which operations took effect.

use super::attrs::{Attributes, Bitmap, FH_MAX, NewAttributes};
use super::status::Status;
use super::xdr::{Decoder, Encoder, XdrError, XdrResult};

/// The RPC program, version and procedure of COMPOUND.
pub const PROGRAM: u32 = 100_003;
pub const VERSION: u32 = 4;
pub const PROC_COMPOUND: u32 = 1;

/// A session's identity (`sessionid4`).
pub type SessionId = [u8; 16];

/// The special stateid that stands for "no open state" (all zeros, RFC 8881 §8.2.3).
pub const ANONYMOUS_STATEID: Stateid = Stateid {
    seqid: 0,
    other: [0; 12],
};

/// A `stateid4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stateid {
    pub seqid: u32,
    pub other: [u8; 12],
}

/// The special stateid that stands for "the stateid the previous operation of this COMPOUND
/// returned" (RFC 8881 §16.2.3.1.2): WRITE and CLOSE right after the OPEN that made a file.
pub const CURRENT_STATEID: Stateid = Stateid {
    seqid: 1,
    other: [0; 12],
};

impl Stateid {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.seqid).fixed(&self.other);
    }

    fn decode(d: &mut Decoder<'_>) -> XdrResult<Stateid> {
        let seqid = d.u32("a stateid")?;
        let other = d.fixed(12, "a stateid")?.try_into().expect("12 bytes");
        Ok(Stateid { seqid, other })
    }
}

/// How WRITE asks the data to be kept (`stable_how4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stable {
    Unstable = 0,
    DataSync = 1,
    FileSync = 2,
}

impl Stable {
    fn from_wire(value: u32) -> XdrResult<Stable> {
        match value {
            0 => Ok(Stable::Unstable),
            1 => Ok(Stable::DataSync),
            2 => Ok(Stable::FileSync),
            value => Err(XdrError::Unexpected {
                what: "a write's stability",
                value,
            }),
        }
    }
}

/// `OPEN4_SHARE_ACCESS_WRITE | OPEN4_SHARE_ACCESS_WANT_NO_DELEG`: open to write, and never hand
/// us a delegation (we keep no state a server could recall).
const SHARE_WRITE_NO_DELEG: u32 = 0x0002 | 0x0400;

/// What CREATE makes (`createtype4`): the objects that are not regular files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewObject {
    Dir,
    Symlink(Vec<u8>),
    Fifo,
    Socket,
}

/// `channel_attrs4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelAttrs {
    pub header_pad_size: u32,
    pub max_request_size: u32,
    pub max_response_size: u32,
    pub max_response_size_cached: u32,
    pub max_operations: u32,
    pub max_requests: u32,
}

impl ChannelAttrs {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.header_pad_size)
            .u32(self.max_request_size)
            .u32(self.max_response_size)
            .u32(self.max_response_size_cached)
            .u32(self.max_operations)
            .u32(self.max_requests)
            // No RDMA.
            .u32(0);
    }

    fn decode(d: &mut Decoder<'_>) -> XdrResult<ChannelAttrs> {
        let what = "channel attributes";
        let attrs = ChannelAttrs {
            header_pad_size: d.u32(what)?,
            max_request_size: d.u32(what)?,
            max_response_size: d.u32(what)?,
            max_response_size_cached: d.u32(what)?,
            max_operations: d.u32(what)?,
            max_requests: d.u32(what)?,
        };
        for _ in 0..d.count(1, what)? {
            d.u32(what)?;
        }
        Ok(attrs)
    }
}

/// One operation of a COMPOUND, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Sequence {
        session: SessionId,
        sequence: u32,
        slot: u32,
        highest_slot: u32,
        cache_this: bool,
    },
    PutRootFh,
    PutFh(Vec<u8>),
    GetFh,
    SaveFh,
    RestoreFh,
    Lookup(Vec<u8>),
    LookupParent,
    GetAttr(Bitmap),
    /// Fails with `NFS4ERR_NOT_SAME` unless the current object has these attributes.
    Verify(Attributes4),
    /// Fails with `NFS4ERR_SAME` if the current object has these attributes.
    NotVerify(Attributes4),
    Create {
        object: NewObject,
        name: Vec<u8>,
        attrs: NewAttributes,
    },
    SetAttr {
        stateid: Stateid,
        attrs: NewAttributes,
    },
    Remove(Vec<u8>),
    /// Renames the saved filehandle's `from` to the current filehandle's `to`.
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    ReadLink,
    /// Creates `name` in the current directory only if it is not there, or is there from a
    /// request of ours with this `verifier` (EXCLUSIVE4_1, RFC 8881 §18.16.3), opened to write
    /// for `owner`; `attrs` must be among the server's `suppattr_exclcreat`.
    OpenExclusive {
        client: u64,
        owner: Vec<u8>,
        name: Vec<u8>,
        verifier: [u8; 8],
        attrs: NewAttributes,
    },
    Close(Stateid),
    Write {
        stateid: Stateid,
        offset: u64,
        stable: Stable,
        data: Vec<u8>,
    },
    Read {
        stateid: Stateid,
        offset: u64,
        count: u32,
    },
    Commit,
    /// Lists the current directory from `cookie` on (0 first; then a cookie an entry gave, with
    /// the verifier the reply gave), at most `max_bytes` of reply, with `attrs` of each entry.
    ReadDir {
        cookie: u64,
        verifier: [u8; 8],
        max_bytes: u32,
        attrs: Bitmap,
    },
    /// Links the saved filehandle into the current directory as `name`.
    Link(Vec<u8>),
    /// The security flavors the server accepts for the current filehandle.
    SecInfoNoName,
    ExchangeId {
        verifier: [u8; 8],
        owner: Vec<u8>,
        flags: u32,
    },
    CreateSession {
        client: u64,
        sequence: u32,
        fore: ChannelAttrs,
        back: ChannelAttrs,
    },
    DestroySession(SessionId),
    ReclaimComplete,
}

/// Raw `fattr4` for VERIFY and NVERIFY: a bitmap and values encoded by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes4 {
    pub mask: Bitmap,
    pub values: Vec<u8>,
}

impl Attributes4 {
    /// "Is of type `ftype`" (see [`super::attrs::ftype`]).
    pub fn file_type(ftype: u32) -> Attributes4 {
        let mut v = Encoder::new();
        v.u32(ftype);
        Attributes4 {
            mask: Bitmap::of(&[super::attrs::id::TYPE]),
            values: v.into_bytes(),
        }
    }

    fn encode(&self, e: &mut Encoder) {
        self.mask.encode(e);
        e.opaque(&self.values);
    }
}

/// Operation numbers (`nfs_opnum4`).
mod opnum {
    pub const CLOSE: u32 = 4;
    pub const COMMIT: u32 = 5;
    pub const CREATE: u32 = 6;
    pub const GETATTR: u32 = 9;
    pub const GETFH: u32 = 10;
    pub const LINK: u32 = 11;
    pub const LOOKUP: u32 = 15;
    pub const LOOKUPP: u32 = 16;
    pub const NVERIFY: u32 = 17;
    pub const OPEN: u32 = 18;
    pub const PUTFH: u32 = 22;
    pub const PUTROOTFH: u32 = 24;
    pub const READ: u32 = 25;
    pub const READDIR: u32 = 26;
    pub const READLINK: u32 = 27;
    pub const REMOVE: u32 = 28;
    pub const RENAME: u32 = 29;
    pub const RESTOREFH: u32 = 31;
    pub const SAVEFH: u32 = 32;
    pub const SETATTR: u32 = 34;
    pub const VERIFY: u32 = 37;
    pub const WRITE: u32 = 38;
    pub const EXCHANGE_ID: u32 = 42;
    pub const CREATE_SESSION: u32 = 43;
    pub const DESTROY_SESSION: u32 = 44;
    pub const SECINFO_NO_NAME: u32 = 52;
    pub const SEQUENCE: u32 = 53;
    pub const RECLAIM_COMPLETE: u32 = 58;
    pub const ILLEGAL: u32 = 10044;
}

/// `EXCHGID4_FLAG_USE_NON_PNFS`: we are a plain client, no pNFS.
pub const EXCHGID4_FLAG_USE_NON_PNFS: u32 = 0x0001_0000;
/// The callback program number we name; no back channel is ever used.
const CB_PROGRAM: u32 = 0x4000_0000;

impl Op {
    fn number(&self) -> u32 {
        match self {
            Op::Sequence { .. } => opnum::SEQUENCE,
            Op::PutRootFh => opnum::PUTROOTFH,
            Op::PutFh(_) => opnum::PUTFH,
            Op::GetFh => opnum::GETFH,
            Op::SaveFh => opnum::SAVEFH,
            Op::RestoreFh => opnum::RESTOREFH,
            Op::Lookup(_) => opnum::LOOKUP,
            Op::LookupParent => opnum::LOOKUPP,
            Op::GetAttr(_) => opnum::GETATTR,
            Op::Verify(_) => opnum::VERIFY,
            Op::NotVerify(_) => opnum::NVERIFY,
            Op::Create { .. } => opnum::CREATE,
            Op::SetAttr { .. } => opnum::SETATTR,
            Op::Remove(_) => opnum::REMOVE,
            Op::Rename { .. } => opnum::RENAME,
            Op::ReadLink => opnum::READLINK,
            Op::OpenExclusive { .. } => opnum::OPEN,
            Op::Close(_) => opnum::CLOSE,
            Op::Write { .. } => opnum::WRITE,
            Op::Read { .. } => opnum::READ,
            Op::Commit => opnum::COMMIT,
            Op::ReadDir { .. } => opnum::READDIR,
            Op::Link(_) => opnum::LINK,
            Op::SecInfoNoName => opnum::SECINFO_NO_NAME,
            Op::ExchangeId { .. } => opnum::EXCHANGE_ID,
            Op::CreateSession { .. } => opnum::CREATE_SESSION,
            Op::DestroySession(_) => opnum::DESTROY_SESSION,
            Op::ReclaimComplete => opnum::RECLAIM_COMPLETE,
        }
    }

    fn encode(&self, e: &mut Encoder) {
        e.u32(self.number());
        match self {
            Op::Sequence {
                session,
                sequence,
                slot,
                highest_slot,
                cache_this,
            } => {
                e.fixed(session)
                    .u32(*sequence)
                    .u32(*slot)
                    .u32(*highest_slot)
                    .bool(*cache_this);
            }
            Op::PutRootFh | Op::GetFh | Op::SaveFh | Op::RestoreFh | Op::LookupParent | Op::ReadLink => {}
            Op::PutFh(fh) => {
                e.opaque(fh);
            }
            Op::Lookup(name) | Op::Remove(name) | Op::Link(name) => {
                e.opaque(name);
            }
            Op::OpenExclusive {
                client,
                owner,
                name,
                verifier,
                attrs,
            } => {
                // seqid (ignored in 4.1), access, deny none, the open owner.
                e.u32(0)
                    .u32(SHARE_WRITE_NO_DELEG)
                    .u32(0)
                    .u64(*client)
                    .opaque(owner);
                // OPEN4_CREATE, EXCLUSIVE4_1 with its verifier and attributes.
                e.u32(1).u32(3).fixed(verifier);
                attrs.encode(e);
                // CLAIM_NULL: the name in the current directory.
                e.u32(0).opaque(name);
            }
            Op::Close(stateid) => {
                e.u32(0);
                stateid.encode(e);
            }
            Op::Write {
                stateid,
                offset,
                stable,
                data,
            } => {
                stateid.encode(e);
                e.u64(*offset).u32(*stable as u32).opaque(data);
            }
            Op::Read {
                stateid,
                offset,
                count,
            } => {
                stateid.encode(e);
                e.u64(*offset).u32(*count);
            }
            Op::Commit => {
                // The whole file.
                e.u64(0).u32(0);
            }
            Op::ReadDir {
                cookie,
                verifier,
                max_bytes,
                attrs,
            } => {
                // dircount (a hint of the names' share) and maxcount (the whole reply).
                e.u64(*cookie).fixed(verifier).u32(*max_bytes).u32(*max_bytes);
                attrs.encode(e);
            }
            Op::SecInfoNoName => {
                // SECINFO_STYLE4_CURRENT_FH.
                e.u32(0);
            }
            Op::GetAttr(mask) => mask.encode(e),
            Op::Verify(attrs) | Op::NotVerify(attrs) => attrs.encode(e),
            Op::Create { object, name, attrs } => {
                match object {
                    NewObject::Dir => e.u32(super::attrs::ftype::DIR),
                    NewObject::Symlink(target) => e.u32(super::attrs::ftype::LNK).opaque(target),
                    NewObject::Fifo => e.u32(super::attrs::ftype::FIFO),
                    NewObject::Socket => e.u32(super::attrs::ftype::SOCK),
                };
                e.opaque(name);
                attrs.encode(e);
            }
            Op::SetAttr { stateid, attrs } => {
                stateid.encode(e);
                attrs.encode(e);
            }
            Op::Rename { from, to } => {
                e.opaque(from).opaque(to);
            }
            Op::ExchangeId {
                verifier,
                owner,
                flags,
            } => {
                // client_owner4, flags, state protection SP4_NONE, no implementation id.
                e.fixed(verifier).opaque(owner).u32(*flags).u32(0).u32(0);
            }
            Op::CreateSession {
                client,
                sequence,
                fore,
                back,
            } => {
                // No flags (no persistence, no back channel on this connection).
                e.u64(*client).u32(*sequence).u32(0);
                fore.encode(e);
                back.encode(e);
                // The callback program, and one security parameter: AUTH_NONE.
                e.u32(CB_PROGRAM).u32(1).u32(0);
            }
            Op::DestroySession(session) => {
                e.fixed(session);
            }
            Op::ReclaimComplete => {
                // rca_one_fs: false, the whole client's reclaim is done.
                e.bool(false);
            }
        }
    }
}

/// A COMPOUND request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compound {
    /// Shown by the server in its logs; echoed in the reply.
    pub tag: &'static str,
    pub ops: Vec<Op>,
}

impl Compound {
    /// COMPOUND4args, minor version 1.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.opaque(self.tag.as_bytes()).u32(1);
        e.u32(u32::try_from(self.ops.len()).expect("a few operations"));
        for op in &self.ops {
            op.encode(&mut e);
        }
        e.into_bytes()
    }
}

/// `change_info4`: a directory's change attribute before and after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeInfo {
    pub atomic: bool,
    pub before: u64,
    pub after: u64,
}

impl ChangeInfo {
    fn decode(d: &mut Decoder<'_>) -> XdrResult<ChangeInfo> {
        Ok(ChangeInfo {
            atomic: d.bool("change info")?,
            before: d.u64("change info")?,
            after: d.u64("change info")?,
        })
    }
}

/// What a successful operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// PUTFH, PUTROOTFH, SAVEFH, RESTOREFH, LOOKUP, LOOKUPP, VERIFY, NVERIFY, DESTROY_SESSION,
    /// RECLAIM_COMPLETE.
    Nothing,
    Sequence {
        session: SessionId,
        sequence: u32,
        slot: u32,
        highest_slot: u32,
        target_highest_slot: u32,
        status_flags: u32,
    },
    GetFh(Vec<u8>),
    GetAttr(Box<Attributes>),
    Create {
        dir: ChangeInfo,
        attrs_set: Bitmap,
    },
    SetAttr(Bitmap),
    Remove(ChangeInfo),
    Rename {
        from_dir: ChangeInfo,
        to_dir: ChangeInfo,
    },
    ReadLink(Vec<u8>),
    Open {
        stateid: Stateid,
        /// Attributes the server set from our request: bits not set here but asked for must be
        /// set with a SETATTR after the OPEN, in a COMPOUND of their own (§18.16.4).
        attrs_set: Bitmap,
    },
    Close,
    Write {
        count: u32,
        committed: Stable,
        verifier: [u8; 8],
    },
    Read {
        eof: bool,
        data: Vec<u8>,
    },
    Commit([u8; 8]),
    ReadDir {
        verifier: [u8; 8],
        entries: Vec<DirEntry>,
        eof: bool,
    },
    Link(ChangeInfo),
    /// The RPC security flavors offered, in the server's order of preference.
    SecInfo(Vec<u32>),
    ExchangeId {
        client: u64,
        sequence: u32,
        flags: u32,
    },
    CreateSession {
        session: SessionId,
        sequence: u32,
        fore: ChannelAttrs,
    },
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub cookie: u64,
    pub name: Vec<u8>,
    pub attrs: Attributes,
}

/// One operation's result: its number and status, and what it returned if it succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpResult {
    pub op: u32,
    pub status: Status,
    pub done: Option<Done>,
}

/// The longest symlink target we read.
const LINK_MAX: usize = 4096;
/// The longest name in a directory listing (`NAME_MAX` and then some).
const NAME_MAX: usize = 1024;
/// The most entries one READDIR reply may hold: a reply of at most a few MiB holds no more.
const ENTRIES_MAX: usize = 1 << 16;
/// The longest opaque in EXCHANGE_ID's reply (`NFS4_OPAQUE_LIMIT`).
const OPAQUE_LIMIT: usize = 1024;

fn session_id(d: &mut Decoder<'_>, what: &'static str) -> XdrResult<SessionId> {
    Ok(d.fixed(16, what)?.try_into().expect("16 bytes"))
}

/// Reads an `nfs_impl_id4<1>` and drops it.
fn skip_impl_id(d: &mut Decoder<'_>) -> XdrResult<()> {
    let what = "the server's implementation id";
    for _ in 0..d.count(1, what)? {
        d.opaque(OPAQUE_LIMIT, what)?;
        d.opaque(OPAQUE_LIMIT, what)?;
        d.i64(what)?;
        d.u32(what)?;
    }
    Ok(())
}

impl OpResult {
    fn decode(d: &mut Decoder<'_>) -> XdrResult<OpResult> {
        let op = d.u32("an operation number")?;
        let status = Status(d.u32("an operation status")?);
        // SETATTR4res is a struct: its bitmap comes whatever the status.
        if op == opnum::SETATTR {
            let set = Bitmap::decode(d)?;
            return Ok(OpResult {
                op,
                status,
                done: status.is_ok().then_some(Done::SetAttr(set)),
            });
        }
        if !status.is_ok() {
            return Ok(OpResult {
                op,
                status,
                done: None,
            });
        }
        let done = match op {
            opnum::PUTFH
            | opnum::PUTROOTFH
            | opnum::SAVEFH
            | opnum::RESTOREFH
            | opnum::LOOKUP
            | opnum::LOOKUPP
            | opnum::VERIFY
            | opnum::NVERIFY
            | opnum::DESTROY_SESSION
            | opnum::RECLAIM_COMPLETE => Done::Nothing,
            opnum::SEQUENCE => Done::Sequence {
                session: session_id(d, "SEQUENCE's reply")?,
                sequence: d.u32("SEQUENCE's reply")?,
                slot: d.u32("SEQUENCE's reply")?,
                highest_slot: d.u32("SEQUENCE's reply")?,
                target_highest_slot: d.u32("SEQUENCE's reply")?,
                status_flags: d.u32("SEQUENCE's reply")?,
            },
            opnum::GETFH => Done::GetFh(d.opaque(FH_MAX, "a file handle")?.to_vec()),
            opnum::GETATTR => Done::GetAttr(Box::new(Attributes::decode(d)?)),
            opnum::CREATE => Done::Create {
                dir: ChangeInfo::decode(d)?,
                attrs_set: Bitmap::decode(d)?,
            },
            opnum::REMOVE => Done::Remove(ChangeInfo::decode(d)?),
            opnum::RENAME => Done::Rename {
                from_dir: ChangeInfo::decode(d)?,
                to_dir: ChangeInfo::decode(d)?,
            },
            opnum::READLINK => Done::ReadLink(d.opaque(LINK_MAX, "a symlink's target")?.to_vec()),
            opnum::OPEN => {
                let stateid = Stateid::decode(d)?;
                ChangeInfo::decode(d)?;
                let _flags = d.u32("OPEN's reply")?;
                let attrs_set = Bitmap::decode(d)?;
                match d.u32("OPEN's delegation")? {
                    // OPEN_DELEGATE_NONE.
                    0 => {}
                    // OPEN_DELEGATE_NONE_EXT: why not, and a flag for two of the reasons.
                    3 => {
                        if matches!(d.u32("OPEN's delegation")?, 7 | 8) {
                            d.bool("OPEN's delegation")?;
                        }
                    }
                    // We asked for none; a read or write delegation is not understood.
                    other => {
                        return Err(XdrError::Unexpected {
                            what: "a delegation not asked for",
                            value: other,
                        });
                    }
                }
                Done::Open { stateid, attrs_set }
            }
            opnum::CLOSE => {
                Stateid::decode(d)?;
                Done::Close
            }
            opnum::WRITE => Done::Write {
                count: d.u32("WRITE's reply")?,
                committed: Stable::from_wire(d.u32("WRITE's reply")?)?,
                verifier: d.fixed(8, "WRITE's reply")?.try_into().expect("8 bytes"),
            },
            opnum::READ => Done::Read {
                eof: d.bool("READ's reply")?,
                data: d.opaque(usize::MAX, "READ's data")?.to_vec(),
            },
            opnum::COMMIT => Done::Commit(d.fixed(8, "COMMIT's reply")?.try_into().expect("8 bytes")),
            opnum::READDIR => {
                let verifier = d.fixed(8, "READDIR's reply")?.try_into().expect("8 bytes");
                let mut entries = Vec::new();
                while d.bool("READDIR's entries")? {
                    if entries.len() == ENTRIES_MAX {
                        return Err(XdrError::TooLong {
                            what: "READDIR's entries",
                            len: entries.len() + 1,
                            max: ENTRIES_MAX,
                        });
                    }
                    entries.push(DirEntry {
                        cookie: d.u64("a directory entry")?,
                        name: d.opaque(NAME_MAX, "a directory entry's name")?.to_vec(),
                        attrs: Attributes::decode(d)?,
                    });
                }
                Done::ReadDir {
                    verifier,
                    entries,
                    eof: d.bool("READDIR's end")?,
                }
            }
            opnum::LINK => Done::Link(ChangeInfo::decode(d)?),
            opnum::SECINFO_NO_NAME => {
                let what = "SECINFO_NO_NAME's reply";
                let count = d.count(64, what)?;
                let mut flavors = Vec::with_capacity(count);
                for _ in 0..count {
                    let flavor = d.u32(what)?;
                    // RPCSEC_GSS: its mechanism, quality of protection and service.
                    if flavor == 6 {
                        d.opaque(OPAQUE_LIMIT, what)?;
                        d.u32(what)?;
                        d.u32(what)?;
                    }
                    flavors.push(flavor);
                }
                Done::SecInfo(flavors)
            }
            opnum::EXCHANGE_ID => {
                let what = "EXCHANGE_ID's reply";
                let client = d.u64(what)?;
                let sequence = d.u32(what)?;
                let flags = d.u32(what)?;
                let protection = d.u32(what)?;
                if protection != 0 {
                    // We asked for SP4_NONE; a server may not answer with anything else.
                    return Err(XdrError::Unexpected {
                        what: "a state protection",
                        value: protection,
                    });
                }
                // server_owner4, server scope, implementation id: not used.
                d.u64(what)?;
                d.opaque(OPAQUE_LIMIT, what)?;
                d.opaque(OPAQUE_LIMIT, what)?;
                skip_impl_id(d)?;
                Done::ExchangeId {
                    client,
                    sequence,
                    flags,
                }
            }
            opnum::CREATE_SESSION => {
                let what = "CREATE_SESSION's reply";
                let session = session_id(d, what)?;
                let sequence = d.u32(what)?;
                let _flags = d.u32(what)?;
                let fore = ChannelAttrs::decode(d)?;
                let _back = ChannelAttrs::decode(d)?;
                Done::CreateSession {
                    session,
                    sequence,
                    fore,
                }
            }
            other => {
                return Err(XdrError::Unexpected {
                    what: "a result of an operation not sent",
                    value: other,
                });
            }
        };
        Ok(OpResult {
            op,
            status,
            done: Some(done),
        })
    }
}

/// A COMPOUND reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status of the last operation run: `NFS4_OK` only if every one succeeded.
    pub status: Status,
    pub results: Vec<OpResult>,
}

impl Reply {
    /// COMPOUND4res for `sent`: one result per operation run, in order, each of the operation
    /// sent at its place (a server answering something else is not understood).
    pub fn decode(bytes: &[u8], sent: &Compound) -> XdrResult<Reply> {
        let mut d = Decoder::new(bytes);
        let status = Status(d.u32("the COMPOUND status")?);
        d.opaque(OPAQUE_LIMIT, "the COMPOUND tag")?;
        let count = d.count(sent.ops.len().max(1), "the COMPOUND results")?;
        let mut results = Vec::with_capacity(count);
        for at in 0..count {
            let result = OpResult::decode(&mut d)?;
            let expected = sent.ops.get(at).map_or(opnum::ILLEGAL, Op::number);
            if result.op != expected && result.op != opnum::ILLEGAL {
                return Err(XdrError::Unexpected {
                    what: "a result for another operation",
                    value: result.op,
                });
            }
            results.push(result);
        }
        d.finish()?;
        Ok(Reply { status, results })
    }

    /// The first failed operation's position and status, if one failed.
    pub fn failed(&self) -> Option<(usize, Status)> {
        self.results
            .iter()
            .position(|r| !r.status.is_ok())
            .map(|at| (at, self.results[at].status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::nfs4::attrs::{id, stat_ids};

    const SESSION: SessionId = [7; 16];

    fn sequence() -> Op {
        Op::Sequence {
            session: SESSION,
            sequence: 9,
            slot: 2,
            highest_slot: 3,
            cache_this: true,
        }
    }

    fn words(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_mkdir_compound_is_encoded_as_the_rfc_lays_it_out() {
        let compound = Compound {
            tag: "mk",
            ops: vec![
                sequence(),
                Op::PutFh(vec![1, 2, 3, 4, 5]),
                Op::Create {
                    object: NewObject::Dir,
                    name: b"pvc-a".to_vec(),
                    attrs: NewAttributes {
                        mode: Some(0o700),
                        ..NewAttributes::default()
                    },
                },
                Op::GetFh,
            ],
        };
        let w = words(&compound.encode());
        let session = u32::from_be_bytes([7; 4]);
        let expected = vec![
            2,
            u32::from_be_bytes(*b"mk\0\0"), // tag
            1,                              // minor version
            4,                              // operations
            53,
            session,
            session,
            session,
            session,
            9,
            2,
            3,
            1, // SEQUENCE
            22,
            5,
            0x0102_0304,
            0x0500_0000, // PUTFH
            6,
            2,
            5,
            u32::from_be_bytes(*b"pvc-"),
            u32::from_be_bytes(*b"a\0\0\0"),
            2,
            0,
            1 << 1, // bitmap: mode (33)
            4,
            0o700, // CREATE
            10,    // GETFH
        ];
        assert_eq!(w, expected);
    }

    /// An operation's number, status and how to encode the rest of its result.
    type Written<'a> = (u32, Status, &'a dyn Fn(&mut Encoder));

    fn reply_bytes(status: Status, results: &[Written<'_>]) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u32(status.0).opaque(b"mk").u32(results.len() as u32);
        for (op, status, body) in results {
            e.u32(*op).u32(status.0);
            body(&mut e);
        }
        e.into_bytes()
    }

    #[test]
    fn a_reply_decodes_to_each_operation_run_with_the_failed_one_last() {
        let sent = Compound {
            tag: "mk",
            ops: vec![
                sequence(),
                Op::PutFh(vec![1]),
                Op::Create {
                    object: NewObject::Dir,
                    name: b"taken".to_vec(),
                    attrs: NewAttributes::default(),
                },
                Op::GetFh,
            ],
        };
        let bytes = reply_bytes(
            Status::EXIST,
            &[
                (53, Status::OK, &|e: &mut Encoder| {
                    e.fixed(&SESSION).u32(9).u32(2).u32(3).u32(63).u32(0);
                }),
                (22, Status::OK, &|_: &mut Encoder| {}),
                (6, Status::EXIST, &|_: &mut Encoder| {}),
            ],
        );
        let reply = Reply::decode(&bytes, &sent).unwrap();
        assert_eq!(reply.status, Status::EXIST);
        assert_eq!(reply.results.len(), 3);
        assert_eq!(reply.failed(), Some((2, Status::EXIST)));
        assert_eq!(
            reply.results[0].done,
            Some(Done::Sequence {
                session: SESSION,
                sequence: 9,
                slot: 2,
                highest_slot: 3,
                target_highest_slot: 63,
                status_flags: 0,
            })
        );
    }

    #[test]
    fn a_reply_to_other_operations_or_with_bytes_left_is_refused() {
        let sent = Compound {
            tag: "mk",
            ops: vec![Op::PutRootFh, Op::GetFh],
        };
        let swapped = reply_bytes(
            Status::OK,
            &[
                (10, Status::OK, &|e: &mut Encoder| {
                    e.opaque(&[1]);
                }),
                (24, Status::OK, &|_: &mut Encoder| {}),
            ],
        );
        assert!(matches!(
            Reply::decode(&swapped, &sent),
            Err(XdrError::Unexpected { value: 10, .. })
        ));
        let mut trailing = reply_bytes(
            Status::OK,
            &[
                (24, Status::OK, &|_: &mut Encoder| {}),
                (10, Status::OK, &|e: &mut Encoder| {
                    e.opaque(&[1]);
                }),
            ],
        );
        trailing.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Reply::decode(&trailing, &sent), Err(XdrError::Trailing(4)));
    }

    #[test]
    fn a_failed_setattr_still_carries_its_bitmap() {
        let sent = Compound {
            tag: "mk",
            ops: vec![Op::SetAttr {
                stateid: ANONYMOUS_STATEID,
                attrs: NewAttributes {
                    uid: Some(7),
                    ..NewAttributes::default()
                },
            }],
        };
        let bytes = reply_bytes(
            Status::BADOWNER,
            &[(34, Status::BADOWNER, &|e: &mut Encoder| {
                Bitmap::default().encode(e);
            })],
        );
        let reply = Reply::decode(&bytes, &sent).unwrap();
        assert_eq!(reply.failed(), Some((0, Status::BADOWNER)));
        assert_eq!(reply.results[0].done, None);
    }

    #[test]
    fn getattr_results_decode_to_attributes() {
        let sent = Compound {
            tag: "st",
            ops: vec![Op::GetAttr(Bitmap::of(&stat_ids()))],
        };
        let bytes = reply_bytes(
            Status::OK,
            &[(9, Status::OK, &|e: &mut Encoder| {
                Bitmap::of(&[id::TYPE, id::FILEID]).encode(e);
                let mut v = Encoder::new();
                v.u32(2).u64(99);
                e.opaque(&v.into_bytes());
            })],
        );
        let reply = Reply::decode(&bytes, &sent).unwrap();
        let Some(Done::GetAttr(attrs)) = &reply.results[0].done else {
            panic!("{reply:?}");
        };
        assert_eq!((attrs.file_type, attrs.fileid), (Some(2), Some(99)));
    }

    #[test]
    fn session_setup_replies_decode() {
        let sent = Compound {
            tag: "setup",
            ops: vec![Op::ExchangeId {
                verifier: [1; 8],
                owner: b"me".to_vec(),
                flags: EXCHGID4_FLAG_USE_NON_PNFS,
            }],
        };
        let bytes = reply_bytes(
            Status::OK,
            &[(42, Status::OK, &|e: &mut Encoder| {
                e.u64(0xabc).u32(1).u32(0x0002_0001).u32(0);
                e.u64(5).opaque(b"ganesha").opaque(b"scope").u32(1);
                e.opaque(b"nfs-ganesha.org").opaque(b"ganesha").i64(0).u32(0);
            })],
        );
        let reply = Reply::decode(&bytes, &sent).unwrap();
        assert_eq!(
            reply.results[0].done,
            Some(Done::ExchangeId {
                client: 0xabc,
                sequence: 1,
                flags: 0x0002_0001
            })
        );

        let attrs = ChannelAttrs {
            header_pad_size: 0,
            max_request_size: 1 << 20,
            max_response_size: 1 << 20,
            max_response_size_cached: 8192,
            max_operations: 16,
            max_requests: 64,
        };
        let sent = Compound {
            tag: "setup",
            ops: vec![Op::CreateSession {
                client: 0xabc,
                sequence: 1,
                fore: attrs,
                back: attrs,
            }],
        };
        let bytes = reply_bytes(
            Status::OK,
            &[(43, Status::OK, &|e: &mut Encoder| {
                e.fixed(&SESSION).u32(1).u32(0);
                attrs.encode(e);
                attrs.encode(e);
            })],
        );
        let reply = Reply::decode(&bytes, &sent).unwrap();
        assert_eq!(
            reply.results[0].done,
            Some(Done::CreateSession {
                session: SESSION,
                sequence: 1,
                fore: attrs
            })
        );
    }

    #[test]
    fn an_exclusive_open_asks_for_no_delegation_and_carries_its_verifier_and_mode() {
        let compound = Compound {
            tag: "w",
            ops: vec![Op::OpenExclusive {
                client: 0x0102,
                owner: b"o".to_vec(),
                name: b"f".to_vec(),
                verifier: [9; 8],
                attrs: NewAttributes {
                    mode: Some(0o600),
                    ..NewAttributes::default()
                },
            }],
        };
        let w = words(&compound.encode());
        let verifier = u32::from_be_bytes([9; 4]);
        let open = vec![
            18,
            0,
            0x0402, // WRITE, WANT_NO_DELEG
            0,
            0,
            0x0102, // clientid
            1,
            u32::from_be_bytes(*b"o\0\0\0"),
            1,
            3, // OPEN4_CREATE, EXCLUSIVE4_1
            verifier,
            verifier,
            2,
            0,
            1 << 1,
            4,
            0o600,
            0, // CLAIM_NULL
            1,
            u32::from_be_bytes(*b"f\0\0\0"),
        ];
        assert_eq!(&w[4..], &open[..]);
    }

    #[test]
    fn a_directory_listing_decodes_its_entries_in_order_and_its_end() {
        let sent = Compound {
            tag: "ls",
            ops: vec![Op::ReadDir {
                cookie: 0,
                verifier: [0; 8],
                max_bytes: 4096,
                attrs: Bitmap::of(&[id::TYPE]),
            }],
        };
        let bytes = reply_bytes(
            Status::OK,
            &[(26, Status::OK, &|e: &mut Encoder| {
                e.fixed(&[5; 8]);
                for (cookie, name, kind) in [(3, &b"a"[..], 2), (4, &b"bc"[..], 1)] {
                    e.bool(true).u64(cookie).opaque(name);
                    Bitmap::of(&[id::TYPE]).encode(e);
                    e.opaque(&kind_bytes(kind));
                }
                e.bool(false).bool(true);
            })],
        );
        let reply = Reply::decode(&bytes, &sent).unwrap();
        let Some(Done::ReadDir {
            verifier,
            entries,
            eof,
        }) = &reply.results[0].done
        else {
            panic!("{reply:?}");
        };
        assert_eq!((*verifier, *eof), ([5; 8], true));
        let listed: Vec<_> = entries
            .iter()
            .map(|e| (e.cookie, e.name.clone(), e.attrs.file_type))
            .collect();
        assert_eq!(
            listed,
            vec![(3, b"a".to_vec(), Some(2)), (4, b"bc".to_vec(), Some(1))]
        );
    }

    fn kind_bytes(kind: u32) -> Vec<u8> {
        kind.to_be_bytes().to_vec()
    }
}
