//! The Helm chart in charts/nfs-subdir-provisioner, rendered by real Helm, and deploy/ as the real
//! kustomize builds it.
//!
//! With values equal to deploy/'s, the chart renders deploy/'s objects up to the labels Helm adds.
//! Values files written for nfs-subdir-external-provisioner's chart (4.0.18) render what a user of
//! that chart expects, the README examples of that chart included; `values.schema.json` refuses a
//! misspelled key; the optional monitoring objects carry the rules and dashboard of `files/`.
//!
//! Tools: Helm is $HELM, else `helm` on PATH, else Helm's Go SDK through helm-python-sdk
//! ($HELM_PYTHON names the interpreter, default python3; the `HELM_SDK_SHIM` below gives it
//! helm's command line). kustomize is $KUSTOMIZE, else `kustomize` on PATH, else `kubectl
//! kustomize`. scripts/test.sh provides both. A test without them says SKIPPED on stderr and
//! passes, unless CHART_REQUIRE_TOOLS=1 makes the absence a failure.
#![allow(clippy::unwrap_used)] // a test: a failed read is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::storage::v1::StorageClass;
use nfs_subdir_provisioner::k8s::ACCESS;
use serde_json::{Value as Json, json};

const RELEASE: &str = "nfs-subdir-provisioner";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    root().join("charts/nfs-subdir-provisioner")
}

fn read_yaml(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every non-empty document of a YAML stream.
fn documents(text: &str) -> Vec<Json> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| <Json as serde::Deserialize>::deserialize(doc).unwrap_or_else(|e| panic!("{e}\n{text}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tools.
// ---------------------------------------------------------------------------------------------

/// helm's command line (`version`; `template NAME CHART -n NS -f FILE --set EXPR --set-string
/// EXPR`; `lint --strict -f FILE CHART`) over helm-python-sdk, Helm's Go SDK as a library on
/// PyPI, for machines where no helm binary can be installed. Values combine as helm combines
/// them: files, then `--set`s, each merged over the last; rendering coalesces them with the
/// chart's defaults and validates them against its schema.
const HELM_SDK_SHIM: &str = r#"
import sys, os
import helm_python as helm
cmd, args, layers, ns, pos, strict = sys.argv[1], sys.argv[2:], [], None, [], False
while args:
    a = args.pop(0)
    if a in ("-f", "--values"): layers.append(helm.values_from_yaml(open(args.pop(0)).read()))
    elif a == "--set": layers.append(helm.parse_set_string(args.pop(0)))
    elif a == "--set-string": layers.append(helm.parse_set_string_values(args.pop(0)))
    elif a in ("-n", "--namespace"): ns = args.pop(0)
    elif a == "--strict": strict = True
    elif a.startswith("-"): sys.exit(f"shim: unsupported flag {a}")
    else: pos.append(a)
def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict): merge(base[k], v)
        else: base[k] = v
values = {}
for layer in layers:
    merge(values, layer)
if cmd == "version":
    print("helm-python-sdk, Helm SDK", helm.helm_sdk_version())
elif cmd == "template":
    try:
        with helm.Chart.load(pos[1]) as chart:
            out = chart.render(values, name=pos[0], namespace=ns or "default", is_install=True)
    except helm.HelmError as e:
        sys.exit(f"Error: {e}")
    for path in sorted(out):
        if not os.path.basename(path).startswith("_") and path.endswith((".yaml", ".yml")):
            print(f"---\n# Source: {path}\n{out[path]}")
elif cmd == "lint":
    report = helm.lint(pos[0], values, strict=strict)
    print(report)
    bad = [m for m in report["messages"] if m["severity"] >= (2 if strict else 3)]
    sys.exit(1 if bad or report.get("errors") else 0)
else:
    sys.exit(f"shim: unsupported command {cmd}")
"#;

struct Tools {
    helm: Vec<OsString>,
    kustomize: Vec<OsString>,
    /// Holds the shim.
    _dir: tempfile::TempDir,
}

fn succeeds(cmd: &[OsString], args: &[&str]) -> bool {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn find_tools() -> Result<Tools, String> {
    let dir = tempfile::tempdir().unwrap();
    let binary = vec![std::env::var_os("HELM").unwrap_or_else(|| "helm".into())];
    let helm = if succeeds(&binary, &["version"]) {
        binary
    } else {
        let shim = dir.path().join("helm_shim.py");
        std::fs::write(&shim, HELM_SDK_SHIM).unwrap();
        let python = std::env::var_os("HELM_PYTHON").unwrap_or_else(|| "python3".into());
        let cmd = vec![python, shim.into_os_string()];
        if !succeeds(&cmd, &["version"]) {
            return Err(
                "no helm ($HELM, `helm` on PATH, or helm-python-sdk for $HELM_PYTHON/python3)".into(),
            );
        }
        cmd
    };
    let kustomize = [
        std::env::var_os("KUSTOMIZE").map(|k| vec![k, "build".into()]),
        Some(vec!["kustomize".into(), "build".into()]),
        Some(vec!["kubectl".into(), "kustomize".into()]),
    ]
    .into_iter()
    .flatten()
    .find(|cmd| succeeds(&cmd[..1], &["version"]) || succeeds(&cmd[..1], &["version", "--client"]))
    .ok_or("no kustomize ($KUSTOMIZE, `kustomize` on PATH, or `kubectl kustomize`)")?;
    Ok(Tools {
        helm,
        kustomize,
        _dir: dir,
    })
}

/// The tools, or `None` after a loud SKIPPED line for `test` (a failure under CHART_REQUIRE_TOOLS).
fn tools(test: &str) -> Option<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    match TOOLS.get_or_init(find_tools) {
        Ok(tools) => Some(tools),
        Err(missing) => {
            assert!(
                std::env::var_os("CHART_REQUIRE_TOOLS").is_none(),
                "CHART_REQUIRE_TOOLS is set, but there is {missing}"
            );
            eprintln!("\n*** SKIPPED {test}: {missing} (scripts/test.sh installs both) ***\n");
            None
        }
    }
}

impl Tools {
    fn run(&self, cmd: &[OsString], args: &[&std::ffi::OsStr]) -> Result<String, String> {
        let out = Command::new(&cmd[0]).args(&cmd[1..]).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap())
        } else {
            Err(format!("{stderr}{}", String::from_utf8_lossy(&out.stdout)))
        }
    }

    /// `helm template` of the chart: the objects, or helm's error.
    fn template(&self, release: &str, namespace: &str, values: &Values) -> Result<Vec<Json>, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<OsString> = vec!["template".into(), release.into(), chart_dir().into()];
        args.extend(["--namespace".into(), namespace.into()]);
        for (i, file) in values.files.iter().enumerate() {
            let path = dir.path().join(format!("values-{i}.yaml"));
            std::fs::write(&path, serde_yaml_ng::to_string(file).unwrap()).unwrap();
            args.extend(["-f".into(), path.into()]);
        }
        for set in &values.sets {
            args.extend(["--set".into(), (*set).into()]);
        }
        let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
        self.run(&self.helm, &args).map(|out| documents(&out))
    }

    fn kustomize(&self, dir: &Path) -> Vec<Json> {
        let out = self
            .run(&self.kustomize, &[dir.as_os_str()])
            .unwrap_or_else(|e| panic!("kustomize {}: {e}", dir.display()));
        documents(&out)
    }
}

