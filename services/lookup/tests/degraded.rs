//! The lookup never waits without bound and never goes blank for a resident
//! it has seen: the store failing or slow gives the last known facts flagged
//! stale; only an uncached resident gets UNAVAILABLE with `retry-after-ms`.
//! Concurrent lookups of one resident share one store read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use healthcode_auth::{Guard, GuardConfig, Pseudonymizer, Role, TokenRegistry, new_token, with_token};
use healthcode_core::{Facts, UnixMicros};
use healthcode_lookup::{LookupConfig, LookupService};
use healthcode_proto::v1::{self as pb, lookup_server::Lookup};
use healthcode_store::{EmbeddedStore, FactsUpdate, FaultyStore, StatusStore, StoreFaults};
use tonic::Code;

struct Fixture {
    lookup: Arc<LookupService>,
    store: Arc<dyn StatusStore>,
    faults: Arc<StoreFaults>,
    pseudonyms: Pseudonymizer,
    token: String,
    _dir: tempfile::TempDir,
}

fn fixture(config: LookupConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let (token, entry) = new_token("st-1", Role::Station);
    TokenRegistry::append(&tokens, &[entry]).unwrap();
    let guard = Arc::new(Guard::new(Arc::new(TokenRegistry::open(&tokens).unwrap()), &GuardConfig::default()));
    let embedded = EmbeddedStore::open(&dir.path().join("store"), Duration::from_secs(30 * 24 * 3600)).unwrap();
    let (faulty, faults) = FaultyStore::new(Arc::new(embedded));
    let store: Arc<dyn StatusStore> = Arc::new(faulty);
    let pseudonyms = Pseudonymizer::new(b"a test key of thirty-two bytes!!");
    let lookup = Arc::new(LookupService::new(store.clone(), Default::default(), config, guard, pseudonyms.clone()));
    Fixture { lookup, store, faults, pseudonyms, token, _dir: dir }
}

impl Fixture {
    async fn negative(&self, resident: &str) -> UnixMicros {
        let sampled = UnixMicros::now().saturating_sub(Duration::from_secs(3600));
        let facts = Facts {
            latest_negatives: [Some(sampled), None],
            latest_test: Some(sampled),
            updated_at: Some(sampled),
            ..Facts::default()
        };
        self.store
            .merge(vec![FactsUpdate { resident: self.pseudonyms.pseudonym(resident), facts }].into())
            .await
            .unwrap();
        sampled
    }

    async fn get(&self, resident: &str) -> Result<pb::ResidentStatus, tonic::Status> {
        let request = with_token(pb::GetStatusRequest { resident_id: resident.into() }, &self.token);
        self.lookup.get_status(request).await.map(|r| r.into_inner())
    }

    async fn get_many(&self, residents: &[&str]) -> Result<Vec<pb::ResidentStatus>, tonic::Status> {
        let ids = residents.iter().map(|r| r.to_string()).collect();
        let request = with_token(pb::BatchGetStatusRequest { resident_id: ids, ..Default::default() }, &self.token);
        self.lookup.batch_get_status(request).await.map(|r| r.into_inner().statuses)
    }
}

