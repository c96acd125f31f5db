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
//! A TOTP code is accepted once per user and step, so users are taken round-robin and
//! each one's last used step is tracked: the current step's code, else (already used
//! this step) the next step's code, which the ±1 window accepts; a user who used both
//! is skipped. With enough users no user repeats within a run.
//!
//! Engine, gateway and load generator share this process and the machine's cores:
//! engine and gateway on one tokio runtime, the clients on others.
//!
//! Environment: `SEKISHO_BENCH_SECS` (default 10) measured seconds of the 64-in-flight
//! run, after a 2 s warm-up; `SEKISHO_BENCH_SEQ` (default 2,000) one-at-a-time logons;
//! `SEKISHO_BENCH_USERS`; `SEKISHO_BENCH_IN_FLIGHT` (default 64);
//! `SEKISHO_BENCH_CHANNELS` (default 16, one device each); `SEKISHO_BENCH_PARTS=0`
//! skips the per-part timings at the end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sekisho_gateway::config::GatewayConfig;
use sekisho_gateway::decide::Subject;
use sekisho_gateway::effects::Effect;
use sekisho_gateway::factors::card;
use sekisho_gateway::factors::totp::{self, TotpParams};
use sekisho_gateway::session;
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::entities::{DeviceRecord, EntityBatch, UserRecord};
use sekisho_policy_engine::pki::{CertificateAuthority, PkiFiles, Usage};
use sekisho_policy_engine::{Action, Capabilities, DeviceKind, FactorSet, Tier, Via};
use sekisho_proto::v1 as pb;
use tonic::transport::Channel;

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
const WARMUP_SECS: f64 = 2.0;
const TIMEOUT: Duration = Duration::from_secs(30);

// -----------------------------------------------------------------------------
// Measurement helpers

struct Summary {
    n: usize,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    mean: Duration,
}

