//! The files in deploy/ checked against this binary, without Docker or a
//! cluster: every setting they pass (flag or environment variable) is one the
//! binary accepts with a valid value, every port they publish, probe or scrape
//! is one the process listens on, and every name they wire (brokers, nodes,
//! services, selectors, secrets) points at something that is there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use healthcode::cli::{Cli, Command as Verb};
use healthcode::config::{LogBackend, Settings, StoreBackend};
use healthcode_proto::v1::{ingest_server, lookup_server};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A mapping with YAML merge keys (`<<: *anchor`) applied, as Docker Compose does.
fn mapping(y: &Yaml) -> BTreeMap<String, Yaml> {
    let mut out = BTreeMap::new();
    if let Some(hash) = y.as_hash() {
        if let Some(base) = hash.get(&Yaml::String("<<".into())) {
            out.extend(mapping(base));
        }
        for (k, v) in hash {
            if let Some(k) = k.as_str().filter(|k| *k != "<<") {
                out.insert(k.to_owned(), v.clone());
            }
        }
    }
    out
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().map(scalar).collect()).unwrap_or_default()
}

fn scalar(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// A serving process as the binary would resolve it.
struct Process {
    role: &'static str,
    settings: Settings,
    listens: BTreeSet<u16>,
}

/// Parses `args` (role first) and `env` the way the binary does; a setting
/// the binary does not know, or a value it refuses, fails naming `origin`.
fn resolve(origin: &str, args: &[String], env: &[(String, String)]) -> Process {
    let cli = Cli::command();
    let serve = cli.find_subcommand("up").expect("up");
    let mut by_env: HashMap<String, (String, bool)> = HashMap::new();
    for (arg, global) in cli.get_arguments().map(|a| (a, true)).chain(serve.get_arguments().map(|a| (a, false))) {
        if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
            by_env.insert(env.to_string_lossy().into_owned(), (long.to_owned(), global));
        }
    }
    let (mut global, mut sub) = (vec!["healthcode".to_owned()], args.to_vec());
    for (name, value) in env {
        let (long, is_global) =
            by_env.get(name).unwrap_or_else(|| panic!("{origin}: {name} is not a setting the binary reads"));
        let flag = format!("--{long}");
        if sub.contains(&flag) {
            continue; // a flag beats the environment
        }
        let target = if *is_global { &mut global } else { &mut sub };
        target.extend([flag, value.clone()]);
    }
    global.extend(sub);
    let parsed =
        Cli::try_parse_from(&global).unwrap_or_else(|e| panic!("{origin}: the binary refuses {global:?}:\n{e}"));
    let (role, args) = match parsed.command {
        Verb::Up(a) => ("up", a),
        Verb::Edge(a) => ("edge", a),
        Verb::Materializer(a) => ("materializer", a),
        Verb::Lookup(a) => ("lookup", a),
        _ => panic!("{origin}: {global:?} is not a serving command"),
    };
    let settings = args.resolve().unwrap_or_else(|e| panic!("{origin}: invalid settings: {e:#}"));
    let mut listens = BTreeSet::from([settings.admin_addr.port()]);
    if role != "materializer" {
        listens.insert(settings.grpc_addr.port());
    }
    Process { role, settings, listens }
}

/// The files a serving process reads from its credentials dir, each of which
/// `healthcode credentials init` must create.
fn check_credentials(origin: &str, p: &Process, mounted_at: &str, provided: &BTreeSet<String>) {
    let security = &p.settings.security;
    if p.role != "materializer" {
        security
            .check_transport(p.settings.grpc_addr)
            .unwrap_or_else(|e| panic!("{origin}: the {} would not start: {e:#}", p.role));
    }
    assert!(!security.dev_credentials, "{origin}: deployments bring their own credentials");
    let mut tls_files = Vec::new();
    if p.role != "materializer" {
        let tls = security.tls.as_ref().unwrap_or_else(|| panic!("{origin}: the {} serves gRPC without TLS", p.role));
        assert!(!security.allow_plaintext, "{origin}: plaintext gRPC is allowed");
        let client_ca = tls.client_ca_file.as_ref().unwrap_or_else(|| panic!("{origin}: client certificates refused"));
        tls_files.extend([&tls.cert_file, &tls.key_file, client_ca]);
    }
    assert_eq!(security.credentials_dir, Path::new(mounted_at), "{origin}: credentials are mounted elsewhere");
    let mut needed = tls_files;
    needed.push(&security.tokens_file);
    if p.role != "materializer" {
        needed.push(&security.pseudonym_key_file);
    }
    if p.role == "lookup" {
        needed.push(&security.status_signing_key_file);
    }
    for file in needed {
        let name = file.strip_prefix(&security.credentials_dir).unwrap_or_else(|_| panic!("{origin}: {file:?}"));
        assert!(provided.contains(name.to_str().unwrap()), "{origin}: reads {name:?}, which is not provided");
    }
}

