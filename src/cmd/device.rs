//! `sekisho device register`: a terminal in the engine's entities and on its tier's
//! gateway, and optionally its client certificate from the development CA.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sekisho_gateway::factors::biometric::DeviceKey;
use sekisho_policy_engine::factor::Capabilities;
use sekisho_policy_engine::pki::{PkiFiles, Usage};
use sekisho_policy_engine::{DeviceKind, Tier};
use sekisho_proto::v1 as pb;
use sekisho_proto::v1::gateway_admin_client::GatewayAdminClient;
use sekisho_proto::v1::policy_admin_client::PolicyAdminClient;

use crate::cli::DeviceRegisterArgs;
use crate::client::GatewayArgs;
use crate::Outcome;

/// A device id that is also safe as a file name (it names the certificate files).
fn check_file_safe(id: &str) -> Result<()> {
    if id.is_empty()
        || id == "."
        || id == ".."
        || id.contains(['/', '\\', '\0'])
        || id.starts_with('-')
    {
        bail!("device id '{id}' cannot name a certificate file (no '/', '\\', leading '-', '.' or '..')");
    }
    Ok(())
}

/// Reads the capture device's public key (PEM) as SubjectPublicKeyInfo DER, checking
/// it is a key the gateway can verify with.
fn capture_key_der(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the capture key {}", path.display()))?;
    let key = DeviceKey::from_pem(&pem).with_context(|| format!("{}", path.display()))?;
    Ok(key.to_spki_der().to_vec())
}

/// Issues (once) the device's client certificate from the development CA in
/// `pki_dir` and copies it to `dir/ID.pem` and `dir/ID-key.pem`, keeping files
/// already there. Returns the two paths and whether they were written now.
fn issue_cert(id: &str, pki_dir: &Path, dir: &Path) -> Result<(PathBuf, PathBuf, bool)> {
    let cert = dir.join(format!("{id}.pem"));
    let key = dir.join(format!("{id}-key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    let pki = PkiFiles {
        dir: pki_dir.to_path_buf(),
    };
    if !pki.ca().exists() {
        bail!(
            "no development CA in {} (start the engine once, or give --pki-dir)",
            pki_dir.display()
        );
    }
    let (issued_cert, issued_key) = pki
        .ensure_leaf(&format!("device-{id}"), id, &[], Usage::Client)
        .with_context(|| format!("cannot issue a certificate for {id}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (from, to) in [(&issued_cert, &cert), (&issued_key, &key)] {
        if from != to {
            // fs::copy keeps the source's permissions: the key stays owner-only.
            std::fs::copy(from, to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
    }
    Ok((cert, key, true))
}

pub async fn register(args: &DeviceRegisterArgs) -> Result<Outcome> {
    let tier: Tier = args.tier.parse()?;
    let kind: DeviceKind = args.kind.parse()?;
    let capabilities = Capabilities::parse_names(
        args.capabilities
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty()),
    )?;
    if args.id.trim().is_empty() || args.id.trim() != args.id {
        bail!(
            "device id '{}' must be non-empty without surrounding spaces",
            args.id
        );
    }
    let capture_key = match &args.capture_key {
        Some(path) => capture_key_der(path)?,
        None => Vec::new(),
    };
    if !capture_key.is_empty() && !capabilities.face && !capabilities.vein {
        bail!("--capture-key is for a device with a face or vein reader: add --capabilities face or vein");
    }
    if args.issue_cert.is_some() {
        check_file_safe(&args.id)?;
    }
    let device = pb::Device {
        id: args.id.clone(),
        tier: tier.name().to_string(),
        kind: kind.name().to_string(),
        capabilities: capabilities.names().into_iter().map(String::from).collect(),
        location: args.location.clone(),
    };

    if !args.gateway_only {
        let mut engine = PolicyAdminClient::new(args.engine.connect().await?);
        engine
            .upsert_entities(pb::UpsertEntitiesRequest {
                devices: vec![device.clone()],
                ..pb::UpsertEntitiesRequest::default()
            })
            .await
            .map_err(|s| super::refused("engine", s))?;
        println!(
            "{}: saved in the engine's entities ({tier}, {kind})",
            args.id
        );
    }

    let gateway = GatewayArgs::new(
        &args.gateway,
        &args.engine.ca,
        &args.engine.cert,
        &args.engine.key,
    );
    let r = GatewayAdminClient::new(gateway.connect().await?)
        .register_device(pb::RegisterDeviceRequest {
            device: Some(device),
            capture_key,
        })
        .await
        .map_err(|s| super::refused("gateway", s))?
        .into_inner();
    println!(
        "{}: {} on the {tier} gateway",
        args.id,
        if r.created { "registered" } else { "updated" }
    );

    if let Some(dir) = &args.issue_cert {
        let (cert, key, new) = issue_cert(&args.id, &args.pki_dir, dir)?;
        println!(
            "{}: certificate {} and key {}{}",
            args.id,
            cert.display(),
            key.display(),
            if new { "" } else { " (already there, kept)" }
        );
    }
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_that_are_not_file_names_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "-rf", "a\\b"] {
            assert!(check_file_safe(bad).is_err(), "{bad:?}");
        }
        for good in ["lgwan-desk-17", "mn.counter_3"] {
            check_file_safe(good).unwrap();
        }
    }

    #[test]
    fn issues_once_and_keeps_existing_files() {
        let pki_dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = issue_cert("d1", pki_dir.path(), out.path()).unwrap_err();
        assert!(format!("{err:#}").contains("no development CA"));
        PkiFiles::ensure(pki_dir.path(), &["localhost"]).unwrap();
        let (cert, key, new) = issue_cert("d1", pki_dir.path(), out.path()).unwrap();
        assert!(new);
        assert_eq!(cert, out.path().join("d1.pem"));
        assert_eq!(key, out.path().join("d1-key.pem"));
        let der = sekisho_gateway::agent::read_certificate_der(&cert).unwrap();
        assert_eq!(
            sekisho_policy_engine::pki::common_name(&der).as_deref(),
            Some("d1")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "device key readable by others: {mode:o}");
        let before = std::fs::read(&cert).unwrap();
        let (_, _, new) = issue_cert("d1", pki_dir.path(), out.path()).unwrap();
        assert!(!new);
        assert_eq!(std::fs::read(&cert).unwrap(), before);
    }
}
