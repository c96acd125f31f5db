//! The load generator the logon benches share: simulated endpoints (one mutual-TLS
//! channel per device) doing card + TOTP logons (Begin, sign the card nonce,
//! Complete) one at a time, with a fixed number in flight, and open loop at offered
//! rates; and the report each prints against DESIGN.md §5.
//!
//! `logon_load` drives the real engine and gateway with it; `logon_floor` drives
//! servers that do only the transport and the factor checks, to show what is left
//! for everything else on the same machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose,
};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use sekisho_gateway::factors::totp::{self, TotpParams};
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::pki::{CertificateAuthority, PkiFiles, Usage};
use sekisho_proto::v1 as pb;
use sekisho_testkit::process_cpu_time;
pub use sekisho_testkit::Summary;
use tonic::transport::Channel;

pub const WARMUP_SECS: f64 = 2.0;
pub const TIMEOUT: Duration = Duration::from_secs(30);

// -----------------------------------------------------------------------------
// Measurement helpers

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn header(title: &str) {
    println!(
        "{title:<56} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "n", "mean", "p50", "p95", "p99", "p99.9", "max"
    );
}

pub fn row(name: &str, s: &Summary, extra: &str) {
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

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn env_num(k: &str, d: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

// -----------------------------------------------------------------------------
// Users and their TOTP steps

pub struct BenchUser {
    pub id: String,
    pub card_der: Vec<u8>,
    /// Parsed once, as a card holds its key: the endpoint only asks it to sign.
    pub card_key: EcdsaKeyPair,
    pub totp_secret: Vec<u8>,
}

/// Users taken round-robin; `last[i]` is 1 + the last step user i's code was used
/// for (0: never).
pub struct Pool {
    pub users: Vec<BenchUser>,
    pub last: Vec<AtomicU64>,
    pub next: AtomicUsize,
    pub skipped: AtomicU64,
    pub waits: AtomicU64,
}

impl Pool {
    pub fn new(users: Vec<BenchUser>) -> Pool {
        Pool {
            last: (0..users.len()).map(|_| AtomicU64::new(0)).collect(),
            users,
            next: AtomicUsize::new(0),
            skipped: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        }
    }

    /// The next user with a fresh code, and the step to use. The gateway accepts the
    /// previous, current and next step, each once and in increasing order, so a user
    /// has up to three logons per step; the previous step is used only early in a
    /// step, so that its code is still in the window when the Complete arrives.
    /// `None` when every user is used up (then wait for the next step).
    pub fn pick(&self) -> Option<(usize, u64)> {
        let n = self.users.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let now = now_unix();
            let step = now / 30;
            let earliest = if now % 30 < 25 {
                step.saturating_sub(1)
            } else {
                step
            };
            let last = self.last[i].load(Ordering::Acquire);
            let use_step = earliest.max(last);
            if use_step > step + 1 {
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
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

pub type Client = pb::logon_client::LogonClient<Channel>;

pub struct Timed {
    pub begin: Duration,
    pub complete: Duration,
    pub total: Duration,
}

pub async fn logon(client: &mut Client, user: &BenchUser, step: u64) -> Result<Timed, String> {
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
    let signature = user
        .card_key
        .sign(&SystemRandom::new(), nonce)
        .map_err(|_| "card signature failed".to_string())?
        .as_ref()
        .to_vec();
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
pub struct Failures {
    pub count: AtomicU64,
    pub first: Mutex<Vec<String>>,
}

impl Failures {
    pub fn record(&self, e: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap();
        if first.len() < 5 {
            first.push(e);
        }
    }
}

pub struct RunResult {
    pub total: Vec<Duration>,
    pub begin: Vec<Duration>,
    pub complete: Vec<Duration>,
    pub elapsed: Duration,
    pub cpu: Duration,
}

impl RunResult {
    pub fn with_capacity(n: usize) -> RunResult {
        RunResult {
            total: Vec::with_capacity(n),
            begin: Vec::with_capacity(n),
            complete: Vec::with_capacity(n),
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
        }
    }
}

/// `in_flight` tasks, each with one logon outstanding, over `clients` round-robin.
pub async fn concurrent(
    clients: &[Client],
    pool: &Arc<Pool>,
    failures: &Arc<Failures>,
    in_flight: usize,
    secs: f64,
) -> RunResult {
    let start = Instant::now();
    let cpu0 = process_cpu_time();
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
    let mut r = RunResult::with_capacity(0);
    for t in tasks {
        let (a, b, c) = t.await.expect("load task");
        r.total.extend(a);
        r.begin.extend(b);
        r.complete.extend(c);
    }
    r.elapsed = start.elapsed();
    r.cpu = process_cpu_time() - cpu0;
    r
}

/// Open loop: logons started `rate` times a second, evenly spaced, whether or not
/// earlier ones have answered, spread over `clients` round-robin. A latency counts
/// from when its logon was due, not from when it could be started, so a gateway that
/// falls behind is charged for the queue it builds (no coordinated omission).
pub async fn open_loop(
    clients: &[Client],
    pool: &Arc<Pool>,
    failures: &Arc<Failures>,
    rate: f64,
    secs: f64,
) -> RunResult {
    let start = tokio::time::Instant::now();
    let cpu0 = process_cpu_time();
    let count = (rate * secs).round() as usize;
    let mut tasks = Vec::with_capacity(count);
    for k in 0..count {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due).await;
        let mut client = clients[k % clients.len()].clone();
        let (pool, failures) = (pool.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let Some((i, step)) = pool.pick() else {
                pool.waits.fetch_add(1, Ordering::Relaxed);
                failures
                    .record("no user with a fresh TOTP step (raise SEKISHO_BENCH_USERS)".into());
                return None;
            };
            match logon(&mut client, &pool.users[i], step).await {
                Ok(t) => Some((due.elapsed(), t)),
                Err(e) => {
                    failures.record(e);
                    None
                }
            }
        }));
    }
    let mut r = RunResult::with_capacity(count);
    for t in tasks {
        if let Some((since_due, t)) = t.await.expect("load task") {
            r.total.push(since_due);
            r.begin.push(t.begin);
            r.complete.push(t.complete);
        }
    }
    r.elapsed = start.elapsed();
    r.cpu = process_cpu_time() - cpu0;
    r
}

pub async fn sequential(
    client: &mut Client,
    pool: &Pool,
    failures: &Failures,
    count: usize,
) -> RunResult {
    let start = Instant::now();
    let cpu0 = process_cpu_time();
    let mut r = RunResult::with_capacity(count);
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
    r.cpu = process_cpu_time() - cpu0;
    r
}

pub fn report(name: &str, mut r: RunResult, with_rate: bool) -> (f64, Summary) {
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

pub struct CardIssuer {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem_file: PathBuf,
}

impl CardIssuer {
    pub fn new(dir: &Path) -> CardIssuer {
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
    pub fn issue(&self, holder: &str) -> (Vec<u8>, String) {
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

pub fn card_key_pair(pem: &str) -> EcdsaKeyPair {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).expect("card key PEM");
    EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_pkcs8_der(),
        &SystemRandom::new(),
    )
    .expect("card key")
}

pub async fn connect(url: &str, tls: &ClientTls) -> Channel {
    sekisho_gateway::tls::connect(url, tls, Some("localhost"), TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

pub fn device_tls(pki: &PkiFiles, device: &str) -> ClientTls {
    let (cert, key) = pki
        .ensure_leaf(&format!("device-{device}"), device, &[], Usage::Client)
        .expect("device certificate");
    ClientTls {
        ca: pki.ca(),
        cert,
        key,
    }
}

/// The servers' runtime and the load generator's, each with a worker per core: the
/// servers share theirs as an engine and a gateway on one machine would share its
/// cores, and the clients compete with them for the same cores.
pub fn runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    let runtime = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(name)
            .build()
            .expect("tokio runtime")
    };
    (runtime("server"), runtime("client"))
}

/// What to run, from the environment (see `logon_load`'s header).
pub struct LoadSettings {
    pub secs: f64,
    pub seq: usize,
    pub users: usize,
    pub in_flight: usize,
    pub channels: usize,
    pub rates: Vec<f64>,
}

impl LoadSettings {
    pub fn from_env() -> LoadSettings {
        LoadSettings {
            secs: env_num("SEKISHO_BENCH_SECS", 10.0),
            seq: env_num("SEKISHO_BENCH_SEQ", 2_000.0) as usize,
            users: env_num("SEKISHO_BENCH_USERS", 16_000.0) as usize,
            in_flight: env_num("SEKISHO_BENCH_IN_FLIGHT", 16.0) as usize,
            channels: env_num("SEKISHO_BENCH_CHANNELS", 16.0) as usize,
            rates: std::env::var("SEKISHO_BENCH_RATES")
                .unwrap_or_default()
                .split(',')
                .filter(|r| !r.trim().is_empty())
                .map(|r| {
                    r.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("SEKISHO_BENCH_RATES: '{r}' is not a number"))
                })
                .collect(),
        }
    }
}

/// Runs the logons of `settings` against the gateway at `gateway_url` from the first
/// `settings.channels` of `devices`, and prints the figures and the verdict against
/// DESIGN.md §5.
pub fn drive(
    client_rt: &tokio::runtime::Runtime,
    gateway_url: &str,
    pki: &PkiFiles,
    devices: &[String],
    pool: &Arc<Pool>,
    settings: &LoadSettings,
) {
    let failures = Arc::new(Failures::default());
    let used_devices: Vec<String> = devices.iter().take(settings.channels).cloned().collect();
    let clients: Vec<Client> = client_rt.block_on(async {
        let mut v = Vec::new();
        for d in &used_devices {
            v.push(pb::logon_client::LogonClient::new(
                connect(gateway_url, &device_tls(pki, d)).await,
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
    let (secs, seq, in_flight) = (settings.secs, settings.seq, settings.in_flight);
    let rates = &settings.rates;
    println!(
        "load: {in_flight} logons in flight (0: none), then open loop at {rates:?} logons/s, over {} device channels ({}), {secs} s each after a {WARMUP_SECS} s warm-up; {seq} one at a time; card proofs signed with ECDSA P-256 by the load generator",
        clients.len(),
        used_devices.join(", ")
    );
    println!();

    header("Logon (card + TOTP), latency in ms");
    // One at a time (`SEKISHO_BENCH_SEQ=0` skips it): a current-thread client with its
    // own channel.
    let seq_total = (seq > 0).then(|| {
        let one_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let seq_result = one_rt.block_on(async {
            let mut client = pb::logon_client::LogonClient::new(
                connect(gateway_url, &device_tls(pki, &used_devices[0])).await,
            );
            // Warm-up: connections, the engine's plan tables, the gateway's statement cache.
            let _ = sequential(&mut client, pool, &failures, 200).await;
            sequential(&mut client, pool, &failures, seq).await
        });
        report("1 at a time", seq_result, true).1
    });

    let mut verdicts = Vec::new();
    let verdict = |name: String, rate: f64, total: &Summary| {
        format!(
            "{name}: {rate:.0} logons/s ({}), p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms ({})",
            if rate >= 3000.0 { "met" } else { "NOT met" },
            ms(total.p50),
            ms(total.p95),
            ms(total.p99),
            if total.p99 <= Duration::from_millis(10) {
                "met"
            } else {
                "NOT met"
            },
        )
    };
    if in_flight > 0 {
        let _ = client_rt.block_on(concurrent(
            &clients,
            pool,
            &failures,
            in_flight,
            WARMUP_SECS,
        ));
        let run = client_rt.block_on(concurrent(&clients, pool, &failures, in_flight, secs));
        let name = format!("{in_flight} in flight");
        let (rate, total) = report(&name, run, true);
        verdicts.push(verdict(name, rate, &total));
    }
    for offered in rates {
        let _ = client_rt.block_on(open_loop(&clients, pool, &failures, *offered, WARMUP_SECS));
        let run = client_rt.block_on(open_loop(&clients, pool, &failures, *offered, secs));
        let name = format!("{offered:.0}/s offered");
        let (rate, total) = report(&name, run, true);
        verdicts.push(verdict(name, rate, &total));
    }

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
    for v in verdicts {
        println!("{v}");
    }
    if let Some(seq_total) = seq_total {
        println!(
            "1 at a time: p50 {:.2} ms, p99 {:.2} ms",
            ms(seq_total.p50),
            ms(seq_total.p99)
        );
    }
}
