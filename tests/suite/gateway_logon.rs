//! Logons through a real gateway and a real engine over mutual TLS: each tier's
//! reference policy allowed end to end, and every way a logon must fail.

use crate::common;

use common::gateway::{now_secs, vector, TestCard, TestGateway};
use sekisho_gateway::factors::biometric::{sign_capture, BiometricFactor};
use sekisho_gateway::factors::card::sign_nonce;
use sekisho_gateway::factors::totp::{code_at, TotpParams};
use sekisho_policy_engine::{Factor, Tier};
use sekisho_proto::v1 as pb;
use tonic::transport::Channel;

type Endpoint = pb::logon_client::LogonClient<Channel>;

async fn begin(ep: &mut Endpoint, user: &str, action: &str) -> pb::Challenge {
    ep.begin(pb::BeginRequest {
        user: user.into(),
        action: action.into(),
        ..Default::default()
    })
    .await
    .expect("begin")
    .into_inner()
}

async fn complete(
    ep: &mut Endpoint,
    c: &pb::Challenge,
    proofs: Vec<pb::proof::Proof>,
) -> pb::LogonResult {
    let request = pb::CompleteRequest {
        challenge_id: c.challenge_id.clone(),
        proofs: proofs
            .into_iter()
            .map(|p| pb::Proof { proof: Some(p) })
            .collect(),
        request_id: String::new(),
    };
    let r = if c.action == "unlock" {
        ep.unlock(request).await
    } else {
        ep.complete(request).await
    };
    r.expect("complete").into_inner()
}

fn password(p: &str) -> pb::proof::Proof {
    pb::proof::Proof::Password(p.into())
}

/// `user` logs on from two devices at once with the same proofs: exactly one is let
/// in. Returns the other's answer.
async fn one_of_two_wins(
    ep1: &mut Endpoint,
    ep2: &mut Endpoint,
    user: &str,
    proofs: impl Fn() -> Vec<pb::proof::Proof>,
) -> pb::LogonResult {
    let (c1, c2) = (
        begin(ep1, user, "logon").await,
        begin(ep2, user, "logon").await,
    );
    let (r1, r2) = tokio::join!(complete(ep1, &c1, proofs()), complete(ep2, &c2, proofs()));
    assert_eq!(
        [allowed(&r1), allowed(&r2)].iter().filter(|a| **a).count(),
        1,
        "{r1:?} {r2:?}"
    );
    let lost = if allowed(&r1) { r2 } else { r1 };
    assert!(lost.session_id.is_empty());
    lost
}

/// u036 presents `good` and the right password, and is told "locked" (every factor
/// correct); returns until when.
async fn told_locked(ep: &mut Endpoint, good: &TestCard) -> i64 {
    let c = begin(ep, "u036", "logon").await;
    let r = complete(ep, &c, vec![card(&c, good), password("u036-password")]).await;
    assert!(!allowed(&r));
    assert_eq!(r.reason, "locked");
    assert!(r.factors.iter().all(|f| f.ok), "{r:?}");
    r.locked_until_unix_ms.expect("locked until")
}

fn card(c: &pb::Challenge, card: &TestCard) -> pb::proof::Proof {
    card_over(card, &c.nonces["card"])
}

fn card_over(card: &TestCard, nonce: &[u8]) -> pb::proof::Proof {
    pb::proof::Proof::Card(pb::CardProof {
        certificate: card.der.clone(),
        signature: sign_nonce(&card.key_pem, nonce).expect("sign"),
    })
}

fn bio(
    c: &pb::Challenge,
    factor: BiometricFactor,
    v: Vec<f32>,
    capture_key: &str,
) -> pb::BiometricProof {
    let signature =
        sign_capture(capture_key, factor, &c.nonces[factor.name()], &v).expect("sign capture");
    pb::BiometricProof {
        vector: v,
        signature,
    }
}

fn totp_now(secret: &[u8], offset_steps: i64) -> String {
    let step = (now_secs() / 30) as i64 + offset_steps;
    code_at(secret, &TotpParams::default(), step as u64)
}

fn allowed(r: &pb::LogonResult) -> bool {
    r.decision == pb::Decision::Allow as i32
}

/// (factor, reason) of each failed factor.
fn failures(r: &pb::LogonResult) -> Vec<(String, String)> {
    r.factors
        .iter()
        .filter(|f| !f.ok)
        .map(|f| (f.factor.clone(), f.reason.clone()))
        .collect()
}

fn failed(factor: &str, reason: &str) -> Vec<(String, String)> {
    vec![(factor.into(), reason.into())]
}

fn options(c: &pb::Challenge) -> Vec<Vec<String>> {
    c.options.iter().map(|o| o.factors.clone()).collect()
}

