//! The status policy: a pure function of a resident's facts and `now`.

use std::time::Duration;

use crate::event::Color;
use crate::facts::{Facts, NEGATIVES_KEPT};
use crate::time::UnixMicros;

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    NegativeTestValid,
    NoValidTest,
    NoRecord,
    PositiveTest,
    Override,
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
    pub as_of: UnixMicros,
}

/// Configurable knobs of the status rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long a negative sample keeps a resident GREEN (default 48 h).
    pub negative_validity: Duration,
    /// Negative samples needed after the latest positive to clear RED
    /// (default 2; at most the number of negatives the facts keep).
    pub negatives_to_clear: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { negative_validity: Duration::from_secs(48 * 3600), negatives_to_clear: NEGATIVES_KEPT }
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
        Ok(Policy { negative_validity, negatives_to_clear })
    }

    pub fn evaluate(&self, facts: &Facts, now: UnixMicros) -> Status {
        let (color, reason, valid_until) = self.base_color(facts, now);
        let mut status = Status {
            color,
            reason,
            valid_until,
            last_negative_sampled_at: facts.latest_negative(),
            last_positive_sampled_at: facts.latest_positive,
            updated_at: facts.updated_at,
            override_expires_at: None,
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
        let s = Policy::default().evaluate(&Facts::default(), h(0));
        assert_eq!((s.color, s.reason), (Color::Yellow, Reason::NoRecord));
    }

    #[test]
    fn fresh_negative_is_green_until_48h_after_sampling() {
        let p = Policy::default();
        let f = facts(None, &[0]);
        let s = p.evaluate(&f, h(47));
        assert_eq!((s.color, s.reason, s.valid_until), (Color::Green, Reason::NegativeTestValid, Some(h(48))));
        let s = p.evaluate(&f, h(48));
        assert_eq!((s.color, s.reason), (Color::Yellow, Reason::NoValidTest));
    }

    #[test]
    fn positive_is_red_until_two_later_negatives() {
        let p = Policy::default();
        assert_eq!(p.evaluate(&facts(Some(0), &[]), h(1)).color, Color::Red);
        assert_eq!(p.evaluate(&facts(Some(0), &[5]), h(6)).color, Color::Red);
        assert_eq!(p.evaluate(&facts(Some(0), &[5, -3]), h(6)).color, Color::Red);
        let s = p.evaluate(&facts(Some(0), &[9, 5]), h(10));
        assert_eq!((s.color, s.reason), (Color::Green, Reason::NegativeTestValid));
        // One clearing negative is enough when configured so.
        let one = Policy::new(p.negative_validity, 1).unwrap();
        assert_eq!(one.evaluate(&facts(Some(0), &[5]), h(6)).color, Color::Green);
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
        let s = p.evaluate(&f, h(2));
        assert_eq!((s.color, s.reason, s.valid_until), (Color::Yellow, Reason::Override, Some(h(24))));
        // Expired: back to the base color.
        assert_eq!(p.evaluate(&f, h(24)).color, Color::Green);
        // A green override does not lower a red.
        let mut red = facts(Some(0), &[]);
        red.overrides = vec![OverrideFact { color: Color::Green, ..f.overrides[0].clone() }];
        let s = p.evaluate(&red, h(2));
        assert_eq!((s.color, s.reason), (Color::Red, Reason::PositiveTest));
    }

    #[test]
    fn negatives_to_clear_is_bounded_by_what_facts_keep() {
        assert_eq!(Policy::new(Duration::from_secs(1), 3), Err(PolicyError(3)));
        assert_eq!(Policy::new(Duration::from_secs(1), 0), Err(PolicyError(0)));
    }
}
