//! The real services for one simulated day, in this process: a policy engine and one
//! gateway per tier, each on SQLite in a directory of its own, talking gRPC over
//! mutual TLS on loopback with a PKI generated at start; a staff-card CA and a
//! My Number (JPKI) test CA; and the city loaded and enrolled through the admin APIs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use sekisho_gateway::agent::{Agent, CardKey};
use sekisho_gateway::config::GatewayConfig;
use sekisho_gateway::hashing::Argon2Params;
use sekisho_gateway::server::{self as gateway_server, RunningGateway};
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::config::EngineConfig;
use sekisho_policy_engine::pki::{CertificateAuthority, PkiFiles, Usage};
use sekisho_policy_engine::server::{self as engine_server, RunningEngine};
use sekisho_policy_engine::{PolicySources, Tier};
use sekisho_proto::v1 as pb;
use tonic::transport::Channel;

use crate::city::{self, CardKind, City};
use crate::SimError;

/// Calls to a service at once during setup (enrollment, registration).
const SETUP_IN_FLIGHT: usize = 48;
const TIMEOUT: Duration = Duration::from_secs(60);

/// The demo's Argon2id cost: far below OWASP's floor, so that a whole city's password
/// and PIN checks fit a 2-core machine in a minute. Demo parameters, not for
/// production: a deployed gateway refuses them (see `Argon2Params::demo_only_weak`).
pub fn demo_argon2() -> Argon2Params {
    Argon2Params {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
        demo_only_weak: true,
    }
}

/// What the services are started with.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    pub policies: PolicySources,
    pub argon2: Argon2Params,
    pub face_threshold: f32,
    pub vein_threshold: f32,
    pub max_failures: u32,
    /// Publish even when the lint finds errors. The demo does: the lint judges every
    /// group against every device kind in the directory (a generated department with
    /// no TOTP users "is locked out of" internet VDIs it never uses), and a what-if
    /// set is meant to be looked at, not refused. The day itself shows who is stuck.
    pub force_publish: bool,
}

impl WorldOptions {
    pub fn new(policies: PolicySources) -> WorldOptions {
        WorldOptions {
            policies,
            argon2: demo_argon2(),
            face_threshold: 0.80,
            vein_threshold: 0.85,
            max_failures: 5,
            force_publish: true,
        }
    }
}

/// The running services and what the endpoints hold: card keys, capture-device
/// keys, TOTP secrets.
pub struct World {
    pub dir: PathBuf,
    pub engine: RunningEngine,
    pub gateways: BTreeMap<String, RunningGateway>,
    pub pki: PkiFiles,
    pub policy_version: String,
    /// Per person: the card the person carries.
    pub cards: Vec<Option<CardKey>>,
    /// Per person and tier: TOTP secret (only internet VDI users).
    pub totp: HashMap<usize, Vec<u8>>,
    /// Capture-device private keys (PKCS#8 PEM) by terminal.
    pub capture_keys: HashMap<String, String>,
    /// One channel per terminal to its own gateway.
    pub agents: HashMap<String, Agent>,
    pub admins: BTreeMap<String, pb::gateway_admin_client::GatewayAdminClient<Channel>>,
    pub setup: Duration,
    pub enrollment_calls: u64,
}

fn card_issuer(ca: &CertificateAuthority) -> Result<Issuer<'static, KeyPair>, SimError> {
    let key =
        KeyPair::from_pem(ca.key_pem()).map_err(|e| SimError::Setup(format!("CA key: {e}")))?;
    Issuer::from_ca_cert_pem(&ca.cert_pem(), key)
        .map_err(|e| SimError::Setup(format!("card CA: {e}")))
}

/// A card: a P-256 key pair and a certificate for `holder` from `issuer`.
fn issue_card(issuer: &Issuer<'static, KeyPair>, holder: &str) -> Result<CardKey, SimError> {
    let fail = |e: rcgen::Error| SimError::Setup(format!("card for {holder}: {e}"));
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, holder);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let cert = params.signed_by(&key, issuer).map_err(fail)?;
    Ok(CardKey {
        certificate_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
    })
}

