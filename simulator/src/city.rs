//! The municipality generator: departments, staff, terminals of every kind on every
//! tier, and who has enrolled what (with the gaps a real city has).
//!
//! Everything here is a pure function of the profile and the seed, and serialisable,
//! so a generated city can be written out and the same day replayed from it. Key
//! material (card keys, capture-device keys, TOTP secrets) is not part of the city:
//! it is made when the city is enrolled, because the gateways hand out TOTP secrets
//! and the CAs are generated per run.

use serde::{Deserialize, Serialize};

use sekisho_policy_engine::entities::{DeviceRecord, EntityBatch, GroupRecord, UserRecord};
use sekisho_policy_engine::{Capabilities, DeviceKind, FactorSet, Tier};

use crate::profile::Profile;
use crate::rng::Rng;

/// Dimensions of the simulated face and vein feature vectors. Small enough that
/// generating a city's captures is cheap, large enough that similarities concentrate
/// the way real embeddings do.
pub const VECTOR_DIM: usize = 128;

/// A department: (group id, share of staff, handles My Number / resident records).
const DEPARTMENTS: [(&str, f64, bool); 14] = [
    ("general-affairs", 0.06, false),
    ("planning", 0.04, false),
    ("finance", 0.04, false),
    ("resident-tax", 0.06, true),
    ("citizen-affairs", 0.07, true),
    ("welfare", 0.10, true),
    ("health", 0.08, false),
    ("childcare", 0.15, false),
    ("environment", 0.08, false),
    ("construction", 0.08, false),
    ("education", 0.14, false),
    ("fire", 0.06, false),
    ("it-division", 0.02, false),
    ("mayors-office", 0.02, false),
];

/// How a person works, which decides their terminals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Work {
    /// An own LGWAN desktop.
    Desk,
    /// A manager with a mobile PC (camera and an NFC card reader).
    Manager,
    /// Shares an LGWAN terminal at a counter, nursery, school or fire station.
    Field,
}

/// Which IC card a person carries, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardKind {
    /// Not issued yet (new staff, lost and not replaced): an enrollment gap.
    None,
    /// A staff IC card from the city's card CA.
    Staff,
    /// The person's My Number card (JPKI user-authentication certificate), which
    /// proves `card` and `mynumber_card`.
    Mynumber,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    pub id: String,
    pub department: String,
    pub role: String,
    pub groups: Vec<String>,
    pub work: Work,
    pub card: CardKind,
    /// Has a TOTP authenticator enrolled (internet-tier VDI users need one).
    pub totp: bool,
    /// Face template enrolled.
    pub face: bool,
    /// Palm-vein template enrolled (My Number desktop operators with a vein reader).
    pub vein: bool,
    /// A PIN set (shared terminals and My Number counters).
    pub pin: bool,
    pub teleworker: bool,
    pub mynumber_operator: bool,
    /// Another person whose face and vein centres this one's lie close to (a sibling):
    /// where a false accept can really happen.
    pub lookalike_of: Option<usize>,
    /// How noisy this person's captures are (glasses, posture, skin): 0.2 to 0.45.
    pub capture_noise: f32,
    /// The LGWAN terminal used (own desktop or mobile, or a shared terminal).
    pub lgwan_device: String,
    pub mynumber_device: Option<String>,
    pub internet_device: Option<String>,
    pub telework_device: Option<String>,
}

impl Person {
    /// Every factor this person could present somewhere (the engine's `enrolled`).
    pub fn enrolled(&self) -> FactorSet {
        let mut names = vec!["password"];
        match self.card {
            CardKind::None => {}
            CardKind::Staff => names.push("card"),
            CardKind::Mynumber => names.extend(["card", "mynumber_card"]),
        }
        for (has, name) in [
            (self.totp, "totp"),
            (self.face, "face"),
            (self.vein, "vein"),
            (self.pin, "pin"),
        ] {
            if has {
                names.push(name);
            }
        }
        FactorSet::parse_names(&names).unwrap_or(FactorSet::EMPTY)
    }

    pub fn has_card(&self) -> bool {
        self.card != CardKind::None
    }

    /// The password this simulated person types (never logged; the gateways store
    /// only its Argon2id hash).
    pub fn password(&self, seed: u64) -> String {
        format!("pw-{}-{:x}", self.id, seed & 0xffff_ffff)
    }

