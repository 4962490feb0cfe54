//! One error vocabulary for the storage layer: [`Refusal`]s, decided by the volume protocol the
//! same way whichever transport carried it, and the transports' own failures, wrapped as they are
//! (an errno from the mounted export, an NFS status or RPC failure from the NFSv3 client), which
//! this layer never needs to know the types of.
//! Every message says what was attempted on which path (relative to the export root).

use std::time::Duration;

/// What the protocol refuses to do, whichever transport it runs over. Callers decide on these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{op} {path:?}: invalid path: {reason}")]
    InvalidPath {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "create directory {path}: invalid mode {mode:#o} (only permission, setuid, setgid and sticky bits \
         are allowed)"
    )]
    InvalidMode { path: String, mode: u32 },
    #[error("create directory {path}: a directory not made for this volume already exists")]
    Taken { path: String },
    #[error("{op} {path}: a symlink or non-directory is in the way; refusing to follow or touch it")]
    NotADirectory { op: &'static str, path: String },
    #[error(
        "create directory {requested} for volume {pv}: an earlier attempt of this volume staged it for \
         {recorded}"
    )]
    StagedElsewhere {
        pv: String,
        requested: String,
        recorded: String,
    },
    #[error(
        "create directory {path} for volume {pv}: the copy of its clone's source is unfinished; it is never placed unfinished"
    )]
    CopyUnfinished { pv: String, path: String },
    #[error("{op} {path}: bad staging record: {reason}")]
    BadStagingRecord {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("archive directory {path}: all {attempts} archive names are taken")]
    ArchiveNamesExhausted { path: String, attempts: u32 },
    #[error(
        "{op} {path}: it is on another filesystem than the volume (a nested mount or export); \
         refusing to enter it"
    )]
    OtherFilesystem { op: &'static str, path: String },
    #[error("{op} {path}: it disappeared while in use (removed by someone else?)")]
    Vanished { op: &'static str, path: String },
    #[error("{op} {path}: it keeps getting new entries while being walked")]
    KeepsFilling { op: &'static str, path: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A transport's own failure, as it reported it (an errno of the mounted export, an NFS
    /// status or RPC failure); [`StorageFailure::transport`] gives it back typed.
    #[error(transparent)]
    Transport(Box<dyn std::error::Error + Send + Sync>),
    #[error("{op} {path} did not finish within {after:?}: is the export answering?")]
    TimedOut {
        op: &'static str,
        path: String,
        after: Duration,
    },
    /// An NFS server refused to let root choose a directory's owner, and the directory we made
    /// came out belonging to `anon_uid`:`anon_gid`: the export squashes root.
    #[error(
        "{answer}: the export squashes root (root_squash; new directories belong to \
         {anon_uid}:{anon_gid}); set no_root_squash on the export or drop uid/gid from the StorageClass"
    )]
    RootSquashed {
        /// The server's answer, as the transport reported it.
        answer: Box<StorageFailure>,
        anon_uid: u32,
        anon_gid: u32,
    },
    #[error("{op}: worker thread failed: {reason}")]
    Worker { op: &'static str, reason: String },
    #[error(
        "no mounted export is configured (NFS_SERVER and NFS_PATH are unset); name server and share in the StorageClass"
    )]
    NoMountedExport,
}

impl StorageFailure {
    /// A directory not made for this volume is at its path. Also what provisioning sees of its own
    /// finished directory when a lagging cache hides the PV made for it.
    pub fn is_taken(&self) -> bool {
        matches!(self, StorageFailure::Refused(Refusal::Taken { .. }))
    }

    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            StorageFailure::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The transport's own failure, if it is one of type `E` (`PosixError`, `NfsError`), also
    /// where it is the answer behind a [`StorageFailure::RootSquashed`].
    pub fn transport<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            StorageFailure::Transport(e) => e.downcast_ref(),
            StorageFailure::RootSquashed { answer, .. } => answer.transport(),
            _ => None,
        }
    }
}

pub type StorageResult<T> = Result<T, StorageFailure>;
