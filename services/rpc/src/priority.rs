//! Lookups first, in a process that serves both lookups and submits.
//!
//! A flood of submits takes the CPU that lookups need, and the ingest lane's
//! concurrency does not bound it: four 100-event batches at a time still
//! took 80,000 events/s and left lookups at 30x their idle p99 (measured,
//! docs/benchmarks.md). What bounds it is the event rate. So while lookups
//! are being served and the runtime falls behind its own schedule (a probe
//! task that should wake every 5 ms wakes late, in at least a quarter of a
//! window's probes: one late wake-up is noise, not load), the ingest rate
//! is cut by half each window; each window the runtime keeps up, it grows
//! back by a quarter, and with no lookups at all ingest is not paced.
//! Submits that would wait longer than `max_delay` (5 s) are shed with
//! RESOURCE_EXHAUSTED and a retry-after; the others wait their turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ServiceError;

/// The rate that means "not paced".
const UNPACED: u64 = u64::MAX;

#[derive(Clone, Debug)]
pub struct PriorityConfig {
    /// How late the runtime may run while lookups are served before ingest
    /// is slowed.
    pub lag_target: Duration,
    /// How often the rate is adjusted.
    pub window: Duration,
    /// Ingest is never paced below this (events per second).
    pub min_rate: u64,
    /// Longest a submit waits for its turn before it is shed.
    pub max_delay: Duration,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            lag_target: Duration::from_millis(1),
            window: Duration::from_millis(100),
            min_rate: 2_000,
            // A station waits for its answer rather than retrying: at the
            // floor rate this holds 10,000 events, more than the replay of a
            // 20,000-resident round keeps in flight.
            max_delay: Duration::from_secs(5),
        }
    }
}

/// Shared by the lookup service (which reports lookups) and the edge
/// (which paces its events).
pub struct LookupsFirst {
    config: PriorityConfig,
    /// Events per second ingest may take now; [`UNPACED`] when unbounded.
    rate: AtomicU64,
    /// When the next paced event may start (virtual schedule).
    next_free: std::sync::Mutex<Instant>,
    lookups: AtomicU64,
    events: AtomicU64,
    rate_gauge: metrics::Gauge,
    lag_gauge: metrics::Gauge,
    delayed: metrics::Counter,
    shed: metrics::Counter,
}

impl LookupsFirst {
    pub fn new(config: PriorityConfig) -> Arc<LookupsFirst> {
        Arc::new(LookupsFirst {
            config,
            rate: AtomicU64::new(UNPACED),
            next_free: std::sync::Mutex::new(Instant::now()),
            lookups: AtomicU64::new(0),
            events: AtomicU64::new(0),
            rate_gauge: metrics::gauge!("healthcode_ingest_paced_rate_events_per_second"),
            lag_gauge: metrics::gauge!("healthcode_runtime_lag_seconds"),
            delayed: metrics::counter!("healthcode_ingest_paced_calls_total"),
            shed: metrics::counter!("healthcode_admission_shed_total", "lane" => "ingest_paced"),
        })
    }

    /// A lookup is being served.
    pub fn lookup_started(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// The ingest rate in force: `None` when ingest is not paced.
    pub fn rate(&self) -> Option<u64> {
        Some(self.rate.load(Ordering::Relaxed)).filter(|r| *r != UNPACED)
    }

    /// Waits until `events` more events may be taken, or sheds the call when
    /// that would be more than `max_delay` away.
    pub async fn pace(&self, events: usize) -> Result<(), ServiceError> {
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == UNPACED || events == 0 {
            return Ok(());
        }
        let cost = Duration::from_secs_f64(events as f64 / rate as f64);
        let now = Instant::now();
        let start = {
            let mut next = self.next_free.lock().expect("pacing lock");
            let start = (*next).max(now);
            if start - now > self.config.max_delay {
                drop(next);
                self.shed.increment(1);
                return Err(ServiceError::ResourceExhausted {
                    what: "ingest rate",
                    detail: "submits are slowed while lookups need the CPU".into(),
                    retry_after: start - now,
                });
            }
            *next = start + cost;
            start
        };
        if start > now {
            self.delayed.increment(1);
            tokio::time::sleep_until(start).await;
        }
        Ok(())
    }

    /// Probes the runtime's lag and adjusts the rate until `shutdown`.
    pub fn spawn_controller(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move { this.control(shutdown).await })
    }

    async fn control(&self, shutdown: CancellationToken) {
        const PROBE: Duration = Duration::from_millis(5);
        let mut window = Window::start(self);
        loop {
            let due = Instant::now() + PROBE;
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = Instant::now();
            let lag = now.saturating_duration_since(due);
            window.worst_lag = window.worst_lag.max(lag);
            window.probes += 1;
            window.late += u32::from(lag > self.config.lag_target);
            if now.duration_since(window.began) >= self.config.window {
                self.adjust(&window, now);
                window = Window::start(self);
            }
        }
    }

