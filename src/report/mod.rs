//! Reports for administrators with little security background: the questions of the
//! yearly security month, answered from the audit trail as plain tables and as one
//! self-contained HTML page with charts ([`html`]).
//!
//! Each report is computed here from events (and, for dormant accounts, the user
//! list), independent of where the events came from (the engine's store or a
//! journal file), so the figures are the same whichever an auditor points at.
//! Times are shown in local time: run with `TZ=Asia/Tokyo` on hosts set to UTC.

pub mod html;

use std::collections::{BTreeMap, HashMap};

use chrono::{Local, TimeZone, Timelike};
use sekisho_gateway::messages::{self, Locale};
use sekisho_policy_engine::audit::{AuditEvent, Outcome};

/// Actions that put a person at a terminal (a successful one starts or continues use).
const PRESENCE_ACTIONS: [&str; 3] = ["logon", "unlock", "switch_operator"];

fn local(unix_ms: i64) -> Option<chrono::DateTime<Local>> {
    match Local.timestamp_millis_opt(unix_ms) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => Some(t),
        chrono::LocalResult::None => None,
    }
}

/// Local date and time with seconds, as tables show event times.
pub fn local_time(unix_ms: i64) -> String {
    local(unix_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| format!("@{unix_ms}ms"))
}

/// Display width in a terminal: East Asian wide characters take two columns, so
/// columns of kanji names line up.
fn width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F
            | 0x2E80..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6 => 2,
            _ => 1,
        })
        .sum()
}

/// A plain table with aligned columns: what a report prints in a terminal.
pub fn print_table<R: AsRef<[String]>>(
    out: &mut impl std::io::Write,
    header: &[&str],
    rows: &[R],
) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(width(cell));
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(cell);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(w - width(cell) + 2));
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(
            out,
            "{}",
            line(r.as_ref().iter().map(String::as_str).collect())
        )?;
    }
    Ok(())
}

/// A user known to the engine, for the dormant-accounts report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownUser {
    pub id: String,
    pub department: String,
    pub role: String,
}

/// One account nobody has used for the period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dormant {
    pub user: KnownUser,
    /// The last successful logon, if there ever was one in the trail.
    pub last_logon_ms: Option<i64>,
}

/// Accounts with no successful logon since `now - days`, longest unused first
/// (never used at all comes first), then by id.
pub fn dormant(
    users: &[KnownUser],
    last_logon: &HashMap<String, i64>,
    now_ms: i64,
    days: u32,
) -> Vec<Dormant> {
    let cutoff = now_ms.saturating_sub(i64::from(days).saturating_mul(86_400_000));
    let mut out: Vec<Dormant> = users
        .iter()
        .filter_map(|u| {
            let last = last_logon.get(&u.id).copied();
            match last {
                Some(t) if t >= cutoff => None,
                _ => Some(Dormant {
                    user: u.clone(),
                    last_logon_ms: last,
                }),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.last_logon_ms
            .cmp(&b.last_logon_ms)
            .then_with(|| a.user.id.cmp(&b.user.id))
    });
    out
}

/// Successful logons on one terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUse {
    pub tier: String,
    pub total: u64,
    /// Local date (`2026-11-22`) → logons.
    pub per_day: BTreeMap<String, u64>,
    /// Local hour 0–23 → logons.
    pub per_hour: [u64; 24],
    pub users: u64,
}

/// Logons per terminal per day and hour, to re-plan where terminals stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUsage {
    pub devices: BTreeMap<String, DeviceUse>,
    /// Every day seen, for the table's columns.
    pub days: Vec<String>,
}

impl DeviceUsage {
    pub fn add(&mut self, e: &AuditEvent, users_seen: &mut HashMap<String, Vec<String>>) {
        let b = &e.body;
        if b.outcome != Outcome::Allow || b.action != "logon" || b.device.is_empty() {
            return;
        }
        let Some(t) = local(e.ts_ms()) else { return };
        let day = t.format("%Y-%m-%d").to_string();
        let d = self.devices.entry(b.device.clone()).or_default();
        d.tier.clone_from(&b.tier);
        d.total += 1;
        *d.per_day.entry(day.clone()).or_default() += 1;
        if let Some(h) = d.per_hour.get_mut(t.hour() as usize) {
            *h += 1;
        }
        let seen = users_seen.entry(b.device.clone()).or_default();
        if !seen.contains(&b.user) {
            seen.push(b.user.clone());
            d.users += 1;
        }
        if let Err(at) = self.days.binary_search(&day) {
            self.days.insert(at, day);
        }
    }

    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a AuditEvent>) -> DeviceUsage {
        let mut usage = DeviceUsage::default();
        let mut seen = HashMap::new();
        for e in events {
            usage.add(e, &mut seen);
        }
        usage
    }

    /// Logons per hour over every terminal.
    pub fn per_hour(&self) -> [u64; 24] {
        let mut out = [0; 24];
        for d in self.devices.values() {
            for (o, h) in out.iter_mut().zip(d.per_hour) {
                *o += h;
            }
        }
        out
    }
}

