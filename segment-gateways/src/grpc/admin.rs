//! `sekisho.v1.GatewayAdmin`: enrollment and registration on this tier, for
//! administrator certificates only. Every call checks its input completely before
//! writing, so a refused call changes nothing. Every change commits in one
//! transaction with its audit event (the administrator's certificate name as
//! `operator`), so neither is ever stored without the other; secrets, codes and
//! templates are never journaled, only which factor changed.

use std::sync::Arc;

use rustls_pki_types::UnixTime;
use sekisho_policy_engine::audit::{format_ts, Outcome};
use sekisho_policy_engine::import::Change;
use sekisho_policy_engine::{Capabilities, DeviceKind, Factor, Tier};
use sekisho_proto::v1 as pb;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;
use tonic::{Request, Response, Status};

use super::{peer_name, request_id};
use crate::config::TotpConfig;
use crate::credentials::{CredentialError, GatewayDevice};
use crate::db::now_ms;
use crate::factors::biometric::{self, BiometricFactor, DeviceKey, MAX_VECTOR_LEN};
use crate::factors::totp::{self, TotpAlgorithm, TotpParams};
use crate::factors::{card, emergency_otp, pin};
use crate::import::{self, ImportContext, ImportFailure};
use crate::lockout;
use crate::logon::Gateway;

/// Emergency OTP lifetimes: the default and the most an administrator may give.
const EOTP_DEFAULT_TTL_SECS: u64 = 2 * 3600;
const EOTP_MAX_TTL_SECS: u64 = 24 * 3600;
/// Shortest standalone password accepted.
const MIN_PASSWORD_CHARS: usize = import::MIN_PASSWORD_CHARS;

pub struct AdminService {
    gateway: Arc<Gateway>,
    admin_names: Arc<[String]>,
    totp: TotpConfig,
}

impl AdminService {
    pub fn new(gateway: Arc<Gateway>, admin_names: Arc<[String]>, totp: TotpConfig) -> Self {
        AdminService {
            gateway,
            admin_names,
            totp,
        }
    }

    fn admin<T>(&self, request: &Request<T>) -> Result<String, Status> {
        match peer_name(request) {
            Some(n) if self.admin_names.contains(&n) => Ok(n),
            Some(n) => {
                tracing::warn!(client = %n, "admin call refused");
                Err(Status::permission_denied(format!(
                    "client certificate '{n}' is not an administrator (tls.admin_names)"
                )))
            }
            None => Err(Status::permission_denied(
                "admin calls need a client certificate naming an administrator",
            )),
        }
    }

    /// Makes `admin`'s change `write` and the audit entries it returns durable
    /// together: the journal is held while `write` runs in a transaction, the
    /// entries are appended in that transaction, and the caller answers only once
    /// it has committed. A refused `write` or a journal that cannot take the
    /// entries changes nothing.
    async fn change<T>(
        &self,
        admin: &str,
        write: impl AsyncFnOnce(&mut AnyConnection) -> Result<(T, Vec<Entry>), Status>,
    ) -> Result<T, Status> {
        let not_recorded = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, %admin, "audit journal failed; the change was not made");
            Status::internal(format!(
                "the audit journal could not record the change, so nothing was changed: {e}"
            ))
        };
        let mut journal = self
            .gateway
            .journal
            .exclusive()
            .await
            .map_err(|e| not_recorded(&e))?;
        let mut tx = self
            .gateway
            .store
            .db()
            .begin_write()
            .await
            .map_err(|e| store_status(e.into()))?;
        let (value, entries) = write(&mut *tx).await?;
        let request_id = request_id("");
        let events = entries
            .into_iter()
            .map(|entry| {
                let mut e = self.gateway.event(entry.action, Outcome::Allow);
                e.user = entry.user;
                e.operator = admin.into();
                e.device = entry.device;
                e.request_id.clone_from(&request_id);
                e.detail = entry
                    .detail
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                e
            })
            .collect();
        journal
            .append(&mut tx, events)
            .await
            .map_err(|e| not_recorded(&e))?;
        // Committed in a task of its own, which lets the journal go only afterwards:
        // a caller that hangs up mid-commit would otherwise let the writer read its
        // head before this commit is visible, and number its next batch over it.
        let committed = tokio::spawn(async move {
            let result = tx.commit().await;
            drop(journal);
            result
        })
        .await;
        match committed {
            Ok(Ok(())) => Ok(value),
            Ok(Err(e)) => {
                tracing::error!(error = %e, %admin, "committing an administrator's change failed; its outcome is unknown");
                Err(Status::unavailable(format!(
                    "committing the change failed, so whether it was stored is unknown (check the user's enrolment or the audit trail before trying again): {e}"
                )))
            }
            Err(e) => Err(Status::internal(format!(
                "committing the change did not finish: {e}"
            ))),
        }
    }

    async fn enrolled(&self, user: &str, detail: String) -> Result<pb::EnrollmentResponse, Status> {
        let e = self
            .gateway
            .store
            .enrollment(user, self.gateway.passwords.is_directory())
            .await
            .map_err(store_status)?;
        Ok(pb::EnrollmentResponse {
            user: user.into(),
            enrolled: crate::decide::names(e.factors),
            detail,
        })
    }
}

