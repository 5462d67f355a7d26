//! The model of a city-wide testing round. Every attribute of a resident or
//! a batch is a pure function of (seed, index), so any part of the round can
//! be regenerated on demand: the generator never holds the whole city.
//!
//! Times are milliseconds from the round's start; the replay maps them onto
//! the wall clock.

use healthcode_core::{Color, Event, EventBody, SITE_RISKS_KEY, TestKind, TestOutcome, UnixMicros};

use crate::oracle::{Code, Happened, Judged, Outcome, RiskVersion, Risks, Rules, judge};
use serde::{Deserialize, Serialize};

pub const MINUTE: u64 = 60_000;
pub const HOUR: u64 = 60 * MINUTE;
/// Residents per household; a positive makes the others close contacts.
pub const HOUSEHOLD: u64 = 3;
pub const DAY: u64 = 24 * HOUR;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundConfig {
    pub residents: u64,
    pub seed: u64,
    /// Every resident is sampled once, spread evenly over this window.
    pub sampling_window_ms: u64,
    /// Labs report a batch this long after its last sample...
    pub result_delay_ms: u64,
    /// ...plus up to this much, different per batch.
    pub result_jitter_ms: u64,
    pub lab_batch: u64,
    /// Scans a test-site station collects before it submits them.
    pub site_batch: u64,
    pub positivity: f64,
    pub inconclusive: f64,
    /// Results held back and reported this much later, in a later batch.
    pub late_fraction: f64,
    pub late_extra_ms: u64,
    /// Lab batches submitted twice (a retry after a lost reply).
    pub duplicate_fraction: f64,
    /// Residents who also enter a venue after their test.
    pub venue_fraction: f64,
    pub venue_delay_ms: u64,
    /// Status lookups over the whole round, per resident.
    pub lookups_per_resident: f64,
    /// The morning surge of lookups: from, to, and how many times the baseline.
    pub surge_from_ms: u64,
    pub surge_to_ms: u64,
    pub surge_factor: f64,
    /// Share of the venues an authority declares exposure sites, some while
    /// the window is open and some after it, some moved, some withdrawn.
    #[serde(default)]
    pub exposure_fraction: f64,
    /// Share of the venues' scan uploads that come late (offline stations)...
    #[serde(default)]
    pub late_venue_fraction: f64,
    /// ...this much after the visits.
    #[serde(default)]
    pub late_venue_extra_ms: u64,
    /// Days the round spans: every resident is tested `tests_per_day`
    /// times a day (a morning and an evening window), each test a slot of
    /// its own with its own outcome, lab batches and contacts.
    #[serde(default = "one")]
    pub days: u64,
    #[serde(default = "one")]
    pub tests_per_day: u64,
    /// Residents who stop testing after the first day: by the end their
    /// last negative has aged past its validity.
    #[serde(default)]
    pub skip_fraction: f64,
    /// How long a close-contact override lasts: shorter than the round, so
    /// the first day's expire before the end.
    #[serde(default = "fourteen_days")]
    pub contact_override_ms: u64,
}

fn one() -> u64 {
    1
}

fn fourteen_days() -> u64 {
    14 * DAY
}

/// The authority that marks contacts and declares exposure sites.
pub const AUTHORITY: &str = "district-cdc";
/// Residents per venue, roughly: a risky venue exposes a few dozen.
pub const RESIDENTS_PER_VENUE: u64 = 200;

impl Default for RoundConfig {
    fn default() -> Self {
        RoundConfig {
            residents: 13_000_000,
            seed: 1,
            sampling_window_ms: 10 * HOUR,
            result_delay_ms: 4 * HOUR,
            result_jitter_ms: HOUR,
            lab_batch: 500,
            site_batch: 50,
            positivity: 0.002,
            inconclusive: 0.001,
            late_fraction: 0.01,
            late_extra_ms: 2 * HOUR,
            duplicate_fraction: 0.01,
            venue_fraction: 0.3,
            venue_delay_ms: HOUR,
            lookups_per_resident: 1.0,
            surge_from_ms: HOUR,
            surge_to_ms: 3 * HOUR,
            surge_factor: 10.0,
            exposure_fraction: 0.05,
            late_venue_fraction: 0.1,
            late_venue_extra_ms: 3 * HOUR,
            days: 3,
            tests_per_day: 2,
            skip_fraction: 0.02,
            contact_override_ms: 36 * HOUR,
        }
    }
}

