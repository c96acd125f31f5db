//! Device sessions: a logon opens one, lock and unlock move it between `active` and
//! `locked`, logoff ends it. A device has at most one session that has not ended
//! (a unique index holds it), and a session has an account (who logged on) and an
//! operator (who uses the device now; they differ after another user unlocked a
//! shared counter terminal).

use sekisho_policy_engine::store::StoreError;
use sqlx::Row;

use crate::crypto::random_bytes;
use crate::db::{db_err, now_ms, Db};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Active,
    Locked,
    Ended,
}

impl SessionState {
    pub fn name(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Locked => "locked",
            SessionState::Ended => "ended",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(SessionState::Active),
            "locked" => Some(SessionState::Locked),
            "ended" => Some(SessionState::Ended),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub device: String,
    pub user: String,
    pub operator: String,
    pub state: SessionState,
}

const COLUMNS: &str = "id, device, user_id, operator, state";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Session, StoreError> {
    let get = |i: usize| -> Result<String, StoreError> {
        row.try_get(i).map_err(db_err("reading a session"))
    };
    let state = get(4)?;
    Ok(Session {
        id: get(0)?,
        device: get(1)?,
        user: get(2)?,
        operator: get(3)?,
        state: SessionState::parse(&state).ok_or_else(|| StoreError::CorruptRow {
            table: "gw_sessions",
            id: get(0).unwrap_or_default(),
            column: "state",
            message: format!("unknown state '{state}'"),
        })?,
    })
}

/// A new session id: the time in ms (12 hex digits) then 128 random bits (32 hex
/// digits). The random part makes it unguessable; the time in front makes ids sort in
/// the order sessions open, so each new row lands at the end of the table's key
/// instead of on a random page, and a commit of many logons dirties a few pages
/// rather than one per logon. The session itself is opened when the logon's answer
/// commits ([`crate::effects::Effect::OpenSession`]), which also ends the one the
/// device still had (a PC that crashed without logging off).
pub fn new_id() -> Result<String, StoreError> {
    let random = random_bytes::<16>().map_err(|e| StoreError::Rejected {
        table: "gw_sessions",
        message: e.to_string(),
    })?;
    let ms = u64::try_from(now_ms()).unwrap_or(0) & 0xffff_ffff_ffff;
    Ok(format!("{ms:012x}{}", hex::encode(random)))
}

/// The device's session that has not ended, if any.
pub async fn current(db: &Db, device: &str) -> Result<Option<Session>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM gw_sessions WHERE tenant = $1 AND tier = $2 AND device = $3 AND state <> 'ended'"
    ))
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(device)
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err("reading a session"))?;
    row.as_ref().map(from_row).transpose()
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Session>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM gw_sessions WHERE tenant = $1 AND tier = $2 AND id = $3"
    ))
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .map_err(db_err("reading a session"))?;
    row.as_ref().map(from_row).transpose()
}

/// Every session on this tier that has not ended and that `user` is the account or
/// the operator of (a deprovisioned user's, to end with [`end`]).
pub async fn open_of(db: &Db, user: &str) -> Result<Vec<Session>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM gw_sessions WHERE tenant = $1 AND tier = $2
         AND (user_id = $3 OR operator = $3) AND state <> 'ended'"
    ))
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(user)
    .fetch_all(&db.pool)
    .await
    .map_err(db_err("reading a user's sessions"))?;
    rows.iter().map(from_row).collect()
}

