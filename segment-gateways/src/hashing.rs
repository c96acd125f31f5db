//! Argon2id hashing of low-entropy secrets a person types: PINs and the passwords of
//! standalone tiers (no directory). DESIGN §4 "Credentials at rest".
//!
//! Argon2id because these secrets are guessable: a stolen credential store must cost an
//! attacker memory-hard work per guess. Stored hashes are PHC strings
//! (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), so each carries its own parameters and
//! raising the parameters later does not invalidate existing hashes; each is made
//! anew at the configured cost on its next correct entry ([`SecretHasher::refresh`]).

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Lowest accepted memory cost: OWASP's weakest recommended Argon2id line (7 MiB, t=5).
const MIN_MEMORY_KIB: u32 = 7 * 1024;
/// Highest accepted memory cost. A gateway verifies many logons at once; more than
/// 1 GiB per verification is a typo, and a stored hash asking for more is refused so a
/// corrupted row cannot make the gateway allocate without bound.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// OWASP's recommended lines trade memory for passes at about equal cost
/// (19 MiB × 2, 12 MiB × 3, 9 MiB × 4, 7 MiB × 5); below this product is weaker than all.
const MIN_MEMORY_TIMES_ITERATIONS: u64 = 7 * 1024 * 5;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;
const SALT_LEN: usize = 16;

/// Argon2id cost parameters (`[argon2]` in the gateway configuration).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Params {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes; 1 keeps one logon on one core, so concurrent logons scale across cores.
    pub parallelism: u32,
    /// Lets [`Argon2Params::validate`] accept parameters below OWASP's floor. Only
    /// `sekisho demo` sets it, for its throwaway in-process gateways, so that a
    /// simulated city day on two cores measures the system rather than Argon2; it
    /// cannot come from a configuration file (`serde(skip)`), so no deployed gateway
    /// can be weakened by a config line.
    #[serde(skip)]
    pub demo_only_weak: bool,
}

impl Default for Argon2Params {
    /// OWASP Password Storage Cheat Sheet: m = 19 MiB, t = 2, p = 1.
    fn default() -> Self {
        Argon2Params {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            demo_only_weak: false,
        }
    }
}

impl Argon2Params {
    /// Refuses parameters weaker than OWASP's recommendations or absurdly expensive
    /// ones, naming the field, so a configuration mistake fails at startup.
    pub fn validate(&self) -> Result<(), HashError> {
        let err = |msg: String| Err(HashError::Params(msg));
        if self.parallelism == 0 || self.parallelism > MAX_PARALLELISM {
            return err(format!(
                "argon2.parallelism = {} must be between 1 and {MAX_PARALLELISM}",
                self.parallelism
            ));
        }
        if self.iterations == 0 || self.iterations > MAX_ITERATIONS {
            return err(format!(
                "argon2.iterations = {} must be between 1 and {MAX_ITERATIONS}",
                self.iterations
            ));
        }
        if self.demo_only_weak {
            // Still a valid Argon2id hash (argon2 needs at least 8 KiB per lane).
            if self.memory_kib < 8 * self.parallelism || self.memory_kib > MAX_MEMORY_KIB {
                return err(format!(
                    "argon2.memory_kib = {} must be between {} and {MAX_MEMORY_KIB}",
                    self.memory_kib,
                    8 * self.parallelism
                ));
            }
            return Ok(());
        }
        if self.memory_kib < MIN_MEMORY_KIB || self.memory_kib > MAX_MEMORY_KIB {
            return err(format!(
                "argon2.memory_kib = {} must be between {MIN_MEMORY_KIB} and {MAX_MEMORY_KIB}",
                self.memory_kib
            ));
        }
        if u64::from(self.memory_kib) * u64::from(self.iterations) < MIN_MEMORY_TIMES_ITERATIONS {
            return err(format!(
                "argon2.memory_kib × argon2.iterations = {} × {} is weaker than OWASP's \
                 recommendations (at least {MIN_MEMORY_TIMES_ITERATIONS}, e.g. 19456 × 2)",
                self.memory_kib, self.iterations
            ));
        }
        Ok(())
    }

    fn to_argon2(&self) -> Result<Params, HashError> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| HashError::Params(format!("argon2: {e}")))
    }
}

/// Why hashing or verifying could not be done (never "wrong secret": that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("invalid Argon2 parameters: {0}")]
    Params(String),
    #[error("the system random number generator failed")]
    Rng,
    #[error("Argon2 hashing failed: {0}")]
    Hash(String),
    /// The stored value is not an Argon2id PHC string this gateway accepts (corrupt row,
    /// another algorithm, parameters beyond the limits): a credential store problem.
    #[error("stored credential hash is not a usable Argon2id PHC string: {0}")]
    Stored(&'static str),
}