#[tokio::test]
async fn lgwan_card_and_directory_password_then_lock_unlock_logoff() {
    let ldap =
        sekisho_testkit::Slapd::start(&sekisho_testkit::user_password_ldif("u007", "u007-pass"))
            .expect("slapd (scripts/test.sh installs it)");
    let dir_url = ldap.url();
    let gw = TestGateway::start(Tier::Lgwan, |c| {
        c.directory = Some(sekisho_gateway::factors::password::DirectoryConfig {
            url: dir_url.clone(),
            starttls: false,
            ca_file: None,
            bind_dn_template: "uid={user},ou=people,dc=example,dc=jp".into(),
            timeout_secs: 5,
            allow_cleartext: false,
        });
    })
    .await;
    let capture_key = gw
        .register("lgwan-desk-17", "desktop", &["card", "face"])
        .await;
    let staff_card = gw.cards.issue("u007");
    gw.enroll_card("u007", &staff_card).await;
    let mut ep = gw.endpoint("lgwan-desk-17").await;

    let c = begin(&mut ep, "u007", "logon").await;
    assert_eq!(
        options(&c),
        vec![vec!["card".to_string(), "password".to_string()]]
    );
    assert_eq!(c.policy_version, "v1");
    let ok = complete(
        &mut ep,
        &c,
        vec![card(&c, &staff_card), password("u007-pass")],
    )
    .await;
    assert!(allowed(&ok), "{ok:?}");
    assert_eq!(ok.policy_ids, vec!["lgwan-desktop-logon".to_string()]);
    assert_eq!(ok.policy_version, "v1");
    assert_eq!(ok.operator, "u007");
    let session = ok.session_id.clone();

    // Wrong directory password.
    let c = begin(&mut ep, "u007", "logon").await;
    let r = complete(&mut ep, &c, vec![card(&c, &staff_card), password("wrong")]).await;
    assert!(!allowed(&r));
    assert_eq!(r.reason, "factor_failed");
    assert_eq!(failures(&r), failed("password", "mismatch"));

    // Lock, then unlock with card + directory password; a second logon replaced
    // nothing since the failed one opened no session.
    let locked = ep
        .lock(pb::SessionRequest {
            session_id: session.clone(),
            request_id: String::new(),
        })
        .await
        .expect("lock")
        .into_inner();
    assert_eq!(locked.state, "locked");
    let c = begin(&mut ep, "u007", "unlock").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &staff_card), password("u007-pass")],
    )
    .await;
    assert!(allowed(&r), "{r:?}");
    assert_eq!(r.session_id, session);
    assert_eq!(r.policy_ids, vec!["lgwan-desktop-unlock".to_string()]);

    // An unlock challenge cannot be answered through Complete (nor the reverse).
    let c = begin(&mut ep, "u007", "unlock").await;
    let r = ep
        .complete(pb::CompleteRequest {
            challenge_id: c.challenge_id.clone(),
            proofs: vec![pb::Proof {
                proof: Some(password("u007-pass")),
            }],
            request_id: String::new(),
        })
        .await
        .expect("complete")
        .into_inner();
    assert_eq!(r.reason, "challenge_invalid");

    let ended = ep
        .logoff(pb::SessionRequest {
            session_id: session.clone(),
            request_id: String::new(),
        })
        .await
        .expect("logoff")
        .into_inner();
    assert_eq!(ended.state, "ended");
    let again = ep
        .lock(pb::SessionRequest {
            session_id: session,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound);
    drop(capture_key);
    gw.stop().await;
}

#[tokio::test]
async fn mynumber_card_and_vein_and_biometric_failures() {
    let gw = TestGateway::start(Tier::Mynumber, |_| {}).await;
    let capture_key = gw
        .register("mn-desk-02", "desktop", &["card", "vein"])
        .await;
    let my_number_card = gw.jpki.issue("u016");
    gw.enroll_card("u016", &my_number_card).await;
    gw.enroll_template("u016", "vein", vector(16, 0, 0.05))
        .await;
    let mut ep = gw.endpoint("mn-desk-02").await;

    let c = begin(&mut ep, "u016", "logon").await;
    assert_eq!(
        options(&c),
        vec![vec!["card".to_string(), "vein".to_string()]]
    );
    let vein = bio(&c, BiometricFactor::Vein, vector(16, 1, 0.05), &capture_key);
    let ok = complete(
        &mut ep,
        &c,
        vec![card(&c, &my_number_card), pb::proof::Proof::Vein(vein)],
    )
    .await;
    assert!(allowed(&ok), "{ok:?}");
    assert_eq!(ok.policy_ids, vec!["mynumber-desktop-logon".to_string()]);
    let proved: Vec<&str> = ok.factors.iter().map(|f| f.factor.as_str()).collect();
    assert_eq!(
        proved,
        ["card", "mynumber_card", "vein"],
        "a JPKI card proves both"
    );

    // Another person's vein.
    let c = begin(&mut ep, "u016", "logon").await;
    let other = bio(&c, BiometricFactor::Vein, vector(99, 1, 0.05), &capture_key);
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &my_number_card), pb::proof::Proof::Vein(other)],
    )
    .await;
    assert_eq!(failures(&r), failed("vein", "mismatch"));

    // The right vector, signed by a key that is not this device's.
    let c = begin(&mut ep, "u016", "logon").await;
    let stranger = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let forged = bio(&c, BiometricFactor::Vein, vector(16, 2, 0.05), &stranger);
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &my_number_card), pb::proof::Proof::Vein(forged)],
    )
    .await;
    assert_eq!(failures(&r), failed("vein", "bad_device_signature"));

    // A signature by the device, but over another vector than the one sent.
    let c = begin(&mut ep, "u016", "logon").await;
    let mut swapped = bio(&c, BiometricFactor::Vein, vector(16, 3, 0.05), &capture_key);
    swapped.vector = vector(16, 4, 0.05);
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &my_number_card), pb::proof::Proof::Vein(swapped)],
    )
    .await;
    assert_eq!(failures(&r), failed("vein", "bad_device_signature"));
    gw.stop().await;
}

#[tokio::test]
async fn internet_password_and_totp_with_replay_and_window() {
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    gw.register("net-vdi-01", "vdi", &[]).await;
    gw.set_secret("u013", "password", "u013-password").await;
    let secret = gw.enroll_totp("u013").await;
    let mut ep = gw.endpoint("net-vdi-01").await;

    let c = begin(&mut ep, "u013", "logon").await;
    assert_eq!(
        options(&c),
        vec![vec!["password".to_string(), "totp".to_string()]]
    );
    assert!(c.nonces.is_empty(), "no card or biometric factor, no nonce");
    let code = totp_now(&secret, 0);
    let proofs = || {
        vec![
            password("u013-password"),
            pb::proof::Proof::Totp(code.clone()),
        ]
    };
    let ok = complete(&mut ep, &c, proofs()).await;
    assert!(allowed(&ok), "{ok:?}");
    assert_eq!(
        ok.policy_ids,
        vec!["internet-totp-logon-unlock".to_string()]
    );

    // The same code again: replay.
    let c = begin(&mut ep, "u013", "logon").await;
    let r = complete(&mut ep, &c, proofs()).await;
    assert_eq!(failures(&r), failed("totp", "replayed"));

    // One code presented on two devices at once: exactly one logon gets in, the other
    // is told the code was replayed, however the two interleave (the check that
    // decides it is made when each answer commits).
    gw.register("net-desk-02", "desktop", &["card"]).await;
    let mut ep2 = gw.endpoint("net-desk-02").await;
    let next = totp_now(&secret, 1);
    let both = || {
        vec![
            password("u013-password"),
            pb::proof::Proof::Totp(next.clone()),
        ]
    };
    let lost = one_of_two_wins(&mut ep, &mut ep2, "u013", both).await;
    assert_eq!(failures(&lost), failed("totp", "replayed"));

    // A code five steps ahead (a phone whose clock runs fast): outside the window.
    // (An old code is refused as replayed once a later one was accepted.)
    let c = begin(&mut ep, "u013", "logon").await;
    let stale = totp_now(&secret, 5);
    let r = complete(
        &mut ep,
        &c,
        vec![password("u013-password"), pb::proof::Proof::Totp(stale)],
    )
    .await;
    assert_eq!(failures(&r), failed("totp", "outside_window"));

    // Wrong standalone password (Argon2id), right factor missing: both reported.
    let c = begin(&mut ep, "u013", "logon").await;
    let r = complete(&mut ep, &c, vec![password("not-it")]).await;
    assert_eq!(failures(&r), failed("password", "mismatch"));

    // TOTP enrolled again (a new phone) between Begin and Complete: a code of the old
    // secret is refused, although Begin read the old one.
    gw.set_secret("u012", "password", "u012-password").await;
    let old_secret = gw.enroll_totp("u012").await;
    let c = begin(&mut ep, "u012", "logon").await;
    let new_secret = gw.enroll_totp("u012").await;
    let proofs = |secret: &[u8]| {
        vec![
            password("u012-password"),
            pb::proof::Proof::Totp(totp_now(secret, 0)),
        ]
    };
    let r = complete(&mut ep, &c, proofs(&old_secret)).await;
    assert_eq!(failures(&r), failed("totp", "mismatch"));
    let c = begin(&mut ep, "u012", "logon").await;
    let r = complete(&mut ep, &c, proofs(&new_secret)).await;
    assert!(allowed(&r), "{r:?}");
    gw.stop().await;
}

