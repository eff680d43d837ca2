//! The circuit breaker of one origin: atomics only, consulted on every delivery.
//!
//! Closed: failures to reach the origin (connect, TLS, no response in time) are counted, any
//! exchange that got a response resets the count, and `[proxy] breaker_failures` in a row open
//! it. Open: every delivery fails fast (503 `circuit_open`) until `breaker_cooldown` has passed;
//! then one delivery is let through as the probe (half-open), and its outcome closes the circuit
//! or opens it for another cool-down. A probe that never reports (refused for another reason
//! before it was sent) is replaced after one more cool-down. Each state change is made by exactly
//! one caller (a compare-and-swap), so it is counted and logged once, not once per delivery.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

pub use crate::metrics::CircuitState;

/// What the breaker says about one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Closed,
    /// The cool-down is over and this delivery is the one probe (the circuit just went
    /// half-open).
    Probe,
    /// Fail fast; a probe may be let through after this long.
    Reject { retry_after: Duration },
}

/// The breaker's policy, from `[proxy]`.
#[derive(Clone, Copy, Debug)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit; 0 turns the breaker off.
    pub failures: u32,
    pub cooldown: Duration,
    /// What the breaker's milliseconds count from.
    pub epoch: Instant,
}

impl BreakerPolicy {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// One origin's breaker.
#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// When it opened, or when the probe was let through (ms from the policy's epoch).
    since_ms: AtomicU64,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

impl Breaker {
    /// Whether a delivery may go to the origin now.
    pub fn admit(&self, policy: &BreakerPolicy) -> Admission {
        if policy.failures == 0 || self.state.load(Ordering::Acquire) == CLOSED {
            return Admission::Closed;
        }
        self.admit_at(policy.now_ms(), policy.cooldown)
    }

    /// Records how an exchange went: `healthy` when the origin answered at all. The state
    /// change, if this call made one.
    pub fn record(&self, policy: &BreakerPolicy, healthy: bool) -> Option<CircuitState> {
        if policy.failures == 0 {
            return None;
        }
        if healthy {
            self.succeeded()
        } else {
            self.failed(policy.failures, policy.now_ms())
        }
    }

    fn admit_at(&self, now_ms: u64, cooldown: Duration) -> Admission {
        let cooldown_ms = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
        let since = self.since_ms.load(Ordering::Acquire);
        let elapsed = now_ms.saturating_sub(since);
        if elapsed >= cooldown_ms
            && self
                .since_ms
                .compare_exchange(since, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.state.store(HALF_OPEN, Ordering::Release);
            return Admission::Probe;
        }
        Admission::Reject {
            retry_after: Duration::from_millis(cooldown_ms.saturating_sub(elapsed).max(1)),
        }
    }

    fn succeeded(&self) -> Option<CircuitState> {
        // Loads first: the common case (closed, no failures) writes nothing.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) == CLOSED {
            return None;
        }
        (self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED).then_some(CircuitState::Closed)
    }

    fn failed(&self, threshold: u32, now_ms: u64) -> Option<CircuitState> {
        match self.state.load(Ordering::Acquire) {
            HALF_OPEN => {
                self.since_ms.store(now_ms, Ordering::Release);
                self.state
                    .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                    .then_some(CircuitState::Open)
            }
            CLOSED => {
                let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if failures < threshold {
                    return None;
                }
                self.since_ms.store(now_ms, Ordering::Release);
                let opened = self
                    .state
                    .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok();
                if opened {
                    self.failures.store(0, Ordering::Relaxed);
                }
                opened.then_some(CircuitState::Open)
            }
            // Already open: a delivery admitted before it opened reports late.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_fails_fast_probes_once_and_closes() {
        let breaker = Breaker::default();
        let cooldown = Duration::from_secs(30);
        assert_eq!(breaker.failed(3, 0), None);
        assert_eq!(breaker.succeeded(), None, "a success resets the count");
        assert_eq!(breaker.failed(3, 0), None);
        assert_eq!(breaker.failed(3, 0), None);
        assert_eq!(breaker.failed(3, 1_000), Some(CircuitState::Open));
        assert_eq!(breaker.failed(3, 1_001), None, "opened once");
        assert_eq!(
            breaker.admit_at(1_050, cooldown),
            Admission::Reject {
                retry_after: Duration::from_millis(29_950)
            }
        );
        assert_eq!(breaker.admit_at(31_000, cooldown), Admission::Probe);
        assert!(
            matches!(breaker.admit_at(31_001, cooldown), Admission::Reject { .. }),
            "one probe at a time"
        );
        assert_eq!(breaker.failed(3, 31_500), Some(CircuitState::Open));
        assert!(matches!(
            breaker.admit_at(31_600, cooldown),
            Admission::Reject { .. }
        ));
        assert_eq!(breaker.admit_at(61_500, cooldown), Admission::Probe);
        assert_eq!(breaker.succeeded(), Some(CircuitState::Closed));
        assert_eq!(breaker.succeeded(), None, "closed once");
        assert_eq!(breaker.state.load(Ordering::Relaxed), CLOSED);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        let breaker = Breaker::default();
        let cooldown = Duration::from_secs(10);
        assert_eq!(breaker.failed(1, 0), Some(CircuitState::Open));
        assert_eq!(breaker.admit_at(10_000, cooldown), Admission::Probe);
        assert!(matches!(
            breaker.admit_at(19_999, cooldown),
            Admission::Reject { .. }
        ));
        assert_eq!(breaker.admit_at(20_000, cooldown), Admission::Probe);
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let breaker = Breaker::default();
        let policy = BreakerPolicy {
            failures: 0,
            cooldown: Duration::from_secs(1),
            epoch: Instant::now(),
        };
        for _ in 0..100 {
            assert_eq!(breaker.record(&policy, false), None);
        }
        assert_eq!(breaker.admit(&policy), Admission::Closed);
    }
}
