//! Plan and Authorize (DESIGN.md §3) over a policy version and a directory.
//!
//! Cedar only ever sees a request's *slice*: the policies whose scope can match its
//! action, tier and the user's groups. With 1,000 policies a request meets about nine.
//!
//! Plan evaluates the slice once, partially, with `context.factors` unknown. What is
//! left of each policy is a condition on factors only, which compiles to a 256-bit
//! truth table ([`FactorTable`]); the minimal permitted sets are read off that table.
//! The table depends only on the attributes the policies read, so it is cached per
//! policy version and attribute class ([`crate::analysis::References`]) and shared by everyone in the
//! class; restricting it to one user's enrolled factors and one device's capabilities
//! is a few bit operations.
//!
//! The cached entry keeps each policy's own table too, so Authorize reads the decision
//! and its deciding policies off the tables of its class (computed by the gateway's
//! Plan, or by the first Authorize of the class) instead of evaluating Cedar again.
//! Tests check that this agrees with a Cedar evaluation set by set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{
    Authorizer, Context, Decision, Effect, PolicySet, Request, RestrictedExpression,
};

use crate::entities::{
    self, DeviceRecord, Directory, EntityBatch, EntityDeletion, EntityError, User,
};
use crate::factor::{Factor, FactorSet, FactorTable};
use crate::model::{Action, Tier, Via};
use crate::policies::CompiledPolicies;

/// Everything a decision is about, apart from the factors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRequest {
    pub user: String,
    pub device: String,
    pub action: Action,
    pub via: Via,
    pub upstream: FactorSet,
    /// Local hour 0–23 (see [`current_hour`]).
    pub hour: u8,
}

/// The current local hour, for requests that do not say.
pub fn current_hour() -> u8 {
    use chrono::Timelike;
    chrono::Local::now().hour() as u8
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unavailability {
    /// The user has not enrolled (some of) the factors.
    NotEnrolled,
    /// This device cannot capture (some of) the factors, whatever the user enrolls.
    NoCapability,
}

impl Unavailability {
    pub fn name(self) -> &'static str {
        match self {
            Unavailability::NotEnrolled => "not_enrolled",
            Unavailability::NoCapability => "no_capability",
        }
    }
}

/// A permitted set this user cannot present on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableSet {
    pub factors: FactorSet,
    pub missing: FactorSet,
    pub why: Unavailability,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Minimal permitted sets the user can present here, in plan order.
    pub options: Vec<FactorSet>,
    pub unavailable: Vec<UnavailableSet>,
    pub policy_version: String,
}

/// What a gateway adds to a plan request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanInputs {
    /// An emergency one-time password is active for the user.
    pub emergency_otp_active: bool,
    /// The user's enrolment in the calling gateway's credential store, which is the
    /// authority for its tier; `None` uses the directory's `enrolled` attribute.
    pub enrolled: Option<FactorSet>,
    /// Plan for an unknown user as for a stand-in with no groups (who enrolled
    /// `enrolled`, or every factor without it), so that a challenge never tells
    /// whether a user exists.
    pub mask_unknown_user: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeOutcome {
    pub allowed: bool,
    /// The policies that determined the decision, sorted: the satisfied permits on
    /// allow, the satisfied forbids on an explicit deny, none on default deny.
    pub policy_ids: Vec<String>,
    pub policy_version: String,
    /// Policies that failed to evaluate (skipped, as Cedar does), with the reason.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown user '{0}'")]
    UnknownUser(String),
    #[error("unknown device '{0}'")]
    UnknownDevice(String),
    #[error("hour {0} is out of range (expected 0-23)")]
    BadHour(u32),
    #[error("cedar rejected the request for user '{user}' on device '{device}': {message}")]
    Cedar {
        user: String,
        device: String,
        message: String,
    },
    #[error(transparent)]
    Entities(#[from] EntityError),
}

/// Which policies can apply, per (action, tier), split by principal scope.
#[derive(Debug, Default)]
struct Bucket {
    any_principal: Vec<u32>,
    by_group: HashMap<String, Vec<u32>>,
    by_user: HashMap<String, Vec<u32>>,
}

const TIERS: usize = 4;

fn bucket_index(action: Action, tier: Tier) -> usize {
    action.index() * TIERS + tier.index()
}

/// A bucket and the principal-specific policies of it that a request meets.
type SliceKey = (usize, Vec<u32>);

/// A table, plus its minimal sets over every factor (enough for monotone tables).
#[derive(Debug)]
struct CachedTable {
    table: FactorTable,
    monotone: bool,
    minimal: Vec<FactorSet>,
    /// Each policy of the slice that can still apply, as a function of the factors;
    /// `None` when a residual was not a plain factor condition (the table then came
    /// from evaluating every set). With it, Authorize is a few bit tests.
    policies: Option<Vec<PolicyTable>>,
    /// Policies that fail to evaluate whatever the factors (skipped, as Cedar does).
    errors: Vec<String>,
}

/// One policy of a slice as a function of the factors.
#[derive(Debug)]
struct PolicyTable {
    id: String,
    effect: Effect,
    table: FactorTable,
}

impl CachedTable {
    fn new(table: FactorTable, policies: Option<Vec<PolicyTable>>, errors: Vec<String>) -> Self {
        CachedTable {
            monotone: table.is_monotone(),
            minimal: table.minimal_sets(FactorSet::ALL),
            table,
            policies,
            errors,
        }
    }

    /// Cedar's answer for a presented set, read off the per-policy tables: deny with
    /// the satisfied forbids if any, else allow with the satisfied permits if any,
    /// else deny with none.
    fn decide(&self, presented: FactorSet) -> Option<(bool, Vec<String>)> {
        let parts = self.policies.as_ref()?;
        let satisfied = |effect: Effect| -> Vec<String> {
            let mut ids: Vec<String> = parts
                .iter()
                .filter(|p| p.effect == effect && p.table.get(presented))
                .map(|p| p.id.clone())
                .collect();
            ids.sort();
            ids
        };
        let forbids = satisfied(Effect::Forbid);
        if !forbids.is_empty() {
            return Some((false, forbids));
        }
        let permits = satisfied(Effect::Permit);
        Some((!permits.is_empty(), permits))
    }
}

/// A policy version with its derived indexes and caches; replaced whole on publish.
struct Snapshot {
    policies: Arc<CompiledPolicies>,
    label: String,
    buckets: Vec<Bucket>,
    slices: Mutex<HashMap<SliceKey, Arc<PolicySet>>>,
    tables: Mutex<HashMap<Vec<u8>, Arc<CachedTable>>>,
}

/// Bounds on the caches: past these a cache starts over rather than grow.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub plan_tables: usize,
    pub slices: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            plan_tables: 100_000,
            slices: 10_000,
        }
    }
}

