//! What-if: the same city and the same day under a second policy set, compared step
//! by step with the first. Who would be asked for more, who would be locked out, and
//! how many staff-minutes the change adds at logon, per tier and department.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::run::{Record, RunLog};

/// A person who could work on a tier today under the current policies and could not
/// under the proposed ones, because nothing they have enrolled satisfies them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct LockedOut {
    pub user: String,
    pub department: String,
    pub tier: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AskedMore {
    pub user: String,
    pub department: String,
    pub tier: String,
    /// Seconds spent presenting factors today, now and under the proposal.
    pub before_secs: f64,
    pub after_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupDiff {
    pub tier: String,
    pub department: String,
    pub asked_more: u64,
    pub locked_out: u64,
    pub staff_minutes_added: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhatIf {
    pub policy_version_before: String,
    pub policy_version_after: String,
    pub locked_out: Vec<LockedOut>,
    pub asked_more: Vec<AskedMore>,
    /// Steps allowed before and denied under the proposal.
    pub newly_denied: u64,
    /// Steps denied before and allowed under the proposal.
    pub newly_allowed: u64,
    pub emergency_otps_before: u64,
    pub emergency_otps_after: u64,
    pub staff_minutes_added: f64,
    pub by_group: Vec<GroupDiff>,
}

/// Seconds a call to the helpdesk for an emergency OTP costs the person.
const HELPDESK_CALL_SECS: f64 = 180.0;

#[derive(Default)]
struct StepSummary {
    user: String,
    department: String,
    tier: String,
    allowed: bool,
    offered_none: bool,
    effort: f64,
    counts: bool,
}

fn steps(log: &RunLog) -> BTreeMap<(u32, u32), StepSummary> {
    let mut out: BTreeMap<(u32, u32), StepSummary> = BTreeMap::new();
    for r in &log.records {
        let s = out.entry((r.script, r.step)).or_default();
        match r.action.as_str() {
            "logon" | "unlock" | "switch_operator" => {
                s.user.clone_from(&r.user);
                s.department.clone_from(&r.department);
                s.tier.clone_from(&r.tier);
                s.allowed |= r.allowed;
                s.offered_none |= r.offered_none;
                s.effort += Record::effort(r);
                s.counts = r.attack.is_none() && !r.mistake;
            }
            "emergency_otp_issue" => s.effort += HELPDESK_CALL_SECS,
            _ => {}
        }
    }
    out.retain(|_, s| s.counts);
    out
}

pub fn compare(before: &RunLog, after: &RunLog, v_before: &str, v_after: &str) -> WhatIf {
    let b = steps(before);
    let a = steps(after);
    // Per (user, tier): allowed anywhere before / after, offered nothing after.
    let mut allowed_before: BTreeSet<(String, String)> = BTreeSet::new();
    let mut allowed_after: BTreeSet<(String, String)> = BTreeSet::new();
    let mut nothing_after: BTreeMap<(String, String), String> = BTreeMap::new();
    for s in b.values().filter(|s| s.allowed) {
        allowed_before.insert((s.user.clone(), s.tier.clone()));
    }
    for s in a.values() {
        if s.allowed {
            allowed_after.insert((s.user.clone(), s.tier.clone()));
        }
        if s.offered_none {
            nothing_after.insert((s.user.clone(), s.tier.clone()), s.department.clone());
        }
    }
    let locked_out: Vec<LockedOut> = nothing_after
        .iter()
        .filter(|(k, _)| allowed_before.contains(*k) && !allowed_after.contains(*k))
        .map(|((user, tier), department)| LockedOut {
            user: user.clone(),
            department: department.clone(),
            tier: tier.clone(),
        })
        .collect();

    let mut per_person: BTreeMap<(String, String), (String, f64, f64)> = BTreeMap::new();
    let mut groups: BTreeMap<(String, String), GroupDiff> = BTreeMap::new();
    let (mut newly_denied, mut newly_allowed, mut added) = (0u64, 0u64, 0.0f64);
    for (key, sb) in &b {
        let Some(sa) = a.get(key) else { continue };
        newly_denied += u64::from(sb.allowed && !sa.allowed);
        newly_allowed += u64::from(!sb.allowed && sa.allowed);
        let e = per_person
            .entry((sb.user.clone(), sb.tier.clone()))
            .or_insert((sb.department.clone(), 0.0, 0.0));
        e.1 += sb.effort;
        e.2 += sa.effort;
        added += sa.effort - sb.effort;
        let g = groups
            .entry((sb.tier.clone(), sb.department.clone()))
            .or_insert_with(|| GroupDiff {
                tier: sb.tier.clone(),
                department: sb.department.clone(),
                asked_more: 0,
                locked_out: 0,
                staff_minutes_added: 0.0,
            });
        g.staff_minutes_added += (sa.effort - sb.effort) / 60.0;
    }
    let asked_more: Vec<AskedMore> = per_person
        .into_iter()
        .filter(|(k, (_, before, after))| {
            after > before && allowed_after.contains(k) && allowed_before.contains(k)
        })
        .map(|((user, tier), (department, before, after))| AskedMore {
            user,
            department,
            tier,
            before_secs: before,
            after_secs: after,
        })
        .collect();
    for m in &asked_more {
        if let Some(g) = groups.get_mut(&(m.tier.clone(), m.department.clone())) {
            g.asked_more += 1;
        }
    }
    for l in &locked_out {
        if let Some(g) = groups.get_mut(&(l.tier.clone(), l.department.clone())) {
            g.locked_out += 1;
        }
    }
    let otps = |log: &RunLog| {
        log.records
            .iter()
            .filter(|r| r.action == "emergency_otp_issue")
            .count() as u64
    };
    WhatIf {
        policy_version_before: v_before.to_string(),
        policy_version_after: v_after.to_string(),
        locked_out,
        asked_more,
        newly_denied,
        newly_allowed,
        emergency_otps_before: otps(before),
        emergency_otps_after: otps(after),
        staff_minutes_added: added / 60.0,
        by_group: groups
            .into_values()
            .filter(|g| g.asked_more > 0 || g.locked_out > 0 || g.staff_minutes_added.abs() > 0.05)
            .collect(),
    }
}

impl WhatIf {
    pub fn render_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "What-if: the same day under the proposed policies (v{} → proposal)",
            self.policy_version_before
        );
        let _ = writeln!(
            o,
            "  {} staff locked out of a tier, {} asked for more, {} steps newly denied, {} newly allowed",
            self.locked_out.len(),
            self.asked_more.len(),
            self.newly_denied,
            self.newly_allowed
        );
        let _ = writeln!(
            o,
            "  staff-minutes at logon: {:+.1}; emergency OTPs {} → {}",
            self.staff_minutes_added, self.emergency_otps_before, self.emergency_otps_after
        );
        if !self.by_group.is_empty() {
            let _ = writeln!(
                o,
                "\n  tier      department           locked out  asked more  minutes added"
            );
            for g in &self.by_group {
                let _ = writeln!(
                    o,
                    "  {:<9} {:<20} {:>10} {:>11} {:>14.1}",
                    g.tier, g.department, g.locked_out, g.asked_more, g.staff_minutes_added
                );
            }
        }
        if !self.locked_out.is_empty() {
            let _ = writeln!(
                o,
                "\n  Locked out (nothing they have enrolled would satisfy the proposal):"
            );
            for l in self.locked_out.iter().take(50) {
                let _ = writeln!(o, "    {} ({}) on {}", l.user, l.department, l.tier);
            }
            if self.locked_out.len() > 50 {
                let _ = writeln!(
                    o,
                    "    … and {} more (see whatif.json)",
                    self.locked_out.len() - 50
                );
            }
        }
        o
    }
}
