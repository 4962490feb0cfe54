//! The operator's view, decided: what each directory of an export is (a volume, a directory
//! leading to volumes, the staging area, an archive, an orphan no PersistentVolume accounts for),
//! and which archives a prune may remove.
//!
//! Pure. The shell lists the directories [`Known::lists`] asks for, hands the listings to
//! [`classify`], and asks [`judge`] about each archive before removing anything.
//!
//! What is walked: the export root, every directory leading to a PV's directory (or to one being
//! provisioned), and, above the deepest level volumes have on the export, a directory leading to
//! none, to see whether it only holds archives (a namespace directory of `${.PVC.namespace}/...`
//! whose last claim was archived). Nothing inside a volume, an archive or an orphan is listed.
//!
//! Protection, the one rule a prune never breaks: an archive is removed only if no PV's path,
//! on whichever server (a server has many names), equals it, lies inside it or around it, and
//! none is unreadable (relative, or with `..`: it could be anywhere), and no volume is being
//! provisioned there.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::core::export::Export;
use crate::core::naming::{ARCHIVE_PREFIX, STAGING_DIR};

/// Entries read of a directory that leads to no volume, to see whether it only holds archives;
/// one with more is an orphan.
pub const PEEK_LIMIT: usize = 1000;

/// A PersistentVolume with an NFS source, whoever made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvSource {
    pub pv: String,
    pub server: String,
    /// `spec.nfs.path` as written.
    pub path: String,
}

/// Where a PV's path lies relative to an export's path (servers aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A directory inside the export: its components.
    Inside(Vec<String>),
    /// The export itself or a directory around it: all of the export is the PV's.
    Covers,
    Outside,
    /// Relative, or with a `..` component: only the server knows where it leads.
    Unreadable,
}

/// The components of an absolute path as the server reads them without resolving anything
/// (repeated `/` and `.` dropped); `None` for a path only the server can resolve.
fn lexical(path: &str) -> Option<Vec<&str>> {
    if !path.starts_with('/') {
        return None;
    }
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    (!components.contains(&"..")).then_some(components)
}

pub fn reach(nfs_path: &str, export_path: &str) -> Reach {
    let (Some(pv), Some(export)) = (lexical(nfs_path), lexical(export_path)) else {
        return Reach::Unreadable;
    };
    if export.starts_with(&pv) {
        Reach::Covers
    } else if pv.starts_with(&export) {
        Reach::Inside(pv[export.len()..].iter().map(|c| (*c).to_owned()).collect())
    } else {
        Reach::Outside
    }
}

/// Whether one path is the other or lies inside it, component-wise.
fn overlap(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

fn is_archive_name(name: &str) -> bool {
    name.starts_with(ARCHIVE_PREFIX)
}

/// What an export is known to hold before it is listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Directories of PVs on the export's server, with the PVs pointing at each.
    volumes: BTreeMap<Vec<String>, Vec<String>>,
    /// Directories of volumes being provisioned (a staging record names them).
    staged: BTreeSet<Vec<String>>,
    /// Directories leading to the two above.
    leading: BTreeSet<Vec<String>>,
    /// Components of the deepest volume path the export may hold.
    depth: usize,
}

/// How much of a directory to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// All of it: it leads to volumes.
    Whole,
    /// Up to [`PEEK_LIMIT`] entries: it may only hold archives.
    Peek,
}

