//! The engine's gRPC services: `sekisho.v1.PolicyDecision`, `sekisho.v1.PolicyAdmin`
//! and `sekisho.v1.AuditSink` ([`audit`]).
//!
//! Handlers translate wire types into engine calls and engine errors into statuses;
//! they decide nothing themselves. Every plan and authorization answered is offered
//! to the decision log ([`crate::audit::decisions`]) without waiting for it.

pub mod audit;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::Stream;
use sekisho_proto::v1 as pb;
use tokio::sync::{watch, Mutex};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::audit::decisions::{Decided, Decision, DecisionLog};
use crate::diagnostics::{Diagnostic, Severity};
use crate::directory::{DirectorySync, SyncError, SyncOptions, SyncSummary};
use crate::engine::{current_hour, DecisionRequest, Engine, EngineError, PlanInputs};
use crate::entities::{
    DeviceRecord, Directory, EntityBatch, EntityDeletion, GroupRecord, UserRecord,
};
use crate::factor::{Capabilities, FactorSet};
use crate::model::{Action, DeviceKind, Tier, Via};
use crate::policies::{CompiledPolicies, PolicyFile, PolicySources};
use crate::store::{Store, VersionInfo};

/// Shared state of both services.
pub struct EngineState {
    pub engine: Arc<Engine>,
    pub store: Store,
    /// The version being served; `WatchPolicy` streams its changes.
    pub version: watch::Sender<Option<VersionInfo>>,
    /// Who may call what, by client certificate name. `None` when the listener has
    /// no TLS (a loopback test bed), where there is nobody to check.
    pub clients: Option<Clients>,
    /// Where answered decisions are recorded (sampled, never waited for).
    pub decisions: DecisionLog,
    /// The store's entity generation the in-memory directory reflects.
    entity_generation: AtomicU64,
    /// Serialises publishes and entity changes so store and memory move together.
    admin_lock: Mutex<()>,
    /// Set when the server shuts down, so long-lived `WatchPolicy` streams end and a
    /// graceful shutdown does not wait on them forever.
    closing: watch::Sender<bool>,
    /// The configured directory sync, if any.
    pub directory_sync: Option<Arc<DirectorySync>>,
    /// The newest revocation's seq: `WatchRevocations` streams wake when it moves.
    revocation_head: watch::Sender<u64>,
    /// When the scheduler runs the next sync (RFC 3339), for `directory status`.
    next_sync: std::sync::Mutex<Option<String>>,
}

impl EngineState {
    /// `entity_generation`: the store's entity generation read *before* the
    /// directory the engine holds was loaded.
    pub fn new(
        engine: Arc<Engine>,
        store: Store,
        version: Option<VersionInfo>,
        entity_generation: u64,
        clients: Option<Clients>,
        decisions: DecisionLog,
        directory_sync: Option<Arc<DirectorySync>>,
    ) -> Arc<Self> {
        Arc::new(EngineState {
            engine,
            store,
            version: watch::channel(version).0,
            entity_generation: AtomicU64::new(entity_generation),
            clients,
            decisions,
            admin_lock: Mutex::new(()),
            closing: watch::channel(false).0,
            directory_sync,
            revocation_head: watch::channel(0).0,
            next_sync: std::sync::Mutex::new(None),
        })
    }

