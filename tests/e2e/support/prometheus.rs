//! Debian's Prometheus for the monitoring trials: finding its binaries (`scripts/prometheus.sh`),
//! running the server against a generated configuration, its HTTP API, and what a PromQL
//! expression names (metrics and labels), read with a real PromQL parser.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use promql_parser::label::{METRIC_NAME, Matchers};
use promql_parser::parser::{self, BinModifier, Expr, LabelModifier, VectorMatchCardinality};
use serde_json::Value;

use super::http::get;
use super::{ManagedChild, TrialCtx, free_ports, poll_until};

/// The directory holding `prometheus` and `promtool`.
pub const BIN_ENV: &str = "PROMETHEUS_BIN";
/// Set to `1` to make missing binaries a failure instead of a skip (scripts/test.sh does).
pub const REQUIRE_ENV: &str = "MONITORING_REQUIRE";
pub const HOW_TO_GET: &str = "export PROMETHEUS_BIN=$(bash scripts/prometheus.sh)";

/// The directory with `prometheus` and `promtool`; `None` (after a loud line on stderr) when
/// they are not there and [`REQUIRE_ENV`] is not `1`.
pub fn binaries(trial: &str) -> Result<Option<PathBuf>> {
    let why = match std::env::var_os(BIN_ENV) {
        None => format!("{BIN_ENV} is not set"),
        Some(dir) => {
            let dir = PathBuf::from(dir);
            let missing: Vec<String> = ["prometheus", "promtool"]
                .iter()
                .map(|b| dir.join(b))
                .filter(|p| !p.is_file())
                .map(|p| p.display().to_string())
                .collect();
            if missing.is_empty() {
                return Ok(Some(dir));
            }
            format!("{BIN_ENV}={}: missing {}", dir.display(), missing.join(", "))
        }
    };
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        bail!("Debian's Prometheus is needed: {why} ({HOW_TO_GET}); {REQUIRE_ENV}=1 forbids skipping");
    }
    let rule = "#".repeat(100);
    eprintln!(
        "\n{rule}\n##  e2e: SKIPPED {trial}: {why}.\n##  To run it: {HOW_TO_GET}\n##  ({REQUIRE_ENV}=1 turns this skip into a failure.)\n{rule}\n"
    );
    Ok(None)
}

/// Runs `promtool` with `args`: (success, stdout and stderr).
pub async fn promtool(bin: &Path, args: &[&str]) -> Result<(bool, String)> {
    let mut cmd = std::process::Command::new(bin.join("promtool"));
    cmd.args(args).stdin(std::process::Stdio::null());
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await?
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}

/// A Prometheus server of the trial, on 127.0.0.1.
pub struct Prometheus {
    pub addr: SocketAddr,
    _process: ManagedChild,
}

impl Prometheus {
    /// Starts `prometheus` with `config` (a prometheus.yml) and waits until it is ready.
    pub async fn start(t: &TrialCtx, bin: &Path, config: &str) -> Result<Prometheus> {
        let dir = t.dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let [port] = free_ports::<1>()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let process = t.spawn(
            "prometheus",
            &bin.join("prometheus"),
            [
                format!("--config.file={}", config_path.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
            ],
            std::iter::empty::<(&str, &str)>(),
        )?;
        poll_until("Prometheus to be ready", Duration::from_secs(60), || async {
            Ok((get(addr, "/-/ready").await?.0 == 200).then_some(()))
        })
        .await?;
        Ok(Prometheus {
            addr,
            _process: process,
        })
    }

    /// `GET path?params` of the HTTP API: the `data` of a successful answer, or the API's error.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let (code, body) = get(self.addr, &target).await?;
        let answer: Value =
            serde_json::from_str(&body).with_context(|| format!("{path} answered {code}: {body}"))?;
        if answer["status"] != "success" {
            bail!(
                "{path} {params:?} answered {code}: {} {}",
                answer["errorType"],
                answer["error"]
            );
        }
        Ok(answer["data"].clone())
    }

    /// An instant query: its result vector (or scalar), or the API's error.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await?;
        Ok(match &data["result"] {
            Value::Array(series) => series.clone(),
            other => vec![other.clone()],
        })
    }

    /// Every label name of every series of each metric matching `selector`.
    pub async fn labels_by_metric(&self, selector: &str) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let series = self.api("/api/v1/series", &[("match[]", selector)]).await?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for labels in series.as_array().context("series: not a list")? {
            let labels = labels.as_object().context("series: not an object")?;
            let name = labels[METRIC_NAME].as_str().context("series without a name")?;
            let names = out.entry(name.to_owned()).or_default();
            names.extend(labels.keys().filter(|k| *k != METRIC_NAME).cloned());
        }
        Ok(out)
    }
}

