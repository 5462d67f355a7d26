//! The load test's own reading of the color rules, written from
//! docs/architecture.md ("Facts, not colors") and sharing no code with
//! services/core: it judges the plain list of everything that happened to a
//! resident, not merged facts, so a mistake in the facts' merge or in the
//! policy shows as a mismatch instead of agreeing with itself.

/// What happened to one resident.
#[derive(Clone, Debug)]
pub enum Happened {
    /// A test result: its outcome and when the sample was taken (ms).
    Test { outcome: Outcome, sampled_ms: i64 },
    /// An authority override: its color, when issued and until when (ms),
    /// and its id (a tie on `issued_ms` goes to the greater id).
    Override { color: Code, issued_ms: i64, expires_ms: i64, id: String },
    /// A scan at a site (ms).
    Visit { site: String, at_ms: i64 },
}

/// One version of a site risk, as an authority sent it.
#[derive(Clone, Debug)]
pub struct RiskVersion {
    pub risk_id: String,
    pub event_id: String,
    pub site: String,
    pub from_ms: i64,
    pub until_ms: i64,
    pub issued_ms: i64,
    pub retracted: bool,
}

/// The risky windows per site: of each risk, only the version issued last
/// (a tie on `issued_ms` goes to the greater event id), and only if that
/// version does not withdraw it.
#[derive(Clone, Debug, Default)]
pub struct Risks {
    windows: std::collections::HashMap<String, Vec<(i64, i64)>>,
}

impl Risks {
    pub fn new(versions: &[RiskVersion]) -> Risks {
        let mut latest: std::collections::HashMap<&str, &RiskVersion> = std::collections::HashMap::new();
        for v in versions {
            let newer = match latest.get(v.risk_id.as_str()) {
                None => true,
                Some(held) => (v.issued_ms, &v.event_id) > (held.issued_ms, &held.event_id),
            };
            if newer {
                latest.insert(&v.risk_id, v);
            }
        }
        let mut risks = Risks::default();
        for v in latest.values().filter(|v| !v.retracted) {
            risks.windows.entry(v.site.clone()).or_default().push((v.from_ms, v.until_ms));
        }
        risks
    }

    fn risky(&self, site: &str, at_ms: i64) -> bool {
        self.windows.get(site).is_some_and(|ws| ws.iter().any(|(from, until)| *from <= at_ms && at_ms < *until))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Positive,
    Negative,
    Inconclusive,
}

/// A color, by severity.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Code {
    Green,
    Yellow,
    Red,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::Green => "GREEN",
            Code::Yellow => "YELLOW",
            Code::Red => "RED",
        }
    }
}

/// The rules' numbers.
#[derive(Clone, Debug)]
pub struct Rules {
    /// How long a negative sample keeps a resident green.
    pub negative_valid_ms: i64,
    /// Negative samples after the latest positive (or exposure) that clear it.
    pub negatives_to_clear: usize,
    /// How long a visit to an exposure site keeps a resident at least yellow.
    pub exposure_period_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { negative_valid_ms: 48 * 3_600_000, negatives_to_clear: 2, exposure_period_ms: 7 * 24 * 3_600_000 }
    }
}

/// The judgement, in the terms the Lookup API answers in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub color: &'static str,
    pub reason: &'static str,
    pub last_negative_ms: Option<i64>,
    pub last_positive_ms: Option<i64>,
}