    /// Held while entities change, so store and memory move together.
    pub(crate) async fn admin_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.admin_lock.lock().await
    }

    /// Serves `directory`, just written to the store as entity `generation` (call
    /// with the admin lock held).
    pub(crate) fn install_directory(&self, directory: Directory, generation: u64) {
        self.engine.replace_directory(directory);
        // Only when no other replica's change came in between is the directory now
        // that generation; otherwise the next refresh reloads it from the store.
        let _ = self.entity_generation.compare_exchange(
            generation - 1,
            generation,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        tracing::info!(generation, "entities changed");
    }

    /// New revocations are in the store up to `seq`: wake the gateways' streams.
    pub(crate) fn revocations_advanced(&self, seq: u64) {
        self.revocation_head.send_if_modified(|head| {
            let moved = seq > *head;
            *head = (*head).max(seq);
            moved
        });
    }

    pub(crate) fn set_next_sync(&self, at: Option<String>) {
        *self.next_sync.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// Ends every long-lived stream (`DecideStream`, `WatchPolicy`,
    /// `WatchRevocations`): called when the server shuts down.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// `stream`, ended when the server shuts down, so that a graceful shutdown does
    /// not wait on a stream its client keeps open.
    fn until_closed<S: Stream>(
        &self,
        stream: S,
    ) -> futures::stream::TakeUntil<S, impl Future<Output = ()>> {
        let mut closing = self.closing.subscribe();
        futures::StreamExt::take_until(stream, async move {
            let _ = closing.wait_for(|c| *c).await;
        })
    }

    /// Catches up with changes made through another replica: a newer policy version,
    /// and entity changes (the store's entity generation moved). Returns whether
    /// anything was reloaded.
    pub async fn refresh(&self) -> Result<bool, String> {
        let entities = self.refresh_entities().await?;
        let head = self
            .store
            .last_revocation()
            .await
            .map_err(|e| e.to_string())?;
        self.revocations_advanced(head);
        Ok(self.refresh_policies().await? || entities)
    }

    /// The entity generation the served directory is at.
    pub(crate) fn entity_generation(&self) -> u64 {
        self.entity_generation.load(Ordering::Acquire)
    }

    pub(crate) async fn refresh_entities(&self) -> Result<bool, String> {
        let known = self.entity_generation.load(Ordering::Acquire);
        // Read the generation before the entities: a change landing in between is
        // then loaded now and again at the next check, never missed.
        let generation = self
            .store
            .entity_generation()
            .await
            .map_err(|e| e.to_string())?;
        if generation <= known {
            return Ok(false);
        }
        let _guard = self.admin_lock.lock().await;
        let batch = self
            .store
            .load_entities()
            .await
            .map_err(|e| e.to_string())?;
        let directory = Directory::from_batch(batch)
            .map_err(|e| format!("stored entities are inconsistent: {e}"))?;
        self.engine.replace_directory(directory);
        self.entity_generation
            .fetch_max(generation, Ordering::AcqRel);
        tracing::info!(generation, "reloaded entities changed elsewhere");
        Ok(true)
    }

    async fn refresh_policies(&self) -> Result<bool, String> {
        let latest = self
            .store
            .latest_version()
            .await
            .map_err(|e| e.to_string())?;
        match latest {
            Some(v) => self.serve_stored_version(v.version).await,
            None => Ok(false),
        }
    }

    fn served_version(&self) -> u64 {
        self.version.borrow().as_ref().map_or(0, |v| v.version)
    }

    /// Serves the stored policy `version`, unless this replica already serves it or
    /// a newer one. Returns whether it now serves `version`. The check is made
    /// again under the admin lock: a publish through this replica may have served
    /// a newer version while a refresh, holding an older "latest", waited for it,
    /// and policy versions only move forward.
    pub async fn serve_stored_version(&self, version: u64) -> Result<bool, String> {
        if version <= self.served_version() {
            return Ok(false);
        }
        let _guard = self.admin_lock.lock().await;
        if version <= self.served_version() {
            return Ok(false);
        }
        let (info, sources) = self
            .store
            .get_version(Some(version))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("version {version} vanished"))?;
        let compiled =
            CompiledPolicies::compile(sources, info.version).map_err(|e| e.to_string())?;
        self.engine.replace_policies(compiled);
        tracing::info!(
            version = info.version,
            "serving policy version published elsewhere"
        );
        self.version.send_replace(Some(info));
        Ok(true)
    }
}

fn request_id(given: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if given.is_empty() {
        format!(
            "eng-{:x}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    } else {
        given.chars().take(128).collect()
    }
}

fn invalid(what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(what.to_string())
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::UnknownUser(_) | EngineError::UnknownDevice(_) => {
            Status::not_found(e.to_string())
        }
        EngineError::BadHour(_) | EngineError::Entities(_) => {
            Status::invalid_argument(e.to_string())
        }
        EngineError::Cedar { .. } => Status::internal(e.to_string()),
    }
}

