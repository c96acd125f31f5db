//! Lints: configuration mistakes caught before they reach staff.
//!
//! They run over a policy set *and* the directory it will meet, because the mistakes
//! that lock people out are about both: a device kind nobody can log on to, a factor
//! nobody in a group enrolled, a privileged action one password away.
//!
//! | code | severity | what |
//! |---|---|---|
//! | `non-monotone` | warning | presenting more factors could deny |
//! | `no-permit` | error | a (tier, device kind) in the directory where a required action is permitted to nobody |
//! | `single-factor-elevate` | error | `elevate` reachable with one factor |
//! | `unpresentable` | warning | a permitted set that no member of a group could present (not enrolled / not captured) |
//! | `locked-out` | error | a group whose every permitted member can present no permitted set |
//! | `cannot-present` | warning | some members of a group can present no permitted set |
//!
//! Decisions that depend on context are checked at 10:00 local time, arriving at the
//! console (and, on the LGWAN tier, through the telework relay with full upstream proof).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::diagnostics::Diagnostic;
use crate::engine::{DecisionRequest, Engine};
use crate::entities::User;
use crate::factor::{Factor, FactorSet};
use crate::model::{Action, DeviceKind, Tier, Via};

/// The hour lints evaluate context-dependent policies at.
pub const LINT_HOUR: u8 = 10;

/// Actions every device of a kind must permit to someone.
fn required_actions(kind: DeviceKind) -> &'static [Action] {
    match kind {
        DeviceKind::Shared => &[
            Action::Logon,
            Action::Unlock,
            Action::SwitchOperator,
            Action::Presence,
        ],
        _ => &[Action::Logon, Action::Unlock],
    }
}

fn vias(tier: Tier) -> &'static [Via] {
    match tier {
        Tier::Lgwan => &[Via::Console, Via::LgwanTelework],
        _ => &[Via::Console],
    }
}

struct UserClass {
    rep: Arc<User>,
    members: Vec<String>,
    /// What members can present from what they enrolled (emergency OTPs are issued,
    /// not enrolled, so they never count).
    enrolled: FactorSet,
}

struct DeviceClass {
    rep: String,
    tier: Tier,
    kind: DeviceKind,
    capturable: FactorSet,
}

/// The first few ids of a list, for messages that stay one line long.
fn examples(ids: &[&str]) -> String {
    let shown = ids.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    match ids.len() {
        n if n > 5 => format!("{shown} and {} more", n - 5),
        _ => shown,
    }
}

