//! What the benchmarks measure besides wall time.

use std::time::Duration;

/// CPU time this process has used so far, every thread (utime + stime from
/// `/proc/self/stat`, in the kernel's 10 ms ticks). Zero where there is no procfs.
///
/// Benchmarks that run client and servers in one process report it per operation, so
/// a figure stays comparable when the shared machine's wall-clock speed varies.
pub fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ = 100
}

/// Percentiles of a set of latency samples.
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Summary {
    /// Sorts `samples` and reads the nearest-rank percentiles. Panics when empty: a
    /// benchmark that measured nothing has nothing to report.
    pub fn of(samples: &mut [Duration]) -> Summary {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        let total: Duration = samples.iter().sum();
        Summary {
            n: samples.len(),
            p50: at(0.50),
            p90: at(0.90),
            p95: at(0.95),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
            mean: total / samples.len() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{process_cpu_time, Summary};

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&mut samples);
        assert_eq!(s.n, 1000);
        assert_eq!(s.p50, Duration::from_millis(500));
        assert_eq!(s.p90, Duration::from_millis(900));
        assert_eq!(s.p99, Duration::from_millis(990));
        assert_eq!(s.p999, Duration::from_millis(999));
        assert_eq!(s.max, Duration::from_millis(1000));
        assert_eq!(s.mean, Duration::from_micros(500_500));
    }

    #[test]
    fn grows_with_work() {
        let before = process_cpu_time();
        let mut x = 0u64;
        // Work until a tick (10 ms) is counted; a few thousand rounds at most.
        for _ in 0..100_000 {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            if process_cpu_time() > before {
                return;
            }
        }
        panic!("no CPU time counted after 10^10 steps ({x})");
    }
}