fn decision_request(
    user: String,
    device: String,
    action: &str,
    ctx: Option<pb::DecisionContext>,
) -> Result<DecisionRequest, Status> {
    let ctx = ctx.unwrap_or_default();
    if user.is_empty() {
        return Err(invalid("user is empty"));
    }
    if device.is_empty() {
        return Err(invalid("device is empty"));
    }
    let via = if ctx.via.is_empty() {
        Via::Console
    } else {
        Via::from_str(&ctx.via).map_err(invalid)?
    };
    let hour = match ctx.hour {
        None => current_hour(),
        Some(h) if h <= 23 => h as u8,
        Some(h) => return Err(invalid(format!("hour {h} is out of range (expected 0-23)"))),
    };
    Ok(DecisionRequest {
        user,
        device,
        action: Action::from_str(action).map_err(invalid)?,
        via,
        upstream: FactorSet::parse_names(&ctx.upstream)
            .map_err(|e| invalid(format!("upstream: {e}")))?,
        hour,
    })
}

fn factor_set(s: FactorSet) -> pb::FactorSet {
    pb::FactorSet {
        factors: s.names().into_iter().map(String::from).collect(),
    }
}

fn version_info(v: &VersionInfo) -> pb::PolicyVersionInfo {
    pb::PolicyVersionInfo {
        version: v.version,
        digest: v.digest.clone(),
        created_at: v.created_at.clone(),
        comment: v.comment.clone(),
        policy_count: v.policy_count,
    }
}

fn diagnostic(d: &Diagnostic) -> pb::Diagnostic {
    pb::Diagnostic {
        severity: d.severity.name().into(),
        code: d.code.into(),
        location: d
            .location
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        message: d.message.clone(),
        policy_ids: d.policy_ids.clone(),
    }
}

fn store_status(e: crate::store::StoreError) -> Status {
    use crate::store::StoreError;
    match e {
        // Another replica won a race: nothing was stored, and a retry can succeed.
        StoreError::Conflict { .. }
        | StoreError::EntitiesMoved { .. }
        | StoreError::DirectoryMoved { .. } => {
            tracing::warn!(error = %e, "store change lost a race with another replica");
            Status::aborted(format!("policy store: {e}"))
        }
        e => {
            tracing::error!(error = %e, "store failure");
            Status::unavailable(format!("policy store: {e}"))
        }
    }
}

/// `sekisho.v1.PolicyDecision`.
#[derive(Clone)]
pub struct DecisionService(pub Arc<EngineState>);

type VersionStream =
    Pin<Box<dyn Stream<Item = Result<pb::PolicyVersionInfo, Status>> + Send + 'static>>;

type DecideStream =
    Pin<Box<dyn Stream<Item = Result<pb::DecideResponse, Status>> + Send + 'static>>;

/// Most calls one decision batch may carry: a gateway sends at most what its logons
/// are waiting for, far fewer; the bound keeps one batch from holding a worker long.
pub const MAX_DECIDE_CALLS: usize = 256;

/// The decisions themselves, shared by the single calls and `DecideStream`.
impl DecisionService {
    fn check_gateway<T>(&self, request: &Request<T>) -> Result<(), Status> {
        Clients::check_gateway(self.0.clients.as_ref(), request)
    }

    /// Refuses a device this engine files under another tier than the calling
    /// gateway's. An unknown device passes: its decision answers NotFound.
    fn check_tier(&self, gateway_tier: &str, device: &str) -> Result<(), Status> {
        if gateway_tier.is_empty() {
            return Ok(());
        }
        let tier =
            Tier::from_str(gateway_tier).map_err(|e| invalid(format!("gateway_tier: {e}")))?;
        match self.0.engine.with_directory(|d| d.device(device).map(|r| r.tier)) {
            Some(filed) if filed != tier => Err(Status::failed_precondition(format!(
                "device '{device}' is filed under tier {} at the policy engine, not {} (the calling gateway's): register it under one tier at both",
                filed.name(),
                tier.name()
            ))),
            _ => Ok(()),
        }
    }

