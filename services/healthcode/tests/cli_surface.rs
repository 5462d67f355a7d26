//! The command line is a contract with operators' scripts, unit files and
//! config files. These tests pin it: every flag keeps its name, environment
//! variable and help (tests/cli_surface.txt), and every setting of the
//! serving commands means the same whether it comes from a flag, the
//! environment or the config file.
//!
//! One test reads the environment while another sets it, so the whole file
//! is one binary whose env-setting test runs alone (`serial` below).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use clap::{CommandFactory, Parser};
use healthcode::cli::{Cli, Command};
use healthcode::config::Settings;

/// Clap reads HEALTHCODE_* while parsing; tests that parse hold this.
static ENV: Mutex<()> = Mutex::new(());

/// Holds [`ENV`] with no HEALTHCODE_* variable set (the suite's script
/// exports the engines' addresses, which would read as settings here).
fn isolated() -> std::sync::MutexGuard<'static, ()> {
    let guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HEALTHCODE_") {
            // SAFETY: every test of this binary that reads the environment holds ENV.
            unsafe { std::env::remove_var(&name) };
        }
    }
    guard
}

fn surface_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cli_surface.txt")
}

/// Every subcommand's flags: name, environment variable, default, help.
fn surface() -> String {
    let mut out = String::new();
    let mut root = Cli::command();
    root.build();
    let mut commands: Vec<(String, &clap::Command)> = vec![(String::new(), &root)];
    while let Some((path, cmd)) = commands.pop() {
        let mut args: Vec<String> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some() || a.is_positional())
            .map(|a| {
                let name = match a.get_long() {
                    Some(long) => format!("--{long}"),
                    None => format!("<{}>", a.get_id()),
                };
                let env = a.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
                let defaults: Vec<_> = a.get_default_values().iter().map(|v| v.to_string_lossy()).collect();
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
                format!("{path} {name} env={env} default={} help={help}", defaults.join(","))
            })
            .collect();
        args.sort();
        for line in args {
            writeln!(out, "{}", line.trim_start()).unwrap();
        }
        for sub in cmd.get_subcommands() {
            commands.push((format!("{path} {}", sub.get_name()).trim_start().to_owned(), sub));
        }
    }
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    lines.join("\n") + "\n"
}

#[test]
fn every_flag_keeps_its_name_environment_variable_and_help() {
    let now = surface();
    if std::env::var_os("BLESS_CLI_SURFACE").is_some() {
        std::fs::write(surface_path(), &now).unwrap();
    }
    let pinned = std::fs::read_to_string(surface_path()).unwrap();
    let gone: Vec<_> = pinned.lines().filter(|l| !now.lines().any(|n| n == *l)).collect();
    let new: Vec<_> = now.lines().filter(|l| !pinned.lines().any(|p| p == *l)).collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "the command line changed; an intended change is pinned with \
         BLESS_CLI_SURFACE=1 cargo test -p healthcode --test cli_surface\n\
         changed or gone:\n  {}\nnew:\n  {}",
        gone.join("\n  "),
        new.join("\n  ")
    );
}

/// Stands for a password file the test writes.
const PASSWORD: &str = "{password}";
/// Replaced by the path of a policy file the test writes.
const POLICY: &str = "{policy}";