fn rpc(what: &str) -> impl Fn(tonic::Status) -> SimError + '_ {
    move |s| SimError::Rpc(format!("{what}: {} ({:?})", s.message(), s.code()))
}

/// Runs `f` over `items` with [`SETUP_IN_FLIGHT`] calls outstanding.
async fn for_each_concurrent<T, F, Fut>(items: Vec<T>, f: F) -> Result<(), SimError>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), SimError>> + Send,
{
    let f = Arc::new(f);
    let items = Arc::new(std::sync::Mutex::new(items));
    let mut tasks = Vec::new();
    for _ in 0..SETUP_IN_FLIGHT {
        let (f, items) = (f.clone(), items.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = items.lock().ok().and_then(|mut v| v.pop());
                let Some(item) = next else { break };
                f(item).await?;
            }
            Ok::<(), SimError>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| SimError::Setup(format!("setup task: {e}")))??;
    }
    Ok(())
}

impl World {
    /// Starts everything in `dir` and enrolls `city`.
    pub async fn start(dir: &Path, city: &City, options: &WorldOptions) -> Result<World, SimError> {
        let t0 = Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| SimError::Io(dir.display().to_string(), e))?;
        let mut engine_config = EngineConfig::self_contained(dir);
        engine_config.poll_interval_secs = 3600;
        let engine = engine_server::start(&engine_config)
            .await
            .map_err(|e| SimError::Setup(format!("engine: {e}")))?;
        let pki = engine
            .pki
            .clone()
            .ok_or_else(|| SimError::Setup("the engine generated no PKI".into()))?;
        let engine_url = format!("https://127.0.0.1:{}", engine.addr.port());
        let admin_tls = ClientTls {
            ca: pki.ca(),
            cert: pki.admin_cert(),
            key: pki.admin_key(),
        };

        // The city and the policies, through the engine's admin API.
        let channel = connect(&engine_url, &admin_tls).await?;
        let mut policy_admin = pb::policy_admin_client::PolicyAdminClient::new(channel);
        let batch = city.entities();
        policy_admin
            .upsert_entities(sekisho_policy_engine::grpc::batch_to_proto(
                &sekisho_policy_engine::entities::EntityBatch {
                    groups: batch.groups.clone(),
                    devices: batch.devices.clone(),
                    ..Default::default()
                },
            ))
            .await
            .map_err(rpc("upsert groups and devices"))?;
        for chunk in batch.users.chunks(5_000) {
            policy_admin
                .upsert_entities(sekisho_policy_engine::grpc::batch_to_proto(
                    &sekisho_policy_engine::entities::EntityBatch {
                        users: chunk.to_vec(),
                        ..Default::default()
                    },
                ))
                .await
                .map_err(rpc("upsert users"))?;
        }
        let published = policy_admin
            .publish(sekisho_policy_engine::grpc::publish_request(
                options.policies.clone(),
                "sekisho demo",
                false,
                options.force_publish,
            ))
            .await
            .map_err(rpc("publish policies"))?
            .into_inner();
        let policy_version = published
            .version
            .map(|v| v.version.to_string())
            .unwrap_or_default();

        // Card CAs: staff IC cards and a test JPKI CA for My Number cards.
        let staff_ca = CertificateAuthority::generate("sekisho demo staff card CA")
            .map_err(|e| SimError::Setup(e.to_string()))?;
        let jpki_ca = CertificateAuthority::generate("sekisho demo JPKI test CA")
            .map_err(|e| SimError::Setup(e.to_string()))?;
        let staff_pem = dir.join("staff-card-ca.pem");
        let jpki_pem = dir.join("jpki-test-ca.pem");
        for (path, ca) in [(&staff_pem, &staff_ca), (&jpki_pem, &jpki_ca)] {
            std::fs::write(path, ca.cert_pem())
                .map_err(|e| SimError::Io(path.display().to_string(), e))?;
        }

