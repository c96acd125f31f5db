//! The tier's card trust as configured files (`[cards]`), re-read when they change.
//!
//! A CA publishes a new CRL every day or so, and a lost card is revoked in the next
//! one. Read only at startup, a revocation would reach the gateway at its next
//! restart, and an out-of-date CRL would keep every card of its CA `unavailable`
//! until someone restarted it. So the files are looked at every
//! `cards.reload_secs`, and a changed set is loaded in full and swapped in whole:
//! a file that fails to load (half-copied, wrong CA) leaves the trust in force as it
//! was, and is tried again once it changes again. Each swap is journaled, so the
//! trail says which revocation lists were in force when.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use sekisho_policy_engine::audit::Outcome;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::CardsConfig;
use crate::factors::card::{CardTrust, CardTrustError};
use crate::logon::Gateway;

/// What tells a file apart from the one loaded before: its modification time and
/// length (reading a city's CRL, tens of MiB for JPKI, every tick to hash it would
/// cost more than the check is worth). `None`: the file could not be looked at.
type Stamp = Option<(SystemTime, u64)>;

/// The trust built from `[cards]`, and the files it was built from.
#[derive(Debug)]
pub struct CardFiles {
    config: CardsConfig,
    current: RwLock<Arc<CardTrust>>,
    /// The stamps of the files as last tried, whether that load succeeded or not:
    /// a broken file is reported once, not every tick.
    tried: Mutex<Vec<Stamp>>,
}

impl CardFiles {
    /// Loads the configured CAs and CRLs; `None` when no CA is configured (no card
    /// can be trusted on this tier).
    pub fn load(config: &CardsConfig) -> Result<Option<CardFiles>, CardTrustError> {
        if config.ca.is_empty() && config.mynumber_ca.is_empty() {
            return Ok(None);
        }
        let stamps = stamps(config);
        let trust = build(config)?;
        Ok(Some(CardFiles {
            config: config.clone(),
            current: RwLock::new(Arc::new(trust)),
            tried: Mutex::new(stamps),
        }))
    }

    /// The trust in force. Callers hold it for one check, so a swap never changes
    /// the anchors or CRLs under a check that is running.
    pub fn current(&self) -> Arc<CardTrust> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the files when any of them changed since they were last tried.
    /// `Ok(true)`: a new trust is in force. `Ok(false)`: nothing changed. An error
    /// leaves the trust in force unchanged.
    pub fn reload_if_changed(&self) -> Result<bool, CardTrustError> {
        let now = stamps(&self.config);
        {
            let mut tried = self.tried.lock().unwrap_or_else(PoisonError::into_inner);
            if *tried == now {
                return Ok(false);
            }
            *tried = now;
        }
        let trust = build(&self.config)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(trust);
        Ok(true)
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        files(&self.config)
    }
}

fn files(config: &CardsConfig) -> impl Iterator<Item = &PathBuf> {
    config
        .ca
        .iter()
        .chain(&config.mynumber_ca)
        .chain(&config.crl)
}

fn stamps(config: &CardsConfig) -> Vec<Stamp> {
    files(config)
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn build(config: &CardsConfig) -> Result<CardTrust, CardTrustError> {
    CardTrust::from_pem_files(&config.ca, &config.mynumber_ca, &config.crl)
}

/// The task that looks at the card files every `interval`.
pub struct CardReloader {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl CardReloader {
    pub fn spawn(gateway: Arc<Gateway>, interval: Duration) -> CardReloader {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is now: the files were just loaded
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = ticks.tick() => {}
                }
                reload(&gateway).await;
            }
        });
        CardReloader {
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "card trust reloader ended abnormally");
        }
    }
}

/// One look at the card files: a changed set is loaded (off the runtime: a JPKI
/// CRL takes a while to parse), swapped in and journaled as `card_trust_reload`,
/// with `allow` for a swap and `error` (and the reason) for a set that failed to
/// load. Returns whether a new trust is in force.
pub async fn reload(gateway: &Arc<Gateway>) -> bool {
    let Some(cards) = gateway.cards.clone() else {
        return false;
    };
    let loaded = tokio::task::spawn_blocking({
        let cards = cards.clone();
        move || cards.reload_if_changed()
    })
    .await;
    let (outcome, detail) = match loaded {
        Ok(Ok(false)) => return false,
        Ok(Ok(true)) => {
            let until = cards.current().crls_valid_until();
            tracing::info!(crls_valid_until = ?until, "card CAs and CRLs re-read: the new set is in force");
            let mut detail = BTreeMap::new();
            if let Some(until) = until {
                detail.insert("crls_valid_until".to_string(), until.as_secs().to_string());
            }
            (Outcome::Allow, detail)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "card CAs or CRLs changed but cannot be loaded: the set loaded before stays in force");
            (
                Outcome::Error,
                BTreeMap::from([("error".to_string(), e.to_string())]),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "loading the card CAs and CRLs ended abnormally");
            return false;
        }
    };
    let mut event = gateway.event("card_trust_reload", outcome);
    event.detail = detail;
    event.detail.insert(
        "files".to_string(),
        cards
            .files()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    if let Err(e) = gateway.record(event).await {
        tracing::error!(error = %e, "journaling a card trust reload failed");
    }
    outcome == Outcome::Allow
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factors::card::testing::TestCa;

    fn write(path: &std::path::Path, pem: &str) {
        std::fs::write(path, pem).unwrap();
    }

    #[test]
    fn a_changed_file_is_loaded_and_a_broken_one_keeps_the_trust_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, other_file) = (dir.path().join("ca.pem"), dir.path().join("b.pem"));
        write(&ca_file, &TestCa::new("card CA").cert_pem());
        let config = CardsConfig {
            ca: vec![ca_file.clone()],
            ..Default::default()
        };
        let cards = CardFiles::load(&config).unwrap().unwrap();
        let first = cards.current();
        assert!(!cards.reload_if_changed().unwrap(), "nothing changed");
        assert!(Arc::ptr_eq(&first, &cards.current()));

        // A half-written file: refused, the trust before stays, and it is not
        // tried again until it changes.
        write(&ca_file, "-----BEGIN CERTIFICATE-----\nMIIB");
        assert!(cards.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&first, &cards.current()));
        assert!(!cards.reload_if_changed().unwrap());

        // The finished file (another CA, so another length): swapped in.
        write(&other_file, &TestCa::new("the new card CA").cert_pem());
        std::fs::rename(&other_file, &ca_file).unwrap();
        assert!(cards.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &cards.current()));
    }

    #[test]
    fn no_ca_means_no_card_trust() {
        assert!(CardFiles::load(&CardsConfig::default()).unwrap().is_none());
    }
}
