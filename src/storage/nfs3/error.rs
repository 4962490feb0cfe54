//! The NFSv3 transport's own failures (refusals are the protocol's, in `storage::error`): every variant says which operation, on which path (relative to the export root), and, where the
//! server answered, with which NFS status.

use std::time::Duration;

use nfs3_client::nfs3_types::mount::mountstat3;
use nfs3_client::nfs3_types::nfs3::nfsstat3;

#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    #[error("connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("mount {server}:{export}: {status}{}", mount_hint(*.status))]
    Mount {
        server: String,
        export: String,
        status: mountstat3,
    },
    #[error("{op} {path}: {status}")]
    Status {
        op: &'static str,
        path: String,
        status: nfsstat3,
    },
    #[error("{op} {path}: no answer within {after:?} (timeo x (retrans + 1)): is the server answering?")]
    TimedOut {
        op: &'static str,
        path: String,
        after: Duration,
    },
    #[error("{op} {path}: RPC failed: {reason}{}", auth_hint(.reason))]
    Rpc {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("{op} {path}: {reason}")]
    Protocol {
        op: &'static str,
        path: String,
        reason: String,
    },
}

fn mount_hint(status: mountstat3) -> &'static str {
    match status {
        mountstat3::MNT3ERR_ACCES | mountstat3::MNT3ERR_PERM => {
            " (the export does not allow this client; check the export's client list, and whether it \
             requires a privileged source port: knfsd 'secure' / ganesha 'PrivilegedPort')"
        }
        mountstat3::MNT3ERR_NOENT => " (no such export; with ganesha use the Pseudo path)",
        _ => "",
    }
}

fn auth_hint(reason: &str) -> &'static str {
    if reason.contains("AUTH_TOOWEAK") {
        " (the server wants a privileged source port: drop noresvport, or give the provisioner \
         CAP_NET_BIND_SERVICE, or mark the export insecure)"
    } else if reason.contains("Program mismatch") || reason.contains("Program unavailable") {
        " (the server does not serve NFSv3 on this port; enable v3 on the server or use the mounted \
         backend)"
    } else {
        ""
    }
}

impl NfsError {
    /// The NFS status the server answered with, if the failure is one.
    pub fn status(&self) -> Option<nfsstat3> {
        match self {
            NfsError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The failure is about reaching the server (timeout, broken connection, connect), not an answer.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            NfsError::TimedOut { .. } | NfsError::Rpc { .. } | NfsError::Connect { .. }
        )
    }
}

impl From<NfsError> for crate::storage::error::StorageFailure {
    fn from(e: NfsError) -> Self {
        crate::storage::error::StorageFailure::Transport(Box::new(e))
    }
}
