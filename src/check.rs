//! `nfs-subdir-provisioner check`: the preflight an admin runs before deploying, with the
//! deployment's own configuration and credentials. It asks the API server whether every verb in
//! [`k8s::ACCESS`] is allowed (SelfSubjectAccessReview, which every authenticated identity may
//! create), proves the export takes writes and has space, and validates the parameters of every
//! StorageClass naming this provisioner. One checklist line per check; any failure fails the run.

use std::fmt::Write as _;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::config::Config;
use crate::core::export::{Access, client_options};
use crate::core::params::ClassParams;
use crate::health::Health;
use crate::k8s;
use crate::metrics::Metrics;
use crate::storage::{Exports, Storage};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub ok: bool,
    pub what: String,
}

fn pass(what: impl Into<String>) -> Item {
    Item {
        ok: true,
        what: what.into(),
    }
}

fn fail(what: impl Into<String>) -> Item {
    Item {
        ok: false,
        what: what.into(),
    }
}

/// The checklist as printed, ending in a verdict line.
pub fn render(items: &[Item]) -> String {
    let mut out = String::new();
    for item in items {
        let mark = if item.ok { "[ok]  " } else { "[FAIL]" };
        let _ = writeln!(out, "{mark} {}", item.what);
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    if failed == 0 {
        let _ = writeln!(out, "all {} checks passed", items.len());
    } else {
        let _ = writeln!(out, "{failed} of {} checks failed", items.len());
    }
    out
}

fn gib(bytes: u64) -> String {
    // Display only; the precision loss of u64 -> f64 is irrelevant at this scale.
    #[allow(clippy::cast_precision_loss)]
    let g = bytes as f64 / f64::from(1u32 << 30);
    format!("{g:.1} GiB")
}

/// Runs every check; the caller prints [`render`] and exits non-zero unless all passed.
pub async fn run(config: &Config) -> Vec<Item> {
    let metrics = Metrics::new();
    let exports = Exports::from_config(config, Health::new(metrics.clone()), metrics);
    let mut items = Vec::new();
    match exports.mounted() {
        Some(mounted) => {
            let at = format!("mounted at {}", config.mount_path.display());
            items.extend(export_checks(mounted, &at).await);
        }
        None => items.push(pass(
            "no mounted export (NFS_SERVER and NFS_PATH unset): only StorageClasses naming server and share are served",
        )),
    }
    let client = match k8s::client(config).await {
        Ok(client) => client,
        Err(error) => {
            items.push(fail(format!("Kubernetes client: {error}")));
            return items;
        }
    };
    match client.apiserver_version().await {
        Ok(version) => items.push(pass(format!(
            "API server answers (Kubernetes {}.{}, {})",
            version.major, version.minor, version.git_version
        ))),
        Err(error) => {
            items.push(fail(format!("API server unreachable: {error}")));
            return items;
        }
    }
    let namespace = k8s::own_namespace(config, &client);
    items.extend(access_checks(&client, &namespace).await);
    items.extend(class_checks(&client, &config.provisioner_name, &exports).await);
    items
}

async fn export_checks(storage: &Storage, at: &str) -> Vec<Item> {
    let name = storage.name().to_owned();
    let mut items = Vec::new();
    match storage.probe().await {
        Ok(()) => items.push(pass(format!("export {name} {at} takes writes"))),
        Err(error) => {
            items.push(fail(format!("export {name} {at}: {error}")));
            return items;
        }
    }
    match storage.capacity().await {
        Ok(c) if c.available_bytes > 0 => items.push(pass(format!(
            "export {name} has {} free of {}",
            gib(c.available_bytes),
            gib(c.total_bytes)
        ))),
        Ok(c) => items.push(fail(format!(
            "export {name} is full (0 bytes free of {})",
            gib(c.total_bytes)
        ))),
        Err(error) => items.push(fail(format!("export {name}: {error}"))),
    }
    items
}

async fn access_checks(client: &Client, namespace: &str) -> Vec<Item> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut items = Vec::new();
    for &(group, resource, verb, namespaced) in k8s::ACCESS {
        let qualified = if group.is_empty() {
            resource.to_owned()
        } else {
            format!("{group}/{resource}")
        };
        let scope = if namespaced {
            format!(" in namespace {namespace}")
        } else {
            String::new()
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_owned()),
                    // "persistentvolumeclaims/status": RBAC's spelling of a subresource.
                    resource: Some(resource.split('/').next().unwrap_or(resource).to_owned()),
                    subresource: resource.split_once('/').map(|(_, sub)| sub.to_owned()),
                    verb: Some(verb.to_owned()),
                    namespace: namespaced.then(|| namespace.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let what = format!("may {verb} {qualified}{scope}");
        items.push(match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) => match answer.status {
                Some(status) if status.allowed => pass(what),
                Some(status) => fail(format!(
                    "{what}: denied{}; apply rbac/ for this service account",
                    status
                        .reason
                        .filter(|r| !r.is_empty())
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                )),
                None => fail(format!("{what}: the API server gave no answer")),
            },
            Err(error) => fail(format!("{what}: could not ask: {error}")),
        });
    }
    items
}

async fn class_checks(client: &Client, provisioner: &str, exports: &Exports) -> Vec<Item> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let list = match classes.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(error) => return vec![fail(format!("list StorageClasses: {error}"))],
    };
    let ours: Vec<_> = list
        .items
        .iter()
        .filter(|c| c.provisioner == provisioner)
        .collect();
    if ours.is_empty() {
        return vec![pass(format!(
            "no StorageClass names provisioner {provisioner} yet (nothing to validate)"
        ))];
    }
    let mut items = Vec::new();
    for class in ours {
        let name = class.name_any();
        let params = match ClassParams::parse(&class.parameters.clone().unwrap_or_default()) {
            Ok(params) => params,
            Err(error) => {
                items.push(fail(format!("StorageClass {name}: {error}")));
                continue;
            }
        };
        let Some(export) = params.export.filter(|e| Some(e) != exports.mounted_export()) else {
            items.push(pass(format!("StorageClass {name}: parameters valid")));
            continue;
        };
        match client_options(class.mount_options.as_deref().unwrap_or_default()) {
            Ok(options) => {
                let version = options.version;
                items.push(pass(format!(
                    "StorageClass {name}: parameters valid (export {export}, served directly over {version})"
                )));
                let over = format!("over direct {version}");
                match exports.get(&export, &Access::Direct(options)) {
                    Ok(storage) => items.extend(export_checks(&storage, &over).await),
                    Err(error) => items.push(fail(format!("export {export}: {error}"))),
                }
            }
            Err(error) => items.push(fail(format!("StorageClass {name}: {error}"))),
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_counts_failures() {
        let all = render(&[pass("a"), pass("b")]);
        assert_eq!(all, "[ok]   a\n[ok]   b\nall 2 checks passed\n");
        let some = render(&[pass("a"), fail("b: denied")]);
        assert_eq!(some, "[ok]   a\n[FAIL] b: denied\n1 of 2 checks failed\n");
    }

    #[test]
    fn sizes_are_shown_in_gib() {
        assert_eq!(gib(3 << 30), "3.0 GiB");
        assert_eq!(gib(1 << 29), "0.5 GiB");
    }
}
