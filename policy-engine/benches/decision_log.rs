//! The decision log's cost under a steady stream of decisions, as in a morning logon
//! storm (two decisions per logon), rather than the bulk rate `audit_query` reports.
//!
//!   cargo bench -p sekisho-policy-engine --bench decision_log
//!
//! Decisions (Authorize, card + TOTP, 16,000 users) are offered at
//! `SEKISHO_BENCH_RATE` a second (default 3,000) for `SEKISHO_BENCH_SECS` (default
//! 10) into a `DecisionLog` writing to a fresh SQLite store (WAL, synchronous =
//! FULL), then flushed. The same stream is run with the log off (sample 0) to take
//! away the cost of making the decisions; the difference is the log's CPU per
//! decision (utime + stime of the process, every thread: the handler side's
//! `try_send`, the writer task, SQLite's worker thread).

use std::time::{Duration, Instant};

use sekisho_policy_engine::audit::decisions::{Decided, Decision};
use sekisho_policy_engine::audit::{AuditStore, DecisionLog};
use sekisho_policy_engine::{Action, AuthorizeOutcome, DecisionRequest, FactorSet, Via};
use sekisho_testkit::process_cpu_time;

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn decision(k: u64) -> Decision {
    Decision {
        ts_ms: 1_763_769_600_000 + k as i64,
        request_id: format!("gw-{k}"),
        request: DecisionRequest {
            user: format!("b{:05}", (k * 7919) % 16_000 + 1),
            device: format!("bench-pc-{:03}", k % 200 + 1),
            action: Action::Logon,
            via: Via::Console,
            upstream: FactorSet::default(),
            hour: 9,
        },
        decided: Decided::Authorize {
            factors: FactorSet::parse_names(["card", "totp"]).expect("factors"),
            outcome: Ok(AuthorizeOutcome {
                allowed: true,
                policy_ids: vec!["bench-card-totp".into()],
                policy_version: "v1".into(),
                errors: Vec::new(),
            }),
        },
    }
}

/// Offers `rate × secs` decisions on schedule (a burst every millisecond) to a log
/// with `sample`; returns (process CPU, decisions offered, decisions stored).
async fn stream(sample: f64, rate: u64, secs: u64) -> (Duration, u64, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("decisions.db").display());
    let store = AuditStore::open(&url, "bench").await.expect("store");
    let (log, writer) = DecisionLog::start(store.clone(), sample, 100_000);
    let start = tokio::time::Instant::now();
    let cpu0 = process_cpu_time();
    let mut k = 0u64;
    for ms in 0..secs * 1_000 {
        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
        // Spread the remainder so every second offers exactly `rate`.
        let due = (ms + 1) * rate / 1_000;
        while k < due {
            k += 1;
            if log.sampled() {
                log.record(decision(k));
            }
        }
    }
    writer.flush_and_stop(Duration::from_secs(600)).await;
    let cpu = process_cpu_time() - cpu0;
    let stored = store.decision_count().await.expect("count");
    store.close().await;
    (cpu, k, stored)
}

fn main() {
    let rate = env_u64("SEKISHO_BENCH_RATE", 3_000);
    let secs = env_u64("SEKISHO_BENCH_SECS", 10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("decision log, {rate} decisions/s for {secs} s, SQLite (WAL, synchronous = FULL)");
    let t = Instant::now();
    let (off, n, _) = rt.block_on(stream(0.0, rate, secs));
    let (on, _, stored) = rt.block_on(stream(1.0, rate, secs));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "log off: {:.0} ms CPU = {:.1} µs per decision offered",
        off.as_secs_f64() * 1e3,
        per(off)
    );
    println!(
        "log on:  {:.0} ms CPU = {:.1} µs per decision; {stored} of {n} stored",
        on.as_secs_f64() * 1e3,
        per(on)
    );
    println!(
        "the log's cost: {:.1} µs CPU per decision ({:.0}% of one core at this rate); {:.1} s in all",
        per(on) - per(off),
        (on.saturating_sub(off)).as_secs_f64() * 100.0 / secs as f64,
        t.elapsed().as_secs_f64()
    );
}