    fn plan_one(&self, r: pb::PlanRequest) -> Result<pb::PlanResponse, Status> {
        let id = request_id(&r.request_id);
        let span = tracing::info_span!("plan", request_id = %id, user = %r.user, device = %r.device, action = %r.action);
        let _e = span.enter();
        self.check_tier(&r.gateway_tier, &r.device)?;
        let req = decision_request(r.user, r.device, &r.action, r.context)?;
        let enrolled = match &r.enrolled {
            Some(set) => Some(
                FactorSet::parse_names(&set.factors)
                    .map_err(|e| invalid(format!("enrolled: {e}")))?,
            ),
            None => None,
        };
        let inputs = PlanInputs {
            emergency_otp_active: r.emergency_otp_active,
            enrolled,
            mask_unknown_user: r.mask_unknown_user,
        };
        let outcome = self.0.engine.plan_for(&req, &inputs);
        let response = outcome.as_ref().map(|plan| {
            tracing::debug!(options = plan.options.len(), version = %plan.policy_version, "planned");
            pb::PlanResponse {
                options: plan.options.iter().copied().map(factor_set).collect(),
                unavailable: plan
                    .unavailable
                    .iter()
                    .map(|u| pb::UnavailableSet {
                        factors: u.factors.names().into_iter().map(String::from).collect(),
                        missing: u.missing.names().into_iter().map(String::from).collect(),
                        why: u.why.name().into(),
                    })
                    .collect(),
                policy_version: plan.policy_version.clone(),
            }
        });
        let response = response.map_err(|e| engine_status(e.clone()));
        if self.0.decisions.sampled() {
            self.0.decisions.record(Decision {
                ts_ms: chrono::Utc::now().timestamp_millis(),
                request_id: id,
                request: req,
                decided: Decided::Plan {
                    inputs,
                    outcome: outcome.map_err(|e| e.to_string()),
                },
            });
        }
        response
    }

    fn authorize_one(&self, r: pb::AuthorizeRequest) -> Result<pb::AuthorizeResponse, Status> {
        let id = request_id(&r.request_id);
        let span = tracing::info_span!("authorize", request_id = %id, user = %r.user, device = %r.device, action = %r.action);
        let _e = span.enter();
        self.check_tier(&r.gateway_tier, &r.device)?;
        let factors =
            FactorSet::parse_names(&r.factors).map_err(|e| invalid(format!("factors: {e}")))?;
        let req = decision_request(r.user, r.device, &r.action, r.context)?;
        let outcome = self.0.engine.authorize(&req, factors);
        let response = match &outcome {
            Ok(out) => {
                tracing::debug!(allowed = out.allowed, version = %out.policy_version, "authorized");
                Ok(pb::AuthorizeResponse {
                    decision: if out.allowed {
                        pb::Decision::Allow
                    } else {
                        pb::Decision::Deny
                    } as i32,
                    policy_ids: out.policy_ids.clone(),
                    policy_version: out.policy_version.clone(),
                    errors: out.errors.clone(),
                })
            }
            Err(e) => Err(engine_status(e.clone())),
        };
        if self.0.decisions.sampled() {
            self.0.decisions.record(Decision {
                ts_ms: chrono::Utc::now().timestamp_millis(),
                request_id: id,
                request: req,
                decided: Decided::Authorize {
                    factors,
                    outcome: outcome.map_err(|e| e.to_string()),
                },
            });
        }
        response
    }

    /// One decision batch: each call answered as it would have been alone.
    fn decide_batch(&self, batch: pb::DecideRequest) -> Result<pb::DecideResponse, Status> {
        use pb::decision_answer::Answer;
        use pb::decision_call::Call;
        let calls = batch.calls;
        if calls.len() > MAX_DECIDE_CALLS {
            return Err(invalid(format!(
                "{} calls in one decision batch; at most {MAX_DECIDE_CALLS}",
                calls.len()
            )));
        }
        let answers = calls
            .into_iter()
            .map(|call| {
                let answer = match call.call {
                    Some(Call::Plan(r)) => self.plan_one(r).map(Answer::Plan),
                    Some(Call::Authorize(r)) => self.authorize_one(r).map(Answer::Authorize),
                    None => Err(invalid(
                        "a decision call is neither a plan nor an authorize",
                    )),
                };
                pb::DecisionAnswer {
                    answer: Some(answer.unwrap_or_else(|status| {
                        Answer::Failure(pb::DecisionFailure {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        })
                    })),
                }
            })
            .collect();
        Ok(pb::DecideResponse { answers })
    }
}

