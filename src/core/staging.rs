//! The staging record: how a volume's directory is created so that a crash at any step is either
//! finished or undone by the retry, and never adopts a directory someone else made.
//!
//! A staging area [`STAGING_DIR`] at the export root holds one record per volume being created:
//!
//! ```text
//! STAGING_DIR/<pv>/target    the volume's path, components joined by '/', one line
//! STAGING_DIR/<pv>/inode     inode number (NFS fileid) of `vol`, checked again on adoption
//! STAGING_DIR/<pv>/placing   present once the target name may hold our own claim (below)
//! STAGING_DIR/<pv>/copying   a clone's record, until `vol` holds the whole copy of its source
//! STAGING_DIR/<pv>/vol/      the volume directory itself, until it is placed at `target`
//! ```
//!
//! A record is built as `<pv>.tmp` and published with one rename; `vol` gets its owner and mode
//! in the staging area and is then renamed, never replacing anything, to `target`. A record
//! without `vol` means the volume was placed. The record is dropped once the PersistentVolume
//! exists. Transports without a no-replace rename first claim the target name with an empty
//! directory of mode [`CLAIM_MODE`]; `placing` tells a retry that such a claim there is its own.
//! A clone's record is published with `copying`, which goes only once `vol` is filled: a volume
//! whose copy is unfinished is never placed, and its retry resumes the copy.
//!
//! This module owns the record's format and [`decide`]: what a (re)try does given the record and
//! what is at the target path. The storage layer only loads that state and carries it out.

pub use super::naming::STAGING_DIR;
use super::naming::{NAME_MAX, check_single_component};

/// Suffix of a record while it is built or dropped (never a published record).
pub const TMP_SUFFIX: &str = ".tmp";
pub const TARGET_FILE: &str = "target";
pub const INODE_FILE: &str = "inode";
pub const PLACING_FILE: &str = "placing";
pub const COPYING_FILE: &str = "copying";
pub const VOL_DIR: &str = "vol";
/// Largest record file read back; a record is a few dozen bytes.
pub const RECORD_FILE_MAX: u64 = 64 * 1024;
/// Mode of a claim: volumes get their mode before they are placed, so an empty mode-000 directory
/// at a target was never a volume of ours.
pub const CLAIM_MODE: u32 = 0;
/// Probe directories in the staging area start with '.', so a leftover is never a volume name.
/// Each probe has a name of its own: ganesha mishandles one name made and removed concurrently.
pub const PROBE_PREFIX: &str = ".probe-";
/// How many archive names (`archived-x`, `archived-x-2`, ...) are tried before giving up.
pub const MAX_ARCHIVE_ATTEMPTS: u32 = 10_000;

/// `STAGING_DIR/<name>`, as paths are shown in messages.
pub fn staging_path(name: &str) -> String {
    format!("{STAGING_DIR}/{name}")
}

/// The unpublished name of `pv`'s record.
pub fn tmp_name(pv: &str) -> String {
    format!("{pv}{TMP_SUFFIX}")
}

/// A PV name is a file name in the staging area, with `.tmp` appended while unpublished.
pub fn check_volume_name(pv: &str) -> Result<(), String> {
    check_single_component(pv).map_err(|e| e.to_string())?;
    if pv.ends_with(TMP_SUFFIX) {
        return Err("volume name ends with .tmp".into());
    }
    if pv.len() + TMP_SUFFIX.len() > NAME_MAX {
        return Err("volume name too long for a staging record".into());
    }
    Ok(())
}

/// The volume an entry of the staging area belongs to: a record `<pv>` or a leftover `<pv>.tmp`.
/// `None` for anything that is not ours (probes, foreign names).
pub fn staged_volume(entry: &str) -> Option<&str> {
    if entry.starts_with(PROBE_PREFIX) {
        return None;
    }
    let pv = entry.strip_suffix(TMP_SUFFIX).unwrap_or(entry);
    check_volume_name(pv).ok().map(|()| pv)
}

pub fn encode_target(path: &[String]) -> String {
    format!("{}\n", path.join("/"))
}

