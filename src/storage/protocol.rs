//! The volume protocol, written once over any [`Transport`]: exclusive, crash-safe creation with
//! the staging record of [`crate::core::staging`] (adopting only this volume's own interrupted
//! attempt), filled with a copy of another volume before it is placed (a clone), the sweep of
//! staged leftovers, collision-free archives, deletes that never follow a symlink out of the
//! volume, a volume's usage, capacity and a write probe.
//!
//! Paths are volume path components relative to the export root, checked again here with the
//! rules they were built with. Calls for the same PV must not run concurrently (the controllers
//! serialise work per object); calls for different PVs may.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::copy::{Dest, Progress, Sink, SinkDir, copy_tree};
use super::error::{Refusal, StorageFailure, StorageResult};
use super::remove::Remove;
use super::transport::{
    At, Capacity, Entry, Kind, Made, Move, Opened, ReadFile, Renamed, Stat, Transport, Unlinked, at,
};
use super::usage::{Measure, Usage};
use super::walker::{MAX_ROUNDS, Pace, TreeStats, Walker};
use crate::core::naming::{archive_name, check_single_component};
use crate::core::params::DirMode;
use crate::core::staging::{
    self, AtTarget, COPYING_FILE, Existing, INODE_FILE, MAX_ARCHIVE_ATTEMPTS, PLACING_FILE, PROBE_PREFIX,
    Record, STAGING_DIR, Staging, StagingRefusal, TARGET_FILE, VOL_DIR, staging_path, tmp_name,
};

const S_ISGID: u32 = 0o2000;
/// Requests in flight while removing a leftover record (a few files).
const LEFTOVER_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    /// A clone's copy is whole in the staging area (a create with a [`Fill`]); a create without
    /// one places it.
    Staged,
    /// This claim's own earlier, interrupted attempt had already placed the directory.
    Adopted,
    /// A directory that was already there, taken as it is ([`Existing::Reuse`]).
    Reused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Leaf name of the archive, in the same parent directory.
    To(String),
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Removed { entries: u64 },
    Missing,
}

impl Removed {
    /// What removing `entries` entries was (none: nothing was there).
    pub fn of(entries: u64) -> Self {
        match entries {
            0 => Removed::Missing,
            entries => Removed::Removed { entries },
        }
    }
}

/// One entry of a directory, with its attributes (not following a symlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: Vec<u8>,
    pub stat: Stat,
}

/// A directory's entries as [`Backend::list_dir`] read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<Listed>,
    /// Every entry is there: the listing did not stop at its limit.
    pub complete: bool,
}

/// The result of one volume operation.
pub type OpFuture<'a, T> = BoxFuture<'a, StorageResult<T>>;

/// What a new volume is filled with before it is placed: a copy of the volume at `path` of
/// `source` (any export, reached any way), `concurrency` requests in flight on each side.
pub struct Fill<'a> {
    pub source: &'a dyn Backend,
    pub path: &'a [String],
    pub concurrency: usize,
    pub progress: Arc<Progress>,
}

/// The volume operations of one export, whichever transport reaches it.
pub trait Backend: Send + Sync {
    /// `fill`: a clone's source, copied into the staged volume (a retry resumes the copy), which is
    /// then [`Created::Staged`]; a create without a fill places it. An unfinished copy is never
    /// placed.
    fn create_volume<'a>(
        &'a self,
        pv: &'a str,
        path: &'a [String],
        dir: DirMode,
        existing: Existing,
        fill: Option<&'a Fill<'a>>,
    ) -> OpFuture<'a, Created>;
    /// Drops the staging record of `pv` (once its PV exists). Idempotent.
    fn finish_volume<'a>(&'a self, pv: &'a str) -> OpFuture<'a, ()>;
    /// The volumes with something in the staging area (a record, or a leftover of one).
    fn staged_volumes(&self) -> OpFuture<'_, Vec<String>>;
    /// The path recorded for `pv`'s creation, if it has a record.
    fn staged_target<'a>(&'a self, pv: &'a str) -> OpFuture<'a, Option<Vec<String>>>;
    fn archive_volume<'a>(&'a self, path: &'a [String]) -> OpFuture<'a, Archived>;
    fn delete_volume<'a>(&'a self, path: &'a [String], concurrency: usize) -> OpFuture<'a, Removed>;
    /// Copies the tree inside the volume at `path` into `dest` of `sink` (the other half of
    /// [`Backend::create_volume`] with a [`Fill`]).
    fn copy_volume_into<'a>(
        &'a self,
        path: &'a [String],
        sink: Arc<dyn Sink>,
        dest: SinkDir,
        concurrency: usize,
        progress: Arc<Progress>,
    ) -> OpFuture<'a, ()>;
    /// What the volume at `path` takes (`None`: it is not there), its walk paced by `pace`.
    fn measure_volume<'a>(
        &'a self,
        path: &'a [String],
        concurrency: usize,
        pace: Pace,
    ) -> OpFuture<'a, Option<Usage>>;
    /// The entries of the directory at `path` (empty: the export root) with their attributes, at
    /// most `limit` of them; `None`: it is not there. Reads only.
    fn list_dir<'a>(&'a self, path: &'a [String], limit: usize) -> OpFuture<'a, Option<Listing>>;
    fn capacity(&self) -> OpFuture<'_, Capacity>;
    /// Creates and removes an empty directory named after `tag` in the staging area.
    fn probe_writable<'a>(&'a self, tag: &'a str) -> OpFuture<'a, ()>;
    /// Removes probe directories left in the staging area (by a probe killed between its two
    /// steps; a running probe whose directory goes finds it gone, which is fine). How many.
    fn clear_probes(&self) -> OpFuture<'_, u64>;
}

/// The protocol over one transport.
pub struct Volumes<T> {
    t: Arc<T>,
}

impl<T: Transport> Volumes<T> {
    pub fn new(transport: T) -> Self {
        Volumes {
            t: Arc::new(transport),
        }
    }

    pub fn transport(&self) -> &T {
        &self.t
    }
}

fn join(components: &[String]) -> String {
    components.join("/")
}

fn invalid(op: &'static str, path: String, reason: String) -> StorageFailure {
    Refusal::InvalidPath { op, path, reason }.into()
}

fn not_a_directory(op: &'static str, path: impl Into<String>) -> StorageFailure {
    Refusal::NotADirectory {
        op,
        path: path.into(),
    }
    .into()
}

