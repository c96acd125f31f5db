//! The gateway commands of the `sekisho` binary against a real gateway: enrollment
//! through the admin CLI, then `sekisho agent` logons with its exit codes.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::gateway::{now_secs, TestGateway};
use common::{sekisho, Backend, TestEngine};
use sekisho_gateway::factors::totp::{code_at, TotpParams};
use sekisho_policy_engine::Tier;
use sekisho_proto::v1 as pb;

// The binary runs synchronously, so the in-process gateway needs its own worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_and_log_on_with_the_agent_command() {
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    gw.register("net-vdi-01", "vdi", &[]).await;
    let url = gw.url();
    let ca = gw.pki().ca().display().to_string();
    let admin = |extra: &[&str], stdin: &str| gw.admin_cli(extra, stdin);

    let (code, _, err) = admin(&["enroll", "password", "u013"], "u013-password\n");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = admin(&["enroll", "totp", "u013"], "");
    assert_eq!(code, 0, "{err}");
    let uri = out
        .lines()
        .find(|l| l.starts_with("otpauth://totp/"))
        .expect("the otpauth URI is printed");
    assert!(uri.contains("issuer=sekisho"), "{uri}");
    assert!(
        out.contains('▀') || out.contains('▄') || out.contains('█'),
        "a QR code is drawn"
    );
    let secret = uri
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("secret="))
        .expect("secret in the URI");
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .expect("base32");
    let (code, out, err) = admin(&["enroll", "show", "u013"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("totp") && out.contains("password"), "{out}");

    let device = gw.device_tls("net-vdi-01");
    let (dev_cert, dev_key) = (
        device.cert.display().to_string(),
        device.key.display().to_string(),
    );
    let agent = |extra: &[&str], stdin: &str| {
        let mut args = vec!["agent"];
        args.extend_from_slice(extra);
        args.extend([
            "--gateway",
            &url,
            "--ca",
            &ca,
            "--device-cert",
            &dev_cert,
            "--device-key",
            &dev_key,
        ]);
        sekisho(&args, stdin)
    };
    let code_now = code_at(&secret, &TotpParams::default(), now_secs() / 30);
    let (code, out, err) = agent(
        &[
            "logon",
            "--user",
            "u013",
            "--password-stdin",
            "--totp",
            &code_now,
        ],
        "u013-password\n",
    );
    assert_eq!(code, 0, "{err}");
    let session = out.trim().to_string();
    assert_eq!(session.len(), 44, "one line with the session id: {out}");

    // The same code again is refused: exit 1, the reason on stderr.
    let (code, _, err) = agent(
        &[
            "logon",
            "--user",
            "u013",
            "--password-stdin",
            "--totp",
            &code_now,
        ],
        "u013-password\n",
    );
    assert_eq!(code, 1);
    assert!(err.contains("replayed"), "{err}");
    assert!(!err.contains("u013-password"), "no secret in the output");

    let (code, out, err) = agent(&["lock", "--session", &session], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("locked"), "{out}");

    // A missing file is bad input: exit 2 with one line naming it.
    let (code, _, err) = agent(
        &[
            "logon",
            "--user",
            "u013",
            "--card-cert",
            "/nonexistent.pem",
            "--card-key",
            "/nonexistent-key.pem",
        ],
        "",
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent"), "{err}");

    let (code, _, err) = admin(&["emergency-otp", "issue", "u013", "--ttl", "3d"], "");
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = admin(&["emergency-otp", "issue", "u013", "--ttl", "2h"], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines().next().is_some_and(|l| l.trim().len() == 14),
        "{out}"
    );
    let (code, out, err) = admin(&["unlock-user", "u013"], "");
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    gw.stop().await;
}

/// A lost card, a user who left, a stolen terminal: each removed through the admin
/// CLI takes effect at the next logon, and is journaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_devices_are_removed_through_the_admin_command() {
    let gw = TestGateway::start(Tier::Lgwan, |_| {}).await;
    gw.register("lgwan-desk-22", "desktop", &["card"]).await;
    gw.set_secret("u036", "password", "u036-password").await;
    let lost = gw.cards.issue("u036");
    let kept = gw.cards.issue("u036");
    gw.enroll_card("u036", &lost).await;
    gw.enroll_card("u036", &kept).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let lost_file = dir.path().join("lost.der");
    std::fs::write(&lost_file, &lost.der).expect("card file");
    let lost_path = lost_file.to_str().expect("utf-8 path");

    // Nothing named: clap refuses before anything is sent.
    let (code, _, err) = gw.admin_cli(&["enroll", "remove", "u036"], "");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = gw.admin_cli(
        &[
            "enroll",
            "remove",
            "u036",
            "--factor",
            "pin",
            "--card-cert",
            lost_path,
        ],
        "",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--card-cert") && err.contains("not --factor pin"),
        "{err}"
    );

    let (code, out, err) = gw.admin_cli(
        &[
            "enroll",
            "remove",
            "u036",
            "--factor",
            "card",
            "--card-cert",
            lost_path,
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("removed the card in") && out.contains("(1 stored)"),
        "{out}"
    );
    assert!(out.contains("card") && out.contains("password"), "{out}");

    let mut ep = gw.endpoint("lgwan-desk-22").await;
    let c = begin(&mut ep, "u036").await;
    let r = complete(&mut ep, &c, &lost, "u036-password").await;
    assert_eq!(r.decision, pb::Decision::Deny as i32);
    assert!(
        r.factors
            .iter()
            .any(|f| f.factor == "card" && f.reason == "card_not_enrolled"),
        "{r:?}"
    );
    let c = begin(&mut ep, "u036").await;
    let r = complete(&mut ep, &c, &kept, "u036-password").await;
    assert_eq!(r.decision, pb::Decision::Allow as i32, "{r:?}");

    // The stolen terminal: refused from now on, its session ended.
    let (code, out, err) = gw.admin_cli(&["device", "deregister", "lgwan-desk-22"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("its open session was ended"), "{out}");
    let refused = ep
        .begin(pb::BeginRequest {
            user: "u036".into(),
            action: "logon".into(),
            ..Default::default()
        })
        .await
        .expect_err("a deregistered device is refused");
    assert!(refused.message().contains("lgwan-desk-22"), "{refused:?}");
    let (code, _, err) = gw.admin_cli(&["device", "deregister", "lgwan-desk-22"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not registered"), "{err}");

    // Someone who left: everything goes; again, there is nothing left to remove.
    let (code, out, err) = gw.admin_cli(&["enroll", "remove", "u036", "--all"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("has enrolled: (nothing)"), "{out}");
    let (code, _, err) = gw.admin_cli(&["enroll", "remove", "u036", "--all"], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing to remove"), "{err}");

    let actions: Vec<String> = gw
        .journal()
        .await
        .into_iter()
        .map(|e| e.body.action)
        .collect();
    for action in ["credential_remove", "device_deregister"] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    gw.stop().await;
}

/// Values the gateway would refuse are refused by the command itself, before it
/// connects (the gateway address here has nothing listening), naming the option and
/// what is allowed; exit 2 as for any usage error.
#[test]
fn agent_and_enroll_remove_values_are_checked_before_connecting() {
    let long = "u".repeat(257);
    let nowhere = ["--gateway", "https://127.0.0.1:1"];
    let agent = |extra: &[&str]| {
        let mut args = vec![
            "agent",
            "logon",
            "--device-cert",
            "/nonexistent/d.pem",
            "--device-key",
            "/nonexistent/d-key.pem",
        ];
        args.extend_from_slice(extra);
        args.extend(nowhere);
        sekisho(&args, "")
    };
    let remove = |extra: &[&str]| {
        let mut args = vec!["enroll", "remove"];
        args.extend_from_slice(extra);
        args.extend(nowhere);
        sekisho(&args, "")
    };
    for (run, expected) in [
        (agent(&["--user", ""]), vec!["--user <ID>", "user id empty"]),
        (
            agent(&["--user", &long]),
            vec!["--user <ID>", "user id 257 bytes long, at most 256"],
        ),
        (
            agent(&["--user", "u013", "--via", "vpn"]),
            vec!["--via <V>", "unknown via 'vpn'", "lgwan_telework"],
        ),
        (
            agent(&["--user", "u013", "--upstream", "face,iris"]),
            vec!["--upstream", "unknown factor 'iris'", "mynumber_card"],
        ),
        (remove(&["", "--all"]), vec!["<USER>", "user id empty"]),
        (
            remove(&["u036", "--factor", "fingerprint"]),
            vec![
                "--factor <FACTOR>",
                "unknown factor 'fingerprint'",
                "emergency_otp",
            ],
        ),
        (
            remove(&[
                "u036",
                "--factor",
                "pin",
                "--card-cert",
                "/nonexistent/lost.pem",
            ]),
            vec![
                "--card-cert",
                "--factor card or --factor mynumber_card",
                "not --factor pin",
            ],
        ),
        (
            remove(&["u036", "--all", "--card-cert", "/nonexistent/lost.pem"]),
            vec!["--card-cert", "not --all"],
        ),
        (
            sekisho(
                &[
                    "device",
                    "deregister",
                    &"d".repeat(300),
                    nowhere[0],
                    nowhere[1],
                ],
                "",
            ),
            vec!["<DEVICE>", "device id 300 bytes long, at most 256"],
        ),
    ] {
        let (code, out, err) = run;
        assert_eq!(code, 2, "{err}");
        assert!(out.is_empty(), "{out}");
        for e in expected {
            assert!(err.contains(e), "{e:?} not in: {err}");
        }
        assert!(
            !err.contains("cannot connect") && !err.contains("/nonexistent"),
            "checked only after connecting or reading files: {err}"
        );
    }
}

/// Runs `sekisho gateway serve ARGS` until it exits (its exit code) or its stderr
/// holds `needle` (then it is stopped: `None`), and returns that and its stderr. A
/// gateway that does neither within a minute fails the test instead of hanging it.
fn serve(args: &[&str], needle: &str, dir: &Path) -> (Option<i32>, String) {
    let log = dir.join("serve.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sekisho"))
        .args(["gateway", "serve"])
        .args(args)
        .env("LANG", "C")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start the gateway binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ended = child.try_wait().expect("the gateway process");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(status) = ended {
            return (Some(status.code().unwrap_or(-1)), text);
        }
        if text.contains(needle) {
            child.kill().expect("stop the gateway");
            let _ = child.wait();
            return (None, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway neither ended nor said {needle:?} within a minute: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A gateway started where the engine's development CA is not must not make a
/// second CA that the engine cannot trust: refused, naming where it looked and how
/// to point it at the engine's, when that CA cannot be the engine's; created with a
/// warning only for a loopback engine that is not running yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serve_does_not_silently_make_a_ca_the_engine_will_not_trust() {
    let engine = TestEngine::start(Backend::Sqlite, "pki").await;
    let engine_pki = engine.running.pki.as_ref().expect("dev PKI").dir.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    let write_config = |engine_url: &str| {
        let text = format!(
            "tier = \"lgwan\"\nlisten = \"127.0.0.1:0\"\n[engine]\nurl = \"{engine_url}\"\n"
        );
        std::fs::write(&config, text).expect("config");
    };
    let config_arg = config.to_str().expect("utf-8 path");
    let ca = dir.path().join("sekisho-tls").join("ca.pem");
    let nothing_made = || {
        assert!(!dir.path().join("sekisho-tls").exists(), "a PKI was made");
        assert!(
            !dir.path().join("gateway-lgwan.db").exists(),
            "a store was made"
        );
    };

    // The engine runs on this machine with its own CA.
    write_config(&engine.url());
    let (code, err) = serve(&["--config", config_arg], "listening on", dir.path());
    assert_eq!(code, Some(2), "{err}");
    for expected in [
        &format!("no development CA at {}", ca.display()),
        "an engine already answers at",
        "--pki-dir",
        "tls.generate_dir",
        "engine.ca, engine.cert and engine.key",
    ] {
        assert!(err.contains(expected), "{expected:?} not in: {err}");
    }
    nothing_made();

    // An engine on another host is not asked: its CA cannot be here.
    write_config("https://192.0.2.1:7443");
    let (code, err) = serve(&["--config", config_arg], "listening on", dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the engine at https://192.0.2.1:7443 is on another host"),
        "{err}"
    );
    nothing_made();

    // Pointed at the engine's PKI, it starts and makes no CA of its own.
    write_config(&engine.url());
    let pki_arg = engine_pki.to_str().expect("utf-8 path");
    let (code, err) = serve(
        &["--config", config_arg, "--pki-dir", pki_arg],
        "listening on",
        dir.path(),
    );
    assert_eq!(code, None, "{err}");
    assert!(
        !err.contains("warning: there was no development CA"),
        "{err}"
    );
    assert!(!ca.exists());

    // A loopback engine that is not running yet may adopt a new CA: made, and said.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    write_config(&format!("https://127.0.0.1:{port}"));
    let (code, err) = serve(&["--config", config_arg], "will not trust", dir.path());
    assert_eq!(code, None, "{err}");
    assert!(
        err.contains("there was no development CA in") && err.contains("a NEW one was created"),
        "{err}"
    );
    assert!(ca.exists());
    engine.stop().await;
}

async fn begin(
    ep: &mut pb::logon_client::LogonClient<tonic::transport::Channel>,
    user: &str,
) -> pb::Challenge {
    ep.begin(pb::BeginRequest {
        user: user.into(),
        action: "logon".into(),
        ..Default::default()
    })
    .await
    .expect("begin")
    .into_inner()
}

async fn complete(
    ep: &mut pb::logon_client::LogonClient<tonic::transport::Channel>,
    c: &pb::Challenge,
    card: &common::gateway::TestCard,
    password: &str,
) -> pb::LogonResult {
    let nonce = c.nonces.get("card").expect("a card nonce");
    let signature = sekisho_gateway::factors::card::sign_nonce(&card.key_pem, nonce).expect("sign");
    ep.complete(pb::CompleteRequest {
        challenge_id: c.challenge_id.clone(),
        proofs: vec![
            pb::Proof {
                proof: Some(pb::proof::Proof::Card(pb::CardProof {
                    certificate: card.der.clone(),
                    signature,
                })),
            },
            pb::Proof {
                proof: Some(pb::proof::Proof::Password(password.into())),
            },
        ],
        ..Default::default()
    })
    .await
    .expect("complete")
    .into_inner()
}