/// One sample value per serving setting, as a config-file line, with the
/// other flags it needs to be valid. Each must differ from the default.
const SAMPLES: &[(&str, &[&str])] = &[
    ("grpc_addr = \"127.0.0.1:7001\"", &[]),
    ("admin_addr = \"127.0.0.1:7002\"", &[]),
    ("data_dir = \"/srv/hc\"", &[]),
    ("console_peers = \"edge-1:9090, lookup-1:9090\"", &[]),
    ("log_cache_bytes = 1048576", &[]),
    ("store_cache_bytes = 2097152", &[]),
    ("audit_retention = \"2years\"", &[]),
    ("log = \"kafka\"", &["--kafka-brokers", "k1:9092"]),
    ("store = \"scylla\"", &["--scylla-nodes", "s1"]),
    ("negative_validity = \"24h\"", &[]),
    ("negatives_to_clear = 1", &[]),
    ("max_future_skew = \"1m\"", &[]),
    ("retention = \"14days\"", &[]),
    ("lookup_budget = \"70ms\"", &[]),
    ("lookup_batch_budget = \"700ms\"", &[]),
    ("lookup_cache_fresh_for = \"1s\"", &[]),
    ("lookup_cache_stale_for = \"2h\"", &[]),
    ("lookup_cache_capacity = 1000", &[]),
    ("lookup_cache_bytes = 1048576", &[]),
    ("lookup_concurrency = 7", &[]),
    ("lookup_queue = 9", &[]),
    ("lookup_queue_wait = \"5ms\"", &[]),
    ("status_token_reuse_for = \"5s\"", &[]),
    ("ingest_concurrency = 11", &[]),
    ("ingest_queue = 13", &[]),
    ("ingest_queue_wait = \"3s\"", &[]),
    ("edge_spool = false", &[]),
    ("edge_spool_after = \"9s\"", &[]),
    ("edge_spool_capacity = 17", &[]),
    ("fault_injection = true", &[]),
    ("dedup_capacity = 19", &[]),
    ("ingest_yields = false", &[]),
    ("log_max_bytes = 31", &[]),
    ("policy = \"{policy}\"", &[]),
    ("ingest_yield_lag = \"7ms\"", &[]),
    ("ingest_yield_min_rate = 29", &[]),
    ("materializer_batch = 23", &[]),
    ("kafka_brokers = \"k9:9092\"", &[]),
    ("kafka_topic = \"t.events\"", &[]),
    ("kafka_dead_letter_topic = \"t.dead\"", &[]),
    ("kafka_group = \"g1\"", &[]),
    ("kafka_partitions = 3", &[]),
    ("kafka_replication_factor = 3", &[]),
    ("kafka_create_topics = false", &[]),
    ("credentials_dir = \"/srv/creds\"", &[]),
    ("dev_credentials = false", &[]),
    ("tokens_file = \"/srv/t.toml\"", &[]),
    ("pseudonym_key_file = \"/srv/p.key\"", &[]),
    ("tls_cert_file = \"/srv/c.pem\"", &["--tls-key-file", "/srv/k.pem"]),
    ("tls_key_file = \"/srv/k.pem\"", &["--tls-cert-file", "/srv/c.pem"]),
    ("tls_client_ca_file = \"/srv/ca.pem\"", &["--tls-cert-file", "/srv/c.pem", "--tls-key-file", "/srv/k.pem"]),
    ("status_signing_key_file = \"/srv/s.toml\"", &[]),
    ("status_token_ttl = \"1h\"", &[]),
    ("rate_limit_per_principal = 29", &[]),
    ("max_message_bytes = 8192", &[]),
    ("allow_plaintext = true", &[]),
    ("scylla_nodes = \"s7,s8:19042\"", &[]),
    ("scylla_keyspace = \"hc2\"", &[]),
    ("scylla_replication = \"dc1=2\"", &[]),
    ("scylla_local_datacenter = \"dc1\"", &[]),
    ("scylla_read_consistency = \"one\"", &[]),
    ("scylla_write_consistency = \"all\"", &[]),
    ("scylla_read_timeout = \"30ms\"", &[]),
    ("scylla_write_timeout = \"5s\"", &[]),
    ("scylla_speculative_after = \"0s\"", &[]),
    ("scylla_username = \"hc\"", &["--store", "scylla", "--scylla-nodes", "s1", "--scylla-password-file", PASSWORD]),
    (
        "scylla_password_file = \"{password}\"",
        &["--store", "scylla", "--scylla-nodes", "s1", "--scylla-username", "hc"],
    ),
    ("kafka_option = [\"producer.linger.ms=7\"]", &[]),
];

fn settings_from(args: &[String]) -> Result<Settings, String> {
    let mut argv = vec!["healthcode".to_owned(), "up".to_owned()];
    argv.extend(args.iter().cloned());
    let cli = Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let Command::Up(serve) = cli.command else { unreachable!("parsed `up`") };
    serve.resolve().map_err(|e| format!("{e:#}"))
}

fn debug(s: Result<Settings, String>, how: &str, key: &str) -> String {
    format!("{:?}", s.unwrap_or_else(|e| panic!("{key} from {how}: {e}")))
}