fn vanished(op: &'static str, path: impl Into<String>) -> StorageFailure {
    Refusal::Vanished {
        op,
        path: path.into(),
    }
    .into()
}

fn check_path(op: &'static str, path: &[String]) -> StorageResult<()> {
    if path.is_empty() {
        return Err(invalid(
            op,
            String::new(),
            "empty path (the export root itself)".into(),
        ));
    }
    path.iter()
        .try_for_each(|c| check_single_component(c).map_err(|e| e.to_string()))
        .map_err(|reason| invalid(op, join(path), reason))
}

fn check_pv(op: &'static str, pv: &str) -> StorageResult<()> {
    staging::check_volume_name(pv).map_err(|reason| invalid(op, staging_path(pv), reason))
}

/// The staging record of `pv` and its directory.
struct Loaded<D> {
    dir: D,
    record: Record,
}

impl<T: Transport> Volumes<T> {
    /// Creates the directory for `pv` at `path` exclusively, with exactly `dir`'s mode and owner.
    /// An existing directory there is adopted if it is this volume's own earlier attempt, reused
    /// as it is if `existing` says so, and refused otherwise. With `fill`, the staged directory is
    /// filled with a copy (or the copy resumed) and left staged; a later create places it.
    pub async fn create(
        &self,
        pv: &str,
        path: &[String],
        dir: DirMode,
        existing: Existing,
        fill: Option<&Fill<'_>>,
    ) -> StorageResult<Created> {
        const OP: &str = "create directory";
        check_pv(OP, pv)?;
        check_path(OP, path)?;
        let vol_path = join(path);
        if dir.mode & !0o7777 != 0 {
            return Err(Refusal::InvalidMode {
                path: vol_path,
                mode: dir.mode,
            }
            .into());
        }
        let t = &*self.t;
        let root = t.root().await?;
        let staging = self
            .staging(&root, true)
            .await?
            .ok_or_else(|| vanished(OP, STAGING_DIR))?;
        let loaded = self.read_record(&staging, pv).await?;
        let (leaf, parents) = path.split_last().ok_or_else(|| vanished(OP, ""))?;
        // Look before creating anything: a refusal leaves the export as it was.
        let parent = self.walk(&root, parents, false, OP).await?;
        let at_target = match &parent {
            None => AtTarget::Nothing,
            Some(p) => match t.stat(p, leaf.as_bytes(), at("stat", &vol_path)).await? {
                None => AtTarget::Nothing,
                Some(st) if st.kind() == Kind::Dir => AtTarget::directory(st.id, st.mode),
                Some(_) => AtTarget::Other,
            },
        };
        let decision = staging::decide(
            path,
            loaded.as_ref().map(|l| &l.record),
            at_target,
            existing,
            fill.is_some(),
        );
        let (record, vol) = match (decision, loaded) {
            (Staging::Adopt, _) => return Ok(Created::Adopted),
            (Staging::Reuse, _) => return Ok(Created::Reused),
            (Staging::Refuse(refusal), _) => {
                return Err(match refusal {
                    StagingRefusal::Taken => Refusal::Taken { path: vol_path },
                    StagingRefusal::NotADirectory => Refusal::NotADirectory {
                        op: OP,
                        path: vol_path,
                    },
                    StagingRefusal::StagedElsewhere { recorded } => Refusal::StagedElsewhere {
                        pv: pv.to_owned(),
                        requested: vol_path,
                        recorded: join(&recorded),
                    },
                    StagingRefusal::CopyUnfinished => Refusal::CopyUnfinished {
                        pv: pv.to_owned(),
                        path: vol_path,
                    },
                }
                .into());
            }
            (Staging::StartOver, _) => {
                self.drop_record(&staging, pv).await?;
                self.build_record(&staging, pv, path, fill.is_some()).await?
            }
            (Staging::Build, _) => self.build_record(&staging, pv, path, fill.is_some()).await?,
            (Staging::Continue { .. }, Some(loaded)) => {
                let vol_in_staging = staging_path(&format!("{pv}/{VOL_DIR}"));
                match t
                    .open_dir(&loaded.dir, VOL_DIR.as_bytes(), at(OP, &vol_in_staging))
                    .await?
                {
                    Opened::Dir(vol) => (loaded, vol),
                    Opened::NotDir => return Err(not_a_directory(OP, vol_in_staging)),
                    Opened::Missing => return Err(vanished(OP, vol_in_staging)),
                }
            }
            (Staging::Continue { .. }, None) => return Err(vanished(OP, staging_path(pv))),
        };
        if let Some(fill) = fill {
            if record.record.copying {
                self.fill(&record.dir, &vol, fill, pv).await?;
            }
            return Ok(Created::Staged);
        }
        let parent = match parent {
            Some(p) => p,
            None => self
                .walk(&root, parents, true, OP)
                .await?
                .ok_or_else(|| vanished(OP, join(parents)))?,
        };
        self.apply_mode(&vol, dir, &parent, &vol_path).await?;
        if !record.record.placing && t.placing_may_leave_a_claim() {
            let marker = staging_path(&format!("{pv}/{PLACING_FILE}"));
            t.write_file(&record.dir, PLACING_FILE.as_bytes(), b"", at(OP, &marker))
                .await?;
        }
        // The record names the staged directory's inode once it was written (always, unless a
        // crash came between the two): no need to ask again.
        let vol_id = match record.record.inode {
            Some(id) => id,
            None => t.dir_stat(&vol, at("stat", &vol_path)).await?.id,
        };
        let placed = t
            .rename_noreplace(
                Move {
                    from_dir: &record.dir,
                    from: VOL_DIR.as_bytes(),
                    to_dir: &parent,
                    to: leaf.as_bytes(),
                },
                vol_id,
                record.record.placing,
                at(OP, &vol_path),
            )
            .await?;
        match placed {
            Renamed::Done => Ok(Created::New),
            Renamed::Taken => Err(Refusal::Taken { path: vol_path }.into()),
            Renamed::SourceMissing => Err(vanished(OP, staging_path(&format!("{pv}/{VOL_DIR}")))),
        }
    }

