//! Admission control: each kind of work (lookups, ingest) gets its own lane
//! of concurrent calls and its own short queue, so a flood of one cannot
//! starve the other. A call that finds its lane and queue full, or waits
//! longer than the lane allows, is shed with RESOURCE_EXHAUSTED and
//! `retry-after-ms` instead of queueing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::ServiceError;

#[derive(Clone, Debug)]
pub struct LaneConfig {
    /// Calls served at once.
    pub concurrency: usize,
    /// Calls that may wait for a slot; more are shed at once.
    pub queue: usize,
    /// Longest wait for a slot before the call is shed.
    pub max_wait: Duration,
    /// What a shed caller is told to wait.
    pub retry_after: Duration,
}

pub struct Lane {
    name: &'static str,
    permits: Semaphore,
    waiting: AtomicUsize,
    config: LaneConfig,
    in_flight_gauge: metrics::Gauge,
    waiting_gauge: metrics::Gauge,
}

/// A slot in a lane, held for the call's duration.
pub struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    lane: &'a Lane,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.lane.in_flight_gauge.decrement(1.0);
    }
}

impl Lane {
    /// `name` labels the lane's metrics (`lookup`, `ingest`).
    pub fn new(name: &'static str, config: LaneConfig) -> Lane {
        metrics::gauge!("healthcode_admission_limit", "lane" => name, "limit" => "concurrency")
            .set(config.concurrency as f64);
        metrics::gauge!("healthcode_admission_limit", "lane" => name, "limit" => "queue").set(config.queue as f64);
        metrics::gauge!("healthcode_admission_limit", "lane" => name, "limit" => "max_wait_seconds")
            .set(config.max_wait.as_secs_f64());
        Lane {
            name,
            permits: Semaphore::new(config.concurrency.max(1)),
            waiting: AtomicUsize::new(0),
            config,
            in_flight_gauge: metrics::gauge!("healthcode_admission_in_flight", "lane" => name),
            waiting_gauge: metrics::gauge!("healthcode_admission_waiting", "lane" => name),
        }
    }

    pub async fn enter(&self) -> Result<Slot<'_>, ServiceError> {
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => self.wait().await?,
        };
        self.in_flight_gauge.increment(1.0);
        Ok(Slot { _permit: permit, lane: self })
    }

    async fn wait(&self) -> Result<SemaphorePermit<'_>, ServiceError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.config.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(self.shed("queue full"));
        }
        self.waiting_gauge.increment(1.0);
        let acquired = tokio::time::timeout(self.config.max_wait, self.permits.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.waiting_gauge.decrement(1.0);
        match acquired {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(self.shed("no slot within the wait")),
        }
    }

    fn shed(&self, why: &str) -> ServiceError {
        metrics::counter!("healthcode_admission_shed_total", "lane" => self.name).increment(1);
        ServiceError::ResourceExhausted {
            what: "server capacity",
            detail: format!("{} lane busy: {why}", self.name),
            retry_after: self.config.retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(concurrency: usize, queue: usize, max_wait_ms: u64) -> Lane {
        Lane::new(
            "test",
            LaneConfig {
                concurrency,
                queue,
                max_wait: Duration::from_millis(max_wait_ms),
                retry_after: Duration::from_millis(100),
            },
        )
    }

    #[tokio::test]
    async fn a_full_lane_and_queue_shed_at_once() {
        let lane = lane(1, 0, 1000);
        let held = lane.enter().await.unwrap();
        let started = std::time::Instant::now();
        let shed = lane.enter().await.err().expect("shed");
        assert_eq!(shed.code(), tonic::Code::ResourceExhausted);
        assert!(started.elapsed() < Duration::from_millis(500), "no wait with a full queue");
        drop(held);
        assert!(lane.enter().await.is_ok(), "the slot is back");
    }

    #[tokio::test]
    async fn a_waiting_call_gets_a_freed_slot_or_is_shed_after_the_wait() {
        let lane = std::sync::Arc::new(lane(1, 4, 50));
        let held = lane.enter().await.unwrap();
        let started = std::time::Instant::now();
        assert!(lane.enter().await.is_err(), "shed after the wait");
        assert!(started.elapsed() >= Duration::from_millis(45));
        let waiter = {
            let lane = lane.clone();
            tokio::spawn(async move { lane.enter().await.is_ok() })
        };
        // The slot is freed once the waiter is in the queue, not after a guess.
        while lane.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert!(waiter.await.unwrap(), "the waiter got the slot");
    }
}
