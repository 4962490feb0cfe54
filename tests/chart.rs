//! The Helm chart in charts/nfs-subdir-provisioner renders the objects of deploy/.
//!
//! No `helm` binary is assumed. The chart is rendered here by Go's text/template (the gtmpl crate)
//! plus the few Helm and sprig functions its templates call (`render` below); a template that
//! calls any other function fails to parse, so the chart cannot outgrow this renderer unnoticed.
//! With default values and deploy/'s NFS export, the objects must equal what kustomize builds from
//! deploy/ (without the Namespace, which the chart renders only on request) up to the labels Helm
//! adds; other tests check the values (classes, probes, env, RBAC, failures). deploy/ is read by a
//! small kustomize emulation, compared with `kustomize build`/`kubectl kustomize` when installed.
//!
//! `helm_renders_what_this_renderer_renders` runs every scenario through real Helm as well and
//! requires identical objects and the same failures, plus `helm lint --strict`: $HELM, else
//! `helm` on PATH, else Helm's Go SDK through helm-python-sdk (`pip install helm-python-sdk`;
//! $HELM_PYTHON names the interpreter, default python3). Without any of them that test says
//! SKIPPED on stderr and passes, unless CHART_REQUIRE_HELM=1 makes the absence a failure.
//!
//! Known gap of the renderer alone: values are read as YAML 1.2 (serde_yaml_ng), Helm reads
//! YAML 1.1 (`no` is false, `0770` is octal). The scenarios avoid such scalars.
#![allow(clippy::unwrap_used)] // a test: a failed read is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
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

