//! Indexes of the cached objects, so that a reconcile looks at the few objects that concern it
//! instead of every cached one: the directories of PVs by NFS server and path (the overlap check),
//! the directories being provisioned, the PVs that may be pre-bound to a claim, the clones waiting
//! for a source claim, and the exports the StorageClasses serve. Each is kept by the watch that
//! feeds the cache of its objects ([`Index`]) and answers what a scan of that cache answered, so
//! the decisions are unchanged: the tests hold each index to the scan it replaced.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::ops::Bound;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use super::clone;
use super::export::{Access, Export};
use super::naming::{VolumePath, server_path};
use super::params::{class_export, gather_exports};
use super::volume::directory_at;

/// An index of the objects of one kind, changed object by object as their cache is.
pub trait Index<K> {
    /// An empty index with the same settings: what a relist fills.
    fn empty(&self) -> Self;
    /// `object` is new or changed.
    fn apply(&mut self, object: &K);
    /// `object` is gone.
    fn delete(&mut self, object: &K);
}

/// Names at '/'-separated paths, per scope, answering which paths are equal to, inside or around
/// a given one in O(depth · log N + answers): in string order the paths inside `p` (those that
/// start with `p/`) are one range, and the paths around it are the prefixes of `p` that end just
/// before one of its '/' (taken with that '/' too, as a PV's path may end with one).
#[derive(Debug, Clone)]
pub struct PathIndex<S, V> {
    /// Where each name is, so that a change or a removal finds its old place.
    places: HashMap<Arc<str>, (S, Arc<str>)>,
    /// Per scope, the names (with their values) at each path, in the paths' string order.
    trees: HashMap<S, Tree<V>>,
}

/// The names (with their values) at each path of one scope.
type Tree<V> = BTreeMap<Arc<str>, Vec<(Arc<str>, V)>>;

impl<S, V> Default for PathIndex<S, V> {
    fn default() -> Self {
        PathIndex {
            places: HashMap::new(),
            trees: HashMap::new(),
        }
    }
}

impl<S: Hash + Eq + Clone, V> PathIndex<S, V> {
    /// Puts `name` at `path` in `scope`, moving it from wherever it was.
    pub fn insert(&mut self, name: &str, scope: S, path: &str, value: V) {
        self.remove(name);
        // Names of one scope, or at one path, share its string: PVs are many, servers few.
        let scope = match self.trees.get_key_value(&scope) {
            Some((known, _)) => known.clone(),
            None => scope,
        };
        let tree = self.trees.entry(scope.clone()).or_default();
        let path = match tree.get_key_value(path) {
            Some((known, _)) => Arc::clone(known),
            None => Arc::from(path),
        };
        let name: Arc<str> = Arc::from(name);
        // Nearly always the only name at its path: room for one, not the four of a first push.
        tree.entry(Arc::clone(&path))
            .or_insert_with(|| Vec::with_capacity(1))
            .push((Arc::clone(&name), value));
        self.places.insert(name, (scope, path));
    }

    /// Takes `name` out; its value, if it was in.
    pub fn remove(&mut self, name: &str) -> Option<V> {
        let (scope, path) = self.places.remove(name)?;
        let tree = self.trees.get_mut(&scope)?;
        let names = tree.get_mut(&path)?;
        let at = names.iter().position(|(n, _)| &**n == name)?;
        let (_, value) = names.swap_remove(at);
        if names.is_empty() {
            tree.remove(&path);
            if tree.is_empty() {
                self.trees.remove(&scope);
            }
        }
        Some(value)
    }

    /// Every name in `scope` at `path` (given without a trailing '/'), inside it (at a path that
    /// starts with `path/`) or around it (at a prefix of `path` that ends before one of its '/',
    /// or at that prefix and the '/'): name, its path, its value.
    pub fn overlapping<Q>(&self, scope: &Q, path: &str) -> Vec<(&str, &str, &V)>
    where
        S: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(tree) = self.trees.get(scope) else {
            return Vec::new();
        };
        let mut at: Vec<&str> = path
            .match_indices('/')
            .flat_map(|(i, _)| [&path[..i], &path[..=i]])
            .collect();
        at.push(path);
        // "a/" (a prefix with its '/') and "a/" (the prefix before the '/' of "a//"): once.
        at.dedup();
        let inside = format!("{path}/");
        let within = tree
            .range::<str, _>((Bound::Included(inside.as_str()), Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(&inside));
        at.into_iter()
            .filter_map(|p| tree.get_key_value(p))
            .chain(within)
            .flat_map(|(p, names)| names.iter().map(move |(n, v)| (&**n, &**p, v)))
            .collect()
    }

