//! `sekisho enroll …`, `sekisho emergency-otp issue`, `sekisho unlock-user`: the
//! GatewayAdmin calls an administrator makes for one user on one tier.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sekisho_gateway::agent::{read_certificate_der, read_templates};
use sekisho_gateway::credentials::card_fingerprint;
use sekisho_gateway::messages::local_time;
use sekisho_gateway::qr::render_qr;
use sekisho_policy_engine::Factor;
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::gateway_admin_client::GatewayAdminClient;
use tonic::transport::Channel;

use crate::cli::EnrollRemoveArgs;
use crate::client::GatewayArgs;
use crate::Outcome;

async fn admin(gateway: &GatewayArgs) -> Result<GatewayAdminClient<Channel>> {
    Ok(GatewayAdminClient::new(gateway.connect().await?))
}

fn refused(status: tonic::Status) -> anyhow::Error {
    super::refused("gateway", status)
}

fn print_enrollment(r: &pb::EnrollmentResponse) {
    if !r.detail.is_empty() {
        println!("{}: {}", r.user, r.detail);
    }
    println!("{} has enrolled: {}", r.user, enrolled_list(&r.enrolled));
}

fn enrolled_list(enrolled: &[String]) -> String {
    if enrolled.is_empty() {
        "(nothing)".into()
    } else {
        enrolled.join(", ")
    }
}

pub async fn totp(
    user: &str,
    algorithm: &str,
    digits: u32,
    invert_qr: bool,
    gateway: &GatewayArgs,
) -> Result<Outcome> {
    let r = admin(gateway)
        .await?
        .enroll_totp(pb::EnrollTotpRequest {
            user: user.to_string(),
            algorithm: algorithm.to_string(),
            digits,
        })
        .await
        .map_err(refused)?
        .into_inner();
    // The QR code first, so the URI and secret stay on screen below it.
    match render_qr(&r.otpauth_uri, invert_qr) {
        Ok(qr) => println!("{qr}"),
        Err(e) => eprintln!("cannot draw the QR code ({e}); enter the secret by hand"),
    }
    println!("{}", r.otpauth_uri);
    println!("secret (base32): {}", r.secret_base32);
    eprintln!(
        "scan the QR code with the user's authenticator app, or type the secret; it is not shown again"
    );
    Ok(Outcome::Ok)
}

pub async fn card(user: &str, cert: &Path, gateway: &GatewayArgs) -> Result<Outcome> {
    let certificate = read_certificate_der(cert)?;
    let r = admin(gateway)
        .await?
        .enroll_card(pb::EnrollCardRequest {
            user: user.to_string(),
            certificate,
        })
        .await
        .map_err(refused)?
        .into_inner();
    print_enrollment(&r);
    Ok(Outcome::Ok)
}

pub async fn biometric(
    factor: &str,
    user: &str,
    template: &Path,
    replace: bool,
    gateway: &GatewayArgs,
) -> Result<Outcome> {
    let templates = read_templates(template)?
        .into_iter()
        .map(|vector| pb::BiometricTemplate { vector })
        .collect();
    let r = admin(gateway)
        .await?
        .enroll_biometric(pb::EnrollBiometricRequest {
            user: user.to_string(),
            factor: factor.to_string(),
            templates,
            replace,
        })
        .await
        .map_err(refused)?
        .into_inner();
    print_enrollment(&r);
    Ok(Outcome::Ok)
}

/// `enroll pin` and `enroll password`: the secret comes from standard input.
pub async fn secret(factor: &str, user: &str, gateway: &GatewayArgs) -> Result<Outcome> {
    let label = match factor {
        "pin" => "PIN",
        _ => "password",
    };
    let secret = super::read_secrets_from_stdin(&[label])?.remove(0);
    let r = admin(gateway)
        .await?
        .set_secret(pb::SetSecretRequest {
            user: user.to_string(),
            factor: factor.to_string(),
            secret,
        })
        .await
        .map_err(refused)?
        .into_inner();
    print_enrollment(&r);
    Ok(Outcome::Ok)
}

pub async fn remove(a: &EnrollRemoveArgs) -> Result<Outcome> {
    // The gateway refuses this too, but only after the certificate was read and the
    // connection made, and in terms of its API (card_fingerprint), not of options.
    if a.card_cert.is_some() && !matches!(a.factor, Some(Factor::Card | Factor::MynumberCard)) {
        let given = match a.factor {
            Some(f) => format!("--factor {f}"),
            None => "--all".to_string(),
        };
        bail!("--card-cert removes one card: it goes with --factor card or --factor mynumber_card, not {given}");
    }
    let card_fingerprint = match &a.card_cert {
        Some(path) => card_fingerprint(
            &read_certificate_der(path).with_context(|| path.display().to_string())?,
        ),
        None => String::new(),
    };
    let r = admin(&a.gateway)
        .await?
        .remove_credentials(pb::RemoveCredentialsRequest {
            user: a.user.clone(),
            factor: a.factor.map(|f| f.name().to_string()).unwrap_or_default(),
            card_fingerprint,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let what = match (&a.factor, &a.card_cert) {
        (_, Some(path)) => format!("the card in {}", path.display()),
        (Some(f), None) => format!("{f} credentials"),
        (None, None) => "every credential".to_string(),
    };
    if r.removed == 0 {
        eprintln!("{}: nothing to remove ({what} not enrolled)", a.user);
        return Ok(Outcome::No);
    }
    println!("{}: removed {what} ({} stored)", a.user, r.removed);
    println!("{} has enrolled: {}", a.user, enrolled_list(&r.enrolled));
    Ok(Outcome::Ok)
}

pub async fn show(user: &str, gateway: &GatewayArgs) -> Result<Outcome> {
    let r = admin(gateway)
        .await?
        .list_enrollments(pb::ListEnrollmentsRequest {
            user: user.to_string(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    println!("user:                 {}", r.user);
    println!("enrolled:             {}", enrolled_list(&r.enrolled));
    println!("cards:                {}", r.cards);
    println!("face templates:       {}", r.face_templates);
    println!("vein templates:       {}", r.vein_templates);
    println!("consecutive failures: {}", r.consecutive_failures);
    match r.locked_until_unix_ms {
        Some(ms) => println!(
            "locked out until:     {} (sekisho unlock-user {} lifts it)",
            local_time(ms),
            r.user
        ),
        None => println!("locked out:           no"),
    }
    Ok(Outcome::Ok)
}

pub async fn emergency_otp(user: &str, ttl: Duration, gateway: &GatewayArgs) -> Result<Outcome> {
    let r = admin(gateway)
        .await?
        .issue_emergency_otp(pb::IssueEmergencyOtpRequest {
            user: user.to_string(),
            ttl_secs: ttl.as_secs(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    println!("{}", r.code);
    println!(
        "valid once for {user} until {} (local time)",
        local_time(r.expires_at_unix_ms)
    );
    Ok(Outcome::Ok)
}

pub async fn unlock_user(user: &str, gateway: &GatewayArgs) -> Result<Outcome> {
    let r = admin(gateway)
        .await?
        .unlock_user(pb::UnlockUserRequest {
            user: user.to_string(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    if r.was_locked {
        println!("{user} was locked out; the lockout is lifted");
    } else {
        println!("{user} was not locked out; nothing changed");
    }
    Ok(Outcome::Ok)
}
