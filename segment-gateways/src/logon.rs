//! The logon flow, top to bottom: Begin (plan → challenge), Complete and Unlock
//! (each proof → its verifier → authorize → lockout → session), Lock and Logoff.
//!
//! Transport-free: the gRPC layer identifies the device from its certificate and
//! maps [`LogonError`] to a status. Nothing here reaches back up.
//!
//! What a response may reveal is decided here. An unknown user gets the plan of a
//! stand-in user from the engine, fails every proof the way a wrong credential fails
//! (absence is `mismatch`, or `card_not_enrolled` for a card), is counted towards a
//! lockout like anyone else, and is never told "locked".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::UnixTime;
use sekisho_policy_engine::{Action, DeviceKind, Factor, FactorSet, Via};
use sekisho_proto::v1 as pb;

use crate::challenge::{Challenge, ChallengeError, Challenges, CARD_NONCE};
use crate::credentials::{CredentialError, CredentialStore, GatewayDevice};
use crate::db::now_ms;
use crate::decide::{DecideError, Decider, Subject};
use crate::factors::biometric::{self, BiometricFactor};
use crate::factors::card::{self, CardKind, CardTrust};
use crate::factors::password::PasswordVerifier;
use crate::factors::{emergency_otp, pin, totp, Failure};
use crate::hashing::SecretHasher;
use crate::lockout::{self, LockoutPolicy};
use crate::ratelimit::RateLimiter;
use crate::session::{self, SessionState};

/// Errors that are not a deny: the request itself was wrong, or the gateway could
/// not answer. A deny is an `Ok(LogonResult)`.
#[derive(Debug, thiserror::Error)]
pub enum LogonError {
    #[error("{0}")]
    BadRequest(String),
    #[error("device '{device}' is not registered to tier '{tier}'")]
    DeviceNotRegistered { device: String, tier: &'static str },
    #[error(
        "the request names device '{named}' but the client certificate is for '{certificate}'"
    )]
    DeviceMismatch { named: String, certificate: String },
    #[error("too many logon attempts from device '{0}': wait a moment")]
    RateLimited(String),
    #[error("no session '{0}' on this device")]
    NoSession(String),
    #[error("the gateway has too many open challenges: try again shortly")]
    Busy,
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Store(#[from] sekisho_policy_engine::store::StoreError),
}

/// Stable deny reasons (the `reason` field of a LogonResult).
pub mod reason {
    pub const FACTOR_FAILED: &str = "factor_failed";
    pub const INSUFFICIENT_FACTORS: &str = "insufficient_factors";
    pub const LOCKED: &str = "locked";
    pub const CHALLENGE_INVALID: &str = "challenge_invalid";
    pub const NOT_SESSION_USER: &str = "not_session_user";
    pub const NO_SESSION: &str = "no_session";
}

/// Settings the flow needs, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct FlowSettings {
    pub lockout: LockoutPolicy,
    pub face_threshold: f32,
    pub vein_threshold: f32,
}

/// Everything a logon needs, shared by the gRPC services.
pub struct Gateway {
    pub store: CredentialStore,
    pub decider: Decider,
    pub challenges: Challenges,
    pub rate: RateLimiter,
    pub hasher: SecretHasher,
    pub passwords: PasswordVerifier,
    pub cards: Option<Arc<CardTrust>>,
    pub settings: FlowSettings,
}

/// One proof's outcome.
struct Checked {
    /// The factors it proves (a My Number card proves `card` and `mynumber_card`).
    proves: FactorSet,
    /// The factor name reported back.
    factor: Factor,
    result: Result<(), Failure>,
}

