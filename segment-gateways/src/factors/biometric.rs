//! Biometric factors (`face`, `vein`): a signed capture, then a template match.
//!
//! The capture device extracts a feature vector and signs it together with the
//! gateway's nonce under its own device key. Checking that signature first means a
//! replayed or synthesised vector is refused before any matching happens; the match
//! itself is cosine similarity against the user's enrolled templates.

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::Failure;

/// Domain separation: a capture signature can never be mistaken for a signature over
/// anything else the device key might sign.
const CAPTURE_CONTEXT: &[u8] = b"sekisho-capture-v1\0";

/// Which biometric a capture is for; part of the signed message so a face capture
/// cannot be presented as a vein capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BiometricFactor {
    Face,
    Vein,
}

impl BiometricFactor {
    /// The factor name used in policies, audit events and the signed message.
    pub fn name(self) -> &'static str {
        match self {
            BiometricFactor::Face => "face",
            BiometricFactor::Vein => "vein",
        }
    }
}

/// Why a device key could not be read, or a capture could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceKeyError {
    #[error("device key is not a PEM \"{0}\" block")]
    Pem(&'static str),
    #[error("device public key is not a valid SubjectPublicKeyInfo")]
    Der,
    #[error("device key algorithm {0} is not supported (use ECDSA P-256 or Ed25519)")]
    UnsupportedAlgorithm(String),
    #[error("device key curve {0} is not supported (use P-256)")]
    UnsupportedCurve(String),
    #[error("device public key has the wrong length for its algorithm")]
    BadPublicKey,
    #[error("device private key is neither an ECDSA P-256 nor an Ed25519 PKCS#8 key")]
    UnsupportedPrivateKey,
    #[error("signing the capture failed")]
    Sign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceKeyKind {
    EcdsaP256,
    Ed25519,
}

/// A capture device's registered public key. The SPKI DER is kept as registered, so
/// the database stores exactly what the administrator enrolled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    kind: DeviceKeyKind,
    public_key: Vec<u8>,
    spki_der: Vec<u8>,
}

impl DeviceKey {
    /// Parses a DER SubjectPublicKeyInfo, picking the algorithm from its OID.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, DeviceKeyError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| DeviceKeyError::Der)?;
        if !rest.is_empty() {
            return Err(DeviceKeyError::Der);
        }
        let oid = &spki.algorithm.algorithm;
        let public_key = spki.subject_public_key.data.to_vec();
        let kind = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or(DeviceKeyError::Der)?;
            if curve != OID_EC_P256 {
                return Err(DeviceKeyError::UnsupportedCurve(curve.to_id_string()));
            }
            // Uncompressed point: 0x04 || X || Y, what ring's verifier expects.
            if public_key.len() != 65 || public_key.first() != Some(&0x04) {
                return Err(DeviceKeyError::BadPublicKey);
            }
            DeviceKeyKind::EcdsaP256
        } else if *oid == OID_SIG_ED25519 {
            if public_key.len() != 32 {
                return Err(DeviceKeyError::BadPublicKey);
            }
            DeviceKeyKind::Ed25519
        } else {
            return Err(DeviceKeyError::UnsupportedAlgorithm(oid.to_id_string()));
        };
        Ok(DeviceKey {
            kind,
            public_key,
            spki_der: der.to_vec(),
        })
    }

    /// Parses a `-----BEGIN PUBLIC KEY-----` block, the form device vendors hand out.
    pub fn from_pem(pem: &str) -> Result<Self, DeviceKeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| DeviceKeyError::Pem("PUBLIC KEY"))?;
        Self::from_spki_der(der.as_ref())
    }

    /// The SPKI DER to store in the database.
    pub fn to_spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let algorithm: &dyn signature::VerificationAlgorithm = match self.kind {
            DeviceKeyKind::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            DeviceKeyKind::Ed25519 => &signature::ED25519,
        };
        UnparsedPublicKey::new(algorithm, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

/// The bytes a capture device signs: context, factor name, then the length-prefixed
/// nonce and vector (element count, then each `f32` little-endian). Length prefixes
/// make the encoding unambiguous; no real nonce or vector comes near `u32::MAX`
/// elements, and a length that did is saturated rather than panicking.
pub fn capture_message(factor: BiometricFactor, nonce: &[u8], vector: &[f32]) -> Vec<u8> {
    let name = factor.name().as_bytes();
    let mut msg =
        Vec::with_capacity(CAPTURE_CONTEXT.len() + name.len() + 9 + nonce.len() + 4 * vector.len());
    msg.extend_from_slice(CAPTURE_CONTEXT);
    msg.extend_from_slice(name);
    msg.push(0);
    msg.extend_from_slice(&len_u32(nonce.len()).to_be_bytes());
    msg.extend_from_slice(nonce);
    msg.extend_from_slice(&len_u32(vector.len()).to_be_bytes());
    for x in vector {
        msg.extend_from_slice(&x.to_le_bytes());
    }
    msg
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Checks the device's signature over this nonce and vector.
pub fn verify_capture(
    key: &DeviceKey,
    factor: BiometricFactor,
    nonce: &[u8],
    vector: &[f32],
    signature: &[u8],
) -> Result<(), Failure> {
    if key.verify(&capture_message(factor, nonce, vector), signature) {
        Ok(())
    } else {
        Err(Failure::BadDeviceSignature)
    }
}

/// Endpoint side (agent and tests): signs a capture with a PKCS#8 device key, ECDSA
/// P-256 (ASN.1 DER signature) or Ed25519, whichever the key is.
pub fn sign_capture(
    device_key_pkcs8_pem: &str,
    factor: BiometricFactor,
    nonce: &[u8],
    vector: &[f32],
) -> Result<Vec<u8>, DeviceKeyError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(device_key_pkcs8_pem.as_bytes())
        .map_err(|_| DeviceKeyError::Pem("PRIVATE KEY"))?;
    let der = der.secret_pkcs8_der();
    let message = capture_message(factor, nonce, vector);
    if let Ok(key) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return Ok(key.sign(&message).as_ref().to_vec());
    }
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
        .map_err(|_| DeviceKeyError::UnsupportedPrivateKey)?;
    let sig = key.sign(&rng, &message).map_err(|_| DeviceKeyError::Sign)?;
    Ok(sig.as_ref().to_vec())
}

