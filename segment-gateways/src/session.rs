//! Device sessions: a logon opens one, lock and unlock move it between `active` and
//! `locked`, logoff ends it. A device has at most one session that has not ended
//! (a unique index holds it), and a session has an account (who logged on) and an
//! operator (who uses the device now; they differ after another user unlocked a
//! shared counter terminal).

use sekisho_policy_engine::store::StoreError;
use sqlx::Row;

use crate::crypto::random_bytes;
use crate::db::{db_err, Db};

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

/// Opens a session for `user` on `device`, ending the one the device still had
/// (a PC that crashed without logging off).
pub async fn open(db: &Db, device: &str, user: &str, now_ms: i64) -> Result<Session, StoreError> {
    let id = random_bytes::<16>()
        .map(hex::encode)
        .map_err(|e| StoreError::Rejected {
            table: "gw_sessions",
            message: e.to_string(),
        })?;
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "UPDATE gw_sessions SET state = 'ended', end_reason = 'superseded', updated_at = $4
         WHERE tenant = $1 AND tier = $2 AND device = $3 AND state <> 'ended'",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(device)
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err("ending a superseded session"))?;
    sqlx::query(
        "INSERT INTO gw_sessions (tenant, tier, id, device, user_id, operator, state, started_at, updated_at, end_reason)
         VALUES ($1, $2, $3, $4, $5, $5, 'active', $6, $6, '')",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(&id)
    .bind(device)
    .bind(user)
    .bind(now_ms)
    .execute(&mut *tx)
    .await
    .map_err(db_err("opening a session"))?;
    tx.commit().await.map_err(db_err("opening a session"))?;
    Ok(Session {
        id,
        device: device.into(),
        user: user.into(),
        operator: user.into(),
        state: SessionState::Active,
    })
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

/// Moves a session that has not ended to `state` (with `operator`, when given).
/// Returns the session as it is now, or `None` when it has ended or does not exist.
pub async fn update(
    db: &Db,
    id: &str,
    state: SessionState,
    operator: Option<&str>,
    now_ms: i64,
) -> Result<Option<Session>, StoreError> {
    let end_reason = if state == SessionState::Ended {
        "logoff"
    } else {
        ""
    };
    let done = sqlx::query(
        "UPDATE gw_sessions SET state = $4, operator = COALESCE($5, operator), updated_at = $6, end_reason = $7
         WHERE tenant = $1 AND tier = $2 AND id = $3 AND state <> 'ended'",
    )
    .bind(&*db.tenant)
    .bind(db.tier.name())
    .bind(id)
    .bind(state.name())
    .bind(operator)
    .bind(now_ms)
    .bind(end_reason)
    .execute(&db.pool)
    .await
    .map_err(db_err("updating a session"))?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    get(db, id).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sekisho_policy_engine::Tier;

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
