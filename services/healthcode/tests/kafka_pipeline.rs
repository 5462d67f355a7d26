//! The pipeline on Kafka: the Apache Kafka cluster of `scripts/engines.sh`
//! (or a tansu broker when none is named), the roles as separate
//! `healthcode` processes, a materializer killed mid-flow, a poison record,
//! and a broker that goes away (librdkafka's mock cluster). Each test has
//! topics and a consumer group of its own.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use healthcode::app::{App, Role};
use healthcode::config::{LogBackend, Settings};
use healthcode_core::UnixMicros;
use healthcode_log::EventLog;
use healthcode_log_kafka::{KafkaConfig, KafkaLog};
use healthcode_proto::v1 as pb;
use healthcode_testkit::broker::{TestBroker, unique_name};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{Process, free_addr, lab, negative_test, sampled_at, shows_negative, station, wait_until};
use tonic::Code;
use tonic::transport::Channel;

/// One test's place on a broker: its topics and consumer group.
struct OnKafka {
    broker: TestBroker,
    topic: String,
    group: String,
}

impl OnKafka {
    fn start(test: &str) -> Option<OnKafka> {
        let broker = TestBroker::start(test)?;
        Some(OnKafka { broker, topic: unique_name("pipeline"), group: unique_name("materializers") })
    }

    /// Arguments of a role on these topics with a store under `data_dir`.
    fn role_args(&self, role: &str, data_dir: &Path) -> Vec<String> {
        let rf = self.broker.replication_factor().to_string();
        let dead = format!("{}.dead-letter", self.topic);
        [role, "--log", "kafka", "--kafka-brokers", &self.broker.brokers(), "--kafka-partitions", "4"]
            .into_iter()
            .chain([
                "--kafka-replication-factor",
                &rf,
                "--kafka-topic",
                &self.topic,
                "--kafka-dead-letter-topic",
                &dead,
            ])
            .chain(["--kafka-group", &self.group, "--data-dir", &data_dir.display().to_string()])
            .map(str::to_string)
            .collect()
    }

    fn settings(&self, data_dir: &Path) -> Settings {
        let mut settings = Settings::ephemeral(data_dir);
        settings.log = LogBackend::Kafka;
        settings.kafka = KafkaConfig::new(self.broker.brokers());
        settings.kafka.partitions = 2;
        settings.kafka.replication_factor = self.broker.replication_factor();
        settings.kafka.topic = self.topic.clone();
        settings.kafka.dead_letter_topic = format!("{}.dead-letter", self.topic);
        settings.materializer.group = self.group.clone();
        settings
    }
}

