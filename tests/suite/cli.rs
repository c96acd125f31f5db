//! The `sekisho` binary as an administrator uses it: validate, lint, decide.

use crate::common;

use serde_json::{json, Value};

fn sekisho(args: &[&str]) -> (i32, String, String) {
    common::sekisho(args, "")
}

fn decide(extra: &[&str]) -> Value {
    let mut args = vec![
        "decide",
        "--policies",
        common::POLICIES,
        "--entities",
        common::ENTITIES,
        "--hour",
        "10",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = sekisho(&args);
    let mut v: Value = serde_json::from_str(&out).expect("one JSON object");
    // 1 is a deny, as for `agent`; a plan or an allow is 0.
    let denied = v["decision"] == "deny";
    assert_eq!(code, i32::from(denied), "{extra:?}: {err}");
    assert!(v["policy_version"].as_str().unwrap().starts_with("sha256:"));
    v.as_object_mut().unwrap().remove("policy_version");
    v
}

fn plan(user: &str, device: &str, action: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--user", user, "--device", device, "--action", action];
    args.extend_from_slice(extra);
    decide(&args)
}

fn options(v: Value) -> Value {
    json!({"decision": "plan", "options": v, "unavailable": []})
}

#[test]
fn reference_policies_are_valid_and_lint_clean_of_errors() {
    let (code, _, err) = sekisho(&["policy", "validate", common::POLICIES]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("24 policies valid"), "{err}");

    let (code, out, _) = sekisho(&[
        "policy",
        "lint",
        common::POLICIES,
        "--entities",
        common::ENTITIES,
        "--json",
    ]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["errors"], 0);
    // The example city has enrollment gaps on purpose; the lint names who is stuck.
    let msgs: Vec<&str> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.contains("`logon` on lgwan desktop devices") && m.ends_with("u008, u025")),
        "{msgs:#?}"
    );
}

#[test]
fn plans_for_every_reference_tier() {
    // LGWAN desktop: card + password; unlock also accepts face + password.
    assert_eq!(
        plan("u023", "lgwan-desk-17", "logon", &[]),
        options(json!([["card", "password"]]))
    );
    assert_eq!(
        plan("u023", "lgwan-desk-17", "unlock", &[]),
        options(json!([["card", "password"], ["face", "password"]]))
    );
    // A My Number card is a card.
    assert_eq!(
        plan("u019", "lgwan-desk-01", "logon", &[]),
        options(json!([["card", "password"]]))
    );
    // LGWAN mobile PC: face + password.
    assert_eq!(
        plan("u020", "lgwan-mobile-01", "logon", &[]),
        options(json!([["face", "password"]]))
    );
    // My Number desktop with a vein reader and a camera: both ways, ordered by name.
    assert_eq!(
        plan("u001", "mn-desk-01", "logon", &[]),
        options(json!([["card", "vein"], ["face", "password"]]))
    );
    // Without a camera, face + password is unavailable because of the device.
    assert_eq!(
        plan("u001", "mn-desk-02", "logon", &[]),
        json!({"decision": "plan", "options": [["card", "vein"]],
               "unavailable": [{"factors": ["face", "password"], "missing": ["face"], "why": "no_capability"}]})
    );
    // My Number counter terminal: face + PIN, for operators only.
    assert_eq!(
        plan("u002", "mn-counter-01", "logon", &[]),
        options(json!([["face", "pin"]]))
    );
    assert_eq!(
        plan("u011", "mn-counter-01", "logon", &[]),
        json!({"decision": "plan", "options": [],
               "unavailable": [{"factors": ["face", "pin"], "missing": ["face"], "why": "not_enrolled"}]})
    );
    assert_eq!(
        plan("u007", "mn-counter-01", "logon", &[]),
        options(json!([]))
    );
    // Internet: password + TOTP, or card + password on desktops (same size: by name).
    assert_eq!(
        plan("u013", "net-desk-01", "logon", &[]),
        options(json!([["card", "password"], ["password", "totp"]]))
    );
    // Telework device: face + password, teleworkers only.
    assert_eq!(
        plan("u031", "tw-pc-01", "logon", &[]),
        options(json!([["face", "password"]]))
    );
    assert_eq!(plan("u033", "tw-pc-01", "logon", &[]), options(json!([])));
    // LGWAN reached through the telework relay needs the upstream proof.
    assert_eq!(
        plan(
            "u031",
            "lgwan-desk-30",
            "logon",
            &["--via", "lgwan_telework", "--upstream", "face,password"]
        ),
        options(json!([["card", "password"], ["face", "password"]]))
    );
    assert_eq!(
        plan(
            "u031",
            "lgwan-desk-30",
            "logon",
            &["--via", "lgwan_telework"]
        ),
        options(json!([]))
    );
    // Admin elevation: two factors.
    assert_eq!(
        plan("u031", "lgwan-desk-30", "elevate", &[]),
        options(json!([["card", "password"]]))
    );
    // A forgotten card: the emergency OTP path appears only while one is active.
    let unavailable =
        json!([{"factors": ["card", "password"], "missing": ["card"], "why": "not_enrolled"}]);
    assert_eq!(
        plan("u025", "lgwan-desk-01", "logon", &[]),
        json!({"decision": "plan", "options": [], "unavailable": unavailable})
    );
    assert_eq!(
        plan("u025", "lgwan-desk-01", "logon", &["--emergency-otp"]),
        json!({"decision": "plan", "options": [["emergency_otp", "password"]], "unavailable": unavailable})
    );
}

