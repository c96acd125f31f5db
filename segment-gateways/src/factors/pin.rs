//! The `pin` factor: a short numeric secret, stored as an Argon2id hash.
//!
//! A PIN is the low-entropy secret of the set, so its safety rests on the Argon2id cost,
//! on lockout (elsewhere) and on refusing the PINs everyone tries first.

use super::Failure;
use crate::hashing::{Refreshed, SecretHasher};

/// Longest PIN accepted at verification. New PINs are held to [`MAX_NEW_PIN_LEN`]; this
/// looser bound only stops oversized input before it reaches Argon2.
pub const MAX_PIN_LEN: usize = 64;
pub const MIN_NEW_PIN_LEN: usize = 4;
pub const MAX_NEW_PIN_LEN: usize = 16;

/// Checks a presented PIN against the stored hash.
///
/// Wrong PIN and no stored PIN are both [`Failure::Mismatch`], after the same Argon2id
/// work. An empty or oversized PIN is [`Failure::Malformed`]: that says nothing about
/// the user. A stored hash that cannot be used is [`Failure::Unavailable`] (logged): the
/// credential store needs repair, and the person should not be told their PIN is wrong.
///
/// A correct PIN whose stored hash was made with other Argon2id parameters comes
/// back with the hash to store instead ([`SecretHasher::refresh`]).
///
/// This spends tens of milliseconds of CPU: call it from `spawn_blocking` in async code.
pub fn verify(
    hasher: &SecretHasher,
    pin: &str,
    stored: Option<&str>,
) -> Result<Option<Refreshed>, Failure> {
    if pin.is_empty() || pin.chars().count() > MAX_PIN_LEN {
        return Err(Failure::Malformed);
    }
    match hasher.verify(pin, stored) {
        Ok(true) => Ok(stored.and_then(|s| hasher.refresh(pin, s))),
        Ok(false) => Err(Failure::Mismatch),
        Err(e) => {
            tracing::error!(error = %e, "pin: stored PIN hash is unusable");
            Err(Failure::Unavailable)
        }
    }
}

/// Why a new PIN is refused. Messages name the rule so an administrator or user can fix
/// the PIN without guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinPolicyError {
    #[error("a PIN must be at least {MIN_NEW_PIN_LEN} digits (got {0})")]
    TooShort(usize),
    #[error("a PIN must be at most {MAX_NEW_PIN_LEN} digits (got {0})")]
    TooLong(usize),
    #[error("a PIN must contain only the digits 0-9")]
    NotDigits,
    #[error("a PIN must not be one repeated digit or a run such as 1234 or 9876")]
    Trivial,
}

/// The policy for setting a PIN: 4–16 ASCII digits, not a single repeated digit and not
/// an ascending or descending run (the PINs tried first against any lock).
pub fn check_new_pin(pin: &str) -> Result<(), PinPolicyError> {
    let len = pin.chars().count();
    if !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PinPolicyError::NotDigits);
    }
    if len < MIN_NEW_PIN_LEN {
        return Err(PinPolicyError::TooShort(len));
    }
    if len > MAX_NEW_PIN_LEN {
        return Err(PinPolicyError::TooLong(len));
    }
    let digits: Vec<i16> = pin.bytes().map(|b| i16::from(b - b'0')).collect();
    let steps: Vec<i16> = digits.windows(2).map(|w| w[1] - w[0]).collect();
    let constant_step = steps.windows(2).all(|w| w[0] == w[1]);
    if constant_step && steps.first().is_some_and(|s| (-1..=1).contains(s)) {
        return Err(PinPolicyError::Trivial);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::Argon2Params;

    #[test]
    fn right_wrong_and_absent() {
        let hasher = SecretHasher::new(Argon2Params::default()).unwrap();
        let stored = hasher.hash("4826").unwrap();
        assert_eq!(verify(&hasher, "4826", Some(&stored)), Ok(None));
        assert_eq!(
            verify(&hasher, "4827", Some(&stored)),
            Err(Failure::Mismatch)
        );
        assert_eq!(verify(&hasher, "4826", None), Err(Failure::Mismatch));
        assert_eq!(
            verify(&hasher, "4826", Some("garbage")),
            Err(Failure::Unavailable)
        );
    }

    #[test]
    fn empty_or_oversized_is_malformed() {
        let hasher = SecretHasher::new(Argon2Params::default()).unwrap();
        assert_eq!(verify(&hasher, "", None), Err(Failure::Malformed));
        let long = "1".repeat(MAX_PIN_LEN + 1);
        assert_eq!(verify(&hasher, &long, None), Err(Failure::Malformed));
        // At the bound it is an ordinary (wrong) PIN.
        let edge = "1".repeat(MAX_PIN_LEN);
        assert_eq!(verify(&hasher, &edge, None), Err(Failure::Mismatch));
    }

    #[test]
    fn new_pin_policy() {
        for ok in ["4826", "0392", "1357", "2468", "9753", "1234567890123457"] {
            assert_eq!(check_new_pin(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_new_pin("482"), Err(PinPolicyError::TooShort(3)));
        assert_eq!(check_new_pin(""), Err(PinPolicyError::TooShort(0)));
        assert_eq!(
            check_new_pin("48264826482648264"),
            Err(PinPolicyError::TooLong(17))
        );
        for bad in ["48a6", "４８２６", "4826 ", "-482"] {
            assert_eq!(check_new_pin(bad), Err(PinPolicyError::NotDigits), "{bad}");
        }
        for trivial in ["0000", "1111", "1234", "6789", "9876", "3210", "123456789"] {
            assert_eq!(
                check_new_pin(trivial),
                Err(PinPolicyError::Trivial),
                "{trivial}"
            );
        }
        let msg = PinPolicyError::TooShort(3).to_string();
        assert!(msg.contains('4') && msg.contains('3'), "{msg}");
    }
}
