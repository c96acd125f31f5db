//! Per-device rate limiting of logon attempts: a token bucket per device, so one
//! compromised or misbehaving endpoint cannot hammer the credential checks (or
//! lock every user out) while other devices are unaffected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(per_minute: f64, burst: u32) -> Self {
        RateLimiter {
            per_sec: per_minute / 60.0,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `device`; false when its bucket is empty.
    pub fn allow(&self, device: &str) -> bool {
        self.allow_at(device, Instant::now())
    }

    fn allow_at(&self, device: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(device) {
            // A full bucket is the same as no bucket: drop those.
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec < burst
            });
        }
        let bucket = buckets.entry(device.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_device() {
        let r = RateLimiter::new(60.0, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| r.allow_at("a", t0)));
        assert!(!r.allow_at("a", t0));
        assert!(r.allow_at("b", t0), "another device is unaffected");
        assert!(!r.allow_at("a", t0 + Duration::from_millis(500)));
        assert!(r.allow_at("a", t0 + Duration::from_millis(1500)));
    }
}