/// One audit event of an administrator's change (the administrator is its
/// `operator`): which change, to whom, and what about it (never a secret).
struct Entry {
    action: &'static str,
    user: String,
    device: String,
    detail: Vec<(&'static str, String)>,
}

impl Entry {
    fn user(action: &'static str, user: &str, detail: Vec<(&'static str, String)>) -> Entry {
        Entry {
            action,
            user: user.into(),
            device: String::new(),
            detail,
        }
    }

    fn device(action: &'static str, device: &str, detail: Vec<(&'static str, String)>) -> Entry {
        Entry {
            action,
            user: String::new(),
            device: device.into(),
            detail,
        }
    }
}

fn store_status(e: CredentialError) -> Status {
    match e {
        // Checked when enrolling and again by the store's index when writing (an
        // import's card enrolled for someone else meanwhile): a refusal, not a fault.
        CredentialError::CardOfAnotherUser { .. } => Status::already_exists(e.to_string()),
        e => {
            tracing::error!(error = %e, "gateway store failed");
            Status::internal(format!("the gateway's credential store failed: {e}"))
        }
    }
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn check_user(user: &str) -> Result<(), Status> {
    sekisho_policy_engine::import::check_id(user).map_err(|why| invalid(format!("user id {why}")))
}

fn check_device_id(id: &str) -> Result<(), Status> {
    sekisho_policy_engine::import::check_id(id).map_err(|why| invalid(format!("device id {why}")))
}

#[tonic::async_trait]
impl pb::gateway_admin_server::GatewayAdmin for AdminService {
    async fn enroll_totp(
        &self,
        request: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let algorithm = match r.algorithm.as_str() {
            "" => self.totp.algorithm,
            "sha1" => TotpAlgorithm::Sha1,
            "sha256" => TotpAlgorithm::Sha256,
            other => {
                return Err(invalid(format!(
                    "algorithm '{other}': expected sha1 or sha256"
                )))
            }
        };
        let digits = if r.digits == 0 {
            self.totp.digits
        } else {
            r.digits
        };
        let params = TotpParams::new(algorithm, digits, 30).map_err(|e| invalid(e.to_string()))?;
        let secret = totp::new_secret(&params).map_err(|e| Status::internal(e.to_string()))?;
        let store = &self.gateway.store;
        self.change(&admin, async |conn| {
            store
                .set_totp(conn, &r.user, &secret, &params)
                .await
                .map_err(store_status)?;
            let detail = vec![
                ("factor", "totp".into()),
                ("algorithm", algorithm.uri_name().to_ascii_lowercase()),
                ("digits", digits.to_string()),
            ];
            Ok(((), vec![Entry::user("enroll", &r.user, detail)]))
        })
        .await?;
        tracing::info!(%admin, user = %r.user, "TOTP enrolled");
        Ok(Response::new(pb::EnrollTotpResponse {
            otpauth_uri: totp::otpauth_uri(&self.totp.issuer, &r.user, &secret, &params),
            secret_base32: totp::secret_base32(&secret),
        }))
    }

    async fn enroll_card(
        &self,
        request: Request<pb::EnrollCardRequest>,
    ) -> Result<Response<pb::EnrollmentResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let Some(trust) = self.gateway.cards.as_ref().map(|c| c.current()) else {
            return Err(Status::failed_precondition(
                "this gateway has no card CA configured (cards.ca / cards.mynumber_ca), so no card could ever be accepted",
            ));
        };
        let kind = card::classify(&trust, &r.certificate, UnixTime::now()).map_err(|f| {
            invalid(format!(
                "the certificate cannot be used for logon on this tier: {f} (it must be valid now and chain to cards.ca or cards.mynumber_ca)"
            ))
        })?;
        let not_after = x509_parser::parse_x509_certificate(&r.certificate)
            .map(|(_, c)| c.validity().not_after.timestamp().saturating_mul(1000))
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        let factor = match kind {
            card::CardKind::MyNumber => Factor::MynumberCard,
            card::CardKind::Card => Factor::Card,
        };
        let store = &self.gateway.store;
        let added = self
            .change(&admin, async |conn| {
                let added = store
                    .add_card(conn, &r.user, &r.certificate, kind, not_after)
                    .await
                    .map_err(store_status)?;
                let detail = vec![
                    ("factor", factor.name().into()),
                    (
                        "certificate_sha256",
                        hex::encode(Sha256::digest(&r.certificate)),
                    ),
                    ("added", added.to_string()),
                ];
                Ok((added, vec![Entry::user("enroll", &r.user, detail)]))
            })
            .await?;
        let what = match kind {
            card::CardKind::MyNumber => "My Number card",
            card::CardKind::Card => "card",
        };
        tracing::info!(%admin, user = %r.user, kind = what, added, "card enrolled");
        let detail = if added {
            format!("{what} enrolled")
        } else {
            format!("{what} was already enrolled")
        };
        Ok(Response::new(self.enrolled(&r.user, detail).await?))
    }

    async fn enroll_biometric(
        &self,
        request: Request<pb::EnrollBiometricRequest>,
    ) -> Result<Response<pb::EnrollmentResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let factor = match r.factor.as_str() {
            "face" => BiometricFactor::Face,
            "vein" => BiometricFactor::Vein,
            other => return Err(invalid(format!("factor '{other}': expected face or vein"))),
        };
        if r.templates.is_empty() {
            return Err(invalid("no templates given"));
        }
        let dim = r.templates[0].vector.len();
        if dim == 0 || dim > MAX_VECTOR_LEN {
            return Err(invalid(format!(
                "template 1 has {dim} elements: expected 1 to {MAX_VECTOR_LEN}"
            )));
        }
        let mut templates = Vec::with_capacity(r.templates.len());
        for (i, t) in r.templates.into_iter().enumerate() {
            let mut v = t.vector;
            if v.len() != dim {
                return Err(invalid(format!(
                    "template {} has {} elements, template 1 has {dim}",
                    i + 1,
                    v.len()
                )));
            }
            biometric::normalize(&mut v).map_err(|_| {
                invalid(format!(
                    "template {} is not a usable vector (zero, NaN or infinite)",
                    i + 1
                ))
            })?;
            templates.push(v);
        }
        let n = templates.len();
        let store = &self.gateway.store;
        self.change(&admin, async |conn| {
            store
                .add_templates(conn, &r.user, factor, &templates, r.replace)
                .await
                .map_err(store_status)?;
            let detail = vec![
                ("factor", factor.name().into()),
                ("templates", n.to_string()),
                ("replace", r.replace.to_string()),
            ];
            Ok(((), vec![Entry::user("enroll", &r.user, detail)]))
        })
        .await?;
        tracing::info!(%admin, user = %r.user, factor = factor.name(), templates = n, replace = r.replace, "templates enrolled");
        let verb = if r.replace { "replaced with" } else { "added" };
        Ok(Response::new(
            self.enrolled(&r.user, format!("{} {verb} {n} template(s)", factor.name()))
                .await?,
        ))
    }

    async fn set_secret(
        &self,
        request: Request<pb::SetSecretRequest>,
    ) -> Result<Response<pb::EnrollmentResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let factor = match r.factor.as_str() {
            "pin" => {
                pin::check_new_pin(&r.secret).map_err(|e| invalid(e.to_string()))?;
                Factor::Pin
            }
            "password" => {
                if self.gateway.passwords.is_directory() {
                    return Err(Status::failed_precondition(
                        "passwords on this tier are checked by the directory: change them there",
                    ));
                }
                let n = r.secret.chars().count();
                if n < MIN_PASSWORD_CHARS || r.secret.len() > 1024 {
                    return Err(invalid(format!(
                        "a password must be {MIN_PASSWORD_CHARS} to 1024 characters (got {n})"
                    )));
                }
                Factor::Password
            }
            other => {
                return Err(invalid(format!(
                    "factor '{other}': expected pin or password"
                )))
            }
        };
        let hasher = self.gateway.hasher.clone();
        let secret = r.secret;
        let phc = tokio::task::spawn_blocking(move || hasher.hash(&secret))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let store = &self.gateway.store;
        self.change(&admin, async |conn| {
            store
                .set_secret(conn, &r.user, factor, &phc)
                .await
                .map_err(store_status)?;
            let detail = vec![("factor", factor.name().into())];
            Ok(((), vec![Entry::user("enroll", &r.user, detail)]))
        })
        .await?;
        tracing::info!(%admin, user = %r.user, factor = factor.name(), "secret set");
        Ok(Response::new(
            self.enrolled(&r.user, format!("{} set", factor.name()))
                .await?,
        ))
    }

    async fn issue_emergency_otp(
        &self,
        request: Request<pb::IssueEmergencyOtpRequest>,
    ) -> Result<Response<pb::IssueEmergencyOtpResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let ttl = if r.ttl_secs == 0 {
            EOTP_DEFAULT_TTL_SECS
        } else {
            r.ttl_secs
        };
        if ttl > EOTP_MAX_TTL_SECS {
            return Err(invalid(format!(
                "ttl {ttl} s is longer than the allowed {EOTP_MAX_TTL_SECS} s (24 hours)"
            )));
        }
        let issued = emergency_otp::issue().map_err(|e| Status::internal(e.to_string()))?;
        let expires = now_ms().saturating_add(i64::try_from(ttl).unwrap_or(0).saturating_mul(1000));
        let store = &self.gateway.store;
        self.change(&admin, async |conn| {
            store
                .set_emergency_otp(conn, &r.user, &issued.hash, expires)
                .await
                .map_err(store_status)?;
            // The code itself is never journaled: only that one exists, and until when.
            let detail = vec![
                ("expires_at", format_ts(expires)),
                ("ttl_secs", ttl.to_string()),
            ];
            Ok((
                (),
                vec![Entry::user("emergency_otp_issue", &r.user, detail)],
            ))
        })
        .await?;
        tracing::info!(%admin, user = %r.user, ttl_secs = ttl, "emergency OTP issued");
        Ok(Response::new(pb::IssueEmergencyOtpResponse {
            code: issued.code.clone(),
            expires_at_unix_ms: expires,
        }))
    }

    async fn register_device(
        &self,
        request: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        let d = r.device.ok_or_else(|| invalid("device is missing"))?;
        check_device_id(&d.id)?;
        if self.admin_names.contains(&d.id) {
            return Err(invalid(format!(
                "device id '{}' is an administrator name: devices and administrators are told apart by certificate name",
                d.id
            )));
        }
        let tier: Tier =
            d.tier
                .parse()
                .map_err(|e: sekisho_policy_engine::model::UnknownName| {
                    invalid(format!("tier: {e}"))
                })?;
        let ours = self.gateway.store.db().tier();
        if tier != ours {
            return Err(invalid(format!(
                "device '{}' is for tier '{}', but this gateway serves '{}'",
                d.id,
                tier.name(),
                ours.name()
            )));
        }
        let kind: DeviceKind =
            d.kind
                .parse()
                .map_err(|e: sekisho_policy_engine::model::UnknownName| {
                    invalid(format!("kind: {e}"))
                })?;
        let capabilities = Capabilities::parse_names(&d.capabilities)
            .map_err(|e| invalid(format!("capabilities: {e}")))?;
        let capture_key = if r.capture_key.is_empty() {
            None
        } else {
            Some(
                DeviceKey::from_spki_der(&r.capture_key)
                    .map_err(|e| invalid(format!("capture_key: {e}")))?,
            )
        };
        let device = GatewayDevice {
            id: d.id.clone(),
            kind,
            capabilities,
            location: d.location.clone(),
            capture_key,
        };
        let store = &self.gateway.store;
        let created = self
            .change(&admin, async |conn| {
                let created = store
                    .register_device(conn, &device)
                    .await
                    .map_err(store_status)?;
                let detail = vec![
                    ("kind", kind.name().into()),
                    ("capabilities", d.capabilities.join(",")),
                    ("location", d.location.clone()),
                    (
                        "biometric_capture",
                        device.capture_key.is_some().to_string(),
                    ),
                    ("created", created.to_string()),
                ];
                Ok((
                    created,
                    vec![Entry::device("device_register", &d.id, detail)],
                ))
            })
            .await?;
        store.forget_device(&d.id);
        tracing::info!(%admin, device = %d.id, created, "device registered");
        Ok(Response::new(pb::RegisterDeviceResponse {
            device: Some(d),
            created,
        }))
    }

    async fn unlock_user(
        &self,
        request: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::UnlockUserResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let db = self.gateway.store.db();
        let was_locked = self
            .change(&admin, async |conn| {
                let was_locked = lockout::clear(conn, db, &r.user, now_ms())
                    .await
                    .map_err(|e| store_status(e.into()))?;
                let detail = vec![("was_locked", was_locked.to_string())];
                Ok((
                    was_locked,
                    vec![Entry::user("unlock_user", &r.user, detail)],
                ))
            })
            .await?;
        tracing::info!(%admin, user = %r.user, was_locked, "lockout cleared");
        Ok(Response::new(pb::UnlockUserResponse { was_locked }))
    }

    async fn deregister_device(
        &self,
        request: Request<pb::DeregisterDeviceRequest>,
    ) -> Result<Response<pb::DeregisterDeviceResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_device_id(&r.device)?;
        let store = &self.gateway.store;
        let (removed, ended_session) = self
            .change(&admin, async |conn| {
                let (removed, ended) = store
                    .deregister_device(conn, &r.device)
                    .await
                    .map_err(store_status)?;
                if !removed {
                    return Err(Status::not_found(format!(
                        "device '{}' is not registered on this gateway (tier {})",
                        r.device,
                        store.db().tier().name()
                    )));
                }
                let detail = vec![("ended_session", ended.to_string())];
                let entry = Entry::device("device_deregister", &r.device, detail);
                Ok(((removed, ended), vec![entry]))
            })
            .await?;
        store.forget_device(&r.device);
        tracing::info!(%admin, device = %r.device, ended_session, "device deregistered");
        Ok(Response::new(pb::DeregisterDeviceResponse {
            removed,
            ended_session,
        }))
    }

    async fn remove_credentials(
        &self,
        request: Request<pb::RemoveCredentialsRequest>,
    ) -> Result<Response<pb::RemoveCredentialsResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let factor = match r.factor.as_str() {
            "" => None,
            name => Some(
                name.parse::<Factor>()
                    .map_err(|e| invalid(format!("factor: {e}")))?,
            ),
        };
        let fingerprint = match r.card_fingerprint.as_str() {
            "" => None,
            f if !matches!(factor, Some(Factor::Card | Factor::MynumberCard)) => {
                return Err(invalid(format!(
                    "card_fingerprint '{f}' needs factor card or mynumber_card"
                )))
            }
            f if f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(f.to_ascii_lowercase())
            }
            f => {
                return Err(invalid(format!(
                    "card_fingerprint '{f}' is not a SHA-256 in hex (64 characters)"
                )))
            }
        };
        let what = factor.map_or("all", Factor::name);
        let store = &self.gateway.store;
        let removed = self
            .change(&admin, async |conn| {
                let removed = store
                    .remove_credentials(conn, &r.user, factor, fingerprint.as_deref())
                    .await
                    .map_err(store_status)?;
                let mut detail = vec![
                    ("factor", what.to_string()),
                    ("removed", removed.to_string()),
                ];
                if let Some(f) = &fingerprint {
                    detail.push(("card_fingerprint", f.clone()));
                }
                Ok((
                    removed,
                    vec![Entry::user("credential_remove", &r.user, detail)],
                ))
            })
            .await?;
        tracing::info!(%admin, user = %r.user, factor = what, removed, "credentials removed");
        Ok(Response::new(pb::RemoveCredentialsResponse {
            removed,
            enrolled: self.enrolled(&r.user, String::new()).await?.enrolled,
        }))
    }

    async fn import_users(
        &self,
        request: Request<pb::ImportUsersRequest>,
    ) -> Result<Response<pb::ImportUsersResponse>, Status> {
        let admin = self.admin(&request)?;
        let r = request.into_inner();
        let totp = TotpParams::new(self.totp.algorithm, self.totp.digits, 30)
            .map_err(|e| Status::internal(e.to_string()))?;
        let trust = self.gateway.cards.as_ref().map(|c| c.current());
        let ctx = ImportContext {
            store: &self.gateway.store,
            hasher: &self.gateway.hasher,
            cards: trust.as_deref(),
            directory_passwords: self.gateway.passwords.is_directory(),
            totp,
        };
        let plan = match import::plan(&ctx, &r.users, r.dry_run).await {
            Ok(plan) => plan,
            Err(ImportFailure::Invalid(problems)) => {
                tracing::info!(%admin, problems = problems.len(), "user import refused");
                return Ok(Response::new(pb::ImportUsersResponse {
                    users: Vec::new(),
                    problems,
                    applied: false,
                }));
            }
            Err(ImportFailure::Store(e)) => return Err(store_status(e)),
            Err(e @ ImportFailure::Hash(_)) => return Err(Status::internal(e.to_string())),
        };
        let outcomes = plan.outcomes();
        // One event per user changed: which fields changed, never their values.
        let entries: Vec<Entry> = outcomes
            .iter()
            .filter(|o| o.change != Change::Unchanged)
            .map(|o| {
                let detail = vec![
                    ("change", o.change.name().to_string()),
                    ("fields", o.fields.join(",")),
                    ("row", o.row.to_string()),
                ];
                Entry::user("user_import", &o.user, detail)
            })
            .collect();
        let changed = entries.len();
        if !r.dry_run && changed > 0 {
            self.change(&admin, async |conn| {
                plan.write(&ctx, conn).await.map_err(store_status)?;
                Ok(((), entries))
            })
            .await?;
        }
        tracing::info!(%admin, users = outcomes.len(), changed, dry_run = r.dry_run, "users imported");
        Ok(Response::new(pb::ImportUsersResponse {
            users: outcomes
                .into_iter()
                .map(|o| pb::ImportUserResult {
                    user: o.user,
                    row: o.row,
                    change: o.change.name().into(),
                    fields: o.fields.into_iter().map(String::from).collect(),
                })
                .collect(),
            problems: Vec::new(),
            applied: !r.dry_run,
        }))
    }

    async fn list_enrollments(
        &self,
        request: Request<pb::ListEnrollmentsRequest>,
    ) -> Result<Response<pb::ListEnrollmentsResponse>, Status> {
        self.admin(&request)?;
        let r = request.into_inner();
        check_user(&r.user)?;
        let store = &self.gateway.store;
        let e = store
            .enrollment(&r.user, self.gateway.passwords.is_directory())
            .await
            .map_err(store_status)?;
        let standing = lockout::standing(store.db(), &r.user)
            .await
            .map_err(|e| store_status(e.into()))?;
        Ok(Response::new(pb::ListEnrollmentsResponse {
            user: r.user,
            enrolled: crate::decide::names(e.factors),
            cards: e.cards,
            face_templates: e.face_templates,
            vein_templates: e.vein_templates,
            locked_until_unix_ms: standing.locked_at(now_ms()),
            consecutive_failures: standing.failures,
        }))
    }
}