        let mut gateways = BTreeMap::new();
        for tier in Tier::ALL {
            let mut config = GatewayConfig::self_contained(*tier, dir, &pki.dir, &engine_url);
            config.cards.ca = vec![staff_pem.clone()];
            config.cards.mynumber_ca = vec![jpki_pem.clone()];
            config.argon2 = options.argon2.clone();
            config.rate_limit.burst = 1_000_000;
            config.rate_limit.per_device_per_minute = 1_000_000.0;
            config.lockout.max_failures = options.max_failures;
            config.biometric.face_threshold = options.face_threshold;
            config.biometric.vein_threshold = options.vein_threshold;
            // The day's relay logons come from the simulator's own agents.
            config.telework.accept_upstream_claims = true;
            // The demo reads each gateway's journal directly at the end of the day.
            config.audit.forward = false;
            let resolved = config
                .resolve("demo", dir)
                .map_err(|e| SimError::Setup(format!("{tier} gateway config: {e}")))?;
            let running = gateway_server::start(resolved)
                .await
                .map_err(|e| SimError::Setup(format!("{tier} gateway: {e}")))?;
            gateways.insert(tier.name().to_string(), running);
        }
        let mut admins = BTreeMap::new();
        for (tier, g) in &gateways {
            let url = format!("https://127.0.0.1:{}", g.addr.port());
            admins.insert(
                tier.clone(),
                pb::gateway_admin_client::GatewayAdminClient::new(connect(&url, &admin_tls).await?),
            );
        }

        // Cards: real key pairs and certificates.
        let staff_issuer = card_issuer(&staff_ca)?;
        let jpki_issuer = card_issuer(&jpki_ca)?;
        let mut cards = Vec::with_capacity(city.people.len());
        for p in &city.people {
            cards.push(match p.card {
                CardKind::None => None,
                CardKind::Staff => Some(issue_card(&staff_issuer, &p.id)?),
                CardKind::Mynumber => Some(issue_card(&jpki_issuer, &p.id)?),
            });
        }

