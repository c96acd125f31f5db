//! The day's report: what the services answered, per tier and action, how fast, how
//! the biometrics behaved against their thresholds, what the helpdesk had to do,
//! whether every attack was stopped and audited, and whether the audit chains verify.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use sekisho_policy_engine::audit::{verify_chain, AuditEvent, Outcome};

use crate::city::{City, CitySummary};
use crate::day::Attack;
use crate::run::{Record, RunLog};
use crate::world::WorldOptions;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionRow {
    pub tier: String,
    pub action: String,
    pub count: u64,
    pub allowed: u64,
    /// Deny (or refusal) reason → count.
    pub denied: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BiometricRow {
    pub factor: String,
    pub threshold: f32,
    pub genuine: u64,
    pub false_rejects: u64,
    pub impostor: u64,
    pub false_accepts: u64,
}

impl BiometricRow {
    pub fn frr(&self) -> f64 {
        ratio(self.false_rejects, self.genuine)
    }
    pub fn far(&self) -> f64 {
        ratio(self.false_accepts, self.impostor)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttackRow {
    pub attack: Attack,
    pub name: String,
    pub attempts: u64,
    /// Denied with the expected reason (and failing factor).
    pub denied_as_expected: u64,
    /// Let in: only a biometric false accept can do this.
    pub allowed: u64,
    /// Found in a gateway's journal with the expected reason.
    pub audited: u64,
    pub expected: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Helpdesk {
    pub emergency_otps: u64,
    /// `lockout` events journaled.
    pub lockouts: u64,
    /// UnlockUser calls, and how many found the user locked.
    pub unlocks: u64,
    pub unlocks_of_locked: u64,
    /// Attempts where Begin offered nothing this person can present (enrollment gaps).
    pub nothing_to_present: u64,
    /// Biometric retries after a false reject.
    pub biometric_retries: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Slow {
    pub user: String,
    pub device: String,
    pub tier: String,
    pub action: String,
    pub ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChainRow {
    pub gateway: String,
    pub events: u64,
    /// `None`: intact; else the first broken link.
    pub broken: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseRow {
    pub name: String,
    pub secs: f64,
    pub events: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub profile: String,
    pub seed: u64,
    pub city: CitySummary,
    pub policy_version: String,
    pub argon2: String,
    pub setup_secs: f64,
    pub day_secs: f64,
    /// Answers from the services (logons, unlocks, switches, locks, logoffs, admin).
    pub events: u64,
    pub events_per_sec: f64,
    pub phases: Vec<PhaseRow>,
    pub actions: Vec<ActionRow>,
    pub biometrics: Vec<BiometricRow>,
    pub helpdesk: Helpdesk,
    pub attacks: Vec<AttackRow>,
    pub mistakes: u64,
    pub mistakes_denied: u64,
    pub slowest: Vec<Slow>,
    pub chains: Vec<ChainRow>,
    pub audit_events: u64,
    /// "tier/action/allow" or "tier/action/deny:reason" → count: the day's outcome,
    /// which a seed must reproduce exactly.
    pub outcome_counts: BTreeMap<String, u64>,
}

impl Report {
    pub fn audit_verified(&self) -> bool {
        !self.chains.is_empty() && self.chains.iter().all(|c| c.broken.is_none())
    }

    /// Every scripted attack was denied as expected or was a counted biometric false
    /// accept, and each denial is in the audit trail.
    pub fn attacks_stopped(&self) -> bool {
        self.attacks.iter().all(|a| {
            a.attempts > 0
                && a.denied_as_expected + a.allowed == a.attempts
                && a.audited == a.denied_as_expected
        })
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// The outcome key of a record.
pub fn outcome_key(r: &Record) -> String {
    if r.allowed {
        format!("{}/{}/allow", r.tier, r.action)
    } else {
        format!("{}/{}/deny:{}", r.tier, r.action, r.reason)
    }
}

fn audit_key(device: &str, user: &str, action: &str, reason: &str) -> String {
    format!("{device}|{user}|{action}|{reason}")
}

pub fn build(
    city: &City,
    log: &RunLog,
    audit: &[AuditEvent],
    options: &WorldOptions,
    policy_version: &str,
    setup_secs: f64,
) -> Report {
    let records = &log.records;
    // Per tier and action.
    let mut groups: BTreeMap<(String, String), Vec<&Record>> = BTreeMap::new();
    for r in records {
        groups
            .entry((r.tier.clone(), r.action.clone()))
            .or_default()
            .push(r);
    }
    let actions = groups
        .into_iter()
        .map(|((tier, action), rs)| {
            let mut lat: Vec<u64> = rs.iter().map(|r| r.latency_us).collect();
            lat.sort_unstable();
            let mut denied = BTreeMap::new();
            for r in rs.iter().filter(|r| !r.allowed) {
                *denied.entry(r.reason.clone()).or_insert(0) += 1;
            }
            ActionRow {
                tier,
                action,
                count: rs.len() as u64,
                allowed: rs.iter().filter(|r| r.allowed).count() as u64,
                denied,
                p50_ms: percentile(&lat, 0.50),
                p95_ms: percentile(&lat, 0.95),
                p99_ms: percentile(&lat, 0.99),
            }
        })
        .collect();

    let biometrics = [
        ("face", options.face_threshold),
        ("vein", options.vein_threshold),
    ]
    .iter()
    .map(|(factor, threshold)| {
        let mut row = BiometricRow {
            factor: factor.to_string(),
            threshold: *threshold,
            genuine: 0,
            false_rejects: 0,
            impostor: 0,
            false_accepts: 0,
        };
        for (f, genuine, ok) in records.iter().flat_map(|r| &r.biometric) {
            if f != factor {
                continue;
            }
            if *genuine {
                row.genuine += 1;
                row.false_rejects += u64::from(!ok);
            } else {
                row.impostor += 1;
                row.false_accepts += u64::from(*ok);
            }
        }
        row
    })
    .collect();

    let helpdesk = Helpdesk {
        emergency_otps: records
            .iter()
            .filter(|r| r.action == "emergency_otp_issue")
            .count() as u64,
        lockouts: audit.iter().filter(|e| e.body.action == "lockout").count() as u64,
        unlocks: records.iter().filter(|r| r.action == "unlock_user").count() as u64,
        unlocks_of_locked: records
            .iter()
            .filter(|r| r.action == "unlock_user" && r.allowed)
            .count() as u64,
        nothing_to_present: records.iter().filter(|r| r.offered_none).count() as u64,
        biometric_retries: records
            .iter()
            .filter(|r| r.attempt > 0 && !r.biometric.is_empty())
            .count() as u64,
    };

    // Attacks: denied with the expected reason, and found in the journal.
    let mut journal: HashMap<String, u64> = HashMap::new();
    for e in audit.iter().filter(|e| e.body.outcome == Outcome::Deny) {
        let b = &e.body;
        let mut reasons = vec![b.reason.clone()];
        for (f, code) in &b.failed {
            reasons.push(format!("{}:{f}={code}", b.reason));
        }
        for reason in reasons {
            *journal
                .entry(audit_key(&b.device, &b.user, &b.action, &reason))
                .or_insert(0) += 1;
        }
    }
    let attacks = Attack::ALL
        .iter()
        .map(|&attack| {
            let (reason, factor) = attack.expected();
            let expected_key = match factor {
                Some((f, code)) => format!("{reason}:{f}={code}"),
                None => reason.to_string(),
            };
            let mut row = AttackRow {
                attack,
                name: attack.name().to_string(),
                attempts: 0,
                denied_as_expected: 0,
                allowed: 0,
                audited: 0,
                expected: expected_key.clone(),
            };
            for r in records.iter().filter(|r| r.attack == Some(attack)) {
                row.attempts += 1;
                if r.allowed {
                    row.allowed += 1;
                    continue;
                }
                let factor_ok = factor
                    .is_none_or(|(f, code)| r.failed.iter().any(|(rf, rc)| rf == f && rc == code));
                if r.reason == reason && factor_ok {
                    row.denied_as_expected += 1;
                    let key = audit_key(&r.device, &r.user, &r.action, &expected_key);
                    if let Some(n) = journal.get_mut(&key).filter(|n| **n > 0) {
                        *n -= 1;
                        row.audited += 1;
                    }
                }
            }
            row
        })
        .collect();

    let mut logons: Vec<&Record> = records
        .iter()
        .filter(|r| r.action == "logon" && r.attack.is_none())
        .collect();
    logons.sort_by_key(|r| std::cmp::Reverse(r.latency_us));
    let slowest = logons
        .iter()
        .take(10)
        .map(|r| Slow {
            user: r.user.clone(),
            device: r.device.clone(),
            tier: r.tier.clone(),
            action: r.action.clone(),
            ms: r.latency_us as f64 / 1000.0,
        })
        .collect();

    let mut by_gateway: BTreeMap<String, Vec<&AuditEvent>> = BTreeMap::new();
    for e in audit {
        by_gateway
            .entry(e.body.gateway.clone())
            .or_default()
            .push(e);
    }
    let chains = by_gateway
        .into_iter()
        .map(|(gateway, mut events)| {
            events.sort_by_key(|e| e.body.seq);
            let broken = verify_chain(&gateway, events.iter().copied())
                .err()
                .map(|b| format!("{b:?}"));
            ChainRow {
                gateway,
                events: events.len() as u64,
                broken,
            }
        })
        .collect();

    let mut outcome_counts = BTreeMap::new();
    for r in records {
        *outcome_counts.entry(outcome_key(r)).or_insert(0) += 1;
    }
    let day_secs = log.wall.as_secs_f64();
    let a = &options.argon2;
    Report {
        profile: city.profile.name().to_string(),
        seed: city.seed,
        city: city.summary(),
        policy_version: policy_version.to_string(),
        argon2: format!(
            "m={} KiB, t={}, p={}{}",
            a.memory_kib,
            a.iterations,
            a.parallelism,
            if a.demo_only_weak {
                " (demo parameters, not for production)"
            } else {
                ""
            }
        ),
        setup_secs,
        day_secs,
        events: records.len() as u64,
        events_per_sec: ratio(records.len() as u64, 1) / day_secs.max(1e-9),
        phases: log
            .phases
            .iter()
            .map(|(name, secs, events)| PhaseRow {
                name: name.clone(),
                secs: *secs,
                events: *events,
            })
            .collect(),
        actions,
        biometrics,
        helpdesk,
        attacks,
        mistakes: records.iter().filter(|r| r.mistake).count() as u64,
        mistakes_denied: records.iter().filter(|r| r.mistake && !r.allowed).count() as u64,
        slowest,
        chains,
        audit_events: audit.len() as u64,
        outcome_counts,
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

impl Report {
    /// The terminal report.
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let c = &self.city;
        let _ = writeln!(
            o,
            "sekisho demo — profile {} (seed {}), policy version {}",
            self.profile, self.seed, self.policy_version
        );
        let _ = writeln!(
            o,
            "  city: {} staff, {} terminals ({}); {} without an IC card, {} using a My Number card, {} VDI users without TOTP",
            c.staff,
            c.terminals,
            c.terminals_by_tier
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            c.without_card,
            c.with_mynumber_card,
            c.vdi_without_totp
        );
        let _ = writeln!(o, "  Argon2id: {}", self.argon2);
        let _ = writeln!(
            o,
            "  setup (services, PKI, enrollment) {:.1} s; the day {:.1} s: {} answers, {:.0}/s",
            self.setup_secs, self.day_secs, self.events, self.events_per_sec
        );
        let _ = writeln!(o, "\nPhases");
        for p in &self.phases {
            let _ = writeln!(
                o,
                "  {:<28} {:>7} answers {:>7.2} s {:>8.0}/s",
                p.name,
                p.events,
                p.secs,
                ratio(p.events as u64, 1) / p.secs.max(1e-9)
            );
        }
        let _ = writeln!(o, "\nPer tier and action                 count   allow    deny   p50 ms   p95 ms   p99 ms  deny reasons");
        for a in &self.actions {
            let reasons = a
                .denied
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                o,
                "  {:<9} {:<22} {:>7} {:>7} {:>7} {:>8.2} {:>8.2} {:>8.2}  {}",
                a.tier,
                a.action,
                a.count,
                a.allowed,
                a.count - a.allowed,
                a.p50_ms,
                a.p95_ms,
                a.p99_ms,
                reasons
            );
        }
        let _ = writeln!(
            o,
            "\nBiometrics (observed against the configured thresholds)"
        );
        for b in &self.biometrics {
            let _ = writeln!(
                o,
                "  {:<5} threshold {:.2}: {} genuine captures, {} false rejects (FRR {}); {} impostor captures, {} false accepts (FAR {})",
                b.factor,
                b.threshold,
                b.genuine,
                b.false_rejects,
                pct(b.frr()),
                b.impostor,
                b.false_accepts,
                pct(b.far())
            );
        }
        let h = &self.helpdesk;
        let _ = writeln!(o, "\nThe helpdesk's day");
        let _ = writeln!(o, "  emergency OTPs issued        {}", h.emergency_otps);
        let _ = writeln!(o, "  lockouts                     {}", h.lockouts);
        let _ = writeln!(
            o,
            "  unlock-user calls            {} ({} found the user locked)",
            h.unlocks, h.unlocks_of_locked
        );
        let _ = writeln!(
            o,
            "  nothing to present (gaps)    {} attempts where Begin offered no factor set this person has",
            h.nothing_to_present
        );
        let _ = writeln!(o, "  biometric retries            {}", h.biometric_retries);
        let _ = writeln!(
            o,
            "  mistyped passwords           {} ({} denied)",
            self.mistakes, self.mistakes_denied
        );
        let _ = writeln!(
            o,
            "\nAttacks                                 tries  denied  audited  let in  expected"
        );
        for a in &self.attacks {
            let _ = writeln!(
                o,
                "  {:<36} {:>6} {:>7} {:>8} {:>7}  {}",
                a.name, a.attempts, a.denied_as_expected, a.audited, a.allowed, a.expected
            );
        }
        let _ = writeln!(o, "\nSlowest logons");
        for s in &self.slowest {
            let _ = writeln!(
                o,
                "  {:>8.2} ms  {} on {} ({})",
                s.ms, s.user, s.device, s.tier
            );
        }
        let _ = writeln!(
            o,
            "\nAudit: {} events in {} journals; chains {}",
            self.audit_events,
            self.chains.len(),
            if self.audit_verified() {
                "verified".to_string()
            } else {
                format!(
                    "BROKEN: {}",
                    self.chains
                        .iter()
                        .filter_map(|c| c.broken.as_ref().map(|b| format!("{} {b}", c.gateway)))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        );
        o
    }
}
