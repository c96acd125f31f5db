//! Test kit for sekisho: real servers started per test, in throwaway directories.
//!
//! Tests talk to the same kind of server production talks to (an OpenLDAP `slapd` for
//! the directory), not to a mock, so that what they check (bind result codes, DN
//! escaping, TLS, overlays) is what a municipality's directory will do. Each server gets
//! its own temporary directory and loopback port, so tests run in parallel and leave
//! nothing behind: dropping the handle stops the server and deletes its data.
//!
//! The kit only needs the standard library and the server binaries; `scripts/test.sh`
//! installs those (`slapd`, `ldap-utils`) on a fresh machine.

pub mod ldif;
pub mod measure;
pub mod slapd;

pub use ldif::{dn_escape, group_ldif, user_password_ldif, CITY_FIXTURE};
pub use measure::{process_cpu_time, Summary};
pub use slapd::{Slapd, SlapdError, SlapdTls};