    /// Copies `fill`'s source into the staged `vol` (resuming what an earlier attempt left), then
    /// drops the record's copying marker: from then on the volume may be placed.
    async fn fill(&self, record: &T::Dir, vol: &T::Dir, fill: &Fill<'_>, pv: &str) -> StorageResult<()> {
        self.t.prepare_parallel(fill.concurrency);
        let sink: Arc<dyn Sink> = Arc::new(Dest::new(Arc::clone(&self.t)));
        fill.source
            .copy_volume_into(
                fill.path,
                sink,
                SinkDir::new(vol.clone()),
                fill.concurrency,
                Arc::clone(&fill.progress),
            )
            .await?;
        let marker = staging_path(&format!("{pv}/{COPYING_FILE}"));
        match self
            .t
            .remove(
                record,
                COPYING_FILE.as_bytes(),
                Kind::Other,
                at("finish copy of", &marker),
            )
            .await?
        {
            Unlinked::Done | Unlinked::Missing => Ok(()),
            _ => Err(not_a_directory("finish copy of", marker)),
        }
    }

    /// chown (an explicit owner; else the group of a setgid parent, as mkdir there would have
    /// given, best effort), then chmod to exactly `dir.mode`: chown clears setgid, NFSv3 MKDIR
    /// drops it, and the umask takes bits away.
    async fn apply_mode(
        &self,
        vol: &T::Dir,
        dir: DirMode,
        parent: &T::Dir,
        vol_path: &str,
    ) -> StorageResult<()> {
        const CHOWN: &str = "change owner of";
        let t = &*self.t;
        if dir.uid.is_some() || dir.gid.is_some() {
            t.chown(vol, dir.uid, dir.gid, false, at(CHOWN, vol_path)).await?;
        } else {
            let parent = t.dir_stat(parent, at("stat", vol_path)).await?;
            if parent.mode & S_ISGID != 0 {
                t.chown(vol, None, Some(parent.gid), true, at(CHOWN, vol_path))
                    .await?;
            }
        }
        t.chmod(vol, dir.mode, at("change mode of", vol_path)).await
    }

    /// Drops the staging record of `pv`. Idempotent.
    pub async fn finish(&self, pv: &str) -> StorageResult<()> {
        check_pv("finish volume", pv)?;
        let root = self.t.root().await?;
        match self.staging(&root, false).await? {
            Some(staging) => self.drop_record(&staging, pv).await,
            None => Ok(()),
        }
    }