/// Stateless mixing (splitmix64 finaliser): a uniform u64 from (seed, index, salt).
pub fn mix(seed: u64, index: u64, salt: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from (seed, index, salt).
pub fn unit(seed: u64, index: u64, salt: u64) -> f64 {
    (mix(seed, index, salt) >> 11) as f64 / (1u64 << 53) as f64
}

const SALT_OUTCOME: u64 = 1;
const SALT_LATE: u64 = 2;
const SALT_VENUE: u64 = 3;
const SALT_JITTER: u64 = 4;
const SALT_DUPLICATE: u64 = 5;
pub const SALT_LOOKUP: u64 = 6;
const SALT_VENUE_OF: u64 = 99;
const SALT_RISK: u64 = 7;
const SALT_LATE_VENUES: u64 = 8;
const SALT_SKIP: u64 = 9;

/// The salt of `salt` in test slot `slot`: slot 0 keeps the plain salt, so
/// a one-day round is the round it always was.
fn in_slot(salt: u64, slot: u64) -> u64 {
    salt ^ (slot << 32)
}

/// One test of one resident: in slot `slot` (day and window).
#[derive(Clone, Debug, PartialEq)]
pub struct Resident {
    pub index: u64,
    pub slot: u64,
    pub outcome: TestOutcome,
    pub sampled_ms: u64,
    pub resulted_ms: u64,
    pub late: bool,
    pub venue: bool,
}

pub fn resident_id(index: u64) -> String {
    format!("r{index:09}")
}

impl RoundConfig {
    pub fn sampled_ms(&self, i: u64) -> u64 {
        i * self.sampling_window_ms / self.residents.max(1)
    }

    pub fn lab_batches(&self) -> u64 {
        self.residents.div_ceil(self.lab_batch)
    }

    pub fn site_batches(&self) -> u64 {
        self.residents.div_ceil(self.site_batch)
    }

    /// Residents of lab batch `k` (or site batch, with its own size).
    pub fn range(&self, k: u64, size: u64) -> std::ops::Range<u64> {
        k * size..((k + 1) * size).min(self.residents)
    }

    /// Test slots of the round: `tests_per_day` (1 or 2) a day for `days`.
    pub fn slots(&self) -> u64 {
        self.days.max(1) * self.tests_per_day.clamp(1, 2)
    }

    /// When slot `slot`'s sampling window opens: each day at 0 h, and at
    /// 12 h for a second test.
    pub fn slot_start_ms(&self, slot: u64) -> u64 {
        let per_day = self.tests_per_day.clamp(1, 2);
        slot / per_day * DAY + slot % per_day * 12 * HOUR
    }

    /// Whether resident `i` stops testing after the first day.
    pub fn skips(&self, i: u64) -> bool {
        unit(self.seed, i, SALT_SKIP) < self.skip_fraction
    }

    /// Whether resident `i` is tested in `slot`.
    pub fn tested_in(&self, i: u64, slot: u64) -> bool {
        slot < self.tests_per_day.clamp(1, 2) || !self.skips(i)
    }

    /// When lab batch `k` of slot 0 reports its (not late) results; other
    /// slots report at the same offset from their own start.
    pub fn lab_report_ms(&self, k: u64) -> u64 {
        let last = self.range(k, self.lab_batch).end - 1;
        let jitter =
            if self.result_jitter_ms == 0 { 0 } else { mix(self.seed, k, SALT_JITTER) % self.result_jitter_ms };
        self.sampled_ms(last) + self.result_delay_ms + jitter
    }

    /// Whether lab batch `k` of `slot` is submitted twice.
    pub fn duplicated(&self, k: u64, slot: u64) -> bool {
        unit(self.seed, k, in_slot(SALT_DUPLICATE, slot)) < self.duplicate_fraction
    }

    /// Resident `i`'s test of the first slot (everyone is tested then).
    pub fn resident(&self, i: u64) -> Resident {
        self.test_in(i, 0).expect("everyone is tested in the first slot")
    }

    /// Resident `i`'s test in `slot`, unless it skips it.
    pub fn test_in(&self, i: u64, slot: u64) -> Option<Resident> {
        if !self.tested_in(i, slot) {
            return None;
        }
        let u = unit(self.seed, i, in_slot(SALT_OUTCOME, slot));
        let outcome = if u < self.positivity {
            TestOutcome::Positive
        } else if u < self.positivity + self.inconclusive {
            TestOutcome::Inconclusive
        } else {
            TestOutcome::Negative
        };
        let late = unit(self.seed, i, in_slot(SALT_LATE, slot)) < self.late_fraction;
        let start = self.slot_start_ms(slot);
        let report = start + self.lab_report_ms(i / self.lab_batch);
        Some(Resident {
            index: i,
            slot,
            outcome,
            sampled_ms: start + self.sampled_ms(i),
            resulted_ms: if late { report + self.late_extra_ms } else { report },
            late,
            venue: unit(self.seed, i, SALT_VENUE) < self.venue_fraction,
        })
    }

    /// Every test of resident `i`, in time order.
    pub fn tests_of(&self, i: u64) -> impl Iterator<Item = Resident> + '_ {
        (0..self.slots()).filter_map(move |slot| self.test_in(i, slot))
    }

    /// The other members of `i`'s household.
    pub fn household_of(&self, i: u64) -> impl Iterator<Item = u64> {
        let start = i / HOUSEHOLD * HOUSEHOLD;
        (start..(start + HOUSEHOLD).min(self.residents)).filter(move |m| *m != i)
    }

    /// When the authority marks the contacts of a positive resident.
    pub fn override_ms(&self, positive: &Resident) -> u64 {
        positive.resulted_ms + 30 * MINUTE
    }

    /// After every scheduled submission and the verification margin.
    pub fn end_ms(&self) -> u64 {
        self.slot_start_ms(self.slots() - 1)
            + self.sampling_window_ms
            + self.result_delay_ms
            + self.result_jitter_ms
            + self.late_extra_ms
            + HOUR
    }

    /// Lookup rate relative to the baseline at `t`: 1 outside the surge,
    /// `surge_factor` inside it, with 30-minute linear ramps.
    pub fn surge_profile(&self, t: u64) -> f64 {
        let ramp = 30.0 * MINUTE as f64;
        let (t, from, to) = (t as f64, self.surge_from_ms as f64, self.surge_to_ms as f64);
        let up = ((t - (from - ramp)) / ramp).clamp(0.0, 1.0);
        let down = (((to + ramp) - t) / ramp).clamp(0.0, 1.0);
        1.0 + (self.surge_factor - 1.0) * up.min(down)
    }

    /// Baseline lookups per millisecond so the round holds
    /// `lookups_per_resident * residents` lookups in all.
    pub fn baseline_lookups_per_ms(&self) -> f64 {
        let total = self.lookups_per_resident * self.residents as f64;
        let step = MINUTE;
        let area: f64 = (0..self.end_ms() / step).map(|m| self.surge_profile(m * step) * step as f64).sum();
        if area == 0.0 { 0.0 } else { total / area }
    }

    /// How many venues residents visit.
    pub fn venues(&self) -> u64 {
        (self.residents / RESIDENTS_PER_VENUE).max(10)
    }

    /// The venue resident `i` visits (if it does).
    pub fn venue_of(&self, i: u64) -> String {
        format!("venue-{}", mix(self.seed, i, SALT_VENUE_OF) % self.venues())
    }

    /// The slot whose window the venue visits and exposure sites fall in:
    /// the last, so that no later test clears every exposure by the end.
    pub fn venue_slot(&self) -> u64 {
        self.slots() - 1
    }

    /// When resident `i` enters its venue (after its last test's sample).
    pub fn venue_ms(&self, i: u64) -> u64 {
        self.slot_start_ms(self.venue_slot()) + self.sampled_ms(i) + self.venue_delay_ms
    }

    /// Whether the venue scans of site batch `j` are uploaded late.
    pub fn venues_late(&self, j: u64) -> bool {
        unit(self.seed, j, SALT_LATE_VENUES) < self.late_venue_fraction
    }

    /// How many site risks the round declares.
    pub fn site_risks(&self) -> u64 {
        (self.venues() as f64 * self.exposure_fraction).ceil() as u64
    }

    /// Every version of site risk `r`, in issue order: the declaration
    /// (while its window is open, or after it closed), perhaps a move of the
    /// window, perhaps a withdrawal.
    pub fn risk_versions(&self, r: u64) -> Vec<RiskVersion> {
        let draw = |salt: u64| mix(self.seed, r, SALT_RISK * 16 + salt);
        let site = format!("venue-{}", draw(0) % self.venues());
        let from =
            self.slot_start_ms(self.venue_slot()) + self.venue_delay_ms + draw(1) % self.sampling_window_ms.max(1);
        let until = from + HOUR + draw(2) % (3 * HOUR);
        // Half are declared while the window is open: visits after that are
        // uploaded after the declaration; the others after it closed.
        let issued = if draw(3) % 2 == 0 { from + 10 * MINUTE } else { until + HOUR };
        // Every version is issued before the round ends: one issued after it
        // would be stamped in the server's future and refused. Versions held
        // at the end tie on issued_at and keep their order by event id.
        let last_ms = self.end_ms() - 1;
        let version = |n: u32, issued: u64, window: (u64, u64), retracted: bool| RiskVersion {
            risk_id: format!("risk-{r}"),
            event_id: format!("k-{r}-{n}"),
            site: site.clone(),
            from_ms: window.0 as i64,
            until_ms: window.1 as i64,
            issued_ms: issued.min(last_ms) as i64,
            retracted,
        };
        let mut versions = vec![version(0, issued, (from, until), false)];
        let mut last = (issued, (from, until));
        if draw(4) % 4 == 0 {
            // Moved earlier: a window may not start after its declaration.
            let back = from.min(2 * HOUR);
            last = (issued + HOUR, (from - back, until - back));
            versions.push(version(1, last.0, last.1, false));
        }
        if draw(5) % 5 == 0 {
            versions.push(version(2, last.0 + 2 * HOUR, last.1, true));
        }
        versions
    }

    /// The site risks in force at the round's end, by the oracle.
    pub fn risks(&self) -> Risks {
        Risks::new(&self.all_risk_versions())
    }

    pub fn site_risk_event(v: &RiskVersion) -> Event {
        Event {
            event_id: v.event_id.clone(),
            resident_id: SITE_RISKS_KEY.to_owned(),
            body: EventBody::SiteRisk {
                risk_id: v.risk_id.clone(),
                site_id: v.site.clone(),
                authority_id: AUTHORITY.into(),
                risky_from: ms(v.from_ms as u64),
                risky_until: ms(v.until_ms as u64),
                issued_at: ms(v.issued_ms as u64),
                retracted: v.retracted,
                note: "cases among visitors".into(),
            },
        }
    }

    // Domain events, with times as offsets from the round start.

    pub fn test_event(&self, r: &Resident) -> Event {
        Event {
            event_id: format!("t-{}{}", r.index, slot_suffix(r.slot)),
            resident_id: resident_id(r.index),
            body: EventBody::TestResult {
                sample_id: format!("s-{}{}", r.index, slot_suffix(r.slot)),
                lab_id: format!("lab-{}", r.index / self.lab_batch % 40),
                kind: TestKind::PcrPooled,
                outcome: r.outcome,
                sampled_at: ms(r.sampled_ms),
                resulted_at: ms(r.resulted_ms),
            },
        }
    }

    pub fn override_events(&self, positive: &Resident) -> Vec<Event> {
        let issued = self.override_ms(positive);
        self.household_of(positive.index)
            .map(|contact| Event {
                event_id: format!("o-{}-{contact}{}", positive.index, slot_suffix(positive.slot)),
                resident_id: resident_id(contact),
                body: EventBody::Override {
                    authority_id: AUTHORITY.into(),
                    color: Color::Yellow,
                    note: "close contact".into(),
                    issued_at: ms(issued),
                    expires_at: ms(issued + self.contact_override_ms),
                },
            })
            .collect()
    }

    /// Everything the round does to resident `i` that a color depends on,
    /// in the oracle's plain terms.
    pub fn history(&self, i: u64) -> Vec<Happened> {
        self.timeline(i).into_iter().map(|(_, happened)| happened).collect()
    }

    /// The same, each with the round time its event is submitted at (a
    /// resubmission changes nothing): what a check in the middle of the
    /// round may expect to see.
    pub fn timeline(&self, i: u64) -> Vec<(u64, Happened)> {
        let mut timeline = Vec::new();
        for test in self.tests_of(i) {
            let outcome = match test.outcome {
                TestOutcome::Positive => Outcome::Positive,
                TestOutcome::Negative => Outcome::Negative,
                TestOutcome::Inconclusive => Outcome::Inconclusive,
            };
            timeline.push((test.resulted_ms, Happened::Test { outcome, sampled_ms: test.sampled_ms as i64 }));
        }
        if self.resident(i).venue {
            let visit = Happened::Visit { site: self.venue_of(i), at_ms: self.venue_ms(i) as i64 };
            timeline.push((self.venues_submitted_ms(i / self.site_batch), visit));
        }
        for other in self.household_of(i) {
            for positive in self.tests_of(other).filter(|t| t.outcome == TestOutcome::Positive) {
                let issued = self.override_ms(&positive);
                let yellow = Happened::Override {
                    color: Code::Yellow,
                    issued_ms: issued as i64,
                    expires_ms: (issued + self.contact_override_ms) as i64,
                    id: format!("o-{}-{i}{}", other, slot_suffix(positive.slot)),
                };
                timeline.push((issued, yellow));
            }
        }
        timeline
    }

    /// When the venue scans of site batch `j` are submitted: after the
    /// visits of its last resident, hours later when the upload is late.
    pub fn venues_submitted_ms(&self, j: u64) -> u64 {
        let last = self.range(j, self.site_batch).end - 1;
        let late = if self.venues_late(j) { self.late_venue_extra_ms } else { 0 };
        self.slot_start_ms(self.venue_slot()) + self.sampled_ms(last) + self.venue_delay_ms + late
    }

    /// Every version of every site risk of the round.
    pub fn all_risk_versions(&self) -> Vec<RiskVersion> {
        (0..self.site_risks()).flat_map(|r| self.risk_versions(r)).collect()
    }

    /// The expected status of resident `i` at the round's end, by the
    /// load test's own oracle (not the code under test), given the round's
    /// [`RoundConfig::risks`].
    pub fn expected(&self, i: u64, risks: &Risks, rules: &Rules) -> Judged {
        judge(&self.history(i), risks, rules, self.end_ms() as i64)
    }
}