/// What `healthcode credentials init` writes.
fn credentials_init_files() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_healthcode"))
        .args(["credentials", "init", "--credentials-dir"])
        .arg(dir.path())
        .args(["--server-name", "edge"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

fn hosts(list: &str) -> Vec<(String, u16)> {
    list.split(',')
        .map(|n| {
            let (host, port) = n.trim().rsplit_once(':').unwrap_or_else(|| panic!("{n} has no port"));
            (host.to_owned(), port.parse().unwrap())
        })
        .collect()
}

#[test]
fn compose_file_matches_the_binary() {
    let dir = deploy().join("compose");
    let doc = &load(&dir.join("compose.yaml"))[0];
    let services = mapping(&doc["services"]);
    let profiles = |s: &Yaml| strings(&mapping(s).get("profiles").cloned().unwrap_or(Yaml::Array(vec![])));
    let of_profile = |prefix: &str, profile: &str| {
        services.iter().filter(|(n, s)| n.starts_with(prefix) && profiles(s).contains(&profile.to_owned())).count()
    };
    let created = credentials_init_files();
    let mut scraped_roles = BTreeSet::new();
    let mut healthcode_services = BTreeSet::new();
    for (name, service) in &services {
        let service = mapping(service);
        let is_healthcode = service.get("image").map(scalar).is_some_and(|i| i.starts_with("healthcode:"));
        if !is_healthcode || service.contains_key("entrypoint") {
            continue;
        }
        let origin = format!("compose service {name}");
        let args = strings(&service["command"]);
        let env: Vec<(String, String)> =
            mapping(&service["environment"]).iter().map(|(k, v)| (k.clone(), scalar(v))).collect();
        let p = resolve(&origin, &args, &env);
        healthcode_services.insert(name.clone());
        let profile = match profiles(&doc["services"][name.as_str()]).as_slice() {
            [one] => one.clone(),
            other => panic!("{origin}: in one profile, dev or full, not {other:?}"),
        };
        for port in strings(service.get("ports").unwrap_or(&Yaml::Array(vec![]))) {
            let inside: u16 = port.rsplit(':').next().unwrap().parse().unwrap();
            assert!(p.listens.contains(&inside), "{origin}: publishes {inside}, listens on {:?}", p.listens);
        }
        for dep in mapping(&service["depends_on"]).keys() {
            assert!(services.contains_key(dep), "{origin}: depends on unknown {dep}");
        }
        let volumes = strings(&service["volumes"]);
        let mount = volumes.iter().find_map(|v| v.strip_prefix("credentials:")).expect("credentials volume");
        check_credentials(&origin, &p, mount.trim_end_matches(":ro"), &created);
        if p.settings.log == LogBackend::Kafka {
            let brokers = hosts(&p.settings.kafka.brokers);
            for (host, port) in &brokers {
                assert_eq!(*port, 9092, "{origin}: broker {host}");
                assert!(
                    profiles(&doc["services"][host.as_str()]).contains(&profile),
                    "{origin}: broker {host} not in {profile}"
                );
            }
            let rf = p.settings.kafka.replication_factor as usize;
            assert!(
                rf <= of_profile("kafka", &profile),
                "{origin}: replication factor {rf} above the brokers of {profile}"
            );
        }
        if p.settings.store == StoreBackend::Scylla {
            for node in &p.settings.scylla.nodes {
                let (host, _) = node.rsplit_once(':').unwrap();
                assert!(
                    profiles(&doc["services"][host]).contains(&profile),
                    "{origin}: ScyllaDB node {host} not in {profile}"
                );
            }
            let nodes = of_profile("scylla", &profile) as u32;
            for (dc, rf) in &p.settings.scylla.replication.0 {
                assert!(*rf <= nodes, "{origin}: {dc} wants {rf} replicas, {profile} has {nodes} nodes");
            }
        }
        scraped_roles.insert((name.clone(), p.settings.admin_addr.port()));
    }
    assert_eq!(healthcode_services.len(), 6, "edge, materializer and lookup in both profiles: {healthcode_services:?}");

    let prometheus = &load(&dir.join("prometheus.yml"))[0];
    let sd = &prometheus["scrape_configs"][0]["dns_sd_configs"][0];
    let names: BTreeSet<String> = strings(&sd["names"]).into_iter().collect();
    let port = sd["port"].as_i64().unwrap() as u16;
    for (name, admin) in &scraped_roles {
        assert!(names.contains(name), "prometheus does not scrape {name}");
        assert_eq!(port, *admin, "prometheus scrapes {name} on {port}, its admin port is {admin}");
    }
    let token = scalar(&prometheus["scrape_configs"][0]["authorization"]["credentials_file"]);
    assert!(created.contains(token.trim_start_matches("/credentials/")), "the ops token {token} is not created");
}

/// A Deployment's pod labels and named container ports.
struct Deployed {
    labels: BTreeMap<String, Yaml>,
    ports: HashMap<String, u16>,
}

#[test]
fn kubernetes_manifests_match_the_binary() {
    let dir = deploy().join("k8s");
    let kustomization = &load(&dir.join("kustomization.yaml"))[0];
    let mut docs = Vec::new();
    for file in strings(&kustomization["resources"]) {
        docs.extend(load(&dir.join(&file)).into_iter().map(|d| (file.clone(), d)));
    }
    let created = credentials_init_files();
    let secret = &kustomization["secretGenerator"][0];
    let secret_name = scalar(&secret["name"]);
    let secret_files: BTreeSet<String> =
        strings(&secret["files"]).iter().map(|f| f.rsplit('/').next().unwrap().to_owned()).collect();
    for f in &secret_files {
        assert!(created.contains(f), "the secret wants {f}, which `credentials init` does not create");
    }
    assert!(!secret_files.contains("ca.key"), "the CA key stays out of the cluster");

    let kind = |k: &'static str| docs.iter().filter(move |(_, d)| d["kind"].as_str() == Some(k));
    let config_maps: HashMap<String, BTreeMap<String, Yaml>> =
        kind("ConfigMap").map(|(_, d)| (scalar(&d["metadata"]["name"]), mapping(&d["data"]))).collect();
    let mut deployments: HashMap<String, Deployed> = HashMap::new();
    for (file, d) in kind("Deployment") {
        let name = scalar(&d["metadata"]["name"]);
        let origin = format!("{file}: Deployment {name}");
        let pod = &d["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let mut env: Vec<(String, String)> = Vec::new();
        for source in container["envFrom"].as_vec().unwrap() {
            let map = scalar(&source["configMapRef"]["name"]);
            let data = config_maps.get(&map).unwrap_or_else(|| panic!("{origin}: no ConfigMap {map}"));
            env.extend(data.iter().map(|(k, v)| (k.clone(), scalar(v))));
        }
        for e in container["env"].as_vec().into_iter().flatten() {
            env.push((scalar(&e["name"]), scalar(&e["value"])));
        }
        let p = resolve(&origin, &strings(&container["args"]), &env);
        assert_eq!(p.role, name, "{origin}: runs the {} role", p.role);
        assert_eq!(p.settings.store, StoreBackend::Scylla, "{origin}");
        assert_eq!(p.settings.log, LogBackend::Kafka, "{origin}");

        let mut ports = HashMap::new();
        for port in container["ports"].as_vec().unwrap() {
            let number = port["containerPort"].as_i64().unwrap() as u16;
            assert!(p.listens.contains(&number), "{origin}: declares port {number}, listens on {:?}", p.listens);
            ports.insert(scalar(&port["name"]), number);
        }
        let port_of = |y: &Yaml| match y {
            Yaml::Integer(n) => *n as u16,
            named => *ports.get(&scalar(named)).unwrap_or_else(|| panic!("{origin}: no port named {named:?}")),
        };
        for probe in ["readinessProbe", "livenessProbe"] {
            let probe_yaml = &container[probe];
            if !probe_yaml["grpc"].is_badvalue() {
                let port = port_of(&probe_yaml["grpc"]["port"]);
                assert_eq!(port, p.settings.grpc_addr.port(), "{origin}: {probe} asks gRPC on {port}");
                let service = probe_yaml["grpc"]["service"].as_str().unwrap_or("");
                let served = match p.role {
                    "edge" => ingest_server::SERVICE_NAME,
                    "lookup" => lookup_server::SERVICE_NAME,
                    _ => panic!("{origin}: the {} role serves no gRPC", p.role),
                };
                assert!(service.is_empty() || service == served, "{origin}: {probe} asks for {service}");
            } else {
                let port = port_of(&probe_yaml["httpGet"]["port"]);
                assert_eq!(port, p.settings.admin_addr.port(), "{origin}: {probe} on {port}");
                let path = scalar(&probe_yaml["httpGet"]["path"]);
                assert!(["/live", "/ready"].contains(&path.as_str()), "{origin}: {probe} path {path}");
            }
        }
        let volumes: HashMap<String, Yaml> =
            pod["volumes"].as_vec().unwrap().iter().map(|v| (scalar(&v["name"]), v.clone())).collect();
        let mut mounted = HashMap::new();
        for m in container["volumeMounts"].as_vec().unwrap() {
            let volume = &volumes[&scalar(&m["name"])];
            mounted.insert(scalar(&m["mountPath"]), volume.clone());
        }
        let credentials = mounted
            .iter()
            .find(|(_, v)| v["secret"]["secretName"].as_str() == Some(secret_name.as_str()))
            .map(|(path, _)| path.clone())
            .unwrap_or_else(|| panic!("{origin}: the credentials secret is not mounted"));
        check_credentials(&origin, &p, &credentials, &secret_files);
        let data_dir = p.settings.data_dir.to_str().unwrap().to_owned();
        assert!(mounted.contains_key(&data_dir), "{origin}: the data dir {data_dir} is not a volume (read-only root)");
        let labels = mapping(&d["spec"]["template"]["metadata"]["labels"]);
        deployments.insert(name, Deployed { labels, ports });
    }
    assert_eq!(deployments.len(), 3, "edge, materializer, lookup");

    let selects = |selector: &Yaml| -> Vec<String> {
        let wanted = mapping(selector);
        deployments
            .iter()
            .filter(|(_, d)| wanted.iter().all(|(k, v)| d.labels.get(k) == Some(v)))
            .map(|(n, _)| n.clone())
            .collect()
    };
    for (file, s) in kind("Service") {
        let origin = format!("{file}: Service {}", scalar(&s["metadata"]["name"]));
        let [target] = &selects(&s["spec"]["selector"])[..] else { panic!("{origin}: selects one Deployment") };
        let ports = &deployments[target].ports;
        for port in s["spec"]["ports"].as_vec().unwrap() {
            let ok = match &port["targetPort"] {
                Yaml::Integer(n) => ports.values().any(|p| i64::from(*p) == *n),
                named => ports.contains_key(&scalar(named)),
            };
            assert!(ok, "{origin}: targetPort {:?} is not a port of {target}", port["targetPort"]);
        }
    }
    let mut pdbs = BTreeSet::new();
    for (file, b) in kind("PodDisruptionBudget") {
        let [target] = &selects(&b["spec"]["selector"]["matchLabels"])[..] else {
            panic!("{file}: a PDB selects one Deployment")
        };
        pdbs.insert(target.clone());
    }
    assert_eq!(pdbs.len(), deployments.len(), "every Deployment has a PodDisruptionBudget");
    let scaled: BTreeSet<String> = kind("HorizontalPodAutoscaler")
        .map(|(_, h)| scalar(&h["spec"]["scaleTargetRef"]["name"]))
        .inspect(|n| assert!(deployments.contains_key(n), "an HPA scales unknown {n}"))
        .collect();
    assert_eq!(scaled, BTreeSet::from(["edge".to_owned(), "lookup".to_owned()]));
}

#[test]
fn the_dockerfile_exposes_the_ports_its_defaults_listen_on() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let env: Vec<(String, String)> = text
        .lines()
        .flat_map(|l| {
            l.trim()
                .trim_start_matches("ENV ")
                .trim_end_matches('\\')
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .filter(|(k, _)| k.starts_with("HEALTHCODE_"))
        .collect();
    assert!(!env.is_empty());
    let p = resolve("deploy/Dockerfile", &["up".to_owned()], &env);
    // The image alone serves on every address: without TLS it must refuse,
    // and a deployment says TLS or plaintext itself.
    assert!(
        p.settings.security.check_transport(p.settings.grpc_addr).is_err(),
        "the image serves plaintext by default"
    );
    let exposed: BTreeSet<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    assert_eq!(exposed, p.listens);
    assert!(text.contains("--locked -p healthcode --bin healthcode"), "the image builds the binary from the lock file");
    let loadtest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../loadtest/Cargo.toml");
    let manifest = std::fs::read_to_string(loadtest).unwrap();
    assert!(manifest.contains("name = \"healthcode-loadtest\""), "deploy/README.md replays with it from the image");
}

/// The `healthcode_*` names in `text`, with a histogram's `_bucket`, `_sum`
/// and `_count` series named by the histogram.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("healthcode_") {
        let name: String =
            text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

/// Every Rust source file under `dir`.
fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `healthcode_*` metric the services' sources register (not their
/// tests, which may name a metric that no longer exists).
fn exported_metrics() -> BTreeSet<String> {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sources = Vec::new();
    for crate_dir in std::fs::read_dir(&services).unwrap().map(|e| e.unwrap().path()) {
        if crate_dir.join("src").is_dir() {
            rust_sources(&crate_dir.join("src"), &mut sources);
        }
    }
    let exported: BTreeSet<String> =
        sources.iter().flat_map(|p| metric_names(&std::fs::read_to_string(p).unwrap())).collect();
    assert!(exported.contains("healthcode_grpc_requests_total"), "the scan found the registrations");
    exported
}

/// What the Grafana dashboards, the alert rules and the operations console
/// query: each must be a metric the binary exports.
#[test]
fn dashboards_alerts_and_the_console_query_only_metrics_the_binary_exports() {
    let exported = exported_metrics();
    let dashboards = deploy().join("compose/grafana/dashboards");
    let mut queried: Vec<(String, BTreeSet<String>)> = std::fs::read_dir(&dashboards)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), metric_names(&std::fs::read_to_string(&p).unwrap())))
        .collect();
    let alerts = deploy().join("prometheus/alerts.yml");
    queried.push((alerts.display().to_string(), metric_names(&std::fs::read_to_string(&alerts).unwrap())));
    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/console/assets/console.js");
    queried.push((console.display().to_string(), metric_names(&std::fs::read_to_string(&console).unwrap())));
    for (file, names) in queried {
        assert!(names.len() >= 5, "{file} queries healthcode metrics: {names:?}");
        let unknown: Vec<&String> = names.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} queries metrics the binary never exports: {unknown:?}");
    }
}

