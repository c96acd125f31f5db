//! The tier's credential store: registered devices and each user's credentials.
//!
//! What is at rest follows DESIGN.md §4: PINs and standalone passwords as Argon2id
//! hashes, TOTP secrets and biometric templates sealed with AES-256-GCM under a key
//! that never enters the database, card certificates (never a private key), and
//! emergency OTPs as hashes. Every sealed value is bound to its row (tenant, tier,
//! user, factor) through the AEAD's associated data, so a ciphertext copied into
//! another user's row does not open.

use std::collections::HashMap;

use sekisho_policy_engine::store::StoreError;
use sekisho_policy_engine::{Capabilities, DeviceKind, Factor, FactorSet};
use sqlx::{AnyConnection, Row};

use crate::crypto::{CryptoError, SealingKey};
use crate::db::{db_err, now_ms, Db};
use crate::factors::biometric::{BiometricFactor, DeviceKey};
use crate::factors::card::CardKind;
use crate::factors::totp::{TotpAlgorithm, TotpParams};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the credential key does not match the one this store was created with (tenant '{tenant}', tier '{tier}'): check key_file or the key environment variable")]
    WrongKey { tenant: String, tier: String },
    #[error("stored {what} of user '{user}' cannot be read: {why}")]
    Corrupt {
        what: &'static str,
        user: String,
        why: String,
    },
    #[error("cannot seal a credential: {0}")]
    Seal(CryptoError),
    /// A card is one person's: enrolled for two, either could log on as the other.
    #[error("this card certificate is already enrolled for user '{holder}'")]
    CardOfAnotherUser { holder: String },
}

/// A device as this gateway knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayDevice {
    pub id: String,
    pub kind: DeviceKind,
    pub capabilities: Capabilities,
    pub location: String,
    /// The capture device's key for biometric proofs.
    pub capture_key: Option<DeviceKey>,
}

/// A user's TOTP credential, decrypted for one verification.
pub struct TotpCredential {
    pub secret: Vec<u8>,
    pub params: TotpParams,
    pub last_step: Option<u64>,
    /// The secret as stored (sealed under a fresh nonce at every enrollment): what
    /// the commit compares to be sure the code was checked against the current one.
    pub sealed: String,
}

impl std::fmt::Debug for TotpCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpCredential")
            .field("params", &self.params)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// A user's cards and TOTP credential, as a Complete checks them.
#[derive(Debug, Default)]
pub struct CardsAndTotp {
    pub cards: Vec<EnrolledCard>,
    pub totp: Option<TotpCredential>,
}

#[derive(Debug, Clone)]
pub struct EnrolledCard {
    pub certificate: Vec<u8>,
    pub kind: CardKind,
}

#[derive(Debug, Clone)]
pub struct EmergencyOtpRow {
    pub code_hash: String,
    pub expires_at_ms: i64,
    pub used: bool,
}

/// What a user has on this tier, as the admin API and Begin see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrollment {
    pub factors: FactorSet,
    pub cards: u32,
    pub face_templates: u32,
    pub vein_templates: u32,
    /// An unused, unexpired emergency OTP exists.
    pub emergency_otp_active: bool,
}

/// The credential store of one tenant and tier.
#[derive(Clone)]
pub struct CredentialStore {
    db: Db,
    key: std::sync::Arc<SealingKey>,
    devices: std::sync::Arc<DeviceCache>,
    typical: std::sync::Arc<tokio::sync::Mutex<Option<(FactorSet, std::time::Instant)>>>,
}

/// How long the tier's most common enrolment is reused before it is counted again.
const TYPICAL_ENROLMENT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// How long a device read from the store is trusted before it is read again: a
/// registration changed through another replica (a stolen terminal deregistered)
/// is seen within this time. The cache is for the two reads of every logon and a
/// terminal's bursts of unlocks; a terminal seldom logs on twice in 10 s otherwise,
/// so a longer time would buy little and leave a removed terminal working longer.
const DEVICE_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Registered devices, read twice per logon and changed almost never.
type DeviceCache =
    std::sync::RwLock<std::collections::HashMap<String, (GatewayDevice, std::time::Instant)>>;

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

const KEY_CHECK: &[u8] = b"sekisho credential key check v1";

