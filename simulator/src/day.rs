//! The workday script: what each person and each shared terminal does, in order,
//! from the morning logon storm to the evening logoff, with the day's mistakes and
//! attacks placed in it.
//!
//! A script is a sequence that must run in order (one person's day, or one shared
//! terminal's operators); scripts run concurrently. Everything that can change a
//! user's standing on a tier (failures, lockouts, TOTP steps, sessions) happens inside
//! one script, which is what makes a seed's outcome the same on every run even with
//! hundreds of logons in flight. The script only says what is presented: every
//! decision is the gateways' and the engine's.

use serde::{Deserialize, Serialize};

use crate::city::{City, Work};
use crate::rng::Rng;

/// Phases of the compressed day; scripts advance through them together, so the
/// morning storm really is every terminal logging on at once.
pub const PHASES: [&str; 6] = [
    "08:30 morning logon storm",
    "10:00 morning",
    "12:30 lunch",
    "15:00 afternoon",
    "18:30 evening",
    "20:00 helpdesk close-out",
];

/// Lighting at a capture: office light, evening light, or a home at telework.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lighting {
    Office,
    Evening,
    Home,
}

/// A scripted attack, and what the gateway must answer for it to count as stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// Someone found a card and tries it without the owner's password.
    FoundCard,
    /// Someone else in front of the camera, knowing the password.
    Impostor,
    /// A TOTP code that was already used, replayed.
    TotpReplay,
    /// A device of one tier talking to another tier's gateway.
    WrongTier,
}

impl Attack {
    pub const ALL: [Attack; 4] = [
        Attack::FoundCard,
        Attack::Impostor,
        Attack::TotpReplay,
        Attack::WrongTier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::FoundCard => "found card without PIN/password",
            Attack::Impostor => "impostor in front of a camera",
            Attack::TotpReplay => "TOTP code reused",
            Attack::WrongTier => "device of another tier",
        }
    }

    /// The deny reason expected, and the (factor, failure code) when a factor must
    /// have failed. For [`Attack::WrongTier`] the gateway refuses the call itself and
    /// journals the refusal with this reason.
    pub fn expected(self) -> (&'static str, Option<(&'static str, &'static str)>) {
        match self {
            Attack::FoundCard => ("factor_failed", Some(("password", "mismatch"))),
            Attack::Impostor => ("factor_failed", Some(("face", "mismatch"))),
            Attack::TotpReplay => ("factor_failed", Some(("totp", "replayed"))),
            Attack::WrongTier => ("device_not_registered", None),
        }
    }
}