impl Known {
    /// `pvs`: every PV with an NFS source (those of other servers are left out here); `staged`:
    /// the targets of the export's staging records; `depths`: how deep the paths of the classes
    /// on this export are.
    pub fn new(
        export: &Export,
        pvs: &[PvSource],
        staged: &[Vec<String>],
        depths: impl IntoIterator<Item = usize>,
    ) -> Known {
        let mut known = Known {
            staged: staged.iter().filter(|p| !p.is_empty()).cloned().collect(),
            ..Known::default()
        };
        for source in pvs.iter().filter(|s| s.server == export.server) {
            if let Reach::Inside(path) = reach(&source.path, &export.path) {
                known.volumes.entry(path).or_default().push(source.pv.clone());
            }
        }
        let targets: Vec<&Vec<String>> = known.volumes.keys().chain(&known.staged).collect();
        for path in &targets {
            for end in 1..path.len() {
                known.leading.insert(path[..end].to_vec());
            }
        }
        known.depth = targets
            .iter()
            .map(|p| p.len())
            .chain(depths)
            .max()
            .unwrap_or(1)
            .max(1);
        known
    }

    /// The PVs whose directory is `path`.
    pub fn pvs_at(&self, path: &[String]) -> &[String] {
        self.volumes.get(path).map_or(&[], Vec::as_slice)
    }

    /// Whether (and how much of) the directory at `path` (the root: empty) is listed.
    pub fn lists(&self, path: &[String]) -> Option<List> {
        let Some(leaf) = path.last() else {
            return Some(List::Whole);
        };
        if self.volumes.contains_key(path) || self.staged.contains(path) {
            None
        } else if self.leading.contains(path) {
            Some(List::Whole)
        } else if path.len() >= self.depth || is_archive_name(leaf) || path == [STAGING_DIR] {
            None
        } else {
            Some(List::Peek)
        }
    }
}

/// What a listed entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    Directory,
    File,
    Symlink,
    Other,
}

impl EntryType {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::Directory => "directory",
            EntryType::File => "file",
            EntryType::Symlink => "symlink",
            EntryType::Other => "other",
        }
    }
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The name; not `exact` when it is not UTF-8 and this is a lossy rendering of it.
    pub name: String,
    pub exact: bool,
    pub kind: EntryType,
    /// Seconds since the epoch of its last change (ctime): for an archive, when it was archived.
    pub changed: i64,
    pub modified: i64,
    /// Bytes it takes on the server (of a directory: the directory itself).
    pub used: u64,
}

/// A directory's listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    pub entries: Vec<Seen>,
    /// Every entry is there.
    pub complete: bool,
}

/// An entry the view shows, by its path in the export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: Vec<String>,
    pub seen: Seen,
}

/// What an export holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// PV directories that are there (as directories).
    pub present: BTreeSet<Vec<String>>,
    /// Directories of volumes being provisioned that are there.
    pub provisioning: Vec<Found>,
    pub archives: Vec<Found>,
    /// Entries no PV accounts for (and that are no archive): each is shown, nothing inside it.
    pub orphans: Vec<Found>,
}

/// Classifies every entry of `listings` (by directory; the root's is the empty path), each
/// listed as [`Known::lists`] asked; each list of the view is sorted by path. A directory whose listing is missing (it failed) is
/// neither an orphan nor anything else: the shell reports its failure.
pub fn classify(known: &Known, listings: &BTreeMap<Vec<String>, Contents>) -> View {
    let mut view = View::default();
    if let Some(root) = listings.get(&Vec::new()) {
        visit(known, listings, &[], root, &mut view);
    }
    for found in [&mut view.provisioning, &mut view.archives, &mut view.orphans] {
        found.sort_by(|a, b| a.path.cmp(&b.path));
    }
    view
}

fn visit(
    known: &Known,
    listings: &BTreeMap<Vec<String>, Contents>,
    dir: &[String],
    contents: &Contents,
    view: &mut View,
) {
    for seen in &contents.entries {
        let mut path = dir.to_vec();
        path.push(seen.name.clone());
        let found = || Found {
            path: path.clone(),
            seen: seen.clone(),
        };
        let is_dir = seen.kind == EntryType::Directory;
        if !seen.exact {
            view.orphans.push(found());
        } else if known.volumes.contains_key(&path) {
            if is_dir {
                view.present.insert(path);
            }
        } else if known.staged.contains(&path) {
            view.provisioning.push(found());
        } else if known.leading.contains(&path) {
            match (is_dir, listings.get(&path)) {
                (true, Some(inner)) => visit(known, listings, &path, inner, view),
                (true, None) => {}
                (false, _) => view.orphans.push(found()),
            }
        } else if dir.is_empty() && seen.name == STAGING_DIR {
            // The provisioner's own staging area.
        } else if is_dir && is_archive_name(&seen.name) {
            view.archives.push(found());
        } else if is_dir && holds_only_archives(listings, &path) {
            collect_archives(listings, &path, view);
        } else {
            view.orphans.push(found());
        }
    }
}

