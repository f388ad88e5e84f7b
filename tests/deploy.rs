// Test code: an unwrap or expect that fails is a failed test, and its message says which file and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Checks of the deployment files: `docker-compose.yml` with its Prometheus configuration, the
//! Kubernetes manifests in `deploy/kubernetes`, and the PrometheusRule generated from the rules file.
//!
//! None of this needs a Docker engine, a cluster or the network. The files are parsed with serde_norway
//! and checked against each other and against the repository; `promtool check config` validates the
//! Prometheus configuration of the compose demo; and the real binary validates every flag and
//! environment variable that the compose file and the Deployment hand to the exporter.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_norway::Value;

mod common;
use common::files::{
    matches_wildcards, parse_documents, parse_yaml, read, repo_path, sequence, strings, text,
};

const COMPOSE_FILE: &str = "docker-compose.yml";
const COMPOSE_PROMETHEUS_CONFIG: &str = "deploy/compose/prometheus.yml";
const RULES_FILE: &str = "dashboards/anthropic-keys-exporter.rules.yml";
const DASHBOARD_FILE: &str = "dashboards/anthropic-keys-exporter.json";
const GRAFANA_PROVISIONING: &str = "dashboards/grafana/provisioning";
const KUBERNETES_DIR: &str = "deploy/kubernetes";
const KUSTOMIZATION_FILE: &str = "kustomization.yaml";
const EXAMPLE_SECRET_FILE: &str = "secret.example.yaml";
const PROMETHEUS_RULE_FILE: &str = "deploy/kubernetes/prometheusrule.yaml";

const EXPORTER_SERVICE: &str = "exporter";
const PROMETHEUS_SERVICE: &str = "prometheus";
const GRAFANA_SERVICE: &str = "grafana";
/// The port Prometheus listens on when not told otherwise.
const PROMETHEUS_PORT: u64 = 9090;

const EXPORTER_PORT: u64 = 10419;
const PORT_NAME: &str = "http-metrics";
const SECRET_NAME: &str = "anthropic-admin-key";
const SECRET_KEY: &str = "admin-key";
const KEY_FILE_FLAG: &str = "--anthropic.admin-key-file";
/// What the tests write where an admin key is needed; never sent anywhere.
const TEST_ADMIN_KEY: &str = "sk-ant-admin01-deploy-test-key";

// ---------------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------------

fn parse_yaml_file(relative: &str) -> Value {
    parse_yaml(&read(relative), relative)
}

/// Every non-empty document of a file that may hold several, separated by `---`.
fn parse_yaml_documents(relative: &str) -> Vec<Value> {
    parse_documents(&read(relative), relative)
}

/// The YAML files of a directory of the repository, by name, sorted.
fn yaml_files_in(relative_dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_path(relative_dir))
        .unwrap_or_else(|error| panic!("cannot list {relative_dir}: {error}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    names.sort();
    names
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

/// Whether every label of `selector` (a non-empty mapping) has the same value in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_mapping() else {
        return false;
    };
    !selector.is_empty()
        && selector
            .iter()
            .all(|(name, value)| labels.get(name) == Some(value))
}

// ---------------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------------

fn compose() -> Value {
    parse_yaml_file(COMPOSE_FILE)
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(
        service.is_mapping(),
        "{COMPOSE_FILE} has no service `{name}`"
    );
    service
}

/// `command:` or `entrypoint:` of a compose service as a list of arguments.
fn compose_arguments(service: &Value, key: &str) -> Vec<String> {
    match &service[key] {
        Value::Null => Vec::new(),
        Value::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        other => strings(other, key),
    }
}

/// `environment:` of a compose service, written as a mapping or as a list of `NAME=value`.
fn compose_environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Null => Vec::new(),
        Value::Mapping(variables) => variables
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::String(text) => text.clone(),
                    Value::Null => String::new(),
                    other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                };
                (text(name, "an environment variable name").to_owned(), value)
            })
            .collect(),
        other => strings(other, "environment")
            .into_iter()
            .map(|entry| match entry.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => (entry, String::new()),
            })
            .collect(),
    }
}

/// The names in `depends_on:`, written as a list or as a mapping.
fn compose_dependencies(service: &Value) -> Vec<String> {
    match &service["depends_on"] {
        Value::Null => Vec::new(),
        Value::Mapping(services) => services
            .keys()
            .map(|name| text(name, "depends_on").to_owned())
            .collect(),
        other => strings(other, "depends_on"),
    }
}

