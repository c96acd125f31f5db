//! Audit forwarding catch-up after an outage: a gateway journal holding a backlog of
//! N events (what piles up while the engine is down) is shipped to a real engine
//! (`server::start`, `AuditSink.Ship`) over mutual TLS on loopback, and timed until
//! the engine has confirmed all N (`Forwarder::forwarded_through() >= N`).
//!
//!   cargo bench -p sekisho-gateway --bench forward_catchup
//!
//! Every run starts from scratch: a fresh gateway database (SQLite in a temp dir,
//! WAL, synchronous = FULL), filled with N logon events by `SEKISHO_BENCH_TASKS`
//! concurrent appenders (the fill rate is printed too), and a fresh engine store:
//! - SQLite in the temp dir (`EngineConfig::self_contained`);
//! - PostgreSQL as well when `SEKISHO_BENCH_PG_URL` is set (a new tenant per run;
//!   the rows are left in that database).
//!
//! The engine channel is built as the gateway builds it from the development PKI
//! (CA, gateway certificate and key) and connected before the clock starts; the
//! clock runs from `Forwarder::spawn` until the engine's acknowledgement covers N.
//! Each run ends with the engine's stored count checked against N.
//!
//! Forwarder settings: the defaults (500 records per batch, 5,000 per stream) and
//! 2,000 / 20,000.
//!
//! Environment: `SEKISHO_BENCH_EVENTS` (default 100,000) the backlog;
//! `SEKISHO_BENCH_PG_EVENTS` (default: the same) the backlog on PostgreSQL;
//! `SEKISHO_BENCH_RUNS` (default 3) runs per backend and settings, the median
//! printed; `SEKISHO_BENCH_TASKS` (default 256) appenders filling the journal.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sekisho_gateway::db::Db;
use sekisho_gateway::forward::{ForwardSettings, Forwarder};
use sekisho_gateway::journal::{self, Journal};
use sekisho_gateway::tls::{self, ClientTls};
use sekisho_policy_engine::audit::event::EventBody;
use sekisho_policy_engine::audit::store::AuditStore;
use sekisho_policy_engine::audit::{Filter, Outcome};
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::server;
use sekisho_policy_engine::Tier;
use sekisho_testkit::process_cpu_time;

const GATEWAY: &str = "internet-gateway-bench";
/// Connect and per-call timeout of the engine channel (a 20,000-record stream on a
/// slow store must not be cut off).
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a catch-up may take before the run is declared stuck.
const CATCHUP_LIMIT: Duration = Duration::from_secs(600);

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(d)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// utime + stime of this process (engine, gateway and load in one), from /proc.
/// A realistic allowed logon: card + password, a session and a request id.
fn event(task: u64, i: u64) -> EventBody {
    let mut b = EventBody::new("", "", "logon", Outcome::Allow);
    b.device = format!("net-desk-{:03}", task % 200);
    b.user = format!("b{:05}", (task * 7919 + i) % 16_000);
    b.operator = b.user.clone();
    b.factors = vec!["card".into(), "password".into()];
    b.policy_version = "v1".into();
    b.policy_ids = vec!["internet-desktop-card-password-logon".into()];
    b.session = format!("{:032x}", u128::from(task) << 64 | u128::from(i));
    b.request_id = format!("gw-bench-{task}-{i}");
    b
}

