//! Replays a [`Workday`] against a [`World`] through the endpoint agent library, and
//! records what each attempt was answered and how long it took.
//!
//! Scripts advance phase by phase (all scripts finish the morning storm before
//! anyone's mid-morning unlock); within a phase, `in_flight` scripts run at once.
//! Nothing is decided here: the simulator only presents and writes down the answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use sekisho_gateway::agent::{Agent, BeginArgs, Capture, Presented};
use sekisho_gateway::factors::totp::{self, TotpParams};
use sekisho_proto::v1 as pb;

use crate::city::{self, City};
use crate::day::{Auth, Lighting, Step, Workday, PHASES};
use crate::rng::Rng;
use crate::world::World;
use crate::SimError;

/// Seconds a person spends presenting each factor: what "staff-minutes at logon"
/// is made of (typing a password, finding the card, looking at the camera).
pub fn effort_secs(factor: &str) -> f64 {
    match factor {
        "password" => 6.0,
        "pin" => 3.0,
        "card" => 4.0,
        "mynumber_card" => 0.0,
        "face" => 2.0,
        "vein" => 3.0,
        "totp" => 10.0,
        "emergency_otp" => 15.0,
        _ => 5.0,
    }
}

/// One answer the services gave (or one administrative action taken).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub script: u32,
    pub step: u32,
    pub attempt: u8,
    pub phase: u8,
    pub user: String,
    pub department: String,
    /// The gateway answered (its tier).
    pub tier: String,
    pub device: String,
    /// logon, unlock, switch_operator, lock, logoff, emergency_otp_issue, unlock_user.
    pub action: String,
    pub allowed: bool,
    /// Deny reason, or the gateway's refusal code (`device_not_registered`).
    pub reason: String,
    pub failed: Vec<(String, String)>,
    /// The option answered (what was verified on allow).
    pub chosen: Vec<String>,
    /// Begin offered no option at all to this user on this device.
    pub offered_none: bool,
    pub latency_us: u64,
    pub attack: Option<crate::day::Attack>,
    pub mistake: bool,
    /// Biometric factor results: (factor, the account owner presented it, matched).
    pub biometric: Vec<(String, bool, bool)>,
}

impl Record {
    /// Seconds the person spent presenting the chosen option.
    pub fn effort(&self) -> f64 {
        self.chosen.iter().map(|f| effort_secs(f)).sum()
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunLog {
    pub records: Vec<Record>,
    /// Wall time and records per phase.
    pub phases: Vec<(String, f64, usize)>,
    pub wall: Duration,
}

/// Progress shared with whoever draws a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    pub phase: AtomicUsize,
}

/// Per-script state carried between phases.
#[derive(Default)]
struct ScriptState {
    sessions: HashMap<String, String>,
    last_totp: Option<String>,
}

struct Ctx<'a> {
    city: &'a City,
    world: &'a World,
    foreign: HashMap<(String, String), Agent>,
}

