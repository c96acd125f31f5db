//! The gateway's database: one schema on SQLite (default, beside the config) or
//! PostgreSQL, opened through the engine's shared connector so both components
//! migrate and fail the same way.
//!
//! Every table's primary key starts with `(tenant, tier)`: gateways of several tiers
//! (and several cities) may share one PostgreSQL database without seeing each
//! other's credentials, and a [`Db`] is bound to exactly one of each.

use std::sync::Arc;

use sekisho_policy_engine::store::{
    self, Backend, Blockers, Held, Migration, MigrationSet, StoreError,
};
use sekisho_policy_engine::Tier;
use sqlx::{Any, AnyPool, Transaction};

/// A handle bound to one tenant and tier. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub(crate) pool: AnyPool,
    /// For the read every Begin makes (a user's enrolment), without the pool's pings.
    pub(crate) logon_reads: Arc<Held>,
    pub(crate) backend: Backend,
    pub(crate) tenant: Arc<str>,
    pub(crate) tier: Tier,
}

/// Connections held for Begin's read: two keep both cores busy on SQLite (its reads
/// run on one worker thread per connection); PostgreSQL answers more at once.
fn logon_read_connections(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 2,
        Backend::Postgres => 4,
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend.name())
            .field("tenant", &self.tenant)
            .field("tier", &self.tier.name())
            .finish_non_exhaustive()
    }
}