pub fn parse_target(bytes: Vec<u8>) -> Result<Vec<String>, &'static str> {
    let text = String::from_utf8(bytes).map_err(|_| "target is not UTF-8")?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let target: Vec<String> = text.split('/').map(str::to_owned).collect();
    if target.iter().any(|c| check_single_component(c).is_err()) {
        return Err("target is not a valid volume path");
    }
    Ok(target)
}

pub fn encode_inode(inode: u64) -> String {
    format!("{inode}\n")
}

pub fn parse_inode(bytes: Vec<u8>) -> Result<u64, &'static str> {
    let text = String::from_utf8(bytes).map_err(|_| "inode is not UTF-8")?;
    text.trim_end().parse().map_err(|_| "inode is not a number")
}

/// A published record, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub target: Vec<String>,
    pub inode: Option<u64>,
    /// `vol` is gone: the volume was placed at `target`.
    pub placed: bool,
    /// The target name may hold our own claim.
    pub placing: bool,
    /// A clone's copy into `vol` is not finished.
    pub copying: bool,
}

/// What is at the requested path, not following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtTarget {
    Nothing,
    Directory {
        inode: u64,
        claim: bool,
    },
    /// A symlink, file or anything else that is not a directory.
    Other,
}

impl AtTarget {
    /// `mode`: permission bits. A claim that is not empty any more is refused by the rename over it.
    pub fn directory(inode: u64, mode: u32) -> Self {
        AtTarget::Directory {
            inode,
            claim: mode & 0o7777 == CLAIM_MODE,
        }
    }
}

