//! Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP).
//!
//! The verifier accepts the current time step and one step either side, so a code
//! typed just as it rolls over still works. It also looks a little further out (±10
//! steps) only to tell the helpdesk "the phone clock is off" instead of a bare
//! mismatch; such codes are still refused.

use ring::hmac;
use serde::{Deserialize, Serialize};

use super::Failure;
use crate::crypto;

/// Steps either side of now that are accepted.
const ACCEPT_WINDOW: i64 = 1;
/// Steps either side of now that are recognised as clock skew (and refused).
const SKEW_WINDOW: i64 = 10;
/// The longest period we allow: a code must not stay valid for minutes on end.
const MAX_PERIOD_SECS: u64 = 300;

/// The HMAC behind the code. SHA-1 is what nearly every authenticator app defaults
/// to; HOTP's use of it is not affected by SHA-1's collision weakness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TotpAlgorithm {
    #[default]
    Sha1,
    Sha256,
}

impl TotpAlgorithm {
    /// The name used in `otpauth://` URIs.
    pub fn uri_name(self) -> &'static str {
        match self {
            TotpAlgorithm::Sha1 => "SHA1",
            TotpAlgorithm::Sha256 => "SHA256",
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            TotpAlgorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            TotpAlgorithm::Sha256 => hmac::HMAC_SHA256,
        }
    }

    /// RFC 4226 recommends a secret as long as the HMAC output.
    fn secret_len(self) -> usize {
        match self {
            TotpAlgorithm::Sha1 => 20,
            TotpAlgorithm::Sha256 => 32,
        }
    }
}

/// Why TOTP parameters were refused or a secret could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    #[error("totp digits must be 6 or 8, got {0}")]
    InvalidDigits(u32),
    #[error("totp period must be between 1 and {MAX_PERIOD_SECS} seconds, got {0}")]
    InvalidPeriod(u64),
    #[error("the system random number generator failed")]
    Random,
}

/// Validated TOTP parameters. The fields are private so that every value in use has
/// passed [`TotpParams::new`], including ones read back from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawTotpParams")]
pub struct TotpParams {
    algorithm: TotpAlgorithm,
    digits: u32,
    period_secs: u64,
}

#[derive(Deserialize)]
struct RawTotpParams {
    #[serde(default)]
    algorithm: TotpAlgorithm,
    digits: u32,
    period_secs: u64,
}

impl TryFrom<RawTotpParams> for TotpParams {
    type Error = TotpError;

    fn try_from(raw: RawTotpParams) -> Result<Self, TotpError> {
        TotpParams::new(raw.algorithm, raw.digits, raw.period_secs)
    }
}

impl Default for TotpParams {
    /// What authenticator apps assume when the URI says nothing: SHA-1, 6 digits, 30 s.
    fn default() -> Self {
        TotpParams {
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
            period_secs: 30,
        }
    }
}

impl TotpParams {
    pub fn new(algorithm: TotpAlgorithm, digits: u32, period_secs: u64) -> Result<Self, TotpError> {
        if digits != 6 && digits != 8 {
            return Err(TotpError::InvalidDigits(digits));
        }
        if period_secs == 0 || period_secs > MAX_PERIOD_SECS {
            return Err(TotpError::InvalidPeriod(period_secs));
        }
        Ok(TotpParams {
            algorithm,
            digits,
            period_secs,
        })
    }

    pub fn algorithm(&self) -> TotpAlgorithm {
        self.algorithm
    }

    pub fn digits(&self) -> u32 {
        self.digits
    }

    pub fn period_secs(&self) -> u64 {
        self.period_secs
    }
}

/// The code for time step `step` (RFC 4226 HOTP with dynamic truncation), zero-padded
/// to `params.digits()`.
pub fn code_at(secret: &[u8], params: &TotpParams, step: u64) -> String {
    let key = hmac::Key::new(params.algorithm.hmac(), secret);
    format!(
        "{:0width$}",
        hotp(&key, params, step),
        width = params.digits as usize
    )
}