/// Shorthand for mapping a sqlx error with what was being done.
pub(crate) fn db_err(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

impl Db {
    pub async fn open(url: &str, tenant: &str, tier: Tier) -> Result<Db, StoreError> {
        store::check_tenant(tenant)?;
        let (pool, backend) = store::connect(url, &GATEWAY).await?;
        Ok(Db {
            logon_reads: Arc::new(Held::new(pool.clone(), logon_read_connections(backend))),
            pool,
            backend,
            tenant: Arc::from(tenant),
            tier,
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// A write transaction that holds the writer lock from its start (SQLite), so
    /// read-then-write sequences in it cannot interleave with another writer's.
    /// A connection of its own, for a store write made outside an administrator's
    /// call (which journals its change in the same transaction): tools and tests.
    pub async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Any>, StoreError> {
        self.pool
            .acquire()
            .await
            .map_err(db_err("connecting to the gateway store"))
    }

    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        self.pool
            .begin_with(self.backend.begin_write())
            .await
            .map_err(db_err("starting a write transaction"))
    }

    pub async fn close(&self) {
        self.logon_reads.close().await;
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch: how every gateway timestamp is stored, so
/// comparisons are plain integer comparisons on both databases.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) const GATEWAY: MigrationSet = MigrationSet {
    table: "gateway_migrations",
    // "sekishog" as ASCII.
    lock_key: 0x7365_6b69_7368_6f67,
    migrations: MIGRATIONS,
};

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        blockers: None,
        name: "devices, credentials, lockouts and sessions",
        statements: &[
            // `key_check` holds a value sealed with the credential key, so a wrong key
            // is found at startup rather than as garbage at the first logon.
            "CREATE TABLE gw_meta (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (tenant, tier, name)
        )",
            // `capabilities` is a JSON array; `capture_key` the hex SPKI DER of the
            // capture device's key ('' when it captures no biometrics).
            "CREATE TABLE gw_devices (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 256),
            kind TEXT NOT NULL,
            capabilities TEXT NOT NULL,
            location TEXT NOT NULL,
            capture_key TEXT NOT NULL,
            registered_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, tier, id)
        )",
            // Argon2id PHC strings of PINs and standalone passwords.
            "CREATE TABLE gw_secrets (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            user_id TEXT NOT NULL,
            factor TEXT NOT NULL CHECK (factor IN ('password', 'pin')),
            phc TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, tier, user_id, factor)
        )",
            // `secret` is sealed (hex); `last_step` the last accepted time step.
            "CREATE TABLE gw_totp (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            user_id TEXT NOT NULL,
            secret TEXT NOT NULL,
            algorithm TEXT NOT NULL,
            digits BIGINT NOT NULL,
            last_step BIGINT,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, tier, user_id)
        )",
            // `certificate` is hex DER; `kind` is 'card' or 'mynumber' (chains to JPKI).
            "CREATE TABLE gw_cards (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            user_id TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('card', 'mynumber')),
            certificate TEXT NOT NULL,
            not_after BIGINT NOT NULL,
            enrolled_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, tier, user_id, fingerprint)
        )",
            // `template` is a sealed, normalised little-endian f32 vector (hex).
            "CREATE TABLE gw_biometrics (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            user_id TEXT NOT NULL,
            factor TEXT NOT NULL CHECK (factor IN ('face', 'vein')),
            seq BIGINT NOT NULL,
            template TEXT NOT NULL,
            enrolled_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, tier, user_id, factor, seq)
        )",
            // At most one emergency OTP per user; issuing a new one replaces it.
            "CREATE TABLE gw_emergency_otps (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            user_id TEXT NOT NULL,
            code_hash TEXT NOT NULL,
            issued_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT,
            PRIMARY KEY (tenant, tier, user_id)
        )",
            // Kept for any user id that was tried, known or not, so that lockout
            // behaves the same for both.
            "CREATE TABLE gw_lockouts (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            user_id TEXT NOT NULL,
            failures BIGINT NOT NULL,
            locked_until BIGINT,
            PRIMARY KEY (tenant, tier, user_id)
        )",
            "CREATE TABLE gw_sessions (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            id TEXT NOT NULL,
            device TEXT NOT NULL,
            user_id TEXT NOT NULL,
            operator TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('active', 'locked', 'ended')),
            started_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            end_reason TEXT NOT NULL,
            PRIMARY KEY (tenant, tier, id)
        )",
            // A device has at most one session that has not ended.
            "CREATE UNIQUE INDEX gw_sessions_one_per_device
            ON gw_sessions (tenant, tier, device) WHERE state <> 'ended'",
        ],
    },
    Migration {
        version: 2,
        blockers: None,
        name: "audit journal and how far the engine has it",
        statements: &[
            // One hash-chained journal per gateway name (see `journal`). `event` is the
            // exact JSON line that was hashed; `hash` repeats its chain hash so the head
            // is found without parsing.
            "CREATE TABLE gw_journal (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            gateway TEXT NOT NULL,
            seq BIGINT NOT NULL CHECK (seq >= 1),
            ts_ms BIGINT NOT NULL,
            event TEXT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (tenant, tier, gateway, seq)
        )",
            // The highest seq the engine confirmed it stores with every seq below it.
            "CREATE TABLE gw_outbox (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            gateway TEXT NOT NULL,
            acked_seq BIGINT NOT NULL CHECK (acked_seq >= 0),
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, tier, gateway)
        )",
        ],
    },
    Migration {
        version: 3,
        blockers: None,
        name: "users of a standalone tier",
        statements: &[
            // The people a standalone tier knows without a directory (bulk imported):
            // display name, department, role and groups (a JSON array of group ids).
            "CREATE TABLE gw_users (
            tenant TEXT NOT NULL,
            tier TEXT NOT NULL,
            id TEXT NOT NULL CHECK (length(id) BETWEEN 1 AND 256),
            name TEXT NOT NULL,
            department TEXT NOT NULL,
            role TEXT NOT NULL,
            \"groups\" TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, tier, id)
        )",
        ],
    },
    Migration {
        version: 4,
        // A store where one card is enrolled for two users (possible before
        // enrolment checked it) is refused with those enrolments named; the
        // gateway cannot start to remove them through its admin API.
        blockers: Some(Blockers {
            query: "SELECT 'tenant ' || a.tenant || ', tier ' || a.tier || ': card '
                    || a.fingerprint || ' enrolled for user ' || a.user_id
                FROM gw_cards a
                WHERE EXISTS (SELECT 1 FROM gw_cards b
                    WHERE b.tenant = a.tenant AND b.tier = a.tier
                    AND b.fingerprint = a.fingerprint AND b.user_id <> a.user_id)
                ORDER BY a.tenant, a.tier, a.fingerprint, a.user_id",
            remedy: "A card may belong to one user only: keep each with its rightful holder, delete it from the others (`DELETE FROM gw_cards WHERE tenant = '…' AND tier = '…' AND fingerprint = '…' AND user_id = '…'`), then start the gateway again",
        }),
        name: "one holder per card (a card enrolled for two users must first be removed from one)",
        statements: &[
            // Enrolment checks who holds a card before adding it; two gateways of one
            // tier on one PostgreSQL store could still both pass that check at once.
            "CREATE UNIQUE INDEX gw_cards_one_holder ON gw_cards (tenant, tier, fingerprint)",
        ],
    },
];

