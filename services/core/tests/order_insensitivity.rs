//! The central property: a resident's status depends on the set of events,
//! not on their order, their repetition or how they were grouped in batches.

use healthcode_core::{
    Color, Event, EventBody, Facts, Policy, SITE_RISKS_KEY, ScanKind, SiteRisks, TestKind, TestOutcome, UnixMicros,
};
use proptest::prelude::*;

const HOUR: i64 = 3_600_000_000;
const BASE: i64 = 1_800_000_000_000_000;

fn at(hours: i64) -> UnixMicros {
    UnixMicros(BASE + hours * HOUR)
}

fn arb_color() -> impl Strategy<Value = Color> {
    prop_oneof![Just(Color::Green), Just(Color::Yellow), Just(Color::Red)]
}

fn arb_outcome() -> impl Strategy<Value = TestOutcome> {
    prop_oneof![Just(TestOutcome::Negative), Just(TestOutcome::Positive), Just(TestOutcome::Inconclusive)]
}

/// Events of one resident within ten days; times on a coarse grid so that
/// ties (same sample time, same issue time) happen often.
fn arb_event() -> impl Strategy<Value = Event> {
    let test = (0..240i64, 0..12i64, arb_outcome()).prop_map(|(sampled, delay, outcome)| EventBody::TestResult {
        sample_id: format!("s{sampled}"),
        lab_id: "lab-1".into(),
        kind: TestKind::Pcr,
        outcome,
        sampled_at: at(sampled),
        resulted_at: at(sampled + delay),
    });
    let override_event = (0..240i64, 1..96i64, arb_color()).prop_map(|(issued, lasts, color)| EventBody::Override {
        authority_id: "cdc".into(),
        color,
        note: String::new(),
        issued_at: at(issued),
        expires_at: at(issued + lasts),
    });
    let scan = (0..240i64, 1..3u8).prop_map(|(t, site)| EventBody::Scan {
        station_id: "st-1".into(),
        site_id: format!("venue-{site}"),
        kind: ScanKind::VenueEntry,
        scanned_at: at(t),
    });
    // Two risks over two venues, declared before or after the visits, moved
    // by later versions and sometimes retracted.
    let site_risk = (1..3u8, 1..3u8, 0..240i64, 1..72i64, 0..260i64, proptest::bool::weighted(0.25)).prop_map(
        |(risk, site, from, lasts, issued, retracted)| EventBody::SiteRisk {
            risk_id: format!("risk-{risk}"),
            site_id: format!("venue-{site}"),
            authority_id: "cdc".into(),
            risky_from: at(from),
            risky_until: at(from + lasts),
            issued_at: at(issued),
            retracted,
            note: String::new(),
        },
    );
    (prop_oneof![3 => test, 1 => override_event, 2 => scan, 1 => site_risk], 0..1_000_000u32).prop_map(|(body, n)| {
        let resident_id = if matches!(body, EventBody::SiteRisk { .. }) { SITE_RISKS_KEY } else { "resident-1" };
        Event { event_id: format!("e{n}"), resident_id: resident_id.into(), body }
    })
}

/// The resident's facts and the site-risk registry's, as a materializer
/// folds them (each under its own key).
fn fold_keys(events: &[Event]) -> (Facts, Facts) {
    let (mut resident, mut registry) = (Facts::default(), Facts::default());
    for e in events {
        if e.resident_id == SITE_RISKS_KEY { &mut registry } else { &mut resident }.apply(e.clone());
    }
    (resident, registry)
}

fn fold(events: &[Event]) -> Facts {
    let mut facts = Facts::default();
    for e in events {
        facts.apply(e.clone());
    }
    facts
}

/// A permutation of `events` with some of them delivered more than once.
fn arb_delivery(events: Vec<Event>) -> impl Strategy<Value = Vec<Event>> {
    let n = events.len();
    (Just(events), proptest::collection::vec(0..n.max(1), 0..n + 1)).prop_flat_map(|(events, dups)| {
        let mut delivered = events.clone();
        delivered.extend(dups.into_iter().filter_map(|i| events.get(i).cloned()));
        Just(delivered).prop_shuffle()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_order_and_duplication_gives_the_same_status(
        (events, delivered) in proptest::collection::vec(arb_event(), 0..24)
            .prop_flat_map(|events| (Just(events.clone()), arb_delivery(events))),
        now_hours in 0..300i64,
    ) {
        let (in_order, risks_in_order) = fold_keys(&events);
        let (as_delivered, risks_delivered) = fold_keys(&delivered);
        prop_assert_eq!(&in_order, &as_delivered);
        prop_assert_eq!(&risks_in_order, &risks_delivered);
        let (a, b) = (SiteRisks::from_facts(&risks_in_order), SiteRisks::from_facts(&risks_delivered));
        let policy = Policy::default();
        prop_assert_eq!(policy.evaluate(&in_order, &a, at(now_hours)), policy.evaluate(&as_delivered, &b, at(now_hours)));
    }

    #[test]
    fn batching_does_not_matter(
        events in proptest::collection::vec(arb_event(), 0..24),
        split in 0..24usize,
    ) {
        // Two materializer batches merged into the store in either order.
        let split = split.min(events.len());
        let (a, b) = events.split_at(split);
        let (fa, fb) = (fold(a), fold(b));
        prop_assert_eq!(fa.clone().merged(&fb), fold(&events));
        prop_assert_eq!(fb.merged(&fa), fold(&events));
    }

    #[test]
    fn merge_is_associative_commutative_idempotent(
        a in proptest::collection::vec(arb_event(), 0..8),
        b in proptest::collection::vec(arb_event(), 0..8),
        c in proptest::collection::vec(arb_event(), 0..8),
    ) {
        let (a, b, c) = (fold(&a), fold(&b), fold(&c));
        prop_assert_eq!(a.clone().merged(&b).merged(&c), a.clone().merged(&b.clone().merged(&c)));
        prop_assert_eq!(a.clone().merged(&b), b.clone().merged(&a));
        prop_assert_eq!(a.clone().merged(&a), a.clone());
        // The owned join (the materializer's) is the same join.
        let mut absorbed = a.clone();
        absorbed.absorb(b.clone());
        prop_assert_eq!(absorbed, a.merged(&b));
    }
}

/// A late result: the positive sampled before two negatives arrives last and
/// must not turn the resident red.
#[test]
fn a_late_old_positive_does_not_override_later_negatives() {
    let result = |id: &str, outcome, sampled: i64, resulted: i64| Event {
        event_id: id.into(),
        resident_id: "r".into(),
        body: EventBody::TestResult {
            sample_id: id.into(),
            lab_id: "lab".into(),
            kind: TestKind::Pcr,
            outcome,
            sampled_at: at(sampled),
            resulted_at: at(resulted),
        },
    };
    let events = [
        result("n1", TestOutcome::Negative, 10, 12),
        result("n2", TestOutcome::Negative, 20, 22),
        result("p", TestOutcome::Positive, 5, 40),
    ];
    let none = SiteRisks::none();
    let status = Policy::default().evaluate(&fold(&events), &none, at(41));
    assert_eq!(status.color, Color::Green);
    let reversed: Vec<Event> = events.iter().rev().cloned().collect();
    assert_eq!(Policy::default().evaluate(&fold(&reversed), &none, at(41)), status);
}
