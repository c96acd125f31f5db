//! A real OpenLDAP `slapd` per test.
//!
//! How a server is made (about 0.1 s on a laptop-class machine):
//! 1. a temporary directory gets a `slapd.conf` (the classic file format: one short
//!    file, no `cn=config` tree to seed) with an MDB database for `dc=example,dc=jp`,
//!    root DN `cn=admin,dc=example,dc=jp` with a known password, and the `memberof`
//!    overlay so that groups (`groupOfNames`) fill `memberOf` on their members, as
//!    directory sync expects from a real OpenLDAP or Active Directory;
//! 2. the base tree (`dc=example,dc=jp`, `ou=people`, `ou=groups`) is loaded offline with
//!    `slapadd`;
//! 3. `slapd` is started in the foreground (`-d 0`) on a free loopback port, and the kit
//!    polls the port until it accepts connections;
//! 4. the fixture is added *through the running server* with `ldapmodify -a`, because
//!    overlays do not run under `slapadd`: entries loaded offline would lack `memberOf`.
//!
//! Dropping the [`Slapd`] kills the server and deletes its directory.

use std::fmt;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ldif::{BASE_DN, BASE_LDIF};

const ADMIN_DN: &str = "cn=admin,dc=example,dc=jp";
const ADMIN_PASSWORD: &str = "admin-secret";
/// How long a server may take to accept connections before the start is a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Another process may grab the port between our probe and slapd's bind; retry a few
/// times with a fresh port rather than fail a test on that race.
const START_ATTEMPTS: usize = 3;

const INSTALL_HINT: &str =
    "run scripts/test.sh (it installs slapd and ldap-utils), or: apt-get install slapd ldap-utils";

/// Why a test server could not be started or changed.
#[derive(Debug)]
pub enum SlapdError {
    /// A program the kit needs (`slapd`, `slapadd`, `ldapmodify`) is not installed.
    NotInstalled { program: &'static str },
    /// The OpenLDAP schema files were not found in any usual location.
    SchemaNotFound,
    /// Creating or writing the server's files failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A tool ran but failed (bad fixture LDIF, bad configuration); its output is kept.
    Tool {
        program: &'static str,
        status: String,
        output: String,
    },
    /// slapd exited or never accepted connections; its log is kept.
    NotReady { log: String },
}

impl fmt::Display for SlapdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlapdError::NotInstalled { program } => {
                write!(f, "`{program}` is not installed: {INSTALL_HINT}")
            }
            SlapdError::SchemaNotFound => write!(
                f,
                "OpenLDAP schema files (core.schema…) not found under /etc/ldap/schema or \
                 /etc/openldap/schema: {INSTALL_HINT}"
            ),
            SlapdError::Io { what, source } => write!(f, "{what}: {source}"),
            SlapdError::Tool {
                program,
                status,
                output,
            } => {
                write!(f, "`{program}` failed ({status}):\n{output}")
            }
            SlapdError::NotReady { log } => {
                write!(
                    f,
                    "slapd did not start accepting connections; its log:\n{log}"
                )
            }
        }
    }
}

impl std::error::Error for SlapdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SlapdError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A server certificate for [`Slapd::start_with_tls`]: PEM text, chain first.
pub struct SlapdTls {
    pub cert_chain_pem: String,
    pub key_pem: String,
}

/// A running `slapd` with its own data directory and loopback port.
pub struct Slapd {
    child: Option<Child>,
    port: u16,
    ldaps_port: Option<u16>,
    ldapmodify: PathBuf,
    dir: TempDir,
}

impl Slapd {
    /// Starts a server holding the base tree plus `fixture_ldif` (entries under
    /// `ou=people` / `ou=groups`, e.g. [`crate::CITY_FIXTURE`]; may be empty).
    pub fn start(fixture_ldif: &str) -> Result<Slapd, SlapdError> {
        Slapd::start_inner(fixture_ldif, None, "")
    }

    /// Like [`Slapd::start`], with `bulk_ldif` loaded offline (`slapadd`) first: the
    /// fast way to fill a server with a whole city for a benchmark. Overlays do not
    /// run offline, so bulk entries must carry their own `memberOf` values.
    pub fn start_bulk(bulk_ldif: &str, fixture_ldif: &str) -> Result<Slapd, SlapdError> {
        Slapd::start_inner(fixture_ldif, None, bulk_ldif)
    }

    /// Like [`Slapd::start`], and also serves TLS with the given certificate: StartTLS
    /// on [`Slapd::url`] and LDAPS on [`Slapd::ldaps_url`].
    pub fn start_with_tls(fixture_ldif: &str, tls: &SlapdTls) -> Result<Slapd, SlapdError> {
        Slapd::start_inner(fixture_ldif, Some(tls), "")
    }

