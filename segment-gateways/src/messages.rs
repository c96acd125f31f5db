//! The message catalogue: every sentence a person at an endpoint (or an administrator
//! at the CLI) reads about a logon, in Japanese and English, chosen by locale.
//!
//! Codes stay stable English identifiers (`factor_failed`, `certificate_expired`, …):
//! they are what logs, the audit trail and the wire carry, and what support staff
//! search for. Only their rendering for a person comes from here. An unknown code (a
//! newer gateway than this catalogue) falls back to a generic sentence that still
//! names the code, so nothing is ever shown as an empty line.

use std::borrow::Cow;

/// The language of person-facing text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Locale {
    Ja,
    #[default]
    En,
}

impl Locale {
    pub const ALL: [Locale; 2] = [Locale::Ja, Locale::En];

    /// The locale of the environment, by POSIX precedence: the first of `LC_ALL`,
    /// `LC_MESSAGES` and `LANG` that is set and not empty decides; a value starting
    /// with `ja` (`ja_JP.UTF-8`, `ja`) is Japanese, anything else English.
    pub fn from_env() -> Locale {
        Locale::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Locale::from_env`] over any variable lookup (testable without touching the
    /// process environment).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Locale {
        ["LC_ALL", "LC_MESSAGES", "LANG"]
            .into_iter()
            .filter_map(get)
            .find(|v| !v.is_empty())
            .map(|v| Locale::from_tag(&v))
            .unwrap_or_default()
    }

    /// `ja`, `ja_JP.UTF-8`, `ja-JP` → Japanese; anything else English.
    pub fn from_tag(tag: &str) -> Locale {
        if tag.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("ja")) {
            Locale::Ja
        } else {
            Locale::En
        }
    }

    /// `ja` or `en`.
    pub fn tag(self) -> &'static str {
        match self {
            Locale::Ja => "ja",
            Locale::En => "en",
        }
    }
}

/// A catalogue entry: the Japanese and the English text.
type Entry = (&'static str, &'static str, &'static str);

fn pick(entry: &Entry, locale: Locale) -> &'static str {
    match locale {
        Locale::Ja => entry.1,
        Locale::En => entry.2,
    }
}

fn lookup(table: &[Entry], code: &str, locale: Locale) -> Option<&'static str> {
    table.iter().find(|e| e.0 == code).map(|e| pick(e, locale))
}

/// `LogonResult.reason` codes.
const DENY_REASONS: &[Entry] = &[
    (
        "factor_failed",
        "認証に失敗しました。入力した内容や提示したカードをご確認のうえ、もう一度お試しください。",
        "Authentication failed: something you presented was not accepted. Check it and try again.",
    ),
    (
        "insufficient_factors",
        "この端末で必要な認証がそろっていません。必要な認証方法をすべて提示してください。",
        "What you presented is not enough to sign in on this device. Present every factor required here.",
    ),
    (
        "locked",
        "認証の失敗が続いたため、アカウントが一時的にロックされています。しばらく待ってから再度お試しいただくか、システム管理者にお問い合わせください。",
        "Your account is temporarily locked after repeated failed attempts. Wait and try again, or contact your system administrator.",
    ),
    (
        "challenge_invalid",
        "認証の受付時間が過ぎたか、この手続きは無効になりました。最初からやり直してください。",
        "This sign-in attempt has expired or is no longer valid. Please start again.",
    ),
    (
        "not_session_user",
        "この端末のロックは、ログオンしているご本人しか解除できません。",
        "Only the person logged on to this device can unlock it.",
    ),
    (
        "no_session",
        "この端末には解除できるセッションがありません。ログオンし直してください。",
        "There is no session on this device to unlock. Please log on again.",
    ),
    (
        "rate_limited",
        "短い時間に試行が集中しています。しばらく待ってから再度お試しください。",
        "Too many attempts in a short time. Please wait a moment and try again.",
    ),
    (
        "error",
        "システムの不具合のため認証できませんでした。しばらくしてから再度お試しいただくか、システム管理者にお問い合わせください。",
        "Sign-in could not be completed because of a system error. Try again later or contact your system administrator.",
    ),
];

/// `FactorResult.reason` codes: one per [`crate::factors::Failure`].
const FACTOR_FAILURES: &[Entry] = &[
    (
        "mismatch",
        "入力した内容が正しくないか、ご本人と確認できませんでした。",
        "It did not match. Check what you entered and try again.",
    ),
    (
        "replayed",
        "このコードはすでに使用されています。新しいコードを入力してください。",
        "This code has already been used. Enter a new one.",
    ),
    (
        "outside_window",
        "ワンタイムパスワードの時刻が合っていません。端末と認証アプリの時刻をご確認ください。",
        "The one-time code does not match the current time. Check the clock of this device and of the authenticator app.",
    ),
    (
        "expired",
        "緊急用ワンタイムパスワードの有効期限が切れています。システム管理者に再発行を依頼してください。",
        "The emergency one-time password has expired. Ask your administrator for a new one.",
    ),
    (
        "bad_signature",
        "ICカードの署名を確認できませんでした。カードを挿し直して、もう一度お試しください。",
        "The card's signature could not be verified. Reinsert the card and try again.",
    ),
    (
        "certificate_expired",
        "ICカードの証明書の有効期限が切れています。",
        "The card's certificate has expired (or is not valid yet).",
    ),
    (
        "untrusted_certificate",
        "このICカードの証明書は、認められた発行元のものではありません。",
        "The card's certificate was not issued by a trusted authority.",
    ),
    (
        "revoked",
        "このICカードの証明書は失効しています。",
        "The card's certificate has been revoked.",
    ),
    (
        "card_not_enrolled",
        "このICカードは、お使いのアカウントに登録されていません。",
        "This card is not registered for your account.",
    ),
    (
        "bad_device_signature",
        "生体認証装置からのデータを確認できませんでした。装置の登録状況をシステム管理者にご確認ください。",
        "The data from the biometric reader could not be verified. Ask your administrator to check the device's registration.",
    ),
    (
        "malformed",
        "読み取った内容が正しくありません。もう一度お試しください。",
        "What was presented could not be read. Please try again.",
    ),
    (
        "unavailable",
        "現在この認証方法を確認できません。しばらくしてから再度お試しください。",
        "This factor cannot be checked right now. Please try again later.",
    ),
    (
        "not_requested",
        "この認証方法は今回は求められていません。",
        "This factor was not requested for this sign-in.",
    ),
];

/// Factor names as a person calls them.
const FACTOR_NAMES: &[Entry] = &[
    ("password", "パスワード", "Password"),
    ("pin", "PIN", "PIN"),
    ("card", "ICカード", "IC card"),
    ("mynumber_card", "マイナンバーカード", "My Number card"),
    ("face", "顔", "Face"),
    ("vein", "静脈", "Vein"),
    (
        "totp",
        "ワンタイムパスワード(TOTP)",
        "One-time password (TOTP)",
    ),
    (
        "emergency_otp",
        "緊急用ワンタイムパスワード",
        "Emergency one-time password",
    ),
];

/// `UnavailableSet.why` codes.
const UNAVAILABLE: &[Entry] = &[
    (
        "not_enrolled",
        "まだ登録されていません。システム管理者に登録を依頼してください。",
        "Not enrolled yet; ask your administrator to enroll it.",
    ),
    (
        "no_capability",
        "この端末には対応する読み取り装置がありません。",
        "This device has no reader for it.",
    ),
];

/// What an action that was refused is called, for the first line of a denial.
const REFUSED: &[Entry] = &[
    ("logon", "ログオンできませんでした。", "Logon refused."),
    (
        "unlock",
        "ロックを解除できませんでした。",
        "Unlock refused.",
    ),
    (
        "switch_operator",
        "操作者を切り替えられませんでした。",
        "Operator switch refused.",
    ),
    (
        "elevate",
        "管理者権限の利用は認められませんでした。",
        "Elevation refused.",
    ),
];

/// The generic sentence for a deny reason this catalogue does not know, naming the
/// code so that it can still be looked up.
pub fn generic_deny_reason(code: &str, locale: Locale) -> String {
    match locale {
        Locale::Ja => format!(
            "認証できませんでした（コード: {code}）。システム管理者にお問い合わせください。"
        ),
        Locale::En => {
            format!("Sign-in was refused (code: {code}). Contact your system administrator.")
        }
    }
}

/// The generic sentence for a factor failure this catalogue does not know.
pub fn generic_factor_failure(code: &str, locale: Locale) -> String {
    match locale {
        Locale::Ja => format!("この認証方法は受け付けられませんでした（コード: {code}）。"),
        Locale::En => format!("This factor was not accepted (code: {code})."),
    }
}

/// Why a logon was denied (`LogonResult.reason`), as a sentence for the person at
/// the endpoint.
pub fn deny_reason(code: &str, locale: Locale) -> Cow<'static, str> {
    match lookup(DENY_REASONS, code, locale) {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(generic_deny_reason(code, locale)),
    }
}

/// Why one factor failed (`FactorResult.reason`, a [`crate::factors::Failure`] code).
pub fn factor_failure(code: &str, locale: Locale) -> Cow<'static, str> {
    match lookup(FACTOR_FAILURES, code, locale) {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(generic_factor_failure(code, locale)),
    }
}

/// A factor's name as a person calls it (`card` → ICカード / IC card); an unknown
/// name is shown as it is.
pub fn factor_name(name: &str, locale: Locale) -> Cow<'static, str> {
    match lookup(FACTOR_NAMES, name, locale) {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(name.to_string()),
    }
}

/// Why a permitted factor set cannot be used here (`UnavailableSet.why`).
pub fn unavailable_reason(why: &str, locale: Locale) -> Cow<'static, str> {
    match lookup(UNAVAILABLE, why, locale) {
        Some(text) => Cow::Borrowed(text),
        None => Cow::Owned(match locale {
            Locale::Ja => format!("この端末では利用できません（コード: {why}）。"),
            Locale::En => format!("Not usable on this device (code: {why})."),
        }),
    }
}

/// The first line of a denial: "Logon refused." for `logon`, and so on.
pub fn refused(action: &str, locale: Locale) -> &'static str {
    lookup(REFUSED, action, locale).unwrap_or(match locale {
        Locale::Ja => "認証できませんでした。",
        Locale::En => "Refused.",
    })
}

/// A factor set for a person: `ICカード + パスワード`.
pub fn factor_set<S: AsRef<str>>(names: &[S], locale: Locale) -> String {
    names
        .iter()
        .map(|n| factor_name(n.as_ref(), locale))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// One failed factor: `ICカード: ICカードの証明書の有効期限が切れています。`
pub fn factor_failure_line(factor: &str, code: &str, locale: Locale) -> String {
    let sep = match locale {
        Locale::Ja => "：",
        Locale::En => ": ",
    };
    format!(
        "{}{sep}{}",
        factor_name(factor, locale),
        factor_failure(code, locale)
    )
}

/// The first line of a denial: what was refused, why, and the stable code in
/// brackets for support staff.
pub fn denial_heading(action: &str, reason: &str, locale: Locale) -> String {
    let sep = match locale {
        Locale::Ja => "",
        Locale::En => " ",
    };
    format!(
        "{}{sep}{} [{reason}]",
        refused(action, locale),
        deny_reason(reason, locale)
    )
}

/// A permitted factor set that cannot be used here, with the factors missing and
/// why: `ICカード + パスワード（ICカード：まだ登録されていません。…）`.
pub fn unavailable_line<S: AsRef<str>>(
    factors: &[S],
    missing: &[S],
    why: &str,
    locale: Locale,
) -> String {
    let (open, colon, close) = match locale {
        Locale::Ja => ("（", "：", "）"),
        Locale::En => (" (", ": ", ")"),
    };
    format!(
        "{}{open}{}{colon}{}{close}",
        factor_set(factors, locale),
        factor_set(missing, locale),
        unavailable_reason(why, locale)
    )
}

/// When a lockout ends, `when` already formatted (see [`local_time`]).
pub fn locked_until(when: &str, locale: Locale) -> String {
    match locale {
        Locale::Ja => format!("{when} までロックされています。"),
        Locale::En => format!("Locked until {when}."),
    }
}

/// The heading before the factor sets a person may present on this device.
pub fn accepted_here(locale: Locale) -> &'static str {
    match locale {
        Locale::Ja => "この端末では、次のいずれかの組み合わせで認証できます：",
        Locale::En => "On this device you can sign in with one of:",
    }
}

/// The heading before permitted factor sets that cannot be used here.
pub fn unavailable_here(locale: Locale) -> &'static str {
    match locale {
        Locale::Ja => "次の組み合わせは、現在は利用できません：",
        Locale::En => "These combinations are not usable now:",
    }
}

/// A Unix time in milliseconds as local date and time (`2026-11-22 17:05`), the
/// form shown for lockouts and expiries.
pub fn local_time(unix_ms: i64) -> String {
    use chrono::{Local, TimeZone};
    match Local.timestamp_millis_opt(unix_ms) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%Y-%m-%d %H:%M").to_string()
        }
        chrono::LocalResult::None => format!("@{unix_ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factors::Failure;

    const REASONS: [&str; 8] = [
        "factor_failed",
        "insufficient_factors",
        "locked",
        "challenge_invalid",
        "not_session_user",
        "no_session",
        "rate_limited",
        "error",
    ];

    fn is_japanese(s: &str) -> bool {
        s.chars()
            .any(|c| ('\u{3040}'..='\u{30ff}').contains(&c) || c > '\u{4e00}')
    }

    #[test]
    fn every_deny_reason_has_both_languages() {
        for code in REASONS {
            let ja = deny_reason(code, Locale::Ja);
            let en = deny_reason(code, Locale::En);
            assert!(matches!(ja, Cow::Borrowed(_)), "{code}: no Japanese entry");
            assert!(matches!(en, Cow::Borrowed(_)), "{code}: no English entry");
            assert!(!ja.trim().is_empty() && !en.trim().is_empty(), "{code}");
            assert_ne!(ja, generic_deny_reason(code, Locale::Ja));
            assert_ne!(en, generic_deny_reason(code, Locale::En));
            assert!(is_japanese(&ja), "{code}: {ja}");
            assert!(en.is_ascii(), "{code}: {en}");
        }
        assert_eq!(DENY_REASONS.len(), REASONS.len(), "a reason nobody sends");
    }

    #[test]
    fn every_failure_code_has_both_languages() {
        for f in Failure::ALL {
            let code = f.code();
            let ja = factor_failure(code, Locale::Ja);
            let en = factor_failure(code, Locale::En);
            assert!(matches!(ja, Cow::Borrowed(_)), "{code}: no Japanese entry");
            assert!(matches!(en, Cow::Borrowed(_)), "{code}: no English entry");
            assert!(!ja.trim().is_empty() && !en.trim().is_empty(), "{code}");
            assert_ne!(ja, generic_factor_failure(code, Locale::Ja));
            assert_ne!(en, generic_factor_failure(code, Locale::En));
            assert!(is_japanese(&ja), "{code}: {ja}");
            assert!(en.is_ascii(), "{code}: {en}");
        }
        assert_eq!(FACTOR_FAILURES.len(), Failure::ALL.len());
        for (code, _, _) in FACTOR_FAILURES {
            assert!(
                Failure::from_code(code).is_some(),
                "{code} is not a Failure"
            );
        }
    }

    #[test]
    fn entries_are_distinct() {
        for table in [DENY_REASONS, FACTOR_FAILURES, FACTOR_NAMES, UNAVAILABLE] {
            for locale in Locale::ALL {
                let mut texts: Vec<_> = table.iter().map(|e| pick(e, locale)).collect();
                texts.sort();
                texts.dedup();
                assert_eq!(texts.len(), table.len(), "duplicate text in a table");
            }
        }
    }

    #[test]
    fn factor_names_and_unavailable() {
        for f in sekisho_policy_engine::Factor::ALL {
            for locale in Locale::ALL {
                assert!(
                    matches!(factor_name(f.name(), locale), Cow::Borrowed(_)),
                    "{f} has no {locale:?} name"
                );
            }
        }
        assert_eq!(factor_name("card", Locale::Ja), "ICカード");
        assert_eq!(
            factor_name("mynumber_card", Locale::Ja),
            "マイナンバーカード"
        );
        assert_eq!(
            factor_name("totp", Locale::Ja),
            "ワンタイムパスワード(TOTP)"
        );
        assert_eq!(factor_name("fingerprint", Locale::Ja), "fingerprint");
        for why in ["not_enrolled", "no_capability"] {
            for locale in Locale::ALL {
                let text = unavailable_reason(why, locale);
                assert!(matches!(text, Cow::Borrowed(_)) && !text.is_empty());
            }
        }
        assert!(unavailable_reason("moon_phase", Locale::En).contains("moon_phase"));
        assert_eq!(
            factor_set(&["card", "password"], Locale::Ja),
            "ICカード + パスワード"
        );
        assert_eq!(
            unavailable_line(
                &["face", "password"],
                &["face"],
                "no_capability",
                Locale::Ja
            ),
            "顔 + パスワード（顔：この端末には対応する読み取り装置がありません。）"
        );
        assert_eq!(
            unavailable_line(
                &["face", "password"],
                &["face"],
                "no_capability",
                Locale::En
            ),
            "Face + Password (Face: This device has no reader for it.)"
        );
        assert_eq!(
            denial_heading("logon", "locked", Locale::Ja),
            format!(
                "ログオンできませんでした。{} [locked]",
                deny_reason("locked", Locale::Ja)
            )
        );
        assert_eq!(
            factor_failure_line("card", "certificate_expired", Locale::Ja),
            "ICカード：ICカードの証明書の有効期限が切れています。"
        );
    }

    #[test]
    fn unknown_codes_name_the_code() {
        for locale in Locale::ALL {
            assert!(deny_reason("new_reason", locale).contains("new_reason"));
            assert!(factor_failure("new_failure", locale).contains("new_failure"));
            assert!(!refused("teleport", locale).is_empty());
        }
    }

    #[test]
    fn locale_from_environment_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Locale::from_vars(env(&[])), Locale::En);
        assert_eq!(
            Locale::from_vars(env(&[("LANG", "ja_JP.UTF-8")])),
            Locale::Ja
        );
        assert_eq!(
            Locale::from_vars(env(&[("LANG", "ja_JP.UTF-8"), ("LC_ALL", "C")])),
            Locale::En
        );
        assert_eq!(
            Locale::from_vars(env(&[("LANG", "en_US.UTF-8"), ("LC_MESSAGES", "ja_JP")])),
            Locale::Ja
        );
        // An empty variable does not count as set.
        assert_eq!(
            Locale::from_vars(env(&[("LC_ALL", ""), ("LANG", "ja")])),
            Locale::Ja
        );
        assert_eq!(Locale::from_tag("JA-jp"), Locale::Ja);
        assert_eq!(Locale::from_tag("j"), Locale::En);
    }

    #[test]
    fn local_time_is_minutes() {
        let s = local_time(1_700_000_000_000);
        assert_eq!(s.len(), "2023-11-14 22:13".len(), "{s}");
    }
}