/// Percent-encoding of a query parameter (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What an expression names: each selector's metric and the labels its matchers name, and the
/// labels its aggregations and vector matching name.
#[derive(Debug, Default)]
pub struct Mentions {
    pub selectors: Vec<(String, BTreeSet<String>)>,
    pub grouping: BTreeSet<String>,
}

impl Mentions {
    pub fn metrics(&self) -> BTreeSet<&str> {
        self.selectors.iter().map(|(m, _)| m.as_str()).collect()
    }
}

/// Parses `promql` and collects what it names. Functions that make labels of their own
/// (label_replace, label_join) are refused: their new labels could not be checked.
pub fn mentions(promql: &str) -> Result<Mentions> {
    let expr = parser::parse(promql).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Mentions::default();
    walk(&expr, &mut out)?;
    Ok(out)
}

fn walk(expr: &Expr, out: &mut Mentions) -> Result<()> {
    match expr {
        Expr::VectorSelector(vs) => selector(vs.name.as_deref(), &vs.matchers, out)?,
        Expr::MatrixSelector(ms) => selector(ms.vs.name.as_deref(), &ms.vs.matchers, out)?,
        Expr::Aggregate(agg) => {
            if let Some(modifier) = &agg.modifier {
                out.grouping.extend(modifier_labels(modifier));
            }
            walk(&agg.expr, out)?;
            if let Some(param) = &agg.param {
                walk(param, out)?;
            }
        }
        Expr::Binary(bin) => {
            if let Some(modifier) = &bin.modifier {
                matching(modifier, out);
            }
            walk(&bin.lhs, out)?;
            walk(&bin.rhs, out)?;
        }
        Expr::Call(call) => {
            ensure!(
                !matches!(call.func.name, "label_replace" | "label_join"),
                "{} makes labels this check cannot follow",
                call.func.name
            );
            for arg in &call.args.args {
                walk(arg, out)?;
            }
        }
        Expr::Paren(p) => walk(&p.expr, out)?,
        Expr::Unary(u) => walk(&u.expr, out)?,
        Expr::Subquery(s) => walk(&s.expr, out)?,
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::Extension(_) => bail!("an extension expression"),
    }
    Ok(())
}

fn selector(name: Option<&str>, matchers: &Matchers, out: &mut Mentions) -> Result<()> {
    let all = matchers
        .matchers
        .iter()
        .chain(matchers.or_matchers.iter().flatten());
    let mut labels = BTreeSet::new();
    let mut metric = name.map(str::to_owned);
    for m in all {
        if m.name == METRIC_NAME {
            metric.get_or_insert_with(|| m.value.clone());
        } else {
            labels.insert(m.name.clone());
        }
    }
    let metric = metric.context("a selector without a metric name")?;
    out.selectors.push((metric, labels));
    Ok(())
}

fn modifier_labels(modifier: &LabelModifier) -> Vec<String> {
    match modifier {
        LabelModifier::Include(l) | LabelModifier::Exclude(l) => l.labels.clone(),
    }
}

fn matching(modifier: &BinModifier, out: &mut Mentions) {
    if let Some(m) = &modifier.matching {
        out.grouping.extend(modifier_labels(m));
    }
    match &modifier.card {
        VectorMatchCardinality::ManyToOne(l) | VectorMatchCardinality::OneToMany(l) => {
            out.grouping.extend(l.labels.iter().cloned());
        }
        VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany => {}
    }
}

/// Metric names and their label names in a text exposition (Prometheus or OpenMetrics): the
/// sample names `# TYPE` promises (a counter's `_total`, a histogram's `_bucket`, `_sum` and
/// `_count`), and the label names of the samples present.
pub fn exposition_names(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                out.entry(format!("{family}{suffix}")).or_default();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = out.entry(line[..name_end].to_owned()).or_default();
            if let Some(inner) = line[name_end..]
                .strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .map(|(inner, _)| inner)
            {
                // Label values here are the test's own, without commas or quotes.
                labels.extend(
                    inner
                        .split(',')
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, _)| k.trim().to_owned()),
                );
            }
        }
    }
    out
}
