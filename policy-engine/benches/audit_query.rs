//! The engine's audit store at a big city's year: query latency and ingest rate.
//!
//! Fills a SQLite audit store with N events (`SEKISHO_BENCH_EVENTS`, default
//! 10,000,000: about one year of a 4,700-staff city's logons, unlocks and operator
//! switches on 1,700 terminals, shipped by 8 gateways), through `AuditStore::ingest`
//! in batches of 50,000. With `SEKISHO_BENCH_DB=/path/audit.db` the file is kept and
//! reused, so the fill is paid once (an interrupted fill resumes). Then measures,
//! over `SEKISHO_BENCH_RUNS` runs each (default 50), median and p99 of:
//! a user's last 100 events, a device's week, a page of denied logons, the first
//! page of an unfiltered listing, and `last_allowed("logon")` (dormant report);
//! then the ingest rate in batches of 500 (the engine half of a gateway's
//! forwarding catch-up) and the chain verification rate.
//!
//! `cargo bench -p sekisho-policy-engine --bench audit_query`

use std::time::{Duration, Instant};

use sekisho_policy_engine::audit::decisions::{Decided, Decision};
use sekisho_policy_engine::audit::event::{format_ts, EventBody, Outcome, GENESIS_HASH};
use sekisho_policy_engine::audit::{AuditStore, DecisionLog, Filter, Page, Record};
use sekisho_policy_engine::{Action, AuthorizeOutcome, DecisionRequest, FactorSet, Via};

const USERS: u64 = 4_700;
const DEVICES: u64 = 1_700;
const GATEWAYS: [(&str, &str); 8] = [
    ("mynumber-gw-1", "mynumber"),
    ("mynumber-gw-2", "mynumber"),
    ("lgwan-gw-1", "lgwan"),
    ("lgwan-gw-2", "lgwan"),
    ("internet-gw-1", "internet"),
    ("internet-gw-2", "internet"),
    ("telework-gw-1", "telework"),
    ("telework-gw-2", "telework"),
];
/// 2025-11-22T00:00:00Z: the year ends about 2026-11-22.
const START_MS: i64 = 1_763_769_600_000;
const YEAR_MS: i64 = 365 * 86_400_000;
const FILL_BATCH: usize = 50_000;

fn mix(mut x: u64) -> u64 {
    // splitmix64: event i's attributes, reproducible without storing anything.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn user(n: u64) -> String {
    format!("u{n:05}")
}

fn device(n: u64) -> String {
    format!("pc-{n:04}")
}

