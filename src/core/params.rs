//! StorageClass `parameters` parsed into [`ClassParams`]: the keys nfs-subdir-external-provisioner
//! understands (`pathPattern`, `onDelete`, `archiveOnDelete`) plus `mode`, `uid` and `gid`, and
//! `server` and `share` (csi-driver-nfs's names) for an export served without a mount.
//! Unknown keys are refused so a typo never passes silently.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::storage::v1::StorageClass;

use crate::core::export::{Access, Export, client_options};
use crate::core::naming::{normalize_export_path, pattern_depth};

/// What happens to a volume's directory when its claim is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    /// Rename to `archived-<dir>` (nfs-subdir-external-provisioner's default).
    Archive,
    Delete,
    Retain,
}

impl OnDelete {
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Archive => "archive",
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
        }
    }

    /// Strict form, as recorded on our PVs.
    pub fn parse(value: &str) -> Option<OnDelete> {
        match value {
            "archive" => Some(OnDelete::Archive),
            "delete" => Some(OnDelete::Delete),
            "retain" => Some(OnDelete::Retain),
            _ => None,
        }
    }

    /// nfs-subdir-external-provisioner's reading of a class at delete time, used for volumes it made
    /// (which carry no record of their policy): `onDelete` delete/retain wins, an unrecognised
    /// `onDelete` falls through to `archiveOnDelete`, and anything unparsable archives, because
    /// archiving never loses data.
    pub fn from_legacy_class(params: &BTreeMap<String, String>) -> OnDelete {
        if let Some(policy) = params.get("onDelete").and_then(|v| OnDelete::parse(v)) {
            return policy;
        }
        match params.get("archiveOnDelete").map(|v| parse_go_bool(v)) {
            Some(Some(false)) => OnDelete::Delete,
            _ => OnDelete::Archive,
        }
    }
}

impl fmt::Display for OnDelete {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Directory ownership and permissions applied after the directory is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMode {
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// nfs-subdir-external-provisioner makes every directory 0777; existing workloads rely on it.
pub const DEFAULT_MODE: u32 = 0o777;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassParams {
    pub path_pattern: Option<String>,
    pub on_delete: OnDelete,
    pub dir: DirMode,
    /// `server` and `share` (csi-driver-nfs's names): an export served directly, without a mount.
    pub export: Option<Export>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown StorageClass parameter(s) {}; known: {}", quoted(.0), KNOWN.join(", "))]
    Unknown(Vec<String>),
    #[error("StorageClass parameter {key}={value:?} is invalid: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

fn quoted(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const KNOWN: [&str; 8] = [
    "pathPattern",
    "onDelete",
    "archiveOnDelete",
    "mode",
    "uid",
    "gid",
    "server",
    "share",
];

/// Go's strconv.ParseBool, which nfs-subdir-external-provisioner used for its booleans.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl ClassParams {
    pub fn parse(params: &BTreeMap<String, String>) -> Result<ClassParams, ParamError> {
        let unknown: Vec<String> = params
            .keys()
            .filter(|k| !KNOWN.contains(&k.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ParamError::Unknown(unknown));
        }
        let invalid = |key: &'static str, value: &str, expected: &'static str| ParamError::Invalid {
            key,
            value: value.to_owned(),
            expected,
        };

        let archive_on_delete = match params.get("archiveOnDelete") {
            None => None,
            Some(v) => Some(parse_go_bool(v).ok_or_else(|| invalid("archiveOnDelete", v, "true or false"))?),
        };
        // As in nfs-subdir-external-provisioner, onDelete wins over archiveOnDelete.
        let on_delete = match params.get("onDelete") {
            Some(v) => {
                OnDelete::parse(v).ok_or_else(|| invalid("onDelete", v, "one of delete, retain, archive"))?
            }
            None if archive_on_delete == Some(false) => OnDelete::Delete,
            None => OnDelete::Archive,
        };
        let mode = match params.get("mode") {
            None => DEFAULT_MODE,
            Some(v) => u32::from_str_radix(v.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777 && !v.is_empty())
                .ok_or_else(|| invalid("mode", v, "an octal mode such as 0770 or 2775"))?,
        };
        let id = |key: &'static str| -> Result<Option<u32>, ParamError> {
            params
                .get(key)
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| invalid(key, v, "a numeric id such as 1000"))
                })
                .transpose()
        };
        let path_pattern = match params.get("pathPattern") {
            Some(p) if p.is_empty() => return Err(invalid("pathPattern", p, "a non-empty pattern")),
            other => other.cloned(),
        };
        let export = match (params.get("server"), params.get("share")) {
            (None, None) => None,
            (Some(server), Some(share)) => {
                let server = server.trim();
                if server.is_empty() || server.contains(['/', ' ']) {
                    return Err(invalid("server", server, "a host name or IP address"));
                }
                let path = normalize_export_path(share.trim())
                    .map_err(|_| invalid("share", share, "an absolute exported path such as /export"))?;
                Some(Export {
                    server: server.to_owned(),
                    path,
                })
            }
            (Some(v), None) => return Err(invalid("server", v, "set together with share")),
            (None, Some(v)) => return Err(invalid("share", v, "set together with server")),
        };
        Ok(ClassParams {
            export,
            path_pattern,
            on_delete,
            dir: DirMode {
                mode,
                uid: id("uid")?,
                gid: id("gid")?,
            },
        })
    }
}

