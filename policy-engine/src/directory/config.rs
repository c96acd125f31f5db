//! `[directory]` in the engine's configuration: where the city's directory is, how to
//! read it, and how its attributes map onto users and groups.
//!
//! Two profiles carry the defaults, because Active Directory and OpenLDAP name the same
//! things differently; every attribute can still be overridden one by one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ldap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Active Directory: `sAMAccountName`, `userAccountControl`, `uSNChanged`.
    #[default]
    Ad,
    /// OpenLDAP: `uid`, the `memberof` overlay, `modifyTimestamp`.
    Openldap,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Ad => "ad",
            Profile::Openldap => "openldap",
        }
    }
}

/// Attribute names; each `None` takes the profile's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AttributeConfig {
    /// The user id decisions and logons use (AD `sAMAccountName`, OpenLDAP `uid`).
    pub user_id: Option<String>,
    /// Shown in listings (AD `displayName`, OpenLDAP `cn`).
    pub display_name: Option<String>,
    /// Becomes the user's `department` (AD `department`, OpenLDAP `ou`).
    pub department: Option<String>,
    /// Becomes the user's `role` (AD `title`, OpenLDAP `employeeType`).
    pub role: Option<String>,
    /// DNs of the groups an entry is in (`memberOf` in both).
    pub member_of: Option<String>,
    /// What moves when an entry changes (AD `uSNChanged`, OpenLDAP `modifyTimestamp`).
    pub changed: Option<String>,
    /// OpenLDAP only: an attribute whose presence (or, with `disabled_value`, whose
    /// value) marks a disabled account (default `pwdAccountLockedTime`). Active
    /// Directory uses the ACCOUNTDISABLE bit of `userAccountControl`.
    pub disabled: Option<String>,
    pub disabled_value: Option<String>,
    /// The group id (`cn` in both).
    pub group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `ldap://host[:port]` (with `starttls`) or `ldaps://host[:port]`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding.
    pub starttls: bool,
    /// Let the service account's password and the directory's contents cross the
    /// network in clear to a directory on another machine (`ldap://` without
    /// `starttls`). Refused unless set: the mistake is silent otherwise.
    pub allow_cleartext: bool,
    /// CA certificate(s) that issued the directory's TLS certificate (PEM); without
    /// it the system trust store is used.
    pub ca_file: Option<PathBuf>,
    /// The service account the sync reads as.
    pub bind_dn: String,
    /// A file holding only the service account's password (never the config itself).
    pub bind_password_file: Option<PathBuf>,
    /// Where users and groups are searched (subtree).
    pub base_dn: String,
    /// Narrower bases for users and groups (default `base_dn`).
    pub user_base: Option<String>,
    pub group_base: Option<String>,
    pub user_filter: Option<String>,
    pub group_filter: Option<String>,
    pub profile: Profile,
    pub attributes: AttributeConfig,
    /// Entries per page of the paged search (RFC 2696).
    pub page_size: i32,
    /// Bound on connecting and on each search.
    pub timeout_secs: u64,
    /// Local time of the nightly full sync, `HH:MM` ("" turns the schedule off).
    pub sync_at: String,
    /// Minutes between incremental syncs during the day (0: only the nightly one).
    pub incremental_minutes: u64,
    /// After a failed scheduled run, try again this many seconds later.
    pub retry_secs: u64,
    /// A run that would disable or remove more than this share of the directory's
    /// active users stops and waits for `sekisho directory sync --force`: an empty or
    /// truncated search result must not wipe the city.
    pub max_removal_share: f64,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            url: String::new(),
            starttls: true,
            allow_cleartext: false,
            ca_file: None,
            bind_dn: String::new(),
            bind_password_file: None,
            base_dn: String::new(),
            user_base: None,
            group_base: None,
            user_filter: None,
            group_filter: None,
            profile: Profile::Ad,
            attributes: AttributeConfig::default(),
            page_size: 500,
            timeout_secs: 30,
            sync_at: "02:00".into(),
            incremental_minutes: 0,
            retry_secs: 300,
            max_removal_share: 0.10,
        }
    }
}

/// How a disabled account is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisabledRule {
    /// Active Directory: bit 0x2 (ACCOUNTDISABLE) of this integer attribute.
    AccountControlBit(String),
    /// The attribute is present (any value).
    Present(String),
    /// The attribute has this value (case-insensitive).
    Equals(String, String),
}

impl DisabledRule {
    pub fn attribute(&self) -> &str {
        match self {
            DisabledRule::AccountControlBit(a)
            | DisabledRule::Present(a)
            | DisabledRule::Equals(a, _) => a,
        }
    }
}

/// Attribute names with the profile's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub user_id: String,
    pub display_name: String,
    pub department: String,
    pub role: String,
    pub member_of: String,
    pub changed: String,
    pub disabled: DisabledRule,
    pub group_id: String,
}