impl Gateway {
    fn tier_name(&self) -> &'static str {
        self.store.db().tier().name()
    }

    async fn registered_device(&self, device: &str) -> Result<GatewayDevice, LogonError> {
        self.store
            .device(device)
            .await?
            .ok_or_else(|| LogonError::DeviceNotRegistered {
                device: device.to_string(),
                tier: self.tier_name(),
            })
    }

    /// Begin: the plan's options for this user here, and the nonces to sign.
    pub async fn begin(
        &self,
        device_id: &str,
        request: pb::BeginRequest,
        request_id: &str,
    ) -> Result<pb::Challenge, LogonError> {
        if !request.device.is_empty() && request.device != device_id {
            return Err(LogonError::DeviceMismatch {
                named: request.device,
                certificate: device_id.to_string(),
            });
        }
        if request.user.is_empty() || request.user.len() > 256 {
            return Err(LogonError::BadRequest("user must be 1 to 256 bytes".into()));
        }
        let action = parse_action(&request.action)?;
        let via = parse_via(&request.via)?;
        let upstream = FactorSet::parse_names(&request.upstream)
            .map_err(|e| LogonError::BadRequest(format!("upstream: {e}")))?;
        if !self.rate.allow(device_id) {
            return Err(LogonError::RateLimited(device_id.to_string()));
        }
        self.registered_device(device_id).await?;
        let enrollment = self
            .store
            .enrollment(&request.user, self.passwords.is_directory())
            .await?;
        let subject = Subject {
            user: &request.user,
            device: device_id,
            action,
            via,
            upstream,
            request_id,
        };
        let plan = self
            .decider
            .plan(
                &subject,
                enrollment.factors,
                enrollment.emergency_otp_active,
            )
            .await?;

        let mut wanted = FactorSet::EMPTY;
        for option in &plan.options {
            wanted = wanted.union(
                FactorSet::parse_names(&option.factors)
                    .map_err(|e| LogonError::Decide(DecideError::Refused(e.to_string())))?,
            );
        }
        let mut nonces = HashMap::new();
        for (factor, name) in [
            (Factor::Card, CARD_NONCE),
            (Factor::MynumberCard, CARD_NONCE),
            (Factor::Face, "face"),
            (Factor::Vein, "vein"),
        ] {
            if wanted.contains(factor) && !nonces.contains_key(name) {
                nonces.insert(name, Challenges::nonce().map_err(|_| LogonError::Busy)?);
            }
        }
        let ttl = self.challenges.ttl();
        let expires_at_ms =
            now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let challenge = Challenge {
            device: device_id.to_string(),
            user: request.user.clone(),
            action,
            via,
            upstream,
            nonces: nonces.clone(),
            policy_version: plan.policy_version.clone(),
            expires: Instant::now() + ttl,
            expires_at_ms,
        };
        let id = self.challenges.insert(challenge).map_err(|e| match e {
            ChallengeError::Full | ChallengeError::Invalid => LogonError::Busy,
        })?;
        Ok(pb::Challenge {
            challenge_id: id,
            options: plan.options,
            unavailable: plan.unavailable,
            nonces: nonces
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            expires_at_unix_ms: expires_at_ms,
            policy_version: plan.policy_version,
            action: action.name().into(),
        })
    }

    /// Complete (logon, elevate) or Unlock (unlock, switch_operator): verify, decide,
    /// and apply the outcome to the lockout and the device's session.
    pub async fn complete(
        &self,
        device_id: &str,
        request: pb::CompleteRequest,
        unlock: bool,
        request_id: &str,
    ) -> Result<pb::LogonResult, LogonError> {
        let challenge = match self.challenges.take(&request.challenge_id, device_id) {
            Ok(c) if is_unlock(c.action) == unlock => c,
            _ => return Ok(deny(reason::CHALLENGE_INVALID, String::new(), Vec::new())),
        };
        let device = self.registered_device(device_id).await?;
        let user = challenge.user.as_str();
        let now = now_ms();

        let checked = self
            .check_proofs(&challenge, &device, request.proofs)
            .await?;
        let results = factor_results(&checked);
        let version = challenge.policy_version.clone();
        if checked.is_empty() {
            return Ok(deny(reason::INSUFFICIENT_FACTORS, version, results));
        }
        if checked.iter().any(|c| c.result.is_err()) {
            let newly =
                lockout::record_failure(self.store.db(), user, self.settings.lockout, now).await?;
            if let Some(until) = newly {
                tracing::warn!(
                    user,
                    device = device_id,
                    locked_until_ms = until,
                    "user locked out after repeated failures"
                );
            }
            return Ok(deny(reason::FACTOR_FAILED, version, results));
        }
        let verified = checked
            .iter()
            .fold(FactorSet::EMPTY, |acc, c| acc.union(c.proves));
        let subject = Subject {
            user,
            device: device_id,
            action: challenge.action,
            via: challenge.via,
            upstream: challenge.upstream,
            request_id,
        };
        let decision = self.decider.authorize(&subject, verified).await?;
        if !decision.allowed {
            let mut r = deny(
                reason::INSUFFICIENT_FACTORS,
                decision.policy_version,
                results,
            );
            r.policy_ids = decision.policy_ids;
            return Ok(r);
        }
        // Only now, with a factor set that would have been accepted, is "locked"
        // said: a guesser never learns it.
        let standing = lockout::standing(self.store.db(), user).await?;
        if let Some(until) = standing.locked_at(now) {
            let mut r = deny(reason::LOCKED, decision.policy_version, results);
            r.locked_until_unix_ms = Some(until);
            return Ok(r);
        }
        if standing.failures > 0 {
            lockout::forget(self.store.db(), user).await?;
        }

        let session = match challenge.action {
            Action::Logon => Some(session::open(self.store.db(), device_id, user, now).await?),
            Action::Unlock | Action::SwitchOperator => {
                let Some(current) = session::current(self.store.db(), device_id).await? else {
                    return Ok(deny(reason::NO_SESSION, decision.policy_version, results));
                };
                // Another user may take over only a shared counter terminal; elsewhere
                // the session's own user gets it back.
                let operator = if user == current.operator {
                    None
                } else if device.kind == DeviceKind::Shared || user == current.user {
                    Some(user)
                } else {
                    return Ok(deny(
                        reason::NOT_SESSION_USER,
                        decision.policy_version,
                        results,
                    ));
                };
                session::update(
                    self.store.db(),
                    &current.id,
                    SessionState::Active,
                    operator,
                    now,
                )
                .await?
            }
            Action::Elevate | Action::Presence => {
                session::current(self.store.db(), device_id).await?
            }
        };
        tracing::info!(user, device = device_id, action = challenge.action.name(), factors = ?verified.names(), policy_version = %decision.policy_version, "allowed");
        Ok(pb::LogonResult {
            decision: pb::Decision::Allow as i32,
            factors: results,
            policy_version: decision.policy_version,
            policy_ids: decision.policy_ids,
            session_id: session.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
            reason: String::new(),
            locked_until_unix_ms: None,
            operator: session
                .map(|s| s.operator)
                .unwrap_or_else(|| user.to_string()),
        })
    }

    /// Lock or Logoff a session of this device.
    pub async fn set_session(
        &self,
        device_id: &str,
        session_id: &str,
        state: SessionState,
    ) -> Result<pb::SessionState, LogonError> {
        self.registered_device(device_id).await?;
        let no_session = || LogonError::NoSession(session_id.to_string());
        match session::get(self.store.db(), session_id).await? {
            Some(s) if s.device == device_id && s.state != SessionState::Ended => {}
            _ => return Err(no_session()),
        }
        let s = session::update(self.store.db(), session_id, state, None, now_ms())
            .await?
            .ok_or_else(no_session)?;
        Ok(pb::SessionState {
            session_id: s.id,
            device: s.device,
            user: s.user,
            operator: s.operator,
            state: s.state.name().into(),
        })
    }

    /// Runs every proof through its verifier. Each factor may be proved once.
    async fn check_proofs(
        &self,
        challenge: &Challenge,
        device: &GatewayDevice,
        proofs: Vec<pb::Proof>,
    ) -> Result<Vec<Checked>, LogonError> {
        let user = challenge.user.as_str();
        let mut out: Vec<Checked> = Vec::with_capacity(proofs.len());
        for proof in proofs {
            let Some(proof) = proof.proof else {
                return Err(LogonError::BadRequest("a proof is empty".into()));
            };
            let factor = proof_factor(&proof);
            if out.iter().any(|c| c.factor == factor) {
                return Err(LogonError::BadRequest(format!(
                    "factor '{}' is proved more than once",
                    factor.name()
                )));
            }
            let mut proves = FactorSet::EMPTY.with(factor);
            let result = match proof {
                pb::proof::Proof::Password(pw) => {
                    let stored = if self.passwords.is_directory() {
                        None
                    } else {
                        self.store.secret(user, Factor::Password).await?
                    };
                    self.passwords.verify(user, &pw, stored.as_deref()).await
                }
                pb::proof::Proof::Pin(p) => {
                    let stored = self.store.secret(user, Factor::Pin).await?;
                    let hasher = self.hasher.clone();
                    tokio::task::spawn_blocking(move || pin::verify(&hasher, &p, stored.as_deref()))
                        .await
                        .unwrap_or(Err(Failure::Unavailable))
                }
                pb::proof::Proof::Totp(code) => self.check_totp(user, &code).await?,
                pb::proof::Proof::EmergencyOtp(code) => {
                    self.check_emergency_otp(user, &code).await?
                }
                pb::proof::Proof::Card(c) => match self.check_card(challenge, &c).await? {
                    Ok(CardKind::MyNumber) => {
                        proves = proves.with(Factor::MynumberCard);
                        Ok(())
                    }
                    Ok(CardKind::Card) => Ok(()),
                    Err(f) => Err(f),
                },
                pb::proof::Proof::Face(b) => {
                    self.check_biometric(challenge, device, BiometricFactor::Face, &b)
                        .await?
                }
                pb::proof::Proof::Vein(b) => {
                    self.check_biometric(challenge, device, BiometricFactor::Vein, &b)
                        .await?
                }
            };
            if let Err(f) = result {
                tracing::info!(user, device = %device.id, factor = factor.name(), failure = f.code(), "factor failed");
            }
            out.push(Checked {
                proves,
                factor,
                result,
            });
        }
        Ok(out)
    }

    async fn check_totp(&self, user: &str, code: &str) -> Result<Result<(), Failure>, LogonError> {
        let Some(cred) = self.store.totp(user).await? else {
            return Ok(Err(Failure::Mismatch));
        };
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let step = match totp::verify(&cred.secret, &cred.params, code, now, cred.last_step) {
            Ok(step) => step,
            Err(f) => return Ok(Err(f)),
        };
        // Two logons racing with the same code: only one records the step.
        Ok(if self.store.accept_totp_step(user, step).await? {
            Ok(())
        } else {
            Err(Failure::Replayed)
        })
    }

    async fn check_emergency_otp(
        &self,
        user: &str,
        code: &str,
    ) -> Result<Result<(), Failure>, LogonError> {
        let row = self.store.emergency_otp(user).await?;
        let stored = row.as_ref().map(|r| emergency_otp::StoredOtp {
            hash: &r.code_hash,
            expires_at_unix: r.expires_at_ms / 1000,
            used: r.used,
        });
        if let Err(f) = emergency_otp::verify(code, stored, now_ms() / 1000) {
            return Ok(Err(f));
        }
        Ok(if self.store.use_emergency_otp(user).await? {
            Ok(())
        } else {
            Err(Failure::Replayed)
        })
    }

    async fn check_card(
        &self,
        challenge: &Challenge,
        proof: &pb::CardProof,
    ) -> Result<Result<CardKind, Failure>, LogonError> {
        let Some(nonce) = challenge.nonces.get(CARD_NONCE) else {
            return Ok(Err(Failure::NotRequested));
        };
        let enrolled: Vec<rustls_pki_types::CertificateDer<'static>> = self
            .store
            .cards(&challenge.user)
            .await?
            .into_iter()
            .map(|c| c.certificate.into())
            .collect();
        let Some(trust) = &self.cards else {
            // No card CA configured on this tier: no card can be trusted.
            return Ok(
                if enrolled
                    .iter()
                    .any(|c| c.as_ref() == proof.certificate.as_slice())
                {
                    Err(Failure::UntrustedCertificate)
                } else {
                    Err(Failure::CardNotEnrolled)
                },
            );
        };
        Ok(card::verify(
            trust,
            &enrolled,
            &proof.certificate,
            nonce,
            &proof.signature,
            UnixTime::now(),
        ))
    }

    async fn check_biometric(
        &self,
        challenge: &Challenge,
        device: &GatewayDevice,
        factor: BiometricFactor,
        proof: &pb::BiometricProof,
    ) -> Result<Result<(), Failure>, LogonError> {
        let Some(nonce) = challenge.nonces.get(factor.name()) else {
            return Ok(Err(Failure::NotRequested));
        };
        let Some(key) = &device.capture_key else {
            return Ok(Err(Failure::BadDeviceSignature));
        };
        if let Err(f) =
            biometric::verify_capture(key, factor, nonce, &proof.vector, &proof.signature)
        {
            return Ok(Err(f));
        }
        let templates = self.store.templates(&challenge.user, factor).await?;
        let threshold = match factor {
            BiometricFactor::Face => self.settings.face_threshold,
            BiometricFactor::Vein => self.settings.vein_threshold,
        };
        Ok(biometric::best_match(&proof.vector, &templates, threshold).map(|_| ()))
    }
}