/// Ends the sessions `ids` that have not ended yet, recording `reason`. Returns
/// how many it ended.
pub async fn end(db: &Db, ids: &[&str], reason: &str, now_ms: i64) -> Result<u64, StoreError> {
    let mut tx = db.begin_write().await?;
    let mut ended = 0;
    for id in ids {
        ended += sqlx::query(
            "UPDATE gw_sessions SET state = 'ended', end_reason = $4, updated_at = $5
             WHERE tenant = $1 AND tier = $2 AND id = $3 AND state <> 'ended'",
        )
        .bind(&*db.tenant)
        .bind(db.tier.name())
        .bind(*id)
        .bind(reason)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(db_err("ending sessions"))?
        .rows_affected();
    }
    tx.commit().await.map_err(db_err("ending sessions"))?;
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::{self, Applied, Effect, Scope};
    use sekisho_policy_engine::Tier;

    /// Applies one effect the way a committed answer does.
    async fn apply(db: &Db, effect: Effect, now_ms: i64) -> Result<Applied, StoreError> {
        let mut conn = db.pool.acquire().await.map_err(db_err("test"))?;
        let scope = Scope {
            tenant: &db.tenant,
            tier: db.tier.name(),
        };
        let applied = effects::apply(&mut conn, &scope, &[&[effect]], now_ms).await?;
        Ok(applied[0])
    }

    /// A logon's session, opened as a committed logon opens it.
    async fn open(db: &Db, device: &str, user: &str, now_ms: i64) -> Result<Session, StoreError> {
        let id = new_id()?;
        let effect = Effect::OpenSession {
            id: id.clone(),
            device: device.into(),
            user: user.into(),
        };
        apply(db, effect, now_ms).await?;
        Ok(get(db, &id).await?.expect("opened"))
    }

    /// Moves a session as a committed unlock, lock or logoff does; `None` when it had
    /// ended.
    async fn update(
        db: &Db,
        id: &str,
        state: SessionState,
        operator: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<Session>, StoreError> {
        let effect = Effect::SetSession {
            id: id.into(),
            state,
            operator: operator.map(String::from),
        };
        if apply(db, effect, now_ms).await?.conflict.is_some() {
            return Ok(None);
        }
        get(db, id).await
    }

    #[test]
    fn ids_start_with_the_time_and_end_with_random_bits() {
        let before = now_ms();
        let id = new_id().unwrap();
        let after = now_ms();
        assert_eq!(id.len(), 44, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        // Fixed-width hex of the time: ids made later sort after.
        let made = i64::from_str_radix(&id[..12], 16).unwrap();
        assert!((before..=after).contains(&made), "{id}");
        // Made in the same millisecond, two ids still differ in their 128 random bits.
        assert_ne!(new_id().unwrap()[12..], new_id().unwrap()[12..]);
    }

    #[tokio::test]
    async fn a_revoked_user_loses_every_session() {
        let db = Db::open("sqlite::memory:", "t", Tier::Lgwan).await.unwrap();
        let a = open(&db, "pc1", "alice", 1).await.unwrap();
        let b = open(&db, "pc2", "bob", 1).await.unwrap();
        // alice operates bob's shared terminal after an operator switch.
        update(&db, &b.id, SessionState::Active, Some("alice"), 2)
            .await
            .unwrap();
        let c = open(&db, "pc3", "carol", 1).await.unwrap();
        let open = open_of(&db, "alice").await.unwrap();
        let mut ids: Vec<&str> = open.iter().map(|s| s.id.as_str()).collect();
        ids.sort();
        let mut want = vec![a.id.as_str(), b.id.as_str()];
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(end(&db, &ids, "revoked", 3).await.unwrap(), 2);
        assert!(current(&db, "pc1").await.unwrap().is_none());
        assert!(current(&db, "pc2").await.unwrap().is_none());
        assert_eq!(current(&db, "pc3").await.unwrap().unwrap().id, c.id);
        assert!(open_of(&db, "alice").await.unwrap().is_empty());
        assert_eq!(end(&db, &ids, "revoked", 4).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn one_session_per_device_and_operator_changes() {
        let db = Db::open("sqlite::memory:", "t", Tier::Lgwan).await.unwrap();
        let a = open(&db, "pc1", "alice", 1).await.unwrap();
        assert_eq!(current(&db, "pc1").await.unwrap().unwrap().id, a.id);
        let b = open(&db, "pc1", "bob", 2).await.unwrap();
        assert_eq!(
            get(&db, &a.id).await.unwrap().unwrap().state,
            SessionState::Ended
        );
        assert_eq!(current(&db, "pc1").await.unwrap().unwrap().id, b.id);

        let locked = update(&db, &b.id, SessionState::Locked, None, 3)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(locked.state, SessionState::Locked);
        let switched = update(&db, &b.id, SessionState::Active, Some("carol"), 4)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (switched.user.as_str(), switched.operator.as_str()),
            ("bob", "carol")
        );
        assert!(update(&db, &b.id, SessionState::Ended, None, 5)
            .await
            .unwrap()
            .is_some());
        assert!(update(&db, &b.id, SessionState::Active, None, 6)
            .await
            .unwrap()
            .is_none());
        assert!(current(&db, "pc1").await.unwrap().is_none());
    }
}
