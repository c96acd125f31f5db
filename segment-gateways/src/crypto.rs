//! The credential-store sealing key and the few primitives the verifiers share.
//!
//! TOTP secrets and biometric templates are stored sealed with AES-256-GCM under a key
//! that lives in a key file or the environment, never in the database (DESIGN §4), so a
//! stolen database dump alone reveals nothing. Each ciphertext is bound to its row via
//! the associated data, so that copying one user's ciphertext onto another user's row
//! does not yield a usable credential.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// Length of the raw AES-256 key in bytes.
const KEY_LEN: usize = 32;

/// Why a sealing key could not be loaded or created. Every variant names where the key
/// was looked for and never carries any of the key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{origin}: not found")]
    Missing { origin: String },
    #[error("{origin}: expected 64 hex characters (a 32-byte key), found {found} characters")]
    WrongLength { origin: String, found: usize },
    #[error("{origin}: the key is not hexadecimal")]
    NotHex { origin: String },
    #[error("{origin}: already exists; refusing to overwrite a sealing key")]
    AlreadyExists { origin: String },
    #[error("{origin}: {source}")]
    Io {
        origin: String,
        #[source]
        source: io::Error,
    },
    #[error("the system random number generator failed")]
    Random,
}

/// Why sealing or opening failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The tag did not verify: a different key, a different row binding (AAD), or
    /// modified bytes. AES-GCM cannot tell these apart, and neither should we.
    #[error("sealed data does not open (wrong key, wrong binding or tampered)")]
    Decrypt,
    /// Shorter than a nonce plus a tag, so it cannot be a sealed value at all.
    #[error("sealed data is truncated")]
    Truncated,
    /// The system random number generator failed; nothing was sealed.
    #[error("the system random number generator failed")]
    Random,
    /// The plaintext is too long for one AES-GCM message.
    #[error("plaintext too long to seal")]
    TooLong,
}

/// The AES-256-GCM key that seals credentials at rest.
pub struct SealingKey {
    key: LessSafeKey,
}

impl fmt::Debug for SealingKey {
    /// Prints only the algorithm, so that a key can sit in a logged struct safely.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("algorithm", &"AES-256-GCM")
            .finish_non_exhaustive()
    }
}

impl SealingKey {
    /// Reads a key file holding 64 hex characters (surrounding whitespace allowed,
    /// so a trailing newline from an editor or `echo` does not matter).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let origin = format!("key file {}", path.display());
        match fs::read_to_string(path) {
            Ok(text) => Self::from_hex(&text, origin),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(KeyError::Missing { origin }),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(KeyError::NotHex { origin }),
            Err(source) => Err(KeyError::Io { origin, source }),
        }
    }

    /// Reads the key from an environment variable, in the same format as the key file,
    /// for deployments that inject secrets through the environment.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let origin = format!("environment variable {var}");
        match std::env::var(var) {
            Ok(text) => Self::from_hex(&text, origin),
            Err(std::env::VarError::NotPresent) => Err(KeyError::Missing { origin }),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::NotHex { origin }),
        }
    }

    /// A fresh random key. It returns a `Result` only because the system random
    /// number generator can, in principle, fail.
    pub fn generate() -> Result<Self, KeyError> {
        let bytes = random_bytes::<KEY_LEN>().map_err(|_| KeyError::Random)?;
        Self::from_bytes(&bytes).ok_or(KeyError::Random)
    }

    /// Creates a new key file readable only by its owner. It refuses to replace an
    /// existing file, because overwriting the key would make every sealed credential
    /// unreadable.
    pub fn write_new(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let origin = format!("key file {}", path.display());
        let bytes = random_bytes::<KEY_LEN>().map_err(|_| KeyError::Random)?;
        let key = Self::from_bytes(&bytes).ok_or(KeyError::Random)?;

        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = match options.open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(KeyError::AlreadyExists { origin })
            }
            Err(source) => return Err(KeyError::Io { origin, source }),
        };
        let mut text = hex::encode(bytes);
        text.push('\n');
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyError::Io {
                origin: origin.clone(),
                source,
            })?;
        Ok(key)
    }

    fn from_hex(text: &str, origin: String) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != 2 * KEY_LEN {
            return Err(KeyError::WrongLength {
                origin,
                found: text.chars().count(),
            });
        }
        // The decode error would quote the offending character; drop it.
        let bytes = hex::decode(text).map_err(|_| KeyError::NotHex {
            origin: origin.clone(),
        })?;
        Self::from_bytes(&bytes).ok_or(KeyError::WrongLength {
            origin,
            found: text.len(),
        })
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seals `plaintext` bound to `aad`; the output is the 12-byte nonce followed by
    /// ciphertext and tag. Nonces are random: with 96 bits that is safe for far more
    /// credentials than one gateway will ever hold under one key.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| CryptoError::TooLong)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Opens what `seal` produced with the same `aad`.
    ///
    /// The plaintext is returned in a plain `Vec<u8>`: no zeroizing container is
    /// available as a dependency, so callers should keep it short-lived and never log it.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Truncated)?;
        let mut in_out = body.to_vec();
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }
}