/// Values as given to helm: files (in order), then `--set` expressions.
#[derive(Default)]
struct Values {
    files: Vec<Json>,
    sets: Vec<&'static str>,
}

impl Values {
    /// deploy/'s export, provisioner name and class: the values under which the chart renders
    /// deploy/'s objects.
    fn deploy() -> Self {
        let deployment = read_yaml(&root().join("deploy/deployment.yaml"));
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        let var = |name: &str| {
            env.as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
                .unwrap_or_else(|| panic!("deploy/deployment.yaml has no {name}"))
        };
        let class = read_yaml(&root().join("deploy/storageclass.yaml"));
        Self::default().file(json!({
            "nfs": { "server": var("NFS_SERVER"), "path": var("NFS_PATH") },
            "provisionerName": var("PROVISIONER_NAME"),
            "storageClass": {
                "archiveOnDelete": class["parameters"]["archiveOnDelete"] == "true",
            },
        }))
    }

    /// Adds a values file: YAML text, or `@<path>` of a file in the chart directory.
    fn yaml(self, text: &str) -> Self {
        let value = match text.strip_prefix('@') {
            Some(path) => read_yaml(&chart_dir().join(path)),
            None => serde_yaml_ng::from_str(text).unwrap(),
        };
        self.file(value)
    }

    fn file(mut self, value: Json) -> Self {
        self.files.push(value);
        self
    }

    fn set(mut self, expression: &'static str) -> Self {
        self.sets.push(expression);
        self
    }
}

/// deploy/'s namespace, where the chart is installed for the comparisons.
fn deploy_namespace() -> String {
    read_yaml(&root().join("deploy/kustomization.yaml"))["namespace"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn render(tools: &Tools, release: &str, values: &Values) -> Vec<Json> {
    let objects = tools
        .template(release, &deploy_namespace(), values)
        .unwrap_or_else(|e| panic!("helm template {release}: {e}"));
    assert_typed(&objects);
    objects
}

fn render_fails(tools: &Tools, values: &Values) -> String {
    match tools.template(RELEASE, "default", values) {
        Ok(objects) => panic!("rendered: {}", names(&objects)),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Looking at objects.
// ---------------------------------------------------------------------------------------------

fn find<'a>(objects: &'a [Json], kind: &str, name: &str) -> &'a Json {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {}", names(objects)))
}

fn of_kind<'a>(objects: &'a [Json], kind: &str) -> Vec<&'a Json> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn names(objects: &[Json]) -> String {
    let list: Vec<String> = objects
        .iter()
        .map(key)
        .map(|(k, ns, n)| format!("{k} {ns}/{n}"))
        .collect();
    list.join(", ")
}

fn key(o: &Json) -> (String, String, String) {
    let s = |v: &Json| v.as_str().unwrap_or_default().to_owned();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn by_key(objects: &[Json]) -> BTreeMap<(String, String, String), Json> {
    let map: BTreeMap<_, _> = objects.iter().map(|o| (key(o), o.clone())).collect();
    assert_eq!(map.len(), objects.len(), "duplicate objects: {}", names(objects));
    map
}

fn deployment(objects: &[Json]) -> &Json {
    let all = of_kind(objects, "Deployment");
    assert_eq!(all.len(), 1, "{}", names(objects));
    all[0]
}

fn pod(objects: &[Json]) -> &Json {
    &deployment(objects)["spec"]["template"]["spec"]
}

fn container(objects: &[Json]) -> &Json {
    &pod(objects)["containers"][0]
}

fn env(objects: &[Json]) -> BTreeMap<String, Json> {
    let list = container(objects)["env"].as_array().unwrap();
    let map: BTreeMap<_, _> = list
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e.get("value").or(e.get("valueFrom")).unwrap().clone(),
            )
        })
        .collect();
    assert_eq!(map.len(), list.len(), "duplicate env var in {list:?}");
    map
}

