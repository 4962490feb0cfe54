//! Where a volume's directory lives: pathPattern rendering, component safety, shortening of long names,
//! archive names and overlap between volumes.
//!
//! Pure: no I/O. Every path the provisioner touches is built here, so the component rules below are
//! the only thing standing between a claim's labels and annotations (which any tenant who can create
//! a PVC controls) and another tenant's data. nfs-subdir-external-provisioner substituted those values
//! textually and then joined the result onto the export, so an annotation such as "../victim/data"
//! walked out of the claim's directory; here a value can never contribute a separator, and no
//! component of a [`VolumePath`] can ever be "." or "..".

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

/// Longest directory name, in bytes, that Linux file systems (and so NFS exports) accept.
pub const NAME_MAX: usize = 255;

/// Reserved for the provisioner's staging area at the export root; never a volume component.
pub const STAGING_DIR: &str = ".nfs-subdir-provisioner";

/// Hex digits of sha256 kept by [`shorten_component`]: 64 bits makes accidental collisions irrelevant
/// at any realistic number of volumes while leaving most of a long name readable.
const HASH_HEX_LEN: usize = 16;

/// Where a rejected path or component came from, so that an error can point the operator at the
/// StorageClass, the PV or the environment variable to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A StorageClass pathPattern, after substitution.
    Pattern(String),
    /// The default "<namespace>-<name>-<pv name>" directory name.
    DefaultPath,
    /// A relative path as recorded in a PV annotation.
    Recorded(String),
    /// Components handed to [`VolumePath::from_components`].
    Components(Vec<String>),
    /// The export path (NFS_PATH).
    Export(String),
    /// A PV's spec.nfs.path.
    PvPath(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Pattern(pattern) => write!(f, "pathPattern {pattern:?}"),
            Origin::DefaultPath => f.write_str("default path"),
            Origin::Recorded(path) => write!(f, "path {path:?}"),
            Origin::Components(components) => write!(f, "path components {components:?}"),
            Origin::Export(path) => write!(f, "export path {path:?}"),
            Origin::PvPath(path) => write!(f, "PV path {path:?}"),
        }
    }
}

/// The claim field a substituted value was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    Namespace,
    ClaimName,
    PvName,
    Label(String),
    Annotation(String),
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Namespace => f.write_str("claim namespace"),
            ValueSource::ClaimName => f.write_str("claim name"),
            ValueSource::PvName => f.write_str("PV name"),
            ValueSource::Label(key) => write!(f, "label {key:?}"),
            ValueSource::Annotation(key) => write!(f, "annotation {key:?}"),
        }
    }
}

/// "label \"a\"" or "label \"a\" or annotation \"b\"", for naming everything that left a component empty.
fn join_sources(sources: &[ValueSource]) -> String {
    sources
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{origin} has no components")]
    NoComponents { origin: Origin },
    #[error("{origin} has an empty component")]
    EmptyComponent { origin: Origin },
    #[error("{origin} component {component:?} is not allowed")]
    DotComponent { origin: Origin, component: String },
    #[error("{origin} component {component:?} contains '/'")]
    SlashInComponent { origin: Origin, component: String },
    #[error("{origin} component {component:?} contains a NUL byte")]
    NulInComponent { origin: Origin, component: String },
    #[error("{origin} component {component:?} is {len} bytes, longer than NAME_MAX ({NAME_MAX})")]
    ComponentTooLong {
        origin: Origin,
        component: String,
        len: usize,
    },
    #[error("{origin} component {component:?} is reserved for the provisioner's staging area")]
    ReservedComponent { origin: Origin, component: String },
    #[error("{origin} must be relative")]
    NotRelative { origin: Origin },
    #[error("{origin} must be absolute")]
    NotAbsolute { origin: Origin },
    #[error("pathPattern placeholder {placeholder} is unknown")]
    UnknownPlaceholder { placeholder: String },
    #[error("pathPattern {pattern:?} has an unterminated \"${{\"")]
    UnterminatedPlaceholder { pattern: String },
    #[error("{from} value {value:?} contains '/'")]
    SlashInValue { from: ValueSource, value: String },
    #[error("{from} value {value:?} contains a NUL byte")]
    NulInValue { from: ValueSource, value: String },
    #[error("pathPattern {pattern:?} renders an empty component (is {} missing?)", join_sources(.missing))]
    MissingValue {
        pattern: String,
        missing: Vec<ValueSource>,
    },
    #[error("path {path:?} is outside the export {export:?}")]
    OutsideExport { path: String, export: String },
    #[error("path {path:?} is the export {export:?} itself, not a directory inside it")]
    IsExport { path: String, export: String },
}

/// The component rules on their own, for layers that receive components from elsewhere and check
/// them again before touching the filesystem.
pub fn check_single_component(component: &str) -> Result<(), PathError> {
    check_component(component, || Origin::Components(vec![component.to_owned()]))
}

/// Checks one component against every rule. `origin` is lazy because components are checked far
/// more often than they fail.
fn check_component(component: &str, origin: impl FnOnce() -> Origin) -> Result<(), PathError> {
    let component_owned = || component.to_owned();
    if component.is_empty() {
        return Err(PathError::EmptyComponent { origin: origin() });
    }
    if component.contains('\0') {
        return Err(PathError::NulInComponent {
            origin: origin(),
            component: component_owned(),
        });
    }
    if component.contains('/') {
        return Err(PathError::SlashInComponent {
            origin: origin(),
            component: component_owned(),
        });
    }
    if component == "." || component == ".." {
        return Err(PathError::DotComponent {
            origin: origin(),
            component: component_owned(),
        });
    }
    if component.len() > NAME_MAX {
        return Err(PathError::ComponentTooLong {
            origin: origin(),
            component: component_owned(),
            len: component.len(),
        });
    }
    if component == STAGING_DIR {
        return Err(PathError::ReservedComponent {
            origin: origin(),
            component: component_owned(),
        });
    }
    Ok(())
}

/// A relative path under the export root: >= 1 component, every component safe.
///
/// The field is private so that the only way to get one is through a constructor that checked it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumePath(Vec<String>);