    fn adjust(&self, window: &Window, now: Instant) {
        let lookups = self.lookups.load(Ordering::Relaxed) - window.lookups;
        let events = self.events.load(Ordering::Relaxed) - window.events;
        let seconds = now.duration_since(window.began).as_secs_f64();
        let current = self.rate.load(Ordering::Relaxed);
        let next = if lookups == 0 {
            UNPACED
        } else if window.running_late() {
            // From what ingest actually took when it was not paced.
            let taken = (events as f64 / seconds) as u64;
            (current.min(taken) / 2).max(self.config.min_rate)
        } else if current == UNPACED {
            UNPACED
        } else {
            current.saturating_add(current / 4).max(self.config.min_rate)
        };
        self.rate.store(next, Ordering::Relaxed);
        self.rate_gauge.set(if next == UNPACED { -1.0 } else { next as f64 });
        self.lag_gauge.set(window.worst_lag.as_secs_f64());
    }
}

/// One adjustment window: counters at its start and the worst lag seen.
struct Window {
    began: Instant,
    lookups: u64,
    events: u64,
    worst_lag: Duration,
    probes: u32,
    late: u32,
}

impl Window {
    fn start(of: &LookupsFirst) -> Window {
        Window {
            began: Instant::now(),
            lookups: of.lookups.load(Ordering::Relaxed),
            events: of.events.load(Ordering::Relaxed),
            worst_lag: Duration::ZERO,
            probes: 0,
            late: 0,
        }
    }

    /// At least a quarter of the probes woke later than the target.
    fn running_late(&self) -> bool {
        self.late > 0 && self.late * 4 >= self.probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of 20 probes of which those `late` woke `lag_ms` late.
    fn window(of: &LookupsFirst, lag_ms: u64, late: u32) -> Window {
        Window { worst_lag: Duration::from_millis(lag_ms), probes: 20, late, ..Window::start(of) }
    }

    /// One adjustment window of 100 ms in which ingest took `events`.
    fn after(of: &LookupsFirst, lookups: u64, events: u64, lag_ms: u64) -> Option<u64> {
        let late = if lag_ms > 1 { 5 } else { 0 };
        let w = Window { began: Instant::now() - Duration::from_millis(100), ..window(of, lag_ms, late) };
        of.lookups.fetch_add(lookups, Ordering::Relaxed);
        of.events.fetch_add(events, Ordering::Relaxed);
        of.adjust(&w, Instant::now());
        of.rate()
    }

    #[tokio::test(start_paused = true)]
    async fn submits_slow_only_while_lookups_are_served_and_the_server_runs_late() {
        let p = LookupsFirst::new(PriorityConfig::default());
        assert_eq!(p.rate(), None, "not paced at start");
        assert_eq!(after(&p, 0, 10_000, 50), None, "late, but no lookups: ingest keeps its pace");
        assert_eq!(after(&p, 10, 10_000, 0), None, "lookups, but on time: not paced");
        let one_hiccup = Window { began: Instant::now() - Duration::from_millis(100), ..window(&p, 40, 1) };
        p.lookups.fetch_add(1, Ordering::Relaxed);
        p.adjust(&one_hiccup, Instant::now());
        assert_eq!(p.rate(), None, "one late probe in twenty is noise");
        // Late with lookups: half of what ingest took (10,000 in 100 ms).
        assert_eq!(after(&p, 10, 10_000, 5), Some(50_000));
        assert_eq!(after(&p, 10, 5_000, 5), Some(25_000), "halved again");
        assert_eq!(after(&p, 10, 2_500, 0), Some(31_250), "on time: grows back by a quarter");
        for _ in 0..20 {
            after(&p, 10, 0, 5);
        }
        assert_eq!(p.rate(), Some(PriorityConfig::default().min_rate), "never below the floor");
        assert_eq!(after(&p, 0, 0, 5), None, "lookups gone: unpaced at once");
    }

    #[tokio::test(start_paused = true)]
    async fn paced_submits_wait_their_turn_and_are_shed_past_the_longest_delay() {
        let p = LookupsFirst::new(PriorityConfig { max_delay: Duration::from_secs(1), ..PriorityConfig::default() });
        p.rate.store(1_000, Ordering::Relaxed);
        let started = Instant::now();
        p.pace(500).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO, "the first call goes at once");
        p.pace(500).await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(500), "the second waits for the first's 500 events");
        // 1,500 events book the next 1.5 s; a call that would start more
        // than 1 s out is shed and told when its turn would have come.
        p.pace(1_500).await.unwrap();
        let shed = p.pace(10).await.unwrap_err();
        assert_eq!(shed.code(), tonic::Code::ResourceExhausted);
        assert!(
            matches!(shed, ServiceError::ResourceExhausted { retry_after, .. } if retry_after == Duration::from_millis(1_500)),
            "{shed:?}"
        );
    }
}
