//! Delivery records of one endpoint: counters the delivery path updates with atomic operations
//! only (no lock, no allocation), shared by every snapshot that holds the endpoint.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

use time::OffsetDateTime;

/// How a delivery went, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The upstream answered 2xx.
    Success,
    /// Anything else: a non-2xx answer, or no answer.
    Failed,
}

impl DeliveryOutcome {
    /// The name the store and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
        }
    }
}

/// `deliveriesCount`, `lastDeliveryAt`, `lastDeliveryStatus`, `consecutiveFailures`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    deliveries: AtomicU64,
    /// Unix milliseconds of the last delivery; 0 for none.
    last_at_ms: AtomicI64,
    /// 0 none, 1 success, 2 failed.
    last_outcome: AtomicU8,
    consecutive_failures: AtomicU64,
    /// Deliveries to the endpoint in flight now (not stored).
    in_flight: AtomicU32,
}

/// The delivery records at one instant (what a store write records).
#[derive(Clone, Copy, Debug, Default)]
pub struct StatsNow {
    pub deliveries: u64,
    pub last_at: Option<OffsetDateTime>,
    pub last_outcome: Option<DeliveryOutcome>,
    pub consecutive_failures: u64,
}

impl DeliveryStats {
    /// The records as they are now.
    pub fn now(&self) -> StatsNow {
        StatsNow {
            deliveries: self.deliveries(),
            last_at: self.last_delivery_at(),
            last_outcome: self.last_outcome(),
            consecutive_failures: self.consecutive_failures(),
        }
    }

    /// Counters as a store record left them.
    pub fn restore(
        deliveries: u64,
        last_at: Option<OffsetDateTime>,
        last_outcome: Option<DeliveryOutcome>,
        consecutive_failures: u64,
    ) -> Self {
        let last_at_ms = last_at.map_or(0, |at| (at.unix_timestamp_nanos() / 1_000_000) as i64);
        Self {
            deliveries: AtomicU64::new(deliveries),
            last_at_ms: AtomicI64::new(last_at_ms),
            last_outcome: AtomicU8::new(encode(last_outcome)),
            consecutive_failures: AtomicU64::new(consecutive_failures),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Counts one more delivery in flight unless `cap` are already; `false` when at the cap.
    /// Each `true` is matched by one [`DeliveryStats::end`].
    pub fn begin(&self, cap: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < cap).then_some(now + 1)
            })
            .is_ok()
    }

    /// One delivery in flight ended.
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Records one delivery; returns the consecutive failures after it.
    pub fn record(&self, outcome: DeliveryOutcome) -> u64 {
        let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        self.last_at_ms.store(now_ms, Ordering::Relaxed);
        self.last_outcome
            .store(encode(Some(outcome)), Ordering::Relaxed);
        let failures = match outcome {
            DeliveryOutcome::Success => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                0
            }
            DeliveryOutcome::Failed => {
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
            }
        };
        // Counted last: a flush that sees the new count also sees the rest.
        self.deliveries.fetch_add(1, Ordering::Release);
        failures
    }

    /// Resets the failure streak (an operator re-enabled the endpoint).
    pub fn reset_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Acquire)
    }

    pub fn last_delivery_at(&self) -> Option<OffsetDateTime> {
        match self.last_at_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok(),
        }
    }

    pub fn last_outcome(&self) -> Option<DeliveryOutcome> {
        match self.last_outcome.load(Ordering::Relaxed) {
            1 => Some(DeliveryOutcome::Success),
            2 => Some(DeliveryOutcome::Failed),
            _ => None,
        }
    }

    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}

fn encode(outcome: Option<DeliveryOutcome>) -> u8 {
    match outcome {
        None => 0,
        Some(DeliveryOutcome::Success) => 1,
        Some(DeliveryOutcome::Failed) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_up_and_reset_on_success() {
        let stats = DeliveryStats::default();
        assert_eq!(stats.record(DeliveryOutcome::Failed), 1);
        assert_eq!(stats.record(DeliveryOutcome::Failed), 2);
        assert_eq!(stats.last_outcome(), Some(DeliveryOutcome::Failed));
        assert_eq!(stats.record(DeliveryOutcome::Success), 0);
        assert_eq!(stats.deliveries(), 3);
        assert_eq!(stats.consecutive_failures(), 0);
        assert!(stats.last_delivery_at().is_some());
    }
}
