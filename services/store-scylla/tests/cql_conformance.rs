//! The StatusStore conformance suite against a real CQL cluster (ScyllaDB,
//! or the Apache Cassandra cluster `scripts/engines.sh` starts) when
//! `HEALTHCODE_SCYLLA_NODES` names one (host:port,...). Each run writes under
//! its own resident prefix in the keyspace `HEALTHCODE_SCYLLA_KEYSPACE`
//! (default `healthcode_conformance`, replication
//! `HEALTHCODE_SCYLLA_REPLICATION`, default one replica per node up to three).

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use healthcode_store::StatusStore;
use healthcode_store::conformance::{RETENTION, StoreFactory};
use healthcode_store_scylla::config::parse_nodes;
use healthcode_store_scylla::{ScyllaConfig, ScyllaStore};

struct ScyllaFactory {
    config: ScyllaConfig,
    prefix: String,
}

fn factory() -> Option<ScyllaFactory> {
    let nodes = std::env::var("HEALTHCODE_SCYLLA_NODES").ok().filter(|n| !n.trim().is_empty())?;
    let nodes = parse_nodes(&nodes).expect("HEALTHCODE_SCYLLA_NODES");
    let replicas = nodes.len().min(3);
    let mut config = ScyllaConfig::new(nodes);
    config.keyspace = std::env::var("HEALTHCODE_SCYLLA_KEYSPACE").unwrap_or_else(|_| "healthcode_conformance".into());
    config.replication = std::env::var("HEALTHCODE_SCYLLA_REPLICATION")
        .unwrap_or_else(|_| format!("datacenter1={replicas}"))
        .parse()
        .expect("HEALTHCODE_SCYLLA_REPLICATION");
    // A test cluster on a laptop is slower than the production budget.
    config.read_timeout = std::time::Duration::from_secs(2);
    config.retention = RETENTION;
    // One prefix per test process, so reruns and parallel cases never meet.
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(|| format!("run-{}-{}", std::process::id(), healthcode_core::UnixMicros::now().0));
    Some(ScyllaFactory { config, prefix: run.clone() })
}

#[async_trait]
impl StoreFactory for ScyllaFactory {
    async fn open(&self) -> Arc<dyn StatusStore> {
        Arc::new(ScyllaStore::connect(self.config.clone()).await.expect("connect to ScyllaDB"))
    }

    fn resident(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }
}

healthcode_store::status_store_conformance!(factory());

/// Runs without a server: an unreachable cluster is a store that is
/// unavailable (the lookup answers stale, the materializer retries), not a
/// panic or a hang.
#[tokio::test]
async fn an_unreachable_cluster_is_unavailable_within_the_connect_timeout() {
    let mut config = ScyllaConfig::new(vec!["127.0.0.1:1".into()]);
    config.connect_timeout = std::time::Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = ScyllaStore::connect(config).await.err().expect("nothing listens on port 1");
    assert!(matches!(err, healthcode_store::StoreError::Unavailable { .. }), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
}

/// Materializers and lookups of a deployment start together: connecting
/// several stores at once to a keyspace nobody created yet must work for all
/// of them (Cassandra once answered one of them "table schema_version does
/// not exist" right after its own CREATE ... IF NOT EXISTS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_together_on_a_new_keyspace_all_connect() {
    let Some(factory) = factory() else {
        healthcode_store::conformance::skipped("stores_starting_together_on_a_new_keyspace_all_connect", "no cluster");
        return;
    };
    let mut config = factory.config.clone();
    config.keyspace = format!("hc_race_{}_{}", std::process::id(), healthcode_core::UnixMicros::now().0 % 1_000_000);
    let connects = (0..6).map(|_| ScyllaStore::connect(config.clone()));
    for (i, result) in futures_util::future::join_all(connects).await.into_iter().enumerate() {
        assert!(result.is_ok(), "store {i} of 6 failed to start: {:?}", result.err());
    }
}