/// `key = value` -> (key, the value as a flag or environment variable).
fn split(sample: &str) -> (&str, String) {
    let (key, value) = sample.split_once(" = ").expect("sample is `key = value`");
    let value = match value.parse::<toml::Value>() {
        Ok(toml::Value::String(s)) => s,
        Ok(toml::Value::Array(items)) => {
            items.iter().map(|i| i.as_str().expect("string items").to_owned()).collect::<Vec<_>>().join(",")
        }
        Ok(other) => other.to_string(),
        Err(e) => panic!("{sample}: {e}"),
    };
    (key, value)
}

#[test]
fn every_serving_setting_means_the_same_from_flag_environment_and_file() {
    let _serial = isolated();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("scylla.password");
    std::fs::write(&password, "secret\n").unwrap();
    let password = password.display().to_string();
    let policy = dir.path().join("rules-v9.toml");
    std::fs::write(&policy, "version = \"v9\"\nnegative_valid_for = \"36h\"\nnegatives_to_clear_positive = 1\n")
        .unwrap();
    let policy = policy.display().to_string();
    let mut covered = Vec::new();
    for (sample, extra) in SAMPLES {
        let sample = sample.replace(PASSWORD, &password).replace(POLICY, &policy);
        let (key, value) = split(&sample);
        let flag = format!("--{}", key.replace('_', "-"));
        let extra: Vec<String> = extra.iter().map(|s| s.replace(PASSWORD, &password)).collect();

        let mut by_flag = extra.clone();
        by_flag.extend([flag.clone(), value.clone()]);
        let by_flag = debug(settings_from(&by_flag), "flag", key);

        let file = dir.path().join(format!("{key}.toml"));
        std::fs::write(&file, format!("{sample}\n")).unwrap();
        let mut by_file = extra.clone();
        by_file.extend(["--config".to_owned(), file.display().to_string()]);
        let by_file = debug(settings_from(&by_file), "file", key);

        let env = Cli::command()
            .find_subcommand("up")
            .and_then(|up| up.get_arguments().find(|a| a.get_long() == Some(&flag[2..])).cloned())
            .and_then(|a| a.get_env().map(|e| e.to_owned()))
            .unwrap_or_else(|| panic!("{flag} has an environment variable"));
        // SAFETY: the only test of this binary that touches the environment,
        // and it holds ENV while other tests that parse wait.
        unsafe { std::env::set_var(&env, &value) };
        let by_env = settings_from(&extra);
        unsafe { std::env::remove_var(&env) };
        let by_env = debug(by_env, "environment", key);

        assert_eq!(by_flag, by_file, "{key}: flag and file disagree");
        assert_eq!(by_flag, by_env, "{key}: flag and environment disagree");
        // Without the setting the other flags may be invalid (a lone TLS key).
        let baseline = settings_from(&extra).map(|s| format!("{s:?}"));
        assert_ne!(Ok(by_flag), baseline, "{key} = {value} changed nothing");
        covered.push(flag);
    }
    // Every flag of `up` but --config and --log-format has a sample.
    let up = Cli::command().find_subcommand("up").cloned().unwrap();
    let missing: Vec<_> = up
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !["config", "log-format", "help"].contains(l))
        .filter(|l| !covered.iter().any(|c| &c[2..] == *l))
        .collect();
    assert!(missing.is_empty(), "settings without a sample: {missing:?}");
}

#[test]
fn defaults_named_in_the_help_are_the_defaults_in_force() {
    let _serial = isolated();
    let defaults = debug(settings_from(&[]), "defaults", "-");
    let up = Cli::command().find_subcommand("up").cloned().unwrap();
    let mut checked = 0;
    for arg in up.get_arguments() {
        let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) else { continue };
        let help = help.to_string();
        let Some(default) = help.split("[default: ").nth(1).and_then(|d| d.split(']').next()) else { continue };
        if default.contains('<') {
            continue; // derived from another setting, e.g. <data_dir>/credentials
        }
        let named = debug(settings_from(&[format!("--{long}"), default.to_owned()]), "help's default", long);
        assert_eq!(named, defaults, "--{long}: the help says [default: {default}], but that is not what is in force");
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} defaults checked");
}

#[test]
fn up_on_a_public_address_without_tls_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_healthcode"))
        .args(["up", "--grpc-addr", "0.0.0.0:0", "--admin-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("HEALTHCODE_ALLOW_PLAINTEXT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(stderr.contains("without TLS") && stderr.contains("--allow-plaintext"), "{stderr}");
}