impl VolumePath {
    fn checked(components: Vec<String>, origin: impl Fn() -> Origin) -> Result<Self, PathError> {
        if components.is_empty() {
            return Err(PathError::NoComponents { origin: origin() });
        }
        for component in &components {
            check_component(component, &origin)?;
        }
        Ok(VolumePath(components))
    }

    /// Validates each component; over-long ones are rejected rather than shortened, because a caller
    /// handing in components already decided the name and silently changing it would lose the directory.
    pub fn from_components(components: Vec<String>) -> Result<Self, PathError> {
        let copy_for_errors = components.clone();
        Self::checked(components, || Origin::Components(copy_for_errors.clone()))
    }

    /// Parses "a/b/c" as recorded in a PV annotation. Strict: anything the provisioner would not have
    /// written itself (leading '/', empty components, trailing '/') means the record was tampered
    /// with or is not ours.
    pub fn parse(recorded: &str) -> Result<Self, PathError> {
        let origin = || Origin::Recorded(recorded.to_owned());
        if recorded.is_empty() {
            return Err(PathError::NoComponents { origin: origin() });
        }
        if recorded.starts_with('/') {
            return Err(PathError::NotRelative { origin: origin() });
        }
        Self::checked(recorded.split('/').map(str::to_owned).collect(), origin)
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    pub fn leaf(&self) -> &str {
        // Never empty by construction; the fallback only keeps this free of panics.
        self.0.last().map_or("", String::as_str)
    }

    pub fn parent(&self) -> &[String] {
        self.0.split_last().map_or(&[], |(_, parent)| parent)
    }

    /// true when equal, or one is an ancestor of the other (component-wise, so "a/b" does not overlap
    /// "a/bc"). Two overlapping volumes would share data, and deleting one would delete the other.
    pub fn overlaps(&self, other: &VolumePath) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a == b)
    }
}

impl fmt::Display for VolumePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, component) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(component)?;
        }
        Ok(())
    }
}

/// What a claim contributes to its directory name.
#[derive(Debug, Clone, Copy)]
pub struct ClaimNames<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub annotations: &'a BTreeMap<String, String>,
    /// "pvc-<claim uid>".
    pub pv_name: &'a str,
}