    fn start_inner(
        fixture_ldif: &str,
        tls: Option<&SlapdTls>,
        bulk_ldif: &str,
    ) -> Result<Slapd, SlapdError> {
        let slapd = find_program("slapd")?;
        let slapadd = find_program("slapadd")?;
        let ldapmodify = find_program("ldapmodify")?;
        let schema_dir = find_schema_dir()?;

        let dir = tempfile::Builder::new()
            .prefix("sekisho-slapd-")
            .tempdir()
            .map_err(|source| io("creating the server directory", source))?;
        let db = dir.path().join("db");
        std::fs::create_dir(&db).map_err(|source| io("creating the database directory", source))?;
        let tls_files = match tls {
            Some(tls) => {
                let cert = dir.path().join("server.crt");
                let key = dir.path().join("server.key");
                write_file(&cert, &tls.cert_chain_pem)?;
                write_file(&key, &tls.key_pem)?;
                Some((cert, key))
            }
            None => None,
        };
        let conf = dir.path().join("slapd.conf");
        write_file(&conf, &config(dir.path(), &schema_dir, tls_files.as_ref()))?;
        let base = dir.path().join("base.ldif");
        write_file(&base, &format!("{BASE_LDIF}\n{bulk_ldif}"))?;

        let out = Command::new(&slapadd)
            .arg("-q")
            .arg("-f")
            .arg(&conf)
            .arg("-l")
            .arg(&base)
            .output()
            .map_err(|source| io("running slapadd", source))?;
        if !out.status.success() {
            return Err(tool_error("slapadd", &out));
        }

        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let ldaps_port = if tls.is_some() {
                Some(free_port()?)
            } else {
                None
            };
            let mut urls = format!("ldap://127.0.0.1:{port}/");
            if let Some(p) = ldaps_port {
                urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
            }
            let log_path = dir.path().join("slapd.log");
            let log = std::fs::File::create(&log_path)
                .map_err(|source| io("creating the slapd log", source))?;
            let log_err = log
                .try_clone()
                .map_err(|source| io("creating the slapd log", source))?;
            let mut child = Command::new(&slapd)
                .arg("-d")
                .arg("0")
                .arg("-h")
                .arg(&urls)
                .arg("-f")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|source| io("starting slapd", source))?;
            if wait_ready(&mut child, &[Some(port), ldaps_port]) {
                let server = Slapd {
                    child: Some(child),
                    port,
                    ldaps_port,
                    ldapmodify,
                    dir,
                };
                if !fixture_ldif.trim().is_empty() {
                    server.apply(fixture_ldif)?;
                }
                return Ok(server);
            }
            // Ignoring errors: it may have exited already (that is why we are here).
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        }
        Err(SlapdError::NotReady { log: last_log })
    }

    /// Applies LDIF through the running server as the root DN, with `ldapmodify -a`:
    /// records without a `changetype` are added, others (`modify`, `delete`, `modrdn`)
    /// are applied, so tests can also move, disable or delete entries. Overlays run.
    pub fn apply(&self, ldif: &str) -> Result<(), SlapdError> {
        let mut child = Command::new(&self.ldapmodify)
            // Ignore ~/.ldaprc and /etc/ldap/ldap.conf: the machine's settings are not ours.
            .env("LDAPNOINIT", "1")
            .arg("-a")
            .arg("-x")
            .arg("-H")
            .arg(self.url())
            .arg("-D")
            .arg(ADMIN_DN)
            .arg("-w")
            .arg(ADMIN_PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| io("running ldapmodify", source))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ldif.as_bytes())
                .map_err(|source| io("writing LDIF to ldapmodify", source))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| io("running ldapmodify", source))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(tool_error("ldapmodify", &out))
        }
    }

    /// `ldap://127.0.0.1:PORT` (plain; StartTLS available when started with TLS).
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT` when started with [`Slapd::start_with_tls`].
    pub fn ldaps_url(&self) -> Option<String> {
        self.ldaps_port.map(|p| format!("ldaps://127.0.0.1:{p}"))
    }

    pub fn base_dn(&self) -> &'static str {
        BASE_DN
    }

    pub fn admin_dn(&self) -> &'static str {
        ADMIN_DN
    }

    pub fn admin_password(&self) -> &'static str {
        ADMIN_PASSWORD
    }

    /// The server's temporary directory (config, database, `slapd.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server now (to test an unreachable directory). The URLs keep pointing
    /// at the now closed ports. Idempotent; Drop calls it too.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Ignoring errors: the process may already have exited, and there is
            // nothing a test could do about a kill that fails.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls until every listener accepts a connection; false if slapd exited or the