/// A stored hash to replace: `old` as read, `new` made from the same secret with
/// the configured parameters. Replaced only where the store still holds `old`, so a
/// secret set anew meanwhile is not overwritten.
#[derive(Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub old: String,
    pub new: String,
}

/// Hashes stay out of logs, like the secrets they were made from.
impl std::fmt::Debug for Refreshed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refreshed { .. }")
    }
}

/// Hashes and verifies secrets with one set of Argon2id parameters.
///
/// Cloning is cheap (parameters and one short string), so callers can move a clone into
/// `spawn_blocking`: one verification takes tens of milliseconds of CPU.
#[derive(Clone)]
pub struct SecretHasher {
    params: Argon2Params,
    argon2: Argon2<'static>,
    /// A hash of a random secret nobody knows, made with the configured parameters.
    /// Verifying against it when there is no stored hash costs the same as a real
    /// verification, so response time does not tell whether a user has a credential.
    dummy: String,
}

impl std::fmt::Debug for SecretHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHasher")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl SecretHasher {
    /// Validates the parameters and computes the dummy hash (one Argon2id run).
    pub fn new(params: Argon2Params) -> Result<SecretHasher, HashError> {
        params.validate()?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.to_argon2()?);
        let mut hasher = SecretHasher {
            params,
            argon2,
            dummy: String::new(),
        };
        let mut unknown = [0u8; 32];
        SystemRandom::new()
            .fill(&mut unknown)
            .map_err(|_| HashError::Rng)?;
        hasher.dummy = hasher.hash(&hex::encode(unknown))?;
        Ok(hasher)
    }

    pub fn params(&self) -> &Argon2Params {
        &self.params
    }

    /// A PHC string for `secret` with a fresh random 16-byte salt.
    pub fn hash(&self, secret: &str) -> Result<String, HashError> {
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| HashError::Rng)?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Hash(e.to_string()))?;
        let hash = self
            .argon2
            .hash_password(secret.as_bytes(), &salt)
            .map_err(|e| HashError::Hash(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// Whether `secret` matches the stored PHC string. `None` (no such user or no such
    /// credential) does the same work against the dummy hash and answers `false`.
    /// A stored value that cannot be used is `Err(HashError::Stored)`, after the same
    /// work, so that a store problem is reported instead of passing for a wrong secret.
    pub fn verify(&self, secret: &str, phc: Option<&str>) -> Result<bool, HashError> {
        match phc {
            None => {
                // The result is irrelevant: nobody knows the dummy's secret.
                let _ = self.verify_phc(secret, &self.dummy);
                Ok(false)
            }
            Some(phc) => match self.verify_phc(secret, phc) {
                Ok(matched) => Ok(matched),
                Err(e) => {
                    let _ = self.verify_phc(secret, &self.dummy);
                    Err(e)
                }
            },
        }
    }

    /// `stored` hashed again from `secret`, which has just matched it, when it was
    /// made with other parameters than this hasher's. An unknown user is checked
    /// against a dummy hash made with the configured parameters; a stored hash left
    /// at the old cost after `[argon2]` changed would take another time to check,
    /// and the time would tell who has a credential. The first correct entry after
    /// the change brings each hash to the configured cost. `None` also when hashing
    /// fails: the old hash still works, and the next entry tries again.
    pub fn refresh(&self, secret: &str, stored: &str) -> Option<Refreshed> {
        let parsed = PasswordHash::new(stored).ok()?;
        let params = Params::try_from(&parsed).ok()?;
        let current = (
            self.params.memory_kib,
            self.params.iterations,
            self.params.parallelism,
        );
        if (params.m_cost(), params.t_cost(), params.p_cost()) == current {
            return None;
        }
        let new = self.hash(secret).ok()?;
        Some(Refreshed {
            old: stored.to_string(),
            new,
        })
    }

    fn verify_phc(&self, secret: &str, phc: &str) -> Result<bool, HashError> {
        let parsed = PasswordHash::new(phc).map_err(|_| HashError::Stored("not a PHC string"))?;
        if parsed.algorithm != argon2::ARGON2ID_IDENT {
            return Err(HashError::Stored("not argon2id"));
        }
        if parsed
            .version
            .is_some_and(|v| v != u32::from(Version::V0x13))
        {
            return Err(HashError::Stored("unsupported argon2 version"));
        }
        let params =
            Params::try_from(&parsed).map_err(|_| HashError::Stored("invalid parameters"))?;
        if params.m_cost() > MAX_MEMORY_KIB
            || params.t_cost() > MAX_ITERATIONS
            || params.p_cost() > MAX_PARALLELISM
        {
            return Err(HashError::Stored("parameters beyond the accepted limits"));
        }
        let salt = parsed.salt.ok_or(HashError::Stored("no salt"))?;
        let expected = parsed.hash.ok_or(HashError::Stored("no hash"))?;
        let mut salt_buf = [0u8; 64];
        let salt = salt
            .decode_b64(&mut salt_buf)
            .map_err(|_| HashError::Stored("salt is not base64"))?;
        let mut computed = vec![0u8; expected.len()];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(secret.as_bytes(), salt, &mut computed)
            .map_err(|e| HashError::Hash(e.to_string()))?;
        Ok(bool::from(computed.ct_eq(expected.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> SecretHasher {
        SecretHasher::new(Argon2Params::default()).unwrap()
    }

    #[test]
    fn round_trip_and_wrong_secret() {
        let h = hasher();
        let phc = h.hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(h.verify("correct horse", Some(&phc)).unwrap());
        assert!(!h.verify("correct horsE", Some(&phc)).unwrap());
        assert!(!h.verify("", Some(&phc)).unwrap());
        // Fresh salt every time.
        assert_ne!(phc, h.hash("correct horse").unwrap());
    }

    #[test]
    fn a_hash_made_with_other_parameters_is_refreshed_from_the_secret() {
        let old = SecretHasher::new(Argon2Params {
            memory_kib: 12 * 1024,
            iterations: 3,
            parallelism: 1,
            demo_only_weak: false,
        })
        .unwrap();
        let current = hasher();
        let stored = old.hash("1234").unwrap();
        let refreshed = current.refresh("1234", &stored).expect("other parameters");
        assert_eq!(refreshed.old, stored);
        assert!(
            refreshed.new.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            refreshed.new
        );
        assert!(current.verify("1234", Some(&refreshed.new)).unwrap());
        assert_eq!(
            current.refresh("1234", &refreshed.new),
            None,
            "already current"
        );
        assert_eq!(current.refresh("1234", "not a PHC string"), None);
        assert_eq!(format!("{refreshed:?}"), "Refreshed { .. }");
    }

    #[test]
    fn absent_hash_is_false_not_error() {
        let h = hasher();
        assert!(!h.verify("anything", None).unwrap());
    }

    #[test]
    fn hashes_made_with_other_accepted_params_still_verify() {
        let strong = SecretHasher::new(Argon2Params {
            memory_kib: 12 * 1024,
            iterations: 3,
            parallelism: 1,
            demo_only_weak: false,
        })
        .unwrap();
        let phc = strong.hash("1234").unwrap();
        assert!(hasher().verify("1234", Some(&phc)).unwrap());
    }

    #[test]
    fn unusable_stored_hashes_are_store_errors() {
        let h = hasher();
        let argon2i = "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHQxMjM0NTY$\
                       iekCn0Y3spW+sCcFanM2xBT63UP2sghkUoHLIUpWRS8";
        let huge = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQxMjM0NTY$\
                    iekCn0Y3spW+sCcFanM2xBT63UP2sghkUoHLIUpWRS8";
        for bad in [
            "",
            "plaintext",
            "$argon2id$v=19$m=19456,t=2,p=1",
            argon2i,
            huge,
        ] {
            assert!(
                matches!(h.verify("x", Some(bad)), Err(HashError::Stored(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn params_validation() {
        assert!(Argon2Params::default().validate().is_ok());
        let with = |memory_kib, iterations, parallelism| Argon2Params {
            memory_kib,
            iterations,
            parallelism,
            demo_only_weak: false,
        };
        let demo = Argon2Params {
            demo_only_weak: true,
            ..with(1024, 1, 1)
        };
        assert!(demo.validate().is_ok(), "the demo's own parameters");
        assert!(
            with(1024, 1, 1).validate().is_err(),
            "never without the flag"
        );
        for ok in [with(47104, 1, 1), with(9216, 4, 1), with(7168, 5, 2)] {
            assert!(ok.validate().is_ok(), "{ok:?}");
        }
        for bad in [
            with(19456, 0, 1),
            with(19456, 2, 0),
            with(19456, 2, 17),
            with(1024, 40, 1),
            with(19456, 1, 1),
            with(2 * 1024 * 1024, 2, 1),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.to_string().contains("argon2."), "{err}");
        }
        assert!(SecretHasher::new(with(8, 1, 1)).is_err());
    }

    #[test]
    fn params_deserialize_with_defaults_and_reject_unknown_fields() {
        let p: Argon2Params = serde_json::from_str(r#"{"iterations": 3}"#).unwrap();
        assert_eq!(p.memory_kib, 19456);
        assert_eq!(p.iterations, 3);
        assert!(serde_json::from_str::<Argon2Params>(r#"{"memory": 1}"#).is_err());
    }

    #[test]
    fn debug_does_not_show_the_dummy_hash() {
        let h = hasher();
        let shown = format!("{h:?}");
        assert!(!shown.contains("$argon2id"), "{shown}");
    }
}