#[test]
fn authorize_names_the_deciding_policies() {
    let d = |extra: &[&str]| plan("u031", "lgwan-desk-30", "elevate", extra);
    assert_eq!(
        d(&["--factors", "card,password"]),
        json!({"decision": "allow", "policy_ids": ["admin-lgwan-elevate"]})
    );
    assert_eq!(
        d(&["--factors", "password"]),
        json!({"decision": "deny", "policy_ids": ["admin-elevate-two-factors"]})
    );
    assert_eq!(
        decide(&[
            "--user",
            "u023",
            "--device",
            "lgwan-desk-17",
            "--action",
            "logon",
            "--factors",
            "password"
        ]),
        json!({"decision": "deny", "policy_ids": []})
    );
    assert_eq!(
        decide(&[
            "--user",
            "u019",
            "--device",
            "lgwan-desk-01",
            "--action",
            "logon",
            "--factors",
            "mynumber_card,password"
        ]),
        json!({"decision": "allow", "policy_ids": ["lgwan-desktop-logon"]})
    );
}

#[test]
fn a_bad_log_filter_is_refused_not_replaced() {
    let (code, _, err) = sekisho(&[
        "--log",
        "sekisho=[[[",
        "policy",
        "validate",
        common::POLICIES,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: --log / SEKISHO_LOG 'sekisho=[[['"),
        "{err}"
    );
}

#[test]
fn bad_input_is_exit_2_with_one_line_naming_it() {
    let base = [
        "decide",
        "--policies",
        common::POLICIES,
        "--entities",
        common::ENTITIES,
    ];
    for (extra, expected) in [
        (
            vec![
                "--user",
                "u999",
                "--device",
                "lgwan-desk-17",
                "--action",
                "logon",
            ],
            "unknown user 'u999'",
        ),
        (
            vec!["--user", "u001", "--device", "desk-99", "--action", "logon"],
            "unknown device 'desk-99'",
        ),
        (
            vec![
                "--user",
                "u001",
                "--device",
                "lgwan-desk-17",
                "--action",
                "login",
            ],
            "unknown action 'login'",
        ),
        (
            vec![
                "--user",
                "u001",
                "--device",
                "lgwan-desk-17",
                "--action",
                "logon",
                "--factors",
                "card,iris",
            ],
            "unknown factor 'iris'",
        ),
        (
            vec![
                "--user",
                "u001",
                "--device",
                "lgwan-desk-17",
                "--action",
                "logon",
                "--via",
                "vpn",
            ],
            "unknown via 'vpn'",
        ),
        (
            vec![
                "--user",
                "u001",
                "--device",
                "lgwan-desk-17",
                "--action",
                "logon",
                "--hour",
                "24",
            ],
            "hour 24 is out of range",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        let (code, out, err) = sekisho(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(out.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{err}"
        );
    }
}

#[test]
fn invalid_policies_are_reported_at_file_line_col() {
    let dir = common::policy_copy();
    let lgwan = dir.path().join("lgwan.cedar");
    let text = std::fs::read_to_string(&lgwan).unwrap();
    // A typo in an attribute: strict validation must point at it.
    let broken = text.replacen("resource.kind", "resource.knd", 1);
    std::fs::write(&lgwan, &broken).unwrap();
    let offset = broken.find("resource.knd").unwrap();
    let line = broken[..offset].matches('\n').count() + 1;
    let (code, out, _) = sekisho(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("lgwan.cedar:{line}:")), "{out}");
    assert!(
        out.contains("error[validation]") && out.contains("knd"),
        "{out}"
    );

    // A syntax error in another file is reported too, each with its position.
    std::fs::write(
        dir.path().join("zz.cedar"),
        "\n\npermit(principal action, resource);",
    )
    .unwrap();
    let (code, out, _) = sekisho(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.lines()
            .any(|l| l.starts_with("zz.cedar:3:18: error[parse]")),
        "{out}"
    );
}

#[test]
fn lint_flags_risky_policies() {
    let dir = common::policy_copy();
    std::fs::write(
        dir.path().join("risky.cedar"),
        "@id(\"admin-password-only\")\n\
         permit(principal in Sekisho::Group::\"it-admins\", action == Sekisho::Action::\"elevate\", resource in Sekisho::Tier::\"internet\")\n\
         when { context.factors.contains(\"password\") };\n\
         @id(\"no-totp-at-night\")\n\
         forbid(principal, action == Sekisho::Action::\"logon\", resource in Sekisho::Tier::\"internet\")\n\
         when { context.factors.contains(\"totp\") && context.hour > 22 };\n",
    )
    .unwrap();
    let (code, out, _) = sekisho(&[
        "policy",
        "lint",
        dir.path().to_str().unwrap(),
        "--entities",
        common::ENTITIES,
        "--json",
    ]);
    let report: Value = serde_json::from_str(&out).unwrap();
    let find = |code: &str| {
        report["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["code"] == code)
            .cloned()
    };
    let nm = find("non-monotone").expect("non-monotone flagged");
    assert_eq!(nm["policy_ids"], json!(["no-totp-at-night"]));
    assert_eq!(nm["location"]["file"], "risky.cedar");
    assert_eq!(nm["location"]["line"], 4);
    // The two-factor forbid of admin.cedar still holds, so elevate stays two-factor
    // and the lint does not cry wolf; remove it and the lint must fire.
    assert!(find("single-factor-elevate").is_none(), "{out}");
    assert_eq!(code, 0);
    let admin = dir.path().join("admin.cedar");
    let text = std::fs::read_to_string(&admin).unwrap();
    let start = text.find("@id(\"admin-elevate-two-factors\")").unwrap();
    let end = start + text[start..].find("};").unwrap() + 2;
    std::fs::write(&admin, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let (code, out, _) = sekisho(&[
        "policy",
        "lint",
        dir.path().to_str().unwrap(),
        "--entities",
        common::ENTITIES,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("risky.cedar:1:1: error[single-factor-elevate]")),
        "{out}"
    );
}

#[test]
fn help_reads_well() {
    let (code, out, _) = sekisho(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["demo", "engine", "policy", "entities", "decide"] {
        assert!(out.contains(cmd), "{out}");
    }
    let (code, out, _) = sekisho(&["decide", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--emergency-otp") && out.contains("lgwan_telework"),
        "{out}"
    );
}

/// Every argument and option of every command says what it is for in `--help`: one
/// added without a doc comment fails here, not in front of an administrator.
#[test]
fn every_argument_has_help_text() {
    use clap::CommandFactory;

    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        let path = format!("{path} {}", cmd.get_name());
        if cmd.get_about().is_none() {
            missing.push(format!("{path} (the command itself)"));
        }
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().or(arg.get_long_help());
            if help.is_none_or(|h| h.to_string().trim().is_empty()) {
                let name = arg.get_long().map_or(id.to_string(), |l| format!("--{l}"));
                missing.push(format!("{path} {name}"));
            }
        }
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &path, missing);
        }
    }

    let mut cli = sekisho::cli::Cli::command();
    cli.build();
    let mut missing = Vec::new();
    walk(&cli, "", &mut missing);
    assert!(missing.is_empty(), "without help text: {missing:#?}");
}

/// `report operators` answers "nobody" for a terminal that exists but saw no one,
/// and refuses an id that neither the engine's entities nor the trail know, rather
/// than answering "nobody" for a typo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_report_refuses_an_unknown_device() {
    let engine = common::TestEngine::start(common::Backend::Sqlite, "operators").await;
    engine.load_reference().await;
    let report = |device: &str| {
        common::sekisho(
            &[
                "report",
                "operators",
                "--device",
                device,
                "--at",
                "2026-11-22 14:02",
                "--store",
                &engine.config.store,
                "--tenant",
                &engine.config.tenant,
            ],
            "",
        )
    };
    let (code, out, err) = report("lgwan-desk-17");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Nobody was logged on"), "{out}");
    let (code, out, err) = report("lgwan-desk-71");
    assert_eq!(code, 2, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("error: unknown device 'lgwan-desk-71'") && err.contains("entities"),
        "{err}"
    );
    engine.stop().await;
}