fn storage_classes(objects: &[Json]) -> Vec<StorageClass> {
    of_kind(objects, "StorageClass")
        .into_iter()
        .map(|o| serde_json::from_value(o.clone()).unwrap())
        .collect()
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
}

/// Every object parses into its Kubernetes type, and the Deployment's selector picks its pods.
fn assert_typed(objects: &[Json]) {
    fn parses<T: serde::de::DeserializeOwned>(o: &Json) -> Result<(), serde_json::Error> {
        serde_json::from_value::<T>(o.clone()).map(drop)
    }
    for o in objects {
        let parsed = match o["kind"].as_str().unwrap() {
            "Namespace" => parses::<Namespace>(o),
            "ServiceAccount" => parses::<ServiceAccount>(o),
            "ClusterRole" => parses::<ClusterRole>(o),
            "ClusterRoleBinding" => parses::<ClusterRoleBinding>(o),
            "Role" => parses::<Role>(o),
            "PodDisruptionBudget" if o["apiVersion"] == "policy/v1beta1" => Ok(()),
            "RoleBinding" => parses::<RoleBinding>(o),
            "StorageClass" => parses::<StorageClass>(o),
            "PersistentVolume" => parses::<PersistentVolume>(o),
            "PersistentVolumeClaim" => parses::<PersistentVolumeClaim>(o),
            "Service" => parses::<Service>(o),
            "ConfigMap" => parses::<ConfigMap>(o),
            "PodDisruptionBudget" => parses::<PodDisruptionBudget>(o),
            // Types the API crate no longer carries (PodSecurityPolicy left in 1.25) or never
            // did (the Prometheus Operator's): their fields are checked by the tests that enable them.
            "PodSecurityPolicy" | "ServiceMonitor" | "PodMonitor" | "PrometheusRule" => Ok(()),
            "Deployment" => {
                let d: Deployment = serde_json::from_value(o.clone()).unwrap();
                let spec = d.spec.unwrap();
                let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
                for (k, v) in spec.selector.match_labels.unwrap() {
                    assert_eq!(
                        pod_labels.get(&k),
                        Some(&v),
                        "selector {k}={v} does not match the pods"
                    );
                }
                Ok(())
            }
            other => panic!("unexpected kind {other}"),
        };
        parsed.unwrap_or_else(|e| panic!("{:?} does not parse as its kind: {e}", key(o)));
    }
}

// ---------------------------------------------------------------------------------------------
// The chart against deploy/.
// ---------------------------------------------------------------------------------------------

/// Labels Helm charts put on every object; deploy/ has no Helm release to name.
const HELM_LABELS: &[&str] = &[
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
];

/// Removes app.kubernetes.io/instance from nested label maps (selector, pod template,
/// anti-affinity term): the chart selects by release as well, deploy/ by name only.
fn strip_instance(v: &mut Json) {
    match v {
        Json::Object(map) => {
            for (k, child) in map.iter_mut() {
                if (k == "labels" || k == "matchLabels")
                    && let Some(labels) = child.as_object_mut()
                {
                    labels.remove("app.kubernetes.io/instance");
                }
                strip_instance(child);
            }
        }
        Json::Array(items) => items.iter_mut().for_each(strip_instance),
        _ => {}
    }
}

/// The chart's objects equal deploy/'s: the same kinds, names and namespaces, and every field
/// equal, except that the chart's own labels may add HELM_LABELS (and must keep deploy/'s) and
/// its selectors add app.kubernetes.io/instance.
fn assert_same_objects(chart: &[Json], deploy: &[Json]) {
    let (chart, deploy) = (by_key(chart), by_key(deploy));
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        deploy.keys().collect::<Vec<_>>(),
        "the chart and deploy/ render different objects"
    );
    for (k, want) in &deploy {
        let (mut got, mut want) = (chart[k].clone(), want.clone());
        let labels = |o: &mut Json| match o["metadata"].as_object_mut().unwrap().remove("labels") {
            Some(Json::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        let (got_labels, want_labels) = (labels(&mut got), labels(&mut want));
        for (name, value) in &want_labels {
            assert_eq!(got_labels.get(name), Some(value), "{k:?}: label {name}");
        }
        for name in got_labels.keys() {
            assert!(
                want_labels.contains_key(name) || HELM_LABELS.contains(&name.as_str()),
                "{k:?}: unexpected label {name}"
            );
        }
        strip_instance(&mut got);
        strip_instance(&mut want);
        assert!(
            got == want,
            "{k:?} differs.\nchart:\n{}\ndeploy/:\n{}",
            serde_yaml_ng::to_string(&got).unwrap(),
            serde_yaml_ng::to_string(&want).unwrap()
        );
    }
}

fn without_namespace(objects: Vec<Json>) -> Vec<Json> {
    objects.into_iter().filter(|o| o["kind"] != "Namespace").collect()
}

#[test]
fn deploy_values_render_the_objects_of_deploy() {
    let Some(t) = tools("deploy_values_render_the_objects_of_deploy") else {
        return;
    };
    let chart = render(t, RELEASE, &Values::deploy());
    assert!(
        chart.iter().all(|o| o["kind"] != "Namespace"),
        "Namespace rendered without namespace.create"
    );
    assert_same_objects(&chart, &without_namespace(t.kustomize(&root().join("deploy"))));

    let chart = render(t, RELEASE, &Values::deploy().yaml("namespace: {create: true}"));
    assert_same_objects(&chart, &t.kustomize(&root().join("deploy")));
}

#[test]
fn chown_example_renders_the_chown_component() {
    let Some(t) = tools("chown_example_renders_the_chown_component") else {
        return;
    };
    // The component as its kustomization.yaml says to use it: from a kustomization outside
    // deploy/. kustomize takes relative paths only.
    let dir = tempfile::tempdir().unwrap();
    let up = "../".repeat(dir.path().components().count() - 1);
    let repo = format!("{up}{}", root().display().to_string().trim_start_matches('/'));
    let k = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [format!("{repo}/deploy")],
        "components": [format!("{repo}/deploy/overlays/chown")],
    });
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        serde_yaml_ng::to_string(&k).unwrap(),
    )
    .unwrap();
    let chart = render(t, RELEASE, &Values::deploy().yaml("@examples/chown.yaml"));
    assert_same_objects(&chart, &without_namespace(t.kustomize(dir.path())));
    let sc = &container(&chart)["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(
        sc["readOnlyRootFilesystem"], true,
        "the chown example dropped the other hardening"
    );
}