    pub async fn staged(&self) -> StorageResult<Vec<String>> {
        const OP: &str = "list staging area";
        let t = &*self.t;
        let Some((staging, entries)) = self.staging_entries(OP).await? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for entry in entries {
            let Ok(name) = std::str::from_utf8(&entry.name) else {
                continue;
            };
            let Some(pv) = staging::staged_volume(name) else {
                continue;
            };
            let kind = match entry.kind {
                Some(kind) => Some(kind),
                None => t
                    .stat(&staging, &entry.name, at(OP, &staging_path(name)))
                    .await?
                    .map(|st| st.kind()),
            };
            if kind == Some(Kind::Dir) {
                names.push(pv.to_owned());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// The staging area and every entry in it; `None`: there is no staging area.
    async fn staging_entries(&self, op: &'static str) -> StorageResult<Option<(T::Dir, Vec<Entry<T::Dir>>)>> {
        let root = self.t.root().await?;
        let Some(staging) = self.staging(&root, false).await? else {
            return Ok(None);
        };
        let (entries, _) = self
            .read_entries(&staging, false, usize::MAX, at(op, STAGING_DIR))
            .await?;
        Ok(Some((staging, entries)))
    }

    /// Up to `limit` entries of `dir`, page after page (with their attributes where `attrs` asks
    /// and the listing carries them); `true`: that was all of them. A listing whose place was
    /// lost (entries removed meanwhile) starts over, at most [`MAX_ROUNDS`] times.
    async fn read_entries(
        &self,
        dir: &T::Dir,
        attrs: bool,
        limit: usize,
        at: At<'_>,
    ) -> StorageResult<(Vec<Entry<T::Dir>>, bool)> {
        for _ in 0..MAX_ROUNDS {
            let mut entries = Vec::new();
            let mut from = None;
            loop {
                let Some(page) = self.t.read_dir(dir, from, attrs, at).await? else {
                    break;
                };
                entries.extend(page.entries);
                if entries.len() > limit {
                    entries.truncate(limit);
                    return Ok((entries, false));
                }
                match page.next {
                    Some(next) => from = Some(next),
                    None => return Ok((entries, true)),
                }
            }
        }
        Err(vanished(at.op, at.path))
    }

    /// The entries of the directory at `path` (empty: the export root) with their attributes,
    /// at most `limit` of them; `None`: it is not there. An entry gone between the listing and
    /// its attributes is left out.
    pub async fn list(&self, path: &[String], limit: usize) -> StorageResult<Option<Listing>> {
        const OP: &str = "list directory";
        if !path.is_empty() {
            check_path(OP, path)?;
        }
        let t = &*self.t;
        let shown = join(path);
        let root = t.root().await?;
        let Some(dir) = self.walk(&root, path, false, OP).await? else {
            return Ok(None);
        };
        let (entries, complete) = self.read_entries(&dir, true, limit, at(OP, &shown)).await?;
        let mut listed = Vec::with_capacity(entries.len());
        for entry in entries {
            let stat = match entry.stat {
                Some(stat) => stat,
                None => {
                    let name = format!("{shown}/{}", String::from_utf8_lossy(&entry.name));
                    match t.stat(&dir, &entry.name, at("stat", &name)).await? {
                        Some(stat) => stat,
                        None => continue,
                    }
                }
            };
            listed.push(Listed {
                name: entry.name,
                stat,
            });
        }
        Ok(Some(Listing {
            entries: listed,
            complete,
        }))
    }

    pub async fn staged_target(&self, pv: &str) -> StorageResult<Option<Vec<String>>> {
        check_pv("read staging record", pv)?;
        let root = self.t.root().await?;
        let Some(staging) = self.staging(&root, false).await? else {
            return Ok(None);
        };
        Ok(self.read_record(&staging, pv).await?.map(|l| l.record.target))
    }

    /// Renames the volume directory to `archived-<leaf>` (or `archived-<leaf>-<n>` if taken) in the
    /// same parent; an existing archive is never replaced. A missing volume is `Missing`.
    pub async fn archive(&self, path: &[String]) -> StorageResult<Archived> {
        const OP: &str = "archive directory";
        check_path(OP, path)?;
        let t = &*self.t;
        let vol_path = join(path);
        let (leaf, parents) = path.split_last().ok_or_else(|| vanished(OP, ""))?;
        let root = t.root().await?;
        let Some(parent) = self.walk(&root, parents, false, OP).await? else {
            return Ok(Archived::Missing);
        };
        let vol = match t.stat(&parent, leaf.as_bytes(), at("stat", &vol_path)).await? {
            None => return Ok(Archived::Missing),
            Some(st) if st.kind() != Kind::Dir => return Err(not_a_directory(OP, vol_path)),
            Some(st) => st,
        };
        for attempt in 0..MAX_ARCHIVE_ATTEMPTS {
            let name = archive_name(leaf, attempt);
            if let Err(reason) = check_single_component(&name) {
                let mut to = parents.to_vec();
                to.push(name);
                return Err(invalid(OP, join(&to), reason.to_string()));
            }
            let renamed = t
                .rename_noreplace(
                    Move {
                        from_dir: &parent,
                        from: leaf.as_bytes(),
                        to_dir: &parent,
                        to: name.as_bytes(),
                    },
                    vol.id,
                    true,
                    at(OP, &vol_path),
                )
                .await?;
            match renamed {
                Renamed::Done => return Ok(Archived::To(name)),
                Renamed::Taken => {}
                Renamed::SourceMissing => return Ok(Archived::Missing),
            }
        }
        Err(Refusal::ArchiveNamesExhausted {
            path: vol_path,
            attempts: MAX_ARCHIVE_ATTEMPTS,
        }
        .into())
    }

    /// Removes the volume directory and everything in it with up to `concurrency` primitives in
    /// flight. A volume path that is a symlink (or another non-directory) is removed itself.
    pub async fn delete(&self, path: &[String], concurrency: usize) -> StorageResult<Removed> {
        let stats = self.delete_some(path, concurrency, None).await?;
        Ok(Removed::of(stats.entries))
    }

    /// [`Volumes::delete`], stopping (`unfinished`) once `budget` entries are removed; a later
    /// delete removes the rest.
    pub async fn delete_some(
        &self,
        path: &[String],
        concurrency: usize,
        budget: Option<u64>,
    ) -> StorageResult<TreeStats> {
        const OP: &str = "delete directory";
        check_path(OP, path)?;
        let (leaf, parents) = path.split_last().ok_or_else(|| vanished(OP, ""))?;
        let root = self.t.root().await?;
        let Some(parent) = self.walk(&root, parents, false, OP).await? else {
            return Ok(TreeStats::default());
        };
        self.t.prepare_parallel(concurrency);
        Walker::new(Arc::clone(&self.t), Remove, concurrency, OP)
            .stop_after(budget)
            .walk(&parent, (), leaf, &join(parents))
            .await
    }

    /// Copies the tree inside the volume at `path` into `dest` of `sink`.
    pub async fn copy_into(
        &self,
        path: &[String],
        sink: Arc<dyn Sink>,
        dest: SinkDir,
        concurrency: usize,
        progress: Arc<Progress>,
    ) -> StorageResult<()> {
        const OP: &str = "copy from";
        check_path(OP, path)?;
        let vol_path = join(path);
        let root = self.t.root().await?;
        let Some(vol) = self.walk(&root, path, false, OP).await? else {
            return Err(vanished(OP, vol_path));
        };
        self.t.prepare_parallel(concurrency);
        copy_tree(
            Arc::clone(&self.t),
            vol,
            &vol_path,
            sink,
            dest,
            concurrency,
            progress,
        )
        .await
    }

    /// What the volume at `path` takes; `None`: it is not there.
    pub async fn measure(
        &self,
        path: &[String],
        concurrency: usize,
        pace: Pace,
    ) -> StorageResult<Option<Usage>> {
        const OP: &str = "measure";
        check_path(OP, path)?;
        let vol_path = join(path);
        let root = self.t.root().await?;
        let Some(vol) = self.walk(&root, path, false, OP).await? else {
            return Ok(None);
        };
        let st = self.t.dir_stat(&vol, at("stat", &vol_path)).await?;
        let walker = Walker::new(Arc::clone(&self.t), Measure::default(), concurrency, OP).paced(Some(pace));
        walker.visitor().add(&st);
        walker.walk_inside(vol, (), &vol_path).await?;
        Ok(Some(walker.visitor().usage()))
    }

    pub async fn capacity(&self) -> StorageResult<Capacity> {
        let root = self.t.root().await?;
        self.t
            .statfs(&root, at("query capacity of export root", ""))
            .await
    }

    /// Proves the export takes writes: makes and removes `PROBE_PREFIX<tag>` in the staging area.
    pub async fn probe(&self, tag: &str) -> StorageResult<()> {
        const OP: &str = "write probe directory in";
        let t = &*self.t;
        let name = format!("{PROBE_PREFIX}{tag}");
        let path = staging_path(&name);
        let root = t.root().await?;
        let staging = self
            .staging(&root, true)
            .await?
            .ok_or_else(|| vanished(OP, STAGING_DIR))?;
        // Exists (a leftover) is as good as made.
        t.mkdir(&staging, name.as_bytes(), 0o700, at(OP, &path)).await?;
        const RMDIR: &str = "remove probe directory in";
        match t
            .remove(&staging, name.as_bytes(), Kind::Dir, at(RMDIR, &path))
            .await?
        {
            Unlinked::Done | Unlinked::Missing => Ok(()),
            Unlinked::NotEmpty => Err(Refusal::KeepsFilling { op: RMDIR, path }.into()),
            Unlinked::IsDir | Unlinked::NotDir => Err(not_a_directory(RMDIR, path)),
        }
    }

    /// Removes the (empty) probe directories in the staging area; anything else there, and a
    /// probe directory something was put in, stays.
    pub async fn clear_probes(&self) -> StorageResult<u64> {
        const OP: &str = "remove leftover probe directory in";
        let t = &*self.t;
        let Some((staging, entries)) = self.staging_entries(OP).await? else {
            return Ok(0);
        };
        let probes = entries
            .into_iter()
            .filter(|e| e.name.starts_with(PROBE_PREFIX.as_bytes()) && e.kind != Some(Kind::Other))
            .map(|e| e.name);
        let mut removed = 0;
        for name in probes {
            let path = staging_path(&String::from_utf8_lossy(&name));
            if t.remove(&staging, &name, Kind::Dir, at(OP, &path)).await? == Unlinked::Done {
                removed += 1;
            }
        }
        Ok(removed)
    }

    // ---- steps ----

    /// Walks `components` below `root`; missing ones are made (mode 0755) when `create`, else
    /// `None`. A symlink or file on the way is refused.
    async fn walk(
        &self,
        root: &T::Dir,
        components: &[String],
        create: bool,
        op: &'static str,
    ) -> StorageResult<Option<T::Dir>> {
        let t = &*self.t;
        let mut cur = root.clone();
        for (i, c) in components.iter().enumerate() {
            let here = join(&components[..=i]);
            cur = match t.open_dir(&cur, c.as_bytes(), at(op, &here)).await? {
                Opened::Dir(d) => d,
                Opened::NotDir => return Err(not_a_directory(op, here)),
                Opened::Missing if !create => return Ok(None),
                Opened::Missing => self.make_dir(&cur, c, 0o755, "create directory", &here).await?,
            };
        }
        Ok(Some(cur))
    }

    /// MKDIR, or the directory already there (whoever made it).
    async fn make_dir(
        &self,
        dir: &T::Dir,
        name: &str,
        mode: u32,
        op: &'static str,
        path: &str,
    ) -> StorageResult<T::Dir> {
        let t = &*self.t;
        match t.mkdir(dir, name.as_bytes(), mode, at(op, path)).await? {
            Made::New(d) => Ok(d),
            Made::Gone => Err(vanished(op, path)),
            Made::Exists => match t.open_dir(dir, name.as_bytes(), at(op, path)).await? {
                Opened::Dir(d) => Ok(d),
                Opened::NotDir => Err(not_a_directory(op, path)),
                Opened::Missing => Err(vanished(op, path)),
            },
        }
    }

    /// The staging area (made with mode 0700 when `create`); it must be a real directory.
    async fn staging(&self, root: &T::Dir, create: bool) -> StorageResult<Option<T::Dir>> {
        const OP: &str = "open staging area";
        match self
            .t
            .open_dir(root, STAGING_DIR.as_bytes(), at(OP, STAGING_DIR))
            .await?
        {
            Opened::Dir(d) => Ok(Some(d)),
            Opened::NotDir => Err(not_a_directory(OP, STAGING_DIR)),
            Opened::Missing if !create => Ok(None),
            Opened::Missing => self
                .make_dir(root, STAGING_DIR, 0o700, "create staging area", STAGING_DIR)
                .await
                .map(Some),
        }
    }

    async fn read_record(&self, staging: &T::Dir, pv: &str) -> StorageResult<Option<Loaded<T::Dir>>> {
        const OP: &str = "read staging record";
        let t = &*self.t;
        let path = staging_path(pv);
        let dir = match t.open_dir(staging, pv.as_bytes(), at(OP, &path)).await? {
            Opened::Dir(d) => d,
            Opened::Missing => return Ok(None),
            Opened::NotDir => return Err(not_a_directory(OP, path)),
        };
        let bad = |reason: &str| {
            StorageFailure::from(Refusal::BadStagingRecord {
                op: OP,
                path: path.clone(),
                reason: reason.to_owned(),
            })
        };
        let file = |name: &str| format!("{path}/{name}");
        let target = match t
            .read_file(&dir, TARGET_FILE.as_bytes(), at(OP, &file(TARGET_FILE)))
            .await?
        {
            ReadFile::Data(bytes) => staging::parse_target(bytes).map_err(bad)?,
            ReadFile::Missing => return Err(bad("no target file")),
            ReadFile::NotAFile => return Err(not_a_directory(OP, file(TARGET_FILE))),
        };
        let inode = match t
            .read_file(&dir, INODE_FILE.as_bytes(), at(OP, &file(INODE_FILE)))
            .await?
        {
            ReadFile::Data(bytes) => Some(staging::parse_inode(bytes).map_err(bad)?),
            ReadFile::Missing => None,
            ReadFile::NotAFile => return Err(not_a_directory(OP, file(INODE_FILE))),
        };
        let placed = match t.stat(&dir, VOL_DIR.as_bytes(), at(OP, &file(VOL_DIR))).await? {
            None => true,
            Some(st) if st.kind() == Kind::Dir => false,
            Some(_) => return Err(not_a_directory(OP, file(VOL_DIR))),
        };
        let placing = t
            .stat(&dir, PLACING_FILE.as_bytes(), at(OP, &file(PLACING_FILE)))
            .await?
            .is_some();
        let copying = t
            .stat(&dir, COPYING_FILE.as_bytes(), at(OP, &file(COPYING_FILE)))
            .await?
            .is_some();
        Ok(Some(Loaded {
            dir,
            record: Record {
                target,
                inode,
                placed,
                placing,
                copying,
            },
        }))
    }

    /// Builds `<pv>.tmp` (target, vol, inode, and the copying marker of a clone) and publishes
    /// it as `<pv>` with one rename, which cannot replace a published record (it always holds
    /// `target`, so it is never empty).
    async fn build_record(
        &self,
        staging: &T::Dir,
        pv: &str,
        path: &[String],
        copying: bool,
    ) -> StorageResult<(Loaded<T::Dir>, T::Dir)> {
        const OP: &str = "create staging record";
        let t = &*self.t;
        let tmp = tmp_name(pv);
        let tmp_path = staging_path(&tmp);
        let file = |name: &str| format!("{tmp_path}/{name}");
        let concurrent = || {
            StorageFailure::from(Refusal::BadStagingRecord {
                op: OP,
                path: staging_path(pv),
                reason: "a concurrent attempt published a record for this volume".to_owned(),
            })
        };
        self.remove_leftover(staging, &tmp).await?;
        let Made::New(dir) = t.mkdir(staging, tmp.as_bytes(), 0o700, at(OP, &tmp_path)).await? else {
            return Err(concurrent());
        };
        let target = staging::encode_target(path);
        let rec = &dir;
        let write = |name: &'static str, content: String| {
            let path = file(name);
            async move {
                let at = at(OP, &path);
                match t.write_file(rec, name.as_bytes(), content.as_bytes(), at).await? {
                    true => Ok(()),
                    false => Err(concurrent()),
                }
            }
        };
        write(TARGET_FILE, target).await?;
        let Made::New(vol) = t
            .mkdir(&dir, VOL_DIR.as_bytes(), 0o700, at(OP, &file(VOL_DIR)))
            .await?
        else {
            return Err(concurrent());
        };
        let inode = t.dir_stat(&vol, at(OP, &file(VOL_DIR))).await?.id;
        write(INODE_FILE, staging::encode_inode(inode)).await?;
        if copying {
            write(COPYING_FILE, String::new()).await?;
        }
        let published = staging_path(pv);
        match self.rename_staged(staging, &tmp, pv, at(OP, &published)).await? {
            // The handle still refers to the same directory, now published as `<pv>`.
            Renamed::Done => Ok((
                Loaded {
                    dir,
                    record: Record {
                        target: path.to_vec(),
                        inode: Some(inode),
                        placed: false,
                        placing: false,
                        copying,
                    },
                },
                vol,
            )),
            Renamed::Taken => Err(concurrent()),
            Renamed::SourceMissing => Err(vanished(OP, tmp_path)),
        }
    }

    /// Unpublishes `<pv>` (rename to `<pv>.tmp`) and removes it; also any leftover `<pv>.tmp`.
    async fn drop_record(&self, staging: &T::Dir, pv: &str) -> StorageResult<()> {
        const OP: &str = "remove staging record";
        let tmp = tmp_name(pv);
        self.remove_leftover(staging, &tmp).await?;
        let path = staging_path(pv);
        match self.rename_staged(staging, pv, &tmp, at(OP, &path)).await? {
            Renamed::Done => self.remove_leftover(staging, &tmp).await,
            Renamed::SourceMissing => Ok(()),
            Renamed::Taken => Err(Refusal::BadStagingRecord {
                op: OP,
                path,
                reason: "a concurrent attempt is building a record for this volume".to_owned(),
            }
            .into()),
        }
    }

    /// Renames `from` to `to` inside the staging area (a record published or unpublished).
    async fn rename_staged(
        &self,
        staging: &T::Dir,
        from: &str,
        to: &str,
        at: At<'_>,
    ) -> StorageResult<Renamed> {
        self.t
            .rename(Move::within(staging, from.as_bytes(), to.as_bytes()), at)
            .await
    }

    /// Removes an unpublished `<pv>.tmp` record (ours by name) and everything in it.
    async fn remove_leftover(&self, staging: &T::Dir, tmp: &str) -> StorageResult<()> {
        Walker::new(
            Arc::clone(&self.t),
            Remove,
            LEFTOVER_CONCURRENCY,
            "remove staging record",
        )
        .walk(staging, (), tmp, STAGING_DIR)
        .await
        .map(drop)
    }
}

impl<T: Transport> Backend for Volumes<T> {
    fn create_volume<'a>(
        &'a self,
        pv: &'a str,
        path: &'a [String],
        dir: DirMode,
        existing: Existing,
        fill: Option<&'a Fill<'a>>,
    ) -> OpFuture<'a, Created> {
        Box::pin(self.create(pv, path, dir, existing, fill))
    }