#[tokio::test]
async fn telework_face_and_password_and_another_persons_face() {
    let gw = TestGateway::start(Tier::Telework, |_| {}).await;
    let capture_key = gw.register("tw-pc-01", "telework", &["face"]).await;
    gw.set_secret("u017", "password", "u017-password").await;
    gw.enroll_template("u017", "face", vector(17, 0, 0.05))
        .await;
    let mut ep = gw.endpoint("tw-pc-01").await;

    let c = begin(&mut ep, "u017", "logon").await;
    assert_eq!(
        options(&c),
        vec![vec!["face".to_string(), "password".to_string()]]
    );
    let face = bio(&c, BiometricFactor::Face, vector(17, 1, 0.05), &capture_key);
    let ok = complete(
        &mut ep,
        &c,
        vec![pb::proof::Proof::Face(face), password("u017-password")],
    )
    .await;
    assert!(allowed(&ok), "{ok:?}");
    assert_eq!(
        ok.policy_ids,
        vec!["telework-device-logon-unlock".to_string()]
    );

    let c = begin(&mut ep, "u017", "logon").await;
    let impostor = bio(
        &c,
        BiometricFactor::Face,
        vector(4242, 1, 0.05),
        &capture_key,
    );
    let r = complete(
        &mut ep,
        &c,
        vec![pb::proof::Proof::Face(impostor), password("u017-password")],
    )
    .await;
    assert_eq!(failures(&r), failed("face", "mismatch"));
    gw.stop().await;
}

