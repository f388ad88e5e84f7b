// Test code: an unwrap or expect that fails is a failed test, and its message says which file and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Checks of the Helm chart in `deploy/helm/anthropic-keys-exporter` with the real tools: `helm lint
//! --strict` and `helm template` (helm v4), and checkov over every rendering. `scripts/install-k8s-tools`
//! installs them on a fresh machine (into a cache directory); when it cannot, every test here fails with
//! its output. Nothing needs a cluster or the network: what a cluster would check (admission, the
//! Prometheus Operator's CRDs, the kubelet mounting the Secrets) is listed in the chart's README.
//!
//! The chart is rendered with its default values and with each values file of its `ci/` directory. The
//! renderings are parsed with serde_norway and checked as objects: the resources the values ask for,
//! the hardened pod, the Secrets mounted as directories, the StatefulSet of a sharded exporter, the
//! PrometheusRule built from the shipped rules file, the values README; and the real exporter binary
//! validates the flags, configuration file and web configuration of each rendering (`--config.check`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_norway::{Mapping, Value};

mod common;
use common::files::{
    matches_wildcards, parse_documents, parse_yaml, read, repo_path, sequence, strings, text,
};
use sha2::{Digest, Sha256};

const CHART_DIR: &str = "deploy/helm/anthropic-keys-exporter";
const RULES_FILE: &str = "dashboards/anthropic-keys-exporter.rules.yml";
const DASHBOARD_FILE: &str = "dashboards/anthropic-keys-exporter.json";
const CHART_RULES_FILE: &str =
    "deploy/helm/anthropic-keys-exporter/files/anthropic-keys-exporter.rules.yml";
const CHART_DASHBOARD_FILE: &str =
    "deploy/helm/anthropic-keys-exporter/files/anthropic-keys-exporter.json";

/// The values files of the chart's `ci/` directory, each rendered and checked.
const CI_VALUES: [&str; 5] = [
    "ci/single-organization-values.yaml",
    "ci/three-organizations-values.yaml",
    "ci/sharded-values.yaml",
    "ci/tls-basic-auth-values.yaml",
    "ci/everything-values.yaml",
];
const DEFAULT_VALUES: &str = "default values";

const RELEASE: &str = "ake";
const NAMESPACE: &str = "monitoring";
const FULLNAME: &str = "ake-anthropic-keys-exporter";
const CONTAINER_DIR: &str = "/etc/anthropic-keys-exporter";
const EXPORTER_PORT: u64 = 10419;
const PORT_NAME: &str = "http-metrics";
const IMAGE_UID: u64 = 65532;
const SHARD_VARIABLE: &str = "ANTHROPIC_KEYS_EXPORTER_SHARD";
const POD_INDEX_FIELD: &str = "metadata.labels['apps.kubernetes.io/pod-index']";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// What the tests write where an admin key is needed; never sent anywhere.
const TEST_ADMIN_KEY: &str = "sk-ant-admin01-helm-test-key";

// ---------------------------------------------------------------------------------------------------
// Files and YAML
// ---------------------------------------------------------------------------------------------------

/// `overlay` merged into `base` as Helm merges values files: mappings key by key, anything else replaced.
fn merge_values(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) => merge_values(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// The chart's values.yaml with a values file of the chart merged in, as the chart sees them.
fn effective_values(values_file: Option<&str>) -> Value {
    let mut values = parse_yaml(&read(&format!("{CHART_DIR}/values.yaml")), "values.yaml");
    if let Some(file) = values_file {
        merge_values(
            &mut values,
            &parse_yaml(&read(&format!("{CHART_DIR}/{file}")), file),
        );
    }
    values
}

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "anthropic-keys-exporter-helm-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        Self { path }
    }

    /// Writes a file at `path`, relative to the directory or an absolute path inside it.
    fn write(&self, path: &str, contents: &str) -> PathBuf {
        let path = self.path.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------------
// The tools
// ---------------------------------------------------------------------------------------------------

/// The directory holding helm, kubectl and checkov, installed by scripts/install-k8s-tools if missing.
fn tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo_path("scripts/install-k8s-tools"))
            .output()
            .expect("cannot run scripts/install-k8s-tools");
        assert!(
            output.status.success(),
            "scripts/install-k8s-tools could not install helm, kubectl and checkov; the Helm chart \
             cannot be checked without them:\n{}",
            describe(&output)
        );
        let bin = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
        for tool in ["helm", "kubectl", "checkov"] {
            assert!(
                bin.join(tool).is_file(),
                "scripts/install-k8s-tools printed {}, which holds no {tool}",
                bin.display()
            );
        }
        bin
    })
}

/// helm, with its cache, configuration and data under the target directory, and no cluster: nothing a
/// developer configured for their own clusters is read, nothing is reached.
fn helm() -> Command {
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let mut command = Command::new(tools().join("helm"));
    command
        .current_dir(repo_path(CHART_DIR))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", home.join("no-cluster-kubeconfig"));
    command
}

fn helm_output(args: &[&str]) -> Output {
    helm().args(args).output().expect("cannot run helm")
}

/// `helm template` of the chart with these values files (relative to the chart, or absolute) and
/// `--set`s: the documents, or helm's output when it fails.
fn try_render(values_files: &[&str], sets: &[&str]) -> Result<Vec<Value>, Output> {
    let mut args = vec!["template", RELEASE, ".", "--namespace", NAMESPACE];
    for file in values_files {
        args.extend(["--values", file]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    let output = helm_output(&args);
    if !output.status.success() {
        return Err(output);
    }
    let rendered = String::from_utf8(output.stdout).unwrap();
    Ok(parse_documents(&rendered, "the output of helm template"))
}

fn render(values_files: &[&str], sets: &[&str]) -> Vec<Value> {
    try_render(values_files, sets).unwrap_or_else(|output| {
        panic!(
            "helm template with {values_files:?} {sets:?} failed:\n{}",
            describe(&output)
        )
    })
}

#[derive(Debug)]
struct Rendering {
    /// `default values` or the values file's path in the chart.
    label: &'static str,
    values: Value,
    documents: Vec<Value>,
}

/// The chart rendered with its defaults and with each ci/ values file, once for all tests.
fn renderings() -> &'static [Rendering] {
    static RENDERINGS: OnceLock<Vec<Rendering>> = OnceLock::new();
    RENDERINGS.get_or_init(|| {
        let mut all = vec![Rendering {
            label: DEFAULT_VALUES,
            values: effective_values(None),
            documents: render(&[], &[]),
        }];
        all.extend(CI_VALUES.iter().map(|file| Rendering {
            label: file,
            values: effective_values(Some(file)),
            documents: render(&[file], &[]),
        }));
        all
    })
}

fn rendering(label: &str) -> &'static Rendering {
    renderings()
        .iter()
        .find(|rendering| rendering.label == label)
        .unwrap_or_else(|| panic!("no rendering {label}"))
}

// ---------------------------------------------------------------------------------------------------
// Reading a rendering
// ---------------------------------------------------------------------------------------------------