#[tonic::async_trait]
impl pb::policy_decision_server::PolicyDecision for DecisionService {
    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        self.check_gateway(&request)?;
        self.plan_one(request.into_inner()).map(Response::new)
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        self.check_gateway(&request)?;
        self.authorize_one(request.into_inner()).map(Response::new)
    }

    type DecideStreamStream = DecideStream;

    /// Answers each batch as it is read, in the response body's own task: a batch
    /// costs no task, channel or hand-off of its own. The first failed batch ends
    /// the stream with its status, as does the engine's shutdown.
    async fn decide_stream(
        &self,
        request: Request<tonic::Streaming<pb::DecideRequest>>,
    ) -> Result<Response<DecideStream>, Status> {
        self.check_gateway(&request)?;
        let service = self.clone();
        let answers = futures::StreamExt::map(request.into_inner(), move |batch| {
            batch.and_then(|b| service.decide_batch(b))
        });
        Ok(Response::new(Box::pin(self.0.until_closed(answers))))
    }

    type WatchPolicyStream = VersionStream;

    async fn watch_policy(
        &self,
        _: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<VersionStream>, Status> {
        let rx = self.0.version.subscribe();
        let stream = tokio_stream::StreamExt::filter_map(
            tokio_stream::wrappers::WatchStream::new(rx),
            |v| v.as_ref().map(|v| Ok(version_info(v))),
        );
        Ok(Response::new(Box::pin(self.0.until_closed(stream))))
    }

    type WatchRevocationsStream = RevocationStream;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<RevocationStream>, Status> {
        self.check_gateway(&request)?;
        let mut after = request.into_inner().after;
        let state = Arc::clone(&self.0);
        let mut head = state.revocation_head.subscribe();
        let mut closing = state.closing.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // Read from the store, not the watch: it holds every revocation, also
                // those made through another replica or while this gateway was away.
                let batch = match state.store.revocations_after(after, 1000).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                let full = batch.len() == 1000;
                for r in batch {
                    after = r.seq;
                    let item = pb::Revocation {
                        seq: r.seq,
                        user: r.user,
                        reason: r.reason,
                        at_ms: r.at_ms,
                    };
                    if tx.send(Ok(item)).await.is_err() {
                        return; // the gateway went away
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    changed = head.wait_for(|h| *h > after) => if changed.is_err() { return },
                    _ = closing.wait_for(|c| *c) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

type RevocationStream =
    Pin<Box<dyn Stream<Item = Result<pb::Revocation, Status>> + Send + 'static>>;

/// Client certificate common names, by what they may call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clients {
    /// The admin API, and everything a gateway may call.
    pub admins: Vec<String>,
    /// Decisions, revocations and audit shipping (`PolicyDecision`, `AuditSink`).
    pub gateways: Vec<String>,
}

impl Clients {
    /// Refuses a client that is neither a gateway nor an administrator: an
    /// endpoint's certificate may come from the same CA, and must not learn plans.
    pub fn check_gateway<T>(clients: Option<&Clients>, request: &Request<T>) -> Result<(), Status> {
        let Some(c) = clients else { return Ok(()) };
        match peer_name(request) {
            Some(n) if c.gateways.contains(&n) || c.admins.contains(&n) => Ok(()),
            Some(n) => {
                tracing::warn!(client = %n, "gateway call refused");
                Err(Status::permission_denied(format!(
                    "client certificate '{n}' is not a gateway (tls.gateway_names)"
                )))
            }
            None => Err(Status::permission_denied(
                "this call needs a client certificate naming a gateway",
            )),
        }
    }
}

/// `sekisho.v1.PolicyAdmin`: only for clients whose certificate names an administrator.
#[derive(Clone)]
pub struct AdminService(pub Arc<EngineState>);

impl AdminService {
    fn authorize_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(allowed) = self.0.clients.as_ref().map(|c| &c.admins) else {
            return Ok(());
        };
        match peer_name(request) {
            Some(n) if allowed.iter().any(|a| a == &n) => Ok(()),
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
}

#[tonic::async_trait]
impl pb::policy_admin_server::PolicyAdmin for AdminService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        self.authorize_admin(&request)?;
        let r = request.into_inner();
        let span = tracing::info_span!("publish", files = r.files.len(), dry_run = r.dry_run);
        async move {
            let sources = PolicySources::new(
                r.schema,
                r.files
                    .into_iter()
                    .map(|f| PolicyFile {
                        name: f.name,
                        text: f.text,
                    })
                    .collect(),
            );
            let _guard = self.0.admin_lock.lock().await;
            let compiled = CompiledPolicies::compile(sources, 0)
                .map_err(|e| Status::invalid_argument(format!("policy set is invalid:\n{e}")))?;
            let policy_count = compiled.policies.len() as u32;
            let directory = self.0.engine.with_directory(Directory::clone);
            // Lint against the entities the new version will meet.
            let candidate = Engine::new(compiled, directory);
            let mut diags = candidate.policies().warnings.clone();
            diags.extend(crate::lint::lint(&candidate));
            let errors: Vec<&Diagnostic> = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            if !errors.is_empty() && !r.force {
                let text = errors
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(Status::failed_precondition(format!(
                    "lint found {} error(s); fix them or publish with force:\n{text}",
                    errors.len()
                )));
            }
            let diagnostics = diags.iter().map(diagnostic).collect();
            if r.dry_run {
                return Ok(Response::new(pb::PublishResponse {
                    version: None,
                    diagnostics,
                }));
            }
            // Publishing the set that is already served is a no-op, not a new version.
            let current = self.0.version.borrow().clone();
            if let Some(cur) = current.filter(|c| c.digest == candidate.policies().digest) {
                tracing::info!(
                    version = cur.version,
                    "identical to the current version; nothing stored"
                );
                return Ok(Response::new(pb::PublishResponse {
                    version: Some(version_info(&cur)),
                    diagnostics,
                }));
            }
            let sources = candidate.policies().sources.clone();
            let info = self
                .0
                .store
                .publish(&sources, &r.comment, policy_count)
                .await
                .map_err(store_status)?;
            let compiled = CompiledPolicies::compile(sources, info.version).map_err(|e| {
                Status::internal(format!("published version no longer compiles: {e}"))
            })?;
            self.0.engine.replace_policies(compiled);
            tracing::info!(version = info.version, digest = %info.digest, "published");
            self.0.version.send_replace(Some(info.clone()));
            Ok(Response::new(pb::PublishResponse {
                version: Some(version_info(&info)),
                diagnostics,
            }))
        }
        .instrument(span)
        .await
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        self.authorize_admin(&request)?;
        let versions = self.0.store.list_versions().await.map_err(store_status)?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: versions.iter().map(version_info).collect(),
        }))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        self.authorize_admin(&request)?;
        let v = request.into_inner().version;
        let wanted = (v != 0).then_some(v);
        let (info, sources) = self
            .0
            .store
            .get_version(wanted)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(if v == 0 {
                    "no policy version published yet".into()
                } else {
                    format!("no policy version {v}")
                })
            })?;
        let wire = publish_request(sources, "", false, false);
        Ok(Response::new(pb::PolicyVersion {
            info: Some(version_info(&info)),
            schema: wire.schema,
            files: wire.files,
        }))
    }

    async fn upsert_entities(
        &self,
        request: Request<pb::UpsertEntitiesRequest>,
    ) -> Result<Response<pb::UpsertEntitiesResponse>, Status> {
        self.authorize_admin(&request)?;
        let batch = entity_batch(request.into_inner())?;
        let counts = pb::UpsertEntitiesResponse {
            users: batch.users.len() as u32,
            groups: batch.groups.len() as u32,
            devices: batch.devices.len() as u32,
        };
        self.change_entities(batch, EntityDeletion::default())
            .await?;
        Ok(Response::new(counts))
    }

    async fn delete_entities(
        &self,
        request: Request<pb::DeleteEntitiesRequest>,
    ) -> Result<Response<pb::DeleteEntitiesResponse>, Status> {
        self.authorize_admin(&request)?;
        let mut del = EntityDeletion::default();
        for (i, e) in request.into_inner().entities.into_iter().enumerate() {
            match pb::EntityKind::try_from(e.kind) {
                Ok(pb::EntityKind::User) => del.users.push(e.id),
                Ok(pb::EntityKind::Group) => del.groups.push(e.id),
                Ok(pb::EntityKind::Device) => del.devices.push(e.id),
                _ => {
                    return Err(invalid(format!(
                        "entities[{i}]: kind must be user, group or device"
                    )))
                }
            }
        }
        let deleted = self.change_entities(EntityBatch::default(), del).await?;
        Ok(Response::new(pb::DeleteEntitiesResponse { deleted }))
    }

    async fn sync_directory(
        &self,
        request: Request<pb::SyncDirectoryRequest>,
    ) -> Result<Response<pb::SyncReport>, Status> {
        self.authorize_admin(&request)?;
        let admin = peer_name(&request).unwrap_or_else(|| "admin".into());
        let r = request.into_inner();
        let sync = self.directory()?;
        let opts = SyncOptions {
            dry_run: r.dry_run,
            force: r.force,
            full: r.full,
            trigger: format!("admin:{admin}"),
        };
        let span =
            tracing::info_span!("directory_sync", %admin, dry_run = r.dry_run, force = r.force);
        let summary = sync
            .run(&self.0, &opts)
            .instrument(span)
            .await
            .map_err(|e| match e {
                SyncError::NotConfigured => Status::failed_precondition(e.to_string()),
                SyncError::Entities(_) => Status::failed_precondition(e.to_string()),
                SyncError::Fetch(_) | SyncError::CatchUp(_) => Status::unavailable(e.to_string()),
                SyncError::Store(e) => store_status(e),
            })?;
        Ok(Response::new(sync_report(summary)))
    }

    async fn directory_status(
        &self,
        request: Request<pb::DirectoryStatusRequest>,
    ) -> Result<Response<pb::DirectoryStatusResponse>, Status> {
        self.authorize_admin(&request)?;
        let limit = match request.into_inner().limit {
            0 => 10,
            n => n.min(1000),
        };
        let store = &self.0.store;
        let counts = store.directory_counts().await.map_err(store_status)?;
        let runs = store.directory_runs(limit).await.map_err(store_status)?;
        let (url, profile) = match &self.0.directory_sync {
            Some(s) => (s.config.url.clone(), s.config.profile.name().to_string()),
            None => (String::new(), String::new()),
        };
        Ok(Response::new(pb::DirectoryStatusResponse {
            configured: self.0.directory_sync.is_some(),
            url,
            profile,
            active_users: counts.active_users as u32,
            disabled_users: counts.disabled_users as u32,
            groups: counts.groups as u32,
            high_water: counts.high_water.unwrap_or_default(),
            next_run: self
                .0
                .next_sync
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default(),
            runs: runs
                .into_iter()
                .map(|r| pb::SyncRun {
                    id: r.id,
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                    mode: r.mode,
                    outcome: r.outcome,
                    trigger: r.trigger,
                    added: r.added as u32,
                    changed: r.changed as u32,
                    disabled: r.disabled as u32,
                    removed: r.removed as u32,
                    enabled: r.enabled as u32,
                    error: r.error,
                    elapsed_ms: r.elapsed_ms,
                })
                .collect(),
        }))
    }
}