/// One lockout, as the helpdesk sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub ts_ms: i64,
    pub tier: String,
    pub user: String,
    pub device: String,
}

/// Refused attempts by tier, by failed factor and reason, and the lockouts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failures {
    /// Tier → refused attempts.
    pub by_tier: BTreeMap<String, u64>,
    /// (tier, factor, failure code) → count.
    pub by_factor: BTreeMap<(String, String, String), u64>,
    /// (tier, deny reason) → count.
    pub by_reason: BTreeMap<(String, String), u64>,
    pub lockouts: Vec<Lockout>,
}

impl Failures {
    pub fn add(&mut self, e: &AuditEvent) {
        let b = &e.body;
        if b.action == "lockout" {
            self.lockouts.push(Lockout {
                ts_ms: e.ts_ms(),
                tier: b.tier.clone(),
                user: b.user.clone(),
                device: b.device.clone(),
            });
            return;
        }
        if b.outcome == Outcome::Allow {
            return;
        }
        *self.by_tier.entry(b.tier.clone()).or_default() += 1;
        if !b.reason.is_empty() {
            *self
                .by_reason
                .entry((b.tier.clone(), b.reason.clone()))
                .or_default() += 1;
        }
        for (factor, code) in &b.failed {
            *self
                .by_factor
                .entry((b.tier.clone(), factor.clone(), code.clone()))
                .or_default() += 1;
        }
    }

    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a AuditEvent>) -> Failures {
        let mut f = Failures::default();
        for e in events {
            f.add(e);
        }
        f
    }
}

/// Who was using a terminal at a moment, and how they came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAt {
    /// The account the session was opened under.
    pub account: String,
    /// The person at the terminal (differs from `account` after an operator switch).
    pub operator: String,
    /// When this operator took the terminal (logon, unlock or switch).
    pub since_ms: i64,
    pub session: String,
    /// The screen was locked at that moment (nobody working; `operator` locked it).
    pub locked: bool,
}

/// Replays a terminal's events in time order up to `at_ms`. `None`: nobody was
/// logged on.
pub fn operator_at(device_events: &[AuditEvent], at_ms: i64) -> Option<OperatorAt> {
    let mut now: Option<OperatorAt> = None;
    for e in device_events {
        if e.ts_ms() > at_ms {
            break;
        }
        let b = &e.body;
        if b.outcome != Outcome::Allow {
            continue;
        }
        match b.action.as_str() {
            "logon" => {
                now = Some(OperatorAt {
                    account: b.user.clone(),
                    operator: b.operator.clone(),
                    since_ms: e.ts_ms(),
                    session: b.session.clone(),
                    locked: false,
                })
            }
            "unlock" | "switch_operator" => {
                if let Some(s) = now.as_mut() {
                    if s.operator != b.operator {
                        s.since_ms = e.ts_ms();
                    }
                    s.operator.clone_from(&b.operator);
                    s.locked = false;
                }
            }
            "lock" => {
                if let Some(s) = now.as_mut() {
                    s.locked = true;
                }
            }
            "logoff" => now = None,
            _ => {}
        }
    }
    now
}

/// The terminal's presence events in the hours around a moment, for the timeline
/// printed under the answer.
pub fn timeline(device_events: &[AuditEvent], at_ms: i64, window_ms: i64) -> Vec<&AuditEvent> {
    device_events
        .iter()
        .filter(|e| (e.ts_ms() - at_ms).abs() <= window_ms)
        .filter(|e| {
            PRESENCE_ACTIONS.contains(&e.body.action.as_str())
                || matches!(e.body.action.as_str(), "lock" | "logoff")
        })
        .collect()
}

/// Headings and labels of the reports, in the reader's language.
pub fn label(key: &str, locale: Locale) -> &'static str {
    let (ja, en) = match key {
        "dormant_title" => ("休眠アカウント", "Dormant accounts"),
        "dormant_lead" => (
            "期間内に一度もログオンに成功していないアカウントです。削除または無効化を検討してください。",
            "Accounts with no successful logon in the period: candidates to disable or delete.",
        ),
        "devices_title" => ("端末の利用状況", "Terminal usage"),
        "devices_lead" => (
            "端末ごとのログオン成功回数です。使われていない端末は配置の見直し候補です。",
            "Successful logons per terminal: terminals that sit idle are candidates to move.",
        ),
        "failures_title" => ("認証失敗とロックアウト", "Failures and lockouts"),
        "failures_lead" => (
            "拒否されたログオン等を、ネットワーク層・要素・理由別に集計しました。",
            "Refused logons and unlocks by tier, factor and reason.",
        ),
        "operators_title" => ("操作者の特定", "Who was at the terminal"),
        "user" => ("ユーザー", "User"),
        "department" => ("所属", "Department"),
        "role" => ("役割", "Role"),
        "last_logon" => ("最終ログオン", "Last logon"),
        "never" => ("記録なし", "never"),
        "device" => ("端末", "Terminal"),
        "tier" => ("ネットワーク層", "Tier"),
        "total" => ("合計", "Total"),
        "users" => ("利用者数", "Users"),
        "per_hour" => ("時間帯別ログオン", "Logons by hour of day"),
        "per_device" => ("端末別ログオン", "Logons per terminal"),
        "refused" => ("拒否", "Refused"),
        "factor" => ("要素", "Factor"),
        "reason" => ("理由", "Reason"),
        "count" => ("件数", "Count"),
        "lockouts" => ("ロックアウト", "Lockouts"),
        "time" => ("日時", "Time"),
        "operator" => ("操作者", "Operator"),
        "account" => ("ログオン中のアカウント", "Logged-on account"),
        "since" => ("開始", "Since"),
        "locked" => ("画面ロック中", "screen locked"),
        "nobody" => ("その時刻にログオンしている人はいませんでした。", "Nobody was logged on at that moment."),
        "action" => ("操作", "Action"),
        "none" => ("該当なし", "none"),
        _ => ("?", "?"),
    };
    match locale {
        Locale::Ja => ja,
        Locale::En => en,
    }
}