    /// How many names are in.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

/// Members grouped by a key, as the PVs naming one claim.
#[derive(Debug, Clone)]
struct Groups<M, K> {
    key_of: HashMap<M, K>,
    members: HashMap<K, Vec<M>>,
}

impl<M, K> Default for Groups<M, K> {
    fn default() -> Self {
        Groups {
            key_of: HashMap::new(),
            members: HashMap::new(),
        }
    }
}

impl<M: Hash + Eq + Clone, K: Hash + Eq + Clone> Groups<M, K> {
    fn insert(&mut self, member: M, key: K) {
        self.remove(&member);
        self.members.entry(key.clone()).or_default().push(member.clone());
        self.key_of.insert(member, key);
    }

    fn remove(&mut self, member: &M) {
        let Some(key) = self.key_of.remove(member) else {
            return;
        };
        if let Some(members) = self.members.get_mut(&key) {
            members.retain(|m| m != member);
            if members.is_empty() {
                self.members.remove(&key);
            }
        }
    }

    fn get(&self, key: &K) -> &[M] {
        self.members.get(key).map_or(&[], Vec::as_slice)
    }
}

/// A claim's namespace and name, as a claimRef or a data source names it.
type ClaimKey = (Option<String>, Option<String>);

/// The PersistentVolumes, by where their directory is and by the claim their claimRef names.
#[derive(Debug, Clone, Default)]
pub struct VolumeIndex {
    /// PV names by NFS server and `spec.nfs.path`, as written.
    directories: PathIndex<Arc<str>, ()>,
    /// PV names by the claim their claimRef names, but for PVs made for that very claim (named
    /// `pvc-<its uid>` and naming that uid): those are never pre-bound to another claim
    /// ([`super::claim::pre_bound_volume`]), and they are nearly all PVs.
    naming_claims: Groups<String, ClaimKey>,
}

impl VolumeIndex {
    /// The directories of PVs in `export` equal to, inside or around `path`, by PV name: what the
    /// scan of every PV ([`super::volume::directory_in_export`]) found overlapping `path`.
    pub fn overlapping(&self, export: &Export, path: &VolumePath) -> Vec<(&str, VolumePath)> {
        let on_server = server_path(&export.path, path);
        self.directories
            .overlapping(export.server.as_str(), &on_server)
            .into_iter()
            // The index finds the candidates; the scan's own test tells which are in the export.
            .filter_map(|(name, nfs_path, ())| Some((name, directory_at(&export.server, nfs_path, export)?)))
            .collect()
    }

    /// The PVs that may be pre-bound to the claim `namespace`/`name`: every PV whose claimRef
    /// names it, except those made for the claim they name.
    pub fn naming_claim(&self, namespace: Option<&str>, name: Option<&str>) -> &[String] {
        self.naming_claims
            .get(&(namespace.map(str::to_owned), name.map(str::to_owned)))
    }

    /// How many PVs have a directory in the index.
    pub fn directories(&self) -> usize {
        self.directories.len()
    }
}

/// The claim `pv`'s claimRef names, unless `pv` was made for it.
fn named_claim(pv: &PersistentVolume) -> Option<ClaimKey> {
    let claim_ref = pv.spec.as_ref()?.claim_ref.as_ref()?;
    let made_for_it = claim_ref
        .uid
        .as_deref()
        .filter(|uid| !uid.is_empty())
        .is_some_and(|uid| pv.metadata.name.as_deref().and_then(|n| n.strip_prefix("pvc-")) == Some(uid));
    (!made_for_it).then(|| (claim_ref.namespace.clone(), claim_ref.name.clone()))
}

impl Index<PersistentVolume> for VolumeIndex {
    fn empty(&self) -> Self {
        VolumeIndex::default()
    }

    fn apply(&mut self, pv: &PersistentVolume) {
        let Some(name) = pv.metadata.name.as_deref() else {
            return;
        };
        match pv.spec.as_ref().and_then(|s| s.nfs.as_ref()) {
            Some(nfs) => self
                .directories
                .insert(name, Arc::from(nfs.server.as_str()), &nfs.path, ()),
            None => {
                self.directories.remove(name);
            }
        }
        match named_claim(pv) {
            Some(claim) => self.naming_claims.insert(name.to_owned(), claim),
            None => self.naming_claims.remove(&name.to_owned()),
        }
    }