/// Runs the day with `in_flight` scripts at once.
pub async fn run_day(
    city: &City,
    day: &Workday,
    world: &World,
    in_flight: usize,
    progress: &Progress,
) -> Result<RunLog, SimError> {
    progress.total.store(day.steps() as u64, Ordering::Relaxed);
    // Channels from terminals to gateways of other tiers, made up front so the
    // attack is a call, not a handshake.
    let mut foreign = HashMap::new();
    for s in &day.scripts {
        for (_, st) in &s.steps {
            if let Step::Auth(a) = st {
                if a.attack == Some(crate::day::Attack::WrongTier) {
                    let key = (a.device.clone(), a.gateway.clone());
                    if let std::collections::hash_map::Entry::Vacant(slot) = foreign.entry(key) {
                        slot.insert(world.foreign_agent(&a.device, &a.gateway).await?);
                    }
                }
            }
        }
    }
    let ctx = Arc::new(Ctx {
        city,
        world,
        foreign,
    });
    let mut states: Vec<tokio::sync::Mutex<ScriptState>> = Vec::new();
    states.resize_with(day.scripts.len(), Default::default);
    let states = Arc::new(states);
    let mut records = Vec::new();
    let mut phases = Vec::new();
    let start = Instant::now();
    for phase in 0..PHASES.len() as u8 {
        progress.phase.store(phase as usize, Ordering::Relaxed);
        let t = Instant::now();
        let next = AtomicUsize::new(0);
        let workers = (0..in_flight.max(1)).map(|_| {
            let (ctx, states, next) = (&ctx, &states, &next);
            async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(script) = day.scripts.get(i) else {
                        break;
                    };
                    let mut state = states[i].lock().await;
                    for (k, (p, step)) in script.steps.iter().enumerate() {
                        if *p != phase {
                            continue;
                        }
                        run_step(ctx, &mut state, i as u32, k as u32, *p, step, &mut out).await?;
                        progress.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok::<_, SimError>(out)
            }
        });
        let results = futures::future::join_all(workers).await;
        let mut n = 0;
        for r in results {
            let r = r?;
            n += r.len();
            records.extend(r);
        }
        phases.push((
            PHASES[phase as usize].to_string(),
            t.elapsed().as_secs_f64(),
            n,
        ));
    }
    records.sort_by_key(|r| (r.script, r.step, r.attempt));
    Ok(RunLog {
        records,
        phases,
        wall: start.elapsed(),
    })
}

fn capture_id(script: u32, step: u32, attempt: u8, factor: u8) -> u64 {
    (u64::from(script) << 32)
        | (u64::from(step) << 12)
        | (u64::from(attempt) << 4)
        | u64::from(factor)
}

/// Noise of one capture: the person's own, plus a mask, the light, and now and then
/// a bad capture (moved hand, glare).
fn capture_noise(city: &City, person: usize, factor: &str, a: &Auth, id: u64) -> f32 {
    let p = &city.people[person];
    let mut r = Rng::new(city.seed).fork(0xb0b).fork(id);
    let mut noise = if factor == "vein" {
        0.6 * p.capture_noise
    } else {
        p.capture_noise
    };
    if factor == "face" {
        if a.presents.mask {
            noise += 0.25;
        }
        noise += match a.presents.lighting {
            Some(Lighting::Evening) => 0.15,
            Some(Lighting::Home) => 0.08,
            _ => 0.0,
        };
    }
    if r.chance(0.04) {
        noise += 0.2 + 0.4 * r.f64() as f32;
    }
    noise
}

