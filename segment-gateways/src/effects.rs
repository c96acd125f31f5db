//! The state an answer changes, made durable in the same transaction as the journal
//! event that records it.
//!
//! A logon used to make three commits of its own (the TOTP step, the session, the
//! journal event), each paying an fsync and each contending for SQLite's write lock.
//! Now the journal's writer applies the [`Effect`]s of every answer in its batch,
//! seals their events and commits once: one fsync per batch, one writer, and a
//! handful of statements per batch instead of several per logon.
//!
//! Conditions that can only be judged at commit time are judged here, against the
//! database, so that they hold across gateway replicas sharing a store:
//! - a user locked since the answer was prepared gets [`Conflict::Locked`];
//! - a deny of a user who is locked gets [`Applied::locked_until`], so that the
//!   answer can be made to hide which of the presented factors were correct;
//! - a TOTP step that another logon recorded first gets [`Conflict::TotpReplayed`]
//!   (two logons racing with one code: exactly one wins), and a code checked against
//!   a secret enrolled again since gets [`Conflict::TotpChanged`];
//! - an emergency OTP that another answer used first gets
//!   [`Conflict::EmergencyOtpUsed`] (again exactly one wins); one issued again or
//!   withdrawn since it was checked gets [`Conflict::EmergencyOtpChanged`], one that
//!   ran out in between [`Conflict::EmergencyOtpExpired`];
//! - a session ended since the unlock was prepared gets [`Conflict::NoSession`].
//!
//! A conflict cancels the answer's emergency OTP use, its session change and its
//! clearing of failures; the TOTP step and a failure count are kept. A replay found
//! only here (a race) is not counted as a failure: the losing code was correct when
//! it was checked.

use std::collections::{HashMap, HashSet};

use sekisho_policy_engine::store::StoreError;
use sekisho_policy_engine::Factor;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Row};

use crate::db::db_err;
use crate::hashing::Refreshed;
use crate::lockout::{LockoutPolicy, Standing};
use crate::session::SessionState;

/// One change an answer makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The answer lets `user` in: refused with [`Conflict::Locked`] when the user is
    /// locked at commit time; otherwise their failure count is forgotten.
    Admit { user: String },
    /// Records TOTP `step` as used by `user`, unless it or a later step already was,
    /// or the user's secret is no longer `secret` (as stored, sealed): the one the
    /// code was checked against.
    TotpStep {
        user: String,
        step: u64,
        secret: String,
    },
    /// Uses up `user`'s emergency OTP, unless it already was used, has expired, or is
    /// no longer the code stored as `code_hash` (the one that was checked). Only an
    /// answer that lets the user in carries it: a code presented with a wrong
    /// password, by a locked user, or in an attempt that ends in an error stays
    /// usable, and the one answer that uses it commits it with its event.
    UseEmergencyOtp { user: String, code_hash: String },
    /// Counts a failed attempt of `user`, locking them at `policy.max_failures`;
    /// reports [`Applied::locked_until`] when they were locked already.
    CountFailure { user: String, policy: LockoutPolicy },
    /// The answer denies `user` without counting a failure: every factor they
    /// presented was correct but too few, or one could not be checked (the
    /// directory down). Changes nothing; it only has the user's lockout read at
    /// commit, like [`Effect::CountFailure`], so that [`Applied::locked_until`]
    /// tells whether the answer must hide which factors were correct. Without it a
    /// locked user's correct factors would still be confirmed one guess at a time.
    Deny { user: String },
    /// Ends the device's open session (superseded) and opens session `id`.
    OpenSession {
        id: String,
        device: String,
        user: String,
    },
    /// Moves session `id`, unless it has ended, to `state` (with a new operator when
    /// given): unlock and operator switch, lock, logoff.
    SetSession {
        id: String,
        state: SessionState,
        operator: Option<String>,
    },
    /// Lets the answer stand only while `user` still holds the card `fingerprint`.
    /// Begin reads a user's cards, and a card removed before the Complete commits (a
    /// lost card reported meanwhile) must let no one in.
    CardHeld { user: String, fingerprint: String },
    /// Stores `user`'s password or PIN hash anew at the configured Argon2id cost,
    /// where the store still holds the hash that was checked.
    RefreshHash {
        user: String,
        factor: Factor,
        hashes: Refreshed,
    },
}

impl Effect {
    fn user(&self) -> Option<&str> {
        match self {
            Effect::Admit { user }
            | Effect::TotpStep { user, .. }
            | Effect::UseEmergencyOtp { user, .. }
            | Effect::CountFailure { user, .. }
            | Effect::Deny { user }
            | Effect::OpenSession { user, .. }
            | Effect::RefreshHash { user, .. }
            | Effect::CardHeld { user, .. } => Some(user),
            Effect::SetSession { .. } => None,
        }
    }

    /// The user whose lockout standing this effect reads.
    fn lockout_user(&self) -> Option<&str> {
        match self {
            Effect::Admit { user } | Effect::CountFailure { user, .. } | Effect::Deny { user } => {
                Some(user)
            }
            _ => None,
        }
    }

    fn device(&self) -> Option<&str> {
        match self {
            Effect::OpenSession { device, .. } => Some(device),
            _ => None,
        }
    }
}

/// Why an answer's effects could not all be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    Locked {
        until_ms: i64,
    },
    TotpReplayed,
    /// The TOTP secret was enrolled again after the code was checked.
    TotpChanged,
    /// The emergency OTP was used by another answer first.
    EmergencyOtpUsed,
    /// The emergency OTP was issued again (or removed) after the code was checked.
    EmergencyOtpChanged,
    /// The emergency OTP expired between its check and the commit.
    EmergencyOtpExpired,
    /// The card was removed from the user between Begin and the commit.
    CardRemoved,
    NoSession,
}

/// What committing one answer's effects did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The first condition that did not hold; the session change was not made.
    pub conflict: Option<Conflict>,
    /// The lock's end, when this answer's failure locked the user.
    pub newly_locked: Option<i64>,
    /// The lock's end, when the answer denies a user (it carries
    /// [`Effect::CountFailure`] or [`Effect::Deny`]) who was locked before it
    /// committed. Such an answer must not tell which presented factors were
    /// correct: while locked, each answer would otherwise confirm a guess without
    /// the guess costing anything. (An answer that would let a locked user in gets
    /// [`Conflict::Locked`] instead.)
    pub locked_until: Option<i64>,
}

