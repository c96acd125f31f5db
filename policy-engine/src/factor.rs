//! Authentication factors and sets of them.
//!
//! There are eight factors, so a set is a byte and "every subset" is 256 values. Plans
//! lean on that: a factor condition compiles to a 256-bit truth table ([`FactorTable`])
//! and the minimal sets are read off it with bit operations instead of by evaluating
//! Cedar once per subset.

use std::fmt;
use std::str::FromStr;

/// One authentication factor, with the exact names of DESIGN.md §1.
///
/// The declaration order is the lexicographic order of the names, so iterating a
/// [`FactorSet`] by bit yields its names sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Factor {
    Card,
    EmergencyOtp,
    Face,
    MynumberCard,
    Password,
    Pin,
    Totp,
    Vein,
}

impl Factor {
    pub const ALL: [Factor; 8] = [
        Factor::Card,
        Factor::EmergencyOtp,
        Factor::Face,
        Factor::MynumberCard,
        Factor::Password,
        Factor::Pin,
        Factor::Totp,
        Factor::Vein,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Factor::Card => "card",
            Factor::EmergencyOtp => "emergency_otp",
            Factor::Face => "face",
            Factor::MynumberCard => "mynumber_card",
            Factor::Password => "password",
            Factor::Pin => "pin",
            Factor::Totp => "totp",
            Factor::Vein => "vein",
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A factor name that is not one of the eight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown factor '{0}' (expected one of: card, emergency_otp, face, mynumber_card, password, pin, totp, vein)")]
pub struct UnknownFactor(pub String);

impl FromStr for Factor {
    type Err = UnknownFactor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Factor::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFactor(s.to_string()))
    }
}

/// A set of factors as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FactorSet(u8);

impl FactorSet {
    pub const EMPTY: FactorSet = FactorSet(0);
    pub const ALL: FactorSet = FactorSet(0xff);
    /// Factors typed on a keyboard: every device can capture them.
    pub const KEYBOARD: FactorSet = FactorSet(
        Factor::Password.bit()
            | Factor::Pin.bit()
            | Factor::Totp.bit()
            | Factor::EmergencyOtp.bit(),
    );

    pub const fn from_bits(bits: u8) -> Self {
        FactorSet(bits)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn contains(self, f: Factor) -> bool {
        self.0 & f.bit() != 0
    }
    pub const fn with(self, f: Factor) -> Self {
        FactorSet(self.0 | f.bit())
    }
    pub const fn without(self, f: Factor) -> Self {
        FactorSet(self.0 & !f.bit())
    }
    pub const fn union(self, o: Self) -> Self {
        FactorSet(self.0 | o.0)
    }
    pub const fn intersection(self, o: Self) -> Self {
        FactorSet(self.0 & o.0)
    }
    pub const fn difference(self, o: Self) -> Self {
        FactorSet(self.0 & !o.0)
    }
    pub const fn is_subset(self, o: Self) -> bool {
        self.0 & !o.0 == 0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Verifying a My Number card yields both `card` and `mynumber_card` (DESIGN.md §1),
    /// so a set with `mynumber_card` but without `card` can never be presented. Plans
    /// and decisions work on closed sets only.
    pub const fn closed(self) -> Self {
        if self.contains(Factor::MynumberCard) {
            self.with(Factor::Card)
        } else {
            self
        }
    }
    pub const fn is_closed(self) -> bool {
        self.0 == self.closed().0
    }

    /// How many things a person presents: a My Number card counts once although it
    /// yields two factor names.
    pub const fn presented_count(self) -> u32 {
        if self.contains(Factor::MynumberCard) {
            self.len() - 1
        } else {
            self.len()
        }
    }

    pub fn iter(self) -> impl Iterator<Item = Factor> {
        Factor::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// Sorted names.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Factor::name).collect()
    }

    /// Parses names; duplicates are harmless, unknown names are an error naming them.
    pub fn parse_names<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self, UnknownFactor> {
        names.into_iter().try_fold(FactorSet::EMPTY, |set, n| {
            Ok(set.with(n.as_ref().trim().parse::<Factor>()?))
        })
    }

    /// The factors a device with these hardware capabilities can capture. A card
    /// reader reads My Number cards too; keyboard factors are always capturable.
    pub fn capturable_with(capabilities: Capabilities) -> Self {
        let mut set = FactorSet::KEYBOARD;
        if capabilities.card {
            set = set.with(Factor::Card).with(Factor::MynumberCard);
        }
        if capabilities.face {
            set = set.with(Factor::Face);
        }
        if capabilities.vein {
            set = set.with(Factor::Vein);
        }
        set
    }

    /// Orders sets as plans present them: by size, then lexicographically by their
    /// sorted names.
    pub fn plan_order(a: &FactorSet, b: &FactorSet) -> std::cmp::Ordering {
        a.len()
            .cmp(&b.len())
            .then_with(|| a.names().cmp(&b.names()))
    }
}

impl FromIterator<Factor> for FactorSet {
    fn from_iter<I: IntoIterator<Item = Factor>>(iter: I) -> Self {
        iter.into_iter().fold(FactorSet::EMPTY, FactorSet::with)
    }
}

impl fmt::Display for FactorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, n) in self.names().into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(n)?;
        }
        f.write_str("]")
    }
}

