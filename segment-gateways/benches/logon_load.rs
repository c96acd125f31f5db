//! Logon load generator: a real engine and a real `internet` gateway, driven with
//! card + TOTP logons (Begin, then Complete) over mutual TLS on loopback.
//!
//!   cargo bench -p sekisho-gateway --bench logon_load
//!
//! Setup:
//! - the engine (`server::start`, SQLite in a temp dir, generated dev PKI) with the
//!   reference policies plus `bench.cedar` (card + TOTP permits an internet logon; the
//!   reference policies have no such set) and the example city;
//! - `SEKISHO_BENCH_USERS` (default 16,000) generated users `b00001…`, in no group,
//!   and 200 internet desktops `bench-pc-001…` with card readers, upserted into the
//!   engine (PolicyAdmin.UpsertEntities) and registered at the gateway
//!   (GatewayAdmin.RegisterDevice), next to the city's net-desk-01 and net-desk-02;
//! - every generated user enrolled at the gateway with a card (P-256 key, certificate
//!   from a bench card CA configured as `cards.ca`) and TOTP (GatewayAdmin.EnrollTotp);
//! - the gateway on SQLite (durable: WAL, synchronous = FULL, the sqlx default), with
//!   the rate limit lifted.
//!
//! A logon: Begin(user) → sign the `card` nonce with the user's card key (ECDSA P-256,
//! done by the load generator, as the endpoint would) → Complete(card proof, TOTP
//! code). The gateway calls the engine's Plan (in Begin) and Authorize (in Complete).
//! A TOTP code is accepted once per user and step, in increasing steps, so users are
//! taken round-robin and each one's last used step is tracked: the previous step's
//! code (early in a step), else the current one's, else the next one's, all of which
//! the ±1 window accepts; a user who used them all is skipped (`common::Pool`).
//!
//! Engine, gateway and load generator share this process and the machine's cores:
//! engine and gateway on one tokio runtime, the clients on others.
//!
//! Environment: `SEKISHO_BENCH_SECS` (default 10) measured seconds of the in-flight
//! run, after a 2 s warm-up; `SEKISHO_BENCH_SEQ` (default 2,000; 0 skips them) one-at-a-time logons;
//! `SEKISHO_BENCH_USERS`; `SEKISHO_BENCH_IN_FLIGHT` (default 16,
//! the load DESIGN.md §5's target is judged at in BENCHMARKS.md: with more in flight
//! the rate grows little and the latency by Little's law);
//! `SEKISHO_BENCH_CHANNELS` (default 16, one device each);
//! `SEKISHO_BENCH_DECISION_SAMPLE` (default 1, the engine's default: every decision
//! in the decision log; 0 turns the log off); `SEKISHO_BENCH_FORWARD=0` keeps the
//! journal in the gateway (`audit.forward = false`) instead of shipping it to the
//! engine's audit store; `SEKISHO_BENCH_PARTS=0`
//! skips the per-part timings at the end; `SEKISHO_BENCH_RATES` (e.g. `1500,2000`)
//! adds an open-loop run at each offered rate (logons started on a fixed schedule,
//! latency counted from when each was due), after the in-flight run
//! (`SEKISHO_BENCH_IN_FLIGHT=0` skips that one).

mod common;

/// The allocator the `sekisho` binary runs the engine and gateway with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    card_key_pair, connect, drive, header, row, runtimes, BenchUser, CardIssuer, LoadSettings,
    Pool, Summary,
};
use sekisho_gateway::config::GatewayConfig;
use sekisho_gateway::decide::Subject;
use sekisho_gateway::effects::Effect;
use sekisho_gateway::session;
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::entities::{DeviceRecord, EntityBatch, UserRecord};
use sekisho_policy_engine::pki::PkiFiles;
use sekisho_policy_engine::{Action, Capabilities, DeviceKind, FactorSet, Tier, Via};
use sekisho_proto::v1 as pb;
use sekisho_testkit::process_cpu_time;

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
const ENTITIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../policies/examples/entities.json"
);

const BENCH_POLICY: &str = r#"// Benchmark only: an IC card plus a TOTP code logs on to any internet-tier device.
@id("bench-card-totp")
permit (
  principal,
  action == Sekisho::Action::"logon",
  resource in Sekisho::Tier::"internet"
)
when { context.factors.containsAll(["card", "totp"]) };
"#;

