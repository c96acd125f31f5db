//! Reading users and groups from the directory: one bind as the service account,
//! paged subtree searches (RFC 2696), attributes mapped through the profile.
//!
//! An incremental read asks only for users changed since the last high-water mark,
//! plus the (cheap, id-only) list of every user, because a deleted entry does not show
//! up as "changed": it is simply absent. Groups are few and always read whole. When a
//! group changed, its members' `memberOf` changed too without the users' own change
//! marker moving (Active Directory keeps `memberOf` as a back link), so the read then
//! falls back to reading every user.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::config::{DisabledRule, Resolved};

/// One user as the directory has it, attributes already mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirUser {
    pub dn: String,
    pub id: String,
    pub name: String,
    pub department: String,
    pub role: String,
    /// Normalised DNs of the groups the entry is directly in.
    pub member_of: Vec<String>,
    pub disabled: bool,
    pub changed: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGroup {
    /// Normalised DN.
    pub dn: String,
    pub id: String,
    pub member_of: Vec<String>,
    pub changed: String,
}

/// What one read returned.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Whether `users` is every user (a full read) or only the changed ones.
    pub full: bool,
    pub users: Vec<DirUser>,
    /// Incremental reads: the id of every user entry, to notice deletions.
    pub all_ids: BTreeSet<String>,
    pub groups: Vec<DirGroup>,
    /// The largest change marker seen: where the next incremental read starts.
    pub high_water: Option<String>,
    /// Entries skipped because they lack the id attribute (DN listed).
    pub skipped: Vec<String>,
}

/// Why the directory could not be read. Nothing is changed when this happens.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to the directory at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the directory refused the service account {dn:?}: {reason} (check directory.bind_dn and directory.bind_password_file)")]
    Bind { dn: String, reason: String },
    #[error("searching {base} for {filter} failed: {reason}")]
    Search {
        base: String,
        filter: String,
        reason: String,
    },
    #[error("the directory did not answer within {secs} s while {what}")]
    Timeout { what: &'static str, secs: u64 },
    #[error("two directory entries have the user id {id:?}: {first} and {second}")]
    DuplicateId {
        id: String,
        first: String,
        second: String,
    },
}

/// Where an incremental read starts: the last run's high-water mark, and each
/// group's change marker as that run saw it (group id → marker).
#[derive(Debug, Clone, Default)]
pub struct Since {
    pub high_water: String,
    pub groups: HashMap<String, String>,
}

/// Reads users and groups: only what changed after `since`, or everything.
pub async fn read(cfg: &Resolved, since: Option<&Since>) -> Result<Snapshot, FetchError> {
    let mut ldap = connect(cfg).await?;
    let result = read_with(&mut ldap, cfg, since).await;
    // Ending the session politely; an error here changes nothing already read.
    let _ = ldap.unbind().await;
    result
}

async fn connect(cfg: &Resolved) -> Result<Ldap, FetchError> {
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(cfg.timeout)
        .set_starttls(cfg.starttls);
    if let Some(tls) = &cfg.tls {
        settings = settings.set_config(Arc::clone(tls));
    }
    let connect = LdapConnAsync::with_settings(settings, &cfg.url);
    let (conn, mut ldap) = tokio::time::timeout(cfg.timeout, connect)
        .await
        .map_err(|_| FetchError::Timeout {
            what: "connecting",
            secs: cfg.timeout.as_secs(),
        })?
        .map_err(|e| FetchError::Connect {
            url: cfg.url.clone(),
            reason: e.to_string(),
        })?;
    ldap3::drive!(conn);
    if !cfg.bind_dn.is_empty() {
        let bind_error = |reason: String| FetchError::Bind {
            dn: cfg.bind_dn.clone(),
            reason,
        };
        ldap.with_timeout(cfg.timeout)
            .simple_bind(&cfg.bind_dn, &cfg.bind_password)
            .await
            .map_err(|e| bind_error(e.to_string()))?
            .success()
            .map_err(|e| bind_error(e.to_string()))?;
    }
    Ok(ldap)
}

