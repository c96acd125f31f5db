//! IC card factor: challenge–response with the card's private key.
//!
//! The gateway issues a nonce, the endpoint has the card sign it, and the gateway
//! checks the signature with the user's enrolled certificate after validating that
//! certificate's chain, validity and revocation. Path building, CRL handling and the
//! signature check itself all go through `rustls-webpki`, so this module only decides
//! which trust anchors to try and how to name the outcome.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivatePkcs8KeyDer,
    SignatureVerificationAlgorithm, TrustAnchor, UnixTime,
};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyUsage, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};

use super::Failure;

/// Algorithms a CA may have used to sign the chain. Card keys themselves are limited
/// to [`CARD_SIGNATURE_ALGS`]; CAs (JPKI included) are allowed the usual set.
static CHAIN_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PKCS1_3072_8192_SHA384,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// What a card can produce over the nonce: RSA PKCS#1 v1.5 (JPKI and most PKCS#11
/// cards) or ECDSA P-256 with an ASN.1 DER signature.
static CARD_SIGNATURE_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::ECDSA_P256_SHA256,
];

/// Which trust anchor set the card's chain ended in. A My Number card proves both the
/// `card` and `mynumber_card` factors; the caller maps that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardKind {
    Card,
    MyNumber,
}

/// Why the card trust configuration could not be loaded. Each variant names the file
/// or the position of the offending item.
#[derive(Debug, thiserror::Error)]
pub enum CardTrustError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{what}: not usable as a trust anchor ({reason})")]
    BadAnchor { what: String, reason: String },
    #[error("{what}: not a usable CRL ({reason})")]
    BadCrl { what: String, reason: String },
    /// A CRL that no configured CA issued revokes nothing: its CA's cards would pass
    /// unchecked while the file looks in force.
    #[error("{what}: issued by none of the configured card or My Number CAs")]
    CrlIssuerUnknown { what: String },
    #[error("no card CA or My Number CA certificate is configured")]
    NoTrustAnchors,
}

/// Chains remembered before the memory is emptied and starts again: one per card
/// in use, so this holds every card of a large city at a few hundred bytes each.
const MAX_REMEMBERED_CHAINS: usize = 200_000;

/// The CAs and CRLs a tier trusts for cards.
#[derive(Debug)]
pub struct CardTrust {
    card_anchors: Vec<TrustAnchor<'static>>,
    mynumber_anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    crls: Vec<CertRevocationList<'static>>,
    /// The earliest `nextUpdate` of the CRLs: past it, that CRL is out of date and
    /// its CA's cards are refused until a current one is installed, so no chain is
    /// remembered beyond it.
    crls_valid_until: Option<UnixTime>,
    /// Card certificates whose chain has been validated, by the SHA-256 of their DER.
    /// Path building costs a CA signature check (60–100 µs for P-256 on the machines
    /// in BENCHMARKS.md, half of a card logon's verification), and its outcome for a given certificate changes
    /// only with the time (validity periods, kept here) or the CRLs (fixed for the
    /// life of this value: changed files make a new one, see `crate::cards`).
    /// Failures are not remembered: they take the full path and get its exact
    /// reason.
    chains: Mutex<HashMap<[u8; 32], ValidChain>>,
}

/// A validated chain, and the span in which every certificate on it is valid.
#[derive(Debug, Clone, Copy)]
struct ValidChain {
    kind: CardKind,
    not_before: UnixTime,
    not_after: UnixTime,
}

