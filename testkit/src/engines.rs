//! The real engines the drills run on and break: the Apache Kafka and
//! Apache Cassandra clusters `scripts/engines.sh up` started, named by the
//! environment it prints (`HEALTHCODE_KAFKA_BROKERS`,
//! `HEALTHCODE_SCYLLA_NODES`, `HEALTHCODE_ENGINES_DIR`). Nodes are killed,
//! frozen and restarted through the same script, so there is one place that
//! knows how a node starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// Which cluster a node belongs to; the names `engines.sh` takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Engine {
    Kafka,
    Cql,
}

impl Engine {
    fn arg(self) -> &'static str {
        match self {
            Engine::Kafka => "kafka",
            Engine::Cql => "cql",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Engines {
    script: PathBuf,
    dir: String,
    /// `host:port,...` of the Kafka brokers.
    pub kafka_brokers: String,
    /// `host:port,...` of the CQL nodes.
    pub cql_nodes: String,
}

impl Engines {
    /// The clusters the environment names, driven by `script`; `None` when
    /// the environment names no Kafka and CQL cluster.
    pub fn from_env(script: &Path) -> Option<Engines> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Some(Engines {
            script: script.to_owned(),
            dir: var("HEALTHCODE_ENGINES_DIR")?,
            kafka_brokers: var("HEALTHCODE_KAFKA_BROKERS")?,
            cql_nodes: var("HEALTHCODE_SCYLLA_NODES")?,
        })
    }

    /// `scripts/engines.sh` of the workspace this crate was built in.
    pub fn workspace_script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/engines.sh")
    }

    pub fn nodes(&self, engine: Engine) -> usize {
        match engine {
            Engine::Kafka => self.kafka_brokers.split(',').count(),
            Engine::Cql => self.cql_nodes.split(',').count(),
        }
    }

    /// Replicas per record or row: every node, up to three.
    pub fn replication(&self, engine: Engine) -> usize {
        self.nodes(engine).min(3)
    }

    /// The flags that put a healthcode process's facts in `keyspace` on
    /// these CQL nodes. Six JVMs, the roles and the load share two cores
    /// here: reads take longer than the production budgets (40 ms, 50 ms)
    /// allow, so the read timeout and lookup budgets are raised.
    pub fn cql_store_args(&self, keyspace: &str) -> Vec<String> {
        let replication = format!("datacenter1={}", self.replication(Engine::Cql));
        [
            ["--store", "scylla"],
            ["--scylla-nodes", &self.cql_nodes],
            ["--scylla-replication", &replication],
            ["--scylla-keyspace", keyspace],
            ["--scylla-read-timeout", "400ms"],
            ["--lookup-budget", "1s"],
            ["--lookup-batch-budget", "3s"],
        ]
        .into_iter()
        .flatten()
        .map(String::from)
        .collect()
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("HEALTHCODE_ENGINES_DIR", &self.dir)
            .output()
            .await
            .with_context(|| format!("running {}", self.script.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "engines.sh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// SIGKILL of node `i` (1-based): no shutdown, no flush.
    pub async fn kill(&self, engine: Engine, i: usize) -> anyhow::Result<()> {
        self.run(&["kill", engine.arg(), &i.to_string()]).await.map(drop)
    }

    /// Starts node `i` again on its data and waits until it serves.
    pub async fn restart(&self, engine: Engine, i: usize) -> anyhow::Result<()> {
        self.run(&["start", engine.arg(), &i.to_string()]).await?;
        self.run(&["wait", engine.arg(), &i.to_string()]).await.map(drop)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) node `i`.
    pub async fn signal(&self, engine: Engine, i: usize, signal: &str) -> anyhow::Result<()> {
        self.run(&["signal", engine.arg(), &i.to_string(), signal]).await.map(drop)
    }

    /// Whether node `i` runs.
    pub async fn running(&self, engine: Engine, i: usize) -> bool {
        self.run(&["pid", engine.arg(), &i.to_string()]).await.is_ok_and(|pid| !pid.is_empty())
    }

    /// The Kafka node (1-based, as `engines.sh` numbers them and as their
    /// `node.id`) leading each partition of `topic` that has a leader.
    pub async fn kafka_leaders(&self, topic: &str) -> anyhow::Result<Vec<usize>> {
        let out = self.run(&["leaders", topic]).await?;
        let leaders = out.lines().filter_map(|l| l.trim().parse::<i64>().ok());
        Ok(leaders.filter(|l| *l > 0).map(|l| l as usize).collect())
    }

    /// Restarts every node that does not run, so a failed drill leaves the
    /// clusters whole for the next one.
    pub async fn heal(&self) -> anyhow::Result<()> {
        for engine in [Engine::Kafka, Engine::Cql] {
            for i in 1..=self.nodes(engine) {
                let _ = self.signal(engine, i, "CONT").await;
                if !self.running(engine, i).await {
                    self.restart(engine, i).await?;
                }
            }
        }
        // Gossip and the controller learn that a node is back within seconds.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }
}
