//! LDIF fixtures and the small helpers that write them.
//!
//! Fixtures are added to a running server (see [`crate::Slapd::apply`]), so every entry
//! must be placed under the tree the kit creates: `ou=people,dc=example,dc=jp` for users,
//! `ou=groups,dc=example,dc=jp` for groups.

/// The base DN of every test directory.
pub const BASE_DN: &str = "dc=example,dc=jp";

/// A tiny city: four staff and two groups (`groupOfNames`, so the `memberof` overlay
/// fills `memberOf` on the users).
///
/// | uid | password | groups |
/// |---|---|---|
/// | `tanaka` | `tanaka-pass` | `jinji` |
/// | `suzuki` | `suzuki-pass` | `shimin` |
/// | `sato` | `sato-pass` | `shimin` |
/// | `a,b` (a DN-special character, stored as `uid=a\,b`) | `comma-pass` | — |
///
/// Passwords are stored in plain text: the server is throwaway and slapd compares
/// plain `userPassword` values on bind just as it does hashed ones.
pub const CITY_FIXTURE: &str = "\
dn: uid=tanaka,ou=people,dc=example,dc=jp
objectClass: inetOrgPerson
uid: tanaka
cn: Tanaka Taro
sn: Tanaka
departmentNumber: jinji
userPassword: tanaka-pass

dn: uid=suzuki,ou=people,dc=example,dc=jp
objectClass: inetOrgPerson
uid: suzuki
cn: Suzuki Hanako
sn: Suzuki
departmentNumber: shimin
userPassword: suzuki-pass

dn: uid=sato,ou=people,dc=example,dc=jp
objectClass: inetOrgPerson
uid: sato
cn: Sato Jiro
sn: Sato
departmentNumber: shimin
userPassword: sato-pass

dn: uid=a\\,b,ou=people,dc=example,dc=jp
objectClass: inetOrgPerson
uid: a,b
cn: Comma User
sn: Comma
userPassword: comma-pass

dn: cn=jinji,ou=groups,dc=example,dc=jp
objectClass: groupOfNames
cn: jinji
member: uid=tanaka,ou=people,dc=example,dc=jp

dn: cn=shimin,ou=groups,dc=example,dc=jp
objectClass: groupOfNames
cn: shimin
member: uid=suzuki,ou=people,dc=example,dc=jp
member: uid=sato,ou=people,dc=example,dc=jp
";

/// The entries every test server starts with (loaded offline with `slapadd`).
pub(crate) const BASE_LDIF: &str = "\
dn: dc=example,dc=jp
objectClass: dcObject
objectClass: organization
dc: example
o: Example City

dn: ou=people,dc=example,dc=jp
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=jp
objectClass: organizationalUnit
ou: groups
";

/// An `inetOrgPerson` entry `uid=<uid>,ou=people,dc=example,dc=jp` with a plain-text
/// `userPassword`, ready to append to a fixture. The uid is DN-escaped in the DN, and
/// lines are written base64 where LDIF requires it (non-ASCII, leading space…), so any
/// uid works.
pub fn user_password_ldif(uid: &str, password: &str) -> String {
    let mut out = attr_line("dn", &format!("uid={},ou=people,{BASE_DN}", dn_escape(uid)));
    out.push_str("objectClass: inetOrgPerson\n");
    out.push_str(&attr_line("uid", uid));
    out.push_str(&attr_line("cn", uid));
    out.push_str(&attr_line("sn", uid));
    out.push_str(&attr_line("userPassword", password));
    out.push('\n');
    out
}

/// A `groupOfNames` entry `cn=<cn>,ou=groups,dc=example,dc=jp` whose members are the
/// given uids under `ou=people`. `groupOfNames` needs at least one member.
pub fn group_ldif(cn: &str, member_uids: &[&str]) -> String {
    let mut out = attr_line("dn", &format!("cn={},ou=groups,{BASE_DN}", dn_escape(cn)));
    out.push_str("objectClass: groupOfNames\n");
    out.push_str(&attr_line("cn", cn));
    for uid in member_uids {
        let dn = format!("uid={},ou=people,{BASE_DN}", dn_escape(uid));
        out.push_str(&attr_line("member", &dn));
    }
    out.push('\n');
    out
}

/// Escapes an attribute value for use in a DN (RFC 4514 §2.4). This is deliberately a
/// separate implementation from the gateway's, so fixtures cross-check it.
pub fn dn_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            _ => out.push(c),
        }
    }
    out
}

/// One `name: value` LDIF line, switching to `name:: base64` when RFC 2849 requires it.
fn attr_line(name: &str, value: &str) -> String {
    let safe = value
        .bytes()
        .all(|b| b.is_ascii() && b != b'\n' && b != b'\r' && b != 0)
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if safe {
        format!("{name}: {value}\n")
    } else {
        format!("{name}:: {}\n", base64(value.as_bytes()))
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_specials() {
        assert_eq!(dn_escape("a,b"), "a\\,b");
        assert_eq!(dn_escape(" #x "), "\\ #x\\ ");
        assert_eq!(dn_escape("#x"), "\\#x");
        assert_eq!(dn_escape("田中"), "田中");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn user_ldif_uses_base64_for_non_ascii() {
        let ldif = user_password_ldif("田中", "pw");
        assert!(ldif.starts_with("dn:: "), "{ldif}");
        assert!(ldif.contains("uid:: 55Sw5Lit\n"));
        assert!(ldif.contains("userPassword: pw\n"));
    }
}
