//! The NFSv4.1 transport's own failures (refusals are the protocol's, in `storage::error`): each
//! says which operation, on which path (relative to the export root), and what the server
//! answered or why it did not.

use super::session::Nfs4Error;
use super::status::Status;

#[derive(Debug, thiserror::Error)]
pub enum NfsV4Error {
    #[error("{op} {path}: {status}{}", status_hint(*.status))]
    Status {
        op: &'static str,
        path: String,
        status: Status,
    },
    #[error("{op} {path}: {source}")]
    Call {
        op: &'static str,
        path: String,
        source: Nfs4Error,
    },
    #[error("{op} {path}: {reason}")]
    Protocol {
        op: &'static str,
        path: String,
        reason: String,
    },
}

fn status_hint(status: Status) -> &'static str {
    match status {
        Status::BADOWNER => {
            " (the server does not take numeric owners: ganesha Allow_Numeric_Owners = true; Linux \
             nfsd: nfs4_disable_idmapping=Y)"
        }
        Status::WRONGSEC => " (the export does not accept AUTH_SYS: add sec=sys on the server)",
        Status::GRACE => " (the server restarted and is still in its grace period; retried later)",
        _ => "",
    }
}

impl NfsV4Error {
    pub fn status(&self) -> Option<Status> {
        match self {
            NfsV4Error::Status { status, .. } => Some(*status),
            NfsV4Error::Call {
                source: Nfs4Error::Status { status, .. },
                ..
            } => Some(*status),
            _ => None,
        }
    }
}

impl From<NfsV4Error> for crate::storage::error::StorageFailure {
    fn from(e: NfsV4Error) -> Self {
        crate::storage::error::StorageFailure::Transport(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_numeric_owner_names_the_server_option_that_allows_it() {
        let e = NfsV4Error::Status {
            op: "chown",
            path: "a/b".into(),
            status: Status::BADOWNER,
        };
        let shown = e.to_string();
        assert!(shown.starts_with("chown a/b: NFS4ERR_BADOWNER"), "{shown}");
        assert!(
            shown.contains("Allow_Numeric_Owners") && shown.contains("nfs4_disable_idmapping"),
            "{shown}"
        );
        assert_eq!(e.status(), Some(Status::BADOWNER));
    }
}
