//! `sekisho agent logon|unlock|lock|logoff`: the endpoint side of a logon, as a
//! credential provider or PAM module would do it, for scripts and checks.
//!
//! Output is made for scripts: on allow one line on stdout (the session id, then the
//! operator when it is not the user who asked); on deny the reasons on stderr in
//! the person's language (`LANG=ja_JP.UTF-8` for Japanese) with the stable codes in
//! brackets, and exit 1.

use anyhow::Result;
use sekisho_gateway::agent::{Agent, Attempt, BeginArgs, Capture, CardKey, Presented};
use sekisho_gateway::messages::{self, Locale};
use sekisho_proto::v1 as pb;

use crate::cli::{AgentAuthArgs, AgentSessionArgs};
use crate::client::DeviceConnArgs;
use crate::Outcome;

async fn connect(conn: &DeviceConnArgs) -> Result<Agent> {
    Ok(Agent::connect(&conn.url, &conn.tls(), conn.server_name.as_deref()).await?)
}

/// What the person presents, from files and standard input. Files are read first so
/// that a wrong path fails before anyone types a secret.
fn presented(args: &AgentAuthArgs) -> Result<Presented> {
    let mut p = Presented {
        totp: args.totp.clone(),
        emergency_otp: args.emergency_otp.clone(),
        ..Presented::default()
    };
    if let (Some(cert), Some(key)) = (&args.card_cert, &args.card_key) {
        p.card = Some(CardKey::from_files(cert, key)?);
    }
    if let Some(key) = &args.capture_key {
        if let Some(face) = &args.face {
            p.face = Some(Capture::from_files(face, key)?);
        }
        if let Some(vein) = &args.vein {
            p.vein = Some(Capture::from_files(vein, key)?);
        }
    }
    let mut labels = Vec::new();
    if args.password_stdin {
        labels.push("password");
    }
    if args.pin_stdin {
        labels.push("PIN");
    }
    if !labels.is_empty() {
        let mut secrets = super::read_secrets_from_stdin(&labels)?.into_iter();
        if args.password_stdin {
            p.password = secrets.next();
        }
        if args.pin_stdin {
            p.pin = secrets.next();
        }
    }
    Ok(p)
}

/// `agent logon` and `agent unlock`.
pub async fn authenticate(action: &str, args: &AgentAuthArgs) -> Result<Outcome> {
    let locale = Locale::from_env();
    let presented = presented(args)?;
    let mut agent = connect(&args.conn).await?;
    let begin = BeginArgs {
        user: args.user.clone(),
        action: action.to_string(),
        via: args.via.name().to_string(),
        upstream: args.upstream.iter().map(|f| f.name().to_string()).collect(),
    };
    let attempt = agent.authenticate(begin, &presented).await?;
    if attempt.allowed() {
        println!("{}", allowed_line(&args.user, &attempt.result));
        return Ok(Outcome::Ok);
    }
    eprint!("{}", denial(action, &attempt, locale));
    Ok(Outcome::No)
}

/// The session id, then the operator when it is not `user`.
fn allowed_line(user: &str, result: &pb::LogonResult) -> String {
    if result.operator.is_empty() || result.operator == user {
        result.session_id.clone()
    } else {
        format!("{} {}", result.session_id, result.operator)
    }
}

/// A denial for the person at the terminal: what was refused and why, each failed
/// factor, the end of a lockout, and, when the factors were not enough, what this
/// device accepts. Codes stay in brackets for support staff.
fn denial(action: &str, attempt: &Attempt, locale: Locale) -> String {
    let result = &attempt.result;
    let reason = if result.reason.is_empty() {
        "error"
    } else {
        result.reason.as_str()
    };
    let mut out = messages::denial_heading(action, reason, locale) + "\n";
    for f in result.factors.iter().filter(|f| !f.ok) {
        out += &format!(
            "  {} [{}]\n",
            messages::factor_failure_line(&f.factor, &f.reason, locale),
            f.reason
        );
    }
    if let Some(ms) = result.locked_until_unix_ms {
        out += &format!(
            "  {}\n",
            messages::locked_until(&messages::local_time(ms), locale)
        );
    }
    if reason == "insufficient_factors" {
        let challenge = &attempt.challenge;
        if !challenge.options.is_empty() {
            out += &format!("  {}\n", messages::accepted_here(locale));
            for o in &challenge.options {
                out += &format!("    - {}\n", messages::factor_set(&o.factors, locale));
            }
        }
        if !challenge.unavailable.is_empty() {
            out += &format!("  {}\n", messages::unavailable_here(locale));
            for u in &challenge.unavailable {
                let missing = if u.missing.is_empty() {
                    &u.factors
                } else {
                    &u.missing
                };
                out += &format!(
                    "    - {} [{}]\n",
                    messages::unavailable_line(&u.factors, missing, &u.why, locale),
                    u.why
                );
            }
        }
    }
    out
}

