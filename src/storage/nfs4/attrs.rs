//! File attributes (`fattr4`, RFC 8881 §5): a bitmap of attribute numbers and their values in
//! that order, with no per-value length, so a reply is decoded only for the attributes this
//! client knows; any other bit set in a reply is an error, never skipped past. Owners go as
//! decimal strings (RFC 7530 §5.9: a server SHOULD accept them under AUTH_SYS, and MUST say
//! `NFS4ERR_BADOWNER` if it does not); an owner that comes back as `name@domain` is reported, not
//! guessed at.

use super::xdr::{Decoder, Encoder, XdrError, XdrResult};
use crate::storage::transport::{FileType, Stat, Time};

/// Attribute numbers this client reads or writes.
pub mod id {
    pub const SUPPORTED_ATTRS: u32 = 0;
    pub const TYPE: u32 = 1;
    pub const FH_EXPIRE_TYPE: u32 = 2;
    pub const CHANGE: u32 = 3;
    pub const SIZE: u32 = 4;
    pub const FSID: u32 = 8;
    pub const LEASE_TIME: u32 = 10;
    pub const RDATTR_ERROR: u32 = 11;
    pub const FILEHANDLE: u32 = 19;
    pub const FILEID: u32 = 20;
    pub const MAXREAD: u32 = 30;
    pub const MAXWRITE: u32 = 31;
    pub const MODE: u32 = 33;
    pub const NUMLINKS: u32 = 35;
    pub const OWNER: u32 = 36;
    pub const OWNER_GROUP: u32 = 37;
    pub const SPACE_AVAIL: u32 = 42;
    pub const SPACE_FREE: u32 = 43;
    pub const SPACE_TOTAL: u32 = 44;
    pub const SPACE_USED: u32 = 45;
    pub const TIME_ACCESS: u32 = 47;
    pub const TIME_ACCESS_SET: u32 = 48;
    pub const TIME_METADATA: u32 = 52;
    pub const TIME_MODIFY: u32 = 53;
    pub const TIME_MODIFY_SET: u32 = 54;
    pub const MOUNTED_ON_FILEID: u32 = 55;
    pub const SUPPATTR_EXCLCREAT: u32 = 75;
}

/// The longest file handle (`NFS4_FHSIZE`).
pub const FH_MAX: usize = 128;
/// The longest owner string we accept (none is near it).
const OWNER_MAX: usize = 1024;
/// The most bitmap words we accept: attribute numbers run to ~80 today.
const BITMAP_WORDS_MAX: usize = 8;

/// A set of attribute numbers (`bitmap4`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitmap(pub Vec<u32>);

impl Bitmap {
    pub fn of(ids: &[u32]) -> Bitmap {
        let mut words = Vec::new();
        for &id in ids {
            let word = (id / 32) as usize;
            if words.len() <= word {
                words.resize(word + 1, 0);
            }
            words[word] |= 1 << (id % 32);
        }
        Bitmap(words)
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0
            .get((id / 32) as usize)
            .is_some_and(|word| word & (1 << (id % 32)) != 0)
    }

    /// The attribute numbers, ascending: the order of their values.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0..).zip(&self.0).flat_map(|(word, &bits): (u32, &u32)| {
            (0..32)
                .filter(move |bit| bits & (1 << bit) != 0)
                .map(move |bit| word * 32 + bit)
        })
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.u32(u32::try_from(self.0.len()).expect("a few words"));
        for &word in &self.0 {
            e.u32(word);
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> XdrResult<Bitmap> {
        let len = d.count(BITMAP_WORDS_MAX, "an attribute bitmap")?;
        (0..len)
            .map(|_| d.u32("an attribute bitmap"))
            .collect::<XdrResult<_>>()
            .map(Bitmap)
    }
}

/// The attributes [`Stat`] is made of.
pub fn stat_ids() -> Vec<u32> {
    vec![
        id::TYPE,
        id::SIZE,
        id::FSID,
        id::FILEID,
        id::MODE,
        id::NUMLINKS,
        id::OWNER,
        id::OWNER_GROUP,
        id::SPACE_USED,
        id::TIME_ACCESS,
        id::TIME_METADATA,
        id::TIME_MODIFY,
    ]
}

