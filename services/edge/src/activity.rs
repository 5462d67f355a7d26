//! Who submits the most: events per caller over the last minute or two, for
//! the operations console. Kept in memory, never in metrics (caller ids are
//! not a bounded label), and bounded itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Callers counted per window at most; the rest count under [`OTHERS`].
const MAX_CALLERS: usize = 10_000;
/// Where callers beyond [`MAX_CALLERS`] are counted.
pub const OTHERS: &str = "(others)";
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerCount {
    pub station: String,
    pub role: String,
    pub events: u64,
}

impl CallerCount {
    /// The `n` busiest of several lists (one caller may show in several).
    pub fn top(all: Vec<CallerCount>, n: usize) -> Vec<CallerCount> {
        let mut summed: HashMap<(String, String), u64> = HashMap::new();
        for c in all {
            *summed.entry((c.station, c.role)).or_default() += c.events;
        }
        let mut out: Vec<CallerCount> =
            summed.into_iter().map(|((station, role), events)| CallerCount { station, role, events }).collect();
        out.sort_by(|a, b| b.events.cmp(&a.events).then_with(|| a.station.cmp(&b.station)));
        out.truncate(n);
        out
    }
}

#[derive(Default)]
struct Windows {
    started: Option<Instant>,
    current: HashMap<(String, &'static str), u64>,
    previous: HashMap<(String, &'static str), u64>,
}

/// Events accepted per caller in the current window and the one before.
#[derive(Default)]
pub struct CallerActivity {
    windows: Mutex<Windows>,
}

impl CallerActivity {
    pub fn record(&self, caller: &str, role: &'static str, events: u64) {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        rotate(&mut w, Instant::now());
        let known = w.current.contains_key(&(caller.to_owned(), role));
        let key = if known || w.current.len() < MAX_CALLERS { caller.to_owned() } else { OTHERS.to_owned() };
        *w.current.entry((key, role)).or_default() += events;
    }

    /// The `n` busiest callers over the last one to two minutes.
    pub fn busiest(&self, n: usize) -> Vec<CallerCount> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        rotate(&mut w, Instant::now());
        let all = w
            .current
            .iter()
            .chain(w.previous.iter())
            .map(|((station, role), events)| CallerCount {
                station: station.clone(),
                role: (*role).to_owned(),
                events: *events,
            })
            .collect();
        CallerCount::top(all, n)
    }
}

fn rotate(w: &mut Windows, now: Instant) {
    match w.started {
        None => w.started = Some(now),
        Some(started) if now.duration_since(started) >= WINDOW => {
            // A gap of two windows or more leaves nothing recent.
            w.previous =
                if now.duration_since(started) >= 2 * WINDOW { HashMap::new() } else { std::mem::take(&mut w.current) };
            w.current.clear();
            w.started = Some(now);
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_come_first_and_the_count_of_callers_is_bounded() {
        let a = CallerActivity::default();
        a.record("st-1", "station", 5);
        a.record("lab-1", "lab", 9);
        a.record("st-1", "station", 5);
        let top = a.busiest(10);
        assert_eq!((top[0].station.as_str(), top[0].events), ("st-1", 10));
        assert_eq!((top[1].station.as_str(), top[1].events), ("lab-1", 9));
        for i in 0..MAX_CALLERS + 5 {
            a.record(&format!("st-x{i}"), "station", 1);
        }
        let w = a.windows.lock().unwrap();
        assert!(w.current.len() <= MAX_CALLERS + 1, "{}", w.current.len());
        assert!(w.current.contains_key(&(OTHERS.to_owned(), "station")));
    }
}
