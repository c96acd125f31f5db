//! What a person and the devices in front of them can present, and loading it from
//! files (the CLI and tests; a real endpoint fills [`Presented`] from its card reader
//! and capture devices).

use std::fmt;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use sekisho_policy_engine::{Factor, FactorSet};

use super::AgentError;

/// An IC card as the agent uses it: the certificate it presents and the key it signs
/// with. On a real endpoint the key never leaves the card (PKCS#11); this PEM form
/// serves tests, the simulator and software cards.
#[derive(Clone, PartialEq, Eq)]
pub struct CardKey {
    /// The card's certificate, DER.
    pub certificate_der: Vec<u8>,
    /// The card's private key, PKCS#8 PEM (RSA or ECDSA P-256).
    pub key_pem: String,
}

/// A biometric capture: the feature vector the capture device extracted and the
/// device key that signs it with the gateway's nonce.
#[derive(Clone, PartialEq)]
pub struct Capture {
    pub vector: Vec<f32>,
    /// The capture device's private key, PKCS#8 PEM (ECDSA P-256 or Ed25519).
    pub capture_key_pem: String,
}

/// Everything that can be presented at this attempt. Secrets are plain strings here
/// because they go straight into the proofs; `Debug` never shows them.
#[derive(Clone, Default, PartialEq)]
pub struct Presented {
    pub password: Option<String>,
    pub pin: Option<String>,
    pub totp: Option<String>,
    pub emergency_otp: Option<String>,
    pub card: Option<CardKey>,
    pub face: Option<Capture>,
    pub vein: Option<Capture>,
}

struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn redacted<T>(value: &Option<T>) -> Option<Redacted> {
    value.as_ref().map(|_| Redacted)
}

impl fmt::Debug for CardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardKey")
            .field(
                "certificate_der",
                &format_args!("<{} bytes>", self.certificate_der.len()),
            )
            .field("key_pem", &Redacted)
            .finish()
    }
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("vector", &format_args!("<{} values>", self.vector.len()))
            .field("capture_key_pem", &Redacted)
            .finish()
    }
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presented")
            .field("password", &redacted(&self.password))
            .field("pin", &redacted(&self.pin))
            .field("totp", &redacted(&self.totp))
            .field("emergency_otp", &redacted(&self.emergency_otp))
            .field("card", &self.card)
            .field("face", &self.face)
            .field("vein", &self.vein)
            .finish()
    }
}

impl Presented {
    /// The factors this can prove. A card covers both `card` and `mynumber_card`:
    /// only the gateway can tell whether it is a My Number card.
    pub fn covered(&self) -> FactorSet {
        let mut set = FactorSet::EMPTY;
        let mut add = |present: bool, f: Factor| {
            if present {
                set = set.with(f);
            }
        };
        add(self.password.is_some(), Factor::Password);
        add(self.pin.is_some(), Factor::Pin);
        add(self.totp.is_some(), Factor::Totp);
        add(self.emergency_otp.is_some(), Factor::EmergencyOtp);
        add(self.card.is_some(), Factor::Card);
        add(self.card.is_some(), Factor::MynumberCard);
        add(self.face.is_some(), Factor::Face);
        add(self.vein.is_some(), Factor::Vein);
        set
    }
}

/// The factors `presented` can prove (see [`Presented::covered`]).
pub fn covered(presented: &Presented) -> FactorSet {
    presented.covered()
}

fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    std::fs::read(path).map_err(|error| AgentError::Read {
        path: path.display().to_string(),
        error,
    })
}