const BENCH_DEVICES: usize = 200;
const CITY_DEVICES: [&str; 2] = ["net-desk-01", "net-desk-02"];

// -----------------------------------------------------------------------------
// Setup

fn copy_policies(to: &Path) {
    std::fs::create_dir_all(to).expect("policy dir");
    for e in std::fs::read_dir(POLICIES).expect("reference policies") {
        let e = e.expect("entry");
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy policy");
        }
    }
    std::fs::write(to.join("bench.cedar"), BENCH_POLICY).expect("bench policy");
}

fn bench_device_id(i: usize) -> String {
    format!("bench-pc-{:03}", i + 1)
}

fn generated_entities(users: usize) -> EntityBatch {
    let enrolled = FactorSet::parse_names(["card", "totp"]).unwrap();
    let caps = Capabilities::parse_names(["card"]).unwrap();
    EntityBatch {
        users: (0..users)
            .map(|i| UserRecord {
                id: format!("b{:05}", i + 1),
                department: "bench".into(),
                role: "staff".into(),
                enrolled,
                groups: Vec::new(),
            })
            .collect(),
        groups: Vec::new(),
        devices: (0..BENCH_DEVICES)
            .map(|i| DeviceRecord {
                id: bench_device_id(i),
                tier: Tier::Internet,
                kind: DeviceKind::Desktop,
                capabilities: caps,
                location: "bench floor".into(),
            })
            .collect(),
    }
}

fn admin_tls(pki: &PkiFiles) -> ClientTls {
    ClientTls {
        ca: pki.ca(),
        cert: pki.admin_cert(),
        key: pki.admin_key(),
    }
}

/// Upserts the generated users and devices into the engine, in chunks.
async fn upsert(engine_url: &str, pki: &PkiFiles, batch: &EntityBatch) {
    let mut admin =
        pb::policy_admin_client::PolicyAdminClient::new(connect(engine_url, &admin_tls(pki)).await);
    for chunk in batch.users.chunks(5_000) {
        admin
            .upsert_entities(sekisho_policy_engine::grpc::batch_to_proto(&EntityBatch {
                users: chunk.to_vec(),
                ..Default::default()
            }))
            .await
            .expect("upsert users");
    }
    admin
        .upsert_entities(sekisho_policy_engine::grpc::batch_to_proto(&EntityBatch {
            devices: batch.devices.clone(),
            ..Default::default()
        }))
        .await
        .expect("upsert devices");
}

/// Registers every device and enrolls every user (card, then TOTP), 32 calls at a
/// time. Returns the TOTP secrets in user order.
async fn enroll(
    gateway_url: &str,
    pki: &PkiFiles,
    devices: &[String],
    cards: &[(String, Vec<u8>)],
) -> Vec<Vec<u8>> {
    let admin = pb::gateway_admin_client::GatewayAdminClient::new(
        connect(gateway_url, &admin_tls(pki)).await,
    );
    for id in devices {
        admin
            .clone()
            .register_device(pb::RegisterDeviceRequest {
                device: Some(pb::Device {
                    id: id.clone(),
                    tier: "internet".into(),
                    kind: "desktop".into(),
                    capabilities: vec!["card".into()],
                    location: "bench".into(),
                }),
                capture_key: Vec::new(),
            })
            .await
            .expect("register device");
    }
    let cards = Arc::new(cards.to_vec());
    let secrets: Arc<Vec<Mutex<Vec<u8>>>> =
        Arc::new((0..cards.len()).map(|_| Mutex::new(Vec::new())).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (mut admin, cards, secrets, next) =
            (admin.clone(), cards.clone(), secrets.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((user, der)) = cards.get(i) else {
                    break;
                };
                admin
                    .enroll_card(pb::EnrollCardRequest {
                        user: user.clone(),
                        certificate: der.clone(),
                    })
                    .await
                    .expect("enroll card");
                let r = admin
                    .enroll_totp(pb::EnrollTotpRequest {
                        user: user.clone(),
                        algorithm: String::new(),
                        digits: 0,
                    })
                    .await
                    .expect("enroll totp")
                    .into_inner();
                *secrets[i].lock().unwrap() = data_encoding::BASE32_NOPAD
                    .decode(r.secret_base32.as_bytes())
                    .expect("base32 secret");
            }
        }));
    }
    for t in tasks {
        t.await.expect("enroll task");
    }
    secrets
        .iter()
        .map(|s| std::mem::take(&mut *s.lock().unwrap()))
        .collect()
}

