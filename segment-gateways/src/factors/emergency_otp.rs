//! The `emergency_otp` factor: a one-time code an administrator issues to a person who
//! forgot or lost their card (DESIGN §1). Single use, with an expiry.
//!
//! The code is read aloud or over the phone and typed by staff with little patience for
//! look-alikes, so its alphabet leaves out `0 O 1 I L` (and `U`, as Crockford's base 32
//! does): 30 symbols, 12 of them, shown as `XXXX-XXXX-XXXX` — about 58.9 bits.

use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Failure;

/// The 30 symbols: digits 2–9 and letters without I, L, O, U.
pub const ALPHABET: &[u8; 30] = b"23456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols in a code (without separators).
pub const CODE_LEN: usize = 12;
const GROUP_LEN: usize = 4;

/// A freshly issued code. `code` is shown once to the administrator and never stored;
/// `hash` is what the store keeps.
#[derive(Clone)]
pub struct IssuedCode {
    /// `XXXX-XXXX-XXXX`.
    pub code: String,
    /// Lowercase hex SHA-256 of the normalised code (see [`hash_code`]).
    pub hash: String,
}

impl std::fmt::Debug for IssuedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCode")
            .field("code", &"<redacted>")
            .field("hash", &self.hash)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtpError {
    #[error("the system random number generator failed")]
    Rng,
}

/// Draws a new code from the system CSPRNG, uniformly over the alphabet (bytes of 240 or
/// more are redrawn, so `byte % 30` has no bias).
pub fn issue() -> Result<IssuedCode, OtpError> {
    let rng = SystemRandom::new();
    let mut symbols = String::with_capacity(CODE_LEN);
    let mut buf = [0u8; 32];
    while symbols.len() < CODE_LEN {
        rng.fill(&mut buf).map_err(|_| OtpError::Rng)?;
        for &b in buf.iter() {
            if symbols.len() == CODE_LEN {
                break;
            }
            // 240 = 8 × 30: the largest multiple of 30 that fits in a byte.
            if b < 240 {
                symbols.push(char::from(ALPHABET[usize::from(b % 30)]));
            }
        }
    }
    let hash = hash_code(&symbols);
    let code = symbols
        .as_bytes()
        .chunks(GROUP_LEN)
        .map(|g| String::from_utf8_lossy(g).into_owned())
        .collect::<Vec<_>>()
        .join("-");
    Ok(IssuedCode { code, hash })
}

/// The canonical form of what a person typed: uppercase, without `-` and whitespace.
/// `None` when a character is outside the alphabet or the length is not 12: look-alikes
/// (`O`, `I`…) are refused rather than guessed, since a guess could turn a typo into a
/// different valid-looking code.
pub fn normalize(input: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_LEN);
    for c in input.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let c = c.to_ascii_uppercase();
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        if out.len() == CODE_LEN {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_LEN).then_some(out)
}

/// Lowercase hex SHA-256 of a normalised code.
///
/// A fast hash is sound here, unlike for passwords: the code is 58.9 bits of CSPRNG
/// output, not something a person chose, so there is no dictionary to try and a
/// brute force of the hash costs ~2^58 SHA-256 runs — for a code that expires in hours.
pub fn hash_code(normalized: &str) -> String {
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

/// What the store holds for a user's active emergency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredOtp<'a> {
    /// Hex SHA-256 of the normalised code, as made by [`issue`].
    pub hash: &'a str,
    /// The code is refused from this instant on (Unix seconds).
    pub expires_at_unix: i64,
    /// Already accepted once.
    pub used: bool,
}