/// The hardware factors a device can capture (`Device.capabilities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities {
    pub card: bool,
    pub face: bool,
    pub vein: bool,
}

/// A capability name that is not `card`, `face` or `vein` (keyboard factor names are
/// accepted and ignored: they are always capturable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device capability '{0}' (expected card, face or vein)")]
pub struct UnknownCapability(pub String);

impl Capabilities {
    pub fn parse_names<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self, UnknownCapability> {
        let mut caps = Capabilities::default();
        for n in names {
            match n.as_ref() {
                "card" | "mynumber_card" => caps.card = true,
                "face" => caps.face = true,
                "vein" => caps.vein = true,
                "password" | "pin" | "totp" | "emergency_otp" => {}
                other => return Err(UnknownCapability(other.to_string())),
            }
        }
        Ok(caps)
    }

    pub fn names(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.card {
            v.push("card");
        }
        if self.face {
            v.push("face");
        }
        if self.vein {
            v.push("vein");
        }
        v
    }
}

/// A boolean function of the factor set: bit `m` says whether the set with mask `m`
/// satisfies it. `and`/`or`/`not` compose conditions in a few word operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FactorTable([u64; 4]);

impl FactorTable {
    pub const FALSE: FactorTable = FactorTable([0; 4]);
    pub const TRUE: FactorTable = FactorTable([u64::MAX; 4]);

    pub fn constant(b: bool) -> Self {
        if b {
            Self::TRUE
        } else {
            Self::FALSE
        }
    }

    /// The sets that contain `f`.
    pub fn has(f: Factor) -> Self {
        let mut t = Self::FALSE;
        for m in 0..=255u8 {
            if FactorSet(m).contains(f) {
                t.set(m);
            }
        }
        t
    }

    /// Only the set `s` itself.
    pub fn has_exactly(s: FactorSet) -> Self {
        let mut t = Self::FALSE;
        t.set(s.0);
        t
    }

    /// Adding a factor never turns a satisfied set into an unsatisfied one.
    pub fn is_monotone(&self) -> bool {
        (0..=255u8).all(|m| {
            !self.get(FactorSet(m)) || Factor::ALL.iter().all(|f| self.get(FactorSet(m).with(*f)))
        })
    }

    fn set(&mut self, m: u8) {
        self.0[(m >> 6) as usize] |= 1u64 << (m & 63);
    }

    pub fn get(&self, s: FactorSet) -> bool {
        self.0[(s.0 >> 6) as usize] & (1u64 << (s.0 & 63)) != 0
    }