/// Appends `n` events from `tasks` concurrent appenders; returns the seconds taken.
async fn fill(journal: &Journal, n: u64, tasks: u64) -> f64 {
    let start = Instant::now();
    let mut handles = Vec::with_capacity(tasks as usize);
    for t in 0..tasks {
        let count = n / tasks + u64::from(t < n % tasks);
        let j = journal.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..count {
                j.append(event(t, i)).await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("appender");
    }
    journal.flush().await.expect("flush");
    start.elapsed().as_secs_f64()
}

struct Backend {
    label: &'static str,
    /// `None`: SQLite in the run's directory.
    pg_url: Option<String>,
    events: u64,
}

struct RunResult {
    fill_secs: f64,
    catchup_secs: f64,
    cpu_secs: f64,
}

async fn run_once(
    backend: &Backend,
    root: &Path,
    run: usize,
    settings: ForwardSettings,
    tasks: u64,
) -> RunResult {
    let n = backend.events;
    let dir = root.join(format!("{}-{}-{run}", backend.label, settings.batch_size));
    std::fs::create_dir_all(&dir).expect("run dir");

    // The engine, on a fresh store; one development PKI for every run.
    let mut config = EngineConfig::self_contained(&dir);
    config.tls.generate_dir = root.join("tls");
    if let Some(url) = &backend.pg_url {
        config.store = url.clone();
        config.tenant = format!(
            "bench-catchup-{}-{}-{}-{run}",
            std::process::id(),
            now_unix(),
            settings.batch_size
        );
    }
    let engine = server::start(&config).await.expect("engine start");
    let pki = engine.pki.clone().expect("development PKI");
    let engine_url = format!("https://127.0.0.1:{}", engine.addr.port());

    // The gateway's journal, holding the backlog.
    let gw_url = format!("sqlite://{}", dir.join("gateway.db").display());
    let db = Db::open(&gw_url, "bench", Tier::Internet)
        .await
        .expect("gateway db");
    let journal = Journal::start(db.clone(), GATEWAY.into())
        .await
        .expect("journal");
    let fill_secs = fill(&journal, n, tasks).await;
    assert_eq!(*journal.subscribe().borrow(), n, "journal head after fill");
    assert_eq!(journal::acked_seq(&db, GATEWAY).await.expect("acked"), 0);

    // The engine comes back: the gateway's channel, as `server.rs` builds it from
    // the development PKI.
    let engine_tls = ClientTls {
        ca: pki.ca(),
        cert: pki.gateway_cert(),
        key: pki.gateway_key(),
    };
    let channel = tls::connect(&engine_url, &engine_tls, Some("localhost"), RPC_TIMEOUT)
        .await
        .expect("engine channel");

    let cpu0 = process_cpu_time();
    let start = Instant::now();
    let forwarder = Forwarder::spawn(db.clone(), &journal, channel, settings);
    let mut through = forwarder.forwarded_through();
    tokio::time::timeout(CATCHUP_LIMIT, through.wait_for(|s| *s >= n))
        .await
        .expect("caught up in time")
        .expect("forwarder alive");
    let catchup_secs = start.elapsed().as_secs_f64();
    let cpu_secs = (process_cpu_time() - cpu0).as_secs_f64();

    forwarder.stop().await;
    assert_eq!(journal::acked_seq(&db, GATEWAY).await.expect("acked"), n);
    journal.close().await;
    db.close().await;
    engine.shutdown().await.expect("engine shutdown");

    let audit = AuditStore::open(&config.store, &config.tenant)
        .await
        .expect("engine audit store");
    let stored = audit.count(&Filter::default()).await.expect("count");
    audit.close().await;
    assert_eq!(stored, n, "events stored by the engine");

    RunResult {
        fill_secs,
        catchup_secs,
        cpu_secs,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

async fn bench(backend: &Backend, root: &Path, runs: usize, tasks: u64) {
    let all = [
        ForwardSettings::default(),
        ForwardSettings {
            batch_size: 2000,
            stream_records: 20_000,
            ..ForwardSettings::default()
        },
    ];
    for settings in all {
        let label = format!(
            "{} batch {} stream {}",
            backend.label, settings.batch_size, settings.stream_records
        );
        let mut fills = Vec::new();
        let mut catchups = Vec::new();
        for run in 0..runs {
            let r = run_once(backend, root, run, settings, tasks).await;
            let n = backend.events as f64;
            println!(
                "{label:<40} run {run}  fill {:>8.0} events/s ({:>6.2} s)  catch-up {:>8.0} events/s ({:>6.2} s, cpu {:>5.2} s = {:.1} cores)  engine stored {} ✓",
                n / r.fill_secs,
                r.fill_secs,
                n / r.catchup_secs,
                r.catchup_secs,
                r.cpu_secs,
                r.cpu_secs / r.catchup_secs,
                backend.events,
            );
            fills.push(n / r.fill_secs);
            catchups.push(n / r.catchup_secs);
        }
        println!(
            "{label:<40} median of {runs}: fill {:>8.0} events/s  catch-up {:>8.0} events/s  (N = {})",
            median(fills),
            median(catchups),
            backend.events,
        );
    }
}

fn main() {
    let events = env_num("SEKISHO_BENCH_EVENTS", 100_000).max(1);
    let pg_events = env_num("SEKISHO_BENCH_PG_EVENTS", events).max(1);
    let runs = env_num("SEKISHO_BENCH_RUNS", 3).max(1) as usize;
    let tasks = env_num("SEKISHO_BENCH_TASKS", 256).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "audit forwarding catch-up: gateway journal (SQLite) → engine AuditSink over mutual TLS on loopback; fill by {tasks} appenders; {runs} runs each"
        );
        let root = tempfile::tempdir().expect("temp dir");
        let sqlite = Backend {
            label: "engine sqlite",
            pg_url: None,
            events,
        };
        bench(&sqlite, root.path(), runs, tasks).await;
        if let Ok(pg) = std::env::var("SEKISHO_BENCH_PG_URL") {
            let postgres = Backend {
                label: "engine postgres",
                pg_url: Some(pg),
                events: pg_events,
            };
            bench(&postgres, root.path(), runs, tasks).await;
        } else {
            println!("(SEKISHO_BENCH_PG_URL not set: PostgreSQL skipped)");
        }
    });
}