/// What is presented at one attempt. Indices are into `City::people`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Presents {
    /// `Some(0)`: the right password; `Some(n)`: the n-th wrong guess.
    pub password: Option<u32>,
    pub pin: bool,
    pub totp: bool,
    /// Replay the code this script last used instead of a fresh one.
    pub replay_totp: bool,
    /// Whose card is in the reader.
    pub card_of: Option<usize>,
    /// Whose face is in front of the camera.
    pub face_of: Option<usize>,
    pub vein_of: Option<usize>,
    pub mask: bool,
    pub lighting: Option<Lighting>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Auth {
    /// The account the attempt is for.
    pub user: usize,
    /// The terminal (its mutual-TLS certificate).
    pub device: String,
    /// The gateway talked to (the terminal's own tier except for a wrong-tier attack).
    pub gateway: String,
    /// logon, unlock or switch_operator.
    pub action: String,
    pub via: String,
    pub upstream: Vec<String>,
    pub presents: Presents,
    /// May call the helpdesk for an emergency OTP when nothing presented is enough.
    pub helpdesk: bool,
    /// Fresh biometric captures after a false reject.
    pub retries: u8,
    pub attack: Option<Attack>,
    /// A honest mistake (a mistyped password): expected to be denied.
    pub mistake: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Step {
    Auth(Auth),
    Lock {
        device: String,
        tier: String,
    },
    Logoff {
        device: String,
        tier: String,
    },
    /// The helpdesk clears a user's lockout on a tier (`GatewayAdmin.UnlockUser`).
    UnlockUser {
        user: usize,
        tier: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Script {
    /// Who or what this script is (a person id or a shared terminal id).
    pub actor: String,
    /// (phase, step), phases non-decreasing.
    pub steps: Vec<(u8, Step)>,
}

/// The whole day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workday {
    pub scripts: Vec<Script>,
}

impl Workday {
    pub fn steps(&self) -> usize {
        self.scripts.iter().map(|s| s.steps.len()).sum()
    }

    /// Scripted attacks per kind.
    pub fn attacks(&self) -> Vec<(Attack, usize)> {
        Attack::ALL
            .iter()
            .map(|a| {
                let n = self
                    .scripts
                    .iter()
                    .flat_map(|s| &s.steps)
                    .filter(|(_, st)| matches!(st, Step::Auth(x) if x.attack == Some(*a)))
                    .count();
                (*a, n)
            })
            .collect()
    }
}

/// Who is the target of which attack: at least one of each kind, more in a larger
/// city.
struct Targets {
    found_card: Vec<usize>,
    impostor: Vec<usize>,
    totp_replay: Vec<usize>,
    wrong_tier: Vec<usize>,
}

fn pick(rng: &mut Rng, eligible: Vec<usize>, rate: f64) -> Vec<usize> {
    if eligible.is_empty() {
        return vec![];
    }
    let k = ((eligible.len() as f64 * rate).round() as usize).clamp(1, eligible.len());
    let mut pool = eligible;
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let i = rng.below(pool.len());
        out.push(pool.swap_remove(i));
    }
    out.sort_unstable();
    out
}

fn lgwan_camera(city: &City, i: usize) -> bool {
    let p = &city.people[i];
    p.work != Work::Field
        && p.face
        && city
            .terminal(&p.lgwan_device)
            .is_some_and(|t| t.can("face"))
}

impl Workday {
    /// The day for `city`, drawn from `seed` (the city's own seed by default).
    pub fn generate(city: &City, seed: u64) -> Workday {
        let root = Rng::new(seed).fork(2);
        let mut rng = root.fork(0);
        let people = &city.people;
        let desk: Vec<usize> = (0..people.len())
            .filter(|&i| people[i].work != Work::Field)
            .collect();
        // Teleworkers working from home today: at least one, so the tier is exercised.
        let mut at_home: Vec<bool> = people
            .iter()
            .enumerate()
            .map(|(i, p)| p.teleworker && root.fork(0x7e1e + i as u64).chance(0.4))
            .collect();
        if !at_home.iter().any(|&h| h) {
            if let Some(i) = people.iter().position(|p| p.teleworker) {
                at_home[i] = true;
            }
        }
        let targets = Targets {
            found_card: pick(
                &mut rng,
                desk.iter()
                    .copied()
                    .filter(|&i| people[i].has_card() && !at_home[i])
                    .collect(),
                0.01,
            ),
            impostor: pick(
                &mut rng,
                desk.iter()
                    .copied()
                    .filter(|&i| lgwan_camera(city, i) && !at_home[i])
                    .collect(),
                0.02,
            ),
            totp_replay: pick(
                &mut rng,
                desk.iter()
                    .copied()
                    .filter(|&i| {
                        people[i].totp
                            && people[i]
                                .internet_device
                                .as_ref()
                                .and_then(|d| city.terminal(d))
                                .is_some_and(|t| t.kind == "vdi")
                    })
                    .collect(),
                0.02,
            ),
            wrong_tier: pick(
                &mut rng,
                desk.iter().copied().filter(|&i| at_home[i]).collect(),
                0.05,
            ),
        };

        let mut scripts = Vec::new();
        for &i in &desk {
            scripts.push(person_day(city, i, at_home[i], &targets, &root));
        }
        for t in &city.terminals {
            if t.kind == "shared" && !t.operators.is_empty() {
                scripts.push(shared_day(city, t, &root));
            }
        }
        Workday { scripts }
    }
}

fn auth(user: usize, device: &str, tier: &str, action: &str, presents: Presents) -> Auth {
    Auth {
        user,
        device: device.to_string(),
        gateway: tier.to_string(),
        action: action.to_string(),
        via: "console".into(),
        upstream: vec![],
        presents,
        helpdesk: false,
        retries: 2,
        attack: None,
        mistake: false,
    }
}

/// One desk worker's or manager's day.
fn person_day(city: &City, i: usize, at_home: bool, targets: &Targets, root: &Rng) -> Script {
    let p = &city.people[i];
    let mut r = root.fork(0x1000_0000 + i as u64);
    let forgot_card = p.has_card() && r.chance(0.02);
    let card_today = (p.has_card() && !forgot_card).then_some(i);
    let masked = r.chance(0.25);
    let lgwan = p.lgwan_device.clone();
    let lgwan_face = lgwan_camera(city, i);
    let mut steps: Vec<(u8, Step)> = Vec::new();
    let base = |lighting: Lighting, mask: bool| Presents {
        password: Some(0),
        card_of: card_today,
        face_of: lgwan_face.then_some(i),
        mask,
        lighting: Some(lighting),
        ..Presents::default()
    };

    // Morning.
    if at_home {
        if let Some(tw) = &p.telework_device {
            steps.push((
                0,
                Step::Auth(auth(
                    i,
                    tw,
                    "telework",
                    "logon",
                    Presents {
                        password: Some(0),
                        face_of: Some(i),
                        lighting: Some(Lighting::Home),
                        ..Presents::default()
                    },
                )),
            ));
            if targets.wrong_tier.contains(&i) {
                // The telework PC tries the LGWAN gateway directly, not via the relay.
                let mut a = auth(
                    i,
                    tw,
                    "lgwan",
                    "logon",
                    Presents {
                        password: Some(0),
                        face_of: Some(i),
                        lighting: Some(Lighting::Home),
                        ..Presents::default()
                    },
                );
                a.attack = Some(Attack::WrongTier);
                steps.push((0, Step::Auth(a)));
            }
            let mut relay = auth(i, &lgwan, "lgwan", "logon", base(Lighting::Home, false));
            relay.presents.card_of = None; // no card reader at home
            relay.via = "lgwan_telework".into();
            relay.upstream = vec!["face".into(), "password".into()];
            steps.push((0, Step::Auth(relay)));
        }
    } else {
        if r.chance(0.04) {
            let mut a = auth(i, &lgwan, "lgwan", "logon", base(Lighting::Office, false));
            a.presents.password = Some(1);
            a.mistake = true;
            a.retries = 0;
            steps.push((0, Step::Auth(a)));
        }
        let mut a = auth(i, &lgwan, "lgwan", "logon", base(Lighting::Office, false));
        a.helpdesk = true;
        steps.push((0, Step::Auth(a)));
    }
    let internet = p
        .internet_device
        .as_ref()
        .and_then(|d| city.terminal(d))
        .filter(|_| !at_home);
    if let Some(t) = internet {
        let presents = Presents {
            password: Some(0),
            totp: p.totp,
            card_of: if t.can("card") { card_today } else { None },
            ..Presents::default()
        };
        steps.push((0, Step::Auth(auth(i, &t.id, "internet", "logon", presents))));
        if targets.totp_replay.contains(&i) {
            let mut a = auth(
                i,
                &t.id,
                "internet",
                "logon",
                Presents {
                    password: Some(0),
                    totp: true,
                    replay_totp: true,
                    ..Presents::default()
                },
            );
            a.attack = Some(Attack::TotpReplay);
            a.retries = 0;
            steps.push((0, Step::Auth(a)));
        }
    }
    let mynumber = p
        .mynumber_device
        .as_ref()
        .and_then(|d| city.terminal(d))
        .filter(|t| t.kind == "desktop" && !at_home);
    let mn_presents = |t: &crate::city::Terminal, mask: bool| Presents {
        password: Some(0),
        card_of: card_today,
        vein_of: (t.can("vein") && p.vein).then_some(i),
        face_of: (t.can("face") && p.face).then_some(i),
        mask,
        lighting: Some(Lighting::Office),
        ..Presents::default()
    };
    if let Some(t) = mynumber {
        steps.push((
            0,
            Step::Auth(auth(i, &t.id, "mynumber", "logon", mn_presents(t, false))),
        ));
    }

    // Screen locks and unlocks through the day.
    let cycles = 1 + r.below(3);
    for c in 0..cycles {
        let phase = 1 + (c % 3) as u8;
        let mask = masked && r.chance(0.6);
        steps.push((
            phase,
            Step::Lock {
                device: lgwan.clone(),
                tier: "lgwan".into(),
            },
        ));
        let mut a = auth(
            i,
            &lgwan,
            "lgwan",
            "unlock",
            base(
                if at_home {
                    Lighting::Home
                } else {
                    Lighting::Office
                },
                mask,
            ),
        );
        if at_home {
            a.presents.card_of = None;
            a.via = "lgwan_telework".into();
            a.upstream = vec!["face".into(), "password".into()];
        } else {
            a.helpdesk = true;
        }
        steps.push((phase, Step::Auth(a)));
        if let (Some(t), 0) = (mynumber, c) {
            steps.push((
                phase,
                Step::Lock {
                    device: t.id.clone(),
                    tier: "mynumber".into(),
                },
            ));
            steps.push((
                phase,
                Step::Auth(auth(i, &t.id, "mynumber", "unlock", mn_presents(t, mask))),
            ));
        }
    }

    // Evening: one more unlock under evening light for camera users, then logoff.
    if lgwan_face && !at_home {
        steps.push((
            4,
            Step::Lock {
                device: lgwan.clone(),
                tier: "lgwan".into(),
            },
        ));
        let mut a = auth(i, &lgwan, "lgwan", "unlock", base(Lighting::Evening, false));
        a.helpdesk = true;
        steps.push((4, Step::Auth(a)));
    }
    if targets.impostor.contains(&i) {
        // The screen is locked for a moment; someone else sits down, knowing the
        // password, and looks into the camera (a sibling who looks alike, if any).
        let impostor = p.lookalike_of.unwrap_or_else(|| {
            let mut other = r.below(city.people.len());
            if other == i {
                other = (other + 1) % city.people.len();
            }
            other
        });
        steps.push((
            4,
            Step::Lock {
                device: lgwan.clone(),
                tier: "lgwan".into(),
            },
        ));
        let mut a = auth(
            i,
            &lgwan,
            "lgwan",
            "unlock",
            Presents {
                password: Some(0),
                face_of: Some(impostor),
                lighting: Some(Lighting::Evening),
                ..Presents::default()
            },
        );
        a.attack = Some(Attack::Impostor);
        a.retries = 0;
        steps.push((4, Step::Auth(a)));
    }
    steps.push((
        4,
        Step::Logoff {
            device: lgwan.clone(),
            tier: "lgwan".into(),
        },
    ));
    if let Some(t) = internet {
        steps.push((
            4,
            Step::Logoff {
                device: t.id.clone(),
                tier: "internet".into(),
            },
        ));
    }
    if let Some(t) = mynumber {
        steps.push((
            4,
            Step::Logoff {
                device: t.id.clone(),
                tier: "mynumber".into(),
            },
        ));
    }
    if let (true, Some(tw)) = (at_home, &p.telework_device) {
        steps.push((
            4,
            Step::Logoff {
                device: tw.clone(),
                tier: "telework".into(),
            },
        ));
    }

    // After hours, at the empty desk.
    if targets.found_card.contains(&i) {
        // Five guesses with the owner's card: the fifth locks the owner out.
        for guess in 1..=5 {
            let mut a = auth(
                i,
                &lgwan,
                "lgwan",
                "logon",
                Presents {
                    password: Some(guess),
                    card_of: Some(i),
                    ..Presents::default()
                },
            );
            a.attack = Some(Attack::FoundCard);
            a.retries = 0;
            steps.push((4, Step::Auth(a)));
        }
        steps.push((
            5,
            Step::UnlockUser {
                user: i,
                tier: "lgwan".into(),
            },
        ));
    }
    Script {
        actor: p.id.clone(),
        steps,
    }
}

/// A shared terminal's day: the first operator logs on, the others take over in
/// turn (operator changes without a logoff), with screen locks between.
fn shared_day(city: &City, t: &crate::city::Terminal, root: &Rng) -> Script {
    let tier = t.tier.clone();
    let mut r = root.fork(0x2000_0000 + t.id.bytes().map(u64::from).sum::<u64>());
    let counter = tier == "mynumber";
    let mut steps: Vec<(u8, Step)> = Vec::new();
    let presents = |o: usize, r: &mut Rng, lighting: Lighting| {
        let p = &city.people[o];
        let forgot = r.chance(0.02);
        Presents {
            password: Some(0),
            pin: true,
            card_of: (p.has_card() && !forgot).then_some(o),
            face_of: (counter && p.face).then_some(o),
            mask: counter && r.chance(0.4),
            lighting: Some(lighting),
            ..Presents::default()
        }
    };
    let first = t.operators[0];
    let mut a = auth(
        first,
        &t.id,
        &tier,
        "logon",
        presents(first, &mut r, Lighting::Office),
    );
    a.helpdesk = !counter;
    steps.push((0, Step::Auth(a)));
    let mut order: Vec<usize> = t.operators[1..].to_vec();
    order.push(first);
    let turns = order.len().max(1);
    for (k, &o) in order.iter().enumerate() {
        // Spread the operator changes over the morning, lunch and afternoon.
        let phase = 1 + (k * 3 / turns) as u8;
        let mut a = auth(
            o,
            &t.id,
            &tier,
            "switch_operator",
            presents(o, &mut r, Lighting::Office),
        );
        a.helpdesk = !counter;
        steps.push((phase, Step::Auth(a)));
        if r.chance(0.3) {
            steps.push((
                phase,
                Step::Lock {
                    device: t.id.clone(),
                    tier: tier.clone(),
                },
            ));
            let mut a = auth(
                o,
                &t.id,
                &tier,
                "unlock",
                presents(o, &mut r, Lighting::Office),
            );
            a.helpdesk = !counter;
            steps.push((phase, Step::Auth(a)));
        }
    }
    steps.push((
        4,
        Step::Logoff {
            device: t.id.clone(),
            tier,
        },
    ));
    Script {
        actor: t.id.clone(),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    #[test]
    fn every_attack_is_scripted_and_phases_are_ordered() {
        let city = City::generate(Profile::Small, 7);
        let day = Workday::generate(&city, 7);
        for (attack, n) in day.attacks() {
            assert!(n > 0, "{attack:?} not scripted");
        }
        for s in &day.scripts {
            assert!(s.steps.windows(2).all(|w| w[0].0 <= w[1].0), "{}", s.actor);
        }
        let again = Workday::generate(&city, 7);
        assert_eq!(
            serde_json::to_string(&day).unwrap(),
            serde_json::to_string(&again).unwrap()
        );
    }
}