impl ClassParams {
    /// How many components the paths of this class's volumes have (the default path: one); `None`
    /// for a pattern that renders nothing.
    pub fn depth(&self) -> Option<usize> {
        self.path_pattern.as_deref().map_or(Some(1), pattern_depth)
    }
}

/// Every export the classes of `provisioner` serve: `mounted` (NFS_SERVER/NFS_PATH, reached
/// through its mount) first, then each direct one a class names (`server` and `share`, reached
/// with the class's mount options), once. A class with broken parameters or options names
/// nothing: its claims are refused with the reason.
pub fn served_exports<'a>(
    classes: impl IntoIterator<Item = &'a StorageClass>,
    provisioner: &str,
    mounted: Option<&Export>,
) -> Vec<(Export, Access)> {
    gather_exports(
        mounted,
        classes
            .into_iter()
            .filter_map(|class| class_export(class, provisioner, mounted)),
    )
}

/// The direct export `class` names for [`served_exports`], if it is a class of `provisioner`
/// naming one other than `mounted`, with sound parameters and options.
pub fn class_export(
    class: &StorageClass,
    provisioner: &str,
    mounted: Option<&Export>,
) -> Option<(Export, Access)> {
    if class.provisioner != provisioner {
        return None;
    }
    let params = ClassParams::parse(&class.parameters.clone().unwrap_or_default()).ok()?;
    let export = params.export.filter(|e| Some(e) != mounted)?;
    let options = client_options(class.mount_options.as_deref().unwrap_or_default()).ok()?;
    Some((export, Access::Direct(options)))
}