// -----------------------------------------------------------------------------
// Parts: the gateway's own steps, timed one at a time and the durable writes and
// engine calls with `SEKISHO_BENCH_IN_FLIGHT` in flight

/// `f(0..n)` one at a time: latency summary and the process's CPU time per call
/// (every thread: the caller, the gateway's runtime, SQLite's threads, the engine).
async fn time_n<F, Fut>(n: usize, mut f: F) -> (Summary, String)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    let cpu0 = process_cpu_time();
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        samples.push(t.elapsed());
    }
    let cpu = (process_cpu_time() - cpu0) / n as u32;
    (
        Summary::of(&mut samples),
        format!("{:.0} µs CPU/call", cpu.as_secs_f64() * 1e6),
    )
}

/// `in_flight` tasks running `f(i)` for `secs`: (ops/s, latency summary).
async fn rate_of<F, Fut>(in_flight: usize, secs: f64, f: F) -> (f64, Summary)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                f(i).await;
                s.push(t.elapsed());
            }
            s
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    (rate, Summary::of(&mut all))
}

async fn parts(
    gw: Arc<sekisho_gateway::logon::Gateway>,
    pool: Arc<Pool>,
    devices: Arc<Vec<String>>,
    in_flight: usize,
) {
    const N: usize = 1_000;
    let users = pool.users.len();
    let uid = move |i: usize| format!("b{:05}", (i * 7919) % users + 1);
    let enrolled = FactorSet::parse_names(["card", "totp"]).unwrap();
    // Steps far beyond any real one, so each accept writes a row.
    let step_base = AtomicU64::new(10_000_000_000);
    let step = move || step_base.fetch_add(1, Ordering::Relaxed);
    let step = Arc::new(step);
    let dev = {
        let devices = devices.clone();
        move |i: usize| devices[i % devices.len()].clone()
    };
    // The stored TOTP secret a step is recorded against, read before the timings.
    let mut secrets = HashMap::new();
    for u in &pool.users {
        let cred = gw.store.totp(&u.id).await.unwrap().unwrap();
        secrets.insert(u.id.clone(), cred.sealed);
    }
    let secrets = Arc::new(secrets);

    println!();
    header("Gateway steps, one at a time (ms)");
    let g = &gw;
    let (s, cpu) = time_n(N, |i| {
        let d = dev(i);
        async move {
            g.store.device(&d).await.unwrap().unwrap();
        }
    })
    .await;
    row(
        "store.device (read; Begin and Complete each do one)",
        &s,
        &cpu,
    );
    let (s, cpu) = time_n(N, |i| {
        let u = uid(i);
        async move {
            let (_, m) = g.store.for_logon(&u, false).await.unwrap();
            assert!(m.totp.is_some() && !m.cards.is_empty());
        }
    })
    .await;
    row(
        "store.for_logon (enrollment, cards, TOTP + AES-GCM open; Begin)",
        &s,
        &cpu,
    );
    let (s, cpu) = time_n(N, |i| {
        let (u, d) = (uid(i), dev(i));
        async move {
            let subject = Subject {
                user: &u,
                device: &d,
                action: Action::Logon,
                via: Via::Console,
                upstream: FactorSet::EMPTY,
                request_id: "bench",
            };
            g.decider.plan(&subject, enrolled, false).await.unwrap();
        }
    })
    .await;
    row("engine Plan over mTLS (Begin)", &s, &cpu);
    let (s, cpu) = time_n(N, |i| {
        let (u, d) = (uid(i), dev(i));
        async move {
            let subject = Subject {
                user: &u,
                device: &d,
                action: Action::Logon,
                via: Via::Console,
                upstream: FactorSet::EMPTY,
                request_id: "bench",
            };
            assert!(
                g.decider
                    .authorize(&subject, enrolled)
                    .await
                    .unwrap()
                    .allowed
            );
        }
    })
    .await;
    row("engine Authorize over mTLS (Complete)", &s, &cpu);
    let (st, sc) = (step.clone(), &secrets);
    let (s, cpu) = time_n(N, |i| {
        let (u, d, k) = (uid(i), dev(i), (*st)());
        async move {
            commit_logon(g, sc, &u, &d, k).await;
        }
    })
    .await;
    row(
        "journal.commit: lockout, TOTP step, session, event (durable, Complete)",
        &s,
        &cpu,
    );

    println!();
    header(&format!(
        "Gateway steps, {in_flight} in flight for 5 s (ms)"
    ));
    let (rate, s) = {
        let (gw, st, sc) = (gw.clone(), step.clone(), secrets.clone());
        let dev = dev.clone();
        rate_of(in_flight, 5.0, move |i| {
            let (gw, sc, u, d, k) = (gw.clone(), sc.clone(), uid(i), dev(i), (*st)());
            async move {
                commit_logon(&gw, &sc, &u, &d, k).await;
            }
        })
        .await
    };
    row(
        "journal.commit of a logon (group commit)",
        &s,
        &format!("{rate:.0} logons/s = the store's ceiling"),
    );
    let (rate, s) = {
        let gw = gw.clone();
        let dev = dev.clone();
        rate_of(in_flight, 5.0, move |i| {
            let (gw, u, d) = (gw.clone(), uid(i), dev(i));
            async move {
                let subject = Subject {
                    user: &u,
                    device: &d,
                    action: Action::Logon,
                    via: Via::Console,
                    upstream: FactorSet::EMPTY,
                    request_id: "bench",
                };
                gw.decider.plan(&subject, enrolled, false).await.unwrap();
                assert!(
                    gw.decider
                        .authorize(&subject, enrolled)
                        .await
                        .unwrap()
                        .allowed
                );
            }
        })
        .await
    };
    row(
        "engine Plan + Authorize (the gateway's one channel)",
        &s,
        &format!("{rate:.0} pairs/s"),
    );
    let (rate, s) = {
        let gw = gw.clone();
        let dev = dev.clone();
        rate_of(in_flight, 5.0, move |i| {
            let (gw, u, d) = (gw.clone(), uid(i), dev(i));
            async move {
                gw.store.device(&d).await.unwrap().unwrap();
                gw.store.for_logon(&u, false).await.unwrap();
                gw.store.device(&d).await.unwrap().unwrap();
            }
        })
        .await
    };
    row(
        "the reads of a logon (device twice, for_logon)",
        &s,
        &format!("{rate:.0} sets/s"),
    );
}

