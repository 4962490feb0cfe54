//! `nfsstat4` (RFC 8881 §15.1): the outcome of a COMPOUND and of each of its operations, with the
//! names the RFC gives them, so that errors and logs say `NFS4ERR_GRACE`, not 10013.

use std::fmt;

/// One `nfsstat4` value; unknown values are kept and shown as numbers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u32);

macro_rules! statuses {
    ($($name:ident = $value:literal),* $(,)?) => {
        impl Status {
            $(pub const $name: Status = Status($value);)*

            /// The RFC's name, if this is a status it defines.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(concat!("NFS4ERR_", stringify!($name))),)*
                    _ => None,
                }
            }
        }
    };
}

statuses! {
    PERM = 1, NOENT = 2, IO = 5, NXIO = 6, ACCESS = 13, EXIST = 17, XDEV = 18, NOTDIR = 20,
    ISDIR = 21, INVAL = 22, FBIG = 27, NOSPC = 28, ROFS = 30, MLINK = 31, NAMETOOLONG = 63,
    NOTEMPTY = 66, DQUOT = 69, STALE = 70, BADHANDLE = 10001, BAD_COOKIE = 10003,
    NOTSUPP = 10004, TOOSMALL = 10005, SERVERFAULT = 10006, BADTYPE = 10007, DELAY = 10008,
    SAME = 10009, DENIED = 10010, EXPIRED = 10011, LOCKED = 10012, GRACE = 10013,
    FHEXPIRED = 10014, SHARE_DENIED = 10015, WRONGSEC = 10016, CLID_INUSE = 10017,
    RESOURCE = 10018, MOVED = 10019, NOFILEHANDLE = 10020, MINOR_VERS_MISMATCH = 10021,
    STALE_CLIENTID = 10022, STALE_STATEID = 10023, OLD_STATEID = 10024, BAD_STATEID = 10025,
    BAD_SEQID = 10026, NOT_SAME = 10027, SYMLINK = 10029, RESTOREFH = 10030,
    ATTRNOTSUPP = 10032, NO_GRACE = 10033, RECLAIM_BAD = 10034, BADXDR = 10036,
    OPENMODE = 10038, BADOWNER = 10039, BADCHAR = 10040, BADNAME = 10041, OP_ILLEGAL = 10044,
    FILE_OPEN = 10046, ADMIN_REVOKED = 10047, BADSESSION = 10052, BADSLOT = 10053,
    COMPLETE_ALREADY = 10054, CONN_NOT_BOUND_TO_SESSION = 10055, SEQ_MISORDERED = 10063,
    SEQUENCE_POS = 10064, REQ_TOO_BIG = 10065, REP_TOO_BIG = 10066,
    REP_TOO_BIG_TO_CACHE = 10067, RETRY_UNCACHED_REP = 10068, UNSAFE_COMPOUND = 10069,
    TOO_MANY_OPS = 10070, OP_NOT_IN_SESSION = 10071, CLIENTID_BUSY = 10074,
    SEQ_FALSE_RETRY = 10076, BAD_HIGH_SLOT = 10077, DEADSESSION = 10078, NOT_ONLY_OP = 10081,
    WRONG_CRED = 10082, WRONG_TYPE = 10083, DELEG_REVOKED = 10087,
}

impl Status {
    pub const OK: Status = Status(0);

    pub fn is_ok(self) -> bool {
        self == Status::OK
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_ok(), self.name()) {
            (true, _) => f.write_str("NFS4_OK"),
            (false, Some(name)) => f.write_str(name),
            (false, None) => write!(f, "nfsstat4 {}", self.0),
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_show_the_rfc_names_and_unknown_ones_their_number() {
        assert_eq!(Status::GRACE.to_string(), "NFS4ERR_GRACE");
        assert_eq!(Status(10052).to_string(), "NFS4ERR_BADSESSION");
        assert_eq!(Status::OK.to_string(), "NFS4_OK");
        assert_eq!(Status(4242).to_string(), "nfsstat4 4242");
    }
}