fn batch(events: &[pb::TestResultEvent]) -> pb::SubmitBatchRequest {
    pb::SubmitBatchRequest {
        events: events
            .iter()
            .map(|e| pb::Event { kind: Some(pb::event::Kind::TestResult(e.clone())), provenance: None })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_materializer_and_lookup_as_separate_processes() {
    let Some(kafka) = OnKafka::start("edge_materializer_and_lookup_as_separate_processes") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("processes.log"));
    let edge = Process::start(&kafka.role_args("edge", &data), Some(free_addr()), &log).await;
    let materializer = Process::start(&kafka.role_args("materializer", &data), None, &log).await;
    let lookup = Process::start(&kafka.role_args("lookup", &data), Some(free_addr()), &log).await;

    let base = UnixMicros::now();
    let events: Vec<(String, pb::TestResultEvent)> = (0..200).map(|n| negative_test("sep", n, base)).collect();
    let mut ingest = lab(edge.channel().await, &data);
    for chunk in events.chunks(50) {
        let wire: Vec<pb::TestResultEvent> = chunk.iter().map(|(_, e)| e.clone()).collect();
        let results = ingest.submit_batch(batch(&wire)).await.unwrap().into_inner().results;
        assert!(results.iter().all(|r| r.outcome == pb::Outcome::Accepted as i32), "{results:?}");
    }
    let expected: HashMap<String, UnixMicros> = events.iter().map(|(r, e)| (r.clone(), sampled_at(e))).collect();
    let residents: Vec<String> = expected.keys().cloned().collect();
    let mut lookup_client = station(lookup.channel().await, &data);
    let missing = wait_until(&mut lookup_client, &residents, Duration::from_secs(120), |s| {
        shows_negative(s, expected[&s.resident_id])
    })
    .await;
    assert!(missing.is_empty(), "{} residents never showed their result, e.g. {:?}", missing.len(), &missing[..1]);

    for process in [edge, materializer, lookup] {
        assert!(process.terminate().success(), "graceful exit on SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_materializer_killed_mid_flow_loses_nothing() {
    let Some(kafka) = OnKafka::start("a_materializer_killed_mid_flow_loses_nothing") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("processes.log"));
    let edge = Process::start(&kafka.role_args("edge", &data), Some(free_addr()), &log).await;
    let doomed = Process::start(&kafka.role_args("materializer", &data), None, &log).await;
    let survivor = Process::start(&kafka.role_args("materializer", &data), None, &log).await;
    let lookup = Process::start(&kafka.role_args("lookup", &data), Some(free_addr()), &log).await;

    // Stations submit for a few seconds; one materializer dies in the middle.
    let base = UnixMicros::now();
    let acked: Arc<Mutex<HashMap<String, UnixMicros>>> = Arc::default();
    let mut ingest = lab(edge.channel().await, &data);
    let writer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            for round in 0..60 {
                let events: Vec<(String, pb::TestResultEvent)> =
                    (round * 50..round * 50 + 50).map(|n| negative_test("rebalance", n, base)).collect();
                let wire: Vec<pb::TestResultEvent> = events.iter().map(|(_, e)| e.clone()).collect();
                let results = ingest.submit_batch(batch(&wire)).await.unwrap().into_inner().results;
                for ((resident, event), result) in events.iter().zip(results) {
                    assert_eq!(result.outcome, pb::Outcome::Accepted as i32);
                    acked.lock().unwrap().insert(resident.clone(), sampled_at(event));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Killed mid-flow: once a third of the events are acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 1000 {
        assert!(tokio::time::Instant::now() < deadline, "the stations never got going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.kill_9();
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 3000);
    let residents: Vec<String> = acked.keys().cloned().collect();
    let mut lookup_client = station(lookup.channel().await, &data);
    let missing = wait_until(&mut lookup_client, &residents, Duration::from_secs(180), |s| {
        shows_negative(s, acked[&s.resident_id])
    })
    .await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events never reached the store, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..1]
    );
    for process in [edge, survivor, lookup] {
        assert!(process.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_the_partition_moves_on() {
    let Some(kafka) = OnKafka::start("a_poison_record_is_dead_lettered_and_the_partition_moves_on") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = kafka.settings(dir.path());
    let app = App::start(Role::Up, settings.clone()).await.unwrap();

    // Garbage straight onto the topic, keyed like the resident submitted
    // next, so both land in the same partition in this order.
    let base = UnixMicros::now();
    let (resident, event) = negative_test("poison", 1, base);
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", kafka.broker.brokers()).create().unwrap();
    let garbage = [0xde, 0xad, 0xbe, 0xef, 0xff];
    // Records are keyed by the resident's pseudonym.
    let key =
        healthcode_auth::Pseudonymizer::from_file(&settings.security.pseudonym_key_file).unwrap().pseudonym(&resident);
    producer
        .send(FutureRecord::to(&settings.kafka.topic).key(key.as_bytes()).payload(&garbage[..]), Duration::from_secs(5))
        .await
        .unwrap();
    let channel = Channel::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap();
    let reply = lab(channel.clone(), dir.path())
        .submit_test_result(pb::SubmitTestResultRequest { event: Some(event.clone()) })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().outcome, pb::Outcome::Accepted as i32);

    let mut lookup = station(channel, dir.path());
    let missing =
        wait_until(&mut lookup, &[resident], Duration::from_secs(120), |s| shows_negative(s, sampled_at(&event))).await;
    assert!(missing.is_empty(), "the event after the poison record was not applied");

    let reader = KafkaLog::connect(settings.kafka.clone()).await.unwrap();
    let letters = reader.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0.payload, garbage);
    assert!(letters[0].1.starts_with("record: not a healthcode.v1.Event"), "reason: {}", letters[0].1);
    app.stop().await.unwrap();
}

/// Edge settings on librdkafka's mock cluster, with its topic made there:
/// the mock does not serve CreateTopics. Sends time out after 2 s.
fn mock_cluster_settings(
    data_dir: &Path,
    cluster: &rdkafka::mocking::MockCluster<'_, impl rdkafka::ClientContext>,
) -> Settings {
    let mut settings = Settings::ephemeral(data_dir);
    settings.log = LogBackend::Kafka;
    settings.kafka = KafkaConfig::new(cluster.bootstrap_servers());
    settings.kafka.options = vec![("producer.message.timeout.ms".into(), "2000".into())];
    settings.kafka.create_topics = false;
    cluster.create_topic(&settings.kafka.topic, 2, 1).unwrap();
    settings
}

/// Without its spool the edge never acknowledges what the log did not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_answers_unavailable_while_the_broker_is_down_and_recovers() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = mock_cluster_settings(dir.path(), &cluster);
    settings.edge.spool_capacity = None;
    let app = App::start(Role::Edge, settings).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap();
    let ingest = lab(channel, dir.path());
    let base = UnixMicros::now();
    let mut n = 0;
    let mut submit = move || {
        n += 1;
        let (_, event) = negative_test("outage", n, base);
        let mut ingest = ingest.clone();
        async move { ingest.submit_test_result(pb::SubmitTestResultRequest { event: Some(event) }).await }
    };
    assert_eq!(submit().await.unwrap().into_inner().outcome, pb::Outcome::Accepted as i32);

    cluster.broker_down(1).unwrap();
    for _ in 0..3 {
        let status = submit().await.expect_err("never ACCEPTED while the broker is down");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.metadata().get(healthcode_rpc::RETRY_AFTER_MS).is_some());
    }

    cluster.broker_up(1).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match submit().await {
            Ok(reply) => {
                assert_eq!(reply.into_inner().outcome, pb::Outcome::Accepted as i32);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                assert!(tokio::time::Instant::now() < deadline, "the edge did not recover after the broker came back");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    app.stop().await.unwrap();
}

/// With its spool the edge acknowledges while the broker is down, and every
/// spooled event reaches the topic once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_spools_while_the_broker_is_down_and_drains_after() {
    use healthcode_proto::Message;
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = mock_cluster_settings(dir.path(), &cluster);
    settings.edge.spool_after = Duration::from_millis(300);
    let app = App::start(Role::Edge, settings.clone()).await.unwrap();
    let channel = Channel::from_shared(format!("http://{}", app.grpc_addr.unwrap())).unwrap().connect().await.unwrap();
    let mut ingest = lab(channel, dir.path());
    let base = UnixMicros::now();

    cluster.broker_down(1).unwrap();
    let mut spooled = Vec::new();
    for n in 0..20 {
        let (_, event) = negative_test("spooled", n, base);
        spooled.push(event.event_id.clone());
        let reply = ingest.submit_test_result(pb::SubmitTestResultRequest { event: Some(event) }).await.unwrap();
        assert_eq!(reply.into_inner().outcome, pb::Outcome::Accepted as i32, "acknowledged from the spool");
    }
    cluster.broker_up(1).unwrap();

    let reader = KafkaLog::connect(settings.kafka.clone()).await.unwrap();
    let mut consumer = reader.consumer("spool-check").await.unwrap();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !spooled.iter().all(|id| seen.contains(id)) {
        assert!(tokio::time::Instant::now() < deadline, "spooled events never reached the topic: {} of 20", seen.len());
        for delivered in consumer.poll(100, Duration::from_millis(500)).await.unwrap() {
            let event = pb::Event::decode(delivered.record.payload.as_slice()).unwrap();
            seen.insert(healthcode_core::wire::event_id(&event).to_owned());
        }
    }
    app.stop().await.unwrap();
}