    fn delete(&mut self, pv: &PersistentVolume) {
        let Some(name) = pv.metadata.name.as_deref() else {
            return;
        };
        self.directories.remove(name);
        self.naming_claims.remove(&name.to_owned());
    }
}

/// Directories being provisioned whose PV is not cached yet, by PV name, so that two claims
/// racing for overlapping directories cannot both pass the overlap check.
#[derive(Debug, Clone, Default)]
pub struct Reservations(PathIndex<Export, VolumePath>);

impl Reservations {
    pub fn reserve(&mut self, pv: &str, export: &Export, path: &VolumePath) {
        self.0.insert(pv, export.clone(), &path.to_string(), path.clone());
    }

    pub fn release(&mut self, pv: &str) {
        self.0.remove(pv);
    }

    /// The reserved directories in `export` equal to, inside or around `path`, by PV name.
    pub fn overlapping(&self, export: &Export, path: &VolumePath) -> Vec<(&str, &VolumePath)> {
        // The components of a VolumePath hold no '/': the string's prefixes are the path's.
        self.0
            .overlapping(export, &path.to_string())
            .into_iter()
            .map(|(name, _, path)| (name, path))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The claims that ask for a copy of another claim (clones), by the claim they copy.
#[derive(Debug, Clone, Default)]
pub struct CloneIndex {
    /// Clones (namespace, name) by source (namespace, name).
    by_source: Groups<ClaimKey, ClaimKey>,
}

impl CloneIndex {
    /// Every cached claim asking for a copy of `source`, as (namespace, name): the candidates of
    /// [`clone::clones_pending`].
    pub fn clones_of(&self, source: &PersistentVolumeClaim) -> &[(Option<String>, Option<String>)] {
        self.by_source.get(&key(source))
    }
}

fn key(claim: &PersistentVolumeClaim) -> ClaimKey {
    (claim.metadata.namespace.clone(), claim.metadata.name.clone())
}

impl Index<PersistentVolumeClaim> for CloneIndex {
    fn empty(&self) -> Self {
        CloneIndex::default()
    }

    fn apply(&mut self, claim: &PersistentVolumeClaim) {
        match clone::requested(claim) {
            Ok(Some(source)) => self
                .by_source
                .insert(key(claim), (claim.metadata.namespace.clone(), Some(source))),
            Ok(None) | Err(_) => self.by_source.remove(&key(claim)),
        }
    }

    fn delete(&mut self, claim: &PersistentVolumeClaim) {
        self.by_source.remove(&key(claim));
    }
}

/// The exports this provisioner serves ([`super::params::served_exports`]), worked out when a
/// StorageClass changes rather than at each use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Served {
    /// Each export and how it is reached; the mounted one first.
    pub reached: Vec<(Export, Access)>,
    /// The same exports (one for each of `reached`).
    pub exports: Vec<Export>,
}

/// The StorageClasses, as the exports they serve.
#[derive(Debug, Clone)]
pub struct ClassExports {
    provisioner: String,
    mounted: Option<Export>,
    /// The export each class of ours names, by class name (classes naming none are left out).
    by_class: BTreeMap<String, (Export, Access)>,
    served: Arc<Served>,
}

impl ClassExports {
    /// No classes yet: `mounted` alone is served.
    pub fn new(provisioner: &str, mounted: Option<&Export>) -> Self {
        let mut classes = ClassExports {
            provisioner: provisioner.to_owned(),
            mounted: mounted.cloned(),
            by_class: BTreeMap::new(),
            served: Arc::default(),
        };
        classes.update();
        classes
    }

    /// What is served now; cheap (shared, not copied).
    pub fn served(&self) -> Arc<Served> {
        Arc::clone(&self.served)
    }

    fn update(&mut self) {
        let reached = gather_exports(self.mounted.as_ref(), self.by_class.values().cloned());
        let exports = reached.iter().map(|(export, _)| export.clone()).collect();
        self.served = Arc::new(Served { reached, exports });
    }
}

impl Index<StorageClass> for ClassExports {
    fn empty(&self) -> Self {
        ClassExports::new(&self.provisioner, self.mounted.as_ref())
    }

    fn apply(&mut self, class: &StorageClass) {
        let name = class.metadata.name.clone().unwrap_or_default();
        match class_export(class, &self.provisioner, self.mounted.as_ref()) {
            Some(export) => self.by_class.insert(name, export),
            None => self.by_class.remove(&name),
        };
        self.update();
    }