#[test]
fn chart_versions_match_the_crate_and_deploy() {
    let meta = read_yaml(&chart_dir().join("Chart.yaml"));
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(meta["name"], "nfs-subdir-provisioner");
    assert!(meta["version"].is_string(), "Chart.yaml version must be a string");
    assert_eq!(
        meta["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml appVersion is not Cargo.toml's version"
    );
    let images = &read_yaml(&root().join("deploy/kustomization.yaml"))["images"][0];
    assert_eq!(
        meta["appVersion"], images["newTag"],
        "chart and deploy/ default to different tags"
    );
    let values = read_yaml(&chart_dir().join("values.yaml"));
    assert_eq!(values["image"]["repository"], images["newName"]);
    assert_eq!(values["image"]["tag"], "", "image.tag must default to appVersion");
}

#[test]
fn chart_rbac_grants_exactly_the_access_the_code_uses() {
    let Some(t) = tools("chart_rbac_grants_exactly_the_access_the_code_uses") else {
        return;
    };
    let chart = render(t, RELEASE, &Values::deploy());
    let mut grants = BTreeSet::new();
    for (kind, namespaced) in [("ClusterRole", false), ("Role", true)] {
        for o in of_kind(&chart, kind) {
            for rule in o["rules"].as_array().unwrap() {
                for group in rule["apiGroups"].as_array().unwrap() {
                    for resource in rule["resources"].as_array().unwrap() {
                        for verb in rule["verbs"].as_array().unwrap() {
                            let s = |v: &Json| v.as_str().unwrap().to_owned();
                            grants.insert((s(group), s(resource), s(verb), namespaced));
                        }
                    }
                }
            }
        }
    }
    let used: BTreeSet<_> = ACCESS
        .iter()
        .map(|(g, r, v, n)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned(), *n))
        .collect();
    assert_eq!(grants, used);
}