        // Terminals: registered at their tier's gateway, with a capture key when they
        // have a camera or a vein reader, and a device certificate each.
        let mut capture_keys = HashMap::new();
        let mut registrations = Vec::new();
        for t in &city.terminals {
            let capture_key = if t.can("face") || t.can("vein") {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| SimError::Setup(format!("capture key: {e}")))?;
                capture_keys.insert(t.id.clone(), key.serialize_pem());
                key.subject_public_key_info()
            } else {
                Vec::new()
            };
            registrations.push((
                t.tier.clone(),
                pb::RegisterDeviceRequest {
                    device: Some(pb::Device {
                        id: t.id.clone(),
                        tier: t.tier.clone(),
                        kind: t.kind.clone(),
                        capabilities: t.capabilities.clone(),
                        location: t.location.clone(),
                    }),
                    capture_key,
                },
            ));
        }
        let admins_arc = Arc::new(admins.clone());
        let a = admins_arc.clone();
        for_each_concurrent(registrations, move |(tier, request)| {
            let mut admin = a.get(&tier).cloned();
            async move {
                let admin = admin
                    .as_mut()
                    .ok_or_else(|| SimError::Setup(format!("no gateway for tier {tier}")))?;
                admin
                    .register_device(request)
                    .await
                    .map_err(rpc("register device"))?;
                Ok(())
            }
        })
        .await?;

        // Enrollment through GatewayAdmin, on each tier a person uses.
        let mut jobs: Vec<(String, Enroll)> = Vec::new();
        let mut totp_users = Vec::new();
        for (i, p) in city.people.iter().enumerate() {
            let mut tiers = vec!["lgwan"];
            if p.mynumber_device.is_some() {
                tiers.push("mynumber");
            }
            if p.internet_device.is_some() {
                tiers.push("internet");
            }
            if p.telework_device.is_some() {
                tiers.push("telework");
            }
            for tier in tiers {
                let job = |e: Enroll| (tier.to_string(), e);
                jobs.push(job(Enroll::Secret(
                    p.id.clone(),
                    "password",
                    p.password(city.seed),
                )));
                if p.pin && (tier == "lgwan" || tier == "mynumber") {
                    jobs.push(job(Enroll::Secret(p.id.clone(), "pin", p.pin(city.seed))));
                }
                if let Some(card) = &cards[i] {
                    if tier != "telework" {
                        jobs.push(job(Enroll::Card(
                            p.id.clone(),
                            card.certificate_der.clone(),
                        )));
                    }
                }
                if p.face && tier != "internet" {
                    jobs.push(job(Enroll::Bio(
                        p.id.clone(),
                        "face",
                        city::template(city, i, "face"),
                    )));
                }
                if p.vein && tier == "mynumber" {
                    jobs.push(job(Enroll::Bio(
                        p.id.clone(),
                        "vein",
                        city::template(city, i, "vein"),
                    )));
                }
                if p.totp && tier == "internet" {
                    totp_users.push(i);
                }
            }
        }
        let enrollment_calls = (jobs.len() + totp_users.len()) as u64;
        let a = admins_arc.clone();
        for_each_concurrent(jobs, move |(tier, job)| {
            let admin = a.get(&tier).cloned();
            async move {
                let mut admin =
                    admin.ok_or_else(|| SimError::Setup(format!("no gateway for tier {tier}")))?;
                job.run(&mut admin).await
            }
        })
        .await?;
        let secrets = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let a = admins_arc.clone();
        let s = secrets.clone();
        let ids: Vec<(usize, String)> = totp_users
            .iter()
            .map(|&i| (i, city.people[i].id.clone()))
            .collect();
        for_each_concurrent(ids, move |(i, user)| {
            let admin = a.get("internet").cloned();
            let s = s.clone();
            async move {
                let mut admin =
                    admin.ok_or_else(|| SimError::Setup("no internet gateway".into()))?;
                let r = admin
                    .enroll_totp(pb::EnrollTotpRequest {
                        user,
                        algorithm: String::new(),
                        digits: 0,
                    })
                    .await
                    .map_err(rpc("enroll totp"))?
                    .into_inner();
                let secret = data_encoding::BASE32_NOPAD
                    .decode(r.secret_base32.as_bytes())
                    .map_err(|e| SimError::Setup(format!("TOTP secret: {e}")))?;
                if let Ok(mut m) = s.lock() {
                    m.insert(i, secret);
                }
                Ok(())
            }
        })
        .await?;
        let totp = secrets.lock().map(|m| m.clone()).unwrap_or_default();

        // One mutual-TLS channel per terminal, with its own device certificate; a
        // city has thousands, so they are issued and connected concurrently.
        let mut jobs = Vec::with_capacity(city.terminals.len());
        for t in &city.terminals {
            let url = gateways
                .get(&t.tier)
                .map(|g| format!("https://127.0.0.1:{}", g.addr.port()))
                .ok_or_else(|| SimError::Setup(format!("no gateway for tier {}", t.tier)))?;
            jobs.push((t.id.clone(), url));
        }
        let connected = Arc::new(std::sync::Mutex::new(HashMap::new()));
        for_each_concurrent(jobs, {
            let (pki, connected) = (pki.clone(), connected.clone());
            move |(id, url): (String, String)| {
                let (pki, connected) = (pki.clone(), connected.clone());
                async move {
                    let tls = device_tls(&pki, &id)?;
                    let agent = Agent::from_channel(connect(&url, &tls).await?);
                    connected
                        .lock()
                        .map_err(|_| SimError::Setup("agent table poisoned".into()))?
                        .insert(id, agent);
                    Ok(())
                }
            }
        })
        .await?;
        let agents = std::mem::take(
            &mut *connected
                .lock()
                .map_err(|_| SimError::Setup("agent table poisoned".into()))?,
        );

        Ok(World {
            dir: dir.to_path_buf(),
            engine,
            gateways,
            pki,
            policy_version,
            cards,
            totp,
            capture_keys,
            agents,
            admins,
            setup: t0.elapsed(),
            enrollment_calls,
        })
    }

    pub fn gateway_url(&self, tier: &str) -> Option<String> {
        self.gateways
            .get(tier)
            .map(|g| format!("https://127.0.0.1:{}", g.addr.port()))
    }

    /// An agent for `device` talking to another tier's gateway (the wrong-tier attack).
    pub async fn foreign_agent(&self, device: &str, tier: &str) -> Result<Agent, SimError> {
        let url = self
            .gateway_url(tier)
            .ok_or_else(|| SimError::Setup(format!("no gateway for tier {tier}")))?;
        let tls = device_tls(&self.pki, device)?;
        Ok(Agent::from_channel(connect(&url, &tls).await?))
    }

    /// Every gateway's journal, in seq order per gateway.
    pub async fn journals(
        &self,
    ) -> Result<Vec<sekisho_policy_engine::audit::AuditEvent>, SimError> {
        let mut all = Vec::new();
        for g in self.gateways.values() {
            g.gateway
                .journal
                .flush()
                .await
                .map_err(|e| SimError::Setup(format!("journal flush: {e}")))?;
            let journals = sekisho_gateway::journal::Journals::of(g.gateway.store.db());
            for id in journals
                .list()
                .await
                .map_err(|e| SimError::Setup(format!("journal list: {e}")))?
            {
                all.extend(
                    journals
                        .all_events(&id)
                        .await
                        .map_err(|e| SimError::Setup(format!("journal read: {e}")))?,
                );
            }
        }
        Ok(all)
    }

    pub async fn shutdown(self) {
        for (_, g) in self.gateways {
            g.shutdown().await;
        }
        if let Err(e) = self.engine.shutdown().await {
            tracing::warn!(error = %e, "engine shutdown");
        }
    }
}

