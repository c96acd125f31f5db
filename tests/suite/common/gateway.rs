//! Gateway test kit: a real engine with the reference city plus a real gateway for
//! one tier, a test card CA and a test JPKI CA, device certificates from the
//! engine's development PKI, and clients for endpoints and administrators.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use sekisho_gateway::config::GatewayConfig;
use sekisho_gateway::server::{self, RunningGateway};
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::pki::{CertificateAuthority, PkiFiles, Usage};
use sekisho_policy_engine::Tier;
use sekisho_proto::v1 as pb;
use tonic::transport::Channel;

use super::{Backend, TestEngine};

/// A card issued by one of the test CAs: its certificate (DER) and key (PKCS#8 PEM).
#[derive(Clone)]
pub struct TestCard {
    pub der: Vec<u8>,
    pub key_pem: String,
    pub serial: u64,
}

/// Card serials, unique within the test process, so a CRL revokes only its card.
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A test CA issuing card certificates with any validity period.
pub struct CardCa {
    pub ca: CertificateAuthority,
    pub pem_file: PathBuf,
}

impl CardCa {
    pub fn new(name: &str, dir: &Path) -> CardCa {
        let ca = CertificateAuthority::generate(name).expect("card CA");
        let pem_file = dir.join(format!("{}.pem", name.replace(' ', "-")));
        std::fs::write(&pem_file, ca.cert_pem()).expect("write CA");
        CardCa { ca, pem_file }
    }

