//! Criterion benchmarks of the gateway's factor verifiers, one call each, in process:
//!
//! - Argon2id verification with the default parameters (m = 19456 KiB, t = 2, p = 1),
//!   what every password and PIN logon costs;
//! - TOTP verification (SHA-1, 6 digits, ±1 step accepted; a refusal computes the
//!   whole ±10-step skew window, so every refusal costs the same);
//! - card verification: chain to the card CA plus the signature over the nonce, for
//!   an ECDSA P-256 card under a P-256 CA and an RSA-2048 card under an RSA-2048 CA,
//!   on a card's first use and once its chain is remembered;
//! - biometric 1:1 match (512-d probe against 3 templates) and the capture device's
//!   P-256 signature check;
//! - the endpoint side: signing a card nonce (what the load generator pays per logon).
//!
//!   cargo bench -p sekisho-gateway --bench factors
//!
//! After criterion, a summary prints the medians (from criterion's estimates.json) and
//! Argon2id throughput measured directly: one thread, then one thread per core.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, BenchmarkId, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use sekisho_gateway::factors::biometric::{self, BiometricFactor, DeviceKey};
use sekisho_gateway::factors::card::{self, CardTrust};
use sekisho_gateway::factors::totp::{self, TotpParams};
use sekisho_gateway::factors::{pin, Failure};
use sekisho_gateway::hashing::{Argon2Params, SecretHasher};

/// The committed RSA-2048 key (ring cannot generate RSA keys). It serves as both the
/// RSA CA's key and the RSA card's key: verification costs the same as with two keys.
const RSA_KEY_PEM: &str = include_str!("../tests/data/rsa2048.pk8.pem");

const DIM: usize = 512;
const TEMPLATES: usize = 3;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// -----------------------------------------------------------------------------
// Argon2id

fn bench_argon2(c: &mut Criterion) {
    let params = Argon2Params::default();
    let hasher = SecretHasher::new(params.clone()).expect("default Argon2id parameters");
    let phc = hasher.hash("correct horse battery staple").expect("hash");
    let pin_phc = hasher.hash("482913").expect("hash");
    let mut g = c.benchmark_group("argon2id");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    g.bench_function("verify_password", |b| {
        b.iter(|| {
            black_box(
                hasher
                    .verify(
                        black_box("correct horse battery staple"),
                        Some(phc.as_str()),
                    )
                    .unwrap(),
            )
        })
    });
    // A PIN logon: the same Argon2id run behind pin::verify.
    g.bench_function("verify_pin", |b| {
        b.iter(|| {
            black_box(pin::verify(
                &hasher,
                black_box("482913"),
                Some(pin_phc.as_str()),
            ))
        })
    });
    g.finish();
}

// -----------------------------------------------------------------------------
// TOTP

fn bench_totp(c: &mut Criterion) {
    let secret: Vec<u8> = (0u8..20)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let p = TotpParams::default();
    let now = now_unix();
    let step = now / p.period_secs();
    let current = totp::code_at(&secret, &p, step);
    let skewed = totp::code_at(&secret, &p, step + 5);
    // A code that matches no step in the ±10 window.
    let near: Vec<String> = (step - 10..=step + 10)
        .map(|s| totp::code_at(&secret, &p, s))
        .collect();
    let wrong = (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .unwrap();
    assert_eq!(totp::verify(&secret, &p, &current, now, None), Ok(step));
    assert_eq!(
        totp::verify(&secret, &p, &skewed, now, None),
        Err(Failure::OutsideWindow)
    );
    assert_eq!(
        totp::verify(&secret, &p, &wrong, now, None),
        Err(Failure::Mismatch)
    );
    assert_eq!(
        totp::verify(&secret, &p, &current, now, Some(step)),
        Err(Failure::Replayed)
    );

    let mut g = c.benchmark_group("totp");
    g.bench_function("code_at", |b| {
        b.iter(|| black_box(totp::code_at(black_box(&secret), &p, black_box(step))))
    });
    for (name, code, last) in [
        ("verify_accept", &current, None),
        ("verify_outside_window", &skewed, None),
        ("verify_mismatch", &wrong, None),
        ("verify_replayed", &current, Some(step)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                black_box(totp::verify(
                    black_box(&secret),
                    &p,
                    black_box(code),
                    now,
                    last,
                ))
            })
        });
    }
    g.finish();
}

// -----------------------------------------------------------------------------
// Cards

fn ca(common_name: &str, key: KeyPair) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    CertifiedIssuer::self_signed(params, key).unwrap()
}