#[test]
fn helm_lint_strict_passes() {
    let Some(t) = tools("helm_lint_strict_passes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        serde_yaml_ng::to_string(&Values::deploy().files[0]).unwrap(),
    )
    .unwrap();
    let chart = chart_dir();
    let args = [
        "lint".as_ref(),
        "--strict".as_ref(),
        "-f".as_ref(),
        values.as_os_str(),
        chart.as_os_str(),
    ];
    if let Err(e) = t.run(&t.helm, &args) {
        panic!("helm lint --strict:\n{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// nfs-subdir-external-provisioner's values.
// ---------------------------------------------------------------------------------------------

/// What nfs-subdir-external-provisioner's chart makes of `--set nfs.server=x.x.x.x --set
/// nfs.path=/exported/path` (its README's install command) under `release`: a class nfs-client
/// archiving on delete, served under cluster.local/<its fullname>.
fn assert_upstream_defaults(chart: &[Json], provisioner: &str) {
    let classes = storage_classes(chart);
    assert_eq!(classes.len(), 1, "{}", names(chart));
    let class = &classes[0];
    assert_eq!(class.metadata.name.as_deref(), Some("nfs-client"));
    assert_eq!(class.provisioner, provisioner);
    assert_eq!(class.parameters, Some(params(&[("archiveOnDelete", "true")])));
    assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(class.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(class.allow_volume_expansion, Some(true));
    assert_eq!(class.mount_options, None);
    assert_eq!(class.metadata.annotations, None);
    let env = env(chart);
    assert_eq!(env["PROVISIONER_NAME"], provisioner);
    assert_eq!(env["NFS_SERVER"], "x.x.x.x");
    assert_eq!(env["NFS_PATH"], "/exported/path");
    let volumes = pod(chart)["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        volumes[0]["nfs"],
        json!({"server": "x.x.x.x", "path": "/exported/path"})
    );
}

#[test]
fn upstream_readme_install_renders_what_its_users_expect() {
    let Some(t) = tools("upstream_readme_install_renders_what_its_users_expect") else {
        return;
    };
    let readme = || {
        Values::default()
            .set("nfs.server=x.x.x.x")
            .set("nfs.path=/exported/path")
    };
    let chart = render(t, "nfs-subdir-external-provisioner", &readme());
    assert_upstream_defaults(&chart, "cluster.local/nfs-subdir-external-provisioner");
    let chart = render(t, "my-release", &readme());
    assert_upstream_defaults(&chart, "cluster.local/my-release-nfs-subdir-external-provisioner");
    // Its fullnameOverride named the provisioner too.
    let chart = render(t, "my-release", &readme().set("fullnameOverride=shared-nfs"));
    assert_upstream_defaults(&chart, "cluster.local/shared-nfs");
    find(&chart, "Deployment", "shared-nfs");

    // Its README's second provisioner, as the default class: a release beside the first.
    let second = readme()
        .set("nfs.server=y.y.y.y")
        .set("nfs.path=/other/exported/path")
        .set("storageClass.name=second-nfs-client")
        .set("storageClass.provisionerName=k8s-sigs.io/second-nfs-subdir-external-provisioner")
        .set("storageClass.defaultClass=true");
    let second = render(t, "second-nfs-subdir-external-provisioner", &second);
    let classes = storage_classes(&second);
    assert_eq!(classes.len(), 1);
    let class = &classes[0];
    assert_eq!(class.metadata.name.as_deref(), Some("second-nfs-client"));
    let provisioner = "k8s-sigs.io/second-nfs-subdir-external-provisioner";
    assert_eq!(class.provisioner, provisioner);
    assert_eq!(
        class.metadata.annotations.clone().unwrap(),
        BTreeMap::from([(
            "storageclass.kubernetes.io/is-default-class".to_owned(),
            "true".to_owned()
        )])
    );
    assert_eq!(env(&second)["PROVISIONER_NAME"], provisioner);
    assert_eq!(env(&second)["NFS_SERVER"], "y.y.y.y");
    // Both releases install into one cluster: no cluster-scoped object of one is the other's.
    let first = render(t, "nfs-subdir-external-provisioner", &readme());
    let cluster_scoped = |objects: &[Json]| -> BTreeSet<(String, String, String)> {
        objects
            .iter()
            .filter(|o| o["metadata"]["namespace"].is_null())
            .map(key)
            .collect()
    };
    let shared: Vec<_> = cluster_scoped(&first)
        .intersection(&cluster_scoped(&second))
        .cloned()
        .collect();
    assert!(shared.is_empty(), "both releases make {shared:?}");
}

/// Every key of nfs-subdir-external-provisioner's chart values (4.0.18), with the keys its
/// templates read but its values.yaml only mentions in comments. UPSTREAM_VALUES sets each of
/// them, to something other than this chart's default where that shows the key's effect.
const UPSTREAM_KEYS: &[&str] = &[
    "replicaCount",
    "strategyType",
    "image.repository",
    "image.tag",
    "image.pullPolicy",
    "imagePullSecrets",
    "nfs.server",
    "nfs.path",
    "nfs.mountOptions",
    "nfs.volumeName",
    "nfs.reclaimPolicy",
    "storageClass.create",
    "storageClass.provisionerName",
    "storageClass.defaultClass",
    "storageClass.name",
    "storageClass.allowVolumeExpansion",
    "storageClass.reclaimPolicy",
    "storageClass.archiveOnDelete",
    "storageClass.onDelete",
    "storageClass.pathPattern",
    "storageClass.accessModes",
    "storageClass.volumeBindingMode",
    "storageClass.annotations",
    "leaderElection.enabled",
    "rbac.create",
    "podSecurityPolicy.enabled",
    "podAnnotations",
    "priorityClassName",
    "podSecurityContext",
    "securityContext",
    "serviceAccount.create",
    "serviceAccount.annotations",
    "serviceAccount.name",
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "labels",
    "podDisruptionBudget.enabled",
    "podDisruptionBudget.maxUnavailable",
    "nameOverride",
    "fullnameOverride",
];

/// A values file for nfs-subdir-external-provisioner's chart that sets every key (except the
/// image, which would be that provisioner's: see `upstream_image_is_refused`).
const UPSTREAM_VALUES: &str = r#"
replicaCount: 1
strategyType: Recreate
image:
  repository: registry.example.com/nfs-subdir-provisioner
  tag: "1.2.3"
  pullPolicy: Always
imagePullSecrets: [{name: pull}]
nfs:
  server: 10.3.243.101
  path: /ifs/kubernetes
  mountOptions: [nfsvers=4.1, hard]
  volumeName: export-root
  reclaimPolicy: Delete
storageClass:
  create: true
  provisionerName: example.com/nfs
  defaultClass: true
  name: shared
  allowVolumeExpansion: false
  reclaimPolicy: Retain
  archiveOnDelete: false
  onDelete: retain
  pathPattern: "${.PVC.namespace}/${.PVC.name}"
  accessModes: ReadWriteMany
  volumeBindingMode: WaitForFirstConsumer
  annotations: {example.com/owner: storage-team}
leaderElection: {enabled: false}
rbac: {create: true}
podSecurityPolicy: {enabled: true}
podAnnotations: {example.com/scrape: "true"}
priorityClassName: system-cluster-critical
podSecurityContext: {fsGroup: 2000}
securityContext: {runAsUser: 1000}
serviceAccount:
  create: true
  annotations: {example.com/role: nfs}
  name: nfs-account
resources: {limits: {cpu: 100m}}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: storage, operator: Exists}]
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: nfs, operator: Exists}]}]}}}
labels: {team: storage}
podDisruptionBudget: {enabled: true, maxUnavailable: 2}
nameOverride: nfs
fullnameOverride: nfs-provisioner
"#;

