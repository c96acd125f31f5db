//! Bulk import of a standalone tier's users: a CSV file with one row per person
//! (name, department, role, groups, and initial password, PIN, card certificate and
//! TOTP seed) into this tier's gateway store.
//!
//! Two halves, so that each check happens where its facts are:
//! - [`parse_users`] runs where the file is (the `sekisho` CLI): encoding, CSV
//!   syntax, columns, formats, card certificate files relative to the CSV. Every
//!   problem is named by row and column.
//! - [`import_users`] runs in the gateway, which alone knows its card CAs, whether a
//!   directory holds the passwords, and what is stored. It checks every user again
//!   (the admin API is an API, not only the CLI's back end), compares each with the
//!   store, and writes every change in **one transaction**, or nothing.
//!
//! Re-importing the same file changes nothing: a password or PIN that already
//! verifies against the stored hash is not hashed again, a TOTP secret equal to the
//! stored one is not replaced (its replay guard stays), a card already enrolled is
//! not added twice. An import never removes a credential: a cell left empty keeps
//! what is stored. Secrets are never logged, returned or put in an error.

use std::collections::HashMap;
use std::path::Path;

use rustls_pki_types::UnixTime;
use sekisho_policy_engine::import::{check_id, read_table, split_list, Change, Problem};
use sekisho_proto::v1 as pb;

use crate::credentials::{card_fingerprint, CredentialError, CredentialStore, StoredUser};
use crate::db::{db_err, now_ms};
use crate::factors::card::{self, CardTrust};
use crate::factors::pin;
use crate::factors::totp::TotpParams;
use crate::hashing::SecretHasher;
use sqlx::AnyConnection;

/// The columns of a users file. Only `user` is required; a column left out of the
/// header leaves that attribute as stored.
pub const USER_COLUMNS: &[&str] = &[
    "user",
    "name",
    "department",
    "role",
    "groups",
    "password",
    "pin",
    "card_cert",
    "totp_seed",
];

/// Shortest standalone password accepted (as `enroll password`).
pub const MIN_PASSWORD_CHARS: usize = 8;
const MAX_PASSWORD_BYTES: usize = 1024;
/// TOTP seeds: 80 bits is what older authenticator deployments used; less is
/// guessable. 64 bytes is more than any HMAC here can use.
const MIN_TOTP_SECRET: usize = 10;
const MAX_TOTP_SECRET: usize = 64;
const MAX_TEXT_CHARS: usize = 256;

/// One valid row of a users file, ready to send to the gateway.
#[derive(Clone, Default)]
pub struct UserRow {
    pub row: usize,
    pub id: String,
    pub name: Option<String>,
    pub department: Option<String>,
    pub role: Option<String>,
    pub groups: Option<Vec<String>>,
    pub password: String,
    pub pin: String,
    pub cards: Vec<Vec<u8>>,
    pub totp_secret: Vec<u8>,
}

/// Secrets stay out of debug output.
impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("row", &self.row)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("department", &self.department)
            .field("role", &self.role)
            .field("groups", &self.groups)
            .field("password", &!self.password.is_empty())
            .field("pin", &!self.pin.is_empty())
            .field("cards", &self.cards.len())
            .field("totp", &!self.totp_secret.is_empty())
            .finish()
    }
}

impl UserRow {
    pub fn to_proto(&self) -> pb::ImportUser {
        pb::ImportUser {
            id: self.id.clone(),
            name: self.name.clone(),
            department: self.department.clone(),
            role: self.role.clone(),
            groups: self.groups.clone().unwrap_or_default(),
            set_groups: self.groups.is_some(),
            password: self.password.clone(),
            pin: self.pin.clone(),
            card_certificates: self.cards.clone(),
            totp_secret: self.totp_secret.clone(),
            row: u32::try_from(self.row).unwrap_or(u32::MAX),
        }
    }
}