/// The container ports a compose service publishes.
fn compose_container_ports(service: &Value) -> Vec<u64> {
    let Some(ports) = service["ports"].as_sequence() else {
        return Vec::new();
    };
    ports
        .iter()
        .map(|port| match port {
            Value::Number(number) => number.as_u64().unwrap(),
            Value::String(mapping) => {
                let container = mapping.rsplit(':').next().unwrap();
                let container = container.split('/').next().unwrap();
                container
                    .parse()
                    .unwrap_or_else(|_| panic!("cannot read the port mapping {mapping:?}"))
            }
            other => other["target"]
                .as_u64()
                .unwrap_or_else(|| panic!("cannot read the port mapping {other:?}")),
        })
        .collect()
}

#[derive(Debug)]
struct Mount {
    /// A path on the host for a bind mount, else the volume's name.
    source: String,
    target: String,
    read_only: bool,
    bind: bool,
}

/// `volumes:` of a compose service, in the short (`SOURCE:TARGET[:MODE]`) or the long syntax.
fn compose_mounts(service: &Value) -> Vec<Mount> {
    let Some(volumes) = service["volumes"].as_sequence() else {
        return Vec::new();
    };
    volumes
        .iter()
        .map(|volume| match volume {
            Value::String(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                assert!(
                    parts.len() >= 2,
                    "the volume {short:?} should read SOURCE:TARGET[:MODE]"
                );
                let source = parts[0];
                Mount {
                    source: source.to_owned(),
                    target: parts[1].to_owned(),
                    read_only: parts
                        .get(2)
                        .is_some_and(|mode| mode.split(',').any(|option| option == "ro")),
                    bind: source.starts_with('.')
                        || source.starts_with('/')
                        || source.starts_with('~'),
                }
            }
            Value::Mapping(_) => Mount {
                source: volume["source"].as_str().unwrap_or_default().to_owned(),
                target: text(&volume["target"], "a volume's target").to_owned(),
                read_only: volume["read_only"].as_bool() == Some(true),
                bind: volume["type"].as_str() == Some("bind"),
            },
            other => panic!("cannot read the volume {other:?}"),
        })
        .collect()
}

fn mount_at<'a>(mounts: &'a [Mount], target: &str, service: &str) -> &'a Mount {
    mounts
        .iter()
        .find(|mount| mount.target == target)
        .unwrap_or_else(|| panic!("the compose service `{service}` mounts nothing at {target}"))
}

/// The compose source of a file of the repository, as the compose file (at its root) refers to it.
fn compose_source(relative: &str) -> String {
    format!("./{relative}")
}

/// Where the compose Prometheus reads its configuration.
fn compose_prometheus_config_target(prometheus: &Value) -> String {
    let command = compose_arguments(prometheus, "command");
    flag_value(&command, "--config.file")
        .unwrap_or("/etc/prometheus/prometheus.yml")
        .to_owned()
}