#[test]
fn every_upstream_value_is_accepted_with_its_meaning() {
    let values: Json = serde_yaml_ng::from_str(UPSTREAM_VALUES).unwrap();
    let defaults = read_yaml(&chart_dir().join("values.yaml"));
    for path in UPSTREAM_KEYS {
        let pointer = format!("/{}", path.replace('.', "/"));
        let given = values.pointer(&pointer);
        assert!(given.is_some(), "UPSTREAM_VALUES lacks {path}");
        // The switches stay on so that what they switch is seen; other tests turn them off.
        if !["storageClass.create", "rbac.create", "serviceAccount.create"].contains(path) {
            assert_ne!(
                given,
                defaults.pointer(&pointer),
                "UPSTREAM_VALUES keeps the default of {path}"
            );
        }
    }
    let Some(t) = tools("every_upstream_value_is_accepted_with_its_meaning") else {
        return;
    };
    let chart = render(t, RELEASE, &Values::default().file(values));
    let full = "nfs-provisioner";
    let d = find(&chart, "Deployment", full);
    let (pod, c, env) = (pod(&chart), container(&chart), env(&chart));
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    assert_eq!(c["image"], "registry.example.com/nfs-subdir-provisioner:1.2.3");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "pull"}]));
    assert_eq!(env["NFS_SERVER"], "10.3.243.101");
    assert_eq!(env["NFS_PATH"], "/ifs/kubernetes");
    assert_eq!(env["PROVISIONER_NAME"], "example.com/nfs");
    assert_eq!(env["ENABLE_LEADER_ELECTION"], "false");

    // nfs.mountOptions: the pod mounts the export through a PV and claim that carry them.
    let pv: PersistentVolume =
        serde_json::from_value(find(&chart, "PersistentVolume", &format!("pv-{full}")).clone()).unwrap();
    let pv_spec = pv.spec.unwrap();
    assert_eq!(pv_spec.mount_options.unwrap(), ["nfsvers=4.1", "hard"]);
    assert_eq!(
        pv_spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(pv_spec.access_modes.unwrap(), ["ReadWriteMany"]);
    let nfs = pv_spec.nfs.unwrap();
    assert_eq!(
        (nfs.server.as_str(), nfs.path.as_str()),
        ("10.3.243.101", "/ifs/kubernetes")
    );
    let claim = find(&chart, "PersistentVolumeClaim", &format!("pvc-{full}"));
    assert_eq!(
        claim["spec"]["selector"]["matchLabels"],
        json!({"nfs-subdir-provisioner": full})
    );
    assert_eq!(pv.metadata.labels.unwrap()["nfs-subdir-provisioner"], full);
    assert_eq!(
        pod["volumes"],
        json!([{"name": "export-root", "persistentVolumeClaim": {"claimName": format!("pvc-{full}")}}])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "export-root", "mountPath": "/persistentvolumes"}])
    );

    let classes = storage_classes(&chart);
    assert_eq!(classes.len(), 1);
    let class = &classes[0];
    assert_eq!(class.metadata.name.as_deref(), Some("shared"));
    assert_eq!(class.provisioner, "example.com/nfs");
    let annotations = class.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["storageclass.kubernetes.io/is-default-class"], "true");
    assert_eq!(annotations["example.com/owner"], "storage-team");
    assert_eq!(class.allow_volume_expansion, Some(false));
    assert_eq!(class.reclaim_policy.as_deref(), Some("Retain"));
    assert_eq!(class.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
    assert_eq!(class.mount_options.clone().unwrap(), ["nfsvers=4.1", "hard"]);
    assert_eq!(
        class.parameters,
        Some(params(&[
            ("archiveOnDelete", "false"),
            ("onDelete", "retain"),
            ("pathPattern", "${.PVC.namespace}/${.PVC.name}"),
        ]))
    );

    // podSecurityPolicy: the policy, and the Role's right to use it.
    find(&chart, "PodSecurityPolicy", full);
    let role = find(&chart, "Role", &format!("leader-locking-{full}"));
    assert!(
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["verbs"] == json!(["use"]) && r["resourceNames"] == json!([full])),
        "the Role cannot use the PodSecurityPolicy: {role}"
    );
    let template = &d["spec"]["template"]["metadata"];
    assert_eq!(template["annotations"]["example.com/scrape"], "true");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["securityContext"], json!({"fsGroup": 2000}));
    assert_eq!(c["securityContext"]["runAsUser"], 1000);
    let sa = find(&chart, "ServiceAccount", "nfs-account");
    assert_eq!(sa["metadata"]["annotations"]["example.com/role"], "nfs");
    assert_eq!(pod["serviceAccountName"], "nfs-account");
    assert_eq!(c["resources"]["limits"]["cpu"], "100m");
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "storage", "operator": "Exists"}])
    );
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "nfs"
    );
    // labels: on every object, and on the pods.
    for o in &chart {
        assert_eq!(
            o["metadata"]["labels"]["team"],
            "storage",
            "{:?} lacks labels",
            key(o)
        );
    }
    assert_eq!(template["labels"]["team"], "storage");
    let pdb = find(&chart, "PodDisruptionBudget", full);
    assert_eq!(pdb["spec"]["maxUnavailable"], 2);
    assert_eq!(pdb["spec"]["selector"], d["spec"]["selector"]);
    assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/name"], "nfs");
}

