//! The StatusStore conformance suite: one set of checks every adapter must
//! pass. An adapter's test file provides a [`StoreFactory`] and invokes
//! [`status_store_conformance!`](crate::status_store_conformance).

use std::sync::Arc;

use async_trait::async_trait;
use healthcode_core::{
    AuditEntry, Color, Credential, Decision, Facts, OverrideFact, Provenance, ScanFact, ScanKind, SiteRiskFact,
    UnixMicros, VisitFact,
};

use crate::{FactsUpdate, StatusStore};

/// The retention every factory must open its store with.
pub const RETENTION: std::time::Duration = healthcode_core::validation::DEFAULT_RETENTION;
/// The audit retention every factory must open its store with.
pub const AUDIT_RETENTION: std::time::Duration = crate::DEFAULT_AUDIT_RETENTION;

/// Opens the store under test. A call after the previous handle was dropped
/// opens the same data again. Residents are prefixed so that suites sharing a
/// server do not see each other's rows.
#[async_trait]
pub trait StoreFactory: Send + Sync {
    async fn open(&self) -> Arc<dyn StatusStore>;
    fn resident(&self, name: &str) -> String;
}

/// Runs every conformance check as its own test, against a fresh factory each.
/// `$factory` evaluates to `Option<impl StoreFactory>`; `None` means the
/// backing server is not configured, and each test says that it skipped.
#[macro_export]
macro_rules! status_store_conformance {
    ($factory:expr) => {
        $crate::status_store_conformance!(@cases $factory;
            unknown_residents_have_no_facts,
            merged_facts_are_read_back,
            merging_twice_equals_merging_once,
            merge_order_does_not_matter,
            many_residents_in_one_merge,
            a_scan_pages_through_every_resident_once,
            facts_survive_reopen,
            expired_facts_are_neither_read_nor_kept,
            each_fact_expires_on_its_own,
            scans_at_the_same_instant_resolve_by_event_id,
            a_resident_with_many_visits_keeps_its_latest_scan,
            submitters_sharing_an_event_id_and_an_instant_keep_both_facts,
            visits_and_site_risks_merge_in_any_order,
            visitors_are_counted_once_per_resident_within_the_window,
            the_audit_record_pages_newest_first_and_keeps_every_entry_once,
            the_audit_record_outlives_the_facts_and_not_its_own_retention,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                match $factory {
                    Some(factory) => $crate::conformance::$case(&factory).await,
                    None => $crate::conformance::skipped(stringify!($case), "store server not configured"),
                }
            }
        )*
    };
}

pub use healthcode_testkit::skipped;

fn at(secs: i64) -> UnixMicros {
    UnixMicros(1_800_000_000_000_000 + secs * 1_000_000)
}

fn negative(secs: i64) -> Facts {
    Facts {
        latest_negatives: [Some(at(secs)), None],
        latest_test: Some(at(secs)),
        updated_at: Some(at(secs + 60)),
        ..Facts::default()
    }
}

fn positive(secs: i64) -> Facts {
    Facts {
        latest_positive: Some(at(secs)),
        latest_test: Some(at(secs)),
        updated_at: Some(at(secs)),
        ..Facts::default()
    }
}

fn override_fact(secs: i64, id: &str, color: Color) -> Facts {
    Facts {
        overrides: vec![OverrideFact {
            issued_at: at(secs),
            event_id: id.into(),
            expires_at: at(secs + 3600),
            color,
            authority_id: "authority-1".into(),
            note: format!("note of {id}"),
        }],
        updated_at: Some(at(secs)),
        ..Facts::default()
    }
}

fn visit(site: &str, secs: i64) -> Facts {
    Facts { visits: vec![VisitFact { scanned_at: at(secs), site_id: site.to_owned() }], ..Facts::default() }
}

fn site_risk(risk: &str, issued: i64, site: &str, window: (i64, i64), retracted: bool) -> Facts {
    Facts {
        site_risks: vec![SiteRiskFact {
            risk_id: risk.to_owned(),
            issued_at: at(issued),
            event_id: format!("{risk}-v{issued}"),
            site_id: site.to_owned(),
            authority_id: "authority-1".into(),
            risky_from: at(window.0),
            risky_until: at(window.1),
            retracted,
            note: format!("note of {risk} at {issued}"),
        }],
        updated_at: Some(at(issued)),
        ..Facts::default()
    }
}

