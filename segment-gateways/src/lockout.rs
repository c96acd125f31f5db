//! Lockout after repeated failures, per user and tier.
//!
//! Counted for any user id that is tried, known or not, so a locked-out guesser
//! sees the same behaviour for both. The endpoint is told "locked until" only when a
//! correct factor set would otherwise have been accepted (see the logon service);
//! while locked, failures still count but do not extend the lock, so an attacker
//! cannot keep a user out forever by guessing.

use sekisho_policy_engine::store::StoreError;
use sqlx::Row;

use crate::db::{db_err, Db};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: u32,
    pub lock_ms: i64,
}

/// A user's current standing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    pub failures: u32,
    pub locked_until_ms: Option<i64>,
}

impl Standing {
    pub fn locked_at(&self, now_ms: i64) -> Option<i64> {
        self.locked_until_ms.filter(|&t| t > now_ms)
    }
}

pub async fn standing(db: &Db, user: &str) -> Result<Standing, StoreError> {
    let row = sqlx::query(
        "SELECT failures, locked_until FROM gw_lockouts WHERE tenant = $1 AND tier = $2 AND user_id = $3",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(user)
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err("reading a lockout"))?;
    let Some(row) = row else {
        return Ok(Standing::default());
    };
    let failures: i64 = row.try_get(0).map_err(db_err("reading a lockout"))?;
    let locked_until: Option<i64> = row.try_get(1).map_err(db_err("reading a lockout"))?;
    Ok(Standing {
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        locked_until_ms: locked_until,
    })
}

/// Counts one failed attempt; returns the lock's end when this failure locked the
/// user.
pub async fn record_failure(
    db: &Db,
    user: &str,
    policy: LockoutPolicy,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let mut tx = db.begin_write().await?;
    let row = sqlx::query(
        "SELECT failures, locked_until FROM gw_lockouts WHERE tenant = $1 AND tier = $2 AND user_id = $3",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(user)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err("reading a lockout"))?;
    let (failures, locked_until): (i64, Option<i64>) = match row {
        Some(r) => (
            r.try_get(0).map_err(db_err("reading a lockout"))?,
            r.try_get(1).map_err(db_err("reading a lockout"))?,
        ),
        None => (0, None),
    };
    let still_locked = locked_until.is_some_and(|t| t > now_ms);
    // A lock that has run out starts a fresh count.
    let failures = if locked_until.is_some() && !still_locked {
        1
    } else {
        failures.saturating_add(1)
    };
    let (locked_until, newly) = if still_locked {
        (locked_until, None)
    } else if failures >= i64::from(policy.max_failures) {
        let until = now_ms.saturating_add(policy.lock_ms);
        (Some(until), Some(until))
    } else {
        (None, None)
    };
    sqlx::query(
        "INSERT INTO gw_lockouts (tenant, tier, user_id, failures, locked_until) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (tenant, tier, user_id) DO UPDATE SET failures = excluded.failures,
           locked_until = excluded.locked_until",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(user)
    .bind(failures)
    .bind(locked_until)
    .execute(&mut *tx)
    .await
    .map_err(db_err("recording a failure"))?;
    tx.commit().await.map_err(db_err("recording a failure"))?;
    Ok(newly)
}

/// Forgets a user's failures and lock (after a successful logon, or an
/// administrator's unlock). Returns whether the user was locked.
pub async fn clear(db: &Db, user: &str, now_ms: i64) -> Result<bool, StoreError> {
    let before = standing(db, user).await?;
    if before == Standing::default() {
        return Ok(false);
    }
    forget(db, user).await?;
    Ok(before.locked_at(now_ms).is_some())
}

/// Deletes a user's failure count, for callers that already read their standing.
pub async fn forget(db: &Db, user: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM gw_lockouts WHERE tenant = $1 AND tier = $2 AND user_id = $3")
        .bind(&*db.tenant)
        .bind(db.tier.name())
        .bind(user)
        .execute(&db.pool)
        .await
        .map_err(db_err("clearing a lockout"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sekisho_policy_engine::Tier;

    #[tokio::test]
    async fn locks_after_n_and_releases_after_the_time() {
        let db = Db::open("sqlite::memory:", "t", Tier::Lgwan).await.unwrap();
        let p = LockoutPolicy {
            max_failures: 3,
            lock_ms: 1_000,
        };
        assert_eq!(record_failure(&db, "u", p, 0).await.unwrap(), None);
        assert_eq!(record_failure(&db, "u", p, 1).await.unwrap(), None);
        assert_eq!(record_failure(&db, "u", p, 2).await.unwrap(), Some(1_002));
        // Failures while locked do not extend the lock.
        assert_eq!(record_failure(&db, "u", p, 500).await.unwrap(), None);
        let s = standing(&db, "u").await.unwrap();
        assert_eq!(s.locked_at(500), Some(1_002));
        assert_eq!(s.locked_at(1_002), None);
        // After the lock, counting starts again.
        assert_eq!(record_failure(&db, "u", p, 2_000).await.unwrap(), None);
        assert_eq!(standing(&db, "u").await.unwrap().failures, 1);
        assert!(!clear(&db, "u", 2_000).await.unwrap());
        assert_eq!(standing(&db, "u").await.unwrap(), Standing::default());
        // Another tier's gateway sharing the database has its own count.
        let other = Db {
            tier: Tier::Mynumber,
            ..db.clone()
        };
        for t in 0..3 {
            record_failure(&db, "v", p, t).await.unwrap();
        }
        assert_eq!(standing(&other, "v").await.unwrap(), Standing::default());
        assert!(clear(&db, "v", 10).await.unwrap());
    }
}
