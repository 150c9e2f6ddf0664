//! The retry policy: when a temporarily failed recipient is tried again, and when blast gives up.
//!
//! Exponential backoff (`backoff`, doubled per attempt, capped at `max_backoff`) with ±20 %
//! jitter, so thousands of recipients deferred by one node in the same second do not come back
//! in the same second. A recipient expires after `attempts` answered attempts or `max_age`
//! after its first attempt, whichever comes first. Lost connections are not charged as
//! attempts (the recipient was never judged), but a message that keeps killing connections is
//! charged an attempt every [`REQUEUES_PER_ATTEMPT`] requeues so it cannot loop forever. (The
//! `attempts` of the delivery log and the journal count every try, lost ones included: see
//! `Job::attempts` and `Job::charged` in `send::dispatch`.)

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::campaign::RetryPolicy;

/// Requeues (lost connections) that count as one attempt.
pub const REQUEUES_PER_ATTEMPT: u32 = 5;

impl RetryPolicy {
    /// Delay before attempt number `attempts + 1`, given `attempts` already made (≥ 1).
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let base = self
            .backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        jitter(base)
    }

    /// Whether a recipient that has been tried `attempts` times, first at `first_attempt`,
    /// gets another try.
    pub fn gives_up(&self, attempts: u32, first_attempt: Instant, now: Instant) -> bool {
        attempts >= self.attempts || now.duration_since(first_attempt) >= self.max_age
    }
}

/// Scales `d` by a random factor in [0.8, 1.2).
fn jitter(d: Duration) -> Duration {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    let r = STATE.with(|s| {
        // xorshift64*: plenty for spreading retries.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    });
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.8 + 0.4 * unit)
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let id = std::thread::current().id();
    let h = format!("{id:?}")
        .bytes()
        .fold(t, |a, b| a.rotate_left(5) ^ b as u64);
    h | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            fallback_after: 2,
            all_nodes_down: Duration::from_secs(300),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = policy();
        for _ in 0..100 {
            let d1 = p.delay(1).as_secs_f64();
            assert!((8.0..12.0).contains(&d1), "{d1}");
            let d2 = p.delay(2).as_secs_f64();
            assert!((16.0..24.0).contains(&d2), "{d2}");
            let d9 = p.delay(9).as_secs_f64();
            assert!((48.0..72.0).contains(&d9), "{d9}");
        }
    }

    #[test]
    fn gives_up_on_attempts_or_age() {
        let p = policy();
        let t0 = Instant::now();
        assert!(!p.gives_up(3, t0, t0));
        assert!(p.gives_up(4, t0, t0));
        assert!(p.gives_up(1, t0, t0 + Duration::from_secs(3600)));
    }
}