/// `mounted` first, then each of `direct` ([`class_export`]s), once: [`served_exports`].
pub fn gather_exports(
    mounted: Option<&Export>,
    direct: impl IntoIterator<Item = (Export, Access)>,
) -> Vec<(Export, Access)> {
    let mut exports: Vec<(Export, Access)> = mounted
        .map(|m| (m.clone(), Access::Mounted))
        .into_iter()
        .collect();
    for entry in direct {
        if !exports.contains(&entry) {
            exports.push(entry);
        }
    }
    exports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn no_parameters_archive_with_mode_0777_like_nfs_subdir() {
        let p = ClassParams::parse(&params(&[])).unwrap();
        assert_eq!(p.on_delete, OnDelete::Archive);
        assert_eq!(
            p.dir,
            DirMode {
                mode: 0o777,
                uid: None,
                gid: None
            }
        );
        assert_eq!(p.path_pattern, None);
    }

    #[test]
    fn server_and_share_name_a_direct_export_together() {
        let p = ClassParams::parse(&params(&[("server", "nfs1.example"), ("share", "/srv/k8s/")])).unwrap();
        assert_eq!(
            p.export,
            Some(Export {
                server: "nfs1.example".into(),
                path: "/srv/k8s".into()
            })
        );
        assert_eq!(ClassParams::parse(&params(&[])).unwrap().export, None);
        for bad in [
            vec![("server", "nfs1")],
            vec![("share", "/srv")],
            vec![("server", ""), ("share", "/srv")],
            vec![("server", "nfs1"), ("share", "srv")],
            vec![("server", "nfs1"), ("share", "/srv/../etc")],
        ] {
            assert!(
                matches!(ClassParams::parse(&params(&bad)), Err(ParamError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn archive_on_delete_false_deletes() {
        let p = ClassParams::parse(&params(&[("archiveOnDelete", "false")])).unwrap();
        assert_eq!(p.on_delete, OnDelete::Delete);
    }

    #[test]
    fn on_delete_wins_over_archive_on_delete() {
        let p = ClassParams::parse(&params(&[("onDelete", "retain"), ("archiveOnDelete", "false")])).unwrap();
        assert_eq!(p.on_delete, OnDelete::Retain);
    }

    #[test]
    fn unknown_parameter_is_refused_by_name() {
        let err = ClassParams::parse(&params(&[("archiveOndelete", "false")])).unwrap_err();
        assert_eq!(err, ParamError::Unknown(vec!["archiveOndelete".into()]));
        assert!(err.to_string().contains("\"archiveOndelete\""));
    }

    #[test]
    fn bad_values_are_refused_naming_key_and_value() {
        for (k, v) in [
            ("onDelete", "Delete"),
            ("archiveOnDelete", "maybe"),
            ("mode", "0999"),
            ("mode", "77777"),
            ("mode", ""),
            ("uid", "-1"),
            ("gid", "root"),
            ("pathPattern", ""),
        ] {
            let err = ClassParams::parse(&params(&[(k, v)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(k) && text.contains(&format!("{v:?}")), "{text}");
        }
    }

    #[test]
    fn mode_uid_gid_tighten_the_directory() {
        let p = ClassParams::parse(&params(&[("mode", "2770"), ("uid", "1000"), ("gid", "2000")])).unwrap();
        assert_eq!(
            p.dir,
            DirMode {
                mode: 0o2770,
                uid: Some(1000),
                gid: Some(2000)
            }
        );
        let p = ClassParams::parse(&params(&[("mode", "0750")])).unwrap();
        assert_eq!(p.dir.mode, 0o750);
    }

    #[test]
    fn legacy_class_reading_follows_nfs_subdir() {
        assert_eq!(OnDelete::from_legacy_class(&params(&[])), OnDelete::Archive);
        assert_eq!(
            OnDelete::from_legacy_class(&params(&[("onDelete", "delete")])),
            OnDelete::Delete
        );
        assert_eq!(
            OnDelete::from_legacy_class(&params(&[("onDelete", "bogus"), ("archiveOnDelete", "false")])),
            OnDelete::Delete
        );
        assert_eq!(
            OnDelete::from_legacy_class(&params(&[("archiveOnDelete", "nope")])),
            OnDelete::Archive
        );
    }

    #[test]
    fn served_exports_are_the_mounted_one_then_each_class_export_once() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let class = |name: &str, provisioner: &str, pairs: &[(&str, &str)], options: &[&str]| StorageClass {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            provisioner: provisioner.into(),
            parameters: Some(params(pairs)),
            mount_options: Some(options.iter().map(|o| (*o).to_owned()).collect()),
            ..Default::default()
        };
        let mounted = Export {
            server: "m".into(),
            path: "/m".into(),
        };
        let direct = [("server", "d"), ("share", "/d")];
        let classes = [
            class("a", "me", &direct, &[]),
            class("b", "me", &direct, &[]),
            class("c", "other", &[("server", "o"), ("share", "/o")], &[]),
            class("d", "me", &[("server", "m"), ("share", "/m")], &[]),
            class("e", "me", &[("server", "x"), ("share", "/x")], &["nfsvers=4.0"]),
            class(
                "f",
                "me",
                &[("onDelete", "explode"), ("server", "y"), ("share", "/y")],
                &[],
            ),
            class("g", "me", &[], &[]),
        ];
        let d = Export {
            server: "d".into(),
            path: "/d".into(),
        };
        assert_eq!(
            served_exports(&classes, "me", Some(&mounted)),
            [
                (mounted.clone(), Access::Mounted),
                (d.clone(), Access::Direct(Default::default()))
            ]
        );
        // Without a mount, a class naming that export is served directly.
        assert_eq!(
            served_exports(&classes, "me", None),
            [
                (d, Access::Direct(Default::default())),
                (mounted, Access::Direct(Default::default()))
            ]
        );
    }

    #[test]
    fn a_class_knows_how_deep_its_paths_are() {
        let depth = |pairs: &[(&str, &str)]| ClassParams::parse(&params(pairs)).unwrap().depth();
        assert_eq!(depth(&[]), Some(1));
        assert_eq!(
            depth(&[("pathPattern", "${.PVC.namespace}-${.PVC.name}")]),
            Some(1)
        );
        assert_eq!(
            depth(&[("pathPattern", "/${.PVC.namespace}/${.PVC.name}/")]),
            Some(2)
        );
        assert_eq!(
            depth(&[(
                "pathPattern",
                "vols//${.PVC.annotations.nfs.io/storage-path}/data"
            )]),
            Some(3)
        );
        assert_eq!(depth(&[("pathPattern", "${.PVC.bogus}")]), None);
        assert_eq!(depth(&[("pathPattern", "/")]), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(KNOWN.to_vec()).prop_map(str::to_owned),
                "[a-zA-Z]{1,12}",
            ]
        }

        proptest! {
            /// Whatever an admin writes: no panic, and what is accepted is well-formed.
            #[test]
            fn accepted_parameters_are_well_formed(
                params in prop::collection::btree_map(key(), ".{0,24}", 0..8),
                options in prop::collection::vec("[a-z]{0,9}(=[0-9a-z./]{0,6})?(,[a-z]{0,9}=[0-9]{0,6})?", 0..4),
            ) {
                if let Ok(p) = ClassParams::parse(&params) {
                    prop_assert!(p.dir.mode <= 0o7777);
                    prop_assert!(params.keys().all(|k| KNOWN.contains(&k.as_str())));
                    if let Some(export) = p.export {
                        prop_assert!(!export.server.is_empty());
                        prop_assert_eq!(normalize_export_path(&export.path).ok(), Some(export.path.clone()));
                    }
                }
                if let Ok(o) = client_options(&options) {
                    prop_assert!(!o.timeout.is_zero());
                    prop_assert!(o.port != Some(0) && o.mount_port != Some(0));
                }
            }
        }
    }
}