/// The tenant and tier every statement is bound to.
pub(crate) struct Scope<'a> {
    pub tenant: &'a str,
    pub tier: &'a str,
}

/// Applies the effects of a batch of answers, in order, within the caller's
/// transaction. Answers are split into rounds in which no user or device appears
/// twice; each round costs a few statements whatever its size.
pub(crate) async fn apply(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    answers: &[&[Effect]],
    now_ms: i64,
) -> Result<Vec<Applied>, StoreError> {
    let mut applied = vec![Applied::default(); answers.len()];
    lock_standings(conn, scope, answers).await?;
    for round in rounds(answers) {
        apply_round(conn, scope, answers, &round, &mut applied, now_ms).await?;
    }
    Ok(applied)
}

/// Most answers per round. SQLite looks `$n` parameters up linearly, so statements
/// stay short; a round of 128 logons is a few hundred parameters.
const MAX_ROUND: usize = 128;

/// Indices of `answers` in commit order, cut wherever a user or device repeats, so
/// that one statement per kind of change can serve a whole round.
fn rounds(answers: &[&[Effect]]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut current = Vec::new();
    let mut users: HashSet<&str> = HashSet::new();
    let mut devices: HashSet<&str> = HashSet::new();
    for (i, effects) in answers.iter().enumerate() {
        if effects.is_empty() {
            continue;
        }
        let clash = effects.iter().any(|e| {
            e.user().is_some_and(|u| users.contains(u))
                || e.device().is_some_and(|d| devices.contains(d))
        });
        if clash || current.len() == MAX_ROUND {
            out.push(std::mem::take(&mut current));
            users.clear();
            devices.clear();
        }
        for e in effects.iter() {
            users.extend(e.user());
            devices.extend(e.device());
        }
        current.push(i);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `sql` bound to the scope (`$1`, `$2`) and then to `keys` (`$3` …): the shape of
/// every "these users of this tenant and tier" statement here.
fn for_keys<'q>(
    sql: &'q str,
    scope: &Scope<'q>,
    keys: &[&'q str],
) -> Query<'q, Any, AnyArguments<'q>> {
    let mut q = sqlx::query(sql).bind(scope.tenant).bind(scope.tier);
    for k in keys {
        q = q.bind(*k);
    }
    q
}

/// `$from, $from+1, … ` for `n` parameters.
fn params(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn apply_round(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    answers: &[&[Effect]],
    round: &[usize],
    applied: &mut [Applied],
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut effects: Vec<(usize, &Effect)> = Vec::new();
    for &i in round {
        effects.extend(answers[i].iter().map(|e| (i, e)));
    }

    // 1. Lockout standing of every user admitted or denied in this round: a locked
    // user is not let in, and a deny of them is flagged.
    let lockout_users: Vec<&str> = effects
        .iter()
        .filter_map(|&(_, e)| e.lockout_user())
        .collect();
    let standing = standings(conn, scope, &lockout_users).await?;
    let locked = |user: &str| standing.get(user).and_then(|s| s.locked_at(now_ms));
    for &(i, e) in &effects {
        match e {
            Effect::Admit { user } => {
                if let Some(until) = locked(user) {
                    applied[i]
                        .conflict
                        .get_or_insert(Conflict::Locked { until_ms: until });
                }
            }
            Effect::CountFailure { user, .. } | Effect::Deny { user } => {
                applied[i].locked_until = applied[i].locked_until.or(locked(user));
            }
            _ => {}
        }
    }

    // 1b. Cards still held by the users whose answers they let in.
    let cards: Vec<(usize, &str, &str)> = effects
        .iter()
        .filter_map(|&(i, e)| match e {
            Effect::CardHeld { user, fingerprint } => {
                Some((i, user.as_str(), fingerprint.as_str()))
            }
            _ => None,
        })
        .collect();
    if !cards.is_empty() {
        let users: Vec<&str> = cards.iter().map(|(_, u, _)| *u).collect();
        let held = cards_held(conn, scope, &users).await?;
        for (i, user, fingerprint) in cards {
            if !held.contains(&(user.to_string(), fingerprint.to_string())) {
                applied[i].conflict.get_or_insert(Conflict::CardRemoved);
            }
        }
    }

    // 2. TOTP steps: recorded only where no step at or after it was, against the
    // secret the code was checked with.
    let steps: Vec<(usize, &str, i64, &str)> = effects
        .iter()
        .filter_map(|&(i, e)| match e {
            Effect::TotpStep { user, step, secret } => Some((
                i,
                user.as_str(),
                i64::try_from(*step).unwrap_or(i64::MAX),
                secret.as_str(),
            )),
            _ => None,
        })
        .collect();
    if !steps.is_empty() {
        let recorded = record_steps(conn, scope, &steps).await?;
        let lost: Vec<&(usize, &str, i64, &str)> = steps
            .iter()
            .filter(|(_, user, _, _)| !recorded.contains(*user))
            .collect();
        if !lost.is_empty() {
            let users: Vec<&str> = lost.iter().map(|(_, u, _, _)| *u).collect();
            let current = totp_secrets(conn, scope, &users).await?;
            for (i, user, _, secret) in lost {
                let conflict = if current.get(*user).map(String::as_str) == Some(*secret) {
                    Conflict::TotpReplayed
                } else {
                    Conflict::TotpChanged
                };
                applied[*i].conflict.get_or_insert(conflict);
            }
        }
    }

    // 3. Emergency OTPs, for answers that still stand: used only where unused, unexpired
    // and still the code that was checked.
    let mut otps_used: Vec<(usize, &str, &str)> = Vec::new();
    for &(i, e) in &effects {
        if let Effect::UseEmergencyOtp { user, code_hash } = e {
            if applied[i].conflict.is_some() {
                continue;
            }
            match use_emergency_otp(conn, scope, user, code_hash, now_ms).await? {
                None => otps_used.push((i, user, code_hash)),
                Some(conflict) => applied[i].conflict = Some(conflict),
            }
        }
    }

    // 4. Session moves, for answers that still stand. One that finds its session
    // ended gives back the emergency OTP it used in step 3: the answer is now a deny.
    for &(i, e) in &effects {
        if let Effect::SetSession {
            id,
            state,
            operator,
        } = e
        {
            if applied[i].conflict.is_some() {
                continue;
            }
            if !set_session(conn, scope, id, *state, operator.as_deref(), now_ms).await? {
                applied[i].conflict = Some(Conflict::NoSession);
                for (_, user, code_hash) in otps_used.iter().filter(|(j, _, _)| *j == i) {
                    release_emergency_otp(conn, scope, user, code_hash, now_ms).await?;
                }
            }
        }
    }

    // 5. Failures counted; the counts of admitted users whose answer stands forgotten.
    let mut counted = Vec::new();
    for &(i, e) in &effects {
        if let Effect::CountFailure { user, policy } = e {
            let before = standing.get(user.as_str()).copied().unwrap_or_default();
            let (after, newly) = before.after_failure(*policy, now_ms);
            applied[i].newly_locked = newly;
            counted.push((user.as_str(), after));
        }
    }
    upsert_standings(conn, scope, &counted).await?;
    let forgotten: Vec<&str> = effects
        .iter()
        .filter_map(|&(i, e)| match e {
            Effect::Admit { user }
                if applied[i].conflict.is_none() && standing.contains_key(user.as_str()) =>
            {
                Some(user.as_str())
            }
            _ => None,
        })
        .collect();
    if !forgotten.is_empty() {
        let sql = format!(
            "DELETE FROM gw_lockouts WHERE tenant = $1 AND tier = $2 AND user_id IN ({})",
            params(3, forgotten.len())
        );
        for_keys(&sql, scope, &forgotten)
            .execute(&mut *conn)
            .await
            .map_err(db_err("clearing lockouts"))?;
    }

    // 6. Sessions opened, for answers that still stand.
    let opened: Vec<(&str, &str, &str)> = effects
        .iter()
        .filter_map(|&(i, e)| match e {
            Effect::OpenSession { id, device, user } if applied[i].conflict.is_none() => {
                Some((id.as_str(), device.as_str(), user.as_str()))
            }
            _ => None,
        })
        .collect();
    open_sessions(conn, scope, &opened, now_ms).await?;

    // 7. Hashes refreshed: rare (the first correct entry after `[argon2]` changed),
    // so one statement each.
    for &(_, e) in &effects {
        if let Effect::RefreshHash {
            user,
            factor,
            hashes,
        } = e
        {
            refresh_hash(conn, scope, user, *factor, hashes, now_ms).await?;
        }
    }
    Ok(())
}

/// The cards `users` hold now, as (user, fingerprint). Looked up by user, the
/// primary key's order: by fingerprint, SQLite walked the tier's cards.
async fn cards_held(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    users: &[&str],
) -> Result<HashSet<(String, String)>, StoreError> {
    by_user(
        conn,
        scope,
        "gw_cards",
        "fingerprint",
        users,
        "reading who holds the cards presented",
    )
    .await
}

/// `(user_id, column)` of the rows of `table` that belong to `users`.
async fn by_user<C: FromIterator<(String, String)>>(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    table: &str,
    column: &str,
    users: &[&str],
    what: &'static str,
) -> Result<C, StoreError> {
    let sql = format!(
        "SELECT user_id, {column} FROM {table} WHERE tenant = $1 AND tier = $2 AND user_id IN ({})",
        params(3, users.len())
    );
    let rows = for_keys(&sql, scope, users)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(what))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(db_err(what))
}

/// Replaces a stored password or PIN hash, unless it was set anew since it was read.
async fn refresh_hash(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    user: &str,
    factor: Factor,
    hashes: &Refreshed,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE gw_secrets SET phc = $5, updated_at = $6
         WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND factor = $4 AND phc = $7",
    )
    .bind(scope.tenant)
    .bind(scope.tier)
    .bind(user)
    .bind(factor.name())
    .bind(hashes.new.as_str())
    .bind(now_ms)
    .bind(hashes.old.as_str())
    .execute(&mut *conn)
    .await
    .map_err(db_err("storing a refreshed hash"))?;
    Ok(())
}

/// Marks `user`'s emergency OTP used if it is unused, unexpired and still `code_hash`;
/// otherwise says why not. One statement that both checks and marks, so two answers
/// with the same code cannot both use it: the second finds `used_at` set (on
/// PostgreSQL it waits for the first's row lock and re-reads the row; SQLite has one
/// writer). Emergency logons are rare, so one statement per answer is enough.
async fn use_emergency_otp(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    user: &str,
    code_hash: &str,
    now_ms: i64,
) -> Result<Option<Conflict>, StoreError> {
    let done = sqlx::query(
        "UPDATE gw_emergency_otps SET used_at = $5
         WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND code_hash = $4
           AND used_at IS NULL AND expires_at > $5",
    )
    .bind(scope.tenant)
    .bind(scope.tier)
    .bind(user)
    .bind(code_hash)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(db_err("using an emergency OTP"))?;
    if done.rows_affected() == 1 {
        return Ok(None);
    }
    // Not used: say why, in the order the verifier judges a code (another code
    // first, then used, then expired).
    let row = sqlx::query(
        "SELECT code_hash, used_at FROM gw_emergency_otps
         WHERE tenant = $1 AND tier = $2 AND user_id = $3",
    )
    .bind(scope.tenant)
    .bind(scope.tier)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err("reading an emergency OTP"))?;
    let Some(row) = row else {
        return Ok(Some(Conflict::EmergencyOtpChanged));
    };
    let stored: String = row.try_get(0).map_err(db_err("reading an emergency OTP"))?;
    let used_at: Option<i64> = row.try_get(1).map_err(db_err("reading an emergency OTP"))?;
    Ok(Some(if stored != code_hash {
        Conflict::EmergencyOtpChanged
    } else if used_at.is_some() {
        Conflict::EmergencyOtpUsed
    } else {
        Conflict::EmergencyOtpExpired
    }))
}