/// The `rule_files:` of the compose Prometheus configuration, each with the repository file the compose
/// file mounts at that place (rule files are relative to the configuration's directory).
fn compose_rule_files(compose: &Value) -> Vec<(String, String)> {
    let prometheus = compose_service(compose, PROMETHEUS_SERVICE);
    let mounts = compose_mounts(prometheus);
    let config_target = compose_prometheus_config_target(prometheus);
    let config_dir = Path::new(&config_target).parent().unwrap();
    let rule_files = strings(
        &parse_yaml_file(COMPOSE_PROMETHEUS_CONFIG)["rule_files"],
        "rule_files",
    );
    assert!(
        !rule_files.is_empty(),
        "{COMPOSE_PROMETHEUS_CONFIG} loads no rules"
    );
    rule_files
        .into_iter()
        .map(|rule_file| {
            assert!(
                !rule_file.contains(['/', '*', '?', '[']),
                "rule file {rule_file:?} should be a plain name beside the configuration"
            );
            let target = config_dir.join(&rule_file);
            let mount = mount_at(&mounts, target.to_str().unwrap(), PROMETHEUS_SERVICE);
            (rule_file, mount.source.clone())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------------

/// Every document of every manifest in deploy/kubernetes, with its file name.
fn kubernetes_documents() -> Vec<(String, Value)> {
    yaml_files_in(KUBERNETES_DIR)
        .into_iter()
        .flat_map(|name| {
            parse_yaml_documents(&format!("{KUBERNETES_DIR}/{name}"))
                .into_iter()
                .map(move |document| (name.clone(), document))
        })
        .collect()
}

/// The one resource of `kind` in deploy/kubernetes.
fn the_resource(kind: &str) -> Value {
    let mut found: Vec<Value> = kubernetes_documents()
        .into_iter()
        .filter(|(_, document)| document["kind"].as_str() == Some(kind))
        .map(|(_, document)| document)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{KUBERNETES_DIR} should hold exactly one {kind}"
    );
    found.remove(0)
}

fn exporter_container(deployment: &Value) -> &Value {
    let containers = sequence(
        &deployment["spec"]["template"]["spec"]["containers"],
        "the Deployment's containers",
    );
    assert_eq!(
        containers.len(),
        1,
        "the Deployment should run the exporter alone"
    );
    &containers[0]
}

/// The container's `env:` with literal values (a `valueFrom` gets a stand-in value).
fn container_environment(container: &Value) -> Vec<(String, String)> {
    let Some(variables) = container["env"].as_sequence() else {
        return Vec::new();
    };
    variables
        .iter()
        .map(|variable| {
            let name = text(&variable["name"], "an env entry's name").to_owned();
            let value = match variable["value"].as_str() {
                Some(value) => value.to_owned(),
                None => TEST_ADMIN_KEY.to_owned(),
            };
            (name, value)
        })
        .collect()
}

/// Where the Deployment's container finds the Secret's admin key: the mount of the Secret's volume,
/// plus the file the key `admin-key` becomes in it.
fn admin_key_path_in_container(deployment: &Value) -> String {
    let pod = &deployment["spec"]["template"]["spec"];
    let volume = sequence(&pod["volumes"], "the pod's volumes")
        .iter()
        .find(|volume| volume["secret"]["secretName"].as_str() == Some(SECRET_NAME))
        .unwrap_or_else(|| panic!("the Deployment has no volume of the Secret {SECRET_NAME}"));
    let volume_name = text(&volume["name"], "the Secret volume's name");
    let file_name = match volume["secret"]["items"].as_sequence() {
        None => SECRET_KEY,
        Some(items) => items
            .iter()
            .find(|item| item["key"].as_str() == Some(SECRET_KEY))
            .map(|item| text(&item["path"], "the Secret item's path"))
            .unwrap_or_else(|| panic!("the Secret volume does not project the key {SECRET_KEY}")),
    };
    let container = exporter_container(deployment);
    let mount = sequence(&container["volumeMounts"], "the container's volumeMounts")
        .iter()
        .find(|mount| mount["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| panic!("the container does not mount the volume {volume_name}"));
    let mount_path = text(&mount["mountPath"], "the Secret's mountPath");
    format!("{}/{file_name}", mount_path.trim_end_matches('/'))
}

// ---------------------------------------------------------------------------------------------------
// The rules file's job selector
// ---------------------------------------------------------------------------------------------------

/// The `job` matcher of the AnthropicExporterDown rule: the scrape jobs it watches.
fn exporter_down_job_matcher() -> (bool, String) {
    let rules = parse_yaml_file(RULES_FILE);
    let expr = sequence(&rules["groups"], "groups")
        .iter()
        .flat_map(|group| sequence(&group["rules"], "rules"))
        .find(|rule| rule["alert"].as_str() == Some("AnthropicExporterDown"))
        .map(|rule| text(&rule["expr"], "the rule's expr").to_owned())
        .expect("the rules file has no AnthropicExporterDown alert");
    if let Some((_, rest)) = expr.split_once("job=~\"") {
        (true, rest.split('"').next().unwrap().to_owned())
    } else if let Some((_, rest)) = expr.split_once("job=\"") {
        (false, rest.split('"').next().unwrap().to_owned())
    } else {
        panic!("cannot find the job matcher of AnthropicExporterDown in {expr:?}")
    }
}

fn exporter_down_watches_job(job: &str) -> bool {
    let (regex, matcher) = exporter_down_job_matcher();
    if regex {
        matches_wildcards(&matcher, job)
    } else {
        matcher == job
    }
}

// ---------------------------------------------------------------------------------------------------
// Running the exporter and promtool
// ---------------------------------------------------------------------------------------------------

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "anthropic-keys-exporter-deploy-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Runs the exporter with `args` plus `--config.check`, in an environment holding only `env`.
fn exporter_config_check(args: &[String], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anthropic-keys-exporter"))
        .args(args)
        .arg("--config.check")
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("cannot run the exporter binary")
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
// docker-compose.yml
// ---------------------------------------------------------------------------------------------------

#[test]
fn the_compose_file_runs_the_exporter_prometheus_and_grafana_in_dependency_order() {
    // Arrange
    let compose = compose();

    // Act
    let prometheus_needs = compose_dependencies(compose_service(&compose, PROMETHEUS_SERVICE));
    let grafana_needs = compose_dependencies(compose_service(&compose, GRAFANA_SERVICE));

    // Assert
    compose_service(&compose, EXPORTER_SERVICE);
    assert!(
        prometheus_needs.iter().any(|name| name == EXPORTER_SERVICE),
        "prometheus should depend on the exporter, depends on {prometheus_needs:?}"
    );
    assert!(
        grafana_needs.iter().any(|name| name == PROMETHEUS_SERVICE),
        "grafana should depend on prometheus, depends on {grafana_needs:?}"
    );
}

#[test]
fn every_compose_image_is_pinned_to_a_version() {
    // Arrange
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();

    // Act
    let images: Vec<(String, String)> = services
        .iter()
        .filter(|(_, service)| service["build"].is_null())
        .map(|(name, service)| {
            let name = text(name, "a service name").to_owned();
            let image = text(&service["image"], "image").to_owned();
            (name, image)
        })
        .collect();

    // Assert
    assert!(!images.is_empty());
    for (service, image) in images {
        let tag = image
            .rsplit_once(':')
            .map(|(_, tag)| tag)
            .filter(|tag| !tag.contains('/'));
        assert!(
            tag.is_some_and(|tag| tag != "latest" && tag.chars().any(|c| c.is_ascii_digit())),
            "the image of `{service}`, {image:?}, should name a version"
        );
    }
}

#[test]
fn every_compose_bind_mount_is_a_read_only_file_of_the_repository() {
    // Arrange
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();

    // Act
    let mounts: Vec<(String, Mount)> = services
        .iter()
        .flat_map(|(name, service)| {
            let name = text(name, "a service name").to_owned();
            compose_mounts(service)
                .into_iter()
                .map(move |mount| (name.clone(), mount))
        })
        .collect();

    // Assert
    assert!(
        mounts.iter().any(|(_, mount)| mount.bind),
        "the compose file should mount the repository's configuration"
    );
    for (service, mount) in mounts.iter().filter(|(_, mount)| mount.bind) {
        let relative = mount.source.strip_prefix("./").unwrap_or_else(|| {
            panic!(
                "`{service}` mounts {:?}: host paths should be relative to the repository, ./...",
                mount.source
            )
        });
        assert!(
            !relative.split('/').any(|part| part == ".."),
            "`{service}` mounts {:?} from outside the repository",
            mount.source
        );
        assert!(
            repo_path(relative).exists(),
            "`{service}` mounts {:?}, which does not exist in the repository",
            mount.source
        );
        assert!(
            mount.read_only,
            "`{service}` should mount {:?} read-only",
            mount.source
        );
    }
}

#[test]
fn the_compose_exporter_is_built_from_the_repository_and_runs_the_demo() {
    // Arrange
    let compose = compose();
    let exporter = compose_service(&compose, EXPORTER_SERVICE);

    // Act
    let context = match &exporter["build"] {
        Value::String(context) => context.clone(),
        build => text(&build["context"], "build.context").to_owned(),
    };
    let dockerfile = exporter["build"]["dockerfile"]
        .as_str()
        .unwrap_or("Dockerfile");
    let command = compose_arguments(exporter, "command");

    // Assert
    assert!(
        context == "." || context == "./",
        "the exporter should be built from the repository root, not {context:?}"
    );
    assert!(
        repo_path(dockerfile).is_file(),
        "the exporter is built from {dockerfile}, which does not exist"
    );
    assert!(
        compose_arguments(exporter, "entrypoint").is_empty(),
        "the image's entrypoint is the exporter; the compose file should not replace it"
    );
    assert_eq!(command, ["--demo"]);
    assert!(
        compose_container_ports(exporter).contains(&EXPORTER_PORT),
        "the exporter should publish port {EXPORTER_PORT}"
    );
}

#[test]
fn the_compose_prometheus_reads_its_configuration_and_the_rules_file_side_by_side() {
    // Arrange
    let compose = compose();
    let prometheus = compose_service(&compose, PROMETHEUS_SERVICE);
    let mounts = compose_mounts(prometheus);

    // Act
    let config_target = compose_prometheus_config_target(prometheus);
    let config_mount = mount_at(&mounts, &config_target, PROMETHEUS_SERVICE);
    let rule_files = compose_rule_files(&compose);

    // Assert
    assert_eq!(
        config_mount.source,
        compose_source(COMPOSE_PROMETHEUS_CONFIG)
    );
    assert!(
        rule_files
            .iter()
            .any(|(_, source)| *source == compose_source(RULES_FILE)),
        "Prometheus should load {RULES_FILE}, loads {rule_files:?}"
    );
    assert!(compose_container_ports(prometheus).contains(&PROMETHEUS_PORT));
}

#[test]
fn the_compose_prometheus_scrapes_the_exporter_service_on_its_port() {
    // Arrange
    let config = parse_yaml_file(COMPOSE_PROMETHEUS_CONFIG);
    let compose = compose();

    // Act
    let jobs = sequence(&config["scrape_configs"], "scrape_configs");
    let targets: Vec<(String, String)> = jobs
        .iter()
        .flat_map(|job| {
            let name = text(&job["job_name"], "job_name").to_owned();
            sequence(&job["static_configs"], "static_configs")
                .iter()
                .flat_map(|group| strings(&group["targets"], "targets"))
                .map(move |target| (name.clone(), target))
                .collect::<Vec<_>>()
        })
        .collect();

    // Assert
    let expected = format!("{EXPORTER_SERVICE}:{EXPORTER_PORT}");
    let (job, _) = targets
        .iter()
        .find(|(_, target)| *target == expected)
        .unwrap_or_else(|| panic!("no scrape job targets {expected}, only {targets:?}"));
    compose_service(&compose, EXPORTER_SERVICE);
    assert!(
        exporter_down_watches_job(job),
        "the job {job:?} escapes AnthropicExporterDown's job selector {:?}",
        exporter_down_job_matcher().1
    );
}

#[test]
fn promtool_accepts_the_compose_prometheus_configuration_with_its_rules() {
    // Arrange
    let dir = TempDir::new("promtool");
    std::fs::copy(
        repo_path(COMPOSE_PROMETHEUS_CONFIG),
        dir.path.join("prometheus.yml"),
    )
    .unwrap();
    for (rule_file, source) in compose_rule_files(&compose()) {
        let source = repo_path(source.trim_start_matches("./"));
        std::fs::copy(&source, dir.path.join(rule_file)).unwrap();
    }

    // Act
    let output = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir.path)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): install it with the Debian package `prometheus` \
                 (scripts/test does so)"
            )
        });

    // Assert
    assert!(
        output.status.success(),
        "promtool check config rejects {COMPOSE_PROMETHEUS_CONFIG}:\n{}",
        describe(&output)
    );
}