pub(crate) fn peer_name<T>(request: &Request<T>) -> Option<String> {
    request.peer_certs().and_then(|certs| {
        certs
            .first()
            .and_then(|c| crate::pki::common_name(c.as_ref()))
    })
}

fn sync_report(s: SyncSummary) -> pb::SyncReport {
    use crate::directory::diff::ChangeKind as K;
    pb::SyncReport {
        mode: s.mode.into(),
        dry_run: s.dry_run,
        applied: s.applied,
        added: s.count(K::Added) as u32,
        changed: s.count(K::Changed) as u32,
        disabled: s.count(K::Disabled) as u32,
        removed: s.count(K::Removed) as u32,
        enabled: s.count(K::Enabled) as u32,
        unchanged: s.unchanged as u32,
        groups_added: s.groups_added as u32,
        groups_changed: s.groups_changed as u32,
        groups_removed: s.groups_removed as u32,
        directory_users: s.directory_users as u32,
        changes: s
            .changes
            .into_iter()
            .map(|c| pb::UserChange {
                user: c.user,
                change: c.kind.name().into(),
                detail: c.detail,
            })
            .collect(),
        refused: s.refused.unwrap_or_default(),
        run_id: s.run_id,
        elapsed_ms: s.elapsed_ms,
        generation: s.generation.unwrap_or(0),
    }
}