fn card_cert(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    key: &KeyPair,
    serial: u64,
) -> CertificateDer<'static> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("card {serial}"));
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    params.signed_by(key, issuer).unwrap().der().clone()
}

struct CardCase {
    name: &'static str,
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key_pem: String,
}

fn card_cases() -> Vec<CardCase> {
    let ec_ca = ca(
        "bench card CA (P-256)",
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
    );
    let ec_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec_cert = card_cert(&ec_ca, &ec_key, 1);

    let rsa_ca = ca(
        "bench card CA (RSA-2048)",
        KeyPair::from_pem(RSA_KEY_PEM).unwrap(),
    );
    let rsa_key = KeyPair::from_pem(RSA_KEY_PEM).unwrap();
    let rsa_cert = card_cert(&rsa_ca, &rsa_key, 2);

    vec![
        CardCase {
            name: "ecdsa_p256",
            ca: ec_ca.der().clone(),
            cert: ec_cert,
            key_pem: ec_key.serialize_pem(),
        },
        CardCase {
            name: "rsa2048",
            ca: rsa_ca.der().clone(),
            cert: rsa_cert,
            key_pem: RSA_KEY_PEM.to_string(),
        },
    ]
}

impl CardCase {
    /// A trust that has not seen the card yet.
    fn fresh_trust(&self) -> CardTrust {
        CardTrust::new(vec![self.ca.clone()], vec![], vec![], vec![]).unwrap()
    }
}

fn bench_cards(c: &mut Criterion) {
    let nonce = [7u8; 32];
    let mut g = c.benchmark_group("card");
    for case in card_cases() {
        let sig = card::sign_nonce(&case.key_pem, &nonce).unwrap();
        let enrolled = [case.cert.clone()];
        let verify = |trust: &CardTrust| {
            card::verify(
                trust,
                &enrolled,
                black_box(&case.cert),
                &nonce,
                black_box(&sig),
                UnixTime::now(),
            )
        };
        let trust = case.fresh_trust();
        assert_eq!(verify(&trust), Ok(card::CardKind::Card), "{}", case.name);
        // The whole check of every logon after a card's first: enrolled? the
        // remembered chain's dates, then the signature.
        g.bench_function(BenchmarkId::new("verify", case.name), |b| {
            b.iter(|| black_box(verify(&trust)))
        });
        // A card's first logon: the chain is built and checked too.
        g.bench_function(BenchmarkId::new("verify_first_use", case.name), |b| {
            b.iter_batched(
                || case.fresh_trust(),
                |trust| black_box(verify(&trust)),
                BatchSize::SmallInput,
            )
        });
        // The chain alone on first use (what enrolment checks).
        g.bench_function(BenchmarkId::new("chain_only", case.name), |b| {
            b.iter_batched(
                || case.fresh_trust(),
                |trust| {
                    black_box(card::classify(
                        &trust,
                        black_box(&case.cert),
                        UnixTime::now(),
                    ))
                },
                BatchSize::SmallInput,
            )
        });
        // Endpoint side: the card signing the nonce (here from a PKCS#8 PEM, parsed
        // on every call as `sign_nonce` does).
        g.bench_function(BenchmarkId::new("sign_nonce_endpoint", case.name), |b| {
            b.iter(|| black_box(card::sign_nonce(&case.key_pem, black_box(&nonce)).unwrap()))
        });
    }
    g.finish();
}

// -----------------------------------------------------------------------------
// Biometrics

/// A deterministic pseudo-random vector, different per seed.
fn person(seed: u32, dim: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..dim)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn bench_biometric(c: &mut Criterion) {
    let templates: Vec<Vec<f32>> = (0..TEMPLATES as u32)
        .map(|i| {
            let mut t: Vec<f32> = person(1, DIM)
                .iter()
                .zip(person(100 + i, DIM))
                .map(|(x, n)| x + 0.05 * n)
                .collect();
            biometric::normalize(&mut t).unwrap();
            t
        })
        .collect();
    let probe: Vec<f32> = person(1, DIM)
        .iter()
        .zip(person(99, DIM))
        .map(|(x, n)| x + 0.1 * n)
        .collect();
    assert!(biometric::best_match(&probe, &templates, 0.8).is_ok());

    let device = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = DeviceKey::from_spki_der(&device.subject_public_key_info()).unwrap();
    let nonce = [9u8; 32];
    let sig = biometric::sign_capture(
        &device.serialize_pem(),
        BiometricFactor::Face,
        &nonce,
        &probe,
    )
    .unwrap();
    assert_eq!(
        biometric::verify_capture(&key, BiometricFactor::Face, &nonce, &probe, &sig),
        Ok(())
    );

    let mut g = c.benchmark_group("biometric");
    g.bench_function("match_512d_3_templates", |b| {
        b.iter(|| black_box(biometric::best_match(black_box(&probe), &templates, 0.8)))
    });
    g.bench_function("capture_signature_p256", |b| {
        b.iter(|| {
            black_box(biometric::verify_capture(
                &key,
                BiometricFactor::Face,
                &nonce,
                black_box(&probe),
                black_box(&sig),
            ))
        })
    });
    g.finish();
}