fn update(resident: &str, facts: Facts) -> FactsUpdate {
    FactsUpdate { resident: resident.to_owned(), facts }
}

pub async fn unknown_residents_have_no_facts(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let known = factory.resident("known");
    store.merge(vec![update(&known, negative(0))].into()).await.unwrap();
    assert_eq!(store.get(&factory.resident("nobody")).await.unwrap(), None);
    let many = store.get_many(&[factory.resident("nobody"), known.clone(), factory.resident("else")]).await.unwrap();
    assert_eq!(many, vec![None, Some(negative(0)), None], "answers come in the order asked");
}

pub async fn merged_facts_are_read_back(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let r = factory.resident("merged");
    store.merge(vec![update(&r, negative(10))].into()).await.unwrap();
    store.merge(vec![update(&r, positive(5)), update(&r, negative(20))].into()).await.unwrap();
    let expected = negative(10).merged(&positive(5)).merged(&negative(20));
    assert_eq!(store.get(&r).await.unwrap(), Some(expected.clone()));
    assert_eq!(expected.latest_negatives, [Some(at(20)), Some(at(10))]);
}

pub async fn merging_twice_equals_merging_once(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let r = factory.resident("twice");
    let facts = positive(1).merged(&override_fact(2, "o-1", Color::Yellow));
    store.merge(vec![update(&r, facts.clone())].into()).await.unwrap();
    store.merge(vec![update(&r, facts.clone()), update(&r, facts.clone())].into()).await.unwrap();
    assert_eq!(store.get(&r).await.unwrap(), Some(facts));
}

pub async fn merge_order_does_not_matter(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let parts = vec![
        negative(30),
        positive(10),
        negative(50),
        override_fact(40, "o-b", Color::Red),
        override_fact(40, "o-a", Color::Yellow),
        negative(40),
    ];
    let (forward, backward) = (factory.resident("forward"), factory.resident("backward"));
    for p in &parts {
        store.merge(vec![update(&forward, p.clone())].into()).await.unwrap();
    }
    for p in parts.iter().rev() {
        store.merge(vec![update(&backward, p.clone())].into()).await.unwrap();
    }
    let a = store.get(&forward).await.unwrap().unwrap();
    let b = store.get(&backward).await.unwrap().unwrap();
    assert_eq!(a, b);
    assert_eq!(a.latest_negatives, [Some(at(50)), Some(at(40))]);
    assert_eq!(a.latest_override().unwrap().event_id, "o-b", "ties on issued_at break on event_id");
    assert_eq!(a.overrides.len(), 2, "both overrides stay in the audit trail");
}

pub async fn expired_facts_are_neither_read_nor_kept(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let now = UnixMicros::now();
    let days = |d: u64| std::time::Duration::from_secs(d * 24 * 3600);
    let aged = |age: std::time::Duration| {
        let t = UnixMicros(now.0 - age.as_micros() as i64);
        Facts { latest_negatives: [Some(t), None], latest_test: Some(t), updated_at: Some(t), ..Facts::default() }
    };
    let (old, recent) = (factory.resident("expired"), factory.resident("within-retention"));
    store
        .merge(vec![update(&old, aged(RETENTION + days(1))), update(&recent, aged(RETENTION - days(1)))].into())
        .await
        .unwrap();
    assert_eq!(store.get(&old).await.unwrap(), None, "facts past retention are not returned");
    assert!(store.get(&recent).await.unwrap().is_some());
    store.purge_expired().await.unwrap();
    assert_eq!(store.get_many(&[old, recent]).await.unwrap().iter().filter(|f| f.is_some()).count(), 1);
}

pub async fn each_fact_expires_on_its_own(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let now = UnixMicros::now();
    let ago = |days: u64| UnixMicros(now.0 - std::time::Duration::from_secs(days * 24 * 3600).as_micros() as i64);
    let old_positive = Facts {
        latest_positive: Some(ago(40)),
        latest_test: Some(ago(40)),
        updated_at: Some(ago(39)),
        ..Facts::default()
    };
    let recent_negative = Facts {
        latest_negatives: [Some(ago(2)), None],
        latest_test: Some(ago(2)),
        updated_at: Some(ago(1)),
        ..Facts::default()
    };
    let r = factory.resident("mixed-ages");
    store.merge(vec![update(&r, old_positive), update(&r, recent_negative.clone())].into()).await.unwrap();
    assert_eq!(
        store.get(&r).await.unwrap(),
        Some(recent_negative),
        "a positive sampled past retention is forgotten even though the resident has recent facts"
    );
}

