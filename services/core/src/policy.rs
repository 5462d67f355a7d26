//! The status policy: a pure function of a resident's facts and `now`.

use std::time::Duration;

use crate::event::Color;
use crate::exposure::SiteRisks;
use crate::facts::{Facts, NEGATIVES_KEPT};
use crate::time::UnixMicros;

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    NegativeTestValid,
    NoValidTest,
    NoRecord,
    PositiveTest,
    Override,
    /// YELLOW: a visit to an exposure site, not yet cleared.
    Exposure,
}

/// A resident's status at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub color: Color,
    pub reason: Reason,
    /// When this status changes by itself, if it does.
    pub valid_until: Option<UnixMicros>,
    pub last_negative_sampled_at: Option<UnixMicros>,
    pub last_positive_sampled_at: Option<UnixMicros>,
    pub updated_at: Option<UnixMicros>,
    pub override_expires_at: Option<UnixMicros>,
    /// The visit that exposed the resident, while it counts.
    pub exposed_at: Option<UnixMicros>,
    pub as_of: UnixMicros,
}

/// Configurable knobs of the status rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long a negative sample keeps a resident GREEN (default 48 h).
    pub negative_validity: Duration,
    /// Negative samples needed after the latest positive to clear RED
    /// (default 2; at most the number of negatives the facts keep). The
    /// same number of negatives sampled after an exposure clears it.
    pub negatives_to_clear: usize,
    /// How long a visit to an exposure site keeps a resident at least
    /// YELLOW (default 7 days).
    pub exposure_period: Duration,
}

/// The default of [`Policy::exposure_period`].
pub const DEFAULT_EXPOSURE_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            negative_validity: Duration::from_secs(48 * 3600),
            negatives_to_clear: NEGATIVES_KEPT,
            exposure_period: DEFAULT_EXPOSURE_PERIOD,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("negatives_to_clear must be between 1 and {NEGATIVES_KEPT}, got {0}")]
pub struct PolicyError(pub usize);

impl Policy {
    pub fn new(negative_validity: Duration, negatives_to_clear: usize) -> Result<Policy, PolicyError> {
        if !(1..=NEGATIVES_KEPT).contains(&negatives_to_clear) {
            return Err(PolicyError(negatives_to_clear));
        }
        Ok(Policy { negative_validity, negatives_to_clear, exposure_period: DEFAULT_EXPOSURE_PERIOD })
    }

    /// The same rules with another exposure period.
    pub fn with_exposure_period(mut self, period: Duration) -> Policy {
        self.exposure_period = period;
        self
    }

    /// The status of a resident with `facts` at `now`, given the city's
    /// active site `risks`.
    pub fn evaluate(&self, facts: &Facts, risks: &SiteRisks, now: UnixMicros) -> Status {
        let (mut color, mut reason, mut valid_until) = self.base_color(facts, now);
        let exposed_at = self.exposure(facts, risks, now);
        if let Some(at) = exposed_at
            && color < Color::Red
        {
            // At least YELLOW: a GREEN, or a YELLOW for another reason, is
            // YELLOW for the exposure until it runs out or is cleared.
            (color, reason, valid_until) =
                (Color::Yellow, Reason::Exposure, Some(at.saturating_add(self.exposure_period)));
        }
        let mut status = Status {
            color,
            reason,
            valid_until,
            last_negative_sampled_at: facts.latest_negative(),
            last_positive_sampled_at: facts.latest_positive,
            updated_at: facts.updated_at,
            override_expires_at: None,
            exposed_at,
            as_of: now,
        };
        // Only the latest override counts, and only while it runs; it can
        // raise the color, never lower it.
        if let Some(o) = facts.latest_override()
            && now < o.expires_at
        {
            status.override_expires_at = Some(o.expires_at);
            if o.color > status.color {
                status.color = o.color;
                status.reason = Reason::Override;
                status.valid_until = Some(o.expires_at);
            }
        }
        status
    }

    /// The latest exposure that still counts at `now`: within the exposure
    /// period, and not cleared by enough negatives sampled after it.
    fn exposure(&self, facts: &Facts, risks: &SiteRisks, now: UnixMicros) -> Option<UnixMicros> {
        let at = risks.exposed_at(facts)?;
        let cleared = facts.latest_negatives.iter().flatten().filter(|n| **n > at).count() >= self.negatives_to_clear;
        (now < at.saturating_add(self.exposure_period) && !cleared).then_some(at)
    }

