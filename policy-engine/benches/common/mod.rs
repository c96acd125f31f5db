//! Deterministic benchmark data shared by the policy-engine benchmarks: a big city's
//! policy set (the 24 reference policies plus 976 generated ones), directory (100,000
//! users in ~500 nested groups, 1,700 devices) and decision requests.
//!
//! Everything comes from a xorshift PRNG with a fixed seed, so every run (and every
//! benchmark) sees the same data.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use sekisho_policy_engine::entities::{DeviceRecord, EntityBatch, GroupRecord, UserRecord};
use sekisho_policy_engine::{
    Action, Capabilities, DecisionRequest, DeviceKind, Factor, FactorSet, PolicyFile,
    PolicySources, Tier, Via,
};

pub const USERS: usize = 100_000;
pub const DEPARTMENTS: usize = 30;
pub const SECTIONS: usize = 470;
pub const GENERATED_POLICIES: usize = 976;
pub const REQUESTS: usize = 10_000;
const SEED: u64 = 0x5EC1_5407_2024_0001;

/// xorshift64*: small, fast, and good enough to shuffle a city.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// Index chosen with the given weights.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut r = self.below(total as usize) as u32;
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return i;
            }
            r -= w;
        }
        weights.len() - 1
    }
}

const DEPARTMENT_NAMES: [&str; DEPARTMENTS] = [
    "市民課",
    "税務課",
    "福祉課",
    "総務課",
    "市長室",
    "情報政策課",
    "建設課",
    "都市計画課",
    "保険年金課",
    "子育て支援課",
    "高齢福祉課",
    "障害福祉課",
    "健康推進課",
    "環境課",
    "農林課",
    "商工観光課",
    "上下水道課",
    "会計課",
    "選挙管理委員会",
    "監査委員事務局",
    "議会事務局",
    "教育総務課",
    "学校教育課",
    "生涯学習課",
    "消防総務課",
    "防災危機管理課",
    "財政課",
    "企画課",
    "人事課",
    "資産税課",
];

const BUILDINGS: [&str; 5] = ["本庁舎", "第二庁舎", "別館", "保健センター", "北支所"];

/// Departments whose sections serve citizens with My Number (their sections are
/// also in `mynumber-operators`).
fn mynumber_department(d: usize) -> bool {
    matches!(d, 0 | 1 | 8 | 9 | 10 | 11 | 29)
}

pub fn dept_id(d: usize) -> String {
    format!("dept{d:02}")
}
pub fn section_id(s: usize) -> String {
    format!("g{s:03}")
}
/// The department a section belongs to: contiguous runs of 15–16 sections.
pub fn section_dept(s: usize) -> usize {
    s * DEPARTMENTS / SECTIONS
}

/// Directory of the reference policies.
pub fn policy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// The 24 reference policies, as the repository ships them.
pub fn reference_sources() -> PolicySources {
    PolicySources::load_dir(&policy_dir()).expect("reference policies load")
}

const ACTIONS: [&str; 5] = ["logon", "unlock", "switch_operator", "presence", "elevate"];

/// Factor combinations a city actually asks for.
const COMBOS: [&[&str]; 12] = [
    &["card", "password"],
    &["card", "pin"],
    &["face", "password"],
    &["face", "pin"],
    &["card", "vein"],
    &["vein"],
    &["password", "totp"],
    &["card", "face"],
    &["mynumber_card", "pin"],
    &["face", "vein"],
    &["card", "password", "totp"],
    &["face"],
];