/// Helm's coalescing of values: maps merge key by key, anything else replaces, null deletes.
fn merge(base: &mut Json, over: &Json) {
    match (base, over) {
        (Json::Object(base), Json::Object(over)) => {
            for (key, value) in over {
                if value.is_null() {
                    base.remove(key);
                } else if let Some(slot) = base.get_mut(key).filter(|s| s.is_object() && value.is_object()) {
                    merge(slot, value);
                } else {
                    base.insert(key.clone(), value.clone());
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// The renderer: `helm template` for the constructs and functions this chart uses.
// ---------------------------------------------------------------------------------------------

mod render {
    use std::cell::RefCell;
    use std::path::Path;

    use gtmpl::{Context, Func, FuncError, Template, Value};
    use serde_json::{Value as Json, json};

    /// Helm's and sprig's functions as the chart calls them, each with its Helm definition for the
    /// argument types the chart passes. Go's own (printf, eq, gt, and, or, not, ...) are gtmpl's.
    const FUNCS: &[(&str, Func)] = &[
        ("include", include as Func),
        ("required", required as Func),
        ("fail", fail as Func),
        ("default", default as Func),
        ("toYaml", to_yaml as Func),
        ("nindent", nindent as Func),
        ("quote", quote as Func),
        ("toString", to_string as Func),
        ("kindIs", kind_is as Func),
        ("hasKey", has_key as Func),
        ("int", int as Func),
        ("trunc", trunc as Func),
        ("trimSuffix", trim_suffix as Func),
        ("replace", replace as Func),
        ("contains", contains as Func),
    ];

    thread_local! {
        /// The chart's named templates (`_*.tpl`) for `include`: a gtmpl function gets no handle
        /// on the template set.
        static HELPERS: RefCell<String> = const { RefCell::new(String::new()) };
    }

    fn err(msg: impl Into<String>) -> FuncError {
        FuncError::Generic(msg.into())
    }

    fn text(v: &Value) -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Nil | Value::NoValue => String::new(),
            other => other.to_string(),
        }
    }

    fn arg<'a>(args: &'a [Value], i: usize, name: &str) -> Result<&'a Value, FuncError> {
        args.get(i)
            .ok_or_else(|| FuncError::AtLeastXArgs(name.into(), i + 1))
    }

    /// sprig's `empty`: nil, false, 0, "" and empty collections.
    fn empty(v: &Value) -> bool {
        match v {
            Value::Nil | Value::NoValue => true,
            Value::Bool(b) => !b,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Map(m) | Value::Object(m) => m.is_empty(),
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Function(_) => false,
        }
    }

    fn include(args: &[Value]) -> Result<Value, FuncError> {
        let name = text(arg(args, 0, "include")?);
        let dot = arg(args, 1, "include")?.clone();
        let helpers = HELPERS.with(|h| h.borrow().clone());
        let main = format!("{{{{ template {} . }}}}", Json::from(name));
        execute("include", &helpers, &main, dot)
            .map(Value::String)
            .map_err(err)
    }

    /// Helm's `required`: nil and "" fail with the message.
    fn required(args: &[Value]) -> Result<Value, FuncError> {
        match arg(args, 1, "required")? {
            Value::Nil | Value::NoValue => Err(err(text(&args[0]))),
            Value::String(s) if s.is_empty() => Err(err(text(&args[0]))),
            v => Ok(v.clone()),
        }
    }

    fn fail(args: &[Value]) -> Result<Value, FuncError> {
        Err(err(text(arg(args, 0, "fail")?)))
    }

    fn default(args: &[Value]) -> Result<Value, FuncError> {
        let fallback = arg(args, 0, "default")?;
        match args.get(1) {
            Some(v) if !empty(v) => Ok(v.clone()),
            _ => Ok(fallback.clone()),
        }
    }

    fn to_json(v: &Value) -> Json {
        match v {
            Value::Nil | Value::NoValue | Value::Function(_) => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::String(s) => Json::String(s.clone()),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Json::from(i),
                (None, Some(f)) => Json::from(f),
                _ => Json::Null,
            },
            Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
            Value::Map(m) | Value::Object(m) => {
                Json::Object(m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
            }
        }
    }

    fn from_json(v: &Json) -> Value {
        match v {
            Json::Null => Value::Nil,
            Json::Bool(b) => Value::Bool(*b),
            Json::String(s) => Value::String(s.clone()),
            Json::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Value::from(i),
                (None, Some(f)) => Value::from(f),
                _ => Value::Nil,
            },
            Json::Array(a) => Value::Array(a.iter().map(from_json).collect()),
            Json::Object(m) => Value::Map(m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
        }
    }

    /// Helm's `toYaml`: the YAML document without its final newline.
    fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
        let yaml =
            serde_yaml_ng::to_string(&to_json(arg(args, 0, "toYaml")?)).map_err(|e| err(e.to_string()))?;
        Ok(Value::String(yaml.trim_end_matches('\n').to_owned()))
    }

    fn count(v: &Value) -> Result<usize, FuncError> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| err("not a count")),
            other => Err(err(format!("not a count: {other}"))),
        }
    }

    fn nindent(args: &[Value]) -> Result<Value, FuncError> {
        let pad = " ".repeat(count(arg(args, 0, "nindent")?)?);
        let body = text(arg(args, 1, "nindent")?);
        Ok(Value::String(format!(
            "\n{pad}{}",
            body.replace('\n', &format!("\n{pad}"))
        )))
    }

    /// Go's %q, for the strings the chart quotes; JSON's escapes are ones YAML reads the same way.
    fn quote(args: &[Value]) -> Result<Value, FuncError> {
        let quoted: Vec<String> = args
            .iter()
            .filter(|v| !matches!(v, Value::Nil | Value::NoValue))
            .map(|v| Json::from(text(v)).to_string())
            .collect();
        Ok(Value::String(quoted.join(" ")))
    }

    fn to_string(args: &[Value]) -> Result<Value, FuncError> {
        Ok(Value::String(text(arg(args, 0, "toString")?)))
    }

    /// sprig's `hasKey`: whether the map has the key, whatever its value (`default` treats an
    /// explicit `false` as missing).
    fn has_key(args: &[Value]) -> Result<Value, FuncError> {
        let key = text(arg(args, 1, "hasKey")?);
        match arg(args, 0, "hasKey")? {
            Value::Map(m) | Value::Object(m) => Ok(Value::Bool(m.contains_key(&key))),
            other => Err(err(format!("hasKey of a non-map: {other}"))),
        }
    }

    /// reflect.Kind names as Helm's values have them: a number from a values file is a float64.
    fn kind_is(args: &[Value]) -> Result<Value, FuncError> {
        let kind = match arg(args, 1, "kindIs")? {
            Value::Nil | Value::NoValue => "invalid",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Number(_) => "float64",
            Value::Array(_) => "slice",
            Value::Map(_) | Value::Object(_) => "map",
            Value::Function(_) => "func",
        };
        Ok(Value::Bool(text(&args[0]) == kind))
    }

    #[allow(clippy::cast_possible_truncation)] // sprig's int truncates as well
    fn int(args: &[Value]) -> Result<Value, FuncError> {
        Ok(Value::from(match arg(args, 0, "int")? {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .unwrap_or_default(),
            Value::String(s) => s.parse::<i64>().unwrap_or_default(),
            _ => 0,
        }))
    }

    fn trunc(args: &[Value]) -> Result<Value, FuncError> {
        let n = count(arg(args, 0, "trunc")?)?;
        Ok(Value::String(
            text(arg(args, 1, "trunc")?).chars().take(n).collect(),
        ))
    }

    fn trim_suffix(args: &[Value]) -> Result<Value, FuncError> {
        let suffix = text(arg(args, 0, "trimSuffix")?);
        let s = text(arg(args, 1, "trimSuffix")?);
        Ok(Value::String(
            s.strip_suffix(suffix.as_str()).unwrap_or(&s).to_owned(),
        ))
    }

    fn replace(args: &[Value]) -> Result<Value, FuncError> {
        let (old, new) = (text(arg(args, 0, "replace")?), text(arg(args, 1, "replace")?));
        Ok(Value::String(text(arg(args, 2, "replace")?).replace(&old, &new)))
    }

    /// sprig's `contains SUBSTR STRING`.
    fn contains(args: &[Value]) -> Result<Value, FuncError> {
        let needle = text(arg(args, 0, "contains")?);
        Ok(Value::Bool(text(arg(args, 1, "contains")?).contains(&needle)))
    }

    fn execute(name: &str, helpers: &str, body: &str, dot: Value) -> Result<String, String> {
        let mut tmpl = Template::with_name(name);
        tmpl.add_funcs(FUNCS);
        tmpl.add_template("__helpers", helpers)
            .map_err(|e| format!("_helpers: {e}"))?;
        tmpl.parse(body)
            .map_err(|e| format!("{name}: parse error: {e}"))?;
        tmpl.render(&Context::from(dot))
            .map_err(|e| format!("{name}: {e}"))
    }

    /// Renders every template of the chart at `dir`, with `values` already coalesced over
    /// values.yaml, into (template file name, output) pairs in file name order, as
    /// `helm template` does.
    pub fn chart(
        dir: &Path,
        values: &Json,
        release: &str,
        namespace: &str,
    ) -> Result<Vec<(String, String)>, String> {
        let meta: Json =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("Chart.yaml")).unwrap()).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let mut helpers = String::new();
        let mut bodies = Vec::new();
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let body = std::fs::read_to_string(&path).unwrap();
            if name.starts_with('_') {
                helpers.push_str(&body);
            } else if name != "NOTES.txt" {
                bodies.push((name, body));
            }
        }
        HELPERS.with(|h| h.borrow_mut().clone_from(&helpers));
        // .Chart: Chart.yaml's fields with capitalised names, as in Helm's chart.Metadata (except
        // APIVersion, which the chart does not use).
        let chart: serde_json::Map<String, Json> = meta
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (format!("{}{}", k[..1].to_uppercase(), &k[1..]), v.clone()))
            .collect();
        let top = from_json(&json!({
            "Values": values,
            "Chart": chart,
            "Release": {
                "Name": release, "Namespace": namespace, "Service": "Helm",
                "IsInstall": true, "IsUpgrade": false, "Revision": 1,
            },
        }));
        let mut out = Vec::new();
        for (name, body) in bodies {
            let rendered = execute(&name, &helpers, &body, top.clone())?;
            // Helm prints a missing value as "", not as text/template's "<no value>".
            out.push((name, rendered.replace("<no value>", "")));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: values files, rendered here and, when helm is present, by helm as well.
// ---------------------------------------------------------------------------------------------

/// deploy/'s export, from deploy/deployment.yaml's env: the only values the chart requires.
fn deploy_nfs_values() -> Json {
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
    json!({ "nfs": { "server": var("NFS_SERVER"), "path": var("NFS_PATH") } })
}

struct Scenario {
    id: &'static str,
    release: &'static str,
    /// Values on top of deploy_nfs_values(); "@<file>" names a file in the chart directory.
    values: &'static str,
    /// The rendering must fail with an error containing this.
    fails_with: Option<&'static str>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "defaults",
        release: RELEASE,
        values: "{}",
        fails_with: None,
    },
    Scenario {
        id: "namespace",
        release: RELEASE,
        values: "namespace: {create: true}",
        fails_with: None,
    },
    Scenario {
        id: "chown",
        release: RELEASE,
        values: "@examples/chown.yaml",
        fails_with: None,
    },
    Scenario {
        id: "classes",
        release: RELEASE,
        values: r#"
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
"#,
        fails_with: None,
    },
    Scenario {
        id: "options",
        release: "nfs",
        values: r#"
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
storageClasses: []
"#,
        fails_with: None,
    },
    Scenario {
        id: "existing-account",
        release: RELEASE,
        values: r#"
serviceAccount: {create: false, name: provisioner}
rbac: {create: false}
affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: nfs, operator: Exists}]}]}}}
"#,
        fails_with: None,
    },
    Scenario {
        id: "no-server",
        release: RELEASE,
        values: "nfs: {server: \"\"}",
        fails_with: Some("nfs.server is required"),
    },
    Scenario {
        id: "no-path",
        release: RELEASE,
        values: "nfs: {path: null}",
        fails_with: Some("nfs.path is required"),
    },
    Scenario {
        id: "numeric-parameter",
        release: RELEASE,
        // Not `mode: 0770`: Helm's YAML reads that as the number 504 (and the chart refuses it),
        // serde_yaml_ng as the string "0770".
        values: "storageClasses: [{name: x, parameters: {uid: 1000}}]",
        fails_with: Some("parameter uid must be a string"),
    },
    Scenario {
        id: "replicas-without-election",
        release: RELEASE,
        values: "leaderElection: {enabled: false}",
        fails_with: Some("needs replicaCount 1"),
    },
    Scenario {
        id: "bad-preset",
        release: RELEASE,
        values: "podAntiAffinityPreset: sometimes",
        fails_with: Some("podAntiAffinityPreset must be"),
    },
];

