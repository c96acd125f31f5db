//! Factor verifiers: one module per factor, each a small function over the stored
//! credential and the presented proof, with no I/O of its own beyond what the factor
//! needs (the directory bind for `password`).
//!
//! Every verifier answers with a [`Failure`] that is safe to show the endpoint: the
//! absence of a credential is reported exactly like a wrong one, so that a response
//! never tells whether a user exists or what they enrolled.

pub mod biometric;
pub mod card;
pub mod emergency_otp;
pub mod password;
pub mod pin;
pub mod totp;

/// Why a presented factor was not accepted. The codes are stable identifiers: they
/// reach the endpoint, the audit trail and the message catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Failure {
    /// Wrong password, PIN or code; no such credential; biometric below threshold.
    #[error("mismatch")]
    Mismatch,
    /// A TOTP code or emergency OTP that was already accepted once.
    #[error("replayed")]
    Replayed,
    /// A TOTP code valid for a time step outside the accepted window (clock skew).
    #[error("outside_window")]
    OutsideWindow,
    /// An emergency OTP past its expiry.
    #[error("expired")]
    Expired,
    /// A card signature that does not verify over this challenge's nonce.
    #[error("bad_signature")]
    BadSignature,
    /// A card certificate outside its validity period.
    #[error("certificate_expired")]
    CertificateExpired,
    /// A card certificate that does not chain to the tier's configured CA.
    #[error("untrusted_certificate")]
    UntrustedCertificate,
    /// A card certificate whose serial is on the configured CRL.
    #[error("revoked")]
    Revoked,
    /// A card certificate that is not enrolled for this user (or no such user).
    #[error("card_not_enrolled")]
    CardNotEnrolled,
    /// A biometric capture whose device signature does not verify, or a device with
    /// no registered capture key.
    #[error("bad_device_signature")]
    BadDeviceSignature,
    /// A proof that cannot be read whoever it is for: a TOTP code that is not 6 or 8
    /// digits, a vector that is empty, too long, zero or not finite, bad DER. Judged
    /// by the same rule for every user, enrolled or not, so it tells nothing about
    /// the user.
    #[error("malformed")]
    Malformed,
    /// The factor could not be checked now: the directory unreachable, or a stored
    /// credential (hash, template) unusable. The gateway's fault, never counted
    /// towards lockout.
    #[error("unavailable")]
    Unavailable,
    /// A proof for a factor this challenge did not ask for (no nonce was issued).
    #[error("not_requested")]
    NotRequested,
}

impl Failure {
    pub const ALL: [Failure; 13] = [
        Failure::Mismatch,
        Failure::Replayed,
        Failure::OutsideWindow,
        Failure::Expired,
        Failure::BadSignature,
        Failure::CertificateExpired,
        Failure::UntrustedCertificate,
        Failure::Revoked,
        Failure::CardNotEnrolled,
        Failure::BadDeviceSignature,
        Failure::Malformed,
        Failure::Unavailable,
        Failure::NotRequested,
    ];

    /// The stable identifier (`mismatch`, `replayed`, …).
    pub fn code(self) -> &'static str {
        match self {
            Failure::Mismatch => "mismatch",
            Failure::Replayed => "replayed",
            Failure::OutsideWindow => "outside_window",
            Failure::Expired => "expired",
            Failure::BadSignature => "bad_signature",
            Failure::CertificateExpired => "certificate_expired",
            Failure::UntrustedCertificate => "untrusted_certificate",
            Failure::Revoked => "revoked",
            Failure::CardNotEnrolled => "card_not_enrolled",
            Failure::BadDeviceSignature => "bad_device_signature",
            Failure::Malformed => "malformed",
            Failure::Unavailable => "unavailable",
            Failure::NotRequested => "not_requested",
        }
    }

    pub fn from_code(code: &str) -> Option<Failure> {
        Failure::ALL.into_iter().find(|f| f.code() == code)
    }

    /// Whether this failure counts towards the user's lockout. Lockout exists to
    /// stop someone guessing, so only what the person presented counts; a factor
    /// the gateway could not check ([`Failure::Unavailable`]: the directory down, a
    /// stored hash or template that is unusable) is the gateway's fault, and
    /// counting it would lock a whole office out during an outage.
    pub fn counts_towards_lockout(self) -> bool {
        self != Failure::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_display() {
        for f in Failure::ALL {
            assert_eq!(Failure::from_code(f.code()), Some(f));
            assert_eq!(f.to_string(), f.code());
        }
    }

    #[test]
    fn only_what_the_person_presented_counts_towards_lockout() {
        for f in Failure::ALL {
            assert_eq!(f.counts_towards_lockout(), f != Failure::Unavailable, "{f}");
        }
    }
}