/// A directory leading to no volume that holds archives and nothing else (directories holding
/// only archives included), all of it seen.
fn holds_only_archives(listings: &BTreeMap<Vec<String>, Contents>, dir: &[String]) -> bool {
    let Some(contents) = listings.get(dir) else {
        return false;
    };
    contents.complete
        && !contents.entries.is_empty()
        && contents.entries.iter().all(|seen| {
            seen.exact
                && seen.kind == EntryType::Directory
                && (is_archive_name(&seen.name) || {
                    let mut path = dir.to_vec();
                    path.push(seen.name.clone());
                    holds_only_archives(listings, &path)
                })
        })
}

fn collect_archives(listings: &BTreeMap<Vec<String>, Contents>, dir: &[String], view: &mut View) {
    for seen in listings.get(dir).map_or(&[][..], |c| c.entries.as_slice()) {
        let mut path = dir.to_vec();
        path.push(seen.name.clone());
        if is_archive_name(&seen.name) {
            view.archives.push(Found {
                path,
                seen: seen.clone(),
            });
        } else {
            collect_archives(listings, &path, view);
        }
    }
}

/// How long ago `changed` was at `now` (seconds since the epoch); a time ahead of this clock
/// (the server's clock runs ahead) is no age at all.
pub fn age(changed: i64, now: i64) -> Duration {
    Duration::from_secs(u64::try_from(now.saturating_sub(changed)).unwrap_or(0))
}

/// Whether an archive may be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Remove,
    Keep(Kept),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Kept {
    #[error("PV {pv} points at {server}:{path}, which is it, inside it or around it")]
    Protected {
        pv: String,
        server: String,
        path: String,
    },
    #[error("PV {pv} points at {server}:{path}, which only the server can resolve; it could be this")]
    Unreadable {
        pv: String,
        server: String,
        path: String,
    },
    #[error("a volume is being provisioned at {0}")]
    Staged(String),
    #[error("archived {} ago, not yet {}", humantime::format_duration(*age), humantime::format_duration(*older_than))]
    Younger { age: Duration, older_than: Duration },
    /// Its change time is ahead of this clock: how old it is cannot be told, even for `0s`.
    #[error("changed {} after this machine's present (the clocks disagree): its age is unknown", humantime::format_duration(*ahead))]
    AheadOfClock { ahead: Duration },
}