/// The status at `now_ms` of a resident to whom `history` happened, in a
/// city with the site `risks`.
pub fn judge(history: &[Happened], risks: &Risks, rules: &Rules, now_ms: i64) -> Judged {
    let mut positives = Vec::new();
    let mut negatives = Vec::new();
    let mut tested = false;
    for h in history {
        if let Happened::Test { outcome, sampled_ms } = h {
            tested = true;
            match outcome {
                Outcome::Positive => positives.push(*sampled_ms),
                Outcome::Negative => negatives.push(*sampled_ms),
                Outcome::Inconclusive => {}
            }
        }
    }
    // Two results of the very same sample time count once.
    negatives.sort_unstable();
    negatives.dedup();
    let last_positive = positives.iter().copied().max();
    let last_negative = negatives.last().copied();

    // 1. Red while fewer than the required negatives follow the latest positive.
    // 2. Else green while the latest negative is recent enough.
    // 3. Else yellow: tested but nothing valid, or nothing on record.
    let (mut color, mut reason) = match (last_positive, last_negative) {
        (Some(p), _) if negatives.iter().filter(|n| **n > p).count() < rules.negatives_to_clear => {
            (Code::Red, "POSITIVE_TEST")
        }
        (_, Some(n)) if now_ms < n + rules.negative_valid_ms => (Code::Green, "NEGATIVE_TEST_VALID"),
        _ if tested => (Code::Yellow, "NO_VALID_TEST"),
        _ => (Code::Yellow, "NO_RECORD"),
    };
    // 4. Exposed: the latest visit inside an active risk's window, for the
    //    exposure period after it, unless enough negatives were sampled after
    //    it; then at least yellow (a red stays red).
    let exposed_ms = history
        .iter()
        .filter_map(|h| match h {
            Happened::Visit { site, at_ms } if risks.risky(site, *at_ms) => Some(*at_ms),
            _ => None,
        })
        .max();
    if let Some(v) = exposed_ms
        && now_ms < v + rules.exposure_period_ms
        && negatives.iter().filter(|n| **n > v).count() < rules.negatives_to_clear
        && color != Code::Red
    {
        (color, reason) = (Code::Yellow, "EXPOSURE");
    }
    // 5. The latest override, while it runs, raises the color, never lowers it.
    let latest_override = history
        .iter()
        .filter_map(|h| match h {
            Happened::Override { color, issued_ms, expires_ms, id } => Some((*issued_ms, id, *color, *expires_ms)),
            Happened::Test { .. } | Happened::Visit { .. } => None,
        })
        .max_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    if let Some((_, _, over, expires_ms)) = latest_override
        && now_ms < expires_ms
        && over > color
    {
        (color, reason) = (over, "OVERRIDE");
    }
    Judged { color: color.name(), reason, last_negative_ms: last_negative, last_positive_ms: last_positive }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn test(outcome: Outcome, hours: i64) -> Happened {
        Happened::Test { outcome, sampled_ms: hours * H }
    }

    fn color(history: &[Happened], now_h: i64) -> &'static str {
        judge(history, &Risks::default(), &Rules::default(), now_h * H).color
    }

    #[test]
    fn the_rules_as_written() {
        use Outcome::*;
        assert_eq!(color(&[], 0), "YELLOW");
        assert_eq!(color(&[test(Negative, 0)], 47), "GREEN");
        assert_eq!(color(&[test(Negative, 0)], 48), "YELLOW");
        assert_eq!(color(&[test(Positive, 0), test(Negative, 5)], 6), "RED");
        assert_eq!(color(&[test(Positive, 0), test(Negative, 5), test(Negative, 5)], 6), "RED", "one sample time");
        assert_eq!(color(&[test(Positive, 0), test(Negative, 5), test(Negative, 9)], 10), "GREEN");
        assert_eq!(color(&[test(Inconclusive, 0)], 1), "YELLOW");
        let yellow = |issued: i64, id: &str| Happened::Override {
            color: Code::Yellow,
            issued_ms: issued * H,
            expires_ms: (issued + 24) * H,
            id: id.into(),
        };
        assert_eq!(color(&[test(Negative, 0), yellow(1, "a")], 2), "YELLOW");
        assert_eq!(color(&[test(Negative, 0), yellow(1, "a")], 25), "GREEN", "expired");
        let green = Happened::Override { color: Code::Green, issued_ms: 2 * H, expires_ms: 30 * H, id: "b".into() };
        assert_eq!(color(&[test(Negative, 0), yellow(1, "a"), green.clone()], 3), "GREEN", "a later one lifts it");
        assert_eq!(color(&[test(Positive, 0), green], 3), "RED", "never lowers");
    }

    #[test]
    fn exposure_as_written() {
        use Outcome::*;
        let version = |event: &str, issued: i64, window: (i64, i64), retracted: bool| RiskVersion {
            risk_id: "k".into(),
            event_id: event.into(),
            site: "mall".into(),
            from_ms: window.0 * H,
            until_ms: window.1 * H,
            issued_ms: issued * H,
            retracted,
        };
        let at = |site: &str, h: i64| Happened::Visit { site: site.into(), at_ms: h * H };
        let risks = Risks::new(&[version("a", 10, (0, 5), false)]);
        let judged = |history: &[Happened], now_h: i64| {
            let j = judge(history, &risks, &Rules::default(), now_h * H);
            (j.color, j.reason)
        };
        assert_eq!(judged(&[at("mall", 3)], 12), ("YELLOW", "EXPOSURE"));
        assert_eq!(judged(&[at("mall", 5)], 12), ("YELLOW", "NO_RECORD"), "the window's end is open");
        assert_eq!(judged(&[at("gym", 3)], 12), ("YELLOW", "NO_RECORD"));
        assert_eq!(judged(&[test(Negative, 1), at("mall", 3)], 12), ("YELLOW", "EXPOSURE"), "green turns yellow");
        assert_eq!(judged(&[at("mall", 3), test(Negative, 4), test(Negative, 6)], 12).1, "NEGATIVE_TEST_VALID");
        assert_eq!(judged(&[at("mall", 3)], 3 + 7 * 24), ("YELLOW", "NO_RECORD"), "over after seven days");
        assert_eq!(judged(&[at("mall", 3), test(Positive, 1)], 12).0, "RED");
        // A later version moves the window; a later one still withdraws it.
        let moved = Risks::new(&[version("b", 11, (6, 9), false), version("a", 10, (0, 5), false)]);
        assert_eq!(judge(&[at("mall", 3)], &moved, &Rules::default(), 12 * H).reason, "NO_RECORD");
        assert_eq!(judge(&[at("mall", 7)], &moved, &Rules::default(), 12 * H).reason, "EXPOSURE");
        let withdrawn = Risks::new(&[version("b", 11, (0, 5), true), version("a", 10, (0, 5), false)]);
        assert_eq!(judge(&[at("mall", 3)], &withdrawn, &Rules::default(), 12 * H).reason, "NO_RECORD");
    }
}