impl Snapshot {
    fn new(policies: Arc<CompiledPolicies>) -> Self {
        let mut buckets: Vec<Bucket> = (0..Action::ALL.len() * TIERS)
            .map(|_| Bucket::default())
            .collect();
        for (i, info) in policies.policies.iter().enumerate() {
            let actions = info
                .scope
                .actions
                .clone()
                .unwrap_or_else(|| Action::ALL.to_vec());
            let tiers = info
                .scope
                .tier
                .map(|t| vec![t])
                .unwrap_or_else(|| Tier::ALL.to_vec());
            for a in &actions {
                for t in &tiers {
                    let b = &mut buckets[bucket_index(*a, *t)];
                    match &info.scope.principal {
                        crate::analysis::PrincipalScope::Any => b.any_principal.push(i as u32),
                        crate::analysis::PrincipalScope::Group(g) => {
                            b.by_group.entry(g.clone()).or_default().push(i as u32)
                        }
                        crate::analysis::PrincipalScope::User(u) => {
                            b.by_user.entry(u.clone()).or_default().push(i as u32)
                        }
                    }
                }
            }
        }
        Snapshot {
            label: policies.label(),
            policies,
            buckets,
            slices: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// The policies a request of this user, action and tier can meet.
    fn slice(
        &self,
        action: Action,
        tier: Tier,
        user: &User,
        limits: &CacheLimits,
    ) -> Arc<PolicySet> {
        let bi = bucket_index(action, tier);
        let bucket = &self.buckets[bi];
        let mut specific: Vec<u32> = Vec::new();
        if !bucket.by_group.is_empty() {
            for g in user.ancestors.iter() {
                if let Some(v) = bucket.by_group.get(g.as_ref()) {
                    specific.extend_from_slice(v);
                }
            }
        }
        if let Some(v) = bucket.by_user.get(&user.record.id) {
            specific.extend_from_slice(v);
        }
        specific.sort_unstable();
        specific.dedup();
        let key = (bi, specific);
        let mut slices = lock(&self.slices);
        if let Some(s) = slices.get(&key) {
            return s.clone();
        }
        let mut set = PolicySet::new();
        for i in bucket.any_principal.iter().chain(key.1.iter()) {
            // Ids are unique within a compiled set, so adding cannot fail.
            let _ = set.add(self.policies.policies[*i as usize].policy.clone());
        }
        let set = Arc::new(set);
        if slices.len() >= limits.slices {
            slices.clear();
        }
        slices.insert(key, set.clone());
        set
    }

    /// The cache key of a plan table: the request's attribute class. Only what the
    /// policies can read goes in, so staff who look alike to the policies share one.
    fn table_key(&self, req: &DecisionRequest, user: &User, device: &DeviceRecord) -> Vec<u8> {
        let r = &self.policies.references;
        let mut k = Vec::with_capacity(128);
        let mut field = |b: &[u8]| {
            k.extend_from_slice(&(b.len() as u32).to_le_bytes());
            k.extend_from_slice(b);
        };
        field(&[req.action as u8, device.tier as u8]);
        if r.reads("via") {
            field(req.via.name().as_bytes());
        }
        if r.reads("upstream") {
            field(&[req.upstream.bits()]);
        }
        if r.reads("hour") {
            field(&[req.hour]);
        }
        if r.user_literal {
            field(user.record.id.as_bytes());
        }
        for g in user.ancestors.iter() {
            field(g.as_bytes());
        }
        field(b"|");
        if r.reads("department") {
            field(user.record.department.as_bytes());
        }
        if r.reads("role") {
            field(user.record.role.as_bytes());
        }
        if r.reads("cohort") {
            field(&[user.cohort]);
        }
        if r.reads("enrolled") {
            field(&[user.record.enrolled.bits()]);
        }
        if r.device_literal {
            field(device.id.as_bytes());
        }
        if r.reads("kind") {
            field(device.kind.name().as_bytes());
        }
        if r.reads("location") {
            field(device.location.as_bytes());
        }
        if r.reads("capabilities") {
            field(&[FactorSet::capturable_with(device.capabilities).bits()]);
        }
        k
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a cache lock leaves a cache, not an invariant: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The decision engine: the current policy version and the directory.
pub struct Engine {
    snapshot: RwLock<Arc<Snapshot>>,
    directory: RwLock<Directory>,
    authorizer: Authorizer,
    limits: CacheLimits,
    fallbacks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("policy_version", &self.policy_label())
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(policies: CompiledPolicies, directory: Directory) -> Self {
        Self::with_limits(policies, directory, CacheLimits::default())
    }

    pub fn with_limits(
        policies: CompiledPolicies,
        directory: Directory,
        limits: CacheLimits,
    ) -> Self {
        Engine {
            snapshot: RwLock::new(Arc::new(Snapshot::new(Arc::new(policies)))),
            directory: RwLock::new(directory),
            authorizer: Authorizer::new(),
            limits,
            fallbacks: Default::default(),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves a new policy version from now on; decisions in flight finish on the old.
    pub fn replace_policies(&self, policies: CompiledPolicies) {
        let snap = Arc::new(Snapshot::new(Arc::new(policies)));
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snap;
    }

    pub fn policies(&self) -> Arc<CompiledPolicies> {
        self.snapshot().policies.clone()
    }

    pub fn policy_label(&self) -> String {
        self.snapshot().label.clone()
    }

    /// Applies entity changes atomically (all or nothing).
    pub fn apply_entities(
        &self,
        batch: EntityBatch,
        del: EntityDeletion,
    ) -> Result<(), EngineError> {
        let mut dir = self.directory.write().unwrap_or_else(|p| p.into_inner());
        dir.apply(batch, del)?;
        Ok(())
    }

    /// Serves a whole new directory from now on (a reload from the store).
    pub fn replace_directory(&self, directory: Directory) {
        *self.directory.write().unwrap_or_else(|p| p.into_inner()) = directory;
    }

    /// Reads the directory (briefly: decisions wait while this runs).
    pub fn with_directory<R>(&self, f: impl FnOnce(&Directory) -> R) -> R {
        f(&self.directory.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn lookup(&self, req: &DecisionRequest) -> Result<(Arc<User>, Arc<DeviceRecord>), EngineError> {
        if req.hour > 23 {
            return Err(EngineError::BadHour(u32::from(req.hour)));
        }
        let dir = self.directory.read().unwrap_or_else(|p| p.into_inner());
        let user = dir
            .user(&req.user)
            .cloned()
            .ok_or_else(|| EngineError::UnknownUser(req.user.clone()))?;
        let device = dir
            .device(&req.device)
            .cloned()
            .ok_or_else(|| EngineError::UnknownDevice(req.device.clone()))?;
        Ok((user, device))
    }

    fn lookup_device(&self, id: &str) -> Result<Arc<DeviceRecord>, EngineError> {
        self.with_directory(|d| d.device(id).cloned())
            .ok_or_else(|| EngineError::UnknownDevice(id.to_string()))
    }

    fn cedar_error(req: &DecisionRequest, message: String) -> EngineError {
        EngineError::Cedar {
            user: req.user.clone(),
            device: req.device.clone(),
            message,
        }
    }

    fn cedar_entities(
        req: &DecisionRequest,
        user: &User,
        device: &DeviceRecord,
    ) -> Result<cedar_policy::Entities, EngineError> {
        entities::request_entities(user, device).map_err(|m| Self::cedar_error(req, m))
    }

    /// The Cedar request; `factors: None` leaves `context.factors` unknown.
    fn cedar_request(
        req: &DecisionRequest,
        user: &User,
        device: &DeviceRecord,
        factors: Option<FactorSet>,
    ) -> Result<Request, EngineError> {
        let cedar_err = |message: String| Self::cedar_error(req, message);
        let set = |s: FactorSet| {
            RestrictedExpression::new_set(
                s.names()
                    .into_iter()
                    .map(|n| RestrictedExpression::new_string(n.to_string())),
            )
        };
        let factors = match factors {
            Some(f) => set(f),
            None => RestrictedExpression::new_unknown("factors"),
        };
        let context = Context::from_pairs([
            ("factors".to_string(), factors),
            (
                "via".to_string(),
                RestrictedExpression::new_string(req.via.name().to_string()),
            ),
            ("upstream".to_string(), set(req.upstream.closed())),
            (
                "hour".to_string(),
                RestrictedExpression::new_long(i64::from(req.hour)),
            ),
        ])
        .map_err(|e| cedar_err(e.to_string()))?;
        let request = Request::new(
            entities::user_uid(&user.record.id),
            entities::action_uid(req.action),
            entities::device_uid(&device.id),
            context,
            None,
        )
        .map_err(|e| cedar_err(e.to_string()))?;
        Ok(request)
    }

    /// Allow or deny given the factors actually verified. `mynumber_card` implies
    /// `card` (verifying one yields both).
    ///
    /// The answer is read off the attribute class's per-policy tables, computed once
    /// per class and policy version (a gateway's Plan has usually computed them
    /// already); Cedar evaluates only when a residual was not a plain factor condition.
    pub fn authorize(
        &self,
        req: &DecisionRequest,
        factors: FactorSet,
    ) -> Result<AuthorizeOutcome, EngineError> {
        let (user, device) = self.lookup(req)?;
        let snap = self.snapshot();
        let cached = self.table(&snap, req, &user, &device)?;
        match cached.decide(factors.closed()) {
            Some((allowed, policy_ids)) => Ok(AuthorizeOutcome {
                allowed,
                policy_ids,
                policy_version: snap.label.clone(),
                errors: cached.errors.clone(),
            }),
            None => self.authorize_evaluated(&snap, req, &user, &device, factors),
        }
    }

    /// [`Engine::authorize`] by one Cedar evaluation of the slice, without the class
    /// tables (neither read nor filled). For benchmarks and for checking the tables.
    pub fn authorize_uncached(
        &self,
        req: &DecisionRequest,
        factors: FactorSet,
    ) -> Result<AuthorizeOutcome, EngineError> {
        let (user, device) = self.lookup(req)?;
        self.authorize_evaluated(&self.snapshot(), req, &user, &device, factors)
    }

    /// Authorize by one Cedar evaluation of the slice.
    fn authorize_evaluated(
        &self,
        snap: &Snapshot,
        req: &DecisionRequest,
        user: &User,
        device: &DeviceRecord,
        factors: FactorSet,
    ) -> Result<AuthorizeOutcome, EngineError> {
        let slice = snap.slice(req.action, device.tier, user, &self.limits);
        let es = Self::cedar_entities(req, user, device)?;
        let request = Self::cedar_request(req, user, device, Some(factors.closed()))?;
        let response = self.authorizer.is_authorized(&request, &slice, &es);
        let mut policy_ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        policy_ids.sort();
        let errors = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        Ok(AuthorizeOutcome {
            allowed: response.decision() == Decision::Allow,
            policy_ids,
            policy_version: snap.label.clone(),
            errors,
        })
    }

    /// The minimal factor sets that would be permitted, restricted to what the user
    /// enrolled and the device can capture (plus `emergency_otp` when one is active),
    /// and the permitted sets that are unavailable, with why.
    pub fn plan(
        &self,
        req: &DecisionRequest,
        emergency_otp_active: bool,
    ) -> Result<Plan, EngineError> {
        let inputs = PlanInputs {
            emergency_otp_active,
            ..PlanInputs::default()
        };
        self.plan_with(req, &inputs, true)
    }

    /// [`Engine::plan`] as a gateway asks for it: with the enrolment of its tier's
    /// credential store, and masking unknown users.
    pub fn plan_for(
        &self,
        req: &DecisionRequest,
        inputs: &PlanInputs,
    ) -> Result<Plan, EngineError> {
        self.plan_with(req, inputs, true)
    }

    /// [`Engine::plan`] without the plan-table cache (neither read nor filled): what
    /// the first request of an attribute class costs. For benchmarks and diagnosis.
    pub fn plan_uncached(
        &self,
        req: &DecisionRequest,
        emergency_otp_active: bool,
    ) -> Result<Plan, EngineError> {
        let inputs = PlanInputs {
            emergency_otp_active,
            ..PlanInputs::default()
        };
        self.plan_with(req, &inputs, false)
    }

    fn plan_with(
        &self,
        req: &DecisionRequest,
        inputs: &PlanInputs,
        use_cache: bool,
    ) -> Result<Plan, EngineError> {
        let (user, device) = match self.lookup(req) {
            Err(EngineError::UnknownUser(id)) if inputs.mask_unknown_user => {
                tracing::info!(user = %id, "unknown user: planning as a stand-in with no groups");
                let device = self.lookup_device(&req.device)?;
                (Arc::new(User::stand_in(&id)), device)
            }
            other => other?,
        };
        // A masked user is planned with what the gateway sent too: a stand-in that
        // enrolled everything would be offered every permitted set and never a
        // "not enrolled", which a real user's plan seldom looks like.
        let enrolled = inputs.enrolled.unwrap_or(user.record.enrolled);
        let emergency_otp_active = inputs.emergency_otp_active;
        let snap = self.snapshot();
        let cached = if use_cache {
            self.table(&snap, req, &user, &device)?
        } else {
            Arc::new(self.compute_table(&snap, req, &user, &device)?)
        };

        let capturable = FactorSet::capturable_with(device.capabilities);
        let mut available = enrolled
            .without(Factor::EmergencyOtp)
            .intersection(capturable)
            .closed();
        let mut universe = FactorSet::ALL.without(Factor::EmergencyOtp);
        if emergency_otp_active {
            available = available.with(Factor::EmergencyOtp);
            universe = universe.with(Factor::EmergencyOtp);
        }
        let (options, permitted): (Vec<FactorSet>, Vec<FactorSet>) = if cached.monotone {
            // Minimal sets of a monotone table restricted to a sub-universe are its
            // minimal sets that lie inside it.
            let inside: Vec<FactorSet> = cached
                .minimal
                .iter()
                .copied()
                .filter(|m| m.is_subset(universe))
                .collect();
            (
                inside
                    .iter()
                    .copied()
                    .filter(|m| m.is_subset(available))
                    .collect(),
                inside,
            )
        } else {
            (
                cached.table.minimal_sets(available),
                cached.table.minimal_sets(universe),
            )
        };
        let unavailable = permitted
            .into_iter()
            .filter(|m| !m.is_subset(available) && !options.iter().any(|o| o.is_subset(*m)))
            .map(|factors| {
                let missing = factors.difference(available);
                let why = if missing.is_subset(capturable) {
                    Unavailability::NotEnrolled
                } else {
                    Unavailability::NoCapability
                };
                UnavailableSet {
                    factors,
                    missing,
                    why,
                }
            })
            .collect();
        Ok(Plan {
            options,
            unavailable,
            policy_version: snap.label.clone(),
        })
    }

    fn table(
        &self,
        snap: &Snapshot,
        req: &DecisionRequest,
        user: &User,
        device: &DeviceRecord,
    ) -> Result<Arc<CachedTable>, EngineError> {
        let key = snap.table_key(req, user, device);
        if let Some(t) = lock(&snap.tables).get(&key) {
            return Ok(t.clone());
        }
        let cached = Arc::new(self.compute_table(snap, req, user, device)?);
        let mut tables = lock(&snap.tables);
        if tables.len() >= self.limits.plan_tables {
            tables.clear();
        }
        tables.insert(key, cached.clone());
        Ok(cached)
    }

    /// Which factor sets would be permitted for this request: one partial evaluation,
    /// falling back to evaluating every closed set when a residual is not a plain
    /// factor condition.
    fn compute_table(
        &self,
        snap: &Snapshot,
        req: &DecisionRequest,
        user: &User,
        device: &DeviceRecord,
    ) -> Result<CachedTable, EngineError> {
        let slice = snap.slice(req.action, device.tier, user, &self.limits);
        let es = Self::cedar_entities(req, user, device)?;
        let request = Self::cedar_request(req, user, device, None)?;
        let partial = self.authorizer.is_authorized_partial(&request, &slice, &es);
        let errors: Vec<String> = partial
            .definitely_errored()
            .map(|id| format!("policy '{id}' failed to evaluate"))
            .collect();
        let mut parts: Vec<PolicyTable> = partial
            .definitely_satisfied()
            .map(|p| PolicyTable {
                id: p.id().to_string(),
                effect: p.effect(),
                table: FactorTable::TRUE,
            })
            .collect();
        let mut exact = true;
        for p in partial.nontrivial_residuals() {
            match crate::analysis::residual_table(&p) {
                Some(table) => parts.push(PolicyTable {
                    id: p.id().to_string(),
                    effect: p.effect(),
                    table,
                }),
                None => {
                    exact = false;
                    break;
                }
            }
        }
        if exact {
            let any = |effect: Effect| {
                parts
                    .iter()
                    .filter(|p| p.effect == effect)
                    .fold(FactorTable::FALSE, |acc, p| acc.or(p.table))
            };
            let table = any(Effect::Permit).and(any(Effect::Forbid).not());
            return Ok(CachedTable::new(table, Some(parts), errors));
        }
        self.fallbacks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(user = %req.user, device = %req.device, "plan falls back to evaluating every factor set");
        let mut table = FactorTable::FALSE;
        for m in 0..=255u8 {
            let s = FactorSet::from_bits(m);
            if !s.is_closed() {
                continue;
            }
            let request = Self::cedar_request(req, user, device, Some(s))?;
            if self
                .authorizer
                .is_authorized(&request, &slice, &es)
                .decision()
                == Decision::Allow
            {
                table = table.or(FactorTable::has_exactly(s));
                // A set with mynumber_card but no card stands for its closure.
                if s.contains(Factor::MynumberCard) {
                    table = table.or(FactorTable::has_exactly(s.without(Factor::Card)));
                }
            }
        }
        Ok(CachedTable::new(table, None, errors))
    }

    /// How many plan tables had to be computed by evaluating every factor set (a
    /// residual that was not a plain factor condition). Zero for monotone policies.
    pub fn plan_fallbacks(&self) -> u64 {
        self.fallbacks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The minimal permitted sets over every factor for this request, ignoring what the
    /// user enrolled and the device captures (for lints).
    pub fn permitted_sets(&self, req: &DecisionRequest) -> Result<Vec<FactorSet>, EngineError> {
        let (user, device) = self.lookup(req)?;
        let snap = self.snapshot();
        Ok(self.table(&snap, req, &user, &device)?.minimal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::parse_entities_json;
    use crate::policies::{PolicyFile, PolicySources};

    const SCHEMA: &str = include_str!("../../policies/sekisho.cedarschema");
    const ENTITIES: &str = r#"[
      {"uid": {"type": "Sekisho::Group", "id": "staff"}},
      {"uid": {"type": "Sekisho::Group", "id": "admins"}, "parents": [{"type": "Sekisho::Group", "id": "staff"}]},
      {"uid": {"type": "Sekisho::User", "id": "alice"},
       "attrs": {"department": "tax", "role": "staff", "enrolled": ["card", "password", "totp"]},
       "parents": [{"type": "Sekisho::Group", "id": "staff"}]},
      {"uid": {"type": "Sekisho::User", "id": "bob"},
       "attrs": {"department": "it", "role": "admin", "enrolled": ["password", "face", "mynumber_card"]},
       "parents": [{"type": "Sekisho::Group", "id": "admins"}]},
      {"uid": {"type": "Sekisho::Device", "id": "desk"},
       "attrs": {"kind": "desktop", "capabilities": ["card"], "location": "2F"},
       "parents": [{"type": "Sekisho::Tier", "id": "lgwan"}]},
      {"uid": {"type": "Sekisho::Device", "id": "laptop"},
       "attrs": {"kind": "mobile", "capabilities": ["face"], "location": "2F"},
       "parents": [{"type": "Sekisho::Tier", "id": "lgwan"}]}
    ]"#;

    fn engine(policies: &str) -> Engine {
        let sources = PolicySources::new(
            SCHEMA.into(),
            vec![PolicyFile {
                name: "t.cedar".into(),
                text: policies.into(),
            }],
        );
        let compiled = CompiledPolicies::compile(sources, 3).unwrap();
        let dir = Directory::from_batch(parse_entities_json("e", ENTITIES).unwrap()).unwrap();
        Engine::new(compiled, dir)
    }

    fn req(user: &str, device: &str, action: Action) -> DecisionRequest {
        DecisionRequest {
            user: user.into(),
            device: device.into(),
            action,
            via: Via::Console,
            upstream: FactorSet::EMPTY,
            hour: 10,
        }
    }

    fn names(sets: &[FactorSet]) -> Vec<Vec<&'static str>> {
        sets.iter().map(|s| s.names()).collect()
    }

    const LGWAN: &str = r#"
        @id("desk")
        permit(principal, action == Sekisho::Action::"logon", resource in Sekisho::Tier::"lgwan")
        when { resource.kind == "desktop" &&
               (context.factors.containsAll(["card", "password"]) || context.factors.containsAll(["face", "password"])) };
        @id("desk-emergency")
        permit(principal, action == Sekisho::Action::"logon", resource in Sekisho::Tier::"lgwan")
        when { resource.kind == "desktop" && context.factors.containsAll(["emergency_otp", "password"]) };
        @id("admins-elevate")
        permit(principal in Sekisho::Group::"admins", action == Sekisho::Action::"elevate", resource)
        when { context.factors.containsAll(["mynumber_card", "password"]) || context.factors.containsAll(["totp", "password"]) };
        @id("night")
        forbid(principal, action, resource) when { context.hour < 6 };
    "#;

    #[test]
    fn plan_is_minimal_restricted_and_explained() {
        let e = engine(LGWAN);
        let p = e.plan(&req("alice", "desk", Action::Logon), false).unwrap();
        assert_eq!(names(&p.options), [["card", "password"]]);
        assert_eq!(p.unavailable.len(), 1);
        let u = &p.unavailable[0];
        assert_eq!(
            (u.factors.names(), u.missing.names(), u.why),
            (
                vec!["face", "password"],
                vec!["face"],
                Unavailability::NoCapability
            )
        );
        assert_eq!(p.policy_version, "v3");

        // Emergency OTP shows up only while one is active.
        let p = e.plan(&req("alice", "desk", Action::Logon), true).unwrap();
        assert_eq!(
            names(&p.options),
            [vec!["card", "password"], vec!["emergency_otp", "password"]]
        );

        // bob enrolled a My Number card: it is a card, so card+password is presentable.
        let p = e.plan(&req("bob", "desk", Action::Logon), false).unwrap();
        assert_eq!(names(&p.options), [["card", "password"]]);
        // On a device with no matching permit, no options and nothing unavailable.
        let p = e.plan(&req("bob", "laptop", Action::Logon), false).unwrap();
        assert!(p.options.is_empty() && p.unavailable.is_empty());
    }

    #[test]
    fn plan_for_groups_and_not_enrolled() {
        let e = engine(LGWAN);
        let p = e.plan(&req("bob", "desk", Action::Elevate), false).unwrap();
        assert_eq!(names(&p.options), [["card", "mynumber_card", "password"]]);
        assert_eq!(p.unavailable[0].why, Unavailability::NotEnrolled);
        assert_eq!(p.unavailable[0].missing.names(), ["totp"]);
        // alice is not an admin: nothing permitted at all.
        let p = e
            .plan(&req("alice", "desk", Action::Elevate), false)
            .unwrap();
        assert!(p.options.is_empty() && p.unavailable.is_empty());
        // The forbid at night removes everything.
        let mut r = req("bob", "desk", Action::Elevate);
        r.hour = 3;
        assert!(e.plan(&r, false).unwrap().options.is_empty());
    }

    #[test]
    fn a_masked_unknown_user_is_planned_like_a_known_one_with_the_same_enrolment() {
        let e = engine(LGWAN);
        let sent = |user: &str, enrolled: Option<&[&str]>| {
            let inputs = PlanInputs {
                enrolled: enrolled.map(|f| FactorSet::parse_names(f.iter().copied()).unwrap()),
                mask_unknown_user: true,
                ..PlanInputs::default()
            };
            let p = e
                .plan_for(&req(user, "desk", Action::Logon), &inputs)
                .unwrap();
            let unavailable: Vec<_> = p
                .unavailable
                .iter()
                .map(|u| (u.factors.names(), u.why))
                .collect();
            (names(&p.options), unavailable)
        };
        // With the enrolment a gateway sends, nobody and alice look alike, "not
        // enrolled" included.
        let typical: &[&str] = &["password"];
        assert_eq!(sent("nobody", Some(typical)), sent("alice", Some(typical)));
        assert_eq!(
            sent("nobody", Some(typical)).1,
            [
                (vec!["card", "password"], Unavailability::NotEnrolled),
                (vec!["face", "password"], Unavailability::NoCapability),
            ]
        );
        // Without one, the stand-in enrolled everything.
        assert_eq!(sent("nobody", None).0, [["card", "password"]]);
        // Without masking, an unknown user is an error.
        let unmasked = PlanInputs::default();
        assert!(matches!(
            e.plan_for(&req("nobody", "desk", Action::Logon), &unmasked),
            Err(EngineError::UnknownUser(_))
        ));
    }

    #[test]
    fn authorize_names_determining_policies() {
        let e = engine(LGWAN);
        let r = req("alice", "desk", Action::Logon);
        let ok = e
            .authorize(&r, FactorSet::parse_names(["card", "password"]).unwrap())
            .unwrap();
        assert!(ok.allowed);
        assert_eq!(ok.policy_ids, ["desk"]);
        let no = e
            .authorize(&r, FactorSet::parse_names(["password"]).unwrap())
            .unwrap();
        assert!(!no.allowed && no.policy_ids.is_empty());
        let mut night = r.clone();
        night.hour = 2;
        let no = e
            .authorize(
                &night,
                FactorSet::parse_names(["card", "password"]).unwrap(),
            )
            .unwrap();
        assert_eq!(
            (no.allowed, no.policy_ids.clone()),
            (false, vec!["night".to_string()])
        );
        // mynumber_card alone stands for both card names.
        let b = e
            .authorize(
                &req("bob", "desk", Action::Elevate),
                FactorSet::parse_names(["mynumber_card", "password"]).unwrap(),
            )
            .unwrap();
        assert!(b.allowed);
        assert!(
            matches!(e.authorize(&req("carol", "desk", Action::Logon), FactorSet::EMPTY), Err(EngineError::UnknownUser(u)) if u == "carol")
        );
        assert!(matches!(
            e.authorize(&req("alice", "nope", Action::Logon), FactorSet::EMPTY),
            Err(EngineError::UnknownDevice(_))
        ));
    }

    #[test]
    fn plan_agrees_with_authorize_on_every_set() {
        // The plan's table and the per-policy tables Authorize answers from must say
        // exactly what a Cedar evaluation says, set by set, deciding policies included.
        let e = engine(LGWAN);
        for (user, device, action) in [
            ("alice", "desk", Action::Logon),
            ("bob", "desk", Action::Elevate),
            ("bob", "laptop", Action::Logon),
        ] {
            let mut r = req(user, device, action);
            for hour in [3, 10] {
                r.hour = hour;
                let snap = e.snapshot();
                let (u, d) = e.lookup(&r).unwrap();
                let t = e.compute_table(&snap, &r, &u, &d).unwrap();
                assert!(t.policies.is_some(), "residuals compile: no fallback");
                for m in 0..=255u8 {
                    let s = FactorSet::from_bits(m);
                    if !s.is_closed() {
                        continue;
                    }
                    let evaluated = e.authorize_evaluated(&snap, &r, &u, &d, s).unwrap();
                    assert_eq!(t.table.get(s), evaluated.allowed, "{user} {device} {s}");
                    assert_eq!(
                        t.decide(s),
                        Some((evaluated.allowed, evaluated.policy_ids.clone())),
                        "{user} {device} {s}"
                    );
                }
            }
        }
        assert_eq!(e.plan_fallbacks(), 0);
    }

    #[test]
    fn authorize_answers_from_a_cached_plan() {
        let e = engine(LGWAN);
        let r = req("alice", "desk", Action::Logon);
        let cp = FactorSet::parse_names(["card", "password"]).unwrap();
        let before = e.authorize(&r, cp).unwrap();
        e.plan(&r, false).unwrap();
        let after = e.authorize(&r, cp).unwrap();
        assert_eq!(before, after);
        assert_eq!(after.policy_ids, ["desk"]);
    }

    #[test]
    fn non_monotone_policies_still_plan_correctly() {
        // "password alone, but not if you also show a card" is perverse but must not
        // produce a wrong plan: the exact table is used.
        let e = engine(
            r#"
            @id("weird")
            permit(principal, action == Sekisho::Action::"logon", resource)
            when { context.factors.contains("password") && !context.factors.contains("card") };
            @id("size")
            permit(principal, action == Sekisho::Action::"unlock", resource)
            when { context.factors == ["pin"] };
        "#,
        );
        let p = e.plan(&req("alice", "desk", Action::Logon), false).unwrap();
        assert_eq!(names(&p.options), [["password"]]);
        // `==` on the set is opaque to the compiler: the fallback evaluates each set.
        let p = e
            .plan(&req("alice", "desk", Action::Unlock), false)
            .unwrap();
        assert!(p.options.is_empty());
        assert_eq!(p.unavailable[0].factors.names(), ["pin"]);
        assert_eq!(p.unavailable[0].why, Unavailability::NotEnrolled);
    }

    #[test]
    fn entity_changes_apply_to_the_next_plan() {
        let e = engine(LGWAN);
        let r = req("alice", "desk", Action::Logon);
        assert_eq!(e.plan(&r, false).unwrap().options.len(), 1);
        let mut alice = e.with_directory(|d| d.user("alice").unwrap().record.clone());
        alice.enrolled = FactorSet::parse_names(["password"]).unwrap();
        e.apply_entities(
            EntityBatch {
                users: vec![alice],
                ..Default::default()
            },
            EntityDeletion::default(),
        )
        .unwrap();
        let p = e.plan(&r, false).unwrap();
        assert!(p.options.is_empty());
        assert_eq!(p.unavailable[0].missing.names(), ["card"]);
    }
}