impl AdminService {
    fn directory(&self) -> Result<&Arc<DirectorySync>, Status> {
        self.0
            .directory_sync
            .as_ref()
            .ok_or_else(|| Status::failed_precondition(SyncError::NotConfigured.to_string()))
    }

    /// Checks the change against a copy of the directory, writes it to the store in one
    /// transaction, then applies it in memory: a refused change touches neither.
    /// Applies the change to the store and the served directory together. Returns
    /// how many of the deletions named an entity that existed.
    async fn change_entities(
        &self,
        batch: EntityBatch,
        del: EntityDeletion,
    ) -> Result<u32, Status> {
        // Check against the newest entities, not a stale memory of them: another
        // replica may have removed a group this change refers to.
        self.0.refresh_entities().await.map_err(|e| {
            Status::unavailable(format!("catching up with entity changes failed: {e}"))
        })?;
        let _guard = self.0.admin_lock.lock().await;
        let based_on = self.0.entity_generation();
        let mut copy = self.0.engine.with_directory(Directory::clone);
        let existed = del
            .users
            .iter()
            .filter(|id| copy.user(id).is_some())
            .count()
            + del
                .groups
                .iter()
                .filter(|id| copy.group(id).is_some())
                .count()
            + del
                .devices
                .iter()
                .filter(|id| copy.device(id).is_some())
                .count();
        copy.apply(batch.clone(), del.clone())
            .map_err(|e| invalid(e.to_string()))?;
        let generation = self
            .0
            .store
            .apply_entities_on(&batch, &del, based_on)
            .await
            .map_err(store_status)?;
        self.0.install_directory(copy, generation);
        Ok(u32::try_from(existed).unwrap_or(u32::MAX))
    }
}