#[test]
fn the_compose_grafana_provisions_the_prometheus_datasource_and_the_dashboard() {
    // Arrange
    let compose = compose();
    let grafana = compose_service(&compose, GRAFANA_SERVICE);
    let mounts = compose_mounts(grafana);
    let provider_folders: Vec<String> =
        yaml_files_in(&format!("{GRAFANA_PROVISIONING}/dashboards"))
            .iter()
            .flat_map(|name| {
                let file = parse_yaml_file(&format!("{GRAFANA_PROVISIONING}/dashboards/{name}"));
                sequence(&file["providers"], "providers")
                    .iter()
                    .map(|provider| text(&provider["options"]["path"], "options.path").to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
    let datasource_urls: Vec<String> =
        yaml_files_in(&format!("{GRAFANA_PROVISIONING}/datasources"))
            .iter()
            .flat_map(|name| {
                let file = parse_yaml_file(&format!("{GRAFANA_PROVISIONING}/datasources/{name}"));
                sequence(&file["datasources"], "datasources")
                    .iter()
                    .filter(|datasource| datasource["type"].as_str() == Some("prometheus"))
                    .map(|datasource| text(&datasource["url"], "url").to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();

    // Act
    let provisioning = mount_at(&mounts, "/etc/grafana/provisioning", GRAFANA_SERVICE);
    let dashboard = mounts
        .iter()
        .find(|mount| mount.source == compose_source(DASHBOARD_FILE))
        .unwrap_or_else(|| panic!("grafana does not mount {DASHBOARD_FILE}"));
    let dashboard_folder = Path::new(&dashboard.target).parent().unwrap();

    // Assert
    assert_eq!(provisioning.source, compose_source(GRAFANA_PROVISIONING));
    assert!(
        provider_folders
            .iter()
            .any(|folder| Path::new(folder) == dashboard_folder),
        "the dashboard is mounted at {}, but the providers read {provider_folders:?}",
        dashboard.target
    );
    let expected = format!("http://{PROMETHEUS_SERVICE}:{PROMETHEUS_PORT}");
    assert!(
        datasource_urls
            .iter()
            .any(|url| url.trim_end_matches('/') == expected),
        "a Prometheus datasource should point at {expected}, found {datasource_urls:?}"
    );
}

#[test]
fn anonymous_grafana_visitors_may_only_view() {
    // Arrange
    let compose = compose();
    let environment = compose_environment(compose_service(&compose, GRAFANA_SERVICE));
    let variable = |name: &str| {
        environment
            .iter()
            .find(|(variable, _)| variable == name)
            .map(|(_, value)| value.as_str())
    };

    // Act
    let anonymous = variable("GF_AUTH_ANONYMOUS_ENABLED");
    let role = variable("GF_AUTH_ANONYMOUS_ORG_ROLE");

    // Assert
    if anonymous == Some("true") {
        assert!(
            role.is_none() || role == Some("Viewer"),
            "anonymous visitors should be viewers, not {role:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------------

#[test]
fn every_kubernetes_manifest_parses_and_names_its_resources() {
    // Arrange
    let documents = kubernetes_documents();

    // Act
    let kinds: Vec<&str> = documents
        .iter()
        .map(|(_, document)| document["kind"].as_str().unwrap_or_default())
        .collect();

    // Assert
    for kind in [
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "Secret",
        "Kustomization",
    ] {
        assert!(
            kinds.contains(&kind),
            "{KUBERNETES_DIR} has no {kind}, only {kinds:?}"
        );
    }
    for (file, document) in &documents {
        text(&document["apiVersion"], &format!("apiVersion in {file}"));
        text(&document["kind"], &format!("kind in {file}"));
        if document["kind"].as_str() != Some("Kustomization") {
            text(
                &document["metadata"]["name"],
                &format!("metadata.name in {file}"),
            );
            assert!(
                document["metadata"]["namespace"].is_null(),
                "{file} should leave the namespace to the one who applies it"
            );
        }
    }
}

#[test]
fn the_deployment_runs_unprivileged_as_the_image_user_on_a_read_only_root_filesystem() {
    // Arrange
    let deployment = the_resource("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = exporter_container(&deployment);
    let effective = |field: &str| {
        let own = &container["securityContext"][field];
        if own.is_null() {
            pod["securityContext"][field].clone()
        } else {
            own.clone()
        }
    };
    let image_user = read("Dockerfile")
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("USER ").map(str::to_owned))
        .expect("the Dockerfile sets no USER");
    let (uid, gid) = image_user.split_once(':').unwrap_or((&image_user, ""));

    // Act
    let security = &container["securityContext"];

    // Assert
    assert_eq!(effective("runAsNonRoot").as_bool(), Some(true));
    assert_eq!(
        effective("runAsUser").as_u64().map(|id| id.to_string()),
        Some(uid.to_owned())
    );
    if !gid.is_empty() {
        assert_eq!(
            effective("runAsGroup").as_u64().map(|id| id.to_string()),
            Some(gid.to_owned())
        );
    }
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_ne!(security["privileged"].as_bool(), Some(true));
    assert_eq!(
        strings(&security["capabilities"]["drop"], "capabilities.drop"),
        ["ALL"]
    );
    assert!(security["capabilities"]["add"].is_null());
    assert_eq!(
        effective("seccompProfile")["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    for host_namespace in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(
            pod[host_namespace].as_bool(),
            Some(true),
            "{host_namespace}"
        );
    }
    assert!(
        !container["resources"]["requests"]["memory"].is_null()
            && !container["resources"]["limits"]["memory"].is_null(),
        "the exporter should request and limit memory"
    );
}

#[test]
fn the_deployment_reads_the_admin_key_from_the_secret_mounted_as_a_directory() {
    // Arrange
    let deployment = the_resource("Deployment");
    let container = exporter_container(&deployment);
    let args = strings(&container["args"], "args");

    // Act
    let key_path = admin_key_path_in_container(&deployment);
    let mounts = sequence(&container["volumeMounts"], "volumeMounts");
    let mount = mounts
        .iter()
        .find(|mount| {
            key_path.starts_with(&format!(
                "{}/",
                text(&mount["mountPath"], "mountPath").trim_end_matches('/')
            ))
        })
        .unwrap();

    // Assert
    assert_eq!(flag_value(&args, KEY_FILE_FLAG), Some(key_path.as_str()));
    assert!(
        mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
        "a subPath mount is never updated when the Secret changes: mount the whole directory"
    );
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    assert!(
        container_environment(container)
            .iter()
            .all(|(name, _)| !name.starts_with("ANTHROPIC_ADMIN")),
        "the key should come from the file only"
    );
    assert!(
        container["command"].is_null(),
        "the image's entrypoint is the exporter; the Deployment should not replace it"
    );
}

#[test]
fn the_deployment_probes_health_and_readiness_on_the_named_metrics_port() {
    // Arrange
    let deployment = the_resource("Deployment");
    let container = exporter_container(&deployment);
    let args = strings(&container["args"], "args");

    // Act
    let port = sequence(&container["ports"], "ports")
        .iter()
        .find(|port| port["name"].as_str() == Some(PORT_NAME))
        .unwrap_or_else(|| panic!("the container has no port named {PORT_NAME}"));

    // Assert
    assert_eq!(port["containerPort"].as_u64(), Some(EXPORTER_PORT));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let http = &container[probe]["httpGet"];
        assert_eq!(http["path"].as_str(), Some(path), "{probe}");
        assert_eq!(http["port"].as_str(), Some(PORT_NAME), "{probe}");
    }
    if let Some(address) = flag_value(&args, "--web.listen-address") {
        assert!(address.ends_with(&format!(":{EXPORTER_PORT}")), "{address}");
    }
}

#[test]
fn the_deployment_image_carries_the_crate_version() {
    // Arrange
    let deployment = the_resource("Deployment");

    // Act
    let image = text(&exporter_container(&deployment)["image"], "image");

    // Assert
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "the image {image:?} should be tagged with the crate version {}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1));
}

#[test]
fn the_service_and_the_service_monitor_reach_the_exporter_pods_on_the_metrics_port() {
    // Arrange
    let deployment = the_resource("Deployment");
    let service = the_resource("Service");
    let monitor = the_resource("ServiceMonitor");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];

    // Act
    let service_port = sequence(&service["spec"]["ports"], "the Service's ports")
        .iter()
        .find(|port| port["name"].as_str() == Some(PORT_NAME))
        .unwrap_or_else(|| panic!("the Service has no port named {PORT_NAME}"));
    let endpoint = sequence(
        &monitor["spec"]["endpoints"],
        "the ServiceMonitor's endpoints",
    )
    .iter()
    .find(|endpoint| endpoint["port"].as_str() == Some(PORT_NAME))
    .unwrap_or_else(|| panic!("the ServiceMonitor scrapes no port named {PORT_NAME}"));

    // Assert
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert!(
        selects(&service["spec"]["selector"], pod_labels),
        "the Service should select the Deployment's pods"
    );
    assert_eq!(
        service["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
        Some("anthropic-keys-exporter")
    );
    assert!(matches!(
        service["spec"]["type"].as_str(),
        None | Some("ClusterIP")
    ));
    assert_eq!(service_port["port"].as_u64(), Some(EXPORTER_PORT));
    assert!(
        service_port["targetPort"].as_str() == Some(PORT_NAME)
            || service_port["targetPort"].as_u64() == Some(EXPORTER_PORT)
    );
    assert!(
        selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor should select the Service"
    );
    assert_eq!(endpoint["path"].as_str().unwrap_or("/metrics"), "/metrics");
    assert_eq!(endpoint["interval"].as_str(), Some("60s"));
}

#[test]
fn the_exporter_down_alert_watches_the_kubernetes_job() {
    // Arrange
    let service = the_resource("Service");
    let monitor = the_resource("ServiceMonitor");

    // Act
    // The Prometheus Operator names the job after the Service, or after the Service's label that
    // `jobLabel` names.
    let job = match monitor["spec"]["jobLabel"].as_str() {
        Some(label) => text(
            &service["metadata"]["labels"][label],
            "the jobLabel's value",
        ),
        None => text(&service["metadata"]["name"], "the Service's name"),
    };

    // Assert
    assert!(
        exporter_down_watches_job(job),
        "the job {job:?} escapes AnthropicExporterDown's job selector {:?}",
        exporter_down_job_matcher().1
    );
}

#[test]
fn the_kustomization_lists_every_manifest_but_the_example_secret() {
    // Arrange
    let kustomization = parse_yaml_file(&format!("{KUBERNETES_DIR}/{KUSTOMIZATION_FILE}"));
    let manifests: Vec<String> = yaml_files_in(KUBERNETES_DIR)
        .into_iter()
        .filter(|name| name != KUSTOMIZATION_FILE && name != EXAMPLE_SECRET_FILE)
        .collect();

    // Act
    let mut resources = strings(&kustomization["resources"], "resources");
    resources.sort();

    // Assert
    for resource in &resources {
        assert!(
            repo_path(&format!("{KUBERNETES_DIR}/{resource}")).is_file(),
            "the kustomization lists {resource}, which does not exist"
        );
    }
    assert_eq!(resources, manifests);
    assert!(resources.iter().any(|name| name == "prometheusrule.yaml"));
}

#[test]
fn the_example_secret_holds_a_placeholder_under_the_key_the_deployment_reads() {
    // Arrange
    let secret = the_resource("Secret");

    // Act
    let value = text(
        &secret["stringData"][SECRET_KEY],
        "the example Secret's admin-key",
    );

    // Assert
    assert_eq!(secret["metadata"]["name"].as_str(), Some(SECRET_NAME));
    assert!(
        value.contains("REPLACE"),
        "the example Secret should hold an obvious placeholder, not {value:?}"
    );
    assert!(
        read(&format!("{KUBERNETES_DIR}/{EXAMPLE_SECRET_FILE}"))
            .contains("kubectl create secret generic")
    );
}

#[test]
fn the_prometheus_rule_carries_exactly_the_rules_file() {
    // Arrange
    let rules = parse_yaml_file(RULES_FILE);

    // Act
    let documents = parse_yaml_documents(PROMETHEUS_RULE_FILE);

    // Assert
    assert_eq!(documents.len(), 1, "{PROMETHEUS_RULE_FILE}");
    let resource = &documents[0];
    assert_eq!(
        resource["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(resource["kind"].as_str(), Some("PrometheusRule"));
    assert!(
        resource["spec"] == rules,
        "the spec of {PROMETHEUS_RULE_FILE} differs from {RULES_FILE}: \
         run dashboards/generate-prometheusrule.sh"
    );
}

// ---------------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------------

#[test]
fn the_exporter_accepts_the_flags_of_the_compose_file() {
    // Arrange
    let compose = compose();
    let exporter = compose_service(&compose, EXPORTER_SERVICE);
    let args = compose_arguments(exporter, "command");
    let mut env = compose_environment(exporter);
    env.push(("ANTHROPIC_ADMIN_KEY".to_owned(), TEST_ADMIN_KEY.to_owned()));

    // Act
    let output = exporter_config_check(&args, &env);

    // Assert
    assert_eq!(
        output.status.code(),
        Some(0),
        "the exporter rejects {args:?}:\n{}",
        describe(&output)
    );
}

#[test]
fn the_exporter_accepts_the_flags_of_the_deployment_with_the_key_in_a_file() {
    // Arrange
    let deployment = the_resource("Deployment");
    let container = exporter_container(&deployment);
    let key_path = admin_key_path_in_container(&deployment);
    let dir = TempDir::new("key-file");
    let key_file = dir.path.join(SECRET_KEY);
    std::fs::write(&key_file, format!("{TEST_ADMIN_KEY}\n")).unwrap();
    let local_key_path = key_file.to_str().unwrap();
    let args: Vec<String> = strings(&container["args"], "args")
        .into_iter()
        .map(|arg| arg.replace(&key_path, local_key_path))
        .collect();
    // No key in the environment: the key file must be what makes the configuration valid.
    let env = container_environment(container);

    // Act
    let output = exporter_config_check(&args, &env);

    // Assert
    assert!(
        args.iter().any(|arg| arg.contains(local_key_path)),
        "{args:?}"
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "the exporter rejects {args:?}:\n{}",
        describe(&output)
    );
}

#[test]
fn the_flag_check_rejects_a_flag_the_exporter_does_not_know() {
    // Arrange
    let args = vec!["--demo".to_owned(), "--no-such-flag".to_owned()];

    // Act
    let output = exporter_config_check(&args, &[]);

    // Assert
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
}

#[test]
fn the_job_selector_matcher_anchors_both_ends() {
    // Arrange
    let pattern = ".*anthropic.*keys.*";

    // Act
    let matches: Vec<bool> = [
        "anthropic-keys-exporter",
        "monitoring/anthropic-keys-exporter",
        "anthropic",
        "keys-anthropic",
    ]
    .iter()
    .map(|job| matches_wildcards(pattern, job))
    .collect();

    // Assert
    assert_eq!(matches, [true, true, false, false]);
    assert!(matches_wildcards("ake", "ake"));
    assert!(!matches_wildcards("ake", "ake-2"));
    assert!(matches_wildcards("ake-.*", "ake-2"));
    assert!(!matches_wildcards(".*-ake", "ake"));
}
