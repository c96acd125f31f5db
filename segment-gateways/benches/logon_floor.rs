//! The floor under `logon_load`: the same load generator, the same gRPC legs over
//! mutual TLS per logon (endpoint → gateway Begin and Complete, gateway → engine
//! Plan and Authorize through the gateway's own `Decider`, batched on one decision
//! stream) and the same factor checks (`card::verify`: the card
//! certificate's chain and its signature over the nonce; `totp::verify`), but
//! servers that do nothing else: users in a `HashMap` instead of the credential
//! store, a canned plan and decision instead of Cedar, no journal, no sessions, no
//! lockout.
//!
//!   cargo bench -p sekisho-gateway --bench logon_floor
//!
//! Run next to `logon_load` (same environment variables, same machine, same
//! moment), it says how much of a logon's cost is transport and cryptography that
//! any implementation of this design pays on this machine, and so what the rest
//! (store, journal, policy, bookkeeping) may cost for a rate to be reachable.

mod common;

/// The allocator of the `sekisho` binary, as in `logon_load`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{card_key_pair, drive, runtimes, BenchUser, CardIssuer, LoadSettings, Pool, TIMEOUT};
use futures::Stream;
use rustls_pki_types::{CertificateDer, UnixTime};
use sekisho_gateway::decide::{Decider, Subject};
use sekisho_gateway::factors::card::{self, CardTrust};
use sekisho_gateway::factors::totp::{self, TotpParams};
use sekisho_gateway::tls::ClientTls;
use sekisho_policy_engine::pki::PkiFiles;
use sekisho_policy_engine::{Action, Factor, FactorSet, Tier, Via};
use sekisho_proto::v1 as pb;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const POLICY_VERSION: &str = "floor";

fn card_and_totp() -> pb::FactorSet {
    pb::FactorSet {
        factors: vec!["card".into(), "totp".into()],
    }
}

/// The engine's part: a plan and an allow, with no policy evaluated.
struct FloorEngine;

fn canned_plan() -> pb::PlanResponse {
    pb::PlanResponse {
        options: vec![card_and_totp()],
        unavailable: Vec::new(),
        policy_version: POLICY_VERSION.into(),
    }
}

fn canned_allow() -> pb::AuthorizeResponse {
    pb::AuthorizeResponse {
        decision: pb::Decision::Allow as i32,
        policy_ids: vec!["bench-card-totp".into()],
        policy_version: POLICY_VERSION.into(),
        errors: Vec::new(),
    }
}