#[tokio::test]
async fn cards_pins_nonces_and_devices_that_do_not_belong() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-22", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    gw.set_secret("u036", "pin", "4719").await;
    let good = gw.cards.issue("u036");
    gw.enroll_card("u036", &good).await;
    let mut ep = gw.endpoint("lgwan-desk-22").await;

    // Signature over another nonce.
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![
            card_over(&good, b"some other nonce"),
            password("u036-password"),
        ],
    )
    .await;
    assert_eq!(failures(&r), failed("card", "bad_signature"));

    // The same challenge (and so the same nonce) a second time, with a good answer.
    let c = begin(&mut ep, "u036", "logon").await;
    let first = complete(
        &mut ep,
        &c,
        vec![card(&c, &good), password("u036-password")],
    )
    .await;
    assert!(allowed(&first), "{first:?}");
    let replayed = complete(
        &mut ep,
        &c,
        vec![card(&c, &good), password("u036-password")],
    )
    .await;
    assert!(!allowed(&replayed));
    assert_eq!(replayed.reason, "challenge_invalid");

    // Expired card, and a card issued by a CA this tier does not trust. Enrollment
    // refuses both, so they are put in the store the way an old enrollment would be.
    let store = &gw.running.gateway.store;
    let mut conn = store.db().acquire().await.unwrap();
    let expired = gw.cards.issue_valid("u036", (2019, 1, 1), (2021, 1, 1));
    store
        .add_card(
            &mut conn,
            "u036",
            &expired.der,
            sekisho_gateway::factors::card::CardKind::Card,
            0,
        )
        .await
        .unwrap();
    let rogue_ca = common::gateway::CardCa::new("rogue CA", gw.dir.path());
    let rogue = rogue_ca.issue("u036");
    store
        .add_card(
            &mut conn,
            "u036",
            &rogue.der,
            sekisho_gateway::factors::card::CardKind::Card,
            0,
        )
        .await
        .unwrap();
    for (card_used, reason) in [
        (&expired, "certificate_expired"),
        (&rogue, "untrusted_certificate"),
    ] {
        let c = begin(&mut ep, "u036", "logon").await;
        let r = complete(
            &mut ep,
            &c,
            vec![card(&c, card_used), password("u036-password")],
        )
        .await;
        assert_eq!(failures(&r), failed("card", reason));
    }
    let mut admin = gw.admin().await;
    for bad in [&expired, &rogue] {
        let e = admin
            .enroll_card(pb::EnrollCardRequest {
                user: "u036".into(),
                certificate: bad.der.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }

    // A found card without its owner's password (someone else's card).
    let someone_else = gw.cards.issue("u999");
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &someone_else), password("u036-password")],
    )
    .await;
    assert_eq!(failures(&r), failed("card", "card_not_enrolled"));

    // The failures above locked u036, and while locked a deny hides which factors
    // were right: lift the lock to see how the PIN alone is judged.
    admin
        .unlock_user(pb::UnlockUserRequest {
            user: "u036".into(),
        })
        .await
        .unwrap();
    // Wrong PIN (the PIN verifier, whatever the policy asks for).
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &good), pb::proof::Proof::Pin("0000".into())],
    )
    .await;
    assert_eq!(failures(&r), failed("pin", "mismatch"));
    // The right PIN is verified, but card + PIN is not a permitted set here.
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &good), pb::proof::Proof::Pin("4719".into())],
    )
    .await;
    assert!(failures(&r).is_empty());
    assert_eq!(r.reason, "insufficient_factors");

    // A device of another tier is refused, and so is one nobody registered.
    for device in ["mn-desk-01", "lgwan-desk-01"] {
        let mut other = gw.endpoint(device).await;
        let e = other
            .begin(pb::BeginRequest {
                user: "u036".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            e.message().contains("not registered to tier 'lgwan'"),
            "{e:?}"
        );
    }
    // And registering a mynumber device at the lgwan gateway is refused.
    let e = admin
        .register_device(pb::RegisterDeviceRequest {
            device: Some(pb::Device {
                id: "mn-desk-01".into(),
                tier: "mynumber".into(),
                kind: "desktop".into(),
                capabilities: vec!["card".into()],
                location: String::new(),
            }),
            capture_key: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("this gateway serves 'lgwan'"), "{e:?}");
    // A device certificate may not name another device in its request.
    let e = ep
        .begin(pb::BeginRequest {
            device: "lgwan-desk-17".into(),
            user: "u036".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    gw.stop().await;
}

#[tokio::test]
async fn a_crl_installed_while_running_revokes_the_card_and_a_bad_one_changes_nothing() {
    // The test looks at the files itself (`install_crl`), never racing the timer.
    let gw = TestGateway::start(Tier::Lgwan, |c| {
        c.cards.reload_secs = 0;
    })
    .await;
    gw.register("lgwan-desk-30", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    let (lost, spare) = (gw.cards.issue("u036"), gw.cards.issue("u036"));
    gw.enroll_card("u036", &lost).await;
    gw.enroll_card("u036", &spare).await;
    let ep = gw.endpoint("lgwan-desk-30").await;
    let logon = |card_used: &TestCard| {
        let (mut ep, card_used) = (ep.clone(), card_used.clone());
        async move {
            let c = begin(&mut ep, "u036", "logon").await;
            let proofs = vec![card(&c, &card_used), password("u036-password")];
            complete(&mut ep, &c, proofs).await
        }
    };
    // The chain of `lost` is validated and remembered before the revocation.
    assert!(allowed(&logon(&lost).await));
    assert!(!gw.running.reload_cards().await, "nothing changed");

    assert!(gw.install_crl(&gw.cards.crl_pem(&[&lost])).await);
    assert_eq!(failures(&logon(&lost).await), failed("card", "revoked"));
    assert!(allowed(&logon(&spare).await));

    // A CRL from a CA this tier does not trust: refused, the one in force stays.
    let rogue = common::gateway::CardCa::new("rogue CA", gw.dir.path());
    assert!(!gw.install_crl(&rogue.crl_pem(&[])).await);
    assert_eq!(failures(&logon(&lost).await), failed("card", "revoked"));

    let reloads: Vec<_> = gw
        .journal()
        .await
        .into_iter()
        .filter(|e| e.body.action == "card_trust_reload")
        .map(|e| e.body)
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert_eq!(reloads[0].outcome.name(), "allow");
    assert!(reloads[0].detail.contains_key("crls_valid_until"));
    assert_eq!(reloads[1].outcome.name(), "error");
    assert!(
        reloads[1].detail["error"].contains("issued by none of the configured"),
        "{:?}",
        reloads[1].detail
    );
}

#[tokio::test]
async fn lockout_after_n_failures_is_told_only_to_the_right_factors_and_ends() {
    let gw = TestGateway::start(Tier::Internet, |c| c.lockout.lock_secs = 1).await;
    gw.register("net-desk-01", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    let good = gw.cards.issue("u036");
    gw.enroll_card("u036", &good).await;
    let mut ep = gw.endpoint("net-desk-01").await;

    for _ in 0..3 {
        let c = begin(&mut ep, "u036", "logon").await;
        let r = complete(&mut ep, &c, vec![card(&c, &good), password("guess")]).await;
        assert_eq!(r.reason, "factor_failed");
        assert_eq!(r.locked_until_unix_ms, None);
    }
    // Locked now: a wrong guess still just fails (nothing said about the lock)...
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(&mut ep, &c, vec![card(&c, &good), password("guess")]).await;
    assert_eq!(
        (r.reason.as_str(), r.locked_until_unix_ms),
        ("factor_failed", None)
    );
    // ...and the right factors are told "locked until".
    let until = told_locked(&mut ep, &good).await;
    let listed = gw
        .admin()
        .await
        .list_enrollments(pb::ListEnrollmentsRequest {
            user: "u036".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.locked_until_unix_ms, Some(until));

    // The lock ends by itself (lock_secs = 1): wait until the instant it names.
    let wait_ms = until - common::gateway::now_secs() as i64 * 1000 + 50;
    tokio::time::sleep(std::time::Duration::from_millis(
        wait_ms.clamp(0, 2_000) as u64
    ))
    .await;
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &good), password("u036-password")],
    )
    .await;
    assert!(allowed(&r), "{r:?}");

    // An administrator can end a lock early.
    for _ in 0..3 {
        let c = begin(&mut ep, "u036", "logon").await;
        complete(&mut ep, &c, vec![card(&c, &good), password("guess")]).await;
    }
    let unlocked = gw
        .admin()
        .await
        .unlock_user(pb::UnlockUserRequest {
            user: "u036".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unlocked.was_locked);
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &good), password("u036-password")],
    )
    .await;
    assert!(allowed(&r), "{r:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_locked_user_is_told_nothing_about_the_factors_presented() {
    // The lock lasts 900 s here: nothing in this test waits for it to end.
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    gw.register("net-desk-01", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    let good = gw.cards.issue("u036");
    gw.enroll_card("u036", &good).await;
    let stranger = gw.cards.issue("u999");
    let mut ep = gw.endpoint("net-desk-01").await;

    // Not locked: the right password alone is told so (too few factors) and costs
    // nothing; a wrong one fails and counts.
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(&mut ep, &c, vec![password("u036-password")]).await;
    assert_eq!(
        (r.reason.as_str(), failures(&r)),
        ("insufficient_factors", Vec::new())
    );
    assert_eq!(failures_counted(&gw, "u036").await, 0);
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(&mut ep, &c, vec![password("guess-1")]).await;
    assert_eq!(r.reason, "factor_failed");
    assert_eq!(failures(&r), failed("password", "mismatch"));
    assert_eq!(failures_counted(&gw, "u036").await, 1);
    // An allowed logon is as it was: every factor ok, a session, the count gone.
    let c = begin(&mut ep, "u036", "logon").await;
    let ok = complete(
        &mut ep,
        &c,
        vec![card(&c, &good), password("u036-password")],
    )
    .await;
    assert!(allowed(&ok), "{ok:?}");
    assert!(ok.factors.iter().all(|f| f.ok) && ok.factors.len() == 2);
    assert!(!ok.session_id.is_empty() && !ok.policy_ids.is_empty());
    assert_eq!((ok.reason.as_str(), ok.locked_until_unix_ms), ("", None));
    assert_eq!(failures_counted(&gw, "u036").await, 0);

    for n in 0..3 {
        let c = begin(&mut ep, "u036", "logon").await;
        let r = complete(&mut ep, &c, vec![password(&format!("guess-{n}"))]).await;
        assert_eq!(failures(&r), failed("password", "mismatch"));
    }
    // Locked now. The right password alone gets exactly the answer a wrong one
    // gets: the guess is neither confirmed nor is the lock given away.
    let c = begin(&mut ep, "u036", "logon").await;
    let wrong = complete(&mut ep, &c, vec![password("guess-4")]).await;
    let c = begin(&mut ep, "u036", "logon").await;
    let right = complete(&mut ep, &c, vec![password("u036-password")]).await;
    assert_eq!(right, wrong);
    assert_eq!(
        (wrong.reason.as_str(), failures(&wrong)),
        ("factor_failed", failed("password", "mismatch"))
    );
    assert_eq!(wrong.locked_until_unix_ms, None);
    // The same for the enrolled card with a wrong password: answered like a card of
    // someone else.
    let c = begin(&mut ep, "u036", "logon").await;
    let theirs = complete(&mut ep, &c, vec![card(&c, &stranger), password("guess-5")]).await;
    let c = begin(&mut ep, "u036", "logon").await;
    let own = complete(&mut ep, &c, vec![card(&c, &good), password("guess-5")]).await;
    assert_eq!(own, theirs);
    assert_eq!(
        failures(&own),
        vec![
            ("card".to_string(), "card_not_enrolled".to_string()),
            ("password".to_string(), "mismatch".to_string()),
        ]
    );
    // Only the full right set is told "locked", with its end.
    told_locked(&mut ep, &good).await;

    // The trail records what the endpoint was told, and what the lock hid.
    let events = gw.journal().await;
    let hidden: Vec<&str> = events
        .iter()
        .filter_map(|e| e.body.detail.get("concealed_while_locked"))
        .map(String::as_str)
        .collect();
    assert_eq!(hidden, ["password", "card"]);
    gw.stop().await;
}

/// An internet-tier gateway whose devices may Begin twice, then once a minute.
async fn rate_limited_gateway() -> TestGateway {
    let gw = TestGateway::start(Tier::Internet, |c| {
        c.rate_limit.burst = 2;
        c.rate_limit.per_device_per_minute = 1.0;
    })
    .await;
    gw.register("net-vdi-01", "vdi", &[]).await;
    gw
}

#[tokio::test]
async fn bad_begins_are_rate_limited_before_they_are_journaled() {
    let gw = rate_limited_gateway().await;
    let mut ep = gw.endpoint("net-vdi-01").await;
    let journaled = || async {
        gw.journal()
            .await
            .into_iter()
            .filter(|e| e.body.action == "logon")
            .map(|e| e.body.reason)
            .collect::<Vec<_>>()
    };
    let no_user = || pb::BeginRequest {
        action: "logon".into(),
        ..Default::default()
    };
    let another_device = || pb::BeginRequest {
        device: "net-vdi-02".into(),
        user: "u013".into(),
        ..Default::default()
    };
    // Within the burst, each refusal is journaled.
    let e = ep.begin(no_user()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = ep.begin(another_device()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert_eq!(journaled().await, ["bad_request", "device_mismatch"]);
    // Past it, bad and good Begins alike are refused before anything is looked at
    // or written.
    for request in [no_user(), another_device(), no_user()] {
        let e = ep.begin(request).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }
    let e = ep
        .begin(pb::BeginRequest {
            user: "u013".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert_eq!(journaled().await, ["bad_request", "device_mismatch"]);
    gw.stop().await;
}

#[tokio::test]
async fn emergency_otp_works_once() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-01", "desktop", &["card"]).await;
    gw.set_secret("u007", "password", "u007-password").await;
    let code = gw.issue_emergency_otp("u007").await;
    assert_eq!(code.len(), 14, "XXXX-XXXX-XXXX");
    let mut ep = gw.endpoint("lgwan-desk-01").await;

    // No card enrolled: the plan offers the emergency code with the password.
    let c = begin(&mut ep, "u007", "logon").await;
    assert_eq!(
        options(&c),
        vec![vec!["emergency_otp".to_string(), "password".to_string()]]
    );
    let proofs = || {
        vec![
            pb::proof::Proof::EmergencyOtp(code.to_lowercase()),
            password("u007-password"),
        ]
    };
    let ok = complete(&mut ep, &c, proofs()).await;
    assert!(allowed(&ok), "{ok:?}");
    assert_eq!(ok.policy_ids, vec!["lgwan-emergency-otp".to_string()]);

    // Used: the plan no longer offers it, and presenting it again fails.
    let c = begin(&mut ep, "u007", "logon").await;
    assert!(options(&c).is_empty());
    let r = complete(&mut ep, &c, proofs()).await;
    assert_eq!(failures(&r), failed("emergency_otp", "replayed"));

    let too_long = gw
        .admin()
        .await
        .issue_emergency_otp(pb::IssueEmergencyOtpRequest {
            user: "u007".into(),
            ttl_secs: 3 * 86_400,
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_user_looks_like_a_wrong_factor() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-22", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    gw.enroll_card("u036", &gw.cards.issue("u036")).await;
    let found_card = gw.cards.issue("somebody");
    let mut ep = gw.endpoint("lgwan-desk-22").await;

    let mut seen = Vec::new();
    for user in ["u036", "nobody-by-this-name"] {
        let c = begin(&mut ep, user, "logon").await;
        let r = complete(
            &mut ep,
            &c,
            vec![card(&c, &found_card), password("wrong-password")],
        )
        .await;
        let mut nonces: Vec<&String> = c.nonces.keys().collect();
        nonces.sort();
        seen.push((
            options(&c),
            format!("{:?}", c.unavailable),
            nonces.into_iter().cloned().collect::<Vec<_>>(),
            c.policy_version.clone(),
            r,
        ));
    }
    assert_eq!(
        seen[0], seen[1],
        "the responses must not tell the users apart"
    );
    assert_eq!(
        failures(&seen[1].4),
        vec![
            ("card".to_string(), "card_not_enrolled".to_string()),
            ("password".to_string(), "mismatch".to_string()),
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_user_is_planned_like_a_typical_one() {
    // Most users here enrolled card + password; u033 only a password; u032 nothing.
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-22", "desktop", &["card"]).await;
    for user in ["u034", "u035"] {
        gw.set_secret(user, "password", &format!("{user}-password"))
            .await;
        gw.enroll_card(user, &gw.cards.issue(user)).await;
    }
    gw.set_secret("u033", "password", "u033-password").await;
    let mut ep = gw.endpoint("lgwan-desk-22").await;

    let mut challenges = Vec::new();
    for user in ["u034", "nobody-by-this-name", "u032", "u033"] {
        let c = begin(&mut ep, user, "logon").await;
        let mut nonces: Vec<String> = c.nonces.keys().cloned().collect();
        nonces.sort();
        challenges.push((options(&c), format!("{:?}", c.unavailable), nonces));
    }
    // Neither the unknown user nor the known one with nothing stored here stands out
    // from a typical user: a card is asked for, with a nonce, and nothing is "not
    // enrolled".
    assert_eq!(challenges[0], challenges[1]);
    assert_eq!(challenges[0], challenges[2]);
    assert_eq!(challenges[0].2, ["card"]);
    // A real user's own enrolment still shapes their plan.
    assert_ne!(challenges[3], challenges[0]);
    assert!(
        challenges[3].1.contains("NotEnrolled") || challenges[3].1.contains("not_enrolled"),
        "{:?}",
        challenges[3]
    );
    gw.stop().await;
}

#[tokio::test]
async fn devices_are_rate_limited() {
    let gw = rate_limited_gateway().await;
    gw.register("net-desk-02", "desktop", &["card"]).await;
    let mut ep = gw.endpoint("net-vdi-01").await;
    begin(&mut ep, "u013", "logon").await;
    begin(&mut ep, "u013", "logon").await;
    let e = ep
        .begin(pb::BeginRequest {
            user: "u013".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    let mut other = gw.endpoint("net-desk-02").await;
    begin(&mut other, "u013", "logon").await;
    gw.stop().await;
}

#[tokio::test]
async fn the_credential_store_needs_its_key_and_works_on_postgresql() {
    // PostgreSQL: the whole logon against a PG credential store.
    let tenant = common::unique_tenant("gw");
    let gw = TestGateway::start(Tier::Internet, |c| {
        c.store = Some(common::pg_url());
        c.tenant = tenant.clone();
    })
    .await;
    assert_eq!(gw.running.gateway.store.db().backend(), "postgres");
    gw.register("net-vdi-01", "vdi", &[]).await;
    gw.set_secret("u013", "password", "u013-password").await;
    let secret = gw.enroll_totp("u013").await;
    let mut ep = gw.endpoint("net-vdi-01").await;
    let c = begin(&mut ep, "u013", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![
            password("u013-password"),
            pb::proof::Proof::Totp(totp_now(&secret, 0)),
        ],
    )
    .await;
    assert!(allowed(&r), "{r:?}");

    // Another key for the same store is refused at startup, naming the problem.
    let config = gw.config.clone();
    let dir = gw.dir.path().to_path_buf();
    gw.running.shutdown().await;
    std::fs::remove_file(&config.key_file).unwrap();
    sekisho_gateway::crypto::SealingKey::write_new(&config.key_file).unwrap();
    let resolved = config.resolve("test", &dir).unwrap();
    let e = match sekisho_gateway::server::start(resolved).await {
        Ok(_) => panic!("a wrong key must not start"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("credential key does not match"), "{e}");
    gw.engine.stop().await;
}

/// Completes `c` with raw proofs (possibly empty ones) and returns the error the
/// gateway answers with.
async fn refused(ep: &mut Endpoint, c: &pb::Challenge, proofs: Vec<pb::Proof>) -> tonic::Status {
    ep.complete(pb::CompleteRequest {
        challenge_id: c.challenge_id.clone(),
        proofs,
        request_id: String::new(),
    })
    .await
    .expect_err("a bad request is refused")
}

fn some(p: pb::proof::Proof) -> pb::Proof {
    pb::Proof { proof: Some(p) }
}

async fn failures_counted(gw: &TestGateway, user: &str) -> u32 {
    sekisho_gateway::lockout::standing(gw.running.gateway.store.db(), user)
        .await
        .expect("lockout standing")
        .failures
}

#[tokio::test]
async fn a_malformed_totp_code_does_not_tell_users_apart() {
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    gw.register("net-vdi-01", "vdi", &[]).await;
    gw.set_secret("u013", "password", "u013-password").await;
    gw.enroll_totp("u013").await;
    gw.set_secret("u012", "password", "u012-password").await;
    let mut ep = gw.endpoint("net-vdi-01").await;

    // u013 has TOTP (6 digits), u012 has none, the third does not exist. A badly
    // formed code is `malformed` for all three, a well-formed wrong one (here of the
    // other length) `mismatch` for all three, and nothing else in the answer differs.
    for (code, reason) in [("12a456", "malformed"), ("00000000", "mismatch")] {
        let mut answers = Vec::new();
        for user in ["u013", "u012", "nobody-by-this-name"] {
            let c = begin(&mut ep, user, "logon").await;
            let r = complete(
                &mut ep,
                &c,
                vec![
                    password("wrong-password"),
                    pb::proof::Proof::Totp(code.into()),
                ],
            )
            .await;
            assert_eq!(
                failures(&r),
                vec![
                    ("password".to_string(), "mismatch".to_string()),
                    ("totp".to_string(), reason.to_string()),
                ],
                "{user} {code}"
            );
            answers.push(r);
        }
        assert_eq!(answers[0], answers[1], "{code}");
        assert_eq!(answers[0], answers[2], "{code}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_emergency_otp_is_used_up_only_by_a_logon_that_lets_the_user_in() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-01", "desktop", &["card"]).await;
    gw.set_secret("u007", "password", "u007-password").await;
    let code = gw.issue_emergency_otp("u007").await;
    let mut ep = gw.endpoint("lgwan-desk-01").await;
    let otp = || pb::proof::Proof::EmergencyOtp(code.clone());

    // With a wrong password: denied for the password alone; the code is kept.
    let c = begin(&mut ep, "u007", "logon").await;
    let r = complete(&mut ep, &c, vec![otp(), password("wrong")]).await;
    assert_eq!(failures(&r), failed("password", "mismatch"));

    // Bad requests are refused before any proof is checked, naming the proof, and
    // neither use the code nor count as a failure.
    let c = begin(&mut ep, "u007", "logon").await;
    let e = refused(
        &mut ep,
        &c,
        vec![
            some(otp()),
            some(password("u007-password")),
            some(pb::proof::Proof::Pin(String::new())),
        ],
    )
    .await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "proof 3 (pin) is empty");
    let c = begin(&mut ep, "u007", "logon").await;
    let e = refused(
        &mut ep,
        &c,
        vec![
            some(otp()),
            some(password("u007-password")),
            some(password("u007-password")),
        ],
    )
    .await;
    assert_eq!(
        e.message(),
        "proof 3 (password) proves the same factor as proof 2"
    );
    let c = begin(&mut ep, "u007", "logon").await;
    let e = refused(&mut ep, &c, vec![some(otp()), pb::Proof { proof: None }]).await;
    assert_eq!(
        e.message(),
        "proof 2 is empty or proves a factor this gateway does not know"
    );
    assert!(!e.message().contains(&code));
    assert_eq!(failures_counted(&gw, "u007").await, 1);

    // Locked (3 failures): the right code and password are told "locked", and the
    // code is not used up by it.
    for _ in 0..2 {
        let c = begin(&mut ep, "u007", "logon").await;
        complete(&mut ep, &c, vec![otp(), password("wrong")]).await;
    }
    let c = begin(&mut ep, "u007", "logon").await;
    let r = complete(&mut ep, &c, vec![otp(), password("u007-password")]).await;
    assert_eq!(r.reason, "locked", "{r:?}");
    gw.admin()
        .await
        .unlock_user(pb::UnlockUserRequest {
            user: "u007".into(),
        })
        .await
        .unwrap();

    // So it still lets the user in, once.
    let c = begin(&mut ep, "u007", "logon").await;
    let ok = complete(&mut ep, &c, vec![otp(), password("u007-password")]).await;
    assert!(allowed(&ok), "{ok:?}");
    let c = begin(&mut ep, "u007", "logon").await;
    let r = complete(&mut ep, &c, vec![otp(), password("u007-password")]).await;
    assert_eq!(failures(&r), failed("emergency_otp", "replayed"));
    gw.stop().await;
}

#[tokio::test]
async fn two_logons_racing_with_one_emergency_otp_let_one_in() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-01", "desktop", &["card"]).await;
    gw.register("lgwan-desk-17", "desktop", &["card"]).await;
    gw.set_secret("u007", "password", "u007-password").await;
    let code = gw.issue_emergency_otp("u007").await;
    let (mut ep1, mut ep2) = (
        gw.endpoint("lgwan-desk-01").await,
        gw.endpoint("lgwan-desk-17").await,
    );
    let proofs = || {
        vec![
            pb::proof::Proof::EmergencyOtp(code.clone()),
            password("u007-password"),
        ]
    };
    // Both challenges are issued while the code is unused, so both Completes may
    // find it unused when they check it: only the commit can tell them apart.
    let lost = one_of_two_wins(&mut ep1, &mut ep2, "u007", proofs).await;
    assert_eq!(failures(&lost), failed("emergency_otp", "replayed"));
    gw.stop().await;
}

#[tokio::test]
async fn a_directory_outage_locks_no_one() {
    // A directory nobody listens on: every bind fails to connect at once.
    let gw = TestGateway::start(Tier::Lgwan, |c| {
        c.directory = Some(sekisho_gateway::factors::password::DirectoryConfig {
            url: "ldap://127.0.0.1:1".into(),
            starttls: false,
            ca_file: None,
            bind_dn_template: "uid={user},ou=people,dc=example,dc=jp".into(),
            timeout_secs: 1,
            allow_cleartext: false,
        });
    })
    .await;
    gw.register("lgwan-desk-17", "desktop", &["card"]).await;
    let staff_card = gw.cards.issue("u007");
    gw.enroll_card("u007", &staff_card).await;
    let mut ep = gw.endpoint("lgwan-desk-17").await;

    // More attempts than the lockout allows (3), each failing only because the
    // directory cannot answer: denied, and nothing counted.
    for _ in 0..4 {
        let c = begin(&mut ep, "u007", "logon").await;
        let r = complete(
            &mut ep,
            &c,
            vec![card(&c, &staff_card), password("u007-pass")],
        )
        .await;
        assert_eq!(r.reason, "factor_failed");
        assert_eq!(failures(&r), failed("password", "unavailable"));
        assert_eq!(r.locked_until_unix_ms, None);
    }
    assert_eq!(failures_counted(&gw, "u007").await, 0);

    // A wrong card during the outage is the person's doing, and counts.
    let someone_else = gw.cards.issue("u999");
    let c = begin(&mut ep, "u007", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &someone_else), password("u007-pass")],
    )
    .await;
    assert_eq!(
        failures(&r),
        vec![
            ("card".to_string(), "card_not_enrolled".to_string()),
            ("password".to_string(), "unavailable".to_string()),
        ]
    );
    assert_eq!(failures_counted(&gw, "u007").await, 1);
    gw.stop().await;
}

/// The factors a telework device proved reach an LGWAN gateway only as the
/// endpoint's word until they are signed: refused unless the gateway is told to
/// trust its relay desktops.
#[tokio::test]
async fn upstream_factors_are_refused_unless_the_gateway_accepts_claims() {
    let relay_begin = |ep: &mut Endpoint| {
        let mut ep = ep.clone();
        async move {
            ep.begin(pb::BeginRequest {
                user: "u013".into(),
                action: "logon".into(),
                via: "lgwan_telework".into(),
                upstream: vec!["face".into(), "password".into()],
                ..Default::default()
            })
            .await
        }
    };
    let strict = TestGateway::start(Tier::Lgwan, |_| {}).await;
    strict.register("lgwan-vdi-01", "vdi", &["card"]).await;
    let mut ep = strict.endpoint("lgwan-vdi-01").await;
    let e = relay_begin(&mut ep).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("accept_upstream_claims"), "{e:?}");
    // Without upstream the same device and user get a plan.
    begin(&mut ep, "u013", "logon").await;

    let trusting =
        TestGateway::start(Tier::Lgwan, |c| c.telework.accept_upstream_claims = true).await;
    trusting.register("lgwan-vdi-01", "vdi", &["card"]).await;
    let mut ep = trusting.endpoint("lgwan-vdi-01").await;
    let c = relay_begin(&mut ep).await.expect("planned").into_inner();
    assert!(!c.challenge_id.is_empty(), "{c:?}");
}

/// A directory matches user ids without regard to case or surrounding spaces, so
/// every spelling of one id counts towards the same lock.
#[tokio::test]
async fn every_spelling_of_a_user_id_counts_towards_one_lock() {
    let gw = TestGateway::start(Tier::Internet, |c| c.lockout.lock_secs = 600).await;
    gw.register("net-desk-01", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    let good = gw.cards.issue("u036");
    gw.enroll_card("u036", &good).await;
    let mut ep = gw.endpoint("net-desk-01").await;

    for spelling in ["U036", " u036", "u036  "] {
        let c = begin(&mut ep, spelling, "logon").await;
        let r = complete(&mut ep, &c, vec![password("guess")]).await;
        assert!(!allowed(&r), "{spelling:?}: {r:?}");
        assert_eq!(r.locked_until_unix_ms, None, "{spelling:?}");
    }
    told_locked(&mut ep, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_hashed_at_an_old_cost_is_hashed_again_at_the_configured_one() {
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    gw.register("net-vdi-01", "vdi", &[]).await;
    gw.set_secret("u013", "password", "u013-password").await;
    let secret = gw.enroll_totp("u013").await;
    let old_cost = "$argon2id$v=19$m=8192,t=5,p=1$";
    let stored = |gw: &TestGateway| {
        let store = gw.running.gateway.store.clone();
        async move {
            store
                .secret("u013", Factor::Password)
                .await
                .unwrap()
                .unwrap()
        }
    };
    let before = stored(&gw).await;
    assert!(before.starts_with(old_cost), "{before}");

    // The administrator raises the cost; the gateway restarts.
    let TestGateway {
        engine,
        running,
        dir,
        cards,
        jpki,
        mut config,
    } = gw;
    running.shutdown().await;
    config.argon2.memory_kib = 9_216;
    let gw = TestGateway {
        running: TestGateway::launch(&config, dir.path()).await,
        engine,
        dir,
        cards,
        jpki,
        config,
    };
    let ep = gw.endpoint("net-vdi-01").await;
    let logon = |password: &'static str, step: i64| {
        let mut ep = ep.clone();
        let code = totp_now(&secret, step);
        async move {
            let c = begin(&mut ep, "u013", "logon").await;
            complete(
                &mut ep,
                &c,
                vec![self::password(password), pb::proof::Proof::Totp(code)],
            )
            .await
        }
    };

    // A wrong password changes nothing.
    assert_eq!(
        failures(&logon("u013-wrong", -1).await),
        failed("password", "mismatch")
    );
    assert_eq!(stored(&gw).await, before);
    // The right one, checked against the old hash, is stored anew at the new cost.
    assert!(allowed(&logon("u013-password", 0).await));
    let after = stored(&gw).await;
    assert!(
        after.starts_with("$argon2id$v=19$m=9216,t=5,p=1$"),
        "{after}"
    );
    // And the new hash is the same password.
    assert!(allowed(&logon("u013-password", 1).await));
    assert_eq!(stored(&gw).await, after, "hashed once");
    gw.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_removed_between_begin_and_complete_lets_no_one_in() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-22", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    let lost = gw.cards.issue("u036");
    gw.enroll_card("u036", &lost).await;
    let mut ep = gw.endpoint("lgwan-desk-22").await;

    // Begin reads the card; it is reported lost and removed before the Complete.
    let c = begin(&mut ep, "u036", "logon").await;
    let removed = gw
        .admin()
        .await
        .remove_credentials(pb::RemoveCredentialsRequest {
            user: "u036".into(),
            factor: "card".into(),
            card_fingerprint: sekisho_gateway::credentials::card_fingerprint(&lost.der),
        })
        .await
        .expect("removed")
        .into_inner()
        .removed;
    assert_eq!(removed, 1);
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &lost), password("u036-password")],
    )
    .await;
    assert!(!allowed(&r), "{r:?}");
    assert!(r.session_id.is_empty());
    assert_eq!(failures(&r), failed("card", "card_not_enrolled"));

    // A card enrolled throughout still lets the user in.
    let kept = gw.cards.issue("u036");
    gw.enroll_card("u036", &kept).await;
    let c = begin(&mut ep, "u036", "logon").await;
    let r = complete(
        &mut ep,
        &c,
        vec![card(&c, &kept), password("u036-password")],
    )
    .await;
    assert!(allowed(&r), "{r:?}");
    gw.engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_engine_files_under_another_tier_is_refused_by_name() {
    // net-desk-01 is an internet desktop at the engine; registered at an LGWAN
    // gateway by mistake, it must not be decided by the internet tier's policies.
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("net-desk-01", "desktop", &["card"]).await;
    let mut ep = gw.endpoint("net-desk-01").await;
    let e = ep
        .begin(pb::BeginRequest {
            user: "u036".into(),
            action: "logon".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains(
            "device 'net-desk-01' is filed under tier internet at the policy engine, not lgwan"
        ),
        "{}",
        e.message()
    );
    gw.engine.stop().await;
}