impl Rendering {
    fn all_of(&self, kind: &str) -> Vec<&Value> {
        self.documents
            .iter()
            .filter(|document| document["kind"].as_str() == Some(kind))
            .collect()
    }

    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for document in &self.documents {
            *kinds
                .entry(text(&document["kind"], "kind").to_owned())
                .or_insert(0) += 1;
        }
        kinds
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> = self
            .all_of(kind)
            .into_iter()
            .filter(|document| document["metadata"]["name"].as_str() == Some(name))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: there should be one {kind} {name}",
            self.label
        );
        found[0]
    }

    /// The Deployment or the StatefulSet: exactly one of them.
    fn workload(&self) -> &Value {
        let mut workloads = self.all_of("Deployment");
        workloads.extend(self.all_of("StatefulSet"));
        assert_eq!(
            workloads.len(),
            1,
            "{}: there should be one Deployment or StatefulSet",
            self.label
        );
        workloads[0]
    }

    fn pod(&self) -> &Value {
        &self.workload()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Value {
        let containers = sequence(&self.pod()["containers"], "containers");
        assert_eq!(
            containers.len(),
            1,
            "{}: the pod should run the exporter alone",
            self.label
        );
        assert_eq!(containers[0]["name"].as_str(), Some("exporter"));
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container()["args"], "args")
    }

    fn volume(&self, name: &str) -> &Value {
        sequence(&self.pod()["volumes"], "volumes")
            .iter()
            .find(|volume| volume["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: the pod has no volume {name}", self.label))
    }

    /// Where the container mounts the volume `name`.
    fn mount_path(&self, name: &str) -> String {
        sequence(&self.container()["volumeMounts"], "volumeMounts")
            .iter()
            .find(|mount| mount["name"].as_str() == Some(name))
            .map(|mount| text(&mount["mountPath"], "mountPath").to_owned())
            .unwrap_or_else(|| panic!("{}: the container does not mount {name}", self.label))
    }

    /// The exporter's configuration file, as the ConfigMap the pod mounts holds it.
    fn config_file(&self) -> Value {
        let config_map = self.named("ConfigMap", FULLNAME);
        parse_yaml(
            text(&config_map["data"]["config.yml"], "config.yml"),
            "the exporter's config.yml",
        )
    }

    /// Every file of the admin-keys volume: (path in the container, Secret, key of that Secret).
    fn key_files(&self) -> Vec<(String, String, String)> {
        let mount = self.mount_path("admin-keys");
        let sources = sequence(
            &self.volume("admin-keys")["projected"]["sources"],
            "the admin-keys volume's sources",
        );
        sources
            .iter()
            .flat_map(|source| {
                let secret = text(&source["secret"]["name"], "a projected Secret's name");
                sequence(&source["secret"]["items"], "a projected Secret's items")
                    .iter()
                    .map(|item| {
                        (
                            format!("{mount}/{}", text(&item["path"], "an item's path")),
                            secret.to_owned(),
                            text(&item["key"], "an item's key").to_owned(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn sharded(&self) -> bool {
        self.values["sharding"]["totalShards"].as_u64().unwrap() > 1
    }

    fn tls(&self) -> bool {
        self.values["webConfig"]["tls"]["enabled"].as_bool() == Some(true)
    }

    fn enabled(&self, part: &str) -> bool {
        self.values[part]["enabled"].as_bool() == Some(true)
    }
}

/// The value of `flag` in `args`, written as `--flag=value` or as `--flag value`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(index, arg)| {
        if arg == flag {
            args.get(index + 1).map(String::as_str)
        } else {
            arg.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// Whether a LabelSelector (matchLabels and matchExpressions) selects an object with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let match_labels = selector["matchLabels"].as_mapping();
    let expressions = selector["matchExpressions"].as_sequence();
    if match_labels.is_none_or(Mapping::is_empty) && expressions.is_none_or(Vec::is_empty) {
        return false;
    }
    let labels_match = match_labels.is_none_or(|wanted| {
        wanted
            .iter()
            .all(|(name, value)| labels.get(name) == Some(value))
    });
    let expressions_match = expressions.is_none_or(|expressions| {
        expressions.iter().all(|expression| {
            let present = labels.get(text(&expression["key"], "key")).is_some();
            match text(&expression["operator"], "operator") {
                "Exists" => present,
                "DoesNotExist" => !present,
                other => panic!("this test does not understand the operator {other}"),
            }
        })
    });
    labels_match && expressions_match
}

/// The organizations of the effective values: (name, existingSecret or None, secretKey or None).
fn organizations(values: &Value) -> Vec<(String, Option<String>, Option<String>)> {
    sequence(&values["organizations"], "organizations")
        .iter()
        .map(|organization| {
            (
                text(&organization["name"], "name").to_owned(),
                organization["existingSecret"].as_str().map(str::to_owned),
                organization["secretKey"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The alerts of a PrometheusRule's or a rules file's groups: (alert, severity) -> rule.
fn rules_by_alert(groups: &Value) -> BTreeMap<(String, String), Value> {
    let mut rules = BTreeMap::new();
    for group in sequence(groups, "groups") {
        for rule in sequence(&group["rules"], "rules") {
            let key = (
                text(&rule["alert"], "alert").to_owned(),
                text(&rule["labels"]["severity"], "severity").to_owned(),
            );
            assert!(
                rules.insert(key.clone(), rule.clone()).is_none(),
                "two rules {key:?}"
            );
        }
    }
    rules
}

fn shipped_rules() -> Value {
    parse_yaml(&read(RULES_FILE), RULES_FILE)
}

// ---------------------------------------------------------------------------------------------------
// The chart's metadata, files and documentation
// ---------------------------------------------------------------------------------------------------

#[test]
fn the_chart_has_a_semver_version_and_the_crate_version_as_app_version() {
    // Arrange
    let chart = parse_yaml(&read(&format!("{CHART_DIR}/Chart.yaml")), "Chart.yaml");

    // Act
    let version = text(&chart["version"], "version");
    let numbers: Vec<u64> = version
        .split('.')
        .map(|part| {
            part.parse().unwrap_or_else(|_| {
                panic!("the chart version {version:?} is not MAJOR.MINOR.PATCH")
            })
        })
        .collect();

    // Assert
    assert_eq!(chart["apiVersion"].as_str(), Some("v2"));
    assert_eq!(chart["name"].as_str(), Some("anthropic-keys-exporter"));
    assert_eq!(numbers.len(), 3, "{version}");
    assert!(numbers[0] >= 1, "the chart starts at 1.0.0, not {version}");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "appVersion should be the exporter's version from Cargo.toml"
    );
}

#[test]
fn the_ci_directory_holds_exactly_the_values_files_the_tests_render() {
    // Arrange
    let dir = repo_path(&format!("{CHART_DIR}/ci"));

    // Act
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| format!("ci/{}", entry.unwrap().file_name().to_string_lossy()))
        .collect();
    found.sort();

    // Assert
    let mut expected: Vec<String> = CI_VALUES.iter().map(|file| (*file).to_owned()).collect();
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn the_chart_ships_identical_copies_of_the_rules_file_and_the_dashboard() {
    // Arrange
    let pairs = [
        (RULES_FILE, CHART_RULES_FILE),
        (DASHBOARD_FILE, CHART_DASHBOARD_FILE),
    ];

    // Act
    let check = Command::new("bash")
        .arg(repo_path("scripts/sync-chart-files"))
        .arg("--check")
        .output()
        .unwrap();

    // Assert
    for (source, copy) in pairs {
        assert!(
            read(source) == read(copy),
            "{copy} differs from {source}: run scripts/sync-chart-files"
        );
    }
    assert!(check.status.success(), "{}", describe(&check));
}

/// The leaves of values.yaml by dotted path: scalars, lists and empty mappings.
fn value_leaves(value: &Value, prefix: &str, leaves: &mut BTreeMap<String, Value>) {
    match value.as_mapping() {
        Some(mapping) if !mapping.is_empty() => {
            for (key, child) in mapping {
                let key = text(key, "a values key");
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                value_leaves(child, &path, leaves);
            }
        }
        _ => {
            leaves.insert(prefix.to_owned(), value.clone());
        }
    }
}

/// The rows of the README's values table: key -> default (parsed).
fn readme_values_table() -> BTreeMap<String, Value> {
    let readme = read(&format!("{CHART_DIR}/README.md"));
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in readme.lines() {
        if line.starts_with("| key | type | default | description |") {
            in_table = true;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            if !rows.is_empty() {
                break;
            }
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let key = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_owned();
        let default = cells
            .get(2)
            .unwrap_or_else(|| panic!("the README row of {key} has no default"))
            .trim()
            .trim_matches('`')
            .replace("\\|", "|");
        let parsed = parse_yaml(&default, &format!("the README's default of {key}"));
        assert!(
            rows.insert(key.clone(), parsed).is_none(),
            "the README documents {key} twice"
        );
    }
    rows
}

#[test]
fn the_chart_readme_documents_every_value_with_its_default() {
    // Arrange
    let mut leaves = BTreeMap::new();
    value_leaves(&effective_values(None), "", &mut leaves);

    // Act
    let documented = readme_values_table();

    // Assert
    assert!(!documented.is_empty(), "the README has no values table");
    let undocumented: Vec<&String> = leaves
        .keys()
        .filter(|key| !documented.contains_key(*key))
        .collect();
    let unknown: Vec<&String> = documented
        .keys()
        .filter(|key| !leaves.contains_key(*key))
        .collect();
    assert!(
        undocumented.is_empty(),
        "values.yaml keys missing from the README: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "the README documents keys values.yaml lacks: {unknown:?}"
    );
    for (key, default) in &leaves {
        assert_eq!(
            &documented[key], default,
            "the README's default of {key} differs from values.yaml"
        );
    }
}

#[test]
fn the_schema_knows_every_alert_band_of_the_rules_file_and_no_other() {
    // Arrange
    let schema: serde_json::Value =
        serde_json::from_str(&read(&format!("{CHART_DIR}/values.schema.json"))).unwrap();
    let alerts = &schema["properties"]["prometheusRule"]["properties"]["alerts"];

    // Act
    let in_schema: BTreeSet<(String, String)> = alerts["properties"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(alert, bands)| {
            bands["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(|severity| (alert.clone(), severity.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let in_rules: BTreeSet<(String, String)> = rules_by_alert(&shipped_rules()["groups"])
        .into_keys()
        .collect();

    // Assert
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(alerts["additionalProperties"], false);
    assert_eq!(in_schema, in_rules);
}

// ---------------------------------------------------------------------------------------------------
// helm lint, and the objects of each rendering
// ---------------------------------------------------------------------------------------------------

#[test]
fn helm_lint_strict_accepts_the_defaults_and_every_ci_values_file() {
    // Arrange
    let mut runs: Vec<Vec<&str>> = vec![vec!["lint", "--strict", "."]];
    runs.extend(
        CI_VALUES
            .iter()
            .map(|file| vec!["lint", "--strict", ".", "--values", file]),
    );

    // Act
    let outputs: Vec<(Vec<&str>, Output)> = runs
        .into_iter()
        .map(|args| {
            let output = helm_output(&args);
            (args, output)
        })
        .collect();

    // Assert
    for (args, output) in outputs {
        assert!(
            output.status.success(),
            "helm {args:?}:\n{}",
            describe(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm {args:?}:\n{stdout}"
        );
        assert!(!stdout.contains("[WARNING]"), "helm {args:?}:\n{stdout}");
    }
}

#[test]
fn each_rendering_holds_the_resources_its_values_ask_for() {
    for rendering in renderings() {
        // Arrange
        let organizations = organizations(&rendering.values);
        let chart_secret = organizations
            .iter()
            .any(|(_, existing, _)| existing.is_none());
        let web_config = rendering.tls()
            || rendering.values["webConfig"]["basicAuthUsers"]
                .as_mapping()
                .is_some_and(|users| !users.is_empty());
        let mut expected: BTreeMap<String, usize> = BTreeMap::new();
        let mut expect = |kind: &str, count: usize| {
            if count > 0 {
                *expected.entry(kind.to_owned()).or_insert(0) += count;
            }
        };
        expect(
            if rendering.sharded() {
                "StatefulSet"
            } else {
                "Deployment"
            },
            1,
        );
        expect("Service", 1 + usize::from(rendering.sharded()));
        expect("ServiceAccount", 1);
        expect("ConfigMap", 1 + usize::from(rendering.enabled("dashboard")));
        expect(
            "Secret",
            usize::from(chart_secret) + usize::from(web_config),
        );
        expect(
            "ServiceMonitor",
            usize::from(rendering.enabled("serviceMonitor")),
        );
        expect(
            "PrometheusRule",
            usize::from(rendering.enabled("prometheusRule")),
        );
        expect(
            "NetworkPolicy",
            usize::from(rendering.enabled("networkPolicy")),
        );
        expect(
            "PodDisruptionBudget",
            usize::from(rendering.enabled("podDisruptionBudget")),
        );

        // Act
        let kinds = rendering.kinds();

        // Assert
        assert_eq!(kinds, expected, "{}", rendering.label);
        for document in &rendering.documents {
            assert_eq!(
                document["metadata"]["namespace"].as_str(),
                Some(NAMESPACE),
                "{}: {:?} should be in the release's namespace",
                rendering.label,
                document["metadata"]["name"]
            );
            assert_eq!(
                document["metadata"]["labels"]["app.kubernetes.io/instance"].as_str(),
                Some(RELEASE),
                "{}",
                rendering.label
            );
        }
    }
}

#[test]
fn every_rendering_runs_the_hardened_pod_of_the_kubernetes_manifests() {
    for rendering in renderings() {
        // Arrange
        let pod = rendering.pod();
        let container = rendering.container();
        let security = &container["securityContext"];
        let label = rendering.label;

        // Act
        let effective = |field: &str| {
            let own = &security[field];
            if own.is_null() {
                pod["securityContext"][field].clone()
            } else {
                own.clone()
            }
        };

        // Assert
        assert_eq!(effective("runAsNonRoot").as_bool(), Some(true), "{label}");
        assert_eq!(effective("runAsUser").as_u64(), Some(IMAGE_UID), "{label}");
        assert_eq!(effective("runAsGroup").as_u64(), Some(IMAGE_UID), "{label}");
        assert_eq!(
            pod["securityContext"]["fsGroup"].as_u64(),
            Some(IMAGE_UID),
            "{label}"
        );
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{label}"
        );
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{label}"
        );
        assert_ne!(security["privileged"].as_bool(), Some(true), "{label}");
        assert_eq!(
            strings(&security["capabilities"]["drop"], "drop"),
            ["ALL"],
            "{label}"
        );
        assert!(security["capabilities"]["add"].is_null(), "{label}");
        assert_eq!(
            effective("seccompProfile")["type"].as_str(),
            Some("RuntimeDefault"),
            "{label}"
        );
        assert_eq!(
            pod["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{label}"
        );
        assert_eq!(pod["enableServiceLinks"].as_bool(), Some(false), "{label}");
        for host_namespace in ["hostNetwork", "hostPID", "hostIPC"] {
            assert_ne!(
                pod[host_namespace].as_bool(),
                Some(true),
                "{label}: {host_namespace}"
            );
        }
        assert!(
            container["command"].is_null(),
            "{label}: the image's entrypoint is the exporter"
        );
        assert!(
            !container["resources"]["requests"]["memory"].is_null()
                && !container["resources"]["limits"]["memory"].is_null(),
            "{label}: the exporter should request and limit memory"
        );
        let port = sequence(&container["ports"], "ports")
            .iter()
            .find(|port| port["name"].as_str() == Some(PORT_NAME))
            .unwrap_or_else(|| panic!("{label}: no port {PORT_NAME}"));
        assert_eq!(
            port["containerPort"].as_u64(),
            Some(EXPORTER_PORT),
            "{label}"
        );
        assert_eq!(
            flag_value(&rendering.args(), "--web.listen-address"),
            Some(format!(":{EXPORTER_PORT}").as_str()),
            "{label}"
        );
        let scheme = if rendering.tls() { "HTTPS" } else { "HTTP" };
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let http = &container[probe]["httpGet"];
            assert_eq!(http["path"].as_str(), Some(path), "{label}: {probe}");
            assert_eq!(http["port"].as_str(), Some(PORT_NAME), "{label}: {probe}");
            assert_eq!(http["scheme"].as_str(), Some(scheme), "{label}: {probe}");
        }
        let account = rendering.named(
            "ServiceAccount",
            text(&pod["serviceAccountName"], "serviceAccountName"),
        );
        assert_eq!(
            account["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{label}"
        );
    }
}

#[test]
fn admin_keys_reach_the_exporter_as_files_of_secrets_mounted_as_directories() {
    for rendering in renderings() {
        // Arrange
        let label = rendering.label;
        let container = rendering.container();
        let config = rendering.config_file();
        let key_files = rendering.key_files();
        let keys_mount = rendering.mount_path("admin-keys");
        let chart_secret = rendering.all_of("Secret").into_iter().find(|secret| {
            secret["metadata"]["name"].as_str() == Some(&format!("{FULLNAME}-admin-keys"))
        });

        // Act
        let configured: Vec<(String, String)> = sequence(&config["organizations"], "organizations")
            .iter()
            .map(|organization| {
                (
                    text(&organization["name"], "name").to_owned(),
                    text(&organization["admin_key_file"], "admin_key_file").to_owned(),
                )
            })
            .collect();

        // Assert
        assert_eq!(
            flag_value(&rendering.args(), "--config.file"),
            Some(format!("{}/config.yml", rendering.mount_path("config")).as_str()),
            "{label}"
        );
        let expected = organizations(&rendering.values);
        assert_eq!(
            configured
                .iter()
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>(),
            expected
                .iter()
                .map(|(name, ..)| name.clone())
                .collect::<Vec<_>>(),
            "{label}: the config file should list every organization of the values"
        );
        for ((name, key_file), (_, existing, secret_key)) in configured.iter().zip(&expected) {
            let (_, secret, key) = key_files
                .iter()
                .find(|(path, ..)| path == key_file)
                .unwrap_or_else(|| {
                    panic!("{label}: {name}'s admin_key_file {key_file} is no file of the admin-keys volume")
                });
            match existing {
                Some(existing) => {
                    assert_eq!(secret, existing, "{label}: {name}");
                    assert_eq!(
                        key,
                        secret_key.as_deref().unwrap_or("admin-key"),
                        "{label}: {name}"
                    );
                }
                None => {
                    assert_eq!(secret, &format!("{FULLNAME}-admin-keys"), "{label}: {name}");
                    let data = &chart_secret
                        .unwrap_or_else(|| panic!("{label}: no chart Secret for {name}"))["data"]
                        [key.as_str()];
                    assert!(!data.is_null(), "{label}: the chart Secret lacks {key}");
                }
            }
        }
        assert!(
            config["organizations"][0]["admin_key_env"].is_null(),
            "{label}"
        );
        for mount in sequence(&container["volumeMounts"], "volumeMounts") {
            assert!(
                mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
                "{label}: a subPath mount is never updated when its Secret or ConfigMap changes"
            );
            assert_eq!(
                mount["readOnly"].as_bool(),
                Some(true),
                "{label}: {mount:?}"
            );
        }
        assert!(
            keys_mount.starts_with(CONTAINER_DIR),
            "{label}: {keys_mount}"
        );
        assert_eq!(
            rendering.volume("admin-keys")["projected"]["defaultMode"].as_u64(),
            Some(0o440),
            "{label}"
        );
        for variable in container["env"].as_sequence().into_iter().flatten() {
            let name = text(&variable["name"], "env name");
            assert!(
                variable["valueFrom"]["secretKeyRef"].is_null(),
                "{label}: {name} comes from a Secret; keys come from files only"
            );
            assert!(!name.starts_with("ANTHROPIC_ADMIN"), "{label}: {name}");
        }
        assert!(container["envFrom"].is_null(), "{label}: no envFrom");
        let workload = serde_norway::to_string(rendering.workload()).unwrap();
        for organization in sequence(&rendering.values["organizations"], "organizations") {
            if let Some(key) = organization["adminKey"].as_str() {
                assert!(!workload.contains(key), "{label}: a key in the pod spec");
            }
        }
    }
}

#[test]
fn a_sharded_exporter_is_a_statefulset_whose_pod_ordinal_is_the_shard() {
    for rendering in renderings() {
        // Arrange
        let label = rendering.label;
        let workload = rendering.workload();
        let args = rendering.args();
        let env = rendering.container()["env"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        let shard_variable = env
            .iter()
            .find(|variable| variable["name"].as_str() == Some(SHARD_VARIABLE));
        let headless: Vec<&Value> = rendering
            .all_of("Service")
            .into_iter()
            .filter(|service| service["spec"]["clusterIP"].as_str() == Some("None"))
            .collect();

        // Act
        let total = rendering.values["sharding"]["totalShards"]
            .as_u64()
            .unwrap();

        // Assert
        if rendering.sharded() {
            assert_eq!(workload["kind"].as_str(), Some("StatefulSet"), "{label}");
            assert_eq!(
                workload["spec"]["replicas"].as_u64(),
                Some(total),
                "{label}"
            );
            assert_eq!(
                workload["spec"]["podManagementPolicy"].as_str(),
                Some("Parallel")
            );
            assert_eq!(headless.len(), 1, "{label}: one headless Service");
            assert_eq!(
                headless[0]["metadata"]["labels"][HEADLESS_LABEL].as_str(),
                Some("true"),
                "{label}: the label that keeps the ServiceMonitor off the headless Service"
            );
            assert_eq!(
                workload["spec"]["serviceName"].as_str(),
                headless[0]["metadata"]["name"].as_str(),
                "{label}: the StatefulSet is governed by the headless Service"
            );
            assert!(selects(
                &Value::Mapping(
                    [(
                        "matchLabels".into(),
                        headless[0]["spec"]["selector"].clone()
                    )]
                    .into_iter()
                    .collect()
                ),
                &workload["spec"]["template"]["metadata"]["labels"]
            ));
            assert_eq!(
                shard_variable.map(|variable| &variable["valueFrom"]["fieldRef"]["fieldPath"]),
                Some(&Value::from(POD_INDEX_FIELD)),
                "{label}: the shard comes from the pod-index label through the downward API"
            );
            assert_eq!(
                flag_value(&args, "--shard"),
                Some(format!("$({SHARD_VARIABLE})").as_str()),
                "{label}"
            );
            assert_eq!(
                flag_value(&args, "--total-shards"),
                Some(total.to_string().as_str()),
                "{label}"
            );
        } else {
            assert_eq!(workload["kind"].as_str(), Some("Deployment"), "{label}");
            assert_eq!(workload["spec"]["replicas"].as_u64(), Some(1), "{label}");
            assert!(headless.is_empty(), "{label}");
            assert!(shard_variable.is_none(), "{label}");
            assert!(flag_value(&args, "--shard").is_none(), "{label}");
            assert!(flag_value(&args, "--total-shards").is_none(), "{label}");
        }
    }
}

#[test]
fn sharding_is_refused_before_kubernetes_1_28_which_lacks_the_pod_index_label() {
    // Arrange
    let args = [
        "template",
        RELEASE,
        ".",
        "--values",
        "ci/sharded-values.yaml",
        "--kube-version",
    ];

    // Act
    let old = helm_output(&[&args[..], &["1.27.9"]].concat());
    let new = helm_output(&[&args[..], &["1.28.0"]].concat());

    // Assert
    assert!(!old.status.success(), "{}", describe(&old));
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("Kubernetes 1.28"),
        "{}",
        describe(&old)
    );
    assert!(new.status.success(), "{}", describe(&new));
}

/// The exporter's shard of an organization: SHA-256 of the name, first 8 bytes big-endian, modulo.
fn shard_of(name: &str, total: u64) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap()) % total
}

#[test]
fn the_install_notes_name_the_shard_of_each_organization_as_the_exporter_hashes_it() {
    // Arrange
    let values = effective_values(Some("ci/sharded-values.yaml"));
    let total = values["sharding"]["totalShards"].as_u64().unwrap();
    let organizations = organizations(&values);

    // Act
    let output = helm_output(&[
        "install",
        RELEASE,
        ".",
        "--namespace",
        NAMESPACE,
        "--values",
        "ci/sharded-values.yaml",
        "--dry-run=client",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);

    // Assert
    assert!(output.status.success(), "{}", describe(&output));
    for shard in 0..total {
        let members: Vec<&str> = organizations
            .iter()
            .filter(|(name, ..)| shard_of(name, total) == shard)
            .map(|(name, ..)| name.as_str())
            .collect();
        let line = if members.is_empty() {
            format!("- shard {shard}: no organization")
        } else {
            format!("- shard {shard}: {}\n", members.join(", "))
        };
        assert!(stdout.contains(&line), "the notes lack {line:?}:\n{stdout}");
    }
}

#[test]
fn the_service_monitor_scrapes_every_pod_once_under_a_job_the_down_alert_watches() {
    for rendering in renderings()
        .iter()
        .filter(|rendering| rendering.enabled("serviceMonitor"))
    {
        // Arrange
        let label = rendering.label;
        let monitor = rendering.named("ServiceMonitor", FULLNAME);
        let services = rendering.all_of("Service");
        let pod_labels = &rendering.workload()["spec"]["template"]["metadata"]["labels"];
        let rules = rules_by_alert(&shipped_rules()["groups"]);
        let down = &rules[&("AnthropicExporterDown".to_owned(), "warning".to_owned())];
        let job_regex = text(&down["expr"], "expr")
            .split_once("job=~\"")
            .unwrap()
            .1
            .split('"')
            .next()
            .unwrap();

        // Act
        let selected: Vec<&&Value> = services
            .iter()
            .filter(|service| selects(&monitor["spec"]["selector"], &service["metadata"]["labels"]))
            .collect();
        let endpoint = &sequence(&monitor["spec"]["endpoints"], "endpoints")[0];

        // Assert
        assert_eq!(
            selected.len(),
            1,
            "{label}: the ServiceMonitor should select one Service"
        );
        let service = selected[0];
        assert_eq!(
            service["metadata"]["name"].as_str(),
            Some(FULLNAME),
            "{label}"
        );
        assert!(
            selects(
                &Value::Mapping(
                    [("matchLabels".into(), service["spec"]["selector"].clone())]
                        .into_iter()
                        .collect()
                ),
                pod_labels
            ),
            "{label}: the Service should select the exporter's pods"
        );
        assert_eq!(
            monitor["spec"]["namespaceSelector"]["matchNames"][0].as_str(),
            Some(NAMESPACE)
        );
        assert_eq!(endpoint["port"].as_str(), Some(PORT_NAME), "{label}");
        assert_eq!(endpoint["path"].as_str(), Some("/metrics"), "{label}");
        assert_eq!(
            endpoint["interval"], rendering.values["serviceMonitor"]["interval"],
            "{label}"
        );
        assert_eq!(
            endpoint["scrapeTimeout"], rendering.values["serviceMonitor"]["scrapeTimeout"],
            "{label}"
        );
        let job = match monitor["spec"]["jobLabel"].as_str() {
            Some(job_label) => text(
                &service["metadata"]["labels"][job_label],
                "the job label's value",
            ),
            None => text(&service["metadata"]["name"], "the Service's name"),
        };
        assert!(
            matches_wildcards(job_regex, job),
            "{label}: the job {job:?} escapes AnthropicExporterDown's {job_regex:?}"
        );
    }
}

#[test]
fn tls_and_basic_auth_reach_the_web_config_the_probes_and_the_service_monitor() {
    // Arrange
    let rendering = rendering("ci/tls-basic-auth-values.yaml");
    let tls_values = &rendering.values["webConfig"]["tls"];
    let secret = rendering.named("Secret", &format!("{FULLNAME}-web-config"));
    let web_config = parse_yaml(
        text(&secret["stringData"]["web-config.yml"], "web-config.yml"),
        "web-config.yml",
    );
    let tls_mount = rendering.mount_path("tls");
    let monitor = rendering.named("ServiceMonitor", FULLNAME);
    let endpoint = &monitor["spec"]["endpoints"][0];

    // Act
    let tls = &web_config["tls_server_config"];

    // Assert
    assert_eq!(
        flag_value(&rendering.args(), "--web.config.file"),
        Some(format!("{}/web-config.yml", rendering.mount_path("web-config")).as_str())
    );
    assert_eq!(
        rendering.volume("tls")["secret"]["secretName"],
        tls_values["existingSecret"]
    );
    assert!(rendering.volume("tls")["secret"]["items"].is_null());
    for (field, key) in [
        ("cert_file", "certKey"),
        ("key_file", "keyKey"),
        ("client_ca_file", "clientCaKey"),
    ] {
        assert_eq!(
            tls[field].as_str(),
            Some(format!("{tls_mount}/{}", text(&tls_values[key], key)).as_str()),
            "{field}"
        );
    }
    assert_eq!(tls["client_auth_type"], tls_values["clientAuthType"]);
    assert_eq!(tls["min_version"], tls_values["minVersion"]);
    assert_eq!(
        web_config["basic_auth_users"],
        rendering.values["webConfig"]["basicAuthUsers"]
    );
    assert_eq!(
        web_config["http_server_config"]["headers"],
        rendering.values["webConfig"]["httpHeaders"]
    );
    assert_eq!(endpoint["scheme"].as_str(), Some("https"));
    assert_eq!(
        endpoint["tlsConfig"],
        rendering.values["serviceMonitor"]["tlsConfig"]
    );
    assert_eq!(
        endpoint["basicAuth"],
        rendering.values["serviceMonitor"]["basicAuth"]
    );
    assert!(
        rendering.documents.iter().all(|document| {
            document["kind"].as_str() != Some("ConfigMap")
                || !serde_norway::to_string(document)
                    .unwrap()
                    .contains("basic_auth_users")
        }),
        "the password hashes belong in a Secret"
    );
}

#[test]
fn the_dashboard_config_map_carries_the_dashboard_under_the_sidecar_label() {
    // Arrange
    let rendering = rendering("ci/everything-values.yaml");
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD_FILE)).unwrap();

    // Act
    let config_map = rendering.named("ConfigMap", &format!("{FULLNAME}-dashboard"));
    let shipped: serde_json::Value = serde_json::from_str(text(
        &config_map["data"]["anthropic-keys-exporter.json"],
        "the dashboard",
    ))
    .unwrap();

    // Assert
    assert_eq!(shipped, dashboard);
    assert_eq!(
        config_map["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    assert_eq!(
        config_map["metadata"]["annotations"],
        rendering.values["dashboard"]["annotations"]
    );
}

#[test]
fn the_network_policy_admits_scrapes_and_lets_out_dns_and_the_api_port_only() {
    // Arrange
    let rendering = rendering("ci/everything-values.yaml");
    let policy = rendering.named("NetworkPolicy", FULLNAME);

    // Act
    let egress_ports: BTreeSet<(u64, String)> = sequence(&policy["spec"]["egress"], "egress")
        .iter()
        .flat_map(|rule| sequence(&rule["ports"], "ports").to_vec())
        .map(|port| {
            (
                port["port"].as_u64().unwrap(),
                text(&port["protocol"], "protocol").to_owned(),
            )
        })
        .collect();

    // Assert
    assert!(selects(
        &policy["spec"]["podSelector"],
        &rendering.workload()["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(
        strings(&policy["spec"]["policyTypes"], "policyTypes"),
        ["Ingress", "Egress"]
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["ports"][0]["port"].as_str(),
        Some(PORT_NAME)
    );
    assert_eq!(
        policy["spec"]["ingress"][0]["from"],
        rendering.values["networkPolicy"]["ingressFrom"]
    );
    let mut expected: BTreeSet<(u64, String)> =
        [(53, "UDP".to_owned()), (53, "TCP".to_owned())].into();
    for port in sequence(
        &rendering.values["networkPolicy"]["egressPorts"],
        "egressPorts",
    ) {
        expected.insert((port.as_u64().unwrap(), "TCP".to_owned()));
    }
    assert_eq!(egress_ports, expected);
}

// ---------------------------------------------------------------------------------------------------
// The PrometheusRule
// ---------------------------------------------------------------------------------------------------

fn prometheus_rule(sets: &[&str]) -> Value {
    prometheus_rule_with(&[], sets)
}

fn prometheus_rule_with(values_files: &[&str], sets: &[&str]) -> Value {
    let mut all = vec!["prometheusRule.enabled=true"];
    all.extend(sets);
    let documents = render(values_files, &all);
    let rules: Vec<&Value> = documents
        .iter()
        .filter(|document| document["kind"].as_str() == Some("PrometheusRule"))
        .collect();
    assert_eq!(
        rules.len(),
        1,
        "one PrometheusRule with {values_files:?} {sets:?}"
    );
    rules[0].clone()
}

/// What every band of the schema takes besides its thresholds.
const BAND_SETTINGS: [&str; 5] = ["enabled", "for", "keepFiringFor", "labels", "annotations"];

/// The thresholds the schema offers, by name: threshold -> (alert, severity) -> its schema.
fn schema_thresholds() -> BTreeMap<String, BTreeMap<(String, String), serde_json::Value>> {
    let schema: serde_json::Value =
        serde_json::from_str(&read(&format!("{CHART_DIR}/values.schema.json"))).unwrap();
    let alerts = schema["properties"]["prometheusRule"]["properties"]["alerts"]["properties"]
        .as_object()
        .unwrap();
    let mut thresholds: BTreeMap<String, BTreeMap<(String, String), serde_json::Value>> =
        BTreeMap::new();
    for (alert, bands) in alerts {
        for (severity, band) in bands["properties"].as_object().unwrap() {
            let properties = band["properties"].as_object().unwrap();
            for setting in BAND_SETTINGS {
                assert!(
                    properties.contains_key(setting),
                    "the schema's {alert}.{severity} lacks {setting}"
                );
            }
            for (name, property) in properties {
                if !BAND_SETTINGS.contains(&name.as_str()) {
                    thresholds
                        .entry(name.clone())
                        .or_default()
                        .insert((alert.clone(), severity.clone()), property.clone());
                }
            }
        }
    }
    thresholds
}

#[test]
fn the_prometheus_rule_without_overrides_holds_exactly_the_shipped_rules() {
    // Arrange
    let shipped = shipped_rules();

    // Act
    let resource = prometheus_rule(&[]);

    // Assert
    assert_eq!(
        resource["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert!(
        resource["spec"]["groups"] == shipped["groups"],
        "the PrometheusRule's groups differ from {RULES_FILE}"
    );
}

#[test]
fn alert_overrides_change_thresholds_and_durations_and_disable_single_bands() {
    // Arrange
    let shipped = rules_by_alert(&shipped_rules()["groups"]);
    let key = |alert: &str, severity: &str| (alert.to_owned(), severity.to_owned());
    let expiring_warning = key("AnthropicApiKeyExpiring", "warning");
    let expiring_critical = key("AnthropicApiKeyExpiring", "critical");
    let stale = key("AnthropicKeyDataStale", "warning");
    let down = key("AnthropicExporterDown", "warning");

    // Act
    let resource = prometheus_rule(&[
        "prometheusRule.alerts.AnthropicApiKeyExpiring.warning.days=21",
        "prometheusRule.alerts.AnthropicApiKeyExpiring.warning.for=2h",
        "prometheusRule.alerts.AnthropicApiKeyExpiring.critical.labels.page=yes",
        "prometheusRule.alerts.AnthropicApiKeyExpiring.critical.keepFiringFor=1h",
        "prometheusRule.alerts.AnthropicApiKeyNeverExpires.info.enabled=false",
        "prometheusRule.alerts.AnthropicAdminApiPollFailing.critical.enabled=false",
        "prometheusRule.alerts.AnthropicKeyDataStale.warning.minMinutes=45",
        "prometheusRule.alerts.AnthropicExporterDown.warning.job=.*anthropic.*",
        "prometheusRule.ruleLabels.team=platform",
    ]);
    let rendered = rules_by_alert(&resource["spec"]["groups"]);
    let expr = |rule: &(String, String)| text(&rendered[rule]["expr"], "expr").to_owned();

    // Assert
    assert!(!rendered.contains_key(&key("AnthropicApiKeyNeverExpires", "info")));
    assert!(!rendered.contains_key(&key("AnthropicAdminApiPollFailing", "critical")));
    assert!(rendered.contains_key(&key("AnthropicAdminApiPollFailing", "warning")));
    assert_eq!(rendered.len(), shipped.len() - 2);
    assert!(
        expr(&expiring_warning).contains("time() < 21 * 86400"),
        "{}",
        expr(&expiring_warning)
    );
    assert!(!expr(&expiring_warning).contains("14 * 86400"));
    assert_eq!(rendered[&expiring_warning]["for"].as_str(), Some("2h"));
    assert_eq!(
        rendered[&expiring_critical]["for"],
        shipped[&expiring_critical]["for"]
    );
    assert_eq!(
        expr(&expiring_critical),
        text(&shipped[&expiring_critical]["expr"], "expr")
    );
    assert_eq!(
        rendered[&expiring_critical]["labels"]["page"].as_str(),
        Some("yes")
    );
    assert_eq!(
        rendered[&expiring_critical]["labels"]["severity"].as_str(),
        Some("critical")
    );
    assert_eq!(
        rendered[&expiring_critical]["keep_firing_for"].as_str(),
        Some("1h")
    );
    assert_eq!(
        rendered[&expiring_warning]["keep_firing_for"],
        shipped[&expiring_warning]["keep_firing_for"]
    );
    assert_eq!(
        expr(&stale).matches("45 * 60").count(),
        2,
        "the 30-minute floor and the 30-minute uptime of the staleness alert should move: {}",
        expr(&stale)
    );
    assert!(
        expr(&stale).contains("offset 45m") && !expr(&stale).contains("30m"),
        "the 30-minute look-back at the failure counters should move: {}",
        expr(&stale)
    );
    assert!(
        text(
            &rendered[&stale]["annotations"]["description"],
            "description"
        )
        .contains("at least 45 minutes ago"),
        "{:?}",
        rendered[&stale]["annotations"]
    );
    assert!(
        expr(&down).contains(r#"up{job=~".*anthropic.*"} == 0"#),
        "{}",
        expr(&down)
    );
    assert!(!expr(&down).contains("keys"), "{}", expr(&down));
    assert!(
        text(
            &rendered[&down]["annotations"]["description"],
            "description"
        )
        .contains(r#"whose job matches ".*anthropic.*":"#),
        "{:?}",
        rendered[&down]["annotations"]
    );
    for (rule_key, rule) in &rendered {
        assert_eq!(
            rule["labels"]["team"].as_str(),
            Some("platform"),
            "{rule_key:?}"
        );
        if ![&expiring_warning, &expiring_critical, &stale, &down].contains(&rule_key) {
            assert_eq!(rule, &{
                let mut shipped_rule = shipped[rule_key].clone();
                shipped_rule["labels"]["team"] = Value::from("platform");
                shipped_rule
            });
        }
    }
}

#[test]
fn every_threshold_the_schema_offers_moves_its_bands_and_nothing_else() {
    // Arrange
    let shipped = rules_by_alert(&shipped_rules()["groups"]);
    let dir = TempDir::new("thresholds");
    let mut thresholds = schema_thresholds();
    // keep_firing_for is set the same way on every band, also on those the rules file gives none.
    thresholds.insert(
        "keepFiringFor".to_owned(),
        shipped
            .keys()
            .map(|band| {
                (
                    band.clone(),
                    serde_json::json!({"$ref": "#/definitions/prometheusDuration"}),
                )
            })
            .collect(),
    );
    assert!(
        thresholds.len() > 5,
        "the schema offers too few thresholds: {:?}",
        thresholds.keys()
    );

    for (name, bands) in &thresholds {
        // A value found in no rule of the shipped file, so that finding it proves the override landed.
        let value = |schema: &serde_json::Value| -> serde_json::Value {
            match (schema["type"].as_str(), schema["$ref"].as_str()) {
                (Some("number" | "integer"), _) => serde_json::json!(17),
                (_, Some("#/definitions/prometheusDuration")) => serde_json::json!("17m"),
                (Some("string"), _) => serde_json::json!(".*ake17.*"),
                _ => panic!("{name}: this test cannot choose a value for {schema}"),
            }
        };
        let written = |schema: &serde_json::Value| match value(schema) {
            serde_json::Value::String(written) => written,
            number => number.to_string(),
        };
        // Every band offering the threshold at once: thresholds that must agree between bands do.
        let mut alerts = serde_json::Map::new();
        for ((alert, severity), schema) in bands {
            alerts
                .entry(alert.clone())
                .or_insert_with(|| serde_json::json!({}))[severity] =
                serde_json::json!({ name: value(schema) });
        }
        // JSON is YAML.
        let file = dir.write(
            &format!("{name}.yaml"),
            &serde_json::json!({"prometheusRule": {"alerts": alerts}}).to_string(),
        );

        // Act
        let rendered =
            rules_by_alert(&prometheus_rule_with(&[file.to_str().unwrap()], &[])["spec"]["groups"]);

        // Assert
        assert_eq!(rendered.len(), shipped.len(), "{name}");
        for (band, rule) in &rendered {
            let original = &shipped[band];
            let Some(schema) = bands.get(band) else {
                assert_eq!(
                    rule, original,
                    "{name} changed {band:?}, which does not offer it"
                );
                continue;
            };
            let written = written(schema);
            if name == "keepFiringFor" {
                assert_eq!(
                    rule["keep_firing_for"].as_str(),
                    Some(written.as_str()),
                    "{band:?}"
                );
                let mut expected = original.clone();
                expected["keep_firing_for"] = Value::from(written);
                assert_eq!(
                    rule, &expected,
                    "{name} changed more than keep_firing_for of {band:?}"
                );
                continue;
            }
            let expr = text(&rule["expr"], "expr");
            assert!(
                !text(&original["expr"], "expr").contains(&written) && expr.contains(&written),
                "{name} = {written} should move the expression of {band:?}:\n{expr}"
            );
            for (key, field) in original.as_mapping().unwrap() {
                if key.as_str() != Some("expr") && key.as_str() != Some("annotations") {
                    assert_eq!(&rule[key], field, "{name} changed {key:?} of {band:?}");
                }
            }
            assert_eq!(
                rule.as_mapping().unwrap().len(),
                original.as_mapping().unwrap().len(),
                "{name} added a field to {band:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// What the chart refuses
// ---------------------------------------------------------------------------------------------------

#[test]
fn the_schema_rejects_unknown_and_mistyped_values_naming_them() {
    // Arrange
    let dir = TempDir::new("bad-values");
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("an unknown top-level value", dir.write("a.yaml", "replicas: 2\n"), "'replicas'"),
        (
            "a misspelt nested value",
            dir.write("b.yaml", "securityContext:\n  readOnlyRootFileSystem: true\n"),
            "'readOnlyRootFileSystem'",
        ),
        (
            "a number as a string",
            dir.write("c.yaml", "sharding:\n  totalShards: \"3\"\n"),
            "/sharding/totalShards",
        ),
        (
            "a duration without a unit",
            dir.write("d.yaml", "exporter:\n  pollInterval: \"5\"\n"),
            "/exporter/pollInterval",
        ),
        (
            "an unknown log format",
            dir.write("e.yaml", "exporter:\n  logFormat: xml\n"),
            "/exporter/logFormat",
        ),
        (
            "an organization with both an existing Secret and a key",
            dir.write(
                "f.yaml",
                "organizations:\n  - name: prod\n    existingSecret: k\n    adminKey: sk-ant-admin01-x\n",
            ),
            "/organizations/0",
        ),
        (
            "an organization name the exporter refuses",
            dir.write(
                "g.yaml",
                "organizations:\n  - name: prod org\n    existingSecret: k\n",
            ),
            "/organizations/0/name",
        ),
        (
            "no organization",
            dir.write("h.yaml", "organizations: []\n"),
            "/organizations",
        ),
        (
            "an alert the rules file does not have",
            dir.write(
                "i.yaml",
                "prometheusRule:\n  alerts:\n    AnthropicApiKeyExpirng:\n      warning: {for: 1h}\n",
            ),
            "'AnthropicApiKeyExpirng'",
        ),
        (
            "a severity band the alert does not have",
            dir.write(
                "j.yaml",
                "prometheusRule:\n  alerts:\n    AnthropicApiKeyNeverExpires:\n      warning: {enabled: false}\n",
            ),
            "'warning'",
        ),
        (
            "a threshold the band does not have",
            dir.write(
                "k.yaml",
                "prometheusRule:\n  alerts:\n    AnthropicApiKeyNeverExpires:\n      info: {days: 3}\n",
            ),
            "'days'",
        ),
        (
            "an admin key in the environment",
            dir.write("l.yaml", "extraEnv:\n  - name: ANTHROPIC_ADMIN_KEY\n    value: x\n"),
            "/extraEnv/0/name",
        ),
        (
            "a scrape interval without a unit",
            dir.write("m.yaml", "serviceMonitor:\n  interval: 60\n"),
            "/serviceMonitor/interval",
        ),
        (
            "a basic auth password that is not a bcrypt hash",
            dir.write("n.yaml", "webConfig:\n  basicAuthUsers:\n    prometheus: secret\n"),
            "/webConfig/basicAuthUsers/prometheus",
        ),
    ];

    for (what, file, named) in cases {
        // Act
        let result = try_render(&[file.to_str().unwrap()], &[]);

        // Assert
        let output = result
            .err()
            .unwrap_or_else(|| panic!("the chart accepted {what}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(named),
            "{what}: helm's message should name {named}:\n{stderr}"
        );
    }
}

#[test]
fn the_chart_refuses_with_a_reason_what_the_schema_cannot_judge() {
    // Arrange
    let dir = TempDir::new("refused-values");
    let cases = [
        (
            dir.write(
                "a.yaml",
                "organizations:\n  - {name: prod, existingSecret: a}\n  - {name: prod, existingSecret: b}\n",
            ),
            "appears twice",
        ),
        (
            dir.write(
                "b.yaml",
                "webConfig:\n  tls: {enabled: true, existingSecret: t, clientCaKey: ca.crt, clientAuthType: RequireAndVerifyClientCert}\n",
            ),
            "probes",
        ),
        (
            dir.write("c.yaml", "webConfig:\n  tls: {enabled: true}\n"),
            "webConfig.tls.existingSecret",
        ),
        (
            dir.write(
                "d.yaml",
                "webConfig:\n  tls: {enabled: true, existingSecret: t, clientAuthType: VerifyClientCertIfGiven}\n",
            ),
            "clientCaKey",
        ),
        (
            dir.write("e.yaml", "replicaCount: 2\nsharding: {totalShards: 2}\n"),
            "replicaCount",
        ),
        (
            dir.write(
                "f.yaml",
                "prometheusRule:\n  enabled: true\n  alerts:\n    AnthropicApiKeyExpiringUnused:\n      info: {recentUseDays: 14}\n",
            ),
            "recentUseDays must be the same in AnthropicApiKeyExpiring.warning, \
             AnthropicApiKeyExpiring.critical, AnthropicApiKeyExpiringUnused.info",
        ),
    ];

    for (file, reason) in cases {
        // Act
        let result = try_render(&[file.to_str().unwrap()], &[]);

        // Assert
        let output = result.err().unwrap_or_else(|| {
            panic!(
                "the chart accepted {}",
                std::fs::read_to_string(&file).unwrap()
            )
        });
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(reason),
            "the message should say {reason:?}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// checkov
// ---------------------------------------------------------------------------------------------------

#[test]
fn checkov_finds_no_failed_check_in_any_rendering() {
    // Arrange
    let dir = TempDir::new("checkov");
    for (index, rendering) in renderings().iter().enumerate() {
        let text: String = rendering
            .documents
            .iter()
            .map(|document| format!("---\n{}", serde_norway::to_string(document).unwrap()))
            .collect();
        dir.write(&format!("rendering-{index}.yaml"), &text);
    }

    // Act
    // NB: --skip-download and the two variables keep checkov off the network (it would fetch guidelines
    // from its vendor's platform and look for a newer version of itself).
    let output = Command::new(tools().join("checkov"))
        .args(["--framework", "kubernetes", "--directory"])
        .arg(&dir.path)
        .args([
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ])
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CKV_SKIP_PACKAGE_UPDATE_CHECK", "true")
        .output()
        .expect("cannot run checkov");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "checkov's output is not JSON ({error}):\n{}",
                describe(&output)
            )
        });

    // Assert
    let summary = &report["summary"];
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|check| {
            format!(
                "{} {} in {}",
                check["check_id"], check["check_name"], check["resource"]
            )
        })
        .collect();
    assert!(failed.is_empty(), "checkov failed checks: {failed:#?}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["parsing_errors"], 0, "{summary}");
    assert!(summary["passed"].as_u64().unwrap() > 100, "{summary}");
    assert!(
        summary["resource_count"].as_u64().unwrap() >= renderings().len() as u64 * 5,
        "{summary}"
    );
    for skipped in report["results"]["skipped_checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let reason = skipped["check_result"]["suppress_comment"]
            .as_str()
            .unwrap_or_default();
        assert!(
            reason.len() > 20,
            "checkov skips {} without a reason: {skipped}",
            skipped["check_id"]
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// The real exporter binary against each rendering
// ---------------------------------------------------------------------------------------------------

/// The container's environment as the kubelet gives it: literal values, and the pod's ordinal for the
/// pod-index label (here 1, a shard that exists whenever there are several).
fn kubelet_environment(rendering: &Rendering) -> Vec<(String, String)> {
    rendering.container()["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|variable| {
            let name = text(&variable["name"], "env name").to_owned();
            let value = match variable["value"].as_str() {
                Some(value) => value.to_owned(),
                None => {
                    let field = &variable["valueFrom"]["fieldRef"]["fieldPath"];
                    assert_eq!(
                        field.as_str(),
                        Some(POD_INDEX_FIELD),
                        "{}: {name}",
                        rendering.label
                    );
                    "1".to_owned()
                }
            };
            (name, value)
        })
        .collect()
}

/// `$(NAME)` in an argument, replaced by the variable's value as the kubelet does.
fn expand(arg: &str, env: &[(String, String)]) -> String {
    env.iter().fold(arg.to_owned(), |arg, (name, value)| {
        arg.replace(&format!("$({name})"), value)
    })
}

#[test]
fn the_exporter_accepts_the_flags_config_file_and_web_config_of_every_rendering() {
    for rendering in renderings() {
        // Arrange
        let label = rendering.label;
        let dir = TempDir::new("flags");
        let root = dir.path.to_str().unwrap().to_owned();
        let local = |path: &str| {
            assert!(
                path.starts_with(CONTAINER_DIR),
                "{label}: {path} is outside {CONTAINER_DIR}"
            );
            path.replacen(CONTAINER_DIR, &root, 1)
        };
        let config_map = rendering.named("ConfigMap", FULLNAME);
        let config = text(&config_map["data"]["config.yml"], "config.yml");
        dir.write(
            &local(&format!("{}/config.yml", rendering.mount_path("config"))),
            &config.replace(CONTAINER_DIR, &root),
        );
        for (path, ..) in rendering.key_files() {
            dir.write(&local(&path), &format!("{TEST_ADMIN_KEY}\n"));
        }
        if let Some(secret) = rendering.all_of("Secret").into_iter().find(|secret| {
            secret["metadata"]["name"].as_str() == Some(&format!("{FULLNAME}-web-config"))
        }) {
            let web_config = text(&secret["stringData"]["web-config.yml"], "web-config.yml");
            let mount = rendering.mount_path("web-config");
            dir.write(
                &local(&format!("{mount}/web-config.yml")),
                &web_config.replace(CONTAINER_DIR, &root),
            );
            let parsed = parse_yaml(web_config, "web-config.yml");
            let tls = &parsed["tls_server_config"];
            if !tls.is_null() {
                let certified =
                    rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
                let tls_mount = rendering.mount_path("tls");
                for (field, pem) in [
                    ("cert_file", certified.cert.pem()),
                    ("key_file", certified.signing_key.serialize_pem()),
                    ("client_ca_file", certified.cert.pem()),
                ] {
                    if let Some(path) = tls[field].as_str() {
                        assert!(
                            path.starts_with(&format!("{tls_mount}/")),
                            "{label}: {field} {path}"
                        );
                        dir.write(&local(path), &pem);
                    }
                }
            }
        }
        let env = kubelet_environment(rendering);
        let args: Vec<String> = rendering
            .args()
            .iter()
            .map(|arg| expand(arg, &env).replace(CONTAINER_DIR, &root))
            .collect();

        // Act
        let output = Command::new(env!("CARGO_BIN_EXE_anthropic-keys-exporter"))
            .args(&args)
            .arg("--config.check")
            .env_clear()
            .envs(env.iter().map(|(name, value)| (name, value)))
            .output()
            .expect("cannot run the exporter binary");

        // Assert
        assert!(
            args.iter().all(|arg| !arg.contains("$(")),
            "{label}: an unexpanded variable in {args:?}"
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{label}: the exporter rejects the chart's flags {args:?}:\n{}",
            describe(&output)
        );
    }
}