/// Decodes a TOTP seed as authenticator apps show it: base32, case and spaces,
/// hyphens and `=` padding ignored.
pub fn decode_seed(seed: &str) -> Result<Vec<u8>, String> {
    let clean: String = seed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = data_encoding::BASE32_NOPAD
        .decode(clean.as_bytes())
        .map_err(|e| format!("not base32 (letters A-Z and digits 2-7): {e}"))?;
    check_seed_len(bytes.len())?;
    Ok(bytes)
}

fn check_seed_len(n: usize) -> Result<(), String> {
    if n < MIN_TOTP_SECRET {
        return Err(format!(
            "the seed is {n} bytes; at least {MIN_TOTP_SECRET} (16 base32 characters) are needed"
        ));
    }
    if n > MAX_TOTP_SECRET {
        return Err(format!("the seed is {n} bytes; at most {MAX_TOTP_SECRET}"));
    }
    Ok(())
}

fn check_password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if n < MIN_PASSWORD_CHARS || p.len() > MAX_PASSWORD_BYTES {
        // The length only, never the value.
        return Err(format!(
            "a password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters (got {n})"
        ));
    }
    Ok(())
}

fn check_text(t: &str) -> Result<(), String> {
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(format!("longer than {MAX_TEXT_CHARS} characters"));
    }
    if t.chars().any(char::is_control) {
        return Err("contains a line break or control character".into());
    }
    Ok(())
}

/// Checks a users CSV (already decoded text) completely and returns its rows, or
/// every problem found. Certificate paths in `card_cert` are relative to
/// `base_dir` (the CSV file's directory); several are separated by `;`.
pub fn parse_users(text: &str, base_dir: &Path) -> Result<Vec<UserRow>, Vec<Problem>> {
    let table = read_table(text, USER_COLUMNS, &["user"])?;
    let has = |c: &str| table.columns.iter().any(|k| k == c);
    let (has_name, has_dept, has_role, has_groups) =
        (has("name"), has("department"), has("role"), has("groups"));
    let mut problems = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut rows = Vec::with_capacity(table.rows.len());
    for (row, mut cells) in table.rows {
        let mut take = |c: &str| cells.remove(c).unwrap_or_default();
        let before = problems.len();
        let mut bad =
            |column: &str, reason: String| problems.push(Problem::new(row, column, reason));
        let id = take("user");
        if let Err(why) = check_id(&id) {
            bad("user", format!("user id {why}"));
        } else if let Some(first) = seen.insert(id.clone(), row) {
            bad("user", format!("user '{id}' is already in row {first}"));
        }
        let mut text = |column: &str, present: bool| {
            let v = take(column);
            if let Err(why) = check_text(&v) {
                bad(column, why);
            }
            present.then_some(v)
        };
        let name = text("name", has_name);
        let department = text("department", has_dept);
        let role = text("role", has_role);
        let groups_cell = take("groups");
        let groups = split_list(&groups_cell);
        for g in &groups {
            if let Err(why) = check_id(g) {
                bad("groups", format!("group id '{g}' {why}"));
            }
        }
        let password = take("password");
        if !password.is_empty() {
            if let Err(why) = check_password(&password) {
                bad("password", why);
            }
        }
        let pin_cell = take("pin");
        if !pin_cell.is_empty() {
            if let Err(why) = pin::check_new_pin(&pin_cell) {
                bad("pin", why.to_string());
            }
        }
        let mut cards = Vec::new();
        for file in split_list(&take("card_cert")) {
            let path = base_dir.join(&file);
            match crate::agent::read_certificate_der(&path) {
                Ok(der) => cards.push(der),
                Err(e) => bad("card_cert", format!("'{file}': {e}")),
            }
        }
        let seed = take("totp_seed");
        let totp_secret = if seed.is_empty() {
            Vec::new()
        } else {
            decode_seed(&seed).unwrap_or_else(|why| {
                bad("totp_seed", why);
                Vec::new()
            })
        };
        if problems.len() == before {
            rows.push(UserRow {
                row,
                id,
                name,
                department,
                role,
                groups: has_groups.then_some(groups),
                password,
                pin: pin_cell,
                cards,
                totp_secret,
            });
        }
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(problems)
    }
}