fn scenario(id: &str) -> &'static Scenario {
    SCENARIOS.iter().find(|s| s.id == id).unwrap()
}

fn scenario_values(s: &Scenario) -> Json {
    match s.values.strip_prefix('@') {
        Some(file) => read_yaml(&chart_dir().join(file)),
        None => serde_yaml_ng::from_str(s.values).unwrap(),
    }
}

/// The scenario rendered by this file's renderer: its objects, or the render error.
fn render(s: &Scenario, namespace: &str) -> Result<Vec<Json>, String> {
    let mut values = read_yaml(&chart_dir().join("values.yaml"));
    merge(&mut values, &deploy_nfs_values());
    merge(&mut values, &scenario_values(s));
    let out = render::chart(&chart_dir(), &values, s.release, namespace)?;
    Ok(out.iter().flat_map(|(_, text)| documents(text)).collect())
}

fn render_ok(id: &str) -> Vec<Json> {
    let s = scenario(id);
    assert!(s.fails_with.is_none());
    render(s, &kustomize_namespace()).unwrap_or_else(|e| panic!("scenario {id}: {e}"))
}

fn find<'a>(objects: &'a [Json], kind: &str, name: &str) -> &'a Json {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {}", names(objects)))
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

fn container(objects: &[Json]) -> &Json {
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    &deployment["spec"]["template"]["spec"]["containers"][0]
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

/// Every object parses into its Kubernetes type, and the Deployment's selector picks its pods.
fn assert_typed(objects: &[Json]) {
    for o in objects {
        let text = o.to_string();
        let parsed = match o["kind"].as_str().unwrap() {
            "Namespace" => serde_json::from_str::<Namespace>(&text).map(drop),
            "ServiceAccount" => serde_json::from_str::<ServiceAccount>(&text).map(drop),
            "ClusterRole" => serde_json::from_str::<ClusterRole>(&text).map(drop),
            "ClusterRoleBinding" => serde_json::from_str::<ClusterRoleBinding>(&text).map(drop),
            "Role" => serde_json::from_str::<Role>(&text).map(drop),
            "RoleBinding" => serde_json::from_str::<RoleBinding>(&text).map(drop),
            "StorageClass" => serde_json::from_str::<StorageClass>(&text).map(drop),
            "Deployment" => {
                let d: Deployment = serde_json::from_str(&text).unwrap();
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
// deploy/ as kustomize builds it.
// ---------------------------------------------------------------------------------------------

const CLUSTER_SCOPED: &[&str] = &["Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass"];

fn kustomize_namespace() -> String {
    read_yaml(&root().join("deploy/kustomization.yaml"))["namespace"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// What `kustomize build` makes of a kustomization that uses resources, namespace and images
/// (what deploy/ and rbac/ use; anything else is refused here). `kustomize_matches_kubectl`
/// compares the result with the real kustomize when one is installed.
fn kustomize(dir: &Path) -> Vec<Json> {
    let k = read_yaml(&dir.join("kustomization.yaml"));
    for field in k.as_object().unwrap().keys() {
        assert!(
            ["apiVersion", "kind", "namespace", "resources", "images"].contains(&field.as_str()),
            "{}: {field} is not emulated by tests/chart.rs; extend kustomize()",
            dir.display()
        );
    }
    let mut objects = Vec::new();
    for resource in k["resources"].as_array().unwrap() {
        let path = dir.join(resource.as_str().unwrap());
        if path.is_dir() {
            objects.extend(kustomize(&path));
        } else {
            objects.extend(documents(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    if let Some(ns) = k["namespace"].as_str() {
        for o in &mut objects {
            if !CLUSTER_SCOPED.contains(&o["kind"].as_str().unwrap()) {
                o["metadata"]["namespace"] = ns.into();
            }
            for subject in o
                .get_mut("subjects")
                .and_then(Json::as_array_mut)
                .into_iter()
                .flatten()
            {
                if subject["kind"] == "ServiceAccount" {
                    subject["namespace"] = ns.into();
                }
            }
        }
    }
    for image in k["images"].as_array().into_iter().flatten() {
        let name = image["name"].as_str().unwrap();
        let new = format!(
            "{}:{}",
            image["newName"].as_str().unwrap_or(name),
            image["newTag"].as_str().unwrap()
        );
        for o in &mut objects {
            let containers = o
                .pointer_mut("/spec/template/spec/containers")
                .and_then(Json::as_array_mut);
            for c in containers.into_iter().flatten() {
                let current = c["image"].as_str().unwrap();
                if current == name || current.starts_with(&format!("{name}:")) {
                    c["image"] = new.clone().into();
                }
            }
        }
    }
    objects
}

/// Strategic merge of a Deployment patch as kustomize applies it to this repository's patches:
/// maps merge, containers merge by name, other lists replace.
fn strategic_merge(target: &mut Json, patch: &Json) {
    match (target, patch) {
        (Json::Object(t), Json::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(slot) if k == "containers" => {
                        for pc in v.as_array().unwrap() {
                            let tc = slot
                                .as_array_mut()
                                .unwrap()
                                .iter_mut()
                                .find(|c| c["name"] == pc["name"])
                                .unwrap();
                            strategic_merge(tc, pc);
                        }
                    }
                    Some(slot) if slot.is_object() && v.is_object() => strategic_merge(slot, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// deploy/ with the deploy/overlays/chown component.
fn kustomize_chown() -> Vec<Json> {
    let mut objects = kustomize(&root().join("deploy"));
    let component = root().join("deploy/overlays/chown");
    let k = read_yaml(&component.join("kustomization.yaml"));
    for patch in k["patches"].as_array().unwrap() {
        let patch = read_yaml(&component.join(patch["path"].as_str().unwrap()));
        let target = objects
            .iter_mut()
            .find(|o| key(o).0 == patch["kind"] && key(o).2 == patch["metadata"]["name"]);
        strategic_merge(target.unwrap(), &patch);
    }
    objects
}

fn kustomize_binary() -> Option<Vec<String>> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["kustomize", "version"]) {
        Some(vec!["kustomize".into(), "build".into()])
    } else if works(&["kubectl", "version", "--client"]) {
        Some(vec!["kubectl".into(), "kustomize".into()])
    } else {
        None
    }
}

fn by_key(objects: &[Json]) -> BTreeMap<(String, String, String), Json> {
    let map: BTreeMap<_, _> = objects.iter().map(|o| (key(o), o.clone())).collect();
    assert_eq!(map.len(), objects.len(), "duplicate objects: {}", names(objects));
    map
}

#[test]
fn kustomize_emulation_matches_kustomize() {
    let Some(cmd) = kustomize_binary() else {
        eprintln!(
            "\n*** SKIPPED kustomize_emulation_matches_kustomize: neither kustomize nor kubectl found; \
             the chart tests use this file's reading of deploy/ unchecked ***\n"
        );
        return;
    };
    let build = |dir: &Path| {
        let out = Command::new(&cmd[0]).args(&cmd[1..]).arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        documents(&String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(
        by_key(&build(&root().join("deploy"))),
        by_key(&kustomize(&root().join("deploy")))
    );

    // The chown component, used as its kustomization.yaml says: from a kustomization outside
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
    assert_eq!(by_key(&build(dir.path())), by_key(&kustomize_chown()));
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
fn default_values_render_the_objects_of_deploy() {
    let chart = render_ok("defaults");
    assert_typed(&chart);
    assert!(
        chart.iter().all(|o| o["kind"] != "Namespace"),
        "Namespace rendered without namespace.create"
    );
    assert_same_objects(&chart, &without_namespace(kustomize(&root().join("deploy"))));
}

#[test]
fn namespace_create_renders_the_namespace_of_deploy() {
    let chart = render_ok("namespace");
    assert_typed(&chart);
    assert_same_objects(&chart, &kustomize(&root().join("deploy")));
}

#[test]
fn chown_example_renders_the_chown_component() {
    let chart = render_ok("chown");
    assert_same_objects(&chart, &without_namespace(kustomize_chown()));
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
    let chart = render_ok("defaults");
    let mut grants = BTreeSet::new();
    for (kind, namespaced) in [("ClusterRole", false), ("Role", true)] {
        for o in chart.iter().filter(|o| o["kind"] == kind) {
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

// ---------------------------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------------------------

#[test]
fn storage_classes_come_from_values() {
    let chart = render_ok("classes");
    assert_typed(&chart);
    let classes: Vec<StorageClass> = chart
        .iter()
        .filter(|o| o["kind"] == "StorageClass")
        .map(|o| serde_json::from_value(o.clone()).unwrap())
        .collect();
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
    let params = fast.parameters.clone().unwrap();
    let want = [
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
    ];
    let want: BTreeMap<String, String> = want.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    assert_eq!(params, want);
    assert_eq!(fast.reclaim_policy.as_deref(), Some("Retain"));
    assert_eq!(fast.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
    assert_eq!(fast.allow_volume_expansion, Some(true));
    assert_eq!(fast.mount_options.clone().unwrap(), ["nfsvers=4.1", "hard"]);

    // A bare entry gets the defaults of the shipped class, and no parameters at all.
    assert_eq!(plain.metadata.name.as_deref(), Some("nfs-plain"));
    assert_eq!(plain.metadata.annotations, None);
    assert_eq!(plain.parameters, None);
    assert_eq!(plain.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(plain.volume_binding_mode.as_deref(), Some("Immediate"));
    assert_eq!(plain.allow_volume_expansion, Some(true));
    assert_eq!(plain.mount_options, None);
}

#[test]
fn deployment_options_come_from_values() {
    let chart = render_ok("options");
    assert_typed(&chart);
    assert!(
        chart.iter().all(|o| o["kind"] != "StorageClass"),
        "storageClasses: [] still rendered a class"
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
            json!([{"kind": "ServiceAccount", "name": full, "namespace": kustomize_namespace()}])
        );
    }
}

#[test]
fn an_existing_service_account_and_custom_affinity() {
    let chart = render_ok("existing-account");
    assert_typed(&chart);
    let kinds: BTreeSet<&str> = chart.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, BTreeSet::from(["Deployment", "StorageClass"]));
    let pod = &find(&chart, "Deployment", RELEASE)["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "provisioner");
    assert_eq!(
        pod["affinity"],
        serde_yaml_ng::from_str::<Json>(scenario("existing-account").values).unwrap()["affinity"]
    );
}

#[test]
fn bad_values_fail_with_a_message() {
    let failing: Vec<_> = SCENARIOS.iter().filter(|s| s.fails_with.is_some()).collect();
    assert!(failing.len() >= 5);
    for s in failing {
        let message = s.fails_with.unwrap();
        match render(s, "default") {
            Ok(objects) => panic!("scenario {} rendered: {}", s.id, names(&objects)),
            Err(e) => assert!(
                e.contains(message),
                "scenario {}: {e:?} does not say {message:?}",
                s.id
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real Helm, when installed.
// ---------------------------------------------------------------------------------------------

/// A `helm` command line for `version`, `template NAME CHART --namespace NS -f FILE...` and
/// `lint --strict -f FILE CHART`, written against helm-python-sdk (Helm's Go SDK as a library, on
/// PyPI), for machines where no helm binary can be installed.
const HELM_SDK_SHIM: &str = r#"
import sys, os
import helm_python as helm
cmd, args, files, ns, pos, strict = sys.argv[1], sys.argv[2:], [], None, [], False
while args:
    a = args.pop(0)
    if a in ("-f", "--values"): files.append(args.pop(0))
    elif a in ("-n", "--namespace"): ns = args.pop(0)
    elif a == "--strict": strict = True
    elif a.startswith("-"): sys.exit(f"shim: unsupported flag {a}")
    else: pos.append(a)
def merge(base, over):
    for k, v in over.items():
        if v is None: base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict): merge(base[k], v)
        else: base[k] = v
values = {}
for f in files:
    merge(values, helm.values_from_yaml(open(f).read()))
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

/// How to run helm: $HELM, else `helm` on PATH, else HELM_SDK_SHIM when Python ($HELM_PYTHON,
/// else python3) can import helm_python. Returns the command prefix and what it is.
fn helm(dir: &Path) -> Option<(Vec<std::ffi::OsString>, String)> {
    let version = |cmd: &[std::ffi::OsString]| {
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let binary = vec![std::env::var_os("HELM").unwrap_or_else(|| "helm".into())];
    if let Some(v) = version(&binary) {
        return Some((binary, v));
    }
    let shim = dir.join("helm_shim.py");
    std::fs::write(&shim, HELM_SDK_SHIM).unwrap();
    let python = std::env::var_os("HELM_PYTHON").unwrap_or_else(|| "python3".into());
    let cmd = vec![python, shim.into_os_string()];
    version(&cmd).map(|v| (cmd, v))
}

#[test]
fn helm_renders_what_this_renderer_renders() {
    let dir = tempfile::tempdir().unwrap();
    let Some((helm, version)) = helm(dir.path()) else {
        let msg = "helm_renders_what_this_renderer_renders: no helm ($HELM, `helm` on PATH, or \
                   helm-python-sdk for $HELM_PYTHON/python3); the chart was rendered only by this \
                   file's Go-template renderer";
        assert!(
            std::env::var_os("CHART_REQUIRE_HELM").is_none(),
            "CHART_REQUIRE_HELM is set, but {msg}"
        );
        eprintln!("\n*** SKIPPED {msg} ***\n");
        return;
    };
    eprintln!("helm_renders_what_this_renderer_renders: using {version}");
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(&helm[0])
            .args(&helm[1..])
            .args(args)
            .output()
            .unwrap()
    };
    let base = dir.path().join("nfs.yaml");
    std::fs::write(&base, serde_yaml_ng::to_string(&deploy_nfs_values()).unwrap()).unwrap();
    let namespace = kustomize_namespace();

    let lint = run(&[
        "lint".as_ref(),
        "--strict".as_ref(),
        "-f".as_ref(),
        base.as_ref(),
        chart_dir().as_ref(),
    ]);
    let lint_out = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(lint.status.success(), "helm lint --strict:\n{lint_out}");

    for s in SCENARIOS {
        let file = dir.path().join(format!("{}.yaml", s.id));
        std::fs::write(&file, serde_yaml_ng::to_string(&scenario_values(s)).unwrap()).unwrap();
        let chart = chart_dir();
        let args = ["template", s.release, "--namespace", &namespace, "-f"].map(std::ffi::OsStr::new);
        let out = run(&[
            &args[..],
            &[base.as_ref(), "-f".as_ref(), file.as_ref(), chart.as_ref()],
        ]
        .concat());
        let ours = render(s, &namespace);
        match (out.status.success(), ours) {
            (true, Ok(ours)) => {
                let theirs = documents(&String::from_utf8(out.stdout).unwrap());
                let (theirs, ours) = (by_key(&theirs), by_key(&ours));
                assert_eq!(
                    theirs.keys().collect::<Vec<_>>(),
                    ours.keys().collect::<Vec<_>>(),
                    "scenario {}",
                    s.id
                );
                for (k, theirs) in &theirs {
                    assert!(
                        *theirs == ours[k],
                        "scenario {}: {k:?} differs.\nhelm:\n{}\ntests/chart.rs:\n{}",
                        s.id,
                        serde_yaml_ng::to_string(theirs).unwrap(),
                        serde_yaml_ng::to_string(&ours[k]).unwrap()
                    );
                }
            }
            (false, Err(_)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let message = s
                    .fails_with
                    .unwrap_or_else(|| panic!("scenario {} failed: {stderr}", s.id));
                assert!(
                    stderr.contains(message),
                    "scenario {}: helm said {stderr:?}, not {message:?}",
                    s.id
                );
            }
            (helm_ok, ours) => panic!(
                "scenario {}: helm {} but tests/chart.rs {}: {}{:?}",
                s.id,
                if helm_ok { "rendered" } else { "failed" },
                if ours.is_ok() { "rendered" } else { "failed" },
                String::from_utf8_lossy(&out.stderr),
                ours.err()
            ),
        }
    }
}