/// Scales `v` to unit length in place. Templates are stored normalised so that they
/// compare consistently and a 1:N gallery scan can skip their norms; a vector that is
/// empty, zero or not finite cannot be a template.
pub fn normalize(v: &mut [f32]) -> Result<(), Failure> {
    let (_, norm_sq) = dot_and_norm_sq(v, v);
    if !norm_sq.is_finite() || norm_sq <= 0.0 {
        return Err(Failure::Malformed);
    }
    let inv = 1.0 / norm_sq.sqrt();
    for x in v.iter_mut() {
        *x *= inv;
    }
    Ok(())
}

/// Most elements a feature vector (probe or template) may have. Real extractors give
/// a few hundred; the bound keeps an absurd probe from costing work and is the same
/// for every user, so refusing one says nothing about anyone's enrollment.
pub const MAX_VECTOR_LEN: usize = 4096;

/// The best cosine similarity of `probe` against `templates`, if it reaches
/// `threshold`.
///
/// What the endpoint is told must not depend on whether the user has templates, so
/// the probe is judged on its own first: empty, longer than [`MAX_VECTOR_LEN`], zero
/// or not finite is [`Failure::Malformed`] for everyone. A well-formed probe is then
/// compared only with templates of its own length: one of another length comes from
/// another extractor and cannot be this person, so it is passed over, and a probe
/// that meets no template it can be compared with is a [`Failure::Mismatch`], the
/// answer for a user without templates too. (Judging a length difference malformed,
/// as before, said "this user has templates, of another size".)
///
/// A stored template that cannot be used (zero or not finite) is
/// [`Failure::Unavailable`] and logged: the store needs repair, and the person must
/// neither be told their face is wrong nor be counted towards lockout for it.
///
/// The template norm is computed in the same pass as the dot product rather than
/// assumed to be 1: it costs one multiply-add per element and means a template that
/// was stored un-normalised can never score above 1 and so pass too easily.
pub fn best_match(probe: &[f32], templates: &[Vec<f32>], threshold: f32) -> Result<f32, Failure> {
    if probe.is_empty() || probe.len() > MAX_VECTOR_LEN {
        return Err(Failure::Malformed);
    }
    let (_, probe_sq) = dot_and_norm_sq(probe, probe);
    // A NaN or infinity anywhere makes the sum of squares non-finite.
    if !probe_sq.is_finite() || probe_sq <= 0.0 {
        return Err(Failure::Malformed);
    }
    let probe_norm = probe_sq.sqrt();
    let mut best = f32::NEG_INFINITY;
    for template in templates.iter().filter(|t| t.len() == probe.len()) {
        let (dot, template_sq) = dot_and_norm_sq(probe, template);
        if !template_sq.is_finite() || template_sq <= 0.0 {
            tracing::error!("biometric: a stored template is zero or not finite");
            return Err(Failure::Unavailable);
        }
        // With both norms finite, |dot| is bounded (Cauchy–Schwarz); a score that is
        // not finite all the same is never taken for a match.
        let score = dot / (probe_norm * template_sq.sqrt());
        if score.is_finite() {
            best = best.max(score);
        }
    }
    if best >= threshold {
        Ok(best)
    } else {
        Err(Failure::Mismatch)
    }
}