/// Whether the archive at `archive` of `export`, last changed at `changed`, may be removed at
/// `now` as older than `older_than`: never while a PV or a staged volume overlaps it.
pub fn judge(
    export: &Export,
    archive: &[String],
    changed: i64,
    now: i64,
    older_than: Duration,
    pvs: &[PvSource],
    staged: &[Vec<String>],
) -> Verdict {
    let keep = |source: &PvSource, unreadable: bool| {
        let (pv, server, path) = (source.pv.clone(), source.server.clone(), source.path.clone());
        Verdict::Keep(match unreadable {
            true => Kept::Unreadable { pv, server, path },
            false => Kept::Protected { pv, server, path },
        })
    };
    for source in pvs {
        match reach(&source.path, &export.path) {
            Reach::Outside => {}
            Reach::Inside(path) if !overlap(&path, archive) => {}
            Reach::Inside(_) | Reach::Covers => return keep(source, false),
            Reach::Unreadable => return keep(source, true),
        }
    }
    if let Some(target) = staged.iter().find(|s| overlap(s, archive)) {
        return Verdict::Keep(Kept::Staged(target.join("/")));
    }
    if changed > now {
        return Verdict::Keep(Kept::AheadOfClock {
            ahead: age(now, changed),
        });
    }
    let age = age(changed, now);
    if age < older_than {
        return Verdict::Keep(Kept::Younger { age, older_than });
    }
    Verdict::Remove
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn export() -> Export {
        Export {
            server: "nfs".into(),
            path: "/exports/k8s".into(),
        }
    }

    fn pv(name: &str, server: &str, path: &str) -> PvSource {
        PvSource {
            pv: name.into(),
            server: server.into(),
            path: path.into(),
        }
    }

    fn seen(name: &str, kind: EntryType) -> Seen {
        Seen {
            name: name.into(),
            exact: true,
            kind,
            changed: 100,
            modified: 90,
            used: 4096,
        }
    }

    fn dir(names: &[&str]) -> Contents {
        Contents {
            entries: names.iter().map(|n| seen(n, EntryType::Directory)).collect(),
            complete: true,
        }
    }

    fn paths(found: &[Found]) -> Vec<String> {
        let mut paths: Vec<String> = found.iter().map(|f| f.path.join("/")).collect();
        paths.sort();
        paths
    }

    #[test]
    fn a_pv_path_reaches_inside_around_or_past_the_export() {
        let e = "/exports/k8s";
        assert_eq!(reach("/exports/k8s/a/b", e), Reach::Inside(p("a/b")));
        assert_eq!(reach("/exports//k8s/./a/", e), Reach::Inside(p("a")));
        assert_eq!(reach("/exports/k8s", e), Reach::Covers);
        assert_eq!(reach("/exports/", e), Reach::Covers);
        assert_eq!(reach("/", e), Reach::Covers);
        assert_eq!(reach("/exports/k8s-other/a", e), Reach::Outside);
        assert_eq!(reach("/exports/k8s/../k8s/a", e), Reach::Unreadable);
        assert_eq!(reach("exports/k8s/a", e), Reach::Unreadable);
        assert_eq!(reach("/a", "/"), Reach::Inside(p("a")));
        assert_eq!(reach("/", "/"), Reach::Covers);
    }

    #[test]
    fn the_walk_follows_volumes_and_peeks_above_their_deepest_level() {
        let pvs = [
            pv("pv-a", "nfs", "/exports/k8s/team/a"),
            pv("pv-elsewhere", "other", "/exports/k8s/x/y/z"),
        ];
        let known = Known::new(&export(), &pvs, &[p("new/vol")], [1]);
        assert_eq!(known.lists(&[]), Some(List::Whole));
        assert_eq!(known.lists(&p("team")), Some(List::Whole));
        assert_eq!(known.lists(&p("new")), Some(List::Whole));
        assert_eq!(known.lists(&p("team/a")), None, "a volume");
        assert_eq!(known.lists(&p("new/vol")), None, "being provisioned");
        assert_eq!(known.lists(&p("gone")), Some(List::Peek), "above depth 2");
        assert_eq!(known.lists(&p("archived-x")), None);
        assert_eq!(known.lists(&p(STAGING_DIR)), None);
        assert_eq!(known.lists(&p("team/b")), None, "at depth 2");
        assert_eq!(
            known.lists(&p("x")),
            Some(List::Peek),
            "another server's PV leads nowhere here"
        );
        assert_eq!(known.pvs_at(&p("team/a")), ["pv-a"]);
        let flat = Known::new(&export(), &[pv("pv-a", "nfs", "/exports/k8s/a")], &[], [1]);
        assert_eq!(flat.lists(&p("b")), None, "the default path: nothing above it");
        assert_eq!(
            Known::new(&export(), &[], &[], [3]).lists(&p("a/b")),
            Some(List::Peek)
        );
    }

    #[test]
    fn every_entry_is_a_volume_an_archive_an_orphan_or_the_way_to_them() {
        let pvs = [
            pv("pv-a", "nfs", "/exports/k8s/team/a"),
            pv("pv-missing", "nfs", "/exports/k8s/team/gone"),
            pv("pv-root", "nfs", "/exports/k8s/flat"),
        ];
        let known = Known::new(&export(), &pvs, &[p("new")], []);
        let mut stray_file = dir(&[
            "flat",
            "team",
            "old-team",
            "mixed",
            "empty",
            "new",
            STAGING_DIR,
            "archived-top",
        ]);
        stray_file.entries.push(seen("notes.txt", EntryType::File));
        stray_file.entries.push(Seen {
            exact: false,
            ..seen("bad\u{fffd}name", EntryType::Directory)
        });
        let listings = BTreeMap::from([
            (vec![], stray_file),
            (p("team"), dir(&["a", "archived-b", "junk"])),
            (p("old-team"), dir(&["archived-c", "archived-d"])),
            (p("mixed"), dir(&["archived-e", "data"])),
            (p("empty"), dir(&[])),
        ]);
        let view = classify(&known, &listings);
        assert_eq!(view.present, BTreeSet::from([p("flat"), p("team/a")]));
        assert_eq!(paths(&view.provisioning), ["new"]);
        assert_eq!(
            paths(&view.archives),
            [
                "archived-top",
                "old-team/archived-c",
                "old-team/archived-d",
                "team/archived-b"
            ]
        );
        assert_eq!(
            paths(&view.orphans),
            ["bad\u{fffd}name", "empty", "mixed", "notes.txt", "team/junk"]
        );
    }

    #[test]
    fn a_peek_that_did_not_see_everything_is_an_orphan() {
        let known = Known::new(&export(), &[pv("pv-a", "nfs", "/exports/k8s/ns/a")], &[], []);
        let mut cut = dir(&["archived-a"]);
        cut.complete = false;
        let listings = BTreeMap::from([(vec![], dir(&["ns", "other"])), (p("other"), cut)]);
        let view = classify(&known, &listings);
        assert_eq!(paths(&view.orphans), ["other"]);
        assert!(view.archives.is_empty());
        assert!(
            view.present.is_empty(),
            "ns was not listed: pv-a's directory is not known to be there"
        );
    }

    #[test]
    fn an_archive_is_removed_only_when_old_enough_and_no_pv_or_staged_volume_overlaps_it() {
        let e = export();
        let day = Duration::from_secs(86_400);
        let archive = p("team/archived-a");
        let now = 10 * 86_400;
        let judge_with = |pvs: &[PvSource], staged: &[Vec<String>], changed: i64| {
            judge(&e, &archive, changed, now, day, pvs, staged)
        };
        assert_eq!(judge_with(&[], &[], now - 86_400), Verdict::Remove);
        assert!(matches!(
            judge_with(&[], &[], now - 86_399),
            Verdict::Keep(Kept::Younger { .. })
        ));
        assert_eq!(
            judge_with(&[], &[], now + 60),
            Verdict::Keep(Kept::AheadOfClock {
                ahead: Duration::from_secs(60)
            })
        );
        assert!(matches!(
            judge(&e, &archive, now + 1, now, Duration::ZERO, &[], &[]),
            Verdict::Keep(Kept::AheadOfClock { .. })
        ));
        for (path, server) in [
            ("/exports/k8s/team/archived-a", "nfs"),
            ("/exports/k8s/team/archived-a/sub", "nfs"),
            ("/exports/k8s/team", "nfs"),
            ("/exports/k8s", "nfs"),
            ("/", "nfs"),
            ("/exports/k8s/team/archived-a", "nfs.example.com"),
        ] {
            assert!(
                matches!(
                    judge_with(&[pv("x", server, path)], &[], 0),
                    Verdict::Keep(Kept::Protected { .. })
                ),
                "{server}:{path}"
            );
        }
        assert!(matches!(
            judge_with(&[pv("x", "nfs", "/exports/k8s/../k8s/team")], &[], 0),
            Verdict::Keep(Kept::Unreadable { .. })
        ));
        for path in [
            "/exports/k8s/team/archived-ab",
            "/exports/k8s/team/a",
            "/elsewhere",
        ] {
            assert_eq!(
                judge_with(&[pv("x", "nfs", path)], &[], 0),
                Verdict::Remove,
                "{path}"
            );
        }
        assert_eq!(
            judge_with(&[], &[p("team/archived-a/x")], 0),
            Verdict::Keep(Kept::Staged("team/archived-a/x".into()))
        );
        let kept = judge_with(&[pv("static", "nfs", "/exports/k8s/team")], &[], 0);
        let Verdict::Keep(reason) = kept else {
            panic!("removed")
        };
        assert_eq!(
            reason.to_string(),
            "PV static points at nfs:/exports/k8s/team, which is it, inside it or around it"
        );
        assert_eq!(
            Kept::Younger {
                age: Duration::from_secs(90),
                older_than: day
            }
            .to_string(),
            "archived 1m 30s ago, not yet 1day"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::path::{Component, Path};

        fn component() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["a", "b", "archived-a", "archived-b", STAGING_DIR])
                .prop_map(str::to_owned)
        }

        fn rel() -> impl Strategy<Value = Vec<String>> {
            prop::collection::vec(component(), 1..4)
        }

        /// A PV's path as someone may have written it: around, at or inside the export, with
        /// doubled slashes, `.`, `..` or a trailing slash, or relative.
        fn pv_path() -> impl Strategy<Value = String> {
            (
                prop::sample::select(vec![
                    "/",
                    "/e",
                    "/e/k",
                    "/e/k/",
                    "/e/k//",
                    "/e/./k/",
                    "/e/k/../k/",
                    "e/k/",
                    "/f/",
                ]),
                prop::collection::vec(component(), 0..4),
                any::<bool>(),
            )
                .prop_map(|(base, rest, trailing)| {
                    let mut path = base.to_owned();
                    if !rest.is_empty() && !path.ends_with('/') {
                        path.push('/');
                    }
                    path.push_str(&rest.join("/"));
                    if trailing {
                        path.push('/');
                    }
                    path
                })
        }

        fn sources() -> impl Strategy<Value = Vec<PvSource>> {
            prop::collection::vec((pv_path(), prop::sample::select(vec!["nfs", "alias"])), 0..5).prop_map(
                |v| {
                    v.into_iter()
                        .enumerate()
                        .map(|(i, (path, server))| pv(&format!("pv-{i}"), server, &path))
                        .collect()
                },
            )
        }

        /// A path's components as std reads them, `None` where only the server can tell.
        fn oracle(path: &str) -> Option<Vec<String>> {
            let mut out = Vec::new();
            for c in Path::new(path).components() {
                match c {
                    Component::RootDir | Component::CurDir => {}
                    Component::Normal(n) => out.push(n.to_str()?.to_owned()),
                    Component::ParentDir | Component::Prefix(_) => return None,
                }
            }
            path.starts_with('/').then_some(out)
        }

        /// A tree of directories (as listings) over the same few names.
        fn tree() -> impl Strategy<Value = BTreeSet<Vec<String>>> {
            prop::collection::btree_set(rel(), 0..24).prop_map(|leaves| {
                let mut all = BTreeSet::new();
                for leaf in leaves {
                    for end in 1..=leaf.len() {
                        all.insert(leaf[..end].to_vec());
                    }
                }
                all
            })
        }

        /// Lists `tree` as the shell does: what `known` asks for, from the root down.
        fn list(known: &Known, tree: &BTreeSet<Vec<String>>) -> BTreeMap<Vec<String>, Contents> {
            let mut listings = BTreeMap::new();
            let mut queue = vec![Vec::new()];
            while let Some(dir) = queue.pop() {
                let Some(how) = known.lists(&dir) else {
                    continue;
                };
                let mut entries: Vec<Seen> = tree
                    .iter()
                    .filter(|p| p.len() == dir.len() + 1 && p.starts_with(&dir))
                    .map(|p| seen(p.last().map_or("", String::as_str), EntryType::Directory))
                    .collect();
                let complete = how == List::Whole || entries.len() <= 2;
                if !complete {
                    entries.truncate(2);
                }
                for e in &entries {
                    let mut child = dir.clone();
                    child.push(e.name.clone());
                    queue.push(child);
                }
                listings.insert(dir, Contents { entries, complete });
            }
            listings
        }

        proptest! {
            /// Nothing a PV points at, lies inside or around, or that only the server can resolve,
            /// and nothing being provisioned or younger than asked, is ever selected for removal.
            #[test]
            fn nothing_a_pv_or_a_staged_volume_overlaps_is_ever_removed(
                archive in rel(),
                pvs in sources(),
                staged in prop::collection::vec(rel(), 0..2),
                changed in 0i64..200,
                older in 0u64..100,
            ) {
                let e = Export { server: "nfs".into(), path: "/e/k".into() };
                let full: Vec<String> = ["e", "k"].iter().map(|c| (*c).to_owned()).chain(archive.clone()).collect();
                let verdict = judge(&e, &archive, changed, 150, Duration::from_secs(older), &pvs, &staged);
                if verdict == Verdict::Remove {
                    for source in &pvs {
                        let path = oracle(&source.path);
                        prop_assert!(path.is_some(), "removed despite unreadable {}", source.path);
                        let path = path.unwrap_or_default();
                        prop_assert!(!overlap(&path, &full), "removed {} under PV {}", full.join("/"), source.path);
                    }
                    for s in &staged {
                        prop_assert!(!overlap(s, &archive));
                    }
                    prop_assert!(150 - changed >= i64::try_from(older).unwrap_or(i64::MAX));
                }
            }

            /// What the view calls an archive or an orphan is never a PV's directory, inside one or
            /// around one, nor being provisioned; every PV directory listed is reported present.
            #[test]
            fn archives_and_orphans_never_overlap_a_volume(
                tree in tree(),
                pvs in sources(),
                staged in prop::collection::vec(rel(), 0..2),
                depth in 1usize..4,
            ) {
                let e = Export { server: "nfs".into(), path: "/e/k".into() };
                let known = Known::new(&e, &pvs, &staged, [depth]);
                let view = classify(&known, &list(&known, &tree));
                let volumes: Vec<Vec<String>> = pvs
                    .iter()
                    .filter(|s| s.server == "nfs")
                    .filter_map(|s| match reach(&s.path, &e.path) {
                        Reach::Inside(p) => Some(p),
                        _ => None,
                    })
                    .chain(staged.clone())
                    .collect();
                for found in view.archives.iter().chain(&view.orphans) {
                    for v in &volumes {
                        prop_assert!(!overlap(v, &found.path), "{} overlaps {}", found.path.join("/"), v.join("/"));
                    }
                }
                for found in &view.archives {
                    prop_assert!(found.seen.name.starts_with(ARCHIVE_PREFIX));
                    let verdict = judge(&e, &found.path, 0, 1000, Duration::ZERO, &pvs, &staged);
                    let only_covers = pvs.iter().any(|s| matches!(reach(&s.path, &e.path), Reach::Covers | Reach::Unreadable) || s.server != "nfs");
                    prop_assert!(verdict == Verdict::Remove || only_covers, "{verdict:?}");
                }
                for present in &view.present {
                    prop_assert!(tree.contains(present));
                }
            }
        }
    }
}