    fn base_color(&self, facts: &Facts, now: UnixMicros) -> (Color, Reason, Option<UnixMicros>) {
        if let Some(positive) = facts.latest_positive {
            let clearing = facts.latest_negatives.iter().flatten().filter(|n| **n > positive).count();
            if clearing < self.negatives_to_clear {
                return (Color::Red, Reason::PositiveTest, None);
            }
        }
        if let Some(negative) = facts.latest_negative() {
            let until = negative.saturating_add(self.negative_validity);
            if now < until {
                return (Color::Green, Reason::NegativeTestValid, Some(until));
            }
        }
        if facts.latest_test.is_some() {
            (Color::Yellow, Reason::NoValidTest, None)
        } else {
            (Color::Yellow, Reason::NoRecord, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::OverrideFact;

    const HOUR: i64 = 3_600_000_000;

    fn h(hours: i64) -> UnixMicros {
        UnixMicros(1_700_000_000_000_000 + hours * HOUR)
    }

    fn facts(positive: Option<i64>, negatives: &[i64]) -> Facts {
        let mut f = Facts { latest_positive: positive.map(h), ..Facts::default() };
        for (slot, n) in f.latest_negatives.iter_mut().zip(negatives) {
            *slot = Some(h(*n));
        }
        f.latest_test = [positive, negatives.first().copied()].into_iter().flatten().max().map(h);
        f
    }

    #[test]
    fn unknown_resident_is_yellow_no_record() {
        let s = Policy::default().evaluate(&Facts::default(), &SiteRisks::none(), h(0));
        assert_eq!((s.color, s.reason), (Color::Yellow, Reason::NoRecord));
    }

    #[test]
    fn fresh_negative_is_green_until_48h_after_sampling() {
        let p = Policy::default();
        let f = facts(None, &[0]);
        let s = p.evaluate(&f, &SiteRisks::none(), h(47));
        assert_eq!((s.color, s.reason, s.valid_until), (Color::Green, Reason::NegativeTestValid, Some(h(48))));
        let s = p.evaluate(&f, &SiteRisks::none(), h(48));
        assert_eq!((s.color, s.reason), (Color::Yellow, Reason::NoValidTest));
    }

    #[test]
    fn positive_is_red_until_two_later_negatives() {
        let p = Policy::default();
        assert_eq!(p.evaluate(&facts(Some(0), &[]), &SiteRisks::none(), h(1)).color, Color::Red);
        assert_eq!(p.evaluate(&facts(Some(0), &[5]), &SiteRisks::none(), h(6)).color, Color::Red);
        assert_eq!(p.evaluate(&facts(Some(0), &[5, -3]), &SiteRisks::none(), h(6)).color, Color::Red);
        let s = p.evaluate(&facts(Some(0), &[9, 5]), &SiteRisks::none(), h(10));
        assert_eq!((s.color, s.reason), (Color::Green, Reason::NegativeTestValid));
        // One clearing negative is enough when configured so.
        let one = Policy::new(p.negative_validity, 1).unwrap();
        assert_eq!(one.evaluate(&facts(Some(0), &[5]), &SiteRisks::none(), h(6)).color, Color::Green);
    }

    #[test]
    fn override_raises_but_never_lowers() {
        let p = Policy::default();
        let mut f = facts(None, &[0]);
        f.overrides = vec![OverrideFact {
            issued_at: h(1),
            event_id: "o1".into(),
            expires_at: h(24),
            color: Color::Yellow,
            authority_id: "cdc".into(),
            note: String::new(),
        }];
        let s = p.evaluate(&f, &SiteRisks::none(), h(2));
        assert_eq!((s.color, s.reason, s.valid_until), (Color::Yellow, Reason::Override, Some(h(24))));
        // Expired: back to the base color.
        assert_eq!(p.evaluate(&f, &SiteRisks::none(), h(24)).color, Color::Green);
        // A green override does not lower a red.
        let mut red = facts(Some(0), &[]);
        red.overrides = vec![OverrideFact { color: Color::Green, ..f.overrides[0].clone() }];
        let s = p.evaluate(&red, &SiteRisks::none(), h(2));
        assert_eq!((s.color, s.reason), (Color::Red, Reason::PositiveTest));
    }

    #[test]
    fn negatives_to_clear_is_bounded_by_what_facts_keep() {
        assert_eq!(Policy::new(Duration::from_secs(1), 3), Err(PolicyError(3)));
        assert_eq!(Policy::new(Duration::from_secs(1), 0), Err(PolicyError(0)));
    }

    #[test]
    fn an_exposure_is_yellow_for_the_period_unless_red_or_cleared_by_later_negatives() {
        use crate::facts::{SiteRiskFact, VisitFact};
        let p = Policy::default();
        let risks = SiteRisks::from_risks(&[SiteRiskFact {
            risk_id: "k1".into(),
            issued_at: h(30),
            event_id: "e".into(),
            site_id: "mall".into(),
            authority_id: "cdc".into(),
            risky_from: h(0),
            risky_until: h(10),
            retracted: false,
            note: String::new(),
        }]);
        let visit = |f: &mut Facts, at: i64| f.visits.push(VisitFact { scanned_at: h(at), site_id: "mall".into() });
        // A negative before the visit: GREEN without the risk, YELLOW with it.
        let mut f = facts(None, &[1]);
        visit(&mut f, 5);
        assert_eq!(p.evaluate(&f, &SiteRisks::none(), h(20)).color, Color::Green);
        let s = p.evaluate(&f, &risks, h(20));
        assert_eq!(
            (s.color, s.reason, s.valid_until, s.exposed_at),
            (Color::Yellow, Reason::Exposure, Some(h(5 + 168)), Some(h(5)))
        );
        // Over after the exposure period: back to what the tests say.
        assert_eq!(p.evaluate(&f, &risks, h(5 + 168)).reason, Reason::NoValidTest);
        // One negative after the visit is not enough, two are.
        let mut one = facts(None, &[20]);
        visit(&mut one, 5);
        assert_eq!(p.evaluate(&one, &risks, h(21)).reason, Reason::Exposure);
        let mut two = facts(None, &[22, 20]);
        visit(&mut two, 5);
        assert_eq!(p.evaluate(&two, &risks, h(23)).reason, Reason::NegativeTestValid);
        // A positive stays RED.
        let mut red = facts(Some(1), &[]);
        visit(&mut red, 5);
        assert_eq!(p.evaluate(&red, &risks, h(20)).reason, Reason::PositiveTest);
    }
}