fn entity_batch(r: pb::UpsertEntitiesRequest) -> Result<EntityBatch, Status> {
    let mut b = EntityBatch::default();
    for (i, u) in r.users.into_iter().enumerate() {
        let enrolled = FactorSet::parse_names(&u.enrolled)
            .map_err(|e| invalid(format!("users[{i}] ('{}'): enrolled: {e}", u.id)))?;
        b.users.push(UserRecord {
            id: u.id,
            department: u.department,
            role: u.role,
            enrolled,
            groups: u.groups,
        });
    }
    for g in r.groups {
        b.groups.push(GroupRecord {
            id: g.id,
            parents: g.parents,
        });
    }
    for (i, d) in r.devices.into_iter().enumerate() {
        let at = |e: &dyn std::fmt::Display| invalid(format!("devices[{i}] ('{}'): {e}", d.id));
        let tier = Tier::from_str(&d.tier).map_err(|e| at(&e))?;
        let kind = DeviceKind::from_str(&d.kind).map_err(|e| at(&e))?;
        let capabilities = Capabilities::parse_names(&d.capabilities).map_err(|e| at(&e))?;
        b.devices.push(DeviceRecord {
            id: d.id,
            tier,
            kind,
            capabilities,
            location: d.location,
        });
    }
    Ok(b)
}

/// A publish request for these sources (for clients such as the CLI).
pub fn publish_request(
    sources: PolicySources,
    comment: &str,
    dry_run: bool,
    force: bool,
) -> pb::PublishRequest {
    pb::PublishRequest {
        schema: sources.schema,
        files: sources
            .files
            .into_iter()
            .map(|f| pb::PolicyFile {
                name: f.name,
                text: f.text,
            })
            .collect(),
        comment: comment.to_string(),
        dry_run,
        force,
    }
}

/// Wire form of a batch (for clients such as the CLI).
pub fn batch_to_proto(b: &EntityBatch) -> pb::UpsertEntitiesRequest {
    pb::UpsertEntitiesRequest {
        users: b
            .users
            .iter()
            .map(|u| pb::User {
                id: u.id.clone(),
                department: u.department.clone(),
                role: u.role.clone(),
                enrolled: u.enrolled.names().into_iter().map(String::from).collect(),
                groups: u.groups.clone(),
            })
            .collect(),
        groups: b
            .groups
            .iter()
            .map(|g| pb::Group {
                id: g.id.clone(),
                parents: g.parents.clone(),
            })
            .collect(),
        devices: b
            .devices
            .iter()
            .map(|d| pb::Device {
                id: d.id.clone(),
                tier: d.tier.name().into(),
                kind: d.kind.name().into(),
                capabilities: d
                    .capabilities
                    .names()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                location: d.location.clone(),
            })
            .collect(),
    }
}
