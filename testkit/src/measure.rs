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

#[cfg(test)]
mod tests {
    use super::process_cpu_time;

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
