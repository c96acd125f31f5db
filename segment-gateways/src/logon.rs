//! The logon flow, top to bottom: Begin (plan → challenge), Complete and Unlock
//! (each proof → its verifier → authorize → lockout → session → journal), Lock and
//! Logoff.
//!
//! Transport-free: the gRPC layer identifies the device from its certificate and
//! maps [`LogonError`] to a status. Nothing here reaches back up.
//!
//! What a response may reveal is decided here. An unknown user gets the plan of a
//! stand-in user from the engine, fails every proof the way a wrong credential fails
//! (absence is `mismatch`, or `card_not_enrolled` for a card), is counted towards a
//! lockout like anyone else, and is never told "locked".
//!
//! Every answer to a Complete, Unlock, Lock or Logoff is journaled before it is
//! returned: one event per answer, built from the answer itself (so the trail says
//! what the endpoint was told), plus a `lockout` event when a failure locked the
//! user; an attempt that ends in an error is journaled as outcome `error`.
//!
//! A Complete or Unlock changes state only through its commit: the TOTP step it
//! used, the emergency OTP it used up (only when it lets the user in), the failure
//! it counts, the session it opens or resumes are [`Effect`]s committed in one
//! transaction with its event, batched with every other answer of the moment
//! ([`crate::effects`]). The lockout is read there too, so "locked" and a replayed
//! code are judged at commit time, across replicas. When the journal cannot commit,
//! the endpoint gets an error instead of the answer and none of its changes is
//! kept: no one is let in without a record.
//!
//! A request that is wrong in itself (an empty proof, a factor proved twice) is
//! refused before any proof is verified, so it neither binds to the directory nor
//! uses anything up. Only failures caused by what the person presented count
//! towards lockout ([`Failure::counts_towards_lockout`]).
//!
//! A lock must slow guessing down, not only deny service: while a user is locked
//! (judged at commit), a deny never tells which of the presented factors were
//! correct. Each factor that checked out is reported failed with the code a wrong
//! proof of it gets, and a deny for too few factors becomes a `factor_failed` deny,
//! so the answer equals the one for wrong factors (`conceal`). Only a correct set
//! that would have been let in is told "locked until", as the spec asks. While not
//! locked, a correct but insufficient set is answered `insufficient_factors` and
//! counts no failure: it tells a guesser only what the wrong guesses before it,
//! each counted, narrowed down, and counting it would lock out people whose card
//! reader or phone is at fault.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::UnixTime;
use sekisho_policy_engine::audit::event::EventBody;
use sekisho_policy_engine::audit::{format_ts, Outcome};
use sekisho_policy_engine::{Action, DeviceKind, Factor, FactorSet, Via};
use sekisho_proto::v1 as pb;

use crate::cards::CardFiles;
use crate::challenge::{Challenge, ChallengeError, Challenges, CARD_NONCE};
use crate::credentials::{
    card_fingerprint, CardsAndTotp, CredentialError, CredentialStore, GatewayDevice,
};
use crate::db::now_ms;
use crate::decide::{DecideError, Decider, Subject};
use crate::effects::{Applied, Conflict, Effect};
use crate::factors::biometric::{self, BiometricFactor};
use crate::factors::card::{self, CardKind};
use crate::factors::password::PasswordVerifier;
use crate::factors::totp::TotpParams;
use crate::factors::{emergency_otp, pin, totp, Failure};
use crate::hashing::{Refreshed, SecretHasher};
use crate::journal::{AppendReceipt, Journal, JournalError};
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
    /// No nonce or challenge id could be drawn: nothing to do but refuse.
    #[error("the gateway's random number generator failed")]
    Random,
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error(transparent)]
    Store(#[from] sekisho_policy_engine::store::StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl LogonError {
    /// The stable code an `error` audit event carries as its reason.
    pub fn code(&self) -> &'static str {
        match self {
            LogonError::BadRequest(_) => "bad_request",
            LogonError::DeviceNotRegistered { .. } => "device_not_registered",
            LogonError::DeviceMismatch { .. } => "device_mismatch",
            LogonError::RateLimited(_) => "rate_limited",
            LogonError::NoSession(_) => "no_session",
            LogonError::Busy => "busy",
            LogonError::Random => "random_failed",
            LogonError::Decide(DecideError::UnknownDevice(_)) => "engine_unknown_device",
            LogonError::Decide(DecideError::UnknownUser(_)) => "engine_unknown_user",
            LogonError::Decide(DecideError::OtherTier(_)) => "engine_other_tier",
            LogonError::Decide(DecideError::Refused(_)) => "engine_refused",
            LogonError::Decide(DecideError::Unavailable(_)) => "engine_unavailable",
            LogonError::Credentials(_) | LogonError::Store(_) => "store_failed",
            LogonError::Journal(_) => "journal_failed",
        }
    }
}

/// Stable deny reasons (the `reason` field of a LogonResult).
pub mod reason {
    pub const FACTOR_FAILED: &str = "factor_failed";
    pub const INSUFFICIENT_FACTORS: &str = "insufficient_factors";
    pub const LOCKED: &str = "locked";
    pub const CHALLENGE_INVALID: &str = "challenge_invalid";
    pub const NOT_SESSION_USER: &str = "not_session_user";
    pub const NO_SESSION: &str = "no_session";
    /// The reason of a `lockout` audit event.
    pub const TOO_MANY_FAILURES: &str = "too_many_failures";
}

/// Settings the flow needs, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct FlowSettings {
    pub lockout: LockoutPolicy,
    pub face_threshold: f32,
    pub vein_threshold: f32,
    /// `[telework] accept_upstream_claims`.
    pub accept_upstream_claims: bool,
}

/// Everything a logon needs, shared by the gRPC services.
pub struct Gateway {
    pub store: CredentialStore,
    /// This gateway's audit journal; its name is the gateway's name.
    pub journal: Journal,
    pub decider: Decider,
    pub challenges: Challenges,
    pub rate: RateLimiter,
    pub hasher: SecretHasher,
    pub passwords: PasswordVerifier,
    /// The card CAs and CRLs; `None` when none is configured.
    pub cards: Option<Arc<CardFiles>>,
    pub settings: FlowSettings,
}