fn scan_at(secs: i64, id: &str, site: &str) -> Facts {
    Facts {
        latest_scan: Some(ScanFact {
            scanned_at: at(secs),
            event_id: id.into(),
            site_id: site.into(),
            station_id: format!("station-{site}"),
            kind: ScanKind::VenueEntry,
        }),
        updated_at: Some(at(secs)),
        ..Facts::default()
    }
}

pub async fn scans_at_the_same_instant_resolve_by_event_id(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let scan = |id: &str| scan_at(70, id, &format!("site-of-{id}"));
    let (one, other) = (factory.resident("scan-tie-a"), factory.resident("scan-tie-b"));
    let orders = [(&one, ["scan-b", "scan-a"]), (&other, ["scan-a", "scan-b"])];
    for step in 0..2 {
        if step == 1 {
            // The second write of each a second later: a store whose tie
            // fell to the write that arrived last (or expires last) would
            // keep "scan-a" for `one`.
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        for (r, order) in &orders {
            store.merge(vec![update(r, scan(order[step]))].into()).await.unwrap();
        }
    }
    for r in [one, other] {
        let got = store.get(&r).await.unwrap().unwrap().latest_scan.unwrap();
        assert_eq!((got.event_id.as_str(), got.site_id.as_str()), ("scan-b", "site-of-scan-b"));
    }
}

/// Event ids are unique per submitter only (the edge deduplicates on
/// submitter and id): two authorities, or two stations, may send the same id
/// for the same instant, and neither may be lost or left to the order the
/// writes arrive in.
pub async fn submitters_sharing_an_event_id_and_an_instant_keep_both_facts(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let by = |authority: &str, facts: Facts| -> Facts {
        let mut facts = facts;
        for o in &mut facts.overrides {
            o.authority_id = authority.into();
            o.note = format!("by {authority}");
        }
        for r in &mut facts.site_risks {
            r.authority_id = authority.into();
            r.event_id = "shared-id".into();
        }
        if let Some(s) = &mut facts.latest_scan {
            s.station_id = format!("station-of-{authority}");
        }
        facts
    };
    let first = by("authority-a", override_fact(80, "shared-id", Color::Red))
        .merged(&by("authority-a", scan_at(80, "shared-id", "site-a")));
    let second = by("authority-b", override_fact(80, "shared-id", Color::Yellow))
        .merged(&by("authority-b", scan_at(80, "shared-id", "site-b")));
    let risks = [
        by("authority-a", site_risk("risk-a", 80, "site-a", (0, 10), false)),
        by("authority-b", site_risk("risk-b", 80, "site-b", (0, 10), false)),
    ];
    let (one, other) = (factory.resident("shared-id-a"), factory.resident("shared-id-b"));
    let (registry_one, registry_other) = (factory.resident("shared-id-risks-a"), factory.resident("shared-id-risks-b"));
    let orders = [[(&one, &first), (&registry_one, &risks[0])], [(&other, &second), (&registry_other, &risks[1])]];
    let later = [[(&one, &second), (&registry_one, &risks[1])], [(&other, &first), (&registry_other, &risks[0])]];
    for writes in [orders, later] {
        for pair in writes {
            let updates: Vec<_> = pair.iter().map(|(r, f)| update(r, (*f).clone())).collect();
            store.merge(updates.into()).await.unwrap();
        }
        // The other submitter a second later: a tie left to expiry would
        // keep whichever came last.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let facts = first.merged(&second);
    assert_eq!(facts.overrides.len(), 2, "the domain keeps both overrides");
    let registry = risks[0].clone().merged(&risks[1]);
    for (r, registry_key) in [(&one, &registry_one), (&other, &registry_other)] {
        let got = store.get(r).await.unwrap().unwrap();
        assert_eq!(got.overrides, facts.overrides, "both authorities' overrides, in the domain's order");
        assert_eq!(got.latest_scan, facts.latest_scan, "the greater of the two scans");
        let got = store.get(registry_key).await.unwrap().unwrap();
        assert_eq!(got.site_risks, registry.site_risks, "both authorities' site risks");
    }
}

/// More visits than a store may read at once in one go (a CQL read stops at
/// 1000 rows): the latest scan and the latest `VISITS_KEPT` visits are
/// still what comes back.
pub async fn a_resident_with_many_visits_keeps_its_latest_scan(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let r = factory.resident("many-visits");
    store.merge(vec![update(&r, scan_at(5_000, "the-scan", "gym"))].into()).await.unwrap();
    let visits: Vec<VisitFact> =
        (0..1100).map(|i| VisitFact { scanned_at: at(i), site_id: format!("site-{}", i % 7) }).collect();
    for chunk in visits.chunks(275) {
        let facts =
            Facts { visits: chunk.to_vec(), updated_at: chunk.last().map(|v| v.scanned_at), ..Facts::default() };
        store.merge(vec![update(&r, facts)].into()).await.unwrap();
    }
    let got = store.get(&r).await.unwrap().unwrap();
    assert_eq!(got.latest_scan.map(|s| s.event_id), Some("the-scan".to_owned()));
    let kept = healthcode_core::facts::VISITS_KEPT;
    assert_eq!(got.visits, visits[visits.len() - kept..], "the latest {kept} visits, ascending");
}

pub async fn many_residents_in_one_merge(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let residents: Vec<String> = (0..1000).map(|i| factory.resident(&format!("many-{i}"))).collect();
    let updates: Vec<_> = residents.iter().enumerate().map(|(i, r)| update(r, negative(i as i64))).collect();
    store.merge(updates.into()).await.unwrap();
    let got = store.get_many(&residents).await.unwrap();
    for (i, facts) in got.into_iter().enumerate() {
        assert_eq!(facts, Some(negative(i as i64)), "resident {i}");
    }
}

pub async fn a_scan_pages_through_every_resident_once(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let residents: Vec<String> = (0..50).map(|i| factory.resident(&format!("scan-{i}"))).collect();
    let updates: Vec<_> = residents.iter().enumerate().map(|(i, r)| update(r, negative(i as i64))).collect();
    store.merge(updates.into()).await.unwrap();
    // Every shard in small pages: the cursor is used many times. (The
    // store may hold other cases' residents too.)
    let mut seen = std::collections::HashMap::new();
    for start in store.scan_shards() {
        let mut cursor = start;
        loop {
            let page = store.scan(cursor.take(), 7).await.unwrap();
            assert!(page.residents.len() <= 7, "a page holds at most its limit");
            for u in page.residents {
                assert!(seen.insert(u.resident.clone(), u.facts).is_none(), "{} seen twice", u.resident);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    for (i, r) in residents.iter().enumerate() {
        assert_eq!(seen.get(r), Some(&negative(i as i64)), "resident {i} in the scan with its facts");
    }
    // The whole store in one sequence of pages sees them too, once each.
    // (Other cases may write meanwhile: only this case's residents count.)
    let (mut whole, mut cursor) = (std::collections::HashSet::new(), None);
    loop {
        let page = store.scan(cursor.take(), 7).await.unwrap();
        for u in page.residents {
            assert!(whole.insert(u.resident.clone()), "{} seen twice", u.resident);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(residents.iter().all(|r| whole.contains(r)), "the whole-store scan missed some");
}

pub async fn facts_survive_reopen(factory: &impl StoreFactory) {
    let r = factory.resident("durable");
    let store = factory.open().await;
    store.merge(vec![update(&r, positive(3))].into()).await.unwrap();
    drop(store);
    let store = factory.open().await;
    assert_eq!(store.get(&r).await.unwrap(), Some(positive(3)));
}

/// A factory for the embedded store in a temporary directory, opened for one
/// process or shared between processes.
pub struct EmbeddedStoreFactory {
    pub dir: tempfile::TempDir,
    pub shared: bool,
}

impl EmbeddedStoreFactory {
    pub fn new() -> Self {
        EmbeddedStoreFactory { dir: tempfile::tempdir().expect("temp dir"), shared: false }
    }

    pub fn shared() -> Self {
        EmbeddedStoreFactory { shared: true, ..Self::new() }
    }
}

impl Default for EmbeddedStoreFactory {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl StoreFactory for EmbeddedStoreFactory {
    async fn open(&self) -> Arc<dyn StatusStore> {
        let store = if self.shared {
            crate::EmbeddedStore::open_shared(self.dir.path(), RETENTION)
        } else {
            crate::EmbeddedStore::open(self.dir.path(), RETENTION)
        };
        Arc::new(store.expect("open embedded store"))
    }

    fn resident(&self, name: &str) -> String {
        name.to_owned()
    }
}

/// A factory for the one-process LSM store in a temporary directory.
pub struct LsmStoreFactory {
    pub dir: tempfile::TempDir,
}

impl Default for LsmStoreFactory {
    fn default() -> Self {
        LsmStoreFactory { dir: tempfile::tempdir().expect("temp dir") }
    }
}

#[async_trait]
impl StoreFactory for LsmStoreFactory {
    async fn open(&self) -> Arc<dyn StatusStore> {
        let store = crate::LsmStore::open(self.dir.path(), RETENTION, 16 << 20).expect("open LSM store");
        Arc::new(store.with_audit_retention(AUDIT_RETENTION))
    }

    fn resident(&self, name: &str) -> String {
        name.to_owned()
    }
}

/// Visits are a set and site risks a map of last-writer-wins registers:
/// whatever order the versions of a risk and the visits arrive in, the store
/// reads back the domain's join.
pub async fn visits_and_site_risks_merge_in_any_order(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let (r, registry, site) = (factory.resident("visitor"), factory.resident("risks"), factory.resident("site"));
    let versions = [
        site_risk("k1", 10, &site, (0, 100), false),
        site_risk("k1", 30, &site, (50, 150), false),
        site_risk("k1", 20, &site, (0, 10), true),
        site_risk("k2", 15, &site, (5, 6), false),
    ];
    let visits = [visit(&site, 40), visit(&site, 5), visit("elsewhere", 40), visit(&site, 40)];
    // Newest version first, then the older ones in two merges.
    store.merge(vec![update(&registry, versions[1].clone()), update(&r, visits[0].clone())].into()).await.unwrap();
    store.merge(vec![update(&registry, versions[2].clone()), update(&r, visits[1].clone())].into()).await.unwrap();
    store
        .merge(
            vec![
                update(&registry, versions[0].clone()),
                update(&registry, versions[3].clone()),
                update(&r, visits[2].clone()),
                update(&r, visits[3].clone()),
            ]
            .into(),
        )
        .await
        .unwrap();
    let expected_risks = versions.iter().fold(Facts::default(), |f, v| f.merged(v));
    let read = store.get(&registry).await.unwrap().expect("the registry is stored");
    assert_eq!(read.site_risks, expected_risks.site_risks);
    assert_eq!(read.site_risks.len(), 2, "one version per risk_id");
    assert_eq!(read.site_risks[0].issued_at, at(30), "the latest issued version wins, not the last merged");
    let expected_visits = visits.iter().fold(Facts::default(), |f, v| f.merged(v));
    assert_eq!(store.get(&r).await.unwrap().expect("visits are stored").visits, expected_visits.visits);
    assert_eq!(expected_visits.visits.len(), 3, "a repeated visit is kept once");
}

/// Who an exposure site exposed: distinct residents with a visit at the
/// site in `[from, until)`.
pub async fn visitors_are_counted_once_per_resident_within_the_window(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let (site, other) = (factory.resident("busy-site"), factory.resident("quiet-site"));
    let (r1, r2, r3, r4) =
        (factory.resident("v1"), factory.resident("v2"), factory.resident("v3"), factory.resident("v4"));
    store
        .merge(
            vec![
                update(&r1, visit(&site, 10).merged(&visit(&site, 20))),
                update(&r2, visit(&site, 30)),
                update(&r3, visit(&site, 100)),
                update(&r4, visit(&other, 15)),
            ]
            .into(),
        )
        .await
        .unwrap();
    assert_eq!(store.count_visitors(&site, at(0), at(50)).await.unwrap(), 2, "r1 twice counts once");
    assert_eq!(store.count_visitors(&site, at(20), at(31)).await.unwrap(), 2, "from is included");
    assert_eq!(store.count_visitors(&site, at(21), at(30)).await.unwrap(), 0, "until is excluded");
    assert_eq!(store.count_visitors(&site, at(0), at(101)).await.unwrap(), 3);
    assert_eq!(store.count_visitors(&other, at(0), at(101)).await.unwrap(), 1);
    assert_eq!(store.count_visitors(&factory.resident("nowhere"), at(0), at(101)).await.unwrap(), 0);
}

fn decision(subject: &str, authority: &str, event_id: &str, issued_at: UnixMicros) -> AuditEntry {
    AuditEntry {
        subject: subject.to_owned(),
        event_id: event_id.to_owned(),
        authority_id: authority.to_owned(),
        issued_at,
        decision: Decision::Override { color: Color::Red, expires_at: UnixMicros(issued_at.0 + 3_600_000_000) },
        note: format!("note of {event_id}"),
        by: Some(Provenance {
            principal: authority.to_owned(),
            credential: Credential::BearerToken,
            accepted_at: issued_at,
        }),
    }
}

/// Every page of `subject`'s record, `limit` at a time.
async fn every_page(store: &dyn StatusStore, subject: &str, limit: usize) -> Vec<Vec<AuditEntry>> {
    let (mut pages, mut after) = (Vec::new(), None);
    loop {
        let page = store.decisions(subject, after, limit).await.unwrap();
        pages.push(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => return pages,
        }
    }
}

pub async fn the_audit_record_pages_newest_first_and_keeps_every_entry_once(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let (subject, other) = (factory.resident("audited"), factory.resident("audited-other"));
    let now = UnixMicros::now();
    // 70 decisions (past the facts' 64), two authorities reusing event ids,
    // two at the same instant; written in two calls, one of them twice.
    let entries: Vec<AuditEntry> = (0..70)
        .map(|i| {
            let authority = if i % 2 == 0 { "auth-a" } else { "auth-b" };
            decision(&subject, authority, &format!("ov-{}", i / 2), UnixMicros(now.0 - 1_000_000 * (i / 2)))
        })
        .collect();
    store.record_decisions(entries[..40].to_vec().into()).await.unwrap();
    store.record_decisions(entries[30..].to_vec().into()).await.unwrap();
    store.record_decisions(entries[..10].to_vec().into()).await.unwrap();
    store.record_decisions(vec![decision(&other, "auth-a", "ov-0", now)].into()).await.unwrap();

    let pages = every_page(store.as_ref(), &subject, 32).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [32, 32, 6], "pages of 32 over 70 entries");
    let listed: Vec<AuditEntry> = pages.concat();
    let mut expected = entries.clone();
    expected.sort_by_key(|e| std::cmp::Reverse(e.cursor()));
    assert_eq!(listed, expected, "every entry once, newest first, ties by entry id, as written");
    assert_eq!(every_page(store.as_ref(), &other, 32).await.concat().len(), 1, "subjects are separate");
    let unknown = store.decisions(&factory.resident("never-audited"), None, 10).await.unwrap();
    assert!(unknown.entries.is_empty() && unknown.next.is_none());

    // A page exactly full at the end has no next page, or an empty one.
    let pages = every_page(store.as_ref(), &subject, 35).await;
    assert_eq!(pages.concat().len(), 70);
    assert!(pages.last().is_some_and(|p| p.len() == 35 || p.is_empty()), "{:?}", pages.iter().map(Vec::len));
}

pub async fn the_audit_record_outlives_the_facts_and_not_its_own_retention(factory: &impl StoreFactory) {
    let store = factory.open().await;
    let subject = factory.resident("audited-long-ago");
    let now = UnixMicros::now();
    let ago = |d: std::time::Duration| UnixMicros(now.0 - d.as_micros() as i64);
    let day = std::time::Duration::from_secs(24 * 3_600);
    let within = decision(&subject, "auth-a", "past-facts", ago(RETENTION * 2));
    let past = decision(&subject, "auth-a", "past-audit", ago(AUDIT_RETENTION + day));
    store.record_decisions(vec![within.clone(), past].into()).await.unwrap();
    assert_eq!(store.decisions(&subject, None, 10).await.unwrap().entries, vec![within.clone()]);
    store.purge_expired().await.unwrap();
    assert_eq!(
        store.decisions(&subject, None, 10).await.unwrap().entries,
        vec![within],
        "the purge of facts leaves decisions within the audit retention"
    );
}
