//! Connections kept out of the pool for a query that runs on every request.
//!
//! sqlx's pool pings a connection each time one is returned to it (and each time
//! one is handed out, unless `test_before_acquire` is off). On SQLite a ping is a
//! round trip to the connection's worker thread, on PostgreSQL one to the server:
//! for a single short read per logon, the two pings cost more than the read (a
//! profile of the gateway under load had a third of its SQLite hand-offs in them).
//! A [`Held`] set takes up to `size` connections out of the pool and hands them out
//! without pinging.
//!
//! A connection goes back to the set only through [`HeldConnection::keep`], called
//! after the work on it succeeded; one whose query failed or whose future was
//! dropped midway is closed instead, so a connection in an unknown state (a
//! half-read result, an open transaction) is never reused. That is what the pool's
//! ping on return is for, and why it can be skipped here.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct Held {
    pool: AnyPool,
    idle: Mutex<Vec<AnyConnection>>,
    permits: Semaphore,
    /// A pool of one connection is a private in-memory database: taking its only
    /// connection out would leave the pool to open a new, empty one. Such a set
    /// lends pooled connections instead.
    pass_through: bool,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("available", &self.permits.available_permits())
            .field("pass_through", &self.pass_through)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// At most `size` connections (at least one), taken from `pool` as first needed.
    /// Taken out, they no longer count against the pool's `max_connections`: the
    /// database sees up to that many plus `size`.
    pub fn new(pool: AnyPool, size: usize) -> Held {
        let pass_through = pool.options().get_max_connections() <= 1;
        Held {
            pool,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(size.max(1)),
            pass_through,
        }
    }

    /// A connection, waiting while all `size` are lent out.
    pub async fn get(&self) -> Result<HeldConnection<'_>, sqlx::Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = if self.pass_through {
            Lent::Pooled(self.pool.acquire().await?)
        } else {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(conn) => Lent::Held(conn),
                None => Lent::Held(self.pool.acquire().await?.detach()),
            }
        };
        Ok(HeldConnection {
            held: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// Closes the idle connections and refuses further `get`s; lent ones close when
    /// dropped. Call before closing the pool, so nothing is left open.
    pub async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for conn in idle {
            let _ = conn.close().await;
        }
    }
}

enum Lent {
    Held(AnyConnection),
    Pooled(PoolConnection<Any>),
}

/// A connection lent by a [`Held`] set. Dropped without [`keep`](Self::keep), it is
/// closed (or, lent from a pass-through set, returned to the pool, which checks it).
pub struct HeldConnection<'a> {
    held: &'a Held,
    /// `Some` from `get` until `keep` consumes the guard.
    conn: Option<Lent>,
    _permit: SemaphorePermit<'a>,
}

impl HeldConnection<'_> {
    /// Returns the connection to the set: call after the work on it succeeded.
    pub fn keep(mut self) {
        if let Some(Lent::Held(conn)) = self.conn.take() {
            self.held
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

impl Deref for HeldConnection<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.conn {
            Some(Lent::Held(c)) => c,
            Some(Lent::Pooled(c)) => c,
            None => unreachable!("a HeldConnection is only emptied by keep, which consumes it"),
        }
    }
}

impl DerefMut for HeldConnection<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.conn {
            Some(Lent::Held(c)) => c,
            Some(Lent::Pooled(c)) => c,
            None => unreachable!("a HeldConnection is only emptied by keep, which consumes it"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{connect, MigrationSet};

    const NO_SCHEMA: MigrationSet = MigrationSet {
        table: "held_test_migrations",
        lock_key: 0x4845_4c44,
        migrations: &[],
    };

    async fn file_pool(dir: &tempfile::TempDir) -> AnyPool {
        let url = format!("sqlite://{}", dir.path().join("held.db").display());
        let (pool, _) = connect(&url, &NO_SCHEMA).await.expect("connect");
        pool
    }

    async fn one(conn: &mut AnyConnection) -> i64 {
        sqlx::query_scalar("SELECT 1")
            .fetch_one(conn)
            .await
            .expect("select")
    }

    #[tokio::test]
    async fn a_kept_connection_is_lent_again_without_returning_to_the_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = file_pool(&dir).await;
        let held = Held::new(pool.clone(), 2);
        let mut c = held.get().await.expect("get");
        assert_eq!(one(&mut c).await, 1);
        c.keep();
        assert_eq!(held.idle.lock().expect("idle").len(), 1);
        let mut again = held.get().await.expect("get");
        assert!(
            held.idle.lock().expect("idle").is_empty(),
            "the idle one was reused"
        );
        assert_eq!(one(&mut again).await, 1);
        again.keep();
        held.close().await;
        assert!(held.get().await.is_err(), "a closed set lends nothing");
        assert!(held.idle.lock().expect("idle").is_empty());
    }

    #[tokio::test]
    async fn a_connection_dropped_without_keep_is_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = Held::new(file_pool(&dir).await, 1);
        let mut c = held.get().await.expect("get");
        sqlx::query("BEGIN").execute(&mut *c).await.expect("begin");
        drop(c); // say the request was cancelled inside a transaction
        assert!(held.idle.lock().expect("idle").is_empty());
        let mut fresh = held.get().await.expect("get");
        // A reused connection would still be in the transaction and refuse BEGIN.
        sqlx::query("BEGIN")
            .execute(&mut *fresh)
            .await
            .expect("a fresh connection");
        sqlx::query("ROLLBACK")
            .execute(&mut *fresh)
            .await
            .expect("rollback");
        fresh.keep();
    }

    /// `connect`'s pool, not `Held`: a `BEGIN` whose caller was dropped before it
    /// held the transaction (sqlx acknowledged it, no `Transaction` guards it) must
    /// not come back from the pool, where every `begin_with` on it would fail.
    #[tokio::test]
    async fn a_connection_left_inside_a_transaction_is_not_pooled_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = file_pool(&dir).await;
        let mut orphan = pool.acquire().await.expect("acquire");
        std::mem::forget(orphan.begin().await.expect("begin"));
        assert!(orphan.is_in_transaction());
        drop(orphan);
        // Every connection the pool can hold at once: the orphan would be one.
        let max = pool.options().get_max_connections() as usize;
        let mut all = Vec::new();
        for _ in 0..max {
            let c = pool.acquire().await.expect("acquire");
            assert!(
                !c.is_in_transaction(),
                "a connection came back in a transaction"
            );
            all.push(c);
        }
        drop(all);
        let tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .expect("begin_with");
        tx.rollback().await.expect("rollback");
    }

    #[tokio::test]
    async fn a_single_connection_memory_pool_keeps_its_database() {
        let (pool, _) = connect("sqlite::memory:", &NO_SCHEMA)
            .await
            .expect("connect");
        sqlx::query("CREATE TABLE t (x BIGINT)")
            .execute(&pool)
            .await
            .expect("create");
        let held = Held::new(pool.clone(), 4);
        let mut c = held.get().await.expect("get");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *c)
            .await
            .expect("the table is there: the pool's own connection was lent");
        assert_eq!(n, 0);
        c.keep();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&pool)
            .await
            .expect("the pool still has its connection");
    }
}
