//! gRPC load generator: a real engine (`server::start`: SQLite store, generated PKI,
//! mutual TLS on 127.0.0.1) loaded with the big city (1,000 policies, 100,000 users,
//! 1,700 devices), called with the *gateway* client certificate.
//!
//!   cargo bench -p sekisho-policy-engine --bench grpc_load
//!
//! Client and server run in this one process (separate tokio runtimes) and share the
//! machine's cores. `SEKISHO_BENCH_CALLS` (default 20000) sets the one-at-a-time calls,
//! `SEKISHO_BENCH_SECS` (default 10) the length of each 64-in-flight run.
//! `SEKISHO_BENCH_ONLY=plan|authorize` measures only one kind of call (for profiling).
//! `SEKISHO_BENCH_DECISION_SAMPLE` sets `audit.decision_sample` (default 1, the
//! engine's default: every decision is written to the decision log).
//!
//! Order: Plan's first pass (each attribute class's tables computed as its first
//! request arrives; a class's first Authorize costs the same), then Plan and
//! Authorize with the tables cached (the gateway flow).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::entities::EntityDeletion;
use sekisho_policy_engine::store::Store;
use sekisho_policy_engine::{server, DecisionRequest, FactorSet};
use sekisho_proto::v1 as pb;
use sekisho_testkit::{process_cpu_time, Summary};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

const IN_FLIGHT: usize = 64;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Call {
    Plan,
    Authorize,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Plan => "Plan",
            Call::Authorize => "Authorize",
        }
    }
}

fn context(r: &DecisionRequest) -> Option<pb::DecisionContext> {
    Some(pb::DecisionContext {
        via: r.via.name().into(),
        upstream: r.upstream.names().into_iter().map(String::from).collect(),
        hour: Some(u32::from(r.hour)),
    })
}

/// Wire requests, built once so the client measures the call, not the building.
struct Wire {
    plans: Vec<pb::PlanRequest>,
    authorizes: Vec<pb::AuthorizeRequest>,
}

fn wire(requests: &[(DecisionRequest, FactorSet)]) -> Wire {
    Wire {
        plans: requests
            .iter()
            .map(|(r, _)| pb::PlanRequest {
                user: r.user.clone(),
                device: r.device.clone(),
                action: r.action.name().into(),
                context: context(r),
                emergency_otp_active: false,
                request_id: String::new(),
                ..Default::default()
            })
            .collect(),
        authorizes: requests
            .iter()
            .map(|(r, f)| pb::AuthorizeRequest {
                user: r.user.clone(),
                device: r.device.clone(),
                action: r.action.name().into(),
                factors: f.names().into_iter().map(String::from).collect(),
                context: context(r),
                request_id: String::new(),
                gateway_tier: String::new(),
            })
            .collect(),
    }
}

async fn call(
    client: &mut pb::policy_decision_client::PolicyDecisionClient<Channel>,
    wire: &Wire,
    what: Call,
    i: usize,
) {
    match what {
        Call::Plan => {
            let r = wire.plans[i % wire.plans.len()].clone();
            client.plan(r).await.expect("plan");
        }
        Call::Authorize => {
            let r = wire.authorizes[i % wire.authorizes.len()].clone();
            client.authorize(r).await.expect("authorize");
        }
    }
}

fn print_row(name: &str, s: &Summary, extra: &str) {
    println!(
        "{name:<52} {:>7} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1}  {extra}",
        s.n,
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.p999),
        us(s.max)
    );
}

async fn sequential(
    client: &mut pb::policy_decision_client::PolicyDecisionClient<Channel>,
    wire: &Arc<Wire>,
    what: Call,
    calls: usize,
) -> Summary {
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        call(client, wire, what, i).await;
        samples.push(t.elapsed());
    }
    Summary::of(&mut samples)
}

/// 64 tasks, each with one call outstanding, spread over `channels` connections.
async fn concurrent(
    channels: &[Channel],
    wire: &Arc<Wire>,
    what: Call,
    secs: f64,
) -> (Summary, f64, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let cpu0 = process_cpu_time();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..IN_FLIGHT {
        let mut client = pb::policy_decision_client::PolicyDecisionClient::new(
            channels[t % channels.len()].clone(),
        );
        let wire = wire.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(1 << 16);
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                call(&mut client, &wire, what, i).await;
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu_time() - cpu0;
    let n = all.len();
    (
        Summary::of(&mut all),
        n as f64 / elapsed.as_secs_f64(),
        cpu / n as u32,
    )
}

async fn connect(
    files: &sekisho_policy_engine::pki::PkiFiles,
    addr: std::net::SocketAddr,
) -> Channel {
    let read = |p: std::path::PathBuf| {
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(files.ca())))
        .identity(Identity::from_pem(
            read(files.gateway_cert()),
            read(files.gateway_key()),
        ))
        .domain_name("127.0.0.1");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to the engine")
}