/// What a successful card + TOTP logon commits, through the journal's writer.
async fn commit_logon(
    gw: &sekisho_gateway::logon::Gateway,
    secrets: &HashMap<String, String>,
    user: &str,
    device: &str,
    step: u64,
) {
    let effects = vec![
        Effect::TotpStep {
            user: user.into(),
            step,
            secret: secrets[user].clone(),
        },
        Effect::Admit { user: user.into() },
        Effect::OpenSession {
            id: session::new_id().unwrap(),
            device: device.into(),
            user: user.into(),
        },
    ];
    let event = gw.event("logon", sekisho_policy_engine::audit::Outcome::Allow);
    let done = gw
        .journal
        .commit(effects, Box::new(move |_| vec![event]))
        .await
        .unwrap();
    assert_eq!(done.applied.conflict, None);
}

// -----------------------------------------------------------------------------

fn main() {
    sekisho_policy_engine::server::install_crypto_provider();
    let settings = LoadSettings::from_env();
    let do_parts = std::env::var("SEKISHO_BENCH_PARTS").map_or(true, |v| v != "0");

    let dir = tempfile::tempdir().expect("temp dir");
    let policy_dir = dir.path().join("policies");
    copy_policies(&policy_dir);
    std::fs::create_dir_all(dir.path().join("engine")).expect("engine dir");
    let mut engine_config = EngineConfig {
        poll_interval_secs: 3600,
        ..EngineConfig::self_contained(&dir.path().join("engine"))
    };
    engine_config.bootstrap.policies = Some(policy_dir.clone());
    engine_config.bootstrap.entities = Some(PathBuf::from(ENTITIES));
    engine_config.audit.decision_sample = common::env_num("SEKISHO_BENCH_DECISION_SAMPLE", 1.0);

    // Engine and gateway on one runtime (one worker per core); clients on others.
    let (server_rt, client_rt) = runtimes();

    let t = Instant::now();
    let engine = server_rt
        .block_on(sekisho_policy_engine::server::start(&engine_config))
        .expect("engine starts");
    let pki = engine.pki.clone().expect("development PKI");
    let engine_url = format!("https://127.0.0.1:{}", engine.addr.port());

    let batch = generated_entities(settings.users);
    client_rt.block_on(upsert(&engine_url, &pki, &batch));
    let (n_users, n_devices) = engine
        .state
        .engine
        .with_directory(|d| (d.user_count(), d.device_count()));
    println!(
        "engine: {} policies (reference + bench.cedar), {n_users} users, {n_devices} devices; started and loaded in {:.1} s",
        engine.state.engine.policies().policies.len(),
        t.elapsed().as_secs_f64()
    );

    // Cards for every generated user.
    let t = Instant::now();
    let gw_dir = dir.path().join("gateway");
    std::fs::create_dir_all(&gw_dir).unwrap();
    let card_ca = CardIssuer::new(&gw_dir);
    let cards: Vec<(String, Vec<u8>, String)> = batch
        .users
        .iter()
        .map(|u| {
            let (der, key) = card_ca.issue(&u.id);
            (u.id.clone(), der, key)
        })
        .collect();
    println!(
        "issued {} P-256 card certificates in {:.1} s",
        cards.len(),
        t.elapsed().as_secs_f64()
    );

    let mut gw_config =
        GatewayConfig::self_contained(Tier::Internet, &gw_dir, &pki.dir, &engine_url);
    gw_config.cards.ca = vec![card_ca.pem_file.clone()];
    gw_config.rate_limit.per_device_per_minute = 1e9;
    gw_config.rate_limit.burst = 1_000_000;
    let forward = common::env_num("SEKISHO_BENCH_FORWARD", 1.0) != 0.0;
    gw_config.audit.forward = forward;
    let resolved = gw_config.resolve("bench", &gw_dir).expect("gateway config");
    let gateway = server_rt
        .block_on(sekisho_gateway::server::start(resolved))
        .expect("gateway starts");
    let gw_url = format!("https://127.0.0.1:{}", gateway.addr.port());

    let t = Instant::now();
    let mut devices: Vec<String> = CITY_DEVICES.iter().map(|s| s.to_string()).collect();
    devices.extend((0..BENCH_DEVICES).map(bench_device_id));
    let id_ders: Vec<(String, Vec<u8>)> = cards
        .iter()
        .map(|(u, d, _)| (u.clone(), d.clone()))
        .collect();
    let secrets = client_rt.block_on(enroll(&gw_url, &pki, &devices, &id_ders));
    println!(
        "gateway (internet, SQLite): registered {} devices, enrolled {} users (card + TOTP) in {:.1} s; journal {}",
        devices.len(),
        secrets.len(),
        t.elapsed().as_secs_f64(),
        if forward {
            "shipped to the engine's audit store"
        } else {
            "kept in the gateway (SEKISHO_BENCH_FORWARD=0)"
        }
    );
    drop(id_ders);

    let pool = Arc::new(Pool::new(
        cards
            .into_iter()
            .zip(secrets)
            .map(|((id, card_der, card_key_pem), totp_secret)| BenchUser {
                id,
                card_der,
                card_key: card_key_pair(&card_key_pem),
                totp_secret,
            })
            .collect(),
    ));
    println!("engine, gateway and load generator share this process and the machine's cores");
    let (journal, decider) = (&gateway.gateway.journal, &gateway.gateway.decider);
    let (journal0, decide0) = (journal.stats(), decider.stats());
    drive(&client_rt, &gw_url, &pki, &devices, &pool, &settings);
    let (journal1, decide1) = (journal.stats(), decider.stats());
    let (commits, batches) = (
        journal1.batches - journal0.batches,
        decide1.batches - decide0.batches,
    );
    let per = |n: u64, of: u64| n as f64 / of.max(1) as f64;
    println!(
        "journal: {commits} commits, {:.1} events each; engine: {batches} decision batches, {:.1} calls each, over {} stream(s) opened",
        per(journal1.events - journal0.events, commits),
        per(decide1.calls - decide0.calls, batches),
        decide1.streams - decide0.streams,
    );

    if do_parts {
        let gw = gateway.gateway.clone();
        let devs = Arc::new(devices.clone());
        server_rt.block_on(parts(gw, pool.clone(), devs, settings.in_flight.max(1)));
    }

    drop(client_rt);
    server_rt.block_on(async {
        gateway.shutdown().await;
        engine.shutdown().await.expect("engine shutdown");
    });
}