/// Refuses a substituted value that could add a component or truncate the path. The API server
/// already forbids '/' in namespaces and names, but labels and annotations are free-form.
fn check_value(from: &ValueSource, value: &str) -> Result<(), PathError> {
    if value.contains('/') {
        return Err(PathError::SlashInValue {
            from: from.clone(),
            value: value.to_owned(),
        });
    }
    if value.contains('\0') {
        return Err(PathError::NulInValue {
            from: from.clone(),
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// nfs-subdir-external-provisioner's default: one component "<namespace>-<name>-<pv_name>", shortened if
/// > NAME_MAX.
pub fn default_path(claim: &ClaimNames<'_>) -> Result<VolumePath, PathError> {
    check_value(&ValueSource::Namespace, claim.namespace)?;
    check_value(&ValueSource::ClaimName, claim.name)?;
    check_value(&ValueSource::PvName, claim.pv_name)?;
    let joined = format!("{}-{}-{}", claim.namespace, claim.name, claim.pv_name);
    VolumePath::checked(vec![shorten_component(&joined)], || Origin::DefaultPath)
}

#[derive(Debug, Clone, Copy)]
enum Placeholder<'p> {
    Namespace,
    Name,
    PvName,
    Label(&'p str),
    Annotation(&'p str),
}

impl Placeholder<'_> {
    fn parse(inner: &str) -> Option<Placeholder<'_>> {
        let placeholder = match inner {
            ".PVC.namespace" => Placeholder::Namespace,
            ".PVC.name" => Placeholder::Name,
            ".PV.name" => Placeholder::PvName,
            _ => {
                if let Some(key) = inner.strip_prefix(".PVC.labels.") {
                    Placeholder::Label(key)
                } else if let Some(key) = inner.strip_prefix(".PVC.annotations.") {
                    Placeholder::Annotation(key)
                } else {
                    return None;
                }
            }
        };
        match placeholder {
            // An empty key can never match a label or annotation; it is a typo in the pattern.
            Placeholder::Label("") | Placeholder::Annotation("") => None,
            other => Some(other),
        }
    }

    fn resolve<'c>(self, claim: &ClaimNames<'c>) -> (ValueSource, &'c str) {
        // A missing label or annotation renders as empty, as in nfs-subdir; a component left empty
        // by that is reported by the caller, naming what was missing.
        let lookup = |map: &'c BTreeMap<String, String>, key: &str| map.get(key).map_or("", String::as_str);
        match self {
            Placeholder::Namespace => (ValueSource::Namespace, claim.namespace),
            Placeholder::Name => (ValueSource::ClaimName, claim.name),
            Placeholder::PvName => (ValueSource::PvName, claim.pv_name),
            Placeholder::Label(key) => (ValueSource::Label(key.to_owned()), lookup(claim.labels, key)),
            Placeholder::Annotation(key) => (
                ValueSource::Annotation(key.to_owned()),
                lookup(claim.annotations, key),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Piece<'p> {
    Literal(&'p str),
    Value(Placeholder<'p>),
}

/// Splits a pattern into components of literal and placeholder pieces. Placeholders are cut out
/// before looking for '/', because keys such as "nfs.io/storage-path" contain '/' and must not split
/// the component they sit in.
fn tokenise(pattern: &str) -> Result<Vec<Vec<Piece<'_>>>, PathError> {
    /// Literal '/' closes the current component; the text around it extends the neighbouring ones.
    fn push_literal<'p>(
        components: &mut Vec<Vec<Piece<'p>>>,
        current: &mut Vec<Piece<'p>>,
        literal: &'p str,
    ) {
        let mut parts = literal.split('/');
        if let Some(first) = parts.next().filter(|part| !part.is_empty()) {
            current.push(Piece::Literal(first));
        }
        for part in parts {
            components.push(std::mem::take(current));
            if !part.is_empty() {
                current.push(Piece::Literal(part));
            }
        }
    }
    let mut components = Vec::new();
    let mut current = Vec::new();
    let mut rest = pattern;
    while let Some((literal, after)) = rest.split_once("${") {
        push_literal(&mut components, &mut current, literal);
        let Some((inner, after_placeholder)) = after.split_once('}') else {
            return Err(PathError::UnterminatedPlaceholder {
                pattern: pattern.to_owned(),
            });
        };
        let placeholder = Placeholder::parse(inner).ok_or_else(|| PathError::UnknownPlaceholder {
            placeholder: format!("${{{inner}}}"),
        })?;
        current.push(Piece::Value(placeholder));
        rest = after_placeholder;
    }
    push_literal(&mut components, &mut current, rest);
    components.push(current);
    Ok(components)
}

/// Whether every directory `pattern` renders belongs to one namespace: a path component that is
/// the namespace alone (a namespace name has no '/', so no other namespace renders the same
/// component), or the PV's name (`pvc-<uid>`, unique to the claim) anywhere. Only such patterns
/// may reuse an existing directory. `${.PVC.namespace}-${.PVC.name}` does not qualify: claim
/// `b-c` in namespace `a` and claim `c` in namespace `a-b` both render `a-b-c`.
pub fn pattern_fixes_namespace(pattern: &str) -> bool {
    tokenise(pattern).is_ok_and(|components| {
        components.iter().any(|pieces| {
            matches!(pieces.as_slice(), [Piece::Value(Placeholder::Namespace)])
                || pieces
                    .iter()
                    .any(|p| matches!(p, Piece::Value(Placeholder::PvName)))
        })
    })
}

/// How many components the paths `pattern` renders have (every one of them: a component a
/// claim's value leaves empty is refused, never dropped); `None` for a pattern that renders
/// nothing.
pub fn pattern_depth(pattern: &str) -> Option<usize> {
    let depth = tokenise(pattern)
        .ok()?
        .iter()
        .filter(|pieces| !pieces.is_empty())
        .count();
    (depth > 0).then_some(depth)
}

/// Renders a StorageClass pathPattern.
///
/// nfs-subdir cleaned the rendered string with filepath.Join, which is what let a crafted value land
/// somewhere else. Here only the admin's own separators are forgiven as Join forgave them (a leading
/// '/', "a//b", a trailing '/': StorageClasses in the wild use `/${.PVC.namespace}-${.PVC.name}`);
/// anything a claim contributes is never repaired: a value with '/' or NUL, a "." or ".." component,
/// or a component left empty by a missing value is an error.
pub fn render_pattern(pattern: &str, claim: &ClaimNames<'_>) -> Result<VolumePath, PathError> {
    let origin = || Origin::Pattern(pattern.to_owned());
    if pattern.is_empty() {
        return Err(PathError::NoComponents { origin: origin() });
    }
    let mut rendered = Vec::new();
    for pieces in tokenise(pattern)? {
        let mut component = String::new();
        let mut sources = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Literal(literal) => component.push_str(literal),
                Piece::Value(placeholder) => {
                    let (from, value) = placeholder.resolve(claim);
                    check_value(&from, value)?;
                    component.push_str(value);
                    sources.push(from);
                }
            }
        }
        if component.is_empty() && sources.is_empty() {
            continue;
        }
        if component.is_empty() {
            return Err(PathError::MissingValue {
                pattern: pattern.to_owned(),
                missing: sources,
            });
        }
        // Checked before shortening, which could otherwise cut a NUL from a literal out of sight.
        if component.contains('\0') {
            return Err(PathError::NulInComponent {
                origin: origin(),
                component,
            });
        }
        rendered.push(shorten_component(&component));
    }
    VolumePath::checked(rendered, origin)
}

/// Lower-case hex of the first `HASH_HEX_LEN / 2` bytes of sha256(`data`).
fn hash_hex(data: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(data.as_bytes());
    let mut out = String::with_capacity(HASH_HEX_LEN);
    for byte in digest.iter().take(HASH_HEX_LEN / 2) {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Deterministic shortening: names <= NAME_MAX bytes are returned unchanged; longer ones are cut at a
/// UTF-8 char boundary and get "-" + 16 lowercase hex chars of sha256(full name) appended, total <=
/// NAME_MAX. Different inputs give different outputs (up to hash collisions).
///
/// The hash is of the whole name so that names differing only past the cut stay apart. Someone who
/// can choose a short name could still pick one equal to another name's shortened form; that is not
/// prevented here but by the overlap check ([`find_overlap`]) every new volume goes through.
pub fn shorten_component(name: &str) -> String {
    if name.len() <= NAME_MAX {
        return name.to_owned();
    }
    let mut cut = NAME_MAX - 1 - HASH_HEX_LEN;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let (prefix, _) = name.split_at(cut);
    format!("{prefix}-{}", hash_hex(name))
}

/// What every archive's name starts with (nfs-subdir-external-provisioner's, so its archives read
/// as ours).
pub const ARCHIVE_PREFIX: &str = "archived-";

/// Name for archiving directory `leaf` on the attempt-th try (0-based): attempt 0 -> "archived-<leaf>"
/// (nfs-subdir's name), attempt n>0 -> "archived-<leaf>-<n+1>"; the whole result is passed through
/// shorten_component so it fits NAME_MAX and stays unique per (leaf, attempt).
pub fn archive_name(leaf: &str, attempt: u32) -> String {
    let name = if attempt == 0 {
        format!("{ARCHIVE_PREFIX}{leaf}")
    } else {
        format!("{ARCHIVE_PREFIX}{leaf}-{}", u64::from(attempt) + 1)
    };
    shorten_component(&name)
}

/// NFS_PATH normalisation: must be absolute; repeated '/' collapse; trailing '/' removed except for "/"
/// itself; "." or ".." components or NUL are errors.
///
/// "." and ".." are refused rather than resolved: the server resolves them, possibly through
/// symlinks, so a lexical answer could name a different directory than the one actually mounted.
pub fn normalize_export_path(path: &str) -> Result<String, PathError> {
    let origin = || Origin::Export(path.to_owned());
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute { origin: origin() });
    }
    let mut normalised = String::with_capacity(path.len());
    for component in path.split('/').filter(|component| !component.is_empty()) {
        if component.contains('\0') {
            return Err(PathError::NulInComponent {
                origin: origin(),
                component: component.to_owned(),
            });
        }
        if component == "." || component == ".." {
            return Err(PathError::DotComponent {
                origin: origin(),
                component: component.to_owned(),
            });
        }
        normalised.push('/');
        normalised.push_str(component);
    }
    if normalised.is_empty() {
        normalised.push('/');
    }
    Ok(normalised)
}

/// The PV's spec.nfs.path for a volume: export "/" + "a/b" -> "/a/b"; "/export" + "a/b" ->
/// "/export/a/b".
pub fn server_path(export: &str, volume: &VolumePath) -> String {
    format!("{}/{volume}", export.trim_end_matches('/'))
}

/// Inverse of server_path, for PVs read back at release (including ones made by
/// nfs-subdir-external-provisioner, whose paths are Go filepath.Join-cleaned): `nfs_path` must lie
/// strictly inside `export` (already normalised); a trailing '/' on nfs_path is tolerated; anything
/// else odd ("..", ".", empty components, NUL, the export itself) is an error.
///
/// Strict because the answer decides which directory gets deleted: a PV that was edited, or belongs
/// to another export, must not be resolved to something plausible.
pub fn relative_to_export(nfs_path: &str, export: &str) -> Result<VolumePath, PathError> {
    let origin = || Origin::PvPath(nfs_path.to_owned());
    if !nfs_path.starts_with('/') {
        return Err(PathError::NotAbsolute { origin: origin() });
    }
    let trimmed = match nfs_path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => nfs_path,
    };
    // Compared without trailing '/' so that "/" and an export given with a trailing '/' still match.
    let base = export.trim_end_matches('/');
    if trimmed.trim_end_matches('/') == base {
        return Err(PathError::IsExport {
            path: nfs_path.to_owned(),
            export: export.to_owned(),
        });
    }
    let Some(relative) = trimmed.strip_prefix(base).and_then(|rest| rest.strip_prefix('/')) else {
        return Err(PathError::OutsideExport {
            path: nfs_path.to_owned(),
            export: export.to_owned(),
        });
    };
    VolumePath::checked(relative.split('/').map(str::to_owned).collect(), origin)
}

/// The first live volume whose directory equals, contains or lies inside `candidate`; `live` yields
/// (pv name, path).
pub fn find_overlap<'a>(
    candidate: &VolumePath,
    live: impl IntoIterator<Item = (&'a str, &'a VolumePath)>,
) -> Option<&'a str> {
    live.into_iter()
        .find(|(_, path)| candidate.overlaps(path))
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_namespace_component_of_its_own_or_the_pv_name_fixes_the_namespace() {
        use super::pattern_fixes_namespace as fixes;
        assert!(fixes("${.PVC.namespace}/${.PVC.name}"));
        assert!(fixes("/${.PVC.namespace}/data/${.PVC.name}/"));
        assert!(fixes(
            "vols/${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}"
        ));
        assert!(fixes("${.PVC.name}-${.PV.name}"));
        assert!(!fixes("${.PVC.namespace}-${.PVC.name}"), "a-b + c = a + b-c");
        assert!(!fixes("${.PVC.name}"));
        assert!(!fixes("ns${.PVC.namespace}/${.PVC.name}"));
        assert!(!fixes("${.PVC.labels.team}/${.PVC.name}"));
        assert!(!fixes("${.PVC.namespace"), "not a pattern");
    }

    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    struct Claim {
        namespace: String,
        name: String,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        pv_name: String,
    }

    impl Claim {
        fn new() -> Self {
            Claim {
                namespace: "team-a".to_owned(),
                name: "data".to_owned(),
                labels: map(&[("app", "web"), ("tier.k8s.io/role", "db")]),
                annotations: map(&[("nfs.io/storage-path", "shared"), ("owner", "alice")]),
                pv_name: "pvc-0123".to_owned(),
            }
        }

        fn annotated(key: &str, value: &str) -> Self {
            let mut claim = Claim::new();
            claim.annotations.insert(key.to_owned(), value.to_owned());
            claim
        }

        fn names(&self) -> ClaimNames<'_> {
            ClaimNames {
                namespace: &self.namespace,
                name: &self.name,
                labels: &self.labels,
                annotations: &self.annotations,
                pv_name: &self.pv_name,
            }
        }

        fn render(&self, pattern: &str) -> Result<VolumePath, PathError> {
            render_pattern(pattern, &self.names())
        }
    }

    fn path(recorded: &str) -> VolumePath {
        VolumePath::parse(recorded).unwrap()
    }

    /// The component rules, restated independently of `check_component` for the property tests.
    fn assert_safe(volume: &VolumePath) {
        assert!(!volume.components().is_empty());
        for component in volume.components() {
            assert!(!component.is_empty(), "{volume:?}");
            assert!(component != "." && component != "..", "{volume:?}");
            assert!(
                !component.contains('/') && !component.contains('\0'),
                "{volume:?}"
            );
            assert!(component.len() <= NAME_MAX, "{volume:?}");
            assert_ne!(component, STAGING_DIR);
        }
    }

    // --- default path -------------------------------------------------------------------------

    #[test]
    fn default_path_is_namespace_name_and_pv_name() {
        let claim = Claim::new();
        assert_eq!(
            default_path(&claim.names()).unwrap(),
            path("team-a-data-pvc-0123")
        );
    }

    #[test]
    fn long_default_path_is_shortened_and_stays_distinct() {
        let mut first = Claim::new();
        first.namespace = "n".repeat(150);
        first.name = "c".repeat(150);
        let mut second = Claim::new();
        second.namespace = first.namespace.clone();
        second.name = format!("{}d", "c".repeat(149));
        let a = default_path(&first.names()).unwrap();
        let b = default_path(&second.names()).unwrap();
        assert!(a.leaf().len() <= NAME_MAX && b.leaf().len() <= NAME_MAX);
        assert_ne!(a, b);
        assert!(a.leaf().starts_with(&first.namespace));
    }

    #[test]
    fn default_path_that_spells_the_staging_dir_is_refused() {
        let mut claim = Claim::new();
        claim.namespace = ".nfs".to_owned();
        claim.name = "subdir".to_owned();
        claim.pv_name = "provisioner".to_owned();
        assert!(matches!(
            default_path(&claim.names()),
            Err(PathError::ReservedComponent { .. })
        ));
    }

    #[test]
    fn default_path_refuses_a_slash_in_the_name() {
        let mut claim = Claim::new();
        claim.name = "../x".to_owned();
        let err = default_path(&claim.names()).unwrap_err();
        assert_eq!(err.to_string(), "claim name value \"../x\" contains '/'");
    }

    // --- placeholders -------------------------------------------------------------------------

    #[test]
    fn each_placeholder_renders_its_value() {
        let claim = Claim::new();
        assert_eq!(claim.render("${.PVC.namespace}").unwrap(), path("team-a"));
        assert_eq!(claim.render("${.PVC.name}").unwrap(), path("data"));
        assert_eq!(claim.render("${.PV.name}").unwrap(), path("pvc-0123"));
        assert_eq!(claim.render("${.PVC.labels.app}").unwrap(), path("web"));
        assert_eq!(claim.render("${.PVC.annotations.owner}").unwrap(), path("alice"));
    }

    #[test]
    fn placeholders_and_literals_combine_into_components() {
        let claim = Claim::new();
        assert_eq!(
            claim
                .render("vols/${.PVC.namespace}-${.PVC.name}/x${.PV.name}$}{")
                .unwrap(),
            path("vols/team-a-data/xpvc-0123$}{")
        );
    }

    #[test]
    fn keys_with_slash_and_dot_stay_inside_their_component() {
        let claim = Claim::new();
        assert_eq!(
            claim
                .render("${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}")
                .unwrap(),
            path("team-a/shared")
        );
        assert_eq!(
            claim.render("r-${.PVC.labels.tier.k8s.io/role}").unwrap(),
            path("r-db")
        );
    }

    #[test]
    fn missing_label_is_an_error_naming_it() {
        let claim = Claim::new();
        let err = claim.render("${.PVC.namespace}/${.PVC.labels.team}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pathPattern \"${.PVC.namespace}/${.PVC.labels.team}\" renders an empty component \
             (is label \"team\" missing?)"
        );
    }

    #[test]
    fn missing_values_name_every_placeholder_of_the_empty_component() {
        let claim = Claim::new();
        let err = claim
            .render("a/${.PVC.labels.x}${.PVC.annotations.y}")
            .unwrap_err();
        assert_eq!(
            err,
            PathError::MissingValue {
                pattern: "a/${.PVC.labels.x}${.PVC.annotations.y}".to_owned(),
                missing: vec![
                    ValueSource::Label("x".to_owned()),
                    ValueSource::Annotation("y".to_owned())
                ],
            }
        );
        assert!(
            err.to_string()
                .ends_with("(is label \"x\" or annotation \"y\" missing?)")
        );
    }

    #[test]
    fn missing_label_next_to_a_literal_renders_the_literal() {
        let claim = Claim::new();
        assert_eq!(claim.render("${.PVC.labels.team}-x").unwrap(), path("-x"));
    }

    // --- hostile values -----------------------------------------------------------------------

    #[test]
    fn annotation_with_dot_dot_is_refused() {
        let claim = Claim::annotated("p", "..");
        let err = claim
            .render("${.PVC.namespace}/${.PVC.annotations.p}")
            .unwrap_err();
        assert!(matches!(err, PathError::DotComponent { ref component, .. } if component == ".."));
    }

    #[test]
    fn annotation_with_single_dot_is_refused() {
        let claim = Claim::annotated("p", ".");
        assert!(matches!(
            claim.render("x/${.PVC.annotations.p}"),
            Err(PathError::DotComponent { .. })
        ));
    }

    #[test]
    fn values_that_together_spell_dot_dot_are_refused() {
        let claim = Claim::annotated("p", ".");
        assert!(matches!(
            claim.render("x/${.PVC.annotations.p}${.PVC.annotations.p}"),
            Err(PathError::DotComponent { .. })
        ));
        assert!(matches!(
            claim.render("x/.${.PVC.annotations.p}"),
            Err(PathError::DotComponent { .. })
        ));
    }

    #[test]
    fn annotation_climbing_out_is_refused() {
        let claim = Claim::annotated("p", "../victim/data");
        let err = claim.render("${.PVC.annotations.p}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation \"p\" value \"../victim/data\" contains '/'"
        );
    }

    #[test]
    fn annotation_with_absolute_path_is_refused() {
        let claim = Claim::annotated("p", "/etc");
        assert!(matches!(
            claim.render("${.PVC.annotations.p}"),
            Err(PathError::SlashInValue { .. })
        ));
    }

    #[test]
    fn annotation_with_slash_is_refused_naming_key_and_value() {
        let claim = Claim::annotated("x", "a/b");
        let err = claim.render("d/${.PVC.annotations.x}").unwrap_err();
        assert_eq!(err.to_string(), "annotation \"x\" value \"a/b\" contains '/'");
    }

    #[test]
    fn label_with_nul_is_refused() {
        let mut claim = Claim::new();
        claim.labels.insert("app".to_owned(), "x\0y".to_owned());
        let err = claim.render("${.PVC.labels.app}").unwrap_err();
        assert_eq!(
            err,
            PathError::NulInValue {
                from: ValueSource::Label("app".to_owned()),
                value: "x\0y".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "label \"app\" value \"x\\0y\" contains a NUL byte"
        );
    }

    #[test]
    fn every_hostile_annotation_value_is_refused() {
        for hostile in ["..", "../x", "/etc", "a/b", "x\0y", ".", "", STAGING_DIR] {
            let claim = Claim::annotated("p", hostile);
            for pattern in ["${.PVC.annotations.p}", "base/${.PVC.annotations.p}"] {
                assert!(claim.render(pattern).is_err(), "{hostile:?} in {pattern}");
            }
        }
    }

    #[test]
    fn values_are_not_rendered_again() {
        let claim = Claim::annotated("p", "${.PVC.name}");
        assert_eq!(
            claim.render("${.PVC.annotations.p}").unwrap(),
            path("${.PVC.name}")
        );
    }

    // --- malformed patterns -------------------------------------------------------------------

    #[test]
    fn unknown_placeholder_is_an_error_naming_it() {
        let claim = Claim::new();
        let err = claim.render("a/${.PVC.foo}").unwrap_err();
        assert_eq!(err.to_string(), "pathPattern placeholder ${.PVC.foo} is unknown");
        for unknown in [
            "${.PV.uid}",
            "${}",
            "${.PVC.labels.}",
            "${.PVC.labels}",
            "${PVC.name}",
        ] {
            assert!(
                matches!(claim.render(unknown), Err(PathError::UnknownPlaceholder { .. })),
                "{unknown}"
            );
        }
    }

    #[test]
    fn unterminated_placeholder_is_an_error() {
        let claim = Claim::new();
        let err = claim.render("a/${.PVC.name").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pathPattern \"a/${.PVC.name\" has an unterminated \"${\""
        );
    }

    #[test]
    fn separators_of_the_pattern_itself_are_cleaned_like_go_join() {
        let claim = Claim::new();
        let want = claim.render("${.PVC.namespace}/x").unwrap();
        for pattern in [
            "/${.PVC.namespace}/x",
            "${.PVC.namespace}//x",
            "${.PVC.namespace}/x/",
        ] {
            assert_eq!(claim.render(pattern).unwrap(), want, "{pattern}");
        }
    }

    #[test]
    fn pattern_of_only_separators_is_refused() {
        assert!(matches!(
            Claim::new().render("//"),
            Err(PathError::NoComponents { .. })
        ));
    }

    #[test]
    fn empty_pattern_is_refused() {
        assert!(matches!(
            Claim::new().render(""),
            Err(PathError::NoComponents { .. })
        ));
    }

    #[test]
    fn literal_dot_dot_in_pattern_is_refused() {
        let err = Claim::new().render("a/../b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "pathPattern \"a/../b\" component \"..\" is not allowed"
        );
    }

    #[test]
    fn nul_in_pattern_is_refused() {
        assert!(matches!(
            Claim::new().render("a\0b"),
            Err(PathError::NulInComponent { .. })
        ));
    }

    #[test]
    fn staging_dir_is_refused_anywhere() {
        let claim = Claim::new();
        assert!(matches!(
            claim.render(STAGING_DIR),
            Err(PathError::ReservedComponent { .. })
        ));
        let claim = Claim::annotated("p", STAGING_DIR);
        assert!(matches!(
            claim.render("x/${.PVC.annotations.p}"),
            Err(PathError::ReservedComponent { .. })
        ));
        assert!(matches!(
            VolumePath::parse("a/.nfs-subdir-provisioner"),
            Err(PathError::ReservedComponent { .. })
        ));
        assert!(matches!(
            VolumePath::from_components(vec![STAGING_DIR.to_owned()]),
            Err(PathError::ReservedComponent { .. })
        ));
    }

    #[test]
    fn long_rendered_component_is_shortened() {
        let claim = Claim::annotated("p", &"x".repeat(300));
        let rendered = claim.render("${.PVC.namespace}/${.PVC.annotations.p}").unwrap();
        assert_eq!(rendered.components()[0], "team-a");
        assert!(rendered.leaf().len() <= NAME_MAX);
        assert_eq!(rendered.leaf(), shorten_component(&"x".repeat(300)));
    }

    // --- VolumePath ---------------------------------------------------------------------------

    #[test]
    fn parse_accepts_plain_relative_paths() {
        let volume = path("a/b/c");
        assert_eq!(volume.components(), ["a", "b", "c"]);
        assert_eq!(volume.leaf(), "c");
        assert_eq!(volume.parent(), ["a", "b"]);
        assert_eq!(volume.to_string(), "a/b/c");
        assert!(path("a").parent().is_empty());
    }

    #[test]
    fn parse_tolerates_nothing_odd() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/..",
            "a\0b",
            ".nfs-subdir-provisioner",
        ] {
            assert!(VolumePath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(VolumePath::parse(&"x".repeat(NAME_MAX)).is_ok());
        let err = VolumePath::parse(&"x".repeat(NAME_MAX + 1)).unwrap_err();
        assert!(matches!(err, PathError::ComponentTooLong { len: 256, .. }));
        assert!(
            err.to_string()
                .ends_with(" is 256 bytes, longer than NAME_MAX (255)")
        );
    }

    #[test]
    fn from_components_validates_each_component() {
        assert_eq!(
            VolumePath::from_components(vec!["a".into(), "b".into()]).unwrap(),
            path("a/b")
        );
        assert!(matches!(
            VolumePath::from_components(vec![]),
            Err(PathError::NoComponents { .. })
        ));
        assert!(matches!(
            VolumePath::from_components(vec!["a/b".into()]),
            Err(PathError::SlashInComponent { .. })
        ));
        assert!(matches!(
            VolumePath::from_components(vec!["a".into(), "".into()]),
            Err(PathError::EmptyComponent { .. })
        ));
        assert!(matches!(
            VolumePath::from_components(vec!["x".repeat(256)]),
            Err(PathError::ComponentTooLong { .. })
        ));
    }

    #[test]
    fn overlaps_covers_equal_ancestor_and_descendant() {
        assert!(path("a/b").overlaps(&path("a/b")));
        assert!(path("a").overlaps(&path("a/b/c")));
        assert!(path("a/b/c").overlaps(&path("a")));
    }

    #[test]
    fn sibling_with_common_prefix_does_not_overlap() {
        assert!(!path("a/b").overlaps(&path("a/bc")));
        assert!(!path("a/bc").overlaps(&path("a/b")));
        assert!(!path("a/b").overlaps(&path("a/c/d")));
        assert!(!path("ab").overlaps(&path("a")));
    }

    #[test]
    fn find_overlap_names_the_first_overlapping_volume() {
        let (x, y, z) = (path("a/b"), path("a/bc"), path("a/b/c"));
        let live = [("pv-x", &y), ("pv-y", &z), ("pv-z", &x)];
        assert_eq!(find_overlap(&x, live), Some("pv-y"));
        assert_eq!(find_overlap(&path("a"), live), Some("pv-x"));
        assert_eq!(find_overlap(&path("q"), live), None);
        assert_eq!(find_overlap(&path("a/bcd"), live), None);
    }

    // --- shortening and archive names ---------------------------------------------------------

    #[test]
    fn short_names_are_not_shortened() {
        assert_eq!(shorten_component("abc"), "abc");
        let max = "y".repeat(NAME_MAX);
        assert_eq!(shorten_component(&max), max);
    }

    #[test]
    fn long_names_get_a_hash_suffix() {
        let long = "z".repeat(NAME_MAX + 1);
        let short = shorten_component(&long);
        assert_eq!(short.len(), NAME_MAX);
        let (prefix, hash) = short.rsplit_once('-').unwrap();
        assert!(long.starts_with(prefix));
        assert_eq!(hash.len(), 16);
        assert!(
            hash.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        // 'é' is two bytes, so byte 238 falls inside a character.
        let long = format!("a{}", "é".repeat(200));
        let short = shorten_component(&long);
        assert!(short.len() <= NAME_MAX);
        assert!(short.starts_with(&format!("a{}", "é".repeat(118))));
    }

    #[test]
    fn archive_names_for_successive_attempts() {
        assert_eq!(archive_name("ns-data-pvc-1", 0), "archived-ns-data-pvc-1");
        assert_eq!(archive_name("ns-data-pvc-1", 1), "archived-ns-data-pvc-1-2");
        assert_eq!(archive_name("ns-data-pvc-1", 2), "archived-ns-data-pvc-1-3");
        assert_eq!(archive_name("x", u32::MAX), "archived-x-4294967296");
    }

    #[test]
    fn archive_names_of_a_max_length_leaf_fit_and_differ() {
        let leaf = "l".repeat(NAME_MAX);
        let names: Vec<String> = (0..3).map(|attempt| archive_name(&leaf, attempt)).collect();
        for name in &names {
            assert!(name.len() <= NAME_MAX);
            assert!(name.starts_with("archived-lll"));
        }
        assert_ne!(names[0], names[1]);
        assert_ne!(names[1], names[2]);
        assert_ne!(names[0], names[2]);
    }

    // --- export paths -------------------------------------------------------------------------

    #[test]
    fn export_path_is_normalised() {
        assert_eq!(normalize_export_path("/export/").unwrap(), "/export");
        assert_eq!(normalize_export_path("/").unwrap(), "/");
        assert_eq!(normalize_export_path("//").unwrap(), "/");
        assert_eq!(normalize_export_path("//a//b/").unwrap(), "/a/b");
        assert_eq!(normalize_export_path("/srv/nfs").unwrap(), "/srv/nfs");
    }

    #[test]
    fn export_path_must_be_absolute_and_clean() {
        let err = normalize_export_path("relative").unwrap_err();
        assert_eq!(err.to_string(), "export path \"relative\" must be absolute");
        assert!(matches!(
            normalize_export_path(""),
            Err(PathError::NotAbsolute { .. })
        ));
        assert!(matches!(
            normalize_export_path("/a/../b"),
            Err(PathError::DotComponent { .. })
        ));
        assert!(matches!(
            normalize_export_path("/a/./b"),
            Err(PathError::DotComponent { .. })
        ));
        assert!(matches!(
            normalize_export_path("/a\0"),
            Err(PathError::NulInComponent { .. })
        ));
    }

    #[test]
    fn server_path_joins_export_and_volume() {
        assert_eq!(server_path("/", &path("a/b")), "/a/b");
        assert_eq!(server_path("/export", &path("a/b")), "/export/a/b");
    }

    #[test]
    fn server_path_round_trips_through_relative_to_export() {
        for export in ["/", "/export", "/srv/nfs/k8s"] {
            for volume in [path("a"), path("a/b/c"), path("ns-claim-pvc-1")] {
                let nfs_path = server_path(export, &volume);
                assert_eq!(relative_to_export(&nfs_path, export).unwrap(), volume);
                assert_eq!(
                    relative_to_export(&format!("{nfs_path}/"), export).unwrap(),
                    volume
                );
            }
        }
    }

    #[test]
    fn relative_to_export_refuses_the_export_itself() {
        for (nfs_path, export) in [("/export", "/export"), ("/export/", "/export"), ("/", "/")] {
            assert!(
                matches!(
                    relative_to_export(nfs_path, export),
                    Err(PathError::IsExport { .. })
                ),
                "{nfs_path}"
            );
        }
    }

    #[test]
    fn relative_to_export_refuses_siblings_and_outsiders() {
        let err = relative_to_export("/export2/x", "/export").unwrap_err();
        assert_eq!(
            err.to_string(),
            "path \"/export2/x\" is outside the export \"/export\""
        );
        assert!(matches!(
            relative_to_export("/x", "/export"),
            Err(PathError::OutsideExport { .. })
        ));
        assert!(matches!(
            relative_to_export("/", "/export"),
            Err(PathError::OutsideExport { .. })
        ));
        assert!(matches!(
            relative_to_export("export/x", "/export"),
            Err(PathError::NotAbsolute { .. })
        ));
    }

    #[test]
    fn relative_to_export_refuses_odd_segments() {
        for bad in [
            "/export/../x",
            "/export/a/..",
            "/export/./a",
            "/export//a",
            "/export/a//",
            "/export/a\0",
        ] {
            assert!(relative_to_export(bad, "/export").is_err(), "{bad:?}");
        }
        assert!(matches!(
            relative_to_export("/export/../x", "/export"),
            Err(PathError::DotComponent { .. })
        ));
        assert!(matches!(
            relative_to_export("/../x", "/"),
            Err(PathError::DotComponent { .. })
        ));
    }

    #[test]
    fn relative_to_export_reads_nfs_subdir_paths() {
        assert_eq!(
            relative_to_export("/srv/nfs/default-data-pvc-9f1c", "/srv/nfs").unwrap(),
            path("default-data-pvc-9f1c")
        );
    }

    // --- properties ---------------------------------------------------------------------------

    const KEYS: [&str; 4] = ["app", "a.b", "nfs.io/x", "k"];

    fn hostile_value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "",
                ".",
                "..",
                "../x",
                "/etc",
                "a/b",
                "x\0y",
                "/",
                ".a",
                "a.",
                "${.PVC.name}",
                STAGING_DIR,
                "é",
            ])
            .prop_map(str::to_owned),
            "[a-z.\\-/]{0,6}",
            prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
            "[a-zé]{240,300}",
        ]
    }

    fn pattern_piece() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec!["app", "a.b", "nfs.io/x", "k", "missing"]);
        prop_oneof![
            prop::sample::select(vec![
                "/",
                "/",
                "a",
                ".",
                "..",
                "-",
                "$",
                "{",
                "}",
                "${",
                "\0",
                "é",
                ".nfs-subdir-provisioner",
            ])
            .prop_map(str::to_owned),
            "[a-z]{200,260}",
            prop::sample::select(vec![
                "${.PVC.namespace}",
                "${.PVC.name}",
                "${.PV.name}",
                "${.PVC.foo}"
            ])
            .prop_map(str::to_owned),
            key.clone().prop_map(|k| format!("${{.PVC.labels.{k}}}")),
            key.prop_map(|k| format!("${{.PVC.annotations.{k}}}")),
        ]
    }

    fn value_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
            hostile_value(),
            0..4,
        )
    }

    fn export() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9]{1,4}", 0..3).prop_map(|c| format!("/{}", c.join("/")))
    }

    proptest! {
        #[test]
        fn rendered_paths_are_always_safe_and_round_trip(
            pieces in prop::collection::vec(pattern_piece(), 0..8),
            namespace in hostile_value(),
            name in hostile_value(),
            pv_name in hostile_value(),
            labels in value_map(),
            annotations in value_map(),
            export in export(),
        ) {
            let pattern = pieces.concat();
            let claim = ClaimNames {
                namespace: &namespace,
                name: &name,
                labels: &labels,
                annotations: &annotations,
                pv_name: &pv_name,
            };
            if let Ok(volume) = render_pattern(&pattern, &claim) {
                assert_safe(&volume);
                let export = normalize_export_path(&export).unwrap();
                let nfs_path = server_path(&export, &volume);
                let inside = format!("{}/", export.trim_end_matches('/'));
                prop_assert!(nfs_path.starts_with(&inside));
                prop_assert_ne!(&nfs_path, &export);
                // Already clean: no "..", "." or empty component anywhere, so lexically inside.
                prop_assert_eq!(normalize_export_path(&nfs_path).unwrap(), nfs_path.clone());
                prop_assert_eq!(relative_to_export(&nfs_path, &export).unwrap(), volume);
            }
            if let Ok(volume) = default_path(&claim) {
                assert_safe(&volume);
                prop_assert_eq!(volume.components().len(), 1);
            }
        }

        #[test]
        fn parsers_never_accept_unsafe_paths(input in "[a./\0é-]{0,12}", export in export()) {
            if let Ok(volume) = VolumePath::parse(&input) {
                assert_safe(&volume);
                prop_assert_eq!(volume.to_string(), input.clone());
            }
            if let Ok(volume) = relative_to_export(&input, &export) {
                assert_safe(&volume);
            }
            if let Ok(normalised) = normalize_export_path(&input) {
                prop_assert_eq!(normalize_export_path(&normalised).unwrap(), normalised);
            }
        }

        #[test]
        fn shorten_is_bounded_deterministic_and_keeps_short_names(
            name in prop::collection::vec(any::<char>(), 0..400).prop_map(String::from_iter),
        ) {
            let short = shorten_component(&name);
            prop_assert!(short.len() <= NAME_MAX);
            prop_assert!(std::str::from_utf8(short.as_bytes()).is_ok());
            prop_assert_eq!(&short, &shorten_component(&name));
            prop_assert_eq!(shorten_component(&short), short.clone());
            if name.len() <= NAME_MAX {
                prop_assert_eq!(short, name);
            }
        }

        #[test]
        fn names_differing_only_past_the_cut_shorten_differently(
            common in "[a-zé]{200,300}",
            tail_a in "[a-z]{0,3}",
            tail_b in "[a-z]{0,3}",
        ) {
            prop_assume!(tail_a != tail_b);
            let (a, b) = (format!("{common}{tail_a}"), format!("{common}{tail_b}"));
            prop_assert_ne!(shorten_component(&a), shorten_component(&b));
        }

        #[test]
        fn overlaps_is_reflexive_and_symmetric(
            a in prop::collection::vec("[ab]{1,2}", 1..4),
            b in prop::collection::vec("[ab]{1,2}", 1..4),
        ) {
            let a = VolumePath::from_components(a).unwrap();
            let b = VolumePath::from_components(b).unwrap();
            prop_assert!(a.overlaps(&a));
            prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
            let (a_parts, b_parts) = (a.components(), b.components());
            let nested = a_parts.starts_with(b_parts) || b_parts.starts_with(a_parts);
            prop_assert_eq!(a.overlaps(&b), nested);
        }

        #[test]
        fn archive_names_are_bounded_and_distinct_per_attempt(
            leaf in prop_oneof!["[a-z-]{1,20}", "[a-zé]{230,255}"]
                .prop_filter("fits NAME_MAX", |leaf| leaf.len() <= NAME_MAX),
            n in 0u32..50,
            m in prop_oneof![0u32..50, Just(u32::MAX)],
        ) {
            let (x, y) = (archive_name(&leaf, n), archive_name(&leaf, m));
            prop_assert!(x.len() <= NAME_MAX && y.len() <= NAME_MAX);
            prop_assert_eq!(n == m, x == y);
        }
    }
}