/// The body of the city's event number `i` (0-based, time ordered), `ts_ms` its time.
fn body(i: u64, ts_ms: i64, gateway: &str, tier: &str, seq: u64) -> EventBody {
    let h = mix(i);
    let roll = h % 1000;
    let (action, outcome) = match roll {
        0..=739 => ("logon", Outcome::Allow),
        740..=799 => ("logon", Outcome::Deny),
        800..=804 => ("logon", Outcome::Error),
        805..=904 => ("unlock", Outcome::Allow),
        905..=914 => ("unlock", Outcome::Deny),
        915..=944 => ("switch_operator", Outcome::Allow),
        945..=997 => ("logoff", Outcome::Allow),
        _ => ("lockout", Outcome::Deny),
    };
    let mut b = EventBody::new(gateway, tier, action, outcome);
    b.seq = seq;
    b.ts = format_ts(ts_ms);
    b.user = user((h >> 10) % USERS);
    b.operator = b.user.clone();
    b.device = device((h >> 24) % DEVICES);
    b.session = format!("s-{:x}", h >> 40);
    b.request_id = format!("{gateway}-{seq}");
    b.policy_version = "v12".into();
    match outcome {
        Outcome::Allow => {
            b.factors = vec!["card".into(), "password".into()];
            b.policy_ids = vec![format!("{tier}-desktop")];
        }
        Outcome::Deny => {
            b.factors = vec!["card".into()];
            b.failed.insert("password".into(), "mismatch".into());
            b.reason = "factor_failed".into();
        }
        Outcome::Error => b.reason = "engine_unreachable".into(),
    }
    b
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Stats {
    median: Duration,
    p99: Duration,
    runs: usize,
}

fn stats(mut d: Vec<Duration>) -> Stats {
    d.sort();
    let at = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
        runs: d.len(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print(name: &str, s: &Stats, rows: usize) {
    println!(
        "  {name:<48} median {:>8.2} ms   p99 {:>8.2} ms   ({} runs, {rows} rows last run)",
        ms(s.median),
        ms(s.p99),
        s.runs
    );
}

/// Runs `f` up to `runs` times (stopping early after 60 s), returning timings and the
/// row count of the last run.
async fn measure<F, Fut>(runs: u64, mut f: F) -> (Stats, usize)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times = Vec::new();
    let mut rows = 0;
    let started = Instant::now();
    for r in 0..runs {
        let t = Instant::now();
        rows = f(r).await;
        times.push(t.elapsed());
        if started.elapsed() > Duration::from_secs(60) && times.len() >= 5 {
            break;
        }
    }
    (stats(times), rows)
}

async fn fill(audit: &AuditStore, total: u64) {
    let status = audit.gateways().await.expect("gateways");
    let stored = |g: &str| {
        status
            .iter()
            .find(|s| s.gateway == g)
            .map_or(0, |s| s.stored_through)
    };
    let g = GATEWAYS.len() as u64;
    // Each gateway holds events i ≡ its index (mod 8), seq = i / 8 + 1.
    let done = GATEWAYS.iter().map(|(n, _)| stored(n)).min().unwrap_or(0);
    let first = (done * g).min(total);
    if first >= total {
        println!("audit store already holds the {total} events; no fill needed");
        return;
    }
    let mut prev: Vec<String> = Vec::with_capacity(GATEWAYS.len());
    for (name, _) in GATEWAYS {
        prev.push(if done == 0 {
            GENESIS_HASH.to_string()
        } else {
            audit
                .event(name, done)
                .await
                .expect("read")
                .expect("resume point stored")
                .hash
        });
    }
    println!(
        "filling the audit store: events {first}..{total} (batches of {FILL_BATCH} through ingest)"
    );
    // Generation (hashing, JSON) on its own thread, ingest on the runtime.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Record>>(4);
    let generator = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(FILL_BATCH);
        for i in first..total {
            let k = (i % g) as usize;
            let (name, tier) = GATEWAYS[k];
            let seq = i / g + 1;
            let ts = START_MS + (i as i128 * YEAR_MS as i128 / total.max(1) as i128) as i64;
            let e = body(i, ts, name, tier, seq).seal(&prev[k]);
            prev[k].clone_from(&e.hash);
            batch.push(Record {
                gateway: name.to_string(),
                seq,
                json: e.to_json(),
            });
            if batch.len() == FILL_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(FILL_BATCH));
                if tx.blocking_send(full).is_err() {
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
    });
    let started = Instant::now();
    let mut done_events = 0u64;
    let mut last_print = Instant::now();
    while let Some(batch) = rx.recv().await {
        done_events += batch.len() as u64;
        audit.ingest(batch).await.expect("fill ingest");
        if last_print.elapsed() > Duration::from_secs(15) {
            let rate = done_events as f64 / started.elapsed().as_secs_f64();
            println!(
                "  {:>10} / {} events, {:.0} events/s, {:.0} s",
                first + done_events,
                total,
                rate,
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    generator.join().expect("generator");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "filled {done_events} events in {secs:.0} s ({:.0} events/s, generation and ingest overlapped)",
        done_events as f64 / secs
    );
}

fn main() {
    let total = env_u64("SEKISHO_BENCH_EVENTS", 10_000_000);
    let runs = env_u64("SEKISHO_BENCH_RUNS", 50);
    let catchup = env_u64("SEKISHO_BENCH_INGEST", 200_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = std::env::var("SEKISHO_BENCH_DB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| tmp.path().join("audit.db"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = format!("sqlite://{}", path.display());
        let audit = AuditStore::open(&url, "bench").await.expect("store");
        println!("audit store: {} (SQLite)", path.display());
        fill(&audit, total).await;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        let count = audit.count(&Filter::default()).await.expect("count");
        println!(
            "{count} events stored, database file {:.2} GiB; COUNT(*) took {:.0} ms",
            size as f64 / (1u64 << 30) as f64,
            ms(t.elapsed())
        );
        let span = YEAR_MS;
        let when = |r: u64, width: i64| START_MS + (mix(r ^ 0xABCD) % (span - width) as u64) as i64;

        println!("query latency:");
        let (s, n) = measure(runs, |r| {
            let audit = audit.clone();
            async move {
                let f = Filter {
                    user: Some(user(mix(r) % USERS)),
                    ..Filter::default()
                };
                audit.tail(&f, None, 100).await.expect("user").len()
            }
        })
        .await;
        print("--user U, last 100 events", &s, n);

        let week = 7 * 86_400_000;
        let (s, n) = measure(runs, |r| {
            let audit = audit.clone();
            async move {
                let since = when(r, week);
                let f = Filter {
                    device: Some(device(mix(r + 7) % DEVICES)),
                    since_ms: Some(since),
                    until_ms: Some(since + week),
                    ..Filter::default()
                };
                let page = Page {
                    after: None,
                    limit: 1000,
                };
                audit.query(&f, &page).await.expect("device").len()
            }
        })
        .await;
        print("--device D --since T --until T+7d (limit 1000)", &s, n);

        let (s, n) = measure(runs, |r| {
            let audit = audit.clone();
            async move {
                let f = Filter {
                    action: Some("logon".into()),
                    outcome: Some(Outcome::Deny),
                    since_ms: Some(when(r, 86_400_000)),
                    ..Filter::default()
                };
                audit.query(&f, &Page::default()).await.expect("action").len()
            }
        })
        .await;
        print("--action logon --outcome deny --since T (100)", &s, n);

        let (s, n) = measure(runs, |r| {
            let audit = audit.clone();
            async move {
                let f = Filter {
                    action: Some("lockout".into()),
                    outcome: Some(Outcome::Deny),
                    ..Filter::default()
                };
                let page = Page {
                    after: None,
                    limit: 100 + r as usize % 2,
                };
                audit.query(&f, &page).await.expect("lockouts").len()
            }
        })
        .await;
        print("--action lockout --outcome deny, first page (100)", &s, n);

        let (s, n) = measure(runs, |_| {
            let audit = audit.clone();
            async move {
                audit
                    .query(&Filter::default(), &Page::default())
                    .await
                    .expect("first page")
                    .len()
            }
        })
        .await;
        print("unfiltered, first page (100)", &s, n);

        let (s, n) = measure(runs, |_| {
            let audit = audit.clone();
            async move { audit.last_allowed("logon").await.expect("last").len() }
        })
        .await;
        print("last_allowed(\"logon\") (dormant report)", &s, n);

        // Ingest: a gateway catching up on a backlog. First one transaction per batch
        // of 500, then as `AuditSink.Ship` stores a stream: batches gathered into
        // transactions of GROUP_RECORDS (5,000).
        for per_tx in [500usize, sekisho_policy_engine::grpc::audit::GROUP_RECORDS] {
            let name = format!("catchup{per_tx}-{}", chrono::Utc::now().timestamp_millis());
            let mut prev = GENESIS_HASH.to_string();
            let records: Vec<Record> = (0..catchup)
                .map(|k| {
                    // A backlog of recent events: after the year, 100 ms apart.
                    let ts = START_MS + YEAR_MS + k as i64 * 100;
                    let e = body(k, ts, &name, "lgwan", k + 1).seal(&prev);
                    prev.clone_from(&e.hash);
                    Record {
                        gateway: name.clone(),
                        seq: k + 1,
                        json: e.to_json(),
                    }
                })
                .collect();
            let mut tx_times = Vec::new();
            let t = Instant::now();
            let mut acked = 0;
            for chunk in records.chunks(per_tx) {
                let b = Instant::now();
                let out = audit.ingest(chunk.to_vec()).await.expect("ingest");
                tx_times.push(b.elapsed());
                acked = out.stored_through[&name];
            }
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(acked, catchup);
            let s = stats(tx_times);
            println!(
                "ingest {catchup} events (batches of 500, {per_tx} per transaction) into the {count}-event store: \
                 {secs:.2} s = {:.0} events/s (per transaction: median {:.1} ms, p99 {:.1} ms)",
                catchup as f64 / secs,
                ms(s.median),
                ms(s.p99)
            );
            let t = Instant::now();
            let again = audit.ingest(records[..500].to_vec()).await.expect("replay");
            println!(
                "  re-sent batch of 500 (all stored before): {:.1} ms, inserted {}",
                ms(t.elapsed()),
                again.inserted
            );
        }

        let t = Instant::now();
        let report = audit.verify_gateway("lgwan-gw-1").await.expect("verify");
        let secs = t.elapsed().as_secs_f64();
        assert!(report.broken.is_none(), "{:?}", report.broken);
        println!(
            "verify lgwan-gw-1: {} events in {secs:.1} s = {:.0} events/s",
            report.events,
            report.events as f64 / secs
        );
        audit.close().await;

        // The decision log's writer alone: how many decisions a second it can store
        // (a fresh store; decisions queued as fast as they come, then flushed).
        let log_dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", log_dir.path().join("decisions.db").display());
        let store = AuditStore::open(&url, "bench").await.expect("store");
        let n = env_u64("SEKISHO_BENCH_DECISIONS", 200_000);
        let (log, writer) = DecisionLog::start(store.clone(), 1.0, n as usize);
        let t = Instant::now();
        for k in 0..n {
            log.record(Decision {
                ts_ms: START_MS + k as i64,
                request_id: format!("gw-{k}"),
                request: DecisionRequest {
                    user: user(mix(k) % USERS),
                    device: device(mix(k + 1) % DEVICES),
                    action: Action::Logon,
                    via: Via::Console,
                    upstream: FactorSet::default(),
                    hour: 9,
                },
                decided: Decided::Authorize {
                    factors: FactorSet::parse_names(["card", "password"]).expect("factors"),
                    outcome: Ok(AuthorizeOutcome {
                        allowed: true,
                        policy_ids: vec!["lgwan-desktop".into()],
                        policy_version: "v12".into(),
                        errors: Vec::new(),
                    }),
                },
            });
        }
        let queued = t.elapsed();
        writer.flush_and_stop(Duration::from_secs(600)).await;
        let secs = t.elapsed().as_secs_f64();
        let stored = store.decision_count().await.expect("count");
        println!(
            "decision log: {n} decisions queued in {:.0} ms ({:.2} µs each), stored in {secs:.1} s = {:.0} decisions/s ({stored} stored, {} dropped)",
            ms(queued),
            queued.as_secs_f64() * 1e6 / n as f64,
            stored as f64 / secs,
            log.dropped()
        );
        store.close().await;
    });
}