async fn read_with(
    ldap: &mut Ldap,
    cfg: &Resolved,
    since: Option<&Since>,
) -> Result<Snapshot, FetchError> {
    let a = &cfg.attributes;
    let group_attrs = vec![a.group_id.clone(), a.member_of.clone(), a.changed.clone()];
    let mut snapshot = Snapshot::default();
    for e in search(ldap, cfg, &cfg.group_base, &cfg.group_filter, group_attrs).await? {
        let Some(id) = first(&e, &a.group_id) else {
            snapshot.skipped.push(e.dn);
            continue;
        };
        let changed = first(&e, &a.changed).unwrap_or_default();
        bump(&mut snapshot.high_water, &changed);
        snapshot.groups.push(DirGroup {
            dn: normalize_dn(&e.dn),
            id,
            member_of: all(&e, &a.member_of)
                .iter()
                .map(|d| normalize_dn(d))
                .collect(),
            changed,
        });
    }
    // A group added, removed or changed in any way since the last run: compared by
    // marker rather than by time, because OpenLDAP's markers have one-second
    // resolution and a change in the last run's second would otherwise go unseen.
    let groups_changed = since.is_some_and(|s| {
        s.groups.len() != snapshot.groups.len()
            || snapshot
                .groups
                .iter()
                .any(|g| s.groups.get(&g.id) != Some(&g.changed))
    });
    let user_filter = match since {
        Some(s) if !groups_changed => {
            snapshot.all_ids = read_ids(ldap, cfg).await?;
            format!(
                "(&{}({}>={}))",
                cfg.user_filter,
                a.changed,
                escape_filter_value(&s.high_water)
            )
        }
        _ => {
            snapshot.full = true;
            cfg.user_filter.clone()
        }
    };
    if let Some(s) = since {
        bump(&mut snapshot.high_water, &s.high_water);
    }
    let mut user_attrs = vec![
        a.user_id.clone(),
        a.display_name.clone(),
        a.department.clone(),
        a.role.clone(),
        a.member_of.clone(),
        a.changed.clone(),
    ];
    if !a.disabled.attribute().is_empty() {
        user_attrs.push(a.disabled.attribute().to_string());
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    for e in search(ldap, cfg, &cfg.user_base, &user_filter, user_attrs).await? {
        let Some(id) = first(&e, &a.user_id) else {
            snapshot.skipped.push(e.dn);
            continue;
        };
        if let Some(prev) = seen.insert(id.clone(), e.dn.clone()) {
            return Err(FetchError::DuplicateId {
                id,
                first: prev,
                second: e.dn,
            });
        }
        let changed = first(&e, &a.changed).unwrap_or_default();
        bump(&mut snapshot.high_water, &changed);
        snapshot.users.push(DirUser {
            disabled: is_disabled(&e, &a.disabled),
            name: first(&e, &a.display_name).unwrap_or_default(),
            department: first(&e, &a.department).unwrap_or_default(),
            role: first(&e, &a.role).unwrap_or_default(),
            member_of: all(&e, &a.member_of)
                .iter()
                .map(|d| normalize_dn(d))
                .collect(),
            dn: e.dn,
            id,
            changed,
        });
    }
    if snapshot.full {
        snapshot.all_ids = snapshot.users.iter().map(|u| u.id.clone()).collect();
    }
    Ok(snapshot)
}

/// The id of every user entry (nothing else is transferred).
async fn read_ids(ldap: &mut Ldap, cfg: &Resolved) -> Result<BTreeSet<String>, FetchError> {
    let id_attr = &cfg.attributes.user_id;
    let entries = search(
        ldap,
        cfg,
        &cfg.user_base,
        &cfg.user_filter,
        vec![id_attr.clone()],
    )
    .await?;
    Ok(entries.iter().filter_map(|e| first(e, id_attr)).collect())
}

async fn search(
    ldap: &mut Ldap,
    cfg: &Resolved,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
) -> Result<Vec<SearchEntry>, FetchError> {
    let search_error = |reason: String| FetchError::Search {
        base: base.to_string(),
        filter: filter.to_string(),
        reason,
    };
    let timeout = |what| FetchError::Timeout {
        what,
        secs: cfg.timeout.as_secs(),
    };
    let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(cfg.page_size)),
    ];
    let mut stream = tokio::time::timeout(
        cfg.timeout,
        ldap.streaming_search_with(adapters, base, Scope::Subtree, filter, attrs),
    )
    .await
    .map_err(|_| timeout("starting a search"))?
    .map_err(|e| search_error(e.to_string()))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(cfg.timeout, stream.next())
            .await
            .map_err(|_| timeout("reading search results"))?
            .map_err(|e| search_error(e.to_string()))?;
        match next {
            Some(entry) => out.push(SearchEntry::construct(entry)),
            None => break,
        }
    }
    stream
        .finish()
        .await
        .success()
        .map_err(|e| search_error(e.to_string()))?;
    Ok(out)
}