/// `agent lock` and `agent logoff`: prints the session id and its new state.
pub async fn session(action: &str, args: &AgentSessionArgs) -> Result<Outcome> {
    let mut agent = connect(&args.conn).await?;
    let state = match action {
        "lock" => agent.lock(&args.session).await?,
        _ => agent.logoff(&args.session).await?,
    };
    println!("{} {}", state.session_id, state.state);
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(result: pb::LogonResult) -> Attempt {
        Attempt {
            challenge: pb::Challenge {
                options: vec![pb::FactorSet {
                    factors: vec!["card".into(), "password".into()],
                }],
                unavailable: vec![pb::UnavailableSet {
                    factors: vec!["face".into(), "password".into()],
                    missing: vec!["face".into()],
                    why: "no_capability".into(),
                }],
                ..pb::Challenge::default()
            },
            chosen: None,
            result,
        }
    }

    #[test]
    fn allowed_line_names_a_different_operator() {
        let mut r = pb::LogonResult {
            session_id: "s1".into(),
            operator: "u1".into(),
            ..pb::LogonResult::default()
        };
        assert_eq!(allowed_line("u1", &r), "s1");
        r.operator = "u2".into();
        assert_eq!(allowed_line("u1", &r), "s1 u2");
        r.operator.clear();
        assert_eq!(allowed_line("u1", &r), "s1");
    }

    #[test]
    fn denial_lists_failed_factors_and_lockout() {
        let a = attempt(pb::LogonResult {
            decision: pb::Decision::Deny as i32,
            reason: "factor_failed".into(),
            factors: vec![
                pb::FactorResult {
                    factor: "card".into(),
                    ok: false,
                    reason: "certificate_expired".into(),
                },
                pb::FactorResult {
                    factor: "password".into(),
                    ok: true,
                    reason: String::new(),
                },
            ],
            locked_until_unix_ms: Some(1_700_000_000_000),
            ..pb::LogonResult::default()
        });
        let ja = denial("logon", &a, Locale::Ja);
        assert!(ja.starts_with("ログオンできませんでした。"), "{ja}");
        assert!(ja.contains("[factor_failed]"));
        assert!(ja.contains(
            "ICカード：ICカードの証明書の有効期限が切れています。 [certificate_expired]"
        ));
        assert!(
            !ja.contains("パスワード："),
            "an accepted factor is not a failure: {ja}"
        );
        assert!(ja.contains("までロックされています。"));
        // Options are shown only when the factors were not enough.
        assert!(!ja.contains("いずれかの組み合わせ"));
        let en = denial("unlock", &a, Locale::En);
        assert!(en.starts_with("Unlock refused."), "{en}");
        assert!(en.contains("IC card: The card's certificate has expired"));
        assert!(en.contains("Locked until "));
    }

    #[test]
    fn insufficient_factors_shows_what_this_device_accepts() {
        let a = attempt(pb::LogonResult {
            decision: pb::Decision::Deny as i32,
            reason: "insufficient_factors".into(),
            ..pb::LogonResult::default()
        });
        let en = denial("logon", &a, Locale::En);
        assert!(
            en.contains("On this device you can sign in with one of:"),
            "{en}"
        );
        assert!(en.contains("    - IC card + Password\n"), "{en}");
        assert!(
            en.contains(
                "    - Face + Password (Face: This device has no reader for it.) [no_capability]"
            ),
            "{en}"
        );
        let ja = denial("logon", &a, Locale::Ja);
        assert!(ja.contains("    - ICカード + パスワード\n"), "{ja}");
        // A missing reason is shown as the generic error, never as an empty line.
        let a = attempt(pb::LogonResult::default());
        assert!(denial("logon", &a, Locale::En).contains("[error]"));
    }
}