    fn delete(&mut self, class: &StorageClass) {
        let name = class.metadata.name.clone().unwrap_or_default();
        if self.by_class.remove(&name).is_some() {
            self.update();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::claim::pre_bound_volume;
    use crate::core::params::served_exports;
    use crate::core::volume::directory_in_export;
    use k8s_openapi::api::core::v1::{
        NFSVolumeSource, ObjectReference, PersistentVolumeClaimSpec, PersistentVolumeSpec,
        TypedLocalObjectReference, TypedObjectReference,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const ME: &str = "example.com/nfs";

    pub fn export(server: &str, path: &str) -> Export {
        Export {
            server: server.into(),
            path: path.into(),
        }
    }

    pub fn path(p: &str) -> VolumePath {
        VolumePath::parse(p).unwrap()
    }

    pub fn nfs_pv(name: &str, server: &str, path: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                nfs: Some(NFSVolumeSource {
                    server: server.into(),
                    path: path.into(),
                    read_only: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The overlap check's scan before the index (the old `Ctx::live_directories`, then the
    /// overlap test of `find_overlap`): every PV's directory in `export`, and every reservation
    /// in it, that overlaps `candidate`.
    pub fn scanned<'a>(
        pvs: impl IntoIterator<Item = &'a PersistentVolume>,
        reservations: &HashMap<String, (Export, VolumePath)>,
        export: &Export,
        candidate: &VolumePath,
    ) -> BTreeSet<(String, VolumePath)> {
        let mut live: Vec<(String, VolumePath)> = pvs
            .into_iter()
            .filter_map(|pv| Some((pv.metadata.name.clone()?, directory_in_export(pv, export)?)))
            .collect();
        live.extend(
            reservations
                .iter()
                .filter(|(_, (e, _))| e == export)
                .map(|(k, (_, v))| (k.clone(), v.clone())),
        );
        live.into_iter().filter(|(_, p)| candidate.overlaps(p)).collect()
    }

    /// What the indexes answer for the same question.
    pub fn indexed(
        volumes: &VolumeIndex,
        reservations: &Reservations,
        export: &Export,
        candidate: &VolumePath,
    ) -> BTreeSet<(String, VolumePath)> {
        let found = volumes.overlapping(export, candidate);
        let reserved = reservations.overlapping(export, candidate);
        found
            .into_iter()
            .chain(reserved.into_iter().map(|(n, p)| (n, p.clone())))
            .map(|(n, p)| (n.to_owned(), p))
            .collect()
    }

    fn names(found: &[(&str, &str, &())]) -> BTreeSet<String> {
        found.iter().map(|(n, _, _)| (*n).to_owned()).collect()
    }

    #[test]
    fn a_path_finds_itself_what_is_inside_and_what_is_around_not_its_neighbours() {
        let mut index = PathIndex::<&str, ()>::default();
        for (name, p) in [
            ("equal", "/x/a/b"),
            ("inside", "/x/a/b/c"),
            ("deep-inside", "/x/a/b/c/d"),
            ("around", "/x/a"),
            ("around-with-slash", "/x/"),
            ("sibling", "/x/a/bc"),
            ("sibling-dash", "/x/a/b-c"),
            ("sibling-dot", "/x/a/b.c"),
            ("prefix-not-component", "/x/a/"),
            ("elsewhere", "/y/a/b"),
        ] {
            index.insert(name, "s1", p, ());
        }
        index.insert("other-server", "s2", "/x/a/b", ());
        let found = index.overlapping("s1", "/x/a/b");
        assert_eq!(
            names(&found),
            BTreeSet::from(
                [
                    "equal",
                    "inside",
                    "deep-inside",
                    "around",
                    "around-with-slash",
                    "prefix-not-component"
                ]
                .map(str::to_owned)
            )
        );
        assert!(index.overlapping("s3", "/x").is_empty(), "an unknown scope");
    }

    #[test]
    fn a_moved_or_removed_name_leaves_nothing_behind() {
        let mut index = PathIndex::<String, u8>::default();
        index.insert("a", "s1".into(), "/x/a", 1);
        index.insert("b", "s1".into(), "/x/a", 2);
        index.insert("a", "s2".into(), "/x/b", 3);
        assert_eq!(index.len(), 2);
        let at = |index: &PathIndex<String, u8>, scope: &str, p: &str| -> Vec<(String, u8)> {
            let mut found: Vec<_> = index
                .overlapping(scope, p)
                .into_iter()
                .map(|(n, _, v)| (n.to_owned(), *v))
                .collect();
            found.sort();
            found
        };
        assert_eq!(at(&index, "s1", "/x/a"), [("b".to_owned(), 2)]);
        assert_eq!(at(&index, "s2", "/x"), [("a".to_owned(), 3)]);
        assert_eq!(index.remove("b"), Some(2));
        assert_eq!(index.remove("b"), None);
        assert_eq!(index.remove("a"), Some(3));
        assert!(index.is_empty());
        assert!(index.trees.is_empty(), "empty scopes and paths are dropped");
    }

    #[test]
    fn volumes_in_an_export_are_found_as_the_scan_found_them() {
        let mut volumes = VolumeIndex::default();
        let pvs = [
            nfs_pv("pvc-1", "s1", "/export/team/data"),
            nfs_pv("pvc-2", "s1", "/export/team/"),
            nfs_pv("pvc-3", "s1", "/export/team-data"),
            nfs_pv("pvc-4", "s1", "/export"),
            nfs_pv("pvc-5", "s1", "/export/team/../team"),
            nfs_pv("pvc-6", "s2", "/export/team"),
            nfs_pv("pvc-7", "s1", "/export/team/data/deep"),
            nfs_pv("pvc-8", "s1", "/other/team"),
        ];
        for pv in &pvs {
            volumes.apply(pv);
        }
        let e = export("s1", "/export");
        let found = indexed(&volumes, &Reservations::default(), &e, &path("team/data"));
        assert_eq!(
            found,
            BTreeSet::from([
                ("pvc-1".to_owned(), path("team/data")),
                ("pvc-2".to_owned(), path("team")),
                ("pvc-7".to_owned(), path("team/data/deep")),
            ])
        );
        assert_eq!(found, scanned(&pvs, &HashMap::new(), &e, &path("team/data")));
        // An export at the root, and one nested in another: the same PVs seen from each.
        for e in [export("s1", "/"), export("s1", "/export/team")] {
            for candidate in ["export", "export/team", "data", "data/deep", "x"] {
                let candidate = path(candidate);
                assert_eq!(
                    indexed(&volumes, &Reservations::default(), &e, &candidate),
                    scanned(&pvs, &HashMap::new(), &e, &candidate),
                    "{e} {candidate}"
                );
            }
        }
        volumes.delete(&pvs[0]);
        volumes.apply(&PersistentVolume {
            spec: None,
            ..pvs[1].clone()
        });
        assert_eq!(
            indexed(&volumes, &Reservations::default(), &e, &path("team/data")),
            BTreeSet::from([("pvc-7".to_owned(), path("team/data/deep"))])
        );
        assert_eq!(volumes.directories(), pvs.len() - 2);
    }

    #[test]
    fn reservations_are_found_in_their_own_export_only() {
        let mut reservations = Reservations::default();
        let e = export("s1", "/export");
        reservations.reserve("pvc-1", &e, &path("team"));
        reservations.reserve("pvc-2", &export("s1", "/export/team"), &path("data"));
        reservations.reserve("pvc-3", &e, &path("team-data"));
        let found = reservations.overlapping(&e, &path("team/data"));
        assert_eq!(found, [("pvc-1", &path("team"))]);
        reservations.release("pvc-1");
        assert!(reservations.overlapping(&e, &path("team/data")).is_empty());
        assert_eq!(reservations.len(), 2);
    }

    fn claim_ref(namespace: &str, name: &str, uid: Option<&str>) -> ObjectReference {
        ObjectReference {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: uid.map(str::to_owned),
            ..Default::default()
        }
    }

    fn bound_pv(name: &str, to: Option<ObjectReference>) -> PersistentVolume {
        let mut pv = nfs_pv(name, "s1", &format!("/export/{name}"));
        pv.spec.as_mut().unwrap().claim_ref = to;
        pv
    }

    #[test]
    fn pvs_made_for_their_claim_are_never_candidates_for_pre_binding() {
        let mut volumes = VolumeIndex::default();
        volumes.apply(&bound_pv("pvc-u1", Some(claim_ref("team", "data", Some("u1")))));
        volumes.apply(&bound_pv("admins-pv", Some(claim_ref("team", "data", None))));
        volumes.apply(&bound_pv("pvc-u2", Some(claim_ref("team", "data", Some("u1")))));
        volumes.apply(&bound_pv("pvc-u3", Some(claim_ref("team", "data", Some("")))));
        let mut found = volumes.naming_claim(Some("team"), Some("data")).to_vec();
        found.sort();
        assert_eq!(found, ["admins-pv", "pvc-u2", "pvc-u3"]);
        volumes.apply(&bound_pv("admins-pv", None));
        volumes.delete(&bound_pv("pvc-u2", None));
        assert_eq!(volumes.naming_claim(Some("team"), Some("data")), ["pvc-u3"]);
        assert!(volumes.naming_claim(Some("other"), Some("data")).is_empty());
    }

    fn claim(namespace: &str, name: &str, source: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                data_source: source.map(|s| TypedLocalObjectReference {
                    kind: "PersistentVolumeClaim".into(),
                    name: s.into(),
                    api_group: None,
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn clones_are_found_by_the_claim_they_copy() {
        let mut clones = CloneIndex::default();
        clones.apply(&claim("a", "copy-1", Some("src")));
        clones.apply(&claim("a", "copy-2", Some("src")));
        clones.apply(&claim("b", "copy-3", Some("src")));
        clones.apply(&claim("a", "plain", None));
        let of = |clones: &CloneIndex, namespace: &str| -> Vec<String> {
            let mut found: Vec<String> = clones
                .clones_of(&claim(namespace, "src", None))
                .iter()
                .filter_map(|(_, n)| n.clone())
                .collect();
            found.sort();
            found
        };
        assert_eq!(of(&clones, "a"), ["copy-1", "copy-2"]);
        assert_eq!(of(&clones, "b"), ["copy-3"]);
        clones.apply(&claim("a", "copy-1", Some("other")));
        clones.delete(&claim("a", "copy-2", None));
        assert!(of(&clones, "a").is_empty());
    }

    fn class(name: &str, provisioner: &str, params: &[(&str, &str)], options: &[&str]) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            provisioner: provisioner.into(),
            parameters: Some(params.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
            mount_options: Some(options.iter().map(|o| (*o).to_owned()).collect()),
            ..Default::default()
        }
    }

    /// The same exports, each once, the mounted one first.
    fn same_served(view: &Served, scanned: &[(Export, Access)]) -> bool {
        view.reached.len() == scanned.len()
            && view.reached.iter().all(|e| scanned.contains(e))
            && view.reached.first() == scanned.first()
            && view.exports == view.reached.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>()
    }

    #[test]
    fn served_exports_change_with_the_classes() {
        let mounted = export("s0", "/export");
        let mut classes = ClassExports::new(ME, Some(&mounted));
        assert_eq!(classes.served().reached, [(mounted.clone(), Access::Mounted)]);
        let direct = class("direct", ME, &[("server", "s1"), ("share", "/srv")], &[]);
        classes.apply(&direct);
        let served = classes.served();
        assert_eq!(served.exports, [mounted.clone(), export("s1", "/srv")]);
        classes.apply(&class(
            "broken",
            ME,
            &[("server", "s2"), ("share", "/srv")],
            &["nfsvers=4.0"],
        ));
        classes.apply(&class(
            "theirs",
            "other",
            &[("server", "s3"), ("share", "/srv")],
            &[],
        ));
        assert_eq!(classes.served(), served, "classes naming nothing serve nothing");
        classes.delete(&direct);
        assert_eq!(classes.served().exports, std::slice::from_ref(&mounted));
        assert_eq!(served.exports.len(), 2, "a reader's view stays as it was");
    }

    /// What a watch does to a cache, for the property tests: the index is held to a scan of the
    /// objects the cache would hold.
    #[derive(Debug, Clone)]
    enum Op<K> {
        Apply(K),
        Delete(String),
        /// A relist: these, and only these, from now on.
        Relist(Vec<K>),
    }

    fn ops<K: std::fmt::Debug + Clone + 'static>(
        object: impl Strategy<Value = K> + 'static,
    ) -> impl Strategy<Value = Vec<Op<K>>> {
        let object = object.boxed();
        prop::collection::vec(
            prop_oneof![
                6 => object.clone().prop_map(Op::Apply),
                2 => (0..8usize).prop_map(|i| Op::Delete(format!("{i}"))),
                1 => prop::collection::vec(object, 0..10).prop_map(Op::Relist),
            ],
            1..40,
        )
    }

    /// The cache as a map by name, and the index, after `op`.
    fn step<K: Clone, I: Index<K>>(
        cache: &mut BTreeMap<String, K>,
        index: &mut I,
        op: &Op<K>,
        name: impl Fn(&K) -> String,
    ) {
        match op {
            Op::Apply(object) => {
                cache.insert(name(object), object.clone());
                index.apply(object);
            }
            Op::Delete(n) => {
                if let Some(object) = cache.remove(n) {
                    index.delete(&object);
                }
            }
            Op::Relist(objects) => {
                cache.clear();
                let mut fresh = index.empty();
                for object in objects {
                    cache.insert(name(object), object.clone());
                    fresh.apply(object);
                }
                *index = fresh;
            }
        }
    }

    pub const EXPORTS: [(&str, &str); 5] = [
        ("s1", "/"),
        ("s1", "/export"),
        ("s1", "/export/k8s"),
        ("s1", "/exp"),
        ("s2", "/export"),
    ];

    /// Components that nest in and sit around each other, and some that are never a directory.
    fn component() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "ab", "a-b", "a.b", "k8s", "export", "..", ".", ""])
            .prop_map(str::to_owned)
    }

    pub fn candidate() -> impl Strategy<Value = VolumePath> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "ab", "a-b", "k8s", "export"]),
            1..4,
        )
        .prop_map(|c| VolumePath::from_components(c.into_iter().map(str::to_owned).collect()).unwrap())
    }