    fn finish_volume<'a>(&'a self, pv: &'a str) -> OpFuture<'a, ()> {
        Box::pin(self.finish(pv))
    }

    fn staged_volumes(&self) -> OpFuture<'_, Vec<String>> {
        Box::pin(self.staged())
    }

    fn staged_target<'a>(&'a self, pv: &'a str) -> OpFuture<'a, Option<Vec<String>>> {
        Box::pin(Volumes::staged_target(self, pv))
    }

    fn archive_volume<'a>(&'a self, path: &'a [String]) -> OpFuture<'a, Archived> {
        Box::pin(self.archive(path))
    }

    fn delete_volume<'a>(&'a self, path: &'a [String], concurrency: usize) -> OpFuture<'a, Removed> {
        Box::pin(self.delete(path, concurrency))
    }

    fn copy_volume_into<'a>(
        &'a self,
        path: &'a [String],
        sink: Arc<dyn Sink>,
        dest: SinkDir,
        concurrency: usize,
        progress: Arc<Progress>,
    ) -> OpFuture<'a, ()> {
        Box::pin(self.copy_into(path, sink, dest, concurrency, progress))
    }

    fn measure_volume<'a>(
        &'a self,
        path: &'a [String],
        concurrency: usize,
        pace: Pace,
    ) -> OpFuture<'a, Option<Usage>> {
        Box::pin(self.measure(path, concurrency, pace))
    }

    fn list_dir<'a>(&'a self, path: &'a [String], limit: usize) -> OpFuture<'a, Option<Listing>> {
        Box::pin(self.list(path, limit))
    }

    fn capacity(&self) -> OpFuture<'_, Capacity> {
        Box::pin(Volumes::capacity(self))
    }

    fn probe_writable<'a>(&'a self, tag: &'a str) -> OpFuture<'a, ()> {
        Box::pin(self.probe(tag))
    }

    fn clear_probes(&self) -> OpFuture<'_, u64> {
        Box::pin(Volumes::clear_probes(self))
    }
}