/// HOTP's value for `step`, as a number below 10^digits.
fn hotp(key: &hmac::Key, params: &TotpParams, step: u64) -> u32 {
    let tag = hmac::sign(key, &step.to_be_bytes());
    let mac = tag.as_ref();
    // The last nibble picks 4 bytes; the MAC is at least 20 bytes, so offset+3 < len.
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    binary % 10u32.pow(params.digits)
}

/// Whether `code` has the shape of a TOTP code at all: 6 or 8 ASCII digits, the
/// lengths [`TotpParams`] allows.
///
/// This is the whole of "malformed", and it deliberately does not look at the
/// user's own parameters: a rule that did (an 8-digit code malformed for a 6-digit
/// enrollment) would answer differently for enrolled users than for users without
/// TOTP or unknown ones, and so tell them apart.
pub fn is_well_formed(code: &str) -> bool {
    matches!(code.len(), 6 | 8) && code.bytes().all(|b| b.is_ascii_digit())
}

/// Checks `code` against the time step of `now_unix` and returns the step it matched,
/// which the caller stores as the new `last_accepted_step` so the code cannot be used
/// twice.
///
/// A code that is not [well formed](is_well_formed) is [`Failure::Malformed`]; a
/// well-formed code of the other length than `params` asks for can only be wrong, and
/// is a [`Failure::Mismatch`] after the same work as any other wrong code.
///
/// The accepted window is computed and compared in constant time first, and a fresh
/// code in it is accepted at once. Anything else computes and compares every step
/// of the skew window before it names the failure, so a refusal takes the same time
/// whatever its reason (the caller learns acceptance from the answer anyway).
pub fn verify(
    secret: &[u8],
    params: &TotpParams,
    code: &str,
    now_unix: u64,
    last_accepted_step: Option<u64>,
) -> Result<u64, Failure> {
    if !is_well_formed(code) {
        return Err(Failure::Malformed);
    }
    // A code of the wrong length is compared as an impossible value (10^digits is
    // never an HOTP value), so it costs what a wrong code of the right length does.
    let length_ok = code.len() == params.digits as usize;
    // At most 8 digits, all ASCII digits: the number fits in a u32.
    let given = if length_ok {
        code.bytes().fold(0u32, |n, b| n * 10 + u32::from(b - b'0'))
    } else {
        10u32.pow(params.digits)
    }
    .to_be_bytes();
    let key = hmac::Key::new(params.algorithm.hmac(), secret);
    let now_step = now_unix / params.period_secs;
    let matching = |window: i64| -> Vec<(i64, u64)> {
        (-window..=window)
            .filter_map(|offset| now_step.checked_add_signed(offset).map(|s| (offset, s)))
            .filter_map(|(offset, step)| {
                let expected = hotp(&key, params, step).to_be_bytes();
                crypto::ct_eq(&expected, &given).then_some((offset, step))
            })
            .collect()
    };
    let replayed = |step: u64| last_accepted_step.is_some_and(|last| step <= last);

    // Prefer the step nearest to now among fresh matches in the accepted window.
    if let Some(&(_, step)) = matching(ACCEPT_WINDOW)
        .iter()
        .filter(|&&(_, step)| !replayed(step))
        .min_by_key(|&&(offset, _)| offset.abs())
    {
        return Ok(step);
    }
    let matches = matching(SKEW_WINDOW);
    if matches.iter().any(|&(_, step)| replayed(step)) {
        return Err(Failure::Replayed);
    }
    if !matches.is_empty() {
        return Err(Failure::OutsideWindow);
    }
    Err(Failure::Mismatch)
}

/// A fresh random secret as long as the HMAC output of `params`' algorithm.
pub fn new_secret(params: &TotpParams) -> Result<Vec<u8>, TotpError> {
    let bytes = crypto::random_bytes::<32>().map_err(|_| TotpError::Random)?;
    Ok(bytes[..params.algorithm.secret_len()].to_vec())
}