fn no_cache_window() -> LookupConfig {
    LookupConfig { cache_fresh_for: Duration::ZERO, ..LookupConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_answers_cached_residents_stale_and_others_unavailable() {
    let f = fixture(no_cache_window());
    let sampled = f.negative("alice").await;
    let fresh = f.get("alice").await.unwrap();
    assert!(!fresh.stale && fresh.color == pb::Color::Green as i32);

    f.faults.set_down(true);
    let stale = f.get("alice").await.unwrap();
    assert!(stale.stale, "answered from the cache, flagged");
    assert_eq!(stale.color, pb::Color::Green as i32);
    assert_eq!(stale.last_negative_sampled_at, Some(sampled.to_timestamp()));
    assert_eq!(stale.updated_at, Some(sampled.to_timestamp()), "the fact's own time tells how old it is");

    let status = f.get("bob").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.metadata().get(healthcode_rpc::RETRY_AFTER_MS).is_some());
    // A batch with an uncached resident cannot be answered whole.
    assert_eq!(f.get_many(&["alice", "bob"]).await.unwrap_err().code(), Code::Unavailable);
    let only_cached = f.get_many(&["alice"]).await.unwrap();
    assert!(only_cached[0].stale);

    f.faults.set_down(false);
    assert!(!f.get("alice").await.unwrap().stale, "fresh again once the store answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_is_cut_off_at_the_budget_or_the_callers_deadline() {
    // The store takes 3 s; the budget is 1.5 s; wide margins keep the test
    // about which deadline applies, not about this machine's speed.
    let f = fixture(LookupConfig { budget: Duration::from_millis(1500), ..no_cache_window() });
    f.negative("carol").await;
    f.get("carol").await.unwrap();
    f.faults.set_delay(Duration::from_secs(3));

    let started = Instant::now();
    let status = f.get("carol").await.unwrap();
    assert!(status.stale);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_millis(2900), "took {elapsed:?}");

    // A caller that waits 100 ms gets its answer long before the budget.
    let mut request = with_token(pb::GetStatusRequest { resident_id: "carol".into() }, &f.token);
    request.metadata_mut().insert("grpc-timeout", "100m".parse().unwrap());
    let started = Instant::now();
    assert!(f.lookup.get_status(request).await.unwrap().into_inner().stale);
    assert!(started.elapsed() < Duration::from_millis(1000), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_resident_share_one_store_read() {
    let f = Arc::new(fixture(LookupConfig::default()));
    f.negative("dave").await;
    f.faults.set_delay(Duration::from_millis(20));
    let before = f.faults.reads();
    let lookups: Vec<_> = (0..50)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move { f.get("dave").await.unwrap() })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap().color, pb::Color::Green as i32);
    }
    // One read of the resident, one of the city's site risks.
    assert_eq!(f.faults.reads() - before, 2, "fifty lookups, one store read of each key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_reported_by_the_materializer_reach_the_cache() {
    let f = fixture(LookupConfig { cache_fresh_for: Duration::from_secs(3600), ..LookupConfig::default() });
    f.negative("erin").await;
    assert_eq!(f.get("erin").await.unwrap().color, pb::Color::Green as i32);
    let positive = UnixMicros::now().saturating_sub(Duration::from_secs(60));
    let update = FactsUpdate {
        resident: f.pseudonyms.pseudonym("erin"),
        facts: Facts { latest_positive: Some(positive), latest_test: Some(positive), ..Facts::default() },
    };
    f.store.merge(vec![update.clone()].into()).await.unwrap();
    f.lookup.cache().merged(&[update]).await;
    let reads = f.faults.reads();
    assert_eq!(f.get("erin").await.unwrap().color, pb::Color::Red as i32, "the cache saw the write");
    assert_eq!(f.faults.reads(), reads, "answered from the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_beyond_the_lane_and_its_queue_are_shed_with_retry_after() {
    let lane = healthcode_rpc::LaneConfig {
        concurrency: 2,
        queue: 0,
        max_wait: Duration::from_millis(5),
        retry_after: Duration::from_millis(100),
    };
    let f = Arc::new(fixture(LookupConfig { lane, budget: Duration::from_secs(3), ..no_cache_window() }));
    // Slow enough that all six are in flight together even on a busy machine.
    f.faults.set_delay(Duration::from_secs(1));
    let lookups: Vec<_> = (0..6)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move { f.get(&format!("r{i}")).await })
        })
        .collect();
    let mut served = 0;
    let mut shed = 0;
    for lookup in lookups {
        match lookup.await.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(status.metadata().get(healthcode_rpc::RETRY_AFTER_MS).unwrap(), "100");
                shed += 1;
            }
        }
    }
    assert_eq!((served, shed), (2, 4), "two slots, no queue");
}