/// Attribute values by case-insensitive name (servers answer in their own case).
fn all<'e>(e: &'e SearchEntry, name: &str) -> &'e [String] {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or(&[], |(_, v)| v.as_slice())
}

fn first(e: &SearchEntry, name: &str) -> Option<String> {
    all(e, name)
        .first()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn is_disabled(e: &SearchEntry, rule: &DisabledRule) -> bool {
    match rule {
        DisabledRule::AccountControlBit(attr) => first(e, attr)
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|uac| uac & 0x2 != 0),
        DisabledRule::Present(attr) => !all(e, attr).is_empty(),
        DisabledRule::Equals(attr, value) => all(e, attr)
            .iter()
            .any(|v| v.trim().eq_ignore_ascii_case(value)),
    }
}

/// Whether change marker `a` is later than `b`: numerically for Active Directory's
/// update sequence numbers, as text for generalized times (same format, so text order
/// is time order).
pub fn later(a: &str, b: &str) -> bool {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x > y,
        _ => a > b,
    }
}

fn bump(high: &mut Option<String>, seen: &str) {
    if seen.is_empty() {
        return;
    }
    if high.as_deref().is_none_or(|h| later(seen, h)) {
        *high = Some(seen.to_string());
    }
}

/// A DN in the form used to match `memberOf` values against group entries: lower
/// case, no spaces around separators. Servers are free to vary both.
pub fn normalize_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut escaped = false;
    // Set after an unescaped separator, so the spaces that follow it are dropped.
    let mut after_separator = false;
    for c in dn.trim().chars() {
        if escaped {
            out.extend(c.to_lowercase());
            escaped = false;
            after_separator = false;
            continue;
        }
        let separator = matches!(c, ',' | '=' | '+');
        match c {
            '\\' => {
                escaped = true;
                out.push(c);
            }
            ',' | '=' | '+' => {
                while out.ends_with(' ') {
                    out.pop();
                }
                out.push(c);
            }
            ' ' if after_separator => {}
            c => out.extend(c.to_lowercase()),
        }
        if c != ' ' {
            after_separator = separator;
        }
    }
    out
}

/// Escapes a value for an LDAP filter (RFC 4515 §3).
pub fn escape_filter_value(v: &str) -> String {
    v.chars()
        .map(|c| match c {
            '*' | '(' | ')' | '\\' | '\0' => format!("\\{:02x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_normalise_case_and_spaces() {
        assert_eq!(
            normalize_dn("CN=Tax Section, OU=Groups ,DC=City,DC=lg,DC=jp"),
            "cn=tax section,ou=groups,dc=city,dc=lg,dc=jp"
        );
        assert_eq!(normalize_dn("cn=a\\, B,dc=x"), "cn=a\\, b,dc=x");
    }

    #[test]
    fn change_markers_compare_by_kind() {
        assert!(later("10", "9"));
        assert!(!later("9", "10"));
        assert!(later("20261123010000Z", "20261122235959Z"));
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(escape_filter_value("a*(b)\\"), "a\\2a\\28b\\29\\5c");
        assert_eq!(escape_filter_value("田中*"), "田中\\2a");
    }
}
