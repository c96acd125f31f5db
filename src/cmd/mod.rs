//! One module per command family.

pub mod agent;
pub mod audit;
pub mod decide;
pub mod demo;
pub mod device;
pub mod directory;
pub mod engine;
pub mod enroll;
pub mod entities;
pub mod gateway;
pub mod policy;
pub mod report;
pub mod users;

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sekisho_policy_engine::entities::{parse_entities_json, Directory, EntityBatch};
use sekisho_policy_engine::import::check_id;

/// Reads an entities file and checks its references, naming the file in errors.
pub fn read_entities(path: &Path) -> Result<EntityBatch> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let batch = parse_entities_json(&path.display().to_string(), &text)?;
    Directory::from_batch(batch.clone()).with_context(|| format!("{}", path.display()))?;
    Ok(batch)
}

/// A gRPC refusal as one line naming who refused: `the gateway refused: device 'x'
/// is for tier 'lgwan', but this gateway serves 'internet' (InvalidArgument)`.
pub(crate) fn refused(who: &str, status: tonic::Status) -> anyhow::Error {
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    anyhow::anyhow!("the {who} refused: {message} ({:?})", status.code())
}

/// Parses a duration such as `90s`, `30m`, `2h`, `1h30m` or `1d` (units s, m, h, d;
/// a unit is required, so `2` is not silently two seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (e.g. 30m, 2h, 1d)".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => {
                return Err(format!(
                    "'{text}': unknown unit '{c}' (use s, m, h or d, e.g. 30m, 2h, 1d)"
                ))
            }
        };
        if digits.is_empty() {
            return Err(format!("'{text}': a number must come before '{c}'"));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("'{text}': number too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("'{text}': duration too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "'{text}': give a unit after {digits} (s, m, h or d, e.g. 30m, 2h, 1d)"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// The longest an emergency one-time password may live.
pub const OTP_MAX_TTL: Duration = Duration::from_secs(24 * 3_600);

/// `--ttl` of `emergency-otp issue`: a duration from one minute to 24 hours.
pub fn parse_otp_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(60) {
        return Err(format!("'{text}' is too short (at least 1m)"));
    }
    if ttl > OTP_MAX_TTL {
        return Err(format!("'{text}' is longer than the allowed 24h"));
    }
    Ok(ttl)
}

/// A user id given on the command line, checked here as the engine's entities and
/// the gateway check it, so that a mistyped one is refused before any connection
/// with the option named (by clap) rather than by a server's generic refusal.
pub fn parse_user_id(text: &str) -> Result<String, String> {
    parse_id("user", text)
}

/// A device id given on the command line; see [`parse_user_id`].
pub fn parse_device_id(text: &str) -> Result<String, String> {
    parse_id("device", text)
}

fn parse_id(what: &str, text: &str) -> Result<String, String> {
    check_id(text).map_err(|why| {
        format!("{what} id {why} (1 to 256 bytes, no control characters or surrounding spaces)")
    })?;
    Ok(text.to_string())
}

/// Reads one secret per label, one line each: the trailing newline (and a carriage
/// return before it) is removed, nothing else, so spaces inside a password survive.
/// Errors name the missing or empty secret by its label, never its value.
pub fn read_secret_lines<R: BufRead>(input: &mut R, labels: &[&str]) -> Result<Vec<String>> {
    let mut secrets = Vec::with_capacity(labels.len());
    for label in labels {
        let mut line = String::new();
        let n = input
            .read_line(&mut line)
            .with_context(|| format!("cannot read the {label} from standard input"))?;
        if n == 0 {
            if labels.len() > 1 {
                bail!(
                    "standard input ended before the {label} (expected {} lines: {})",
                    labels.len(),
                    labels.join(", then ")
                );
            }
            bail!("standard input ended before the {label} (expected one line)");
        }
        if line.ends_with('\n') {
            line.pop();
            if line.ends_with('\r') {
                line.pop();
            }
        }
        if line.is_empty() {
            bail!("the {label} read from standard input is empty");
        }
        secrets.push(line);
    }
    Ok(secrets)
}

/// Turns terminal echo off while alive (best effort, through `stty`), so that a
/// secret typed at a prompt is not shown.
struct EchoOff(bool);

impl EchoOff {
    fn new() -> EchoOff {
        let stty = |arg: &str| {
            std::process::Command::new("stty")
                .arg(arg)
                .stdin(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        EchoOff(stty("-echo"))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::process::Command::new("stty")
                .arg("echo")
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    }
}

/// Reads the secrets named by `labels` (`password`, `PIN`) from standard input: one
/// line each when it is a pipe or file; at a terminal, a prompt on stderr for each
/// (in the locale's language) with echo off.
pub fn read_secrets_from_stdin(labels: &[&str]) -> Result<Vec<String>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_secret_lines(&mut stdin.lock(), labels);
    }
    let locale = sekisho_gateway::messages::Locale::from_env();
    let mut secrets = Vec::with_capacity(labels.len());
    for label in labels {
        // The prompt is for the person at the keyboard: the catalogue's factor name
        // ("password" → パスワード); errors keep the English label.
        let prompt = sekisho_gateway::messages::factor_name(&label.to_lowercase(), locale);
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
        let echo = EchoOff::new();
        let read = read_secret_lines(&mut stdin.lock(), &[label]);
        drop(echo);
        eprintln!();
        secrets.extend(read?);
    }
    Ok(secrets)
}

/// Ctrl-C, or SIGTERM (a service manager stopping a daemon): either ends it with a
/// clean shutdown.
pub(crate) async fn stop_signal() -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot wait for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("90s"), Ok(90));
        assert_eq!(d("30m"), Ok(1_800));
        assert_eq!(d("2h"), Ok(7_200));
        assert_eq!(d("1h30m"), Ok(5_400));
        assert_eq!(d(" 1d "), Ok(86_400));
        assert_eq!(d("0m"), Ok(0));
        assert!(d("2").unwrap_err().contains("give a unit"));
        assert!(d("2x").unwrap_err().contains("unknown unit 'x'"));
        assert!(d("h").unwrap_err().contains("a number must come before"));
        assert!(d("").unwrap_err().contains("empty"));
        assert!(d("1h 30m").unwrap_err().contains("unknown unit ' '"));
        assert!(d("99999999999999999999d").is_err());
        assert!(d("999999999999999d").unwrap_err().contains("too large"));
    }

    #[test]
    fn otp_ttl_bounds() {
        assert_eq!(parse_otp_ttl("24h"), Ok(OTP_MAX_TTL));
        assert_eq!(parse_otp_ttl("1d"), Ok(OTP_MAX_TTL));
        assert!(parse_otp_ttl("1d1m").unwrap_err().contains("24h"));
        assert!(parse_otp_ttl("30s").unwrap_err().contains("too short"));
        assert_eq!(parse_otp_ttl("2h").map(|d| d.as_secs()), Ok(7_200));
    }

    #[test]
    fn ids_on_the_command_line() {
        assert_eq!(parse_user_id("u042"), Ok("u042".to_string()));
        assert!(parse_user_id("").unwrap_err().starts_with("user id empty"));
        let long = "d".repeat(257);
        assert!(parse_device_id(&long)
            .unwrap_err()
            .starts_with("device id 257 bytes long, at most 256"));
        assert!(parse_user_id(" u1").is_err());
    }

    fn read(input: &str, labels: &[&str]) -> Result<Vec<String>> {
        read_secret_lines(&mut std::io::Cursor::new(input.as_bytes()), labels)
    }

    #[test]
    fn secret_lines() {
        assert_eq!(read("s3cret\n", &["password"]).unwrap(), ["s3cret"]);
        // No trailing newline, CRLF, inner and outer spaces kept.
        assert_eq!(read("s3cret", &["password"]).unwrap(), ["s3cret"]);
        assert_eq!(read(" a b \r\n", &["password"]).unwrap(), [" a b "]);
        assert_eq!(
            read("pw one\n1234\nignored\n", &["password", "PIN"]).unwrap(),
            ["pw one", "1234"]
        );
    }

    #[test]
    fn secret_line_errors_name_the_secret_not_its_value() {
        let err = read("only-the-password\n", &["password", "PIN"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("before the PIN"), "{msg}");
        assert!(msg.contains("password, then PIN"), "{msg}");
        assert!(!msg.contains("only-the-password"), "{msg}");
        let err = read("", &["PIN"]).unwrap_err();
        assert!(format!("{err:#}").contains("expected one line"));
        let err = read("\nx\n", &["password", "PIN"]).unwrap_err();
        assert!(format!("{err:#}").contains("password read from standard input is empty"));
        let err = read("\r\n", &["PIN"]).unwrap_err();
        assert!(format!("{err:#}").contains("empty"));
    }
}
