//! Every serving role takes `--store scylla`. Without a cluster here, the
//! check is that the settings are accepted and the process gets as far as
//! connecting: it stops with the store's error, not a usage error.

use std::process::Command;

#[test]
fn serving_roles_accept_the_scylla_store_and_report_an_unreachable_cluster() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["up", "materializer", "lookup"] {
        let out = Command::new(env!("CARGO_BIN_EXE_healthcode"))
            .args([role, "--store", "scylla", "--scylla-nodes", "127.0.0.1:1", "--scylla-local-datacenter", "dc1"])
            .args(["--scylla-read-consistency", "local-one", "--scylla-replication", "dc1=3"])
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env_remove("HEALTHCODE_SCYLLA_NODES")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role}: nothing listens on port 1");
        assert!(stderr.contains("opening the ScyllaDB store at 127.0.0.1:1"), "{role}: {stderr}");
        assert!(!stderr.contains("unexpected argument"), "{role}: {stderr}");
    }
}

#[test]
fn the_scylla_store_without_nodes_is_a_named_configuration_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_healthcode"))
        .args(["lookup", "--store", "scylla"])
        .env_remove("HEALTHCODE_SCYLLA_NODES")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "configuration errors exit with 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("scylla_nodes is required"));
}