/// Who tried what where: the part of an attempt's audit event its answer does not
/// carry.
#[derive(Clone)]
struct Attempt {
    gateway: String,
    tier: &'static str,
    device: String,
    user: String,
    action: Action,
    request_id: String,
}

/// A Complete's answer as it stands if every effect holds, and those effects: they
/// are committed with the answer's journal event ([`crate::effects`]).
struct Prepared {
    result: pb::LogonResult,
    effects: Vec<Effect>,
}

impl Prepared {
    fn new(result: pb::LogonResult, effects: Vec<Effect>) -> Self {
        Prepared { result, effects }
    }
}

impl Attempt {
    fn event(&self, action: &str, outcome: Outcome) -> EventBody {
        let mut e = EventBody::new(&self.gateway, self.tier, action, outcome);
        e.device.clone_from(&self.device);
        e.user.clone_from(&self.user);
        e.operator.clone_from(&self.user);
        e.request_id.clone_from(&self.request_id);
        e
    }

    /// The audit event of one Complete/Unlock answer: verified factors and failure
    /// codes come from the answer's factor results, so the trail says exactly what
    /// the endpoint was told.
    fn answered(&self, r: &pb::LogonResult) -> EventBody {
        let outcome = if r.decision == pb::Decision::Allow as i32 {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        let mut e = self.event(self.action.name(), outcome);
        if !r.operator.is_empty() {
            e.operator.clone_from(&r.operator);
        }
        e.factors = r
            .factors
            .iter()
            .filter(|f| f.ok)
            .map(|f| f.factor.clone())
            .collect();
        e.factors.sort();
        e.failed = r
            .factors
            .iter()
            .filter(|f| !f.ok)
            .map(|f| (f.factor.clone(), f.reason.clone()))
            .collect();
        e.reason.clone_from(&r.reason);
        e.policy_version.clone_from(&r.policy_version);
        e.policy_ids.clone_from(&r.policy_ids);
        e.session.clone_from(&r.session_id);
        if let Some(until) = r.locked_until_unix_ms {
            e.detail.insert("locked_until".into(), format_ts(until));
        }
        e
    }

    /// The audit event of an attempt that ended in an error rather than an answer.
    fn failed(&self, error: &LogonError) -> EventBody {
        let mut e = self.event(self.action.name(), Outcome::Error);
        e.reason = error.code().into();
        e
    }

    fn locked_out(&self, until: i64, max_failures: u32) -> EventBody {
        let mut e = self.event("lockout", Outcome::Deny);
        e.reason = reason::TOO_MANY_FAILURES.into();
        e.detail.insert("locked_until".into(), format_ts(until));
        e.detail
            .insert("max_failures".into(), max_failures.to_string());
        e
    }
}

/// What [`Gateway::check_proofs`] found: each proof's outcome, and what the answer
/// uses up if it commits.
struct Verified {
    checked: Vec<Checked>,
    /// A correct TOTP code: recorded as used whatever the answer.
    totp: Option<TotpUse>,
    /// The stored hash of a correct emergency OTP: used up only by an allow.
    emergency_otp: Option<String>,
    /// Hashes of a correct password or PIN to store anew, at the configured cost,
    /// whatever the answer.
    refreshed: Vec<(Factor, Refreshed)>,
    /// The fingerprint of a correct card: an allow stands only while it is still
    /// enrolled.
    card: Option<String>,
}

/// One proof's outcome.
struct Checked {
    /// The factors it proves (a My Number card proves `card` and `mynumber_card`).
    proves: FactorSet,
    result: Result<(), Failure>,
}

impl Gateway {
    fn tier_name(&self) -> &'static str {
        self.store.db().tier().name()
    }

    /// The configured name, which is also the journal's.
    pub fn name(&self) -> &str {
        self.journal.gateway()
    }

    /// An event of this gateway, to be filled in and [`Gateway::record`]ed.
    pub fn event(&self, action: &str, outcome: Outcome) -> EventBody {
        EventBody::new(self.name(), self.tier_name(), action, outcome)
    }

    /// Appends `event` and waits until it is durable.
    pub async fn record(&self, event: EventBody) -> Result<AppendReceipt, JournalError> {
        self.journal.append(event).await
    }