/// `promtool`, or why the test cannot run.
fn promtool() -> Result<PathBuf, String> {
    let found = Command::new("promtool").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if found {
        Ok(PathBuf::from("promtool"))
    } else {
        Err("promtool is not installed (apt-get install prometheus; scripts/setup.sh does)".into())
    }
}

/// The alert rules' unit tests (deploy/prometheus/alerts_test.yml): each
/// alert fires on the series that should raise it and not on healthy ones.
#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let promtool = match promtool() {
        Ok(p) => p,
        Err(why) => return healthcode_testkit::skipped("the_alert_rules_pass_their_promtool_tests", &why),
    };
    let out = Command::new(&promtool)
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(deploy().join("prometheus"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "promtool test rules failed:\n{text}");
}

/// Compose's Prometheus config loads, with the alert rules beside it as
/// the container mounts them (the ops token file is a stand-in).
#[test]
fn the_prometheus_config_loads_with_its_alert_rules() {
    let promtool = match promtool() {
        Ok(p) => p,
        Err(why) => return healthcode_testkit::skipped("the_prometheus_config_loads_with_its_alert_rules", &why),
    };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("ops.token");
    std::fs::write(&token, "stand-in").unwrap();
    let config = std::fs::read_to_string(deploy().join("compose/prometheus.yml")).unwrap();
    assert!(config.contains("/credentials/ops.token"), "the config reads the mounted ops token");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        config.replace("/credentials/ops.token", &token.display().to_string()),
    )
    .unwrap();
    std::fs::copy(deploy().join("prometheus/alerts.yml"), dir.path().join("alerts.yml")).unwrap();
    let out =
        Command::new(&promtool).args(["check", "config"]).arg(dir.path().join("prometheus.yml")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check config failed:\n{text}");
    assert!(text.contains("8 rules found"), "the alert rules were loaded:\n{text}");
    let compose = std::fs::read_to_string(deploy().join("compose/compose.yaml")).unwrap();
    assert!(compose.contains("../prometheus/alerts.yml:/etc/prometheus/alerts.yml"), "compose mounts the rules");
}