fn is_unlock(action: Action) -> bool {
    matches!(action, Action::Unlock | Action::SwitchOperator)
}

fn proof_factor(proof: &pb::proof::Proof) -> Factor {
    match proof {
        pb::proof::Proof::Password(_) => Factor::Password,
        pb::proof::Proof::Pin(_) => Factor::Pin,
        pb::proof::Proof::Totp(_) => Factor::Totp,
        pb::proof::Proof::EmergencyOtp(_) => Factor::EmergencyOtp,
        pb::proof::Proof::Card(_) => Factor::Card,
        pb::proof::Proof::Face(_) => Factor::Face,
        pb::proof::Proof::Vein(_) => Factor::Vein,
    }
}

fn factor_results(checked: &[Checked]) -> Vec<pb::FactorResult> {
    let mut out = Vec::new();
    for c in checked {
        for f in c.proves.iter() {
            out.push(pb::FactorResult {
                factor: f.name().into(),
                ok: c.result.is_ok(),
                reason: c
                    .result
                    .err()
                    .map(|e| e.code().to_string())
                    .unwrap_or_default(),
            });
        }
    }
    out
}

fn deny(reason: &str, policy_version: String, factors: Vec<pb::FactorResult>) -> pb::LogonResult {
    pb::LogonResult {
        decision: pb::Decision::Deny as i32,
        factors,
        policy_version,
        policy_ids: Vec::new(),
        session_id: String::new(),
        reason: reason.into(),
        locked_until_unix_ms: None,
        operator: String::new(),
    }
}

fn parse_action(s: &str) -> Result<Action, LogonError> {
    let action = if s.is_empty() {
        Action::Logon
    } else {
        s.parse()
            .map_err(|e: sekisho_policy_engine::model::UnknownName| {
                LogonError::BadRequest(format!("action: {e}"))
            })?
    };
    if action == Action::Presence {
        return Err(LogonError::BadRequest(
            "action 'presence' is not a logon: presence checks have their own API".into(),
        ));
    }
    Ok(action)
}

fn parse_via(s: &str) -> Result<Via, LogonError> {
    if s.is_empty() {
        return Ok(Via::Console);
    }
    s.parse()
        .map_err(|e: sekisho_policy_engine::model::UnknownName| {
            LogonError::BadRequest(format!("via: {e}"))
        })
}