/// What the gateway needs to check and apply an import.
pub struct ImportContext<'a> {
    pub store: &'a CredentialStore,
    pub hasher: &'a SecretHasher,
    /// The card CAs; `None` refuses every card.
    pub cards: Option<&'a CardTrust>,
    /// A directory checks passwords on this tier: passwords cannot be imported.
    pub directory_passwords: bool,
    /// Parameters of imported TOTP secrets (the gateway's `[totp]` settings).
    pub totp: TotpParams,
}

/// One user's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOutcome {
    pub user: String,
    pub row: u32,
    pub change: Change,
    /// What differs: name, department, role, groups, password, pin, card, totp.
    pub fields: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportFailure {
    /// The users were refused; nothing was written.
    #[error("{} problem(s) in the import; nothing was written", .0.len())]
    Invalid(Vec<pb::ImportProblem>),
    #[error(transparent)]
    Store(#[from] CredentialError),
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// A checked user with what the gateway will store for it.
struct Planned<'u> {
    user: &'u pb::ImportUser,
    stored: Option<StoredUser>,
    profile: StoredUser,
    fields: Vec<&'static str>,
    /// New PHC strings to store (password, pin), computed only when changed.
    password: Option<String>,
    pin: Option<String>,
    cards: Vec<(Vec<u8>, card::CardKind, i64, String)>,
    totp: bool,
}

fn problem(u: &pb::ImportUser, field: &str, reason: impl Into<String>) -> pb::ImportProblem {
    pb::ImportProblem {
        row: u.row,
        user: u.id.clone(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks every user as the gateway sees them: formats again, cards against this
/// tier's CAs, passwords against the directory setting.
fn check(ctx: &ImportContext<'_>, users: &[pb::ImportUser]) -> Vec<pb::ImportProblem> {
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, u32> = HashMap::new();
    let now = UnixTime::now();
    for u in users {
        if let Err(why) = check_id(&u.id) {
            problems.push(problem(u, "user", format!("user id {why}")));
        } else if let Some(first) = seen.insert(&u.id, u.row) {
            problems.push(problem(
                u,
                "user",
                format!("user '{}' is already in row {first}", u.id),
            ));
        }
        for (field, v) in [
            ("name", &u.name),
            ("department", &u.department),
            ("role", &u.role),
        ] {
            if let Some(Err(why)) = v.as_deref().map(check_text) {
                problems.push(problem(u, field, why));
            }
        }
        for g in &u.groups {
            if let Err(why) = check_id(g) {
                problems.push(problem(u, "groups", format!("group id '{g}' {why}")));
            }
        }
        if !u.password.is_empty() {
            if ctx.directory_passwords {
                problems.push(problem(
                    u,
                    "password",
                    "passwords on this tier are checked by the directory: leave the column empty",
                ));
            } else if let Err(why) = check_password(&u.password) {
                problems.push(problem(u, "password", why));
            }
        }
        if !u.pin.is_empty() {
            if let Err(why) = pin::check_new_pin(&u.pin) {
                problems.push(problem(u, "pin", why.to_string()));
            }
        }
        if !u.totp_secret.is_empty() {
            if let Err(why) = check_seed_len(u.totp_secret.len()) {
                problems.push(problem(u, "totp_seed", why));
            }
        }
        for (i, der) in u.card_certificates.iter().enumerate() {
            let which = if u.card_certificates.len() > 1 {
                format!("certificate {}: ", i + 1)
            } else {
                String::new()
            };
            match ctx.cards {
                None => problems.push(problem(
                    u,
                    "card_cert",
                    "this gateway has no card CA configured (cards.ca / cards.mynumber_ca), so no card could ever be accepted",
                )),
                Some(trust) => {
                    if let Err(f) = card::classify(trust, der, now) {
                        problems.push(problem(
                            u,
                            "card_cert",
                            format!("{which}cannot be used for logon on this tier: {f} (it must be valid now and chain to cards.ca or cards.mynumber_ca)"),
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// Verifies or hashes secrets on blocking threads, a share per core: `(secret,
/// stored PHC)` → `None` when the stored hash already verifies, else a new hash
/// (or, for a dry run, an empty string meaning "would change").
async fn settle_secrets(
    hasher: &SecretHasher,
    jobs: Vec<(String, Option<String>)>,
    dry_run: bool,
) -> Result<Vec<Option<String>>, ImportFailure> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per = jobs.len().div_ceil(cores);
    let mut handles = Vec::new();
    let mut jobs = jobs.into_iter();
    loop {
        let chunk: Vec<_> = jobs.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        let hasher = hasher.clone();
        handles.push(tokio::task::spawn_blocking(move || {
            chunk
                .into_iter()
                .map(|(secret, stored)| {
                    if let Some(phc) = &stored {
                        // A stored hash that cannot be parsed is replaced.
                        if hasher.verify(&secret, Some(phc)).unwrap_or(false) {
                            return Ok(None);
                        }
                    }
                    if dry_run {
                        return Ok(Some(String::new()));
                    }
                    hasher.hash(&secret).map(Some).map_err(|e| e.to_string())
                })
                .collect::<Result<Vec<_>, String>>()
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(
            h.await
                .map_err(|e| ImportFailure::Hash(e.to_string()))?
                .map_err(ImportFailure::Hash)?,
        );
    }
    Ok(out)
}

/// An import checked and compared with the store, its secrets hashed: what is
/// left is [`Plan::write`], which is quick, so that the caller can hold the
/// journal for it alone.
pub struct Plan<'a> {
    planned: Vec<Planned<'a>>,
}

/// Checks an import and compares it with the store, hashing new secrets (unless
/// `dry_run`). On any problem, every problem is returned.
pub async fn plan<'a>(
    ctx: &ImportContext<'_>,
    users: &'a [pb::ImportUser],
    dry_run: bool,
) -> Result<Plan<'a>, ImportFailure> {
    let problems = check(ctx, users);
    if !problems.is_empty() {
        return Err(ImportFailure::Invalid(problems));
    }
    let store = ctx.store;
    let mut planned = Vec::with_capacity(users.len());
    let mut secret_jobs = Vec::new();
    let now = UnixTime::now();
    // A card is one person's: who each card in this file goes to, to catch one
    // listed for two users.
    let mut card_users: HashMap<String, &str> = HashMap::new();
    for u in users {
        let stored = store.user(&u.id).await?;
        let base = stored.clone().unwrap_or_else(|| StoredUser {
            id: u.id.clone(),
            ..StoredUser::default()
        });
        let profile = StoredUser {
            id: u.id.clone(),
            name: u.name.clone().unwrap_or_else(|| base.name.clone()),
            department: u
                .department
                .clone()
                .unwrap_or_else(|| base.department.clone()),
            role: u.role.clone().unwrap_or_else(|| base.role.clone()),
            groups: if u.set_groups {
                u.groups.clone()
            } else {
                base.groups.clone()
            },
        };
        let mut fields = Vec::new();
        for (name, differs) in [
            ("name", profile.name != base.name),
            ("department", profile.department != base.department),
            ("role", profile.role != base.role),
            ("groups", profile.groups != base.groups),
        ] {
            if differs {
                fields.push(name);
            }
        }
        for (factor, secret) in [
            (sekisho_policy_engine::Factor::Password, &u.password),
            (sekisho_policy_engine::Factor::Pin, &u.pin),
        ] {
            if !secret.is_empty() {
                secret_jobs.push((
                    planned.len(),
                    factor,
                    secret.clone(),
                    store.secret(&u.id, factor).await?,
                ));
            }
        }
        let mut cards = Vec::new();
        for der in &u.card_certificates {
            let fingerprint = card_fingerprint(der);
            let holder = match card_users.get(fingerprint.as_str()) {
                Some(other) => Some(other.to_string()),
                None => store.card_holder(&fingerprint).await?,
            };
            if let Some(holder) = holder.filter(|h| *h != u.id) {
                return Err(ImportFailure::Invalid(vec![problem(
                    u,
                    "card_cert",
                    format!("this card certificate is already enrolled for user '{holder}'"),
                )]));
            }
            card_users.insert(fingerprint.clone(), &u.id);
            if store.has_card(&u.id, &fingerprint).await?
                || cards
                    .iter()
                    .any(|c: &(Vec<u8>, card::CardKind, i64, String)| c.3 == fingerprint)
            {
                continue;
            }
            let kind = match ctx.cards {
                Some(trust) => card::classify(trust, der, now).map_err(|f| {
                    ImportFailure::Invalid(vec![problem(u, "card_cert", f.to_string())])
                })?,
                None => continue,
            };
            let not_after = x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c.validity().not_after.timestamp().saturating_mul(1000))
                .map_err(|e| {
                    ImportFailure::Invalid(vec![problem(u, "card_cert", e.to_string())])
                })?;
            cards.push((der.clone(), kind, not_after, fingerprint));
        }
        if !cards.is_empty() {
            fields.push("card");
        }
        let totp = if u.totp_secret.is_empty() {
            false
        } else {
            match store.totp(&u.id).await? {
                Some(t) => t.secret != u.totp_secret || t.params != ctx.totp,
                None => true,
            }
        };
        planned.push(Planned {
            user: u,
            stored,
            profile,
            fields,
            password: None,
            pin: None,
            cards,
            totp,
        });
    }

    let (owners, jobs): (Vec<_>, Vec<_>) = secret_jobs
        .into_iter()
        .map(|(i, f, s, stored)| ((i, f), (s, stored)))
        .unzip();
    let settled = settle_secrets(ctx.hasher, jobs, dry_run).await?;
    for ((i, factor), phc) in owners.into_iter().zip(settled) {
        let Some(phc) = phc else { continue };
        let p = &mut planned[i];
        if factor == sekisho_policy_engine::Factor::Password {
            p.password = Some(phc);
        } else {
            p.pin = Some(phc);
        }
    }
    for p in &mut planned {
        // A stable order: profile fields, then credentials as in the CSV header.
        if p.password.is_some() {
            p.fields.push("password");
        }
        if p.pin.is_some() {
            p.fields.push("pin");
        }
        if p.totp {
            p.fields.push("totp");
        }
        let card_at = p.fields.iter().position(|f| *f == "card");
        if let Some(i) = card_at {
            let card = p.fields.remove(i);
            p.fields.push(card);
        }
    }

    Ok(Plan { planned })
}

impl Plan<'_> {
    /// One outcome per user, in the order given.
    pub fn outcomes(&self) -> Vec<UserOutcome> {
        self.planned
            .iter()
            .map(|p| UserOutcome {
                user: p.user.id.clone(),
                row: p.user.row,
                change: match (&p.stored, p.fields.is_empty()) {
                    (None, _) => Change::Added,
                    (Some(_), true) => Change::Unchanged,
                    (Some(_), false) => Change::Changed,
                },
                fields: p.fields.clone(),
            })
            .collect()
    }

    /// Writes every planned change in the caller's transaction.
    pub async fn write(
        &self,
        ctx: &ImportContext<'_>,
        tx: &mut AnyConnection,
    ) -> Result<(), CredentialError> {
        let store = ctx.store;
        let (tenant, tier) = (store.tenant(), store.tier_name());
        let now = now_ms();
        for p in &self.planned {
            let id = &p.user.id;
            if p.stored.is_none()
                || ["name", "department", "role", "groups"]
                    .iter()
                    .any(|f| p.fields.contains(f))
            {
                sqlx::query(
                    "INSERT INTO gw_users (tenant, tier, id, name, department, role, \"groups\", updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (tenant, tier, id) DO UPDATE SET name = excluded.name,
                       department = excluded.department, role = excluded.role,
                       \"groups\" = excluded.\"groups\", updated_at = excluded.updated_at",
                )
                .bind(tenant)
                .bind(tier)
                .bind(id)
                .bind(&p.profile.name)
                .bind(&p.profile.department)
                .bind(&p.profile.role)
                .bind(serde_json::to_string(&p.profile.groups).unwrap_or_else(|_| "[]".into()))
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db_err("importing a user"))?;
            }
            for (factor, phc) in [
                (sekisho_policy_engine::Factor::Password, &p.password),
                (sekisho_policy_engine::Factor::Pin, &p.pin),
            ] {
                if let Some(phc) = phc {
                    store.set_secret(&mut *tx, id, factor, phc).await?;
                }
            }
            if p.totp {
                store
                    .set_totp(&mut *tx, id, &p.user.totp_secret, &ctx.totp)
                    .await?;
            }
            for (der, kind, not_after, _) in &p.cards {
                store.add_card(&mut *tx, id, der, *kind, *not_after).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

    #[test]
    fn seeds() {
        assert_eq!(decode_seed(SEED).unwrap().len(), 20);
        assert_eq!(
            decode_seed("jbsw y3dp-ehpk 3pxp jbsw y3dp ehpk 3pxp====").unwrap(),
            decode_seed(SEED).unwrap()
        );
        assert!(decode_seed("JBSWY3DP1").unwrap_err().contains("base32"));
        assert!(decode_seed("JBSWY3DP").unwrap_err().contains("at least"));
    }

    #[test]
    fn rows_are_checked_completely_and_named_by_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        let csv = format!(
            "user,name,groups,password,pin,card_cert,totp_seed\n\
             u001,山田 太郎,g-shimin;g-koseki,correct horse,4826,,{SEED}\n\
             u001,重複,,,,,\n\
             ,名無し,,,,,\n\
             u004,x,,short,12a4,junk.pem,NOT-BASE32!\n\
             u005,x,bad\tgroup,,1234,missing.pem,\n\
             u006,only two\n"
        );
        let err = parse_users(&csv, dir.path()).unwrap_err();
        let shown: Vec<String> = err.iter().map(Problem::to_string).collect();
        assert_eq!(
            shown[0], "row 7: 2 columns, but the header has 7",
            "{shown:#?}"
        );
        // The count check comes first (the table), then every cell of the other rows.
        let err = parse_users(&csv.replace("u006,only two\n", ""), dir.path()).unwrap_err();
        let shown: Vec<String> = err.iter().map(Problem::to_string).collect();
        let expect = [
            "row 3, column user: user 'u001' is already in row 2",
            "row 4, column user: user id empty",
            "row 5, column password: a password must be 8 to 1024 characters (got 5)",
            "row 5, column pin: a PIN must contain only the digits 0-9",
            "row 5, column card_cert: 'junk.pem'",
            "row 5, column totp_seed: not base32",
            "row 6, column groups: group id 'bad\tgroup' contains a control character",
            "row 6, column pin: a PIN must not be one repeated digit",
            "row 6, column card_cert: 'missing.pem'",
        ];
        assert_eq!(shown.len(), expect.len(), "{shown:#?}");
        for (s, e) in shown.iter().zip(expect) {
            assert!(s.starts_with(e), "{s:?} should start with {e:?}");
        }
        assert!(
            shown.iter().all(|s| !s.contains("short")),
            "a secret appeared in a message: {shown:#?}"
        );
    }

    #[test]
    fn valid_rows_and_absent_columns() {
        let csv = format!("User,name,pin,totp_seed\nu001,山田 太郎,4826,{SEED}\nu002,,,\n");
        let rows = parse_users(&csv, Path::new(".")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].row, 2);
        assert_eq!(rows[0].name.as_deref(), Some("山田 太郎"));
        assert_eq!(rows[0].department, None, "no department column: keep");
        assert_eq!(rows[0].groups, None);
        assert_eq!(rows[0].totp_secret.len(), 20);
        let debug = format!("{:?}", rows[0]);
        assert!(!debug.contains("4826"), "{debug}");
        let p = rows[1].to_proto();
        assert_eq!(p.name.as_deref(), Some(""));
        assert!(!p.set_groups);
        let err = parse_users("name\nx\n", Path::new(".")).unwrap_err();
        assert!(err[0].reason.contains("required column 'user'"), "{err:?}");
    }
}