impl CredentialStore {
    /// Binds the store to its key: the first open records a value sealed with it;
    /// later opens must open that value, or fail with [`CredentialError::WrongKey`].
    pub async fn open(db: Db, key: SealingKey) -> Result<CredentialStore, CredentialError> {
        let store = CredentialStore {
            db,
            key: std::sync::Arc::new(key),
            devices: std::sync::Arc::default(),
            typical: std::sync::Arc::default(),
        };
        if store.key_check().await?.is_none() {
            let sealed = store
                .key
                .seal(&store.aad("", "key_check"), KEY_CHECK)
                .map_err(CredentialError::Seal)?;
            // Two gateways starting together on a new store: the first one's value
            // stays, and the second is checked against it below.
            sqlx::query(
                "INSERT INTO gw_meta (tenant, tier, name, value) VALUES ($1, $2, 'key_check', $3)
                 ON CONFLICT (tenant, tier, name) DO NOTHING",
            )
            .bind(store.tenant())
            .bind(store.tier_name())
            .bind(hex::encode(sealed))
            .execute(&store.db.pool)
            .await
            .map_err(db_err("writing the key check"))?;
        }
        match store.key_check().await? {
            Some(true) => Ok(store),
            _ => Err(CredentialError::WrongKey {
                tenant: store.db.tenant.to_string(),
                tier: store.tier_name().into(),
            }),
        }
    }