/// Crash injection over the mounted transport on a temporary directory; what holds for every
/// transport is in tests/conformance.rs.
#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::core::staging::{CLAIM_MODE, TMP_SUFFIX};
    use crate::storage::faults::Faulty;
    use crate::storage::posix::PosixTransport;

    const MODE: DirMode = DirMode {
        mode: 0o2770,
        uid: None,
        gid: None,
    };

    fn posix(root: &Path) -> PosixTransport {
        PosixTransport::new(root.to_path_buf(), 16)
    }

    fn p(path: &str) -> Vec<String> {
        path.split('/').map(str::to_owned).collect()
    }

    fn staging(root: &Path) -> PathBuf {
        root.join(STAGING_DIR)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// Hand-made staging record, as left behind by a crash.
    fn record(root: &Path, name: &str, target: &str, with_vol: bool) -> PathBuf {
        let dir = staging(root).join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(TARGET_FILE), format!("{target}\n")).unwrap();
        if with_vol {
            fs::create_dir(dir.join(VOL_DIR)).unwrap();
        }
        dir
    }

    /// How many primitives `op` calls when nothing fails.
    async fn primitives<F, Fut>(setup: impl Fn(&Path), op: F) -> usize
    where
        F: Fn(Volumes<Faulty<PosixTransport>>) -> Fut,
        Fut: Future<Output = usize>,
    {
        let tmp = tempfile::tempdir().unwrap();
        setup(tmp.path());
        op(Volumes::new(Faulty::crash_at(posix(tmp.path()), usize::MAX))).await
    }

    #[tokio::test]
    async fn a_crash_at_any_step_of_create_converges_on_retry_to_one_directory_and_no_leftovers() {
        let path = p("ns/a-vol");
        let steps = primitives(
            |_| {},
            |v| async move {
                v.create("pv-1", &p("ns/a-vol"), MODE, Existing::Refuse, None)
                    .await
                    .unwrap();
                v.transport().calls()
            },
        )
        .await;
        assert!(steps > 10, "{steps}");
        for crash in 0..steps {
            let tmp = tempfile::tempdir().unwrap();
            let crashed = Volumes::new(Faulty::crash_at(posix(tmp.path()), crash));
            assert!(
                crashed
                    .create("pv-1", &path, MODE, Existing::Refuse, None)
                    .await
                    .is_err(),
                "crash at {crash}"
            );
            let retry = Volumes::new(posix(tmp.path()));
            let created = retry.create("pv-1", &path, MODE, Existing::Refuse, None).await;
            assert!(
                matches!(created, Ok(Created::New | Created::Adopted)),
                "crash at {crash}: {created:?}"
            );
            let vol = tmp.path().join("ns/a-vol");
            assert!(fs::symlink_metadata(&vol).unwrap().is_dir(), "crash at {crash}");
            assert_eq!(mode_of(&vol), 0o2770, "crash at {crash}");
            assert_eq!(names(&tmp.path().join("ns")), ["a-vol"], "crash at {crash}");
            // A second retry (the PV not yet seen) adopts; finishing leaves the staging area empty.
            assert_eq!(
                retry
                    .create("pv-1", &path, MODE, Existing::Refuse, None)
                    .await
                    .unwrap(),
                Created::Adopted
            );
            retry.finish("pv-1").await.unwrap();
            assert!(names(&staging(tmp.path())).is_empty(), "crash at {crash}");
            assert_eq!(names(tmp.path()), [STAGING_DIR, "ns"], "crash at {crash}");
        }
    }

    /// `src`: files, a nested read-only directory, a symlink; what a clone copies.
    fn clone_source(root: &Path) {
        fs::create_dir_all(root.join("src/d/e")).unwrap();
        fs::write(root.join("src/a"), b"alpha").unwrap();
        fs::write(root.join("src/d/b"), vec![7u8; 3 * 1024 * 1024]).unwrap();
        fs::write(root.join("src/d/e/c"), b"gamma").unwrap();
        std::os::unix::fs::symlink("../a", root.join("src/d/link")).unwrap();
        fs::set_permissions(root.join("src/d"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    /// Every file of a tree with its content, and every symlink with its target.
    fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for name in names(dir) {
            let path = dir.join(&name);
            let md = fs::symlink_metadata(&path).unwrap();
            if md.is_dir() {
                out.extend(tree(&path).into_iter().map(|(n, c)| (format!("{name}/{n}"), c)));
                out.push((
                    format!("{name}/"),
                    format!("{:o}", md.mode() & 0o7777).into_bytes(),
                ));
            } else if md.is_symlink() {
                out.push((
                    name,
                    fs::read_link(&path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                ));
            } else {
                out.push((name, fs::read(&path).unwrap()));
            }
        }
        out
    }

    async fn clone_into<T: Transport>(
        dest: &Volumes<T>,
        source: &Volumes<PosixTransport>,
    ) -> StorageResult<Created> {
        let path = p("src");
        let fill = Fill {
            source,
            path: &path,
            concurrency: 4,
            progress: Arc::default(),
        };
        match dest
            .create("pv-1", &p("ns/clone"), MODE, Existing::Refuse, Some(&fill))
            .await?
        {
            Created::Staged => {
                dest.create("pv-1", &p("ns/clone"), MODE, Existing::Refuse, None)
                    .await
            }
            other => Ok(other),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_at_any_step_of_a_clone_converges_on_retry_to_a_whole_copy_and_no_leftovers() {
        let steps = {
            let tmp = tempfile::tempdir().unwrap();
            clone_source(tmp.path());
            let counted = Volumes::new(Faulty::crash_at(posix(tmp.path()), usize::MAX));
            clone_into(&counted, &Volumes::new(posix(tmp.path())))
                .await
                .unwrap();
            counted.transport().calls()
        };
        assert!(steps > 20, "{steps}");
        for crash in 0..steps {
            let tmp = tempfile::tempdir().unwrap();
            clone_source(tmp.path());
            let source = Volumes::new(posix(tmp.path()));
            let crashed = Volumes::new(Faulty::crash_at(posix(tmp.path()), crash));
            assert!(clone_into(&crashed, &source).await.is_err(), "crash at {crash}");
            assert!(
                !tmp.path().join("ns/clone").exists(),
                "crash at {crash}: placed before it was whole"
            );
            let retry = Volumes::new(posix(tmp.path()));
            let created = clone_into(&retry, &source).await;
            assert!(
                matches!(created, Ok(Created::New | Created::Adopted)),
                "crash at {crash}: {created:?}"
            );
            assert_eq!(
                tree(&tmp.path().join("src")),
                tree(&tmp.path().join("ns/clone")),
                "crash at {crash}"
            );
            assert_eq!(mode_of(&tmp.path().join("ns/clone")), 0o2770);
            retry.finish("pv-1").await.unwrap();
            assert!(names(&staging(tmp.path())).is_empty(), "crash at {crash}");
        }
    }

    #[tokio::test]
    async fn a_crash_at_any_step_of_archive_converges_on_retry_to_one_archive_with_the_data() {
        let setup = |root: &Path| {
            fs::create_dir_all(root.join("ns/vol/sub")).unwrap();
            fs::write(root.join("ns/vol/sub/data"), b"precious").unwrap();
            fs::create_dir_all(root.join("ns/archived-vol")).unwrap();
        };
        let steps = primitives(setup, |v| async move {
            v.archive(&p("ns/vol")).await.unwrap();
            v.transport().calls()
        })
        .await;
        for crash in 0..steps {
            let tmp = tempfile::tempdir().unwrap();
            setup(tmp.path());
            let crashed = Volumes::new(Faulty::crash_at(posix(tmp.path()), crash));
            assert!(crashed.archive(&p("ns/vol")).await.is_err(), "crash at {crash}");
            let retry = Volumes::new(posix(tmp.path()));
            let archived = retry.archive(&p("ns/vol")).await.unwrap();
            assert_eq!(
                archived,
                Archived::To("archived-vol-2".into()),
                "crash at {crash}"
            );
            assert_eq!(names(&tmp.path().join("ns")), ["archived-vol", "archived-vol-2"]);
            assert_eq!(
                fs::read(tmp.path().join("ns/archived-vol-2/sub/data")).unwrap(),
                b"precious"
            );
            assert_eq!(retry.archive(&p("ns/vol")).await.unwrap(), Archived::Missing);
        }
    }

    #[tokio::test]
    async fn a_crash_at_any_step_of_delete_converges_on_retry_and_never_touches_a_link_target() {
        let setup = |root: &Path| {
            fs::create_dir_all(root.join("outside")).unwrap();
            fs::write(root.join("outside/keep"), b"precious").unwrap();
            fs::create_dir_all(root.join("vol/a/b")).unwrap();
            fs::write(root.join("vol/a/b/f"), b"x").unwrap();
            fs::write(root.join("vol/g"), b"x").unwrap();
            std::os::unix::fs::symlink(root.join("outside"), root.join("vol/a/link")).unwrap();
        };
        let steps = primitives(setup, |v| async move {
            v.delete(&p("vol"), 1).await.unwrap();
            v.transport().calls()
        })
        .await;
        for crash in 0..steps {
            let tmp = tempfile::tempdir().unwrap();
            setup(tmp.path());
            let crashed = Volumes::new(Faulty::crash_at(posix(tmp.path()), crash));
            assert!(crashed.delete(&p("vol"), 1).await.is_err(), "crash at {crash}");
            let retry = Volumes::new(posix(tmp.path()));
            assert!(
                matches!(retry.delete(&p("vol"), 4).await.unwrap(), Removed::Removed { .. }),
                "crash at {crash}"
            );
            assert!(!tmp.path().join("vol").exists());
            assert_eq!(fs::read(tmp.path().join("outside/keep")).unwrap(), b"precious");
        }
    }

    #[tokio::test]
    async fn a_leftover_tmp_record_is_removed_and_never_published() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::new(posix(tmp.path()));
        record(tmp.path(), &format!("pv-1{TMP_SUFFIX}"), "elsewhere", true);
        assert_eq!(
            v.create("pv-1", &p("vol"), MODE, Existing::Refuse, None)
                .await
                .unwrap(),
            Created::New
        );
        assert_eq!(v.staged_target("pv-1").await.unwrap(), Some(p("vol")));
        assert!(!tmp.path().join("elsewhere").exists());
        assert_eq!(names(&staging(tmp.path())), ["pv-1"]);
    }

    #[tokio::test]
    async fn a_record_whose_volume_was_not_placed_continues_and_places_it() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::new(posix(tmp.path()));
        let rec = record(tmp.path(), "pv-1", "ns/vol", true);
        fs::write(rec.join("vol/kept"), b"from the first attempt").unwrap();
        assert_eq!(
            v.create("pv-1", &p("ns/vol"), MODE, Existing::Refuse, None)
                .await
                .unwrap(),
            Created::New
        );
        assert!(tmp.path().join("ns/vol/kept").exists());
        assert_eq!(mode_of(&tmp.path().join("ns/vol")), 0o2770);
    }

    #[tokio::test]
    async fn a_placed_record_adopts_only_the_directory_with_its_inode_and_starts_over_if_it_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::new(posix(tmp.path()));
        fs::create_dir(tmp.path().join("vol")).unwrap();
        let ino = fs::metadata(tmp.path().join("vol")).unwrap().ino();
        let rec = record(tmp.path(), "pv-1", "vol", false);
        fs::write(rec.join(INODE_FILE), format!("{}\n", ino + 1)).unwrap();
        assert!(
            v.create("pv-1", &p("vol"), MODE, Existing::Refuse, None)
                .await
                .unwrap_err()
                .is_taken()
        );
        fs::write(rec.join(INODE_FILE), format!("{ino}\n")).unwrap();
        assert_eq!(
            v.create("pv-1", &p("vol"), MODE, Existing::Refuse, None)
                .await
                .unwrap(),
            Created::Adopted
        );
        fs::remove_dir(tmp.path().join("vol")).unwrap();
        assert_eq!(
            v.create("pv-1", &p("vol"), MODE, Existing::Refuse, None)
                .await
                .unwrap(),
            Created::New
        );
        assert_eq!(mode_of(&tmp.path().join("vol")), 0o2770);
    }

    #[tokio::test]
    async fn a_record_for_another_path_is_refused_and_nothing_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::new(posix(tmp.path()));
        record(tmp.path(), "pv-1", "other", true);
        let err = v
            .create("pv-1", &p("new/vol"), MODE, Existing::Refuse, None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "create directory new/vol for volume pv-1: an earlier attempt of this volume staged it for other"
        );
        assert_eq!(names(tmp.path()), [STAGING_DIR]);
    }

    #[tokio::test]
    async fn a_claim_left_by_an_interrupted_placement_is_reused_only_with_the_placing_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::new(posix(tmp.path()));
        let claim = tmp.path().join("vol");
        fs::create_dir(&claim).unwrap();
        fs::set_permissions(&claim, fs::Permissions::from_mode(CLAIM_MODE)).unwrap();
        let rec = record(tmp.path(), "pv-1", "vol", true);
        assert!(
            v.create("pv-1", &p("vol"), MODE, Existing::Refuse, None)
                .await
                .unwrap_err()
                .is_taken()
        );
        fs::write(rec.join(PLACING_FILE), b"").unwrap();
        assert_eq!(
            v.create("pv-1", &p("vol"), MODE, Existing::Refuse, None)
                .await
                .unwrap(),
            Created::New
        );
        assert_eq!(mode_of(&claim), 0o2770);
    }

    #[tokio::test]
    async fn finish_removes_the_record_and_leftovers_and_staged_lists_each_volume_once() {
        let tmp = tempfile::tempdir().unwrap();
        let v = Volumes::new(posix(tmp.path()));
        record(tmp.path(), "pv-1", "a", true);
        record(tmp.path(), "pv-1.tmp", "a", true);
        record(tmp.path(), "pv-2.tmp", "b", false);
        fs::create_dir(staging(tmp.path()).join(".probe-1-1")).unwrap();
        assert_eq!(v.staged().await.unwrap(), ["pv-1", "pv-2"]);
        v.finish("pv-1").await.unwrap();
        v.finish("pv-2").await.unwrap();
        v.finish("pv-2").await.unwrap();
        assert_eq!(names(&staging(tmp.path())), [".probe-1-1"]);
        assert!(v.staged().await.unwrap().is_empty());
    }
}