/// What creating a volume does with a directory already at its path that it did not make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refused as taken: the default, as nobody else's data may become a new volume.
    Refuse,
    /// Taken as it is, contents, owner and mode unchanged: the StorageClass allows it, for
    /// directories that only this claim could have rendered (the claim layer checks that).
    Reuse,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staging {
    /// This volume's own earlier attempt placed it: done.
    Adopt,
    /// A directory this volume did not make is at the path, and may be reused: done, and a
    /// record of an earlier attempt (if any) is dropped once the PV exists.
    Reuse,
    /// No record: build one, then place its directory.
    Build,
    /// The record's directory was placed and removed by someone since: drop it, build anew.
    StartOver,
    /// The record's directory is still staged: place it. `over_claim`: the target holds our claim;
    /// `copy`: a clone's copy into it is unfinished (resume it).
    Continue {
        over_claim: bool,
        copy: bool,
    },
    Refuse(StagingRefusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagingRefusal {
    /// A directory not made for this volume is at the path.
    Taken,
    /// A symlink or non-directory is at the path.
    NotADirectory,
    /// An earlier attempt of this volume was for another path.
    StagedElsewhere { recorded: Vec<String> },
    /// A clone's copy is unfinished: only a create that copies may go on with it.
    CopyUnfinished,
}

/// What creating `requested` does, given the volume's record (if any), what is at the path,
/// whether an existing directory may be reused, and whether this create fills the volume with a
/// copy (a clone: never a reuse, and the only create that may go on with an unfinished copy).
pub fn decide(
    requested: &[String],
    record: Option<&Record>,
    at: AtTarget,
    existing: Existing,
    filling: bool,
) -> Staging {
    use Staging::*;
    use StagingRefusal::*;
    let copying = record.is_some_and(|r| r.copying);
    match (decide_exclusive(requested, record, at), existing) {
        (Refuse(Taken), Existing::Reuse) if !filling => Reuse,
        (Continue { .. }, _) if copying && !filling => Refuse(CopyUnfinished),
        (Continue { over_claim, .. }, _) => Continue {
            over_claim,
            copy: copying,
        },
        (decision, _) => decision,
    }
}

fn decide_exclusive(requested: &[String], record: Option<&Record>, at: AtTarget) -> Staging {
    use Staging::*;
    use StagingRefusal::*;
    match (record, at) {
        (Some(r), _) if r.target != requested => Refuse(StagedElsewhere {
            recorded: r.target.clone(),
        }),
        (_, AtTarget::Other) => Refuse(NotADirectory),
        (Some(r), AtTarget::Directory { inode, .. }) if r.placed => {
            if r.inode.is_none_or(|recorded| recorded == inode) {
                Adopt
            } else {
                Refuse(Taken)
            }
        }
        (Some(r), AtTarget::Nothing) if r.placed => StartOver,
        (Some(r), AtTarget::Directory { claim: true, .. }) if r.placing => Continue {
            over_claim: true,
            copy: false,
        },
        (_, AtTarget::Directory { .. }) => Refuse(Taken),
        (Some(_), AtTarget::Nothing) => Continue {
            over_claim: false,
            copy: false,
        },
        (None, AtTarget::Nothing) => Build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<String> {
        s.split('/').map(str::to_owned).collect()
    }

    fn record(target: &str, placed: bool, placing: bool) -> Record {
        Record {
            target: p(target),
            inode: Some(7),
            placed,
            placing,
            copying: false,
        }
    }

    const FRESH: Staging = Staging::Continue {
        over_claim: false,
        copy: false,
    };

    const OURS: AtTarget = AtTarget::Directory {
        inode: 7,
        claim: false,
    };
    const FOREIGN: AtTarget = AtTarget::Directory {
        inode: 8,
        claim: false,
    };
    const CLAIM: AtTarget = AtTarget::Directory {
        inode: 9,
        claim: true,
    };

    #[test]
    fn every_combination_of_record_and_target_has_one_answer() {
        use AtTarget::{Nothing, Other};
        use Staging::*;
        use StagingRefusal::*;
        let staged = record("ns/a", false, false);
        let placing = record("ns/a", false, true);
        let placed = record("ns/a", true, true);
        let elsewhere = Refuse(StagedElsewhere { recorded: p("ns/b") });
        let table: Vec<(Option<Record>, AtTarget, Staging)> = vec![
            (None, Nothing, Build),
            (None, OURS, Refuse(Taken)),
            (None, CLAIM, Refuse(Taken)),
            (None, Other, Refuse(NotADirectory)),
            (Some(staged.clone()), Nothing, FRESH),
            (Some(staged.clone()), CLAIM, Refuse(Taken)),
            (Some(staged), FOREIGN, Refuse(Taken)),
            (Some(placing.clone()), Nothing, FRESH),
            (
                Some(placing.clone()),
                CLAIM,
                Continue {
                    over_claim: true,
                    copy: false,
                },
            ),
            (Some(placing.clone()), FOREIGN, Refuse(Taken)),
            (Some(placing), Other, Refuse(NotADirectory)),
            (Some(placed.clone()), OURS, Adopt),
            (Some(placed.clone()), FOREIGN, Refuse(Taken)),
            (Some(placed.clone()), CLAIM, Refuse(Taken)),
            (Some(placed.clone()), Nothing, StartOver),
            (Some(placed), Other, Refuse(NotADirectory)),
            (Some(record("ns/b", true, false)), OURS, elsewhere.clone()),
            (Some(record("ns/b", false, false)), Nothing, elsewhere),
        ];
        for (record, at, want) in table {
            assert_eq!(
                decide(&p("ns/a"), record.as_ref(), at, Existing::Refuse, false),
                want,
                "{record:?} {at:?}"
            );
        }
    }

    #[test]
    fn reuse_takes_a_directory_that_would_be_refused_as_taken_and_nothing_else() {
        use AtTarget::{Nothing, Other};
        let staged = record("ns/a", false, false);
        let placing = record("ns/a", false, true);
        let placed = record("ns/a", true, false);
        for (record, at) in [
            (None, Nothing),
            (None, Other),
            (None, OURS),
            (Some(staged.clone()), Nothing),
            (Some(staged), FOREIGN),
            (Some(placing.clone()), CLAIM),
            (Some(placing), Other),
            (Some(placed.clone()), OURS),
            (Some(placed.clone()), FOREIGN),
            (Some(placed), Nothing),
            (Some(record("ns/b", true, false)), OURS),
        ] {
            let exclusive = decide(&p("ns/a"), record.as_ref(), at, Existing::Refuse, false);
            let want = if exclusive == Staging::Refuse(StagingRefusal::Taken) {
                Staging::Reuse
            } else {
                exclusive
            };
            assert_eq!(
                decide(&p("ns/a"), record.as_ref(), at, Existing::Reuse, false),
                want,
                "{record:?} {at:?}"
            );
        }
        assert_eq!(
            decide(&p("ns/a"), None, OURS, Existing::Reuse, false),
            Staging::Reuse
        );
        assert_eq!(
            decide(&p("ns/a"), None, Other, Existing::Reuse, false),
            Staging::Refuse(StagingRefusal::NotADirectory),
            "never a symlink or a file"
        );
    }

    /// A clone's copy goes on only in a create that copies; one that is whole (no marker) is
    /// placed by any create; a clone never reuses what is at its path.
    #[test]
    fn an_unfinished_copy_is_resumed_by_a_copy_and_never_placed_by_anything_else() {
        use AtTarget::Nothing;
        let copying = Record {
            copying: true,
            ..record("ns/a", false, false)
        };
        let copy = Staging::Continue {
            over_claim: false,
            copy: true,
        };
        for existing in [Existing::Refuse, Existing::Reuse] {
            assert_eq!(decide(&p("ns/a"), Some(&copying), Nothing, existing, true), copy);
            assert_eq!(
                decide(&p("ns/a"), Some(&copying), Nothing, existing, false),
                Staging::Refuse(StagingRefusal::CopyUnfinished)
            );
            let whole = record("ns/a", false, false);
            assert_eq!(decide(&p("ns/a"), Some(&whole), Nothing, existing, true), FRESH);
            assert_eq!(decide(&p("ns/a"), Some(&whole), Nothing, existing, false), FRESH);
        }
        assert_eq!(
            decide(&p("ns/a"), None, OURS, Existing::Reuse, true),
            Staging::Refuse(StagingRefusal::Taken)
        );
        assert_eq!(
            decide(&p("ns/a"), None, Nothing, Existing::Refuse, true),
            Staging::Build
        );
    }

    #[test]
    fn a_record_without_an_inode_adopts_any_directory_at_its_target() {
        let old = Record {
            inode: None,
            ..record("a", true, false)
        };
        assert_eq!(
            decide(&p("a"), Some(&old), FOREIGN, Existing::Refuse, false),
            Staging::Adopt
        );
    }

    #[test]
    fn only_a_mode_000_directory_is_a_claim() {
        assert_eq!(
            AtTarget::directory(1, 0o40000),
            AtTarget::Directory {
                inode: 1,
                claim: true
            }
        );
        assert_eq!(
            AtTarget::directory(1, 0o700),
            AtTarget::Directory {
                inode: 1,
                claim: false
            }
        );
    }

    #[test]
    fn the_record_format_reads_back_what_it_writes_and_refuses_hostile_content() {
        let path = p("ns/vol");
        assert_eq!(parse_target(encode_target(&path).into_bytes()), Ok(path));
        assert_eq!(parse_inode(encode_inode(42).into_bytes()), Ok(42));
        assert!(parse_target(b"../etc\n".to_vec()).is_err());
        assert!(parse_target(b"a//b".to_vec()).is_err());
        assert!(parse_target(vec![0xff]).is_err());
        assert!(parse_inode(b"x".to_vec()).is_err());
    }

    #[test]
    fn staged_entries_name_their_volume_and_nothing_else() {
        assert_eq!(staged_volume("pv-1"), Some("pv-1"));
        assert_eq!(staged_volume("pv-1.tmp"), Some("pv-1"));
        assert_eq!(staged_volume(".probe-1-2"), None);
        assert_eq!(staged_volume(".."), None);
        assert!(check_volume_name(&"x".repeat(252)).is_err());
        assert!(check_volume_name("a.tmp").is_err());
    }
}