    /// A PV whose path may be in, around or beside any of [`EXPORTS`], or no directory at all.
    pub fn pv() -> impl Strategy<Value = PersistentVolume> {
        (
            0..8usize,
            prop::sample::select(vec!["s1", "s2"]),
            prop::sample::select(vec!["", "/export", "/export/k8s", "/exp", "/export-x", "export"]),
            prop::collection::vec(component(), 0..4),
            any::<bool>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(i, server, base, components, slash, not_nfs)| {
                let mut path = format!("{base}/{}", components.join("/"));
                if slash {
                    path.push('/');
                }
                let mut pv = nfs_pv(&format!("{i}"), server, &path);
                if not_nfs {
                    pv.spec.as_mut().unwrap().nfs = None;
                }
                pv
            })
    }

    #[derive(Debug, Clone)]
    enum Reservation {
        Reserve(usize, usize, VolumePath),
        Release(usize),
    }

    fn reservations() -> impl Strategy<Value = Vec<Reservation>> {
        prop::collection::vec(
            prop_oneof![
                (0..4usize, 0..EXPORTS.len(), candidate())
                    .prop_map(|(i, e, p)| Reservation::Reserve(i, e, p)),
                (0..4usize).prop_map(Reservation::Release),
            ],
            0..40,
        )
    }