/// A checked configuration: defaults resolved, password read, TLS prepared.
#[derive(Clone)]
pub struct Resolved {
    pub url: String,
    pub starttls: bool,
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub bind_dn: String,
    pub bind_password: String,
    pub user_base: String,
    pub group_base: String,
    pub user_filter: String,
    pub group_filter: String,
    pub profile: Profile,
    pub attributes: Attributes,
    pub page_size: i32,
    pub timeout: Duration,
    /// Nightly full sync at (hour, minute) local time.
    pub sync_at: Option<(u32, u32)>,
    pub incremental_every: Option<Duration>,
    pub retry: Duration,
    pub max_removal_share: f64,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bind password is left out on purpose.
        f.debug_struct("Resolved")
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// A directory configuration that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryConfigError {
    #[error("directory.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("directory.bind_password_file {path}: {reason}")]
    PasswordFile { path: PathBuf, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> DirectoryConfigError {
    DirectoryConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl DirectoryConfig {
    /// Checks every setting and reads the password file. `base` is the directory
    /// relative paths are taken from (the configuration file's).
    pub fn resolve(&self, base: &Path) -> Result<Resolved, DirectoryConfigError> {
        let url = ldap::parse_url(&self.url)
            .map_err(|r| invalid("url", format!("{:?} {r}", self.url)))?;
        if url.ldaps && self.starttls {
            return Err(invalid(
                "starttls",
                "cannot be combined with an ldaps:// URL (set starttls = false)",
            ));
        }
        if !url.ldaps && !self.starttls && !url.loopback {
            if !self.allow_cleartext {
                return Err(invalid(
                    "url",
                    format!(
                        "{:?} is ldap:// to another machine without starttls: the service account's password would cross the network in clear; set starttls = true, use ldaps://, or set allow_cleartext = true if the network is trusted",
                        self.url
                    ),
                ));
            }
            tracing::warn!(url = %self.url, "directory sync without TLS (allow_cleartext = true): the service account's password crosses the network in clear");
        }
        let tls = match &self.ca_file {
            Some(p) => Some(
                ldap::client_config(&base.join(p))
                    .map_err(|r| invalid("ca_file", format!("{}: {r}", p.display())))?,
            ),
            None => None,
        };
        if self.base_dn.trim().is_empty() {
            return Err(invalid(
                "base_dn",
                "is required (e.g. \"dc=city,dc=lg,dc=jp\")",
            ));
        }
        let bind_password = match &self.bind_password_file {
            Some(p) => {
                let path = base.join(p);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    DirectoryConfigError::PasswordFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let pw = text.trim_end_matches(['\r', '\n']).to_string();
                if pw.is_empty() {
                    return Err(DirectoryConfigError::PasswordFile {
                        path,
                        reason: "is empty".into(),
                    });
                }
                pw
            }
            None if self.bind_dn.is_empty() => String::new(),
            None => {
                return Err(invalid(
                    "bind_password_file",
                    "is required with bind_dn (a file holding only the password)",
                ))
            }
        };
        if !(1..=10_000).contains(&self.page_size) {
            return Err(invalid("page_size", "must be between 1 and 10000"));
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err(invalid("timeout_secs", "must be between 1 and 3600"));
        }
        if !(0.0..=1.0).contains(&self.max_removal_share) {
            return Err(invalid("max_removal_share", "must be between 0 and 1"));
        }
        // Beyond a day neither means anything, and far beyond it the scheduler's
        // date arithmetic would overflow.
        if self.incremental_minutes > 24 * 60 {
            return Err(invalid(
                "incremental_minutes",
                "must be at most 1440 (a day)",
            ));
        }
        if self.retry_secs > 24 * 3600 {
            return Err(invalid("retry_secs", "must be at most 86400 (a day)"));
        }
        let sync_at = if self.sync_at.is_empty() {
            None
        } else {
            Some(parse_hh_mm(&self.sync_at).ok_or_else(|| {
                invalid("sync_at", format!("{:?} is not a time HH:MM", self.sync_at))
            })?)
        };
        let a = &self.attributes;
        let pick = |v: &Option<String>, ad: &str, ol: &str| {
            v.clone().unwrap_or_else(|| {
                match self.profile {
                    Profile::Ad => ad,
                    Profile::Openldap => ol,
                }
                .to_string()
            })
        };
        let disabled = match self.profile {
            Profile::Ad => {
                DisabledRule::AccountControlBit(pick(&a.disabled, "userAccountControl", ""))
            }
            Profile::Openldap => {
                let attr = pick(&a.disabled, "", "pwdAccountLockedTime");
                match &a.disabled_value {
                    Some(v) => DisabledRule::Equals(attr, v.clone()),
                    None => DisabledRule::Present(attr),
                }
            }
        };
        let attributes = Attributes {
            user_id: pick(&a.user_id, "sAMAccountName", "uid"),
            display_name: pick(&a.display_name, "displayName", "cn"),
            department: pick(&a.department, "department", "ou"),
            role: pick(&a.role, "title", "employeeType"),
            member_of: pick(&a.member_of, "memberOf", "memberOf"),
            changed: pick(&a.changed, "uSNChanged", "modifyTimestamp"),
            disabled,
            group_id: pick(&a.group_id, "cn", "cn"),
        };
        let filter = |v: &Option<String>, key: &'static str, ad: &str, ol: &str| {
            let f = pick(v, ad, ol);
            if f.starts_with('(') && f.ends_with(')') {
                Ok(f)
            } else {
                Err(invalid(
                    key,
                    format!("{f:?} must be an LDAP filter in parentheses"),
                ))
            }
        };
        Ok(Resolved {
            url: self.url.clone(),
            starttls: self.starttls,
            tls,
            bind_dn: self.bind_dn.clone(),
            bind_password,
            user_base: self
                .user_base
                .clone()
                .unwrap_or_else(|| self.base_dn.clone()),
            group_base: self
                .group_base
                .clone()
                .unwrap_or_else(|| self.base_dn.clone()),
            user_filter: filter(
                &self.user_filter,
                "user_filter",
                "(&(objectCategory=person)(objectClass=user))",
                "(objectClass=inetOrgPerson)",
            )?,
            group_filter: filter(
                &self.group_filter,
                "group_filter",
                "(objectClass=group)",
                "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
            )?,
            profile: self.profile,
            attributes,
            page_size: self.page_size,
            timeout: Duration::from_secs(self.timeout_secs),
            sync_at,
            incremental_every: (self.incremental_minutes > 0)
                .then(|| Duration::from_secs(self.incremental_minutes * 60)),
            retry: Duration::from_secs(self.retry_secs.max(1)),
            max_removal_share: self.max_removal_share,
        })
    }
}

fn parse_hh_mm(s: &str) -> Option<(u32, u32)> {
    let (h, m) = s.split_once(':')?;
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some((h, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> DirectoryConfig {
        DirectoryConfig {
            url: "ldap://127.0.0.1:389".into(),
            starttls: false,
            base_dn: "dc=example,dc=jp".into(),
            ..Default::default()
        }
    }

    #[test]
    fn profiles_fill_their_defaults() {
        let ad = base().resolve(Path::new(".")).unwrap();
        assert_eq!(ad.attributes.user_id, "sAMAccountName");
        assert_eq!(
            ad.attributes.disabled,
            DisabledRule::AccountControlBit("userAccountControl".into())
        );
        let mut c = base();
        c.profile = Profile::Openldap;
        c.attributes.department = Some("departmentNumber".into());
        c.attributes.disabled = Some("description".into());
        c.attributes.disabled_value = Some("disabled".into());
        let ol = c.resolve(Path::new(".")).unwrap();
        assert_eq!(ol.attributes.user_id, "uid");
        assert_eq!(ol.attributes.department, "departmentNumber");
        assert_eq!(ol.attributes.changed, "modifyTimestamp");
        assert_eq!(
            ol.attributes.disabled,
            DisabledRule::Equals("description".into(), "disabled".into())
        );
        assert_eq!(ol.sync_at, Some((2, 0)));
    }

    #[test]
    fn mistakes_name_their_key() {
        let err = |f: fn(&mut DirectoryConfig)| {
            let mut c = base();
            f(&mut c);
            c.resolve(Path::new(".")).unwrap_err().to_string()
        };
        assert!(err(|c| c.url = "http://x".into()).starts_with("directory.url"));
        assert!(err(|c| c.base_dn.clear()).starts_with("directory.base_dn"));
        assert!(err(|c| c.sync_at = "25:00".into()).starts_with("directory.sync_at"));
        assert!(err(|c| c.max_removal_share = 2.0).starts_with("directory.max_removal_share"));
        assert!(err(|c| c.retry_secs = 10_000_000_000_000).starts_with("directory.retry_secs"));
        assert!(
            err(|c| c.incremental_minutes = u64::MAX).starts_with("directory.incremental_minutes")
        );
        assert!(err(|c| c.user_filter = Some("uid=*".into())).starts_with("directory.user_filter"));
        assert!(err(|c| c.bind_dn = "cn=x".into()).starts_with("directory.bind_password_file"));
        assert!(err(|c| {
            c.url = "ldaps://h".into();
            c.starttls = true
        })
        .starts_with("directory.starttls"));
        let clear = err(|c| c.url = "ldap://ad.city.local".into());
        assert!(
            clear.starts_with("directory.url") && clear.contains("allow_cleartext"),
            "{clear}"
        );
        let mut c = base();
        c.url = "ldap://ad.city.local".into();
        c.allow_cleartext = true;
        assert!(c.resolve(Path::new(".")).is_ok());
    }
}