    pub fn pin(&self, seed: u64) -> String {
        let n = self
            .id
            .bytes()
            .fold(seed, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
        format!("{:06}", n % 1_000_000)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Terminal {
    pub id: String,
    pub tier: String,
    pub kind: String,
    pub capabilities: Vec<String>,
    pub location: String,
    /// Shared terminals: who operates it during the day, in turn (indices into
    /// `City::people`).
    pub operators: Vec<usize>,
}

impl Terminal {
    pub fn tier(&self) -> Tier {
        self.tier.parse().unwrap_or(Tier::Lgwan)
    }

    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// A generated municipality.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct City {
    pub profile: Profile,
    pub seed: u64,
    pub departments: Vec<String>,
    pub people: Vec<Person>,
    pub terminals: Vec<Terminal>,
}

/// Counts of what was generated, for the report header.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CitySummary {
    pub staff: usize,
    pub terminals: usize,
    pub terminals_by_tier: Vec<(String, usize)>,
    pub without_card: usize,
    pub with_mynumber_card: usize,
    pub vdi_without_totp: usize,
    pub teleworkers: usize,
    pub mynumber_operators: usize,
}

impl City {
    /// Generates the city for `profile` and `seed`.
    pub fn generate(profile: Profile, seed: u64) -> City {
        let root = Rng::new(seed);
        let rng = root.fork(1);
        let staff = profile.staff();
        let total: f64 = DEPARTMENTS.iter().map(|d| d.1).sum();
        let mut people = Vec::with_capacity(staff);
        let mut terminals: Vec<Terminal> = Vec::new();
        let mut counters = Counters::default();

        // Staff per department, largest remainder so the total is exact.
        let mut sizes: Vec<usize> = DEPARTMENTS
            .iter()
            .map(|d| ((d.1 / total) * staff as f64).floor() as usize)
            .collect();
        let mut i = 0;
        while sizes.iter().sum::<usize>() < staff {
            let n = sizes.len();
            sizes[i % n] += 1;
            i += 1;
        }

        for (d, &(dept, _, mynumber_dept)) in DEPARTMENTS.iter().enumerate() {
            let mut field_lgwan: Vec<usize> = Vec::new();
            let mut field_counter: Vec<usize> = Vec::new();
            for _ in 0..sizes[d] {
                let idx = people.len();
                let mut p = rng.fork(idx as u64 + 1);
                let id = format!("s{:05}", idx + 1);
                // Offices with counters and schools have fewer desks per head.
                let desk_share = match dept {
                    "childcare" | "education" | "fire" => 0.08,
                    "general-affairs" | "planning" | "finance" | "it-division"
                    | "mayors-office" => 0.55,
                    _ => 0.20,
                };
                let roll = p.f64();
                let work = if roll < 0.05 {
                    Work::Manager
                } else if roll < 0.05 + desk_share {
                    Work::Desk
                } else {
                    Work::Field
                };
                let card = match p.f64() {
                    x if x < 0.03 => CardKind::None,
                    x if x < 0.30 => CardKind::Mynumber,
                    _ => CardKind::Staff,
                };
                let mynumber_operator = mynumber_dept && p.chance(0.45);
                let teleworker = work != Work::Field && p.chance(0.12);
                let role = match (work, dept) {
                    (Work::Manager, _) => "manager",
                    (_, "it-division") => "it-admin",
                    _ => "staff",
                };
                let mut groups = vec![dept.to_string()];
                if mynumber_operator {
                    groups.push("mynumber-operators".into());
                }
                if teleworker {
                    groups.push("teleworkers".into());
                }
                if role == "it-admin" {
                    groups.push("it-admins".into());
                }
                let lookalike_of = if idx > 10 && p.chance(0.015) {
                    Some(p.below(idx))
                } else {
                    None
                };
                let capture_noise = 0.2 + 0.25 * p.f64() as f32;
                let mut person = Person {
                    id,
                    department: dept.to_string(),
                    role: role.to_string(),
                    groups,
                    work,
                    card,
                    totp: false,
                    face: false,
                    vein: false,
                    pin: false,
                    teleworker,
                    mynumber_operator,
                    lookalike_of,
                    capture_noise,
                    lgwan_device: String::new(),
                    mynumber_device: None,
                    internet_device: None,
                    telework_device: None,
                };
                match work {
                    Work::Desk => {
                        // Teleworkers' desktops have a camera for the relay's face check;
                        // a few others got one for face unlock.
                        let camera = teleworker || p.chance(0.15);
                        let mut caps = vec!["card"];
                        if camera {
                            caps.push("face");
                            person.face = true;
                        }
                        person.lgwan_device =
                            counters.add(&mut terminals, "lgwan", "desktop", &caps, dept, vec![]);
                    }
                    Work::Manager => {
                        person.face = true;
                        person.lgwan_device = counters.add(
                            &mut terminals,
                            "lgwan",
                            "mobile",
                            &["card", "face"],
                            dept,
                            vec![],
                        );
                    }
                    Work::Field => {
                        person.pin = true;
                        field_lgwan.push(idx);
                    }
                }
                if mynumber_operator {
                    if work == Work::Field {
                        person.face = true;
                        field_counter.push(idx);
                    } else {
                        // Vein readers only on some My Number desktops; the rest
                        // have a camera.
                        let vein = p.chance(0.5);
                        let caps: Vec<&str> = if vein {
                            vec!["card", "vein"]
                        } else {
                            vec!["card", "face"]
                        };
                        person.vein |= vein;
                        person.face |= !vein;
                        person.mynumber_device = Some(counters.add(
                            &mut terminals,
                            "mynumber",
                            "desktop",
                            &caps,
                            dept,
                            vec![],
                        ));
                    }
                }
                if work != Work::Field && p.chance(0.30) {
                    // Internet access: mostly isolated VDI (password + TOTP), some
                    // physical internet desktops with card readers.
                    if p.chance(0.7) {
                        person.totp = !p.chance(0.08);
                        person.internet_device = Some(counters.add(
                            &mut terminals,
                            "internet",
                            "vdi",
                            &[],
                            dept,
                            vec![],
                        ));
                    } else {
                        person.internet_device = Some(counters.add(
                            &mut terminals,
                            "internet",
                            "desktop",
                            &["card"],
                            dept,
                            vec![],
                        ));
                    }
                }
                if teleworker {
                    person.face = true;
                    person.telework_device = Some(counters.add(
                        &mut terminals,
                        "telework",
                        "telework",
                        &["face"],
                        dept,
                        vec![],
                    ));
                }
                people.push(person);
            }
            // Shared LGWAN terminals: about six staff each; a person without a card
            // is never first at the terminal (someone opens it in the morning).
            for chunk in field_lgwan.chunks(6) {
                let mut ops = chunk.to_vec();
                if let Some(pos) = ops.iter().position(|&o| people[o].has_card()) {
                    ops.swap(0, pos);
                }
                let id = counters.add(
                    &mut terminals,
                    "lgwan",
                    "shared",
                    &["card", "face"],
                    dept,
                    ops.clone(),
                );
                for o in ops {
                    people[o].lgwan_device = id.clone();
                }
            }
            // My Number counters: four operators each, camera and card reader.
            for chunk in field_counter.chunks(4) {
                let id = counters.add(
                    &mut terminals,
                    "mynumber",
                    "shared",
                    &["card", "face"],
                    dept,
                    chunk.to_vec(),
                );
                for &o in chunk {
                    people[o].mynumber_device = Some(id.clone());
                }
            }
        }
        City {
            profile,
            seed,
            departments: DEPARTMENTS.iter().map(|d| d.0.to_string()).collect(),
            people,
            terminals,
        }
    }

    pub fn terminal(&self, id: &str) -> Option<&Terminal> {
        self.terminals.iter().find(|t| t.id == id)
    }

    /// The engine's view: groups (departments under `all-staff`, and the policy
    /// groups), users with their enrolled factors, and devices.
    pub fn entities(&self) -> EntityBatch {
        let mut groups = vec![GroupRecord {
            id: "all-staff".into(),
            parents: vec![],
        }];
        for d in &self.departments {
            groups.push(GroupRecord {
                id: d.clone(),
                parents: vec!["all-staff".into()],
            });
        }
        for g in ["mynumber-operators", "teleworkers", "it-admins"] {
            groups.push(GroupRecord {
                id: g.into(),
                parents: vec![],
            });
        }
        let users = self
            .people
            .iter()
            .map(|p| UserRecord {
                id: p.id.clone(),
                department: p.department.clone(),
                role: p.role.clone(),
                enrolled: p.enrolled(),
                groups: p.groups.clone(),
            })
            .collect();
        let devices = self
            .terminals
            .iter()
            .map(|t| DeviceRecord {
                id: t.id.clone(),
                tier: t.tier(),
                kind: t.kind.parse().unwrap_or(DeviceKind::Desktop),
                capabilities: Capabilities::parse_names(&t.capabilities).unwrap_or_default(),
                location: t.location.clone(),
            })
            .collect();
        EntityBatch {
            users,
            groups,
            devices,
        }
    }

    pub fn summary(&self) -> CitySummary {
        let mut by_tier: Vec<(String, usize)> = Vec::new();
        for tier in Tier::ALL {
            let n = self
                .terminals
                .iter()
                .filter(|t| t.tier == tier.name())
                .count();
            by_tier.push((tier.name().to_string(), n));
        }
        CitySummary {
            staff: self.people.len(),
            terminals: self.terminals.len(),
            terminals_by_tier: by_tier,
            without_card: self.people.iter().filter(|p| !p.has_card()).count(),
            with_mynumber_card: self
                .people
                .iter()
                .filter(|p| p.card == CardKind::Mynumber)
                .count(),
            vdi_without_totp: self
                .people
                .iter()
                .filter(|p| {
                    p.internet_device
                        .as_ref()
                        .and_then(|d| self.terminal(d))
                        .is_some_and(|t| t.kind == "vdi")
                        && !p.totp
                })
                .count(),
            teleworkers: self.people.iter().filter(|p| p.teleworker).count(),
            mynumber_operators: self.people.iter().filter(|p| p.mynumber_operator).count(),
        }
    }
}

/// Numbering of terminals per tier and kind (`lgwan-desktop-0001`).
#[derive(Default)]
struct Counters(std::collections::BTreeMap<String, usize>);

impl Counters {
    fn add(
        &mut self,
        terminals: &mut Vec<Terminal>,
        tier: &str,
        kind: &str,
        caps: &[&str],
        dept: &str,
        operators: Vec<usize>,
    ) -> String {
        let n = self.0.entry(format!("{tier}-{kind}")).or_insert(0);
        *n += 1;
        let id = format!("{tier}-{kind}-{:04}", *n);
        terminals.push(Terminal {
            id: id.clone(),
            tier: tier.into(),
            kind: kind.into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            location: dept.into(),
            operators,
        });
        id
    }
}

/// A person's face or vein centre: a deterministic unit-variance vector, pulled
/// towards a look-alike's centre when they have one.
pub fn centre(city: &City, person: usize, factor: &str) -> Vec<f32> {
    let salt = if factor == "vein" { 0x7e1 } else { 0xface };
    let own = |i: usize| -> Vec<f32> {
        let mut r = Rng::new(city.seed).fork(salt).fork(i as u64 + 1);
        (0..VECTOR_DIM).map(|_| r.normal() as f32).collect()
    };
    let mine = own(person);
    match city.people.get(person).and_then(|p| p.lookalike_of) {
        Some(other) => {
            let theirs = own(other);
            mine.iter()
                .zip(theirs)
                .map(|(m, t)| 0.9 * t + 0.436 * m)
                .collect()
        }
        None => mine,
    }
}

/// One capture of `person`'s `factor`: the centre plus noise of standard deviation
/// `noise`, drawn from the stream `capture` (so a capture is reproducible).
pub fn capture(city: &City, person: usize, factor: &str, noise: f32, capture: u64) -> Vec<f32> {
    let mut r = Rng::new(city.seed).fork(0xca97).fork(capture);
    centre(city, person, factor)
        .into_iter()
        .map(|x| x + noise * r.normal() as f32)
        .collect()
}

/// The enrolled template: a careful capture at enrollment.
pub fn template(city: &City, person: usize, factor: &str) -> Vec<f32> {
    capture(
        city,
        person,
        factor,
        0.15,
        0xe0_0000 + person as u64 * 2 + u64::from(factor == "vein"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    }

    #[test]
    fn small_city_is_deterministic_and_sized() {
        let a = City::generate(Profile::Small, 42);
        let b = City::generate(Profile::Small, 42);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert_eq!(a.people.len(), 400);
        let s = a.summary();
        assert!(s.without_card > 0, "{s:?}");
        assert!(s.mynumber_operators > 0 && s.teleworkers > 0, "{s:?}");
        for tier in Tier::ALL {
            assert!(
                a.terminals.iter().any(|t| t.tier == tier.name()),
                "no {tier} terminal"
            );
        }
        assert!(a
            .terminals
            .iter()
            .any(|t| t.kind == "shared" && t.operators.len() > 1));
        let c = City::generate(Profile::Small, 43);
        assert_ne!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&c).unwrap()
        );
        // The entities load into the engine's directory.
        sekisho_policy_engine::entities::Directory::from_batch(a.entities()).unwrap();
    }

    #[test]
    fn captures_scatter_around_their_own_centre() {
        let city = City::generate(Profile::Small, 1);
        let t0 = template(&city, 0, "face");
        let genuine = cosine(&t0, &capture(&city, 0, "face", 0.3, 1));
        let masked = cosine(&t0, &capture(&city, 0, "face", 0.9, 2));
        let other = cosine(&t0, &capture(&city, 1, "face", 0.3, 3));
        assert!(genuine > 0.85, "{genuine}");
        assert!(masked < genuine, "{masked} {genuine}");
        assert!(other.abs() < 0.4, "{other}");
    }
}