    proptest! {
        /// Whatever the PVs (nested in and around each other, in exports nested in each other,
        /// changed, deleted, relisted) and the reservations: the index answers the overlap check
        /// exactly what the scan of every PV and every reservation answered.
        #[test]
        fn the_overlap_index_answers_what_the_scan_answered(
            ops in ops(pv()),
            reserved in reservations(),
            candidates in prop::collection::vec(candidate(), 1..6),
        ) {
            let mut cache = BTreeMap::new();
            let mut index = VolumeIndex::default();
            let mut oracle_reservations = HashMap::new();
            let mut index_reservations = Reservations::default();
            let mut reserved = reserved.into_iter();
            for op in &ops {
                step(&mut cache, &mut index, op, |pv| pv.metadata.name.clone().unwrap());
                match reserved.next() {
                    Some(Reservation::Reserve(i, e, p)) => {
                        let e = export(EXPORTS[e].0, EXPORTS[e].1);
                        index_reservations.reserve(&format!("r{i}"), &e, &p);
                        oracle_reservations.insert(format!("r{i}"), (e, p));
                    }
                    Some(Reservation::Release(i)) => {
                        index_reservations.release(&format!("r{i}"));
                        oracle_reservations.remove(&format!("r{i}"));
                    }
                    None => {}
                }
                for (server, p) in EXPORTS {
                    let e = export(server, p);
                    for candidate in &candidates {
                        prop_assert_eq!(
                            indexed(&index, &index_reservations, &e, candidate),
                            scanned(cache.values(), &oracle_reservations, &e, candidate),
                            "{} {}", e, candidate
                        );
                    }
                }
            }
        }

        /// The PVs that may be pre-bound to a claim, from the index, are exactly those the scan
        /// of every PV found pre-bound to it (but its own PV, which a claim to provision has not).
        #[test]
        fn the_pre_bound_index_finds_what_the_scan_found(
            ops in ops((
                prop::sample::select(vec!["pvc-u1", "pvc-u2", "admins-pv", "0", "1"]),
                prop::option::of((
                    prop::sample::select(vec!["team", "other"]),
                    prop::sample::select(vec!["data", "logs"]),
                    prop::option::of(prop::sample::select(vec!["", "u1", "u2"])),
                )),
                prop::bool::weighted(0.2),
            ).prop_map(|(name, to, deleting)| {
                let mut pv = bound_pv(name, to.map(|(ns, n, uid)| claim_ref(ns, n, uid)));
                if deleting {
                    pv.metadata.deletion_timestamp = Some(Time(Default::default()));
                }
                pv
            })),
            claims in prop::collection::vec((
                prop::sample::select(vec!["team", "other"]),
                prop::sample::select(vec!["data", "logs"]),
                prop::sample::select(vec!["u1", "u2", "u3"]),
            ), 1..6),
        ) {
            let mut cache = BTreeMap::new();
            let mut index = VolumeIndex::default();
            for op in &ops {
                step(&mut cache, &mut index, op, |pv| pv.metadata.name.clone().unwrap());
                for (namespace, name, uid) in &claims {
                    let mut c = claim(namespace, name, None);
                    c.metadata.uid = Some((*uid).into());
                    let own = format!("pvc-{uid}");
                    let pre_bound = |pv: &PersistentVolume| pre_bound_volume(&c, [pv]).is_some();
                    let scanned: BTreeSet<&str> = cache
                        .values()
                        .filter(|pv| pv.metadata.name.as_deref() != Some(own.as_str()))
                        .filter(|pv| pre_bound(pv))
                        .filter_map(|pv| pv.metadata.name.as_deref())
                        .collect();
                    let found: BTreeSet<&str> = index
                        .naming_claim(c.metadata.namespace.as_deref(), c.metadata.name.as_deref())
                        .iter()
                        .filter_map(|n| cache.get(n))
                        .filter(|pv| pre_bound(pv))
                        .filter_map(|pv| pv.metadata.name.as_deref())
                        .collect();
                    prop_assert_eq!(found, scanned);
                }
            }
        }

        /// The clones waiting for a claim, from the index, are exactly those the scan of every
        /// claim found.
        #[test]
        fn the_clone_index_finds_what_the_scan_found(
            ops in ops((
                prop::sample::select(vec!["a", "b"]),
                0..8usize,
                prop_oneof![
                    Just(None),
                    prop::sample::select(vec!["src", "other"]).prop_map(|s| Some((s, None, "PersistentVolumeClaim"))),
                    prop::sample::select(vec!["src", "other"]).prop_map(|s| Some((s, Some("a"), "PersistentVolumeClaim"))),
                    Just(Some(("src", None, "VolumeSnapshot"))),
                ],
            ).prop_map(|(namespace, i, source)| {
                let mut c = claim(namespace, &format!("{i}"), None);
                if let Some((name, in_namespace, kind)) = source {
                    c.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
                        kind: kind.into(),
                        name: name.into(),
                        namespace: in_namespace.map(str::to_owned),
                        api_group: (kind != "PersistentVolumeClaim").then(|| "snapshot.storage.k8s.io".into()),
                    });
                }
                c
            })),
        ) {
            let mut cache = BTreeMap::new();
            let mut index = CloneIndex::default();
            let name = |c: &PersistentVolumeClaim| {
                format!("{}/{}", c.metadata.namespace.clone().unwrap(), c.metadata.name.clone().unwrap())
            };
            for op in &ops {
                // Deletes name a claim of namespace "a".
                let op = match op {
                    Op::Delete(n) => Op::Delete(format!("a/{n}")),
                    other => other.clone(),
                };
                step(&mut cache, &mut index, &op, name);
                for (namespace, source) in [("a", "src"), ("a", "other"), ("b", "src")] {
                    let source = claim(namespace, source, None);
                    let scanned: BTreeSet<String> = cache
                        .values()
                        .filter(|c| clone::clones_pending(&source, [*c]))
                        .map(name)
                        .collect();
                    let found: BTreeSet<String> = index
                        .clones_of(&source)
                        .iter()
                        .map(|(ns, n)| format!("{}/{}", ns.clone().unwrap(), n.clone().unwrap()))
                        .filter(|key| cache.get(key).is_some_and(|c| clone::clones_pending(&source, [c])))
                        .collect();
                    prop_assert_eq!(found, scanned);
                }
            }
        }