/// deadline passed. Polling a connect is how one waits for a server without a
/// readiness protocol; each attempt is a loopback connect, so the wait is short.
fn wait_ready(child: &mut Child, ports: &[Option<u16>]) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pending: Vec<u16> = ports.iter().flatten().copied().collect();
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(None) => {}
            _ => return false,
        }
        pending.retain(|port| {
            let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port);
            TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_err()
        });
        if pending.is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn config(dir: &Path, schema_dir: &Path, tls: Option<&(PathBuf, PathBuf)>) -> String {
    let mut c = String::new();
    for schema in ["core", "cosine", "inetorgperson", "nis"] {
        c.push_str(&format!(
            "include {}\n",
            schema_dir.join(format!("{schema}.schema")).display()
        ));
    }
    c.push_str(&format!("pidfile {}\n", dir.join("slapd.pid").display()));
    c.push_str(&format!("argsfile {}\n", dir.join("slapd.args").display()));
    // Distributions build backends and overlays as modules (Debian: /usr/lib/ldap);
    // load those that exist as files, and rely on built-ins otherwise.
    if let Some(module_dir) = find_module_dir() {
        c.push_str(&format!("modulepath {}\n", module_dir.display()));
        for module in ["back_mdb", "memberof"] {
            if module_dir.join(format!("{module}.so")).exists()
                || module_dir.join(format!("{module}.la")).exists()
            {
                c.push_str(&format!("moduleload {module}\n"));
            }
        }
    }
    if let Some((cert, key)) = tls {
        c.push_str(&format!("TLSCertificateFile {}\n", cert.display()));
        c.push_str(&format!("TLSCertificateKeyFile {}\n", key.display()));
    }
    c.push_str(&format!(
        "\ndatabase mdb\n\
         maxsize 4294967296\n\
         suffix \"{BASE_DN}\"\n\
         rootdn \"{ADMIN_DN}\"\n\
         rootpw {ADMIN_PASSWORD}\n\
         directory {}\n\
         overlay memberof\n\
         memberof-refint TRUE\n\
         access to attrs=userPassword by self write by anonymous auth by * none\n\
         access to * by * read\n",
        dir.join("db").display()
    ));
    c
}

/// Finds a program in PATH or the sbin directories a non-root PATH often lacks.
fn find_program(name: &'static str) -> Result<PathBuf, SlapdError> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let extra = ["/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/sbin"].map(PathBuf::from);
    path_dirs
        .into_iter()
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(SlapdError::NotInstalled { program: name })
}

fn find_schema_dir() -> Result<PathBuf, SlapdError> {
    [
        "/etc/ldap/schema",
        "/etc/openldap/schema",
        "/usr/local/etc/openldap/schema",
    ]
    .map(PathBuf::from)
    .into_iter()
    .find(|d| d.join("core.schema").is_file())
    .ok_or(SlapdError::SchemaNotFound)
}

fn find_module_dir() -> Option<PathBuf> {
    [
        "/usr/lib/ldap",
        "/usr/lib64/openldap",
        "/usr/lib/openldap",
        "/usr/local/libexec/openldap",
        "/usr/libexec/openldap",
    ]
    .map(PathBuf::from)
    .into_iter()
    .find(|d| d.is_dir())
}

/// A loopback port that was free a moment ago (bind to port 0, read it, release it).
fn free_port() -> Result<u16, SlapdError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| io("finding a free loopback port", source))?;
    let port = listener
        .local_addr()
        .map_err(|source| io("finding a free loopback port", source))?
        .port();
    Ok(port)
}

fn write_file(path: &Path, contents: &str) -> Result<(), SlapdError> {
    std::fs::write(path, contents).map_err(|source| SlapdError::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}

fn io(what: &str, source: std::io::Error) -> SlapdError {
    SlapdError::Io {
        what: what.to_string(),
        source,
    }
}

fn tool_error(program: &'static str, out: &std::process::Output) -> SlapdError {
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    SlapdError::Tool {
        program,
        status: out.status.to_string(),
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ldapsearch(server: &Slapd, bind: (&str, &str), filter: &str, attr: &str) -> String {
        let program = find_program("ldapsearch").unwrap();
        let out = Command::new(program)
            .env("LDAPNOINIT", "1")
            .args([
                "-x",
                "-LLL",
                "-H",
                &server.url(),
                "-D",
                bind.0,
                "-w",
                bind.1,
            ])
            .args(["-b", server.base_dn(), filter, attr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn serves_the_city_with_member_of_and_cleans_up() {
        let server = Slapd::start(crate::CITY_FIXTURE).unwrap();
        let out = ldapsearch(
            &server,
            ("uid=tanaka,ou=people,dc=example,dc=jp", "tanaka-pass"),
            "(uid=tanaka)",
            "memberOf",
        );
        assert!(
            out.contains("memberOf: cn=jinji,ou=groups,dc=example,dc=jp"),
            "{out}"
        );
        // The kit's own escaping names the comma user the way slapd stored it.
        let dn = format!("uid={},ou=people,dc=example,dc=jp", crate::dn_escape("a,b"));
        let out = ldapsearch(&server, (&dn, "comma-pass"), "(uid=a,b)", "uid");
        assert!(out.contains("uid: a,b"), "{out}");

        let dir = server.dir().to_path_buf();
        drop(server);
        assert!(!dir.exists());
    }

    #[test]
    fn apply_adds_entries_later() {
        let server = Slapd::start("").unwrap();
        server
            .apply(&crate::user_password_ldif("田中", "pw"))
            .unwrap();
        let out = ldapsearch(
            &server,
            (server.admin_dn(), server.admin_password()),
            "(objectClass=inetOrgPerson)",
            "dn",
        );
        assert!(out.contains("dn:: "), "{out}");
        let err = server
            .apply("dn: cn=x,dc=nowhere\nobjectClass: top\n")
            .unwrap_err();
        assert!(
            matches!(
                err,
                SlapdError::Tool {
                    program: "ldapmodify",
                    ..
                }
            ),
            "{err}"
        );
    }
}