#[test]
fn upstream_image_is_refused() {
    let Some(t) = tools("upstream_image_is_refused") else {
        return;
    };
    let error = render_fails(
        t,
        &Values::deploy().yaml(
            "image: {repository: registry.k8s.io/sig-storage/nfs-subdir-external-provisioner, tag: v4.0.2}",
        ),
    );
    assert!(
        error.contains("is nfs-subdir-external-provisioner's image"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// This chart's own values.
// ---------------------------------------------------------------------------------------------

#[test]
fn storage_classes_come_from_values() {
    let Some(t) = tools("storage_classes_come_from_values") else {
        return;
    };
    let classes = r#"
provisionerName: cluster.local/nfs-subdir-external-provisioner
storageClasses:
  - name: nfs-fast
    defaultClass: true
    parameters:
      archiveOnDelete: false
      onDelete: retain
      pathPattern: "${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}"
      mode: "0770"
      uid: "1000"
      gid: "2000"
      server: nfs2.example.com
      share: /exports/fast
    reclaimPolicy: Retain
    volumeBindingMode: WaitForFirstConsumer
    allowVolumeExpansion: true
    mountOptions: [nfsvers=4.1, hard]
    annotations: {example.com/owner: storage-team}
    labels: {tier: fast}
  - name: nfs-plain
"#;
    // Both forms at once: storageClass's class first, then the list.
    let chart = render(t, RELEASE, &Values::deploy().yaml(classes));
    let names: Vec<_> = storage_classes(&chart)
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["nfs-client", "nfs-fast", "nfs-plain"]);

    let chart = render(
        t,
        RELEASE,
        &Values::deploy()
            .yaml(classes)
            .yaml("storageClass: {create: false}"),
    );
    let classes = storage_classes(&chart);
    assert_eq!(classes.len(), 2);
    let (fast, plain) = (&classes[0], &classes[1]);
    let provisioner = "cluster.local/nfs-subdir-external-provisioner";
    assert_eq!(env(&chart)["PROVISIONER_NAME"], provisioner);
    assert!(classes.iter().all(|c| c.provisioner == provisioner));

    assert_eq!(fast.metadata.name.as_deref(), Some("nfs-fast"));
    let annotations = fast.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["storageclass.kubernetes.io/is-default-class"], "true");
    assert_eq!(annotations["example.com/owner"], "storage-team");
    assert_eq!(fast.metadata.labels.as_ref().unwrap()["tier"], "fast");
    let want = params(&[
        ("archiveOnDelete", "false"),
        ("onDelete", "retain"),
        (
            "pathPattern",
            "${.PVC.namespace}/${.PVC.annotations.nfs.io/storage-path}",
        ),
        ("mode", "0770"),
        ("uid", "1000"),
        ("gid", "2000"),
        ("server", "nfs2.example.com"),
        ("share", "/exports/fast"),
    ]);
    assert_eq!(fast.parameters.clone().unwrap(), want);
    assert_eq!(fast.reclaim_policy.as_deref(), Some("Retain"));
    assert_eq!(fast.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
    assert_eq!(fast.allow_volume_expansion, Some(true));
    assert_eq!(fast.mount_options.clone().unwrap(), ["nfsvers=4.1", "hard"]);

    // A bare entry gets the defaults of a class, and no parameters at all.
    assert_eq!(plain.metadata.name.as_deref(), Some("nfs-plain"));
    assert_eq!(plain.metadata.annotations, None);
    assert_eq!(plain.parameters, None);
    assert_eq!(plain.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(plain.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(plain.allow_volume_expansion, Some(true));
    assert_eq!(plain.mount_options, None);

    // storageClass.provisionerName wins over provisionerName.
    let chart = render(
        t,
        RELEASE,
        &Values::deploy().set("storageClass.provisionerName=example.com/a"),
    );
    assert_eq!(env(&chart)["PROVISIONER_NAME"], "example.com/a");
    assert_eq!(storage_classes(&chart)[0].provisioner, "example.com/a");
}

#[test]
fn deployment_options_come_from_values() {
    let Some(t) = tools("deployment_options_come_from_values") else {
        return;
    };
    let options = r#"
replicaCount: 1
leaderElection: {enabled: false}
image: {repository: registry.example.com/nfs-subdir-provisioner, tag: "9.9.9", pullPolicy: Always}
imagePullSecrets: [{name: pull}]
logFormat: ""
extraEnv:
  - {name: RUST_LOG, value: "info,nfs_subdir_provisioner=debug"}
  - {name: DELETE_TIMEOUT, value: 1h}
resources: {limits: {memory: 256Mi}}
livenessProbe: {periodSeconds: 20, timeoutSeconds: 3}
podAnnotations: {prometheus.io/scrape: "true"}
podLabels: {team: storage}
priorityClassName: system-cluster-critical
podSecurityContext: {fsGroup: 2000}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: storage, operator: Exists}]
podAntiAffinityPreset: hard
storageClass: {create: false}
"#;
    let chart = render(t, "nfs", &Values::deploy().yaml(options));
    assert!(
        storage_classes(&chart).is_empty(),
        "storageClass.create false still rendered a class"
    );
    // Release "nfs" does not contain the chart name: objects are named <release>-<chart>.
    let full = "nfs-nfs-subdir-provisioner";
    let deployment = find(&chart, "Deployment", full);
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(&chart);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(c["image"], "registry.example.com/nfs-subdir-provisioner:9.9.9");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "pull"}]));
    let env = env(&chart);
    assert_eq!(env["ENABLE_LEADER_ELECTION"], "false");
    assert_eq!(env["RUST_LOG"], "info,nfs_subdir_provisioner=debug");
    assert_eq!(env["DELETE_TIMEOUT"], "1h");
    assert!(
        !env.contains_key("LOG_FORMAT"),
        "logFormat \"\" still set LOG_FORMAT"
    );
    // Helm merges maps: the default requests stay unless set to null.
    assert_eq!(
        c["resources"],
        json!({"limits": {"memory": "256Mi"}, "requests": {"cpu": "10m", "memory": "32Mi"}})
    );
    let liveness = json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 20, "timeoutSeconds": 3, "failureThreshold": 3});
    assert_eq!(c["livenessProbe"], liveness);
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"], "/readyz",
        "readiness probe lost"
    );
    let template = &deployment["spec"]["template"]["metadata"];
    assert_eq!(template["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(template["labels"]["team"], "storage");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["securityContext"], json!({"fsGroup": 2000}));
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "storage", "operator": "Exists"}])
    );
    let term = &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        term["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "nfs"
    );
    // No PodDisruptionBudget, PodSecurityPolicy or monitoring unless asked for.
    let kinds: BTreeSet<&str> = chart.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    let want = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ];
    assert_eq!(kinds, BTreeSet::from(want));

    // Names follow the release, and every reference points at an object of the release.
    let sa = find(&chart, "ServiceAccount", full);
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let runner = format!("{full}-runner");
    let leader = format!("leader-locking-{full}");
    find(&chart, "ClusterRole", &runner);
    find(&chart, "Role", &leader);
    for (kind, name, role) in [
        ("ClusterRoleBinding", &runner, &runner),
        ("RoleBinding", &leader, &leader),
    ] {
        let binding = find(&chart, kind, name);
        assert_eq!(binding["roleRef"]["name"], **role);
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": full, "namespace": deploy_namespace()}])
        );
    }
}