fn quoted(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn action_scope(actions: &[&str]) -> String {
    if actions.len() == 1 {
        format!("action == Sekisho::Action::\"{}\"", actions[0])
    } else {
        format!(
            "action in [{}]",
            actions
                .iter()
                .map(|a| format!("Sekisho::Action::\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// A random disjunction of 1–2 factor combinations.
fn factor_condition(rng: &mut Rng) -> String {
    let n = 1 + rng.below(2);
    let mut alts: Vec<String> = Vec::new();
    while alts.len() < n {
        let c = rng.pick(&COMBOS);
        let s = if c.len() == 1 {
            format!("context.factors.contains(\"{}\")", c[0])
        } else {
            format!("context.factors.containsAll([{}])", quoted(c))
        };
        if !alts.contains(&s) {
            alts.push(s);
        }
    }
    if alts.len() == 1 {
        alts.remove(0)
    } else {
        format!("({})", alts.join(" || "))
    }
}

/// 1–3 distinct non-admin actions.
fn some_actions(rng: &mut Rng) -> Vec<&'static str> {
    let n = 1 + rng.weighted(&[5, 4, 1]);
    let mut v: Vec<&'static str> = Vec::new();
    while v.len() < n {
        let a = ACTIONS[rng.weighted(&[5, 5, 1, 1])];
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v.sort_by_key(|a| ACTIONS.iter().position(|x| x == a));
    v
}

fn tier_for_section(rng: &mut Rng, s: usize) -> &'static str {
    if mynumber_department(section_dept(s)) && rng.chance(0.5) {
        "mynumber"
    } else {
        ["lgwan", "lgwan", "lgwan", "internet", "telework"][rng.below(5)]
    }
}

fn kinds_for_tier(tier: &str) -> &'static [&'static str] {
    match tier {
        "mynumber" => &["desktop", "shared"],
        "lgwan" => &["desktop", "mobile", "vdi", "shared"],
        "internet" => &["desktop", "vdi"],
        _ => &["telework"],
    }
}

/// The 976 generated policies, in one file per department (and one city-wide file).
pub fn generated_files() -> Vec<PolicyFile> {
    let mut rng = Rng::new(SEED ^ 0xC0DE);
    let mut by_dept: Vec<String> = vec![String::new(); DEPARTMENTS];
    let mut city = String::new();
    let mut count = 0usize;
    let mut push = |text: &mut String, p: String| {
        text.push_str(&p);
        text.push('\n');
        count += 1;
    };

    // 470 section permits: the section's everyday rule on its tier and device kind.
    for s in 0..SECTIONS {
        let g = section_id(s);
        let tier = tier_for_section(&mut rng, s);
        let kind = rng.pick(kinds_for_tier(tier));
        let actions = some_actions(&mut rng);
        let p = format!(
            "@id(\"{g}-{tier}-{kind}\")\npermit (\n  principal in Sekisho::Group::\"{g}\",\n  {},\n  resource in Sekisho::Tier::\"{tier}\"\n)\nwhen {{\n  resource.kind == \"{kind}\" &&\n  {}\n}};\n",
            action_scope(&actions),
            factor_condition(&mut rng)
        );
        push(&mut by_dept[section_dept(s)], p);
    }
    // 280 section permits limited to business hours (shared and VDI terminals).
    let mut order: Vec<usize> = (0..SECTIONS).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    for &s in order.iter().take(280) {
        let g = section_id(s);
        let tier = if mynumber_department(section_dept(s)) {
            "mynumber"
        } else {
            "lgwan"
        };
        let kind = if rng.chance(0.5) { "shared" } else { "desktop" };
        let (from, to) = (6 + rng.below(3), 18 + rng.below(4));
        let actions = some_actions(&mut rng);
        let p = format!(
            "@id(\"{g}-{tier}-{kind}-hours\")\npermit (\n  principal in Sekisho::Group::\"{g}\",\n  {},\n  resource in Sekisho::Tier::\"{tier}\"\n)\nwhen {{\n  resource.kind == \"{kind}\" &&\n  context.hour >= {from} && context.hour < {to} &&\n  {}\n}};\n",
            action_scope(&actions),
            factor_condition(&mut rng)
        );
        push(&mut by_dept[section_dept(s)], p);
    }
    // 90 department permits: VDI, internet and telework access per department.
    for (d, text) in by_dept.iter_mut().enumerate() {
        let g = dept_id(d);
        let rules = [
            ("lgwan", "vdi", "logon-unlock", vec!["logon", "unlock"]),
            ("internet", "vdi", "logon", vec!["logon"]),
            (
                "telework",
                "telework",
                "logon-unlock",
                vec!["logon", "unlock"],
            ),
        ];
        for (tier, kind, what, actions) in rules {
            let p = format!(
                "@id(\"{g}-{tier}-{kind}-{what}\")\npermit (\n  principal in Sekisho::Group::\"{g}\",\n  {},\n  resource in Sekisho::Tier::\"{tier}\"\n)\nwhen {{\n  resource.kind == \"{kind}\" &&\n  context.via != \"lgwan_telework\" &&\n  {}\n}};\n",
                action_scope(&actions),
                factor_condition(&mut rng)
            );
            push(text, p);
        }
    }
    // 100 section forbids, monotone: no logon there without a hardware factor.
    for &s in order.iter().rev().take(100) {
        let g = section_id(s);
        let tier = tier_for_section(&mut rng, s);
        let hw: &[&str] = [
            &["card", "face", "vein"][..],
            &["card", "vein"][..],
            &["face", "vein"][..],
            &["card", "face"][..],
        ][rng.below(4)];
        let p = format!(
            "@id(\"{g}-{tier}-needs-hardware-factor\")\nforbid (\n  principal in Sekisho::Group::\"{g}\",\n  action in [Sekisho::Action::\"logon\", Sekisho::Action::\"unlock\"],\n  resource in Sekisho::Tier::\"{tier}\"\n)\nunless {{ context.factors.containsAny([{}]) }};\n",
            quoted(hw)
        );
        push(&mut by_dept[section_dept(s)], p);
    }
    // 20 department forbids on the hour: no internet at night.
    for (d, text) in by_dept.iter_mut().enumerate().take(20) {
        let g = dept_id(d);
        let (from, to) = (20 + rng.below(4), 5 + rng.below(3));
        let p = format!(
            "@id(\"{g}-internet-night\")\nforbid (\n  principal in Sekisho::Group::\"{g}\",\n  action,\n  resource in Sekisho::Tier::\"internet\"\n)\nwhen {{ context.hour >= {from} || context.hour < {to} }};\n"
        );
        push(text, p);
    }
    // 16 location forbids: outlying buildings need a hardware factor.
    for i in 0..16 {
        let building = ["別館", "北支所", "保健センター", "第二庁舎"][i % 4];
        let tier = ["lgwan", "mynumber"][i % 2];
        let hw = quoted(if i % 3 == 0 {
            &["card", "vein"][..]
        } else {
            &["card", "face"][..]
        });
        let p = if i < 4 {
            // City-wide: every request on the tier meets these.
            format!(
                "@id(\"city-{tier}-{i:02}-outlying-needs-hardware\")\nforbid (\n  principal,\n  action == Sekisho::Action::\"logon\",\n  resource in Sekisho::Tier::\"{tier}\"\n)\nwhen {{ resource.location like \"*{building}*\" }}\nunless {{ context.factors.containsAny([{hw}]) }};\n"
            )
        } else {
            let g = dept_id(i + 10);
            format!(
                "@id(\"{g}-{tier}-{i:02}-outlying-needs-hardware\")\nforbid (\n  principal in Sekisho::Group::\"{g}\",\n  action in [Sekisho::Action::\"logon\", Sekisho::Action::\"unlock\"],\n  resource in Sekisho::Tier::\"{tier}\"\n)\nwhen {{ resource.location like \"*{building}*\" }}\nunless {{ context.factors.containsAny([{hw}]) }};\n"
            )
        };
        push(&mut city, p);
    }
    assert_eq!(count, GENERATED_POLICIES, "generator count");

    let mut files: Vec<PolicyFile> = by_dept
        .into_iter()
        .enumerate()
        .map(|(d, text)| PolicyFile {
            name: format!("generated-{}.cedar", dept_id(d)),
            text,
        })
        .collect();
    files.push(PolicyFile {
        name: "generated-city.cedar".into(),
        text: city,
    });
    files
}

/// The 24 reference policies plus the 976 generated ones.
pub fn big_sources() -> PolicySources {
    let reference = reference_sources();
    let mut files = reference.files.clone();
    files.extend(generated_files());
    PolicySources::new(reference.schema, files)
}

/// 100,000 users in ~500 groups (30 departments, 470 sections some nested, and the
/// cross-cutting groups the reference policies name) and 1,700 devices.
pub fn city_batch() -> EntityBatch {
    let mut rng = Rng::new(SEED);
    let mut groups = vec![GroupRecord {
        id: "all-staff".into(),
        parents: vec![],
    }];
    for g in ["mynumber-operators", "it-admins", "teleworkers", "managers"] {
        groups.push(GroupRecord {
            id: g.into(),
            parents: vec![],
        });
    }
    for d in 0..DEPARTMENTS {
        groups.push(GroupRecord {
            id: dept_id(d),
            parents: vec!["all-staff".into()],
        });
    }
    for s in 0..SECTIONS {
        let d = section_dept(s);
        // Every fifth section is a sub-section of the previous one (same department).
        let mut parents = if s % 5 == 4 && section_dept(s - 1) == d {
            vec![section_id(s - 1)]
        } else {
            vec![dept_id(d)]
        };
        if mynumber_department(d) && s % 3 == 0 {
            parents.push("mynumber-operators".into());
        }
        groups.push(GroupRecord {
            id: section_id(s),
            parents,
        });
    }

    let mut users = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let primary = rng.below(SECTIONS);
        let mut gs = vec![section_id(primary)];
        let extra = 1 + rng.weighted(&[50, 35, 15]);
        while gs.len() < 1 + extra {
            let g = match rng.weighted(&[45, 30, 12, 10, 3]) {
                0 => section_id(rng.below(SECTIONS)),
                1 => "teleworkers".into(),
                2 => "managers".into(),
                3 => "mynumber-operators".into(),
                _ => "it-admins".into(),
            };
            if !gs.contains(&g) {
                gs.push(g);
            }
        }
        let has = |g: &str| gs.iter().any(|x| x == g);
        let mn = has("mynumber-operators")
            || (mynumber_department(section_dept(primary)) && primary.is_multiple_of(3));
        let (tele, admin, manager) = (has("teleworkers"), has("it-admins"), has("managers"));
        let mut enrolled = FactorSet::EMPTY;
        let mut maybe = |f: Factor, p: f64| {
            if rng.chance(p) {
                enrolled = enrolled.with(f);
            }
        };
        maybe(Factor::Password, 0.99);
        maybe(Factor::Pin, 0.92);
        maybe(Factor::Card, 0.90);
        maybe(Factor::MynumberCard, 0.12);
        maybe(Factor::Face, if tele || manager { 0.85 } else { 0.55 });
        maybe(Factor::Vein, if mn { 0.75 } else { 0.20 });
        maybe(
            Factor::Totp,
            if admin {
                0.95
            } else if tele {
                0.70
            } else {
                0.25
            },
        );
        let role = if admin {
            "admin"
        } else if manager {
            "manager"
        } else {
            "staff"
        };
        users.push(UserRecord {
            id: format!("u{i:06}"),
            department: DEPARTMENT_NAMES[section_dept(primary)].into(),
            role: role.into(),
            enrolled,
            groups: gs,
        });
    }

    // 1,700 devices: (tier, kind, id prefix, count, capability probabilities card/face/vein).
    let fleet: [(Tier, DeviceKind, &str, usize, [f64; 3]); 9] = [
        (
            Tier::Mynumber,
            DeviceKind::Desktop,
            "mn-desk",
            150,
            [1.0, 0.4, 0.7],
        ),
        (
            Tier::Mynumber,
            DeviceKind::Shared,
            "mn-counter",
            100,
            [1.0, 1.0, 0.1],
        ),
        (
            Tier::Lgwan,
            DeviceKind::Desktop,
            "lgwan-desk",
            650,
            [1.0, 0.4, 0.05],
        ),
        (
            Tier::Lgwan,
            DeviceKind::Mobile,
            "lgwan-mobile",
            100,
            [0.2, 1.0, 0.0],
        ),
        (
            Tier::Lgwan,
            DeviceKind::Vdi,
            "lgwan-vdi",
            100,
            [0.9, 0.5, 0.0],
        ),
        (
            Tier::Lgwan,
            DeviceKind::Shared,
            "lgwan-shared",
            50,
            [1.0, 0.8, 0.0],
        ),
        (
            Tier::Internet,
            DeviceKind::Desktop,
            "net-desk",
            150,
            [1.0, 0.1, 0.0],
        ),
        (
            Tier::Internet,
            DeviceKind::Vdi,
            "net-vdi",
            200,
            [0.0, 0.0, 0.0],
        ),
        (
            Tier::Telework,
            DeviceKind::Telework,
            "tw-pc",
            200,
            [0.1, 1.0, 0.0],
        ),
    ];
    let mut devices = Vec::new();
    for (tier, kind, prefix, n, [pc, pf, pv]) in fleet {
        for i in 1..=n {
            let capabilities = Capabilities {
                card: rng.chance(pc),
                face: rng.chance(pf),
                vein: rng.chance(pv),
            };
            let location = if kind == DeviceKind::Telework {
                "貸与テレワーク端末 (在宅)".to_string()
            } else {
                format!(
                    "{}{}F {}",
                    BUILDINGS[rng.weighted(&[10, 4, 2, 1, 1])],
                    1 + rng.below(6),
                    DEPARTMENT_NAMES[rng.below(DEPARTMENTS)]
                )
            };
            devices.push(DeviceRecord {
                id: format!("{prefix}-{i:04}"),
                tier,
                kind,
                capabilities,
                location,
            });
        }
    }
    assert_eq!(devices.len(), 1_700);
    EntityBatch {
        users,
        groups,
        devices,
    }
}

/// `n` decision requests as a day's traffic looks, each with the factors an
/// authorize would carry (a random non-empty subset of what the user can present
/// there, so both allows and denies occur).
pub fn requests(batch: &EntityBatch, n: usize) -> Vec<(DecisionRequest, FactorSet)> {
    let mut rng = Rng::new(SEED ^ 0xBEEF);
    let by_tier =
        |t: Tier| -> Vec<&DeviceRecord> { batch.devices.iter().filter(|d| d.tier == t).collect() };
    let tiers = [
        by_tier(Tier::Mynumber),
        by_tier(Tier::Lgwan),
        by_tier(Tier::Internet),
        by_tier(Tier::Telework),
    ];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let user = &batch.users[rng.below(batch.users.len())];
        let has = |g: &str| user.groups.iter().any(|x| x == g);
        let weights = [
            if has("mynumber-operators") { 25 } else { 3 },
            55,
            15,
            if has("teleworkers") { 15 } else { 2 },
        ];
        let tier = rng.weighted(&weights);
        let device = *rng.pick(&tiers[tier]);
        let action = match device.kind {
            DeviceKind::Shared => [
                Action::Logon,
                Action::Unlock,
                Action::SwitchOperator,
                Action::Presence,
            ][rng.weighted(&[3, 3, 2, 2])],
            _ => [
                Action::Logon,
                Action::Unlock,
                Action::Elevate,
                Action::Presence,
            ][rng.weighted(&[45, 45, 5, 5])],
        };
        let (via, upstream) = if device.tier == Tier::Lgwan
            && matches!(device.kind, DeviceKind::Desktop | DeviceKind::Vdi)
            && has("teleworkers")
            && rng.chance(0.3)
        {
            (
                Via::LgwanTelework,
                FactorSet::parse_names(["face", "password"]).unwrap(),
            )
        } else if rng.chance(0.05) {
            (Via::Rdp, FactorSet::EMPTY)
        } else {
            (Via::Console, FactorSet::EMPTY)
        };
        let hour = if rng.chance(0.8) {
            8 + rng.below(10)
        } else {
            rng.below(24)
        } as u8;
        let available = user
            .enrolled
            .intersection(FactorSet::capturable_with(device.capabilities));
        let mut factors = FactorSet::EMPTY;
        for f in available.iter() {
            if rng.chance(0.6) {
                factors = factors.with(f);
            }
        }
        if factors.is_empty() {
            factors = FactorSet::parse_names(["password"]).unwrap();
        }
        out.push((
            DecisionRequest {
                user: user.id.clone(),
                device: device.id.clone(),
                action,
                via,
                upstream,
                hour,
            },
            factors,
        ));
    }
    out
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
pub fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
