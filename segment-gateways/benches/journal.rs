//! Audit journal load generator: N tasks append logon events to one gateway's
//! journal as fast as it commits them, each waiting for its own commit (durable)
//! before the next append, the way a gateway's logon calls do.
//!
//!   cargo bench -p sekisho-gateway --bench journal
//!
//! - SQLite: a file in a temp dir, opened by the gateway's connector (WAL,
//!   synchronous = FULL: every commit syncs the WAL);
//! - PostgreSQL when `SEKISHO_BENCH_PG_URL` is set (a fresh tenant per run;
//!   `synchronous_commit` as the server has it, on by default).
//!
//! Environment: `SEKISHO_BENCH_SECS` (default 5) measured seconds per run, after a
//! 1 s warm-up; `SEKISHO_BENCH_TASKS` (default "64,256") the appender counts.
//! Prints events/s, append latency percentiles and the mean group-commit batch.

use std::time::{Duration, Instant};

use sekisho_gateway::db::Db;
use sekisho_gateway::journal::{self, Journal};
use sekisho_policy_engine::audit::event::EventBody;
use sekisho_policy_engine::audit::Outcome;
use sekisho_policy_engine::Tier;

const WARMUP: Duration = Duration::from_secs(1);

fn env_secs() -> f64 {
    std::env::var("SEKISHO_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0)
}

fn env_tasks() -> Vec<usize> {
    std::env::var("SEKISHO_BENCH_TASKS")
        .unwrap_or_else(|_| "64,256".into())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect()
}

/// A realistic allow: card + TOTP logon with a session, policy ids and a request id.
fn event(task: usize, i: u64) -> EventBody {
    let mut b = EventBody::new("", "", "logon", Outcome::Allow);
    b.device = format!("bench-pc-{:03}", task % 200);
    b.user = format!("b{:05}", (task as u64 * 7919 + i) % 16_000);
    b.operator = b.user.clone();
    b.factors = vec!["card".into(), "totp".into()];
    b.policy_version = "v1".into();
    b.policy_ids = vec!["internet-desktop-card-logon-unlock".into()];
    b.session = format!("{:032x}", (task as u128) << 64 | u128::from(i));
    b.request_id = format!("gw-bench-{task}-{i}");
    b
}

struct Run {
    events: u64,
    secs: f64,
    latencies: Vec<Duration>,
    batches: u64,
}

async fn run(journal: &Journal, tasks: usize, secs: f64) -> Run {
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(secs);
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let j = journal.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                j.append(event(t, i)).await.expect("append");
                if sent >= measure_from {
                    lat.push(sent.elapsed());
                }
                i += 1;
            }
            lat
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let stats_at_start = journal.stats();
    tokio::time::sleep_until(end.into()).await;
    let stats_at_end = journal.stats();
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.expect("appender"));
    }
    Run {
        events: latencies.len() as u64,
        secs,
        latencies,
        batches: stats_at_end.batches - stats_at_start.batches,
    }
}

fn report(label: &str, tasks: usize, mut r: Run) {
    r.latencies.sort_unstable();
    let at = |q: f64| {
        let n = r.latencies.len();
        r.latencies[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<10} {tasks:>5} tasks  {:>9.0} events/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  mean batch {:>6.1}",
        r.events as f64 / r.secs,
        ms(at(0.50)),
        ms(at(0.99)),
        ms(at(1.0)),
        r.events as f64 / r.batches.max(1) as f64,
    );
}

async fn bench(label: &str, url: &str, tenant: &str, secs: f64) {
    for tasks in env_tasks() {
        let db = Db::open(url, tenant, Tier::Internet).await.expect("open");
        let gateway = format!("bench-{tasks}");
        let journal = Journal::start(db.clone(), gateway.clone())
            .await
            .expect("journal");
        let r = run(&journal, tasks, secs).await;
        journal.close().await;
        let v = journal::verify(&db, &gateway).await.expect("verify");
        assert!(v.broken.is_none(), "chain broken: {:?}", v.broken);
        report(label, tasks, r);
        db.close().await;
    }
}

fn main() {
    let secs = env_secs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "journal append, each task waits for its commit; {secs} s per run after {} s warm-up",
            WARMUP.as_secs()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("journal.db").display());
        bench("sqlite", &url, "bench", secs).await;
        if let Ok(pg) = std::env::var("SEKISHO_BENCH_PG_URL") {
            let tenant = format!(
                "bench-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            );
            bench("postgres", &pg, &tenant, secs).await;
        } else {
            println!("(SEKISHO_BENCH_PG_URL not set: PostgreSQL skipped)");
        }
    });
}