/// `N` bytes from the operating system's CSPRNG. A failure is reported rather than
/// papered over: a predictable nonce or secret is worse than a refused operation.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// Compares secrets without a timing signal about where they first differ. (A
/// difference in length is not hidden; lengths of codes and hashes are public.)
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"totp:tenant:alice";

    #[test]
    fn round_trip() {
        let key = SealingKey::generate().unwrap();
        let sealed = key.seal(AAD, b"secret").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 6 + 16);
        assert_eq!(key.open(AAD, &sealed).unwrap(), b"secret");
        // Same plaintext twice gives different ciphertexts (random nonce).
        assert_ne!(sealed, key.seal(AAD, b"secret").unwrap());
        let empty = key.seal(AAD, b"").unwrap();
        assert_eq!(key.open(AAD, &empty).unwrap(), b"");
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = SealingKey::generate().unwrap().seal(AAD, b"x").unwrap();
        let other = SealingKey::generate().unwrap();
        assert_eq!(other.open(AAD, &sealed), Err(CryptoError::Decrypt));
    }

    #[test]
    fn wrong_aad_fails() {
        let key = SealingKey::generate().unwrap();
        let sealed = key.seal(AAD, b"x").unwrap();
        assert_eq!(
            key.open(b"totp:tenant:mallory", &sealed),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn tampered_fails() {
        let key = SealingKey::generate().unwrap();
        let mut sealed = key.seal(AAD, b"secret").unwrap();
        sealed[NONCE_LEN] ^= 1;
        assert_eq!(key.open(AAD, &sealed), Err(CryptoError::Decrypt));
    }

    #[test]
    fn truncated_input() {
        let key = SealingKey::generate().unwrap();
        assert_eq!(key.open(AAD, &[]), Err(CryptoError::Truncated));
        assert_eq!(key.open(AAD, &[0; 27]), Err(CryptoError::Truncated));
        assert_eq!(key.open(AAD, &[0; 28]), Err(CryptoError::Decrypt));
    }

    #[test]
    fn key_file_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        fs::write(&good, format!("  {hex_key}\n\n")).unwrap();
        let key = SealingKey::from_file(&good).unwrap();
        let sealed = key.seal(AAD, b"x").unwrap();
        assert_eq!(
            SealingKey::from_file(&good)
                .unwrap()
                .open(AAD, &sealed)
                .unwrap(),
            b"x"
        );

        let missing = dir.path().join("missing");
        assert!(matches!(
            SealingKey::from_file(&missing),
            Err(KeyError::Missing { .. })
        ));

        let short = dir.path().join("short");
        fs::write(&short, "0011").unwrap();
        let err = SealingKey::from_file(&short).unwrap_err();
        assert!(matches!(err, KeyError::WrongLength { found: 4, .. }));
        assert!(err.to_string().contains("short"), "{err}");

        let not_hex = dir.path().join("nothex");
        let bad = format!("{}zz", &hex_key[..62]);
        fs::write(&not_hex, &bad).unwrap();
        let err = SealingKey::from_file(&not_hex).unwrap_err();
        assert!(matches!(err, KeyError::NotHex { .. }));
        assert!(!err.to_string().contains(&bad[..20]), "{err}");

        assert!(matches!(
            SealingKey::from_file(dir.path()),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn env_var_missing_is_named() {
        let err = SealingKey::from_env("SEKISHO_TEST_SURELY_UNSET_KEY_VAR").unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }));
        assert!(err
            .to_string()
            .contains("SEKISHO_TEST_SURELY_UNSET_KEY_VAR"));
    }

    #[test]
    fn write_new_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealing.key");
        let key = SealingKey::write_new(&path).unwrap();
        let sealed = key.seal(AAD, b"x").unwrap();
        let before = fs::read(&path).unwrap();
        assert!(matches!(
            SealingKey::write_new(&path),
            Err(KeyError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), before);
        let reread = SealingKey::from_file(&path).unwrap();
        assert_eq!(reread.open(AAD, &sealed).unwrap(), b"x");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn debug_is_redacted() {
        let key = SealingKey::from_hex(&"ab".repeat(32), "test".into()).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
    }

    #[test]
    fn helpers() {
        assert!(ct_eq(b"123456", b"123456"));
        assert!(!ct_eq(b"123456", b"123457"));
        assert!(!ct_eq(b"123456", b"12345"));
        let a = random_bytes::<16>().unwrap();
        let b = random_bytes::<16>().unwrap();
        assert_ne!(a, b);
    }
}