/// `nfs_ftype4`.
pub mod ftype {
    pub const REG: u32 = 1;
    pub const DIR: u32 = 2;
    pub const BLK: u32 = 3;
    pub const CHR: u32 = 4;
    pub const LNK: u32 = 5;
    pub const SOCK: u32 = 6;
    pub const FIFO: u32 = 7;
    pub const ATTRDIR: u32 = 8;
    pub const NAMEDATTR: u32 = 9;
}

/// What a server sent back of the attributes asked for; `None` where it did not send one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub supported: Option<Bitmap>,
    pub file_type: Option<u32>,
    pub fh_expire_type: Option<u32>,
    pub change: Option<u64>,
    pub size: Option<u64>,
    pub fsid: Option<(u64, u64)>,
    pub lease_time: Option<u32>,
    pub rdattr_error: Option<u32>,
    pub filehandle: Option<Vec<u8>>,
    pub fileid: Option<u64>,
    pub maxread: Option<u64>,
    pub maxwrite: Option<u64>,
    pub mode: Option<u32>,
    pub numlinks: Option<u32>,
    pub owner: Option<Vec<u8>>,
    pub owner_group: Option<Vec<u8>>,
    pub space_avail: Option<u64>,
    pub space_free: Option<u64>,
    pub space_total: Option<u64>,
    pub space_used: Option<u64>,
    pub time_access: Option<Time>,
    pub time_metadata: Option<Time>,
    pub time_modify: Option<Time>,
    pub mounted_on_fileid: Option<u64>,
    pub suppattr_exclcreat: Option<Bitmap>,
}

fn time(d: &mut Decoder<'_>, what: &'static str) -> XdrResult<Time> {
    let seconds = d.i64(what)?;
    let nanos = d.u32(what)?;
    Ok(Time { seconds, nanos })
}

impl Attributes {
    /// A `fattr4`: its bitmap, then its values as one opaque.
    pub fn decode(d: &mut Decoder<'_>) -> XdrResult<Attributes> {
        let mask = Bitmap::decode(d)?;
        let values = d.opaque(usize::MAX, "attribute values")?;
        let mut v = Decoder::new(values);
        let mut a = Attributes::default();
        for attr in mask.ids() {
            match attr {
                id::SUPPORTED_ATTRS => a.supported = Some(Bitmap::decode(&mut v)?),
                id::TYPE => a.file_type = Some(v.u32("type")?),
                id::FH_EXPIRE_TYPE => a.fh_expire_type = Some(v.u32("fh_expire_type")?),
                id::CHANGE => a.change = Some(v.u64("change")?),
                id::SIZE => a.size = Some(v.u64("size")?),
                id::FSID => a.fsid = Some((v.u64("fsid")?, v.u64("fsid")?)),
                id::LEASE_TIME => a.lease_time = Some(v.u32("lease_time")?),
                id::RDATTR_ERROR => a.rdattr_error = Some(v.u32("rdattr_error")?),
                id::FILEHANDLE => a.filehandle = Some(v.opaque(FH_MAX, "filehandle")?.to_vec()),
                id::FILEID => a.fileid = Some(v.u64("fileid")?),
                id::MAXREAD => a.maxread = Some(v.u64("maxread")?),
                id::MAXWRITE => a.maxwrite = Some(v.u64("maxwrite")?),
                id::MODE => a.mode = Some(v.u32("mode")?),
                id::NUMLINKS => a.numlinks = Some(v.u32("numlinks")?),
                id::OWNER => a.owner = Some(v.opaque(OWNER_MAX, "owner")?.to_vec()),
                id::OWNER_GROUP => a.owner_group = Some(v.opaque(OWNER_MAX, "owner_group")?.to_vec()),
                id::SPACE_AVAIL => a.space_avail = Some(v.u64("space_avail")?),
                id::SPACE_FREE => a.space_free = Some(v.u64("space_free")?),
                id::SPACE_TOTAL => a.space_total = Some(v.u64("space_total")?),
                id::SPACE_USED => a.space_used = Some(v.u64("space_used")?),
                id::TIME_ACCESS => a.time_access = Some(time(&mut v, "time_access")?),
                id::TIME_METADATA => a.time_metadata = Some(time(&mut v, "time_metadata")?),
                id::TIME_MODIFY => a.time_modify = Some(time(&mut v, "time_modify")?),
                id::MOUNTED_ON_FILEID => a.mounted_on_fileid = Some(v.u64("mounted_on_fileid")?),
                id::SUPPATTR_EXCLCREAT => a.suppattr_exclcreat = Some(Bitmap::decode(&mut v)?),
                other => {
                    return Err(XdrError::Unexpected {
                        what: "an attribute not asked for",
                        value: other,
                    });
                }
            }
        }
        v.finish()?;
        Ok(a)
    }