fn presented(ctx: &Ctx<'_>, state: &ScriptState, a: &Auth, id: (u32, u32, u8)) -> Presented {
    let city = ctx.city;
    let owner = &city.people[a.user];
    let p = &a.presents;
    let mut out = Presented {
        password: p.password.map(|guess| {
            if guess == 0 {
                owner.password(city.seed)
            } else {
                format!("guess-{guess}-{}", owner.id)
            }
        }),
        pin: p.pin.then(|| owner.pin(city.seed)),
        ..Presented::default()
    };
    if p.totp {
        out.totp = if p.replay_totp {
            state.last_totp.clone()
        } else {
            ctx.world.totp.get(&a.user).map(|secret| {
                let step = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() / 30)
                    .unwrap_or(0);
                totp::code_at(secret, &TotpParams::default(), step)
            })
        };
    }
    out.card = p
        .card_of
        .and_then(|i| ctx.world.cards.get(i).cloned().flatten());
    let key = ctx.world.capture_keys.get(&a.device);
    for (factor, who, slot, n) in [
        ("face", p.face_of, &mut out.face, 1u8),
        ("vein", p.vein_of, &mut out.vein, 2u8),
    ] {
        if let (Some(who), Some(key)) = (who, key) {
            let cid = capture_id(id.0, id.1, id.2, n);
            let noise = capture_noise(city, who, factor, a, cid);
            *slot = Some(Capture {
                vector: city::capture(city, who, factor, noise, cid),
                capture_key_pem: key.clone(),
            });
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    ctx: &Ctx<'_>,
    state: &mut ScriptState,
    script: u32,
    step: u32,
    phase: u8,
    st: &Step,
    out: &mut Vec<Record>,
) -> Result<(), SimError> {
    let city = ctx.city;
    let blank = |user: usize, tier: &str, device: &str, action: &str| Record {
        script,
        step,
        attempt: 0,
        phase,
        user: city
            .people
            .get(user)
            .map(|p| p.id.clone())
            .unwrap_or_default(),
        department: city
            .people
            .get(user)
            .map(|p| p.department.clone())
            .unwrap_or_default(),
        tier: tier.to_string(),
        device: device.to_string(),
        action: action.to_string(),
        allowed: false,
        reason: String::new(),
        failed: vec![],
        chosen: vec![],
        offered_none: false,
        latency_us: 0,
        attack: None,
        mistake: false,
        biometric: vec![],
    };
    match st {
        Step::Lock { device, tier } | Step::Logoff { device, tier } => {
            let lock = matches!(st, Step::Lock { .. });
            let Some(session) = state.sessions.get(device).cloned() else {
                return Ok(()); // nobody got in: nothing to lock
            };
            let mut agent = agent(ctx, device)?;
            let t = Instant::now();
            let r = if lock {
                agent.lock(&session).await
            } else {
                agent.logoff(&session).await
            };
            let mut rec = blank(
                usize::MAX,
                tier,
                device,
                if lock { "lock" } else { "logoff" },
            );
            rec.latency_us = t.elapsed().as_micros() as u64;
            match r {
                Ok(s) => {
                    rec.user = s.user;
                    rec.allowed = true;
                }
                Err(e) => rec.reason = error_code(&e),
            }
            if !lock {
                state.sessions.remove(device);
            }
            out.push(rec);
        }
        Step::UnlockUser { user, tier } => {
            let was = unlock_user(ctx, *user, tier).await?;
            let mut rec = blank(*user, tier, "", "unlock_user");
            rec.allowed = was;
            out.push(rec);
        }
        Step::Auth(a) => {
            let mut a = a.clone();
            let mut attempt: u8 = 0;
            let mut otp: Option<String> = None;
            let mut retries = a.retries;
            let mut unlocked_once = false;
            loop {
                let mut p = presented(ctx, state, &a, (script, step, attempt));
                p.emergency_otp = otp.clone();
                let args = BeginArgs {
                    user: city.people[a.user].id.clone(),
                    action: a.action.clone(),
                    via: a.via.clone(),
                    upstream: a.upstream.clone(),
                };
                let mut agent = match &a.attack {
                    Some(crate::day::Attack::WrongTier) => ctx
                        .foreign
                        .get(&(a.device.clone(), a.gateway.clone()))
                        .cloned()
                        .ok_or_else(|| SimError::Setup(format!("no channel for {}", a.device)))?,
                    _ => agent(ctx, &a.device)?,
                };
                let mut rec = blank(a.user, &a.gateway, &a.device, &a.action);
                rec.attempt = attempt;
                rec.attack = a.attack;
                rec.mistake = a.mistake;
                let t = Instant::now();
                let result = agent.authenticate(args, &p).await;
                rec.latency_us = t.elapsed().as_micros() as u64;
                let attempt_result = match result {
                    Ok(r) => r,
                    Err(e) => {
                        rec.reason = error_code(&e);
                        out.push(rec);
                        return Ok(());
                    }
                };
                if p.totp.is_some() {
                    state.last_totp = p.totp.clone();
                }
                let r = &attempt_result.result;
                rec.offered_none = attempt_result.challenge.options.is_empty();
                rec.allowed = attempt_result.allowed();
                rec.reason = r.reason.clone();
                rec.chosen = attempt_result
                    .chosen
                    .map(|s| s.names().iter().map(|n| n.to_string()).collect())
                    .unwrap_or_default();
                for f in &r.factors {
                    if !f.ok {
                        rec.failed.push((f.factor.clone(), f.reason.clone()));
                    }
                    let presenter = match f.factor.as_str() {
                        "face" => a.presents.face_of,
                        "vein" => a.presents.vein_of,
                        _ => continue,
                    };
                    // Only matching outcomes count towards FRR/FAR, not signature faults.
                    if f.ok || f.reason == "mismatch" {
                        rec.biometric
                            .push((f.factor.clone(), presenter == Some(a.user), f.ok));
                    }
                }
                let allowed = rec.allowed;
                let reason = rec.reason.clone();
                let genuine_reject = rec.biometric.iter().any(|(_, genuine, ok)| *genuine && !ok);
                out.push(rec);
                if allowed {
                    if !r.session_id.is_empty() {
                        state
                            .sessions
                            .insert(a.device.clone(), r.session_id.clone());
                    }
                    return Ok(());
                }
                if a.attack.is_some() || a.mistake {
                    return Ok(());
                }
                attempt += 1;
                if genuine_reject && retries > 0 {
                    retries -= 1;
                    continue;
                }
                if reason == "locked" && !unlocked_once {
                    // The helpdesk clears the lockout, and the person tries again.
                    unlocked_once = true;
                    unlock_user(ctx, a.user, &a.gateway).await?;
                    let mut rec = blank(a.user, &a.gateway, "", "unlock_user");
                    rec.attempt = attempt;
                    rec.allowed = true;
                    out.push(rec);
                    continue;
                }
                if reason == "insufficient_factors" && a.helpdesk && otp.is_none() {
                    // The helpdesk issues an emergency OTP by phone.
                    let code = issue_otp(ctx, a.user, &a.gateway).await?;
                    let mut rec = blank(a.user, &a.gateway, "", "emergency_otp_issue");
                    rec.attempt = attempt;
                    rec.allowed = true;
                    out.push(rec);
                    otp = Some(code);
                    a.retries = 0;
                    continue;
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

fn agent(ctx: &Ctx<'_>, device: &str) -> Result<Agent, SimError> {
    ctx.world
        .agents
        .get(device)
        .cloned()
        .ok_or_else(|| SimError::Setup(format!("no channel for terminal {device}")))
}

/// The stable code for a call the gateway refused (`device_not_registered`, …).
fn error_code(e: &sekisho_gateway::agent::AgentError) -> String {
    match e {
        sekisho_gateway::agent::AgentError::Rpc { code, message } => {
            if message.contains("is not registered") {
                "device_not_registered".into()
            } else {
                format!("rpc_{code:?}").to_lowercase()
            }
        }
        other => format!("agent: {other}"),
    }
}

async fn issue_otp(ctx: &Ctx<'_>, user: usize, tier: &str) -> Result<String, SimError> {
    let mut admin = admin(ctx, tier)?;
    let r = admin
        .issue_emergency_otp(pb::IssueEmergencyOtpRequest {
            user: ctx.city.people[user].id.clone(),
            ttl_secs: 7200,
        })
        .await
        .map_err(|s| SimError::Rpc(format!("emergency OTP: {}", s.message())))?;
    Ok(r.into_inner().code)
}

async fn unlock_user(ctx: &Ctx<'_>, user: usize, tier: &str) -> Result<bool, SimError> {
    let mut admin = admin(ctx, tier)?;
    let r = admin
        .unlock_user(pb::UnlockUserRequest {
            user: ctx.city.people[user].id.clone(),
        })
        .await
        .map_err(|s| SimError::Rpc(format!("unlock user: {}", s.message())))?;
    Ok(r.into_inner().was_locked)
}

fn admin(
    ctx: &Ctx<'_>,
    tier: &str,
) -> Result<pb::gateway_admin_client::GatewayAdminClient<tonic::transport::Channel>, SimError> {
    ctx.world
        .admins
        .get(tier)
        .cloned()
        .ok_or_else(|| SimError::Setup(format!("no gateway for tier {tier}")))
}