/// The gateway tests' databases: a temporary SQLite file, and the PostgreSQL test
/// database the test script provides (`SEKISHO_TEST_PG_URL`, default the local
/// `sekisho_test`) with a tenant of its own per test.
#[cfg(test)]
pub(crate) mod testing {
    use super::Db;
    use sekisho_policy_engine::Tier;

    pub(crate) struct Target {
        pub(crate) url: String,
        pub(crate) tenant: String,
        _dir: Option<tempfile::TempDir>,
    }

    pub(crate) fn targets(test: &str) -> Vec<Target> {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = std::env::var("SEKISHO_TEST_PG_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/sekisho_test".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        vec![
            Target {
                url: format!("sqlite://{}", dir.path().join("gw.db").display()),
                tenant: "city".into(),
                _dir: Some(dir),
            },
            Target {
                url: pg,
                tenant: format!("{test}-{}-{nanos}", std::process::id()),
                _dir: None,
            },
        ]
    }

    impl Target {
        pub(crate) async fn db(&self) -> Db {
            self.db_of(Tier::Lgwan).await
        }

        pub(crate) async fn db_of(&self, tier: Tier) -> Db {
            Db::open(&self.url, &self.tenant, tier)
                .await
                .expect("open db")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store made before migration 4 with one card under two users: the
    /// migration is refused naming both enrolments, nothing changes, and once one
    /// is deleted as the error says, the store opens. SQLite only: the PostgreSQL
    /// test database is shared and already migrated.
    #[tokio::test]
    async fn a_store_holding_one_card_for_two_users_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("gw.db").display());
        let before = MigrationSet {
            migrations: &MIGRATIONS[..3],
            ..GATEWAY
        };
        let (pool, _) = store::connect(&url, &before).await.unwrap();
        for user in ["aoki", "baba"] {
            sqlx::query(
                "INSERT INTO gw_cards (tenant, tier, user_id, fingerprint, kind, certificate, not_after, enrolled_at)
                 VALUES ('city', 'lgwan', $1, 'f00d', 'card', '00', 0, 0)",
            )
            .bind(user)
            .execute(&pool)
            .await
            .unwrap();
        }
        let applied = || async {
            sqlx::query_scalar::<Any, i64>("SELECT MAX(version) FROM gateway_migrations")
                .fetch_one(&pool)
                .await
                .unwrap()
        };

        let e = Db::open(&url, "city", Tier::Lgwan).await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                &e,
                StoreError::MigrationBlocked {
                    version: 4,
                    count: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        for part in [
            "tier lgwan: card f00d enrolled for user aoki",
            "card f00d enrolled for user baba",
            "nothing was changed",
            "DELETE FROM gw_cards",
        ] {
            assert!(text.contains(part), "{part:?} not in: {text}");
        }
        assert_eq!(applied().await, 3);

        sqlx::query("DELETE FROM gw_cards WHERE user_id = 'baba'")
            .execute(&pool)
            .await
            .unwrap();
        let db = Db::open(&url, "city", Tier::Lgwan).await.unwrap();
        assert_eq!(applied().await, 4);
        db.close().await;
        pool.close().await;
    }
}