/// `(a·b, b·b)` in one pass. Eight independent accumulators let the compiler keep
/// the loop in SIMD registers (float addition is not associative, so a single
/// accumulator would force a serial chain).
fn dot_and_norm_sq(a: &[f32], b: &[f32]) -> (f32, f32) {
    const LANES: usize = 8;
    let mut dot = [0.0f32; LANES];
    let mut norm = [0.0f32; LANES];
    let a_chunks = a.chunks_exact(LANES);
    let b_chunks = b.chunks_exact(LANES);
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for (((d, n), xi), yi) in dot.iter_mut().zip(norm.iter_mut()).zip(x).zip(y) {
            *d += xi * yi;
            *n += yi * yi;
        }
    }
    let mut d: f32 = dot.iter().sum();
    let mut n: f32 = norm.iter().sum();
    for (x, y) in a_rest.iter().zip(b_rest) {
        d += x * y;
        n += y * y;
    }
    (d, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{KeyPair, PublicKeyData};

    const NONCE: &[u8] = b"nonce-0123456789";

    /// A deterministic pseudo-random vector, different per seed.
    fn person(seed: u32, dim: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    }

    fn noisy(v: &[f32], amount: f32) -> Vec<f32> {
        v.iter()
            .zip(person(99, v.len()))
            .map(|(x, n)| x + amount * n)
            .collect()
    }

    fn keys() -> Vec<KeyPair> {
        vec![
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        ]
    }

    #[test]
    fn signed_capture_verifies_for_both_key_types() {
        for kp in keys() {
            let device = DeviceKey::from_spki_der(&kp.subject_public_key_info()).unwrap();
            assert_eq!(
                device.to_spki_der(),
                kp.subject_public_key_info().as_slice()
            );
            assert_eq!(DeviceKey::from_pem(&kp.public_key_pem()).unwrap(), device);
            let vector = person(1, 128);
            let sig =
                sign_capture(&kp.serialize_pem(), BiometricFactor::Face, NONCE, &vector).unwrap();
            assert_eq!(
                verify_capture(&device, BiometricFactor::Face, NONCE, &vector, &sig),
                Ok(())
            );
            // The same signature does not carry over to another factor, nonce or vector.
            for (factor, nonce, v) in [
                (BiometricFactor::Vein, NONCE, vector.clone()),
                (BiometricFactor::Face, &b"other nonce"[..], vector.clone()),
                (BiometricFactor::Face, NONCE, person(2, 128)),
            ] {
                assert_eq!(
                    verify_capture(&device, factor, nonce, &v, &sig),
                    Err(Failure::BadDeviceSignature)
                );
            }
        }
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let registered = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let device = DeviceKey::from_spki_der(&registered.subject_public_key_info()).unwrap();
        let vector = person(1, 64);
        for other in keys() {
            let sig = sign_capture(
                &other.serialize_pem(),
                BiometricFactor::Vein,
                NONCE,
                &vector,
            )
            .unwrap();
            assert_eq!(
                verify_capture(&device, BiometricFactor::Vein, NONCE, &vector, &sig),
                Err(Failure::BadDeviceSignature)
            );
        }
        assert_eq!(
            verify_capture(&device, BiometricFactor::Vein, NONCE, &vector, b""),
            Err(Failure::BadDeviceSignature)
        );
    }

    #[test]
    fn capture_message_layout() {
        let msg = capture_message(BiometricFactor::Vein, b"ab", &[1.0, -2.5]);
        let mut expected = b"sekisho-capture-v1\0vein\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 2]);
        expected.extend_from_slice(&1.0f32.to_le_bytes());
        expected.extend_from_slice(&(-2.5f32).to_le_bytes());
        assert_eq!(msg, expected);
    }

    #[test]
    fn unsupported_keys_are_named() {
        let rsa = KeyPair::from_pem(include_str!("../../tests/data/rsa2048.pk8.pem")).unwrap();
        assert_eq!(
            DeviceKey::from_spki_der(&rsa.subject_public_key_info()),
            Err(DeviceKeyError::UnsupportedAlgorithm(
                "1.2.840.113549.1.1.1".into()
            ))
        );
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert_eq!(
            DeviceKey::from_spki_der(&p384.subject_public_key_info()),
            Err(DeviceKeyError::UnsupportedCurve("1.3.132.0.34".into()))
        );
        assert_eq!(
            DeviceKey::from_spki_der(b"\x30\x03garbage"),
            Err(DeviceKeyError::Der)
        );
        assert!(DeviceKey::from_pem("not pem").is_err());
        assert_eq!(
            sign_capture(
                include_str!("../../tests/data/rsa2048.pk8.pem"),
                BiometricFactor::Face,
                NONCE,
                &[1.0]
            ),
            Err(DeviceKeyError::UnsupportedPrivateKey)
        );
    }

    #[test]
    fn same_person_matches_other_person_does_not() {
        let mut alice = person(1, 512);
        normalize(&mut alice).unwrap();
        let norm: f32 = alice.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let templates = vec![person(7, 512), alice];

        let probe = noisy(&person(1, 512), 0.1);
        let score = best_match(&probe, &templates, 0.9).unwrap();
        assert!(score > 0.95 && score <= 1.0001, "{score}");

        let bob = person(2, 512);
        assert_eq!(best_match(&bob, &templates, 0.9), Err(Failure::Mismatch));
        assert_eq!(best_match(&probe, &[], 0.9), Err(Failure::Mismatch));
    }

    #[test]
    fn unnormalised_template_scores_like_a_normalised_one() {
        let template = person(3, 100);
        let scaled: Vec<f32> = template.iter().map(|x| x * 50.0).collect();
        let probe = noisy(&template, 0.2);
        let a = best_match(&probe, &[template], -1.0).unwrap();
        let b = best_match(&probe, &[scaled], -1.0).unwrap();
        assert!((a - b).abs() < 1e-5);
    }

    #[test]
    fn malformed_vectors_are_malformed_with_or_without_templates() {
        let mut nan = person(1, 16);
        nan[3] = f32::NAN;
        let mut inf = person(1, 16);
        inf[15] = f32::INFINITY;
        let too_long = person(1, MAX_VECTOR_LEN + 1);
        let malformed: [&[f32]; 5] = [&nan, &inf, &[0.0; 16], &[], &too_long];
        for templates in [vec![person(1, 16)], Vec::new()] {
            for probe in malformed {
                assert_eq!(
                    best_match(probe, &templates, 0.5),
                    Err(Failure::Malformed),
                    "{} elements, {} templates",
                    probe.len(),
                    templates.len()
                );
            }
        }
        assert_eq!(normalize(&mut [0.0, 0.0]), Err(Failure::Malformed));
        assert_eq!(normalize(&mut nan), Err(Failure::Malformed));
    }

    #[test]
    fn a_probe_of_another_length_is_a_mismatch_with_or_without_templates() {
        // The same answer whether the user has 16-element templates or none at all:
        // the length says nothing about the enrollment.
        let probe = person(1, 15);
        assert_eq!(
            best_match(&probe, &[person(1, 16)], 0.5),
            Err(Failure::Mismatch)
        );
        assert_eq!(best_match(&probe, &[], 0.5), Err(Failure::Mismatch));
        // Templates of its own length are still compared.
        let templates = vec![person(1, 16), person(1, 15)];
        assert!(best_match(&probe, &templates, 0.99).is_ok());
    }

    #[test]
    fn an_unusable_stored_template_is_unavailable() {
        let mut nan = person(1, 16);
        nan[3] = f32::NAN;
        for template in [vec![0.0; 16], nan] {
            assert_eq!(
                best_match(&person(1, 16), &[template], 0.5),
                Err(Failure::Unavailable)
            );
        }
    }
}
