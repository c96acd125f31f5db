//! The gateway commands of the `sekisho` binary against a real gateway: enrollment
//! through the admin CLI, then `sekisho agent` logons with its exit codes.

use crate::common;

use common::gateway::{now_secs, TestGateway};
use common::sekisho;
use sekisho_gateway::factors::totp::{code_at, TotpParams};
use sekisho_policy_engine::Tier;

// The binary runs synchronously, so the in-process gateway needs its own worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_and_log_on_with_the_agent_command() {
    let gw = TestGateway::start(Tier::Internet, |_| {}).await;
    gw.register("net-vdi-01", "vdi", &[]).await;
    let url = gw.url();
    let p = gw.pki();
    let (ca, admin_cert, admin_key) = (
        p.ca().display().to_string(),
        p.admin_cert().display().to_string(),
        p.admin_key().display().to_string(),
    );
    let admin = |extra: &[&str], stdin: &str| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([
            "--gateway",
            &url,
            "--ca",
            &ca,
            "--cert",
            &admin_cert,
            "--key",
            &admin_key,
        ]);
        sekisho(&args, stdin)
    };

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