/// A batch answered with the canned plan and allow.
fn canned(batch: pb::DecideRequest) -> pb::DecideResponse {
    use pb::decision_answer::Answer;
    use pb::decision_call::Call;
    let answers = batch
        .calls
        .into_iter()
        .map(|call| pb::DecisionAnswer {
            answer: Some(match call.call {
                Some(Call::Plan(_)) => Answer::Plan(canned_plan()),
                Some(Call::Authorize(_)) => Answer::Authorize(canned_allow()),
                None => Answer::Failure(pb::DecisionFailure {
                    code: tonic::Code::InvalidArgument as i32,
                    message: "empty call".into(),
                }),
            }),
        })
        .collect();
    pb::DecideResponse { answers }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::policy_decision_server::PolicyDecision for FloorEngine {
    async fn plan(
        &self,
        _: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        Ok(Response::new(canned_plan()))
    }

    async fn authorize(
        &self,
        _: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        Ok(Response::new(canned_allow()))
    }

    type DecideStreamStream = Boxed<pb::DecideResponse>;

    /// What the floor's gateway uses, through the real `Decider`, as the gateway
    /// does: batches on one stream.
    async fn decide_stream(
        &self,
        request: Request<tonic::Streaming<pb::DecideRequest>>,
    ) -> Result<Response<Self::DecideStreamStream>, Status> {
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            request.into_inner(),
            |batch| batch.map(canned),
        ))))
    }

    type WatchPolicyStream = Boxed<pb::PolicyVersionInfo>;

    async fn watch_policy(
        &self,
        _: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        Err(Status::unimplemented("floor"))
    }

    type WatchRevocationsStream = Boxed<pb::Revocation>;

    async fn watch_revocations(
        &self,
        _: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

struct Enrolled {
    card: CertificateDer<'static>,
    totp_secret: Vec<u8>,
    last_step: Option<u64>,
}

struct Open {
    user: String,
    nonce: [u8; 32],
}

/// The gateway's part: a challenge with a card nonce, the two factor checks, and
/// the engine's Plan and Authorize.
struct FloorGateway {
    engine: Decider,
    trust: CardTrust,
    users: Mutex<HashMap<String, Enrolled>>,
    open: Mutex<HashMap<String, Open>>,
}

fn random<const N: usize>() -> Result<[u8; N], Status> {
    sekisho_gateway::crypto::random_bytes::<N>().map_err(|_| Status::internal("no randomness"))
}

#[tonic::async_trait]
impl pb::logon_server::Logon for FloorGateway {
    async fn begin(
        &self,
        request: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::Challenge>, Status> {
        let r = request.into_inner();
        let plan = self
            .engine
            .plan(
                &subject(&r.user, &r.request_id),
                FactorSet::EMPTY.with(Factor::Card).with(Factor::Totp),
                false,
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let nonce = random::<32>()?;
        let id = hex::encode(random::<16>()?);
        self.open.lock().unwrap().insert(
            id.clone(),
            Open {
                user: r.user,
                nonce,
            },
        );
        Ok(Response::new(pb::Challenge {
            challenge_id: id,
            options: plan.options,
            unavailable: plan.unavailable,
            nonces: HashMap::from([("card".to_string(), nonce.to_vec())]),
            expires_at_unix_ms: 0,
            policy_version: plan.policy_version,
            action: "logon".into(),
        }))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::LogonResult>, Status> {
        let r = request.into_inner();
        let open = self
            .open
            .lock()
            .unwrap()
            .remove(&r.challenge_id)
            .ok_or_else(|| Status::not_found("challenge"))?;
        let (mut card_ok, mut totp_ok) = (false, false);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        for proof in r.proofs {
            match proof.proof {
                Some(pb::proof::Proof::Card(p)) => {
                    let enrolled = self.users.lock().unwrap()[&open.user].card.clone();
                    card_ok = card::verify(
                        &self.trust,
                        &[enrolled],
                        &p.certificate,
                        &open.nonce,
                        &p.signature,
                        UnixTime::since_unix_epoch(now),
                    )
                    .is_ok();
                }
                Some(pb::proof::Proof::Totp(code)) => {
                    let (secret, last) = {
                        let users = self.users.lock().unwrap();
                        let u = &users[&open.user];
                        (u.totp_secret.clone(), u.last_step)
                    };
                    if let Ok(step) =
                        totp::verify(&secret, &TotpParams::default(), &code, now.as_secs(), last)
                    {
                        let mut users = self.users.lock().unwrap();
                        let u = users.get_mut(&open.user).expect("user");
                        // Two logons of one user racing: the later step wins, as
                        // the real commit's guard would let only one through.
                        totp_ok = u.last_step.is_none_or(|l| step > l);
                        u.last_step = Some(step);
                    }
                }
                _ => {}
            }
        }
        let mut result = pb::LogonResult {
            decision: pb::Decision::Deny as i32,
            factors: vec![factor("card", card_ok), factor("totp", totp_ok)],
            policy_version: POLICY_VERSION.into(),
            ..Default::default()
        };
        if card_ok && totp_ok {
            let decided = self
                .engine
                .authorize(
                    &subject(&open.user, &r.request_id),
                    FactorSet::EMPTY.with(Factor::Card).with(Factor::Totp),
                )
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            result.decision = if decided.allowed {
                pb::Decision::Allow
            } else {
                pb::Decision::Deny
            } as i32;
            result.policy_ids = decided.policy_ids;
            result.session_id = hex::encode(random::<16>()?);
        } else {
            result.reason = "factor_failed".into();
        }
        Ok(Response::new(result))
    }

    async fn unlock(
        &self,
        _: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::LogonResult>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn lock(
        &self,
        _: Request<pb::SessionRequest>,
    ) -> Result<Response<pb::SessionState>, Status> {
        Err(Status::unimplemented("floor"))
    }

    async fn logoff(
        &self,
        _: Request<pb::SessionRequest>,
    ) -> Result<Response<pb::SessionState>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

fn subject<'a>(user: &'a str, request_id: &'a str) -> Subject<'a> {
    Subject {
        user,
        device: "",
        action: Action::Logon,
        via: Via::Console,
        upstream: FactorSet::EMPTY,
        request_id,
    }
}

fn factor(name: &str, ok: bool) -> pb::FactorResult {
    pb::FactorResult {
        factor: name.into(),
        ok,
        reason: if ok { String::new() } else { "mismatch".into() },
    }
}

/// A mutual-TLS listener on a loopback port, as the engine and gateway have.
async fn listen(pki: &PkiFiles) -> (tokio::net::TcpListener, ServerTlsConfig) {
    let read = |p: std::path::PathBuf| std::fs::read(p).expect("PKI file");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(pki.server_cert()),
            read(pki.server_key()),
        ))
        .client_ca_root(Certificate::from_pem(read(pki.ca())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    (listener, tls)
}

fn main() {
    sekisho_policy_engine::server::install_crypto_provider();
    let settings = LoadSettings::from_env();
    let dir = tempfile::tempdir().expect("temp dir");
    let (pki, _) = PkiFiles::ensure(dir.path(), &["localhost"]).expect("PKI");

    let (server_rt, client_rt) = runtimes();

    let card_ca = CardIssuer::new(dir.path());
    let mut users = Vec::with_capacity(settings.users);
    let mut enrolled = HashMap::with_capacity(settings.users);
    for i in 0..settings.users {
        let id = format!("b{:05}", i + 1);
        let (der, key) = card_ca.issue(&id);
        let secret = totp::new_secret(&TotpParams::default()).expect("TOTP secret");
        enrolled.insert(
            id.clone(),
            Enrolled {
                card: CertificateDer::from(der.clone()),
                totp_secret: secret.clone(),
                last_step: None,
            },
        );
        users.push(BenchUser {
            id,
            card_der: der,
            card_key: card_key_pair(&key),
            totp_secret: secret,
        });
    }
    let trust = CardTrust::from_pem_files(std::slice::from_ref(&card_ca.pem_file), &[], &[])
        .expect("trust");

    let gateway_url = server_rt.block_on(async {
        let (listener, tls) = listen(&pki).await;
        let engine_url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        tokio::spawn(
            Server::builder()
                .tls_config(tls)
                .expect("engine TLS")
                .add_service(pb::policy_decision_server::PolicyDecisionServer::new(
                    FloorEngine,
                ))
                .serve_with_incoming(sekisho_policy_engine::transport::incoming(listener)),
        );
        let engine_tls = ClientTls {
            ca: pki.ca(),
            cert: pki.gateway_cert(),
            key: pki.gateway_key(),
        };
        let channel =
            sekisho_gateway::tls::connect(&engine_url, &engine_tls, Some("localhost"), TIMEOUT)
                .await
                .expect("connect to the floor engine");
        let gateway = FloorGateway {
            engine: Decider::remote(channel, Tier::Internet, TIMEOUT),
            trust,
            users: Mutex::new(enrolled),
            open: Mutex::new(HashMap::new()),
        };
        let (listener, tls) = listen(&pki).await;
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        tokio::spawn(
            Server::builder()
                .tls_config(tls)
                .expect("gateway TLS")
                .add_service(pb::logon_server::LogonServer::new(gateway))
                .serve_with_incoming(sekisho_policy_engine::transport::incoming(listener)),
        );
        url
    });
    let devices: Vec<String> = (0..settings.channels)
        .map(|i| format!("floor-pc-{:03}", i + 1))
        .collect();
    let pool = Arc::new(Pool::new(users));
    println!(
        "floor: {} users with a P-256 card and TOTP in memory; canned Plan and Authorize; no store, journal or policy",
        settings.users
    );
    drive(&client_rt, &gateway_url, &pki, &devices, &pool, &settings);
}