/// The secret as authenticator apps expect it to be typed: RFC 4648 base32, no padding.
pub fn secret_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://totp/...` URI that enrollment shows as a QR code. Issuer and account
/// are percent-encoded (the issuer is often Japanese, e.g. a municipality's name).
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8], params: &TotpParams) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm={alg}&digits={digits}&period={period}",
        account = percent_encode(account),
        secret = secret_base32(secret),
        alg = params.algorithm.uri_name(),
        digits = params.digits,
        period = params.period_secs,
    )
}

/// Percent-encodes everything except RFC 3986 unreserved characters, byte by byte
/// over UTF-8, so that `:`, `&`, `?` and non-ASCII text cannot break the URI.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_SEED: &[u8] = b"12345678901234567890";
    const SHA256_SEED: &[u8] = b"12345678901234567890123456789012";

    fn params(algorithm: TotpAlgorithm, digits: u32) -> TotpParams {
        TotpParams::new(algorithm, digits, 30).unwrap()
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        let p = params(TotpAlgorithm::Sha1, 8);
        for (time, code) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(code_at(SHA1_SEED, &p, time / 30), code, "t={time}");
            assert_eq!(verify(SHA1_SEED, &p, code, time, None), Ok(time / 30));
        }
    }

    #[test]
    fn rfc6238_sha256_vectors() {
        let p = params(TotpAlgorithm::Sha256, 8);
        for (time, code) in [
            (59, "46119246"),
            (1111111109, "68084774"),
            (1111111111, "67062674"),
            (1234567890, "91819424"),
            (2000000000, "90698825"),
            (20000000000, "77737706"),
        ] {
            assert_eq!(code_at(SHA256_SEED, &p, time / 30), code, "t={time}");
        }
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        let p = TotpParams::default();
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583",
            "399871", "520489",
        ];
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(code_at(SHA1_SEED, &p, counter as u64), *code);
        }
    }

    const NOW: u64 = 1_700_000_000;

    fn code_for_offset(offset: i64) -> String {
        let step = (NOW / 30).checked_add_signed(offset).unwrap();
        code_at(SHA1_SEED, &TotpParams::default(), step)
    }

    #[test]
    fn accepts_plus_minus_one() {
        let p = TotpParams::default();
        let now_step = NOW / 30;
        for offset in [-1, 0, 1] {
            let code = code_for_offset(offset);
            let expected = now_step.checked_add_signed(offset).unwrap();
            assert_eq!(verify(SHA1_SEED, &p, &code, NOW, None), Ok(expected));
            assert_eq!(
                verify(SHA1_SEED, &p, &code, NOW, Some(now_step - 5)),
                Ok(expected)
            );
        }
    }

    #[test]
    fn refuses_replay() {
        let p = TotpParams::default();
        let code = code_for_offset(0);
        let step = verify(SHA1_SEED, &p, &code, NOW, None).unwrap();
        assert_eq!(
            verify(SHA1_SEED, &p, &code, NOW, Some(step)),
            Err(Failure::Replayed)
        );
        // An older code after a newer one was accepted is a replay too.
        let previous = code_for_offset(-1);
        assert_eq!(
            verify(SHA1_SEED, &p, &previous, NOW, Some(step)),
            Err(Failure::Replayed)
        );
        // The next step's code is still fine.
        let next = code_for_offset(1);
        assert_eq!(verify(SHA1_SEED, &p, &next, NOW, Some(step)), Ok(step + 1));
    }

    #[test]
    fn skewed_codes_are_outside_window() {
        let p = TotpParams::default();
        for offset in (-10..=-2).chain(2..=10) {
            let code = code_for_offset(offset);
            // Guard against a chance collision with an accepted step.
            if (-1..=1).any(|o| code_for_offset(o) == code) {
                continue;
            }
            assert_eq!(
                verify(SHA1_SEED, &p, &code, NOW, None),
                Err(Failure::OutsideWindow),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn far_codes_mismatch() {
        let p = TotpParams::default();
        let near: Vec<String> = (-10..=10).map(code_for_offset).collect();
        for offset in [-1000, -11, 11, 5000] {
            let code = code_for_offset(offset);
            if near.contains(&code) {
                continue;
            }
            assert_eq!(
                verify(SHA1_SEED, &p, &code, NOW, None),
                Err(Failure::Mismatch)
            );
        }
        let wrong_secret = code_at(b"another secret......", &p, NOW / 30);
        if !near.contains(&wrong_secret) {
            assert_eq!(
                verify(SHA1_SEED, &p, &wrong_secret, NOW, None),
                Err(Failure::Mismatch)
            );
        }
    }

    #[test]
    fn malformed_codes() {
        let p = TotpParams::default();
        for code in [
            "",
            "12345",
            "1234567",
            "123456789",
            "12345a",
            " 123456",
            "１２３４５６",
            "12 456",
        ] {
            assert!(!is_well_formed(code), "{code:?}");
            for p in [p, params(TotpAlgorithm::Sha256, 8)] {
                assert_eq!(
                    verify(SHA1_SEED, &p, code, NOW, None),
                    Err(Failure::Malformed),
                    "{code:?}"
                );
            }
        }
    }

    #[test]
    fn a_well_formed_code_of_the_other_length_is_a_mismatch() {
        // The 8-digit code of this very step, against a 6-digit enrollment, and the
        // 6-digit one against an 8-digit enrollment: wrong, not malformed, so the
        // answer is the one a user without TOTP gets.
        let six = TotpParams::default();
        let eight = params(TotpAlgorithm::Sha1, 8);
        let code8 = code_at(SHA1_SEED, &eight, NOW / 30);
        let code6 = code_at(SHA1_SEED, &six, NOW / 30);
        assert!(is_well_formed(&code8) && is_well_formed(&code6));
        assert_eq!(
            verify(SHA1_SEED, &six, &code8, NOW, None),
            Err(Failure::Mismatch)
        );
        assert_eq!(
            verify(SHA1_SEED, &eight, &code6, NOW, None),
            Err(Failure::Mismatch)
        );
    }

    #[test]
    fn params_validation_and_serde() {
        assert_eq!(
            TotpParams::new(TotpAlgorithm::Sha1, 7, 30),
            Err(TotpError::InvalidDigits(7))
        );
        assert_eq!(
            TotpParams::new(TotpAlgorithm::Sha1, 6, 0),
            Err(TotpError::InvalidPeriod(0))
        );
        let p: TotpParams =
            serde_json::from_str(r#"{"algorithm":"sha256","digits":8,"period_secs":60}"#).unwrap();
        assert_eq!(p, TotpParams::new(TotpAlgorithm::Sha256, 8, 60).unwrap());
        assert_eq!(
            serde_json::to_string(&TotpParams::default()).unwrap(),
            r#"{"algorithm":"sha1","digits":6,"period_secs":30}"#
        );
        assert!(serde_json::from_str::<TotpParams>(r#"{"digits":9,"period_secs":30}"#).is_err());
    }

    #[test]
    fn secrets() {
        let sha1 = new_secret(&TotpParams::default()).unwrap();
        assert_eq!(sha1.len(), 20);
        let sha256 = new_secret(&params(TotpAlgorithm::Sha256, 6)).unwrap();
        assert_eq!(sha256.len(), 32);
        assert_eq!(secret_base32(SHA1_SEED), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(secret_base32(b"\x00"), "AA");
    }

    #[test]
    fn otpauth_uri_format() {
        let uri = otpauth_uri(
            "Sekisho",
            "alice@example.jp",
            SHA1_SEED,
            &TotpParams::default(),
        );
        assert_eq!(
            uri,
            "otpauth://totp/Sekisho:alice%40example.jp?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Sekisho&algorithm=SHA1&digits=6&period=30"
        );
        let uri = otpauth_uri(
            "関所市",
            "a:b&c",
            b"\x01",
            &params(TotpAlgorithm::Sha256, 8),
        );
        assert_eq!(
            uri,
            "otpauth://totp/%E9%96%A2%E6%89%80%E5%B8%82:a%3Ab%26c?secret=AE\
             &issuer=%E9%96%A2%E6%89%80%E5%B8%82&algorithm=SHA256&digits=8&period=30"
        );
    }
}