/// A failure code or deny reason as a sentence, keeping the code for searching.
pub fn explain(code: &str, is_factor: bool, locale: Locale) -> String {
    let text = if is_factor {
        messages::factor_failure(code, locale)
    } else {
        messages::deny_reason(code, locale)
    };
    format!("{text} ({code})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sekisho_policy_engine::audit::event::EventBody;

    fn ev(ts_ms: i64, action: &str, outcome: Outcome, user: &str, operator: &str) -> AuditEvent {
        let mut b = EventBody::new("g", "lgwan", action, outcome);
        b.ts = sekisho_policy_engine::audit::format_ts(ts_ms);
        b.device = "counter-1".into();
        b.user = user.into();
        b.operator = operator.into();
        b.session = "s1".into();
        b.seal(sekisho_policy_engine::audit::GENESIS_HASH)
    }

    #[test]
    fn the_operator_follows_logons_switches_locks_and_logoffs() {
        let day = 1_790_000_000_000;
        let events = vec![
            ev(day, "logon", Outcome::Allow, "sato", "sato"),
            ev(day + 10, "lock", Outcome::Allow, "sato", "sato"),
            ev(day + 20, "unlock", Outcome::Deny, "ito", "ito"),
            ev(day + 30, "unlock", Outcome::Allow, "ito", "ito"),
            ev(day + 40, "logoff", Outcome::Allow, "sato", "ito"),
        ];
        assert_eq!(operator_at(&events, day - 1), None);
        let at5 = operator_at(&events, day + 5).unwrap();
        assert_eq!(
            (at5.account.as_str(), at5.operator.as_str(), at5.locked),
            ("sato", "sato", false)
        );
        let at15 = operator_at(&events, day + 15).unwrap();
        assert!(at15.locked);
        assert_eq!(at15.operator, "sato", "a refused unlock changes nothing");
        let at25 = operator_at(&events, day + 25).unwrap();
        assert_eq!(at25.operator, "sato");
        let at35 = operator_at(&events, day + 35).unwrap();
        assert_eq!(
            (at35.account.as_str(), at35.operator.as_str(), at35.since_ms),
            ("sato", "ito", day + 30)
        );
        assert_eq!(operator_at(&events, day + 45), None);
        assert_eq!(timeline(&events, day + 20, 15).len(), 3);
    }

    #[test]
    fn dormant_lists_unused_and_never_used_accounts() {
        let users: Vec<KnownUser> = ["a", "b", "c"]
            .iter()
            .map(|id| KnownUser {
                id: (*id).into(),
                department: "d".into(),
                role: "staff".into(),
            })
            .collect();
        let now = 200 * 86_400_000;
        let last = HashMap::from([
            ("a".to_string(), now - 86_400_000),
            ("b".to_string(), now - 100 * 86_400_000),
        ]);
        let d = dormant(&users, &last, now, 90);
        let ids: Vec<&str> = d.iter().map(|x| x.user.id.as_str()).collect();
        assert_eq!(ids, ["c", "b"]);
        assert_eq!(d[0].last_logon_ms, None);
    }

    #[test]
    fn failures_and_usage_are_counted_by_their_keys() {
        let t = 1_790_000_000_000;
        let mut bad = ev(t, "logon", Outcome::Deny, "u1", "u1");
        bad.body.reason = "factor_failed".into();
        bad.body.failed.insert("totp".into(), "replayed".into());
        let events = vec![
            bad,
            ev(t + 1, "lockout", Outcome::Deny, "u1", ""),
            ev(t + 2, "logon", Outcome::Allow, "u2", "u2"),
            ev(t + 3, "logon", Outcome::Allow, "u2", "u2"),
        ];
        let f = Failures::from_events(&events);
        assert_eq!(f.by_tier["lgwan"], 1);
        assert_eq!(
            f.by_factor[&("lgwan".into(), "totp".into(), "replayed".into())],
            1
        );
        assert_eq!(f.lockouts.len(), 1);
        let u = DeviceUsage::from_events(&events);
        let d = &u.devices["counter-1"];
        assert_eq!((d.total, d.users), (2, 1));
        assert_eq!(u.per_hour().iter().sum::<u64>(), 2);
    }
}