enum Enroll {
    Secret(String, &'static str, String),
    Card(String, Vec<u8>),
    Bio(String, &'static str, Vec<f32>),
}

impl Enroll {
    async fn run(
        self,
        admin: &mut pb::gateway_admin_client::GatewayAdminClient<Channel>,
    ) -> Result<(), SimError> {
        match self {
            Enroll::Secret(user, factor, secret) => {
                admin
                    .set_secret(pb::SetSecretRequest {
                        user,
                        factor: factor.into(),
                        secret,
                    })
                    .await
                    .map_err(rpc("set secret"))?;
            }
            Enroll::Card(user, certificate) => {
                admin
                    .enroll_card(pb::EnrollCardRequest { user, certificate })
                    .await
                    .map_err(rpc("enroll card"))?;
            }
            Enroll::Bio(user, factor, vector) => {
                admin
                    .enroll_biometric(pb::EnrollBiometricRequest {
                        user,
                        factor: factor.into(),
                        templates: vec![pb::BiometricTemplate { vector }],
                        replace: true,
                    })
                    .await
                    .map_err(rpc("enroll biometric"))?;
            }
        }
        Ok(())
    }
}

/// Client TLS for `device` from the generated PKI (certificate issued on first use).
pub fn device_tls(pki: &PkiFiles, device: &str) -> Result<ClientTls, SimError> {
    let (cert, key) = pki
        .ensure_leaf(&format!("device-{device}"), device, &[], Usage::Client)
        .map_err(|e| SimError::Setup(format!("device certificate for {device}: {e}")))?;
    Ok(ClientTls {
        ca: pki.ca(),
        cert,
        key,
    })
}

pub async fn connect(url: &str, tls: &ClientTls) -> Result<Channel, SimError> {
    sekisho_gateway::tls::connect(url, tls, Some("localhost"), TIMEOUT)
        .await
        .map_err(|e| SimError::Setup(format!("connect {url}: {e}")))
}