    /// The [`Stat`] these attributes make, if the server sent all of them ([`stat_ids`]).
    pub fn stat(&self) -> Result<Stat, StatError> {
        let missing = |name: &'static str| StatError::Missing(name);
        let file_type = match self.file_type.ok_or(missing("type"))? {
            ftype::REG => FileType::Regular,
            ftype::DIR => FileType::Dir,
            ftype::BLK => FileType::BlockDevice,
            ftype::CHR => FileType::CharDevice,
            ftype::LNK => FileType::Symlink,
            ftype::SOCK => FileType::Socket,
            ftype::FIFO => FileType::Fifo,
            other => return Err(StatError::Type(other)),
        };
        let (major, minor) = self.fsid.ok_or(missing("fsid"))?;
        Ok(Stat {
            file_type,
            id: self.fileid.ok_or(missing("fileid"))?,
            // Two 64-bit words to one, as Linux folds them into st_dev: equal fsids stay equal.
            fs: major ^ minor.rotate_left(32),
            mode: self.mode.ok_or(missing("mode"))? & 0o7777,
            uid: numeric_owner(self.owner.as_deref().ok_or(missing("owner"))?)?,
            gid: numeric_owner(self.owner_group.as_deref().ok_or(missing("owner_group"))?)?,
            nlink: u64::from(self.numlinks.ok_or(missing("numlinks"))?),
            size: self.size.ok_or(missing("size"))?,
            used: self.space_used.ok_or(missing("space_used"))?,
            atime: self.time_access.ok_or(missing("time_access"))?,
            mtime: self.time_modify.ok_or(missing("time_modify"))?,
            ctime: self.time_metadata.ok_or(missing("time_metadata"))?,
        })
    }
}

/// Why attributes do not make a [`Stat`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatError {
    #[error("the server did not send the {0} attribute")]
    Missing(&'static str),
    #[error("the server sent file type {0}, which is not a file, directory, link or device")]
    Type(u32),
    #[error(
        "the server sent owner {0:?}, not a number: it maps ids to names (ganesha: set \
         Only_Numeric_Owners = true in NFSV4; Linux: nfs4_disable_idmapping=Y on nfsd)"
    )]
    NamedOwner(String),
}

/// A uid or gid from an owner string: decimal, as RFC 7530 §5.9 has AUTH_SYS servers send them.
fn numeric_owner(owner: &[u8]) -> Result<u32, StatError> {
    std::str::from_utf8(owner)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StatError::NamedOwner(String::from_utf8_lossy(owner).into_owned()))
}

/// How a time attribute is set (`settime4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Server,
    Client(Time),
}

/// Attributes to set (SETATTR, or CREATE's and OPEN's initial attributes), encoded as a `fattr4`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAttributes {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

fn set_time(e: &mut Encoder, how: SetTime) {
    match how {
        SetTime::Server => {
            e.u32(0);
        }
        SetTime::Client(t) => {
            e.u32(1).i64(t.seconds).u32(t.nanos);
        }
    }
}

impl NewAttributes {
    pub fn is_empty(&self) -> bool {
        *self == NewAttributes::default()
    }