fn main() {
    server::install_crypto_provider();
    let env = |k: &str, d: f64| -> f64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let calls = env("SEKISHO_BENCH_CALLS", 20_000.0) as usize;
    let secs = env("SEKISHO_BENCH_SECS", 10.0);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = EngineConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        store: format!("sqlite://{}", dir.path().join("engine.db").display()),
        poll_interval_secs: 3600,
        ..EngineConfig::default()
    };
    config.tls.generate_dir = dir.path().join("tls");
    config.audit.decision_sample = env("SEKISHO_BENCH_DECISION_SAMPLE", 1.0);
    println!(
        "decision log: audit.decision_sample = {}",
        config.audit.decision_sample
    );

    // The engine gets its own runtime (its default: one worker per core).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("engine")
        .build()
        .unwrap();

    // Fill the store before the engine starts, as a city's would be.
    let requests;
    {
        let batch = city_batch();
        requests = requests_for(&batch);
        let sources = big_sources();
        server_rt.block_on(async {
            let store = Store::open(&config.store, &config.tenant).await.expect("store");
            let t = Instant::now();
            store.publish(&sources, "benchmark city", 1_000).await.expect("publish");
            let publish = t.elapsed();
            let t = Instant::now();
            store
                .apply_entities(&batch, &EntityDeletion::default())
                .await
                .expect("entities");
            println!(
                "store (SQLite): publish 1,000 policies {:.0} ms; apply_entities 100,000 users + 505 groups + 1,700 devices {:.0} ms",
                publish.as_secs_f64() * 1e3,
                t.elapsed().as_secs_f64() * 1e3
            );
            store.close().await;
        });
    }
    unsafe {
        malloc_trim(0);
    }
    let (rss_before, _) = memory_kib();
    let t = Instant::now();
    let engine = server_rt
        .block_on(server::start(&config))
        .expect("engine starts");
    let startup = t.elapsed();
    unsafe {
        malloc_trim(0);
    }
    let (rss_after, hwm) = memory_kib();
    let users = engine.state.engine.with_directory(|d| d.user_count());
    assert_eq!(users, 100_000);
    assert_eq!(engine.state.engine.policies().policies.len(), 1_000);
    println!(
        "server::start (open store, load 100k users, compile 1,000 policies, TLS): {:.0} ms",
        startup.as_secs_f64() * 1e3
    );
    println!(
        "process VmRSS: {:.1} MiB before start (client data, runtimes), {:.1} MiB after (engine loaded: +{:.1} MiB); VmHWM {:.1} MiB",
        mib(rss_before),
        mib(rss_after),
        mib(rss_after.saturating_sub(rss_before)),
        mib(hwm)
    );
    let pki = engine.pki.clone().expect("generated PKI");
    let addr = engine.addr;
    let wire = Arc::new(wire(&requests));

    // One call at a time: a single-threaded client. 64 in flight: a multi-threaded
    // client (one worker per core, like the engine).
    let one_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let many_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("client")
        .build()
        .unwrap();
    let one = one_rt.block_on(connect(&pki, addr));
    let mut client = pb::policy_decision_client::PolicyDecisionClient::new(one);
    println!();
    println!(
        "{:<52} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "gRPC over mTLS on loopback (µs per call)", "calls", "p50", "p90", "p99", "p99.9", "max"
    );

    // Phase 2: Plan, first pass (plan tables computed as requests arrive), then the
    // gateway flow with tables cached.
    one_rt.block_on(async {
        let cold = sequential(&mut client, &wire, Call::Plan, wire.plans.len()).await;
        print_row("Plan, 1 at a time, first pass (tables cold)", &cold, "");
        for what in kinds() {
            let s = sequential(&mut client, &wire, what, calls).await;
            print_row(
                &format!("{}, 1 at a time, plan cached", what.name()),
                &s,
                "",
            );
        }
    });
    for what in kinds() {
        many_rt.block_on(in_flight(&pki, addr, &wire, what, secs, ", plan cached"));
    }
    drop(client);
    drop(one_rt);
    drop(many_rt);
    let (rss_end, hwm_end) = memory_kib();
    println!(
        "process VmRSS at the end: {:.1} MiB; VmHWM {:.1} MiB; plans that fell back: {}",
        mib(rss_end),
        mib(hwm_end),
        engine.state.engine.plan_fallbacks()
    );
    let dropped = engine.state.decisions.dropped();
    let store = engine.state.store.audit();
    server_rt.block_on(engine.shutdown()).expect("shutdown");
    let logged = server_rt.block_on(store.decision_count()).unwrap_or(0);
    println!("decision log: {logged} decisions written, {dropped} dropped (queue full)");
}

/// 64 calls in flight over 1 and then 4 channels, after a 2 s warm-up of each.
async fn in_flight(
    pki: &sekisho_policy_engine::pki::PkiFiles,
    addr: std::net::SocketAddr,
    wire: &Arc<Wire>,
    what: Call,
    secs: f64,
    note: &str,
) {
    for channels in [1usize, 4] {
        let mut chans = Vec::new();
        for _ in 0..channels {
            chans.push(connect(pki, addr).await);
        }
        let _ = concurrent(&chans, wire, what, 2.0).await;
        let (s, rate, cpu) = concurrent(&chans, wire, what, secs).await;
        print_row(
            &format!(
                "{}, {IN_FLIGHT} in flight, {channels} ch{note}",
                what.name()
            ),
            &s,
            &format!(
                "{rate:.0} calls/s, {:.1} µs CPU/call (client+server)",
                us(cpu)
            ),
        );
    }
}

/// The calls to measure: both, or only one with `SEKISHO_BENCH_ONLY=plan|authorize`
/// (for profiling one of them).
fn kinds() -> Vec<Call> {
    match std::env::var("SEKISHO_BENCH_ONLY").as_deref() {
        Ok("plan") => vec![Call::Plan],
        Ok("authorize") => vec![Call::Authorize],
        _ => vec![Call::Plan, Call::Authorize],
    }
}

fn requests_for(
    batch: &sekisho_policy_engine::entities::EntityBatch,
) -> Vec<(DecisionRequest, FactorSet)> {
    requests(batch, REQUESTS)
}