    pub fn and(self, o: Self) -> Self {
        FactorTable(std::array::from_fn(|i| self.0[i] & o.0[i]))
    }
    pub fn or(self, o: Self) -> Self {
        FactorTable(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Self {
        FactorTable(std::array::from_fn(|i| !self.0[i]))
    }

    /// The minimal closed sets within `universe` that satisfy the table, ordered as
    /// plans present them. "Minimal" means no satisfying proper subset, which for a
    /// monotone table is exactly the list of ways to satisfy it.
    pub fn minimal_sets(&self, universe: FactorSet) -> Vec<FactorSet> {
        let mut found: Vec<FactorSet> = Vec::new();
        // Masks in order of size, so a set is met only after all of its subsets.
        let mut masks: Vec<u8> = (0..=255u8)
            .filter(|m| FactorSet(*m).is_subset(universe) && FactorSet(*m).is_closed())
            .collect();
        masks.sort_by_key(|m| m.count_ones());
        for m in masks {
            let s = FactorSet(m);
            if self.get(s) && !found.iter().any(|f| f.is_subset(s)) {
                found.push(s);
            }
        }
        found.sort_by(FactorSet::plan_order);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        for f in Factor::ALL {
            assert_eq!(f.name().parse::<Factor>(), Ok(f));
        }
        let mut names: Vec<_> = Factor::ALL.iter().map(|f| f.name()).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted, "declaration order must be name order");
        names.reverse();
        let set = FactorSet::parse_names(&names).unwrap();
        assert_eq!(set, FactorSet::ALL);
        assert_eq!(set.names(), sorted);
    }

    #[test]
    fn unknown_factor_is_named() {
        let err = FactorSet::parse_names(["password", "fingerprint"]).unwrap_err();
        assert_eq!(err, UnknownFactor("fingerprint".into()));
        assert!(err.to_string().contains("'fingerprint'"));
    }

    #[test]
    fn mynumber_card_implies_card() {
        let s = FactorSet::parse_names(["mynumber_card", "password"]).unwrap();
        assert!(!s.is_closed());
        assert_eq!(s.closed().names(), ["card", "mynumber_card", "password"]);
        assert_eq!(s.closed().presented_count(), 2);
    }

    #[test]
    fn capabilities_decide_capturable() {
        let caps = Capabilities::parse_names(["card", "password"]).unwrap();
        let c = FactorSet::capturable_with(caps);
        assert!(c.contains(Factor::Card) && c.contains(Factor::MynumberCard));
        assert!(!c.contains(Factor::Face) && !c.contains(Factor::Vein));
        assert!(c.contains(Factor::Totp));
        assert_eq!(
            Capabilities::parse_names(["scanner"]),
            Err(UnknownCapability("scanner".into()))
        );
    }

    #[test]
    fn minimal_sets_of_a_table() {
        let card = FactorTable::has(Factor::Card);
        let pw = FactorTable::has(Factor::Password);
        let face = FactorTable::has(Factor::Face);
        let t = card.and(pw).or(face.and(pw));
        let mins = t.minimal_sets(FactorSet::ALL);
        let names: Vec<_> = mins.iter().map(|s| s.names()).collect();
        assert_eq!(
            names,
            vec![vec!["card", "password"], vec!["face", "password"]]
        );
        // Restricted universe.
        let no_card = FactorSet::ALL
            .without(Factor::Card)
            .without(Factor::MynumberCard);
        assert_eq!(t.minimal_sets(no_card).len(), 1);
        // Plan order: size first, then names.
        let t2 = FactorTable::has(Factor::Totp).or(card.and(pw));
        let names: Vec<_> = t2
            .minimal_sets(FactorSet::ALL)
            .iter()
            .map(|s| s.names())
            .collect();
        assert_eq!(names, vec![vec!["totp"], vec!["card", "password"]]);
    }
}