impl Summary {
    fn of(samples: &mut [Duration]) -> Summary {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        let total: Duration = samples.iter().sum();
        Summary {
            n: samples.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            p999: at(0.999),
            max: *samples.last().unwrap(),
            mean: total / samples.len() as u32,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn header(title: &str) {
    println!(
        "{title:<56} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "n", "mean", "p50", "p95", "p99", "p99.9", "max"
    );
}

fn row(name: &str, s: &Summary, extra: &str) {
    println!(
        "{name:<56} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}  {extra}",
        s.n,
        ms(s.mean),
        ms(s.p50),
        ms(s.p95),
        ms(s.p99),
        ms(s.p999),
        ms(s.max)
    );
}

/// utime + stime of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10) // USER_HZ = 100
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn env_num(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

// -----------------------------------------------------------------------------
// Users and their TOTP steps

struct BenchUser {
    id: String,
    card_der: Vec<u8>,
    card_key_pem: String,
    totp_secret: Vec<u8>,
}

/// Users taken round-robin; `last[i]` is 1 + the last step user i's code was used
/// for (0: never).
struct Pool {
    users: Vec<BenchUser>,
    last: Vec<AtomicU64>,
    next: AtomicUsize,
    skipped: AtomicU64,
    waits: AtomicU64,
}

impl Pool {
    /// The next user with a fresh code, and the step to use. `None` when every user
    /// used both the current and the next step (then wait for the next step).
    fn pick(&self) -> Option<(usize, u64)> {
        let n = self.users.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let step = now_unix() / 30;
            let last = self.last[i].load(Ordering::Acquire);
            let use_step = if last <= step {
                step
            } else if last == step + 1 {
                step + 1
            } else {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if self.last[i]
                .compare_exchange(last, use_step + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Some((i, use_step));
            }
        }
        None
    }
}

// -----------------------------------------------------------------------------
// One logon

type Client = pb::logon_client::LogonClient<Channel>;

struct Timed {
    begin: Duration,
    complete: Duration,
    total: Duration,
}

async fn logon(client: &mut Client, user: &BenchUser, step: u64) -> Result<Timed, String> {
    let t0 = Instant::now();
    let challenge = client
        .begin(pb::BeginRequest {
            device: String::new(),
            user: user.id.clone(),
            action: "logon".into(),
            via: String::new(),
            upstream: Vec::new(),
            request_id: String::new(),
        })
        .await
        .map_err(|s| format!("Begin: {}: {}", s.code(), s.message()))?
        .into_inner();
    let t1 = Instant::now();
    let nonce = challenge
        .nonces
        .get("card")
        .ok_or_else(|| format!("Begin gave no card nonce: options {:?}", challenge.options))?;
    let signature = card::sign_nonce(&user.card_key_pem, nonce).map_err(|e| e.to_string())?;
    let code = totp::code_at(&user.totp_secret, &TotpParams::default(), step);
    let t2 = Instant::now();
    let result = client
        .complete(pb::CompleteRequest {
            challenge_id: challenge.challenge_id,
            proofs: vec![
                pb::Proof {
                    proof: Some(pb::proof::Proof::Card(pb::CardProof {
                        certificate: user.card_der.clone(),
                        signature,
                    })),
                },
                pb::Proof {
                    proof: Some(pb::proof::Proof::Totp(code)),
                },
            ],
            request_id: String::new(),
        })
        .await
        .map_err(|s| format!("Complete: {}: {}", s.code(), s.message()))?
        .into_inner();
    let t3 = Instant::now();
    if result.decision != pb::Decision::Allow as i32 {
        let factors: Vec<String> = result
            .factors
            .iter()
            .map(|f| format!("{}:{}{}", f.factor, f.ok, f.reason))
            .collect();
        return Err(format!("denied: {} {factors:?}", result.reason));
    }
    Ok(Timed {
        begin: t1 - t0,
        complete: t3 - t2,
        total: t3 - t0,
    })
}

#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl Failures {
    fn record(&self, e: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap();
        if first.len() < 5 {
            first.push(e);
        }
    }
}

struct RunResult {
    total: Vec<Duration>,
    begin: Vec<Duration>,
    complete: Vec<Duration>,
    elapsed: Duration,
    cpu: Duration,
}

/// `in_flight` tasks, each with one logon outstanding, over `clients` round-robin.
async fn concurrent(
    clients: &[Client],
    pool: &Arc<Pool>,
    failures: &Arc<Failures>,
    in_flight: usize,
    secs: f64,
) -> RunResult {
    let start = Instant::now();
    let cpu0 = cpu_time();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..in_flight {
        let mut client = clients[t % clients.len()].clone();
        let pool = pool.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = (Vec::new(), Vec::new(), Vec::new());
            while Instant::now() < deadline {
                let Some((i, step)) = pool.pick() else {
                    pool.waits.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match logon(&mut client, &pool.users[i], step).await {
                    Ok(t) => {
                        out.0.push(t.total);
                        out.1.push(t.begin);
                        out.2.push(t.complete);
                    }
                    Err(e) => failures.record(e),
                }
            }
            out
        }));
    }
    let mut r = RunResult {
        total: Vec::new(),
        begin: Vec::new(),
        complete: Vec::new(),
        elapsed: Duration::ZERO,
        cpu: Duration::ZERO,
    };
    for t in tasks {
        let (a, b, c) = t.await.expect("load task");
        r.total.extend(a);
        r.begin.extend(b);
        r.complete.extend(c);
    }
    r.elapsed = start.elapsed();
    r.cpu = cpu_time() - cpu0;
    r
}

async fn sequential(
    client: &mut Client,
    pool: &Pool,
    failures: &Failures,
    count: usize,
) -> RunResult {
    let start = Instant::now();
    let cpu0 = cpu_time();
    let mut r = RunResult {
        total: Vec::with_capacity(count),
        begin: Vec::with_capacity(count),
        complete: Vec::with_capacity(count),
        elapsed: Duration::ZERO,
        cpu: Duration::ZERO,
    };
    let mut failed = 0usize;
    while r.total.len() + failed < count {
        let Some((i, step)) = pool.pick() else {
            pool.waits.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match logon(client, &pool.users[i], step).await {
            Ok(t) => {
                r.total.push(t.total);
                r.begin.push(t.begin);
                r.complete.push(t.complete);
            }
            Err(e) => {
                failed += 1;
                failures.record(e);
            }
        }
    }
    r.elapsed = start.elapsed();
    r.cpu = cpu_time() - cpu0;
    r
}

fn report(name: &str, mut r: RunResult, with_rate: bool) -> (f64, Summary) {
    let n = r.total.len();
    let rate = n as f64 / r.elapsed.as_secs_f64();
    let cpu_per = if n > 0 {
        r.cpu / n as u32
    } else {
        Duration::ZERO
    };
    let total = Summary::of(&mut r.total);
    let extra = if with_rate {
        format!(
            "{rate:.0} logons/s; {:.0} µs CPU/logon (whole process)",
            cpu_per.as_secs_f64() * 1e6
        )
    } else {
        format!("{:.0} µs CPU/logon", cpu_per.as_secs_f64() * 1e6)
    };
    row(&format!("{name}: whole logon"), &total, &extra);
    row(&format!("{name}:   Begin"), &Summary::of(&mut r.begin), "");
    row(
        &format!("{name}:   Complete"),
        &Summary::of(&mut r.complete),
        "",
    );
    (rate, total)
}

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

struct CardIssuer {
    issuer: Issuer<'static, KeyPair>,
    pem_file: PathBuf,
}

impl CardIssuer {
    fn new(dir: &Path) -> CardIssuer {
        let ca = CertificateAuthority::generate("sekisho bench card CA").expect("card CA");
        let pem_file = dir.join("bench-card-ca.pem");
        std::fs::write(&pem_file, ca.cert_pem()).expect("write card CA");
        let issuer = Issuer::from_ca_cert_pem(
            &ca.cert_pem(),
            KeyPair::from_pem(ca.key_pem()).expect("CA key"),
        )
        .expect("issuer");
        CardIssuer { issuer, pem_file }
    }

    /// A P-256 card for `holder`: (certificate DER, PKCS#8 key PEM).
    fn issue(&self, holder: &str) -> (Vec<u8>, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, holder);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("card key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign card");
        (cert.der().to_vec(), key.serialize_pem())
    }
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

async fn connect(url: &str, tls: &ClientTls) -> Channel {
    sekisho_gateway::tls::connect(url, tls, Some("localhost"), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn admin_tls(pki: &PkiFiles) -> ClientTls {
    ClientTls {
        ca: pki.ca(),
        cert: pki.admin_cert(),
        key: pki.admin_key(),
    }
}

fn device_tls(pki: &PkiFiles, device: &str) -> ClientTls {
    let (cert, key) = pki
        .ensure_leaf(&format!("device-{device}"), device, &[], Usage::Client)
        .expect("device certificate");
    ClientTls {
        ca: pki.ca(),
        cert,
        key,
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
// engine calls at 64 in flight

/// `f(0..n)` one at a time: latency summary and the process's CPU time per call
/// (every thread: the caller, the gateway's runtime, SQLite's threads, the engine).
async fn time_n<F, Fut>(n: usize, mut f: F) -> (Summary, String)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(n);
    let cpu0 = cpu_time();
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        samples.push(t.elapsed());
    }
    let cpu = (cpu_time() - cpu0) / n as u32;
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
    let secs = env_num("SEKISHO_BENCH_SECS", 10.0);
    let seq = env_num("SEKISHO_BENCH_SEQ", 2_000.0) as usize;
    let users = env_num("SEKISHO_BENCH_USERS", 16_000.0) as usize;
    let in_flight = env_num("SEKISHO_BENCH_IN_FLIGHT", 64.0) as usize;
    let channels = env_num("SEKISHO_BENCH_CHANNELS", 16.0) as usize;
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

    // Engine and gateway on one runtime (one worker per core); clients on others.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("server")
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("client")
        .build()
        .unwrap();

    let t = Instant::now();
    let engine = server_rt
        .block_on(sekisho_policy_engine::server::start(&engine_config))
        .expect("engine starts");
    let pki = engine.pki.clone().expect("development PKI");
    let engine_url = format!("https://127.0.0.1:{}", engine.addr.port());

    let batch = generated_entities(users);
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
        "gateway (internet, SQLite): registered {} devices, enrolled {} users (card + TOTP) in {:.1} s",
        devices.len(),
        secrets.len(),
        t.elapsed().as_secs_f64()
    );
    drop(id_ders);

    let pool = Arc::new(Pool {
        last: (0..cards.len()).map(|_| AtomicU64::new(0)).collect(),
        users: cards
            .into_iter()
            .zip(secrets)
            .map(|((id, card_der, card_key_pem), totp_secret)| BenchUser {
                id,
                card_der,
                card_key_pem,
                totp_secret,
            })
            .collect(),
        next: AtomicUsize::new(0),
        skipped: AtomicU64::new(0),
        waits: AtomicU64::new(0),
    });
    let failures = Arc::new(Failures::default());

    // One channel per device, for the first `channels` devices.
    let used_devices: Vec<String> = devices.iter().take(channels).cloned().collect();
    let clients: Vec<Client> = client_rt.block_on(async {
        let mut v = Vec::new();
        for d in &used_devices {
            v.push(pb::logon_client::LogonClient::new(
                connect(&gw_url, &device_tls(&pki, d)).await,
            ));
        }
        v
    });

    // What Begin offers these users.
    client_rt.block_on(async {
        let c = clients[0]
            .clone()
            .begin(pb::BeginRequest {
                user: pool.users[0].id.clone(),
                action: "logon".into(),
                ..Default::default()
            })
            .await
            .expect("begin")
            .into_inner();
        let options: Vec<Vec<String>> = c.options.iter().map(|o| o.factors.clone()).collect();
        println!(
            "Begin offers {} on {}: {options:?}, nonces {:?}",
            pool.users[0].id,
            used_devices[0],
            c.nonces.keys().collect::<Vec<_>>()
        );
    });

    println!(
        "load: {in_flight} logons in flight over {} device channels ({}), {secs} s after a {WARMUP_SECS} s warm-up; {seq} one at a time; card proofs signed with ECDSA P-256 by the load generator",
        clients.len(),
        used_devices.join(", ")
    );
    println!("engine, gateway and load generator share this process and the machine's cores");
    println!();

    // One at a time: a current-thread client with its own channel.
    let one_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seq_result = one_rt.block_on(async {
        let mut client = pb::logon_client::LogonClient::new(
            connect(&gw_url, &device_tls(&pki, &used_devices[0])).await,
        );
        // Warm-up: connections, the engine's plan tables, the gateway's statement cache.
        let _ = sequential(&mut client, &pool, &failures, 200).await;
        sequential(&mut client, &pool, &failures, seq).await
    });
    header("Logon (card + TOTP), latency in ms");
    let (_, seq_total) = report("1 at a time", seq_result, true);

    let _ = client_rt.block_on(concurrent(
        &clients,
        &pool,
        &failures,
        in_flight,
        WARMUP_SECS,
    ));
    let run = client_rt.block_on(concurrent(&clients, &pool, &failures, in_flight, secs));
    let (rate, conc_total) = report(&format!("{in_flight} in flight"), run, true);

    let fails = failures.count.load(Ordering::Relaxed);
    println!();
    println!(
        "failed logons: {fails}{}; users skipped (code already used this step): {}; waits for a fresh step: {}",
        if fails > 0 {
            format!(" (first: {:?})", failures.first.lock().unwrap())
        } else {
            String::new()
        },
        pool.skipped.load(Ordering::Relaxed),
        pool.waits.load(Ordering::Relaxed)
    );
    println!();
    println!(
        "=== DESIGN §5: gateway logon end to end, card + TOTP: ≥ 3,000 logons/s, p99 ≤ 10 ms ==="
    );
    println!(
        "{in_flight} in flight: {rate:.0} logons/s ({}), p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({})",
        if rate >= 3000.0 { "met" } else { "NOT met" },
        ms(conc_total.p50),
        ms(conc_total.p95),
        ms(conc_total.p99),
        if conc_total.p99 <= Duration::from_millis(10) { "met" } else { "NOT met" },
    );
    println!(
        "1 at a time: p50 {:.2} ms, p99 {:.2} ms",
        ms(seq_total.p50),
        ms(seq_total.p99)
    );

    if do_parts {
        let gw = gateway.gateway.clone();
        let devs = Arc::new(devices.clone());
        server_rt.block_on(parts(gw, pool.clone(), devs, in_flight));
    }

    drop(clients);
    drop(one_rt);
    drop(client_rt);
    server_rt.block_on(async {
        gateway.shutdown().await;
        engine.shutdown().await.expect("engine shutdown");
    });
}