fn read_text(path: &Path) -> Result<String, AgentError> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|_| AgentError::Read {
        path: path.display().to_string(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Reads a certificate file, PEM (the first `CERTIFICATE` block) or DER, and returns
/// its DER after checking that it parses as X.509.
pub fn read_certificate_der(path: &Path) -> Result<Vec<u8>, AgentError> {
    let bytes = read(path)?;
    let bad = |why: &str| AgentError::BadCertificate {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateDer::from_pem_slice(&bytes)
            .map_err(|_| bad("no PEM \"CERTIFICATE\" block"))?
            .to_vec()
    } else {
        bytes
    };
    match x509_parser::parse_x509_certificate(&der) {
        Ok(([], _)) => Ok(der),
        Ok(_) => Err(bad("trailing bytes after the certificate")),
        Err(_) => Err(bad("not an X.509 certificate (PEM or DER)")),
    }
}

/// Reads a PKCS#8 private key PEM file, checking that it holds a `PRIVATE KEY` block.
pub fn read_private_key_pem(path: &Path) -> Result<String, AgentError> {
    let text = read_text(path)?;
    PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).map_err(|_| AgentError::BadKey {
        path: path.display().to_string(),
        why: "no PEM \"PRIVATE KEY\" (PKCS#8) block".into(),
    })?;
    Ok(text)
}

impl CardKey {
    /// A software card from its certificate (PEM or DER) and PKCS#8 PEM key.
    pub fn from_files(cert_path: &Path, key_pem_path: &Path) -> Result<CardKey, AgentError> {
        Ok(CardKey {
            certificate_der: read_certificate_der(cert_path)?,
            key_pem: read_private_key_pem(key_pem_path)?,
        })
    }
}

impl Capture {
    /// A capture from a vector file (see [`parse_vector`]) and the capture device's
    /// PKCS#8 PEM key.
    pub fn from_files(vector_file: &Path, capture_key_path: &Path) -> Result<Capture, AgentError> {
        Ok(Capture {
            vector: read_vector(vector_file)?,
            capture_key_pem: read_private_key_pem(capture_key_path)?,
        })
    }
}

fn json_vector(value: &serde_json::Value) -> Result<Vec<f32>, String> {
    let items = value
        .as_array()
        .ok_or_else(|| "expected an array of numbers".to_string())?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64()
                .ok_or_else(|| format!("element {} is not a number", i + 1))
                .and_then(|x| finite(x, i))
        })
        .collect()
}

fn finite(x: f64, i: usize) -> Result<f32, String> {
    let y = x as f32;
    if y.is_finite() {
        Ok(y)
    } else {
        Err(format!(
            "element {} ({x}) is not a finite 32-bit number",
            i + 1
        ))
    }
}

fn checked(v: Vec<f32>) -> Result<Vec<f32>, String> {
    if v.is_empty() {
        return Err("the vector is empty".into());
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err("the vector is all zeros".into());
    }
    Ok(v)
}

/// Parses one feature vector: a JSON array of numbers (`[0.12, -0.5, …]`), or numbers
/// separated by whitespace or commas. Empty, all-zero or non-finite vectors are
/// refused, naming the offending element.
pub fn parse_vector(text: &str) -> Result<Vec<f32>, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        let value: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| format!("not valid JSON: {e}"))?;
        return checked(json_vector(&value)?);
    }
    let v = trimmed
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<f64>()
                .map_err(|_| format!("element {} ('{s}') is not a number", i + 1))
                .and_then(|x| finite(x, i))
        })
        .collect::<Result<Vec<f32>, String>>()?;
    checked(v)
}

/// Parses enrolment templates: a JSON array of vectors (`[[…], […]]`), or one vector
/// in any form [`parse_vector`] reads. All templates must have the same length.
pub fn parse_templates(text: &str) -> Result<Vec<Vec<f32>>, String> {
    let trimmed = text.trim();
    let nested = trimmed.starts_with('[') && trimmed[1..].trim_start().starts_with('[');
    if !nested {
        return Ok(vec![parse_vector(text)?]);
    }
    let value: serde_json::Value =
        serde_json::from_str(trimmed).map_err(|e| format!("not valid JSON: {e}"))?;
    let items = value.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut templates = Vec::with_capacity(items.len());
    for (n, item) in items.iter().enumerate() {
        let v = json_vector(item)
            .and_then(checked)
            .map_err(|e| format!("template {}: {e}", n + 1))?;
        if let Some(first) = templates.first().map(Vec::len) {
            if v.len() != first {
                return Err(format!(
                    "template {} has {} values, template 1 has {first}",
                    n + 1,
                    v.len()
                ));
            }
        }
        templates.push(v);
    }
    if templates.is_empty() {
        return Err("no templates".into());
    }
    Ok(templates)
}

fn bad_vector(path: &Path, why: String) -> AgentError {
    AgentError::BadVector {
        path: path.display().to_string(),
        why,
    }
}

/// Reads one feature vector from a file (see [`parse_vector`]).
pub fn read_vector(path: &Path) -> Result<Vec<f32>, AgentError> {
    parse_vector(&read_text(path)?).map_err(|why| bad_vector(path, why))
}