/// What the ids of a test slot's events end with: nothing in the first
/// slot (a one-day round keeps its ids), `-<slot>` after it.
pub fn slot_suffix(slot: u64) -> String {
    if slot == 0 { String::new() } else { format!("-{slot}") }
}

pub fn ms(t: u64) -> UnixMicros {
    UnixMicros(t as i64 * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> RoundConfig {
        RoundConfig { residents: 10_000, ..RoundConfig::default() }
    }

    #[test]
    fn residents_are_a_pure_function_of_seed_and_index() {
        let c = small();
        assert_eq!(c.resident(42), c.resident(42));
        let other = RoundConfig { seed: 2, ..small() };
        let differ = (0..1000).filter(|i| c.resident(*i).outcome != other.resident(*i).outcome).count();
        assert!(differ > 0, "another seed gives another round");
    }

    #[test]
    fn rates_come_out_near_their_settings() {
        let c = RoundConfig { residents: 200_000, ..RoundConfig::default() };
        let n = c.residents as f64;
        let positives = (0..c.residents).filter(|i| c.resident(*i).outcome == TestOutcome::Positive).count() as f64;
        let late = (0..c.residents).filter(|i| c.resident(*i).late).count() as f64;
        assert!((positives / n - c.positivity).abs() < 0.0005, "positivity {}", positives / n);
        assert!((late / n - c.late_fraction).abs() < 0.002, "late {}", late / n);
    }

    #[test]
    fn results_come_after_samples_and_late_ones_later_still() {
        let c = small();
        for i in (0..c.residents).step_by(97) {
            for r in c.tests_of(i) {
                assert!(r.resulted_ms >= r.sampled_ms + c.result_delay_ms);
                if r.late {
                    let report = c.slot_start_ms(r.slot) + c.lab_report_ms(i / c.lab_batch);
                    assert!(r.resulted_ms >= report + c.late_extra_ms);
                }
                assert!(r.resulted_ms + 30 * MINUTE < c.end_ms());
            }
        }
    }

    #[test]
    fn residents_are_tested_twice_a_day_for_days_and_some_stop_after_the_first() {
        let c = small();
        assert_eq!((c.slots(), c.slot_start_ms(1), c.slot_start_ms(2)), (6, 12 * HOUR, DAY));
        let skippers = (0..c.residents).filter(|i| c.skips(*i)).count();
        assert!(skippers > 100 && skippers < 400, "{skippers}");
        let skipper = (0..c.residents).find(|i| c.skips(*i)).unwrap();
        assert_eq!(c.tests_of(skipper).count(), 2, "the first day's two tests only");
        let tester = (0..c.residents).find(|i| !c.skips(*i)).unwrap();
        let times: Vec<u64> = c.tests_of(tester).map(|t| t.sampled_ms).collect();
        assert_eq!(times.len(), 6);
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        // Outcomes differ between slots: a positive may later clear.
        let differs =
            (0..c.residents).filter(|i| c.test_in(*i, 0).map(|t| t.outcome) != c.test_in(*i, 2).map(|t| t.outcome));
        assert!(differs.count() > 0);
        // A single day is the round it always was.
        let one = RoundConfig { days: 1, tests_per_day: 1, ..small() };
        assert_eq!(one.slots(), 1);
        assert_eq!(one.test_event(&one.resident(7)).event_id, "t-7");
    }

    #[test]
    fn the_surge_is_ten_times_the_baseline_and_lookups_add_up() {
        let c = small();
        assert_eq!(c.surge_profile(0), 1.0);
        assert_eq!(c.surge_profile(2 * HOUR), 10.0);
        assert_eq!(c.surge_profile(5 * HOUR), 1.0);
        let rate = c.baseline_lookups_per_ms();
        let total: f64 = (0..c.end_ms() / MINUTE).map(|m| rate * c.surge_profile(m * MINUTE) * MINUTE as f64).sum();
        assert!((total - c.residents as f64).abs() / (c.residents as f64) < 0.01, "{total}");
    }

    #[test]
    fn contacts_of_a_positive_are_yellow_and_positives_red() {
        // One test each: a positive stays red, its contacts' overrides run.
        let c = RoundConfig { residents: 30_000, days: 1, tests_per_day: 1, ..RoundConfig::default() };
        let rules = Rules::default();
        let positive = (0..c.residents).find(|i| c.resident(*i).outcome == TestOutcome::Positive).unwrap();
        let risks = c.risks();
        assert_eq!(c.expected(positive, &risks, &rules).color, "RED");
        for contact in c.household_of(positive) {
            let s = c.expected(contact, &risks, &rules);
            if c.resident(contact).outcome != TestOutcome::Positive {
                assert_eq!(s.color, "YELLOW", "contact {contact}");
            }
        }
    }

    /// The facts of everything the round sends resident `i`, merged and
    /// judged by the code under test (services/core).
    fn by_the_system(
        c: &RoundConfig,
        i: u64,
        risks: &healthcode_core::SiteRisks,
        policy: &healthcode_core::Policy,
    ) -> (String, String) {
        let mut facts = healthcode_core::Facts::default();
        for test in c.tests_of(i) {
            facts.apply(c.test_event(&test));
        }
        if c.resident(i).venue {
            facts.apply(crate::schedule::scan(c, i, healthcode_core::ScanKind::VenueEntry, c.venue_ms(i), 0));
        }
        for other in c.household_of(i) {
            for positive in c.tests_of(other).filter(|t| t.outcome == TestOutcome::Positive) {
                for event in c.override_events(&positive).into_iter().filter(|e| e.resident_id == resident_id(i)) {
                    facts.apply(event);
                }
            }
        }
        let s = policy.evaluate(&facts, risks, ms(c.end_ms()));
        let color = healthcode_proto::v1::Color::from(s.color).as_str_name().to_owned();
        (color, healthcode_proto::v1::Reason::from(s.reason).as_str_name().to_owned())
    }

    #[test]
    fn the_oracle_agrees_with_the_system_and_catches_a_planted_rule_change() {
        let c = RoundConfig { residents: 20_000, ..RoundConfig::default() };
        let risks = c.risks();
        let judged = |i, rules: &Rules| {
            let j = c.expected(i, &risks, rules);
            (j.color.to_owned(), j.reason.to_owned())
        };
        // The system's site risks: every version folded into the registry's facts.
        let mut registry = healthcode_core::Facts::default();
        for v in (0..c.site_risks()).flat_map(|r| c.risk_versions(r)) {
            registry.apply(RoundConfig::site_risk_event(&v));
        }
        let system_risks = healthcode_core::SiteRisks::from_facts(&registry);
        let system = healthcode_core::Policy::default();
        let disagree = |rules: &Rules| {
            (0..c.residents).filter(|i| judged(*i, rules) != by_the_system(&c, *i, &system_risks, &system)).count()
        };
        assert_eq!(disagree(&Rules::default()), 0, "the two readings of the rules agree on the round");
        // The round holds every rule at work: so the agreement means something.
        let reasons: std::collections::BTreeMap<String, usize> =
            (0..c.residents).fold(Default::default(), |mut m, i| {
                *m.entry(judged(i, &Rules::default()).1).or_default() += 1;
                m
            });
        for reason in ["NEGATIVE_TEST_VALID", "NO_VALID_TEST", "POSITIVE_TEST", "OVERRIDE", "EXPOSURE"] {
            assert!(reasons.get(reason).is_some_and(|n| *n >= 5), "{reason}: {reasons:?}");
        }
        let cleared = (0..c.residents)
            .filter(|i| c.tests_of(*i).any(|t| t.outcome == TestOutcome::Positive))
            .filter(|i| judged(*i, &Rules::default()).0 != "RED")
            .count();
        assert!(cleared > 0, "some positives clear with later negatives");
        let expired = (0..c.residents)
            .filter(|i| {
                c.history(*i)
                    .iter()
                    .any(|h| matches!(h, Happened::Override { expires_ms, .. } if *expires_ms < c.end_ms() as i64))
            })
            .count();
        assert!(expired > 0, "some contacts' overrides expire before the end");
        // One rule flipped in a copy: negatives valid for an hour, not 48.
        let planted = Rules { negative_valid_ms: HOUR as i64, ..Rules::default() };
        assert!(disagree(&planted) > 100, "the oracle sees the changed rule");
        // Another: exposure over after an hour, not seven days.
        let planted = Rules { exposure_period_ms: HOUR as i64, ..Rules::default() };
        assert!(disagree(&planted) > 5, "the oracle sees the changed exposure rule");
    }

    #[test]
    fn site_risks_are_declared_during_and_after_their_windows_and_some_move_or_are_withdrawn() {
        // The city's size: 3,250 risks, enough that some versions would
        // fall after the round's end if nothing held them.
        let c = RoundConfig { residents: 13_000_000, ..RoundConfig::default() };
        let all: Vec<Vec<RiskVersion>> = (0..c.site_risks()).map(|r| c.risk_versions(r)).collect();
        assert_eq!(all.len(), 3_250);
        let during = all.iter().filter(|v| v[0].issued_ms < v[0].until_ms).count();
        assert!(during > 0 && during < all.len(), "{during} of {} declared while open", all.len());
        assert!(all.iter().any(|v| v.len() > 1 && !v[1].retracted), "a window moves");
        assert!(all.iter().any(|v| v.last().unwrap().retracted), "a risk is withdrawn");
        for v in all.iter().flatten() {
            assert!(v.from_ms < v.until_ms && v.from_ms <= v.issued_ms, "{v:?}");
            assert!((v.issued_ms as u64) < c.end_ms());
        }
        for versions in &all {
            let order: Vec<(i64, &str)> = versions.iter().map(|v| (v.issued_ms, v.event_id.as_str())).collect();
            assert!(order.is_sorted(), "versions apply in issue order: {order:?}");
        }
    }
}