    /// A card certificate for `holder`, valid from `from` to `to` (year, month, day).
    pub fn issue_valid(&self, holder: &str, from: (i32, u8, u8), to: (i32, u8, u8)) -> TestCard {
        let issuer = self.issuer();
        let serial = NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, holder);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        let key = KeyPair::generate().expect("card key");
        let cert = params.signed_by(&key, &issuer).expect("sign card");
        TestCard {
            der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            serial,
        }
    }

    fn issuer(&self) -> Issuer<'static, KeyPair> {
        Issuer::from_ca_cert_pem(
            &self.ca.cert_pem(),
            KeyPair::from_pem(self.ca.key_pem()).expect("CA key"),
        )
        .expect("issuer")
    }

    /// A CRL of this CA (in force 2020 to 2045) revoking `cards`, as PEM.
    pub fn crl_pem(&self, cards: &[&TestCard]) -> String {
        let params = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2045, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: cards
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: SerialNumber::from(c.serial),
                    revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer())
            .expect("sign CRL")
            .pem()
            .expect("CRL PEM")
    }

    /// A card valid from 2020 to 2045.
    pub fn issue(&self, holder: &str) -> TestCard {
        self.issue_valid(holder, (2020, 1, 1), (2045, 1, 1))
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An engine with the reference city and one tier's gateway in front of it.
pub struct TestGateway {
    pub engine: TestEngine,
    pub running: RunningGateway,
    pub dir: tempfile::TempDir,
    pub cards: CardCa,
    pub jpki: CardCa,
    pub config: GatewayConfig,
}

impl TestGateway {
    /// Starts both on SQLite, with `adjust` applied to the gateway config.
    pub async fn start(tier: Tier, adjust: impl FnOnce(&mut GatewayConfig)) -> TestGateway {
        Self::start_on(Backend::Sqlite, tier, adjust).await
    }

    /// As [`TestGateway::start`], with the engine and the gateway both on `backend`
    /// (each on a tenant of its own on PostgreSQL).
    pub async fn start_on(
        backend: Backend,
        tier: Tier,
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> TestGateway {
        let engine = TestEngine::start(backend, "gw").await;
        Self::on_engine(engine, backend, tier, adjust).await
    }

    /// As [`TestGateway::start_on`], in front of an engine the test configured.
    pub async fn on_engine(
        engine: TestEngine,
        backend: Backend,
        tier: Tier,
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> TestGateway {
        let postgres = matches!(backend, Backend::Postgres);
        engine.load_reference().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let cards = CardCa::new("test card CA", dir.path());
        let jpki = CardCa::new("test JPKI CA", dir.path());
        let pki = engine.running.pki.as_ref().expect("dev PKI").dir.clone();
        let mut config = GatewayConfig::self_contained(tier, dir.path(), &pki, &engine.url());
        config.cards.ca = vec![cards.pem_file.clone()];
        config.cards.mynumber_ca = vec![jpki.pem_file.clone()];
        // A CRL revoking nothing yet; `revoke` replaces it.
        let crl_file = dir.path().join("test-card-CA.crl");
        std::fs::write(&crl_file, cards.crl_pem(&[])).expect("write CRL");
        config.cards.crl = vec![crl_file];
        config.rate_limit.burst = 1_000;
        config.lockout.max_failures = 3;
        // Low cost so the many PIN and password checks of the tests stay quick.
        config.argon2.memory_kib = 8_192;
        config.argon2.iterations = 5;
        if postgres {
            config.store = Some(super::pg_url());
            config.tenant = super::unique_tenant("gw");
        }
        adjust(&mut config);
        let running = Self::launch(&config, dir.path()).await;
        TestGateway {
            engine,
            running,
            dir,
            cards,
            jpki,
            config,
        }
    }

    pub async fn launch(config: &GatewayConfig, dir: &Path) -> RunningGateway {
        let resolved = config.clone().resolve("test", dir).expect("valid config");
        server::start(resolved).await.expect("gateway starts")
    }

    /// Installs `crl_pem` as the card CA's CRL the way an operator should (written
    /// beside it, then moved into place), and has the gateway look at it now.
    /// Returns whether a new card trust is in force.
    pub async fn install_crl(&self, crl_pem: &str) -> bool {
        let path = &self.config.cards.crl[0];
        let next = path.with_extension("crl.new");
        std::fs::write(&next, crl_pem).expect("write CRL");
        std::fs::rename(&next, path).expect("move CRL into place");
        self.running.reload_cards().await
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.addr.port())
    }

    pub fn pki(&self) -> &PkiFiles {
        self.engine.running.pki.as_ref().expect("dev PKI")
    }

    /// Runs `sekisho ARGS… --gateway URL --ca … --cert … --key …` as the
    /// administrator, with `stdin`. (The binary runs synchronously: a test calling
    /// this needs a multi-threaded runtime for the in-process gateway.)
    pub fn admin_cli(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        let p = self.pki();
        let (url, ca, cert, key) = (
            self.url(),
            p.ca().display().to_string(),
            p.admin_cert().display().to_string(),
            p.admin_key().display().to_string(),
        );
        let mut all: Vec<&str> = args.to_vec();
        all.extend([
            "--gateway",
            &url,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ]);
        super::sekisho(&all, stdin)
    }

    /// Every event in this gateway's journal, oldest first.
    pub async fn journal(&self) -> Vec<sekisho_policy_engine::audit::AuditEvent> {
        let db = self.running.gateway.store.db().clone();
        sekisho_gateway::journal::read_events(&db, self.running.gateway.name())
            .await
            .expect("journal")
    }

    /// Client TLS for a device (a certificate named after it, issued on first use).
    pub fn device_tls(&self, device: &str) -> ClientTls {
        device_tls(self.pki(), device)
    }

    pub async fn endpoint(&self, device: &str) -> pb::logon_client::LogonClient<Channel> {
        let channel = sekisho_gateway::tls::connect(
            &self.url(),
            &self.device_tls(device),
            Some("localhost"),
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("device connects");
        pb::logon_client::LogonClient::new(channel)
    }

    pub async fn admin(&self) -> pb::gateway_admin_client::GatewayAdminClient<Channel> {
        let p = self.pki();
        let tls = ClientTls {
            ca: p.ca(),
            cert: p.admin_cert(),
            key: p.admin_key(),
        };
        let channel = sekisho_gateway::tls::connect(
            &self.url(),
            &tls,
            Some("localhost"),
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("admin connects");
        pb::gateway_admin_client::GatewayAdminClient::new(channel)
    }

    /// Registers a device of the example city at this gateway, with a capture key
    /// (P-256) whose private half is returned.
    pub async fn register(&self, id: &str, kind: &str, caps: &[&str]) -> String {
        let key = KeyPair::generate().expect("capture key");
        self.admin()
            .await
            .register_device(pb::RegisterDeviceRequest {
                device: Some(pb::Device {
                    id: id.into(),
                    tier: self.running.tier.name().into(),
                    kind: kind.into(),
                    capabilities: caps.iter().map(|c| c.to_string()).collect(),
                    location: "test".into(),
                }),
                capture_key: key.subject_public_key_info(),
            })
            .await
            .expect("register device");
        key.serialize_pem()
    }

    pub async fn set_secret(&self, user: &str, factor: &str, secret: &str) {
        self.admin()
            .await
            .set_secret(pb::SetSecretRequest {
                user: user.into(),
                factor: factor.into(),
                secret: secret.into(),
            })
            .await
            .expect("set secret");
    }

    pub async fn enroll_card(&self, user: &str, card: &TestCard) {
        self.admin()
            .await
            .enroll_card(pb::EnrollCardRequest {
                user: user.into(),
                certificate: card.der.clone(),
            })
            .await
            .expect("enroll card");
    }

    pub async fn enroll_template(&self, user: &str, factor: &str, vector: Vec<f32>) {
        self.admin()
            .await
            .enroll_biometric(pb::EnrollBiometricRequest {
                user: user.into(),
                factor: factor.into(),
                templates: vec![pb::BiometricTemplate { vector }],
                replace: false,
            })
            .await
            .expect("enroll template");
    }

    /// Issues `user` an emergency OTP valid for two hours and returns the code.
    pub async fn issue_emergency_otp(&self, user: &str) -> String {
        self.admin()
            .await
            .issue_emergency_otp(pb::IssueEmergencyOtpRequest {
                user: user.into(),
                ttl_secs: 7200,
            })
            .await
            .expect("issue an emergency OTP")
            .into_inner()
            .code
    }

    /// Enrolls TOTP and returns the secret (decoded from the base32 the API shows).
    pub async fn enroll_totp(&self, user: &str) -> Vec<u8> {
        let r = self
            .admin()
            .await
            .enroll_totp(pb::EnrollTotpRequest {
                user: user.into(),
                algorithm: String::new(),
                digits: 0,
            })
            .await
            .expect("enroll totp")
            .into_inner();
        assert!(r.otpauth_uri.starts_with("otpauth://totp/"));
        data_encoding::BASE32_NOPAD
            .decode(r.secret_base32.as_bytes())
            .expect("base32 secret")
    }

    pub async fn stop(self) {
        self.running.shutdown().await;
        self.engine.stop().await;
    }
}

/// Client TLS for `device` from a development PKI (its certificate is issued on
/// first use).
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

/// A 512-d feature vector around a person's own centre (`seed`), with `noise`
/// scattering the capture.
pub fn vector(seed: u64, capture: u64, noise: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 2000) as f32 / 1000.0 - 1.0
    };
    let centre: Vec<f32> = (0..512).map(|_| next()).collect();
    let mut c = capture.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    centre
        .into_iter()
        .map(|x| {
            c ^= c << 13;
            c ^= c >> 7;
            c ^= c << 17;
            x + noise * ((c % 2000) as f32 / 1000.0 - 1.0)
        })
        .collect()
}
