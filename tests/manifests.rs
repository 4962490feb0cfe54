//! The shipped manifests: every YAML file in rbac/ and deploy/ parses into its Kubernetes type,
//! every kustomization lists files that exist, and rbac/ grants exactly the access the code
//! declares in `k8s::ACCESS`.
#![allow(clippy::unwrap_used)] // a test: a failed read is a failed test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use nfs_subdir_provisioner::k8s::ACCESS;
use serde_yaml_ng::Value;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, path: &Path) {
    if let Err(e) = serde_yaml_ng::from_str::<T>(text) {
        panic!("{} does not parse as its kind: {e}", path.display());
    }
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let mut files = Vec::new();
    yaml_files(&root().join("rbac"), &mut files);
    yaml_files(&root().join("deploy"), &mut files);
    assert!(files.len() >= 10, "found only {files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match kind.as_str() {
            "Namespace" => parse::<Namespace>(&text, &path),
            "ServiceAccount" => parse::<ServiceAccount>(&text, &path),
            "ClusterRole" => parse::<ClusterRole>(&text, &path),
            "ClusterRoleBinding" => parse::<ClusterRoleBinding>(&text, &path),
            "Role" => parse::<Role>(&text, &path),
            "RoleBinding" => parse::<RoleBinding>(&text, &path),
            "Deployment" => parse::<Deployment>(&text, &path),
            "StorageClass" => parse::<StorageClass>(&text, &path),
            "PersistentVolumeClaim" => parse::<PersistentVolumeClaim>(&text, &path),
            "Pod" => parse::<Pod>(&text, &path),
            "Service" => parse::<Service>(&text, &path),
            "Kustomization" | "Component" => {
                let dir = path.parent().unwrap();
                for key in ["resources", "patches", "components"] {
                    for item in value.get(key).and_then(Value::as_sequence).into_iter().flatten() {
                        let file = item.as_str().or_else(|| item.get("path").and_then(Value::as_str));
                        if let Some(file) = file {
                            assert!(dir.join(file).exists(), "{} lists missing {file}", path.display());
                        }
                    }
                }
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
}

fn granted(rules: &[PolicyRule], namespaced: bool) -> BTreeSet<(String, String, String, bool)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "wildcard verb in rbac/");
                    assert_ne!(resource, "*", "wildcard resource in rbac/");
                    out.insert((group.clone(), resource.clone(), verb.clone(), namespaced));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_the_access_the_code_uses() {
    let read = |f: &str| std::fs::read_to_string(root().join("rbac").join(f)).unwrap();
    let cluster: ClusterRole = serde_yaml_ng::from_str(&read("clusterrole.yaml")).unwrap();
    let role: Role = serde_yaml_ng::from_str(&read("role.yaml")).unwrap();
    let mut grants = granted(cluster.rules.as_deref().unwrap_or_default(), false);
    grants.extend(granted(role.rules.as_deref().unwrap_or_default(), true));
    let used: BTreeSet<(String, String, String, bool)> = ACCESS
        .iter()
        .map(|(g, r, v, n)| ((*g).into(), (*r).into(), (*v).into(), *n))
        .collect();
    let missing: Vec<_> = used.difference(&grants).collect();
    let extra: Vec<_> = grants.difference(&used).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "rbac/ lacks {missing:?} and grants unused {extra:?}"
    );
}

#[test]
fn bindings_name_the_shipped_service_account_and_roles() {
    let read = |f: &str| std::fs::read_to_string(root().join("rbac").join(f)).unwrap();
    let sa: ServiceAccount = serde_yaml_ng::from_str(&read("serviceaccount.yaml")).unwrap();
    let crb: ClusterRoleBinding = serde_yaml_ng::from_str(&read("clusterrolebinding.yaml")).unwrap();
    let rb: RoleBinding = serde_yaml_ng::from_str(&read("rolebinding.yaml")).unwrap();
    let cr: ClusterRole = serde_yaml_ng::from_str(&read("clusterrole.yaml")).unwrap();
    let role: Role = serde_yaml_ng::from_str(&read("role.yaml")).unwrap();
    for subjects in [crb.subjects.unwrap_or_default(), rb.subjects.unwrap_or_default()] {
        assert!(
            subjects
                .iter()
                .any(|s| s.kind == "ServiceAccount" && Some(&s.name) == sa.metadata.name.as_ref())
        );
    }
    assert_eq!(Some(&crb.role_ref.name), cr.metadata.name.as_ref());
    assert_eq!(Some(&rb.role_ref.name), role.metadata.name.as_ref());
}