/// Undoes [`use_emergency_otp`] within the same transaction, for an answer that
/// turned into a deny after it used the code. Only this transaction's own mark
/// (`used_at = now_ms`) is cleared; no other answer can have used the code in
/// between, as this transaction holds the row.
async fn release_emergency_otp(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    user: &str,
    code_hash: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE gw_emergency_otps SET used_at = NULL
         WHERE tenant = $1 AND tier = $2 AND user_id = $3 AND code_hash = $4 AND used_at = $5",
    )
    .bind(scope.tenant)
    .bind(scope.tier)
    .bind(user)
    .bind(code_hash)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(db_err("giving back an emergency OTP"))?;
    Ok(())
}

/// On PostgreSQL, holds a transaction lock per user whose lockout standing this
/// batch reads and writes. Gateways of one tier on one store commit side by side
/// (each has its own journal), and each writes back the count it read plus one:
/// without the lock, concurrent failures on two gateways would count once. Taken
/// for the whole batch at once, in sorted order, so two batches cannot deadlock.
/// SQLite needs none: its write transactions take the one writer lock up front.
async fn lock_standings(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    answers: &[&[Effect]],
) -> Result<(), StoreError> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    let mut users: Vec<&str> = answers
        .iter()
        .flat_map(|a| a.iter())
        .filter_map(Effect::lockout_user)
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    users.sort_unstable();
    users.dedup();
    // Rows of a VALUES list come in the order given; one 64-bit key per standing.
    let values: Vec<String> = (0..users.len()).map(|i| format!("(${})", i + 3)).collect();
    let sql = format!(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || $2 || chr(31) || k, 0))
         FROM (VALUES {}) AS v(k)",
        values.join(", ")
    );
    for_keys(&sql, scope, &users)
        .execute(&mut *conn)
        .await
        .map_err(db_err("locking lockout standings"))?;
    Ok(())
}