#[test]
fn an_existing_service_account_and_custom_affinity() {
    let Some(t) = tools("an_existing_service_account_and_custom_affinity") else {
        return;
    };
    let affinity = "{nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: nfs, operator: Exists}]}]}}}";
    let values = format!(
        "serviceAccount: {{create: false, name: provisioner}}\nrbac: {{create: false}}\naffinity: {affinity}"
    );
    let chart = render(t, RELEASE, &Values::deploy().yaml(&values));
    let kinds: BTreeSet<&str> = chart.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, BTreeSet::from(["Deployment", "StorageClass"]));
    let pod = pod(&chart);
    assert_eq!(pod["serviceAccountName"], "provisioner");
    assert_eq!(
        pod["affinity"],
        serde_yaml_ng::from_str::<Json>(affinity).unwrap()
    );
}

#[test]
fn monitoring_objects_carry_the_rules_and_dashboard() {
    let Some(t) = tools("monitoring_objects_carry_the_rules_and_dashboard") else {
        return;
    };
    let values = r#"
metrics:
  serviceMonitor: {enabled: true, interval: 15s, labels: {release: kube-prometheus-stack}}
  podMonitor: {enabled: true}
  prometheusRule: {enabled: true, labels: {release: kube-prometheus-stack}}
  grafanaDashboard: {enabled: true, namespace: monitoring}
"#;
    let chart = render(t, RELEASE, &Values::deploy().yaml(values));
    let d = deployment(&chart);
    let selector = &d["spec"]["selector"]["matchLabels"];

    let service = find(&chart, "Service", &format!("{RELEASE}-metrics"));
    assert_eq!(&service["spec"]["selector"], selector);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let monitor = find(&chart, "ServiceMonitor", RELEASE);
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    // The ServiceMonitor selects the Service by its labels.
    let wanted = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
    let service_labels = service["metadata"]["labels"].as_object().unwrap();
    assert!(!wanted.is_empty());
    for (k, v) in wanted {
        assert_eq!(
            service_labels.get(k),
            Some(v),
            "the ServiceMonitor does not select the Service"
        );
    }
    assert_eq!(
        monitor["spec"]["endpoints"],
        json!([{"port": "http", "path": "/metrics", "interval": "15s", "honorLabels": true}])
    );
    let pod_monitor = find(&chart, "PodMonitor", RELEASE);
    assert_eq!(&pod_monitor["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"],
        json!([{"port": "http", "path": "/metrics", "interval": "30s", "honorLabels": true}])
    );

    let rules = find(&chart, "PrometheusRule", RELEASE);
    assert_eq!(
        rules["spec"],
        read_yaml(&chart_dir().join("files/prometheus-rules.yaml")),
        "the PrometheusRule is not files/prometheus-rules.yaml"
    );
    assert!(!rules["spec"]["groups"].as_array().unwrap().is_empty());

    let dashboard = find(&chart, "ConfigMap", &format!("{RELEASE}-dashboard"));
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json_text = dashboard["data"]["nfs-subdir-provisioner.json"].as_str().unwrap();
    let file = std::fs::read_to_string(chart_dir().join("files/grafana-dashboard.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<Json>(json_text).unwrap(),
        serde_json::from_str::<Json>(&file).unwrap()
    );
}

#[test]
fn bad_values_fail_with_a_message() {
    let Some(t) = tools("bad_values_fail_with_a_message") else {
        return;
    };
    let cases: &[(&str, Values, &str)] = &[
        // The schema: a misspelled key or a wrong type stops the install, naming it.
        (
            "typo in a nested key",
            Values::deploy().set("storageClass.defaultClas=true"),
            "additional properties 'defaultClas' not allowed",
        ),
        (
            "typo at the top",
            Values::deploy().yaml("storageClases: [{name: x}]"),
            "additional properties 'storageClases' not allowed",
        ),
        (
            "wrong type",
            Values::deploy().yaml("replicaCount: two"),
            "replicaCount",
        ),
        (
            "unknown reclaim policy",
            Values::deploy().set("storageClass.reclaimPolicy=Recycle"),
            "reclaimPolicy",
        ),
        // The templates.
        (
            "no server",
            Values::deploy().set("nfs.server="),
            "nfs.server is required",
        ),
        (
            "no path",
            Values::deploy().yaml("nfs: {path: null}"),
            "nfs.path is required",
        ),
        (
            // Not `mode: 0770`: YAML 1.1 reads that as the number 504 (and the chart refuses it).
            "a number as a class parameter",
            Values::deploy().yaml("storageClasses: [{name: x, parameters: {uid: 1000}}]"),
            "at '/storageClasses/0/parameters/uid': got number",
        ),
        (
            "replicas without election",
            Values::deploy().set("leaderElection.enabled=false"),
            "needs replicaCount 1",
        ),
        (
            "unknown anti-affinity preset",
            Values::deploy().yaml("podAntiAffinityPreset: sometimes"),
            "podAntiAffinityPreset",
        ),
        (
            "one class name twice",
            Values::deploy().yaml("storageClasses: [{name: nfs-client}]"),
            "StorageClass nfs-client is made twice",
        ),
    ];
    for (what, values, message) in cases {
        let error = render_fails(t, values);
        assert!(
            error.contains(message),
            "{what}: {error:?} does not say {message:?}"
        );
    }
}