    pub fn encode(&self, e: &mut Encoder) {
        let mut ids = Vec::new();
        let mut v = Encoder::new();
        // Ascending attribute numbers: the order the values go in.
        if let Some(size) = self.size {
            ids.push(id::SIZE);
            v.u64(size);
        }
        if let Some(mode) = self.mode {
            ids.push(id::MODE);
            v.u32(mode & 0o7777);
        }
        if let Some(uid) = self.uid {
            ids.push(id::OWNER);
            v.opaque(uid.to_string().as_bytes());
        }
        if let Some(gid) = self.gid {
            ids.push(id::OWNER_GROUP);
            v.opaque(gid.to_string().as_bytes());
        }
        if let Some(atime) = self.atime {
            ids.push(id::TIME_ACCESS_SET);
            set_time(&mut v, atime);
        }
        if let Some(mtime) = self.mtime {
            ids.push(id::TIME_MODIFY_SET);
            set_time(&mut v, mtime);
        }
        Bitmap::of(&ids).encode(e);
        e.opaque(&v.into_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_lists_its_attributes_in_ascending_order() {
        let map = Bitmap::of(&[id::TIME_MODIFY, id::TYPE, id::SUPPATTR_EXCLCREAT, id::FSID]);
        assert_eq!(map.0, vec![(1 << 1) | (1 << 8), 1 << (53 - 32), 1 << (75 - 64)]);
        assert_eq!(map.ids().collect::<Vec<_>>(), vec![1, 8, 53, 75]);
        assert!(map.contains(id::FSID) && !map.contains(id::SIZE) && !map.contains(200));
    }

    fn encoded_stat(owner: &[u8]) -> Vec<u8> {
        let mut v = Encoder::new();
        v.u32(ftype::DIR) // type
            .u64(4096) // size
            .u64(7)
            .u64(1) // fsid
            .u64(42) // fileid
            .u32(0o42755) // mode, with bits the server should not send
            .u32(3) // numlinks
            .opaque(owner)
            .opaque(b"1001")
            .u64(8192) // space_used
            .i64(100)
            .u32(1) // time_access
            .i64(300)
            .u32(3) // time_metadata
            .i64(200)
            .u32(2); // time_modify
        let mut e = Encoder::new();
        Bitmap::of(&stat_ids()).encode(&mut e);
        e.opaque(&v.into_bytes());
        e.into_bytes()
    }

    #[test]
    fn the_stat_attributes_make_a_stat() {
        let bytes = encoded_stat(b"1000");
        let attrs = Attributes::decode(&mut Decoder::new(&bytes)).unwrap();
        let st = attrs.stat().unwrap();
        assert_eq!(st.file_type, FileType::Dir);
        assert_eq!(
            (st.id, st.mode, st.uid, st.gid, st.nlink),
            (42, 0o2755, 1000, 1001, 3)
        );
        assert_eq!((st.size, st.used), (4096, 8192));
        assert_eq!(st.fs, 7 ^ (1 << 32));
        assert_eq!(
            st.atime,
            Time {
                seconds: 100,
                nanos: 1
            }
        );
        assert_eq!(
            st.mtime,
            Time {
                seconds: 200,
                nanos: 2
            }
        );
        assert_eq!(
            st.ctime,
            Time {
                seconds: 300,
                nanos: 3
            }
        );
    }

    #[test]
    fn a_named_owner_is_reported_with_the_server_option_that_fixes_it() {
        let bytes = encoded_stat(b"nobody@example.org");
        let attrs = Attributes::decode(&mut Decoder::new(&bytes)).unwrap();
        let error = attrs.stat().unwrap_err();
        assert_eq!(error, StatError::NamedOwner("nobody@example.org".into()));
        assert!(error.to_string().contains("Only_Numeric_Owners"));
    }

    #[test]
    fn an_attribute_not_asked_for_is_an_error_not_skipped() {
        let mut e = Encoder::new();
        Bitmap::of(&[id::TYPE, 62]).encode(&mut e);
        e.opaque(&[0, 0, 0, 2, 0, 0, 0, 0]);
        assert!(matches!(
            Attributes::decode(&mut Decoder::new(&e.into_bytes())),
            Err(XdrError::Unexpected { value: 62, .. })
        ));
    }

    #[test]
    fn attributes_to_set_go_in_ascending_order_with_numeric_owners() {
        let mut e = Encoder::new();
        NewAttributes {
            mode: Some(0o100_750),
            uid: Some(1000),
            mtime: Some(SetTime::Client(Time { seconds: 5, nanos: 6 })),
            atime: Some(SetTime::Server),
            ..NewAttributes::default()
        }
        .encode(&mut e);
        let bytes = e.into_bytes();
        let mut d = Decoder::new(&bytes);
        let mask = Bitmap::decode(&mut d).unwrap();
        assert_eq!(
            mask.ids().collect::<Vec<_>>(),
            vec![id::MODE, id::OWNER, id::TIME_ACCESS_SET, id::TIME_MODIFY_SET]
        );
        let values = d.opaque(1024, "values").unwrap();
        let mut v = Decoder::new(values);
        assert_eq!(v.u32("mode").unwrap(), 0o750);
        assert_eq!(v.opaque(16, "owner").unwrap(), b"1000");
        assert_eq!(v.u32("atime how").unwrap(), 0);
        assert_eq!(v.u32("mtime how").unwrap(), 1);
        assert_eq!((v.i64("s").unwrap(), v.u32("ns").unwrap()), (5, 6));
        v.finish().unwrap();
    }
}
