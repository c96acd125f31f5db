//! The closed vocabularies of DESIGN.md §1 and §3: tiers, device kinds, actions and
//! the ways a session arrives. Parsing them once at the edge means the engine never
//! meets a misspelt tier in the middle of a decision.

use std::fmt;
use std::str::FromStr;

/// A value outside one of the closed vocabularies, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}' (expected one of: {})", expected.join(", "))]
pub struct UnknownName {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        what: $what,
                        value: s.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

vocabulary!(
    /// A network tier (`Sekisho::Tier`).
    Tier, "tier", {
        Mynumber => "mynumber",
        Lgwan => "lgwan",
        Internet => "internet",
        Telework => "telework",
    }
);

vocabulary!(
    /// `Device.kind`.
    DeviceKind, "device kind", {
        Desktop => "desktop",
        Shared => "shared",
        Mobile => "mobile",
        Telework => "telework",
        Vdi => "vdi",
    }
);

vocabulary!(
    /// A Cedar action (`Sekisho::Action`).
    Action, "action", {
        Logon => "logon",
        Unlock => "unlock",
        SwitchOperator => "switch_operator",
        Presence => "presence",
        Elevate => "elevate",
    }
);

vocabulary!(
    /// How a session reached the device (`context.via`).
    Via, "via", {
        Console => "console",
        Rdp => "rdp",
        LgwanTelework => "lgwan_telework",
    }
);

impl Tier {
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl Action {
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Cedar entity type names, as written in policies and entity files.
pub mod cedar_types {
    pub const USER: &str = "Sekisho::User";
    pub const GROUP: &str = "Sekisho::Group";
    pub const DEVICE: &str = "Sekisho::Device";
    pub const TIER: &str = "Sekisho::Tier";
    pub const ACTION: &str = "Sekisho::Action";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        for a in Action::ALL {
            assert_eq!(a.name().parse::<Action>(), Ok(*a));
        }
        let err = "login".parse::<Action>().unwrap_err();
        assert_eq!(err.value, "login");
        assert_eq!(
            err.to_string(),
            "unknown action 'login' (expected one of: logon, unlock, switch_operator, presence, elevate)"
        );
        assert_eq!("lgwan".parse::<Tier>(), Ok(Tier::Lgwan));
        assert_eq!(Via::LgwanTelework.name(), "lgwan_telework");
    }
}