impl CardTrust {
    /// Builds the trust configuration. Intermediates are offered to path building for
    /// both anchor sets; at least one anchor must be configured overall.
    pub fn new(
        card_roots: Vec<CertificateDer<'static>>,
        mynumber_roots: Vec<CertificateDer<'static>>,
        intermediates: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, CardTrustError> {
        let card_anchors = card_roots
            .iter()
            .enumerate()
            .map(|(i, c)| anchor(c, || format!("card CA certificate #{}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let mynumber_anchors = mynumber_roots
            .iter()
            .enumerate()
            .map(|(i, c)| anchor(c, || format!("My Number CA certificate #{}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let crls = crls
            .iter()
            .enumerate()
            .map(|(i, c)| parse_crl(c.as_ref(), format!("CRL #{}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_parts(card_anchors, mynumber_anchors, intermediates, crls)
    }

    /// Loads CA certificates from PEM files (every certificate in a file becomes a
    /// trust anchor, so a JPKI intermediate can be configured directly) and CRLs from
    /// PEM or DER files.
    pub fn from_pem_files(
        card_ca: &[PathBuf],
        mynumber_ca: &[PathBuf],
        crl: &[PathBuf],
    ) -> Result<Self, CardTrustError> {
        let mut card_anchors = Vec::new();
        for path in card_ca {
            card_anchors.extend(anchors_from_pem_file(path)?);
        }
        let mut mynumber_anchors = Vec::new();
        for path in mynumber_ca {
            mynumber_anchors.extend(anchors_from_pem_file(path)?);
        }
        let mut crls = Vec::new();
        for path in crl {
            crls.extend(crls_from_file(path)?);
        }
        Self::from_parts(card_anchors, mynumber_anchors, Vec::new(), crls)
    }

    fn from_parts(
        card_anchors: Vec<TrustAnchor<'static>>,
        mynumber_anchors: Vec<TrustAnchor<'static>>,
        intermediates: Vec<CertificateDer<'static>>,
        crls: Vec<LoadedCrl>,
    ) -> Result<Self, CardTrustError> {
        if card_anchors.is_empty() && mynumber_anchors.is_empty() {
            return Err(CardTrustError::NoTrustAnchors);
        }
        // Intermediates are not loaded from files: every configured CA certificate is
        // an anchor, so an anchor is the only possible issuer of a card certificate.
        for loaded in &crls {
            let issuer = loaded.crl.issuer();
            if !card_anchors
                .iter()
                .chain(&mynumber_anchors)
                .any(|a| a.subject.as_ref() == issuer)
            {
                return Err(CardTrustError::CrlIssuerUnknown {
                    what: loaded.what.clone(),
                });
            }
        }
        let crls_valid_until = crls.iter().filter_map(|c| c.next_update).min();
        if let Some(until) = crls_valid_until {
            if UnixTime::now() >= until {
                tracing::error!(crls = ?crls.iter().map(|c| c.what.as_str()).collect::<Vec<_>>(), "a configured CRL is past its next update: cards of its CA are refused (\"unavailable\") until a current CRL is installed (it is read within cards.reload_secs)");
            }
        }
        Ok(CardTrust {
            card_anchors,
            mynumber_anchors,
            intermediates,
            crls: crls.into_iter().map(|c| c.crl).collect(),
            crls_valid_until,
            chains: Mutex::new(HashMap::new()),
        })
    }

    /// The earliest `nextUpdate` of the configured CRLs, if any.
    pub fn crls_valid_until(&self) -> Option<UnixTime> {
        self.crls_valid_until
    }

    /// The kind of the remembered chain under `key`, if every certificate on it is
    /// valid at `now`.
    fn remembered(&self, key: &[u8; 32], now: UnixTime) -> Option<CardKind> {
        if self.crls_valid_until.is_some_and(|until| now >= until) {
            return None;
        }
        let chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
        let chain = chains.get(key)?;
        // webpki's own test: valid from not_before through not_after, inclusive.
        (chain.not_before <= now && now <= chain.not_after).then_some(chain.kind)
    }

    fn remember(&self, key: [u8; 32], chain: ValidChain) {
        let mut chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
        if chains.len() >= MAX_REMEMBERED_CHAINS {
            chains.clear();
        }
        chains.insert(key, chain);
    }
}

fn anchor(
    cert: &CertificateDer<'_>,
    what: impl FnOnce() -> String,
) -> Result<TrustAnchor<'static>, CardTrustError> {
    webpki::anchor_from_trusted_cert(cert)
        .map(|a| a.to_owned())
        .map_err(|e| CardTrustError::BadAnchor {
            what: what(),
            reason: e.to_string(),
        })
}

/// A CRL as configured, with what names it in errors and its `nextUpdate` (which
/// webpki keeps to itself).
struct LoadedCrl {
    what: String,
    crl: CertRevocationList<'static>,
    next_update: Option<UnixTime>,
}

fn parse_crl(der: &[u8], what: String) -> Result<LoadedCrl, CardTrustError> {
    let bad = |reason: String| CardTrustError::BadCrl {
        what: what.clone(),
        reason,
    };
    let crl = OwnedCertRevocationList::from_der(der)
        .map(CertRevocationList::from)
        .map_err(|e| bad(e.to_string()))?;
    let (_, parsed) = <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(der)
        .map_err(|e| bad(e.to_string()))?;
    let next_update = parsed.next_update().and_then(|t| unix_time(t.timestamp()));
    Ok(LoadedCrl {
        what,
        crl,
        next_update,
    })
}

fn file_error(path: &Path, reason: impl ToString) -> CardTrustError {
    CardTrustError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn anchors_from_pem_file(path: &Path) -> Result<Vec<TrustAnchor<'static>>, CardTrustError> {
    let text = fs::read(path).map_err(|e| file_error(path, e))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE block found"));
    }
    certs
        .iter()
        .enumerate()
        .map(|(i, c)| anchor(c, || format!("{}: certificate #{}", path.display(), i + 1)))
        .collect()
}

fn crls_from_file(path: &Path) -> Result<Vec<LoadedCrl>, CardTrustError> {
    let bytes = fs::read(path).map_err(|e| file_error(path, e))?;
    let what = |i: usize| format!("{}: CRL #{}", path.display(), i + 1);
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(vec![parse_crl(&bytes, what(0))?]);
    }
    let ders = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if ders.is_empty() {
        return Err(file_error(path, "no X509 CRL block found"));
    }
    ders.iter()
        .enumerate()
        .map(|(i, d)| parse_crl(d.as_ref(), what(i)))
        .collect()
}

/// Verifies a card's response to the challenge `nonce`.
///
/// The order matters for what the endpoint is told: a certificate that is not one of
/// the user's enrolled ones is rejected before anything about it is examined, then
/// the chain (validity, CA, CRL), then the signature.
pub fn verify(
    trust: &CardTrust,
    enrolled: &[CertificateDer<'_>],
    presented_der: &[u8],
    nonce: &[u8],
    signature: &[u8],
    now: UnixTime,
) -> Result<CardKind, Failure> {
    // Certificates are public, so a plain comparison is fine here.
    if !enrolled.iter().any(|c| c.as_ref() == presented_der) {
        return Err(Failure::CardNotEnrolled);
    }
    let der = CertificateDer::from(presented_der);
    let cert = EndEntityCert::try_from(&der).map_err(|_| Failure::Malformed)?;
    let kind = verify_chain(trust, &cert, now)?;
    let signed = CARD_SIGNATURE_ALGS
        .iter()
        .any(|alg| cert.verify_signature(*alg, nonce, signature).is_ok());
    if signed {
        Ok(kind)
    } else {
        Err(Failure::BadSignature)
    }
}

/// Checks a certificate offered for enrollment as a logon would (validity, CA,
/// CRL), and says which kind of card it is. Enrolling a certificate that could never
/// be accepted would only move the error to the user's first logon.
pub fn classify(trust: &CardTrust, der: &[u8], now: UnixTime) -> Result<CardKind, Failure> {
    let der = CertificateDer::from(der);
    let cert = EndEntityCert::try_from(&der).map_err(|_| Failure::Malformed)?;
    verify_chain(trust, &cert, now)
}

/// Tries the card CAs, then the My Number CAs. When both fail, the more specific
/// reason wins: "expired" or "revoked" from one set says more than "unknown issuer"
/// from the other.
fn verify_chain(
    trust: &CardTrust,
    cert: &EndEntityCert<'_>,
    now: UnixTime,
) -> Result<CardKind, Failure> {
    let mut key = [0u8; 32];
    key.copy_from_slice(digest(&SHA256, cert.der().as_ref()).as_ref());
    if let Some(kind) = trust.remembered(&key, now) {
        return Ok(kind);
    }
    let crls: Vec<&CertRevocationList<'_>> = trust.crls.iter().collect();
    // Only the card certificate is checked, and a CRL from some other CA (the
    // card CA's CRL when the card is a My Number card) must not fail everything.
    let revocation = RevocationOptionsBuilder::new(&crls).ok().map(|b| {
        b.with_depth(RevocationCheckDepth::EndEntity)
            .with_status_policy(UnknownStatusPolicy::Allow)
            .with_expiration_policy(ExpirationPolicy::Enforce)
            .build()
    });
    let mut failure = Failure::UntrustedCertificate;
    for (anchors, kind) in [
        (&trust.card_anchors, CardKind::Card),
        (&trust.mynumber_anchors, CardKind::MyNumber),
    ] {
        if anchors.is_empty() {
            continue;
        }
        // client_auth() is "required if present": a card certificate without an EKU
        // extension passes, one with an EKU must list clientAuth.
        match cert.verify_for_usage(
            CHAIN_ALGS,
            anchors,
            &trust.intermediates,
            now,
            KeyUsage::client_auth(),
            revocation,
            None,
        ) {
            Ok(path) => {
                if let Some((not_before, not_after)) = path_validity(&path) {
                    trust.remember(
                        key,
                        ValidChain {
                            kind,
                            not_before,
                            not_after,
                        },
                    );
                }
                return Ok(kind);
            }
            Err(e) => {
                let mapped = map_chain_error(&e);
                if mapped != Failure::UntrustedCertificate {
                    failure = mapped;
                }
            }
        }
    }
    Err(failure)
}

/// The span in which the card certificate and every intermediate on its path are all
/// valid, which is what webpki checked of them (trust anchors carry no validity).
/// `None` when a certificate's dates cannot be read, and the chain is then simply
/// not remembered.
fn path_validity(path: &webpki::VerifiedPath<'_>) -> Option<(UnixTime, UnixTime)> {
    let certs = std::iter::once(path.end_entity().der())
        .chain(path.intermediate_certificates().map(|c| c.der()));
    let mut span: Option<(UnixTime, UnixTime)> = None;
    for der in certs {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let validity = cert.validity();
        let from = unix_time(validity.not_before.timestamp())?;
        let until = unix_time(validity.not_after.timestamp())?;
        span = Some(match span {
            None => (from, until),
            Some((f, u)) => (f.max(from), u.min(until)),
        });
    }
    span
}

fn unix_time(secs: i64) -> Option<UnixTime> {
    u64::try_from(secs)
        .ok()
        .map(|s| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s)))
}

fn map_chain_error(error: &webpki::Error) -> Failure {
    use webpki::Error as E;
    match error {
        E::CertExpired { .. } | E::CertNotValidYet { .. } => Failure::CertificateExpired,
        E::CertRevoked => Failure::Revoked,
        // The CA's CRL cannot say whether the card is revoked: the gateway's
        // configuration is at fault, not the person, so it is not a failure that
        // counts towards their lockout.
        E::CrlExpired { .. }
        | E::InvalidCrlSignatureForPublicKey
        | E::IssuerNotCrlSigner
        | E::UnsupportedCrlSignatureAlgorithmContext(_)
        | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_) => {
            tracing::warn!(error = %error, "a card's revocation status cannot be checked: install a current, correctly signed CRL for its CA");
            Failure::Unavailable
        }
        _ => Failure::UntrustedCertificate,
    }
}

/// Why the endpoint-side helper could not sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CardSignError {
    #[error("card key is not a PEM \"PRIVATE KEY\" (PKCS#8) block")]
    Pem,
    #[error("card key is neither an RSA nor an ECDSA P-256 PKCS#8 key")]
    UnsupportedKey,
    #[error("signing the nonce failed")]
    Sign,
}

/// Endpoint side (agent and tests): signs `nonce` with a PKCS#8 key the way a card
/// would, RSA PKCS#1 v1.5 SHA-256 or ECDSA P-256 SHA-256 (ASN.1 DER), whichever the
/// key is. A real endpoint does this through PKCS#11 and never sees the key.
pub fn sign_nonce(key_pem: &str, nonce: &[u8]) -> Result<Vec<u8>, CardSignError> {
    let der =
        PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| CardSignError::Pem)?;
    let der = der.secret_pkcs8_der();
    let rng = SystemRandom::new();
    if let Ok(key) = RsaKeyPair::from_pkcs8(der) {
        let mut sig = vec![0u8; key.public().modulus_len()];
        key.sign(&signature::RSA_PKCS1_SHA256, &rng, nonce, &mut sig)
            .map_err(|_| CardSignError::Sign)?;
        return Ok(sig);
    }
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng)
        .map_err(|_| CardSignError::UnsupportedKey)?;
    let sig = key.sign(&rng, nonce).map_err(|_| CardSignError::Sign)?;
    Ok(sig.as_ref().to_vec())
}

/// Test PKI helpers, shared with other modules' tests (gateway service tests need
/// enrolled cards too).
#[cfg(test)]
pub mod testing {
    use std::time::Duration;

    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
        CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
        KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
    };
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

    /// The fixed verification time for tests: 2025-06-01T00:00:00Z. Leaf certificates
    /// from [`TestCa::issue`] are valid 2024-01-01 to 2030-01-01.
    pub fn now() -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(1_748_736_000))
    }

    /// The committed RSA-2048 key (ring cannot generate RSA keys).
    pub const RSA_KEY_PEM: &str = include_str!("../../tests/data/rsa2048.pk8.pem");

    pub fn rsa_key() -> KeyPair {
        KeyPair::from_pem(RSA_KEY_PEM).unwrap()
    }

    pub fn ecdsa_key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// A self-signed CA that can issue card certificates and CRLs.
    pub struct TestCa {
        ca: CertifiedIssuer<'static, KeyPair>,
    }

    fn ca_params(
        common_name: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
        params
    }

    impl TestCa {
        /// A root CA valid 2020-01-01 to 2040-01-01.
        pub fn new(common_name: &str) -> TestCa {
            let params = ca_params(common_name, (2020, 1, 1), (2040, 1, 1));
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
            TestCa {
                ca: CertifiedIssuer::self_signed(params, key).unwrap(),
            }
        }

        /// An intermediate CA under this one, valid as given.
        pub fn intermediate(
            &self,
            common_name: &str,
            not_before: (i32, u8, u8),
            not_after: (i32, u8, u8),
        ) -> TestCa {
            let params = ca_params(common_name, not_before, not_after);
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            TestCa {
                ca: CertifiedIssuer::signed_by(params, key, &self.ca).unwrap(),
            }
        }

        pub fn cert(&self) -> CertificateDer<'static> {
            self.ca.der().clone()
        }

        pub fn cert_pem(&self) -> String {
            self.ca.pem()
        }

        /// A card certificate (clientAuth EKU) valid 2024-01-01 to 2030-01-01.
        pub fn issue(&self, key: &KeyPair, serial: u64) -> CertificateDer<'static> {
            self.issue_valid(key, serial, (2024, 1, 1), (2030, 1, 1))
        }

        pub fn issue_valid(
            &self,
            key: &KeyPair,
            serial: u64,
            not_before: (i32, u8, u8),
            not_after: (i32, u8, u8),
        ) -> CertificateDer<'static> {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("card {serial}"));
            params.serial_number = Some(SerialNumber::from(serial));
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params.not_before = date_time_ymd(not_before.0, not_before.1, not_before.2);
            params.not_after = date_time_ymd(not_after.0, not_after.1, not_after.2);
            params.signed_by(key, &self.ca).unwrap().der().clone()
        }

        /// A CRL (2025-01-01 to 2026-01-01) revoking `serials`.
        pub fn crl(&self, serials: &[u64]) -> CertificateRevocationListDer<'static> {
            let params = CertificateRevocationListParams {
                this_update: date_time_ymd(2025, 1, 1),
                next_update: date_time_ymd(2026, 1, 1),
                crl_number: SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| RevokedCertParams {
                        serial_number: SerialNumber::from(*s),
                        revocation_time: date_time_ymd(2025, 2, 1),
                        reason_code: Some(RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: KeyIdMethod::Sha256,
            };
            params.signed_by(&self.ca).unwrap().der().clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    const NONCE: &[u8] = b"gateway nonce 0123456789abcdef";

    struct Pki {
        card_ca: TestCa,
        jpki_ca: TestCa,
        trust: CardTrust,
    }

    fn pki(revoked: &[u64]) -> Pki {
        let card_ca = TestCa::new("Sekisho Test Card CA");
        let jpki_ca = TestCa::new("JPKI Test CA");
        let trust = CardTrust::new(
            vec![card_ca.cert()],
            vec![jpki_ca.cert()],
            vec![],
            vec![card_ca.crl(revoked), jpki_ca.crl(&[])],
        )
        .unwrap();
        Pki {
            card_ca,
            jpki_ca,
            trust,
        }
    }

    fn check(
        trust: &CardTrust,
        cert: &CertificateDer<'_>,
        key_pem: &str,
    ) -> Result<CardKind, Failure> {
        let sig = sign_nonce(key_pem, NONCE).unwrap();
        verify(trust, std::slice::from_ref(cert), cert, NONCE, &sig, now())
    }

    #[test]
    fn accepts_rsa_and_ecdsa_cards() {
        let p = pki(&[]);
        let rsa = rsa_key();
        let cert = p.card_ca.issue(&rsa, 1);
        assert_eq!(check(&p.trust, &cert, RSA_KEY_PEM), Ok(CardKind::Card));

        let ec = ecdsa_key();
        let cert = p.card_ca.issue(&ec, 2);
        assert_eq!(
            check(&p.trust, &cert, &ec.serialize_pem()),
            Ok(CardKind::Card)
        );
    }

    #[test]
    fn mynumber_ca_yields_mynumber() {
        let p = pki(&[]);
        let cert = p.jpki_ca.issue(&rsa_key(), 10);
        assert_eq!(check(&p.trust, &cert, RSA_KEY_PEM), Ok(CardKind::MyNumber));
    }

    #[test]
    fn signature_over_other_nonce_or_by_other_key_is_bad() {
        let p = pki(&[]);
        let ec = ecdsa_key();
        let cert = p.card_ca.issue(&ec, 3);
        let enrolled = [cert.clone()];
        let sig = sign_nonce(&ec.serialize_pem(), b"another nonce").unwrap();
        assert_eq!(
            verify(&p.trust, &enrolled, &cert, NONCE, &sig, now()),
            Err(Failure::BadSignature)
        );
        let sig = sign_nonce(&ecdsa_key().serialize_pem(), NONCE).unwrap();
        assert_eq!(
            verify(&p.trust, &enrolled, &cert, NONCE, &sig, now()),
            Err(Failure::BadSignature)
        );
        let sig = sign_nonce(RSA_KEY_PEM, NONCE).unwrap();
        assert_eq!(
            verify(&p.trust, &enrolled, &cert, NONCE, &sig, now()),
            Err(Failure::BadSignature)
        );
        assert_eq!(
            verify(&p.trust, &enrolled, &cert, NONCE, b"", now()),
            Err(Failure::BadSignature)
        );
    }

    fn at(y: i32, m: u8, d: u8) -> UnixTime {
        let secs = rcgen::date_time_ymd(y, m, d).unix_timestamp();
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs as u64))
    }

    /// A remembered chain saves the path building, never the checks that depend on
    /// the moment or the request: the dates are checked again on every use, and so is
    /// the nonce signature.
    #[test]
    fn a_remembered_chain_still_expires() {
        let p = pki(&[]);
        let ec = ecdsa_key();
        let pem = ec.serialize_pem();
        let cert = p.card_ca.issue_valid(&ec, 7, (2024, 1, 1), (2026, 1, 1));
        let certs = std::slice::from_ref(&cert);
        let sig = sign_nonce(&pem, NONCE).unwrap();
        let verify_at = |time| verify(&p.trust, certs, &cert, NONCE, &sig, time);
        assert_eq!(verify_at(now()), Ok(CardKind::Card));
        assert_eq!(p.trust.chains.lock().unwrap().len(), 1);
        assert_eq!(verify_at(now()), Ok(CardKind::Card));
        assert_eq!(verify_at(at(2025, 12, 31)), Ok(CardKind::Card));
        assert_eq!(verify_at(at(2026, 1, 2)), Err(Failure::CertificateExpired));
        assert_eq!(
            verify_at(at(2023, 12, 31)),
            Err(Failure::CertificateExpired)
        );
        let other = sign_nonce(&pem, b"another nonce").unwrap();
        assert_eq!(
            verify(&p.trust, certs, &cert, NONCE, &other, now()),
            Err(Failure::BadSignature)
        );
        // A failure is not remembered: the same certificate stays refused.
        let expired = p.card_ca.issue_valid(&ec, 8, (2020, 1, 1), (2021, 1, 1));
        for _ in 0..2 {
            assert_eq!(
                check(&p.trust, &expired, &pem),
                Err(Failure::CertificateExpired)
            );
        }
        assert_eq!(p.trust.chains.lock().unwrap().len(), 1);
    }

    /// The remembered span is that of the whole path: an intermediate that expires
    /// before the card ends the card's use with it.
    #[test]
    fn a_remembered_chain_ends_with_its_intermediate() {
        let root = TestCa::new("Sekisho Test Root");
        let issuing = root.intermediate("Sekisho Test Issuing CA", (2024, 6, 1), (2025, 9, 1));
        let trust =
            CardTrust::new(vec![root.cert()], vec![], vec![issuing.cert()], vec![]).unwrap();
        let ec = ecdsa_key();
        let pem = ec.serialize_pem();
        let cert = issuing.issue(&ec, 9);
        let certs = std::slice::from_ref(&cert);
        let sig = sign_nonce(&pem, NONCE).unwrap();
        let verify_at = |time| verify(&trust, certs, &cert, NONCE, &sig, time);
        assert_eq!(verify_at(now()), Ok(CardKind::Card));
        assert_eq!(verify_at(at(2025, 8, 31)), Ok(CardKind::Card));
        assert_eq!(verify_at(at(2025, 9, 2)), Err(Failure::CertificateExpired));
        assert_eq!(verify_at(at(2024, 5, 31)), Err(Failure::CertificateExpired));
        assert_eq!(verify_at(now()), Ok(CardKind::Card));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let p = pki(&[]);
        let ec = ecdsa_key();
        let pem = ec.serialize_pem();
        let expired = p.card_ca.issue_valid(&ec, 4, (2020, 1, 1), (2021, 1, 1));
        assert_eq!(
            check(&p.trust, &expired, &pem),
            Err(Failure::CertificateExpired)
        );
        let future = p.card_ca.issue_valid(&ec, 5, (2029, 1, 1), (2031, 1, 1));
        assert_eq!(
            check(&p.trust, &future, &pem),
            Err(Failure::CertificateExpired)
        );
        let jpki_expired = p.jpki_ca.issue_valid(&ec, 6, (2020, 1, 1), (2021, 1, 1));
        assert_eq!(
            check(&p.trust, &jpki_expired, &pem),
            Err(Failure::CertificateExpired)
        );
    }

    #[test]
    fn a_crl_past_its_next_update_leaves_its_cards_unchecked_and_refused() {
        let p = pki(&[]);
        let ec = ecdsa_key();
        let cert = p.card_ca.issue(&ec, 20);
        let sig = sign_nonce(&ec.serialize_pem(), NONCE).unwrap();
        let at = |secs: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
        let enrolled = std::slice::from_ref(&cert);
        // Checked (and remembered) while the CRL is current...
        assert_eq!(
            verify(&p.trust, enrolled, &cert, NONCE, &sig, now()),
            Ok(CardKind::Card)
        );
        // ...and refused once it is past its next update (2026-01-01), remembered or not.
        let after = at(1_767_225_600 + 86_400);
        assert_eq!(
            verify(&p.trust, enrolled, &cert, NONCE, &sig, after),
            Err(Failure::Unavailable)
        );
        assert!(!Failure::Unavailable.counts_towards_lockout());
    }

    #[test]
    fn a_crl_of_a_ca_not_configured_is_refused_at_load() {
        let card_ca = TestCa::new("Sekisho Test Card CA");
        let stranger = TestCa::new("Some Other CA");
        let e = CardTrust::new(
            vec![card_ca.cert()],
            vec![],
            vec![],
            vec![stranger.crl(&[])],
        )
        .unwrap_err();
        assert!(matches!(e, CardTrustError::CrlIssuerUnknown { .. }), "{e}");
        assert!(e.to_string().contains("CRL #1"), "{e}");
    }

    #[test]
    fn other_ca_is_untrusted() {
        let p = pki(&[]);
        let rogue = TestCa::new("Sekisho Test Card CA");
        let ec = ecdsa_key();
        let cert = rogue.issue(&ec, 7);
        assert_eq!(
            check(&p.trust, &cert, &ec.serialize_pem()),
            Err(Failure::UntrustedCertificate)
        );
    }

    #[test]
    fn revoked_serial_is_refused() {
        let p = pki(&[8]);
        let ec = ecdsa_key();
        let pem = ec.serialize_pem();
        let revoked = p.card_ca.issue(&ec, 8);
        assert_eq!(check(&p.trust, &revoked, &pem), Err(Failure::Revoked));
        // Another serial from the same CA, and a My Number card whose CA has its own
        // (empty) CRL, are unaffected.
        let fine = p.card_ca.issue(&ec, 9);
        assert_eq!(check(&p.trust, &fine, &pem), Ok(CardKind::Card));
        let jpki = p.jpki_ca.issue(&ec, 8);
        assert_eq!(check(&p.trust, &jpki, &pem), Ok(CardKind::MyNumber));
    }

    #[test]
    fn not_enrolled() {
        let p = pki(&[]);
        let ec = ecdsa_key();
        let cert = p.card_ca.issue(&ec, 11);
        let other = p.card_ca.issue(&ec, 12);
        let sig = sign_nonce(&ec.serialize_pem(), NONCE).unwrap();
        assert_eq!(
            verify(&p.trust, &[other], &cert, NONCE, &sig, now()),
            Err(Failure::CardNotEnrolled)
        );
        assert_eq!(
            verify(&p.trust, &[], &cert, NONCE, &sig, now()),
            Err(Failure::CardNotEnrolled)
        );
    }

    #[test]
    fn garbage_der_is_malformed() {
        let p = pki(&[]);
        let garbage = CertificateDer::from(b"\x30\x03not a certificate".to_vec());
        assert_eq!(
            verify(
                &p.trust,
                std::slice::from_ref(&garbage),
                &garbage,
                NONCE,
                b"sig",
                now()
            ),
            Err(Failure::Malformed)
        );
    }

    #[test]
    fn loads_pem_files_and_crls() {
        let card_ca = TestCa::new("Sekisho Test Card CA");
        let jpki_ca = TestCa::new("JPKI Test CA");
        let dir = tempfile::tempdir().unwrap();
        let card_pem = dir.path().join("card-ca.pem");
        let jpki_pem = dir.path().join("jpki-ca.pem");
        let crl_der = dir.path().join("card.crl");
        let crl_pem = dir.path().join("jpki.crl.pem");
        fs::write(&card_pem, card_ca.cert_pem()).unwrap();
        fs::write(&jpki_pem, jpki_ca.cert_pem()).unwrap();
        fs::write(&crl_der, card_ca.crl(&[20]).as_ref()).unwrap();
        // Two CRLs in one PEM file: the JPKI CA's and (harmlessly) an empty card CA one.
        let pem_block = |der: &[u8]| {
            format!(
                "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
                data_encoding::BASE64.encode(der)
            )
        };
        fs::write(
            &crl_pem,
            pem_block(jpki_ca.crl(&[21]).as_ref()) + &pem_block(card_ca.crl(&[]).as_ref()),
        )
        .unwrap();
        let trust = CardTrust::from_pem_files(
            std::slice::from_ref(&card_pem),
            &[jpki_pem],
            &[crl_der, crl_pem],
        )
        .unwrap();

        let ec = ecdsa_key();
        let pem = ec.serialize_pem();
        assert_eq!(
            check(&trust, &card_ca.issue(&ec, 1), &pem),
            Ok(CardKind::Card)
        );
        assert_eq!(
            check(&trust, &card_ca.issue(&ec, 20), &pem),
            Err(Failure::Revoked)
        );
        assert_eq!(
            check(&trust, &jpki_ca.issue(&ec, 1), &pem),
            Ok(CardKind::MyNumber)
        );
        assert_eq!(
            check(&trust, &jpki_ca.issue(&ec, 21), &pem),
            Err(Failure::Revoked)
        );

        let missing = dir.path().join("missing.pem");
        let err = CardTrust::from_pem_files(&[missing], &[], &[]).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "nothing here\n").unwrap();
        let err = CardTrust::from_pem_files(&[empty], &[], &[]).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let bad_crl = dir.path().join("bad.crl");
        fs::write(&bad_crl, b"\x30\x01\x00").unwrap();
        let err = CardTrust::from_pem_files(&[card_pem], &[], &[bad_crl]).unwrap_err();
        assert!(err.to_string().contains("bad.crl"), "{err}");

        assert!(matches!(
            CardTrust::new(vec![], vec![], vec![], vec![]),
            Err(CardTrustError::NoTrustAnchors)
        ));
        assert!(matches!(
            CardTrust::new(
                vec![CertificateDer::from(vec![1, 2, 3])],
                vec![],
                vec![],
                vec![]
            ),
            Err(CardTrustError::BadAnchor { .. })
        ));
    }

    #[test]
    fn sign_nonce_refuses_other_keys() {
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(
            sign_nonce(&ed.serialize_pem(), NONCE),
            Err(CardSignError::UnsupportedKey)
        );
        assert_eq!(sign_nonce("garbage", NONCE), Err(CardSignError::Pem));
    }
}