/// Runs every lint. Errors first, then warnings; each names policies where it can.
pub fn lint(engine: &Engine) -> Vec<Diagnostic> {
    let policies = engine.policies();
    let mut out: Vec<Diagnostic> = policies
        .policies
        .iter()
        .filter(|p| !p.monotonicity_issues.is_empty())
        .map(|p| {
            Diagnostic::warning(
                "non-monotone",
                Some(p.location.clone()),
                format!(
                    "policy '{}' is not monotone in context.factors: {}",
                    p.id,
                    p.monotonicity_issues.join("; ")
                ),
            )
            .with_policies([p.id.clone()])
        })
        .collect();

    let reads_location = policies.references.reads("location");
    let (users, devices) = engine.with_directory(|d| {
        let mut users: BTreeMap<(Vec<String>, String, String, u8), UserClass> = BTreeMap::new();
        for u in d.users() {
            let r = &u.record;
            let key = (
                u.ancestors.iter().map(|a| a.to_string()).collect(),
                r.department.clone(),
                r.role.clone(),
                r.enrolled.bits(),
            );
            users
                .entry(key)
                .or_insert_with(|| UserClass {
                    rep: u.clone(),
                    members: Vec::new(),
                    enrolled: r.enrolled.without(Factor::EmergencyOtp).closed(),
                })
                .members
                .push(r.id.clone());
        }
        let mut devices: BTreeMap<(Tier, DeviceKind, u8, String), DeviceClass> = BTreeMap::new();
        for dev in d.devices() {
            let capturable = FactorSet::capturable_with(dev.capabilities);
            let loc = if reads_location {
                dev.location.clone()
            } else {
                String::new()
            };
            let candidate = DeviceClass {
                rep: dev.id.clone(),
                tier: dev.tier,
                kind: dev.kind,
                capturable,
            };
            let e = devices
                .entry((dev.tier, dev.kind, capturable.bits(), loc))
                .or_insert(candidate);
            // Deterministic representative: the smallest id.
            if dev.id < e.rep {
                e.rep = dev.id.clone();
            }
        }
        (
            users.into_values().collect::<Vec<_>>(),
            devices.into_values().collect::<Vec<_>>(),
        )
    });

    // permitted[(device class, action, via)][user class] = minimal permitted sets.
    let mut permitted: HashMap<(usize, Action, Via), Vec<Vec<FactorSet>>> = HashMap::new();
    for (di, dc) in devices.iter().enumerate() {
        for action in Action::ALL {
            for via in vias(dc.tier) {
                let row = users
                    .iter()
                    .map(|uc| {
                        let req = DecisionRequest {
                            user: uc.rep.record.id.clone(),
                            device: dc.rep.clone(),
                            action: *action,
                            via: *via,
                            upstream: FactorSet::ALL,
                            hour: LINT_HOUR,
                        };
                        engine.permitted_sets(&req).unwrap_or_default()
                    })
                    .collect();
                permitted.insert((di, *action, *via), row);
            }
        }
    }
    let request = |ui: usize, di: usize, action: Action, via: Via| DecisionRequest {
        user: users[ui].rep.record.id.clone(),
        device: devices[di].rep.clone(),
        action,
        via,
        upstream: FactorSet::ALL,
        hour: LINT_HOUR,
    };
    let deciding = |req: &DecisionRequest, set: FactorSet| -> Vec<String> {
        engine
            .authorize(req, set)
            .map(|o| o.policy_ids)
            .unwrap_or_default()
    };

    // Device kinds nobody can use.
    let mut kinds: BTreeMap<(Tier, DeviceKind), Vec<usize>> = BTreeMap::new();
    for (di, dc) in devices.iter().enumerate() {
        kinds.entry((dc.tier, dc.kind)).or_default().push(di);
    }
    for ((tier, kind), dis) in &kinds {
        for action in required_actions(*kind) {
            let any = dis.iter().any(|di| {
                vias(*tier).iter().any(|via| {
                    permitted[&(*di, *action, *via)]
                        .iter()
                        .any(|sets| !sets.is_empty())
                })
            });
            if !any {
                out.push(Diagnostic::error(
                    "no-permit",
                    None,
                    format!(
                        "no policy permits `{action}` on {tier} {kind} devices (e.g. '{}') for anyone: add a rule for them or remove the devices",
                        devices[dis[0]].rep
                    ),
                ));
            }
        }
    }

    // Privileged use behind a single factor.
    let mut seen: BTreeSet<(Vec<String>, FactorSet)> = BTreeSet::new();
    for (di, dc) in devices.iter().enumerate() {
        for via in vias(dc.tier) {
            for (ui, sets) in permitted[&(di, Action::Elevate, *via)].iter().enumerate() {
                for s in sets.iter().filter(|s| s.presented_count() <= 1) {
                    let req = request(ui, di, Action::Elevate, *via);
                    let ids = deciding(&req, *s);
                    if seen.insert((ids.clone(), *s)) {
                        out.push(
                            Diagnostic::error(
                                "single-factor-elevate",
                                ids.first().and_then(|id| policies.by_id(id)).map(|p| p.location.clone()),
                                format!(
                                    "`elevate` is permitted with the single factor {s} (user '{}' on '{}'): privileged use needs two factors",
                                    req.user, req.device
                                ),
                            )
                            .with_policies(ids),
                        );
                    }
                }
            }
        }
    }

    // Per (device kind, action, user class): is the class permitted at all there, and
    // can it present a permitted set on some device of the kind? An emergency OTP is
    // the helpdesk's way in, not one a member can plan on: it counts for neither.
    let mut reach: HashMap<(Tier, DeviceKind, Action), Vec<(bool, bool)>> = HashMap::new();
    for ((tier, kind), dis) in &kinds {
        for action in Action::ALL {
            let row = users
                .iter()
                .enumerate()
                .map(|(ui, uc)| {
                    dis.iter()
                        .fold((false, false), |(permitted_here, can), di| {
                            let sets = &permitted[&(*di, *action, Via::Console)][ui];
                            let available = uc.enrolled.intersection(devices[*di].capturable);
                            (
                                permitted_here
                                    || sets.iter().any(|s| !s.contains(Factor::EmergencyOtp)),
                                can || sets.iter().any(|s| s.is_subset(available)),
                            )
                        })
                })
                .collect();
            reach.insert((*tier, *kind, *action), row);
        }
    }
    // People a (kind, action) would leave stuck: (permitted members, stuck member ids).
    let stuck_among =
        |tier: Tier, kind: DeviceKind, action: Action, uis: &mut dyn Iterator<Item = usize>| {
            let row = &reach[&(tier, kind, action)];
            let mut permitted_members = 0usize;
            let mut stuck: Vec<&str> = Vec::new();
            for ui in uis {
                let (permitted_here, can) = row[ui];
                if permitted_here {
                    permitted_members += users[ui].members.len();
                    if !can {
                        stuck.extend(users[ui].members.iter().map(String::as_str));
                    }
                }
            }
            stuck.sort_unstable();
            (permitted_members, stuck)
        };

    // Per group: sets nobody in it can present, and groups locked out.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (ui, uc) in users.iter().enumerate() {
        for g in uc.rep.ancestors.iter() {
            groups.entry(g.to_string()).or_default().push(ui);
        }
    }
    for (group, uis) in &groups {
        let enrolled_any = uis
            .iter()
            .fold(FactorSet::EMPTY, |acc, ui| acc.union(users[*ui].enrolled));
        for ((tier, kind), dis) in &kinds {
            let captured_any = dis.iter().fold(FactorSet::EMPTY, |acc, di| {
                acc.union(devices[*di].capturable)
            });
            for action in Action::ALL {
                let mut reported: BTreeSet<FactorSet> = BTreeSet::new();
                for ui in uis {
                    for di in dis {
                        let sets = &permitted[&(*di, *action, Via::Console)][*ui];
                        for s in sets.iter().filter(|s| !s.contains(Factor::EmergencyOtp)) {
                            let not_enrolled = s.difference(enrolled_any);
                            let not_captured = s.difference(captured_any);
                            if (not_enrolled.is_empty() && not_captured.is_empty())
                                || !reported.insert(*s)
                            {
                                continue;
                            }
                            let why = if !not_captured.is_empty() {
                                format!("no {tier} {kind} device captures {not_captured}")
                            } else {
                                format!("no member has enrolled {not_enrolled}")
                            };
                            let ids = deciding(&request(*ui, *di, *action, Via::Console), *s);
                            out.push(
                                Diagnostic::warning(
                                    "unpresentable",
                                    ids.first().and_then(|id| policies.by_id(id)).map(|p| p.location.clone()),
                                    format!("group '{group}': {s} for `{action}` on {tier} {kind} devices can never be presented: {why}"),
                                )
                                .with_policies(ids),
                            );
                        }
                    }
                }
                let (permitted_members, stuck) =
                    stuck_among(*tier, *kind, *action, &mut uis.iter().copied());
                if !stuck.is_empty() && stuck.len() == permitted_members {
                    out.push(Diagnostic::error(
                        "locked-out",
                        None,
                        format!(
                            "group '{group}' is locked out of `{action}` on {tier} {kind} devices: none of its {permitted_members} permitted members can present a permitted factor set ({})",
                            examples(&stuck)
                        ),
                    ));
                }
            }
        }
    }

    // Individuals who cannot present anything they are permitted, once per device kind
    // (not per group: nested groups would repeat the same people).
    let mut cannot: BTreeMap<(Tier, DeviceKind, Vec<&str>, usize), Vec<Action>> = BTreeMap::new();
    for (tier, kind) in kinds.keys() {
        for action in Action::ALL {
            let (permitted_members, stuck) =
                stuck_among(*tier, *kind, *action, &mut (0..users.len()));
            if !stuck.is_empty() && stuck.len() < permitted_members {
                cannot
                    .entry((*tier, *kind, stuck, permitted_members))
                    .or_default()
                    .push(*action);
            }
        }
    }
    for ((tier, kind, stuck, permitted_members), actions) in cannot {
        let actions = actions
            .iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Diagnostic::warning(
            "cannot-present",
            None,
            format!(
                "{} of {permitted_members} permitted users cannot present any permitted factor set for {actions} on {tier} {kind} devices (enrol them or add a rule): {}",
                stuck.len(),
                examples(&stuck)
            ),
        ));
    }

    out.sort_by(|a, b| {
        a.severity
            .cmp(&b.severity)
            .then_with(|| a.code.cmp(b.code))
            .then_with(|| a.location.cmp(&b.location))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entities::{parse_entities_json, Directory};
    use crate::policies::{CompiledPolicies, PolicyFile, PolicySources};

    const SCHEMA: &str = include_str!("../../policies/sekisho.cedarschema");
    const ENTITIES: &str = r#"[
      {"uid": {"type": "Sekisho::Group", "id": "mayors-office"}},
      {"uid": {"type": "Sekisho::Group", "id": "it"}},
      {"uid": {"type": "Sekisho::User", "id": "mayor"},
       "attrs": {"department": "mayor", "role": "mayor", "enrolled": ["password", "face"]},
       "parents": [{"type": "Sekisho::Group", "id": "mayors-office"}]},
      {"uid": {"type": "Sekisho::User", "id": "admin"},
       "attrs": {"department": "it", "role": "admin", "enrolled": ["password", "card", "totp"]},
       "parents": [{"type": "Sekisho::Group", "id": "it"}]},
      {"uid": {"type": "Sekisho::Device", "id": "desk"},
       "attrs": {"kind": "desktop", "capabilities": ["card"], "location": "3F"},
       "parents": [{"type": "Sekisho::Tier", "id": "lgwan"}]},
      {"uid": {"type": "Sekisho::Device", "id": "vdi"},
       "attrs": {"kind": "vdi", "capabilities": [], "location": "dc"},
       "parents": [{"type": "Sekisho::Tier", "id": "lgwan"}]}
    ]"#;

    fn run(policies: &str) -> Vec<Diagnostic> {
        let s = PolicySources::new(
            SCHEMA.into(),
            vec![PolicyFile {
                name: "p.cedar".into(),
                text: policies.into(),
            }],
        );
        let dir = Directory::from_batch(parse_entities_json("e", ENTITIES).unwrap()).unwrap();
        lint(&Engine::new(CompiledPolicies::compile(s, 0).unwrap(), dir))
    }

    fn codes(d: &[Diagnostic]) -> Vec<&str> {
        d.iter().map(|d| d.code).collect()
    }

    const BASE: &str = r#"
        @id("desk")
        permit(principal, action in [Sekisho::Action::"logon", Sekisho::Action::"unlock"], resource in Sekisho::Tier::"lgwan")
        when { context.factors.containsAll(["card", "password"]) };
        @id("vdi")
        permit(principal, action in [Sekisho::Action::"logon", Sekisho::Action::"unlock"], resource in Sekisho::Tier::"lgwan")
        when { resource.kind == "vdi" && context.factors.containsAll(["totp", "password"]) };
    "#;

    #[test]
    fn clean_set_has_only_expected_findings() {
        let d = run(BASE);
        // The mayor has no card and no TOTP: locked out everywhere.
        assert!(
            d.iter()
                .any(|d| d.code == "locked-out" && d.message.contains("'mayors-office'")),
            "{d:#?}"
        );
        assert!(!codes(&d).contains(&"no-permit"), "{d:#?}");
        assert!(!codes(&d).contains(&"non-monotone"));
    }

    #[test]
    fn missing_rule_for_a_kind() {
        let d = run(r#"
            @id("desk")
            permit(principal, action in [Sekisho::Action::"logon", Sekisho::Action::"unlock"], resource in Sekisho::Tier::"lgwan")
            when { resource.kind == "desktop" && context.factors.containsAll(["card", "password"]) };
        "#);
        let msgs: Vec<_> = d
            .iter()
            .filter(|d| d.code == "no-permit")
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(msgs.len(), 2, "{d:#?}");
        assert!(
            msgs[0].contains("on lgwan vdi devices (e.g. 'vdi')"),
            "{msgs:?}"
        );
    }

    #[test]
    fn single_factor_elevate_and_non_monotone() {
        let d = run(&format!(
            "{BASE}\n@id(\"elevate\")\npermit(principal in Sekisho::Group::\"it\", action == Sekisho::Action::\"elevate\", resource)\nwhen {{ context.factors.contains(\"password\") }};\n@id(\"weird\")\nforbid(principal, action == Sekisho::Action::\"unlock\", resource) when {{ context.factors.contains(\"totp\") }};"
        ));
        let e = d
            .iter()
            .find(|d| d.code == "single-factor-elevate")
            .expect("flagged");
        assert_eq!(e.policy_ids, ["elevate"]);
        assert_eq!(e.location.as_ref().unwrap().line, 9);
        let n = d
            .iter()
            .find(|d| d.code == "non-monotone")
            .expect("flagged");
        assert_eq!(n.policy_ids, ["weird"]);
    }

    #[test]
    fn unpresentable_sets() {
        let d = run(&format!(
            "{BASE}\n@id(\"vein\")\npermit(principal, action == Sekisho::Action::\"logon\", resource in Sekisho::Tier::\"lgwan\")\nwhen {{ context.factors.containsAll([\"vein\", \"password\"]) }};"
        ));
        let u: Vec<_> = d
            .iter()
            .filter(|d| d.code == "unpresentable" && d.policy_ids == ["vein"])
            .collect();
        assert!(
            u.iter().any(|d| d.message == "group 'it': [password, vein] for `logon` on lgwan desktop devices can never be presented: no lgwan desktop device captures [vein]"),
            "{u:#?}"
        );
        // The mayor's office has no card either: named with the policy that asks for one.
        assert!(d.iter().any(|d| d.code == "unpresentable"
            && d.policy_ids == ["desk"]
            && d.message.contains("group 'mayors-office': [card, password] for `logon` on lgwan desktop devices can never be presented: no member has enrolled [card]")));
    }
}