    /// Whether `db` is bound to a key already (see [`CredentialStore::open`]).
    pub async fn is_sealed(db: &Db) -> Result<bool, CredentialError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM gw_meta WHERE tenant = $1 AND tier = $2 AND name = 'key_check'",
        )
        .bind(&*db.tenant)
        .bind(db.tier.name())
        .fetch_optional(&db.pool)
        .await
        .map_err(db_err("reading the key check"))?;
        Ok(found.is_some())
    }

    /// Whether the stored key check opens with this key; `None` when there is none.
    async fn key_check(&self) -> Result<Option<bool>, CredentialError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT value FROM gw_meta WHERE tenant = $1 AND tier = $2 AND name = 'key_check'",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_err("reading the key check"))?;
        Ok(found.map(|hex_value| {
            hex::decode(hex_value)
                .ok()
                .and_then(|sealed| self.key.open(&self.aad("", "key_check"), &sealed).ok())
                .is_some_and(|v| v == KEY_CHECK)
        }))
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn tenant(&self) -> &str {
        &self.db.tenant
    }

    pub(crate) fn tier_name(&self) -> &'static str {
        self.db.tier.name()
    }

    /// Associated data binding a sealed value to its row.
    fn aad(&self, user: &str, what: &str) -> Vec<u8> {
        [self.tenant(), self.tier_name(), user, what]
            .join("\0")
            .into_bytes()
    }

    fn seal(&self, user: &str, what: &str, plain: &[u8]) -> Result<String, CredentialError> {
        let sealed = self
            .key
            .seal(&self.aad(user, what), plain)
            .map_err(CredentialError::Seal)?;
        Ok(hex::encode(sealed))
    }

    fn unseal(
        &self,
        user: &str,
        what: &'static str,
        stored: &str,
    ) -> Result<Vec<u8>, CredentialError> {
        let sealed = hex::decode(stored).map_err(corrupt(what, user))?;
        self.key
            .open(&self.aad(user, what), &sealed)
            .map_err(corrupt(what, user))
    }

    // ---------------------------------------------------------------------------
    // Devices

    /// Registers or updates a device of this tier, in the caller's transaction;
    /// true when it is new. Call [`CredentialStore::forget_device`] once committed.
    pub async fn register_device(
        &self,
        conn: &mut AnyConnection,
        device: &GatewayDevice,
    ) -> Result<bool, CredentialError> {
        let caps = serde_json::to_string(&device.capabilities.names()).unwrap_or_default();
        let key = device
            .capture_key
            .as_ref()
            .map(|k| hex::encode(k.to_spki_der()))
            .unwrap_or_default();
        let existed: Option<i64> = sqlx::query_scalar(
            "SELECT registered_at FROM gw_devices WHERE tenant = $1 AND tier = $2 AND id = $3",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(&device.id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err("reading a device"))?;
        sqlx::query(
            "INSERT INTO gw_devices (tenant, tier, id, kind, capabilities, location, capture_key, registered_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, tier, id) DO UPDATE SET kind = excluded.kind,
               capabilities = excluded.capabilities, location = excluded.location,
               capture_key = excluded.capture_key",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(&device.id)
        .bind(device.kind.name())
        .bind(caps)
        .bind(&device.location)
        .bind(key)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db_err("registering a device"))?;
        Ok(existed.is_none())
    }

    pub async fn device(&self, id: &str) -> Result<Option<GatewayDevice>, CredentialError> {
        let cached = self
            .devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|(_, read)| read.elapsed() < DEVICE_CACHE_TTL)
            .map(|(d, _)| d.clone());
        if cached.is_some() {
            return Ok(cached);
        }
        let found = self.read_device(id).await?;
        if let Some(d) = &found {
            let mut cache = self.devices.write().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= 100_000 {
                cache.clear();
            }
            cache.insert(id.to_string(), (d.clone(), std::time::Instant::now()));
        }
        Ok(found)
    }

    /// Removes a device (a stolen or retired terminal): its certificate is refused
    /// from then on, and its open session, if any, ends with it. Returns whether it
    /// was registered and whether a session ended, in the caller's transaction
    /// (then [`CredentialStore::forget_device`]). Other replicas stop accepting it
    /// within [`DEVICE_CACHE_TTL`].
    pub async fn deregister_device(
        &self,
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<(bool, bool), CredentialError> {
        let removed =
            sqlx::query("DELETE FROM gw_devices WHERE tenant = $1 AND tier = $2 AND id = $3")
                .bind(self.tenant())
                .bind(self.tier_name())
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(db_err("removing a device"))?
                .rows_affected()
                > 0;
        let ended = sqlx::query(
            "UPDATE gw_sessions SET state = 'ended', end_reason = 'device_deregistered', updated_at = $4
             WHERE tenant = $1 AND tier = $2 AND device = $3 AND state <> 'ended'",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(id)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db_err("ending a removed device's session"))?
        .rows_affected()
            > 0;
        Ok((removed, ended))
    }

    /// Drops `id` from the device cache, after a change to it committed: a device
    /// read between the change and its commit would otherwise be served as it was.
    pub fn forget_device(&self, id: &str) {
        self.devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Removes a user's credentials on this tier, in the caller's transaction: those of
    /// `factor`, or all of them with `None` (someone who left). For `card`, every
    /// card, or only the one with `card_fingerprint`; `mynumber_card` means the My
    /// Number cards. Returns how many were removed.
    pub async fn remove_credentials(
        &self,
        conn: &mut AnyConnection,
        user: &str,
        factor: Option<Factor>,
        card_fingerprint: Option<&str>,
    ) -> Result<u64, CredentialError> {
        // Each table to clear, and the one column (with its value) that narrows it.
        let cards = match card_fingerprint {
            Some(f) => ("gw_cards", Some(("fingerprint", f))),
            None => ("gw_cards", None),
        };
        let targets: Vec<(&str, Option<(&str, &str)>)> = match factor {
            None => vec![
                ("gw_secrets", None),
                ("gw_totp", None),
                cards,
                ("gw_biometrics", None),
                ("gw_emergency_otps", None),
            ],
            Some(f @ (Factor::Password | Factor::Pin)) => {
                vec![("gw_secrets", Some(("factor", f.name())))]
            }
            Some(f @ (Factor::Face | Factor::Vein)) => {
                vec![("gw_biometrics", Some(("factor", f.name())))]
            }
            Some(Factor::Totp) => vec![("gw_totp", None)],
            Some(Factor::EmergencyOtp) => vec![("gw_emergency_otps", None)],
            Some(Factor::Card) => vec![cards],
            Some(Factor::MynumberCard) if card_fingerprint.is_none() => {
                vec![("gw_cards", Some(("kind", "mynumber")))]
            }
            Some(Factor::MynumberCard) => vec![cards],
        };
        let mut removed = 0;
        for (table, narrow) in targets {
            let mut sql =
                format!("DELETE FROM {table} WHERE tenant = $1 AND tier = $2 AND user_id = $3");
            if let Some((column, _)) = narrow {
                sql.push_str(&format!(" AND {column} = $4"));
            }
            let mut q = sqlx::query(&sql)
                .bind(self.tenant())
                .bind(self.tier_name())
                .bind(user);
            if let Some((_, value)) = narrow {
                q = q.bind(value);
            }
            removed += q
                .execute(&mut *conn)
                .await
                .map_err(db_err("removing credentials"))?
                .rows_affected();
        }
        Ok(removed)
    }

    async fn read_device(&self, id: &str) -> Result<Option<GatewayDevice>, CredentialError> {
        let row = sqlx::query(
            "SELECT kind, capabilities, location, capture_key FROM gw_devices
             WHERE tenant = $1 AND tier = $2 AND id = $3",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_err("reading a device"))?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get(0).map_err(corrupt("device", id))?;
        let caps: String = row.try_get(1).map_err(corrupt("device", id))?;
        let location: String = row.try_get(2).map_err(corrupt("device", id))?;
        let key: String = row.try_get(3).map_err(corrupt("device", id))?;
        let caps: Vec<String> = serde_json::from_str(&caps).map_err(corrupt("device", id))?;
        let capture_key = if key.is_empty() {
            None
        } else {
            let der = hex::decode(&key).map_err(corrupt("device", id))?;
            Some(DeviceKey::from_spki_der(&der).map_err(corrupt("device", id))?)
        };
        Ok(Some(GatewayDevice {
            id: id.to_string(),
            kind: kind.parse().map_err(corrupt("device", id))?,
            capabilities: Capabilities::parse_names(&caps).map_err(corrupt("device", id))?,
            location,
            capture_key,
        }))
    }

    // ---------------------------------------------------------------------------
    // Enrollment

    /// Sets a PIN or standalone password (an Argon2id PHC string).
    pub async fn set_secret(
        &self,
        conn: &mut AnyConnection,
        user: &str,
        factor: Factor,
        phc: &str,
    ) -> Result<(), CredentialError> {
        sqlx::query(
            "INSERT INTO gw_secrets (tenant, tier, user_id, factor, phc, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant, tier, user_id, factor) DO UPDATE SET phc = excluded.phc, updated_at = excluded.updated_at",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(factor.name())
        .bind(phc)
        .bind(now_ms())
        .execute(conn)
        .await
        .map_err(db_err("storing a secret"))?;
        Ok(())
    }

    pub async fn secret(
        &self,
        user: &str,
        factor: Factor,
    ) -> Result<Option<String>, CredentialError> {
        sqlx::query_scalar(
            "SELECT phc FROM gw_secrets WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND factor = $4",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(factor.name())
        .fetch_optional(&self.db.pool)
        .await
        .map_err(|e| db_err("reading a secret")(e).into())
    }

    /// Replaces the user's TOTP secret (the replay guard starts afresh).
    pub async fn set_totp(
        &self,
        conn: &mut AnyConnection,
        user: &str,
        secret: &[u8],
        params: &TotpParams,
    ) -> Result<(), CredentialError> {
        let sealed = self.seal(user, "totp", secret)?;
        sqlx::query(
            "INSERT INTO gw_totp (tenant, tier, user_id, secret, algorithm, digits, last_step, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)
             ON CONFLICT (tenant, tier, user_id) DO UPDATE SET secret = excluded.secret,
               algorithm = excluded.algorithm, digits = excluded.digits, last_step = NULL,
               updated_at = excluded.updated_at",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(sealed)
        .bind(params.algorithm().uri_name().to_ascii_lowercase())
        .bind(i64::from(params.digits()))
        .bind(now_ms())
        .execute(conn)
        .await
        .map_err(db_err("storing a TOTP secret"))?;
        Ok(())
    }

    pub async fn totp(&self, user: &str) -> Result<Option<TotpCredential>, CredentialError> {
        let row = sqlx::query(
            "SELECT secret, algorithm, digits, last_step FROM gw_totp
             WHERE tenant = $1 AND tier = $2 AND user_id = $3",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_err("reading a TOTP secret"))?;
        let Some(row) = row else { return Ok(None) };
        let sealed: String = row.try_get(0).map_err(corrupt("totp", user))?;
        let algorithm: String = row.try_get(1).map_err(corrupt("totp", user))?;
        let digits: i64 = row.try_get(2).map_err(corrupt("totp", user))?;
        let last_step: Option<i64> = row.try_get(3).map_err(corrupt("totp", user))?;
        self.totp_credential(user, sealed, &algorithm, digits, last_step)
            .map(Some)
    }

    fn totp_credential(
        &self,
        user: &str,
        sealed: String,
        algorithm: &str,
        digits: i64,
        last_step: Option<i64>,
    ) -> Result<TotpCredential, CredentialError> {
        let algorithm = match algorithm {
            "sha1" => TotpAlgorithm::Sha1,
            "sha256" => TotpAlgorithm::Sha256,
            other => {
                return Err(corrupt("totp", user)(format!(
                    "unknown algorithm '{other}'"
                )))
            }
        };
        let digits = u32::try_from(digits).map_err(corrupt("totp", user))?;
        let params = TotpParams::new(algorithm, digits, 30).map_err(corrupt("totp", user))?;
        Ok(TotpCredential {
            secret: self.unseal(user, "totp", &sealed)?,
            params,
            last_step: last_step.and_then(|s| u64::try_from(s).ok()),
            sealed,
        })
    }

    /// Adds a card certificate (DER); false when it was already enrolled for `user`,
    /// and [`CredentialError::CardOfAnotherUser`] when for someone else.
    pub async fn add_card(
        &self,
        conn: &mut AnyConnection,
        user: &str,
        der: &[u8],
        kind: CardKind,
        not_after_ms: i64,
    ) -> Result<bool, CredentialError> {
        let fingerprint = card_fingerprint(der);
        let done = sqlx::query(
            "INSERT INTO gw_cards (tenant, tier, user_id, fingerprint, kind, certificate, not_after, enrolled_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, tier, fingerprint) DO NOTHING",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(&fingerprint)
        .bind(card_kind_name(kind))
        .bind(hex::encode(der))
        .bind(not_after_ms)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(db_err("enrolling a card"))?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        // Someone holds it already (the unique index `gw_cards_one_holder` decides,
        // so two enrolments at once cannot both win): the user, or another.
        match self.card_holder_in(conn, &fingerprint).await? {
            Some(holder) if holder != user => Err(CredentialError::CardOfAnotherUser { holder }),
            _ => Ok(false),
        }
    }

    /// Stores normalised templates (sealed), after the user's existing ones or
    /// instead of them.
    pub async fn add_templates(
        &self,
        conn: &mut AnyConnection,
        user: &str,
        factor: BiometricFactor,
        templates: &[Vec<f32>],
        replace: bool,
    ) -> Result<(), CredentialError> {
        let what = factor.name();
        let sealed: Vec<String> = templates
            .iter()
            .map(|t| {
                let bytes: Vec<u8> = t.iter().flat_map(|x| x.to_le_bytes()).collect();
                self.seal(user, what, &bytes)
            })
            .collect::<Result<_, _>>()?;
        if replace {
            sqlx::query(
                "DELETE FROM gw_biometrics WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND factor = $4",
            )
            .bind(self.tenant())
            .bind(self.tier_name())
            .bind(user)
            .bind(what)
            .execute(&mut *conn)
            .await
            .map_err(db_err("replacing templates"))?;
        }
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(seq) FROM gw_biometrics WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND factor = $4",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(what)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_err("numbering templates"))?;
        let now = now_ms();
        for (seq, s) in (next.map_or(0, |n| n + 1)..).zip(sealed) {
            sqlx::query(
                "INSERT INTO gw_biometrics (tenant, tier, user_id, factor, seq, template, enrolled_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(self.tenant())
            .bind(self.tier_name())
            .bind(user)
            .bind(what)
            .bind(seq)
            .bind(s)
            .bind(now)
            .execute(&mut *conn)
            .await
            .map_err(db_err("enrolling a template"))?;
        }
        Ok(())
    }

    pub async fn templates(
        &self,
        user: &str,
        factor: BiometricFactor,
    ) -> Result<Vec<Vec<f32>>, CredentialError> {
        let what = factor.name();
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT template FROM gw_biometrics WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND factor = $4
             ORDER BY seq",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(what)
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_err("reading templates"))?;
        rows.iter()
            .map(|s| {
                let bytes = self.unseal(user, what, s)?;
                if bytes.len() % 4 != 0 {
                    return Err(CredentialError::Corrupt {
                        what,
                        user: user.to_string(),
                        why: "template length is not a whole number of f32".into(),
                    });
                }
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            })
            .collect()
    }

    /// Stores a new emergency OTP hash, replacing any earlier one.
    pub async fn set_emergency_otp(
        &self,
        conn: &mut AnyConnection,
        user: &str,
        code_hash: &str,
        expires_at_ms: i64,
    ) -> Result<(), CredentialError> {
        sqlx::query(
            "INSERT INTO gw_emergency_otps (tenant, tier, user_id, code_hash, issued_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL)
             ON CONFLICT (tenant, tier, user_id) DO UPDATE SET code_hash = excluded.code_hash,
               issued_at = excluded.issued_at, expires_at = excluded.expires_at, used_at = NULL",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(code_hash)
        .bind(now_ms())
        .bind(expires_at_ms)
        .execute(conn)
        .await
        .map_err(db_err("storing an emergency OTP"))?;
        Ok(())
    }

    pub async fn emergency_otp(
        &self,
        user: &str,
    ) -> Result<Option<EmergencyOtpRow>, CredentialError> {
        let row = sqlx::query(
            "SELECT code_hash, expires_at, used_at FROM gw_emergency_otps
             WHERE tenant = $1 AND tier = $2 AND user_id = $3",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_err("reading an emergency OTP"))?;
        let Some(row) = row else { return Ok(None) };
        let used: Option<i64> = row.try_get(2).map_err(corrupt("emergency_otp", user))?;
        Ok(Some(EmergencyOtpRow {
            code_hash: row.try_get(0).map_err(corrupt("emergency_otp", user))?,
            expires_at_ms: row.try_get(1).map_err(corrupt("emergency_otp", user))?,
            used: used.is_some(),
        }))
    }

    /// What the user can present on this tier. `password` is included when
    /// `directory_passwords` (a directory holds every password).
    pub async fn enrollment(
        &self,
        user: &str,
        directory_passwords: bool,
    ) -> Result<Enrollment, CredentialError> {
        Ok(self.stored(user, directory_passwords).await?.0)
    }

    /// What Begin needs, in one round trip: what the user can present (for the
    /// plan), and their cards and TOTP credential, which the Complete checks proofs
    /// against. Reading them here saves the Complete a read; the commit confirms the
    /// TOTP secret is still the one enrolled (a re-enrollment in between refuses the
    /// code), and cards are only ever added (a card enrolled in between is simply not
    /// offered this time).
    ///
    /// A user with nothing stored is what an unknown user looks like too: both are
    /// planned as the tier's typical user, so that a challenge never tells them apart
    /// from one (the engine masks the unknown one with what is sent). They fail at
    /// Complete, as a wrong factor does.
    pub async fn for_logon(
        &self,
        user: &str,
        directory_passwords: bool,
    ) -> Result<(Enrollment, CardsAndTotp), CredentialError> {
        let (mut e, material, any) = self.stored(user, directory_passwords).await?;
        if !any {
            e.factors = e
                .factors
                .union(self.typical_enrollment(directory_passwords).await?);
        }
        Ok((e, material))
    }

    /// The user's enrolment and logon material as stored, and whether anything that
    /// is a factor of its own is stored at all.
    async fn stored(
        &self,
        user: &str,
        directory_passwords: bool,
    ) -> Result<(Enrollment, CardsAndTotp, bool), CredentialError> {
        let mut conn = self
            .db
            .logon_reads
            .get()
            .await
            .map_err(db_err("reading enrolment"))?;
        let rows = sqlx::query(
            "SELECT factor, COUNT(*), '', '', 0, NULL FROM gw_secrets
               WHERE tenant = $1 AND tier = $2 AND user_id = $3 GROUP BY factor
             UNION ALL SELECT 'totp', 1, secret, algorithm, digits, last_step FROM gw_totp
               WHERE tenant = $1 AND tier = $2 AND user_id = $3
             UNION ALL SELECT kind, 1, certificate, '', 0, NULL FROM gw_cards
               WHERE tenant = $1 AND tier = $2 AND user_id = $3
             UNION ALL SELECT factor, COUNT(*), '', '', 0, NULL FROM gw_biometrics
               WHERE tenant = $1 AND tier = $2 AND user_id = $3 GROUP BY factor
             UNION ALL SELECT 'emergency_otp', COUNT(*), '', '', 0, NULL FROM gw_emergency_otps
               WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND used_at IS NULL AND expires_at > $4",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(now_ms())
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err("reading enrolment"))?;
        conn.keep();
        let mut e = Enrollment::default();
        let mut material = CardsAndTotp::default();
        let mut stored = false;
        for row in rows {
            let name: String = row.try_get(0).map_err(db_err("reading enrolment"))?;
            let count: i64 = row.try_get(1).map_err(db_err("reading enrolment"))?;
            if count <= 0 {
                continue;
            }
            // A stored password means nothing while the directory checks passwords.
            stored |= !(name == "emergency_otp" || name == "password" && directory_passwords);
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            match name.as_str() {
                "password" if !directory_passwords => e.factors = e.factors.with(Factor::Password),
                "pin" => e.factors = e.factors.with(Factor::Pin),
                "totp" => {
                    e.factors = e.factors.with(Factor::Totp);
                    let sealed: String = row.try_get(2).map_err(corrupt("totp", user))?;
                    let algorithm: String = row.try_get(3).map_err(corrupt("totp", user))?;
                    let digits: i64 = row.try_get(4).map_err(corrupt("totp", user))?;
                    let last_step: Option<i64> = row.try_get(5).map_err(corrupt("totp", user))?;
                    material.totp =
                        Some(self.totp_credential(user, sealed, &algorithm, digits, last_step)?);
                }
                "card" | "mynumber" => {
                    e.factors = e.factors.with(Factor::Card);
                    e.cards += count;
                    let kind = if name == "mynumber" {
                        e.factors = e.factors.with(Factor::MynumberCard);
                        CardKind::MyNumber
                    } else {
                        CardKind::Card
                    };
                    let cert: String = row.try_get(2).map_err(corrupt("card", user))?;
                    material.cards.push(EnrolledCard {
                        certificate: hex::decode(cert).map_err(corrupt("card", user))?,
                        kind,
                    });
                }
                "face" => {
                    e.factors = e.factors.with(Factor::Face);
                    e.face_templates = count;
                }
                "vein" => {
                    e.factors = e.factors.with(Factor::Vein);
                    e.vein_templates = count;
                }
                "emergency_otp" => e.emergency_otp_active = true,
                _ => {}
            }
        }
        if directory_passwords {
            e.factors = e.factors.with(Factor::Password);
        }
        Ok((e, material, stored))
    }

    /// The enrolment most users of this tier have (the smaller set on a tie), counted
    /// again every [`TYPICAL_ENROLMENT_TTL`]. Only a Begin for a user with nothing
    /// stored waits for the count, at most once per period.
    async fn typical_enrollment(
        &self,
        directory_passwords: bool,
    ) -> Result<FactorSet, CredentialError> {
        let mut typical = self.typical.lock().await;
        if let Some((set, at)) = *typical {
            if at.elapsed() < TYPICAL_ENROLMENT_TTL {
                return Ok(set);
            }
        }
        let rows = sqlx::query(
            "SELECT user_id, factor FROM gw_secrets WHERE tenant = $1 AND tier = $2
             UNION SELECT user_id, 'totp' FROM gw_totp WHERE tenant = $1 AND tier = $2
             UNION SELECT user_id, kind FROM gw_cards WHERE tenant = $1 AND tier = $2
             UNION SELECT user_id, factor FROM gw_biometrics WHERE tenant = $1 AND tier = $2",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .fetch_all(&self.db.pool)
        .await
        .map_err(db_err("counting enrolments"))?;
        let mut by_user: HashMap<String, FactorSet> = HashMap::new();
        for row in rows {
            let user: String = row.try_get(0).map_err(db_err("counting enrolments"))?;
            let name: String = row.try_get(1).map_err(db_err("counting enrolments"))?;
            let factors = match name.as_str() {
                "password" if directory_passwords => FactorSet::EMPTY,
                "mynumber" => FactorSet::EMPTY
                    .with(Factor::Card)
                    .with(Factor::MynumberCard),
                other => FactorSet::parse_names([other]).unwrap_or(FactorSet::EMPTY),
            };
            let set = by_user.entry(user).or_insert(FactorSet::EMPTY);
            *set = set.union(factors);
        }
        let mut counts: HashMap<FactorSet, usize> = HashMap::new();
        for set in by_user.into_values().filter(|s| !s.is_empty()) {
            *counts.entry(set).or_default() += 1;
        }
        let set = counts
            .into_iter()
            .max_by(|(a, n), (b, m)| {
                n.cmp(m)
                    .then(b.len().cmp(&a.len()))
                    .then(b.bits().cmp(&a.bits()))
            })
            .map_or(FactorSet::EMPTY, |(set, _)| set);
        *typical = Some((set, std::time::Instant::now()));
        Ok(set)
    }
}

/// A user of a standalone tier as the gateway stores them (bulk import).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredUser {
    pub id: String,
    pub name: String,
    pub department: String,
    pub role: String,
    pub groups: Vec<String>,
}

impl CredentialStore {
    /// A user of this tier's own directory (`gw_users`), if imported.
    pub async fn user(&self, id: &str) -> Result<Option<StoredUser>, CredentialError> {
        let row = sqlx::query(
            "SELECT name, department, role, \"groups\" FROM gw_users
             WHERE tenant = $1 AND tier = $2 AND id = $3",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_err("reading a user"))?;
        let Some(row) = row else { return Ok(None) };
        let groups: String = row.try_get(3).map_err(corrupt("user", id))?;
        Ok(Some(StoredUser {
            id: id.to_string(),
            name: row.try_get(0).map_err(corrupt("user", id))?,
            department: row.try_get(1).map_err(corrupt("user", id))?,
            role: row.try_get(2).map_err(corrupt("user", id))?,
            groups: serde_json::from_str(&groups).map_err(corrupt("user", id))?,
        }))
    }

    /// Who the card with this SHA-256 fingerprint is enrolled for, if anyone.
    pub async fn card_holder(&self, fingerprint: &str) -> Result<Option<String>, CredentialError> {
        self.card_holder_in(&self.db.pool, fingerprint).await
    }

    /// [`CredentialStore::card_holder`] read through `executor` (a transaction
    /// that is about to enrol the card, so the check and the write see one state).
    async fn card_holder_in<'e>(
        &self,
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        fingerprint: &str,
    ) -> Result<Option<String>, CredentialError> {
        let holder = sqlx::query_scalar(
            "SELECT user_id FROM gw_cards WHERE tenant = $1 AND tier = $2 AND fingerprint = $3
             ORDER BY user_id LIMIT 1",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(fingerprint)
        .fetch_optional(executor)
        .await
        .map_err(db_err("reading a card"))?;
        Ok(holder)
    }

    /// Whether the card with this SHA-256 fingerprint is enrolled for `user`.
    pub async fn has_card(&self, user: &str, fingerprint: &str) -> Result<bool, CredentialError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM gw_cards WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND fingerprint = $4",
        )
        .bind(self.tenant())
        .bind(self.tier_name())
        .bind(user)
        .bind(fingerprint)
        .fetch_optional(&self.db.pool)
        .await
        .map_err(db_err("reading a card"))?;
        Ok(found.is_some())
    }
}

/// A `map_err` adapter: a stored value of `user` that cannot be read, and why.
fn corrupt<'a, E: std::fmt::Display>(
    what: &'static str,
    user: &'a str,
) -> impl Fn(E) -> CredentialError + 'a {
    move |e| CredentialError::Corrupt {
        what,
        user: user.to_string(),
        why: e.to_string(),
    }
}

fn card_kind_name(kind: CardKind) -> &'static str {
    match kind {
        CardKind::Card => "card",
        CardKind::MyNumber => "mynumber",
    }
}

/// How a card certificate is keyed in the store: SHA-256 of its DER, hex.
pub fn card_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factors::totp::TotpParams;
    use sekisho_policy_engine::Tier;

    async fn store(dir: &tempfile::TempDir) -> CredentialStore {
        let url = format!("sqlite://{}", dir.path().join("gw.db").display());
        let db = Db::open(&url, "city", Tier::Lgwan).await.unwrap();
        CredentialStore::open(db, SealingKey::generate().unwrap())
            .await
            .unwrap()
    }

    fn set(names: &[&str]) -> FactorSet {
        FactorSet::parse_names(names.iter().copied()).unwrap()
    }

    #[tokio::test]
    async fn a_card_is_enrolled_for_one_user_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let der = b"stand-in for a certificate's DER";
        let mut c = s.db().acquire().await.unwrap();
        assert!(s
            .add_card(&mut c, "a", der, CardKind::Card, 0)
            .await
            .unwrap());
        assert!(!s
            .add_card(&mut c, "a", der, CardKind::Card, 0)
            .await
            .unwrap());
        let e = s
            .add_card(&mut c, "b", der, CardKind::Card, 0)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CredentialError::CardOfAnotherUser { holder } if holder == "a"),
            "{e}"
        );
        assert_eq!(
            s.card_holder(&card_fingerprint(der))
                .await
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert!(!s.has_card("b", &card_fingerprint(der)).await.unwrap());

        // The store itself refuses a second holder, whoever writes.
        let raw = sqlx::query(
            "INSERT INTO gw_cards (tenant, tier, user_id, fingerprint, kind, certificate, not_after, enrolled_at)
             VALUES ($1, $2, 'c', $3, 'card', '00', 0, 0)",
        )
        .bind(s.tenant())
        .bind(s.tier_name())
        .bind(card_fingerprint(der))
        .execute(&mut *c)
        .await;
        assert!(raw.is_err(), "a second holder was stored");
    }

    #[tokio::test]
    async fn a_user_with_nothing_stored_is_planned_as_the_typical_user() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir).await;
        let planned = |user: &'static str, directory: bool| {
            let s = s.clone();
            async move { s.for_logon(user, directory).await.unwrap().0.factors }
        };
        // An empty tier has no typical user.
        assert_eq!(planned("nobody", false).await, FactorSet::EMPTY);
        assert_eq!(planned("nobody", true).await, set(&["password"]));

        let params = TotpParams::default();
        let mut c = s.db().acquire().await.unwrap();
        for user in ["a", "b"] {
            s.set_secret(&mut c, user, Factor::Pin, "$argon2id$stub")
                .await
                .unwrap();
            s.set_totp(&mut c, user, b"12345678901234567890", &params)
                .await
                .unwrap();
        }
        s.set_secret(&mut c, "c", Factor::Password, "$argon2id$stub")
            .await
            .unwrap();
        // The count is kept for a while; a new one is made here.
        *s.typical.lock().await = None;

        assert_eq!(planned("nobody", false).await, set(&["pin", "totp"]));
        // What an administrator is shown stays what is stored.
        let shown = s.enrollment("nobody", false).await.unwrap().factors;
        assert_eq!(shown, FactorSet::EMPTY);
        assert_eq!(planned("c", false).await, set(&["password"]));
        assert_eq!(planned("a", false).await, set(&["pin", "totp"]));
        // With a directory, stored passwords do not count and everyone has one.
        *s.typical.lock().await = None;
        assert_eq!(
            planned("nobody", true).await,
            set(&["password", "pin", "totp"])
        );
        assert_eq!(planned("c", true).await, set(&["password", "pin", "totp"]));
    }
}
