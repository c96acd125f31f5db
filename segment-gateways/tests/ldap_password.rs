//! The directory password factor against a real OpenLDAP server (sekisho-testkit).
//!
//! Needs `slapd` and `ldap-utils`; `scripts/test.sh` installs them.

use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sekisho_gateway::factors::password::{DirectoryConfig, PasswordVerifier};
use sekisho_gateway::factors::Failure;
use sekisho_testkit::{Slapd, SlapdTls, CITY_FIXTURE};

fn config(url: &str) -> DirectoryConfig {
    DirectoryConfig {
        url: url.to_string(),
        starttls: false,
        ca_file: None,
        bind_dn_template: "uid={user},ou=people,dc=example,dc=jp".to_string(),
        timeout_secs: 2,
        allow_cleartext: false,
    }
}

fn verifier(url: &str) -> PasswordVerifier {
    PasswordVerifier::directory(config(url)).unwrap()
}

#[tokio::test]
async fn binds_as_the_user() {
    let slapd = Slapd::start(CITY_FIXTURE).unwrap();
    let v = verifier(&slapd.url());

    assert_eq!(v.verify("tanaka", "tanaka-pass", None).await, Ok(None));
    assert_eq!(v.verify("suzuki", "suzuki-pass", None).await, Ok(None));
    assert_eq!(
        v.verify("tanaka", "suzuki-pass", None).await,
        Err(Failure::Mismatch)
    );
    // An empty password would be an unauthenticated bind; never a success.
    assert_eq!(v.verify("tanaka", "", None).await, Err(Failure::Mismatch));
    // Unknown user: the same answer as a wrong password.
    assert_eq!(
        v.verify("nobody", "tanaka-pass", None).await,
        Err(Failure::Mismatch)
    );
}

#[tokio::test]
async fn dn_special_characters_stay_inside_the_user_id() {
    let slapd = Slapd::start(CITY_FIXTURE).unwrap();
    let v = verifier(&slapd.url());

    // The entry `uid=a\,b` is reached by the escaped id, and only with its password.
    assert_eq!(v.verify("a,b", "comma-pass", None).await, Ok(None));
    assert_eq!(
        v.verify("a,b", "tanaka-pass", None).await,
        Err(Failure::Mismatch)
    );
    // Attempts to name another entry (the root DN, another user, a multi-valued RDN,
    // a filter wildcard) are just odd user ids with no entry.
    for (user, password) in [
        ("admin,dc=example,dc=jp", slapd.admin_password()),
        ("x,cn=admin", slapd.admin_password()),
        ("tanaka,ou=people", "tanaka-pass"),
        ("x+uid=tanaka", "tanaka-pass"),
        ("*", "tanaka-pass"),
        (" tanaka\0", "tanaka-pass"),
        ("#tanaka", "tanaka-pass"),
    ] {
        assert_eq!(
            v.verify(user, password, None).await,
            Err(Failure::Mismatch),
            "{user:?}"
        );
    }
}

#[tokio::test]
async fn unreachable_directory_is_unavailable() {
    let mut slapd = Slapd::start(CITY_FIXTURE).unwrap();
    let v = verifier(&slapd.url());
    assert_eq!(v.verify("tanaka", "tanaka-pass", None).await, Ok(None));
    slapd.stop();
    assert_eq!(
        v.verify("tanaka", "tanaka-pass", None).await,
        Err(Failure::Unavailable)
    );
    // Wrong passwords are not "mismatch" either when nobody can check them.
    assert_eq!(
        v.verify("tanaka", "wrong", None).await,
        Err(Failure::Unavailable)
    );
}

#[tokio::test]
async fn silent_directory_times_out_as_unavailable() {
    // Accepts the TCP connection, never answers the bind.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ldap://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut c = config(&url);
    c.timeout_secs = 1;
    let v = PasswordVerifier::directory(c).unwrap();
    let started = Instant::now();
    assert_eq!(
        v.verify("tanaka", "tanaka-pass", None).await,
        Err(Failure::Unavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

/// A CA and a server certificate for 127.0.0.1, as PEM.
fn tls_material() -> (String, SlapdTls) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    (
        ca.pem(),
        SlapdTls {
            cert_chain_pem: server.pem(),
            key_pem: server_key.serialize_pem(),
        },
    )
}

#[tokio::test]
async fn starttls_and_ldaps_with_the_configured_ca() {
    let (ca_pem, tls) = tls_material();
    let (other_ca_pem, _) = tls_material();
    let slapd = Slapd::start_with_tls(CITY_FIXTURE, &tls).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let other_ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca_pem).unwrap();

    let mut starttls = config(&slapd.url());
    starttls.starttls = true;
    starttls.ca_file = Some(ca_file.clone());
    let v = PasswordVerifier::directory(starttls.clone()).unwrap();
    assert_eq!(v.verify("tanaka", "tanaka-pass", None).await, Ok(None));
    assert_eq!(
        v.verify("tanaka", "wrong", None).await,
        Err(Failure::Mismatch)
    );

    let mut ldaps = config(&slapd.ldaps_url().unwrap());
    ldaps.ca_file = Some(ca_file);
    let v = PasswordVerifier::directory(ldaps.clone()).unwrap();
    assert_eq!(v.verify("tanaka", "tanaka-pass", None).await, Ok(None));

    // A server certificate from another CA is refused before any password is sent.
    for mut c in [starttls, ldaps] {
        c.ca_file = Some(other_ca_file.clone());
        let v = PasswordVerifier::directory(c).unwrap();
        assert_eq!(
            v.verify("tanaka", "tanaka-pass", None).await,
            Err(Failure::Unavailable)
        );
    }
}
