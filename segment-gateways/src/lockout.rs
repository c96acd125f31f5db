//! Lockout after repeated failures, per user and tier (the user as [`key`]
//! spells it).
//!
//! Counted for any user id that is tried, known or not, so a locked-out guesser
//! sees the same behaviour for both. Only failures of what the person presented are
//! counted: a factor the gateway could not check (the directory down, an unusable
//! stored credential) denies the attempt but is not held against the user (see
//! [`crate::factors::Failure::counts_towards_lockout`]).
//!
//! The endpoint is told "locked until" only when a correct factor set would
//! otherwise have been accepted (see [`crate::logon`]), so a guesser never learns
//! the lock. While locked, every other answer is the one wrong factors get, even
//! when some presented factors were correct: the lock stops the guessing instead
//! of only keeping the user out. Failures still count but do not extend the lock,
//! so an attacker cannot keep a user out forever by guessing.

use sekisho_policy_engine::store::StoreError;
use sqlx::{AnyConnection, Row};

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

/// The id a user's failures are counted under: trimmed, inner white space runs
/// made one space, lower case. A directory matches `uid` and `sAMAccountName` that
/// way, so `TANAKA` and ` tanaka` bind as `tanaka`; counted under the exact text,
/// each spelling would be a fresh set of guesses at the same password.
pub fn key(user: &str) -> String {
    user.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

pub async fn standing(db: &Db, user: &str) -> Result<Standing, StoreError> {
    standing_in(&db.pool, db, user).await
}

async fn standing_in<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    db: &Db,
    user: &str,
) -> Result<Standing, StoreError> {
    let row = sqlx::query(
        "SELECT failures, locked_until FROM gw_lockouts WHERE tenant = $1 AND tier = $2 AND user_id = $3",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(key(user))
    .fetch_optional(executor)
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

impl Standing {
    /// The standing after one more failure at `now_ms`, and the lock's end when this
    /// failure locked the user. A lock that has run out starts a fresh count; a
    /// failure while locked does not extend the lock.
    pub fn after_failure(self, policy: LockoutPolicy, now_ms: i64) -> (Standing, Option<i64>) {
        let still_locked = self.locked_at(now_ms).is_some();
        let failures = if self.locked_until_ms.is_some() && !still_locked {
            1
        } else {
            self.failures.saturating_add(1)
        };
        if still_locked {
            (
                Standing {
                    failures,
                    locked_until_ms: self.locked_until_ms,
                },
                None,
            )
        } else if failures >= policy.max_failures {
            let until = now_ms.saturating_add(policy.lock_ms);
            (
                Standing {
                    failures,
                    locked_until_ms: Some(until),
                },
                Some(until),
            )
        } else {
            (
                Standing {
                    failures,
                    locked_until_ms: None,
                },
                None,
            )
        }
    }
}

/// Forgets a user's failures and lock (an administrator's unlock), in the caller's
/// transaction. Returns whether the user was locked.
pub async fn clear(
    conn: &mut AnyConnection,
    db: &Db,
    user: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let before = standing_in(&mut *conn, db, user).await?;
    if before == Standing::default() {
        return Ok(false);
    }
    sqlx::query("DELETE FROM gw_lockouts WHERE tenant = $1 AND tier = $2 AND user_id = $3")
        .bind(&*db.tenant)
        .bind(db.tier.name())
        .bind(key(user))
        .execute(conn)
        .await
        .map_err(db_err("clearing a lockout"))?;
    Ok(before.locked_at(now_ms).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_id_share_a_key() {
        for spelling in ["tanaka", "TANAKA", " Tanaka ", "tanaka\t"] {
            assert_eq!(key(spelling), "tanaka", "{spelling:?}");
        }
        assert_eq!(key("Yamada  Taro"), "yamada taro");
        assert_eq!(
            key("ＴＡＮＡＫＡ"),
            "ｔａｎａｋａ",
            "full-width letters lower-case too"
        );
        assert_ne!(key("tanaka"), key("tanaka2"));
    }

    #[test]
    fn locks_after_n_and_releases_after_the_time() {
        let p = LockoutPolicy {
            max_failures: 3,
            lock_ms: 1_000,
        };
        let s = Standing::default();
        let (s, newly) = s.after_failure(p, 0);
        assert_eq!(newly, None);
        let (s, newly) = s.after_failure(p, 1);
        assert_eq!(newly, None);
        let (s, newly) = s.after_failure(p, 2);
        assert_eq!(newly, Some(1_002));
        // Failures while locked do not extend the lock.
        let (s, newly) = s.after_failure(p, 500);
        assert_eq!(newly, None);
        assert_eq!(s.locked_at(500), Some(1_002));
        assert_eq!(s.locked_at(1_002), None);
        // After the lock, counting starts again.
        let (s, newly) = s.after_failure(p, 2_000);
        assert_eq!((s.failures, s.locked_until_ms, newly), (1, None, None));
    }
}