        /// The served exports worked out class by class are those worked out from every class.
        #[test]
        fn the_served_exports_are_those_of_the_cached_classes(
            ops in ops((
                0..4usize,
                prop::sample::select(vec![ME, "other"]),
                prop::option::of(prop::sample::select(vec!["s0", "s1", "s2"])),
                prop::sample::select(vec!["/export", "/srv", "srv"]),
                prop::sample::select(vec!["", "port=2049", "nfsvers=4", "timeo=5"]),
            ).prop_map(|(i, provisioner, server, share, option)| {
                let params: Vec<(&str, &str)> = match server {
                    Some(server) => vec![("server", server), ("share", share)],
                    None => vec![],
                };
                let options: Vec<&str> = Some(option).filter(|o| !o.is_empty()).into_iter().collect();
                class(&format!("{i}"), provisioner, &params, &options)
            })),
            mounted in prop::option::of(Just(export("s0", "/export"))),
        ) {
            let mut cache = BTreeMap::new();
            let mut index = ClassExports::new(ME, mounted.as_ref());
            for op in &ops {
                step(&mut cache, &mut index, op, |c| c.metadata.name.clone().unwrap());
                let scanned = served_exports(cache.values(), ME, mounted.as_ref());
                prop_assert!(same_served(&index.served(), &scanned), "{:?} {:?}", index.served(), scanned);
            }
        }
    }
}