/// Checks a typed code against the stored one.
///
/// Absent, wrong and unreadable input are all [`Failure::Mismatch`], so a response does
/// not tell whether the user has a code at all. Only the holder of the right code learns
/// that it was already used ([`Failure::Replayed`], checked first: it is the more
/// important fact for the audit trail) or has expired ([`Failure::Expired`]). The hash
/// comparison is constant-time. Marking the code used is the caller's job, atomically
/// with accepting it: the logon does it when its allow commits
/// ([`crate::effects::Effect::UseEmergencyOtp`]), so a code presented in an attempt
/// that fails stays usable.
pub fn verify(code: &str, stored: Option<StoredOtp<'_>>, now_unix: i64) -> Result<(), Failure> {
    let Some(normalized) = normalize(code) else {
        return Err(Failure::Mismatch);
    };
    let presented = Sha256::digest(normalized.as_bytes());
    let Some(stored) = stored else {
        // Same work as a real comparison, against a value no code hashes to.
        let _ = presented.as_slice().ct_eq(&[0u8; 32]);
        return Err(Failure::Mismatch);
    };
    let expected = match hex::decode(stored.hash) {
        Ok(bytes) if bytes.len() == 32 => bytes,
        _ => {
            tracing::error!("emergency_otp: stored code hash is not 32 bytes of hex");
            return Err(Failure::Mismatch);
        }
    };
    if !bool::from(presented.as_slice().ct_eq(&expected)) {
        return Err(Failure::Mismatch);
    }
    if stored.used {
        return Err(Failure::Replayed);
    }
    if now_unix >= stored.expires_at_unix {
        return Err(Failure::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn stored(hash: &str) -> StoredOtp<'_> {
        StoredOtp {
            hash,
            expires_at_unix: NOW + 3600,
            used: false,
        }
    }

    #[test]
    fn issued_codes_have_the_shape_and_alphabet() {
        let issued = issue().unwrap();
        assert_eq!(issued.code.len(), 14);
        let groups: Vec<&str> = issued.code.split('-').collect();
        assert_eq!(groups.len(), 3);
        assert!(groups.iter().all(|g| g.len() == 4));
        assert!(issued
            .code
            .bytes()
            .all(|b| b == b'-' || ALPHABET.contains(&b)));
        let normalized = normalize(&issued.code).unwrap();
        assert_eq!(issued.hash, hash_code(&normalized));
        assert_ne!(issue().unwrap().code, issued.code);
    }

    #[test]
    fn alphabet_has_no_look_alikes_and_enough_entropy() {
        for c in b"01OIL" {
            assert!(!ALPHABET.contains(c));
        }
        let mut sorted = ALPHABET.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 30);
        let bits = (CODE_LEN as f64) * 30f64.log2();
        assert!(bits >= 58.0, "{bits}");
    }

    #[test]
    fn normalize_accepts_typing_variants_and_refuses_look_alikes() {
        assert_eq!(
            normalize(" abcd-efgh-jkmn ").as_deref(),
            Some("ABCDEFGHJKMN")
        );
        assert_eq!(normalize("ABCD EFGH JKMN").as_deref(), Some("ABCDEFGHJKMN"));
        assert_eq!(normalize("ABCDEFGHJKMN").as_deref(), Some("ABCDEFGHJKMN"));
        assert_eq!(normalize("ABCD-EFGH-JKM0"), None);
        assert_eq!(normalize("ABCD-EFGH-JKMO"), None);
        assert_eq!(normalize("ABCD-EFGH-JKM"), None);
        assert_eq!(normalize("ABCD-EFGH-JKMNP"), None);
        assert_eq!(normalize("ＡBCD-EFGH-JKMN"), None);
        assert_eq!(normalize(""), None);
    }

    #[test]
    fn verify_outcomes() {
        let issued = issue().unwrap();
        let typed = issued.code.to_lowercase().replace('-', " ");
        assert_eq!(verify(&typed, Some(stored(&issued.hash)), NOW), Ok(()));

        let other = issue().unwrap();
        assert_eq!(
            verify(&other.code, Some(stored(&issued.hash)), NOW),
            Err(Failure::Mismatch)
        );
        assert_eq!(verify(&issued.code, None, NOW), Err(Failure::Mismatch));
        assert_eq!(
            verify("not a code", Some(stored(&issued.hash)), NOW),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            verify(&issued.code, Some(stored("zz")), NOW),
            Err(Failure::Mismatch)
        );

        let used = StoredOtp {
            used: true,
            ..stored(&issued.hash)
        };
        assert_eq!(
            verify(&issued.code, Some(used), NOW),
            Err(Failure::Replayed)
        );
        // Only the right code learns it was used.
        assert_eq!(verify(&other.code, Some(used), NOW), Err(Failure::Mismatch));

        let s = stored(&issued.hash);
        assert_eq!(
            verify(&issued.code, Some(s), s.expires_at_unix),
            Err(Failure::Expired)
        );
        assert_eq!(verify(&issued.code, Some(s), s.expires_at_unix - 1), Ok(()));
        let used_and_expired = StoredOtp { used: true, ..s };
        assert_eq!(
            verify(&issued.code, Some(used_and_expired), NOW + 7200),
            Err(Failure::Replayed)
        );
    }

    #[test]
    fn stored_hash_in_uppercase_hex_still_matches() {
        let issued = issue().unwrap();
        let upper = issued.hash.to_uppercase();
        assert_eq!(verify(&issued.code, Some(stored(&upper)), NOW), Ok(()));
    }

    #[test]
    fn debug_redacts_the_code() {
        let issued = issue().unwrap();
        let shown = format!("{issued:?}");
        assert!(!shown.contains(&issued.code), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