    fn attempt(&self, device: &str, user: &str, action: Action, request_id: &str) -> Attempt {
        Attempt {
            gateway: self.name().to_string(),
            tier: self.tier_name(),
            device: device.to_string(),
            user: user.to_string(),
            action,
            request_id: request_id.to_string(),
        }
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

    /// Begin: the plan's options for this user here, and the nonces to sign. A
    /// refusal is journaled too (a device of another tier, a malformed request, the
    /// engine unreachable), except rate limiting, so that a flood cannot fill the
    /// journal: the limit is applied before anything else is looked at, so each
    /// journaled refusal costs the device a token.
    pub async fn begin(
        &self,
        device_id: &str,
        request: pb::BeginRequest,
        request_id: &str,
    ) -> Result<pb::Challenge, LogonError> {
        let user = request.user.clone();
        let action = parse_action(&request.action).unwrap_or(Action::Logon);
        let result = self.plan_challenge(device_id, request, request_id).await;
        if let Err(e) = &result {
            if !matches!(e, LogonError::RateLimited(_)) {
                let mut event = self.attempt(device_id, &user, action, request_id).failed(e);
                if matches!(
                    e,
                    LogonError::DeviceNotRegistered { .. } | LogonError::DeviceMismatch { .. }
                ) {
                    event.outcome = Outcome::Deny;
                }
                self.record(event).await?;
            }
        }
        result
    }

    async fn plan_challenge(
        &self,
        device_id: &str,
        request: pb::BeginRequest,
        request_id: &str,
    ) -> Result<pb::Challenge, LogonError> {
        // First: every refusal below is journaled durably, and a device must not
        // be able to buy fsyncs faster than it may try logons.
        if !self.rate.allow(device_id) {
            return Err(LogonError::RateLimited(device_id.to_string()));
        }
        if !request.device.is_empty() && request.device != device_id {
            return Err(LogonError::DeviceMismatch {
                named: request.device,
                certificate: device_id.to_string(),
            });
        }
        if !plausible_id(&request.user) {
            return Err(LogonError::BadRequest(
                "user must be 1 to 256 bytes without control characters".into(),
            ));
        }
        let action = parse_action(&request.action)?;
        let via = parse_via(&request.via)?;
        let upstream = FactorSet::parse_names(&request.upstream)
            .map_err(|e| LogonError::BadRequest(format!("upstream: {e}")))?;
        if !upstream.is_empty() && !self.settings.accept_upstream_claims {
            return Err(LogonError::BadRequest(
                "upstream factors are the endpoint's own unsigned claim, which this gateway does not accept ([telework] accept_upstream_claims = false)".into(),
            ));
        }
        self.registered_device(device_id).await?;
        let (enrollment, material) = self
            .store
            .for_logon(&request.user, self.passwords.is_directory())
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
                nonces.insert(name, Challenges::nonce().map_err(|_| LogonError::Random)?);
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
            material: Arc::new(material),
            expires: Instant::now() + ttl,
            expires_at_ms,
        };
        let id = self.challenges.insert(challenge).map_err(|e| match e {
            ChallengeError::Full => LogonError::Busy,
            ChallengeError::Random => LogonError::Random,
            // insert() never answers this; refusing is the safe reading.
            ChallengeError::Invalid => LogonError::Busy,
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
    /// apply the outcome to the lockout and the device's session, and journal it.
    pub async fn complete(
        &self,
        device_id: &str,
        request: pb::CompleteRequest,
        unlock: bool,
        request_id: &str,
    ) -> Result<pb::LogonResult, LogonError> {
        let challenge = match self.challenges.take(&request.challenge_id, device_id) {
            Ok(c) if is_unlock(c.action) == unlock => c,
            taken => {
                // A challenge of the other kind is used up all the same; name whose.
                let (user, action) = match taken {
                    Ok(c) => (c.user, c.action),
                    Err(_) if unlock => (String::new(), Action::Unlock),
                    Err(_) => (String::new(), Action::Logon),
                };
                let r = deny(reason::CHALLENGE_INVALID, String::new(), Vec::new());
                let attempt = self.attempt(device_id, &user, action, request_id);
                self.record(attempt.answered(&r)).await?;
                return Ok(r);
            }
        };
        let attempt = self.attempt(device_id, &challenge.user, challenge.action, request_id);
        let plan_version = challenge.policy_version.clone();
        let prepared = match self
            .verify_and_decide(device_id, challenge, request, request_id)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                if let Err(j) = self.record(attempt.failed(&e)).await {
                    tracing::error!(error = %j, failure = %e, "a failed attempt could not be journaled");
                }
                return Err(e);
            }
        };
        let Prepared { result, effects } = prepared;
        let max_failures = self.settings.lockout.max_failures;
        let events = {
            let (attempt, result, plan_version) =
                (attempt.clone(), result.clone(), plan_version.clone());
            Box::new(move |applied: &Applied| {
                let settled = settle(result, applied, &plan_version);
                let mut answered = attempt.answered(&settled.answer);
                // The trail says what the endpoint was told, and also what the lock
                // hid from it: correct factors presented for a locked user are a
                // sign that someone has them.
                if !settled.concealed.is_empty() {
                    answered
                        .detail
                        .insert("concealed_while_locked".into(), settled.concealed.join(","));
                }
                let mut events = vec![answered];
                if let Some(until) = applied.newly_locked {
                    events.push(attempt.locked_out(until, max_failures));
                }
                events
            })
        };
        let committed = self.journal.commit(effects, events).await?;
        if let Some(until) = committed.applied.newly_locked {
            tracing::warn!(
                user = %attempt.user,
                device = device_id,
                locked_until_ms = until,
                "user locked out after repeated failures"
            );
        }
        let Settled {
            answer: result,
            concealed,
        } = settle(result, &committed.applied, &plan_version);
        if !concealed.is_empty() {
            tracing::warn!(
                user = %attempt.user,
                device = device_id,
                factors = ?concealed,
                "correct factors presented for a locked user: answered as wrong"
            );
        }
        if result.decision == pb::Decision::Allow as i32 {
            tracing::info!(user = %attempt.user, device = device_id, action = attempt.action.name(), factors = ?result.factors.iter().map(|f| f.factor.as_str()).collect::<Vec<_>>(), policy_version = %result.policy_version, "allowed");
        }
        Ok(result)
    }

    /// Verifies every proof and asks for a decision; the answer and the changes it
    /// makes (TOTP step, failure count, session) are committed by the caller.
    async fn verify_and_decide(
        &self,
        device_id: &str,
        challenge: Challenge,
        request: pb::CompleteRequest,
        request_id: &str,
    ) -> Result<Prepared, LogonError> {
        let device = self.registered_device(device_id).await?;
        let user = challenge.user.as_str();
        let proofs = validate_proofs(request.proofs)?;

        let Verified {
            checked,
            totp,
            emergency_otp,
            refreshed,
            card,
        } = self.check_proofs(&challenge, &device, proofs).await?;
        let results = factor_results(&checked);
        let version = challenge.policy_version.clone();
        // A verified TOTP code is used up whatever the answer.
        let mut effects: Vec<Effect> = totp
            .map(|used| Effect::TotpStep {
                user: user.to_string(),
                step: used.step,
                secret: used.sealed,
            })
            .into_iter()
            .chain(
                refreshed
                    .into_iter()
                    .map(|(factor, hashes)| Effect::RefreshHash {
                        user: user.to_string(),
                        factor,
                        hashes,
                    }),
            )
            .collect();
        // No proof at all: nothing to hide while locked, and answering it alike
        // locked or not keeps the lock hidden from anyone who knows no factor.
        if checked.is_empty() {
            return Ok(Prepared::new(
                deny(reason::INSUFFICIENT_FACTORS, version, results),
                effects,
            ));
        }
        let failures: Vec<Failure> = checked.iter().filter_map(|c| c.result.err()).collect();
        if !failures.is_empty() {
            // A factor the gateway could not check (directory down, unusable stored
            // credential) is not the person's doing: it denies, but counts only when
            // something the person presented failed too.
            effects.push(if failures.iter().any(|f| f.counts_towards_lockout()) {
                Effect::CountFailure {
                    user: lockout::key(user),
                    policy: self.settings.lockout,
                }
            } else {
                // Counted or not, the commit reads the lockout: a locked user's
                // correct factors must not show.
                Effect::Deny {
                    user: lockout::key(user),
                }
            });
            return Ok(Prepared::new(
                deny(reason::FACTOR_FAILED, version, results),
                effects,
            ));
        }
        let verified = checked
            .iter()
            .fold(FactorSet::EMPTY, |acc, c| acc.union(c.proves));
        // Every presented factor is correct. A deny from here on counts no failure,
        // but its commit reads the lockout: while the user is locked it must look
        // like a deny for wrong factors, or each guess would still be confirmed.
        let denied = || Effect::Deny {
            user: lockout::key(user),
        };
        let subject = Subject {
            user,
            device: device_id,
            action: challenge.action,
            via: challenge.via,
            upstream: challenge.upstream,
            request_id,
        };
        let decision = match self.decider.authorize(&subject, verified).await {
            // The engine does not know the user (never in the directory, or
            // deprovisioned since): refused like a factor set no policy permits, so
            // the answer does not tell whether the account exists.
            Err(DecideError::UnknownUser(_)) => {
                effects.push(denied());
                return Ok(Prepared::new(
                    deny(reason::INSUFFICIENT_FACTORS, String::new(), results),
                    effects,
                ));
            }
            other => other?,
        };
        if !decision.allowed {
            let mut r = deny(
                reason::INSUFFICIENT_FACTORS,
                decision.policy_version,
                results,
            );
            r.policy_ids = decision.policy_ids;
            effects.push(denied());
            return Ok(Prepared::new(r, effects));
        }
        // Only now, with a factor set that would have been accepted, can "locked" be
        // said (by the commit, which reads the lockout): a guesser never learns it.
        effects.push(Effect::Admit {
            user: lockout::key(user),
        });
        let allow = |session_id: String, operator: String| pb::LogonResult {
            decision: pb::Decision::Allow as i32,
            factors: results.clone(),
            policy_version: decision.policy_version.clone(),
            policy_ids: decision.policy_ids.clone(),
            session_id,
            reason: String::new(),
            locked_until_unix_ms: None,
            operator,
        };
        let result = match challenge.action {
            Action::Logon => {
                let id = session::new_id()?;
                effects.push(Effect::OpenSession {
                    id: id.clone(),
                    device: device_id.to_string(),
                    user: user.to_string(),
                });
                allow(id, user.to_string())
            }
            Action::Unlock | Action::SwitchOperator => {
                let Some(current) = session::current(self.store.db(), device_id).await? else {
                    return Ok(Prepared::new(
                        deny(reason::NO_SESSION, decision.policy_version, results),
                        effects,
                    ));
                };
                // Another user may take over only a shared counter terminal; elsewhere
                // the session's own user gets it back.
                let may_operate = user == current.operator
                    || user == current.user
                    || device.kind == DeviceKind::Shared;
                if !may_operate {
                    return Ok(Prepared::new(
                        deny(reason::NOT_SESSION_USER, decision.policy_version, results),
                        effects,
                    ));
                }
                // Whoever authenticated is the operator from this commit on, even if
                // another switch committed since `current` was read: the answer and
                // the stored session then name the same person.
                effects.push(Effect::SetSession {
                    id: current.id.clone(),
                    state: SessionState::Active,
                    operator: Some(user.to_string()),
                });
                allow(current.id, user.to_string())
            }
            Action::Elevate | Action::Presence => {
                match session::current(self.store.db(), device_id).await? {
                    Some(s) => allow(s.id, s.operator),
                    None => allow(String::new(), user.to_string()),
                }
            }
        };
        // Every path that reaches here allows: only now is the emergency OTP used up,
        // with the answer's event, and only if the answer still stands at commit.
        // That needs the card, if one was shown, to be enrolled still.
        if let Some(fingerprint) = card {
            effects.push(Effect::CardHeld {
                user: user.to_string(),
                fingerprint,
            });
        }
        if let Some(code_hash) = emergency_otp {
            effects.push(Effect::UseEmergencyOtp {
                user: user.to_string(),
                code_hash,
            });
        }
        Ok(Prepared::new(result, effects))
    }

    /// Lock or Logoff a session of this device, journaled.
    pub async fn set_session(
        &self,
        device_id: &str,
        session_id: &str,
        state: SessionState,
        request_id: &str,
    ) -> Result<pb::SessionState, LogonError> {
        self.registered_device(device_id).await?;
        let no_session = || LogonError::NoSession(session_id.to_string());
        if !plausible_id(session_id) {
            return Err(no_session());
        }
        let s = match session::get(self.store.db(), session_id).await? {
            Some(s) if s.device == device_id && s.state != SessionState::Ended => s,
            _ => return Err(no_session()),
        };
        let mut e = self.event(
            match state {
                SessionState::Locked => "lock",
                SessionState::Ended => "logoff",
                SessionState::Active => "resume",
            },
            Outcome::Allow,
        );
        e.device = s.device.clone();
        e.user = s.user.clone();
        e.operator = s.operator.clone();
        e.session = s.id.clone();
        e.request_id = request_id.into();
        let change = Effect::SetSession {
            id: s.id.clone(),
            state,
            operator: None,
        };
        // The state change and its event commit together; a session that ended in
        // the meantime is neither changed nor journaled.
        let events = Box::new(move |applied: &Applied| match applied.conflict {
            None => vec![e],
            Some(_) => Vec::new(),
        });
        if self
            .journal
            .commit(vec![change], events)
            .await?
            .applied
            .conflict
            .is_some()
        {
            return Err(no_session());
        }
        Ok(pb::SessionState {
            session_id: s.id,
            device: s.device,
            user: s.user,
            operator: s.operator,
            state: state.name().into(),
        })
    }

    /// Runs every proof (already [validated](validate_proofs)) through its verifier.
    /// Nothing is used up here: a correct TOTP code and a correct emergency OTP come
    /// back in the [`Verified`], to be used up when (and if) the answer commits.
    async fn check_proofs(
        &self,
        challenge: &Challenge,
        device: &GatewayDevice,
        proofs: Vec<pb::proof::Proof>,
    ) -> Result<Verified, LogonError> {
        let user = challenge.user.as_str();
        let mut verified = Verified {
            checked: Vec::with_capacity(proofs.len()),
            totp: None,
            emergency_otp: None,
            refreshed: Vec::new(),
            card: None,
        };
        let material = &challenge.material;
        for proof in proofs {
            let factor = proof_factor(&proof);
            let mut proves = FactorSet::EMPTY.with(factor);
            let result = match proof {
                pb::proof::Proof::Password(pw) => {
                    let stored = if self.passwords.is_directory() {
                        None
                    } else {
                        self.store.secret(user, Factor::Password).await?
                    };
                    self.passwords
                        .verify(user, &pw, stored.as_deref())
                        .await
                        .map(|r| verified.refreshed.extend(r.map(|r| (factor, r))))
                }
                pb::proof::Proof::Pin(p) => {
                    let stored = self.store.secret(user, Factor::Pin).await?;
                    let hasher = self.hasher.clone();
                    tokio::task::spawn_blocking(move || pin::verify(&hasher, &p, stored.as_deref()))
                        .await
                        .unwrap_or(Err(Failure::Unavailable))
                        .map(|r| verified.refreshed.extend(r.map(|r| (factor, r))))
                }
                pb::proof::Proof::Totp(code) => check_totp(material, &code).map(|used| {
                    verified.totp = Some(used);
                }),
                pb::proof::Proof::EmergencyOtp(code) => self
                    .check_emergency_otp(user, &code)
                    .await?
                    .map(|code_hash| {
                        verified.emergency_otp = Some(code_hash);
                    }),
                pb::proof::Proof::Card(c) => self.check_card(challenge, material, &c).map(|kind| {
                    if kind == CardKind::MyNumber {
                        proves = proves.with(Factor::MynumberCard);
                    }
                    verified.card = Some(card_fingerprint(&c.certificate));
                }),
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
            verified.checked.push(Checked { proves, result });
        }
        Ok(verified)
    }

    /// Checks an emergency OTP without using it up; on success returns the stored
    /// hash it matched, which the answer's [`Effect::UseEmergencyOtp`] uses up at
    /// commit time if the answer lets the user in.
    async fn check_emergency_otp(
        &self,
        user: &str,
        code: &str,
    ) -> Result<Result<String, Failure>, LogonError> {
        let row = self.store.emergency_otp(user).await?;
        let stored = row.as_ref().map(|r| emergency_otp::StoredOtp {
            hash: &r.code_hash,
            expires_at_unix: r.expires_at_ms / 1000,
            used: r.used,
        });
        if let Err(f) = emergency_otp::verify(code, stored, now_ms() / 1000) {
            return Ok(Err(f));
        }
        // The verifier accepts a code only against a stored one.
        Ok(row.map(|r| r.code_hash).ok_or(Failure::Mismatch))
    }

    fn check_card(
        &self,
        challenge: &Challenge,
        material: &CardsAndTotp,
        proof: &pb::CardProof,
    ) -> Result<CardKind, Failure> {
        let Some(nonce) = challenge.nonces.get(CARD_NONCE) else {
            return Err(Failure::NotRequested);
        };
        let enrolled: Vec<rustls_pki_types::CertificateDer<'_>> = material
            .cards
            .iter()
            .map(|c| rustls_pki_types::CertificateDer::from(c.certificate.as_slice()))
            .collect();
        let Some(trust) = self.cards.as_ref().map(|c| c.current()) else {
            // No card CA configured on this tier: no card can be trusted.
            return if enrolled
                .iter()
                .any(|c| c.as_ref() == proof.certificate.as_slice())
            {
                Err(Failure::UntrustedCertificate)
            } else {
                Err(Failure::CardNotEnrolled)
            };
        };
        card::verify(
            &trust,
            &enrolled,
            &proof.certificate,
            nonce,
            &proof.signature,
            UnixTime::now(),
        )
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

/// A correct TOTP code not used before, as far as Begin saw. Whether it is still
/// unused, and the secret still the one enrolled, is decided when the answer commits
/// (two logons racing with one code; a re-enrollment in between).
///
/// A user without TOTP (or no such user) goes through the same [`totp::verify`]
/// against a stand-in secret, so a badly formed code is `malformed` and a well-formed
/// one `mismatch` for everyone, after the same work: the answer never tells whether
/// the user has TOTP enrolled.
fn check_totp(material: &CardsAndTotp, code: &str) -> Result<TotpUse, Failure> {
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let Some(cred) = &material.totp else {
        return match totp::verify(
            &STAND_IN_TOTP_SECRET,
            &TotpParams::default(),
            code,
            now,
            None,
        ) {
            Err(Failure::Malformed) => Err(Failure::Malformed),
            _ => Err(Failure::Mismatch),
        };
    };
    let step = totp::verify(&cred.secret, &cred.params, code, now, cred.last_step)?;
    Ok(TotpUse {
        step,
        sealed: cred.sealed.clone(),
    })
}

/// The secret [`check_totp`] checks codes against for a user without TOTP. Its
/// value does not matter: whatever it matches is refused all the same.
const STAND_IN_TOTP_SECRET: [u8; 20] = [0; 20];

/// A correct TOTP code: its time step, and the secret it was checked against (as
/// stored), both confirmed when the answer commits.
struct TotpUse {
    step: u64,
    sealed: String,
}

/// What the endpoint is told, once the answer's effects are committed.
#[derive(Debug)]
struct Settled {
    answer: pb::LogonResult,
    /// The factors that were correct but are reported failed because the user is
    /// locked ([`conceal`]): for the audit trail and the log, never the endpoint.
    concealed: Vec<String>,
}

/// The answer as it stands after its effects were committed: a condition that no
/// longer held (see [`Conflict`]) turns it into the deny it calls for, and a deny
/// of a user found locked ([`Applied::locked_until`]) is [concealed](conceal).
/// `plan_version` is the challenge's policy version, the one a deny for wrong
/// factors carries.
fn settle(r: pb::LogonResult, applied: &Applied, plan_version: &str) -> Settled {
    let mut answer = after_conflict(r, applied);
    let concealed = match applied.locked_until {
        Some(_) => conceal(&mut answer, plan_version),
        None => Vec::new(),
    };
    Settled { answer, concealed }
}

/// Makes a deny of a locked user the deny wrong factors get: every factor that
/// checked out is reported failed with the code a wrong proof of it gets
/// ([`wrong_proof`]), the reason is `factor_failed`, the policy version the plan's
/// and no policy is named (the engine is never asked about wrong factors). Failed
/// factors keep their codes: they fail alike locked or not. A My Number card that
/// checked out also proved `mynumber_card`; a failed card proves only `card`, so
/// that entry goes. Returns the factors it hid.
fn conceal(r: &mut pb::LogonResult, plan_version: &str) -> Vec<String> {
    r.decision = pb::Decision::Deny as i32;
    r.reason = reason::FACTOR_FAILED.into();
    plan_version.clone_into(&mut r.policy_version);
    r.policy_ids.clear();
    r.session_id.clear();
    r.operator.clear();
    r.locked_until_unix_ms = None;
    r.factors
        .retain(|f| !(f.ok && f.factor == Factor::MynumberCard.name()));
    let mut hidden = Vec::new();
    for f in r.factors.iter_mut().filter(|f| f.ok) {
        f.ok = false;
        f.reason = wrong_proof(&f.factor).code().into();
        hidden.push(f.factor.clone());
    }
    hidden
}

/// The failure a wrong proof of `factor` gets: a card other than the enrolled one
/// is not enrolled; a wrong password, PIN, code or biometric is a mismatch.
fn wrong_proof(factor: &str) -> Failure {
    if factor == Factor::Card.name() {
        Failure::CardNotEnrolled
    } else {
        Failure::Mismatch
    }
}

/// [`settle`]'s first half: the deny a [`Conflict`] calls for.
fn after_conflict(mut r: pb::LogonResult, applied: &Applied) -> pb::LogonResult {
    let Some(conflict) = applied.conflict else {
        return r;
    };
    r.decision = pb::Decision::Deny as i32;
    r.session_id.clear();
    r.operator.clear();
    r.policy_ids.clear();
    match conflict {
        Conflict::Locked { until_ms } => {
            r.reason = reason::LOCKED.into();
            r.locked_until_unix_ms = Some(until_ms);
        }
        Conflict::TotpReplayed => factor_failed(&mut r, Factor::Totp, Failure::Replayed),
        Conflict::TotpChanged => factor_failed(&mut r, Factor::Totp, Failure::Mismatch),
        Conflict::EmergencyOtpUsed => {
            factor_failed(&mut r, Factor::EmergencyOtp, Failure::Replayed)
        }
        Conflict::EmergencyOtpChanged => {
            factor_failed(&mut r, Factor::EmergencyOtp, Failure::Mismatch)
        }
        Conflict::EmergencyOtpExpired => {
            factor_failed(&mut r, Factor::EmergencyOtp, Failure::Expired)
        }
        Conflict::NoSession => r.reason = reason::NO_SESSION.into(),
        Conflict::CardRemoved => factor_failed(&mut r, Factor::Card, Failure::CardNotEnrolled),
    }
    r
}

/// Marks `factor` as failed with `failure` in an answer that now denies for it.
fn factor_failed(r: &mut pb::LogonResult, factor: Factor, failure: Failure) {
    r.reason = reason::FACTOR_FAILED.into();
    for f in r.factors.iter_mut().filter(|f| f.factor == factor.name()) {
        f.ok = false;
        f.reason = failure.code().into();
    }
}

/// Checks a Complete's proofs as a request, before any of them is verified: each
/// must name a factor this gateway knows, carry something, and prove a factor no
/// earlier proof did. A request that fails here is refused whole, so it never binds
/// to the directory, spends Argon2id work or uses a code up. The error names the
/// proof (counted from 1) and its factor; it never repeats what the proof carries.
fn validate_proofs(proofs: Vec<pb::Proof>) -> Result<Vec<pb::proof::Proof>, LogonError> {
    let mut out: Vec<pb::proof::Proof> = Vec::with_capacity(proofs.len());
    for (i, proof) in proofs.into_iter().enumerate() {
        let n = i + 1;
        // prost leaves a oneof it does not know (a newer agent's factor) unset too.
        let Some(proof) = proof.proof else {
            return Err(LogonError::BadRequest(format!(
                "proof {n} is empty or proves a factor this gateway does not know"
            )));
        };
        let factor = proof_factor(&proof);
        let bad =
            |what: &str| LogonError::BadRequest(format!("proof {n} ({}) {what}", factor.name()));
        if let Some(first) = out.iter().position(|p| proof_factor(p) == factor) {
            return Err(bad(&format!(
                "proves the same factor as proof {}",
                first + 1
            )));
        }
        match &proof {
            pb::proof::Proof::Password(v)
            | pb::proof::Proof::Pin(v)
            | pb::proof::Proof::Totp(v)
            | pb::proof::Proof::EmergencyOtp(v) => {
                if v.is_empty() {
                    return Err(bad("is empty"));
                }
            }
            pb::proof::Proof::Card(c) => {
                if c.certificate.is_empty() {
                    return Err(bad("has no certificate"));
                }
                if c.signature.is_empty() {
                    return Err(bad("has no signature"));
                }
            }
            pb::proof::Proof::Face(b) | pb::proof::Proof::Vein(b) => {
                if b.vector.is_empty() {
                    return Err(bad("has no vector"));
                }
                if b.signature.is_empty() {
                    return Err(bad("has no signature"));
                }
            }
        }
        out.push(proof);
    }
    Ok(out)
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

/// Whether `id` (a user or session id from a request) can name anything stored:
/// 1 to 256 bytes without control characters. Checked before it reaches a query,
/// since PostgreSQL refuses a NUL in a parameter where SQLite just finds nothing.
/// Unlike `import::check_id`, surrounding white space passes: a directory ignores
/// it when binding, and [`lockout::key`] counts such an id with the bare one.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::TotpCredential;

    fn allowed_with_totp() -> pb::LogonResult {
        let ok = |factor: &str| pb::FactorResult {
            factor: factor.into(),
            ok: true,
            reason: String::new(),
        };
        pb::LogonResult {
            decision: pb::Decision::Allow as i32,
            factors: vec![ok("password"), ok("totp")],
            policy_version: "v7".into(),
            policy_ids: vec!["internet-totp-logon-unlock".into()],
            session_id: "s1".into(),
            reason: String::new(),
            locked_until_unix_ms: None,
            operator: "u1".into(),
        }
    }

    fn applied(conflict: Option<Conflict>) -> Applied {
        Applied {
            conflict,
            ..Applied::default()
        }
    }

    /// What the endpoint is told, the challenge's policy version being "v7".
    fn told(r: pb::LogonResult, applied: &Applied) -> pb::LogonResult {
        settle(r, applied, "v7").answer
    }

    #[test]
    fn an_answer_without_conflict_stands() {
        let r = allowed_with_totp();
        let settled = settle(r.clone(), &applied(None), "v7");
        assert_eq!(settled.answer, r);
        assert!(settled.concealed.is_empty());
    }

    #[test]
    fn a_conflict_turns_an_allow_into_the_deny_it_calls_for() {
        let locked = told(
            allowed_with_totp(),
            &applied(Some(Conflict::Locked { until_ms: 42 })),
        );
        assert_eq!(locked.decision, pb::Decision::Deny as i32);
        assert_eq!(
            (locked.reason.as_str(), locked.locked_until_unix_ms),
            (reason::LOCKED, Some(42))
        );
        assert!(locked.session_id.is_empty() && locked.operator.is_empty());
        assert!(locked.policy_ids.is_empty());
        assert_eq!(locked.policy_version, "v7");

        let replayed = told(allowed_with_totp(), &applied(Some(Conflict::TotpReplayed)));
        assert_eq!(replayed.reason, reason::FACTOR_FAILED);
        let failed: Vec<(&str, &str)> = replayed
            .factors
            .iter()
            .filter(|f| !f.ok)
            .map(|f| (f.factor.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(failed, vec![("totp", "replayed")]);
        assert!(replayed.session_id.is_empty());

        let changed = told(allowed_with_totp(), &applied(Some(Conflict::TotpChanged)));
        assert_eq!(changed.reason, reason::FACTOR_FAILED);
        assert!(changed
            .factors
            .iter()
            .any(|f| f.factor == "totp" && !f.ok && f.reason == "mismatch"));

        let gone = told(allowed_with_totp(), &applied(Some(Conflict::NoSession)));
        assert_eq!(
            (gone.decision, gone.reason.as_str()),
            (pb::Decision::Deny as i32, reason::NO_SESSION)
        );
    }

    #[test]
    fn an_emergency_otp_lost_at_commit_fails_that_factor() {
        let mut allowed = allowed_with_totp();
        allowed.factors[1].factor = "emergency_otp".into();
        for (conflict, code) in [
            (Conflict::EmergencyOtpUsed, "replayed"),
            (Conflict::EmergencyOtpChanged, "mismatch"),
            (Conflict::EmergencyOtpExpired, "expired"),
        ] {
            let r = told(allowed.clone(), &applied(Some(conflict)));
            assert_eq!(r.decision, pb::Decision::Deny as i32);
            assert_eq!(r.reason, reason::FACTOR_FAILED);
            assert!(r.session_id.is_empty());
            let failed: Vec<(&str, &str)> = r
                .factors
                .iter()
                .filter(|f| !f.ok)
                .map(|f| (f.factor.as_str(), f.reason.as_str()))
                .collect();
            assert_eq!(failed, vec![("emergency_otp", code)]);
        }
    }

    fn result(factor: &str, failure: Option<Failure>) -> pb::FactorResult {
        pb::FactorResult {
            factor: factor.into(),
            ok: failure.is_none(),
            reason: failure.map(|f| f.code().to_string()).unwrap_or_default(),
        }
    }

    fn locked() -> Applied {
        Applied {
            locked_until: Some(42),
            ..Applied::default()
        }
    }

    #[test]
    fn a_locked_users_deny_looks_like_one_for_wrong_factors() {
        use Failure::{CardNotEnrolled, Mismatch, Replayed};
        // The right password alone where more is needed, and a wrong one.
        let mut insufficient = deny(
            reason::INSUFFICIENT_FACTORS,
            "v8".into(),
            vec![result("password", None)],
        );
        insufficient.policy_ids = vec!["lgwan-forbid-something".into()];
        let wrong = deny(
            reason::FACTOR_FAILED,
            "v7".into(),
            vec![result("password", Some(Mismatch))],
        );
        let settled = settle(insufficient.clone(), &locked(), "v7");
        assert_eq!(settled.answer, wrong);
        assert_eq!(settled.concealed, vec!["password".to_string()]);
        // A wrong guess is answered as ever, and nothing is said to be hidden.
        let settled = settle(wrong.clone(), &locked(), "v7");
        assert_eq!(settled.answer, wrong);
        assert!(settled.concealed.is_empty());
        // Not locked: the right password is answered as it always was.
        assert_eq!(
            told(insufficient.clone(), &Applied::default()),
            insufficient
        );

        // A My Number card that checked out, a correct PIN and a replayed code:
        // the card is reported as a card of someone else, the PIN as wrong, and the
        // replay keeps its code.
        let right = deny(
            reason::FACTOR_FAILED,
            "v7".into(),
            vec![
                result("card", None),
                result("mynumber_card", None),
                result("pin", None),
                result("totp", Some(Replayed)),
            ],
        );
        let as_wrong = deny(
            reason::FACTOR_FAILED,
            "v7".into(),
            vec![
                result("card", Some(CardNotEnrolled)),
                result("pin", Some(Mismatch)),
                result("totp", Some(Replayed)),
            ],
        );
        let settled = settle(right, &locked(), "v7");
        assert_eq!(settled.answer, as_wrong);
        assert_eq!(
            settled.concealed,
            vec!["card".to_string(), "pin".to_string()]
        );

        // A right code that lost a race while locked: replayed, and the rest hidden.
        let mut raced = allowed_with_totp();
        raced.decision = pb::Decision::Deny as i32;
        raced.reason = reason::INSUFFICIENT_FACTORS.into();
        let both = Applied {
            conflict: Some(Conflict::TotpReplayed),
            locked_until: Some(42),
            newly_locked: None,
        };
        let r = told(raced, &both);
        assert_eq!(
            r,
            deny(
                reason::FACTOR_FAILED,
                "v7".into(),
                vec![
                    result("password", Some(Mismatch)),
                    result("totp", Some(Replayed))
                ],
            )
        );
    }

    fn material(totp: Option<TotpCredential>) -> CardsAndTotp {
        CardsAndTotp {
            cards: Vec::new(),
            totp,
        }
    }

    fn enrolled(digits: u32) -> TotpCredential {
        TotpCredential {
            secret: vec![7; 20],
            params: TotpParams::new(totp::TotpAlgorithm::Sha1, digits, 30).unwrap(),
            last_step: None,
            sealed: "sealed".into(),
        }
    }

    #[test]
    fn a_totp_code_is_judged_alike_with_or_without_totp_enrolled() {
        let without = material(None);
        let six = material(Some(enrolled(6)));
        let eight = material(Some(enrolled(8)));
        let outcome = |m: &CardsAndTotp, code: &str| check_totp(m, code).map(|u| u.step);
        for code in [
            "",
            "12345",
            "1234567",
            "12a456",
            "１２３４５６",
            "123456789",
        ] {
            for m in [&without, &six, &eight] {
                assert_eq!(outcome(m, code), Err(Failure::Malformed), "{code:?}");
            }
        }
        // Well formed but wrong (a code of the other length can only be wrong): the
        // same `mismatch` as for a user without TOTP.
        for code in ["000000", "00000000"] {
            assert_eq!(outcome(&without, code), Err(Failure::Mismatch), "{code}");
        }
        assert_eq!(outcome(&six, "00000000"), Err(Failure::Mismatch));
        assert_eq!(outcome(&eight, "000000"), Err(Failure::Mismatch));
    }

    fn proof(p: pb::proof::Proof) -> pb::Proof {
        pb::Proof { proof: Some(p) }
    }

    fn refusal(proofs: Vec<pb::Proof>) -> String {
        match validate_proofs(proofs) {
            Err(LogonError::BadRequest(m)) => m,
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn bad_proofs_are_named_before_any_is_checked() {
        use pb::proof::Proof as P;
        let pw = || proof(P::Password("pw".into()));
        assert_eq!(
            refusal(vec![pw(), proof(P::Pin(String::new()))]),
            "proof 2 (pin) is empty"
        );
        assert_eq!(
            refusal(vec![pw(), proof(P::Totp("123456".into())), pw()]),
            "proof 3 (password) proves the same factor as proof 1"
        );
        assert_eq!(
            refusal(vec![pw(), pb::Proof { proof: None }]),
            "proof 2 is empty or proves a factor this gateway does not know"
        );
        let card = |certificate: &[u8], signature: &[u8]| {
            proof(P::Card(pb::CardProof {
                certificate: certificate.to_vec(),
                signature: signature.to_vec(),
            }))
        };
        assert_eq!(
            refusal(vec![card(b"", b"s")]),
            "proof 1 (card) has no certificate"
        );
        assert_eq!(
            refusal(vec![card(b"c", b"")]),
            "proof 1 (card) has no signature"
        );
        let capture = |vector: Vec<f32>, signature: &[u8]| pb::BiometricProof {
            vector,
            signature: signature.to_vec(),
        };
        assert_eq!(
            refusal(vec![proof(P::Face(capture(Vec::new(), b"s")))]),
            "proof 1 (face) has no vector"
        );
        assert_eq!(
            refusal(vec![proof(P::Vein(capture(vec![1.0], b"")))]),
            "proof 1 (vein) has no signature"
        );
        // The error never repeats what a proof carries.
        let m = refusal(vec![
            proof(P::EmergencyOtp("ABCD-EFGH-JKMN".into())),
            pw(),
            pw(),
        ]);
        assert!(!m.contains("ABCD") && !m.contains("pw"), "{m}");
        // Good proofs pass through in order.
        let ok = validate_proofs(vec![pw(), card(b"c", b"s")]).unwrap();
        let factors: Vec<Factor> = ok.iter().map(proof_factor).collect();
        assert_eq!(factors, vec![Factor::Password, Factor::Card]);
    }
}
