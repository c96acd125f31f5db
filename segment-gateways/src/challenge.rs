//! Open challenges: what a Begin promised, kept in memory until its Complete.
//!
//! A challenge is taken out of the table by the first Complete that names it, so
//! its nonces are single use whatever the outcome; it is refused after its expiry
//! and when another device presents it. Challenges live in the replica that issued
//! them (an endpoint talks to one replica for the seconds a logon takes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sekisho_policy_engine::{Action, FactorSet, Via};

use crate::credentials::CardsAndTotp;
use crate::crypto::{random_bytes, CryptoError};

/// The nonce-bearing factors and the names their nonces go by on the wire.
pub const CARD_NONCE: &str = "card";

#[derive(Debug, Clone)]
pub struct Challenge {
    pub device: String,
    pub user: String,
    pub action: Action,
    pub via: Via,
    pub upstream: FactorSet,
    /// Factor name (`card`, `face`, `vein`) → the 32-byte nonce to sign.
    pub nonces: HashMap<&'static str, [u8; 32]>,
    pub policy_version: String,
    /// The user's cards and TOTP credential as Begin read them, for the Complete.
    pub material: Arc<CardsAndTotp>,
    pub expires: Instant,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Unknown, already used, expired or issued to another device: one answer for
    /// all, so a guesser learns nothing.
    #[error("challenge_invalid")]
    Invalid,
    #[error("too many open challenges")]
    Full,
    #[error("the system random number generator failed")]
    Random,
}

pub struct Challenges {
    open: Mutex<HashMap<String, Challenge>>,
    ttl: Duration,
    max_open: usize,
}

impl Challenges {
    pub fn new(ttl: Duration, max_open: usize) -> Self {
        Challenges {
            open: Mutex::new(HashMap::new()),
            ttl,
            max_open,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh nonce for one factor of a challenge.
    pub fn nonce() -> Result<[u8; 32], CryptoError> {
        random_bytes::<32>()
    }

    /// Stores a challenge under a new random id, sweeping expired ones when the table
    /// is full.
    pub fn insert(&self, challenge: Challenge) -> Result<String, ChallengeError> {
        let id = random_bytes::<16>()
            .map(hex::encode)
            .map_err(|_| ChallengeError::Random)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.max_open {
            let now = Instant::now();
            open.retain(|_, c| c.expires > now);
            if open.len() >= self.max_open {
                return Err(ChallengeError::Full);
            }
        }
        open.insert(id.clone(), challenge);
        Ok(id)
    }

    /// Removes and returns the challenge if it is open, unexpired and was issued to
    /// `device`. A challenge presented by another device is left for its own.
    pub fn take(&self, id: &str, device: &str) -> Result<Challenge, ChallengeError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match open.get(id) {
            Some(c) if c.device == device => {}
            _ => return Err(ChallengeError::Invalid),
        }
        let c = open.remove(id).ok_or(ChallengeError::Invalid)?;
        if c.expires <= Instant::now() {
            return Err(ChallengeError::Invalid);
        }
        Ok(c)
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(device: &str, ttl: Duration) -> Challenge {
        Challenge {
            device: device.into(),
            user: "u".into(),
            action: Action::Logon,
            via: Via::Console,
            upstream: FactorSet::EMPTY,
            nonces: HashMap::new(),
            policy_version: "v1".into(),
            material: Arc::default(),
            expires: Instant::now() + ttl,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn single_use_and_bound_to_the_device() {
        let t = Challenges::new(Duration::from_secs(60), 10);
        let id = t.insert(challenge("d1", Duration::from_secs(60))).unwrap();
        assert_eq!(t.take(&id, "d2").unwrap_err(), ChallengeError::Invalid);
        assert!(t.take(&id, "d1").is_ok());
        assert_eq!(t.take(&id, "d1").unwrap_err(), ChallengeError::Invalid);
        assert_eq!(t.take("nope", "d1").unwrap_err(), ChallengeError::Invalid);
    }

    #[test]
    fn expired_is_refused_and_swept_when_full() {
        let t = Challenges::new(Duration::from_secs(60), 2);
        let id = t.insert(challenge("d", Duration::ZERO)).unwrap();
        assert_eq!(t.take(&id, "d").unwrap_err(), ChallengeError::Invalid);
        t.insert(challenge("d", Duration::ZERO)).unwrap();
        t.insert(challenge("d", Duration::ZERO)).unwrap();
        // Full of expired ones: the sweep makes room.
        t.insert(challenge("d", Duration::from_secs(60))).unwrap();
        assert_eq!(t.len(), 1);
        t.insert(challenge("d", Duration::from_secs(60))).unwrap();
        assert_eq!(
            t.insert(challenge("d", Duration::from_secs(60)))
                .unwrap_err(),
            ChallengeError::Full
        );
    }
}