// -----------------------------------------------------------------------------
// Summary

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("criterion")
}

/// The median point estimate (ns) criterion recorded for `group/bench`.
fn median_ns(group: &str, bench: &str) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Argon2id verifications per second with `threads` threads each verifying in a loop
/// for about `secs`.
fn argon2_rate(hasher: &SecretHasher, phc: &str, threads: usize, secs: f64) -> f64 {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let done: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0usize;
                    while Instant::now() < deadline {
                        assert!(hasher.verify("correct horse", Some(phc)).unwrap());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    done as f64 / start.elapsed().as_secs_f64()
}

fn summary() {
    println!();
    println!("=== Gateway factor verifiers: criterion medians (one call) ===");
    let rows: &[(&str, &str, &str)] = &[
        (
            "argon2id",
            "verify_password",
            "Argon2id verify, m=19456 KiB t=2 p=1 (password)",
        ),
        (
            "argon2id",
            "verify_pin",
            "Argon2id verify via pin::verify (PIN)",
        ),
        ("totp", "code_at", "TOTP code_at (one HMAC-SHA-1 step)"),
        (
            "totp",
            "verify_accept",
            "TOTP verify, accepted (3 steps computed)",
        ),
        (
            "totp",
            "verify_outside_window",
            "TOTP verify, outside_window",
        ),
        ("totp", "verify_mismatch", "TOTP verify, mismatch"),
        ("totp", "verify_replayed", "TOTP verify, replayed"),
        (
            "card",
            "verify/ecdsa_p256",
            "card verify, ECDSA P-256 card + P-256 CA, chain remembered",
        ),
        (
            "card",
            "verify_first_use/ecdsa_p256",
            "  on the card's first use",
        ),
        ("card", "chain_only/ecdsa_p256", "  chain only (P-256)"),
        (
            "card",
            "verify/rsa2048",
            "card verify, RSA-2048 card + RSA-2048 CA, chain remembered",
        ),
        (
            "card",
            "verify_first_use/rsa2048",
            "  on the card's first use",
        ),
        ("card", "chain_only/rsa2048", "  chain only (RSA-2048)"),
        (
            "card",
            "sign_nonce_endpoint/ecdsa_p256",
            "endpoint: sign nonce, P-256 (PEM parse + sign)",
        ),
        (
            "card",
            "sign_nonce_endpoint/rsa2048",
            "endpoint: sign nonce, RSA-2048 (PEM parse + sign)",
        ),
        (
            "biometric",
            "match_512d_3_templates",
            "biometric 1:1 match, 512-d x 3 templates",
        ),
        (
            "biometric",
            "capture_signature_p256",
            "biometric capture signature (P-256, 2 KiB msg)",
        ),
    ];
    for (group, bench, label) in rows {
        match median_ns(group, bench) {
            Some(ns) => println!(
                "{label:<58} {:>11}  ({:>10.0} /s per core)",
                fmt_ns(ns),
                1e9 / ns
            ),
            None => println!("{label:<58} {:>11}", "(not run)"),
        }
    }

    if std::env::var_os("SEKISHO_BENCH_NO_ARGON2_RATE").is_some() {
        return;
    }
    let params = Argon2Params::default();
    let hasher = SecretHasher::new(params.clone()).expect("default parameters");
    let phc = hasher.hash("correct horse").expect("hash");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let one = argon2_rate(&hasher, &phc, 1, 5.0);
    let all = argon2_rate(&hasher, &phc, cores, 5.0);
    println!();
    println!(
        "=== Argon2id throughput (m={} KiB, t={}, p={}), 5 s each ===",
        params.memory_kib, params.iterations, params.parallelism
    );
    println!(
        "1 thread:            {one:>6.1} verifications/s = password or PIN logons/s one core allows ({:.1} ms each)",
        1e3 / one
    );
    println!(
        "{cores} threads ({cores} cores): {all:>6.1} verifications/s in all ({:.1} per core)",
        all / cores as f64
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_argon2(&mut c);
    bench_totp(&mut c);
    bench_cards(&mut c);
    bench_biometric(&mut c);
    c.final_summary();
    summary();
}