/// Reads enrolment templates from a file (see [`parse_templates`]).
pub fn read_templates(path: &Path) -> Result<Vec<Vec<f32>>, AgentError> {
    parse_templates(&read_text(path)?).map_err(|why| bad_vector(path, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_from_json_or_whitespace() {
        assert_eq!(parse_vector("[0.5, -1, 2e-1]\n"), Ok(vec![0.5, -1.0, 0.2]));
        assert_eq!(
            parse_vector(" 0.5 -1\n0.2\t3 "),
            Ok(vec![0.5, -1.0, 0.2, 3.0])
        );
        assert_eq!(parse_vector("0.5,-1, 0.2"), Ok(vec![0.5, -1.0, 0.2]));
    }

    #[test]
    fn bad_vectors_name_the_problem() {
        assert_eq!(parse_vector(""), Err("the vector is empty".into()));
        assert_eq!(parse_vector("[]"), Err("the vector is empty".into()));
        assert_eq!(parse_vector("0 0 0"), Err("the vector is all zeros".into()));
        assert_eq!(
            parse_vector("0.1 abc 0.3"),
            Err("element 2 ('abc') is not a number".into())
        );
        assert_eq!(
            parse_vector("[0.1, \"x\"]"),
            Err("element 2 is not a number".into())
        );
        assert!(parse_vector("[0.1, 1e300]")
            .unwrap_err()
            .contains("element 2"));
        assert!(parse_vector("0.1 NaN").unwrap_err().contains("element 2"));
        assert!(parse_vector("[0.1,")
            .unwrap_err()
            .starts_with("not valid JSON"));
        assert_eq!(
            parse_vector("{\"v\": 1}"),
            Err("element 1 ('{\"v\":') is not a number".into())
        );
    }

    #[test]
    fn templates_one_or_many() {
        assert_eq!(parse_templates("[1, 2]"), Ok(vec![vec![1.0, 2.0]]));
        assert_eq!(parse_templates("1 2"), Ok(vec![vec![1.0, 2.0]]));
        assert_eq!(
            parse_templates("[[1, 2], [3, 4]]"),
            Ok(vec![vec![1.0, 2.0], vec![3.0, 4.0]])
        );
        assert_eq!(
            parse_templates("[[1, 2], [3]]"),
            Err("template 2 has 1 values, template 1 has 2".into())
        );
        assert_eq!(
            parse_templates("[[1, 2], [0, 0]]"),
            Err("template 2: the vector is all zeros".into())
        );
        assert_eq!(
            parse_templates("[[1, 2], 3]"),
            Err("template 2: expected an array of numbers".into())
        );
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("face.json");
        std::fs::write(&path, "[1, oops]").unwrap();
        let err = read_vector(&path).unwrap_err();
        assert!(matches!(err, AgentError::BadVector { .. }));
        assert!(err.to_string().contains("face.json"), "{err}");
        let missing = dir.path().join("nope.json");
        let err = read_vector(&missing).unwrap_err();
        assert!(matches!(err, AgentError::Read { .. }));
        assert!(err.to_string().contains("nope.json"), "{err}");
        let err = read_certificate_der(&path).unwrap_err();
        assert!(matches!(err, AgentError::BadCertificate { .. }), "{err}");
        let err = read_private_key_pem(&path).unwrap_err();
        assert!(matches!(err, AgentError::BadKey { .. }), "{err}");
    }

    #[test]
    fn debug_redacts_secrets_and_vectors() {
        let presented = Presented {
            password: Some("hunter2-secret".into()),
            pin: Some("4711".into()),
            totp: Some("123456".into()),
            emergency_otp: Some("ABCD2345EFGH".into()),
            card: Some(CardKey {
                certificate_der: vec![0x30, 0x82, 0x01],
                key_pem: "-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n".into(),
            }),
            face: Some(Capture {
                vector: vec![0.123_456, 0.654_321],
                capture_key_pem: "-----BEGIN PRIVATE KEY-----\nDEVICEKEY\n".into(),
            }),
            vein: None,
        };
        let shown = format!("{presented:?} {presented:#?}");
        for secret in [
            "hunter2",
            "4711",
            "123456",
            "ABCD2345EFGH",
            "SECRETKEYBYTES",
            "DEVICEKEY",
            "0.123",
            "0.654",
            "PRIVATE KEY",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("<2 values>"));
        assert!(shown.contains("<3 bytes>"));
        assert!(shown.contains("vein: None"));
    }

    #[test]
    fn a_card_covers_mynumber_card() {
        let p = Presented {
            password: Some("x".into()),
            card: Some(CardKey {
                certificate_der: vec![],
                key_pem: String::new(),
            }),
            ..Presented::default()
        };
        assert_eq!(covered(&p).names(), ["card", "mynumber_card", "password"]);
        assert_eq!(covered(&Presented::default()), FactorSet::EMPTY);
    }
}