async fn standings<'u>(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    users: &[&'u str],
) -> Result<HashMap<&'u str, Standing>, StoreError> {
    let mut out = HashMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT user_id, failures, locked_until FROM gw_lockouts
         WHERE tenant = $1 AND tier = $2 AND user_id IN ({})",
        params(3, users.len())
    );
    let rows = for_keys(&sql, scope, users)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err("reading lockouts"))?;
    for row in rows {
        let user: String = row.try_get(0).map_err(db_err("reading lockouts"))?;
        let failures: i64 = row.try_get(1).map_err(db_err("reading lockouts"))?;
        let locked_until: Option<i64> = row.try_get(2).map_err(db_err("reading lockouts"))?;
        if let Some(u) = users.iter().find(|u| **u == user) {
            out.insert(
                *u,
                Standing {
                    failures: u32::try_from(failures).unwrap_or(u32::MAX),
                    locked_until_ms: locked_until,
                },
            );
        }
    }
    Ok(out)
}

/// Records each user's step where it is later than the stored one and the secret is
/// the one given; returns the users whose step was recorded.
async fn record_steps(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    steps: &[(usize, &str, i64, &str)],
) -> Result<HashSet<String>, StoreError> {
    // CASE user_id WHEN $3 THEN $4 … END for the step, … THEN $5 … for the secret.
    let (mut step, mut secret) = (String::from("CASE user_id"), String::from("CASE user_id"));
    for k in 0..steps.len() {
        let p = 3 + 3 * k;
        step.push_str(&format!(" WHEN ${p} THEN ${}", p + 1));
        secret.push_str(&format!(" WHEN ${p} THEN ${}", p + 2));
    }
    step.push_str(" END");
    secret.push_str(" END");
    let users = (0..steps.len())
        .map(|k| format!("${}", 3 + 3 * k))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "UPDATE gw_totp SET last_step = {step}
         WHERE tenant = $1 AND tier = $2 AND user_id IN ({users})
           AND (last_step IS NULL OR last_step < {step}) AND secret = {secret}
         RETURNING user_id"
    );
    let mut q = sqlx::query(&sql).bind(scope.tenant).bind(scope.tier);
    for (_, user, step, secret) in steps {
        q = q.bind(*user).bind(*step).bind(*secret);
    }
    let rows = q
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err("recording TOTP steps"))?;
    rows.iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()
        .map_err(db_err("recording TOTP steps"))
}

/// The stored (sealed) TOTP secret of each of `users` that has one.
async fn totp_secrets(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    users: &[&str],
) -> Result<HashMap<String, String>, StoreError> {
    by_user(
        conn,
        scope,
        "gw_totp",
        "secret",
        users,
        "reading TOTP secrets",
    )
    .await
}

