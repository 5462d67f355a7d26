//! Checks in the middle of a replay: a sample of residents read back while
//! the round runs, each judged by the oracle on what had been submitted and
//! answered by then. A status that is right at the end but was wrong on the
//! way (a lost update later repaired, a rule applied late) shows here.
//!
//! A resident is only judged when the answer is certain: none of its events
//! (nor a site risk on a site it visited) was in flight around the check,
//! and its status is the same at the first and the last instant the read
//! may have seen. The others are counted as skipped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use serde::Serialize;

use crate::oracle::{Happened, Judged, RiskVersion, Risks, Rules, judge};
use crate::round::{RoundConfig, mix, resident_id};
use crate::verify::Expected;

/// Which entries of the schedule have been answered: every entry due at
/// or before [`Watermark::answered_up_to`] has its answer.
#[derive(Default)]
pub struct Watermark {
    inner: Mutex<(BTreeMap<u64, usize>, u64)>,
}

impl Watermark {
    pub fn sent(&self, at_ms: u64) {
        let mut w = self.inner.lock().expect("watermark lock");
        *w.0.entry(at_ms).or_default() += 1;
        w.1 = w.1.max(at_ms);
    }

    pub fn answered(&self, at_ms: u64) {
        let mut w = self.inner.lock().expect("watermark lock");
        if let Some(n) = w.0.get_mut(&at_ms) {
            *n -= 1;
            if *n == 0 {
                w.0.remove(&at_ms);
            }
        }
    }

    /// The latest schedule time sent: nothing due after it has gone out.
    pub fn sent_up_to(&self) -> u64 {
        self.inner.lock().expect("watermark lock").1
    }

    /// Schedule time up to which every sent entry has been answered.
    pub fn answered_up_to(&self) -> u64 {
        let w = self.inner.lock().expect("watermark lock");
        match w.0.keys().next() {
            Some(first) => first.saturating_sub(1),
            None => w.1,
        }
    }
}

/// One check's tally.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MidRoundCheck {
    /// Schedule time (ms from the round's start) answered when it began.
    pub at_ms: u64,
    pub checked: u64,
    /// Residents whose status was not certain at the check (left out).
    pub skipped: u64,
    pub mismatches: u64,
    pub first: Vec<String>,
}

pub struct MidRound {
    round: RoundConfig,
    versions: Vec<RiskVersion>,
    rules: Rules,
}

impl MidRound {
    pub fn new(round: RoundConfig) -> MidRound {
        let versions = round.all_risk_versions();
        MidRound { round, versions, rules: Rules::default() }
    }

    /// `n` residents for check number `check`, drawn from the round's seed.
    pub fn sample(&self, check: u64, n: u64) -> Vec<u64> {
        let mut seen = HashSet::new();
        (0..n * 4)
            .map(|k| mix(self.round.seed, check * 1_000_003 + k, 0xc4ec) % self.round.residents)
            .filter(|i| seen.insert(*i))
            .take(n as usize)
            .collect()
    }

    /// What resident `i` must show when every event the schedule submits
    /// up to `answered` is in and none after `sent` can be (schedule times),
    /// read while the server's clock ran from `from` to `to` (event times:
    /// the replay stamps events in the past, so the server judges at a later
    /// round time than the schedule's); `None` when that is not certain.
    pub fn expected(&self, i: u64, answered: u64, sent: u64, (from, to): (u64, u64)) -> Option<Expected> {
        let timeline = self.round.timeline(i);
        if timeline.iter().any(|(at, _)| *at > answered && *at <= sent) {
            return None;
        }
        let visited: HashSet<&str> = timeline
            .iter()
            .filter_map(|(_, h)| match h {
                Happened::Visit { site, .. } => Some(site.as_str()),
                _ => None,
            })
            .collect();
        let in_flight = |v: &&RiskVersion| (v.issued_ms as u64) > answered && (v.issued_ms as u64) <= sent;
        if self.versions.iter().filter(in_flight).any(|v| visited.contains(v.site.as_str())) {
            return None;
        }
        let known: Vec<Happened> = timeline.into_iter().filter(|(at, _)| *at <= answered).map(|(_, h)| h).collect();
        let risks =
            Risks::new(&self.versions.iter().filter(|v| v.issued_ms as u64 <= answered).cloned().collect::<Vec<_>>());
        let (first, last): (Judged, Judged) =
            (judge(&known, &risks, &self.rules, from as i64), judge(&known, &risks, &self.rules, to as i64));
        (first == last).then(|| Expected {
            resident_id: resident_id(i),
            color: first.color.to_owned(),
            reason: first.reason.to_owned(),
            last_negative_ms: first.last_negative_ms,
            last_positive_ms: first.last_positive_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_oldest_answer_still_awaited() {
        let w = Watermark::default();
        assert_eq!(w.answered_up_to(), 0);
        w.sent(10);
        w.sent(20);
        w.sent(20);
        assert_eq!((w.answered_up_to(), w.sent_up_to()), (9, 20));
        w.answered(10);
        assert_eq!(w.answered_up_to(), 19);
        w.answered(20);
        w.answered(20);
        assert_eq!(w.answered_up_to(), 20, "all answered: up to the last sent");
    }

    #[test]
    fn a_resident_is_judged_only_when_the_check_cannot_have_raced_its_events() {
        let round = RoundConfig { residents: 3_000, ..RoundConfig::default() };
        let check = MidRound::new(round.clone());
        let i = (0..round.residents).find(|i| !round.skips(*i)).unwrap();
        let first = round.test_in(i, 0).unwrap();
        // Before anything about it was submitted: no record.
        let before = check.expected(i, 0, 0, (0, 1)).unwrap();
        assert_eq!(before.reason, "NO_RECORD");
        // Its first result in flight during the check: not judged.
        let t = first.resulted_ms;
        assert!(check.expected(i, t - 1, t, (t, t + 1)).is_none());
        // Once answered, the result counts (judged at the server's later clock).
        let after = check.expected(i, t, t + 1, (t + 5, t + 6)).unwrap();
        assert_eq!(
            after.last_negative_ms.is_some() || after.last_positive_ms.is_some(),
            first.outcome != healthcode_core::TestOutcome::Inconclusive
        );
        // At the round's end with everything in: what verify expects.
        let end = round.end_ms();
        let at_end = check.expected(i, end, end, (end, end)).unwrap();
        assert_eq!(at_end.reason, round.expected(i, &round.risks(), &Rules::default()).reason);
        // Samples are distinct residents.
        let sample = check.sample(2, 200);
        assert_eq!(sample.iter().collect::<HashSet<_>>().len(), 200);
    }
}
