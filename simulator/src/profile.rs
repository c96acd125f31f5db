//! City sizes, after the case studies in DESIGN.md §1 (350 to 4,700 staff, up to
//! 1,700 terminals) and one larger designated city.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A town: about 400 staff. The test suite's day.
    Small,
    /// A mid-sized city: about 4,700 staff.
    City,
    /// A designated city's ward offices: about 15,000 staff.
    Large,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Small, Profile::City, Profile::Large];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Small => "small",
            Profile::City => "city",
            Profile::Large => "large",
        }
    }

    /// Staff on the payroll (everyone gets an account).
    pub fn staff(self) -> usize {
        match self {
            Profile::Small => 400,
            Profile::City => 4_700,
            Profile::Large => 15_000,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown profile '{0}' (expected small, city or large)")]
pub struct UnknownProfile(pub String);

impl FromStr for Profile {
    type Err = UnknownProfile;
    fn from_str(s: &str) -> Result<Self, UnknownProfile> {
        Profile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProfile(s.to_string()))
    }
}