async fn upsert_standings(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    counted: &[(&str, Standing)],
) -> Result<(), StoreError> {
    if counted.is_empty() {
        return Ok(());
    }
    let values = (0..counted.len())
        .map(|k| {
            let p = 3 + 3 * k;
            format!("($1, $2, ${p}, ${}, ${})", p + 1, p + 2)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO gw_lockouts (tenant, tier, user_id, failures, locked_until) VALUES {values}
         ON CONFLICT (tenant, tier, user_id) DO UPDATE SET failures = excluded.failures,
           locked_until = excluded.locked_until"
    );
    let mut q = sqlx::query(&sql).bind(scope.tenant).bind(scope.tier);
    for (user, s) in counted {
        q = q
            .bind(*user)
            .bind(i64::from(s.failures))
            .bind(s.locked_until_ms);
    }
    q.execute(&mut *conn)
        .await
        .map_err(db_err("recording failures"))?;
    Ok(())
}

async fn open_sessions(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    opened: &[(&str, &str, &str)],
    now_ms: i64,
) -> Result<(), StoreError> {
    if opened.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "UPDATE gw_sessions SET state = 'ended', end_reason = 'superseded', updated_at = $3
         WHERE tenant = $1 AND tier = $2 AND state <> 'ended' AND device IN ({})",
        params(4, opened.len())
    );
    let mut q = sqlx::query(&sql)
        .bind(scope.tenant)
        .bind(scope.tier)
        .bind(now_ms);
    for (_, device, _) in opened {
        q = q.bind(*device);
    }
    q.execute(&mut *conn)
        .await
        .map_err(db_err("ending superseded sessions"))?;

    let values = (0..opened.len())
        .map(|k| {
            let p = 4 + 3 * k;
            format!(
                "($1, $2, ${p}, ${}, ${}, ${}, 'active', $3, $3, '')",
                p + 1,
                p + 2,
                p + 2
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO gw_sessions (tenant, tier, id, device, user_id, operator, state, started_at, updated_at, end_reason)
         VALUES {values}"
    );
    let mut q = sqlx::query(&sql)
        .bind(scope.tenant)
        .bind(scope.tier)
        .bind(now_ms);
    for (id, device, user) in opened {
        q = q.bind(*id).bind(*device).bind(*user);
    }
    q.execute(&mut *conn)
        .await
        .map_err(db_err("opening sessions"))?;
    Ok(())
}

async fn set_session(
    conn: &mut AnyConnection,
    scope: &Scope<'_>,
    id: &str,
    state: SessionState,
    operator: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let end_reason = if state == SessionState::Ended {
        "logoff"
    } else {
        ""
    };
    let done = sqlx::query(
        "UPDATE gw_sessions SET state = $4, operator = COALESCE($5, operator), updated_at = $6,
           end_reason = $7
         WHERE tenant = $1 AND tier = $2 AND id = $3 AND state <> 'ended'",
    )
    .bind(scope.tenant)
    .bind(scope.tier)
    .bind(id)
    .bind(state.name())
    .bind(operator)
    .bind(now_ms)
    .bind(end_reason)
    .execute(&mut *conn)
    .await
    .map_err(db_err("updating a session"))?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::CredentialStore;
    use crate::crypto::SealingKey;
    use crate::db::testing::{targets, Target};
    use crate::db::Db;
    use crate::factors::totp::TotpParams;
    use crate::journal::{self, Committed, Journal};
    use crate::lockout;
    use crate::session;
    use sekisho_policy_engine::audit::event::EventBody;
    use sekisho_policy_engine::audit::Outcome;
    use sekisho_policy_engine::store::Backend;
    use sekisho_policy_engine::Tier;

    const POLICY: LockoutPolicy = LockoutPolicy {
        max_failures: 3,
        lock_ms: 60_000,
    };

    struct Fixture {
        db: Db,
        store: CredentialStore,
        journal: Journal,
    }

    async fn fixture(t: &Target) -> Fixture {
        let db = t.db().await;
        let store = CredentialStore::open(db.clone(), SealingKey::generate().unwrap())
            .await
            .unwrap();
        let mut conn = db.acquire().await.unwrap();
        for user in ["u1", "u2", "u3"] {
            store
                .set_totp(&mut conn, user, &[7; 20], &TotpParams::default())
                .await
                .unwrap();
            set_stored_secret(&db, user, &format!("sealed-{user}")).await;
        }
        let journal = Journal::start(db.clone(), "gw".into()).await.unwrap();
        Fixture { db, store, journal }
    }

    /// Stands in for a (re-)enrollment: the effects only compare the stored text.
    async fn set_stored_secret(db: &Db, user: &str, sealed: &str) {
        sqlx::query(
            "UPDATE gw_totp SET secret = $4 WHERE tenant = $1 AND tier = $2 AND user_id = $3",
        )
        .bind(&*db.tenant)
        .bind(db.tier.name())
        .bind(user)
        .bind(sealed)
        .execute(&db.pool)
        .await
        .unwrap();
    }

    fn event(user: &str) -> EventBody {
        let mut e = EventBody::new("gw", "lgwan", "logon", Outcome::Allow);
        e.user = user.into();
        e
    }

    async fn commit(f: &Fixture, effects: Vec<Effect>) -> Committed {
        let user = effects
            .iter()
            .find_map(|e| e.user().map(String::from))
            .unwrap_or_default();
        f.journal
            .commit(effects, Box::new(move |_| vec![event(&user)]))
            .await
            .unwrap()
    }

    fn step(user: &str, step: u64) -> Effect {
        Effect::TotpStep {
            user: user.into(),
            step,
            secret: format!("sealed-{user}"),
        }
    }

    fn admit(user: &str) -> Effect {
        Effect::Admit { user: user.into() }
    }

    fn fail(user: &str) -> Effect {
        Effect::CountFailure {
            user: user.into(),
            policy: POLICY,
        }
    }

    fn use_otp(user: &str, code_hash: &str) -> Effect {
        Effect::UseEmergencyOtp {
            user: user.into(),
            code_hash: code_hash.into(),
        }
    }

    /// What committing one answer that uses `user`'s code `hash` ran into.
    async fn use_conflict(f: &Fixture, user: &str, hash: &str) -> Option<Conflict> {
        commit(f, vec![use_otp(user, hash)]).await.applied.conflict
    }

    /// Issues `user` an emergency OTP stored as `code_hash`, expiring at `expires_ms`.
    async fn issue_otp(f: &Fixture, user: &str, code_hash: &str, expires_ms: i64) {
        let mut conn = f.db.acquire().await.unwrap();
        f.store
            .set_emergency_otp(&mut conn, user, code_hash, expires_ms)
            .await
            .unwrap();
    }

    async fn otp_used(f: &Fixture, user: &str) -> bool {
        f.store.emergency_otp(user).await.unwrap().unwrap().used
    }

    fn in_an_hour() -> i64 {
        crate::db::now_ms() + 3_600_000
    }

    fn open(id: &str, device: &str, user: &str) -> Effect {
        Effect::OpenSession {
            id: id.into(),
            device: device.into(),
            user: user.into(),
        }
    }

    #[test]
    fn rounds_never_repeat_a_user_or_a_device() {
        let a = [step("u1", 1), open("s1", "d1", "u1")];
        let b = [step("u2", 1), open("s2", "d2", "u2")];
        let c = [step("u1", 2)];
        let d = [open("s3", "d2", "u3")];
        let e: [Effect; 0] = [];
        let answers: Vec<&[Effect]> = vec![&a, &b, &e, &c, &d];
        assert_eq!(rounds(&answers), vec![vec![0, 1], vec![3, 4]]);
        let many: Vec<Vec<Effect>> = (0..300).map(|i| vec![admit(&format!("u{i}"))]).collect();
        let many: Vec<&[Effect]> = many.iter().map(Vec::as_slice).collect();
        let sizes: Vec<usize> = rounds(&many).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![128, 128, 44]);
    }

    #[tokio::test]
    async fn an_answer_stands_only_while_its_card_is_held_by_its_user() {
        for t in targets("effects-cards") {
            let f = fixture(&t).await;
            sqlx::query(
                "INSERT INTO gw_cards (tenant, tier, user_id, fingerprint, kind, certificate, not_after, enrolled_at)
                 VALUES ($1, $2, 'u1', 'fp-1', 'card', '00', 0, 0)",
            )
            .bind(&*f.db.tenant)
            .bind(f.db.tier.name())
            .execute(&f.db.pool)
            .await
            .unwrap();
            let held = |user: &str, fingerprint: &str| {
                vec![
                    admit(user),
                    Effect::CardHeld {
                        user: user.into(),
                        fingerprint: fingerprint.into(),
                    },
                ]
            };
            let conflict = |effects| async { commit(&f, effects).await.applied.conflict };
            assert_eq!(conflict(held("u1", "fp-1")).await, None);
            assert_eq!(
                conflict(held("u2", "fp-1")).await,
                Some(Conflict::CardRemoved),
                "another user's card"
            );
            assert_eq!(
                conflict(held("u1", "fp-gone")).await,
                Some(Conflict::CardRemoved)
            );
        }
    }

    #[tokio::test]
    async fn a_refreshed_hash_replaces_only_the_hash_that_was_checked() {
        for t in targets("effects-refresh") {
            let f = fixture(&t).await;
            let set = |phc: &'static str| {
                let (db, store) = (f.db.clone(), &f.store);
                async move {
                    let mut conn = db.acquire().await.unwrap();
                    store
                        .set_secret(&mut conn, "u1", Factor::Pin, phc)
                        .await
                        .unwrap();
                }
            };
            let refresh = |old: &str, new: &str| Effect::RefreshHash {
                user: "u1".into(),
                factor: Factor::Pin,
                hashes: Refreshed {
                    old: old.into(),
                    new: new.into(),
                },
            };
            set("old-cost").await;
            commit(&f, vec![refresh("old-cost", "new-cost")]).await;
            assert_eq!(
                f.store.secret("u1", Factor::Pin).await.unwrap().as_deref(),
                Some("new-cost")
            );
            // Set anew between the check and the commit: the new PIN stays.
            set("enrolled-again").await;
            commit(&f, vec![refresh("new-cost", "stale")]).await;
            assert_eq!(
                f.store.secret("u1", Factor::Pin).await.unwrap().as_deref(),
                Some("enrolled-again")
            );
            // The password of the same user is another row.
            commit(
                &f,
                vec![Effect::RefreshHash {
                    user: "u1".into(),
                    factor: Factor::Password,
                    hashes: Refreshed {
                        old: "enrolled-again".into(),
                        new: "wrong-row".into(),
                    },
                }],
            )
            .await;
            assert_eq!(
                f.store.secret("u1", Factor::Pin).await.unwrap().as_deref(),
                Some("enrolled-again")
            );
        }
    }

    #[tokio::test]
    async fn a_totp_step_is_recorded_once_even_when_answers_race() {
        for t in targets("effects-totp") {
            let f = fixture(&t).await;
            assert_eq!(
                commit(&f, vec![step("u1", 100)]).await.applied.conflict,
                None
            );
            // The same step again, and an earlier one: replays.
            for s in [100, 99] {
                assert_eq!(
                    commit(&f, vec![step("u1", s)]).await.applied.conflict,
                    Some(Conflict::TotpReplayed)
                );
            }
            // Racing answers with one code, in one batch or several: exactly one wins.
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let j = f.journal.clone();
                    tokio::spawn(async move {
                        j.commit(
                            vec![step("u2", 5), open(&session::new_id().unwrap(), "d2", "u2")],
                            Box::new(|_| Vec::new()),
                        )
                        .await
                        .unwrap()
                    })
                })
                .collect();
            let mut won = 0;
            for r in racers {
                match r.await.unwrap().applied.conflict {
                    None => won += 1,
                    Some(c) => assert_eq!(c, Conflict::TotpReplayed),
                }
            }
            assert_eq!(won, 1, "{}", t.url);
            // The losers opened no session: the winner's is the device's only one.
            let s = session::current(&f.db, "d2").await.unwrap().unwrap();
            assert_eq!((s.user.as_str(), s.state), ("u2", SessionState::Active));
            // A code checked against a secret enrolled again since: refused as such,
            // and the new secret's replay guard is untouched.
            set_stored_secret(&f.db, "u3", "sealed-again").await;
            assert_eq!(
                commit(&f, vec![step("u3", 200)]).await.applied.conflict,
                Some(Conflict::TotpChanged)
            );
            let fresh = Effect::TotpStep {
                user: "u3".into(),
                step: 200,
                secret: "sealed-again".into(),
            };
            assert_eq!(commit(&f, vec![fresh]).await.applied.conflict, None);
            // A user without TOTP (removed in between) cannot record a step.
            assert_eq!(
                commit(&f, vec![step("nobody", 1)]).await.applied.conflict,
                Some(Conflict::TotpChanged)
            );
            f.journal.close().await;
        }
    }

    #[tokio::test]
    async fn failures_lock_and_a_locked_user_is_not_admitted() {
        for t in targets("effects-lockout") {
            let f = fixture(&t).await;
            assert_eq!(
                commit(&f, vec![fail("u1")]).await.applied.newly_locked,
                None
            );
            // Admitted before the lock: the count is forgotten.
            let done = commit(&f, vec![admit("u1"), open("s1", "d1", "u1")]).await;
            assert_eq!(done.applied, Applied::default());
            assert_eq!(
                lockout::standing(&f.db, "u1").await.unwrap(),
                Default::default()
            );
            let mut locked = None;
            for _ in 0..3 {
                locked = commit(&f, vec![fail("u1")]).await.applied.newly_locked;
            }
            let until = locked.expect("the third failure locks");
            // Failures of one user in one batch are counted one by one.
            let both = [vec![fail("u3")], vec![fail("u3")]];
            let answers: Vec<&[Effect]> = both.iter().map(Vec::as_slice).collect();
            assert_eq!(rounds(&answers).len(), 2);

            let done = commit(&f, vec![admit("u1"), step("u1", 7), open("s2", "d1", "u1")]).await;
            assert_eq!(
                done.applied.conflict,
                Some(Conflict::Locked { until_ms: until })
            );
            // The code is used up all the same; the session was not opened.
            assert_eq!(
                commit(&f, vec![step("u1", 7)]).await.applied.conflict,
                Some(Conflict::TotpReplayed)
            );
            let s = session::current(&f.db, "d1").await.unwrap().unwrap();
            assert_eq!(s.id, "s1");
            // Another tier sharing the database has its own count.
            let other = t.db_of(Tier::Mynumber).await;
            assert_eq!(
                lockout::standing(&other, "u1").await.unwrap(),
                Default::default()
            );
            f.journal.close().await;
        }
    }

    /// Two gateways of a tier on one PostgreSQL store count one user's failures at
    /// once: the second waits for the first's commit and counts on top of it.
    /// (SQLite's write transactions are one at a time anyway.)
    #[tokio::test]
    async fn failures_counted_by_two_gateways_at_once_are_both_counted() {
        for t in targets("effects-two-gateways") {
            let db = t.db().await;
            if db.backend != Backend::Postgres {
                continue;
            }
            let failure = [fail("u9")];
            let now = crate::db::now_ms();
            let mut first = db.begin_write().await.unwrap();
            let scope = Scope {
                tenant: db.tenant(),
                tier: db.tier().name(),
            };
            apply(&mut first, &scope, &[&failure], now).await.unwrap();

            let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
            let second = {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut tx = db.begin_write().await.unwrap();
                    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    pid_tx.send(pid).unwrap();
                    let scope = Scope {
                        tenant: db.tenant(),
                        tier: db.tier().name(),
                    };
                    apply(&mut tx, &scope, &[&[fail("u9")]], now).await.unwrap();
                    tx.commit().await.unwrap();
                })
            };
            // Until the second is seen waiting for a lock the first holds.
            let pid = pid_rx.await.unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(30), async {
                loop {
                    let waiting: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM pg_locks WHERE pid = $1 AND NOT granted",
                    )
                    .bind(pid)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                    if waiting > 0 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the second gateway's batch waits for the first");
            first.commit().await.unwrap();
            second.await.unwrap();
            assert_eq!(lockout::standing(&db, "u9").await.unwrap().failures, 2);
        }
    }

    #[tokio::test]
    async fn a_deny_of_a_locked_user_is_flagged_and_counts_nothing() {
        for t in targets("effects-locked-deny") {
            let f = fixture(&t).await;
            let deny = |user: &str| Effect::Deny { user: user.into() };
            let flagged = |until: i64| Applied {
                locked_until: Some(until),
                ..Applied::default()
            };
            // Unlocked: a deny is not flagged and counts nothing; neither is a
            // failure that does not lock.
            assert_eq!(
                commit(&f, vec![deny("u1")]).await.applied,
                Applied::default()
            );
            assert_eq!(
                lockout::standing(&f.db, "u1").await.unwrap(),
                Default::default()
            );
            for _ in 0..2 {
                assert_eq!(
                    commit(&f, vec![fail("u1")]).await.applied,
                    Applied::default()
                );
            }
            // The failure that locks is answered as before the lock; a deny after it
            // in the same batch sees the lock.
            let scope = Scope {
                tenant: &f.db.tenant,
                tier: f.db.tier.name(),
            };
            let (third, then) = (vec![fail("u1")], vec![deny("u1")]);
            let answers: Vec<&[Effect]> = vec![&third, &then];
            let now = crate::db::now_ms();
            let until = now + POLICY.lock_ms;
            let mut conn = f.db.pool.acquire().await.unwrap();
            let applied = apply(&mut conn, &scope, &answers, now).await.unwrap();
            assert_eq!(
                applied,
                vec![
                    Applied {
                        newly_locked: Some(until),
                        ..Applied::default()
                    },
                    flagged(until)
                ]
            );
            drop(conn);
            // Locked: failures and denies are flagged (a TOTP step still recorded);
            // only failures are counted, and none extends the lock.
            assert_eq!(commit(&f, vec![fail("u1")]).await.applied, flagged(until));
            assert_eq!(
                commit(&f, vec![step("u1", 3), deny("u1")]).await.applied,
                flagged(until)
            );
            assert_eq!(
                commit(&f, vec![step("u1", 3)]).await.applied.conflict,
                Some(Conflict::TotpReplayed)
            );
            assert_eq!(
                lockout::standing(&f.db, "u1").await.unwrap(),
                Standing {
                    failures: 4,
                    locked_until_ms: Some(until)
                }
            );
            // Another user is not flagged, nor is anyone once the lock has run out.
            assert_eq!(
                commit(&f, vec![deny("u2")]).await.applied,
                Applied::default()
            );
            let later: Vec<&[Effect]> = vec![&then];
            let mut conn = f.db.pool.acquire().await.unwrap();
            let applied = apply(&mut conn, &scope, &later, until).await.unwrap();
            assert_eq!(applied, vec![Applied::default()], "{}", t.url);
            drop(conn);
            f.journal.close().await;
        }
    }

    #[tokio::test]
    async fn sessions_supersede_and_move_only_while_open() {
        for t in targets("effects-sessions") {
            let f = fixture(&t).await;
            // Two logons on one device in one batch: the later one holds the device.
            let first = vec![open("s1", "d1", "u1")];
            let second = vec![open("s2", "d1", "u2")];
            let answers: Vec<&[Effect]> = vec![&first, &second];
            let mut conn = f.db.pool.acquire().await.unwrap();
            let scope = Scope {
                tenant: &f.db.tenant,
                tier: f.db.tier.name(),
            };
            let applied = apply(&mut conn, &scope, &answers, 1).await.unwrap();
            assert_eq!(applied, vec![Applied::default(); 2]);
            drop(conn);
            let s = session::current(&f.db, "d1").await.unwrap().unwrap();
            assert_eq!((s.id.as_str(), s.user.as_str()), ("s2", "u2"));
            assert_eq!(
                session::get(&f.db, "s1").await.unwrap().unwrap().state,
                SessionState::Ended
            );

            let set = |state: SessionState, operator: Option<&str>| Effect::SetSession {
                id: "s2".into(),
                state,
                operator: operator.map(String::from),
            };
            let lock = set(SessionState::Locked, None);
            assert_eq!(commit(&f, vec![lock]).await.applied.conflict, None);
            let resume = set(SessionState::Active, Some("u3"));
            assert_eq!(commit(&f, vec![resume]).await.applied.conflict, None);
            let s = session::get(&f.db, "s2").await.unwrap().unwrap();
            assert_eq!((s.state, s.operator.as_str()), (SessionState::Active, "u3"));
            let logoff = set(SessionState::Ended, None);
            assert_eq!(commit(&f, vec![logoff]).await.applied.conflict, None);
            // An ended session is never moved again.
            for state in [
                SessionState::Active,
                SessionState::Locked,
                SessionState::Ended,
            ] {
                assert_eq!(
                    commit(&f, vec![set(state, None)]).await.applied.conflict,
                    Some(Conflict::NoSession)
                );
            }
            f.journal.close().await;
        }
    }

    #[tokio::test]
    async fn an_emergency_otp_is_used_once_even_when_answers_race() {
        for t in targets("effects-otp") {
            let f = fixture(&t).await;
            issue_otp(&f, "u1", "hash-1", in_an_hour()).await;
            // Racing logons with one code, in one batch or several: exactly one is let
            // in, the others lose the code and open no session.
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let j = f.journal.clone();
                    tokio::spawn(async move {
                        let id = session::new_id().unwrap();
                        let effects =
                            vec![admit("u1"), use_otp("u1", "hash-1"), open(&id, "d1", "u1")];
                        let done = j.commit(effects, Box::new(|_| Vec::new())).await.unwrap();
                        (id, done.applied.conflict)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for r in racers {
                match r.await.unwrap() {
                    (id, None) => winners.push(id),
                    (_, Some(c)) => assert_eq!(c, Conflict::EmergencyOtpUsed),
                }
            }
            assert_eq!(winners.len(), 1, "{}", t.url);
            let s = session::current(&f.db, "d1").await.unwrap().unwrap();
            assert_eq!(s.id, winners[0]);
            assert!(otp_used(&f, "u1").await);
            assert_eq!(
                use_conflict(&f, "u1", "hash-1").await,
                Some(Conflict::EmergencyOtpUsed)
            );

            // Issued again since the check: the old code is not the one stored, and
            // the new one is untouched and works.
            issue_otp(&f, "u1", "hash-2", in_an_hour()).await;
            assert_eq!(
                use_conflict(&f, "u1", "hash-1").await,
                Some(Conflict::EmergencyOtpChanged)
            );
            assert!(!otp_used(&f, "u1").await);
            assert_eq!(use_conflict(&f, "u1", "hash-2").await, None);
            // Expired between the check and the commit; withdrawn (or never issued).
            issue_otp(&f, "u2", "hash-3", 1).await;
            assert_eq!(
                use_conflict(&f, "u2", "hash-3").await,
                Some(Conflict::EmergencyOtpExpired)
            );
            assert!(!otp_used(&f, "u2").await);
            assert_eq!(
                use_conflict(&f, "nobody", "hash-4").await,
                Some(Conflict::EmergencyOtpChanged)
            );
            f.journal.close().await;
        }
    }

    #[tokio::test]
    async fn an_emergency_otp_is_kept_when_its_answer_does_not_stand() {
        for t in targets("effects-otp-kept") {
            let f = fixture(&t).await;
            issue_otp(&f, "u1", "hash-1", in_an_hour()).await;
            // A locked user's right code: "locked", and the code stays usable.
            let mut locked = None;
            for _ in 0..3 {
                locked = commit(&f, vec![fail("u1")]).await.applied.newly_locked;
            }
            let until = locked.expect("the third failure locks");
            let done = commit(
                &f,
                vec![admit("u1"), use_otp("u1", "hash-1"), open("s1", "d1", "u1")],
            )
            .await;
            assert_eq!(
                done.applied.conflict,
                Some(Conflict::Locked { until_ms: until })
            );
            assert!(!otp_used(&f, "u1").await);
            assert!(session::current(&f.db, "d1").await.unwrap().is_none());

            // An unlock whose session ended meanwhile: it uses the code in the
            // transaction, finds the session gone, and gives the code back; the
            // failure count it would have cleared stays.
            issue_otp(&f, "u2", "hash-2", in_an_hour()).await;
            commit(&f, vec![open("s2", "d2", "u2")]).await;
            let logoff = Effect::SetSession {
                id: "s2".into(),
                state: SessionState::Ended,
                operator: None,
            };
            assert_eq!(commit(&f, vec![logoff]).await.applied.conflict, None);
            commit(&f, vec![fail("u2")]).await;
            let unlock = Effect::SetSession {
                id: "s2".into(),
                state: SessionState::Active,
                operator: None,
            };
            let done = commit(&f, vec![admit("u2"), use_otp("u2", "hash-2"), unlock]).await;
            assert_eq!(done.applied.conflict, Some(Conflict::NoSession));
            assert!(!otp_used(&f, "u2").await, "{}", t.url);
            assert_eq!(lockout::standing(&f.db, "u2").await.unwrap().failures, 1);
            // And it is still good for an answer that stands.
            assert_eq!(
                commit(&f, vec![admit("u2"), use_otp("u2", "hash-2")])
                    .await
                    .applied,
                Applied::default()
            );
            assert!(otp_used(&f, "u2").await);
            assert_eq!(
                lockout::standing(&f.db, "u2").await.unwrap(),
                Default::default()
            );
            f.journal.close().await;
        }
    }

    #[tokio::test]
    async fn a_failed_batch_changes_nothing() {
        for t in targets("effects-atomic") {
            let f = fixture(&t).await;
            commit(&f, vec![open("s1", "d1", "u1")]).await;
            let before = journal::verify(&f.db, "gw").await.unwrap().checked;
            // A session id that exists already: the batch fails as a whole.
            issue_otp(&f, "u2", "hash-1", in_an_hour()).await;
            let refused = f
                .journal
                .commit(
                    vec![
                        step("u2", 9),
                        use_otp("u2", "hash-1"),
                        fail("u3"),
                        open("s1", "d2", "u2"),
                    ],
                    Box::new(|_| vec![event("u2")]),
                )
                .await;
            assert!(refused.is_err(), "{}", t.url);
            assert!(!otp_used(&f, "u2").await);
            assert_eq!(journal::verify(&f.db, "gw").await.unwrap().checked, before);
            assert_eq!(
                lockout::standing(&f.db, "u3").await.unwrap(),
                Default::default()
            );
            assert!(session::current(&f.db, "d2").await.unwrap().is_none());
            // The step was not recorded: it can still be used.
            assert_eq!(commit(&f, vec![step("u2", 9)]).await.applied.conflict, None);
            f.journal.close().await;
        }
    }
}
